/**
 * Membership changes with real node processes under a constant write load: start 3 nodes, add a
 * 4th and a 5th (`--join`: each joins as a learner and is promoted), remove two (one of them the
 * leader), then replace a node whose disk was wiped by a new one. Every acknowledged write must
 * survive and the whole history (writes and reads) must be linearizable.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  cleanEnv,
  DEFAULT_NODE_FLAGS,
  type ProcessCluster,
  startCluster,
  waitFor,
} from "../testing/harness.ts";
import { attempt, createFreshConnectionClient } from "../testing/chaos_lib.ts";
import {
  change,
  handLead,
  joinAsVoter,
  type MemberRow,
  members,
  waitApplied,
  waitMembers,
} from "../testing/membership.ts";
import { checkLinearizability, type Operation } from "../src/check/linearizability.ts";
import { runClient } from "../src/cli/client/client.ts";
import { loadHardState, saveHardState } from "../src/storage/hard_state.ts";

/** Runs the command-line client; returns its exit code and what it printed. */
async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runClient(args, {
    out: (t) => out.push(t),
    err: (t) => err.push(t),
    env: () => undefined,
    stdin: () => Promise.resolve(""),
  });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

const WRITERS = 3;

/** Writers (each its own key, growing values) and a reader, against the current members. */
class Load {
  readonly history: Operation[] = [];
  readonly lastAcked: number[] = Array(WRITERS).fill(0);
  acked = 0;
  /** The nodes requests go to; the test changes it as members come and go. */
  targets: string[];
  #stopped = false;
  #loops: Promise<void>[] = [];
  readonly #client = createFreshConnectionClient();

  constructor(readonly cluster: ProcessCluster, targets: string[]) {
    this.targets = targets;
    for (let w = 0; w < WRITERS; w++) this.#loops.push(this.#writer(w));
    this.#loops.push(this.#reader(WRITERS));
  }

  #url(i: number, key: string): string {
    const ids = this.targets;
    return `${this.cluster.api(ids[i % ids.length]!)}/v1/data/${key}`;
  }

  async #writer(w: number): Promise<void> {
    let node = w;
    for (let seq = 1; !this.#stopped; seq++) {
      const key = `k${w}`;
      const call = performance.now();
      const r = await attempt(this.#url(node, key), "PUT", { v: String(seq) }, 3000, this.#client);
      if (r.kind === "answer" && r.status === 200) {
        this.history.push({
          client: w,
          kind: "put",
          key,
          value: String(seq),
          call,
          return: performance.now(),
        });
        this.lastAcked[w] = seq;
        this.acked++;
      } else {
        // Refused or cut off: it may still have taken effect (outcome unknown).
        if (!(r.kind === "error" && r.connectFailed)) {
          this.history.push({
            client: w,
            kind: "put",
            key,
            value: String(seq),
            call,
            return: null,
          });
        }
        node++;
        await new Promise((res) => setTimeout(res, 10));
      }
    }
  }

  async #reader(client: number): Promise<void> {
    let node = 0;
    for (let i = 0; !this.#stopped; i++) {
      const key = `k${i % WRITERS}`;
      const call = performance.now();
      const r = await attempt(this.#url(node, key), "GET", undefined, 3000, this.#client);
      if (r.kind === "answer" && (r.status === 200 || r.status === 404)) {
        const v = r.status === 404 ? null : (r.json as { v: string }).v;
        this.history.push({ client, kind: "get", key, value: v, call, return: performance.now() });
      } else {
        node++;
      }
      await new Promise((res) => setTimeout(res, 5));
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#loops);
    this.#client.close();
  }
}

Deno.test("members are added, removed (the leader too) and replaced under load; no acknowledged write is lost", async () => {
  const started = performance.now();
  await using cluster = await startCluster({ size: 3 });
  let leader = await cluster.waitForLeader();
  const load = new Load(cluster, ["node-1", "node-2", "node-3"]);
  const someMember = () => load.targets[0]!;
  try {
    await waitFor(() => load.acked >= 20, { message: "writes to flow" });

    // Clear refusals: an id or an address in use, an unknown member.
    const taken = await attempt(`${cluster.api("node-1")}/v1/members`, "POST", {
      node_id: "node-2",
      rpc_url: "http://127.0.0.1:1",
      api_url: "http://127.0.0.1:2",
    }, 5000);
    assert.ok(taken.kind === "answer" && taken.status === 409, JSON.stringify(taken));
    assert.equal((taken.json as { code: string }).code, "exists");
    const sameAddress = await attempt(`${cluster.api("node-2")}/v1/members`, "POST", {
      node_id: "node-9",
      rpc_url: cluster.rpc("node-3"),
      api_url: "http://127.0.0.1:2",
    }, 5000);
    assert.ok(sameAddress.kind === "answer" && sameAddress.status === 409);
    const unknown = await attempt(
      `${cluster.api("node-3")}/v1/members/node-9`,
      "DELETE",
      undefined,
      5000,
    );
    assert.ok(unknown.kind === "answer" && unknown.status === 404, JSON.stringify(unknown));
    const listed = await cli(["members", "list", "--endpoints", cluster.api("node-1")]);
    assert.equal(listed.code, 0, listed.err);
    assert.match(listed.out, /^ID\s+ROLE\s+RPC URL\s+API URL\nnode-1\s+voter\s+http/);

    // Grow: node-4 and node-5 join as learners and are promoted to voters.
    for (const id of ["node-4", "node-5"]) {
      await joinAsVoter(cluster, id, someMember);
      load.targets = [...load.targets, id];
    }
    assert.equal((await members(cluster, "node-4"))!.length, 5);

    // Shrink: remove a follower, then the leader (it steps down once the change commits).
    leader = await cluster.waitForLeader();
    const follower = load.targets.find((id) => id !== leader)!;
    load.targets = load.targets.filter((id) => id !== follower);
    await change(cluster, someMember, "DELETE", `/v1/members/${follower}`);
    await cluster.stop(follower);
    load.targets = load.targets.filter((id) => id !== leader);
    // Asked of the leader itself first; if it loses its leadership meanwhile (a loaded machine),
    // the retries go to another member.
    let asked = 0;
    await change(
      cluster,
      () => asked++ === 0 ? leader : someMember(),
      "DELETE",
      `/v1/members/${leader}`,
    );
    const oldLeader = leader;
    await waitFor(async () => {
      const s = await cluster.status(someMember());
      return s !== null && s.leader !== null && s.leader.id !== oldLeader;
    }, { deadlineMs: 10_000, message: "a new leader after the old one removed itself" });
    await waitFor(
      async () => (await cluster.status(oldLeader))?.membership === "removed",
      { deadlineMs: 10_000, message: `${oldLeader} to say it was removed` },
    );
    assert.match(cluster.logs(oldLeader).join("\n"), /was removed from the cluster/);
    await cluster.stop(oldLeader);
    await waitMembers(cluster, someMember, (rows) => rows.length === 3, "three members left");

    // Replace: a follower's disk is wiped; it is removed and a new node takes its place.
    leader = await cluster.waitForLeader();
    const wiped = load.targets.find((id) => id !== leader)!;
    load.targets = load.targets.filter((id) => id !== wiped);
    await cluster.kill(wiped);
    await Deno.remove(cluster.node(wiped).dataDir, { recursive: true });
    await change(cluster, someMember, "DELETE", `/v1/members/${wiped}`);
    await cluster.addNode("node-6");
    await cluster.start("node-6", { flags: ["--join", cluster.api(someMember())] });
    await waitMembers(
      cluster,
      someMember,
      (rows) => rows.length === 3 && rows.some((m) => m.node_id === "node-6" && m.role === "voter"),
      "node-6 to replace the wiped node as a voter",
    );
    load.targets = [...load.targets, "node-6"];
    const json = await cli(["members", "list", "-o", "json", "--endpoints", cluster.api("node-6")]);
    assert.equal(json.code, 0, json.err);
    assert.deepEqual(
      (JSON.parse(json.out) as { members: MemberRow[] }).members.map((m) => m.node_id).sort(),
      [...load.targets].sort(),
    );
    const before = load.acked;
    await waitFor(() => load.acked >= before + 20, { message: "writes to flow after the changes" });
  } catch (e) {
    console.error(cluster.formatLogs());
    throw e;
  } finally {
    await load.stop();
  }

  // Nothing acknowledged was lost, and the history is linearizable.
  leader = await cluster.waitForLeader();
  for (let w = 0; w < WRITERS; w++) {
    const r = await attempt(`${cluster.api(leader)}/v1/data/k${w}`, "GET", undefined, 5000);
    assert.ok(r.kind === "answer" && r.status === 200, `read k${w}`);
    const v = Number((r.json as { v: string }).v);
    assert.ok(v >= load.lastAcked[w]!, `k${w}: ${v} < last acknowledged ${load.lastAcked[w]}`);
  }
  const result = checkLinearizability(load.history, { timeoutMs: 20_000 });
  assert.equal(result.ok, true, JSON.stringify(result).slice(0, 2000));
  console.log(
    `membership changes under load: ${load.acked} acknowledged writes, ${load.history.length} ` +
      `operations, linearizable; ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
});

/**
 * The command that starts node `id` by hand on its own data directory with a cluster file that
 * lists only itself (an operator's mistake), with `options` for its output.
 */
async function _onSoloFile(
  cluster: ProcessCluster,
  id: string,
  options: Deno.CommandOptions,
): Promise<Deno.Command> {
  const all = JSON.parse(await Deno.readTextFile(cluster.configPath)) as { node_id: string }[];
  const solo = join(cluster.dataRoot, "solo.json");
  await Deno.writeTextFile(solo, JSON.stringify(all.filter((m) => m.node_id === id)));
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      fileURLToPath(new URL("../main.ts", import.meta.url)),
      "--id",
      id,
      "--cluster-config-path",
      solo,
      "--data-dir",
      cluster.node(id).dataDir,
      ...DEFAULT_NODE_FLAGS,
      "--cluster-token",
      cluster.clusterToken,
    ],
    env: cleanEnv(),
    clearEnv: true,
    stdin: "null",
    ...options,
  });
}

Deno.test("a node restarted with a cluster file that lists only itself keeps its cluster's members: it neither leads alone nor acknowledges a write", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  const edited = cluster.ids.find((id) => id !== leader)!;
  await cluster.stop(edited);
  const put = await attempt(`${cluster.api(leader)}/v1/data/acked`, "PUT", { v: "1" }, 5000);
  assert.ok(put.kind === "answer" && put.status === 200, JSON.stringify(put));
  // The operator's mistake: the same data directory, a cluster file of this node alone.
  const proc = (await _onSoloFile(cluster, edited, { stdout: "null", stderr: "piped" })).spawn();
  const log = { text: "" };
  const reading = (async () => {
    for await (const chunk of proc.stderr.pipeThrough(new TextDecoderStream())) log.text += chunk;
  })();
  try {
    await waitFor(
      () => /the cluster file lists .*, but the cluster was started with/.test(log.text),
      {
        deadlineMs: 20_000,
        message: () => `the warning that the file's members are not used\n${log.text}`,
      },
    );
    await waitFor(async () => {
      const r = await attempt(`${cluster.api(edited)}/v1/status`, "GET", undefined, 2000);
      return r.kind === "answer";
    }, { deadlineMs: 20_000, intervalMs: 50, message: `${edited}'s API to answer` });
    // It must not lead (with the file's one voter it led within an election timeout), and a
    // write through it must not be acknowledged within 3 s (three election timeouts).
    const write = await attempt(`${cluster.api(edited)}/v1/data/split`, "PUT", { v: "x" }, 3000);
    assert.ok(write.kind === "answer" && write.status !== 200, JSON.stringify(write));
    const status = await attempt(`${cluster.api(edited)}/v1/status`, "GET", undefined, 2000);
    assert.ok(status.kind === "answer", JSON.stringify(status));
    assert.notEqual((status.json as { role: string }).role, "leader");
  } finally {
    proc.kill("SIGKILL");
    await proc.status;
    await reading.catch(() => {});
  }
  // Started again with the right file, it catches up; the write it was sent never happened.
  await cluster.start(edited);
  await waitFor(async () => {
    const r = await attempt(
      `${cluster.api(edited)}/v1/data/acked?consistency=stale`,
      "GET",
      undefined,
      2000,
    );
    return r.kind === "answer" && r.status === 200;
  }, { deadlineMs: 20_000, intervalMs: 100, message: `${edited} to catch up` });
  for (const id of cluster.ids) {
    const r = await attempt(`${cluster.api(id)}/v1/data/split`, "GET", undefined, 5000);
    assert.ok(r.kind === "answer" && r.status === 404, `${id}: ${JSON.stringify(r)}`);
  }
});

Deno.test("a node whose files predate the record of its cluster's voters refuses to start on a cluster file that lists only itself, and records the voters with the right file", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  const edited = cluster.ids.find((id) => id !== leader)!;
  const put = await attempt(`${cluster.api(leader)}/v1/data/k`, "PUT", { v: "1" }, 5000);
  assert.ok(put.kind === "answer" && put.status === 200, JSON.stringify(put));
  assert.equal(await cluster.stop(edited), 0);
  // As an earlier version left the hard state: the cluster's id, no initial voters.
  const statePath = join(cluster.node(edited).dataDir, "raft-state.json");
  const { initialVoters, ...legacy } = await loadHardState(statePath);
  assert.equal(initialVoters?.length, 3);
  await saveHardState(statePath, legacy);
  const out = await (await _onSoloFile(cluster, edited, { signal: AbortSignal.timeout(30_000) }))
    .output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 1, stderr);
  assert.match(stderr, /the cluster file's members \(or --cluster-token\) are not those/);
  // With the file the cluster started with, it starts, records the voters, and catches up.
  await cluster.start(edited);
  await waitFor(async () => {
    const r = await attempt(
      `${cluster.api(edited)}/v1/data/k?consistency=stale`,
      "GET",
      undefined,
      2000,
    );
    return r.kind === "answer" && r.status === 200;
  }, { deadlineMs: 20_000, intervalMs: 100, message: `${edited} to catch up` });
  assert.equal(await cluster.stop(edited), 0);
  assert.equal((await loadHardState(statePath)).initialVoters?.length, 3);
});

Deno.test("a removed node refuses reads, writes and watches at once with 503 removed, and is not ready", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  const gone = ["node-1", "node-2", "node-3"].find((id) => id !== leader)!;
  const put = await attempt(`${cluster.api(leader)}/v1/data/k`, "PUT", { v: "1" }, 5000);
  assert.ok(put.kind === "answer" && put.status === 200, JSON.stringify(put));
  await change(cluster, () => leader, "DELETE", `/v1/members/${gone}`);
  await waitFor(async () => {
    const r = await attempt(`${cluster.api(gone)}/v1/status`, "GET", undefined, 2000);
    return r.kind === "answer" && (r.json as { membership?: string }).membership === "removed";
  }, { deadlineMs: 10_000, intervalMs: 50, message: `${gone} to know it was removed` });

  // Each is refused well within the default API timeout, where it used to wait until then.
  const api = cluster.api(gone);
  const requests: [string, string, unknown][] = [
    ["/v1/data/k", "GET", undefined],
    ["/v1/data/k?consistency=lease", "GET", undefined],
    ["/v1/data/k?consistency=stale", "GET", undefined],
    ["/v1/data?prefix=", "GET", undefined],
    ["/v1/data/k", "PUT", { v: "2" }],
    ["/v1/data/k", "DELETE", undefined],
    ["/v1/txn", "POST", { compare: [], success: [{ op: "get", k: "k" }], failure: [] }],
    ["/v1/watch?prefix=", "GET", undefined],
  ];
  for (const [path, method, body] of requests) {
    const started = performance.now();
    const r = await attempt(`${api}${path}`, method, body, 1500);
    const what = `${method} ${path}: ${JSON.stringify(r)}`;
    assert.ok(r.kind === "answer" && r.status === 503, what);
    const json = r.json as { error: string; code: string; node_id: string };
    assert.equal(json.code, "removed", what);
    assert.equal(json.node_id, gone, what);
    assert.match(json.error, /has been removed from the cluster/, what);
    assert.equal(r.headers.get("retry-after"), null, what);
    assert.ok(performance.now() - started < 1000, `${what} took ${performance.now() - started} ms`);
  }
  const ready = await attempt(`${api}/ready`, "GET", undefined, 1500);
  assert.ok(ready.kind === "answer" && ready.status === 503, JSON.stringify(ready));
  assert.equal((ready.json as { code: string }).code, "removed");

  // The members that remain serve on.
  const other = ["node-1", "node-2", "node-3"].find((id) => id !== leader && id !== gone)!;
  const read = await attempt(`${cluster.api(other)}/v1/data/k`, "GET", undefined, 5000);
  assert.ok(read.kind === "answer" && read.status === 200, JSON.stringify(read));
});

Deno.test("a member removed while it was down learns it from its peers on restart (410 removed); a joining node is not refused", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  const gone = ["node-1", "node-2", "node-3"].find((id) => id !== leader)!;
  const other = ["node-1", "node-2", "node-3"].find((id) => id !== leader && id !== gone)!;
  const put = await attempt(`${cluster.api(leader)}/v1/data/k`, "PUT", { v: "1" }, 5000);
  assert.ok(put.kind === "answer" && put.status === 200, JSON.stringify(put));

  // The member is down while its removal commits: its log never gets the removal.
  assert.equal(await cluster.stop(gone), 0);
  await change(cluster, () => leader, "DELETE", `/v1/members/${gone}`);
  await waitMembers(cluster, () => other, (rows) => rows.length === 2, `${gone} to be removed`);

  // Restarted, it still counts itself a voter and campaigns; the peers answer 410 removed, and
  // it learns it was removed.
  await cluster.start(gone);
  await waitFor(async () => {
    const s = await cluster.status(gone);
    return (s as { membership?: string } | null)?.membership === "removed";
  }, { deadlineMs: 15_000, intervalMs: 50, message: `${gone} to learn it was removed` });
  const read = await attempt(`${cluster.api(gone)}/v1/data/k`, "GET", undefined, 1500);
  assert.ok(read.kind === "answer" && read.status === 503, JSON.stringify(read));
  assert.equal((read.json as { code: string }).code, "removed");
  const write = await attempt(`${cluster.api(gone)}/v1/data/k`, "PUT", { v: "x" }, 1500);
  assert.ok(write.kind === "answer" && write.status === 503, JSON.stringify(write));
  assert.equal((write.json as { code: string }).code, "removed");
  const ready = await attempt(`${cluster.api(gone)}/ready`, "GET", undefined, 1500);
  assert.ok(ready.kind === "answer" && ready.status === 503, JSON.stringify(ready));
  assert.equal((ready.json as { code: string }).code, "removed");
  assert.ok(
    cluster.logs(gone).some((l) => l.includes("was removed from the cluster while it was away")),
    cluster.formatLogs([gone]),
  );
  // The peers counted the answers (the restarted node asked both for votes, or at least one).
  let answered = 0;
  for (const id of [leader, other]) {
    const metrics = await attempt(`${cluster.api(id)}/metrics`, "GET", undefined, 2000);
    assert.ok(metrics.kind === "answer" && metrics.status === 200, JSON.stringify(metrics));
    answered += Number(/^raftkv_removed_peer_answers_total (\d+)/m.exec(metrics.text)?.[1] ?? 0);
  }
  assert.ok(answered > 0, `no peer counted a removed answer`);

  // The cluster that remains is unaffected: it still has its leader, and takes writes and reads.
  for (const id of [leader, other]) {
    const s = await cluster.status(id);
    assert.equal(s?.leader?.id, leader, `${id}: ${JSON.stringify(s)}\n${cluster.formatLogs()}`);
  }
  const put2 = await attempt(`${cluster.api(other)}/v1/data/k`, "PUT", { v: "2" }, 5000);
  assert.ok(put2.kind === "answer" && put2.status === 200, JSON.stringify(put2));
  const read2 = await attempt(`${cluster.api(leader)}/v1/data/k`, "GET", undefined, 5000);
  assert.ok(read2.kind === "answer" && read2.status === 200, JSON.stringify(read2));
  assert.equal((read2.json as { v: string }).v, "2");

  // A node added now joins and is promoted; nobody tells it it was removed.
  await joinAsVoter(cluster, "node-4", () => leader);
  await waitFor(async () => {
    const r = await attempt(`${cluster.api("node-4")}/v1/data/k`, "GET", undefined, 2000);
    return r.kind === "answer" && r.status === 200 && (r.json as { v: string }).v === "2";
  }, { deadlineMs: 10_000, intervalMs: 50, message: "node-4 to serve the read" });
  const ready4 = await attempt(`${cluster.api("node-4")}/ready`, "GET", undefined, 1500);
  assert.ok(ready4.kind === "answer" && ready4.status === 200, JSON.stringify(ready4));
  const status4 = await cluster.status("node-4") as { membership?: string } | null;
  assert.equal(status4?.membership, "voter");
  assert.ok(
    !cluster.logs("node-4").some((l) => l.includes("was removed from the cluster")),
    cluster.formatLogs(["node-4"]),
  );
});

Deno.test("a node joining through a leader whose newest snapshot predates both their additions gets a newer snapshot and becomes a voter", async () => {
  // A snapshot every 20 entries, keeping 20 before it: a node joining after 45 writes gets the
  // leader's snapshot (its configuration: node-1 to node-3), and then applies too few entries of
  // its own to take a newer one before it leads.
  await using cluster = await startCluster({ size: 3, nodeFlags: ["--snapshot-threshold", "20"] });
  const leader = await cluster.waitForLeader();
  for (let i = 0; i < 45; i++) {
    const r = await attempt(`${cluster.api(leader)}/v1/data/k${i}`, "PUT", { v: `${i}` }, 5000);
    assert.ok(r.kind === "answer" && r.status === 200, JSON.stringify(r));
  }
  await joinAsVoter(cluster, "node-4", () => leader);
  assert.ok(
    cluster.logs("node-4").some((l) => l.includes("installing snapshot")),
    `node-4 did not start from a snapshot\n${cluster.formatLogs(["node-4"])}`,
  );
  await handLead(cluster, leader, "node-4");

  // node-4's newest snapshot leaves out node-4 and node-5: it must not be what node-5 installs.
  await joinAsVoter(cluster, "node-5", () => "node-4");
  await waitFor(async () => {
    const r = await attempt(`${cluster.api("node-5")}/v1/data/k44`, "GET", undefined, 2000);
    return r.kind === "answer" && r.status === 200 && (r.json as { v: string }).v === "44";
  }, { deadlineMs: 10_000, intervalMs: 50, message: "node-5 to serve a linearizable read" });
  const status5 = await cluster.status("node-5") as { membership?: string } | null;
  assert.equal(status5?.membership, "voter");
  assert.ok(
    !cluster.logs("node-5").some((l) => l.includes("was removed from the cluster")),
    cluster.formatLogs(["node-5"]),
  );
  assert.ok(
    cluster.logs("node-4").some((l) => l.includes("not sending the snapshot at index")),
    `node-4 never refused its old snapshot\n${cluster.formatLogs(["node-4"])}`,
  );
});

Deno.test("a node that joined a cluster restored from a backup reaches its members after a kill -9 and restart", async () => {
  // The restored members' configuration has no addresses (their cluster file gives them); the
  // joiner's cluster file lists only itself, so it knows the others' addresses only from the
  // snapshot the leader sent it, which must record them.
  await using cluster = await startCluster({ size: 3 });
  const ids = ["node-1", "node-2", "node-3"];
  let leader = await cluster.waitForLeader();
  for (let i = 0; i < 5; i++) {
    const r = await attempt(`${cluster.api(leader)}/v1/data/k${i}`, "PUT", { v: `${i}` }, 5000);
    assert.ok(r.kind === "answer" && r.status === 200, JSON.stringify(r));
  }
  const backup = join(cluster.dataRoot, "backup.snap");
  const res = await fetch(`${cluster.api(leader)}/v1/snapshot`);
  assert.equal(res.status, 200);
  await Deno.writeFile(backup, new Uint8Array(await res.arrayBuffer()));
  for (const id of ids) assert.equal(await cluster.stop(id), 0);
  for (const id of ids) {
    await Deno.remove(cluster.node(id).dataDir, { recursive: true });
    await Deno.mkdir(cluster.node(id).dataDir);
  }
  for (const id of ids) {
    await cluster.start(id, { flags: ["--restore-from", backup, "--cluster-token", "restored"] });
  }
  leader = await cluster.waitForLeader();

  await joinAsVoter(cluster, "node-4", () => leader);
  await cluster.kill("node-4");
  const after = await attempt(`${cluster.api(leader)}/v1/data/after`, "PUT", { v: "x" }, 5000);
  assert.ok(after.kind === "answer" && after.status === 200, JSON.stringify(after));
  await cluster.start("node-4");
  // A linearizable read on node-4 is forwarded to the leader, and node-4 must have applied the
  // write: both need the members' addresses.
  await waitFor(async () => {
    const r = await attempt(`${cluster.api("node-4")}/v1/data/after`, "GET", undefined, 2000);
    return r.kind === "answer" && r.status === 200 && (r.json as { v: string }).v === "x";
  }, {
    deadlineMs: 15_000,
    intervalMs: 100,
    message: () => `node-4 to read the write after its restart\n${cluster.formatLogs(["node-4"])}`,
  });
  const members = await attempt(`${cluster.api("node-4")}/v1/members`, "GET", undefined, 2000);
  assert.ok(members.kind === "answer" && members.status === 200, JSON.stringify(members));
  for (const m of (members.json as { members: { node_id: string; rpc_url: string }[] }).members) {
    assert.equal(m.rpc_url, cluster.rpc(m.node_id), `node-4's address for ${m.node_id}`);
  }
  assert.ok(
    !cluster.logs("node-4").some((l) => l.includes("no address for member")),
    cluster.formatLogs(["node-4"]),
  );
});

Deno.test("a node added that went down with a term but no data yet asks to join again, and learns its members from the answer", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  // node-4 is added while it is not running; its data directory holds only a hard state (as
  // when it went down after it heard the leader's term, before its first snapshot arrived).
  await cluster.addNode("node-4");
  await change(cluster, () => leader, "POST", "/v1/members", {
    node_id: "node-4",
    rpc_url: cluster.rpc("node-4"),
    api_url: cluster.api("node-4"),
  });
  const term = (await cluster.status(leader))!.term;
  const hardStatePath = join(cluster.node("node-4").dataDir, "raft-state.json");
  await saveHardState(hardStatePath, { nodeId: "node-4", term, vote: "", commit: 0 });
  const w = await attempt(`${cluster.api(leader)}/v1/data/later`, "PUT", { v: "1" }, 5000);
  assert.ok(w.kind === "answer" && w.status === 200, JSON.stringify(w));
  // Its cluster file lists only itself: the members' addresses come from the join's answer.
  await cluster.start("node-4", { flags: ["--join", cluster.api(leader)] });
  await waitFor(async () => {
    const r = await attempt(`${cluster.api("node-4")}/v1/data/later`, "GET", undefined, 2000);
    return r.kind === "answer" && r.status === 200;
  }, {
    deadlineMs: 15_000,
    intervalMs: 100,
    message: () => `node-4 to serve a linearizable read\n${cluster.formatLogs(["node-4"])}`,
  });
  assert.ok(
    cluster.logs("node-4").some((l) => l.includes("already a member of the cluster")),
    cluster.formatLogs(["node-4"]),
  );
});

Deno.test("a member that was down while a new node joined and took the lead catches up while that node leads", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  const away = ["node-1", "node-2", "node-3"].find((id) => id !== leader)!;
  const put0 = await attempt(`${cluster.api(leader)}/v1/data/k`, "PUT", { v: "0" }, 5000);
  assert.ok(put0.kind === "answer" && put0.status === 200, JSON.stringify(put0));

  // Away while node-4 joins and takes the lead: its configuration never lists node-4.
  assert.equal(await cluster.stop(away), 0);
  await joinAsVoter(cluster, "node-4", () => leader);
  await handLead(cluster, leader, "node-4");
  const term = (await cluster.status("node-4"))!.term;
  for (let i = 1; i <= 5; i++) {
    const r = await attempt(`${cluster.api("node-4")}/v1/data/k`, "PUT", { v: `${i}` }, 5000);
    assert.ok(r.kind === "answer" && r.status === 200, JSON.stringify(r));
  }

  // Back, it refuses node-4 as a non-member at first, asks its peers for their committed
  // configuration, hears node-4 on their word and applies what was written while it was away.
  await cluster.start(away);
  try {
    await waitApplied(cluster, away, "k", "5", {
      deadlineMs: 10_000,
      message: `${away} to apply the writes`,
    });
    const back = await cluster.status(away);
    assert.equal(back?.leader?.id, "node-4", JSON.stringify(back));
    const now = await cluster.status("node-4");
    assert.equal(now?.leader?.id, "node-4", JSON.stringify(now));
    assert.equal(now?.term, term, "leadership moved: the test no longer shows the catch-up");
    assert.ok(
      cluster.logs(away).some((l) => l.includes("lists members this node does not know")),
      cluster.formatLogs([away]),
    );
  } catch (e) {
    console.error(cluster.formatLogs());
    throw e;
  }
});

Deno.test("a learner removed while it was down learns it on restart, and after another restart refuses clients at once", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  const [copied, other] = ["node-1", "node-2", "node-3"].filter((id) => id !== leader) as [
    string,
    string,
  ];
  const member = () => cluster.liveIds().find((id) => id !== "node-4")!;
  try {
    // node-4 is added as a learner while it is not running (the leader cannot reach it, so it is
    // never promoted). It gets a member's data directory holding that addition: a learner that
    // had replicated the log up to there and then went down. The hard state is made node-4's (a
    // node refuses another's), with the term and no vote: a learner never votes.
    await cluster.addNode("node-4");
    await change(cluster, () => leader, "POST", "/v1/members", {
      node_id: "node-4",
      rpc_url: cluster.rpc("node-4"),
      api_url: cluster.api("node-4"),
    });
    await waitFor(async () => {
      const s = await cluster.status(copied);
      return s !== null && s.commit_index === (await cluster.status(leader))?.commit_index;
    }, { deadlineMs: 10_000, message: `${copied} to hold the addition` });
    assert.equal(await cluster.stop(copied), 0);
    await Deno.remove(cluster.node("node-4").dataDir, { recursive: true });
    await _copyDir(cluster.node(copied).dataDir, cluster.node("node-4").dataDir);
    const hardStatePath = join(cluster.node("node-4").dataDir, "raft-state.json");
    const { nodeId, term, commit } = await loadHardState(hardStatePath);
    assert.equal(nodeId, copied);
    await saveHardState(hardStatePath, { nodeId: "node-4", term, vote: "", commit });
    await cluster.start(copied);

    // Removed while it is down: nobody sends it anything afterwards.
    await change(cluster, member, "DELETE", "/v1/members/node-4");
    await waitMembers(cluster, member, (rows) => rows.length === 3, "node-4 to be removed");

    // Started, it counts itself a learner and sends nothing on its own (it never campaigns);
    // having heard from no leader for an election timeout, it asks its peers for their
    // committed configuration and learns it was removed.
    await cluster.start("node-4");
    await waitFor(async () => (await cluster.status("node-4"))?.membership === "removed", {
      deadlineMs: 10_000,
      intervalMs: 50,
      message: "node-4 to learn it was removed",
    });
    assert.ok(
      cluster.logs("node-4").some((l) => l.includes("learners [node-4]")),
      `node-4 did not start as a learner\n${cluster.formatLogs(["node-4"])}`,
    );
    for (const path of ["/v1/data/k", "/ready"]) {
      const r = await attempt(`${cluster.api("node-4")}${path}`, "GET", undefined, 1500);
      assert.ok(r.kind === "answer" && r.status === 503, `${path}: ${JSON.stringify(r)}`);
      assert.equal((r.json as { code: string }).code, "removed");
    }

    // With every peer down, a restart refuses clients at once: the mark was kept on disk.
    assert.equal(await cluster.stop("node-4"), 0);
    for (const id of [leader, copied, other]) assert.equal(await cluster.stop(id), 0);
    await cluster.start("node-4");
    const status = await cluster.status("node-4");
    assert.equal((status as { membership?: string } | null)?.membership, "removed");
    const put = await attempt(`${cluster.api("node-4")}/v1/data/k`, "PUT", { v: "x" }, 1500);
    assert.ok(put.kind === "answer" && put.status === 503, JSON.stringify(put));
    assert.equal((put.json as { code: string }).code, "removed");
    const ready = await attempt(`${cluster.api("node-4")}/ready`, "GET", undefined, 1500);
    assert.ok(ready.kind === "answer" && ready.status === 503, JSON.stringify(ready));
    assert.ok(
      cluster.logs("node-4").some((l) => l.includes("learned before it restarted")),
      cluster.formatLogs(["node-4"]),
    );
  } catch (e) {
    console.error(cluster.formatLogs());
    throw e;
  }
});

/** Copies a directory tree (a stopped node's data directory). */
async function _copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await _copyDir(join(from, e.name), join(to, e.name));
    else if (e.isFile) await Deno.copyFile(join(from, e.name), join(to, e.name));
  }
}
