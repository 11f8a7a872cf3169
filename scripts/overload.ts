/**
 * Load past the limits of a real 3-node raftkv cluster: `deno task overload`.
 *
 * ## Method
 *
 * - **Cluster.** Three `deno run main.ts` processes on 127.0.0.1 (free ports, a fresh temporary
 *   directory, removed at the end), started by the test harness with the default limits
 *   (`--max-inflight-requests 1024`, `--max-inflight-bytes` 64 MiB, `--max-pending-proposals
 *   4096`, `--max-pending-bytes` 64 MiB, `--max-concurrent-backups 2`), the default timings (election timeout 1000 ms,
 *   heartbeat 100 ms), and two settings for a bounded run: `--snapshot-threshold 200` (the log
 *   kept in memory is compacted every 200 entries: with 1 MiB values, the default 10000 would
 *   keep up to 10 GiB of log in memory, a separate knob from back-pressure) and
 *   `--backup-timeout 5s`. Every request goes to the leader (the flood to a follower would test
 *   the forwarder, bounded by `--max-forwarded-requests`, instead).
 * - **Phase 1, connections.** `--connections` (default 3000) raw TCP connections are opened to
 *   the leader's API port (250 connects at a time), then every one of them sends one small
 *   HTTP/1.1 keep-alive write at the same moment; answers are counted by status (429 must carry
 *   `Retry-After`). The connections then stay open and idle for `--idle-seconds` (default 10):
 *   the script counts how many the node closed, checks that `/health` still answers on a new
 *   connection, then sends a second request on every connection still open, and closes them.
 * - **Phase 2, flood.** `--clients` (default 256) concurrent loops send `POST /v1/data` with
 *   `--value-bytes` (default 1 MiB) values over 64 keys to the leader, each sending its next
 *   write as soon as the last is answered (ignoring `Retry-After`, to stay past the limits;
 *   `--honour-retry-after` makes them wait as told), for
 *   `--flood-seconds` (default 20) or `--flood-max` (default 6000) requests, whichever comes
 *   first. Answers are counted by status; 429 and 503 must carry `Retry-After`. Every 500 ms the
 *   script asks each node for `/v1/status` to count leader changes. Then it waits until every
 *   node has applied everything committed, and checks that a write and a read still work.
 * - **Phase 3, backups.** Three `GET /v1/snapshot` downloads are started at once and left
 *   unread: the third must be answered 429; the first two must fail once `--backup-timeout`
 *   has passed; then one full download is read to the end.
 * - **Measured.** Per node and per phase, the peak RSS: `VmHWM` from `/proc/<pid>/status`,
 *   reset at the start of each phase by writing 5 to `/proc/<pid>/clear_refs` (where that is
 *   not allowed, the highest `VmRSS` sampled every 200 ms), and the RSS at rest before the
 *   phases. Linux only.
 * - **Checks.** The run fails (exit code 1) if a node exits, if the burst sees no 429 or the flood
 *   no 429 or 503, if either sees a 500 or a request without an answer, if a 429 or 503 lacks
 *   `Retry-After`, if the nodes do not all apply everything or the cluster does not serve a
 *   write afterwards, or if the backups are not bounded as above. 502, 504 and 408 are
 *   reported, not failures: under overload a write may be accepted and not be committed within
 *   `--api-timeout` (a leader change on a saturated machine does that).
 * - **Bounds.** Each phase is bounded in count and time. Everything started is stopped at the
 *   end, also on failure and Ctrl-C. `--only flood,backups` runs some phases; `--node-flag=<f>`
 *   (repeated) adds node flags, e.g. `--node-flag=--max-inflight-bytes --node-flag=16777216`.
 * - **Open files.** The script and the leader each need one descriptor per connection. When the
 *   soft limit (`ulimit -n`) is too low for `--connections` plus 512, the script runs itself
 *   again under `sh -c 'ulimit -n <n>'` (the nodes inherit the limit), up to the hard limit;
 *   past the hard limit it uses fewer connections and says so.
 *
 * ```sh
 * deno task overload
 * deno task overload --connections 5000 --clients 512 --flood-seconds 30
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { intOption } from "../testing/args.ts";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { parseProcStatusKb } from "./bench_lib.ts";

const _encoder = new TextEncoder();
const _KEYS = 64;
const _BACKUP_TIMEOUT_MS = 5000;
/** Descriptors kept for everything but the connections (files, peers, the flood's clients). */
const _SPARE_FILES = 512;

/** The script's options. */
interface Options {
  connections: number;
  clients: number;
  valueBytes: number;
  floodSeconds: number;
  floodMax: number;
  idleSeconds: number;
  /** Whether flood clients wait `Retry-After` seconds after a 429 or 503. */
  honourRetryAfter: boolean;
  /** The phases to run. */
  only: string[];
  /** Flags for every node, after the script's own. */
  nodeFlags: string[];
  raisedLimit: boolean;
}

function _parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      connections: { type: "string", default: "3000" },
      clients: { type: "string", default: "256" },
      "value-bytes": { type: "string", default: "1048576" },
      "flood-seconds": { type: "string", default: "20" },
      "flood-max": { type: "string", default: "6000" },
      "idle-seconds": { type: "string", default: "10" },
      "honour-retry-after": { type: "boolean", default: false },
      only: { type: "string", default: "connections,flood,backups" },
      "node-flag": { type: "string", multiple: true, default: [] },
      "raised-limit": { type: "boolean", default: false },
    },
    strict: true,
  });
  const int = (name: string, text: string, max: number) => intOption(name, text, 0, 1, max);
  return {
    connections: int("connections", values.connections, 20_000),
    clients: int("clients", values.clients, 4096),
    valueBytes: int("value-bytes", values["value-bytes"], 1_048_576),
    floodSeconds: int("flood-seconds", values["flood-seconds"], 600),
    floodMax: int("flood-max", values["flood-max"], 100_000),
    idleSeconds: int("idle-seconds", values["idle-seconds"], 600),
    honourRetryAfter: values["honour-retry-after"],
    only: values.only.split(",").map((p) => p.trim()),
    nodeFlags: values["node-flag"],
    raisedLimit: values["raised-limit"],
  };
}

// ---- open files ----------------------------------------------------------------------------

function _openFileLimits(): { soft: number; hard: number } | null {
  try {
    const text = Deno.readTextFileSync("/proc/self/limits");
    const match = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(text);
    if (match === null) return null;
    const value = (s: string | undefined) => s === "unlimited" ? Infinity : Number(s);
    return { soft: value(match[1]), hard: value(match[2]) };
  } catch {
    return null;
  }
}

/**
 * Runs this script again with a raised soft limit of open files when it is too low; returns the
 * child's exit code, or null to go on here (with `options.connections` lowered if need be).
 */
async function _ensureOpenFiles(options: Options, args: string[]): Promise<number | null> {
  const limits = _openFileLimits();
  const need = options.connections + _SPARE_FILES;
  if (limits === null || limits.soft >= need) return null;
  const target = Math.min(need, limits.hard);
  if (!options.raisedLimit && target > limits.soft) {
    console.log(`raising the open-file limit from ${limits.soft} to ${target} (ulimit -n)`);
    const script = fileURLToPath(import.meta.url);
    const child = new Deno.Command("sh", {
      args: [
        "-c",
        `ulimit -n ${target} && exec "$@"`,
        "sh",
        Deno.execPath(),
        "run",
        "--allow-all",
        script,
        ...args,
        "--raised-limit",
      ],
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    return (await child.status).code;
  }
  const fitting = Math.max(1, Math.min(options.connections, limits.soft - _SPARE_FILES));
  if (fitting < options.connections) {
    console.log(
      `the open-file limit is ${limits.soft} (hard ${limits.hard}): using ${fitting} ` +
        `connections instead of ${options.connections}; raise the hard limit for more`,
    );
    options.connections = fitting;
  }
  return null;
}

// ---- memory --------------------------------------------------------------------------------

function _statusKb(pid: number, field: string): number | null {
  try {
    return parseProcStatusKb(Deno.readTextFileSync(`/proc/${pid}/status`), field);
  } catch {
    return null;
  }
}

/** The peak RSS of some processes over a phase (see the module doc). */
class _PeakRss {
  #pids: number[];
  #reset: boolean[];
  #sampled: number[];
  #timer: ReturnType<typeof setInterval>;

  constructor(pids: number[]) {
    this.#pids = pids;
    this.#reset = pids.map((pid) => {
      try {
        Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
        return true;
      } catch {
        return false;
      }
    });
    this.#sampled = pids.map(() => 0);
    this.#sample();
    this.#timer = setInterval(() => this.#sample(), 200);
  }

  #sample(): void {
    this.#pids.forEach((pid, i) => {
      const rss = _statusKb(pid, "VmRSS");
      if (rss !== null) this.#sampled[i] = Math.max(this.#sampled[i]!, rss);
    });
  }

  /** Stops sampling; returns each process's peak in KiB. */
  stop(): number[] {
    clearInterval(this.#timer);
    this.#sample();
    return this.#pids.map((pid, i) => {
      const hwm = this.#reset[i] ? _statusKb(pid, "VmHWM") : null;
      return hwm ?? this.#sampled[i]!;
    });
  }
}

function _mib(kb: number | null): string {
  return kb === null ? "?" : `${(kb / 1024).toFixed(0)} MiB`;
}

// ---- raw HTTP/1.1 connections --------------------------------------------------------------

/** An HTTP/1.1 answer read from a raw connection. */
interface RawAnswer {
  status: number;
  headers: Headers;
}

/** A kept-alive raw connection that reads answers as they come. */
class _RawConn {
  readonly conn: Deno.TcpConn;
  #bytes = new Uint8Array(0);
  #closed = false;
  #wake: (() => void) | null = null;

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
    this.#pump();
  }

  /** Whether the connection was closed (by the node, or by a failure). */
  get closed(): boolean {
    return this.#closed;
  }

  async #pump(): Promise<void> {
    const buffer = new Uint8Array(16 * 1024);
    try {
      while (true) {
        const n = await this.conn.read(buffer);
        if (n === null) break;
        const next = new Uint8Array(this.#bytes.length + n);
        next.set(this.#bytes);
        next.set(buffer.subarray(0, n), this.#bytes.length);
        this.#bytes = next;
        this.#wake?.();
      }
    } catch {
      // Reset: counts as closed.
    }
    this.#closed = true;
    this.#wake?.();
  }

  /** Sends a whole request. */
  async send(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) offset += await this.conn.write(bytes.subarray(offset));
  }

  /** The next complete answer, or null if the connection closes or `deadlineMs` passes first. */
  async answer(deadlineMs: number): Promise<RawAnswer | null> {
    const end = performance.now() + deadlineMs;
    while (true) {
      const parsed = this.#take();
      if (parsed !== null) return parsed;
      const left = end - performance.now();
      if (this.#closed || left <= 0) return null;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }

  /** Takes one complete answer (with a Content-Length body) off the buffer. */
  #take(): RawAnswer | null {
    const bytes = this.#bytes;
    let end = -1;
    for (let i = 0; i + 3 < bytes.length; i++) {
      if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
        end = i;
        break;
      }
    }
    if (end === -1) return null;
    const [statusLine = "", ...lines] = new TextDecoder().decode(bytes.subarray(0, end)).split(
      "\r\n",
    );
    const headers = new Headers();
    for (const line of lines) {
      const colon = line.indexOf(":");
      if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    }
    const length = Number(headers.get("content-length") ?? 0);
    if (bytes.length < end + 4 + length) return null;
    this.#bytes = bytes.slice(end + 4 + length);
    return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? 0), headers };
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

function _smallWrite(key: string): Uint8Array {
  const body = JSON.stringify({ k: key, v: "x" });
  return _encoder.encode(
    `POST /v1/data HTTP/1.1\r\nHost: raftkv\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\n\r\n${body}`,
  );
}

/** Counts of answers by status (or failure), and how many "retry" answers lacked Retry-After. */
class _Tally {
  readonly counts = new Map<string, number>();
  missingRetryAfter = 0;

  add(outcome: string, headers?: Headers): void {
    this.counts.set(outcome, (this.counts.get(outcome) ?? 0) + 1);
    if ((outcome === "429" || outcome === "503") && !headers?.has("retry-after")) {
      this.missingRetryAfter++;
    }
  }

  get(outcome: string): number {
    return this.counts.get(outcome) ?? 0;
  }

  toString(): string {
    return [...this.counts].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}: ${v}`)
      .join(", ");
  }
}

// ---- the phases ----------------------------------------------------------------------------

interface PhaseResult {
  name: string;
  peaks: number[];
  lines: string[];
  checks: [string, boolean][];
}

async function _connectionsPhase(
  cluster: ProcessCluster,
  leader: string,
  options: Options,
): Promise<PhaseResult> {
  const pids = cluster.ids.map((id) => cluster.node(id).pid!);
  const port = cluster.node(leader).apiPort;
  const peak = new _PeakRss(pids);
  const started = performance.now();
  const conns: _RawConn[] = [];
  let connectFailures = 0;
  try {
    for (let i = 0; i < options.connections; i += 250) {
      const batch = await Promise.allSettled(
        Array.from(
          { length: Math.min(250, options.connections - i) },
          () => Deno.connect({ hostname: "127.0.0.1", port }),
        ),
      );
      for (const result of batch) {
        if (result.status === "fulfilled") conns.push(new _RawConn(result.value));
        else connectFailures++;
      }
    }
    const connectMs = performance.now() - started;
    const first = new _Tally();
    await Promise.all(conns.map(async (c, i) => {
      try {
        await c.send(_smallWrite(`conn-${i % _KEYS}`));
        const answer = await c.answer(30_000);
        first.add(answer === null ? "no answer" : String(answer.status), answer?.headers);
      } catch (error) {
        first.add(`error ${(error as Error).name}`);
      }
    }));
    const burstMs = performance.now() - started - connectMs;
    const rssOpen = pids.map((pid) => _statusKb(pid, "VmRSS"));
    // Idle: does the node close kept-alive connections that send nothing?
    const idleStart = performance.now();
    await new Promise((resolve) => setTimeout(resolve, options.idleSeconds * 1000));
    const closedByNode = conns.filter((c) => c.closed).length;
    const health = await fetch(`${cluster.api(leader)}/health`, {
      signal: AbortSignal.timeout(5000),
    });
    await health.body?.cancel();
    const idleMs = performance.now() - idleStart;
    const second = new _Tally();
    const open = conns.filter((c) => !c.closed);
    await Promise.all(open.map(async (c, i) => {
      try {
        await c.send(_smallWrite(`conn-${i % _KEYS}`));
        const answer = await c.answer(30_000);
        second.add(answer === null ? "no answer" : String(answer.status), answer?.headers);
      } catch (error) {
        second.add(`error ${(error as Error).name}`);
      }
    }));
    return {
      name: "connections",
      peaks: peak.stop(),
      lines: [
        `${conns.length} connections to the leader ${leader} in ${
          (connectMs / 1000).toFixed(1)
        } s (${connectFailures} failed to connect)`,
        `one write on each at once, answered in ${(burstMs / 1000).toFixed(1)} s: ${first}`,
        `leader RSS with ${conns.length} idle connections open: ${
          _mib(rssOpen[cluster.ids.indexOf(leader)] ?? null)
        }`,
        `after ${(idleMs / 1000).toFixed(0)} s idle: ${closedByNode} closed by the node, ` +
        `/health on a new connection: ${health.status}`,
        `a second write on each of the ${open.length} still open: ${second}`,
      ],
      checks: [
        ["429 seen in the burst, and no 500 and no failed request", _noFailures(first, ["429"])],
        ["429 carries Retry-After", first.missingRetryAfter === 0],
        ["/health answers with the connections open", health.status === 200],
      ],
    };
  } finally {
    for (const c of conns) c.close();
    peak.stop();
  }
}

/** Whether one of `refusals` was answered, and no request got a 500, no answer or an error. */
function _noFailures(tally: _Tally, refusals: string[]): boolean {
  return refusals.some((status) => tally.get(status) > 0) &&
    [...tally.counts.keys()].every((k) => /^[1-5]\d\d$/.test(k) && k !== "500");
}

async function _floodPhase(
  cluster: ProcessCluster,
  leader: string,
  options: Options,
): Promise<PhaseResult> {
  const pids = cluster.ids.map((id) => cluster.node(id).pid!);
  const bodies = Array.from({ length: _KEYS }, (_, i) =>
    _encoder.encode(
      JSON.stringify({ k: `big-${i}`, v: String(i % 10).repeat(options.valueBytes) }),
    ));
  const peak = new _PeakRss(pids);
  const tally = new _Tally();
  const latencies: number[] = [];
  const terms = new Set<number>();
  const leaders = new Set<string>();
  let sent = 0;
  const started = performance.now();
  const end = started + options.floodSeconds * 1000;
  let flooding = true;
  const watcher = (async () => {
    while (flooding) {
      for (const id of cluster.ids) {
        const status = await cluster.status(id, 2000);
        if (status?.role === "leader") {
          terms.add(status.term);
          leaders.add(status.id);
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  })();
  const url = `${cluster.api(leader)}/v1/data`;
  await Promise.all(Array.from({ length: options.clients }, async (_, client) => {
    while (performance.now() < end && sent < options.floodMax) {
      const n = sent++;
      const t0 = performance.now();
      try {
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: bodies[(n + client) % _KEYS]!,
          signal: AbortSignal.timeout(30_000),
        });
        await res.body?.cancel();
        tally.add(String(res.status), res.headers);
        if (res.status === 200) latencies.push(performance.now() - t0);
        const retryAfter = Number(res.headers.get("retry-after") ?? NaN);
        if (options.honourRetryAfter && retryAfter > 0) {
          await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
        }
      } catch (error) {
        tally.add(`error ${(error as Error).name}`);
      }
    }
  }));
  flooding = false;
  await watcher;
  const floodMs = performance.now() - started;
  const peaks = peak.stop();
  // The cluster settles and serves.
  let settled = true;
  try {
    await waitFor(async () => {
      const all = await Promise.all(cluster.ids.map((id) => cluster.status(id, 3000)));
      return all.every((s) => s !== null && s.applied_index === s.commit_index) &&
        new Set(all.map((s) => s!.commit_index)).size === 1;
    }, { deadlineMs: 120_000, intervalMs: 200, message: "every node to apply everything" });
  } catch {
    settled = false;
  }
  let serves = false;
  try {
    await waitFor(async () => {
      const now = await cluster.waitForLeader(30_000);
      const put = await cluster.request(now, "POST", "/v1/data", { k: "after", v: "flood" });
      if (put.status !== 200) return false;
      const read = await cluster.request(now, "GET", "/v1/data/after");
      return read.status === 200;
    }, { deadlineMs: 60_000, intervalMs: 500 });
    serves = true;
  } catch {
    serves = false;
  }
  latencies.sort((a, b) => a - b);
  const pct = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  const acked = tally.get("200");
  return {
    name: "flood",
    peaks,
    lines: [
      `${sent} writes of ${options.valueBytes} bytes from ${options.clients} clients in ${
        (floodMs / 1000).toFixed(1)
      } s: ${tally}`,
      `acknowledged: ${acked} (${(acked / (floodMs / 1000)).toFixed(1)}/s, ${
        ((acked * options.valueBytes) / (floodMs / 1000) / 1048576).toFixed(1)
      } MiB/s); latency of acknowledged writes p50 ${pct(0.5)?.toFixed(0)} ms, p99 ${
        pct(0.99)?.toFixed(0)
      } ms`,
      `leaders seen: ${[...leaders].join(", ")} in terms ${[...terms].join(", ")}`,
      `afterwards: every node applied everything: ${settled}; a write and a read work: ${serves}`,
    ],
    checks: [
      ["429 or 503 seen, and no 500 and no failed request", _noFailures(tally, ["429", "503"])],
      ["429 and 503 carry Retry-After", tally.missingRetryAfter === 0],
      ["every node applied everything afterwards", settled],
      ["the cluster serves a write and a read afterwards", serves],
    ],
  };
}

async function _backupPhase(
  cluster: ProcessCluster,
  leader: string,
  backupTimeoutMs: number,
): Promise<PhaseResult> {
  const pids = cluster.ids.map((id) => cluster.node(id).pid!);
  const peak = new _PeakRss(pids);
  const url = `${cluster.api(leader)}/v1/snapshot`;
  // Separate clients: three downloads at once need three connections.
  const clients = [0, 1, 2].map(() => Deno.createHttpClient({ http1: true, http2: false }));
  try {
    const held = await Promise.all(
      clients.map((client) => fetch(url, { client, signal: AbortSignal.timeout(60_000) })),
    );
    const statuses = held.map((r) => r.status).sort();
    const refused = held.find((r) => r.status === 429);
    const retryAfter = refused?.headers.get("retry-after") ?? null;
    await refused?.body?.cancel();
    // The two downloads left unread past the node's --backup-timeout are cut off: reading them
    // afterwards gets what was buffered, then an error.
    await new Promise((resolve) => setTimeout(resolve, backupTimeoutMs + 1000));
    const cut = await Promise.all(
      held.filter((r) => r.status === 200).map(async (r) => {
        try {
          await r.arrayBuffer();
          return "read whole";
        } catch {
          return "cut off";
        }
      }),
    );
    const full = await fetch(url, { signal: AbortSignal.timeout(60_000) });
    const bytes = full.status === 200 ? (await full.arrayBuffer()).byteLength : 0;
    return {
      name: "backups",
      peaks: peak.stop(),
      lines: [
        `three downloads at once: ${statuses.join(", ")} (Retry-After ${retryAfter})`,
        `the two left unread for ${backupTimeoutMs / 1000 + 1} s, then read: ${cut.join(", ")}`,
        `a download afterwards: ${full.status}, ${(bytes / 1048576).toFixed(1)} MiB`,
      ],
      checks: [
        ["the third concurrent backup is refused with 429", statuses.join() === "200,200,429"],
        ["unread backups are cut off at the deadline", cut.every((c) => c === "cut off")],
        ["a backup works afterwards", full.status === 200 && bytes > 0],
      ],
    };
  } finally {
    for (const client of clients) client.close();
    peak.stop();
  }
}

// ---- main ----------------------------------------------------------------------------------

async function main(args: string[]): Promise<number> {
  const options = _parseOptions(args);
  const child = await _ensureOpenFiles(options, args.filter((a) => a !== "--raised-limit"));
  if (child !== null) return child;
  if (Deno.build.os !== "linux") {
    console.error("overload: reads /proc, so it runs on Linux only");
    return 2;
  }
  console.log(
    `overload: ${options.connections} connections, then ${options.clients} clients writing ` +
      `${options.valueBytes}-byte values for ${options.floodSeconds} s (at most ${options.floodMax})`,
  );
  const cluster = await startCluster({
    size: 3,
    nodeFlags: [
      "--election-timeout",
      "1000",
      "--heartbeat",
      "100",
      "--snapshot-threshold",
      "200",
      "--backup-timeout",
      `${_BACKUP_TIMEOUT_MS}ms`,
      ...options.nodeFlags,
    ],
  });
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    console.error("\ninterrupted: stopping the cluster");
    cluster.close().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    const leader = await cluster.waitForLeader(30_000);
    const rest = cluster.ids.map((id) => _statusKb(cluster.node(id).pid!, "VmRSS"));
    console.log(
      `nodes (leader ${leader}): ${
        cluster.ids.map((id, i) => `${id} pid ${cluster.node(id).pid} RSS ${_mib(rest[i]!)}`)
          .join(", ")
      }`,
    );
    const results: PhaseResult[] = [];
    const phases: [string, () => Promise<PhaseResult>][] = [
      ["connections", () => _connectionsPhase(cluster, leader, options)],
      ["flood", async () => _floodPhase(cluster, await cluster.waitForLeader(30_000), options)],
      [
        "backups",
        async () => _backupPhase(cluster, await cluster.waitForLeader(30_000), _BACKUP_TIMEOUT_MS),
      ],
    ];
    for (const [name, phase] of phases) {
      if (!options.only.includes(name)) continue;
      console.log(`\n${new Date().toISOString()} ${name}...`);
      const result = await phase();
      results.push(result);
      console.log(`\n== ${result.name}`);
      for (const line of result.lines) console.log(`  ${line}`);
      console.log(
        `  peak RSS: ${cluster.ids.map((id, i) => `${id} ${_mib(result.peaks[i]!)}`).join(", ")}`,
      );
    }
    const checks = results.flatMap((r) => r.checks);
    checks.push([
      "no node exited",
      cluster.ids.every((id) => cluster.isRunning(id)),
    ]);
    console.log("\n== summary");
    for (const [name, ok] of checks) console.log(`  ${ok ? "ok  " : "FAIL"} ${name}`);
    console.log(
      `  peak RSS over all phases: ${
        cluster.ids.map((id, i) => `${id} ${_mib(Math.max(...results.map((r) => r.peaks[i]!)))}`)
          .join(", ")
      }`,
    );
    if (checks.some(([, ok]) => !ok)) {
      console.log(cluster.formatLogs(undefined, 20));
      return 1;
    }
    return 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    await cluster.close();
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
