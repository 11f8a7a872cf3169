/**
 * The dashboard at `/ui/`: one HTML page, its script, style sheet and icon, embedded in the
 * program (text imports, which `deno compile` includes like any module), served with strict
 * security headers. The page holds no data: it polls `GET /v1/cluster` (see `cluster.ts`) once
 * a second, so it stays open even where the API asks for a token; it sends the token a user
 * types in after a 401 as `Authorization: Bearer ...`. The watch page (`watch.html`) streams
 * `GET /v1/watch` with `fetch` and the same token; both take it from `token.js`.
 *
 * The Content-Security-Policy allows nothing but this node's own script, style sheet, images
 * and `fetch`es: no inline script or style, no other origin, no framing, no form posts, and
 * Trusted Types (the page builds its DOM with `textContent`, never HTML strings).
 *
 * @module
 */

import html from "./ui/index.html" with { type: "text" };
import script from "./ui/app.js" with { type: "text" };
import css from "./ui/app.css" with { type: "text" };
import icon from "./ui/icon.svg" with { type: "text" };
import watchHtml from "./ui/watch.html" with { type: "text" };
import watchScript from "./ui/watch.js" with { type: "text" };
import tokenScript from "./ui/token.js" with { type: "text" };
import { ApiError, quote } from "./errors.ts";

/** The Content-Security-Policy of every `/ui` answer. */
export const UI_CONTENT_SECURITY_POLICY: string = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "require-trusted-types-for 'script'",
  "trusted-types 'none'",
].join("; ");

/** The headers of every `/ui` answer (the content type aside). */
export const UI_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  "content-security-policy": UI_CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
  "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
  // The files change only with the program: a revalidation each time is cheap and never stale.
  "cache-control": "no-cache",
});

const _ASSETS: ReadonlyMap<string, { body: string; type: string }> = new Map([
  ["/ui/", { body: html, type: "text/html; charset=utf-8" }],
  ["/ui/app.js", { body: script, type: "text/javascript; charset=utf-8" }],
  ["/ui/app.css", { body: css, type: "text/css; charset=utf-8" }],
  ["/ui/icon.svg", { body: icon, type: "image/svg+xml" }],
  // The bearer token's storage, header and form, shared by both pages (see token.js).
  ["/ui/token.js", { body: tokenScript, type: "text/javascript; charset=utf-8" }],
  // A live list of changes, streamed from GET /v1/watch with the tab's token (see watch.js).
  ["/ui/watch.html", { body: watchHtml, type: "text/html; charset=utf-8" }],
  ["/ui/watch.js", { body: watchScript, type: "text/javascript; charset=utf-8" }],
]);

/**
 * Whether a path belongs to the dashboard (`/ui` and everything under `/ui/`).
 *
 * @param path A request's path.
 * @returns `true` for the dashboard's paths.
 */
export function isUiPath(path: string): boolean {
  return path === "/ui" || path.startsWith("/ui/");
}

/**
 * The answer for a `GET` of a dashboard path: the file, or for `/ui` a redirect to `/ui/`
 * (relative, so that the page also works behind a proxy that serves it under a prefix) that
 * keeps the query, such as `?minutes=15` (a browser does not carry it over by itself).
 *
 * @example Usage
 * ```ts
 * import { uiResponse } from "./ui.ts";
 *
 * const res = uiResponse("/ui/");
 * console.assert(res.headers.get("content-type") === "text/html; charset=utf-8");
 * console.assert(uiResponse("/ui", "?minutes=15").headers.get("location") === "ui/?minutes=15");
 * ```
 *
 * @param path A path for which {@linkcode isUiPath} holds.
 * @param search The request's query with its `?` (a `URL`'s `search`), or `""`. Default `""`.
 * @returns The response.
 * @throws {ApiError} 404 for a path under `/ui/` that is none of its files.
 */
export function uiResponse(path: string, search = ""): Response {
  if (path === "/ui") {
    const location = `ui/${search}`;
    return new Response(null, { status: 308, headers: { ...UI_HEADERS, location } });
  }
  const asset = _ASSETS.get(path);
  if (asset === undefined) {
    throw new ApiError(
      404,
      `no such path ${quote(path)}; the dashboard serves ${[..._ASSETS.keys()].join(", ")}`,
    );
  }
  return new Response(asset.body, { headers: { ...UI_HEADERS, "content-type": asset.type } });
}
