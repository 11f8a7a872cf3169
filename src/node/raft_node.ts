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
  StoppingError,
  type WriteResult,
} from "./backend.ts";
import type { Transport, TransportHandlers } from "../transport/transport.ts";

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
  /** Called when the node cannot continue safely (a failed disk write, a broken invariant). */
  onFatal?: (error: unknown) => void;
  /** Where log lines go. Default: console. */
  logger?: Pick<Console, "info" | "warn" | "error" | "debug">;
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
  entries: Entry[];
  hardState: HardState | null;
  messages: Message[];
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
  #scheduled = false;
  #stopping = false;
  #failed = false;
  #waiters = new Map<number, Waiter>();
  #readQueue: PendingRead[] = [];
  #readRounds = new Map<number, ReadRound>();
  #readSeq = 0;
  #readsAwaitingApply: ReadRound[] = [];
  #pendingWrite: WriteJob | null = null;
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
    this.#onFatal = options.onFatal ?? ((e) => {
      throw e;
    });
    const snapshot = this.#storage.snapshot;
    if (snapshot) this.#kv.reset(this.#storage.snapshotData, snapshot.index);
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
      onSnapshot: () => Promise.reject(new Error("snapshots are not supported yet")),
      onUnreachable: (peer) => this.#guard(() => this.#core.reportUnreachable(peer)),
    });
  }

  /** Starts ticking. A single-member cluster elects itself at once. */
  start(): void {
    this.#timer = setInterval(() => this.#guard(() => this.#core.tick()), this.#heartbeatMs);
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
      const index = this.#core.leaseRead();
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
    let placed: { index: number; term: number };
    try {
      placed = this.#core.propose(encodeCommand(cmd));
    } catch (e) {
      return Promise.reject(e);
    }
    this.#schedule();
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#waiters.delete(placed.index);
        reject(new OutcomeUnknownError());
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiters.set(placed.index, {
        term: placed.term,
        resolve: (r) => {
          signal.removeEventListener("abort", onAbort);
          resolve(r);
        },
        reject: (e) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      });
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
    this.#startReadRound();
    while (this.#core.hasReady()) {
      const rd = this.#core.ready();
      this.#handleReady(rd);
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
        // Snapshot streaming is not wired yet: report failure so the leader retries later.
        queueMicrotask(() => this.#guard(() => this.#core.reportSnapshot(m.to, false)));
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
    const job = this.#pendingWrite ?? { entries: [], hardState: null, messages: [] };
    if (rd.entries.length > 0) {
      const first = rd.entries[0]!.index;
      // A follower's truncation inside the not-yet-written batch: cut it there first.
      const keep = job.entries.findIndex((e) => e.index >= first);
      if (keep >= 0) job.entries.length = keep;
      for (const e of rd.entries) job.entries.push(e);
    }
    if (rd.hardState) job.hardState = rd.hardState;
    for (const m of rd.persistedMessages) job.messages.push(m);
    this.#pendingWrite = job;
    if (!this.#writerActive) {
      this.#writerActive = true;
      this.#writing = this.#writeLoop();
    }
  }

  async #writeLoop(): Promise<void> {
    try {
      while (this.#pendingWrite && !this.#failed) {
        const job = this.#pendingWrite;
        this.#pendingWrite = null;
        if (job.entries.length > 0) await this.#storage.append(job.entries);
        if (job.hardState) await this.#storage.saveHardState(job.hardState);
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
