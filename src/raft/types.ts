/**
 * The data types shared by the pure Raft core and everything that drives it: log entries, hard
 * state, snapshot metadata, peer messages and the {@linkcode Ready} batch the core hands to its
 * driver.
 *
 * This module imports nothing: the core and its types are the bottom of the import graph.
 *
 * @module
 */

/** A node's stable identifier, as written in the cluster file (`node_id`). */
export type NodeId = string;

/** The value used for "no node" (no vote cast, no leader known). */
export const NONE: NodeId = "";

/**
 * The largest term a node accepts or reaches (2^48). Far beyond anything a real cluster uses (a
 * new term every millisecond would take almost 9,000 years), and far enough below
 * `Number.MAX_SAFE_INTEGER` (2^53 - 1) that `term + 1` and sums of terms stay exact. Peer messages
 * with a larger term are refused; a node at this term stops campaigning instead of overflowing.
 */
export const MAX_TERM = 2 ** 48;

/**
 * The largest log index (and commit index, read round, reject hint) a peer message may carry
 * (2^48), for the same reasons as {@linkcode MAX_TERM}.
 */
export const MAX_INDEX = 2 ** 48;

/** What an entry carries. */
export enum EntryType {
  /** A client command for the state machine; `data` is opaque to Raft. */
  Normal = 0,
  /** The empty entry a new leader appends to commit entries of earlier terms. */
  Noop = 1,
  /**
   * A membership change: `data` is the whole new configuration, {@linkcode encodeConfState}'s
   * UTF-8 JSON. A node uses the newest configuration in its log as soon as it appends it.
   */
  ConfChange = 2,
}

/**
 * A cluster configuration: who votes, who only receives the log, and what the driver keeps about
 * each member (its addresses, opaque to Raft).
 */
export interface ConfState {
  /** The voting members. */
  voters: NodeId[];
  /** Members that receive the log and snapshots but neither vote nor count for a quorum. */
  learners: NodeId[];
  /** Per-member data for the driver (for raftkv: the member's URLs as JSON), by node id. */
  info: Record<NodeId, string>;
}

/**
 * Whether a configuration (or a snapshot's: its learners may be absent) lists `id` as a voter or
 * a learner.
 */
export function confLists(
  conf: { voters: readonly NodeId[]; learners?: readonly NodeId[] },
  id: NodeId,
): boolean {
  return conf.voters.includes(id) || (conf.learners?.includes(id) ?? false);
}

/** One single-server membership change, as a leader proposes it. */
export interface ConfChange {
  /** Add a learner, promote a learner to voter, or remove a voter or learner. */
  op: "add-learner" | "promote" | "remove";
  /** The member concerned. */
  node: NodeId;
  /** For `add-learner`: the member's data kept in {@linkcode ConfState.info}. */
  info?: string;
}

const _confEncoder = new TextEncoder();
const _confDecoder = new TextDecoder("utf-8", { fatal: true });

/** Encodes a configuration as the data of a {@linkcode EntryType.ConfChange} entry. */
export function encodeConfState(c: ConfState): Uint8Array {
  return _confEncoder.encode(
    JSON.stringify({ voters: c.voters, learners: c.learners, info: c.info }),
  );
}

/**
 * Decodes the data of a {@linkcode EntryType.ConfChange} entry.
 *
 * @throws {RangeError} If the bytes are not such a configuration (at least one voter, ids
 *   non-empty strings listed once, info a map of strings).
 */
export function decodeConfState(data: Uint8Array): ConfState {
  let v: unknown;
  try {
    v = JSON.parse(_confDecoder.decode(data));
  } catch (err) {
    throw new RangeError(`configuration entry is not JSON: ${(err as Error).message}`);
  }
  const o = v as { voters?: unknown; learners?: unknown; info?: unknown };
  if (typeof v !== "object" || v === null) throw new RangeError("configuration is not an object");
  const ids = (x: unknown, what: string): string[] => {
    if (!Array.isArray(x) || x.some((s) => typeof s !== "string" || s === "")) {
      throw new RangeError(`configuration ${what} must be a list of node ids`);
    }
    return x as string[];
  };
  const voters = ids(o.voters, "voters");
  const learners = ids(o.learners ?? [], "learners");
  if (voters.length === 0) throw new RangeError("configuration has no voter");
  const all = new Set([...voters, ...learners]);
  if (all.size !== voters.length + learners.length) {
    throw new RangeError("configuration lists a node twice");
  }
  const info: Record<string, string> = {};
  if (o.info !== undefined) {
    if (typeof o.info !== "object" || o.info === null || Array.isArray(o.info)) {
      throw new RangeError("configuration info must be an object");
    }
    for (const [k, s] of Object.entries(o.info)) {
      if (typeof s !== "string") throw new RangeError(`configuration info of "${k}" is not text`);
      info[k] = s;
    }
  }
  return { voters, learners, info };
}

/** One log entry. Invariant: `index >= 1`, `term >= 1`. */
export interface Entry {
  /** The term of the leader that created the entry. */
  term: number;
  /** The entry's position in the log, starting at 1. */
  index: number;
  /** What the entry carries. */
  type: EntryType;
  /** The command bytes (empty for {@linkcode EntryType.Noop}). */
  data: Uint8Array;
}

/** The part of Raft's state that must survive a crash before dependent messages are sent. */
export interface HardState {
  /** The latest term this node has seen. */
  term: number;
  /** Whom this node voted for in `term`, or {@linkcode NONE}. */
  vote: NodeId;
  /**
   * The highest index known committed. Persisting it is optional (it is re-learned from the
   * leader), but it must never be persisted ahead of what is durable in the log.
   */
  commit: number;
}

/**
 * The `context` of a {@linkcode MessageType.Vote} sent by a candidate that campaigns because its
 * leader told it to ({@linkcode MessageType.TimeoutNow}, a leader transfer): voters grant it even
 * while they still hear from that leader (the CheckQuorum lease guard), since the leader asked for
 * it. Any other vote request carries 0.
 */
export const CAMPAIGN_TRANSFER = 1;

/** Describes the state a snapshot captures. */
export interface SnapshotMeta {
  /** The index of the last entry the snapshot includes. */
  index: number;
  /** The term of that entry. */
  term: number;
  /** The voting members of the cluster at that point. */
  voters: NodeId[];
  /** The learners at that point (absent in snapshots taken before learners existed: none). */
  learners?: NodeId[];
  /** The driver's per-member data at that point (see {@linkcode ConfState.info}); absent: none. */
  info?: Record<NodeId, string>;
}

/** Every kind of message peers exchange. Values are part of the wire format: never renumber. */
export enum MessageType {
  /** Candidate asks for a vote (after a successful pre-vote round). */
  Vote = 1,
  /** Answer to {@linkcode MessageType.Vote}; `reject` says whether it was refused. */
  VoteResp = 2,
  /** Would-be candidate asks whether it could win, without raising anyone's term. */
  PreVote = 3,
  /** Answer to {@linkcode MessageType.PreVote}. */
  PreVoteResp = 4,
  /** Leader replicates entries (possibly none) after `(logTerm, index)`. */
  App = 5,
  /** Follower's answer to {@linkcode MessageType.App}. */
  AppResp = 6,
  /** Leader's heartbeat, carrying its commit index (capped by the follower's match). */
  Heartbeat = 7,
  /** Follower's answer to {@linkcode MessageType.Heartbeat}. */
  HeartbeatResp = 8,
  /** Leader tells a follower to install a snapshot; the data travels beside the message. */
  Snap = 9,
  /** Leader tells a follower whose log is up to date to start an election now. */
  TimeoutNow = 10,
  /**
   * Follower asks the leader for a read index (ReadIndex served on the follower); `context`
   * identifies the request and comes back in the answer.
   */
  ReadIndex = 11,
  /**
   * Leader's answer to {@linkcode MessageType.ReadIndex} once it confirmed it still leads:
   * `index` is its commit index when the request arrived, `context` the request's.
   */
  ReadIndexResp = 12,
}

/**
 * A peer message. Which fields are meaningful depends on {@linkcode MessageType}; the others are 0
 * / empty. One flat shape keeps the codec and the simulator simple.
 */
export interface Message {
  /** What kind of message it is; it decides which other fields mean something. */
  type: MessageType;
  /** The sender. */
  from: NodeId;
  /** The addressee. */
  to: NodeId;
  /** The sender's term (for PreVote: the term it would campaign in). */
  term: number;
  /**
   * App: the term of the entry at `index` (the log-matching check). Vote/PreVote: the term of the
   * candidate's last entry.
   */
  logTerm: number;
  /**
   * App: the index just before `entries`. Vote/PreVote: the candidate's last index. AppResp: the
   * last index the follower now matches (accept) or the rejected index (reject). HeartbeatResp:
   * the follower's last index.
   */
  index: number;
  /** App: the entries to append after `index`. */
  entries: Entry[];
  /** App/Heartbeat: the leader's commit index (for Heartbeat capped by the follower's match). */
  commit: number;
  /**
   * Responses: true if the request was refused. HeartbeatResp: true if the follower's disk is full
   * (it appends nothing until space is freed; the core ignores it, the driver tells its leader).
   */
  reject: boolean;
  /** AppResp on reject: the follower's last index, a hint where the leader should probe next. */
  rejectHint: number;
  /**
   * Heartbeat/HeartbeatResp: the read-index round this heartbeat confirms (0 = none).
   * ReadIndex/ReadIndexResp: the follower's request id. Vote:
   * {@linkcode CAMPAIGN_TRANSFER} for a campaign a leader transfer started, else 0.
   */
  context: number;
  /** Snap: what the snapshot covers. The bytes are streamed by the transport, not carried here. */
  snapshot: SnapshotMeta | null;
}

/** A read the leader has confirmed: reads issued with `id` may be served once `index` is applied. */
export interface ReadState {
  /** The identifier given to {@linkcode RaftCore.readIndex}. */
  id: number;
  /** The commit index that was current when the read was requested. */
  index: number;
}

/** What the core knows about leadership, for status pages and client redirection. */
export interface SoftState {
  /** The known leader, or {@linkcode NONE}. */
  leader: NodeId;
  /** This node's role. */
  role: Role;
}

/** The roles a node can take (a learner or a removed node stays a follower). */
export type Role = "follower" | "pre-candidate" | "candidate" | "leader";

/**
 * The work the core asks its driver to do. The driver must:
 * 1. send {@linkcode Ready.messages} at once (they never depend on unsynced local state);
 * 2. durably write {@linkcode Ready.snapshot} (if any), then {@linkcode Ready.entries} and
 *    {@linkcode Ready.hardState} (if any), in that order, and sync them;
 * 3. only then send {@linkcode Ready.persistedMessages} and report the write with
 *    {@linkcode RaftCore.persisted};
 * 4. apply {@linkcode Ready.committedEntries} in order (they are always already durable locally);
 * 5. write Readies in the order it took them. Taking a Ready marks its contents handed out, so a
 *    driver may take the next one while this one's write is in flight (that is how proposals
 *    arriving during a sync join the next write).
 */
export interface Ready {
  /** Changed leader or role since the last Ready, or null. */
  softState: SoftState | null;
  /** Hard state to persist (term or vote changed), or null. */
  hardState: HardState | null;
  /**
   * Entries to append to the log. The first may have an index at or below the last one written:
   * the log is then truncated there first (a follower resolving a conflict).
   */
  entries: Entry[];
  /** A snapshot received from the leader, to install before anything else, or null. */
  snapshot: SnapshotMeta | null;
  /** Messages safe to send now (the leader's appends and heartbeats). */
  messages: Message[];
  /** Messages to send only after this Ready's entries and hard state are durable. */
  persistedMessages: Message[];
  /** Committed entries to apply to the state machine, in order. */
  committedEntries: Entry[];
  /** Reads that became safe to serve once their index is applied. */
  readStates: ReadState[];
}

/**
 * Builds a message of `type` to `to`: every field not given is zero, empty or null (the flat
 * message shape has fields most types leave unused).
 */
export function message(fields: Partial<Message> & Pick<Message, "type" | "to">): Message {
  // Every field named, in one order: every message has the same shape, which keeps the code
  // that reads messages (the codec above all) monomorphic.
  return {
    type: fields.type,
    from: fields.from ?? NONE,
    to: fields.to,
    term: fields.term ?? 0,
    logTerm: fields.logTerm ?? 0,
    index: fields.index ?? 0,
    entries: fields.entries ?? [],
    commit: fields.commit ?? 0,
    reject: fields.reject ?? false,
    rejectHint: fields.rejectHint ?? 0,
    context: fields.context ?? 0,
    snapshot: fields.snapshot ?? null,
  };
}
