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
  /**
   * What runs on a token's say-so and must end if the token is revoked (a watch stream, a
   * blocking read): checked again when the tokens are reloaded (see {@linkcode holdForToken}).
   */
  held: Set<HeldForToken>;
}

/** A request still being served on the strength of its bearer token (see {@linkcode holdForToken}). */
export interface HeldForToken {
  /** The request, with its `Authorization` header. */
  req: Request;
  /** Ends what it runs, saying why. */
  end(reason: string): void;
}

/**
 * Registers a long-running request (a watch stream, a blocking read) that this node let in on
 * its bearer token, so that a reload of the tokens that revokes it can end it (`end`). Requests
 * without a token of their own (the API is open, or a member forwarded it with its caller) are
 * not registered: there is nothing here to revoke.
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param end Ends what the request runs, saying why.
 * @returns The function to call once the request is over.
 */
export function holdForToken(
  ctx: Pick<ApiContext, "auth" | "held">,
  req: Request,
  end: (reason: string) => void,
): () => void {
  if (ctx.auth === null || !req.headers.has("authorization")) return () => {};
  const held = { req, end };
  ctx.held.add(held);
  return () => ctx.held.delete(held);
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
