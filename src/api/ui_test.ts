import assert from "node:assert/strict";
import type { KvBackend } from "../node/backend.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { createApiHandler } from "./handler.ts";
import { UI_CONTENT_SECURITY_POLICY, uiResponse } from "./ui.ts";

const unused = () => {
  throw new Error("the dashboard's files need no backend");
};
const BACKEND: KvBackend = {
  write: unused,
  read: unused,
  range: unused,
  snapshot: unused,
  status: unused,
  isReady: () => true,
  overloaded: () => null,
};

function api(metrics = new MetricsRegistry()) {
  return createApiHandler(BACKEND, { selfId: "n1", metrics });
}

function get(path: string, init: RequestInit = {}, handler = api()): Promise<Response> {
  return handler(new Request(`http://n1.test:7777${path}`, init));
}

function assertStrictHeaders(res: Response): void {
  const csp = res.headers.get("content-security-policy") ?? "";
  assert.equal(csp, UI_CONTENT_SECURITY_POLICY);
  for (
    const directive of [
      "default-src 'none'",
      "script-src 'self'",
      "style-src 'self'",
      "connect-src 'self'",
      "frame-ancestors 'none'",
      "require-trusted-types-for 'script'",
    ]
  ) {
    assert.ok(csp.split("; ").includes(directive), `${directive} in ${csp}`);
  }
  assert.doesNotMatch(csp, /unsafe|https?:|\*/, "no inline code, no other origin");
  assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  assert.equal(res.headers.get("x-frame-options"), "DENY");
  assert.equal(res.headers.get("referrer-policy"), "no-referrer");
  assert.equal(res.headers.get("cross-origin-opener-policy"), "same-origin");
}

Deno.test("/ui redirects to /ui/ relatively, so the page also works under a proxy's prefix", async () => {
  const res = await get("/ui");
  assert.equal(res.status, 308);
  assert.equal(res.headers.get("location"), "ui/");
  assertStrictHeaders(res);
});

Deno.test("/ui keeps the query on its redirect, so /ui?minutes=15 opens the page on fifteen minutes", () => {
  for (
    const [search, location] of [
      ["?minutes=15", "ui/?minutes=15"],
      ["?minutes=5&x=a%20b", "ui/?minutes=5&x=a%20b"],
      ["", "ui/"],
    ]
  ) {
    const res = uiResponse("/ui", search);
    assert.equal(res.status, 308, search);
    assert.equal(res.headers.get("location"), location, search);
    assertStrictHeaders(res);
  }
  // A page already under /ui/ keeps its own query: no redirect.
  assert.equal(uiResponse("/ui/", "?minutes=15").status, 200);
});

Deno.test("the API's /ui?minutes=15 redirects with its query", async () => {
  const res = await get("/ui?minutes=15");
  assert.equal(res.status, 308);
  assert.equal(res.headers.get("location"), "ui/?minutes=15");
  await res.body?.cancel();
});

Deno.test("the dashboard's files are served with their types and strict security headers", async () => {
  const expected: [string, string, RegExp][] = [
    ["/ui/", "text/html; charset=utf-8", /<title>raftkv<\/title>/],
    ["/ui/app.js", "text/javascript; charset=utf-8", /v1\/cluster/],
    ["/ui/app.css", "text/css; charset=utf-8", /prefers-color-scheme: dark/],
    ["/ui/icon.svg", "image/svg+xml", /<svg/],
    ["/ui/token.js", "text/javascript; charset=utf-8", /TOKEN_KEY/],
    ["/ui/watch.html", "text/html; charset=utf-8", /<title>raftkv watch<\/title>/],
    ["/ui/watch.js", "text/javascript; charset=utf-8", /v1\/watch/],
  ];
  for (const [path, type, body] of expected) {
    const res = await get(path);
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get("content-type"), type, path);
    assertStrictHeaders(res);
    assert.match(await res.text(), body, path);
  }
});

Deno.test("the page loads nothing from elsewhere and has no inline script or style", async () => {
  const html = await (await get("/ui/")).text();
  // Every script and style sheet is a file of its own, referenced relatively.
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)];
  assert.equal(scripts.length, 1);
  assert.match(scripts[0]![1]!, /src="app\.js"/);
  assert.equal(scripts[0]![2]!.trim(), "");
  assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=|javascript:/i);
  for (const [, url] of html.matchAll(/(?:src|href)="([^"]*)"/g)) {
    assert.match(url!, /^[a-z0-9.-]+\.(?:js|css|svg)$/, `${url} is a file beside the page`);
  }
  for (const file of ["app.js", "token.js", "watch.js"]) {
    const js = await (await get(`/ui/${file}`)).text();
    // Trusted Types would refuse these anyway; the page builds its DOM from text.
    assert.doesNotMatch(
      js,
      /innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function/,
      file,
    );
    assert.doesNotMatch(js, /https?:\/\/(?!www\.w3\.org\/2000\/svg)/, `${file}: no other origin`);
  }
});

Deno.test("/ui answers only GET, and unknown files under /ui/ are JSON 404s", async () => {
  const post = await get("/ui/", { method: "POST" });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET");
  await post.body?.cancel();
  const missing = await get("/ui/secret.txt");
  assert.equal(missing.status, 404);
  assert.equal(missing.headers.get("content-type"), "application/json");
  assert.match((await missing.json()).error, /the dashboard serves \/ui\/, \/ui\/app\.js/);
});

Deno.test("dashboard requests are counted under one route label", async () => {
  const metrics = new MetricsRegistry();
  const handler = api(metrics);
  for (const path of ["/ui", "/ui/", "/ui/app.js", "/ui/nope"]) {
    await (await get(path, {}, handler)).body?.cancel();
  }
  const text = metrics.render();
  assert.match(text, /raftkv_http_requests_total\{route="\/ui",method="GET",code="200"\} 2/);
  assert.match(text, /raftkv_http_requests_total\{route="\/ui",method="GET",code="308"\} 1/);
  assert.match(text, /raftkv_http_requests_total\{route="\/ui",method="GET",code="404"\} 1/);
});
