import assert from "node:assert/strict";
import { ApiLimits, type LimitOptions, RESPONSE_CHUNK_BYTES } from "./limits.ts";
import { jsonResponse } from "./errors.ts";

const OPTIONS: LimitOptions = {
  maxInflightRequests: 2,
  maxInflightBytes: 100,
  maxBodyBytes: 60,
  maxForwardedRequests: 1,
  maxConcurrentBackups: 1,
  backupTimeoutMs: 60_000,
  maxWatchers: 2,
};

function request(method: string, contentLength?: string): Request {
  const headers = contentLength === undefined ? {} : { "content-length": contentLength };
  return new Request("http://node.test/v1/data/a", { method, headers });
}

Deno.test("a request counts its Content-Length, capped at maxBodyBytes, or maxBodyBytes for a chunked write", () => {
  const limits = new ApiLimits(OPTIONS);
  assert.equal(limits.declaredBodyBytes(request("PUT", "10")), 10);
  assert.equal(limits.declaredBodyBytes(request("PUT", "1000")), 60);
  assert.equal(limits.declaredBodyBytes(request("PUT")), 60);
  assert.equal(limits.declaredBodyBytes(request("POST", "not a number")), 60);
  assert.equal(limits.declaredBodyBytes(request("GET")), 0);
  assert.equal(limits.declaredBodyBytes(request("DELETE")), 0);
});

Deno.test("requests are admitted up to maxInflightRequests and again once one ends", () => {
  const limits = new ApiLimits(OPTIONS);
  assert.equal(limits.admitRequest(0), true);
  assert.equal(limits.admitRequest(0), true);
  assert.equal(limits.admitRequest(0), false);
  limits.releaseRequest(0);
  assert.equal(limits.admitRequest(0), true);
});

Deno.test("maxInflightBytes refuses a request that would pass it, unless it is the only one", () => {
  const limits = new ApiLimits({ ...OPTIONS, maxInflightRequests: 10 });
  assert.equal(limits.admitRequest(150), true); // alone: admitted though over the budget
  assert.equal(limits.admitRequest(1), false);
  limits.releaseRequest(150);
  assert.equal(limits.admitRequest(60), true);
  assert.equal(limits.admitRequest(40), true); // exactly at the budget
  assert.equal(limits.admitRequest(1), false);
});

Deno.test("forwards are admitted up to maxForwardedRequests and again once one ends", () => {
  const limits = new ApiLimits(OPTIONS);
  assert.equal(limits.acquireForward(), true);
  assert.equal(limits.acquireForward(), false);
  limits.releaseForward();
  assert.equal(limits.acquireForward(), true);
});

Deno.test("a bounded backup counts until it is read to the end and passes every chunk on", async () => {
  const limits = new ApiLimits(OPTIONS);
  const source = ReadableStream.from([new Uint8Array([1, 2]), new Uint8Array([3])]);
  const stream = limits.boundedBackup(source);
  assert.equal(limits.backups, 1);
  const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  assert.deepEqual([...bytes], [1, 2, 3]);
  assert.equal(limits.backups, 0);
});

Deno.test("a bounded backup cancelled by its reader stops counting and cancels its source", async () => {
  const limits = new ApiLimits(OPTIONS);
  let cancelled: unknown = null;
  const source = new ReadableStream<Uint8Array>({
    pull: (controller) => controller.enqueue(new Uint8Array([7])),
    cancel: (reason) => void (cancelled = reason),
  });
  const stream = limits.boundedBackup(source);
  await stream.cancel("client left");
  assert.equal(limits.backups, 0);
  assert.equal(cancelled, "client left");
});

Deno.test("a bounded backup not read within backupTimeoutMs fails, releases its source and stops counting", async () => {
  const limits = new ApiLimits({ ...OPTIONS, backupTimeoutMs: 20 });
  let sourceCancelled: (reason: unknown) => void = () => {};
  const cancelledWith = new Promise((resolve) => sourceCancelled = resolve);
  const source = new ReadableStream<Uint8Array>({
    pull: () => new Promise(() => {}), // a source that never yields
    cancel: (reason) => sourceCancelled(reason),
  });
  const reader = limits.boundedBackup(source).getReader();
  await assert.rejects(reader.read(), { name: "TimeoutError", message: /backupTimeoutMs/ });
  assert.equal(((await cancelledWith) as DOMException).name, "TimeoutError");
  assert.equal(limits.backups, 0);
});

Deno.test("watch streams are admitted up to maxWatchers and again once one ends", () => {
  const limits = new ApiLimits(OPTIONS);
  assert.equal(limits.acquireWatcher(), true);
  assert.equal(limits.acquireWatcher(), true);
  assert.equal(limits.acquireWatcher(), false);
  assert.equal(limits.watchers, 2);
  limits.releaseWatcher();
  assert.equal(limits.watchers, 1);
  assert.equal(limits.acquireWatcher(), true);
});

Deno.test("watch streams and blocking reads share maxWatchers", () => {
  const limits = new ApiLimits(OPTIONS);
  assert.equal(limits.acquireBlockingRead(), true);
  assert.equal(limits.acquireWatcher(), true);
  assert.equal(limits.acquireBlockingRead(), false);
  assert.equal(limits.acquireWatcher(), false);
  assert.deepEqual([limits.watchers, limits.blockingReads], [1, 1]);
  limits.releaseBlockingRead();
  assert.equal(limits.acquireWatcher(), true);
  assert.deepEqual([limits.watchers, limits.blockingReads], [2, 0]);
});

Deno.test("an admitted request gives its slot back while it pauses, and must find one free to resume", () => {
  const limits = new ApiLimits(OPTIONS);
  const waiting = limits.admit(10)!;
  assert.equal(limits.inflight, 1);
  waiting.pause();
  waiting.pause(); // once only
  assert.deepEqual([limits.inflight, limits.inflightBytes, waiting.held], [0, 0, false]);
  const a = limits.admit(0)!;
  const b = limits.admit(0)!;
  assert.equal(limits.admit(0), null); // full
  assert.equal(waiting.resume(), false);
  a.release();
  assert.equal(waiting.resume(), true);
  assert.deepEqual([limits.inflight, limits.inflightBytes], [2, 10]);
  waiting.release();
  b.release();
  b.release(); // once only
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
  assert.equal(waiting.resume(), false); // over for good
});

Deno.test("an answer keeps its slot and counts its bytes until the server has taken its body, chunk by chunk", async () => {
  const limits = new ApiLimits({ ...OPTIONS, maxInflightBytes: 1 << 20 });
  const size = 2 * RESPONSE_CHUNK_BYTES + 5;
  const body = new Uint8Array(size).map((_, i) => i % 251);
  const admitted = limits.admit(7)!;
  const res = await admitted.send(
    new Response(body, { status: 201, headers: { "x-test": "1" } }),
  );
  assert.equal(res.status, 201);
  assert.equal(res.headers.get("x-test"), "1");
  assert.equal(res.headers.get("content-length"), String(size));
  assert.deepEqual([limits.inflight, limits.inflightBytes], [1, 7 + size]);
  const reader = res.body!.getReader();
  const chunks: number[] = [];
  let got = new Uint8Array(0);
  for (let i = 0; i < 2; i++) {
    const { value } = await reader.read();
    chunks.push(value!.byteLength);
    got = new Uint8Array([...got, ...value!]);
    assert.equal(limits.inflight, 1); // not all taken yet
  }
  const last = await reader.read();
  chunks.push(last.value!.byteLength);
  got = new Uint8Array([...got, ...last.value!]);
  // The last chunk taken: released.
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
  assert.deepEqual(chunks, [RESPONSE_CHUNK_BYTES, RESPONSE_CHUNK_BYTES, 5]);
  assert.deepEqual(got, body);
  assert.equal((await reader.read()).done, true);
});

Deno.test("a JSON answer known small is handed over as it is, unread, its slot released at once", async () => {
  const limits = new ApiLimits(OPTIONS);
  const small = jsonResponse(200, { k: "a", v: "x".repeat(100) });
  assert.equal(await limits.admit(0)!.send(small), small);
  assert.equal(small.bodyUsed, false);
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
  // One that may be larger than a chunk is measured (and here streamed).
  const large = jsonResponse(200, { v: "x".repeat(RESPONSE_CHUNK_BYTES) });
  const sent = await limits.admit(0)!.send(large);
  assert.notEqual(sent, large);
  assert.equal(limits.inflight, 1);
  await sent.body!.cancel();
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
});

Deno.test("an answer cancelled by the client releases its slot; a small one or one without a body at once", async () => {
  const limits = new ApiLimits(OPTIONS);
  const res = await limits.admit(0)!.send(new Response("x".repeat(3 * RESPONSE_CHUNK_BYTES)));
  assert.equal(limits.inflight, 1);
  await res.body!.cancel("client left");
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
  await limits.admit(0)!.send(new Response(null, { status: 204 }));
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
  // An empty body, or one of a chunk at most, is handed over whole at once.
  const empty = await limits.admit(0)!.send(new Response(""));
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
  assert.equal(await empty.text(), "");
  const small = "z".repeat(RESPONSE_CHUNK_BYTES);
  const one = await limits.admit(0)!.send(new Response(small, { status: 404 }));
  assert.deepEqual([limits.inflight, limits.inflightBytes, one.status], [0, 0, 404]);
  assert.equal(await one.text(), small);
});

Deno.test("an answer the server takes nothing of for responseStallMs is cut off and released", async () => {
  const limits = new ApiLimits({ ...OPTIONS, maxInflightBytes: 1 << 20, responseStallMs: 30 });
  const res = await limits.admit(0)!.send(new Response("y".repeat(2 * RESPONSE_CHUNK_BYTES)));
  const reader = res.body!.getReader();
  assert.equal((await reader.read()).value!.byteLength, RESPONSE_CHUNK_BYTES); // some progress
  assert.equal(limits.inflight, 1);
  // Then nothing for longer than the bound.
  const started = Date.now();
  while (limits.inflight > 0 && Date.now() - started < 5_000) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
  await assert.rejects(reader.read(), { name: "TimeoutError", message: /took nothing/ });
});
