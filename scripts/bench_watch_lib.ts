/**
 * The pieces of the watch fan-out cell's own HTTP/1.1 client (`bench_watcher.ts`), kept apart
 * so they can be tested without a server: an incremental reader of an HTTP/1.1 response (head,
 * then a chunked, sized or until-close body), a splitter of a byte stream into lines, and the
 * reading of one message of etcd's gateway watch stream.
 *
 * @module
 */

/** The head of an HTTP/1.1 response. */
export interface HttpHead {
  /** The status code. */
  status: number;
  /** The header fields, names in lower case (repeated fields joined with `, `). */
  headers: Map<string, string>;
}

const _CRLF = new Uint8Array([13, 10]);
const _HEAD_END = new Uint8Array([13, 10, 13, 10]);

/**
 * Reads one HTTP/1.1 response from the bytes of a connection, as they arrive: first its head,
 * then its body, decoded from `Transfer-Encoding: chunked`, or `Content-Length` bytes, or
 * everything until the connection closes.
 *
 * ```ts
 * import { HttpResponseReader } from "./bench_watch_lib.ts";
 *
 * const reader = new HttpResponseReader();
 * const bytes = new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi");
 * const chunks = reader.push(bytes); // the pieces of body found in these bytes
 * console.log(reader.head?.status, new TextDecoder().decode(chunks[0]), reader.done); // 200 hi true
 * ```
 */
export class HttpResponseReader {
  /** The response's head, once it is complete. */
  head: HttpHead | null = null;
  /** Whether the body ended (a chunked body's last chunk, or all of a sized body). */
  done = false;
  #buffer: Uint8Array = new Uint8Array(0);
  #mode: "chunked" | "length" | "close" = "close";
  #state: "size" | "data" | "crlf" | "trailer" = "size";
  #remaining = 0;

  /**
   * Takes the next bytes of the connection.
   *
   * @param bytes What the connection delivered.
   * @returns The pieces of the body found so far in them (possibly none).
   * @throws Error on a malformed head or chunk.
   */
  push(bytes: Uint8Array): Uint8Array[] {
    this.#buffer = this.#buffer.length === 0 ? bytes : _concat(this.#buffer, bytes);
    const out: Uint8Array[] = [];
    for (;;) {
      if (this.done) {
        this.#buffer = new Uint8Array(0);
        return out;
      }
      if (this.head === null) {
        const end = _indexOf(this.#buffer, _HEAD_END);
        if (end < 0) {
          if (this.#buffer.length > 65536) throw new Error("response head over 64 KiB");
          return out;
        }
        this.head = _parseHead(new TextDecoder("latin1").decode(this.#buffer.subarray(0, end)));
        this.#buffer = this.#buffer.subarray(end + 4);
        const te = this.head.headers.get("transfer-encoding") ?? "";
        const length = this.head.headers.get("content-length");
        if (/\bchunked\b/i.test(te)) this.#mode = "chunked";
        else if (length !== undefined) {
          this.#mode = "length";
          this.#remaining = Number(length);
          if (!Number.isSafeInteger(this.#remaining) || this.#remaining < 0) {
            throw new Error(`bad content-length ${length}`);
          }
          if (this.#remaining === 0) this.done = true;
        }
        continue;
      }
      if (this.#mode === "close") {
        if (this.#buffer.length > 0) out.push(this.#buffer);
        this.#buffer = new Uint8Array(0);
        return out;
      }
      if (this.#mode === "length" || this.#state === "data") {
        if (this.#buffer.length === 0) return out;
        const n = Math.min(this.#remaining, this.#buffer.length);
        out.push(this.#buffer.subarray(0, n));
        this.#buffer = this.#buffer.subarray(n);
        this.#remaining -= n;
        if (this.#remaining === 0) {
          if (this.#mode === "length") this.done = true;
          else this.#state = "crlf";
        }
        continue;
      }
      if (this.#state === "crlf") {
        if (this.#buffer.length < 2) return out;
        if (this.#buffer[0] !== 13 || this.#buffer[1] !== 10) {
          throw new Error("chunk not followed by CRLF");
        }
        this.#buffer = this.#buffer.subarray(2);
        this.#state = "size";
        continue;
      }
      const eol = _indexOf(this.#buffer, _CRLF);
      if (eol < 0) {
        if (this.#buffer.length > 4096) throw new Error("chunk size line over 4 KiB");
        return out;
      }
      const line = new TextDecoder("latin1").decode(this.#buffer.subarray(0, eol));
      this.#buffer = this.#buffer.subarray(eol + 2);
      if (this.#state === "trailer") {
        if (line === "") this.done = true;
        continue;
      }
      const size = line.split(";")[0]!.trim();
      if (!/^[0-9a-fA-F]+$/.test(size)) {
        throw new Error(`bad chunk size line ${JSON.stringify(line)}`);
      }
      this.#remaining = parseInt(size, 16);
      this.#state = this.#remaining === 0 ? "trailer" : "data";
    }
  }
}

/** Splits decoded text into lines (without `\n` or `\r\n`), keeping a partial last line. */
export class LineSplitter {
  #decoder = new TextDecoder();
  #pending = "";

  /**
   * Takes the next bytes.
   *
   * @param bytes The next bytes of the stream.
   * @returns The lines completed by them.
   */
  push(bytes: Uint8Array): string[] {
    this.#pending += this.#decoder.decode(bytes, { stream: true });
    const lines: string[] = [];
    let nl: number;
    while ((nl = this.#pending.indexOf("\n")) >= 0) {
      lines.push(this.#pending.slice(0, nl).replace(/\r$/, ""));
      this.#pending = this.#pending.slice(nl + 1);
    }
    return lines;
  }
}

/** What one message of etcd's gateway watch stream says. */
export interface EtcdWatchMessage {
  /** The watch is in place (`result.created`). */
  created: boolean;
  /** The watch was ended by the server (`result.canceled`), or the message is an error. */
  failed: string | null;
  /** The values of the events it carries, decoded from base64, in order. */
  values: string[];
}

/**
 * Reads one line of etcd's gateway watch stream (`POST /v3/watch`): a JSON object with a
 * `result` (a `WatchResponse`: `created`, `canceled`, `events` with base64 keys and values) or
 * an `error`.
 *
 * @param line One line of the stream.
 * @returns What it says.
 * @throws Error when the line is not JSON.
 */
export function parseEtcdWatchLine(line: string): EtcdWatchMessage {
  const message = JSON.parse(line) as {
    result?: {
      created?: boolean;
      canceled?: boolean;
      cancel_reason?: string;
      events?: { type?: string; kv?: { value?: string } }[];
    };
    error?: { message?: string; grpc_code?: number; http_code?: number } | string;
  };
  if (message.error !== undefined) {
    const e = message.error;
    return {
      created: false,
      failed: typeof e === "string" ? e : (e.message ?? JSON.stringify(e)),
      values: [],
    };
  }
  const result = message.result ?? {};
  return {
    created: result.created === true,
    failed: result.canceled === true ? `canceled: ${result.cancel_reason ?? ""}` : null,
    values: (result.events ?? []).map((e) => atob(e.kv?.value ?? "")),
  };
}

/**
 * The text of an HTTP/1.1 request with a body: the start line, `Host`, the given header fields
 * and `Content-Length`.
 *
 * @param method The method.
 * @param url The full URL.
 * @param headers Extra header fields.
 * @param body The body, or null for none.
 * @returns The request's bytes.
 */
export function httpRequestBytes(
  method: string,
  url: string,
  headers: Record<string, string>,
  body: string | null,
): Uint8Array {
  const u = new URL(url);
  const bodyBytes = body === null ? new Uint8Array(0) : new TextEncoder().encode(body);
  const lines = [`${method} ${u.pathname}${u.search} HTTP/1.1`, `host: ${u.host}`];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  if (body !== null) lines.push(`content-length: ${bodyBytes.length}`);
  const head = new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n");
  return _concat(head, bodyBytes);
}

function _parseHead(text: string): HttpHead {
  const [statusLine = "", ...fields] = text.split("\r\n");
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  if (match === null) throw new Error(`bad status line ${JSON.stringify(statusLine)}`);
  const headers = new Map<string, string>();
  for (const field of fields) {
    const colon = field.indexOf(":");
    if (colon <= 0) throw new Error(`bad header line ${JSON.stringify(field)}`);
    const name = field.slice(0, colon).trim().toLowerCase();
    const value = field.slice(colon + 1).trim();
    const before = headers.get(name);
    headers.set(name, before === undefined ? value : `${before}, ${value}`);
  }
  return { status: Number(match[1]), headers };
}

function _concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function _indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) {
      if (haystack[i + j] !== needle[j]) continue outer;
    }
    return i;
  }
  return -1;
}
