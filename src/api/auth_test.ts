import assert from "node:assert/strict";
import {
  ACCESS_ROLES,
  allows,
  bearerToken,
  formatCaller,
  parseCaller,
  requiredRole,
  TokenAuthenticator,
  WWW_AUTHENTICATE,
} from "./auth.ts";
import { ApiError } from "./errors.ts";

Deno.test("requiredRole() maps every route to the role it needs", () => {
  const table: [method: string, path: string, role: string | null][] = [
    ["GET", "/health", null],
    ["GET", "/ready", null],
    ["POST", "/health", null],
    ["GET", "/v1/status", "read"],
    ["GET", "/v1/cluster", "read"],
    ["GET", "/metrics", "read"],
    ["GET", "/ui", null],
    ["GET", "/ui/app.js", null],
    ["GET", "/uix", "admin"],
    ["GET", "/v1/data/a", "read"],
    ["GET", "/v1/data/a%2Fb", "read"],
    ["HEAD", "/v1/data/a", "read"],
    ["PUT", "/v1/data/a", "write"],
    ["DELETE", "/v1/data/a", "write"],
    ["PATCH", "/v1/data/a", "write"],
    ["POST", "/v1/data", "write"],
    ["GET", "/v1/data", "read"],
    ["DELETE", "/v1/data", "write"],
    ["POST", "/v1/txn", "write"],
    ["GET", "/v1/txn", "write"],
    ["GET", "/v1/snapshot", "admin"],
    ["POST", "/v1/members", "admin"],
    ["POST", "/v1/leader/transfer", "admin"],
    ["GET", "/v1/datax", "admin"],
    ["GET", "/", "admin"],
    ["GET", "/health/", "admin"],
  ];
  for (const [method, path, role] of table) {
    assert.equal(requiredRole(method, path), role, `${method} ${path}`);
  }
});

Deno.test("allows() orders the roles read < write < admin", () => {
  const granted = ACCESS_ROLES.flatMap((held) =>
    ACCESS_ROLES.filter((needed) => allows(held, needed)).map((needed) => `${held}>=${needed}`)
  );
  assert.deepEqual(granted, [
    "read>=read",
    "write>=read",
    "write>=write",
    "admin>=read",
    "admin>=write",
    "admin>=admin",
  ]);
});

Deno.test("bearerToken() reads only the Bearer scheme", () => {
  assert.equal(bearerToken("Bearer abc.def"), "abc.def");
  assert.equal(bearerToken("bearer  abc "), "abc");
  assert.equal(bearerToken("BEARER abc"), "abc");
  for (const bad of [null, "", "Bearer", "Bearer ", "Basic abc", "Bearer a b", "Bearerabc"]) {
    assert.equal(bearerToken(bad), null, String(bad));
  }
});

Deno.test("TokenAuthenticator.identify() matches whole tokens of any length through their hashes", () => {
  const auth = new TokenAuthenticator([
    { token: "a".repeat(16), role: "read", name: "short" },
    { token: "b".repeat(200), role: "admin" },
  ]);
  assert.deepEqual(auth.identify("a".repeat(16)), { name: "short", role: "read" });
  assert.deepEqual(auth.identify("b".repeat(200)), { name: "token-2", role: "admin" });
  // Prefixes, extensions and near misses of either length are unknown. Presented tokens of any
  // length are compared (raw timingSafeEqual would throw on a length mismatch): they are hashed
  // to one length first.
  for (
    const t of ["a".repeat(15), "a".repeat(17), "a".repeat(15) + "b", "b".repeat(199), "", "x"]
  ) {
    assert.equal(auth.identify(t), null, t);
  }
});

Deno.test("TokenAuthenticator.identify() compares against every token, whichever matches", () => {
  // The comparison loop must not stop at the first match, or the time would tell which token
  // matched: with many tokens, a match in first place must cost about as much as one in last.
  const tokens = Array.from({ length: 300 }, (_, i) => ({
    token: `token-${String(i).padStart(12, "0")}`,
    role: "read" as const,
  }));
  const auth = new TokenAuthenticator(tokens);
  const time = (token: string) => {
    const start = performance.now();
    for (let i = 0; i < 10; i++) auth.identify(token);
    return performance.now() - start;
  };
  time(tokens[0]!.token); // warm up
  const first = Math.min(time(tokens[0]!.token), time(tokens[0]!.token), time(tokens[0]!.token));
  const last = Math.min(
    time(tokens[299]!.token),
    time(tokens[299]!.token),
    time(tokens[299]!.token),
  );
  // An early exit would make the first-place match about a hundred times cheaper.
  assert.ok(first > last / 5, `first ${first.toFixed(2)} ms, last ${last.toFixed(2)} ms`);
});

Deno.test("TokenAuthenticator.authorize() answers 401 with WWW-Authenticate, or 403 for a role too weak", () => {
  const auth = new TokenAuthenticator([{ token: "r".repeat(16), role: "read", name: "ro" }]);
  const req = (authorization?: string) =>
    new Request("http://x/v1/data/a", authorization ? { headers: { authorization } } : {});
  assert.deepEqual(auth.authorize(req(`Bearer ${"r".repeat(16)}`), "read"), {
    name: "ro",
    role: "read",
  });
  for (const header of [undefined, "Basic x", `Bearer ${"r".repeat(17)}`]) {
    assert.throws(
      () => auth.authorize(req(header), "read"),
      (e) =>
        e instanceof ApiError && e.status === 401 &&
        e.headers["www-authenticate"] === WWW_AUTHENTICATE,
    );
  }
  try {
    auth.authorize(req(`Bearer ${"r".repeat(16)}`), "write");
    assert.fail("expected a 403");
  } catch (e) {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 403);
    assert.equal(e.message, 'the token "ro" has the role read; this request needs write');
  }
});

Deno.test("TokenAuthenticator refuses no tokens, empty or repeated ones and unknown roles", () => {
  assert.throws(() => new TokenAuthenticator([]), RangeError);
  assert.throws(() => new TokenAuthenticator([{ token: "", role: "read" }]), RangeError);
  assert.throws(
    () =>
      new TokenAuthenticator([{ token: "x".repeat(16), role: "read" }, {
        token: "x".repeat(16),
        role: "admin",
      }]),
    RangeError,
  );
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => new TokenAuthenticator([{ token: "x".repeat(16), role: "root" as any }]),
    RangeError,
  );
});

Deno.test("formatCaller() and parseCaller() carry a caller as '<role> <name>'", () => {
  for (const role of ACCESS_ROLES) {
    const caller = { role, name: "ci.bot@example-1" };
    assert.equal(formatCaller(caller), `${role} ci.bot@example-1`);
    assert.deepEqual(parseCaller(formatCaller(caller)), caller);
  }
  for (const bad of ["", "read", "read ", "root x", "READ x", "read a b", "read -x", " read x"]) {
    assert.equal(parseCaller(bad), null, JSON.stringify(bad));
  }
  assert.equal(parseCaller(`read ${"n".repeat(65)}`), null);
});
