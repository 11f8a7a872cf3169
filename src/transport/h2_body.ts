/**
 * Bodies between web streams and `node:http2` streams, with back-pressure both ways: what the
 * HTTP/2 client ({@linkcode H2Client}) and the TLS peer server share.
 *
 * @module
 */

import type http2 from "node:http2";

/**
 * Writes a web stream into an HTTP/2 stream with back-pressure (waiting for `drain` whenever the
 * stream's buffer is full), then ends it. Rejects, after cancelling `source`, when the HTTP/2
 * stream closes first or `source` fails.
 *
 * @param source The bytes to send.
 * @param sink The HTTP/2 stream (a client request or a server response).
 */
export async function writeBody(
  source: ReadableStream<Uint8Array>,
  sink: http2.Http2Stream,
): Promise<void> {
  const reader = source.getReader();
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      if (sink.destroyed) throw new Error("the HTTP/2 stream was closed while sending");
      if (!sink.write(value)) {
        await new Promise<void>((resolve, reject) => {
          const onDrain = () => {
            sink.off("close", onClose);
            resolve();
          };
          const onClose = () => {
            sink.off("drain", onDrain);
            reject(new Error("the HTTP/2 stream was closed while sending"));
          };
          sink.once("drain", onDrain);
          sink.once("close", onClose);
        });
      }
    }
    sink.end();
  } catch (e) {
    await reader.cancel(e).catch(() => {});
    throw e;
  }
}

/** A request body read from an HTTP/2 stream; see {@linkcode readBody}. */
export interface Http2Body {
  /** The bytes as they arrive. */
  stream: ReadableStream<Uint8Array>;
  /**
   * `"reading"` until the body ended (`"ended"`), broke off (`"failed"`: the stream closed or was
   * reset before the end) or its reader cancelled it (`"cancelled"`).
   */
  state(): "reading" | "ended" | "failed" | "cancelled";
}

/**
 * Reads the readable side of an HTTP/2 stream as a web stream, pausing the HTTP/2 stream while
 * `highWaterMark` bytes wait unread, so that HTTP/2 flow control holds a fast sender back. A stream
 * that closes (or is reset) before its end errors the body: a cut upload never looks complete.
 * Cancelling stops reading; what arrives afterwards is dropped.
 *
 * @param source The HTTP/2 stream (a server's request).
 * @param highWaterMark Bytes buffered before the stream is paused. Default 256 KiB.
 */
export function readBody(source: http2.Http2Stream, highWaterMark = 256 << 10): Http2Body {
  let state: "reading" | "ended" | "failed" | "cancelled" = "reading";
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      const fail = (err: unknown) => {
        if (state !== "reading") return;
        state = "failed";
        c.error(err);
      };
      source.on("data", (chunk: Uint8Array) => {
        if (state !== "reading") return;
        c.enqueue(new Uint8Array(chunk));
        if ((c.desiredSize ?? 0) <= 0) source.pause();
      });
      const cut = () =>
        fail(
          new Error(
            `the HTTP/2 stream closed before the request body ended (code ${source.rstCode})`,
          ),
        );
      // A reset stream emits "aborted" and then (in Deno) "end": the body must fail, not end.
      source.on("aborted", cut);
      source.on("end", () => {
        if (state !== "reading") return;
        if (source.aborted) return cut();
        state = "ended";
        c.close();
      });
      source.on("error", fail);
      source.on("close", cut);
    },
    pull() {
      source.resume();
    },
    cancel() {
      if (state === "reading") state = "cancelled";
      source.pause();
    },
  }, new ByteLengthQueuingStrategy({ highWaterMark }));
  return { stream, state: () => state };
}
