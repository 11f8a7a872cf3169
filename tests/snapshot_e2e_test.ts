/**
 * Snapshots with real processes: a follower whose data directory is wiped catches up by
 * snapshot over HTTP/2, and every node's disk use stays bounded while writes go on.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startCluster, waitFor } from "../testing/harness.ts";

const KEYS = 2_000;
const WRITES = 20_000;
const THRESHOLD = 1_000;

async function walBytes(dataDir: string): Promise<number> {
  let total = 0;
  for await (const e of Deno.readDir(join(dataDir, "wal"))) {
    total += (await Deno.stat(join(dataDir, "wal", e.name))).size;
  }
  return total;
}

/**
 * Sends `count` writes over `concurrency` loops through `url`; returns the last value per key.
 * Loop j sends writes i with i % concurrency === j; as concurrency divides KEYS, every key is
 * written by one loop only, in order, so its final value is known.
 */
async function writeMany(url: string, count: number, concurrency: number): Promise<string[]> {
  assert.equal(KEYS % concurrency, 0);
  const last: string[] = new Array(KEYS).fill("");
  const loop = async (j: number) => {
    for (let i = j; i < count; i += concurrency) {
      const key = i % KEYS;
      const value = `v${i}-${"x".repeat(60)}`;
      // A leader change (a stalled process misses heartbeats on a busy machine) answers 503
      // until a leader is known again: the same write is sent again until it succeeds.
      let status = 0;
      await waitFor(async () => {
        const res = await fetch(`${url}/v1/data`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ k: `key-${key}`, v: value }),
          signal: AbortSignal.timeout(10_000),
        });
        await res.body?.cancel();
        status = res.status;
        return status === 200;
      }, { deadlineMs: 20_000, intervalMs: 20, message: () => `write ${i} (last: ${status})` });
      last[key] = value;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, j) => loop(j)));
  return last;
}

Deno.test({
  name: "a wiped follower catches up by snapshot and every node's log stays bounded",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using cluster = await startCluster({
      nodeFlags: ["--snapshot-threshold", String(THRESHOLD)],
    });
    const leader = await cluster.waitForLeader(15_000);
    const started = performance.now();
    const last = await writeMany(cluster.api(leader), WRITES, 20);
    const seconds = (performance.now() - started) / 1000;
    console.log(`${WRITES} writes in ${seconds.toFixed(1)} s`);

    // Disk use: each WAL holds at most a few thresholds of entries (about 150 bytes each).
    const perEntry = 200;
    for (const node of cluster.nodes) {
      const bytes = await walBytes(node.dataDir);
      assert.ok(
        bytes < 4 * THRESHOLD * perEntry + 64 * 1024,
        `${node.id} WAL holds ${bytes} bytes after ${WRITES} writes (threshold ${THRESHOLD})`,
      );
    }

    const follower = cluster.ids.find((id) => id !== leader)!;
    await cluster.stop(follower);
    await Deno.remove(cluster.node(follower).dataDir, { recursive: true });
    const restarted = performance.now();
    await cluster.start(follower);
    let target = 0;
    try {
      // Any node other than the wiped one knows how far the log was committed.
      const others = cluster.ids.filter((id) => id !== follower);
      await waitFor(async () => {
        for (const id of others) {
          target = Math.max(target, (await cluster.status(id, 5_000))?.commit_index ?? 0);
        }
        return target > 0;
      }, { deadlineMs: 30_000, message: `a status from ${others.join(" or ")}` });
      await waitFor(async () => {
        const s = await cluster.status(follower);
        return s !== null && s.applied_index >= target;
      }, { deadlineMs: 30_000, message: `${follower} to catch up after its data was wiped` });
    } catch (e) {
      throw new Error(`${e instanceof Error ? e.message : e}\n${cluster.formatLogs()}`);
    }
    console.log(
      `wiped follower caught up in ${((performance.now() - restarted) / 1000).toFixed(1)} s`,
    );
    for (let k = 0; k < KEYS; k += 7) {
      const r = await cluster.request(follower, "GET", `/v1/data/key-${k}?consistency=stale`);
      assert.equal(r.status, 200, `key-${k} on ${follower}`);
      const { k: key, v } = r.json as { k: string; v: string };
      assert.deepEqual({ k: key, v }, { k: `key-${k}`, v: last[k] });
    }
  },
});
