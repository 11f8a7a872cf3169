/**
 * The driver's metrics (see the README's metrics table): what {@linkcode RaftNode} counts as it
 * goes (leader changes, proposal outcomes, apply and snapshot durations), and the gauges copied
 * from its state at each scrape (role, term, indexes, queue depths, replication lag), so that
 * the Ready loop pays nothing for them; and the node's configured timing (election timeout and
 * heartbeat interval), set once at start by {@linkcode registerTimingGauges}.
 *
 * @module
 */

import type { NodeId, Role } from "../raft/types.ts";
import {
  type Counter,
  exponentialBuckets,
  type Histogram,
  type MetricsRegistry,
} from "../util/metrics.ts";
import {
  NoSpaceError,
  NotAppliedError,
  OverloadedError,
  QuotaExceededError,
  StoppingError,
} from "./backend.ts";

/** The node's state as the scrape-time gauges show it. */
export interface NodeGauges {
  /** This node's role. */
  role: Role;
  /** Whether a leader is known (never on a node that knows it was removed). */
  hasLeader: boolean;
  /** What this node is in the cluster, as `GET /v1/status` says (`membership`). */
  membership: MemberState;
  /** The current term. */
  term: number;
  /** The commit index. */
  commit: number;
  /** The index applied to the key-value state. */
  applied: number;
  /** The last index of the log (in memory: it may not be on disk yet). */
  lastIndex: number;
  /** The index of the newest snapshot (0 for none). */
  snapshotIndex: number;
  /** This leader's proposals not yet applied. */
  pendingProposals: number;
  /** Their encoded size in bytes. */
  pendingProposalBytes: number;
  /** Linearizable and lease reads waiting (queued, confirming leadership, or for the apply). */
  pendingReads: number;
  /**
   * Follower ReadIndex requests this node dropped as leader, since it started, because their
   * sender had the most reads waiting already (a flood; see `MAX_PEER_PENDING_READS`).
   */
  peerReadsDropped: number;
  /** Write jobs (appends, hard state, compaction) waiting for the disk, the one in flight included. */
  pendingWrites: number;
  /** Whether the NOSPACE alarm is up. */
  noSpace: boolean;
  /** The UTF-8 bytes of every key and value applied, and 64 for each lease. */
  dataBytes: number;
  /** The quota of those bytes (`--quota-bytes`), or 0 for none. */
  quotaBytes: number;
  /** Change events in the watch history (bounded by `--watch-history`). */
  watchHistoryEvents: number;
  /** Their bytes as the history counts them (bounded by `--watch-history-bytes`). */
  watchHistoryBytes: number;
  /** On a leader, how many entries each follower lacks (last index minus its match); else null. */
  lag: Iterable<[NodeId, number]> | null;
  /**
   * On a leader, the seconds since it last heard from each other member (since it took the lead
   * for one not heard from since, to the heartbeat); else null.
   */
  lastContact: Iterable<[NodeId, number]> | null;
  /**
   * On a leader, how many more voters could fail before the cluster lost its quorum (voters heard
   * from within an election timeout, itself included, minus the quorum); else null.
   */
  failureTolerance: number | null;
}

/** Why a proposal failed, the `reason` label of `raftkv_proposals_failed_total`. */
export type ProposalFailure =
  | "overloaded"
  | "no_space"
  | "quota"
  | "not_applied"
  | "outcome_unknown"
  | "stopping";

const _ROLES: readonly Role[] = ["follower", "pre-candidate", "candidate", "leader"];

/** What a node is in its cluster: a voter, a learner, joining (no configuration yet) or removed. */
export type MemberState = "voter" | "learner" | "joining" | "removed";
const _MEMBERSHIPS: readonly MemberState[] = ["voter", "learner", "joining", "removed"];

/** The node's metrics, registered in a {@linkcode MetricsRegistry}. */
export class NodeMetrics {
  /** `raftkv_leader_changes_total`. */
  readonly leaderChanges: Counter;
  /** `raftkv_proposals_committed_total`. */
  readonly proposalsCommitted: Counter;
  /** `raftkv_refused_retries_replayed_total`. */
  readonly refusedRetriesReplayed: Counter;
  /** `raftkv_removed_peer_answers_total`. */
  readonly removedPeerAnswers: Counter;
  /** `raftkv_members_queries_total`. */
  readonly membersQueries: Counter;
  /** `raftkv_other_cluster_refusals_total`. */
  readonly otherClusterRefusals: Counter;
  /** `raftkv_apply_duration_seconds`. */
  readonly applyDuration: Histogram;
  /** `raftkv_snapshot_save_duration_seconds`. */
  readonly snapshotSaveDuration: Histogram;
  readonly #failed: Record<ProposalFailure, Counter>;
  /** The term in which a leader was last seen (see {@linkcode NodeMetrics.sawLeader}). */
  #leaderTerm = -1;

  /**
   * Registers the node's metrics in `registry`; `read` is called at each scrape for the gauges.
   *
   * @throws {RangeError} If they are already registered there.
   */
  constructor(registry: MetricsRegistry, read: () => NodeGauges) {
    this.leaderChanges = registry.counter(
      "raftkv_leader_changes_total",
      "Leaderships this node has seen begin: a leader known in a term after none was (the first one seen after start counts).",
    );
    this.proposalsCommitted = registry.counter(
      "raftkv_proposals_committed_total",
      "Writes proposed by this node (as leader) that were committed and applied, and answered.",
    );
    const failed = registry.counterVec(
      "raftkv_proposals_failed_total",
      "Writes this node (as leader) refused or could not see through, by reason: overloaded, no_space (507, disk full), quota (507, --quota-bytes), not_applied (another leader's entry took its place), outcome_unknown (client deadline or a snapshot replaced the log: it may still commit), stopping.",
      ["reason"],
    );
    this.#failed = {
      overloaded: failed.labels("overloaded"),
      no_space: failed.labels("no_space"),
      quota: failed.labels("quota"),
      not_applied: failed.labels("not_applied"),
      outcome_unknown: failed.labels("outcome_unknown"),
      stopping: failed.labels("stopping"),
    };
    this.refusedRetriesReplayed = registry.counter(
      "raftkv_refused_retries_replayed_total",
      "Idempotent retries this node (as leader) would have refused (full disk, quota) that it answered with the remembered outcome of their first attempt instead, proposing nothing.",
    );
    this.removedPeerAnswers = registry.counter(
      "raftkv_removed_peer_answers_total",
      "Peer requests this node answered 410 removed: their sender is outside its committed and newest configurations (a member removed while it was down, or cut off).",
    );
    this.membersQueries = registry.counter(
      "raftkv_members_queries_total",
      "Rounds in which this node asked its peers for their committed configuration (it heard from no leader for an election timeout, or refused a sender that claims a newer configuration than its own).",
    );
    this.otherClusterRefusals = registry.counter(
      "raftkv_other_cluster_refusals_total",
      "Peer requests this node refused because they came from another cluster (their cluster id differs from this node's): a cluster file or address that points at another cluster's node.",
    );
    this.applyDuration = registry.histogram(
      "raftkv_apply_duration_seconds",
      "Time to apply one batch of committed entries to the key-value state.",
      exponentialBuckets(0.00001, 2, 16),
    );
    this.snapshotSaveDuration = registry.histogram(
      "raftkv_snapshot_save_duration_seconds",
      "Time to write one snapshot of the state to disk (encode, write, fsync, rename).",
      exponentialBuckets(0.001, 2, 16),
    );

    const isLeader = registry.gauge("raftkv_is_leader", "1 if this node is the leader, else 0.");
    const hasLeader = registry.gauge("raftkv_has_leader", "1 if this node knows a leader, else 0.");
    const role = registry.gaugeVec(
      "raftkv_role",
      "This node's role: 1 for the current one, 0 for the others.",
      ["role"],
    );
    const roles = _ROLES.map((r) => [r, role.labels(r)] as const);
    const membership = registry.gaugeVec(
      "raftkv_membership",
      "What this node is in the cluster: 1 for the current one (voter, learner, joining, removed), 0 for the others.",
      ["membership"],
    );
    const memberships = _MEMBERSHIPS.map((m) => [m, membership.labels(m)] as const);
    const term = registry.gauge("raftkv_term", "The current Raft term.");
    const commit = registry.gauge("raftkv_commit_index", "The highest log index known committed.");
    const applied = registry.gauge(
      "raftkv_applied_index",
      "The highest log index applied to the key-value state.",
    );
    const last = registry.gauge(
      "raftkv_last_log_index",
      "The last index of this node's log (appended, maybe not yet synced).",
    );
    const snapshot = registry.gauge(
      "raftkv_snapshot_index",
      "The last log index covered by this node's newest snapshot (0 for none).",
    );
    const pending = registry.gauge(
      "raftkv_proposals_pending",
      "Proposals of this leader waiting to be applied (bounded by --max-pending-proposals).",
    );
    const pendingBytes = registry.gauge(
      "raftkv_proposals_pending_bytes",
      "Encoded size of the proposals waiting to be applied (bounded by --max-pending-bytes).",
    );
    const reads = registry.gauge(
      "raftkv_reads_pending",
      "Linearizable and lease reads waiting on this leader (for a quorum round or the apply).",
    );
    const readsDropped = registry.counter(
      "raftkv_peer_reads_dropped_total",
      "Follower ReadIndex requests this leader dropped because their sender already had 8 reads waiting (a flood).",
    );
    const writes = registry.gauge(
      "raftkv_disk_writes_pending",
      "Write jobs (log appends, hard state, compaction) waiting for the disk, including the one in flight.",
    );
    const noSpace = registry.gauge(
      "raftkv_nospace_alarm",
      "1 while the NOSPACE alarm is up (the disk refused a write), else 0.",
    );
    const dataBytes = registry.gauge(
      "raftkv_data_bytes",
      "UTF-8 bytes of every key and value this node has applied, and 64 for each lease: the size --quota-bytes limits.",
    );
    const quotaBytes = registry.gauge(
      "raftkv_quota_bytes",
      "The quota of raftkv_data_bytes (--quota-bytes); 0 for none. A leader refuses writes that would pass it (507).",
    );
    const historyEvents = registry.gauge(
      "raftkv_watch_history_events",
      "Change events kept for watches (bounded by --watch-history).",
    );
    const historyBytes = registry.gauge(
      "raftkv_watch_history_bytes",
      "Bytes of the change events kept for watches: key, value and 64 per event (bounded by --watch-history-bytes).",
    );
    const lag = registry.gaugeVec(
      "raftkv_peer_replication_lag_entries",
      "Log entries a follower lacks, as its leader sees it (last index minus the follower's match index); only the leader reports it.",
      ["peer"],
    );
    const lastContact = registry.gaugeVec(
      "raftkv_peer_last_contact_seconds",
      "Seconds since the leader last heard from a member (since it took the lead, for one not heard from since), to the heartbeat; only the leader reports it, for every other member.",
      ["peer"],
    );
    const tolerance = registry.gaugeVec(
      "raftkv_failure_tolerance",
      "Voters that could fail before the cluster lost its quorum, as the leader sees it: voters heard from within an election timeout (the leader included) minus the quorum; only the leader reports it.",
      [],
    );
    registry.onCollect(() => {
      const g = read();
      isLeader.set(g.role === "leader" ? 1 : 0);
      hasLeader.set(g.hasLeader ? 1 : 0);
      for (const [r, child] of roles) child.set(r === g.role ? 1 : 0);
      for (const [m, child] of memberships) child.set(m === g.membership ? 1 : 0);
      term.set(g.term);
      commit.set(g.commit);
      applied.set(g.applied);
      last.set(g.lastIndex);
      snapshot.set(g.snapshotIndex);
      pending.set(g.pendingProposals);
      pendingBytes.set(g.pendingProposalBytes);
      reads.set(g.pendingReads);
      if (g.peerReadsDropped > readsDropped.value) {
        readsDropped.inc(g.peerReadsDropped - readsDropped.value);
      }
      writes.set(g.pendingWrites);
      noSpace.set(g.noSpace ? 1 : 0);
      dataBytes.set(g.dataBytes);
      quotaBytes.set(g.quotaBytes);
      historyEvents.set(g.watchHistoryEvents);
      historyBytes.set(g.watchHistoryBytes);
      lag.clear();
      if (g.lag) { for (const [peer, entries] of g.lag) lag.labels(peer).set(entries); }
      lastContact.clear();
      if (g.lastContact) {
        for (const [peer, seconds] of g.lastContact) lastContact.labels(peer).set(seconds);
      }
      tolerance.clear();
      if (g.failureTolerance !== null) tolerance.labels().set(g.failureTolerance);
    });
  }

  /**
   * Called with the known leader after each Ready: counts a leader change when a leader is known
   * in a term where none was seen yet (there is at most one leader per term).
   */
  sawLeader(leaderKnown: boolean, term: number): void {
    if (!leaderKnown || term === this.#leaderTerm) return;
    this.#leaderTerm = term;
    this.leaderChanges.inc();
  }

  /** Counts a proposal that failed with `error` (see {@linkcode ProposalFailure}). */
  proposalFailed(error: unknown): void {
    this.#failed[_failure(error)].inc();
  }
}

/** The node's timing as configured, in milliseconds (see {@linkcode registerTimingGauges}). */
export interface NodeTiming {
  /** `--election-timeout`. */
  electionTimeoutMs: number;
  /** `--heartbeat`. */
  heartbeatMs: number;
}

/**
 * Registers `raftkv_election_timeout_seconds` and `raftkv_heartbeat_interval_seconds` in
 * `registry`, set once to the node's configured timing: they do not change while it runs. With
 * them, a dashboard or an alert can judge `raftkv_peer_last_contact_seconds` against this node's
 * own election timeout rather than the default one.
 *
 * @example Usage
 * ```ts
 * import { registerTimingGauges } from "./node_metrics.ts";
 * import { MetricsRegistry } from "../util/metrics.ts";
 *
 * const registry = new MetricsRegistry();
 * registerTimingGauges(registry, { electionTimeoutMs: 1000, heartbeatMs: 100 });
 * console.assert(registry.render().includes("raftkv_election_timeout_seconds 1\n"));
 * ```
 *
 * @param registry Where to register them.
 * @param timing The node's `--election-timeout` and `--heartbeat`.
 * @throws {RangeError} If they are already registered there.
 */
export function registerTimingGauges(registry: MetricsRegistry, timing: NodeTiming): void {
  registry.gauge(
    "raftkv_election_timeout_seconds",
    "This node's election timeout (--election-timeout), in seconds: as a follower it starts an election after hearing from no leader for this long (randomized up to twice it); as leader it counts a voter not heard from for this long as down (raftkv_failure_tolerance).",
  ).set(timing.electionTimeoutMs / 1000);
  registry.gauge(
    "raftkv_heartbeat_interval_seconds",
    "This node's heartbeat interval (--heartbeat), in seconds: as leader it sends heartbeats this often, and raftkv_peer_last_contact_seconds counts in steps of it.",
  ).set(timing.heartbeatMs / 1000);
}

function _failure(error: unknown): ProposalFailure {
  if (error instanceof OverloadedError) return "overloaded";
  if (error instanceof NoSpaceError) return "no_space";
  if (error instanceof QuotaExceededError) return "quota";
  if (error instanceof NotAppliedError) return "not_applied";
  if (error instanceof StoppingError) return "stopping";
  return "outcome_unknown";
}
