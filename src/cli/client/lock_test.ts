import assert from "node:assert/strict";
import { runClient } from "./client.ts";
import { lockHolder } from "./lock.ts";
import type { ClientIo } from "./output.ts";

const NO_ENV = () => undefined;

Deno.test("lockHolder() names the system's host name, not the HOSTNAME variable a shell does not export", () => {
  assert.equal(lockHolder(() => "build-7", NO_ENV, 42), "build-7 pid 42");
  assert.equal(
    lockHolder(() => "build-7", (name) => name === "HOSTNAME" ? "stale" : undefined, 42),
    "build-7 pid 42",
  );
  // The real one, as `raftkv lock` calls it: this test runs with the host name allowed.
  assert.equal(lockHolder(Deno.hostname, NO_ENV, Deno.pid), `${Deno.hostname()} pid ${Deno.pid}`);
  assert.doesNotMatch(lockHolder(Deno.hostname, NO_ENV, Deno.pid), /^\?/);
});

Deno.test("lockHolder() falls back to HOSTNAME, then to 'unknown host', when the host name cannot be had", () => {
  const denied = () => {
    throw new Deno.errors.NotCapable('Requires sys access to "hostname"');
  };
  const env = (name: string) => name === "HOSTNAME" ? "ci-runner" : undefined;
  assert.equal(lockHolder(denied, env, 7), "ci-runner pid 7");
  assert.equal(lockHolder(denied, NO_ENV, 7), "unknown host pid 7");
  assert.equal(lockHolder(() => "", NO_ENV, 7), "unknown host pid 7");
});

/** The answers of a JSON API with the index header raftkv gives (and extra headers). */
function _json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return Response.json(body, { status, headers: { "x-raftkv-index": "60", ...headers } });
}

/**
 * A node's API as `raftkv lock` uses it, for lease 50 of `ttlMs` on `jobs/lock/`: the values
 * written to the lock's key go to `values`, and `keepalive` answers each renewal.
 */
function _lockApi(
  ttlMs: number,
  values: string[],
  keepalive: () => Response,
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    const body = req.method === "PUT" ? await req.json() : await req.body?.cancel();
    if (url.pathname === "/v1/leases" && req.method === "POST") {
      return _json({ id: 50, ttl: `${ttlMs / 1000}s`, ttl_ms: ttlMs, index: 50 }, 201);
    }
    if (url.pathname === "/v1/leases/50/keepalive") return keepalive();
    if (url.pathname === "/v1/leases/50" && req.method === "DELETE") {
      return _json({ id: 50, revoked: true, deleted: ["jobs/lock/50"], index: 60 });
    }
    if (url.pathname === "/v1/data/jobs%2Flock%2F50" && req.method === "PUT") {
      values.push(body.v);
      return _json({ k: "jobs/lock/50", v: body.v, index: 51, create_index: 51, mod_index: 51 });
    }
    if (url.pathname === "/v1/data" && url.searchParams.get("prefix") === "jobs/lock/") {
      return _json({ items: [{ k: "jobs/lock/50", v: values[0], create_index: 51 }], next: null });
    }
    return _json({ error: `unexpected ${req.method} ${url.pathname}${url.search}` }, 400);
  });
}

/** Runs `raftkv lock jobs/lock` with `args` against `server`: its exit code and its stderr. */
async function _lock(
  server: Deno.HttpServer<Deno.NetAddr>,
  args: string[],
): Promise<{ code: number; err: string }> {
  let err = "";
  const io: ClientIo = {
    out: () => {},
    err: (text) => err += text + "\n",
    env: NO_ENV,
    stdin: () => Promise.resolve(""),
  };
  const endpoint = `http://127.0.0.1:${server.addr.port}`;
  const code = await runClient(["lock", "jobs/lock", "--endpoints", endpoint, ...args], io);
  return { code, err };
}

Deno.test("lock: the key's value names this host and process, whatever the environment holds", async () => {
  // A shell's HOSTNAME is not exported, so the client's environment has none: the value (what
  // waiters print after "held or waited for by") still names the host.
  const values: string[] = [];
  const server = _lockApi(10_000, values, () => _json({ id: 50, ttl_ms: 10_000 }));
  try {
    const { code, err } = await _lock(server, ["--", "true"]);
    assert.equal(code, 0, err);
    assert.deepEqual(values, [`${Deno.hostname()} pid ${Deno.pid}`]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("lock: renewals refused while the cluster elects a leader are tried again soon enough to keep a short lease", async () => {
  // A 3 s lease, renewed every second; the cluster answers 503 (Retry-After: 1) for 1.3 s from
  // the second renewal on, as while a leader is elected. Tried again only after the client's own
  // one-second pause, the second refusal left the next try past the TTL, and the lock was lost.
  let refuseUntil = 0;
  let keepalives = 0;
  let renewals = 0;
  const server = _lockApi(3_000, [], () => {
    if (++keepalives === 2) refuseUntil = performance.now() + 1300;
    if (performance.now() < refuseUntil) {
      return _json({ error: "no leader known" }, 503, { "retry-after": "1" });
    }
    renewals++;
    return _json({ id: 50, ttl_ms: 3_000 });
  });
  try {
    const { code, err } = await _lock(server, ["--ttl", "3s", "--", "sleep", "4"]);
    assert.equal(code, 0, err);
    assert.doesNotMatch(err, /lost/);
    assert.ok(renewals >= 2, `${renewals} renewals acknowledged`);
  } finally {
    await server.shutdown();
  }
});
