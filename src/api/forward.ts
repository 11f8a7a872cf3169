/**
 * Forwarding a client request from a follower to the leader: when it may be forwarded, where to
 * (the leader's `api_url` from the node's status), within which budget and deadline, and how the
 * leader's answer is relayed. The HTTP client that carries it is a {@linkcode Forwarder} (see
 * `forwarder.ts`).
 *
 * @module
 */

import type { KvBackend, NodeStatus, NotLeaderError } from "../node/backend.ts";
import { raceAbort, startDeadline } from "./deadline.ts";
import {
  ApiError,
  CLIENT_GONE_STATUS,
  errorMessage,
  logLine,
  type Operation,
  quote,
} from "./errors.ts";
import { ForwardConnectError, type Forwarder } from "./forwarder.ts";
import type { ApiLimits } from "./limits.ts";
import { IDEMPOTENCY_HEADER, INDEX_HEADER, REPLAYED_HEADER } from "./outcome.ts";

/** The header a node adds to a request it forwards; its value is the forwarding node's id. */
export const FORWARDED_BY_HEADER = "x-raftkv-forwarded-by";

/** The header on a relayed answer naming the leader that gave it. */
export const FORWARDED_TO_HEADER = "x-raftkv-forwarded-to";

/** What forwarding needs of the API handler (its checked options and budgets). */
export interface ForwardContext {
  /** Asked for the leader's id and `api_url`. */
  backend: Pick<KvBackend, "status">;
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
 * bytes) to the leader and relays its answer: status, `Content-Type`, `Retry-After`, the
 * applied index and idempotent-replay headers and body, plus the {@linkcode FORWARDED_TO_HEADER}. A request that already carries the
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
    );
  }
  let leader: NodeStatus["leader"];
  try {
    leader = ctx.backend.status().leader;
  } catch {
    leader = null;
  }
  if (leader === null || leader.id === ctx.selfId || leader.api_url === "") {
    const hint = notLeader.leader === "" ? "" : ` (last heard of: ${quote(notLeader.leader)})`;
    throw new ApiError(
      503,
      `this node is not the leader and knows no leader to forward to${hint}; retry later`,
      { k },
      ctx.retryAfter,
    );
  }
  const target = leader.api_url.replace(/\/+$/, "") + url.pathname + url.search;
  const protocol = URL.parse(target)?.protocol;
  if (protocol !== "http:" && protocol !== "https:") {
    throw new ApiError(
      503,
      `cannot forward to the leader ${quote(leader.id)}: its api_url ${
        quote(leader.api_url)
      } is not an http(s) URL`,
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
      } (the limit is ${max}, maxForwardedRequests); nothing was sent`,
      { k, limit: max },
      ctx.retryAfter,
    );
  }
  try {
    return await _relay(ctx, req, url, body, leader, target, op);
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
  url: URL,
  body: Uint8Array<ArrayBuffer> | null,
  leader: { id: string; api_url: string },
  target: string,
  op: Operation,
): Promise<Response> {
  const k = op.key;
  const headers: Record<string, string> = { [FORWARDED_BY_HEADER]: ctx.selfId };
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
  const where = `the leader ${quote(leader.id)} at ${leader.api_url}`;
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
    ctx.logError(logLine(req, url, res.status, `relayed from ${where}`));
  }
  const hasBody = res.status !== 204 && res.status !== 304;
  return new Response(hasBody ? answer : null, { status: res.status, headers: relayed });
}
