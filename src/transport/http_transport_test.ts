import assert from "node:assert/strict";
import { type Message, MessageType, type NodeId } from "../raft/types.ts";
import { encodeMessages } from "./codec.ts";
import {
  CLUSTER_HEADER,
  createPeerHandler,
  FROM_HEADER,
  HttpTransport,
  type HttpTransportOptions,
  MESSAGE_HEADER,
} from "./http_transport.ts";
import { Condition, sampleMessage, testTransportConformance } from "./transport_conformance.ts";
import type { TransportHandlers } from "./transport.ts";

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

/** Handlers that record what arrives and notify `changed`. */
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
    for (let i = 0; i < 200; i++) {
      const msg = sampleMessage(MessageType.App, "a", "b", i, [i * 100]);
      sent.push(msg);
      transport.send([msg]);
      // Spread the sends over several turns so that several requests are in flight at once.
      if (i % 10 === 0) await Promise.resolve();
    }
    await changed.until(() => b.batches.flat().length === sent.length, "all messages");
    assert.deepStrictEqual(b.batches.flat(), sent);
    assert.ok(b.batches.length > 1, "expected several requests");
    assert.deepStrictEqual(proxy.prefaces, [_H2_PREFACE]);
  } finally {
    await transport.close();
    await proxy.close();
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
    rpcTimeoutMs: 500,
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
    assert.ok(elapsed < 500, `b's heartbeats took ${elapsed} ms, as long as c's timeout`);
    await changed.until(() => a.unreachable.includes("c"), `"c" to be reported unreachable`);
    assert.ok(performance.now() - start >= 1000, "reported before two timeouts passed");
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
  const inner = createPeerHandler(b.handlers);
  let arrived = 0;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  const server = _serve(async (req) => {
    arrived++;
    changed.notify();
    await gate;
    return inner(req);
  });
  const transport = new HttpTransport({}, {
    self: "a",
    peers: [{ id: "b", rpcUrl: _url(server) }],
    maxInflightPerPeer: 1,
    maxQueuedPerPeer: 3,
  });
  try {
    const first = sampleMessage(MessageType.App, "a", "b", 0);
    transport.send([first]);
    await changed.until(() => arrived === 1, "the first request");
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

function _handlerFixture(options: Parameters<typeof createPeerHandler>[1] = {}) {
  const batches: Message[][] = [];
  const snapshots: { msg: Message; bytes: number }[] = [];
  const handler = createPeerHandler({
    onMessages: (messages) => batches.push(messages),
    async onSnapshot(msg, body) {
      let bytes = 0;
      for await (const chunk of body) bytes += chunk.length;
      if (msg.index === 666) throw new Error("disk full");
      snapshots.push({ msg, bytes });
    },
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

Deno.test("createPeerHandler checks the cluster and the addressee when configured", async () => {
  const { handler, batches } = _handlerFixture({ cluster: "prod", self: "b" });
  const body = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  const wrongCluster = await handler(_post("/raft/messages", body, { [CLUSTER_HEADER]: "test" }));
  assert.strictEqual(wrongCluster.status, 403);
  assert.match((await _json(wrongCluster)).error, /"test"/);
  const noCluster = await handler(_post("/raft/messages", body));
  assert.strictEqual(noCluster.status, 403);
  await noCluster.body?.cancel();
  const misaddressed = await handler(
    _post("/raft/messages", encodeMessages([sampleMessage(MessageType.App, "a", "c", 1)]), {
      [CLUSTER_HEADER]: "prod",
    }),
  );
  assert.strictEqual(misaddressed.status, 421);
  assert.match((await _json(misaddressed)).error, /"c"/);
  const ok = await handler(_post("/raft/messages", body, { [CLUSTER_HEADER]: "prod" }));
  assert.strictEqual(ok.status, 204);
  assert.strictEqual(batches.length, 1);
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
  assert.strictEqual((await stuck).status, 500);
});

Deno.test("createPeerHandler stores a snapshot and replies 204, or 500 when storing fails", async () => {
  const { handler, snapshots } = _handlerFixture();
  const header = (msg: Message) => ({
    [MESSAGE_HEADER]: encodeMessages([msg]).toBase64({ alphabet: "base64url", omitPadding: true }),
  });
  const msg = sampleMessage(MessageType.Snap, "a", "b", 1);
  const ok = await handler(_post("/raft/snapshot", new Uint8Array(3000), header(msg)));
  assert.strictEqual(ok.status, 204);
  assert.deepStrictEqual(snapshots, [{ msg, bytes: 3000 }]);

  const failing = { ...msg, index: 666 };
  const failed = await handler(_post("/raft/snapshot", new Uint8Array(10), header(failing)));
  assert.strictEqual(failed.status, 500);
  assert.strictEqual((await _json(failed)).error, "disk full");
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
