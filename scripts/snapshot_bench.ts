/**
 * What a million keys cost a raftkv node: `deno task bench:snapshot`.
 *
 * ## Method
 *
 * One node (a single-member cluster file, `--listen-host 127.0.0.1`, default timings,
 * `--snapshot-threshold 100000`, fsync on, data in a fresh temporary directory) on this machine:
 *
 * 1. **Load.** `--keys` keys `k-0`, `k-1`, ... with 100-byte values are written by
 *    `--connections` concurrent writers (wrk when installed, else `fetch` loops), as fast as the
 *    node takes them. All along, a **background stream** writes at a steady `--rate` (open loop:
 *    a write is sent when it is due, whether or not earlier ones were answered, and its latency
 *    counts from when it was due, so a stall shows in full). It writes new keys `bg-0`, `bg-1`, ...
 *    (when this was written, overwriting keys while a snapshot was being written made the node
 *    stop with "snapshot header says N pairs but M were given": the copy-on-write view yielded
 *    a key that changed after the view had passed it a second time).
 * 2. **The measured snapshot.** The node snapshots every `--threshold` applied entries and logs
 *    `snapshot at index N (K keys) in M ms`. After the load, more overwrites of `k-*` bring the
 *    log to `--quiet` seconds' worth of background writes short of the next snapshot; then the
 *    bulk load stops and the background stream alone (the **quiet baseline**) triggers a snapshot
 *    of the whole state. The background writes in flight at any time between the snapshot's start
 *    (log time minus M) and its end are reported: p50, p99, p99.9 and the worst, against the
 *    quiet baseline without a snapshot.
 * 3. **Disk.** The size of the data directory (WAL segments, snapshots, the rest) once the log
 *    has been compacted after that snapshot.
 * 4. **Restart.** SIGTERM, then a new process on the same directory: the time from spawn until
 *    `/health` answers (storage opened: snapshot and WAL read), until `/ready` answers 200 (a
 *    leader known and everything committed applied), and until a linearizable GET of a key
 *    written before the load returns its value.
 * 5. **Memory.** VmRSS and VmHWM of the node after the load, again 20 s later with only the
 *    background stream writing (once a burst is over the node gives back the heap grown for it),
 *    and after the restart, against the
 *    live data size (the UTF-8 bytes of every key and value).
 *
 * Every phase is bounded in time (`--max-minutes` for the whole run) and the node, wrk and the
 * temporary directory are removed at the end, also on failure and Ctrl-C.
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { httpRequest, type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { describeCode } from "./bench.ts";
import {
  formatBytes,
  formatMs,
  formatRate,
  type LatencyStats,
  latencyStats,
  liveDataBytes,
  type LoadGenerator,
  markdownTable,
  parseLoadAvg,
  parseProcStatusKb,
  parseSnapshotBenchArgs,
  parseSnapshotLine,
  parseWrkResult,
  SNAPSHOT_USAGE,
  type SnapshotBenchOptions,
  type SnapshotLogLine,
  type TimedWrite,
  UsageError,
  VALUE,
  writesDuring,
} from "./bench_lib.ts";

const _WRK_SCRIPT = fileURLToPath(new URL("./wrk/bench.lua", import.meta.url));
const _BG_MAX_OUTSTANDING = 5000;
const _ID = "node-1";
/** Written before the load, read back after the restart. */
const _KNOWN_KEY = "known-key";
const _KNOWN_VALUE = "written before the bulk load";
/** How long after the load, with the background stream alone, the node's memory is read again. */
const _SETTLE_MS = 20_000;

function _sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Milliseconds since the epoch, with sub-millisecond precision. */
function _now(): number {
  return performance.timeOrigin + performance.now();
}

// ---- the node's snapshot log lines -------------------------------------------------------------

/** A snapshot log line with the time it ended (from the line's own ISO timestamp). */
interface _Snapshot extends SnapshotLogLine {
  endMs: number;
  startMs: number;
}

/** Collects the node's `snapshot at index ...` lines by polling the harness's kept output. */
class _SnapshotWatcher {
  readonly snapshots: _Snapshot[] = [];
  #seen = new Set<string>();
  #cluster: ProcessCluster;
  #timer: ReturnType<typeof setInterval>;

  constructor(cluster: ProcessCluster) {
    this.#cluster = cluster;
    this.#timer = setInterval(() => this.poll(), 100);
  }

  poll(): void {
    for (const line of this.#cluster.logs(_ID)) {
      if (this.#seen.has(line)) continue;
      const parsed = parseSnapshotLine(line);
      if (parsed === null) continue;
      this.#seen.add(line);
      const stamp = Date.parse(line.split(" ")[0] ?? "");
      const endMs = Number.isNaN(stamp) ? _now() : stamp;
      const snapshot = { ...parsed, endMs, startMs: endMs - parsed.ms };
      this.snapshots.push(snapshot);
      console.log(
        `  snapshot at index ${parsed.index} (${parsed.keys} keys) in ${parsed.ms} ms`,
      );
    }
  }

  /** The newest snapshot's index, or 0. */
  get lastIndex(): number {
    return this.snapshots.reduce((max, s) => Math.max(max, s.index), 0);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.poll();
  }
}

// ---- the background stream ---------------------------------------------------------------------

/** Writes at a steady rate, open loop, recording when each write was due and when it ended. */
class _BackgroundStream {
  readonly writes: TimedWrite[] = [];
  #url: string;
  #rate: number;
  #sent = 0;
  #outstanding = 0;
  #skipped = 0;
  #startMs = _now();
  #running = true;
  #loop: Promise<void>;
  #inflight = new Set<Promise<void>>();

  constructor(url: string, rate: number) {
    this.#url = url;
    this.#rate = rate;
    this.#loop = this.#run();
  }

  get skipped(): number {
    return this.#skipped;
  }

  async #run(): Promise<void> {
    const periodMs = 1000 / this.#rate;
    while (this.#running) {
      const due = this.#startMs + this.#sent * periodMs;
      const wait = due - _now();
      if (wait > 0) {
        await _sleep(Math.min(wait, 50));
        continue;
      }
      const n = this.#sent++;
      if (this.#outstanding >= _BG_MAX_OUTSTANDING) {
        this.#skipped++;
        continue;
      }
      const write = this.#write(n, due);
      this.#inflight.add(write);
      write.finally(() => this.#inflight.delete(write));
    }
  }

  async #write(n: number, dueMs: number): Promise<void> {
    this.#outstanding++;
    let status = 0;
    try {
      const res = await fetch(`${this.#url}/v1/data`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ k: `bg-${n}`, v: VALUE }),
        signal: AbortSignal.timeout(30_000),
      });
      await res.arrayBuffer();
      status = res.status;
    } catch {
      status = 0;
    } finally {
      this.#outstanding--;
    }
    this.writes.push({ dueMs, doneMs: _now(), status });
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
    await Promise.all([...this.#inflight]);
  }
}

// ---- bulk load ---------------------------------------------------------------------------------

/** What a bulk load phase did. */
interface _BulkResult {
  requests: number;
  errors: number;
  seconds: number;
}

/**
 * Writes `<prefix>0` .. `<prefix><count - 1>` with `connections` concurrent writers, until all
 * are sent or `done()` says to stop (checked every 200 ms), within `maxMs`.
 */
async function _bulk(
  loadgen: LoadGenerator,
  url: string,
  prefix: string,
  count: number,
  connections: number,
  done: () => Promise<boolean>,
  maxMs: number,
): Promise<_BulkResult> {
  const started = performance.now();
  if (loadgen === "wrk") {
    const seconds = Math.max(1, Math.ceil(maxMs / 1000));
    const child = new Deno.Command("wrk", {
      args: [
        "-t1",
        `-c${connections}`,
        `-d${seconds}s`,
        "--timeout",
        "60s",
        "-s",
        _WRK_SCRIPT,
        url,
        "--",
        "raftkv-write",
        prefix,
        "1",
        String(count),
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    _children.add(child);
    const output = child.output();
    let exited = false;
    output.finally(() => exited = true);
    // wrk sleeps for its whole -d; SIGINT ends it early and it still prints its results.
    try {
      while (!exited && !(await done())) await _sleep(200);
    } catch (error) {
      child.kill("SIGKILL");
      await output.catch(() => {});
      _children.delete(child);
      throw error;
    }
    if (!exited) child.kill("SIGINT");
    const out = await output;
    _children.delete(child);
    const text = new TextDecoder().decode(out.stdout);
    const result = parseWrkResult(text);
    return {
      requests: result.requests,
      errors: result.errors,
      seconds: (performance.now() - started) / 1000,
    };
  }
  let next = 0;
  let requests = 0;
  let errors = 0;
  let stop = false;
  const deadline = started + maxMs;
  let failure: unknown = null;
  const watcher = (async () => {
    while (!stop && performance.now() < deadline) {
      try {
        if (await done()) stop = true;
        else await _sleep(200);
      } catch (error) {
        failure = error;
        stop = true;
      }
    }
    stop = true;
  })();
  const loop = async () => {
    while (!stop && next < count && performance.now() < deadline) {
      const key = `${prefix}${next++}`;
      try {
        const res = await fetch(`${url}/v1/data`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ k: key, v: VALUE }),
          signal: AbortSignal.timeout(60_000),
        });
        await res.arrayBuffer();
        requests++;
        if (res.status !== 200) errors++;
      } catch {
        errors++;
        await _sleep(10);
      }
    }
  };
  await Promise.all(Array.from({ length: connections }, loop));
  stop = true;
  await watcher;
  if (failure !== null) throw failure;
  return { requests, errors, seconds: (performance.now() - started) / 1000 };
}

const _children = new Set<Deno.ChildProcess>();

// ---- helpers -----------------------------------------------------------------------------------

interface _Status {
  applied_index: number;
  commit_index: number;
  last_index: number;
}

async function _status(url: string): Promise<_Status> {
  const res = await httpRequest(`${url}/v1/status`, "GET", undefined, { timeoutMs: 5000 });
  if (res.status !== 200) throw new Error(`GET /v1/status: ${res.status} ${res.text}`);
  return res.json as _Status;
}

interface _DiskUse {
  walBytes: number;
  snapshotBytes: number;
  otherBytes: number;
  totalBytes: number;
  allocatedBytes: number;
  walFiles: number;
  snapshotFiles: number;
}

async function _diskUse(dir: string): Promise<_DiskUse> {
  const use: _DiskUse = {
    walBytes: 0,
    snapshotBytes: 0,
    otherBytes: 0,
    totalBytes: 0,
    allocatedBytes: 0,
    walFiles: 0,
    snapshotFiles: 0,
  };
  const walk = async (path: string, top: string | null): Promise<void> => {
    for await (const entry of Deno.readDir(path)) {
      const full = join(path, entry.name);
      if (entry.isDirectory) {
        await walk(full, top ?? entry.name);
        continue;
      }
      const info = await Deno.stat(full).catch(() => null);
      if (info === null) continue;
      use.totalBytes += info.size;
      use.allocatedBytes += (info.blocks ?? 0) * 512;
      if (top === "wal") {
        use.walBytes += info.size;
        use.walFiles++;
      } else if (top === "snapshots") {
        use.snapshotBytes += info.size;
        use.snapshotFiles++;
      } else {
        use.otherBytes += info.size;
      }
    }
  };
  await walk(dir, null);
  return use;
}

function _memory(pid: number | null): { rssKb: number | null; hwmKb: number | null } {
  if (pid === null) return { rssKb: null, hwmKb: null };
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/status`);
    return { rssKb: parseProcStatusKb(text, "VmRSS"), hwmKb: parseProcStatusKb(text, "VmHWM") };
  } catch {
    return { rssKb: null, hwmKb: null };
  }
}

function _loadAvg(): string {
  try {
    return parseLoadAvg(Deno.readTextFileSync("/proc/loadavg")).join(" ");
  } catch {
    return "unknown";
  }
}

/** Throws, with the node's last output, if the node is no longer running. */
function _checkAlive(cluster: ProcessCluster): void {
  if (cluster.isRunning(_ID)) return;
  const status = cluster.exitStatus(_ID);
  throw new Error(
    `the node ${
      status === null
        ? "is not running"
        : status.signal !== null
        ? `was killed by ${status.signal}`
        : `exited with code ${status.code}`
    }\n${_collapsedLogs(cluster, 60)}`,
  );
}

/** The node's last `count` output lines, runs of the same line collapsed into one. */
function _collapsedLogs(cluster: ProcessCluster, count: number): string {
  const out: string[] = [];
  let previous = "";
  let repeats = 0;
  const flush = () => {
    if (repeats > 0) out.push(`  (the line above ${repeats} more times)`);
    repeats = 0;
  };
  for (const line of cluster.logs(_ID)) {
    if (line === previous) {
      repeats++;
      continue;
    }
    flush();
    out.push(line);
    previous = line;
  }
  flush();
  return `--- ${_ID} (last ${count} of ${out.length} distinct output lines) ---\n${
    out.slice(-count).join("\n")
  }`;
}

function _statsRow(label: string, stats: LatencyStats, failed: number, extra = ""): string[] {
  return [
    label,
    String(stats.count),
    formatMs(stats.p50Ms),
    formatMs(stats.p99Ms),
    formatMs(stats.p999Ms),
    formatMs(stats.maxMs),
    String(failed),
    extra,
  ];
}

// ---- main --------------------------------------------------------------------------------------

/** Runs the snapshot benchmark; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  let options: SnapshotBenchOptions;
  try {
    options = parseSnapshotBenchArgs(args);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`bench:snapshot: ${error.message}\n${SNAPSHOT_USAGE}`);
      return 2;
    }
    throw error;
  }
  if (options.help) {
    console.log(SNAPSHOT_USAGE);
    return 0;
  }
  let loadgen: LoadGenerator = options.loadgen === "wrk" ? "wrk" : "deno";
  if (options.loadgen !== "deno") {
    const found = await new Deno.Command("wrk", { args: ["-v"], stdout: "null", stderr: "null" })
      .output().then(() => true, () => false);
    if (!found && options.loadgen === "wrk") {
      console.error("bench:snapshot: --loadgen wrk, but wrk is not installed");
      return 2;
    }
    loadgen = found ? "wrk" : "deno";
  }
  const deadline = performance.now() + options.maxMinutes * 60_000;
  const remaining = () => Math.max(0, deadline - performance.now());

  console.log(`# raftkv snapshot benchmark`);
  console.log(
    `${options.keys} keys of ${VALUE.length}-byte values, --snapshot-threshold ${options.threshold}, ${options.connections} writers (${loadgen}), background stream ${options.rate} writes/s`,
  );
  console.log(
    `cores: ${navigator.hardwareConcurrency}; code: ${await describeCode()}; load average at start: ${_loadAvg()}\n`,
  );

  let cluster: ProcessCluster | null = null;
  let stream: _BackgroundStream | null = null;
  let watcher: _SnapshotWatcher | null = null;
  const cleanup = async () => {
    watcher?.stop();
    for (const child of _children) {
      try {
        child.kill("SIGKILL");
      } catch {
        // Gone.
      }
    }
    await stream?.stop().catch(() => {});
    await cluster?.close();
  };
  const onSignal = () => {
    console.error("\ninterrupted: stopping everything");
    if (cluster !== null) console.error(cluster.formatLogs(undefined, 20));
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  try {
    cluster = await startCluster({
      size: 1,
      nodeFlags: [
        "--election-timeout",
        "1000",
        "--heartbeat",
        "100",
        "--snapshot-threshold",
        String(options.threshold),
      ],
    });
    const node = cluster;
    const url = node.api(_ID);
    await node.waitForLeader(30_000);
    const known = await httpRequest(`${url}/v1/data`, "POST", { k: _KNOWN_KEY, v: _KNOWN_VALUE });
    if (known.status !== 200) {
      throw new Error(`writing ${_KNOWN_KEY}: ${known.status} ${known.text}`);
    }
    watcher = new _SnapshotWatcher(node);
    const snapshots = watcher;
    stream = new _BackgroundStream(url, options.rate);
    const bg = stream;

    // 1. The bulk load.
    console.log(`loading ${options.keys} keys...`);
    const loadStartMs = _now();
    const lastKey = `k-${options.keys - 1}`;
    let progressAt = performance.now();
    const fill = await _bulk(
      loadgen,
      url,
      "k-",
      options.keys,
      options.connections,
      async () => {
        _checkAlive(node);
        try {
          if (performance.now() - progressAt > 15_000) {
            progressAt = performance.now();
            const s = await _status(url);
            console.log(`  applied index ${s.applied_index}`);
          }
          const res = await httpRequest(
            `${url}/v1/data/${lastKey}?consistency=stale`,
            "GET",
            undefined,
            { timeoutMs: 5000 },
          );
          return res.status === 200;
        } catch {
          return false;
        }
      },
      remaining(),
    );
    const loadEndMs = _now();
    const loadSec = (loadEndMs - loadStartMs) / 1000;
    const afterLoad = await _status(url);
    console.log(
      `loaded in ${loadSec.toFixed(1)} s (${
        formatRate(fill.requests / loadSec)
      } writes/s, ${fill.errors} errors); applied index ${afterLoad.applied_index}`,
    );

    // 2. Wait out a snapshot in progress: once applied - last < threshold, none is running.
    await waitFor(async () => {
      _checkAlive(node);
      snapshots.poll();
      const s = await _status(url);
      return s.applied_index - snapshots.lastIndex < options.threshold;
    }, {
      deadlineMs: Math.min(remaining(), 300_000),
      intervalMs: 200,
      message: "the snapshot in progress after the load to end",
    });
    const target = snapshots.lastIndex + options.threshold;
    const margin = options.rate * options.quietSec;
    const current = (await _status(url)).applied_index;
    const topUp = Math.max(0, target - margin - current);
    console.log(
      `next snapshot at index ${target}; overwriting ${topUp} keys to get within ${margin} entries of it`,
    );
    if (topUp > 0) {
      await _bulk(
        loadgen,
        url,
        "k-",
        Math.min(topUp, options.keys),
        options.connections,
        async () => {
          _checkAlive(node);
          const applied = (await _status(url).catch(() => null))?.applied_index ?? 0;
          return applied >= target - margin;
        },
        remaining(),
      );
    }
    const quietStartMs = _now() + 500;
    console.log(`background stream alone until the snapshot at index ${target}...`);
    await waitFor(() => {
      _checkAlive(node);
      snapshots.poll();
      return snapshots.snapshots.some((s) => s.index >= target);
    }, {
      deadlineMs: Math.min(remaining(), 300_000),
      intervalMs: 100,
      message: `the snapshot at index ${target}`,
    });
    const measured = snapshots.snapshots.find((s) => s.index >= target)!;
    await _sleep(3000);
    const quietEndMs = _now();
    const memLoaded = _memory(node.node(_ID).pid);
    // The background stream goes on (a light load after the burst); its writes from here on
    // count in no latency figure.
    await _sleep(_SETTLE_MS);
    _checkAlive(node);
    const memSettled = _memory(node.node(_ID).pid);
    await bg.stop();

    // Latencies of the background stream.
    const during = writesDuring(bg.writes, measured.startMs, measured.endMs);
    const quietWrites = bg.writes.filter((w) =>
      w.dueMs >= quietStartMs && w.doneMs <= quietEndMs &&
      !snapshots.snapshots.some((s) => w.dueMs <= s.endMs && w.doneMs >= s.startMs)
    );
    const quiet = writesDuring(quietWrites, quietStartMs, quietEndMs);
    const loadSnaps = snapshots.snapshots.filter((s) => s.endMs <= loadEndMs);
    const loadWrites = bg.writes.filter((w) => w.dueMs >= loadStartMs && w.doneMs <= loadEndMs);
    const inLoadSnaps = loadWrites.filter((w) =>
      loadSnaps.some((s) => w.dueMs <= s.endMs && w.doneMs >= s.startMs)
    );
    const loadOther = loadWrites.filter((w) => !inLoadSnaps.includes(w));
    const load1 = writesDuring(inLoadSnaps, loadStartMs, loadEndMs);
    const load2 = writesDuring(loadOther, loadStartMs, loadEndMs);

    // 3. Disk use (after the compaction that follows the snapshot).
    const disk = await _diskUse(node.node(_ID).dataDir);

    // 4. Restart.
    const stopT0 = performance.now();
    await node.stop(_ID, 120_000);
    const stopMs = performance.now() - stopT0;
    const t0 = performance.now();
    await node.start(_ID, { waitForHealth: false });
    const times = { health: NaN, ready: NaN, read: NaN };
    let last = "nothing yet";
    const probe = async (path: string): Promise<{ status: number; text: string }> => {
      try {
        const res = await fetch(`${url}${path}`, { signal: AbortSignal.timeout(5000) });
        const text = await res.text();
        last = `GET ${path}: ${res.status} ${text.slice(0, 200)}`;
        return { status: res.status, text };
      } catch (error) {
        const cause = (error as Error).cause;
        last = `GET ${path}: ${(error as Error).message}${cause ? ` (${cause})` : ""}`;
        return { status: 0, text: "" };
      }
    };
    await waitFor(async () => {
      if (!node.isRunning(_ID)) throw new Error("the node exited during the restart");
      if (Number.isNaN(times.health)) {
        if ((await probe("/health")).status !== 200) return false;
        times.health = performance.now() - t0;
      }
      if (Number.isNaN(times.ready)) {
        if ((await probe("/ready")).status !== 200) return false;
        times.ready = performance.now() - t0;
      }
      const got = await probe(`/v1/data/${_KNOWN_KEY}`);
      if (got.status !== 200 || (JSON.parse(got.text) as { v?: string }).v !== _KNOWN_VALUE) {
        return false;
      }
      times.read = performance.now() - t0;
      return true;
    }, {
      deadlineMs: Math.min(remaining(), 600_000),
      intervalMs: 10,
      message: () => `the restarted node to serve a linearizable read (last: ${last})`,
    });
    const memRestarted = _memory(node.node(_ID).pid);

    // 5. Report.
    const live = liveDataBytes("k-", options.keys, VALUE.length) +
      liveDataBytes("bg-", bg.writes.length, VALUE.length) +
      _KNOWN_KEY.length + _KNOWN_VALUE.length;
    const header = ["background writes", "n", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "failed"];
    header.push("notes");
    const latencyTable = markdownTable(header, [
      _statsRow(
        "alone, no snapshot (baseline)",
        latencyStats(quiet.latenciesMs),
        quiet.failed,
        `${((quietEndMs - quietStartMs) / 1000).toFixed(0)} s window`,
      ),
      _statsRow(
        `alone, during the snapshot of ${measured.keys} keys`,
        latencyStats(during.latenciesMs),
        during.failed,
        `index ${measured.index}, ${measured.ms} ms`,
      ),
      _statsRow(
        "during the bulk load, no snapshot",
        latencyStats(load2.latenciesMs),
        load2.failed,
        `${options.connections} writers`,
      ),
      _statsRow(
        `during the bulk load, during snapshots`,
        latencyStats(load1.latenciesMs),
        load1.failed,
        `${loadSnaps.length} snapshots, ${
          loadSnaps.length === 0 ? "-" : Math.max(...loadSnaps.map((s) => s.ms))
        } ms longest`,
      ),
    ], [false, true, true, true, true, true, true, false]);
    const mib = (kb: number | null) => kb === null ? "-" : formatBytes(kb * 1024);
    const summaryTable = markdownTable(["measure", "value"], [
      [
        "bulk load",
        `${options.keys} keys in ${loadSec.toFixed(1)} s = ${
          formatRate(fill.requests / loadSec)
        } writes/s (${options.connections} writers, ${loadgen}), ${fill.errors} errors`,
      ],
      [
        "snapshot of the full state",
        `${measured.keys} keys at index ${measured.index} in ${measured.ms} ms`,
      ],
      [
        "disk: data dir",
        `${formatBytes(disk.totalBytes)} (${formatBytes(disk.allocatedBytes)} allocated)`,
      ],
      ["disk: WAL", `${formatBytes(disk.walBytes)} in ${disk.walFiles} files`],
      ["disk: snapshots", `${formatBytes(disk.snapshotBytes)} in ${disk.snapshotFiles} files`],
      ["disk: other", formatBytes(disk.otherBytes)],
      ["graceful stop (SIGTERM to exit)", `${stopMs.toFixed(0)} ms`],
      ["restart: spawn to /health 200", `${times.health.toFixed(0)} ms`],
      ["restart: spawn to /ready 200", `${times.ready.toFixed(0)} ms`],
      ["restart: spawn to linearizable GET 200", `${times.read.toFixed(0)} ms`],
      ["live data (keys + values)", formatBytes(live)],
      [
        "RSS after the load: VmRSS / VmHWM",
        `${mib(memLoaded.rssKb)} / ${mib(memLoaded.hwmKb)} (${
          memLoaded.rssKb === null ? "-" : ((memLoaded.rssKb * 1024) / live).toFixed(1)
        }x live data)`,
      ],
      [
        `RSS ${_SETTLE_MS / 1000} s later, background stream only: VmRSS`,
        `${mib(memSettled.rssKb)} (${
          memSettled.rssKb === null ? "-" : ((memSettled.rssKb * 1024) / live).toFixed(1)
        }x live data)`,
      ],
      [
        "RSS after the restart: VmRSS / VmHWM",
        `${mib(memRestarted.rssKb)} / ${mib(memRestarted.hwmKb)} (${
          memRestarted.rssKb === null ? "-" : ((memRestarted.rssKb * 1024) / live).toFixed(1)
        }x live data)`,
      ],
    ]);
    console.log(`\n## Results\n\nload average at end: ${_loadAvg()}\n`);
    console.log(summaryTable);
    console.log(
      `\nBackground stream: ${options.rate} writes/s, open loop, latency from when each write was due${
        bg.skipped > 0
          ? `; ${bg.skipped} writes skipped (over ${_BG_MAX_OUTSTANDING} outstanding)`
          : ""
      }.\n`,
    );
    console.log(latencyTable);
    if (options.json !== undefined) {
      await Deno.writeTextFile(
        options.json,
        JSON.stringify(
          {
            options,
            loadgen,
            load: { ...fill, seconds: loadSec },
            snapshots: snapshots.snapshots,
            measured,
            background: {
              baseline: latencyStats(quiet.latenciesMs),
              duringSnapshot: latencyStats(during.latenciesMs),
              duringLoad: latencyStats(load2.latenciesMs),
              duringLoadSnapshots: latencyStats(load1.latenciesMs),
              failed: { baseline: quiet.failed, duringSnapshot: during.failed },
              skipped: bg.skipped,
            },
            disk,
            restartMs: { stop: stopMs, ...times },
            memoryKb: { loaded: memLoaded, settled: memSettled, restarted: memRestarted },
            liveDataBytes: live,
          },
          null,
          2,
        ) + "\n",
      );
      console.log(`\nwrote ${options.json}`);
    }
    return 0;
  } catch (error) {
    console.error(`bench:snapshot failed: ${error instanceof Error ? error.stack : error}`);
    if (cluster !== null && cluster.isRunning(_ID)) {
      console.error(cluster.formatLogs(undefined, 30));
    }
    return 1;
  } finally {
    await cleanup();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
