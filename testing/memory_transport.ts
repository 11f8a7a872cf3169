/**
 * An in-process twin of the HTTP transport for tests: a {@linkcode MemoryNetwork} connects several
 * {@linkcode MemoryTransport}s and delivers their messages asynchronously (on a later macrotask,
 * in order per sender), with partitions and message dropping for fault tests.
 *
 * Like the real transport, each batch goes through the binary codec by default, so receivers get
 * their own copies and a message the codec cannot carry fails here too.
 *
 * Exceptions thrown by `onMessages` or `onUnreachable` are not swallowed: they surface as uncaught
 * errors, so a test sees them.
 *
 * @example Usage
 * ```ts ignore
 * const net = new MemoryNetwork();
 * const a = net.connect("a", handlersOfA);
 * const b = net.connect("b", handlersOfB);
 * a.send([msgToB]); // handlersOfB.onMessages runs on a later macrotask
 * net.partition("a", "b"); // now a's messages to b report onUnreachable("b")
 * net.heal();
 * await a.close();
 * await b.close();
 * ```
 *
 * @module
 */

import { type Message, MessageType, type NodeId } from "../src/raft/types.ts";
import { decodeMessages, encodeMessages } from "../src/transport/codec.ts";
import {
  PeerNoSpaceError,
  PeerRefusedError,
  type Transport,
  type TransportHandlers,
} from "../src/transport/transport.ts";

/** Options for {@linkcode MemoryNetwork}. */
export interface MemoryNetworkOptions {
  /**
   * Whether each batch is encoded and decoded with the binary codec on the way (receivers then get
   * copies, as over the network). Default: true.
   */
  useCodec?: boolean;
}

/** Counters of a {@linkcode MemoryNetwork}. */
export interface MemoryNetworkStats {
  /** Messages handed to a receiver's `onMessages`. */
  delivered: number;
  /** Messages dropped by the drop filter. */
  dropped: number;
  /** Messages not delivered because the receiver was unknown, closed or partitioned away. */
  unreachable: number;
  /**
   * Messages the receiver refused (its `onMessages` threw a {@linkcode PeerRefusedError}, such as
   * one from a node that is no longer a member): a real transport answers those with a refusal
   * and goes on, and so does this one.
   */
  refused: number;
}

/** A node's mailbox: tasks run on a later macrotask, in order. */
interface _Node {
  id: NodeId;
  handlers: TransportHandlers;
  inbox: _Task[];
  timer: ReturnType<typeof setTimeout> | null;
  closed: boolean;
}

/** What a {@linkcode MemoryTransport} needs from its network. */
interface _Network {
  send(from: _Node, messages: Message[]): void;
  sendSnapshot(
    from: _Node,
    msg: Message,
    open: () => Promise<ReadableStream<Uint8Array>>,
  ): Promise<void>;
  close(node: _Node): void;
}

/** Connects {@linkcode MemoryTransport}s in one process (see the module doc). */
export class MemoryNetwork {
  readonly #nodes = new Map<NodeId, _Node>();
  readonly #cut = new Set<string>();
  readonly #useCodec: boolean;
  #dropFilter: ((msg: Message) => boolean) | null = null;
  #stats: MemoryNetworkStats = { delivered: 0, dropped: 0, unreachable: 0, refused: 0 };
  readonly #internals: _Network = {
    send: (from, messages) => this.#send(from, messages),
    sendSnapshot: (from, msg, open) => this.#sendSnapshot(from, msg, open),
    close: (node) => this.#close(node),
  };

  /** Creates an empty network. */
  constructor(options: MemoryNetworkOptions = {}) {
    this.#useCodec = options.useCodec ?? true;
  }

  /**
   * Connects node `id`: messages addressed to it are handed to `handlers`.
   *
   * @throws {RangeError} if a transport for `id` is connected and not closed.
   */
  connect(id: NodeId, handlers: TransportHandlers): MemoryTransport {
    const existing = this.#nodes.get(id);
    if (existing !== undefined && !existing.closed) {
      throw new RangeError(`Cannot connect node "${id}": it is already connected`);
    }
    const node: _Node = { id, handlers, inbox: [], timer: null, closed: false };
    this.#nodes.set(id, node);
    return new MemoryTransport(id, node, this.#internals);
  }

  /** Cuts the link between `a` and `b`, both ways, until {@linkcode MemoryNetwork.heal}. */
  partition(a: NodeId, b: NodeId): void {
    this.#cut.add(_linkKey(a, b));
    this.#cut.add(_linkKey(b, a));
  }

  /** Restores every link cut by {@linkcode MemoryNetwork.partition}. */
  heal(): void {
    this.#cut.clear();
  }

  /**
   * Silently drops every message for which `filter` returns true (checked when sent), until
   * replaced; `null` stops dropping.
   */
  setDropFilter(filter: ((msg: Message) => boolean) | null): void {
    this.#dropFilter = filter;
  }

  /** Returns a copy of the network's counters. */
  stats(): MemoryNetworkStats {
    return { ...this.#stats };
  }

  #reachable(from: NodeId, to: NodeId): _Node | null {
    const node = this.#nodes.get(to);
    if (node === undefined || node.closed || this.#cut.has(_linkKey(from, to))) return null;
    return node;
  }

  #send(from: _Node, messages: Message[]): void {
    const batches = new Map<NodeId, Message[]>();
    for (const msg of messages) {
      if (this.#dropFilter?.(msg)) {
        this.#stats.dropped++;
        continue;
      }
      const batch = batches.get(msg.to);
      if (batch === undefined) batches.set(msg.to, [msg]);
      else batch.push(msg);
    }
    for (const [to, batch] of batches) {
      const dest = this.#reachable(from.id, to);
      if (dest === null) {
        this.#stats.unreachable += batch.length;
        _schedule(from, () => from.handlers.onUnreachable?.(to));
        continue;
      }
      const payload = this.#useCodec ? encodeMessages(batch) : null;
      _schedule(dest, () => {
        // The link may have been cut while the batch was in flight.
        if (this.#reachable(from.id, to) === null) {
          this.#stats.unreachable += batch.length;
          return;
        }
        this.#stats.delivered += batch.length;
        try {
          dest.handlers.onMessages(payload === null ? batch : decodeMessages(payload));
        } catch (err) {
          if (!(err instanceof PeerRefusedError)) throw err;
          this.#stats.refused += batch.length;
        }
      });
    }
  }

  async #sendSnapshot(
    from: _Node,
    msg: Message,
    open: () => Promise<ReadableStream<Uint8Array>>,
  ): Promise<void> {
    if (msg.type !== MessageType.Snap) {
      throw new RangeError(`Cannot send snapshot: message type must be Snap (9), got ${msg.type}`);
    }
    const copy = this.#useCodec ? decodeMessages(encodeMessages([msg]))[0]! : msg;
    // Hop to a later macrotask in the receiver's mailbox, as a network would.
    const dest = await new Promise<_Node | null>((resolve) => {
      const node = this.#reachable(from.id, msg.to);
      if (node === null) resolve(null);
      else _schedule(node, () => resolve(this.#reachable(from.id, msg.to)), () => resolve(null));
    });
    if (dest === null) {
      if (!from.closed) from.handlers.onUnreachable?.(msg.to);
      throw new Error(`Cannot send snapshot: peer "${msg.to}" is unreachable`);
    }
    const body = await open();
    try {
      await dest.handlers.onSnapshot(copy, body);
    } catch (err) {
      if (!body.locked) await body.cancel(err).catch(() => {});
      const detail = err instanceof Error ? err.message : String(err);
      if (err instanceof PeerNoSpaceError) {
        throw new PeerNoSpaceError(`Peer "${msg.to}" has no room for the snapshot: ${detail}`);
      }
      throw new Error(`Peer "${msg.to}" refused the snapshot: ${detail}`, { cause: err });
    }
    if (!body.locked) await body.cancel().catch(() => {});
  }

  #close(node: _Node): void {
    node.closed = true;
    if (node.timer !== null) clearTimeout(node.timer);
    node.timer = null;
    const pending = node.inbox;
    node.inbox = [];
    for (const task of pending) task.cancel?.();
  }
}

/**
 * One node's end of a {@linkcode MemoryNetwork}; created by {@linkcode MemoryNetwork.connect}.
 */
export class MemoryTransport implements Transport {
  /** The node this transport belongs to. */
  readonly id: NodeId;
  readonly #node: _Node;
  readonly #network: _Network;

  /** Use {@linkcode MemoryNetwork.connect} instead. */
  constructor(id: NodeId, node: _Node, network: _Network) {
    this.id = id;
    this.#node = node;
    this.#network = network;
  }

  /**
   * Hands the messages to the network. Each receiver gets the messages addressed to it as one
   * batch on a later macrotask; for an unreachable one, `onUnreachable` is called (also later).
   * A no-op once closed.
   */
  send(messages: Message[]): void {
    if (this.#node.closed) return;
    this.#network.send(this.#node, messages);
  }

  /**
   * Hands the snapshot stream to the receiver's `onSnapshot` and resolves when it resolves.
   *
   * @throws {RangeError} if `msg` is not a `Snap` message.
   * @throws {Error} if the transport is closed, the peer is unreachable or its `onSnapshot` failed.
   */
  sendSnapshot(msg: Message, open: () => Promise<ReadableStream<Uint8Array>>): Promise<void> {
    if (this.#node.closed) {
      return Promise.reject(new Error("Cannot send snapshot: the transport is closed"));
    }
    return this.#network.sendSnapshot(this.#node, msg, open);
  }

  /** Disconnects: nothing more is sent or delivered to this node, pending deliveries are dropped. */
  close(): Promise<void> {
    this.#network.close(this.#node);
    return Promise.resolve();
  }
}

/** A mailbox task, optionally told when it is dropped unrun. */
interface _Task {
  run: () => void;
  cancel?: () => void;
}

/** Runs `task` in `node`'s mailbox on a later macrotask (never, if the node closes first). */
function _schedule(node: _Node, task: () => void, cancel?: () => void): void {
  if (node.closed) {
    cancel?.();
    return;
  }
  node.inbox.push(cancel === undefined ? { run: task } : { run: task, cancel });
  if (node.timer === null) node.timer = setTimeout(() => _flush(node), 0);
}

/** Runs every task queued so far; the first exception is rethrown after the others ran. */
function _flush(node: _Node): void {
  node.timer = null;
  const tasks = node.inbox;
  node.inbox = [];
  let failure: { error: unknown } | null = null;
  for (const task of tasks) {
    try {
      task.run();
    } catch (error) {
      failure ??= { error };
    }
  }
  if (failure !== null) throw failure.error;
}

function _linkKey(from: NodeId, to: NodeId): string {
  return `${from}\u0000${to}`;
}
