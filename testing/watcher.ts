/**
 * A watcher of `GET /v1/watch` for tests and benchmarks: it keeps every event it receives and,
 * when its stream ends, reconnects to the next node of a list after the last event it took (its
 * id as `Last-Event-ID`, exact also inside one entry's changes), as a client is meant to.
 *
 * @module
 */

import { readSse } from "../src/util/sse.ts";

/** An event as the API sends it. */
export interface WatchEvent {
  /** The log index of the change. */
  index: number;
  /** `put`, `delete` or `expire`. */
  type: string;
  /** The key. */
  k: string;
  /** The value of a put, else null. */
  v: string | null;
  /** The key's revision after the change. */
  mod_index: number;
}

/** Options of {@linkcode Watcher}. */
export interface WatcherOptions {
  /** The query naming what to watch: `key=a` or `prefix=p/`. */
  filter: string;
  /** The nodes' API URLs, in the order to try them (it starts with the first). */
  urls: () => readonly string[];
  /** The first index wanted; default: the next index of the first node it reaches. */
  from?: number;
  /** Called with each event as it arrives (besides keeping it). */
  onEvent?: (e: WatchEvent, receivedAt: number) => void;
  /** Whether to keep the events in {@linkcode Watcher.events}. Default true. */
  keep?: boolean;
}

/** Follows a watch across nodes until closed. */
export class Watcher implements AsyncDisposable {
  /** Every event received, in order. */
  readonly events: WatchEvent[] = [];
  /** How many times it connected (the first time included). */
  connections = 0;
  /** The `error` events the server ended streams with. */
  readonly errors: string[] = [];
  /** Non-200 answers it got, as `status body`. */
  readonly refusals: string[] = [];
  /** The number of events received. */
  count = 0;
  #options: WatcherOptions;
  #next: number | null;
  /** The id of the last event taken (or the `last_id` a final event named), or null. */
  #lastId: string | null = null;
  #node = 0;
  #abort = new AbortController();
  #done: Promise<void>;
  #connected = Promise.withResolvers<void>();

  /**
   * Starts watching.
   *
   * @param options What to watch and where.
   */
  constructor(options: WatcherOptions) {
    this.#options = options;
    this.#next = options.from ?? null;
    this.#done = this.#run();
  }

  /** Resolves once the first stream is open (its subscription made on the node). */
  get connected(): Promise<void> {
    return this.#connected.promise;
  }

  /**
   * The first index not wholly received (where a reconnect starts: the index of the last event
   * when more changes of its entry may follow), or null before the first stream.
   */
  get next(): number | null {
    return this.#next;
  }

  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      const urls = this.#options.urls();
      const url = urls[this.#node % urls.length]!;
      const from = this.#next === null || this.#lastId !== null ? "" : `&from=${this.#next}`;
      const headers: Record<string, string> = this.#lastId === null
        ? {}
        : { "last-event-id": this.#lastId };
      try {
        const res = await fetch(`${url}/v1/watch?${this.#options.filter}${from}`, {
          signal,
          headers,
        });
        if (res.status !== 200) {
          this.refusals.push(`${res.status} ${await res.text()}`);
          this.#node++;
          await _pause(100, signal);
          continue;
        }
        this.connections++;
        if (this.#next === null) this.#next = Number(res.headers.get("x-raftkv-index")) + 1;
        this.#connected.resolve();
        for await (const m of readSse(res.body!)) {
          if (m.event === "error") {
            this.errors.push(m.data);
            const end = JSON.parse(m.data) as { last_index?: unknown; last_id?: unknown };
            if (typeof end.last_index === "number" && typeof end.last_id === "string") {
              [this.#lastId, this.#next] = [end.last_id, end.last_index + 1];
            }
            break;
          }
          const e = JSON.parse(m.data) as WatchEvent;
          if (this.#options.keep !== false) this.events.push(e);
          this.count++;
          this.#options.onEvent?.(e, performance.now());
          // `N:j`: more changes of entry N may follow.
          this.#lastId = m.id ?? String(e.index);
          this.#next = this.#lastId.includes(":") ? e.index : e.index + 1;
        }
      } catch {
        // The node went away: go on with the next one.
      }
      this.#node++;
      await _pause(20, signal);
    }
  }

  /** Stops watching. */
  async close(): Promise<void> {
    this.#abort.abort();
    await this.#done;
  }

  /** Stops watching. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function _pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
