/**
 * A full disk with real processes on real file systems: each node's data directory is a small
 * tmpfs, filled with a filler file. One full disk (a follower's, then the leader's) leaves the
 * cluster acknowledging writes; both followers' disks full, or every disk, refuses writes with 507
 * while reads are served; deleting the fillers lets writes resume with no restart, and nothing
 * acknowledged is lost.
 *
 * Mounting needs root on Linux: elsewhere the test is skipped, saying why.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type HttpResult, type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { fill, free, mountTmpfs, unmount } from "../testing/tmpfs.ts";

const SKIP = Deno.build.os !== "linux"
  ? `mounting a tmpfs needs Linux, not ${Deno.build.os}`
  : Deno.uid() !== 0
  ? `mounting a tmpfs needs root (uid is ${Deno.uid()})`
  : null;

/** The writes the cluster acknowledged: the last acknowledged value of each key. */
const acked = new Map<string, string>();

/** One write through `id`; records it when acknowledged. */
async function put(c: ProcessCluster, id: string, k: string, v: string): Promise<HttpResult> {
  const res = await c.request(id, "POST", "/v1/data", { k, v }, { timeoutMs: 5_000 }).catch((
    e,
  ) => ({ status: 0, json: null, text: String(e), headers: new Headers() }));
  if (res.status === 200) acked.set(k, v);
  return res;
}

/** Writes `count` keys, each retried through the nodes in turn until acknowledged. */
async function putMany(c: ProcessCluster, prefix: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const k = `${prefix}-${i}`;
    let last: HttpResult | null = null;
    await waitFor(async () => {
      const ids = c.liveIds();
      last = await put(c, ids[i % ids.length]!, k, `${prefix} value ${i}`.padEnd(1000, "."));
      return last.status === 200;
    }, {
      deadlineMs: 10_000,
      intervalMs: 100,
      message: () => `the write of ${k} to be acknowledged (last: ${JSON.stringify(last)})`,
    });
  }
}

/**
 * Writes `value` through `id` under new keys `${prefix}-N` until one is refused with 507 (the ones
 * before may end as 504: in the leader's log, not yet known to be uncommittable); checks the
 * answer's shape and returns it with its key.
 */
async function refusedWrite(
  c: ProcessCluster,
  id: string,
  prefix: string,
  value: string,
): Promise<HttpResult & { k: string }> {
  let refused: HttpResult | null = null;
  let attempt = 0;
  await waitFor(async () => {
    const res = await put(c, id, `${prefix}-${++attempt}`, value);
    if (res.status === 507) refused = res;
    return refused !== null;
  }, { deadlineMs: 20_000, intervalMs: 100, message: `a write to ${id} to be refused with 507` });
  const k = `${prefix}-${attempt}`;
  const json = refused!.json as Record<string, unknown>;
  assert.deepEqual(Object.keys(json).sort(), ["alarm", "error", "k", "members"]);
  assert.equal(json.alarm, "NOSPACE");
  assert.equal(json.k, k);
  return { ...refused!, k };
}

async function alarms(c: ProcessCluster, id: string): Promise<string[] | undefined> {
  return (await c.status(id))?.alarms;
}

/** Waits until every node has applied what `leader` has committed. */
async function waitCaughtUp(c: ProcessCluster, leader: string): Promise<void> {
  const commit = (await c.status(leader))?.commit_index ?? Infinity;
  for (const id of c.ids) {
    await waitFor(async () => ((await c.status(id))?.applied_index ?? 0) >= commit, {
      deadlineMs: 10_000,
      intervalMs: 50,
      message: `${id} to apply the leader's commit index ${commit}`,
    });
  }
}

async function waitAlarm(c: ProcessCluster, id: string, on: boolean): Promise<void> {
  await waitFor(async () => (await alarms(c, id))?.includes("NOSPACE") === on, {
    deadlineMs: 10_000,
    intervalMs: 100,
    message: `${id} to ${on ? "raise" : "clear"} NOSPACE`,
  });
}

/**
 * Checks every acknowledged write with a linearizable read through `id`. A read that times out
 * (504: a heartbeat round lost on a loaded machine) changes nothing and is sent again, within a
 * deadline; any other answer is final.
 */
async function assertNothingLost(c: ProcessCluster, id: string): Promise<void> {
  for (const [k, v] of acked) {
    let res: HttpResult | null = null;
    await waitFor(async () => {
      res = await c.request(id, "GET", `/v1/data/${k}`, undefined, { timeoutMs: 5_000 });
      return res.status !== 504;
    }, {
      deadlineMs: 10_000,
      intervalMs: 100,
      message: () => `a read of ${k} via ${id} to be answered (last: ${JSON.stringify(res)})`,
    });
    assert.equal(res!.status, 200, `GET ${k} via ${id}: ${res!.text}`);
    assert.equal((res!.json as { v: string }).v, v, k);
  }
}

Deno.test({
  name:
    "a full disk is survived: one full disk leaves writes acknowledged, both followers' or every disk full refuses writes with 507 and serves reads, and freeing space resumes writes without a restart" +
    (SKIP === null ? "" : ` (skipped: ${SKIP})`),
  ignore: SKIP !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const root = await Deno.makeTempDir({ prefix: "raftkv-disk-full-" });
    const mounted: string[] = [];
    let cluster: ProcessCluster | undefined;
    try {
      for (const id of ["node-1", "node-2", "node-3"]) {
        const dir = join(root, id);
        await Deno.mkdir(dir);
        const why = await mountTmpfs(dir, "16m");
        if (why !== null) {
          await t.step({ name: `skipped: mount -t tmpfs failed: ${why}`, ignore: true, fn() {} });
          return;
        }
        mounted.push(dir);
      }
      cluster = await startCluster({ dataRoot: root, nodeFlags: ["--api-timeout", "1500"] });
      const c = cluster;
      const dir = (id: string) => c.node(id).dataDir;
      let leader = await c.waitForLeader(15_000);
      await putMany(c, "start", 10);

      // (1a) A follower's disk is full: the cluster keeps acknowledging writes.
      const follower = c.ids.find((id) => id !== leader)!;
      await fill(dir(follower));
      await putMany(c, "follower-full", 10);
      await waitAlarm(c, follower, true);
      assert.ok(c.isRunning(follower));
      // It cannot apply what committed since its disk filled: the leader answers its
      // linearizable and lease reads (they used to wait for --api-timeout and end 504).
      for (const consistency of ["linearizable", "lease"]) {
        const path = `/v1/data/follower-full-9?consistency=${consistency}`;
        const res = await c.request(follower, "GET", path);
        assert.equal(res.status, 200, `a ${consistency} read through ${follower}: ${res.text}`);
        assert.equal((res.json as { v: string }).v, "follower-full value 9".padEnd(1000, "."));
      }
      await free(dir(follower));
      await waitAlarm(c, follower, false);

      // (1b) The leader's disk is full: it steps down and the others go on without it.
      leader = await c.waitForLeader(10_000);
      await fill(dir(leader));
      await putMany(c, "leader-full", 10);
      await waitAlarm(c, leader, true);
      const next = await c.waitForLeader(10_000);
      assert.notEqual(next, leader, "the full node still leads");
      assert.ok(c.isRunning(leader));
      await free(dir(leader));
      await waitAlarm(c, leader, false);

      // (1c) Both followers' disks are full, the leader's is not: once their heartbeat answers say
      // so, the leader refuses writes with 507 naming them (they could not commit), and serves reads.
      // A retry of a write applied before, with its Idempotency-Key, is answered with the first
      // outcome all the same: the leader remembers it, and proposes nothing.
      leader = await c.waitForLeader(10_000);
      const keyed = { headers: { "idempotency-key": "peers-full-retry" }, timeoutMs: 5_000 };
      const first = await c.request(leader, "POST", "/v1/data", { k: "keyed", v: "1" }, keyed);
      assert.equal(first.status, 200, first.text);
      acked.set("keyed", "1");
      await waitCaughtUp(c, leader);
      const followers = c.ids.filter((id) => id !== leader);
      for (const id of followers) await fill(dir(id));
      const big = "x".repeat(8192); // larger than a page: see (2)
      const peersFull = await refusedWrite(c, leader, "peers-full", big);
      assert.deepEqual((peersFull.json as { members: string[] }).members.sort(), followers.sort());
      assert.match((peersFull.json as { error: string }).error, /the disks of .* are full/);
      for (const via of [leader, followers[0]!]) {
        const again = await c.request(via, "POST", "/v1/data", { k: "keyed", v: "1" }, keyed);
        assert.equal(again.status, 200, `the retry through ${via}: ${again.text}`);
        assert.equal(again.headers.get("idempotent-replayed"), "true");
        assert.deepEqual(again.json, first.json);
      }
      for (const id of followers) await waitAlarm(c, id, true);
      assert.deepEqual(await alarms(c, leader), [], "the leader's own disk has room");
      await assertNothingLost(c, leader);
      for (const id of followers) await free(dir(id));
      for (const id of followers) await waitAlarm(c, id, false);
      await putMany(c, "peers-freed", 5);

      // (2) Every disk is full: writes are refused with a clear 507, reads are served. First every
      // node catches up (the one just freed may still lack what was committed while it was full).
      leader = await c.waitForLeader(10_000);
      await waitCaughtUp(c, leader);
      for (const id of c.ids) await fill(dir(id));
      // A WAL file's last page may still have room (tmpfs counts whole pages), and the nodes' logs
      // differ in size by their commit records, so each has its own room left: a write larger
      // than a page needs a new one on every node. It ends as 504 (in the leader's log, on no
      // disk); then the leader knows and refuses.
      const refused = await refusedWrite(c, leader, "refused", big);
      const body = refused.json as { error: string; members: string[] };
      assert.match(body.error, /^no space left on device/);
      assert.ok(body.members.length > 0 && body.members.every((id) => c.ids.includes(id)));
      const follower2 = c.ids.find((id) => id !== leader)!;
      // A follower relays the leader's answer (after a 503 if leadership moved meanwhile).
      const relayed = await refusedWrite(c, follower2, "refused-too", "x");
      for (const id of c.ids) await waitAlarm(c, id, true);
      await assertNothingLost(c, leader);
      await assertNothingLost(c, follower2); // linearizable: the leader confirms the read index
      const stale = await c.request(follower2, "GET", "/v1/data/start-3?consistency=stale");
      assert.equal(stale.status, 200);

      // (3) Space is freed: writes resume with no restart, every node is up and ready.
      for (const id of c.ids) await free(dir(id));
      await putMany(c, "after", 10);
      for (const id of c.ids) {
        assert.ok(c.isRunning(id), `${id} exited:\n${c.formatLogs([id], 40)}`);
        await waitAlarm(c, id, false);
        await waitFor(async () => (await c.request(id, "GET", "/ready")).status === 200, {
          deadlineMs: 10_000,
          message: `${id} to be ready`,
        });
      }
      for (const id of c.ids) await assertNothingLost(c, id);
      assert.ok(acked.size >= 40, `${acked.size} writes acknowledged`);
      assert.ok(!acked.has(refused.k) && !acked.has(peersFull.k) && !acked.has(relayed.k));
    } finally {
      await cluster?.close();
      for (const dir of mounted) await unmount(dir);
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "a cluster restarted with more committed data than one Ready holds comes back whole on every node",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // The reported failure after every disk filled and the nodes were restarted: followers
    // learn the commit index in one step after a restart, get more than 4 MiB of committed entries
    // to apply, and used to stop with "entry N applied after M: out of order".
    await using c = await startCluster();
    const value = (i: number) => `${i}:`.padEnd(120_000, "v");
    await c.waitForLeader(15_000);
    const writes = [];
    for (let i = 0; i < 48; i++) {
      writes.push(
        waitFor(async () => {
          const ids = c.liveIds();
          const res = await c.request(ids[i % ids.length]!, "POST", "/v1/data", {
            k: `big-${i}`,
            v: value(i),
          });
          return res.status === 200;
        }, { deadlineMs: 15_000, intervalMs: 100, message: `the write of big-${i}` }),
      );
      if (writes.length === 8) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    await waitFor(async () => {
      const statuses = await Promise.all(c.ids.map((id) => c.status(id)));
      const commit = Math.max(...statuses.map((s) => s?.commit_index ?? 0));
      return statuses.every((s) => s !== null && s.applied_index >= commit);
    }, { deadlineMs: 10_000, message: "every node to apply the writes" });
    for (const id of c.ids) assert.equal(await c.stop(id), 0);
    await Promise.all(c.ids.map((id) => c.start(id)));
    const leader = await c.waitForLeader(15_000);
    // A linearizable read returns only once the new leader has committed an entry of its term,
    // so the commit index read after it covers every write made before the restart.
    await waitFor(async () => {
      const res = await c.request(leader, "GET", `/v1/data/big-47`);
      return res.status === 200;
    }, { deadlineMs: 15_000, message: "a linearizable read on the new leader" });
    const commit = (await c.status(leader))!.commit_index;
    await waitFor(async () => {
      const statuses = await Promise.all(c.ids.map((id) => c.status(id)));
      return statuses.every((s) => s !== null && s.applied_index >= commit);
    }, {
      deadlineMs: 15_000,
      message: () =>
        `every node to apply the backlog after the restart\n${c.formatLogs(c.ids, 20)}`,
    });
    for (const id of c.ids) {
      assert.ok(c.isRunning(id), `${id} stopped:\n${c.formatLogs([id], 20)}`);
      for (const i of [0, 47]) {
        const res = await c.request(id, "GET", `/v1/data/big-${i}?consistency=stale`);
        assert.equal((res.json as { v: string }).v, value(i), `big-${i} on ${id}`);
      }
    }
  },
});
