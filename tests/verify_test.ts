/**
 * `raftkv verify` run as its own process against real node processes: it passes on a healthy
 * cluster (touching and leaving no key outside its prefix), and it finds the stale reads of a node
 * started with the test-only fault RAFTKV_DEBUG_STALE_READS=1 once that node is cut off from the
 * others, while the same partition without the fault passes.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PERMISSION_FLAGS } from "../main.ts";
import { decodeSnapshot } from "../src/storage/snapshot_file.ts";
import { ChaosCluster } from "../testing/chaos_lib.ts";
import { cleanEnv, type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";

const _MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

interface _Verify {
  code: number;
  report: Record<string, unknown>;
  stderr: string;
}

async function verify(endpoints: string[], extra: string[] = []): Promise<_Verify> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...PERMISSION_FLAGS,
      _MAIN,
      "verify",
      "--duration",
      "3s",
      "-o",
      "json",
      "--endpoints",
      endpoints.join(","),
      ...extra,
    ],
    env: cleanEnv(),
    clearEnv: true,
    stdin: "null",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  let report: Record<string, unknown>;
  try {
    report = JSON.parse(stdout);
  } catch {
    throw new Error(`verify printed no JSON (exit ${out.code}):\n${stdout}\n${stderr}`);
  }
  return { code: out.code, report, stderr };
}

/** The key-value pairs a node holds, from a backup it streams. */
async function pairsOf(cluster: ProcessCluster, id: string): Promise<Map<string, string>> {
  const res = await fetch(`${cluster.api(id)}/v1/snapshot`);
  const bytes = await res.bytes();
  assert.equal(res.status, 200);
  return new Map(decodeSnapshot(bytes, `${id} backup`).entries.map((e) => [e.key, e.value]));
}

Deno.test("verify passes on a healthy cluster and leaves no key behind, touching none outside its prefix", async () => {
  await using cluster = await startCluster({ size: 3, nodeFlags: ["--election-timeout", "1000"] });
  await cluster.waitForLeader();
  const put = await cluster.request(cluster.ids[0]!, "PUT", "/v1/data/outside", { v: "untouched" });
  assert.equal(put.status, 200);
  const dir = await Deno.makeTempDir({ prefix: "raftkv-verify-" });
  try {
    const history = join(dir, "history.jsonl");
    const run = await verify(cluster.ids.map((id) => cluster.api(id)), ["--history", history]);
    const { report } = run;
    assert.equal(run.code, 0, JSON.stringify(report, null, 2));
    assert.equal(report.verdict, "linearizable");
    assert.match(String(report.prefix), /^verify-[0-9a-f]{8}\/$/);
    const keys = report.keys as string[];
    assert.equal(keys.length, 4);
    for (const key of keys) assert.ok(key.startsWith(String(report.prefix)), key);
    const counts = report.counts as Record<string, number>;
    assert.deepEqual(Object.keys(counts), [
      "ops",
      "ok",
      "failed",
      "unknown",
      "reads",
      "writes",
      "deletes",
    ]);
    assert.equal(counts.ops, counts.ok! + counts.failed! + counts.unknown!);
    assert.equal(counts.ops, counts.reads! + counts.writes! + counts.deletes!);
    assert.ok(counts.ok! > 20 && counts.reads! > 0 && counts.writes! > 0, JSON.stringify(counts));
    assert.equal(report.final_reads, 4);
    assert.equal(report.anomaly, null);
    assert.deepEqual(report.cleanup, { deleted: 4, failed: [] });
    assert.equal(report.exit_code, 0);

    // The history file: one JSON operation a line, the workload then the final reads.
    const lines = (await Deno.readTextFile(history)).trimEnd().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.equal(lines.length, counts.ops! + 4);
    for (const op of lines) {
      assert.ok(keys.includes(op.key), op.key);
      assert.ok(["ok", "failed", "unknown"].includes(op.outcome));
      assert.ok(op.return === null || op.return >= op.call);
    }

    // Every node ends with the one key written outside verify, unchanged, and no verify key.
    for (const id of cluster.ids) {
      let pairs = new Map<string, string>();
      await waitFor(async () => {
        pairs = await pairsOf(cluster, id);
        return pairs.size === 1;
      }, { message: () => `${id} to hold only "outside", it holds ${[...pairs.keys()]}` });
      assert.deepEqual(pairs, new Map([["outside", "untouched"]]));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("verify finds the stale reads of a cut-off node with RAFTKV_DEBUG_STALE_READS=1, and passes without the fault", async () => {
  await using chaos = await ChaosCluster.start({
    size: 3,
    nodeFlags: ["--election-timeout", "1000"],
  });
  const cluster = chaos.processes;
  const endpoints = cluster.ids.map((id) => cluster.api(id));
  const cutOff = "node-3";
  const others = ["node-1", "node-2"];

  /**
   * Cuts node-3 off from the others, and waits until they have a leader and node-3 knows none.
   * While node-3 still believed in the old leader, a write sent to it was forwarded into the cut
   * link and hung until its 5 s deadline: its verify clients spent the whole run on one write
   * each, and the stale reads it serves never came.
   */
  const partition = async () => {
    chaos.cut(chaos.linksBetween([cutOff], others), "drop");
    await waitFor(async () => {
      const statuses = await Promise.all(cluster.ids.map((id) => cluster.status(id)));
      const id = statuses.find((s) => s?.role === "leader" && s.id !== cutOff)?.id;
      const alone = statuses[2];
      return id !== undefined && alone !== null && alone !== undefined &&
        alone.role !== "leader" && alone.leader === null &&
        statuses.every((s) => s?.id === cutOff || s?.leader?.id === id);
    }, {
      deadlineMs: 20_000,
      message: "node-1 and node-2 to agree on a leader, and node-3 to know none",
    });
  };

  // The control: the same partition without the fault. node-3 forwards reads or refuses them.
  await cluster.waitForLeader();
  await partition();
  const healthy = await verify(endpoints);
  assert.equal(healthy.code, 0, JSON.stringify(healthy.report, null, 2));
  assert.equal(healthy.report.verdict, "linearizable");
  const served = healthy.report.counts as Record<string, number>;
  assert.ok(served.ok! > 20, JSON.stringify(served));

  // node-3 again, now with the fault, caught up, then cut off again.
  chaos.healAll();
  await cluster.stop(cutOff);
  await chaos.startNode(cutOff, 30_000, { RAFTKV_DEBUG_STALE_READS: "1" });
  const leader = await cluster.waitForLeader(20_000);
  await waitFor(async () => {
    const [lead, follower] = await Promise.all([cluster.status(leader), cluster.status(cutOff)]);
    return lead !== null && follower !== null && follower.applied_index >= lead.commit_index;
  }, { deadlineMs: 20_000, message: "node-3 to catch up" });
  assert.ok(
    cluster.logs(cutOff).some((line) =>
      line.includes("DEBUG FAULT RAFTKV_DEBUG_STALE_READS=1") && line.includes("NOT linearizable")
    ),
    "node-3 announces the fault",
  );
  await partition();
  const faulty = await verify(endpoints);
  const { report } = faulty;
  assert.equal(faulty.code, 7, JSON.stringify(report, null, 2));
  assert.equal(report.verdict, "not-linearizable");
  assert.equal(report.exit_code, 7);
  const anomaly = report.anomaly as { key: string; reason: string };
  assert.ok(anomaly.key.startsWith(String(report.prefix)), anomaly.key);
  assert.match(anomaly.reason, /is not linearizable/);
  assert.match(anomaly.reason, /get\(/);
  assert.deepEqual((report.cleanup as { failed: string[] }).failed, []);
});
