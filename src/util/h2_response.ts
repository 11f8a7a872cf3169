/**
 * The answer on a `node:http2` client stream as a web `Response`: what the peer transport's
 * HTTP/2 client and the follower's forwarder both need.
 *
 * @module
 */

import http2 from "node:http2";

/**
 * The headers of an HTTP/2 answer without its pseudo-headers (`:status`), a repeated header
 * joined with `, `.
 *
 * @param headers The headers as `node:http2` gives them.
 * @returns The headers.
 */
export function responseHeaders(headers: http2.IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const [name, value] of Object.entries(headers)) {
    if (!name.startsWith(":") && value !== undefined) {
      out.set(name, Array.isArray(value) ? value.join(", ") : String(value));
    }
  }
  return out;
}

/**
 * Resolves with the answer on `stream` once its headers arrive; its body streams after that.
 * Call it before sending the request's body, so that no event is missed.
 *
 * - Rejects when the stream fails or closes before the headers, with
 *   `HTTP/2 stream closed before a response (code N)`.
 * - A body that the connection cuts off (the server died, the link was cut) errors with
 *   `HTTP/2 stream closed before the response body ended (code N)`: Deno ends a client stream
 *   also when its connection breaks, with a reset code set, and that body is cut, not done.
 * - Once `signal` aborts, the stream is cancelled and the answer, or the read of its body, fails
 *   with the signal's reason. Cancelling the body cancels the stream.
 *
 * @example Usage
 * ```ts ignore
 * import http2 from "node:http2";
 * import { h2Response } from "./h2_response.ts";
 *
 * const session = http2.connect("http://127.0.0.1:6666");
 * const stream = session.request({ ":method": "GET", ":path": "/health" });
 * const res = await h2Response(stream, AbortSignal.timeout(1000));
 * console.log(res.status, await res.text());
 * ```
 *
 * @param stream The request's stream, its body not yet sent.
 * @param signal Aborts the exchange.
 * @returns The answer.
 */
export function h2Response(
  stream: http2.ClientHttp2Stream,
  signal?: AbortSignal,
): Promise<Response> {
  return new Promise<Response>((resolve, reject) => {
    /** Whether the promise has settled. */
    let settled = false;
    let controller: ReadableStreamDefaultController<Uint8Array> | null = null;
    /** Whether the answer's body ended, failed or was cancelled. */
    let bodyDone = false;
    const done = () => signal?.removeEventListener("abort", onAbort);
    const fail = (e: unknown) => {
      done();
      if (!settled) {
        settled = true;
        reject(signal?.aborted ? signal.reason : e);
      } else if (!bodyDone) {
        bodyDone = true;
        try {
          controller?.error(e);
        } catch { /* already closed */ }
      }
    };
    const closed = () =>
      new Error(
        settled
          ? `HTTP/2 stream closed before the response body ended (code ${stream.rstCode})`
          : `HTTP/2 stream closed before a response (code ${stream.rstCode})`,
      );
    const onAbort = () => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      fail(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    stream.on("error", fail);
    // A stream can close without an error event (connection closed or refused), and after the
    // headers without an end event (a HEAD answer, a reset): never leave the answer, or a read of
    // its body, hanging.
    stream.on("close", () => fail(closed()));
    stream.on("response", (headers) => {
      const status = Number(headers[":status"]);
      const nullBody = status === 204 || status === 304;
      const body = nullBody ? null : new ReadableStream<Uint8Array>({
        start(c) {
          controller = c;
          stream.on("data", (chunk: Uint8Array) => c.enqueue(new Uint8Array(chunk)));
          stream.on("end", () => {
            if (bodyDone) return;
            if (
              stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR
            ) {
              fail(closed());
              return;
            }
            bodyDone = true;
            done();
            try {
              c.close();
            } catch { /* already errored */ }
          });
        },
        cancel() {
          bodyDone = true;
          done();
          stream.close(http2.constants.NGHTTP2_CANCEL);
        },
      });
      if (nullBody) {
        bodyDone = true;
        done();
        stream.resume();
      }
      settled = true;
      resolve(new Response(body, { status, headers: responseHeaders(headers) }));
    });
  });
}
