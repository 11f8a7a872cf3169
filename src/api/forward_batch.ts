/**
 * Batched forwarding: many client writes a follower forwards to the leader at about the same time
 * travel as one HTTP/2 request to {@linkcode FORWARD_BATCH_PATH}, and their answers come back on
 * its response, each as soon as the leader has it. The leader serves every request of a batch
 * exactly as it serves a request forwarded on its own (same checks, same answer), all in the same
 * event-loop turn, so their proposals reach the log together (one group commit).
 *
 * Why: a forward of its own costs an HTTP/2 stream on the follower and an HTTP request on the
 * leader (headers, frames, a `Request` and `Response` through the server), which under load cost
 * more than the write itself.
 *
 * The request body is a sequence of frames, one per forwarded request:
 * `u32 length | u32 meta length | meta JSON | body bytes`, where the meta is
 * `{"m": method, "p": path and query below "/forward", "h": headers, "b": has a body}`. The
 * answer (200, `application/x-raftkv-forward-batch`) is a sequence of frames in the order answers
 * are ready: `u32 length | u32 item | u16 status | u32 meta length | headers JSON | body bytes`,
 * where `item` is the request's position in the batch. All integers are big-endian. A batch
 * answered otherwise (a leader that does not know the path answers 404) was not served at all.
 *
 * @module
 */

import { concatBytes, readBodyWithin } from "../util/body.ts";

/** Where a follower sends a batch of forwarded requests on the leader's peer port. */
export const FORWARD_BATCH_PATH = "/forward/batch";

/** The `Content-Type` of a batch and of its answer. */
export const FORWARD_BATCH_TYPE = "application/x-raftkv-forward-batch";

/** Most requests in one batch; a follower with more pending sends several. */
export const MAX_BATCH_ITEMS = 256;

/**
 * A follower starts a new batch once one holds this many body bytes, and sends a request with a
 * larger body than {@linkcode MAX_BATCHED_BODY_BYTES} on its own.
 */
export const BATCH_BODY_BYTES = 1 << 20;

/** The largest body of a request a follower puts in a batch. */
export const MAX_BATCHED_BODY_BYTES = 64 << 10;

/**
 * The largest batch a leader accepts: well above what a follower sends (at most
 * {@linkcode BATCH_BODY_BYTES} plus one request's body and the requests' headers).
 */
export const MAX_BATCH_BYTES = 16 << 20;

/** One forwarded request in a batch. */
export interface BatchItem {
  /** The HTTP method. */
  method: string;
  /** The path and query below the forward prefix, such as `/v1/data/a?x=1`. */
  path: string;
  /** The headers to send (lower-case names). */
  headers: Record<string, string>;
  /** The body bytes, or `null` for a request without one. */
  body: Uint8Array<ArrayBuffer> | null;
}

/** What {@linkcode serveBatch} tells the server of each request about the batch it came in. */
export interface BatchContext {
  /** The origin of the batch's URL (the leader's peer URL, as the follower asked for it). */
  origin: string;
  /** Aborts once the follower gave the batch up. */
  signal: AbortSignal;
  /** The authenticated sending member, or `null` (see {@linkcode serveBatch}). */
  sender: string | null;
}

/** One answer in a batch's response. */
export interface BatchAnswer {
  /** The position of its request in the batch. */
  item: number;
  /** The HTTP status. */
  status: number;
  /** The answer's headers. */
  headers: Record<string, string>;
  /** The answer's body bytes (empty when it has none). */
  body: Uint8Array<ArrayBuffer>;
}

const _encoder = new TextEncoder();
const _decoder = new TextDecoder();

/**
 * Encodes the requests of a batch as its request body.
 *
 * @param items The requests, in order.
 * @returns The body.
 */
export function encodeBatch(items: readonly BatchItem[]): Uint8Array<ArrayBuffer> {
  const parts: { meta: Uint8Array; body: Uint8Array | null }[] = items.map((it) => ({
    meta: _encoder.encode(
      JSON.stringify({ m: it.method, p: it.path, h: it.headers, b: it.body !== null }),
    ),
    body: it.body,
  }));
  let total = 0;
  for (const p of parts) total += 8 + p.meta.byteLength + (p.body?.byteLength ?? 0);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const p of parts) {
    const bodyBytes = p.body?.byteLength ?? 0;
    view.setUint32(at, 4 + p.meta.byteLength + bodyBytes);
    view.setUint32(at + 4, p.meta.byteLength);
    out.set(p.meta, at + 8);
    if (p.body !== null) out.set(p.body, at + 8 + p.meta.byteLength);
    at += 8 + p.meta.byteLength + bodyBytes;
  }
  return out;
}

/**
 * Decodes a batch's request body.
 *
 * @param bytes The body.
 * @returns The requests, in order.
 * @throws {RangeError} If the bytes are not a well-formed batch, or hold more than
 * {@linkcode MAX_BATCH_ITEMS} requests.
 */
export function decodeBatch(bytes: Uint8Array): BatchItem[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const items: BatchItem[] = [];
  let at = 0;
  while (at < bytes.byteLength) {
    if (items.length >= MAX_BATCH_ITEMS) {
      throw new RangeError(`a batch holds at most ${MAX_BATCH_ITEMS} requests`);
    }
    if (at + 8 > bytes.byteLength) throw new RangeError(`a batch frame is cut at byte ${at}`);
    const length = view.getUint32(at);
    const metaLength = view.getUint32(at + 4);
    const end = at + 4 + length;
    if (length < 4 || metaLength > length - 4 || end > bytes.byteLength) {
      throw new RangeError(`the batch frame at byte ${at} has a wrong length`);
    }
    const metaEnd = at + 8 + metaLength;
    let meta: unknown;
    try {
      meta = JSON.parse(_decoder.decode(bytes.subarray(at + 8, metaEnd)));
    } catch {
      throw new RangeError(`the batch frame at byte ${at} has no JSON meta`);
    }
    items.push(_item(meta, metaEnd === end ? null : bytes.slice(metaEnd, end), at));
    at = end;
  }
  return items;
}

function _item(meta: unknown, body: Uint8Array<ArrayBuffer> | null, at: number): BatchItem {
  const m = meta as { m?: unknown; p?: unknown; h?: unknown; b?: unknown } | null;
  const headers = m?.h;
  if (
    m === null || typeof m !== "object" || typeof m.m !== "string" || typeof m.p !== "string" ||
    !m.p.startsWith("/") || typeof m.b !== "boolean" || typeof headers !== "object" ||
    headers === null || Array.isArray(headers) ||
    Object.values(headers).some((v) => typeof v !== "string")
  ) {
    throw new RangeError(`the batch frame at byte ${at} has a malformed meta`);
  }
  return {
    method: m.m,
    path: m.p,
    headers: headers as Record<string, string>,
    body: m.b ? (body ?? new Uint8Array(0)) : null,
  };
}

/**
 * Encodes one answer of a batch's response.
 *
 * @param answer The answer.
 * @returns Its frame.
 */
export function encodeAnswer(answer: BatchAnswer): Uint8Array<ArrayBuffer> {
  const meta = _encoder.encode(JSON.stringify(answer.headers));
  const out = new Uint8Array(14 + meta.byteLength + answer.body.byteLength);
  const view = new DataView(out.buffer);
  view.setUint32(0, out.byteLength - 4);
  view.setUint32(4, answer.item);
  view.setUint16(8, answer.status);
  view.setUint32(10, meta.byteLength);
  out.set(meta, 14);
  out.set(answer.body, 14 + meta.byteLength);
  return out;
}

/**
 * Reads answer frames from the chunks of a batch's response as they arrive.
 *
 * @example Usage
 * ```ts
 * import { AnswerReader, encodeAnswer } from "./forward_batch.ts";
 *
 * const reader = new AnswerReader();
 * const frame = encodeAnswer({ item: 0, status: 204, headers: {}, body: new Uint8Array(0) });
 * const [answer] = reader.push(frame);
 * console.log(answer?.status); // 204
 * ```
 */
export class AnswerReader {
  #buffer = new Uint8Array(0);

  /**
   * Takes the next chunk and returns the answers it completes.
   *
   * @param chunk The bytes received.
   * @returns The complete answers, in order.
   * @throws {RangeError} If a frame is malformed.
   */
  push(chunk: Uint8Array): BatchAnswer[] {
    let buf: Uint8Array;
    if (this.#buffer.byteLength === 0) {
      buf = chunk;
    } else {
      buf = new Uint8Array(this.#buffer.byteLength + chunk.byteLength);
      buf.set(this.#buffer);
      buf.set(chunk, this.#buffer.byteLength);
    }
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const out: BatchAnswer[] = [];
    let at = 0;
    while (at + 4 <= buf.byteLength) {
      const length = view.getUint32(at);
      if (at + 4 + length > buf.byteLength) break;
      if (length < 10) throw new RangeError(`an answer frame of ${length} bytes is too short`);
      const metaLength = view.getUint32(at + 10);
      if (metaLength > length - 10) throw new RangeError("an answer frame has a wrong length");
      const metaEnd = at + 14 + metaLength;
      let headers: unknown;
      try {
        headers = JSON.parse(_decoder.decode(buf.subarray(at + 14, metaEnd)));
      } catch {
        throw new RangeError("an answer frame has no JSON headers");
      }
      if (typeof headers !== "object" || headers === null || Array.isArray(headers)) {
        throw new RangeError("an answer frame's headers are not an object");
      }
      out.push({
        item: view.getUint32(at + 4),
        status: view.getUint16(at + 8),
        headers: headers as Record<string, string>,
        body: buf.slice(metaEnd, at + 4 + length),
      });
      at += 4 + length;
    }
    this.#buffer = buf.slice(at);
    return out;
  }

  /** Whether bytes of an incomplete frame are waiting for more. */
  get pending(): boolean {
    return this.#buffer.byteLength > 0;
  }
}

/**
 * Serves a batch on the leader: decodes it, hands every request to `serveOne` (which serves it
 * as a request forwarded on its own) in the same turn, and sends each answer back as it is ready:
 * the answers ready together with the first as one body, any later one streamed after them.
 *
 * @param req The batch request as the peer server got it.
 * @param sender The authenticated sending member, passed on to `serveOne`.
 * @param serveOne Serves one forwarded request of the batch, given by its parts.
 * @param maxBytes The largest batch body accepted. Default {@linkcode MAX_BATCH_BYTES}.
 * @returns The answers (200), or 400, 405 or 413 when the batch itself is refused.
 */
export async function serveBatch(
  req: Request,
  sender: string | null,
  serveOne: (item: BatchItem, batch: BatchContext) => Promise<Response>,
  maxBytes: number = MAX_BATCH_BYTES,
): Promise<Response> {
  const refuse = (status: number, error: string, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify({ error }), {
      status,
      headers: { "content-type": "application/json", ...headers },
    });
  if (req.method !== "POST") {
    return refuse(405, `method ${req.method} is not allowed on a batch`, { allow: "POST" });
  }
  let items: BatchItem[];
  try {
    const bytes = await readBodyWithin(req, maxBytes);
    if (bytes === null) return refuse(413, `a batch is at most ${maxBytes} bytes`);
    items = decodeBatch(bytes);
  } catch (err) {
    return refuse(400, `malformed batch: ${err instanceof Error ? err.message : String(err)}`);
  }
  const origin = new URL(req.url).origin;
  const answers = items.map(async (item, index): Promise<Uint8Array> => {
    try {
      const res = await serveOne(item, { origin, signal: req.signal, sender });
      const headers: Record<string, string> = {};
      res.headers.forEach((value, name) => headers[name] = value);
      const body = new Uint8Array(await res.arrayBuffer());
      return encodeAnswer({ item: index, status: res.status, headers, body });
    } catch (err) {
      const error = `internal error: ${err instanceof Error ? err.message : String(err)}`;
      return encodeAnswer({
        item: index,
        status: 500,
        headers: { "content-type": "application/json" },
        body: _encoder.encode(JSON.stringify({ error })),
      });
    }
  });
  // Answers ready by the time the first one is go out as one plain body (always so for a batch
  // of one): a streamed body costs the leader more turns and the answer a later flush.
  const ready: Uint8Array[] = [];
  let left = answers.length;
  let controller: ReadableStreamDefaultController<Uint8Array> | null = null;
  const first = Promise.withResolvers<void>();
  if (left === 0) first.resolve();
  for (const answer of answers) {
    // Never rejects: a failure is a 500 answer of its own.
    void answer.then((frame) => {
      left--;
      if (controller === null) {
        ready.push(frame);
        first.resolve();
        return;
      }
      try {
        controller.enqueue(frame);
        if (left === 0) controller.close();
      } catch { /* the follower went away */ }
    });
  }
  await first.promise;
  if (left === 0) {
    return new Response(concatBytes(ready), {
      status: 200,
      headers: { "content-type": FORWARD_BATCH_TYPE },
    });
  }
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      for (const frame of ready) c.enqueue(frame);
    },
  });
  return new Response(body, { status: 200, headers: { "content-type": FORWARD_BATCH_TYPE } });
}
