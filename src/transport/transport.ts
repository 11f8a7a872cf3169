/**
 * How a node exchanges Raft messages and snapshots with its peers. The Raft core never sees a
 * transport: its driver hands the core's messages to {@linkcode Transport.send} and feeds what
 * arrives through {@linkcode TransportHandlers} back into the core.
 *
 * Delivery is best effort: messages may be lost, duplicated or (rarely) reordered, which Raft
 * tolerates. Implementations keep each peer independent, so a slow or dead peer never delays the
 * others.
 *
 * @module
 */

import type { Message, NodeId } from "../raft/types.ts";

/** Sends this node's messages and snapshots to its peers. */
export interface Transport {
  /** Queues messages for their `to` peers; never blocks and never throws for a slow or dead peer. */
  send(messages: Message[]): void;
  /**
   * Replaces the addresses of the peers to send to, when the cluster's configuration changes
   * (a transport whose peers need no address, such as an in-memory one, may leave it out).
   */
  setPeers?(peers: readonly { id: NodeId; rpcUrl: string }[]): void;
  /**
   * Called when the node's term rises to `term`: a transport that queues messages may drop those
   * of older terms still waiting, and any sent later (their receivers ignore them once they know
   * the newer term, and a peer that was away would take a deposed leader's appends as news).
   */
  dropOlderThan?(term: number): void;
  /**
   * Streams a snapshot to a peer: `msg` is the {@linkcode MessageType.Snap} message, `open()`
   * returns the snapshot bytes as a stream (it may be called again to retry). Resolves when the
   * peer accepted it; rejects on failure, with a {@linkcode PeerNoSpaceError} when the peer's
   * disk had no room for it (its `onSnapshot` threw one).
   */
  sendSnapshot(msg: Message, open: () => Promise<ReadableStream<Uint8Array>>): Promise<void>;
  /**
   * Asks `peer` for its committed configuration ({@linkcode TransportHandlers.committedMembers};
   * the HTTP transport: `POST <rpcUrl>/raft/members`). Resolves null when the peer cannot be
   * reached or refuses; a "removed" answer also calls {@linkcode TransportHandlers.onRemoved}.
   * Optional: a transport without it never asks.
   */
  queryMembers?(peer: NodeId): Promise<CommittedMembers | null>;
  /** Stops sending: drops what is queued, aborts what is in flight and releases every resource. */
  close(): Promise<void>;
}

/** What a transport calls when something arrives from (or fails to reach) a peer. */
export interface TransportHandlers {
  /**
   * Called with every batch received from a peer. May throw {@linkcode PeerRefusedError} to
   * refuse (part of) the batch.
   */
  onMessages(messages: Message[]): void;
  /**
   * Called when a peer streams a snapshot; resolve once the bytes are durably stored (the sender
   * waits for it). Rejects with {@linkcode PeerRefusedError} to refuse it.
   */
  onSnapshot(msg: Message, body: ReadableStream<Uint8Array>): Promise<void>;
  /**
   * Why the snapshot upload `msg` announces is refused before its body is read, or null: a Snap
   * of an earlier term than this node's, or of its term from another node than the leader it
   * follows (only a leader sends snapshots). The HTTP peer handler answers `409`, so that such an
   * upload never holds its one upload slot (the leader's transfer would wait behind it) nor
   * reaches the disk.
   */
  snapshotRefusal?(msg: Message): string | null;
  /** Called when a peer could not be reached after the retries (the Raft core may then slow down probing). */
  onUnreachable?(peer: NodeId): void;
  /**
   * Whether what `from` sends is to be answered "you were removed" instead of taken: this node's
   * commit index when the configuration in force there and the newest one both leave `from` out,
   * else 0 (see `RaftCore.removedAt`); 0 also when that index is below `since`, the index the
   * sender says it is a member by (it may be a member by a configuration this node has not seen).
   * The HTTP peer handler answers `410` when it is not 0 (`since` is the sender's
   * {@linkcode TransportHandlers.memberSince}, sent with its requests).
   */
  removedAt?(from: NodeId, since: number): number;
  /**
   * The index of the configuration by which this node counts itself a member (its newest
   * configuration entry, or its snapshot's index), 0 when it does not (joining or removed). Sent
   * with every peer request; a peer whose committed configuration leaves this node out at a higher
   * index answers "removed".
   */
  memberSince?(): number;
  /**
   * Called when `peer` answered that its committed configuration at `index` leaves this node out
   * (the HTTP transport: a `410` with code `removed`). What was sent to it is dropped.
   */
  onRemoved?(peer: NodeId, index: number): void;
  /**
   * The id of the cluster this node belongs to, sent with every peer request (the HTTP
   * transport's `x-raftkv-cluster`); undefined while it knows none.
   */
  clusterId?(): string | undefined;
  /**
   * Why a request from a peer that says it belongs to cluster `claimed` (undefined: it names
   * none) is refused, or null if it is taken; checked before anything else about the request. A
   * node that knows no cluster yet may learn it here (see `RaftNode`).
   */
  checkCluster?(claimed: string | undefined): string | null;
  /**
   * This node's committed configuration, for a member that asks
   * ({@linkcode Transport.queryMembers}); null while it has none (it waits to join).
   */
  committedMembers?(): CommittedMembers | null;
  /**
   * Called when a request was refused because its sender is not a member, with the index the
   * sender says it counts itself a member by (its `x-raftkv-member-since`, 0 when absent): a
   * sender that claims a configuration newer than any this node holds may be a member added while
   * this node was away, and this node may then ask its peers (rate-limited).
   */
  onUnknownSender?(from: NodeId, memberSince: number): void;
}

/** A member as {@linkcode CommittedMembers} lists it (the API's member rows). */
export interface MemberRecord {
  /** Its node id. */
  node_id: NodeId;
  /** Where its peer server listens. */
  rpc_url: string;
  /** Where its REST API listens. */
  api_url: string;
  /** Whether it votes. */
  role: "voter" | "learner";
}

/**
 * A node's committed configuration: the configuration in force at its commit index, and the index
 * of the entry (or snapshot) it comes from.
 */
export interface CommittedMembers {
  /** The index of the configuration entry, or of the snapshot it comes from (>= 1). */
  index: number;
  /** The node's commit index (>= `index`): its configuration is the one in force there. */
  commit: number;
  /** Every member of it. */
  members: MemberRecord[];
}

/**
 * Thrown by a {@linkcode TransportHandlers} method to refuse what a peer sent, as opposed to
 * failing: the message was understood but no correct peer would send it (the Raft core refused
 * it). The HTTP peer handler answers `409` with the error's message.
 */
export class PeerRefusedError extends Error {
  /** Creates the error; `message` says what was refused and why, quoting the values. */
  constructor(message: string) {
    super(message);
    this.name = "PeerRefusedError";
  }
}

/**
 * Thrown by {@linkcode TransportHandlers.onSnapshot} when this node's disk has no room for the
 * snapshot: the peer is not at fault, and sending it again at once will not help. The HTTP peer
 * handler answers `507` with the error's message (which must not name the node's files).
 */
export class PeerNoSpaceError extends Error {
  /** Creates the error; `message` says what did not fit. */
  constructor(message: string) {
    super(message);
    this.name = "PeerNoSpaceError";
  }
}

/**
 * Where a transport reports what it drops or retries. `console` fits; the transports default to a
 * logger that discards everything.
 */
export interface TransportLogger {
  /** Routine detail: a failed attempt that will be retried. */
  debug(message: string, ...data: unknown[]): void;
  /** Something was dropped or refused. */
  warn(message: string, ...data: unknown[]): void;
}

/** A {@linkcode TransportLogger} that discards everything. */
export const SILENT_LOGGER: TransportLogger = {
  debug() {},
  warn() {},
};

/** Counters for one peer, for status pages and tests. */
export interface PeerStats {
  /** Messages waiting to be sent. */
  queued: number;
  /** Requests (batches) in flight. */
  inflight: number;
  /** Messages the peer acknowledged. */
  sent: number;
  /** Messages dropped because the queue was full. */
  dropped: number;
  /** Messages dropped because this node moved to a newer term before they were sent. */
  stale: number;
  /** Messages dropped because their batch failed (peer unreachable or request refused). */
  failed: number;
}
