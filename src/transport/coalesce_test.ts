import assert from "node:assert/strict";
import { type Entry, EntryType, type Message, message, MessageType } from "../raft/types.ts";
import { coalesceMessages } from "./coalesce.ts";

function _entries(from: number, to: number, term = 2, size = 3): Entry[] {
  const out: Entry[] = [];
  for (let i = from; i <= to; i++) {
    out.push({ term, index: i, type: EntryType.Normal, data: new Uint8Array(size) });
  }
  return out;
}

function _app(index: number, logTerm: number, entries: Entry[], commit: number): Message {
  return message({
    type: MessageType.App,
    from: "n1",
    to: "n2",
    term: 2,
    index,
    logTerm,
    entries,
    commit,
  });
}

function _ack(index: number, fields: Partial<Message> = {}): Message {
  return message({ type: MessageType.AppResp, from: "n2", to: "n1", term: 2, index, ...fields });
}

Deno.test("appends that continue each other are merged into one carrying every entry and the later commit", () => {
  const a = _app(10, 1, _entries(11, 12), 9);
  const b = _app(12, 2, _entries(13, 13), 11);
  const c = _app(13, 2, [], 13); // commit only
  const out = coalesceMessages([a, b, c], 1 << 20);
  assert.equal(out.length, 1);
  const m = out[0]!;
  assert.equal(m.index, 10);
  assert.equal(m.logTerm, 1);
  assert.deepEqual(m.entries.map((e) => e.index), [11, 12, 13]);
  assert.equal(m.commit, 13);
  // The queued messages themselves are untouched.
  assert.equal(a.entries.length, 2);
  assert.equal(a.commit, 9);
});

Deno.test("appends that do not continue each other are left as they are", () => {
  const gap = [_app(10, 1, _entries(11, 12), 9), _app(13, 2, _entries(14, 14), 9)];
  assert.equal(coalesceMessages(gap, 1 << 20), gap);
  const otherTerm = [_app(10, 1, _entries(11, 12), 9), _app(12, 1, _entries(13, 13), 9)];
  assert.equal(coalesceMessages(otherTerm, 1 << 20), otherTerm);
  const newerLeader = [_app(10, 1, _entries(11, 11), 9), { ..._app(11, 2, [], 9), term: 3 }];
  assert.equal(coalesceMessages(newerLeader, 1 << 20), newerLeader);
  const interleaved = [
    _app(10, 1, _entries(11, 11), 9),
    message({ type: MessageType.Heartbeat, from: "n1", to: "n2", term: 2, commit: 9 }),
    _app(11, 2, _entries(12, 12), 9),
  ];
  assert.equal(coalesceMessages(interleaved, 1 << 20), interleaved);
});

Deno.test("a merged append stays within the byte limit", () => {
  const q = [
    _app(0, 0, _entries(1, 2, 2, 100), 0),
    _app(2, 2, _entries(3, 3, 2, 100), 0),
    _app(3, 2, _entries(4, 4, 2, 100), 0),
  ];
  const out = coalesceMessages(q, 300);
  assert.deepEqual(out.map((m) => m.entries.map((e) => e.index)), [[1, 2, 3], [4]]);
});

Deno.test("an accepting acknowledgement is dropped when the next one covers it", () => {
  const out = coalesceMessages([_ack(5), _ack(7), _ack(9)], 1 << 20);
  assert.deepEqual(out.map((m) => m.index), [9]);
  const rejected = [_ack(5), _ack(4, { reject: true, rejectHint: 3 }), _ack(9)];
  assert.equal(coalesceMessages(rejected, 1 << 20), rejected);
  const lower = [_ack(9), _ack(7)];
  assert.equal(coalesceMessages(lower, 1 << 20), lower);
  const otherTerm = [_ack(5), _ack(9, { term: 3 })];
  assert.equal(coalesceMessages(otherTerm, 1 << 20), otherTerm);
});

Deno.test("merging keeps the order of everything else", () => {
  const vote = message({ type: MessageType.HeartbeatResp, from: "n1", to: "n2", term: 2 });
  const q = [vote, _app(10, 1, _entries(11, 11), 9), _app(11, 2, _entries(12, 12), 9), vote];
  const out = coalesceMessages(q, 1 << 20);
  assert.deepEqual(out.map((m) => m.type), [
    MessageType.HeartbeatResp,
    MessageType.App,
    MessageType.HeartbeatResp,
  ]);
  assert.deepEqual(out[1]!.entries.map((e) => e.index), [11, 12]);
});
