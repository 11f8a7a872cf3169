import assert from "node:assert/strict";
import { ApiError } from "./errors.ts";
import { leaseParam, MAX_LEASE_TTL_MS, parseTtl, ttlText } from "./leases.ts";

Deno.test("a TTL is a duration or a number of seconds, from 1ms to the limit", () => {
  assert.equal(parseTtl("10s", "ttl"), 10_000);
  assert.equal(parseTtl("1m30s", "ttl"), 90_000);
  assert.equal(parseTtl("250ms", "ttl"), 250);
  assert.equal(parseTtl("1.5s", "ttl"), 1500);
  assert.equal(parseTtl(5, "ttl"), 5000);
  assert.equal(parseTtl(0.25, "ttl"), 250);
  // Seconds as text too (`?ttl=10`, `raftkv lease grant 10`, as etcdctl takes them).
  assert.equal(parseTtl("10", "ttl"), 10_000);
  assert.equal(parseTtl("0.5", "ttl"), 500);
  for (
    const bad of ["", "soon", "0s", "-1s", "1.0005s", 0, -3, null, true, "1d", "0", "1e3", " 5"]
  ) {
    assert.throws(() => parseTtl(bad, '"ttl"'), (e) => e instanceof ApiError && e.status === 400);
  }
  assert.equal(parseTtl(`${MAX_LEASE_TTL_MS}ms`, "ttl"), MAX_LEASE_TTL_MS);
  assert.throws(() => parseTtl(`${MAX_LEASE_TTL_MS + 1}ms`, "ttl"), ApiError);
  assert.equal(ttlText(10_000), "10s");
  assert.equal(ttlText(1500), "1500ms");
});

Deno.test("a put names an existing lease or a TTL for a new one, not both", () => {
  const url = (q: string) => new URL(`http://n/v1/data/k${q}`);
  assert.equal(leaseParam(url("")), undefined);
  assert.deepEqual(leaseParam(url("?lease=42")), { id: 42 });
  assert.deepEqual(leaseParam(url("?ttl=10s&cas=0")), { ttlMs: 10_000 });
  for (
    const q of [
      "?lease=0",
      "?lease=x",
      "?lease=-1",
      "?lease=12345678901234567",
      "?ttl=",
      "?lease=1&ttl=1s",
    ]
  ) {
    assert.throws(() => leaseParam(url(q)), (e) => e instanceof ApiError && e.status === 400, q);
  }
});
