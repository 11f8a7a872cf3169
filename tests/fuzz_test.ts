/**
 * Bad input against a live three-node cluster: thousands of generated malformed or hostile
 * requests (over HTTP/1.1, HTTP/2 and raw TCP), then slow and cut-short bodies. Every request the
 * generator makes is invalid (a local oracle that mirrors the API's rules rejects any that would
 * be valid), so each must be refused with a JSON error, no node may answer 5xx or crash, and
 * nothing may change: the same keys and values, and no new log entries beyond a new leader's
 * no-op.
 *
 * Set `FUZZ_SEED` to replay a run; `FUZZ_COUNT` changes the number of generated requests.
 */

import assert from "node:assert/strict";
import { type NodeStatus, type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { Rng } from "../testing/chaos_lib.ts";

const MAX_KEY_BYTES = 1024;
const MAX_VALUE_BYTES = 1024 * 1024;
const MAX_BODY_BYTES = 6 * (MAX_KEY_BYTES + MAX_VALUE_BYTES) + 4096;
const API_TIMEOUT_MS = 2000;
const NODE_FLAGS = ["--api-timeout", String(API_TIMEOUT_MS), "--election-timeout", "1000"];

const _encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// The oracle: would the API accept this request? (It mirrors the README's rules.)

function _utf8Length(text: string): number {
  return _encoder.encode(text).byteLength;
}

function _validKey(key: unknown): key is string {
  return typeof key === "string" && key !== "" && key.isWellFormed() &&
    _utf8Length(key) <= MAX_KEY_BYTES;
}

function _validWriteBody(body: Uint8Array | null, pathKey: string | null): boolean {
  if (body === null || body.byteLength === 0 || body.byteLength > MAX_BODY_BYTES) return false;
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    return false;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const object = value as Record<string, unknown>;
  if (Object.keys(object).some((field) => !["k", "v", "cas"].includes(field))) return false;
  const hasK = Object.hasOwn(object, "k");
  const putKey = (k: unknown) => _validKey(k) && k !== "." && k !== "..";
  if (pathKey === null ? !hasK || !putKey(object.k) : hasK && object.k !== pathKey) {
    return false;
  }
  const v = object.v;
  return Object.hasOwn(object, "v") && typeof v === "string" && v.isWellFormed() &&
    _utf8Length(v) <= MAX_VALUE_BYTES;
}

/** Whether a `Content-Type` says JSON, as the API requires of a write. */
function _isJsonType(type: string | undefined): boolean {
  return type?.split(";", 1)[0]?.trim().toLowerCase() === "application/json";
}

/**
 * Whether the request gets past routing, method and path-key checks to the write handler, which
 * checks the `Content-Type` first.
 */
function _reachesWrite(method: string, target: string): boolean {
  let url: URL;
  try {
    url = new URL(target, "http://raftkv.test");
  } catch {
    return false;
  }
  const path = url.pathname;
  if (path === "/v1/data" || path === "/v1/txn") return method === "POST";
  if (!path.startsWith("/v1/data/") || method !== "PUT") return false;
  try {
    return _validKey(decodeURIComponent(path.slice("/v1/data/".length)));
  } catch {
    return false;
  }
}

/** Whether the API would serve this request successfully (a read or a write). */
function _wouldSucceed(
  method: string,
  target: string,
  body: Uint8Array | null,
  headers: Record<string, string>,
): boolean {
  if (_reachesWrite(method, target) && !_isJsonType(headers["content-type"])) return false;
  let url: URL;
  try {
    url = new URL(target, "http://raftkv.test");
  } catch {
    return false;
  }
  const path = url.pathname;
  if (path === "/health" || path === "/ready") return method === "GET" || method === "HEAD";
  if (["/v1/status", "/v1/snapshot"].includes(path)) return method === "GET";
  if (path === "/v1/data") {
    // Listing keys is a read; a range delete needs ?prefix= or ?start= (it never has one here).
    if (method === "GET") return _validRangeQuery(url);
    return method === "POST" && _onlyParams(url, ["cas", "lease", "ttl"]) &&
      _validWriteBody(body, null);
  }
  if (path === "/v1/txn") return method === "POST" && _isEmptyTxn(body);
  if (!path.startsWith("/v1/data/")) return false;
  if (!["GET", "PUT", "DELETE"].includes(method)) return false;
  let key: string;
  try {
    key = decodeURIComponent(path.slice("/v1/data/".length));
  } catch {
    return false;
  }
  if (!_validKey(key)) return false;
  const params = { GET: ["consistency", "index", "wait"], PUT: ["cas", "lease", "ttl"] };
  if (!_onlyParams(url, params[method as keyof typeof params] ?? ["cas"])) return false;
  if (method === "DELETE") return true;
  if (method === "GET") {
    const consistency = url.searchParams.get("consistency") ?? "linearizable";
    return ["linearizable", "stale", "lease"].includes(consistency);
  }
  return _validWriteBody(body, key);
}

/** Whether the query names only parameters the route takes (a typo is refused). */
function _onlyParams(url: URL, allowed: readonly string[]): boolean {
  return [...url.searchParams.keys()].every((name) => allowed.includes(name));
}

/** Whether a `GET /v1/data` query is one the API serves (only plain ones are generated). */
function _validRangeQuery(url: URL): boolean {
  for (const [name, value] of url.searchParams) {
    if (name !== "consistency" || !["linearizable", "stale", "lease"].includes(value)) return false;
  }
  return true;
}

/** Whether a body is a transaction that does nothing (`{}`), the only one the fuzz could send. */
function _isEmptyTxn(body: Uint8Array | null): boolean {
  try {
    const value = JSON.parse(new TextDecoder().decode(body ?? new Uint8Array(0)));
    return typeof value === "object" && value !== null && !Array.isArray(value) &&
      Object.keys(value).length === 0;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// The generator.

/** One generated request. */
interface FuzzCase {
  /** What kind of bad input it is. */
  category: string;
  /** How it is sent. */
  via: "http1" | "http2" | "raw";
  method: string;
  /** Path and query, as sent. */
  target: string;
  headers: Record<string, string>;
  body: Uint8Array | null;
  /** For `raw`: the whole request as bytes. */
  raw?: Uint8Array;
  /** The statuses the API may answer with. */
  expect: readonly number[];
  /** Whether the connection may end without an answer (huge requests the HTTP layer resets). */
  mayGetNoAnswer?: boolean;
}

/** Content types other than JSON (null: none). */
const _CONTENT_TYPES = [
  null,
  "application/json",
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=xyz",
  "application/json; charset=utf-16",
  "application/xml",
  "*/*",
  "application/json, text/plain",
];

const _BAD_JSON = [
  "",
  " ",
  "{",
  "}",
  "{]",
  "[",
  "null",
  "true",
  "42",
  '"just a string"',
  "[]",
  '[{"k":"a","v":"b"}]',
  "{'k':'a','v':'b'}",
  '{k:"a",v:"b"}',
  '{"k":"a","v":"b",}',
  '{"k":"a" "v":"b"}',
  '{"k":"a","v":"b"}}',
  '{"k":"a","v":"b"} trailing',
  '{"k":"a","v":"b"}{"k":"c","v":"d"}',
  '{"k":"a","v":NaN}',
  '{"k":"a","v":undefined}',
  '{"k":"a","v":"b" /* comment */}',
  '{"k":"a","v":"\\x41"}',
  '{"k":"a","v":"\\u12"}',
  '{"k":"a","v":"line\nbreak"}',
  '{"k":"a","v":"tab\tinside"}',
  "k=a&v=b",
  "<k>a</k><v>b</v>",
  '{"__proto__":{"k":"a","v":"b"}}',
  '{"constructor":{"prototype":{"k":"a"}},"v":"b"}',
  '{"k":"a","v":"b","k":5}',
  '{"k":"a","v":1e999}',
  '{"k":"","v":"b"}',
  '{"k":"\\ud800","v":"b"}',
  '{"k":"a","v":"\\udc00"}',
  '{"k":"a","v":"\\udc00\\ud800"}',
  '{"k":"\\ud83d","v":"\\ude00"}',
];

const _WRONG_TYPES: readonly unknown[] = [
  null,
  0,
  -1.5,
  1e308,
  true,
  false,
  [],
  ["a"],
  {},
  { v: "a" },
  [[["deep"]]],
];

const _BAD_ESCAPES = [
  "%",
  "%2",
  "%G0",
  "%zz",
  "a%",
  "a%2",
  "%%",
  "%C0%AF",
  "%ED%A0%80",
  "%ED%BF%BF",
  "%FF",
  "%FE%FF",
  "%E2%82",
  "%F0%9F%98",
  "%80",
  "%C3",
  "abc%E2%28%A1",
  "%F8%88%80%80%80",
];

const _UNKNOWN_PATHS = [
  "/",
  "/v1",
  "/v1/",
  "/v2/data/a",
  "/v1/datum",
  "/v1/data2",
  "/V1/DATA",
  "/V1/data/a",
  "/health/",
  "/healthz",
  "/readyz",
  "/ready/now",
  "/v1/status/",
  "/v1/status/x",
  "/favicon.ico",
  "//v1/data/a",
  "//v1/data",
  "/v1//data/a",
  "///",
  "/.env",
  "/%00",
  "/%2e%2e/%2e%2e/etc/passwd",
  "/v1/snapshots",
  "/v1/data.json",
  "/api/v1/data/a",
];

const _KNOWN_ROUTES: readonly { path: string; allowed: readonly string[] }[] = [
  { path: "/health", allowed: ["GET", "HEAD"] },
  { path: "/ready", allowed: ["GET", "HEAD"] },
  { path: "/v1/status", allowed: ["GET"] },
  { path: "/v1/snapshot", allowed: ["GET"] },
  { path: "/v1/data", allowed: ["GET", "POST", "DELETE"] },
  { path: "/v1/data/some-key", allowed: ["GET", "PUT", "DELETE"] },
  { path: "/v1/txn", allowed: ["POST"] },
];

const _METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO", "PROPFIND"];

function _bytes(text: string): Uint8Array {
  return _encoder.encode(text);
}

function _concat(...parts: (Uint8Array | string)[]): Uint8Array {
  const chunks = parts.map((part) => typeof part === "string" ? _bytes(part) : part);
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

function _randomText(rng: Rng, length: number): string {
  const alphabet = 'abcXYZ019 {}[]":,\\/-_.~%+é€😀\u0000\u007f';
  let text = "";
  while (text.length < length) text += rng.pick([...alphabet]);
  return text;
}

function _validLookingKey(rng: Rng): string {
  return rng.pick(["a", "b", "key-1", "ü", "a/b", "space key", "fuzz-known-3", "%41"]);
}

const _JSON_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON"];

/**
 * Headers for a generated request: usually a JSON content type when it has a body (so that the
 * body is what gets tested), sometimes another type or none.
 */
function _headersFor(rng: Rng, body: Uint8Array | null): Record<string, string> {
  const headers: Record<string, string> = {};
  const type = body === null
    ? null
    : rng.chance(0.7)
    ? rng.pick(_JSON_TYPES)
    : rng.pick(_CONTENT_TYPES);
  if (type !== null) headers["content-type"] = type;
  if (rng.chance(0.05)) headers["x-raftkv-forwarded-by"] = rng.pick(["node-1", "evil", ""]);
  return headers;
}

type _Generator = (rng: Rng) => Omit<FuzzCase, "via" | "headers"> & {
  headers?: Record<string, string>;
  via?: FuzzCase["via"];
};

/** The generators with their weights. Each returns an invalid request. */
const _GENERATORS: readonly [number, string, _Generator][] = [
  [14, "broken JSON", (rng) => {
    const valid = JSON.stringify({ k: _validLookingKey(rng), v: "value" });
    const text = rng.chance(0.5)
      ? rng.pick(_BAD_JSON)
      : rng.chance(0.5)
      ? valid.slice(0, rng.int(0, valid.length))
      : _randomText(rng, rng.int(1, 60));
    const put = rng.chance(0.3);
    return {
      category: "broken JSON",
      method: put ? "PUT" : "POST",
      target: put ? `/v1/data/${encodeURIComponent(_validLookingKey(rng))}` : "/v1/data",
      body: _bytes(text),
      expect: [400],
    };
  }],
  [12, "wrong types", (rng) => {
    const object: Record<string, unknown> = {};
    const badK = rng.chance(0.5);
    const badV = !badK || rng.chance(0.5);
    if (rng.chance(0.85)) object.k = badK ? rng.pick(_WRONG_TYPES) : _validLookingKey(rng);
    if (rng.chance(0.85)) object.v = badV ? rng.pick(_WRONG_TYPES) : "value";
    if (rng.chance(0.2)) object.extra = { nested: [1, 2, { k: "a", v: "b" }] };
    const put = rng.chance(0.3);
    if (put && !Object.hasOwn(object, "v")) object.v = rng.pick(_WRONG_TYPES);
    return {
      category: "wrong types",
      method: put ? "PUT" : "POST",
      target: put ? `/v1/data/${encodeURIComponent(_validLookingKey(rng))}` : "/v1/data",
      body: _bytes(JSON.stringify(object)),
      expect: [400],
    };
  }],
  [4, "key mismatch", (rng) => ({
    category: "key mismatch",
    method: "PUT",
    target: "/v1/data/path-key",
    body: _bytes(
      JSON.stringify({ k: rng.pick(["body-key", "", "PATH-KEY", "path-key "]), v: "x" }),
    ),
    expect: [400],
  })],
  [5, "empty key", (rng) => {
    const method = rng.pick(["POST", "PUT", "GET", "DELETE"]);
    return {
      category: "empty key",
      method,
      target: method === "POST"
        ? "/v1/data"
        : rng.pick(["/v1/data/", "/v1/data/?consistency=stale"]),
      body: method === "POST" || method === "PUT"
        ? _bytes(JSON.stringify(method === "POST" ? { k: "", v: "x" } : { v: "x" }))
        : null,
      expect: [400],
    };
  }],
  [5, "lone surrogates", (rng) => {
    const bad = rng.pick(["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b", "\\udc00\\ud800"]);
    const inKey = rng.chance(0.5);
    const k = inKey ? `"${bad}"` : `"ok"`;
    const v = inKey ? `"ok"` : `"${bad}"`;
    return {
      category: "lone surrogates",
      method: "POST",
      target: "/v1/data",
      body: _bytes(`{"k":${k},"v":${v}}`),
      expect: [400],
    };
  }],
  [6, "invalid UTF-8 body", (rng) => {
    const bad = rng.pick([
      [0xff],
      [0xc0, 0xaf],
      [0xe0, 0x80, 0xaf],
      [0xed, 0xa0, 0x80],
      [0xe2, 0x82],
      [0xf8, 0x88, 0x80, 0x80, 0x80],
      [0x80],
      [0xfe, 0xff],
    ]);
    const inKey = rng.chance(0.5);
    return {
      category: "invalid UTF-8 body",
      method: "POST",
      target: "/v1/data",
      body: _concat(
        `{"k":"${inKey ? "" : "ok"}`,
        new Uint8Array(bad),
        `","v":"${inKey ? "ok" : ""}`,
        inKey ? "" : new Uint8Array(bad),
        `"}`,
      ),
      expect: [400],
    };
  }],
  [10, "bad percent escapes", (rng) => {
    const method = rng.pick(["GET", "PUT", "DELETE"]);
    return {
      category: "bad percent escapes",
      method,
      target: `/v1/data/${rng.pick(["", "a", "x/"])}${rng.pick(_BAD_ESCAPES)}`,
      body: method === "PUT" ? _bytes(JSON.stringify({ v: "x" })) : null,
      expect: [400],
    };
  }],
  [5, "dot segments", (rng) => {
    const method = rng.pick(_METHODS.filter((m) => m !== "HEAD"));
    const target = rng.pick([
      "/v1/data/..",
      "/v1/data/.",
      "/v1/data/%2e%2e",
      "/v1/data/%2E",
      "/v1/data/../data",
      "/v1/./data/./",
      "/v1/data/a/../",
      "/v1/data/../../health/..",
      "/v1/data/..%2f..%2fetc",
    ]);
    return {
      category: "dot segments",
      method,
      target,
      body: method === "POST" || method === "PUT" ? _bytes('{"v":') : null,
      expect: [400, 404, 405],
    };
  }],
  [8, "unknown paths", (rng) => {
    const method = rng.pick(_METHODS);
    return {
      category: "unknown paths",
      method,
      target: rng.pick(_UNKNOWN_PATHS),
      body: method === "POST" || method === "PUT" ? _bytes('{"k":"a","v":"b"}') : null,
      expect: [404, 405],
    };
  }],
  [10, "wrong methods", (rng) => {
    const route = rng.pick(_KNOWN_ROUTES);
    const method = rng.pick(_METHODS.filter((m) => !route.allowed.includes(m)));
    return {
      category: "wrong methods",
      method,
      target: route.path,
      body: method === "POST" || method === "PUT" || method === "PATCH"
        ? _bytes('{"k":"a","v":"b"}')
        : null,
      expect: [405],
    };
  }],
  [5, "bad consistency", (rng) => ({
    category: "bad consistency",
    method: "GET",
    target: `/v1/data/${encodeURIComponent(_validLookingKey(rng))}?consistency=${
      rng.pick([
        "",
        "LINEARIZABLE",
        "strong",
        "stale%20",
        "%ff",
        "linearizable,stale",
        "lease%00",
        "1",
        encodeURIComponent(_randomText(rng, 8)),
      ])
    }`,
    body: null,
    expect: [400],
  })],
  [4, "long paths", (rng) => {
    const data = rng.chance(0.5);
    const length = rng.chance(0.8) ? rng.int(1100, 8000) : rng.int(8000, 60_000);
    return {
      category: "long paths",
      method: data ? rng.pick(["GET", "DELETE"]) : rng.pick(["GET", "POST"]),
      target: data ? `/v1/data/${"k".repeat(length)}` : `/${"p".repeat(length)}`,
      body: null,
      expect: data ? [413] : [404, 405],
      mayGetNoAnswer: length > 16_000,
    };
  }],
  [3, "key too large", (rng) => {
    const unit = rng.pick(["k", "é", "€", "😀"]);
    const key = unit.repeat(Math.floor(MAX_KEY_BYTES / _utf8Length(unit)) + rng.int(1, 40));
    const inPath = rng.chance(0.4);
    return {
      category: "key too large",
      method: inPath ? "PUT" : "POST",
      target: inPath ? `/v1/data/${encodeURIComponent(key)}` : "/v1/data",
      body: _bytes(JSON.stringify(inPath ? { v: "x" } : { k: key, v: "x" })),
      expect: [413],
    };
  }],
  [1, "value too large", (rng) => {
    const unit = rng.pick(["v", "é"]);
    const value = unit.repeat(Math.floor(MAX_VALUE_BYTES / _utf8Length(unit)) + rng.int(1, 100));
    return {
      category: "value too large",
      method: "POST",
      target: "/v1/data",
      body: _bytes(JSON.stringify({ k: "big", v: value })),
      expect: [413],
    };
  }],
  [1, "body too large", (rng) => {
    const put = rng.chance(0.5);
    return {
      category: "body too large",
      method: put ? "PUT" : "POST",
      target: put ? "/v1/data/big" : "/v1/data",
      body: _bytes(`{"k":"big","v":"x","pad":"${"p".repeat(MAX_BODY_BYTES + rng.int(1, 5000))}"}`),
      expect: [413],
      mayGetNoAnswer: true,
    };
  }],
  [2, "deep nesting", (rng) => {
    const depth = rng.int(1000, 200_000);
    const closed = rng.chance(0.5);
    return {
      category: "deep nesting",
      method: "POST",
      target: "/v1/data",
      body: _bytes(`{"k":"a","v":${"[".repeat(depth)}${closed ? "]".repeat(depth) : ""}}`),
      expect: [400],
    };
  }],
  [8, "raw HTTP", (rng) => _rawCase(rng)],
  [6, "not JSON content type", (rng) => {
    const put = rng.chance(0.3);
    const key = _validLookingKey(rng);
    const type = rng.pick([
      ..._CONTENT_TYPES.filter((t) => t === null || !_isJsonType(t)),
      "text/json",
      "application/jsonp",
      "application/vnd.api+json",
      "application/json-seq",
    ]);
    return {
      category: "not JSON content type",
      method: put ? "PUT" : "POST",
      target: put ? `/v1/data/${encodeURIComponent(key)}` : "/v1/data",
      headers: type === null ? {} : { "content-type": type },
      body: _bytes(JSON.stringify(put ? { v: "content type" } : { k: key, v: "content type" })),
      expect: [415],
    };
  }],
];

const _TOTAL_WEIGHT = _GENERATORS.reduce((n, [weight]) => n + weight, 0);

/** Malformed requests that only a raw socket can send. */
function _rawCase(rng: Rng): ReturnType<_Generator> {
  const cut = rng.int(1, 15);
  const partial = '{"k":"a","v":"b"}'.slice(0, cut);
  const cases: [string, string | Uint8Array, readonly number[]][] = [
    ["garbage request line", "GARBAGE\r\n\r\n", [400]],
    ["no path", "GET HTTP/1.1\r\nHost: x\r\n\r\n", [400, 404]],
    ["relative path", "GET v1/data/a HTTP/1.1\r\nHost: x\r\n\r\n", [400]],
    ["bad version", "GET /health HTTP/9.9\r\nHost: x\r\n\r\n", [400, 505]],
    ["TRACE", "TRACE /v1/data HTTP/1.1\r\nHost: x\r\n\r\n", [405]],
    ["CONNECT", "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n", [400, 404, 405]],
    ["asterisk", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", [400, 404, 405]],
    ["bad header name", "POST /v1/data HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", [400]],
    [
      "content-length not a number",
      "POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
      [400],
    ],
    [
      "negative content-length",
      "POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
      [400],
    ],
    [
      "two content-lengths",
      'POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\nContent-Length: 3\r\n\r\n{"k":"a","v":"b"}',
      [400],
    ],
    [
      "content-length and chunked",
      'POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\nTransfer-Encoding: chunked\r\n\r\n{"k":"a","v":"b"}',
      [400],
    ],
    [
      "bad chunk size",
      "POST /v1/data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
      [400],
    ],
    [
      "body shorter than content-length",
      `POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n${partial}`,
      [400, 408],
    ],
    [
      "chunked body cut short",
      `POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${
        cut.toString(16)
      }\r\n${partial}\r\n`,
      [400, 408],
    ],
    [
      "invalid UTF-8 in the path",
      _concat("GET /v1/data/", new Uint8Array([0xff, 0xfe]), " HTTP/1.1\r\nHost: x\r\n\r\n"),
      [400],
    ],
    ["NUL in the path", "GET /v1/data/a\u0000b HTTP/1.1\r\nHost: x\r\n\r\n", [400]],
    [
      "huge header",
      `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"h".repeat(rng.int(100_000, 300_000))}\r\n\r\n`,
      [400, 431],
    ],
    [
      "many headers",
      `GET /v1/data/%ZZ HTTP/1.1\r\nHost: x\r\n${
        Array.from({ length: rng.int(100, 400) }, (_, i) => `X-H${i}: ${i}\r\n`).join("")
      }\r\n`,
      [400, 431],
    ],
    ["obsolete line folding", "GET /v1/data/%ZZ HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", [
      400,
    ]],
  ];
  const [name, request, expect] = rng.pick(cases);
  return {
    category: `raw HTTP: ${name}`,
    via: "raw",
    method: "RAW",
    target: "",
    body: null,
    raw: typeof request === "string" ? _bytes(request) : request,
    expect,
    mayGetNoAnswer: true,
  };
}

/** Generates case number `index` of the run with `seed`: the same pair gives the same case. */
function _generate(seed: number, index: number): FuzzCase {
  const rng = new Rng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  for (let tries = 0; tries < 100; tries++) {
    let roll = rng.float() * _TOTAL_WEIGHT;
    let generator = _GENERATORS[0]?.[2];
    for (const [weight, , g] of _GENERATORS) {
      roll -= weight;
      if (roll < 0) {
        generator = g;
        break;
      }
    }
    if (generator === undefined) throw new Error("no generators");
    const partial = generator(rng);
    const via = partial.via ?? (rng.chance(0.25) ? "http2" : "http1");
    const fuzz: FuzzCase = { ...partial, via, headers: partial.headers ?? {} };
    if (via !== "raw") {
      // A generator that sets headers sets them all.
      if (partial.headers === undefined) fuzz.headers = _headersFor(rng, fuzz.body);
      if (_wouldSucceed(fuzz.method, fuzz.target, fuzz.body, fuzz.headers)) {
        continue; // Valid by chance.
      }
      if (_reachesWrite(fuzz.method, fuzz.target) && !_isJsonType(fuzz.headers["content-type"])) {
        fuzz.expect = [415]; // Refused before the body is read.
      }
      if ("x-raftkv-forwarded-by" in fuzz.headers) {
        fuzz.expect = [400]; // A member's header, from a client: refused before anything else.
      }
    }
    return fuzz;
  }
  throw new Error(`case ${index} of seed ${seed}: the generators keep making valid requests`);
}

// ---------------------------------------------------------------------------------------------
// Sending.

/** What came back for one request. */
interface Answer {
  status: number;
  headers: Headers;
  text: string;
  /** Whether the body was sent by the API (JSON), not by the HTTP layer. */
  fromApi: boolean;
}

async function _sendFetch(
  baseUrl: string,
  fuzz: FuzzCase,
  client: Deno.HttpClient | undefined,
): Promise<Answer> {
  const init: RequestInit & { client?: Deno.HttpClient } = {
    method: fuzz.method,
    headers: fuzz.headers,
    signal: AbortSignal.timeout(15_000),
  };
  if (fuzz.body !== null) init.body = fuzz.body as Uint8Array<ArrayBuffer>;
  if (client !== undefined) init.client = client;
  const response = await fetch(`${baseUrl}${fuzz.target}`, init);
  const text = await response.text();
  return {
    status: response.status,
    headers: response.headers,
    text,
    fromApi: (response.headers.get("content-type") ?? "").includes("application/json"),
  };
}

/**
 * Sends raw bytes over a new TCP connection and reads the answer until the server closes the
 * connection or `timeoutMs` passes. Returns null if no status line came back.
 */
async function _sendRaw(
  port: number,
  bytes: Uint8Array,
  options: { closeWrite?: boolean; timeoutMs?: number } = {},
): Promise<Answer | null> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const timer = setTimeout(() => conn.close(), options.timeoutMs ?? 10_000);
  const chunks: Uint8Array[] = [];
  try {
    try {
      let offset = 0;
      while (offset < bytes.byteLength) offset += await conn.write(bytes.subarray(offset));
      if (options.closeWrite) await conn.closeWrite();
    } catch {
      // The server may answer and close before reading everything.
    }
    const buffer = new Uint8Array(64 * 1024);
    while (true) {
      const n = await conn.read(buffer);
      if (n === null) break;
      chunks.push(buffer.slice(0, n));
      if (_completeResponse(_concat(...chunks))) break;
    }
  } catch {
    // Reset or closed by the timer: use what arrived.
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // Closed by the timer.
    }
  }
  return _parseResponse(_concat(...chunks));
}

function _completeResponse(data: Uint8Array): boolean {
  const answer = _parseResponse(data);
  if (answer === null) return false;
  const length = Number(answer.headers.get("content-length") ?? NaN);
  return Number.isFinite(length) && _bytes(answer.text).byteLength >= length;
}

function _parseResponse(data: Uint8Array): Answer | null {
  const text = new TextDecoder().decode(data);
  const end = text.indexOf("\r\n\r\n");
  if (end === -1) return null;
  const [statusLine = "", ...lines] = text.slice(0, end).split("\r\n");
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  if (match === null) return null;
  const headers = new Headers();
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  return {
    status: Number(match[1]),
    headers,
    text: text.slice(end + 4),
    fromApi: (headers.get("content-type") ?? "").includes("application/json"),
  };
}

/**
 * Whether the answer came from Deno's HTTP layer rather than from the API: an empty body without
 * a content type, for requests the layer refuses before the handler runs (a malformed request
 * line, a bad Content-Length, more than 16 KiB of HTTP/2 headers, ...). The API cannot shape
 * those answers.
 */
function _refusedByHttpLayer(answer: Answer): boolean {
  return !answer.fromApi && answer.text === "" && [400, 413, 414, 431].includes(answer.status);
}

/** Checks one answer; returns the problems found. */
function _check(fuzz: FuzzCase, answer: Answer | null): string[] {
  if (answer === null) return fuzz.mayGetNoAnswer ? [] : ["no answer"];
  const problems: string[] = [];
  const { status } = answer;
  if (status >= 500) problems.push(`answered ${status}`);
  if (status < 400) problems.push(`accepted with ${status}`);
  if (!fuzz.expect.includes(status) && !_refusedByHttpLayer(answer)) {
    problems.push(`${status}, expected one of ${fuzz.expect}`);
  }
  if (_refusedByHttpLayer(answer)) return problems;
  if (fuzz.method === "HEAD") return problems;
  let body: unknown = null;
  try {
    body = JSON.parse(answer.text);
  } catch {
    problems.push(`the body is not JSON: ${JSON.stringify(answer.text.slice(0, 120))}`);
  }
  if (typeof (body as { error?: unknown } | null)?.error !== "string") {
    problems.push(`no "error" string in ${JSON.stringify(answer.text.slice(0, 120))}`);
  }
  if (!(answer.headers.get("content-type") ?? "").includes("application/json")) {
    problems.push(`content-type ${answer.headers.get("content-type")}`);
  }
  if (status === 405 && !answer.headers.has("allow")) problems.push("405 without Allow");
  return problems;
}

function _describeCase(fuzz: FuzzCase): string {
  const show = (text: string) =>
    JSON.stringify(text.length > 160 ? `${text.slice(0, 160)}…` : text);
  if (fuzz.raw !== undefined) {
    return `${fuzz.category} (${fuzz.raw.byteLength} raw bytes ${
      show(new TextDecoder().decode(fuzz.raw.subarray(0, 200)))
    })`;
  }
  const body = fuzz.body === null
    ? ""
    : ` body ${fuzz.body.byteLength} bytes ${
      show(new TextDecoder().decode(fuzz.body.subarray(0, 200)))
    }`;
  return `${fuzz.category}: ${fuzz.via} ${fuzz.method} ${show(fuzz.target)} headers ${
    JSON.stringify(fuzz.headers)
  }${body}`;
}

// ---------------------------------------------------------------------------------------------
// State before and after.

const _KNOWN: readonly [string, string][] = [
  ...Array.from({ length: 20 }, (_, i) => [`fuzz-known-${i}`, `value-${i}`] as [string, string]),
  ["a/b", "slash"],
  ["ü", "umlaut"],
  ["space key", "spaces"],
  ["%41", "a literal percent"],
  ["emoji 😀", "😀"],
  ["nul\u0000key", "nul"],
];

interface _Snapshot {
  statuses: NodeStatus[];
}

async function _writeKnownKeys(cluster: ProcessCluster): Promise<void> {
  for (const [i, [k, v]] of _KNOWN.entries()) {
    const node = cluster.ids[i % cluster.ids.length] ?? "node-1";
    const put = await cluster.request(node, "POST", "/v1/data", { k, v }, { timeoutMs: 10_000 });
    assert.equal(put.status, 200, `writing ${k}: ${put.text}`);
  }
}

/** Waits until every node has applied everything committed, then takes their statuses. */
async function _settledStatuses(cluster: ProcessCluster): Promise<_Snapshot> {
  let statuses: NodeStatus[] = [];
  await waitFor(async () => {
    const all = await Promise.all(cluster.ids.map((id) => cluster.status(id, 3000)));
    if (all.some((s) => s === null)) return false;
    statuses = all as NodeStatus[];
    const commits = new Set(statuses.map((s) => s.commit_index));
    return commits.size === 1 &&
      statuses.every((s) => s.applied_index === s.commit_index && s.last_index === s.commit_index);
  }, { deadlineMs: 20_000, message: "every node to apply the same index" });
  return { statuses };
}

/** Asserts that nothing changed between two snapshots, and that every key reads as before. */
async function _assertUnchanged(
  cluster: ProcessCluster,
  before: _Snapshot,
  targetedKeys: ReadonlySet<string>,
  context: string,
): Promise<void> {
  const after = await _settledStatuses(cluster);
  for (const [i, was] of before.statuses.entries()) {
    const now = after.statuses[i];
    assert.ok(now !== undefined);
    // A new leader appends one no-op entry per term; nothing else may be appended.
    const newTerms = now.term - was.term;
    assert.ok(
      now.last_index - was.last_index <= newTerms,
      `${context}: ${now.id}'s log grew from ${was.last_index} to ${now.last_index} in ${newTerms} new terms`,
    );
  }
  const known = new Map(_KNOWN);
  const keys = new Set([...known.keys(), ...targetedKeys]);
  const wrong: string[] = [];
  for (const [i, key] of [...keys].entries()) {
    const node = cluster.ids[i % cluster.ids.length] ?? "node-1";
    const read = await cluster.request(
      node,
      "GET",
      `/v1/data/${encodeURIComponent(key)}`,
      undefined,
      { timeoutMs: 10_000 },
    );
    const expected = known.get(key);
    const value = read.status === 200 ? (read.json as { v: string }).v : null;
    if (read.status !== 200 && read.status !== 404) {
      wrong.push(`${JSON.stringify(key)}: ${read.status} ${read.text}`);
    } else if (value !== (expected ?? null)) {
      wrong.push(
        `${JSON.stringify(key)}: ${JSON.stringify(value)}, was ${JSON.stringify(expected)}`,
      );
    }
  }
  assert.deepEqual(wrong, [], `${context}: keys changed`);
}

/** Keys a case may have touched, had it been accepted. */
function _touchedKeys(fuzz: FuzzCase): string[] {
  const keys: string[] = [];
  try {
    const url = new URL(fuzz.target, "http://raftkv.test");
    if (url.pathname.startsWith("/v1/data/")) {
      keys.push(decodeURIComponent(url.pathname.slice("/v1/data/".length)));
    }
  } catch {
    // Not a decodable key.
  }
  if (fuzz.body !== null && fuzz.body.byteLength < 10_000) {
    try {
      const k = JSON.parse(new TextDecoder().decode(fuzz.body))?.k;
      if (typeof k === "string") keys.push(k);
    } catch {
      // Not JSON.
    }
  }
  return keys.filter(_validKey);
}

async function _assertNodesHealthy(cluster: ProcessCluster): Promise<void> {
  for (const id of cluster.ids) {
    assert.ok(cluster.isRunning(id), `${id} is not running:\n${cluster.formatLogs([id], 50)}`);
    const health = await cluster.request(id, "GET", "/health", undefined, { timeoutMs: 5000 });
    assert.equal(health.status, 200, `${id} /health: ${health.status}`);
  }
  const crashes = cluster.ids.flatMap((id) =>
    cluster.logs(id).filter((line) => /uncaught|panicked|fatal/i.test(line))
  );
  assert.deepEqual(crashes, [], "the nodes logged crashes");
}

function _seed(): number {
  const text = Deno.env.get("FUZZ_SEED");
  return text === undefined ? crypto.getRandomValues(new Uint32Array(1))[0] ?? 1 : Number(text);
}

// ---------------------------------------------------------------------------------------------
// The tests.

Deno.test("thousands of malformed and hostile requests are refused with JSON errors and change nothing", async () => {
  const seed = _seed();
  const count = Number(Deno.env.get("FUZZ_COUNT") ?? 3000);
  await using cluster = await startCluster({ size: 3, nodeFlags: NODE_FLAGS });
  await cluster.waitForLeader(20_000);
  await _writeKnownKeys(cluster);
  const before = await _settledStatuses(cluster);

  const h2 = Deno.createHttpClient({ http2: true, http1: false });
  const failures: string[] = [];
  const statuses = new Map<string, number>();
  const targeted = new Set<string>();
  let protocolRefusals = 0;
  const layerRefusals = new Map<string, number>();
  let unanswered = 0;
  const started = performance.now();
  try {
    let next = 0;
    await Promise.all(Array.from({ length: 12 }, async () => {
      while (next < count) {
        const index = next++;
        const fuzz = _generate(seed, index);
        const node = cluster.ids[index % cluster.ids.length] ?? "node-1";
        for (const key of _touchedKeys(fuzz)) if (targeted.size < 400) targeted.add(key);
        let answer: Answer | null;
        try {
          answer = fuzz.via === "raw"
            ? await _sendRaw(cluster.node(node).apiPort, fuzz.raw ?? new Uint8Array())
            : await _sendFetch(cluster.api(node), fuzz, fuzz.via === "http2" ? h2 : undefined);
        } catch (error) {
          answer = null;
          if (!fuzz.mayGetNoAnswer) {
            failures.push(
              `case ${index} to ${node}: ${_describeCase(fuzz)}: ${(error as Error).message}`,
            );
            continue;
          }
        }
        if (answer === null) unanswered++;
        else {
          statuses.set(String(answer.status), (statuses.get(String(answer.status)) ?? 0) + 1);
          if (_refusedByHttpLayer(answer)) {
            protocolRefusals++;
            const key = `${fuzz.via} ${answer.status} ${fuzz.category}`;
            layerRefusals.set(key, (layerRefusals.get(key) ?? 0) + 1);
          }
        }
        for (const problem of _check(fuzz, answer)) {
          failures.push(`case ${index} to ${node}: ${_describeCase(fuzz)}: ${problem}`);
        }
      }
    }));
  } finally {
    h2.close();
  }
  const elapsed = performance.now() - started;
  console.log(
    `fuzz: ${count} requests in ${(elapsed / 1000).toFixed(1)} s (seed ${seed}); statuses ${
      JSON.stringify(Object.fromEntries([...statuses].sort()))
    }; ${unanswered} unanswered (huge requests the HTTP layer reset); ${protocolRefusals} ` +
      `refused by Deno's HTTP layer with an empty body: ${
        JSON.stringify(Object.fromEntries([...layerRefusals].sort()))
      }`,
  );
  assert.deepEqual(
    failures.slice(0, 25),
    [],
    `${failures.length} bad answers (replay with FUZZ_SEED=${seed})`,
  );
  await _assertNodesHealthy(cluster);
  await _assertUnchanged(cluster, before, targeted, `after the fuzz (FUZZ_SEED=${seed})`);

  // The cluster still works.
  const put = await cluster.request("node-2", "POST", "/v1/data", { k: "after", v: "fuzz" });
  assert.equal(put.status, 200, put.text);

  // Valid writes of troublesome text through every node (followers forward them) read back
  // exactly on every node: a leading U+FEFF, noncharacters, NUL, separators, escapes.
  const rng = new Rng(seed);
  const tricky = [
    "a",
    "é",
    "\u{1f600}",
    "\ufeff",
    "\ufffe",
    "\u0000",
    "\u2028",
    "%",
    "/",
    '"',
    ".",
  ];
  const text = () => Array.from({ length: rng.int(1, 7) }, () => rng.pick(tricky)).join("");
  const written = new Map<string, string>();
  for (let i = 0; written.size < 30; i++) {
    const [k, v] = [`${rng.pick(["", "\ufeff"])}text/${text()}`, text()];
    const node = cluster.ids[i % cluster.ids.length] ?? "node-1";
    const answer = await cluster.request(node, "POST", "/v1/data", { k, v });
    assert.equal(answer.status, 200, `${JSON.stringify(k)} to ${node}: ${answer.text}`);
    written.set(k, v);
  }
  for (const node of cluster.ids) {
    for (const [k, v] of written) {
      const got = await cluster.request(node, "GET", `/v1/data/${encodeURIComponent(k)}`);
      const body = got.json as Record<string, unknown> | null;
      assert.deepEqual(
        [got.status, body?.k, body?.v],
        [200, k, v],
        `${JSON.stringify(k)} read on ${node} (FUZZ_SEED=${seed})`,
      );
    }
  }
});

Deno.test("bodies that are cut short or trickle in slowly are refused and change nothing", async () => {
  await using cluster = await startCluster({ size: 3, nodeFlags: NODE_FLAGS });
  await cluster.waitForLeader(20_000);
  await _writeKnownKeys(cluster);
  const before = await _settledStatuses(cluster);
  const port = (id: string) => cluster.node(id).apiPort;
  const valid = '{"k":"fuzz-known-1","v":"overwritten"}';

  const checks: Promise<string | null>[] = [];
  const expectAnswer = (label: string, answer: Answer | null, expect: readonly number[]) => {
    if (answer === null) return `${label}: no answer`;
    if (!expect.includes(answer.status)) return `${label}: ${answer.status} ${answer.text}`;
    if (typeof (JSON.parse(answer.text) as { error?: unknown }).error !== "string") {
      return `${label}: no error in ${answer.text}`;
    }
    return null;
  };

  // Content-Length promises more than is sent, and the client then half-closes: 400.
  for (const [i, id] of cluster.ids.entries()) {
    const cut = valid.slice(0, 10 + 7 * i);
    checks.push(
      _sendRaw(
        port(id),
        _bytes(
          `POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
            `Content-Length: ${valid.length}\r\n\r\n${cut}`,
        ),
        { closeWrite: true },
      ).then((answer) =>
        answer === null ? null : expectAnswer(`cut short on ${id}`, answer, [400])
      ),
    );
  }
  // Content-Length promises more than is sent, and the client waits: 408 after --api-timeout.
  for (const id of cluster.ids) {
    checks.push(
      _sendRaw(
        port(id),
        _bytes(
          "PUT /v1/data/fuzz-known-2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
            'Content-Length: 50\r\n\r\n{"v":',
        ),
        { timeoutMs: API_TIMEOUT_MS + 8000 },
      ).then((answer) => expectAnswer(`stalled body on ${id}`, answer, [408])),
    );
  }
  // A body that trickles in, one byte every 150 ms, never finishing within the deadline: 408.
  for (const id of cluster.ids) {
    checks.push((async () => {
      let sent = 0;
      const stream = new ReadableStream<Uint8Array>({
        async pull(controller) {
          await new Promise((resolve) => setTimeout(resolve, 150));
          if (sent >= valid.length) return controller.close();
          controller.enqueue(_bytes(valid[sent++] ?? " "));
        },
      });
      try {
        const response = await fetch(`${cluster.api(id)}/v1/data`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: stream,
          signal: AbortSignal.timeout(API_TIMEOUT_MS + 8000),
        });
        const answer: Answer = {
          status: response.status,
          headers: response.headers,
          text: await response.text(),
          fromApi: true,
        };
        return expectAnswer(`slow body on ${id}`, answer, [408]);
      } catch (error) {
        return `slow body on ${id}: ${(error as Error).message}`;
      }
    })());
  }
  // A body stream that fails midway: the client gives up; the node must not apply anything.
  for (const id of cluster.ids) {
    checks.push((async () => {
      let chunks = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (++chunks > 3) return controller.error(new Error("the client's body failed"));
          controller.enqueue(_bytes(valid.slice((chunks - 1) * 6, chunks * 6)));
        },
      });
      try {
        const response = await fetch(`${cluster.api(id)}/v1/data`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: stream,
          signal: AbortSignal.timeout(10_000),
        });
        const text = await response.text();
        return response.status === 400 || response.status === 499
          ? null
          : `failing body on ${id}: ${response.status} ${text}`;
      } catch {
        return null; // The client's own fetch fails: expected.
      }
    })());
  }
  const problems = (await Promise.all(checks)).filter((p): p is string => p !== null);
  assert.deepEqual(problems, []);
  await _assertNodesHealthy(cluster);
  await _assertUnchanged(cluster, before, new Set(), "after slow and cut-short bodies");
});
