/**
 * The watchers and the `watch` check. They draw from their own random source, so that they change
 * none of the run's other draws.
 *
 * @module
 */

import { seededRandom } from "../../src/raft/rand.ts";
import type { KvEvent } from "../../src/node/backend.ts";
import { ApiError } from "../../src/api/errors.ts";
import { ApiLimits } from "../../src/api/limits.ts";
import { watchRoute } from "../../src/api/watch.ts";
import { readSse } from "../../src/util/sse.ts";
import type { Checker } from "./checks.ts";
import type { SimContext, SimNode } from "./context.ts";

/**
 * A watcher: what it watches, the node it follows (and that node's incarnation), the first index
 * it has not wholly seen yet and the id of the last event it took (where it goes on from, as
 * `Last-Event-ID`), the events it received, and where each stretch without a gap began (a new one
 * after a 410).
 */
type _Watcher = {
  id: number;
  filter: { key: string } | { prefix: string };
  node: SimNode | null;
  inc: number;
  stop: () => void;
  next: number | null;
  cursor: string | null;
  events: KvEvent[];
  /** `cursor`: the id of its last event when it ended (a new stretch began), if any. */
  stretches: { from: number; firstEvent: number; cursor?: string | null }[];
  /** When it next looks at its connection (virtual ms). */
  dueAt: number;
  /** Its streams' `watchBufferEvents`: small ones are cut off when a node applies a batch. */
  buffer: number;
  /** Counts its connections: what an ended one still had buffered is not taken. */
  conn: number;
};

/** The watchers of a run. */
export class Watchers {
  readonly #ctx: SimContext;
  readonly #checker: Checker;
  readonly #all: _Watcher[] = [];
  /** The watchers' own random source. */
  readonly #rng: () => number;
  /** The watch streams' budget (one for every node: a limit never reached). */
  readonly #limits = new ApiLimits({
    maxInflightRequests: 1,
    maxInflightBytes: 1,
    maxBodyBytes: 1,
    maxForwardedRequests: 1,
    maxConcurrentBackups: 1,
    backupTimeoutMs: 1,
    maxWatchers: 1_000_000,
  });
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
        cursor: null,
        events: [],
        stretches: [],
        dueAt: r() * 200,
        buffer: r() < 1 / 3 ? 1 + Math.floor(r() * 3) : 1024,
        conn: 0,
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

  /**
   * Whether a watcher on a live node has yet to receive a committed change of its keys that its
   * node applied (its stream hands events on a few turns after the node applies them).
   */
  pending(): boolean {
    return this.#all.some((w) => {
      const n = w.node;
      if (n === null || n.inc !== w.inc || n.node === null || w.next === null) return false;
      const last = Math.min(n.node.inspect().applied, this.#checker.refIndex);
      for (let i = w.next; i <= last; i++) {
        if ((this.#checker.refChanges[i] ?? []).some((c) => _matches(w, c.k))) return true;
      }
      return false;
    });
  }

  /** Ends every watcher's stream (the run is over). */
  stopAll(): void {
    for (const w of this.#all) w.stop();
  }

  #connect(w: _Watcher): void {
    const live = this.#ctx.nodes.filter((n) => n.node !== null && n.clock?.paused !== true);
    if (live.length === 0) return;
    const n = live[Math.floor(this.#rng() * live.length)]!;
    const node = n.node!;
    const inc = n.inc;
    if (w.stretches.length > 0) this.#ctx.stats.watchReconnects++;
    let from = w.next;
    // After the last event taken, by its id (exact inside one entry's changes too); a guard fault
    // goes on from an index one off instead.
    const fault = this.#ctx.opts.watchFault;
    const resume = w.cursor !== null && fault === undefined ? w.cursor : null;
    if (from !== null && w.events.length > 0 && fault !== undefined) {
      if (fault === "index") from += w.cursor?.includes(":") ? 1 : 0;
      else from += fault === "repeat" ? -1 : 1;
    }
    // `GET /v1/watch` through the API's own route: its buffer, its cut-off and its final event.
    // The query made first (the same URL as setting each parameter on it, parsed once).
    const query = new URLSearchParams();
    query.set("key" in w.filter ? "key" : "prefix", Object.values(w.filter)[0]!);
    if (from !== null && resume === null) query.set("from", String(from));
    const url = new URL(`http://${n.id}.sim/v1/watch?${query}`);
    if (resume?.includes(":")) this.#ctx.stats.watchMidEntryResumes++;
    let res: Response;
    try {
      res = watchRoute(
        {
          backend: node,
          maxKeyBytes: 1024,
          watchHeartbeatMs: 3_600_000, // never within a run: no real timer fires
          watchBufferEvents: w.buffer,
          retryAfter: {},
          limits: this.#limits,
        },
        new Request(url, resume === null ? {} : { headers: { "last-event-id": resume } }),
        url,
      );
    } catch (e) {
      w.node = null;
      if (!(e instanceof ApiError)) throw e;
      if (e.extra.code === "removed") {
        // The watcher tries another node at its next look.
        this.#ctx.stats.removedWatchRefusals++;
        this.#ctx.note(`watcher w${w.id} on ${n.id}: refused, the node was removed`);
        return;
      }
      if (e.status === 503) {
        // The node is stopping: the watcher tries another node at its next look.
        this.#ctx.note(`watcher w${w.id} on ${n.id}: refused, the node is stopping`);
        return;
      }
      if (e.status !== 410) throw e;
      // The client re-reads the state and watches on from the oldest index (a new stretch).
      const oldest = e.extra.oldest_index as number;
      this.#ctx.stats.watchResyncs++;
      this.#ctx.note(`watcher w${w.id} on ${n.id}: from ${from} is gone, resyncs at ${oldest}`);
      w.next = oldest;
      // (A watcher whose very first look asked from index 1 has no stretch yet to end.)
      const ended = w.stretches.at(-1);
      if (ended !== undefined) ended.cursor = w.cursor;
      w.cursor = null;
      w.stretches.push({ from: oldest, firstEvent: w.events.length });
      return;
    }
    // Without `from` it starts after the applied index (what the handler's X-Raftkv-Index says).
    from ??= node.status().applied_index + 1;
    if (w.stretches.length === 0) w.stretches.push({ from, firstEvent: 0 });
    w.next = from;
    [w.node, w.inc] = [n, inc];
    this.#ctx.note(`watcher w${w.id} follows ${n.id} from ${from}`);
    const reader = res.body!.getReader();
    w.stop = () => void reader.cancel().catch(() => {});
    const body = new ReadableStream<Uint8Array>({
      pull: async (c) => {
        const r = await reader.read();
        if (r.done) c.close();
        else c.enqueue(r.value);
      },
    });
    // One connection in five breaks after a few events (anywhere: inside one entry's changes too).
    const breakAfter = this.#rng() < 0.2 ? 1 + Math.floor(this.#rng() * 20) : Infinity;
    this.#read(w, ++w.conn, body, breakAfter).catch((e) =>
      this.#ctx.caught(e, ` (watcher w${w.id})`)
    );
  }

  /** Takes a stream's events and its final event until it ends or the watcher moves on. */
  async #read(
    w: _Watcher,
    conn: number,
    body: ReadableStream<Uint8Array>,
    breakAfter: number,
  ) {
    const [n, inc] = [w.node!, w.inc];
    let taken = 0;
    for await (const m of readSse(body)) {
      if (w.conn !== conn || n.inc !== inc || w.node !== n) return;
      const data = JSON.parse(m.data);
      if (m.event === "error") {
        // The node ended the stream (cut off, stopping, a snapshot installed): go on after the
        // last index it says it covered, on another connection.
        this.#ctx.note(`watcher w${w.id} on ${n.id} closed: ${data.error}`);
        // `last_id` is `N:j` when it resumed inside entry N and N did not come (`last_index` is
        // then N - 1): it keeps that place.
        w.cursor = String(data.last_id);
        w.next = data.last_index + 1;
        if (data.error.includes("fell more than")) this.#ctx.stats.watchCutOffs++;
        w.node = null; // it covers nothing past last_index
        return;
      }
      const e = data as KvEvent;
      w.events.push(e);
      // `N:j`: more changes of entry N may follow.
      w.cursor = m.id ?? String(e.index);
      w.next = w.cursor.includes(":") ? e.index : e.index + 1;
      this.#ctx.stats.watchEvents++;
      // A connection breaks after its few events, or, a time in four, inside one entry's changes
      // (the worst place): what was sent after this event is lost with it.
      if (++taken >= breakAfter || (w.cursor.includes(":") && this.#rng() < 0.25)) {
        this.#ctx.stats.watchBreaks++;
        w.stop();
        w.node = null;
        return;
      }
    }
    if (w.conn === conn && w.node === n && n.inc === inc) w.node = null;
  }

  /**
   * Within each stretch a watcher saw, for every index from the stretch's start to the last index
   * it is known to have covered, exactly the committed changes of its keys there (in key order
   * within an index), and the indexes in order. A stretch that ended inside an entry's changes
   * (its last id `N:j`) covers only what it got of N, unless its live node has applied N.
   */
  check(): void {
    for (const w of this.#all) {
      const what = `watcher w${w.id} of ${JSON.stringify(w.filter)}`;
      for (let j = 0; j < w.stretches.length; j++) {
        const { from, firstEvent } = w.stretches[j]!;
        const end = w.stretches[j + 1]?.firstEvent ?? w.events.length;
        const got = w.events.slice(firstEvent, end);
        // Covered: up to its last event; the last stretch up to what its live node applied.
        const final = j === w.stretches.length - 1;
        const live = final && w.node !== null && w.node.inc === w.inc && w.node.node !== null;
        const applied = live ? w.node!.node!.inspect().applied : 0;
        const last = Math.max(got.at(-1)?.index ?? from - 1, applied);
        // Ended on an id `N:j`: the rest of N was not taken (refused with a 410, the run ended, or
        // the live node it resumed on has not applied N yet), so only what it got of N counts.
        const cursor = final ? w.cursor : w.stretches[j]!.cursor;
        const cut = cursor?.includes(":") ? Number(cursor.split(":")[0]) : null;
        const partial = cut !== null && applied < cut;
        const want: string[] = [];
        for (let i = from; i <= Math.min(last, this.#checker.refIndex); i++) {
          const changes = this.#checker.refChanges[i] ?? [];
          for (const c of changes) {
            if (!_matches(w, c.k)) continue;
            if (partial && i === cut && !got.some((e) => e.index === i && e.k === c.k)) continue;
            want.push(`${i} ${c.type} ${c.k}=${c.v}`);
          }
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
