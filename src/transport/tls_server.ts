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
 * stay with the handler). A request of a member whose body the handler did not read to the end (a
 * refusal) is closed with `RST_STREAM(NO_ERROR)` once the response is sent, which tells the client
 * to stop sending; a request that already ended is not reset. A client that resets a stream fails
 * the body's reads and aborts `req.signal`.
 *
 * A connection whose certificate names no node, or names one that is not a member (see
 * {@linkcode TlsServerOptions.isMember}), is ended once the answer to its request is written
 * (GOAWAY, then closed): its answer (a 403, or a 410 for a removed member) still arrives, but no
 * stream of it is reset one by one. Deno's nghttp2 binding can abort the whole process (a failed
 * assertion in `find_stream_on_goaway_func`, `free(): invalid pointer`, SIGSEGV) when a client
 * that was answered closes its connection with GOAWAY while the server still tears its streams
 * down; a certificate from the cluster CA that names no member could do it at will by opening
 * and closing connections. Ending such connections first, on the server's side, avoids it.
 *
 * The listening socket is watched: Deno's `node:net` server stops accepting for good, without an
 * `error` event, after one `accept` fails for lack of file descriptors. Every
 * {@linkcode TlsServerOptions.acceptCheckMs} the server connects to its own port; a connection
 * not accepted in time means the listener is dead, and it is closed and listens again (the
 * connections already open go on).
 *
 * The server is never shut down gracefully by the node: see {@linkcode TlsServer.close}.
 *
 * @module
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import http2 from "node:http2";
import net, { type Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { NodeId } from "../raft/types.ts";
import { type Http2Body, readBody, writeBody } from "./h2_body.ts";
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
   * Whether the node id a connection proved is a member of the cluster now. Once a request of a
   * connection whose identity is not one is answered (a 403, or a 410 for a removed member), the
   * connection is ended (see the module doc). Default: every identity is a member.
   */
  isMember?: (peer: NodeId) => boolean;
  /**
   * Called once for every connection or request the server refuses itself, before the handler:
   * `handshake` for a connection refused at its TLS handshake (no certificate, one the CA did not
   * sign, no TLS, none in time), `identity` for a client certificate that names no node (403),
   * `malformed` for a request that does not make a `Request` (400). The handler's own refusals (a non-member's 403 or 410 among them) are the
   * handler's to count. A node passes the `onRefusal` its peer handler has
   * (`raftkv_peer_refusals_total`). Default: nothing.
   */
  onRefusal?: (reason: "identity" | "malformed" | "handshake") => void;
  /**
   * How often the server checks that its listener still accepts connections (it connects to its
   * own port), in milliseconds; a check waits as long (at least a second, more if the event loop
   * stalls) for its connection to be accepted. A listener that does not accept is closed and
   * listens again. 0 turns the check off. Default 2000.
   */
  acceptCheckMs?: number;
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
/** The default of {@linkcode TlsServerOptions.acceptCheckMs}. */
const _ACCEPT_CHECK_MS = 2_000;
/** The least time an accept check waits for its connection to be accepted. */
const _MIN_ACCEPT_DEADLINE_MS = 1_000;
/**
 * How long connections accepted while a check does not know its own connection's port yet are
 * held back (the check's connection must not reach the TLS handshake, which would report it).
 */
const _HOLD_MS = 250;
/** How long a connection that is being ended may take to finish its streams before it is closed. */
const _END_GRACE_MS = 2_000;
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
  const isMember = options.isMember ?? (() => true);
  /** Counts a refusal of the server's own; a callback that throws is logged. */
  const refused = (reason: "identity" | "malformed" | "handshake") => {
    try {
      options.onRefusal?.(reason);
    } catch (err) {
      logger.warn(`onRefusal threw: ${_describe(err)}`);
    }
  };
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
  // The HTTP/2 server never listens itself: a plain TCP listener hands it the connections. Its
  // own `close()` would send GOAWAY to every session, and the listener must be closed and opened
  // again while the sessions go on (see `relisten`).
  const listener = net.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  // Connections still in their TLS handshake have no session yet: `close` destroys them too, or
  // the server would wait for them (and nothing else may keep the process's event loop alive).
  const sockets = new Set<Socket>();
  const identities = new WeakMap<http2.Http2Session, NodeId | null>();
  /** Sessions being ended (GOAWAY sent), with the timer that closes them for good. */
  const ending = new Map<http2.ServerHttp2Session, ReturnType<typeof setTimeout>>();
  let closing = false;
  server.on("session", (session) => {
    sessions.add(session);
    session.setLocalWindowSize(_SESSION_WINDOW_BYTES);
    session.on("close", () => {
      sessions.delete(session);
      clearTimeout(ending.get(session));
      ending.delete(session);
    });
    // A hostile or broken client must not take the process down with an unhandled error.
    session.on("error", (err) => logger.debug(`A peer connection failed: ${_describe(err)}`));
  });
  server.on("tlsClientError", (err) => {
    // No certificate, one the CA did not sign, no TLS at all, or no handshake in time. (Deno has
    // dropped the socket's address by now.)
    logger.warn(`Refused a TLS connection to the peer port: ${_describe(err)}`);
    refused("handshake");
  });
  server.on("sessionError", (err) => logger.debug(`A peer connection failed: ${_describe(err)}`));

  /**
   * Ends `stream`'s connection once its answer is written: GOAWAY (the streams already open
   * finish), then closed for good after a grace period.
   */
  const endSession = (stream: http2.ServerHttp2Stream) => {
    const session = stream.session as http2.ServerHttp2Session | undefined;
    if (session === undefined) return;
    const end = () => {
      if (ending.has(session) || session.destroyed) return;
      const timer = setTimeout(() => {
        ending.delete(session);
        if (!session.destroyed) session.destroy();
      }, _END_GRACE_MS);
      _unref(timer);
      ending.set(session, timer);
      if (!session.closed) session.close();
    };
    if (stream.writableFinished || stream.destroyed) end();
    else {
      stream.once("finish", end);
      stream.once("close", end);
    }
  };
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
      refused("identity");
      _respondError(stream, 403, "The client certificate names no node (subject CN)");
      endSession(stream);
      return;
    }
    const proven = peer;
    const answered = (body: Http2Body | null) => {
      if (_isMember(isMember, proven, logger)) _stopUpload(stream, body);
      else endSession(stream);
    };
    _serveStream(stream, headers, proven, handler, logger, answered, refused).catch((err) => {
      logger.warn(`Answering a peer request failed: ${_describe(err)}`);
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
  });

  /** Hands a connection the listener accepted to the HTTP/2 server. */
  const serve = (socket: Socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    server.emit("connection", socket);
  };

  // The accept check (see the module doc).
  const checkEveryMs = options.acceptCheckMs ?? _ACCEPT_CHECK_MS;
  /** How long a check waits for its connection to be accepted. */
  const deadlineMs = Math.max(checkEveryMs, _MIN_ACCEPT_DEADLINE_MS);
  /** A check under way: its own connection, and the connections held back until it knows it. */
  let check: _AcceptCheck | null = null as _AcceptCheck | null;
  let checkTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * What the checks said since the last one that succeeded (each is logged once): the process
   * ran out of file descriptors, the listener did not accept.
   */
  const trouble = new Set<"descriptors" | "dead">();

  listener.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // A connection the client resets at once must not take the process down.
    socket.on("error", () => {});
    const current = check;
    if (current !== null) {
      if (current.self === null) {
        if (current.holding) {
          current.held.push(socket);
          return;
        }
        current.seen.push(_remote(socket));
      } else if (_isFrom(socket, current.self)) {
        socket.destroy();
        current.done(null);
        return;
      }
    }
    serve(socket);
  });

  const runCheck = () => {
    checkTimer = undefined;
    if (closing || check !== null) return;
    if (relistening) return scheduleCheck();
    const target = _checkAddress(listener.address(), options.hostname);
    let client: Socket;
    try {
      client = net.connect({ host: target.host, port: target.port });
    } catch (err) {
      failed(`no socket for the check: ${_describe(err)}`, _outOfDescriptors(err));
      return scheduleCheck();
    }
    client.unref();
    const timers: ReturnType<typeof setTimeout>[] = [];
    /**
     * Calls `fn` in `ms`, or later if the event loop stalls: a deadline that a stalled loop made
     * late runs again, so that connections accepted meanwhile are seen before it counts.
     */
    const after = (ms: number, fn: () => void) => {
      const due = performance.now() + ms;
      const timer = setTimeout(() => {
        if (performance.now() - due > ms / 2) after(ms, fn);
        else fn();
      }, ms);
      _unref(timer);
      timers.push(timer);
    };
    const releaseHeld = (current: _AcceptCheck) => {
      for (const socket of current.held.splice(0)) serve(socket);
    };
    const current: _AcceptCheck = {
      self: null,
      holding: true,
      held: [],
      seen: [],
      done(failure, outOfDescriptors = false) {
        if (check !== current) return;
        check = null;
        for (const timer of timers) clearTimeout(timer);
        client.destroy();
        releaseHeld(current);
        if (closing) return;
        if (failure === null) {
          if (trouble.size > 0) logger.warn("The TLS peer server accepts connections again");
          trouble.clear();
        } else {
          failed(failure, outOfDescriptors);
        }
        scheduleCheck();
      },
    };
    check = current;
    client.on("error", (err) => {
      const out = _outOfDescriptors(err);
      current.done(
        out
          ? `no socket for the check: ${_describe(err)}`
          : `connecting to its own port failed: ${_describe(err)}`,
        out,
      );
    });
    client.on("connect", () => {
      if (check !== current) return;
      current.self = {
        address: _plainAddress(client.localAddress ?? ""),
        port: client.localPort ?? -1,
      };
      const self = current.self;
      const own = current.held.findIndex((socket) => _isFrom(socket, self));
      if (own !== -1) {
        current.held.splice(own, 1)[0]!.destroy();
        return current.done(null);
      }
      // Held too long, it went on to the TLS handshake (which reports it): still accepted.
      if (current.seen.some((s) => s.port === self.port && s.address === self.address)) {
        return current.done(null);
      }
      releaseHeld(current);
      after(
        deadlineMs,
        () => current.done(`a connection was not accepted in ${deadlineMs} ms`),
      );
    });
    // Connections that arrive before the check knows its own port wait at most this long.
    after(_HOLD_MS, () => {
      current.holding = false;
      releaseHeld(current);
    });
    // Connecting itself takes long only when the listener's queue is full: it does not accept.
    after(2 * deadlineMs, () => {
      if (current.self === null) current.done(`no connection in ${2 * deadlineMs} ms`);
    });
  };
  const scheduleCheck = () => {
    if (closing || checkEveryMs <= 0 || checkTimer !== undefined) return;
    checkTimer = setTimeout(runCheck, checkEveryMs);
    _unref(checkTimer);
  };
  /**
   * A check failed: says so (once until a check succeeds again), and listens again unless the
   * check could not tell (it found no descriptor for its own connection).
   */
  const failed = (why: string, outOfDescriptors: boolean) => {
    const kind = outOfDescriptors ? "descriptors" : "dead";
    if (!trouble.has(kind)) {
      trouble.add(kind);
      logger.warn(
        outOfDescriptors
          ? `The TLS peer server cannot check its listener (${why}): out of file descriptors; ` +
            "it listens again if need be once some are free"
          : `The TLS peer server stopped accepting connections (${why}); listening again`,
      );
    }
    if (!outOfDescriptors) relisten();
  };

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      listener.once("error", onError);
      listener.listen(port, options.hostname, () => {
        listener.off("error", onError);
        resolve();
      });
    });
  /** The port to listen on: after the first listen, the one it got (`options.port` may be 0). */
  let port = options.port;
  await listen();
  const address = listener.address();
  if (typeof address === "object" && address !== null) port = address.port;
  const addr = { hostname: options.hostname, port };

  let retry: ReturnType<typeof setTimeout> | undefined;
  let relistening = false;
  /**
   * Closes the listening socket (the connections it accepted go on) and listens again after
   * `delayMs`, then every second until it can. Says when it listens again after an error or a
   * failed attempt (a failed check said what it does already).
   */
  const relisten = (delayMs = 0) => {
    if (closing || relistening) return;
    relistening = true;
    if (listener.listening) listener.close();
    let quiet = delayMs === 0;
    const again = () => {
      retry = undefined;
      if (closing) return;
      listen().then(
        () => {
          relistening = false;
          if (!quiet) logger.warn("The TLS peer server listens again");
        },
        (e) => {
          quiet = false;
          logger.warn(
            `The TLS peer server cannot listen yet (${_describe(e)}); trying again in 1 s`,
          );
          retry = setTimeout(again, 1000);
        },
      );
    };
    retry = setTimeout(again, delayMs);
  };
  listener.on("error", (err) => {
    if (closing || relistening) return;
    logger.warn(`The TLS peer server failed (${_describe(err)})`);
    if (!listener.listening) relisten(1000);
  });
  scheduleCheck();
  options.onListen?.(addr);
  let closed: Promise<void> | undefined;
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
      if (closed !== undefined) return closed;
      closing = true;
      clearTimeout(retry);
      clearTimeout(checkTimer);
      check?.done("closing");
      closed = new Promise<void>((resolve) => listener.close(() => resolve()));
      for (const timer of ending.values()) clearTimeout(timer);
      for (const session of sessions) session.destroy();
      for (const socket of sockets) socket.destroy();
      return closed;
    },
  };
}

/** An accept check under way (see {@linkcode TlsServerOptions.acceptCheckMs}). */
interface _AcceptCheck {
  /** The address of the check's own connection, once it is connected. */
  self: { address: string; port: number } | null;
  /** Whether connections that arrive before `self` is known wait (briefly) in `held`. */
  holding: boolean;
  /** Connections held back until the check knows its own. */
  held: Socket[];
  /** Where the connections handed on while `self` was not known came from. */
  seen: { address: string; port: number }[];
  /** Ends the check: `failure` says what went wrong, null if its connection was accepted. */
  done(failure: string | null, outOfDescriptors?: boolean): void;
}

/** The node id a session's client certificate proves, or null if it names none. */
function _identity(session: http2.Http2Session): NodeId | null {
  const socket = session.socket as TLSSocket;
  if (!socket.authorized) return null;
  const name = socket.getPeerCertificate()?.subject?.CN;
  // A subject with several CNs gives an array: no single identity.
  return typeof name === "string" && name !== "" ? name : null;
}

/**
 * Turns one HTTP/2 stream into a `Request`, runs the handler and writes its `Response` back; then
 * calls `answered` with the request's body (null without one) unless the client reset the stream.
 * A request that does not make a `Request` is answered 400 here, and told to `refused`.
 */
async function _serveStream(
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  peer: NodeId,
  handler: PeerRequestHandler,
  logger: TransportLogger,
  answered: (body: Http2Body | null) => void,
  refused: (reason: "malformed") => void,
): Promise<void> {
  const method = String(headers[":method"] ?? "GET");
  const path = String(headers[":path"] ?? "");
  const authority = String(headers[":authority"] ?? "");
  const hasBody = method !== "GET" && method !== "HEAD";
  const body = hasBody ? readBody(stream) : null;
  if (!hasBody) stream.resume();
  const abort = new AbortController();
  let done = false;
  stream.on("close", () => {
    if (!done) abort.abort(new DOMException("the peer reset the request", "AbortError"));
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
    refused("malformed");
    _respondError(stream, 400, `Invalid request: ${_describe(err)}`);
    answered(body);
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
    done = true;
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
    done = true;
    await res.body?.cancel().catch(() => {});
  } else {
    try {
      await writeBody(res.body!, stream);
    } finally {
      done = true;
    }
  }
  answered(body);
}

/**
 * Once the response is sent, tells a client still sending a body nobody reads (it was refused,
 * or cancelled) to stop: RFC 9113 section 8.1 allows `RST_STREAM(NO_ERROR)` after a complete
 * response.
 */
function _stopUpload(stream: http2.ServerHttp2Stream, body: Http2Body | null): void {
  if (body === null || stream.destroyed) return;
  const state = body.state();
  if (state === "ended" || state === "failed") return;
  if (state === "reading" && body.stream.locked) return; // the handler reads on
  _closeAfterResponse(stream);
}

/**
 * Resets the stream with `NO_ERROR` once the response is written, if the request goes on: not
 * when the client ended it already (the stream closes by itself then, and a reset racing with
 * the end of the stream is one more thing for Deno's nghttp2 binding to get wrong).
 */
function _closeAfterResponse(stream: http2.ServerHttp2Stream): void {
  const reset = () => {
    if (stream.destroyed || stream.closed || _requestEnded(stream)) return;
    stream.close(http2.constants.NGHTTP2_NO_ERROR);
  };
  if (stream.writableFinished) reset();
  else stream.once("finish", reset);
}

/** Whether the client ended its side of the stream (sent END_STREAM). */
function _requestEnded(stream: http2.ServerHttp2Stream): boolean {
  try {
    return stream.state?.remoteClose === 1;
  } catch {
    return false;
  }
}

/** `isMember(peer)`, a throwing callback counting as a member (the connection is kept). */
function _isMember(
  isMember: (peer: NodeId) => boolean,
  peer: NodeId,
  logger: TransportLogger,
): boolean {
  try {
    return isMember(peer);
  } catch (err) {
    logger.warn(`isMember threw: ${_describe(err)}`);
    return true;
  }
}

/** Where an accept check connects: the listener's port, on loopback if it listens everywhere. */
function _checkAddress(
  address: ReturnType<net.Server["address"]>,
  hostname: string,
): { host: string; port: number } {
  if (typeof address !== "object" || address === null) {
    return { host: hostname, port: Number(address) };
  }
  const host = address.address === "0.0.0.0" || address.address === ""
    ? "127.0.0.1"
    : address.address === "::"
    ? "::1"
    : address.address;
  return { host, port: address.port };
}

/** An IPv4 address without its IPv6-mapped prefix. */
function _plainAddress(address: string): string {
  return address.startsWith("::ffff:") ? address.slice(7) : address;
}

/** A socket's remote address and port. */
function _remote(socket: Socket): { address: string; port: number } {
  return { address: _plainAddress(socket.remoteAddress ?? ""), port: socket.remotePort ?? -2 };
}

/** Whether `socket` comes from `from` (the accept check's own connection). */
function _isFrom(socket: Socket, from: { address: string; port: number }): boolean {
  const remote = _remote(socket);
  return remote.port === from.port && remote.address === from.address;
}

/** Whether an error says the process is out of file descriptors. */
function _outOfDescriptors(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "EMFILE" || code === "ENFILE" || /too many open files/i.test(_describe(err));
}

/** Lets the process exit while `timer` is pending. */
function _unref(timer: ReturnType<typeof setTimeout>): void {
  Deno.unrefTimer(timer);
}

function _respondError(stream: http2.ServerHttp2Stream, status: number, error: string): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  stream.respond({ ":status": status, "content-type": "application/json" });
  stream.end(JSON.stringify({ error }));
}

function _describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
