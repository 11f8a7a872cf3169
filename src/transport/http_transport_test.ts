import assert from "node:assert/strict";
import { type Message, message, MessageType, type NodeId } from "../raft/types.ts";
import { PeerValidator } from "../raft/validate.ts";
import { encodeMessages } from "./codec.ts";
import {
  CLUSTER_HEADER,
  countPeerRefusals,
  createPeerHandler,
  FROM_HEADER,
  HttpTransport,
  type HttpTransportOptions,
  MEMBER_SINCE_HEADER,
  MEMBERS_PATH,
  MESSAGE_HEADER,
  parseCommittedMembers,
  PEER_REFUSAL_REASONS,
  type PeerRefusalReason,
  REMOVED_AT_HEADER,
  STREAM_PATH,
} from "./http_transport.ts";
import {
  Condition,
  sampleMessage,
  testTransportConformance,
} from "../../testing/transport_conformance.ts";
import { PeerNoSpaceError, PeerRefusedError, type TransportHandlers } from "./transport.ts";
import { serveMutualTls, type TlsServer } from "./tls_server.ts";
import { makeCertificates } from "../../testing/certs.ts";
import { waitFor } from "../../testing/harness.ts";
import { parseSamples, sample } from "../../testing/prometheus.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { H2Client } from "./h2_client.ts";
import { join } from "node:path";

/** Options that keep failure tests short. */
const _FAST: Partial<HttpTransportOptions> = {
  rpcTimeoutMs: 1000,
  maxConnRetryAttempts: 2,
  retryBackoffMs: 5,
};

function _serve(handler: (req: Request) => Promise<Response>): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handler);
}

function _url(server: Deno.HttpServer<Deno.NetAddr>): string {
  return `http://127.0.0.1:${server.addr.port}`;
}

/** A URL where nothing listens (the port was free a moment ago). */
function _deadUrl(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return `http://127.0.0.1:${port}`;
}

testTransportConformance("HttpTransport", (live, dead) => {
  const servers = new Map(
    live.map((node) => [node.id, _serve(createPeerHandler(node.handlers, { self: node.id }))]),
  );
  const peers = [
    ...live.map((node) => ({ id: node.id, rpcUrl: _url(servers.get(node.id)!) })),
    ...dead.map((id) => ({ id, rpcUrl: _deadUrl() })),
  ];
  const transports = new Map<NodeId, HttpTransport>();
  for (const node of live) {
    transports.set(node.id, new HttpTransport(node.handlers, { ..._FAST, self: node.id, peers }));
  }
  return Promise.resolve({
    transports,
    async close() {
      for (const t of transports.values()) await t.close();
      for (const s of servers.values()) await s.shutdown();
    },
  });
});

testTransportConformance("HttpTransport over mutual TLS", async (live, dead) => {
  const dir = await Deno.makeTempDir();
  const servers = new Map<NodeId, TlsServer>();
  const transports = new Map<NodeId, HttpTransport>();
  const close = async () => {
    for (const t of transports.values()) await t.close();
    for (const s of servers.values()) await s.close();
    await Deno.remove(dir, { recursive: true });
  };
  try {
    const certs = await makeCertificates(dir, { nodes: live.map((node) => node.id) });
    const read = (path: string) => Deno.readTextFileSync(path);
    const ca = read(certs.ca);
    const files = (id: NodeId) => ({
      ca,
      cert: read(certs.node(id).cert),
      key: read(certs.node(id).key),
    });
    for (const node of live) {
      const handler = createPeerHandler(node.handlers, {
        self: node.id,
        requirePeerIdentity: true,
      });
      servers.set(
        node.id,
        await serveMutualTls(
          { hostname: "127.0.0.1", port: 0, ...files(node.id) },
          (req, info) => handler(req, info),
        ),
      );
    }
    const peers = [
      ...live.map((node) => ({
        id: node.id,
        rpcUrl: `https://127.0.0.1:${servers.get(node.id)!.addr.port}`,
      })),
      ...dead.map((id) => ({ id, rpcUrl: _deadUrl().replace("http:", "https:") })),
    ];
    for (const node of live) {
      transports.set(
        node.id,
        new HttpTransport(node.handlers, { ..._FAST, self: node.id, peers, tls: files(node.id) }),
      );
    }
    return { transports, close };
  } catch (err) {
    await close();
    throw err;
  }
});

/** Handlers that record what arrives and notify `changed`. */
/**
 * A peer server whose every request is counted as it arrives (notifying `changed`) and then held
 * until `release()`, before `handler` answers it.
 */
function _gated(handler: (req: Request) => Promise<Response>, changed: Condition) {
  let arrived = 0;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  const server = _serve(async (req) => {
    arrived++;
    changed.notify();
    await gate;
    return handler(req);
  });
  return { server, release, arrived: () => arrived };
}

function _recording(changed: Condition) {
  const rec = {
    batches: [] as Message[][],
    unreachable: [] as NodeId[],
    handlers: {
      onMessages(messages: Message[]) {
        rec.batches.push(messages);
        changed.notify();
      },
      onSnapshot: () => Promise.resolve(),
      onUnreachable(peer: NodeId) {
        rec.unreachable.push(peer);
        changed.notify();
      },
    } satisfies TransportHandlers,
  };
  return rec;
}

/** A TCP listener that accepts connections and never answers; `close()` releases everything. */
function _blackHole(): { url: string; accepted: () => number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const readers: Promise<void>[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        conns.push(conn);
        readers.push((async () => {
          try {
            for await (const _ of conn.readable) { /* discard */ }
          } catch { /* closed */ }
        })());
      }
    } catch { /* closed */ }
  })();
  return {
    url: `http://127.0.0.1:${listener.addr.port}`,
    accepted: () => conns.length,
    async close() {
      listener.close();
      await accepting;
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* already closed */ }
      }
      await Promise.all(readers);
    },
  };
}

/** The first bytes an HTTP/2 client sends (RFC 9113, section 3.4). */
const _H2_PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/** A TCP proxy to `target` that counts connections and records each one's first bytes. */
function _sniffingProxy(targetPort: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const prefaces: string[] = [];
  const conns: Deno.Conn[] = [];
  const pipes: Promise<void>[] = [];
  const pipe = async (from: Deno.Conn, to: Deno.Conn, sniff: boolean) => {
    let first = sniff;
    try {
      for await (const chunk of from.readable.values({ preventCancel: true })) {
        if (first) {
          prefaces.push(new TextDecoder().decode(chunk.subarray(0, _H2_PREFACE.length)));
          first = false;
        }
        let off = 0;
        while (off < chunk.length) off += await to.write(chunk.subarray(off));
      }
    } catch { /* either side closed */ }
    for (const c of [from, to]) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const upstream = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
        conns.push(conn, upstream);
        pipes.push(pipe(conn, upstream, true), pipe(upstream, conn, false));
      }
    } catch { /* closed */ }
  })();
  return {
    url: `http://127.0.0.1:${listener.addr.port}`,
    prefaces,
    async close() {
      listener.close();
      await accepting;
      for (const c of conns) {
        try {
          c.close();
        } catch { /* already closed */ }
      }
      await Promise.all(pipes);
    },
  };
}

Deno.test("HttpTransport speaks HTTP/2 with prior knowledge over one multiplexed connection", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const server = _serve(createPeerHandler(b.handlers));
  const proxy = _sniffingProxy(server.addr.port);
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: proxy.url }],
  });
  try {
    const sent: Message[] = [];
    // The first message opens the stream; the rest follow on it, in several frames.
    sent.push(sampleMessage(MessageType.App, "a", "b", 1000));
    transport.send([sent[0]!]);
    await changed.until(() => b.batches.length === 1, "the first message");
    for (let i = 0; i < 200; i++) {
      const msg = sampleMessage(MessageType.App, "a", "b", i, [i * 100]);
      sent.push(msg);
      transport.send([msg]);
      // Spread the sends over several event-loop turns (what one turn sends shares a frame).
      if (i % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
    }
    await changed.until(() => b.batches.flat().length === sent.length, "all messages");
    assert.deepStrictEqual(b.batches.flat(), sent);
    assert.ok(b.batches.length > 2, "expected several frames");
    assert.deepStrictEqual(proxy.prefaces, [_H2_PREFACE]);
  } finally {
    await transport.close();
    await proxy.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport writes what one event-loop turn sends to a peer as one frame", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const server = _serve(createPeerHandler(b.handlers));
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
  });
  try {
    transport.send([sampleMessage(MessageType.Heartbeat, "a", "b", 1)]);
    await changed.until(() => b.batches.length === 1, "the stream to open");
    // Sends from separate microtasks of one turn (as separate Readies make them).
    for (let i = 0; i < 20; i++) {
      transport.send([sampleMessage(MessageType.Heartbeat, "a", "b", 2 + i)]);
      await Promise.resolve();
    }
    await changed.until(() => b.batches.flat().length === 21, "all messages");
    assert.equal(b.batches.length, 2);
    assert.equal(b.batches[1]!.length, 20);
  } finally {
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport keeps sending to a live peer while another never answers", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const a = _recording(changed);
  const server = _serve(createPeerHandler(b.handlers));
  const hole = _blackHole();
  const transport = new HttpTransport(a.handlers, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }, { id: "c", rpcUrl: hole.url }],
    rpcTimeoutMs: 1500,
    maxConnRetryAttempts: 1,
    retryBackoffMs: 1,
  });
  try {
    const start = performance.now();
    for (let i = 0; i < 10; i++) {
      transport.send([
        sampleMessage(MessageType.Heartbeat, "a", "c", i),
        sampleMessage(MessageType.Heartbeat, "a", "b", i),
      ]);
    }
    await changed.until(() => b.batches.flat().length === 10, "b's heartbeats");
    const elapsed = performance.now() - start;
    // Well under c's timeout, even on a busy machine: b's sends never waited for c's.
    assert.ok(elapsed < 1500, `b's heartbeats took ${elapsed} ms, as long as c's timeout`);
    await changed.until(() => a.unreachable.includes("c"), `"c" to be reported unreachable`);
    assert.ok(performance.now() - start >= 3000, "reported before two timeouts passed");
    assert.ok(hole.accepted() >= 1);
    assert.ok(!a.unreachable.includes("b"));
  } finally {
    await transport.close();
    await hole.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport drops the oldest App and Heartbeat messages when a queue is full", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const { server, release, arrived } = _gated(createPeerHandler(b.handlers), changed);
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    maxInflightPerPeer: 1,
    maxQueuedPerPeer: 3,
    stream: false,
  });
  try {
    const first = sampleMessage(MessageType.App, "a", "b", 0);
    transport.send([first]);
    await changed.until(() => arrived() === 1, "the first request");
    const [app1, vote2, app3, hb4, vote5] = [
      sampleMessage(MessageType.App, "a", "b", 1),
      sampleMessage(MessageType.Vote, "a", "b", 2),
      sampleMessage(MessageType.App, "a", "b", 3),
      sampleMessage(MessageType.Heartbeat, "a", "b", 4),
      sampleMessage(MessageType.Vote, "a", "b", 5),
    ];
    transport.send([app1!, vote2!, app3!, hb4!, vote5!]);
    assert.deepStrictEqual(transport.stats()["b"], {
      queued: 3,
      inflight: 1,
      sent: 0,
      dropped: 2,
      stale: 0,
      failed: 0,
    });
    release();
    await changed.until(() => b.batches.length === 2, "both batches");
    assert.deepStrictEqual(b.batches, [[first], [vote2, hb4, vote5]]);
  } finally {
    release();
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport drops what it queued in an older term once the node's term rises, and what is sent in one later", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const { server, release, arrived } = _gated(createPeerHandler(b.handlers), changed);
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    maxInflightPerPeer: 1,
    stream: false,
  });
  try {
    const first = sampleMessage(MessageType.App, "a", "b", 0); // term 1, in flight
    transport.send([first]);
    await changed.until(() => arrived() === 1, "the first request");
    // Terms 2, 3 and 4 wait behind it; a message without a term (none carry one today) stays.
    const [app2, hb3, app4] = [1, 2, 3].map((seed) =>
      sampleMessage(seed === 2 ? MessageType.Heartbeat : MessageType.App, "a", "b", seed)
    );
    const termless = { ...sampleMessage(MessageType.App, "a", "b", 5), term: 0 };
    transport.send([app2!, hb3!, termless, app4!]);
    transport.dropOlderThan(4);
    transport.dropOlderThan(3); // a term never goes back: no effect
    assert.deepStrictEqual(transport.stats()["b"], {
      queued: 2,
      inflight: 1,
      sent: 0,
      dropped: 0,
      stale: 2,
      failed: 0,
    });
    const late = sampleMessage(MessageType.AppResp, "a", "b", 2); // term 3, sent after the rise
    const current = sampleMessage(MessageType.VoteResp, "a", "b", 3);
    transport.send([late, current]);
    assert.strictEqual(transport.stats()["b"]!.stale, 3);
    release();
    await changed.until(() => b.batches.flat().length === 4, "the rest");
    assert.deepStrictEqual(b.batches.flat(), [first, termless, app4, current]);
  } finally {
    release();
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport caps a batch at maxBatchBytes", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const server = _serve(createPeerHandler(b.handlers));
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    maxBatchBytes: 2500,
  });
  try {
    const msgs = [1, 2, 3, 4].map((i) => sampleMessage(MessageType.App, "a", "b", i, [1000]));
    transport.send(msgs);
    await changed.until(() => b.batches.flat().length === 4, "all messages");
    assert.deepStrictEqual(b.batches, [[msgs[0], msgs[1]], [msgs[2], msgs[3]]]);
  } finally {
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport gives up reading a refusal whose body never ends at the request's deadline", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const inner = createPeerHandler(b.handlers);
  let refusals = 0;
  const server = _serve(async (req) => {
    if (refusals > 0) return inner(req);
    refusals++;
    await req.arrayBuffer();
    // Headers and the start of an error body, then nothing: the stream stays open.
    const body = new ReadableStream<Uint8Array>({
      start: (c) => c.enqueue(new TextEncoder().encode('{"error":"no')),
    });
    return new Response(body, { status: 409, headers: { "content-type": "application/json" } });
  });
  const warnings: string[] = [];
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    rpcTimeoutMs: 300,
    maxInflightPerPeer: 1,
    stream: false,
    logger: { debug() {}, warn: (m) => (warnings.push(m), changed.notify()) },
  });
  try {
    const start = performance.now();
    transport.send([sampleMessage(MessageType.Heartbeat, "a", "b", 1)]);
    await changed.until(() => warnings.length === 1, "the refusal to be reported", 5000);
    const elapsed = performance.now() - start;
    assert.ok(elapsed >= 250 && elapsed < 3000, `reported after ${elapsed} ms`);
    assert.match(warnings[0]!, /refused 1 messages: HTTP 409: \(unreadable body: .*timed out/);
    assert.strictEqual(transport.stats()["b"]!.failed, 1);
    // The peer's queue is not stuck behind it.
    const next = sampleMessage(MessageType.Heartbeat, "a", "b", 2);
    transport.send([next]);
    await changed.until(() => b.batches.length === 1, "the next batch");
    assert.deepStrictEqual(b.batches, [[next]]);
  } finally {
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport drops a message the codec cannot encode and sends the rest", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const server = _serve(createPeerHandler(b.handlers));
  const warnings: string[] = [];
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    logger: { debug() {}, warn: (m) => warnings.push(m) },
  });
  try {
    const good = sampleMessage(MessageType.App, "a", "b", 1);
    transport.send([{ ...good, term: 1.5 }]);
    transport.send([{ ...good, from: "x".repeat(70_000) }, good]);
    transport.send([{ ...good, to: "nobody" }]);
    await changed.until(() => b.batches.length === 1, "the good message");
    assert.deepStrictEqual(b.batches, [[good]]);
    assert.strictEqual(transport.stats()["b"]!.failed, 2);
    assert.strictEqual(warnings.length, 3);
  } finally {
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport retries a snapshot after a connection failure by reopening it", async () => {
  const changed = new Condition();
  let stored = 0;
  const b: TransportHandlers = {
    onMessages() {},
    async onSnapshot(_msg, body) {
      for await (const chunk of body) stored += chunk.length;
    },
  };
  const server = _serve(createPeerHandler(b));
  // The first open() yields a stream that fails mid-request, which fetch reports as a network
  // error: the transport must open the snapshot again and resend it.
  let opened = 0;
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    retryBackoffMs: 1,
  });
  try {
    await transport.sendSnapshot(sampleMessage(MessageType.Snap, "a", "b", 1), () => {
      opened++;
      return Promise.resolve(
        new ReadableStream<Uint8Array>({
          start(c) {
            if (opened === 1) c.error(new Error("disk read failed"));
            else {
              c.enqueue(new Uint8Array(1000));
              c.close();
            }
          },
        }),
      );
    });
    changed.notify();
    assert.strictEqual(opened, 2);
    assert.strictEqual(stored, 1000);
  } finally {
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport reports a dead peer unreachable when a snapshot cannot reach it", async () => {
  const changed = new Condition();
  const a = _recording(changed);
  const transport = new HttpTransport(a.handlers, {
    ..._FAST,
    self: "a",
    peers: [{ id: "c", rpcUrl: _deadUrl() }],
  });
  try {
    let opened = 0;
    await assert.rejects(
      transport.sendSnapshot(sampleMessage(MessageType.Snap, "a", "c", 1), () => {
        opened++;
        return Promise.resolve(new ReadableStream<Uint8Array>({ start: (c) => c.close() }));
      }),
      /unreachable after 3 attempts/,
    );
    assert.strictEqual(opened, 3);
    assert.deepStrictEqual(a.unreachable, ["c"]);
    await assert.rejects(
      transport.sendSnapshot(
        sampleMessage(MessageType.App, "a", "c", 1),
        () => Promise.resolve(new ReadableStream()),
      ),
      RangeError,
    );
    await assert.rejects(
      transport.sendSnapshot(
        sampleMessage(MessageType.Snap, "a", "z", 1),
        () => Promise.resolve(new ReadableStream()),
      ),
      RangeError,
    );
  } finally {
    await transport.close();
  }
});

Deno.test("HttpTransport close() aborts a snapshot in flight", async () => {
  const changed = new Condition();
  let receiving = false;
  const b: TransportHandlers = {
    onMessages() {},
    async onSnapshot(_msg, body) {
      receiving = true;
      changed.notify();
      for await (const _ of body) { /* until the sender goes away */ }
    },
  };
  const server = _serve(createPeerHandler(b));
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
  });
  try {
    let cancelled = false;
    const sending = transport.sendSnapshot(
      sampleMessage(MessageType.Snap, "a", "b", 1),
      () =>
        Promise.resolve(
          new ReadableStream<Uint8Array>({
            start: (c) => c.enqueue(new Uint8Array(10)),
            cancel: () => {
              cancelled = true;
            },
          }),
        ),
    );
    await changed.until(() => receiving, "the receiver to start");
    await transport.close();
    await assert.rejects(sending, /closed/);
    assert.ok(cancelled, "the snapshot stream was not cancelled");
  } finally {
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("HttpTransport validates its options", () => {
  const peers = [{ id: "b", rpcUrl: "http://127.0.0.1:1" }];
  assert.throws(() => new HttpTransport({}, { self: "a", peers, rpcTimeoutMs: 0 }), RangeError);
  assert.throws(
    () => new HttpTransport({}, { self: "a", peers, maxInflightPerPeer: 1.5 }),
    RangeError,
  );
  assert.throws(
    () => new HttpTransport({}, { self: "a", peers, maxConnRetryAttempts: -1 }),
    RangeError,
  );
  assert.throws(
    () => new HttpTransport({}, { self: "a", peers: [...peers, ...peers] }),
    RangeError,
  );
  assert.throws(
    () => new HttpTransport({}, { self: "a", peers: [{ id: "b", rpcUrl: "nope" }] }),
    TypeError,
  );
  assert.throws(
    () => new HttpTransport({}, { self: "a", peers: [{ id: "b", rpcUrl: "ftp://x" }] }),
    TypeError,
  );
});

// --- The peer handler, called directly (no sockets). ---

function _handlerFixture(
  options: Parameters<typeof createPeerHandler>[1] = {},
  checkCluster?: (claimed: string | undefined) => string | null,
) {
  const batches: Message[][] = [];
  const snapshots: { msg: Message; bytes: number }[] = [];
  const handler = createPeerHandler({
    onMessages: (messages) => batches.push(messages),
    async onSnapshot(msg, body) {
      let bytes = 0;
      for await (const chunk of body) bytes += chunk.length;
      if (msg.index === 666) {
        throw new Error("No space left on device (os error 28): write '/data/b/snapshots/x.recv'");
      }
      snapshots.push({ msg, bytes });
    },
    ...(checkCluster === undefined ? {} : { checkCluster }),
  }, options);
  return { handler, batches, snapshots };
}

function _post(path: string, body: BodyInit | null, headers: Record<string, string> = {}): Request {
  return new Request(`http://node${path}`, { method: "POST", body, headers });
}

async function _json(res: Response): Promise<{ error: string }> {
  assert.strictEqual(res.headers.get("content-type"), "application/json");
  return await res.json();
}

Deno.test("createPeerHandler hands a valid batch to onMessages and replies 204", async () => {
  const { handler, batches } = _handlerFixture({ self: "b" });
  const msgs = [
    sampleMessage(MessageType.App, "a", "b", 1, [5]),
    sampleMessage(MessageType.Vote, "a", "b", 2),
  ];
  const res = await handler(_post("/raft/messages", encodeMessages(msgs)));
  assert.strictEqual(res.status, 204);
  assert.deepStrictEqual(batches, [msgs]);
});

Deno.test("createPeerHandler answers a malformed batch with 400", async () => {
  const { handler, batches } = _handlerFixture();
  const bytes = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  for (const body of [bytes.subarray(0, bytes.length - 1), new Uint8Array([1, 2, 3]), null]) {
    const res = await handler(_post("/raft/messages", body));
    assert.strictEqual(res.status, 400);
    assert.match((await _json(res)).error, /Cannot decode messages: .* at offset \d+/);
  }
  assert.deepStrictEqual(batches, []);
});

Deno.test("createPeerHandler answers an unknown path with 404 and a wrong method with 405", async () => {
  const { handler } = _handlerFixture();
  const missing = await handler(_post("/raft/nothing", new Uint8Array(1)));
  assert.strictEqual(missing.status, 404);
  assert.match((await _json(missing)).error, /"\/raft\/nothing"/);
  for (const path of ["/raft/messages", "/raft/snapshot"]) {
    const res = await handler(new Request(`http://node${path}`));
    assert.strictEqual(res.status, 405);
    assert.strictEqual(res.headers.get("allow"), "POST");
    assert.match((await _json(res)).error, /"GET"/);
  }
});

Deno.test("createPeerHandler hands /forward/ paths to the forward option with the authenticated sender", async () => {
  const calls: { path: string; sender: string | null; body: string }[] = [];
  const { handler, batches } = _handlerFixture({
    forward: async (req, sender) => {
      calls.push({ path: new URL(req.url).pathname, sender, body: await req.text() });
      return Response.json({ ok: true }, { status: 201 });
    },
  });
  // No x-raftkv-from and any method: the forward handler does its own checks.
  const res = await handler(_post("/forward/v1/data", "x"));
  assert.strictEqual(res.status, 201);
  assert.deepStrictEqual(await res.json(), { ok: true });
  await handler(new Request("http://node/forward/v1/data/a"), { peer: "a" });
  assert.deepStrictEqual(calls, [
    { path: "/forward/v1/data", sender: null, body: "x" },
    { path: "/forward/v1/data/a", sender: "a", body: "" },
  ]);
  // Only below the prefix, and never without the option.
  assert.strictEqual((await handler(_post("/forwardx", "x"))).status, 404);
  assert.strictEqual((await handler(_post("/forward", "x"))).status, 404);
  const plain = _handlerFixture();
  const missing = await plain.handler(_post("/forward/v1/data", "x"));
  assert.strictEqual(missing.status, 404);
  await _json(missing);
  assert.strictEqual(calls.length, 2);
  assert.deepStrictEqual(batches, []);
});

Deno.test("createPeerHandler answers a body over maxBodyBytes with 413, declared or streamed", async () => {
  const { handler, batches } = _handlerFixture({ maxBodyBytes: 1024 });
  const declared = await handler(_post("/raft/messages", new Uint8Array(2048)));
  assert.strictEqual(declared.status, 413);
  await _json(declared);
  let pulls = 0;
  const streamed = new ReadableStream<Uint8Array>({
    pull(c) {
      // Would never end: the handler must stop reading at the limit.
      pulls++;
      c.enqueue(new Uint8Array(512));
    },
  });
  const res = await handler(_post("/raft/messages", streamed));
  assert.strictEqual(res.status, 413);
  assert.match((await _json(res)).error, /1024 bytes/);
  assert.ok(pulls < 10);
  assert.deepStrictEqual(batches, []);
  // At the limit exactly is fine.
  const msgs = [sampleMessage(MessageType.App, "a", "b", 1, [0])];
  const fits = await _handlerFixture({ maxBodyBytes: encodeMessages(msgs).length }).handler(
    _post("/raft/messages", encodeMessages(msgs)),
  );
  assert.strictEqual(fits.status, 204);
});

Deno.test("createPeerHandler asks the node about the sender's cluster first, and checks the addressee", async () => {
  const claims: (string | undefined)[] = [];
  const forwarded: string[] = [];
  const { handler, batches } = _handlerFixture({
    self: "b",
    forward: (req) => {
      forwarded.push(new URL(req.url).pathname);
      return Promise.resolve(new Response(null, { status: 204 }));
    },
  }, (claimed) => {
    claims.push(claimed);
    return claimed === "test" ? `the sender is a member of cluster "${claimed}"` : null;
  });
  const body = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  const wrongCluster = await handler(_post("/raft/messages", body, { [CLUSTER_HEADER]: "test" }));
  assert.strictEqual(wrongCluster.status, 403);
  assert.match((await _json(wrongCluster)).error, /cluster "test"/);
  // Before anything else: a members query, and a client request forwarded from that node, too.
  for (const path of [MEMBERS_PATH, "/forward/v1/data/a", "/nowhere"]) {
    const refused = await handler(_post(path, null, { [CLUSTER_HEADER]: "test" }));
    assert.strictEqual(refused.status, 403, path);
    await refused.body?.cancel();
  }
  assert.deepStrictEqual(forwarded, []);
  const forward = await handler(_post("/forward/v1/data/a", null, { [CLUSTER_HEADER]: "prod" }));
  assert.strictEqual(forward.status, 204);
  assert.deepStrictEqual(forwarded, ["/forward/v1/data/a"]);
  // A request that names no cluster is the node's to judge, like any other.
  const noCluster = await handler(_post("/raft/messages", body));
  assert.strictEqual(noCluster.status, 204);
  assert.strictEqual(batches.length, 1);
  assert.deepStrictEqual(claims, ["test", "test", "test", "test", "prod", undefined]);
  const misaddressed = await handler(
    _post("/raft/messages", encodeMessages([sampleMessage(MessageType.App, "a", "c", 1)]), {
      [CLUSTER_HEADER]: "prod",
    }),
  );
  assert.strictEqual(misaddressed.status, 421);
  assert.match((await _json(misaddressed)).error, /"c"/);
  const ok = await handler(_post("/raft/messages", body, { [CLUSTER_HEADER]: "prod" }));
  assert.strictEqual(ok.status, 204);
  assert.strictEqual(batches.length, 2);
});

Deno.test("createPeerHandler delivers one sender's batches in arrival order", async () => {
  const { handler, batches } = _handlerFixture();
  const first = [sampleMessage(MessageType.App, "a", "b", 1, [100])];
  const second = [sampleMessage(MessageType.App, "a", "b", 2)];
  const firstBytes = encodeMessages(first);
  let finishFirst!: () => void;
  const firstBody = new ReadableStream<Uint8Array>({
    async start(c) {
      c.enqueue(firstBytes.subarray(0, 10));
      await new Promise<void>((resolve) => finishFirst = resolve);
      c.enqueue(firstBytes.subarray(10));
      c.close();
    },
  });
  let secondRead = false;
  const secondBody = new ReadableStream<Uint8Array>({
    pull(c) {
      if (secondRead) return c.close();
      secondRead = true;
      c.enqueue(encodeMessages(second));
    },
  });
  const headers = { [FROM_HEADER]: "a" };
  const firstRes = handler(_post("/raft/messages", firstBody, headers));
  let secondDone = false;
  const secondRes = handler(_post("/raft/messages", secondBody, headers)).finally(() => {
    secondDone = true;
  });
  // Let the second request get as far as it can (it has its whole body): a zero-delay yield, so
  // that every pending promise job runs; it must then be waiting for the first.
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.ok(secondRead, "the second body was not read");
  assert.strictEqual(secondDone, false);
  assert.deepStrictEqual(batches, []);
  finishFirst();
  assert.strictEqual((await firstRes).status, 204);
  assert.strictEqual((await secondRes).status, 204);
  assert.deepStrictEqual(batches, [first, second]);
  // A failed request does not hold up the ones behind it, and other senders are independent.
  const bad = handler(_post("/raft/messages", new Uint8Array([0]), headers));
  const after = handler(_post("/raft/messages", encodeMessages(second), headers));
  const other = handler(_post("/raft/messages", encodeMessages(first), { [FROM_HEADER]: "c" }));
  assert.strictEqual((await bad).status, 400);
  assert.strictEqual((await after).status, 204);
  assert.strictEqual((await other).status, 204);
  assert.strictEqual(batches.length, 4);
  assert.deepStrictEqual(new Set(batches.slice(2)), new Set([second, first]));
});

Deno.test("createPeerHandler stops waiting for an earlier batch after maxOrderWaitMs", async () => {
  const { handler, batches } = _handlerFixture({ maxOrderWaitMs: 50 });
  let breakFirst!: (err: Error) => void;
  const stuckBody = new ReadableStream<Uint8Array>({
    start(c) {
      // A sender that vanished mid-body: the rest never comes.
      c.enqueue(new Uint8Array([0xa1]));
      breakFirst = (err) => c.error(err);
    },
  });
  const headers = { [FROM_HEADER]: "a" };
  const second = [sampleMessage(MessageType.App, "a", "b", 2)];
  const third = [sampleMessage(MessageType.App, "a", "b", 3)];
  const stuck = handler(_post("/raft/messages", stuckBody, headers));
  const start = performance.now();
  const secondRes = handler(_post("/raft/messages", encodeMessages(second), headers));
  const thirdRes = handler(_post("/raft/messages", encodeMessages(third), headers));
  assert.strictEqual((await secondRes).status, 204);
  assert.strictEqual((await thirdRes).status, 204);
  assert.ok(performance.now() - start >= 45, "the second batch did not wait for the first");
  assert.deepStrictEqual(batches, [second, third]);
  breakFirst(new Error("connection reset"));
  const broken = await stuck;
  assert.strictEqual(broken.status, 400, "a body that breaks off is the sender's fault");
  assert.match((await _json(broken)).error, /The request body broke off: connection reset/);
});

Deno.test("createPeerHandler stores a snapshot and replies 204, or 500 without the details when storing fails", async () => {
  const { handler, snapshots } = _handlerFixture();
  const header = (msg: Message) => ({
    [MESSAGE_HEADER]: encodeMessages([msg]).toBase64({ alphabet: "base64url", omitPadding: true }),
  });
  const msg = sampleMessage(MessageType.Snap, "a", "b", 1);
  const ok = await handler(_post("/raft/snapshot", new Uint8Array(3000), header(msg)));
  assert.strictEqual(ok.status, 204);
  assert.deepStrictEqual(snapshots, [{ msg, bytes: 3000 }]);

  const failing = { ...msg, index: 666 };
  const warnings: string[] = [];
  const logged = _handlerFixture({ logger: { debug() {}, warn: (m) => warnings.push(m) } });
  const failed = await logged.handler(
    _post("/raft/snapshot", new Uint8Array(10), header(failing)),
  );
  assert.strictEqual(failed.status, 500);
  // The node's files are its own business: the peer learns that storing failed, the log why.
  const error = (await _json(failed)).error;
  assert.match(error, /failed on this node/);
  assert.ok(!error.includes("/data/"), error);
  assert.match(
    warnings.join("\n"),
    /Storing the snapshot from "a" failed: No space left .*x\.recv/,
  );
});

Deno.test("createPeerHandler answers a missing or malformed snapshot header with 400", async () => {
  const { handler, snapshots } = _handlerFixture();
  const cases: Record<string, string>[] = [
    {},
    { [MESSAGE_HEADER]: "!!!" },
    { [MESSAGE_HEADER]: "oQ" },
    {
      [MESSAGE_HEADER]: encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]).toBase64({
        alphabet: "base64url",
      }),
    },
  ];
  for (const headers of cases) {
    const res = await handler(_post("/raft/snapshot", new Uint8Array(10), headers));
    assert.strictEqual(res.status, 400);
    assert.match((await _json(res)).error, new RegExp(MESSAGE_HEADER));
  }
  assert.deepStrictEqual(snapshots, []);
});

// --- Hostile or buggy peers: the handler with a validator, limits and refusals. ---

const _MEMBERS = ["n1", "n2", "n3"];

/** A handler for node n2 of n1..n3 with a validator, recording what it hands on and logs. */
function _guardedFixture(
  options: Parameters<typeof createPeerHandler>[1] = {},
  snapshotHandler?: TransportHandlers["onSnapshot"],
) {
  const batches: Message[][] = [];
  const warnings: string[] = [];
  const snapshots: { msg: Message; bytes: number }[] = [];
  let refuseNext: string | null = null;
  const handler = createPeerHandler({
    onMessages(messages) {
      if (refuseNext !== null) throw new PeerRefusedError(refuseNext);
      batches.push(messages);
    },
    onSnapshot: snapshotHandler ?? (async (msg, body) => {
      let bytes = 0;
      for await (const chunk of body) bytes += chunk.length;
      snapshots.push({ msg, bytes });
    }),
  }, {
    validator: new PeerValidator({ self: "n2", members: _MEMBERS }),
    logger: { debug() {}, warn: (m: string) => warnings.push(m) },
    refusalLogIntervalMs: 0,
    ...options,
  });
  return {
    handler,
    batches,
    warnings,
    snapshots,
    refuseNext(reason: string | null) {
      refuseNext = reason;
    },
  };
}

/** A heartbeat from `from` to n2 in term 3, as the core sends it. */
function _heartbeat(from = "n1", fields: Partial<Message> = {}): Message {
  return message({ type: MessageType.Heartbeat, from, to: "n2", term: 3, commit: 1, ...fields });
}

function _snapHeaders(msg: Message, from = msg.from): Record<string, string> {
  return {
    [FROM_HEADER]: from,
    [MESSAGE_HEADER]: encodeMessages([msg]).toBase64({ alphabet: "base64url", omitPadding: true }),
  };
}

function _snap(from = "n1", fields: Partial<Message> = {}): Message {
  return message({
    type: MessageType.Snap,
    from,
    to: "n2",
    term: 3,
    snapshot: { index: 10, term: 2, voters: _MEMBERS },
    ...fields,
  });
}

/** A body that sends `first` and then nothing until `finish()` (or `fail(err)`) is called. */
function _stalledBody(first: Uint8Array, rest: Uint8Array = new Uint8Array(0)) {
  let pulls = 0;
  let finish!: () => void;
  let fail!: (err: Error) => void;
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(first);
      finish = () => {
        if (rest.length > 0) c.enqueue(rest);
        c.close();
      };
      fail = (err) => c.error(err);
    },
    pull() {
      pulls++;
    },
  });
  return { stream, finish: () => finish(), fail: (err: Error) => fail(err), pulls: () => pulls };
}

Deno.test("with a validator, a sender that is not another member gets 403 before its body is read", async () => {
  const { handler, batches, snapshots, warnings } = _guardedFixture();
  for (const from of ["evil", "n2", ""]) {
    const body = _stalledBody(encodeMessages([_heartbeat(from)]));
    const res = await handler(_post("/raft/messages", body.stream, { [FROM_HEADER]: from }));
    assert.strictEqual(res.status, 403);
    assert.match((await _json(res)).error, new RegExp(`sender ${JSON.stringify(from)} is`));
    assert.strictEqual(body.pulls(), 0, "the body was read");
    const snap = await handler(
      _post("/raft/snapshot", new Uint8Array(100), _snapHeaders(_snap(from), from)),
    );
    assert.strictEqual(snap.status, 403);
    await snap.body?.cancel();
  }
  assert.deepStrictEqual(batches, []);
  assert.deepStrictEqual(snapshots, []);
  assert.match(
    warnings[0]!,
    /^Refused a peer request with 403 \(sender "evil"\): sender "evil" is not/,
  );
});

Deno.test("with a validator, every message is checked: bad fields 400, a claimed stranger 403, another addressee 421, Snap on the message path 400", async () => {
  const { handler, batches } = _guardedFixture();
  const cases: [Message[], number, RegExp][] = [
    [[_heartbeat("n1", { term: Number.MAX_SAFE_INTEGER })], 400, /term 9007199254740991 is above/],
    [[_heartbeat(), _heartbeat("evil")], 403, /claims sender "evil" in a request from "n1"/],
    [[_heartbeat(), _heartbeat("n3")], 400, /claims sender "n3"/],
    // The node itself is never a sender, even inside another member's request.
    [[_heartbeat(), _heartbeat("n2")], 403, /claims sender "n2" in a request from "n1"/],
    [[_heartbeat("n1", { to: "n3" })], 421, /addressed to "n3"/],
    [[_snap()], 400, /Snap messages are only accepted with a snapshot upload/],
  ];
  for (const [msgs, status, pattern] of cases) {
    const res = await handler(
      _post("/raft/messages", encodeMessages(msgs), { [FROM_HEADER]: "n1" }),
    );
    assert.strictEqual(res.status, status, pattern.source);
    assert.match((await _json(res)).error, pattern);
  }
  assert.deepStrictEqual(batches, [], "a refused batch is handed on in part");
  const ok = await handler(
    _post("/raft/messages", encodeMessages([_heartbeat()]), { [FROM_HEADER]: "n1" }),
  );
  assert.strictEqual(ok.status, 204);
  assert.strictEqual(batches.length, 1);
});

Deno.test("with a proven identity, it is the sender: another in the header or a message, or a non-member, gets 403 and nothing is handed on", async () => {
  const { handler, batches, snapshots, warnings } = _guardedFixture();
  const n1 = { peer: "n1" };
  const hb = (from: string, msgs: Message[]) =>
    _post("/raft/messages", encodeMessages(msgs), { [FROM_HEADER]: from });
  const cases: [Request, { peer: string }, RegExp][] = [
    [hb("n3", [_heartbeat("n3")]), n1, /Sender "n3" claimed on a connection that proved "n1"/],
    [hb("", [_heartbeat("n1")]), n1, /Sender "" claimed on a connection that proved "n1"/],
    [
      hb("n1", [_heartbeat("n1"), _heartbeat("n3")]),
      n1,
      /Message 2 of 2 claims sender "n3" on a connection that proved "n1"/,
    ],
    [hb("evil", [_heartbeat("evil")]), { peer: "evil" }, /proved "evil": sender "evil" is not a/],
    [hb("n2", [_heartbeat("n2")]), { peer: "n2" }, /proved "n2": sender "n2" is this node/],
    [
      _post("/raft/snapshot", new Uint8Array(100), _snapHeaders(_snap("n3"))),
      n1,
      /Sender "n3" claimed on a connection that proved "n1"/,
    ],
    [
      _post("/raft/snapshot", new Uint8Array(100), _snapHeaders(_snap("n3"), "n1")),
      n1,
      /Message 1 of 1 claims sender "n3" on a connection that proved "n1"/,
    ],
  ];
  for (const [req, info, pattern] of cases) {
    const res = await handler(req, info);
    assert.strictEqual(res.status, 403, pattern.source);
    assert.match((await _json(res)).error, pattern);
  }
  assert.strictEqual(batches.length + snapshots.length, 0, "a refused request was handed on");
  assert.match(warnings[0]!, /^Refused a peer request with 403 \(sender "n3"\): Sender "n3"/);
  // The header is checked before the body is read.
  const body = _stalledBody(encodeMessages([_heartbeat("n3")]));
  const unread = await handler(
    _post("/raft/messages", body.stream, { [FROM_HEADER]: "n3" }),
    n1,
  );
  assert.strictEqual(unread.status, 403);
  assert.strictEqual(body.pulls(), 0, "the body was read");
  // The member's own messages and snapshots pass.
  assert.strictEqual((await handler(hb("n1", [_heartbeat("n1")]), n1)).status, 204);
  const snap = await handler(
    _post("/raft/snapshot", new Uint8Array(100), _snapHeaders(_snap("n1"))),
    n1,
  );
  assert.strictEqual(snap.status, 204);
  assert.strictEqual(batches.length, 1);
  assert.deepStrictEqual(snapshots.map((x) => x.bytes), [100]);
});

Deno.test("with requirePeerIdentity, a request without a proven identity gets 403", async () => {
  const { handler, batches } = _guardedFixture({ requirePeerIdentity: true });
  const req = () =>
    _post("/raft/messages", encodeMessages([_heartbeat()]), { [FROM_HEADER]: "n1" });
  for (const res of [await handler(req()), await handler(req(), { peer: null })]) {
    assert.strictEqual(res.status, 403);
    assert.match((await _json(res)).error, /The connection proved no identity/);
  }
  assert.strictEqual((await handler(req(), { peer: "n1" })).status, 204);
  assert.strictEqual(batches.length, 1);
});

Deno.test("a batch the node refuses with PeerRefusedError gets 409 with its reason", async () => {
  const f = _guardedFixture();
  f.refuseNext('App from "n1" in term 3: disagrees with the entry at 2');
  const res = await f.handler(
    _post("/raft/messages", encodeMessages([_heartbeat()]), { [FROM_HEADER]: "n1" }),
  );
  assert.strictEqual(res.status, 409);
  assert.match((await _json(res)).error, /disagrees with the entry at 2/);
  assert.match(f.warnings.at(-1)!, /with 409 \(sender "n1"\)/);
});

Deno.test("one sender may have at most maxRequestsPerSender message requests in progress; others are independent", async () => {
  const { handler, batches } = _guardedFixture({ maxRequestsPerSender: 2 });
  const bytes = encodeMessages([_heartbeat()]);
  const stalled = [
    _stalledBody(bytes.subarray(0, 5), bytes.subarray(5)),
    _stalledBody(bytes.subarray(0, 5), bytes.subarray(5)),
  ];
  const pending = stalled.map((b) =>
    handler(_post("/raft/messages", b.stream, { [FROM_HEADER]: "n1" }))
  );
  const third = await handler(_post("/raft/messages", bytes, { [FROM_HEADER]: "n1" }));
  assert.strictEqual(third.status, 429);
  assert.match((await _json(third)).error, /already has 2 requests in progress \(limit 2\)/);
  const other = await handler(
    _post("/raft/messages", encodeMessages([_heartbeat("n3")]), { [FROM_HEADER]: "n3" }),
  );
  assert.strictEqual(other.status, 204);
  for (const b of stalled) b.finish();
  assert.deepStrictEqual((await Promise.all(pending)).map((r) => r.status), [204, 204]);
  const again = await handler(_post("/raft/messages", bytes, { [FROM_HEADER]: "n1" }));
  assert.strictEqual(again.status, 204);
  assert.strictEqual(batches.length, 4);
});

Deno.test("refused requests are logged at most once per interval and status, with a count of the rest", async () => {
  const f = _guardedFixture({ refusalLogIntervalMs: 1 });
  const quiet = _guardedFixture({ refusalLogIntervalMs: 60_000 });
  for (let i = 0; i < 50; i++) {
    const headers = { [FROM_HEADER]: `evil-${i}` };
    await (await quiet.handler(_post("/raft/messages", new Uint8Array(1), headers))).body?.cancel();
  }
  assert.strictEqual(quiet.warnings.length, 1);
  for (let i = 0; i < 3; i++) {
    await (await f.handler(_post("/raft/messages", null, { [FROM_HEADER]: "x" }))).body?.cancel();
  }
  // Past the 1 ms interval (a timer waits at least its delay), the next one is logged, with the
  // count of those left out: every refusal is either logged or counted.
  await new Promise((resolve) => setTimeout(resolve, 5));
  await (await f.handler(_post("/raft/messages", null, { [FROM_HEADER]: "x" }))).body?.cancel();
  const counted = f.warnings.map((w) =>
    Number(/\((\d+) more refused with 403 before\)/.exec(w)?.[1] ?? 0)
  );
  assert.strictEqual(
    f.warnings.length + counted.reduce((a, b) => a + b, 0),
    4,
    f.warnings.join("\n"),
  );
  assert.match(f.warnings.at(-1)!, /^Refused a peer request with 403 \(sender "x"\)/);
});

Deno.test("a snapshot upload is validated: bad or missing metadata gets 400 and a non-Snap header 400", async () => {
  const { handler, snapshots } = _guardedFixture();
  const bad = _snap("n1", { snapshot: { index: 10, term: 9, voters: _MEMBERS } });
  const res = await handler(_post("/raft/snapshot", new Uint8Array(10), _snapHeaders(bad)));
  assert.strictEqual(res.status, 400);
  assert.match((await _json(res)).error, /snapshot term 9 is above the message term 3/);
  const bare = _snap("n1", { snapshot: null });
  const none = await handler(_post("/raft/snapshot", new Uint8Array(10), _snapHeaders(bare)));
  assert.strictEqual(none.status, 400);
  assert.match((await _json(none)).error, /Snap message: it carries no snapshot metadata/);
  const ok = await handler(_post("/raft/snapshot", new Uint8Array(10), _snapHeaders(_snap())));
  assert.strictEqual(ok.status, 204);
  assert.deepStrictEqual(snapshots.map((s) => s.bytes), [10]);
});

Deno.test("a snapshot upload whose body breaks off gets 400, and the reader sees it fail", async () => {
  let readerError: unknown = null;
  const { handler, warnings } = _guardedFixture({}, async (_msg, body) => {
    try {
      for await (const _ of body) { /* store */ }
    } catch (err) {
      readerError = err;
      throw err;
    }
  });
  const cut = _stalledBody(new Uint8Array(100));
  const pending = handler(_post("/raft/snapshot", cut.stream, _snapHeaders(_snap())));
  cut.fail(new Error("stream reset by the sender"));
  const res = await pending;
  assert.strictEqual(res.status, 400);
  assert.match((await _json(res)).error, /upload broke off: stream reset by the sender/);
  assert.ok(readerError !== null, "the reader did not see the stream fail");
  assert.match(warnings.at(-1)!, /with 400 \(sender "n1"\)/);
});

Deno.test("a snapshot upload over maxSnapshotBytes gets 413, declared or streamed, and the reader sees it fail", async () => {
  let readerError: unknown = null;
  const { handler } = _guardedFixture({ maxSnapshotBytes: 1000 }, async (_msg, body) => {
    try {
      for await (const _ of body) { /* store */ }
    } catch (err) {
      readerError = err;
      throw err;
    }
  });
  const declared = await handler(
    _post("/raft/snapshot", new Uint8Array(10), {
      ..._snapHeaders(_snap()),
      "content-length": "5000",
    }),
  );
  assert.strictEqual(declared.status, 413);
  assert.match((await _json(declared)).error, /Snapshot of 5000 bytes exceeds the limit of 1000/);
  assert.strictEqual(readerError, null, "a declared oversize upload reached the handler");
  let pulls = 0;
  const endless = new ReadableStream<Uint8Array>({
    pull(c) {
      pulls++;
      c.enqueue(new Uint8Array(300));
    },
  });
  const streamed = await handler(_post("/raft/snapshot", endless, _snapHeaders(_snap())));
  assert.strictEqual(streamed.status, 413);
  assert.match((await _json(streamed)).error, /exceeds the limit of 1000 bytes/);
  assert.ok(readerError !== null, "the reader did not see the stream fail");
  assert.ok(pulls < 10, `the body was read on: ${pulls} pulls`);
});

Deno.test("a snapshot upload that stalls gets 408 after the idle timeout, one that drags on after the total timeout", async () => {
  const { handler } = _guardedFixture({ snapshotIdleTimeoutMs: 50 });
  const stalled = _stalledBody(new Uint8Array(100));
  const idle = await handler(_post("/raft/snapshot", stalled.stream, _snapHeaders(_snap())));
  assert.strictEqual(idle.status, 408);
  assert.match((await _json(idle)).error, /sent nothing for 50 ms/);

  const slow = _guardedFixture({ snapshotIdleTimeoutMs: 10_000, snapshotReceiveTimeoutMs: 100 });
  let timer: ReturnType<typeof setInterval> | undefined;
  const trickle = new ReadableStream<Uint8Array>({
    start(c) {
      timer = setInterval(() => c.enqueue(new Uint8Array(1)), 10);
    },
    cancel() {
      clearInterval(timer);
    },
  });
  try {
    const res = await slow.handler(_post("/raft/snapshot", trickle, _snapHeaders(_snap())));
    assert.strictEqual(res.status, 408);
    assert.match((await _json(res)).error, /not complete after 100 ms/);
  } finally {
    clearInterval(timer);
  }
});

Deno.test("only one snapshot upload at a time: another gets 429 meanwhile", async () => {
  const { handler, snapshots } = _guardedFixture();
  const first = _stalledBody(new Uint8Array(100), new Uint8Array(50));
  const firstRes = handler(_post("/raft/snapshot", first.stream, _snapHeaders(_snap())));
  // The first upload is in progress as soon as its handler call began.
  const second = await handler(_post("/raft/snapshot", new Uint8Array(10), _snapHeaders(_snap())));
  assert.strictEqual(second.status, 429);
  assert.match((await _json(second)).error, /Another snapshot upload is in progress/);
  first.finish();
  assert.strictEqual((await firstRes).status, 204);
  assert.deepStrictEqual(snapshots.map((s) => s.bytes), [150]);
  const third = await handler(_post("/raft/snapshot", new Uint8Array(10), _snapHeaders(_snap())));
  assert.strictEqual(third.status, 204);
});

Deno.test("a snapshot the node refuses with PeerRefusedError gets 409", async () => {
  const { handler } = _guardedFixture({}, async (_msg, body) => {
    await body.cancel();
    throw new PeerRefusedError('Snap from "n1": "n3" already leads term 3');
  });
  const res = await handler(_post("/raft/snapshot", new Uint8Array(10), _snapHeaders(_snap())));
  assert.strictEqual(res.status, 409);
  assert.match((await _json(res)).error, /already leads term 3/);
});

Deno.test("a snapshot this node's disk has no room for gets 507 with the node's words, not its paths", async () => {
  const { handler } = _guardedFixture({}, async (_msg, body) => {
    await body.cancel();
    throw new PeerNoSpaceError("no space left on device for the snapshot at index 9");
  });
  const res = await handler(_post("/raft/snapshot", new Uint8Array(10), _snapHeaders(_snap())));
  assert.strictEqual(res.status, 507);
  assert.strictEqual(
    (await _json(res)).error,
    "no space left on device for the snapshot at index 9",
  );
});

/** One frame of a message stream: the batch's length (4 bytes, big-endian), then the batch. */
function _frame(msgs: Message[]): Uint8Array {
  const bytes = encodeMessages(msgs);
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length);
  out.set(bytes, 4);
  return out;
}

/** A request body the test writes to piece by piece. */
function _pushBody() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let pulls = 0;
  const stream = new ReadableStream<Uint8Array>({
    start: (c) => void (controller = c),
    pull: () => void pulls++,
  });
  return {
    stream,
    push: (bytes: Uint8Array) => controller.enqueue(bytes),
    end: () => controller.close(),
    pulls: () => pulls,
  };
}

/** Resolves once the (empty) answer of a message stream ends; rejects after `ms`. */
async function _answerEnds(res: Response, ms = 5000): Promise<void> {
  const reader = res.body!.getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) =>
    timer = setTimeout(() => reject(new Error(`the stream's answer did not end in ${ms} ms`)), ms)
  );
  try {
    for (;;) {
      const { done } = await Promise.race([reader.read(), expired]);
      if (done) return;
    }
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("a message stream hands on each frame as it arrives, split anywhere, and drops a refused batch but goes on", async () => {
  const { handler, batches, warnings } = _guardedFixture();
  const body = _pushBody();
  const res = await handler(_post(STREAM_PATH, body.stream, { [FROM_HEADER]: "n1" }));
  assert.strictEqual(res.status, 200);
  const first = _frame([_heartbeat("n1", { commit: 1 })]);
  body.push(first.subarray(0, 2));
  body.push(first.subarray(2, 7));
  body.push(first.subarray(7));
  const until = (n: number) =>
    new Promise<void>((resolve, reject) => {
      const start = performance.now();
      const check = () => {
        if (batches.length >= n) return resolve();
        if (performance.now() - start > 5000) return reject(new Error(`${n} batches`));
        setTimeout(check, 5);
      };
      check();
    });
  await until(1);
  // A term out of bounds: that batch is refused (and logged), the stream goes on.
  const bad = _frame([_heartbeat("n1", { term: Number.MAX_SAFE_INTEGER })]);
  const next = _frame([_heartbeat("n1", { commit: 2 }), _heartbeat("n1", { commit: 3 })]);
  const both = new Uint8Array(bad.length + next.length);
  both.set(bad);
  both.set(next, bad.length);
  body.push(both);
  await until(2);
  assert.deepStrictEqual(batches.map((b) => b.map((m) => m.commit)), [[1], [2, 3]]);
  assert.match(warnings[0]!, /term 9007199254740991 is above/);
  body.end();
  await _answerEnds(res);
});

Deno.test("a message stream ends at a frame over maxBodyBytes, before reading it", async () => {
  const { handler, batches, warnings } = _guardedFixture({ maxBodyBytes: 64 });
  const body = _pushBody();
  const res = await handler(_post(STREAM_PATH, body.stream, { [FROM_HEADER]: "n1" }));
  assert.strictEqual(res.status, 200);
  const huge = new Uint8Array(4);
  new DataView(huge.buffer).setUint32(0, 65);
  body.push(huge);
  await _answerEnds(res);
  assert.deepStrictEqual(batches, []);
  assert.match(warnings.join("\n"), /413 .*A frame of 65 bytes exceeds the limit of 64 bytes/);
});

Deno.test("on an authenticated message stream, a message claiming another sender ends the stream and nothing after it is handed on", async () => {
  const { handler, batches, warnings } = _guardedFixture({ requirePeerIdentity: true });
  const body = _pushBody();
  const res = await handler(
    _post(STREAM_PATH, body.stream, { [FROM_HEADER]: "n1" }),
    { peer: "n1" },
  );
  assert.strictEqual(res.status, 200);
  body.push(_frame([_heartbeat("n1")]));
  body.push(_frame([_heartbeat("n1"), _heartbeat("n3")]));
  body.push(_frame([_heartbeat("n1")]));
  await _answerEnds(res);
  assert.strictEqual(batches.length, 1);
  assert.match(
    warnings.join("\n"),
    /403 .*Message 2 of 2 claims sender "n3" on a connection that proved "n1"/,
  );
});

Deno.test("a message stream from a non-member, an unproven one, or one claiming another than the proven identity gets 403 before its body is read", async () => {
  const { handler, batches } = _guardedFixture({ requirePeerIdentity: true });
  const cases: [string, { peer: string | null }, RegExp][] = [
    ["evil", { peer: "evil" }, /proved "evil": sender "evil" is not a/],
    ["n2", { peer: "n2" }, /proved "n2": sender "n2" is this node/],
    ["n3", { peer: "n1" }, /Sender "n3" claimed on a connection that proved "n1"/],
    ["n1", { peer: null }, /The connection proved no identity/],
  ];
  for (const [from, info, pattern] of cases) {
    const body = _stalledBody(_frame([_heartbeat(from)]));
    const res = await handler(_post(STREAM_PATH, body.stream, { [FROM_HEADER]: from }), info);
    assert.strictEqual(res.status, 403, pattern.source);
    assert.match((await _json(res)).error, pattern);
    assert.strictEqual(body.pulls(), 0, "the body was read");
  }
  assert.deepStrictEqual(batches, []);
});

Deno.test("HttpTransport reopens a stream that broke mid-frame and delivers the later batches", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const server = _serve(createPeerHandler(b.handlers));
  // A proxy that, once armed, passes on part of the next chunk from the sender and cuts both
  // connections.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let armed = false;
  let accepted = 0;
  const conns = new Set<Deno.Conn>();
  const closeBoth = (x: Deno.Conn, y: Deno.Conn) => {
    for (const c of [x, y]) {
      conns.delete(c);
      try {
        c.close();
      } catch { /* already closed */ }
    }
  };
  const pipe = async (from: Deno.Conn, to: Deno.Conn, cut: boolean) => {
    try {
      for await (const chunk of from.readable.values({ preventCancel: true })) {
        if (cut && armed && chunk.length > 100) {
          armed = false;
          await to.write(chunk.subarray(0, chunk.length >> 1));
          break;
        }
        let off = 0;
        while (off < chunk.length) off += await to.write(chunk.subarray(off));
      }
    } catch { /* either side closed */ }
    closeBoth(from, to);
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        accepted++;
        const upstream = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
        conns.add(conn).add(upstream);
        pipe(conn, upstream, true);
        pipe(upstream, conn, false);
      }
    } catch { /* closed */ }
  })();
  const transport = new HttpTransport(b.handlers, {
    self: "a",
    peers: [{ id: "b", rpcUrl: `http://127.0.0.1:${listener.addr.port}` }],
    ..._FAST,
  });
  try {
    const first = sampleMessage(MessageType.App, "a", "b", 1);
    transport.send([first]);
    await changed.until(() => b.batches.length === 1, "the first batch");
    armed = true;
    transport.send([sampleMessage(MessageType.App, "a", "b", 2, [50_000])]);
    // The stream breaks: the transport notices (no stream left open) without a further send.
    const start = performance.now();
    while (transport.stats()["b"]!.inflight !== 0) {
      assert.ok(performance.now() - start < 5000, "the broken stream was not noticed");
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const later = [3, 4].map((i) => sampleMessage(MessageType.App, "a", "b", i));
    transport.send([later[0]!]);
    transport.send([later[1]!]);
    await changed.until(() => b.batches.flat().length === 3, "the later batches");
    // The cut frame was never handed on, in part or whole; the later ones arrived in order.
    assert.deepStrictEqual(b.batches.flat(), [first, ...later]);
    assert.strictEqual(accepted, 2);
    assert.deepStrictEqual(b.unreachable, []);
  } finally {
    await transport.close();
    listener.close();
    await accepting;
    for (const c of [...conns]) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
    await server.shutdown();
  }
});

Deno.test("HttpTransport sends requests to a peer without the message stream (an older version)", async () => {
  const changed = new Condition();
  const b = _recording(changed);
  const inner = createPeerHandler(b.handlers);
  const paths: string[] = [];
  const server = _serve((req) => {
    const path = new URL(req.url).pathname;
    paths.push(path);
    return path === STREAM_PATH ? Promise.resolve(new Response(null, { status: 404 })) : inner(req);
  });
  const transport = new HttpTransport(b.handlers, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    ..._FAST,
  });
  try {
    const msgs = [1, 2, 3].map((i) => sampleMessage(MessageType.App, "a", "b", i));
    transport.send([msgs[0]!]);
    await changed.until(() => b.batches.length === 1, "the first batch");
    transport.send(msgs.slice(1));
    await changed.until(() => b.batches.flat().length === 3, "the later batch");
    assert.deepStrictEqual(b.batches.flat(), msgs);
    assert.deepStrictEqual(paths, [STREAM_PATH, "/raft/messages", "/raft/messages"]);
    assert.deepStrictEqual(b.unreachable, []);
  } finally {
    await transport.close();
    await server.shutdown();
  }
});

Deno.test("streams a stranger opens under a member's name do not end the member's busy stream", async () => {
  // Without mutual TLS anyone can open streams naming a member: past the limit, the newest of
  // them ends, not the member's own stream, which delivers the member's traffic.
  const { handler, batches } = _guardedFixture({ maxStreamsPerSender: 4 });
  const real = _pushBody();
  const realRes = await handler(_post(STREAM_PATH, real.stream, { [FROM_HEADER]: "n1" }));
  real.push(_frame([_heartbeat("n1")]));
  await waitFor(() => batches.length >= 1, {
    intervalMs: 1,
    message: "the first frame to be delivered",
  });
  const strangers = [];
  for (let i = 0; i < 5; i++) {
    const body = _pushBody();
    const res = await handler(_post(STREAM_PATH, body.stream, { [FROM_HEADER]: "n1" }));
    assert.strictEqual(res.status, 200);
    strangers.push({ body, res });
  }
  // Four were open when the fifth and the sixth came: each ended the newest stranger's.
  await _answerEnds(strangers[2]!.res);
  await _answerEnds(strangers[3]!.res);
  real.push(_frame([_heartbeat("n1")]));
  await waitFor(() => batches.length >= 2, {
    intervalMs: 1,
    message: "the member's second frame to be delivered",
  });
  for (const i of [0, 1, 4]) strangers[i]!.body.end();
  for (const i of [0, 1, 4]) await _answerEnds(strangers[i]!.res);
  real.end();
  await _answerEnds(realRes);
  assert.strictEqual(batches.length, 2);
});

Deno.test("past the stream limit, a stream idle for streamIdleMs ends first (its connection died silently)", async () => {
  const { handler, batches } = _guardedFixture({ maxStreamsPerSender: 2, streamIdleMs: 1 });
  const dead = _pushBody();
  const deadRes = await handler(_post(STREAM_PATH, dead.stream, { [FROM_HEADER]: "n1" }));
  const other = _pushBody();
  const otherRes = await handler(_post(STREAM_PATH, other.stream, { [FROM_HEADER]: "n3" }));
  const live = _pushBody();
  const liveRes = await handler(_post(STREAM_PATH, live.stream, { [FROM_HEADER]: "n1" }));
  live.push(_frame([_heartbeat("n1")]));
  await waitFor(() => batches.length >= 1, {
    intervalMs: 1,
    message: "the live stream's frame to be delivered",
  });
  // The dead stream has been idle for at least streamIdleMs once the clock moved past it.
  const idleSince = performance.now();
  while (performance.now() - idleSince < 2) await new Promise((r) => setTimeout(r, 1));
  const next = _pushBody();
  const nextRes = await handler(_post(STREAM_PATH, next.stream, { [FROM_HEADER]: "n1" }));
  assert.deepStrictEqual([deadRes.status, liveRes.status, nextRes.status], [200, 200, 200]);
  await _answerEnds(deadRes);
  next.push(_frame([_heartbeat("n1")]));
  other.push(_frame([_heartbeat("n3")]));
  for (const b of [live, next, other]) b.end();
  for (const r of [liveRes, nextRes, otherRes]) await _answerEnds(r);
  assert.deepStrictEqual(batches.map((b) => b[0]!.from).sort(), ["n1", "n1", "n3"]);
});

Deno.test("a sender the node says was removed gets 410 removed with the index, before its body is read; the sending transport drops its queue and calls onRemoved", async () => {
  const batches: Message[][] = [];
  const handlers = {
    onMessages: (messages: Message[]) => void batches.push(messages),
    onSnapshot: async () => {},
    // "n3" is outside this node's configurations since the committed one at index 7.
    removedAt: (from: NodeId, since: number) => from === "n3" && since <= 7 ? 7 : 0,
  };
  const handler = createPeerHandler(handlers, {
    validator: new PeerValidator({ self: "n2", members: ["n1", "n2"] }),
  });
  const body = _stalledBody(encodeMessages([_heartbeat("n3")]));
  const res = await handler(
    _post("/raft/messages", body.stream, { [FROM_HEADER]: "n3", [MEMBER_SINCE_HEADER]: "2" }),
  );
  assert.strictEqual(res.status, 410);
  assert.strictEqual(res.headers.get(REMOVED_AT_HEADER), "7");
  const json = await res.json();
  assert.strictEqual(json.code, "removed");
  assert.strictEqual(json.index, 7);
  assert.strictEqual(body.pulls(), 0, "the body was read");
  // One that counts itself a member by a configuration entry at that very index is told too (the
  // index is a commit index: the committed entry there is not its addition, which a new leader
  // overwrote).
  const at = await handler(
    _post("/raft/messages", encodeMessages([_heartbeat("n3")]), {
      [FROM_HEADER]: "n3",
      [MEMBER_SINCE_HEADER]: "7",
    }),
  );
  assert.strictEqual(at.status, 410);
  await at.body?.cancel();
  // A sender that does not say it counts itself a member (a stranger), or says so by a
  // configuration above that index (the peer lags behind its addition), gets 403.
  for (const since of [undefined, "8", "9", "x"]) {
    const headers: Record<string, string> = { [FROM_HEADER]: "n3" };
    if (since !== undefined) headers[MEMBER_SINCE_HEADER] = since;
    const other = await handler(
      _post("/raft/messages", encodeMessages([_heartbeat("n3")]), headers),
    );
    assert.strictEqual(other.status, 403, `member since ${since}`);
    await other.body?.cancel();
  }

  const server = _serve(handler);
  try {
    for (const stream of [true, false]) {
      const told: [NodeId, number][] = [];
      const changed = new Condition();
      const gone = new HttpTransport({
        memberSince: () => 2,
        onRemoved: (peer, index) => {
          told.push([peer, index]);
          changed.notify();
        },
      }, { ..._FAST, self: "n3", stream, peers: [{ id: "n2", rpcUrl: _url(server) }] });
      const member = new HttpTransport({}, {
        ..._FAST,
        self: "n1",
        stream,
        peers: [{ id: "n2", rpcUrl: _url(server) }],
      });
      try {
        gone.send([message({ type: MessageType.PreVote, from: "n3", to: "n2", term: 2 })]);
        await changed.until(() => told.length > 0, "onRemoved");
        assert.deepStrictEqual(told, [["n2", 7]]);
        const before = batches.length;
        member.send([_heartbeat("n1")]);
        await waitFor(() => batches.length > before, { message: "the member's batch" });
        assert.ok(batches.every((b) => b.every((m) => m.from === "n1")), "a batch of n3 taken");
      } finally {
        await gone.close();
        await member.close();
      }
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("createPeerHandler answers a member's members query with the committed configuration, a stranger's with 403", async () => {
  const unknown: [NodeId, number][] = [];
  const conf = {
    index: 5,
    commit: 9,
    members: [
      { node_id: "n1", rpc_url: "http://a:1", api_url: "http://a:2", role: "voter" as const },
      { node_id: "n2", rpc_url: "http://b:1", api_url: "http://b:2", role: "voter" as const },
      { node_id: "n4", rpc_url: "http://d:1", api_url: "http://d:2", role: "learner" as const },
    ],
  };
  const handler = createPeerHandler({
    onMessages: () => {},
    onSnapshot: async () => {},
    removedAt: (from: NodeId, since: number) => from === "n3" && since <= 7 ? 7 : 0,
    committedMembers: () => conf,
    onUnknownSender: (from, since) => void unknown.push([from, since]),
    checkCluster: (claimed) => claimed === "c" ? null : `cluster ${claimed}`,
  }, { validator: new PeerValidator({ self: "n2", members: ["n1", "n2"] }) });
  const ask = (from: string, headers: Record<string, string> = {}) =>
    handler(_post(MEMBERS_PATH, null, { [FROM_HEADER]: from, [CLUSTER_HEADER]: "c", ...headers }));

  const ok = await ask("n1");
  assert.strictEqual(ok.status, 200);
  assert.deepStrictEqual(parseCommittedMembers(await ok.json()), conf);
  // A stranger is refused and reported with the configuration it claims; one that claims none too.
  for (const since of ["40", undefined]) {
    const refused = await ask("evil", since === undefined ? {} : { [MEMBER_SINCE_HEADER]: since });
    assert.strictEqual(refused.status, 403);
    await refused.body?.cancel();
  }
  assert.deepStrictEqual(unknown, [["evil", 40], ["evil", 0]]);
  // A removed member is told so; the wrong cluster is refused before anything else.
  const removed = await ask("n3", { [MEMBER_SINCE_HEADER]: "2" });
  assert.strictEqual(removed.status, 410);
  assert.strictEqual(removed.headers.get(REMOVED_AT_HEADER), "7");
  await removed.body?.cancel();
  const other = await handler(_post(MEMBERS_PATH, null, { [FROM_HEADER]: "n1" }));
  assert.strictEqual(other.status, 403);
  await other.body?.cancel();
  assert.strictEqual(unknown.length, 2);

  // The client side: a member gets the answer; an answer that is not one is null.
  const server = _serve(handler);
  // It sends the cluster its node knows.
  const client = new HttpTransport({ clusterId: () => "c" }, {
    ..._FAST,
    self: "n1",
    peers: [{ id: "n2", rpcUrl: _url(server) }],
  });
  try {
    assert.deepStrictEqual(await client.queryMembers("n2"), conf);
    assert.strictEqual(await client.queryMembers("n9"), null);
  } finally {
    await client.close();
    await server.shutdown();
  }
  // A peer whose answer never ends is cut off at the cap (1 MiB), not read until the timeout.
  let cancelled = false;
  const endless = _serve(() =>
    Promise.resolve(
      new Response(
        new ReadableStream<Uint8Array>({
          pull: (c) => c.enqueue(new Uint8Array(64 << 10).fill(0x20)),
          cancel: () => {
            cancelled = true;
          },
        }),
        { headers: { "content-type": "application/json" } },
      ),
    )
  );
  const patient = new HttpTransport({ clusterId: () => "c" }, {
    ..._FAST,
    rpcTimeoutMs: 60_000,
    self: "n1",
    peers: [{ id: "n2", rpcUrl: _url(endless) }],
  });
  try {
    const started = performance.now();
    assert.strictEqual(await patient.queryMembers("n2"), null);
    const took = performance.now() - started;
    assert.ok(took < 30_000, `the endless answer was read for ${took.toFixed(0)} ms`);
  } finally {
    await patient.close();
    await endless.shutdown();
  }
  assert.ok(cancelled, "the endless answer's stream was not cancelled");
  for (
    const bad of [
      null,
      { index: 0, commit: 1, members: conf.members },
      { index: 5, commit: 4, members: conf.members },
      { index: 5, commit: 9, members: [] },
      { index: 5, commit: 9, members: [{ ...conf.members[0], role: "boss" }] },
    ]
  ) {
    assert.strictEqual(parseCommittedMembers(bad), null, JSON.stringify(bad));
  }
});

// --- raftkv_peer_refusals_total: every refusal counted once, by reason. ---

/** `raftkv_peer_refusals_total` of every reason, from a render of `registry`. */
function _refusalCounts(registry: MetricsRegistry): Record<PeerRefusalReason, number> {
  const samples = parseSamples(registry.render());
  return Object.fromEntries(
    PEER_REFUSAL_REASONS.map((
      r,
    ) => [r, sample(samples, `raftkv_peer_refusals_total{reason="${r}"}`)]),
  ) as Record<PeerRefusalReason, number>;
}

/** Counts of every reason at 0, but `reason` at `n`. */
function _only(reason: PeerRefusalReason | null, n = 1): Record<PeerRefusalReason, number> {
  return Object.fromEntries(PEER_REFUSAL_REASONS.map((r) => [r, r === reason ? n : 0])) as Record<
    PeerRefusalReason,
    number
  >;
}

Deno.test("raftkv_peer_refusals_total has a series at 0 for every reason from the start, and help naming each", () => {
  const registry = new MetricsRegistry();
  countPeerRefusals(registry);
  assert.deepStrictEqual(_refusalCounts(registry), _only(null));
  const text = registry.render();
  const series = [...parseSamples(text).keys()];
  assert.deepStrictEqual(
    series,
    PEER_REFUSAL_REASONS.map((r) => `raftkv_peer_refusals_total{reason="${r}"}`),
  );
  assert.ok(text.includes("# TYPE raftkv_peer_refusals_total counter\n"), text);
  const help = /^# HELP raftkv_peer_refusals_total (.*)$/m.exec(text)?.[1] ?? "";
  for (const reason of PEER_REFUSAL_REASONS) {
    // Each with its status; a refused handshake has none.
    const status = reason === "handshake" ? "mutual TLS" : "\\d{3}";
    assert.match(help, new RegExp(`\\b${reason} \\(${status}`), reason);
  }
  assert.throws(() => countPeerRefusals(registry), RangeError);
});

Deno.test("every refusal of the peer handler counts once in raftkv_peer_refusals_total under its reason; accepted requests count nothing", async () => {
  const registry = new MetricsRegistry();
  const onRefusal = countPeerRefusals(registry);
  const batches: Message[][] = [];
  let refuseNext = false;
  const handlers = {
    onMessages(messages: Message[]) {
      if (refuseNext) {
        refuseNext = false;
        throw new PeerRefusedError("disagrees with the entry at 1");
      }
      batches.push(messages);
    },
    async onSnapshot(msg: Message, body: ReadableStream<Uint8Array>) {
      for await (const _ of body) { /* store */ }
      if (msg.snapshot?.index === 507) throw new PeerNoSpaceError("no room for the snapshot");
      if (msg.snapshot?.index === 500) throw new Error("the disk failed");
    },
    checkCluster: (claimed: string | undefined) =>
      claimed === "other" ? `the sender is a member of cluster "other"` : null,
    removedAt: (from: string, since: number) => from === "gone" && since <= 5 ? 5 : 0,
    committedMembers: () => ({
      index: 1,
      commit: 1,
      members: _MEMBERS.map((id) => ({
        node_id: id,
        rpc_url: `http://${id}`,
        api_url: `http://${id}`,
        role: "voter" as const,
      })),
    }),
  };
  const options = {
    validator: new PeerValidator({ self: "n2", members: _MEMBERS }),
    maxBodyBytes: 1024,
    maxRequestsPerSender: 1,
    onRefusal,
    // The API's own answers (a 403 here) are the API's to count.
    forward: () => Promise.resolve(Response.json({ error: "no token" }, { status: 403 })),
  };
  const handler = createPeerHandler(handlers, options);
  // The same node's counter, for uploads that may pause for 20 ms only.
  const impatient = createPeerHandler(handlers, { ...options, snapshotIdleTimeoutMs: 20 });
  const counted = _only(null);
  /** Awaits `res`, checks its status, and that `reason` (if any) and nothing else counted one. */
  const expect = async (
    reason: PeerRefusalReason | null,
    status: number,
    res: Promise<Response>,
  ) => {
    const answer = await res;
    assert.strictEqual(answer.status, status, `${reason}: ${await answer.text()}`);
    if (reason !== null) counted[reason]++;
    assert.deepStrictEqual(
      _refusalCounts(registry),
      counted,
      `${reason ?? "accepted"} (${status})`,
    );
  };
  const from = (id: string, more: Record<string, string> = {}) => ({ [FROM_HEADER]: id, ...more });
  const beat = (fields: Partial<Message> = {}) => encodeMessages([_heartbeat("n1", fields)]);

  // Accepted, or answered by the API or failed on this node: nothing counts.
  await expect(null, 204, handler(_post("/raft/messages", beat(), from("n1"))));
  await expect(null, 200, handler(_post(MEMBERS_PATH, null, from("n1"))));
  await expect(
    null,
    204,
    handler(_post("/raft/snapshot", new Uint8Array(8), _snapHeaders(_snap()))),
  );
  await expect(null, 403, handler(_post("/forward/v1/data/a", "x")));
  const failing = _snap("n1", { snapshot: { index: 500, term: 2, voters: _MEMBERS } });
  await expect(
    null,
    500,
    handler(_post("/raft/snapshot", new Uint8Array(8), _snapHeaders(failing))),
  );
  assert.strictEqual(batches.length, 1);

  // Each check that refuses, in the handler's order.
  await expect(
    "other_cluster",
    403,
    handler(_post("/raft/messages", beat(), from("n1", { [CLUSTER_HEADER]: "other" }))),
  );
  await expect("unknown_path", 404, handler(_post("/raft/nothing", beat(), from("n1"))));
  await expect("unknown_path", 405, handler(new Request("http://node/raft/messages")));
  await expect(
    "removed",
    410,
    handler(_post("/raft/messages", beat(), from("gone", { [MEMBER_SINCE_HEADER]: "3" }))),
  );
  await expect("not_member", 403, handler(_post("/raft/messages", beat(), from("evil"))));
  await expect("not_member", 403, handler(_post(MEMBERS_PATH, null, from("evil"))));
  // With a proven identity: a header naming another, and a message claiming another.
  await expect(
    "identity",
    403,
    handler(_post("/raft/messages", beat(), from("n3")), { peer: "n1" }),
  );
  await expect(
    "identity",
    403,
    handler(
      _post("/raft/messages", encodeMessages([_heartbeat("n1"), _heartbeat("n3")]), from("n1")),
      { peer: "n1" },
    ),
  );
  await expect(
    "not_member",
    403,
    handler(_post("/raft/messages", beat(), from("evil")), {
      peer: "evil",
    }),
  );
  const stalled = _stalledBody(beat().subarray(0, 4), beat().subarray(4));
  const inProgress = handler(_post("/raft/messages", stalled.stream, from("n1")));
  await expect("too_many_requests", 429, handler(_post("/raft/messages", beat(), from("n1"))));
  stalled.finish();
  await expect(null, 204, inProgress);
  const upload = _stalledBody(new Uint8Array(10), new Uint8Array(10));
  const uploading = handler(_post("/raft/snapshot", upload.stream, _snapHeaders(_snap())));
  await expect(
    "snapshot_busy",
    429,
    handler(_post("/raft/snapshot", new Uint8Array(8), _snapHeaders(_snap()))),
  );
  upload.finish();
  await expect(null, 204, uploading);
  await expect(
    "too_large",
    413,
    handler(_post("/raft/messages", new Uint8Array(2048), from("n1"))),
  );
  const cut = _stalledBody(beat().subarray(0, 4));
  const cutOff = handler(_post("/raft/messages", cut.stream, from("n1")));
  cut.fail(new Error("connection reset"));
  await expect("aborted", 400, cutOff);
  await expect(
    "malformed",
    400,
    handler(_post("/raft/messages", new Uint8Array([1, 2, 3]), from("n1"))),
  );
  await expect("malformed", 400, handler(_post("/raft/snapshot", new Uint8Array(8), from("n1"))));
  await expect(
    "invalid",
    400,
    handler(_post("/raft/messages", beat({ term: Number.MAX_SAFE_INTEGER }), from("n1"))),
  );
  await expect(
    "misaddressed",
    421,
    handler(_post("/raft/messages", beat({ to: "n3" }), from("n1"))),
  );
  refuseNext = true;
  await expect("conflict", 409, handler(_post("/raft/messages", beat(), from("n1"))));
  const idle = _stalledBody(new Uint8Array(10));
  await expect(
    "timeout",
    408,
    impatient(_post("/raft/snapshot", idle.stream, _snapHeaders(_snap()))),
  );
  const full = _snap("n1", { snapshot: { index: 507, term: 2, voters: _MEMBERS } });
  await expect(
    "no_space",
    507,
    handler(_post("/raft/snapshot", new Uint8Array(8), _snapHeaders(full))),
  );

  // A message stream: a refused batch counts once and the stream goes on; a frame over the limit
  // counts once and ends it; a stream refused before it is accepted counts once.
  const body = _pushBody();
  const stream = await handler(_post(STREAM_PATH, body.stream, from("n1")));
  assert.strictEqual(stream.status, 200);
  const delivered = batches.length;
  body.push(_frame([_heartbeat("n1", { commit: 2 })]));
  await waitFor(() => batches.length === delivered + 1, { message: "the stream's first batch" });
  body.push(_frame([_heartbeat("n1", { term: Number.MAX_SAFE_INTEGER })]));
  counted.invalid++;
  await waitFor(() => _refusalCounts(registry).invalid === counted.invalid, {
    message: "the stream's refused batch to be counted",
  });
  body.push(_frame([_heartbeat("n1", { commit: 3 })]));
  await waitFor(() => batches.length === delivered + 2, { message: "the stream to go on" });
  const huge = new Uint8Array(4);
  new DataView(huge.buffer).setUint32(0, 2048);
  body.push(huge);
  await _answerEnds(stream);
  counted.too_large++;
  assert.deepStrictEqual(_refusalCounts(registry), counted, "the stream's frame over the limit");
  await expect("not_member", 403, handler(_post(STREAM_PATH, _pushBody().stream, from("evil"))));
});

Deno.test("over mutual TLS, a non-member's connection and a certificate naming no node each count one refusal; a member's request none", async () => {
  const dir = await Deno.makeTempDir();
  const registry = new MetricsRegistry();
  const onRefusal = countPeerRefusals(registry);
  let server: TlsServer | null = null;
  const clients: H2Client[] = [];
  try {
    const certs = await makeCertificates(dir, { nodes: ["n1", "n2", "evil"] });
    const read = (path: string) => Deno.readTextFileSync(path);
    const ca = read(certs.ca);
    // A certificate from the cluster CA whose subject has no CN: it proves no node.
    const nameless = { key: join(dir, "nameless.key"), cert: join(dir, "nameless.crt") };
    const csr = join(dir, "nameless.csr");
    const openssl = async (...args: string[]) => {
      const out = await new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" })
        .output();
      assert.ok(out.success, `openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    };
    await openssl(
      ...["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"],
      ...["-keyout", nameless.key, "-out", csr, "-subj", "/O=raftkv"],
    );
    const ext = join(dir, "nameless.ext");
    await Deno.writeTextFile(
      ext,
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    await openssl(
      ...["x509", "-req", "-in", csr, "-out", nameless.cert, "-days", "1", "-extfile", ext],
      ...["-CA", certs.ca, "-CAkey", join(dir, "ca.key"), "-CAcreateserial"],
    );
    const validator = new PeerValidator({ self: "n2", members: _MEMBERS });
    const { handler, batches } = _guardedFixture({ requirePeerIdentity: true, onRefusal });
    server = await serveMutualTls({
      hostname: "127.0.0.1",
      port: 0,
      ca,
      cert: read(certs.node("n2").cert),
      key: read(certs.node("n2").key),
      isMember: (id) => validator.checkSender(id) === null,
      onRefusal,
    }, handler);
    const url = `https://127.0.0.1:${server.addr.port}/raft/messages`;
    const post = async (files: { cert: string; key: string }, sender: string) => {
      const client = new H2Client({ tls: { ca, cert: read(files.cert), key: read(files.key) } });
      clients.push(client);
      const res = await client.fetch(url, {
        method: "POST",
        headers: { [FROM_HEADER]: sender, "content-type": "application/octet-stream" },
        body: encodeMessages([_heartbeat(sender)]),
        signal: AbortSignal.timeout(5000),
      });
      await res.body?.cancel();
      return res.status;
    };
    assert.strictEqual(await post(certs.node("n1"), "n1"), 204);
    assert.strictEqual(batches.length, 1);
    assert.deepStrictEqual(_refusalCounts(registry), _only(null));
    // Refused by the handler; the server then ends the connection and counts nothing more.
    assert.strictEqual(await post(certs.node("evil"), "evil"), 403);
    assert.deepStrictEqual(_refusalCounts(registry), _only("not_member"));
    // Refused by the server itself, before the handler.
    assert.strictEqual(await post(nameless, "n1"), 403);
    assert.deepStrictEqual(_refusalCounts(registry), { ..._only("not_member"), identity: 1 });
    assert.strictEqual(batches.length, 1);
  } finally {
    for (const client of clients) client.close();
    await server?.close();
    await Deno.remove(dir, { recursive: true });
  }
});
