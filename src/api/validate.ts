/**
 * Validation of API requests before anything reaches the backend: the `Content-Type` of writes,
 * reading the body within `maxBodyBytes`, parsing it as a JSON object, its `k` and `v` fields,
 * keys from the path, key and value sizes in UTF-8 bytes, and the `consistency` of reads. Each
 * check throws an {@linkcode ApiError} (400, 408, 413, 415 or 499) that says what is wrong and
 * quotes the bad value.
 *
 * @module
 */

import type { Consistency } from "../node/backend.ts";
import { concatBytes } from "../util/body.ts";
import { utf8Length } from "../util/utf8.ts";
import { raceAbort } from "./deadline.ts";
import type { Deadline } from "./deadline.ts";
import { ApiError, CLIENT_GONE_STATUS, describe, errorMessage, quote } from "./errors.ts";

const _EXAMPLE = '{"k":"a","v":"1"}';
const _CONSISTENCIES: readonly Consistency[] = ["linearizable", "stale", "lease"];

/**
 * Refuses a request whose `Content-Type` is not `application/json` (any parameters, any case),
 * before its body is read.
 *
 * @param req The request.
 * @throws {ApiError} 415 if the media type is not `application/json`.
 */
export function requireJson(req: Request): void {
  const type = req.headers.get("content-type");
  const media = type?.split(";", 1)[0]?.trim().toLowerCase();
  if (media === "application/json") return;
  throw new ApiError(
    415,
    type === null
      ? `the request has no Content-Type; send the JSON body with Content-Type: application/json`
      : `the request's Content-Type is ${
        quote(type)
      }; send the JSON body with Content-Type: application/json`,
    { content_type: type },
  );
}

/** How the API's body limit is made, as its 413 says. */
export const API_BODY_LIMIT =
  "six times the sum of --max-key-bytes and --max-value-bytes, for JSON's escapes, plus 4 KiB";

/**
 * Reads the whole body, refusing one over `maxBodyBytes` without reading the rest.
 *
 * @param req The request.
 * @param maxBodyBytes The largest body accepted.
 * @param deadline The request's deadline, which bounds the reading.
 * @param limit Where the limit comes from, for the 413's message. Default: the API's body limit.
 * @returns The body's bytes (empty when there is none).
 * @throws {ApiError} 413 if the body is too large, 408 if it did not arrive in time, 499 if the
 * client went away, 400 if it could not be read.
 */
export async function readBody(
  req: Request,
  maxBodyBytes: number,
  deadline: Deadline,
  limit: string = API_BODY_LIMIT,
): Promise<Uint8Array<ArrayBuffer>> {
  const max = maxBodyBytes;
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > max) {
    throw new ApiError(
      413,
      `the request body is ${declared} bytes; the limit is ${max} bytes (${limit})`,
      { limit_bytes: max, size_bytes: declared },
    );
  }
  if (req.body === null) return new Uint8Array(0);
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    while (true) {
      const chunk = await raceAbort(() => reader.read(), deadline.signal);
      if (chunk.done) break;
      total += chunk.value.byteLength;
      if (total > max) {
        throw new ApiError(
          413,
          `the request body exceeds the limit of ${max} bytes (${limit})`,
          { limit_bytes: max },
        );
      }
      chunks.push(chunk.value);
    }
  } catch (err) {
    reader.cancel().catch(() => {});
    if (err instanceof ApiError) throw err;
    if (deadline.clientGone()) {
      throw new ApiError(CLIENT_GONE_STATUS, "the client closed the request");
    }
    if (deadline.timedOut()) {
      throw new ApiError(408, `the request body did not arrive within ${deadline.ms}ms`);
    }
    throw new ApiError(400, `the request body could not be read: ${errorMessage(err)}`);
  }
  return concatBytes(chunks);
}

/**
 * Refuses a body where the route takes none: a `DELETE` whose body says `{"cas":3}` must not
 * delete unconditionally. No body, or an empty one (`Content-Length: 0`, as some clients send on
 * every request), passes.
 *
 * @param req The request.
 * @param maxBodyBytes The largest body the API reads at all.
 * @param deadline The request's deadline, which bounds the reading.
 * @param message Why the body is refused (what to send instead).
 * @throws {ApiError} 400 with `message` for a non-empty body; as {@linkcode readBody} for one
 * too large, late or broken.
 */
export async function refuseBody(
  req: Request,
  maxBodyBytes: number,
  deadline: Deadline,
  message: string,
): Promise<void> {
  if (req.body === null) return;
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > 0 && declared <= maxBodyBytes) {
    // Known not to be empty: refused without reading it.
    await req.body.cancel().catch(() => {});
    throw new ApiError(400, message);
  }
  if ((await readBody(req, maxBodyBytes, deadline)).byteLength > 0) {
    throw new ApiError(400, message);
  }
}

/**
 * Refuses a query parameter given more than once: the routes read one value of each, and taking
 * the first of `?prefix=&prefix=users/` would delete every key.
 *
 * @param url The request's URL.
 * @throws {ApiError} 400 naming the parameter.
 */
export function singleParams(url: URL): void {
  const seen = new Set<string>();
  for (const name of url.searchParams.keys()) {
    if (seen.has(name)) {
      throw new ApiError(
        400,
        `the query parameter ${quote(name)} is given ${
          url.searchParams.getAll(name).length
        } times; give it once`,
      );
    }
    seen.add(name);
  }
}

/**
 * Parses a body as a JSON object.
 *
 * @param bytes The body.
 * @returns The object.
 * @throws {ApiError} 400 if the body is empty, not UTF-8, not JSON or not an object.
 */
export function parseObject(bytes: Uint8Array): Record<string, unknown> {
  if (bytes.byteLength === 0) {
    throw new ApiError(400, `the request body is empty; expected a JSON object like ${_EXAMPLE}`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(400, "the request body is not valid UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ApiError(
      400,
      `the request body is not valid JSON (${
        errorMessage(err)
      }); expected a JSON object like ${_EXAMPLE}`,
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ApiError(
      400,
      `the request body must be a JSON object like ${_EXAMPLE}, not ${describe(value)}`,
    );
  }
  return value as Record<string, unknown>;
}

/**
 * Refuses query parameters a route does not take: a typo (`?cass=3`) must not turn a conditional
 * write or delete into an unconditional one, nor widen a range.
 *
 * @param url The request's URL.
 * @param allowed The parameters the route takes.
 * @param what What the route does, for the message, such as `"deleting a key"`.
 * @throws {ApiError} 400 naming the first unknown parameter and the allowed ones.
 */
export function onlyParams(url: URL, allowed: ReadonlySet<string>, what: string): void {
  for (const name of url.searchParams.keys()) {
    if (!allowed.has(name)) {
      throw new ApiError(
        400,
        `unknown query parameter ${quote(name)} for ${what}; ${
          allowed.size === 0 ? "it takes none" : `allowed: ${[...allowed].join(", ")}`
        }`,
      );
    }
  }
}

/**
 * Refuses fields a JSON object of a request does not take (a typo such as `"cass"` must not be
 * ignored).
 *
 * @param o The object.
 * @param fields The fields it takes.
 * @param where What it is, for the message, such as `"the request body"` or `"compare[0]"`.
 * @throws {ApiError} 400 naming the first unknown field and the fields it takes.
 */
export function onlyFields(
  o: Record<string, unknown>,
  fields: readonly string[],
  where: string,
): void {
  for (const name of Object.keys(o)) {
    if (!fields.includes(name)) {
      throw new ApiError(
        400,
        `unknown field ${quote(name)} in ${where}; it takes ${fields.join(", ")}`,
      );
    }
  }
}

/**
 * The string field `name` of a body: present, a string, and well-formed Unicode.
 *
 * @param body The parsed body.
 * @param name The field, such as `"k"`.
 * @param what What the field is, for messages, such as `"the key"`.
 * @returns Its value.
 * @throws {ApiError} 400 if it is missing, not a string or holds a lone surrogate.
 */
export function stringField(body: Record<string, unknown>, name: string, what: string): string {
  if (!Object.hasOwn(body, name)) {
    throw new ApiError(400, `missing "${name}" (${what}) in the request body`);
  }
  const value = body[name];
  if (typeof value !== "string") {
    throw new ApiError(400, `"${name}" (${what}) must be a string, not ${describe(value)}`);
  }
  if (!value.isWellFormed()) {
    throw new ApiError(
      400,
      `"${name}" (${what}) is not well-formed Unicode: it contains a lone surrogate`,
    );
  }
  return value;
}

/**
 * The key of a write: `k` in the body for `POST /v1/data` (`pathKey` null), else the key in the
 * path, which a `k` in the body must then equal.
 *
 * @param body The parsed body.
 * @param pathKey The key from the path, or `null` for `POST /v1/data`.
 * @returns The key.
 * @throws {ApiError} 400 if `k` is missing (for a `POST`), malformed, or differs from the path.
 */
export function writeKey(body: Record<string, unknown>, pathKey: string | null): string {
  if (pathKey === null) return stringField(body, "k", "the key");
  if (Object.hasOwn(body, "k")) {
    const bodyKey = stringField(body, "k", "the key");
    if (bodyKey !== pathKey) {
      throw new ApiError(
        400,
        `"k" in the body (${quote(bodyKey)}) differs from the key in the path (${
          quote(pathKey)
        }); omit "k" or make them equal`,
      );
    }
  }
  return pathKey;
}

/**
 * Decodes the percent-encoded key from a path.
 *
 * @param encoded What follows `/v1/data/` in the path.
 * @returns The key.
 * @throws {ApiError} 400 if it is not valid percent-encoded UTF-8.
 */
export function pathKey(encoded: string): string {
  try {
    return decodeURIComponent(encoded);
  } catch {
    throw new ApiError(
      400,
      `the key in the path is not valid percent-encoded UTF-8: ${quote(encoded)}`,
    );
  }
}

/**
 * Checks that a key is not empty and at most `maxKeyBytes` in UTF-8.
 *
 * @param key The key.
 * @param maxKeyBytes The largest key accepted.
 * @throws {ApiError} 400 if it is empty, 413 if it is too large.
 */
export function checkKey(key: string, maxKeyBytes: number): void {
  if (key === "") throw new ApiError(400, "key must not be empty");
  const size = utf8Length(key);
  if (size > maxKeyBytes) {
    throw new ApiError(
      413,
      `the key is ${size} bytes (UTF-8); the limit is ${maxKeyBytes} bytes (--max-key-bytes)`,
      { limit_bytes: maxKeyBytes, size_bytes: size },
    );
  }
}

/**
 * Refuses to create the keys `.` and `..`: no URL path can name them (URL parsers remove such
 * segments, percent-encoded ones too, before a request is sent or routed), so
 * `/v1/data/{key}` could never read, replace or delete them.
 *
 * @param key The key a put would write.
 * @param where Where in the request it is (`success[0]`), to begin the message with.
 * @throws {ApiError} 400 if it is `.` or `..`.
 */
export function checkPutKey(key: string, where?: string): void {
  if (key === "." || key === "..") {
    throw new ApiError(
      400,
      `${where === undefined ? "" : `${where}: `}the key ${
        quote(key)
      } cannot be written: a URL path cannot name it (URL parsers remove "." and ".." ` +
        `segments, even percent-encoded), so /v1/data/{key} could never reach it`,
    );
  }
}

/**
 * Checks that a value is at most `maxValueBytes` in UTF-8.
 *
 * @param key The key it is written under, echoed as `k`.
 * @param value The value.
 * @param maxValueBytes The largest value accepted.
 * @throws {ApiError} 413 if it is too large.
 */
export function checkValue(key: string, value: string, maxValueBytes: number): void {
  const valueBytes = utf8Length(value);
  if (valueBytes > maxValueBytes) {
    throw new ApiError(
      413,
      `the value is ${valueBytes} bytes (UTF-8); the limit is ${maxValueBytes} bytes (--max-value-bytes)`,
      { k: key, limit_bytes: maxValueBytes, size_bytes: valueBytes },
    );
  }
}

/**
 * The consistency a read asks for in `?consistency=`.
 *
 * @param url The request's URL.
 * @param key The key read, echoed as `k` (none for a range).
 * @returns `linearizable` (the default), `stale` or `lease`.
 * @throws {ApiError} 400 for any other value.
 */
export function readConsistency(url: URL, key?: string): Consistency {
  const raw = url.searchParams.get("consistency") ?? "linearizable";
  const consistency = _CONSISTENCIES.find((c) => c === raw);
  if (consistency === undefined) {
    throw new ApiError(
      400,
      `unknown consistency ${quote(raw)}; expected linearizable (the default), stale or lease`,
      { k: key },
    );
  }
  return consistency;
}

/**
 * The compare-and-set condition of a write: `?cas=N` in the query, or `"cas": N` in the body
 * (both may be given if they agree). `N` is the `mod_index` the key must have; 0 means it must
 * not exist.
 *
 * @param url The request's URL.
 * @param body The parsed body, or null for a request without one.
 * @param key The key written, echoed as `k`.
 * @returns `N`, or undefined for an unconditional write.
 * @throws {ApiError} 400 if either is not a non-negative integer up to 2^53 - 1, or they differ.
 */
export function casParam(
  url: URL,
  body: Record<string, unknown> | null,
  key: string,
): number | undefined {
  const raw = url.searchParams.get("cas");
  let fromQuery: number | undefined;
  if (raw !== null) {
    fromQuery = /^\d{1,16}$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(fromQuery)) {
      throw new ApiError(
        400,
        `cas=${
          quote(raw)
        } must be a non-negative integer (the mod_index the key must have; 0: it must not exist)`,
        { k: key },
      );
    }
  }
  if (body === null || !Object.hasOwn(body, "cas")) return fromQuery;
  const value = body.cas;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new ApiError(
      400,
      `"cas" must be a non-negative integer (the mod_index the key must have; 0: it must not exist), not ${
        describe(value)
      }`,
      { k: key },
    );
  }
  if (fromQuery !== undefined && fromQuery !== value) {
    throw new ApiError(
      400,
      `cas=${fromQuery} in the query differs from "cas": ${value} in the body; give one`,
      { k: key },
    );
  }
  return value;
}

/**
 * A yes/no query parameter: absent, `false` or `0` is no; present empty, `true` or `1` is yes.
 *
 * @param url The request's URL.
 * @param name The parameter.
 * @returns Its value.
 * @throws {ApiError} 400 for anything else.
 */
export function flagParam(url: URL, name: string): boolean {
  const raw = url.searchParams.get(name);
  if (raw === null || raw === "false" || raw === "0") return false;
  if (raw === "" || raw === "true" || raw === "1") return true;
  throw new ApiError(400, `${name}=${quote(raw)} must be true or false`);
}
