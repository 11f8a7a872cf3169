/**
 * The watchers and the `watch` check. They draw from their own random source, so that they change
 * none of the run's other draws.
 *
 * @module
 */

import { seededRandom } from "../../src/raft/rand.ts";
import { HistoryCompactedError, type KvEvent, RemovedError } from "../../src/node/backend.ts";
import type { Checker } from "./checks.ts";
import type { SimContext, SimNode } from "./context.ts";

/**
 * A watcher: what it watches, the node it follows (and that node's incarnation), the first index
 * it has not seen yet, the events it received, and where each stretch without a gap began (a new
 * one after a 410).
 */
type _Watcher = {
  id: number;
  filter: { key: string } | { prefix: string };
  node: SimNode | null;
  inc: number;
  stop: () => void;
  next: number | null;
  events: KvEvent[];
  stretches: { from: number; firstEvent: number }[];
  /** When it next looks at its connection (virtual ms). */
  dueAt: number;
};

/** The watchers of a run. */
export class Watchers {
  readonly #ctx: SimContext;
  readonly #checker: Checker;
  readonly #all: _Watcher[] = [];
  /** The watchers' own random source. */
  readonly #rng: () => number;
  /** The nodes' `watchHistoryEvents`. */
  readonly historyEvents: number;
  /** The nodes' `watchHistoryBytes`. */
  readonly historyBytes: number;

  /** The watchers of the run `ctx` (none until {@linkcode Watchers.start}). */
  constructor(ctx: SimContext, checker: Checker) {
    [this.#ctx, this.#checker] = [ctx, checker];
    this.#rng = seededRandom((ctx.opts.seed ^ 0x3c6ef372) >>> 0);
    // Half the runs keep a short change history, so that watchers fall out of it (410).
    this.historyEvents = this.#rng() < 0.5 ? 10_000 : 10 + Math.floor(this.#rng() * 90);
    // A third of the runs, drawn apart so that the watchers' draws stay as they were, bound it by
    // bytes: from under one change's worth (each kept alone) to about a hundred changes.
    const bytesRng = seededRandom((ctx.opts.seed ^ 0x1f83d9ab) >>> 0);
    this.historyBytes = bytesRng() < 1 / 3
      ? 64 + Math.floor(bytesRng() ** 2 * 8000)
      : 64 * 1024 * 1024;
  }

  /** Adds `count` watchers; they connect at their first look. */
  start(count: number): void {
    const r = this.#rng;
    for (let id = 1; id <= count; id++) {
      const keyed = r() < 0.5;
      const key = this.#ctx.keys[Math.floor(r() * this.#ctx.keys.length)]!;
      const prefixes = ["", "k", key];
      this.#all.push({
        id,
        filter: keyed ? { key } : { prefix: prefixes[Math.floor(r() * prefixes.length)]! },
        node: null,
        inc: 0,
        stop: () => {},
        // Half start from index 1, the others from whatever comes next.
        next: r() < 0.5 ? 1 : null,
        events: [],
        stretches: [],
        dueAt: r() * 200,
      });
    }
  }

  /**
   * After each step: every watcher whose time has come looks at its connection, and moves when
   * its node is gone, or at random. (Watchers set no timers of their own, so that they leave the
   * run's steps, and so everything the nodes do, as they would be without them.)
   */
  tend(): void {
    const now = this.#ctx.clock.now();
    const r = this.#rng;
    for (const w of this.#all) {
      if (w.dueAt > now) continue;
      w.dueAt = now + 10 + r() * 100;
      const gone = w.node === null || w.node.inc !== w.inc || w.node.node === null;
      if (gone || r() < 0.03) {
        w.stop();
        w.node = null;
        this.#connect(w);
      }
    }
  }

  #connect(w: _Watcher): void {
    const live = this.#ctx.nodes.filter((n) => n.node !== null && n.clock?.paused !== true);
    if (live.length === 0) return;
    const n = live[Math.floor(this.#rng() * live.length)]!;
    const node = n.node!;
    const inc = n.inc;
    if (w.stretches.length > 0) this.#ctx.stats.watchReconnects++;
    let from = w.next;
    if (from !== null && w.events.length > 0 && this.#ctx.opts.watchFault !== undefined) {
      from += this.#ctx.opts.watchFault === "repeat" ? -1 : 1;
    }
    const sink = {
      event: (e: KvEvent) => {
        if (n.inc !== inc || w.node !== n) return;
        if (!_matches(w, e.k)) return;
        w.events.push(e);
        w.next = e.index + 1;
        this.#ctx.stats.watchEvents++;
      },
      close: (reason: string) => {
        if (w.node !== n) return;
        this.#ctx.note(`watcher w${w.id} on ${n.id} closed: ${reason}`);
        w.node = null;
      },
    };
    try {
      const history = node.watchHistory();
      if (from === null) from = node.inspect().applied + 1;
      if (w.stretches.length === 0) w.stretches.push({ from, firstEvent: 0 });
      w.next = from;
      [w.node, w.inc] = [n, inc];
      w.stop = history.subscribe(from, sink);
      this.#ctx.note(`watcher w${w.id} follows ${n.id} from ${from}`);
    } catch (e) {
      w.node = null;
      if (e instanceof RemovedError) {
        // The watcher tries another node at its next look.
        this.#ctx.stats.removedWatchRefusals++;
        this.#ctx.note(`watcher w${w.id} on ${n.id}: refused, the node was removed`);
        return;
      }
      if (!(e instanceof HistoryCompactedError)) throw e;
      // The client re-reads the state and watches on from the oldest index (a new stretch).
      this.#ctx.stats.watchResyncs++;
      this.#ctx.note(
        `watcher w${w.id} on ${n.id}: from ${from} is gone, resyncs at ${e.oldestIndex}`,
      );
      w.next = e.oldestIndex;
      w.stretches.push({ from: e.oldestIndex, firstEvent: w.events.length });
    }
  }

  /**
   * Within each stretch a watcher saw, for every index from the stretch's start to the last index
   * it is known to have covered, exactly the committed changes of its keys there (in key order
   * within an index), and the indexes in order.
   */
  check(): void {
    for (const w of this.#all) {
      const what = `watcher w${w.id} of ${JSON.stringify(w.filter)}`;
      for (let j = 0; j < w.stretches.length; j++) {
        const { from, firstEvent } = w.stretches[j]!;
        const end = w.stretches[j + 1]?.firstEvent ?? w.events.length;
        const got = w.events.slice(firstEvent, end);
        // Covered: up to its last event; the last stretch up to what its live node applied.
        let last = got.at(-1)?.index ?? from - 1;
        const live = w.node !== null && w.node.inc === w.inc && w.node.node !== null;
        if (j === w.stretches.length - 1 && live) {
          last = Math.max(last, w.node!.node!.inspect().applied);
        }
        const want: string[] = [];
        for (let i = from; i <= Math.min(last, this.#checker.refIndex); i++) {
          const changes = this.#checker.refChanges[i] ?? [];
          for (const c of changes) if (_matches(w, c.k)) want.push(`${i} ${c.type} ${c.k}=${c.v}`);
        }
        const seen = [...got].sort((a, b) => a.index - b.index || (a.k < b.k ? -1 : 1))
          .map((e) => `${e.index} ${e.type} ${e.k}=${e.v}`);
        for (let i = 1; i < got.length; i++) {
          if (got[i]!.index < got[i - 1]!.index) {
            this.#ctx.violation(
              "watch",
              `${what} got index ${got[i]!.index} after ${got[i - 1]!.index}`,
            );
          }
        }
        if (JSON.stringify(seen) !== JSON.stringify(want)) {
          const missing = want.filter((x) => !seen.includes(x)).slice(0, 5);
          const extra = seen.filter((x, i) => seen.indexOf(x) !== i || !want.includes(x)).slice(
            0,
            5,
          );
          this.#ctx.violation(
            "watch",
            `${what}, stretch ${j} from ${from} to ${last}: got ${seen.length} events, the ` +
              `committed log gives ${want.length}; missing ${JSON.stringify(missing)}, ` +
              `extra or repeated ${JSON.stringify(extra)}`,
          );
        }
      }
    }
  }
}

/** Whether key `k` is one `w` watches. */
function _matches(w: _Watcher, k: string): boolean {
  return "key" in w.filter ? k === w.filter.key : k.startsWith(w.filter.prefix);
}
