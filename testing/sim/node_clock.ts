/**
 * One node's view of the simulation's shared {@linkcode SimClock}: its own clock rate (skew), a
 * pause switch (a stalled process runs nothing), and a kill switch (a crashed process never runs
 * again). The real driver takes it as its {@linkcode Clock}; the simulation also routes everything
 * that runs code on the node (deliveries, disk completions, client requests) through it, so that
 * a paused node runs nothing until it resumes and a crashed one nothing at all.
 *
 * @module
 */

import type { Cancel, Clock } from "../../src/node/clock.ts";
import type { SimClock } from "../sim_clock.ts";

/** A rate-scaled, pausable, killable view of a {@linkcode SimClock}; see the module doc. */
export class NodeClock implements Clock {
  readonly #sim: SimClock;
  readonly #rate: number;
  readonly #start: number;
  readonly #onError: (error: unknown) => void;
  readonly #cancels = new Map<number, Cancel>();
  #next = 0;
  #dead = false;
  #paused = false;
  /** Callbacks due while paused, in order; an interval is kept once. */
  #deferred: { key: number | null; fn: () => void }[] = [];

  /**
   * Creates a view.
   *
   * @param sim The shared clock.
   * @param rate How fast this node's clock runs against the shared one (1.02: 2 % fast).
   * @param onError Told about anything a callback throws (the simulation fails the run).
   */
  constructor(sim: SimClock, rate: number, onError: (error: unknown) => void) {
    this.#sim = sim;
    this.#rate = rate;
    this.#start = sim.now();
    this.#onError = onError;
  }

  /** Local time: the shared time since this view was made, at this node's rate. */
  now(): number {
    return (this.#sim.now() - this.#start) * this.#rate;
  }

  /** See {@linkcode Clock.after}; `ms` is local time. */
  after(ms: number, fn: () => void): Cancel {
    const key = this.#next++;
    const cancel = this.#sim.after(Math.max(0, ms) / this.#rate, () => {
      this.#cancels.delete(key);
      this.#fire(null, fn);
    });
    this.#cancels.set(key, cancel);
    return () => {
      cancel();
      this.#cancels.delete(key);
    };
  }

  /** See {@linkcode Clock.every}; `ms` is local time. */
  every(ms: number, fn: () => void): Cancel {
    const key = this.#next++;
    const cancel = this.#sim.every(ms / this.#rate, () => this.#fire(key, fn));
    this.#cancels.set(key, cancel);
    return () => {
      cancel();
      this.#cancels.delete(key);
      this.#deferred = this.#deferred.filter((d) => d.key !== key);
    };
  }

  /** Runs `fn` on this node after `ms` of shared time (a network or disk delay). */
  schedule(ms: number, fn: () => void): void {
    this.after(ms * this.#rate, fn);
  }

  /** Runs `fn` on this node now, or when it resumes if it is paused (never if it crashed). */
  run(fn: () => void): void {
    this.#fire(null, fn);
  }

  /** Whether the node is paused. */
  get paused(): boolean {
    return this.#paused;
  }

  /** Whether the node crashed. */
  get dead(): boolean {
    return this.#dead;
  }

  /** Stops running callbacks until {@linkcode NodeClock.resume}. */
  pause(): void {
    this.#paused = true;
  }

  /** Runs what fell due during the pause, in order, and goes on as usual. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    const deferred = this.#deferred;
    this.#deferred = [];
    for (const d of deferred) this.#fire(d.key, d.fn);
  }

  /** The process is gone: cancels every timer; nothing set through this view runs again. */
  kill(): void {
    this.#dead = true;
    for (const cancel of this.#cancels.values()) cancel();
    this.#cancels.clear();
    this.#deferred = [];
  }

  #fire(key: number | null, fn: () => void): void {
    if (this.#dead) return;
    if (this.#paused) {
      if (key === null || !this.#deferred.some((d) => d.key === key)) {
        this.#deferred.push({ key, fn });
      }
      return;
    }
    try {
      fn();
    } catch (e) {
      this.#onError(e);
    }
  }
}
