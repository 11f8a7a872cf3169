import assert from "node:assert/strict";
import {
  type Consistency,
  type EventHistory,
  type KvBackend,
  type KvResult,
  type NodeStatus,
  type PlainCommand,
  type RangeAnswer,
  type RangeQuery,
  type ReadResult,
  StoppingError,
} from "../node/backend.ts";
import { KvStateMachine } from "../kv/state_machine.ts";
import { readSse, type SseMessage } from "../util/sse.ts";
import { type ApiOptions, createApiHandler, requiredRole } from "./handler.ts";
import { ApiLimits, REFUSAL_LIMITS } from "./limits.ts";
import { INDEX_HEADER } from "./outcome.ts";
import {
  blockingWait,
  DEFAULT_WATCH_BUFFER_BYTES,
  MAX_BLOCKING_WAIT_MS,
  parseWait,
  SHARED_EVENT_CHARS,
  WATCH_CHUNK_CHARS,
  watchRoute,
} from "./watch.ts";
import { SimClock } from "../../testing/sim_clock.ts";
import { parseSamples, sample } from "../../testing/prometheus.ts";
import { MetricsRegistry } from "../util/metrics.ts";

/** A backend on a real state machine without Raft: writes apply at once, reads are local. */
class LocalBackend implements KvBackend {
  readonly kv = new KvStateMachine({ historyEvents: 50 });
  stopping = false;

  put(key: string, value: string): number {
    this.kv.apply(this.kv.appliedIndex + 1, { op: "put", key, value });
    return this.kv.appliedIndex;
  }

  write(cmd: PlainCommand): Promise<KvResult> {
    return Promise.resolve(this.kv.apply(this.kv.appliedIndex + 1, cmd));
  }

  read(key: string, _c: Consistency): Promise<ReadResult> {
    return Promise.resolve({ entry: this.kv.entry(key), index: this.kv.appliedIndex });
  }

  range(query: RangeQuery): Promise<RangeAnswer> {
    return Promise.resolve({ ...this.kv.range(query), index: this.kv.appliedIndex });
  }

  status(): NodeStatus {
    const i = this.kv.appliedIndex;
    return {
      id: "n1",
      role: "leader",
      term: 1,
      leader: { id: "n1", api_url: "http://n1.test" },
      commit_index: i,
      applied_index: i,
      last_index: i,
      members: [],
      alarms: [],
    };
  }

  snapshot(): never {
    throw new Error("not here");
  }

  isReady(): boolean {
    return true;
  }

  overloaded(): null {
    return null;
  }

  watchHistory(): EventHistory {
    if (this.stopping) throw new StoppingError();
    return this.kv.events;
  }
}

function setup(options: Partial<ApiOptions> = {}) {
  const backend = new LocalBackend();
  const handler = createApiHandler(backend, { selfId: "n1", logError: () => {}, ...options });
  const get = (path: string, init: RequestInit = {}) =>
    handler(new Request(`http://n1.test${path}`, init));
  return { backend, get, handler };
}

/** `raftkv_http_refusals_total` in `metrics` of the limits named, in that order. */
function refusals(metrics: MetricsRegistry, ...limits: string[]): number[] {
  const samples = parseSamples(metrics.render());
  return limits.map((l) => sample(samples, `raftkv_http_refusals_total{limit="${l}"}`));
}

/** Reads `n` events (skipping none) from a watch answer. */
async function take(
  it: AsyncGenerator<SseMessage>,
  n: number,
): Promise<{ event: string; id: string | null; data: Record<string, unknown> }[]> {
  const out = [];
  while (out.length < n) {
    const r = await it.next();
    if (r.done) break;
    out.push({ event: r.value.event, id: r.value.id, data: JSON.parse(r.value.data) });
  }
  return out;
}

Deno.test("a watch streams the changes of its key or prefix from an index, with ids", async () => {
  const { backend, get } = setup();
  backend.put("a/1", "x"); // 1
  backend.put("b", "y"); // 2
  backend.put("a/2", "z"); // 3
  const res = await get("/v1/watch?prefix=a/&from=2");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type")!, /^text\/event-stream/);
  const it = readSse(res.body!);
  await backend.write({ op: "delete_range", range: { prefix: "a/" } }); // 4
  backend.put("a/3", "w"); // 5
  const got = await take(it, 4);
  assert.deepEqual(got.map((m) => [m.id, m.data.type, m.data.k, m.data.v, m.data.index]), [
    ["3", "put", "a/2", "z", 3],
    ["4:1", "delete", "a/1", null, 4],
    ["4", "delete", "a/2", null, 4],
    ["5", "put", "a/3", "w", 5],
  ]);
  assert.deepEqual(got[3]!.data, { index: 5, type: "put", k: "a/3", v: "w", mod_index: 5 });
  await it.return(undefined);

  // A key, from Last-Event-ID (after that id), and without from: only what comes next.
  const resumed = readSse(
    (await get("/v1/watch?key=a/3", { headers: { "last-event-id": "4" } })).body!,
  );
  assert.deepEqual((await take(resumed, 1)).map((m) => m.id), ["5"]);
  await resumed.return(undefined);
  const live = await get("/v1/watch?key=b");
  assert.equal(live.headers.get("x-raftkv-index"), "5");
  const liveIt = readSse(live.body!);
  backend.put("b", "new"); // 6
  assert.deepEqual((await take(liveIt, 1)).map((m) => [m.id, m.data.v]), [["6", "new"]]);
  await liveIt.return(undefined);
  assert.equal(backend.kv.events.subscribers, 0, "a closed stream unsubscribes");
});

Deno.test("a watch from before the history is refused with 410 and the oldest index", async () => {
  const { backend, get } = setup();
  for (let i = 0; i < 60; i++) backend.put("k", String(i)); // history of 50
  const res = await get("/v1/watch?key=k&from=3");
  assert.equal(res.status, 410);
  const body = await res.json();
  assert.equal(body.oldest_index, 11);
  assert.match(body.error, /older than the change history/);
  const ok = await get("/v1/watch?key=k&from=11");
  assert.equal(ok.status, 200);
  await ok.body!.cancel();
});

Deno.test("a watch is refused malformed parameters", async () => {
  const { get } = setup();
  for (const q of ["", "?key=a&prefix=b", "?key=a&from=-1", "?key=a&from=x"]) {
    const res = await get(`/v1/watch${q}`);
    assert.equal(res.status, 400, q);
    await res.body?.cancel();
  }
  const post = await get("/v1/watch?key=a", { method: "POST" });
  assert.equal(post.status, 405);
  await post.body?.cancel();
  assert.equal(requiredRole("GET", "/v1/watch"), "read");
});

Deno.test("a watcher that does not read is cut off with a final error event", async () => {
  const { backend, get } = setup({ watchBufferEvents: 5 });
  const res = await get("/v1/watch?prefix=");
  for (let i = 0; i < 20; i++) backend.put("k", String(i));
  assert.equal(backend.kv.events.subscribers, 0, "cut off at once, not when read");
  const all = [];
  for await (const m of readSse(res.body!)) all.push(m);
  assert.equal(all.length, 6);
  assert.deepEqual(all.slice(0, 5).map((m) => m.id), ["1", "2", "3", "4", "5"]);
  assert.equal(all[5]!.event, "error");
  const err = JSON.parse(all[5]!.data);
  assert.equal(err.last_index, 5);
  assert.match(err.error, /fell more than 5 events behind.*from=6/);
});

Deno.test("heartbeats are comments; stopping the node ends the stream with an error event", async () => {
  const { backend, get } = setup({ watchHeartbeatMs: 20 });
  const res = await get("/v1/watch?key=a");
  let beats = 0;
  const it = readSse(res.body!, (c) => {
    if (c === "heartbeat") beats++;
    if (beats === 2) {
      backend.stopping = true;
      backend.kv.events.closeAll("the node is shutting down");
    }
  });
  const rest = [];
  for await (const m of it) rest.push(m);
  assert.equal(beats, 2);
  assert.equal(rest.length, 1);
  assert.equal(rest[0]!.event, "error");
  assert.match(JSON.parse(rest[0]!.data).error, /shutting down/);
  const refused = await get("/v1/watch?key=a");
  assert.equal(refused.status, 503);
  await refused.body?.cancel();
});

Deno.test("a blocking read answers when the key changes after the index, or when the wait ends", async () => {
  const { backend, get } = setup();
  backend.put("a", "1"); // 1
  backend.put("other", "x"); // 2
  // Already changed after 0: at once.
  const now = await get("/v1/data/a?index=0&wait=10s");
  assert.equal((await now.json()).v, "1");
  // Waits for a change of "a" only.
  let answered = false;
  const pending = get("/v1/data/a?index=2&wait=30s").then(async (r) => {
    answered = true;
    return { status: r.status, body: await r.json(), index: r.headers.get("x-raftkv-index") };
  });
  backend.put("other", "y"); // 3
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(answered, false);
  await backend.write({ op: "delete", key: "a" }); // 4
  const got = await pending;
  assert.equal(got.status, 404);
  assert.equal(got.index, "4");
  // Nothing changes: the wait ends and the current state is answered.
  const started = performance.now();
  const quiet = await get("/v1/data/other?index=4&wait=50ms");
  assert.ok(performance.now() - started >= 45);
  assert.equal((await quiet.json()).v, "y");
  assert.equal(backend.kv.events.subscribers, 0);
  const bad = await get("/v1/data/a?index=1&wait=forever");
  assert.equal(bad.status, 400);
  await bad.body?.cancel();
});

Deno.test("a waiting blocking read holds no request slot, counts against maxWatchers, and needs a slot again to answer", async () => {
  const metrics = new MetricsRegistry();
  const { backend, get, handler } = setup({ maxInflightRequests: 1, maxWatchers: 2, metrics });
  backend.put("a", "1"); // 1
  const waiting = get("/v1/data/a?index=1&wait=1m");
  const other = get("/v1/data/b?index=1&wait=1m");
  const deadline = Date.now() + 2000;
  while (backend.kv.events.subscribers < 2 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 1));
  }
  assert.equal(backend.kv.events.subscribers, 2);
  // Waiting reads and watch streams share maxWatchers.
  const third = await get("/v1/data/c?index=1&wait=1m");
  assert.equal(third.status, 429);
  assert.match((await third.json()).error, /too many watch streams and blocking reads/);
  assert.equal(third.headers.get("retry-after"), "1");
  // Both wait without a slot: a write takes the only one (its body held back, so it stays).
  let send: (text: string) => void = () => {};
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      send = (text) => {
        c.enqueue(new TextEncoder().encode(text));
        c.close();
      };
    },
  });
  const held = handler(
    new Request("http://n1.test/v1/data/c", {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body,
    }),
  );
  // The node is full (the held write): the woken read finds no slot to read with.
  backend.put("a", "2"); // 2
  const full = await waiting;
  assert.equal(full.status, 429);
  assert.match((await full.json()).error, /no request slot free/);
  // Asked again after the index it asked after (the applied index is past the unread change).
  assert.equal(full.headers.get(INDEX_HEADER), "1");
  send('{"v":"3"}');
  assert.equal((await held).status, 200);
  // With the slot free again, a woken read answers.
  backend.put("b", "4");
  const answered = await other;
  assert.equal(answered.status, 200);
  assert.equal((await answered.json()).v, "4");
  assert.equal(backend.kv.events.subscribers, 0);
  // One refused by maxWatchers as a blocking read, one by maxInflightRequests once woken.
  assert.deepEqual(refusals(metrics, ...REFUSAL_LIMITS), [1, 0, 0, 0, 0, 1, 0]);
});

Deno.test("a blocking wait on an injected clock ends when that clock reaches the wait, on a change of its key, or on a snapshot", async () => {
  const { backend } = setup();
  backend.put("a", "1"); // 1
  const clock = new SimClock();
  const wait = (path: string) => {
    const url = new URL(`http://n1.test${path}`);
    let ended = false;
    void blockingWait({ backend, retryAfter: {}, clock }, new Request(url), url, "a")
      .then(() => ended = true);
    // One macrotask: every promise callback due has run by then (the wait sets no real timer).
    const turn = () => new Promise<void>((r) => setTimeout(r, 0)).then(() => ended);
    return { turn };
  };
  const timed = wait("/v1/data/a?index=1&wait=100ms");
  backend.put("b", "x"); // 2: another key
  clock.advance(99);
  assert.equal(await timed.turn(), false);
  clock.advance(1);
  assert.equal(await timed.turn(), true);
  const woken = wait("/v1/data/a?index=2&wait=1m");
  clock.advance(30_000);
  backend.put("a", "2"); // 3
  assert.equal(await woken.turn(), true);
  assert.equal(clock.pending, 0, "the woken wait's timer is cancelled");
  const reset = wait("/v1/data/a?index=3&wait=1m");
  backend.kv.events.reset(10);
  assert.equal(await reset.turn(), true);
  assert.equal(backend.kv.events.subscribers, 0);
});

Deno.test("wait durations parse with units and are capped", () => {
  assert.equal(parseWait("30s"), 30_000);
  assert.equal(parseWait("1.5m"), 90_000);
  assert.equal(parseWait("250ms"), 250);
  assert.equal(parseWait("2"), 2000);
  assert.equal(MAX_BLOCKING_WAIT_MS, 300_000);
});

Deno.test("with tokens a watch and a blocking read need the read role", async () => {
  const { backend, get } = setup({ tokens: [{ token: "r-token", role: "read" }] });
  backend.put("a", "1");
  const none = await get("/v1/watch?key=a");
  assert.equal(none.status, 401);
  await none.body?.cancel();
  const ok = await get("/v1/watch?key=a&from=1", { headers: { authorization: "Bearer r-token" } });
  assert.equal(ok.status, 200);
  const first = await readSse(ok.body!).next();
  assert.equal(JSON.parse(first.value!.data).v, "1");
  await ok.body!.cancel().catch(() => {});
  const blocked = await get("/v1/data/a?index=0&wait=1s");
  assert.equal(blocked.status, 401);
  await blocked.body?.cancel();
});

Deno.test("reloaded tokens apply from the next request, and end the watch streams and blocking reads whose token was revoked", async () => {
  const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
  const { backend, get, handler } = setup({
    tokens: [
      { token: "keep-token", role: "read" },
      { token: "gone-token", role: "read" },
      { token: "demoted-token", role: "admin" },
    ],
  });
  backend.put("a", "1"); // 1
  const watch = async (token: string) => {
    const res = await get("/v1/watch?key=a&from=1", bearer(token));
    assert.equal(res.status, 200);
    const it = readSse(res.body!);
    assert.deepEqual((await take(it, 1)).map((m) => m.data.v), ["1"]);
    return it;
  };
  const [keep, gone, demoted] = [
    await watch("keep-token"),
    await watch("gone-token"),
    await watch("demoted-token"),
  ];

  // Blocking reads for a change of "b": one on the token to be revoked, one on a kept token.
  const goneWait = get("/v1/data/b?index=1&wait=1m", bearer("gone-token"));
  const keptWait = get("/v1/data/b?index=1&wait=1m", bearer("keep-token"));
  const waiting = () => backend.kv.events.subscribers === 5;
  const until = performance.now() + 2_000;
  while (!waiting() && performance.now() < until) await new Promise((r) => setTimeout(r, 1));
  assert.ok(waiting(), "three streams and two blocking reads wait");

  const ended = handler.reloadTokens([
    { token: "keep-token", role: "read" },
    { token: "demoted-token", role: "read" },
    { token: "new-token", role: "write" },
  ]);
  assert.equal(ended, 2, "only the revoked token's stream and blocking read end");
  const refused = await goneWait;
  assert.equal(refused.status, 401);
  assert.equal(refused.headers.get("www-authenticate"), 'Bearer realm="raftkv"');
  assert.match((await refused.json()).error, /no longer allows it/);
  const [final] = await take(gone, 1);
  assert.equal(final!.event, "error");
  assert.match(String(final!.data.error), /no longer allows it .*tokens were reloaded.*from=2/);
  assert.equal(final!.data.last_index, 1);
  assert.equal((await gone.next()).done, true);
  backend.put("a", "2"); // 2
  for (const it of [keep, demoted]) {
    assert.deepEqual((await take(it, 1)).map((m) => [m.id, m.data.v]), [["2", "2"]]);
  }
  backend.put("b", "1"); // 3
  const answered = await keptWait;
  assert.equal(answered.status, 200, "the kept token's blocking read goes on until the change");
  assert.equal((await answered.json()).v, "1");
  // Requests from now on: the revoked token is unknown, the new one known.
  const revoked = await get("/v1/data/a", bearer("gone-token"));
  assert.equal(revoked.status, 401);
  await revoked.body?.cancel();
  const added = await get("/v1/data/a", bearer("new-token"));
  assert.equal(added.status, 200);
  await added.body?.cancel();

  // Bad tokens change nothing; an API started open stays open.
  assert.throws(() => handler.reloadTokens([]), RangeError);
  assert.throws(() => handler.reloadTokens([{ token: "x", role: "boss" as "read" }]), RangeError);
  const still = await get("/v1/data/a", bearer("new-token"));
  assert.equal(still.status, 200);
  await still.body?.cancel();
  assert.throws(
    () => setup().handler.reloadTokens([{ token: "t", role: "read" }]),
    /started without tokens/,
  );
  await keep.return(undefined);
  await demoted.return(undefined);
  assert.equal(backend.kv.events.subscribers, 0, "every stream unsubscribed");
});

Deno.test("past maxWatchers a watch is answered 429 until a stream ends, by the client or by the node", async () => {
  const metrics = new MetricsRegistry();
  const { backend, get } = setup({ maxWatchers: 2, retryAfterSeconds: 3, metrics });
  assert.equal(backend.kv.events.oldestIndex, 1);
  const first = await get("/v1/watch?key=a");
  const second = await get("/v1/watch?prefix=b");
  assert.equal(first.status, 200);
  assert.equal(second.status, 200);
  const refused = await get("/v1/watch?key=c");
  assert.equal(refused.status, 429);
  assert.equal(refused.headers.get("retry-after"), "3");
  const body = await refused.json();
  assert.match(body.error, /too many watch streams open on this node \(2; the limit is 2/);
  assert.equal(body.limit, 2);
  // The client goes away: its stream stops counting.
  await first.body!.cancel();
  const third = await get("/v1/watch?key=c");
  assert.equal(third.status, 200);
  assert.equal((await get("/v1/watch?key=d")).status, 429);
  // The node ends the streams (as when it installs a snapshot): they stop counting.
  backend.kv.events.closeAll("a snapshot was installed");
  for (const res of [second, third]) {
    const events = await take(readSse(res.body!), 1);
    assert.equal(events[0]?.event, "error");
  }
  const again = await get("/v1/watch?key=e");
  assert.equal(again.status, 200);
  await again.body!.cancel();
  assert.deepEqual(refusals(metrics, ...REFUSAL_LIMITS), [0, 0, 0, 0, 2, 0, 0]);
});

Deno.test("a stream that ends before its first change says the index it started after", async () => {
  const { backend, get } = setup();
  backend.put("other", "1"); // 1
  backend.put("other", "2"); // 2
  const res = await get("/v1/watch?key=a");
  assert.equal(res.headers.get("x-raftkv-index"), "2");
  backend.put("other", "3"); // 3: not watched, but covered
  backend.kv.events.closeAll("the node is shutting down");
  const all = [];
  for await (const m of readSse(res.body!)) all.push(m);
  assert.deepEqual(all.map((m) => m.event), ["error"]);
  const err = JSON.parse(all[0]!.data);
  assert.equal(err.last_index, 3);
  assert.match(err.error, /from=4/);

  // With `from` ahead of the applied index, it covers up to the index before `from`.
  const ahead = await get("/v1/watch?key=a&from=10");
  backend.kv.events.closeAll("the node is shutting down");
  const rest = [];
  for await (const m of readSse(ahead.body!)) rest.push(m);
  assert.equal(JSON.parse(rest[0]!.data).last_index, 9);
});

Deno.test("a large backlog streams a chunk at a time, not as one text, with the same events and ids", async () => {
  const { backend, get } = setup();
  const big = (n: number) => String(n % 10).repeat(10_000);
  for (let i = 0; i < 20; i++) backend.put(`k${i}`, big(i)); // 1..20: 200 KB
  await backend.write({
    op: "txn",
    compare: [],
    success: [0, 1, 2].map((j) => ({ op: "put" as const, key: `t${j}`, value: big(j) })),
    failure: [],
  }); // 21: three changes, in whichever chunks they fall
  backend.put("last", "x"); // 22
  const res = await get("/v1/watch?prefix=&from=1");
  const reader = res.body!.getReader();
  const chunks: Uint8Array[] = [];
  let text = "";
  while (!text.includes("id: 22\n")) {
    const r = await reader.read();
    if (r.done) break;
    chunks.push(r.value);
    text += new TextDecoder().decode(r.value);
  }
  await reader.cancel();
  // Each read made at most a chunk's worth of text (plus the event that crossed the line).
  assert.ok(chunks.length > 3, `${chunks.length} chunks`);
  for (const c of chunks) assert.ok(c.byteLength < WATCH_CHUNK_CHARS + 10_200, `${c.byteLength}`);
  const events = [];
  for await (const m of readSse(new Blob([text]).stream())) events.push(m);
  assert.deepEqual(events.map((m) => m.id), [
    ...Array.from({ length: 20 }, (_, i) => String(i + 1)),
    "21:1",
    "21:2",
    "21",
    "22",
  ]);
  assert.equal(JSON.parse(events[21]!.data).v, big(1));
  assert.equal(backend.kv.events.subscribers, 0, "the cancelled stream unsubscribed");
});

Deno.test("a watcher is cut off between entries, never inside one transaction's changes", async () => {
  const { backend, get } = setup({ watchBufferEvents: 2 });
  const res = await get("/v1/watch?prefix=");
  backend.put("a", "1"); // 1
  await backend.write({
    op: "txn",
    compare: [],
    success: [
      { op: "put", key: "b", value: "2" },
      { op: "put", key: "c", value: "2" },
      { op: "put", key: "d", value: "2" },
    ],
    failure: [],
  }); // 2: three changes, past the buffer of two
  backend.put("e", "3"); // 3: one more entry: cut off before it
  const all = [];
  for await (const m of readSse(res.body!)) all.push(m);
  assert.deepEqual(all.map((m) => m.id), ["1", "2:1", "2:2", "2", null]);
  assert.equal(all[4]!.event, "error");
  const err = JSON.parse(all[4]!.data);
  assert.equal(err.last_index, 2);
  assert.match(err.error, /from=3/);
});

Deno.test("a stream broken inside an entry's changes resumes from the event id, on any node alike", async () => {
  const { backend, get } = setup();
  backend.put("p/a", "1"); // 1
  backend.put("p/b", "1"); // 2
  backend.put("q", "1"); // 3
  backend.put("p/c", "1"); // 4
  await backend.write({ op: "delete_range", range: { start: "p/a", end: "r" } }); // 5: 4 changes
  backend.put("p/d", "2"); // 6
  const ids = async (path: string, headers: Record<string, string> = {}, n = 10) => {
    const it = readSse((await get(path, { headers })).body!);
    const got = await take(it, n);
    await it.return(undefined);
    return got.map((m) => `${m.id} ${m.data.k}`);
  };
  // The prefix sees three of entry 5's four changes; the key q only one (the last for it).
  assert.deepEqual(await ids("/v1/watch?prefix=p/&from=5", {}, 4), [
    "5:1 p/a",
    "5:2 p/b",
    "5 p/c",
    "6 p/d",
  ]);
  assert.deepEqual(await ids("/v1/watch?key=q&from=5", {}, 1), ["5 q"]);
  // Broken after 5:1 or 5:2: the rest of entry 5, with the ids counted on.
  assert.deepEqual(await ids("/v1/watch?prefix=p/", { "last-event-id": "5:1" }, 3), [
    "5:2 p/b",
    "5 p/c",
    "6 p/d",
  ]);
  assert.deepEqual(await ids("/v1/watch?prefix=p/", { "last-event-id": "5:2" }, 2), [
    "5 p/c",
    "6 p/d",
  ]);
  // After the last one: the next entry. `from` wins over the header.
  assert.deepEqual(await ids("/v1/watch?prefix=p/", { "last-event-id": "5" }, 1), ["6 p/d"]);
  assert.deepEqual(await ids("/v1/watch?prefix=p/&from=4", { "last-event-id": "5:2" }, 1), [
    "4 p/c",
  ]);
  for (const bad of ["5:0", "5:", ":1", "5:1:1", "x"]) {
    const res = await get("/v1/watch?prefix=p/", { headers: { "last-event-id": bad } });
    assert.equal(res.status, 400, `Last-Event-ID ${bad}`);
    await res.body?.cancel();
  }
});

Deno.test("a stream resumed inside an entry that ends before the rest came names the same id to go on after", async () => {
  const { backend, get } = setup();
  for (let i = 1; i <= 4; i++) backend.put(`p/${i}`, "x"); // 1..4
  // A client that has the first change of entry 5 (from another node) resumes here before 5.
  const res = await get("/v1/watch?prefix=p/", { headers: { "last-event-id": "5:1" } });
  const it = readSse(res.body!);
  backend.kv.events.closeAll("the node is shutting down");
  const rest = [];
  for await (const m of it) rest.push(m);
  assert.deepEqual(rest.map((m) => m.event), ["error"]);
  const final = JSON.parse(rest[0]!.data);
  assert.equal(final.last_index, 4);
  assert.equal(final.last_id, "5:1", "from=5 would send the first change of 5 again");
  assert.match(final.error, /reconnect with Last-Event-ID: 5:1$/);

  // Past entry 5 (here, one change for this watch: the client had it), the ids are whole again.
  const again = setup();
  for (let i = 1; i <= 4; i++) again.backend.put(`p/${i}`, "x");
  const res2 = await again.get("/v1/watch?prefix=p/", { headers: { "last-event-id": "5:1" } });
  const it2 = readSse(res2.body!);
  await again.backend.write({ op: "delete_range", range: { prefix: "p/4" } }); // 5
  again.backend.put("p/6", "y"); // 6
  again.backend.kv.events.closeAll("the node is shutting down");
  const rest2 = [];
  for await (const m of it2) rest2.push(m);
  assert.deepEqual(rest2.map((m) => [m.event, m.id]), [["message", "6"], ["error", null]]);
  const final2 = JSON.parse(rest2[1]!.data);
  assert.deepEqual([final2.last_index, final2.last_id], [6, "6"]);
  assert.match(final2.error, /reconnect with from=7$/);
});

/** A watch through `watchRoute` itself, with byte bounds the handler's options do not set. */
function watchDirect(
  backend: LocalBackend,
  limits: ApiLimits,
  path: string,
  bounds: { watchBufferBytes?: number; maxWatchBytes?: number },
  headers: HeadersInit = {},
): Response {
  const url = new URL(`http://n1.test${path}`);
  return watchRoute(
    {
      backend,
      maxKeyBytes: 1024,
      watchHeartbeatMs: 3_600_000,
      watchBufferEvents: 1024,
      retryAfter: {},
      limits,
      ...bounds,
    },
    new Request(url, { headers }),
    url,
  );
}

function watchLimits(): ApiLimits {
  return new ApiLimits({
    maxInflightRequests: 1,
    maxInflightBytes: 1,
    maxBodyBytes: 1,
    maxForwardedRequests: 1,
    maxConcurrentBackups: 1,
    backupTimeoutMs: 1,
    maxWatchers: 100,
  });
}

Deno.test("a large event's text is encoded once: every watcher is handed the same bytes", async () => {
  const { backend, get } = setup();
  const streams = await Promise.all([1, 2, 3].map(() => get("/v1/watch?prefix=big/")));
  const readers = streams.map((res) => res.body!.getReader());
  for (const r of readers) await r.read(); // ": watching"
  const big = "v".repeat(SHARED_EVENT_CHARS);
  backend.put("big/a", big); // 1
  backend.put("small", "s"); // 2: not watched
  backend.put("big/b", "x"); // 3: a small one, in its own chunk
  const got = [];
  for (const r of readers) {
    // Its own id line first, then the shared text.
    const id = new TextDecoder().decode((await r.read()).value!);
    assert.equal(id, "id: 1\n");
    const data = (await r.read()).value!;
    const next = new TextDecoder().decode((await r.read()).value!);
    got.push({ data, next });
    await r.cancel();
  }
  const text = new TextDecoder().decode(got[0]!.data);
  assert.equal(JSON.parse(text.slice("data: ".length)).v, big);
  assert.ok(text.endsWith("\n\n"));
  // Not a copy per watcher: the same array (what the server keeps of it, for each stream).
  assert.ok(got[1]!.data === got[0]!.data && got[2]!.data === got[0]!.data);
  for (const g of got) assert.match(g.next, /^id: 3\ndata: \{"index":3/);
  assert.equal(backend.kv.events.subscribers, 0);
});

Deno.test("a watcher that does not read is cut off once the events waiting pass its byte bound", async () => {
  const { backend, get } = setup();
  const res = await get("/v1/watch?prefix=w/");
  const mib = "x".repeat(1 << 20);
  const n = Math.ceil(DEFAULT_WATCH_BUFFER_BYTES / (1 << 20)); // 16 of 1 MiB: within 16 MiB + 64 B each
  for (let i = 1; i <= n + 1; i++) backend.put(`w/${i}`, mib);
  // Far fewer than --watch-buffer events, but more bytes than --watch-buffer-bytes.
  assert.equal(backend.kv.events.subscribers, 0, "cut off at once, not when read");
  const all = [];
  for await (const m of readSse(res.body!)) all.push(m);
  assert.equal(all.length, n);
  assert.deepEqual(
    all.slice(0, n - 1).map((m) => m.id),
    Array.from({ length: n - 1 }, (_, i) => `${i + 1}`),
  );
  const err = JSON.parse(all.at(-1)!.data);
  assert.equal(all.at(-1)!.event, "error");
  assert.equal(err.last_index, n - 1);
  assert.match(
    err.error,
    new RegExp(`fell more than ${DEFAULT_WATCH_BUFFER_BYTES} bytes.*from=${n}`),
  );
});

Deno.test("past the node-wide bound the watcher with the most waiting is cut off and its events dropped", async () => {
  const backend = new LocalBackend();
  const limits = watchLimits();
  const bounds = { maxWatchBytes: 100_000 };
  const a = watchDirect(backend, limits, "/v1/watch?prefix=a/", bounds).body!.getReader();
  const b = watchDirect(backend, limits, "/v1/watch?prefix=b/", bounds).body!.getReader();
  await a.read(); // ": watching"
  await b.read();
  // a takes the first change of a transaction (the second, a large one, goes in a read of its
  // own), then stalls; b takes nothing.
  const reading = a.read();
  await backend.write({
    op: "txn",
    compare: [],
    success: [
      { op: "put", key: "a/1", value: "1" },
      { op: "put", key: "a/2", value: "x".repeat(SHARED_EVENT_CHARS) }, // counts 16,451 bytes
    ],
    failure: [],
  }); // 1
  assert.match(new TextDecoder().decode((await reading).value!), /^id: 1:1\ndata: .*"a\/1"/);
  const small = "s".repeat(1000); // counts 1,067 bytes
  for (let i = 2; i <= 4; i++) backend.put(`b/${i}`, small); // 2..4
  for (let i = 5; i <= 8; i++) backend.put(`a/${i}`, "y".repeat(20_000)); // 20,067 each
  await Promise.resolve();
  assert.equal(limits.watchers, 2, "99,920 bytes waiting: within the bound");
  backend.put("a/9", "y".repeat(20_000)); // 9: past it
  await Promise.resolve();
  assert.equal(limits.watchers, 1, "a, which had the most waiting, was cut off; b goes on");
  // a ends at once after what it was handed: the rest of entry 1, and all after, were dropped.
  const rest = [];
  for await (const m of readSse(_stream(a))) rest.push(m);
  assert.deepEqual(rest.map((m) => m.event), ["error"]);
  const final = JSON.parse(rest[0]!.data);
  assert.deepEqual([final.last_index, final.last_id], [0, "1:1"]);
  assert.match(
    final.error,
    /more than 100000 bytes of events waiting \(--max-watch-bytes\).*Last-Event-ID: 1:1$/,
  );
  // What a held no longer counts: b may fall further behind.
  for (let i = 10; i <= 14; i++) backend.put(`b/${i}`, small);
  await Promise.resolve();
  assert.equal(limits.watchers, 1);
  const it = readSse(_stream(b));
  const ids = [];
  for (let i = 0; i < 8; i++) ids.push((await it.next()).value!.id);
  assert.deepEqual(ids, ["2", "3", "4", "10", "11", "12", "13", "14"]);
  await it.return(undefined);
  assert.equal(limits.watchers, 0);
  assert.equal(backend.kv.events.subscribers, 0);
});

/** The rest of what `reader` reads, as a stream. */
function _stream(reader: ReadableStreamDefaultReader<Uint8Array>): ReadableStream<Uint8Array> {
  return new ReadableStream({
    pull: async (c) => {
      const r = await reader.read();
      if (r.done) c.close();
      else c.enqueue(r.value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

Deno.test("a backlog is read from the history as the client takes it: one the history drops before it is taken cuts the stream off, holding none of it", async () => {
  const backend = new LocalBackend(); // a history of 50 events
  const limits = watchLimits();
  const value = "v".repeat(2000);
  for (let i = 1; i <= 50; i++) backend.put(`k/${i}`, value); // 1..50: more than a chunk
  const history = backend.kv.events;
  const reader = watchDirect(backend, limits, "/v1/watch?prefix=k/&from=1", {}).body!
    .getReader();
  // The first read: the comment, and a chunk's worth of whole entries, no more.
  const first = new TextDecoder().decode((await reader.read()).value!);
  const sent = [...first.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
  assert.ok(first.startsWith(": watching\n\n"));
  assert.ok(sent.length > 1 && sent.length < 50, `${sent.length} events in the first chunk`);
  assert.deepEqual(sent, Array.from({ length: sent.length }, (_, i) => i + 1));
  assert.ok(first.length <= WATCH_CHUNK_CHARS + value.length + 200, `${first.length} chars`);
  const last = sent.at(-1)!;
  // Changes the history keeps room for: the rest of the backlog is still there.
  for (let i = 51; i <= 50 + last; i++) backend.put("other", "x");
  assert.equal(history.oldestIndex, last + 1);
  assert.equal(limits.watchers, 1);
  // One more: the history drops index last + 1, which the stream has not taken. It is cut off at
  // once (its slot and subscription go), not when its client reads.
  backend.put("other", "y");
  assert.equal(limits.watchers, 0);
  assert.equal(history.subscribers, 0);
  const rest = [];
  for await (const m of readSse(_stream(reader))) rest.push(m);
  assert.deepEqual(rest.map((m) => m.event), ["error"], "nothing more of the backlog");
  const final = JSON.parse(rest[0]!.data);
  assert.deepEqual([final.last_index, final.last_id], [last, String(last)]);
  assert.match(
    final.error,
    new RegExp(`no longer holds index ${last + 1} \\(its oldest is now ${last + 2}\\).*410`),
  );
  const again = await setupWith(backend).get(`/v1/watch?prefix=k/&from=${last + 1}`);
  assert.equal(again.status, 410);
  await again.body?.cancel();
});

Deno.test("a stream that took nothing of its backlog, resumed inside an entry, names the same id to go on after once the history drops it", async () => {
  const backend = new LocalBackend();
  const limits = watchLimits();
  for (let i = 1; i <= 4; i++) backend.put(`p/${i}`, "x"); // 1..4
  await backend.write({ op: "delete_range", range: { prefix: "p/" } }); // 5: four changes
  const res = watchDirect(backend, limits, "/v1/watch?prefix=p/", {}, { "last-event-id": "5:2" });
  for (let i = 6; i <= 47; i++) backend.put("other", "x"); // the history is full: 50 events
  assert.equal(limits.watchers, 1);
  for (let i = 48; i <= 51; i++) backend.put("other", "y"); // drops 1..4: the backlog is from 5
  assert.equal(backend.kv.events.oldestIndex, 5);
  assert.equal(limits.watchers, 1);
  backend.put("other", "z"); // 52 drops 5, none of which the stream took
  assert.equal(limits.watchers, 0);
  const all = [];
  for await (const m of readSse(res.body!)) all.push(m);
  assert.deepEqual(all.map((m) => m.event), ["error"]);
  const final = JSON.parse(all[0]!.data);
  assert.deepEqual([final.last_index, final.last_id], [4, "5:2"]);
  assert.match(final.error, /Last-Event-ID: 5:2$/);
});

Deno.test("a slow watcher whose backlog the history still holds gets all of it, then what came meanwhile", async () => {
  const backend = new LocalBackend();
  for (let i = 1; i <= 30; i++) backend.put(`k/${i}`, String(i)); // 1..30
  const { get } = setupWith(backend);
  const res = await get("/v1/watch?prefix=k/&from=20");
  // The history drops 1..19 (never asked for) while the stream has taken nothing.
  for (let i = 31; i <= 69; i++) backend.put(`k/${i}`, String(i));
  assert.equal(backend.kv.events.oldestIndex, 20);
  const it = readSse(res.body!);
  const got = await take(it, 50);
  assert.deepEqual(got.map((m) => m.id), Array.from({ length: 50 }, (_, i) => String(i + 20)));
  await it.return(undefined);
  assert.equal(backend.kv.events.subscribers, 0);
});

Deno.test("a snapshot that replaces the history ends a stream after what it took of its backlog", async () => {
  const { backend, get } = setup();
  for (let i = 1; i <= 5; i++) backend.put(`k/${i}`, "x"); // 1..5
  const res = await get("/v1/watch?prefix=k/&from=1");
  backend.kv.reset({ entries: [], sessions: [] }, 9);
  const all = [];
  for await (const m of readSse(res.body!)) all.push(m);
  assert.deepEqual(all.map((m) => m.event), ["error"]);
  const final = JSON.parse(all[0]!.data);
  assert.deepEqual([final.last_index, final.last_id], [0, "0"]);
  assert.match(final.error, /no longer holds index 1 \(its oldest is now 10\).*from=1$/);
});

/** A handler on `backend`, as {@linkcode setup} makes one. */
function setupWith(backend: LocalBackend) {
  const handler = createApiHandler(backend, { selfId: "n1", logError: () => {} });
  return { get: (path: string) => handler(new Request(`http://n1.test${path}`)) };
}
