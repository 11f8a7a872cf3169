/**
 * How a follower hands a client request to the leader: a {@linkcode Forwarder} function, and the
 * HTTP/2 client that implements it, {@linkcode createForwarder}: one kept-alive, multiplexed
 * connection per leader, cleartext (h2c, prior knowledge) for `http:` peer URLs and TLS, with a
 * client certificate when one is given, for `https:` ones.
 *
 * Why `node:http2` and not `fetch`: forwards go to the leader's peer port, and `fetch` refuses the
 * Fetch Standard's "bad ports", which include 6665-6669, where the default peer ports are.
 *
 * @module
 */

import http2 from "node:http2";
import { setImmediate } from "node:timers";
import type net from "node:net";
import type tls from "node:tls";
import { h2Response, responseHeaders } from "../util/h2_response.ts";
import { connectH2Socket } from "../util/h2_socket.ts";
import {
  AnswerReader,
  BATCH_BODY_BYTES,
  type BatchItem,
  encodeBatch,
  FORWARD_BATCH_PATH,
  FORWARD_BATCH_TYPE,
  MAX_BATCH_ITEMS,
  MAX_BATCHED_BODY_BYTES,
} from "./forward_batch.ts";

/**
 * The header naming the sender's cluster on the peer port (the peer transport's header of the
 * same name): a forward, and a batch of them, carries it, so that the leader of another cluster
 * refuses it.
 */
export const CLUSTER_HEADER = "x-raftkv-cluster";

/**
 * Sends one request to the leader and resolves with its response.
 *
 * The contract the API relies on:
 * - it must honour `init.signal`: once the signal aborts, the promise rejects (with the signal's
 *   reason);
 * - it should reject with a {@linkcode ForwardConnectError} when it knows the request never
 *   reached the leader (no connection could be made), so that the API can say "retry" rather
 *   than "the write may or may not have been applied".
 */
export type Forwarder = (
  url: string,
  init: RequestInit & { signal: AbortSignal },
) => Promise<Response>;

/** A forwarded request never reached the leader: no connection could be made. */
export class ForwardConnectError extends Error {
  /** Creates the error; `options.cause` keeps the underlying failure. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ForwardConnectError";
  }
}

/** TLS settings of {@linkcode createForwarder}, used for `https:` peer URLs only. */
export interface ForwarderOptions {
  /** PEM certificates of the CAs that sign the peers' certificates. Default: the system's. */
  ca?: string | string[];
  /** PEM certificate this node presents to the peer (mutual TLS). Default: none. */
  cert?: string;
  /** PEM private key of `cert`. Default: none. */
  key?: string;
  /**
   * Whether writes (`/forward/v1/data...` and `/forward/v1/txn` other than GET) pending at the
   * same time travel together as one batch to {@linkcode FORWARD_BATCH_PATH} (see
   * `forward_batch.ts`); a leader that does not know that path (404) is sent them one by one.
   * A write with a body over 64 KiB goes on its own. Default: `false`.
   */
  batch?: boolean;
}

/** A {@linkcode Forwarder} with the connections it keeps. */
export interface ForwarderClient {
  /** Sends one request (see {@linkcode Forwarder}). */
  forward: Forwarder;
  /** Closes every connection (forwards in flight fail); later forwards open new ones. */
  close(): void;
  /**
   * Replaces the TLS settings of the connections opened from now on (the node's certificates
   * were rotated); connections already open keep theirs until they close.
   */
  setTls(options: Pick<ForwarderOptions, "ca" | "cert" | "key">): void;
}

/**
 * Creates an HTTP/2 {@linkcode Forwarder}: one connection per origin, opened on first use, kept
 * alive and reopened after it drops. A request is sent only once the peer's HTTP/2 layer has
 * greeted the connection, so one whose connection never got that far (refused, no route, TLS
 * handshake refused, client certificate refused) is rejected with a
 * {@linkcode ForwardConnectError}: nothing was sent, so even a write was certainly not applied.
 * A failure after that may have reached the leader.
 *
 * @example Usage
 * ```ts ignore
 * import { createForwarder } from "./forwarder.ts";
 *
 * const client = createForwarder({ ca: caPem, cert: nodePem, key: nodeKeyPem });
 * const res = await client.forward("https://10.0.0.2:6666/forward/v1/data/a", {
 *   signal: AbortSignal.timeout(1000),
 * });
 * console.log(res.status, await res.text());
 * client.close();
 * ```
 *
 * @param options The TLS settings for `https:` URLs.
 * @returns The forwarder and a way to close its connections.
 */
export function createForwarder(options: ForwarderOptions = {}): ForwarderClient {
  const sessions = new Map<string, _Session>();
  const sockets = new Set<net.Socket>();
  const tlsOptions: tls.ConnectionOptions = {};
  if (options.ca !== undefined) tlsOptions.ca = options.ca;
  if (options.cert !== undefined) tlsOptions.cert = options.cert;
  if (options.key !== undefined) tlsOptions.key = options.key;

  const open = (origin: string): _Session => {
    const existing = sessions.get(origin);
    if (existing && !existing.session.closed && !existing.session.destroyed) return existing;
    const https = origin.startsWith("https:");
    // The forwarder opens the socket itself, so that close() can drop it before the session.
    const createConnection = () => {
      const socket = connectH2Socket(new URL(origin), https ? tlsOptions : null);
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      return socket;
    };
    const session = http2.connect(origin, { ...(https ? tlsOptions : {}), createConnection });
    const forget = () => {
      if (sessions.get(origin) === entry) sessions.delete(origin);
    };
    const entry: _Session = {
      session,
      // Requests wait for the peer's SETTINGS frame: until then the connection may still be
      // refused (with TLS 1.3 the server checks the client's certificate after the client
      // deems the handshake done), and a request sent meanwhile could not be called unsent.
      greeted: new Promise<void>((resolve, reject) => {
        session.once("remoteSettings", () => resolve());
        session.once("error", reject);
        session.once(
          "close",
          () => reject(new Error("the connection closed before the peer's HTTP/2 greeting")),
        );
      }),
    };
    entry.greeted.catch(() => {});
    session.on("error", forget);
    session.on("close", forget);
    session.on("goaway", forget);
    sessions.set(origin, entry);
    return entry;
  };

  const forwardOne: Forwarder = async (url, init) => {
    const signal = init.signal;
    signal.throwIfAborted();
    const target = new URL(url);
    const body = _bodyBytes(init.body);
    const headers: http2.OutgoingHttpHeaders = {
      ":method": init.method ?? "GET",
      ":path": target.pathname + target.search,
    };
    new Headers(init.headers).forEach((value, name) => headers[name] = value);
    // As fetch would: the receiver counts a body of unknown length at its largest.
    if (body !== null) headers["content-length"] = String(body.byteLength);
    let stream: http2.ClientHttp2Stream;
    try {
      const entry = open(target.origin);
      await _untilAborted(entry.greeted, signal);
      stream = entry.session.request(headers, { endStream: body === null });
    } catch (e) {
      if (signal.aborted) throw signal.reason;
      throw new ForwardConnectError(_message(e), { cause: e });
    }
    const answer = h2Response(stream, signal);
    if (body !== null) stream.end(body);
    return await answer;
  };

  /** Origins whose leader answered a batch with 404: they are sent one request at a time. */
  const unbatched = new Set<string>();
  /** Requests waiting for the next batch, by origin. */
  const queues = new Map<string, _Pending[]>();

  const flush = (origin: string): void => {
    const queue = queues.get(origin);
    if (queue === undefined) return;
    queues.delete(origin);
    let batch: _Pending[] = [];
    let bytes = 0;
    for (const p of queue) {
      if (p.done) continue;
      batch.push(p);
      bytes += p.item.body?.byteLength ?? 0;
      if (batch.length >= MAX_BATCH_ITEMS || bytes >= BATCH_BODY_BYTES) {
        void sendBatch(origin, batch);
        batch = [];
        bytes = 0;
      }
    }
    if (batch.length > 0) void sendBatch(origin, batch);
  };

  const sendBatch = async (origin: string, items: _Pending[]): Promise<void> => {
    let stream: http2.ClientHttp2Stream;
    try {
      const entry = open(origin);
      await entry.greeted;
      const live = items.filter((p) => !p.done).map((p) => p.item);
      const body = encodeBatch(live);
      if (body.byteLength === 0) return;
      // The batch goes as the node its writes come from: they all name the same cluster.
      const cluster = live[0]?.headers[CLUSTER_HEADER];
      stream = entry.session.request({
        ":method": "POST",
        ":path": FORWARD_BATCH_PATH,
        "content-type": FORWARD_BATCH_TYPE,
        "content-length": String(body.byteLength),
        ...(cluster === undefined ? {} : { [CLUSTER_HEADER]: cluster }),
      });
      stream.end(body);
    } catch (e) {
      for (const p of items) p.fail(new ForwardConnectError(_message(e), { cause: e }));
      return;
    }
    _exchangeBatch(stream, items, (p) => {
      // The leader does not know batches (an older version): nothing of it was served.
      unbatched.add(origin);
      if (!p.done) forwardOne(p.url, p.init).then(p.answer, p.fail);
    });
  };

  const forward: Forwarder = (url, init) => {
    if (options.batch !== true) return forwardOne(url, init);
    const target = new URL(url);
    const method = init.method ?? "GET";
    const path = target.pathname;
    if (
      method === "GET" || method === "HEAD" || unbatched.has(target.origin) ||
      !path.startsWith("/forward/") ||
      !(path === "/forward/v1/data" || path.startsWith("/forward/v1/data/") ||
        path === "/forward/v1/txn")
    ) {
      return forwardOne(url, init);
    }
    const body = _bodyBytes(init.body);
    if (body !== null && body.byteLength > MAX_BATCHED_BODY_BYTES) return forwardOne(url, init);
    const signal = init.signal;
    if (signal.aborted) return Promise.reject(signal.reason);
    const headers: Record<string, string> = {};
    new Headers(init.headers).forEach((value, name) => headers[name] = value);
    if (body !== null) headers["content-length"] = String(body.byteLength);
    return new Promise<Response>((resolve, reject) => {
      const onAbort = () => pending.fail(signal.reason);
      const pending: _Pending = {
        item: { method, path: path.slice("/forward".length) + target.search, headers, body },
        url,
        init,
        done: false,
        answer: (res) => {
          if (pending.done) return;
          pending.done = true;
          signal.removeEventListener("abort", onAbort);
          resolve(res);
        },
        fail: (e) => {
          if (pending.done) return;
          pending.done = true;
          signal.removeEventListener("abort", onAbort);
          reject(signal.aborted ? signal.reason : e);
        },
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const origin = target.origin;
      let queue = queues.get(origin);
      if (queue === undefined) {
        queue = [];
        queues.set(origin, queue);
        // What arrives in this turn of the event loop goes in the same batch. Not setTimeout(0):
        // Deno runs that no sooner than a millisecond later, often two or more.
        setImmediate(() => flush(origin));
      }
      queue.push(pending);
      if (queue.length >= MAX_BATCH_ITEMS) flush(origin);
    });
  };

  return {
    forward,
    setTls(next) {
      for (const name of ["ca", "cert", "key"] as const) {
        if (next[name] === undefined) delete tlsOptions[name];
        else tlsOptions[name] = next[name];
      }
    },
    close() {
      // Sockets first: a session destroyed while its socket is open says GOAWAY, and Deno's
      // nghttp2 can abort a process whose node:http2 server (the TLS peer server) receives one
      // while requests are in flight (denoland/deno#36788). A closed connection is handled.
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      for (const { session } of sessions.values()) session.destroy();
      sessions.clear();
      // Writes waiting for their batch were not sent.
      for (const queue of queues.values()) {
        for (const p of queue) p.fail(new ForwardConnectError("the forwarder was closed"));
      }
      queues.clear();
    },
  };
}

/** A request waiting in, or sent with, a batch. */
interface _Pending {
  item: BatchItem;
  /** The request as given to the forwarder, to send it on its own instead. */
  url: string;
  init: RequestInit & { signal: AbortSignal };
  /** Whether it was answered or failed (its signal aborted, say). */
  done: boolean;
  answer(res: Response): void;
  fail(e: unknown): void;
}

/**
 * Reads a batch's answer from `stream` and settles each of `items` with its own; on a 404 for the
 * whole batch, hands each item to `unknown`. Any other status for the whole batch is every item's
 * answer (the leader served none of them). Items without an answer when the stream ends fail.
 */
function _exchangeBatch(
  stream: http2.ClientHttp2Stream,
  items: readonly _Pending[],
  unknown: (p: _Pending) => void,
): void {
  const live = items.filter((p) => !p.done);
  /** Whether the items went to be sent one by one instead. */
  let handedOver = false;
  const failAll = (e: unknown) => {
    if (handedOver) return;
    for (const p of live) p.fail(e);
  };
  const cut = () =>
    new Error(`the HTTP/2 stream closed (code ${stream.rstCode}) before the answer ended`);
  stream.on("error", failAll);
  stream.on("close", () => failAll(cut()));
  stream.on("response", (h) => {
    const status = Number(h[":status"]);
    if (status === 200) {
      const reader = new AnswerReader();
      stream.on("data", (chunk: Uint8Array) => {
        let answers;
        try {
          answers = reader.push(chunk);
        } catch (e) {
          stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR);
          failAll(e);
          return;
        }
        for (const a of answers) {
          const p = live[a.item];
          if (p === undefined) continue;
          const nullBody = a.status === 204 || a.status === 304;
          p.answer(
            new Response(nullBody ? null : a.body, { status: a.status, headers: a.headers }),
          );
        }
      });
      stream.on("end", () => failAll(cut()));
      return;
    }
    const chunks: Uint8Array[] = [];
    stream.on("data", (chunk: Uint8Array) => chunks.push(new Uint8Array(chunk)));
    stream.on("end", () => {
      if (stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) {
        failAll(cut());
        return;
      }
      if (status === 404) {
        handedOver = true;
        for (const p of live) unknown(p);
        return;
      }
      const headers = responseHeaders(h);
      const body = new Blob(chunks as BlobPart[]);
      const nullBody = status === 204 || status === 304;
      for (const p of live) {
        p.answer(new Response(nullBody ? null : body, { status, headers: new Headers(headers) }));
      }
    });
  });
}

let _default: ForwarderClient | null = null;

/**
 * The {@linkcode Forwarder} the API uses when given none: a {@linkcode createForwarder} client
 * without TLS settings (the system's CAs for `https:` peers), created on first use and closed by
 * {@linkcode closeForwarder}.
 *
 * @param url The absolute URL to send the request to.
 * @param init The request; `init.signal` bounds the whole exchange.
 * @returns The leader's response (its body not yet read).
 * @throws {ForwardConnectError} If no connection to the leader could be made.
 */
export const defaultForwarder: Forwarder = (url, init): Promise<Response> => {
  _default ??= createForwarder();
  return _default.forward(url, init);
};

/**
 * Closes the connections of {@linkcode defaultForwarder} (forwards in flight fail). Safe to call
 * more than once; a later forward opens a new connection.
 *
 * @example Usage
 * ```ts
 * import { closeForwarder } from "./forwarder.ts";
 *
 * closeForwarder(); // on shutdown, or at the end of a test
 * ```
 */
export function closeForwarder(): void {
  const client = _default;
  _default = null;
  client?.close();
}

/** One connection, and whether the peer's HTTP/2 layer greeted it. */
interface _Session {
  session: http2.ClientHttp2Session;
  /** Resolves once the peer's SETTINGS arrived; rejects if the connection fails first. */
  greeted: Promise<void>;
}

/** Waits for `promise`, or rejects with the signal's reason once it aborts. */
function _untilAborted(promise: Promise<void>, signal: AbortSignal): Promise<void> {
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  return Promise.race([promise, aborted]).finally(() =>
    signal.removeEventListener("abort", onAbort)
  );
}

function _bodyBytes(body: BodyInit | null | undefined): Uint8Array<ArrayBuffer> | null {
  if (body === undefined || body === null) return null;
  if (body instanceof Uint8Array) return body as Uint8Array<ArrayBuffer>;
  if (typeof body === "string") return new TextEncoder().encode(body);
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  throw new TypeError("a forwarded body must be bytes or a string");
}

function _message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
