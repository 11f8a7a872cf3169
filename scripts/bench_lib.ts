/**
 * The pure parts of the benchmarks (`scripts/bench.ts`, `scripts/snapshot_bench.ts`): option
 * parsing, request bodies, parsing the output of `wrk` and of `/proc`, percentiles and medians,
 * CPU profile summaries and the markdown tables. Nothing here touches the network, processes or
 * files, so `scripts/bench_lib_test.ts` tests all of it.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { intOption, UsageError } from "../testing/args.ts";

/** The 100-byte value of every benchmark write (the same as `VALUE` in `scripts/wrk/bench.lua`). */
export const VALUE: string = "0123456789".repeat(10);

/** How many keys the benchmark writes before measuring, for the reads to find. */
export const PRELOAD_KEYS = 10_000;

/** The default connection counts of a benchmark run. */
export const DEFAULT_CONNECTIONS: readonly number[] = Object.freeze([1, 16, 64, 256]);

/** The default duration of one cell, in seconds. */
export const DEFAULT_DURATION_SEC = 10;

/**
 * The workloads: unique-key writes, linearizable reads of preloaded keys, linearizable reads of
 * the {@linkcode RANGE_KEYS} keys under {@linkcode RANGE_PREFIX}, or compare-and-sets that create
 * unique keys only if they do not exist.
 */
export type Op = "writes" | "reads" | "ranges" | "cas";

/** Every workload, in the order the matrix runs them. */
export const OPS: readonly Op[] = Object.freeze(["writes", "reads", "ranges", "cas"]);

/** The prefix of the keys the range workload reads. */
export const RANGE_PREFIX = "rng/";

/** How many keys are preloaded under {@linkcode RANGE_PREFIX} (one range reads them all). */
export const RANGE_KEYS = 100;

/** The default of `--watchers`. */
export const DEFAULT_WATCHERS = 1000;

/** Which member the load generator talks to. */
export type Target = "leader" | "follower";

/** The systems compared. */
export type SystemName = "raftkv" | "etcd";

/** The load generator: `wrk` when installed, else the built-in one (`deno`). */
export type LoadGenerator = "wrk" | "deno";

/**
 * The key of the `i`th preloaded key: `pre-00000` to `pre-09999`.
 *
 * @param i The number, from 0.
 * @returns The key.
 */
export function preloadKey(i: number): string {
  return `pre-${String(i).padStart(5, "0")}`;
}

/**
 * The key of the `i`th key of the range workload: `rng/000` to `rng/099`.
 *
 * @param i The number, from 0.
 * @returns The key.
 */
export function rangeKey(i: number): string {
  return `${RANGE_PREFIX}${String(i).padStart(3, "0")}`;
}

/** An HTTP request of the benchmark, independent of who sends it. */
export interface BenchRequest {
  /** `GET`, `POST` or `PUT`. */
  method: "GET" | "POST" | "PUT";
  /** The path and query. */
  path: string;
  /** The JSON body, for POST. */
  body?: string;
}

/**
 * Encodes a string's UTF-8 bytes as base64, as etcd's JSON gateway expects keys and values.
 *
 * @param text The text.
 * @returns The base64 text.
 */
export function base64(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/**
 * The request that writes `key` with the benchmark {@linkcode VALUE}.
 *
 * @param system raftkv (`POST /v1/data`) or etcd (`POST <gateway>/kv/put`).
 * @param key The key.
 * @param gateway etcd's JSON gateway prefix, `/v3` for etcd 3.4 and later.
 * @returns The request.
 */
export function writeRequest(system: SystemName, key: string, gateway = "/v3"): BenchRequest {
  if (system === "raftkv") {
    return { method: "POST", path: "/v1/data", body: JSON.stringify({ k: key, v: VALUE }) };
  }
  return {
    method: "POST",
    path: `${gateway}/kv/put`,
    body: JSON.stringify({ key: base64(key), value: base64(VALUE) }),
  };
}

/**
 * The linearizable read of `key`.
 *
 * @param system raftkv (`GET /v1/data/<key>`) or etcd (`POST <gateway>/kv/range`).
 * @param key The key.
 * @param gateway etcd's JSON gateway prefix.
 * @returns The request.
 */
export function readRequest(system: SystemName, key: string, gateway = "/v3"): BenchRequest {
  if (system === "raftkv") {
    return { method: "GET", path: `/v1/data/${encodeURIComponent(key)}` };
  }
  return {
    method: "POST",
    path: `${gateway}/kv/range`,
    body: JSON.stringify({ key: base64(key) }),
  };
}

/**
 * The linearizable read of every key under {@linkcode RANGE_PREFIX}.
 *
 * @param system raftkv (`GET /v1/data?prefix=rng/`) or etcd (`POST <gateway>/kv/range` with
 * `range_end` the prefix's successor, `rng0`).
 * @param gateway etcd's JSON gateway prefix.
 * @returns The request.
 */
export function rangeRequest(system: SystemName, gateway = "/v3"): BenchRequest {
  if (system === "raftkv") {
    return { method: "GET", path: `/v1/data?prefix=${encodeURIComponent(RANGE_PREFIX)}` };
  }
  return {
    method: "POST",
    path: `${gateway}/kv/range`,
    body: JSON.stringify({ key: base64(RANGE_PREFIX), range_end: base64(prefixEnd(RANGE_PREFIX)) }),
  };
}

/**
 * The compare-and-set that writes `key` with the benchmark {@linkcode VALUE} only if it does not
 * exist yet (each request names a new key, so each one succeeds).
 *
 * @param system raftkv (`PUT /v1/data/<key>?cas=0`) or etcd (`POST <gateway>/kv/txn` comparing the
 * key's `create_revision` with 0, then putting it).
 * @param key The key.
 * @param gateway etcd's JSON gateway prefix.
 * @returns The request.
 */
export function casRequest(system: SystemName, key: string, gateway = "/v3"): BenchRequest {
  if (system === "raftkv") {
    return {
      method: "PUT",
      path: `/v1/data/${encodeURIComponent(key)}?cas=0`,
      body: JSON.stringify({ v: VALUE }),
    };
  }
  return {
    method: "POST",
    path: `${gateway}/kv/txn`,
    body: JSON.stringify({
      compare: [{ key: base64(key), target: "CREATE", result: "EQUAL", create_revision: "0" }],
      success: [{ request_put: { key: base64(key), value: base64(VALUE) } }],
    }),
  };
}

/**
 * The end of etcd's range for a prefix: the prefix with its last byte plus one (ASCII only).
 *
 * @param prefix The prefix, ASCII, its last character below U+007F.
 * @returns The end (exclusive).
 */
export function prefixEnd(prefix: string): string {
  const last = prefix.charCodeAt(prefix.length - 1);
  if (!(last < 0x7f)) throw new RangeError(`prefixEnd takes an ASCII prefix, got ${prefix}`);
  return prefix.slice(0, -1) + String.fromCharCode(last + 1);
}

/**
 * The JSON gateway prefix of an etcd version: `/v3` from 3.4, `/v3beta` in 3.3, `/v3alpha` before.
 *
 * @param version Such as `"3.4.23"`.
 * @returns The prefix.
 */
export function etcdGateway(version: string): string {
  const [major = 0, minor = 0] = version.split(".").map((part) => Number.parseInt(part, 10));
  if (major > 3 || (major === 3 && minor >= 4)) return "/v3";
  if (major === 3 && minor === 3) return "/v3beta";
  return "/v3alpha";
}

/**
 * Reads the version out of `etcd --version`.
 *
 * @param output The command's output, such as `"etcd Version: 3.4.23\nGit SHA: ..."`.
 * @returns The version, or `null`.
 */
export function parseEtcdVersion(output: string): string | null {
  return /etcd Version:\s*v?(\d+\.\d+\.\d+\S*)/i.exec(output)?.[1] ?? null;
}

// ---- options -----------------------------------------------------------------------------------

/** A bad command line; the message says what is wrong. */
export { UsageError };

/** The options of `scripts/bench.ts`. */
export interface BenchOptions {
  /** `--help`. */
  help: boolean;
  /** `--duration`: seconds per cell. */
  durationSec: number;
  /** `--connections`: the concurrency levels. */
  connections: number[];
  /** `--only`: the workloads. */
  ops: Op[];
  /**
   * `--watchers`: concurrent watchers of one prefix in the watch fan-out cell (0: no such cell;
   * `--only watch` runs it alone, another `--only` leaves it out).
   */
  watchers: number;
  /** `--target`: the members to load. */
  targets: Target[];
  /** Not `--no-etcd`: compare with etcd when it is installed. */
  etcd: boolean;
  /** `--runs`: repetitions of the whole matrix. */
  runs: number;
  /** `--json`: where to write the results, if anywhere. */
  json: string | undefined;
  /** `--loadgen`: `auto` (wrk when installed), `wrk` or `deno`. */
  loadgen: "auto" | LoadGenerator;
  /** `--cpu-prof`: directory for CPU profiles of the raftkv nodes, if profiling. */
  cpuProf: string | undefined;
  /** `--top`: how many functions of the leader's CPU profile to print. */
  top: number;
  /**
   * `--tls`: also measure each system with TLS: raftkv with peer mutual TLS, an HTTPS API and
   * bearer tokens; etcd with TLS on its client and peer URLs (peer client certificates).
   */
  tls: boolean;
}

/** The usage text of `scripts/bench.ts`. */
export const BENCH_USAGE = `usage: deno task bench [options]
  --duration SECS        whole seconds per cell (default ${DEFAULT_DURATION_SEC})
  --connections LIST     concurrent connections, comma-separated (default ${
  DEFAULT_CONNECTIONS.join(",")
})
  --only writes|reads|ranges|cas|watch  one workload only (default all four, then watch)
  --watchers N           watchers of one prefix in the watch fan-out cell (default 1000; 0: skip)
  --target leader|follower|both   where the load goes (default both)
  --no-etcd              do not compare with etcd even if it is installed
  --runs N               repeat the whole matrix N times and report medians (default 1)
  --json FILE            also write the results as JSON
  --loadgen auto|wrk|deno  load generator (default auto: wrk when installed)
  --cpu-prof DIR         run the raftkv nodes with --cpu-prof into DIR, summarize the leader's
  --top N                functions shown from the CPU profile (default 15)
  --tls                  also run every cell against a second cluster of each system with TLS
                         (raftkv: peer mTLS, HTTPS API and tokens; etcd: client and peer TLS)
                         and report the TLS/plaintext ratios
  -h, --help             this text`;

/**
 * Parses the command line of `scripts/bench.ts`.
 *
 * @param args The arguments.
 * @returns The options, with defaults filled in.
 * @throws {UsageError} On an unknown option or a bad value.
 */
export function parseBenchArgs(args: string[]): BenchOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: "boolean", short: "h" },
        duration: { type: "string" },
        connections: { type: "string" },
        only: { type: "string" },
        watchers: { type: "string" },
        target: { type: "string" },
        "no-etcd": { type: "boolean" },
        runs: { type: "string" },
        json: { type: "string" },
        loadgen: { type: "string" },
        "cpu-prof": { type: "string" },
        top: { type: "string" },
        tls: { type: "boolean" },
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const durationSec = intOption("duration", values.duration, DEFAULT_DURATION_SEC, 1, 3600);
  const connections = values.connections === undefined
    ? [...DEFAULT_CONNECTIONS]
    : values.connections.split(",").map((part) =>
      intOption("connections", part.trim(), 0, 1, 10_000)
    );
  const only = OPS.find((op) => op === values.only);
  if (values.only !== undefined && only === undefined && values.only !== "watch") {
    throw new UsageError(
      `--only must be writes, reads, ranges, cas or watch, got ${JSON.stringify(values.only)}`,
    );
  }
  const watchers = values.watchers !== undefined
    ? intOption("watchers", values.watchers, 0, 0, 10_000)
    : values.only === undefined || values.only === "watch"
    ? DEFAULT_WATCHERS
    : 0;
  const target = values.target ?? "both";
  if (target !== "leader" && target !== "follower" && target !== "both") {
    throw new UsageError(
      `--target must be leader, follower or both, got ${JSON.stringify(target)}`,
    );
  }
  const loadgen = values.loadgen ?? "auto";
  if (loadgen !== "auto" && loadgen !== "wrk" && loadgen !== "deno") {
    throw new UsageError(`--loadgen must be auto, wrk or deno, got ${JSON.stringify(loadgen)}`);
  }
  return {
    help: values.help ?? false,
    durationSec,
    connections,
    ops: values.only === "watch" ? [] : only === undefined ? [...OPS] : [only],
    watchers,
    targets: target === "both" ? ["leader", "follower"] : [target],
    etcd: !(values["no-etcd"] ?? false),
    runs: intOption("runs", values.runs, 1, 1, 100),
    json: values.json,
    loadgen,
    cpuProf: values["cpu-prof"],
    top: intOption("top", values.top, 15, 1, 1000),
    tls: values.tls ?? false,
  };
}

// ---- load results ------------------------------------------------------------------------------

/** What one load generator run measured. Latencies in milliseconds. */
export interface LoadResult {
  /** Completed requests (any status). */
  requests: number;
  /** Length of the run, in seconds. */
  durationSec: number;
  /** Completed requests per second. */
  rps: number;
  /** Median latency. */
  p50Ms: number;
  /** 99th percentile latency. */
  p99Ms: number;
  /** 99.9th percentile latency. */
  p999Ms: number;
  /** Highest latency. */
  maxMs: number;
  /** Mean latency. */
  meanMs: number;
  /** Responses with a status outside 200-299. */
  non2xx: number;
  /** Connect, read and write errors and timeouts. */
  socketErrors: number;
  /** `non2xx + socketErrors`. */
  errors: number;
}

/**
 * Parses the `WRK_RESULT key=value ...` line that `scripts/wrk/bench.lua` prints in `done()`.
 *
 * @param output wrk's standard output.
 * @returns The result.
 * @throws {Error} If the line is missing or lacks a field.
 */
export function parseWrkResult(output: string): LoadResult {
  const line = output.split("\n").find((l) => l.startsWith("WRK_RESULT "));
  if (line === undefined) {
    throw new Error(`no WRK_RESULT line in wrk's output:\n${output.slice(-2000)}`);
  }
  const fields = new Map<string, number>();
  for (const pair of line.slice("WRK_RESULT ".length).trim().split(/\s+/)) {
    const [name = "", text = ""] = pair.split("=");
    fields.set(name, Number(text));
  }
  const get = (name: string): number => {
    const value = fields.get(name);
    if (value === undefined || !Number.isFinite(value)) {
      throw new Error(`WRK_RESULT lacks a numeric ${name}: ${line}`);
    }
    return value;
  };
  const requests = get("requests");
  const durationSec = get("duration_us") / 1e6;
  const non2xx = get("non2xx");
  const socketErrors = get("connect") + get("read") + get("write") + get("timeout");
  return {
    requests,
    durationSec,
    rps: durationSec > 0 ? requests / durationSec : 0,
    p50Ms: get("p50_us") / 1000,
    p99Ms: get("p99_us") / 1000,
    p999Ms: get("p999_us") / 1000,
    maxMs: get("max_us") / 1000,
    meanMs: get("mean_us") / 1000,
    non2xx,
    socketErrors,
    errors: non2xx + socketErrors,
  };
}

/**
 * The value at percentile `p` of sorted numbers, by the nearest-rank method (the smallest value
 * with at least `p`% of the values at or below it).
 *
 * @param sorted The values, ascending.
 * @param p The percentile, from 0 to 100.
 * @returns The value, or `NaN` when there are none.
 */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  // p * n / 100 rather than p / 100 * n: 99.9 / 100 * 1000 is 999.0000000000001.
  const rank = Math.ceil((p * sorted.length) / 100 - 1e-9);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/**
 * The median: the middle value, or the mean of the two middle values.
 *
 * @param values The values, in any order.
 * @returns The median, or `NaN` when there are none.
 */
export function median(values: readonly number[]): number {
  const finite = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (finite.length === 0) return NaN;
  const mid = Math.floor(finite.length / 2);
  return finite.length % 2 === 1 ? finite[mid]! : (finite[mid - 1]! + finite[mid]!) / 2;
}

/** Latency percentiles in milliseconds, from {@linkcode latencyStats}. */
export interface LatencyStats {
  /** How many latencies. */
  count: number;
  /** Median. */
  p50Ms: number;
  /** 99th percentile. */
  p99Ms: number;
  /** 99.9th percentile. */
  p999Ms: number;
  /** Highest. */
  maxMs: number;
  /** Mean. */
  meanMs: number;
}

/**
 * Summarizes latencies.
 *
 * @param latenciesMs The latencies in milliseconds, in any order (not modified).
 * @returns Count, percentiles, maximum and mean (`NaN` when empty).
 */
export function latencyStats(latenciesMs: ArrayLike<number>): LatencyStats {
  const sorted = Float64Array.from(latenciesMs).sort();
  let sum = 0;
  for (const value of sorted) sum += value;
  return {
    count: sorted.length,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    p999Ms: percentile(sorted, 99.9),
    maxMs: sorted.length === 0 ? NaN : sorted[sorted.length - 1]!,
    meanMs: sorted.length === 0 ? NaN : sum / sorted.length,
  };
}

/**
 * Builds a {@linkcode LoadResult} from the built-in load generator's measurements.
 *
 * @param latenciesMs Latency of every completed request.
 * @param durationSec Length of the run.
 * @param non2xx Responses outside 200-299.
 * @param socketErrors Requests that failed without a response.
 * @returns The result.
 */
export function loadResultFromLatencies(
  latenciesMs: ArrayLike<number>,
  durationSec: number,
  non2xx: number,
  socketErrors: number,
): LoadResult {
  const stats = latencyStats(latenciesMs);
  return {
    requests: stats.count,
    durationSec,
    rps: durationSec > 0 ? stats.count / durationSec : 0,
    p50Ms: stats.p50Ms,
    p99Ms: stats.p99Ms,
    p999Ms: stats.p999Ms,
    maxMs: stats.maxMs,
    meanMs: stats.meanMs,
    non2xx,
    socketErrors,
    errors: non2xx + socketErrors,
  };
}

// ---- /proc -------------------------------------------------------------------------------------

/**
 * Reads user plus system CPU time out of `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
 * The command name (field 2) may hold spaces and parentheses, so fields are counted from the
 * last `)`.
 *
 * @param stat The file's text.
 * @returns utime + stime, in clock ticks.
 * @throws {Error} If the text is not a stat line.
 */
export function parseProcStatCpuTicks(stat: string): number {
  const close = stat.lastIndexOf(")");
  if (close === -1) throw new Error(`not a /proc/<pid>/stat line: ${stat.slice(0, 100)}`);
  // After ")": field 3 (state) is rest[0], so field n is rest[n - 3].
  const rest = stat.slice(close + 1).trim().split(/\s+/);
  const utime = Number(rest[14 - 3]);
  const stime = Number(rest[15 - 3]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) {
    throw new Error(`no utime/stime in /proc/<pid>/stat line: ${stat.slice(0, 200)}`);
  }
  return utime + stime;
}

/**
 * Reads a `kB` field, such as `VmHWM` or `VmRSS`, out of `/proc/<pid>/status`.
 *
 * @param status The file's text.
 * @param field The field name.
 * @returns The value in KiB, or `null` when the field is missing.
 */
export function parseProcStatusKb(status: string, field: string): number | null {
  const match = new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, "m").exec(status);
  return match === null ? null : Number(match[1]);
}

/**
 * Reads the 1, 5 and 15 minute load averages out of `/proc/loadavg`.
 *
 * @param text The file's text, such as `"1.73 1.31 0.98 2/171 28887"`.
 * @returns The three averages.
 */
export function parseLoadAvg(text: string): [number, number, number] {
  const [a = NaN, b = NaN, c = NaN] = text.trim().split(/\s+/).map(Number);
  return [a, b, c];
}

// ---- results and tables ------------------------------------------------------------------------

/** Resource use of one member during one cell. */
export interface NodeUsage {
  /** The member's name (`node-1`, `etcd-2`). */
  id: string;
  /** Its role during the cell. */
  role: "leader" | "follower";
  /** CPU seconds (user + system) spent during the cell. */
  cpuSec: number;
  /** `cpuSec` as a percentage of one core over the cell. */
  cpuPct: number;
  /** Peak resident set size during the cell (or since start, see `peakSince`), in KiB. */
  peakRssKb: number | null;
}

/** One measured cell: one system, workload, target and concurrency, in one run. */
export interface CellResult {
  /** The system. */
  system: SystemName;
  /** Whether the system ran with TLS (see `BenchOptions.tls`). Default `false`. */
  tls?: boolean;
  /** The workload. */
  op: Op;
  /** Where the load went. */
  target: Target;
  /** Concurrent connections. */
  connections: number;
  /** The run, from 1. */
  run: number;
  /** What the load generator measured. */
  load: LoadResult;
  /** Each member's resource use, the leader first. */
  nodes: NodeUsage[];
  /** Remarks, such as a leader change during the cell. */
  notes: string[];
}

/** The median of a cell over the runs. */
export interface CellSummary {
  /** The system. */
  system: SystemName;
  /** Whether the system ran with TLS. */
  tls: boolean;
  /** The workload. */
  op: Op;
  /** Where the load went. */
  target: Target;
  /** Concurrent connections. */
  connections: number;
  /** How many runs. */
  runs: number;
  /** Median throughput. */
  rps: number;
  /** Median of the runs' medians. */
  p50Ms: number;
  /** Median of the runs' 99th percentiles. */
  p99Ms: number;
  /** Median of the runs' 99.9th percentiles. */
  p999Ms: number;
  /** Highest latency of any run. */
  maxMs: number;
  /** Errors summed over the runs. */
  errors: number;
  /** Median CPU percentage of the leader, then of each follower (by position). */
  cpuPct: number[];
  /** Highest peak RSS of the leader, then of each follower (by position), in KiB. */
  peakRssKb: (number | null)[];
  /** Every run's remarks. */
  notes: string[];
}

/**
 * A cell's identity without the system and run: `writes/leader/64`.
 *
 * @param cell The cell.
 * @returns The key.
 */
export function cellKey(cell: { op: Op; target: Target; connections: number }): string {
  return `${cell.op}/${cell.target}/${cell.connections}`;
}

/**
 * Takes the median of each cell over the runs.
 *
 * @param cells Every measured cell.
 * @returns One summary per system and cell, in the order the cells first appear.
 */
export function summarizeCells(cells: readonly CellResult[]): CellSummary[] {
  const groups = new Map<string, CellResult[]>();
  for (const cell of cells) {
    const key = `${systemLabel(cell)}:${cellKey(cell)}`;
    const group = groups.get(key);
    if (group === undefined) groups.set(key, [cell]);
    else group.push(cell);
  }
  return [...groups.values()].map((group) => {
    const first = group[0]!;
    const width = Math.max(...group.map((cell) => cell.nodes.length));
    const at = (i: number) => group.map((cell) => cell.nodes[i]).filter((n) => n !== undefined);
    return {
      system: first.system,
      tls: first.tls ?? false,
      op: first.op,
      target: first.target,
      connections: first.connections,
      runs: group.length,
      rps: median(group.map((cell) => cell.load.rps)),
      p50Ms: median(group.map((cell) => cell.load.p50Ms)),
      p99Ms: median(group.map((cell) => cell.load.p99Ms)),
      p999Ms: median(group.map((cell) => cell.load.p999Ms)),
      maxMs: Math.max(...group.map((cell) => cell.load.maxMs)),
      errors: group.reduce((sum, cell) => sum + cell.load.errors, 0),
      cpuPct: Array.from({ length: width }, (_, i) => median(at(i).map((n) => n.cpuPct))),
      peakRssKb: Array.from({ length: width }, (_, i) => {
        const known = at(i).map((n) => n.peakRssKb).filter((kb): kb is number => kb !== null);
        return known.length === 0 ? null : Math.max(...known);
      }),
      notes: group.flatMap((cell) => cell.notes.map((note) => `run ${cell.run}: ${note}`)),
    };
  });
}

/**
 * Names a system as the tables print it: `raftkv`, `etcd`, or with `+TLS`.
 *
 * @param cell A cell or summary.
 * @returns Such as `"raftkv+TLS"`.
 */
export function systemLabel(cell: { system: SystemName; tls?: boolean }): string {
  return cell.tls ? `${cell.system}+TLS` : cell.system;
}

/**
 * Formats a latency: 3 significant digits, at most 2 decimals.
 *
 * @param ms Milliseconds.
 * @returns Such as `"0.42"`, `"12.3"`, `"1042"`, or `"-"` when unknown.
 */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return "-";
  if (ms >= 100) return ms.toFixed(0);
  if (ms >= 10) return ms.toFixed(1);
  return ms.toFixed(2);
}

/**
 * Formats a rate as a whole number with thousands separators.
 *
 * @param rps Requests per second.
 * @returns Such as `"12,345"`, or `"-"` when unknown.
 */
export function formatRate(rps: number): string {
  if (!Number.isFinite(rps)) return "-";
  return Math.round(rps).toLocaleString("en-US");
}

/**
 * Formats a ratio to two decimals, with an `x`.
 *
 * @param a The numerator.
 * @param b The denominator.
 * @returns Such as `"0.42x"`, or `"-"` when either is unknown or `b` is 0.
 */
export function formatRatio(a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return "-";
  return `${(a / b).toFixed(2)}x`;
}

/**
 * Formats KiB as MiB with no decimals.
 *
 * @param kb KiB, or `null`.
 * @returns Such as `"123"`, or `"-"`.
 */
export function formatMiB(kb: number | null): string {
  return kb === null || !Number.isFinite(kb) ? "-" : (kb / 1024).toFixed(0);
}

/**
 * Renders a markdown table with columns padded to equal width (as `deno fmt` would).
 *
 * @param headers The header cells.
 * @param rows The rows, each as long as `headers`.
 * @param rightAligned Which columns hold numbers (right-aligned).
 * @returns The table, lines joined by `\n`, no trailing newline.
 */
export function markdownTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  rightAligned: readonly boolean[] = [],
): string {
  const widths = headers.map((header, i) =>
    Math.max(3, header.length, ...rows.map((row) => (row[i] ?? "").length))
  );
  const line = (cells: readonly string[]) =>
    `| ${
      widths.map((width, i) =>
        rightAligned[i] ? (cells[i] ?? "").padStart(width) : (cells[i] ?? "").padEnd(width)
      ).join(" | ")
    } |`;
  const rule = `| ${
    widths.map((width, i) => rightAligned[i] ? `${"-".repeat(width - 1)}:` : "-".repeat(width))
      .join(" | ")
  } |`;
  return [line(headers), rule, ...rows.map(line)].join("\n");
}

/**
 * The main table: every cell with raftkv's numbers, etcd's next to them (when measured) and the
 * raftkv/etcd ratios of throughput and p99.
 *
 * @param summaries The medians from {@linkcode summarizeCells}.
 * @returns The markdown table.
 */
export function resultsTable(summaries: readonly CellSummary[]): string {
  const raftkv = summaries.filter((s) => s.system === "raftkv" && !s.tls);
  const etcd = new Map(
    summaries.filter((s) => s.system === "etcd" && !s.tls).map((s) => [cellKey(s), s]),
  );
  const withEtcd = etcd.size > 0;
  const headers = ["workload", "target", "conns", "raftkv req/s", "p50 ms", "p99 ms", "p99.9 ms"];
  headers.push("errors");
  if (withEtcd) {
    headers.push(
      "etcd req/s",
      "p50 ms",
      "p99 ms",
      "p99.9 ms",
      "errors",
      "req/s ratio",
      "p99 ratio",
    );
  }
  const rows = raftkv.map((r) => {
    const row = [
      r.op,
      r.target,
      String(r.connections),
      formatRate(r.rps),
      formatMs(r.p50Ms),
      formatMs(r.p99Ms),
      formatMs(r.p999Ms),
      String(r.errors),
    ];
    if (withEtcd) {
      const e = etcd.get(cellKey(r));
      row.push(
        e ? formatRate(e.rps) : "-",
        e ? formatMs(e.p50Ms) : "-",
        e ? formatMs(e.p99Ms) : "-",
        e ? formatMs(e.p999Ms) : "-",
        e ? String(e.errors) : "-",
        e ? formatRatio(r.rps, e.rps) : "-",
        e ? formatRatio(r.p99Ms, e.p99Ms) : "-",
      );
    }
    return row;
  });
  return markdownTable(headers, rows, headers.map((_, i) => i >= 2));
}

/**
 * What TLS costs: for each system and cell measured both ways, plaintext and TLS side by side
 * with the TLS/plaintext ratios of throughput and p99.
 *
 * @param summaries The medians from {@linkcode summarizeCells}.
 * @returns The markdown table, or `null` when no cell was measured with TLS.
 */
export function tlsTable(summaries: readonly CellSummary[]): string | null {
  const secured = new Map(
    summaries.filter((s) => s.tls).map((s) => [`${s.system}:${cellKey(s)}`, s]),
  );
  if (secured.size === 0) return null;
  const headers = [
    "system",
    "workload",
    "target",
    "conns",
    "plain req/s",
    "p50 ms",
    "p99 ms",
    "TLS req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "req/s TLS/plain",
    "p99 TLS/plain",
  ];
  const rows = summaries.filter((s) => !s.tls).flatMap((plain) => {
    const t = secured.get(`${plain.system}:${cellKey(plain)}`);
    if (t === undefined) return [];
    return [[
      plain.system,
      plain.op,
      plain.target,
      String(plain.connections),
      formatRate(plain.rps),
      formatMs(plain.p50Ms),
      formatMs(plain.p99Ms),
      formatRate(t.rps),
      formatMs(t.p50Ms),
      formatMs(t.p99Ms),
      `${plain.errors} / ${t.errors}`,
      formatRatio(t.rps, plain.rps),
      formatRatio(t.p99Ms, plain.p99Ms),
    ]];
  });
  return markdownTable(headers, rows, headers.map((_, i) => i >= 3));
}

/**
 * The resource table: CPU (percent of one core) and peak RSS of each member per cell, the leader
 * first.
 *
 * @param summaries The medians from {@linkcode summarizeCells}.
 * @returns The markdown table.
 */
export function resourceTable(summaries: readonly CellSummary[]): string {
  const headers = [
    "workload",
    "target",
    "conns",
    "system",
    "CPU % L / F / F",
    "peak RSS MiB L / F / F",
  ];
  const rows = summaries.map((s) => [
    s.op,
    s.target,
    String(s.connections),
    systemLabel(s),
    s.cpuPct.map((pct) => Number.isFinite(pct) ? pct.toFixed(0) : "-").join(" / "),
    s.peakRssKb.map(formatMiB).join(" / "),
  ]);
  return markdownTable(headers, rows, [false, false, true, false, true, true]);
}

// ---- CPU profiles ------------------------------------------------------------------------------

/** The parts of a V8 `.cpuprofile` that {@linkcode summarizeCpuProfile} reads. */
export interface CpuProfile {
  /** The call tree. */
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number; columnNumber?: number };
    hitCount?: number;
    children?: number[];
  }[];
  /** Start, in microseconds. */
  startTime: number;
  /** End, in microseconds. */
  endTime: number;
  /** The node of each sample. */
  samples?: number[];
  /** Microseconds before each sample since the previous one. */
  timeDeltas?: number[];
}

/** One function's self time in a CPU profile. */
export interface ProfileEntry {
  /** `name (file:line)`. */
  name: string;
  /** Self time in milliseconds. */
  selfMs: number;
  /** Share of the sampled non-idle time, in percent. */
  pct: number;
}

/** What {@linkcode summarizeCpuProfile} returns. */
export interface ProfileSummary {
  /** Wall time covered by the profile, in milliseconds. */
  totalMs: number;
  /** Time in `(idle)`, in milliseconds. */
  idleMs: number;
  /** The functions with the most self time, most first. */
  top: ProfileEntry[];
  /** Self time per script file (and the `(program)`, `(garbage collector)` pseudo-entries). */
  byFile: ProfileEntry[];
}

function _shortUrl(url: string): string {
  if (url === "") return "";
  const marker = url.lastIndexOf("/src/");
  if (marker !== -1) return url.slice(marker + 1);
  const noScheme = url.replace(/^[a-z]+:(\/\/)?/, "");
  const parts = noScheme.split("/");
  return parts.slice(-2).join("/");
}

/**
 * Sums a V8 CPU profile's self time per function (and per file). A sample's time is the gap to
 * the next sample (the last sample gets the mean gap); without samples, hit counts are spread
 * over the profile's duration.
 *
 * @param profile The parsed `.cpuprofile`.
 * @param top How many functions to return.
 * @returns Totals, the top functions and the per-file breakdown; percentages are of non-idle time.
 */
export function summarizeCpuProfile(profile: CpuProfile, top = 15): ProfileSummary {
  const selfUs = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  if (samples.length > 0 && deltas.length === samples.length) {
    const total = profile.endTime - profile.startTime;
    const mean = total / samples.length;
    for (let i = 0; i < samples.length; i++) {
      const gap = i + 1 < deltas.length ? Math.max(0, deltas[i + 1]!) : mean;
      selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + gap);
    }
  } else {
    const hits = profile.nodes.reduce((sum, node) => sum + (node.hitCount ?? 0), 0);
    const each = hits === 0 ? 0 : (profile.endTime - profile.startTime) / hits;
    for (const node of profile.nodes) selfUs.set(node.id, (node.hitCount ?? 0) * each);
  }
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  let idleUs = 0;
  let totalUs = 0;
  for (const node of profile.nodes) {
    const us = selfUs.get(node.id) ?? 0;
    if (us === 0) continue;
    totalUs += us;
    const frame = node.callFrame;
    if (frame.functionName === "(idle)") {
      idleUs += us;
      continue;
    }
    const file = _shortUrl(frame.url);
    const name = file === ""
      ? (frame.functionName || "(anonymous)")
      : `${frame.functionName || "(anonymous)"} (${file}:${frame.lineNumber + 1})`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + us);
    const fileKey = file === "" ? (frame.functionName || "(native)") : file;
    byFile.set(fileKey, (byFile.get(fileKey) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const entries = (map: Map<string, number>) =>
    [...map].sort((a, b) => b[1] - a[1]).map(([name, us]) => ({
      name,
      selfMs: us / 1000,
      pct: busyUs > 0 ? (100 * us) / busyUs : 0,
    }));
  return {
    totalMs: totalUs / 1000,
    idleMs: idleUs / 1000,
    top: entries(byFunction).slice(0, top),
    byFile: entries(byFile).slice(0, top),
  };
}

/**
 * Renders the top functions of a profile summary as a markdown table.
 *
 * @param entries The entries.
 * @returns The table.
 */
export function profileTable(entries: readonly ProfileEntry[]): string {
  return markdownTable(
    ["#", "function (file:line)", "self ms", "% of busy"],
    entries.map((e, i) => [String(i + 1), e.name, e.selfMs.toFixed(0), e.pct.toFixed(1)]),
    [true, false, true, true],
  );
}

// ---- snapshot benchmark ------------------------------------------------------------------------

/** A `snapshot at index N (K keys) in M ms` log line, parsed. */
export interface SnapshotLogLine {
  /** The snapshot's index. */
  index: number;
  /** Keys in it. */
  keys: number;
  /** How long writing it took, in milliseconds. */
  ms: number;
}

/**
 * Parses a node's `snapshot at index N (K keys) in M ms` log line.
 *
 * @param line A log line.
 * @returns The numbers, or `null` when the line is another one.
 */
export function parseSnapshotLine(line: string): SnapshotLogLine | null {
  const match = /snapshot at index (\d+) \((\d+) keys\) in (\d+(?:\.\d+)?) ms/.exec(line);
  if (match === null || /sending|installing/.test(line)) return null;
  return { index: Number(match[1]), keys: Number(match[2]), ms: Number(match[3]) };
}

/** One write of a background stream: when it was due and when it completed (ms, one clock). */
export interface TimedWrite {
  /** When it was scheduled to start. */
  dueMs: number;
  /** When its response (or the network error) arrived. */
  doneMs: number;
  /** The HTTP status, or 0 for a network error. */
  status: number;
}

/**
 * The latencies (measured from when each write was due, so a stall is not hidden by the stream
 * waiting for it) of the writes that were in flight at any time during `[fromMs, toMs]`.
 *
 * @param writes The stream's writes.
 * @param fromMs Start of the window.
 * @param toMs End of the window.
 * @returns The successful writes' latencies, and how many writes failed.
 */
export function writesDuring(
  writes: readonly TimedWrite[],
  fromMs: number,
  toMs: number,
): { latenciesMs: number[]; failed: number } {
  const latenciesMs: number[] = [];
  let failed = 0;
  for (const write of writes) {
    if (write.dueMs > toMs || write.doneMs < fromMs) continue;
    if (write.status < 200 || write.status > 299) failed++;
    else latenciesMs.push(write.doneMs - write.dueMs);
  }
  return { latenciesMs, failed };
}

/** The options of `scripts/snapshot_bench.ts`. */
export interface SnapshotBenchOptions {
  /** `--help`. */
  help: boolean;
  /** `--keys`: how many keys to load. */
  keys: number;
  /** `--threshold`: the node's `--snapshot-threshold`. */
  threshold: number;
  /** `--connections`: concurrent writers while loading. */
  connections: number;
  /** `--rate`: writes per second of the background stream. */
  rate: number;
  /** `--quiet`: seconds of background stream alone before the measured snapshot starts. */
  quietSec: number;
  /** `--max-minutes`: bound on the whole run. */
  maxMinutes: number;
  /** `--loadgen`: `auto` (wrk when installed), `wrk` or `deno`, for the bulk load. */
  loadgen: "auto" | LoadGenerator;
  /** `--json`: where to write the results, if anywhere. */
  json: string | undefined;
}

/** The usage text of `scripts/snapshot_bench.ts`. */
export const SNAPSHOT_USAGE = `usage: deno task bench:snapshot [options]
  --keys N               keys to load, 100-byte values (default 1000000)
  --threshold N          the node's --snapshot-threshold (default 100000)
  --connections N        concurrent writers while loading (default 256)
  --rate N               writes per second of the background stream (default 200)
  --quiet SECS           background stream alone before the measured snapshot (default 5)
  --max-minutes N        give up after this long (default 45)
  --loadgen auto|wrk|deno  bulk load generator (default auto: wrk when installed)
  --json FILE            also write the results as JSON
  -h, --help             this text`;

/**
 * Parses the command line of `scripts/snapshot_bench.ts`.
 *
 * @param args The arguments.
 * @returns The options, with defaults filled in.
 * @throws {UsageError} On an unknown option or a bad value.
 */
export function parseSnapshotBenchArgs(args: string[]): SnapshotBenchOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: "boolean", short: "h" },
        keys: { type: "string" },
        threshold: { type: "string" },
        connections: { type: "string" },
        rate: { type: "string" },
        quiet: { type: "string" },
        "max-minutes": { type: "string" },
        loadgen: { type: "string" },
        json: { type: "string" },
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const int = (name: string, text: string | undefined, fallback: number, max: number) =>
    intOption(name, text, fallback, 1, max);
  const loadgen = values.loadgen ?? "auto";
  if (loadgen !== "auto" && loadgen !== "wrk" && loadgen !== "deno") {
    throw new UsageError(`--loadgen must be auto, wrk or deno, got ${JSON.stringify(loadgen)}`);
  }
  return {
    help: values.help ?? false,
    keys: int("keys", values.keys, 1_000_000, 100_000_000),
    threshold: int("threshold", values.threshold, 100_000, 100_000_000),
    connections: int("connections", values.connections, 256, 10_000),
    rate: int("rate", values.rate, 200, 10_000),
    quietSec: int("quiet", values.quiet, 5, 600),
    maxMinutes: int("max-minutes", values["max-minutes"], 45, 24 * 60),
    loadgen,
    json: values.json,
  };
}

/**
 * Formats a byte count in binary units.
 *
 * @param bytes The count.
 * @returns Such as `"512 B"`, `"1.5 KiB"`, `"123.4 MiB"`, `"2.00 GiB"`.
 */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return "-";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

/**
 * The UTF-8 size of keys `<prefix>0` to `<prefix><count - 1>` plus a value of `valueBytes` each:
 * the live data a node holds after the bulk load.
 *
 * @param prefix The key prefix.
 * @param count How many keys.
 * @param valueBytes Bytes per value.
 * @returns Bytes of keys and values.
 */
export function liveDataBytes(prefix: string, count: number, valueBytes: number): number {
  let digits = 0;
  for (let width = 1, from = 0; from < count; width++, from = 10 ** (width - 1)) {
    const to = Math.min(count, 10 ** width);
    digits += (to - from) * width;
  }
  return count * (new TextEncoder().encode(prefix).length + valueBytes) + digits;
}
