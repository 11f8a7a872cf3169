/**
 * The simulated network: a {@linkcode Transport} per node incarnation that carries the real wire
 * format ({@linkcode encodeMessages}) through the simulation's event queue, with random delays,
 * loss, duplication, reordering and partitions. Snapshots travel as streams read from the
 * sender's (simulated) disk, take time in proportion to their size, and may fail part-way.
 *
 * On delivery every batch passes the peer validator a real node runs in front of its core
 * (`src/raft/validate.ts`, wired as `main.ts` wires it into `createPeerHandler`); a batch between
 * correct nodes that the validator or the core refuses fails the run (`peer-refusal`).
 *
 * @module
 */

import { type Message, MessageType, type NodeId } from "../../src/raft/types.ts";
import { decodeMessages, encodeMessages } from "../../src/transport/codec.ts";
import {
  PeerRefusedError,
  type Transport,
  type TransportHandlers,
} from "../../src/transport/transport.ts";
import { PeerValidator } from "../../src/raft/validate.ts";
import { decodeCommand } from "../../src/kv/state_machine.ts";
import type { NodeClock } from "./node_clock.ts";
import type { FaultOptions, SimulationStats } from "./simulator.ts";

/** The network's share of the fault mix. */
export type NetworkFaults = Pick<
  FaultOptions,
  "dropRate" | "duplicateRate" | "minDelayMs" | "maxDelayMs" | "slowRate" | "slowDelayMs"
>;

/** What the network needs from the simulation. */
export interface NetworkHost {
  /** The seeded random source of the run. */
  random(): number;
  /** The shared time. */
  now(): number;
  /** Runs `fn` after `ms` of shared time (not on any node). */
  later(ms: number, fn: () => void): void;
  /** Records a line of the trace. */
  note(text: string): void;
  /** Fails the run (unless the check is disabled). */
  violation(check: "peer-refusal" | "node-error", detail: string): void;
}

/** The network's counters (see `SimulationStats`). */
export type NetworkStats = Pick<
  SimulationStats,
  | "messagesSent"
  | "messagesDropped"
  | "messagesDuplicated"
  | "snapshotsSent"
  | "snapshotSendsFailed"
  | "snapshotsReceived"
>;

interface _Endpoint {
  id: NodeId;
  inc: number;
  clock: NodeClock;
  handlers: TransportHandlers;
  validator: PeerValidator;
  /** Set while a snapshot upload runs (a real peer handler takes one at a time). */
  uploading: boolean;
  closed: boolean;
}

/** Connects the nodes of one simulated cluster; see the module doc. */
export class SimNetwork {
  /** Counts of the messages and snapshot transfers the network carried, dropped or duplicated. */
  readonly stats: NetworkStats = {
    messagesSent: 0,
    messagesDropped: 0,
    messagesDuplicated: 0,
    snapshotsSent: 0,
    snapshotSendsFailed: 0,
    snapshotsReceived: 0,
  };
  readonly #host: NetworkHost;
  readonly #faults: NetworkFaults;
  readonly #members: NodeId[];
  readonly #live = new Map<NodeId, _Endpoint>();
  /** Blocked directed links, as "from>to". */
  readonly #blocked = new Set<string>();

  /**
   * Creates the network of a cluster.
   *
   * @param host The simulation.
   * @param faults The network faults.
   * @param members Every node's id.
   */
  constructor(host: NetworkHost, faults: NetworkFaults, members: NodeId[]) {
    this.#host = host;
    this.#faults = faults;
    this.#members = members;
  }

  /** Connects an incarnation of node `id`; its messages stop when `clock` is killed. */
  connect(id: NodeId, inc: number, clock: NodeClock, handlers: TransportHandlers): Transport {
    const ep: _Endpoint = {
      id,
      inc,
      clock,
      handlers,
      validator: new PeerValidator({
        self: id,
        members: this.#members,
        checkEntryData: decodeCommand,
      }),
      uploading: false,
      closed: false,
    };
    this.#live.set(id, ep);
    return {
      send: (messages) => this.#send(ep, messages),
      sendSnapshot: (msg, open) => this.#sendSnapshot(ep, msg, open),
      close: () => {
        ep.closed = true;
        return Promise.resolve();
      },
    };
  }

  /** Blocks the directed link from `a` to `b` until {@linkcode SimNetwork.heal}. */
  block(a: NodeId, b: NodeId): void {
    this.#blocked.add(`${a}>${b}`);
  }

  /** Whether any link is blocked. */
  get partitioned(): boolean {
    return this.#blocked.size > 0;
  }

  /** Restores every link. */
  heal(): void {
    this.#blocked.clear();
  }

  /** The live endpoint of `id` if `from` can reach it now. */
  #reach(from: NodeId, to: NodeId): _Endpoint | null {
    const ep = this.#live.get(to);
    if (!ep || ep.closed || ep.clock.dead || this.#blocked.has(`${from}>${to}`)) return null;
    return ep;
  }

  #alive(ep: _Endpoint): boolean {
    return !ep.closed && !ep.clock.dead && this.#live.get(ep.id) === ep;
  }

  #delay(): number {
    const f = this.#faults;
    const r = this.#host.random;
    let delay = f.minDelayMs + r() * (f.maxDelayMs - f.minDelayMs);
    if (r() < f.slowRate) delay += r() * f.slowDelayMs;
    return delay;
  }

  #send(from: _Endpoint, messages: Message[]): void {
    if (!this.#alive(from) || messages.length === 0) return;
    const batches = new Map<NodeId, Message[]>();
    for (const m of messages) {
      const batch = batches.get(m.to);
      if (batch) batch.push(m);
      else batches.set(m.to, [m]);
    }
    const r = this.#host.random;
    for (const [to, batch] of batches) {
      this.stats.messagesSent += batch.length;
      if (this.#reach(from.id, to) === null || r() < this.#faults.dropRate) {
        this.stats.messagesDropped += batch.length;
        this.#maybeUnreachable(from, to);
        continue;
      }
      const bytes = encodeMessages(batch);
      const copies = r() < this.#faults.duplicateRate ? 2 : 1;
      if (copies === 2) this.stats.messagesDuplicated += batch.length;
      for (let i = 0; i < copies; i++) {
        this.#host.later(this.#delay(), () => {
          // Arrived at the receiver's machine: it runs the handler when it is not paused.
          const dst = this.#reach(from.id, to);
          if (dst === null) {
            this.stats.messagesDropped += batch.length;
            return;
          }
          dst.clock.run(() => this.#deliver(from.id, dst, bytes));
        });
      }
    }
  }

  #deliver(from: NodeId, dst: _Endpoint, bytes: Uint8Array): void {
    if (!this.#alive(dst)) return;
    const msgs = decodeMessages(bytes);
    const refusal = dst.validator.checkSender(from) ??
      dst.validator.checkBatch(from, msgs, "messages");
    if (refusal !== null) {
      this.#host.violation(
        "peer-refusal",
        `${dst.id} would refuse a batch from ${from} (${refusal.kind}): ${refusal.reason}`,
      );
      return;
    }
    try {
      dst.handlers.onMessages(msgs);
    } catch (e) {
      if (!(e instanceof PeerRefusedError)) throw e;
      this.#host.violation("peer-refusal", `${dst.id} refused a batch from ${from}: ${e.message}`);
    }
  }

  /** Now and then the sender's transport gives up on a peer and says so. */
  #maybeUnreachable(from: _Endpoint, peer: NodeId): void {
    if (this.#host.random() >= 0.3) return;
    from.clock.schedule(20 + this.#host.random() * 180, () => {
      if (this.#alive(from)) from.handlers.onUnreachable?.(peer);
    });
  }

  async #sendSnapshot(
    from: _Endpoint,
    msg: Message,
    open: () => Promise<ReadableStream<Uint8Array>>,
  ): Promise<void> {
    if (msg.type !== MessageType.Snap) {
      throw new RangeError(`Cannot send snapshot: message type must be Snap, got ${msg.type}`);
    }
    this.stats.snapshotsSent++;
    try {
      // Like the real transport, give up after a while (a receiver that crashed never answers).
      await new Promise<void>((resolve, reject) => {
        this.#host.later(
          _TRANSFER_TIMEOUT_MS,
          () => reject(new Error(`the snapshot transfer to "${msg.to}" timed out`)),
        );
        this.#transfer(from, msg, open).then(resolve, reject);
      });
    } catch (e) {
      this.stats.snapshotSendsFailed++;
      throw e;
    }
  }

  async #transfer(
    from: _Endpoint,
    msg: Message,
    open: () => Promise<ReadableStream<Uint8Array>>,
  ): Promise<void> {
    const host = this.#host;
    const to = msg.to;
    if (this.#reach(from.id, to) === null) {
      this.#maybeUnreachable(from, to);
      throw new Error(`peer "${to}" is unreachable`);
    }
    // Read the file from the sender's disk first (its reads take simulated time too).
    const chunks: Uint8Array[] = [];
    for await (const chunk of await open()) chunks.push(chunk);
    const size = chunks.reduce((s, c) => s + c.length, 0);
    // About 10 MB/s, plus a network delay; some transfers break part-way.
    const transferMs = this.#delay() + size / 10_000;
    const breakAt = host.random() < 0.1 ? Math.floor(host.random() * chunks.length) : -1;
    const dst = await new Promise<_Endpoint | null>((resolve) => {
      host.later(transferMs, () => {
        const dst = this.#reach(from.id, to);
        if (dst === null) return resolve(null);
        dst.clock.run(() => resolve(this.#alive(dst) ? dst : null));
      });
    });
    if (dst === null) throw new Error(`peer "${to}" went away during the snapshot transfer`);
    const copy = decodeMessages(encodeMessages([msg]))[0]!;
    const refusal = dst.validator.checkSender(from.id) ??
      dst.validator.checkBatch(from.id, [copy], "snapshot");
    if (refusal !== null) {
      host.violation(
        "peer-refusal",
        `${dst.id} would refuse a snapshot from ${from.id} (${refusal.kind}): ${refusal.reason}`,
      );
      throw new Error(refusal.reason);
    }
    if (dst.uploading) throw new Error(`${dst.id} is receiving another snapshot (429)`);
    dst.uploading = true;
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent === breakAt) {
          controller.error(new Error("the connection broke during the snapshot upload"));
          return;
        }
        const chunk = chunks[sent++];
        if (chunk === undefined) controller.close();
        else controller.enqueue(chunk.slice());
      },
    }, { highWaterMark: 0 });
    try {
      await dst.handlers.onSnapshot(copy, body);
    } catch (e) {
      if (e instanceof PeerRefusedError && !_benignRefusal(e.message) && breakAt < 0) {
        host.violation(
          "peer-refusal",
          `${dst.id} refused the snapshot at ${msg.snapshot?.index} from ${from.id}: ${e.message}`,
        );
      }
      throw new Error(`${dst.id} did not take the snapshot: ${(e as Error)?.message ?? e}`);
    } finally {
      dst.uploading = false;
    }
    this.stats.snapshotsReceived++;
    // The answer travels back.
    await new Promise<void>((resolve) => host.later(this.#delay(), resolve));
    host.note(`${dst.id} stored the snapshot at ${msg.snapshot?.index} from ${from.id}`);
  }
}

/** How long a snapshot transfer may take before the sender gives up. */
const _TRANSFER_TIMEOUT_MS = 5_000;

/**
 * Refusals a correct receiver may give a correct sender: a duplicate upload of a snapshot being
 * received, or a snapshot the receiver's state overtook while it was being uploaded.
 */
function _benignRefusal(reason: string): boolean {
  return /already being received/.test(reason);
}
