/**
 * Forwarding a client request from a follower to the leader: when it may be forwarded, where to,
 * within which budget and deadline, how the leader's answer is relayed, and how the leader takes
 * a forwarded request in. The HTTP client that carries it is a {@linkcode Forwarder} (see
 * `forwarder.ts`).
 *
 * A request is authorised once, on the node that received it from the client. The follower then
 * sends it to the leader's peer port (its `rpc_url`), below {@linkcode FORWARD_PATH_PREFIX}, with
 * the authorised caller in the {@linkcode CALLER_HEADER}; the leader's peer server hands it to
 * {@linkcode acceptForwarded}, which trusts that caller without a token. The client API never
 * reads that header, so a client cannot claim an identity; the peer port is for members only.
 *
 * @module
 */

import type { KvBackend, NodeStatus, NotLeaderError } from "../node/backend.ts";
import {
  type Caller,
  CALLER_HEADER,
  formatCaller,
  parseCaller,
  type TokenAuthenticator,
  WWW_AUTHENTICATE,
} from "./auth.ts";
import { raceAbort, startDeadline } from "./deadline.ts";
import {
  ApiError,
  CLIENT_GONE_STATUS,
  errorMessage,
  logLine,
  type Operation,
  quote,
} from "./errors.ts";
import { CLUSTER_HEADER, ForwardConnectError, type Forwarder } from "./forwarder.ts";
import type { ApiLimits } from "./limits.ts";
import { IDEMPOTENCY_HEADER, INDEX_HEADER, REPLAYED_HEADER } from "./outcome.ts";

/** The header a node adds to a request it forwards; its value is the forwarding node's id. */
export const FORWARDED_BY_HEADER = "x-raftkv-forwarded-by";

/** The header on a relayed answer naming the leader that gave it. */
export const FORWARDED_TO_HEADER = "x-raftkv-forwarded-to";

/**
 * The path prefix of forwarded requests on the leader's peer port: `/v1/data/a` is forwarded to
 * `<rpc_url>/forward/v1/data/a`.
 */
export const FORWARD_PATH_PREFIX = "/forward";

/** What forwarding needs of the API handler (its checked options and budgets). */
export interface ForwardContext {
  /** Asked for the leader's id. */
  backend: Pick<KvBackend, "status">;
  /** Each member's peer URL (`rpc_url`) by id: where a forward to that member goes. */
  peerUrls: Pick<ReadonlyMap<string, string>, "get" | "has">;
  /** This node's tokens, or `null` when its API is open. */
  auth: TokenAuthenticator | null;
  /** This node's id, sent in the {@linkcode FORWARDED_BY_HEADER}. */
  selfId: string;
  /** Sends the request to the leader. */
  forward: Forwarder;
  /** Deadline of a forward in milliseconds, until the whole answer has arrived. */
  apiFwdTimeoutMs: number;
  /** The `Retry-After` header of answers that say "try again". */
  retryAfter: Record<string, string>;
  /** Receives the line logged for a relayed 5xx answer. */
  logError: (line: string) => void;
  /** Counts the forwards in progress against `maxForwardedRequests`. */
  limits: ApiLimits;
}

/**
 * Forwards the original request (method, path, query, `Content-Type`, `Idempotency-Key` and body
 * bytes, and the caller in `op`) to the leader's peer URL below {@linkcode FORWARD_PATH_PREFIX}
 * and relays its answer: status, `Content-Type`, `Retry-After`, the applied index and
 * idempotent-replay headers and body, plus the {@linkcode FORWARDED_TO_HEADER}. A request that
 * already carries the
 * {@linkcode FORWARDED_BY_HEADER} is never forwarded again.
 *
 * @param ctx The handler's options and budgets.
 * @param req The client's request (its body already read).
 * @param url Its parsed URL.
 * @param body Its body bytes, or `null` for a request without one.
 * @param notLeader What the backend threw, for its hint of the leader.
 * @param op The operation, to say whether a failed forward may have been applied.
 * @returns The relayed answer.
 * @throws {ApiError} 503 when there is no leader to forward to, or the leader is unreachable or
 * changed; 429 past `maxForwardedRequests`; 504 past `apiFwdTimeoutMs`; 502 when a write failed
 * after it may have been sent; 499 when the client went away.
 */
export async function forwardToLeader(
  ctx: ForwardContext,
  req: Request,
  url: URL,
  body: Uint8Array<ArrayBuffer> | null,
  notLeader: NotLeaderError,
  op: Operation,
): Promise<Response> {
  const k = op.key;
  const forwardedBy = req.headers.get(FORWARDED_BY_HEADER);
  if (forwardedBy !== null) {
    throw new ApiError(
      503,
      `the request was forwarded here by ${
        quote(forwardedBy)
      } as to the leader, but this node is not the leader: the leader changed; retry`,
      { k },
      ctx.retryAfter,
      false, // as any election goes: not worth a log line per request
    );
  }
  let leader: NodeStatus["leader"];
  let cluster: string | undefined;
  try {
    ({ leader, cluster_id: cluster } = ctx.backend.status());
  } catch {
    leader = null;
  }
  if (leader === null || leader.id === ctx.selfId) {
    const hint = notLeader.leader === "" ? "" : ` (last heard of: ${quote(notLeader.leader)})`;
    throw new ApiError(
      503,
      `this node is not the leader and knows no leader to forward to${hint}; retry later`,
      { k },
      ctx.retryAfter,
      false, // while a leader is elected: the node logs its role changes, not each request
    );
  }
  const rpcUrl = ctx.peerUrls.get(leader.id);
  const target = rpcUrl?.replace(/\/+$/, "") + FORWARD_PATH_PREFIX + url.pathname + url.search;
  const protocol = URL.parse(target)?.protocol;
  if (rpcUrl === undefined || (protocol !== "http:" && protocol !== "https:")) {
    throw new ApiError(
      503,
      `cannot forward to the leader ${quote(leader.id)}: ${
        rpcUrl === undefined
          ? "it is not a member this node knows"
          : `its peer URL ${quote(rpcUrl)} is not an http(s) URL`
      }`,
      { k, leader: leader.id },
      ctx.retryAfter,
    );
  }
  const max = ctx.limits.options.maxForwardedRequests;
  if (!ctx.limits.acquireForward()) {
    throw new ApiError(
      429,
      `too many requests being forwarded to the leader ${
        quote(leader.id)
      } (the limit is ${max}, --max-forwarded-requests); nothing was sent`,
      { k, limit: max },
      ctx.retryAfter,
    );
  }
  try {
    return await _relay(ctx, req, body, { id: leader.id, url: rpcUrl, cluster }, target, op);
  } finally {
    ctx.limits.releaseForward();
  }
}

/**
 * Sends the request to the leader at `target` and relays its answer (see
 * {@linkcode forwardToLeader}).
 */
async function _relay(
  ctx: ForwardContext,
  req: Request,
  body: Uint8Array<ArrayBuffer> | null,
  leader: { id: string; url: string; cluster: string | undefined },
  target: string,
  op: Operation,
): Promise<Response> {
  const k = op.key;
  const headers: Record<string, string> = { [FORWARDED_BY_HEADER]: ctx.selfId };
  if (leader.cluster !== undefined) headers[CLUSTER_HEADER] = leader.cluster;
  if (op.caller) headers[CALLER_HEADER] = formatCaller(op.caller);
  for (const name of ["content-type", IDEMPOTENCY_HEADER]) {
    const value = req.headers.get(name);
    if (value !== null) headers[name] = value;
  }
  using deadline = startDeadline(ctx.apiFwdTimeoutMs, req.signal);
  const init: RequestInit & { signal: AbortSignal } = {
    method: req.method,
    headers,
    redirect: "manual",
    signal: deadline.signal,
  };
  if (body !== null) init.body = body;
  const where = `the leader ${quote(leader.id)} at ${leader.url}`;
  let res: Response;
  let answer: ArrayBuffer;
  try {
    res = await raceAbort(() => ctx.forward(target, init), deadline.signal);
    answer = await raceAbort(() => res.arrayBuffer(), deadline.signal);
  } catch (err) {
    if (deadline.clientGone()) {
      throw new ApiError(CLIENT_GONE_STATUS, "the client closed the request", { k });
    }
    const extra = { k, leader: leader.id };
    if (deadline.timedOut()) {
      throw op.write
        ? new ApiError(
          504,
          `forwarded to ${where}, which did not answer within ${deadline.ms}ms; the write may or may not have been applied`,
          { ...extra, outcome: "unknown" },
        )
        : new ApiError(
          504,
          `forwarded to ${where}, which did not answer within ${deadline.ms}ms; a read changes nothing, so retrying is safe`,
          extra,
        );
    }
    const reason = errorMessage(err);
    if (err instanceof ForwardConnectError || !op.write) {
      throw new ApiError(503, `${where} unreachable: ${reason}`, extra, ctx.retryAfter);
    }
    throw new ApiError(
      502,
      `forwarding to ${where} failed after the request may have been sent (${reason}); the write may or may not have been applied`,
      { ...extra, outcome: "unknown" },
    );
  }
  const relayed = new Headers({ [FORWARDED_TO_HEADER]: leader.id });
  for (const name of ["content-type", "retry-after", INDEX_HEADER, REPLAYED_HEADER]) {
    const value = res.headers.get(name);
    if (value !== null) relayed.set(name, value);
  }
  if (res.status >= 500) {
    ctx.logError(logLine(req, new URL(req.url), res.status, `relayed from ${where}`));
  }
  const hasBody = res.status !== 204 && res.status !== 304;
  return new Response(hasBody ? answer : null, { status: res.status, headers: relayed });
}

/** A forwarded request as the leader serves it. */
export interface AcceptedForward {
  /** The request, at its API path (the prefix removed), with its headers, body and signal. */
  req: Request;
  /** Its URL. */
  url: URL;
  /** The caller the forwarding node authorised, or `null` when that node's API is open. */
  caller: Caller | null;
}

/**
 * Takes in a request that arrived on this node's peer port below
 * {@linkcode FORWARD_PATH_PREFIX}: checks where it comes from and whom it is for, and returns it
 * at its API path with the caller already authorised (its token is not asked for again).
 *
 * @param ctx The handler's options.
 * @param req The request as the peer server got it.
 * @param sender The sending member's node id when the peer transport authenticated it (mutual
 * TLS), else `null` (the peer port is then trusted as a whole).
 * @returns The request to serve and its caller.
 * @throws {ApiError} 404 for a path that is never forwarded (only `/v1/data`, `/v1/txn`,
 * `/v1/leader/transfer` and `/v1/members` are); 400 without a
 * {@linkcode FORWARDED_BY_HEADER} or with a malformed {@linkcode CALLER_HEADER}; 403 when the
 * forwarding node is not another member, or not the authenticated sender; 401 without a caller
 * while this node requires tokens.
 */
export function acceptForwarded(
  ctx: ForwardContext,
  req: Request,
  sender: string | null,
): AcceptedForward {
  const outer = new URL(req.url);
  const caller = _checkForwarded(ctx, outer.pathname, req.headers, sender);
  const path = outer.pathname.slice(FORWARD_PATH_PREFIX.length);
  const url = new URL(path + outer.search, outer.origin);
  const init: RequestInit = { method: req.method, headers: req.headers, signal: req.signal };
  if (req.body !== null) init.body = req.body;
  return { req: new Request(url, init), url, caller };
}

/**
 * {@linkcode acceptForwarded} for one request of a batch (see `forward_batch.ts`), given by its
 * parts: the same checks, and the request built once, at its API path.
 *
 * @param ctx The handler's options.
 * @param item The request: method, path and query below {@linkcode FORWARD_PATH_PREFIX},
 * headers and body.
 * @param origin The origin of the batch's URL (the leader's peer URL as it was asked for).
 * @param signal Aborts when the batch's sender goes away.
 * @param sender As for {@linkcode acceptForwarded}.
 * @returns The request to serve and its caller.
 * @throws {ApiError} As {@linkcode acceptForwarded}.
 */
export function acceptForwardedItem(
  ctx: ForwardContext,
  item: {
    method: string;
    path: string;
    headers: Record<string, string>;
    body: Uint8Array<ArrayBuffer> | null;
  },
  origin: string,
  signal: AbortSignal,
  sender: string | null,
): AcceptedForward {
  // Concatenated, not resolved against the origin: a path such as `//host/x` stays a path.
  const url = new URL(origin + item.path);
  const headers = new Headers(item.headers);
  const caller = _checkForwarded(ctx, FORWARD_PATH_PREFIX + url.pathname, headers, sender);
  const init: RequestInit = { method: item.method, headers, signal };
  if (item.body !== null) init.body = item.body;
  return { req: new Request(url, init), url, caller };
}

/**
 * The checks of {@linkcode acceptForwarded} on a forwarded request's path (with the prefix) and
 * headers; returns the caller.
 */
function _checkForwarded(
  ctx: ForwardContext,
  pathname: string,
  headers: Headers,
  sender: string | null,
): Caller | null {
  const path = pathname.slice(FORWARD_PATH_PREFIX.length);
  if (
    !pathname.startsWith(FORWARD_PATH_PREFIX) ||
    (path !== "/v1/data" && !path.startsWith("/v1/data/") && path !== "/v1/txn" &&
      path !== "/v1/leader/transfer" && path !== "/v1/leases" && !path.startsWith("/v1/leases/") &&
      path !== "/v1/members" && !path.startsWith("/v1/members/"))
  ) {
    throw new ApiError(404, `no such forwarding path ${quote(pathname)}`);
  }
  const by = headers.get(FORWARDED_BY_HEADER);
  if (by === null) {
    throw new ApiError(400, `a forwarded request must name its sender in ${FORWARDED_BY_HEADER}`);
  }
  if (by === ctx.selfId || !ctx.peerUrls.has(by) || (sender !== null && sender !== by)) {
    throw new ApiError(
      403,
      `a request forwarded by ${quote(by)}${
        sender === null ? "" : ` on a connection of ${quote(sender)}`
      } is refused: only another member forwards, in its own name`,
    );
  }
  const value = headers.get(CALLER_HEADER);
  const caller = value === null ? null : parseCaller(value);
  if (value !== null && caller === null) {
    throw new ApiError(400, `the ${CALLER_HEADER} header ${quote(value)} is not "<role> <name>"`);
  }
  if (caller === null && ctx.auth !== null) {
    throw new ApiError(
      401,
      `${quote(by)} forwarded a request without a caller, but this node requires tokens: give ` +
        "every node the same tokens",
      {},
      { "www-authenticate": WWW_AUTHENTICATE },
    );
  }
  return caller;
}
