import assert from "node:assert/strict";
import { join } from "node:path";
import { MemoryNetwork } from "../../testing/memory_transport.ts";
import { parseSamples, sample } from "../../testing/prometheus.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { openDiskStorage } from "./disk_storage.ts";
import { registerTimingGauges } from "./node_metrics.ts";
import { RaftNode, type RaftNodeOptions } from "./raft_node.ts";

const SILENT = { debug() {}, info() {}, warn() {}, error() {} };
const signal = () => AbortSignal.timeout(5_000);

async function waitFor(cond: () => boolean, what: () => string, deadlineMs = 10_000) {
  const end = performance.now() + deadlineMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface _Member {
  node: RaftNode;
  registry: MetricsRegistry;
}

/** Starts nodes `ids` of a cluster of `ids`, each with a registry of its own. */
async function start(
  root: string,
  net: MemoryNetwork,
  ids: string[],
  extra: Partial<RaftNodeOptions> = {},
): Promise<_Member[]> {
  const members = ids.map((id) => ({ id, rpcUrl: `mem://${id}`, apiUrl: `http://${id}` }));
  const out: _Member[] = [];
  for (const [i, id] of ids.entries()) {
    const registry = new MetricsRegistry();
    const dir = join(root, id);
    const storage = await openDiskStorage({
      walDir: join(dir, "wal"),
      raftStatePath: join(dir, "raft-state.json"),
      logMetadataPath: join(dir, "log-metadata.json"),
      snapshotDir: join(dir, "snapshots"),
    }, { metrics: registry });
    const node = new RaftNode({
      id,
      members,
      storage,
      heartbeatMs: 10,
      electionTimeoutMs: 100,
      seed: 40 + i,
      logger: SILENT,
      transport: (h) => net.connect(id, h),
      metrics: registry,
      ...extra,
    });
    out.push({ node, registry });
  }
  for (const m of out) m.node.start();
  return out;
}

function metricsOf(m: _Member): Map<string, number> {
  return parseSamples(m.registry.render());
}

async function leaderOf(members: _Member[]): Promise<_Member> {
  let leader: _Member | undefined;
  await waitFor(() => {
    const leaders = members.filter((m) => m.node.status().role === "leader");
    leader = leaders.length === 1 && leaders[0]!.node.isReady() ? leaders[0] : undefined;
    return leader !== undefined;
  }, () => "a leader");
  return leader!;
}

Deno.test("a node's metrics follow its role, term, indexes, proposals, lag, disk, snapshots and watch history", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-metrics-" });
  const net = new MemoryNetwork();
  // Every count below is of one leadership: an election timeout long enough that a loaded machine
  // (a stall past the default 100 ms once moved the leadership mid-test in CI) keeps the leader.
  const members = await start(root, net, ["a", "b", "c"], {
    snapshotThreshold: 10,
    watchHistoryBytes: 1000,
    heartbeatMs: 50,
    electionTimeoutMs: 1000,
  });
  try {
    const leader = await leaderOf(members);
    const followers = members.filter((m) => m !== leader);
    for (let i = 0; i < 25; i++) await leader.node.put(`k${i}`, "v", signal());
    const status = leader.node.status();
    await waitFor(
      () => followers.every((f) => f.node.status().applied_index >= status.commit_index),
      () => "the followers to apply every write",
    );
    // Replication lag drops to 0 once the followers' acks are in.
    await waitFor(() => {
      const s = metricsOf(leader);
      return followers.every((f) =>
        s.get(`raftkv_peer_replication_lag_entries{peer="${f.node.id}"}`) === 0
      );
    }, () => `no lag in ${leader.registry.render()}`);

    // Read in the same turn as the status, so that both describe the same moment.
    const now = leader.node.status();
    const s = metricsOf(leader);
    assert.equal(sample(s, "raftkv_is_leader"), 1);
    assert.equal(sample(s, "raftkv_has_leader"), 1);
    assert.equal(sample(s, 'raftkv_role{role="leader"}'), 1);
    assert.equal(sample(s, 'raftkv_role{role="follower"}'), 0);
    assert.equal(sample(s, 'raftkv_membership{membership="voter"}'), 1);
    assert.equal(sample(s, 'raftkv_membership{membership="removed"}'), 0);
    assert.equal(sample(s, "raftkv_term"), now.term);
    assert.equal(sample(s, "raftkv_commit_index"), now.commit_index);
    assert.equal(sample(s, "raftkv_applied_index"), now.applied_index);
    assert.equal(sample(s, "raftkv_last_log_index"), now.last_index);
    assert.equal(sample(s, "raftkv_peer_reads_dropped_total"), 0); // no flood here
    assert.equal(sample(s, "raftkv_proposals_committed_total"), 25);
    assert.equal(sample(s, 'raftkv_proposals_failed_total{reason="overloaded"}'), 0);
    assert.equal(sample(s, "raftkv_proposals_pending"), 0);
    // The watch history keeps what fits in 1000 bytes: k11..k24, 3 + 1 + 64 bytes each.
    assert.equal(sample(s, "raftkv_watch_history_events"), 14);
    assert.equal(sample(s, "raftkv_watch_history_bytes"), 14 * 68);
    // One leadership seen per term with a leader (a slow start may take more than one election).
    assert.ok(sample(s, "raftkv_leader_changes_total") >= 1);
    assert.ok(sample(s, "raftkv_leader_changes_total") <= now.term);
    assert.ok(sample(s, "raftkv_wal_fsync_duration_seconds_count") >= 1);
    assert.ok(sample(s, "raftkv_apply_duration_seconds_count") >= 1);
    // Both followers answer: one of the three voters could fail and a quorum would be left.
    assert.equal(sample(s, "raftkv_failure_tolerance"), 1);
    for (const f of followers) {
      const seconds = sample(s, `raftkv_peer_last_contact_seconds{peer="${f.node.id}"}`);
      assert.ok(seconds >= 0 && seconds < 1, `last heard from ${f.node.id} ${seconds} s ago`);
    }
    // 25 writes with a snapshot every 10 entries: at least two snapshots, the file measured.
    await waitFor(
      () => (metricsOf(leader).get("raftkv_snapshot_index") ?? 0) >= 20,
      () => `a snapshot at 20 or later in ${leader.registry.render()}`,
    );
    const after = metricsOf(leader);
    assert.ok(sample(after, "raftkv_snapshot_save_duration_seconds_count") >= 2);
    assert.ok(sample(after, "raftkv_snapshot_size_bytes") > 0);
    for (const f of followers) {
      const fs = metricsOf(f);
      assert.equal(sample(fs, "raftkv_is_leader"), 0);
      assert.equal(sample(fs, 'raftkv_role{role="follower"}'), 1);
      assert.ok(sample(fs, "raftkv_leader_changes_total") >= 1);
      assert.equal(sample(fs, "raftkv_proposals_committed_total"), 0);
      // Only the leader reports replication lag, last contacts and the failure tolerance.
      assert.deepEqual(
        [...fs.keys()].filter((k) => /replication_lag|last_contact|failure_tolerance/.test(k)),
        [],
      );
    }
  } finally {
    for (const m of members) await m.node.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("when the leader stops, the survivors count a leader change", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-metrics-" });
  const net = new MemoryNetwork();
  const members = await start(root, net, ["a", "b", "c"]);
  try {
    const first = await leaderOf(members);
    const rest = members.filter((m) => m !== first);
    await waitFor(
      () => rest.every((m) => m.node.status().leader?.id === first.node.id),
      () => "the followers to know the first leader",
    );
    const before = rest.map((m) => sample(metricsOf(m), "raftkv_leader_changes_total"));
    assert.ok(before.every((n) => n >= 1), String(before));
    await first.node.stop();
    const second = await leaderOf(rest);
    await waitFor(
      () => rest.every((m) => m.node.status().leader?.id === second.node.id),
      () => "both survivors to know the new leader",
    );
    rest.forEach((m, i) => {
      const changes = sample(metricsOf(m), "raftkv_leader_changes_total");
      assert.ok(changes > before[i]!, `${changes} leader changes, ${before[i]} before`);
    });
    // The new leader reports the lag of the follower that answers it; the stopped one never did,
    // so its position is unknown to this leader: no series (not its whole log as the lag).
    const other = rest.find((m) => m !== second)!;
    await waitFor(
      () => metricsOf(second).has(`raftkv_peer_replication_lag_entries{peer="${other.node.id}"}`),
      () => "the new leader to report its follower's lag",
    );
    const s = metricsOf(second);
    assert.ok(s.get(`raftkv_peer_replication_lag_entries{peer="${other.node.id}"}`)! < 5);
    assert.ok(!s.has(`raftkv_peer_replication_lag_entries{peer="${first.node.id}"}`));
    // But how long it has not been heard from is known (since the election), and grows: once an
    // election timeout (100 ms here) has passed, only two voters of three are heard, a quorum with
    // no voter to spare.
    await waitFor(() => {
      const m = metricsOf(second);
      return m.get("raftkv_failure_tolerance") === 0 &&
        m.get(`raftkv_peer_last_contact_seconds{peer="${first.node.id}"}`)! >= 0.5;
    }, () => `the stopped member unheard for 0.5 s in ${second.registry.render()}`);
    const t = metricsOf(second);
    const heard = t.get(`raftkv_peer_last_contact_seconds{peer="${other.node.id}"}`)!;
    assert.ok(heard < t.get(`raftkv_peer_last_contact_seconds{peer="${first.node.id}"}`)!);
  } finally {
    for (const m of members) await m.node.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("writes refused for overload are counted as failed proposals", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-metrics-" });
  const [solo] = await start(root, new MemoryNetwork(), ["solo"], {
    maxPendingProposals: 4,
    maxPendingBytes: 1_000_000,
  });
  try {
    await waitFor(() => solo!.node.isReady(), () => "the single node to lead");
    const outcomes = await Promise.allSettled(
      Array.from({ length: 10 }, (_, i) => solo!.node.put(`k${i}`, "v", signal())),
    );
    assert.equal(outcomes.filter((o) => o.status === "fulfilled").length, 4);
    const s = metricsOf(solo!);
    assert.equal(sample(s, "raftkv_proposals_committed_total"), 4);
    assert.equal(sample(s, 'raftkv_proposals_failed_total{reason="overloaded"}'), 6);
    assert.equal(sample(s, 'raftkv_proposals_failed_total{reason="not_applied"}'), 0);
  } finally {
    await solo!.node.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the election timeout and heartbeat interval are exported in seconds, once", () => {
  const registry = new MetricsRegistry();
  registerTimingGauges(registry, { electionTimeoutMs: 1500, heartbeatMs: 75 });
  const text = registry.render();
  assert.match(text, /^# TYPE raftkv_election_timeout_seconds gauge$/m);
  assert.match(text, /^# HELP raftkv_election_timeout_seconds .*--election-timeout/m);
  assert.match(text, /^# TYPE raftkv_heartbeat_interval_seconds gauge$/m);
  assert.match(text, /^# HELP raftkv_heartbeat_interval_seconds .*--heartbeat/m);
  const s = parseSamples(text);
  assert.equal(sample(s, "raftkv_election_timeout_seconds"), 1.5);
  assert.equal(sample(s, "raftkv_heartbeat_interval_seconds"), 0.075);
  // Registered once per registry: a second registration is refused.
  assert.throws(
    () => registerTimingGauges(registry, { electionTimeoutMs: 1000, heartbeatMs: 100 }),
    RangeError,
  );
});
