/**
 * The peer port with mutual TLS: a `node:http2` secure server that asks every client for a
 * certificate signed by the cluster CA, adapted to the Fetch-style peer handler (a `Request` in,
 * a `Response` out) with the client's proven identity.
 *
 * Why not `Deno.serve`: it cannot ask for client certificates. `node:http2`'s
 * `createSecureServer({ requestCert: true, rejectUnauthorized: true })` can: a client without a
 * certificate, or with one the CA did not sign, fails the TLS handshake and never reaches the
 * handler. The identity of a connection is its certificate's subject CN, which is the node id.
 *
 * Request and response bodies stream both ways with back-pressure: an unread upload pauses the
 * HTTP/2 stream, so flow control holds the sender back (a snapshot upload's limits and timeouts
 * stay with the handler). A request whose body the handler did not read to the end (a refusal)
 * is closed with `RST_STREAM(NO_ERROR)` once the response is sent, which tells the client to stop
 * sending. A client that resets a stream fails the body's reads and aborts `req.signal`.
 *
 * The server is never shut down gracefully by the node: see {@linkcode TlsServer.close}.
 *
 * @module
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import http2 from "node:http2";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { NodeId } from "../raft/types.ts";
import { readBody, writeBody } from "./h2_body.ts";
import { SILENT_LOGGER, type TransportLogger } from "./transport.ts";

/** What the server knows about the connection a request arrived on. */
export interface PeerRequestInfo {
  /**
   * The node id the connection proved: with mutual TLS, the subject CN of the client certificate,
   * which chains to the cluster CA. `null` when the connection is not authenticated (cleartext
   * h2c), so that only what the request claims (its `x-raftkv-from` header) names the sender.
   */
  peer: NodeId | null;
}

/** A Fetch-style handler that also gets the connection's identity. */
export type PeerRequestHandler = (req: Request, info: PeerRequestInfo) => Promise<Response>;

/** Options for {@linkcode serveMutualTls}. */
export interface TlsServerOptions {
  /** The address to listen on, such as `"127.0.0.1"` or `"0.0.0.0"`. */
  hostname: string;
  /** The port; 0 picks a free one. */
  port: number;
  /** PEM certificate of this server (its CN is this node's id). */
  cert: string;
  /** PEM private key of `cert`. */
  key: string;
  /** PEM CA certificate(s) every client certificate must chain to. */
  ca: string;
  /**
   * How long a connection may take to complete its TLS handshake before it is dropped: a peer
   * does it in milliseconds, and a client that connects and stays silent would otherwise hold a
   * file descriptor for Node's default of two minutes. Default 10000.
   */
  handshakeTimeoutMs?: number;
  /** Called once the server listens. Default: nothing. */
  onListen?: (addr: { hostname: string; port: number }) => void;
  /**
   * Where refused handshakes, broken sessions and failed listens are reported (callers rate-limit
   * it). Default: {@linkcode SILENT_LOGGER}.
   */
  logger?: TransportLogger;
}

/** A running {@linkcode serveMutualTls} server. */
export interface TlsServer {
  /** Where it listens. */
  readonly addr: { hostname: string; port: number };
  /**
   * Replaces the server's certificate, key and the CA client certificates must chain to, for the
   * connections accepted from now on (the node's certificates were rotated); connections already
   * open keep theirs. Clients still need a certificate.
   *
   * @throws {Error} If the key or a certificate does not load, or the key is not the
   * certificate's; the ones in force stay in force.
   */
  setCredentials(files: { cert: string; key: string; ca: string }): void;
  /**
   * Stops listening and destroys every connection at once (for tests). A node does not call it:
   * a graceful close sends GOAWAY to the peers' clients, and Deno's nghttp2 can abort a process
   * that receives one while its requests are in flight (denoland/deno#36788).
   */
  close(): Promise<void>;
}

/** The default of {@linkcode TlsServerOptions.handshakeTimeoutMs}. */
const _HANDSHAKE_TIMEOUT_MS = 10_000;
/** How many bytes a client may send on one stream before this server reads them. */
const _STREAM_WINDOW_BYTES = 1 << 20;
/** How many bytes a client may send on all streams of a connection before they are read. */
const _SESSION_WINDOW_BYTES = 4 << 20;

/** Response headers that HTTP/2 forbids (connection-specific). */
const _HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);

/** An `:authority` safe to put in a URL: a host name or IP (IPv6 in brackets), maybe a port. */
const _AUTHORITY = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/**
 * Serves `handler` over HTTP/2 with TLS on `options.port`, asking every client for a certificate
 * chained to `options.ca` (see the module doc). When the listener fails after it started (out of
 * file descriptors, say) it is reported and listening starts again a second later.
 *
 * @example Usage
 * ```ts ignore
 * const server = await serveMutualTls(
 *   { hostname: "0.0.0.0", port: 6666, cert, key, ca },
 *   (req, info) => handler(req, info),
 * );
 * ```
 *
 * @param options Where to listen, the server's certificate and key, the CA of the clients.
 * @param handler Called for every request of an authenticated connection, with its identity.
 * @returns The server, once it listens.
 * @throws {Error} If it cannot listen (the address is in use, say) or the key or a certificate
 * does not load.
 */
export async function serveMutualTls(
  options: TlsServerOptions,
  handler: PeerRequestHandler,
): Promise<TlsServer> {
  const logger = options.logger ?? SILENT_LOGGER;
  const server = http2.createSecureServer({
    cert: options.cert,
    key: options.key,
    ca: options.ca,
    requestCert: true,
    rejectUnauthorized: true,
    allowHTTP1: false,
    handshakeTimeout: options.handshakeTimeoutMs ?? _HANDSHAKE_TIMEOUT_MS,
    // node:http2's 64 KiB default windows make a sender wait for a round trip every 64 KiB:
    // an 8 MiB batch of appends took about twice as long. A body still stops at these.
    settings: { initialWindowSize: _STREAM_WINDOW_BYTES },
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  // Connections still in their TLS handshake have no session yet: `close` destroys them too, or
  // the server would wait for them (and nothing else may keep the process's event loop alive).
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  const identities = new WeakMap<http2.Http2Session, NodeId | null>();
  let closing = false;
  server.on("session", (session) => {
    sessions.add(session);
    session.setLocalWindowSize(_SESSION_WINDOW_BYTES);
    session.on("close", () => sessions.delete(session));
    // A hostile or broken client must not take the process down with an unhandled error.
    session.on("error", (err) => logger.debug(`A peer connection failed: ${_describe(err)}`));
  });
  server.on("tlsClientError", (err) => {
    // No certificate, one the CA did not sign, no TLS at all, or no handshake in time. (Deno has
    // dropped the socket's address by now.)
    logger.warn(`Refused a TLS connection to the peer port: ${_describe(err)}`);
  });
  server.on("sessionError", (err) => logger.debug(`A peer connection failed: ${_describe(err)}`));
  server.on("stream", (stream, headers) => {
    stream.on("error", (err) => logger.debug(`A peer request failed: ${_describe(err)}`));
    const session = stream.session;
    if (session === undefined) return;
    let peer = identities.get(session);
    if (peer === undefined) {
      peer = _identity(session);
      identities.set(session, peer);
    }
    if (peer === null) {
      logger.warn("Refused a peer request: the client certificate names no node (subject CN)");
      _respondError(stream, 403, "The client certificate names no node (subject CN)");
      _closeAfterResponse(stream);
      return;
    }
    _serveStream(stream, headers, peer, handler, logger).catch((err) => {
      logger.warn(`Answering a peer request failed: ${_describe(err)}`);
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
  });

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once("error", onError);
      server.listen(options.port, options.hostname, () => {
        server.off("error", onError);
        resolve();
      });
    });
  await listen();
  const address = server.address();
  const addr = {
    hostname: options.hostname,
    port: typeof address === "object" && address !== null ? address.port : options.port,
  };
  let retry: ReturnType<typeof setTimeout> | undefined;
  server.on("error", (err) => {
    if (closing) return;
    logger.warn(`The TLS peer server failed (${_describe(err)})`);
    if (server.listening || retry !== undefined) return;
    const again = () => {
      retry = undefined;
      if (closing || server.listening) return;
      listen().then(
        () => logger.warn("The TLS peer server listens again"),
        (e) => {
          logger.warn(
            `The TLS peer server cannot listen yet (${_describe(e)}); trying again in 1 s`,
          );
          retry = setTimeout(again, 1000);
        },
      );
    };
    retry = setTimeout(again, 1000);
  });
  options.onListen?.(addr);
  return {
    addr,
    setCredentials(files) {
      // The runtime loads a new context lazily, at the next handshake: check the files first,
      // or a bad swap would refuse every new connection.
      const own = new X509Certificate(files.cert);
      new X509Certificate(files.ca);
      if (!own.checkPrivateKey(createPrivateKey(files.key))) {
        throw new Error("the private key does not belong to the certificate");
      }
      // Client certificates stay required: that is the server's setting, not its context's
      // (the tests check it after a swap).
      server.setSecureContext(files);
    },
    close() {
      closing = true;
      clearTimeout(retry);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) session.destroy();
      for (const socket of sockets) socket.destroy();
      return closed;
    },
  };
}

/** The node id a session's client certificate proves, or null if it names none. */
function _identity(session: http2.Http2Session): NodeId | null {
  const socket = session.socket as TLSSocket;
  if (!socket.authorized) return null;
  const name = socket.getPeerCertificate()?.subject?.CN;
  // A subject with several CNs gives an array: no single identity.
  return typeof name === "string" && name !== "" ? name : null;
}

/** Turns one HTTP/2 stream into a `Request`, runs the handler and writes its `Response` back. */
async function _serveStream(
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  peer: NodeId,
  handler: PeerRequestHandler,
  logger: TransportLogger,
): Promise<void> {
  const method = String(headers[":method"] ?? "GET");
  const path = String(headers[":path"] ?? "");
  const authority = String(headers[":authority"] ?? "");
  const hasBody = method !== "GET" && method !== "HEAD";
  const body = hasBody ? readBody(stream) : null;
  if (!hasBody) stream.resume();
  const abort = new AbortController();
  let answered = false;
  stream.on("close", () => {
    if (!answered) abort.abort(new DOMException("the peer reset the request", "AbortError"));
  });
  let req: Request;
  try {
    if (!path.startsWith("/")) throw new TypeError(`invalid path ${JSON.stringify(path)}`);
    const host = _AUTHORITY.test(authority) ? authority : "localhost";
    const requestHeaders = new Headers();
    for (const [name, value] of Object.entries(headers)) {
      if (name.startsWith(":") || value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) requestHeaders.append(name, v);
    }
    req = new Request(`https://${host}${path}`, {
      method,
      headers: requestHeaders,
      signal: abort.signal,
      ...(body === null ? {} : { body: body.stream, duplex: "half" }),
    });
  } catch (err) {
    await body?.stream.cancel().catch(() => {});
    _respondError(stream, 400, `Invalid request: ${_describe(err)}`);
    _stopUpload(stream, body);
    return;
  }
  let res: Response;
  try {
    res = await handler(req, { peer });
  } catch (err) {
    logger.warn(`A peer request failed: ${_describe(err)}`);
    res = Response.json({ error: "The request failed on this node" }, { status: 500 });
  }
  if (stream.destroyed || stream.closed) {
    answered = true;
    await res.body?.cancel().catch(() => {});
    return;
  }
  const out: http2.OutgoingHttpHeaders = { ":status": res.status };
  for (const [name, value] of res.headers) {
    if (!_HOP_BY_HOP.has(name)) out[name] = value;
  }
  const empty = res.body === null || method === "HEAD" || res.status === 204 ||
    res.status === 304;
  stream.respond(out, { endStream: empty });
  if (empty) {
    answered = true;
    await res.body?.cancel().catch(() => {});
  } else {
    try {
      await writeBody(res.body!, stream);
    } finally {
      answered = true;
    }
  }
  _stopUpload(stream, body);
}

/**
 * Once the response is sent, tells a client still sending a body nobody reads (it was refused,
 * or cancelled) to stop: RFC 9113 section 8.1 allows `RST_STREAM(NO_ERROR)` after a complete
 * response.
 */
function _stopUpload(
  stream: http2.ServerHttp2Stream,
  body: ReturnType<typeof readBody> | null,
): void {
  if (body === null || stream.destroyed) return;
  const state = body.state();
  if (state === "ended" || state === "failed") return;
  if (state === "reading" && body.stream.locked) return; // the handler reads on
  _closeAfterResponse(stream);
}

/** Resets the stream with `NO_ERROR` once the response is written, if the request goes on. */
function _closeAfterResponse(stream: http2.ServerHttp2Stream): void {
  const reset = () => {
    if (!stream.destroyed && !stream.closed) stream.close(http2.constants.NGHTTP2_NO_ERROR);
  };
  if (stream.writableFinished) reset();
  else stream.once("finish", reset);
}

function _respondError(stream: http2.ServerHttp2Stream, status: number, error: string): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  stream.respond({ ":status": status, "content-type": "application/json" });
  stream.end(JSON.stringify({ error }));
}

function _describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
