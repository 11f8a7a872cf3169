/**
 * Client security with real node processes: bearer tokens and roles on every node, forwarding
 * that carries the caller authorised by the follower, and the quick start over HTTPS with the
 * real `curl` and the test CA.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { PERMISSION_FLAGS } from "../main.ts";
import { X509Certificate } from "node:crypto";
import { makeCertificates, randomToken, servedCertificate } from "../testing/certs.ts";
import { parseSamples, promtoolCheck, sample } from "../testing/prometheus.ts";
import { readSse } from "../src/util/sse.ts";
import {
  cleanEnv,
  type HttpResult,
  type ProcessCluster,
  runCommand,
  startCluster,
  waitFor,
} from "../testing/harness.ts";

/** Writes a tokens file with a read, a write and an admin token; returns the tokens. */
async function writeTokens(dir: string) {
  const tokens = { read: randomToken(), write: randomToken(), admin: randomToken() };
  const path = join(dir, "tokens.json");
  await Deno.writeTextFile(
    path,
    JSON.stringify([
      { token: tokens.read, role: "read", name: "reader" },
      { token: tokens.write, role: "write", name: "writer" },
      { token: tokens.admin, role: "admin", name: "ops" },
    ]),
  );
  return { path, tokens };
}

/**
 * Writes the tokens file again with the admin token and a new write token only (the read and
 * write tokens revoked); returns the new token.
 */
async function rewriteTokens(path: string, admin: string): Promise<string> {
  const added = randomToken();
  await Deno.writeTextFile(
    path,
    JSON.stringify([
      { token: admin, role: "admin", name: "ops" },
      { token: added, role: "write", name: "deployer" },
    ]),
  );
  return added;
}

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

/** Asserts a JSON answer of `status`; returns its body. */
function expectJson(res: HttpResult, status: number, what: string): Record<string, unknown> {
  assert.equal(res.status, status, `${what}: ${res.status} ${res.text}`);
  assert.equal(res.headers.get("content-type"), "application/json", what);
  assert.ok(typeof res.json === "object" && res.json !== null, `${what}: ${res.text}`);
  return res.json as Record<string, unknown>;
}

/** The node's applied index, read with `token`. */
async function applied(cluster: ProcessCluster, id: string, token: string): Promise<number> {
  const res = await cluster.request(id, "GET", "/v1/status", undefined, { headers: bearer(token) });
  return Number((res.json as { applied_index: number }).applied_index);
}

Deno.test("with tokens, every node refuses what a caller's role does not allow, and a follower forwards only authorised writes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-auth-" });
  try {
    const { path, tokens } = await writeTokens(dir);
    await using cluster = await startCluster({
      size: 3,
      nodeFlags: ["--tokens-file", path],
      token: tokens.read,
    });
    const leader = await cluster.waitForLeader();
    const [follower, other] = cluster.ids.filter((id) => id !== leader) as [string, string];

    // No token, or an unknown one: 401 JSON with WWW-Authenticate, on followers and leader.
    for (const id of cluster.ids) {
      for (
        const headers of [{}, bearer(randomToken()), { authorization: `Basic ${btoa("a:b")}` }]
      ) {
        for (
          const [method, path, body] of [
            ["GET", "/v1/data/a", undefined],
            ["POST", "/v1/data", { k: "a", v: "x" }],
            ["GET", "/v1/status", undefined],
            ["GET", "/v1/snapshot", undefined],
          ] as const
        ) {
          const res = await cluster.request(id, method, path, body, { headers });
          const json = expectJson(res, 401, `${id} ${method} ${path} ${JSON.stringify(headers)}`);
          assert.equal(typeof json.error, "string");
          assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="raftkv"');
        }
      }
      // The probes stay open.
      assert.equal((await cluster.request(id, "GET", "/health")).status, 200);
      // Ready once it has applied what it committed (a moment after an election on a busy machine).
      await waitFor(async () => (await cluster.request(id, "GET", "/ready")).status === 200, {
        deadlineMs: 10_000,
        message: `${id} to answer GET /ready with 200 without a token`,
      });
    }

    // A write with a write token through a follower is forwarded and applied.
    const put = await cluster.request(follower, "POST", "/v1/data", { k: "a", v: "1" }, {
      headers: bearer(tokens.write),
    });
    assert.deepEqual(_kv(expectJson(put, 200, "forwarded write")), { k: "a", v: "1" });
    assert.equal(put.headers.get("x-raftkv-forwarded-to"), leader);
    // A read token reads it, through the other follower (forwarded, linearizable) and stale.
    for (const query of ["", "?consistency=stale"]) {
      await waitFor(async () => {
        const got = await cluster.request(other, "GET", `/v1/data/a${query}`, undefined, {
          headers: bearer(tokens.read),
        });
        return got.status === 200 && (got.json as { v?: string }).v === "1";
      }, { message: `${other} to read a=1${query}` });
    }

    // Refused writes through a follower: nothing is forwarded or applied.
    const before = await applied(cluster, leader, tokens.read);
    const refusals: [string, string, unknown, Record<string, string>, number][] = [
      ["POST", "/v1/data", { k: "b", v: "1" }, bearer(tokens.read), 403],
      ["PUT", "/v1/data/b", { v: "1" }, bearer(tokens.read), 403],
      ["DELETE", "/v1/data/a", undefined, bearer(tokens.read), 403],
      ["POST", "/v1/data", { k: "b", v: "1" }, {}, 401],
      ["DELETE", "/v1/data/a", undefined, bearer(randomToken()), 401],
    ];
    for (const [method, path, body, headers, status] of refusals) {
      const res = await cluster.request(follower, method, path, body, { headers });
      const json = expectJson(res, status, `${follower} ${method} ${path}`);
      if (status === 403) {
        assert.match(String(json.error), /the token "reader" has the role read; .* needs write/);
      }
      assert.equal(res.headers.get("x-raftkv-forwarded-to"), null, "not forwarded");
    }
    // A write the leader commits after them proves the refusals would have been applied by now.
    const marker = await cluster.request(leader, "PUT", "/v1/data/c", { v: "1" }, {
      headers: bearer(tokens.admin),
    });
    expectJson(marker, 200, "marker write");
    assert.equal(await applied(cluster, leader, tokens.read), before + 1, "only the marker");
    for (const id of cluster.ids) {
      await waitFor(async () => {
        const c = await cluster.request(id, "GET", "/v1/data/c?consistency=stale", undefined, {
          headers: bearer(tokens.read),
        });
        return c.status === 200;
      }, { message: `${id} to apply the marker` });
      const a = await cluster.request(id, "GET", "/v1/data/a?consistency=stale", undefined, {
        headers: bearer(tokens.read),
      });
      assert.deepEqual(_kv(a.json), { k: "a", v: "1" }, `${id}: a was not deleted`);
      const b = await cluster.request(id, "GET", "/v1/data/b?consistency=stale", undefined, {
        headers: bearer(tokens.read),
      });
      assert.equal(b.status, 404, `${id}: b was never written`);
    }

    // Only admin gets the snapshot.
    for (const id of [leader, follower]) {
      for (const token of [tokens.read, tokens.write]) {
        const res = await cluster.request(id, "GET", "/v1/snapshot", undefined, {
          headers: bearer(token),
        });
        const json = expectJson(res, 403, `${id} snapshot`);
        assert.match(String(json.error), /this request needs admin$/);
      }
      const snap = await cluster.request(id, "GET", "/v1/snapshot", undefined, {
        headers: bearer(tokens.admin),
      });
      assert.equal(snap.status, 200);
      assert.equal(snap.headers.get("content-type"), "application/octet-stream");
      assert.ok(snap.text.length > 0);
    }

    // Refusals are logged by token name; no token ever reaches a log.
    const logs = cluster.ids.flatMap((id) => cluster.logs(id)).join("\n");
    assert.match(logs, /-> 403: the token "reader" has the role read/);
    for (const token of Object.values(tokens)) assert.ok(!logs.includes(token), "a token leaked");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SIGHUP reloads the tokens file: revoked tokens are refused, their watch streams and blocking reads end; a bad file changes nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-reload-" });
  const watching = new AbortController();
  try {
    const { path, tokens } = await writeTokens(dir);
    await using cluster = await startCluster({
      size: 1,
      // SIGHUP alone: the node does not look at its files by itself.
      nodeFlags: ["--tokens-file", path, "--reload-interval", "0"],
      token: tokens.admin,
    });
    const id = await cluster.waitForLeader();
    const put = (token: string, v: string) =>
      cluster.request(id, "POST", "/v1/data", { k: "a", v }, { headers: bearer(token) });
    expectJson(await put(tokens.write, "1"), 200, "a write before the reload");
    // A watch held open with the read token.
    const res = await fetch(`${cluster.api(id)}/v1/watch?key=a&from=1`, {
      headers: bearer(tokens.read),
      signal: watching.signal,
    });
    assert.equal(res.status, 200);
    const events = readSse(res.body!);
    const first = await events.next();
    assert.equal(JSON.parse(first.value!.data).v, "1");
    // And a blocking read for a change that does not come, held until the node has it.
    const blocked = fetch(`${cluster.api(id)}/v1/data/b?index=1000000&wait=60s`, {
      headers: bearer(tokens.read),
      signal: watching.signal,
    });
    await waitFor(async () => {
      const metrics = await cluster.request(id, "GET", "/metrics", undefined, {
        headers: bearer(tokens.admin),
      });
      // A waiting read holds no request slot; it counts as a blocking read.
      return /^raftkv_blocking_reads [1-9]\d*$/m.test(metrics.text);
    }, { deadlineMs: 5_000, message: "the blocking read to be in flight" });

    // The file now revokes the read and write tokens and adds another.
    const added = await rewriteTokens(path, tokens.admin);
    cluster.signal(id, "SIGHUP");
    await waitFor(async () => (await put(added, "2")).status === 200, {
      deadlineMs: 10_000,
      message: "the added token to be taken",
    });
    expectJson(await put(tokens.write, "3"), 401, "a revoked token");
    const end = await events.next();
    assert.equal(end.value?.event, "error", JSON.stringify(end.value));
    assert.match(end.value!.data, /no longer allows it \(the node's tokens were reloaded\)/);
    assert.equal((await events.next()).done, true, "the revoked watch stream ended");
    const unblocked = await blocked;
    assert.equal(unblocked.status, 401, "the revoked blocking read ends at once");
    assert.match((await unblocked.json()).error, /no longer allows it/);
    await waitFor(
      () =>
        cluster.logs(id).some((l) =>
          l.includes(`SIGHUP: reloaded 2 tokens from --tokens-file ${JSON.stringify(path)}`) &&
          l.includes("ended 2 requests held on a revoked token (watch streams, blocking reads)")
        ),
      { deadlineMs: 5_000, message: "the reload to be logged" },
    );

    // A file that does not parse changes nothing, and says so.
    await Deno.writeTextFile(path, "[{");
    cluster.signal(id, "SIGHUP");
    await waitFor(
      () => cluster.logs(id).some((l) => l.includes("SIGHUP: could not reload the tokens")),
      { deadlineMs: 10_000, message: "the failed reload to be logged" },
    );
    expectJson(await put(added, "4"), 200, "the token in force after a failed reload");
    expectJson(await put(tokens.write, "5"), 401, "still revoked after a failed reload");
    assert.ok(cluster.isRunning(id), "SIGHUP does not stop the node");
    const logs = cluster.logs(id).join("\n");
    for (const token of [...Object.values(tokens), added]) {
      assert.ok(!logs.includes(token), "a token leaked");
    }
  } finally {
    watching.abort();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a SIGHUP while a node starts does not stop it: the node reloads its files once it runs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-early-hup-" });
  // The cluster file is a pipe (as `--cluster-config-path <(...)` gives): the node reads it at
  // start, and waits there until the test writes it, with its listeners not added yet.
  const pipe = join(dir, "cluster.pipe");
  const made = await runCommand("mkfifo", [pipe], cleanEnv(), dir);
  assert.equal(made.code, 0, made.stderr);
  let opening: Promise<Deno.FsFile> | undefined;
  let writer: Deno.FsFile | null = null;
  try {
    const { path, tokens } = await writeTokens(dir);
    await using cluster = await startCluster({
      size: 1,
      nodeFlags: ["--tokens-file", path, "--reload-interval", "0", "--cluster-config-path", pipe],
      token: tokens.admin,
      waitForHealth: false,
    });
    const [id] = cluster.ids;
    // Opening the pipe to write it returns once the node has opened it to read it.
    opening = Deno.open(pipe, { write: true });
    writer = await opening;
    cluster.signal(id!, "SIGHUP");
    await writer.write(new TextEncoder().encode(await Deno.readTextFile(cluster.configPath)));
    writer.close();
    writer = null;
    opening = undefined;
    await cluster.waitForHealth(id!);
    await waitFor(
      () =>
        cluster.logs(id!).some((l) =>
          /SIGHUP( while starting)?: reloaded 3 tokens from --tokens-file/.test(l)
        ),
      { deadlineMs: 10_000, message: "the held SIGHUP to reload the tokens file" },
    );
    assert.ok(cluster.isRunning(id!), "the SIGHUP did not stop the node");
    await cluster.waitForLeader();
    const put = await cluster.request(id!, "POST", "/v1/data", { k: "a", v: "1" }, {
      headers: bearer(tokens.write),
    });
    expectJson(put, 200, "a write after the reload");
  } finally {
    if (opening !== undefined && writer === null) {
      // The node ended before it opened the pipe: open its other end, so that the test's ends.
      const reader = await Deno.open(pipe, { read: true });
      writer = await opening;
      reader.close();
    }
    writer?.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a 3-node HTTPS cluster with tokens runs the quick start with curl --cacert", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-tls-" });
  try {
    const certs = await makeCertificates(dir, { nodes: ["node-1", "node-2", "node-3"] });
    const { path, tokens } = await writeTokens(dir);
    await using cluster = await startCluster({
      size: 3,
      apiCerts: certs,
      nodeFlags: ["--tokens-file", path],
      token: tokens.read,
    });
    await cluster.waitForLeader();
    const [n1, n2, n3] = cluster.ids.map((id) => cluster.api(id)) as [string, string, string];
    assert.match(n1, /^https:\/\/127\.0\.0\.1:\d+$/);
    const curl = async (args: string[]) => {
      const out = await runCommand("curl", ["-sS", "--max-time", "10", ...args], cleanEnv(), dir);
      return out;
    };
    const auth = (token: string) => ["-H", `Authorization: Bearer ${token}`];
    const ca = ["--cacert", certs.ca];

    const put = await curl([
      ...ca,
      ...auth(tokens.write),
      "-X",
      "POST",
      "-H",
      "Content-Type: application/json",
      "-d",
      '{"k":"a","v":"1"}',
      `${n1}/v1/data`,
    ]);
    assert.equal(put.code, 0, put.stderr);
    const written = JSON.parse(put.stdout);
    assert.deepEqual([written.k, written.v, typeof written.index], ["a", "1", "number"]);
    assert.ok(written.index > 0);

    const got = await curl([...ca, ...auth(tokens.read), `${n2}/v1/data/a`]);
    assert.equal(got.code, 0, got.stderr);
    assert.deepEqual(_kv(JSON.parse(got.stdout)), { k: "a", v: "1" });

    const del = await curl([...ca, ...auth(tokens.write), "-X", "DELETE", `${n3}/v1/data/a`]);
    assert.equal(del.code, 0, del.stderr);
    assert.deepEqual({ ...JSON.parse(del.stdout), index: 0 }, { k: "a", deleted: true, index: 0 });

    const gone = await curl([
      ...ca,
      ...auth(tokens.read),
      "-w",
      "\n%{http_code}",
      `${n1}/v1/data/a`,
    ]);
    assert.equal(gone.code, 0, gone.stderr);
    const [body, status] = gone.stdout.split("\n");
    assert.equal(status, "404");
    assert.deepEqual(JSON.parse(body ?? ""), { error: "key not found", k: "a" });

    // The status names https leaders.
    const status1 = await curl([...ca, ...auth(tokens.read), `${n1}/v1/status`]);
    assert.match(JSON.parse(status1.stdout).leader.api_url, /^https:\/\//);

    // Without the token: 401; without the CA, curl refuses the certificate (exit 60); plain
    // HTTP to the TLS port gets no answer.
    const anonymous = await curl([...ca, "-w", "\n%{http_code}", `${n2}/v1/data/a`]);
    assert.equal(anonymous.stdout.split("\n").at(-1), "401");
    const untrusted = await curl([...auth(tokens.read), `${n2}/v1/data/a`]);
    assert.equal(untrusted.code, 60, untrusted.stderr);
    const plain = await curl([...auth(tokens.read), n2.replace("https:", "http:") + "/health"]);
    assert.notEqual(plain.code, 0);

    // The container healthcheck reaches the HTTPS API with the CA.
    const port = String(cluster.node("node-1").apiPort);
    const health = await runCommand(
      Deno.execPath(),
      ["run", "--no-prompt", ...PERMISSION_FLAGS, join(Deno.cwd(), "main.ts"), "healthcheck"],
      cleanEnv({
        RAFTKV_API_PORT: port,
        RAFTKV_API_CERT: certs.node("node-1").cert,
        RAFTKV_HEALTHCHECK_CACERT: certs.ca,
      }),
      dir,
    );
    assert.equal(health.code, 0, health.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The key and value of an answer (answers also carry the key's revisions). */
function _kv(answer: unknown): { k: unknown; v: unknown } {
  const { k, v } = answer as { k?: unknown; v?: unknown };
  return { k, v };
}

Deno.test("changed files are loaded again without a signal: renewed certificates and a new tokens file take over on every node; a broken file changes nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-file-reload-" });
  try {
    const nodes = ["node-1", "node-2", "node-3"];
    await Deno.mkdir(join(dir, "peer"));
    await Deno.mkdir(join(dir, "api"));
    const peerCerts = await makeCertificates(join(dir, "peer"), { nodes });
    const apiCerts = await makeCertificates(join(dir, "api"), { nodes });
    const { path, tokens } = await writeTokens(dir);
    await using cluster = await startCluster({
      size: 3,
      tls: peerCerts,
      apiCerts,
      token: tokens.admin,
      nodeFlags: ["--tokens-file", path, "--reload-interval", "200ms"],
    });
    const read = (file: string) => Deno.readTextFileSync(file);
    const fingerprint = (file: string) => new X509Certificate(read(file)).fingerprint256;
    const port = (url: string) => Number(new URL(url).port);
    const client = {
      cert: read(peerCerts.node("node-1").cert),
      key: read(peerCerts.node("node-1").key),
    };
    const served = (id: string) =>
      Promise.all([
        servedCertificate(port(cluster.api(id)), read(apiCerts.ca), null),
        servedCertificate(port(cluster.rpc(id)), read(peerCerts.ca), client),
      ]).catch((e: Error) => [e.message, e.message]);
    const leader = await cluster.waitForLeader(20_000);
    const follower = nodes.find((id) => id !== leader)!;
    const put = (token: string, k: string) =>
      cluster.request(follower, "PUT", `/v1/data/${k}`, { v: k }, { headers: bearer(token) });
    expectJson(await put(tokens.write, "before"), 200, "a forwarded write before the change");
    const before = await served("node-2");

    // Every certificate renewed in place, and a tokens file that revokes the write token and adds
    // another; no signal.
    await makeCertificates(join(dir, "api"), { nodes, renew: true });
    await makeCertificates(join(dir, "peer"), { nodes, renew: true });
    const added = await rewriteTokens(path, tokens.admin);
    for (const id of nodes) {
      const wanted = [fingerprint(apiCerts.node(id).cert), fingerprint(peerCerts.node(id).cert)];
      assert.notDeepEqual(wanted, before, "the certificates were renewed");
      let last: string[] = [];
      await waitFor(async () => {
        last = await served(id);
        return last[0] === wanted[0] && last[1] === wanted[1];
      }, {
        deadlineMs: 10_000,
        intervalMs: 100,
        message: () => `${id} to serve its renewed certificates (it serves ${last.join(", ")})`,
      });
    }
    await waitFor(async () => (await put(added, "added")).status === 200, {
      deadlineMs: 10_000,
      message: "the added token to be taken (forwarded over the renewed peer certificates)",
    });
    expectJson(await put(tokens.write, "revoked"), 401, "a revoked token");
    const count = (id: string, text: string) =>
      cluster.logs(id).filter((l) => l.includes(text)).length;
    for (const id of nodes) {
      await waitFor(
        () =>
          count(id, `files changed: reloaded the peer TLS files: CN=${id}`) === 1 &&
          count(id, `files changed: reloaded the API's certificate: CN=${id}`) === 1 &&
          count(id, `files changed: reloaded 2 tokens from --tokens-file`) === 1,
        {
          deadlineMs: 5_000,
          message: () => `${id} to log each reload:\n${cluster.formatLogs([id])}`,
        },
      );
    }

    // A broken file (a renewal tool that wrote garbage) changes nothing, and says so. It replaces
    // the certificate at once (a rename), as the renewals above do: a file written in place could
    // be caught half written by a loaded machine's looks (a new key beside the old certificate),
    // refused and logged in its turn, and the counts here would depend on the timing.
    const inForce = await served(leader);
    const cert = apiCerts.node(leader).cert;
    await Deno.writeTextFile(`${cert}.tmp`, "not a certificate\n");
    await Deno.rename(`${cert}.tmp`, cert);
    await waitFor(
      () => count(leader, "files changed: could not reload the TLS files") === 1,
      {
        deadlineMs: 10_000,
        message: () => `the refused reload to be logged:\n${cluster.formatLogs([leader])}`,
      },
    );
    assert.deepEqual(await served(leader), inForce);
    expectJson(await put(added, "after"), 200, "a write after the refused reload");
    // The loads, counted (read with a real Prometheus parser).
    const metrics = await cluster.request(leader, "GET", "/metrics", undefined, {
      headers: bearer(tokens.admin),
    });
    const verdict = await promtoolCheck(metrics.text);
    assert.ok(verdict.ok, verdict.output);
    const samples = parseSamples(metrics.text);
    const reloads = (what: string, result: string) =>
      sample(samples, `raftkv_reloads_total{what="${what}",result="${result}"}`);
    assert.deepEqual(
      [
        reloads("tokens", "ok"),
        reloads("peer", "ok"),
        reloads("api", "ok"),
        reloads("api", "failed"),
        // At 0 from the start, not absent: an alert on their increase fires on a first failure.
        reloads("tokens", "failed"),
        reloads("peer", "failed"),
      ],
      [1, 1, 1, 1, 0, 0],
    );
    // Each change was loaded once, and nothing else was: the files held still since.
    for (const id of nodes) {
      assert.equal(count(id, "files changed: reloaded the API's certificate"), 1, id);
      assert.equal(count(id, "files changed: reloaded the peer TLS files"), 1, id);
    }
    const logs = nodes.map((id) => cluster.logs(id).join("\n")).join("\n");
    for (const token of [...Object.values(tokens), added]) {
      assert.ok(!logs.includes(token), "a token leaked");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
