/**
 * `--log-format json` on a real node process: every line it prints is one JSON object with the
 * text form's fields.
 */
import assert from "node:assert/strict";
import { startCluster } from "../testing/harness.ts";

Deno.test("a node started with RAFTKV_LOG_FORMAT=json prints only JSON lines with time, level, node and message", async () => {
  await using cluster = await startCluster({ size: 1, env: { RAFTKV_LOG_FORMAT: "json" } });
  await cluster.waitForLeader();
  await cluster.stop("node-1");
  const lines = cluster.logs("node-1").filter((line) => !line.startsWith("## harness:"));
  assert.ok(lines.length >= 3, lines.join("\n"));
  for (const line of lines) {
    const entry = JSON.parse(line);
    assert.deepEqual(Object.keys(entry), ["time", "level", "node", "message"], line);
    assert.equal(entry.node, "node-1", line);
    assert.ok(["debug", "info", "warn", "error"].includes(entry.level), line);
    assert.ok(!Number.isNaN(Date.parse(entry.time)), line);
  }
  const messages = lines.map((line) => JSON.parse(line).message);
  assert.ok(
    messages.some((m) => m.startsWith("REST API listening on http://127.0.0.1:")),
    messages.join("\n"),
  );
  assert.ok(messages.includes("stopped"), messages.join("\n"));
});
