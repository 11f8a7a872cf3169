/**
 * Who may call the REST API: bearer tokens with roles, the role each route needs, and the caller
 * identity a forwarded request carries to the leader.
 *
 * Roles: `read` < `write` < `admin`; each includes the ones before it. A request sends
 * `Authorization: Bearer <token>`. Without tokens configured the API is open (every caller may
 * do everything), as before authentication existed.
 *
 * A presented token is compared without leaking, through timing, how much of it matched: it is
 * hashed (SHA-256) and the hash compared with every configured token's hash by
 * `timingSafeEqual`, all of them, whatever matched. Tokens never appear in answers or logs;
 * callers are named by their token's `name`.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { ApiError } from "./errors.ts";

/** What a caller may do: `read` < `write` < `admin`. */
export type AccessRole = "read" | "write" | "admin";

/** The roles, weakest first. */
export const ACCESS_ROLES: readonly AccessRole[] = ["read", "write", "admin"];

/** One token the API accepts. */
export interface ApiToken {
  /** The secret a client sends as `Authorization: Bearer <token>`. */
  token: string;
  /** What it may do. */
  role: AccessRole;
  /** How logs name its holder. Default: `token-<position, from 1>`. */
  name?: string;
}

/** Who made a request, once authenticated: never the token itself. */
export interface Caller {
  /** The token's name. */
  name: string;
  /** What the caller may do. */
  role: AccessRole;
}

/**
 * The header that carries the authorised caller of a forwarded request from the follower that
 * authorised it to the leader: `<role> <name>`, such as `write ci`. Only the leader's peer port
 * reads it; the client API ignores it.
 */
export const CALLER_HEADER = "x-raftkv-caller";

/** The `WWW-Authenticate` header of a 401 answer (RFC 6750). */
export const WWW_AUTHENTICATE = 'Bearer realm="raftkv"';

/**
 * Whether a caller with role `held` may do what needs `needed`.
 *
 * @param held The caller's role.
 * @param needed The role the request needs.
 * @returns `true` if `held` is `needed` or stronger.
 */
export function allows(held: AccessRole, needed: AccessRole): boolean {
  return ACCESS_ROLES.indexOf(held) >= ACCESS_ROLES.indexOf(needed);
}

/**
 * The role a request needs, from its method and path, or `null` for the open probes `/health`
 * and `/ready`: `read` for `GET /v1/data/{key}`, `GET /v1/data` (a range) and `/v1/status`;
 * `write` for every other method on `/v1/data` and `/v1/data/{key}`, and for `/v1/txn`; `admin`
 * for `/v1/snapshot` and every other path, so that an endpoint added later is closed until it is
 * listed here.
 *
 * @example Usage
 * ```ts
 * import { requiredRole } from "./auth.ts";
 *
 * console.assert(requiredRole("GET", "/v1/data/a") === "read");
 * console.assert(requiredRole("DELETE", "/v1/data/a") === "write");
 * console.assert(requiredRole("GET", "/v1/snapshot") === "admin");
 * console.assert(requiredRole("GET", "/health") === null);
 * ```
 *
 * @param method The HTTP method.
 * @param path The URL's path.
 * @returns The role needed, or `null` when none is.
 */
export function requiredRole(method: string, path: string): AccessRole | null {
  // Probes, and the dashboard's page and script (they hold no data: the page asks for a token
  // when its data calls get 401).
  if (path === "/health" || path === "/ready" || path === "/ui" || path.startsWith("/ui/")) {
    return null;
  }
  if (path === "/v1/status" || path === "/v1/cluster" || path === "/metrics") return "read";
  if (path === "/v1/watch") return method === "GET" || method === "HEAD" ? "read" : "write";
  if (path === "/v1/data") return method === "GET" || method === "HEAD" ? "read" : "write";
  if (path === "/v1/txn") return "write";
  if (path === "/v1/leases" || path.startsWith("/v1/leases/")) {
    return method === "GET" || method === "HEAD" ? "read" : "write";
  }
  if (path.startsWith("/v1/data/")) return method === "GET" || method === "HEAD" ? "read" : "write";
  return "admin";
}

/**
 * The token of an `Authorization: Bearer <token>` header (the scheme in any case), or `null`
 * when there is no such header or it holds another scheme.
 *
 * @param header The `Authorization` header's value, or `null`.
 * @returns The token, or `null`.
 */
export function bearerToken(header: string | null): string | null {
  const match = header === null ? null : /^bearer +(\S+) *$/i.exec(header);
  return match?.[1] ?? null;
}

/**
 * The configured tokens, kept as SHA-256 hashes, and the check of a request against them. The
 * tokens can be replaced while the API runs ({@linkcode TokenAuthenticator.replace}: a node
 * reloads its tokens file on SIGHUP).
 */
export class TokenAuthenticator {
  #entries: { hash: Uint8Array; caller: Caller }[];

  /**
   * Keeps the tokens' hashes.
   *
   * @param tokens The tokens (at least one; see `parseTokens` in `src/cli` for the checks that
   * configuration gets).
   * @throws {RangeError} If there are none, one is empty or repeats, or a role is unknown.
   */
  constructor(tokens: readonly ApiToken[]) {
    this.#entries = _entries(tokens);
  }

  /**
   * Replaces every token: requests checked from now on need one of `tokens`. What a request was
   * allowed to start and still runs (a watch stream) is checked again by its owner
   * ({@linkcode TokenAuthenticator.permits}).
   *
   * @example Usage
   * ```ts
   * import assert from "node:assert/strict";
   * import { TokenAuthenticator } from "./auth.ts";
   *
   * const auth = new TokenAuthenticator([{ token: "old-secret", role: "read" }]);
   * auth.replace([{ token: "new-secret", role: "write", name: "ci" }]);
   * assert.equal(auth.identify("old-secret"), null);
   * assert.equal(auth.identify("new-secret")?.role, "write");
   * ```
   *
   * @param tokens The new tokens (the same checks as the constructor's).
   * @throws {RangeError} As the constructor; the tokens in force then stay in force.
   */
  replace(tokens: readonly ApiToken[]): void {
    this.#entries = _entries(tokens);
  }

  /**
   * Whether a request's bearer token is known and its role allows `needed` (the check of
   * {@linkcode TokenAuthenticator.authorize}, without the error).
   *
   * @param req The request.
   * @param needed The role it needs.
   * @returns `true` when {@linkcode TokenAuthenticator.authorize} would let it through.
   */
  permits(req: Request, needed: AccessRole): boolean {
    const token = bearerToken(req.headers.get("authorization"));
    const caller = token === null ? null : this.identify(token);
    return caller !== null && allows(caller.role, needed);
  }

  /**
   * The caller a token belongs to. Takes the same time whichever token matches, or none.
   *
   * @param token The presented token.
   * @returns Its caller, or `null` for an unknown token.
   */
  identify(token: string): Caller | null {
    const hash = _hash(token);
    let found: Caller | null = null;
    for (const entry of this.#entries) {
      if (timingSafeEqual(hash, entry.hash)) found = entry.caller;
    }
    return found;
  }

  /**
   * Checks a request: its bearer token must be known and its role must allow `needed`.
   *
   * @param req The request.
   * @param needed The role it needs (see {@linkcode requiredRole}).
   * @returns The caller.
   * @throws {ApiError} 401 with `WWW-Authenticate` for a missing or unknown token, 403 for a
   * known one whose role does not allow the request.
   */
  authorize(req: Request, needed: AccessRole): Caller {
    const token = bearerToken(req.headers.get("authorization"));
    if (token === null) {
      throw new ApiError(
        401,
        "this request needs a token: send Authorization: Bearer <token>",
        {},
        { "www-authenticate": WWW_AUTHENTICATE },
      );
    }
    const caller = this.identify(token);
    if (caller === null) {
      throw new ApiError(401, "the bearer token is not valid", {}, {
        "www-authenticate": WWW_AUTHENTICATE,
      });
    }
    if (!allows(caller.role, needed)) {
      throw new ApiError(
        403,
        `the token ${
          JSON.stringify(caller.name)
        } has the role ${caller.role}; this request needs ${needed}`,
        { role: caller.role, needed },
      );
    }
    return caller;
  }
}

/**
 * The {@linkcode CALLER_HEADER} value for a caller.
 *
 * @param caller The authorised caller.
 * @returns `<role> <name>`.
 */
export function formatCaller(caller: Caller): string {
  return `${caller.role} ${caller.name}`;
}

/**
 * Reads a {@linkcode CALLER_HEADER} value.
 *
 * @param value The header's value.
 * @returns The caller, or `null` if the value is not `<role> <name>` with a known role and a
 * name of letters, digits, `.`, `_`, `@` and `-` (at most 64).
 */
export function parseCaller(value: string): Caller | null {
  const match = /^(read|write|admin) ([A-Za-z0-9][A-Za-z0-9._@-]{0,63})$/.exec(value);
  if (match === null) return null;
  return { role: match[1] as AccessRole, name: match[2]! };
}

/** Checks the tokens and keeps their hashes (see the {@linkcode TokenAuthenticator} constructor). */
function _entries(tokens: readonly ApiToken[]): { hash: Uint8Array; caller: Caller }[] {
  if (tokens.length === 0) throw new RangeError("TokenAuthenticator needs at least one token");
  const seen = new Set<string>();
  return tokens.map((t, i) => {
    if (typeof t.token !== "string" || t.token === "" || seen.has(t.token)) {
      throw new RangeError(`token ${i + 1} is empty or repeats an earlier one`);
    }
    if (!ACCESS_ROLES.includes(t.role)) {
      throw new RangeError(`token ${i + 1} has an unknown role ${JSON.stringify(t.role)}`);
    }
    seen.add(t.token);
    return { hash: _hash(t.token), caller: { name: t.name ?? `token-${i + 1}`, role: t.role } };
  });
}

function _hash(token: string): Uint8Array {
  return createHash("sha256").update(token).digest();
}
