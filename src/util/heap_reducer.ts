/**
 * Gives the JavaScript heap back after a burst of work.
 *
 * Under a burst (hundreds of writers at once), V8 grows its heap to keep up: after a bulk load of
 * a million keys the heap had 281 MiB committed for 96 MiB in use, and 30 MiB live once collected.
 * V8 keeps those pages: an ordinary full collection frees objects but leaves most pages holding a
 * few survivors each, so they stay committed (281 -> 224 MiB in that measurement), and its own
 * memory reducer did not run while a light load went on. A collection that compacts the heap
 * (V8's "last resort" collection) moves the survivors together and releases the rest (281 -> 32
 * MiB, and the process's RSS about 200 MiB lower).
 *
 * {@linkcode HeapReducer} runs that collection once a burst is over: when the work rate (a counter
 * the caller gives, such as the applied index) has stayed at a quarter of its peak since the last
 * run or less (or at nothing) for `quietChecks` checks in a row, and the heap has at least
 * `minSpareBytes` committed beyond what is in use ("in use" counts garbage not yet collected, so
 * it is no measure of what would remain). The collection stops the program while it runs (with a
 * million keys, 1.2 to 2.2 s on a busy 2-core machine), so it runs at most once per `minGapMs`
 * and never under a steady load.
 *
 * @module
 */

import v8 from "node:v8";
import vm from "node:vm";

/** What the heap looks like now. */
export interface HeapReading {
  /** Bytes of heap committed by V8. */
  heapTotal: number;
  /** Bytes of heap in use (live objects and garbage not yet collected). */
  heapUsed: number;
}

/** Options of {@linkcode HeapReducer}. */
export interface HeapReducerOptions {
  /** A counter of work done (only its increase matters), read at each check. */
  activity: () => number;
  /** Runs the compacting collection. */
  collect: () => void;
  /** The heap now. Default: {@linkcode Deno.memoryUsage}. */
  heap?: () => HeapReading;
  /** Milliseconds now. Default: `performance.now()`. */
  now?: () => number;
  /** The least spare heap (committed minus used) worth a collection. Default 64 MiB. */
  minSpareBytes?: number;
  /** The least time between two collections. Default 60 s. */
  minGapMs?: number;
  /**
   * How many checks in a row must find the rate low (a quarter of the peak or less) before a
   * collection: a burst that pauses (a slow disk write, a snapshot) is not over. Default 3.
   */
  quietChecks?: number;
  /** Told after each collection: the heap before and after, and how long it took. */
  onCollect?: (before: HeapReading, after: HeapReading, ms: number) => void;
}

/**
 * Decides, at each {@linkcode HeapReducer.check}, whether a burst is over and the heap is worth
 * compacting (see the module doc); the caller calls `check` on a timer.
 *
 * @example Usage
 * ```ts
 * import { HeapReducer } from "./heap_reducer.ts";
 *
 * let work = 0;
 * let collections = 0;
 * let clock = 0;
 * const reducer = new HeapReducer({
 *   activity: () => work,
 *   collect: () => collections++,
 *   heap: () => ({ heapTotal: 300 << 20, heapUsed: 40 << 20 }),
 *   now: () => clock,
 * });
 * work = 10_000; // a burst
 * clock += 1000;
 * reducer.check();
 * for (let i = 0; i < 3; i++) { // then nothing, three checks in a row
 *   clock += 1000;
 *   reducer.check();
 * }
 * console.log(collections); // 1
 * ```
 */
export class HeapReducer {
  #activity: () => number;
  #collect: () => void;
  #heap: () => HeapReading;
  #now: () => number;
  #minSpare: number;
  #minGap: number;
  #onCollect: HeapReducerOptions["onCollect"];
  #lastCount: number;
  #lastAt: number;
  #quietChecks: number;
  #quiet = 0;
  #peakRate = 0;
  #lastRun = -Infinity;

  /** A reducer reading the counter and the heap at each {@linkcode HeapReducer.check}. */
  constructor(options: HeapReducerOptions) {
    this.#activity = options.activity;
    this.#collect = options.collect;
    this.#heap = options.heap ?? (() => {
      const m = Deno.memoryUsage();
      return { heapTotal: m.heapTotal, heapUsed: m.heapUsed };
    });
    this.#now = options.now ?? (() => performance.now());
    this.#minSpare = options.minSpareBytes ?? 64 << 20;
    this.#minGap = options.minGapMs ?? 60_000;
    this.#onCollect = options.onCollect;
    this.#quietChecks = options.quietChecks ?? 3;
    this.#lastCount = this.#activity();
    this.#lastAt = this.#now();
  }

  /** Checks the rate of work and the heap; runs the collection if a burst is over. Returns whether it did. */
  check(): boolean {
    const now = this.#now();
    const count = this.#activity();
    const elapsed = now - this.#lastAt;
    if (elapsed <= 0) return false;
    const rate = Math.max(0, count - this.#lastCount) * 1000 / elapsed;
    this.#lastCount = count;
    this.#lastAt = now;
    if (rate > this.#peakRate) this.#peakRate = rate;
    if (rate > this.#peakRate / 4 && rate > 0) {
      this.#quiet = 0;
      return false;
    }
    if (++this.#quiet < this.#quietChecks) return false;
    if (now - this.#lastRun < this.#minGap) return false;
    const before = this.#heap();
    const spare = before.heapTotal - before.heapUsed;
    if (spare < this.#minSpare) return false;
    const started = this.#now();
    this.#collect();
    const after = this.#heap();
    this.#lastRun = this.#now();
    this.#peakRate = rate;
    this.#quiet = 0;
    this.#onCollect?.(before, after, this.#lastRun - started);
    return true;
  }
}

/**
 * V8's compacting "last resort" collection, or null when this runtime does not offer it. The
 * collection function is taken from a fresh context created with `--expose-gc` set for that
 * moment only (V8 installs `gc` in contexts created while the flag is on).
 */
export function compactingCollector(): (() => void) | null {
  try {
    v8.setFlagsFromString("--expose-gc");
    let gc: unknown;
    try {
      gc = vm.runInNewContext("gc");
    } finally {
      v8.setFlagsFromString("--no-expose-gc");
    }
    if (typeof gc !== "function") return null;
    const collect = gc as (options: object) => void;
    return () => collect({ type: "major", execution: "sync", flavor: "last-resort" });
  } catch {
    return null;
  }
}
