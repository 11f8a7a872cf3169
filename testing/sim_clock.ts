/**
 * A simulated {@linkcode Clock}: virtual time that moves only when the simulation says, and an
 * ordered queue of timers fired deterministically (by due time, then in the order they were set).
 * It passes the same conformance suite as the real clock (`clock_conformance.ts`).
 *
 * Timers fire synchronously inside {@linkcode SimClock.runUntil}: promise callbacks a timer
 * schedules run only after `runUntil` returns. A simulation that wants them to run between two
 * timers steps one due time at a time (`runUntil(clock.nextDue()!)`) and lets its own queue
 * drain in between ({@linkcode settle}).
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { type Cancel, checkPeriod, type Clock } from "../src/node/clock.ts";

/**
 * Resolves once every promise callback queued before the call has run, and every one those queue
 * in turn, however long the chain: it waits for the runtime's next turn (`setImmediate`), which
 * comes only when the microtask queue is empty. Work that waits on the runtime itself (a real
 * timer, a real file, a socket) is not waited for; simulated work never does.
 *
 * A `MessageChannel` message is not such a turn in Deno: its delivery can run between the promise
 * callbacks of a chain already going, after as few as three of them.
 *
 * @example Usage
 * ```ts
 * import { settle } from "./sim_clock.ts";
 *
 * let steps = 0;
 * (async () => {
 *   for (let i = 0; i < 1000; i++) await null, steps++;
 * })();
 * await settle();
 * console.assert(steps === 1000);
 * ```
 */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface _Timer {
  due: number;
  /** Insertion order, for ties; renewed each time an interval is re-armed. */
  seq: number;
  fn: () => void;
  /** The period of an interval; null for a one-shot timer. */
  period: number | null;
  cancelled: boolean;
}

/**
 * Virtual time with an ordered timer queue.
 *
 * @example Usage
 * ```ts
 * import { SimClock } from "./sim_clock.ts";
 *
 * const clock = new SimClock();
 * const fired: number[] = [];
 * clock.after(20, () => fired.push(clock.now()));
 * const stop = clock.every(15, () => fired.push(clock.now()));
 * clock.advance(45);
 * stop();
 * console.assert(fired.join() === "15,20,30,45");
 * ```
 */
export class SimClock implements Clock {
  #now: number;
  #seq = 0;
  /** A binary min-heap on (due, seq); cancelled timers are dropped when they reach the top. */
  #heap: _Timer[] = [];
  #live = 0;

  /**
   * Creates a clock.
   *
   * @param start The time `now()` returns at first. Default 0.
   */
  constructor(start = 0) {
    this.#now = start;
  }

  /** The current virtual time, in milliseconds. */
  now(): number {
    return this.#now;
  }

  /** See {@linkcode Clock.after}. */
  after(ms: number, fn: () => void): Cancel {
    return this.#arm(this.#now + (ms > 0 ? ms : 0), fn, null);
  }

  /** See {@linkcode Clock.every}. */
  every(ms: number, fn: () => void): Cancel {
    checkPeriod(ms);
    return this.#arm(this.#now + ms, fn, ms);
  }

  /** How many timers are set (intervals count once). */
  get pending(): number {
    return this.#live;
  }

  /** The due time of the next timer to fire, or null if none is set. */
  nextDue(): number | null {
    this.#dropCancelled();
    return this.#heap[0]?.due ?? null;
  }

  /**
   * Moves time forward to `time`, firing every timer due by then in order, with `now()` at each
   * timer's due time while it runs; timers those set fire too if due by `time`. A callback that
   * throws stops the run there (time stays at its due time) and the error propagates; the queue
   * stays consistent.
   *
   * @param time The time to reach.
   * @returns How many timers fired.
   * @throws {RangeError} If `time` is before `now()` or not finite.
   */
  runUntil(time: number): number {
    if (!(time >= this.#now && time < Infinity)) {
      throw new RangeError(`Cannot run the clock from ${this.#now} to ${time}`);
    }
    let fired = 0;
    for (;;) {
      this.#dropCancelled();
      const top = this.#heap[0];
      if (top === undefined || top.due > time) break;
      this.#pop();
      this.#now = top.due;
      if (top.period === null) {
        top.cancelled = true;
        this.#live--;
      } else {
        top.due += top.period;
        top.seq = this.#seq++;
        this.#push(top);
      }
      fired++;
      top.fn();
    }
    this.#now = time;
    return fired;
  }

  /**
   * Moves time forward by `ms`, firing what falls due: `runUntil(now() + ms)`.
   *
   * @param ms How long, at least 0.
   * @returns How many timers fired.
   */
  advance(ms: number): number {
    return this.runUntil(this.#now + ms);
  }

  #arm(due: number, fn: () => void, period: number | null): Cancel {
    const timer: _Timer = { due, seq: this.#seq++, fn, period, cancelled: false };
    this.#push(timer);
    this.#live++;
    return () => {
      if (timer.cancelled) return;
      timer.cancelled = true;
      this.#live--;
    };
  }

  #dropCancelled(): void {
    while (this.#heap[0]?.cancelled) this.#pop();
  }

  #push(timer: _Timer): void {
    const heap = this.#heap;
    heap.push(timer);
    let k = heap.length - 1;
    while (k > 0) {
      const parent = (k - 1) >> 1;
      if (!_before(heap[k]!, heap[parent]!)) break;
      [heap[k], heap[parent]] = [heap[parent]!, heap[k]!];
      k = parent;
    }
  }

  #pop(): void {
    const heap = this.#heap;
    const last = heap.pop()!;
    if (heap.length === 0) return;
    heap[0] = last;
    let k = 0;
    for (;;) {
      const [left, right] = [2 * k + 1, 2 * k + 2];
      let least = k;
      if (left < heap.length && _before(heap[left]!, heap[least]!)) least = left;
      if (right < heap.length && _before(heap[right]!, heap[least]!)) least = right;
      if (least === k) return;
      [heap[k], heap[least]] = [heap[least]!, heap[k]!];
      k = least;
    }
  }
}

function _before(a: _Timer, b: _Timer): boolean {
  return a.due < b.due || (a.due === b.due && a.seq < b.seq);
}
