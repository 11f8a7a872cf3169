/**
 * The client REST API of a node, as a plain `(req: Request) => Promise<Response>` function for
 * `Deno.serve`, written against {@linkcode KvBackend}.
 *
 * Routes:
 *
 * | Method   | Path              | Body            | Answer                                  |
 * | -------- | ----------------- | --------------- | --------------------------------------- |
 * | `POST`   | `/v1/data`        | `{"k","v"}`     | 200 `{"k","v","index"}` once applied    |
 * | `PUT`    | `/v1/data/{key}`  | `{"v"}`         | 200 `{"k","v","index"}` once applied    |
 * | `GET`    | `/v1/data/{key}`  |                 | 200 `{"k","v"}`, or 404                 |
 * | `DELETE` | `/v1/data/{key}`  |                 | 200 `{"k","deleted","index"}`           |
 * | `GET`    | `/v1/status`      |                 | 200 the node's {@linkcode NodeStatus}   |
 * | `GET`    | `/v1/snapshot`    |                 | 200 a backup, streamed                  |
 * | `GET`    | `/health`         |                 | 200 `{"status":"ok"}` (process alive)   |
 * | `GET`    | `/ready`          |                 | 200 `{"ready":true}`, or 503            |
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
 * Fields other than `k` and `v` are ignored.
 *
 * Back-pressure: past `maxInflightRequests` requests, or `maxInflightBytes` of their bodies, in
 * progress (`/health` and `/ready` aside) a request is answered 429 at once, its body unread; past `maxForwardedRequests` forwards in
 * progress a request that needs the leader is answered 429; past `maxConcurrentBackups` backups
 * streaming, `/v1/snapshot` is answered 429; a backup not fully read within `backupTimeoutMs`
 * is cut off. All of these carry `Retry-After`.
 *
 * Every error answer is JSON, `{"error": "..."}` plus details, with `Content-Type:
 * application/json`. A rejected request changes nothing: everything is validated before the
 * backend is called.
 *
 * A node that is not the leader forwards writes and linearizable or lease reads to the leader it
 * knows, and relays the answer; see {@linkcode createApiHandler}.
 *
 * @module
 */

import {
  type Consistency,
  type KvBackend,
  type NodeStatus,
  NoSpaceError,
  NotAppliedError,
  NotLeaderError,
  OutcomeUnknownError,
  OverloadedError,
  StoppingError,
} from "../node/backend.ts";
import { fetchForwarder, ForwardConnectError, type Forwarder } from "./forwarder.ts";

export {
  closeForwarder,
  fetchForwarder,
  ForwardConnectError,
  type Forwarder,
} from "./forwarder.ts";

/** The header a node adds to a request it forwards; its value is the forwarding node's id. */
export const FORWARDED_BY_HEADER = "x-raftkv-forwarded-by";

/** The header on a relayed answer naming the leader that gave it. */
export const FORWARDED_TO_HEADER = "x-raftkv-forwarded-to";

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
   * Largest request body in bytes. Note that JSON escapes (`\"`, `\u0000`) make a body longer
   * than the value it carries.
   *
   * @default {maxKeyBytes + maxValueBytes + 4096}
   */
  maxBodyBytes?: number;
  /**
   * Sends forwarded requests to the leader.
   *
   * @default {fetchForwarder}
   */
  forward?: Forwarder;
  /**
   * Most requests in progress on this node at once; one more is answered 429 with `Retry-After`
   * at once, without reading its body. `GET /health` and `GET /ready` are not counted.
   *
   * @default {1024}
   */
  maxInflightRequests?: number;
  /**
   * Most bytes of request bodies in progress at once: a request counts its `Content-Length`, or
   * `maxBodyBytes` when a `POST` or `PUT` declares none (a chunked body). One that would pass it
   * is answered 429 with `Retry-After` at once, without reading its body, unless it is the only
   * request in progress. Bounds the memory that bodies being read and parsed hold.
   *
   * @default {67108864}
   */
  maxInflightBytes?: number;
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
}

/**
 * Creates the request handler of the REST API.
 *
 * When the backend throws {@linkcode NotLeaderError} and `backend.status().leader` names another
 * node, the original request (method, path, query and body bytes) is forwarded to that node's
 * `api_url` with the {@linkcode FORWARDED_BY_HEADER}, and its status, `Content-Type`,
 * `Retry-After` and body are relayed. A request that already carries that header is never
 * forwarded again (the answer is 503).
 *
 * Status codes: 200 success; 400 malformed request; 404 unknown path or key; 405 wrong method
 * (with `Allow`); 408 body not received in time; 413 key, value or body too large; 415 a write
 * without `Content-Type: application/json`; 429 too many requests, forwards or backups in progress
 * (with `Retry-After`); 499 the client went away; 500 unexpected failure; 502 a forwarded write
 * failed after it may have been sent; 503 no leader, not applied, too many writes waiting on the
 * leader, shutting down, leader unreachable or changed (with `Retry-After`); 504 deadline passed
 * (a write may or may not have been applied); 507 the leader's disk is full
 * (`{"error":"no space left on device","alarm":"NOSPACE"}`; nothing done).
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
export function createApiHandler(
  backend: KvBackend,
  options: ApiOptions,
): (req: Request) => Promise<Response> {
  const ctx = _resolveOptions(backend, options);
  return async (req) => {
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      return _errorResponse(new _ApiError(400, `the request URL ${_quote(req.url)} is not valid`));
    }
    const counted = url.pathname !== "/health" && url.pathname !== "/ready";
    const bytes = counted ? _declaredBodyBytes(ctx, req) : 0;
    if (counted) {
      if (
        ctx.inflight >= ctx.maxInflightRequests ||
        (ctx.inflight > 0 && ctx.inflightBytes + bytes > ctx.maxInflightBytes)
      ) {
        return _json(429, { error: "too many requests" }, ctx.retryAfter);
      }
      ctx.inflight++;
      ctx.inflightBytes += bytes;
    }
    try {
      return await _route(ctx, req, url);
    } catch (err) {
      const apiError = err instanceof _ApiError ? err : undefined;
      if (apiError !== undefined) {
        if (apiError.status >= 500 && apiError.logged) {
          ctx.logError(_logLine(req, url, apiError.status, apiError.message));
        }
        return _errorResponse(apiError);
      }
      ctx.logError(
        _logLine(req, url, 500, err instanceof Error ? (err.stack ?? String(err)) : String(err)),
      );
      return _errorResponse(
        new _ApiError(500, "internal error while serving the request; the node's log has details"),
      );
    } finally {
      if (counted) {
        ctx.inflight--;
        ctx.inflightBytes -= bytes;
      }
    }
  };
}

interface _Context {
  backend: KvBackend;
  selfId: string;
  apiTimeoutMs: number;
  apiFwdTimeoutMs: number;
  maxKeyBytes: number;
  maxValueBytes: number;
  maxBodyBytes: number;
  forward: Forwarder;
  retryAfter: Record<string, string>;
  logError: (line: string) => void;
  maxInflightRequests: number;
  maxForwardedRequests: number;
  maxConcurrentBackups: number;
  backupTimeoutMs: number;
  maxInflightBytes: number;
  /** Requests in progress (counted ones) and their bodies' bytes, forwards in progress, backups streaming. */
  inflight: number;
  inflightBytes: number;
  forwarding: number;
  backups: number;
}

/** The deadline of one request: its signal, and whether the time ran out or the client left. */
interface _Deadline extends Disposable {
  signal: AbortSignal;
  ms: number;
  timedOut(): boolean;
  clientGone(): boolean;
}

/**
 * A failure answered as JSON `{"error": message, ...extra}`. A 5xx one is logged unless `logged`
 * is false (answers to overload: one line each would flood the log exactly when it hurts).
 */
class _ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
    readonly logged = true,
  ) {
    super(message);
    this.name = "_ApiError";
  }
}

const _CONSISTENCIES: readonly Consistency[] = ["linearizable", "stale", "lease"];
const _DATA_PREFIX = "/v1/data/";
const _EXAMPLE = '{"k":"a","v":"1"}';
const _CLIENT_GONE = 499;

function _resolveOptions(backend: KvBackend, options: ApiOptions): _Context {
  if (typeof options.selfId !== "string" || options.selfId === "") {
    throw new RangeError("selfId must be a non-empty string");
  }
  const maxKeyBytes = _positiveInt("maxKeyBytes", options.maxKeyBytes ?? 1024);
  const maxValueBytes = _positiveInt("maxValueBytes", options.maxValueBytes ?? 1_048_576);
  const retryAfterSeconds = options.retryAfterSeconds ?? 1;
  if (!Number.isSafeInteger(retryAfterSeconds) || retryAfterSeconds < 0) {
    throw new RangeError(
      `retryAfterSeconds must be a whole number >= 0, got ${String(retryAfterSeconds)}`,
    );
  }
  return {
    backend,
    selfId: options.selfId,
    apiTimeoutMs: _positiveInt("apiTimeoutMs", options.apiTimeoutMs ?? 5000),
    apiFwdTimeoutMs: _positiveInt("apiFwdTimeoutMs", options.apiFwdTimeoutMs ?? 5000),
    maxKeyBytes,
    maxValueBytes,
    maxBodyBytes: _positiveInt(
      "maxBodyBytes",
      options.maxBodyBytes ?? maxKeyBytes + maxValueBytes + 4096,
    ),
    forward: options.forward ?? fetchForwarder,
    retryAfter: { "retry-after": String(retryAfterSeconds) },
    logError: options.logError ?? ((line) => console.error(line)),
    maxInflightRequests: _positiveInt("maxInflightRequests", options.maxInflightRequests ?? 1024),
    maxInflightBytes: _positiveInt("maxInflightBytes", options.maxInflightBytes ?? 64 << 20),
    maxForwardedRequests: _positiveInt(
      "maxForwardedRequests",
      options.maxForwardedRequests ?? 256,
    ),
    maxConcurrentBackups: _positiveInt(
      "maxConcurrentBackups",
      options.maxConcurrentBackups ?? 2,
    ),
    backupTimeoutMs: _positiveInt("backupTimeoutMs", options.backupTimeoutMs ?? 600_000),
    inflight: 0,
    inflightBytes: 0,
    forwarding: 0,
    backups: 0,
  };
}

function _positiveInt(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`${name} must be a whole number >= 1, got ${String(value)}`);
  }
  return value;
}

async function _route(ctx: _Context, req: Request, url: URL): Promise<Response> {
  const path = url.pathname;
  switch (path) {
    case "/health":
      _allow(req, path, ["GET"]);
      return _json(200, { status: "ok" });
    case "/ready":
      _allow(req, path, ["GET"]);
      return ctx.backend.isReady() ? _json(200, { ready: true }) : _json(503, {
        ready: false,
        error: "not ready: this node knows no leader or has not yet applied what it committed",
      }, ctx.retryAfter);
    case "/v1/status":
      _allow(req, path, ["GET"]);
      return _json(200, ctx.backend.status());
    case "/v1/snapshot": {
      _allow(req, path, ["GET"]);
      if (ctx.backups >= ctx.maxConcurrentBackups) {
        throw new _ApiError(
          429,
          `too many backups in progress (${ctx.backups}; the limit is ${ctx.maxConcurrentBackups}, maxConcurrentBackups)`,
          { limit: ctx.maxConcurrentBackups },
          ctx.retryAfter,
        );
      }
      const snap = ctx.backend.snapshot();
      return new Response(_boundedBackup(ctx, snap.stream), {
        headers: {
          "content-type": "application/octet-stream",
          "content-disposition": `attachment; filename="raftkv-${snap.index}.snap"`,
          "x-raftkv-snapshot-index": String(snap.index),
        },
      });
    }
    case "/v1/data":
      _allow(req, path, ["POST"]);
      return await _write(ctx, req, url, null);
  }
  if (!path.startsWith(_DATA_PREFIX)) {
    throw new _ApiError(
      404,
      `no such path ${
        _quote(path)
      }; the API serves /v1/data, /v1/data/{key}, /v1/status, /v1/snapshot, /health and /ready`,
    );
  }
  _allow(req, "/v1/data/{key}", ["GET", "PUT", "DELETE"]);
  const key = _pathKey(path.slice(_DATA_PREFIX.length));
  _checkKey(ctx, key);
  switch (req.method) {
    case "GET":
      return await _read(ctx, req, url, key);
    case "PUT":
      return await _write(ctx, req, url, key);
    default:
      return await _delete(ctx, req, url, key);
  }
}

function _allow(req: Request, route: string, methods: string[]): void {
  if (!methods.includes(req.method)) {
    const allow = methods.join(", ");
    throw new _ApiError(
      405,
      `method ${_quote(req.method)} is not allowed on ${route}; allowed: ${allow}`,
      {},
      { allow },
    );
  }
}

/** `POST /v1/data` (`pathKey` null) and `PUT /v1/data/{key}`. */
async function _write(
  ctx: _Context,
  req: Request,
  url: URL,
  pathKey: string | null,
): Promise<Response> {
  _requireJson(req);
  const overloaded = ctx.backend.overloaded();
  if (overloaded !== null) throw _overloadedError(ctx, overloaded, pathKey);
  using deadline = _deadline(ctx.apiTimeoutMs, req.signal);
  const bytes = await _readBody(ctx, req, deadline);
  const body = _parseObject(bytes);
  let key: string;
  if (pathKey === null) {
    key = _stringField(body, "k", "the key");
  } else {
    key = pathKey;
    if (Object.hasOwn(body, "k")) {
      const bodyKey = _stringField(body, "k", "the key");
      if (bodyKey !== pathKey) {
        throw new _ApiError(
          400,
          `"k" in the body (${_quote(bodyKey)}) differs from the key in the path (${
            _quote(pathKey)
          }); omit "k" or make them equal`,
        );
      }
    }
  }
  const value = _stringField(body, "v", "the value");
  _checkKey(ctx, key);
  const valueBytes = _utf8Length(value);
  if (valueBytes > ctx.maxValueBytes) {
    throw new _ApiError(
      413,
      `the value is ${valueBytes} bytes (UTF-8); the limit is ${ctx.maxValueBytes} bytes (maxValueBytes)`,
      { k: key, limit_bytes: ctx.maxValueBytes, size_bytes: valueBytes },
    );
  }
  try {
    const result = await _race((signal) => ctx.backend.put(key, value, signal), deadline.signal);
    return _json(200, { k: key, v: value, index: result.index });
  } catch (err) {
    return await _backendFailure(ctx, req, url, bytes, err, deadline, { write: true, key });
  }
}

async function _read(ctx: _Context, req: Request, url: URL, key: string): Promise<Response> {
  const raw = url.searchParams.get("consistency") ?? "linearizable";
  const consistency = _CONSISTENCIES.find((c) => c === raw);
  if (consistency === undefined) {
    throw new _ApiError(
      400,
      `unknown consistency ${_quote(raw)}; expected linearizable (the default), stale or lease`,
      { k: key },
    );
  }
  using deadline = _deadline(ctx.apiTimeoutMs, req.signal);
  try {
    const value = await _race(
      (signal) => ctx.backend.get(key, consistency, signal),
      deadline.signal,
    );
    return value === null ? _json(404, { error: "key not found", k: key }) : _json(200, {
      k: key,
      v: value,
    });
  } catch (err) {
    return await _backendFailure(ctx, req, url, null, err, deadline, { write: false, key });
  }
}

async function _delete(ctx: _Context, req: Request, url: URL, key: string): Promise<Response> {
  using deadline = _deadline(ctx.apiTimeoutMs, req.signal);
  try {
    const result = await _race((signal) => ctx.backend.delete(key, signal), deadline.signal);
    return _json(200, { k: key, deleted: result.deleted, index: result.index });
  } catch (err) {
    return await _backendFailure(ctx, req, url, null, err, deadline, { write: true, key });
  }
}

/** Turns what the backend threw into an answer: a forward, or an {@linkcode _ApiError}. */
async function _backendFailure(
  ctx: _Context,
  req: Request,
  url: URL,
  body: Uint8Array<ArrayBuffer> | null,
  err: unknown,
  deadline: _Deadline,
  op: { write: boolean; key: string },
): Promise<Response> {
  const k = op.key;
  if (err instanceof NotLeaderError) {
    return await _forward(ctx, req, url, body, err, op);
  }
  if (err instanceof NotAppliedError) {
    throw new _ApiError(503, `${err.message}; retrying is safe`, { k }, ctx.retryAfter);
  }
  if (err instanceof OverloadedError) throw _overloadedError(ctx, err, k);
  if (err instanceof StoppingError) {
    throw new _ApiError(503, `${err.message}; retry on another node`, { k }, ctx.retryAfter);
  }
  if (err instanceof NoSpaceError) {
    throw new _ApiError(507, err.message, { alarm: "NOSPACE", k });
  }
  if (deadline.clientGone()) {
    throw new _ApiError(_CLIENT_GONE, "the client closed the request", { k });
  }
  if (deadline.timedOut()) {
    throw op.write
      ? new _ApiError(
        504,
        `timed out after ${deadline.ms}ms; the write may or may not have been applied`,
        { k, outcome: "unknown" },
      )
      : new _ApiError(
        504,
        `timed out after ${deadline.ms}ms; a read changes nothing, so retrying is safe`,
        { k },
      );
  }
  if (err instanceof OutcomeUnknownError) {
    throw new _ApiError(504, err.message, { k, outcome: "unknown" });
  }
  throw err;
}

/** The answer to a write refused for overload: 503, not logged (one line each would flood). */
function _overloadedError(ctx: _Context, err: OverloadedError, k: string | null): _ApiError {
  return new _ApiError(
    503,
    `${err.message}; the write was not applied, retrying later is safe`,
    {
      ...(k === null ? {} : { k }),
      pending_proposals: err.pendingProposals,
      pending_bytes: err.pendingBytes,
    },
    ctx.retryAfter,
    false,
  );
}

/** Forwards the original request to the leader and relays its answer. */
async function _forward(
  ctx: _Context,
  req: Request,
  url: URL,
  body: Uint8Array<ArrayBuffer> | null,
  notLeader: NotLeaderError,
  op: { write: boolean; key: string },
): Promise<Response> {
  const k = op.key;
  const forwardedBy = req.headers.get(FORWARDED_BY_HEADER);
  if (forwardedBy !== null) {
    throw new _ApiError(
      503,
      `the request was forwarded here by ${
        _quote(forwardedBy)
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
    const hint = notLeader.leader === "" ? "" : ` (last heard of: ${_quote(notLeader.leader)})`;
    throw new _ApiError(
      503,
      `this node is not the leader and knows no leader to forward to${hint}; retry later`,
      { k },
      ctx.retryAfter,
    );
  }
  const target = leader.api_url.replace(/\/+$/, "") + url.pathname + url.search;
  const protocol = URL.parse(target)?.protocol;
  if (protocol !== "http:" && protocol !== "https:") {
    throw new _ApiError(
      503,
      `cannot forward to the leader ${_quote(leader.id)}: its api_url ${
        _quote(leader.api_url)
      } is not an http(s) URL`,
      { k, leader: leader.id },
      ctx.retryAfter,
    );
  }
  if (ctx.forwarding >= ctx.maxForwardedRequests) {
    throw new _ApiError(
      429,
      `too many requests being forwarded to the leader ${
        _quote(leader.id)
      } (the limit is ${ctx.maxForwardedRequests}, maxForwardedRequests); nothing was sent`,
      { k, limit: ctx.maxForwardedRequests },
      ctx.retryAfter,
    );
  }
  ctx.forwarding++;
  try {
    return await _relay(ctx, req, url, body, leader, target, op);
  } finally {
    ctx.forwarding--;
  }
}

/** Sends the request to the leader at `target` and relays its answer (see {@linkcode _forward}). */
async function _relay(
  ctx: _Context,
  req: Request,
  url: URL,
  body: Uint8Array<ArrayBuffer> | null,
  leader: { id: string; api_url: string },
  target: string,
  op: { write: boolean; key: string },
): Promise<Response> {
  const k = op.key;
  const headers: Record<string, string> = { [FORWARDED_BY_HEADER]: ctx.selfId };
  const contentType = req.headers.get("content-type");
  if (contentType !== null) headers["content-type"] = contentType;
  using deadline = _deadline(ctx.apiFwdTimeoutMs, req.signal);
  const init: RequestInit & { signal: AbortSignal } = {
    method: req.method,
    headers,
    redirect: "manual",
    signal: deadline.signal,
  };
  if (body !== null) init.body = body;
  const where = `the leader ${_quote(leader.id)} at ${leader.api_url}`;
  let res: Response;
  let answer: ArrayBuffer;
  try {
    res = await _race(() => ctx.forward(target, init), deadline.signal);
    answer = await _race(() => res.arrayBuffer(), deadline.signal);
  } catch (err) {
    if (deadline.clientGone()) {
      throw new _ApiError(_CLIENT_GONE, "the client closed the request", { k });
    }
    const extra = { k, leader: leader.id };
    if (deadline.timedOut()) {
      throw op.write
        ? new _ApiError(
          504,
          `forwarded to ${where}, which did not answer within ${deadline.ms}ms; the write may or may not have been applied`,
          { ...extra, outcome: "unknown" },
        )
        : new _ApiError(
          504,
          `forwarded to ${where}, which did not answer within ${deadline.ms}ms; a read changes nothing, so retrying is safe`,
          extra,
        );
    }
    const reason = err instanceof Error ? err.message : String(err);
    if (err instanceof ForwardConnectError || !op.write) {
      throw new _ApiError(503, `${where} unreachable: ${reason}`, extra, ctx.retryAfter);
    }
    throw new _ApiError(
      502,
      `forwarding to ${where} failed after the request may have been sent (${reason}); the write may or may not have been applied`,
      { ...extra, outcome: "unknown" },
    );
  }
  const relayed = new Headers({ [FORWARDED_TO_HEADER]: leader.id });
  for (const name of ["content-type", "retry-after"]) {
    const value = res.headers.get(name);
    if (value !== null) relayed.set(name, value);
  }
  if (res.status >= 500) {
    ctx.logError(_logLine(req, url, res.status, `relayed from ${where}`));
  }
  const hasBody = res.status !== 204 && res.status !== 304;
  return new Response(hasBody ? answer : null, { status: res.status, headers: relayed });
}

/**
 * The bytes a request's body will hold: its `Content-Length` (at most `maxBodyBytes`: a larger one
 * is refused unread), or `maxBodyBytes` for a `POST` or `PUT` that declares none.
 */
function _declaredBodyBytes(ctx: _Context, req: Request): number {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (Number.isSafeInteger(declared) && declared >= 0) return Math.min(declared, ctx.maxBodyBytes);
  return req.method === "POST" || req.method === "PUT" ? ctx.maxBodyBytes : 0;
}

/**
 * Refuses a request whose `Content-Type` is not `application/json` (any parameters, any case),
 * before its body is read.
 */
function _requireJson(req: Request): void {
  const type = req.headers.get("content-type");
  const media = type?.split(";", 1)[0]?.trim().toLowerCase();
  if (media === "application/json") return;
  throw new _ApiError(
    415,
    type === null
      ? `the request has no Content-Type; send the JSON body with Content-Type: application/json`
      : `the request's Content-Type is ${
        _quote(type)
      }; send the JSON body with Content-Type: application/json`,
    { content_type: type },
  );
}

/**
 * Wraps a backup stream so that it counts as one of the `maxConcurrentBackups` until it ends
 * (read to the end, cancelled by the client, failed or timed out), and fails once
 * `backupTimeoutMs` has passed: the source is then cancelled, which releases its view.
 */
function _boundedBackup(
  ctx: _Context,
  source: ReadableStream<Uint8Array>,
): ReadableStream<Uint8Array> {
  ctx.backups++;
  const reader = source.getReader();
  let ended = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const end = () => {
    if (ended) return false;
    ended = true;
    ctx.backups--;
    clearTimeout(timer);
    return true;
  };
  return new ReadableStream<Uint8Array>({
    start(controller) {
      timer = setTimeout(() => {
        if (!end()) return;
        const reason = new DOMException(
          `the backup was not read within ${ctx.backupTimeoutMs}ms (backupTimeoutMs); cut off`,
          "TimeoutError",
        );
        controller.error(reason);
        reader.cancel(reason).catch(() => {});
      }, ctx.backupTimeoutMs);
    },
    async pull(controller) {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await reader.read();
      } catch (err) {
        if (end()) controller.error(err);
        return;
      }
      if (ended) return; // Timed out while waiting: the stream has already failed.
      if (next.done) {
        end();
        controller.close();
      } else {
        controller.enqueue(next.value);
      }
    },
    async cancel(reason) {
      end();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** Reads the whole body, refusing one over `maxBodyBytes` without reading the rest. */
async function _readBody(
  ctx: _Context,
  req: Request,
  deadline: _Deadline,
): Promise<Uint8Array<ArrayBuffer>> {
  const max = ctx.maxBodyBytes;
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > max) {
    throw new _ApiError(
      413,
      `the request body is ${declared} bytes; the limit is ${max} bytes (maxBodyBytes)`,
      { limit_bytes: max, size_bytes: declared },
    );
  }
  if (req.body === null) return new Uint8Array(0);
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    while (true) {
      const chunk = await _race(() => reader.read(), deadline.signal);
      if (chunk.done) break;
      total += chunk.value.byteLength;
      if (total > max) {
        throw new _ApiError(
          413,
          `the request body exceeds the limit of ${max} bytes (maxBodyBytes)`,
          { limit_bytes: max },
        );
      }
      chunks.push(chunk.value);
    }
  } catch (err) {
    reader.cancel().catch(() => {});
    if (err instanceof _ApiError) throw err;
    if (deadline.clientGone()) {
      throw new _ApiError(_CLIENT_GONE, "the client closed the request");
    }
    if (deadline.timedOut()) {
      throw new _ApiError(408, `the request body did not arrive within ${deadline.ms}ms`);
    }
    throw new _ApiError(400, `the request body could not be read: ${_message(err)}`);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function _parseObject(bytes: Uint8Array): Record<string, unknown> {
  if (bytes.byteLength === 0) {
    throw new _ApiError(400, `the request body is empty; expected a JSON object like ${_EXAMPLE}`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new _ApiError(400, "the request body is not valid UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new _ApiError(
      400,
      `the request body is not valid JSON (${
        _message(err)
      }); expected a JSON object like ${_EXAMPLE}`,
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new _ApiError(
      400,
      `the request body must be a JSON object like ${_EXAMPLE}, not ${_describe(value)}`,
    );
  }
  return value as Record<string, unknown>;
}

function _stringField(body: Record<string, unknown>, name: string, what: string): string {
  if (!Object.hasOwn(body, name)) {
    throw new _ApiError(400, `missing "${name}" (${what}) in the request body`);
  }
  const value = body[name];
  if (typeof value !== "string") {
    throw new _ApiError(400, `"${name}" (${what}) must be a string, not ${_describe(value)}`);
  }
  if (!value.isWellFormed()) {
    throw new _ApiError(
      400,
      `"${name}" (${what}) is not well-formed Unicode: it contains a lone surrogate`,
    );
  }
  return value;
}

function _pathKey(encoded: string): string {
  try {
    return decodeURIComponent(encoded);
  } catch {
    throw new _ApiError(
      400,
      `the key in the path is not valid percent-encoded UTF-8: ${_quote(encoded)}`,
    );
  }
}

function _checkKey(ctx: _Context, key: string): void {
  if (key === "") throw new _ApiError(400, "key must not be empty");
  const size = _utf8Length(key);
  if (size > ctx.maxKeyBytes) {
    throw new _ApiError(
      413,
      `the key is ${size} bytes (UTF-8); the limit is ${ctx.maxKeyBytes} bytes (maxKeyBytes)`,
      { limit_bytes: ctx.maxKeyBytes, size_bytes: size },
    );
  }
}

/**
 * Starts a deadline of `ms` that also ends when the client goes away. Dispose of it once the
 * answer is ready: that stops the timer and stops listening to the client's signal.
 */
function _deadline(ms: number, clientSignal: AbortSignal): _Deadline {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new DOMException(`timed out after ${ms}ms`, "TimeoutError"));
  }, ms);
  const onClientGone = () => controller.abort(clientSignal.reason);
  if (clientSignal.aborted) onClientGone();
  else clientSignal.addEventListener("abort", onClientGone, { once: true });
  return {
    signal: controller.signal,
    ms,
    timedOut: () => timedOut,
    clientGone: () => !timedOut && clientSignal.aborted,
    [Symbol.dispose]() {
      clearTimeout(timer);
      clientSignal.removeEventListener("abort", onClientGone);
    },
  };
}

/**
 * Runs `op(signal)` but settles as soon as `signal` aborts, even if `op` ignores the signal (a
 * late failure of `op` is then dropped).
 */
async function _race<T>(op: (signal: AbortSignal) => Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted();
  const running = (async () => await op(signal))();
  running.catch(() => {});
  let onAbort = (): void => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([running, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

/** The length of `text` encoded as UTF-8, without encoding it. `text` is well-formed. */
function _utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff) {
      bytes += 4; // a surrogate pair: one code point of 4 bytes
      i++;
    } else bytes += 3;
  }
  return bytes;
}

function _json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...headers, "content-type": "application/json" },
  });
}

function _errorResponse(err: _ApiError): Response {
  return _json(err.status, { error: err.message, ...err.extra }, err.headers);
}

function _logLine(req: Request, url: URL, status: number, message: string): string {
  return `raftkv api: ${req.method} ${url.pathname}${url.search} -> ${status}: ${message}`;
}

/** `text` as a JSON string, cut short when long. */
function _quote(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}...` : text);
}

function _describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string":
      return `a string (${_quote(value)})`;
    case "number":
    case "boolean":
      return `a ${typeof value} (${String(value)})`;
    case "object":
      return "an object";
    default:
      return typeof value;
  }
}

function _message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
