/**
 * Leases against real 3-node clusters: granted, attached, kept alive, revoked and expired through
 * the REST API and the command-line client, with real processes killed. The bound checked is the
 * README's: a key outlives its lease by at most the time it takes the leader to notice (a tick)
 * and commit the expiry, and, after a leader change, by max(TTL, election timeout) plus the time
 * the election took.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { PERMISSION_FLAGS } from "../main.ts";
import {
  cleanEnv,
  httpRequest,
  type HttpResult,
  runCommand,
  startCluster,
  waitFor,
} from "../testing/harness.ts";
import { readLines } from "../testing/read_lines.ts";
import { Watcher } from "../testing/watcher.ts";

const _MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
/** The harness's election timeout (see DEFAULT_NODE_FLAGS). */
const ELECTION_MS = 300;
/** Slack for a loaded machine: scheduling, a tick, a commit round. */
const SLACK_MS = 1500;

/** Runs `raftkv <args>` as a process of its own; its exit code and output. */
async function raftkv(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const argv = ["run", "--no-prompt", ...PERMISSION_FLAGS, _MAIN, ...args];
  const { code, stdout, stderr } = await runCommand(Deno.execPath(), argv, cleanEnv(), Deno.cwd());
  return { code, out: stdout.trim(), err: stderr.trim() };
}

/** Whether `key` exists, read linearizably through `api` (null: no answer). */
async function exists(api: string, key: string): Promise<boolean | null> {
  try {
    const r = await httpRequest(`${api}/v1/data/${encodeURIComponent(key)}`, "GET", undefined, {
      timeoutMs: 2000,
    });
    if (r.status === 200) return true;
    if (r.status === 404) return false;
    return null;
  } catch {
    return null;
  }
}

/**
 * A request that is tried again while it is answered 503 (no leader, or the leader changed while
 * it was forwarded: nothing was done), as a client would: the nodes elect with a 300 ms timeout
 * on a busy machine, so leader changes happen.
 */
async function call(url: string, method: string, body?: unknown): Promise<HttpResult> {
  let r = await httpRequest(url, method, body);
  for (let i = 0; i < 40 && r.status === 503; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    r = await httpRequest(url, method, body);
  }
  return r;
}

/** Polls `key` through `apis` (the first that answers) until `stop()`; returns when it was gone. */
async function watchPresence(
  apis: () => string[],
  key: string,
  stop: () => boolean,
): Promise<number[]> {
  const gone: number[] = [];
  while (!stop()) {
    for (const api of apis()) {
      const e = await exists(api, key);
      if (e === null) continue;
      if (!e) gone.push(performance.now());
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return gone;
}

Deno.test("leases through the API: attach, keep alive, revoke at once, expire on their own", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader(15_000);
  const follower = cluster.ids.find((id) => id !== leader)!;
  const api = cluster.api(follower);
  // A watcher of every key, on the other follower: it sees each lease's keys go as `expire`.
  const other = cluster.ids.find((i) => i !== leader && i !== follower)!;
  await using watcher = new Watcher({ filter: "prefix=", urls: () => [cluster.api(other)] });
  await watcher.connected;

  // Granted through a follower (forwarded to the leader).
  const TTL = 1500;
  const grant = await call(`${api}/v1/leases`, "POST", { ttl: `${TTL}ms` });
  assert.equal(grant.status, 201, grant.text);
  const { id, ttl, ttl_ms } = grant.json as { id: number; ttl: string; ttl_ms: number };
  assert.equal(ttl, "1500ms");
  assert.equal(ttl_ms, TTL);
  assert.ok(Number.isSafeInteger(id) && id > 0);

  const put = await call(`${api}/v1/data/svc%2Fa?lease=${id}`, "PUT", { v: "up" });
  assert.equal(put.status, 200, put.text);
  assert.equal((put.json as { lease: number }).lease, id);
  const unknown = await call(`${api}/v1/data/svc%2Fb?lease=999999`, "PUT", { v: "x" });
  assert.equal(unknown.status, 404, unknown.text);
  assert.match((unknown.json as { error: string }).error, /lease 999999 not found/);
  assert.equal(await exists(api, "svc/b"), false);
  const bad = await call(`${api}/v1/leases`, "POST", { ttl: "soon" });
  assert.equal(bad.status, 400, bad.text);

  const shown = await call(`${api}/v1/leases/${id}`, "GET");
  assert.equal(shown.status, 200, shown.text);
  assert.deepEqual((shown.json as { keys: string[] }).keys, ["svc/a"]);
  assert.ok((shown.json as { remaining_ms: number }).remaining_ms <= TTL);

  // The ttl shorthand: a lease of its own, left to expire.
  const tmpAt = performance.now();
  const tmp = await call(`${api}/v1/data/tmp?ttl=1s`, "PUT", { v: "soon gone" });
  assert.equal(tmp.status, 200, tmp.text);
  const tmpLease = (tmp.json as { lease: number }).lease;
  assert.ok(tmpLease > id);

  // Kept alive (through the follower) for three TTLs: never gone meanwhile.
  const until = performance.now() + 3 * TTL;
  const presence = watchPresence(() => [api], "svc/a", () => performance.now() > until);
  while (performance.now() < until) {
    const k = await call(`${api}/v1/leases/${id}/keepalive`, "POST");
    assert.equal(k.status, 200, k.text);
    assert.equal((k.json as { id: number }).id, id);
    await new Promise((r) => setTimeout(r, TTL / 4));
  }
  assert.deepEqual(await presence, [], "svc/a was gone while its lease was kept alive");

  // The abandoned one expired, not before its TTL, within the bound.
  await waitFor(async () => (await exists(api, "tmp")) === false, {
    deadlineMs: 1000 + SLACK_MS,
    message: "the key of an abandoned lease did not expire",
  });
  assert.ok(performance.now() - tmpAt >= 1000);
  const gone = await call(`${api}/v1/leases/${tmpLease}/keepalive`, "POST");
  assert.equal(gone.status, 404, gone.text);

  // Revoke: the keys are gone at once (the next linearizable read), on every node at once.
  const revoke = await call(`${api}/v1/leases/${id}`, "DELETE");
  assert.equal(revoke.status, 200, revoke.text);
  assert.deepEqual((revoke.json as { deleted: string[] }).deleted, ["svc/a"]);
  assert.equal(await exists(cluster.api(leader), "svc/a"), false);
  // The watcher saw the expired key and the revoked one go as `expire` changes, after their puts.
  const revokeIndex = (revoke.json as { index: number }).index;
  await waitFor(() => watcher.events.some((e) => e.k === "svc/a" && e.type !== "put"), {
    deadlineMs: 5000,
    message: "the watcher did not see svc/a go",
  });
  const ends = watcher.events.filter((e) => e.type !== "put").map((e) => `${e.type} ${e.k}`);
  assert.deepEqual(ends, ["expire tmp", "expire svc/a"]);
  const svcEnd = watcher.events.find((e) => e.k === "svc/a" && e.type === "expire")!;
  assert.equal(svcEnd.index, revokeIndex);
  const again = await call(`${api}/v1/leases/${id}`, "DELETE");
  assert.equal(again.status, 404, again.text);
  const list = await call(`${api}/v1/leases`, "GET");
  assert.equal(list.status, 200, list.text);
  assert.deepEqual((list.json as { leases: unknown[] }).leases, []);

  // The same through the command-line client.
  const ep = ["--endpoints", cluster.ids.map((i) => cluster.api(i)).join(",")];
  const granted = await raftkv(["lease", "grant", "30s", ...ep]);
  assert.equal(granted.code, 0, granted.err);
  const cliLease = Number(granted.out);
  assert.ok(cliLease > 0, granted.out);
  const [attached, missing, help] = await Promise.all([
    raftkv(["put", "svc/cli", "up", "--lease", String(cliLease), ...ep]),
    raftkv(["put", "svc/none", "x", "--lease", "999999", ...ep]),
    raftkv(["lease", "keepalive", "--help"]),
  ]);
  assert.equal(attached.code, 0, attached.err);
  assert.match(attached.out, new RegExp(`lease ${cliLease}\\)`));
  assert.equal(missing.code, 3, missing.err);
  assert.equal(help.code, 0, help.err);
  assert.match(help.out, /Usage: raftkv lease keepalive/);
  const [once, listed] = await Promise.all([
    raftkv(["lease", "keepalive", String(cliLease), "--once", ...ep]),
    raftkv(["lease", "list", ...ep]),
  ]);
  assert.equal(once.code, 0, once.err);
  assert.match(listed.out, new RegExp(`lease ${cliLease}: ttl 30s, .*1 key: svc/cli`));
  const revoked = await raftkv(["lease", "revoke", String(cliLease), ...ep, "-o", "json"]);
  assert.equal(revoked.code, 0, revoked.err);
  assert.deepEqual(JSON.parse(revoked.out).deleted, ["svc/cli"]);
  assert.equal(await exists(api, "svc/cli"), false);
  const ended = await raftkv(["lease", "keepalive", String(cliLease), ...ep]);
  assert.equal(ended.code, 3, ended.err);
});

Deno.test("a killed keep-alive process lets its keys expire within TTL + bound; a leader kill expires nothing early", async () => {
  await using cluster = await startCluster({ size: 3 });
  const firstLeader = await cluster.waitForLeader(15_000);
  const apis = () => cluster.liveIds().map((id) => cluster.api(id));
  const TTL = 2000;

  const grant = await call(`${apis()[0]}/v1/leases`, "POST", { ttl: "2s" });
  assert.equal(grant.status, 201, grant.text);
  const id = (grant.json as { id: number }).id;
  const put = await call(`${apis()[0]}/v1/data/owner?lease=${id}`, "PUT", { v: "me" });
  assert.equal(put.status, 200, put.text);

  // The holder: `raftkv lease keepalive ID`, a process of its own.
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...PERMISSION_FLAGS,
      _MAIN,
      "lease",
      "keepalive",
      String(id),
      "--endpoints",
      cluster.ids.map((i) => cluster.api(i)).join(","),
      "-o",
      "json",
    ],
    env: cleanEnv(),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  // Until the holder has started (and renewed once), the test keeps the lease alive itself.
  const renewals: string[] = [];
  const holderOutput = (async () => {
    for await (const line of readLines(holder.stdout)) renewals.push(line);
    return await holder.status;
  })();
  try {
    while (renewals.length === 0) {
      const k = await call(`${apis()[0]}/v1/leases/${id}/keepalive`, "POST");
      assert.equal(k.status, 200, k.text);
      await new Promise((r) => setTimeout(r, 200));
    }
    let stop = false;
    const presence = watchPresence(apis, "owner", () => stop);
    // Watched for longer than the TTL with the holder alive, then the leader killed, then again.
    await new Promise((r) => setTimeout(r, 1.5 * TTL));
    await cluster.kill(firstLeader);
    const newLeader = await cluster.waitForLeader(15_000);
    assert.notEqual(newLeader, firstLeader);
    await new Promise((r) => setTimeout(r, 1.5 * TTL));
    stop = true;
    assert.deepEqual(await presence, [], "the key went while its holder kept the lease alive");

    // The holder dies: its key goes within TTL (+ a tick and a commit).
    holder.kill("SIGKILL");
    const killedAt = performance.now();
    await holderOutput;
    await waitFor(async () => (await exists(apis()[0]!, "owner")) === false, {
      deadlineMs: TTL + SLACK_MS,
      message: "the dead holder's key did not expire in time",
    });
    const after = performance.now() - killedAt;
    assert.ok(after <= TTL + SLACK_MS, `gone ${after}ms after the holder died`);
  } finally {
    try {
      holder.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await holderOutput;
  }
});

Deno.test("an abandoned lease survives a leader change for at most max(TTL, election timeout) + the election", async () => {
  await using cluster = await startCluster({ size: 3 });
  const firstLeader = await cluster.waitForLeader(15_000);
  const apis = () => cluster.liveIds().map((id) => cluster.api(id));
  const TTL = 1500;
  const put = await call(`${apis()[0]}/v1/data/orphan?ttl=${TTL}ms`, "PUT", { v: "x" });
  assert.equal(put.status, 200, put.text);
  const putAt = performance.now();
  // The leader dies halfway through the lease; the new one gives it a full TTL from its election.
  await new Promise((r) => setTimeout(r, TTL / 2));
  await cluster.kill(firstLeader);
  const killedAt = performance.now();
  await waitFor(async () => (await exists(apis()[0]!, "orphan")) === false, {
    deadlineMs: 2 * ELECTION_MS + Math.max(TTL, ELECTION_MS) + 2 * SLACK_MS,
    message: "the abandoned key outlived its lease past the bound",
  });
  const goneAt = performance.now();
  // Not expired early: the new leader gave it at least a full TTL after the old leader died.
  assert.ok(goneAt - killedAt >= TTL, `gone ${goneAt - killedAt}ms after the leader died`);
  assert.ok(goneAt - putAt >= TTL);
});

Deno.test("a TTL below the minimum (1.5 election timeouts) is raised to it through the API and the CLI, and the lease lives that long", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader(15_000);
  const follower = cluster.ids.find((id) => id !== leader)!;
  const api = cluster.api(follower);
  // The harness: 300 ms election timeout in 50 ms ticks, 6 ticks; the minimum is 9 ticks.
  const MIN = 450;

  // Granted through a follower: the leader raises it, and the answer gives the TTL granted.
  const sent = performance.now();
  const grant = await call(`${api}/v1/leases`, "POST", { ttl: "1ms" });
  assert.equal(grant.status, 201, grant.text);
  const body = grant.json as { id: number; ttl: string; ttl_ms: number; requested_ttl_ms: number };
  assert.deepEqual([body.ttl, body.ttl_ms, body.requested_ttl_ms], ["450ms", MIN, 1]);
  const shown = await call(`${api}/v1/leases/${body.id}`, "GET");
  assert.equal(shown.status, 200, shown.text);
  assert.equal((shown.json as { ttl_ms: number }).ttl_ms, MIN);
  // A TTL at or above the minimum is granted as asked, with no requested_ttl_ms.
  const exact = await call(`${api}/v1/leases`, "POST", { ttl: "450ms" });
  assert.equal(exact.status, 201, exact.text);
  assert.equal((exact.json as { ttl_ms: number }).ttl_ms, MIN);
  assert.equal((exact.json as Record<string, unknown>).requested_ttl_ms, undefined);

  // A put's own lease (?ttl=) is raised too; the answer says the TTL granted.
  const put = await call(`${api}/v1/data/short?ttl=10ms`, "PUT", { v: "x" });
  assert.equal(put.status, 200, put.text);
  const p = put.json as { lease: number; lease_ttl: string; lease_ttl_ms: number };
  assert.deepEqual([p.lease_ttl, p.lease_ttl_ms], ["450ms", MIN]);
  const putLease = await call(`${api}/v1/leases/${p.lease}`, "GET");
  assert.equal((putLease.json as { ttl_ms: number }).ttl_ms, MIN);
  const longer = await call(`${api}/v1/data/long?ttl=2s`, "PUT", { v: "x" });
  assert.equal((longer.json as { lease_ttl_ms: number }).lease_ttl_ms, 2000);

  // Nobody keeps the first lease alive: it expires, but not before the minimum has passed since
  // the grant was sent (its deadline is its apply time plus 450 ms, not plus 1 ms).
  const attached = await call(`${api}/v1/data/svc%2Fshort?lease=${body.id}`, "PUT", { v: "x" });
  if (attached.status === 200) {
    let goneAt = 0;
    await waitFor(async () => {
      const e = await exists(api, "svc/short");
      if (e === false) goneAt = performance.now();
      return e === false;
    }, { deadlineMs: 20_000, intervalMs: 20, message: "the short lease's key to expire" });
    assert.ok(goneAt - sent >= MIN, `gone ${(goneAt - sent).toFixed(0)} ms after the grant`);
  } else {
    // On a loaded machine the lease may already be gone when the put arrives: still not before
    // the minimum.
    assert.equal(attached.status, 404, attached.text);
    assert.ok(performance.now() - sent >= MIN, "the lease was gone before the minimum");
  }

  // The command-line client: stdout is the id alone, stderr says the TTL granted.
  const ep = ["--endpoints", cluster.ids.map((i) => cluster.api(i)).join(",")];
  const [granted, json, cliPut] = await Promise.all([
    raftkv(["lease", "grant", "100ms", ...ep]),
    raftkv(["lease", "grant", "1ms", ...ep, "-o", "json"]),
    raftkv(["put", "cli/short", "x", "--ttl", "5ms", ...ep]),
  ]);
  assert.equal(granted.code, 0, granted.err);
  assert.match(granted.out, /^\d+$/);
  assert.match(granted.err, /100ms is below the cluster's minimum TTL: granted 450ms/);
  assert.equal(json.code, 0, json.err);
  assert.equal(JSON.parse(json.out).ttl_ms, MIN);
  assert.equal(cliPut.code, 0, cliPut.err);
  assert.match(cliPut.out, /^OK \(index \d+, lease \d+, ttl 450ms\)$/);
});

Deno.test("a transaction's put attaches its key to a lease; one naming a missing lease does nothing (404)", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader(15_000);
  const api = cluster.api(cluster.ids.find((id) => id !== leader)!);
  const grant = await call(`${api}/v1/leases`, "POST", { ttl: "30s" });
  assert.equal(grant.status, 201, grant.text);
  const id = (grant.json as { id: number }).id;

  // Through a follower (forwarded): the compare holds, both puts run, one with the lease.
  const txn = await call(`${api}/v1/txn`, "POST", {
    compare: [{ k: "svc/t", exists: false }],
    success: [{ op: "put", k: "svc/t", v: "up", lease: id }, { op: "put", k: "plain", v: "1" }],
    failure: [{ op: "get", k: "svc/t" }],
  });
  assert.equal(txn.status, 200, txn.text);
  const results = (txn.json as { results: Record<string, unknown>[] }).results;
  assert.equal((txn.json as { succeeded: boolean }).succeeded, true);
  assert.equal(results[0]!.lease, id);
  assert.equal(results[1]!.lease, undefined);
  const shown = await call(`${api}/v1/leases/${id}`, "GET");
  assert.deepEqual((shown.json as { keys: string[] }).keys, ["svc/t"]);

  // A lease that does not exist: 404 as for a put, and nothing of the branch is written.
  const missing = await call(`${api}/v1/txn`, "POST", {
    success: [{ op: "put", k: "plain", v: "2" }, { op: "put", k: "svc/u", v: "x", lease: 999999 }],
  });
  assert.equal(missing.status, 404, missing.text);
  assert.equal((missing.json as { lease: number }).lease, 999999);
  assert.match((missing.json as { error: string }).error, /lease 999999 not found/);
  const plain = await call(`${api}/v1/data/plain`, "GET");
  assert.equal((plain.json as { v: string }).v, "1");
  assert.equal(await exists(api, "svc/u"), false);
  for (const bad of ["7", 0, -1, 1.5, null]) {
    const r = await call(`${api}/v1/txn`, "POST", {
      success: [{ op: "put", k: "a", v: "x", lease: bad }],
    });
    assert.equal(r.status, 400, `${JSON.stringify(bad)}: ${r.text}`);
    assert.match((r.json as { error: string }).error, /"lease" must be a lease id/);
  }

  // Revoking the lease deletes the key the transaction attached, and only that one.
  const revoked = await call(`${api}/v1/leases/${id}`, "DELETE");
  assert.equal(revoked.status, 200, revoked.text);
  assert.deepEqual((revoked.json as { deleted: string[] }).deleted, ["svc/t"]);
  assert.equal(await exists(api, "svc/t"), false);
  assert.equal(await exists(api, "plain"), true);
});
