/**
 * One node's view of the simulation's shared {@linkcode SimClock}, given to the real driver as its
 * {@linkcode Clock}: its own rate (skew), a pause switch (a stalled process runs nothing; what fell
 * due runs at resume, seeing the current time) and a kill switch (a crashed process never runs
 * again). The simulation routes everything that runs code on the node through it too.
 *
 * @module
 */

import type { Cancel, Clock } from "../../src/node/clock.ts";
import type { SimClock } from "../sim_clock.ts";

/** A rate-scaled, pausable, killable view of a {@linkcode SimClock}; see the module doc. */
export class NodeClock implements Clock {
  /** Whether the node is paused: callbacks wait for {@linkcode NodeClock.resume}. */
  paused = false;
  /** Whether the node crashed: nothing set through this view runs again. */
  dead = false;
  readonly #sim: SimClock;
  readonly #rate: number;
  readonly #start: number;
  readonly #onError: (error: unknown) => void;
  readonly #intervals = new Set<Cancel>();
  /** Callbacks due while paused, in order; an interval's tick is kept once. */
  #deferred: (() => void)[] = [];

  /** A view of `sim` running at `rate` (1.02: 2 % fast); `onError` hears what a callback throws. */
  constructor(sim: SimClock, rate: number, onError: (error: unknown) => void) {
    [this.#sim, this.#rate, this.#start, this.#onError] = [sim, rate, sim.now(), onError];
  }

  /** Local time: the shared time since this view was made, at this node's rate. */
  now(): number {
    return (this.#sim.now() - this.#start) * this.#rate;
  }

  /** See {@linkcode Clock.after}; `ms` is local time (after a kill, the timer fires as a no-op). */
  after(ms: number, fn: () => void): Cancel {
    return this.#sim.after(Math.max(0, ms) / this.#rate, () => this.run(fn));
  }

  /** See {@linkcode Clock.every}; `ms` is local time. */
  every(ms: number, fn: () => void): Cancel {
    const tick = () => fn();
    const cancel = this.#sim.every(ms / this.#rate, () => this.run(tick, true));
    const stop = () => {
      cancel();
      this.#intervals.delete(stop);
      this.#deferred = this.#deferred.filter((d) => d !== tick);
    };
    this.#intervals.add(stop);
    return stop;
  }

  /** Runs `fn` on this node after `ms` of shared time (a network or disk delay). */
  schedule(ms: number, fn: () => void): void {
    this.after(ms * this.#rate, fn);
  }

  /** Runs `fn` on this node now, or at resume if paused (an interval's tick once), never if dead. */
  run(fn: () => void, once = false): void {
    if (this.dead) return;
    if (this.paused) {
      if (!once || !this.#deferred.includes(fn)) this.#deferred.push(fn);
      return;
    }
    try {
      fn();
    } catch (e) {
      this.#onError(e);
    }
  }

  /** Runs what fell due during the pause, in order, and goes on as usual. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    const deferred = this.#deferred;
    this.#deferred = [];
    for (const fn of deferred) this.run(fn);
  }

  /** The process is gone: nothing set through this view runs again, intervals stop. */
  kill(): void {
    this.dead = true;
    for (const stop of this.#intervals) stop();
    this.#deferred = [];
  }
}
