/**
 * The peer port of a real node process under abuse:
 *
 * - it runs out of file descriptors (a node started under a low `ulimit -n` whose peer port gets
 *   more connections than it has descriptors). With mutual TLS, Deno's `node:net` server stops
 *   accepting for good, without an error, after one `accept` fails with EMFILE; the node must
 *   notice and listen again, so that once the connections are gone a new peer connection is
 *   accepted and answered. Without TLS (`Deno.serve`, h2c), the server stops with an error and
 *   closes its listener (new connections are refused); the node must listen again likewise.
 * - with mutual TLS, many connections with a certificate of the cluster CA whose CN is no member
 *   open a request, get their 403 and close (with GOAWAY). Deno's nghttp2 binding could abort the
 *   node (`free(): invalid pointer`, a failed assertion in `find_stream_on_goaway_func`, SIGSEGV);
 *   the node must keep running and keep answering its peers.
 * - the connections that are ended after a refusal for that reason still get their answers: a
 *   member the node does not know yet gets its 403 (and the node asks the others for the members),
 *   a removed member its 410.
 *
 * Run as a program with `--churn`, this file is the client of the churn test (in a process of
 * its own: a crash of the client must not take the test runner down).
 */

import assert from "node:assert/strict";
import http2 from "node:http2";
import { fileURLToPath } from "node:url";
import { type Certificates, makeCertificates } from "../testing/certs.ts";
import {
  cleanEnv,
  DEFAULT_NODE_FLAGS,
  type ProcessCluster,
  startCluster,
  waitFor,
} from "../testing/harness.ts";
import { readLines } from "../testing/read_lines.ts";
import { attempt } from "../testing/chaos_lib.ts";
import { handLead, waitApplied, waitMembers } from "../testing/membership.ts";
import { H2Client } from "../src/transport/h2_client.ts";
import { FROM_HEADER, MEMBERS_PATH } from "../src/transport/http_transport.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

/**
 * 200 if `target` answers `POST /raft/members` sent on a new connection by another member (with
 * its certificate, or in cleartext if `certs` is null), else what went wrong.
 */
async function askMembers(
  cluster: ProcessCluster,
  certs: Certificates | null,
  target: string,
  timeoutMs: number,
): Promise<number | string> {
  const from = cluster.ids.find((id) => id !== target)!;
  const read = (path: string) => Deno.readTextFileSync(path);
  const client = new H2Client(
    certs === null ? {} : {
      tls: {
        ca: read(certs.ca),
        cert: read(certs.node(from).cert),
        key: read(certs.node(from).key),
      },
    },
  );
  try {
    const res = await client.fetch(`${cluster.rpc(target)}${MEMBERS_PATH}`, {
      method: "POST",
      headers: { [FROM_HEADER]: from },
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    return res.status === 200 ? 200 : `${res.status} ${text}`;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  } finally {
    client.close();
  }
}

/** How many file descriptors process `pid` has open (Linux). */
function openFiles(pid: number): number {
  let count = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) count++;
  return count;
}

/**
 * Starts `id` of `cluster` again (it must be stopped) under `ulimit -n limit`, with the flags the
 * harness gives it (the peer TLS ones if `certs`); its output is collected in `lines`.
 */
function startLimited(
  cluster: ProcessCluster,
  certs: Certificates | null,
  id: string,
  limit: number,
  lines: string[],
) {
  const args = [
    "run",
    "--allow-all",
    MAIN,
    "--id",
    id,
    "--cluster-config-path",
    cluster.configPath,
    "--data-dir",
    cluster.node(id).dataDir,
    ...DEFAULT_NODE_FLAGS,
    "--cluster-token",
    cluster.clusterToken,
    ...(certs === null ? [] : [
      "--peer-cert",
      certs.node(id).cert,
      "--peer-key",
      certs.node(id).key,
      "--peer-ca",
      certs.ca,
    ]),
  ];
  const child = new Deno.Command("bash", {
    args: ["-c", `ulimit -n ${limit} && exec "$0" "$@"`, Deno.execPath(), ...args],
    env: cleanEnv(),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const line of readLines(stream)) lines.push(line);
  };
  const output = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited: Deno.CommandStatus | null = null;
  const status = child.status.then((s) => exited = s);
  return {
    pid: child.pid,
    running: () => exited === null,
    async stop() {
      if (exited === null) child.kill("SIGKILL");
      await status;
      await output.catch(() => {});
    },
  };
}

/**
 * Starts node-1 of a cluster of three (with mutual TLS if `certs`) again under a low `ulimit -n`,
 * gives its peer port more silent connections than it has descriptors, checks that it is out of
 * them and answers no new peer connection, closes the connections, and waits for a new peer
 * connection to be answered. `stopped` is what the node must have logged when its listener
 * stopped accepting.
 */
async function exhaustPeerPort(certs: Certificates | null, stopped: string): Promise<void> {
  await using cluster = await startCluster({ size: 3, ...(certs === null ? {} : { tls: certs }) });
  await cluster.waitForLeader(20_000);
  // node-1 again, with few file descriptors.
  await cluster.kill("node-1");
  const limit = 192;
  const lines: string[] = [];
  const node = startLimited(cluster, certs, "node-1", limit, lines);
  const logs = () => `node-1 output:\n${lines.slice(-40).join("\n")}`;
  const conns: Deno.TcpConn[] = [];
  try {
    await waitFor(async () => (await askMembers(cluster, certs, "node-1", 1000)) === 200, {
      deadlineMs: 30_000,
      message: () => `node-1 to answer its peers\n${logs()}`,
    });
    // More connections than it has descriptors: silent ones, which it holds (with TLS, until
    // their handshake times out: 10 s; without, until they close). With TLS the ones it cannot
    // accept wait in the listen queue; without, the listener is closed and they are refused (or
    // reset, when it closed with them in its queue).
    const port = cluster.node("node-1").rpcPort;
    for (let i = 0; i < limit + 40; i++) {
      try {
        conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch (err) {
        const { ConnectionRefused, ConnectionReset } = Deno.errors;
        if (!(err instanceof ConnectionRefused || err instanceof ConnectionReset)) throw err;
      }
    }
    await waitFor(() => openFiles(node.pid) >= limit - 1, {
      deadlineMs: 8_000,
      message: () => `node-1 to run out of descriptors (${openFiles(node.pid)} of ${limit})`,
    });
    const meanwhile = await askMembers(cluster, certs, "node-1", 1000);
    assert.notEqual(
      meanwhile,
      200,
      `node-1 answered a new peer connection while out of descriptors\n${logs()}`,
    );
    for (const conn of conns.splice(0)) conn.close();
    await waitFor(() => openFiles(node.pid) < limit / 2, {
      deadlineMs: 15_000,
      message: () => `node-1 to close the connections (${openFiles(node.pid)} open)`,
    });
    // Without a listener that listens again, no new connection is ever accepted.
    let last: number | string = "nothing yet";
    await waitFor(async () => (last = await askMembers(cluster, certs, "node-1", 2000)) === 200, {
      deadlineMs: 20_000,
      message: () => `a new peer connection to be answered by node-1 (last: ${last})\n${logs()}`,
    });
    assert.ok(node.running(), `node-1 stopped\n${logs()}`);
    assert.ok(lines.some((l) => l.includes(stopped)), logs());
  } finally {
    for (const conn of conns) conn.close();
    await node.stop();
  }
}

Deno.test({
  name:
    "a node whose peer port ran out of file descriptors accepts mutual-TLS peers again once they are free",
  ignore: Deno.build.os !== "linux",
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-peer-fds-" });
  try {
    const certs = await makeCertificates(dir, { nodes: ["node-1", "node-2", "node-3"] });
    await exhaustPeerPort(certs, "The TLS peer server stopped accepting connections");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "a node whose peer port without TLS ran out of file descriptors accepts peers again once they are free",
  ignore: Deno.build.os !== "linux",
}, async () => {
  await exhaustPeerPort(null, "peer RPC stopped accepting connections (");
});

/**
 * The churn client: `--churn <url> <seconds> <parallel> <ca> <cert> <key> <from>`. Keeps
 * `parallel` connections going for `seconds`: each completes TLS with the certificate, sends one
 * `POST /raft/members`, reads the answer and closes its session (with GOAWAY). Prints how the
 * connections ended, as JSON.
 */
async function churn(args: string[]): Promise<void> {
  const [url, seconds, parallel, caFile, certFile, keyFile, from] = args;
  const ca = Deno.readTextFileSync(caFile!);
  const cert = Deno.readTextFileSync(certFile!);
  const key = Deno.readTextFileSync(keyFile!);
  const outcomes: Record<string, number> = {};
  const end = performance.now() + Number(seconds) * 1000;
  const one = () =>
    new Promise<string>((resolve) => {
      const session = http2.connect(url!, { ca, cert, key });
      const timer = setTimeout(() => done("timeout"), 5000);
      const done = (outcome: string) => {
        clearTimeout(timer);
        resolve(outcome);
        session.destroy();
      };
      session.on("error", (e: Error & { code?: string }) => done(`error ${e.code ?? e.message}`));
      session.on("close", () => done("closed"));
      session.on("connect", () => {
        try {
          const req = session.request({
            ":method": "POST",
            ":path": MEMBERS_PATH,
            [FROM_HEADER]: from!,
          });
          req.on("response", (headers) => {
            req.resume();
            req.on("end", () => done(`HTTP ${headers[":status"]}`));
          });
          req.on("error", () => done("stream error"));
          req.end();
        } catch {
          done("request threw");
        }
      });
    });
  await Promise.all(
    Array.from({ length: Number(parallel) }, async () => {
      while (performance.now() < end) {
        const outcome = await one();
        outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
      }
    }),
  );
  console.log(JSON.stringify(outcomes));
}

if (import.meta.main && Deno.args[0] === "--churn") {
  await churn(Deno.args.slice(1));
  Deno.exit(0);
}

Deno.test("a node keeps running and answering its peers through a churn of connections from a certificate of the cluster CA that names no member", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-peer-churn-" });
  try {
    const certs = await makeCertificates(dir, {
      nodes: ["node-1", "node-2", "node-3", "stranger"],
    });
    await using cluster = await startCluster({ size: 3, tls: certs });
    const leader = await cluster.waitForLeader(20_000);
    const target = cluster.ids.find((id) => id !== leader)!;
    // A separate process: the client's own node:http2 must not take the test runner down.
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        fileURLToPath(import.meta.url),
        "--churn",
        cluster.rpc(target),
        "12",
        "20",
        certs.ca,
        certs.node("stranger").cert,
        certs.node("stranger").key,
        "stranger",
      ],
      env: cleanEnv(),
      clearEnv: true,
      stdin: "null",
    }).output();
    const printed = new TextDecoder().decode(output.stdout).trim();
    const stopped = cluster.ids.filter((id) => !cluster.isRunning(id));
    assert.deepEqual(stopped, [], `nodes stopped: ${printed}\n${cluster.formatLogs(stopped, 20)}`);
    const outcomes = JSON.parse(printed.split("\n").at(-1)!) as Record<string, number>;
    // Every connection got its 403 (the churn ran against a live node throughout).
    const answered = outcomes["HTTP 403"] ?? 0;
    assert.ok(answered >= 500, `too few connections answered: ${printed}`);
    assert.deepEqual(Object.keys(outcomes), ["HTTP 403"], printed);
    // The node answers its peers: a members query on a new connection, and a write replicates.
    assert.equal(await askMembers(cluster, certs, target, 5000), 200);
    const res = await cluster.request(leader, "PUT", "/v1/data/after-churn", { v: "1" });
    assert.equal(res.status, 200, res.text);
    await waitFor(async () => {
      const read = await cluster.request(target, "GET", "/v1/data/after-churn?consistency=stale");
      return read.status === 200;
    }, { deadlineMs: 10_000, message: `${target} to apply a write after the churn` });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The members `via` lists (`GET /v1/members`), or null if it does not answer. */
Deno.test("over mutual TLS, a member the node does not know yet still gets its 403 (the node then asks for the members), and a removed member its 410", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-peer-refusals-" });
  try {
    const certs = await makeCertificates(dir, {
      nodes: ["node-1", "node-2", "node-3", "node-4"],
    });
    await using cluster = await startCluster({ size: 3, tls: certs });
    const first = await cluster.waitForLeader(20_000);
    const [away, gone] = cluster.ids.filter((id) => id !== first) as [string, string];

    // `away` is down while node-4 joins and takes the lead: it does not know node-4.
    assert.equal(await cluster.stop(away), 0);
    await cluster.addNode("node-4");
    await cluster.start("node-4", { flags: ["--join", cluster.api(first)] });
    await waitMembers(
      cluster,
      () => first,
      (rows) => rows.some((m) => m.node_id === "node-4" && m.role === "voter"),
      "node-4 to be a voter",
    );
    await handLead(cluster, first, "node-4");
    for (let i = 1; i <= 3; i++) {
      const r = await attempt(`${cluster.api("node-4")}/v1/data/k`, "PUT", { v: `${i}` }, 5000);
      assert.ok(r.kind === "answer" && r.status === 200, JSON.stringify(r));
    }
    // Back, it refuses node-4 (403, and the connection is ended), asks the others for the
    // members, and catches up under node-4.
    await cluster.start(away);
    await waitApplied(cluster, away, "k", "3", {
      deadlineMs: 20_000,
      message: () => `${away} to apply the writes\n${cluster.formatLogs([away, "node-4"], 30)}`,
    });
    const logs = cluster.logs(away).join("\n");
    assert.match(logs, /Refused a peer request with 403 \(sender "node-4"\)/);
    assert.match(logs, /lists members this node does not know/);
    assert.equal((await cluster.status(away))?.leader?.id, "node-4");

    // `gone` is removed while it is down; restarted, it hears 410 and learns it.
    assert.equal(await cluster.stop(gone), 0);
    const removed = await attempt(
      `${cluster.api("node-4")}/v1/members/${gone}`,
      "DELETE",
      undefined,
      10_000,
    );
    assert.ok(removed.kind === "answer" && removed.status === 200, JSON.stringify(removed));
    await waitMembers(
      cluster,
      () => "node-4",
      (rows) => !rows.some((m) => m.node_id === gone && m.role === "voter"),
      `${gone} to be removed`,
    );
    await cluster.start(gone);
    await waitFor(async () => (await cluster.status(gone))?.membership === "removed", {
      deadlineMs: 20_000,
      message: () => `${gone} to learn it was removed\n${cluster.formatLogs([gone], 30)}`,
    });
    assert.ok(
      cluster.logs(gone).some((l) => l.includes("was removed from the cluster while it was away")),
      cluster.formatLogs([gone], 30),
    );
    // Nobody fell over: every node still runs, and the cluster takes writes.
    assert.deepEqual(cluster.ids.filter((id) => !cluster.isRunning(id)), []);
    const last = await attempt(`${cluster.api("node-4")}/v1/data/k`, "PUT", { v: "4" }, 5000);
    assert.ok(last.kind === "answer" && last.status === 200, JSON.stringify(last));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
