import assert from "node:assert/strict";
import { ApiLimits, type LimitOptions } from "./limits.ts";

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
