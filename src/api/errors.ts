/**
 * The error answers of the REST API: an {@linkcode ApiError} is a failure answered as JSON
 * `{"error": message, ...extra}` with `Content-Type: application/json`, and
 * {@linkcode backendError} says which one answers what the backend threw. Also the small text
 * helpers the messages are made with: values are quoted, cut short when long.
 *
 * @module
 */

import {
  NoSpaceError,
  NotAppliedError,
  OutcomeUnknownError,
  OverloadedError,
  QuotaExceededError,
  RemovedError,
  StoppingError,
} from "../node/backend.ts";
import type { Caller } from "./auth.ts";
import type { Deadline } from "./deadline.ts";

/** The status of the answer to a request whose client went away (nobody reads it). */
export const CLIENT_GONE_STATUS = 499;

/**
 * A failure answered as JSON `{"error": message, ...extra}`. A 5xx one is logged unless `logged`
 * is false (answers to overload: one line each would flood the log exactly when it hurts).
 */
export class ApiError extends Error {
  /**
   * Creates the error.
   *
   * @param status The HTTP status of the answer.
   * @param message The `error` field of the answer.
   * @param extra More fields of the answer.
   * @param headers Headers of the answer, such as `Retry-After`.
   * @param logged Whether a 5xx answer is logged.
   */
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
    readonly logged = true,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** What a request asked of the backend: a write or a read, of one key or of several. */
export interface Operation {
  /** Whether it changes data: a timed-out write may have been applied, a read never was. */
  write: boolean;
  /** The key, echoed as `k` in error answers; absent for an operation on no key. */
  key?: string;
  /** Who asked, once authorised; `null` when the API is open. A forward carries it on. */
  caller: Caller | null;
}

/**
 * The answer to what the backend threw for `op` (other than `NotLeaderError`, which is answered
 * by a forward): 503 for not applied, overloaded or stopping, 503 with `"code":"removed"` (and
 * no `Retry-After`: this node will not serve it later either) on a node removed from the
 * cluster, 507 for a full disk, 499 when the client went away, 504 when the deadline passed or
 * the outcome is unknown.
 *
 * @param err What the backend threw.
 * @param deadline The request's deadline, to tell a timeout and a departed client apart.
 * @param op The operation that failed.
 * @param retryAfter The `Retry-After` header of answers that say "try again".
 * @returns The error to answer with, or `undefined` for an unexpected failure (a 500).
 */
export function backendError(
  err: unknown,
  deadline: Deadline,
  op: Operation,
  retryAfter: Record<string, string>,
): ApiError | undefined {
  const k = op.key;
  if (err instanceof NotAppliedError) {
    return new ApiError(503, `${err.message}; retrying is safe`, { k }, retryAfter);
  }
  if (err instanceof OverloadedError) return overloadedError(err, k ?? null, retryAfter);
  if (err instanceof StoppingError) {
    return new ApiError(503, `${err.message}; retry on another node`, { k }, retryAfter);
  }
  if (err instanceof RemovedError) return removedError(err, k);
  if (err instanceof NoSpaceError) {
    return new ApiError(507, err.message, { alarm: "NOSPACE", members: err.members, k });
  }
  if (err instanceof QuotaExceededError) {
    // Not logged: a client filling the store would write one line per refused write.
    const extra = { code: "quota_exceeded", data_bytes: err.dataBytes, k };
    return new ApiError(507, err.message, { ...extra, quota_bytes: err.quotaBytes }, {}, false);
  }
  if (deadline.clientGone()) {
    return new ApiError(CLIENT_GONE_STATUS, "the client closed the request", { k });
  }
  if (deadline.timedOut()) {
    return op.write
      ? new ApiError(
        504,
        `timed out after ${deadline.ms}ms; the write may or may not have been applied`,
        { k, outcome: "unknown" },
      )
      : new ApiError(
        504,
        `timed out after ${deadline.ms}ms; a read changes nothing, so retrying is safe`,
        { k },
      );
  }
  if (err instanceof OutcomeUnknownError) {
    return new ApiError(504, err.message, { k, outcome: "unknown" });
  }
  return undefined;
}

/**
 * The answer on a node removed from the cluster: 503 `{"error","code":"removed","node_id"}`,
 * without `Retry-After` (this node will not serve the request later either: a client goes to
 * another member, as it does on any 503). Nothing was done.
 *
 * @param err The backend's refusal.
 * @param k The key, if the request named one.
 * @returns The error to answer with.
 */
export function removedError(err: RemovedError, k?: string): ApiError {
  return new ApiError(503, err.message, { code: "removed", node_id: err.id, k }, {}, false);
}

/**
 * The answer to a write refused for overload: 503, not logged (one line each would flood).
 *
 * @param err The backend's refusal.
 * @param k The key, or `null` when it is not known yet (the body is unread).
 * @param retryAfter The `Retry-After` header.
 * @returns The error to answer with.
 */
export function overloadedError(
  err: OverloadedError,
  k: string | null,
  retryAfter: Record<string, string>,
): ApiError {
  return new ApiError(
    503,
    `${err.message}; the write was not applied, retrying later is safe`,
    {
      ...(k === null ? {} : { k }),
      pending_proposals: err.pendingProposals,
      pending_bytes: err.pendingBytes,
    },
    retryAfter,
    false,
  );
}

/**
 * A JSON answer.
 *
 * @param status The HTTP status.
 * @param body The value to send as JSON.
 * @param headers More headers; `Content-Type` is always `application/json`.
 * @returns The response.
 */
export function jsonResponse(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  const text = JSON.stringify(body);
  const res = new Response(text, {
    status,
    headers: { ...headers, "content-type": "application/json" },
  });
  // At most 3 UTF-8 bytes per UTF-16 unit: most answers are known small without encoding them.
  if (text.length <= SMALL_ANSWER_BYTES / 3) _small.add(res);
  return res;
}

/** An answer body up to this size is handed to the server whole (see `limits.ts`). */
export const SMALL_ANSWER_BYTES = 64 * 1024;
const _small = new WeakSet<Response>();

/**
 * Whether `res` is a {@linkcode jsonResponse} known to be at most {@linkcode SMALL_ANSWER_BYTES}
 * long (the admission need not read it to measure it).
 *
 * @param res An answer.
 * @returns True when it is known small.
 */
export function isSmallAnswer(res: Response): boolean {
  return _small.has(res);
}

/**
 * The answer for `err`: `{"error": message, ...extra}` with its status and headers.
 *
 * @param err The failure.
 * @returns The response.
 */
export function errorResponse(err: ApiError): Response {
  return jsonResponse(err.status, { error: err.message, ...err.extra }, err.headers);
}

/**
 * The one line logged for a 5xx answer or a refusal: method, path and query (the first 200
 * characters), status and message.
 *
 * @param req The request.
 * @param url Its parsed URL.
 * @param status The status answered.
 * @param message What went wrong.
 * @returns The line.
 */
export function logLine(req: Request, url: URL, status: number, message: string): string {
  // The target is the client's to choose: cut short (a URL may be tens of kilobytes).
  const target = `${url.pathname}${url.search}`;
  const shown = target.length > 200
    ? `${target.slice(0, 200)}... (${target.length} chars)`
    : target;
  return `raftkv api: ${req.method} ${shown} -> ${status}: ${message}`;
}

/**
 * `text` as a JSON string, cut short when long (80 characters), for quoting values in messages.
 *
 * @param text The value to quote.
 * @returns It quoted.
 */
export function quote(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}...` : text);
}

/**
 * A short description of a JSON value for messages: `null`, `an array`, `a string ("x")`,
 * `a number (1)`, `an object`.
 *
 * @param value The value.
 * @returns Its description.
 */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string":
      return `a string (${quote(value)})`;
    case "number":
    case "boolean":
      return `a ${typeof value} (${String(value)})`;
    case "object":
      return "an object";
    default:
      return typeof value;
  }
}

/**
 * The message of whatever was thrown.
 *
 * @param err What was thrown.
 * @returns Its `message` if it is an `Error`, else it as a string.
 */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
