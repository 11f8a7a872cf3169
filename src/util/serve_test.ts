import assert from "node:assert/strict";
import { freePort } from "../../testing/harness.ts";
import { serveAgain } from "./serve.ts";

/** `promise`, or a rejection after `ms` (a broken swap must fail the test, not hang it). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

Deno.test("serveAgain: swaps run in order on the same port, an open response goes on, bad options fall back", async () => {
  const port = freePort();
  const errors: string[] = [];
  let listens = 0;
  let streamed: ReadableStreamDefaultController<Uint8Array> | null = null;
  const options = { port, hostname: "127.0.0.1", onListen: () => listens++ };
  const server = serveAgain("test", options, (req) => {
    if (new URL(req.url).pathname === "/stream") {
      return new Response(new ReadableStream({ start: (c) => void (streamed = c) }));
    }
    return new Response(`listen ${listens}`);
  }, { error: (m) => errors.push(m) });
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  const get = async (path: string) => {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { client });
    return res;
  };
  try {
    assert.equal(await (await get("/")).text(), "listen 1");
    const open = await get("/stream");
    const reader = open.body!.getReader();

    // Two swaps asked at once: both listen, one after the other.
    await within(
      Promise.all([server.relisten(options), server.relisten(options)]),
      5_000,
      "two swaps",
    );
    assert.equal(listens, 3);
    assert.equal(await (await get("/")).text(), "listen 3");
    // The response the first server was sending goes on.
    streamed!.enqueue(new TextEncoder().encode("still here"));
    assert.equal(new TextDecoder().decode((await reader.read()).value), "still here");
    streamed!.close();
    assert.equal((await reader.read()).done, true);

    // Options that do not listen: the swap fails and the previous options listen again.
    await assert.rejects(server.relisten({ ...options, cert: "not a certificate", key: "no key" }));
    assert.equal(listens, 4);
    assert.equal(await (await get("/")).text(), "listen 4");
    assert.deepEqual(errors, []);
  } finally {
    client.close();
    await within(server.shutdown(), 5_000, "the shutdown");
  }
});
