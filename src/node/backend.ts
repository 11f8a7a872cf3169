/**
 * What the REST API needs from a node, as one interface: the API is written and tested against
 * it, and the driver ({@linkcode RaftNode}) implements it.
 *
 * @module
 */

import type { NodeId, Role } from "../raft/types.ts";
import type {
  EventHistory,
  KvEntry,
  KvResult,
  PlainCommand,
  RangeQuery,
  RangeResult,
} from "../kv/state_machine.ts";

export { LeaderTransferError, NotLeaderError } from "../raft/errors.ts";
export { compareKeys } from "../kv/state_machine.ts";
export { HistoryCompactedError } from "../kv/state_machine.ts";
export { eventBytes } from "../kv/events.ts";
export type {
  Compare,
  CompareOp,
  CompareTarget,
  EventHistory,
  EventSink,
  KeyRange,
  KvEntry,
  KvEvent,
  KvEventType,
  KvResult,
  LeaseInfo,
  LeaseRef,
  PlainCommand,
  RangeQuery,
  RangeResult,
  TxnOp,
  TxnOpResult,
} from "../kv/state_machine.ts";

/** How a read is served. */
export type Consistency =
  /**
   * ReadIndex: the leader confirms with a quorum that it still leads (the default); a follower
   * asks its leader for that read index and serves the read itself once applied that far.
   */
  | "linearizable"
  /** Answered from this node's state without any round trip: may be stale. */
  | "stale"
  /**
   * On the leader, answered while its lease holds without a round trip; elsewhere, and when the
   * lease does not hold, as `linearizable`.
   */
  | "lease";

/** The result of a committed and applied write. */
export interface WriteResult {
  /** The log index the write was committed at. */
  index: number;
}

/** The result of a committed and applied delete. */
export interface DeleteResult extends WriteResult {
  /** Whether the key existed before. */
  deleted: boolean;
}

/** The answer to a read of one key. */
export interface ReadResult {
  /** The key's entry (value and revision), or null when it does not exist. */
  entry: KvEntry | null;
  /** The applied index of the state the read saw. */
  index: number;
}

/** The answer to a read of a range of keys. */
export interface RangeAnswer extends RangeResult {
  /** The applied index of the state the read saw. */
  index: number;
}

/** A node's view of the cluster, as `GET /v1/status` shows it. */
export interface NodeStatus {
  /** This node's id. */
  id: NodeId;
  /** Its role now. */
  role: Role;
  /** The latest term it has seen. */
  term: number;
  /** The known leader, or null. */
  leader: { id: NodeId; api_url: string } | null;
  /** The highest log index it knows committed. */
  commit_index: number;
  /** The highest log index its state machine has applied. */
  applied_index: number;
  /** The index of the last entry in its log. */
  last_index: number;
  /** Every member of the cluster (this node included) and its client API address. */
  members: { id: NodeId; api_url: string }[];
  /** Conditions the node is in: `NOSPACE` while its disk is full (see {@linkcode NoSpaceError}). */
  alarms: Alarm[];
  /**
   * This node's place in the configuration it holds: `voter`, `learner`, `removed` (a change
   * took it out: it takes no further part), or `joining` (started with `--join`, waiting for
   * the leader to add it). Absent on backends without membership changes.
   */
  membership?: "voter" | "learner" | "removed" | "joining";
  /**
   * The UTF-8 bytes of the keys and values it has applied, and 64 for each lease: what its quota
   * limits. Absent on backends that do not count them.
   */
  data_bytes?: number;
  /** Its quota of those bytes (`--quota-bytes`), 0 for none. Absent as `data_bytes` is. */
  quota_bytes?: number;
  /**
   * The id of the cluster it belongs to (peers of another cluster are refused), absent while it
   * knows none (a node that joins, before the leader wrote to it; a cluster made before ids).
   */
  cluster_id?: string;
}

/**
 * A condition a node reports in its status. `NOSPACE`: a write to its disk failed for lack of
 * space (or quota); it retries by itself, serves reads, and refuses writes it would have to
 * append as leader, until a retry succeeds.
 */
export type Alarm = "NOSPACE";

/**
 * The operations the REST API performs on a node.
 *
 * Errors are part of the contract:
 * - {@linkcode NotLeaderError}: this node is not the leader (its `leader` says who is, or "" if
 *   none is known) and cannot do this here (writes; reads on a node that knows no leader, or a
 *   follower whose leader changed before it confirmed the read); nothing was done. The API
 *   forwards or answers 503.
 * - {@linkcode OutcomeUnknownError}: the write was proposed but its fate is unknown within the
 *   deadline (it may still commit), or ({@linkcode UnsettledRetryError}) a retry with an
 *   idempotency key was refused while an earlier attempt is in the log, not yet applied. The API
 *   answers 504.
 * - {@linkcode NotAppliedError}: the write definitely did not and will not take effect (e.g. the
 *   leader lost its term before committing it). Safe to retry. The API answers 503.
 * - {@linkcode StoppingError}: the node is shutting down. The API answers 503.
 * - {@linkcode NoSpaceError}: this node leads but its disk is full, or its followers' are and the
 *   others are not a quorum; nothing was done. The API answers 507.
 * - {@linkcode QuotaExceededError}: this node leads and the write would take the data past its
 *   quota; nothing was done. The API answers 507.
 * - {@linkcode OverloadedError}: the leader has too many writes waiting to be applied; this one
 *   was not proposed. Safe to retry later. The API answers 503.
 */
export interface KvBackend {
  /**
   * Proposes `cmd` and resolves with its result once committed and applied (a failed
   * compare-and-set is a result too, `cas_failed`). With an `idempotencyKey`, a repeat of the
   * same key and command is answered with the first outcome (`replayed: true`) and not applied
   * again; the same key with a different command gets `idempotency_mismatch`.
   */
  write(cmd: PlainCommand, signal: AbortSignal, idempotencyKey?: string | null): Promise<KvResult>;
  /** Reads `key`'s entry (null when absent) with the given consistency. */
  read(key: string, consistency: Consistency, signal: AbortSignal): Promise<ReadResult>;
  /** Reads a range of keys in key order with the given consistency. */
  range(query: RangeQuery, consistency: Consistency, signal: AbortSignal): Promise<RangeAnswer>;
  /** The node's current status. */
  status(): NodeStatus;
  /**
   * A consistent snapshot of this node's applied state, streamed in the snapshot file format
   * (a backup that `--restore-from` can start a new cluster from).
   */
  snapshot(): { index: number; stream: ReadableStream<Uint8Array> };
  /** Whether the node knows a leader and has applied everything that leader had committed when last heard. */
  isReady(): boolean;
  /**
   * Whether this node, as the leader, is already full of writes waiting to be applied: then it
   * returns the {@linkcode OverloadedError} a write would get, so that the API can refuse one
   * before reading its body. Null otherwise (the write's own check still applies).
   */
  overloaded(): OverloadedError | null;
  /**
   * The change history of this node's applied state (see `events.ts`): watches and blocking
   * reads subscribe to it. Its subscriptions end when the node stops. A backend without it
   * answers watches with 501.
   *
   * @throws {StoppingError} If the node is stopping.
   */
  watchHistory?(): EventHistory;
  /** Leader transfer (an admin operation); a backend without it answers the route with 501. */
  transferLeadership?: LeaderTransfer["transferLeadership"];
  /** Membership (admin operations); a backend without it answers the routes with 501. */
  membership?: Membership;
  /** The leader's side of leases; a backend without it answers the lease routes with 501. */
  leases?: LeaseBackend;
}

/** A lease as the leader sees it: its time to live, the time left, its keys. */
export interface LeaseStatus {
  /** Its id (the index of the entry that granted it). */
  id: number;
  /** Its time to live in milliseconds. */
  ttlMs: number;
  /** Milliseconds until the leader expires it, unless kept alive (0: expiring now). */
  remainingMs: number;
  /** The keys attached to it, in key order. */
  keys: string[];
}

/**
 * What only the leader can answer about leases: it alone tracks their deadlines. Grants, puts
 * with a lease and revocations are commands ({@linkcode KvBackend.write}). Both methods throw
 * {@linkcode NotLeaderError} on a follower (the API forwards), and
 * {@linkcode LeaseNotFoundError} for a lease that does not exist.
 */
export interface LeaseBackend {
  /**
   * The shortest time to live this node grants, in milliseconds: a grant or a put with `ttlMs`
   * below it is written with this instead (see `minLeaseTtlMs` in `lease_tracker.ts`).
   */
  readonly minTtlMs: number;
  /**
   * Renews lease `id`: once the leader confirmed with a quorum that it still leads, its deadline
   * becomes at least the time the request arrived plus its time to live.
   */
  keepAlive(id: number, signal: AbortSignal): Promise<LeaseStatus>;
  /** Lease `id`, or every lease (`null`), after a linearizable read on the leader. */
  leaseStatus(id: number | null, signal: AbortSignal): Promise<LeaseStatus[]>;
}

/** The lease does not exist: never granted, revoked, or expired. */
export class LeaseNotFoundError extends Error {
  /** The lease asked for. */
  readonly id: number;
  /**
   * Creates the error.
   *
   * @param id The lease asked for.
   */
  constructor(id: number) {
    super(`lease ${id} not found (never granted, revoked, or expired)`);
    this.name = "LeaseNotFoundError";
    this.id = id;
  }
}

/** A write was proposed but whether it took effect is unknown (it may still commit). */
export class OutcomeUnknownError extends Error {
  /** Creates the error. */
  constructor(message = "the write's outcome is unknown: it may or may not have been applied") {
    super(message);
    this.name = "OutcomeUnknownError";
  }
}

/**
 * A write sent with an idempotency key was refused before it was proposed (a full disk, the
 * quota), but an earlier attempt with the same key is in the leader's log, not yet applied: the
 * refusal speaks only for this attempt, so the write's outcome is unknown. Send it again later
 * with the same key to learn the first outcome.
 */
export class UnsettledRetryError extends OutcomeUnknownError {
  /** Why this attempt was refused. */
  readonly refusal: Error;

  /** Creates the error. */
  constructor(refusal: Error) {
    super(
      `an earlier attempt with this Idempotency-Key is in the log, not yet applied, and this one was refused (${refusal.message}): the write's outcome is unknown; send it again later with the same key`,
    );
    this.name = "UnsettledRetryError";
    this.refusal = refusal;
  }
}

/** A write definitely did not take effect and never will; retrying is safe. */
export class NotAppliedError extends Error {
  /** Creates the error. */
  constructor(message = "the write was not applied (leadership changed before it committed)") {
    super(message);
    this.name = "NotAppliedError";
  }
}

/** The node is shutting down and takes no new requests. */
export class StoppingError extends Error {
  /** Creates the error. */
  constructor(message = "the node is shutting down") {
    super(message);
    this.name = "StoppingError";
  }
}

/**
 * The write was refused, nothing done: this node leads, but its disk is full (the `NOSPACE`
 * alarm), so it cannot append; or so many voters said their disks are full that the others are
 * not a quorum, so it could not commit. Writes resume by themselves once space is freed.
 */
export class NoSpaceError extends Error {
  /** The members whose disks are full, as far as the refusing leader knows (it may be one). */
  readonly members: readonly NodeId[];

  /** Creates the error. */
  constructor(message = "no space left on device", members: readonly NodeId[] = []) {
    super(message);
    this.name = "NoSpaceError";
    this.members = members;
  }
}

/**
 * The write was refused, nothing done: it would take the data (the UTF-8 bytes of every key and
 * value, as this leader has applied them) past the quota (`--quota-bytes`). Deletes are never
 * refused, so deleting keys makes room; writes that add no bytes (a smaller value) still go.
 */
export class QuotaExceededError extends Error {
  /** The data's bytes when the write was refused. */
  readonly dataBytes: number;
  /** The quota in bytes. */
  readonly quotaBytes: number;
  /** The bytes the write would have added. */
  readonly growth: number;

  /**
   * Creates the error.
   *
   * @param dataBytes The data's bytes now.
   * @param growth The bytes the write would add.
   * @param quotaBytes The quota.
   */
  constructor(dataBytes: number, growth: number, quotaBytes: number) {
    super(
      `the data would pass its quota of ${quotaBytes} bytes: it holds ${dataBytes} bytes and ` +
        `this write adds ${growth}; delete keys or revoke leases to make room`,
    );
    this.name = "QuotaExceededError";
    this.dataBytes = dataBytes;
    this.quotaBytes = quotaBytes;
    this.growth = growth;
  }
}

/**
 * The leader has too many proposals waiting to be applied (by count or by bytes), so this write
 * was refused before it was proposed: it definitely did not take effect. Retrying later is safe.
 */
export class OverloadedError extends Error {
  /** Proposals waiting to be applied when the write was refused. */
  readonly pendingProposals: number;
  /** Their encoded size in bytes. */
  readonly pendingBytes: number;

  /**
   * Creates the error.
   *
   * @param pending The proposals waiting and their size when the write was refused.
   * @param limits The limits that were reached.
   */
  constructor(
    pending: { proposals: number; bytes: number },
    limits: { proposals: number; bytes: number },
  ) {
    super(
      `the leader has ${pending.proposals} writes (${pending.bytes} bytes) waiting to be applied; ` +
        `the limit is ${limits.proposals} writes or ${limits.bytes} bytes`,
    );
    this.name = "OverloadedError";
    this.pendingProposals = pending.proposals;
    this.pendingBytes = pending.bytes;
  }
}

/**
 * This node has been removed from the cluster (the configuration it holds leaves it out): it
 * takes no further part, so it refuses reads and writes at once instead of leaving them
 * unanswered. Send them to a current member.
 */
export class RemovedError extends Error {
  /** This node's id. */
  readonly id: NodeId;

  /**
   * Creates the error.
   *
   * @param id This node's id.
   */
  constructor(id: NodeId) {
    super(
      `this node (${id}) has been removed from the cluster and takes no further part; ` +
        `send requests to a current member`,
    );
    this.name = "RemovedError";
    this.id = id;
  }
}

/** Names a node that is not a member of the cluster (a leader transfer's target, say). */
export class UnknownMemberError extends Error {
  /** The id given. */
  readonly id: NodeId;

  /** Creates the error; `members` are listed in the message. */
  constructor(id: NodeId, members: readonly NodeId[]) {
    super(`"${id}" is not a member of the cluster; the members are ${JSON.stringify(members)}`);
    this.name = "UnknownMemberError";
    this.id = id;
  }
}

/** Names a member that does not vote, where only a voter will do (a leader transfer's target). */
export class NotVoterError extends Error {
  /** The id given. */
  readonly id: NodeId;

  /** Creates the error. */
  constructor(id: NodeId) {
    super(`"${id}" is not a voter: leadership can only go to a voter`);
    this.name = "NotVoterError";
    this.id = id;
  }
}

/**
 * A leader transfer that ended with this node leading: the target did not take over within an
 * election timeout and this node leads on, or an election followed that this node won again.
 */
export class TransferAbortedError extends Error {
  /** The node leadership was to go to. */
  readonly target: NodeId;
  /** The term this node leads in now, if an election followed (else null: it led on). */
  readonly reelectedIn: number | null;

  /** Creates the error. */
  constructor(target: NodeId, reelectedIn: number | null = null) {
    super(
      reelectedIn === null
        ? `the leader transfer to "${target}" was abandoned: it did not take over within an ` +
          `election timeout (unreachable, or too far behind); this node still leads`
        : `the leader transfer to "${target}" failed: it did not win the election that followed, ` +
          `and this node was elected again (term ${reelectedIn})`,
    );
    this.name = "TransferAbortedError";
    this.target = target;
    this.reelectedIn = reelectedIn;
  }
}

/** A node's leader transfer, an admin operation (see `RaftNode.transferLeadership`). */
export interface LeaderTransfer {
  /**
   * Hands this leader's leadership to `to` (null: the most caught-up voter) and resolves with
   * the new leader once this node knows it.
   *
   * @throws {NotLeaderError} On a node that does not lead (forward the request to the leader).
   * @throws {UnknownMemberError} If `to` is not a member.
   * @throws {NotVoterError} If `to` does not vote.
   * @throws {LeaderTransferError} While another transfer is in progress.
   * @throws {TransferAbortedError} If this node leads at the end: the target did not take over
   *   within an election timeout, or did not win the election that followed.
   */
  transferLeadership(to: NodeId | null, signal: AbortSignal): Promise<{ leader: NodeId }>;
}

/** One member as `GET /v1/members` lists it. */
export interface MemberView {
  /** Its node id. */
  node_id: NodeId;
  /** Where its peer server listens. */
  rpc_url: string;
  /** Where its REST API listens. */
  api_url: string;
  /** Whether it votes, or only receives the log until it is caught up and promoted. */
  role: "voter" | "learner";
}

/** Why a membership change was refused; the API answers 409 (400 for `unknown`). */
export class MembershipError extends Error {
  /**
   * `exists` (the id or an address is taken), `unknown` (no such member), `last-voter`,
   * `in-flight` (another change is not committed yet), `not-ready` (a new leader has not
   * committed an entry of its term yet).
   */
  readonly code: string;

  /** Creates the error. */
  constructor(code: string, message: string) {
    super(message);
    this.name = "MembershipError";
    this.code = code;
  }
}

/** A node's membership operations (admin operations; see `RaftNode`). */
export interface Membership {
  /** The members of the newest configuration this node holds. */
  list(): MemberView[];
  /**
   * Adds a member as a learner (the leader promotes it once it is caught up) and resolves once
   * the change is applied here.
   *
   * @throws {NotLeaderError} On a node that does not lead (forward to the leader).
   * @throws {MembershipError} When the change is refused.
   */
  add(
    member: { id: NodeId; rpcUrl: string; apiUrl: string },
    signal: AbortSignal,
  ): Promise<{ index: number }>;
  /**
   * Removes a member (voter or learner) and resolves once the change is applied here.
   *
   * @throws {NotLeaderError} On a node that does not lead (forward to the leader).
   * @throws {MembershipError} When the change is refused.
   */
  remove(id: NodeId, signal: AbortSignal): Promise<{ index: number }>;
}
