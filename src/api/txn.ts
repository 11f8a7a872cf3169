/**
 * `POST /v1/txn`: compares on keys, and the operations to run if every compare holds
 * (`success`) or if any does not (`failure`), applied atomically as one log entry.
 *
 * ```json
 * {"compare": [{"k": "lock", "exists": false}],
 *  "success": [{"op": "put", "k": "lock", "v": "me"}],
 *  "failure": [{"op": "get", "k": "lock"}]}
 * ```
 *
 * A compare has `k`, exactly one of `value` (a string), `version`, `mod_index`, `create_index`
 * (integers) or `exists` (a boolean), and an optional `op`: `=` (the default), `!=`, `<` or
 * `>` (`exists` takes only `=` and `!=`). A missing key has version, mod_index and create_index
 * 0 and no value (a value compare with it is false). Strings compare by code point. An
 * operation is `{"op":"put","k","v"}` (with `"lease": ID`, the key is attached to that lease, as
 * a put's `?lease=ID`; without, detached from any), `{"op":"delete","k"}` or `{"op":"get","k"}`;
 * a branch may write a key only once, and its gets see its earlier writes. A put of the branch
 * that runs naming a lease that does not exist when the transaction is applied fails the whole
 * transaction, as it fails a put: 404 `{"error","lease"}`, nothing written. At most
 * {@linkcode MAX_TXN_OPS} compares, and as many operations per branch (413 past that).
 *
 * The answer is 200 `{"succeeded","index","results"}` whichever branch ran, with one result per
 * operation of that branch: `{"op":"put","k","create_index","mod_index","version"}` (plus
 * `"lease"` when it named one),
 * `{"op":"delete","k","deleted"}`, `{"op":"get","k","found":true,"v",...revision}` or
 * `{"op":"get","k","found":false}`.
 *
 * @module
 */

import type {
  Compare,
  CompareOp,
  KvResult,
  PlainCommand,
  TxnOp,
  TxnOpResult,
} from "../node/backend.ts";
import type { Caller } from "./auth.ts";
import { type ApiContext, backendFailure } from "./context.ts";
import { raceAbort, startDeadline } from "./deadline.ts";
import { ApiError, describe, overloadedError, quote } from "./errors.ts";
import { entryJson, idempotencyKey, REPLAYED_HEADER, writeOutcome } from "./outcome.ts";
import {
  checkKey,
  checkPutKey,
  checkValue,
  onlyFields,
  parseObject,
  readBody,
  requireJson,
} from "./validate.ts";

/** The most compares, and the most operations per branch, of one transaction. */
export const MAX_TXN_OPS = 128;

const _TARGETS = ["value", "version", "mod_index", "create_index", "exists"] as const;
const _OPS: readonly CompareOp[] = ["=", "!=", "<", ">"];

/**
 * `POST /v1/txn`: see the module doc.
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param caller Who asked, once authorised (null when the API is open); a forward carries it on.
 * @returns The answer.
 */
export async function txnRoute(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
): Promise<Response> {
  requireJson(req);
  const overloaded = ctx.backend.overloaded();
  if (overloaded !== null) throw overloadedError(overloaded, null, ctx.retryAfter);
  const idem = idempotencyKey(req);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  const bytes = await readBody(req, ctx.maxBodyBytes, deadline);
  const cmd = parseTxn(parseObject(bytes), ctx.maxKeyBytes, ctx.maxValueBytes);
  let result: KvResult;
  try {
    result = await raceAbort((signal) => ctx.backend.write(cmd, signal, idem), deadline.signal);
  } catch (err) {
    return await backendFailure(ctx, req, url, bytes, err, deadline, { write: true, caller });
  }
  if (result.op === "lease_not_found") {
    // As for a put naming a missing lease: the transaction did nothing.
    throw new ApiError(
      404,
      `lease ${result.lease} not found (never granted, revoked, or expired); the transaction did nothing`,
      { lease: result.lease },
      // A replay of a remembered 404 says so, as a replayed 200 or 412 does.
      result.replayed ? { [REPLAYED_HEADER]: "true" } : {},
    );
  }
  return writeOutcome(
    result,
    undefined,
    (r) =>
      r.op === "txn"
        ? { succeeded: r.succeeded, index: r.index, results: r.results.map(_resultJson) }
        : { index: r.index },
  );
}

/**
 * Checks a transaction's body and turns it into the command.
 *
 * @param body The parsed body.
 * @param maxKeyBytes The largest key.
 * @param maxValueBytes The largest value.
 * @returns The command.
 * @throws {ApiError} 400 for anything malformed (naming where, such as `compare[2]`), 413 for
 * too many compares or operations, or a key or value too large.
 */
export function parseTxn(
  body: Record<string, unknown>,
  maxKeyBytes: number,
  maxValueBytes: number,
): Extract<PlainCommand, { op: "txn" }> {
  onlyFields(body, ["compare", "success", "failure"], "the transaction");
  const list = (name: string): unknown[] => {
    // Absent is empty; null is not an array (as `"success": {}` is not).
    const v = Object.hasOwn(body, name) ? body[name] : [];
    if (!Array.isArray(v)) {
      throw new ApiError(400, `"${name}" must be an array, not ${describe(v)}`);
    }
    if (v.length > MAX_TXN_OPS) {
      throw new ApiError(
        413,
        `"${name}" has ${v.length} items; a transaction takes at most ${MAX_TXN_OPS} compares and ${MAX_TXN_OPS} operations per branch`,
        { limit: MAX_TXN_OPS, count: v.length },
      );
    }
    return v;
  };
  const compare = list("compare").map((c, i) => _compare(c, `compare[${i}]`, maxKeyBytes));
  const branch = (name: string): TxnOp[] => {
    const ops = list(name).map((o, i) => _op(o, `${name}[${i}]`, maxKeyBytes, maxValueBytes));
    const written = new Set<string>();
    ops.forEach((op, i) => {
      if (op.op === "get") return;
      if (written.has(op.key)) {
        throw new ApiError(
          400,
          `${name}[${i}] writes ${quote(op.key)} again; a branch may write a key only once`,
        );
      }
      written.add(op.key);
    });
    return ops;
  };
  return { op: "txn", compare, success: branch("success"), failure: branch("failure") };
}

function _object(v: unknown, where: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new ApiError(400, `${where} must be an object, not ${describe(v)}`);
  }
  return v as Record<string, unknown>;
}

function _string(o: Record<string, unknown>, name: string, where: string): string {
  const v = o[name];
  if (typeof v !== "string") {
    throw new ApiError(400, `${where}: "${name}" must be a string, not ${describe(v)}`);
  }
  if (!v.isWellFormed()) {
    throw new ApiError(400, `${where}: "${name}" is not well-formed Unicode (a lone surrogate)`);
  }
  return v;
}

function _key(o: Record<string, unknown>, where: string, maxKeyBytes: number): string {
  if (!Object.hasOwn(o, "k")) throw new ApiError(400, `${where}: missing "k" (the key)`);
  const key = _string(o, "k", where);
  checkKey(key, maxKeyBytes);
  return key;
}

function _compare(raw: unknown, where: string, maxKeyBytes: number): Compare {
  const o = _object(raw, where);
  onlyFields(o, ["k", "op", ..._TARGETS], where);
  const key = _key(o, where, maxKeyBytes);
  const targets = _TARGETS.filter((t) => Object.hasOwn(o, t));
  if (targets.length !== 1) {
    throw new ApiError(
      400,
      `${where} must have exactly one of ${_TARGETS.join(", ")}; it has ${
        targets.length === 0 ? "none" : targets.join(", ")
      }`,
    );
  }
  const target = targets[0]!;
  const opRaw = o.op ?? "=";
  const op = _OPS.find((x) => x === opRaw);
  if (op === undefined) {
    throw new ApiError(
      400,
      `${where}: "op" must be one of ${_OPS.join(" ")}, not ${describe(opRaw)}`,
    );
  }
  const value = o[target];
  switch (target) {
    case "value":
      return { key, target, op, value: _string(o, "value", where) };
    case "exists":
      if (typeof value !== "boolean") {
        throw new ApiError(400, `${where}: "exists" must be true or false, not ${describe(value)}`);
      }
      if (op !== "=" && op !== "!=") {
        throw new ApiError(400, `${where}: "exists" compares only with = or !=, not ${op}`);
      }
      return { key, target, op, value };
    default:
      if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
        throw new ApiError(
          400,
          `${where}: "${target}" must be a non-negative integer, not ${describe(value)}`,
        );
      }
      return { key, target, op, value };
  }
}

function _op(raw: unknown, where: string, maxKeyBytes: number, maxValueBytes: number): TxnOp {
  const o = _object(raw, where);
  const kind = o.op;
  if (kind === "put") {
    onlyFields(o, ["op", "k", "v", "lease"], where);
    const key = _key(o, where, maxKeyBytes);
    checkPutKey(key, where);
    if (!Object.hasOwn(o, "v")) throw new ApiError(400, `${where}: missing "v" (the value)`);
    const value = _string(o, "v", where);
    checkValue(key, value, maxValueBytes);
    if (!Object.hasOwn(o, "lease")) return { op: "put", key, value };
    const lease = o.lease;
    if (typeof lease !== "number" || !Number.isSafeInteger(lease) || lease < 1) {
      throw new ApiError(
        400,
        `${where}: "lease" must be a lease id (a positive integer), not ${describe(lease)}`,
      );
    }
    return { op: "put", key, value, lease };
  }
  if (kind === "delete" || kind === "get") {
    onlyFields(o, ["op", "k"], where);
    return { op: kind, key: _key(o, where, maxKeyBytes) };
  }
  throw new ApiError(400, `${where}: "op" must be "put", "delete" or "get", not ${describe(kind)}`);
}

function _resultJson(r: TxnOpResult): Record<string, unknown> {
  switch (r.op) {
    case "put":
      return {
        op: "put",
        k: r.key,
        create_index: r.createIndex,
        mod_index: r.modIndex,
        version: r.version,
        ...(r.lease === undefined ? {} : { lease: r.lease }),
      };
    case "delete":
      return { op: "delete", k: r.key, deleted: r.deleted };
    case "get":
      return r.entry === null
        ? { op: "get", k: r.key, found: false }
        : { op: "get", found: true, ...entryJson(r.entry) };
  }
}
