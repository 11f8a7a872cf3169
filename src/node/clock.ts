/**
 * The clock seam: the time the driver reads and the timers it sets (the tick interval, request
 * deadlines, retry back-off), as one small interface, so that a simulation can run the real
 * driver on virtual time ({@linkcode realClock} here, `SimClock` in `testing/sim_clock.ts`). Both
 * pass the conformance suite in `testing/clock_conformance.ts`.
 *
 * What every implementation must guarantee:
 *
 * - `now()` never decreases.
 * - A timer never fires before `now()` has advanced by its delay from when it was set (to within
 *   a millisecond on a real clock, whose timers and `performance.now()` round differently).
 * - Timers fire in the order of their due times; timers due at the same time fire in the order
 *   they were set (an interval counts as set again each time it fires).
 * - Once cancelled, a timer never fires again; cancelling twice, or after a one-shot timer
 *   fired, does nothing.
 *
 * A real clock fires timers from the event loop, late when the process is busy; a simulated one
 * fires them when the simulation advances time. Code that needs "how much time passed" must read
 * `now()` rather than count callbacks.
 *
 * @module
 */

/** Cancels the timer it was returned for. */
export type Cancel = () => void;

/** Time and timers; see the module doc for what implementations guarantee. */
export interface Clock {
  /** Milliseconds since an arbitrary origin (fractional on a real clock); never decreases. */
  now(): number;
  /**
   * Calls `fn` once, `ms` milliseconds from now (a negative `ms` counts as 0).
   *
   * @returns A function that cancels the call.
   */
  after(ms: number, fn: () => void): Cancel;
  /**
   * Calls `fn` every `ms` milliseconds until cancelled.
   *
   * @returns A function that stops the calls.
   * @throws {RangeError} If `ms` is not a positive number.
   */
  every(ms: number, fn: () => void): Cancel;
}

/**
 * Throws unless `ms` is a positive, finite interval period.
 *
 * @param ms The period given to {@linkcode Clock.every}.
 * @throws {RangeError} If it is not.
 */
export function checkPeriod(ms: number): void {
  if (!(ms > 0 && ms < Infinity)) {
    throw new RangeError(`An interval needs a positive period in milliseconds, found ${ms}`);
  }
}

/**
 * The machine's clock: `performance.now()` and the global timers.
 *
 * @example Usage
 * ```ts
 * import { realClock } from "./clock.ts";
 *
 * const started = realClock.now();
 * const cancel = realClock.every(100, () => console.log(realClock.now() - started));
 * cancel();
 * ```
 */
export const realClock: Clock = {
  now: () => performance.now(),
  after(ms, fn) {
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  },
  every(ms, fn) {
    checkPeriod(ms);
    const timer = setInterval(fn, ms);
    return () => clearInterval(timer);
  },
};
