/**
 * The driver: the one place where the pure Raft core meets time, disk and network.
 *
 * It ticks the core on a timer, steps it with peer messages, and works through each
 * {@linkcode Ready} in the order Raft needs: the leader's appends go out at once (so followers
 * sync in parallel with the leader), entries and hard state are written with one append and one
 * sync per batch (group commit: proposals arriving while a sync is in flight join the next batch),
 * messages that depend on that write leave only after it, and committed entries are applied to
 * the key-value state machine, resolving the clients waiting on them.
 *
 * @module
 */

import { RaftCore } from "../raft/raft.ts";
import { NotLeaderError } from "../raft/errors.ts";
import { seededRandom } from "../raft/rand.ts";
import {
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType,
  type NodeId,
  NONE,
  type Ready,
  type SnapshotMeta,
} from "../raft/types.ts";
import {
  decodeCommand,
  encodeCommand,
  type KvCommand,
  type KvResult,
  KvStateMachine,
} from "../kv/state_machine.ts";
import {
  type Consistency,
  type DeleteResult,
  type KvBackend,
  type NodeStatus,
  NotAppliedError,
  OutcomeUnknownError,
  OverloadedError,
  StoppingError,
  type WriteResult,
} from "./backend.ts";
import type { Transport, TransportHandlers } from "../transport/transport.ts";
import {
  encodeSnapshot,
  openSnapshotStream,
  readSnapshotFile,
  snapshotName,
  writeSnapshotFile,
} from "../snapshot/snapshot_file.ts";

/** The durable state a node recovered, and the operations the driver needs to keep it durable. */
export interface NodeStorage {
  /** The hard state recovered at start-up. */
  readonly hardState: HardState;
  /** The snapshot recovered at start-up (its data already loaded into `snapshotData`), or null. */
  readonly snapshot: SnapshotMeta | null;
  /** The key-value pairs of that snapshot. */
  readonly snapshotData: Iterable<[string, string]>;
  /** The log entries after the snapshot, recovered at start-up. */
  readonly entries: Entry[];
  /** Appends entries (truncating a conflicting suffix first) with one write and one sync. */
  append(entries: Entry[]): Promise<void>;
  /** Durably replaces the hard state. */
  saveHardState(hs: HardState): Promise<void>;
  /** The snapshot directory. */
  readonly snapshotDir: string;
  /** The file of the recovered snapshot, or null. */
  readonly snapshotPath: string | null;
  /** Makes the log's next write start a new segment (called when a snapshot begins). */
  rollLog(): void;
  /** Records a saved snapshot and drops log segments wholly at or below `compactTo`. */
  snapshotTaken(meta: SnapshotMeta, compactTo: number): Promise<void>;
  /** Installs a snapshot received from the leader; returns its final path. */
  installReceived(meta: SnapshotMeta, receivedPath: string): Promise<string>;
  /** Releases files. */
  close(): Promise<void>;
}

/** A member of the cluster as the driver needs it. */
export interface Member {
  id: NodeId;
  rpcUrl: string;
  apiUrl: string;
}

/** Configuration of a {@linkcode RaftNode}. */
export interface RaftNodeOptions {
  /** This node's id. */
  id: NodeId;
  /** Every member, including this node. */
  members: Member[];
  /** The recovered storage. */
  storage: NodeStorage;
  /** Builds the peer transport, given the handlers for what arrives. */
  transport: (handlers: TransportHandlers) => Transport;
  /** Milliseconds between ticks; the leader heartbeats every tick. Default 100. */
  heartbeatMs?: number;
  /** Election timeout in milliseconds (randomized up to twice that). Default 1000. */
  electionTimeoutMs?: number;
  /** Seed for the election jitter. Default: random. */
  seed?: number;
  /** Applied entries between snapshots. Default 10000. */
  snapshotThreshold?: number;
  /** Entries kept in the log before a snapshot, for followers just behind. Default: min(5000, threshold). */
  snapshotCatchUpEntries?: number;
  /** Called when the node cannot continue safely (a failed disk write, a broken invariant). */
  onFatal?: (error: unknown) => void;
  /** Where log lines go. Default: console. */
  logger?: Pick<Console, "info" | "warn" | "error" | "debug">;
  /**
   * Most of this leader's proposals waiting to be applied (proposed, not yet applied); a write
   * past it is refused with {@linkcode OverloadedError} before it is proposed. Default 4096.
   */
  maxPendingProposals?: number;
  /**
   * Most bytes (encoded commands) of this leader's proposals waiting to be applied; a write that
   * would pass it is refused with {@linkcode OverloadedError}, unless nothing is waiting (so one
   * write larger than the limit can still go through alone). Default 64 MiB.
   */
  maxPendingBytes?: number;
}

interface Waiter {
  term: number;
  resolve: (r: KvResult & { index: number }) => void;
  reject: (e: unknown) => void;
}

interface PendingRead {
  key: string;
  resolve: (v: string | null) => void;
  reject: (e: unknown) => void;
}

interface ReadRound {
  reads: PendingRead[];
  /** The index to wait for, once the leader confirmed the round. */
  index: number | null;
}

interface WriteJob {
  /** A received snapshot to install before the entries. */
  install: { meta: SnapshotMeta; path: string } | null;
  entries: Entry[];
  hardState: HardState | null;
  messages: Message[];
  /** A snapshot just saved: record it and compact the log, after the entries. */
  compact: { meta: SnapshotMeta; compactTo: number } | null;
}

interface ReceivedSnapshot {
  path: string;
  pairs: [string, string][];
}

/** A Raft node serving the key-value API: see the module doc. */
export class RaftNode implements KvBackend {
  /** This node's id. */
  readonly id: NodeId;
  readonly #core: RaftCore;
  readonly #kv = new KvStateMachine();
  readonly #storage: NodeStorage;
  readonly #transport: Transport;
  readonly #members: Map<NodeId, Member>;
  readonly #heartbeatMs: number;
  readonly #onFatal: (e: unknown) => void;
  readonly #log: Pick<Console, "info" | "warn" | "error" | "debug">;

  #timer: ReturnType<typeof setInterval> | undefined;
  /** When ticking started, and how many ticks were given since: ticks follow the clock. */
  #tickOrigin = 0;
  #ticked = 0;
  readonly #maxCatchUpTicks: number;
  #scheduled = false;
  /** Set while {@linkcode RaftNode.#process} runs: a nested call defers to a later run. */
  #processing = false;
  #stopping = false;
  #failed = false;
  #waiters = new Map<number, Waiter>();
  /** The encoded size of each proposal of this node not yet seen applied, by log index. */
  #pending = new Map<number, number>();
  /** The sum of `#pending`'s sizes. */
  #pendingBytes = 0;
  readonly #maxPendingProposals: number;
  readonly #maxPendingBytes: number;
  #readQueue: PendingRead[] = [];
  #readRounds = new Map<number, ReadRound>();
  #readSeq = 0;
  #readsAwaitingApply: ReadRound[] = [];
  /** Writes not started yet; new work merges into the last one (group commit). */
  #pendingWrites: WriteJob[] = [];
  readonly #snapshotThreshold: number;
  readonly #catchUpEntries: number;
  #snapshotting = false;
  #snapshotTask: Promise<void> = Promise.resolve();
  #snapshotFile: { index: number; path: string } | null = null;
  #received = new Map<number, ReceivedSnapshot>();
  /** Set while the write loop runs (cleared synchronously when it drains the queue). */
  #writerActive = false;
  #writing: Promise<void> = Promise.resolve();

  /** Recovers a node from `options.storage`; call {@linkcode RaftNode.start} to begin. */
  constructor(options: RaftNodeOptions) {
    this.id = options.id;
    this.#storage = options.storage;
    this.#members = new Map(options.members.map((m) => [m.id, m]));
    this.#heartbeatMs = options.heartbeatMs ?? 100;
    const electionTicks = Math.max(
      2,
      Math.round((options.electionTimeoutMs ?? 1000) / this.#heartbeatMs),
    );
    this.#log = options.logger ?? console;
    this.#maxCatchUpTicks = 4 * electionTicks;
    this.#onFatal = options.onFatal ?? ((e) => {
      throw e;
    });
    this.#snapshotThreshold = options.snapshotThreshold ?? 10_000;
    this.#maxPendingProposals = options.maxPendingProposals ?? 4096;
    this.#maxPendingBytes = options.maxPendingBytes ?? 64 * 1024 * 1024;
    this.#catchUpEntries = options.snapshotCatchUpEntries ??
      Math.min(5000, this.#snapshotThreshold);
    const snapshot = this.#storage.snapshot;
    if (snapshot) {
      this.#kv.reset(this.#storage.snapshotData, snapshot.index);
      this.#snapshotFile = { index: snapshot.index, path: this.#storage.snapshotPath! };
    }
    this.#core = new RaftCore({
      id: this.id,
      voters: options.members.map((m) => m.id),
      electionTicks,
      heartbeatTicks: 1,
      random: seededRandom(options.seed ?? Math.floor(Math.random() * 2 ** 32)),
      hardState: this.#storage.hardState,
      snapshot,
      entries: this.#storage.entries,
    });
    this.#transport = options.transport({
      onMessages: (msgs) => this.#onMessages(msgs),
      onSnapshot: (msg, body) => this.#receiveSnapshot(msg, body),
      onUnreachable: (peer) => this.#guard(() => this.#core.reportUnreachable(peer)),
    });
  }

  /** Starts ticking. A single-member cluster elects itself at once. */
  start(): void {
    this.#tickOrigin = performance.now();
    this.#timer = setInterval(() => this.#catchUpTicks(), this.#heartbeatMs);
    if (this.#members.size === 1) this.#guard(() => this.#core.campaign());
    this.#schedule();
  }

  /** Stops: takes no new requests, finishes the write in flight, closes transport and storage. */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    clearInterval(this.#timer);
    this.#failUnconfirmedReads(new StoppingError());
    for (const round of this.#readsAwaitingApply) {
      for (const r of round.reads) r.reject(new StoppingError());
    }
    this.#readsAwaitingApply = [];
    await this.#snapshotTask;
    while (this.#writerActive) await this.#writing;
    for (const w of this.#waiters.values()) {
      w.reject(new OutcomeUnknownError("the node stopped before the write was applied"));
    }
    this.#waiters.clear();
    await this.#transport.close();
    await this.#storage.close();
  }

  // ---- KvBackend ----------------------------------------------------------------------------

  /** Writes `value` under `key` once committed and applied. */
  async put(key: string, value: string, signal: AbortSignal): Promise<WriteResult> {
    const r = await this.#propose({ op: "put", key, value }, signal);
    return { index: r.index };
  }

  /** Deletes `key` once committed and applied. */
  async delete(key: string, signal: AbortSignal): Promise<DeleteResult> {
    const r = await this.#propose({ op: "delete", key }, signal);
    return { index: r.index, deleted: r.op === "delete" && r.deleted };
  }

  /** Reads `key` with the given consistency (see {@linkcode Consistency}). */
  get(key: string, consistency: Consistency, signal: AbortSignal): Promise<string | null> {
    if (this.#stopping) return Promise.reject(new StoppingError());
    if (consistency === "stale") return Promise.resolve(this.#kv.get(key));
    if (this.#core.role !== "leader") {
      return Promise.reject(new NotLeaderError(this.#core.leader));
    }
    if (consistency === "lease") {
      // After a stall (a paused process, a long GC) the ticks owed must land first, or a lease
      // that expired in real time would still look valid.
      this.#catchUpTicks();
      const index = this.#core.role === "leader" ? this.#core.leaseRead() : null;
      // Within the lease and applied far enough: answer at once. Otherwise fall back to ReadIndex.
      if (index !== null && this.#kv.appliedIndex >= index) {
        return Promise.resolve(this.#kv.get(key));
      }
    }
    return new Promise((resolve, reject) => {
      const read: PendingRead = { key, resolve, reject };
      const onAbort = () => {
        read.reject = () => {};
        read.resolve = () => {};
        reject(signal.reason);
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      read.resolve = (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      };
      read.reject = (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      };
      this.#readQueue.push(read);
      this.#schedule();
    });
  }

  /** Streams a consistent snapshot of the applied state (for backups); see KvBackend. */
  snapshot(): { index: number; stream: ReadableStream<Uint8Array> } {
    if (this.#stopping) throw new StoppingError();
    const view = this.#kv.view();
    const header = {
      index: view.index,
      term: this.#core.log.term(view.index) ?? this.#core.log.snapTerm,
      voters: [...this.#core.voters],
      count: view.count,
    };
    const chunks = encodeSnapshot(header, view.pairs());
    const stream = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const next = await chunks.next();
          if (next.done) {
            view.close();
            controller.close();
          } else {
            controller.enqueue(next.value);
          }
        } catch (e) {
          view.close();
          controller.error(e);
        }
      },
      cancel() {
        view.close();
      },
    });
    return { index: view.index, stream };
  }

  /** This node's view of the cluster. */
  status(): NodeStatus {
    const leader = this.#core.leader;
    const member = leader === NONE ? undefined : this.#members.get(leader);
    return {
      id: this.id,
      role: this.#core.role,
      term: this.#core.term,
      leader: member ? { id: member.id, api_url: member.apiUrl } : null,
      commit_index: this.#core.log.committed,
      applied_index: this.#kv.appliedIndex,
      last_index: this.#core.log.lastIndex(),
    };
  }

  /** The error a write would get now for overload, if this leader is full; see KvBackend. */
  overloaded(): OverloadedError | null {
    if (this.#stopping || this.#core.role !== "leader" || !this.#overloaded(1)) return null;
    return this.#overloadedError();
  }

  /** Whether a leader is known and everything known committed is applied here. */
  isReady(): boolean {
    if (this.#stopping || this.#core.leader === NONE) return false;
    const log = this.#core.log;
    if (this.#core.role === "leader" && log.term(log.committed) !== this.#core.term) return false;
    return this.#kv.appliedIndex >= log.committed;
  }

  // ---- inputs -------------------------------------------------------------------------------

  #propose(cmd: KvCommand, signal: AbortSignal): Promise<KvResult & { index: number }> {
    if (this.#stopping) return Promise.reject(new StoppingError());
    if (signal.aborted) return Promise.reject(signal.reason);
    const data = encodeCommand(cmd);
    if (this.#core.role === "leader" && this.#overloaded(data.byteLength)) {
      return Promise.reject(this.#overloadedError());
    }
    let placed: { index: number; term: number };
    try {
      placed = this.#core.propose(data);
    } catch (e) {
      return Promise.reject(e);
    }
    this.#untrackPending(placed.index);
    this.#pending.set(placed.index, data.byteLength);
    this.#pendingBytes += data.byteLength;
    this.#schedule();
    // A proposal of an earlier term at this index was overwritten before it was seen applied.
    this.#waiters.get(placed.index)?.reject(new NotAppliedError());
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        term: placed.term,
        resolve: (r) => {
          signal.removeEventListener("abort", onAbort);
          resolve(r);
        },
        reject: (e) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      const onAbort = () => {
        if (this.#waiters.get(placed.index) === waiter) this.#waiters.delete(placed.index);
        reject(new OutcomeUnknownError());
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiters.set(placed.index, waiter);
    });
  }

  /**
   * Whether one more proposal of `size` bytes would pass the pending limits. Proposals a received
   * snapshot skipped over are never seen applied one by one: they are dropped here first.
   */
  #overloaded(size: number): boolean {
    const full = () =>
      this.#pending.size >= this.#maxPendingProposals ||
      (this.#pending.size > 0 && this.#pendingBytes + size > this.#maxPendingBytes);
    if (!full()) return false;
    const applied = this.#kv.appliedIndex;
    for (const index of this.#pending.keys()) {
      if (index <= applied) this.#untrackPending(index);
    }
    return full();
  }

  #overloadedError(): OverloadedError {
    return new OverloadedError(
      { proposals: this.#pending.size, bytes: this.#pendingBytes },
      { proposals: this.#maxPendingProposals, bytes: this.#maxPendingBytes },
    );
  }

  /** Forgets the pending proposal at `index`, if any. */
  #untrackPending(index: number): void {
    const size = this.#pending.get(index);
    if (size === undefined) return;
    this.#pending.delete(index);
    this.#pendingBytes -= size;
  }

  /**
   * Gives the core one tick per heartbeat interval of real time since ticking started, including
   * the ticks a stalled timer missed (capped: beyond a few election timeouts more change nothing).
   */
  #catchUpTicks(): void {
    const due = Math.floor((performance.now() - this.#tickOrigin) / this.#heartbeatMs);
    if (due <= this.#ticked) return;
    const n = Math.min(due - this.#ticked, this.#maxCatchUpTicks);
    this.#ticked = due;
    this.#guard(() => {
      for (let i = 0; i < n; i++) this.#core.tick();
    });
  }

  #onMessages(msgs: Message[]): void {
    if (this.#stopping) return;
    this.#guard(() => {
      for (const m of msgs) this.#core.step(m);
    });
  }

  /** Runs `fn` on the core; a throw there is fatal (the core's state can no longer be trusted). */
  #guard(fn: () => void): void {
    if (this.#failed) return;
    try {
      fn();
    } catch (e) {
      this.#fail(e);
      return;
    }
    this.#schedule();
  }

  #fail(e: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#stopping = true;
    clearInterval(this.#timer);
    this.#log.error("fatal:", e);
    this.#onFatal(e);
  }

  #schedule(): void {
    if (this.#scheduled || this.#failed) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      try {
        this.#process();
      } catch (e) {
        this.#fail(e);
      }
    });
  }

  // ---- the Ready loop -----------------------------------------------------------------------

  #process(): void {
    if (this.#failed) return;
    if (this.#processing) {
      // Called from inside a Ready's handling (a write with nothing to write finishes at once):
      // the next Ready must wait until this one's committed entries are applied, in order.
      this.#schedule();
      return;
    }
    this.#processing = true;
    try {
      this.#startReadRound();
      while (this.#core.hasReady()) {
        const rd = this.#core.ready();
        this.#handleReady(rd);
      }
    } finally {
      this.#processing = false;
    }
  }

  #handleReady(rd: Ready): void {
    if (rd.softState) {
      if (rd.softState.role !== "leader") {
        this.#failUnconfirmedReads(new NotLeaderError(rd.softState.leader));
      }
      this.#log.info(
        `${rd.softState.role} in term ${this.#core.term}, leader ${
          rd.softState.leader || "unknown"
        }`,
      );
    }
    this.#sendNow(rd.messages);
    if (rd.snapshot) this.#installSnapshot(rd.snapshot);
    if (rd.entries.length > 0 || rd.hardState || rd.persistedMessages.length > 0) {
      this.#enqueueWrite(rd);
    }
    if (rd.committedEntries.length > 0) this.#apply(rd.committedEntries);
    for (const rs of rd.readStates) {
      const round = this.#readRounds.get(rs.id);
      if (!round) continue;
      this.#readRounds.delete(rs.id);
      round.index = rs.index;
      this.#readsAwaitingApply.push(round);
    }
    this.#serveReads();
  }

  #sendNow(messages: Message[]): void {
    if (messages.length === 0) return;
    const plain: Message[] = [];
    for (const m of messages) {
      if (m.type === MessageType.Snap) {
        this.#sendSnapshot(m);
      } else {
        plain.push(m);
      }
    }
    this.#transport.send(plain);
  }

  /**
   * Queues a Ready's durable work. At most one write is in flight; everything arriving meanwhile
   * is merged into the next one (group commit).
   */
  #enqueueWrite(rd: Ready): void {
    const job = this.#openJob();
    if (rd.entries.length > 0) {
      const first = rd.entries[0]!.index;
      // A follower's truncation inside the not-yet-written batch: cut it there first.
      const keep = job.entries.findIndex((e) => e.index >= first);
      if (keep >= 0) job.entries.length = keep;
      for (const e of rd.entries) job.entries.push(e);
    }
    if (rd.hardState) job.hardState = rd.hardState;
    for (const m of rd.persistedMessages) job.messages.push(m);
    this.#kickWriter();
  }

  /** The job new work may join: the last pending one, unless it already compacts the log. */
  #openJob(): WriteJob {
    const last = this.#pendingWrites.at(-1);
    if (last && !last.compact) return last;
    const job: WriteJob = {
      install: null,
      entries: [],
      hardState: null,
      messages: [],
      compact: null,
    };
    this.#pendingWrites.push(job);
    return job;
  }

  #kickWriter(): void {
    if (this.#writerActive) return;
    this.#writerActive = true;
    this.#writing = this.#writeLoop();
  }

  async #writeLoop(): Promise<void> {
    try {
      while (this.#pendingWrites.length > 0 && !this.#failed) {
        const job = this.#pendingWrites.shift()!;
        if (job.install) {
          const path = await this.#storage.installReceived(job.install.meta, job.install.path);
          this.#snapshotFile = { index: job.install.meta.index, path };
        }
        if (job.entries.length > 0) await this.#storage.append(job.entries);
        if (job.hardState) await this.#storage.saveHardState(job.hardState);
        if (job.compact) await this.#storage.snapshotTaken(job.compact.meta, job.compact.compactTo);
        if (this.#failed) return;
        this.#transport.send(job.messages);
        const last = job.entries.at(-1);
        if (last) this.#core.persisted(last.index, last.term);
        this.#process();
      }
    } catch (e) {
      this.#fail(e);
    } finally {
      this.#writerActive = false;
    }
  }

  #apply(entries: Entry[]): void {
    for (const e of entries) {
      let result: KvResult | null = null;
      if (e.type === EntryType.Normal) {
        result = this.#kv.apply(e.index, decodeCommand(e.data));
      } else {
        this.#kv.advance(e.index);
      }
      this.#untrackPending(e.index);
      const w = this.#waiters.get(e.index);
      if (!w) continue;
      this.#waiters.delete(e.index);
      if (w.term === e.term && result) {
        w.resolve({ ...result, index: e.index });
      } else {
        // Another leader's entry took this index: ours was never committed and never will be.
        w.reject(new NotAppliedError());
      }
    }
    this.#maybeSnapshot();
  }

  // ---- snapshots ----------------------------------------------------------------------------

  /** Starts a snapshot when enough entries were applied since the last one. */
  #maybeSnapshot(): void {
    const last = this.#snapshotFile?.index ?? 0;
    if (this.#snapshotting || this.#kv.appliedIndex - last < this.#snapshotThreshold) return;
    this.#snapshotting = true;
    this.#snapshotTask = this.#takeSnapshot().catch((e) => {
      if (!this.#stopping) this.#fail(e);
    }).finally(() => this.#snapshotting = false);
  }

  /**
   * Writes the state at the applied index to a snapshot file while applying goes on (the view is
   * copy-on-write), then compacts the log.
   */
  async #takeSnapshot(): Promise<void> {
    const view = this.#kv.view();
    const meta: SnapshotMeta = {
      index: view.index,
      term: this.#core.log.term(view.index)!,
      voters: [...this.#core.voters],
    };
    const started = performance.now();
    this.#storage.rollLog();
    let path: string;
    try {
      path = await writeSnapshotFile(
        this.#storage.snapshotDir,
        encodeSnapshot({ ...meta, count: view.count }, view.pairs()),
        snapshotName(meta.index, meta.term),
      );
    } finally {
      view.close();
    }
    if (this.#failed) return;
    if (meta.index <= (this.#snapshotFile?.index ?? 0) || meta.index < this.#core.log.snapIndex) {
      // A snapshot from the leader was installed meanwhile: this one is older; keep it as a
      // file (pruning removes it) but do not make it current.
      return;
    }
    this.#snapshotFile = { index: meta.index, path };
    const compactTo = Math.max(this.#core.log.snapIndex, meta.index - this.#catchUpEntries);
    this.#core.snapshotSaved(meta, compactTo);
    const job = this.#openJob();
    job.compact = { meta, compactTo };
    this.#kickWriter();
    this.#log.info(
      `snapshot at index ${meta.index} (${view.count} keys) in ${
        Math.round(performance.now() - started)
      } ms`,
    );
  }

  /** Streams the newest snapshot file to a follower that needs it. */
  #sendSnapshot(m: Message): void {
    const file = this.#snapshotFile;
    if (!file || file.index !== m.snapshot?.index) {
      queueMicrotask(() => this.#guard(() => this.#core.reportSnapshot(m.to, false)));
      return;
    }
    this.#log.info(`sending snapshot at index ${file.index} to ${m.to}`);
    this.#transport.sendSnapshot(m, () => openSnapshotStream(file.path)).then(
      () => this.#guard(() => this.#core.reportSnapshot(m.to, true)),
      (e) => {
        this.#log.warn(`sending snapshot to ${m.to} failed: ${e instanceof Error ? e.message : e}`);
        this.#guard(() => this.#core.reportSnapshot(m.to, false));
      },
    );
  }

  /**
   * Stores a snapshot streamed by the leader (as a received file: it replaces nothing yet),
   * verifies it, and hands the message to the core, which decides whether to install it.
   */
  async #receiveSnapshot(m: Message, body: ReadableStream<Uint8Array>): Promise<void> {
    const meta = m.snapshot;
    if (this.#stopping) throw new StoppingError();
    if (!meta) throw new TypeError("snapshot message without snapshot metadata");
    const path = await writeSnapshotFile(
      this.#storage.snapshotDir,
      body,
      `${snapshotName(meta.index, meta.term)}.recv`,
    );
    const loaded = await readSnapshotFile(path);
    if (loaded.header.index !== meta.index || loaded.header.term !== meta.term) {
      throw new RangeError(
        `received snapshot holds (${loaded.header.index}, ${loaded.header.term}), expected (${meta.index}, ${meta.term})`,
      );
    }
    // Only the newest received snapshot can still be installed.
    this.#received.clear();
    this.#received.set(meta.index, { path, pairs: loaded.pairs });
    this.#onMessages([m]);
  }

  /** Replaces the state with a received snapshot the core decided to install. */
  #installSnapshot(meta: SnapshotMeta): void {
    const received = this.#received.get(meta.index);
    if (!received) throw new Error(`no received snapshot at index ${meta.index} to install`);
    this.#received.clear();
    this.#kv.reset(received.pairs, meta.index);
    for (const [index, w] of this.#waiters) {
      if (index <= meta.index) {
        this.#waiters.delete(index);
        w.reject(new OutcomeUnknownError("a snapshot replaced the log before the write was seen"));
      }
    }
    // Install before writing anything that follows it.
    const job: WriteJob = {
      install: { meta, path: received.path },
      entries: [],
      hardState: null,
      messages: [],
      compact: null,
    };
    this.#pendingWrites.push(job);
    this.#kickWriter();
    this.#log.info(`installing snapshot at index ${meta.index} from the leader`);
  }

  // ---- reads --------------------------------------------------------------------------------

  /** Starts one leadership-confirmation round for every read queued since the last one. */
  #startReadRound(): void {
    if (this.#readQueue.length === 0 || this.#readRounds.size > 0) return;
    const reads = this.#readQueue;
    this.#readQueue = [];
    if (this.#core.role !== "leader") {
      for (const r of reads) r.reject(new NotLeaderError(this.#core.leader));
      return;
    }
    const id = ++this.#readSeq;
    this.#readRounds.set(id, { reads, index: null });
    this.#core.readIndex(id);
  }

  #serveReads(): void {
    if (this.#readsAwaitingApply.length === 0) return;
    const applied = this.#kv.appliedIndex;
    const still: ReadRound[] = [];
    for (const round of this.#readsAwaitingApply) {
      if (round.index! <= applied) {
        for (const r of round.reads) r.resolve(this.#kv.get(r.key));
      } else {
        still.push(round);
      }
    }
    this.#readsAwaitingApply = still;
    if (this.#readQueue.length > 0) this.#schedule();
  }

  /**
   * Fails reads not yet confirmed. Confirmed reads stay: their index is a valid linearization
   * point even if this node stops leading, so they are served once it has applied that far.
   */
  #failUnconfirmedReads(e: Error): void {
    for (const r of this.#readQueue) r.reject(e);
    this.#readQueue = [];
    for (const round of this.#readRounds.values()) for (const r of round.reads) r.reject(e);
    this.#readRounds.clear();
  }
}
