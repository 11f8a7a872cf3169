import assert from "node:assert/strict";
import http2 from "node:http2";
import { makeCertificates } from "../../testing/certs.ts";
import { LinkProxy } from "../../testing/proxy.ts";
import { H2Client } from "./h2_client.ts";

function serveOn(port: number, handler: (req: Request) => Response | Promise<Response>) {
  return Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, handler);
}

Deno.test("the HTTP/2 client reaches a port that fetch refuses (6665-6669 are on the bad-port list)", async () => {
  // 6669 is on the Fetch Standard's bad-port list and is not one of raftkv's defaults.
  let server: Deno.HttpServer;
  try {
    server = serveOn(
      6669,
      async (req) => new Response(`${req.method} ${(await req.text()).length}`),
    );
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) return; // someone else holds it: nothing to prove here
    throw e;
  }
  const client = new H2Client();
  try {
    await assert.rejects(fetch("http://127.0.0.1:6669/"), /blocked/);
    const res = await client.fetch("http://127.0.0.1:6669/x", {
      method: "POST",
      body: new Uint8Array(5),
    });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "POST 5");
  } finally {
    client.close();
    await server.shutdown();
  }
});

Deno.test("the HTTP/2 client multiplexes requests, streams bodies and reports refusals", async () => {
  const seen = new Set<string>();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    async (req, info) => {
      seen.add(`${info.remoteAddr.port}`);
      const body = new Uint8Array(await req.arrayBuffer());
      return new Response(null, { status: body.length === 3_000_000 ? 204 : 400 });
    },
  );
  const port = server.addr.port;
  const client = new H2Client();
  try {
    const chunks = Array.from({ length: 30 }, () => new Uint8Array(100_000));
    const results = await Promise.all(
      Array.from({ length: 5 }, () =>
        client.fetch(`http://127.0.0.1:${port}/s`, {
          method: "POST",
          body: ReadableStream.from(chunks),
        })),
    );
    assert.deepEqual(results.map((r) => r.status), [204, 204, 204, 204, 204]);
    assert.equal(seen.size, 1, "all requests shared one connection");
    await server.shutdown();
    await assert.rejects(client.fetch(`http://127.0.0.1:${port}/s`, { method: "POST" }));
  } finally {
    client.close();
  }
});

Deno.test("aborting a request cancels it", async () => {
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => new Response(new ReadableStream({ start() {} })),
  );
  const client = new H2Client();
  try {
    const controller = new AbortController();
    const res = await client.fetch(`http://127.0.0.1:${server.addr.port}/`, {
      signal: controller.signal,
    });
    assert.equal(res.status, 200);
    const pending = assert.rejects(
      client.fetch(`http://127.0.0.1:${server.addr.port}/`, {
        signal: AbortSignal.abort(new Error("gone")),
      }),
      /gone/,
    );
    controller.abort(new Error("stop"));
    await assert.rejects(res.text());
    await pending;
  } finally {
    client.close();
    await server.shutdown();
  }
});

Deno.test("a response stream that closes without ending fails a read of its body instead of leaving it open", async () => {
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => new Response("a body that a HEAD answer never carries"),
  );
  const client = new H2Client();
  const url = `http://127.0.0.1:${server.addr.port}/`;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    // A HEAD answer's stream closes after the headers, without an end event.
    const head = await client.fetch(url, { method: "HEAD" });
    assert.equal(head.status, 200);
    const read = head.text().then(() => "ended", (e: Error) => e.message);
    const hung = new Promise<string>((resolve) => timer = setTimeout(() => resolve("hung"), 5000));
    assert.match(await Promise.race([read, hung]), /closed before the response body ended/);
    // A complete body still reads as it is.
    const get = await client.fetch(url);
    assert.equal(await get.text(), "a body that a HEAD answer never carries");
  } finally {
    clearTimeout(timer);
    client.close();
    await server.shutdown();
  }
});

Deno.test("a response whose connection breaks after the headers fails a read of its body instead of ending it", async () => {
  // node:http2 (the TLS peer server) sends the headers on their own; a server that dies before
  // the body leaves its client's stream "ended" in Deno, with a reset code.
  const server = http2.createServer();
  server.on("stream", (stream) => {
    stream.respond({ ":status": 200, "content-type": "application/json" });
    stream.write('{"k":"a",');
  });
  const port = await new Promise<number>((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
  await using proxy = LinkProxy.listen({ port });
  const client = new H2Client();
  try {
    const res = await client.fetch(`http://127.0.0.1:${proxy.port}/`);
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    assert.equal(new TextDecoder().decode((await reader.read()).value), '{"k":"a",');
    proxy.setMode("refuse"); // the connection closes, as when the server's process dies
    await assert.rejects(reader.read(), /closed before the response body ended \(code 8\)/);
  } finally {
    client.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("closing the client drops its connections without GOAWAY, which a node:http2 server can die of", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const certs = await makeCertificates(dir, { nodes: ["server"] });
    const read = (path: string) => Deno.readTextFileSync(path);
    for (const scheme of ["https", "http"]) {
      const server = scheme === "https"
        ? http2.createSecureServer({
          cert: read(certs.node("server").cert),
          key: read(certs.node("server").key),
        })
        : http2.createServer();
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
        arrived.resolve(); // and never answer: the request is in flight when the client closes
      });
      const port = await new Promise<number>((resolve) => {
        server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
      });
      const client = new H2Client({ tls: { ca: read(certs.ca) } });
      try {
        const pending = client.fetch(`${scheme}://localhost:${port}/raft`, {
          method: "POST",
          body: new Uint8Array(10),
        });
        await arrived.promise;
        client.close();
        await assert.rejects(pending);
        await closed.promise;
        assert.deepEqual(seen, [], `${scheme}: the server was told GOAWAY`);
      } finally {
        client.close();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
