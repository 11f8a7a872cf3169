/**
 * End-to-end tests: three real node processes (`main.ts`) on free ports, talking HTTP/2 to each
 * other, driven over real HTTP through the process harness.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { walCommit } from "../testing/node_state.ts";
import {
  cleanEnv,
  DEFAULT_NODE_FLAGS,
  type ProcessCluster,
  startCluster,
  waitFor,
} from "../testing/harness.ts";
import {
  type Attempt,
  attempt,
  createFreshConnectionClient,
  delay,
  Rng,
} from "../testing/chaos_lib.ts";

/** How a write ended, from the client's point of view. */
type WriteOutcome =
  /** 200: committed. */
  | "acked"
  /** 503 or a refused connection: definitely not applied. */
  | "not-applied"
  /** 502, 504, a timeout or a cut connection: may or may not have been applied. */
  | "unknown";

function _outcome(result: Attempt): WriteOutcome {
  if (result.kind === "error") return result.connectFailed ? "not-applied" : "unknown";
  if (result.status === 200) return "acked";
  if (result.status === 503) return "not-applied";
  if (result.status === 502 || result.status === 504) return "unknown";
  throw new Error(`unexpected answer to a write: ${result.status} ${result.text}`);
}

function _body(result: Attempt): Record<string, unknown> {
  if (result.kind !== "answer" || typeof result.json !== "object" || result.json === null) {
    return {};
  }
  return result.json as Record<string, unknown>;
}

function _describe(result: Attempt): string {
  return result.kind === "answer" ? `${result.status} ${result.text}` : result.message;
}

/** Runs `work` over `items` with at most `limit` running at once. */
async function _pool<T>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) await work(items[next++] as T);
  }));
}

/**
 * Puts `value` under `key` through a random running node until a 200, retrying on answers that
 * say "not applied" or "unknown" (a put of the same value is idempotent).
 */
async function _putUntilAcked(
  cluster: ProcessCluster,
  http: Deno.HttpClient,
  rng: Rng,
  key: string,
  value: string,
  deadlineMs = 20_000,
): Promise<void> {
  let last = "";
  await waitFor(async () => {
    const node = rng.pick(cluster.liveIds());
    const result = await attempt(
      `${cluster.api(node)}/v1/data`,
      "POST",
      { k: key, v: value },
      5000,
      http,
    );
    last = `${node}: ${_describe(result)}`;
    return result.kind === "answer" && result.status === 200;
  }, { deadlineMs, intervalMs: 20, message: () => `put(${key}) to be acknowledged (${last})` });
}

/** Deletes `key` through a random running node until a 200 (a delete is idempotent). */
async function _deleteUntilAcked(
  cluster: ProcessCluster,
  http: Deno.HttpClient,
  rng: Rng,
  key: string,
): Promise<void> {
  let last = "";
  await waitFor(async () => {
    const node = rng.pick(cluster.liveIds());
    const result = await attempt(
      `${cluster.api(node)}/v1/data/${encodeURIComponent(key)}`,
      "DELETE",
      undefined,
      5000,
      http,
    );
    last = `${node}: ${_describe(result)}`;
    return result.kind === "answer" && result.status === 200;
  }, { deadlineMs: 20_000, intervalMs: 20, message: () => `delete(${key}) (${last})` });
}

/**
 * Reads `key` (linearizable) through `node`, retrying while the answer is "try again" (503,
 * 504, no connection); returns the value or null for 404.
 */
async function _read(cluster: ProcessCluster, node: string, key: string): Promise<string | null> {
  const found: { value: string | null } = { value: null };
  let last = "";
  await waitFor(async () => {
    const result = await attempt(
      `${cluster.api(node)}/v1/data/${encodeURIComponent(key)}`,
      "GET",
      undefined,
      5000,
    );
    last = _describe(result);
    if (result.kind !== "answer") return false;
    const body = _body(result);
    if (result.status === 200 && typeof body.v === "string" && body.k === key) {
      found.value = body.v;
      return true;
    }
    if (result.status === 404 && body.error === "key not found") {
      found.value = null;
      return true;
    }
    if (result.status === 503 || result.status === 504) return false;
    throw new Error(`GET ${key} via ${node}: unexpected ${last}`);
  }, {
    deadlineMs: 20_000,
    intervalMs: 50,
    message: () => `a read of ${key} via ${node} (${last})`,
  });
  return found.value;
}

/** Waits until every running node has applied at least `index`. */
async function _waitApplied(cluster: ProcessCluster, index: number): Promise<void> {
  await waitFor(async () => {
    const statuses = await Promise.all(cluster.liveIds().map((id) => cluster.status(id)));
    return statuses.every((s) => s !== null && s.applied_index >= index);
  }, { deadlineMs: 20_000, message: `every running node to apply index ${index}` });
}

function _seed(): number {
  const text = Deno.env.get("E2E_SEED");
  return text === undefined ? crypto.getRandomValues(new Uint32Array(1))[0] ?? 1 : Number(text);
}

Deno.test("the quick start works through every node", async () => {
  await using cluster = await startCluster({ size: 3 });
  await cluster.waitForLeader(20_000);
  const forwardedTo: string[] = [];
  const note = (headers: Headers) => {
    const to = headers.get("x-raftkv-forwarded-to");
    if (to !== null) forwardedTo.push(to);
  };

  const put = await cluster.request("node-1", "POST", "/v1/data", { k: "a", v: "1" });
  assert.equal(put.status, 200, put.text);
  const putBody = put.json as Record<string, unknown>;
  assert.equal(putBody.k, "a");
  assert.equal(putBody.v, "1");
  assert.ok(Number.isSafeInteger(putBody.index) && (putBody.index as number) > 0, put.text);
  assert.match(put.headers.get("content-type") ?? "", /application\/json/);
  note(put.headers);

  const get = await cluster.request("node-2", "GET", "/v1/data/a");
  assert.equal(get.status, 200, get.text);
  const index = putBody.index;
  assert.deepEqual(get.json, { k: "a", v: "1", create_index: index, mod_index: index, version: 1 });
  note(get.headers);

  const del = await cluster.request("node-3", "DELETE", "/v1/data/a");
  assert.equal(del.status, 200, del.text);
  const delBody = del.json as Record<string, unknown>;
  assert.equal(delBody.k, "a");
  assert.equal(delBody.deleted, true);
  assert.ok((delBody.index as number) > (putBody.index as number), del.text);
  note(del.headers);

  const gone = await cluster.request("node-1", "GET", "/v1/data/a");
  assert.equal(gone.status, 404, gone.text);
  assert.deepEqual(gone.json, { error: "key not found", k: "a" });
  note(gone.headers);

  // Writes that reached a follower were forwarded to the leader; reads a follower serves itself
  // (through its leader's read index), so nothing else was forwarded.
  const leader = await cluster.waitForLeader();
  const writesToFollowers = ["node-1", "node-3"].filter((id) => id !== leader).length;
  assert.equal(forwardedTo.length, writesToFollowers, `forwarded: ${forwardedTo}`);
  assert.ok(forwardedTo.every((id) => id === leader), `forwarded to ${forwardedTo}, not ${leader}`);
});

Deno.test(
  "after kill -9 of the leader a new leader serves writes within a few election timeouts and no acknowledged write is lost",
  async () => {
    const seed = _seed();
    const rng = new Rng(seed);
    await using cluster = await startCluster({ size: 3 });
    using http = createFreshConnectionClient();
    const leader = await cluster.waitForLeader(20_000);
    const keys = Array.from({ length: 200 }, (_, i) => `kill-${i}`);
    const outcomes = new Map<string, WriteOutcome>();
    const answers = new Map<string, string>();
    let acked = 0;
    let killedAt: number | null = null;
    let killing: Promise<unknown> | null = null;

    // 200 concurrent writes through random nodes; the leader dies halfway, with writes in flight.
    await _pool(keys, 16, async (key) => {
      const node = rng.pick(cluster.liveIds());
      const result = await attempt(
        `${cluster.api(node)}/v1/data`,
        "POST",
        { k: key, v: `value-of-${key}` },
        8000,
        http,
      );
      const outcome = _outcome(result);
      outcomes.set(key, outcome);
      answers.set(key, `${node}: ${_describe(result)}`);
      if (outcome === "acked" && ++acked === 100) {
        killedAt = performance.now();
        killing = cluster.kill(leader, "SIGKILL");
      }
    });
    assert.ok(killing !== null && killedAt !== null, "the leader was never killed");
    await killing;

    // Time from the SIGKILL until a write sent afterwards is acknowledged.
    let probes = 0;
    await waitFor(async () => {
      const node = rng.pick(cluster.liveIds());
      const result = await attempt(
        `${cluster.api(node)}/v1/data`,
        "POST",
        { k: "probe", v: `probe-${++probes}` },
        2000,
        http,
      );
      return result.kind === "answer" && result.status === 200;
    }, { deadlineMs: 15_000, intervalMs: 10, message: "a write after the leader's SIGKILL" });
    const recoveryMs = performance.now() - (killedAt as number);
    console.log(
      `failover: a write was acknowledged ${
        recoveryMs.toFixed(0)
      } ms after SIGKILL of the leader ${leader} (election timeout 300 ms, ${probes} probes); ` +
        `the 200 concurrent writes: ${
          [...outcomes.values()].filter((o) => o === "acked").length
        } acked, ${[...outcomes.values()].filter((o) => o === "not-applied").length} not applied, ${
          [...outcomes.values()].filter((o) => o === "unknown").length
        } unknown in the end`,
    );
    assert.ok(recoveryMs < 10_000, `no write succeeded for ${recoveryMs} ms after the kill`);

    await cluster.start(leader);
    const status = await cluster.status(await cluster.waitForLeader(20_000));
    assert.ok(status !== null);
    await _waitApplied(cluster, status.commit_index);

    const lost: string[] = [];
    const ghosts: string[] = [];
    for (const [i, key] of keys.entries()) {
      const node = cluster.ids[i % cluster.ids.length] ?? leader;
      const value = await _read(cluster, node, key);
      const outcome = outcomes.get(key);
      if (outcome === "acked" && value !== `value-of-${key}`) lost.push(`${key} -> ${value}`);
      if (outcome === "not-applied" && value !== null) ghosts.push(`${key}: ${answers.get(key)}`);
    }
    assert.deepEqual(lost, [], `acknowledged writes lost (seed ${seed})`);
    assert.deepEqual(ghosts, [], `writes answered "not applied" were applied (seed ${seed})`);
  },
);

/** Keys that must be stored as opaque strings: property names, separators, escapes, Unicode. */
const _ODD_KEYS = [
  "__proto__",
  "constructor",
  "toString",
  "a/b",
  "a%2Fb",
  "%41",
  "ü",
  "emoji 😀",
  "nul\u0000key",
  " ",
  "..a",
  "k".repeat(1024),
  // U+FEFF at the start is data, not a byte order mark to drop.
  "\ufeff",
  "\ufeffbom",
];

Deno.test("after all nodes are killed and restarted, all data is back", async () => {
  const seed = _seed();
  const rng = new Rng(seed);
  // A low snapshot threshold: the restart recovers from snapshots plus the WAL after them.
  await using cluster = await startCluster({ size: 3, nodeFlags: ["--snapshot-threshold", "50"] });
  using http = createFreshConnectionClient();
  await cluster.waitForLeader(20_000);
  const expected = new Map<string, string | null>();
  const keys = [..._ODD_KEYS, ...Array.from({ length: 120 }, (_, i) => `restart-${i}`)];
  await _pool(keys, 8, async (key) => {
    // Values too may begin with U+FEFF.
    await _putUntilAcked(cluster, http, rng, key, `\ufefffirst-${key}`);
    expected.set(key, `\ufefffirst-${key}`);
  });
  // Overwrite some and delete others, so that the last entry of a key wins after replay.
  await _pool(keys.slice(0, 40), 8, async (key) => {
    await _putUntilAcked(cluster, http, rng, key, `second-${key}`);
    expected.set(key, `second-${key}`);
  });
  await _pool(keys.slice(40, 70), 8, async (key) => {
    await _deleteUntilAcked(cluster, http, rng, key);
    expected.set(key, null);
  });
  const before = await cluster.status(await cluster.waitForLeader());
  assert.ok(before !== null);

  await Promise.all(cluster.ids.map((id) => cluster.kill(id, "SIGKILL")));
  assert.deepEqual(cluster.liveIds(), []);
  await Promise.all(cluster.ids.map((id) => cluster.start(id)));
  const leader = await cluster.waitForLeader(30_000);
  const after = await cluster.status(leader);
  assert.ok(after !== null);
  assert.ok(
    after.last_index >= before.commit_index,
    `the log shrank: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`,
  );
  assert.ok(after.term > before.term, `no new term after the restart: ${after.term}`);

  const wrong: string[] = [];
  for (const [i, key] of keys.entries()) {
    const node = cluster.ids[i % cluster.ids.length] ?? leader;
    const value = await _read(cluster, node, key);
    if (value !== expected.get(key)) wrong.push(`${key}: ${value} (expected ${expected.get(key)})`);
  }
  assert.deepEqual(wrong, [], `wrong values after restarting every node (seed ${seed})`);
});

for (const signal of ["SIGTERM", "SIGKILL"] as const) {
  const how = signal === "SIGTERM" ? "stopped with SIGTERM" : "killed with SIGKILL";
  Deno.test(`${how}, a node keeps what it had applied: back alone, it serves it with stale reads`, async () => {
    await using cluster = await startCluster({ size: 3 });
    const leader = await cluster.waitForLeader(20_000);
    const put = await cluster.request(leader, "POST", "/v1/data", { k: "kept", v: "1" });
    assert.equal(put.status, 200, put.text);
    const index = (put.json as { index: number }).index;
    await waitFor(async () => {
      for (const id of cluster.ids) {
        if (((await cluster.status(id))?.applied_index ?? 0) < index) return false;
        // Killed, a node has only what it wrote: wait for the log's record of the commit index.
        if (signal === "SIGKILL" && await walCommit(cluster.node(id).dataDir) < index) {
          return false;
        }
      }
      return true;
    }, { deadlineMs: 10_000, message: `every node to apply (and record) index ${index}` });
    for (const id of cluster.ids) {
      if (signal === "SIGTERM") assert.equal(await cluster.stop(id), 0);
      else await cluster.kill(id, "SIGKILL");
    }
    // Alone it can elect no leader: what it serves is what it applied before it went down.
    const lone = cluster.ids.find((id) => id !== leader)!;
    await cluster.start(lone);
    await waitFor(async () => ((await cluster.status(lone))?.applied_index ?? 0) >= index, {
      deadlineMs: 5_000,
      message: `${lone}, alone, to apply index ${index} from its own disk`,
    });
    const read = await cluster.request(lone, "GET", "/v1/data/kept?consistency=stale");
    assert.equal(read.status, 200, read.text);
    assert.equal((read.json as { v: string }).v, "1");
    const linearizable = await cluster.request(lone, "GET", "/v1/data/kept");
    assert.equal(linearizable.status, 503, linearizable.text);
  });
}

/**
 * Runs `main.ts` by hand as node `id` on `dataDir`, beside the harness's processes, with
 * `flags` after the usual ones.
 */
async function _startByHand(
  cluster: ProcessCluster,
  id: string,
  dataDir: string,
  flags: string[] = [],
): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      fileURLToPath(new URL("../main.ts", import.meta.url)),
      "--id",
      id,
      "--cluster-config-path",
      cluster.configPath,
      "--data-dir",
      dataDir,
      ...DEFAULT_NODE_FLAGS,
      ...flags,
    ],
    env: cleanEnv(),
    clearEnv: true,
    stdin: "null",
    signal: AbortSignal.timeout(30_000),
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("a second process on a node's data directory, or another node on it, exits at once with the reason, and the lock dies with the node (kill -9)", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader(20_000);
  const follower = cluster.ids.find((id) => id !== leader) ?? "node-2";
  const first = await cluster.request(follower, "POST", "/v1/data", { k: "lock", v: "1" });
  assert.equal(first.status, 200, first.text);

  // The same node started again by hand (a second unit, a second container on the volume).
  const second = await _startByHand(cluster, follower, cluster.node(follower).dataDir);
  assert.equal(second.code, 1, second.stderr);
  assert.match(
    second.stderr,
    /wal\/LOCK" is locked by another process: another node runs on these files/,
  );

  // On other files, its ports are taken (by the running node): one line saying so, no stack.
  const elsewhere = await Deno.makeTempDir({ dir: cluster.dataRoot, prefix: "elsewhere-" });
  const busy = await _startByHand(cluster, follower, elsewhere);
  assert.equal(busy.code, 1, busy.stderr);
  assert.match(
    busy.stderr,
    /cannot listen on the peer port 127\.0\.0\.1:\d+: .*another process has it/,
  );
  assert.doesNotMatch(busy.stderr, /\n\s+at /, "a stack trace was printed");
  // A host that does not resolve is bad configuration: one line naming it and the flag, exit 2.
  const nowhere = await _startByHand(cluster, follower, elsewhere, [
    "--listen-host",
    "no.such.host.invalid",
  ]);
  assert.equal(nowhere.code, 2, nowhere.stderr);
  assert.match(
    nowhere.stderr,
    /cannot listen on no\.such\.host\.invalid:\d+: the host "no\.such\.host\.invalid", from --listen-host .* does not resolve/,
  );
  assert.equal(nowhere.stderr.trim().split("\n").length, 1, nowhere.stderr);

  // The node that holds the lock goes on as if nothing happened.
  const next = await cluster.request(follower, "POST", "/v1/data", { k: "lock", v: "2" });
  assert.equal(next.status, 200, next.text);
  // Killed, it holds nothing: it starts again on its data.
  await cluster.kill(follower, "SIGKILL");
  // But not as another node (volumes swapped by mistake): its term and vote, and its log, are
  // the follower's own.
  const other = cluster.ids.find((id) => id !== follower)!;
  const swapped = await _startByHand(cluster, other, cluster.node(follower).dataDir);
  assert.equal(swapped.code, 1, swapped.stderr);
  assert.match(
    swapped.stderr,
    new RegExp(
      `raft-state.json" belongs to node "${follower}", not "${other}": these are another node's files`,
    ),
  );
  await cluster.start(follower);
  const index = (next.json as { index: number }).index;
  await waitFor(async () => ((await cluster.status(follower))?.applied_index ?? 0) >= index, {
    deadlineMs: 15_000,
    message: `${follower} to apply index ${index} after its restart`,
  });
  const read = await cluster.request(follower, "GET", "/v1/data/lock?consistency=stale");
  assert.equal(read.status, 200, read.text);
  assert.equal((read.json as { v: string }).v, "2");
});

Deno.test("a graceful SIGTERM exits 0 and the cluster keeps serving", async () => {
  const seed = _seed();
  const rng = new Rng(seed);
  await using cluster = await startCluster({ size: 3 });
  using http = createFreshConnectionClient();
  const leader = await cluster.waitForLeader(20_000);
  const outcomes = new Map<string, WriteOutcome>();
  const answers = new Map<string, string>();
  let acked = 0;
  let stopping: Promise<number> | null = null;

  // Writes keep flowing while the leader is stopped, so it stops with requests in flight.
  const keys = Array.from({ length: 150 }, (_, i) => `term-${i}`);
  await _pool(keys, 8, async (key) => {
    const live = cluster.liveIds().filter((id) => stopping === null || id !== leader);
    const node = rng.pick(live);
    const result = await attempt(
      `${cluster.api(node)}/v1/data`,
      "POST",
      { k: key, v: `value-of-${key}` },
      8000,
      http,
    );
    const outcome = _outcome(result);
    outcomes.set(key, outcome);
    answers.set(key, `${node}: ${_describe(result)}`);
    if (outcome === "acked" && ++acked === 40) stopping = cluster.stop(leader);
  });
  assert.ok(stopping !== null, "the leader was never stopped");
  assert.equal(await stopping, 0, `exit code of ${leader} after SIGTERM`);
  const exit = cluster.exitStatus(leader);
  assert.deepEqual([exit?.code, exit?.signal], [0, null], JSON.stringify(exit));
  assert.ok(
    cluster.logs(leader).some((line) => line.includes("stopped")),
    cluster.formatLogs([leader], 30),
  );

  const next = await cluster.waitForLeader(20_000);
  assert.notEqual(next, leader);
  await _putUntilAcked(cluster, http, rng, "after-stop", "still-serving");
  assert.equal(await _read(cluster, rng.pick(cluster.liveIds()), "after-stop"), "still-serving");

  const lost: string[] = [];
  const ghosts: string[] = [];
  for (const [i, key] of keys.entries()) {
    const live = cluster.liveIds();
    const value = await _read(cluster, live[i % live.length] ?? next, key);
    const outcome = outcomes.get(key);
    if (outcome === "acked" && value !== `value-of-${key}`) lost.push(`${key} -> ${value}`);
    if (outcome === "not-applied" && value !== null) ghosts.push(`${key}: ${answers.get(key)}`);
  }
  assert.deepEqual(lost, [], `acknowledged writes lost (seed ${seed})`);
  assert.deepEqual(ghosts, [], `writes answered "not applied" were applied (seed ${seed})`);
  console.log(
    `SIGTERM of the leader ${leader} under load: ${
      [...outcomes.values()].filter((o) => o === "acked").length
    } acked, ${[...outcomes.values()].filter((o) => o === "not-applied").length} not applied, ${
      [...outcomes.values()].filter((o) => o === "unknown").length
    } unknown; new leader ${next}`,
  );
});

Deno.test("stopping each node in turn with SIGTERM under a write load stops no other node and loses no acknowledged write", async () => {
  // A stopping node must not take a peer down with it. Deno's node:http2 client can abort the
  // whole process (an nghttp2 assertion, exit 134, or SIGSEGV) on the GOAWAY a gracefully
  // closing peer server sends (denoland/deno#36788), so a node's peer server must not send one.
  // That crash is rare per stop: this test catches a regression in some runs, not every run.
  const seed = _seed();
  const rng = new Rng(seed);
  await using cluster = await startCluster({ size: 3 });
  using http = createFreshConnectionClient();
  await cluster.waitForLeader(20_000);
  const outcomes = new Map<string, WriteOutcome>();
  const acked: string[] = [];
  const stop = new AbortController();
  let sent = 0;

  // Writers: unique keys through random running nodes, until the test is done.
  const writers = Array.from({ length: 6 }, async () => {
    while (!stop.signal.aborted) {
      const live = cluster.liveIds();
      if (live.length === 0) return;
      const key = `restart-${sent++}`;
      const result = await attempt(
        `${cluster.api(rng.pick(live))}/v1/data`,
        "POST",
        { k: key, v: `value-of-${key}` },
        5000,
        http,
      );
      const outcome = _outcome(result);
      outcomes.set(key, outcome);
      if (outcome === "acked") acked.push(key);
      // A failed write is retried under a new key after a pause: no busy loop while a leader
      // is being elected.
      else await delay(20);
    }
  });
  /** Waits until `n` more writes are acknowledged: the cluster serves writes again. */
  const moreAcked = async (n: number, what: string) => {
    const target = acked.length + n;
    await waitFor(() => acked.length >= target, {
      deadlineMs: 15_000,
      message: () => `${n} more acknowledged writes ${what} (${acked.length} of ${target})`,
    });
  };
  /** Fails if a node other than `except` is not running, with how it ended and its output. */
  const othersRunning = (except: string, when: string) => {
    for (const id of cluster.ids.filter((id) => id !== except)) {
      assert.ok(
        cluster.isRunning(id),
        `${id} ended (${JSON.stringify(cluster.exitStatus(id))}) ${when} ${except}\n${
          cluster.formatLogs([id], 20)
        }`,
      );
    }
  };
  try {
    await moreAcked(20, "before the first stop");
    for (const id of cluster.ids) {
      const code = await cluster.stop(id);
      assert.equal(code, 0, `exit code of ${id} after SIGTERM\n${cluster.formatLogs([id], 20)}`);
      othersRunning(id, "after the SIGTERM of");
      await moreAcked(10, `while ${id} is down`);
      await cluster.start(id);
      othersRunning(id, "while restarting");
      await moreAcked(10, `after ${id} came back`);
      othersRunning(id, "after the restart of");
    }
  } finally {
    stop.abort();
    await Promise.all(writers);
  }

  const leader = await cluster.waitForLeader(20_000);
  const status = await cluster.status(leader);
  assert.ok(status !== null);
  await _waitApplied(cluster, status.commit_index);
  const lost: string[] = [];
  for (const [i, key] of acked.entries()) {
    const value = await _read(cluster, cluster.ids[i % cluster.ids.length] ?? leader, key);
    if (value !== `value-of-${key}`) lost.push(`${key} -> ${value}`);
  }
  assert.deepEqual(lost, [], `acknowledged writes lost (seed ${seed})`);
  const counts = [...outcomes.values()];
  console.log(
    `SIGTERM and restart of each node under load: ${acked.length} acked, ${
      counts.filter((o) => o === "not-applied").length
    } not applied, ${counts.filter((o) => o === "unknown").length} unknown; no other node stopped`,
  );
});

Deno.test("a graceful SIGTERM exits 0 even while a silent HTTP/2 client holds a connection", async () => {
  await using cluster = await startCluster({ size: 1 });
  await cluster.waitForLeader(20_000);
  // A client (or a follower's forwarder) that opened HTTP/2 and then went silent, as behind a
  // partition: the connection preface and a SETTINGS frame, then nothing, not even an ACK.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: cluster.node("node-1").apiPort });
  try {
    const preface = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    await conn.write(new Uint8Array([...preface, 0, 0, 0, 4, 0, 0, 0, 0, 0]));
    await waitFor(async () => (await cluster.request("node-1", "GET", "/health")).status === 200);
    const started = performance.now();
    const code = await cluster.stop("node-1", 10_000);
    assert.equal(code, 0);
    console.log(`exited 0 ${(performance.now() - started).toFixed(0)} ms after SIGTERM`);
  } finally {
    conn.close();
  }
});

Deno.test("health, readiness and status agree on a live cluster, and readiness drops without a quorum", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader(20_000);

  for (const id of cluster.ids) {
    const health = await cluster.request(id, "GET", "/health");
    assert.equal(health.status, 200, `${id}: ${health.text}`);
    assert.deepEqual(health.json, { status: "ok" });
  }
  await waitFor(async () => {
    const answers = await Promise.all(
      cluster.ids.map((id) => cluster.request(id, "GET", "/ready")),
    );
    return answers.every((a) => a.status === 200);
  }, { deadlineMs: 10_000, message: "every node to answer /ready with 200" });
  for (const id of cluster.ids) {
    assert.deepEqual((await cluster.request(id, "GET", "/ready")).json, { ready: true });
  }

  const put = await cluster.request(leader, "POST", "/v1/data", { k: "s", v: "1" });
  assert.equal(put.status, 200, put.text);
  const index = (put.json as { index: number }).index;
  await _waitApplied(cluster, index);

  const statuses = await Promise.all(cluster.ids.map((id) => cluster.status(id)));
  const leaders = statuses.filter((s) => s?.role === "leader");
  assert.equal(leaders.length, 1, JSON.stringify(statuses));
  for (const [i, status] of statuses.entries()) {
    const id = cluster.ids[i];
    assert.ok(status !== null, `${id} gave no status`);
    assert.deepEqual(
      Object.keys(status).sort(),
      [
        "alarms",
        "applied_index",
        "cluster_id",
        "commit_index",
        "data_bytes",
        "id",
        "last_index",
        "leader",
        "members",
        "membership",
        "quota_bytes",
        "role",
        "term",
      ],
    );
    assert.equal(status.membership, "voter", `${id} is not a voter`);
    assert.equal(status.quota_bytes, 1024 ** 3, `${id}: the default quota`);
    assert.ok(status.data_bytes! > 0, `${id} counts no data after a write`);
    assert.deepEqual(status.members, cluster.ids.map((m) => ({ id: m, api_url: cluster.api(m) })));
    assert.deepEqual(status.alarms, [], `${id} reports an alarm`);
    assert.equal(status.id, id);
    assert.ok(status.role === "leader" || status.role === "follower", status.role);
    assert.equal(status.term, leaders[0]?.term, `${id} is in another term`);
    assert.deepEqual(status.leader, { id: leader, api_url: cluster.api(leader) });
    for (const field of ["commit_index", "applied_index", "last_index"] as const) {
      assert.ok(Number.isSafeInteger(status[field]) && status[field] >= 0, `${id} ${field}`);
    }
    assert.ok(status.applied_index <= status.commit_index, JSON.stringify(status));
    assert.ok(status.commit_index <= status.last_index, JSON.stringify(status));
    assert.ok(status.applied_index >= index, JSON.stringify(status));
  }

  // Without a quorum the leader steps down (CheckQuorum) and no node can be ready.
  const followers = cluster.ids.filter((id) => id !== leader);
  await Promise.all(followers.map((id) => cluster.kill(id, "SIGKILL")));
  await waitFor(async () => (await cluster.request(leader, "GET", "/ready")).status === 503, {
    deadlineMs: 10_000,
    message: `${leader} to answer /ready with 503 once alone`,
  });
  const notReady = await cluster.request(leader, "GET", "/ready");
  assert.equal((notReady.json as { ready: unknown }).ready, false);
  assert.equal(typeof (notReady.json as { error: unknown }).error, "string");
  assert.ok(notReady.headers.has("retry-after"), "503 without Retry-After");
  const alone = await cluster.status(leader);
  assert.ok(alone !== null && alone.role !== "leader", JSON.stringify(alone));
  assert.equal((await cluster.request(leader, "GET", "/health")).status, 200);
  const write = await cluster.request(leader, "POST", "/v1/data", { k: "s", v: "2" }, {
    timeoutMs: 10_000,
  });
  assert.ok(write.status === 503 || write.status === 504, `${write.status} ${write.text}`);
  assert.equal(typeof (write.json as { error: unknown }).error, "string");
});
