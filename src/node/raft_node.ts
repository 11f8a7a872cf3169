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
 * A full disk is an operating condition, not a crash (see {@linkcode RaftNode} "Disk full").
 *
 * @module
 */

import { RaftCore } from "../raft/raft.ts";
import { ConfChangeError, LeaderTransferError, NotLeaderError } from "../raft/errors.ts";
import { seededRandom } from "../raft/rand.ts";
import {
  confLists,
  type ConfState,
  type Entry,
  EntryType,
  type HardState,
  MAX_TERM,
  type Message,
  MessageType,
  type NodeId,
  NONE,
  type Ready,
  type Role,
  type SnapshotMeta,
} from "../raft/types.ts";
import {
  decodeCommand,
  encodeCommand,
  growthBound,
  type KvCommand,
  type KvEntry,
  type KvResult,
  KvStateMachine,
  LEASE_BYTES,
  type PlainCommand,
  type RangeQuery,
} from "../kv/state_machine.ts";
import {
  type Consistency,
  type DeleteResult,
  type EventHistory,
  type KvBackend,
  type LeaderTransfer,
  type LeaseBackend,
  LeaseNotFoundError,
  type LeaseStatus,
  type Membership,
  MembershipError,
  type MemberView,
  type NodeStatus,
  NoSpaceError,
  NotAppliedError,
  NotVoterError,
  OutcomeUnknownError,
  OverloadedError,
  QuotaExceededError,
  type RangeAnswer,
  type ReadResult,
  RemovedError,
  StoppingError,
  TransferAbortedError,
  UnknownMemberError,
  UnsettledRetryError,
  type WriteResult,
} from "./backend.ts";
import {
  type CommittedMembers,
  PeerNoSpaceError,
  PeerRefusedError,
  type Transport,
  type TransportHandlers,
} from "../transport/transport.ts";
import {
  encodeSnapshot,
  type SnapshotContent,
  type SnapshotEntry,
} from "../storage/snapshot_file.ts";
import { CorruptFileError, isNoSpace } from "../storage/errors.ts";
import { ENTRY_FIELDS_SIZE, HEADER_SIZE } from "../storage/wal_record.ts";
import { type Cancel, type Clock, realClock } from "./clock.ts";
import { CLUSTER_ID_PATTERN } from "./cluster_id.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { type MemberState, type NodeGauges, NodeMetrics } from "./node_metrics.ts";
import { grantedTtlMs, LeaseTracker, minLeaseTtlMs } from "./lease_tracker.ts";

/** Names a snapshot: the last log index it covers and the term of that entry. */
export type SnapshotId = Pick<SnapshotMeta, "index" | "term">;

/** A loaded snapshot's state: its entries (keys, values, revisions) and session records. */
export interface SnapshotData {
  /**
   * The entries, in the order stored: an array, or the state machine's map built as the file was
   * read (see `entry_map.ts`), which the state machine then takes over.
   */
  entries: Iterable<SnapshotEntry>;
  /** The state machine's remembered idempotent outcomes. */
  sessions: Uint8Array[];
  /** The state machine's leases with their keys (none in snapshots written before leases). */
  leases?: Uint8Array[];
}

/**
 * The durable state a node recovered, and the operations the driver needs to keep it durable.
 * Where and how it is kept (files, paths, formats) is the implementation's business
 * (`DiskStorage` in `disk_storage.ts`).
 *
 * Every operation here that fails for lack of space (ENOSPC, EDQUOT: `isNoSpace` is true) leaves
 * nothing half done that a retry of the same call cannot finish; any other failure is fatal.
 */
export interface NodeStorage {
  /** The hard state recovered at start-up. */
  readonly hardState: HardState;
  /** The snapshot recovered at start-up (its data in `snapshotData`), or null. */
  readonly snapshot: SnapshotMeta | null;
  /** The entries and session records of that snapshot. */
  readonly snapshotData: SnapshotData;
  /** The log entries after the snapshot, recovered at start-up. */
  readonly entries: Entry[];
  /**
   * Appends entries (truncating a conflicting suffix first) with one write and one sync, and
   * records `commit` after them when given: the node's commit index as the log stands once they
   * are written, which the restart recovers into {@linkcode NodeStorage.hardState}.
   */
  append(entries: Entry[], commit?: number): Promise<void>;
  /**
   * Records the commit index (at most the last index written) without syncing it: durable with
   * the next append, and kept by a crash of the process at once (optional: a storage without it
   * recovers the commit index from the hard state and the appends).
   */
  recordCommit?(commit: number): Promise<void>;
  /** Durably replaces the hard state. */
  saveHardState(hs: HardState): Promise<void>;
  /**
   * The id of the cluster this node belongs to, undefined while it knows none (optional: a
   * storage without it takes part in no cluster check). Peers of another cluster are refused.
   */
  readonly clusterId?: string | undefined;
  /**
   * Takes `id` as this node's cluster if it knows none, recorded before anything its next write
   * stores (optional, see `clusterId`).
   */
  adoptClusterId?(id: string): void;
  /**
   * The voters the cluster was started with, as this node recorded them when it started the
   * cluster (optional; undefined: none recorded). Until a snapshot or a configuration entry says
   * otherwise they are the members, not those of `RaftNodeOptions.members` (a cluster file edited
   * since must not change the membership: a node restarted with a file listing only itself would
   * elect itself alone).
   */
  readonly initialVoters?: readonly string[] | undefined;
  /**
   * The "removed while away" mark recovered at start-up: the index of a peer's committed
   * configuration that left this node out ({@linkcode RaftCore.learnRemoved}), 0 for none
   * (optional: a storage without it keeps the mark in memory only).
   */
  readonly removedAt?: number;
  /** Durably saves that mark (optional, see `removedAt`). */
  saveRemovedAt?(index: number): Promise<void>;
  /** Makes the log's next write start a new segment (called when a snapshot begins). */
  rollLog(): void;
  /**
   * Durably saves a snapshot of the state taken by this node: `count` entries, read lazily, and
   * the session records. It becomes the node's snapshot only with
   * {@linkcode NodeStorage.snapshotTaken}.
   */
  saveSnapshot(meta: SnapshotMeta, count: number, content: SnapshotContent): Promise<void>;
  /** Records a saved snapshot and drops log entries wholly at or below `compactTo`. */
  snapshotTaken(meta: SnapshotMeta, compactTo: number): Promise<void>;
  /** Streams a saved or installed snapshot, in the snapshot file format (to send to a peer). */
  openSnapshot(id: SnapshotId): Promise<ReadableStream<Uint8Array>>;
  /**
   * Durably stores a snapshot streamed by the leader as a received one (it replaces nothing
   * until installed), verifies it, and returns its data.
   *
   * @throws {CorruptFileError} If the bytes are not a valid snapshot, or not the one `meta` names.
   */
  receiveSnapshot(
    meta: SnapshotMeta,
    body: ReadableStream<Uint8Array>,
  ): Promise<SnapshotData>;
  /** Removes a received snapshot that will not be installed; a missing one is no error. */
  discardReceived(id: SnapshotId): Promise<void>;
  /**
   * Drops what was recovered at start-up (`snapshotData`, `entries`) once the node has taken it
   * over, so that it is not kept twice: a million keys' worth after a restart (optional).
   */
  releaseRecovered?(): void;
  /**
   * Removes received snapshots not in `keep` that were found unneeded by a sweep at least
   * `olderThanMs` before `now` (on the node's clock): leftovers of failed, superseded or refused
   * uploads. Start-up removes every one. Returns what it removed, for the log.
   */
  sweepReceived(keep: Iterable<SnapshotId>, olderThanMs: number, now: number): Promise<string[]>;
  /**
   * Installs the received snapshot `meta` (see {@linkcode NodeStorage.receiveSnapshot}): the log
   * is reset to it and it becomes the node's snapshot, atomically with respect to a crash.
   */
  installReceived(meta: SnapshotMeta): Promise<void>;
  /** Releases files. */
  close(): Promise<void>;
}

/** A member of the cluster as the driver needs it. */
export interface Member {
  /** Its node id (`node_id` in the cluster file). */
  id: NodeId;
  /** Where its peer server listens (`rpc_url`). */
  rpcUrl: string;
  /** Where its REST API listens (`api_url`): followers forward to it and status names it. */
  apiUrl: string;
}

/** Configuration of a {@linkcode RaftNode}. */
export interface RaftNodeOptions {
  /** This node's id. */
  id: NodeId;
  /**
   * The bootstrap configuration: every member, including this node (the cluster file). Once the
   * node's log or snapshot holds a configuration, that one is used and this list only fills in
   * addresses it lacks.
   */
  members: Member[];
  /**
   * The node joins an existing cluster (`--join`): it starts with no configuration at all, never
   * campaigns, and waits for a leader to add it (its storage's configuration, once it has one,
   * is used as for any node). Default false.
   */
  join?: boolean;
  /**
   * Called whenever the configuration in force changes (and once at start): the members with
   * their addresses, and whether the node has no configuration yet (it waits to join: any
   * sender must be heard). For the peer validator and the API's forwarding.
   */
  onMembership?: (members: readonly Member[], open: boolean) => void;
  /** The recovered storage. */
  storage: NodeStorage;
  /** Builds the peer transport, given the handlers for what arrives. */
  transport: (handlers: TransportHandlers) => Transport;
  /** Milliseconds between ticks; the leader heartbeats every tick. Default 100. */
  heartbeatMs?: number;
  /** Election timeout in milliseconds (randomized up to twice that). Default 1000. */
  electionTimeoutMs?: number;
  /**
   * Seed for the election jitter and for where this start's read ids begin. Default: random.
   * A fixed seed must differ from one start of a data directory to the next: a start that began
   * its read ids where an earlier one did could take an answer the leader still owed the earlier
   * start for a read of its own (see {@linkcode RaftCore.readIndex}).
   */
  seed?: number;
  /**
   * The time and timers the node runs on: ticks, the disk-full retry back-off, snapshot retry
   * pauses and the received-snapshot sweep. Default {@linkcode realClock}.
   */
  clock?: Clock;
  /** Applied entries between snapshots. Default 10000. */
  snapshotThreshold?: number;
  /**
   * Also snapshot once this many bytes were written to the log since the last snapshot, so that
   * large values cannot fill the disk before `snapshotThreshold` entries. Default 64 MiB.
   */
  snapshotThresholdBytes?: number;
  /**
   * Entries kept in the log before a snapshot, for followers just behind. Default:
   * min(5000, threshold). At most a quarter of `snapshotThresholdBytes` of entries is kept.
   */
  snapshotCatchUpEntries?: number;
  /**
   * How often received snapshots that nothing needs any more (superseded, refused, or left by an
   * upload that failed without cleaning up) are removed, and how long before that a sweep must
   * have found one unneeded. Start-up removes every one left over. Default 60000.
   */
  receivedSweepMs?: number;
  /**
   * Called when the node cannot continue safely (a failed disk write other than a full disk, a
   * broken invariant).
   */
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
  /**
   * The most bytes of data (the UTF-8 bytes of every key and value, and `LEASE_BYTES` for each
   * lease) this node takes as leader: a write or lease grant that would add bytes past it is
   * refused with {@linkcode QuotaExceededError} before it is proposed. Only the leader's applied
   * data is counted, so writes in flight at once can pass it by their own size. 0: no quota.
   * Default 0.
   */
  quotaBytes?: number;
  /**
   * The wall clock (milliseconds since the epoch) a leader stamps into writes that carry an
   * idempotency key; the state machine decides their expiry from that stamp alone, so every
   * replica decides the same. Default `Date.now`.
   */
  wallClock?: () => number;
  /** How long the outcome of an idempotent write is remembered, in milliseconds. Default 1 hour. */
  idempotencyTtlMs?: number;
  /** Most idempotent outcomes remembered (the oldest go first). Default 100000. */
  maxIdempotencyKeys?: number;
  /** Most bytes of idempotent outcomes remembered (the oldest go first). Default 64 MiB. */
  maxIdempotencyBytes?: number;
  /** Where the node's metrics are registered (see `node_metrics.ts`). Default: its own registry. */
  metrics?: MetricsRegistry;
  /** Most change events kept for watches (see `events.ts`). Default 10000. */
  watchHistoryEvents?: number;
  /** Most bytes of change events kept for watches (see `events.ts`). Default 64 MiB. */
  watchHistoryBytes?: number;
}

/** The idempotency defaults of {@linkcode RaftNodeOptions}. */
export const IDEMPOTENCY_DEFAULTS = {
  ttlMs: 3_600_000,
  maxKeys: 100_000,
  maxBytes: 64 * 1024 * 1024,
} as const;

/**
 * A read-only look inside a running node, for simulations and tests that check Raft's safety
 * properties from outside (see {@linkcode RaftNode.inspect}). Values are read when asked.
 */
export interface NodeInspection {
  /** The node's role. */
  readonly role: Role;
  /** The current term. */
  readonly term: number;
  /** The known leader, or "" if none. */
  readonly leader: NodeId;
  /** The commit index. */
  readonly commit: number;
  /** The index the key-value state has applied up to. */
  readonly applied: number;
  /** The first index the log holds (the one after its snapshot). */
  readonly firstIndex: number;
  /** The last index of the log (in memory: it may not be on disk yet). */
  readonly lastIndex: number;
  /** The entry at `index` if the log holds it (from `firstIndex` to `lastIndex`). */
  entry(index: number): Entry | undefined;
  /** The applied value of `key`, as a stale read returns it. */
  value(key: string): string | null;
  /** The applied entry of `key` (value and revision), or null. */
  kvEntry(key: string): KvEntry | null;
  /**
   * The applied entries in key order: an iterator over the live data, valid until the node
   * applies the next entry (read it at once). Read-only; a simulation's fault injection uses it.
   */
  entries(): Iterable<KvEntry>;
  /** How many idempotent outcomes the state machine remembers. */
  readonly sessionCount: number;
  /** The lease `key` is attached to in the applied state, or null. */
  leaseOf(key: string): number | null;
  /** The number of leases in the applied state. */
  readonly leaseCount: number;
  /** The UTF-8 bytes of the applied keys and values, and `LEASE_BYTES` per lease (the quota's). */
  readonly dataBytes: number;
  /** Whether the node holds the NOSPACE alarm (its disk was full; see `status().alarms`). */
  readonly noSpace: boolean;
}

interface Waiter {
  term: number;
  resolve: (r: KvResult) => void;
  reject: (e: unknown) => void;
}

interface PendingRead {
  /** Answers the read from the state as it is now. */
  serve: () => void;
  reject: (e: unknown) => void;
}

interface ReadRound {
  reads: PendingRead[];
  /** The index to wait for, once the leader confirmed the round. */
  index: number | null;
}

interface WriteJob {
  /**
   * How many of the steps below (install, entries, hard state, compact) are done: a job the disk
   * refused part-way is retried from the first step not done.
   */
  done: number;
  /** A received snapshot to install before the entries. */
  install: SnapshotMeta | null;
  entries: Entry[];
  /**
   * The commit index as of the last Ready merged into the job (0: none), recorded with its entries
   * or alone: the log on disk once the job is written is the log that Ready saw, so every entry up
   * to it there is committed.
   */
  commit: number;
  hardState: HardState | null;
  messages: Message[];
  /** A snapshot just saved: record it and compact the log, after the entries. */
  compact: { meta: SnapshotMeta; compactTo: number } | null;
}

interface ReceivedSnapshot {
  meta: SnapshotMeta;
  data: SnapshotData;
}

/**
 * A Raft node serving the key-value API: see the module doc.
 *
 * **Disk full.** A write that fails with ENOSPC or EDQUOT is not fatal (any other IO error is):
 * the storage rolls the failed write back, and the node raises the `NOSPACE` alarm
 * ({@linkcode NodeStatus.alarms}). The write loop keeps the job it could not write and retries
 * it by itself, after 0.5 s and then backing off to every 5 s, and clears the alarm when a retry
 * succeeds: no restart is needed once space is freed. Meanwhile:
 *
 * - Messages that depend on the write (votes, append acks) stay held until it succeeds, as
 *   always. Heartbeat answers do not depend on it and are sent at once when their term is on
 *   disk, so a leader whose followers' disks are full keeps its quorum and confirms reads.
 * - Appends that carry entries are dropped unread (the leader sends them again later), so the
 *   entries waiting in memory stay what they were when the disk filled.
 * - A leader refuses new writes with {@linkcode NoSpaceError} (507); a follower forwards them to
 *   its leader as usual, which may well have space.
 * - A full follower says so in its heartbeat answers (`reject` set), and so does one that had no
 *   room for the leader's snapshot (it appends nothing until one fits). A leader whose followers
 *   said so, within an election timeout, so that the voters left are not a quorum refuses new
 *   writes with {@linkcode NoSpaceError} too, naming them: they could not commit, and would end
 *   as timeouts of unknown outcome instead.
 * - Reads go on: stale reads everywhere, and linearizable and lease reads on a leader, which
 *   need no disk (ReadIndex is a heartbeat round).
 * - A leader hands over once the others commit entries it could not persist (its commit index
 *   passes its durable index, so it can no longer apply or answer): it steps down
 *   ({@linkcode RaftCore.stepDown}), and the nodes that did persist them, a majority, elect a
 *   leader among themselves. It cannot campaign meanwhile: its vote requests wait behind the
 *   held write. When every disk is full nothing commits past its durable index, so it keeps
 *   leading: writes are refused with 507 and reads are served.
 */
export class RaftNode implements KvBackend, LeaderTransfer {
  /** This node's id. */
  readonly id: NodeId;
  readonly #core: RaftCore;
  readonly #kv: KvStateMachine;
  readonly #storage: NodeStorage;
  readonly #transport: Transport;
  #members: Map<NodeId, Member>;
  /**
   * The bootstrap members (cluster file), for addresses a configuration lacks, with those a
   * joining node heard from the cluster ({@linkcode RaftNode.learnAddresses}).
   */
  readonly #bootstrap: Map<NodeId, Member>;
  /** The cluster file's members alone: what a restart knows without the configuration. */
  readonly #clusterFile: ReadonlyMap<NodeId, Member>;
  readonly #onMembership: ((members: readonly Member[], open: boolean) => void) | undefined;
  /** What the configuration in force was when #members was last built from it (null: never). */
  #confSeen: _ConfSeen | null = null;
  #saidRemoved = false;
  /** The functions of an inspection (see `inspect`), made on the first. */
  #inspectReaders:
    | Pick<NodeInspection, "entry" | "value" | "kvEntry" | "entries" | "leaseOf">
    | undefined;
  /** The last "removed" answer of a peer this node ignored (logged once per index). */
  #ignoredRemovedAt = 0;
  /** The save of the removed mark in flight (see #learnRemoved): a stop waits for it. */
  #removedSave: Promise<void> = Promise.resolve();
  /**
   * The members of a peer's committed configuration that lists members this node does not know
   * (see #takeMembers): heard (validator, address book, #knows) until this node commits up to
   * `until`, the peer's commit index then.
   */
  #vouched: { until: number; members: Member[] } | null = null;
  /** Members queries (#maybeAskMembers): when leader traffic was last taken here. */
  #heardLeaderAt = 0;
  /** When the last query round started, when the next may start on its own, its backoff. */
  #askedAt = -Infinity;
  #askAt = 0;
  #askDelayMs: number;
  #asking = false;
  readonly #electionMs: number;
  /** Set once this node refuses requests as removed (see #isRemoved); cleared if it is not. */
  #refusing = false;
  /** Membership changes proposed here, waiting to be applied, by log index. */
  #confWaiters = new Map<
    number,
    { term: number; resolve: () => void; reject: (e: unknown) => void }
  >();
  readonly #heartbeatMs: number;
  readonly #onFatal: (e: unknown) => void;
  readonly #log: Pick<Console, "info" | "warn" | "error" | "debug">;

  readonly #clock: Clock;
  #cancelTicks: Cancel | undefined;
  #cancelSweep: Cancel | undefined;
  readonly #receivedSweepMs: number;
  /** Received snapshots being written by uploads in progress, by {@linkcode _key}. */
  readonly #uploads = new Map<string, SnapshotId>();
  /** Received snapshots handed to the write loop for installing, by {@linkcode _key}. */
  readonly #installing = new Map<string, SnapshotId>();
  #sweeping = false;
  /** When the last "elections refused at MAX_TERM" warning was logged, and the count then. */
  #termWarning = { at: -Infinity, refused: 0 };
  /** The error a follower refuses writes with (see {@linkcode RaftNode.#notLeader}). */
  #notLeaderError: NotLeaderError | null = null;
  /** When ticking started, and how many ticks were given since: ticks follow the clock. */
  #tickOrigin = 0;
  #ticked = 0;
  readonly #maxCatchUpTicks: number;
  #scheduled = false;
  /** Set while #process runs: a nested call returns, and the running loop takes its work. */
  #processing = false;
  #stopping = false;
  /** The stop under way or done: {@linkcode RaftNode.stop} runs once. */
  #stopped: Promise<void> | null = null;
  #failed = false;
  #waiters = new Map<number, Waiter>();
  /** The encoded size of each proposal of this node not yet seen applied, by log index. */
  #pending = new Map<number, number>();
  /** The sum of `#pending`'s sizes. */
  #pendingBytes = 0;
  readonly #maxPendingProposals: number;
  readonly #maxPendingBytes: number;
  readonly #quotaBytes: number;
  #readQueue: PendingRead[] = [];
  #readRounds = new Map<number, ReadRound>();
  #readSeq = 0;
  #readsAwaitingApply: ReadRound[] = [];
  /** Writes not started yet; new work merges into the last one (group commit). */
  #pendingWrites: WriteJob[] = [];
  readonly #snapshotThreshold: number;
  readonly #snapshotThresholdBytes: number;
  readonly #catchUpEntries: number;
  /** Bytes appended to the log since the last snapshot began (see snapshotThresholdBytes). */
  #logBytes = 0;
  /** No snapshot starts before this time (on the clock), after one the disk refused. */
  #snapshotRetryAt = 0;
  /**
   * The last snapshot the disk refused started a WAL segment that is still the newest: the next
   * attempt writes into it rather than leaving one more segment per refused attempt.
   */
  #rolledForRefused = false;
  /**
   * On a leader: the followers a snapshot could not be sent to lately, and when to try again
   * (a follower whose disk has no room for it is not sent it over and over). Cleared on success.
   */
  readonly #snapshotBackoff = new Map<NodeId, { until: number; delayMs: number }>();
  /** A follower needs a snapshot newer than the newest file (see #sendSnapshot): take one now. */
  #snapshotWanted = false;
  /** The last "snapshot too old for this follower" note, so it is logged once per file and peer. */
  #staleSnapshotNoted = "";
  #snapshotting = false;
  #snapshotTask: Promise<void> = Promise.resolve();
  /** The node's newest snapshot (saved or installed), the one sent to followers. */
  #snapshotFile: SnapshotId | null = null;
  #received = new Map<number, ReceivedSnapshot>();
  /** Set while the write loop runs (cleared synchronously when it drains the queue). */
  #writerActive = false;
  #writing: Promise<void> = Promise.resolve();
  /** The job being written, kept until it is all on disk (and retried while the disk is full). */
  #heldJob: WriteJob | null = null;
  /** Set while the disk is full (the NOSPACE alarm): when to retry the held job, and the backoff. */
  #noSpace: { since: number; retryAt: number; delayMs: number } | null = null;
  /**
   * Set while the leader's snapshot did not fit on this follower's disk (the NOSPACE alarm too,
   * but nothing is held: votes and the rest are written as usual). Cleared when a received
   * snapshot fits, when entries are appended, and when this node leads.
   */
  #noRoomForSnapshot: { index: number; since: number } | null = null;
  /**
   * On a leader: the followers whose last heartbeat answer said their disk is full, with the term
   * and time of that answer (it counts for an election timeout, in that term only).
   */
  readonly #fullPeers = new Map<NodeId, { term: number; at: number }>();
  /** Called once a leader transfer settles (see #transferSettled): API callers, held writes. */
  #transferWaiters: (() => void)[] = [];
  /** The term on disk: heartbeat answers in it need no write first. */
  #durableTerm: number;
  /** The commit index in the hard state on disk (see #saveCommit). */
  #storedCommit: number;
  /** The highest commit index given to a write job to record in the log, and when. */
  #commitQueued: number;
  #commitQueuedAt = -Infinity;
  /** The commit index as of the latest Ready; a tick records it if no batch did (#recordCommit). */
  #commitDue = 0;
  /** A write job completed since the last tick: the log is busy, the next batch will record it. */
  #wroteSinceTick = false;
  readonly #wallClock: () => number;
  readonly #idempotency: { ttlMs: number; maxKeys: number; maxBytes: number };
  readonly #metrics: NodeMetrics;
  /** The leases' deadlines, enforced while this node leads (see `lease_tracker.ts`). */
  readonly #leases: LeaseTracker;
  /** The leader's side of leases: keep-alives and the time left (see {@linkcode LeaseBackend}). */
  readonly leases: LeaseBackend;
  /** The shortest time to live this node grants (see {@linkcode minLeaseTtlMs}). */
  readonly #minLeaseTtlMs: number;

  /** Recovers a node from `options.storage`; call {@linkcode RaftNode.start} to begin. */
  constructor(options: RaftNodeOptions) {
    this.id = options.id;
    this.#kv = new KvStateMachine({
      ...(options.watchHistoryEvents === undefined
        ? {}
        : { historyEvents: options.watchHistoryEvents }),
      ...(options.watchHistoryBytes === undefined
        ? {}
        : { historyBytes: options.watchHistoryBytes }),
    });
    this.#storage = options.storage;
    this.#clock = options.clock ?? realClock;
    this.#members = new Map(options.members.map((m) => [m.id, m]));
    this.#bootstrap = new Map(this.#members);
    this.#clusterFile = new Map(this.#members);
    this.#onMembership = options.onMembership;
    this.#heartbeatMs = options.heartbeatMs ?? 100;
    this.#electionMs = options.electionTimeoutMs ?? 1000;
    this.#askDelayMs = this.#electionMs;
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
    this.#receivedSweepMs = options.receivedSweepMs ?? 60_000;
    this.#snapshotThresholdBytes = options.snapshotThresholdBytes ?? 64 * 1024 * 1024;
    this.#maxPendingProposals = options.maxPendingProposals ?? 4096;
    this.#maxPendingBytes = options.maxPendingBytes ?? 64 * 1024 * 1024;
    this.#quotaBytes = options.quotaBytes ?? 0;
    this.#catchUpEntries = options.snapshotCatchUpEntries ??
      Math.min(5000, this.#snapshotThreshold);
    this.#wallClock = options.wallClock ?? Date.now;
    this.#idempotency = {
      ttlMs: options.idempotencyTtlMs ?? IDEMPOTENCY_DEFAULTS.ttlMs,
      maxKeys: options.maxIdempotencyKeys ?? IDEMPOTENCY_DEFAULTS.maxKeys,
      maxBytes: options.maxIdempotencyBytes ?? IDEMPOTENCY_DEFAULTS.maxBytes,
    };
    this.#leases = new LeaseTracker(
      this.#clock,
      options.electionTimeoutMs ?? 1000,
      (id) => this.#kv.lease(id),
    );
    this.#minLeaseTtlMs = minLeaseTtlMs(electionTicks, this.#heartbeatMs);
    this.leases = {
      keepAlive: (id, signal) => this.#keepAlive(id, signal),
      leaseStatus: (id, signal) => this.#leaseStatus(id, signal),
      minTtlMs: this.#minLeaseTtlMs,
    };
    const snapshot = this.#storage.snapshot;
    if (snapshot) {
      this.#kv.reset(this.#storage.snapshotData, snapshot.index);
      this.#leases.reset(this.#kv.leases());
      this.#snapshotFile = { index: snapshot.index, term: snapshot.term };
    }
    const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
    // Read ids are the contexts of ReadIndex requests: a leader takes a follower's request sent
    // again under the same id as the one still waiting. A restarted follower that counted from 1
    // again could therefore be answered, for a new read, with the index of a read it sent before
    // it went down, which misses the writes acknowledged since: each start begins at its own
    // random point instead (below 2^47, so ids stay far under MAX_INDEX).
    this.#readSeq = _firstReadId(seededRandom((seed ^ 0x2545f491) >>> 0));
    // The members the cluster started with, as recorded then; the cluster file's only when none
    // were recorded (files of an earlier version).
    const fileVoters = options.members.map((m) => m.id);
    const bootVoters = [...(this.#storage.initialVoters ?? fileVoters)];
    this.#core = new RaftCore({
      id: this.id,
      // A joining node has no bootstrap configuration: it must never elect itself.
      voters: options.join ? [] : bootVoters,
      info: options.join
        ? {}
        : Object.fromEntries(options.members.map((m) => [m.id, memberInfo(m)])),
      electionTicks,
      heartbeatTicks: 1,
      random: seededRandom(seed),
      hardState: this.#storage.hardState,
      // The configuration a configuration change copies must hold every member's addresses (a
      // joining node learns them from it): a snapshot written as booted, or restored from a
      // backup, has none, and the cluster file gives them.
      snapshot: snapshot && _metaWithAddresses(snapshot, this.#clusterFile),
      entries: this.#storage.entries,
    });
    this.#storage.releaseRecovered?.();
    const inForce = [...this.#core.voters].sort();
    if (
      !options.join && !_sameIds(inForce, [...fileVoters].sort()) &&
      _sameIds(inForce, [...bootVoters].sort())
    ) {
      this.#log.warn(
        `the cluster file lists ${fileVoters.join(", ")}, but the cluster was started with ` +
          `${bootVoters.join(", ")} (recorded in the data directory): those are the members; a ` +
          `cluster file does not change them once the node has data (use raftkv members)`,
      );
    }
    // The recovered term is on disk (in the hard state, or as the term of the last log entry).
    this.#durableTerm = this.#core.term;
    this.#storedCommit = this.#storage.hardState.commit;
    this.#commitQueued = this.#storage.hardState.commit;
    this.#metrics = new NodeMetrics(options.metrics ?? new MetricsRegistry(), () => this.#gauges());
    this.#transport = options.transport({
      onMessages: (msgs) => this.#onMessages(this.#admit(msgs)),
      onSnapshot: (msg, body) => this.#receiveSnapshot(msg, body),
      snapshotRefusal: (m) => this.#snapshotRefusal(m),
      onUnreachable: (peer) => this.#guard(() => this.#core.reportUnreachable(peer)),
      removedAt: (from, since) => {
        if (this.#failed) return 0;
        const at = this.#core.removedAt(from);
        if (at === 0 || at < since) return 0;
        this.#metrics.removedPeerAnswers.inc();
        return at;
      },
      onRemoved: (peer, index) => this.#guard(() => this.#learnRemoved(peer, index)),
      memberSince: () => this.#failed ? 0 : this.#core.memberSince,
      clusterId: () => this.#storage.clusterId,
      checkCluster: (claimed) => this.#checkCluster(claimed),
      committedMembers: () => this.#failed ? null : this.#committedMembers(),
      onUnknownSender: (_from, since) => {
        // Only a sender that claims a configuration newer than this node's may be a member
        // added while this node was away; anyone else is a stranger (or removed).
        const core = this.#core;
        if (since > Math.max(core.confIndex, core.log.snapIndex)) this.#maybeAskMembers(true);
      },
    });
    // A peer told this node before it restarted that it was removed (see #learnRemoved).
    const mark = this.#storage.removedAt ?? 0;
    if (mark > 0 && this.#core.learnRemoved(mark)) {
      this.#saidRemoved = true;
      this.#log.warn(
        `this node (${this.id}) learned before it restarted that it was removed from the ` +
          `cluster (a peer's committed configuration as of index ${mark} leaves it out): it takes no ` +
          `further part; stop it, and to rejoin start it with an empty data directory and --join`,
      );
    }
    this.#syncMembership();
  }

  /**
   * Rebuilds the member list from the configuration in force when it changed: the transport's
   * address book, the validator and the API follow it. Says so when this node was removed.
   */
  #syncMembership(): void {
    const core = this.#core;
    const settled = core.log.committed >= core.confIndex;
    const vouched = this.#vouched;
    if (vouched !== null && (core.log.committed >= vouched.until || core.removed)) {
      this.#log.info(
        `this node committed up to ${core.log.committed}: the members a peer vouched for ` +
          `(its commit index ${vouched.until}) are heard on its word no longer`,
      );
      this.#vouched = null;
    }
    // Runs for every Ready: compare first, without building anything.
    const vouchedUntil = this.#vouched?.until ?? 0;
    const was = this.#confSeen;
    if (
      was !== null && was.index === core.confIndex && was.settled === settled &&
      was.vouchedUntil === vouchedUntil && _sameIds(was.voters, core.voters) &&
      _sameIds(was.learners, core.learners)
    ) return;
    const first = was === null && this.#members.size === this.#bootstrap.size;
    // The core replaces its member arrays when the configuration changes, never edits them.
    this.#confSeen = {
      index: core.confIndex,
      settled,
      voters: core.voters,
      learners: core.learners,
      vouchedUntil,
    };
    const conf = core.confState();
    // Until the newest configuration is committed, the members of the committed one stay in
    // the address book too: a leader that removes itself (or a removed follower) must still
    // be heard, and answered, until the change commits.
    const committed = settled ? conf : core.confAt(core.log.committed);
    const members = new Map<NodeId, Member>();
    const ids = new Set([
      ...conf.voters,
      ...conf.learners,
      ...committed.voters,
      ...committed.learners,
    ]);
    for (const id of ids) {
      members.set(
        id,
        parseMemberInfo(id, conf.info[id] ?? committed.info[id]) ?? this.#bootstrap.get(id) ?? {
          id,
          rpcUrl: "",
          apiUrl: "",
        },
      );
    }
    // Members added while this node was away, that a peer's committed configuration lists.
    for (const m of this.#vouched?.members ?? []) if (!members.has(m.id)) members.set(m.id, m);
    const open = conf.voters.length === 0;
    if (open) {
      // Waiting to join: the bootstrap list (this node) is all there is.
      for (const [id, m] of this.#bootstrap) members.set(id, m);
    }
    this.#members = members;
    const peers = [...members.values()].filter((m) => m.id !== this.id && m.rpcUrl !== "");
    this.#transport.setPeers?.(peers);
    this.#onMembership?.([...members.values()], open);
    if (open) {
      this.#log.info("no configuration yet: waiting for a leader to add this node (--join)");
    } else if (!first || core.confIndex > 0) {
      this.#log.info(
        `configuration: voters [${conf.voters.join(", ")}], learners [${
          conf.learners.join(", ")
        }] (entry ${core.confIndex})`,
      );
    }
    const unknown = [...members.values()].filter((m) => m.id !== this.id && m.rpcUrl === "");
    if (!open && unknown.length > 0) {
      this.#log.warn(
        `no address for member(s) ${
          unknown.map((m) => m.id).join(", ")
        }: neither the configuration nor the cluster file gives one, so this node cannot send ` +
          "them anything; list them in its cluster file (with their rpc_url and api_url)",
      );
    }
    if (core.removed && !this.#saidRemoved) {
      this.#saidRemoved = true;
      this.#log.warn(
        `this node (${this.id}) was removed from the cluster: it takes no further part; ` +
          `stop it, and to rejoin start it with an empty data directory and --join`,
      );
    } else if (!core.removed) {
      this.#saidRemoved = false;
    }
  }

  /**
   * A peer answered that its committed configuration at `index` leaves this node out: the core
   * takes it only when `index` is above every configuration this node holds that lists it (see
   * {@linkcode RaftCore.learnRemoved}); then this node refuses requests as removed and stops
   * campaigning, as if its log held the removal.
   */
  #learnRemoved(peer: NodeId, index: number): void {
    const core = this.#core;
    const was = core.removed;
    if (!was && core.contradictsCommitted(index)) {
      if (index !== this.#ignoredRemovedAt) {
        this.#ignoredRemovedAt = index;
        this.#log.warn(
          `peer ${peer} answered that its committed configuration as of index ${index} leaves ` +
            `this node out, but this node committed that index with a configuration that lists ` +
            `it: ${peer}'s log is not this cluster's (was it started on a cluster file that lists ` +
            `fewer members?); ignored`,
        );
      }
      return;
    }
    if (!core.learnRemoved(index) || was) {
      if (!core.removed && index !== this.#ignoredRemovedAt) {
        this.#ignoredRemovedAt = index;
        this.#log.info(
          `peer ${peer} answered that its committed configuration as of index ${index} leaves this ` +
            `node out, but this node holds a newer configuration that lists it: ignored`,
        );
      }
      return;
    }
    this.#saidRemoved = true;
    // Kept, so that after a restart this node refuses clients at once (a learner, which sends
    // nothing on its own, might not learn it again for long).
    // A stop waits for the save: the mark must not be lost because the node was stopped at once.
    const save = this.#storage.saveRemovedAt?.(index);
    if (save !== undefined) {
      const saved = save.catch((e) =>
        this.#log.warn(`could not save that this node was removed (entry ${index}): ${e}`)
      );
      this.#removedSave = Promise.all([this.#removedSave, saved]).then(() => {});
    }
    this.#log.warn(
      `this node (${this.id}) was removed from the cluster while it was away: peer ${peer}'s ` +
        `committed configuration as of index ${index} leaves it out. It takes no further part; ` +
        `stop it, and to rejoin start it with an empty data directory and --join`,
    );
  }

  /**
   * Whether this node refuses reads and writes as removed: the configuration it holds leaves it
   * out (see {@linkcode RaftCore.removed}) and it does not lead. A leader that removes itself
   * keeps serving until the change commits and it steps down. A removed node gets no more of the
   * log, so a read it would confirm with its old leader (who no longer answers it) or wait to
   * apply would never be answered.
   */
  #isRemoved(): boolean {
    return this.#core.removed && this.#core.role !== "leader";
  }

  /**
   * Once this node is removed: fails every read it holds with {@linkcode RemovedError} (queued,
   * waiting for the leader's confirmation, or for an index it will not apply), and ends its
   * watches. New requests are refused as they arrive (#read, write, watchHistory).
   */
  #refuseWhenRemoved(): void {
    const removed = this.#isRemoved();
    if (removed === this.#refusing) return;
    this.#refusing = removed;
    if (!removed) return;
    const e = new RemovedError(this.id);
    this.#failUnconfirmedReads(e);
    this.#serveReads();
    const waiting = this.#readsAwaitingApply;
    this.#readsAwaitingApply = [];
    for (const round of waiting) for (const r of round.reads) r.reject(e);
    this.#kv.events.closeAll(e.message);
  }

  /**
   * Learns members' addresses from outside the log: a joining node hears them in the answer to
   * its request to be added, before the configuration entry reaches it, and must answer the
   * leader meanwhile. Addresses in the configuration, once it has one, take precedence.
   */
  learnAddresses(members: readonly Member[]): void {
    for (const m of members) if (m.id !== this.id) this.#bootstrap.set(m.id, m);
    this.#confSeen = null;
    this.#syncMembership();
  }

  /** Membership changes (admin operations): see {@linkcode Membership}. */
  readonly membership: Membership = {
    list: () => this.#memberViews(),
    add: (m, signal) => this.#addMember(m, signal),
    remove: (id, signal) => this.#changeMembership({ op: "remove", node: id }, signal),
  };

  /**
   * Whether messages from `id` are taken: any sender while this node has no configuration yet
   * (it waits to join), else a member of the address book or of the configuration just appended
   * (a batch may carry the entry that adds its sender before the book follows).
   */
  #knows(id: NodeId): boolean {
    const core = this.#core;
    return core.voters.length === 0 || this.#members.has(id) || core.voters.includes(id) ||
      core.learners.includes(id);
  }

  /**
   * Asks the peers for their committed configuration (#askMembers) when this node has not taken
   * leader traffic for an election timeout (`trigger` false, on a tick; the pause between rounds
   * doubles up to eight election timeouts while nothing new is learned), or when a sender it
   * refused claims a newer configuration than this node's (`trigger` true; at most one round per
   * election timeout, whatever strangers send). Never while it leads, waits to join, or counts
   * itself removed.
   */
  #maybeAskMembers(trigger: boolean): void {
    const core = this.#core;
    if (this.#stopping || this.#asking || this.#transport.queryMembers === undefined) return;
    const now = this.#clock.now();
    if (core.role === "leader") this.#heardLeaderAt = now;
    if (core.role === "leader" || core.voters.length === 0 || core.removed) return;
    if (trigger ? now - this.#askedAt < this.#electionMs : now < this.#askAt) return;
    if (!trigger && now - this.#heardLeaderAt < this.#electionMs) return;
    this.#askedAt = now;
    this.#askAt = now + this.#askDelayMs;
    this.#askDelayMs = Math.min(2 * this.#askDelayMs, 8 * this.#electionMs);
    this.#metrics.membersQueries.inc();
    void this.#askMembers();
  }

  /**
   * One round of members queries, to every peer in the address book at once; the answers go to
   * #takeMembers. A member added while this node was away, say one that now leads, can then bring
   * it up to date; a node removed while it was away learns it.
   */
  async #askMembers(): Promise<void> {
    this.#asking = true;
    try {
      const peers = [...this.#members.keys()].filter((id) => id !== this.id);
      const answers = await Promise.all(
        peers.map((peer) =>
          this.#transport.queryMembers!(peer).then(
            (a) => a === null ? null : { peer, ...a },
            () => null,
          )
        ),
      );
      this.#guard(() => this.#takeMembers(answers));
    } finally {
      this.#asking = false;
    }
  }

  /**
   * Takes the most advanced answer of a query round (the highest commit index). Committed
   * configurations form one history, so a peer's configuration in force at a commit index above
   * the configuration this node counts itself a member by is newer than anything this node holds
   * (a configuration entry of its own at or below that index either is in the peer's committed
   * history or was truncated away). If it leaves this node out, this node was removed (or its
   * addition never committed): it learns so as from a peer's `410`. If it lists this node and
   * members this node does not know, those are heard until this node commits up to there.
   */
  #takeMembers(answers: ({ peer: NodeId } & CommittedMembers | null)[]): void {
    const core = this.#core;
    if (this.#stopping || core.voters.length === 0 || core.removed) return;
    const own = Math.max(1, core.confIndex, core.log.snapIndex);
    let best: { peer: NodeId } & CommittedMembers | null = null;
    for (const a of answers) if (a && a.commit > (best?.commit ?? 0)) best = a;
    if (best === null || best.commit <= core.log.committed) return;
    if (!best.members.some((m) => m.node_id === this.id)) {
      if (best.commit >= own) this.#learnRemoved(best.peer, best.commit);
      return;
    }
    const unknown = best.members.filter((m) => !this.#members.has(m.node_id));
    if (unknown.length === 0) return;
    this.#askDelayMs = this.#electionMs;
    this.#vouched = {
      until: best.commit,
      members: best.members.map((m) => ({ id: m.node_id, rpcUrl: m.rpc_url, apiUrl: m.api_url })),
    };
    this.#log.info(
      `peer ${best.peer}'s committed configuration (entry ${best.index}, in force at its commit ` +
        `index ${best.commit}) lists members this node does not know: [${
          unknown.map((m) => m.node_id).join(", ")
        }]; they are heard until this node commits up to ${best.commit}`,
    );
    this.#syncMembership();
  }

  /**
   * This node's committed configuration for a peer that asks: the configuration in force at the
   * commit index, with the members' addresses; null while it has none (joining). A newer
   * configuration in the log, not committed yet, does not count (after a restart, say); nor does
   * this node's removal: what it committed is history every member shares, and a member that was
   * away while the rest of the cluster was replaced may know no one else to ask.
   */
  #committedMembers(): CommittedMembers | null {
    const core = this.#core;
    if (core.voters.length === 0) return null;
    const commit = Math.max(core.log.committed, core.log.snapIndex);
    const index = Math.max(1, core.confIndexAt(commit));
    const conf = core.confAt(commit);
    const learners = new Set(conf.learners);
    return {
      index,
      commit: Math.max(commit, index),
      members: [...conf.voters, ...conf.learners].map((id) => {
        const m = parseMemberInfo(id, conf.info[id]) ?? this.#members.get(id);
        return {
          node_id: id,
          rpc_url: m?.rpcUrl ?? "",
          api_url: m?.apiUrl ?? "",
          role: learners.has(id) ? "learner" : "voter",
        };
      }),
    };
  }

  /** This node took leader traffic: no members query is needed, and the backoff starts over. */
  #tookLeader(): void {
    this.#heardLeaderAt = this.#clock.now();
    this.#askDelayMs = this.#electionMs;
  }

  #memberViews(): MemberView[] {
    const learners = new Set(this.#core.learners);
    const ids = [...this.#core.voters, ...this.#core.learners];
    return ids.map((id) => {
      const m = this.#members.get(id);
      return {
        node_id: id,
        rpc_url: m?.rpcUrl ?? "",
        api_url: m?.apiUrl ?? "",
        role: learners.has(id) ? "learner" : "voter",
      };
    });
  }

  #addMember(
    m: { id: NodeId; rpcUrl: string; apiUrl: string },
    signal: AbortSignal,
  ): Promise<{ index: number }> {
    for (const [id, other] of this.#members) {
      if (id === m.id) {
        return Promise.reject(new MembershipError("exists", `"${id}" is already a member`));
      }
      if (other.rpcUrl === m.rpcUrl || other.apiUrl === m.apiUrl) {
        return Promise.reject(
          new MembershipError("exists", `member "${id}" already uses that address`),
        );
      }
    }
    return this.#changeMembership(
      { op: "add-learner", node: m.id, info: memberInfo({ ...m }) },
      signal,
    );
  }

  #changeMembership(
    change: { op: "add-learner" | "remove"; node: NodeId; info?: string },
    signal: AbortSignal,
  ): Promise<{ index: number }> {
    if (this.#stopping || this.#failed) return Promise.reject(new StoppingError());
    const core = this.#core;
    if (core.role !== "leader") return Promise.reject(new NotLeaderError(core.leader));
    let at: { index: number; term: number };
    try {
      at = core.proposeConfChange(change);
    } catch (e) {
      if (e instanceof ConfChangeError) {
        return Promise.reject(new MembershipError(e.code, e.message));
      }
      if (e instanceof LeaderTransferError || e instanceof NotLeaderError) return Promise.reject(e);
      this.#fail(e);
      return Promise.reject(new StoppingError());
    }
    this.#log.info(`proposed membership change: ${change.op} ${change.node} (entry ${at.index})`);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#confWaiters.delete(at.index);
        reject(
          new OutcomeUnknownError("the membership change was not applied within the deadline"),
        );
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#confWaiters.set(at.index, {
        term: at.term,
        resolve: () => {
          signal.removeEventListener("abort", onAbort);
          resolve({ index: at.index });
        },
        reject: (e) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      });
      this.#schedule();
    });
  }

  /** Starts ticking. A single-member cluster elects itself at once. */
  start(): void {
    this.#tickOrigin = this.#clock.now();
    this.#cancelTicks = this.#clock.every(this.#heartbeatMs, () => {
      this.#catchUpTicks();
      this.#recordCommit();
      this.#retryWrite();
      this.#expireLeases();
      this.#maybeAskMembers(false);
    });
    this.#heardLeaderAt = this.#clock.now();
    this.#cancelSweep = this.#clock.every(this.#receivedSweepMs, () => this.#sweepReceived());
    const voters = this.#core.voters;
    if (voters.length === 1 && voters[0] === this.id) this.#guard(() => this.#core.campaign());
    this.#schedule();
  }

  /**
   * Stops: takes no new requests, finishes the write in flight, closes transport and storage.
   * After a fatal error too (the storage's lock is then released, and the requests still waiting
   * are answered), though nothing more is written. Another call waits for the same stop.
   */
  stop(): Promise<void> {
    this.#stopped ??= this.#stop();
    return this.#stopped;
  }

  async #stop(): Promise<void> {
    this.#stopping = true;
    this.#cancelTicks?.();
    this.#cancelSweep?.();
    this.#failUnconfirmedReads(new StoppingError());
    for (const round of this.#readsAwaitingApply) {
      for (const r of round.reads) r.reject(new StoppingError());
    }
    this.#readsAwaitingApply = [];
    this.#settleTransfers();
    this.closeWatches();
    // A write that ends applies entries, which may start a snapshot, whose log compaction needs
    // the storage too: wait until neither runs (a snapshot started after the first wait once made
    // closing the storage fail as busy).
    while (this.#writerActive || this.#snapshotting) {
      await (this.#writerActive ? this.#writing : this.#snapshotTask);
    }
    await this.#saveCommit();
    for (const w of this.#waiters.values()) {
      w.reject(new OutcomeUnknownError("the node stopped before the write was applied"));
    }
    this.#waiters.clear();
    for (const w of this.#confWaiters.values()) {
      w.reject(new OutcomeUnknownError("the node stopped before the change was applied"));
    }
    this.#confWaiters.clear();
    await this.#transport.close();
    await this.#removedSave;
    try {
      await this.#storage.close();
    } catch (e) {
      // After a fatal error the storage may be broken: what matters is that its lock is let go.
      if (!this.#failed) throw e;
      this.#log.warn(`closing the storage after the fatal error failed too: ${e}`);
    }
  }

  /**
   * As it stops, once everything is written, stores the commit index with the term and vote. The
   * hard state is written only when the term or vote changes; the log's commit records carry the
   * commit index further, but the last of them may not be synced, and a power failure after the
   * stop would lose it: a restart would then apply no further until a leader is heard from
   * (`stale` reads would go back, and a lone node would serve less than it had). Only as far as
   * the log on disk reaches; best effort (a failure is logged, and the restart applies less).
   */
  async #saveCommit(): Promise<void> {
    const core = this.#core;
    const commit = Math.min(core.log.committed, core.log.stable);
    if (this.#failed || this.#heldJob || this.#pendingWrites.length > 0) return;
    if (commit <= this.#storedCommit) return;
    try {
      await this.#storage.saveHardState({ term: core.term, vote: core.vote, commit });
    } catch (e) {
      this.#log.warn(
        `could not store the commit index ${commit} while stopping (${
          e instanceof Error ? e.message : e
        }): the restart applies only up to ${this.#storedCommit} until it hears from a leader`,
      );
    }
  }

  // ---- KvBackend ----------------------------------------------------------------------------

  /**
   * Ends every watch with a final event, and every watch opened from now on: called as the node
   * begins to stop, so that the streams end cleanly before the API server goes away.
   */
  closeWatches(): void {
    this.#kv.events.close("the node is shutting down");
  }

  /** The change history of the applied state, that watches are served from (see KvBackend). */
  watchHistory(): EventHistory {
    if (this.#stopping) throw new StoppingError();
    if (this.#isRemoved()) throw new RemovedError(this.id);
    return this.#kv.events;
  }

  /**
   * Proposes `cmd` and resolves with its result once it is committed and applied. With an
   * `idempotencyKey` the leader stamps its wall clock and the idempotency limits into the entry,
   * and a repeat of the same key and command within the time to live is answered with the first
   * outcome (`replayed: true`) instead of being applied again.
   */
  async write(
    cmd: PlainCommand,
    signal: AbortSignal,
    idempotencyKey?: string | null,
  ): Promise<KvResult> {
    if (this.#isRemoved()) throw new RemovedError(this.id);
    cmd = this.#withMinimumTtl(cmd);
    let refusal: NoSpaceError | QuotaExceededError | null = this.#fullDiskRefusal();
    if (refusal === null) {
      for (let wait; (wait = this.#admissionWait(cmd, signal)) !== null;) await wait;
      // Judged by the leader that proposes it, in the term it proposes it in, with nothing between.
      refusal = this.#fullDiskRefusal() ?? this.#quotaRefusal(cmd);
    }
    if (refusal !== null) return this.#refused(refusal, cmd, idempotencyKey);
    const full: KvCommand = idempotencyKey === undefined || idempotencyKey === null ? cmd : {
      op: "idempotent",
      id: idempotencyKey,
      at: this.#wallClock(),
      ...this.#idempotency,
      command: cmd,
    };
    return await this.#propose(full, signal);
  }

  /**
   * Answers a write the leader refuses before proposing it (a full disk, the quota). A refusal
   * speaks only for this attempt. With an idempotency key whose first outcome this node remembers
   * (unexpired), the write is answered as applying it would be, with nothing proposed: that outcome
   * (`replayed: true`), or `idempotency_mismatch`. When an earlier attempt with the key is in this
   * node's log past its applied index, the outcome is unknown: the refusal becomes an
   * {@linkcode UnsettledRetryError} (504), so that the client sends it again later and gets the
   * first outcome. Otherwise it is thrown (507), and counted. An earlier attempt this log does not
   * hold (sent to an earlier leader) is not found: a 507 still speaks only for its own attempt.
   */
  #refused(
    error: NoSpaceError | QuotaExceededError,
    cmd: PlainCommand,
    idempotencyKey?: string | null,
  ): KvResult {
    if (idempotencyKey !== undefined && idempotencyKey !== null) {
      const remembered = this.#kv.remembered(idempotencyKey, cmd, this.#wallClock());
      if (remembered !== null) {
        this.#metrics.refusedRetriesReplayed.inc();
        return remembered;
      }
      if (this.#pendingAttempt(idempotencyKey)) {
        this.#metrics.proposalFailed(error);
        throw new UnsettledRetryError(error);
      }
    }
    this.#metrics.proposalFailed(error);
    throw error;
  }

  /** Whether the log holds, past the applied index, an idempotent command with `id`. */
  #pendingAttempt(id: string): boolean {
    const log = this.#core.log;
    for (const e of log.slice(this.#kv.appliedIndex + 1, log.lastIndex() + 1)) {
      if (e.type !== EntryType.Normal) continue;
      try {
        const cmd = decodeCommand(e.data);
        if (cmd.op === "idempotent" && cmd.id === id) return true;
      } catch {
        // Not a command this node can read: not the attempt looked for.
      }
    }
    return false;
  }

  /**
   * What this leader must wait for before it can judge `cmd` as the node that will propose it,
   * or null (at once, so that writes made in one turn are proposed in it):
   * - a transfer of its leadership under way (one that ends with another leader leaves this node
   *   a follower, that refuses the write towards it);
   * - near the quota, an entry of its own term applied. A new leader may not yet have applied
   *   what its predecessors committed (a restarted node applies only up to the commit index it
   *   stored), so its count of the data may be short by what its log holds past that; it waits
   *   as a linearizable read does.
   *
   * Either wait may end in a later term: ask again.
   */
  #admissionWait(cmd: PlainCommand, signal: AbortSignal): Promise<unknown> | null {
    const core = this.#core;
    if (this.#stopping || core.role !== "leader") return null;
    if (core.leadTransferee !== NONE) return this.#transferSettled(signal);
    if (this.#quotaBytes === 0 || core.log.term(this.#kv.appliedIndex) === core.term) return null;
    const bound = growthBound(cmd);
    if (bound === 0 || this.#kv.dataBytes + this.#unappliedBytes() + bound <= this.#quotaBytes) {
      return null; // fits even if everything unapplied adds to the data
    }
    return this.#read("linearizable", signal, () => {});
  }

  /**
   * The bytes of the entries this node's log holds past its applied index, and a lease's
   * {@linkcode LEASE_BYTES} for each: at least what they can add to the data (keys and values are
   * stored as UTF-8, and an entry grants at most one lease).
   */
  #unappliedBytes(): number {
    const log = this.#core.log;
    let bytes = 0;
    const from = this.#kv.appliedIndex + 1;
    for (const e of log.slice(from, log.lastIndex() + 1)) bytes += e.data.byteLength + LEASE_BYTES;
    return bytes;
  }

  /**
   * `cmd` with the time to live of the lease it grants (a grant, or a put with `ttlMs`) raised to
   * this node's minimum: what the log records, so every replica applies the same.
   */
  #withMinimumTtl(cmd: PlainCommand): PlainCommand {
    const min = this.#minLeaseTtlMs;
    if (cmd.op === "lease_grant" && cmd.ttlMs < min) return { ...cmd, ttlMs: min };
    if (cmd.op === "put" && cmd.lease !== undefined && "ttlMs" in cmd.lease) {
      const ttlMs = grantedTtlMs(cmd.lease.ttlMs, min);
      if (ttlMs !== cmd.lease.ttlMs) return { ...cmd, lease: { ttlMs } };
    }
    return cmd;
  }

  /** Writes `value` under `key` once committed and applied. */
  async put(key: string, value: string, signal: AbortSignal): Promise<WriteResult> {
    const r = await this.write({ op: "put", key, value }, signal);
    return { index: r.index };
  }

  /** Deletes `key` once committed and applied. */
  async delete(key: string, signal: AbortSignal): Promise<DeleteResult> {
    const r = await this.write({ op: "delete", key }, signal);
    return { index: r.index, deleted: r.op === "delete" && r.deleted };
  }

  /** Reads `key` with the given consistency (see {@linkcode Consistency}): its value or null. */
  async get(key: string, consistency: Consistency, signal: AbortSignal): Promise<string | null> {
    return (await this.read(key, consistency, signal)).entry?.value ?? null;
  }

  /** Reads `key`'s entry with the given consistency, and the applied index it reflects. */
  read(key: string, consistency: Consistency, signal: AbortSignal): Promise<ReadResult> {
    return this.#read(consistency, signal, () => ({
      entry: this.#kv.entry(key),
      index: this.#kv.appliedIndex,
    }));
  }

  /** Reads a range of keys with the given consistency (see {@linkcode KvStateMachine.range}). */
  range(query: RangeQuery, consistency: Consistency, signal: AbortSignal): Promise<RangeAnswer> {
    return this.#read(consistency, signal, () => ({
      ...this.#kv.range(query),
      index: this.#kv.appliedIndex,
    }));
  }

  /** Answers `serve()` once a read with the given consistency may see the state. */
  #read<T>(consistency: Consistency, signal: AbortSignal, serve: () => T): Promise<T> {
    if (this.#stopping) return Promise.reject(new StoppingError());
    if (this.#isRemoved()) return Promise.reject(new RemovedError(this.id));
    if (consistency === "stale") return Promise.resolve(serve());
    if (!this.#canConfirmReads() || (this.#cannotApply() && this.#core.role !== "leader")) {
      // A full follower cannot apply what commits after its disk filled: the leader answers.
      return Promise.reject(new NotLeaderError(this.#core.leader));
    }
    if (consistency === "lease" && this.#core.role === "leader") {
      // After a stall (a paused process, a long GC) the ticks owed must land first, or a lease
      // that expired in real time would still look valid.
      this.#catchUpTicks();
      const index = this.#core.role === "leader" ? this.#core.leaseRead() : null;
      // Within the lease and applied far enough: answer at once. Otherwise fall back to ReadIndex.
      if (index !== null && this.#kv.appliedIndex >= index) {
        return Promise.resolve(serve());
      }
    }
    return new Promise((resolve, reject) => {
      const read: PendingRead = { serve: () => {}, reject };
      const onAbort = () => {
        read.reject = () => {};
        read.serve = () => {};
        reject(signal.reason);
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      read.serve = () => {
        signal.removeEventListener("abort", onAbort);
        resolve(serve());
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
    const chunks = encodeSnapshot(header, {
      entries: view.entries(),
      sessions: view.sessions,
      leases: view.leases,
    });
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
    const membership = this.#membership();
    // A removed node takes no further part: the leader it last heard of is none of its business
    // (and its clients' retries must not be sent there on its word).
    const leader = membership === "removed" ? NONE : this.#core.leader;
    const member = leader === NONE ? undefined : this.#members.get(leader);
    return {
      id: this.id,
      role: this.#core.role,
      term: this.#core.term,
      leader: member ? { id: member.id, api_url: member.apiUrl } : null,
      commit_index: this.#core.log.committed,
      applied_index: this.#kv.appliedIndex,
      last_index: this.#core.log.lastIndex(),
      members: [...this.#members.values()].map((m) => ({ id: m.id, api_url: m.apiUrl })),
      alarms: this.#alarmed() ? ["NOSPACE"] : [],
      membership,
      data_bytes: this.#kv.dataBytes,
      quota_bytes: this.#quotaBytes,
      ...(this.#storage.clusterId === undefined ? {} : { cluster_id: this.#storage.clusterId }),
    };
  }

  /**
   * Takes `id` as this node's cluster: the id the member it joined through (`source`, its
   * `--join`) answered with. A node that knows none takes it. One that took another from the
   * first peer that wrote to it was reached first by another cluster's node (which lists this
   * node): it stops with a fatal error, as its data is that cluster's.
   *
   * @param id The cluster id the join's answer named.
   * @param source Where the answer came from, for the error.
   */
  confirmCluster(id: string, source: string): void {
    const own = this.#storage.clusterId;
    if (own === id || this.#failed || !CLUSTER_ID_PATTERN.test(id)) return;
    if (own === undefined) {
      this.#storage.adoptClusterId?.(id);
      this.#log.info(`this node belongs to cluster ${id} (the one it joined through ${source})`);
      return;
    }
    this.#fail(
      new Error(
        `this node joined cluster ${JSON.stringify(id)} through ${source}, but took cluster ` +
          `${JSON.stringify(own)} from the first peer that wrote to it: another cluster's node ` +
          `(whose cluster file lists this node) reached it first. Stop it, empty its data ` +
          `directory and start it again with --join`,
      ),
    );
  }

  /**
   * Why a peer request that says it comes from cluster `claimed` is refused, or null: only when
   * both sides know their cluster and the two differ (a request that names none, from a node that
   * joins and has not learned it yet or from a cluster made before ids, is taken, as before). A
   * node that knows none and holds nothing yet (it joins) takes the first well-formed one it is
   * written to from: its cluster's, since only the members of a cluster write to a node they
   * added.
   */
  #checkCluster(claimed: string | undefined): string | null {
    if (claimed === undefined) return null;
    const own = this.#storage.clusterId;
    if (own === undefined) {
      const core = this.#core;
      const empty = core.term === 0 && core.log.lastIndex() === 0 && !this.#failed;
      if (empty && CLUSTER_ID_PATTERN.test(claimed) && this.#storage.adoptClusterId) {
        this.#storage.adoptClusterId(claimed);
        this.#log.info(`this node belongs to cluster ${claimed} (learned from its first peer)`);
      }
      return null;
    }
    if (claimed === own) return null;
    this.#metrics.otherClusterRefusals.inc();
    return `the sender is a member of cluster ${JSON.stringify(claimed)}, this node of cluster ` +
      `${JSON.stringify(own)}: two clusters' peers reach each other (check the cluster files' ` +
      `rpc_urls and each cluster's --cluster-token)`;
  }

  /** The error a write would get now for overload, if this leader is full; see KvBackend. */
  overloaded(): OverloadedError | null {
    if (this.#stopping || this.#core.role !== "leader" || !this.#overloaded(1)) return null;
    // The API refuses the write with this error: count it as a failed proposal.
    const error = this.#overloadedError();
    this.#metrics.proposalFailed(error);
    return error;
  }

  /** A read-only look at the node's Raft state and applied data: see {@linkcode NodeInspection}. */
  inspect(): NodeInspection {
    const core = this.#core;
    const log = core.log;
    const kv = this.#kv;
    // A simulation inspects every node after every step: the functions are made once.
    const read = this.#inspectReaders ??= {
      entry: (index) => {
        const log = this.#core.log;
        // The log's own array, read in place (a slice would copy it for the one entry).
        return index >= log.firstIndex() && index <= log.lastIndex()
          ? log.entries[index - log.firstIndex()]
          : undefined;
      },
      value: (key) => this.#kv.get(key),
      kvEntry: (key) => this.#kv.entry(key),
      entries: () => this.#kv.entries(),
      leaseOf: (key) => this.#kv.leaseOf(key),
    };
    return {
      role: core.role,
      term: core.term,
      leader: core.leader,
      commit: log.committed,
      applied: kv.appliedIndex,
      firstIndex: log.firstIndex(),
      lastIndex: log.lastIndex(),
      entry: read.entry,
      value: read.value,
      kvEntry: read.kvEntry,
      entries: read.entries,
      sessionCount: kv.sessionCount,
      leaseOf: read.leaseOf,
      leaseCount: kv.leaseCount,
      dataBytes: kv.dataBytes,
      noSpace: this.#alarmed(),
    };
  }

  /**
   * Whether a leader is known, something is known committed (see below), and everything known
   * committed is applied here.
   */
  isReady(): boolean {
    if (this.#stopping || this.#core.leader === NONE || this.#isRemoved()) return false;
    const log = this.#core.log;
    if (this.#core.role === "leader" && log.term(log.committed) !== this.#core.term) return false;
    // A cluster with a leader has committed at least that leader's first entry: a follower that
    // knows of nothing committed (a wiped node joining, before its first append or snapshot) has
    // not caught up, though its empty log is "applied".
    if (log.committed === 0) return false;
    return this.#kv.appliedIndex >= log.committed;
  }

  /**
   * Hands this leader's leadership to `to` (null: the voter whose log matches the most of this
   * one's) and resolves with the new leader once this node hears from it: see
   * {@linkcode RaftCore.transferLeadership}. Writes that arrive meanwhile wait for the outcome:
   * once another node leads they fail with {@linkcode NotLeaderError} naming it (the API forwards
   * them there); if the transfer is abandoned they are proposed here. `to` being this leader
   * resolves at once.
   *
   * @throws {StoppingError} If the node is stopping.
   * @throws {UnknownMemberError} If `to` is not a member.
   * @throws {NotLeaderError} On a node that does not lead.
   * @throws {NotVoterError} If `to` does not vote.
   * @throws {LeaderTransferError} While another transfer is in progress.
   * @throws {TransferAbortedError} If this node leads at the end: the target did not take over
   *   within an election timeout, or did not win the election that followed.
   */
  async transferLeadership(to: NodeId | null, signal: AbortSignal): Promise<{ leader: NodeId }> {
    if (this.#stopping) throw new StoppingError();
    if (to !== null && !this.#members.has(to)) {
      throw new UnknownMemberError(to, [...this.#members.keys()]);
    }
    const core = this.#core;
    if (core.role !== "leader") throw new NotLeaderError(core.leader);
    if (to === this.id) return { leader: this.id };
    if (to !== null && !core.voters.includes(to)) throw new NotVoterError(to);
    if (core.leadTransferee !== NONE) throw new LeaderTransferError(core.leadTransferee);
    let target: NodeId = NONE;
    const term = core.term;
    this.#guard(() => target = core.transferLeadership(to ?? undefined));
    if (this.#failed) throw new StoppingError();
    this.#log.info(`transferring leadership to ${target}`);
    await this.#transferSettled(signal);
    if (this.#stopping) throw new StoppingError();
    if (core.role === "leader") {
      throw new TransferAbortedError(target, core.term === term ? null : core.term);
    }
    this.#log.info(`leadership transferred: ${core.leader} leads term ${core.term}`);
    return { leader: core.leader };
  }

  /** Whether no leader transfer is waiting to end: see {@linkcode RaftNode.#transferSettled}. */
  #transferSettledNow(): boolean {
    const core = this.#core;
    return this.#stopping || (core.role === "leader" && core.leadTransferee === NONE) ||
      (core.role !== "leader" && core.leader !== NONE);
  }

  /**
   * Resolves once a transfer started here has ended: this node leads on with no transfer, another
   * node is known to lead, or this node stops. Rejects with the signal's reason when it aborts.
   */
  #transferSettled(signal: AbortSignal): Promise<void> {
    if (this.#transferSettledNow()) return Promise.resolve();
    if (signal.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#transferWaiters = this.#transferWaiters.filter((w) => w !== done);
        reject(signal.reason);
      };
      const done = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#transferWaiters.push(done);
    });
  }

  /** Wakes whoever waits on a transfer that has ended (called after each round of Readies). */
  #settleTransfers(): void {
    if (this.#transferWaiters.length === 0 || !this.#transferSettledNow()) return;
    const waiters = this.#transferWaiters;
    this.#transferWaiters = [];
    for (const w of waiters) w();
  }

  // ---- leases -------------------------------------------------------------------------------

  /**
   * Called every tick: as the leader, proposes one entry expiring every lease now due. A failed
   * proposal (lost leadership, a full disk, overload) leaves them due for the next tick.
   */
  #expireLeases(): void {
    if (this.#stopping || this.#core.role !== "leader" || this.#noSpace) return;
    if (this.#core.leadTransferee !== NONE || !this.#leases.leadsIn(this.#core.term)) return;
    const ids = this.#leases.due();
    if (ids.length === 0) return;
    this.#log.debug(`expiring leases ${ids.join(", ")}`);
    this.#propose({ op: "lease_revoke", ids, reason: "expire" }, new AbortController().signal)
      .catch(() => this.#leases.failed(ids));
  }

  /** See {@linkcode LeaseBackend.keepAlive}. */
  async #keepAlive(id: number, signal: AbortSignal): Promise<LeaseStatus> {
    const from = this.#clock.now();
    const term = await this.#confirmLeading(signal);
    const lease = this.#kv.lease(id);
    if (lease === null || this.#leases.isExpiring(id)) throw new LeaseNotFoundError(id);
    if (this.#core.term !== term || this.#core.role !== "leader") {
      throw new NotLeaderError(this.#core.leader);
    }
    this.#leases.renew(id, lease.ttlMs, from);
    return { ...lease, remainingMs: this.#leases.remaining(id) };
  }

  /** See {@linkcode LeaseBackend.leaseStatus}. */
  async #leaseStatus(id: number | null, signal: AbortSignal): Promise<LeaseStatus[]> {
    await this.#confirmLeading(signal);
    const leases = id === null ? this.#kv.leases() : [this.#kv.lease(id)];
    return leases.map((l) => {
      if (l === null) throw new LeaseNotFoundError(id!);
      return { ...l, remainingMs: this.#leases.remaining(l.id) };
    });
  }

  /**
   * Waits until this node, as the leader, has confirmed with a quorum that it leads (and applied
   * what it had committed when asked); returns its term then.
   */
  async #confirmLeading(signal: AbortSignal): Promise<number> {
    if (this.#isRemoved()) throw new RemovedError(this.id);
    if (this.#core.role !== "leader") throw new NotLeaderError(this.#core.leader);
    const term = this.#core.term;
    await this.#read("linearizable", signal, () => null);
    if (this.#core.term !== term || this.#core.role !== "leader") {
      throw new NotLeaderError(this.#core.leader);
    }
    return term;
  }

  // ---- inputs -------------------------------------------------------------------------------

  #propose(cmd: KvCommand, signal: AbortSignal): Promise<KvResult> {
    if (this.#stopping) return this.#refuse(new StoppingError());
    if (this.#isRemoved()) return Promise.reject(new RemovedError(this.id));
    if (signal.aborted) return Promise.reject(signal.reason);
    const data = encodeCommand(cmd);
    if (this.#core.role !== "leader") return Promise.reject(this.#notLeader());
    if (this.#overloaded(data.byteLength)) return this.#refuse(this.#overloadedError());
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
          this.#metrics.proposalsCommitted.inc();
          resolve(r);
        },
        reject: (e) => {
          signal.removeEventListener("abort", onAbort);
          this.#metrics.proposalFailed(e);
          reject(e);
        },
      };
      const onAbort = () => {
        if (this.#waiters.get(placed.index) === waiter) this.#waiters.delete(placed.index);
        this.#metrics.proposalFailed(null);
        reject(new OutcomeUnknownError());
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiters.set(placed.index, waiter);
    });
  }

  /**
   * The {@linkcode NotLeaderError} a follower refuses a write with, naming the leader it knows.
   * A follower refuses every write it is sent (the API forwards it to the leader), and building
   * an `Error` costs about as much as the rest of that refusal: one is kept per leader and thrown
   * again (nothing changes it; its stack is that of the first refusal, which nobody reads).
   */
  #notLeader(): NotLeaderError {
    const leader = this.#core.leader;
    if (this.#notLeaderError?.leader !== leader) this.#notLeaderError = new NotLeaderError(leader);
    return this.#notLeaderError;
  }

  /** Counts a write refused before it was proposed, and rejects with `error`. */
  #refuse(error: Error): Promise<never> {
    this.#metrics.proposalFailed(error);
    return Promise.reject(error);
  }

  /** What this node is in its cluster (`membership` in the status and the metrics). */
  #membership(): MemberState {
    const core = this.#core;
    if (core.voters.length === 0) return "joining";
    if (core.removed) return "removed";
    return core.learners.includes(this.id) ? "learner" : "voter";
  }

  /** The node's state for the scrape-time gauges (see `node_metrics.ts`). */
  #gauges(): NodeGauges {
    const core = this.#core;
    const last = core.log.lastIndex();
    const leader = core.role === "leader";
    let reads = this.#readQueue.length;
    for (const round of this.#readRounds.values()) reads += round.reads.length;
    for (const round of this.#readsAwaitingApply) reads += round.reads.length;
    const membership = this.#membership();
    return {
      role: core.role,
      hasLeader: core.leader !== NONE && membership !== "removed",
      membership,
      term: core.term,
      commit: core.log.committed,
      applied: this.#kv.appliedIndex,
      lastIndex: last,
      snapshotIndex: this.#snapshotFile?.index ?? 0,
      pendingProposals: this.#pending.size,
      pendingProposalBytes: this.#pendingBytes,
      pendingReads: reads,
      peerReadsDropped: core.droppedReads,
      pendingWrites: this.#pendingWrites.length + (this.#heldJob ? 1 : 0),
      noSpace: this.#alarmed(),
      dataBytes: this.#kv.dataBytes,
      quotaBytes: this.#quotaBytes,
      watchHistoryEvents: this.#kv.events.size,
      watchHistoryBytes: this.#kv.events.bytes,
      // A new leader knows a follower's position only once it answers an append (until then its
      // match is 0, which is not a lag of the whole log): unknown ones are left out.
      lag: leader
        ? [...core.progress].filter(([id, pr]) =>
          id !== this.id && (pr.match > 0 || pr.state === "replicate")
        ).map(([id, pr]) => [id, last - pr.match])
        : null,
      lastContact: leader
        ? [...core.contactTicks()].map(([id, ticks]) => [id, ticks * this.#heartbeatMs / 1000])
        : null,
      failureTolerance: core.failureTolerance(),
    };
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
    const due = Math.floor((this.#clock.now() - this.#tickOrigin) / this.#heartbeatMs);
    if (due <= this.#ticked) return;
    const n = Math.min(due - this.#ticked, this.#maxCatchUpTicks);
    this.#ticked = due;
    this.#guard(() => {
      for (let i = 0; i < n; i++) this.#core.tick();
    });
    this.#warnIfTermExhausted();
  }

  /** Logs (at most once a minute) that elections are refused because the term hit MAX_TERM. */
  #warnIfTermExhausted(): void {
    const refused = this.#core.electionsRefused;
    const now = this.#clock.now();
    if (refused === this.#termWarning.refused || now - this.#termWarning.at < 60_000) return;
    this.#termWarning = { at: now, refused };
    this.#log.warn(
      `term ${this.#core.term} reached the limit ${MAX_TERM}: this node no longer campaigns ` +
        `(${refused} elections refused); its data must be moved to a fresh node`,
    );
  }

  /**
   * Steps a batch from a peer (already validated by the transport). A message the core refuses
   * (one no correct peer sends) changes nothing; the batch's other messages are still taken,
   * then the refusal is reported to the transport with {@linkcode PeerRefusedError}. `Snap`
   * messages only come with their snapshot, through {@linkcode RaftNode.#receiveSnapshot}.
   */
  #onMessages(msgs: Message[]): void {
    if (this.#stopping) return;
    const refused: string[] = [];
    this.#guard(() => {
      for (const m of msgs) {
        const known = this.#knows(m.from);
        const reason = m.type === MessageType.Snap
          ? `Snap from "${m.from}" without its snapshot`
          : !known
          ? `${MessageType[m.type]} from "${m.from}": the sender is not a member`
          : this.#core.step(m);
        if (reason !== null) refused.push(reason);
        else if (m.type === MessageType.HeartbeatResp) this.#notePeerDisk(m);
        if (!known && m.term >= this.#core.term) this.#maybeAskMembers(true);
        if (
          reason === null && this.#core.leader === m.from &&
          (m.type === MessageType.App || m.type === MessageType.Heartbeat)
        ) this.#tookLeader();
      }
    });
    if (refused.length > 0) {
      throw new PeerRefusedError(
        `${refused.length} of ${msgs.length} messages refused: ${refused.join("; ")}`,
      );
    }
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
    this.#cancelTicks?.();
    this.#cancelSweep?.();
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

  /**
   * Works through the core's Readies, one at a time and in order. Never nested: handling a Ready
   * can reach #process again (a write job with nothing to write runs the write loop to its end
   * without an await), and a nested loop would take the next Ready, and apply its committed
   * entries, before this one's; the running loop picks that work up instead.
   */
  #process(): void {
    if (this.#failed || this.#processing) return;
    this.#processing = true;
    try {
      this.#handOverWhenFull();
      this.#startReadRound();
      while (this.#core.hasReady()) {
        const rd = this.#core.ready();
        this.#handleReady(rd);
      }
      this.#settleTransfers();
      this.#syncMembership();
      this.#refuseWhenRemoved();
    } finally {
      this.#processing = false;
    }
  }

  #handleReady(rd: Ready): void {
    // A configuration appended since the last Ready: messages to a new member need its address.
    this.#syncMembership();
    this.#metrics.sawLeader(this.#core.leader !== NONE, this.#core.term);
    if (rd.softState) {
      if (rd.softState.role !== "leader") {
        this.#failUnconfirmedReads(new NotLeaderError(rd.softState.leader));
        // A full leader that stepped down cannot apply what the others commit: its reads that
        // wait to apply go to the new leader (see #read).
        if (this.#cannotApply()) this.#forwardReads();
        this.#leases.demote();
      } else {
        this.#leases.promote(this.#kv.leases(), this.#core.term);
        // A leader needs no snapshot; and what failed to reach a follower under an earlier
        // leadership says nothing about this one.
        this.#roomForSnapshot();
        this.#snapshotBackoff.clear();
      }
      this.#log.info(
        `${rd.softState.role} in term ${this.#core.term}, leader ${
          rd.softState.leader || "unknown"
        }`,
      );
    }
    // What is still queued from an older term is of no use to anyone now (see the Transport).
    this.#transport.dropOlderThan?.(this.#core.term);
    this.#sendNow(rd.messages);
    if (rd.snapshot) this.#installSnapshot(rd.snapshot);
    if (rd.entries.length > 0 || rd.hardState || rd.persistedMessages.length > 0) {
      this.#enqueueWrite(rd);
    }
    this.#commitDue = this.#core.log.committed;
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
    // At most once a tick (a tenth of a second by default), which costs nothing measurable.
    const committed = this.#core.log.committed;
    if (committed > this.#commitQueued) {
      const now = this.#clock.now();
      if (now - this.#commitQueuedAt >= this.#heartbeatMs) {
        job.commit = this.#commitQueued = committed;
        this.#commitQueuedAt = now;
      }
    }
    for (const m of rd.persistedMessages) {
      if (this.#noSpace && m.type === MessageType.HeartbeatResp && m.term === this.#durableTerm) {
        // Depends on nothing unwritten (see the class doc): do not hold it behind a full disk,
        // and tell the leader why this node appends nothing.
        this.#transport.send([{ ...m, reject: true }]);
      } else if (this.#noRoomForSnapshot && m.type === MessageType.HeartbeatResp) {
        // Nothing is held, but without the leader's snapshot this node appends nothing either:
        // the leader counts it as full when it decides whether writes can commit.
        job.messages.push({ ...m, reject: true });
      } else {
        job.messages.push(m);
      }
    }
    this.#kickWriter();
  }

  /** The job new work may join: the last pending one, unless it already compacts the log. */
  #openJob(): WriteJob {
    const last = this.#pendingWrites.at(-1);
    if (last && !last.compact) return last;
    const job: WriteJob = {
      done: 0,
      install: null,
      entries: [],
      commit: 0,
      hardState: null,
      messages: [],
      compact: null,
    };
    this.#pendingWrites.push(job);
    return job;
  }

  /**
   * Called every tick: once the log has been idle for a tick, records a commit index that moved
   * since the last one recorded (a leader whose followers acknowledged, a follower told by a
   * heartbeat), so that a restart after a kill applies it. Not at once: under load a batch carries
   * it (#enqueueWrite, at most once a tick), and a write of its own per commit advance slowed
   * writes by a tenth or more. #commitDue is the commit index as of the latest Ready, and every
   * Ready's writes are in the jobs queued so far, so the log on disk once they are written (this
   * one last) is the log that Ready saw.
   */
  #recordCommit(): void {
    const busy = this.#wroteSinceTick;
    this.#wroteSinceTick = false;
    if (busy || this.#commitDue <= this.#commitQueued || this.#stopping || this.#failed) return;
    const job = this.#openJob();
    job.commit = this.#commitQueued = this.#commitDue;
    this.#kickWriter();
  }

  /**
   * Starts the write loop, unless it runs or waits for space (then its retry timer starts it), or
   * the node is stopping: #stop waits for a loop that runs (it writes what is queued), and then
   * closes the storage, which no new loop may be using (messages still arriving while the
   * transport closes make Readies). What is not written is not acknowledged: its messages wait
   * for the write.
   */
  #kickWriter(): void {
    if (this.#writerActive || this.#noSpace || this.#stopping) return;
    this.#writerActive = true;
    this.#writing = this.#writeLoop();
  }

  /**
   * Writes the held job, then the pending ones in order. A full disk holds the job (its storage
   * call rolled back what it wrote) and raises the alarm; anything else that fails is fatal.
   */
  async #writeLoop(): Promise<void> {
    try {
      while (!this.#failed) {
        const job = this.#heldJob ?? this.#pendingWrites.shift();
        if (!job) break;
        this.#heldJob = job;
        try {
          await this.#write(job);
        } catch (e) {
          if (!isNoSpace(e)) throw e;
          // Stopping: leave the job unwritten; nothing that depends on it was sent.
          if (!this.#stopping) this.#raiseNoSpace(e);
          return;
        }
        this.#heldJob = null;
        this.#wroteSinceTick = true;
        if (this.#failed) return;
        if (this.#noSpace) this.#clearNoSpace();
        // Entries appended: this follower's log goes on from the leader's, so it needs no snapshot.
        if (job.entries.length > 0) this.#roomForSnapshot();
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

  /** Does the steps of `job` not done yet, in order, counting each one done as it completes. */
  async #write(job: WriteJob): Promise<void> {
    if (job.done < 1 && job.install) {
      const { index, term } = job.install;
      await this.#storage.installReceived(job.install);
      this.#installing.delete(_key(job.install));
      this.#snapshotFile = { index, term };
      this.#logBytes = 0;
    }
    job.done = Math.max(job.done, 1);
    if (job.done < 2 && job.entries.length > 0) {
      await this.#storage.append(job.entries, job.commit);
      for (const e of job.entries) this.#logBytes += e.data.byteLength + _RECORD_OVERHEAD;
    } else if (job.done < 2 && job.commit > 0 && this.#storage.recordCommit) {
      try {
        await this.#storage.recordCommit(job.commit);
      } catch (e) {
        // Only a hint for the restart: a full disk does not hold the job for it.
        if (!isNoSpace(e)) throw e;
      }
    }
    job.done = Math.max(job.done, 2);
    if (job.done < 3 && job.hardState) {
      await this.#storage.saveHardState(job.hardState);
      this.#durableTerm = job.hardState.term;
      this.#storedCommit = job.hardState.commit;
    }
    job.done = Math.max(job.done, 3);
    if (job.done < 4 && job.compact) {
      await this.#storage.snapshotTaken(job.compact.meta, job.compact.compactTo);
    }
    job.done = 4;
  }

  /** Raises the NOSPACE alarm (or backs off further if it is up): see the class doc. */
  #raiseNoSpace(e: unknown): void {
    const now = this.#clock.now();
    if (this.#noSpace) {
      this.#noSpace.delayMs = Math.min(2 * this.#noSpace.delayMs, _NOSPACE_MAX_RETRY_MS);
      this.#noSpace.retryAt = now + this.#noSpace.delayMs;
      return;
    }
    this.#noSpace = {
      since: now,
      retryAt: now + _NOSPACE_FIRST_RETRY_MS,
      delayMs: _NOSPACE_FIRST_RETRY_MS,
    };
    this.#log.error(
      `NOSPACE: the disk is full (${
        e instanceof Error ? e.message : e
      }); writes are refused and reads served (a follower's linearizable and lease reads by the leader) until a retry of the write succeeds`,
    );
    // A follower can no longer apply what commits from now on: its linearizable and lease reads
    // are answered by the leader (see #read).
    if (this.#core.role !== "leader") this.#forwardReads();
    this.#schedule();
  }

  /**
   * The leader's snapshot at `index` did not fit on this follower's disk: raises the NOSPACE
   * alarm (see {@linkcode RaftNode.#noRoomForSnapshot}) and hands the reads waiting to apply to
   * the leader: without the snapshot this node applies nothing more.
   */
  #noRoomFor(index: number, e: unknown): void {
    if (this.#noRoomForSnapshot === null) {
      this.#log.error(
        `NOSPACE: the disk has no room for the leader's snapshot at index ${index} (${
          e instanceof Error ? e.message : e
        }); it is taken when the leader sends it again once space is freed`,
      );
    }
    this.#noRoomForSnapshot = { index, since: this.#noRoomForSnapshot?.since ?? this.#clock.now() };
    if (this.#core.role !== "leader") this.#forwardReads();
  }

  /** Clears what {@linkcode RaftNode.#noRoomFor} raised, if it is up. */
  #roomForSnapshot(): void {
    const was = this.#noRoomForSnapshot;
    if (was === null) return;
    this.#noRoomForSnapshot = null;
    const seconds = (this.#clock.now() - was.since) / 1000;
    this.#log.info(
      `NOSPACE cleared: no snapshot is waiting for room (after ${seconds.toFixed(1)} s)`,
    );
  }

  /** Whether the NOSPACE alarm is up: a write the disk refused, or the leader's snapshot. */
  #alarmed(): boolean {
    return this.#noSpace !== null || (this.#noRoomForSnapshot !== null && !this.#isRemoved());
  }

  /** Whether this node cannot apply what commits from now on (its disk is full). */
  #cannotApply(): boolean {
    return this.#noSpace !== null || this.#noRoomForSnapshot !== null;
  }

  #clearNoSpace(): void {
    const seconds = (this.#clock.now() - this.#noSpace!.since) / 1000;
    this.#noSpace = null;
    this.#log.info(`NOSPACE cleared: the disk took the write after ${seconds.toFixed(1)} s`);
  }

  /** Called every tick: while the disk is full, retries the held write when its time has come. */
  #retryWrite(): void {
    const noSpace = this.#noSpace;
    if (!noSpace || this.#writerActive || this.#failed || this.#stopping) return;
    if (this.#clock.now() < noSpace.retryAt) return;
    this.#writerActive = true;
    this.#writing = this.#writeLoop();
  }

  /**
   * Why a leader refuses new writes: its disk is full, or the voters whose disks are not full (as
   * their heartbeat answers say) are not a quorum; `null` when it does not (a follower forwards).
   */
  #fullDiskRefusal(): NoSpaceError | null {
    if (this.#core.role !== "leader" || this.#stopping) return null;
    if (!this.#noSpace && this.#fullPeers.size === 0) return null;
    const voters = this.#core.voters;
    const full = voters.filter((id) => this.#saidFull(id));
    if (this.#noSpace) return new NoSpaceError(undefined, [this.id, ...full]);
    if (voters.length - full.length >= Math.floor(voters.length / 2) + 1) return null;
    const message = `no space left on device: the disks of ${full.join(", ")} are full, and the ${
      voters.length - full.length
    } other voter(s) of ${voters.length} are not a quorum`;
    return new NoSpaceError(message, full);
  }

  /** Whether follower `id` answered a heartbeat of this term, within an election timeout, full. */
  #saidFull(id: NodeId): boolean {
    const said = this.#fullPeers.get(id);
    return said !== undefined && said.term === this.#core.term &&
      this.#clock.now() - said.at <= this.#electionMs;
  }

  /**
   * A leader notes a follower's heartbeat answer: `reject` says its disk is full (it appends
   * nothing until a retry of its held write succeeds); without, that it is not (any longer).
   */
  #notePeerDisk(m: Message): void {
    if (this.#core.role !== "leader" || m.term !== this.#core.term) return;
    const was = this.#saidFull(m.from);
    if (m.reject) {
      if (!was) this.#log.warn(`NOSPACE on ${m.from}: its disk is full, it appends nothing`);
      this.#fullPeers.set(m.from, { term: m.term, at: this.#clock.now() });
    } else if (this.#fullPeers.delete(m.from) && was) {
      this.#log.info(`NOSPACE cleared on ${m.from}`);
    }
  }

  /**
   * Why a leader refuses a write: it would take the data past the quota; `null` when it does not
   * (a follower forwards it).
   */
  #quotaRefusal(cmd: PlainCommand): QuotaExceededError | null {
    if (this.#quotaBytes === 0 || this.#core.role !== "leader" || this.#stopping) return null;
    const data = this.#kv.dataBytes;
    if (data + growthBound(cmd) <= this.#quotaBytes) return null; // far from it: no closer look
    const growth = this.#kv.growth(cmd);
    if (growth === 0 || data + growth <= this.#quotaBytes) return null;
    return new QuotaExceededError(data, growth, this.#quotaBytes);
  }

  /**
   * A leader whose disk is full steps down once the others committed past what it has on disk:
   * it can neither apply those entries nor answer for them, and they can elect a leader.
   */
  #handOverWhenFull(): void {
    const log = this.#core.log;
    if (!this.#noSpace || this.#core.role !== "leader" || log.committed <= log.stable) return;
    this.#log.warn(
      `NOSPACE: stepping down; the others committed up to ${log.committed} but this node's disk holds only up to ${log.stable}`,
    );
    this.#core.stepDown();
  }

  /** While the disk is full, drops appends that carry entries (see the class doc). */
  #admit(msgs: Message[]): Message[] {
    if (!this.#noSpace) return msgs;
    return msgs.filter((m) => m.type !== MessageType.App || m.entries.length === 0);
  }

  #apply(entries: Entry[]): void {
    const started = this.#clock.now();
    for (const e of entries) {
      let result: KvResult | null = null;
      if (e.type === EntryType.Normal) {
        result = this.#kv.apply(e.index, e.data);
        this.#leases.applied(result);
      } else {
        this.#kv.advance(e.index);
      }
      this.#untrackPending(e.index);
      const cw = this.#confWaiters.get(e.index);
      if (cw) {
        this.#confWaiters.delete(e.index);
        if (cw.term === e.term && e.type === EntryType.ConfChange) cw.resolve();
        else cw.reject(new NotAppliedError());
      }
      const w = this.#waiters.get(e.index);
      if (!w) continue;
      this.#waiters.delete(e.index);
      if (w.term === e.term && result) {
        w.resolve(result);
      } else {
        // Another leader's entry took this index: ours was never committed and never will be.
        w.reject(new NotAppliedError());
      }
    }
    this.#metrics.applyDuration.observe((this.#clock.now() - started) / 1000);
    this.#maybeSnapshot();
  }

  // ---- snapshots ----------------------------------------------------------------------------

  /**
   * Starts a snapshot when enough entries were applied since the last one, or enough bytes were
   * written to the log. A snapshot the disk refused is tried again after a pause.
   */
  #maybeSnapshot(): void {
    const last = this.#snapshotFile?.index ?? 0;
    const applied = this.#kv.appliedIndex;
    if (this.#snapshotting || applied <= last || this.#stopping) return;
    if (
      !this.#snapshotWanted && applied - last < this.#snapshotThreshold &&
      this.#logBytes < this.#snapshotThresholdBytes
    ) {
      return;
    }
    if (this.#clock.now() < this.#snapshotRetryAt) return;
    this.#snapshotting = true;
    this.#snapshotWanted = false;
    this.#snapshotTask = this.#takeSnapshot().catch((e) => {
      if (isNoSpace(e)) {
        this.#snapshotRetryAt = this.#clock.now() + _NOSPACE_MAX_RETRY_MS;
        this.#rolledForRefused = true;
        this.#log.warn(`snapshot not written, the disk is full: ${(e as Error).message}`);
      } else if (!this.#stopping) {
        this.#fail(e);
      }
    }).finally(() => this.#snapshotting = false);
  }

  /**
   * Writes the state at the applied index to a snapshot file while applying goes on (the view is
   * copy-on-write), then compacts the log.
   */
  async #takeSnapshot(): Promise<void> {
    const view = this.#kv.view();
    const conf = this.#core.confAt(view.index);
    // A cluster whose membership never changed writes its snapshots as before (voters only):
    // the cluster file gives the same members and addresses (those the configuration has none
    // for came from it). Not a joined node's: its cluster file lists only itself, whatever it
    // heard since.
    const file = this.#clusterFile;
    const asBooted = conf.learners.length === 0 && conf.voters.length === file.size &&
      conf.voters.every((id) => {
        const m = file.get(id);
        const info = conf.info[id];
        return m !== undefined && (info === undefined || info === memberInfo(m));
      });
    const meta: SnapshotMeta = {
      index: view.index,
      term: this.#core.log.term(view.index)!,
      voters: conf.voters,
      ...(asBooted ? {} : { learners: conf.learners, info: _withAddresses(conf, this.#bootstrap) }),
    };
    const started = this.#clock.now();
    const logBytes = this.#logBytes;
    if (!this.#rolledForRefused) this.#storage.rollLog();
    this.#rolledForRefused = false;
    try {
      await this.#storage.saveSnapshot(meta, view.count, {
        entries: view.entries(),
        sessions: view.sessions,
        leases: view.leases,
      });
    } finally {
      view.close();
    }
    this.#metrics.snapshotSaveDuration.observe((this.#clock.now() - started) / 1000);
    if (this.#failed) return;
    if (meta.index <= (this.#snapshotFile?.index ?? 0) || meta.index < this.#core.log.snapIndex) {
      // A snapshot from the leader was installed meanwhile: this one is older; keep it as a
      // file (pruning removes it) but do not make it current.
      return;
    }
    this.#snapshotFile = { index: meta.index, term: meta.term };
    this.#logBytes = Math.max(0, this.#logBytes - logBytes);
    const compactTo = Math.max(this.#core.log.snapIndex, this.#keepFrom(meta.index) - 1);
    // What the core sends followers that need this snapshot: the configuration with every
    // member's addresses, even when the file records the voters alone (a follower takes the
    // message's, and copies it into the changes it makes when it leads).
    this.#core.snapshotSaved(
      { ...meta, learners: conf.learners, info: _withAddresses(conf, this.#bootstrap) },
      compactTo,
    );
    const job = this.#openJob();
    job.compact = { meta, compactTo };
    this.#kickWriter();
    this.#log.info(
      `snapshot at index ${meta.index} (${view.count} keys) in ${
        Math.round(this.#clock.now() - started)
      } ms`,
    );
  }

  /**
   * The first index to keep in the log after a snapshot at `index`: up to `catchUpEntries`
   * entries before it, for followers just behind, but no more than a quarter of
   * `snapshotThresholdBytes` of them, so large values do not keep the log large.
   */
  #keepFrom(index: number): number {
    const log = this.#core.log;
    const budget = this.#snapshotThresholdBytes / 4;
    let from = index + 1;
    let bytes = 0;
    while (from > log.firstIndex() && index + 1 - from < this.#catchUpEntries) {
      bytes += log.slice(from - 1, from)[0]!.data.byteLength + _RECORD_OVERHEAD;
      if (bytes > budget) break;
      from--;
    }
    return from;
  }

  /**
   * Streams the newest snapshot file to a follower that needs it. A snapshot taken before the
   * follower (or this leader) was added is not sent while the follower is being added: installed,
   * its configuration would leave the follower out (it would count itself removed) and this
   * leader too (it would refuse this leader's messages as a non-member's). A newer snapshot is
   * taken instead, once the addition is applied, and the core sends that one on its next try.
   */
  #sendSnapshot(m: Message): void {
    const file = this.#snapshotFile;
    if (!file || file.index !== m.snapshot?.index) {
      queueMicrotask(() => this.#guard(() => this.#core.reportSnapshot(m.to, false)));
      return;
    }
    if (this.#snapshotTooOld(m.snapshot, m.to)) {
      queueMicrotask(() => this.#guard(() => this.#core.reportSnapshot(m.to, false)));
      return;
    }
    const backoff = this.#snapshotBackoff.get(m.to);
    if (backoff && this.#clock.now() < backoff.until) {
      // The last send failed a moment ago: the core asks again at a later heartbeat.
      queueMicrotask(() => this.#guard(() => this.#core.reportSnapshot(m.to, false)));
      return;
    }
    this.#log.info(`sending snapshot at index ${file.index} to ${m.to}`);
    this.#transport.sendSnapshot(m, () => this.#storage.openSnapshot(file)).then(
      () => {
        this.#snapshotBackoff.delete(m.to);
        this.#guard(() => this.#core.reportSnapshot(m.to, true));
      },
      (e) => {
        const why = e instanceof Error ? e.message : e;
        if (e instanceof PeerNoSpaceError) {
          // Sent again at once it would not fit either: wait (0.5 s, doubling to 5 s). Other
          // failures (a connection broken mid-upload) are tried again at the next heartbeat.
          const delayMs = Math.min(
            2 * (this.#snapshotBackoff.get(m.to)?.delayMs ?? _SNAPSHOT_FIRST_RETRY_MS / 2),
            _NOSPACE_MAX_RETRY_MS,
          );
          this.#snapshotBackoff.set(m.to, { until: this.#clock.now() + delayMs, delayMs });
          this.#log.warn(
            `sending snapshot to ${m.to} failed (next try in ${delayMs / 1000} s): ${why}`,
          );
        } else {
          this.#snapshotBackoff.delete(m.to);
          this.#log.warn(`sending snapshot to ${m.to} failed: ${why}`);
        }
        this.#guard(() => this.#core.reportSnapshot(m.to, false));
      },
    );
  }

  /**
   * Whether the snapshot `meta` leaves out `to` or this node while `to` is a member of this
   * node's newest configuration (it is being added, not removed); if so, asks for a newer
   * snapshot once the applied configuration lists both.
   */
  #snapshotTooOld(meta: SnapshotMeta, to: NodeId): boolean {
    const core = this.#core;
    if (confLists(meta, to) && confLists(meta, this.id)) return false;
    if (!confLists(core, to)) return false;
    const applied = this.#kv.appliedIndex;
    const note = `${meta.index}|${to}`;
    if (note !== this.#staleSnapshotNoted) {
      this.#staleSnapshotNoted = note;
      this.#log.info(
        `not sending the snapshot at index ${meta.index} to ${to}: it predates ${to}'s or this ` +
          `node's addition; taking a newer one`,
      );
    }
    const conf = core.confAt(applied);
    if (applied > meta.index && confLists(conf, to) && confLists(conf, this.id)) {
      this.#snapshotWanted = true;
      this.#maybeSnapshot();
    }
    return true;
  }

  /** See {@linkcode TransportHandlers.snapshotRefusal}. */
  #snapshotRefusal(m: Message): string | null {
    const core = this.#core;
    if (m.term < core.term) {
      return `snapshot of term ${m.term} from "${m.from}": this node is in term ${core.term}`;
    }
    if (m.term === core.term && core.leader !== NONE && core.leader !== m.from) {
      return `snapshot of term ${m.term} from "${m.from}": the leader of that term is "${core.leader}"`;
    }
    return null;
  }

  /**
   * Stores a snapshot streamed by the leader (as a received file: it replaces nothing yet),
   * verifies it, and hands the message to the core, which decides whether to install it. A
   * message the core would refuse is refused before anything is written; a failed or refused
   * upload leaves no file behind.
   */
  async #receiveSnapshot(m: Message, body: ReadableStream<Uint8Array>): Promise<void> {
    if (m.snapshot) {
      // From a leader of an earlier version, the voters may come without their addresses: the
      // cluster file gives them, as at a start from such a snapshot.
      m = { ...m, snapshot: _metaWithAddresses(m.snapshot, this.#clusterFile) };
    }
    const meta = m.snapshot;
    if (this.#stopping) throw new StoppingError();
    if (!meta) throw new PeerRefusedError(`Snap from "${m.from}" without snapshot metadata`);
    if (!this.#knows(m.from)) {
      throw new PeerRefusedError(`Snap from "${m.from}": the sender is not a member`);
    }
    const early = this.#core.refusal(m);
    if (early !== null) throw new PeerRefusedError(early);
    const key = _key(meta);
    if (this.#uploads.has(key)) {
      throw new PeerRefusedError(
        `snapshot (${meta.index}, ${meta.term}) is already being received`,
      );
    }
    this.#uploads.set(key, meta);
    let data;
    try {
      try {
        data = await this.#storage.receiveSnapshot(meta, body);
      } catch (e) {
        if (isNoSpace(e)) {
          if (!this.#stopping) this.#noRoomFor(meta.index, e);
          throw new PeerNoSpaceError(
            `no space left on device for the snapshot at index ${meta.index}`,
          );
        }
        // The peer sent bytes that are not the snapshot it named: its fault, not this node's. The
        // answer says what is wrong, never where the node keeps its files.
        if (!(e instanceof CorruptFileError)) throw e;
        throw new PeerRefusedError(`received snapshot is not valid: ${e.reason}`);
      }
      // It fit (a write the disk refused is retried as usual, and clears its own alarm).
      this.#roomForSnapshot();
    } catch (e) {
      // The storage removed its temp file; remove the received one too, unless an earlier
      // upload of the same snapshot left it and it is still needed.
      this.#uploads.delete(key);
      if (!this.#receivedNeeded(meta)) await this.#storage.discardReceived(meta);
      throw e;
    } finally {
      this.#uploads.delete(key);
    }
    // Only the newest received snapshot can still be installed.
    this.#received.clear();
    this.#received.set(meta.index, { meta, data });
    if (this.#stopping) return;
    const refused: string[] = [];
    this.#guard(() => {
      const reason = this.#core.step(m);
      if (reason !== null) refused.push(reason);
    });
    if (refused.length > 0) {
      // Refused after all (the state changed during the upload): nothing will install it.
      const received = this.#received.get(meta.index);
      if (received && _key(received.meta) === key) this.#received.delete(meta.index);
      if (!this.#receivedNeeded(meta)) await this.#storage.discardReceived(meta);
      throw new PeerRefusedError(refused.join("; "));
    }
    this.#tookLeader();
  }

  /** The received snapshots still needed: being written, received, or being installed. */
  #neededReceived(): SnapshotId[] {
    const needed = [...this.#uploads.values(), ...this.#installing.values()];
    for (const r of this.#received.values()) needed.push(r.meta);
    return needed;
  }

  /** Whether the received snapshot `id` is still needed (see #neededReceived). */
  #receivedNeeded(id: SnapshotId): boolean {
    const key = _key(id);
    return this.#neededReceived().some((n) => _key(n) === key);
  }

  /**
   * Removes received snapshots nothing needs: not being written, not waiting to be installed,
   * and found unneeded a sweep interval ago (superseded or refused ones, leftovers of failed
   * uploads).
   */
  async #sweepReceived(): Promise<void> {
    if (this.#sweeping || this.#stopping) return;
    this.#sweeping = true;
    try {
      const removed = await this.#storage.sweepReceived(
        this.#neededReceived(),
        this.#receivedSweepMs,
        this.#clock.now(),
      );
      for (const name of removed) this.#log.info(`removed stale received snapshot ${name}`);
    } catch (e) {
      this.#log.warn(
        `removing stale received snapshots failed: ${e instanceof Error ? e.message : e}`,
      );
    } finally {
      this.#sweeping = false;
    }
  }

  /** Replaces the state with a received snapshot the core decided to install. */
  #installSnapshot(meta: SnapshotMeta): void {
    const received = this.#received.get(meta.index);
    if (!received) throw new Error(`no received snapshot at index ${meta.index} to install`);
    this.#received.clear();
    this.#installing.set(_key(meta), meta);
    this.#kv.reset(received.data, meta.index);
    if (this.#core.role === "leader") {
      this.#leases.promote(this.#kv.leases(), this.#core.term);
    } else {
      this.#leases.reset(this.#kv.leases());
    }
    for (const [index, w] of this.#waiters) {
      if (index <= meta.index) {
        this.#waiters.delete(index);
        w.reject(new OutcomeUnknownError("a snapshot replaced the log before the write was seen"));
      }
    }
    // Install before writing anything that follows it.
    const job: WriteJob = {
      done: 0,
      install: meta,
      entries: [],
      commit: 0,
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
    if (!this.#canConfirmReads()) {
      for (const r of reads) r.reject(new NotLeaderError(this.#core.leader));
      return;
    }
    const id = ++this.#readSeq;
    this.#readRounds.set(id, { reads, index: null });
    this.#core.readIndex(id);
  }

  /**
   * Whether a linearizable read can start here: on the leader, or on a follower that knows its
   * leader (it asks the leader for the read index and serves the read itself; a lease read on a
   * follower takes that path too).
   */
  #canConfirmReads(): boolean {
    const role = this.#core.role;
    return role === "leader" || (role === "follower" && this.#core.leader !== NONE);
  }

  #serveReads(): void {
    if (this.#readsAwaitingApply.length === 0) return;
    const applied = this.#kv.appliedIndex;
    const still: ReadRound[] = [];
    for (const round of this.#readsAwaitingApply) {
      if (round.index! <= applied) {
        for (const r of round.reads) r.serve();
      } else {
        still.push(round);
      }
    }
    this.#readsAwaitingApply = still;
    if (this.#readQueue.length > 0) this.#schedule();
  }

  /**
   * Hands every waiting read back as {@linkcode NotLeaderError}, confirmed or not (the API
   * forwards them to the leader): this follower's disk is full, and what they wait to apply may
   * never be written here. A read has no effect, so asking the leader again is safe.
   */
  #forwardReads(): void {
    const e = new NotLeaderError(this.#core.leader);
    this.#failUnconfirmedReads(e);
    for (const round of this.#readsAwaitingApply) for (const r of round.reads) r.reject(e);
    this.#readsAwaitingApply = [];
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

/** The configuration `#syncMembership` last built the member list from. */
interface _ConfSeen {
  index: number;
  settled: boolean;
  voters: readonly NodeId[];
  learners: readonly NodeId[];
  vouchedUntil: number;
}

function _sameIds(a: readonly NodeId[], b: readonly NodeId[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A received snapshot's key in the driver's maps. */
function _key(id: SnapshotId): string {
  return `${id.index}/${id.term}`;
}

/** The first retry of a write the full disk refused, in milliseconds. */
const _NOSPACE_FIRST_RETRY_MS = 500;
/** The pause before sending a follower a snapshot again after a send failed (it then doubles). */
const _SNAPSHOT_FIRST_RETRY_MS = 500;

/** The longest pause between retries while the disk is full (also for snapshots). */
const _NOSPACE_MAX_RETRY_MS = 5_000;
/** The bytes a log record takes besides the entry's data. */
const _RECORD_OVERHEAD = HEADER_SIZE + ENTRY_FIELDS_SIZE;

/** A member's addresses as kept in the configuration (`ConfState.info`). */
function memberInfo(m: { rpcUrl: string; apiUrl: string }): string {
  return JSON.stringify({ rpc_url: m.rpcUrl, api_url: m.apiUrl });
}

/**
 * `conf.info` with the addresses of the members it has none for taken from `known` (the cluster
 * file, and what a joining node heard in the answer to its join request). A configuration that
 * came from a snapshot written as booted (voters only), or from a restored backup, has no
 * addresses: the cluster file gave them. A snapshot that records the members must record their
 * addresses too, or a node that installs it (one that joined, whose cluster file lists only
 * itself) knows no one once it restarts.
 */
function _withAddresses(
  conf: ConfState,
  known: ReadonlyMap<NodeId, Member>,
): Record<NodeId, string> {
  let info = conf.info;
  for (const id of [...conf.voters, ...conf.learners]) {
    const m = known.get(id);
    if (info[id] !== undefined || m === undefined || m.rpcUrl === "") continue;
    if (info === conf.info) info = { ...conf.info };
    info[id] = memberInfo(m);
  }
  return info;
}

/** `meta` with the addresses its configuration lacks taken from `known` (see `_withAddresses`). */
function _metaWithAddresses(meta: SnapshotMeta, known: ReadonlyMap<NodeId, Member>): SnapshotMeta {
  const conf = { voters: meta.voters, learners: meta.learners ?? [], info: meta.info ?? {} };
  return { ...meta, info: _withAddresses(conf, known) };
}

/** The member a configuration's info describes, or null when it has none (or not this form). */
function parseMemberInfo(id: NodeId, info: string | undefined): Member | null {
  if (info === undefined) return null;
  try {
    const v = JSON.parse(info) as { rpc_url?: unknown; api_url?: unknown };
    if (typeof v.rpc_url !== "string" || typeof v.api_url !== "string") return null;
    return { id, rpcUrl: v.rpc_url, apiUrl: v.api_url };
  } catch {
    return null;
  }
}

/** Where a start's read ids begin: a random integer in [0, 2^47), from `random`. */
function _firstReadId(random: () => number): number {
  return Math.floor(random() * 2 ** 23) * 2 ** 24 + Math.floor(random() * 2 ** 24);
}
