/**
 * The routes of one key: `GET`, `PUT` and `DELETE /v1/data/{key}`, and `POST /v1/data`.
 *
 * - Reads answer the key's value and revision (`create_index`, `mod_index`, `version`), with
 *   the applied index the read saw in the {@linkcode INDEX_HEADER}.
 * - Writes take a compare-and-set condition, `?cas=N` or `"cas": N` (see `casParam`): the key's
 *   `mod_index` must be `N` (0: it must not exist), else 412 with its current revision, and
 *   nothing changes.
 * - A put takes `?lease=ID` (attach the key to a lease; 404 when it does not exist) or `?ttl=10s`
 *   (a new lease for this key alone); see `leases.ts`. Without either it detaches the key.
 * - Writes take an `Idempotency-Key` header: a retry with the same key and request is answered
 *   with the first outcome and applied once (see `outcome.ts`).
 *
 * @module
 */

import type { KvResult, PlainCommand } from "../node/backend.ts";
import type { Caller } from "./auth.ts";
import { type ApiContext, backendFailure, holdForToken } from "./context.ts";
import type { AdmittedRequest } from "./limits.ts";
import { raceAbort, startDeadline } from "./deadline.ts";
import { ApiError, jsonResponse, overloadedError } from "./errors.ts";
import { leaseParam, newLeaseTtl } from "./leases.ts";
import { blockingWait } from "./watch.ts";
import {
  entryJson,
  idempotencyKey,
  INDEX_HEADER,
  REPLAYED_HEADER,
  writeOutcome,
} from "./outcome.ts";
import {
  casParam,
  checkKey,
  checkPutKey,
  checkValue,
  onlyFields,
  onlyParams,
  parseObject,
  readBody,
  readConsistency,
  refuseBody,
  requireJson,
  stringField,
  writeKey,
} from "./validate.ts";

/** What a blocking read does with its request's slot (see {@linkcode AdmittedRequest}). */
export type RequestSlot = Pick<AdmittedRequest, "pause" | "resume">;

/** What a read of one key takes: `?consistency=`, and `?index=&wait=` to wait for a change. */
const _READ_PARAMS: ReadonlySet<string> = new Set(["consistency", "index", "wait"]);
/** What a write takes in its query: a compare-and-set, a lease (or a new one's TTL). */
const _WRITE_PARAMS: ReadonlySet<string> = new Set(["cas", "lease", "ttl"]);
/** What a write's body takes (`k` only with `POST /v1/data`, or equal to the path's key). */
const _WRITE_FIELDS = ["k", "v", "cas"] as const;
/** What a delete of one key takes: a compare-and-delete. */
const _DELETE_PARAMS: ReadonlySet<string> = new Set(["cas"]);

/**
 * `POST /v1/data` (`pathKey` null) and `PUT /v1/data/{key}`: 200
 * `{"k","v","index","create_index","mod_index","version"}` once applied.
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param pathKey The key in the path, or null for `POST /v1/data`.
 * @param caller Who asked, once authorised (null when the API is open); a forward carries it on.
 * @returns The answer.
 */
export async function writeRoute(
  ctx: ApiContext,
  req: Request,
  url: URL,
  pathKey: string | null,
  caller: Caller | null,
): Promise<Response> {
  requireJson(req);
  onlyParams(url, _WRITE_PARAMS, "writing a key");
  const overloaded = ctx.backend.overloaded();
  if (overloaded !== null) throw overloadedError(overloaded, pathKey, ctx.retryAfter);
  const idem = idempotencyKey(req);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  const bytes = await readBody(req, ctx.maxBodyBytes, deadline);
  const body = parseObject(bytes);
  onlyFields(body, _WRITE_FIELDS, "the request body");
  const key = writeKey(body, pathKey);
  const value = stringField(body, "v", "the value");
  checkKey(key, ctx.maxKeyBytes);
  checkPutKey(key);
  checkValue(key, value, ctx.maxValueBytes);
  const cas = casParam(url, body, key);
  const lease = leaseParam(url);
  const cmd: PlainCommand = cas === undefined
    ? { op: "put", key, value }
    : { op: "put", key, value, cas };
  if (lease !== undefined) cmd.lease = lease;
  let result: KvResult;
  try {
    result = await raceAbort((signal) => ctx.backend.write(cmd, signal, idem), deadline.signal);
  } catch (err) {
    return await backendFailure(ctx, req, url, bytes, err, deadline, { write: true, key, caller });
  }
  if (result.op === "lease_not_found") {
    throw new ApiError(
      404,
      `lease ${result.lease} not found (never granted, revoked, or expired); nothing was written`,
      { k: key, lease: result.lease },
      // A replay of a remembered 404 says so, as a replayed 200 or 412 does.
      result.replayed ? { [REPLAYED_HEADER]: "true" } : {},
    );
  }
  return writeOutcome(result, cas, (r) => ({
    k: key,
    v: value,
    index: r.index,
    ...(r.op === "put"
      ? { create_index: r.createIndex, mod_index: r.modIndex, version: r.version }
      : {}),
    ...(r.op === "put" && r.lease !== undefined ? { lease: r.lease } : {}),
    ...(r.op === "put" && r.lease !== undefined ? newLeaseTtl(ctx, lease) : {}),
  }));
}

/**
 * `GET /v1/data/{key}`: 200 `{"k","v","create_index","mod_index","version"}`, or 404. With
 * `?index=N` (and `&wait=D`) it first waits for the key to change after `N` (see `watch.ts`):
 * counted with the watch streams against `maxWatchers` (429 past it), without its request slot
 * (429 when none is free for the read once the wait ends).
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param key The key.
 * @param caller Who asked, once authorised (null when the API is open); a forward carries it on.
 * @param slot The request's slot against `maxInflightRequests`, given back while a blocking read
 * waits (null: not counted).
 * @returns The answer.
 */
export async function readRoute(
  ctx: ApiContext,
  req: Request,
  url: URL,
  key: string,
  caller: Caller | null,
  slot: RequestSlot | null = null,
): Promise<Response> {
  onlyParams(url, _READ_PARAMS, "reading a key");
  const consistency = readConsistency(url, key);
  if (url.searchParams.has("index")) {
    await _waitForChange(ctx, req, url, key, slot);
    // Waited here: a read the leader answers must not wait there again.
    url = new URL(url);
    url.searchParams.delete("index");
    url.searchParams.delete("wait");
  } else {
    await blockingWait(ctx, req, url, key); // only checks that there is no ?wait= alone
  }
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  try {
    const r = await raceAbort(
      (signal) => ctx.backend.read(key, consistency, signal),
      deadline.signal,
    );
    const headers = { [INDEX_HEADER]: String(r.index) };
    return r.entry === null
      ? jsonResponse(404, { error: "key not found", k: key }, headers)
      : jsonResponse(200, entryJson(r.entry), headers);
  } catch (err) {
    return await backendFailure(ctx, req, url, null, err, deadline, { write: false, key, caller });
  }
}

/**
 * The wait of a blocking read (`?index=N`, see `blockingWait`): counted against `maxWatchers`
 * with the watch streams (429 past it), and holding no request slot while it waits (the slot is
 * given back when the wait starts and taken again when it ends: 429 if the node is full then).
 */
async function _waitForChange(
  ctx: ApiContext,
  req: Request,
  url: URL,
  key: string,
  slot: RequestSlot | null,
): Promise<void> {
  const { limits } = ctx;
  if (!limits.acquireBlockingRead()) {
    const max = limits.options.maxWatchers;
    throw new ApiError(
      429,
      `too many watch streams and blocking reads on this node (${
        limits.watchers + limits.blockingReads
      }; the limit is ${max}, --max-watchers); retry later or on another node`,
      { k: key, limit: max },
      ctx.retryAfter,
    );
  }
  let paused = false;
  try {
    await blockingWait(ctx, req, url, key, (end) => {
      // Called once the read waits (not when it answers at once).
      const untrack = holdForToken(ctx, req, end);
      slot?.pause();
      paused = true;
      return untrack;
    });
  } finally {
    limits.releaseBlockingRead();
  }
  if (paused && slot !== null && !slot.resume()) {
    // The index to ask after again is the one asked after: the node's applied index (what the
    // handler would put here) is past the change that ended the wait, which was not read.
    throw new ApiError(
      429,
      `too many requests: the wait ended, but this node has no request slot free to read the key (--max-inflight-requests, --max-inflight-bytes); read it again`,
      { k: key },
      { ...ctx.retryAfter, [INDEX_HEADER]: url.searchParams.get("index") ?? "0" },
    );
  }
}

/**
 * `DELETE /v1/data/{key}`: 200 `{"k","deleted","index"}`; with `?cas=N`, 412 unless the key's
 * `mod_index` is `N`.
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param key The key.
 * @param caller Who asked, once authorised (null when the API is open); a forward carries it on.
 * @returns The answer.
 */
export async function deleteRoute(
  ctx: ApiContext,
  req: Request,
  url: URL,
  key: string,
  caller: Caller | null,
): Promise<Response> {
  onlyParams(url, _DELETE_PARAMS, "deleting a key");
  const idem = idempotencyKey(req);
  const cas = casParam(url, null, key);
  const cmd: PlainCommand = cas === undefined ? { op: "delete", key } : { op: "delete", key, cas };
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  await refuseBody(
    req,
    ctx.maxBodyBytes,
    deadline,
    "deleting a key takes no request body: for a compare-and-set delete, put the mod_index in " +
      "the query (?cas=N)",
  );
  let result: KvResult;
  try {
    result = await raceAbort((signal) => ctx.backend.write(cmd, signal, idem), deadline.signal);
  } catch (err) {
    return await backendFailure(ctx, req, url, null, err, deadline, { write: true, key, caller });
  }
  return writeOutcome(result, cas, (r) => ({
    k: key,
    deleted: r.op === "delete" && r.deleted,
    index: r.index,
  }));
}
