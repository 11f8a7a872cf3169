/**
 * The cluster's admin routes, each a small function so that an authorization check can stand in
 * front of it: `POST /v1/leader/transfer`.
 *
 * @module
 */

import {
  type KvBackend,
  LeaderTransferError,
  NotLeaderError,
  NotVoterError,
  StoppingError,
  TransferAbortedError,
  UnknownMemberError,
} from "../node/backend.ts";
import { startDeadline } from "./deadline.ts";
import type { Caller } from "./auth.ts";
import { ApiError, CLIENT_GONE_STATUS, jsonResponse, quote } from "./errors.ts";
import { type ForwardContext, forwardToLeader } from "./forward.ts";
import { readBody, requireJson } from "./validate.ts";

/** What the admin routes need of the API handler. */
export interface AdminContext extends ForwardContext {
  /** The node. */
  backend: KvBackend;
  /** Deadline of one request on this node in milliseconds. */
  apiTimeoutMs: number;
}

/** The largest body an admin request may have. */
const _MAX_BODY = 4096;

/**
 * `POST /v1/leader/transfer`, body optional: `{"to": "<node id>"}` (default: the most caught-up
 * voter). On the leader: hands leadership over and answers 200 `{"leader": id, "previous": id}`
 * once the new leader is known; elsewhere: forwarded to the leader. Errors: 400 for a bad body,
 * an unknown id or a member that does not vote; 409 while another transfer is in progress; 503
 * when the target did not take over within an election timeout (this node leads on) or no leader
 * is known; 504 when no new leader was known within the request's deadline.
 */
export async function leaderTransferRoute(
  ctx: AdminContext,
  req: Request,
  url: URL,
  caller: Caller | null,
): Promise<Response> {
  const transfer = ctx.backend.transferLeadership?.bind(ctx.backend);
  if (transfer === undefined) throw new ApiError(501, "this node cannot transfer leadership");
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  const declared = req.headers.get("content-length");
  const hasBody = req.body !== null && declared !== "0";
  if (hasBody) requireJson(req);
  const bytes = hasBody
    ? await readBody(req, _MAX_BODY, deadline, "the limit of this route")
    : new Uint8Array(0);
  const to = _target(bytes);
  const previous = ctx.backend.status().id;
  try {
    const { leader } = await transfer(to, deadline.signal);
    return jsonResponse(200, { leader, previous });
  } catch (err) {
    if (err instanceof NotLeaderError) {
      return await forwardToLeader(ctx, req, url, bytes, err, { write: true, caller });
    }
    if (err instanceof UnknownMemberError || err instanceof NotVoterError) {
      throw new ApiError(400, err.message, { to: err.id });
    }
    if (err instanceof LeaderTransferError) {
      throw new ApiError(409, err.message, { transferee: err.transferee }, ctx.retryAfter);
    }
    if (err instanceof TransferAbortedError) {
      throw new ApiError(503, err.message, { to: err.target, leader: previous }, ctx.retryAfter);
    }
    if (err instanceof StoppingError) throw new ApiError(503, err.message, {}, ctx.retryAfter);
    if (deadline.clientGone()) throw new ApiError(CLIENT_GONE_STATUS, "the client went away");
    if (deadline.timedOut()) {
      throw new ApiError(
        504,
        `no new leader was known within ${deadline.ms}ms; GET /v1/status tells who leads now`,
        to === null ? {} : { to },
      );
    }
    throw err;
  }
}

/** The `to` of a transfer body (empty: null). */
function _target(bytes: Uint8Array): string | null {
  if (bytes.byteLength === 0) return null;
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ApiError(400, 'the request body is not JSON; expected {"to": "<node id>"} or none');
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new ApiError(400, 'the request body must be a JSON object like {"to": "<node id>"}');
  }
  const to = (body as Record<string, unknown>).to;
  if (to === undefined || to === null) return null;
  if (typeof to !== "string" || to === "") {
    throw new ApiError(
      400,
      `"to" must be a node id (a non-empty string), not ${quote(String(to))}`,
    );
  }
  return to;
}
