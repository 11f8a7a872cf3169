/**
 * The simulated network: a {@linkcode Transport} per node incarnation that carries the real wire
 * format ({@linkcode encodeMessages}) through the simulation's timers, with random delays, loss,
 * duplication, reordering and partitions. Snapshots stream from the sender's simulated disk, take
 * time by their size and may break part-way. Every delivery passes the peer validator a real node
 * runs in front of its core (`src/raft/validate.ts`), after the node's cluster check (the HTTP
 * transport's `x-raftkv-cluster`: each batch carries the cluster id its sender knew); a batch
 * between correct nodes that the validator, the cluster check or the core refuses fails the run
 * (`peer-refusal`). {@linkcode SimNetwork.sendFromOtherCluster} delivers another cluster's.
 * As the HTTP transport, a node reaches only the peers in its address book (its bootstrap
 * members, then what the node passes to `setPeers`: the members whose addresses it knows);
 * messages, snapshots and members queries for any other are dropped.
 *
 * @module
 */

import { type Message, MessageType, type NodeId } from "../../src/raft/types.ts";
import { decodeMessages, encodeMessages } from "../../src/transport/codec.ts";
import { coalesceMessages } from "../../src/transport/coalesce.ts";
import {
  PeerNoSpaceError,
  PeerRefusedError,
  type Transport,
} from "../../src/transport/transport.ts";
import type { CommittedMembers, TransportHandlers } from "../../src/transport/transport.ts";
import { PeerValidator } from "../../src/raft/validate.ts";
import { decodeCommand } from "../../src/kv/state_machine.ts";
import type { NodeClock } from "./node_clock.ts";
import type { FaultOptions, SimulationStats } from "./simulator.ts";

/** The entry bytes one merged append may carry (the real transport's default batch size). */
const _MAX_MERGED_ENTRY_BYTES = 8 * 1024 * 1024;

/** What the network needs from the simulation. */
export interface NetworkHost {
  /** The fault mix (its delays, loss and duplication rates). */
  faults: FaultOptions;
  /** The counters; the network counts its messages and snapshot transfers. */
  stats: SimulationStats;
  /** The run's seeded random source. */
  random: () => number;
  /** Runs `fn` after `ms` of shared time, on no node. */
  later: (ms: number, fn: () => void) => void;
  /** Records a line of the trace. */
  note: (text: string) => void;
  /** Fails the run with a `peer-refusal` (unless that check is switched off). */
  refused: (detail: string) => void;
}

interface _Endpoint {
  id: NodeId;
  clock: NodeClock;
  handlers: TransportHandlers;
  validator: PeerValidator;
  /** Set while a snapshot upload runs (a real peer handler takes one at a time). */
  uploading: boolean;
  /** The peers this incarnation has addresses for. */
  book: ReadonlySet<NodeId>;
  closed: boolean;
}

/** Connects the nodes of one simulated cluster; see the module doc. */
export class SimNetwork {
  /** A partition: the directed link from `a` to `b` is cut while it returns true. */
  cut: ((a: NodeId, b: NodeId) => boolean) | null = null;
  readonly #host: NetworkHost;
  readonly #members: NodeId[];
  readonly #live = new Map<NodeId, _Endpoint>();

  /** The network of a cluster of `members`, driven by `host`. */
  constructor(host: NetworkHost, members: NodeId[]) {
    [this.#host, this.#members] = [host, members];
  }

  /**
   * Connects an incarnation of node `id`, which knows the addresses of `peers` (its bootstrap
   * members) until it says otherwise; its messages stop when `clock` dies.
   */
  connect(
    id: NodeId,
    clock: NodeClock,
    handlers: TransportHandlers,
    peers: readonly NodeId[],
  ): Transport {
    const validator = new PeerValidator({
      self: id,
      members: this.#members,
      checkEntryData: decodeCommand,
    });
    const book = new Set(peers);
    const ep: _Endpoint = { id, clock, handlers, validator, uploading: false, closed: false, book };
    this.#live.set(id, ep);
    return {
      send: (messages) => this.#send(ep, messages),
      sendSnapshot: (msg, open) => this.#sendSnapshot(ep, msg, open),
      queryMembers: (peer) => this.#queryMembers(ep, peer),
      setPeers: (peers) => {
        ep.book = new Set(peers.map((p) => p.id));
      },
      close: () => {
        ep.closed = true;
        return Promise.resolve();
      },
    };
  }

  #alive(ep: _Endpoint): boolean {
    return !ep.closed && !ep.clock.dead && this.#live.get(ep.id) === ep;
  }

  /** The live endpoint of `to` if `from` can reach it now. */
  #reach(from: NodeId, to: NodeId): _Endpoint | null {
    const ep = this.#live.get(to);
    return ep && this.#alive(ep) && !this.cut?.(from, to) ? ep : null;
  }

  #delay(): number {
    const { faults: f, random: r } = this.#host;
    return f.minDelayMs + r() * (f.maxDelayMs - f.minDelayMs) +
      (r() < f.slowRate ? r() * f.slowDelayMs : 0);
  }

  #send(from: _Endpoint, messages: Message[]): void {
    if (!this.#alive(from)) return;
    const { faults, stats, random: r } = this.#host;
    for (const [to, queued] of Map.groupBy(messages, (m) => m.to)) {
      if (!from.book.has(to)) {
        // The HTTP transport drops them too: it has no address to send them to.
        stats.messagesUnaddressed += queued.length;
        continue;
      }
      // As the real transport does with what it queued for a peer.
      const batch = coalesceMessages(queued, _MAX_MERGED_ENTRY_BYTES);
      stats.messagesSent += batch.length;
      if (this.#reach(from.id, to) === null || r() < faults.dropRate) {
        stats.messagesDropped += batch.length;
        this.#maybeUnreachable(from, to);
        continue;
      }
      const bytes = encodeMessages(batch);
      const cluster = from.handlers.clusterId?.();
      const copies = r() < faults.duplicateRate ? 2 : 1;
      if (copies === 2) stats.messagesDuplicated += batch.length;
      for (let i = 0; i < copies; i++) {
        this.#host.later(this.#delay(), () => {
          // Arrived at the receiver's machine: it runs the handler when it is not paused.
          const dst = this.#reach(from.id, to);
          if (dst) dst.clock.run(() => this.#deliver(from.id, dst, bytes, cluster));
          else stats.messagesDropped += batch.length;
        });
      }
    }
  }

  /**
   * Delivers `msgs` to `to` as if a node of cluster `cluster` sent them (another cluster's node
   * with the id of one of this cluster's members): resolves with whether the receiver refused
   * them for their cluster (false also when it was down, or cut off from that member).
   */
  sendFromOtherCluster(to: NodeId, msgs: Message[], cluster: string): Promise<boolean> {
    const from = msgs[0]!.from;
    const bytes = encodeMessages(msgs);
    return new Promise((resolve) => {
      this.#host.later(this.#delay(), () => {
        const dst = this.#reach(from, to);
        if (dst === null) return resolve(false);
        dst.clock.run(() => {
          if (!this.#alive(dst)) return resolve(false);
          const refused = (dst.handlers.checkCluster?.(cluster) ?? null) !== null;
          if (!refused) this.#take(from, dst, bytes);
          resolve(refused);
        });
      });
    });
  }

  /** Whether `dst` refuses what a node of cluster `cluster` sent it; a refusal fails the run. */
  #refusesCluster(from: NodeId, dst: _Endpoint, cluster: string | undefined): boolean {
    const refusal = dst.handlers.checkCluster?.(cluster) ?? null;
    if (refusal === null) return false;
    this.#host.refused(`${dst.id} refused ${from} for its cluster: ${refusal}`);
    return true;
  }

  #deliver(from: NodeId, dst: _Endpoint, bytes: Uint8Array, cluster: string | undefined): void {
    if (!this.#alive(dst)) return;
    if (this.#refusesCluster(from, dst, cluster)) return;
    this.#take(from, dst, bytes);
  }

  /** Hands a batch whose cluster passed to `dst`, as the peer handler's later checks do. */
  #take(from: NodeId, dst: _Endpoint, bytes: Uint8Array): void {
    if (this.#answerRemoved(from, dst)) return;
    const msgs = decodeMessages(bytes);
    if (!this.#accepts(from, dst, msgs, "messages")) return;
    try {
      dst.handlers.onMessages(msgs);
    } catch (e) {
      if (!(e instanceof PeerRefusedError)) throw e;
      this.#host.refused(`${dst.id} refused a batch from ${from}: ${e.message}`);
    }
  }

  /**
   * Whether `dst` answers `from` "removed" (the real peer handler's `410`, asked of the node
   * itself): the batch is dropped and the answer travels back to the sender, as the HTTP
   * transport's `onRemoved`.
   */
  #answerRemoved(from: NodeId, dst: _Endpoint): boolean {
    // As the HTTP transport: only a sender that counts itself a member by an older configuration
    // is told (its x-raftkv-member-since header).
    const src = this.#live.get(from);
    const since = src?.handlers.memberSince?.() ?? 0;
    if (src === undefined || since === 0) return false;
    const index = dst.handlers.removedAt?.(from, since) ?? 0;
    if (index === 0) return false;
    this.#host.stats.removedAnswers++;
    this.#host.later(this.#delay(), () => {
      if (!this.#alive(src) || this.cut?.(dst.id, from)) return;
      src.clock.run(() => src.handlers.onRemoved?.(dst.id, index));
    });
    return true;
  }

  /**
   * A members query (the HTTP transport's `POST /raft/members`): the request and the answer each
   * take a network delay and are lost to a partition or a dead node (null, as a timeout); the
   * receiver answers "removed" as for messages, else with its committed configuration.
   */
  #queryMembers(from: _Endpoint, to: NodeId): Promise<CommittedMembers | null> {
    if (!from.book.has(to)) return Promise.resolve(null);
    this.#host.stats.membersQueries++;
    return new Promise((resolve) => {
      const { faults, random: r } = this.#host;
      if (!this.#alive(from)) return resolve(null);
      const lost = faults.membersAnswerRate < 1 && r() >= faults.membersAnswerRate;
      this.#host.later(this.#delay(), () => {
        if (lost) return resolve(null);
        const dst = this.#reach(from.id, to);
        if (dst === null) return resolve(null);
        dst.clock.run(() => {
          if (!this.#alive(dst)) return resolve(null);
          if (this.#refusesCluster(from.id, dst, from.handlers.clusterId?.())) return resolve(null);
          if (this.#answerRemoved(from.id, dst)) return resolve(null);
          if (dst.validator.checkSender(from.id) !== null) return resolve(null);
          const conf = dst.handlers.committedMembers?.() ?? null;
          const answer = conf === null ? null : structuredClone(conf);
          this.#host.later(this.#delay(), () => {
            if (!this.#alive(from) || this.cut?.(to, from.id)) return resolve(null);
            from.clock.run(() => resolve(answer));
          });
        });
      });
    });
  }

  /** Whether the real peer validator of `dst` takes `msgs` from `from`; a refusal fails the run. */
  #accepts(from: NodeId, dst: _Endpoint, msgs: Message[], kind: "messages" | "snapshot"): boolean {
    const refusal = dst.validator.checkSender(from) ?? dst.validator.checkBatch(from, msgs, kind);
    if (refusal === null) return true;
    this.#host.refused(
      `${dst.id} would refuse ${kind} from ${from} (${refusal.kind}): ${refusal.reason}`,
    );
    return false;
  }

  /** Now and then the sender's transport gives up on a peer and says so. */
  #maybeUnreachable(from: _Endpoint, peer: NodeId): void {
    const r = this.#host.random;
    if (r() >= 0.3) return;
    from.clock.schedule(20 + r() * 180, () => {
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
    if (!from.book.has(msg.to)) throw new Error(`no address for peer "${msg.to}"`);
    const stats = this.#host.stats;
    stats.snapshotsSent++;
    // Like the real transport, give up after a while (a receiver that crashed never answers).
    const timeout = new Promise<never>((_, reject) =>
      this.#host.later(
        5_000,
        () => reject(new Error(`the snapshot transfer to "${msg.to}" timed out`)),
      )
    );
    await Promise.race([this.#transfer(from, msg, open), timeout]).catch((e) => {
      stats.snapshotSendsFailed++;
      throw e;
    });
  }

  async #transfer(
    from: _Endpoint,
    msg: Message,
    open: () => Promise<ReadableStream<Uint8Array>>,
  ): Promise<void> {
    const { later, random: r, faults } = this.#host;
    const to = msg.to;
    if (this.#reach(from.id, to) === null) {
      this.#maybeUnreachable(from, to);
      throw new Error(`peer "${to}" is unreachable`);
    }
    // Read the file from the sender's disk first (its reads take simulated time too).
    const chunks = await Array.fromAsync(await open());
    // About 10 MB/s, plus a network delay; some transfers break part-way (snapshotBreakRate).
    const transferMs = this.#delay() + chunks.reduce((s, c) => s + c.length, 0) / 10_000;
    const breakAt = r() < faults.snapshotBreakRate ? Math.floor(r() * chunks.length) : -1;
    const dst = await new Promise<_Endpoint | null>((resolve) =>
      later(transferMs, () => {
        const dst = this.#reach(from.id, to);
        if (dst === null) resolve(null);
        else dst.clock.run(() => resolve(this.#alive(dst) ? dst : null));
      })
    );
    if (dst === null) throw new Error(`peer "${to}" went away during the snapshot transfer`);
    const copy = decodeMessages(encodeMessages([msg]))[0]!;
    if (this.#refusesCluster(from.id, dst, from.handlers.clusterId?.())) {
      throw new Error(`${dst.id} refused its cluster`);
    }
    if (!this.#accepts(from.id, dst, [copy], "snapshot")) throw new Error(`${dst.id} refused it`);
    if (dst.uploading) throw new Error(`${dst.id} is receiving another snapshot (429)`);
    dst.uploading = true;
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent === breakAt) return controller.error(new Error("the connection broke mid-upload"));
        const chunk = chunks[sent++];
        if (chunk === undefined) controller.close();
        else controller.enqueue(chunk.slice());
      },
    }, { highWaterMark: 0 });
    try {
      await dst.handlers.onSnapshot(copy, body);
    } catch (e) {
      if (e instanceof PeerNoSpaceError) this.#host.stats.snapshotsNoRoom++;
      // A correct receiver may refuse a duplicate upload of a snapshot it is receiving.
      if (
        e instanceof PeerRefusedError && !/already being received/.test(e.message) && breakAt < 0
      ) {
        this.#host.refused(
          `${dst.id} refused the snapshot at ${msg.snapshot?.index} from ${from.id}: ${e.message}`,
        );
      }
      const detail = `${dst.id} did not take the snapshot: ${(e as Error)?.message ?? e}`;
      // As the HTTP transport tells a 507 apart.
      throw e instanceof PeerNoSpaceError ? new PeerNoSpaceError(detail) : new Error(detail);
    } finally {
      dst.uploading = false;
    }
    this.#host.stats.snapshotsReceived++;
    await new Promise<void>((resolve) => later(this.#delay(), resolve)); // the answer travels back
    this.#host.note(`${dst.id} stored the snapshot at ${msg.snapshot?.index} from ${from.id}`);
  }
}
