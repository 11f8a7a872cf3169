import assert from "node:assert/strict";
import { compactingCollector, type HeapReading, HeapReducer } from "./heap_reducer.ts";

const MiB = 1 << 20;

/** A reducer on a fake clock, counter and heap; `step(work)` advances 1 s after `work` more. */
function setup(heap: HeapReading, options: { minGapMs?: number } = {}) {
  let work = 0;
  let clock = 0;
  const collections: number[] = [];
  const reducer = new HeapReducer({
    activity: () => work,
    collect: () => collections.push(clock),
    heap: () => heap,
    now: () => clock,
    ...options,
  });
  return {
    collections,
    step(more: number): boolean {
      work += more;
      clock += 1000;
      return reducer.check();
    },
  };
}

Deno.test("HeapReducer: compacts once a burst is over, not during it", () => {
  const r = setup({ heapTotal: 300 * MiB, heapUsed: 90 * MiB });
  for (let i = 0; i < 5; i++) assert.deepEqual(r.step(5000), false);
  // Still busy: a dip to half the peak is not the end of the burst.
  assert.deepEqual(r.step(2500), false);
  // A light load (200/s after 5000/s) is, once it has lasted three checks.
  assert.deepEqual(r.step(200), false);
  assert.deepEqual(r.step(200), false);
  assert.deepEqual(r.step(200), true);
  assert.deepEqual(r.collections.length, 1);
  // The peak starts again from the light load: it goes on without more collections.
  for (let i = 0; i < 100; i++) assert.deepEqual(r.step(200), false);
});

Deno.test("HeapReducer: a pause within a burst is not its end", () => {
  const r = setup({ heapTotal: 300 * MiB, heapUsed: 90 * MiB });
  for (let round = 0; round < 20; round++) {
    r.step(5000);
    assert.deepEqual(r.step(0), false);
    assert.deepEqual(r.step(100), false);
  }
  assert.deepEqual(r.collections, []);
});

Deno.test("HeapReducer: never under a steady load", () => {
  const r = setup({ heapTotal: 300 * MiB, heapUsed: 90 * MiB });
  for (let i = 0; i < 200; i++) assert.deepEqual(r.step(3000 + (i % 3) * 300), false);
});

Deno.test("HeapReducer: only when the spare heap is large enough", () => {
  // 40 MiB spare: not worth a pause.
  const small = setup({ heapTotal: 100 * MiB, heapUsed: 60 * MiB });
  small.step(5000);
  for (let i = 0; i < 10; i++) assert.deepEqual(small.step(0), false);
  // 100 MiB spare, even with 150 MiB in use (much of it garbage not yet collected).
  const used = setup({ heapTotal: 250 * MiB, heapUsed: 150 * MiB });
  used.step(5000);
  used.step(0);
  used.step(0);
  assert.deepEqual(used.step(0), true);
});

Deno.test("HeapReducer: at most once per minGapMs", () => {
  const r = setup({ heapTotal: 300 * MiB, heapUsed: 50 * MiB }, { minGapMs: 10_000 });
  r.step(5000);
  r.step(0);
  r.step(0);
  assert.deepEqual(r.step(0), true);
  // Bursts that end again within 10 s wait for the gap.
  for (let i = 0; i < 6; i++) {
    r.step(5000);
    for (let j = 0; j < 3; j++) r.step(0);
  }
  assert.deepEqual(r.collections, [4000, 16000, 28000]);
});

Deno.test("compactingCollector: releases the heap pages garbage left", () => {
  const collect = compactingCollector();
  assert.ok(collect !== null, "this runtime offers a compacting collection");
  assert.deepEqual("gc" in globalThis, false, "gc stays out of the program's own context");
  // Fill pages with objects, keep one in fifty alive: every page keeps a few survivors.
  const keep: unknown[] = [];
  for (let i = 0; i < 1_500_000; i++) {
    const o = { i, s: `x${i}` };
    if (i % 50 === 0) keep.push(o);
  }
  const before = Deno.memoryUsage().heapTotal;
  collect();
  const after = Deno.memoryUsage().heapTotal;
  assert.ok(after < before, `heap committed ${before} before, ${after} after`);
  assert.deepEqual(keep.length, 30_000);
});
