/**
 * The behaviour every {@linkcode Clock} must show, as `Deno.test` cases that an implementation
 * registers with {@linkcode testClockConformance}. The real clock runs them on short real timers
 * (each wait bounded by a deadline); the simulated clock on virtual time.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Clock } from "../src/node/clock.ts";

/** A clock to test, and a way to let its time pass. */
export interface ClockUnderTest {
  /** The clock. */
  clock: Clock;
  /**
   * Lets time pass (really, or by advancing a simulated clock) until `done` settles, and returns
   * its value.
   *
   * @throws {Error} Naming `what` if it does not settle within a deadline (or, on a simulated
   * clock, before no timer is left).
   */
  wait<T>(done: Promise<T>, what: string): Promise<T>;
}

/**
 * Registers the conformance tests for the clock `factory` builds, each named
 * `"<name>: <what it checks>"`.
 *
 * @param name The implementation's name, for the test names.
 * @param factory Builds a fresh clock for each test.
 */
export function testClockConformance(name: string, factory: () => ClockUnderTest): void {
  const test = (what: string, fn: (c: ClockUnderTest) => Promise<void>) => {
    Deno.test(`${name}: ${what}`, () => fn(factory()));
  };

  /** A promise and its resolve function. */
  const signal = () => Promise.withResolvers<void>();

  test("a timer fires once its delay has passed, and now() has moved on", async ({ clock, wait }) => {
    const start = clock.now();
    const done = signal();
    let firedAt = -1;
    clock.after(25, () => {
      firedAt = clock.now();
      done.resolve();
    });
    await wait(done.promise, "a 25 ms timer");
    // A real clock's timers are accurate to about a millisecond.
    assert.ok(firedAt - start >= 24, `fired after ${firedAt - start} ms`);
    assert.ok(clock.now() >= firedAt, "now() went backwards");
  });

  test("timers fire in due order, and those due together in the order they were set", async ({ clock, wait }) => {
    const order: string[] = [];
    const done = signal();
    clock.after(60, () => {
      order.push("60");
      done.resolve();
    });
    clock.after(20, () => order.push("20"));
    clock.after(40, () => order.push("40a"));
    clock.after(40, () => order.push("40b"));
    clock.after(0, () => order.push("0"));
    await wait(done.promise, "the last timer");
    assert.deepEqual(order, ["0", "20", "40a", "40b", "60"]);
  });

  test("a cancelled timer never fires; cancelling twice or after it fired does nothing", async ({ clock, wait }) => {
    const fired: string[] = [];
    const done = signal();
    const cancelLate = clock.after(5, () => fired.push("kept"));
    const cancel = clock.after(10, () => fired.push("cancelled"));
    cancel();
    cancel();
    clock.after(30, () => done.resolve());
    await wait(done.promise, "the 30 ms timer");
    cancelLate();
    assert.deepEqual(fired, ["kept"]);
  });

  test("an interval fires repeatedly until stopped, also from its own callback", async ({ clock, wait }) => {
    const times: number[] = [];
    const stopped = signal();
    const stop = clock.every(10, () => {
      times.push(clock.now());
      if (times.length === 3) {
        stop();
        stopped.resolve();
      }
    });
    await wait(stopped.promise, "three ticks");
    const quiet = signal();
    clock.after(40, () => quiet.resolve());
    await wait(quiet.promise, "40 ms more");
    assert.equal(times.length, 3);
    for (let k = 1; k < times.length; k++) {
      assert.ok(times[k]! >= times[k - 1]!, `tick times ${times} go backwards`);
    }
  });

  test("a timer set from a callback fires after it", async ({ clock, wait }) => {
    const order: string[] = [];
    const done = signal();
    clock.after(5, () => {
      order.push("outer");
      clock.after(0, () => {
        order.push("inner");
        done.resolve();
      });
    });
    await wait(done.promise, "the inner timer");
    assert.deepEqual(order, ["outer", "inner"]);
  });

  test("an interval needs a positive period", ({ clock }) => {
    for (const ms of [0, -5, NaN, Infinity]) {
      assert.throws(() => clock.every(ms, () => {}), RangeError, `period ${ms}`);
    }
    return Promise.resolve();
  });
}
