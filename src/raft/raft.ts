/**
 * The pure Raft core: a deterministic state machine with no timers, sockets, files or clock.
 *
 * Time arrives as {@linkcode RaftCore.tick}, peer messages as {@linkcode RaftCore.step}, client
 * commands as {@linkcode RaftCore.propose} and reads as {@linkcode RaftCore.readIndex}. Everything
 * the outside world must do in response comes out of {@linkcode RaftCore.ready}. Randomness (the
 * election jitter) comes from the seeded source in the config, so a run is reproducible.
 *
 * Implements leader election with PreVote and CheckQuorum, log replication with the
 * prev-index/prev-term check and conflict truncation, commitment only of the leader's own term by
 * a majority (a no-op entry opens every term), pipelined appends with flow control, snapshots for
 * lagging followers, ReadIndex for linearizable reads, and leader transfer (TimeoutNow).
 *
 * @module
 */

import {
  ConfChangeError,
  LeaderTransferError,
  NotLeaderError,
  RaftInvariantError,
} from "./errors.ts";
import { RaftLog } from "./log.ts";
import { Progress } from "./progress.ts";
import {
  CAMPAIGN_TRANSFER,
  type ConfChange,
  confLists,
  type ConfState,
  decodeConfState,
  encodeConfState,
  type Entry,
  EntryType,
  type HardState,
  MAX_TERM,
  type Message,
  message,
  MessageType,
  type NodeId,
  NONE,
  type ReadState,
  type Ready,
  type Role,
  type SnapshotMeta,
  type SoftState,
} from "./types.ts";

/** Configuration and recovered state of a Raft node. */
export interface RaftConfig {
  /** This node's id. */
  id: NodeId;
  /**
   * The bootstrap configuration's voting members. A configuration in the recovered snapshot or
   * log takes precedence. Empty for a node that joins an existing cluster: it waits to be
   * contacted by a leader and takes its configuration from what it replicates.
   */
  voters: NodeId[];
  /** The bootstrap configuration's learners. Default: none. */
  learners?: NodeId[];
  /** The bootstrap configuration's per-member data (see {@linkcode ConfState.info}). */
  info?: Record<NodeId, string>;
  /**
   * A learner is promoted to voter (automatically, by the leader) once it replicates normally and
   * its log is at most this many entries behind the leader's commit index. Default 64.
   */
  promoteLag?: number;
  /** Ticks without hearing from a leader before an election (randomized up to 2x). Default 10. */
  electionTicks?: number;
  /** Ticks between leader heartbeats. Default 1. */
  heartbeatTicks?: number;
  /** Run a pre-vote round before raising the term. Default true. */
  preVote?: boolean;
  /** Leader steps down when it has not heard from a quorum in an election timeout. Default true. */
  checkQuorum?: boolean;
  /** Upper bound on the entry bytes in one append message. Default 1 MiB. */
  maxMsgBytes?: number;
  /** Appends in flight per follower in replicate state. Default 256. */
  maxInflight?: number;
  /** Upper bound on committed entry bytes handed out in one Ready. Default 4 MiB. */
  maxApplyBytes?: number;
  /**
   * Ticks cut from the election timeout to get the lease for `leaseRead`, covering clock drift
   * between nodes. Default: a fifth of electionTicks, at least 1.
   */
  leaseMarginTicks?: number;
  /** Source of randomness in [0, 1), seeded by the caller for reproducibility. */
  random: () => number;
  /** Recovered hard state. Default: term 0, no vote, commit 0. */
  hardState?: HardState;
  /** The snapshot the state machine was restored from. Default: none. */
  snapshot?: SnapshotMeta | null;
  /** Recovered log entries after the snapshot. Default: none. */
  entries?: Entry[];
}

type StepFn = (m: Message) => void;

interface PendingRead {
  id: number;
  /** Who asked: this node (a ReadState) or a follower (a ReadIndexResp with `id` as context). */
  from: NodeId;
  index: number;
  /** The heartbeat round whose answers by a quorum confirm this read. */
  round: number;
}

const EMPTY = new Uint8Array(0);

/**
 * The most reads one follower may have waiting on the leader (for a heartbeat round, or for the
 * leader's first commit in its term). A follower's driver has one read request out at a time (it
 * batches its reads), sent again under the same id while unanswered, so only a flood reaches this;
 * beyond it the sender's oldest waiting read is dropped unanswered (a real one is asked again).
 */
export const MAX_PEER_PENDING_READS = 8;

function copyConf(c: ConfState): ConfState {
  return { voters: [...c.voters], learners: [...c.learners], info: { ...c.info } };
}

/** The configuration a snapshot records (snapshots older than learners have none). */
function confOf(snap: SnapshotMeta): ConfState {
  return {
    voters: [...snap.voters],
    learners: [...(snap.learners ?? [])],
    info: { ...(snap.info ?? {}) },
  };
}

/**
 * A Raft node's consensus state machine.
 *
 * @example A single node elects itself and hands out its first entry to persist
 * ```ts
 * import { RaftCore } from "./raft.ts";
 * import { seededRandom } from "./rand.ts";
 *
 * const core = new RaftCore({ id: "a", voters: ["a"], random: seededRandom(1) });
 * core.campaign();
 * const rd = core.ready();
 * // The driver persists rd.entries and rd.hardState, then reports the write.
 * const last = rd.entries.at(-1)!;
 * core.persisted(last.index, last.term);
 * console.assert(core.role === "leader");
 * ```
 */
export class RaftCore {
  /** This node's id. */
  readonly id: NodeId;
  /** Current term. */
  term = 0;
  /** Whom this node voted for in the current term. */
  vote: NodeId = NONE;
  /** The leader of the current term as far as this node knows. */
  leader: NodeId = NONE;
  /** This node's role. */
  role: Role = "follower";
  /** The log and its marks. */
  readonly log: RaftLog;
  /** Replication progress per follower (leader only, but kept for all voters). */
  readonly progress: Map<NodeId, Progress> = new Map();

  #voters: NodeId[] = [];
  #learners: NodeId[] = [];
  #info: Record<NodeId, string> = {};
  /** The configuration in force up to the log's snapshot index (snapshot or bootstrap). */
  #baseConf: ConfState;
  /** The configuration entries in the log after the snapshot, by increasing index. */
  #confs: { index: number; term: number; conf: ConfState }[] = [];
  readonly #promoteLag: number;
  readonly #electionTicks: number;
  readonly #heartbeatTicks: number;
  readonly #preVote: boolean;
  readonly #checkQuorum: boolean;
  readonly #maxMsgBytes: number;
  readonly #maxInflight: number;
  readonly #maxApplyBytes: number;
  readonly #random: () => number;

  #electionElapsed = 0;
  #heartbeatElapsed = 0;
  /** Ticks since this node became leader (the clock for CheckQuorum). */
  #leaderTicks = 0;
  #randomizedElectionTimeout = 0;
  #votes = new Map<NodeId, boolean>();
  #step: StepFn;
  #tick: () => void;

  #messages: Message[] = [];
  #persistedMessages: Message[] = [];
  #readStates: ReadState[] = [];
  #pendingReads: PendingRead[] = [];
  /** The leader's heartbeat rounds: each broadcast gets the next number, carried as `context`. */
  #round = 0;
  /** When (in leader ticks) each recent round was sent. */
  #roundSentAt = new Map<number, number>();
  /** The latest round each peer answered. */
  #roundAcked = new Map<NodeId, number>();
  /** Until an election timeout has passed since start-up, assume a leader may hold a lease. */
  #startupLease = true;
  readonly #leaseMarginTicks: number;
  #readsAwaitingCommit: { id: number; from: NodeId }[] = [];
  /** Whether the newest heartbeat round is still in `#messages`, not handed out by a Ready yet. */
  #roundQueued = false;
  /** Follower reads dropped for {@linkcode MAX_PEER_PENDING_READS}: see `droppedReads`. */
  #droppedReads = 0;
  /**
   * A follower's reads sent to the leader as ReadIndex and not answered yet: read id -> the
   * follower tick it was (last) sent at. Sent again every {@linkcode _readRetryTicks} ticks while
   * unanswered (the request or its answer may be lost); dropped when the leader or role changes
   * (the driver fails those reads on the same Ready's soft state).
   */
  #remoteReads = new Map<number, number>();
  /** Ticks seen while not leading: the clock of {@linkcode RaftCore.#remoteReads}. */
  #followerTicks = 0;
  readonly #readRetryTicks: number;
  #pendingSnapshot: SnapshotMeta | null = null;
  /** Invariant: covers every compacted entry (`index >= log.snapIndex`) once anything is compacted. */
  #latestSnapshot: SnapshotMeta | null = null;
  #broadcastPending = false;
  /** The voter this leader is handing leadership to, or NONE (see transferLeadership). */
  #transferee: NodeId = NONE;
  /** Leader ticks since the transfer began; it is abandoned after an election timeout. */
  #transferElapsed = 0;
  /** Whether this leader sent TimeoutNow in its term: its lease no longer holds (see leaseRead). */
  #leaseRevoked = false;
  #electionsRefused = 0;
  /** The committed configuration index a peer said leaves this node out (0: none). */
  #learnedRemovedAt = 0;
  #prevSoft: SoftState;
  #prevHard: HardState;

  /** Creates a node from its configuration and recovered state; it starts as a follower. */
  constructor(config: RaftConfig) {
    this.id = config.id;
    this.#promoteLag = config.promoteLag ?? 64;
    this.#electionTicks = config.electionTicks ?? 10;
    this.#heartbeatTicks = config.heartbeatTicks ?? 1;
    if (this.#heartbeatTicks >= this.#electionTicks) {
      throw new RangeError(
        `heartbeatTicks (${this.#heartbeatTicks}) must be below electionTicks (${this.#electionTicks})`,
      );
    }
    this.#preVote = config.preVote ?? true;
    this.#checkQuorum = config.checkQuorum ?? true;
    this.#maxMsgBytes = config.maxMsgBytes ?? 1 << 20;
    this.#maxInflight = config.maxInflight ?? 256;
    this.#maxApplyBytes = config.maxApplyBytes ?? 4 << 20;
    this.#leaseMarginTicks = config.leaseMarginTicks ??
      Math.max(1, Math.floor(this.#electionTicks / 5));
    this.#random = config.random;
    this.#readRetryTicks = Math.max(1, Math.ceil(this.#electionTicks / 2));
    this.log = new RaftLog(config.snapshot ?? null, config.entries ?? []);
    this.#latestSnapshot = config.snapshot ?? null;
    this.#baseConf = config.snapshot ? confOf(config.snapshot) : {
      voters: [...config.voters],
      learners: [...(config.learners ?? [])],
      info: { ...(config.info ?? {}) },
    };
    this.#noteEntries(config.entries ?? []);
    this.#useConf(this.#currentConf());
    const hs = config.hardState ?? { term: 0, vote: NONE, commit: 0 };
    this.term = hs.term;
    this.vote = hs.vote;
    if (this.log.lastTerm() > this.term) {
      // Entries are written before the hard state: a crash between the two leaves entries of a
      // term the hard state has not recorded yet. That term's vote was never sent, so: no vote.
      this.term = this.log.lastTerm();
      this.vote = NONE;
    }
    this.log.commitTo(Math.min(hs.commit, this.log.lastIndex()));
    // A node that has never seen a term cannot have answered any leader.
    this.#startupLease = this.term > 0;
    this.#step = this.#stepFollower;
    this.#tick = this.#tickElection;
    this.#becomeFollower(this.term, NONE);
    this.#prevSoft = { leader: this.leader, role: this.role };
    this.#prevHard = { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  /** The voting members (of the newest configuration in the log). */
  get voters(): readonly NodeId[] {
    return this.#voters;
  }

  /** The learners (of the newest configuration in the log). */
  get learners(): readonly NodeId[] {
    return this.#learners;
  }

  /** The newest configuration in the log (in force from when it was appended). */
  confState(): ConfState {
    return copyConf(this.#currentConf());
  }

  /** The index of the newest configuration entry in the log (0: the snapshot's or bootstrap's). */
  get confIndex(): number {
    return this.#confs.at(-1)?.index ?? 0;
  }

  /**
   * The configuration in force at `index` (for the metadata of a snapshot taken there). `index`
   * must not be below the log's snapshot index.
   */
  confAt(index: number): ConfState {
    let c = this.#baseConf;
    for (const e of this.#confs) {
      if (e.index > index) break;
      c = e.conf;
    }
    return copyConf(c);
  }

  /**
   * The index of the configuration in force at `index`: its entry's, or the snapshot's index when
   * it comes from the snapshot (the entry that set it is at or below), or 0 for the bootstrap
   * configuration. `index` must not be below the log's snapshot index.
   */
  confIndexAt(index: number): number {
    let at = this.log.snapIndex;
    for (const e of this.#confs) {
      if (e.index > index) break;
      at = e.index;
    }
    return at;
  }

  /**
   * Whether the newest configuration leaves this node out (it was removed: it takes no further
   * part). False for a node with no configuration yet (one waiting to join).
   */
  get removed(): boolean {
    if (this.#voters.length === 0) return false;
    return !this.#isMember(this.id) || this.learnedRemoved;
  }

  /**
   * The index of the configuration this node knows itself a member by: its newest configuration
   * entry, or the snapshot's index when the configuration comes from the snapshot (the entry that
   * set it is at or below), or 0 for the bootstrap configuration.
   */
  #selfConfIndex(): number {
    return Math.max(this.confIndex, this.log.snapIndex);
  }

  /**
   * The index of the configuration by which this node counts itself a member (see
   * {@linkcode RaftCore.learnRemoved}); 0 when it does not (no configuration yet, or removed).
   */
  get memberSince(): number {
    if (this.#voters.length === 0 || this.removed) return 0;
    return Math.max(1, this.#selfConfIndex());
  }

  /**
   * Whether a peer told this node it was removed (see {@linkcode RaftCore.learnRemoved}) and
   * nothing this node holds since says otherwise.
   */
  get learnedRemoved(): boolean {
    // At the index of its own configuration entry too: that entry is then not the committed one
    // (see learnRemoved).
    return this.#voters.length > 0 && this.#learnedRemovedAt > 0 &&
      this.#learnedRemovedAt >= this.#selfConfIndex();
  }

  /**
   * Whether a peer message from `from` is to be answered "you were removed", and as of which
   * index: this node's commit index when the configuration in force there and the newest one
   * both leave `from` out; 0 otherwise (a member, this node, or a node with no configuration
   * yet). The sender takes the answer only when that index is at or above every configuration it
   * holds that lists it ({@linkcode RaftCore.learnRemoved}): committed history up to the commit
   * index holds any such configuration entry, or truncated it away (an addition that never
   * committed, overwritten by a later leader), and either way leaves the sender out at that index.
   * (The index of the configuration entry itself would be below such an overwritten addition, and
   * the sender would never learn it is no member.)
   */
  removedAt(from: NodeId): number {
    if (from === this.id || this.#voters.length === 0 || this.#isMember(from)) return 0;
    const at = Math.max(this.log.committed, this.log.snapIndex);
    let conf = this.#baseConf;
    for (const c of this.#confs) {
      if (c.index > at) break;
      conf = c.conf;
    }
    if (confLists(conf, from)) return 0;
    return Math.max(1, at);
  }

  /**
   * A peer answered that the configuration in force at its commit index `index` leaves this node
   * out. Taken only when `index` is at or above the configuration this node knows itself a member
   * by: committed configurations form one history, so one in force at or after that entry that
   * leaves this node out means it was removed since, or that its entry there is not the committed
   * one (its addition was overwritten); a stale peer that has not seen this node's (re-)addition
   * answers with an index below that addition and is ignored. A configuration entry or snapshot
   * that lists this node above `index` clears it again. Returns whether this node now counts
   * itself removed.
   */
  learnRemoved(index: number): boolean {
    if (this.#voters.length === 0 || !this.#isMember(this.id)) return this.removed;
    if (this.contradictsCommitted(index)) return this.removed;
    // An index equal to this node's own configuration entry counts: the configuration in force
    // at that committed index leaves this node out, so the entry there is not this node's (a
    // new leader overwrote its addition).
    if (index < 1 || index < this.#selfConfIndex() || index <= this.#learnedRemovedAt) {
      return this.removed;
    }
    this.#learnedRemovedAt = index;
    if (this.role !== "follower") this.#becomeFollower(this.term, NONE);
    return this.removed;
  }

  /**
   * Whether a peer's word that its configuration in force at its commit index `index` leaves this
   * node out contradicts this node's own committed log: `index` is committed here too, and the
   * configuration in force here at `index` lists this node. Committed logs agree in a correct
   * cluster, so the peer's history is another one (a node started on a cluster file that listed
   * fewer members elected itself and committed alone): its word is not taken.
   */
  contradictsCommitted(index: number): boolean {
    if (index < this.log.snapIndex || index > this.log.committed) return false;
    return confLists(this.confAt(index), this.id);
  }

  /**
   * How many elections this node did not start because its term reached {@linkcode MAX_TERM}
   * (it stays a follower instead): the driver logs when this grows.
   */
  get electionsRefused(): number {
    return this.#electionsRefused;
  }

  /** The voter a leader transfer in progress hands leadership to, or {@linkcode NONE}. */
  get leadTransferee(): NodeId {
    return this.#transferee;
  }

  /** Ticks since the last election reset (for tests and status). */
  get electionElapsed(): number {
    return this.#electionElapsed;
  }

  // ---- inputs -------------------------------------------------------------------------------

  /** Advances logical time by one tick. */
  tick(): void {
    this.#tick();
  }

  /** Starts an election now (used at bootstrap and by tests); only a voter campaigns. */
  campaign(): void {
    if (this.role === "leader" || !this.#voters.includes(this.id) || this.removed) return;
    this.#startElection(this.#preVote);
  }

  /**
   * Appends a client command to the leader's log and returns where it went. The entry is
   * replicated on the next {@linkcode RaftCore.ready}; many proposals between two readies travel
   * in one append (group commit). Throws {@linkcode NotLeaderError} on any other node.
   */
  propose(data: Uint8Array): { index: number; term: number } {
    if (this.role !== "leader") throw new NotLeaderError(this.leader);
    if (this.#transferee !== NONE) throw new LeaderTransferError(this.#transferee);
    const index = this.log.lastIndex() + 1;
    this.log.truncateAndAppend([{ term: this.term, index, type: EntryType.Normal, data }]);
    this.#broadcastPending = true;
    return { index, term: this.term };
  }

  /**
   * Proposes one single-server membership change (dissertation 4.1): add a learner, promote a
   * learner, or remove a member. The new configuration is in force as soon as it is appended (on
   * the leader here, on each follower when it appends the entry), so a change may only start once
   * the previous one is committed, and only after this leader committed an entry of its own term
   * (the fix to single-server changes in the dissertation's errata). Returns where the entry went.
   *
   * @throws {NotLeaderError} On any node but the leader.
   * @throws {LeaderTransferError} During a leader transfer.
   * @throws {ConfChangeError} When the change is refused (see its `code`).
   */
  proposeConfChange(change: ConfChange): { index: number; term: number } {
    if (this.role !== "leader") throw new NotLeaderError(this.leader);
    if (this.#transferee !== NONE) throw new LeaderTransferError(this.#transferee);
    if (this.log.term(this.log.committed) !== this.term) {
      throw new ConfChangeError(
        "not-ready",
        `the leader has not committed an entry of its term ${this.term} yet; retry shortly`,
      );
    }
    if (this.confIndex > this.log.committed) {
      throw new ConfChangeError(
        "in-flight",
        `another membership change (entry ${this.confIndex}) is not committed yet`,
      );
    }
    const cur = this.#currentConf();
    const next = copyConf(cur);
    const n = change.node;
    if (change.op === "add-learner") {
      if (confLists(next, n)) {
        throw new ConfChangeError("exists", `"${n}" is already a member`);
      }
      next.learners.push(n);
      if (change.info !== undefined) next.info[n] = change.info;
    } else if (change.op === "promote") {
      if (!next.learners.includes(n)) {
        throw new ConfChangeError(
          next.voters.includes(n) ? "not-learner" : "unknown",
          next.voters.includes(n) ? `"${n}" is already a voter` : `"${n}" is not a member`,
        );
      }
      next.learners = next.learners.filter((x) => x !== n);
      next.voters.push(n);
    } else {
      if (next.voters.includes(n)) {
        if (next.voters.length === 1) {
          throw new ConfChangeError("last-voter", `"${n}" is the last voter; it cannot be removed`);
        }
        next.voters = next.voters.filter((x) => x !== n);
      } else if (next.learners.includes(n)) {
        next.learners = next.learners.filter((x) => x !== n);
      } else {
        throw new ConfChangeError("unknown", `"${n}" is not a member`);
      }
      delete next.info[n];
    }
    const index = this.log.lastIndex() + 1;
    const entry: Entry = {
      term: this.term,
      index,
      type: EntryType.ConfChange,
      data: encodeConfState(next),
    };
    this.log.truncateAndAppend([entry]);
    this.#noteEntries([entry]);
    this.#useConf(next);
    this.#broadcastPending = true;
    return { index, term: this.term };
  }

  /**
   * Asks the leader to confirm it still leads, so reads issued now see every write that completed
   * before. When confirmed, a {@linkcode ReadState} with this `id` appears in a Ready: reads may
   * be served once the state machine has applied its index. `id` must be positive and increasing,
   * and not one an earlier start of this node used: a leader may still hold that start's request
   * and would take this one for it, answering it with that older index.
   *
   * On a follower that knows its leader, the request goes to the leader as one
   * {@linkcode MessageType.ReadIndex} message (sent at once, and again while unanswered); the
   * leader confirms it like its own reads and answers with its commit index, and the ReadState
   * appears here, so the follower serves the read from its own state (etcd's ReadIndex on
   * followers). Reads a follower sent are dropped when its leader or role changes: the Ready
   * with that {@linkcode SoftState} is the driver's cue to fail them.
   * Throws {@linkcode NotLeaderError} on a candidate or a follower that knows no leader.
   */
  readIndex(id: number): void {
    if (this.role === "follower" && this.leader !== NONE) {
      if (id <= 0) throw new RangeError(`read id must be positive, got ${id}`);
      this.#remoteReads.set(id, this.#followerTicks);
      this.#send(message({ type: MessageType.ReadIndex, to: this.leader, context: id }));
      return;
    }
    if (this.role !== "leader") throw new NotLeaderError(this.leader);
    if (id <= 0) throw new RangeError(`read id must be positive, got ${id}`);
    this.#requestRead(id, this.id);
  }

  /** A read asked by `from` (this node or a follower): starts its round, or waits for a commit. */
  #requestRead(id: number, from: NodeId): void {
    if (from !== this.id && !this.#admitPeerRead(id, from)) return;
    if (this.log.term(this.log.committed) !== this.term) {
      // Not yet committed an entry of this term: the commit index may be behind. Wait.
      this.#readsAwaitingCommit.push({ id, from });
      return;
    }
    this.#startRead(id, from);
  }

  /**
   * Whether a follower's ReadIndex request is taken: not when the same read (sender and id: a
   * request sent again) is already waiting, which is answered once. When the sender already has
   * {@linkcode MAX_PEER_PENDING_READS} reads waiting, its oldest is dropped to make room.
   */
  #admitPeerRead(id: number, from: NodeId): boolean {
    let count = 0;
    let oldest: { list: { id: number; from: NodeId }[]; at: number } | null = null;
    for (const list of [this.#readsAwaitingCommit, this.#pendingReads]) {
      for (let i = 0; i < list.length; i++) {
        const r = list[i]!;
        if (r.from !== from) continue;
        if (r.id === id) return false;
        count++;
        oldest ??= { list, at: i };
      }
    }
    if (count >= MAX_PEER_PENDING_READS && oldest !== null) {
      oldest.list.splice(oldest.at, 1);
      this.#droppedReads++;
    }
    return true;
  }

  /**
   * How many follower ReadIndex requests this node dropped as leader because their sender had
   * {@linkcode MAX_PEER_PENDING_READS} waiting already (a flood): for metrics and tests.
   */
  get droppedReads(): number {
    return this.#droppedReads;
  }

  /**
   * Hands this leader's leadership to `to` (Raft's TimeoutNow, dissertation 3.10), or, without
   * `to`, to the voter whose log matches the most of this one's. Returns the chosen voter.
   *
   * Until the transfer ends the leader refuses proposals ({@linkcode LeaderTransferError}), so
   * that the target can catch up; it brings the target's log up to its last index, then sends it
   * TimeoutNow, and the target campaigns at once, without a pre-vote and with a vote request that
   * voters grant even while they hear from this leader ({@linkcode CAMPAIGN_TRANSFER}). The
   * transfer ends when this node stops leading, or is abandoned after an election timeout (the
   * leader takes proposals again). A leader that sent TimeoutNow serves no more lease reads in its
   * term. Asking again for the same target changes nothing.
   *
   * @throws {NotLeaderError} On any node but the leader.
   * @throws {LeaderTransferError} While a transfer to another node is in progress.
   * @throws {RangeError} If `to` is this node or not a voter, or there is no other voter.
   */
  transferLeadership(to?: NodeId): NodeId {
    if (this.role !== "leader") throw new NotLeaderError(this.leader);
    if (to === this.id) throw new RangeError(`"${to}" already leads term ${this.term}`);
    if (to !== undefined && !this.#voters.includes(to)) {
      throw new RangeError(`"${to}" is not a voter: leadership can only go to a voter`);
    }
    if (this.#transferee !== NONE) {
      if (to === undefined || to === this.#transferee) return this.#transferee;
      throw new LeaderTransferError(
        this.#transferee,
        `leadership is already being transferred to "${this.#transferee}"; not to "${to}"`,
      );
    }
    const target = to ?? this.#mostCaughtUp();
    if (target === NONE) throw new RangeError("there is no other voter to hand leadership to");
    this.#transferee = target;
    this.#transferElapsed = 0;
    const pr = this.progress.get(target)!;
    if (pr.match === this.log.lastIndex()) {
      this.#sendTimeoutNow(target);
    } else {
      this.#sendAppend(target, pr);
    }
    return target;
  }

  /**
   * The other voter whose log matches the most of the leader's (ties: the first), among those
   * heard from within an election timeout if any was (one that stopped or was cut off would
   * never campaign), or NONE.
   */
  #mostCaughtUp(): NodeId {
    let best: NodeId = NONE;
    let bestMatch = -1;
    let bestActive = false;
    for (const v of this.#voters) {
      if (v === this.id) continue;
      const pr = this.progress.get(v);
      const match = pr?.match ?? 0;
      const active = pr !== undefined && this.#leaderTicks - pr.lastActive < this.#electionTicks;
      if ((active && !bestActive) || (active === bestActive && match > bestMatch)) {
        [best, bestMatch, bestActive] = [v, match, active];
      }
    }
    return best;
  }

  #sendTimeoutNow(to: NodeId): void {
    this.#leaseRevoked = true;
    this.#send(message({ type: MessageType.TimeoutNow, to }));
  }

  /**
   * Makes a leader a follower in its own term, with no leader known; does nothing on any other
   * role. For the driver when this node can no longer lead usefully (its disk is full and the
   * followers committed entries it cannot persist, so it can neither apply nor answer): the
   * others elect a new leader in a later term. This node voted for itself in this term, so it
   * cannot lead the same term again, and nothing it committed is lost (the new leader holds it).
   */
  stepDown(): void {
    if (this.role !== "leader") return;
    this.#becomeFollower(this.term, NONE);
  }

  /**
   * Processes one message from a peer. Returns null when the message was taken (which includes
   * ignoring a stale one, as Raft does), or, changing nothing, the reason it was refused: a
   * message no correct peer sends (see {@linkcode RaftCore.refusal}). The driver reports
   * refusals; they never throw, since a buggy or hostile peer can send anything.
   */
  step(m: Message): string | null {
    const refused = this.refusal(m);
    if (refused !== null) return refused;
    if (m.term > this.term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        // After a restart this node may have answered a leader just before crashing: it
        // honours that possible lease for one election timeout too.
        // A campaign a leader transfer started was asked for by that leader: no lease to keep.
        const inLease = this.#checkQuorum &&
          !(m.type === MessageType.Vote && m.context === CAMPAIGN_TRANSFER) &&
          (this.leader !== NONE || this.#startupLease) &&
          this.#electionElapsed < this.#electionTicks;
        if (inLease) return null; // a live leader was heard recently: do not be disrupted
      }
      if (m.type === MessageType.PreVote) {
        // A pre-vote never changes our term.
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // Granted pre-votes carry the future term; counted below.
      } else {
        const leader = m.type === MessageType.App || m.type === MessageType.Heartbeat ||
            m.type === MessageType.Snap
          ? m.from
          : NONE;
        this.#becomeFollower(m.term, leader);
      }
    } else if (m.term < this.term) {
      if (
        (this.#checkQuorum || this.#preVote) &&
        (m.type === MessageType.App || m.type === MessageType.Heartbeat)
      ) {
        // A stale leader: tell it our term so it steps down.
        this.#send(message({ type: MessageType.AppResp, to: m.from }));
      } else if (m.type === MessageType.PreVote) {
        this.#send(
          message({ type: MessageType.PreVoteResp, to: m.from, term: this.term, reject: true }),
        );
      }
      return null;
    }

    switch (m.type) {
      case MessageType.PreVote:
      case MessageType.Vote:
        this.#handleVoteRequest(m);
        break;
      default:
        this.#step(m);
    }
    return null;
  }

  /**
   * Why {@linkcode RaftCore.step} would refuse `m`, or null if it would take it. Refused are
   * messages that no correct peer sends, whatever the network does to them (loss, duplication,
   * delay, reordering):
   * - from this node itself (a sender outside this node's configuration is taken: its
   *   configuration may be newer, as when a node added later leads; the transport only accepts
   *   peers of the configuration's address book);
   * - an append carrying a configuration entry that does not decode;
   * - with a term above {@linkcode MAX_TERM};
   * - an append whose entries are not contiguous after its `index`, or that (in our term or a
   *   later one) disagrees with an entry at or below our commit index: committed entries are in
   *   the log of every leader of a later term;
   * - an append, heartbeat or snapshot in our term from a node other than the leader we know in
   *   that term (one leader per term), and a TimeoutNow from another node than that leader;
   * - on a leader, in its term: an append response for an index beyond its last one, or a
   *   heartbeat response for a read round it has not sent.
   *
   * Message fields are validated at the edge (see `validate.ts`); these checks need the core's
   * state, and make sure such a message can never reach code that would throw on it.
   */
  refusal(m: Message): string | null {
    const what = `${MessageType[m.type] ?? `message type ${m.type}`} from "${m.from}"`;
    if (m.from === this.id) return `${what}: the sender is this node itself`;
    if (m.term > MAX_TERM) return `${what}: term ${m.term} is above ${MAX_TERM}`;
    if (m.term < this.term) return null; // stale: answered or ignored as Raft says
    const leaderTraffic = m.type === MessageType.App || m.type === MessageType.Heartbeat ||
      m.type === MessageType.Snap;
    if (m.type === MessageType.App) {
      for (let i = 0; i < m.entries.length; i++) {
        if (m.entries[i]!.index !== m.index + 1 + i) {
          return `${what}: entry ${m.entries[i]!.index} is not at index ${m.index + 1 + i}`;
        }
        if (m.entries[i]!.type === EntryType.ConfChange) {
          try {
            decodeConfState(m.entries[i]!.data);
          } catch (err) {
            return `${what}: entry ${m.entries[i]!.index}: ${(err as Error).message}`;
          }
        }
      }
      const conflict = this.log.committedConflict(m.index, m.logTerm, m.entries);
      if (conflict > 0) {
        return `${what} in term ${m.term}: disagrees with the entry at ${conflict}, at or below ` +
          `the commit index ${this.log.committed}`;
      }
    }
    if (m.term !== this.term) return null;
    if (leaderTraffic && this.leader !== NONE && this.leader !== m.from) {
      return `${what}: "${this.leader}" already leads term ${m.term}`;
    }
    if (
      (m.type === MessageType.TimeoutNow || m.type === MessageType.ReadIndexResp) &&
      this.leader !== NONE && this.leader !== m.from
    ) {
      return `${what}: only the leader of term ${m.term} may send it`;
    }
    if (this.role === "leader") {
      if (m.type === MessageType.AppResp && m.index > this.log.lastIndex()) {
        return `${what}: index ${m.index} is beyond the last index ${this.log.lastIndex()}`;
      }
      if (m.type === MessageType.HeartbeatResp && m.context > this.#round) {
        return `${what}: read round ${m.context} was never sent (last ${this.#round})`;
      }
    }
    return null;
  }

  /** Reports that the driver made the log durable up to (`index`, `term`). */
  persisted(index: number, term: number): void {
    this.log.stableTo(index, term);
    if (this.role === "leader") {
      const self = this.progress.get(this.id)!;
      if (self.maybeUpdate(this.log.stable)) {
        if (this.#maybeCommit()) this.#broadcastPending = true;
      }
    }
  }

  /** Reports that a peer could not be reached; the leader stops streaming to it and probes. */
  reportUnreachable(peer: NodeId): void {
    const pr = this.progress.get(peer);
    if (this.role !== "leader" || !pr || peer === this.id) return;
    if (pr.state === "replicate") pr.becomeProbe();
  }

  /** Reports the outcome of streaming a snapshot to `peer`. */
  reportSnapshot(peer: NodeId, ok: boolean): void {
    const pr = this.progress.get(peer);
    if (this.role !== "leader" || !pr || pr.state !== "snapshot") return;
    if (!ok) pr.pendingSnapshot = 0;
    pr.becomeProbe();
    // Wait for the follower's answer (or a heartbeat response) before probing again.
    pr.probeSent = true;
  }

  /**
   * Records that the driver durably saved a snapshot (or installed one), and drops log entries up
   * to `compactTo` (at most the snapshot's index; a few entries before it may be kept so that
   * followers just behind catch up without a snapshot). A leader sends this snapshot to
   * followers that need entries from before the log's start.
   */
  snapshotSaved(meta: SnapshotMeta, compactTo: number = meta.index): void {
    if (compactTo > meta.index) {
      throw new RaftInvariantError(`compactTo ${compactTo} is past the snapshot at ${meta.index}`);
    }
    if (!this.#latestSnapshot || meta.index > this.#latestSnapshot.index) {
      this.#latestSnapshot = { ...meta, voters: [...meta.voters] };
    }
    if (compactTo > this.log.snapIndex) {
      const base = this.confAt(compactTo);
      this.log.compact(compactTo);
      this.#confs = this.#confs.filter((c) => c.index > compactTo);
      this.#baseConf = base;
    }
  }

  /** The newest snapshot the driver saved or installed, or null. */
  latestSnapshot(): SnapshotMeta | null {
    return this.#latestSnapshot;
  }

  /** Whether a Ready would carry anything. */
  hasReady(): boolean {
    if (this.#broadcastPending && this.role === "leader") return true;
    const soft = this.#prevSoft;
    return this.#messages.length > 0 || this.#persistedMessages.length > 0 ||
      this.#readStates.length > 0 || this.#pendingSnapshot !== null ||
      this.log.handed < this.log.lastIndex() ||
      this.log.applied < Math.min(this.log.committed, this.log.stable) ||
      soft.leader !== this.leader || soft.role !== this.role ||
      this.term !== this.#prevHard.term || this.vote !== this.#prevHard.vote;
  }

  /**
   * Collects the work for the driver and marks it handed out (see {@linkcode Ready} for the order
   * the driver must follow). Consecutive Readies must be persisted in the order they were taken.
   */
  ready(): Ready {
    if (this.#broadcastPending && this.role === "leader") this.#bcastAppend();
    this.#broadcastPending = false;
    let softState: SoftState | null = null;
    if (this.#prevSoft.leader !== this.leader || this.#prevSoft.role !== this.role) {
      softState = { leader: this.leader, role: this.role };
      this.#prevSoft = softState;
      // The driver fails unconfirmed reads on this soft state: forget the ones sent to a leader.
      if (this.role !== "leader") this.#remoteReads.clear();
    }
    let hardState: HardState | null = null;
    if (this.#prevHard.term !== this.term || this.#prevHard.vote !== this.vote) {
      hardState = { term: this.term, vote: this.vote, commit: this.log.committed };
      this.#prevHard = hardState;
    }
    const snapshot = this.#pendingSnapshot;
    this.#pendingSnapshot = null;
    const rd: Ready = {
      softState,
      hardState,
      snapshot,
      entries: this.log.takeUnstable(),
      messages: this.#messages,
      persistedMessages: this.#persistedMessages,
      committedEntries: snapshot ? [] : this.log.takeCommitted(this.#maxApplyBytes),
      readStates: this.#readStates,
    };
    this.#messages = [];
    this.#persistedMessages = [];
    this.#readStates = [];
    this.#roundQueued = false;
    return rd;
  }

  // ---- roles --------------------------------------------------------------------------------

  #reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = NONE;
    }
    this.leader = NONE;
    this.#electionElapsed = 0;
    this.#heartbeatElapsed = 0;
    this.#randomizedElectionTimeout = this.#electionTicks +
      Math.floor(this.#random() * this.#electionTicks);
    this.#votes.clear();
    this.#transferee = NONE;
    this.#leaseRevoked = false;
    const last = this.log.lastIndex();
    this.progress.clear();
    // Members of the committed configuration too: one being removed still gets the log until
    // its removal commits (see #pruneProgress).
    const committed = this.confAt(Math.max(this.log.committed, this.log.snapIndex));
    const ids = [...this.#voters, ...this.#learners, this.id, ...committed.voters];
    for (const id of new Set([...ids, ...committed.learners])) {
      const fresh = new Progress(last + 1, this.#maxInflight);
      if (id === this.id) fresh.match = this.log.stable;
      this.progress.set(id, fresh);
    }
    this.#pendingReads = [];
    this.#roundQueued = false;
    this.#roundSentAt.clear();
    this.#roundAcked.clear();
    this.#readsAwaitingCommit = [];
  }

  #becomeFollower(term: number, leader: NodeId): void {
    this.#reset(term);
    this.leader = leader;
    this.role = "follower";
    this.#step = this.#stepFollower;
    this.#tick = this.#tickElection;
  }

  #becomePreCandidate(): void {
    if (this.role === "leader") throw new RaftInvariantError("leader cannot become pre-candidate");
    // Like a candidate, but the term and vote stay as they are.
    this.#votes.clear();
    this.leader = NONE;
    this.#randomizedElectionTimeout = this.#electionTicks +
      Math.floor(this.#random() * this.#electionTicks);
    this.role = "pre-candidate";
    this.#step = this.#stepCandidate;
    this.#tick = this.#tickElection;
  }

  #becomeCandidate(): void {
    if (this.role === "leader") throw new RaftInvariantError("leader cannot become candidate");
    if (this.term >= MAX_TERM) {
      throw new RaftInvariantError(`cannot campaign past MAX_TERM: term is ${this.term}`);
    }
    this.#reset(this.term + 1);
    this.vote = this.id;
    this.role = "candidate";
    this.#step = this.#stepCandidate;
    this.#tick = this.#tickElection;
  }

  #becomeLeader(): void {
    if (this.role === "follower") throw new RaftInvariantError("follower cannot become leader");
    this.#reset(this.term);
    this.leader = this.id;
    this.role = "leader";
    this.#step = this.#stepLeader;
    this.#tick = this.#tickHeartbeat;
    this.#leaderTicks = 0;
    // Reads this node sent to a former leader and that no Ready dropped yet: confirm them itself.
    for (const id of this.#remoteReads.keys()) {
      this.#readsAwaitingCommit.push({ id, from: this.id });
    }
    this.#remoteReads.clear();
    for (const pr of this.progress.values()) pr.lastActive = 0;
    // The no-op entry: committing it commits every earlier entry (Figure 8).
    const index = this.log.lastIndex() + 1;
    this.log.truncateAndAppend([{ term: this.term, index, type: EntryType.Noop, data: EMPTY }]);
    this.#broadcastPending = true;
  }

  #startElection(pre: boolean, transfer = false): void {
    if (!this.#voters.includes(this.id)) return;
    if (this.term >= MAX_TERM) {
      // One more term would pass the bound: stay a follower (the driver logs it).
      this.#electionsRefused++;
      if (this.role !== "follower") this.#becomeFollower(this.term, NONE);
      return;
    }
    if (pre) {
      this.#becomePreCandidate();
    } else {
      this.#becomeCandidate();
    }
    const type = pre ? MessageType.PreVote : MessageType.Vote;
    const term = pre ? this.term + 1 : this.term;
    if (this.#poll(this.id, true)) {
      // A single-node cluster wins at once.
      if (pre) {
        this.#startElection(false);
      } else {
        this.#becomeLeader();
      }
      return;
    }
    for (const v of this.#voters) {
      if (v === this.id) continue;
      this.#send(message({
        type,
        to: v,
        term,
        index: this.log.lastIndex(),
        logTerm: this.log.lastTerm(),
        context: transfer && !pre ? CAMPAIGN_TRANSFER : 0,
      }));
    }
  }

  /** Records a vote; returns true once a majority granted. Rejections by a majority -> follower. */
  #poll(from: NodeId, granted: boolean): boolean {
    if (!this.#voters.includes(from)) return false;
    if (!this.#votes.has(from)) this.#votes.set(from, granted);
    let yes = 0;
    let no = 0;
    for (const g of this.#votes.values()) g ? yes++ : no++;
    const q = this.#quorum();
    if (no >= q) this.#becomeFollower(this.term, NONE);
    return yes >= q;
  }

  #quorum(): number {
    return Math.floor(this.#voters.length / 2) + 1;
  }

  #isMember(id: NodeId): boolean {
    return this.#voters.includes(id) || this.#learners.includes(id);
  }

  /** Whether this node is the only voter (it decides alone). */
  #soleVoter(): boolean {
    return this.#voters.length === 1 && this.#voters[0] === this.id;
  }

  // ---- configuration ------------------------------------------------------------------------

  #currentConf(): ConfState {
    return this.#confs.at(-1)?.conf ?? this.#baseConf;
  }

  /**
   * Records the configuration entries among `entries` that are now in the log, and forgets those
   * the log no longer holds (a follower's log truncated by a new leader: its configuration rolls
   * back to the previous one, as the dissertation's rule wants).
   */
  #noteEntries(entries: readonly Entry[]): void {
    const last = this.log.lastIndex();
    this.#confs = this.#confs.filter((c) => c.index <= last && this.log.term(c.index) === c.term);
    for (const e of entries) {
      if (e.type !== EntryType.ConfChange || this.log.term(e.index) !== e.term) continue;
      if (e.index <= this.log.snapIndex) continue;
      const rec = { index: e.index, term: e.term, conf: decodeConfState(e.data) };
      const i = this.#confs.findIndex((c) => c.index >= e.index);
      if (i === -1) this.#confs.push(rec);
      else if (this.#confs[i]!.index === e.index) this.#confs[i] = rec;
      else this.#confs.splice(i, 0, rec);
    }
  }

  /** Puts `conf` in force: membership lists, and a progress for every member (and this node). */
  #useConf(conf: ConfState): void {
    this.#voters = [...conf.voters];
    this.#learners = [...conf.learners];
    this.#info = { ...conf.info };
    const last = this.log.lastIndex();
    for (const id of [...this.#voters, ...this.#learners, this.id]) {
      if (this.progress.has(id)) continue;
      const pr = new Progress(last + 1, this.#maxInflight);
      if (id === this.id) pr.match = this.log.stable;
      pr.lastActive = this.#leaderTicks;
      this.progress.set(id, pr);
    }
    this.#pruneProgress();
    if (
      (this.role === "candidate" || this.role === "pre-candidate") &&
      !this.#voters.includes(this.id)
    ) {
      this.#becomeFollower(this.term, NONE);
    }
  }

  /**
   * Drops the progress of nodes that are neither in the newest configuration nor in the committed
   * one. A removed node keeps its progress until its removal commits: the leader goes on sending
   * it the log, so that it normally gets the entry that removes it and knows it is out, instead of
   * timing out and campaigning in vain.
   */
  #pruneProgress(): void {
    const self = this.#isMember(this.id) ? 0 : 1;
    if (this.progress.size <= this.#voters.length + this.#learners.length + self) return;
    const committed = this.confAt(Math.max(this.log.committed, this.log.snapIndex));
    for (const id of [...this.progress.keys()]) {
      if (id === this.id || this.#isMember(id)) continue;
      if (confLists(committed, id)) continue;
      this.progress.delete(id);
    }
  }

  /**
   * A leader the committed configuration leaves out steps down (it led the change to its own
   * removal without counting itself), handing leadership to the most caught-up voter.
   */
  #maybeStepDownRemoved(): void {
    if (this.role !== "leader" || this.#voters.includes(this.id)) return;
    if (this.log.committed < this.confIndex) return;
    const target = this.#mostCaughtUp();
    const caughtUp = target !== NONE &&
      this.progress.get(target)!.match === this.log.lastIndex();
    this.#becomeFollower(this.term, NONE);
    if (caughtUp) this.#send(message({ type: MessageType.TimeoutNow, to: target }));
  }

  /**
   * The leader promotes a learner that replicates normally and is within `promoteLag` entries of
   * the commit index, when no other change is pending.
   */
  #maybePromote(): void {
    if (this.role !== "leader" || this.#learners.length === 0 || this.#transferee !== NONE) return;
    if (this.confIndex > this.log.committed) return;
    if (this.log.term(this.log.committed) !== this.term) return;
    for (const l of this.#learners) {
      const pr = this.progress.get(l);
      if (pr && pr.state === "replicate" && pr.match + this.#promoteLag >= this.log.committed) {
        this.proposeConfChange({ op: "promote", node: l });
        return;
      }
    }
  }

  // ---- ticks --------------------------------------------------------------------------------

  #tickElection = (): void => {
    this.#electionElapsed++;
    this.#followerTicks++;
    // A removed node's reads are failed by its driver (the leader no longer answers it).
    if (this.#remoteReads.size > 0 && this.removed) this.#remoteReads.clear();
    if (this.#remoteReads.size > 0 && this.role === "follower" && this.leader !== NONE) {
      for (const [id, sentAt] of this.#remoteReads) {
        if (this.#followerTicks - sentAt < this.#readRetryTicks) continue;
        this.#remoteReads.set(id, this.#followerTicks);
        this.#send(message({ type: MessageType.ReadIndex, to: this.leader, context: id }));
      }
    }
    if (this.#electionElapsed >= this.#electionTicks) this.#startupLease = false;
    if (this.#electionElapsed >= this.#randomizedElectionTimeout) {
      if (!this.#voters.includes(this.id) || this.removed) {
        // A learner, a removed node or one waiting to join never campaigns.
        this.#electionElapsed = 0;
        return;
      }
      this.#electionElapsed = 0;
      this.#startElection(this.#preVote);
    }
  };

  #tickHeartbeat = (): void => {
    this.#heartbeatElapsed++;
    this.#leaderTicks++;
    // electionElapsed stays below electionTicks while leading: it backs the vote lease.
    this.#electionElapsed = Math.min(this.#electionElapsed + 1, this.#electionTicks - 1);
    if (this.#checkQuorum && !this.#quorumActive()) {
      // Nobody in a majority answered within an election timeout: a new leader may exist.
      this.#becomeFollower(this.term, NONE);
      return;
    }
    if (this.#transferee !== NONE && ++this.#transferElapsed >= this.#electionTicks) {
      // The target did not take over within an election timeout: lead on, take proposals again.
      this.#transferee = NONE;
    }
    if (this.#heartbeatElapsed >= this.#heartbeatTicks) {
      this.#heartbeatElapsed = 0;
      this.#bcastHeartbeat();
    }
    this.#maybePromote();
  };

  /** Whether a majority (counting this node) answered within the last election timeout. */
  #quorumActive(): boolean {
    return this.#activeVoters() >= this.#quorum();
  }

  /** The voters heard from within the last election timeout, this node counted (as leader). */
  #activeVoters(): number {
    let active = 0;
    for (const id of this.#voters) {
      const pr = this.progress.get(id)!;
      if (id === this.id || this.#leaderTicks - pr.lastActive < this.#electionTicks) active++;
    }
    return active;
  }

  /**
   * On a leader, how long since it last heard from each other member (voters and learners), in
   * ticks: since it took the lead (or added the member) for one not heard from since. Empty on
   * any other role.
   */
  contactTicks(): Map<NodeId, number> {
    const ticks = new Map<NodeId, number>();
    if (this.role !== "leader") return ticks;
    for (const [id, pr] of this.progress) {
      if (id !== this.id) ticks.set(id, this.#leaderTicks - pr.lastActive);
    }
    return ticks;
  }

  /**
   * On a leader, how many more voters could fail before the cluster lost its quorum: the voters
   * heard from within the last election timeout (itself included, as CheckQuorum counts them)
   * minus the quorum. Negative when fewer than a quorum were heard (CheckQuorum then makes the
   * leader step down at the end of the timeout). Null on any other role.
   */
  failureTolerance(): number | null {
    return this.role === "leader" ? this.#activeVoters() - this.#quorum() : null;
  }

  // ---- message handling ---------------------------------------------------------------------

  #handleVoteRequest(m: Message): void {
    const pre = m.type === MessageType.PreVote;
    const canVote = this.vote === m.from ||
      (this.vote === NONE && this.leader === NONE) ||
      (pre && m.term > this.term);
    const respType = pre ? MessageType.PreVoteResp : MessageType.VoteResp;
    if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
      // A granted pre-vote answers in the term asked about; a vote in our (equal) term.
      this.#send(message({ type: respType, to: m.from, term: m.term }));
      if (!pre) {
        this.#electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.#send(message({ type: respType, to: m.from, term: this.term, reject: true }));
    }
  }

  #stepFollower = (m: Message): void => {
    switch (m.type) {
      case MessageType.App:
        this.#electionElapsed = 0;
        this.leader = m.from;
        this.#handleAppend(m);
        return;
      case MessageType.Heartbeat:
        this.#electionElapsed = 0;
        this.leader = m.from;
        this.#handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.#electionElapsed = 0;
        this.leader = m.from;
        this.#handleSnapshot(m);
        return;
      case MessageType.TimeoutNow:
        // The leader asks this node to take over: campaign now, skipping the pre-vote.
        if (this.#voters.includes(this.id) && !this.removed) this.#startElection(false, true);
        return;
      case MessageType.ReadIndexResp:
        // Only the leader of this term answers (see refusal); unknown ids are old or dropped.
        if (this.#remoteReads.delete(m.context)) {
          this.#readStates.push({ id: m.context, index: m.index });
        }
        return;
      default:
        return; // stale responses
    }
  };

  #stepCandidate = (m: Message): void => {
    const myResp = this.role === "pre-candidate" ? MessageType.PreVoteResp : MessageType.VoteResp;
    switch (m.type) {
      case MessageType.App:
      case MessageType.Heartbeat:
      case MessageType.Snap:
        // A leader exists in this term.
        this.#becomeFollower(m.term, m.from);
        this.#stepFollower(m);
        return;
      case MessageType.TimeoutNow:
        // The leader's TimeoutNow reached a node whose own timer had just fired: take over.
        if (this.role === "pre-candidate") this.#startElection(false, true);
        return;
      case myResp:
        if (this.#poll(m.from, !m.reject)) {
          if (this.role === "pre-candidate") {
            this.#startElection(false);
          } else {
            this.#becomeLeader();
          }
        }
        return;
      default:
        return;
    }
  };

  #stepLeader = (m: Message): void => {
    const pr = this.progress.get(m.from);
    if (!pr || m.from === this.id) return;
    switch (m.type) {
      case MessageType.AppResp:
        pr.lastActive = this.#leaderTicks;
        this.#handleAppendResponse(m, pr);
        return;
      case MessageType.HeartbeatResp:
        pr.lastActive = this.#leaderTicks;
        pr.probeSent = false;
        if (m.index < pr.match) pr.lostLog(m.index);
        // Appends may have been lost: open the window by one so replication can resume.
        if (pr.state === "replicate" && pr.inflights.full()) pr.inflights.freeFirst();
        if (pr.match < this.log.lastIndex()) this.#sendAppend(m.from, pr);
        if (m.context > (this.#roundAcked.get(m.from) ?? 0)) {
          this.#roundAcked.set(m.from, m.context);
          this.#releaseReads();
        }
        return;
      case MessageType.ReadIndex:
        this.#requestRead(m.context, m.from);
        return;
      default:
        return;
    }
  };

  #handleAppend(m: Message): void {
    if (m.index < this.log.committed) {
      this.#send(message({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
      return;
    }
    if (this.log.matchTerm(m.index, m.logTerm)) {
      const lastNew = this.log.maybeAppend(m.index, m.entries);
      // A conflict at or below the commit index: refused by refusal() before it gets here.
      if (lastNew === null) return;
      // Never commit past what this message proved we match.
      this.#noteEntries(m.entries);
      this.#useConf(this.#currentConf());
      this.log.commitTo(Math.min(m.commit, lastNew));
      this.#send(message({ type: MessageType.AppResp, to: m.from, index: lastNew }));
      return;
    }
    // Log-matching check failed: tell the leader where to probe next, skipping a whole term.
    const hintIndex = this.log.findConflictByTerm(
      Math.min(m.index, this.log.lastIndex()),
      m.logTerm,
    );
    this.#send(message({
      type: MessageType.AppResp,
      to: m.from,
      index: m.index,
      reject: true,
      rejectHint: hintIndex,
      logTerm: this.log.term(hintIndex) ?? 0,
    }));
  }

  #handleHeartbeat(m: Message): void {
    // The leader caps the commit it sends at our match, so this never passes what we hold.
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    // Our last index lets the leader notice a follower that lost its log (a wiped disk).
    this.#send(message({
      type: MessageType.HeartbeatResp,
      to: m.from,
      context: m.context,
      index: this.log.lastIndex(),
    }));
  }

  #handleSnapshot(m: Message): void {
    const snap = m.snapshot;
    if (!snap) return;
    if (snap.index <= this.log.committed) {
      this.#send(message({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
      return;
    }
    if (this.log.matchTerm(snap.index, snap.term)) {
      // We already hold everything the snapshot covers: just learn the commit. Entries after it
      // may still differ from the leader's, so only the snapshot's index is known to match.
      this.log.commitTo(snap.index);
      this.#send(message({ type: MessageType.AppResp, to: m.from, index: snap.index }));
      return;
    }
    this.log.restore(snap);
    this.#baseConf = confOf(snap);
    this.#confs = [];
    this.#useConf(this.#baseConf);
    this.#latestSnapshot = snap;
    this.#pendingSnapshot = snap;
    this.#send(message({ type: MessageType.AppResp, to: m.from, index: snap.index }));
  }

  #handleAppendResponse(m: Message, pr: Progress): void {
    if (m.reject) {
      let next = m.rejectHint;
      if (m.logTerm > 0) next = this.log.findConflictByTerm(m.rejectHint, m.logTerm);
      if (pr.maybeDecrTo(m.index, next)) {
        if (pr.state === "replicate") pr.becomeProbe();
        this.#sendAppend(m.from, pr);
      }
      return;
    }
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.index)) {
      if (wasPaused && !pr.isPaused()) this.#sendAppend(m.from, pr);
      return;
    }
    if (pr.state === "probe") {
      pr.becomeReplicate();
    } else if (pr.state === "snapshot" && pr.match >= pr.pendingSnapshot) {
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === "replicate") {
      pr.inflights.freeTo(m.index);
    }
    // Followers learn the new commit index in the next Ready's broadcast (one per Ready).
    if (this.#maybeCommit()) this.#broadcastPending = true;
    if (m.from === this.#transferee && pr.match === this.log.lastIndex()) {
      // The target holds the whole log now (no proposal can extend it meanwhile): hand over.
      this.#sendTimeoutNow(m.from);
    }
    while (!pr.isPaused() && pr.next <= this.log.lastIndex()) {
      if (!this.#sendAppend(m.from, pr, true)) break;
    }
    this.#maybePromote();
  }

  /** Advances the commit index to what a majority holds, if it is of the current term. */
  #maybeCommit(): boolean {
    const matches: number[] = [];
    for (const id of this.#voters) {
      matches.push(id === this.id ? this.log.stable : this.progress.get(id)!.match);
    }
    matches.sort((a, b) => b - a);
    const q = matches[this.#quorum() - 1]!;
    if (q > this.log.committed && this.log.term(q) === this.term) {
      this.log.commitTo(q);
      this.#releaseReadsAwaitingCommit();
      this.#pruneProgress();
      this.#maybeStepDownRemoved();
      return true;
    }
    return false;
  }

  // ---- sending ------------------------------------------------------------------------------

  #send(m: Message): void {
    m.from = this.id;
    if (m.term === 0 && m.type !== MessageType.PreVote && m.type !== MessageType.PreVoteResp) {
      m.term = this.term;
    }
    if (m.type === MessageType.PreVote && m.term === 0) m.term = this.term + 1;
    const leaderTraffic = m.type === MessageType.App || m.type === MessageType.Heartbeat ||
      m.type === MessageType.Snap || m.type === MessageType.TimeoutNow ||
      m.type === MessageType.ReadIndexResp;
    // A leader's appends may overlap its own sync; everything else waits for the sync, but a
    // follower's ReadIndex, which promises nothing and carries its leader's term.
    if ((leaderTraffic && this.role === "leader") || m.type === MessageType.ReadIndex) {
      this.#messages.push(m);
    } else {
      this.#persistedMessages.push(m);
    }
  }

  #bcastAppend(): void {
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      // Send as long as there is something new and the window allows.
      let sent = 0;
      do {
        if (!this.#sendAppend(id, pr, sent > 0)) break;
        sent++;
      } while (pr.state === "replicate" && pr.next <= this.log.lastIndex());
    }
  }

  /**
   * Sends the next append (or a snapshot) to `to`. With `onlyNew`, sends nothing unless there are
   * entries to carry. Returns whether something was sent.
   */
  #sendAppend(to: NodeId, pr: Progress, onlyNew = false): boolean {
    if (pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined || pr.next < this.log.firstIndex()) {
      // The entries it needs are compacted away: send the snapshot.
      const snap = this.#latestSnapshot;
      if (!snap || snap.index < this.log.snapIndex) {
        throw new RaftInvariantError(
          `entries before ${this.log.firstIndex()} are compacted but no snapshot covers them`,
        );
      }
      pr.becomeSnapshot(snap.index);
      this.#send(message({ type: MessageType.Snap, to, snapshot: snap }));
      return true;
    }
    const last = this.log.lastIndex();
    const entries = pr.next <= last ? this.log.slice(pr.next, last + 1, this.#maxMsgBytes) : [];
    if (onlyNew && entries.length === 0) return false;
    this.#send(message({
      type: MessageType.App,
      to,
      index: prevIndex,
      logTerm: prevTerm,
      entries,
      commit: this.log.committed,
    }));
    pr.sentEntries(prevIndex + entries.length, entries.length);
    return true;
  }

  /** Sends a heartbeat to every follower as the next numbered round. */
  #bcastHeartbeat(): void {
    const context = ++this.#round;
    this.#roundQueued = true;
    this.#roundSentAt.set(context, this.#leaderTicks);
    // Rounds older than an election timeout no longer matter for leases; forget them.
    for (const [r, at] of this.#roundSentAt) {
      if (this.#leaderTicks - at <= this.#electionTicks) break;
      this.#roundSentAt.delete(r);
    }
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      this.#send(message({
        type: MessageType.Heartbeat,
        to: id,
        commit: Math.min(pr.match, this.log.committed),
        context,
      }));
    }
  }

  // ---- reads --------------------------------------------------------------------------------

  #startRead(id: number, from: NodeId): void {
    if (this.#soleVoter()) {
      this.#readStates.push({ id, index: this.log.committed });
      return;
    }
    // Reads share rounds, as etcd batches ReadIndex requests: a read joins the newest round if
    // its heartbeats are not handed out yet (they leave after the read arrived); else, while a
    // round sent in this tick is unconfirmed, the next round, sent when that one is confirmed
    // or by the next heartbeat tick. So a flood of requests costs about one round per tick, not
    // one heartbeat broadcast each; a round whose answers were lost holds nothing up past a tick.
    if (this.#roundQueued) {
      this.#pendingReads.push({ id, from, index: this.log.committed, round: this.#round });
      return;
    }
    const inFlight = this.#pendingReads.length > 0 &&
      this.#pendingReads[0]!.round <= this.#round &&
      this.#roundSentAt.get(this.#round) === this.#leaderTicks;
    this.#pendingReads.push({ id, from, index: this.log.committed, round: this.#round + 1 });
    if (!inFlight) this.#bcastHeartbeat();
  }

  #releaseReadsAwaitingCommit(): void {
    if (this.#readsAwaitingCommit.length === 0) return;
    if (this.log.term(this.log.committed) !== this.term) return;
    const reads = this.#readsAwaitingCommit;
    this.#readsAwaitingCommit = [];
    for (const r of reads) this.#startRead(r.id, r.from);
  }

  /** The newest round a quorum (this node included) has answered. */
  #quorumRound(): number {
    const rounds: number[] = [];
    for (const v of this.#voters) {
      rounds.push(v === this.id ? this.#round : (this.#roundAcked.get(v) ?? 0));
    }
    rounds.sort((a, b) => b - a);
    return rounds[this.#quorum() - 1]!;
  }

  /** Confirms every pending read whose round a quorum has answered. */
  #releaseReads(): void {
    if (this.#pendingReads.length === 0) return;
    const confirmed = this.#quorumRound();
    let n = 0;
    while (n < this.#pendingReads.length && this.#pendingReads[n]!.round <= confirmed) n++;
    for (const r of this.#pendingReads.splice(0, n)) {
      if (r.from === this.id) {
        this.#readStates.push({ id: r.id, index: r.index });
      } else {
        this.#send(message({
          type: MessageType.ReadIndexResp,
          to: r.from,
          index: r.index,
          context: r.id,
        }));
      }
    }
    // Reads that arrived while the confirmed round was in flight: their round goes out now.
    const next = this.#pendingReads[0];
    if (n > 0 && next !== undefined && next.round > this.#round) this.#bcastHeartbeat();
  }

  /**
   * Returns the index a lease-based read must wait for, or null when the lease does not hold.
   *
   * The lease: a quorum answered a heartbeat round sent less than (election timeout - margin)
   * ticks ago. Those followers will not vote for anyone else until an election timeout after
   * they got that round, so no other leader can exist meanwhile, as long as clocks drift by less
   * than the margin. Also null until the leader has committed an entry of its term, during a
   * leader transfer, and for the rest of the term once this leader sent TimeoutNow: the target's
   * vote requests are granted regardless of that promise.
   */
  leaseRead(): number | null {
    if (this.role !== "leader" || this.#leaseRevoked || this.#transferee !== NONE) return null;
    if (this.log.term(this.log.committed) !== this.term) return null;
    if (this.#soleVoter()) return this.log.committed;
    const sentAt = this.#roundSentAt.get(this.#quorumRound());
    if (sentAt === undefined) return null;
    const lease = this.#electionTicks - this.#leaseMarginTicks;
    return this.#leaderTicks - sentAt < lease ? this.log.committed : null;
  }
}
