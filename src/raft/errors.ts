/**
 * Errors the Raft core raises.
 *
 * @module
 */

import type { NodeId } from "./types.ts";

/** Thrown when a request that only a leader can serve reaches another node. */
export class NotLeaderError extends Error {
  /** The leader this node knows of, or "" if none. */
  readonly leader: NodeId;

  /** Creates the error; `leader` is a hint for redirection ("" when unknown). */
  constructor(leader: NodeId, message?: string) {
    super(message ?? (leader ? `not the leader; the leader is "${leader}"` : "no leader known"));
    this.name = "NotLeaderError";
    this.leader = leader;
  }
}

/**
 * Thrown when a Raft invariant is found broken. It is never caught inside the core: a node that
 * sees one must stop rather than continue with state it cannot trust.
 */
export class RaftInvariantError extends Error {
  /** Creates the error; the message carries the exact values involved. */
  constructor(message: string) {
    super(message);
    this.name = "RaftInvariantError";
  }
}

/**
 * Thrown by a leader that is handing its leadership over (`RaftCore.transferLeadership`):
 * it takes no proposal meanwhile, and no second transfer to another node.
 */
export class LeaderTransferError extends Error {
  /** The node leadership is being transferred to. */
  readonly transferee: NodeId;

  /** Creates the error for a transfer to `transferee` in progress. */
  constructor(transferee: NodeId, message?: string) {
    super(message ?? `leadership is being transferred to "${transferee}"`);
    this.name = "LeaderTransferError";
    this.transferee = transferee;
  }
}

/** Why a membership change was refused (see `RaftCore.proposeConfChange`). */
export type ConfChangeRefusal =
  | "in-flight"
  | "not-ready"
  | "exists"
  | "unknown"
  | "not-learner"
  | "last-voter";

/** Thrown by a leader that refuses a membership change; `code` says why. */
export class ConfChangeError extends Error {
  /** The reason, for callers that map it to an answer (409 for all but `unknown`). */
  readonly code: ConfChangeRefusal;

  /** Creates the error. */
  constructor(code: ConfChangeRefusal, message: string) {
    super(message);
    this.name = "ConfChangeError";
    this.code = code;
  }
}
