/**
 * Validation of peer messages at the edge, before they reach the core or the disk: the one place
 * that decides whether a batch received from the network is well-formed Raft traffic.
 *
 * The codec already guarantees the shape (known types, non-negative safe integers, valid UTF-8).
 * This module checks what the codec cannot: who may send, to whom, which message types travel on
 * which endpoint, bounds on every term and index ({@linkcode MAX_TERM}, {@linkcode MAX_INDEX}),
 * which fields each message type may set (the others must be zero, empty or null, as the core
 * sends them), that an append's entries follow its index with sane terms, that each command
 * entry decodes, and that snapshot metadata is sane. Checks that need the node's state (the
 * commit index, the current leader) are the core's, in `RaftCore.refusal`.
 *
 * It is pure: no IO, no logging. The transport turns a {@linkcode PeerRefusal} into an HTTP error
 * and a log line.
 *
 * What it cannot do: tell a real member from someone claiming a member's id. Until peers
 * authenticate (TLS), a forged message with a member's id and sane fields is accepted.
 *
 * @module
 */

import {
  CAMPAIGN_TRANSFER,
  decodeConfState,
  type Entry,
  EntryType,
  MAX_INDEX,
  MAX_TERM,
  type Message,
  MessageType,
  type NodeId,
  type SnapshotMeta,
} from "./types.ts";

/** Where a batch arrived: `messages` (`/raft/messages`) or `snapshot` (`/raft/snapshot`). */
export type PeerEndpoint = "messages" | "snapshot";

/**
 * Why a batch was refused: the sender (or a message's `from`) is not another member, a message is
 * addressed to another node, or something else is wrong with a message.
 */
export type RefusalKind = "not-member" | "misaddressed" | "invalid";

/** A refused batch: the kind (which the transport maps to an HTTP status) and the reason. */
export interface PeerRefusal {
  /** What kind of problem it is. */
  kind: RefusalKind;
  /** What is wrong, quoting the offending value. */
  reason: string;
}

/** Options of {@linkcode PeerValidator}. */
export interface PeerValidatorOptions {
  /** This node's id: every message must be addressed to it. */
  self: NodeId;
  /** Every member of the cluster, this node included; only the others may send. */
  members: readonly NodeId[];
  /**
   * Checks the data of a `Normal` entry (a state machine command) and throws if it is malformed;
   * a bad entry refuses the whole batch. Default: any data accepted.
   */
  checkEntryData?: (data: Uint8Array) => unknown;
}

/** The fields that may be non-zero, per message type (as the core fills them in). */
type _Field =
  | "logTerm"
  | "index"
  | "entries"
  | "commit"
  | "reject"
  | "rejectHint"
  | "context"
  | "snapshot";

const _FIELDS: Record<MessageType, ReadonlySet<_Field>> = {
  [MessageType.Vote]: new Set(["logTerm", "index", "context"]),
  [MessageType.VoteResp]: new Set(["reject"]),
  [MessageType.PreVote]: new Set(["logTerm", "index"]),
  [MessageType.PreVoteResp]: new Set(["reject"]),
  [MessageType.App]: new Set(["logTerm", "index", "entries", "commit"]),
  [MessageType.AppResp]: new Set(["logTerm", "index", "reject", "rejectHint"]),
  [MessageType.Heartbeat]: new Set(["commit", "context"]),
  [MessageType.HeartbeatResp]: new Set(["index", "reject", "context"]),
  [MessageType.Snap]: new Set(["snapshot"]),
  [MessageType.TimeoutNow]: new Set([]),
  [MessageType.ReadIndex]: new Set(["context"]),
  [MessageType.ReadIndexResp]: new Set(["index", "context"]),
};

/** Requests are sent by a node in a term it started or joined, so never in term 0. */
const _NEEDS_TERM: ReadonlySet<MessageType> = new Set([
  MessageType.Vote,
  MessageType.PreVote,
  MessageType.App,
  MessageType.Heartbeat,
  MessageType.Snap,
  MessageType.TimeoutNow,
  MessageType.ReadIndex,
  MessageType.ReadIndexResp,
]);

/** The longest id quoted in a reason: a hostile id can be 64 KiB long. */
const _MAX_QUOTED = 64;

/**
 * Validates batches received from peers (see the module doc).
 *
 * @example
 * ```ts
 * const validator = new PeerValidator({ self: "n2", members: ["n1", "n2", "n3"] });
 * validator.checkSender("evil"); // { kind: "not-member", reason: 'sender "evil" is not ...' }
 * ```
 */
export class PeerValidator {
  readonly #self: NodeId;
  #members: ReadonlySet<NodeId>;
  /** A node that waits to join has no configuration yet: it takes the first leader's word. */
  #open = false;
  readonly #checkEntryData: ((data: Uint8Array) => unknown) | undefined;

  /**
   * Creates a validator for node `options.self` of `options.members`.
   *
   * @throws {RangeError} if `self` is not among the members.
   */
  constructor(options: PeerValidatorOptions) {
    this.#self = options.self;
    this.#members = new Set(options.members);
    if (!this.#members.has(this.#self)) {
      throw new RangeError(
        `Cannot validate peer messages: node ${_quote(this.#self)} is not among the members ` +
          `${_quoteList(options.members)}`,
      );
    }
    this.#checkEntryData = options.checkEntryData;
  }

  /**
   * Replaces the members messages may come from (the configuration changed), with `self` always
   * among them. With `open`, any sender is taken: a node that waits to join knows no members yet
   * and must hear the leader that adds it.
   */
  setMembers(members: Iterable<NodeId>, open = false): void {
    this.#members = new Set([...members, this.#self]);
    this.#open = open;
  }

  #isMember(id: NodeId): boolean {
    return this.#open || this.#members.has(id);
  }

  /**
   * Checks the sender a request names (its `x-raftkv-from` header) before anything else is done
   * with the request: null if it is another member.
   */
  checkSender(from: string): PeerRefusal | null {
    if (from === this.#self) {
      return _notMember(`sender ${_quote(from)} is this node`);
    }
    if (!this.#isMember(from)) {
      return _notMember(
        `sender ${_quote(from)} is not a member of ${_quoteList([...this.#members])}`,
      );
    }
    return null;
  }

  /**
   * Checks a whole batch that arrived on `endpoint` from `from` (the header): the sender, then
   * every message. Null if all of it may go to the core; otherwise the first problem found (the
   * whole batch is refused).
   */
  checkBatch(
    from: string,
    messages: readonly Message[],
    endpoint: PeerEndpoint,
  ): PeerRefusal | null {
    const sender = this.checkSender(from);
    if (sender !== null) return sender;
    if (endpoint === "snapshot") {
      if (messages.length !== 1 || messages[0]!.type !== MessageType.Snap) {
        return _invalid(
          `a snapshot request must carry exactly one Snap message, got ${messages.length} ` +
            `message(s) of type ${_quoteList(messages.map((m) => _typeName(m.type)))}`,
        );
      }
    }
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!;
      const at = messages.length === 1
        ? `${_typeName(m.type)} message`
        : `message ${i + 1} of ${messages.length} (${_typeName(m.type)})`;
      if (m.from !== from) {
        const problem = `${at} claims sender ${_quote(m.from)} in a request from ${_quote(from)}`;
        return this.#isMember(m.from) && m.from !== this.#self
          ? _invalid(problem)
          : _notMember(problem);
      }
      if (m.to !== this.#self) {
        return {
          kind: "misaddressed",
          reason: `${at} is addressed to ${_quote(m.to)}, not to this node ${_quote(this.#self)}`,
        };
      }
      if (endpoint === "messages" && m.type === MessageType.Snap) {
        return _invalid(`${at}: Snap messages are only accepted with a snapshot upload`);
      }
      const problem = this.#checkMessage(m);
      if (problem !== null) return _invalid(`${at}: ${problem}`);
    }
    return null;
  }

  /** Checks one message's fields; returns what is wrong, or null. */
  #checkMessage(m: Message): string | null {
    const allowed = _FIELDS[m.type as MessageType] as ReadonlySet<_Field> | undefined;
    if (allowed === undefined) return `unknown message type ${_quote(m.type)}`;
    const term = _bounded(m.term, "term", MAX_TERM) ??
      _bounded(m.logTerm, "logTerm", MAX_TERM) ??
      _bounded(m.index, "index", MAX_INDEX) ??
      _bounded(m.commit, "commit", MAX_INDEX) ??
      _bounded(m.rejectHint, "rejectHint", MAX_INDEX) ??
      _bounded(m.context, "context", MAX_INDEX);
    if (term !== null) return term;
    if (_NEEDS_TERM.has(m.type) && m.term < 1) return `term must be at least 1, got ${m.term}`;
    const unused = _unusedFieldSet(m, allowed);
    if (unused !== null) return unused;
    if (m.logTerm > m.term) {
      return `logTerm ${m.logTerm} is above the message term ${m.term}`;
    }
    switch (m.type) {
      case MessageType.App:
        return this.#checkEntries(m);
      case MessageType.AppResp:
        if (m.reject && m.rejectHint > m.index) {
          return `rejectHint ${m.rejectHint} is above the rejected index ${m.index}`;
        }
        if (!m.reject && (m.rejectHint !== 0 || m.logTerm !== 0)) {
          return `an accepting answer must not set rejectHint or logTerm, got ` +
            `rejectHint ${m.rejectHint} and logTerm ${m.logTerm}`;
        }
        return null;
      case MessageType.Snap:
        return this.#checkSnapshot(m.snapshot, m.term);
      case MessageType.Vote:
        if (m.context !== 0 && m.context !== CAMPAIGN_TRANSFER) {
          return `a vote request's context is 0 or ${CAMPAIGN_TRANSFER} (a leader transfer), ` +
            `got ${m.context}`;
        }
        return null;
      default:
        return null;
    }
  }

  /** An append's entries: contiguous after `index`, terms in [logTerm, term] and non-decreasing. */
  #checkEntries(m: Message): string | null {
    let prevTerm = m.logTerm;
    for (let i = 0; i < m.entries.length; i++) {
      const e: Entry = m.entries[i]!;
      const expected = m.index + 1 + i;
      const bad = _bounded(e.index, `entry ${i + 1} index`, MAX_INDEX) ??
        _bounded(e.term, `entry ${e.index} term`, MAX_TERM);
      if (bad !== null) return bad;
      if (e.index !== expected) {
        return `entry ${i + 1} has index ${e.index}, expected ${expected} (entries follow index ` +
          `${m.index} without gaps)`;
      }
      if (e.term < 1) return `entry ${e.index} has term ${e.term}, must be at least 1`;
      if (e.term > m.term) {
        return `entry ${e.index} term ${e.term} is above the message term ${m.term}`;
      }
      if (e.term < prevTerm) {
        return `entry ${e.index} term ${e.term} is below the term ${prevTerm} before it`;
      }
      prevTerm = e.term;
      if (e.type === EntryType.Noop) {
        if (e.data.byteLength !== 0) {
          return `entry ${e.index} is a no-op carrying ${e.data.byteLength} bytes of data`;
        }
      } else if (e.type === EntryType.ConfChange) {
        try {
          decodeConfState(e.data);
        } catch (err) {
          return `entry ${e.index} does not hold a valid configuration: ${(err as Error).message}`;
        }
      } else if (e.type === EntryType.Normal) {
        if (this.#checkEntryData !== undefined) {
          try {
            this.#checkEntryData(e.data);
          } catch (err) {
            return `entry ${e.index} does not hold a valid command: ${
              err instanceof Error ? err.message : String(err)
            }`;
          }
        }
      } else {
        return `entry ${e.index} has unknown type ${_quote(e.type)}`;
      }
    }
    return null;
  }

  /** Snapshot metadata: index and term at least 1, term within the message's, voters members. */
  #checkSnapshot(snap: SnapshotMeta | null, msgTerm: number): string | null {
    if (snap === null) return "it carries no snapshot metadata";
    const bad = _bounded(snap.index, "snapshot index", MAX_INDEX) ??
      _bounded(snap.term, "snapshot term", MAX_TERM);
    if (bad !== null) return bad;
    if (snap.index < 1) return `snapshot index must be at least 1, got ${snap.index}`;
    if (snap.term < 1) return `snapshot term must be at least 1, got ${snap.term}`;
    if (snap.term > msgTerm) {
      return `snapshot term ${snap.term} is above the message term ${msgTerm}`;
    }
    if (snap.voters.length === 0) return "snapshot has no voters";
    const seen = new Set<string>();
    // Members may have joined since this node learned its configuration: any non-empty id goes.
    for (const v of [...snap.voters, ...(snap.learners ?? [])]) {
      if (v === "") return "snapshot lists an empty node id";
      if (seen.has(v)) return `snapshot member ${_quote(v)} is listed twice`;
      seen.add(v);
    }
    return null;
  }
}

/** Null if `value` is an integer in [0, max]; otherwise what is wrong with it. */
function _bounded(value: number, field: string, max: number): string | null {
  if (!Number.isSafeInteger(value) || value < 0) {
    return `${field} must be a non-negative integer, got ${_quote(value)}`;
  }
  if (value > max) return `${field} ${value} is above the limit ${max}`;
  return null;
}

/** Names the first field `m` sets that its type never sets, or null. */
function _unusedFieldSet(m: Message, allowed: ReadonlySet<_Field>): string | null {
  const set: [_Field, boolean, unknown][] = [
    ["logTerm", m.logTerm !== 0, m.logTerm],
    ["index", m.index !== 0, m.index],
    ["entries", m.entries.length !== 0, `${m.entries.length} entries`],
    ["commit", m.commit !== 0, m.commit],
    ["reject", m.reject, m.reject],
    ["rejectHint", m.rejectHint !== 0, m.rejectHint],
    ["context", m.context !== 0, m.context],
    ["snapshot", m.snapshot !== null, "snapshot metadata"],
  ];
  for (const [field, isSet, value] of set) {
    if (isSet && !allowed.has(field)) {
      return `${field} is not used by this message type but was set to ${_quote(value)}`;
    }
  }
  return null;
}

function _notMember(reason: string): PeerRefusal {
  return { kind: "not-member", reason };
}

function _invalid(reason: string): PeerRefusal {
  return { kind: "invalid", reason };
}

function _typeName(type: number): string {
  return MessageType[type] ?? `type ${type}`;
}

/** Quotes a value for a reason, shortening long strings. */
function _quote(value: unknown): string {
  if (typeof value !== "string") return `"${String(value)}"`;
  const short = value.length > _MAX_QUOTED ? `${value.slice(0, _MAX_QUOTED)}...` : value;
  return JSON.stringify(short);
}

function _quoteList(values: readonly unknown[]): string {
  const shown = values.slice(0, 8).map(_quote).join(", ");
  return `[${shown}${values.length > 8 ? `, ... (${values.length} in all)` : ""}]`;
}
