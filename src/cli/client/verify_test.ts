import assert from "node:assert/strict";
import { ApiClient } from "./http.ts";
import { runVerify, type VerifyReport } from "./verify.ts";

/**
 * Runs `raftkv verify` briefly against one fake node whose writes are all answered 503 with
 * `refusal` as the body, and that applies them anyway when `applies` (a node that lies about
 * what it did); reads answer what it holds.
 */
async function verifyAgainst(refusal: string, applies: boolean): Promise<VerifyReport> {
  const data = new Map<string, string>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    if (path === "/v1/status") return Response.json({ id: "node-1" });
    const key = path.slice("/v1/data/".length);
    if (req.method === "GET") {
      const v = data.get(key);
      return v === undefined
        ? Response.json({ error: "not found" }, { status: 404 })
        : Response.json({ k: key, v });
    }
    const body = req.method === "PUT" ? await req.json() as { v: string } : null;
    if (applies) {
      if (body === null) data.delete(key);
      else data.set(key, body.v);
    }
    return new Response(refusal, { status: 503, headers: { "retry-after": "1" } });
  });
  const client = new ApiClient({
    endpoints: [`http://127.0.0.1:${server.addr.port}`],
    caCert: null,
    token: null,
    timeoutMs: 200,
  });
  try {
    return await runVerify(client, {
      durationMs: 300,
      clients: 2,
      keys: 2,
      timeoutMs: 200,
      checkTimeoutMs: 10_000,
    });
  } finally {
    await server.shutdown();
  }
}

const NOT_APPLIED = JSON.stringify({ error: "no leader is known; the write was not applied" });

Deno.test("verify counts raftkv's 503 refusals as failed, not as unknown outcomes", async () => {
  const report = await verifyAgainst(NOT_APPLIED, false);
  assert.equal(report.counts.unknown, 0, JSON.stringify(report.counts));
  assert.ok(report.counts.failed > 0, JSON.stringify(report.counts));
  assert.equal(report.counts.failed, report.counts.writes + report.counts.deletes);
  assert.equal(report.verdict, "linearizable");
});

Deno.test("verify reports a write refused with raftkv's 503 that took effect after all", async () => {
  const report = await verifyAgainst(NOT_APPLIED, true);
  assert.equal(report.verdict, "not-linearizable", JSON.stringify(report.check));
  assert.ok(report.anomaly !== null);
});

Deno.test("a 503 that is not raftkv's (a proxy's page) leaves the outcome unknown", async () => {
  const report = await verifyAgainst("<html>Service Unavailable</html>", true);
  assert.equal(report.counts.failed, 0, JSON.stringify(report.counts));
  assert.equal(report.counts.unknown, report.counts.writes + report.counts.deletes);
  assert.equal(report.verdict, "linearizable", JSON.stringify(report.check));
});
