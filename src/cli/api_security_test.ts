import assert from "node:assert/strict";
import { isLoopbackHost, MIN_TOKEN_LENGTH, parseTokens } from "./api_security.ts";
import { ConfigError } from "./errors.ts";

const GOOD = "0123456789abcdef0123456789abcdef";

function refused(text: string, fragment: string | RegExp): void {
  let caught: unknown;
  try {
    parseTokens(text, '--tokens-file "t.json"');
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ConfigError, `${text}: expected a ConfigError, got ${caught}`);
  assert.match(
    caught.message,
    typeof fragment === "string" ? new RegExp(RegExp.escape(fragment)) : fragment,
  );
}

Deno.test("parseTokens() reads tokens with their roles and names, naming the unnamed by position", () => {
  const tokens = parseTokens(
    JSON.stringify([
      { token: GOOD, role: "read", name: "dashboard" },
      { token: "A".repeat(MIN_TOKEN_LENGTH), role: "write" },
      { token: "abc+/DEF_ghi-jkl.mno~pq==", role: "admin", name: "ops@example.com" },
    ]),
    "RAFTKV_TOKENS",
  );
  assert.deepEqual(tokens, [
    { token: GOOD, role: "read", name: "dashboard" },
    { token: "A".repeat(MIN_TOKEN_LENGTH), role: "write", name: "token-2" },
    { token: "abc+/DEF_ghi-jkl.mno~pq==", role: "admin", name: "ops@example.com" },
  ]);
});

Deno.test("parseTokens() refuses anything but a non-empty array of well-formed entries", () => {
  const one = (entry: unknown) => JSON.stringify([entry]);
  refused("{", "not valid JSON");
  refused('{"token":"x"}', "expected a JSON array");
  refused("[]", "lists no tokens");
  refused("[1]", "entry 1 is not an object");
  refused(one({ token: GOOD, role: "read", scope: "x" }), 'unknown field "scope"');
  refused(one({ role: "read" }), '"token" must be a non-empty string');
  refused(one({ token: "", role: "read" }), '"token" must be a non-empty string');
  refused(one({ token: 12345678901234567890, role: "read" }), '"token" must be a non-empty');
  refused(one({ token: "short-token", role: "read" }), "has 11 characters; use at least 16");
  refused(one({ token: `${GOOD} x`, role: "read" }), "may hold only letters, digits");
  refused(one({ token: `${GOOD}\u00e9`, role: "read" }), "may hold only letters, digits");
  refused(one({ token: GOOD }), '"role" is missing');
  refused(one({ token: GOOD, role: "root" }), '"role" is "root"; expected "read", "write" or');
  refused(one({ token: GOOD, role: "Read" }), '"role" is "Read"');
  refused(one({ token: GOOD, role: "read", name: "" }), '"name" "" must be');
  refused(one({ token: GOOD, role: "read", name: "a b" }), '"name" "a b" must be');
  refused(one({ token: GOOD, role: "read", name: 7 }), '"name" 7 must be');
  refused(
    JSON.stringify([{ token: GOOD, role: "read" }, { token: "x".repeat(20), role: "read" }, {
      token: GOOD,
      role: "admin",
    }]),
    "entry 3: the same token as entry 1",
  );
});

Deno.test("parseTokens() never quotes a token in its messages", () => {
  const secret = "s3cr3t-s3cr3t-s3cr3t";
  const cases = [
    [{ token: secret, role: "nope" }],
    [{ token: secret, role: "read" }, { token: secret, role: "write" }],
    [{ token: `${secret} `, role: "read" }],
    [{ token: secret.slice(0, 8), role: "read" }],
  ];
  for (const entries of cases) {
    try {
      parseTokens(JSON.stringify(entries), "RAFTKV_TOKENS");
      assert.fail("expected a ConfigError");
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      assert.ok(!e.message.includes(secret.slice(0, 8)), e.message);
    }
  }
});

Deno.test("isLoopbackHost() accepts only addresses of this machine", () => {
  for (const host of ["localhost", "LOCALHOST", "127.0.0.1", "127.255.0.9", "::1"]) {
    assert.ok(isLoopbackHost(host), host);
  }
  for (const host of ["0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "127.0.0.1.example", "kv-0"]) {
    assert.ok(!isLoopbackHost(host), host);
  }
});
