/**
 * The behaviour every {@linkcode Transport} must show, as a suite of `Deno.test` cases any
 * implementation registers with {@linkcode testTransportConformance} and a factory that builds a
 * small cluster of it.
 *
 * Also exports {@linkcode Condition}, the deadline-bound waiting the suite (and transport tests)
 * use instead of sleeps.
 *
 * @module
 */

import assert from "node:assert/strict";
import { EntryType, type Message, MessageType, type NodeId } from "../src/raft/types.ts";
import {
  PeerNoSpaceError,
  type Transport,
  type TransportHandlers,
} from "../src/transport/transport.ts";

/** A live node of a conformance cluster: what its transport must deliver to. */
export interface ConformanceNode {
  /** The node's id. */
  id: NodeId;
  /** Where its transport (and whatever receives for it) must deliver. */
  handlers: TransportHandlers;
}

/** A cluster built by a {@linkcode ConformanceFactory}. */
export interface ConformanceCluster {
  /** The transport of every live node. */
  transports: Map<NodeId, Transport>;
  /** Closes every transport and whatever receives for them. */
  close(): Promise<void>;
}

/**
 * Builds a cluster in which every live node has a transport that can address every node, live or
 * dead; nothing must answer for the dead ones (so sends to them fail and get reported).
 */
export type ConformanceFactory = (
  live: ConformanceNode[],
  dead: NodeId[],
) => Promise<ConformanceCluster>;

/**
 * Lets tests wait, with a deadline, for a condition that callbacks make true: callbacks call
 * {@linkcode Condition.notify} after changing state, waiters re-check their predicate.
 */
export class Condition {
  readonly #waiters = new Set<() => void>();

  /** Makes every waiter re-check its predicate. */
  notify(): void {
    for (const check of [...this.#waiters]) check();
  }

  /**
   * Resolves once `predicate()` is true (checked now and after each notify).
   *
   * @throws {Error} naming `what` if `timeoutMs` (default 10000) passes first, or what
   * `predicate` threw.
   */
  until(predicate: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const finish = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      const check = () => {
        try {
          if (!predicate()) return;
        } catch (err) {
          finish();
          reject(err);
          return;
        }
        finish();
        resolve();
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }
}

/** What a recording node saw. */
interface _Recorder {
  handlers: TransportHandlers;
  batches: Message[][];
  unreachable: NodeId[];
}

function _recorder(changed: Condition, onSnapshot?: TransportHandlers["onSnapshot"]): _Recorder {
  const rec: _Recorder = {
    batches: [],
    unreachable: [],
    handlers: {
      onMessages(messages) {
        rec.batches.push(messages);
        changed.notify();
      },
      onSnapshot: onSnapshot ?? (() => Promise.reject(new Error("no snapshot expected"))),
      onUnreachable(peer) {
        rec.unreachable.push(peer);
        changed.notify();
      },
    },
  };
  return rec;
}

/** Nodes "a" and "b" with the handlers of two recorders. */
function _nodes(a: _Recorder, b: _Recorder): ConformanceNode[] {
  return [{ id: "a", handlers: a.handlers }, { id: "b", handlers: b.handlers }];
}

/** Builds a message with every field set from `seed`. */
export function sampleMessage(
  type: MessageType,
  from: NodeId,
  to: NodeId,
  seed: number,
  entrySizes: number[] = [],
): Message {
  return {
    type,
    from,
    to,
    term: seed + 1,
    logTerm: seed,
    index: seed * 10,
    entries: entrySizes.map((size, i) => ({
      term: seed + 1,
      index: seed * 10 + i + 1,
      type: size === 0 ? EntryType.Noop : EntryType.Normal,
      data: _pattern(size, seed + i),
    })),
    commit: seed * 5,
    reject: seed % 2 === 1,
    rejectHint: seed * 3,
    context: seed % 7,
    snapshot: type === MessageType.Snap
      ? { index: seed * 100, term: seed, voters: [from, to, "n\u00e9ud-3"] }
      : null,
  };
}

function _pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 31 + seed * 7) & 0xff;
  return out;
}

/** The byte at position `i` of the generated test snapshot. */
function _snapshotByte(i: number): number {
  return (i * 131 + (i >>> 16)) & 0xff;
}

const _SNAPSHOT_BYTES = 5 << 20;
const _CHUNK_BYTES = 64 << 10;
/** How far the snapshot source may run ahead of the receiver: more means it was buffered. */
const _STREAM_SLACK_BYTES = 2 << 20;

/**
 * Registers the conformance tests for a transport, named `"<name>: ..."`. `factory` is called once
 * per test.
 */
export function testTransportConformance(name: string, factory: ConformanceFactory): void {
  Deno.test(`${name}: messages with entries arrive intact and in order from one sender`, async () => {
    const changed = new Condition();
    const a = _recorder(changed);
    const b = _recorder(changed);
    const cluster = await factory(_nodes(a, b), []);
    try {
      const types = Object.values(MessageType).filter((v) => typeof v === "number");
      const sizes = [[], [0], [1], [3, 0, 7], [100_000], [1 << 20], [5, 6, 7, 8, 9, 10]];
      const toB: Message[] = [];
      const toA: Message[] = [];
      let seed = 0;
      for (let call = 0; call < 60; call++) {
        const batch: Message[] = [];
        for (let k = 0; k < 1 + (call % 4); k++, seed++) {
          const type = types[seed % types.length]!;
          batch.push(sampleMessage(type, "a", "b", seed, sizes[seed % sizes.length]!));
        }
        toB.push(...batch);
        cluster.transports.get("a")!.send(batch);
        const reply = sampleMessage(MessageType.AppResp, "b", "a", call);
        toA.push(reply);
        cluster.transports.get("b")!.send([reply]);
      }
      const count = (r: _Recorder) => r.batches.reduce((n, batch) => n + batch.length, 0);
      await changed.until(
        () => count(b) >= toB.length && count(a) >= toA.length,
        "every message to arrive",
      );
      assert.deepStrictEqual(b.batches.flat(), toB);
      assert.deepStrictEqual(a.batches.flat(), toA);
      assert.deepStrictEqual([...a.unreachable, ...b.unreachable], []);
    } finally {
      await cluster.close();
    }
  });

  Deno.test(`${name}: a dead peer does not delay the live one and is reported unreachable`, async () => {
    const changed = new Condition();
    const a = _recorder(changed);
    const b = _recorder(changed);
    const cluster = await factory(_nodes(a, b), ["c"]);
    try {
      const start = performance.now();
      cluster.transports.get("a")!.send([
        sampleMessage(MessageType.App, "a", "c", 1, [10]),
        sampleMessage(MessageType.App, "a", "b", 2, [10]),
        sampleMessage(MessageType.Heartbeat, "a", "c", 3),
      ]);
      await changed.until(() => b.batches.length > 0, "b to receive its message");
      const elapsed = performance.now() - start;
      assert.ok(elapsed < 1000, `b received its message only after ${elapsed} ms`);
      assert.deepStrictEqual(b.batches.flat(), [sampleMessage(MessageType.App, "a", "b", 2, [10])]);
      await changed.until(() => a.unreachable.includes("c"), `"c" to be reported unreachable`);
      assert.ok(!a.unreachable.includes("b"), `"b" was reported unreachable`);
    } finally {
      await cluster.close();
    }
  });

  Deno.test(`${name}: a snapshot is streamed whole and the sender resolves after it is stored`, async () => {
    const changed = new Condition();
    const events: string[] = [];
    let received = 0;
    let receivedMsg: Message | null = null;
    const b = _recorder(changed, async (msg, body) => {
      receivedMsg = msg;
      for await (const chunk of body) {
        for (let i = 0; i < chunk.length; i++) {
          if (chunk[i] !== _snapshotByte(received + i)) {
            throw new Error(`Snapshot byte ${received + i} is wrong`);
          }
        }
        received += chunk.length;
        changed.notify();
      }
      events.push("stored");
    });
    const a = _recorder(changed);
    const cluster = await factory(_nodes(a, b), []);
    try {
      const msg = sampleMessage(MessageType.Snap, "a", "b", 4);
      let opened = 0;
      await cluster.transports.get("a")!.sendSnapshot(msg, () => {
        opened++;
        return Promise.resolve(_snapshotSource(changed, () => received));
      });
      events.push("sent");
      assert.strictEqual(received, _SNAPSHOT_BYTES);
      assert.deepStrictEqual(events, ["stored", "sent"]);
      assert.deepStrictEqual(receivedMsg, msg);
      assert.strictEqual(opened, 1);
    } finally {
      await cluster.close();
    }
  });

  Deno.test(`${name}: a snapshot the receiver fails to store rejects the sender`, async () => {
    const changed = new Condition();
    const b = _recorder(changed, async (_msg, body) => {
      const reader = body.getReader();
      await reader.read();
      reader.releaseLock();
      throw new Error("disk full");
    });
    const a = _recorder(changed);
    const cluster = await factory(_nodes(a, b), []);
    try {
      const transport = cluster.transports.get("a")!;
      await assert.rejects(
        transport.sendSnapshot(
          sampleMessage(MessageType.Snap, "a", "b", 5),
          () => Promise.resolve(_snapshotSource(changed, () => Infinity)),
        ),
        // How much of the receiver's error the sender learns is up to the transport: the HTTP
        // one keeps the receiver's local details (file paths) out of its answers.
        (err: unknown) => err instanceof Error,
      );
      // The transport still works afterwards.
      transport.send([sampleMessage(MessageType.Heartbeat, "a", "b", 6)]);
      await changed.until(() => b.batches.length === 1, "a message after the failed snapshot");
    } finally {
      await cluster.close();
    }
  });

  Deno.test(`${name}: a snapshot the receiver has no room for rejects the sender with PeerNoSpaceError`, async () => {
    const changed = new Condition();
    const b = _recorder(changed, async (_msg, body) => {
      await body.cancel();
      throw new PeerNoSpaceError("no space left on device for the snapshot at index 5");
    });
    const a = _recorder(changed);
    const cluster = await factory(_nodes(a, b), []);
    try {
      // The sender waits before it sends that peer a snapshot again (RaftNode), and only then.
      await assert.rejects(
        cluster.transports.get("a")!.sendSnapshot(
          sampleMessage(MessageType.Snap, "a", "b", 5),
          () => Promise.resolve(_snapshotSource(changed, () => Infinity)),
        ),
        (err: unknown) =>
          err instanceof PeerNoSpaceError && /no space left on device/.test(err.message),
      );
    } finally {
      await cluster.close();
    }
  });

  Deno.test(`${name}: close() stops sending and releases everything`, async () => {
    const changed = new Condition();
    const a = _recorder(changed);
    const b = _recorder(changed);
    const cluster = await factory(_nodes(a, b), ["c"]);
    const transport = cluster.transports.get("a")!;
    try {
      transport.send([sampleMessage(MessageType.App, "a", "b", 1)]);
      await changed.until(() => b.batches.length === 1, "the first message");
      // Leave work behind: messages queued and retrying for the dead peer, and for the live one.
      for (let i = 0; i < 20; i++) {
        transport.send([
          sampleMessage(MessageType.App, "a", "c", i, [1000]),
          sampleMessage(MessageType.App, "a", "b", i, [1000]),
        ]);
      }
    } finally {
      await cluster.close();
    }
    // Closed transports accept calls without effect (the test sanitizers check nothing leaked).
    transport.send([sampleMessage(MessageType.App, "a", "b", 2)]);
    await assert.rejects(
      transport.sendSnapshot(
        sampleMessage(MessageType.Snap, "a", "b", 3),
        () => Promise.resolve(_snapshotSource(changed, () => Infinity)),
      ),
      Error,
    );
    await transport.close();
  });
}

/**
 * A generated {@linkcode _SNAPSHOT_BYTES}-byte snapshot in chunks. It refuses to run more than
 * {@linkcode _STREAM_SLACK_BYTES} ahead of `received()`: a transport that buffered the whole
 * snapshot before delivering it would time out here.
 */
function _snapshotSource(changed: Condition, received: () => number): ReadableStream<Uint8Array> {
  let produced = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (produced >= _SNAPSHOT_BYTES) {
        controller.close();
        return;
      }
      await changed.until(
        () => produced - received() <= _STREAM_SLACK_BYTES,
        "the receiver to catch up (was the snapshot buffered instead of streamed?)",
      );
      const size = Math.min(_CHUNK_BYTES, _SNAPSHOT_BYTES - produced);
      const chunk = new Uint8Array(size);
      for (let i = 0; i < size; i++) chunk[i] = _snapshotByte(produced + i);
      produced += size;
      controller.enqueue(chunk);
    },
  });
}
