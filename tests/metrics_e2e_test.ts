/**
 * `GET /metrics` on real node processes: every node's scrape passes the real Prometheus parser
 * and linter (`promtool check metrics`, Debian package `prometheus`), and the values move with
 * what happens: a write raises the commit index and the request counter of its route and status,
 * a killed leader raises the leader changes seen by a survivor, and the process series (CPU,
 * memory, start time) agree with what /proc says of the node's process.
 */

import assert from "node:assert/strict";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { findPromtool, parseSamples, promtoolCheck, sample } from "../testing/prometheus.ts";

const PROMTOOL = findPromtool();

/** Scrapes one node, checks the answer with promtool, and returns its samples. */
async function scrape(cluster: ProcessCluster, id: string): Promise<Map<string, number>> {
  const res = await cluster.request(id, "GET", "/metrics");
  assert.equal(res.status, 200, `${id}: ${res.text}`);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const verdict = await promtoolCheck(res.text);
  assert.ok(
    verdict.ok,
    `promtool check metrics on ${id} (exit ${verdict.code}):\n${verdict.output}`,
  );
  return parseSamples(res.text);
}

/** utime + stime of a process, in seconds, from `/proc/PID/stat` (clock ticks of 1/100 s). */
function _procCpuSeconds(pid: number): number {
  const fields = _procStat(pid);
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** When a process started, in seconds since the epoch, from `/proc`. */
function _procStartSeconds(pid: number): number {
  const btime = /^btime (\d+)$/m.exec(Deno.readTextFileSync("/proc/stat"))![1]!;
  return Number(btime) + Number(_procStat(pid)[19]) / 100;
}

/** The fields of `/proc/PID/stat` after the command name: field 3 first. */
function _procStat(pid: number): string[] {
  const text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return text.slice(text.lastIndexOf(")") + 2).split(" ");
}

const POST_200 = 'raftkv_http_requests_total{route="/v1/data",method="POST",code="200"}';
const PUT_200 = 'raftkv_http_requests_total{route="/v1/data/{key}",method="PUT",code="200"}';

Deno.test({
  name: PROMTOOL
    ? "every node's /metrics passes promtool, and writes and a killed leader move the values"
    : "every node's /metrics passes promtool (skipped: promtool not installed; apt-get install prometheus)",
  ignore: PROMTOOL === null,
  async fn() {
    await using cluster = await startCluster({ size: 3 });
    const leader = await cluster.waitForLeader();
    const follower = cluster.ids.find((id) => id !== leader)!;
    const other = cluster.ids.find((id) => id !== leader && id !== follower)!;

    const before = await scrape(cluster, leader);
    assert.equal(sample(before, "raftkv_is_leader"), 1);
    assert.equal(sample(before, 'raftkv_role{role="leader"}'), 1);
    // The timing it runs with: the harness's --election-timeout 300 and --heartbeat 50.
    assert.equal(sample(before, "raftkv_election_timeout_seconds"), 0.3);
    assert.equal(sample(before, "raftkv_heartbeat_interval_seconds"), 0.05);
    // The process metrics, as a Go node exports them, and the JS heap: against what /proc says of
    // the node's process, read from here (a node may not read /proc itself: Deno allows it only
    // with --allow-all, which a node gives up at start).
    const pid = cluster.node(leader).pid!;
    const cpuBefore = _procCpuSeconds(pid);
    const proc = await scrape(cluster, leader);
    const cpuAfter = _procCpuSeconds(pid);
    const cpu = sample(proc, "process_cpu_seconds_total");
    assert.ok(
      cpu > 0 && cpu >= cpuBefore - 0.02 && cpu <= cpuAfter + 0.02,
      `CPU ${cpu} s; /proc: ${cpuBefore} s before the scrape, ${cpuAfter} s after`,
    );
    assert.ok(sample(proc, "process_resident_memory_bytes") > 10e6);
    const started = sample(proc, "process_start_time_seconds");
    assert.ok(started > Date.now() / 1000 - 3600, `started at ${started}`);
    // The runtime's time origin: after the process started (btime is whole seconds), not long.
    const procStart = _procStartSeconds(pid);
    assert.ok(
      started >= procStart && started - procStart < 5,
      `started at ${started}, /proc says ${procStart}`,
    );
    assert.ok(sample(proc, "raftkv_heap_used_bytes") > 0);
    assert.ok(sample(proc, "raftkv_heap_used_bytes") <= sample(proc, "raftkv_heap_total_bytes"));
    const commitBefore = sample(before, "raftkv_commit_index");
    const postsBefore = before.get(POST_200) ?? 0;

    // A write on the leader: committed and applied before the answer, so the next scrape shows it.
    const write = await cluster.request(leader, "POST", "/v1/data", { k: "m1", v: "1" });
    assert.equal(write.status, 200, write.text);
    const index = (write.json as { index: number }).index;
    const after = await scrape(cluster, leader);
    assert.ok(sample(after, "raftkv_commit_index") >= index, `commit index below ${index}`);
    assert.ok(sample(after, "raftkv_commit_index") > commitBefore);
    assert.ok(sample(after, "raftkv_applied_index") >= index);
    assert.equal(sample(after, POST_200), postsBefore + 1);
    assert.ok(sample(after, "raftkv_proposals_committed_total") >= 1);
    assert.ok(sample(after, "raftkv_wal_fsync_duration_seconds_count") >= 1);
    assert.ok(
      sample(after, 'raftkv_http_request_duration_seconds_count{route="/v1/data",method="POST"}') >=
        1,
    );
    // Both followers answer the leader's heartbeats: one voter of three could fail.
    await waitFor(async () => {
      const s = parseSamples((await cluster.request(leader, "GET", "/metrics")).text);
      return s.get("raftkv_failure_tolerance") === 1;
    }, { message: `${leader} to report a failure tolerance of 1` });
    for (const peer of [follower, other]) {
      // The leader has heard back from each follower, and knows how far behind it is.
      assert.ok(sample(after, `raftkv_peer_round_trip_time_seconds_count{peer="${peer}"}`) > 0);
      // A round trip takes time, even on loopback (a sum of 0 was a clock that did not run).
      assert.ok(sample(after, `raftkv_peer_round_trip_time_seconds_sum{peer="${peer}"}`) > 0);
      assert.ok(sample(after, `raftkv_peer_replication_lag_entries{peer="${peer}"}`) >= 0);
    }

    // A write through a follower counts on the follower (the route the client used, and the
    // status relayed) and on the leader it was forwarded to.
    const followerBefore = await scrape(cluster, follower);
    assert.equal(sample(followerBefore, "raftkv_is_leader"), 0);
    assert.equal(sample(followerBefore, "raftkv_election_timeout_seconds"), 0.3);
    assert.deepEqual(
      [...followerBefore.keys()].filter((k) => k.startsWith("raftkv_peer_replication_lag")),
      [],
      "only the leader reports replication lag",
    );
    const put = await cluster.request(follower, "PUT", "/v1/data/m2", { v: "2" });
    assert.equal(put.status, 200, put.text);
    const followerAfter = await scrape(cluster, follower);
    assert.equal(
      sample(followerAfter, PUT_200),
      (followerBefore.get(PUT_200) ?? 0) + 1,
    );
    assert.ok(sample(await scrape(cluster, leader), PUT_200) >= 1);
    // The follower applies the write soon after the leader.
    const putIndex = (put.json as { index: number }).index;
    await waitFor(async () => {
      const s = parseSamples((await cluster.request(follower, "GET", "/metrics")).text);
      return (s.get("raftkv_applied_index") ?? 0) >= putIndex;
    }, { message: `${follower} to apply index ${putIndex}` });

    // Killing the leader: each survivor sees a new leadership.
    const changesBefore = new Map<string, number>();
    for (const id of [follower, other]) {
      changesBefore.set(id, sample(await scrape(cluster, id), "raftkv_leader_changes_total"));
    }
    await cluster.kill(leader);
    const next = await cluster.waitForLeader();
    assert.notEqual(next, leader);
    for (const id of [follower, other]) {
      const s = await scrape(cluster, id);
      assert.ok(
        sample(s, "raftkv_leader_changes_total") > changesBefore.get(id)!,
        `${id}: leader changes did not rise above ${changesBefore.get(id)}`,
      );
      assert.equal(sample(s, "raftkv_is_leader"), id === next ? 1 : 0);
    }
    // The new leader never hears from the killed one: it says how long since (since its election),
    // and once an election timeout (300 ms) has passed, that no voter is to spare.
    await waitFor(async () => {
      const s = parseSamples((await cluster.request(next, "GET", "/metrics")).text);
      return s.get("raftkv_failure_tolerance") === 0 &&
        (s.get(`raftkv_peer_last_contact_seconds{peer="${leader}"}`) ?? 0) >= 1;
    }, { message: `${next} to report ${leader} unheard for 1 s and a failure tolerance of 0` });
    const last = await scrape(cluster, next);
    const survivor = next === follower ? other : follower;
    assert.ok(
      sample(last, `raftkv_peer_last_contact_seconds{peer="${survivor}"}`) <
        sample(last, `raftkv_peer_last_contact_seconds{peer="${leader}"}`),
    );
    assert.deepEqual(
      [...(await scrape(cluster, survivor)).keys()].filter((k) =>
        /last_contact|failure_tolerance/.test(k)
      ),
      [],
      "only the leader reports last contacts and the failure tolerance",
    );
  },
});

Deno.test({
  name: PROMTOOL
    ? "after a member is removed, the others' /metrics pass promtool and show no series of it"
    : "after a member is removed (skipped: promtool not installed; apt-get install prometheus)",
  ignore: PROMTOOL === null,
  async fn() {
    await using cluster = await startCluster({ size: 3 });
    const leader = await cluster.waitForLeader();
    const [gone, stays] = cluster.ids.filter((id) => id !== leader) as [string, string];
    const of = (samples: Map<string, number>) =>
      [...samples.keys()].filter((k) => k.includes(`peer="${gone}"`));
    // Both survivors have sent to it, so both have its series before.
    await waitFor(async () => of(await scrape(cluster, leader)).length > 0, {
      message: `${leader} to report ${gone}`,
    });
    const removed = await cluster.request(leader, "DELETE", `/v1/members/${gone}`);
    assert.equal(removed.status, 200, removed.text);
    const index = (removed.json as { index: number }).index;
    for (const id of [leader, stays]) {
      await waitFor(
        async () => sample(await scrape(cluster, id), "raftkv_applied_index") >= index,
        {
          message: `${id} to apply the removal (index ${index})`,
        },
      );
      // Once the configuration without it is in force, its round-trip times, queue and lag are
      // not shown any more (they would stay frozen at their last values).
      let left: string[] = [];
      await waitFor(async () => (left = of(await scrape(cluster, id))).length === 0, {
        deadlineMs: 5_000,
        message: () => `${id} to drop ${gone}'s series: ${left}`,
      });
    }
    // The removed node, still running, says so (it follows no leader any more).
    let last = new Map<string, number>();
    await waitFor(
      async () =>
        (last = await scrape(cluster, gone)).get('raftkv_membership{membership="removed"}') === 1,
      { message: () => `${gone} to report itself removed: ${[...last].join(" ")}` },
    );
    assert.equal(sample(last, 'raftkv_membership{membership="voter"}'), 0);
    assert.equal(sample(last, "raftkv_has_leader"), 0);
  },
});
