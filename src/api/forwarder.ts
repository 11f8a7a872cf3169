/**
 * How a follower hands a client request to the leader: a {@linkcode Forwarder} function, and the
 * default one, {@linkcode fetchForwarder}, which speaks cleartext HTTP/2 (h2c, prior knowledge)
 * over one shared, kept-alive client.
 *
 * @module
 */

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

// Deno's fetch reports a failed connection attempt (refused, DNS, unreachable) as
// "client error (Connect)"; anything else may have happened after the request was sent.
const _CONNECT_FAILURE_RE = /\(Connect\)|connection refused|dns error/i;

let _client: Deno.HttpClient | null = null;

/**
 * The default {@linkcode Forwarder}: `fetch` through one shared `Deno.HttpClient` that speaks
 * only HTTP/2 without TLS (prior knowledge), so that every forward to the leader reuses one
 * kept-alive, multiplexed connection. `Deno.serve` accepts such connections.
 *
 * The client is created on first use; {@linkcode closeForwarder} closes it.
 *
 * @example Usage
 * ```ts ignore
 * import { closeForwarder, fetchForwarder } from "./forwarder.ts";
 *
 * const res = await fetchForwarder("http://127.0.0.1:7777/health", {
 *   signal: AbortSignal.timeout(1000),
 * });
 * console.log(res.status);
 * closeForwarder();
 * ```
 *
 * @param url The absolute URL to send the request to.
 * @param init The request; `init.signal` bounds the whole exchange.
 * @returns The leader's response (its body not yet read).
 * @throws {ForwardConnectError} If no connection to the leader could be made.
 */
export const fetchForwarder: Forwarder = async (
  url: string,
  init: RequestInit & { signal: AbortSignal },
): Promise<Response> => {
  _client ??= Deno.createHttpClient({ http2: true, http1: false });
  try {
    return await fetch(url, { ...init, client: _client });
  } catch (err) {
    // Only a read may be called "never sent": fetch can re-send a request it had already
    // delivered and report just the retry's connect error, so for a write the outcome is unknown.
    const read = (init.method ?? "GET").toUpperCase() === "GET";
    if (read && !init.signal.aborted && _isConnectFailure(err)) {
      throw new ForwardConnectError(_innermostMessage(err), { cause: err });
    }
    throw err;
  }
};

/**
 * Closes the client shared by {@linkcode fetchForwarder} (forwards in flight fail). Safe to call
 * more than once; a later forward opens a new client.
 *
 * @example Usage
 * ```ts
 * import { closeForwarder } from "./forwarder.ts";
 *
 * closeForwarder(); // on shutdown, or at the end of a test
 * ```
 */
export function closeForwarder(): void {
  const client = _client;
  _client = null;
  client?.close();
}

function _isConnectFailure(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (_CONNECT_FAILURE_RE.test(e.message)) return true;
  }
  return false;
}

function _innermostMessage(err: unknown): string {
  let message = String(err);
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    message = e.message;
  }
  return message;
}
