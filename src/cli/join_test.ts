import assert from "node:assert/strict";
import { makeCertificates } from "../../testing/certs.ts";
import { type JoinRequest, requestJoin } from "./join.ts";

const SELF = { id: "node-4", rpcUrl: "https://127.0.0.1:1", apiUrl: "https://127.0.0.1:2" };

/** A stand-in member whose API serves HTTPS with a certificate of a private CA. */
async function withTlsMember(
  fn: (setup: {
    url: string;
    ca: string;
    requests: { method: string; authorization: string | null; body: unknown }[];
  }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-join-test-" });
  const certs = await makeCertificates(dir, { nodes: ["node-1"] });
  const requests: { method: string; authorization: string | null; body: unknown }[] = [];
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(certs.node("node-1").cert),
    key: await Deno.readTextFile(certs.node("node-1").key),
    onListen() {},
  }, async (request) => {
    const body = request.method === "POST" ? await request.json() : null;
    requests.push({
      method: request.method,
      authorization: request.headers.get("authorization"),
      body,
    });
    return Response.json({ index: 7, cluster_id: "c1", members: [] }, { status: 201 });
  });
  try {
    await fn({
      url: `https://localhost:${server.addr.port}`,
      ca: await Deno.readTextFile(certs.ca),
      requests,
    });
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}

function quietLog(lines: string[]): JoinRequest["log"] {
  return {
    info: (m) => lines.push(`info ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    error: (m) => lines.push(`error ${m}`),
  };
}

Deno.test("requestJoin() trusts the CA it is given for an https member, with the token", async () => {
  await withTlsMember(async ({ url, ca, requests }) => {
    const lines: string[] = [];
    let clusterId: string | undefined;
    const joined = await requestJoin({
      joinUrl: url,
      self: SELF,
      token: "admin-token-0123456789",
      caCerts: [ca],
      log: quietLog(lines),
      signal: AbortSignal.timeout(20_000),
      onClusterId: (id) => clusterId = id,
      retryMs: 10,
    });
    assert.equal(joined, true, lines.join("\n"));
    assert.equal(clusterId, "c1");
    assert.deepEqual(requests, [{
      method: "POST",
      authorization: "Bearer admin-token-0123456789",
      body: { node_id: SELF.id, rpc_url: SELF.rpcUrl, api_url: SELF.apiUrl },
    }]);
  });
});

Deno.test("requestJoin() without the CA does not trust a private CA's member and keeps trying", async () => {
  await withTlsMember(async ({ url, requests }) => {
    const lines: string[] = [];
    const stop = new AbortController();
    const joining = requestJoin({
      joinUrl: url,
      self: SELF,
      log: {
        ...quietLog(lines),
        warn: (m) => {
          lines.push(`warn ${m}`);
          if (lines.filter((line) => line.startsWith("warn cannot reach")).length >= 2) {
            stop.abort();
          }
        },
      },
      signal: stop.signal,
      retryMs: 10,
    });
    assert.equal(await joining, false);
    assert.deepEqual(requests, [], "no request got through the handshake");
    assert.match(lines.join("\n"), /warn cannot reach https:\/\/localhost:\d+ to join/);
  });
});

Deno.test("requestJoin() gives up at once, saying why, on a member whose port fetch refuses", async () => {
  const lines: string[] = [];
  const started = performance.now();
  const joined = await requestJoin({
    joinUrl: "http://127.0.0.1:10080",
    self: SELF,
    log: quietLog(lines),
    signal: AbortSignal.timeout(10_000),
    retryMs: 50,
  });
  assert.equal(joined, false);
  // Not retried until the signal: no attempt could ever get through.
  assert.ok(performance.now() - started < 5_000);
  assert.equal(lines.length, 1, lines.join("\n"));
  assert.match(lines[0]!, /^error cannot join through http:\/\/127\.0\.0\.1:10080: port 10080 /);
  assert.match(lines[0]!, /bad ports/);
});
