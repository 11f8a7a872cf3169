import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import {
  buildClusterConfig,
  DEFAULT_NODE_FLAGS,
  freePort,
  freePorts,
  httpRequest,
  startCluster,
  waitFor,
  writeClusterFile,
} from "./harness.ts";

/**
 * A stand-in for main.ts: reads the flags the harness passes, serves `/health` and
 * `/v1/status` (node-1 is always the leader) on its API port, counts its starts in its data
 * directory, and stops on SIGTERM. `FAKE_CRASH=1` (or `=<its id>`) makes it exit 3 at once;
 * `FAKE_IGNORE_SIGTERM=1` makes it ignore SIGTERM.
 */
const _FAKE_NODE = `
const args = Deno.args;
const flag = (name) => {
  const i = args.lastIndexOf(name);
  return i === -1 ? undefined : args[i + 1];
};
const id = flag("--id");
console.log("fake " + id + " args " + JSON.stringify(args));
console.log("env FAKE_LABEL=" + Deno.env.get("FAKE_LABEL") + " NO_COLOR=" + Deno.env.get("NO_COLOR") +
  " RAFTKV_PROBE=" + Deno.env.get("RAFTKV_PROBE"));
if (Deno.env.get("FAKE_CRASH") === "1" || Deno.env.get("FAKE_CRASH") === id) {
  console.error("fake " + id + " crashing on purpose");
  Deno.exit(3);
}
const peers = JSON.parse(Deno.readTextFileSync(flag("--cluster-config-path")));
const me = peers.find((peer) => peer.node_id === id);
const counter = flag("--data-dir") + "/starts";
let starts = 1;
try { starts = Number(Deno.readTextFileSync(counter)) + 1; } catch { /* first start */ }
Deno.writeTextFileSync(counter, String(starts));
const server = Deno.serve({
  hostname: flag("--listen-host"),
  port: Number(new URL(me.api_url).port),
  onListen() {
    console.error("fake " + id + " listening, start " + starts);
  },
}, (request) => {
  const path = new URL(request.url).pathname;
  if (path === "/health") return new Response("ok");
  if (path === "/v1/status") {
    return Response.json({
      id,
      role: id === "node-1" ? "leader" : "follower",
      term: 1,
      leader: { id: "node-1", api_url: peers[0].api_url },
      commit_index: 0,
      applied_index: 0,
      last_index: 0,
      starts,
    });
  }
  return new Response("not found", { status: 404 });
});
Deno.addSignalListener("SIGTERM", async () => {
  if (Deno.env.get("FAKE_IGNORE_SIGTERM") === "1") {
    console.log("fake " + id + " ignoring SIGTERM");
    return;
  }
  console.log("fake " + id + " stopping gracefully");
  await server.shutdown();
  Deno.exit(0);
});
`;

async function _withFakeNode<T>(fn: (mainScript: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-fake-" });
  try {
    const mainScript = join(dir, "fake_node.js");
    await Deno.writeTextFile(mainScript, _FAKE_NODE);
    return await fn(mainScript);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function _exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function _answersHealth(url: string): Promise<boolean> {
  try {
    return (await httpRequest(`${url}/health`, "GET", undefined, { timeoutMs: 500 })).status ===
      200;
  } catch {
    return false;
  }
}

async function _rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof Error, `expected an Error, got ${error}`);
    return error;
  }
  throw new assert.AssertionError({ message: "expected a rejection" });
}

Deno.test("freePorts() picks ports below the kernel's range for outgoing connections", () => {
  let low = 32768;
  try {
    low = Number(Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").split(/\s+/)[0]);
  } catch {
    // Not Linux.
  }
  const ports = freePorts(20);
  for (const port of ports) {
    assert.ok(port >= 10_000 && port < low, `port ${port} (range from ${low})`);
  }
});

Deno.test("freePorts() returns distinct ports that can be listened on", () => {
  const ports = freePorts(6);
  assert.equal(ports.length, 6);
  assert.equal(new Set(ports).size, 6);
  for (const port of ports) {
    assert.ok(port > 0 && port < 65536);
    Deno.listen({ hostname: "127.0.0.1", port }).close();
  }
  const one = freePort();
  assert.ok(one > 0);
});

Deno.test("buildClusterConfig() and writeClusterFile() write a cluster file", async () => {
  const entries = buildClusterConfig({ apiPorts: [8001, 8002], rpcPorts: [9001, 9002] });
  assert.deepEqual(entries, [
    { node_id: "node-1", rpc_url: "http://127.0.0.1:9001", api_url: "http://127.0.0.1:8001" },
    { node_id: "node-2", rpc_url: "http://127.0.0.1:9002", api_url: "http://127.0.0.1:8002" },
  ]);
  assert.equal(
    buildClusterConfig({ apiPorts: [1], rpcPorts: [2], host: "localhost" })[0]?.api_url,
    "http://localhost:1",
  );
  assert.throws(() => buildClusterConfig({ apiPorts: [1, 2], rpcPorts: [3] }), /2 API ports/);

  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "cluster.config.json");
    await writeClusterFile(path, entries);
    assert.deepEqual(JSON.parse(await Deno.readTextFile(path)), entries);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("waitFor() returns once the condition holds", async () => {
  let calls = 0;
  let described = false;
  await waitFor(() => ++calls >= 3, {
    deadlineMs: 2000,
    intervalMs: 1,
    message: () => {
      described = true;
      return "three calls";
    },
  });
  assert.equal(calls, 3);
  assert.equal(described, false, "the message function is only called on failure");
  await waitFor(() => Promise.resolve(true));
});

Deno.test("waitFor() throws with the message once the deadline passes", async () => {
  const started = Date.now();
  const error = await _rejection(
    waitFor(() => false, { deadlineMs: 150, intervalMs: 10, message: "the impossible" }),
  );
  const elapsed = Date.now() - started;
  assert.equal(error.message, "Timed out after 150ms waiting for the impossible");
  assert.ok(elapsed >= 150, `gave up after ${elapsed}ms`);
  assert.ok(elapsed < 1500, `took ${elapsed}ms`);
});

Deno.test("waitFor() treats a throwing check as not yet and reports its error", async () => {
  let calls = 0;
  await waitFor(() => {
    if (++calls < 3) throw new Error("not yet");
    return true;
  }, { intervalMs: 1 });
  assert.equal(calls, 3);

  const error = await _rejection(
    waitFor(() => Promise.reject(new Error("boom")), { deadlineMs: 50, message: () => "x" }),
  );
  assert.equal(error.message, "Timed out after 50ms waiting for x (last check failed: boom)");
});

Deno.test("waitFor() abandons a check that is still running at the deadline", async () => {
  const never = Promise.withResolvers<boolean>();
  const started = Date.now();
  try {
    const error = await _rejection(waitFor(() => never.promise, { deadlineMs: 100 }));
    assert.match(error.message, /^Timed out after 100ms waiting for a condition$/);
    assert.ok(Date.now() - started < 1500);
  } finally {
    never.resolve(false);
  }
});

Deno.test("httpRequest() sends JSON, parses JSON and reports failures", async () => {
  const release = Promise.withResolvers<void>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/echo") {
      return Response.json({
        method: req.method,
        type: req.headers.get("content-type"),
        body: await req.text(),
      }, { status: 201 });
    }
    if (path === "/hang") {
      await release.promise;
      return new Response("late");
    }
    return new Response("plain text", { status: 404 });
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    const echo = await httpRequest(`${base}/echo`, "POST", { k: "a", v: "1" });
    assert.equal(echo.status, 201);
    assert.deepEqual(echo.json, {
      method: "POST",
      type: "application/json",
      body: '{"k":"a","v":"1"}',
    });

    const raw = await httpRequest(`${base}/echo`, "PUT", "{not json", {
      headers: { "content-type": "text/plain" },
    });
    assert.deepEqual(raw.json, { method: "PUT", type: "text/plain", body: "{not json" });

    const missing = await httpRequest(`${base}/nope`, "GET");
    assert.equal(missing.status, 404);
    assert.equal(missing.json, null);
    assert.equal(missing.text, "plain text");

    const started = Date.now();
    const late = await _rejection(
      httpRequest(`${base}/hang`, "GET", undefined, { timeoutMs: 100 }),
    );
    assert.equal(late.message, `GET ${base}/hang failed: no complete response within 100ms`);
    assert.ok(Date.now() - started < 2000);
  } finally {
    release.resolve();
    await server.shutdown();
  }
  const refused = await _rejection(
    httpRequest(`${base}/echo`, "GET", undefined, { timeoutMs: 2000 }),
  );
  assert.ok(refused.message.startsWith(`GET ${base}/echo failed: `), refused.message);
});

Deno.test("startCluster() starts, kills, restarts, pauses and stops node processes", async () => {
  await _withFakeNode(async (mainScript) => {
    const cluster = await startCluster({
      mainScript,
      nodeFlags: ["--heartbeat", "40"],
      env: { FAKE_LABEL: "hello" },
    });
    const dataRoot = cluster.dataRoot;
    try {
      assert.deepEqual(cluster.ids, ["node-1", "node-2", "node-3"]);
      const nodes = cluster.nodes;
      assert.equal(nodes.length, 3);
      assert.equal(new Set(nodes.flatMap((node) => [node.apiPort, node.rpcPort])).size, 6);
      for (const node of nodes) {
        assert.ok(node.pid !== null && node.pid > 0);
        assert.equal(node.paused, false);
        assert.ok(node.apiUrl.startsWith("http://127.0.0.1:"));
        assert.equal(cluster.api(node.id), node.apiUrl);
        assert.equal(cluster.rpc(node.id), node.rpcUrl);
        assert.equal(node.dataDir, join(dataRoot, node.id));
        assert.ok(![7777, 7778, 7779, 6666, 6667, 6668].includes(node.apiPort));
      }
      const config = JSON.parse(await Deno.readTextFile(cluster.configPath));
      assert.equal(config.length, 3);

      // The flags, the environment and the output.
      const logs = cluster.logs("node-2").join("\n");
      assert.match(logs, /## harness: started pid \d+/);
      assert.match(logs, /fake node-2 listening, start 1/, "stderr is captured");
      assert.match(logs, /env FAKE_LABEL=hello NO_COLOR=1 RAFTKV_PROBE=undefined/);
      const argsLine = cluster.logs("node-2").find((line) => line.startsWith("fake node-2 args "));
      const args: string[] = JSON.parse(argsLine?.slice("fake node-2 args ".length) ?? "[]");
      assert.deepEqual(args.slice(0, 6), [
        "--id",
        "node-2",
        "--cluster-config-path",
        cluster.configPath,
        "--data-dir",
        join(dataRoot, "node-2"),
      ]);
      // A token of the cluster's own, so that clusters of tests running at once stay apart.
      assert.match(cluster.clusterToken, /^test-[0-9a-f-]{36}$/);
      assert.deepEqual(args.slice(6), [
        ...DEFAULT_NODE_FLAGS,
        "--cluster-token",
        cluster.clusterToken,
        "--heartbeat",
        "40",
      ]);

      assert.equal(await cluster.waitForLeader(5000), "node-1");
      const status = await cluster.request("node-3", "GET", "/v1/status");
      assert.equal(status.status, 200);
      assert.deepEqual((status.json as { leader: unknown }).leader, {
        id: "node-1",
        api_url: cluster.api("node-1"),
      });
      assert.equal((await cluster.status("node-2"))?.role, "follower");

      // kill -9 and restart with the same data directory and ports.
      const killed = await cluster.kill("node-2");
      assert.equal(killed.signal, "SIGKILL");
      assert.deepEqual(cluster.exitStatus("node-2"), killed);
      assert.equal(cluster.exitStatus("node-1"), null);
      assert.equal(cluster.isRunning("node-2"), false);
      assert.equal(cluster.node("node-2").pid, null);
      assert.equal(await _answersHealth(cluster.api("node-2")), false);
      assert.equal(await cluster.status("node-2"), null);
      await _rejection(cluster.kill("node-2"));
      await cluster.start("node-2");
      assert.equal(cluster.isRunning("node-2"), true);
      assert.equal(((await cluster.status("node-2")) as unknown as { starts: number }).starts, 2);
      assert.match(cluster.logs("node-2").join("\n"), /was killed by signal SIGKILL/);
      await _rejection(cluster.start("node-2"));

      // SIGSTOP / SIGCONT.
      cluster.pause("node-3");
      assert.equal(cluster.node("node-3").paused, true);
      assert.deepEqual(cluster.liveIds(), ["node-1", "node-2"]);
      const hung = await _rejection(cluster.request("node-3", "GET", "/health", undefined, {
        timeoutMs: 200,
      }));
      assert.match(hung.message, /no complete response within 200ms/);
      assert.equal(await cluster.waitForLeader(5000), "node-1");
      cluster.resume("node-3");
      assert.deepEqual(cluster.liveIds(), ["node-1", "node-2", "node-3"]);
      assert.equal((await cluster.request("node-3", "GET", "/health")).status, 200);

      // Graceful stop; no leader without node-1.
      assert.equal(await cluster.stop("node-1"), 0);
      assert.match(cluster.logs("node-1").join("\n"), /fake node-1 stopping gracefully/);
      const noLeader = await _rejection(cluster.waitForLeader(200));
      assert.match(noLeader.message, /Timed out after 200ms waiting for the live nodes to agree/);
      assert.match(noLeader.message, /--- node-1 \(last \d+ lines\) ---/);

      // A paused node is still killed on close.
      cluster.pause("node-2");
    } finally {
      await cluster.close();
    }
    assert.equal(await _exists(dataRoot), false, "the temporary directory is removed");
    for (const node of cluster.nodes) {
      assert.equal(node.pid, null);
      assert.equal(await _answersHealth(node.apiUrl), false);
    }
    await cluster.close(); // A second close is harmless.
    await _rejection(cluster.start("node-1"));
  });
});

Deno.test("ProcessCluster supports await using and kills everything on dispose", async () => {
  await _withFakeNode(async (mainScript) => {
    let urls: string[] = [];
    let dataRoot = "";
    {
      await using cluster = await startCluster({ size: 2, mainScript });
      urls = cluster.nodes.map((node) => node.apiUrl);
      dataRoot = cluster.dataRoot;
      cluster.pause("node-1");
      assert.equal(await _answersHealth(cluster.api("node-2")), true);
    }
    assert.equal(await _exists(dataRoot), false);
    for (const url of urls) assert.equal(await _answersHealth(url), false);
  });
});

Deno.test("startCluster() keeps a given data root and reports a node that crashes", async () => {
  await _withFakeNode(async (mainScript) => {
    const dataRoot = await Deno.makeTempDir({ prefix: "raftkv-root-" });
    try {
      const error = await _rejection(startCluster({
        size: 2,
        mainScript,
        dataRoot,
        env: { FAKE_CRASH: "1" },
      }));
      assert.match(error.message, /node-\d exited with code 3 before answering \/health/);
      assert.match(error.message, /crashing on purpose/);
      assert.equal(await _exists(join(dataRoot, "cluster.config.json")), true);
    } finally {
      await Deno.remove(dataRoot, { recursive: true });
    }

    // One crashing node fails the start at once, and the healthy ones are stopped.
    const started = Date.now();
    const one = await _rejection(
      startCluster({ size: 3, mainScript, env: { FAKE_CRASH: "node-2" } }),
    );
    assert.match(one.message, /^node-2 exited with code 3 before answering \/health/);
    assert.ok(Date.now() - started < 10_000);

    // With a temporary root, the root is removed after the failure.
    const error = await _rejection(startCluster({ size: 1, mainScript, env: { FAKE_CRASH: "1" } }));
    const config = /--cluster-config-path (\S+)/.exec(error.message)?.[1];
    assert.ok(config !== undefined, error.message);
    assert.equal(await _exists(dirname(config)), false);
  });
});

Deno.test("ProcessCluster.stop() kills a node that ignores SIGTERM and says so", async () => {
  await _withFakeNode(async (mainScript) => {
    Deno.env.set("RAFTKV_PROBE", "leaked");
    try {
      await using cluster = await startCluster({
        size: 1,
        mainScript,
        env: { FAKE_IGNORE_SIGTERM: "1" },
      });
      assert.match(cluster.logs("node-1").join("\n"), /RAFTKV_PROBE=undefined/);
      const error = await _rejection(cluster.stop("node-1", 300));
      assert.match(error.message, /node-1 did not exit within 300ms of SIGTERM; killed it/);
      assert.match(error.message, /ignoring SIGTERM/);
      assert.equal(cluster.isRunning("node-1"), false);
    } finally {
      Deno.env.delete("RAFTKV_PROBE");
    }
  });
});
