/**
 * A small TCP proxy for one directed network link, used by the chaos tests to cut the peer links
 * between node processes.
 *
 * A {@linkcode LinkProxy} listens on a free port of the loopback interface and forwards every
 * connection to its target. Its {@linkcode LinkMode} decides what happens to the traffic:
 *
 * - `"open"`: bytes flow both ways.
 * - `"refuse"`: established connections are closed at once and new ones are accepted and closed
 *   immediately, like a peer whose port is closed.
 * - `"drop"`: a black hole. Established connections stay open but every byte is swallowed in
 *   both directions; new connections are accepted and swallowed too, so the sender only notices
 *   through its own timeouts. When the link opens again, the swallowed connections are closed
 *   (their streams lost bytes, so they cannot carry on) and new connections flow.
 *
 * ```ts ignore
 * import { LinkProxy } from "./proxy.ts";
 *
 * await using proxy = LinkProxy.listen({ port: 6000 });
 * proxy.setMode("drop"); // partition
 * proxy.setMode("open"); // heal
 * ```
 *
 * @module
 */

/** What a {@linkcode LinkProxy} does with the traffic; see the module documentation. */
export type LinkMode = "open" | "refuse" | "drop";

/** Where a {@linkcode LinkProxy} forwards to. */
export interface ProxyTarget {
  /** The target host. Default `"127.0.0.1"`. */
  hostname?: string;
  /** The target port; `0` until it is known (see {@linkcode LinkProxy.target}). */
  port: number;
}

interface _Pair {
  client: Deno.TcpConn;
  upstream: Deno.TcpConn | null;
  /** Swallowing every byte (the link was cut while this connection was open). */
  dropping: boolean;
  closed: boolean;
}

const _BUFFER_BYTES = 64 * 1024;

/** One directed link: a TCP proxy whose traffic can be cut and restored. */
export class LinkProxy implements AsyncDisposable {
  /** The port the proxy listens on. */
  readonly port: number;
  /** Where connections go; may be set after the proxy is created, before traffic flows. */
  readonly target: { hostname: string; port: number };
  #listener: Deno.TcpListener;
  #mode: LinkMode = "open";
  #pairs = new Set<_Pair>();
  #accepting: Promise<void>;
  #tasks = new Set<Promise<void>>();
  #closed = false;
  #connections = 0;
  #bytes = 0;

  private constructor(listener: Deno.TcpListener, target: ProxyTarget) {
    this.#listener = listener;
    this.port = listener.addr.port;
    this.target = { hostname: target.hostname ?? "127.0.0.1", port: target.port };
    this.#accepting = this.#acceptLoop();
  }

  /**
   * Starts a proxy on a free port of `127.0.0.1`.
   *
   * @param target Where to forward (the port may be filled in later through `target.port`).
   * @returns The running proxy, in mode `"open"`.
   */
  static listen(target: ProxyTarget = { port: 0 }): LinkProxy {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    return new LinkProxy(listener, target);
  }

  /** The current mode. */
  get mode(): LinkMode {
    return this.#mode;
  }

  /** How many connections the proxy has accepted so far. */
  get connections(): number {
    return this.#connections;
  }

  /** How many connections are open now (forwarding or swallowing). */
  get openConnections(): number {
    return this.#pairs.size;
  }

  /** How many bytes were forwarded so far, both directions together. */
  get bytesForwarded(): number {
    return this.#bytes;
  }

  /**
   * Changes what the link does with traffic. Cutting the link (`"refuse"` or `"drop"`) acts on
   * established connections at once; opening it closes the connections swallowed while it was
   * cut.
   *
   * @param mode The new mode.
   */
  setMode(mode: LinkMode): void {
    if (this.#closed || mode === this.#mode) return;
    this.#mode = mode;
    for (const pair of this.#pairs) {
      if (mode === "refuse") this.#closePair(pair);
      else if (mode === "drop") pair.dropping = true;
      else if (pair.dropping) this.#closePair(pair);
    }
  }

  /** Stops listening, closes every connection and waits for the pumps to finish. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    for (const pair of this.#pairs) this.#closePair(pair);
    await this.#accepting;
    await Promise.allSettled([...this.#tasks]);
  }

  /** Same as {@linkcode LinkProxy.close}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // The listener was closed.
      }
      this.#connections++;
      if (this.#closed || this.#mode === "refuse") {
        _close(conn);
        continue;
      }
      const pair: _Pair = { client: conn, upstream: null, dropping: false, closed: false };
      this.#pairs.add(pair);
      this.#track(this.#serve(pair));
    }
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
  }

  async #serve(pair: _Pair): Promise<void> {
    if (this.#mode === "drop") {
      pair.dropping = true;
      await this.#pump(pair, pair.client, null);
      return;
    }
    try {
      pair.upstream = await Deno.connect({
        hostname: this.target.hostname,
        port: this.target.port,
      });
    } catch {
      this.#closePair(pair); // Target down: the client sees its connection closed.
      return;
    }
    if (pair.closed) {
      _close(pair.upstream);
      return;
    }
    if (this.#mode === "refuse") {
      this.#closePair(pair);
      return;
    }
    const upstream = pair.upstream;
    await Promise.all([
      this.#pump(pair, pair.client, upstream),
      this.#pump(pair, upstream, pair.client),
    ]);
  }

  /** Copies `from` to `to` (or swallows it while the pair is dropping) until either side ends. */
  async #pump(pair: _Pair, from: Deno.TcpConn, to: Deno.TcpConn | null): Promise<void> {
    const buffer = new Uint8Array(_BUFFER_BYTES);
    try {
      while (!pair.closed) {
        const n = await from.read(buffer);
        if (n === null) break;
        if (pair.dropping || to === null) continue;
        let offset = 0;
        while (offset < n) offset += await to.write(buffer.subarray(offset, n));
        this.#bytes += n;
      }
    } catch {
      // A side closed or reset: end the pair.
    }
    this.#closePair(pair);
  }

  #closePair(pair: _Pair): void {
    if (pair.closed) return;
    pair.closed = true;
    this.#pairs.delete(pair);
    _close(pair.client);
    if (pair.upstream !== null) _close(pair.upstream);
  }
}

function _close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
