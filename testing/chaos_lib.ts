/**
 * Chaos testing of a real raftkv cluster: node processes, concurrent clients, a nemesis that
 * kills, pauses, partitions and slows down nodes, and a check of the recorded history for
 * linearizability and lost writes. Used by `tests/chaos_test.ts` (a short run) and
 * `scripts/chaos.ts` (any length).
 *
 * - {@linkcode ChaosCluster} starts node processes (through the process harness) whose peer
 *   links each go through a {@linkcode LinkProxy}: every node gets its own cluster file in which
 *   each peer's `rpc_url` is the proxy of the link from this node to that peer. Cutting a proxy
 *   cuts one direction of one link, so partitions can be symmetric, one-way or isolate the leader;
 *   slowing it gives that direction a one-way delay with jitter and stalls, like a long or lossy
 *   network path.
 * - {@linkcode runChaos} runs the clients and the nemesis for a while, heals everything, reads
 *   every key once more and checks the history; it returns a {@linkcode ChaosReport}.
 *
 * The seed fixes every random choice (operations, keys, nodes, faults and waits); the
 * interleaving still depends on timing, so a seed reproduces the schedule, not the exact run.
 *
 * With `tls`, the cluster runs with every security setting on: mutual TLS between peers (the
 * proxies pass the TLS bytes through; certificates are valid for `127.0.0.1`, so the host-name
 * check holds through a proxy, and the peer's CN is still the node behind it), HTTPS on the API
 * and bearer tokens; the clients trust the CA and send a write token.
 *
 * @module
 */

import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  checkLinearizability,
  type CheckResult,
  describeHistory,
  type Operation,
  type OperationKind,
} from "../src/check/linearizability.ts";
import { seededRandom } from "../src/raft/rand.ts";
import {
  buildClusterConfig,
  type ClusterFileEntry,
  freePorts,
  type NodeStatus,
  ProcessCluster,
  waitFor,
  writeClusterFile,
} from "./harness.ts";
import { type LinkDelay, type LinkMode, LinkProxy } from "./proxy.ts";
import { makeCertificates, servedCertificate } from "./certs.ts";
import { fill, free, mountTmpfs, unmount } from "./tmpfs.ts";
import { type LoopDisk, mountLoopDisk } from "./loop_disk.ts";

// ---------------------------------------------------------------------------------------------
// Randomness.

/** A seeded source of random choices. */
export class Rng {
  /** The seed this generator started from. */
  readonly seed: number;
  #next: () => number;

  /**
   * Creates a generator.
   *
   * @param seed Any 32-bit integer.
   */
  constructor(seed: number) {
    this.seed = seed >>> 0;
    this.#next = seededRandom(this.seed);
  }

  /** A number in [0, 1). */
  float(): number {
    return this.#next();
  }

  /** An integer in [lo, hi). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.#next() * (hi - lo));
  }

  /** A number in [lo, hi). */
  between(lo: number, hi: number): number {
    return lo + this.#next() * (hi - lo);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.#next() < p;
  }

  /** One of `items`, which must not be empty. */
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError("Rng.pick: no items");
    return items[this.int(0, items.length)] as T;
  }

  /** A shuffled copy of `items`. */
  shuffled<T>(items: readonly T[]): T[] {
    const copy = [...items];
    for (let i = copy.length - 1; i > 0; i--) {
      const j = this.int(0, i + 1);
      [copy[i], copy[j]] = [copy[j] as T, copy[i] as T];
    }
    return copy;
  }

  /** A new generator whose sequence depends on this one's, for an independent stream. */
  fork(): Rng {
    return new Rng(this.int(0, 2 ** 32));
  }
}

/** A fresh random seed. */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0] ?? 1;
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/** Resolves after `ms`, or at once when `signal` aborts (the nemesis's random waits). */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** The outcome of one client request made by {@linkcode attempt}. */
export type Attempt =
  | { kind: "answer"; status: number; json: unknown; text: string; headers: Headers }
  | {
    kind: "error";
    /** The connection could not be made: the request was definitely not sent. */
    connectFailed: boolean;
    /** The client's own deadline passed. */
    timedOut: boolean;
    message: string;
  };

const _CONNECT_FAILURE_RE = /\(Connect\)|connection refused|os error 111/i;

/**
 * Creates an HTTP client that opens a new connection for every request.
 *
 * Deno's `fetch` re-sends a request whose kept-alive connection closed before any answer came,
 * even a POST the server had received in full, and then reports only the second attempt's error
 * (such as "client error (Connect): Connection refused" when the node just died). With pooled
 * connections a "connection refused" therefore does not prove that the request was not
 * delivered; with a fresh connection per request it does, and nothing is sent twice.
 *
 * @returns The client; close it when done.
 */
export function createFreshConnectionClient(
  options: { caCerts?: string[] } = {},
): Deno.HttpClient {
  return Deno.createHttpClient({
    poolMaxIdlePerHost: 0,
    ...(options.caCerts === undefined ? {} : { caCerts: options.caCerts }),
  });
}

/**
 * Sends one request and reads the whole answer within `timeoutMs`; never throws.
 *
 * `connectFailed` in the result is only trustworthy ("definitely not sent") with a client from
 * {@linkcode createFreshConnectionClient}.
 *
 * @param url The full URL.
 * @param method The HTTP method.
 * @param body A JSON body, if any.
 * @param timeoutMs The deadline of the whole exchange.
 * @param client The HTTP client. Default: `fetch`'s shared, pooling one.
 * @param headers More request headers (such as `authorization` or `Idempotency-Key`).
 * @returns The answer, or what went wrong.
 */
export async function attempt(
  url: string,
  method: string,
  body: unknown,
  timeoutMs: number,
  client?: Deno.HttpClient,
  headers: Record<string, string> = {},
): Promise<Attempt> {
  const signal = AbortSignal.timeout(timeoutMs);
  const init: RequestInit & { client?: Deno.HttpClient } = { method, signal, headers };
  if (client !== undefined) init.client = client;
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { ...headers, "content-type": "application/json" };
  }
  let response: Response | undefined;
  try {
    response = await fetch(url, init);
    const text = await response.text();
    let json: unknown = null;
    try {
      json = text === "" ? null : JSON.parse(text);
    } catch {
      json = null;
    }
    return { kind: "answer", status: response.status, json, text, headers: response.headers };
  } catch (error) {
    await response?.body?.cancel().catch(() => {});
    const message = _errorChain(error);
    return {
      kind: "error",
      connectFailed: !signal.aborted && response === undefined &&
        _CONNECT_FAILURE_RE.test(message),
      timedOut: signal.aborted,
      message,
    };
  }
}

function _errorChain(error: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = error, depth = 0; e !== undefined && depth < 8; depth++) {
    parts.push(e instanceof Error ? e.message : String(e));
    e = e instanceof Error ? e.cause : undefined;
  }
  return parts.join(": ");
}

function _inheritedEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([name]) => !name.startsWith("RAFTKV_")),
  );
}

// ---------------------------------------------------------------------------------------------
// The cluster with proxied peer links.

/** Options of {@linkcode ChaosCluster.start}. */
export interface ChaosClusterOptions {
  /** Number of nodes. */
  size: number;
  /** Extra flags for every node (after the harness's defaults). */
  nodeFlags?: readonly string[];
  /** Copy the nodes' output to stderr as it arrives. */
  echo?: boolean;
  /** Keep the data directory when the cluster is closed (its path is in `dataRoot`). */
  keepData?: boolean;
  /** The node program. Default: the repository's `main.ts`. */
  mainScript?: string;
  /**
   * Every security setting: mutual TLS between peers (through the proxies), HTTPS on the API,
   * bearer tokens. Default `false`.
   */
  tls?: boolean;
  /**
   * Give each node a data directory on its own small tmpfs (64 MiB), so that
   * {@linkcode ChaosCluster.fillDisk} can fill it. Only as root on Linux, and not with `keepData`
   * (the tmpfs goes when the cluster closes); elsewhere {@linkcode ChaosCluster.fillable} is false.
   */
  fillable?: boolean;
  /**
   * Give each node a data directory on its own ext4 loop disk (64 MiB) instead, which
   * {@linkcode ChaosCluster.failDisk} can shut down as a dying disk (and which
   * {@linkcode ChaosCluster.fillDisk} can fill too). Only as root on Linux with loop devices, and
   * not with `keepData`; elsewhere {@linkcode ChaosCluster.failable} is false.
   */
  failable?: boolean;
}

/** The CA and tokens of a {@linkcode ChaosCluster} started with `tls`. */
export interface ChaosSecurity {
  /** The CA certificate file the nodes' certificates chain to. */
  ca: string;
  /** One token per role, as in the nodes' tokens file. */
  tokens: { read: string; write: string; admin: string };
}

/** A directed peer link: `from` sends its Raft messages to `to` through it. */
export interface Link {
  /** The sending node. */
  from: string;
  /** The receiving node. */
  to: string;
}

/**
 * Node processes whose every directed peer link goes through its own {@linkcode LinkProxy}. The
 * client API ports are not proxied. Dispose of it to stop every process and proxy.
 */
export class ChaosCluster implements AsyncDisposable {
  /** The node processes (kill, pause, request, logs, ...). Start nodes with `startNode`. */
  readonly processes: ProcessCluster;
  /** The node ids, in order. */
  readonly ids: readonly string[];
  /** The directory holding the cluster files and the node directories. */
  readonly dataRoot: string;
  /** The CA and tokens when started with `tls`, else `null`. */
  readonly security: ChaosSecurity | null;
  /** Whether each node's data directory is a tmpfs that {@linkcode fillDisk} can fill. */
  get fillable(): boolean {
    return this.#mounted.length > 0 || this.failable;
  }
  /** Whether each node's data directory is a loop disk that {@linkcode failDisk} can fail. */
  get failable(): boolean {
    return this.#disks.size > 0;
  }
  #proxies: Map<string, LinkProxy>;
  #configFiles: Map<string, string>;
  /** The tmpfs mount points (node data directories), unmounted on close. */
  #mounted: string[] = [];
  /** The loop disks holding the node data directories, by node, removed on close. */
  #disks = new Map<string, LoopDisk>();
  #closed = false;

  private constructor(
    processes: ProcessCluster,
    proxies: Map<string, LinkProxy>,
    configFiles: Map<string, string>,
    security: ChaosSecurity | null,
  ) {
    this.processes = processes;
    this.ids = processes.ids;
    this.dataRoot = processes.dataRoot;
    this.#proxies = proxies;
    this.#configFiles = configFiles;
    this.security = security;
  }

  /**
   * Starts the proxies and the nodes, and waits until every node answers `/health`.
   *
   * @param options Size, node flags, echo, TLS.
   * @returns The running cluster.
   */
  static async start(options: ChaosClusterOptions): Promise<ChaosCluster> {
    const { size } = options;
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`bad cluster size ${size}`);
    const dataRoot = await Deno.makeTempDir({ prefix: "raftkv-chaos-" });
    const proxies = new Map<string, LinkProxy>();
    const mounted: string[] = [];
    const disks = new Map<string, LoopDisk>();
    let cluster: ChaosCluster | undefined;
    try {
      const ids = Array.from({ length: size }, (_, i) => `node-${i + 1}`);
      // The proxies hold their ports while the node ports are picked, so none collide.
      for (const from of ids) {
        for (const to of ids) if (from !== to) proxies.set(_linkKey(from, to), LinkProxy.listen());
      }
      const tls = options.tls ?? false;
      const scheme = tls ? "https" : "http";
      const ports = freePorts(2 * size);
      const entries = buildClusterConfig({
        apiPorts: ports.slice(0, size),
        rpcPorts: ports.slice(size),
        apiScheme: scheme,
        rpcScheme: scheme,
      });
      const configPath = join(dataRoot, "cluster.config.json");
      await writeClusterFile(configPath, entries);
      const configFiles = new Map<string, string>();
      const root = !(options.keepData ?? false) && Deno.build.os === "linux" && Deno.uid() === 0;
      let failable = (options.failable ?? false) && root;
      const fillable = (options.fillable ?? false) && root;
      for (const self of entries) {
        const dir = join(dataRoot, self.node_id);
        await Deno.mkdir(dir, { recursive: true });
        if (failable) {
          const disk = await mountLoopDisk(dir, join(dataRoot, `${self.node_id}.img`), 64);
          if (typeof disk !== "string") disks.set(self.node_id, disk);
          else failable = false;
        }
        if (!failable && fillable && await mountTmpfs(dir, "64m") === null) mounted.push(dir);
        const view: ClusterFileEntry[] = entries.map((entry) => {
          if (entry.node_id === self.node_id) return entry;
          const proxy = proxies.get(_linkKey(self.node_id, entry.node_id));
          if (proxy === undefined) throw new Error(`no proxy ${self.node_id}->${entry.node_id}`);
          proxy.target.port = Number(new URL(entry.rpc_url).port);
          return { ...entry, rpc_url: `${scheme}://127.0.0.1:${proxy.port}` };
        });
        const file = join(dataRoot, `cluster-${self.node_id}.json`);
        await writeClusterFile(file, view);
        configFiles.set(self.node_id, file);
      }
      const secure = tls ? await _makeSecurity(dataRoot, ids) : null;
      const processes = new ProcessCluster({
        dataRoot,
        ownsDataRoot: !(options.keepData ?? false),
        configPath,
        entries,
        mainScript: options.mainScript ?? fileURLToPath(new URL("../main.ts", import.meta.url)),
        denoArgs: ["--allow-all"],
        nodeFlags: [
          ...(secure === null ? [] : ["--tokens-file", secure.tokensFile]),
          ...(options.nodeFlags ?? []),
        ],
        env: { ..._inheritedEnv(), NO_COLOR: "1" },
        echo: options.echo ?? Deno.env.get("RAFTKV_HARNESS_ECHO") === "1",
        ...(secure === null
          ? {}
          : { tls: secure.certs, apiCerts: secure.certs, token: secure.security.tokens.read }),
      });
      cluster = new ChaosCluster(processes, proxies, configFiles, secure?.security ?? null);
      // All or nothing: a loop disk for every node, else a tmpfs for every node, else neither.
      if (failable && disks.size === ids.length) cluster.#disks = disks;
      else for (const disk of disks.values()) await disk.remove();
      cluster.#mounted = mounted.length === ids.length ? mounted : [];
      if (cluster.#mounted.length === 0) { for (const dir of mounted) await _umount(dir); }
      const started = cluster;
      await Promise.all(ids.map((id) => started.startNode(id)));
      return started;
    } catch (error) {
      if (cluster !== undefined) await cluster.close();
      else {
        await Promise.all([...proxies.values()].map((proxy) => proxy.close()));
        for (const dir of mounted) await _umount(dir);
        for (const disk of disks.values()) await disk.remove().catch(() => {});
        await Deno.remove(dataRoot, { recursive: true }).catch(() => {});
      }
      throw error;
    }
  }

  /**
   * Starts (or restarts) a node with its own cluster file and waits for `/health`.
   *
   * @param id The node.
   * @param deadlineMs How long to wait for `/health`.
   * @param env Environment variables for this start only.
   */
  async startNode(
    id: string,
    deadlineMs = 30_000,
    env: Record<string, string> = {},
  ): Promise<void> {
    const file = this.#configFiles.get(id);
    if (file === undefined) throw new Error(`no node ${id}`);
    await this.processes.start(id, { flags: ["--cluster-config-path", file], deadlineMs, env });
  }

  /** The proxy of the link `from` -> `to`. */
  proxy(from: string, to: string): LinkProxy {
    const proxy = this.#proxies.get(_linkKey(from, to));
    if (proxy === undefined) throw new Error(`no link ${from}->${to}`);
    return proxy;
  }

  /**
   * Cuts links.
   *
   * @param links The directed links to cut.
   * @param mode `"refuse"` (connections fail at once) or `"drop"` (a black hole).
   */
  cut(links: readonly Link[], mode: Exclude<LinkMode, "open">): void {
    for (const { from, to } of links) this.proxy(from, to).setMode(mode);
  }

  /**
   * Renews every node's certificate and key in place (same CA; the tokens file is written again
   * with the same tokens), then sends SIGHUP to each of `ids`, which reads its files again.
   *
   * @param ids The nodes to signal.
   * @throws {Error} If the cluster was not started with `tls`.
   */
  async rotate(ids: readonly string[]): Promise<void> {
    if (this.security === null) throw new Error("rotate needs a cluster started with tls");
    const dir = join(this.dataRoot, "tls");
    await makeCertificates(dir, { nodes: this.ids, renew: true });
    const tokens = join(dir, "tokens.json");
    await Deno.writeTextFile(tokens, await Deno.readTextFile(tokens), { mode: 0o600 });
    for (const id of ids) if (this.processes.isRunning(id)) this.processes.signal(id, "SIGHUP");
  }

  /** The SHA-256 fingerprint of the certificate file of node `id` (clusters started with `tls`). */
  async certificateFingerprint(id: string): Promise<string> {
    const pem = await Deno.readTextFile(join(this.dataRoot, "tls", `${id}.crt`));
    return new X509Certificate(pem).fingerprint256;
  }

  /**
   * The SHA-256 fingerprint of the certificate node `id`'s API presents to a new connection
   * (clusters started with `tls`).
   */
  async servedFingerprint(id: string): Promise<string> {
    if (this.security === null) throw new Error("the API serves no certificate without tls");
    const port = Number(new URL(this.processes.api(id)).port);
    return await servedCertificate(port, await Deno.readTextFile(this.security.ca));
  }

  /**
   * Slows links down (see {@linkcode LinkProxy.setDelay}).
   *
   * @param links The directed links to slow.
   * @param delay Their one-way delay, jitter and stalls.
   * @param random The source of the per-chunk draws, in [0, 1). Default `Math.random`.
   */
  slow(links: readonly Link[], delay: LinkDelay, random?: () => number): void {
    for (const { from, to } of links) this.proxy(from, to).setDelay(delay, random);
  }

  /** Restores every link: open, and fast. */
  healAll(): void {
    for (const proxy of this.#proxies.values()) {
      proxy.setMode("open");
      proxy.setDelay(null);
    }
  }

  /** The links currently cut, as `"a->b"`. */
  cutLinks(): string[] {
    return [...this.#proxies].filter(([, proxy]) => proxy.mode !== "open").map(([key]) => key);
  }

  /** Every directed link. */
  allLinks(): Link[] {
    return this.ids.flatMap((from) => this.linksFrom(from));
  }

  /** Every link from `id` to the other nodes. */
  linksFrom(id: string): Link[] {
    return this.ids.filter((other) => other !== id).map((to) => ({ from: id, to }));
  }

  /** Every link from the other nodes to `id`. */
  linksTo(id: string): Link[] {
    return this.ids.filter((other) => other !== id).map((from) => ({ from, to: id }));
  }

  /** Every link between the two groups, both ways. */
  linksBetween(a: readonly string[], b: readonly string[]): Link[] {
    const links: Link[] = [];
    for (const x of a) {
      for (const y of b) links.push({ from: x, to: y }, { from: y, to: x });
    }
    return links;
  }

  /**
   * Fills the disk (tmpfs) of node `id` with a filler file, to the last byte it takes.
   *
   * @throws {Error} If the cluster is not {@linkcode fillable}.
   */
  async fillDisk(id: string): Promise<void> {
    if (!this.fillable) throw new Error("the cluster's data directories are not on a tmpfs");
    await fill(this.processes.node(id).dataDir);
  }

  /** Deletes the filler file of node `id`, if any. */
  async freeDisk(id: string): Promise<void> {
    await free(this.processes.node(id).dataDir);
  }

  /**
   * Shuts down the loop disk of node `id` as a dying disk: every operation on it fails with EIO.
   *
   * @throws {Error} If the cluster is not {@linkcode failable}.
   */
  failDisk(id: string): void {
    this.#disk(id).fail();
  }

  /** Mounts the failed loop disk of node `id` again: its data as it was at its last sync. */
  async replaceDisk(id: string): Promise<void> {
    await this.#disk(id).replace();
  }

  #disk(id: string): LoopDisk {
    const disk = this.#disks.get(id);
    if (disk === undefined) throw new Error(`the data directory of ${id} is not on a loop disk`);
    return disk;
  }

  /** Stops every node and proxy (and removes the data unless it is kept). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.processes.close();
    await Promise.all([...this.#proxies.values()].map((proxy) => proxy.close()));
    // The processes' cleanup could not remove the mount points: unmount, then remove the rest
    // (a cluster that keeps its data mounts nothing).
    for (const dir of this.#mounted) await _umount(dir);
    for (const disk of this.#disks.values()) await disk.remove().catch(() => {});
    if (this.#mounted.length > 0 || this.#disks.size > 0) {
      await Deno.remove(this.dataRoot, { recursive: true }).catch(() => {});
    }
  }

  /** Same as {@linkcode ChaosCluster.close}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Certificates for every node (valid for 127.0.0.1) and a tokens file, in `<dataRoot>/tls`. */
async function _makeSecurity(dataRoot: string, ids: readonly string[]) {
  const dir = join(dataRoot, "tls");
  await Deno.mkdir(dir, { mode: 0o700 });
  const certs = await makeCertificates(dir, { nodes: ids });
  const token = () =>
    Array.from(crypto.getRandomValues(new Uint8Array(32)))
      .map((b) => b.toString(16).padStart(2, "0"))
      .join("");
  const tokens = { read: token(), write: token(), admin: token() };
  const tokensFile = join(dir, "tokens.json");
  const entries = (["read", "write", "admin"] as const).map((role) => ({
    token: tokens[role],
    role,
    name: `chaos-${role}`,
  }));
  await Deno.writeTextFile(tokensFile, JSON.stringify(entries), { mode: 0o600 });
  const security: ChaosSecurity = { ca: certs.ca, tokens };
  return { certs, tokensFile, security };
}

/** Unmounts `dir` lazily (a process that still holds a file there lets go of it later). */
async function _umount(dir: string): Promise<void> {
  await unmount(dir, true).catch(() => {});
}

function _linkKey(from: string, to: string): string {
  return `${from}->${to}`;
}

// ---------------------------------------------------------------------------------------------
// The run.

/** The kinds of fault the nemesis injects. */
export type FaultKind =
  /** SIGKILL a node, wait, start it again. */
  | "kill"
  /** SIGTERM a node (it must exit 0), wait, start it again. */
  | "stop"
  /** SIGSTOP a node, wait, SIGCONT. */
  | "pause"
  /** Cut every link to and from one node. */
  | "isolate"
  /** Cut every link from one node, or every link to it (one-way). */
  | "oneway"
  /** Split the nodes in two groups (a minority and a majority). */
  | "split"
  /** Cut one or two random directed links. */
  | "links"
  /**
   * Slow every link of one node (or, one time in three, every link): a one-way delay of 5-100 ms
   * with as much jitter again, and stalls of 100-600 ms (lost packets sent again).
   */
  | "slow"
  /**
   * Renew every node's certificates (same CA) and send SIGHUP to one node, to every node, or (one
   * time in three each) to none: a node swaps its API server and its peer credentials under load,
   * on the signal or once it looks at its files (`--reload-interval`). Each node signalled, or
   * every node when none is, must then present its new certificate within 10 s. Runs with `tls`
   * only.
   */
  | "rotate"
  /**
   * Fill the disk of one node, of the followers or of every node (each node's data directory is a
   * small tmpfs, filled with a filler file), hold, then delete the fillers: writes are refused with
   * 507 NOSPACE, or go on, and every node must clear its alarm after the final heal. Runs as root
   * on Linux only (`mount -t tmpfs`).
   */
  | "full"
  /**
   * Make the disk of one node fail (its data directory is an ext4 loop disk, shut down so that
   * every operation fails with EIO): the node must exit with code 1 within 10 s; hold, then mount
   * the disk again (its journal replayed: what was synced) and start the node. Runs as root on
   * Linux with loop devices only.
   */
  | "diskfail";

/** Every fault kind, in a stable order. */
export const FAULT_KINDS: readonly FaultKind[] = [
  "kill",
  "stop",
  "pause",
  "isolate",
  "oneway",
  "split",
  "links",
  "slow",
  "rotate",
  "full",
  "diskfail",
];

/** Options of {@linkcode runChaos}. */
export interface ChaosOptions {
  /** Seed of every random choice. */
  seed: number;
  /** How long clients and nemesis run, in milliseconds. */
  durationMs: number;
  /** Number of nodes. Default 3. */
  nodes?: number;
  /** Number of concurrent clients (each one operation at a time). Default 5. */
  clients?: number;
  /** Number of keys the clients use. Default 8. */
  keys?: number;
  /**
   * The share of reads sent with `consistency=lease` (checked as linearizable like the others:
   * the nodes share one clock here). Default 0.3.
   */
  leaseReads?: number;
  /** Deadline of one client request, in milliseconds. Default 7000. */
  requestTimeoutMs?: number;
  /**
   * The nodes' `--snapshot-threshold`. Default 500: low, so that snapshots are taken, and sent
   * to nodes that were away, during the run.
   */
  snapshotThreshold?: number;
  /** Flags for every node, after the defaults of the harness and of the chaos run. */
  nodeFlags?: readonly string[];
  /** The fault kinds to inject. Default: all. */
  faults?: readonly FaultKind[];
  /** Time budget of the linearizability check, in milliseconds. Default 60000. */
  checkTimeoutMs?: number;
  /** Receives progress lines. Default: nothing. */
  log?: (line: string) => void;
  /** Copy the nodes' output to stderr. */
  echo?: boolean;
  /** Keep the data directory. */
  keepData?: boolean;
  /**
   * Run with peer mutual TLS, HTTPS on the API and bearer tokens; the clients trust the CA and
   * send a write token. Default `false`.
   */
  tls?: boolean;
}

/** Flags the chaos run gives every node (before `nodeFlags`). */
export const CHAOS_NODE_FLAGS: readonly string[] = Object.freeze([
  "--api-timeout",
  "3000",
  "--api-fwd-timeout",
  "3000",
  // Changed TLS and tokens files are taken within about a second (see the rotate fault).
  "--reload-interval",
  "500ms",
]);

/** Counts of client operations. */
export interface OpCounts {
  /** Operations attempted. */
  total: number;
  /** Answered with a definite result. */
  ok: number;
  /** Writes whose outcome is unknown (502, 504, timeout, connection cut). */
  unknown: number;
  /**
   * Definitely failed (503, 507 past the quota or for full disks, refused connection), or reads
   * that got no answer.
   */
  failed: number;
  /** Of those, writes refused as past the data quota (507 `quota_exceeded`; never a delete). */
  quota: number;
  /** Of those, writes refused for full disks (507 with the `NOSPACE` alarm). */
  noSpace: number;
}

/** A key whose final value cannot be the result of any write that could have been last. */
export interface LostWrite {
  /** The key. */
  key: string;
  /** The value the final read returned (`null`: absent). */
  finalValue: string | null;
  /** The values that could legitimately be last (`null`: absent). */
  expected: (string | null)[];
  /** Why. */
  reason: string;
}

/** What {@linkcode runChaos} found. */
export interface ChaosReport {
  /** The seed of the run. */
  seed: number;
  /** Whether no violation and no anomaly was found. */
  ok: boolean;
  /** The summary, one line per fact (prefix `chaos:` not included). */
  summary: string[];
  /** On failure: the failing key's timeline, the anomalies in full and the node logs. */
  details: string;
  /** Operation counts, overall and per kind. */
  ops: OpCounts & { byKind: Record<OperationKind | "range", OpCounts> };
  /** Faults injected, by kind (and `<kind>-leader` for those aimed at the leader). */
  faults: Record<string, number>;
  /** How many times a new leader was observed. */
  leaderChanges: number;
  /** The highest term observed. */
  highestTerm: number;
  /** The linearizability check's result. */
  linearizability: CheckResult;
  /** Keys whose final value no write that could be last explains. */
  lostWrites: LostWrite[];
  /** Every other problem: crashes, unexpected statuses, two leaders in a term, ... */
  anomalies: string[];
  /** Whether every node ended with the same state. */
  converged: boolean;
  /** The whole history that was checked. */
  history: Operation[];
  /** How long the run took, in milliseconds. */
  elapsedMs: number;
}

/** An acknowledged write and the log index the node answered with. */
export interface AckedWrite {
  /** The operation as recorded in the history. */
  op: Operation;
  /** The `index` of the answer. */
  index: number;
}

/**
 * The record of a client workload against a {@linkcode ProcessCluster}: the history the clients
 * build with {@linkcode runClient}, and what the end checks ({@linkcode finalReads},
 * {@linkcode checkConvergence}, {@linkcode checkWorkload}) need. Made by
 * {@linkcode createWorkload}; the chaos run and the peer fuzz run share it.
 */
export interface Workload {
  /** The node processes the clients talk to (through their API ports). */
  readonly processes: ProcessCluster;
  /** The clients' HTTP client: a fresh connection per request (see `attempt`). */
  readonly http: Deno.HttpClient;
  /** Headers every client request sends (a bearer token when the nodes ask for one). */
  readonly headers: Record<string, string>;
  /** Every operation with a definite or unknown outcome, in the order they ended. */
  readonly history: Operation[];
  /** The acknowledged writes with their log indexes. */
  readonly acked: AckedWrite[];
  /** Puts that definitely failed (503, refused connection), by value: how they failed. */
  readonly failedPuts: Map<string, string>;
  /** Problems found along the way (malformed answers, crashes, ...). */
  readonly anomalies: string[];
  /** Operation counts by kind (`range`: reads of every key at once). */
  readonly counts: Record<OperationKind | "range", OpCounts>;
  /**
   * The `mod_index` each written value was seen at (values are unique per write): a value seen
   * at two is a write applied twice.
   */
  readonly modIndexOf: Map<string, number>;
  /** Writes sent more than once with one idempotency key, and those answered as replays. */
  readonly retries: { retried: number; replayed: number };
  /** The share of reads sent with `consistency=lease`. */
  readonly leaseFraction: number;
  /** The reads of the history that were lease reads. */
  readonly leaseReads: WeakSet<Operation>;
  /** Receives progress lines. */
  readonly log: (line: string) => void;
  /** The `performance.now()` the run started at (for readable times). */
  readonly start: number;
}

/**
 * Creates the record of a client workload.
 *
 * @param processes The cluster the clients talk to.
 * @param http The clients' HTTP client; use {@linkcode createFreshConnectionClient}.
 * @param options `leaseReads`: the share of reads sent with `consistency=lease` (default 0.3);
 * `log`: where progress lines go (default nowhere); `start`: the run's start (default now);
 * `headers`: sent with every client request (default none).
 * @returns An empty workload.
 */
export function createWorkload(
  processes: ProcessCluster,
  http: Deno.HttpClient,
  options: {
    leaseReads?: number;
    log?: (line: string) => void;
    start?: number;
    headers?: Record<string, string>;
  } = {},
): Workload {
  return {
    processes,
    http,
    headers: options.headers ?? {},
    history: [],
    acked: [],
    failedPuts: new Map(),
    anomalies: [],
    counts: { put: _zero(), get: _zero(), delete: _zero(), cas: _zero(), range: _zero() },
    modIndexOf: new Map(),
    retries: { retried: 0, replayed: 0 },
    leaseFraction: options.leaseReads ?? 0.3,
    leaseReads: new WeakSet(),
    log: options.log ?? (() => {}),
    start: options.start ?? performance.now(),
  };
}

interface _RunState extends Workload {
  readonly chaos: ChaosCluster;
  readonly faults: Record<string, number>;
  /** Nodes found killed by a SIGKILL the run did not send. */
  externalKills: number;
  /** Nodes the nemesis stopped and could not start again (retried before each fault). */
  readonly down: Set<string>;
  readonly monitor: _LeaderMonitor;
}

/**
 * Runs clients and nemesis against a fresh cluster for `durationMs`, then heals everything,
 * reads every key once more and checks the history. Everything it started is stopped before it
 * returns or throws.
 *
 * @param options The run's parameters.
 * @returns The report; `report.ok` says whether everything held.
 */
export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const nodes = options.nodes ?? 3;
  const clientCount = options.clients ?? 5;
  const keyCount = options.keys ?? 8;
  const requestTimeoutMs = options.requestTimeoutMs ?? 7000;
  const faultKinds = options.faults ?? FAULT_KINDS;
  const log = options.log ?? (() => {});
  const rng = new Rng(options.seed);
  const keys = Array.from({ length: keyCount }, (_, i) => `key-${i}`);
  const started = performance.now();

  await using chaos = await ChaosCluster.start({
    size: nodes,
    nodeFlags: [
      ...CHAOS_NODE_FLAGS,
      "--snapshot-threshold",
      String(options.snapshotThreshold ?? 500),
      ...(options.nodeFlags ?? []),
    ],
    ...(options.echo === undefined ? {} : { echo: options.echo }),
    ...(options.keepData === undefined ? {} : { keepData: options.keepData }),
    tls: options.tls ?? false,
    fillable: faultKinds.includes("full"),
    failable: faultKinds.includes("diskfail"),
  });
  if (options.keepData) log(`data directory: ${chaos.dataRoot}`);
  const monitor = new _LeaderMonitor(chaos);
  const security = chaos.security;
  using http = createFreshConnectionClient(
    security === null ? {} : { caCerts: [await Deno.readTextFile(security.ca)] },
  );
  const state: _RunState = {
    ...createWorkload(chaos.processes, http, {
      leaseReads: options.leaseReads ?? 0.3,
      log,
      start: started,
      headers: security === null ? {} : { authorization: `Bearer ${security.tokens.write}` },
    }),
    chaos,
    faults: {},
    externalKills: 0,
    down: new Set(),
    monitor,
  };
  const stopMonitor = new AbortController();
  const monitoring = monitor.run(stopMonitor.signal);
  try {
    await chaos.processes.waitForLeader(30_000);
    log(`cluster of ${nodes} up; running ${clientCount} clients for ${options.durationMs} ms`);

    const stopAt = performance.now() + options.durationMs;
    const clients = Array.from(
      { length: clientCount },
      (_, i) => runClient(state, i + 1, rng.fork(), keys, stopAt, requestTimeoutMs),
    );
    await _runNemesis(state, rng.fork(), faultKinds, stopAt);
    await Promise.all(clients);
    log(`clients done after ${state.history.length} operations; healing`);

    await _restoreAll(state);
    let leaderKnown = true;
    try {
      await chaos.processes.waitForLeader(30_000);
    } catch (error) {
      leaderKnown = false;
      state.anomalies.push(`no leader within 30 s after healing: ${(error as Error).message}`);
    }
    const finals = leaderKnown ? await finalReads(state, keys) : new Map();
    const converged = leaderKnown ? await checkConvergence(state, keys) : false;
    if (chaos.fillable) await _checkAlarmsCleared(state);
    stopMonitor.abort();
    await monitoring;
    return _report(state, options, { finals, converged, keys, nodes, clientCount });
  } finally {
    stopMonitor.abort();
    await monitoring;
  }
}

function _zero(): OpCounts {
  return { total: 0, ok: 0, unknown: 0, failed: 0, quota: 0, noSpace: 0 };
}

/**
 * Runs one client: one operation at a time on random keys through random nodes, recorded in the
 * workload, until `until` passes or aborts: 35% reads, 25% puts, 18% compare-and-sets, 12%
 * deletes, 10% reads of every key at once (a range). Half the puts and every compare-and-set
 * carry an `Idempotency-Key` and are sent again with it (through another node) while their
 * outcome is unknown, up to four times: the history holds one operation from the first call to
 * the last answer. A compare-and-set names the `mod_index` the client last saw for the key (0
 * when it saw none); its expected value is the one seen with that index.
 *
 * @param state The workload to record into.
 * @param client The client's number (distinct per concurrent client).
 * @param rng The client's own random stream.
 * @param keys The keys to use.
 * @param until A `performance.now()` deadline, or a signal that ends the client when aborted.
 * @param timeoutMs The deadline of one request, in milliseconds.
 */
export async function runClient(
  state: Workload,
  client: number,
  rng: Rng,
  keys: readonly string[],
  until: number | AbortSignal,
  timeoutMs: number,
): Promise<void> {
  const { processes } = state;
  const going = typeof until === "number" ? () => performance.now() < until : () => !until.aborted;
  /** What this client last saw of each key: its mod_index and value (0 and null: absent). */
  const seen = new Map<string, { modIndex: number; value: string | null }>();
  const learn = (key: string, modIndex: number, value: string | null) => {
    seen.set(key, { modIndex, value });
  };
  let seq = 0;
  while (going()) {
    const key = rng.pick(keys);
    const node = rng.pick(processes.ids);
    const roll = rng.float();
    if (roll >= 0.9) {
      if (!await _rangeRead(state, client, node, keys, timeoutMs, learn)) {
        await delay(rng.between(20, 120));
      }
      continue;
    }
    const kind: OperationKind = roll < 0.35
      ? "get"
      : roll < 0.6
      ? "put"
      : roll < 0.78
      ? "cas"
      : "delete";
    const value = kind === "put" || kind === "cas" ? `c${client}-${++seq}` : null;
    const known = seen.get(key) ?? { modIndex: 0, value: null };
    let url = `${processes.api(node)}/v1/data${
      kind === "put" ? "" : `/${encodeURIComponent(key)}`
    }`;
    if (kind === "cas") url += `?cas=${known.modIndex}`;
    const method = kind === "put"
      ? "POST"
      : kind === "get"
      ? "GET"
      : kind === "cas"
      ? "PUT"
      : "DELETE";
    const lease = kind === "get" && rng.chance(state.leaseFraction);
    const body = kind === "put" ? { k: key, v: value } : kind === "cas" ? { v: value } : undefined;
    const op: Omit<Operation, "return"> = kind === "cas"
      ? { client, kind, key, value, expect: known.value, call: performance.now() }
      : { client, kind, key, value, call: performance.now() };
    let definite: boolean;
    if (kind === "cas" || (kind === "put" && rng.chance(0.5))) {
      definite = await _retried(state, op, node, url, method, body, timeoutMs, rng, learn);
    } else {
      const result = await attempt(
        lease ? `${url}?consistency=lease` : url,
        method,
        body,
        timeoutMs,
        state.http,
        state.headers,
      );
      definite = _record(state, op, performance.now(), node, result, lease, learn);
    }
    // A quick definite failure (no leader, node down): pause a little rather than spin.
    if (!definite) await delay(rng.between(20, 120));
  }
}

/** Whether an answer leaves a write's outcome unknown (so that it is worth sending again). */
function _unknown(result: Attempt): boolean {
  if (result.kind === "error") return !result.connectFailed;
  return result.status === 502 || result.status === 504;
}

/**
 * Sends a write with an idempotency key, again through other nodes while its outcome is unknown
 * (up to four times), and records it as one operation. An attempt refused for sure (503, no
 * connection) after one of unknown outcome leaves the whole unknown: that one may still apply.
 */
async function _retried(
  state: Workload,
  op: Omit<Operation, "return">,
  firstNode: string,
  url: string,
  method: string,
  body: unknown,
  timeoutMs: number,
  rng: Rng,
  learn: (key: string, modIndex: number, value: string | null) => void,
): Promise<boolean> {
  const headers = { ...state.headers, "idempotency-key": `${op.value}` };
  let node = firstNode;
  let target = url;
  let sawUnknown = false;
  for (let n = 0;; n++) {
    const result = await attempt(target, method, body, timeoutMs, state.http, headers);
    const last = n === 3 || !_unknown(result);
    if (!last) {
      sawUnknown = true;
      if (n === 0) state.retries.retried++;
      await delay(rng.between(50, 250));
      const next = rng.pick(state.processes.ids);
      target = url.replace(state.processes.api(node), state.processes.api(next));
      node = next;
      continue;
    }
    if (result.kind === "answer" && result.headers.get("idempotent-replayed") === "true") {
      state.retries.replayed++;
    }
    // Unknown before, now refused for sure (503, or 507 for the quota or a full disk: a refusal
    // speaks only for this attempt): still unknown as a whole.
    const refused = result.kind === "error"
      ? result.connectFailed
      : result.status === 503 || result.status === 507;
    if (sawUnknown && refused) {
      return _record(state, op, performance.now(), node, _UNKNOWN, false, learn);
    }
    return _record(state, op, performance.now(), node, result, false, learn);
  }
}

const _UNKNOWN: Attempt = {
  kind: "error",
  connectFailed: false,
  timedOut: true,
  message: "an earlier attempt's outcome is unknown",
};

/**
 * Reads every key at once (`GET /v1/data?prefix=key-`) and records it, key by key, as reads
 * over the same interval; returns whether it got an answer.
 */
async function _rangeRead(
  state: Workload,
  client: number,
  node: string,
  keys: readonly string[],
  timeoutMs: number,
  learn: (key: string, modIndex: number, value: string | null) => void,
): Promise<boolean> {
  const counts = state.counts.range;
  counts.total++;
  const call = performance.now();
  const result = await attempt(
    `${state.processes.api(node)}/v1/data?prefix=key-`,
    "GET",
    undefined,
    timeoutMs,
    state.http,
    state.headers,
  );
  const ret = performance.now();
  const body = result.kind === "answer" && typeof result.json === "object" && result.json !== null
    ? result.json as { items?: unknown; next?: unknown; error?: unknown }
    : null;
  if (result.kind === "error" || result.status !== 200) {
    counts.failed++;
    if (result.kind === "answer" && result.status !== 503 && result.status !== 504) {
      state.anomalies.push(
        `a range read via ${node}: ${result.status} ${result.text.slice(0, 300)}`,
      );
    }
    return false;
  }
  const items = Array.isArray(body?.items) ? body.items as Record<string, unknown>[] : null;
  if (items === null || body?.next !== null) {
    state.anomalies.push(`a range read via ${node}: a malformed body ${result.text.slice(0, 300)}`);
    return true;
  }
  counts.ok++;
  const found = new Map<string, string>();
  let previous = "";
  for (const item of items) {
    const k = item.k;
    const v = item.v;
    const m = item.mod_index;
    if (typeof k !== "string" || typeof v !== "string" || typeof m !== "number" || k <= previous) {
      state.anomalies.push(
        `a range read via ${node}: a bad or unordered item ${JSON.stringify(item)}`,
      );
      continue;
    }
    previous = k;
    found.set(k, v);
    _observe(state, k, v, m, `a range read via ${node}`);
  }
  for (const key of keys) {
    const value = found.get(key) ?? null;
    state.history.push({ client, kind: "get", key, value, call, return: ret });
    const m = items.find((i) => i.k === key)?.mod_index;
    learn(key, typeof m === "number" ? m : 0, value);
  }
  return true;
}

/** Notes that `value` of `key` was seen at `modIndex`; a second index means it was applied twice. */
function _observe(state: Workload, key: string, value: string, modIndex: number, where: string) {
  const before = state.modIndexOf.get(value);
  if (before === undefined) {
    state.modIndexOf.set(value, modIndex);
  } else if (before !== modIndex) {
    state.anomalies.push(
      `${JSON.stringify(value)} of ${
        JSON.stringify(key)
      } seen at mod_index ${before} and ${modIndex} (${where}): a write applied twice`,
    );
  }
}

/** Records one client operation; returns whether it got a definite answer. */
function _record(
  state: Workload,
  op: Omit<Operation, "return">,
  ret: number,
  node: string,
  result: Attempt,
  lease = false,
  learn: (key: string, modIndex: number, value: string | null) => void = () => {},
): boolean {
  const counts = state.counts[op.kind];
  counts.total++;
  const where = `${op.kind}(${JSON.stringify(op.key)}${
    op.kind === "put" || op.kind === "cas" ? `, ${JSON.stringify(op.value)}` : ""
  }) via ${node} at ${((op.call - state.start) / 1000).toFixed(3)} s`;
  const isWrite = op.kind !== "get";
  const unknownWrite = () => {
    counts.unknown++;
    state.history.push({ ...op, return: null });
  };
  if (result.kind === "error") {
    if (!isWrite || result.connectFailed) counts.failed++;
    else unknownWrite();
    if ((op.kind === "put" || op.kind === "cas") && op.value !== null && result.connectFailed) {
      state.failedPuts.set(op.value, `${where}: no connection (${result.message})`);
    }
    return false;
  }
  const { status, json } = result;
  const body = (typeof json === "object" && json !== null ? json : {}) as Record<string, unknown>;
  const malformed = (what: string) => {
    state.anomalies.push(`${where}: ${status} with ${what}: ${result.text.slice(0, 300)}`);
  };
  if (status >= 400 && typeof body.error !== "string") malformed("no JSON error body");
  if (op.kind === "get") {
    if (status === 200) {
      if (body.k !== op.key || typeof body.v !== "string" || typeof body.mod_index !== "number") {
        malformed("a malformed body");
      }
      counts.ok++;
      const read = { ...op, value: typeof body.v === "string" ? body.v : null, return: ret };
      state.history.push(read);
      if (lease) state.leaseReads.add(read);
      if (typeof body.v === "string" && typeof body.mod_index === "number") {
        _observe(state, op.key, body.v, body.mod_index, where);
        learn(op.key, body.mod_index, body.v);
      }
      return true;
    }
    if (status === 404 && body.error === "key not found") {
      counts.ok++;
      const read = { ...op, value: null, return: ret };
      state.history.push(read);
      if (lease) state.leaseReads.add(read);
      learn(op.key, 0, null);
      return true;
    }
    counts.failed++;
    if (status !== 503 && status !== 504) malformed("an unexpected status for a read");
    return false;
  }
  if (status === 200) {
    const index = body.index;
    const good = body.k === op.key &&
      (op.kind === "delete" ? typeof body.deleted === "boolean" : body.v === op.value) &&
      typeof index === "number" && Number.isSafeInteger(index) && index > 0 &&
      (op.kind === "delete" || body.mod_index === index);
    if (!good) malformed("a malformed body");
    counts.ok++;
    const recorded: Operation = { ...op, return: ret };
    state.history.push(recorded);
    if (typeof index === "number") {
      state.acked.push({ op: recorded, index });
      if (op.kind === "delete") learn(op.key, 0, null);
      else if (op.value !== null) {
        _observe(state, op.key, op.value, index, where);
        learn(op.key, index, op.value);
      }
    }
    return true;
  }
  if (status === 412 && op.kind === "cas") {
    // The condition did not hold: nothing changed, and it saw the key's current state.
    const current = body.current as Record<string, unknown> | null | undefined;
    const value = current === null ? null : current?.v;
    const m = current === null ? 0 : current?.mod_index;
    if ((value !== null && typeof value !== "string") || typeof m !== "number") {
      malformed("a malformed 412 body");
      counts.failed++;
      return true;
    }
    counts.ok++;
    const { expect: _, ...rest } = op;
    state.history.push({ ...rest, kind: "get", value, return: ret });
    if (op.value !== null) state.failedPuts.set(op.value, `${where}: 412 (its condition failed)`);
    if (value !== null) _observe(state, op.key, value, m, where);
    learn(op.key, m, value);
    return true;
  }
  // Refused before it was proposed, as past the data quota: a delete never is (an anomaly).
  const overQuota = status === 507 && body.code === "quota_exceeded" && op.kind !== "delete";
  if (overQuota) counts.quota++;
  // Refused before it was proposed, for full disks (any kind of write).
  const noSpace = status === 507 && body.alarm === "NOSPACE";
  if (noSpace) counts.noSpace++;
  if (status === 503 || overQuota || noSpace) {
    // "Definitely not applied": left out of the history, so a read of its value would fail it.
    counts.failed++;
    if ((op.kind === "put" || op.kind === "cas") && op.value !== null) {
      state.failedPuts.set(
        op.value,
        `${where}: ${status} after ${(ret - op.call).toFixed(1)} ms, headers ${
          JSON.stringify([...result.headers])
        }, body ${result.text.slice(0, 400)}`,
      );
    }
    return false;
  }
  if (status !== 502 && status !== 504) malformed("an unexpected status for a write");
  unknownWrite();
  return false;
}

// ---------------------------------------------------------------------------------------------
// The nemesis.

async function _runNemesis(
  state: _RunState,
  rng: Rng,
  kinds: readonly FaultKind[],
  stopAt: number,
): Promise<void> {
  const { chaos, log } = state;
  const usable = kinds.filter((kind) =>
    (kind !== "split" || chaos.ids.length >= 3) &&
    (kind !== "rotate" || chaos.security !== null) && (kind !== "full" || chaos.fillable) &&
    (kind !== "diskfail" || chaos.failable)
  );
  if (usable.length === 0) {
    await delay(stopAt - performance.now());
    return;
  }
  const stop = AbortSignal.timeout(Math.max(0, stopAt - performance.now()));
  while (!stop.aborted) {
    await delay(rng.between(200, 2500), stop);
    if (stop.aborted) break;
    await _checkCrashes(state);
    const kind = rng.pick(usable);
    const label = await _inject(state, rng, kind);
    state.faults[kind] = (state.faults[kind] ?? 0) + 1;
    if (label.endsWith("-leader")) {
      state.faults[`${kind}-leader`] = (state.faults[`${kind}-leader`] ?? 0) + 1;
    }
    log(`nemesis: ${label} done at ${((performance.now() - state.start) / 1000).toFixed(1)} s`);
  }
}

/** Injects one fault, holds it, reverts it. Returns its label (`-leader` when aimed at it). */
async function _inject(
  state: _RunState,
  rng: Rng,
  kind: FaultKind,
): Promise<string> {
  const { chaos } = state;
  const processes = chaos.processes;
  const live = processes.liveIds();
  const leader = state.monitor.leader;
  const aimAtLeader = leader !== null && live.includes(leader) && rng.chance(0.5);
  const target = aimAtLeader && leader !== null
    ? leader
    : rng.pick(live.length > 0 ? live : chaos.ids);
  const label = (name: string) => aimAtLeader ? `${name}-leader` : name;
  // Holds never outlast the run by more than a little: the final phase heals everything anyway.
  const hold = (lo: number, hi: number) => delay(rng.between(lo, hi));
  switch (kind) {
    case "kill": {
      if (!processes.isRunning(target)) return label("kill");
      await processes.kill(target, "SIGKILL");
      await hold(200, 3000);
      await _restart(state, target);
      return label("kill");
    }
    case "stop": {
      if (!processes.isRunning(target)) return label("stop");
      try {
        const code = await processes.stop(target, 10_000);
        if (code !== 0) {
          state.anomalies.push(`${target} exited with code ${code} after SIGTERM (expected 0)`);
        }
      } catch (error) {
        state.anomalies.push(`SIGTERM of ${target}: ${(error as Error).message}`);
      }
      await hold(200, 2000);
      await _restart(state, target);
      return label("stop");
    }
    case "pause": {
      if (!processes.isRunning(target)) return label("pause");
      processes.pause(target);
      await hold(500, 4000);
      if (processes.isRunning(target)) processes.resume(target);
      return label("pause");
    }
    case "isolate": {
      const mode = _mode(rng);
      chaos.cut([...chaos.linksFrom(target), ...chaos.linksTo(target)], mode);
      await hold(1000, 5000);
      chaos.healAll();
      return label(`isolate(${mode})`);
    }
    case "oneway": {
      const mode = _mode(rng);
      const outbound = rng.chance(0.5);
      chaos.cut(outbound ? chaos.linksFrom(target) : chaos.linksTo(target), mode);
      await hold(1000, 5000);
      chaos.healAll();
      return label(`oneway-${outbound ? "out" : "in"}(${mode})`);
    }
    case "split": {
      const mode = _mode(rng);
      const shuffled = rng.shuffled(chaos.ids.filter((id) => id !== target));
      const minority = [target, ...shuffled.slice(0, Math.floor((chaos.ids.length - 1) / 2) - 1)];
      const majority = chaos.ids.filter((id) => !minority.includes(id));
      chaos.cut(chaos.linksBetween(minority, majority), mode);
      await hold(1000, 5000);
      chaos.healAll();
      return label(`split(${mode})`);
    }
    case "links": {
      const mode = _mode(rng);
      chaos.cut(rng.shuffled(chaos.allLinks()).slice(0, rng.int(1, 3)), mode);
      await hold(1000, 5000);
      chaos.healAll();
      return `links(${mode})`;
    }
    case "slow": {
      const all = rng.chance(1 / 3);
      const minMs = Math.round(rng.between(5, 100));
      const maxMs = minMs + Math.round(rng.between(0, minMs));
      const stallMs = Math.round(rng.between(100, 600));
      const draws = rng.fork();
      chaos.slow(
        all ? chaos.allLinks() : [...chaos.linksFrom(target), ...chaos.linksTo(target)],
        { minMs, maxMs, stallRate: 0.02, stallMs },
        () => draws.float(),
      );
      await hold(2000, 6000);
      chaos.healAll();
      const delay = `${minMs}-${maxMs} ms, stalls of ${stallMs} ms`;
      return all ? `slow-all(${delay})` : label(`slow(${delay})`);
    }
    case "rotate": {
      // SIGHUP to one node, to every node, or to none: then each takes the files when it next
      // looks at them (--reload-interval, 500 ms in chaos runs).
      const how = rng.int(0, 3);
      const running = chaos.ids.filter((id) => processes.isRunning(id));
      const signalled = how === 0 ? [target] : how === 1 ? running : [];
      await chaos.rotate(signalled);
      for (const id of how === 0 ? [target] : running) {
        const wanted = await chaos.certificateFingerprint(id);
        try {
          await waitFor(
            async () =>
              !processes.isRunning(id) ||
              await chaos.servedFingerprint(id).catch(() => null) === wanted,
            { deadlineMs: 10_000, intervalMs: 100, message: `${id} to serve its new certificate` },
          );
        } catch (error) {
          const after = how === 2 ? "after a file change" : "after SIGHUP";
          state.anomalies.push(`${after}: ${(error as Error).message}`);
        }
      }
      return how === 0 ? label("rotate") : how === 1 ? "rotate-all" : "rotate-files";
    }
    case "full": {
      // One node's disk (the leader's half the time), the followers' or every node's.
      const how = rng.int(0, 3);
      const followers = how === 1 && leader !== null;
      const victims = how === 0
        ? [target]
        : followers
        ? chaos.ids.filter((id) => id !== leader)
        : [...chaos.ids];
      for (const id of victims) await chaos.fillDisk(id);
      await hold(1000, 4000);
      for (const id of victims) await chaos.freeDisk(id);
      return how === 0 ? label("full") : followers ? "full-followers" : "full-all";
    }
    case "diskfail": {
      if (!processes.isRunning(target)) return label("diskfail");
      chaos.failDisk(target);
      try {
        // A node learns that its disk failed at its next disk operation (README, Storage): that is
        // at once under load, but a leader refusing every write (its followers' disks full, the
        // others down, or the quota reached) writes nothing until that passes, so the deadline
        // leaves room for it (a run waited more than 10 s once, with a full follower and the
        // third node stopped).
        await waitFor(() => !processes.isRunning(target), {
          deadlineMs: 30_000,
          intervalMs: 20,
          message: `${target} to stop after its disk failed`,
        });
        const exit = processes.exitStatus(target);
        if (exit?.code !== 1) {
          state.anomalies.push(
            `${target} exited with ${JSON.stringify(exit)} after its disk ` +
              `failed (expected code 1)\n${processes.formatLogs([target], 30)}`,
          );
        }
      } catch (error) {
        state.anomalies.push(`${(error as Error).message}\n${processes.formatLogs([target], 30)}`);
        if (processes.isRunning(target)) await processes.kill(target, "SIGKILL");
      }
      await hold(200, 2000);
      await chaos.replaceDisk(target);
      await _restart(state, target);
      return label("diskfail");
    }
  }
}

function _mode(rng: Rng): "refuse" | "drop" {
  return rng.chance(0.5) ? "refuse" : "drop";
}

async function _restart(state: _RunState, id: string): Promise<void> {
  state.down.delete(id);
  try {
    await state.chaos.startNode(id);
  } catch (error) {
    state.down.add(id);
    state.anomalies.push(`${id} did not come back after a restart: ${(error as Error).message}`);
  }
}

/** Reports (and restarts) nodes that exited although the nemesis did not stop them. */
async function _checkCrashes(state: _RunState): Promise<void> {
  const processes = state.chaos.processes;
  for (const id of state.chaos.ids) {
    if (processes.isRunning(id)) continue;
    const exit = processes.exitStatus(id);
    if (state.down.has(id)) {
      // Left down by a failed restart (already reported): try again.
    } else if (exit?.signal === "SIGKILL") {
      // Not the nemesis (it restarts what it kills), so something outside the run killed it
      // (another program on the machine, the OOM killer): not the node's fault.
      state.externalKills++;
      state.log(`${id} was killed by SIGKILL from outside the run; restarting it`);
    } else {
      state.anomalies.push(
        `${id} exited on its own (${JSON.stringify(exit)})\n${processes.formatLogs([id], 60)}`,
      );
    }
    await _restart(state, id);
  }
}

/** After the final heal freed every disk: each node must clear its NOSPACE alarm by itself. */
async function _checkAlarmsCleared(state: _RunState): Promise<void> {
  for (const id of state.chaos.ids) {
    try {
      await waitFor(async () => {
        const status = await state.chaos.processes.status(id);
        return status !== null && (status.alarms ?? []).length === 0;
      }, {
        deadlineMs: 15_000,
        intervalMs: 200,
        message: `${id} to clear its alarms once every disk had room again`,
      });
    } catch (error) {
      state.anomalies.push((error as Error).message);
    }
  }
}

/** Heals every link, frees every disk, resumes paused nodes and starts stopped ones. */
async function _restoreAll(state: _RunState): Promise<void> {
  const { chaos } = state;
  chaos.healAll();
  if (chaos.fillable) { for (const id of chaos.ids) await chaos.freeDisk(id); }
  for (const node of chaos.processes.nodes) {
    if (node.paused) chaos.processes.resume(node.id);
  }
  await _checkCrashes(state);
}

// ---------------------------------------------------------------------------------------------
// Leader observation.

/** Polls every node's status, counts leader changes and checks one leader per term. */
class _LeaderMonitor {
  #chaos: ChaosCluster;
  #leaders = new Map<number, string>();
  #last: { term: number; id: string } | null = null;
  /** The most recent leader seen (highest term). */
  leader: string | null = null;
  /** How many times a new leader was seen. */
  changes = 0;
  /** The highest term seen. */
  highestTerm = 0;
  /** Two leaders claimed the same term. */
  violations: string[] = [];

  constructor(chaos: ChaosCluster) {
    this.#chaos = chaos;
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const live = this.#chaos.processes.liveIds();
      const statuses = await Promise.all(
        live.map((id) => this.#chaos.processes.status(id, 500)),
      );
      for (const status of statuses) if (status !== null) this.observe(status);
      await delay(200, signal);
    }
  }

  observe(status: NodeStatus): void {
    this.highestTerm = Math.max(this.highestTerm, status.term);
    if (status.role !== "leader") return;
    const known = this.#leaders.get(status.term);
    if (known !== undefined && known !== status.id) {
      this.violations.push(`two leaders in term ${status.term}: ${known} and ${status.id}`);
      return;
    }
    this.#leaders.set(status.term, status.id);
    if (this.#last === null || status.term > this.#last.term) {
      if (this.#last !== null) this.changes++;
      this.#last = { term: status.term, id: status.id };
      this.leader = status.id;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The end: final reads, convergence, checks, report.

/**
 * Reads every key once (linearizable, rotating through the nodes, retrying for up to 30 s each)
 * and adds the reads to the history; a key that cannot be read is an anomaly.
 *
 * @param state The workload.
 * @param keys The keys to read.
 * @returns Each key's value (`null`: absent) for the keys that could be read.
 */
export async function finalReads(
  state: Workload,
  keys: readonly string[],
): Promise<Map<string, string | null>> {
  const finals = new Map<string, string | null>();
  const { processes } = state;
  let turn = 0;
  for (const [i, key] of keys.entries()) {
    let lastProblem = "";
    try {
      await waitFor(async () => {
        const node = processes.ids[turn++ % processes.ids.length] ?? "node-1";
        const call = performance.now();
        const result = await attempt(
          `${processes.api(node)}/v1/data/${encodeURIComponent(key)}`,
          "GET",
          undefined,
          5000,
          state.http,
          state.headers,
        );
        const ret = performance.now();
        if (result.kind === "error") {
          lastProblem = `${node}: ${result.message}`;
          return false;
        }
        const body = result.json as Record<string, unknown> | null;
        let value: string | null;
        if (result.status === 200 && typeof body?.v === "string") {
          value = body.v;
          if (typeof body.mod_index === "number") {
            _observe(state, key, body.v, body.mod_index, `the final read of ${key}`);
          }
        } else if (result.status === 404 && body?.error === "key not found") value = null;
        else {
          lastProblem = `${node}: ${result.status} ${result.text.slice(0, 200)}`;
          return false;
        }
        finals.set(key, value);
        state.history.push({ client: 10_000 + i, kind: "get", key, value, call, return: ret });
        return true;
      }, { deadlineMs: 30_000, intervalMs: 100, message: `a final read of ${key}` });
    } catch (error) {
      state.anomalies.push(
        `the final read of ${JSON.stringify(key)} failed for 30 s (${lastProblem}): ${
          (error as Error).message.split("\n")[0]
        }`,
      );
    }
  }
  return finals;
}

/**
 * Waits until every node has applied the same index, then compares every key's value on every
 * node (stale reads), and checks nothing was applied meanwhile. A failure after 30 s is an
 * anomaly.
 *
 * @param state The workload.
 * @param keys The keys to compare.
 * @returns Whether the replicas converged.
 */
export async function checkConvergence(state: Workload, keys: readonly string[]): Promise<boolean> {
  const processes = state.processes;
  const ids = processes.ids;
  let lastDifference = "";
  try {
    await waitFor(async () => {
      const before = await Promise.all(ids.map((id) => processes.status(id, 2000)));
      const applied = new Set(before.map((s) => s === null ? -1 : s.applied_index));
      const commits = new Set(before.map((s) => s === null ? -1 : s.commit_index));
      if (applied.size !== 1 || commits.size !== 1 || applied.has(-1)) {
        lastDifference = `statuses ${JSON.stringify(before)}`;
        return false;
      }
      const views = await Promise.all(ids.map(async (id) => {
        const values: (string | null)[] = [];
        for (const key of keys) {
          const result = await processes.request(
            id,
            "GET",
            `/v1/data/${encodeURIComponent(key)}?consistency=stale`,
            undefined,
            { timeoutMs: 2000, headers: state.headers },
          );
          const body = result.json as Record<string, unknown> | null;
          if (result.status !== 200 && result.status !== 404) {
            // Not an answer about the key (refused, overloaded): no view to compare.
            lastDifference = `${id}: ${result.status} ${result.text.slice(0, 200)}`;
            return null;
          }
          values.push(result.status === 200 && typeof body?.v === "string" ? body.v : null);
        }
        return values;
      }));
      if (views.includes(null)) return false;
      const after = await Promise.all(ids.map((id) => processes.status(id, 2000)));
      if (after.some((s, i) => s === null || s.applied_index !== before[i]?.applied_index)) {
        return false; // Something was applied meanwhile: compare again.
      }
      const first = JSON.stringify(views[0]);
      const differing = views.findIndex((view) => JSON.stringify(view) !== first);
      if (differing !== -1) {
        lastDifference = `${ids[0]} has ${first}, ${ids[differing]} has ${
          JSON.stringify(views[differing])
        } at applied index ${[...applied][0]}`;
        return false;
      }
      return true;
    }, { deadlineMs: 30_000, intervalMs: 200, message: "every node to apply the same state" });
    return true;
  } catch (error) {
    state.anomalies.push(
      `the replicas did not converge within 30 s: ${lastDifference || (error as Error).message}`,
    );
    return false;
  }
}

/**
 * The direct lost-write check: the final value of each key must be the effect of a write that
 * could have been the last one, i.e. one that no acknowledged write strictly follows; if no
 * write was acknowledged, the key may also be absent.
 */
export function findLostWrites(
  history: readonly Operation[],
  finals: ReadonlyMap<string, string | null>,
): LostWrite[] {
  const lost: LostWrite[] = [];
  for (const [key, finalValue] of finals) {
    const writes = history.filter((op) => op.key === key && op.kind !== "get");
    const acked = writes.filter((op) => op.return !== null);
    const candidates = writes.filter((op) =>
      !acked.some((later) => op.return !== null && later.call > op.return)
    );
    const expected = candidates.map((op) =>
      op.kind === "put" || op.kind === "cas" ? op.value : null
    );
    if (acked.length === 0) expected.push(null);
    if (expected.includes(finalValue)) continue;
    const last = [...acked].sort((a, b) => (b.return ?? 0) - (a.return ?? 0))[0];
    lost.push({
      key,
      finalValue,
      expected: [...new Set(expected)],
      reason: last === undefined
        ? `no write of this key was acknowledged, yet it reads ${JSON.stringify(finalValue)}`
        : `the last acknowledged write was ${last.kind}(${
          last.kind === "put" || last.kind === "cas" ? JSON.stringify(last.value) : ""
        }) by client ${last.client}, yet the key reads ${JSON.stringify(finalValue)}`,
    });
  }
  return lost;
}

/**
 * Checks that the log indexes of acknowledged writes are distinct and follow real time: a write
 * acknowledged before another was sent must have the lower index.
 */
export function checkIndexOrder(acked: readonly { op: Operation; index: number }[]): string[] {
  const problems: string[] = [];
  const byIndex = new Map<number, Operation>();
  for (const { op, index } of acked) {
    const other = byIndex.get(index);
    if (other !== undefined) {
      problems.push(
        `two acknowledged writes got log index ${index}: ${_describeOp(other)} and ${
          _describeOp(op)
        }`,
      );
    }
    byIndex.set(index, op);
  }
  const byCall = [...acked].sort((a, b) => a.op.call - b.op.call);
  const byReturn = [...acked].sort((a, b) => (a.op.return ?? 0) - (b.op.return ?? 0));
  let done = 0;
  let highest: { op: Operation; index: number } | null = null;
  for (const write of byCall) {
    while (done < byReturn.length && (byReturn[done]?.op.return ?? Infinity) < write.op.call) {
      const finished = byReturn[done++];
      if (finished !== undefined && (highest === null || finished.index > highest.index)) {
        highest = finished;
      }
    }
    if (highest !== null && write.index <= highest.index && problems.length < 20) {
      problems.push(
        `${_describeOp(write.op)} got index ${write.index} although ${
          _describeOp(highest.op)
        } had been acknowledged at index ${highest.index} before it was sent`,
      );
    }
  }
  return problems;
}

function _describeOp(op: Operation): string {
  const value = op.kind === "put" || op.kind === "cas" ? `, ${JSON.stringify(op.value)}` : "";
  return `${op.kind}(${JSON.stringify(op.key)}${value}) by client ${op.client} [${
    op.call.toFixed(1)
  } → ${op.return === null ? "?" : op.return.toFixed(1)}]`;
}

/** What {@linkcode checkWorkload} found in a workload's history. */
export interface WorkloadCheck {
  /** The linearizability check's result. */
  linearizability: CheckResult;
  /** Keys whose final value no write that could be last explains. */
  lostWrites: LostWrite[];
  /**
   * Reads of values written by puts that definitely failed, and acknowledged writes whose log
   * indexes repeat or go against real time.
   */
  problems: string[];
  /** Whether the log indexes of the acknowledged writes were distinct and in real-time order. */
  indexOrderOk: boolean;
  /** Operation counts over all kinds. */
  total: OpCounts;
  /** Summary lines: `ops: ...`, `log indexes ...`, `linearizable: ...`, `lost ...`. */
  summary: string[];
  /** On failure: the failing key's timeline and the lost writes' timelines; else empty. */
  details: string[];
}

/**
 * Checks a workload's history: linearizability (within `timeoutMs`), lost acknowledged writes
 * against `finals` (see {@linkcode findLostWrites}), reads of definitely failed puts, and the
 * order of the acknowledged writes' log indexes (see {@linkcode checkIndexOrder}).
 *
 * @param state The workload.
 * @param finals Each key's final value, from {@linkcode finalReads}.
 * @param timeoutMs The linearizability check's time budget, in milliseconds.
 * @returns What was found, with summary lines.
 */
export function checkWorkload(
  state: Workload,
  finals: ReadonlyMap<string, string | null>,
  timeoutMs: number,
): WorkloadCheck {
  const { history, counts } = state;
  const problems: string[] = [];
  const seenFailed = new Set<string>();
  for (const op of history) {
    if (op.kind !== "get" || op.value === null || seenFailed.has(op.value)) continue;
    const failure = state.failedPuts.get(op.value);
    if (failure === undefined) continue;
    seenFailed.add(op.value);
    problems.push(
      `a read saw ${JSON.stringify(op.value)}, written by a put that definitely failed: ${failure}`,
    );
  }
  const orderProblems = checkIndexOrder(state.acked);
  problems.push(...orderProblems);
  const linearizability = checkLinearizability(history, { timeoutMs });
  const lostWrites = findLostWrites(history, finals);
  const total = _zero();
  for (const kind of ["put", "get", "delete", "cas", "range"] as const) {
    for (const field of ["total", "ok", "unknown", "failed", "quota", "noSpace"] as const) {
      total[field] += counts[kind][field];
    }
  }
  const linText = linearizability.ok === true
    ? `yes (${linearizability.operations} operations on ${linearizability.keys} keys checked, ${linearizability.dropped} unobserved unknown writes dropped)`
    : linearizability.ok === false
    ? `NO (key ${JSON.stringify(linearizability.key)})`
    : `unknown (${linearizability.reason})`;
  const leaseOk = history.filter((op) => state.leaseReads.has(op)).length;
  const kindText = (kind: OperationKind | "range") => {
    const c = counts[kind];
    return `${kind} ${c.total} (ok ${c.ok}${
      kind === "get" ? ` of which ${leaseOk} lease reads` : ""
    }, unknown ${c.unknown}, failed ${c.failed}${c.quota > 0 ? `, ${c.quota} past the quota` : ""}${
      c.noSpace > 0 ? `, ${c.noSpace} for full disks` : ""
    })`;
  };
  const summary = [
    `ops: ${total.total} total, ${total.ok} ok, ${total.unknown} unknown, ${total.failed} failed; ${
      kindText("put")
    }; ${kindText("cas")} (failed compare-and-sets count as reads); ${kindText("get")}; ${
      kindText("range")
    }; ${
      kindText("delete")
    }; ${state.retries.retried} writes sent again with their idempotency key, ${state.retries.replayed} answered as replays; ${state.modIndexOf.size} written values each seen at one mod_index`,
    `log indexes of ${state.acked.length} acknowledged writes: ${
      orderProblems.length === 0 ? "distinct and in real-time order" : "OUT OF ORDER"
    }`,
    `linearizable: ${linText}`,
    `lost acknowledged writes: ${lostWrites.length}`,
  ];
  const details: string[] = [];
  if (linearizability.ok !== true) details.push(`linearizability: ${linearizability.reason}`);
  if (linearizability.ok === false) {
    const ops = linearizability.operations;
    const leases = ops.flatMap((op, i) => state.leaseReads.has(op) ? [`#${i}`] : []);
    details.push(
      `history of ${JSON.stringify(linearizability.key)} (times in ms since the start; lease ` +
        `reads: ${leases.length === 0 ? "none" : leases.join(" ")}):`,
      describeHistory(_shift(ops, state.start)),
    );
  }
  for (const lost of lostWrites) {
    details.push(
      `lost write on ${JSON.stringify(lost.key)}: ${lost.reason}; expected one of ${
        JSON.stringify(lost.expected)
      }`,
      describeHistory(
        _shift(history.filter((op) => op.key === lost.key), state.start),
        { maxLines: 80 },
      ),
    );
  }
  return {
    linearizability,
    lostWrites,
    problems,
    indexOrderOk: orderProblems.length === 0,
    total,
    summary,
    details,
  };
}

function _report(
  state: _RunState,
  options: ChaosOptions,
  end: {
    finals: Map<string, string | null>;
    converged: boolean;
    keys: readonly string[];
    nodes: number;
    clientCount: number;
  },
): ChaosReport {
  const { history, counts, monitor } = state;
  const check = checkWorkload(state, end.finals, options.checkTimeoutMs ?? 60_000);
  const { linearizability, lostWrites, total } = check;
  const anomalies = [...state.anomalies, ...monitor.violations, ...check.problems];
  const faultTotal = FAULT_KINDS.reduce((n, kind) => n + (state.faults[kind] ?? 0), 0);
  const faultText = FAULT_KINDS.filter((kind) => (state.faults[kind] ?? 0) > 0).map((kind) => {
    const leader = state.faults[`${kind}-leader`] ?? 0;
    return `${kind} ${state.faults[kind]}${leader > 0 ? ` (leader ${leader})` : ""}`;
  }).join(", ");
  const elapsedMs = performance.now() - state.start;
  const [opsLine, indexLine, linLine, lostLine] = check.summary;
  const summary = [
    `seed ${options.seed}, ${end.nodes} nodes, ${end.clientCount} clients, ${end.keys.length} keys, ${
      (options.durationMs / 1000).toFixed(0)
    } s of faults, ${(elapsedMs / 1000).toFixed(1)} s in all, snapshot threshold ${
      options.snapshotThreshold ?? 500
    }${options.tls ? "; peer mutual TLS, HTTPS API, tokens (clients: write token)" : ""}`,
    opsLine ?? "",
    `faults: ${faultTotal} injected${faultText === "" ? "" : `: ${faultText}`}${
      state.externalKills > 0 ? `; ${state.externalKills} SIGKILLs from outside the run` : ""
    }`,
    `leader changes: ${monitor.changes} (highest term ${monitor.highestTerm}); one leader per term: ${
      monitor.violations.length === 0 ? "yes" : "NO"
    }`,
    indexLine ?? "",
    `replicas converged: ${end.converged ? "yes" : "NO"}`,
    linLine ?? "",
    lostLine ?? "",
    `anomalies: ${anomalies.length === 0 ? "none" : anomalies.length}`,
  ];
  const ok = linearizability.ok === true && lostWrites.length === 0 && anomalies.length === 0 &&
    end.converged && end.finals.size === end.keys.length;
  const details: string[] = [];
  if (!ok) {
    details.push(...check.details);
    for (const anomaly of anomalies) details.push(`anomaly: ${anomaly}`);
    details.push(state.chaos.processes.formatLogs(undefined, 200));
  }
  return {
    seed: options.seed,
    ok,
    summary,
    details: details.join("\n"),
    ops: { ...total, byKind: counts },
    faults: { ...state.faults },
    leaderChanges: monitor.changes,
    highestTerm: monitor.highestTerm,
    linearizability,
    lostWrites,
    anomalies,
    converged: end.converged,
    history,
    elapsedMs,
  };
}

/** Times relative to `origin`, for readable timelines. */
function _shift(ops: readonly Operation[], origin: number): Operation[] {
  return ops.map((op) => ({
    ...op,
    call: op.call - origin,
    return: op.return === null ? null : op.return - origin,
  }));
}
