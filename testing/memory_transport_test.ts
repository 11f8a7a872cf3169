import assert from "node:assert/strict";
import { type Message, MessageType, type NodeId } from "../src/raft/types.ts";
import { MemoryNetwork, type MemoryTransport } from "./memory_transport.ts";
import { Condition, sampleMessage, testTransportConformance } from "./transport_conformance.ts";
import { PeerRefusedError, type TransportHandlers } from "../src/transport/transport.ts";

testTransportConformance("MemoryTransport", (live) => {
  const network = new MemoryNetwork();
  const transports = new Map(
    live.map((node) => [node.id, network.connect(node.id, node.handlers)]),
  );
  return Promise.resolve({
    transports,
    async close() {
      for (const t of transports.values()) await t.close();
    },
  });
});

interface _Node {
  transport: MemoryTransport;
  received: Message[];
  unreachable: NodeId[];
}

function _connect(network: MemoryNetwork, id: NodeId, changed: Condition): _Node {
  const node: _Node = { transport: null!, received: [], unreachable: [] };
  const handlers: TransportHandlers = {
    onMessages(messages) {
      node.received.push(...messages);
      changed.notify();
    },
    onSnapshot: () => Promise.resolve(),
    onUnreachable(peer) {
      node.unreachable.push(peer);
      changed.notify();
    },
  };
  node.transport = network.connect(id, handlers);
  return node;
}

Deno.test("MemoryNetwork delivers nothing synchronously", async () => {
  const network = new MemoryNetwork();
  const changed = new Condition();
  const a = _connect(network, "a", changed);
  const b = _connect(network, "b", changed);
  try {
    a.transport.send([sampleMessage(MessageType.Vote, "a", "b", 1)]);
    assert.strictEqual(b.received.length, 0);
    await changed.until(() => b.received.length === 1, "the vote");
  } finally {
    await a.transport.close();
    await b.transport.close();
  }
});

Deno.test("MemoryNetwork partitions links both ways until healed", async () => {
  const network = new MemoryNetwork();
  const changed = new Condition();
  const a = _connect(network, "a", changed);
  const b = _connect(network, "b", changed);
  const c = _connect(network, "c", changed);
  try {
    network.partition("a", "b");
    a.transport.send([
      sampleMessage(MessageType.App, "a", "b", 1),
      sampleMessage(MessageType.App, "a", "c", 2),
    ]);
    b.transport.send([sampleMessage(MessageType.AppResp, "b", "a", 3)]);
    await changed.until(
      () => a.unreachable.length === 1 && b.unreachable.length === 1 && c.received.length === 1,
      "the partition to show",
    );
    assert.deepStrictEqual(a.unreachable, ["b"]);
    assert.deepStrictEqual(b.unreachable, ["a"]);
    assert.deepStrictEqual(b.received, []);
    assert.deepStrictEqual(network.stats(), {
      delivered: 1,
      dropped: 0,
      unreachable: 2,
      refused: 0,
    });

    network.heal();
    a.transport.send([sampleMessage(MessageType.App, "a", "b", 4)]);
    await changed.until(() => b.received.length === 1, "delivery after heal()");
  } finally {
    await a.transport.close();
    await b.transport.close();
    await c.transport.close();
  }
});

Deno.test("MemoryNetwork drops messages the drop filter selects, silently", async () => {
  const network = new MemoryNetwork();
  const changed = new Condition();
  const a = _connect(network, "a", changed);
  const b = _connect(network, "b", changed);
  try {
    network.setDropFilter((m) => m.type === MessageType.Heartbeat);
    a.transport.send([
      sampleMessage(MessageType.Heartbeat, "a", "b", 1),
      sampleMessage(MessageType.App, "a", "b", 2),
    ]);
    await changed.until(() => b.received.length === 1, "the App message");
    assert.strictEqual(b.received[0]!.type, MessageType.App);
    assert.deepStrictEqual(a.unreachable, []);
    assert.strictEqual(network.stats().dropped, 1);

    network.setDropFilter(null);
    a.transport.send([sampleMessage(MessageType.Heartbeat, "a", "b", 3)]);
    await changed.until(() => b.received.length === 2, "the heartbeat");
  } finally {
    await a.transport.close();
    await b.transport.close();
  }
});

Deno.test("MemoryNetwork hands receivers copies when it uses the codec, and originals otherwise", async () => {
  for (const useCodec of [true, false]) {
    const network = new MemoryNetwork({ useCodec });
    const changed = new Condition();
    const a = _connect(network, "a", changed);
    const b = _connect(network, "b", changed);
    try {
      const msg = sampleMessage(MessageType.App, "a", "b", 1, [4]);
      a.transport.send([msg]);
      await changed.until(() => b.received.length === 1, "the message");
      assert.deepStrictEqual(b.received[0], msg);
      assert.strictEqual(b.received[0] === msg, !useCodec);
    } finally {
      await a.transport.close();
      await b.transport.close();
    }
  }
});

Deno.test("MemoryNetwork drops deliveries pending for a node that closes", async () => {
  const network = new MemoryNetwork();
  const changed = new Condition();
  const a = _connect(network, "a", changed);
  const b = _connect(network, "b", changed);
  a.transport.send([sampleMessage(MessageType.App, "a", "b", 1)]);
  await b.transport.close();
  // The reconnected node does not get what was in flight to its previous transport.
  const b2 = _connect(network, "b", changed);
  a.transport.send([sampleMessage(MessageType.App, "a", "b", 2)]);
  await changed.until(() => b2.received.length === 1, "the message to the new transport");
  assert.strictEqual(b2.received[0]!.term, 3);
  assert.deepStrictEqual(b.received, []);
  await a.transport.close();
  await b2.transport.close();
});

Deno.test("MemoryNetwork refuses to connect a node twice", async () => {
  const network = new MemoryNetwork();
  const a = _connect(network, "a", new Condition());
  try {
    assert.throws(() => _connect(network, "a", new Condition()), RangeError);
  } finally {
    await a.transport.close();
  }
});

Deno.test("MemoryTransport rejects a snapshot to an unreachable peer and reports it", async () => {
  const network = new MemoryNetwork();
  const changed = new Condition();
  const a = _connect(network, "a", changed);
  try {
    let opened = false;
    await assert.rejects(
      a.transport.sendSnapshot(sampleMessage(MessageType.Snap, "a", "z", 1), () => {
        opened = true;
        return Promise.resolve(new ReadableStream());
      }),
      /unreachable/,
    );
    assert.strictEqual(opened, false);
    assert.deepStrictEqual(a.unreachable, ["z"]);
    await assert.rejects(
      a.transport.sendSnapshot(
        sampleMessage(MessageType.App, "a", "z", 1),
        () => Promise.resolve(new ReadableStream()),
      ),
      RangeError,
    );
  } finally {
    await a.transport.close();
  }
});

Deno.test("MemoryNetwork counts a batch its receiver refuses and goes on delivering, as a real transport answers a refusal", async () => {
  const network = new MemoryNetwork();
  const changed = new Condition();
  const a = _connect(network, "a", changed);
  const received: Message[] = [];
  const b = network.connect("b", {
    onMessages(messages) {
      if (messages.some((m) => m.from === "a")) throw new PeerRefusedError("a is not a member");
      received.push(...messages);
      changed.notify();
    },
    onSnapshot: () => Promise.resolve(),
  });
  const c = _connect(network, "c", changed);
  try {
    a.transport.send([sampleMessage(MessageType.PreVote, "a", "b", 1)]);
    c.transport.send([sampleMessage(MessageType.App, "c", "b", 2)]);
    await changed.until(() => received.length === 1, "the member's message after the refusal");
    assert.deepStrictEqual(network.stats(), {
      delivered: 2,
      dropped: 0,
      unreachable: 0,
      refused: 1,
    });
  } finally {
    await a.transport.close();
    await b.close();
    await c.transport.close();
  }
});
