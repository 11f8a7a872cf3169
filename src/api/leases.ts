/**
 * The lease routes, and the lease parameters of a put.
 *
 * | Method   | Path                          | Body        | Answer                                   |
 * | -------- | ----------------------------- | ----------- | ---------------------------------------- |
 * | `POST`   | `/v1/leases`                  | `{"ttl"}`   | 201 `{"id","ttl","ttl_ms","index"}`      |
 * | `GET`    | `/v1/leases`                  |             | 200 `{"leases":[lease...]}`              |
 * | `GET`    | `/v1/leases/{id}`             |             | 200 a lease, or 404                      |
 * | `POST`   | `/v1/leases/{id}/keepalive`   | none        | 200 a lease (its time left renewed), or 404 |
 * | `DELETE` | `/v1/leases/{id}`             |             | 200 `{"id","revoked","deleted","index"}`, or 404 |
 *
 * A lease is `{"id","ttl","ttl_ms","remaining_ms","keys"}`. A `ttl` is a duration (`"10s"`,
 * `"500ms"`, `"1m30s"`) or a number of seconds. A put attaches its key with `?lease=ID` (404 when
 * the lease does not exist), or grants a new lease for it alone with `?ttl=10s` (the answer's
 * `lease` is its id, `lease_ttl` and `lease_ttl_ms` its TTL); a put without either detaches the
 * key from its lease. A TTL below the node's minimum (one and a half election timeouts, see
 * `minLeaseTtlMs` in `src/node/lease_tracker.ts`) is raised to it, and the answer gives the TTL
 * granted (a grant's answer adds `requested_ttl_ms` then), as etcd does.
 *
 * Grants, puts and revocations go through the log like every write. Keep-alives and the time
 * left are the leader's (it alone tracks deadlines, see `src/node/lease_tracker.ts`): a follower
 * forwards them to the leader. A grant and a revocation take an `Idempotency-Key` like any write
 * (a retry is answered with the first outcome).
 *
 * @module
 */

import { type LeaseBackend, LeaseNotFoundError, type LeaseRef } from "../node/backend.ts";
import type { LeaseStatus } from "../node/backend.ts";
import type { Caller } from "./auth.ts";
import { type ApiContext, backendFailure } from "./context.ts";
import { raceAbort, startDeadline } from "./deadline.ts";
import { ApiError, jsonResponse, quote } from "./errors.ts";
import {
  onlyFields,
  onlyParams,
  parseObject,
  readBody,
  refuseBody,
  requireJson,
} from "./validate.ts";
import { idempotencyKey, REPLAYED_HEADER } from "./outcome.ts";
import type { KvResult } from "../node/backend.ts";
import { grantedTtlMs } from "../node/lease_tracker.ts";

/** The longest time to live, in milliseconds (about 24.8 days). */
export const MAX_LEASE_TTL_MS = 2_147_483_647;

/** The path of the lease routes. */
export const LEASES_PATH = "/v1/leases";

const _UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const _DURATION = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$/;
const _PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;

/**
 * A time to live: a duration string (`"10s"`, `"1m30s"`, `"250ms"`) or a number of seconds.
 *
 * @param raw The value given.
 * @param where Where it was given, for the error message.
 * @returns Whole milliseconds, from 1 to {@linkcode MAX_LEASE_TTL_MS}.
 * @throws {ApiError} 400 for anything else.
 */
export function parseTtl(raw: unknown, where: string): number {
  let ms = NaN;
  if (typeof raw === "number") {
    ms = raw * 1000;
  } else if (typeof raw === "string" && /^\d{1,12}(?:\.\d{1,3})?$/.test(raw)) {
    // Seconds, as text (`?ttl=10`, `raftkv lease grant 10`) as well as a JSON number.
    ms = Math.round(Number(raw) * 1000);
  } else if (typeof raw === "string" && _DURATION.test(raw)) {
    ms = 0;
    for (const [, n = "", unit = ""] of raw.matchAll(_PART)) ms += Number(n) * _UNIT_MS[unit]!;
  }
  if (!Number.isInteger(ms) || ms < 1 || ms > MAX_LEASE_TTL_MS) {
    throw new ApiError(
      400,
      `${where} ${
        quote(String(raw))
      } must be a duration like "10s", "500ms" or "1m30s" (or a number of seconds), from 1ms to ${MAX_LEASE_TTL_MS}ms`,
    );
  }
  return ms;
}

/**
 * The lease parameters of a put: `?lease=ID` (an existing lease) or `?ttl=DURATION` (a new lease
 * for this key alone); undefined without either.
 *
 * @param url The request URL.
 * @returns The lease the put attaches its key to.
 * @throws {ApiError} 400 for a malformed id or duration, or both given.
 */
export function leaseParam(url: URL): LeaseRef | undefined {
  const id = url.searchParams.get("lease");
  const ttl = url.searchParams.get("ttl");
  if (id !== null && ttl !== null) {
    throw new ApiError(
      400,
      "give lease=ID (an existing lease) or ttl=DURATION (a new one), not both",
    );
  }
  if (id !== null) return { id: _leaseId(id) };
  if (ttl !== null) return { ttlMs: parseTtl(ttl, "ttl=") };
  return undefined;
}

/**
 * The fields a put's answer adds for the new lease it granted (`?ttl=`): `lease_ttl` and
 * `lease_ttl_ms`, the TTL as granted (raised to the node's minimum, as the node raised it in the
 * command); none for a put that named an existing lease or none.
 *
 * @param ctx The handler's context (its backend's minimum TTL).
 * @param lease The put's lease parameter.
 * @returns The fields, or an empty object.
 */
export function newLeaseTtl(
  ctx: ApiContext,
  lease: LeaseRef | undefined,
): { lease_ttl?: string; lease_ttl_ms?: number } {
  if (lease === undefined || !("ttlMs" in lease)) return {};
  const ms = grantedTtlMs(lease.ttlMs, ctx.backend.leases?.minTtlMs ?? 0);
  return { lease_ttl: ttlText(ms), lease_ttl_ms: ms };
}

/** A lease id from the path or the query. */
function _leaseId(raw: string): number {
  const id = /^\d{1,16}$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(id) || id < 1) {
    throw new ApiError(400, `the lease id ${quote(raw)} must be a positive integer`);
  }
  return id;
}

/** A time to live as text: whole seconds as "10s", else milliseconds. */
export function ttlText(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** A lease as the API shows it. */
export function leaseJson(l: LeaseStatus): Record<string, unknown> {
  return {
    id: l.id,
    ttl: ttlText(l.ttlMs),
    ttl_ms: l.ttlMs,
    remaining_ms: l.remainingMs,
    keys: l.keys,
  };
}

/** The answer for a lease that does not exist. */
function _notFound(id: number): ApiError {
  return new ApiError(
    404,
    `lease ${id} not found (never granted, revoked, or expired)`,
    { lease: id },
  );
}

/**
 * Serves `/v1/leases` and `/v1/leases/{id}[/keepalive]`.
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param caller Who asked, once authorised (null when the API is open).
 * @param allow Checks the method against the route's (answers 405 otherwise).
 * @returns The answer.
 */
export async function leaseRoutes(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
  allow: (route: string, methods: string[]) => void,
): Promise<Response> {
  const leases = ctx.backend.leases;
  if (leases === undefined) throw new ApiError(501, "this node does not serve leases");
  // A lease route takes no query parameter: `?ttl=` on a grant must not be ignored.
  onlyParams(url, _NO_PARAMS, `${req.method} ${LEASES_PATH}`);
  const rest = url.pathname.slice(LEASES_PATH.length);
  if (rest === "" || rest === "/") {
    allow(LEASES_PATH, ["GET", "POST"]);
    if (req.method === "GET") return await _status(ctx, req, url, caller, leases, null);
    return await _grant(ctx, req, url, caller);
  }
  const m = /^\/([^/]+)(\/keepalive)?$/.exec(rest);
  if (m === null) {
    throw new ApiError(404, `no such path ${quote(url.pathname)}; see ${LEASES_PATH}/{id}`);
  }
  const id = _leaseId(m[1]!);
  if (m[2] !== undefined) {
    allow(`${LEASES_PATH}/{id}/keepalive`, ["POST"]);
    await _noBody(ctx, req, "a keep-alive renews the lease's own TTL; it takes no body");
    return await _leader(ctx, req, url, caller, id, async (signal) => {
      return jsonResponse(200, leaseJson(await leases.keepAlive(id, signal)));
    });
  }
  allow(`${LEASES_PATH}/{id}`, ["GET", "DELETE"]);
  if (req.method === "GET") return await _status(ctx, req, url, caller, leases, id);
  return await _revoke(ctx, req, url, caller, id);
}

const _NO_PARAMS: ReadonlySet<string> = new Set();

/** Refuses a body on a lease route that takes none (a keep-alive, a revoke). */
async function _noBody(ctx: ApiContext, req: Request, message: string): Promise<void> {
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  await refuseBody(req, ctx.maxBodyBytes, deadline, message);
}

/** Runs a leader-only lease call, forwarding on a follower, 404 for an unknown lease. */
async function _leader(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
  id: number | null,
  call: (signal: AbortSignal) => Promise<Response>,
): Promise<Response> {
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  try {
    return await raceAbort(call, deadline.signal);
  } catch (err) {
    if (err instanceof LeaseNotFoundError) throw _notFound(id ?? err.id);
    return await backendFailure(ctx, req, url, null, err, deadline, { write: false, caller });
  }
}

async function _status(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
  leases: LeaseBackend,
  id: number | null,
): Promise<Response> {
  return await _leader(ctx, req, url, caller, id, async (signal) => {
    const list = await leases.leaseStatus(id, signal);
    return id === null
      ? jsonResponse(200, { leases: list.map(leaseJson) })
      : jsonResponse(200, leaseJson(list[0]!));
  });
}

async function _grant(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
): Promise<Response> {
  requireJson(req);
  const idem = idempotencyKey(req);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  const bytes = await readBody(req, 4096, deadline, "the limit of this route");
  const body = parseObject(bytes);
  onlyFields(body, ["ttl"], "the request body");
  if (!Object.hasOwn(body, "ttl")) {
    throw new ApiError(400, 'missing "ttl" (the lease\'s time to live, like "10s")');
  }
  const ttlMs = parseTtl(body.ttl, '"ttl"');
  try {
    const r = await raceAbort(
      (signal) => ctx.backend.write({ op: "lease_grant", ttlMs }, signal, idem),
      deadline.signal,
    );
    if (r.op !== "lease_grant") throw _unexpected(r);
    // The TTL granted: a request below the node's minimum was raised to it (as etcd does).
    return jsonResponse(
      201,
      {
        id: r.id,
        ttl: ttlText(r.ttlMs),
        ttl_ms: r.ttlMs,
        index: r.index,
        ...(r.ttlMs !== ttlMs ? { requested_ttl_ms: ttlMs } : {}),
      },
      _replayed(r),
    );
  } catch (err) {
    return await backendFailure(ctx, req, url, bytes, err, deadline, { write: true, caller });
  }
}

/** The answer to a result a lease write cannot have, but for a reused idempotency key (422). */
function _unexpected(r: KvResult): Error {
  if (r.op === "idempotency_mismatch") {
    return new ApiError(
      422,
      `the Idempotency-Key ${
        quote(r.id)
      } was first used for a different request; nothing was done (use a new key for a new request)`,
      { idempotency_key: r.id },
    );
  }
  return new Error(`a lease write answered ${r.op}`);
}

/** The headers of a replayed outcome. */
function _replayed(r: KvResult): Record<string, string> {
  return r.replayed ? { [REPLAYED_HEADER]: "true" } : {};
}

async function _revoke(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
  id: number,
): Promise<Response> {
  const idem = idempotencyKey(req);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  await refuseBody(req, ctx.maxBodyBytes, deadline, "revoking a lease takes no request body");
  try {
    const r = await raceAbort(
      (signal) =>
        ctx.backend.write({ op: "lease_revoke", ids: [id], reason: "revoke" }, signal, idem),
      deadline.signal,
    );
    if (r.op !== "lease_revoke") throw _unexpected(r);
    if (r.revoked.length === 0) throw _notFound(id);
    return jsonResponse(
      200,
      { id, revoked: true, deleted: r.deleted, index: r.index },
      _replayed(r),
    );
  } catch (err) {
    if (err instanceof ApiError) throw err;
    return await backendFailure(ctx, req, url, null, err, deadline, { write: true, caller });
  }
}
