/**
 * The deterministic key-value state machine: commands are applied in log order to a map kept in
 * key order. Given the same entries, every node ends in the same state, and gives the same
 * results.
 *
 * Every key carries its revision: `createIndex` (the log index of the write that created it),
 * `modIndex` (of the last write to it) and `version` (how many writes since it was created, 1
 * for a new key). A delete removes the key with its revision; writing it again starts afresh.
 *
 * Commands travel in log entries in a small binary form (see `command.ts`, re-exported here).
 * Besides puts and deletes there are conditional ones (compare-and-set on `mod_index`), range
 * deletes, transactions, and idempotent commands, whose outcomes the state machine remembers
 * (bounded and expiring, as the entry itself says) so that a retry is answered, not applied
 * again.
 *
 * Leases: a lease (granted by an entry, whose index is its id) has a time to live; a put can
 * attach its key to one (a later put without it, or a delete, detaches the key again). Revoking a
 * lease, or its expiry (decided by the leader and proposed as an entry, see `raft_node.ts`),
 * deletes every key attached to it in that one entry. The state machine keeps no time: it only
 * holds which leases exist, their time to live and their keys.
 *
 * @module
 */

import {
  type Compare,
  decodeCommand,
  encodeCommand,
  type KeyRange,
  type KvCommand,
  type LeaseRef,
  type PlainCommand,
  type TxnOp,
} from "./command.ts";
import { compareKeys } from "./key_order.ts";
import { EntryMap, type EntryMapVersion, type KvEntry, type Revision } from "./entry_map.ts";
import {
  DEFAULT_HISTORY_BYTES,
  DEFAULT_HISTORY_EVENTS,
  EventHistory,
  type KvEventType,
} from "./events.ts";
import { decodeUtf8, utf8Length } from "../util/utf8.ts";

export {
  type Compare,
  type CompareOp,
  type CompareTarget,
  decodeCommand,
  encodeCommand,
  type IdempotentCommand,
  type KeyRange,
  type KvCommand,
  type LeaseRef,
  type PlainCommand,
  type TxnOp,
} from "./command.ts";
export { compareKeys } from "./key_order.ts";
export { EntryMap, EntryMapBuilder, type KvEntry } from "./entry_map.ts";
export {
  DEFAULT_HISTORY_EVENTS,
  EventHistory,
  type EventSink,
  HistoryCompactedError,
  type KvEvent,
  type KvEventType,
} from "./events.ts";

/** The outcome of one operation of a transaction. */
export type TxnOpResult =
  | {
    op: "put";
    key: string;
    createIndex: number;
    modIndex: number;
    version: number;
    /** The lease the key was attached to, if the put named one. */
    lease?: number;
  }
  | { op: "delete"; key: string; deleted: boolean }
  | { op: "get"; key: string; entry: KvEntry | null };

/**
 * What applying a command produced. `index` is the log index where it took effect; a result
 * replayed for a repeated idempotency key says `replayed: true` and keeps the first `index`.
 */
export type KvResult =
  & (
    | {
      op: "put";
      index: number;
      createIndex: number;
      modIndex: number;
      version: number;
      /** The lease the key is attached to, if any. */
      lease?: number;
    }
    /** A put named a lease that does not exist (never granted, revoked or expired). */
    | { op: "lease_not_found"; index: number; lease: number }
    | { op: "lease_grant"; index: number; id: number; ttlMs: number }
    /** `revoked`: the leases that existed and ended; `deleted`: their keys, now gone. */
    | { op: "lease_revoke"; index: number; revoked: number[]; deleted: string[] }
    | { op: "delete"; index: number; deleted: boolean }
    /** A compare-and-set whose condition did not hold: nothing changed. */
    | { op: "cas_failed"; index: number; key: string; current: KvEntry | null }
    | { op: "delete_range"; index: number; deleted: number }
    | { op: "txn"; index: number; succeeded: boolean; results: TxnOpResult[] }
    /** The idempotency key was used for a different command: nothing changed. */
    | { op: "idempotency_mismatch"; index: number; id: string }
  )
  & { replayed?: true };

/** A read of a range of keys (see {@linkcode KvStateMachine.range}). */
export interface RangeQuery {
  /** The keys. */
  range: KeyRange;
  /** Start at this key instead (a continuation); it must lie in the range. */
  from?: string;
  /** Most entries returned. */
  limit: number;
  /** Stop after the entry that brings keys and values to this many UTF-16 units (at least one entry). */
  maxChars: number;
  /** Count the entries of the whole range (from `from`) instead of returning them. */
  countOnly?: boolean;
}

/** What {@linkcode KvStateMachine.range} found. */
export interface RangeResult {
  /** The entries, in key order (empty for `countOnly`). */
  entries: KvEntry[];
  /** The key to continue from, or null when the range has no more. */
  next: string | null;
  /** For `countOnly`, how many entries there are; else the number returned. */
  count: number;
}

/**
 * A consistent view of the state at one index, readable while later entries keep being applied
 * (the map is copy-on-write, see `entry_map.ts`).
 */
export interface StateView {
  /** The applied index the view shows. */
  readonly index: number;
  /** The number of entries in the view. */
  readonly count: number;
  /** The view's entries, in key order; may be read slowly, across many event-loop turns. */
  entries(): Iterable<KvEntry>;
  /** The remembered idempotent outcomes, each encoded (opaque to storage). */
  readonly sessions: readonly Uint8Array[];
  /** The leases with their keys, each encoded (opaque to storage). */
  readonly leases: readonly Uint8Array[];
  /** Releases the view. */
  close(): void;
}

/** What a snapshot holds for the state machine: its entries and remembered outcomes. */
export interface KvSnapshotData {
  /**
   * The entries (any order; a snapshot written by this version has them in key order), or a map
   * built from them as the snapshot was read (see `entry_map.ts`), which the state machine then owns.
   */
  entries: Iterable<KvEntry>;
  /** The encoded idempotent outcomes, oldest first. */
  sessions: Iterable<Uint8Array>;
  /** The encoded leases with their keys (none in snapshots written before leases). */
  leases?: Iterable<Uint8Array>;
}

/** A lease as the state machine holds it. */
export interface LeaseInfo {
  /** Its id: the index of the entry that granted it. */
  readonly id: number;
  /** Its time to live in milliseconds. */
  readonly ttlMs: number;
  /** The keys attached to it, in key order. */
  readonly keys: string[];
}

interface _Lease {
  id: number;
  ttlMs: number;
  keys: Set<string>;
}

/** A remembered idempotent outcome. */
interface _Session {
  id: string;
  /** A hash of the command's bytes, to tell a retry from a reuse of the key. */
  fingerprint: number;
  /** When it is forgotten, on the leaders' clocks (milliseconds since the epoch). */
  expiresAt: number;
  /** The outcome, as JSON. */
  result: string;
  /** The record as stored in snapshots. */
  bytes: Uint8Array;
}

const _encoder = new TextEncoder();

/**
 * What one lease counts for in {@linkcode KvStateMachine.dataBytes}, and so against the quota.
 * A lease costs a node about 400 bytes of memory, about 6 times this, as a key and value cost
 * about 6 times their UTF-8 bytes: so the rule "memory about six times the quota" holds for
 * leases too, and writers that only grant leases cannot grow the nodes past what the quota
 * allows, as etcd's quota counts its leases with the rest of its database.
 */
export const LEASE_BYTES = 64;

/**
 * At least what `cmd` could add to {@linkcode KvStateMachine.dataBytes}, in constant time (a
 * UTF-16 unit is at most 3 UTF-8 bytes): a write this bound keeps within a quota needs no closer
 * look with {@linkcode KvStateMachine.growth}.
 *
 * @param cmd The command.
 * @returns The bound in bytes; 0 for a command that puts nothing and grants no lease.
 */
export function growthBound(cmd: PlainCommand): number {
  const branch = (ops: readonly TxnOp[]) =>
    ops.reduce((sum, op) => op.op === "put" ? sum + 3 * (op.key.length + op.value.length) : sum, 0);
  if (cmd.op === "put") return 3 * (cmd.key.length + cmd.value.length) + _granted(cmd);
  if (cmd.op === "txn") return branch(cmd.success) + branch(cmd.failure);
  if (cmd.op === "lease_grant") return LEASE_BYTES;
  return 0;
}

/** The bytes of the lease a put grants with itself (`lease: {ttlMs}`), else 0. */
function _granted(cmd: PlainCommand & { op: "put" }): number {
  return cmd.lease !== undefined && "ttlMs" in cmd.lease ? LEASE_BYTES : 0;
}

/** The key-value map in key order, its revisions, and the index of the last entry applied. */
export class KvStateMachine {
  #data = new EntryMap();
  /**
   * The newest changes, one event per key changed, that watches are served from (see
   * `events.ts`).
   */
  readonly events: EventHistory;

  /**
   * Creates an empty state machine.
   *
   * @param options `historyEvents`: the most change events kept for watches (default
   * {@linkcode DEFAULT_HISTORY_EVENTS}); `historyBytes`: the most bytes of them (default
   * {@linkcode DEFAULT_HISTORY_BYTES}).
   */
  constructor(options: { historyEvents?: number; historyBytes?: number } = {}) {
    this.events = new EventHistory(
      options.historyEvents ?? DEFAULT_HISTORY_EVENTS,
      options.historyBytes ?? DEFAULT_HISTORY_BYTES,
    );
  }
  /** The index of the last log entry applied (including no-ops). */
  appliedIndex = 0;
  /** Remembered idempotent outcomes by id, oldest first (a Map keeps insertion order). */
  #sessions = new Map<string, _Session>();
  #sessionBytes = 0;
  /** The leases by id. */
  #leases = new Map<number, _Lease>();
  /** Which lease each attached key belongs to. */
  #keyLease = new Map<string, number>();

  /** The number of keys. */
  get size(): number {
    return this.#data.size;
  }

  /**
   * The size of the data, as the quota counts it: the UTF-8 bytes of every key and value, and
   * {@linkcode LEASE_BYTES} for each lease.
   */
  get dataBytes(): number {
    return this.#data.bytes + LEASE_BYTES * this.#leases.size;
  }

  /**
   * How many bytes `cmd` would add to {@linkcode KvStateMachine.dataBytes} at most if it were
   * applied now: for each key it puts, its key and value bytes less those of the entry there (a
   * transaction counts the branch that adds more), and {@linkcode LEASE_BYTES} for a lease it
   * grants. Deletes, revokes and commands that put nothing add 0: a full store can always be
   * emptied.
   */
  growth(cmd: PlainCommand): number {
    const put = (key: string, value: string) =>
      utf8Length(key) + utf8Length(value) - this.#data.bytesOf(key);
    const branch = (ops: readonly TxnOp[]) => {
      let sum = 0;
      for (const op of ops) if (op.op === "put") sum += Math.max(0, put(op.key, op.value));
      return sum;
    };
    if (cmd.op === "put") return Math.max(0, put(cmd.key, cmd.value)) + _granted(cmd);
    if (cmd.op === "txn") return Math.max(branch(cmd.success), branch(cmd.failure));
    if (cmd.op === "lease_grant") return LEASE_BYTES;
    return 0;
  }

  /** The number of remembered idempotent outcomes. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /**
   * What applying `command` with idempotency key `id` at wall-clock time `now` would answer from
   * the remembered outcomes, without applying anything: the first outcome (`replayed: true`), or
   * `idempotency_mismatch` (at the applied index) when the key was first used for another
   * command; `null` when no outcome of `id` is remembered or it expired by `now` (applying would
   * run the command).
   */
  remembered(id: string, command: PlainCommand, now: number): KvResult | null {
    const seen = this.#sessions.get(id);
    if (seen === undefined || seen.expiresAt <= now) return null;
    return _answer(seen, _hash(encodeCommand(command)), this.appliedIndex);
  }

  /** The remembered idempotent outcomes, oldest first, encoded as in snapshots. */
  sessionRecords(): Uint8Array[] {
    return [...this.#sessions.values()].map((s) => s.bytes);
  }

  /** The number of leases. */
  get leaseCount(): number {
    return this.#leases.size;
  }

  /** The lease `id` with its keys, or null if there is none. */
  lease(id: number): LeaseInfo | null {
    const l = this.#leases.get(id);
    return l === undefined ? null : _leaseInfo(l);
  }

  /** Every lease, by id. */
  leases(): LeaseInfo[] {
    return [...this.#leases.values()].sort((a, b) => a.id - b.id).map(_leaseInfo);
  }

  /** The lease `key` is attached to, or null. */
  leaseOf(key: string): number | null {
    return this.#keyLease.get(key) ?? null;
  }

  /** The leases, encoded as in snapshots (in id order). */
  leaseRecords(): Uint8Array[] {
    return this.leases().map(_encodeLease);
  }

  /** Opens a consistent view of the current state (see {@linkcode StateView}). */
  view(): StateView {
    const version: EntryMapVersion = this.#data.freeze();
    return {
      index: this.appliedIndex,
      count: version.size,
      entries: () => version.values(),
      sessions: this.sessionRecords(),
      leases: this.leaseRecords(),
      close: () => {},
    };
  }

  /**
   * Applies one command at `index`, which must be `appliedIndex + 1` (see {@linkcode advance}).
   * Accepts the command's bytes as well (decoded here).
   */
  apply(index: number, command: KvCommand | Uint8Array): KvResult {
    this.advance(index);
    const cmd = command instanceof Uint8Array ? decodeCommand(command) : command;
    if (cmd.op !== "idempotent") return this.#applyPlain(index, cmd);

    const now = cmd.at;
    // Forget outcomes that expired, oldest first (a later one may expire sooner: it is dropped
    // when found, or when it reaches the front).
    for (const s of this.#sessions.values()) {
      if (s.expiresAt > now) break;
      this.#forget(s);
    }
    const fingerprint = _hash(
      command instanceof Uint8Array ? _innerBytes(command) : encodeCommand(cmd.command),
    );
    const seen = this.#sessions.get(cmd.id);
    if (seen !== undefined) {
      if (seen.expiresAt > now) return _answer(seen, fingerprint, index);
      this.#forget(seen);
    }
    const result = this.#applyPlain(index, cmd.command);
    const text = JSON.stringify(_remembered(result));
    const session: _Session = {
      id: cmd.id,
      fingerprint,
      expiresAt: now + cmd.ttlMs,
      result: text,
      bytes: _encodeSession(cmd.id, fingerprint, now + cmd.ttlMs, text),
    };
    this.#sessions.set(cmd.id, session);
    this.#sessionBytes += session.bytes.length;
    for (const s of this.#sessions.values()) {
      if (this.#sessions.size <= cmd.maxKeys && this.#sessionBytes <= cmd.maxBytes) break;
      this.#forget(s);
    }
    return result;
  }

  #forget(s: _Session): void {
    this.#sessions.delete(s.id);
    this.#sessionBytes -= s.bytes.length;
  }

  #applyPlain(index: number, cmd: PlainCommand): KvResult {
    switch (cmd.op) {
      case "put": {
        const current = this.#data.revision(cmd.key) ?? null;
        if (cmd.cas !== undefined && (current?.modIndex ?? 0) !== cmd.cas) {
          return { op: "cas_failed", index, key: cmd.key, current: this.entry(cmd.key) };
        }
        const lease = cmd.lease === undefined ? null : this.#leaseFor(index, cmd.lease);
        if (lease === undefined) {
          return { op: "lease_not_found", index, lease: (cmd.lease as { id: number }).id };
        }
        const e = this.#put(index, cmd.key, cmd.value, current, lease);
        const result: KvResult = {
          op: "put",
          index,
          createIndex: e.createIndex,
          modIndex: e.modIndex,
          version: e.version,
        };
        if (lease !== null) result.lease = lease.id;
        return result;
      }
      case "lease_grant": {
        this.#leases.set(index, { id: index, ttlMs: cmd.ttlMs, keys: new Set() });
        return { op: "lease_grant", index, id: index, ttlMs: cmd.ttlMs };
      }
      case "lease_revoke":
        return this.#revoke(index, cmd.ids);
      case "delete": {
        if (cmd.cas !== undefined) {
          const current = this.#data.get(cmd.key) ?? null;
          if ((current?.modIndex ?? 0) !== cmd.cas) {
            return { op: "cas_failed", index, key: cmd.key, current };
          }
        }
        return { op: "delete", index, deleted: this.#delete(index, cmd.key, "delete") };
      }
      case "delete_range": {
        const keys: string[] = [];
        for (const e of _inRange(this.#data.values(_start(cmd.range)), cmd.range)) keys.push(e.key);
        for (const k of keys) this.#delete(index, k, "delete");
        return { op: "delete_range", index, deleted: keys.length };
      }
      case "txn": {
        const succeeded = cmd.compare.every((c) => this.#holds(c));
        const branch = succeeded ? cmd.success : cmd.failure;
        // A put naming a lease that does not exist fails the whole transaction, as it fails a
        // put: nothing is written.
        for (const op of branch) {
          if (op.op === "put" && op.lease !== undefined && !this.#leases.has(op.lease)) {
            return { op: "lease_not_found", index, lease: op.lease };
          }
        }
        const results = branch.map((op) => this.#txnOp(index, op));
        return { op: "txn", index, succeeded, results };
      }
    }
  }

  /**
   * The lease a put attaches to: an existing one (undefined if there is none), or a new one
   * granted at `index`.
   */
  #leaseFor(index: number, ref: LeaseRef): _Lease | undefined {
    if ("id" in ref) return this.#leases.get(ref.id);
    const lease: _Lease = { id: index, ttlMs: ref.ttlMs, keys: new Set() };
    this.#leases.set(index, lease);
    return lease;
  }

  /** Detaches `key` from its lease, if any. */
  #detach(key: string): void {
    const id = this.#keyLease.get(key);
    if (id === undefined) return;
    this.#keyLease.delete(key);
    this.#leases.get(id)?.keys.delete(key);
  }

  /**
   * Ends the leases `ids` (unknown ones are skipped) and deletes their keys: the one place where
   * keys go because their lease ended, by revocation or expiry alike.
   */
  #revoke(index: number, ids: number[]): KvResult {
    const revoked: number[] = [];
    const deleted: string[] = [];
    for (const id of ids) {
      const lease = this.#leases.get(id);
      if (lease === undefined) continue;
      this.#leases.delete(id);
      revoked.push(id);
      for (const key of [...lease.keys].sort(compareKeys)) {
        // Revoked or expired alike, watchers see the key go as an `expire` change.
        if (this.#delete(index, key, "expire")) deleted.push(key);
      }
    }
    return { op: "lease_revoke", index, revoked, deleted };
  }

  #put(
    index: number,
    key: string,
    value: string,
    current: Revision | null,
    lease: _Lease | null = null,
  ): KvEntry {
    this.#detach(key);
    if (lease !== null) {
      lease.keys.add(key);
      this.#keyLease.set(key, lease.id);
    }
    const e: KvEntry = current === null
      ? { key, value, createIndex: index, modIndex: index, version: 1 }
      : {
        key,
        value,
        createIndex: current.createIndex,
        modIndex: index,
        version: current.version + 1,
      };
    this.#data.set(e);
    this.events.record(index, "put", key, value);
    return e;
  }

  /**
   * Deletes `key` at `index`, detaching it from its lease and recording the change (`delete`, or
   * `expire` for a key whose lease ended). Every deletion goes through here.
   *
   * @returns Whether the key existed.
   */
  #delete(index: number, key: string, type: Exclude<KvEventType, "put">): boolean {
    this.#detach(key);
    if (!this.#data.delete(key)) return false;
    this.events.record(index, type, key, null);
    return true;
  }

  #holds(c: Compare): boolean {
    const e = this.#data.get(c.key);
    if (c.target === "exists") return (e !== undefined) === (c.op === "=" ? c.value : !c.value);
    let d: number;
    if (c.target === "value") {
      if (e === undefined) return false;
      d = compareKeys(e.value, c.value);
    } else {
      const field = c.target === "version"
        ? e?.version
        : c.target === "mod_index"
        ? e?.modIndex
        : e?.createIndex;
      d = (field ?? 0) - c.value;
    }
    switch (c.op) {
      case "=":
        return d === 0;
      case "!=":
        return d !== 0;
      case "<":
        return d < 0;
      case ">":
        return d > 0;
    }
  }

  #txnOp(index: number, op: TxnOp): TxnOpResult {
    switch (op.op) {
      case "put": {
        // The lease exists: the transaction checked every put's before running any.
        const lease = op.lease === undefined ? null : this.#leases.get(op.lease)!;
        const e = this.#put(index, op.key, op.value, this.#data.revision(op.key) ?? null, lease);
        return {
          op: "put",
          key: op.key,
          createIndex: e.createIndex,
          modIndex: e.modIndex,
          version: e.version,
          ...(lease === null ? {} : { lease: lease.id }),
        };
      }
      case "delete":
        return { op: "delete", key: op.key, deleted: this.#delete(index, op.key, "delete") };
      case "get":
        return { op: "get", key: op.key, entry: this.#data.get(op.key) ?? null };
    }
  }

  /**
   * Records that the entry at `index` (a no-op or a command) was applied. Entries come one by
   * one in log order: anything but `appliedIndex + 1` (a repeated, older or skipped entry) throws
   * before the state changes.
   */
  advance(index: number): void {
    if (index !== this.appliedIndex + 1) {
      throw new RangeError(
        `entry ${index} applied after ${this.appliedIndex}: out of order (expected ${
          this.appliedIndex + 1
        })`,
      );
    }
    this.appliedIndex = index;
  }

  /** The entry under `key`, or null. */
  entry(key: string): KvEntry | null {
    return this.#data.get(key) ?? null;
  }

  /** The value under `key`, or null. */
  get(key: string): string | null {
    return this.#data.get(key)?.value ?? null;
  }

  /** Every entry in key order: read it at once (the next apply may change what it walks). */
  entries(): IterableIterator<KvEntry> {
    return this.#data.values();
  }

  /**
   * Reads a range in key order. The cost is proportional to what it returns (or counts), not to
   * the number of keys: the map finds the start in O(log n) and walks on from there.
   */
  range(q: RangeQuery): RangeResult {
    const first = q.from !== undefined && compareKeys(q.from, _start(q.range)) > 0
      ? q.from
      : _start(q.range);
    const it = _inRange(this.#data.values(first), q.range);
    if (q.countOnly) {
      let count = 0;
      for (const _ of it) count++;
      return { entries: [], next: null, count };
    }
    const entries: KvEntry[] = [];
    let chars = 0;
    for (const e of it) {
      if (entries.length >= q.limit || (entries.length > 0 && chars >= q.maxChars)) {
        return { entries, next: e.key, count: entries.length };
      }
      entries.push(e);
      chars += e.key.length + e.value.length;
    }
    return { entries, next: null, count: entries.length };
  }

  /**
   * Replaces the whole state (after loading a snapshot). Views opened before keep the version
   * they were reading, which nothing changes.
   *
   * @throws {RangeError} If a key appears twice, or a session record is malformed.
   */
  reset(data: KvSnapshotData, appliedIndex: number): void {
    const map = data.entries instanceof EntryMap ? data.entries : _mapOf(data.entries);
    const sessions = new Map<string, _Session>();
    let bytes = 0;
    for (const record of data.sessions) {
      const s = _decodeSession(record);
      sessions.set(s.id, s);
      bytes += s.bytes.length;
    }
    const leases = new Map<number, _Lease>();
    const keyLease = new Map<string, number>();
    for (const record of data.leases ?? []) {
      const l = _decodeLease(record);
      if (leases.has(l.id)) throw new RangeError(`lease ${l.id} appears twice`);
      leases.set(l.id, l);
      for (const k of l.keys) {
        if (keyLease.has(k)) throw new RangeError(`key ${JSON.stringify(k)} is in two leases`);
        keyLease.set(k, l.id);
      }
    }
    this.#data = map;
    this.#sessions = sessions;
    this.#sessionBytes = bytes;
    this.#leases = leases;
    this.#keyLease = keyLease;
    this.appliedIndex = appliedIndex;
    this.events.reset(appliedIndex);
  }
}

/** A map of `entries`, which are in key order unless an old snapshot says otherwise. */
function _mapOf(iterable: Iterable<KvEntry>): EntryMap {
  const entries = Array.isArray(iterable) ? iterable as KvEntry[] : [...iterable];
  try {
    return EntryMap.fromSorted(entries);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
  }
  const sorted = entries.slice().sort((a, b) => compareKeys(a.key, b.key));
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i - 1]!.key === sorted[i]!.key) {
      throw new RangeError(`key ${JSON.stringify(sorted[i]!.key)} appears twice`);
    }
  }
  return EntryMap.fromSorted(sorted);
}

/** The first key a range can hold. */
function _start(range: KeyRange): string {
  return "prefix" in range ? range.prefix : range.start;
}

/** The entries of `it` (which starts at or after the range's start) until the range ends. */
function* _inRange(it: Iterator<KvEntry>, range: KeyRange): Generator<KvEntry> {
  const prefix = "prefix" in range ? range.prefix : null;
  const end = "prefix" in range ? null : range.end;
  for (let r = it.next(); !r.done; r = it.next()) {
    const k = r.value.key;
    if (prefix !== null ? !k.startsWith(prefix) : end !== null && compareKeys(k, end) >= 0) {
      return;
    }
    yield r.value;
  }
}

/**
 * The longest value (in UTF-16 code units) a remembered outcome keeps: a 412's current value and a
 * transaction's get results may be as long as any value, and a few failed compare-and-sets on a
 * large key would otherwise push every other outcome out of `maxBytes` within seconds (and a retry
 * after that is applied again). Longer ones are left out (`valueOmitted`).
 */
export const REMEMBERED_VALUE_CHARS = 1024;

/** `result` as it is remembered: values longer than {@linkcode REMEMBERED_VALUE_CHARS} left out. */
function _remembered(result: KvResult): KvResult {
  const trim = (e: KvEntry | null): KvEntry | null =>
    e === null || e.value.length <= REMEMBERED_VALUE_CHARS
      ? e
      : { ...e, value: "", valueOmitted: true };
  if (result.op === "cas_failed") return { ...result, current: trim(result.current) };
  if (result.op === "txn") {
    return {
      ...result,
      results: result.results.map((r) => r.op === "get" ? { ...r, entry: trim(r.entry) } : r),
    };
  }
  return result;
}

/**
 * The answer to a repeat of the command whose outcome `seen` remembers (the same fingerprint), or
 * to another command under its key, at `index`.
 */
function _answer(seen: _Session, fingerprint: number, index: number): KvResult {
  if (seen.fingerprint !== fingerprint) return { op: "idempotency_mismatch", index, id: seen.id };
  return { ...(JSON.parse(seen.result) as KvResult), replayed: true };
}

/**
 * A 53-bit hash (cyrb53) of a command's bytes, the same on every replica: it tells a retry of
 * an idempotent command from a different command sent with the same key.
 */
function _hash(data: Uint8Array): number {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < data.length; i++) {
    const c = data[i]!;
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/** The inner command's bytes of an encoded idempotent command: after the fixed header. */
function _innerBytes(bytes: Uint8Array): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const idLen = view.getUint32(1);
  return bytes.subarray(1 + 4 + idLen + 8 + 4 + 4 + 4);
}

/** A session record: id (u32 length + UTF-8), f64 fingerprint, f64 expiresAt, the result JSON. */
function _encodeSession(id: string, fingerprint: number, expiresAt: number, result: string) {
  const idBytes = _encoder.encode(id);
  const res = _encoder.encode(result);
  const out = new Uint8Array(4 + idBytes.length + 16 + res.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, idBytes.length);
  out.set(idBytes, 4);
  view.setFloat64(4 + idBytes.length, fingerprint);
  view.setFloat64(12 + idBytes.length, expiresAt);
  out.set(res, 20 + idBytes.length);
  return out;
}

function _decodeSession(bytes: Uint8Array): _Session {
  const fail = (why: string): never => {
    throw new RangeError(`malformed idempotency record (${bytes.length} bytes): ${why}`);
  };
  if (bytes.length < 20) fail("too short");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const idLen = view.getUint32(0);
  if (20 + idLen > bytes.length) fail(`id length ${idLen} runs past the record`);
  let id = "";
  let result = "";
  try {
    id = decodeUtf8(bytes, 4, 4 + idLen);
    result = decodeUtf8(bytes, 20 + idLen, bytes.length);
    JSON.parse(result);
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e));
  }
  return {
    id,
    fingerprint: view.getFloat64(4 + idLen),
    expiresAt: view.getFloat64(12 + idLen),
    result,
    bytes: bytes.slice(),
  };
}

function _leaseInfo(l: _Lease): LeaseInfo {
  return { id: l.id, ttlMs: l.ttlMs, keys: [...l.keys].sort(compareKeys) };
}

/** A lease record: u64 id (two u32), u32 ttl (ms), u32 n, n keys (u32 length + UTF-8). */
function _encodeLease(l: LeaseInfo): Uint8Array {
  const keys = l.keys.map((k) => _encoder.encode(k));
  const out = new Uint8Array(16 + keys.reduce((n, k) => n + 4 + k.length, 0));
  const view = new DataView(out.buffer);
  view.setUint32(0, Math.floor(l.id / 2 ** 32));
  view.setUint32(4, l.id >>> 0);
  view.setUint32(8, l.ttlMs);
  view.setUint32(12, keys.length);
  let at = 16;
  for (const k of keys) {
    view.setUint32(at, k.length);
    out.set(k, at + 4);
    at += 4 + k.length;
  }
  return out;
}

function _decodeLease(bytes: Uint8Array): _Lease {
  const fail = (why: string): never => {
    throw new RangeError(`malformed lease record (${bytes.length} bytes): ${why}`);
  };
  if (bytes.length < 16) fail("too short");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const id = view.getUint32(0) * 2 ** 32 + view.getUint32(4);
  if (!Number.isSafeInteger(id)) fail(`id ${id} is above 2^53-1`);
  const ttlMs = view.getUint32(8);
  const keys = new Set<string>();
  let at = 16;
  for (let n = view.getUint32(12); n > 0; n--) {
    if (at + 4 > bytes.length) fail("a key runs past the record");
    const len = view.getUint32(at);
    if (at + 4 + len > bytes.length) fail("a key runs past the record");
    try {
      keys.add(decodeUtf8(bytes, at + 4, at + 4 + len));
    } catch (e) {
      fail(e instanceof Error ? e.message : String(e));
    }
    at += 4 + len;
  }
  if (at !== bytes.length) fail("trailing bytes");
  return { id, ttlMs, keys };
}
