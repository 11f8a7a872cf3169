/**
 * The blocking readers (`GET /v1/data/{key}?index=N&wait=D`, through the API's own
 * `blockingWait`) and the `blocking-read` check. Like the watchers, they draw from their own random
 * source, set no timer on the run's clock (their waits are timed by a clock of their own, moved on
 * after each step) and send nothing to the nodes, so the run's steps stay as they would be without
 * them. A reader waits on a live node for a key to change after an index (mostly the node's
 * applied index, as the `X-Raftkv-Index` of an answer just read; sometimes an older one), gives up
 * now and then, and loses its connection when its node crashes.
 *
 * The check, once the run is over: a wait that ended on a change was woken by a committed change
 * of its key at an index above the one it asked after; a wait that timed out did so while its node
 * had applied no committed change of its key after that index (no lost wake-up); a wait that ended
 * otherwise did so at once (an index older than the history, or no wait), or because its node
 * stopped or installed a snapshot. The read a client makes after the wait is the plain read the
 * clients already run.
 *
 * @module
 */

import { seededRandom } from "../../src/raft/rand.ts";
import type { EventHistory, EventSink, KvEvent } from "../../src/node/backend.ts";
import type { Clock } from "../../src/node/clock.ts";
import type { RaftNode } from "../../src/node/raft_node.ts";
import { ApiError } from "../../src/api/errors.ts";
import { blockingWait } from "../../src/api/watch.ts";
import { settle, SimClock } from "../sim_clock.ts";
import type { Checker } from "./checks.ts";
import type { SimContext, SimNode } from "./context.ts";
import type { SimulationStats } from "./simulator.ts";

/** How a wait ended. */
type _End = "change" | "timeout" | "at-once" | "closed" | "aborted" | "refused";

/** The counter of each end. */
const _COUNTERS = {
  "change": "blockingChanges",
  "timeout": "blockingTimeouts",
  "at-once": "blockingAtOnce",
  "closed": "blockingClosed",
  "aborted": "blockingAborted",
  "refused": "blockingRefused",
} as const satisfies Record<_End, keyof SimulationStats>;

/** One blocking read, from its start to its end. */
type _Wait = {
  reader: number;
  node: SimNode;
  inc: number;
  key: string;
  /** The index the reader last saw: it wants changes after it. */
  index: number;
  /** The index it sent (the same, but under a `waitFault`). */
  asked: number;
  waitMs: number;
  /** The history's oldest index when the wait began. */
  oldest: number;
  abort: AbortController;
  /** The first change of `key` the node handed the wait. */
  event?: KvEvent;
  closed?: string;
  timedOut?: boolean;
  aborted?: boolean;
  /** The node's applied index when the wait timed out. */
  applied?: number;
  end?: _End;
};

/** The blocking readers of a run. */
export class Waiters {
  readonly #ctx: SimContext;
  readonly #checker: Checker;
  readonly #rng: () => number;
  /** Times the waits (moved on to the run's time after each step). */
  readonly #clock = new SimClock();
  /** When each reader next starts a wait (virtual ms); Infinity while one is under way. */
  readonly #due: number[] = [];
  readonly #waits: _Wait[] = [];
  /** The waits under way. */
  readonly #active = new Set<_Wait>();

  /** The blocking readers of the run `ctx` (none until {@linkcode Waiters.start}). */
  constructor(ctx: SimContext, checker: Checker) {
    [this.#ctx, this.#checker] = [ctx, checker];
    this.#rng = seededRandom((ctx.opts.seed ^ 0x5be0cd19) >>> 0);
  }

  /** Adds `count` readers; each starts its first wait within 200 ms. */
  start(count: number): void {
    for (let i = 0; i < count; i++) this.#due.push(this.#rng() * 200);
  }

  /**
   * After each step: fires the waits' timers that are due, drops the connections of waits whose
   * node crashed, and starts a wait for every reader whose time has come.
   */
  tend(): void {
    const now = this.#ctx.clock.now();
    this.#clock.runUntil(now);
    for (const w of this.#active) if (!w.aborted && w.node.inc !== w.inc) this.#abort(w);
    for (let reader = 0; reader < this.#due.length; reader++) {
      if (this.#due[reader]! > now || this.#ctx.phase !== "run") continue;
      this.#due[reader] = Infinity;
      this.#begin(reader + 1);
    }
  }

  /**
   * Ends the waits still under way (the run is over): each aborted, each must then end (a wait
   * that outlives its request's abort fails the `blocking-read` check). Their ends are counted
   * before the run's counters are read.
   */
  async stopAll(): Promise<void> {
    for (const w of this.#active) this.#abort(w);
    for (let turn = 0; turn < 50 && this.#active.size > 0; turn++) await settle();
    for (const w of this.#active) {
      this.#ctx.violation("blocking-read", `${this.#what(w)} did not end when it was aborted`);
    }
  }

  #abort(w: _Wait): void {
    w.aborted = true;
    w.abort.abort();
  }

  #begin(reader: number): void {
    const ctx = this.#ctx;
    const r = this.#rng;
    const live = ctx.nodes.filter((n) => n.node !== null && n.clock?.paused !== true);
    const again = () => this.#due[reader - 1] = ctx.clock.now() + 20 + r() * 280;
    if (live.length === 0) return void again();
    const n = live[Math.floor(r() * live.length)]!;
    const node = n.node!;
    const key = ctx.keys[Math.floor(r() * ctx.keys.length)]!;
    const applied = node.inspect().applied;
    const pick = r();
    // Mostly the index of an answer just read; sometimes an older one; sometimes none yet.
    const index = pick < 0.6
      ? applied
      : pick < 0.85
      ? Math.max(0, applied - 1 - Math.floor(r() * 20))
      : 0;
    const fault = ctx.opts.waitFault;
    const asked = fault === "early" ? Math.max(0, index - 1) : fault === "late" ? index + 1 : index;
    const waitMs = r() < 0.1 ? 0 : 20 + Math.floor(r() * 400);
    const giveUpAfter = r() < 0.1 ? r() * waitMs : null;
    const w: _Wait = {
      reader,
      node: n,
      inc: n.inc,
      key,
      index,
      asked,
      waitMs,
      oldest: 0,
      abort: new AbortController(),
    };
    this.#waits.push(w);
    this.#active.add(w);
    ctx.stats.blockingReads++;
    // The query made first (the same URL as setting each parameter on it, parsed once).
    const query = new URLSearchParams({ index: String(asked), wait: `${waitMs}ms` });
    const url = new URL(`http://${n.id}.sim/v1/data/${encodeURIComponent(key)}?${query}`);
    const cancelGiveUp = giveUpAfter === null
      ? () => {}
      : this.#clock.after(giveUpAfter, () => this.#abort(w));
    blockingWait(
      { backend: this.#observed(w, node), retryAfter: {}, clock: this.#timer(w, node) },
      new Request(url, { signal: w.abort.signal }),
      url,
      key,
    ).then(
      () => this.#ended(w),
      (e) => {
        if (!(e instanceof ApiError)) throw e;
        // The node is stopping or was removed: the reader tries again, elsewhere perhaps.
        this.#end(w, "refused");
      },
    ).catch((e) => ctx.caught(e, ` (blocking reader ${reader})`)).finally(() => {
      this.#active.delete(w);
      cancelGiveUp();
      again();
    });
  }

  /** The node, with its change history seen through what it hands `w`. */
  #observed(w: _Wait, node: RaftNode): RaftNode {
    const watch = (): EventHistory => {
      const history = node.watchHistory();
      w.oldest = history.oldestIndex;
      const seen: Pick<EventHistory, "oldestIndex" | "subscribe"> = {
        get oldestIndex() {
          return history.oldestIndex;
        },
        subscribe: (from: number | null, sink: EventSink) =>
          history.subscribe(from, {
            event: (e) => {
              if (e.k === w.key) w.event ??= e;
              sink.event(e);
            },
            close: (reason) => {
              w.closed ??= reason;
              sink.close(reason);
            },
          }),
      };
      return seen as EventHistory;
    };
    // A proxy, not an object with the node as its prototype: V8 gives an object made a
    // prototype a hidden class of its own, and the node's code, run on many such nodes (a node
    // per start), would meet many classes at its property accesses and run slower throughout.
    return new Proxy(node, {
      get: (target, prop) => {
        if (prop === "watchHistory") return watch;
        const value = Reflect.get(target, prop);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  }

  /** The readers' clock, noting when it ends `w`'s wait (and what its node had applied then). */
  #timer(w: _Wait, node: RaftNode): Clock {
    const clock = this.#clock;
    return {
      now: () => clock.now(),
      every: (ms, fn) => clock.every(ms, fn),
      after: (ms, fn) =>
        clock.after(ms, () => {
          w.timedOut = true;
          w.applied = node.inspect().applied;
          fn();
        }),
    };
  }

  /** Records how `w` ended, from what was seen while it waited. */
  #ended(w: _Wait): void {
    const end: _End | null = w.event !== undefined
      ? "change"
      : w.timedOut
      ? "timeout"
      : w.aborted
      ? "aborted"
      : w.closed !== undefined
      ? "closed"
      : w.waitMs === 0 || w.asked + 1 < w.oldest
      ? "at-once"
      : null;
    if (end === null) {
      this.#ctx.violation("blocking-read", `${this.#what(w)} ended with no change, timeout or end`);
    } else this.#end(w, end);
  }

  #end(w: _Wait, end: _End): void {
    w.end = end;
    this.#ctx.stats[_COUNTERS[end]]++;
  }

  /**
   * Every wait that ended on a change was woken by a committed change of its key after the index
   * it asked after; every one that timed out had no such change applied on its node.
   */
  check(): void {
    const { refChanges, refIndex } = this.#checker;
    for (const w of this.#waits) {
      if (w.end === "change" && w.event !== undefined) {
        const e = w.event;
        const known = e.index <= refIndex &&
          (refChanges[e.index] ?? []).some((c) => c.k === e.k && c.type === e.type && c.v === e.v);
        if (e.index <= w.index || !known) {
          this.#ctx.violation(
            "blocking-read",
            `${this.#what(w)} was woken by ${e.type} ${e.k}=${e.v} at ${e.index}, ` +
              (known ? `not a change after ${w.index}` : "not a committed change there"),
          );
        }
      } else if (w.end === "timeout") {
        for (let i = w.index + 1; i <= Math.min(w.applied!, refIndex); i++) {
          const c = (refChanges[i] ?? []).find((c) => c.k === w.key);
          if (c === undefined) continue;
          this.#ctx.violation(
            "blocking-read",
            `${this.#what(w)} timed out, though its node had applied ${c.type} ${c.k}=${c.v} at ` +
              `${i} (applied ${w.applied})`,
          );
          break;
        }
      }
    }
  }

  #what(w: _Wait): string {
    return `blocking reader ${w.reader}'s wait on ${w.node.id} for ${w.key} after ${w.index} ` +
      `(wait ${w.waitMs} ms)`;
  }
}
