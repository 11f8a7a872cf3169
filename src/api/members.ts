/**
 * The membership routes (admin operations): `GET /v1/members`, `POST /v1/members` and
 * `DELETE /v1/members/{id}`. Changes go to the leader (a follower forwards them like writes);
 * the leader makes one single-server change at a time through the Raft log.
 *
 * @module
 */

import {
  type KvBackend,
  LeaderTransferError,
  MembershipError,
  NotAppliedError,
  NotLeaderError,
  OutcomeUnknownError,
  StoppingError,
} from "../node/backend.ts";
import type { Caller } from "./auth.ts";
import { startDeadline } from "./deadline.ts";
import { ApiError, CLIENT_GONE_STATUS, jsonResponse, quote } from "./errors.ts";
import { type ForwardContext, forwardToLeader } from "./forward.ts";
import { readBody, requireJson } from "./validate.ts";

/** What the membership routes need of the API handler. */
export interface MembersContext extends ForwardContext {
  /** The node. */
  backend: KvBackend;
  /** Deadline of one request on this node in milliseconds. */
  apiTimeoutMs: number;
}

/** The path prefix of `DELETE /v1/members/{id}`. */
export const MEMBERS_PREFIX = "/v1/members/";

const _MAX_BODY = 4096;

function _membership(ctx: MembersContext) {
  const m = ctx.backend.membership;
  if (m === undefined) throw new ApiError(501, "this node cannot change its membership");
  return m;
}

/** `{"cluster_id"}` when this node knows its cluster's id (a node that joins is told it so). */
function _clusterId(ctx: MembersContext): { cluster_id?: string } {
  const id = ctx.backend.status().cluster_id;
  return id === undefined ? {} : { cluster_id: id };
}

/**
 * `GET /v1/members`: `{"members":[{"node_id","rpc_url","api_url","role"}],"cluster_id"}` from the
 * newest configuration this node holds (the leader's is the newest), and the cluster's id when
 * this node knows it.
 */
export function listMembersRoute(ctx: MembersContext): Response {
  return jsonResponse(200, { members: _membership(ctx).list(), ..._clusterId(ctx) }, {
    "cache-control": "no-store",
  });
}

/**
 * `POST /v1/members` with `{"node_id","rpc_url","api_url"}`: adds the node as a learner (the
 * leader promotes it to voter once it is caught up). 201 `{"added": id, "index": n,
 * "members": [...], "cluster_id"}` once the change is applied on the leader (the id of the
 * cluster the node joins, which it checks against the one its first peer named). Errors: 400 for
 * a bad body; 409 for an id or address already in use, or while another change is in progress;
 * 503 when no leader is known; 504 when the change was not applied within the deadline.
 */
export async function addMemberRoute(
  ctx: MembersContext,
  req: Request,
  url: URL,
  caller: Caller | null,
): Promise<Response> {
  const membership = _membership(ctx);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  requireJson(req);
  const bytes = await readBody(req, _MAX_BODY, deadline, "the limit of this route");
  const member = _memberBody(bytes);
  try {
    const { index } = await membership.add(member, deadline.signal);
    return jsonResponse(201, {
      added: member.id,
      index,
      members: membership.list(),
      ..._clusterId(ctx),
    });
  } catch (err) {
    if (err instanceof NotLeaderError) {
      return await forwardToLeader(ctx, req, url, bytes, err, { write: true, caller });
    }
    throw _changeError(ctx, err, deadline);
  }
}

/**
 * `DELETE /v1/members/{id}`: removes a voter or a learner. A removed leader steps down once the
 * change is committed (the request is answered first). 200 `{"removed": id, "index": n,
 * "members": [...]}`. Errors: 404 for an id that is not a member; 409 for the last voter or
 * while another change is in progress; 503 and 504 as for adding.
 */
export async function removeMemberRoute(
  ctx: MembersContext,
  req: Request,
  url: URL,
  id: string,
  caller: Caller | null,
): Promise<Response> {
  const membership = _membership(ctx);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  if (id === "") throw new ApiError(400, "name the member to remove: DELETE /v1/members/{id}");
  try {
    const { index } = await membership.remove(id, deadline.signal);
    return jsonResponse(200, { removed: id, index, members: membership.list() });
  } catch (err) {
    if (err instanceof NotLeaderError) {
      return await forwardToLeader(ctx, req, url, new Uint8Array(0), err, { write: true, caller });
    }
    throw _changeError(ctx, err, deadline);
  }
}

function _changeError(
  ctx: MembersContext,
  err: unknown,
  deadline: { clientGone(): boolean; timedOut(): boolean; ms: number },
): unknown {
  if (err instanceof MembershipError) {
    const status = err.code === "unknown" ? 404 : 409;
    const retry = err.code === "in-flight" || err.code === "not-ready";
    return new ApiError(status, err.message, { code: err.code }, retry ? ctx.retryAfter : {});
  }
  if (err instanceof LeaderTransferError) {
    return new ApiError(409, err.message, { transferee: err.transferee }, ctx.retryAfter);
  }
  if (err instanceof NotAppliedError || err instanceof StoppingError) {
    return new ApiError(503, (err as Error).message, {}, ctx.retryAfter);
  }
  if (deadline.clientGone()) return new ApiError(CLIENT_GONE_STATUS, "the client went away");
  if (err instanceof OutcomeUnknownError || deadline.timedOut()) {
    return new ApiError(
      504,
      `the membership change was not applied within ${deadline.ms}ms; it may still be: ` +
        `GET /v1/members tells`,
    );
  }
  return err;
}

/** The member a POST body names, checked. */
function _memberBody(bytes: Uint8Array): { id: string; rpcUrl: string; apiUrl: string } {
  const usage = 'expected {"node_id": "...", "rpc_url": "http://...", "api_url": "http://..."}';
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ApiError(400, `the request body is not JSON; ${usage}`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new ApiError(400, `the request body must be a JSON object; ${usage}`);
  }
  const o = body as Record<string, unknown>;
  const id = o.node_id;
  if (typeof id !== "string" || id === "" || id.length > 255) {
    throw new ApiError(400, `"node_id" must be a non-empty string; ${usage}`);
  }
  const url = (field: "rpc_url" | "api_url"): string => {
    const v = o[field];
    let ok = false;
    if (typeof v === "string") {
      try {
        const u = new URL(v);
        ok = u.protocol === "http:" || u.protocol === "https:";
      } catch {
        ok = false;
      }
    }
    if (!ok) {
      throw new ApiError(400, `"${field}" must be an http(s) URL, not ${quote(String(v))}`);
    }
    return (v as string).replace(/\/+$/, "");
  };
  return { id, rpcUrl: url("rpc_url"), apiUrl: url("api_url") };
}
