/**
 * Deadlines of API requests: {@linkcode startDeadline} bounds a request by a time limit and by
 * its client staying connected, and {@linkcode raceAbort} makes any operation give up when such a
 * deadline ends, even one that ignores its signal.
 *
 * @module
 */

/**
 * The deadline of one request: the signal that aborts when it ends, and why it ended. Dispose of
 * it (`using`) once the answer is ready.
 */
export interface Deadline extends Disposable {
  /** Aborts when the time runs out or the client goes away, whichever comes first. */
  readonly signal: AbortSignal;
  /** The time limit, in milliseconds. */
  readonly ms: number;
  /** Whether the time limit passed. */
  timedOut(): boolean;
  /** Whether the client went away (before the time limit passed). */
  clientGone(): boolean;
}

/**
 * Starts a deadline of `ms` that also ends when the client goes away. Dispose of it once the
 * answer is ready: that stops the timer and stops listening to the client's signal.
 *
 * @example Usage
 * ```ts
 * import { startDeadline } from "./deadline.ts";
 *
 * using deadline = startDeadline(5000, new AbortController().signal);
 * console.log(deadline.signal.aborted, deadline.timedOut()); // false false
 * ```
 *
 * @param ms The time limit in milliseconds.
 * @param clientSignal The request's signal, which aborts when the client goes away.
 * @returns The running deadline.
 */
export function startDeadline(ms: number, clientSignal: AbortSignal): Deadline {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new DOMException(`timed out after ${ms}ms`, "TimeoutError"));
  }, ms);
  const onClientGone = () => controller.abort(clientSignal.reason);
  if (clientSignal.aborted) onClientGone();
  else clientSignal.addEventListener("abort", onClientGone, { once: true });
  return {
    signal: controller.signal,
    ms,
    timedOut: () => timedOut,
    clientGone: () => !timedOut && clientSignal.aborted,
    [Symbol.dispose]() {
      clearTimeout(timer);
      clientSignal.removeEventListener("abort", onClientGone);
    },
  };
}

/**
 * Runs `op(signal)` but settles as soon as `signal` aborts, even if `op` ignores the signal (a
 * late failure of `op` is then dropped).
 *
 * @example Usage
 * ```ts
 * import { raceAbort } from "./deadline.ts";
 *
 * const never = new Promise<string>(() => {});
 * await raceAbort(() => never, AbortSignal.timeout(10)).catch((err) => console.log(err.name));
 * // TimeoutError
 * ```
 *
 * @param op The operation; it is given `signal` and should honour it.
 * @param signal The signal that ends the wait.
 * @returns What `op` resolved with, if it settled first.
 * @throws {unknown} What `op` rejected with, or `signal.reason` once the signal aborts.
 */
export async function raceAbort<T>(
  op: (signal: AbortSignal) => Promise<T>,
  signal: AbortSignal,
): Promise<T> {
  signal.throwIfAborted();
  const running = (async () => await op(signal))();
  running.catch(() => {});
  let onAbort = (): void => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([running, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
