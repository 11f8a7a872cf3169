/**
 * The leader's view of each follower's replication: how much of the log it matches, what to send
 * next, and how many appends may be in flight. Every state transition of a follower's
 * replication happens through the methods here, nowhere else.
 *
 * @module
 */

import { RaftInvariantError } from "./errors.ts";

/**
 * How the leader replicates to a follower:
 * - `probe`: the follower's log position is unknown; send one append at a time and wait.
 * - `replicate`: the follower is in step; stream appends optimistically (pipelining), bounded by
 *   the in-flight window.
 * - `snapshot`: the follower needs a snapshot; send nothing until it reports back.
 */
export type ProgressState = "probe" | "replicate" | "snapshot";

/** A bounded window of in-flight appends, identified by the last index each one carried. */
export class Inflights {
  #buf: number[] = [];
  #start = 0;
  /** The window's capacity (number of appends). */
  readonly size: number;

  /** Creates an empty window holding at most `size` appends. */
  constructor(size: number) {
    this.size = size;
  }

  /** The number of appends in flight. */
  get count(): number {
    return this.#buf.length - this.#start;
  }

  /** Whether no further append may be sent. */
  full(): boolean {
    return this.count >= this.size;
  }

  /** Records an append whose last entry is `lastIndex`. */
  add(lastIndex: number): void {
    if (this.full()) throw new RaftInvariantError(`inflight window of ${this.size} is full`);
    this.#buf.push(lastIndex);
  }

  /** Frees every append whose last index is <= `index` (the follower acknowledged them). */
  freeTo(index: number): void {
    while (this.#start < this.#buf.length && this.#buf[this.#start]! <= index) this.#start++;
    if (this.#start > 1024 && this.#start * 2 > this.#buf.length) {
      this.#buf = this.#buf.slice(this.#start);
      this.#start = 0;
    }
  }

  /** Frees the oldest append (used when acknowledgements may have been lost). */
  freeFirst(): void {
    if (this.count > 0) this.#start++;
  }

  /** Frees everything. */
  reset(): void {
    this.#buf = [];
    this.#start = 0;
  }
}

/**
 * One follower's replication progress.
 *
 * Invariants: `match < next`; in `snapshot` state `pendingSnapshot > 0`.
 */
export class Progress {
  /** Highest index known replicated on the follower. */
  match = 0;
  /** Index of the next entry to send. */
  next: number;
  /** How the leader replicates to this follower. */
  state: ProgressState = "probe";
  /** In probe state: an append was sent and no answer has come yet. */
  probeSent = false;
  /** In snapshot state: the index of the snapshot being sent. */
  pendingSnapshot = 0;
  /** The leader's tick count when the follower last answered (for CheckQuorum). */
  lastActive = 0;
  /** Appends in flight (replicate state). */
  readonly inflights: Inflights;

  /** Creates progress for a follower expected to need entries from `next`. */
  constructor(next: number, maxInflight: number) {
    this.next = next;
    this.inflights = new Inflights(maxInflight);
  }

  /**
   * The follower's log now ends at `lastIndex`, before what it had matched: it lost its data (a
   * wiped disk). Forget the match and probe from where its log ends. At worst (a reordered,
   * stale answer) this only delays commitment until the next probe succeeds.
   */
  lostLog(lastIndex: number): void {
    this.match = lastIndex;
    this.becomeProbe();
    this.next = lastIndex + 1;
  }

  /** Moves to probe state, resuming from just after what is matched. */
  becomeProbe(): void {
    if (this.state === "snapshot") {
      const pending = this.pendingSnapshot;
      this.#reset("probe");
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.#reset("probe");
      this.next = this.match + 1;
    }
  }

  /** Moves to replicate state (the follower's position is known). */
  becomeReplicate(): void {
    this.#reset("replicate");
    this.next = this.match + 1;
  }

  /** Moves to snapshot state while the snapshot at `index` is sent. */
  becomeSnapshot(index: number): void {
    this.#reset("snapshot");
    this.pendingSnapshot = index;
  }

  #reset(state: ProgressState): void {
    this.state = state;
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflights.reset();
  }

  /** Whether the leader must hold further appends back for now. */
  isPaused(): boolean {
    switch (this.state) {
      case "probe":
        return this.probeSent;
      case "replicate":
        return this.inflights.full();
      case "snapshot":
        return true;
    }
  }

  /** Records that an append carrying entries up to `lastIndex` (or none) was sent. */
  sentEntries(lastIndex: number, entryCount: number): void {
    if (this.state === "replicate") {
      if (entryCount > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex);
      }
    } else if (this.state === "probe") {
      this.probeSent = true;
    } else {
      throw new RaftInvariantError(`sent entries to a follower in state ${this.state}`);
    }
  }

  /** Applies an accepted append up to `index`; returns whether it told the leader anything new. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (index > this.match) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, index + 1);
    return updated;
  }

  /**
   * Applies a rejected append at `rejected`; `hint` is where the follower suggests probing. Returns
   * false when the rejection is stale (out of order) and must be ignored.
   */
  maybeDecrTo(rejected: number, hint: number): boolean {
    if (hint < this.match && rejected >= this.match) {
      this.lostLog(hint);
      return true;
    }
    if (this.state === "replicate") {
      if (rejected <= this.match) return false; // stale
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false; // stale: not the probe we sent
    this.next = Math.max(Math.min(rejected, hint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }
}
