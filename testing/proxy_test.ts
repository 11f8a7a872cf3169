/**
 * The link proxy's slow links ({@linkcode LinkProxy.setDelay}), over real loopback connections to
 * an echo server: every byte arrives, in order, no sooner than the delay; a stall adds to it; a fast
 * link is fast again; bytes held when the link is cut are lost.
 */

import assert from "node:assert/strict";
import { waitFor } from "./harness.ts";
import { LinkProxy } from "./proxy.ts";

/** An echo server on a free loopback port; close it when done. */
function _echoServer(): { port: number; close: () => Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const serving = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      conn.readable.pipeTo(conn.writable).catch(() => {}).finally(() => conns.delete(conn));
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    close: async () => {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }
      await serving;
    },
  };
}

/** Reads exactly `n` bytes (or fewer if the connection ends first). */
async function _readBytes(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const read = await conn.read(out.subarray(got));
    if (read === null) return out.subarray(0, got);
    got += read;
  }
  return out;
}

/** Sends `bytes` through the proxy and waits for their echo; returns the echo and the time. */
async function _roundTrip(conn: Deno.Conn, bytes: Uint8Array): Promise<[Uint8Array, number]> {
  const started = performance.now();
  const reading = _readBytes(conn, bytes.length);
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
  const echo = await reading;
  return [echo, performance.now() - started];
}

/** Runs `fn` with a proxy to an echo server and a connection through it; closes everything. */
async function _throughProxy(
  fn: (proxy: LinkProxy, conn: Deno.TcpConn) => Promise<void>,
): Promise<void> {
  const echo = _echoServer();
  const proxy = LinkProxy.listen({ port: echo.port });
  let conn: Deno.TcpConn | null = null;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
    await fn(proxy, conn);
  } finally {
    try {
      conn?.close();
    } catch {
      // Closed by the proxy.
    }
    await proxy.close();
    await echo.close();
  }
}

Deno.test("LinkProxy.setDelay: a slow link delivers every byte in order, no sooner than the delay each way", async () => {
  await _throughProxy(async (proxy, conn) => {
    proxy.setDelay({ minMs: 60, maxMs: 90 });
    // Many small writes in a row: each chunk draws its own delay, and none may overtake another.
    const bytes = Uint8Array.from({ length: 200_000 }, (_, i) => (i * 7919) % 251);
    const started = performance.now();
    const reading = _readBytes(conn, bytes.length);
    for (let offset = 0; offset < bytes.length; offset += 1000) {
      await conn.write(bytes.subarray(offset, offset + 1000));
    }
    const got = await reading;
    const took = performance.now() - started;
    assert.deepEqual(got, bytes);
    assert.ok(
      took >= 118,
      `the echo came back after ${took.toFixed(1)} ms (two delays: >= 120 - 2)`,
    );

    proxy.setDelay(null);
    const [fast, fastMs] = await _roundTrip(conn, new Uint8Array([1, 2, 3]));
    assert.deepEqual(fast, new Uint8Array([1, 2, 3]));
    assert.ok(fastMs < 100, `a fast link took ${fastMs.toFixed(1)} ms`);
    assert.equal(proxy.bytesForwarded, 2 * (bytes.length + 3));
    assert.equal(proxy.heldBytes, 0);
  });
});

Deno.test("LinkProxy.setDelay: a stall holds the direction for longer, and is counted", async () => {
  await _throughProxy(async (proxy, conn) => {
    proxy.setDelay({ minMs: 0, maxMs: 0, stallRate: 1, stallMs: 150 });
    assert.deepEqual(proxy.delay, { minMs: 0, maxMs: 0, stallRate: 1, stallMs: 150 });
    const [got, ms] = await _roundTrip(conn, new Uint8Array([9]));
    assert.deepEqual(got, new Uint8Array([9]));
    // Timers count whole milliseconds and may fire a fraction of one early on this clock (a CI
    // run measured 299.9 ms): a millisecond's leeway per stall.
    assert.ok(ms >= 298, `a stalled round trip took ${ms.toFixed(1)} ms (>= 2 x 150 - 2)`);
    assert.equal(proxy.stalls, 2);
    assert.throws(() => proxy.setDelay({ minMs: 10, maxMs: 5 }), RangeError);
    assert.throws(() => proxy.setDelay({ minMs: 0, maxMs: 1, stallRate: 2 }), RangeError);
  });
});

Deno.test("LinkProxy.setDelay: bytes held on a slow link when it is cut are lost", async () => {
  await _throughProxy(async (proxy, conn) => {
    proxy.setDelay({ minMs: 1000, maxMs: 1000 });
    await conn.write(new Uint8Array([1, 2, 3]));
    await waitFor(() => proxy.heldBytes === 3, {
      deadlineMs: 900,
      intervalMs: 5,
      message: "the proxy to hold the 3 bytes",
    });
    proxy.setMode("drop");
    // Nothing comes back, neither within the delay nor well past it; open again: the connection
    // ends (it lost bytes).
    const reading = conn.read(new Uint8Array(3));
    const outcome = await Promise.race([
      reading.then((n) => `read ${n}`, () => "closed"),
      new Promise<string>((resolve) => setTimeout(() => resolve("nothing"), 1500)),
    ]);
    assert.equal(outcome, "nothing");
    proxy.setMode("open");
    assert.equal(await reading.then((n) => n, () => null), null);
    assert.equal(proxy.bytesForwarded, 0);
    assert.equal(proxy.heldBytes, 0);
  });
});
