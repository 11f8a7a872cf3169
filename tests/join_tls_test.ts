/**
 * `--join https://...` into a cluster secured the way the README's production setup and the
 * Kubernetes TLS overlay secure it: mutual TLS between peers, HTTPS on the API and bearer tokens,
 * all certificates from a private CA that is not among the system's. The joining node trusts the
 * cluster CA it is given (`--peer-ca`) for its join request and sends the admin token from
 * `RAFTKV_TOKEN`, as a Kubernetes pod beyond the bootstrap size does.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { makeCertificates, writeTokensFile } from "../testing/certs.ts";
import { startCluster, waitFor } from "../testing/harness.ts";

interface MemberRow {
  node_id: string;
  role: string;
  api_url: string;
}

Deno.test("a node joins a TLS cluster of a private CA through --join https://, trusting its --peer-ca", async () => {
  // DENO_CERT would make every fetch of the node trust the CA, join or not.
  assert.equal(Deno.env.get("DENO_CERT"), undefined, "run this test without DENO_CERT");
  const dir = await Deno.makeTempDir({ prefix: "raftkv-join-tls-" });
  try {
    const certs = await makeCertificates(dir, {
      nodes: ["node-1", "node-2", "node-3", "node-4"],
    });
    const tokensFile = join(dir, "tokens.json");
    const tokens = await writeTokensFile(tokensFile);
    await using cluster = await startCluster({
      size: 3,
      tls: certs,
      apiCerts: certs,
      token: tokens.read,
      nodeFlags: ["--tokens-file", tokensFile],
    });
    const leader = await cluster.waitForLeader(20_000);
    const via = cluster.ids.find((id) => id !== leader)!;
    assert.match(cluster.api(via), /^https:\/\/127\.0\.0\.1:\d+$/);

    // node-4 has its own certificate from the same CA, its cluster file lists only itself,
    // and it asks a follower (which forwards to the leader over the peer port).
    await cluster.addNode("node-4");
    await cluster.start("node-4", {
      flags: ["--join", cluster.api(via)],
      env: { RAFTKV_TOKEN: tokens.admin },
    });
    const admin = { authorization: `Bearer ${tokens.admin}` };
    let rows: MemberRow[] = [];
    await waitFor(async () => {
      const answer = await cluster.request(via, "GET", "/v1/members", undefined, {
        headers: admin,
        timeoutMs: 2000,
      }).catch(() => null);
      if (answer?.status !== 200) return false;
      rows = (answer.json as { members: MemberRow[] }).members;
      return rows.some((row) => row.node_id === "node-4" && row.role === "voter");
    }, {
      deadlineMs: 30_000,
      intervalMs: 100,
      message: () =>
        `node-4 to be a voter; members ${JSON.stringify(rows)}\n${
          cluster.formatLogs(["node-4"], 30)
        }`,
    });
    assert.equal(rows.find((row) => row.node_id === "node-4")?.api_url, cluster.api("node-4"));
    assert.ok(
      cluster.logs("node-4").some((line) =>
        line.includes(`joined the cluster through ${cluster.api(via)}`)
      ),
      cluster.formatLogs(["node-4"], 30),
    );
    assert.ok(
      !cluster.logs("node-4").some((line) => line.includes("cannot reach")),
      `the join request was refused before it got through\n${cluster.formatLogs(["node-4"], 30)}`,
    );

    // It replicates: a write through the leader reaches node-4's own state machine.
    const put = await cluster.request(leader, "PUT", "/v1/data/joined", { v: "yes" }, {
      headers: { authorization: `Bearer ${tokens.write}` },
    });
    assert.equal(put.status, 200, put.text);
    await waitFor(async () => {
      const got = await cluster.request(
        "node-4",
        "GET",
        "/v1/data/joined?consistency=stale",
        undefined,
        { headers: { authorization: `Bearer ${tokens.read}` } },
      ).catch(() => null);
      return got?.status === 200 && (got.json as { v?: string }).v === "yes";
    }, { deadlineMs: 15_000, message: "node-4 to hold joined=yes" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
