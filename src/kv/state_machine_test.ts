import assert from "node:assert/strict";
import { decodeCommand, encodeCommand, type KvCommand, KvStateMachine } from "./state_machine.ts";

Deno.test("commands round-trip through their binary form", () => {
  const cmds: KvCommand[] = [
    { op: "put", key: "a", value: "1" },
    { op: "put", key: "ключ/🔑", value: "" },
    { op: "put", key: "", value: "x".repeat(10_000) },
    { op: "delete", key: "a b" },
  ];
  for (const c of cmds) assert.deepEqual(decodeCommand(encodeCommand(c)), c);
});

Deno.test("malformed commands are rejected, not misread", () => {
  const good = encodeCommand({ op: "put", key: "abc", value: "v" });
  for (let cut = 0; cut < 8; cut++) {
    assert.throws(() => decodeCommand(good.subarray(0, cut)), RangeError, `cut at ${cut}`);
  }
  const badOp = good.slice();
  badOp[0] = 9;
  assert.throws(() => decodeCommand(badOp), /unknown command op 9/);
  const del = encodeCommand({ op: "delete", key: "k" });
  assert.throws(() => decodeCommand(new Uint8Array([...del, 1])), /trailing/);
});

Deno.test("the state machine applies puts and deletes in order", () => {
  const sm = new KvStateMachine();
  sm.apply(1, { op: "put", key: "a", value: "1" });
  sm.advance(2);
  assert.deepEqual(sm.apply(3, { op: "delete", key: "a" }), { op: "delete", deleted: true });
  assert.deepEqual(sm.apply(4, { op: "delete", key: "a" }), { op: "delete", deleted: false });
  sm.apply(5, { op: "put", key: "b", value: "2" });
  assert.equal(sm.get("a"), null);
  assert.equal(sm.get("b"), "2");
  assert.equal(sm.appliedIndex, 5);
  assert.throws(() => sm.apply(5, { op: "put", key: "c", value: "3" }), /out of order/);
});

Deno.test("the state machine refuses a skipped, repeated or older entry before changing anything", () => {
  const sm = new KvStateMachine();
  sm.apply(1, { op: "put", key: "a", value: "1" });
  for (const index of [3, 1, 0]) {
    assert.throws(
      () => sm.apply(index, { op: "put", key: "a", value: "wrong" }),
      new RangeError(`entry ${index} applied after 1: out of order (expected 2)`),
    );
    assert.throws(() => sm.advance(index), /out of order/);
  }
  assert.equal(sm.get("a"), "1");
  assert.equal(sm.appliedIndex, 1);
  sm.advance(2);
  assert.equal(sm.appliedIndex, 2);
});

Deno.test("two state machines fed the same entries end in the same state", () => {
  const a = new KvStateMachine();
  const b = new KvStateMachine();
  const cmds: KvCommand[] = [];
  for (let i = 0; i < 500; i++) {
    cmds.push(
      i % 3 === 0
        ? { op: "delete", key: `k${i % 17}` }
        : { op: "put", key: `k${i % 17}`, value: `${i}` },
    );
  }
  cmds.forEach((c, i) => a.apply(i + 1, decodeCommand(encodeCommand(c))));
  cmds.forEach((c, i) => b.apply(i + 1, decodeCommand(encodeCommand(c))));
  assert.deepEqual([...a.data], [...b.data]);
});

Deno.test("a view keeps showing the state it began with while writes go on", () => {
  const sm = new KvStateMachine();
  for (let i = 0; i < 100; i++) sm.apply(i + 1, { op: "put", key: `k${i}`, value: `v${i}` });
  const expected = new Map(sm.data);
  const view = sm.view();
  assert.equal(view.index, 100);
  assert.equal(view.count, 100);
  const seen = new Map<string, string>();
  let index = 100;
  let n = 0;
  for (const [k, v] of view.pairs()) {
    seen.set(k, v);
    // Interleave changes with the reading: overwrite, delete, re-add and add new keys.
    const i = n++ % 100;
    sm.apply(++index, { op: "put", key: `k${(i * 7) % 100}`, value: "changed" });
    sm.apply(++index, { op: "delete", key: `k${(i * 13) % 100}` });
    sm.apply(++index, { op: "put", key: `new${i}`, value: "x" });
  }
  view.close();
  assert.deepEqual(seen, expected);
  // Closed views cost nothing more.
  sm.apply(++index, { op: "put", key: "after", value: "y" });
  assert.equal(sm.get("after"), "y");
});

Deno.test("a view lists each key once even when keys it already passed change", () => {
  const sm = new KvStateMachine();
  for (let i = 0; i < 1000; i++) sm.apply(i + 1, { op: "put", key: `k${i}`, value: `v${i}` });
  const view = sm.view();
  let index = 1000;
  const seen: [string, string][] = [];
  for (const pair of view.pairs()) {
    seen.push(pair);
    // Change the key just read, and one not read yet, and delete one.
    sm.apply(++index, { op: "put", key: pair[0], value: "changed" });
    sm.apply(++index, { op: "put", key: `k${(seen.length * 3) % 1000}`, value: "later" });
    sm.apply(++index, { op: "delete", key: `k${(seen.length * 7) % 1000}` });
  }
  view.close();
  assert.equal(seen.length, view.count);
  assert.equal(new Set(seen.map(([k]) => k)).size, 1000, "a key was listed twice");
  for (const [k, v] of seen) assert.equal(v, `v${k.slice(1)}`, k);
});
