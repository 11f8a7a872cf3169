/**
 * Shared helper for end-to-end tests that run real raftkv node processes.
 *
 * {@linkcode startCluster} picks free ports, writes a cluster file into a fresh temporary
 * directory, starts one `deno run main.ts` process per node and waits until each answers
 * `/health`. The returned {@linkcode ProcessCluster} kills, stops, restarts, pauses and resumes
 * nodes, sends HTTP requests with deadlines, waits for a leader, keeps the last lines each node
 * printed, and on disposal kills everything and removes the temporary directory. With `tls`
 * (certificates from `makeCertificates`), peers use mutual TLS over `https://` rpc_urls.
 *
 * ```ts ignore
 * import { startCluster } from "./harness.ts";
 *
 * Deno.test("a write survives the leader's crash", async () => {
 *   await using cluster = await startCluster({ size: 3 });
 *   const leader = await cluster.waitForLeader();
 *   const put = await cluster.request(leader, "POST", "/v1/data", { k: "a", v: "1" });
 *   // ...assert on put.status, then:
 *   await cluster.kill(leader);
 *   const next = await cluster.waitForLeader();
 * });
 * ```
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { join } from "node:path";
import type { Certificates } from "./certs.ts";
import { readLines } from "./read_lines.ts";
import type { MemberStatus as NodeStatus } from "../src/cli/client/status.ts";
import { FETCH_BAD_PORTS } from "../src/cli/fetch_ports.ts";

/** One entry of a cluster file, spelled as in the file. */
export interface ClusterFileEntry {
  /** The node's id. */
  node_id: string;
  /** Base URL of the node's Raft RPC server. */
  rpc_url: string;
  /** Base URL of the node's client API server. */
  api_url: string;
}

/** A node of a {@linkcode ProcessCluster}, as returned by {@linkcode ProcessCluster.nodes}. */
export interface NodeInfo {
  /** The node's id: `node-1`, `node-2`, ... */
  id: string;
  /** Base URL of the node's client API, such as `"http://127.0.0.1:41234"`. */
  apiUrl: string;
  /** Base URL of the node's Raft RPC server. */
  rpcUrl: string;
  /** The API port. */
  apiPort: number;
  /** The RPC port. */
  rpcPort: number;
  /** The node's `--data-dir`, kept across restarts. */
  dataDir: string;
  /** Process id of the running process, or `null` when the node is not running. */
  pid: number | null;
  /** Whether the process is stopped with SIGSTOP (see {@linkcode ProcessCluster.pause}). */
  paused: boolean;
}

/** The body of `GET /v1/status`, as the command-line client reads it. */
export type { NodeStatus };

/** The outcome of an HTTP request made by {@linkcode httpRequest}. */
export interface HttpResult {
  /** The HTTP status code. */
  status: number;
  /** The body parsed as JSON, or `null` when it is empty or not JSON. */
  json: unknown;
  /** The body as text. */
  text: string;
  /** The response headers. */
  headers: Headers;
}

/** Options of {@linkcode httpRequest} and {@linkcode ProcessCluster.request}. */
export interface RequestOptions {
  /** Deadline for the whole exchange, body included, in milliseconds. Default 5000. */
  timeoutMs?: number;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** How to treat redirects, as in `fetch`. Default `"follow"`. */
  redirect?: RequestRedirect;
  /** The HTTP client to send with (one that trusts a test CA, say). Default: fetch's own. */
  client?: Deno.HttpClient;
}

/** Options of {@linkcode waitFor}. */
export interface WaitForOptions {
  /** How long to keep trying, in milliseconds. Default 5000. */
  deadlineMs?: number;
  /** Pause between attempts, in milliseconds. Default 50. */
  intervalMs?: number;
  /** What was awaited, for the error; a function is only called on failure. */
  message?: string | (() => string);
}

/** Options of {@linkcode startCluster}. */
export interface StartClusterOptions {
  /** Number of nodes, named `node-1` to `node-<size>`. Default 3. */
  size?: number;
  /**
   * Flags for every node, after the harness's defaults ({@linkcode DEFAULT_NODE_FLAGS}); a flag
   * given again overrides the default, since the node keeps the last value of a repeated flag.
   */
  nodeFlags?: string[];
  /**
   * Directory for the cluster file and the node directories. Default: a fresh temporary
   * directory, removed by {@linkcode ProcessCluster.close}. A directory passed here is kept.
   */
  dataRoot?: string;
  /**
   * Extra environment variables for the nodes. The nodes inherit the test's environment
   * without its `RAFTKV_*` variables, plus `NO_COLOR=1`, plus these.
   */
  env?: Record<string, string>;
  /** The node program, a path or `file:` URL. Default: the repository's `main.ts`. */
  mainScript?: string | URL;
  /** Arguments between `deno run` and the program. Default `["--allow-all"]`. */
  denoArgs?: string[];
  /** Whether to wait until every node answers `GET /health` with 200. Default `true`. */
  waitForHealth?: boolean;
  /** Deadline for the nodes to answer `/health`, in milliseconds. Default 30000. */
  startDeadlineMs?: number;
  /**
   * Copy every line the nodes print to stderr as it arrives, prefixed with the node id.
   * Default: whether the environment variable `RAFTKV_HARNESS_ECHO` is `1`.
   */
  echo?: boolean;
  /**
   * Serve every node's client API over HTTPS: `https` api_urls, each node started with
   * `--api-cert`/`--api-key` of its own certificate from these (see `testing/certs.ts`), and the
   * harness's requests trusting their CA. Default: plain HTTP.
   */
  apiCerts?: Certificates;
  /**
   * The bearer token the harness's own requests send ({@linkcode ProcessCluster.status},
   * {@linkcode ProcessCluster.waitForLeader}); requests made with
   * {@linkcode ProcessCluster.request} send only the headers given. Default: none.
   */
  token?: string;
  /**
   * Mutual TLS between peers: certificates (from `makeCertificates`, with one per node id,
   * `node-1` to `node-<size>`). The rpc_urls become `https://` and every node gets
   * `--peer-cert`, `--peer-key` and `--peer-ca`. Default: cleartext peers.
   */
  tls?: Certificates;
  /**
   * The cluster's `--cluster-token` (see {@linkcode ProcessCluster.clusterToken}). Default: a
   * fresh random one, so that clusters of tests running at once never take each other's
   * messages: a port one test's killed node let go can be picked by another test's node while
   * the first cluster's nodes still send to it, and clusters with the same member ids and token
   * would have the same cluster id.
   */
  clusterToken?: string;
}

/** Options of {@linkcode ProcessCluster.start}. */
export interface StartNodeOptions {
  /** Whether to wait until the node answers `GET /health` with 200. Default `true`. */
  waitForHealth?: boolean;
  /** Deadline for the node to answer `/health`, in milliseconds. Default 30000. */
  deadlineMs?: number;
  /** Flags for this start only, after the cluster's node flags. */
  flags?: string[];
  /** Environment variables for this start only, on top of the cluster's. */
  env?: Record<string, string>;
}

/** Flags the harness passes to every node before the test's own `nodeFlags`. */
export const DEFAULT_NODE_FLAGS: readonly string[] = Object.freeze([
  "--listen-host",
  "127.0.0.1",
  "--election-timeout",
  "300",
  "--heartbeat",
  "50",
]);

/** How many output lines the harness keeps per node. */
export const LOG_LINES_KEPT = 500;

const _DEFAULT_START_DEADLINE_MS = 30_000;
const _DEFAULT_STOP_DEADLINE_MS = 10_000;
const _DEFAULT_MAIN = new URL("../main.ts", import.meta.url);

/**
 * Picks distinct TCP ports that are free right now. They are drawn at random below the range the
 * kernel gives outgoing connections their local ports from (Linux's `ip_local_port_range`, from
 * 32768), from 10000 up: a port the kernel chose (listening on port 0) is one it may hand to the
 * next outgoing connection of any process, and the tests running in parallel make many, so a
 * node started a moment later could find it taken. Each port is checked by listening on it; all
 * listeners stay open until every port is picked, so the ports are distinct; they are closed
 * before returning, so another process could in principle take one before the test does (only one
 * that picks ports the same way, at random among some 22,000).
 *
 * @param count How many ports to pick.
 * @param hostname The address to probe. Default `"127.0.0.1"`.
 * @returns The ports.
 */
export function freePorts(count: number, hostname = "127.0.0.1"): number[] {
  const listeners: Deno.TcpListener[] = [];
  try {
    while (listeners.length < count) listeners.push(_listenBelowEphemeral(hostname));
    return listeners.map((listener) => listener.addr.port);
  } finally {
    for (const listener of listeners) listener.close();
  }
}

/** The lowest port of the kernel's range for outgoing connections (Linux), else its default. */
function _ephemeralLow(): number {
  try {
    const text = Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range");
    const low = Number(text.trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 0) return low;
  } catch {
    // Not Linux: the range Linux starts from by default (others start higher).
  }
  return 32768;
}

const _PICK_FROM = 10_000;
const _PICK_TO = _ephemeralLow() - 1;

/** Listens on a free port drawn from `_PICK_FROM`..`_PICK_TO` (the kernel's choice if none). */
function _listenBelowEphemeral(hostname: string): Deno.TcpListener {
  for (let attempt = 0; attempt < 100 && _PICK_TO - _PICK_FROM >= 1000; attempt++) {
    const port = _PICK_FROM + Math.floor(Math.random() * (_PICK_TO - _PICK_FROM + 1));
    if (FETCH_BAD_PORTS.has(port)) continue; // fetch refuses them (10080 in this range)
    try {
      return Deno.listen({ hostname, port });
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    }
  }
  return Deno.listen({ hostname, port: 0 });
}

/** What a finished child process printed, and its exit code. */
export interface CommandOutput {
  /** The exit code. */
  code: number;
  /** Everything it wrote to stdout. */
  stdout: string;
  /** Everything it wrote to stderr. */
  stderr: string;
}

/**
 * Runs `command` to completion in `cwd` with exactly `env` (no inherited variables) and no stdin.
 *
 * @param command The program.
 * @param args Its arguments.
 * @param env Its whole environment (see {@linkcode cleanEnv}).
 * @param cwd Its working directory.
 * @returns Its exit code and output.
 */
export async function runCommand(
  command: string,
  args: string[],
  env: Record<string, string>,
  cwd: string,
): Promise<CommandOutput> {
  const output = await new Deno.Command(command, { args, env, clearEnv: true, cwd, stdin: "null" })
    .output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: output.code, stdout: decode(output.stdout), stderr: decode(output.stderr) };
}

/**
 * The environment of this process without anything that could configure a node, denort or a
 * proxy (`RAFTKV_*`, `DENORT_BIN`, `*_proxy`), plus `NO_COLOR=1` and `extra`: for a child that
 * must see only what its test gives it.
 *
 * @param extra Variables to set on top.
 * @returns The environment to pass with `clearEnv: true`.
 */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const dropped = /^(RAFTKV_.*|DENORT_BIN|(https?|all|no)_proxy)$/i;
  return {
    ...Object.fromEntries(Object.entries(Deno.env.toObject()).filter(([k]) => !dropped.test(k))),
    NO_COLOR: "1",
    ...extra,
  };
}

/**
 * Picks one TCP port that is free right now; see {@linkcode freePorts}.
 *
 * @param hostname The address to probe. Default `"127.0.0.1"`.
 * @returns The port.
 */
export function freePort(hostname = "127.0.0.1"): number {
  const [port] = freePorts(1, hostname);
  if (port === undefined) throw new Error("freePorts(1) returned no port");
  return port;
}

/**
 * Builds the entries of a cluster file for `node-1` to `node-<n>`, where node `i` gets
 * `apiPorts[i - 1]` and `rpcPorts[i - 1]`.
 *
 * @example Usage
 * ```ts
 * import { buildClusterConfig } from "./harness.ts";
 *
 * const [first] = buildClusterConfig({ apiPorts: [8001], rpcPorts: [9001] });
 * console.assert(first?.api_url === "http://127.0.0.1:8001");
 * ```
 *
 * @param options The ports (as many of each as nodes), the host (default `127.0.0.1`) and the
 * schemes of the api_urls and rpc_urls (default `http`).
 * @returns The entries, in node order.
 */
export function buildClusterConfig(options: {
  apiPorts: readonly number[];
  rpcPorts: readonly number[];
  host?: string;
  apiScheme?: "http" | "https";
  rpcScheme?: "http" | "https";
}): ClusterFileEntry[] {
  const { apiPorts, rpcPorts, host = "127.0.0.1", apiScheme = "http", rpcScheme = "http" } =
    options;
  if (apiPorts.length !== rpcPorts.length) {
    throw new Error(`${apiPorts.length} API ports but ${rpcPorts.length} RPC ports`);
  }
  return apiPorts.map((apiPort, i) => ({
    node_id: `node-${i + 1}`,
    rpc_url: `${rpcScheme}://${host}:${rpcPorts[i]}`,
    api_url: `${apiScheme}://${host}:${apiPort}`,
  }));
}

/**
 * Writes a cluster file: a JSON array with one entry per line.
 *
 * @param path The file to write.
 * @param entries The entries.
 */
export async function writeClusterFile(
  path: string,
  entries: readonly ClusterFileEntry[],
): Promise<void> {
  await Deno.writeTextFile(
    path,
    `[\n${entries.map((entry) => `  ${JSON.stringify(entry)}`).join(",\n")}\n]\n`,
  );
}

/**
 * Waits until a condition holds, checking it every `intervalMs` until `deadlineMs` has passed.
 * A check that throws counts as "not yet"; its error is reported if the deadline passes. A
 * check that is still running at the deadline is abandoned.
 *
 * @example Usage
 * ```ts ignore
 * import { waitFor } from "./harness.ts";
 *
 * await waitFor(async () => (await cluster.request("node-2", "GET", "/v1/data/a")).status === 200, {
 *   deadlineMs: 5000,
 *   message: "node-2 to see key a",
 * });
 * ```
 *
 * @param condition The check; returns (or resolves to) `true` when done.
 * @param options Deadline, interval and description.
 * @throws {Error} `Timed out after <n>ms waiting for <message>` once the deadline passes.
 */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  options: WaitForOptions = {},
): Promise<void> {
  const { deadlineMs = 5000, intervalMs = 50, message = "a condition" } = options;
  const deadline = Date.now() + deadlineMs;
  let lastError: unknown = undefined;
  while (true) {
    const remaining = deadline - Date.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const outcome = await Promise.race([
        Promise.resolve().then(condition).then((ok) => ok ? "done" : "no"),
        new Promise<"late">((resolve) => {
          timer = setTimeout(() => resolve("late"), Math.max(0, remaining));
        }),
      ]);
      if (outcome === "done") return;
    } catch (error) {
      lastError = error;
    } finally {
      clearTimeout(timer);
    }
    if (Date.now() >= deadline) break;
    await _sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())));
  }
  const what = typeof message === "function" ? message() : message;
  const cause = lastError === undefined
    ? ""
    : ` (last check failed: ${lastError instanceof Error ? lastError.message : lastError})`;
  throw new Error(`Timed out after ${deadlineMs}ms waiting for ${what}${cause}`, {
    cause: lastError,
  });
}

/**
 * Sends an HTTP request with a deadline and always reads or cancels the response body, so that
 * no connection or resource leaks into the next test.
 *
 * A string `body` is sent as is; any other defined `body` is sent as JSON with
 * `Content-Type: application/json`.
 *
 * @param url The full URL.
 * @param method The HTTP method.
 * @param body The request body, if any.
 * @param options Deadline, headers, redirect mode.
 * @returns Status, text, parsed JSON (or `null`) and headers.
 * @throws {Error} Naming the method and URL when the request fails or the deadline passes.
 */
export async function httpRequest(
  url: string,
  method: string,
  body?: unknown,
  options: RequestOptions = {},
): Promise<HttpResult> {
  const { timeoutMs = 5000, redirect = "follow" } = options;
  const headers = new Headers(options.headers);
  let payload: string | undefined;
  if (typeof body === "string") {
    payload = body;
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
  }
  const signal = AbortSignal.timeout(timeoutMs);
  let response: Response | undefined;
  try {
    const init: RequestInit & { client?: Deno.HttpClient } = { method, headers, signal, redirect };
    if (options.client !== undefined) init.client = options.client;
    if (payload !== undefined) init.body = payload;
    response = await fetch(url, init);
    const text = await response.text();
    let json: unknown = null;
    if (text !== "") {
      try {
        json = JSON.parse(text);
      } catch {
        // Not JSON: leave null.
      }
    }
    return { status: response.status, json, text, headers: response.headers };
  } catch (error) {
    await response?.body?.cancel().catch(() => {});
    const reason = signal.aborted
      ? `no complete response within ${timeoutMs}ms`
      : error instanceof Error
      ? error.message
      : String(error);
    throw new Error(`${method} ${url} failed: ${reason}`, { cause: error });
  }
}

interface _Process {
  child: Deno.ChildProcess;
  /** Settles once the process has exited and its output is fully read. */
  finished: Promise<Deno.CommandStatus>;
  readonly status: Deno.CommandStatus | null;
  paused: boolean;
}

interface _Node {
  id: string;
  entry: ClusterFileEntry;
  apiPort: number;
  rpcPort: number;
  dataDir: string;
  lines: string[];
  proc: _Process | null;
  /** Its own cluster file (a node added later lists only itself), or null: the cluster's. */
  configPath: string | null;
}

/**
 * A cluster of node processes started by {@linkcode startCluster}. Dispose of it (with
 * `await using`, or by calling {@linkcode ProcessCluster.close} in `finally`) to kill every
 * process and remove the temporary directory.
 */
export class ProcessCluster implements AsyncDisposable {
  /** Directory holding the cluster file and the node directories. */
  readonly dataRoot: string;
  /** The cluster file the nodes were given. */
  readonly configPath: string;
  /** The `--cluster-token` every node is started with (before the cluster's node flags). */
  readonly clusterToken: string;
  #nodes: Map<string, _Node>;
  #mainScript: string;
  #denoArgs: readonly string[];
  #nodeFlags: readonly string[];
  #env: Record<string, string>;
  #echo: boolean;
  #apiCerts: Certificates | null;
  #client: Deno.HttpClient | undefined;
  #ownHeaders: Record<string, string>;
  #tls: Certificates | null;
  #ownsDataRoot: boolean;
  #closed = false;

  /**
   * Wraps nodes whose cluster file is already written; use {@linkcode startCluster} instead.
   *
   * @param init Everything the cluster needs to start its nodes.
   */
  constructor(init: {
    dataRoot: string;
    ownsDataRoot: boolean;
    configPath: string;
    entries: readonly ClusterFileEntry[];
    mainScript: string;
    denoArgs: readonly string[];
    nodeFlags: readonly string[];
    env: Record<string, string>;
    echo: boolean;
    apiCerts?: Certificates;
    token?: string;
    tls?: Certificates | null;
    clusterToken?: string;
  }) {
    this.dataRoot = init.dataRoot;
    this.configPath = init.configPath;
    this.clusterToken = init.clusterToken ?? `test-${crypto.randomUUID()}`;
    this.#ownsDataRoot = init.ownsDataRoot;
    this.#mainScript = init.mainScript;
    this.#denoArgs = init.denoArgs;
    this.#nodeFlags = init.nodeFlags;
    this.#env = init.env;
    this.#echo = init.echo;
    this.#apiCerts = init.apiCerts ?? null;
    this.#client = init.apiCerts === undefined
      ? undefined
      : Deno.createHttpClient({ caCerts: [Deno.readTextFileSync(init.apiCerts.ca)] });
    this.#ownHeaders = init.token === undefined ? {} : { authorization: `Bearer ${init.token}` };
    this.#tls = init.tls ?? null;
    this.#nodes = new Map(init.entries.map((entry) => [entry.node_id, {
      id: entry.node_id,
      entry,
      apiPort: Number(new URL(entry.api_url).port),
      rpcPort: Number(new URL(entry.rpc_url).port),
      dataDir: join(init.dataRoot, entry.node_id),
      lines: [],
      proc: null,
      configPath: null,
    }]));
  }

  /**
   * Adds a node that is not in the cluster file (to be started with `--join`, say): free ports,
   * an empty data directory, and a cluster file of its own that lists only itself (a joining
   * node takes only its own URLs from it). Start it with {@linkcode ProcessCluster.start}.
   *
   * @param id The new node's id.
   * @returns The new node.
   */
  async addNode(id: string): Promise<NodeInfo> {
    if (this.#nodes.has(id)) throw new Error(`${id} is already a node of this cluster`);
    const [apiPort, rpcPort] = freePorts(2);
    const entry: ClusterFileEntry = {
      node_id: id,
      rpc_url: `${this.#tls === null ? "http" : "https"}://127.0.0.1:${rpcPort}`,
      api_url: `${this.#apiCerts === null ? "http" : "https"}://127.0.0.1:${apiPort}`,
    };
    const dataDir = join(this.dataRoot, id);
    await Deno.mkdir(dataDir, { recursive: true });
    const configPath = join(this.dataRoot, `${id}.cluster.json`);
    await writeClusterFile(configPath, [entry]);
    const node: _Node = {
      id,
      entry,
      apiPort: apiPort!,
      rpcPort: rpcPort!,
      dataDir,
      lines: [],
      proc: null,
      configPath,
    };
    this.#nodes.set(id, node);
    return this.#info(node);
  }

  /** The nodes, in id order, with their current process ids. */
  get nodes(): NodeInfo[] {
    return [...this.#nodes.values()].map((node) => this.#info(node));
  }

  /** The node ids, in order. */
  get ids(): string[] {
    return [...this.#nodes.keys()];
  }

  /**
   * Describes one node.
   *
   * @param id The node's id.
   * @returns Its URLs, ports, data directory and current process id.
   */
  node(id: string): NodeInfo {
    return this.#info(this.#node(id));
  }

  /**
   * Returns a node's API base URL, such as `"http://127.0.0.1:41234"`.
   *
   * @param id The node's id.
   * @returns The URL, without a trailing slash.
   */
  api(id: string): string {
    return this.#node(id).entry.api_url;
  }

  /**
   * Returns a node's RPC base URL.
   *
   * @param id The node's id.
   * @returns The URL, without a trailing slash.
   */
  rpc(id: string): string {
    return this.#node(id).entry.rpc_url;
  }

  /**
   * Tells whether a node's process is running (paused or not).
   *
   * @param id The node's id.
   * @returns `true` between {@linkcode ProcessCluster.start} and the process's exit.
   */
  isRunning(id: string): boolean {
    const proc = this.#node(id).proc;
    return proc !== null && proc.status === null;
  }

  /**
   * Returns how a node's process last ended.
   *
   * @param id The node's id.
   * @returns The exit status, or `null` if it is running or was never started.
   */
  exitStatus(id: string): Deno.CommandStatus | null {
    return this.#node(id).proc?.status ?? null;
  }

  /**
   * Lists the nodes that are running and not paused.
   *
   * @returns Their ids, in order.
   */
  liveIds(): string[] {
    return [...this.#nodes.values()]
      .filter((node) => node.proc !== null && node.proc.status === null)
      .filter((node) => !node.proc?.paused)
      .map((node) => node.id);
  }

  /**
   * Starts (or restarts) a node with its data directory and ports.
   *
   * @param id The node's id.
   * @param options Whether and how long to wait for `/health`, and extra flags.
   * @throws {Error} If the node is already running, or (when waiting) it exits or does not
   * answer `/health` in time; the message includes its recent output.
   */
  async start(id: string, options: StartNodeOptions = {}): Promise<void> {
    this.#spawn(id, options.flags ?? [], options.env ?? {});
    if (options.waitForHealth ?? true) {
      await this.waitForHealth(id, options.deadlineMs ?? _DEFAULT_START_DEADLINE_MS);
    }
  }

  /**
   * Waits until a running node answers `GET /health` with 200.
   *
   * @param id The node's id.
   * @param deadlineMs How long to wait, in milliseconds. Default 30000.
   * @throws {Error} If the process exits first or the deadline passes, with its recent output.
   */
  async waitForHealth(id: string, deadlineMs = _DEFAULT_START_DEADLINE_MS): Promise<void> {
    const node = this.#node(id);
    const seen: { exit: Deno.CommandStatus | null } = { exit: null };
    try {
      await waitFor(async () => {
        seen.exit = node.proc?.status ?? null;
        if (seen.exit !== null) return true;
        const result = await httpRequest(`${node.entry.api_url}/health`, "GET", undefined, {
          timeoutMs: 1000,
          ...this.#clientOption(),
        });
        return result.status === 200;
      }, { deadlineMs, intervalMs: 50, message: `${id} to answer GET /health with 200` });
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${this.formatLogs([id])}`, { cause: error });
    }
    if (seen.exit !== null) {
      throw new Error(
        `${id} ${_describeExit(seen.exit)} before answering /health\n${this.formatLogs([id])}`,
      );
    }
  }

  /**
   * Sends a signal to a node and waits for its process to exit.
   *
   * @param id The node's id.
   * @param signal The signal. Default `"SIGKILL"`. A paused node also gets SIGCONT, so that
   * a catchable signal is delivered.
   * @param deadlineMs How long to wait for the exit before SIGKILL, in milliseconds.
   * @returns The exit status.
   * @throws {Error} If the node is not running, or it had to be killed after the deadline.
   */
  async kill(
    id: string,
    signal: Deno.Signal = "SIGKILL",
    deadlineMs = _DEFAULT_STOP_DEADLINE_MS,
  ): Promise<Deno.CommandStatus> {
    const node = this.#node(id);
    const proc = this.#running(node);
    this.#log(node, `## harness: sending ${signal} to pid ${proc.child.pid}`);
    _signal(proc, signal);
    if (proc.paused && signal !== "SIGKILL") _signal(proc, "SIGCONT");
    proc.paused = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const exited = await Promise.race([
      proc.finished.then(() => true),
      new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), deadlineMs)),
    ]);
    clearTimeout(timer);
    if (!exited) {
      _signal(proc, "SIGKILL");
      await proc.finished;
      throw new Error(
        `${id} did not exit within ${deadlineMs}ms of ${signal}; killed it\n${
          this.formatLogs([id])
        }`,
      );
    }
    return await proc.finished;
  }

  /**
   * Stops a node gracefully: SIGTERM, then waits for its exit.
   *
   * @param id The node's id.
   * @param deadlineMs How long to wait for the exit, in milliseconds. Default 10000.
   * @returns The exit code (0 after a graceful stop).
   * @throws {Error} If the node is not running or does not exit in time (it is then killed).
   */
  async stop(id: string, deadlineMs = _DEFAULT_STOP_DEADLINE_MS): Promise<number> {
    return (await this.kill(id, "SIGTERM", deadlineMs)).code;
  }

  /**
   * Freezes a node with SIGSTOP: it keeps its sockets but answers nothing, like a hung or
   * partitioned machine.
   *
   * @param id The node's id.
   * @throws {Error} If the node is not running.
   */
  pause(id: string): void {
    const node = this.#node(id);
    const proc = this.#running(node);
    _signal(proc, "SIGSTOP");
    proc.paused = true;
    this.#log(node, `## harness: paused pid ${proc.child.pid}`);
  }

  /**
   * Lets a paused node continue with SIGCONT.
   *
   * @param id The node's id.
   * @throws {Error} If the node is not running.
   */
  resume(id: string): void {
    const node = this.#node(id);
    const proc = this.#running(node);
    _signal(proc, "SIGCONT");
    proc.paused = false;
    this.#log(node, `## harness: resumed pid ${proc.child.pid}`);
  }

  /**
   * Sends `signal` to a running node and returns at once, such as SIGHUP (the node reads its
   * tokens file again). For stopping or pausing, use {@linkcode ProcessCluster.kill},
   * {@linkcode ProcessCluster.stop} and {@linkcode ProcessCluster.pause}.
   *
   * @param id The node's id.
   * @param signal The signal.
   * @throws {Error} If the node is not running.
   */
  signal(id: string, signal: Deno.Signal): void {
    const node = this.#node(id);
    const proc = this.#running(node);
    this.#log(node, `## harness: sending ${signal} to pid ${proc.child.pid}`);
    _signal(proc, signal);
  }

  /**
   * Sends an HTTP request to a node's API; see {@linkcode httpRequest}.
   *
   * @param id The node's id.
   * @param method The HTTP method.
   * @param path The path, such as `"/v1/data/a"`.
   * @param body The request body, if any (non-strings are sent as JSON).
   * @param options Deadline (default 5000 ms), headers, redirect mode (and with `apiCerts`, a
   * client that trusts their CA).
   * @returns Status, text, parsed JSON (or `null`) and headers.
   */
  request(
    id: string,
    method: string,
    path: string,
    body?: unknown,
    options?: RequestOptions,
  ): Promise<HttpResult> {
    return httpRequest(`${this.api(id)}${path}`, method, body, {
      ...this.#clientOption(),
      ...options,
    });
  }

  /**
   * Reads a node's `GET /v1/status`.
   *
   * @param id The node's id.
   * @param timeoutMs Deadline of the request, in milliseconds. Default 1000.
   * @returns The status, or `null` if the node did not answer 200 with a JSON object in time.
   */
  async status(id: string, timeoutMs = 1000): Promise<NodeStatus | null> {
    try {
      const result = await this.request(id, "GET", "/v1/status", undefined, {
        timeoutMs,
        headers: this.#ownHeaders,
      });
      if (result.status !== 200 || typeof result.json !== "object" || result.json === null) {
        return null;
      }
      return result.json as NodeStatus;
    } catch {
      return null;
    }
  }

  /**
   * Waits until every live node (running, not paused; a node removed from the cluster aside)
   * reports the same leader, and that leader is live and reports itself as leader.
   *
   * @param deadlineMs How long to wait, in milliseconds. Default 10000.
   * @returns The leader's id.
   * @throws {Error} With the last statuses and recent output when the deadline passes.
   */
  async waitForLeader(deadlineMs = 10_000): Promise<string> {
    const found: { leader: string | null } = { leader: null };
    let seen = new Map<string, NodeStatus | null>();
    try {
      await waitFor(async () => {
        const live = this.liveIds();
        const statuses = await Promise.all(live.map((id) => this.status(id)));
        seen = new Map(live.map((id, i) => [id, statuses[i] ?? null]));
        // A node removed from the cluster (still running) names no leader: it is not asked.
        const members = statuses.filter((status) => status?.membership !== "removed");
        const ids = new Set(members.map((status) => status?.leader?.id ?? null));
        const [agreed] = ids;
        if (ids.size !== 1 || agreed === null || agreed === undefined) return false;
        if (!live.includes(agreed) || seen.get(agreed)?.role !== "leader") return false;
        found.leader = agreed;
        return true;
      }, { deadlineMs, intervalMs: 50, message: "the live nodes to agree on a leader" });
    } catch (error) {
      const statuses = [...seen].map(([id, status]) => `  ${id}: ${JSON.stringify(status)}`);
      throw new Error(
        `${(error as Error).message}\nlast statuses:\n${statuses.join("\n")}\n${
          this.formatLogs(undefined, 30)
        }`,
        { cause: error },
      );
    }
    if (found.leader === null) throw new Error("waitForLeader: no leader despite success");
    return found.leader;
  }

  /**
   * Returns the last lines a node printed (stdout and stderr, across restarts), with
   * `## harness:` lines marking starts, signals and exits.
   *
   * @param id The node's id.
   * @returns A copy of up to {@linkcode LOG_LINES_KEPT} lines, oldest first.
   */
  logs(id: string): string[] {
    return [...this.#node(id).lines];
  }

  /**
   * Formats the recent output of some nodes for a failure message.
   *
   * @param ids The nodes. Default: all.
   * @param lines How many of the last lines per node. Default: all that are kept.
   * @returns One block per node, headed `--- <id> ---`.
   */
  formatLogs(ids: readonly string[] = this.ids, lines = LOG_LINES_KEPT): string {
    return ids.map((id) => {
      const kept = this.#node(id).lines;
      return `--- ${id} (last ${Math.min(lines, kept.length)} lines) ---\n${
        kept.slice(-lines).join("\n")
      }`;
    }).join("\n");
  }

  /**
   * Kills every process still running (SIGKILL), waits for them to exit, and removes the data
   * root if the harness created it. Safe to call more than once.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const procs = [...this.#nodes.values()]
      .map((node) => node.proc)
      .filter((proc): proc is _Process => proc !== null);
    for (const proc of procs) {
      if (proc.status === null) _signal(proc, "SIGKILL");
    }
    await Promise.all(procs.map((proc) => proc.finished));
    this.#client?.close();
    if (this.#ownsDataRoot) {
      await Deno.remove(this.dataRoot, { recursive: true }).catch(() => {});
    }
  }

  /** Same as {@linkcode ProcessCluster.close}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Spawns a node's process without waiting for it; used by `start` and `startCluster`. */
  #spawn(id: string, extraFlags: readonly string[], extraEnv: Record<string, string> = {}): void {
    if (this.#closed) throw new Error("The cluster is closed");
    const node = this.#node(id);
    if (node.proc !== null && node.proc.status === null) {
      throw new Error(`${id} is already running (pid ${node.proc.child.pid})`);
    }
    const args = [
      "run",
      ...this.#denoArgs,
      this.#mainScript,
      "--id",
      id,
      "--cluster-config-path",
      node.configPath ?? this.configPath,
      "--data-dir",
      node.dataDir,
      ...DEFAULT_NODE_FLAGS,
      "--cluster-token",
      this.clusterToken,
      ...(this.#apiCerts === null ? [] : [
        "--api-cert",
        this.#apiCerts.node(id).cert,
        "--api-key",
        this.#apiCerts.node(id).key,
      ]),
      ...(this.#tls === null ? [] : [
        "--peer-cert",
        this.#tls.node(id).cert,
        "--peer-key",
        this.#tls.node(id).key,
        "--peer-ca",
        this.#tls.ca,
      ]),
      ...this.#nodeFlags,
      ...extraFlags,
    ];
    const child = new Deno.Command(Deno.execPath(), {
      args,
      env: { ...this.#env, ...extraEnv },
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#log(node, `## harness: started pid ${child.pid}: deno ${args.join(" ")}`);
    const pumps = Promise.all([
      this.#pump(node, child.stdout),
      this.#pump(node, child.stderr),
    ]);
    const state: { status: Deno.CommandStatus | null } = { status: null };
    const finished = (async () => {
      const status = await child.status;
      await pumps;
      state.status = status;
      this.#log(node, `## harness: pid ${child.pid} ${_describeExit(status)}`);
      return status;
    })();
    const proc: _Process = {
      child,
      finished,
      get status() {
        return state.status;
      },
      paused: false,
    };
    node.proc = proc;
  }

  async #pump(node: _Node, stream: ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const line of readLines(stream)) this.#log(node, line);
    } catch (error) {
      this.#log(node, `## harness: reading output failed: ${(error as Error).message}`);
    }
  }

  #log(node: _Node, line: string): void {
    node.lines.push(line);
    if (node.lines.length > LOG_LINES_KEPT) {
      node.lines.splice(0, node.lines.length - LOG_LINES_KEPT);
    }
    if (this.#echo) console.error(`[${node.id}] ${line}`);
  }

  #clientOption(): { client?: Deno.HttpClient } {
    return this.#client === undefined ? {} : { client: this.#client };
  }

  #node(id: string): _Node {
    const node = this.#nodes.get(id);
    if (node === undefined) {
      throw new Error(`No node ${JSON.stringify(id)}; the nodes are ${this.ids.join(", ")}`);
    }
    return node;
  }

  #running(node: _Node): _Process {
    const proc = node.proc;
    if (proc === null || proc.status !== null) {
      throw new Error(`${node.id} is not running`);
    }
    return proc;
  }

  #info(node: _Node): NodeInfo {
    const running = node.proc !== null && node.proc.status === null;
    return {
      id: node.id,
      apiUrl: node.entry.api_url,
      rpcUrl: node.entry.rpc_url,
      apiPort: node.apiPort,
      rpcPort: node.rpcPort,
      dataDir: node.dataDir,
      pid: running ? node.proc?.child.pid ?? null : null,
      paused: running && (node.proc?.paused ?? false),
    };
  }
}

/**
 * Starts a cluster of real node processes on free ports and waits until each answers
 * `/health`. On any failure, whatever was started is killed and cleaned up before the error
 * is thrown; a cluster in a data root of its own whose node found its port taken meanwhile is
 * started again on new ports (up to three attempts).
 *
 * @example Usage
 * ```ts ignore
 * import { startCluster } from "./harness.ts";
 *
 * await using cluster = await startCluster({ size: 5, nodeFlags: ["--snapshot-threshold", "10"] });
 * const leader = await cluster.waitForLeader();
 * ```
 *
 * @param options Size, flags, directories, environment; all optional.
 * @returns The running cluster; dispose of it to stop everything.
 */
export async function startCluster(options: StartClusterOptions = {}): Promise<ProcessCluster> {
  // Ports are picked free, then bound by the nodes a moment later: a test running in parallel can
  // take one in between. A cluster in its own data root starts again on new ports (at most twice).
  for (let attempt = 1;; attempt++) {
    try {
      return await _startClusterOnce(options);
    } catch (error) {
      const taken = /AddrInUse|Address already in use/.test(String((error as Error)?.message));
      if (!taken || options.dataRoot !== undefined || attempt >= 3) throw error;
    }
  }
}

async function _startClusterOnce(options: StartClusterOptions): Promise<ProcessCluster> {
  const size = options.size ?? 3;
  if (!Number.isInteger(size) || size < 1) {
    throw new Error(`startCluster: size must be a positive integer, got ${size}`);
  }
  const ownsDataRoot = options.dataRoot === undefined;
  const dataRoot = options.dataRoot ?? await Deno.makeTempDir({ prefix: "raftkv-test-" });
  let cluster: ProcessCluster | undefined;
  try {
    const ports = freePorts(2 * size);
    const entries = buildClusterConfig({
      apiPorts: ports.slice(0, size),
      rpcPorts: ports.slice(size),
      apiScheme: options.apiCerts === undefined ? "http" : "https",
      rpcScheme: options.tls === undefined ? "http" : "https",
    });
    const configPath = join(dataRoot, "cluster.config.json");
    await Deno.mkdir(dataRoot, { recursive: true });
    await writeClusterFile(configPath, entries);
    for (const entry of entries) {
      await Deno.mkdir(join(dataRoot, entry.node_id), { recursive: true });
    }
    const mainScript = options.mainScript ?? _DEFAULT_MAIN;
    cluster = new ProcessCluster({
      dataRoot,
      ownsDataRoot,
      configPath,
      entries,
      mainScript: mainScript instanceof URL ? fileURLToPath(mainScript) : mainScript,
      denoArgs: options.denoArgs ?? ["--allow-all"],
      nodeFlags: options.nodeFlags ?? [],
      env: { ..._inheritedEnv(), NO_COLOR: "1", ...options.env },
      echo: options.echo ?? Deno.env.get("RAFTKV_HARNESS_ECHO") === "1",
      ...(options.apiCerts === undefined ? {} : { apiCerts: options.apiCerts }),
      ...(options.token === undefined ? {} : { token: options.token }),
      tls: options.tls ?? null,
      ...(options.clusterToken === undefined ? {} : { clusterToken: options.clusterToken }),
    });
    const started = cluster;
    // The first failure kills every node, so the other health checks end at once too.
    const failure: { error?: unknown } = {};
    await Promise.all(started.ids.map((id) =>
      started.start(id, {
        waitForHealth: options.waitForHealth ?? true,
        deadlineMs: options.startDeadlineMs ?? _DEFAULT_START_DEADLINE_MS,
      }).catch(async (error) => {
        if ("error" in failure) return;
        failure.error = error;
        await started.close();
      })
    ));
    if ("error" in failure) throw failure.error;
    return started;
  } catch (error) {
    if (cluster !== undefined) {
      await cluster.close();
    } else if (ownsDataRoot) {
      await Deno.remove(dataRoot, { recursive: true }).catch(() => {});
    }
    throw error;
  }
}

function _inheritedEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([name]) => !name.startsWith("RAFTKV_")),
  );
}

function _signal(proc: _Process, signal: Deno.Signal): void {
  if (proc.status !== null) return;
  try {
    proc.child.kill(signal);
  } catch {
    // It exited in the meantime.
  }
}

function _describeExit(status: Deno.CommandStatus): string {
  return status.signal !== null
    ? `was killed by signal ${status.signal}`
    : `exited with code ${status.code}`;
}

function _sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
