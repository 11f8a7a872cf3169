/**
 * A `Deno.serve` server that outlives its listener: it listens again after an error that stops
 * it accepting connections, and can swap itself for one with new options (a rotated
 * certificate). See {@linkcode serveAgain}.
 *
 * @module
 */

/** What {@linkcode serveAgain} listens with: `Deno.serve`'s TCP options, with TLS or without. */
export type ServeOptions = Deno.ServeTcpOptions | (Deno.ServeTcpOptions & Deno.TlsCertifiedKeyPem);

/** A running {@linkcode serveAgain} server. */
export interface ServeAgain {
  /** Stops accepting connections and waits for what every server of it serves to finish. */
  shutdown(): Promise<void>;
  /**
   * Swaps the server for one listening with `next` on the same port (see {@linkcode serveAgain});
   * resolves once it listens. Swaps run one at a time, in order.
   *
   * @throws {Error} What listening with `next` threw; the previous options then listen again.
   */
  relisten(next: ServeOptions): Promise<void>;
}

/**
 * `Deno.serve`, but when the server stops accepting connections on an error (out of file
 * descriptors: every connection holds one, and `Deno.serve` has no cap on connections), it
 * listens again a second later instead of taking the process down; connections already open
 * keep being served meanwhile. The first listen's error (port in use) is thrown as usual.
 *
 * `relisten` swaps the server for one with new options (a rotated certificate): the old one stops
 * accepting and finishes what it serves (watch streams included, until they end), and the new
 * one listens on the same port as soon as the old listener has let it go (a few milliseconds in
 * which new connections are refused, or reset if they reached the old listener as it closed). If
 * the new options do not listen, the old ones listen again.
 *
 * @example Usage
 * ```ts
 * import { serveAgain } from "./serve.ts";
 *
 * const server = serveAgain(
 *   "example",
 *   { port: 0, hostname: "127.0.0.1", onListen() {} },
 *   () => new Response("hello"),
 *   console,
 * );
 * await server.shutdown();
 * ```
 *
 * @param name What the server is, for the log.
 * @param first The options of the first listen.
 * @param handler Serves every request.
 * @param log Where errors of the listener are said.
 * @returns The server.
 * @throws {Error} What the first listen threw (the port is in use, say).
 */
export function serveAgain(
  name: string,
  first: ServeOptions,
  handler: Deno.ServeHandler<Deno.NetAddr>,
  log: { error(message: string): void },
): ServeAgain {
  let stopping = false;
  let options = first;
  let timer: ReturnType<typeof setTimeout> | undefined;
  /** Servers `relisten` replaced, finishing what they serve. */
  const retiring = new Set<Promise<void>>();
  const retry = () => {
    if (stopping) return;
    try {
      current = listen();
    } catch (err) {
      log.error(`${name} cannot listen yet (${_messageOf(err)}); trying again in 1 s`);
      timer = setTimeout(retry, 1000);
    }
  };
  const listen = (): Deno.HttpServer<Deno.NetAddr> => {
    const server = Deno.serve(options, handler);
    server.finished.catch((e) => {
      if (stopping || server !== current) return;
      log.error(`${name} stopped accepting connections (${_messageOf(e)}); listening again in 1 s`);
      timer = setTimeout(retry, 1000);
    });
    return server;
  };
  /** Listens with `options`, waiting up to about a second for the port to be let go. */
  const listenWhenFree = async (): Promise<Deno.HttpServer<Deno.NetAddr>> => {
    for (let attempt = 0;; attempt++) {
      try {
        return listen();
      } catch (err) {
        if (!(err instanceof Deno.errors.AddrInUse) || attempt >= 100) throw err;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
  };
  /** Swaps the server for one listening with `next` (see `relisten`). */
  const swap = async (next: ServeOptions): Promise<void> => {
    if (stopping) return;
    const previous = options;
    const closing = current.shutdown().catch(() => {});
    retiring.add(closing);
    void closing.finally(() => retiring.delete(closing));
    try {
      options = next;
      current = await listenWhenFree();
    } catch (err) {
      options = previous;
      try {
        current = await listenWhenFree();
      } catch (again) {
        log.error(`${name} cannot listen (${_messageOf(again)}); trying again in 1 s`);
        timer = setTimeout(retry, 1000);
      }
      throw err;
    }
  };
  let current = listen();
  let swapping = Promise.resolve();
  return {
    shutdown: async () => {
      stopping = true;
      clearTimeout(timer);
      await Promise.all([current.shutdown(), ...retiring]);
    },
    // One swap at a time: a second SIGHUP waits until the first one's server listens.
    relisten: (next) => swapping = swapping.catch(() => {}).then(() => swap(next)),
  };
}

function _messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
