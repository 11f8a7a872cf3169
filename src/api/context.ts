/**
 * What every route of the REST API works with: the handler's checked options and budgets
 * ({@linkcode ApiContext}), and {@linkcode backendFailure}, which turns what the backend threw
 * into an answer (a forward to the leader, or an error).
 *
 * @module
 */

import { type KvBackend, NotLeaderError } from "../node/backend.ts";
import type { Deadline } from "./deadline.ts";
import { backendError, type Operation } from "./errors.ts";
import { type ForwardContext, forwardToLeader } from "./forward.ts";

/** The checked options of one handler, and its budgets. */
export interface ApiContext extends ForwardContext {
  /** The node. */
  backend: KvBackend;
  /** Deadline of one request in milliseconds. */
  apiTimeoutMs: number;
  /** Largest key in UTF-8 bytes. */
  maxKeyBytes: number;
  /** Largest value in UTF-8 bytes. */
  maxValueBytes: number;
  /** Largest request body in bytes. */
  maxBodyBytes: number;
}

/**
 * Turns what the backend threw into an answer: a forward to the leader for
 * {@linkcode NotLeaderError}, else an API error (see {@linkcode backendError}), else the error
 * itself (a 500).
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param body Its body bytes (forwarded as they are), or null.
 * @param err What the backend threw.
 * @param deadline The request's deadline.
 * @param op What the request asked for.
 * @returns The leader's answer, relayed.
 * @throws {ApiError} The answer for anything but `NotLeaderError` (see `errors.ts`).
 */
export async function backendFailure(
  ctx: ApiContext,
  req: Request,
  url: URL,
  body: Uint8Array<ArrayBuffer> | null,
  err: unknown,
  deadline: Deadline,
  op: Operation,
): Promise<Response> {
  if (err instanceof NotLeaderError) {
    return await forwardToLeader(ctx, req, url, body, err, op);
  }
  throw backendError(err, deadline, op, ctx.retryAfter) ?? err;
}
