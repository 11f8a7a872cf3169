/**
 * Throughput and latency benchmark of a fresh local 3-node raftkv cluster, optionally side by
 * side with a 3-member etcd cluster: `deno task bench`.
 *
 * ## Method
 *
 * - **Machine.** Everything runs on the one machine the script runs on: the three raftkv nodes
 *   (`deno run main.ts`, `--listen-host 127.0.0.1`, default timings: election timeout 1000 ms,
 *   heartbeat 100 ms, snapshot threshold 10000), the three etcd members (when etcd is installed;
 *   default settings, `--quota-backend-bytes` 8 GiB) and the load generator, all over loopback.
 *   The script prints the CPU model, core count, memory, kernel and the load average before and
 *   after, since other work on the machine shifts the numbers; on a small machine the load
 *   generator and the members compete for the same cores, so the results are a comparison on
 *   this machine, not a capacity figure.
 * - **Durability.** fsync is on for both: a raftkv write is acknowledged once it is synced on a
 *   majority (raftkv has no way to turn that off); etcd runs with its default (fsync on). Data
 *   lives in fresh temporary directories, removed at the end.
 * - **Workloads.** Before measuring, 10000 keys `pre-00000`..`pre-09999` and 100 keys
 *   `rng/000`..`rng/099` with 100-byte values are written to each system, then a short unmeasured warm-up (writes and reads at 16
 *   connections) lets the JIT and the connection pools settle. A cell is one workload at one
 *   concurrency against one member for `--duration` seconds:
 *   - *writes*: each request writes a new, unique key with a 100-byte value (raftkv:
 *     `POST /v1/data`; etcd: `POST /v3/kv/put` through its JSON gateway, base64 key and value);
 *   - *reads*: each request reads a random preloaded key, linearizably (raftkv:
 *     `GET /v1/data/<key>`, ReadIndex; etcd: `POST /v3/kv/range`, its default linearizable read);
 *   - *ranges*: each request reads the 100 keys preloaded under `rng/` (100-byte values) with
 *     one linearizable range read (raftkv: `GET /v1/data?prefix=rng/`; etcd: `POST /v3/kv/range`
 *     with `range_end` `rng0`);
 *   - *cas*: each request is a compare-and-set that creates a new, unique key with a 100-byte
 *     value only if it does not exist (raftkv: `PUT /v1/data/<key>?cas=0`; etcd: `POST
 *     /v3/kv/txn` comparing the key's `create_revision` with 0, then putting it), so every one
 *     succeeds and each is a condition checked and a write committed;
 *   - against the *leader*, or against a *follower*: writes are forwarded to the leader (raftkv
 *     over its HTTP/2 forwarder; etcd forwards proposals over its peer links); linearizable
 *     reads are served by the follower after it asked the leader for the read index (both
 *     systems: one ReadIndex message over the peer links per round of reads).
 *   - *watch fan-out* (after the matrix; `--watchers`, default 1000): that many watchers of one
 *     prefix spread over the members (raftkv: `GET /v1/watch`, Server-Sent Events; etcd: its
 *     gateway's streaming `POST /v3/watch`), read by 2 watcher processes of their own over
 *     HTTP/1.1 connections they write and read themselves, while 4 writers in this process write
 *     under the prefix on the leader for `--duration`; events delivered per second and the delay
 *     from each write's acknowledgement to each delivery, p50 and p99, across the processes'
 *     related clocks (see `bench_watch.ts`). The cell is bounded: past its limits it is reported
 *     as failed, its processes are killed, and the benchmark goes on.
 * - **Load generator.** `wrk` when it is installed (one thread, `-c N` keep-alive connections,
 *   `--latency`, `--timeout` beyond the cell so no latency is dropped, `scripts/wrk/bench.lua`
 *   builds the requests and prints the percentiles in `done()`); otherwise a built-in one: N
 *   concurrent loops in this process, each sending one request at a time with `fetch` over
 *   HTTP/1.1 keep-alive and recording every latency. Both are closed-loop: a connection sends
 *   its next request when the previous one is answered. The output says which one ran.
 * - **Measured per cell.** Throughput (completed requests / second), p50, p99 and p99.9
 *   latency, errors (responses outside 2xx plus socket errors and timeouts), and per member the
 *   CPU time (utime + stime from `/proc/<pid>/stat`, as a percentage of one core) and the peak
 *   RSS (`VmHWM` from `/proc/<pid>/status`, reset at the start of each cell through
 *   `/proc/<pid>/clear_refs`; where the reset is not allowed, the highest `VmRSS` sampled every
 *   200 ms). The leader is listed first.
 * - **Alternation.** Cells run in the order workload, target, concurrency; for each, the raftkv
 *   cell and the etcd cell run back to back, and which of the two goes first swaps from run to
 *   run, so slow drifts of machine noise hit both systems alike.
 * - **Repetitions.** `--runs N` repeats the whole matrix on the same clusters (writes keep
 *   adding keys) and reports, per cell, the median of the throughputs and of each percentile
 *   over the runs, the sum of the errors and the highest peak RSS.
 * - **TLS** (`--tls`). A second cluster of each system, started beside the first and measured
 *   on the same cells right after it: raftkv with every security setting on (peer mutual TLS,
 *   the API over HTTPS, bearer tokens from a tokens file; the load sends a write token in an
 *   `Authorization` header, so every request is authenticated and checked against its role);
 *   etcd with TLS on its client and peer URLs and peer client certificates (no etcd
 *   authentication: it would add a token round trip per session, not per request). The
 *   certificates are EC P-256 from one throwaway CA (`testing/certs.ts`). `wrk` does not verify
 *   the server's certificate (the built-in generator does, with the CA); both keep their
 *   connections alive, so a cell pays one handshake per connection and then the per-record cost.
 *   A table of TLS/plaintext ratios per system and cell follows the main one.
 * - **Bounds.** Each cell stops after its duration, or after 100000 requests per second of
 *   duration, whichever comes first; a stuck load generator is killed 60 s after its cell
 *   should have ended. Everything started is stopped at the end, also on failure and Ctrl-C.
 *
 * ```sh
 * deno task bench                                  # the whole matrix, 10 s per cell
 * deno task bench --runs 3 --json bench.json       # medians of 3 runs, and the raw data
 * deno task bench --tls --target leader --connections 64   # what TLS costs, 64 connections
 * deno task bench --only writes --target leader --connections 64 --no-etcd --cpu-prof prof/
 *     # CPU profile of the leader under writes (the profile covers the node's whole life:
 *     # preload, warm-up and the cells; the top functions by self time are printed)
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePorts, type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { type Certificates, makeCertificates } from "../testing/certs.ts";
import {
  BENCH_USAGE,
  type BenchOptions,
  type BenchRequest,
  casRequest,
  type CellResult,
  etcdGateway,
  formatMs,
  formatRate,
  type LoadGenerator,
  type LoadResult,
  loadResultFromLatencies,
  type NodeUsage,
  type Op,
  parseBenchArgs,
  parseEtcdVersion,
  parseLoadAvg,
  parseProcStatCpuTicks,
  parseProcStatusKb,
  parseWrkResult,
  PRELOAD_KEYS,
  preloadKey,
  profileTable,
  RANGE_KEYS,
  rangeKey,
  rangeRequest,
  readRequest,
  resourceTable,
  resultsTable,
  summarizeCells,
  summarizeCpuProfile,
  systemLabel,
  type SystemName,
  type Target,
  tlsTable,
  UsageError,
  VALUE,
  writeRequest,
} from "./bench_lib.ts";
import {
  measureWatchFanout,
  watchFanoutLine,
  type WatchFanoutResult,
  watchFanoutTable,
} from "./bench_watch.ts";

const _WRK_SCRIPT = fileURLToPath(new URL("./wrk/bench.lua", import.meta.url));
const _REQUESTS_PER_SEC_BOUND = 100_000;
const _WRK_KILL_GRACE_MS = 60_000;
const _REQUEST_TIMEOUT_MS = 30_000;

// ---- cleanup -----------------------------------------------------------------------------------

const _cleanups = new Set<() => Promise<void>>();
let _interrupted = false;

/**
 * Registers a cleanup; returns a function that runs it (once: later calls share the first call's
 * promise) and unregisters it when it is done.
 */
function _onCleanup(cleanup: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | null = null;
  const run = () =>
    running ??= cleanup().finally(() => {
      _cleanups.delete(run);
    });
  _cleanups.add(run);
  return run;
}

/** Runs every registered cleanup, newest first (load generators, then etcd, then raftkv). */
async function _cleanupAll(): Promise<void> {
  for (const cleanup of [..._cleanups].reverse()) {
    await cleanup().catch((error) => console.error(`cleanup failed: ${error}`));
  }
}

function _sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- the machine -------------------------------------------------------------------------------

interface _Machine {
  cpu: string;
  cores: number;
  memGiB: number;
  kernel: string;
  deno: string;
  /** The commit of the code measured, and whether src/ or main.ts differ from it. */
  code: string;
}

/** The commit measured, such as `a48e87c` or `a48e87c + 3 uncommitted files in src/, main.ts`. */
export async function describeCode(): Promise<string> {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const head = (await _commandOutput("git", ["-C", root, "rev-parse", "--short", "HEAD"]))?.trim();
  if (head === undefined || head === "" || head.includes("fatal")) return "unknown (no git)";
  const dirty = (await _commandOutput("git", [
    "-C",
    root,
    "status",
    "--porcelain",
    "--",
    "src",
    "main.ts",
  ]))?.split("\n").filter((line) => line.trim() !== "").length ?? 0;
  return dirty === 0 ? head : `${head} + ${dirty} uncommitted files in src/, main.ts`;
}

async function _machine(): Promise<_Machine> {
  const read = (path: string) => {
    try {
      return Deno.readTextFileSync(path);
    } catch {
      return "";
    }
  };
  const cpu = /^model name\s*:\s*(.+)$/m.exec(read("/proc/cpuinfo"))?.[1]?.trim() ?? "unknown";
  const memKb = parseProcStatusKb(read("/proc/meminfo"), "MemTotal") ?? 0;
  return {
    cpu,
    cores: navigator.hardwareConcurrency,
    memGiB: Math.round((memKb / 1024 / 1024) * 10) / 10,
    kernel: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    code: await describeCode(),
  };
}

function _loadAvg(): [number, number, number] | null {
  try {
    return parseLoadAvg(Deno.readTextFileSync("/proc/loadavg"));
  } catch {
    return null;
  }
}

async function _commandOutput(cmd: string, args: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    return new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  } catch {
    return null;
  }
}

async function _clockTicks(): Promise<number> {
  const text = await _commandOutput("getconf", ["CLK_TCK"]);
  const n = Number(text?.trim());
  return Number.isInteger(n) && n > 0 ? n : 100;
}

// ---- resource probes ---------------------------------------------------------------------------

interface _Member {
  id: string;
  pid: number;
  role: "leader" | "follower";
}

/** CPU time and peak RSS of some processes over an interval. */
class _UsageProbe {
  #members: _Member[];
  #ticksPerSec: number;
  #startTicks: number[];
  #hwmReset: boolean[];
  #maxRss: number[];
  #started = performance.now();
  #timer: ReturnType<typeof setInterval>;

  constructor(members: _Member[], ticksPerSec: number) {
    this.#members = members;
    this.#ticksPerSec = ticksPerSec;
    this.#hwmReset = members.map((m) => {
      try {
        Deno.writeTextFileSync(`/proc/${m.pid}/clear_refs`, "5");
        return true;
      } catch {
        return false;
      }
    });
    this.#startTicks = members.map((m) => _cpuTicks(m.pid) ?? NaN);
    this.#maxRss = members.map(() => 0);
    this.#sample();
    this.#timer = setInterval(() => this.#sample(), 200);
  }

  #sample(): void {
    this.#members.forEach((m, i) => {
      const rss = _statusKb(m.pid, "VmRSS");
      if (rss !== null) this.#maxRss[i] = Math.max(this.#maxRss[i]!, rss);
    });
  }

  stop(): NodeUsage[] {
    clearInterval(this.#timer);
    this.#sample();
    const wallSec = (performance.now() - this.#started) / 1000;
    return this.#members.map((m, i) => {
      const ticks = _cpuTicks(m.pid);
      const cpuSec = ticks === null ? NaN : (ticks - this.#startTicks[i]!) / this.#ticksPerSec;
      const hwm = this.#hwmReset[i] ? _statusKb(m.pid, "VmHWM") : null;
      return {
        id: m.id,
        role: m.role,
        cpuSec,
        cpuPct: (100 * cpuSec) / wallSec,
        peakRssKb: hwm ?? (this.#maxRss[i]! > 0 ? this.#maxRss[i]! : null),
      };
    });
  }
}

function _cpuTicks(pid: number): number | null {
  try {
    return parseProcStatCpuTicks(Deno.readTextFileSync(`/proc/${pid}/stat`));
  } catch {
    return null;
  }
}

function _statusKb(pid: number, field: string): number | null {
  try {
    return parseProcStatusKb(Deno.readTextFileSync(`/proc/${pid}/status`), field);
  } catch {
    return null;
  }
}

// ---- the systems -------------------------------------------------------------------------------

interface _Roles {
  leader: string;
  followers: string[];
}

/** How the benchmark's own requests reach a system: a client trusting its CA, headers. */
interface _Access {
  /** An HTTP client trusting the system's CA (TLS), or `undefined` for fetch's own. */
  client: Deno.HttpClient | undefined;
  /** Headers every request carries (a bearer token). */
  headers: Record<string, string>;
  /** The PEM of the system's CA (TLS), for the watch cell's own connections. */
  ca: string | undefined;
}

const _PLAIN: _Access = { client: undefined, headers: {}, ca: undefined };

/** `raftkv`, `etcd`, `raftkv+TLS`, `etcd+TLS`. */
function _label(sys: { name: SystemName; tls: boolean }): string {
  return systemLabel({ system: sys.name, tls: sys.tls });
}

interface _System extends _Access {
  name: SystemName;
  /** Whether this cluster runs with TLS (see `--tls`). */
  tls: boolean;
  /** The gateway prefix (etcd) for request building. */
  gateway: string;
  roles(): Promise<_Roles>;
  url(id: string): string;
  pid(id: string): number | null;
  /** Describes each member that exited, with its last output; empty while all run. */
  deaths(): string[];
  close(): Promise<void>;
}

class _Raftkv implements _System {
  readonly name = "raftkv";
  readonly gateway = "";
  readonly cluster: ProcessCluster;
  readonly tls: boolean;
  readonly client: Deno.HttpClient | undefined;
  readonly headers: Record<string, string>;
  readonly ca: string | undefined;

  constructor(cluster: ProcessCluster, access: _Access = _PLAIN) {
    this.cluster = cluster;
    this.tls = access.client !== undefined;
    this.client = access.client;
    this.headers = access.headers;
    this.ca = access.ca;
  }

  async roles(): Promise<_Roles> {
    const leader = await this.cluster.waitForLeader(30_000);
    return { leader, followers: this.cluster.ids.filter((id) => id !== leader) };
  }

  url(id: string): string {
    return this.cluster.api(id);
  }

  pid(id: string): number | null {
    return this.cluster.node(id).pid;
  }

  deaths(): string[] {
    return this.cluster.ids.filter((id) => !this.cluster.isRunning(id)).map((id) => {
      const status = this.cluster.exitStatus(id);
      const how = status === null
        ? "is not running"
        : status.signal !== null
        ? `was killed by ${status.signal}`
        : `exited with code ${status.code}`;
      return `${_label(this)} ${id} ${how}\n${this.cluster.formatLogs([id], 40)}`;
    });
  }

  /** Stops every node with SIGTERM (so CPU profiles get written), then cleans up. */
  async close(): Promise<void> {
    await Promise.all(
      this.cluster.liveIds().map((id) => this.cluster.stop(id, 60_000).catch(() => {})),
    );
    await this.cluster.close();
    this.client?.close();
  }
}

interface _EtcdMember {
  id: string;
  clientUrl: string;
  child: Deno.ChildProcess;
  lines: string[];
  exit: Deno.CommandStatus | null;
}

class _Etcd implements _System {
  readonly name = "etcd";
  readonly gateway: string;
  readonly version: string;
  readonly tls: boolean;
  readonly client: Deno.HttpClient | undefined;
  readonly headers: Record<string, string> = {};
  readonly ca: string | undefined;
  #members: _EtcdMember[];
  #root: string;

  private constructor(
    version: string,
    root: string,
    members: _EtcdMember[],
    client: Deno.HttpClient | undefined,
    ca: string | undefined,
  ) {
    this.ca = ca;
    this.version = version;
    this.gateway = etcdGateway(version);
    this.#root = root;
    this.#members = members;
    this.tls = client !== undefined;
    this.client = client;
  }

  /**
   * Starts a 3-member cluster on free loopback ports and waits for a leader. With `certs`
   * (holding `etcd-1` to `etcd-3`), client and peer URLs are https and peers present
   * certificates.
   */
  static async start(version: string, certs?: Certificates): Promise<_Etcd> {
    const root = await Deno.makeTempDir({ prefix: "raftkv-bench-etcd-" });
    const ports = freePorts(6);
    const ids = ["etcd-1", "etcd-2", "etcd-3"];
    const scheme = certs === undefined ? "http" : "https";
    const peer = (i: number) => `${scheme}://127.0.0.1:${ports[3 + i]}`;
    const client = (i: number) => `${scheme}://127.0.0.1:${ports[i]}`;
    const initial = ids.map((id, i) => `${id}=${peer(i)}`).join(",");
    const token = `raftkv-bench-${Date.now()}`;
    const members: _EtcdMember[] = ids.map((id, i) => {
      const args = [
        "--name",
        id,
        "--data-dir",
        join(root, id),
        "--listen-client-urls",
        client(i),
        "--advertise-client-urls",
        client(i),
        "--listen-peer-urls",
        peer(i),
        "--initial-advertise-peer-urls",
        peer(i),
        "--initial-cluster",
        initial,
        "--initial-cluster-token",
        token,
        "--initial-cluster-state",
        "new",
        "--quota-backend-bytes",
        String(8 * 1024 ** 3),
        "--logger",
        "zap",
        "--log-level",
        "warn",
        ...(certs === undefined ? [] : [
          "--cert-file",
          certs.node(id).cert,
          "--key-file",
          certs.node(id).key,
          "--peer-cert-file",
          certs.node(id).cert,
          "--peer-key-file",
          certs.node(id).key,
          "--peer-trusted-ca-file",
          certs.ca,
          "--peer-client-cert-auth",
        ]),
      ];
      const child = new Deno.Command("etcd", {
        args,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const member: _EtcdMember = { id, clientUrl: client(i), child, lines: [], exit: null };
      child.status.then((status) => member.exit = status);
      _pumpLines(child.stdout, member.lines);
      _pumpLines(child.stderr, member.lines);
      return member;
    });
    const ca = certs === undefined ? undefined : await Deno.readTextFile(certs.ca);
    const etcd = new _Etcd(
      version,
      root,
      members,
      ca === undefined ? undefined : Deno.createHttpClient({ caCerts: [ca] }),
      ca,
    );
    try {
      await etcd.roles(30_000);
    } catch (error) {
      const logs = members.map((m) => `--- ${m.id} ---\n${m.lines.slice(-8).join("\n")}`);
      await etcd.close();
      throw new Error(`${(error as Error).message}\n${logs.join("\n")}`, { cause: error });
    }
    return etcd;
  }

  async roles(deadlineMs = 30_000): Promise<_Roles> {
    const found: { roles: _Roles | null } = { roles: null };
    await waitFor(async () => {
      const statuses = await Promise.all(this.#members.map(async (m) => {
        const res = await _post(
          `${m.clientUrl}${this.gateway}/maintenance/status`,
          "{}",
          2000,
          this,
        );
        if (res.status !== 200) return null;
        const json = JSON.parse(res.text) as { header?: { member_id?: string }; leader?: string };
        return { id: m.id, self: json.header?.member_id, leader: json.leader };
      }));
      const leaders = new Set(statuses.map((s) => s?.leader));
      const [leaderId] = leaders;
      if (leaders.size !== 1 || leaderId === undefined || leaderId === "0") return false;
      const leader = statuses.find((s) => s?.self === leaderId);
      if (leader === undefined || leader === null) return false;
      found.roles = {
        leader: leader.id,
        followers: this.#members.map((m) => m.id).filter((id) => id !== leader.id),
      };
      return true;
    }, { deadlineMs, intervalMs: 100, message: "the etcd members to agree on a leader" });
    return found.roles!;
  }

  url(id: string): string {
    return this.#member(id).clientUrl;
  }

  pid(id: string): number | null {
    return this.#member(id).child.pid;
  }

  deaths(): string[] {
    return this.#members.filter((m) => m.exit !== null).map((m) =>
      `${_label(this)} ${m.id} exited (code ${m.exit?.code}, signal ${m.exit?.signal})\n${
        m.lines.slice(-40).join("\n")
      }`
    );
  }

  async close(): Promise<void> {
    await Promise.all(this.#members.map((m) => _stopChild(m.child, 10_000)));
    await Deno.remove(this.#root, { recursive: true }).catch(() => {});
    this.client?.close();
  }

  #member(id: string): _EtcdMember {
    const member = this.#members.find((m) => m.id === id);
    if (member === undefined) throw new Error(`no etcd member ${id}`);
    return member;
  }
}

async function _pumpLines(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
  try {
    let pending = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      const parts = pending.split("\n");
      pending = parts.pop() ?? "";
      lines.push(...parts);
      if (lines.length > 400) lines.splice(0, lines.length - 200);
    }
    if (pending !== "") lines.push(pending);
  } catch {
    // The process went away.
  }
}

async function _stopChild(child: Deno.ChildProcess, graceMs: number): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const exited = await Promise.race([
    child.status.then(() => true),
    new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), graceMs)),
  ]);
  clearTimeout(timer);
  if (!exited) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
  }
}

// ---- HTTP --------------------------------------------------------------------------------------

interface _Response {
  status: number;
  text: string;
}

async function _send(
  base: string,
  req: BenchRequest,
  timeoutMs: number,
  access: _Access,
): Promise<_Response> {
  const init: RequestInit & { client?: Deno.HttpClient } = {
    method: req.method,
    signal: AbortSignal.timeout(timeoutMs),
    headers: access.headers,
  };
  if (access.client !== undefined) init.client = access.client;
  if (req.body !== undefined) {
    init.body = req.body;
    init.headers = { ...access.headers, "content-type": "application/json" };
  }
  const res = await fetch(`${base}${req.path}`, init);
  return { status: res.status, text: await res.text() };
}

function _post(url: string, body: string, timeoutMs: number, access: _Access): Promise<_Response> {
  const parsed = new URL(url);
  return _send(parsed.origin, { method: "POST", path: parsed.pathname, body }, timeoutMs, access);
}

function _request(sys: _System, op: Op, key: string): BenchRequest {
  switch (op) {
    case "writes":
      return writeRequest(sys.name, key, sys.gateway);
    case "reads":
      return readRequest(sys.name, key, sys.gateway);
    case "ranges":
      return rangeRequest(sys.name, sys.gateway);
    case "cas":
      return casRequest(sys.name, key, sys.gateway);
  }
}

/** Writes the preloaded keys with 32 concurrent writers; each key is retried a few times. */
async function _preload(sys: _System, url: string): Promise<void> {
  let next = 0;
  const failures: string[] = [];
  const worker = async () => {
    while (next < PRELOAD_KEYS && failures.length < 10) {
      const key = preloadKey(next++);
      for (let attempt = 1;; attempt++) {
        try {
          const res = await _send(url, writeRequest(sys.name, key, sys.gateway), 10_000, sys);
          if (res.status === 200) break;
          if (attempt >= 5) failures.push(`${key}: ${res.status} ${res.text.slice(0, 200)}`);
        } catch (error) {
          if (attempt >= 5) failures.push(`${key}: ${(error as Error).message}`);
        }
        if (attempt >= 5) break;
        await _sleep(100 * attempt);
      }
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  for (let i = 0; i < RANGE_KEYS && failures.length === 0; i++) {
    const res = await _send(url, writeRequest(sys.name, rangeKey(i), sys.gateway), 10_000, sys);
    if (res.status !== 200) {
      failures.push(`${rangeKey(i)}: ${res.status} ${res.text.slice(0, 200)}`);
    }
  }
  if (failures.length > 0) {
    throw new Error(`preloading ${_label(sys)} failed:\n${failures.join("\n")}`);
  }
  // A compare-and-set of a new key succeeds, so the cas cells measure conditions that hold.
  const cas = await _send(url, casRequest(sys.name, "cas-probe", sys.gateway), 10_000, sys);
  const held = sys.name === "raftkv"
    ? cas.status === 200
    : cas.status === 200 && (JSON.parse(cas.text) as { succeeded?: boolean }).succeeded === true;
  if (!held) {
    throw new Error(`${sys.name}: the probe compare-and-set gave ${cas.status} ${cas.text}`);
  }
  // A range read finds every range key, so the range cells read 100 keys each.
  const listed = await _send(url, rangeRequest(sys.name, sys.gateway), 10_000, sys);
  const count = listed.status !== 200
    ? -1
    : sys.name === "raftkv"
    ? (JSON.parse(listed.text) as { items?: unknown[] }).items?.length
    : Number((JSON.parse(listed.text) as { count?: string }).count);
  if (count !== RANGE_KEYS) {
    throw new Error(
      `${sys.name}: the range read after the preload gave ${listed.status} ${
        listed.text.slice(0, 300)
      }`,
    );
  }
  // Check that a linearizable read finds a preloaded key, so the read cells measure real hits.
  const probe = preloadKey(PRELOAD_KEYS - 1);
  const res = await _send(url, readRequest(sys.name, probe, sys.gateway), 10_000, sys);
  const found = sys.name === "raftkv"
    ? res.status === 200 && (JSON.parse(res.text) as { v?: string }).v === VALUE
    : res.status === 200 &&
      (JSON.parse(res.text) as { kvs?: { value?: string }[] }).kvs?.[0]?.value === btoa(VALUE);
  if (!found) {
    throw new Error(
      `${_label(sys)}: reading ${probe} after the preload gave ${res.status} ${res.text}`,
    );
  }
}

// ---- load generators ---------------------------------------------------------------------------

interface _LoadSpec {
  sys: _System;
  op: Op;
  url: string;
  connections: number;
  durationSec: number;
  /** Prefix of the written keys, unique per cell. */
  prefix: string;
}

async function _runWrk(spec: _LoadSpec): Promise<LoadResult> {
  const limit = _REQUESTS_PER_SEC_BOUND * spec.durationSec;
  const mode = `${spec.sys.name}-${
    { writes: "write", reads: "read", ranges: "range", cas: "cas" }[spec.op]
  }`;
  const args = [
    "-t1",
    // The token (wrk sends -H headers only through the script, which copies Authorization).
    ...Object.entries(spec.sys.headers).flatMap(([name, value]) => ["-H", `${name}: ${value}`]),
    `-c${spec.connections}`,
    `-d${spec.durationSec}s`,
    "--latency",
    "--timeout",
    `${spec.durationSec + 30}s`,
    "-s",
    _WRK_SCRIPT,
    spec.url,
    "--",
    mode,
    spec.prefix,
    String(PRELOAD_KEYS),
    String(limit),
    spec.sys.gateway || "/v3",
  ];
  const child = new Deno.Command("wrk", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const kill = _onCleanup(() => _stopChild(child, 1000));
  const timer = setTimeout(() => {
    console.error(`wrk did not finish in time; killing it`);
    kill();
  }, spec.durationSec * 1000 + _WRK_KILL_GRACE_MS);
  try {
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      throw new Error(
        `wrk ${args.join(" ")} failed (${out.code}):\n${stdout}\n${
          new TextDecoder().decode(out.stderr)
        }`,
      );
    }
    const result = parseWrkResult(stdout);
    if (result.requests >= limit) {
      console.error(`note: the cell hit its bound of ${limit} requests; req/s is understated`);
    }
    return result;
  } finally {
    clearTimeout(timer);
    _cleanups.delete(kill);
  }
}

async function _runBuiltin(spec: _LoadSpec): Promise<LoadResult> {
  const limit = _REQUESTS_PER_SEC_BOUND * spec.durationSec;
  const latencies: number[] = [];
  let issued = 0;
  let non2xx = 0;
  let socketErrors = 0;
  const started = performance.now();
  const deadline = started + spec.durationSec * 1000;
  const loop = async () => {
    while (performance.now() < deadline && issued < limit) {
      const n = issued++;
      const key = spec.op === "writes" || spec.op === "cas"
        ? `${spec.prefix}${n}`
        : preloadKey(Math.floor(Math.random() * PRELOAD_KEYS));
      const req = _request(spec.sys, spec.op, key);
      const t0 = performance.now();
      try {
        const res = await _send(spec.url, req, _REQUEST_TIMEOUT_MS, spec.sys);
        latencies.push(performance.now() - t0);
        if (res.status < 200 || res.status > 299) non2xx++;
      } catch {
        socketErrors++;
        await _sleep(10);
      }
    }
  };
  await Promise.all(Array.from({ length: spec.connections }, loop));
  const elapsedSec = (performance.now() - started) / 1000;
  return loadResultFromLatencies(latencies, elapsedSec, non2xx, socketErrors);
}

// ---- the benchmark -----------------------------------------------------------------------------

interface _Context {
  options: BenchOptions;
  loadgen: LoadGenerator;
  ticksPerSec: number;
}

async function _measureCell(
  ctx: _Context,
  sys: _System,
  op: Op,
  target: Target,
  connections: number,
  run: number,
): Promise<CellResult> {
  _checkAlive(sys);
  const roles = await sys.roles();
  const targetId = target === "leader" ? roles.leader : roles.followers[0];
  if (targetId === undefined) throw new Error(`${_label(sys)} has no follower`);
  const order = [roles.leader, ...roles.followers];
  const members: _Member[] = order.map((id) => ({
    id,
    pid: sys.pid(id) ?? -1,
    role: id === roles.leader ? "leader" : "follower",
  }));
  const spec: _LoadSpec = {
    sys,
    op,
    url: sys.url(targetId),
    connections,
    durationSec: ctx.options.durationSec,
    prefix: `w${run}-${target}-c${connections}-`,
  };
  const probe = new _UsageProbe(members, ctx.ticksPerSec);
  let load: LoadResult;
  let nodes: NodeUsage[];
  try {
    load = ctx.loadgen === "wrk" ? await _runWrk(spec) : await _runBuiltin(spec);
  } finally {
    nodes = probe.stop();
  }
  _checkAlive(sys);
  const notes: string[] = [];
  const after = await sys.roles().catch(() => null);
  if (after === null) notes.push("no leader after the cell");
  else if (after.leader !== roles.leader) {
    notes.push(`leader changed from ${roles.leader} to ${after.leader}`);
  }
  return { system: sys.name, tls: sys.tls, op, target, connections, run, load, nodes, notes };
}

/** Stops the benchmark when a member died: later cells would measure a different cluster. */
function _checkAlive(sys: _System): void {
  const deaths = sys.deaths();
  if (deaths.length > 0) {
    throw new Error(
      `a ${
        _label(sys)
      } member is gone; stopping, as the remaining cells would not be comparable:\n${
        deaths.join("\n")
      }`,
    );
  }
}

function _cellLine(cell: CellResult, runs: number): string {
  const l = cell.load;
  const cpu = cell.nodes.map((n) => `${Number.isFinite(n.cpuPct) ? n.cpuPct.toFixed(0) : "-"}%`);
  const rss = cell.nodes.map((n) => n.peakRssKb === null ? "-" : (n.peakRssKb / 1024).toFixed(0));
  return `run ${cell.run}/${runs} ${systemLabel(cell).padEnd(10)} ${cell.op.padEnd(6)} ${
    cell.target.padEnd(8)
  } c=${String(cell.connections).padEnd(3)} ${formatRate(l.rps).padStart(7)} req/s  p50 ${
    formatMs(l.p50Ms)
  }  p99 ${formatMs(l.p99Ms)}  p99.9 ${formatMs(l.p999Ms)} ms  errors ${l.errors}  CPU L/F/F ${
    cpu.join(" ")
  }  RSS MiB ${rss.join(" ")}${cell.notes.length > 0 ? `  (${cell.notes.join("; ")})` : ""}`;
}

async function _warmUp(ctx: _Context, sys: _System): Promise<void> {
  const roles = await sys.roles();
  const durationSec = Math.min(3, ctx.options.durationSec);
  for (const op of ctx.options.ops) {
    const spec: _LoadSpec = {
      sys,
      op,
      url: sys.url(roles.leader),
      connections: 16,
      durationSec,
      prefix: "warmup-",
    };
    if (ctx.loadgen === "wrk") await _runWrk(spec);
    else await _runBuiltin(spec);
  }
}

/** Runs the benchmark; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  let options: BenchOptions;
  try {
    options = parseBenchArgs(args);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`bench: ${error.message}\n${BENCH_USAGE}`);
      return 2;
    }
    throw error;
  }
  if (options.help) {
    console.log(BENCH_USAGE);
    return 0;
  }

  const machine = await _machine();
  const loadBefore = _loadAvg();
  const wrkVersion = options.loadgen === "deno" ? null : await _commandOutput("wrk", ["-v"]);
  if (options.loadgen === "wrk" && wrkVersion === null) {
    console.error("bench: --loadgen wrk, but wrk is not installed (apt-get install wrk)");
    return 2;
  }
  const loadgen: LoadGenerator = wrkVersion === null ? "deno" : "wrk";
  const etcdVersion = options.etcd
    ? parseEtcdVersion((await _commandOutput("etcd", ["--version"])) ?? "")
    : null;
  const ctx: _Context = { options, loadgen, ticksPerSec: await _clockTicks() };
  if (_cpuTicks(Deno.pid) === null) {
    console.error(
      "bench: cannot read /proc/<pid>/stat (not Linux, or not run with --allow-all): " +
        "CPU and RSS columns will be empty",
    );
  }

  const wrkLine = wrkVersion?.split("\n")[0]?.trim() ?? "";
  console.log(`# raftkv benchmark`);
  console.log(
    `machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memGiB} GiB RAM, ${machine.kernel}, deno ${machine.deno}`,
  );
  console.log(`code: ${machine.code}`);
  console.log(`load average at start: ${loadBefore?.join(" ") ?? "unknown"}`);
  console.log(
    `load generator: ${
      loadgen === "wrk"
        ? `wrk (${wrkLine}), 1 thread, scripts/wrk/bench.lua`
        : "built-in (fetch over HTTP/1.1 keep-alive, one loop per connection)" +
          (options.loadgen === "auto" ? "; wrk is not installed" : "")
    }`,
  );
  console.log(
    `etcd: ${
      etcdVersion !== null
        ? `${etcdVersion}, JSON gateway ${etcdGateway(etcdVersion)}`
        : options.etcd
        ? "not installed; raftkv only"
        : "skipped (--no-etcd)"
    }`,
  );
  console.log(
    `cells: ${options.ops.join(", ")} x ${options.targets.join(", ")} x ${
      options.connections.join(", ")
    } connections, ${options.durationSec} s each, ${options.runs} run(s)${
      options.tls ? "; each system also with TLS (raftkv: peer mTLS, HTTPS API, tokens)" : ""
    }\n`,
  );

  const onSignal = () => {
    if (_interrupted) return;
    _interrupted = true;
    console.error("\ninterrupted: stopping everything");
    _cleanupAll().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const cells: CellResult[] = [];
  const watchCells: WatchFanoutResult[] = [];
  const watchFailures: string[] = [];
  let raftkv: _Raftkv | null = null;
  let profileOut: unknown = null;
  try {
    if (options.cpuProf !== undefined) await Deno.mkdir(options.cpuProf, { recursive: true });
    const cluster = await startCluster({
      size: 3,
      nodeFlags: ["--election-timeout", "1000", "--heartbeat", "100"],
      denoArgs: options.cpuProf === undefined
        ? ["--allow-all"]
        : ["--allow-all", "--cpu-prof", `--cpu-prof-dir=${options.cpuProf}`],
    });
    raftkv = new _Raftkv(cluster);
    const sysRaftkv = raftkv;
    _onCleanup(() => sysRaftkv.close());
    const systems: _System[] = [raftkv];
    const secure = options.tls ? await _makeSecurity() : null;
    if (secure !== null) {
      const tlsCluster = await startCluster({
        size: 3,
        nodeFlags: [
          "--election-timeout",
          "1000",
          "--heartbeat",
          "100",
          "--tokens-file",
          secure.tokensFile,
        ],
        tls: secure.certs,
        apiCerts: secure.certs,
        token: secure.token,
      });
      const ca = await Deno.readTextFile(secure.certs.ca);
      const sys = new _Raftkv(tlsCluster, {
        client: Deno.createHttpClient({ caCerts: [ca] }),
        headers: { authorization: `Bearer ${secure.token}` },
        ca,
      });
      _onCleanup(() => sys.close());
      systems.push(sys);
    }
    if (etcdVersion !== null) {
      const etcd = await _Etcd.start(etcdVersion);
      _onCleanup(() => etcd.close());
      systems.push(etcd);
      if (secure !== null) {
        const etcdTls = await _Etcd.start(etcdVersion, secure.certs);
        _onCleanup(() => etcdTls.close());
        systems.push(etcdTls);
      }
    }
    for (const sys of systems) {
      const roles = await sys.roles();
      const t0 = performance.now();
      await _preload(sys, sys.url(roles.leader));
      console.log(
        `${_label(sys)}: leader ${roles.leader}; preloaded ${PRELOAD_KEYS} keys in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s`,
      );
      await _warmUp(ctx, sys);
    }
    console.log("");

    for (let run = 1; run <= options.runs; run++) {
      const order = run % 2 === 1 ? systems : [...systems].reverse();
      for (const op of options.ops) {
        for (const target of options.targets) {
          for (const connections of options.connections) {
            for (const sys of order) {
              const cell = await _measureCell(ctx, sys, op, target, connections, run);
              cells.push(cell);
              console.log(_cellLine(cell, options.runs));
              await _sleep(1000);
            }
          }
        }
      }
    }

    // The watch fan-out cell (see bench_watch.ts), each system in turn, alternating per run.
    for (let run = 1; run <= options.runs && options.watchers > 0; run++) {
      const order = run % 2 === 1 ? systems : [...systems].reverse();
      for (const sys of order) {
        const roles = await sys.roles();
        let r: WatchFanoutResult;
        try {
          r = await measureWatchFanout(
            {
              system: sys.name,
              label: _label(sys),
              urls: [roles.leader, ...roles.followers].map((id) => sys.url(id)),
              leaderUrl: sys.url(roles.leader),
              gateway: sys.gateway,
              client: sys.client,
              headers: sys.headers,
              ca: sys.ca,
            },
            options.watchers,
            options.durationSec,
            run,
          );
        } catch (error) {
          // A failed cell (it never waits without a bound, see bench_watch.ts) is reported
          // and the benchmark goes on with the next one.
          const message = `watch fan-out ${_label(sys)}: failed: ${
            error instanceof Error ? error.message : error
          }`;
          console.log(message);
          watchFailures.push(message);
          _checkAlive(sys);
          continue;
        }
        watchCells.push(r);
        console.log(watchFanoutLine(r));
        _checkAlive(sys);
        await _sleep(1000);
      }
    }

    const leaderAtEnd = (await raftkv.roles().catch(() => null))?.leader ?? null;
    const leaderPid = leaderAtEnd === null ? null : raftkv.pid(leaderAtEnd);
    if (options.cpuProf !== undefined) {
      await raftkv.close();
      profileOut = await _reportProfile(options, leaderAtEnd, leaderPid);
    }
  } catch (error) {
    if (!_interrupted) {
      console.error(`bench failed: ${error instanceof Error ? error.stack : error}`);
    }
    if (cells.length + watchCells.length + watchFailures.length > 0) {
      _report(
        options,
        machine,
        loadBefore,
        loadgen,
        etcdVersion,
        cells,
        watchCells,
        watchFailures,
        null,
      );
    }
    await _cleanupAll();
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  await _cleanupAll();
  const report = _report(
    options,
    machine,
    loadBefore,
    loadgen,
    etcdVersion,
    cells,
    watchCells,
    watchFailures,
    profileOut,
  );
  if (options.json !== undefined) {
    await Deno.writeTextFile(options.json, JSON.stringify(report, null, 2) + "\n");
    console.log(`\nwrote ${options.json}`);
  }
  return 0;
}

/**
 * Certificates for the TLS clusters (`node-1`..`node-3` and `etcd-1`..`etcd-3`, valid for
 * 127.0.0.1) and a tokens file with one write token, in a temporary directory removed at the end.
 */
async function _makeSecurity(): Promise<
  { certs: Certificates; tokensFile: string; token: string }
> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-bench-tls-" });
  _onCleanup(() => Deno.remove(dir, { recursive: true }).catch(() => {}));
  const certs = await makeCertificates(dir, {
    nodes: ["node-1", "node-2", "node-3", "etcd-1", "etcd-2", "etcd-3"],
  });
  const token = Array.from(crypto.getRandomValues(new Uint8Array(32)))
    .map((b) => b.toString(16).padStart(2, "0"))
    .join("");
  const tokensFile = join(dir, "tokens.json");
  await Deno.writeTextFile(tokensFile, JSON.stringify([{ token, role: "write", name: "bench" }]), {
    mode: 0o600,
  });
  return { certs, tokensFile, token };
}

async function _reportProfile(
  options: BenchOptions,
  leader: string | null,
  pid: number | null,
): Promise<unknown> {
  const dir = options.cpuProf!;
  const files: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.name.endsWith(`.${pid}.cpuprofile`)) files.push(join(dir, entry.name));
  }
  const [file] = files;
  if (pid === null || file === undefined) {
    console.log(`\nno CPU profile of the leader (${leader}, pid ${pid}) in ${dir}`);
    return null;
  }
  const summary = summarizeCpuProfile(JSON.parse(await Deno.readTextFile(file)), options.top);
  console.log(
    `\n## CPU profile of the leader ${leader} (${file})\n\n${
      (summary.totalMs / 1000).toFixed(1)
    } s profiled, ${((summary.totalMs - summary.idleMs) / 1000).toFixed(1)} s busy (${
      ((100 * (summary.totalMs - summary.idleMs)) / summary.totalMs).toFixed(0)
    }%) over the node's whole life (preload, warm-up and every cell); self time per function, as a share of the busy time:\n`,
  );
  console.log(profileTable(summary.top));
  console.log(`\nself time per file:\n`);
  console.log(profileTable(summary.byFile));
  return { leader, file, ...summary };
}

function _report(
  options: BenchOptions,
  machine: _Machine,
  loadBefore: [number, number, number] | null,
  loadgen: LoadGenerator,
  etcdVersion: string | null,
  cells: CellResult[],
  watchCells: WatchFanoutResult[],
  watchFailures: string[],
  profile: unknown,
): unknown {
  const summaries = summarizeCells(cells);
  const loadAfter = _loadAvg();
  const runs = Math.max(1, ...cells.map((c) => c.run));
  console.log(
    `\n## Results (${
      runs > 1 ? `median of ${runs} runs` : "1 run"
    }, ${options.durationSec} s per cell, load generator ${loadgen}${
      etcdVersion === null ? "" : `, etcd ${etcdVersion}`
    })\n`,
  );
  console.log(
    `machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memGiB} GiB; code ${machine.code}; load average ${
      loadBefore?.join(" ") ?? "?"
    } at start, ${loadAfter?.join(" ") ?? "?"} at end\n`,
  );
  if (cells.length > 0) {
    console.log(resultsTable(summaries));
    if (etcdVersion !== null) {
      console.log(
        `\nratios are raftkv / etcd: req/s above 1 means raftkv is faster, p99 above 1 means raftkv's p99 is higher (worse).`,
      );
    }
    const tls = tlsTable(summaries);
    if (tls !== null) {
      console.log(
        `\nWhat TLS costs (raftkv+TLS: peer mutual TLS, HTTPS API, a bearer token on every request; etcd+TLS: client and peer TLS; wrk does not verify certificates). Ratios are TLS / plaintext: req/s below 1 and p99 above 1 are the cost:\n`,
      );
      console.log(tls);
    }
    console.log(`\nCPU in % of one core and peak RSS per member, the leader (L) first:\n`);
    console.log(resourceTable(summaries));
    const notes = summaries.flatMap((s) =>
      s.notes.map((note) => `${systemLabel(s)} ${s.op}/${s.target}/${s.connections}: ${note}`)
    );
    if (notes.length > 0) console.log(`\nnotes:\n${notes.map((n) => `- ${n}`).join("\n")}`);
  }
  if (watchCells.length > 0) {
    console.log(
      `\nWatch fan-out: ${options.watchers} watchers of one prefix spread over the members, 4 writers on the leader for ${options.durationSec} s; delay from a write's acknowledgement to each delivery (deliveries before it count as 0):\n`,
    );
    console.log(watchFanoutTable(watchCells));
  }
  for (const failure of watchFailures) console.log(failure);
  return {
    watchCells,
    watchFailures,
    machine,
    loadAverage: { start: loadBefore, end: loadAfter },
    options,
    loadgen,
    etcdVersion,
    cells,
    summaries,
    profile,
  };
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
