import assert from "node:assert/strict";
import http2 from "node:http2";
import type { TLSSocket } from "node:tls";
import { makeCertificates } from "../../testing/certs.ts";
import { LinkProxy } from "../../testing/proxy.ts";
import { type BatchItem, decodeBatch, encodeAnswer, FORWARD_BATCH_TYPE } from "./forward_batch.ts";
import { CLUSTER_HEADER, createForwarder, ForwardConnectError } from "./forwarder.ts";
import { FORWARD_PATH_PREFIX } from "./forward.ts";
import {
  CLUSTER_HEADER as PEER_CLUSTER_HEADER,
  FORWARD_PATH_PREFIX as PEER_FORWARD_PATH_PREFIX,
} from "../transport/http_transport.ts";

/** A TLS HTTP/2 server that requires a client certificate from `ca`, as a peer port with mTLS. */
async function mutualTlsServer(files: { ca: string; cert: string; key: string }) {
  const seen: { path: string; method: string; clientCn: string | null; body: string }[] = [];
  const server = http2.createSecureServer({
    ca: await Deno.readTextFile(files.ca),
    cert: await Deno.readTextFile(files.cert),
    key: await Deno.readTextFile(files.key),
    requestCert: true,
    rejectUnauthorized: true,
  });
  server.on("stream", (stream, headers) => {
    const socket = stream.session?.socket as TLSSocket | undefined;
    const cn = socket?.getPeerCertificate()?.subject?.CN ?? null;
    let body = "";
    stream.on("data", (chunk: Uint8Array) => body += new TextDecoder().decode(chunk));
    stream.on("end", () => {
      seen.push({
        path: String(headers[":path"]),
        method: String(headers[":method"]),
        clientCn: typeof cn === "string" ? cn : null,
        body,
      });
      stream.respond({ ":status": 200, "content-type": "application/json", "x-seen": "1" });
      stream.end(JSON.stringify({ ok: true }));
    });
  });
  server.on("tlsClientError", () => {});
  const port = await new Promise<number>((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
  return {
    port,
    seen,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

Deno.test("createForwarder() speaks TLS with a client certificate to an https peer URL", async () => {
  const dir = await Deno.makeTempDir();
  const certs = await makeCertificates(dir, {
    nodes: ["n1", "n2"],
    untrustedNodes: ["intruder"],
  });
  const n1 = certs.node("n1");
  const server = await mutualTlsServer({ ca: certs.ca, ...certs.node("n2") });
  const ca = await Deno.readTextFile(certs.ca);
  const url = `https://localhost:${server.port}/forward/v1/data?x=1`;
  const init = () => ({
    method: "POST",
    headers: { "content-type": "application/json", "x-raftkv-forwarded-by": "n1" },
    body: new TextEncoder().encode('{"k":"a","v":"1"}'),
    signal: AbortSignal.timeout(5000),
  });
  const trusted = createForwarder({
    ca,
    cert: await Deno.readTextFile(n1.cert),
    key: await Deno.readTextFile(n1.key),
  });
  const anonymous = createForwarder({ ca });
  const intruder = createForwarder({
    ca,
    cert: await Deno.readTextFile(certs.node("intruder").cert),
    key: await Deno.readTextFile(certs.node("intruder").key),
  });
  const noCa = createForwarder();
  try {
    for (let i = 0; i < 2; i++) {
      const res = await trusted.forward(url, init());
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("x-seen"), "1");
      assert.deepEqual(await res.json(), { ok: true });
    }
    assert.deepEqual(server.seen.map((s) => [s.method, s.path, s.clientCn, s.body]), [
      ["POST", "/forward/v1/data?x=1", "n1", '{"k":"a","v":"1"}'],
      ["POST", "/forward/v1/data?x=1", "n1", '{"k":"a","v":"1"}'],
    ]);
    // Refused handshakes: no client certificate, one from another CA, a server this node does
    // not trust. Nothing was sent, so each is a connect failure (a write was not applied).
    for (const client of [anonymous, intruder, noCa]) {
      await assert.rejects(() => client.forward(url, init()), ForwardConnectError);
    }
    assert.equal(server.seen.length, 2);
  } finally {
    for (const client of [trusted, anonymous, intruder, noCa]) client.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("createForwarder() rejects with the signal's reason once it aborts", async () => {
  // A cleartext HTTP/2 server that never answers.
  const server = http2.createServer();
  const arrived = Promise.withResolvers<void>();
  server.on("stream", () => arrived.resolve());
  const port = await new Promise<number>((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
  const client = createForwarder();
  try {
    const controller = new AbortController();
    const pending = client.forward(`http://127.0.0.1:${port}/forward/v1/data/a`, {
      signal: controller.signal,
    });
    await arrived.promise;
    controller.abort(new DOMException("gave up", "TimeoutError"));
    await assert.rejects(
      () => pending,
      (e) => e instanceof DOMException && e.message === "gave up",
    );
  } finally {
    client.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("createForwarder() fails an answer whose connection breaks after the headers instead of ending it", async () => {
  // The leader's TLS peer server (node:http2) sends the headers on their own; a leader killed
  // before the body leaves the stream "ended" in Deno, with a reset code. Relaying that as a
  // whole answer would give the client a 200 with an empty body.
  const server = http2.createServer();
  server.on("stream", (stream) => {
    stream.respond({ ":status": 200, "content-type": "application/json" });
  });
  const port = await new Promise<number>((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
  await using proxy = LinkProxy.listen({ port });
  const client = createForwarder();
  try {
    const res = await client.forward(`http://127.0.0.1:${proxy.port}/forward/v1/data/a`, {
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(res.status, 200);
    const body = res.arrayBuffer();
    proxy.setMode("refuse"); // the connection closes, as when the leader's process dies
    await assert.rejects(body, /HTTP\/2 stream closed before the response body ended \(code 8\)/);
  } finally {
    client.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("createForwarder() closes its connections without GOAWAY, which a node:http2 server can die of", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const certs = await makeCertificates(dir, { nodes: ["n1", "n2"] });
    const server = http2.createSecureServer({
      ca: await Deno.readTextFile(certs.ca),
      cert: await Deno.readTextFile(certs.node("n2").cert),
      key: await Deno.readTextFile(certs.node("n2").key),
      requestCert: true,
      rejectUnauthorized: true,
    });
    const seen: string[] = [];
    const closed = Promise.withResolvers<void>();
    const arrived = Promise.withResolvers<void>();
    server.on("session", (session) => {
      session.on("goaway", (code: number) => seen.push(`GOAWAY ${code}`));
      session.on("error", () => {});
      session.on("close", () => closed.resolve());
    });
    server.on("stream", (stream) => {
      stream.on("error", () => {});
      arrived.resolve(); // and never answer: the forward is in flight when the client closes
    });
    const port = await new Promise<number>((resolve) => {
      server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
    });
    const client = createForwarder({
      ca: await Deno.readTextFile(certs.ca),
      cert: await Deno.readTextFile(certs.node("n1").cert),
      key: await Deno.readTextFile(certs.node("n1").key),
    });
    try {
      const pending = client.forward(`https://localhost:${port}/forward/v1/data/a`, {
        signal: AbortSignal.timeout(5000),
      });
      await arrived.promise;
      client.close();
      await assert.rejects(pending);
      await closed.promise;
      assert.deepEqual(seen, [], "the leader was told GOAWAY");
    } finally {
      client.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A cleartext HTTP/2 server calling `onBatch` with each batch's requests and stream. */
async function batchServer(
  onBatch: (items: BatchItem[], stream: http2.ServerHttp2Stream) => void,
) {
  const server = http2.createServer();
  const paths: string[] = [];
  const clusters: (string | undefined)[] = [];
  server.on("stream", (stream, headers) => {
    paths.push(String(headers[":path"]));
    clusters.push(headers["x-raftkv-cluster"] as string | undefined);
    const chunks: Uint8Array[] = [];
    stream.on("data", (c: Uint8Array) => chunks.push(new Uint8Array(c)));
    stream.on("error", () => {});
    stream.on("end", async () => {
      const body = new Uint8Array(await new Blob(chunks as BlobPart[]).arrayBuffer());
      if (headers[":path"] === "/forward/batch") return onBatch(decodeBatch(body), stream);
      stream.respond({ ":status": 200, "content-type": "application/json" });
      stream.end("{}");
    });
  });
  const port = await new Promise<number>((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
  return {
    port,
    paths,
    clusters,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const answerFrame = (item: number, status: number, body: string) =>
  encodeAnswer({
    item,
    status,
    headers: { "content-type": "application/json" },
    body: new TextEncoder().encode(body),
  });

Deno.test("createForwarder({ batch }) sends writes of one turn as one batch, without those aborted before it left", async () => {
  const batches: BatchItem[][] = [];
  const server = await batchServer((items, stream) => {
    batches.push(items);
    stream.respond({ ":status": 200, "content-type": FORWARD_BATCH_TYPE });
    // Answers in reverse order, each as its own frame: they are matched by position.
    for (let i = items.length - 1; i >= 0; i--) {
      stream.write(answerFrame(i, 200 + i, JSON.stringify({ path: items[i]!.path })));
    }
    stream.end();
  });
  const client = createForwarder({ batch: true });
  try {
    const base = `http://127.0.0.1:${server.port}/forward`;
    const send = (path: string, signal = AbortSignal.timeout(5000)) =>
      client.forward(base + path, {
        method: "PUT",
        headers: {
          "content-type": "application/json",
          "x-raftkv-forwarded-by": "n1",
          "x-raftkv-cluster": "0123456789abcdef",
        },
        body: new TextEncoder().encode('{"v":"1"}'),
        signal,
      });
    const gone = new AbortController();
    const answers = [send("/v1/data/a"), send("/v1/data/b", gone.signal), send("/v1/data/c?x=1")];
    gone.abort(new Error("the client went away"));
    await assert.rejects(answers[1]!, /the client went away/);
    const a = await answers[0]!;
    const c = await answers[2]!;
    assert.deepEqual([a.status, await a.json()], [200, { path: "/v1/data/a" }]);
    assert.deepEqual([c.status, await c.json()], [201, { path: "/v1/data/c?x=1" }]);
    assert.deepEqual(server.paths, ["/forward/batch"]);
    // The batch names its writes' cluster, so that another cluster's leader refuses it whole.
    assert.deepEqual(server.clusters, ["0123456789abcdef"]);
    assert.deepEqual(
      batches[0]!.map((it) => [it.method, it.path, it.headers["content-length"], it.body?.length]),
      [["PUT", "/v1/data/a", "9", 9], ["PUT", "/v1/data/c?x=1", "9", 9]],
    );
    // Reads are not batched.
    await (await client.forward(`${base}/v1/data/a`, { signal: AbortSignal.timeout(5000) }))
      .body?.cancel();
    assert.deepEqual(server.paths, ["/forward/batch", "/forward/v1/data/a"]);
    // Nor is a write with a large body.
    const large = await client.forward(`${base}/v1/data/big`, {
      method: "PUT",
      body: new Uint8Array(100_000),
      signal: AbortSignal.timeout(5000),
    });
    await large.body?.cancel();
    assert.deepEqual(server.paths, [
      "/forward/batch",
      "/forward/v1/data/a",
      "/forward/v1/data/big",
    ]);
  } finally {
    client.close();
    await server.close();
  }
});

Deno.test("createForwarder({ batch }) fails the writes a broken batch did not answer as possibly sent", async () => {
  const server = await batchServer((_items, stream) => {
    stream.respond({ ":status": 200, "content-type": FORWARD_BATCH_TYPE });
    stream.write(answerFrame(0, 200, "{}"));
    setTimeout(() => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR), 10);
  });
  const client = createForwarder({ batch: true });
  try {
    const send = (key: string) =>
      client.forward(`http://127.0.0.1:${server.port}/forward/v1/data/${key}`, {
        method: "DELETE",
        signal: AbortSignal.timeout(5000),
      });
    const [a, b] = [send("a"), send("b")];
    assert.equal((await a).status, 200);
    await assert.rejects(
      b,
      (e) =>
        !(e instanceof ForwardConnectError) &&
        /closed .* before the answer ended/.test(String(e)),
    );
  } finally {
    client.close();
    await server.close();
  }
});

Deno.test("createForwarder({ batch }) fails the writes still waiting for their batch when it closes, as unsent", async () => {
  const server = await batchServer(() => {
    throw new Error("nothing is sent after close()");
  });
  const client = createForwarder({ batch: true });
  try {
    const pending = client.forward(`http://127.0.0.1:${server.port}/forward/v1/data/a`, {
      method: "DELETE",
      signal: AbortSignal.timeout(5000),
    });
    client.close();
    await assert.rejects(pending, ForwardConnectError);
    assert.deepEqual(server.paths, []);
  } finally {
    client.close();
    await server.close();
  }
});

Deno.test("createForwarder({ batch }) reports a batch that could not connect as unsent", async () => {
  const server = await batchServer(() => {});
  const port = server.port;
  await server.close();
  const client = createForwarder({ batch: true });
  try {
    const send = (key: string) =>
      client.forward(`http://127.0.0.1:${port}/forward/v1/data/${key}`, {
        method: "DELETE",
        signal: AbortSignal.timeout(5000),
      });
    const results = await Promise.allSettled([send("a"), send("b")]);
    for (const r of results) {
      assert.ok(r.status === "rejected" && r.reason instanceof ForwardConnectError, String(r));
    }
  } finally {
    client.close();
  }
});

Deno.test("a forward's path and cluster header are the ones the peer handler serves and checks", () => {
  // Each side names them on its own (the API may not import the transport).
  assert.equal(FORWARD_PATH_PREFIX, PEER_FORWARD_PATH_PREFIX);
  assert.equal(CLUSTER_HEADER, PEER_CLUSTER_HEADER);
});
