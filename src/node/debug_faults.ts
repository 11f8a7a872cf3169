/**
 * Faults a node can be started with on purpose, for tests only: they prove that the tests and
 * `raftkv verify` catch the bugs they stand for. None is ever on by default, and a node with one on
 * says so loudly in its log.
 *
 * @module
 */

import type { Consistency, KvBackend } from "./backend.ts";

/** Where a fault announces itself. */
export interface FaultLogger {
  /** A warning line. */
  warn(...data: unknown[]): void;
}

/** Options of {@linkcode applyDebugFaults}. */
export interface DebugFaults {
  /**
   * Followers answer reads from their own state without ReadIndex: the value of
   * `RAFTKV_DEBUG_STALE_READS`, on when it is `"1"`. Default off.
   */
  staleReads?: string | undefined;
  /** How often a node with a fault on repeats its warning while the fault acts, in ms. Default 10000. */
  reminderMs?: number;
}

/**
 * Returns `backend` with the faults `faults` turns on, or `backend` itself when none is on.
 *
 * `staleReads`: while this node is not the leader, every read of a key or a range (`linearizable`
 * and `lease` included) is answered from its own applied state, as a `stale` read would be, instead of being
 * forwarded to the leader for ReadIndex. Such reads are not linearizable as soon as the node lags
 * behind the leader (cut off from it, or just slow to apply). Every other method is the backend's
 * own.
 *
 * @example Usage
 * ```ts ignore
 * const api = createApiHandler(applyDebugFaults(node, { staleReads: "1" }, log), options);
 * ```
 *
 * @param backend The node.
 * @param faults Which faults to turn on.
 * @param log Where to announce them.
 * @returns The backend to serve the API with.
 */
export function applyDebugFaults<B extends KvBackend>(
  backend: B,
  faults: DebugFaults,
  log: FaultLogger,
): B {
  if (faults.staleReads !== "1") return backend;
  const what = "DEBUG FAULT RAFTKV_DEBUG_STALE_READS=1: this node answers reads as a follower " +
    "from its local state without ReadIndex; its reads are NOT linearizable. For tests only.";
  log.warn(what);
  const reminderMs = faults.reminderMs ?? 10_000;
  let reminded = performance.now();
  /** The consistency a read is served with: stale on a follower (saying so now and then). */
  const weaken = (consistency: Consistency): Consistency => {
    if (consistency === "stale" || backend.status().role === "leader") return consistency;
    if (performance.now() - reminded >= reminderMs) {
      reminded = performance.now();
      log.warn(what);
    }
    return "stale";
  };
  const read: KvBackend["read"] = (key, consistency, signal) =>
    backend.read(key, weaken(consistency), signal);
  const range: KvBackend["range"] = (query, consistency, signal) =>
    backend.range(query, weaken(consistency), signal);
  // A proxy keeps every other method, present and future, and calls it on the backend itself
  // (whose private fields a proxy receiver could not reach).
  return new Proxy(backend, {
    get(target, property) {
      if (property === "read") return read;
      if (property === "range") return range;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
