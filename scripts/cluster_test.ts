import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  bannerLines,
  ClusterError,
  type ClusterOptions,
  colorFor,
  DEFAULT_GRACE_MS,
  DEFAULT_SIZE,
  describeExit,
  findFlag,
  formatPrefix,
  generateClusterConfig,
  helpText,
  neededPorts,
  parseClusterArgs,
  parseClusterConfig,
  prefixWidth,
  prepareLocalTls,
  shellQuote,
  shouldGenerate,
  shouldUseColor,
  urlPort,
  UsageError,
} from "./cluster.ts";
import { parseClusterFile } from "../src/cli/cluster_file.ts";
import { ConfigError } from "../src/cli/errors.ts";
import { cleanEnv, freePorts, httpRequest, runCommand, waitFor } from "../testing/harness.ts";
import { readLines } from "../testing/read_lines.ts";

const _DEFAULTS: ClusterOptions = {
  help: false,
  size: undefined,
  dir: "local-cluster",
  fresh: false,
  config: undefined,
  host: undefined,
  apiBasePort: undefined,
  rpcBasePort: undefined,
  exitOnFailure: false,
  main: undefined,
  graceMs: DEFAULT_GRACE_MS,
  tls: false,
  nodeArgs: [],
};

Deno.test("parseClusterArgs() fills in the defaults", () => {
  assert.deepEqual(parseClusterArgs([]), _DEFAULTS);
});

Deno.test("parseClusterArgs() reads every option", () => {
  assert.deepEqual(
    parseClusterArgs([
      "--size",
      "5",
      "--dir=tmp/c",
      "--fresh",
      "--config",
      "peers.json",
      "--host",
      "127.0.0.1",
      "--api-base-port",
      "8000",
      "--rpc-base-port=9000",
      "--exit-on-failure",
      "--main",
      "fake.ts",
      "--grace",
      "250",
      "--tls",
    ]),
    {
      help: false,
      size: 5,
      dir: "tmp/c",
      fresh: true,
      config: "peers.json",
      host: "127.0.0.1",
      apiBasePort: 8000,
      rpcBasePort: 9000,
      exitOnFailure: true,
      main: "fake.ts",
      graceMs: 250,
      tls: true,
      nodeArgs: [],
    },
  );
  assert.equal(parseClusterArgs(["-h"]).help, true);
  assert.equal(parseClusterArgs(["--help"]).help, true);
});

Deno.test("parseClusterArgs() passes everything after -- to the nodes", () => {
  const options = parseClusterArgs(["--fresh", "--", "--election-timeout", "500", "--", "x"]);
  assert.equal(options.fresh, true);
  assert.deepEqual(options.nodeArgs, ["--election-timeout", "500", "--", "x"]);
  // A leading "--" before node flags: all of it is for the nodes.
  assert.deepEqual(parseClusterArgs(["--", "--heartbeat", "50"]).nodeArgs, ["--heartbeat", "50"]);
  // A leading "--" before launcher options (`deno task cluster -- --size 5`) is ignored.
  const npmStyle = parseClusterArgs(["--", "--size", "5", "--", "--heartbeat", "50"]);
  assert.equal(npmStyle.size, 5);
  assert.deepEqual(npmStyle.nodeArgs, ["--heartbeat", "50"]);
  assert.equal(parseClusterArgs(["--", "--size=2"]).size, 2);
});

Deno.test("parseClusterArgs() rejects bad command lines with a clear message", () => {
  const cases: [string[], RegExp][] = [
    [["--bogus"], /Unknown option '--bogus'/],
    [["--size"], /--size/],
    [["--size", "0"], /--size must be a whole number from 1 to 1000, got "0"/],
    [["--size", "2.5"], /--size must be a whole number/],
    [["--size", "three"], /--size must be a whole number/],
    [["--api-base-port", "70000"], /--api-base-port must be a whole number from 1 to 65535/],
    [["--rpc-base-port", "-1"], /--rpc-base-port/],
    [["--grace", "soon"], /--grace must be a whole number/],
    [["--fresh=yes"], /--fresh/],
    [["--dir="], /--dir needs a non-empty value/],
    [["--host="], /--host needs a non-empty value/],
    [["node-1"], /Unexpected argument "node-1": put flags for the nodes after "--"/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseClusterArgs(args), (error: unknown) => {
      assert.ok(error instanceof UsageError, `${args.join(" ")}: ${error}`);
      assert.match(error.message, message);
      return true;
    });
  }
});

Deno.test("shouldGenerate() is true when the size, host or a base port is given", () => {
  assert.equal(shouldGenerate(_DEFAULTS), false);
  assert.equal(shouldGenerate({ ..._DEFAULTS, size: 3 }), true);
  assert.equal(shouldGenerate({ ..._DEFAULTS, host: "127.0.0.1" }), true);
  assert.equal(shouldGenerate({ ..._DEFAULTS, apiBasePort: 8000 }), true);
  assert.equal(shouldGenerate({ ..._DEFAULTS, rpcBasePort: 9000 }), true);
  assert.equal(shouldGenerate({ ..._DEFAULTS, tls: true }), true);
  assert.equal(shouldGenerate({ ..._DEFAULTS, fresh: true, nodeArgs: ["--x"] }), false);
});

Deno.test("generateClusterConfig() matches the checked-in cluster.config.json", async () => {
  const checkedIn = JSON.parse(
    await Deno.readTextFile(fileURLToPath(new URL("../cluster.config.json", import.meta.url))),
  );
  assert.deepEqual(
    generateClusterConfig({ size: 3, host: "localhost", apiBasePort: 7777, rpcBasePort: 6666 }),
    checkedIn,
  );
});

Deno.test("generateClusterConfig() numbers nodes and ports from the bases", () => {
  assert.deepEqual(
    generateClusterConfig({ size: 2, host: "10.0.0.5", apiBasePort: 8000, rpcBasePort: 9000 }),
    [
      { node_id: "node-1", rpc_url: "http://10.0.0.5:9000", api_url: "http://10.0.0.5:8000" },
      { node_id: "node-2", rpc_url: "http://10.0.0.5:9001", api_url: "http://10.0.0.5:8001" },
    ],
  );
  assert.equal(
    generateClusterConfig({ size: 1, host: "::1", apiBasePort: 1, rpcBasePort: 2 })[0]?.api_url,
    "http://[::1]:1",
  );
  assert.equal(
    generateClusterConfig({ size: 7, host: "h", apiBasePort: 7777, rpcBasePort: 6666 }).length,
    7,
  );
});

Deno.test("generateClusterConfig() with tls writes https URLs", () => {
  assert.deepEqual(
    generateClusterConfig({
      size: 1,
      host: "localhost",
      apiBasePort: 1,
      rpcBasePort: 2,
      tls: true,
    }),
    [{ node_id: "node-1", rpc_url: "https://localhost:2", api_url: "https://localhost:1" }],
  );
});

Deno.test("generateClusterConfig() rejects overlapping or out-of-range ports", () => {
  assert.throws(
    () => generateClusterConfig({ size: 3, host: "h", apiBasePort: 7000, rpcBasePort: 7002 }),
    /The API ports 7000-7002 and RPC ports 7002-7004 overlap/,
  );
  assert.throws(
    () => generateClusterConfig({ size: 3, host: "h", apiBasePort: 65534, rpcBasePort: 6666 }),
    /--api-base-port 65534 leaves no room for 3 node\(s\)/,
  );
  assert.throws(
    () => generateClusterConfig({ size: 0, host: "h", apiBasePort: 1, rpcBasePort: 2 }),
    UsageError,
  );
  // Adjacent ranges are fine.
  generateClusterConfig({ size: 3, host: "h", apiBasePort: 7000, rpcBasePort: 7003 });
});

Deno.test("parseClusterConfig() takes every cluster file the node takes, bare host:port too", () => {
  const accepted = [
    '[{"node_id":"a","rpc_url":"http://h:1","api_url":"https://h"}]',
    // The original Go project's spelling: bare host:port, read as http://host:port.
    JSON.stringify([
      { node_id: "node-1", rpc_url: "localhost:21666", api_url: "localhost:21777" },
      { node_id: "node-2", rpc_url: "127.0.0.1:21667", api_url: "127.0.0.1:21778" },
      { node_id: "node-3", rpc_url: "[::1]:21668", api_url: "http://[::1]:21779/" },
    ]),
  ];
  for (const text of accepted) {
    const node = parseClusterFile(text, "c.json");
    assert.deepEqual(
      parseClusterConfig(text, "c.json"),
      node.map((peer) => ({ node_id: peer.id, rpc_url: peer.rpcUrl, api_url: peer.apiUrl })),
      text,
    );
  }
  assert.deepEqual(parseClusterConfig(accepted[1]!, "c.json")[0], {
    node_id: "node-1",
    rpc_url: "http://localhost:21666",
    api_url: "http://localhost:21777",
  });
});

Deno.test("parseClusterConfig() refuses what the node refuses, with the node's message", () => {
  const refused = [
    "{",
    "[]",
    '{"node_id":"a"}',
    "[1]",
    '[{"node_id":"a","rpc_url":"http://h:1"}]',
    '[{"node_id":"../x","rpc_url":"http://h:1","api_url":"http://h:2"}]',
    '[{"node_id":"a","rpc_url":"nope","api_url":"http://h:2"}]',
    '[{"node_id":"a","rpc_url":"ftp://h:1","api_url":"http://h:2"}]',
    '[{"node_id":"a","rpc_url":"http://h:1/x","api_url":"http://h:2"}]',
    '[{"node_id":"a","rpc_url":"http://h:1","api_url":"h:1"}]',
    '[{"node_id":"a","rpc_url":"http://h:1","api_url":"http://h:2","x":1}]',
    '[{"node_id":"a","rpc_url":"http://h:1","api_url":"http://h:2"},' +
    '{"node_id":"a","rpc_url":"http://h:3","api_url":"http://h:4"}]',
    '[{"node_id":"a","rpc_url":"http://h:1","api_url":"http://h:2"},' +
    '{"node_id":"b","rpc_url":"https://h:3","api_url":"http://h:4"}]',
  ];
  for (const text of refused) {
    const node = (() => {
      try {
        parseClusterFile(text, "c.json");
      } catch (error) {
        assert.ok(error instanceof ConfigError, text);
        return error.message;
      }
      assert.fail(`the node takes ${text}`);
    })();
    assert.throws(() => parseClusterConfig(text, "c.json"), (error: unknown) => {
      assert.ok(error instanceof ClusterError, `${text}: ${error}`);
      assert.equal(error.message, node);
      return true;
    });
  }
});

Deno.test("urlPort() and neededPorts() list each node's ports", () => {
  assert.equal(urlPort("http://localhost:6666"), 6666);
  assert.equal(urlPort("http://localhost"), 80);
  assert.equal(urlPort("https://localhost"), 443);
  assert.deepEqual(
    neededPorts([{ node_id: "node-1", rpc_url: "http://h:6666", api_url: "http://h:7777" }]),
    [
      { nodeId: "node-1", kind: "api", port: 7777 },
      { nodeId: "node-1", kind: "rpc", port: 6666 },
    ],
  );
});

Deno.test("findFlag() finds the last value of a flag in either spelling", () => {
  assert.equal(findFlag(["--listen-host", "127.0.0.1"], "--listen-host"), "127.0.0.1");
  assert.equal(findFlag(["--listen-host=::1"], "--listen-host"), "::1");
  assert.equal(findFlag(["--listen-host", "a", "--listen-host=b"], "--listen-host"), "b");
  assert.equal(findFlag(["--listen-hostx", "a"], "--listen-host"), undefined);
  assert.equal(findFlag(["--listen-host"], "--listen-host"), undefined);
  assert.equal(findFlag([], "--listen-host"), undefined);
});

Deno.test("shouldUseColor() honours NO_COLOR and terminals", () => {
  assert.equal(shouldUseColor(undefined, true), true);
  assert.equal(shouldUseColor("", true), true);
  assert.equal(shouldUseColor("1", true), false);
  assert.equal(shouldUseColor(undefined, false), false);
  assert.equal(shouldUseColor("1", false), false);
});

Deno.test("colorFor() gives neighbouring nodes different colours", () => {
  const colors = Array.from({ length: 12 }, (_, i) => colorFor(i));
  assert.equal(new Set(colors).size, 12);
  assert.equal(colorFor(12), colorFor(0));
  assert.notEqual(colorFor(0), 31, "the first node is not red");
  for (const color of colors) {
    assert.ok((color >= 30 && color <= 37) || (color >= 90 && color <= 97));
  }
});

Deno.test("formatPrefix() pads labels so that lines line up", () => {
  const width = prefixWidth(["cluster", "node-1", "node-10"]);
  assert.equal(width, 9);
  assert.equal(formatPrefix("node-1", width, null), "[node-1]  ");
  assert.equal(formatPrefix("node-10", width, null), "[node-10] ");
  assert.equal(formatPrefix("cluster", width, null), "[cluster] ");
  assert.equal(formatPrefix("node-1", width, 36), "\x1b[36m[node-1]\x1b[0m  ");
  assert.equal(formatPrefix("long-label", 4, null), "[long-label] ");
});

Deno.test("describeExit() names the exit code or the signal", () => {
  assert.equal(describeExit({ success: false, code: 3, signal: null }), "exited with code 3");
  assert.equal(describeExit({ success: true, code: 0, signal: null }), "exited with code 0");
  assert.equal(
    describeExit({ success: false, code: 137, signal: "SIGKILL" }),
    "was killed by signal SIGKILL",
  );
});

Deno.test("bannerLines() lists the API URLs and the curl quick start", () => {
  const entries = generateClusterConfig({
    size: 3,
    host: "localhost",
    apiBasePort: 7777,
    rpcBasePort: 6666,
  });
  const text = bannerLines(entries, "node-2", "cluster.config.json").join("\n");
  assert.match(text, /node-1 {2}API http:\/\/localhost:7777 {2}RPC http:\/\/localhost:6666\n/);
  assert.match(
    text,
    /node-2 {2}API http:\/\/localhost:7778 {2}RPC http:\/\/localhost:6667 {2}\(leader\)/,
  );
  assert.ok(
    text.includes(
      `curl -X POST -H 'Content-Type: application/json' -d '{"k":"a","v":"1"}' ` +
        "http://localhost:7777/v1/data",
    ),
    text,
  );
  assert.ok(text.includes("curl http://localhost:7778/v1/data/a"), text);

  const single = bannerLines(entries.slice(0, 1), null, "c.json").join("\n");
  assert.ok(single.includes("curl http://localhost:7777/v1/data/a"), single);
  assert.ok(!single.includes("(leader)"));
});

Deno.test("bannerLines() of a TLS cluster quotes the CA, sends tokens and reads via a follower", () => {
  const entries = generateClusterConfig({
    size: 3,
    host: "localhost",
    apiBasePort: 7777,
    rpcBasePort: 6666,
    tls: true,
  });
  const security = {
    dir: "/x/tls",
    ca: "/x y/tls/ca.crt",
    tokensFile: "/x/tls/tokens.json",
    tokens: { read: "R".repeat(16), write: "W".repeat(16), admin: "A".repeat(16) },
  };
  const prefix = `curl --cacert '/x y/tls/ca.crt' -H "Authorization: Bearer`;
  const cases: [string, number, number][] = [["node-2", 3, 2], ["node-3", 2, 3], ["node-1", 2, 3]];
  for (const [leader, reader, deleter] of cases) {
    const lines = bannerLines(entries, leader, "c.json", security).map((line) => line.trim());
    const curls = lines.filter((line) => line.startsWith("curl "));
    assert.deepEqual(curls, [
      `${prefix} ${"W".repeat(16)}" -X POST -H 'Content-Type: application/json' ` +
      `-d '{"k":"a","v":"1"}' https://localhost:7777/v1/data`,
      `${prefix} ${"R".repeat(16)}" https://localhost:777${6 + reader}/v1/data/a`,
      `${prefix} ${"W".repeat(16)}" -X DELETE https://localhost:777${6 + deleter}/v1/data/a`,
      `${prefix} ${"R".repeat(16)}" -i https://localhost:7777/v1/data/a`,
      `${prefix} ${"A".repeat(16)}" -o backup.snap https://localhost:7777/v1/snapshot`,
      `${prefix} ${"R".repeat(16)}" https://localhost:7777/v1/status`,
    ], `leader ${leader}`);
    assert.ok(
      lines.some((line) => line.startsWith(`${leader}  API https://`) && line.endsWith("(leader)")),
    );
    assert.ok(
      lines.some((line) => line.includes(`read through node-${reader}, a follower`)),
      leader,
    );
    assert.ok(lines.some((line) => line.includes("/x/tls/tokens.json")));
  }
  assert.equal(shellQuote("/a/b-c_d.crt"), "/a/b-c_d.crt");
  assert.equal(shellQuote("it's here"), `'it'\\''s here'`);
});

Deno.test("prepareLocalTls() makes the CA, certificates and 0600 tokens once, and again only when they no longer fit", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-cluster-tls-" });
  try {
    const tls = join(dir, "tls");
    const first = await prepareLocalTls(tls, ["node-1", "node-2"], ["localhost"]);
    assert.equal(first.madeCertificates, true);
    assert.equal(first.madeTokens, true);
    assert.equal((await Deno.stat(tls)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(first.tokensFile)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(first.node("node-2").key)).mode! & 0o777, 0o600);
    const written = JSON.parse(await Deno.readTextFile(first.tokensFile));
    assert.deepEqual(written.map((t: { role: string }) => t.role), ["read", "write", "admin"]);
    const tokens = Object.values(first.tokens);
    assert.equal(new Set(tokens).size, 3);
    for (const token of tokens) assert.match(token, /^[0-9a-f]{64}$/);
    const subject = await runCommand(
      "openssl",
      ["x509", "-noout", "-subject", "-ext", "subjectAltName", "-in", first.node("node-2").cert],
      cleanEnv(),
      dir,
    );
    assert.match(subject.stdout, /CN ?= ?node-2/);
    assert.match(
      subject.stdout,
      /DNS:localhost, IP Address:127\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1/,
    );

    // A second start finds everything as it was.
    const ca = await Deno.readTextFile(first.ca);
    const again = await prepareLocalTls(tls, ["node-1", "node-2"], ["localhost"]);
    assert.equal(again.madeCertificates, false);
    assert.equal(again.madeTokens, false);
    assert.deepEqual(again.tokens, first.tokens);
    assert.equal(await Deno.readTextFile(again.ca), ca);

    // A node more, or a host the certificates do not cover: new certificates, the same tokens.
    const bigger = await prepareLocalTls(tls, ["node-1", "node-2", "node-3"], ["localhost"]);
    assert.equal(bigger.madeCertificates, true);
    assert.notEqual(await Deno.readTextFile(bigger.ca), ca);
    assert.deepEqual(bigger.tokens, first.tokens);
    const ids = ["node-1", "node-2", "node-3"];
    assert.equal((await prepareLocalTls(tls, ids, ["127.0.0.1"])).madeCertificates, false);
    const elsewhere = await prepareLocalTls(tls, ids, ["[fd00::5]", "raft.example"]);
    assert.equal(elsewhere.madeCertificates, true);
    const san = await runCommand(
      "openssl",
      ["x509", "-noout", "-ext", "subjectAltName", "-in", elsewhere.node("node-3").cert],
      cleanEnv(),
      dir,
    );
    assert.match(san.stdout, /IP Address:FD00:0:0:0:0:0:0:5, DNS:raft\.example/i);
    assert.equal((await prepareLocalTls(tls, ids, ["raft.example"])).madeCertificates, false);

    // A tokens file that lacks a role is not silently replaced.
    await Deno.writeTextFile(first.tokensFile, '[{"token":"x","role":"read"}]');
    await assert.rejects(
      prepareLocalTls(tls, ids, ["localhost"]),
      /has no token for the role\(s\) write, admin; delete it/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the tests run the launcher with the permissions of deno task cluster", () => {
  assert.deepEqual(_TASK_PERMISSIONS, [
    "--allow-net",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-run",
  ]);
});

Deno.test("helpText() documents every option", () => {
  const text = helpText();
  for (
    const option of [
      "--size",
      "--host",
      "--api-base-port",
      "--rpc-base-port",
      "--config",
      "--dir",
      "--fresh",
      "--exit-on-failure",
      "--grace",
      "--main",
      "--tls",
      "--help",
    ]
  ) {
    assert.ok(text.includes(option), option);
  }
});

// ---------------------------------------------------------------------------------------------
// The launcher as a process, running a fake node program.
// ---------------------------------------------------------------------------------------------

/**
 * A stand-in for main.ts: serves `/health` and `/v1/status` (node-1 leads) on its API port and
 * stops on SIGTERM. `FAKE_CRASH_ID=<id>` makes that node exit 3 at once;
 * `FAKE_IGNORE_SIGTERM=1` makes every node ignore SIGTERM.
 */
const _FAKE_NODE = `
const args = Deno.args;
const flag = (name) => {
  const i = args.lastIndexOf(name);
  return i === -1 ? undefined : args[i + 1];
};
const id = flag("--id");
console.log("hello from " + id + " args " + JSON.stringify(args));
console.error("warning line from " + id);
if (Deno.env.get("FAKE_CRASH_ID") === id) Deno.exit(3);
const peers = JSON.parse(Deno.readTextFileSync(flag("--cluster-config-path")));
const me = peers.find((peer) => peer.node_id === id);
// A bare host:port (the original Go project's spelling) means http://host:port.
const url = (text) => new URL(text.includes("://") ? text : "http://" + text);
const server = Deno.serve({
  hostname: flag("--listen-host") ?? "0.0.0.0",
  port: Number(url(me.api_url).port),
  onListen() {},
}, (request) => {
  const path = new URL(request.url).pathname;
  if (path === "/health") return new Response("ok");
  if (path === "/v1/status") {
    return Response.json({ id, role: "x", term: 1, leader: { id: "node-1", api_url: url(peers[0].api_url).origin } });
  }
  return new Response("not found", { status: 404 });
});
Deno.addSignalListener("SIGTERM", async () => {
  if (Deno.env.get("FAKE_IGNORE_SIGTERM") === "1") {
    console.log(id + " ignores SIGTERM");
    return;
  }
  console.log(id + " stopping");
  await server.shutdown();
  Deno.exit(0);
});
`;

const _SCRIPT = fileURLToPath(new URL("./cluster.ts", import.meta.url));

/** The permission flags of `deno task cluster`, so that the tests run with no more than it. */
const _TASK_PERMISSIONS: string[] = (() => {
  const config = JSON.parse(
    Deno.readTextFileSync(fileURLToPath(new URL("../deno.json", import.meta.url))),
  );
  const task: string = config.tasks.cluster;
  assert.ok(task.endsWith(" scripts/cluster.ts"), task);
  return task.split(/\s+/).filter((word) => word.startsWith("--allow-"));
})();

interface _Launcher {
  child: Deno.ChildProcess;
  stdout: string[];
  stderr: string[];
  done: Promise<Deno.CommandStatus>;
  output(): string;
}

function _launch(args: string[], env: Record<string, string> = {}, cwd?: string): _Launcher {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ..._TASK_PERMISSIONS, _SCRIPT, ...args],
    env,
    ...(cwd === undefined ? {} : { cwd }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout: string[] = [];
  const stderr: string[] = [];
  const collect = async (stream: ReadableStream<Uint8Array>, into: string[]) => {
    for await (const line of readLines(stream)) into.push(line);
  };
  const pumps = Promise.all([collect(child.stdout, stdout), collect(child.stderr, stderr)]);
  const done = child.status.then(async (status) => {
    await pumps;
    return status;
  });
  return {
    child,
    stdout,
    stderr,
    done,
    output: () => `--- stdout ---\n${stdout.join("\n")}\n--- stderr ---\n${stderr.join("\n")}`,
  };
}

/** Runs `fn` with a temporary directory holding the fake node and a cluster file on free ports. */
async function _withSetup(
  size: number,
  fn: (setup: { dir: string; fake: string; config: string; apiUrls: string[] }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-cluster-test-" });
  try {
    const fake = join(dir, "fake_node.js");
    await Deno.writeTextFile(fake, _FAKE_NODE);
    const ports = freePorts(2 * size);
    const entries = Array.from({ length: size }, (_, i) => ({
      node_id: `node-${i + 1}`,
      rpc_url: `http://127.0.0.1:${ports[size + i]}`,
      api_url: `http://127.0.0.1:${ports[i]}`,
    }));
    const config = join(dir, "peers.json");
    await Deno.writeTextFile(config, JSON.stringify(entries));
    await fn({ dir, fake, config, apiUrls: entries.map((entry) => entry.api_url) });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function _stopLauncher(launcher: _Launcher): Promise<void> {
  try {
    launcher.child.kill("SIGKILL");
  } catch {
    // Already exited.
  }
  await launcher.done;
}

async function _up(url: string): Promise<boolean> {
  try {
    return (await httpRequest(`${url}/health`, "GET", undefined, { timeoutMs: 500 })).status ===
      200;
  } catch {
    return false;
  }
}

Deno.test("the launcher runs every node with prefixed output and stops them on SIGTERM", async () => {
  await _withSetup(3, async ({ dir, fake, config, apiUrls }) => {
    const dataDir = join(dir, "nodes");
    const launcher = _launch([
      "--config",
      config,
      "--dir",
      dataDir,
      "--main",
      fake,
      "--",
      "--listen-host",
      "127.0.0.1",
    ]);
    try {
      await waitFor(() => launcher.stdout.some((line) => line.includes("Press Ctrl-C")), {
        deadlineMs: 30_000,
        message: () => `the banner\n${launcher.output()}`,
      });
      const out = launcher.stdout.join("\n");
      for (const [i, url] of apiUrls.entries()) {
        const id = `node-${i + 1}`;
        assert.ok(out.includes(`[${id}]  hello from ${id} args `), launcher.output());
        assert.ok(launcher.stderr.includes(`[${id}]  warning line from ${id}`), launcher.output());
        assert.ok(out.includes(`API ${url}`), out);
        assert.ok(await _up(url));
        assert.ok((await Deno.stat(join(dataDir, id))).isDirectory);
      }
      const args = launcher.stdout.find((line) => line.startsWith("[node-2]  hello from node-2"));
      assert.ok(
        args?.endsWith(
          JSON.stringify([
            "--id",
            "node-2",
            "--cluster-config-path",
            config,
            "--data-dir",
            join(dataDir, "node-2"),
            "--listen-host",
            "127.0.0.1",
          ]),
        ),
        args,
      );
      assert.ok(out.includes(`curl ${apiUrls[1]}/v1/data/a`), out);
      assert.match(out, /node-1 .*\(leader\)/);
      assert.ok(!launcher.output().includes("\x1b["), "no colour into a pipe");

      launcher.child.kill("SIGTERM");
      const status = await launcher.done;
      assert.equal(status.code, 0, launcher.output());
      const after = launcher.stdout.join("\n");
      for (let i = 1; i <= 3; i++) {
        assert.ok(after.includes(`[node-${i}]  node-${i} stopping`), launcher.output());
        assert.ok(after.includes(`node-${i} exited with code 0`), launcher.output());
      }
      assert.ok(after.includes("[cluster] all nodes stopped"), launcher.output());
      for (const url of apiUrls) assert.equal(await _up(url), false);
    } finally {
      await _stopLauncher(launcher);
    }
  });
});

Deno.test("the launcher reports a node that dies and keeps the others running", async () => {
  await _withSetup(3, async ({ dir, fake, config, apiUrls }) => {
    const launcher = _launch(
      ["--config", config, "--dir", dir, "--main", fake, "--", "--listen-host", "127.0.0.1"],
      { FAKE_CRASH_ID: "node-3" },
    );
    try {
      await waitFor(() => launcher.stdout.some((line) => line.includes("Press Ctrl-C")), {
        deadlineMs: 30_000,
        message: () => `the banner\n${launcher.output()}`,
      });
      assert.ok(
        launcher.stderr.includes("[cluster] node-3 exited with code 3 unexpectedly"),
        launcher.output(),
      );
      assert.ok(
        launcher.stderr.includes("[cluster] keeping the other nodes running: node-1, node-2"),
        launcher.output(),
      );
      assert.ok(await _up(apiUrls[0] ?? ""));
      assert.ok(await _up(apiUrls[1] ?? ""));
      launcher.child.kill("SIGINT");
      assert.equal((await launcher.done).code, 0, launcher.output());
    } finally {
      await _stopLauncher(launcher);
    }
  });
});

Deno.test("the launcher with --exit-on-failure stops everything when a node dies", async () => {
  await _withSetup(2, async ({ dir, fake, config, apiUrls }) => {
    const launcher = _launch(
      [
        "--config",
        config,
        "--dir",
        dir,
        "--main",
        fake,
        "--exit-on-failure",
        "--",
        "--listen-host",
        "127.0.0.1",
      ],
      { FAKE_CRASH_ID: "node-2" },
    );
    try {
      const status = await launcher.done;
      assert.equal(status.code, 1, launcher.output());
      assert.ok(launcher.stderr.includes("[cluster] stopping the cluster (--exit-on-failure)"));
      assert.equal(await _up(apiUrls[0] ?? ""), false);
    } finally {
      await _stopLauncher(launcher);
    }
  });
});

Deno.test("the launcher stops on SIGHUP and kills a node that ignores SIGTERM in time", async () => {
  await _withSetup(1, async ({ dir, fake, config }) => {
    const launcher = _launch(
      [
        "--config",
        config,
        "--dir",
        dir,
        "--main",
        fake,
        "--grace",
        "300",
        "--",
        "--listen-host",
        "127.0.0.1",
      ],
      { FAKE_IGNORE_SIGTERM: "1" },
    );
    try {
      await waitFor(() => launcher.stdout.some((line) => line.includes("Press Ctrl-C")), {
        deadlineMs: 30_000,
        message: () => `the banner\n${launcher.output()}`,
      });
      launcher.child.kill("SIGHUP");
      assert.equal((await launcher.done).code, 0, launcher.output());
      assert.ok(
        launcher.stdout.includes(
          "[cluster] received SIGHUP, stopping all nodes " +
            "(press Ctrl-C again to kill them)",
        ) &&
          launcher.stderr.includes("[cluster] node-1 did not stop within 300ms; sending SIGKILL"),
        launcher.output(),
      );
      assert.ok(
        launcher.stderr.includes("[cluster] node-1 was killed by signal SIGKILL"),
        launcher.output(),
      );
    } finally {
      await _stopLauncher(launcher);
    }
  });
});

Deno.test("the launcher refuses to start when a port is taken, naming port and node", async () => {
  await _withSetup(2, async ({ dir, fake }) => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const taken = listener.addr.port;
    const [rpcBase = 0] = freePorts(1);
    try {
      // The port is node-1's API port of a generated two-node cluster.
      const launcher = _launch([
        "--size",
        "2",
        "--host",
        "127.0.0.1",
        "--api-base-port",
        String(taken),
        "--rpc-base-port",
        String(rpcBase),
        "--dir",
        dir,
        "--main",
        fake,
        "--",
        "--listen-host",
        "127.0.0.1",
      ]);
      try {
        const status = await launcher.done;
        assert.equal(status.code, 1, launcher.output());
        assert.ok(
          launcher.stderr.some((line) =>
            line.includes(`port ${taken} (api port of node-1) is already in use`)
          ),
          launcher.output(),
        );
        assert.deepEqual(
          JSON.parse(await Deno.readTextFile(join(dir, "cluster.config.json"))),
          generateClusterConfig({
            size: 2,
            host: "127.0.0.1",
            apiBasePort: taken,
            rpcBasePort: rpcBase,
          }),
        );
      } finally {
        await _stopLauncher(launcher);
      }
    } finally {
      listener.close();
    }
  });
});

Deno.test("the launcher explains a missing cluster file and a usage error", async () => {
  const missing = _launch(["--config", "/nonexistent/peers.json"]);
  const missingStatus = await missing.done;
  assert.equal(missingStatus.code, 1);
  assert.match(
    missing.stderr.join("\n"),
    /Cannot read the cluster file \/nonexistent\/peers\.json/,
  );

  const usage = _launch(["--size", "zero"]);
  assert.equal((await usage.done).code, 2);
  assert.match(usage.stderr.join("\n"), /--size must be a whole number/);
  assert.match(usage.stderr.join("\n"), /Run with --help/);

  const help = _launch(["--help"]);
  assert.equal((await help.done).code, 0);
  assert.match(help.stdout.join("\n"), /Usage: deno task cluster/);
});

/** Waits for the launcher's banner; fails at once if the launcher exits first. */
async function _waitForBanner(launcher: _Launcher): Promise<void> {
  let exited: Deno.CommandStatus | null = null;
  launcher.done.then((status) => exited = status);
  await waitFor(
    () => exited !== null || launcher.stdout.some((line) => line.includes("Press Ctrl-C")),
    { deadlineMs: 30_000, message: () => `the banner\n${launcher.output()}` },
  );
  assert.equal(exited, null, `the launcher exited before its banner\n${launcher.output()}`);
}

Deno.test("the launcher runs a cluster file of bare host:port addresses, as the node reads it", async () => {
  await _withSetup(2, async ({ dir, fake, apiUrls }) => {
    // The original Go project's spelling, which the node reads as http://host:port.
    const ports = freePorts(2);
    const bare = join(dir, "go-peers.json");
    await Deno.writeTextFile(
      bare,
      JSON.stringify(apiUrls.map((url, i) => ({
        node_id: `node-${i + 1}`,
        rpc_url: `127.0.0.1:${ports[i]}`,
        api_url: url.slice("http://".length),
      }))),
    );
    const launcher = _launch([
      "--config",
      bare,
      "--dir",
      join(dir, "nodes"),
      "--main",
      fake,
      "--",
      "--listen-host",
      "127.0.0.1",
    ]);
    try {
      await _waitForBanner(launcher);
      const out = launcher.stdout.join("\n");
      for (const url of apiUrls) {
        assert.ok(out.includes(`API ${url}`), out);
        assert.ok(await _up(url));
      }
      launcher.child.kill("SIGTERM");
      assert.equal((await launcher.done).code, 0, launcher.output());
    } finally {
      await _stopLauncher(launcher);
    }
  });
});

Deno.test("the launcher with a base port but no --size and no cluster file generates three nodes", async () => {
  // Run outside the repository: no cluster.config.json to count the nodes of.
  await _withSetup(1, async ({ dir, fake }) => {
    const base = _freePortRun(6);
    const nodes = join(dir, "nodes");
    const args = [
      "--host",
      "127.0.0.1",
      "--api-base-port",
      String(base),
      "--rpc-base-port",
      String(base + DEFAULT_SIZE),
      "--dir",
      nodes,
      "--main",
      fake,
      "--",
      "--listen-host",
      "127.0.0.1",
    ];
    const launcher = _launch(args, {}, dir);
    try {
      await _waitForBanner(launcher);
      assert.deepEqual(
        JSON.parse(await Deno.readTextFile(join(nodes, "cluster.config.json"))),
        generateClusterConfig({
          size: DEFAULT_SIZE,
          host: "127.0.0.1",
          apiBasePort: base,
          rpcBasePort: base + DEFAULT_SIZE,
        }),
      );
      launcher.child.kill("SIGTERM");
      assert.equal((await launcher.done).code, 0, launcher.output());
    } finally {
      await _stopLauncher(launcher);
    }

    // A --config named on the command line must exist, even just to be counted, and even when
    // it is the default file's name (it was taken for the default, and three nodes started).
    for (const named of [join(dir, "none.json"), "cluster.config.json"]) {
      const missing = _launch(["--config", named, ...args], {}, dir);
      try {
        assert.equal((await missing.done).code, 1, missing.output());
        assert.match(
          missing.stderr.join("\n"),
          new RegExp(`Cannot read the cluster file .*${basename(named).replaceAll(".", "\\.")}`),
        );
      } finally {
        await _stopLauncher(missing);
      }
    }
  });
});

/**
 * Stops a launcher that runs real nodes: SIGTERM (it stops its nodes), SIGKILL after 20 s; then
 * kills any node it started that still runs (a SIGKILLed launcher leaves its children behind),
 * checking by `/proc/<pid>/cmdline` that the pid is still that node.
 */
async function _stopRealLauncher(launcher: _Launcher, dir: string): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    launcher.child.kill("SIGTERM");
    const stopped = await Promise.race([
      launcher.done.then(() => true),
      new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), 20_000)),
    ]);
    if (!stopped) launcher.child.kill("SIGKILL");
  } catch {
    // Already exited.
  } finally {
    clearTimeout(timer);
  }
  await launcher.done;
  for (const line of launcher.stdout) {
    const pid = Number(/^\[cluster\] +started node-\d+ \(pid (\d+)\)$/.exec(line)?.[1]);
    if (!Number.isInteger(pid)) continue;
    try {
      if (!Deno.readTextFileSync(`/proc/${pid}/cmdline`).includes(dir)) continue;
      Deno.kill(pid, "SIGKILL");
    } catch {
      // Gone.
    }
  }
}

/** A run of `count` consecutive ports that are free right now (the launcher numbers ports). */
function _freePortRun(count: number): number {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 40_000);
    const listeners: Deno.TcpListener[] = [];
    try {
      for (let port = base; port < base + count; port++) {
        listeners.push(Deno.listen({ hostname: "127.0.0.1", port }));
      }
      return base;
    } catch {
      // Taken: try another base.
    } finally {
      for (const listener of listeners) listener.close();
    }
  }
  throw new Error(`no run of ${count} free ports found`);
}

Deno.test("the launcher with --tls runs a real TLS cluster whose banner's curl calls work", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-cluster-tls-run-" });
  const base = _freePortRun(6);
  const launcher = _launch([
    "--tls",
    "--size",
    "3",
    "--host",
    "127.0.0.1",
    "--api-base-port",
    String(base),
    "--rpc-base-port",
    String(base + 3),
    "--dir",
    dir,
  ]);
  try {
    await waitFor(() => launcher.stdout.some((line) => line.includes("Press Ctrl-C")), {
      deadlineMs: 60_000,
      message: () => `the banner\n${launcher.output()}`,
    });
    const config = JSON.parse(await Deno.readTextFile(join(dir, "cluster.config.json")));
    assert.deepEqual(
      config,
      generateClusterConfig({
        size: 3,
        host: "127.0.0.1",
        apiBasePort: base,
        rpcBasePort: base + 3,
        tls: true,
      }),
    );
    const out = launcher.stdout.join("\n");
    assert.match(out, /TLS: made the CA and node certificates in /);
    // The banner comes once a node names a leader; let the election settle before writing.
    const client = Deno.createHttpClient({
      caCerts: [await Deno.readTextFile(join(dir, "tls", "ca.crt"))],
    });
    try {
      const tokens = JSON.parse(await Deno.readTextFile(join(dir, "tls", "tokens.json")));
      const read = { authorization: `Bearer ${tokens[0].token}` };
      await waitFor(async () => {
        const leaders = await Promise.all(config.map(async (entry: { api_url: string }) => {
          const res = await httpRequest(`${entry.api_url}/v1/status`, "GET", undefined, {
            client,
            headers: read,
            timeoutMs: 1000,
          }).catch(() => null);
          return (res?.json as { leader?: { id?: string } } | null)?.leader?.id ?? null;
        }));
        return leaders[0] !== null && leaders.every((id) => id === leaders[0]);
      }, {
        deadlineMs: 30_000,
        message: () => `the nodes to agree on a leader\n${launcher.output()}`,
      });
    } finally {
      client.close();
    }
    const leader = /(node-\d) +API .*\(leader\)/.exec(out)?.[1];
    const curls = launcher.stdout
      .filter((line) => line.startsWith("[cluster]   curl "))
      .map((line) => line.slice("[cluster] ".length).trim());
    assert.equal(curls.length, 6, out);
    const reader = /(https:\/\/127\.0\.0\.1:\d+)\/v1\/data\/a$/.exec(curls[1] ?? "")?.[1];
    const readerId = config.find((e: { api_url: string }) => e.api_url === reader)?.node_id;
    assert.ok(readerId !== undefined && readerId !== leader, `${readerId} reads, ${leader} leads`);

    // Each banner line, run as a user would paste it.
    const run = async (line: string) => {
      const result = await runCommand(
        "bash",
        ["-c", `${line} --silent --show-error`],
        cleanEnv(),
        dir,
      );
      assert.equal(result.code, 0, `${line}\n${result.stderr}`);
      return result.stdout;
    };
    const [post, get, del, gone, backup, status] = curls as [
      string,
      string,
      string,
      string,
      string,
      string,
    ];
    const written = JSON.parse(await run(post));
    assert.deepEqual([written.k, written.v, typeof written.index], ["a", "1", "number"]);
    assert.deepEqual(_kv(JSON.parse(await run(get))), { k: "a", v: "1" });
    assert.deepEqual(
      { ...JSON.parse(await run(del)), index: 0 },
      { k: "a", deleted: true, index: 0 },
    );
    const notFound = await run(gone);
    assert.match(notFound, /^HTTP\/2 404/);
    assert.ok(notFound.trimEnd().endsWith('{"error":"key not found","k":"a"}'), notFound);
    await run(backup);
    assert.ok((await Deno.stat(join(dir, "backup.snap"))).size > 0);
    assert.equal(JSON.parse(await run(status)).leader.api_url.startsWith("https://"), true);

    // Without a token a write is refused with 401; the read token cannot write (403). Over
    // HTTP/1.1: the node answers before reading the body and then resets the HTTP/2 stream with
    // NO_ERROR, as RFC 9113 section 8.1 allows, which curl 7.88 sometimes reports as error 92
    // instead of the answer it got.
    const ca = join(dir, "tls", "ca.crt");
    const tokens = JSON.parse(await Deno.readTextFile(join(dir, "tls", "tokens.json")));
    const readToken = tokens.find((t: { role: string }) => t.role === "read").token;
    const refusals: [string[], string][] = [
      [[], "401"],
      [["-H", `Authorization: Bearer ${readToken}`], "403"],
    ];
    for (const [headers, code] of refusals) {
      const args = ["--silent", "--http1.1", "--cacert", ca, ...headers, "-w", "\n%{http_code}"];
      args.push("-H", "Content-Type: application/json", "-d", '{"k":"b","v":"1"}');
      const refused = await runCommand(
        "curl",
        [...args, `https://127.0.0.1:${base}/v1/data`],
        cleanEnv(),
        dir,
      );
      assert.equal(
        refused.stdout.split("\n").at(-1),
        code,
        `${refused.stdout}\n${refused.stderr}\n${launcher.output()}`,
      );
    }
    const b = await run(
      get.replace("/v1/data/a", "/v1/data/b") + " -o /dev/null -w '%{http_code}'",
    );
    assert.equal(b, "404");

    launcher.child.kill("SIGTERM");
    const stopped = await launcher.done;
    assert.equal(stopped.code, 0, launcher.output());
    for (let i = 1; i <= 3; i++) {
      assert.ok(launcher.stdout.join("\n").includes(`node-${i} exited with code 0`));
    }
  } finally {
    await _stopRealLauncher(launcher, dir);
    await Deno.remove(dir, { recursive: true });
  }
});

/** The key and value of an answer (answers also carry the key's revisions). */
function _kv(answer: unknown): { k: unknown; v: unknown } {
  const { k, v } = answer as { k?: unknown; v?: unknown };
  return { k, v };
}
