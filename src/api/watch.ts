/**
 * Watches and blocking reads: being told about changes instead of polling.
 *
 * `GET /v1/watch?key=K` (or `?prefix=P`) `&from=N` streams the changes of a key, or of every key
 * under a prefix, as Server-Sent Events (`text/event-stream`: the browser's `EventSource`,
 * `curl -N`). Any node serves it from its own applied state (followers too), out of the change
 * history its state machine keeps (see `events.ts`). Each change is one event:
 *
 * ```text
 * id: 42
 * data: {"index":42,"type":"put","k":"a","v":"1","mod_index":42}
 * ```
 *
 * `type` is `put`, `delete` or `expire` (a key deleted because its lease ended); `v` is null but
 * for a put. One entry that changes several keys (a range delete, a transaction) gives several
 * events, in the order the entry changed them, sent together. Every node applies the same entries,
 * so every node sends the same events in the same order.
 *
 * The `id:` of an event says how far the stream got: `N` once every change of entry `N` for this
 * watch was sent (so the only or last event of an entry), `N:j` after the first `j` of them (the
 * earlier events of an entry with several). A stream can break between two events of one entry,
 * so the id, not the index in the data, is where to go on from.
 *
 * - `from=N`: start with the changes at index `N`; without it, with the next index to be
 *   applied (the answer's `X-Raftkv-Index` header holds the applied index it started after).
 * - `Last-Event-ID: <id>` (what `EventSource` sends when it reconnects; any client may send it):
 *   go on after that event: `N` means `from=N+1`, `N:j` the changes of entry `N` after its first
 *   `j`. A watcher that reconnects, to any node, with the id of the last event it took misses
 *   nothing and sees nothing twice. `from` wins over the header.
 * - A `from` older than the history: 410 `{"error","oldest_index"}`: read the current state and
 *   watch from the index of that read + 1.
 * - A comment line (`: heartbeat`) goes out every `watchHeartbeatMs`, so that proxies keep the
 *   stream open and a client can tell a quiet stream from a dead one.
 * - At most `maxWatchers` streams are open on one node at once (`--max-watchers`): one more is
 *   answered 429 with `Retry-After`, nothing streamed.
 * - The backlog a watch asked for with `from` (the changes the history held when it started) is
 *   read from the history as the client takes it, whole entries of about a chunk
 *   ({@linkcode WATCH_CHUNK_CHARS}) at a time: a stream holds none of it beyond the history, so
 *   streams that do not read cannot keep windows of the history alive after the history drops
 *   them. Once the history drops an index of the backlog that the client has not taken yet (it
 *   reads slower than the node's changes turn the history over, or a snapshot replaced the
 *   history), the stream is cut off at once: a final `event: error` after what it was handed
 *   (see `maxWatchBytes` below for its ids), and a watch from there is answered 410, as it would
 *   have been had the client asked for it then.
 * - A watcher that does not read fast enough has at most `watchBufferEvents` events, and at most
 *   `watchBufferBytes` bytes of them (an event counting as in the history: `eventBytes`),
 *   waiting for it beyond its backlog: one more entry past either and it gets a final
 *   `event: error` whose data says so, with the last index it covered and the id to go on after
 *   (`last_index`, `last_id`), and the stream ends. The same final event ends the stream when
 *   the node stops, or when it installs a snapshot (the changes the snapshot holds are not in its
 *   history).
 * - All the watchers of a node together have at most `maxWatchBytes` bytes of events waiting,
 *   each event counted once however many wait for it (a cut-off stream's count until it is read
 *   or dropped): past it, once the entry is recorded, the stream with the most waiting is cut
 *   off at once, its waiting events dropped, with a final event naming what it was handed last
 *   (`N:j` when that was inside entry N), then the next, until they hold less.
 * - What a stream was handed, the server takes into its own buffers whether or not the client
 *   reads (measured: an HTTP/2 stream whose window stays shut takes about 64 KiB plus one or two
 *   chunks, an HTTP/1.1 connection what the socket takes, MiBs, plus a chunk or two): those bytes
 *   are not seen by the bounds above. So an event of at least {@linkcode SHARED_EVENT_CHARS}
 *   characters is encoded once, and the same bytes are handed to every stream, alone: the
 *   server's buffers of a thousand streams hold references to one copy of it, not a thousand.
 *   Smaller events are copied into each stream's chunks (of at most
 *   {@linkcode WATCH_CHUNK_CHARS}), as their ids differ.
 *
 * `GET /v1/data/{key}?index=N&wait=30s` is a blocking read (as Consul's): it answers once the
 * key has changed at an index above `N` (at once when it already has, or when `N` is older than
 * the history), or when the wait ends, whichever is first, then reads as a plain read does, with
 * its consistency (a linearizable read still goes through the leader). It also answers early,
 * with the key unchanged, when the node stops or installs a snapshot (its history starts anew);
 * the client reads the answer's `X-Raftkv-Index` and waits again. `wait` defaults to and is
 * capped at {@linkcode MAX_BLOCKING_WAIT_MS} (5 minutes). Pass the answer's `X-Raftkv-Index` as
 * the next `index`.
 *
 * @module
 */

import {
  eventBytes,
  type EventHistory,
  type EventSink,
  HistoryCompactedError,
  type KvBackend,
  type KvEvent,
  RemovedError,
  StoppingError,
} from "../node/backend.ts";
import { type Clock, realClock } from "../node/clock.ts";
import { WWW_AUTHENTICATE } from "./auth.ts";
import { ApiError, quote, removedError } from "./errors.ts";
import type { ApiLimits } from "./limits.ts";
import { checkKey } from "./validate.ts";

/** The longest wait of a blocking read (`?wait=`), in milliseconds: 5 minutes. */
export const MAX_BLOCKING_WAIT_MS = 5 * 60_000;

/** What a watch needs from the handler. */
export interface WatchContext {
  /** The node. */
  backend: KvBackend;
  /** Largest key in UTF-8 bytes. */
  maxKeyBytes: number;
  /** Interval of the heartbeat comments, in milliseconds. */
  watchHeartbeatMs: number;
  /** Most events waiting for one watcher (beyond its backlog) before it is cut off. */
  watchBufferEvents: number;
  /**
   * Most bytes of events waiting for one watcher (beyond its backlog) before it is cut off, an
   * event counting as in the history (see `eventBytes`).
   *
   * @default {DEFAULT_WATCH_BUFFER_BYTES}
   */
  watchBufferBytes?: number;
  /**
   * Most bytes of events waiting for all the node's watchers together (each event counted once
   * however many wait for it); past it the watcher with the most waiting is cut off, then the
   * next, until they hold less.
   *
   * @default {DEFAULT_MAX_WATCH_BYTES}
   */
  maxWatchBytes?: number;
  /** `Retry-After` for 429 and 503 answers. */
  retryAfter: Record<string, string>;
  /** The node's budgets: watch streams open count against `maxWatchers`. */
  limits: ApiLimits;
}

const _encoder = new TextEncoder();

/**
 * The most text one read of a watch stream makes at once (an event larger than it goes alone),
 * and about what it reads of its backlog from the history at once: a watcher that asked for a
 * large backlog, and does not read it, holds a chunk of it, not the backlog.
 */
export const WATCH_CHUNK_CHARS = 64 * 1024;

/** Default of {@linkcode WatchContext.watchBufferBytes}: 16 MiB. */
export const DEFAULT_WATCH_BUFFER_BYTES = 16 * 1024 * 1024;

/** Default of {@linkcode WatchContext.maxWatchBytes}: 256 MiB. */
export const DEFAULT_MAX_WATCH_BYTES = 256 * 1024 * 1024;

/**
 * An event whose key and value have at least this many characters is a large one: its text is
 * encoded once and the same bytes go to every watcher (the server below keeps a reference to
 * them, not a copy per stream), alone, never copied into a watcher's own chunk.
 */
export const SHARED_EVENT_CHARS = 16 * 1024;

/** The `data:` part of each large event, encoded once (kept as long as the event is). */
const _sharedData = new WeakMap<KvEvent, Uint8Array>();

function _isLarge(e: KvEvent): boolean {
  return e.k.length + (e.v === null ? 0 : e.v.length) >= SHARED_EVENT_CHARS;
}

function _encodedData(e: KvEvent): Uint8Array {
  let bytes = _sharedData.get(e);
  if (bytes === undefined) {
    bytes = _encoder.encode(`data: ${JSON.stringify(e)}\n\n`);
    _sharedData.set(e, bytes);
  }
  return bytes;
}

/** {@linkcode eventBytes} of the last event asked for (each is handed to every watcher in turn). */
let _lastCostEvent: KvEvent | null = null;
let _lastCost = 0;

function _cost(e: KvEvent): number {
  if (e !== _lastCostEvent) [_lastCostEvent, _lastCost] = [e, eventBytes(e.k, e.v)];
  return _lastCost;
}

/**
 * The node-wide count of the bytes of events waiting in its watch streams (beyond their
 * backlogs): each event counted once however many streams wait for it. One per handler (its
 * {@linkcode ApiLimits}), so per node.
 */
class _WatchBytes {
  total = 0;
  readonly #refs = new Map<KvEvent, number>();
  readonly watchers = new Set<_Watcher>();
  #scheduled = false;

  /** The bound (the newest handler context's `maxWatchBytes`). */
  max: number;

  constructor(max: number) {
    this.max = max;
  }

  hold(e: KvEvent, cost: number): void {
    const n = this.#refs.get(e) ?? 0;
    this.#refs.set(e, n + 1);
    if (n === 0) this.total += cost;
    if (this.total > this.max && !this.#scheduled) {
      // After the apply that recorded it: a watcher is cut off between entries only.
      this.#scheduled = true;
      queueMicrotask(() => this.#enforce());
    }
  }

  drop(e: KvEvent, cost: number): void {
    const n = this.#refs.get(e) ?? 0;
    if (n > 1) this.#refs.set(e, n - 1);
    else if (n === 1) {
      this.#refs.delete(e);
      this.total -= cost;
    }
  }

  /** Cuts off the watchers with the most waiting, largest first, until the total is in bounds. */
  #enforce(): void {
    this.#scheduled = false;
    while (this.total > this.max) {
      let worst: _Watcher | null = null;
      for (const w of this.watchers) {
        if (w.waitingBytes > (worst?.waitingBytes ?? 0)) worst = w;
      }
      if (worst === null) return;
      worst.shed(
        `this node's watch streams held more than ${this.max} bytes of events waiting (--max-watch-bytes), and this one had the most (${worst.waitingBytes}); it was cut off`,
      );
    }
  }
}

const _budgets = new WeakMap<ApiLimits, _WatchBytes>();

function _budget(limits: ApiLimits, max: number): _WatchBytes {
  let b = _budgets.get(limits);
  if (b === undefined) _budgets.set(limits, b = new _WatchBytes(max));
  b.max = max;
  return b;
}

/**
 * The SSE text of the last event encoded, with the id it has as its entry's last (or only) change
 * (`id: N`), and its `data:` part alone: the history hands each event to every watcher in turn,
 * so with many watchers it is encoded once, not once per watcher. Only an event that more changes
 * of its entry follow gets a text of its own per watcher (`id: N:j`).
 */
let _lastEvent: KvEvent | null = null;
let _lastQueued: _Queued = { index: 0, data: "", whole: "" };

function _queued(e: KvEvent): _Queued {
  if (e !== _lastEvent) {
    const data = `data: ${JSON.stringify(e)}\n\n`;
    _lastQueued = { index: e.index, data, whole: `id: ${e.index}\n${data}` };
    _lastEvent = e;
  }
  return _lastQueued;
}

/** An event waiting to be sent: its index, its data, and its text as its entry's last change. */
interface _Queued {
  index: number;
  data: string;
  whole: string;
}

/**
 * `GET /v1/watch`: the stream of changes described in the module doc.
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param track Given, once the stream runs, the function that ends it early with a final
 * `event: error` naming a reason (as when the tokens were reloaded and this one's was revoked);
 * returns the function to call when the stream ends.
 * @returns The event stream.
 * @throws {ApiError} 400 for bad parameters, 410 for a `from` older than the history, 429 past
 * `maxWatchers` streams open, 501 without a history, 503 while the node stops.
 */
export function watchRoute(
  ctx: WatchContext,
  req: Request,
  url: URL,
  track?: (end: (reason: string) => void) => () => void,
): Response {
  const key = url.searchParams.get("key");
  const prefix = url.searchParams.get("prefix");
  if ((key === null) === (prefix === null)) {
    throw new ApiError(400, "a watch takes exactly one of ?key=K and ?prefix=P");
  }
  if (key !== null) checkKey(key, ctx.maxKeyBytes);
  if (prefix !== null && prefix !== "") checkKey(prefix, ctx.maxKeyBytes);
  const { from, skip } = _fromParam(url, req.headers.get("last-event-id"));
  const history = _history(ctx);
  if (from !== null && from < history.oldestIndex) {
    throw new ApiError(410, new HistoryCompactedError(from, history.oldestIndex).message, {
      oldest_index: history.oldestIndex,
    });
  }
  const matches = key !== null ? (k: string) => k === key : (k: string) => k.startsWith(prefix!);
  const { limits } = ctx;
  if (!limits.acquireWatcher()) {
    const max = limits.options.maxWatchers;
    throw new ApiError(
      429,
      `too many watch streams open on this node (${limits.watchers}; the limit is ${max}, --max-watchers); retry later or on another node`,
      { limit: max },
      ctx.retryAfter,
    );
  }
  let untrack = () => {};
  const watcher = new _Watcher(
    history,
    from,
    skip,
    // What the stream covers before its first event: without `from`, the applied index (the
    // answer's X-Raftkv-Index), so that a stream ended before any change says where to go on.
    from ?? ctx.backend.status().applied_index + 1,
    matches,
    {
      events: ctx.watchBufferEvents,
      bytes: ctx.watchBufferBytes ?? DEFAULT_WATCH_BUFFER_BYTES,
      node: _budget(limits, ctx.maxWatchBytes ?? DEFAULT_MAX_WATCH_BYTES),
    },
    () => {
      limits.releaseWatcher();
      untrack();
    },
  );
  if (track !== undefined) untrack = track((reason) => watcher.close(reason));
  const stream = new ReadableStream<Uint8Array>({
    start: () => {
      try {
        watcher.start(ctx.watchHeartbeatMs);
      } catch (err) {
        watcher.end(null);
        throw err;
      }
    },
    pull: async (controller) => {
      const chunk = await watcher.take();
      if (chunk === null) controller.close();
      else if (typeof chunk === "string") controller.enqueue(_encoder.encode(chunk));
      else for (const bytes of chunk) controller.enqueue(bytes);
    },
    cancel: () => watcher.end(null),
  }, { highWaterMark: 0 });
  req.signal.addEventListener("abort", () => watcher.end(null), { once: true });
  return new Response(stream, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      "x-accel-buffering": "no",
    },
  });
}

/**
 * Waits, for `GET /v1/data/{key}?index=N&wait=D`, until `key` changed at an index above `N` on
 * this node, or the wait ends (see the module doc). Returns at once without `?index=`.
 *
 * @param ctx The handler's context; `clock` times the wait (default {@linkcode realClock}: a
 * simulation passes its virtual one).
 * @param req The request (its end ends the wait).
 * @param url Its parsed URL.
 * @param key The key.
 * @param track Given the function that ends the wait early with a reason (the tokens were
 * reloaded and this request's was revoked); returns the function to call when the wait is over.
 * @throws {ApiError} 400 for a malformed `index` or `wait`; 401 when `track`'s function ended it.
 */
export async function blockingWait(
  ctx: Pick<WatchContext, "backend" | "retryAfter"> & { clock?: Clock },
  req: Request,
  url: URL,
  key: string,
  track?: (end: (reason: string) => void) => () => void,
): Promise<void> {
  const indexText = url.searchParams.get("index");
  const waitText = url.searchParams.get("wait");
  if (indexText === null) {
    if (waitText !== null) throw new ApiError(400, "?wait= needs ?index=N (the index last seen)");
    return;
  }
  const index = _indexParam("index", indexText);
  const waitMs = waitText === null
    ? MAX_BLOCKING_WAIT_MS
    : Math.min(parseWait(waitText), MAX_BLOCKING_WAIT_MS);
  const history = _history(ctx);
  if (index + 1 < history.oldestIndex || waitMs === 0) return;
  let revoked: string | null = null;
  await new Promise<void>((resolve) => {
    let cancelTimer = () => {};
    let stop = () => {};
    let untrack = () => {};
    const done = () => {
      cancelTimer();
      stop();
      untrack();
      req.signal.removeEventListener("abort", done);
      resolve();
    };
    let changed = false;
    const sink: EventSink = {
      event: (e) => {
        if (e.k === key && e.index > index && !changed) {
          changed = true;
          queueMicrotask(done);
        }
      },
      close: () => queueMicrotask(done),
    };
    stop = history.subscribe(index + 1, sink);
    if (changed) return;
    cancelTimer = (ctx.clock ?? realClock).after(waitMs, done);
    req.signal.addEventListener("abort", done, { once: true });
    if (track !== undefined) {
      untrack = track((reason) => {
        revoked = reason;
        done();
      });
    }
  });
  if (revoked !== null) {
    throw new ApiError(401, revoked, {}, { "www-authenticate": WWW_AUTHENTICATE });
  }
}

/**
 * A duration of `?wait=`: a number with a unit, `ms`, `s`, `m` (`30s`, `1.5m`, `500ms`), or a
 * plain number of seconds.
 *
 * @param text The parameter.
 * @returns Milliseconds.
 * @throws {ApiError} 400 if it is not a duration.
 */
export function parseWait(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text);
  if (m === null) {
    throw new ApiError(
      400,
      `?wait=${quote(text)} is not a duration; use a number with ms, s or m, such as 30s`,
    );
  }
  const n = Number(m[1]);
  return Math.round(m[2] === "ms" ? n : m[2] === "m" ? n * 60_000 : n * 1000);
}

function _history(ctx: Pick<WatchContext, "backend" | "retryAfter">): EventHistory {
  if (ctx.backend.watchHistory === undefined) {
    throw new ApiError(501, "this node does not keep a change history");
  }
  try {
    return ctx.backend.watchHistory();
  } catch (err) {
    if (err instanceof StoppingError) {
      throw new ApiError(503, `${err.message}; retry on another node`, {}, ctx.retryAfter);
    }
    if (err instanceof RemovedError) throw removedError(err);
    throw err;
  }
}

function _indexParam(name: string, text: string): number {
  if (!/^\d{1,16}$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new ApiError(400, `?${name}=${quote(text)} is not a log index (a non-negative integer)`);
  }
  return Number(text);
}

/**
 * Where a stream starts: `from=N`; else after the event `Last-Event-ID` names (`N`: from `N + 1`;
 * `N:j`: from `N`, its first `j` changes for this watch skipped); else the next index (null).
 */
function _fromParam(url: URL, lastEventId: string | null): { from: number | null; skip: number } {
  const from = url.searchParams.get("from");
  if (from !== null) return { from: _indexParam("from", from), skip: 0 };
  if (lastEventId === null || lastEventId.trim() === "") return { from: null, skip: 0 };
  const id = lastEventId.trim();
  const m = /^(\d{1,16}):(\d{1,9})$/.exec(id);
  if (m === null) return { from: _indexParam("Last-Event-ID", id) + 1, skip: 0 };
  const skip = Number(m[2]);
  if (skip < 1) {
    throw new ApiError(400, `Last-Event-ID ${quote(id)} is not an event id (N or N:j, j >= 1)`);
  }
  return { from: _indexParam("Last-Event-ID", m[1]!), skip };
}

/** A watcher's bounds: events and bytes waiting for it, and the node's count of them all. */
interface _Buffer {
  events: number;
  bytes: number;
  node: _WatchBytes;
}

/**
 * One watch stream: its backlog, read from the history as the client takes it, the live events
 * waiting to be sent, bounded, and its end.
 */
class _Watcher implements EventSink {
  readonly #history: EventHistory;
  readonly #from: number | null;
  readonly #matches: (key: string) => boolean;
  readonly #buffer: _Buffer;
  /**
   * The backlog still to read from the history: the next index (an entry's first), or null once
   * all of it was read (or there was none). It ends at `#backlogEnd`, the newest index the history
   * held when the stream started: later ones come as they are recorded, into `#queue`. Nothing of
   * it is held here until the client takes it, so it costs no memory beyond the history's; once
   * the history has dropped an index of it not yet read, the stream is cut off (see `#lost`).
   */
  #backlogNext: number | null = null;
  #backlogEnd = 0;
  /**
   * What was read of the backlog and not yet sent (the first comment too): whole entries, about
   * a chunk's worth (see `#refill`), the history's own objects.
   */
  #staged: (string | KvEvent)[] = [];
  #stagedHead = 0;
  /**
   * Comments, and the events recorded since the stream started, to send after the backlog: the
   * history's own objects (their text is made, and their ids set, as they leave: see `take`).
   */
  #queue: (string | KvEvent)[] = [];
  /**
   * What each item of `#queue` counts against the byte bounds (at the same position): an event
   * its `eventBytes`, a comment 0.
   */
  #costs: number[] = [];
  /** The sum of `#costs` from `#head`: the bytes of events waiting beyond the backlog. */
  #waitingBytes = 0;
  /** Where the items still to send begin in `#queue` (those before it were sent). */
  #head = 0;
  /** Changes of entry `#from` still to skip (a `Last-Event-ID: N:j` resume), and all it had. */
  #skip: number;
  readonly #resumedInside: number;
  /** The entry whose changes were sent last, and how many of them were (for `N:j` ids). */
  #sentIndex: number;
  #sentOfIndex: number;
  /**
   * The newest index whose changes this stream has handled: its backlog's end, then queued, or
   * none of them matched.
   */
  #lastIndex: number;
  /** The index of the newest event queued (the events of one entry are never split). */
  #queuedIndex = 0;
  #ended = false;
  #final: string | null = null;
  #wake: (() => void) | null = null;
  #unsubscribe = () => {};
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  readonly #onEnd: () => void;

  constructor(
    history: EventHistory,
    from: number | null,
    skip: number,
    start: number,
    matches: (key: string) => boolean,
    buffer: _Buffer,
    onEnd: () => void,
  ) {
    this.#history = history;
    this.#from = from;
    this.#skip = skip;
    this.#resumedInside = skip;
    this.#sentIndex = from ?? 0;
    this.#sentOfIndex = 0;
    this.#lastIndex = start - 1;
    this.#matches = matches;
    this.#buffer = buffer;
    this.#onEnd = onEnd;
  }

  start(heartbeatMs: number): void {
    this.#staged.push(": watching\n\n");
    this.#unsubscribe = this.#history.subscribe(null, this);
    const newest = this.#history.newestIndex;
    if (!this.#ended && this.#from !== null && newest >= this.#from) {
      [this.#backlogNext, this.#backlogEnd] = [this.#from, newest];
      this.#lastIndex = Math.max(this.#lastIndex, newest);
    }
    this.#buffer.node.watchers.add(this);
    this.#heartbeat = setInterval(() => {
      if (this.#idle) this.#push(": heartbeat\n\n");
    }, heartbeatMs);
  }

  event(e: KvEvent): void {
    if (this.#ended) return;
    // The history has just dropped part of the backlog not yet read: go no further.
    if (this.#backlogNext !== null && this.#backlogNext < this.#history.oldestIndex) {
      return this.#lost();
    }
    // On a node that has not yet applied up to `from`, changes before it are still to come.
    if (this.#from !== null && e.index < this.#from) return;
    if (this.#sends(e)) {
      const cost = _cost(e);
      // Cut off only between entries: everything before this one was queued, none of it twice.
      if (e.index !== this.#queuedIndex) {
        const { events, bytes } = this.#buffer;
        const reason = this.#waiting >= events
          ? `this watcher fell more than ${events} events behind and was cut off`
          // One entry is queued whatever its size when nothing else waits.
          : this.#waitingBytes > 0 && this.#waitingBytes + cost > bytes
          ? `this watcher fell more than ${bytes} bytes of events behind and was cut off`
          : null;
        if (reason !== null) {
          this.end(this.#finalEvent(reason, e.index - 1));
          return;
        }
      }
      this.#queuedIndex = e.index;
      this.#push(e, cost);
    }
    this.#lastIndex = Math.max(this.#lastIndex, e.index);
  }

  /**
   * Whether `e` is for this stream: of a watched key, and not among the first changes of entry
   * `from` that a `Last-Event-ID: N:j` resume skips (sent on the connection it resumes; counted).
   */
  #sends(e: KvEvent): boolean {
    if (!this.#matches(e.k)) return false;
    if (this.#skip > 0 && e.index === this.#from) {
      this.#skip--;
      this.#sentOfIndex++;
      return false;
    }
    return true;
  }

  close(reason: string): void {
    this.end(this.#finalEvent(reason, this.#lastIndex));
  }

  /**
   * The final event of a stream whose changes up to `last` were all sent: `last_index`, and
   * `last_id`, the id to go on after. They differ only for a stream that resumed inside entry N
   * (`Last-Event-ID: N:j`) and ends before the rest of N came: `last_index` is N - 1, and `last_id`
   * is still `N:j` (the client has the first j of N; `from=N` would send them again).
   */
  #finalEvent(reason: string, last: number): string {
    const inside = this.#resumedInside > 0 && this.#from !== null && last < this.#from;
    return this.#finalAt(reason, last, inside ? `${this.#from}:${this.#resumedInside}` : null);
  }

  /** The final event with `last_index` `last`, and `last_id` `id` (null: `last`). */
  #finalAt(reason: string, last: number, id: string | null): string {
    const how = id !== null ? `Last-Event-ID: ${id}` : `from=${last + 1}`;
    return `event: error\ndata: ${
      JSON.stringify({
        error: `${reason}; reconnect with ${how}`,
        last_index: last,
        last_id: id ?? String(last),
      })
    }\n\n`;
  }

  /** Ends the stream after `final` (null: at once, the client went away). */
  end(final: string | null): void {
    if (this.#ended) {
      // The client went away from a stream already ended: what it still held goes.
      if (final === null) this.#dispose();
      return;
    }
    this.#ended = true;
    this.#onEnd();
    this.#unsubscribe();
    clearInterval(this.#heartbeat);
    if (final === null) this.#dispose();
    this.#final = final;
    this.#wakeUp();
  }

  /** The bytes of events waiting beyond the backlog (what the node-wide bound counts). */
  get waitingBytes(): number {
    return this.#waitingBytes;
  }

  /**
   * Ends the stream at once after what was already handed to the server, dropping what is still
   * to send (the node holds too many events: see `_WatchBytes`; or the history dropped the
   * backlog: see `#lost`), with a final event that names where to go on from: before the first
   * event dropped (`N:j` when it drops the rest of entry N after j of its changes went). A stream
   * already ended (cut off, its final event waiting behind its events) drops them the same way,
   * and its final event says so instead.
   *
   * @param reason Why.
   */
  shed(reason: string): void {
    const next = this.#nextIndex();
    const final = next === null
      ? this.#finalEvent(reason, this.#lastIndex)
      : next === this.#sentIndex && this.#sentOfIndex > 0
      ? this.#finalAt(reason, next - 1, `${next}:${this.#sentOfIndex}`)
      : this.#finalEvent(reason, next - 1);
    this.#dispose();
    if (!this.#ended) return this.end(final);
    this.#final = final;
    this.#wakeUp();
  }

  /** The index of the first event still to send (read or not from the backlog), or null. */
  #nextIndex(): number | null {
    for (let i = this.#stagedHead; i < this.#staged.length; i++) {
      const item = this.#staged[i]!;
      if (typeof item !== "string") return item.index;
    }
    if (this.#backlogNext !== null) return this.#backlogNext;
    for (let i = this.#head; i < this.#queue.length; i++) {
      const item = this.#queue[i]!;
      if (typeof item !== "string") return item.index;
    }
    return null;
  }

  /**
   * The history dropped changes of the backlog before the client took them: the stream ends after
   * what it was handed, as a watch from there would be refused (410), and holds nothing more.
   */
  #lost(): void {
    this.shed(
      `this node's change history no longer holds index ${this.#backlogNext} (its oldest is now ${this.#history.oldestIndex}), which this watcher had not taken yet, so it was cut off (a watch from there is answered 410: read the current state and watch from its index + 1)`,
    );
  }

  /** Drops the items waiting and the backlog not yet read, and leaves the node-wide count. */
  #dispose(): void {
    const node = this.#buffer.node;
    for (let i = this.#head; i < this.#queue.length; i++) {
      const cost = this.#costs[i]!;
      if (cost > 0) node.drop(this.#queue[i] as KvEvent, cost);
    }
    [this.#queue, this.#costs, this.#head, this.#waitingBytes] = [[], [], 0, 0];
    [this.#staged, this.#stagedHead, this.#backlogNext] = [[], 0, null];
    node.watchers.delete(this);
  }

  /**
   * Reads the next part of the backlog from the history into `#staged`, unless events read
   * before are still there: whole entries, until they have about {@linkcode WATCH_CHUNK_CHARS}
   * characters or a large event (what one read sends), so that a stream holds at most that of a
   * backlog its client does not read. Ends the stream instead when the history no longer holds
   * it.
   *
   * @returns Whether events are staged now.
   */
  #refill(): boolean {
    const next = this.#backlogNext;
    if (next === null) return false;
    // Only once what was staged before is sent (but for the comments the stream begins with).
    for (let i = this.#stagedHead; i < this.#staged.length; i++) {
      if (typeof this.#staged[i] !== "string") return true;
    }
    if (next < this.#history.oldestIndex) {
      this.#lost();
      return false;
    }
    this.#backlogNext = null;
    let chars = 0;
    let entry = -1;
    for (const e of this.#history.since(next)) {
      if (e.index > this.#backlogEnd) break;
      if (e.index !== entry && chars >= WATCH_CHUNK_CHARS) {
        this.#backlogNext = e.index;
        break;
      }
      entry = e.index;
      if (!this.#sends(e)) continue;
      this.#staged.push(e);
      // About its text: the key, the value, and the rest of the event's lines.
      chars += _isLarge(e) ? WATCH_CHUNK_CHARS : e.k.length + (e.v?.length ?? 0) + 96;
    }
    return this.#stagedHead < this.#staged.length;
  }

  /**
   * The next text to send, waiting for one; null once the stream is over. The backlog goes first,
   * read from the history a part at a time, then the queue. Both always hold whole entries (a
   * node records an entry's changes in one synchronous apply, and this runs after it), so an
   * event followed by one of the same index is not its entry's last: it gets the id `N:j`, the
   * last one `N`.
   */
  async take(): Promise<string | Uint8Array[] | null> {
    for (;;) {
      while (this.#idle && this.#final === null && !this.#ended) {
        await new Promise<void>((resolve) => (this.#wake = resolve));
      }
      if (this.#refill() || this.#stagedHead < this.#staged.length) {
        const { out, end } = this.#chunk(this.#staged, this.#stagedHead);
        if (end === this.#staged.length) [this.#staged, this.#stagedHead] = [[], 0];
        else this.#stagedHead = end;
        return out;
      }
      // The rest of the backlog (none of it for this stream, or cut off) is done with.
      if (this.#waiting > 0) return this.#takeQueued();
      if (this.#final !== null) {
        const text = this.#final;
        this.#final = null;
        return text;
      }
      if (this.#ended) {
        this.#buffer.node.watchers.delete(this);
        return null;
      }
    }
  }

  /** The next chunk of `#queue`; what it hands over no longer counts against the byte bounds. */
  #takeQueued(): string | Uint8Array[] {
    const items = this.#queue;
    const costs = this.#costs;
    const { out, end: i } = this.#chunk(items, this.#head);
    for (let j = this.#head; j < i; j++) {
      const cost = costs[j]!;
      if (cost === 0) continue;
      this.#waitingBytes -= cost;
      this.#buffer.node.drop(items[j] as KvEvent, cost);
    }
    // The rest waits for the next read. The items sent are dropped once they are half the array
    // (not at each read: a queue of many small events would be copied again and again).
    this.#head = i;
    if (i === items.length) [this.#queue, this.#costs, this.#head] = [[], [], 0];
    else if (i > items.length / 2) {
      [this.#queue, this.#costs, this.#head] = [items.slice(i), costs.slice(i), 0];
    }
    return out;
  }

  /**
   * The text of `items` from `start` (whole entries) up to {@linkcode WATCH_CHUNK_CHARS}, or one
   * large event alone (its own id line, then the bytes every watcher shares), with the ids of the
   * events it sends counted; and where the rest begins.
   */
  #chunk(
    items: readonly (string | KvEvent)[],
    start: number,
  ): { out: string | Uint8Array[]; end: number } {
    let text = "";
    let i = start;
    for (; i < items.length && text.length < WATCH_CHUNK_CHARS; i++) {
      const item = items[i]!;
      if (typeof item === "string") {
        text += item;
        continue;
      }
      const large = _isLarge(item);
      if (large && text !== "") break;
      if (item.index !== this.#sentIndex) [this.#sentIndex, this.#sentOfIndex] = [item.index, 0];
      this.#sentOfIndex++;
      const next = items[i + 1];
      const more = next !== undefined && typeof next !== "string" && next.index === item.index;
      if (large) {
        const id = more ? `${item.index}:${this.#sentOfIndex}` : String(item.index);
        return { out: [_encoder.encode(`id: ${id}\n`), _encodedData(item)], end: i + 1 };
      }
      const q = _queued(item);
      text += more ? `id: ${item.index}:${this.#sentOfIndex}\n${q.data}` : q.whole;
    }
    return { out: text, end: i };
  }

  /** Whether nothing is left to send: no backlog, nothing queued (the final event aside). */
  get #idle(): boolean {
    return this.#backlogNext === null && this.#stagedHead === this.#staged.length &&
      this.#waiting === 0;
  }

  /** The items of `#queue` still to send. */
  get #waiting(): number {
    return this.#queue.length - this.#head;
  }

  #push(item: string | KvEvent, cost = 0): void {
    this.#queue.push(item);
    this.#costs.push(cost);
    if (cost > 0) {
      this.#waitingBytes += cost;
      this.#buffer.node.hold(item as KvEvent, cost);
    }
    this.#wakeUp();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
