import assert from "node:assert/strict";
import { testClockConformance } from "./clock_conformance.ts";
import { settle, SimClock } from "./sim_clock.ts";

testClockConformance("SimClock", () => {
  const clock = new SimClock(1000);
  return {
    clock,
    async wait(done, what) {
      let settled = false;
      const watched = done.finally(() => settled = true);
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, 0)); // let promise callbacks run
        if (settled) return await watched;
        const next = clock.nextDue();
        if (next === null) throw new Error(`No timer is left, and still waiting for ${what}`);
        clock.runUntil(next);
      }
    },
  };
});

Deno.test("runUntil fires what is due with now() at each due time, then stops at the target", () => {
  const clock = new SimClock();
  const seen: string[] = [];
  clock.after(10, () => seen.push(`a@${clock.now()}`));
  clock.after(30, () => seen.push(`late@${clock.now()}`));
  clock.every(4, () => seen.push(`tick@${clock.now()}`));
  assert.equal(clock.runUntil(12), 4);
  assert.deepEqual(seen, ["tick@4", "tick@8", "a@10", "tick@12"]);
  assert.equal(clock.now(), 12);
  assert.equal(clock.nextDue(), 16);
  assert.equal(clock.pending, 2);
  assert.equal(clock.advance(0), 0);
  assert.throws(() => clock.runUntil(11), RangeError);
  assert.throws(() => clock.runUntil(Infinity), RangeError);
});

Deno.test("ties go to the timer set first; an interval counts as set again when it fires", () => {
  const clock = new SimClock();
  const seen: string[] = [];
  clock.every(10, () => seen.push(`interval@${clock.now()}`));
  clock.after(20, () => seen.push(`timer@${clock.now()}`));
  clock.after(10, () => seen.push(`second@${clock.now()}`));
  clock.advance(20);
  assert.deepEqual(seen, ["interval@10", "second@10", "timer@20", "interval@20"]);
});

Deno.test("timers set while running fire in the same run when due by its end", () => {
  const clock = new SimClock();
  const seen: number[] = [];
  clock.after(5, () => {
    seen.push(clock.now());
    clock.after(3, () => seen.push(clock.now()));
    clock.after(50, () => seen.push(clock.now()));
  });
  assert.equal(clock.advance(10), 2);
  assert.deepEqual(seen, [5, 8]);
  assert.equal(clock.pending, 1);
});

Deno.test("a throwing callback stops the run at its time and leaves the queue usable", () => {
  const clock = new SimClock();
  const seen: number[] = [];
  clock.every(5, () => seen.push(clock.now()));
  clock.after(7, () => {
    throw new Error("boom at 7");
  });
  assert.throws(() => clock.advance(20), /boom at 7/);
  assert.equal(clock.now(), 7);
  assert.equal(clock.pending, 1);
  clock.advance(8);
  assert.deepEqual(seen, [5, 10, 15]);
});

Deno.test("cancelled timers leave the queue and nextDue skips them", () => {
  const clock = new SimClock();
  const cancel = clock.after(1, () => assert.fail("cancelled timer fired"));
  clock.after(2, () => {});
  cancel();
  assert.equal(clock.pending, 1);
  assert.equal(clock.nextDue(), 2);
  assert.equal(clock.advance(5), 1);
  assert.equal(clock.nextDue(), null);
  assert.equal(clock.pending, 0);
});

Deno.test("many timers fire in (due, set) order", () => {
  const clock = new SimClock();
  const fired: [number, number][] = [];
  let x = 7;
  for (let k = 0; k < 500; k++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const due = x % 50;
    clock.after(due, () => fired.push([due, k]));
  }
  clock.advance(100);
  const sorted = [...fired].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  assert.equal(fired.length, 500);
  assert.deepEqual(fired, sorted);
});

Deno.test("settle waits for every promise callback chain, however long, also right after a settle", async () => {
  const steps = [0, 0];
  const chain = async (i: number) => {
    for (let k = 0; k < 10_000; k++) await null, steps[i]!++;
  };
  chain(0);
  await settle();
  chain(1); // started where a simulation starts a step's work: right after the last settle
  await settle();
  assert.deepEqual(steps, [10_000, 10_000]);
});
