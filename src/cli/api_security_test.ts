import assert from "node:assert/strict";
import {
  isLoopbackHost,
  MIN_TOKEN_LENGTH,
  parseTokens,
  reloadTokensFile,
  type TokenConfig,
} from "./api_security.ts";
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
  // Text that is not JSON: the parser's own messages quote the text around the fault.
  const texts = [
    ...cases.map((entries) => JSON.stringify(entries)),
    secret,
    `[{"token":"${secret}","role":read}]`,
    `[{"token":"${secret}" "role":"read"}]`,
  ];
  for (const text of texts) {
    try {
      parseTokens(text, "RAFTKV_TOKENS");
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

Deno.test("reloadTokensFile() puts the file's tokens in force, or changes nothing and says why", () => {
  const file = { value: "t.json", origin: "--tokens-file" };
  const given: (readonly TokenConfig[])[] = [];
  const replace = (tokens: readonly TokenConfig[]) => {
    given.push(tokens);
    return given.length === 1 ? 0 : 3;
  };
  const text = JSON.stringify([{ token: GOOD, role: "read", name: "dashboard" }]);
  assert.deepEqual(reloadTokensFile(file, replace, () => text), {
    level: "info",
    message: 'SIGHUP: reloaded 1 token from --tokens-file "t.json"',
  });
  assert.deepEqual(given, [[{ token: GOOD, role: "read", name: "dashboard" }]]);
  const two = JSON.stringify([{ token: GOOD, role: "read" }, {
    token: "B".repeat(16),
    role: "admin",
  }]);
  assert.equal(
    reloadTokensFile(file, replace, () => two).message,
    'SIGHUP: reloaded 2 tokens from --tokens-file "t.json"; ended 3 requests held on a revoked ' +
      "token (watch streams, blocking reads)",
  );

  // Unreadable, or refused by parseTokens (never quoting a token): nothing is replaced.
  const failures = [
    () => {
      throw new Deno.errors.NotFound("No such file or directory");
    },
    () => "[]",
    () => JSON.stringify([{ token: "short-secret", role: "read" }]),
  ];
  for (const readFile of failures) {
    const said = reloadTokensFile(file, replace, readFile);
    assert.equal(said.level, "error");
    assert.match(said.message, /^SIGHUP: could not reload the tokens \(.+\); the tokens in force/);
    assert.doesNotMatch(said.message, /short-secret/);
  }
  assert.equal(given.length, 2, "a failed reload replaces nothing");
  // Tokens from RAFTKV_TOKENS (or none) are not reloaded.
  assert.equal(reloadTokensFile(null, replace, () => text).level, "warn");
  assert.equal(given.length, 2);
});
