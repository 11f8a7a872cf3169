/**
 * Cluster ids on real processes: two clusters with the same member ids, one of them pointed at the
 * other's node, exchange nothing (see the README's "Cluster ids").
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type ClusterFileEntry,
  type ProcessCluster,
  startCluster,
  waitFor,
  writeClusterFile,
} from "../testing/harness.ts";
import { bootstrapClusterId } from "../src/node/cluster_id.ts";

function _entries(cluster: ProcessCluster): ClusterFileEntry[] {
  return cluster.nodes.map((n) => ({ node_id: n.id, rpc_url: n.rpcUrl, api_url: n.apiUrl }));
}

async function _clusterIds(cluster: ProcessCluster): Promise<(string | undefined)[]> {
  return await Promise.all(
    cluster.liveIds().map(async (id) => {
      const status = await cluster.status(id, 2000) as { cluster_id?: string } | null;
      return status?.cluster_id;
    }),
  );
}

async function _otherClusterRefusals(cluster: ProcessCluster, id: string): Promise<number> {
  const metrics = await cluster.request(id, "GET", "/metrics");
  return Number(/^raftkv_other_cluster_refusals_total (\d+)$/m.exec(metrics.text)?.[1] ?? NaN);
}

Deno.test("a node pointed at another cluster's node is refused by it, and neither cluster takes anything from the other", async () => {
  await using a = await startCluster();
  await using b = await startCluster({ clusterToken: "cluster-b" });
  try {
    await Promise.all([a.waitForLeader(), b.waitForLeader()]);
    // Each cluster's id is the one its members' ids and its token make: the same ids, so the
    // tokens tell them apart.
    const idA = bootstrapClusterId(a.ids, a.clusterToken);
    const idB = bootstrapClusterId(b.ids, "cluster-b");
    assert.notEqual(idA, idB);
    assert.deepEqual(await _clusterIds(a), [idA, idA, idA]);
    assert.deepEqual(await _clusterIds(b), [idB, idB, idB]);
    assert.equal(await _otherClusterRefusals(b, "node-3"), 0);
    const listed = await b.request("node-2", "GET", "/v1/members");
    assert.equal((listed.json as { cluster_id?: string }).cluster_id, idB);
    const put = await b.request("node-1", "POST", "/v1/data", { k: "b-key", v: "from b" });
    assert.equal(put.status, 200, put.text);

    // A's node-3 goes away, and the others restart with a cluster file that says node-3 is at
    // B's node-3 (an address reused, a copied file not edited): A's leader writes to it.
    await a.kill("node-3");
    const wrong = _entries(a).map((e) =>
      e.node_id === "node-3" ? { ...e, rpc_url: b.rpc("node-3"), api_url: b.api("node-3") } : e
    );
    const wrongFile = join(a.node("node-1").dataDir, "..", "wrong.cluster.json");
    await writeClusterFile(wrongFile, wrong);
    for (const id of ["node-1", "node-2"]) {
      await a.stop(id);
      await a.start(id, { flags: ["--cluster-config-path", wrongFile] });
    }
    // The id recorded in its files stays: a cluster file changed later does not change it.
    assert.deepEqual(await _clusterIds(a), [idA, idA]);

    // B's node-3 refuses what A's leader sends it, and says why on both sides.
    const leaderA = await a.waitForLeader();
    await waitFor(async () => await _otherClusterRefusals(b, "node-3") > 0, {
      deadlineMs: 15_000,
      message: "B's node-3 to refuse A's leader",
    });
    const refusedAt = b.logs("node-3").join("\n");
    assert.match(refusedAt, /Refused a peer request with 403 .*cluster "[0-9a-f]{16}"/);
    assert.ok(refusedAt.includes(`cluster "${idA}", this node of cluster "${idB}"`), refusedAt);
    await waitFor(() => a.logs(leaderA).some((l) => l.includes(`this node of cluster "${idB}"`)), {
      deadlineMs: 15_000,
      message: "A's leader to log the refusal it got",
    });

    // A still works with its two members, a write through a follower (forwarded) included; B
    // never sees it, and A never sees B's key.
    const followerA = a.liveIds().find((id) => id !== leaderA)!;
    const write = await a.request(followerA, "POST", "/v1/data", { k: "a-key", v: "from a" });
    assert.equal(write.status, 200, write.text);
    assert.equal((await a.request(leaderA, "GET", "/v1/data/a-key")).status, 200);
    for (const id of b.ids) {
      assert.equal((await b.request(id, "GET", "/v1/data/a-key?consistency=stale")).status, 404);
    }
    assert.equal((await a.request(leaderA, "GET", "/v1/data/b-key")).status, 404);
    const read = await b.request("node-3", "GET", "/v1/data/b-key");
    assert.equal(read.status, 200, read.text);
    assert.equal((read.json as { v?: string }).v, "from b");
    assert.deepEqual(await _clusterIds(b), [idB, idB, idB]);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${a.formatLogs()}\n${b.formatLogs()}`, { cause: e });
  }
});
