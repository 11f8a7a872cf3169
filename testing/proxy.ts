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
 * Apart from the mode, {@linkcode LinkProxy.setDelay} makes an open link slow, like a long or
 * lossy network path: each chunk of bytes is held for a one-way delay drawn between a least and a
 * most (jitter that never reorders: TCP delivers in order), and now and then the direction stalls
 * for longer, as a burst of lost packets does until TCP sends them again.
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

/** How slow a {@linkcode LinkProxy} makes its link, in each direction. */
export interface LinkDelay {
  /** The shortest one-way delay of a chunk, in milliseconds. */
  minMs: number;
  /** The longest one-way delay; each chunk draws one in between. */
  maxMs: number;
  /** The probability that a chunk stalls its direction for `stallMs` more. Default 0. */
  stallRate?: number;
  /** How long a stall lasts, in milliseconds. Default 0. */
  stallMs?: number;
}

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

/** Bytes a slow direction holds before it stops reading (the receiver's window, in effect). */
const _MAX_HELD_BYTES = 4 << 20;

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
  #delay: Required<LinkDelay> | null = null;
  #held = 0;
  #random: () => number = Math.random;
  #stalls = 0;

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

  /** The delay set by {@linkcode LinkProxy.setDelay}, or `null` when the link is fast. */
  get delay(): Readonly<LinkDelay> | null {
    return this.#delay;
  }

  /** How many bytes slow directions hold now (read, not yet written or lost). */
  get heldBytes(): number {
    return this.#held;
  }

  /** How many stalls the delay has caused so far. */
  get stalls(): number {
    return this.#stalls;
  }

  /**
   * Makes the link slow (see the module documentation), or fast again with `null`. It applies to
   * the bytes read from then on, on established connections too; bytes already held keep their
   * time, so the order never changes.
   *
   * @param delay The delay, or `null` for none.
   * @param random The source of the draws, in [0, 1). Default `Math.random`.
   */
  setDelay(delay: LinkDelay | null, random: () => number = Math.random): void {
    if (delay !== null) {
      const { minMs, maxMs, stallRate = 0, stallMs = 0 } = delay;
      if (!(minMs >= 0 && maxMs >= minMs && stallRate >= 0 && stallRate <= 1 && stallMs >= 0)) {
        throw new RangeError(`invalid link delay ${JSON.stringify(delay)}`);
      }
      this.#delay = { minMs, maxMs, stallRate, stallMs };
    } else {
      this.#delay = null;
    }
    this.#random = random;
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

  /**
   * Copies `from` to `to` (or swallows it while the pair is dropping) until either side ends. While
   * the link is slow, or bytes are still held, chunks go through a {@linkcode _HeldBytes} queue.
   */
  async #pump(pair: _Pair, from: Deno.TcpConn, to: Deno.TcpConn | null): Promise<void> {
    const buffer = new Uint8Array(_BUFFER_BYTES);
    const held = to === null ? null : new _HeldBytes(pair, to, {
      held: (n) => this.#held += n,
      sent: (n) => this.#bytes += n,
      fail: () => this.#closePair(pair),
    });
    try {
      while (!pair.closed) {
        const n = await from.read(buffer);
        if (n === null) break;
        if (pair.dropping || to === null || held === null) continue;
        const delay = this.#delay;
        if (delay === null && held.empty) {
          let offset = 0;
          while (offset < n) offset += await to.write(buffer.subarray(offset, n));
          this.#bytes += n;
          continue;
        }
        let ms = 0;
        if (delay !== null) {
          ms = delay.minMs + this.#random() * (delay.maxMs - delay.minMs);
          if (delay.stallRate > 0 && this.#random() < delay.stallRate) {
            ms += delay.stallMs;
            this.#stalls++;
          }
        }
        await held.push(buffer.slice(0, n), performance.now() + ms);
      }
      await held?.drained();
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

/** What a {@linkcode _HeldBytes} tells its proxy. */
interface _HeldEvents {
  /** Bytes held (positive) or no longer held (negative). */
  held(delta: number): void;
  /** Bytes written to the other side. */
  sent(bytes: number): void;
  /** A write failed: end the pair. */
  fail(): void;
}

/**
 * The bytes a slow direction holds: each chunk leaves at its due time, or after the chunk before it
 * (never out of order). Bytes held when the pair starts dropping are lost, as a cut link loses what
 * was on the wire.
 */
class _HeldBytes {
  #pair: _Pair;
  #to: Deno.TcpConn;
  #tell: _HeldEvents;
  #queue: { bytes: Uint8Array; due: number }[] = [];
  #heldBytes = 0;
  #lastDue = 0;
  #writing = false;
  #written: Promise<void> = Promise.resolve();

  /**
   * @param pair The connection pair (closed or dropping ends the writes).
   * @param to Where the chunks go.
   * @param tell Told of what happens to the bytes.
   */
  constructor(pair: _Pair, to: Deno.TcpConn, tell: _HeldEvents) {
    this.#pair = pair;
    this.#to = to;
    this.#tell = tell;
  }

  /** Whether nothing is held. */
  get empty(): boolean {
    return this.#queue.length === 0;
  }

  /** Holds a chunk until `due` (or later, after the one before); waits while too much is held. */
  async push(bytes: Uint8Array, due: number): Promise<void> {
    this.#lastDue = Math.max(this.#lastDue, due);
    this.#queue.push({ bytes, due: this.#lastDue });
    this.#heldBytes += bytes.length;
    this.#tell.held(bytes.length);
    if (!this.#writing) {
      this.#writing = true;
      this.#written = this.#write();
    }
    if (this.#heldBytes > _MAX_HELD_BYTES) await this.#written;
  }

  /** Resolves once every held chunk left, or was lost. */
  drained(): Promise<void> {
    return this.#written;
  }

  /** Writes the chunks as they come due; never rejects (a failed write ends the pair). */
  async #write(): Promise<void> {
    try {
      while (this.#queue.length > 0 && !this.#pair.closed) {
        const { bytes, due } = this.#queue[0]!;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        if (this.#pair.closed) break;
        if (!this.#pair.dropping) {
          let offset = 0;
          while (offset < bytes.length) offset += await this.#to.write(bytes.subarray(offset));
          this.#tell.sent(bytes.length);
        }
        this.#queue.shift();
        this.#heldBytes -= bytes.length;
        this.#tell.held(-bytes.length);
      }
    } catch {
      this.#tell.fail();
    } finally {
      // Set before anything else can run, so that the next push starts a new writer.
      this.#writing = false;
      if (this.#pair.closed) {
        this.#tell.held(-this.#heldBytes);
        this.#queue = [];
        this.#heldBytes = 0;
      }
    }
  }
}

function _close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
