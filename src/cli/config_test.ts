import { X509Certificate } from "node:crypto";
import assert from "node:assert/strict";
import { makeCertificates } from "../../testing/certs.ts";
import {
  ConfigError,
  FLAGS,
  type NodeConfig,
  parseArgs,
  type ParseArgsOptions,
  reloadTlsFiles,
} from "./config.ts";

const _FILE_PATH = "cluster.config.json";
const _FILE = JSON.stringify([
  { node_id: "node-1", rpc_url: "http://localhost:6666", api_url: "http://localhost:7777" },
  { node_id: "node-2", rpc_url: "http://localhost:6667", api_url: "http://localhost:7778" },
  { node_id: "node-3", rpc_url: "http://localhost:6668", api_url: "http://localhost:7779" },
]);
const _PEERS = [
  { id: "node-1", rpcUrl: "http://localhost:6666", apiUrl: "http://localhost:7777" },
  { id: "node-2", rpcUrl: "http://localhost:6667", apiUrl: "http://localhost:7778" },
  { id: "node-3", rpcUrl: "http://localhost:6668", apiUrl: "http://localhost:7779" },
];

/** A readFile that serves only the given files. */
function _files(files: Record<string, string> = { [_FILE_PATH]: _FILE }) {
  return (path: string): string => {
    const text = files[path];
    if (text === undefined) throw new Deno.errors.NotFound(`No such file: ${path}`);
    return text;
  };
}

function _config(
  argv: string[],
  env: Record<string, string | undefined> = {},
  readFile = _files(),
  options: ParseArgsOptions = {},
): NodeConfig {
  const result = parseArgs(argv, env, readFile, options);
  assert.equal(result.kind, "run");
  return (result as { config: NodeConfig }).config;
}

function _assertConfigError(run: () => unknown, ...fragments: string[]): void {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${caught}`);
  assert.equal(caught.name, "ConfigError");
  for (const fragment of fragments) {
    assert.ok(
      caught.message.includes(fragment),
      `message ${JSON.stringify(caught.message)} lacks ${JSON.stringify(fragment)}`,
    );
  }
}

const _DEFAULT_CONFIG: NodeConfig = {
  id: "node-1",
  apiPort: 7777,
  rpcPort: 6666,
  rpcListenHost: "localhost",
  apiListenHost: "localhost",
  peerTls: null,
  dataDir: "data/node-1",
  walDir: "data/node-1/wal",
  logMetadataPath: "data/node-1/log-metadata.json",
  raftStatePath: "data/node-1/raft-state.json",
  snapshotDir: "data/node-1/snapshots",
  joinMode: "static",
  clusterConfigPath: "cluster.config.json",
  peers: _PEERS,
  electionTimeoutMs: 1000,
  heartbeatMs: 100,
  rpcTimeoutMs: 2000,
  apiTimeoutMs: 5000,
  apiFwdTimeoutMs: 5000,
  maxConnRetryAttempts: 3,
  snapshotThreshold: 10000,
  snapshotThresholdBytes: 67108864,
  restoreFrom: null,
  clusterToken: "raftkv",
  join: null,
  maxKeyBytes: 1024,
  maxValueBytes: 1048576,
  maxInflightRequests: 1024,
  maxInflightBytes: 67108864,
  maxClientUnreadBytes: 16777216,
  maxForwardedRequests: 256,
  maxPendingProposals: 4096,
  maxPendingBytes: 67108864,
  quotaBytes: 1073741824,
  maxConcurrentBackups: 2,
  backupTimeoutMs: 600_000,
  watchHistoryEvents: 10_000,
  watchHistoryBytes: 67108864,
  watchBufferEvents: 1024,
  watchBufferBytes: 16 * 1024 * 1024,
  maxWatchBytes: 256 * 1024 * 1024,
  watchHeartbeatMs: 15_000,
  maxWatchers: 10_000,
  logLevel: "info",
  logFormat: "text",
  apiTls: null,
  tokens: null,
  tokensFile: null,
  tlsSources: { peer: null, api: null },
  reloadIntervalMs: 5000,
  transferOnShutdown: true,
  compactHeap: false,
};

Deno.test("parseArgs() fills in every default from --id and the cluster file alone", () => {
  assert.deepEqual(parseArgs(["--id", "node-1"], {}, _files()), {
    kind: "run",
    config: _DEFAULT_CONFIG,
    warnings: [],
  });
});

/** A static-mode flag, a value for it, and what the value must turn into. */
const _STATIC_CASES: [flag: string, value: string, expected: Partial<NodeConfig>][] = [
  ["--id", "node-2", { id: "node-2", apiPort: 7778, rpcPort: 6667, dataDir: "data/node-2" }],
  ["--api-port", "9001", { apiPort: 9001 }],
  ["--rpc-port", "9002", { rpcPort: 9002 }],
  ["--listen-host", "0.0.0.0", { rpcListenHost: "0.0.0.0", apiListenHost: "0.0.0.0" }],
  ["--data-dir", "/var/lib/kv", { dataDir: "/var/lib/kv", walDir: "/var/lib/kv/wal" }],
  ["--log-entry-path", "/wal", { walDir: "/wal" }],
  ["--log-metadata-path", "/meta.json", { logMetadataPath: "/meta.json" }],
  ["--raft-state-path", "/state.json", { raftStatePath: "/state.json" }],
  ["--snapshot-path", "/snaps", { snapshotDir: "/snaps" }],
  ["--snapshot-threshold", "50", { snapshotThreshold: 50 }],
  ["--snapshot-threshold-bytes", "1048576", { snapshotThresholdBytes: 1_048_576 }],
  ["--restore-from", "backup.snap", { restoreFrom: "backup.snap" }],
  ["--cluster-token", "staging-2", { clusterToken: "staging-2" }],
  ["--join", "http://10.0.0.1:8001/", { join: "http://10.0.0.1:8001" }],
  ["--join-mode", "static", { joinMode: "static" }],
  ["--cluster-config-path", "other.json", { clusterConfigPath: "other.json" }],
  ["--election-timeout", "3s", { electionTimeoutMs: 3000 }],
  ["--heartbeat", "250ms", { heartbeatMs: 250 }],
  ["--rpc-timeout", "1.5s", { rpcTimeoutMs: 1500 }],
  ["--api-timeout", "2m", { apiTimeoutMs: 120_000 }],
  ["--api-fwd-timeout", "700", { apiFwdTimeoutMs: 700 }],
  ["--max-conn-retry-attempts", "7", { maxConnRetryAttempts: 7 }],
  ["--max-key-bytes", "64", { maxKeyBytes: 64 }],
  ["--max-value-bytes", "4096", { maxValueBytes: 4096 }],
  ["--max-inflight-requests", "4", { maxInflightRequests: 4 }],
  ["--max-inflight-bytes", "100000", { maxInflightBytes: 100_000, maxClientUnreadBytes: 25_000 }],
  ["--max-client-unread-bytes", "1048576", { maxClientUnreadBytes: 1_048_576 }],
  ["--max-client-unread-bytes", "67108864", { maxClientUnreadBytes: 67_108_864 }],
  ["--max-client-unread-bytes", "0", { maxClientUnreadBytes: 0 }],
  ["--max-forwarded-requests", "3", { maxForwardedRequests: 3 }],
  ["--max-pending-proposals", "8", { maxPendingProposals: 8 }],
  ["--max-pending-bytes", "65536", { maxPendingBytes: 65536 }],
  ["--quota-bytes", "1000", { quotaBytes: 1000 }],
  ["--quota-bytes", "0", { quotaBytes: 0 }],
  ["--max-concurrent-backups", "1", { maxConcurrentBackups: 1 }],
  ["--max-watchers", "5", { maxWatchers: 5 }],
  ["--backup-timeout", "90s", { backupTimeoutMs: 90_000 }],
  ["--reload-interval", "30s", { reloadIntervalMs: 30_000 }],
  ["--reload-interval", "0", { reloadIntervalMs: 0 }],
  ["--reload-interval", "100ms", { reloadIntervalMs: 100 }],
  ["--watch-history", "500", { watchHistoryEvents: 500 }],
  ["--watch-history-bytes", "4096", { watchHistoryBytes: 4096 }],
  ["--watch-buffer", "16", { watchBufferEvents: 16 }],
  ["--watch-buffer-bytes", "65536", { watchBufferBytes: 65536 }],
  ["--max-watch-bytes", "1048576", { maxWatchBytes: 1048576 }],
  ["--watch-heartbeat", "2s", { watchHeartbeatMs: 2000 }],
  ["--log-level", "debug", { logLevel: "debug" }],
  ["--log-format", "json", { logFormat: "json" }],
  ["--transfer-on-shutdown", "false", { transferOnShutdown: false }],
  ["--compact-heap", "true", { compactHeap: true }],
];
const _FILES = _files({ [_FILE_PATH]: _FILE, "other.json": _FILE });

Deno.test("parseArgs() reads every static-mode flag as --flag value and --flag=value", () => {
  for (const [flag, value, expected] of _STATIC_CASES) {
    const base = flag === "--id" ? [] : ["--id", "node-1"];
    for (const argv of [[...base, flag, value], [...base, `${flag}=${value}`]]) {
      const config = _config(argv, {}, _FILES);
      assert.deepEqual({ ...config, ...expected }, config, argv.join(" "));
    }
  }
});

Deno.test("parseArgs() reads every static-mode flag from its RAFTKV_ variable", () => {
  for (const [flag, value, expected] of _STATIC_CASES) {
    const env = FLAGS.find((info) => info.name === flag)?.env;
    assert.ok(env, flag);
    const base = flag === "--id" ? {} : { RAFTKV_ID: "node-1" };
    const config = _config([], { ...base, [env]: value }, _FILES);
    assert.deepEqual({ ...config, ...expected }, config, env);
  }
});

Deno.test("parseArgs() tests cover every flag in the table", () => {
  const covered = new Set([
    ..._STATIC_CASES.map(([flag]) => flag),
    "--k8s-replicas",
    "--k8s-service",
    "--k8s-namespace",
    "--k8s-cluster-domain",
    "--api-cert",
    "--api-key",
    "--tokens-file",
    "--peer-cert",
    "--peer-key",
    "--peer-ca",
    "--help",
    "--version",
  ]);
  assert.deepEqual(FLAGS.map((flag) => flag.name).filter((name) => !covered.has(name)), []);
});

Deno.test("parseArgs() accepts --heartbeat-interval for --heartbeat", () => {
  assert.equal(_config(["--id", "node-1", "--heartbeat-interval", "200"]).heartbeatMs, 200);
  assert.equal(_config(["--id", "node-1", "--heartbeat-interval=0.2s"]).heartbeatMs, 200);
});

Deno.test("parseArgs() names an alias as typed when its value is bad", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--heartbeat-interval", "fast"], {}, _files()),
    'Invalid value for --heartbeat-interval: "fast" is not a duration',
  );
});

Deno.test("parseArgs() prefers a flag to its variable and a variable to the default", () => {
  const env = { RAFTKV_ID: "node-1", RAFTKV_API_PORT: "8000", RAFTKV_HEARTBEAT: "200" };
  const fromEnv = _config([], env);
  assert.equal(fromEnv.apiPort, 8000);
  assert.equal(fromEnv.heartbeatMs, 200);
  assert.equal(fromEnv.rpcPort, 6666);
  const fromFlag = _config(["--api-port", "9000", "--id=node-2"], env);
  assert.equal(fromFlag.apiPort, 9000);
  assert.equal(fromFlag.id, "node-2");
  assert.equal(fromFlag.heartbeatMs, 200);
});

Deno.test("parseArgs() treats an empty variable as unset", () => {
  const config = _config(["--id", "node-1"], { RAFTKV_API_PORT: "", RAFTKV_DATA_DIR: "" });
  assert.equal(config.apiPort, 7777);
  assert.equal(config.dataDir, "data/node-1");
});

Deno.test("parseArgs() does not validate a variable that a flag overrides", () => {
  assert.equal(_config(["--id", "node-1", "--api-port", "1"], { RAFTKV_API_PORT: "x" }).apiPort, 1);
});

Deno.test("parseArgs() reads durations as milliseconds or with a unit", () => {
  const cases: [string, number][] = [["150", 150], ["150ms", 150], ["1s", 1000], ["1.5s", 1500], [
    "2m",
    120_000,
  ], ["1m30s", 90_000]];
  for (const [text, ms] of cases) {
    assert.equal(_config(["--id", "node-1", "--rpc-timeout", text]).rpcTimeoutMs, ms, text);
  }
});

Deno.test("parseArgs() rejects bad durations, naming the flag or variable", () => {
  for (const text of ["abc", "1.5", "-5", "10d"]) {
    _assertConfigError(
      () => parseArgs(["--id", "node-1", `--api-timeout=${text}`], {}, _files()),
      `Invalid value for --api-timeout: ${JSON.stringify(text)} is not a duration`,
    );
  }
  _assertConfigError(
    () => parseArgs(["--id", "node-1"], { RAFTKV_RPC_TIMEOUT: "0.5ms" }, _files()),
    'Invalid value for RAFTKV_RPC_TIMEOUT: "0.5ms" is not a whole number of milliseconds',
  );
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--api-fwd-timeout", "0s"], {}, _files()),
    'Invalid value for --api-fwd-timeout: "0s" is not a positive duration',
  );
  _assertConfigError(
    () => parseArgs(["--id", "node-1"], { RAFTKV_RELOAD_INTERVAL: "99ms" }, _files()),
    'Invalid value for RAFTKV_RELOAD_INTERVAL: "99ms" is under 100ms (0 turns the looks off)',
  );
});

Deno.test("parseArgs() rejects a heartbeat not shorter than the election timeout", () => {
  for (const heartbeat of ["1000", "1500"]) {
    _assertConfigError(
      () => parseArgs(["--id", "node-1", "--heartbeat", heartbeat], {}, _files()),
      `The heartbeat (${heartbeat}ms) must be shorter than the election timeout (1000ms)`,
    );
  }
});

Deno.test("parseArgs() rejects an election timeout under twice the heartbeat", () => {
  _assertConfigError(
    () =>
      parseArgs(["--id", "node-1", "--election-timeout", "300", "--heartbeat=200"], {}, _files()),
    "The election timeout (300ms) must be at least twice the heartbeat (200ms)",
  );
  const config = _config(["--id", "node-1", "--election-timeout", "400", "--heartbeat=200"]);
  assert.equal(config.electionTimeoutMs, 400);
});

Deno.test("parseArgs() rejects bad ports from flags and variables", () => {
  for (const port of ["0", "65536", "abc", "-1", "80.5", "0x50"]) {
    _assertConfigError(
      () => parseArgs(["--id", "node-1", "--api-port", port], {}, _files()),
      `Invalid value for --api-port: ${JSON.stringify(port)} is not a port number (1-65535)`,
    );
  }
  _assertConfigError(
    () => parseArgs(["--id", "node-1"], { RAFTKV_RPC_PORT: "99999" }, _files()),
    'Invalid value for RAFTKV_RPC_PORT: "99999" is not a port number (1-65535)',
  );
  assert.equal(_config(["--id", "node-1", "--rpc-port", "65535"]).rpcPort, 65535);
});

Deno.test("parseArgs() rejects an API port equal to the RPC port", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--api-port", "6666"], {}, _files()),
    "The API port and the RPC port are both 6666",
  );
});

Deno.test("parseArgs() rejects counts and sizes that are not positive integers", () => {
  const flags = [
    "--snapshot-threshold",
    "--snapshot-threshold-bytes",
    "--max-key-bytes",
    "--max-value-bytes",
    "--max-inflight-requests",
    "--max-inflight-bytes",
    "--max-forwarded-requests",
    "--max-pending-proposals",
    "--max-pending-bytes",
    "--max-concurrent-backups",
    "--watch-history",
    "--watch-buffer",
    "--max-watchers",
  ];
  for (const flag of flags) {
    for (const value of ["0", "-3", "1.5", "ten", "1e3"]) {
      _assertConfigError(
        () => parseArgs(["--id", "node-1", flag, value], {}, _files()),
        `Invalid value for ${flag}: ${JSON.stringify(value)} is not a positive integer`,
      );
    }
  }
  _assertConfigError(
    () => parseArgs(["--id", "node-1"], { RAFTKV_MAX_CONN_RETRY_ATTEMPTS: "many" }, _files()),
    'Invalid value for RAFTKV_MAX_CONN_RETRY_ATTEMPTS: "many" is not a positive integer',
  );
  for (const value of ["-3", "1.5", "1GiB", "1e3"]) {
    _assertConfigError(
      () => parseArgs(["--id", "node-1", "--quota-bytes", value], {}, _files()),
      `Invalid value for --quota-bytes: ${JSON.stringify(value)} is not a whole number`,
    );
  }
});

Deno.test("parseArgs() takes --max-client-unread-bytes up to --max-inflight-bytes, by default a quarter of it", () => {
  const bounds = (argv: string[], env: Record<string, string> = {}) => {
    const { maxInflightBytes, maxClientUnreadBytes } = _config(["--id", "node-1", ...argv], env);
    return [maxInflightBytes, maxClientUnreadBytes];
  };
  assert.deepEqual(bounds([]), [64 << 20, 16 << 20]);
  // The default follows --max-inflight-bytes, from a flag or its variable; never 0 (off).
  assert.deepEqual(bounds(["--max-inflight-bytes", "1000001"]), [1_000_001, 250_000]);
  assert.deepEqual(bounds([], { RAFTKV_MAX_INFLIGHT_BYTES: "4096" }), [4096, 1024]);
  assert.deepEqual(bounds(["--max-inflight-bytes", "3"]), [3, 1]);
  // Any share up to the node's budget, or 0 for none.
  assert.deepEqual(bounds(["--max-inflight-bytes", "4096", "--max-client-unread-bytes", "4096"]), [
    4096,
    4096,
  ]);
  assert.deepEqual(bounds(["--max-client-unread-bytes", "1"]), [64 << 20, 1]);
  assert.deepEqual(bounds([], { RAFTKV_MAX_CLIENT_UNREAD_BYTES: "0" }), [64 << 20, 0]);
  // One client's share larger than the node's budget is refused, naming both.
  _assertConfigError(
    () =>
      parseArgs(
        ["--id", "node-1", "--max-inflight-bytes", "4096", "--max-client-unread-bytes", "4097"],
        {},
        _files(),
      ),
    'Invalid value for --max-client-unread-bytes: "4097" is more than --max-inflight-bytes (4096)',
    "0 turns the per-client bound off",
  );
  _assertConfigError(
    () =>
      parseArgs(["--id", "node-1"], { RAFTKV_MAX_CLIENT_UNREAD_BYTES: String(65 << 20) }, _files()),
    `Invalid value for RAFTKV_MAX_CLIENT_UNREAD_BYTES: "${65 << 20}" is more than ` +
      `--max-inflight-bytes (${64 << 20})`,
  );
  for (const value of ["-1", "1.5", "16MiB", "1e6"]) {
    _assertConfigError(
      () => parseArgs(["--id", "node-1", "--max-client-unread-bytes", value], {}, _files()),
      `Invalid value for --max-client-unread-bytes: ${JSON.stringify(value)} is not a whole number`,
    );
  }
});

Deno.test("parseArgs() rejects an unknown log level, log format or join mode", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--log-level", "verbose"], {}, _files()),
    'Invalid value for --log-level: "verbose" is not one of "debug", "info", "warn", "error"',
  );
  _assertConfigError(
    () => parseArgs(["--id", "node-1"], { RAFTKV_LOG_FORMAT: "logfmt" }, _files()),
    'Invalid value for RAFTKV_LOG_FORMAT: "logfmt" is not one of "text", "json"',
  );
  _assertConfigError(
    () => parseArgs(["--id", "node-1"], { RAFTKV_JOIN_MODE: "dns" }, _files()),
    'Invalid value for RAFTKV_JOIN_MODE: "dns" is not one of "static", "cluster-file", "k8s"',
  );
});

Deno.test("parseArgs() rejects a listen host that is not a bare host", () => {
  for (const host of ["http://0.0.0.0", "[::]", "a b"]) {
    _assertConfigError(
      () => parseArgs(["--id", "node-1", "--listen-host", host], {}, _files()),
      `Invalid value for --listen-host: ${JSON.stringify(host)} is not a host name or IP address`,
    );
  }
  assert.equal(_config(["--id", "node-1", "--listen-host", "::"]).rpcListenHost, "::");
});

Deno.test("parseArgs() rejects an unknown flag and suggests the closest one", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--election-timout", "1s"], {}, _files()),
    'Unknown flag "--election-timout" (did you mean "--election-timeout"?)',
  );
});

Deno.test("parseArgs() rejects a flag without its value", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--data-dir"], {}, _files()),
    "Flag --data-dir needs a value: --data-dir <dir>",
  );
});

Deno.test("parseArgs() requires --id in static mode", () => {
  _assertConfigError(
    () => parseArgs([], {}, _files()),
    "Missing the node id: pass --id <id> (or set RAFTKV_ID)",
  );
});

Deno.test("parseArgs() rejects an id the cluster file does not list", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-9"], {}, _files()),
    'Invalid cluster file "cluster.config.json": it does not list this node\'s id "node-9" ' +
      '(from --id); it lists "node-1", "node-2", "node-3"',
  );
  _assertConfigError(
    () => parseArgs([], { RAFTKV_ID: "node-9" }, _files()),
    '"node-9" (from RAFTKV_ID)',
  );
});

Deno.test("parseArgs() reports a cluster file it cannot read", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--cluster-config-path", "missing.json"], {}, _files()),
    'Cannot read cluster file "missing.json": No such file: missing.json',
  );
});

Deno.test("parseArgs() reports cluster file problems with the file's name and the entry", () => {
  const node = (id: string, rpc: number, api: number, scheme = "http") => ({
    node_id: id,
    rpc_url: `${scheme}://localhost:${rpc}`,
    api_url: `http://localhost:${api}`,
  });
  const cases: [unknown, string][] = [
    [{ "node-1": {} }, "expected a JSON array"],
    [[node("node-1", 1, 2), node("node-1", 3, 4)], 'entry 2 (node_id "node-1"): duplicate node_id'],
    [[node("node-1", 1, 2), node("node-2", 3, 2)], "localhost:2 are already used by entry 1"],
    [[node("node-1", 1, 2), node("node-2", 3, 4, "grpc")], 'has scheme "grpc"'],
    [
      [node("node-1", 1, 2), { node_id: "node-2", rpc_url: "http://:x", api_url: "http://h:4" }],
      [
        'entry 2 (node_id "node-2"): rpc_url "http://:x" is not a valid URL',
      ].join(""),
    ],
  ];
  for (const [data, fragment] of cases) {
    const readFile = _files({ "c.json": JSON.stringify(data) });
    _assertConfigError(
      () => parseArgs(["--id", "node-1", "--cluster-config-path", "c.json"], {}, readFile),
      'Invalid cluster file "c.json": ',
      fragment,
    );
  }
});

Deno.test("parseArgs() takes the ports from this node's URLs in the cluster file", () => {
  const config = _config(["--id", "node-3"]);
  assert.equal(config.apiPort, 7779);
  assert.equal(config.rpcPort, 6668);
  const file = JSON.stringify([
    { node_id: "a", rpc_url: "http://kv-a.example", api_url: "http://kv-a.example:8080" },
  ]);
  const fromDefaults = _config(["--id", "a"], {}, _files({ [_FILE_PATH]: file }));
  assert.equal(fromDefaults.rpcPort, 80);
  assert.equal(fromDefaults.apiPort, 8080);
  // (An https URL without a port means 443: see urlPort; serving it needs --api-cert.)
});

Deno.test("parseArgs() lets explicit ports differ from the cluster file", () => {
  const config = _config(["--id", "node-1", "--api-port", "17777", "--rpc-port", "16666"]);
  assert.equal(config.apiPort, 17777);
  assert.equal(config.rpcPort, 16666);
  assert.deepEqual(config.peers, _PEERS);
});

Deno.test("parseArgs() derives every storage path from --data-dir", () => {
  const config = _config(["--id", "node-1", "--data-dir", "/srv/kv/"]);
  assert.deepEqual(
    [
      config.dataDir,
      config.walDir,
      config.logMetadataPath,
      config.raftStatePath,
      config.snapshotDir,
    ],
    [
      "/srv/kv/",
      "/srv/kv/wal",
      "/srv/kv/log-metadata.json",
      "/srv/kv/raft-state.json",
      "/srv/kv/snapshots",
    ],
  );
});

Deno.test("parseArgs() lets explicit storage paths override the derived ones", () => {
  const config = _config(["--id", "node-2", "--data-dir=d", "--snapshot-path", "/fast/snaps"]);
  assert.equal(config.snapshotDir, "/fast/snaps");
  assert.equal(config.walDir, "d/wal");
  const noDataDir = _config(["--id", "node-2", "--raft-state-path", "s.json"]);
  assert.equal(noDataDir.dataDir, "data/node-2");
  assert.equal(noDataDir.raftStatePath, "s.json");
  assert.equal(noDataDir.walDir, "data/node-2/wal");
});

Deno.test("parseArgs() reports no data directory when every storage path is explicit", () => {
  const config = _config([
    "--id=node-1",
    "--log-entry-path=w",
    "--log-metadata-path=m.json",
    "--raft-state-path=r.json",
    "--snapshot-path=s",
  ]);
  assert.equal(config.dataDir, null);
  assert.deepEqual(
    [config.walDir, config.logMetadataPath, config.raftStatePath, config.snapshotDir],
    ["w", "m.json", "r.json", "s"],
  );
});

Deno.test("parseArgs() rejects Kubernetes flags in static mode", () => {
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--k8s-replicas", "3"], {}, _files()),
    'Flag --k8s-replicas applies only to --join-mode k8s, but the join mode is "static"',
  );
  // Variables may be ambient in the environment, so they are merely ignored.
  assert.equal(_config(["--id", "node-1"], { RAFTKV_K8S_REPLICAS: "x" }).joinMode, "static");
});

const _NO_FILES = (path: string): string => {
  throw new Error(`k8s mode must not read ${path}`);
};

function _k8s(argv: string[], env: Record<string, string> = {}): NodeConfig {
  return _config(["--join-mode", "k8s", ...argv], { HOSTNAME: "raftkv-1", ...env }, _NO_FILES);
}

Deno.test("parseArgs() derives the peers from the StatefulSet in k8s mode", () => {
  const config = _k8s(["--k8s-replicas", "3"]);
  assert.equal(config.joinMode, "k8s");
  assert.equal(config.clusterConfigPath, null);
  assert.equal(config.id, "raftkv-1");
  assert.equal(config.apiPort, 7777);
  assert.equal(config.rpcPort, 6666);
  assert.equal(config.dataDir, "data/raftkv-1");
  assert.deepEqual(
    config.peers.map((peer) => [peer.id, peer.rpcUrl, peer.apiUrl]),
    [0, 1, 2].map(
      (i) => [
        `raftkv-${i}`,
        `http://raftkv-${i}.raftkv.default.svc.cluster.local:6666`,
        `http://raftkv-${i}.raftkv.default.svc.cluster.local:7777`,
      ],
    ),
  );
});

Deno.test("parseArgs() reads every k8s flag both ways and from the environment", () => {
  const expected = "http://raftkv-0.kv-hl.prod.svc.k8s.internal:9000";
  const values = {
    "--k8s-replicas": "2",
    "--k8s-service": "kv-hl",
    "--k8s-namespace": "prod",
    "--k8s-cluster-domain": "k8s.internal",
    "--rpc-port": "9000",
  };
  const spaced = Object.entries(values).flat();
  const joined = Object.entries(values).map(([flag, value]) => `${flag}=${value}`);
  const env = Object.fromEntries(
    Object.entries(values).map(([flag, value]) => [
      FLAGS.find((info) => info.name === flag)?.env ?? "",
      value,
    ]),
  );
  for (const config of [_k8s(spaced), _k8s(joined), _k8s([], env)]) {
    assert.equal(config.peers.length, 2);
    assert.equal(config.peers[0]?.rpcUrl, expected);
  }
});

Deno.test("parseArgs() takes the k8s namespace from the flag, RAFTKV_, POD_NAMESPACE, then default", () => {
  const host = (config: NodeConfig) => new URL(config.peers[0]?.rpcUrl ?? "").hostname;
  assert.equal(host(_k8s(["--k8s-replicas=3"])), "raftkv-0.raftkv.default.svc.cluster.local");
  const env = { POD_NAMESPACE: "from-pod" };
  assert.equal(host(_k8s(["--k8s-replicas=3"], env)), "raftkv-0.raftkv.from-pod.svc.cluster.local");
  const both = { ...env, RAFTKV_K8S_NAMESPACE: "from-var" };
  assert.equal(
    host(_k8s(["--k8s-replicas=3"], both)),
    "raftkv-0.raftkv.from-var.svc.cluster.local",
  );
  assert.equal(
    host(_k8s(["--k8s-replicas=3", "--k8s-namespace", "from-flag"], both)),
    "raftkv-0.raftkv.from-flag.svc.cluster.local",
  );
});

Deno.test("parseArgs() prefers an injected hostname to HOSTNAME", () => {
  const config = _config(
    ["--join-mode=k8s", "--k8s-replicas=3"],
    { HOSTNAME: "raftkv-1" },
    _NO_FILES,
    { hostname: () => "raftkv-2" },
  );
  assert.equal(config.id, "raftkv-2");
});

Deno.test("parseArgs() requires the replica count and the hostname in k8s mode", () => {
  _assertConfigError(
    () => _k8s([]),
    "Missing the replica count: pass --k8s-replicas <n> (or set RAFTKV_K8S_REPLICAS)",
  );
  _assertConfigError(
    () => parseArgs(["--join-mode", "k8s", "--k8s-replicas", "3"], {}, _NO_FILES),
    "Missing the pod's hostname",
  );
  _assertConfigError(
    () => _k8s(["--k8s-replicas", "three"]),
    'Invalid value for --k8s-replicas: "three" is not a positive integer',
  );
});

Deno.test("parseArgs() rejects a hostname that is not a StatefulSet pod name", () => {
  _assertConfigError(
    () => _k8s(["--k8s-replicas", "3"], { HOSTNAME: "raftkv" }),
    'Hostname "raftkv" is not a StatefulSet pod name',
  );
});

Deno.test("parseArgs() in k8s mode: a pod beyond the bootstrap replicas joins; the others never do", () => {
  const joining = _k8s(["--k8s-replicas", "3"], { HOSTNAME: "raftkv-5" });
  assert.equal(joining.id, "raftkv-5");
  assert.deepEqual(joining.peers.map((p) => p.id), ["raftkv-5"]);
  assert.match(joining.join ?? "", /^http:\/\/raftkv-0\.raftkv\./);
  const viaService = _k8s(["--k8s-replicas", "3", "--join", "http://raftkv:7777"], {
    HOSTNAME: "raftkv-3",
  });
  assert.equal(viaService.join, "http://raftkv:7777");
  const bootstrap = _k8s(["--k8s-replicas", "3", "--join", "http://raftkv:7777"], {
    HOSTNAME: "raftkv-1",
  });
  assert.equal(bootstrap.join, null);
  assert.equal(bootstrap.peers.length, 3);
});

Deno.test("parseArgs() accepts an explicit --id in k8s mode only if it is one of the pods", () => {
  assert.equal(_k8s(["--k8s-replicas=3", "--id=raftkv-2"]).id, "raftkv-2");
  _assertConfigError(
    () => _k8s(["--k8s-replicas=3", "--id=node-1"]),
    'Invalid value for --id: "node-1" is not one of the StatefulSet\'s pods raftkv-0 to raftkv-2',
  );
});

Deno.test("parseArgs() rejects --cluster-config-path in k8s mode", () => {
  _assertConfigError(
    () => _k8s(["--k8s-replicas=3", "--cluster-config-path", "c.json"]),
    "Flag --cluster-config-path applies only to --join-mode static",
  );
});

Deno.test("parseArgs() returns the help text for --help and -h before validating", () => {
  for (const flag of ["--help", "-h"]) {
    const result = parseArgs([flag, "--api-port", "0"], { RAFTKV_API_PORT: "x" }, _NO_FILES);
    assert.equal(result.kind, "help");
    const text = (result as { text: string }).text;
    for (const info of FLAGS) assert.ok(text.includes(info.name), info.name);
  }
});

Deno.test("parseArgs() returns version for --version", () => {
  assert.deepEqual(parseArgs(["--version"], {}, _NO_FILES), { kind: "version" });
  assert.equal(parseArgs(["--version", "--help"], {}, _NO_FILES).kind, "help");
});

Deno.test("parseArgs() warns about RAFTKV_ variables that match no flag", () => {
  const result = parseArgs(["--id", "node-1", "--listen-host", "127.0.0.1"], {
    RAFTKV_HEARTBEAT_MS: "50",
    RAFTKV_COLOUR: "red",
    PATH: "/bin",
  }, _files());
  assert.deepEqual((result as { warnings: string[] }).warnings, [
    "Ignoring unknown environment variable RAFTKV_COLOUR",
    "Ignoring unknown environment variable RAFTKV_HEARTBEAT_MS (did you mean RAFTKV_HEARTBEAT?)",
  ]);
});

Deno.test("parseArgs() accepts the repository's cluster.config.json", async () => {
  const text = await Deno.readTextFile(`${Deno.cwd()}/cluster.config.json`);
  for (const [index, id] of ["node-1", "node-2", "node-3"].entries()) {
    const config = _config(["--id", id], {}, _files({ [_FILE_PATH]: text }));
    assert.deepEqual(config.peers, _PEERS);
    assert.equal(config.rpcPort, 6666 + index);
    assert.equal(config.apiPort, 7777 + index);
  }
});

const _TLS_FILE = JSON.stringify([
  { node_id: "node-1", rpc_url: "http://localhost:6666", api_url: "https://localhost:7777" },
  { node_id: "node-2", rpc_url: "http://localhost:6667", api_url: "http://localhost:7778" },
]);
const _CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const _KEY = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";
const _TOKENS = '[{"token":"0123456789abcdef","role":"read","name":"ro"}]';
const _SECURITY_FILES = _files({
  [_FILE_PATH]: _TLS_FILE,
  "api.crt": _CERT,
  "api.key": _KEY,
  "tokens.json": _TOKENS,
});

Deno.test("parseArgs() reads --api-cert and --api-key for an https api_url, from flags or env", () => {
  const tls = { cert: _CERT, key: _KEY };
  const argv = ["--id", "node-1", "--api-cert", "api.crt", "--api-key=api.key"];
  assert.deepEqual(_config(argv, {}, _SECURITY_FILES).apiTls, tls);
  const env = { RAFTKV_ID: "node-1", RAFTKV_API_CERT: "api.crt", RAFTKV_API_KEY: "api.key" };
  assert.deepEqual(_config([], env, _SECURITY_FILES).apiTls, tls);
  assert.equal(_config(["--id", "node-2"], {}, _SECURITY_FILES).apiTls, null);
});

Deno.test("parseArgs() refuses TLS settings that do not fit this node's api_url", () => {
  const run = (argv: string[]) => () => parseArgs(argv, {}, _SECURITY_FILES);
  _assertConfigError(run(["--id", "node-1"]), '"https://localhost:7777" is https', "--api-cert");
  _assertConfigError(
    run(["--id", "node-1", "--api-cert", "api.crt"]),
    "--api-cert is set but --api-key is not",
  );
  _assertConfigError(
    run(["--id", "node-1", "--api-key", "api.key"]),
    "--api-key is set but --api-cert is not",
  );
  _assertConfigError(
    run(["--id", "node-2", "--api-cert", "api.crt", "--api-key", "api.key"]),
    'api_url "http://localhost:7778" in the cluster file is http',
  );
  _assertConfigError(
    run(["--id", "node-1", "--api-cert", "missing.crt", "--api-key", "api.key"]),
    'Cannot read --api-cert "missing.crt"',
  );
  _assertConfigError(
    run(["--id", "node-1", "--api-cert", "api.key", "--api-key", "api.key"]),
    '--api-cert "api.key" does not hold a PEM certificate',
  );
  _assertConfigError(
    run(["--id", "node-1", "--api-cert", "api.crt", "--api-key", "api.crt"]),
    '--api-key "api.crt" does not hold a PEM private key',
  );
});

Deno.test("parseArgs() serves every pod's API over https in k8s mode when TLS is set", () => {
  const config = _config(
    ["--join-mode", "k8s", "--k8s-replicas", "2", "--api-cert", "api.crt", "--api-key", "api.key"],
    { HOSTNAME: "kv-0" },
    _SECURITY_FILES,
  );
  assert.deepEqual(config.peers.map((p) => p.apiUrl), [
    "https://kv-0.kv.default.svc.cluster.local:7777",
    "https://kv-1.kv.default.svc.cluster.local:7777",
  ]);
  assert.ok(config.peers.every((p) => p.rpcUrl.startsWith("http://")));
});

Deno.test("parseArgs() reads the API's tokens from --tokens-file or RAFTKV_TOKENS, not both", () => {
  const expected = [{ token: "0123456789abcdef", role: "read", name: "ro" }];
  const base = ["--id", "node-2"];
  assert.deepEqual(
    _config([...base, "--tokens-file", "tokens.json"], {}, _SECURITY_FILES).tokens,
    expected,
  );
  assert.deepEqual(
    _config(base, { RAFTKV_TOKENS_FILE: "tokens.json" }, _SECURITY_FILES).tokens,
    expected,
  );
  assert.deepEqual(_config(base, { RAFTKV_TOKENS: _TOKENS }, _SECURITY_FILES).tokens, expected);
  // Where they came from, for SIGHUP: only a file is read again.
  assert.deepEqual(
    _config([...base, "--tokens-file", "tokens.json"], {}, _SECURITY_FILES).tokensFile,
    { value: "tokens.json", origin: "--tokens-file" },
  );
  assert.deepEqual(
    _config(base, { RAFTKV_TOKENS_FILE: "tokens.json" }, _SECURITY_FILES).tokensFile,
    { value: "tokens.json", origin: "RAFTKV_TOKENS_FILE" },
  );
  assert.equal(_config(base, { RAFTKV_TOKENS: _TOKENS }, _SECURITY_FILES).tokensFile, null);
  _assertConfigError(
    () =>
      parseArgs(
        [...base, "--tokens-file", "tokens.json"],
        { RAFTKV_TOKENS: _TOKENS },
        _SECURITY_FILES,
      ),
    "Both --tokens-file and RAFTKV_TOKENS are set",
  );
  _assertConfigError(
    () => parseArgs([...base, "--tokens-file", "nope.json"], {}, _SECURITY_FILES),
    'Cannot read --tokens-file "nope.json"',
  );
  _assertConfigError(
    () =>
      parseArgs(
        base,
        { RAFTKV_TOKENS: '[{"token":"0123456789abcdef","role":"root"}]' },
        _SECURITY_FILES,
      ),
    "Invalid tokens in RAFTKV_TOKENS: entry 1",
    '"role" is "root"',
  );
});

Deno.test("parseArgs() warns about an API open beyond loopback only without tokens", () => {
  const warnings = (argv: string[], env: Record<string, string> = {}) =>
    (parseArgs(["--id", "node-2", ...argv], env, _SECURITY_FILES) as { warnings: string[] })
      .warnings;
  // By default the API binds its api_url's host (localhost here): no warning.
  assert.deepEqual(warnings([]), []);
  assert.match(
    warnings(["--listen-host", "0.0.0.0"]).join(),
    /listens on 0\.0\.0\.0:7778 without authentication/,
  );
  assert.match(warnings(["--listen-host", "10.0.0.5"]).join(), /10\.0\.0\.5:7778 without/);
  assert.deepEqual(warnings(["--tokens-file", "tokens.json"]), []);
  assert.deepEqual(warnings([], { RAFTKV_TOKENS: _TOKENS }), []);
  for (const host of ["127.0.0.1", "127.1.2.3", "::1", "localhost"]) {
    assert.deepEqual(warnings(["--listen-host", host]), [], host);
  }
  // The tokens variable is known, so it draws no "unknown variable" warning either.
  assert.deepEqual(warnings(["--listen-host", "::1"], { RAFTKV_HEALTHCHECK_CACERT: "ca.crt" }), []);
});

Deno.test("parseArgs() listens on the hosts of this node's own URLs unless --listen-host overrides both", () => {
  const file = JSON.stringify([
    { node_id: "node-1", rpc_url: "http://10.0.0.1:6666", api_url: "http://[::1]:7777" },
    { node_id: "node-2", rpc_url: "http://10.0.0.2:6666", api_url: "http://10.0.0.2:7777" },
  ]);
  const files = _files({ [_FILE_PATH]: file });
  const own = _config(["--id", "node-1"], {}, files);
  assert.deepEqual([own.rpcListenHost, own.apiListenHost], ["10.0.0.1", "::1"]);
  for (
    const config of [
      _config(["--id", "node-1", "--listen-host", "0.0.0.0"], {}, files),
      _config(["--id", "node-1"], { RAFTKV_LISTEN_HOST: "0.0.0.0" }, files),
    ]
  ) {
    assert.deepEqual([config.rpcListenHost, config.apiListenHost], ["0.0.0.0", "0.0.0.0"]);
  }
  const pod = _k8s(["--k8s-replicas", "3"]);
  assert.equal(pod.rpcListenHost, "raftkv-1.raftkv.default.svc.cluster.local");
});

/** Certificates for node-1..3 and a second CA's node-1, as a readFile map beside the cluster files. */
async function _tlsFiles() {
  const dir = await Deno.makeTempDir();
  const other = await Deno.makeTempDir();
  try {
    const certs = await makeCertificates(dir, { nodes: ["node-1", "node-2", "raftkv-1"] });
    const stranger = await makeCertificates(other, { nodes: ["node-1"] });
    const read = (path: string) => Deno.readTextFileSync(path);
    const https = _FILE.replaceAll('"rpc_url":"http:', '"rpc_url":"https:');
    const files: Record<string, string> = {
      [_FILE_PATH]: https,
      "plain.json": _FILE,
      "ca.pem": read(certs.ca),
      "node-1.pem": read(certs.node("node-1").cert),
      "node-1.key": read(certs.node("node-1").key),
      "node-2.pem": read(certs.node("node-2").cert),
      "node-2.key": read(certs.node("node-2").key),
      "raftkv-1.pem": read(certs.node("raftkv-1").cert),
      "raftkv-1.key": read(certs.node("raftkv-1").key),
      "other-node-1.pem": read(stranger.node("node-1").cert),
      "other-node-1.key": read(stranger.node("node-1").key),
      "garbage.pem": "not a certificate\n",
    };
    return { files, read: _files(files) };
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(other, { recursive: true });
  }
}

const _TLS_FLAGS = [
  "--id",
  "node-1",
  "--peer-cert",
  "node-1.pem",
  "--peer-key",
  "node-1.key",
  "--peer-ca",
  "ca.pem",
];

Deno.test("parseArgs() turns on peer TLS with https:// rpc_urls and all three files, from flags or variables", async () => {
  const { files, read } = await _tlsFiles();
  const env = {
    RAFTKV_ID: "node-1",
    RAFTKV_PEER_CERT: "node-1.pem",
    RAFTKV_PEER_KEY: "node-1.key",
    RAFTKV_PEER_CA: "ca.pem",
  };
  for (const config of [_config(_TLS_FLAGS, {}, read), _config([], env, read)]) {
    assert.deepEqual(config.peerTls, {
      ca: files["ca.pem"],
      cert: files["node-1.pem"],
      key: files["node-1.key"],
      caPath: "ca.pem",
      certPath: "node-1.pem",
      keyPath: "node-1.key",
    });
    assert.equal(config.peers[1]?.rpcUrl, "https://localhost:6667");
  }
  // In k8s mode the files turn the derived rpc URLs into https:// ones.
  const pod = _config(
    ["--join-mode", "k8s", "--k8s-replicas", "3", ..._TLS_FLAGS.slice(2)].map((a) =>
      a.replace("node-1", "raftkv-1")
    ),
    { HOSTNAME: "raftkv-1" },
    read,
  );
  assert.equal(pod.peers[0]?.rpcUrl, "https://raftkv-0.raftkv.default.svc.cluster.local:6666");
  assert.equal(pod.peers[0]?.apiUrl, "http://raftkv-0.raftkv.default.svc.cluster.local:7777");
  assert.equal(pod.peerTls?.certPath, "raftkv-1.pem");
});

Deno.test("reloadTlsFiles() reads the TLS files again with the start-up checks, and the API key's match", async () => {
  const { files, read } = await _tlsFiles();
  const config = _config(_TLS_FLAGS, {}, read);
  const raw = (value: string, origin: string) => ({ value, origin });
  assert.deepEqual(config.tlsSources, {
    peer: {
      cert: raw("node-1.pem", "--peer-cert"),
      key: raw("node-1.key", "--peer-key"),
      ca: raw("ca.pem", "--peer-ca"),
    },
    api: null,
  });
  assert.deepEqual(_config(["--id", "node-1"]).tlsSources, { peer: null, api: null });

  const disk: Record<string, string> = {
    ...files,
    "api.pem": files["node-2.pem"]!,
    "api.key": files["node-2.key"]!,
  };
  const readDisk = (path: string) => {
    const text = disk[path];
    if (text === undefined) throw new Error(`No such file: ${path}`);
    return text;
  };
  const sources = {
    id: "node-1",
    tlsSources: {
      ...config.tlsSources,
      api: { cert: raw("api.pem", "--api-cert"), key: raw("api.key", "--api-key") },
    },
  };
  const same = reloadTlsFiles(sources, readDisk);
  assert.equal(same.peer?.cert, files["node-1.pem"]);
  assert.deepEqual(same.api, { cert: files["node-2.pem"], key: files["node-2.key"] });
  // Replaced files get the start-up checks: another CA's certificate, another node's.
  disk["node-1.pem"] = files["other-node-1.pem"]!;
  disk["node-1.key"] = files["other-node-1.key"]!;
  _assertConfigError(() => reloadTlsFiles(sources, readDisk), "is not signed by the CA");
  disk["node-1.pem"] = files["node-2.pem"]!;
  disk["node-1.key"] = files["node-2.key"]!;
  _assertConfigError(() => reloadTlsFiles(sources, readDisk), "it must be CN=node-1");
  disk["node-1.pem"] = files["node-1.pem"]!;
  disk["node-1.key"] = files["node-1.key"]!;
  disk["api.key"] = files["node-1.key"]!;
  _assertConfigError(
    () => reloadTlsFiles(sources, readDisk),
    'The key in --api-key "api.key" does not belong to the certificate in --api-cert "api.pem"',
  );
  disk["api.pem"] = files["node-1.pem"]!;
  assert.deepEqual(reloadTlsFiles(sources, readDisk).api, {
    cert: files["node-1.pem"],
    key: files["node-1.key"],
  });
  disk["api.pem"] = "garbage";
  _assertConfigError(
    () => reloadTlsFiles(sources, readDisk),
    '--api-cert "api.pem" does not hold a PEM certificate',
  );
});

Deno.test("parseArgs() and reloadTlsFiles() refuse certificates that expired or are not valid yet", async () => {
  const { files, read } = await _tlsFiles();
  const day = 86_400_000;
  const issued = Date.parse(new X509Certificate(files["node-1.pem"]!).validFrom);
  const api = ["--api-cert", "node-2.pem", "--api-key", "node-2.key"];
  const https = _files({
    ...files,
    [_FILE_PATH]: _FILE.replaceAll("http:", "https:"),
  });
  const at = (now: number, argv = _TLS_FLAGS, readFile = read) => () =>
    parseArgs(argv, {}, readFile, { now });
  // Valid (365 days from their making), and within the clock skew allowed before it.
  assert.equal(
    _config(_TLS_FLAGS, {}, read, { now: issued + 364 * day }).peerTls?.certPath,
    "node-1.pem",
  );
  assert.equal(
    _config(_TLS_FLAGS, {}, read, { now: issued - 60_000 }).peerTls?.certPath,
    "node-1.pem",
  );
  // The node's own certificate (the CA's runs as long: the CA's own end is checked too).
  _assertConfigError(
    at(issued + 366 * day),
    'The certificate in --peer-cert "node-1.pem" expired on',
  );
  _assertConfigError(
    at(issued - day),
    'The certificate in --peer-cert "node-1.pem" is not valid before',
    "is a clock wrong?",
  );
  // The API's.
  const both = [..._TLS_FLAGS, ...api];
  assert.ok(_config(both, {}, https, { now: issued + day }).apiTls !== null);
  _assertConfigError(at(issued + 366 * day, both, https), "expired on");
  const apiOnly = ["--id", "node-1", ...api];
  _assertConfigError(
    at(issued + 366 * day, apiOnly, _files({ ...files, [_FILE_PATH]: _TLS_FILE })),
    'The certificate in --api-cert "node-2.pem" expired on',
  );
  // A lone CA past its end: no peer's certificate verifies.
  const dir = await Deno.makeTempDir();
  try {
    const certs = await makeCertificates(dir, { nodes: ["node-1"] });
    const from = new Date(Date.now() - day).toISOString().replace(/[-:T]|\.\d+/g, "");
    await makeCertificates(dir, {
      nodes: ["node-1"],
      renew: true,
      validity: { from, to: "20991231000000Z" },
    });
    const longLived = _files({
      [_FILE_PATH]: _FILE.replaceAll('"rpc_url":"http:', '"rpc_url":"https:'),
      "ca.pem": Deno.readTextFileSync(certs.ca),
      "node-1.pem": Deno.readTextFileSync(certs.node("node-1").cert),
      "node-1.key": Deno.readTextFileSync(certs.node("node-1").key),
    });
    assert.ok(_config(_TLS_FLAGS, {}, longLived).peerTls !== null);
    _assertConfigError(
      at(Date.now() + 366 * day, _TLS_FLAGS, longLived),
      'The certificate in --peer-ca "ca.pem" expired on',
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // A reload gets the same checks.
  const config = _config(both, {}, https, { now: issued + day });
  assert.ok(reloadTlsFiles(config, https, issued + day).peer !== null);
  _assertConfigError(() => reloadTlsFiles(config, https, issued + 366 * day), "expired on");
  _assertConfigError(() => reloadTlsFiles(config, https, issued - day), "is not valid before");
});

Deno.test("parseArgs() refuses peer TLS settings that do not fit the rpc_urls or each other", async () => {
  const { read } = await _tlsFiles();
  _assertConfigError(
    () => parseArgs(["--id", "node-1"], {}, read),
    'The cluster file "cluster.config.json" lists https:// rpc_urls, which need mutual TLS',
    "--peer-cert, --peer-key and --peer-ca",
  );
  _assertConfigError(
    () => parseArgs(["--id", "node-1", "--peer-cert", "node-1.pem"], {}, read),
    "Peer TLS needs --peer-cert, --peer-key and --peer-ca together: --peer-cert is set, " +
      "but not --peer-key or --peer-ca",
  );
  _assertConfigError(
    () =>
      parseArgs(
        ["--id", "node-1", "--peer-cert", "node-1.pem"],
        { RAFTKV_PEER_CA: "ca.pem" },
        read,
      ),
    "--peer-cert and RAFTKV_PEER_CA are set, but not --peer-key",
  );
  _assertConfigError(
    () => parseArgs([..._TLS_FLAGS, "--cluster-config-path", "plain.json"], {}, read),
    "--peer-cert, --peer-key and --peer-ca turn on TLS between peers, but the cluster file " +
      '"plain.json" lists http:// rpc_urls: write them as https://',
  );
  _assertConfigError(
    () =>
      parseArgs(["--join-mode", "k8s", "--k8s-replicas", "3", "--peer-key", "k"], {
        HOSTNAME: "raftkv-1",
      }, read),
    "--peer-key is set, but not --peer-cert or --peer-ca",
  );
});

Deno.test("parseArgs() refuses peer TLS files that are missing, not PEM, mismatched or not this node's", async () => {
  const { read } = await _tlsFiles();
  const withFiles = (cert: string, key: string, ca = "ca.pem") =>
    parseArgs(
      ["--id", "node-1", "--peer-cert", cert, "--peer-key", key, "--peer-ca", ca],
      {},
      read,
    );
  _assertConfigError(
    () => withFiles("node-1.pem", "node-1.key", "missing.pem"),
    'Cannot read the file of --peer-ca "missing.pem": No such file: missing.pem',
  );
  _assertConfigError(
    () => withFiles("garbage.pem", "node-1.key"),
    'Invalid value for --peer-cert: "garbage.pem" holds no PEM certificate',
  );
  _assertConfigError(
    () => withFiles("node-1.pem", "node-1.key", "node-1.key"),
    'Invalid value for --peer-ca: "node-1.key" holds no PEM certificate',
  );
  _assertConfigError(
    () => withFiles("node-1.pem", "garbage.pem"),
    'Invalid value for --peer-key: "garbage.pem" holds no PEM private key',
  );
  _assertConfigError(
    () => withFiles("node-1.pem", "node-2.key"),
    'The key in --peer-key "node-2.key" does not belong to the certificate in --peer-cert ' +
      '"node-1.pem"',
  );
  _assertConfigError(
    () => withFiles("node-2.pem", "node-2.key"),
    'The certificate in --peer-cert "node-2.pem" has subject "CN=node-2"',
    "it must be CN=node-1, this node's id",
  );
  _assertConfigError(
    () => withFiles("other-node-1.pem", "other-node-1.key"),
    'The certificate in --peer-cert "other-node-1.pem" is not signed by the CA in --peer-ca ' +
      '"ca.pem"',
  );
});

Deno.test("parseArgs() with --join keeps only this node's own cluster file entry; a bad URL is named", () => {
  const config = _config(["--id", "node-1", "--join", "http://10.0.0.1:8001"], {}, _FILES);
  assert.deepEqual(config.peers.map((p) => p.id), ["node-1"]);
  assert.equal(config.join, "http://10.0.0.1:8001");
  _assertConfigError(
    () => _config(["--id", "node-1", "--join", "ftp://10.0.0.1:8001"], {}, _FILES),
    "--join",
    "not an http(s) URL",
  );
  _assertConfigError(
    () => _config(["--id", "node-1", "--join", "not a url"], {}, _FILES),
    "--join",
    "is not a URL",
  );
  // host:port means http://host:port, as the client's --endpoints and cluster files take it.
  for (
    const [given, url] of [
      ["10.0.0.1:8001", "http://10.0.0.1:8001"],
      ["raftkv-0.raftkv:7777", "http://raftkv-0.raftkv:7777"],
      ["[::1]:7777", "http://[::1]:7777"],
    ]
  ) {
    assert.equal(_config(["--id", "node-1", "--join", given!], {}, _FILES).join, url);
  }
});
