/**
 * How the API shows keys, revisions and the outcomes of writes: entries as JSON with their
 * revision (`create_index`, `mod_index`, `version`), a failed compare-and-set as 412 with the
 * key's current revision, a reused idempotency key as 422, and a replayed idempotent outcome
 * with the {@linkcode REPLAYED_HEADER}. Also the `Idempotency-Key` header's checks.
 *
 * @module
 */

import type { KvEntry, KvResult } from "../node/backend.ts";
import { ApiError, jsonResponse, quote } from "./errors.ts";

/** The header on every answer: the applied index of the node's state the answer reflects. */
export const INDEX_HEADER = "x-raftkv-index";

/** The request header that makes a write idempotent. */
export const IDEMPOTENCY_HEADER = "idempotency-key";

/** The answer header saying the outcome is the remembered one of an earlier request. */
export const REPLAYED_HEADER = "idempotent-replayed";

/** The longest idempotency key, in characters. */
export const MAX_IDEMPOTENCY_KEY = 255;

const _KEY_CHARS = /^[\x21-\x7e]+$/;

/**
 * The request's idempotency key, or null when it sends none.
 *
 * @param req The request.
 * @returns The key.
 * @throws {ApiError} 400 if it is empty, longer than 255 characters, or holds anything but
 * visible ASCII.
 */
export function idempotencyKey(req: Request): string | null {
  const key = req.headers.get(IDEMPOTENCY_HEADER);
  if (key === null) return null;
  if (key.length > MAX_IDEMPOTENCY_KEY || !_KEY_CHARS.test(key)) {
    throw new ApiError(
      400,
      `the Idempotency-Key header ${
        quote(key)
      } must be 1 to ${MAX_IDEMPOTENCY_KEY} visible ASCII characters (a UUID, for example)`,
    );
  }
  return key;
}

/**
 * An entry's revision as the API shows it.
 *
 * @param e The entry.
 * @returns `{create_index, mod_index, version}`.
 */
export function revisionJson(
  e: KvEntry,
): { create_index: number; mod_index: number; version: number } {
  return { create_index: e.createIndex, mod_index: e.modIndex, version: e.version };
}

/**
 * An entry as the API shows it: `{k, v, create_index, mod_index, version}`, without `v` when
 * `keysOnly`.
 *
 * @param e The entry.
 * @param keysOnly Leave the value out.
 * @returns The JSON object.
 */
export function entryJson(e: KvEntry, keysOnly = false): Record<string, unknown> {
  if (keysOnly) return { k: e.key, ...revisionJson(e) };
  return { k: e.key, ...valueJson(e), ...revisionJson(e) };
}

/**
 * An entry's value as the API shows it: `{v}`, or `{v_omitted: true}` in a replayed outcome that
 * did not remember a long value (see `REMEMBERED_VALUE_CHARS`).
 *
 * @param e The entry.
 * @returns The JSON fields.
 */
export function valueJson(e: KvEntry): { v: string } | { v_omitted: true } {
  return e.valueOmitted ? { v_omitted: true } : { v: e.value };
}

/**
 * The answer to a write's result: 412 for a failed compare-and-set (nothing changed; the
 * key's current revision and value in `current`, null when it does not exist), 422 for an
 * idempotency key first used for a different request, else 200 with `ok(result)`. A replayed
 * outcome carries {@linkcode REPLAYED_HEADER}.
 *
 * @param result What the backend answered.
 * @param cas The compare-and-set's expected `mod_index`, for the 412 message.
 * @param ok The body of a success.
 * @returns The response.
 */
export function writeOutcome(
  result: KvResult,
  cas: number | undefined,
  ok: (result: KvResult) => Record<string, unknown>,
): Response {
  const headers: Record<string, string> = result.replayed ? { [REPLAYED_HEADER]: "true" } : {};
  if (result.op === "cas_failed") {
    const cur = result.current;
    const now = cur === null ? "does not exist" : `has mod_index ${cur.modIndex}`;
    const wanted = cas === 0 ? "must not exist" : `must have mod_index ${cas}`;
    return jsonResponse(412, {
      error: `compare-and-set failed: the key ${quote(result.key)} ${now}, but ${wanted}`,
      k: result.key,
      cas,
      index: result.index,
      current: cur === null ? null : { ...valueJson(cur), ...revisionJson(cur) },
    }, headers);
  }
  if (result.op === "idempotency_mismatch") {
    return jsonResponse(422, {
      error: `the Idempotency-Key ${
        quote(result.id)
      } was first used for a different request; nothing was done (use a new key for a new request)`,
      idempotency_key: result.id,
    }, headers);
  }
  return jsonResponse(200, ok(result), headers);
}
