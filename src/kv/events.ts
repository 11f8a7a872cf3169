/**
 * Change events and the bounded history of them that watches are served from.
 *
 * The state machine records every change it makes to a key, as it applies an entry, with
 * {@linkcode EventHistory.record}: one event per key changed (a range delete or a transaction
 * gives one per key, in the order it changed them). Every replica applies the same entries, so
 * every replica records the same events in the same order: a watcher can move to another node
 * and continue where it left off.
 *
 * The history keeps the newest events within two bounds: at most `capacity` events, and at most
 * `maxBytes` bytes, an event counting its key's and value's UTF-8 bytes plus
 * {@linkcode EVENT_OVERHEAD_BYTES} (see {@linkcode eventBytes}). The oldest whole indexes go first
 * while either bound would be exceeded. The newest event is always kept, even one larger than
 * `maxBytes` on its own (it is then the only one kept): memory stays below `maxBytes` plus one
 * event, which the largest key and value accepted bound, and a watcher that reconnects right
 * after such a write still finds it. It covers the log indexes from
 * {@linkcode EventHistory.oldestIndex} to the applied index: every change at an index in that
 * span is in it. Older indexes (evicted, or before the snapshot the state was loaded from) are
 * gone; a watch from there is refused with {@linkcode HistoryCompactedError}.
 *
 * @module
 */

import { utf8Length } from "../util/utf8.ts";

/** What happened to a key: written, deleted, or deleted because its lease ended. */
export type KvEventType = "put" | "delete" | "expire";

/** One change of one key, as watchers receive it (field names as in the JSON API). */
export interface KvEvent {
  /** The log index of the entry that made the change. */
  readonly index: number;
  /** What happened. */
  readonly type: KvEventType;
  /** The key. */
  readonly k: string;
  /** The new value of a put; null for a delete or an expiry. */
  readonly v: string | null;
  /** The key's revision after the change: the index of the change (as etcd's `mod_revision`). */
  readonly mod_index: number;
}

/** Receives the events of a subscription (see {@linkcode EventHistory.subscribe}). */
export interface EventSink {
  /** One event, in index order; events of one index arrive together, in their order. */
  event(e: KvEvent): void;
  /**
   * The subscription ended (the history was replaced by a snapshot, or the node stops); no
   * event follows.
   */
  close(reason: string): void;
}

/** A watch asked for indexes the history no longer holds. */
export class HistoryCompactedError extends Error {
  /** The oldest index still available. */
  readonly oldestIndex: number;

  /**
   * Creates the error.
   *
   * @param from The index asked for.
   * @param oldestIndex The oldest index still available.
   */
  constructor(from: number, oldestIndex: number) {
    super(
      `index ${from} is older than the change history this node keeps (oldest index ${oldestIndex}); read the current state and watch from its index + 1`,
    );
    this.name = "HistoryCompactedError";
    this.oldestIndex = oldestIndex;
  }
}

/** Default of {@linkcode EventHistory}'s capacity (the `--watch-history` flag). */
export const DEFAULT_HISTORY_EVENTS = 10_000;

/** Default of {@linkcode EventHistory}'s byte bound (the `--watch-history-bytes` flag): 64 MiB. */
export const DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024;

/**
 * What one event counts for in the byte bound beside its key and value: the event object, its
 * fields and its slot in the ring, roughly.
 */
export const EVENT_OVERHEAD_BYTES = 64;

/**
 * The bytes one event counts for in {@linkcode EventHistory}'s byte bound: its key's and value's
 * UTF-8 lengths plus {@linkcode EVENT_OVERHEAD_BYTES}.
 *
 * @param key The key.
 * @param value The value of a put, else null.
 * @returns The event's size in bytes.
 */
export function eventBytes(key: string, value: string | null): number {
  return utf8Length(key) + (value === null ? 0 : utf8Length(value)) + EVENT_OVERHEAD_BYTES;
}

/**
 * The newest changes, in index order, and the subscriptions fed from them as they are recorded.
 */
export class EventHistory {
  readonly #capacity: number;
  readonly #maxBytes: number;
  /** The sum of {@linkcode eventBytes} over the events kept. */
  #bytes = 0;
  /** A ring of the newest events. */
  #ring: (KvEvent | undefined)[];
  /** The {@linkcode eventBytes} of each event in the ring, at the same position. */
  #costs: number[];
  #head = 0;
  #size = 0;
  #oldestIndex = 1;
  #sinks = new Set<EventSink>();
  #closed: string | null = null;

  /**
   * Creates an empty history that starts at index 1.
   *
   * @param capacity The most events kept.
   * @param maxBytes The most bytes of events kept (see {@linkcode eventBytes}); the newest event
   * is kept even when it alone is larger.
   * @throws {RangeError} If `capacity` or `maxBytes` is not a positive integer.
   */
  constructor(capacity: number = DEFAULT_HISTORY_EVENTS, maxBytes: number = DEFAULT_HISTORY_BYTES) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new RangeError(`the watch history must hold at least 1 event, got ${capacity}`);
    }
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
      throw new RangeError(`the watch history must hold at least 1 byte, got ${maxBytes}`);
    }
    this.#capacity = capacity;
    this.#maxBytes = maxBytes;
    this.#ring = new Array(Math.min(capacity, 1024));
    this.#costs = new Array(this.#ring.length).fill(0);
  }

  /** The oldest index whose changes are all still here (a watch may start there). */
  get oldestIndex(): number {
    return this.#oldestIndex;
  }

  /**
   * The index of the newest event kept (that of the last entry that changed a key, unless the
   * history was emptied since), or 0 when none is.
   */
  get newestIndex(): number {
    return this.#size === 0 ? 0 : this.#at(this.#size - 1)!.index;
  }

  /** The number of events kept. */
  get size(): number {
    return this.#size;
  }

  /** The bytes the events kept count for (see {@linkcode eventBytes}). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The number of subscriptions. */
  get subscribers(): number {
    return this.#sinks.size;
  }

  /**
   * Records one change of one key and hands it to every subscription. The state machine calls
   * this once per key it changes, in log order.
   *
   * @param index The log index of the entry that made the change.
   * @param type What happened.
   * @param key The key.
   * @param value The new value of a put, else null.
   */
  record(index: number, type: KvEventType, key: string, value: string | null): void {
    const v = type === "put" ? value : null;
    const e: KvEvent = { index, type, k: key, v, mod_index: index };
    const cost = eventBytes(key, v);
    // Events of an index that lost its first events to the bounds (a transaction larger than
    // them) are no use once the next index comes: no watch can start there.
    while (this.#size > 0 && this.#at(0)!.index < this.#oldestIndex && index >= this.#oldestIndex) {
      this.#dropOldest();
    }
    // Whole indexes go, oldest first, until the new event fits both bounds (or none is left).
    while (
      this.#size > 0 && (this.#size >= this.#capacity || this.#bytes + cost > this.#maxBytes)
    ) {
      this.#oldestIndex = Math.max(this.#oldestIndex, this.#at(0)!.index + 1);
      while (this.#size > 0 && this.#at(0)!.index < this.#oldestIndex) this.#dropOldest();
    }
    if (this.#size === this.#ring.length) this.#grow();
    const slot = (this.#head + this.#size) % this.#ring.length;
    this.#ring[slot] = e;
    this.#costs[slot] = cost;
    this.#size++;
    this.#bytes += cost;
    for (const sink of this.#sinks) sink.event(e);
  }

  /**
   * Subscribes from `from` (the next index after the newest recorded when null): the events
   * already recorded from there are handed to `sink` at once, the rest as they are recorded.
   *
   * @param from The first index wanted, or null for only what comes next.
   * @param sink Receives the events.
   * @returns The function that ends the subscription. Once {@linkcode close}d, `sink.close` is
   * called at once instead.
   * @throws {HistoryCompactedError} If `from` is older than {@linkcode oldestIndex}.
   */
  subscribe(from: number | null, sink: EventSink): () => void {
    if (this.#closed !== null) {
      sink.close(this.#closed);
      return () => {};
    }
    let added = sink;
    if (from !== null) {
      if (from < this.#oldestIndex) throw new HistoryCompactedError(from, this.#oldestIndex);
      for (const e of this.since(from)) sink.event(e);
      // On a node that has not yet applied up to `from`, changes before it are still to come:
      // the subscription skips them.
      if (this.newestIndex < from - 1) {
        added = {
          event: (e) => {
            if (e.index >= from) sink.event(e);
          },
          close: (reason) => sink.close(reason),
        };
      }
    }
    this.#sinks.add(added);
    return () => {
      this.#sinks.delete(added);
    };
  }

  /** The events recorded at `from` and after, oldest first. */
  *since(from: number): Generator<KvEvent> {
    // Binary search for the first event at or after `from`.
    let lo = 0;
    let hi = this.#size;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#at(mid)!.index < from) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.#size; i++) yield this.#at(i)!;
  }

  /**
   * Forgets every event: the state was replaced by a snapshot at `index`, so the history starts
   * after it. Subscriptions end (they would miss the changes the snapshot holds).
   */
  reset(index: number): void {
    this.#ring = new Array(Math.min(this.#capacity, 1024));
    this.#costs = new Array(this.#ring.length).fill(0);
    this.#head = 0;
    this.#size = 0;
    this.#bytes = 0;
    this.#oldestIndex = index + 1;
    this.closeAll(
      `the node installed a snapshot at index ${index}; changes up to it are not in its history`,
    );
  }

  /**
   * Ends every subscription, and every later one at once (the node stops): their streams end
   * cleanly before the server goes away.
   */
  close(reason: string): void {
    this.#closed ??= reason;
    this.closeAll(reason);
  }

  /** Ends every subscription there is now. */
  closeAll(reason: string): void {
    const sinks = [...this.#sinks];
    this.#sinks.clear();
    for (const sink of sinks) sink.close(reason);
  }

  /** Removes the oldest event. */
  #dropOldest(): void {
    this.#bytes -= this.#costs[this.#head]!;
    this.#ring[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#ring.length;
    this.#size--;
  }

  #at(i: number): KvEvent | undefined {
    return this.#ring[(this.#head + i) % this.#ring.length];
  }

  #grow(): void {
    const next = new Array<KvEvent | undefined>(Math.min(this.#capacity, this.#ring.length * 2));
    const costs = new Array<number>(next.length).fill(0);
    for (let i = 0; i < this.#size; i++) {
      next[i] = this.#at(i);
      costs[i] = this.#costs[(this.#head + i) % this.#ring.length]!;
    }
    this.#ring = next;
    this.#costs = costs;
    this.#head = 0;
  }
}
