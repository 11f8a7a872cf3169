/**
 * The command-line client (`raftkv get|put|del|status|snapshot|help`) run as its own process
 * (`deno run main.ts <command>`, with only the permissions baked into the binary) against real
 * node processes: results, `-o json` shapes, and every exit code it can get from a real cluster.
 * `verify` has its own file.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PERMISSION_FLAGS } from "../main.ts";
import { saveHardState } from "../src/storage/hard_state.ts";
import { decodeSnapshot } from "../src/storage/snapshot_file.ts";
import { makeCertificates } from "../testing/certs.ts";
import { cleanEnv, freePorts, startCluster, waitFor } from "../testing/harness.ts";

const _MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

interface _Run {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (one object), or undefined. */
  json: Record<string, unknown> | undefined;
}

/** Runs `raftkv <args>` in a process of its own, with only `env` (no inherited RAFTKV_*). */
async function raftkv(
  args: string[],
  options: { env?: Record<string, string>; stdin?: string | Uint8Array } = {},
): Promise<_Run> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...PERMISSION_FLAGS, _MAIN, ...args],
    env: cleanEnv(options.env),
    clearEnv: true,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    const bytes = typeof options.stdin === "string"
      ? new TextEncoder().encode(options.stdin)
      : options.stdin;
    await writer.write(bytes);
    await writer.close();
  }
  const out = await child.output();
  const stdout = new TextDecoder().decode(out.stdout);
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(stdout);
  } catch {
    json = undefined;
  }
  return { code: out.code, stdout, stderr: new TextDecoder().decode(out.stderr), json };
}

function _expect(run: _Run, code: number, what: string): void {
  assert.equal(
    run.code,
    code,
    `${what}: exit ${run.code}\nstdout: ${run.stdout}\nstderr: ${run.stderr}`,
  );
}

/**
 * Runs `raftkv leader transfer <args>` until the leader does not abandon the transfer (3 tries at
 * most): on a loaded machine its target now and then fails to take over within an election
 * timeout, which the client reports (exit 1) without trying again, as it should.
 */
async function _transfer(args: string[]): Promise<_Run> {
  for (let attempt = 1;; attempt++) {
    const run = await raftkv(["leader", "transfer", ...args]);
    if (attempt === 3 || run.code !== 1 || !/was abandoned/.test(run.stderr)) return run;
  }
}

/** Endpoints on which nothing listens (picked free, then released). */
function _deadEndpoints(n: number): string[] {
  return freePorts(n).map((port) => `http://127.0.0.1:${port}`);
}

Deno.test("the client's commands against a real 3-node cluster: results, -o json and exit codes", async (t) => {
  // A longer election timeout than the harness's: leader changes on a busy machine would only
  // slow these tests down.
  await using cluster = await startCluster({ size: 3, nodeFlags: ["--election-timeout", "1000"] });
  const leader = await cluster.waitForLeader();
  const follower = cluster.ids.find((id) => id !== leader)!;
  const all = cluster.ids.map((id) => cluster.api(id)).join(",");
  const ep = ["--endpoints", all];

  // Commands that do not depend on each other run at once: each is a process of its own.
  await t.step(
    "put, get and del print the value and the index; -o json gives the API's objects",
    async () => {
      const [put, putJson] = await Promise.all([
        raftkv(["put", "greeting", "hello world", ...ep]),
        raftkv(["put", "a/b c", "2", "-o", "json", ...ep]),
      ]);
      _expect(put, 0, "put");
      assert.match(put.stdout, /^OK \(index \d+\)\n$/);
      _expect(putJson, 0, "put -o json");
      assert.deepEqual(Object.keys(putJson.json!), [
        "k",
        "v",
        "index",
        "create_index",
        "mod_index",
        "version",
      ]);
      assert.equal(putJson.json!.k, "a/b c");
      const [get, getJson] = await Promise.all([
        raftkv(["get", "greeting", ...ep]),
        raftkv(["get", "a/b c", "-o", "json", ...ep]),
      ]);
      _expect(get, 0, "get");
      assert.equal(get.stdout, "hello world\n");
      const index = putJson.json!.index;
      assert.deepEqual(getJson.json, {
        k: "a/b c",
        v: "2",
        create_index: index,
        mod_index: index,
        version: 1,
      });
      const del = await raftkv(["del", "a/b c", ...ep]);
      _expect(del, 0, "del");
      assert.match(del.stdout, /^deleted \(index \d+\)\n$/);
    },
  );

  await t.step(
    "put without VALUE reads stdin exactly; a key starting with - goes after --",
    async () => {
      // Exactly: a U+FEFF that begins it is part of the value.
      const value = "\ufeffline 1\nline 2 ✓ ünïcode\n";
      _expect(
        await raftkv(["put", "--", "-dash"], { stdin: value, env: { RAFTKV_ENDPOINTS: all } }),
        0,
        "put stdin",
      );
      const got = await raftkv(["get", "-o", "json", "--", "-dash"], {
        env: { RAFTKV_ENDPOINTS: all },
      });
      _expect(got, 0, "get -dash");
      assert.equal(got.json!.v, value);
      // Bytes that are not UTF-8 are refused, not written changed (U+FFFD for each).
      const binary = await raftkv(["put", "binary"], {
        stdin: new Uint8Array([0x61, 0xff, 0xfe, 0x62]),
        env: { RAFTKV_ENDPOINTS: all },
      });
      _expect(binary, 2, "put of bytes that are not UTF-8");
      assert.match(binary.stderr, /stdin is not UTF-8 text: .*nothing was sent/);
      _expect(
        await raftkv(["get", "binary"], { env: { RAFTKV_ENDPOINTS: all } }),
        3,
        "the refused value was not written",
      );
    },
  );

  await t.step("a missing key exits 3 from get and from del", async () => {
    const [get, getJson, del, delJson] = await Promise.all([
      raftkv(["get", "nothing-here", ...ep]),
      raftkv(["get", "nothing-here", "-o", "json", ...ep]),
      raftkv(["del", "nothing-here", ...ep]),
      raftkv(["del", "nothing-here", "-o", "json", ...ep]),
    ]);
    _expect(get, 3, "get missing");
    assert.equal(get.stdout, "");
    assert.match(get.stderr, /^raftkv get: key "nothing-here" not found\n$/);
    _expect(getJson, 3, "get missing -o json");
    assert.deepEqual(getJson.json, {
      k: "nothing-here",
      status: 404,
      error: 'key "nothing-here" not found',
      exit_code: 3,
    });
    _expect(del, 3, "del missing");
    assert.match(del.stderr, /not found: nothing was deleted/);
    _expect(delJson, 3, "del missing -o json");
    assert.equal(delJson.json!.deleted, false);
  });

  await t.step("endpoints are tried in turn; none reachable exits 4; stale reads", async () => {
    const [dead1, dead2] = _deadEndpoints(2);
    const [next, none, noneJson, stale] = await Promise.all([
      raftkv(["get", "greeting", "--endpoints", `${dead1},${cluster.api(follower)}`]),
      raftkv(["put", "k", "v", "--endpoints", `${dead1},${dead2}`]),
      raftkv(["status", "-o", "json", "--endpoints", dead1!]),
      // A follower serves a stale read itself.
      raftkv(["get", "greeting", "--consistency", "stale", "--endpoints", cluster.api(follower)]),
    ]);
    _expect(next, 0, "a dead endpoint first");
    assert.equal(next.stdout, "hello world\n");
    // Global options before the command, as etcdctl takes them.
    const [before, beforeEq, beforeJson] = await Promise.all([
      raftkv(["--endpoints", cluster.api(follower), "get", "greeting"]),
      raftkv([`--endpoints=${cluster.api(follower)}`, "--timeout", "3s", "get", "greeting"]),
      raftkv(["-o", "json", "--endpoints", cluster.api(follower), "get", "greeting"]),
    ]);
    _expect(before, 0, "--endpoints before get");
    assert.equal(before.stdout, "hello world\n");
    _expect(beforeEq, 0, "--endpoints= and --timeout before get");
    assert.equal(beforeEq.stdout, "hello world\n");
    _expect(beforeJson, 0, "-o json before get");
    assert.equal(beforeJson.json!.v, "hello world");
    _expect(none, 4, "no endpoint reachable");
    assert.match(
      none.stderr,
      /no endpoint could be reached: http:\/\/127\.0\.0\.1:\d+: .*refused/i,
    );
    _expect(noneJson, 4, "status -o json, no endpoint");
    assert.equal(noneJson.json!.exit_code, 4);
    assert.match(String(noneJson.json!.error), /no endpoint could be reached/);
    _expect(stale, 0, "stale read on a follower");
    assert.equal(stale.stdout, "hello world\n");
  });

  await t.step(
    "bad usage exits 2; --help exits 0 (the cases are in src/cli/client/client_test.ts)",
    async () => {
      const [usage, help, node] = await Promise.all([
        raftkv(["get"]),
        raftkv(["status", "--help"]),
        raftkv(["--help"]),
      ]);
      _expect(usage, 2, "get without a key");
      assert.match(
        usage.stderr,
        /^raftkv get: missing arguments; usage: raftkv get \[options\] KEY/,
      );
      _expect(help, 0, "status --help");
      assert.ok(help.stdout.startsWith("Usage: raftkv status [options]"), help.stdout);
      assert.match(
        node.stdout,
        /raftkv <command> \[options\] +the client; raftkv help lists its commands/,
      );
    },
  );

  await t.step("status lists every member with role, term, indexes and lag", async () => {
    // Once every member has applied what the leader committed, the lag is 0 everywhere (tried
    // again while a leader change on a busy machine moves the indexes).
    let last: _Run | undefined;
    await waitFor(async () => {
      last = await raftkv(["status", "--endpoints", cluster.api(follower)]);
      const lines = last.stdout.trimEnd().split("\n");
      if (last.code !== 0 || lines.length !== 4) return false;
      const roles = cluster.ids.map((id) => {
        const api = cluster.api(id).replaceAll(".", "\\.");
        const row = new RegExp(
          `^${id} +${api} +(leader|follower) +\\d+ +\\d+ +\\d+ +\\d+ +0 +\\d+ B of 1 GiB$`,
          "m",
        );
        return last!.stdout.match(row)?.[1];
      });
      return roles.sort().join() === "follower,follower,leader";
    }, {
      deadlineMs: 20_000,
      message: () => `a status with one leader and no lag:\n${last?.stdout}${last?.stderr}`,
    });
    assert.match(
      last!.stdout,
      /^ID +ENDPOINT +ROLE +TERM +COMMIT +APPLIED +LAST +LAG +DATA +NOTE\n/,
    );
    const json = await raftkv(["status", "-o", "json", ...ep]);
    _expect(json, 0, "status -o json");
    assert.ok(cluster.ids.includes(String(json.json!.leader)), String(json.json!.leader));
    const members = json.json!.members as Record<string, unknown>[];
    assert.deepEqual(members.map((m) => m.id), cluster.ids);
    for (const m of members) {
      assert.deepEqual(Object.keys(m), ["id", "endpoint", "reachable", "status", "lag", "error"]);
      assert.equal(m.reachable, true);
      assert.equal(m.lag, 0);
      assert.equal((m.status as { id: string }).id, m.id);
      const { data_bytes, quota_bytes } = m.status as { data_bytes: number; quota_bytes: number };
      assert.ok(Number.isSafeInteger(data_bytes) && data_bytes > 0, String(data_bytes));
      assert.equal(quota_bytes, 1024 ** 3, "the default quota");
    }
  });

  const dir = await Deno.makeTempDir({ prefix: "raftkv-cli-" });
  try {
    const backup = join(dir, "backup.snap");

    await t.step("snapshot save writes a verified backup atomically, mode 0600", async () => {
      const run = await raftkv(["snapshot", "save", backup, ...ep]);
      _expect(run, 0, "snapshot save");
      assert.match(
        run.stdout,
        /^saved the snapshot at index \d+ \(term \d+, 2 keys\) to .*backup\.snap \(\d+ bytes\) from http/,
      );
      const { header, entries } = decodeSnapshot(await Deno.readFile(backup), backup);
      assert.deepEqual(
        new Map(entries.map((e) => [e.key, e.value])),
        new Map([["greeting", "hello world"], ["-dash", "\ufeffline 1\nline 2 ✓ ünïcode\n"]]),
      );
      assert.deepEqual(header.voters, cluster.ids);
      assert.equal((await Deno.stat(backup)).mode! & 0o777, 0o600);
      assert.deepEqual(
        [...Deno.readDirSync(dir)].map((e) => e.name),
        ["backup.snap"],
        "no .part left",
      );
      const json = await raftkv(["snapshot", "save", join(dir, "b2.snap"), "-o", "json", ...ep]);
      _expect(json, 0, "snapshot save -o json");
      assert.deepEqual(
        Object.keys(json.json!),
        ["file", "bytes", "index", "term", "keys", "members", "endpoint"],
      );
      assert.ok(cluster.ids.map((id) => cluster.api(id)).includes(String(json.json!.endpoint)));
    });

    await t.step("snapshot restore checks the backup and prints how to start from it", async () => {
      const bytes = await Deno.readFile(backup);
      bytes[bytes.length - 20] = bytes[bytes.length - 20]! ^ 0xff;
      await Deno.writeFile(join(dir, "bad.snap"), bytes);
      const newDir = join(dir, "new");
      // As a restore that failed part-way leaves it: a hard state of term 0, empty folders. The
      // node restores there, so the check accepts it.
      const leftDir = join(dir, "left");
      await Deno.mkdir(join(leftDir, "wal"), { recursive: true });
      await Deno.mkdir(join(leftDir, "snapshots"));
      await saveHardState(join(leftDir, "raft-state.json"), { term: 0, vote: "", commit: 0 });
      const [run, json, used, bad, left] = await Promise.all([
        raftkv(["snapshot", "restore", backup]),
        raftkv([
          "snapshot",
          "restore",
          backup,
          "--data-dir",
          newDir,
          "--id",
          "node-9",
          "-o",
          "json",
        ]),
        raftkv(["snapshot", "restore", backup, "--data-dir", cluster.node(leader).dataDir]),
        raftkv(["snapshot", "restore", join(dir, "bad.snap")]),
        raftkv(["snapshot", "restore", backup, "--data-dir", leftDir]),
      ]);
      _expect(run, 0, "snapshot restore");
      assert.match(run.stdout, /a valid snapshot at index \d+ \(term \d+\) with 2 keys/);
      for (const id of cluster.ids) {
        assert.ok(
          run.stdout.includes(
            `  raftkv --id ${id} --data-dir data/${id} --restore-from ${backup}\n`,
          ),
          run.stdout,
        );
      }
      _expect(json, 0, "restore -o json");
      assert.deepEqual(json.json!.commands, [[
        "raftkv",
        "--id",
        "node-9",
        "--data-dir",
        newDir,
        "--restore-from",
        backup,
      ]]);
      _expect(used, 6, "a data directory in use");
      assert.match(
        used.stderr,
        /already holds a node's data \(raft-state\.json, .*wal\/\).*would ignore --restore-from/,
      );
      _expect(left, 0, "a data directory a failed restore left");
      _expect(bad, 1, "a damaged backup");
      assert.match(bad.stderr, /is not a usable backup: .*checksum mismatch/);
    });

    await t.step(
      "a node started with --restore-from, as snapshot restore says, serves the backup's keys",
      async () => {
        await using restored = await startCluster({
          size: 1,
          nodeFlags: ["--restore-from", backup],
        });
        await restored.waitForLeader();
        const got = await raftkv(["get", "greeting", "--endpoints", restored.api("node-1")]);
        _expect(got, 0, "get from the restored node");
        assert.equal(got.stdout, "hello world\n");
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  await t.step(
    "txn runs one branch, exits 0 or 6 by it; del --prefix deletes a range in one entry",
    async () => {
      for (const [k, v] of [["jobs/1", "a"], ["jobs/2", "b"], ["jobs/3", "c"], ["jobsx", "d"]]) {
        _expect(await raftkv(["put", k!, v!, ...ep]), 0, `put ${k}`);
      }
      const claim = JSON.stringify({
        compare: [{ k: "jobs/1", value: "a" }],
        success: [{ op: "put", k: "jobs/1", v: "taken" }, { op: "get", k: "jobs/2" }],
        failure: [{ op: "get", k: "jobs/1" }],
      });
      // From stdin through a follower (forwarded), then from a file with -o json.
      const won = await raftkv(["txn", "--endpoints", cluster.api(follower)], { stdin: claim });
      _expect(won, 0, "txn whose compares hold");
      assert.match(
        won.stdout,
        /^succeeded \(index \d+\)\nput "jobs\/1" \(mod_index \d+\)\nget "jobs\/2" = "b"\n$/,
      );
      const file = await Deno.makeTempFile({ suffix: ".json" });
      try {
        await Deno.writeTextFile(file, claim);
        const lost = await raftkv(["txn", file, ...ep]);
        _expect(lost, 6, "txn whose compares do not hold");
        assert.match(
          lost.stdout,
          /^compares failed: ran the failure branch \(index \d+\)\nget "jobs\/1" = "taken"\n$/,
        );
        const json = await raftkv(["txn", file, "-o", "json", ...ep]);
        _expect(json, 6, "txn -o json");
        assert.equal(json.json!.succeeded, false);
        assert.deepEqual(Object.keys(json.json!), ["succeeded", "index", "results"]);
      } finally {
        await Deno.remove(file);
      }
      const bad = await raftkv(["txn", ...ep], { stdin: '{"compare":[{"k":"a","op":"~"}]}' });
      _expect(bad, 2, "a malformed transaction");
      assert.match(bad.stderr, /txn: .*compare\[0\]/);

      const del = await raftkv(["del", "--prefix", "jobs/", ...ep]);
      _expect(del, 0, "del --prefix");
      assert.match(del.stdout, /^deleted 3 keys \(index \d+\)\n$/);
      const left = await raftkv(["list", "jobs", "--keys-only", ...ep]);
      assert.equal(left.stdout, "jobsx\n");
      const none = await raftkv(["del", "--prefix", "jobs/", "-o", "json", ...ep]);
      _expect(none, 0, "del --prefix with nothing under it");
      assert.equal(none.json!.deleted, 0);
    },
  );

  await t.step("leader transfer hands the leadership over and prints the new leader", async () => {
    // Without an id, to the most caught-up voter; asked through a follower, which forwards it.
    const any = await _transfer(["--endpoints", cluster.api(follower)]);
    _expect(any, 0, "leader transfer");
    const first = any.stdout.match(/^the leader is now (\S+) \(was (\S+)\)\n$/);
    assert.ok(first, any.stdout);
    assert.equal(first[2], leader);
    assert.notEqual(first[1], leader);
    // Then to a named voter other than `follower`, which the steps below pause and stop.
    const to = cluster.ids.find((id) => id !== follower && id !== first[1])!;
    const named = await _transfer([to, "-o", "json", ...ep]);
    _expect(named, 0, `leader transfer ${to}`);
    assert.deepEqual(named.json, { leader: to, previous: first[1] });
    assert.equal((await cluster.status(to))?.role, "leader");
    const unknown = await raftkv(["leader", "transfer", "node-9", ...ep]);
    _expect(unknown, 1, "leader transfer to an unknown id");
    assert.match(unknown.stderr, /leader transfer "node-9": 400 /);
  });

  await t.step("no answer within --timeout exits 1 (a paused node)", async () => {
    cluster.pause(follower);
    try {
      const started = performance.now();
      const run = await raftkv([
        "put",
        "k",
        "v",
        "--timeout",
        "300ms",
        "--endpoints",
        cluster.api(follower),
      ]);
      _expect(run, 1, "a paused endpoint");
      assert.match(
        run.stderr,
        /no answer within 300ms; the write may or may not have been applied/,
      );
      assert.ok(performance.now() - started < 10_000);
    } finally {
      cluster.resume(follower);
    }
  });

  await t.step("status exits 1 and says which member did not answer", async () => {
    await cluster.kill(follower);
    const run = await raftkv(["status", ...ep]);
    _expect(run, 1, "status with a member down");
    assert.match(
      run.stdout,
      new RegExp(`^${follower} +\\S+ +- +- +- +- +- +- +- +no endpoint could be reached`, "m"),
    );
    assert.match(run.stderr, /1 of 3 members did not answer/);
  });

  await t.step(
    "a transfer to a voter that does not take over exits 1 at once, saying so",
    async () => {
      // The follower is down: the leader abandons the transfer after an election timeout.
      const started = performance.now();
      const run = await raftkv(["leader", "transfer", follower, "--timeout", "20s", ...ep]);
      _expect(run, 1, "a transfer to a stopped voter");
      assert.match(run.stderr, new RegExp(`"${follower}" was abandoned: it did not take over`));
      assert.ok(performance.now() - started < 10_000, "it was tried again until --timeout");
    },
  );
});

Deno.test("--cacert trusts a private CA for https endpoints, and --token is sent as a bearer token", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-cli-tls-" });
  await using cluster = await startCluster({ size: 1 });
  await cluster.waitForLeader();
  const certs = await makeCertificates(dir, { nodes: ["node-1"] });
  // A TLS front for the node's API (the node itself has no TLS in this version), which notes
  // the Authorization header of every request.
  const seen: (string | null)[] = [];
  const front = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(certs.node("node-1").cert),
    key: await Deno.readTextFile(certs.node("node-1").key),
    onListen: () => {},
  }, async (req) => {
    seen.push(req.headers.get("authorization"));
    const url = new URL(req.url);
    const body = req.body === null ? undefined : await req.arrayBuffer();
    const answer = await fetch(cluster.api("node-1") + url.pathname + url.search, {
      method: req.method,
      headers: req.headers,
      ...(body === undefined ? {} : { body }),
    });
    return new Response(await answer.arrayBuffer(), {
      status: answer.status,
      headers: answer.headers,
    });
  });
  try {
    const https = `https://localhost:${front.addr.port}`;
    // Once, in a full default test run, this write went unanswered for the CLI's default 5 s
    // (cause not found: alone, and beside the simulation's tests, it takes under a second). What
    // this test is about is trust and tokens, not latency: a longer deadline.
    const put = await raftkv([
      "put",
      "tls",
      "yes",
      "--endpoints",
      https,
      "--cacert",
      certs.ca,
      "--token",
      "s3cret",
      "--timeout",
      "30s",
    ]);
    _expect(put, 0, "put over https with --cacert");
    assert.deepEqual(seen, ["Bearer s3cret"]);
    const get = await raftkv(["get", "tls", "--endpoints", https, "--timeout", "30s"], {
      env: { RAFTKV_CACERT: certs.ca, RAFTKV_TOKEN: "from-env" },
    });
    _expect(get, 0, "get with RAFTKV_CACERT");
    assert.equal(get.stdout, "yes\n");
    assert.deepEqual(seen, ["Bearer s3cret", "Bearer from-env"]);
    const untrusted = await raftkv(["get", "tls", "--endpoints", https]);
    _expect(untrusted, 4, "an unknown CA");
    assert.match(untrusted.stderr, /certificate|UnknownIssuer/i);
    const notPem = await raftkv([
      "get",
      "tls",
      "--endpoints",
      https,
      "--cacert",
      certs.node("node-1").key,
    ]);
    _expect(notPem, 2, "a --cacert that is no certificate");
    assert.match(notPem.stderr, /holds no PEM certificate/);
    assert.equal(seen.length, 2, "refused connections sent nothing");
  } finally {
    await front.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("answers 401 and 403 exit 5, 409 and 412 exit 6 (a stand-in server answering each status; the real cluster tests cover tokens and --cas too)", async () => {
  const statuses: Record<string, number> = {
    "/v1/data/a": 401,
    "/v1/data/b": 403,
    "/v1/data/c": 409,
    "/v1/data/d": 412,
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const status = statuses[new URL(req.url).pathname] ?? 500;
    return Response.json({ error: `refused with ${status}` }, { status });
  });
  const port = server.addr.port;
  try {
    const ep = ["--endpoints", `127.0.0.1:${port}`];
    const cases = [["a", 5], ["b", 5], ["c", 6], ["d", 6], ["e", 1]] as const;
    const runs = await Promise.all(cases.map(([key]) => raftkv(["put", key, "v", ...ep])));
    cases.forEach(([key, code], i) => {
      _expect(runs[i]!, code, `put ${key}`);
      assert.match(runs[i]!.stderr, /refused with \d{3}/);
    });
    const json = await raftkv(["get", "a", "-o", "json", ...ep]);
    _expect(json, 5, "get a -o json");
    assert.deepEqual(json.json, {
      error:
        `get "a": 401 refused with 401 (give a token with --token or RAFTKV_TOKEN) (from http://127.0.0.1:${port})`,
      status: 401,
      endpoint: `http://127.0.0.1:${port}`,
      exit_code: 5,
    });
  } finally {
    await server.shutdown();
  }
});

Deno.test({
  name:
    "a cluster with tokens answers a missing token with exit 5, a read token writing with exit 5",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "raftkv-cli-tokens-" });
    try {
      const file = join(dir, "tokens.json");
      await Deno.writeTextFile(
        file,
        JSON.stringify([
          { token: "reader-token-0123456789", role: "read", name: "reader" },
          { token: "writer-token-0123456789", role: "write", name: "writer" },
        ]),
      );
      await using cluster = await startCluster({
        size: 1,
        nodeFlags: ["--tokens-file", file],
        token: "reader-token-0123456789",
      });
      await cluster.waitForLeader();
      const ep = ["--endpoints", cluster.api("node-1")];
      _expect(await raftkv(["put", "k", "v", ...ep]), 5, "no token");
      _expect(
        await raftkv(["put", "k", "v", "--token", "reader-token-0123456789", ...ep]),
        5,
        "read token",
      );
      _expect(
        await raftkv(["put", "k", "v", "--token", "writer-token-0123456789", ...ep]),
        0,
        "write token",
      );
      _expect(
        await raftkv(["get", "k", "--token", "reader-token-0123456789", ...ep]),
        0,
        "read token get",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("list pages through a prefix in key order; put and del --cas exit 6 on a conflict", async () => {
  await using cluster = await startCluster({ size: 1 });
  await cluster.waitForLeader();
  const ep = ["--endpoints", cluster.api("node-1")];
  for (const [k, v] of [["app/b", "2"], ["app/a", "1"], ["app/c", "3"], ["other", "x"]]) {
    _expect(await raftkv(["put", k!, v!, ...ep]), 0, `put ${k}`);
  }
  const all = await raftkv(["list", "app/", ...ep]);
  _expect(all, 0, "list");
  assert.equal(all.stdout, "app/a=1\napp/b=2\napp/c=3\n");
  const got = await raftkv(["get", "--prefix", "app/", ...ep]);
  _expect(got, 0, "get --prefix");
  assert.equal(got.stdout, all.stdout, "get --prefix prints what list prints");
  const keys = await raftkv(["list", "app/", "--keys-only", "--limit", "2", ...ep]);
  _expect(keys, 0, "list --keys-only --limit 2");
  assert.equal(keys.stdout, "app/a\napp/b\n");
  const json = await raftkv(["list", "app/", "-o", "json", ...ep]);
  const items = json.json?.items as { k: string; mod_index: number }[];
  assert.deepEqual(items.map((i) => i.k), ["app/a", "app/b", "app/c"]);
  assert.equal((await raftkv(["list", "none/", ...ep])).stdout, "");

  const modIndex = items[0]!.mod_index;
  _expect(await raftkv(["put", "app/a", "new", "--cas", "0", ...ep]), 6, "create over a key");
  _expect(await raftkv(["put", "app/a", "new", "--cas", String(modIndex + 1000), ...ep]), 6, "");
  _expect(await raftkv(["put", "app/a", "new", "--cas", String(modIndex), ...ep]), 0, "cas put");
  _expect(await raftkv(["put", "fresh", "1", "--cas", "0", ...ep]), 0, "create if absent");
  _expect(
    await raftkv(["del", "app/b", "--cas", "999999", ...ep]),
    6,
    "del with a stale mod_index",
  );
  assert.equal((await raftkv(["get", "app/b", ...ep])).stdout, "2\n", "nothing was deleted");
  _expect(await raftkv(["put", "app/a", "x", "--cas", "abc", ...ep]), 2, "a bad --cas");
});

/** A `raftkv` process left running, its output gathered as it comes. */
interface _Running {
  child: Deno.ChildProcess;
  out: () => string;
  err: () => string;
  /** Resolves with the exit code once it has exited and its output is read. */
  exited: Promise<number>;
}

/** Starts `raftkv <args>` in a process of its own and gathers its output as it comes. */
function _start(args: string[]): _Running {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...PERMISSION_FLAGS, _MAIN, ...args],
    env: cleanEnv({}),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  let err = "";
  const read = async (stream: ReadableStream<Uint8Array>, add: (s: string) => void) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) add(chunk);
  };
  const exited = Promise.all([
    read(child.stdout, (s) => out += s),
    read(child.stderr, (s) => err += s),
  ]).then(() => child.status).then((s) => s.code);
  return { child, out: () => out, err: () => err, exited };
}

/**
 * Stops a client process and what it runs: SIGTERM first (the client passes it on to its
 * COMMAND and releases its lease), SIGKILL if it has not exited within 5 s.
 */
async function _stop(run: _Running): Promise<void> {
  const signal = (s: Deno.Signal) => {
    try {
      run.child.kill(s);
    } catch { /* it has exited */ }
  };
  signal("SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => timer = setTimeout(() => resolve("late"), 5000));
  const outcome = await Promise.race([run.exited.catch(() => "exited"), late]);
  clearTimeout(timer);
  if (outcome === "late") signal("SIGKILL");
  await run.exited.catch(() => {});
}

Deno.test("lock and elect: waiters queue behind the holder and go on once it releases, dies or loses its lease", async () => {
  await using cluster = await startCluster({ size: 3 });
  const leader = await cluster.waitForLeader();
  const follower = cluster.ids.find((id) => id !== leader)!;
  const ep = ["--endpoints", cluster.ids.map((id) => cluster.api(id)).join(",")];
  const dir = await Deno.makeTempDir({ prefix: "raftkv-lock-" });
  const started: _Running[] = [];
  const start = (args: string[]) => {
    const run = _start(args);
    started.push(run);
    return run;
  };
  try {
    // A holds the lock until SIGTERM; B, through a follower, waits behind it to run a command.
    const a = start(["lock", "jobs/lock", "--ttl", "1s", "-o", "json", ...ep]);
    await waitFor(() => a.out().includes("\n"), {
      deadlineMs: 15_000,
      message: () => `A to hold the lock (stderr: ${a.err()})`,
    });
    const held = JSON.parse(a.out()) as { key: string; lease: number; create_index: number };
    assert.equal(held.key, `jobs/lock/${held.lease}`);
    const marker = join(dir, "b");
    // A TTL with room for a loaded machine: B's keep-alives go through a follower, and B only
    // waits (it never has to lose its lease here).
    const b = start([
      "lock",
      "jobs/lock",
      "--ttl",
      "3s",
      "--endpoints",
      cluster.api(follower),
      "--",
      "sh",
      "-c",
      `echo "$RAFTKV_LOCK_KEY $RAFTKV_LOCK_INDEX" > ${marker}; exit 7`,
    ]);
    await waitFor(() => b.err().includes(`waiting for ${held.key} `), {
      deadlineMs: 15_000,
      message: () => `B to wait for A's key (stderr: ${b.err()})`,
    });
    // B has read the line and found A's key ahead of its own: its command has not run.
    await assert.rejects(Deno.stat(marker), Deno.errors.NotFound);
    const line = await raftkv(["list", "jobs/lock/", "--keys-only", ...ep]);
    assert.equal(line.stdout.split("\n").filter((k) => k !== "").length, 2, line.stdout);

    a.child.kill("SIGTERM");
    assert.equal(await a.exited, 0, `A released on SIGTERM: ${a.err()}`);
    assert.equal(await b.exited, 7, `B exits with its command's code: ${b.err()}`);
    const [bKey, bIndex] = (await Deno.readTextFile(marker)).trim().split(" ");
    assert.match(bKey!, /^jobs\/lock\/\d+$/);
    assert.ok(Number(bIndex) > held.create_index, `${bIndex} after ${held.create_index}`);
    assert.match(b.err(), new RegExp(`holding ${bKey} \\(create_index ${bIndex}, lease \\d+\\)`));
    const empty = await raftkv(["list", "jobs/lock/", "--keys-only", ...ep]);
    assert.equal(empty.stdout, "", "both released: their leases revoked, their keys gone");

    // A holder killed with SIGKILL keeps the lock until its lease expires; then the next runs.
    const c = start(["lock", "jobs/lock", "--ttl", "1s", ...ep]);
    await waitFor(() => c.out().startsWith("holding "), {
      deadlineMs: 15_000,
      message: () => `C to hold the lock (stderr: ${c.err()})`,
    });
    const after = join(dir, "d");
    const d = start(["lock", "jobs/lock", ...ep, "--", "sh", "-c", `touch ${after}`]);
    await waitFor(() => d.err().includes("waiting for jobs/lock/"), {
      deadlineMs: 15_000,
      message: () => `D to wait (stderr: ${d.err()})`,
    });
    c.child.kill("SIGKILL");
    await c.exited;
    assert.equal(await d.exited, 0, `D ran once C's lease expired: ${d.err()}`);
    await Deno.stat(after);

    // A holder whose lease is revoked under it has lost the lock: its command gets SIGTERM.
    const e = start(["lock", "jobs/lock", "-o", "json", ...ep, "--", "sleep", "60"]);
    await waitFor(() => e.err().includes("\n"), {
      deadlineMs: 15_000,
      message: () => `E to hold the lock (stderr: ${e.err()})`,
    });
    const eHeld = JSON.parse(e.err().split("\n")[0]!) as { lease: number };
    _expect(await raftkv(["lease", "revoke", String(eHeld.lease), ...ep]), 0, "revoke E's lease");
    const stopped = performance.now();
    assert.equal(await e.exited, 1, e.err());
    // With -o json the error is the one JSON object on stdout.
    assert.match(e.out(), new RegExp(`"lost the lock: lease ${eHeld.lease} is gone`));
    assert.ok(performance.now() - stopped < 10_000, "E stopped its command within seconds");

    // An election: the first candidate leads until it resigns; --leader says who leads.
    const none = await raftkv(["elect", "svc", "--leader", ...ep]);
    _expect(none, 3, "elect --leader with no candidate");
    const f = start(["elect", "svc", "10.0.0.1:80", "--ttl", "1s", ...ep]);
    await waitFor(() => f.out().startsWith("10.0.0.1:80\n"), {
      deadlineMs: 15_000,
      message: () => `F to lead (stdout: ${f.out()}, stderr: ${f.err()})`,
    });
    const g = start(["elect", "svc", "10.0.0.2:80", "--endpoints", cluster.api(follower)]);
    await waitFor(() => g.err().includes("waiting for svc/"), {
      deadlineMs: 15_000,
      message: () => `G to wait (stderr: ${g.err()})`,
    });
    assert.match(g.err(), /\(proposing 10\.0\.0\.1:80\), 1 ahead/);
    const leads = await raftkv(["elect", "svc", "--leader", ...ep]);
    _expect(leads, 0, "elect --leader");
    assert.equal(leads.stdout, "10.0.0.1:80\n");
    f.child.kill("SIGTERM");
    assert.equal(await f.exited, 0, `F resigned on SIGTERM: ${f.err()}`);
    await waitFor(() => g.out().startsWith("10.0.0.2:80\n"), {
      deadlineMs: 15_000,
      message: () => `G to lead (stdout: ${g.out()}, stderr: ${g.err()})`,
    });
    const next = await raftkv(["elect", "svc", "--leader", "-o", "json", ...ep]);
    assert.equal(next.json!.proposal, "10.0.0.2:80");
    g.child.kill("SIGTERM");
    assert.equal(await g.exited, 0, g.err());
  } finally {
    await Promise.all(started.map(_stop));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("watch stops on SIGINT (Ctrl-C) with what it printed, its stream open", async () => {
  await using cluster = await startCluster({ size: 3 });
  await cluster.waitForLeader();
  const ep = ["--endpoints", cluster.ids.map((id) => cluster.api(id)).join(",")];
  const watch = _start(["watch", "--prefix", "sig/", ...ep]);
  try {
    // Once the stream is open (the node counts it), a change shows up on the watch's stdout.
    await waitFor(async () => {
      _expect(await raftkv(["put", "sig/a", "1", ...ep]), 0, "put");
      return watch.out().includes("\tput\tsig/a\t1\n");
    }, { deadlineMs: 15_000, message: () => `the watch to print (stderr: ${watch.err()})` });
    watch.child.kill("SIGINT");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((resolve) => timer = setTimeout(() => resolve("late"), 5000));
    const code = await Promise.race([watch.exited, late]);
    clearTimeout(timer);
    assert.equal(code, 0, `the watch exits 0 within 5 s of SIGINT (stderr: ${watch.err()})`);
    assert.equal(watch.err(), "");
  } finally {
    await _stop(watch);
  }
});

/** A port `fetch` refuses that is free here (an unprivileged one), or null. */
function _freeBlockedPort(): number | null {
  for (const port of [10080, 6669, 6665, 6679, 6697, 6566, 5061, 4190]) {
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch {
      // Taken: the next.
    }
  }
  return null;
}

Deno.test("a node whose api_url is on a port fetch refuses warns at start-up, and the client says why it cannot reach it", async () => {
  const port = _freeBlockedPort();
  if (port === null) return; // Every candidate is taken on this machine.
  const dir = await Deno.makeTempDir({ prefix: "raftkv-bad-port-" });
  const [rpc] = freePorts(1);
  const api = `http://127.0.0.1:${port}`;
  await Deno.writeTextFile(
    join(dir, "cluster.json"),
    JSON.stringify([{ node_id: "node-1", rpc_url: `http://127.0.0.1:${rpc}`, api_url: api }]),
  );
  const node = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      _MAIN,
      "--id",
      "node-1",
      "--cluster-config-path",
      join(dir, "cluster.json"),
      "--data-dir",
      join(dir, "node-1"),
    ],
    env: cleanEnv({ NO_COLOR: "1" }),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let log = "";
  const read = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) log += chunk;
  };
  const reading = Promise.all([read(node.stdout), read(node.stderr)]);
  try {
    // The warning goes to stderr, the listening line to stdout: each is waited for.
    const warning = new RegExp(
      `WARN .*The API port ${port} \\(api_url ${api}\\) is on the Fetch Standard's`,
    );
    await waitFor(() => log.includes("REST API listening") && warning.test(log), {
      deadlineMs: 30_000,
      message: () => `the node to start and warn:\n${log}`,
    });
    // It serves there (an HTTP client without the list reaches it)...
    const health = await new Deno.Command("curl", { args: ["-sf", `${api}/health`] }).output()
      .catch(() => null);
    if (health !== null) assert.ok(health.success, "curl reaches the node");
    // ...but the client cannot, and says why in one line, as any endpoint it cannot reach.
    const got = await raftkv(["get", "a", "--endpoints", api]);
    _expect(got, 4, "get from a refused port");
    assert.equal(got.stderr.trim().split("\n").length, 1, got.stderr);
    assert.match(got.stderr, new RegExp(`port ${port} is on the Fetch Standard's list of "bad`));
    assert.doesNotMatch(got.stderr, /Requests to port|\n\s+at /);
    // Among other endpoints it is skipped, as one that is down.
    const other = await raftkv(["get", "a", "--endpoints", `${api},${_deadEndpoints(1)[0]}`]);
    _expect(other, 4, "get with no reachable endpoint");
  } finally {
    node.kill("SIGTERM");
    await node.status;
    await reading;
    await Deno.remove(dir, { recursive: true });
  }
});
