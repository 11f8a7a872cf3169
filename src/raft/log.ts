/**
 * The in-memory view of a node's Raft log: every entry after the last snapshot, with the marks
 * that say how far it is durable, committed and handed out for applying.
 *
 * The core keeps the whole uncompacted log in memory; the driver keeps the durable copy (the WAL)
 * and trims both after a snapshot with {@linkcode RaftLog.compact}.
 *
 * @module
 */

import { RaftInvariantError } from "./errors.ts";
import type { Entry, SnapshotMeta } from "./types.ts";

/**
 * The log and its progress marks.
 *
 * Invariants (checked where they can break, with the values in the message):
 * - `snapIndex <= applied <= committed <= lastIndex()`
 * - `applied <= stable` (only durable entries are applied)
 * - `stable <= handed <= lastIndex()`
 * - `entries[i].index === snapIndex + 1 + i`
 */
export class RaftLog {
  /** Index of the last entry covered by the snapshot (0 = none). */
  snapIndex = 0;
  /** Term of that entry. */
  snapTerm = 0;
  /** Entries after the snapshot. */
  entries: Entry[] = [];
  /** Highest index known committed. */
  committed = 0;
  /** Highest index handed to the driver for applying. */
  applied = 0;
  /** Highest index known durable on this node. */
  stable = 0;
  /** Highest index handed to the driver for persisting. */
  handed = 0;

  /**
   * Creates a log from what the driver recovered from disk (all of it durable). The state machine
   * is assumed restored from `snapshot`, so everything after it is applied again.
   */
  constructor(snapshot: SnapshotMeta | null, entries: Entry[]) {
    if (snapshot) {
      this.snapIndex = snapshot.index;
      this.snapTerm = snapshot.term;
    }
    let expected = this.snapIndex + 1;
    for (const e of entries) {
      if (e.index < expected) continue; // already inside the snapshot
      if (e.index !== expected) {
        throw new RaftInvariantError(
          `recovered log has a gap: expected index ${expected}, found ${e.index}`,
        );
      }
      this.entries.push(e);
      expected++;
    }
    this.committed = this.snapIndex;
    this.applied = this.snapIndex;
    this.stable = this.lastIndex();
    this.handed = this.stable;
  }

  /** The index of the first entry held (one past the snapshot). */
  firstIndex(): number {
    return this.snapIndex + 1;
  }

  /** The index of the last entry (the snapshot index when empty). */
  lastIndex(): number {
    return this.snapIndex + this.entries.length;
  }

  /** The term of the last entry. */
  lastTerm(): number {
    return this.term(this.lastIndex()) ?? 0;
  }

  /**
   * The term of the entry at `index`: the snapshot's term at the snapshot index, `undefined` when
   * the entry is compacted away or beyond the end.
   */
  term(index: number): number | undefined {
    if (index === this.snapIndex) return this.snapTerm;
    if (index < this.snapIndex || index > this.lastIndex()) return undefined;
    return this.entries[index - this.snapIndex - 1]!.term;
  }

  /** Whether the entry at `index` exists with term `term` (the log-matching check). */
  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Whether a log ending at (`term`, `index`) is at least as up to date as this one (§5.4.1). */
  isUpToDate(index: number, term: number): boolean {
    const lastTerm = this.lastTerm();
    return term > lastTerm || (term === lastTerm && index >= this.lastIndex());
  }

  /** Entries in [lo, hi), capped to about `maxBytes` of data (at least one entry). */
  slice(lo: number, hi: number, maxBytes = Infinity): Entry[] {
    if (lo <= this.snapIndex) {
      throw new RaftInvariantError(
        `slice(${lo}, ${hi}) reaches into the snapshot at ${this.snapIndex}`,
      );
    }
    const last = this.lastIndex();
    if (hi > last + 1) {
      throw new RaftInvariantError(`slice(${lo}, ${hi}) is past the last index ${last}`);
    }
    const start = lo - this.snapIndex - 1;
    const end = hi - this.snapIndex - 1;
    if (maxBytes === Infinity) return this.entries.slice(start, end);
    let size = 0;
    let i = start;
    for (; i < end; i++) {
      size += this.entries[i]!.data.byteLength + 32;
      if (size > maxBytes && i > start) break;
    }
    return this.entries.slice(start, i);
  }

  /**
   * Appends the leader's entries after a successful log-matching check at `prevIndex`: skips those
   * already present, truncates at the first conflict and appends the rest. Returns the index of
   * the last new entry (`prevIndex + entries.length`), or null, changing nothing, when the first
   * conflict is at or below the commit index: committed entries are never replaced, and no
   * correct leader sends such an append (the caller refuses it). `entries` must be contiguous
   * from `prevIndex + 1`.
   */
  maybeAppend(prevIndex: number, entries: Entry[]): number | null {
    const lastNew = prevIndex + entries.length;
    let i = 0;
    for (; i < entries.length; i++) {
      const e = entries[i]!;
      const ours = this.term(e.index);
      if (ours === undefined && e.index <= this.snapIndex) continue; // compacted: it matched
      if (ours !== e.term) break;
    }
    if (i < entries.length) {
      if (entries[i]!.index <= this.committed) return null;
      this.truncateAndAppend(entries.slice(i));
    }
    return lastNew;
  }

  /**
   * The first index at or below the commit index where an append after (`prevIndex`, `prevTerm`)
   * carrying `entries` disagrees with this log, or 0 if there is none. Committed entries are in
   * every later leader's log, so a current leader's append never disagrees there: one that does
   * comes from a buggy or hostile peer. Compacted entries are not checked (their terms are gone).
   */
  committedConflict(prevIndex: number, prevTerm: number, entries: readonly Entry[]): number {
    if (prevIndex <= this.committed && prevIndex >= this.snapIndex) {
      if (this.term(prevIndex) !== prevTerm) return prevIndex;
    }
    for (const e of entries) {
      if (e.index > this.committed) break;
      if (e.index <= this.snapIndex) continue;
      if (this.term(e.index) !== e.term) return e.index;
    }
    return 0;
  }

  /** Appends entries, first cutting the log back to just before the first one's index. */
  truncateAndAppend(entries: Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    if (first <= this.snapIndex || first > this.lastIndex() + 1) {
      throw new RaftInvariantError(
        `cannot append at ${first}: log holds ${this.firstIndex()}..${this.lastIndex()}`,
      );
    }
    if (first <= this.committed) {
      throw new RaftInvariantError(`cannot truncate at ${first}: commit is ${this.committed}`);
    }
    this.entries.length = first - this.snapIndex - 1;
    for (const e of entries) this.entries.push(e);
    if (this.stable >= first) this.stable = first - 1;
    if (this.handed >= first) this.handed = first - 1;
  }

  /** Raises the commit index to `index`; never lowers it. */
  commitTo(index: number): void {
    if (index <= this.committed) return;
    if (index > this.lastIndex()) {
      throw new RaftInvariantError(
        `commit ${index} is past the last index ${this.lastIndex()}`,
      );
    }
    this.committed = index;
  }

  /** Records that the driver made entries up to `index` durable, if the entry still has `term`. */
  stableTo(index: number, term: number): void {
    if (this.term(index) === term && index > this.stable) {
      this.stable = Math.min(index, this.handed);
    }
  }

  /** Takes the entries not yet handed out for persisting, and marks them handed out. */
  takeUnstable(): Entry[] {
    const last = this.lastIndex();
    if (this.handed >= last) return [];
    const out = this.slice(this.handed + 1, last + 1);
    this.handed = last;
    return out;
  }

  /** Takes committed, durable entries not yet handed out for applying, and marks them. */
  takeCommitted(maxBytes = Infinity): Entry[] {
    const hi = Math.min(this.committed, this.stable);
    if (this.applied >= hi) return [];
    const out = this.slice(this.applied + 1, hi + 1, maxBytes);
    this.applied += out.length;
    return out;
  }

  /** Replaces the whole log with a snapshot received from the leader. */
  restore(meta: SnapshotMeta): void {
    this.entries = [];
    this.snapIndex = meta.index;
    this.snapTerm = meta.term;
    this.committed = meta.index;
    this.applied = meta.index;
    this.stable = meta.index;
    this.handed = meta.index;
  }

  /**
   * Drops entries up to `index` (which a snapshot now covers). `index` must be applied, so the
   * snapshot really contains it.
   */
  compact(index: number): void {
    if (index <= this.snapIndex) return;
    if (index > this.applied) {
      throw new RaftInvariantError(`compact(${index}) is past the applied index ${this.applied}`);
    }
    const term = this.term(index)!;
    this.entries = this.entries.slice(index - this.snapIndex);
    this.snapIndex = index;
    this.snapTerm = term;
  }

  /**
   * The largest index <= `index` whose term is <= `term` (etcd's findConflictByTerm), used to
   * skip a whole diverging term at once when a follower rejects an append.
   */
  findConflictByTerm(index: number, term: number): number {
    let i = Math.min(index, this.lastIndex());
    for (; i > this.snapIndex; i--) {
      if (this.term(i)! <= term) return i;
    }
    return i;
  }
}
