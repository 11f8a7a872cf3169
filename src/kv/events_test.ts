import assert from "node:assert/strict";
import {
  EVENT_OVERHEAD_BYTES,
  eventBytes,
  EventHistory,
  HistoryCompactedError,
  type KvEvent,
} from "./events.ts";
import { KvStateMachine } from "./state_machine.ts";

function collect(): {
  events: KvEvent[];
  closed: string[];
  event(e: KvEvent): void;
  close(r: string): void;
} {
  const events: KvEvent[] = [];
  const closed: string[] = [];
  return { events, closed, event: (e) => events.push(e), close: (r) => closed.push(r) };
}

Deno.test("the state machine records one event per key changed, txn and range deletes included", () => {
  const sm = new KvStateMachine();
  sm.apply(1, { op: "put", key: "a", value: "1" });
  sm.apply(2, { op: "put", key: "b", value: "2" });
  sm.apply(3, { op: "delete", key: "missing" });
  sm.apply(4, {
    op: "txn",
    compare: [],
    success: [{ op: "put", key: "c", value: "3" }, { op: "delete", key: "a" }, {
      op: "get",
      key: "b",
    }],
    failure: [],
  });
  sm.apply(5, { op: "delete_range", range: { prefix: "" } });
  sm.apply(6, { op: "put", key: "a", value: "x", cas: 99 }); // fails: no event
  const seen = [...sm.events.since(1)].map((e) =>
    `${e.index}:${e.type}:${e.k}:${e.v}:${e.mod_index}`
  );
  assert.deepEqual(seen, [
    "1:put:a:1:1",
    "2:put:b:2:2",
    "4:put:c:3:4",
    "4:delete:a:null:4",
    "5:delete:b:null:5",
    "5:delete:c:null:5",
  ]);
});

Deno.test("a subscription gets the backlog from its index, then new events, in order", () => {
  const h = new EventHistory(100);
  for (let i = 1; i <= 5; i++) h.record(i, "put", `k${i}`, String(i));
  const sink = collect();
  const stop = h.subscribe(3, sink);
  h.record(6, "delete", "k1", null);
  stop();
  h.record(7, "put", "k7", "7");
  assert.deepEqual(sink.events.map((e) => e.index), [3, 4, 5, 6]);
  assert.equal(sink.events.at(-1)!.v, null);
  const live = collect();
  h.subscribe(null, live);
  h.record(8, "put", "k8", "8");
  assert.deepEqual(live.events.map((e) => e.index), [8]);
});

Deno.test("the history is bounded and evicts whole indexes; older starts are refused", () => {
  const h = new EventHistory(3);
  assert.equal(h.newestIndex, 0, "none kept");
  h.record(1, "put", "a", "1");
  h.record(2, "put", "a", "2");
  h.record(2, "put", "b", "2");
  assert.equal(h.oldestIndex, 1);
  assert.equal(h.newestIndex, 2);
  h.record(3, "put", "a", "3"); // evicts index 1
  assert.equal(h.oldestIndex, 2);
  h.record(4, "put", "a", "4"); // evicts the first event of 2, so all of 2
  assert.equal(h.oldestIndex, 3);
  assert.equal(h.size, 2);
  assert.deepEqual([...h.since(0)].map((e) => e.index), [3, 4]);
  assert.throws(
    () => h.subscribe(2, collect()),
    (e) => e instanceof HistoryCompactedError && e.oldestIndex === 3,
  );
  for (let i = 5; i < 1000; i++) h.record(i, "put", "a", String(i));
  assert.equal(h.size, 3);
  assert.equal(h.oldestIndex, 997);
  assert.equal(h.newestIndex, 999);
});

Deno.test("an event counts its key's and value's UTF-8 bytes plus a fixed overhead", () => {
  assert.equal(eventBytes("k", "vv"), 3 + EVENT_OVERHEAD_BYTES);
  assert.equal(eventBytes("é", null), 2 + EVENT_OVERHEAD_BYTES);
  assert.equal(eventBytes("😀", "€"), 4 + 3 + EVENT_OVERHEAD_BYTES);
});

Deno.test("the history is bounded by bytes too: the oldest whole indexes go until a change fits", () => {
  const value = "x".repeat(100);
  const one = eventBytes("a", value); // 165
  const h = new EventHistory(1000, 3 * one);
  h.record(1, "put", "a", value);
  h.record(2, "put", "a", value);
  h.record(2, "put", "b", value);
  assert.equal(h.bytes, 3 * one);
  assert.equal(h.oldestIndex, 1);
  h.record(3, "delete", "a", null); // needs 65 bytes: index 1 goes
  assert.equal(h.oldestIndex, 2);
  assert.equal(h.bytes, 2 * one + eventBytes("a", null));
  h.record(4, "put", "c", value); // index 2 goes whole, though one of its events would do
  assert.equal(h.oldestIndex, 3);
  assert.deepEqual([...h.since(0)].map((e) => e.index), [3, 4]);
  assert.equal(h.bytes, eventBytes("a", null) + one);
  assert.throws(
    () => h.subscribe(2, collect()),
    (e) => e instanceof HistoryCompactedError && e.oldestIndex === 3,
  );
  // Many small changes: the count bound is far; the bytes keep it at 3 of these at most.
  for (let i = 5; i < 500; i++) h.record(i, "put", "a", value);
  assert.equal(h.size, 3);
  assert.equal(h.bytes, 3 * one);
  assert.equal(h.oldestIndex, 497);
  // Multi-byte characters count as their UTF-8 bytes: a 50-character value of 2-byte ones
  // counts as 100 bytes.
  h.record(500, "put", "a", "é".repeat(50));
  assert.equal(h.bytes, 3 * one);
  assert.equal(h.oldestIndex, 498);
});

Deno.test("a change larger than the byte bound alone is kept alone, then goes with the next", () => {
  const h = new EventHistory(1000, 1000);
  h.record(1, "put", "a", "small");
  h.record(2, "put", "a", "small");
  const live = collect();
  h.subscribe(null, live);
  h.record(3, "put", "big", "y".repeat(5000));
  assert.equal(h.size, 1);
  assert.equal(h.oldestIndex, 3);
  assert.equal(h.bytes, eventBytes("big", "y".repeat(5000)));
  // A watcher from its index still gets it; the live subscription had it too.
  const late = collect();
  h.subscribe(3, late);
  assert.deepEqual(late.events.map((e) => e.k), ["big"]);
  assert.deepEqual(live.events.map((e) => e.k), ["big"]);
  h.record(4, "put", "a", "small");
  assert.equal(h.oldestIndex, 4);
  assert.equal(h.bytes, eventBytes("a", "small"));
  assert.throws(() => h.subscribe(3, collect()), HistoryCompactedError);
});

Deno.test("a transaction larger than the byte bound keeps only its newest change, and no start at its index", () => {
  const h = new EventHistory(1000, 500);
  h.record(1, "put", "a", "1");
  for (const k of ["p", "q", "r"]) h.record(2, "put", k, "z".repeat(300));
  // Index 2 is not whole any more: a watch may start only after it.
  assert.equal(h.oldestIndex, 3);
  assert.deepEqual([...h.since(3)], []);
  assert.ok(h.bytes <= 500 + eventBytes("r", "z".repeat(300)));
  assert.throws(() => h.subscribe(2, collect()), HistoryCompactedError);
  h.record(3, "put", "a", "2");
  assert.deepEqual([...h.since(0)].map((e) => `${e.index}${e.k}`), ["3a"]);
  assert.equal(h.bytes, eventBytes("a", "2"));
});

Deno.test("a history's byte bound must be a positive integer", () => {
  assert.throws(() => new EventHistory(10, 0), RangeError);
  assert.throws(() => new EventHistory(10, 1.5), RangeError);
});

Deno.test("a snapshot restarts the history after its index and ends the subscriptions", () => {
  const sm = new KvStateMachine({ historyEvents: 10 });
  sm.apply(1, { op: "put", key: "a", value: "1" });
  const sink = collect();
  sm.events.subscribe(1, sink);
  sm.reset({
    entries: [{ key: "z", value: "9", createIndex: 40, modIndex: 40, version: 1 }],
    sessions: [],
  }, 50);
  assert.equal(sink.closed.length, 1);
  assert.match(sink.closed[0]!, /snapshot at index 50/);
  assert.equal(sm.events.oldestIndex, 51);
  assert.throws(() => sm.events.subscribe(50, collect()), HistoryCompactedError);
  const after = collect();
  sm.events.subscribe(51, after);
  sm.apply(51, { op: "put", key: "z", value: "10" });
  assert.deepEqual(after.events.map((e) => e.k + e.v), ["z10"]);
});

Deno.test("a closed history ends its subscriptions and every later one at once", () => {
  const h = new EventHistory(10);
  const before = collect();
  h.subscribe(null, before);
  h.close("stopping");
  const after = collect();
  h.subscribe(1, after);
  h.record(1, "put", "a", "1");
  assert.deepEqual(before.closed, ["stopping"]);
  assert.deepEqual(after.closed, ["stopping"]);
  assert.deepEqual(after.events, []);
  assert.equal(h.subscribers, 0);
});

Deno.test("a subscription from past the newest change skips what comes before its index", () => {
  const h = new EventHistory(10);
  h.record(1, "put", "a", "1");
  const sink = collect();
  h.subscribe(4, sink); // a node behind the watcher's position
  h.record(2, "put", "a", "2");
  h.record(3, "put", "a", "3");
  h.record(4, "put", "a", "4");
  assert.deepEqual(sink.events.map((e) => e.index), [4]);
});
