import assert from "node:assert/strict";
import type { KvBackend, NodeStatus } from "../node/backend.ts";
import { KvStateMachine } from "../kv/state_machine.ts";
import {
  ApiLimits,
  clientOf,
  type LimitOptions,
  type RefusalLimit,
  RESPONSE_CHUNK_BYTES,
} from "./limits.ts";
import { jsonResponse } from "./errors.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { parseSamples, sample } from "../../testing/prometheus.ts";
import { createApiHandler, FORWARDED_BY_HEADER } from "./handler.ts";

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

// The per-client bound, maxClientUnreadBytes: the bytes of large answers a client has not read.

/** More than a chunk: counted until the server has taken all of it. */
const LARGE = 3 * RESPONSE_CHUNK_BYTES;
const CLIENT_OPTIONS: LimitOptions = {
  ...OPTIONS,
  maxInflightRequests: 100,
  maxInflightBytes: 100 * LARGE,
  maxClientUnreadBytes: 2 * LARGE,
};
const refusal = () => new Response("refused", { status: 429 });

/** An answer of `bytes` bytes, sent for a request of `client` (refusable: a GET). */
async function answer(
  limits: ApiLimits,
  client: string | null,
  bytes = LARGE,
  refusable = true,
): Promise<Response> {
  const admitted = limits.admit(0, client);
  assert.ok(admitted !== null, `${client} was not admitted`);
  return await admitted.send(new Response("a".repeat(bytes)), refusable ? refusal : undefined);
}

Deno.test("clientOf() names a client by its IP address, IPv4 mapped into IPv6 as IPv4; not a socket's path", () => {
  assert.equal(clientOf({ transport: "tcp", hostname: "127.0.0.2", port: 1 }), "127.0.0.2");
  assert.equal(clientOf({ transport: "tcp", hostname: "::ffff:10.0.0.1", port: 2 }), "10.0.0.1");
  assert.equal(clientOf({ transport: "tcp", hostname: "2001:DB8::1", port: 3 }), "2001:db8::1");
  assert.equal(clientOf({ transport: "tcp", hostname: "::1", port: 4 }), "::1");
  assert.equal(clientOf({ transport: "unix", path: "/run/raftkv.sock" }), null);
});

Deno.test("a client's unread answers count against its share: past it, it is refused at admission and its reads are refused; another client is served", async () => {
  const limits = new ApiLimits(CLIENT_OPTIONS);
  const unread: Response[] = [];
  unread.push(await answer(limits, "10.0.0.1"));
  assert.deepEqual([limits.clientUnreadBytes("10.0.0.1"), limits.clientsWithUnread], [LARGE, 1]);
  // A second one still fits: the client's share is spent then.
  unread.push(await answer(limits, "10.0.0.1"));
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), 2 * LARGE);
  // At its share, a new request of that client is refused before anything is done.
  assert.equal(limits.admit(0, "10.0.0.1"), null);
  assert.equal(limits.inflight, 2);
  // Another client is admitted, and its large answer is counted apart.
  const other = await answer(limits, "10.0.0.2");
  assert.equal(other.status, 200);
  assert.deepEqual([limits.clientUnreadBytes("10.0.0.2"), limits.clientsWithUnread], [LARGE, 2]);
  assert.equal(await other.text(), "a".repeat(LARGE));
  assert.deepEqual([limits.clientUnreadBytes("10.0.0.2"), limits.clientsWithUnread], [0, 1]);
  // Read to the end: the first client's share is free again, its map entry gone.
  for (const res of unread) assert.equal((await res.arrayBuffer()).byteLength, LARGE);
  assert.deepEqual([limits.clientUnreadBytes("10.0.0.1"), limits.clientsWithUnread], [0, 0]);
  assert.deepEqual([limits.inflight, limits.inflightBytes], [0, 0]);
});

Deno.test("a read whose answer would pass its client's share gets the refusal, released at once; small answers are not counted", async () => {
  const limits = new ApiLimits({ ...CLIENT_OPTIONS, maxClientUnreadBytes: LARGE + 10 });
  const held = await answer(limits, "10.0.0.1");
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), LARGE);
  // Admitted (under its share), but its answer does not fit: refused once ready.
  const refused = await answer(limits, "10.0.0.1");
  assert.equal(refused.status, 429);
  assert.equal(await refused.text(), "refused");
  assert.deepEqual([limits.inflight, limits.inflightBytes], [1, LARGE]);
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), LARGE);
  // An answer of a chunk at most is handed over whole: never counted, never refused.
  const small = await answer(limits, "10.0.0.1", RESPONSE_CHUNK_BYTES);
  assert.equal(small.status, 200);
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), LARGE);
  assert.equal((await small.arrayBuffer()).byteLength, RESPONSE_CHUNK_BYTES);
  await held.body!.cancel();
  assert.deepEqual([limits.clientsWithUnread, limits.inflight, limits.inflightBytes], [0, 0, 0]);
});

Deno.test("a client that holds nothing may hold one answer larger than its share, as a request larger than the node's budget is admitted alone", async () => {
  const limits = new ApiLimits({ ...CLIENT_OPTIONS, maxClientUnreadBytes: 1000 });
  const res = await answer(limits, "10.0.0.1", 2 * LARGE);
  assert.equal(res.status, 200);
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), 2 * LARGE);
  assert.equal(limits.admit(0, "10.0.0.1"), null);
  await res.body!.cancel();
  assert.equal(limits.clientsWithUnread, 0);
  assert.ok(limits.admit(0, "10.0.0.1") !== null);
});

Deno.test("a write's answer past its client's share is still sent, and counted (its effect has happened)", async () => {
  const limits = new ApiLimits(CLIENT_OPTIONS);
  const reads = [await answer(limits, "10.0.0.1"), await answer(limits, "10.0.0.1", LARGE - 1)];
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), 2 * LARGE - 1);
  // Admitted (under its share by a byte); its answer passes it, and goes all the same.
  const write = await answer(limits, "10.0.0.1", LARGE, false);
  assert.equal(write.status, 200);
  assert.equal(write.headers.get("content-length"), String(LARGE));
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), 3 * LARGE - 1);
  assert.equal(limits.inflightBytes, 3 * LARGE - 1);
  assert.equal(limits.admit(0, "10.0.0.1"), null);
  assert.equal(await write.text(), "a".repeat(LARGE));
  for (const res of reads) await res.body!.cancel("client left");
  assert.deepEqual([limits.clientsWithUnread, limits.inflight, limits.inflightBytes], [0, 0, 0]);
});

Deno.test("a client's answers cut off for taking nothing release its share", async () => {
  const limits = new ApiLimits({ ...CLIENT_OPTIONS, responseStallMs: 30 });
  const res = await answer(limits, "10.0.0.1");
  const reader = res.body!.getReader();
  assert.equal((await reader.read()).value!.byteLength, RESPONSE_CHUNK_BYTES);
  assert.equal(limits.clientUnreadBytes("10.0.0.1"), LARGE); // counted until all of it is taken
  // Then nothing for longer than the bound.
  const started = Date.now();
  while (limits.clientsWithUnread > 0 && Date.now() - started < 5_000) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await assert.rejects(reader.read(), { name: "TimeoutError", message: /took nothing/ });
  assert.deepEqual([limits.clientsWithUnread, limits.inflight, limits.inflightBytes], [0, 0, 0]);
});

Deno.test("with maxClientUnreadBytes 0 (or without a client) nothing is counted per client: only the node's budget bounds", async () => {
  const { maxClientUnreadBytes: _, ...withoutBound } = CLIENT_OPTIONS;
  for (
    const [options, client] of [
      [{ ...CLIENT_OPTIONS, maxClientUnreadBytes: 0 }, "10.0.0.1"],
      [withoutBound, "10.0.0.1"], // not given: 0
      [CLIENT_OPTIONS, null],
    ] as const
  ) {
    const limits = new ApiLimits(options);
    const unread: Response[] = [];
    for (let i = 0; i < 5; i++) unread.push(await answer(limits, client));
    assert.deepEqual(unread.map((res) => res.status), [200, 200, 200, 200, 200]);
    assert.deepEqual([limits.clientsWithUnread, limits.inflightBytes], [0, 5 * LARGE]);
    assert.ok(limits.admit(0, client) !== null);
    for (const res of unread) await res.body!.cancel();
  }
});

/** Limits that record what each refusal says (`onRefusal`), in order. */
function refusing(options: LimitOptions): { limits: ApiLimits; refused: RefusalLimit[] } {
  const refused: RefusalLimit[] = [];
  return { limits: new ApiLimits({ ...options, onRefusal: (l) => refused.push(l) }), refused };
}

Deno.test("each check that refuses tells onRefusal its limit, once; what it admits tells nothing", async () => {
  // maxInflightRequests: the third request; a paused one that cannot take a slot again.
  let { limits, refused } = refusing(OPTIONS);
  const waiting = limits.admit(0)!;
  waiting.pause();
  const a = limits.admit(0)!;
  limits.admit(0)!;
  assert.deepEqual(refused, []);
  assert.equal(limits.admit(0), null);
  assert.equal(waiting.resume(), false);
  assert.equal(limits.admitRequest(0), false);
  assert.deepEqual(refused, ["requests", "requests", "requests"]);
  a.release();
  assert.equal(waiting.resume(), true);
  assert.equal(refused.length, 3);

  // maxInflightBytes: past it while another request is in progress (alone, any size goes).
  ({ limits, refused } = refusing({ ...OPTIONS, maxInflightRequests: 10 }));
  assert.ok(limits.admit(150) !== null);
  assert.equal(limits.admit(1), null);
  assert.deepEqual(refused, ["bytes"]);

  // maxForwardedRequests, maxWatchers (a watch stream, a blocking read), maxConcurrentBackups.
  ({ limits, refused } = refusing(OPTIONS));
  assert.equal(limits.acquireForward(), true);
  assert.equal(limits.acquireForward(), false);
  assert.equal(limits.acquireWatcher(), true);
  assert.equal(limits.acquireBlockingRead(), true);
  assert.equal(limits.acquireWatcher(), false);
  assert.equal(limits.acquireBlockingRead(), false);
  assert.equal(limits.admitBackup(), true);
  const backup = limits.boundedBackup(ReadableStream.from([new Uint8Array([1])]));
  assert.equal(limits.admitBackup(), false);
  assert.deepEqual(refused, ["forwards", "watchers", "blocking_reads", "backups"]);
  await backup.cancel();
  assert.equal(limits.admitBackup(), true);
  assert.equal(refused.length, 4);

  // maxClientUnreadBytes: a client at its share, at admission; a read whose answer would pass
  // it, once ready; not a write's answer (sent all the same), nor another client's requests.
  ({ limits, refused } = refusing({ ...CLIENT_OPTIONS, maxClientUnreadBytes: LARGE + 10 }));
  const held = await answer(limits, "10.0.0.1");
  assert.equal((await answer(limits, "10.0.0.1")).status, 429);
  assert.deepEqual(refused, ["client_unread"]);
  const write = await answer(limits, "10.0.0.1", LARGE, false);
  assert.equal(write.status, 200);
  assert.equal(limits.admit(0, "10.0.0.1"), null);
  assert.deepEqual(refused, ["client_unread", "client_unread"]);
  const other = await answer(limits, "10.0.0.2");
  assert.equal(other.status, 200);
  assert.equal(refused.length, 2);
  for (const res of [held, write, other]) await res.body!.cancel();
});

/** A node holding one large value, `big`, for a handler (as `Deno.serve` calls it). */
function bigValueBackend(value: string): KvBackend {
  const kv = new KvStateMachine();
  kv.apply(1, { op: "put", key: "big", value });
  const status = (): NodeStatus => ({
    id: "n1",
    role: "leader",
    term: 1,
    leader: { id: "n1", api_url: "http://n1.test" },
    commit_index: kv.appliedIndex,
    applied_index: kv.appliedIndex,
    last_index: kv.appliedIndex,
    members: [{ id: "n1", api_url: "http://n1.test" }],
    alarms: [],
  });
  return {
    write: (cmd) => Promise.resolve(kv.apply(kv.appliedIndex + 1, cmd)),
    read: (key) => Promise.resolve({ entry: kv.entry(key), index: kv.appliedIndex }),
    range: () => Promise.reject(new Error("no ranges here")),
    snapshot: () => {
      throw new Error("no snapshots here");
    },
    status,
    isReady: () => true,
    overloaded: () => null,
  };
}

Deno.test("the handler bounds each remote address Deno.serve names; not requests without one, nor forwarded ones", async () => {
  const value = "v".repeat(4 * RESPONSE_CHUNK_BYTES);
  const metrics = new MetricsRegistry();
  const handler = createApiHandler(bigValueBackend(value), {
    selfId: "n1",
    metrics,
    members: [{ id: "n2", rpcUrl: "http://n2.test:6666", apiUrl: "http://n2.test:7777" }],
    // One answer of the value (with its JSON around it), not two.
    maxClientUnreadBytes: value.length + value.length / 2,
  });
  const from = (hostname: string) => ({
    remoteAddr: { transport: "tcp" as const, hostname, port: 1 },
  });
  const get = () => new Request("http://n1.test/v1/data/big");
  const put = (key: string) =>
    new Request(`http://n1.test/v1/data/${key}`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ v: value }),
    });
  const assertTooMany = async (res: Response) => {
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "1");
    assert.deepEqual(await res.json(), { error: "too many requests" });
  };
  const client = from("::ffff:127.0.0.2");
  const unread = [await handler(get(), client)];
  assert.equal(unread[0]!.status, 200);
  // Admitted (under its share), but the answer of a second read would pass it: 429 instead.
  await assertTooMany(await handler(get(), from("127.0.0.2")));
  // A write is answered all the same, its answer (echoing the value) counted: past the share.
  unread.push(await handler(put("big2"), client));
  assert.equal(unread[1]!.status, 200);
  // Now any request of that client is refused at once, its body unread.
  const refusedWrite = put("big3");
  await assertTooMany(await handler(refusedWrite, client));
  assert.equal(refusedWrite.bodyUsed, false);
  await assertTooMany(await handler(get(), client));
  // Another address, a request without one, and one forwarded by a member are served.
  const others = [
    await handler(get(), from("127.0.0.1")),
    await handler(get()),
    await handler.forwarded(
      new Request("http://n1.test/forward/v1/data/big", {
        headers: { [FORWARDED_BY_HEADER]: "n2" },
      }),
      null,
    ),
  ];
  for (const res of others) {
    assert.equal(res.status, 200);
    assert.equal((await res.json()).v, value);
  }
  // Once the client has read its answers, it is served again.
  for (const res of unread) assert.equal((await res.json()).v, value);
  const again = await handler(get(), client);
  assert.equal(again.status, 200);
  assert.equal((await again.json()).v, value);
  assert.equal((await handler(get(), client)).status, 200);
  // Each of the three 429s counted once, under the client's share; nothing else refused.
  const samples = parseSamples(metrics.render());
  const refusals = (limit: string) =>
    sample(samples, `raftkv_http_refusals_total{limit="${limit}"}`);
  assert.equal(refusals("client_unread"), 3);
  assert.deepEqual(
    ["requests", "bytes", "forwards", "watchers", "blocking_reads", "backups"].map(refusals),
    [0, 0, 0, 0, 0, 0],
  );
  assert.equal(
    sample(samples, 'raftkv_http_requests_total{route="/v1/data/{key}",method="GET",code="429"}') +
      sample(samples, 'raftkv_http_requests_total{route="/v1/data/{key}",method="PUT",code="429"}'),
    3,
  );
});

Deno.test("createApiHandler() takes maxClientUnreadBytes from 0 (off) up to maxInflightBytes", () => {
  const backend = bigValueBackend("v");
  for (const maxClientUnreadBytes of [0, 1, 1000]) {
    createApiHandler(backend, { selfId: "n1", maxInflightBytes: 1000, maxClientUnreadBytes });
  }
  for (const maxClientUnreadBytes of [-1, 1.5, Number.NaN, 1001]) {
    assert.throws(
      () =>
        createApiHandler(backend, { selfId: "n1", maxInflightBytes: 1000, maxClientUnreadBytes }),
      RangeError,
    );
  }
});
