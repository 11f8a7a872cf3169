/**
 * A minimal fetch-shaped HTTP/2 client over `node:http2`: cleartext HTTP/2 with prior knowledge
 * for `http:` URLs, HTTP/2 over TLS for `https:` URLs (with a client certificate, for mutual
 * TLS), one multiplexed connection per origin, kept alive and reopened when it drops.
 *
 * Why not `fetch`: since Deno 2.8, `fetch` enforces the Fetch Standard's "bad port" list, which
 * includes 6665-6669 (IRC). raftkv's default peer ports are 6666-6668 (kept from the original
 * project and its cluster files), so `fetch` refuses to reach them. `node:http2` has no such
 * list and speaks the same protocol to the same `Deno.serve` handler.
 *
 * @module
 */

import http2 from "node:http2";
import type net from "node:net";
import tls from "node:tls";
import { writeBody } from "./h2_body.ts";
import { h2Response } from "../util/h2_response.ts";
import { connectH2Socket } from "../util/h2_socket.ts";

/** The TLS settings of an {@linkcode H2Client}, for `https:` URLs. */
export interface H2TlsOptions {
  /** PEM CA certificate(s) the server's certificate must chain to (instead of the system's). */
  ca: string;
  /** PEM client certificate presented to the server (mutual TLS). Default: none. */
  cert?: string;
  /** PEM private key of `cert`. Default: none. */
  key?: string;
  /**
   * The subject CN the server's certificate must carry when connecting to `origin` (such as
   * `https://10.0.0.2:6666`), on top of the usual host name check; `null` checks the host name
   * only. Default: the host name only.
   */
  expectedName?: (origin: string) => string | null;
}

/** Options for {@linkcode H2Client}. */
export interface H2ClientOptions {
  /** TLS settings for `https:` URLs. Default: none, and `https:` URLs use the system's CAs. */
  tls?: H2TlsOptions;
}

/** What {@linkcode H2Client.fetch} accepts. */
export interface H2RequestInit {
  /** The HTTP method. Default "GET". */
  method?: string;
  /** Request headers (lower-case names are sent as given). */
  headers?: Record<string, string>;
  /** The body: bytes, or a stream that is written with back-pressure. */
  body?: Uint8Array | ReadableStream<Uint8Array> | null;
  /** Aborting it cancels the HTTP/2 stream (the receiver sees the body fail, not end). */
  signal?: AbortSignal;
  /**
   * Instead of `body`: called with the HTTP/2 stream as soon as the request is sent, for a body
   * the caller writes (and ends) itself, such as a long-lived stream of frames. Default: none.
   */
  onStream?: (stream: http2.ClientHttp2Stream) => void;
}

/** A connection pool of HTTP/2 sessions, one per origin. */
export class H2Client {
  #sessions = new Map<string, http2.ClientHttp2Session>();
  #sockets = new Set<net.Socket>();
  #closed = false;
  #tls: H2TlsOptions | undefined;

  /** Creates a client; nothing connects before the first request. */
  constructor(options: H2ClientOptions = {}) {
    this.#tls = options.tls;
  }

  /**
   * Replaces the CA and the client certificate used by the connections opened from now on (the
   * node's certificates were rotated); connections already open keep theirs until they close.
   *
   * @param files The new PEM texts.
   * @throws {RangeError} If the client was created without TLS settings.
   */
  setTls(files: { ca: string; cert?: string; key?: string }): void {
    if (this.#tls === undefined) throw new RangeError("this client was created without TLS");
    const { expectedName } = this.#tls;
    this.#tls = { ...files, ...(expectedName === undefined ? {} : { expectedName }) };
  }

  /**
   * Sends one request and resolves with the response once its headers arrive; the body streams.
   * Rejects on connection errors, stream resets and aborts.
   */
  fetch(url: string, init: H2RequestInit = {}): Promise<Response> {
    if (this.#closed) return Promise.reject(new Error("the HTTP/2 client is closed"));
    const target = new URL(url);
    const signal = init.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    let req: http2.ClientHttp2Stream;
    try {
      req = this.#session(target.origin).request({
        ":method": init.method ?? "GET",
        ":path": target.pathname + target.search,
        ...init.headers,
      });
    } catch (e) {
      return Promise.reject(e);
    }
    const answer = h2Response(req, signal);
    const body = init.body;
    if (init.onStream !== undefined) {
      init.onStream(req);
    } else if (!body) {
      req.end();
    } else if (body instanceof Uint8Array) {
      req.end(body);
    } else {
      // A body that cannot be sent cancels the request, and its error is the answer's.
      const unsent = writeBody(body, req).then(() => new Promise<never>(() => {}), (e) => {
        req.close(http2.constants.NGHTTP2_CANCEL);
        throw e;
      });
      return Promise.race([answer, unsent]);
    }
    return answer;
  }

  /**
   * Closes every connection, without GOAWAY; later requests are refused.
   *
   * The sockets close first: a session destroyed while its socket is open says GOAWAY, and Deno's
   * nghttp2 can abort a process whose `node:http2` server (the TLS peer server) receives one
   * while requests are in flight (denoland/deno#36788), so one node's graceful stop took a peer
   * down. A closed connection is handled.
   */
  close(): void {
    this.#closed = true;
    for (const socket of this.#sockets) socket.destroy();
    this.#sockets.clear();
    for (const s of this.#sessions.values()) s.destroy();
    this.#sessions.clear();
  }

  #session(origin: string): http2.ClientHttp2Session {
    const existing = this.#sessions.get(origin);
    if (existing && !existing.closed && !existing.destroyed) return existing;
    const https = origin.startsWith("https:");
    const tlsOptions = https ? this.#tlsOptions(origin) : {};
    // The client opens the socket itself, so that close() can drop it before the session.
    const createConnection = () => {
      const socket = connectH2Socket(new URL(origin), https ? tlsOptions : null);
      this.#sockets.add(socket);
      socket.once("close", () => this.#sockets.delete(socket));
      return socket;
    };
    const session = http2.connect(origin, { ...tlsOptions, createConnection });
    // Errors reach the pending requests; the session is dropped so the next request reconnects.
    session.on("error", () => {});
    const forget = () => {
      if (this.#sessions.get(origin) === session) this.#sessions.delete(origin);
    };
    session.on("close", forget);
    session.on("goaway", forget);
    session.on("error", forget);
    this.#sessions.set(origin, session);
    return session;
  }

  #tlsOptions(origin: string): tls.ConnectionOptions {
    const options = this.#tls;
    if (options === undefined) return {};
    const wanted = options.expectedName?.(origin) ?? null;
    return {
      ca: options.ca,
      ...(options.cert === undefined ? {} : { cert: options.cert }),
      ...(options.key === undefined ? {} : { key: options.key }),
      checkServerIdentity: (host, cert) => {
        const wrongHost = tls.checkServerIdentity(host, cert);
        if (wrongHost !== undefined) return wrongHost;
        const name = cert.subject?.CN;
        if (wanted !== null && name !== wanted) {
          return new Error(
            `the server at ${origin} presented a certificate for ${JSON.stringify(name)}, ` +
              `not for ${JSON.stringify(wanted)}`,
          );
        }
        return undefined;
      },
    };
  }
}
