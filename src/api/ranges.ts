/**
 * Ranges of keys: `GET /v1/data` reads keys in key order (by Unicode code point, the order of
 * their UTF-8 bytes), a page at a time; `DELETE /v1/data` deletes a range and says how many
 * keys it removed.
 *
 * Which keys: `?prefix=p` (those starting with `p`; empty: all), or `?start=a&end=b` (from `a`
 * up to but not including `b`; either may be left out). Reading takes `limit` (1 to
 * {@linkcode MAX_RANGE_LIMIT}, default {@linkcode DEFAULT_RANGE_LIMIT}), `next` (the token a
 * previous page returned), `keys_only`, `count_only` and `consistency` (as for one key, default
 * `linearizable`). A page also ends after about {@linkcode MAX_PAGE_CHARS} characters of keys and
 * values (never before its first item). Each page is one read: pages of a long listing may see
 * different states.
 *
 * @module
 */

import { compareKeys, type KeyRange, type KvResult, type RangeAnswer } from "../node/backend.ts";
import { decodeUtf8, utf8Length } from "../util/utf8.ts";
import type { Caller } from "./auth.ts";
import { type ApiContext, backendFailure } from "./context.ts";
import { raceAbort, startDeadline } from "./deadline.ts";
import { ApiError, jsonResponse, quote } from "./errors.ts";
import { entryJson, idempotencyKey, INDEX_HEADER, writeOutcome } from "./outcome.ts";
import { flagParam, onlyParams, readConsistency, refuseBody } from "./validate.ts";

/** The most items a page may hold (`limit`). */
export const MAX_RANGE_LIMIT = 10_000;
/** The items of a page when `limit` is not given. */
export const DEFAULT_RANGE_LIMIT = 1000;
/** A page ends once its keys and values reach this many UTF-16 characters (about 4 MiB). */
export const MAX_PAGE_CHARS = 4 << 20;

const _READ_PARAMS = new Set([
  "prefix",
  "start",
  "end",
  "limit",
  "next",
  "keys_only",
  "count_only",
  "consistency",
]);
const _DELETE_PARAMS = new Set(["prefix", "start", "end"]);

/**
 * `GET /v1/data`: 200 `{"items":[{"k","v","create_index","mod_index","version"}],"next"}`, or
 * `{"count"}` with `count_only`; items without `v` with `keys_only`.
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param caller Who asked, once authorised (null when the API is open); a forward carries it on.
 * @returns The answer.
 */
export async function readRangeRoute(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
): Promise<Response> {
  onlyParams(url, _READ_PARAMS, "reading a range");
  const range = _keyRange(url, ctx.maxKeyBytes) ?? { prefix: "" };
  const limit = _limit(url);
  const from = _next(url, range);
  const keysOnly = flagParam(url, "keys_only");
  const countOnly = flagParam(url, "count_only");
  const consistency = readConsistency(url);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  let r: RangeAnswer;
  try {
    r = await raceAbort(
      (signal) =>
        ctx.backend.range(
          {
            range,
            limit,
            maxChars: MAX_PAGE_CHARS,
            countOnly,
            ...(from === undefined ? {} : { from }),
          },
          consistency,
          signal,
        ),
      deadline.signal,
    );
  } catch (err) {
    return await backendFailure(ctx, req, url, null, err, deadline, { write: false, caller });
  }
  const headers = { [INDEX_HEADER]: String(r.index) };
  if (countOnly) return jsonResponse(200, { count: r.count }, headers);
  return jsonResponse(200, {
    items: r.entries.map((e) => entryJson(e, keysOnly)),
    next: r.next === null ? null : encodeNextToken(r.next),
  }, headers);
}

/**
 * `DELETE /v1/data?prefix=p` (or `start`/`end`): 200 `{"deleted": n, "index"}`. The range must
 * be given (`?prefix=` empty means every key).
 *
 * @param ctx The handler's context.
 * @param req The request.
 * @param url Its parsed URL.
 * @param caller Who asked, once authorised (null when the API is open); a forward carries it on.
 * @returns The answer.
 */
export async function deleteRangeRoute(
  ctx: ApiContext,
  req: Request,
  url: URL,
  caller: Caller | null,
): Promise<Response> {
  onlyParams(url, _DELETE_PARAMS, "deleting a range");
  const range = _keyRange(url, ctx.maxKeyBytes);
  if (range === undefined) {
    throw new ApiError(
      400,
      "say which keys to delete: ?prefix=p (?prefix= for every key), or ?start=a&end=b",
    );
  }
  const idem = idempotencyKey(req);
  using deadline = startDeadline(ctx.apiTimeoutMs, req.signal);
  await refuseBody(
    req,
    ctx.maxBodyBytes,
    deadline,
    "deleting a range takes no request body: say which keys in the query (?prefix=p, or " +
      "?start=a&end=b)",
  );
  let result: KvResult;
  try {
    result = await raceAbort(
      (signal) => ctx.backend.write({ op: "delete_range", range }, signal, idem),
      deadline.signal,
    );
  } catch (err) {
    return await backendFailure(ctx, req, url, null, err, deadline, { write: true, caller });
  }
  return writeOutcome(result, undefined, (r) => ({
    deleted: r.op === "delete_range" ? r.deleted : 0,
    index: r.index,
  }));
}

/**
 * The continuation token for a page that ends before `key`: the key, base64url-encoded.
 *
 * @param key The first key of the next page.
 * @returns The token.
 */
export function encodeNextToken(key: string): string {
  const bytes = new TextEncoder().encode(key);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** The key a continuation token names, or undefined when the token is not valid. */
function _decodeNextToken(token: string): string | undefined {
  if (token === "" || !/^[A-Za-z0-9_-]+$/.test(token)) return undefined;
  try {
    const bin = atob(token.replaceAll("-", "+").replaceAll("_", "/"));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return decodeUtf8(bytes, 0, bytes.length);
  } catch {
    return undefined;
  }
}

/** The range in the query, or undefined when it names none. */
function _keyRange(url: URL, maxKeyBytes: number): KeyRange | undefined {
  const q = url.searchParams;
  const prefix = q.get("prefix");
  const start = q.get("start");
  const end = q.get("end");
  for (const [name, v] of [["prefix", prefix], ["start", start], ["end", end]] as const) {
    if (v !== null && utf8Length(v) > maxKeyBytes) {
      throw new ApiError(
        413,
        `${name} is ${
          utf8Length(v)
        } bytes (UTF-8); the limit is ${maxKeyBytes} bytes (--max-key-bytes)`,
        { limit_bytes: maxKeyBytes, size_bytes: utf8Length(v) },
      );
    }
  }
  if (prefix !== null) {
    if (start !== null || end !== null) {
      throw new ApiError(400, "give either prefix, or start and end, not both");
    }
    return { prefix };
  }
  if (start === null && end === null) return undefined;
  return { start: start ?? "", end: end === null || end === "" ? null : end };
}

function _limit(url: URL): number {
  const raw = url.searchParams.get("limit");
  if (raw === null) return DEFAULT_RANGE_LIMIT;
  const n = /^\d{1,6}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 1 && n <= MAX_RANGE_LIMIT)) {
    throw new ApiError(
      400,
      `limit=${quote(raw)} must be an integer from 1 to ${MAX_RANGE_LIMIT}`,
      { limit: MAX_RANGE_LIMIT },
    );
  }
  return n;
}

/** Where a continuation starts: the key its token names, which must lie in the range. */
function _next(url: URL, range: KeyRange): string | undefined {
  const token = url.searchParams.get("next");
  if (token === null) return undefined;
  const key = _decodeNextToken(token);
  const inside = key !== undefined &&
    ("prefix" in range ? key.startsWith(range.prefix) : compareKeys(key, range.start) >= 0 &&
      (range.end === null || compareKeys(key, range.end) < 0));
  if (!inside) {
    throw new ApiError(
      400,
      `next=${
        quote(token)
      } is not a continuation of this range; pass back the "next" of the previous page with the same prefix, start and end`,
    );
  }
  return key;
}
