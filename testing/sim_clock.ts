/**
 * A simulated {@linkcode Clock}: virtual time that moves only when the simulation says, and an
 * ordered queue of timers fired deterministically (by due time, then in the order they were set).
 * It passes the same conformance suite as the real clock (`clock_conformance.ts`).
 *
 * Timers fire synchronously inside {@linkcode SimClock.runUntil}: promise callbacks a timer
 * schedules run only after `runUntil` returns. A simulation that wants them to run between two
 * timers steps one due time at a time (`runUntil(clock.nextDue()!)`) and lets its own queue
 * drain in between ({@linkcode settle}, or the cheaper {@linkcode drain}).
 *
 * @module
 */

import { nextTick } from "node:process";
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

/**
 * Resolves, as {@linkcode settle} does, once every promise callback queued before the call has
 * run, and every one those queue in turn, but without waiting for the runtime's next turn: its
 * callback is a next tick (`process.nextTick`), queued from a promise callback, and next ticks
 * queued there run only once the microtask queue is empty. That costs a small fraction of a
 * turn of the event loop; but it lets nothing else the runtime runs between turns (timers,
 * I/O, immediates) run, so a loop of it must call {@linkcode settle} now and then. It assumes
 * that the work it waits for queues no next ticks of its own (those could run after it).
 *
 * @example Usage
 * ```ts
 * import { drain } from "./sim_clock.ts";
 *
 * let steps = 0;
 * (async () => {
 *   for (let i = 0; i < 1000; i++) await null, steps++;
 * })();
 * await drain();
 * console.assert(steps === 1000);
 * ```
 */
export function drain(): Promise<void> {
  // Queued from a promise callback even when called outside one: a next tick queued from a
  // macrotask itself would run before the promise callbacks already queued.
  return new Promise((resolve) => queueMicrotask(() => nextTick(resolve)));
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
      this.#now = top.due;
      if (top.period === null) {
        this.#pop();
        top.cancelled = true;
        this.#live--;
      } else {
        top.due += top.period;
        top.seq = this.#seq++;
        this.#sink(top); // re-armed where it is: still the heap's top
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

  // The heap's sifts move the timer being placed along the path and write it once, at its place
  // (a simulation pushes and pops a timer for nearly every step it takes).

  #push(timer: _Timer): void {
    const heap = this.#heap;
    let k = heap.length;
    heap.push(timer);
    while (k > 0) {
      const parent = (k - 1) >> 1;
      const above = heap[parent]!;
      if (!_before(timer, above)) break;
      heap[k] = above;
      k = parent;
    }
    heap[k] = timer;
  }

  #pop(): void {
    const last = this.#heap.pop()!;
    if (this.#heap.length > 0) this.#sink(last);
  }

  /** Puts `timer` in the heap's top place (replacing what was there) and sifts it down. */
  #sink(timer: _Timer): void {
    const heap = this.#heap;
    const size = heap.length;
    let k = 0;
    for (;;) {
      const left = 2 * k + 1;
      if (left >= size) break;
      const right = left + 1;
      const child = right < size && _before(heap[right]!, heap[left]!) ? right : left;
      const below = heap[child]!;
      if (!_before(below, timer)) break;
      heap[k] = below;
      k = child;
    }
    heap[k] = timer;
  }
}

function _before(a: _Timer, b: _Timer): boolean {
  return a.due < b.due || (a.due === b.due && a.seq < b.seq);
}
