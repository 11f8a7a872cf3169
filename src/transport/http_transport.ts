/**
 * The real {@linkcode Transport}: Raft messages and snapshots over HTTP/2, in cleartext (h2c) or
 * over mutual TLS.
 *
 * ## Client ({@linkcode HttpTransport})
 *
 * One {@linkcode H2Client} (`node:http2`; for `http:` peers HTTP/2 with prior knowledge: h2c, no
 * upgrade; for `https:` peers TLS with this node's certificate, accepting only a server
 * certificate from the cluster CA whose subject CN is the peer's node id) serves every peer, so
 * each peer gets one keep-alive connection that multiplexes all requests. (Not `fetch`: it refuses
 * the Fetch Standard's "bad ports", which include the default peer ports 6666-6668.) Each peer has
 * its own bounded queue and one long-lived message stream (`POST /raft/stream`) on that
 * connection: at the end of each event-loop turn that queued something, the sender takes everything
 * queued (up to `maxBatchBytes`), merges adjacent appends that continue each other
 * ({@linkcode coalesceMessages}), and writes it as one frame, with no answer to wait for (when
 * all that was queued is appends without entries, news of a commit, at the end of the next turn
 * instead, so that the answers to the clients whose writes that commit acknowledged leave first).
 * When the stream's buffer is full (the peer or the network does not keep up), messages wait in
 * the queue until it drains; a buffer that does not drain within four `rpcTimeoutMs` counts as a
 * broken stream. Peers never wait for each other. A stream that breaks (what was written to it may be lost) is reopened
 * on the next send; opening one that fails to connect, times out or is refused is retried with
 * exponential backoff, and when the retries are spent what is queued is dropped and
 * {@linkcode TransportHandlers.onUnreachable} is called. A full queue drops its oldest `App`/`Heartbeat`
 * messages first (counted in `dropped`): Raft recovers from lost messages, and these are the ones
 * the leader resends anyway. When the node's term rises ({@linkcode HttpTransport.dropOlderThan}),
 * whatever it queued in an older term is dropped (counted in `stale`): a leader that stepped down
 * no longer sends a peer that was away the appends of its old term when that peer comes back.
 *
 * A peer that answers the stream with `404` (a version before the stream) is sent one request per
 * batch instead (`POST /raft/messages`, up to `maxInflightPerPeer` in flight, each retried on
 * connection failures and timeouts as above), and the stream is tried again after a minute. The
 * option `stream: false` always sends requests.
 *
 * ## Server ({@linkcode createPeerHandler})
 *
 * A plain `(req: Request, info?: PeerRequestInfo) => Promise<Response>`: mounted in `Deno.serve`
 * for h2c (`info.peer` null: the sender is who the request says it is), or behind
 * {@linkcode serveMutualTls} (`info.peer` is the node id the client certificate proves, and a
 * request claiming anyone else is refused). Batches from one sender
 * are handed to {@linkcode TransportHandlers.onMessages} in the order their requests arrived, even
 * when pipelined requests finish reading their bodies out of order (a batch waits at most
 * `maxOrderWaitMs` for an earlier one). With HTTP/2, requests from one client arrive in the order
 * they were sent, so one sender's messages are normally delivered in order; a retried batch can
 * still arrive after later ones (Raft tolerates reordering).
 *
 * ## Wire protocol
 *
 * - `POST <rpcUrl>/raft/stream`: the body is a sequence of frames, each a 4-byte big-endian length
 *   and that many bytes of {@linkcode encodeMessages} output (at most `maxBodyBytes` each), for as
 *   long as the sender keeps it open. The receiver checks the sender as for a request and answers
 *   `200` at once, before reading anything; it ends its empty answer when it gives the stream up
 *   (the sender then closes its side). Never carries `Snap`.
 * - `POST <rpcUrl>/raft/messages`: body = {@linkcode encodeMessages} bytes
 *   (`Content-Type: application/octet-stream`), at most `maxBodyBytes`. Replies `204` once the
 *   batch was handed over. Never carries `Snap`.
 * - `POST <rpcUrl>/raft/snapshot`: header `x-raftkv-message` = the `Snap` message encoded as a
 *   one-message batch, in unpadded base64url; the body streams the snapshot bytes (at most
 *   `maxSnapshotBytes`, with no pause longer than `snapshotIdleTimeoutMs` and done within
 *   `snapshotReceiveTimeoutMs`). One upload at a time. Replies `204` once
 *   {@linkcode TransportHandlers.onSnapshot} resolved (the snapshot is stored).
 * - `POST <rpcUrl>/raft/members` ({@linkcode HttpTransport.queryMembers}): no body; replies `200`
 *   with JSON `{"index","commit","members":[{"node_id","rpc_url","api_url","role"}]}`, the
 *   receiver's committed configuration ({@linkcode TransportHandlers.committedMembers}: the one in
 *   force at its commit index, the index of the entry or snapshot it comes from, and that commit
 *   index), or `503` while it has none. A node that hears from no leader asks its peers this, to
 *   learn of members added (or of its own removal) while it was away.
 * - Every request carries `x-raftkv-from: <sender id>` and, once the sender knows its cluster,
 *   `x-raftkv-cluster: <cluster id>` ({@linkcode TransportHandlers.clusterId}); message
 *   requests, streams and members queries also `x-raftkv-member-since` while the sender counts
 *   itself a member ({@linkcode TransportHandlers.memberSince}).
 * - `<rpcUrl>/forward/...`: a client request a follower forwards to the leader, handed as it is
 *   to the `forward` option (the API's, wired by `main.ts`) once the cluster check (1. below)
 *   passed; none of the other checks below applied.
 *
 * ## What the receiver checks (hostile or buggy peers)
 *
 * No single request may hurt the node. In this order, each failing check refuses the whole
 * request, logs a warning (at most one per status every `refusalLogIntervalMs`, with a count of
 * those left out), tells `onRefusal` why (a {@linkcode PeerRefusalReason}: every refusal, logged or
 * not, counts once in `raftkv_peer_refusals_total`) and hands nothing on, so nothing reaches the
 * Raft core or the disk:
 *
 * 1. the cluster: {@linkcode TransportHandlers.checkCluster} with the `x-raftkv-cluster` header
 *    (`403` for a node of another cluster);
 * 2. a sender that a committed membership change removed (outside both the committed and the
 *    newest configuration: {@linkcode TransportHandlers.removedAt}, at an index at or above the one
 *    its `x-raftkv-member-since` header says it counts itself a member by) gets `410`
 *    `{"error","code":"removed","index"}` with the index also in the `x-raftkv-removed-at`
 *    header, so that a member that was down while its removal committed learns it; the sending
 *    transport drops what it queued for that peer and calls {@linkcode TransportHandlers.onRemoved};
 * 3. the sender: `x-raftkv-from` must name another member (`403`), checked before anything is
 *    read or stored, so strangers cannot grow the per-sender state; with mutual TLS, the
 *    identity the connection proved must be another member and `x-raftkv-from` must name it
 *    (`403`). A refused non-member is reported to {@linkcode TransportHandlers.onUnknownSender}
 *    with the index its `x-raftkv-member-since` claims (the node may then ask its peers, rate
 *    limited). A members query that passes this check is answered here;
 * 4. per sender, at most `maxRequestsPerSender` message requests in progress (`429`); one
 *    snapshot upload at a time (`429`); at most `maxStreamsPerSender` message streams (one more
 *    ends the idlest if it has been idle for `streamIdleMs`, a stream whose connection died
 *    silently, else the newest: a stranger's streams under a member's name never end the
 *    member's busy one);
 * 5. the body size (`413`) and the codec (`400`);
 * 6. every message, by the `validator` (`src/raft/validate.ts`): its `from` is the header's
 *    sender (`403` when that claimed sender is not a member or, with mutual TLS, is not the
 *    proven identity, else `400`), its `to` is this node
 *    (`421`), its type belongs on the path, every term and index is within bounds, only the
 *    fields its type uses are set, an append's entries follow its index with sane terms and
 *    every command decodes, a snapshot's metadata is sane (`400`);
 * 7. the Raft core's own refusals of messages no correct peer sends, such as an append that
 *    disagrees with committed entries (`409`; the batch's earlier messages were taken).
 *
 * A message stream is checked the same way: 1 to 4 before it is accepted (a refused one gets the
 * status and is never read); then 5 and 6 for every frame. A frame over the size limit or one the
 * codec rejects, or a message claiming another sender than the proven identity, ends the stream
 * (logged and counted with the status a request would have got); a batch that fails any other
 * check of 6 or 7 is dropped, logged and counted, and the stream goes on.
 *
 * A snapshot upload that breaks its size limit gets `413`, its time limits `408`, and one this
 * node's disk has no room for `507` ({@linkcode PeerNoSpaceError}); either way the partial file is
 * removed. A request whose body breaks off gets `400`. Other errors reply
 * `404` unknown path, `405` wrong method, `500` this node failed (its disk, say): the details,
 * which may name the node's files, go to its log and never to the peer. Every error is JSON
 * `{"error": "..."}`.
 *
 * Authenticity: only with mutual TLS. Over h2c, a forged message that claims a member's id and
 * carries sane fields is accepted.
 *
 * @module
 */

import type http2 from "node:http2";
import { setImmediate } from "node:timers";
import { H2Client } from "./h2_client.ts";
import type { PeerRequestInfo } from "./tls_server.ts";
import { type Message, MessageType, type NodeId } from "../raft/types.ts";
import { decodeMessages, encodedMessageSize, encodeMessageFrame, encodeMessages } from "./codec.ts";
import { coalesceMessages } from "./coalesce.ts";
import { readBodyWithin } from "../util/body.ts";
import type { PeerRefusal, PeerValidator, RefusalKind } from "../raft/validate.ts";
import {
  type CommittedMembers,
  type MemberRecord,
  PeerNoSpaceError,
  PeerRefusedError,
  type PeerStats,
  SILENT_LOGGER,
  type Transport,
  type TransportHandlers,
  type TransportLogger,
} from "./transport.ts";
import { nonNegativeInt as _nonNegativeInt, positiveInt as _positiveInt } from "../util/options.ts";
import {
  exponentialBuckets,
  type GaugeVec,
  type Histogram,
  type HistogramVec,
  MetricsRegistry,
} from "../util/metrics.ts";

/** The path batches of messages are posted to, below a peer's `rpcUrl`. */
export const MESSAGES_PATH = "/raft/messages";
/**
 * The path of the long-lived message stream, below a peer's `rpcUrl`: the request body carries
 * frames (see {@linkcode STREAM_PATH} in the module doc), the response stays open and empty.
 */
export const STREAM_PATH = "/raft/stream";
/**
 * The path a member asks a peer for its committed configuration at, below the peer's `rpcUrl`
 * ({@linkcode HttpTransport.queryMembers}).
 */
export const MEMBERS_PATH = "/raft/members";
/** The path snapshots are streamed to, below a peer's `rpcUrl`. */
export const SNAPSHOT_PATH = "/raft/snapshot";
/** The header naming the sending node. */
export const FROM_HEADER = "x-raftkv-from";
/** The header naming the cluster (checked by the receiver when it is configured with one). */
export const CLUSTER_HEADER = "x-raftkv-cluster";
/**
 * The header in which a sender says by which configuration index it counts itself a member
 * ({@linkcode TransportHandlers.memberSince}); absent when it does not.
 */
export const MEMBER_SINCE_HEADER = "x-raftkv-member-since";
/** The header of a `410` answer: the commit index at which the configuration leaves the sender out. */
export const REMOVED_AT_HEADER = "x-raftkv-removed-at";
/** The header carrying the `Snap` message of a snapshot request (unpadded base64url codec bytes). */
export const MESSAGE_HEADER = "x-raftkv-message";

const _MAX_BACKOFF_MS = 1000;
/** The longest answer to a members query that is read (a configuration of a few thousand members). */
const _MAX_MEMBERS_ANSWER = 1 << 20;

/**
 * Checks an answer to a members query:
 * `{index, commit, members: [{node_id, rpc_url, api_url, role}]}` with `1 <= index <= commit`
 * and string fields; null when anything is off.
 */
export function parseCommittedMembers(value: unknown): CommittedMembers | null {
  if (typeof value !== "object" || value === null) return null;
  const { index, commit, members } = value as Record<string, unknown>;
  if (typeof index !== "number" || !Number.isSafeInteger(index) || index < 1) return null;
  if (typeof commit !== "number" || !Number.isSafeInteger(commit) || commit < index) return null;
  if (!Array.isArray(members) || members.length === 0 || members.length > 10_000) return null;
  const out: MemberRecord[] = [];
  for (const m of members) {
    if (typeof m !== "object" || m === null) return null;
    const { node_id, rpc_url, api_url, role } = m as Record<string, unknown>;
    if (typeof node_id !== "string" || node_id === "" || typeof rpc_url !== "string") return null;
    if (typeof api_url !== "string" || (role !== "voter" && role !== "learner")) return null;
    out.push({ node_id, rpc_url, api_url, role });
  }
  return { index, commit, members: out };
}
/** How long a peer without the message stream (an older version) gets requests before a retry. */
const _LEGACY_RETRY_MS = 60_000;
/** How many `rpcTimeoutMs` a stream's full buffer may take to drain before it counts as broken. */
const _STALL_TIMEOUTS = 4;
/** How often the round-trip time to a peer is measured on its stream (an HTTP/2 PING). */
const _PING_EVERY_MS = 1000;
/** `NGHTTP2_CANCEL`: the RST_STREAM code of a stream given up. */
const _NGHTTP2_CANCEL = 8;

/** A peer and where its peer handler listens. */
export interface PeerAddress {
  /** The peer's node id. */
  id: NodeId;
  /** The base URL of its peer handler, e.g. `http://10.0.0.2:7001` (a path prefix is kept). */
  rpcUrl: string;
}

export type { PeerRequestInfo } from "./tls_server.ts";

/** The PEM texts a node needs for mutual TLS with its peers. */
export interface PeerTlsFiles {
  /** The cluster CA certificate(s): peers' certificates must chain to it. */
  ca: string;
  /** This node's certificate (subject CN = its node id), presented to peers. */
  cert: string;
  /** The private key of `cert`. */
  key: string;
}

/** Options for {@linkcode HttpTransport}. */
export interface HttpTransportOptions {
  /** This node's id, sent as `x-raftkv-from`. */
  self: NodeId;
  /** The peers to send to. An entry for `self` is ignored, so the whole cluster may be passed. */
  peers: PeerAddress[];
  /**
   * For `https:` peers: the cluster CA, and this node's certificate and key to present. A peer's
   * server certificate must chain to the CA, be valid for the host in its `rpcUrl` and name the
   * peer's id as its subject CN. Default: none (`https:` peers are then checked against the
   * system's CAs and host names only, without a client certificate).
   */
  tls?: PeerTlsFiles;
  /** How long one message request may take before it counts as failed. Default: 2000. */
  rpcTimeoutMs?: number;
  /**
   * How long one snapshot request may take, streaming included (not retried on timeout).
   * Default: 600000 (10 minutes).
   */
  snapshotTimeoutMs?: number;
  /**
   * How many times a request that failed to connect (or, for messages, timed out) is retried before
   * the batch is dropped and the peer reported unreachable; 0 tries once. Default: 3.
   */
  maxConnRetryAttempts?: number;
  /** The first retry's delay; each further retry doubles it (capped at 1 s, with jitter). Default: 50. */
  retryBackoffMs?: number;
  /**
   * How many message requests may be in flight to one peer (pipelining). Default: 2: with more,
   * each request carries fewer messages and the HTTP/2 overhead grows (measured with
   * `deno task bench`, 64-connection writes: 1 in flight 9.3k/s but a worse p99, 2 in flight
   * 8.3k/s, 4 in flight 7.3k/s).
   */
  maxInflightPerPeer?: number;
  /** How many messages may wait for one peer before the oldest App/Heartbeat are dropped. Default: 4096. */
  maxQueuedPerPeer?: number;
  /**
   * The most bytes one batch should encode to (a single larger message is still sent alone); keep
   * it below the receiver's `maxBodyBytes`. Default: 8 MiB.
   */
  maxBatchBytes?: number;
  /** Where drops and retries are reported. Default: {@linkcode SILENT_LOGGER}. */
  logger?: TransportLogger;
  /**
   * Whether messages go over one long-lived stream per peer (`POST /raft/stream`, a batch is one
   * frame write and gets no answer) rather than one request per batch (`POST /raft/messages`).
   * A peer that does not know the stream (`404`: an older version) is sent per-batch requests
   * for a minute before the stream is tried again. Default: true.
   */
  stream?: boolean;
  /**
   * Where the transport's metrics are registered: each peer's round-trip time and queue depth.
   * Default: a registry of its own that nothing reads.
   */
  metrics?: MetricsRegistry;
}

/**
 * What a peer handler checks batches with: normally a {@linkcode PeerValidator} built from the
 * cluster's members (see `src/raft/validate.ts`).
 */
export type PeerBatchValidator = Pick<PeerValidator, "checkSender" | "checkBatch">;

/** Options for {@linkcode createPeerHandler}. */
export interface PeerHandlerOptions {
  /**
   * Checks the sender of every request (before anything else is done with it) and every message
   * of every batch (before it is handed on). A node always sets it; leaving it out (only the
   * codec's checks, any sender, any message type on either path) is for testing the transport
   * itself. Default: none.
   */
  validator?: PeerBatchValidator;
  /**
   * The largest accepted `/raft/messages` body, in bytes; larger ones get 413. Default: 16 MiB,
   * twice the sender's default `maxBatchBytes` (a batch larger than that holds a single message:
   * raise this when the largest command, key plus value, approaches it).
   */
  maxBodyBytes?: number;
  /**
   * How many `/raft/messages` requests from one sender may be in progress at once; more get 429.
   * A node sends at most `maxInflightPerPeer` (default 2) at a time. Default: 8.
   */
  maxRequestsPerSender?: number;
  /**
   * How many message streams one sender may hold open at once. One more ends one of them: the
   * one that delivered nothing for the longest, if that is at least `streamIdleMs` (a stream
   * whose connection died silently), else the newest of them. A live sender's stream carries
   * its heartbeats or their answers, so a stranger who opens streams under its name cannot end
   * it. Default: 4.
   */
  maxStreamsPerSender?: number;
  /** How long a stream may go without delivering a batch before it is the first to end. Default: 2000. */
  streamIdleMs?: number;
  /**
   * How long a batch whose body is complete waits for an earlier request from the same sender
   * (whose body is still arriving) before it is delivered anyway. Bounds the damage of a request
   * whose sender vanished mid-body. Default: 2000.
   */
  maxOrderWaitMs?: number;
  /** The largest accepted snapshot upload, in bytes; larger ones get 413. Default: 4 GiB. */
  maxSnapshotBytes?: number;
  /** A snapshot upload that sends no byte for this long fails with 408. Default: 30000. */
  snapshotIdleTimeoutMs?: number;
  /** A snapshot upload not stored within this long fails with 408. Default: 600000 (10 min). */
  snapshotReceiveTimeoutMs?: number;
  /**
   * Whether every request must come with a proven identity (`info.peer`, from mutual TLS);
   * requests without one get 403. Set it when the handler is served with
   * {@linkcode serveMutualTls}, so that it can never be reached unauthenticated by mistake.
   * Default: false.
   */
  requirePeerIdentity?: boolean;
  /**
   * When set and no `validator` is given, batches holding a message whose `to` differs get 421
   * (the validator checks this itself). Default: not checked.
   */
  self?: NodeId;
  /**
   * Refused requests are logged at most once per this interval for each HTTP status, with a count
   * of those left out: a flood of bad requests cannot flood the log. Default: 5000.
   */
  refusalLogIntervalMs?: number;
  /** Where refused requests and handler failures are reported. Default: {@linkcode SILENT_LOGGER}. */
  logger?: TransportLogger;
  /**
   * Serves requests below {@linkcode FORWARD_PATH_PREFIX}, client requests forwarded by another
   * member, with the sender the handler was called with. Default: such paths get 404.
   */
  forward?: (req: Request, sender: string | null) => Promise<Response>;
  /**
   * Called once for every refusal the handler answers or, on a message stream, logs: each
   * refused request and each refused batch of a stream, with why
   * ({@linkcode PeerRefusalReason}); not for answers of `forward`, `5xx` (this node's own
   * failure) or `503` (a members query before this node has a configuration). A node counts them
   * in `raftkv_peer_refusals_total` ({@linkcode countPeerRefusals}). Default: nothing.
   */
  onRefusal?: (reason: PeerRefusalReason) => void;
}

/**
 * Why the peer port refused a request (or a batch of a message stream), each with one HTTP status
 * (`handshake` aside: the mutual-TLS server refuses such a connection before any request): the
 * `reason` label of `raftkv_peer_refusals_total`, in the order the checks run.
 *
 * - `other_cluster` (403): it names another cluster's id;
 * - `unknown_path` (404, or 405 for a method other than POST): no path of the peer protocol;
 * - `removed` (410): its sender was removed by a committed membership change;
 * - `not_member` (403): its sender, or a message's `from`, is not another member;
 * - `identity` (403, mutual TLS): the connection proved no identity (or its certificate names no
 *   node), or the header or a message names another sender than the certificate;
 * - `handshake` (no answer: the mutual-TLS server refused the connection at its TLS handshake): no
 *   client certificate, one the cluster CA did not sign, no TLS at all, or no handshake within
 *   the handshake timeout;
 * - `too_many_requests` (429): its sender has `maxRequestsPerSender` message requests in progress;
 * - `snapshot_busy` (429): another snapshot upload is in progress;
 * - `too_large` (413): a body, stream frame or snapshot over its limit;
 * - `aborted` (400): its body broke off (the sender reset or cut it);
 * - `malformed` (400): what the codec or the request's form rejects;
 * - `invalid` (400): a message the validator rejects (a field out of bounds or wrong for its
 *   type, a `Snap` on the message path, a member claiming another member's id);
 * - `misaddressed` (421): a message addressed to another node;
 * - `conflict` (409): the node's Raft state refused it (an append that disagrees with committed
 *   entries, a snapshot of an older term or not from the term's leader);
 * - `timeout` (408): a snapshot upload that stalled or took too long;
 * - `no_space` (507): this node's disk has no room for the snapshot.
 */
export type PeerRefusalReason = (typeof PEER_REFUSAL_REASONS)[number];

/** Every {@linkcode PeerRefusalReason}, in the order the metrics list them. */
export const PEER_REFUSAL_REASONS = [
  "other_cluster",
  "unknown_path",
  "removed",
  "not_member",
  "identity",
  "handshake",
  "too_many_requests",
  "snapshot_busy",
  "too_large",
  "aborted",
  "malformed",
  "invalid",
  "misaddressed",
  "conflict",
  "timeout",
  "no_space",
] as const;

/**
 * Registers `raftkv_peer_refusals_total{reason}` in `registry`, every
 * {@linkcode PeerRefusalReason} at 0 from the start, and returns what counts one refusal: the
 * `onRefusal` of {@linkcode createPeerHandler} (and of the mutual-TLS server, which refuses a
 * certificate that names no node itself).
 *
 * @example Usage
 * ```ts ignore
 * const onRefusal = countPeerRefusals(registry);
 * const handler = createPeerHandler(handlers, { self: "a", validator, onRefusal });
 * ```
 *
 * @param registry Where to register the counter.
 * @returns The function that counts one refusal of `reason`.
 * @throws {RangeError} If the counter is already registered there.
 */
export function countPeerRefusals(
  registry: MetricsRegistry,
): (reason: PeerRefusalReason) => void {
  const refusals = registry.counterVec(
    "raftkv_peer_refusals_total",
    "Peer requests, and batches of a message stream, this node refused on its peer port, by " +
      "reason: other_cluster (403: another cluster's id), unknown_path (404/405: not a path or " +
      "method of the peer protocol), removed (410: a member a committed change removed), " +
      "not_member (403: the sender, or a message's sender, is not another member), identity " +
      "(403, mutual TLS: no proven identity, a certificate naming no node, or a header or " +
      "message naming another sender than the certificate), handshake (mutual TLS: a connection " +
      "refused at its TLS handshake, with no certificate, one the cluster CA did not sign, or " +
      "none in time), too_many_requests (429: the sender " +
      "already has as many message requests in progress as it may), snapshot_busy (429: another " +
      "snapshot upload in progress), too_large (413: a body, frame or snapshot over its limit), aborted (400: the " +
      "body broke off), malformed (400: the codec or the request's form rejects it), invalid " +
      "(400: a message field the validator rejects), misaddressed (421: a message for another " +
      "node), conflict (409: the Raft state refuses it, such as an append disagreeing with " +
      "committed entries or a stale snapshot), timeout (408: a snapshot upload too slow), " +
      "no_space (507: no disk room for a snapshot).",
    ["reason"],
  );
  // Every reason shows from the start, at 0.
  const counters = new Map(PEER_REFUSAL_REASONS.map((r) => [r, refusals.labels(r)]));
  return (reason) => counters.get(reason)?.inc();
}

/** The path prefix of client requests forwarded to this node (see `PeerHandlerOptions.forward`). */
export const FORWARD_PATH_PREFIX = "/forward";

/** One peer's sending state. */
interface _Peer {
  id: NodeId;
  messagesUrl: string;
  snapshotUrl: string;
  /** Where to ask for its committed configuration ({@linkcode MEMBERS_PATH}). */
  membersUrl: string;
  queue: Message[];
  inflight: number;
  pumpScheduled: boolean;
  /** Whether something queued since the last pump cannot wait a turn (see {@linkcode _canWait}). */
  urgent: boolean;
  sent: number;
  dropped: number;
  /** Messages dropped because this node had moved on to a newer term before sending them. */
  stale: number;
  failed: number;
  /** Seconds from sending a batch to the peer's answer, for the batches it took. */
  rtt: Histogram;
  streamUrl: string;
  /** The open message stream, once the peer accepted it. */
  stream: http2.ClientHttp2Stream | null;
  /** Whether a stream is being opened (with retries). */
  opening: boolean;
  /** Whether the open stream's buffer is full (waiting for `drain`). */
  blocked: boolean;
  /** Until when (performance.now()) the peer gets per-batch requests: it does not know the stream. */
  legacyUntil: number;
}

/**
 * Sends Raft messages and snapshots to peers over HTTP/2 (see the module doc). Receiving is done by
 * {@linkcode createPeerHandler}, mounted in the node's server.
 *
 * @example Usage
 * ```ts ignore
 * const transport = new HttpTransport(handlers, {
 *   self: "a",
 *   peers: [{ id: "b", rpcUrl: "http://10.0.0.2:7001" }],
 * });
 * Deno.serve({ port: 7001 }, createPeerHandler(handlers, { self: "a" }));
 * transport.send(ready.messages);
 * ```
 */
export class HttpTransport implements Transport {
  readonly #handlers: Pick<
    TransportHandlers,
    "onUnreachable" | "onRemoved" | "memberSince" | "clusterId"
  >;
  readonly #peers = new Map<NodeId, _Peer>();
  readonly #client: H2Client;
  readonly #abort = new AbortController();
  readonly #tasks = new Set<Promise<void>>();
  readonly #headers: Record<string, string>;
  readonly #rpcTimeoutMs: number;
  readonly #snapshotTimeoutMs: number;
  readonly #retries: number;
  readonly #backoffMs: number;
  readonly #maxInflight: number;
  readonly #maxQueued: number;
  /** Messages of a term below this one are dropped (see {@linkcode HttpTransport.dropOlderThan}). */
  #term = 0;
  readonly #maxBatchBytes: number;
  readonly #logger: TransportLogger;
  readonly #useStream: boolean;
  readonly #self: NodeId;
  /** Each peer's origin, and the node id its TLS certificate must name. */
  readonly #expected = new Map<string, NodeId>();
  #rtt: HistogramVec | null = null;
  #queued: GaugeVec | null = null;
  #closed = false;
  #closing: Promise<void> | null = null;

  /**
   * Creates the transport and its HTTP/2 client. Only `handlers.onUnreachable` is used here; the
   * receiving side is {@linkcode createPeerHandler}.
   *
   * @throws {TypeError} if a peer's `rpcUrl` is not an http(s) URL.
   * @throws {RangeError} if a numeric option is out of range or a peer id repeats.
   */
  constructor(
    handlers: Pick<
      TransportHandlers,
      "onUnreachable" | "onRemoved" | "memberSince" | "clusterId"
    >,
    options: HttpTransportOptions,
  ) {
    this.#handlers = handlers;
    this.#rpcTimeoutMs = _positiveInt("rpcTimeoutMs", options.rpcTimeoutMs, 2000);
    this.#snapshotTimeoutMs = _positiveInt("snapshotTimeoutMs", options.snapshotTimeoutMs, 600_000);
    this.#retries = _nonNegativeInt("maxConnRetryAttempts", options.maxConnRetryAttempts, 3);
    this.#backoffMs = _nonNegativeInt("retryBackoffMs", options.retryBackoffMs, 50);
    this.#maxInflight = _positiveInt("maxInflightPerPeer", options.maxInflightPerPeer, 2);
    this.#maxQueued = _positiveInt("maxQueuedPerPeer", options.maxQueuedPerPeer, 4096);
    this.#maxBatchBytes = _positiveInt("maxBatchBytes", options.maxBatchBytes, 8 << 20);
    this.#logger = options.logger ?? SILENT_LOGGER;
    this.#useStream = options.stream ?? true;
    this.#headers = {
      "content-type": "application/octet-stream",
      [FROM_HEADER]: options.self,
    };
    const metrics = options.metrics ?? new MetricsRegistry();
    const rtt = metrics.histogramVec(
      "raftkv_peer_round_trip_time_seconds",
      "Round-trip time to a peer: an HTTP/2 PING on its message stream, or a batch sent as a request until its answer.",
      exponentialBuckets(0.0001, 2, 16),
      ["peer"],
    );
    const queued = metrics.gaugeVec(
      "raftkv_peer_queued_messages",
      "Raft messages waiting to be sent to a peer.",
      ["peer"],
    );
    metrics.onCollect(() => {
      for (const p of this.#peers.values()) queued.labels(p.id).set(p.queue.length);
    });
    this.#self = options.self;
    this.#rtt = rtt;
    this.#queued = queued;
    for (const peer of options.peers) {
      if (peer.id === options.self) continue;
      if (this.#peers.has(peer.id)) {
        throw new RangeError(`Cannot create transport: peer "${peer.id}" is listed twice`);
      }
      this.#addPeer(peer);
    }
    const expected = this.#expected;
    this.#client = options.tls === undefined ? new H2Client() : new H2Client({
      tls: { ...options.tls, expectedName: (origin) => expected.get(origin) ?? null },
    });
  }

  /**
   * Takes rotated peer TLS files: connections to peers opened from now on present the new
   * certificate and trust the new CA; those already open keep theirs until they close.
   *
   * @param files The new PEM texts.
   * @throws {RangeError} If the transport was created without TLS.
   */
  setTls(files: PeerTlsFiles): void {
    this.#client.setTls(files);
  }

  #addPeer(peer: PeerAddress): void {
    const p: _Peer = {
      id: peer.id,
      messagesUrl: _endpoint(peer, MESSAGES_PATH),
      snapshotUrl: _endpoint(peer, SNAPSHOT_PATH),
      membersUrl: _endpoint(peer, MEMBERS_PATH),
      queue: [],
      inflight: 0,
      pumpScheduled: false,
      urgent: false,
      sent: 0,
      dropped: 0,
      stale: 0,
      failed: 0,
      rtt: this.#rtt!.labels(peer.id),
      streamUrl: _endpoint(peer, STREAM_PATH),
      stream: null,
      opening: false,
      blocked: false,
      legacyUntil: 0,
    };
    this.#peers.set(peer.id, p);
    this.#expected.set(new URL(p.messagesUrl).origin, p.id);
  }

  /**
   * Replaces the peer address book (the cluster's configuration changed): peers not listed any
   * more are forgotten with what was queued for them, new ones are added, and a peer whose
   * address changed is replaced. This node's own entry is skipped.
   *
   * @throws {TypeError} if a peer's `rpcUrl` is not an http(s) URL.
   */
  setPeers(peers: readonly PeerAddress[]): void {
    const wanted = new Map(peers.filter((p) => p.id !== this.#self).map((p) => [p.id, p]));
    for (const [id, p] of this.#peers) {
      const next = wanted.get(id);
      if (next !== undefined && _endpoint(next, MESSAGES_PATH) === p.messagesUrl) continue;
      p.queue = [];
      this.#peers.delete(id);
      // Its stream goes too (one still being opened is closed when it opens, see below).
      p.stream?.close(_NGHTTP2_CANCEL);
      p.stream = null;
      const origin = new URL(p.messagesUrl).origin;
      if (this.#expected.get(origin) === id) this.#expected.delete(origin);
      if (next === undefined) {
        // No longer a member: its series go too (a scrape would show it forever, frozen).
        this.#rtt?.remove(id);
        this.#queued?.remove(id);
      }
    }
    for (const [id, p] of wanted) if (!this.#peers.has(id)) this.#addPeer(p);
  }

  /**
   * Queues messages for their `to` peers and returns at once. Messages for unknown peers are
   * dropped (with a warning); after {@linkcode HttpTransport.close} everything is dropped.
   */
  send(messages: Message[]): void {
    if (this.#closed) return;
    for (const msg of messages) {
      const peer = this.#peers.get(msg.to);
      if (peer === undefined) {
        this.#logger.warn(`Dropped a message of type ${msg.type} for unknown peer "${msg.to}"`);
        continue;
      }
      if (msg.term !== 0 && msg.term < this.#term) {
        peer.stale++;
        continue;
      }
      if (peer.queue.length >= this.#maxQueued) _dropOldest(peer);
      peer.queue.push(msg);
      if (!_canWait(msg)) peer.urgent = true;
      if (!peer.pumpScheduled) {
        // Deferred to the end of this event-loop turn so that what every I/O callback of the turn
        // sends (each client request's proposal, each peer batch's answers) shares one frame.
        peer.pumpScheduled = true;
        setImmediate(() => this.#turnEnded(peer, false));
      }
    }
  }

  /**
   * Drops the queued messages of a term older than `term`, and every such message sent from now
   * on (messages without a term are kept). Called when the node's term rises: receivers ignore
   * those messages once they know the newer term, and a peer that was away would take a deposed
   * leader's appends as news (valid, but no longer the leader's word).
   */
  dropOlderThan(term: number): void {
    if (term <= this.#term) return;
    this.#term = term;
    for (const peer of this.#peers.values()) {
      const kept = peer.queue.filter((m) => m.term === 0 || m.term >= this.#term);
      peer.stale += peer.queue.length - kept.length;
      peer.queue = kept;
    }
  }

  /**
   * Streams a snapshot to `msg.to`. Connection failures are retried (calling `open()` again);
   * a refusal by the peer, a timeout or {@linkcode HttpTransport.close} is not.
   *
   * @throws {RangeError} if `msg` is not a `Snap` message or is for an unknown peer.
   * @throws {Error} if the transport is closed, the peer refused the snapshot or was unreachable.
   */
  sendSnapshot(msg: Message, open: () => Promise<ReadableStream<Uint8Array>>): Promise<void> {
    if (this.#closed) {
      return Promise.reject(new Error("Cannot send snapshot: the transport is closed"));
    }
    if (msg.type !== MessageType.Snap) {
      return Promise.reject(
        new RangeError(`Cannot send snapshot: message type must be Snap (9), got ${msg.type}`),
      );
    }
    const peer = this.#peers.get(msg.to);
    if (peer === undefined) {
      return Promise.reject(new RangeError(`Cannot send snapshot: unknown peer "${msg.to}"`));
    }
    let header: string;
    try {
      header = encodeMessages([msg]).toBase64({ alphabet: "base64url", omitPadding: true });
    } catch (err) {
      return Promise.reject(err);
    }
    const result = this.#sendSnapshot(peer, header, open);
    const task = result.then(() => {}, () => {});
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
    return result;
  }

  /**
   * Returns each peer's counters. Over a message stream, `sent` counts the messages written to it
   * (there is no acknowledgement) and `inflight` is 1 while the stream is open.
   */
  stats(): Record<NodeId, PeerStats> {
    const out: Record<NodeId, PeerStats> = {};
    for (const p of this.#peers.values()) {
      out[p.id] = {
        queued: p.queue.length,
        inflight: p.inflight + (p.stream === null ? 0 : 1),
        sent: p.sent,
        dropped: p.dropped,
        stale: p.stale,
        failed: p.failed,
      };
    }
    return out;
  }

  /**
   * Asks `peerId` for its committed configuration (`POST <rpcUrl>/raft/members`, within
   * `rpcTimeoutMs`): null when it is not in the address book, cannot be reached, refuses or
   * answers something malformed. A `410` "removed" answer calls
   * {@linkcode TransportHandlers.onRemoved}, as for messages.
   */
  async queryMembers(peerId: NodeId): Promise<CommittedMembers | null> {
    const peer = this.#peers.get(peerId);
    if (peer === undefined || this.#closed) return null;
    const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(this.#rpcTimeoutMs)]);
    try {
      const res = await this.#client.fetch(peer.membersUrl, {
        method: "POST",
        headers: this.#requestHeaders(),
        signal,
      });
      if (await this.#removedAnswer(peer, res)) return null;
      if (res.status !== 200) {
        this.#logger.debug(
          `Peer "${peer.id}" refused the members query: HTTP ${res.status}: ${await _errorDetail(
            res,
            signal,
          )}`,
        );
        return null;
      }
      const body = await readBodyWithin(res, _MAX_MEMBERS_ANSWER);
      if (body === null) {
        this.#logger.debug(
          `Peer "${peer.id}" answered the members query with over ${_MAX_MEMBERS_ANSWER} bytes`,
        );
        return null;
      }
      return parseCommittedMembers(JSON.parse(new TextDecoder().decode(body)));
    } catch (err) {
      this.#logger.debug(`Members query to peer "${peer.id}" failed: ${_describe(err)}`);
      return null;
    }
  }

  /**
   * Drops everything queued, aborts every request in flight (their senders see a rejection), waits
   * for them to wind down and closes the HTTP client. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closing === null) this.#closing = this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    for (const peer of this.#peers.values()) peer.queue = [];
    this.#abort.abort(new DOMException("The transport was closed", "AbortError"));
    // Closing the client fails every request still in flight.
    this.#client.close();
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
  }

  /**
   * Pumps the peer's queue at the end of the turn it was first sent to, or of the next turn when
   * everything queued can wait (see {@linkcode _canWait}): a leader that has just committed
   * writes its clients' answers before the news of that commit to its followers, instead of
   * holding them behind those frames (each write to a peer stream costs about 0.1 ms).
   */
  #turnEnded(peer: _Peer, waited: boolean): void {
    if (!waited && !peer.urgent) {
      setImmediate(() => this.#turnEnded(peer, true));
      return;
    }
    peer.pumpScheduled = false;
    peer.urgent = false;
    this.#pump(peer);
  }

  /** Sends what is queued: over the peer's stream or, for an older peer, as requests. */
  #pump(peer: _Peer): void {
    if (this.#useStream && performance.now() >= peer.legacyUntil) this.#pumpStream(peer);
    else this.#pumpRequests(peer);
  }

  /**
   * Writes everything queued to the peer's stream, one frame per batch, until the stream's buffer
   * is full (then the queue holds the rest, bounded by `maxQueuedPerPeer`, until `drain`); opens
   * the stream first if there is none.
   */
  #pumpStream(peer: _Peer): void {
    if (this.#closed || peer.queue.length === 0) return;
    const stream = peer.stream;
    if (stream === null) {
      if (!peer.opening) this.#openStream(peer);
      return;
    }
    while (!peer.blocked && peer.queue.length > 0) {
      // Encoded straight into the frame, after room for its length: one buffer, one copy.
      const batch = this.#takeBatch(peer, encodeMessageFrame);
      if (batch === null) continue;
      peer.sent += batch.count;
      if (!stream.write(batch.bytes)) {
        // The peer (or the network) does not keep up: wait for the buffer to drain, and give the
        // stream up as broken if it does not drain within a few rpcTimeoutMs (a large frame may
        // need several flow-control round trips).
        peer.blocked = true;
        const timer = setTimeout(() => {
          this.#logger.debug(`The stream to peer "${peer.id}" stalled; reopening it`);
          stream.close(_NGHTTP2_CANCEL);
        }, this.#rpcTimeoutMs * _STALL_TIMEOUTS);
        const resume = () => {
          clearTimeout(timer);
          stream.off("drain", resume);
          stream.off("close", resume);
          peer.blocked = false;
          if (peer.stream === stream) this.#pump(peer);
        };
        stream.on("drain", resume);
        stream.on("close", resume);
      }
    }
  }

  /**
   * Opens the peer's stream, retrying with backoff; when every attempt failed, drops what is
   * queued and reports the peer unreachable (the next send tries again).
   */
  #openStream(peer: _Peer): void {
    peer.opening = true;
    const task = this.#connectStream(peer).finally(() => {
      peer.opening = false;
      this.#tasks.delete(task);
      if (peer.stream !== null || performance.now() < peer.legacyUntil) this.#pump(peer);
    });
    this.#tasks.add(task);
  }

  async #connectStream(peer: _Peer): Promise<void> {
    let lastError: unknown = null;
    for (let attempt = 0; attempt <= this.#retries; attempt++) {
      if (attempt > 0 && !(await this.#backoff(attempt))) return;
      if (this.#closed) return;
      let stream: http2.ClientHttp2Stream | null = null;
      const deadline = new AbortController();
      const timer = setTimeout(
        () => deadline.abort(new DOMException("peer stream timed out", "TimeoutError")),
        this.#rpcTimeoutMs,
      );
      let res: Response;
      try {
        res = await this.#client.fetch(peer.streamUrl, {
          method: "POST",
          headers: this.#requestHeaders(),
          signal: deadline.signal,
          onStream: (s) => stream = s,
        });
      } catch (err) {
        clearTimeout(timer);
        if (this.#closed) return;
        lastError = err;
        this.#logger.debug(
          `Attempt ${attempt + 1} to open a stream to peer "${peer.id}" failed`,
          err,
        );
        continue;
      }
      if (res.status === 200 && stream !== null) {
        clearTimeout(timer);
        const open: http2.ClientHttp2Stream = stream;
        if (this.#peers.get(peer.id) !== peer) {
          // The peer left the address book (or moved) while its stream was being opened.
          open.close(_NGHTTP2_CANCEL);
          return;
        }
        peer.stream = open;
        // The peer ends its (empty) answer when it gives the stream up: then so does this side.
        res.body?.pipeTo(new WritableStream()).catch(() => {}).finally(() =>
          open.close(_NGHTTP2_CANCEL)
        );
        // A stream carries no answers: its round-trip time is measured with HTTP/2 PINGs.
        const ping = () => {
          if (open.closed || open.session === undefined || open.session.destroyed) return;
          try {
            // Timed here: the duration node:http2 passes to the callback is always 0 in Deno.
            const sentAt = performance.now();
            open.session.ping((err) => {
              if (err === null) peer.rtt.observe((performance.now() - sentAt) / 1000);
            });
          } catch {
            // Too many PINGs unanswered, or the session is closing: skip this one.
          }
        };
        ping();
        const pinger = setInterval(ping, _PING_EVERY_MS);
        Deno.unrefTimer(pinger);
        open.on("close", () => {
          clearInterval(pinger);
          if (peer.stream !== open) return;
          peer.stream = null;
          this.#logger.debug(`The stream to peer "${peer.id}" closed (code ${open.rstCode})`);
          // Reopened by the next send (right away if messages are waiting).
          if (!this.#closed && peer.queue.length > 0) this.#pump(peer);
        });
        return;
      }
      try {
        if (await this.#removedAnswer(peer, res)) return;
        if (res.status === 404) {
          // A peer of an older version: per-batch requests for a while.
          await _discardBody(res);
          peer.legacyUntil = performance.now() + _LEGACY_RETRY_MS;
          this.#logger.debug(`Peer "${peer.id}" has no message stream; sending requests`);
          return;
        }
        const detail = await _errorDetail(res, deadline.signal);
        lastError = new Error(`HTTP ${res.status}: ${detail}`);
        this.#logger.warn(
          `Peer "${peer.id}" refused the message stream: HTTP ${res.status}: ${detail}`,
        );
      } finally {
        clearTimeout(timer);
      }
    }
    const dropped = peer.queue.length;
    peer.failed += dropped;
    peer.queue = [];
    this.#logger.warn(
      `Dropped ${dropped} messages for unreachable peer "${peer.id}" after ` +
        `${this.#retries + 1} attempts to open a stream`,
      lastError,
    );
    this.#reportUnreachable(peer.id);
  }

  /** Starts requests while the peer has queued messages and free in-flight slots. */
  #pumpRequests(peer: _Peer): void {
    while (!this.#closed && peer.inflight < this.#maxInflight && peer.queue.length > 0) {
      const batch = this.#takeBatch(peer, encodeMessages);
      if (batch === null) continue;
      peer.inflight++;
      const task = this.#deliver(peer, batch).finally(() => {
        peer.inflight--;
        this.#tasks.delete(task);
        this.#pumpRequests(peer);
      });
      this.#tasks.add(task);
    }
  }

  /**
   * Removes the next batch from the queue and encodes it with `encode` (a request body or a stream
   * frame); null if it could not be encoded.
   */
  #takeBatch(
    peer: _Peer,
    encode: (msgs: readonly Message[]) => Uint8Array<ArrayBuffer>,
  ): { bytes: Uint8Array<ArrayBuffer>; count: number } | null {
    const queue = coalesceMessages(peer.queue, this.#maxBatchBytes);
    peer.queue = queue;
    let size = 5;
    let n = 0;
    while (n < queue.length) {
      let msgSize: number;
      try {
        msgSize = encodedMessageSize(queue[n]!);
      } catch (err) {
        // A bug in the caller (a message the codec cannot represent): drop just that message.
        queue.splice(n, 1);
        peer.failed++;
        this.#logger.warn(`Dropped a message for peer "${peer.id}": ${err}`);
        continue;
      }
      if (n > 0 && size + msgSize > this.#maxBatchBytes) break;
      size += msgSize;
      n++;
    }
    if (n === 0) return null;
    let batch: Message[];
    if (n === queue.length) {
      batch = queue;
      peer.queue = [];
    } else {
      batch = queue.slice(0, n);
      peer.queue = queue.slice(n);
    }
    try {
      return { bytes: encode(batch), count: batch.length };
    } catch {
      // As above, for what only the writer checks (e.g. a term that is not a safe integer): find
      // the culprits one by one (rare, so the cost does not matter) and send the rest.
      const good = batch.filter((msg) => {
        try {
          encodeMessages([msg]);
          return true;
        } catch (err) {
          peer.failed++;
          this.#logger.warn(`Dropped a message for peer "${peer.id}": ${err}`);
          return false;
        }
      });
      return good.length === 0 ? null : { bytes: encode(good), count: good.length };
    }
  }

  /** Posts one batch, retrying connection failures; never rejects. */
  async #deliver(
    peer: _Peer,
    batch: { bytes: Uint8Array<ArrayBuffer>; count: number },
  ): Promise<void> {
    let lastError: unknown = null;
    for (let attempt = 0; attempt <= this.#retries; attempt++) {
      if (attempt > 0 && !(await this.#backoff(attempt))) return;
      if (this.#closed) return;
      let res: Response;
      // A plain timer, cleared on completion: AbortSignal.timeout would fire (and build a
      // DOMException) for every batch long after it was answered. close() ends the requests by
      // closing the client. The deadline covers reading an error's body too.
      const deadline = new AbortController();
      const timer = setTimeout(
        () => deadline.abort(new DOMException("peer request timed out", "TimeoutError")),
        this.#rpcTimeoutMs,
      );
      const sentAt = performance.now();
      try {
        try {
          res = await this.#client.fetch(peer.messagesUrl, {
            method: "POST",
            headers: this.#requestHeaders(),
            body: batch.bytes,
            signal: deadline.signal,
          });
        } catch (err) {
          if (this.#closed) return;
          lastError = err;
          this.#logger.debug(
            `Attempt ${attempt + 1} to send ${batch.count} messages to peer "${peer.id}" failed`,
            err,
          );
          continue;
        }
        if (res.ok) {
          peer.rtt.observe((performance.now() - sentAt) / 1000);
          await _discardBody(res);
          peer.sent += batch.count;
          return;
        }
        if (await this.#removedAnswer(peer, res)) return;
        const detail = await _errorDetail(res, deadline.signal);
        peer.failed += batch.count;
        this.#logger.warn(
          `Peer "${peer.id}" refused ${batch.count} messages: HTTP ${res.status}: ${detail}`,
        );
        return;
      } finally {
        clearTimeout(timer);
      }
    }
    peer.failed += batch.count;
    this.#logger.warn(
      `Dropped ${batch.count} messages for unreachable peer "${peer.id}" after ` +
        `${this.#retries + 1} attempts`,
      lastError,
    );
    this.#reportUnreachable(peer.id);
  }

  async #sendSnapshot(
    peer: _Peer,
    header: string,
    open: () => Promise<ReadableStream<Uint8Array>>,
  ): Promise<void> {
    let lastError: unknown = null;
    for (let attempt = 0; attempt <= this.#retries; attempt++) {
      if (attempt > 0 && !(await this.#backoff(attempt))) break;
      if (this.#closed) break;
      const outcome = await this.#postSnapshot(peer, header, await open());
      if (outcome === undefined) return;
      lastError = outcome.error;
      this.#logger.debug(
        `Attempt ${attempt + 1} to send a snapshot to "${peer.id}" failed`,
        outcome.error,
      );
    }
    if (this.#closed) {
      throw new Error(`Cannot send snapshot to peer "${peer.id}": the transport was closed`, {
        cause: lastError,
      });
    }
    this.#reportUnreachable(peer.id);
    throw new Error(
      `Cannot send snapshot: peer "${peer.id}" unreachable after ${this.#retries + 1} attempts`,
      { cause: lastError },
    );
  }

  /**
   * One snapshot attempt: resolves undefined on success, `{ error }` for a connection failure worth
   * retrying, and throws for anything else.
   */
  async #postSnapshot(
    peer: _Peer,
    header: string,
    source: ReadableStream<Uint8Array>,
  ): Promise<{ error: unknown } | undefined> {
    const signal = AbortSignal.any([
      this.#abort.signal,
      AbortSignal.timeout(this.#snapshotTimeoutMs),
    ]);
    let res: Response;
    try {
      res = await this.#client.fetch(peer.snapshotUrl, {
        method: "POST",
        headers: { ...this.#fixedHeaders(), [MESSAGE_HEADER]: header },
        body: _abortableBody(source, signal),
        signal,
      });
    } catch (err) {
      if (this.#closed) {
        throw new Error(`Cannot send snapshot to peer "${peer.id}": the transport was closed`, {
          cause: err,
        });
      }
      if (err instanceof DOMException && err.name === "TimeoutError") {
        throw new Error(
          `Cannot send snapshot to peer "${peer.id}": timed out after ${this.#snapshotTimeoutMs} ms`,
          { cause: err },
        );
      }
      return { error: err };
    }
    if (res.ok) {
      await _discardBody(res);
      return undefined;
    }
    const detail = await _errorDetail(res, signal);
    if (res.status === 507) {
      throw new PeerNoSpaceError(`Peer "${peer.id}" has no room for the snapshot: ${detail}`);
    }
    throw new Error(
      `Peer "${peer.id}" refused the snapshot: HTTP ${res.status}: ${detail}`,
    );
  }

  /** Waits before retry `attempt` (>= 1); resolves false instead if the transport closes. */
  #backoff(attempt: number): Promise<boolean> {
    if (this.#closed) return Promise.resolve(false);
    const base = Math.min(this.#backoffMs * 2 ** (attempt - 1), _MAX_BACKOFF_MS);
    const ms = base / 2 + Math.random() * (base / 2);
    const signal = this.#abort.signal;
    return new Promise((resolve) => {
      const onAbort = () => {
        clearTimeout(timer);
        resolve(false);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener("abort", onAbort);
        resolve(true);
      }, ms);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** The headers of every request: the fixed ones and this node's cluster, once it knows it. */
  #fixedHeaders(): Record<string, string> {
    const cluster = this.#handlers.clusterId?.();
    return cluster === undefined ? this.#headers : { ...this.#headers, [CLUSTER_HEADER]: cluster };
  }

  /** The headers of a message request or stream: the fixed ones and this node's membership. */
  #requestHeaders(): Record<string, string> {
    const since = this.#handlers.memberSince?.() ?? 0;
    const fixed = this.#fixedHeaders();
    return since > 0 ? { ...fixed, [MEMBER_SINCE_HEADER]: String(since) } : fixed;
  }

  /**
   * Whether `res` is the peer's answer that a committed configuration change removed this node
   * (`410` with the index header): then what was queued for it is dropped and
   * {@linkcode TransportHandlers.onRemoved} is told.
   */
  async #removedAnswer(peer: _Peer, res: Response): Promise<boolean> {
    if (res.status !== 410) return false;
    const index = Number(res.headers.get(REMOVED_AT_HEADER) ?? "");
    if (!Number.isSafeInteger(index) || index < 1) return false;
    await _discardBody(res);
    const dropped = peer.queue.length;
    peer.failed += dropped;
    peer.queue = [];
    this.#logger.warn(
      `Peer "${peer.id}" answered that this node was removed from the cluster (its committed ` +
        `configuration at index ${index} leaves it out); dropped ${dropped} queued messages`,
    );
    if (this.#closed) return true;
    try {
      this.#handlers.onRemoved?.(peer.id, index);
    } catch (err) {
      this.#logger.warn(`onRemoved("${peer.id}") threw`, err);
    }
    return true;
  }

  #reportUnreachable(peer: NodeId): void {
    if (this.#closed) return;
    try {
      this.#handlers.onUnreachable?.(peer);
    } catch (err) {
      this.#logger.warn(`onUnreachable("${peer}") threw`, err);
    }
  }
}

/**
 * Creates the receiving side: a handler for `POST /raft/messages` and `POST /raft/snapshot` (see
 * the module doc) to mount in `Deno.serve` or to call directly. It never throws: every failure
 * becomes a JSON error response. Its second argument says who the connection proved the peer to
 * be (the client certificate's CN with mutual TLS; `peer: null` for h2c); that id is also what
 * `options.forward` gets.
 *
 * @throws {RangeError} if a numeric option is out of range.
 */
export function createPeerHandler(
  handlers: Pick<
    TransportHandlers,
    | "onMessages"
    | "onSnapshot"
    | "snapshotRefusal"
    | "removedAt"
    | "committedMembers"
    | "onUnknownSender"
    | "checkCluster"
  >,
  options: PeerHandlerOptions = {},
): (req: Request, info?: PeerRequestInfo) => Promise<Response> {
  const maxBodyBytes = _positiveInt("maxBodyBytes", options.maxBodyBytes, 16 << 20);
  const maxPerSender = _positiveInt("maxRequestsPerSender", options.maxRequestsPerSender, 8);
  const maxStreams = _positiveInt("maxStreamsPerSender", options.maxStreamsPerSender, 4);
  const streamIdleMs = _positiveInt("streamIdleMs", options.streamIdleMs, 2000);
  const maxOrderWaitMs = _nonNegativeInt("maxOrderWaitMs", options.maxOrderWaitMs, 2000);
  const maxSnapshotBytes = _positiveInt("maxSnapshotBytes", options.maxSnapshotBytes, 4 * 2 ** 30);
  const idleMs = _positiveInt("snapshotIdleTimeoutMs", options.snapshotIdleTimeoutMs, 30_000);
  const totalMs = _positiveInt(
    "snapshotReceiveTimeoutMs",
    options.snapshotReceiveTimeoutMs,
    600_000,
  );
  const logEveryMs = _nonNegativeInt("refusalLogIntervalMs", options.refusalLogIntervalMs, 5000);
  const logger = options.logger ?? SILENT_LOGGER;
  const { self, validator } = options;
  const requireIdentity = options.requirePeerIdentity ?? false;
  /** Per sender: settles once every batch that arrived so far has been delivered or failed. */
  const tails = new Map<string, Promise<void>>();
  /** Per sender: `/raft/messages` requests in progress. Only validated senders get an entry. */
  const active = new Map<string, number>();
  /** Per sender: its open message streams. Only validated senders get an entry. */
  const streams = new Map<string, Set<_OpenStream>>();
  let uploading = false;
  /** Per HTTP status: when a refusal was last logged, and how many were left out since. */
  const reported = new Map<number, { at: number; skipped: number }>();

  /** Tells `options.onRefusal` of a refusal (a hook that throws is logged, not passed on). */
  function countRefusal(why: PeerRefusalReason): void {
    try {
      options.onRefusal?.(why);
    } catch (err) {
      logger.warn(`onRefusal threw: ${_describe(err)}`, err);
    }
  }

  /**
   * Answers `why`'s status with `reason`, counting it ({@linkcode PeerHandlerOptions.onRefusal})
   * and logging it (at most once per interval per status).
   */
  function refuse(
    why: _Answered,
    reason: string,
    from: string,
    answer?: { body: Record<string, unknown>; headers: Record<string, string> },
  ): Response {
    countRefusal(why);
    const status = _REFUSAL_STATUS[why];
    const now = performance.now();
    const last = reported.get(status);
    if (last === undefined || now - last.at >= logEveryMs) {
      const skipped = last?.skipped ? ` (${last.skipped} more refused with ${status} before)` : "";
      logger.warn(
        `Refused a peer request with ${status} (sender ${_quoteId(from)}): ${reason}${skipped}`,
      );
      reported.set(status, { at: now, skipped: 0 });
    } else {
      last.skipped++;
    }
    if (answer !== undefined) {
      return Response.json({ error: reason, ...answer.body }, { status, headers: answer.headers });
    }
    return _error(status, reason);
  }

  /** The `410` answer to a sender that a committed membership change removed. */
  function refuseRemoved(from: string, index: number): Response {
    return refuse(
      "removed",
      `Sender ${_quoteId(from)} was removed from the cluster: the configuration in force at ` +
        `the commit index ${index} leaves it out`,
      from,
      { body: { code: "removed", index }, headers: { [REMOVED_AT_HEADER]: String(index) } },
    );
  }

  function refuseFor(refusal: PeerRefusal, from: string): Response {
    return refuse(_KIND_REASON[refusal.kind], refusal.reason, from);
  }

  async function handleMessages(req: Request, from: string, proven: boolean): Promise<Response> {
    const count = active.get(from) ?? 0;
    if (count >= maxPerSender) {
      return refuse(
        "too_many_requests",
        `Sender ${
          _quoteId(from)
        } already has ${count} requests in progress (limit ${maxPerSender})`,
        from,
      );
    }
    active.set(from, count + 1);
    // Take this request's place in the sender's order before reading the body.
    const previous = tails.get(from);
    let release!: () => void;
    const tail = new Promise<void>((resolve) => release = resolve);
    tails.set(from, tail);
    let waited = previous === undefined;
    try {
      let body: Uint8Array | null;
      try {
        body = await readBodyWithin(req, maxBodyBytes);
      } catch (err) {
        // The sender reset the request or cut its body short.
        return refuse("aborted", `The request body broke off: ${_describe(err)}`, from);
      }
      if (body === null) {
        return refuse("too_large", `Request body exceeds the limit of ${maxBodyBytes} bytes`, from);
      }
      let messages: Message[];
      try {
        messages = decodeMessages(body);
      } catch (err) {
        return refuse("malformed", err instanceof Error ? err.message : String(err), from);
      }
      if (proven) {
        const forged = _claimedByAnother(messages, from);
        if (forged !== null) return refuse("identity", forged, from);
      }
      if (validator !== undefined) {
        const refusal = validator.checkBatch(from, messages, "messages");
        if (refusal !== null) return refuseFor(refusal, from);
      } else if (self !== undefined) {
        const stray = messages.find((m) => m.to !== self);
        if (stray !== undefined) {
          return refuse(
            "misaddressed",
            `Message addressed to "${stray.to}" reached node "${self}"`,
            from,
          );
        }
      }
      if (!waited) {
        await _settledWithin(previous!, maxOrderWaitMs);
        waited = true;
      }
      try {
        handlers.onMessages(messages);
      } catch (err) {
        if (err instanceof PeerRefusedError) return refuse("conflict", err.message, from);
        throw err;
      }
      return new Response(null, { status: 204 });
    } finally {
      const left = active.get(from)! - 1;
      if (left === 0) active.delete(from);
      else active.set(from, left);
      // Later requests go once this one is done and the earlier ones are (or were given up on).
      if (waited) release();
      else _settledWithin(previous!, maxOrderWaitMs).then(release);
      tail.then(() => {
        if (tails.get(from) === tail) tails.delete(from);
      });
    }
  }

  /**
   * A sender's long-lived stream: answers `200` at once (the stream is accepted) and hands every
   * frame's batch on as it arrives, checked like a request's body. A frame over `maxBodyBytes`,
   * one the codec refuses or, with a proven identity, a message claiming another sender ends the
   * stream (a sender that writes them is broken or hostile); a batch the validator or the node
   * refuses is dropped and the stream goes on, as a refused request would be answered and the
   * next one taken.
   */
  function handleStream(req: Request, from: string, proven: boolean): Response {
    if (req.body === null) return refuse("malformed", "The stream has no body", from);
    const reader = req.body.getReader();
    // A sender normally has one stream; a new one may mean it gave an old one up (which, on a
    // connection that died silently, this side might never notice), or be a stranger's under its
    // name (without mutual TLS). Past the limit, one ends: the one idle the longest if it is
    // idle (the dead one), else the newest, never a stream busy with the sender's traffic.
    const open = streams.get(from) ?? new Set<_OpenStream>();
    streams.set(from, open);
    if (open.size >= maxStreams) {
      const now = performance.now();
      let idlest: _OpenStream | null = null;
      let newest: _OpenStream | null = null;
      for (const s of open) {
        if (idlest === null || s.lastDelivery < idlest.lastDelivery) idlest = s;
        if (newest === null || s.opened > newest.opened) newest = s;
      }
      const victim = now - idlest!.lastDelivery >= streamIdleMs ? idlest! : newest!;
      open.delete(victim);
      victim.stop();
      logger.debug(
        `Ended a message stream from ${_quoteId(from)}: more than ${maxStreams} were open`,
      );
    }
    const opened = performance.now();
    const entry: _OpenStream = {
      stop: () => void reader.cancel().catch(() => {}),
      opened,
      lastDelivery: opened,
    };
    open.add(entry);
    let answer!: ReadableStreamDefaultController<Uint8Array>;
    const response = new ReadableStream<Uint8Array>({
      start(c) {
        answer = c;
      },
      cancel() {
        reader.cancel().catch(() => {});
      },
    });
    /** Handles one frame's bytes; returns why the stream must end, or null to go on. */
    const onFrame = (bytes: Uint8Array): string | null => {
      let messages: Message[];
      try {
        messages = decodeMessages(bytes);
      } catch (err) {
        refuse("malformed", `A stream frame: ${_describe(err)}`, from);
        return "a frame the codec refused";
      }
      if (proven) {
        const forged = _claimedByAnother(messages, from);
        if (forged !== null) {
          refuse("identity", forged, from);
          return "a message claimed another sender";
        }
      }
      if (validator !== undefined) {
        const refusal = validator.checkBatch(from, messages, "messages");
        if (refusal !== null) {
          refuseFor(refusal, from);
          return null;
        }
      } else if (self !== undefined) {
        const stray = messages.find((m) => m.to !== self);
        if (stray !== undefined) {
          refuse("misaddressed", `Message addressed to "${stray.to}" reached node "${self}"`, from);
          return null;
        }
      }
      try {
        handlers.onMessages(messages);
        entry.lastDelivery = performance.now();
      } catch (err) {
        if (err instanceof PeerRefusedError) refuse("conflict", err.message, from);
        else logger.warn(`Handling a batch from ${_quoteId(from)} failed: ${_describe(err)}`, err);
      }
      return null;
    };
    (async () => {
      let broken: string | null = null;
      try {
        broken = await _readFrames(reader, maxBodyBytes, onFrame);
        if (broken !== null && broken.startsWith("A frame of")) refuse("too_large", broken, from);
      } catch (err) {
        broken = `the stream broke off: ${_describe(err)}`;
        logger.debug(`The stream from ${_quoteId(from)} broke off: ${_describe(err)}`);
      } finally {
        open.delete(entry);
        if (open.size === 0 && streams.get(from) === open) streams.delete(from);
        reader.cancel().catch(() => {});
        // Ending the answer ends the stream: the sender sees it and, if it has more, reopens.
        try {
          answer.close();
        } catch { /* already cancelled */ }
      }
    })();
    return new Response(response, {
      status: 200,
      headers: { "content-type": "application/octet-stream" },
    });
  }

  async function handleSnapshot(req: Request, from: string, proven: boolean): Promise<Response> {
    const encoded = req.headers.get(MESSAGE_HEADER);
    if (encoded === null) return refuse("malformed", `Missing header "${MESSAGE_HEADER}"`, from);
    let msg: Message;
    try {
      const messages = decodeMessages(Uint8Array.fromBase64(encoded, { alphabet: "base64url" }));
      if (messages.length !== 1 || messages[0]!.type !== MessageType.Snap) {
        return refuse(
          "malformed",
          `Header "${MESSAGE_HEADER}" must hold exactly one Snap message`,
          from,
        );
      }
      msg = messages[0]!;
    } catch (err) {
      return refuse(
        "malformed",
        `Invalid header "${MESSAGE_HEADER}": ${(err as Error).message}`,
        from,
      );
    }
    if (proven) {
      const forged = _claimedByAnother([msg], from);
      if (forged !== null) return refuse("identity", forged, from);
    }
    if (validator !== undefined) {
      const refusal = validator.checkBatch(from, [msg], "snapshot");
      if (refusal !== null) return refuseFor(refusal, from);
    } else if (self !== undefined && msg.to !== self) {
      return refuse(
        "misaddressed",
        `Snapshot addressed to "${msg.to}" reached node "${self}"`,
        from,
      );
    }
    const declared = req.headers.get("content-length");
    if (declared !== null && Number(declared) > maxSnapshotBytes) {
      return refuse(
        "too_large",
        `Snapshot of ${declared} bytes exceeds the limit of ${maxSnapshotBytes} bytes`,
        from,
      );
    }
    const refused = handlers.snapshotRefusal?.(msg) ?? null;
    if (refused !== null) return refuse("conflict", refused, from);
    if (uploading) {
      return refuse(
        "snapshot_busy",
        "Another snapshot upload is in progress; try again later",
        from,
      );
    }
    uploading = true;
    const guard = _guardBody(req.body, maxSnapshotBytes, idleMs, totalMs);
    try {
      await handlers.onSnapshot(msg, guard.stream);
    } catch (err) {
      const limit = guard.failure();
      if (limit !== null) return refuse(limit.reason, limit.message, from);
      if (err instanceof PeerRefusedError) return refuse("conflict", err.message, from);
      if (err instanceof PeerNoSpaceError) return refuse("no_space", err.message, from);
      const broken = guard.bodyError();
      if (broken !== null) {
        return refuse("aborted", `The snapshot upload broke off: ${_describe(broken)}`, from);
      }
      // This node's own failure (its disk, most likely): the details, which name its files,
      // go to its log, not to the peer.
      logger.warn(`Storing the snapshot from "${msg.from}" failed: ${_describe(err)}`, err);
      return _error(500, _INTERNAL_ERROR);
    } finally {
      uploading = false;
      await guard.dispose();
    }
    return new Response(null, { status: 204 });
  }

  /**
   * Who sent the request, or the refusal: with a proven identity, that identity, which must be
   * another member and the one `x-raftkv-from` names; without, whoever the header names.
   */
  function authenticate(
    req: Request,
    info: PeerRequestInfo | undefined,
    since: number,
  ): string | Response {
    const from = req.headers.get(FROM_HEADER) ?? "";
    const peer = info?.peer ?? null;
    if (peer === null) {
      if (requireIdentity) return refuse("identity", "The connection proved no identity", from);
      return from;
    }
    const member = validator?.checkSender(peer) ?? null;
    if (member !== null) {
      if (member.kind === "not-member" && from === peer) unknownSender(peer, since);
      return refuse(
        "not_member",
        `The connection proved ${_quoteId(peer)}: ${member.reason}`,
        from,
      );
    }
    if (from !== peer) {
      return refuse(
        "identity",
        `Sender ${_quoteId(from)} claimed on a connection that proved ${_quoteId(peer)}`,
        from,
      );
    }
    return peer;
  }

  /** Tells the node a non-member was refused (it may be a member added while this one was away). */
  function unknownSender(sender: string, since: number): void {
    try {
      handlers.onUnknownSender?.(sender, since);
    } catch (err) {
      logger.warn(`onUnknownSender threw: ${_describe(err)}`, err);
    }
  }

  /** The answer to a members query: this node's committed configuration. */
  function answerMembers(): Response {
    const conf = handlers.committedMembers?.() ?? null;
    if (conf === null) return _error(503, "This node has no configuration yet");
    return Response.json(conf);
  }

  return async (req: Request, info?: PeerRequestInfo): Promise<Response> => {
    const from = req.headers.get(FROM_HEADER) ?? "";
    try {
      const path = new URL(req.url).pathname;
      // Another cluster's node is refused before anything else, forwarded client requests too.
      const otherCluster = handlers.checkCluster?.(req.headers.get(CLUSTER_HEADER) ?? undefined);
      if (otherCluster) return refuse("other_cluster", `Refused: ${otherCluster}`, from);
      if (options.forward && path.startsWith(`${FORWARD_PATH_PREFIX}/`)) {
        // The API checks that the proven peer (if any) is the member that says it forwarded.
        const peer = info?.peer ?? null;
        if (peer === null && requireIdentity) {
          return refuse("identity", "The connection proved no identity", from);
        }
        return await options.forward(req, peer);
      }
      if (
        path !== MESSAGES_PATH && path !== SNAPSHOT_PATH && path !== STREAM_PATH &&
        path !== MEMBERS_PATH
      ) {
        countRefusal("unknown_path");
        return _error(404, `No such path "${path}"`);
      }
      if (req.method !== "POST") {
        countRefusal("unknown_path");
        return _error(405, `Method "${req.method}" not allowed on "${path}"`, { allow: "POST" });
      }
      // A sender that a committed membership change removed is told so (it may have been down
      // while its removal committed and cannot learn it from the log).
      // Only a sender that says it counts itself a member, by a configuration older than the
      // committed one that leaves it out, is told so: others (strangers) get 403 below.
      const proved = info?.peer ?? null;
      const since = Number(req.headers.get(MEMBER_SINCE_HEADER) ?? "");
      if ((proved === null || proved === from) && Number.isSafeInteger(since) && since > 0) {
        const removedAt = handlers.removedAt?.(proved ?? from, since) ?? 0;
        if (removedAt > 0) return refuseRemoved(proved ?? from, removedAt);
      }
      // A sender that is not another member, or not the one the connection proved, is refused
      // before anything is read or stored.
      const claimed = Number.isSafeInteger(since) && since > 0 ? since : 0;
      const sender = authenticate(req, info, claimed);
      if (sender instanceof Response) return sender;
      const refusal = validator?.checkSender(sender) ?? null;
      if (refusal !== null) {
        if (refusal.kind === "not-member") unknownSender(sender, claimed);
        return refuseFor(refusal, sender);
      }
      if (path === MEMBERS_PATH) return answerMembers();
      const proven = (info?.peer ?? null) !== null;
      if (path === STREAM_PATH) return handleStream(req, sender, proven);
      return path === MESSAGES_PATH
        ? await handleMessages(req, sender, proven)
        : await handleSnapshot(req, sender, proven);
    } catch (err) {
      logger.warn(`Peer request failed: ${_describe(err)}`, err);
      return _error(500, _INTERNAL_ERROR);
    } finally {
      if (req.body !== null && !req.body.locked && !req.bodyUsed) {
        await req.body.cancel().catch(() => {});
      }
    }
  };
}

/** Why a batch from proven sender `from` is refused, if a message claims another sender. */
function _claimedByAnother(messages: readonly Message[], from: string): string | null {
  const i = messages.findIndex((m) => m.from !== from);
  if (i === -1) return null;
  return `Message ${i + 1} of ${messages.length} claims sender ${
    _quoteId(messages[i]!.from)
  } on a connection that proved ${_quoteId(from)}`;
}

/** The error text of a 500 answer: the details stay in the node's log. */
const _INTERNAL_ERROR = "The request failed on this node (the details are in its log)";

/** The reason of each kind of refusal of the validator. */
const _KIND_REASON = {
  "not-member": "not_member",
  misaddressed: "misaddressed",
  invalid: "invalid",
} as const satisfies Record<RefusalKind, PeerRefusalReason>;

/** The reasons {@linkcode createPeerHandler}'s `refuse` answers with a status of its own. */
type _Answered = Exclude<PeerRefusalReason, "unknown_path" | "handshake">;

/** The HTTP status of each reason {@linkcode createPeerHandler}'s `refuse` answers. */
const _REFUSAL_STATUS: Record<_Answered, number> = {
  other_cluster: 403,
  removed: 410,
  not_member: 403,
  identity: 403,
  too_many_requests: 429,
  snapshot_busy: 429,
  too_large: 413,
  aborted: 400,
  malformed: 400,
  invalid: 400,
  misaddressed: 421,
  conflict: 409,
  timeout: 408,
  no_space: 507,
};

/** A snapshot upload that broke a limit: which (`too_large` 413, `timeout` 408) and why. */
class _UploadLimitError extends Error {
  readonly reason: "too_large" | "timeout";

  constructor(reason: "too_large" | "timeout", message: string) {
    super(message);
    this.name = "UploadLimitError";
    this.reason = reason;
  }
}

/**
 * Wraps a snapshot upload's body so that it fails (and stops reading the request) once it passes
 * `maxBytes`, sends nothing for `idleMs` while a read waits, or is not finished after `totalMs`.
 * `failure()` says which limit broke, `bodyError()` how the request body itself failed (the
 * sender reset or cut it); `dispose()` clears the timers and releases the request.
 */
function _guardBody(
  source: ReadableStream<Uint8Array> | null,
  maxBytes: number,
  idleMs: number,
  totalMs: number,
): {
  stream: ReadableStream<Uint8Array>;
  failure(): _UploadLimitError | null;
  bodyError(): unknown;
  dispose(): Promise<void>;
} {
  const reader = (source ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() }))
    .getReader();
  let failure: _UploadLimitError | null = null;
  let bodyError: unknown = null;
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  let finished = false;
  let received = 0;
  const fail = (err: _UploadLimitError) => {
    if (failure !== null || finished) return;
    failure = err;
    finished = true;
    clearTimeout(idleTimer);
    clearTimeout(totalTimer);
    try {
      controller.error(err);
    } catch { /* already closed */ }
    reader.cancel(err).catch(() => {});
  };
  const totalTimer = setTimeout(
    () =>
      fail(new _UploadLimitError("timeout", `Snapshot upload not complete after ${totalMs} ms`)),
    totalMs,
  );
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    async pull(c) {
      idleTimer = setTimeout(
        () =>
          fail(new _UploadLimitError("timeout", `Snapshot upload sent nothing for ${idleMs} ms`)),
        idleMs,
      );
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
      } catch (err) {
        clearTimeout(idleTimer);
        if (failure === null) {
          finished = true;
          bodyError = err ?? new Error("the request body failed");
          clearTimeout(totalTimer);
          c.error(err);
        }
        return;
      } finally {
        clearTimeout(idleTimer);
      }
      if (failure !== null) return;
      if (result.done) {
        finished = true;
        clearTimeout(totalTimer);
        c.close();
        return;
      }
      received += result.value.byteLength;
      if (received > maxBytes) {
        fail(
          new _UploadLimitError(
            "too_large",
            `Snapshot upload exceeds the limit of ${maxBytes} bytes`,
          ),
        );
        return;
      }
      c.enqueue(result.value);
    },
    cancel(reason) {
      finished = true;
      clearTimeout(idleTimer);
      clearTimeout(totalTimer);
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return {
    stream,
    failure: () => failure,
    bodyError: () => bodyError,
    async dispose() {
      clearTimeout(idleTimer);
      clearTimeout(totalTimer);
      if (!finished) {
        finished = true;
        await reader.cancel().catch(() => {});
      }
    },
  };
}

function _describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Quotes a sender id for a log line, shortened: a hostile id can be 64 KiB long. */
function _quoteId(id: string): string {
  return JSON.stringify(id.length > 64 ? `${id.slice(0, 64)}...` : id);
}

/**
 * Wraps a request body so that aborting `signal` errors it (and cancels `source`).
 *
 * Deno's fetch, when aborted, neither cancels a streaming request body nor resets the HTTP/2
 * stream: the receiver would wait for the rest of the body forever. Erroring the body makes the
 * client reset the stream, so the receiver's body read fails. (Closing it instead would make the
 * receiver accept a truncated snapshot.)
 */
function _abortableBody(
  source: ReadableStream<Uint8Array>,
  signal: AbortSignal,
): ReadableStream<Uint8Array<ArrayBuffer>> {
  const reader = source.getReader();
  let onAbort = () => {};
  return new ReadableStream<Uint8Array<ArrayBuffer>>({
    start(controller) {
      onAbort = () => {
        controller.error(signal.reason);
        reader.cancel(signal.reason).catch(() => {});
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    },
    async pull(controller) {
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
      } catch (err) {
        signal.removeEventListener("abort", onAbort);
        if (!signal.aborted) controller.error(err);
        return;
      }
      if (signal.aborted) return;
      if (result.done) {
        signal.removeEventListener("abort", onAbort);
        controller.close();
      } else {
        controller.enqueue(result.value as Uint8Array<ArrayBuffer>);
      }
    },
    cancel(reason) {
      signal.removeEventListener("abort", onAbort);
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/**
 * Reads a message stream's frames (a 4-byte big-endian length, then that many bytes of
 * {@linkcode encodeMessages} output) and hands each to `onFrame`, until the body ends (null), a
 * frame is longer than `limit` or `onFrame` says why to stop (the reason). Rejects when the body
 * breaks off.
 */
async function _readFrames(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  limit: number,
  onFrame: (bytes: Uint8Array) => string | null,
): Promise<string | null> {
  /** Received bytes not yet handed on: `chunks[0]` from `offset`. */
  let chunks: Uint8Array[] = [];
  let offset = 0;
  let buffered = 0;
  /** The length of the frame being read, once its prefix is in; -1 before. */
  let need = -1;
  const take = (n: number): Uint8Array => {
    const first = chunks[0]!;
    let out: Uint8Array;
    if (first.byteLength - offset >= n) {
      // A copy, not a view: decoded entries keep views of the frame, and a view would keep the
      // whole chunk (and the buffer under it) alive for as long as the entry lives in the log.
      out = first.slice(offset, offset + n);
      offset += n;
    } else {
      out = new Uint8Array(n);
      let filled = 0;
      while (filled < n) {
        const chunk = chunks[0]!;
        const part = Math.min(n - filled, chunk.byteLength - offset);
        out.set(chunk.subarray(offset, offset + part), filled);
        filled += part;
        offset += part;
        if (offset === chunk.byteLength) {
          chunks.shift();
          offset = 0;
        }
      }
    }
    if (chunks.length > 0 && offset === chunks[0]!.byteLength) {
      chunks.shift();
      offset = 0;
    }
    buffered -= n;
    return out;
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return buffered === 0 ? null : "the stream ended inside a frame";
    if (value.byteLength === 0) continue;
    chunks.push(value);
    buffered += value.byteLength;
    for (;;) {
      if (need === -1) {
        if (buffered < 4) break;
        const prefix = take(4);
        need = ((prefix[0]! << 24) | (prefix[1]! << 16) | (prefix[2]! << 8) | prefix[3]!) >>> 0;
        if (need > limit) return `A frame of ${need} bytes exceeds the limit of ${limit} bytes`;
      }
      if (buffered < need) break;
      const frame = take(need);
      need = -1;
      const stop = onFrame(frame);
      if (stop !== null) return stop;
    }
    if (chunks.length === 0) chunks = [];
  }
}

/** A message stream a sender holds open. */
interface _OpenStream {
  /** Ends it (stops reading; the answer then ends). */
  stop: () => void;
  /** When it was accepted (performance.now()). */
  opened: number;
  /** When it last delivered a batch, or when it was accepted. */
  lastDelivery: number;
}

/** Resolves once `promise` settles or `ms` have passed, whichever comes first. */
function _settledWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
  const settled = promise.then(() => {}, () => {});
  return Promise.race([settled, expired]).finally(() => clearTimeout(timer));
}

function _error(status: number, error: string, headers?: Record<string, string>): Response {
  return Response.json({ error }, headers === undefined ? { status } : { status, headers });
}

/** Drops the response body without reading it. */
async function _discardBody(res: Response): Promise<void> {
  await res.body?.cancel().catch(() => {});
}

/**
 * The `error` of a JSON error response, else the body text (shortened). Reading ends when
 * `signal` aborts (the request's deadline): a body that never ends cannot hold up the sender.
 */
async function _errorDetail(res: Response, signal: AbortSignal): Promise<string> {
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    const text = await Promise.race([res.text(), aborted]);
    try {
      const json = JSON.parse(text);
      if (typeof json?.error === "string") return json.error;
    } catch {
      // Not JSON: fall through to the raw text.
    }
    return text.length > 200 ? `${text.slice(0, 200)}...` : text;
  } catch (err) {
    await res.body?.cancel().catch(() => {});
    return `(unreadable body: ${err})`;
  } finally {
    signal.removeEventListener("abort", onAbort);
    aborted.catch(() => {});
  }
}

/**
 * Whether `msg` may wait one more event-loop turn before it is written: an append without
 * entries, which only tells a follower of a new commit index (or probes it). A write is answered
 * once the leader has committed it, without waiting for that news; a read on a follower may wait
 * for it to apply what the leader committed, one turn of the leader's event loop longer.
 */
function _canWait(msg: Message): boolean {
  return msg.type === MessageType.App && msg.entries.length === 0;
}

/** Drops the oldest App/Heartbeat message (or, if there is none, the oldest message). */
function _dropOldest(peer: _Peer): void {
  const queue = peer.queue;
  const i = queue.findIndex((m) => m.type === MessageType.App || m.type === MessageType.Heartbeat);
  if (i === -1) queue.shift();
  else queue.splice(i, 1);
  peer.dropped++;
}

function _endpoint(peer: PeerAddress, path: string): string {
  let url: URL;
  try {
    url = new URL(peer.rpcUrl);
  } catch {
    throw new TypeError(`Invalid rpcUrl for peer "${peer.id}": "${peer.rpcUrl}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`Invalid rpcUrl for peer "${peer.id}": "${peer.rpcUrl}" is not http(s)`);
  }
  url.pathname = url.pathname.replace(/\/+$/, "") + path;
  url.search = "";
  url.hash = "";
  return url.href;
}
