/**
 * The client REST API of a node, as a plain `(req: Request) => Promise<Response>` function for
 * `Deno.serve`, written against {@linkcode KvBackend}.
 *
 * Routes:
 *
 * | Method   | Path              | Body            | Answer                                  |
 * | -------- | ----------------- | --------------- | --------------------------------------- |
 * | `POST`   | `/v1/data`        | `{"k","v"}`     | 200 `{"k","v","index",...revision}`     |
 * | `PUT`    | `/v1/data/{key}`  | `{"v"}`         | 200 `{"k","v","index",...revision}`     |
 * | `GET`    | `/v1/data/{key}`  |                 | 200 `{"k","v",...revision}`, or 404     |
 * | `DELETE` | `/v1/data/{key}`  |                 | 200 `{"k","deleted","index"}`           |
 * | `GET`    | `/v1/data`        |                 | 200 `{"items","next"}`: a range         |
 * | `DELETE` | `/v1/data`        |                 | 200 `{"deleted","index"}`: a range      |
 * | `POST`   | `/v1/txn`         | a transaction   | 200 `{"succeeded","index","results"}`   |
 * | `GET`    | `/v1/status`      |                 | 200 the node's {@linkcode NodeStatus}   |
 * | `GET`    | `/v1/watch`       |                 | 200 changes as Server-Sent Events       |
 * | `GET`    | `/v1/snapshot`    |                 | 200 a backup, streamed                  |
 * | `GET`    | `/health`         |                 | 200 `{"status":"ok"}` (process alive)   |
 * | `GET`    | `/ready`          |                 | 200 `{"ready":true}`, or 503            |
 * | `GET`    | `/metrics`        |                 | 200 this node's Prometheus metrics      |
 * | `GET`    | `/v1/cluster`     |                 | 200 every member's status and numbers   |
 * | `GET`    | `/ui/`            |                 | 200 the dashboard (`/ui` redirects)     |
 * | `POST`   | `/v1/leader/transfer` | `{"to"}`, optional | 200 `{"leader","previous"}` (admin) |
 * | `POST`   | `/v1/leases`      | `{"ttl"}`       | 201 `{"id","ttl",...}`; more in `leases.ts` |
 * | `GET`    | `/v1/members`     |                 | 200 `{"members":[...]}` (admin)         |
 * | `POST`   | `/v1/members`     | `{"node_id","rpc_url","api_url"}` | 201, joins as a learner (admin) |
 * | `DELETE` | `/v1/members/:id` |                 | 200 `{"removed","index","members"}` (admin) |
 *
 * A revision is `create_index`, `mod_index`, `version`. Writes take a compare-and-set condition
 * (`?cas=N` or `"cas": N`: 412 when it fails) and an `Idempotency-Key` header (a retry answers the
 * first outcome; 422 for a key reused for another request): see `keys.ts` and `outcome.ts`.
 * Ranges are in `ranges.ts`, transactions in `txn.ts`. Every answer carries
 * {@linkcode INDEX_HEADER}, the applied index it reflects.
 *
 * `GET /v1/data/{key}` takes `?consistency=linearizable|stale|lease` (default `linearizable`).
 *
 * Keys in the path are percent-encoded (`/v1/data/a%2Fb` is the key `a/b`); everything after
 * `/v1/data/` is the key, so an unencoded `/` is part of it too. The path is normalized as URLs
 * are (`a/../b` is `b`), so the keys `.` and `..` can be written but not addressed in a path.
 * `POST` and `PUT` (which always carry a body) must say `Content-Type: application/json`
 * (parameters such as `; charset=utf-8` are allowed, case does not matter); anything else is
 * refused with 415 before the body is read. A browser can send a form or `text/plain` to another
 * origin without asking first, but not `application/json`, so a page cannot write by accident.
 * Fields other than `k`, `v` and `cas` (a compare-and-set, as `?cas=N`) are ignored.
 *
 * Back-pressure: past `maxInflightRequests` requests, or `maxInflightBytes` of their bodies, in
 * progress (`/health`, `/ready` and `/metrics` aside) a request is answered 429 at once, its body
 * unread. A request stays in progress, its answer's bytes counted too, until the server has taken
 * the answer's body (chunk by chunk, as the client reads); one the client takes nothing of for
 * `responseStallMs` is cut off. The bytes of such answers count per client (its remote IP address)
 * too: a client with `maxClientUnreadBytes` of answers not yet read is answered 429 at once, and a
 * `GET` whose large answer would take it past that is answered 429 instead (a write is answered
 * all the same). A blocking read gives its slot back while it waits (it counts
 * against `maxWatchers` with the watch streams then) and takes one again to read (429 if none is
 * free); watch streams and backups hold no slot once they stream;
 * past `maxForwardedRequests` forwards in progress a request that needs the leader is answered
 * 429; past `maxConcurrentBackups` backups streaming, `/v1/snapshot` is answered 429; a backup
 * not fully read within `backupTimeoutMs` is cut off. All of these carry `Retry-After`.
 * `/metrics` is not counted either: a node at its limits can still be watched.
 *
 * Every error answer is JSON, `{"error": "..."}` plus details, with `Content-Type:
 * application/json`. A rejected request changes nothing: everything is validated before the
 * backend is called.
 *
 * Authentication: with `tokens` set, every request but `/health` and `/ready` needs
 * `Authorization: Bearer <token>` of a role that allows it (`read` for reads and `/v1/status`,
 * `write` for writes, `admin` for `/v1/snapshot` and anything else): 401 with
 * `WWW-Authenticate: Bearer realm="raftkv"` without a known token, 403 when its role falls short.
 * This is checked first, before the request counts against any budget or its body is read.
 *
 * A node that is not the leader forwards writes, and the reads its backend cannot confirm itself
 * (a follower serves linearizable and lease reads through its leader's read index), to the leader
 * it knows, and relays the answer; see {@linkcode createApiHandler}.
 *
 * This module routes; the rest lives beside it: `auth.ts` (tokens and roles), `validate.ts`
 * (request checks), `deadline.ts` (request deadlines), `errors.ts` (error answers), `limits.ts`
 * (the 429 budgets), `forward.ts` (forwarding to the leader) and `forwarder.ts` (the HTTP client
 * that carries forwards).
 *
 * @module
 */

import type { KvBackend } from "../node/backend.ts";
import { nonNegativeInt, positiveInt } from "../util/options.ts";
import { METRICS_CONTENT_TYPE, MetricsRegistry } from "../util/metrics.ts";
import { HttpMetrics } from "./http_metrics.ts";
import {
  type ApiToken,
  type Caller,
  CALLER_HEADER,
  requiredRole,
  TokenAuthenticator,
} from "./auth.ts";
import { type ApiContext, holdForToken } from "./context.ts";
import { ApiError, errorResponse, jsonResponse, logLine, quote } from "./errors.ts";
import {
  acceptForwarded,
  acceptForwardedItem,
  FORWARD_PATH_PREFIX,
  FORWARDED_BY_HEADER,
} from "./forward.ts";
import {
  type BatchContext,
  type BatchItem,
  FORWARD_BATCH_PATH,
  serveBatch,
} from "./forward_batch.ts";
import { defaultForwarder, type Forwarder } from "./forwarder.ts";
import { deleteRoute, readRoute, writeRoute } from "./keys.ts";
import {
  type AdmittedRequest,
  ApiLimits,
  clientOf,
  MIN_RESPONSE_STALL_MS,
  type RefusalLimit,
} from "./limits.ts";
import { INDEX_HEADER } from "./outcome.ts";
import { deleteRangeRoute, readRangeRoute } from "./ranges.ts";
import { txnRoute } from "./txn.ts";
import { leaseRoutes, LEASES_PATH } from "./leases.ts";
import { type ClusterMember, gatherCluster, MEMBER_TIMEOUT_MS } from "./cluster.ts";
import { isUiPath, uiResponse } from "./ui.ts";
import { leaderTransferRoute } from "./admin.ts";
import { addMemberRoute, listMembersRoute, MEMBERS_PREFIX, removeMemberRoute } from "./members.ts";
import { checkKey, pathKey, singleParams } from "./validate.ts";
import { watchRoute } from "./watch.ts";

export {
  closeForwarder,
  createForwarder,
  defaultForwarder,
  ForwardConnectError,
  type Forwarder,
  type ForwarderOptions,
} from "./forwarder.ts";
export { FORWARD_PATH_PREFIX, FORWARDED_BY_HEADER, FORWARDED_TO_HEADER } from "./forward.ts";
export { IDEMPOTENCY_HEADER, INDEX_HEADER, REPLAYED_HEADER } from "./outcome.ts";
export {
  type AccessRole,
  type ApiToken,
  type Caller,
  CALLER_HEADER,
  requiredRole,
  WWW_AUTHENTICATE,
} from "./auth.ts";
// The node's side of the API, re-exported so that the API's documentation is whole.
export type {
  Alarm,
  Consistency,
  DeleteResult,
  KvBackend,
  NodeStatus,
  NotLeaderError,
  OverloadedError,
  WriteResult,
} from "../node/backend.ts";
export type { NodeId, Role } from "../raft/types.ts";
export type { ClusterMember, ClusterView, MemberView } from "./cluster.ts";

/** Options of {@linkcode createApiHandler}. */
export interface ApiOptions {
  /** This node's id, sent in the {@linkcode FORWARDED_BY_HEADER} of forwarded requests. */
  selfId: string;
  /**
   * Deadline of one request on this node in milliseconds, from its arrival (reading the body
   * included) until the backend answers.
   *
   * @default {5000}
   */
  apiTimeoutMs?: number;
  /**
   * Deadline of a request forwarded to the leader in milliseconds, until its whole answer has
   * arrived.
   *
   * @default {5000}
   */
  apiFwdTimeoutMs?: number;
  /**
   * Largest key in UTF-8 bytes.
   *
   * @default {1024}
   */
  maxKeyBytes?: number;
  /**
   * Largest value in UTF-8 bytes.
   *
   * @default {1048576}
   */
  maxValueBytes?: number;
  /**
   * Largest request body in bytes. JSON escapes make a body longer than the value it carries, up
   * to six times (`\u0000` for one byte): the default leaves room for a key and a value at their
   * limits however a client's encoder escapes them.
   *
   * @default {6 * (maxKeyBytes + maxValueBytes) + 4096}
   */
  maxBodyBytes?: number;
  /**
   * Every member, this node included: a follower forwards to the leader's peer URL (`rpc_url`),
   * below {@linkcode FORWARD_PATH_PREFIX}, and only a listed member may forward to this node
   * (without the list a follower cannot forward: 503); `GET /v1/cluster` asks the others at their
   * API URLs.
   *
   * @default {[]}
   */
  members?: readonly (ClusterMember & { rpcUrl: string })[];
  /**
   * The bearer tokens the API accepts. Without them (or with none) the API is open.
   *
   * @default {[]}
   */
  tokens?: readonly ApiToken[];
  /**
   * Sends forwarded requests to the leader.
   *
   * @default {defaultForwarder}
   */
  forward?: Forwarder;
  /**
   * Most requests in progress on this node at once; one more is answered 429 with `Retry-After`
   * at once, without reading its body. `GET /health`, `GET /ready` and `GET /metrics` are not
   * counted. A request is in progress until its answer's body has been taken by the server (see
   * `responseStallMs`), but not while a blocking read waits (those count against `maxWatchers`),
   * nor while a watch stream or a backup streams (bounded by their own limits).
   *
   * @default {1024}
   */
  maxInflightRequests?: number;
  /**
   * Most bytes of request bodies in progress at once: a request counts its `Content-Length`, or
   * `maxBodyBytes` when a `POST` or `PUT` declares none (a chunked body). One that would pass it
   * is answered 429 with `Retry-After` at once, without reading its body, unless it is the only
   * request in progress. An answer's body counts too, from when it is ready until the server has
   * taken all of it. Bounds the memory that bodies being read and parsed, and answers a client
   * does not read, hold.
   *
   * @default {67108864}
   */
  maxInflightBytes?: number;
  /**
   * Most bytes of answers one client (a remote IP address; see `clientOf` in `limits.ts`) may
   * have that the server has not taken yet, 0 for no such bound. These are the answers of more
   * than 64 KiB counted against `maxInflightBytes` until taken (see `responseStallMs`): without
   * this bound one client that does not read (HTTP/2 streams with a shut flow-control window)
   * could hold all of `maxInflightBytes` and make the node answer 429 to everyone. A request from
   * a client that has this many bytes unread is answered 429 with `Retry-After` at once, without
   * reading its body; a `GET` (no side effect) whose answer would take its client past it (unless
   * the client holds none yet) is answered 429 instead of that answer; any other request's answer
   * is sent and counted all the same (its effect has happened). Requests served without the
   * connection's address (`ApiHandler.forwarded`: the member that forwarded them bounds its own
   * clients; or a handler called without it) are not bounded so. At most `maxInflightBytes`.
   *
   * @default {max(1, floor(maxInflightBytes / 4))}
   */
  maxClientUnreadBytes?: number;
  /**
   * How long an answer's body (other than a watch stream's or a backup's) may go without the
   * server taking a chunk of it, in milliseconds: a client that does not read its answer (or an
   * HTTP/2 stream whose flow-control window stays shut) is cut off then, and the request's slot
   * and bytes are released. The server takes the body in chunks of `RESPONSE_CHUNK_BYTES` (64 KiB).
   *
   * @default {max(apiTimeoutMs, 30000)}
   */
  responseStallMs?: number;
  /**
   * Most requests being forwarded to the leader at once; one more that needs forwarding is
   * answered 429 with `Retry-After` (nothing was sent).
   *
   * @default {256}
   */
  maxForwardedRequests?: number;
  /**
   * Most `GET /v1/snapshot` downloads streaming at once; one more is answered 429 with
   * `Retry-After`. Each holds a copy-on-write view of the state that grows with every write.
   *
   * @default {2}
   */
  maxConcurrentBackups?: number;
  /**
   * Deadline of a `GET /v1/snapshot` download in milliseconds: a reader that has not taken the
   * whole stream by then gets a broken stream, and the view it held is released.
   *
   * @default {600000}
   */
  backupTimeoutMs?: number;
  /**
   * The `Retry-After` header, in seconds, of answers that say "try again" (429, 503).
   *
   * @default {1}
   */
  retryAfterSeconds?: number;
  /**
   * Receives the one line logged per 5xx answer (`/ready` answering 503 is not logged: it is an
   * answer, not a failure).
   *
   * @default {console.error}
   */
  logError?: (line: string) => void;
  /**
   * The registry `GET /metrics` renders (this node's, never forwarded); the API's own metrics
   * are registered in it.
   *
   * @default {a registry of its own, holding only the API's metrics}
   */
  metrics?: MetricsRegistry;
  /**
   * Interval of the comment heartbeats of a `GET /v1/watch` stream, in milliseconds.
   *
   * @default {15000}
   */
  watchHeartbeatMs?: number;
  /**
   * Most events waiting for one watcher that does not read fast enough (beyond the backlog it
   * asked for); one more and it is cut off with a final `event: error` (see `watch.ts`).
   *
   * @default {1024}
   */
  watchBufferEvents?: number;
  /**
   * Most bytes of events waiting for one watcher (beyond its backlog; an event counts its key's
   * and value's UTF-8 bytes plus 64); past it, it is cut off as past `watchBufferEvents`.
   *
   * @default {16777216}
   */
  watchBufferBytes?: number;
  /**
   * Most bytes of events waiting for all the watch streams together, each event counted once;
   * past it the stream with the most waiting is cut off at once (see `watch.ts`).
   *
   * @default {268435456}
   */
  maxWatchBytes?: number;
  /**
   * Most `GET /v1/watch` streams open and blocking reads (`GET /v1/data/{key}?index=N`) waiting,
   * together, at once; one more is answered 429 with `Retry-After`. Each stream holds a buffer of
   * up to `watchBufferEvents` events and a heartbeat timer; each waiting read a subscription to
   * the change history and a timer.
   *
   * @default {10000}
   */
  maxWatchers?: number;
  /**
   * Receives one line per request refused with 401 or 403 (the token's name, never the token),
   * and its kind for rate limiting (one per status: the line quotes the client's path).
   *
   * @default {not logged}
   */
  logRefusal?: (line: string, kind: string) => void;
}

/**
 * What `Deno.serve` tells a handler about a request's connection (a part of
 * `Deno.ServeHandlerInfo`).
 */
export interface ApiRequestInfo {
  /** The client's end of the connection: its IP address is what `maxClientUnreadBytes` bounds. */
  readonly remoteAddr: Deno.Addr;
}

/**
 * The REST API's request handler, plus its entry for requests forwarded by another member.
 */
export interface ApiHandler {
  /**
   * Serves a client request (authorised here when tokens are configured).
   *
   * @param req The request.
   * @param info Its connection, as `Deno.serve` passes it: its remote address is the client
   * `maxClientUnreadBytes` counts against. Without it the request is not bounded per client.
   */
  (req: Request, info?: ApiRequestInfo): Promise<Response>;
  /**
   * Serves a request another member forwarded to this node's peer port below
   * {@linkcode FORWARD_PATH_PREFIX}, as authorised by that member (see `acceptForwarded` in
   * `forward.ts`).
   *
   * @param req The request as the peer server got it.
   * @param sender The sending member's id when the peer transport authenticated it, else `null`.
   */
  forwarded(req: Request, sender: string | null): Promise<Response>;
  /**
   * Replaces the bearer tokens the API accepts (a node reloads its tokens file on SIGHUP):
   * requests from now on need one of `tokens`. What still runs on a token that is no longer
   * among them with a role that reads ends at once: a watch stream with a final `event: error`
   * saying so, a blocking read (`?index=&wait=`) with 401.
   *
   * @param tokens The new tokens.
   * @returns How many watch streams and blocking reads were ended.
   * @throws {RangeError} If the API was created without tokens (it stays open: tokens are turned
   * on by a restart), or as {@linkcode TokenAuthenticator} for bad tokens; the tokens in force
   * then stay in force.
   */
  reloadTokens(tokens: readonly ApiToken[]): number;
}

/**
 * Creates the request handler of the REST API.
 *
 * When the backend throws {@linkcode NotLeaderError} and `backend.status().leader` names another
 * node, the original request (method, path, query and body bytes) is forwarded to that node's
 * peer URL below {@linkcode FORWARD_PATH_PREFIX} with the {@linkcode FORWARDED_BY_HEADER} and the
 * caller this node authorised ({@linkcode CALLER_HEADER}), and its status, `Content-Type`,
 * `Retry-After` and body are relayed. A request that already carries that header is never
 * forwarded again (the answer is 503). The leader serves it through
 * {@linkcode ApiHandler.forwarded}.
 *
 * Status codes: 200 success; 400 malformed request; 401 no known token; 403 the token's role
 * does not allow the request; 404 unknown path or key; 405 wrong method
 * (with `Allow`); 408 body not received in time; 410 a watch from an index older than the change
 * history; 412 a compare-and-set whose condition failed;
 * 413 key, value or body too large, or a transaction too long; 415 a write without
 * `Content-Type: application/json`; 422 an idempotency key reused for a different request; 429 too
 * many requests, forwards or backups in progress, or too many bytes of this client's answers not
 * yet read (with `Retry-After`); 499 the client went away; 500 unexpected failure; 502 a forwarded
 * write failed after it may have been sent; 503 no leader, not applied, too many writes waiting on
 * the leader, shutting down, leader unreachable or changed (with `Retry-After`); 504 deadline passed
 * (a write may or may not have been applied); 507 the leader's disk is full, or the followers'
 * are and the rest are not a quorum (`"alarm":"NOSPACE"`, with the full `members`), or the write
 * would take the data past
 * its quota (`"code":"quota_exceeded"`, with `data_bytes` and `quota_bytes`); nothing done.
 *
 * @example Usage
 * ```ts ignore
 * import { closeForwarder, createApiHandler } from "./handler.ts";
 *
 * const server = Deno.serve({ port: 7777 }, createApiHandler(backend, { selfId: "node-1" }));
 * // on shutdown:
 * await server.shutdown();
 * closeForwarder();
 * ```
 *
 * @param backend The node the API reads and writes.
 * @param options The node's id and the API's limits.
 * @returns The handler to pass to `Deno.serve`.
 * @throws {RangeError} If an option is out of range.
 */
export function createApiHandler(backend: KvBackend, options: ApiOptions): ApiHandler {
  // The limits tell `http` which of them refused a request (only while serving: once it is made).
  const ctx = _resolveOptions(backend, options, (limit) => http.refused(limit));
  const http = new HttpMetrics(ctx.metrics, ctx.limits);
  const logRefusal = options.logRefusal ?? (() => {});
  const tooMany = () => jsonResponse(429, { error: "too many requests" }, ctx.retryAfter);
  const serve = async (
    req: Request,
    url: URL,
    caller: Caller | null,
    client: string | null,
  ): Promise<Response> => {
    const counted = url.pathname !== "/health" && url.pathname !== "/ready" &&
      url.pathname !== "/metrics";
    const admitted = counted ? ctx.limits.admit(ctx.limits.declaredBodyBytes(req), client) : null;
    if (counted && admitted === null) return tooMany();
    let res: Response;
    try {
      res = await _answer(ctx, req, url, caller, admitted);
    } catch (err) {
      admitted?.release();
      throw err;
    }
    if (admitted === null) return res;
    // A watch stream and a backup are bounded apart (--max-watchers, --max-concurrent-backups and
    // --backup-timeout); a HEAD answer's body is never sent.
    const ownBound = res.status === 200 &&
      (url.pathname === "/v1/watch" || url.pathname === "/v1/snapshot");
    if (ownBound || req.method === "HEAD") {
      admitted.release();
      return res;
    }
    // Until its body has been taken by the server, the answer keeps the request's slot and counts
    // its bytes, on the node and for its client (a client that does not read it cannot make
    // answers pile up). A read past its client's share is refused instead; a write (its effect
    // has happened) is sent and counted all the same.
    return await admitted.send(res, _SIDE_EFFECT_FREE.has(req.method) ? tooMany : undefined);
  };
  /** Answers an authentication refusal (401, 403) or a bad forward, logging it. */
  const refuse = (req: Request, err: unknown): Response => {
    if (!(err instanceof ApiError)) throw err;
    // One kind per status: the line quotes the path, which the client chooses.
    logRefusal(
      logLine(req, URL.parse(req.url) ?? new URL("http://invalid"), err.status, err.message),
      `api refused ${err.status}`,
    );
    return errorResponse(err);
  };
  const handler = async (req: Request, info?: ApiRequestInfo): Promise<Response> => {
    const started = performance.now();
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      const error = new ApiError(400, `the request URL ${quote(req.url)} is not valid`);
      return http.record(null, req.method, errorResponse(error), started);
    }
    // The headers a member sends with a forward come on the peer port only: from a client, the
    // node would take its request as forwarded to it (and never forward it to the leader).
    for (const name of [FORWARDED_BY_HEADER, CALLER_HEADER]) {
      if (req.headers.has(name)) {
        const error = new ApiError(
          400,
          `${name} is a header between members (on the peer port); a client must not send it`,
        );
        return http.record(url.pathname, req.method, errorResponse(error), started);
      }
    }
    let caller: Caller | null = null;
    const needed = ctx.auth === null ? null : requiredRole(req.method, url.pathname);
    if (needed !== null) {
      try {
        caller = ctx.auth!.authorize(req, needed);
      } catch (err) {
        return http.record(url.pathname, req.method, refuse(req, err), started);
      }
    }
    const client = info === undefined ? null : clientOf(info.remoteAddr);
    return http.record(url.pathname, req.method, await serve(req, url, caller, client), started);
  };
  const serveForwarded = async (req: Request, sender: string | null): Promise<Response> => {
    const started = performance.now();
    let accepted;
    try {
      accepted = acceptForwarded(ctx, req, sender);
    } catch (err) {
      return http.record(null, req.method, refuse(req, err), started);
    }
    // Not bounded per client here: the member that forwarded it bounds its own clients.
    const res = await serve(accepted.req, accepted.url, accepted.caller, null);
    return http.record(accepted.url.pathname, req.method, res, started);
  };
  /** {@linkcode serveForwarded} for a request of a batch, built once at its API path. */
  const serveBatched = async (item: BatchItem, batch: BatchContext): Promise<Response> => {
    const started = performance.now();
    let accepted;
    try {
      accepted = acceptForwardedItem(ctx, item, batch.origin, batch.signal, batch.sender);
    } catch (err) {
      const as = new Request(`${batch.origin}${FORWARD_PATH_PREFIX}${item.path}`, {
        method: item.method,
      });
      return http.record(null, item.method, refuse(as, err), started);
    }
    // Not bounded per client here: the member that forwarded it bounds its own clients.
    const res = await serve(accepted.req, accepted.url, accepted.caller, null);
    return http.record(accepted.url.pathname, item.method, res, started);
  };
  const reloadTokens = (tokens: readonly ApiToken[]): number => {
    if (ctx.auth === null) {
      throw new RangeError(
        "this API was started without tokens: it stays open until the node is restarted with them",
      );
    }
    ctx.auth.replace(tokens);
    let ended = 0;
    for (const held of [...ctx.held]) {
      // Everything held (watch streams, blocking reads) needs the read role.
      if (ctx.auth.permits(held.req, "read")) continue;
      held.end(
        "the token this request was made with no longer allows it (the node's tokens were reloaded)",
      );
      ended++;
    }
    return ended;
  };
  return Object.assign(handler, {
    reloadTokens,
    forwarded: async (req: Request, sender: string | null): Promise<Response> => {
      if (URL.parse(req.url)?.pathname === FORWARD_BATCH_PATH) {
        // Each request of the batch is served as if it had come on its own (a batch inside a
        // batch is not a forwarding path: 404).
        return await serveBatch(req, sender, serveBatched);
      }
      return await serveForwarded(req, sender);
    },
  });
}

/** The answer to an admitted (or uncounted) request, as `_route` gives it or as an error. */
async function _answer(
  ctx: _Context,
  req: Request,
  url: URL,
  caller: Caller | null,
  admitted: AdmittedRequest | null,
): Promise<Response> {
  try {
    singleParams(url);
    return _withIndex(ctx, await _route(ctx, req, url, caller, admitted), url);
  } catch (err) {
    const by = caller === null ? "" : ` (caller ${quote(caller.name)})`;
    const apiError = err instanceof ApiError ? err : undefined;
    if (apiError !== undefined) {
      if (apiError.status >= 500 && apiError.logged) {
        ctx.logError(logLine(req, url, apiError.status, apiError.message + by));
      }
      return _withIndex(ctx, errorResponse(apiError), url);
    }
    ctx.logError(
      logLine(
        req,
        url,
        500,
        (err instanceof Error ? (err.stack ?? String(err)) : String(err)) + by,
      ),
    );
    return _withIndex(
      ctx,
      errorResponse(
        new ApiError(500, "internal error while serving the request; the node's log has details"),
      ),
      url,
    );
  }
}

/**
 * Adds the {@linkcode INDEX_HEADER} to an answer that does not carry it yet (a read sets the
 * index it saw; a relayed answer carries the leader's): this node's applied index. The
 * dashboard's files are not answers about the data and go without it.
 */
function _withIndex(ctx: _Context, res: Response, url: URL): Response {
  // Not on the probes, which need no token: how far the log has come is the cluster's business.
  const probe = url.pathname === "/health" || url.pathname === "/ready";
  if (!probe && !isUiPath(url.pathname) && !res.headers.has(INDEX_HEADER)) {
    res.headers.set(INDEX_HEADER, String(ctx.backend.status().applied_index));
  }
  return res;
}

/** The checked options of one handler, and its budgets. */
interface _Context extends ApiContext {
  metrics: MetricsRegistry;
  watchHeartbeatMs: number;
  watchBufferEvents: number;
  watchBufferBytes: number;
  maxWatchBytes: number;
  members: readonly ClusterMember[];
}

const _DATA_PREFIX = "/v1/data/";
/** Methods whose answer may be refused (429) once it is ready: nothing was changed. */
const _SIDE_EFFECT_FREE: ReadonlySet<string> = new Set(["GET", "HEAD"]);

function _resolveOptions(
  backend: KvBackend,
  options: ApiOptions,
  onRefusal: (limit: RefusalLimit) => void,
): _Context {
  if (typeof options.selfId !== "string" || options.selfId === "") {
    throw new RangeError("selfId must be a non-empty string");
  }
  const maxKeyBytes = positiveInt("maxKeyBytes", options.maxKeyBytes, 1024);
  const maxValueBytes = positiveInt("maxValueBytes", options.maxValueBytes, 1_048_576);
  const retryAfterSeconds = nonNegativeInt("retryAfterSeconds", options.retryAfterSeconds, 1);
  const apiTimeoutMs = positiveInt("apiTimeoutMs", options.apiTimeoutMs, 5000);
  const apiFwdTimeoutMs = positiveInt("apiFwdTimeoutMs", options.apiFwdTimeoutMs, 5000);
  const maxBodyBytes = positiveInt(
    "maxBodyBytes",
    options.maxBodyBytes,
    6 * (maxKeyBytes + maxValueBytes) + 4096,
  );
  const maxInflightBytes = positiveInt("maxInflightBytes", options.maxInflightBytes, 64 << 20);
  const maxClientUnreadBytes = nonNegativeInt(
    "maxClientUnreadBytes",
    options.maxClientUnreadBytes,
    Math.max(1, Math.floor(maxInflightBytes / 4)),
  );
  if (maxClientUnreadBytes > maxInflightBytes) {
    throw new RangeError(
      `Option "maxClientUnreadBytes" (${maxClientUnreadBytes}) must be at most maxInflightBytes ` +
        `(${maxInflightBytes}); 0 turns the bound off`,
    );
  }
  const limits = new ApiLimits({
    maxInflightRequests: positiveInt("maxInflightRequests", options.maxInflightRequests, 1024),
    maxInflightBytes,
    maxClientUnreadBytes,
    maxBodyBytes,
    maxForwardedRequests: positiveInt("maxForwardedRequests", options.maxForwardedRequests, 256),
    maxConcurrentBackups: positiveInt("maxConcurrentBackups", options.maxConcurrentBackups, 2),
    backupTimeoutMs: positiveInt("backupTimeoutMs", options.backupTimeoutMs, 600_000),
    maxWatchers: positiveInt("maxWatchers", options.maxWatchers, 10_000),
    responseStallMs: positiveInt(
      "responseStallMs",
      options.responseStallMs,
      Math.max(apiTimeoutMs, MIN_RESPONSE_STALL_MS),
    ),
    onRefusal,
  });
  return {
    backend,
    selfId: options.selfId,
    apiTimeoutMs,
    apiFwdTimeoutMs,
    maxKeyBytes,
    maxValueBytes,
    maxBodyBytes,
    forward: options.forward ?? defaultForwarder,
    // A live view: the caller may change the members array in place (membership changes).
    peerUrls: _liveUrls(options.members ?? []),
    auth: options.tokens === undefined || options.tokens.length === 0
      ? null
      : new TokenAuthenticator(options.tokens),
    retryAfter: { "retry-after": String(retryAfterSeconds) },
    logError: options.logError ?? ((line) => console.error(line)),
    limits,
    metrics: options.metrics ?? new MetricsRegistry(),
    members: options.members ?? [],
    watchHeartbeatMs: positiveInt("watchHeartbeatMs", options.watchHeartbeatMs, 15_000),
    watchBufferEvents: positiveInt("watchBufferEvents", options.watchBufferEvents, 1024),
    watchBufferBytes: positiveInt("watchBufferBytes", options.watchBufferBytes, 16 << 20),
    maxWatchBytes: positiveInt("maxWatchBytes", options.maxWatchBytes, 256 << 20),
    held: new Set(),
  };
}

/** Each member's peer URL by id, read from `members` at each call (it may change in place). */
function _liveUrls(
  members: readonly { id: string; rpcUrl: string }[],
): Pick<ReadonlyMap<string, string>, "get" | "has"> {
  return {
    get: (id) => members.find((m) => m.id === id)?.rpcUrl,
    has: (id) => members.some((m) => m.id === id),
  };
}

async function _route(
  ctx: _Context,
  req: Request,
  url: URL,
  caller: Caller | null,
  admitted: AdmittedRequest | null,
): Promise<Response> {
  const path = url.pathname;
  switch (path) {
    case "/health":
      // HEAD too, for monitors and load balancers that probe with it (Deno sends no body then).
      _allow(req, path, ["GET", "HEAD"]);
      return jsonResponse(200, { status: "ok" });
    case "/ready":
      _allow(req, path, ["GET", "HEAD"]);
      if (ctx.backend.isReady()) return jsonResponse(200, { ready: true });
      if (ctx.backend.status().membership === "removed") {
        return jsonResponse(503, {
          ready: false,
          code: "removed",
          error: "not ready: this node has been removed from the cluster",
        });
      }
      return jsonResponse(503, {
        ready: false,
        error: "not ready: this node knows no leader or has not yet applied what it committed",
      }, ctx.retryAfter);
    case "/v1/status":
      _allow(req, path, ["GET"]);
      return jsonResponse(200, ctx.backend.status());
    case "/v1/snapshot":
      _allow(req, path, ["GET"]);
      return _backup(ctx);
    case "/v1/watch":
      _allow(req, path, ["GET"]);
      return watchRoute(ctx, req, url, (end) => holdForToken(ctx, req, end));
    case "/v1/data":
      _allow(req, path, ["GET", "POST", "DELETE"]);
      if (req.method === "GET") return await readRangeRoute(ctx, req, url, caller);
      if (req.method === "DELETE") return await deleteRangeRoute(ctx, req, url, caller);
      return await writeRoute(ctx, req, url, null, caller);
    case "/v1/txn":
      _allow(req, path, ["POST"]);
      return await txnRoute(ctx, req, url, caller);
    case "/metrics":
      _allow(req, path, ["GET"]);
      return new Response(ctx.metrics.render(), {
        headers: { "content-type": METRICS_CONTENT_TYPE },
      });
    case "/v1/cluster":
      _allow(req, path, ["GET"]);
      return jsonResponse(
        200,
        await gatherCluster({
          selfId: ctx.selfId,
          backend: ctx.backend,
          renderMetrics: () => ctx.metrics.render(),
          members: ctx.members,
          forward: ctx.forward,
          authorization: req.headers.get("authorization"),
          timeoutMs: MEMBER_TIMEOUT_MS,
          signal: req.signal,
        }),
        { "cache-control": "no-store" },
      );
    case "/v1/leader/transfer":
      _allow(req, path, ["POST"]);
      return await leaderTransferRoute(ctx, req, url, caller);
    case "/v1/members":
      _allow(req, path, ["GET", "POST"]);
      if (req.method === "GET") return listMembersRoute(ctx);
      return await addMemberRoute(ctx, req, url, caller);
  }
  if (path.startsWith(MEMBERS_PREFIX)) {
    _allow(req, "/v1/members/{id}", ["DELETE"]);
    const id = decodeURIComponent(path.slice(MEMBERS_PREFIX.length));
    return await removeMemberRoute(ctx, req, url, id, caller);
  }
  if (path === LEASES_PATH || path.startsWith(LEASES_PATH + "/")) {
    return await leaseRoutes(
      ctx,
      req,
      url,
      caller,
      (route, methods) => _allow(req, route, methods),
    );
  }
  if (isUiPath(path)) {
    _allow(req, "/ui", ["GET"]);
    return uiResponse(path, url.search);
  }
  if (!path.startsWith(_DATA_PREFIX)) {
    throw new ApiError(
      404,
      `no such path ${
        quote(path)
      }; the API serves /v1/data, /v1/data/{key}, /v1/txn, /v1/watch, /v1/status, /v1/cluster, /v1/snapshot, /v1/leader/transfer, /v1/leases, /v1/members, /health, /ready, /metrics and /ui/`,
    );
  }
  _allow(req, "/v1/data/{key}", ["GET", "PUT", "DELETE"]);
  const key = pathKey(path.slice(_DATA_PREFIX.length));
  checkKey(key, ctx.maxKeyBytes);
  switch (req.method) {
    case "GET":
      return await readRoute(ctx, req, url, key, caller, admitted);
    case "PUT":
      return await writeRoute(ctx, req, url, key, caller);
    default:
      return await deleteRoute(ctx, req, url, key, caller);
  }
}

function _allow(req: Request, route: string, methods: string[]): void {
  if (!methods.includes(req.method)) {
    const allow = methods.join(", ");
    throw new ApiError(
      405,
      `method ${quote(req.method)} is not allowed on ${route}; allowed: ${allow}`,
      {},
      { allow },
    );
  }
}

/** `GET /v1/snapshot`: the backend's snapshot as a download, within `maxConcurrentBackups`. */
function _backup(ctx: _Context): Response {
  if (!ctx.limits.admitBackup()) {
    const { backups } = ctx.limits;
    const max = ctx.limits.options.maxConcurrentBackups;
    throw new ApiError(
      429,
      `too many backups in progress (${backups}; the limit is ${max}, --max-concurrent-backups)`,
      { limit: max },
      ctx.retryAfter,
    );
  }
  const snap = ctx.backend.snapshot();
  return new Response(ctx.limits.boundedBackup(snap.stream), {
    headers: {
      "content-type": "application/octet-stream",
      "content-disposition": `attachment; filename="raftkv-${snap.index}.snap"`,
      "x-raftkv-snapshot-index": String(snap.index),
    },
  });
}
