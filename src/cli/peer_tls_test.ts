import assert from "node:assert/strict";
import { isLoopbackHost, peerSecurityWarning } from "./peer_tls.ts";

Deno.test("isLoopbackHost() knows loopback addresses from the rest", () => {
  for (
    const host of ["localhost", "LOCALHOST", "node.localhost", "127.0.0.1", "127.1.2.3", "::1"]
  ) {
    assert.ok(isLoopbackHost(host), host);
  }
  for (const host of ["0.0.0.0", "::", "10.0.0.1", "raftkv-1", "127.0.0.1.example", "::ffff:1"]) {
    assert.ok(!isLoopbackHost(host), host);
  }
});

Deno.test("peerSecurityWarning() warns about a peer port beyond loopback without mutual TLS only", () => {
  assert.match(
    peerSecurityWarning("0.0.0.0", false)!,
    /^The peer port listens on 0\.0\.0\.0 without peer authentication: anyone who can reach it/,
  );
  assert.equal(peerSecurityWarning("0.0.0.0", true), null);
  assert.equal(peerSecurityWarning("127.0.0.1", false), null);
});
