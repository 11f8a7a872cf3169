import assert from "node:assert/strict";
import http2 from "node:http2";
import { makeCertificates } from "../../testing/certs.ts";
import { waitFor } from "../../testing/harness.ts";
import { connectH2Socket } from "../util/h2_socket.ts";
import { H2Client } from "./h2_client.ts";
import {
  type PeerRequestHandler,
  serveMutualTls,
  type TlsServer,
  type TlsServerOptions,
} from "./tls_server.ts";

/** PEM texts of a CA, node-1..3, "stranger" (signed by the CA, not a member) and node-9 (other CA). */
async function pems(dir: string) {
  const certs = await makeCertificates(dir, {
    nodes: ["node-1", "node-2", "node-3", "stranger"],
    untrustedNodes: ["node-9"],
  });
  const read = (path: string) => Deno.readTextFileSync(path);
  const pair = (id: string) => ({ cert: read(certs.node(id).cert), key: read(certs.node(id).key) });
  return { ca: read(certs.ca), pair };
}

type Pems = Awaited<ReturnType<typeof pems>>;

/**
 * Runs `fn` with certificates and a server for node-1 running `handler` (with `options` on top of
 * the defaults); cleans everything up.
 */
async function withServer(
  handler: PeerRequestHandler,
  fn: (server: TlsServer, p: Pems, warnings: string[]) => Promise<void>,
  options: Partial<TlsServerOptions> = {},
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const warnings: string[] = [];
  try {
    const p = await pems(dir);
    const server = await serveMutualTls({
      hostname: "127.0.0.1",
      port: 0,
      ...p.pair("node-1"),
      ca: p.ca,
      logger: { debug() {}, warn: (m: string) => warnings.push(m) },
      ...options,
    }, handler);
    try {
      await fn(server, p, warnings);
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A request of node-2 on a new connection is answered "ok". */
async function assertAnswersOk(server: TlsServer, p: Pems): Promise<void> {
  const h2 = client(p, "node-2");
  try {
    const res = await h2.fetch(`https://127.0.0.1:${server.addr.port}/`);
    assert.equal(await res.text(), "ok");
  } finally {
    h2.close();
  }
}

/** What `promise` gives, or `late` if it has not settled within `ms`. */
async function within<T, L>(promise: Promise<T>, ms: number, late: L): Promise<T | L> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return await Promise.race([
    promise,
    new Promise<L>((resolve) => timer = setTimeout(() => resolve(late), ms)),
  ]).finally(() => clearTimeout(timer));
}

function client(p: Pems, id: string | null, expected: string | null = "node-1"): H2Client {
  return new H2Client({
    tls: { ca: p.ca, ...(id === null ? {} : p.pair(id)), expectedName: () => expected },
  });
}

/** A body of `count` chunks of `size` bytes, counting how many were pulled. */
function counted(count: number, size: number) {
  let pulls = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      if (pulls === count) return c.close();
      pulls++;
      c.enqueue(new Uint8Array(size).fill(pulls & 0xff));
    },
  }, { highWaterMark: 0 });
  return { stream, pulls: () => pulls };
}

Deno.test("the TLS server hands requests to the handler with the client certificate's CN; bodies stream both ways", async () => {
  await withServer(async (req, info) => {
    const bytes = (await req.arrayBuffer()).byteLength;
    const reply = counted(40, 100_000);
    return new Response(reply.stream, {
      headers: { "x-peer": String(info.peer), "x-received": String(bytes) },
    });
  }, async (server, p) => {
    const h2 = client(p, "node-2");
    try {
      const body = counted(30, 100_000);
      const res = await h2.fetch(`https://localhost:${server.addr.port}/raft/messages?x=1`, {
        method: "POST",
        body: body.stream,
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("x-peer"), "node-2");
      assert.equal(res.headers.get("x-received"), "3000000");
      assert.equal((await res.arrayBuffer()).byteLength, 4_000_000);
      // Another connection proves another identity.
      const other = client(p, "node-3");
      try {
        const res3 = await other.fetch(`https://127.0.0.1:${server.addr.port}/`);
        assert.equal(res3.headers.get("x-peer"), "node-3");
        await res3.body?.cancel();
      } finally {
        other.close();
      }
    } finally {
      h2.close();
    }
  });
});

Deno.test("Deno's fetch with a client certificate (createHttpClient, HTTP/2 only) reaches the TLS server; without one it fails", async () => {
  await withServer(async (req, info) => {
    return Response.json({ peer: info.peer, body: await req.text(), method: req.method });
  }, async (server, p) => {
    const url = `https://localhost:${server.addr.port}/forward/v1/data`;
    const withCert = Deno.createHttpClient({
      caCerts: [p.ca],
      ...p.pair("node-2"),
      http1: false,
      http2: true,
    });
    try {
      const res = await fetch(url, {
        client: withCert,
        method: "PUT",
        body: '{"v":"1"}',
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { peer: "node-2", body: '{"v":"1"}', method: "PUT" });
    } finally {
      withCert.close();
    }
    const without = Deno.createHttpClient({ caCerts: [p.ca], http1: false, http2: true });
    try {
      await assert.rejects(fetch(url, { client: without, signal: AbortSignal.timeout(5000) }));
    } finally {
      without.close();
    }
  });
});

Deno.test("a client without a certificate, or with one from another CA, is refused at the handshake, each counted once", async () => {
  let calls = 0;
  const refusals: string[] = [];
  await withServer(() => {
    calls++;
    return Promise.resolve(new Response("reached"));
  }, async (server, p, warnings) => {
    const url = `https://localhost:${server.addr.port}/raft/messages`;
    for (const id of [null, "node-9"]) {
      const h2 = client(p, id);
      try {
        await assert.rejects(
          h2.fetch(url, {
            method: "POST",
            body: new Uint8Array(10),
            signal: AbortSignal.timeout(5000),
          }),
          `${id ?? "no certificate"} was let through`,
        );
      } finally {
        h2.close();
      }
    }
    assert.equal(calls, 0);
    assert.ok(
      warnings.some((w) => w.startsWith("Refused a TLS connection to the peer port: ")),
      warnings.join("\n"),
    );
    // Told as the connections fail: one `handshake` each, once the server has seen both.
    await waitFor(() => refusals.length >= 2, {
      message: () => `two refused handshakes counted (${refusals})`,
    });
    assert.deepEqual(refusals, ["handshake", "handshake"]);
  }, { onRefusal: (reason) => refusals.push(reason) });
});

Deno.test("rotated credentials: new connections need the new CA's certificates, open ones go on, a bad swap changes nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const newer = await pems(dir);
    await withServer(
      (_req, info) => Promise.resolve(new Response(info.peer)),
      async (server, p) => {
        const url = `https://localhost:${server.addr.port}/raft/messages`;
        const ask = (h2: H2Client) =>
          h2.fetch(url, {
            method: "POST",
            body: new Uint8Array(1),
            signal: AbortSignal.timeout(5000),
          })
            .then((r) => r.text());
        const open = client(p, "node-2");
        const unused = client(p, "node-3");
        const before = client(p, "node-3");
        const after = client(newer, "node-3");
        const bare = client(newer, null);
        try {
          assert.equal(await ask(open), "node-2");
          server.setCredentials({ ...newer.pair("node-1"), ca: newer.ca });
          assert.equal(await ask(open), "node-2", "a connection open before the swap goes on");
          await assert.rejects(ask(before), "a new connection with the old CA's certificate");
          assert.equal(await ask(after), "node-3");
          await assert.rejects(ask(bare), "a new connection without a certificate");
          // A client given the new files before it connects presents them.
          unused.setTls({ ca: newer.ca, ...newer.pair("node-3") });
          assert.equal(await ask(unused), "node-3");
          assert.throws(() =>
            server.setCredentials({ cert: "not a certificate", key: "no key", ca: newer.ca })
          );
          const mismatched = { ...newer.pair("node-1"), key: p.pair("node-1").key, ca: newer.ca };
          assert.throws(() => server.setCredentials(mismatched), /does not belong/);
          const again = client(newer, "node-2");
          try {
            assert.equal(await ask(again), "node-2", "the credentials in force stayed in force");
          } finally {
            again.close();
          }
          // Moving to a new CA goes through a bundle of both: either CA's certificates are taken.
          server.setCredentials({ ...newer.pair("node-1"), ca: p.ca + newer.ca });
          for (const [pems, id] of [[p, "node-2"], [newer, "node-3"]] as const) {
            const both = new H2Client({
              tls: { ca: p.ca + newer.ca, ...pems.pair(id), expectedName: () => "node-1" },
            });
            try {
              assert.equal(await ask(both), id);
            } finally {
              both.close();
            }
          }
        } finally {
          for (const h2 of [open, unused, before, after, bare]) h2.close();
        }
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the client refuses a server whose certificate does not name the node it meant to reach", async () => {
  await withServer(() => Promise.resolve(new Response("reached")), async (server, p) => {
    const h2 = client(p, "node-2", "node-3");
    try {
      await assert.rejects(
        h2.fetch(`https://localhost:${server.addr.port}/`, { signal: AbortSignal.timeout(5000) }),
        /presented a certificate for "node-1", not for "node-3"/,
      );
    } finally {
      h2.close();
    }
    // The host name is checked too: the node certificates are not valid for 127.0.0.2.
    const byName = client(p, "node-2", "node-1");
    try {
      await assert.rejects(
        byName.fetch(`https://127.0.0.2:${server.addr.port}/`, {
          signal: AbortSignal.timeout(5000),
        }),
      );
    } catch (err) {
      // Not every system routes 127.0.0.2 to loopback; then nothing listens there at all.
      if (Deno.build.os === "linux") throw err;
    } finally {
      byName.close();
    }
  });
});

Deno.test("an upload the handler refuses unread is stopped; one the handler reads is held back by flow control", async () => {
  let slowReader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  const read = Promise.withResolvers<void>();
  await withServer((req) => {
    if (new URL(req.url).pathname === "/refuse") {
      return Promise.resolve(Response.json({ error: "no" }, { status: 403 }));
    }
    slowReader = req.body!.getReader();
    read.resolve();
    return new Promise(() => {}); // reads later, answers never
  }, async (server, p) => {
    const h2 = client(p, "node-2");
    try {
      const refused = counted(1000, 64 << 10); // 64 MiB, if it were all sent
      const res = await h2.fetch(`https://localhost:${server.addr.port}/refuse`, {
        method: "POST",
        body: refused.stream,
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 403);
      assert.deepEqual(await res.json(), { error: "no" });
      assert.ok(refused.pulls() < 20, `the refused upload went on: ${refused.pulls()} chunks`);

      const held = counted(1000, 64 << 10);
      const abort = new AbortController();
      const pending = h2.fetch(`https://localhost:${server.addr.port}/slow`, {
        method: "POST",
        body: held.stream,
        signal: abort.signal,
      });
      await read.promise;
      const first = await slowReader!.read();
      assert.equal(first.done, false);
      // Give the sender time to push what flow control lets through, then check it stopped.
      let before = -1;
      while (held.pulls() !== before) {
        before = held.pulls();
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.ok(held.pulls() < 40, `flow control did not hold the sender: ${held.pulls()} chunks`);
      // The sender gives up: the handler's read fails instead of ending.
      abort.abort(new Error("gone"));
      await assert.rejects(pending, /gone/);
      await assert.rejects(
        (async () => {
          while (!(await slowReader!.read()).done) { /* drain */ }
        })(),
      );
    } finally {
      h2.close();
    }
  });
});

Deno.test("close() destroys connections still in their TLS handshake instead of waiting for them", async () => {
  await withServer(() => Promise.resolve(new Response("ok")), async (server, p) => {
    // A client that connected and never started its handshake has no HTTP/2 session yet.
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    try {
      // The listener accepts in order: once a later connection is answered, `silent` was taken.
      await assertAnswersOk(server, p);
      const outcome = await within(server.close().then(() => "closed"), 5000, "waiting");
      assert.equal(outcome, "closed", "close() was still waiting after 5 s");
      // The server dropped the silent connection: its read ends (or fails) instead of hanging.
      const read = await silent.read(new Uint8Array(16)).catch(() => null);
      assert.equal(read, null);
    } finally {
      silent.close();
    }
  });
});

Deno.test("a connection that does not complete its TLS handshake in time is dropped and reported", async () => {
  await withServer(() => Promise.resolve(new Response("ok")), async (server, p, warnings) => {
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    try {
      const start = performance.now();
      const read = await within(silent.read(new Uint8Array(16)).catch(() => null), 5000, "open");
      assert.equal(read, null, "the silent connection was still open after 5 s");
      assert.ok(performance.now() - start >= 250, "dropped before its handshake time was up");
      assert.ok(
        warnings.some((w) => /handshake timeout/i.test(w)),
        `no warning names the timeout: ${JSON.stringify(warnings)}`,
      );
    } finally {
      silent.close();
    }
    // A client that does its handshake is served as before.
    await assertAnswersOk(server, p);
  }, { handshakeTimeoutMs: 300 });
});

/** What a raw `node:http2` client saw of one request on its own connection, and after it. */
interface Exchange {
  status: number;
  body: string;
  /** Whether the server ended the connection (GOAWAY or close) within 3 s of the answer. */
  ended: boolean;
  /** The answer to a second request on the same connection, sent after the first one's answer. */
  second: string;
}

/** Sends POST `path` as `id` on a new connection, then a second request on it; see Exchange. */
async function exchange(port: number, p: Pems, id: string, path: string): Promise<Exchange> {
  const url = new URL(`https://localhost:${port}`);
  const socket = connectH2Socket(url, { ca: p.ca, ...p.pair(id) });
  const session = http2.connect(url, { createConnection: () => socket });
  session.on("error", () => {});
  const ended = new Promise<true>((resolve) => {
    session.once("goaway", () => resolve(true));
    session.once("close", () => resolve(true));
  });
  const ask = (to: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = session.request({ ":method": "POST", ":path": to });
      req.on("error", reject);
      let status = 0;
      let body = "";
      req.on("response", (headers) => status = Number(headers[":status"]));
      req.setEncoding("utf8");
      req.on("data", (chunk: string) => body += chunk);
      req.on("end", () => resolve({ status, body }));
      req.end("x");
    });
  try {
    const first = await ask(path);
    const gone = await within(ended, 3000, false);
    const second = gone ? "(connection ended)" : await ask("/ok").then((r) => r.body, String);
    return { ...first, ended: gone, second };
  } finally {
    // The socket first: no GOAWAY from this client.
    socket.destroy();
    session.destroy();
  }
}

Deno.test("a connection proving a non-member is ended once its 403 or 410 is answered; a member's stays open after a refusal", async () => {
  const members = new Set(["node-1", "node-2"]);
  await withServer(
    (req, info) => {
      const path = new URL(req.url).pathname;
      if (info.peer === "node-3") {
        return Promise.resolve(Response.json({ code: "removed" }, { status: 410 }));
      }
      if (path === "/refuse" || !members.has(info.peer ?? "")) {
        return Promise.resolve(Response.json({ error: `no ${info.peer}` }, { status: 403 }));
      }
      return Promise.resolve(new Response("ok"));
    },
    async (server, p) => {
      const port = server.addr.port;
      const stranger = await exchange(port, p, "stranger", "/raft/members");
      assert.deepEqual(
        { status: stranger.status, body: stranger.body, ended: stranger.ended },
        { status: 403, body: '{"error":"no stranger"}', ended: true },
      );
      const removed = await exchange(port, p, "node-3", "/raft/messages");
      assert.deepEqual(
        { status: removed.status, body: removed.body, ended: removed.ended },
        { status: 410, body: '{"code":"removed"}', ended: true },
      );
      const member = await exchange(port, p, "node-2", "/refuse");
      assert.deepEqual(member, {
        status: 403,
        body: '{"error":"no node-2"}',
        ended: false,
        second: "ok",
      });
    },
    { isMember: (id) => members.has(id) },
  );
});

Deno.test("the accept check is quiet, also when the event loop stalls, and hands on the connections that arrive while it runs", async () => {
  await withServer(() => Promise.resolve(new Response("ok")), async (server, p, warnings) => {
    // Checks every 20 ms: many of these connections arrive while one is under way.
    const deadline = performance.now() + 1500;
    let served = 0;
    while (performance.now() < deadline) {
      await assertAnswersOk(server, p);
      served++;
    }
    assert.ok(served > 10, `only ${served} requests answered`);
    // A stalled event loop (a long synchronous task) is not taken for a dead listener.
    for (let i = 0; i < 3; i++) {
      const until = performance.now() + 1500;
      while (performance.now() < until) { /* busy */ }
      await assertAnswersOk(server, p);
    }
    assert.deepEqual(warnings, []);
  }, { acceptCheckMs: 20 });
});
