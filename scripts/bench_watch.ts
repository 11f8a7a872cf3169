/**
 * The watch fan-out cell of `scripts/bench.ts`: many concurrent watchers of one prefix, spread
 * over the members, while a few writers change keys under it through the leader.
 *
 * - Processes: the writers run in the benchmark's process; the watchers run in 2 processes of
 *   their own (`bench_watcher.ts`, `deno run`), half of them each, so that reading 1,000
 *   streams does not delay the writes and their acknowledgements, nor the other way round.
 * - Watchers: watcher i follows member `i mod 3` (the leader first). Each is one HTTP/1.1
 *   connection that the watcher process writes and reads itself (`Deno.connect`, or
 *   `Deno.connectTls` trusting the system's CA; the parsing is in `bench_watch_lib.ts`):
 *   raftkv's `GET /v1/watch?prefix=P` (Server-Sent Events), etcd's gateway `POST /v3/watch`
 *   with a `create_request` for the prefix (answered with a chunked stream of JSON objects, one
 *   per line). A watch counts as in place when raftkv's answer head arrives with 200, and when
 *   etcd's `created` message arrives; the writes start once every watch is in place.
 * - Writers: 4 closed-loop writers put keys `P<n>` (100 keys, round robin) with the write's
 *   number as the value, for the cell's duration, against the leader (`fetch`, as the other
 *   cells' built-in load). A write counts once its answer arrived; that moment, the
 *   *acknowledgement*, stands for its commit (both systems answer once the write is committed
 *   and applied, so it is a little after the commit).
 * - Clocks: each event's arrival is stamped with the watcher process's `performance.now()` as
 *   soon as its bytes are parsed. Before the writes, the cell relates each watcher process's
 *   clock to its own with 20 clock readings over the processes' pipes (`clock` → the watcher's
 *   time; the reading with the shortest round trip counts, the watcher's time taken to be that
 *   of the round trip's middle), so the error is at most half that round trip (printed as
 *   "clocks related within"; well under a millisecond on an idle machine).
 * - Measured: events delivered per second to all watchers together (deliveries of acknowledged
 *   writes, from the first write to the last such delivery); the delay from a write's
 *   acknowledgement to each delivery of it, p50 and p99 (a delivery that arrives before the
 *   acknowledgement, as it can, counts as 0); the same from the moment each write was sent
 *   (commit latency included), for a bound from the other side; how many deliveries are missing
 *   when the writers stop and the stragglers are waited for (up to 10 s); and errors: failed
 *   writes, watches that could not be put in place, streams that broke.
 * - Bounds: the cell never waits without a limit (see {@linkcode measureWatchFanout}); on
 *   failure it kills its watcher processes and throws, and the benchmark reports the failure
 *   and goes on.
 *
 * Why not `fetch` for the watchers: with the streams opened by `fetch` in one process, etcd's
 * gateway streams delivered every event, but after the cell aborted them (one `AbortSignal` for
 * all), the pending reads of the response bodies never ended (observed with 100 watchers over 3
 * members, and with 1,000 on one member, with Deno 2.9.6), so the cell waited until the members
 * were stopped. Closing a connection the cell owns ends its reads at once.
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { readLines } from "../testing/read_lines.ts";
import { formatMs, formatRate, percentile, type SystemName } from "./bench_lib.ts";
import type { FinishInput, FinishOutput, WatcherConfig } from "./bench_watcher.ts";

/** How the cell reaches one system. */
export interface WatchTarget {
  /** Which system. */
  system: SystemName;
  /** Its label in the output (`raftkv`, `etcd+TLS`). */
  label: string;
  /** Every member's client URL. */
  urls: readonly string[];
  /** The leader's client URL, where the writes go. */
  leaderUrl: string;
  /** etcd's gateway prefix (`/v3`). */
  gateway: string;
  /** An HTTP client trusting the system's CA, if it uses TLS. */
  client: Deno.HttpClient | undefined;
  /** Headers every request carries. */
  headers: Record<string, string>;
  /** The PEM of the system's CA, if it uses TLS (for the watchers' own connections). */
  ca?: string | undefined;
}

/** What one watch fan-out cell measured. */
export interface WatchFanoutResult {
  /** The system's label. */
  label: string;
  /** Watchers connected. */
  watchers: number;
  /** Writes acknowledged. */
  writes: number;
  /** Deliveries of acknowledged writes, over all watchers. */
  delivered: number;
  /** Deliveries expected: writes times watchers. */
  expected: number;
  /** Deliveries per second. */
  eventsPerSec: number;
  /** Delay from acknowledgement to delivery, median, in milliseconds. */
  p50Ms: number;
  /** The same, 99th percentile. */
  p99Ms: number;
  /** Delay from the moment the write was sent to delivery, median, in milliseconds. */
  sentP50Ms: number;
  /** The same, 99th percentile. */
  sentP99Ms: number;
  /** The delay from acknowledgement, p99, of the watchers of each member (the leader first). */
  memberP99Ms: number[];
  /** How long connecting every watcher took, in milliseconds. */
  connectMs: number;
  /**
   * The most by which the watcher processes' clocks may be off from the writer's (half the
   * shortest round trip of a clock reading), in milliseconds.
   */
  clockErrorMs: number;
  /** Failed writes, watches that did not start and broken watch streams. */
  errors: number;
}

const _WRITERS = 4;
const _KEYS = 100;
const _STRAGGLER_WAIT_MS = 10_000;
/** Watcher processes: the watchers are split evenly over them. */
const _PROCESSES = 2;
/** Bound on starting the watcher processes and putting every watch in place. */
const _CONNECT_LIMIT_MS = 120_000;
/** Bound on each exchange with a watcher process after that (a clock reading, a count). */
const _REPLY_LIMIT_MS = 30_000;
/** Rounds of clock readings per watcher process; the one with the shortest round trip counts. */
const _CLOCK_ROUNDS = 20;

/**
 * Runs one watch fan-out cell. It never waits without a bound: connecting is limited to 120 s,
 * each exchange with a watcher process to 30 s, the writes to the duration plus a 10 s request
 * timeout, the stragglers to 10 s, and the watcher processes also exit by themselves after the
 * sum of those. On any failure it kills the watcher processes and throws.
 *
 * @param target The system.
 * @param watchers How many watchers.
 * @param durationSec How long the writers write.
 * @param run A number that keeps the cell's prefix apart from earlier runs'.
 * @returns What it measured.
 */
export async function measureWatchFanout(
  target: WatchTarget,
  watchers: number,
  durationSec: number,
  run: number,
): Promise<WatchFanoutResult> {
  const prefix = `wf-${run}-${Date.now()}/`;
  const dir = await Deno.makeTempDir({ prefix: "raftkv-bench-watch-" });
  const lifetimeMs = _CONNECT_LIMIT_MS + durationSec * 1000 + 10_000 + _STRAGGLER_WAIT_MS +
    10 * _REPLY_LIMIT_MS;
  const counts = Array.from(
    { length: Math.min(_PROCESSES, watchers) },
    (_, i) => Math.floor(watchers / _PROCESSES) + (i < watchers % _PROCESSES ? 1 : 0),
  );
  const children: _WatcherProcess[] = [];
  try {
    const connectStarted = performance.now();
    let first = 0;
    for (const count of counts) {
      const config: WatcherConfig = {
        system: target.system,
        urls: [...target.urls],
        watchers: count,
        first,
        prefix,
        gateway: target.gateway,
        headers: target.headers,
        ca: target.ca ?? null,
        lifetimeMs,
      };
      first += count;
      children.push(new _WatcherProcess(config));
    }
    const readies = await _within(
      Promise.all(children.map((c) => c.reply("ready"))),
      _CONNECT_LIMIT_MS,
      "connecting the watchers",
    );
    const connectMs = performance.now() - connectStarted;
    let connected = 0;
    let errors = 0;
    for (const line of readies) {
      const [, ok, failed] = line.split(" ");
      connected += Number(ok);
      errors += Number(failed);
    }
    // How each watcher process's clock relates to this one's (see the module doc).
    const clocks = [];
    for (const c of children) clocks.push(await c.clockOffset());

    const acked = new Map<string, number>();
    const sentAt = new Map<string, number>();
    const started = performance.now();
    const until = started + durationSec * 1000;
    let next = 0;
    await Promise.all(Array.from({ length: _WRITERS }, async () => {
      while (performance.now() < until) {
        const n = String(next++);
        const key = `${prefix}${Number(n) % _KEYS}`;
        sentAt.set(n, performance.now());
        try {
          if (await _put(target, key, n)) acked.set(n, performance.now());
          else errors++;
        } catch {
          errors++;
        }
      }
    }));
    // Wait for the stragglers: until every watcher has an event per write sent, or 10 s.
    const expected = acked.size * connected;
    const deadline = performance.now() + _STRAGGLER_WAIT_MS;
    for (;;) {
      let received = 0;
      for (const c of children) received += Number((await c.ask("count")).split(" ")[1]);
      if (received >= next * connected || performance.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 100));
    }

    const outputs: FinishOutput[] = [];
    for (const [i, c] of children.entries()) {
      const offset = clocks[i]!.offset;
      const input: FinishInput = [...acked].map((
        [n, ackAt],
      ) => [n, sentAt.get(n)! + offset, ackAt + offset]);
      const file = join(dir, `acked-${i}.json`);
      await Deno.writeTextFile(file, JSON.stringify(input));
      await c.ask(`finish ${file}`);
      const out = JSON.parse(await Deno.readTextFile(`${file}.out`)) as FinishOutput;
      out.lastDelivery -= offset;
      outputs.push(out);
      await c.exited();
    }
    const memberP99Ms = target.urls.map((_, m) =>
      percentile(
        Float64Array.from(outputs.flatMap((o) => o.fromAck.filter((_, k) => o.member[k] === m)))
          .sort(),
        99,
      )
    );
    const fromAck = Float64Array.from(outputs.flatMap((o) => o.fromAck)).sort();
    const fromSent = Float64Array.from(outputs.flatMap((o) => o.fromSent)).sort();
    const lastDelivery = Math.max(started, ...outputs.map((o) => o.lastDelivery));
    errors += outputs.reduce((sum, o) => sum + o.broken, 0);
    const samples = outputs.flatMap((o) => o.errorSamples);
    if (samples.length > 0) console.error(`watch fan-out ${target.label}: ${samples.join("; ")}`);
    const seconds = Math.max(1e-3, (lastDelivery - started) / 1000);
    return {
      label: target.label,
      watchers: connected,
      writes: acked.size,
      delivered: fromAck.length,
      expected,
      eventsPerSec: fromAck.length / seconds,
      p50Ms: percentile(fromAck, 50),
      p99Ms: percentile(fromAck, 99),
      sentP50Ms: percentile(fromSent, 50),
      sentP99Ms: percentile(fromSent, 99),
      connectMs,
      memberP99Ms,
      clockErrorMs: Math.max(...clocks.map((c) => c.errorMs)),
      errors,
    };
  } finally {
    await Promise.all(children.map((c) => c.kill()));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The line printed for one cell. */
export function watchFanoutLine(r: WatchFanoutResult): string {
  const missing = r.expected - r.delivered;
  return `watch fan-out ${r.label}: ${r.watchers} watchers, ${r.writes} writes, ${
    formatRate(r.eventsPerSec)
  } events/s delivered, delay from ack p50 ${formatMs(r.p50Ms)} ms p99 ${
    formatMs(r.p99Ms)
  } ms (p99 by member, leader first: ${
    r.memberP99Ms.map((ms) => formatMs(ms)).join(", ")
  } ms), from send p50 ${formatMs(r.sentP50Ms)} ms p99 ${formatMs(r.sentP99Ms)} ms` +
    `${missing > 0 ? `, ${missing} deliveries missing` : ""}${
      r.errors > 0 ? `, ${r.errors} errors` : ""
    } (connecting took ${formatMs(r.connectMs)} ms; clocks related within ${
      formatMs(r.clockErrorMs)
    } ms)`;
}

/** The markdown table of the watch fan-out cells. */
export function watchFanoutTable(results: readonly WatchFanoutResult[]): string {
  const rows = results.map((r) =>
    `| ${r.label} | ${r.watchers} | ${r.writes} | ${formatRate(r.eventsPerSec)} | ${
      formatMs(r.p50Ms)
    } | ${formatMs(r.p99Ms)} | ${formatMs(r.sentP50Ms)} | ${formatMs(r.sentP99Ms)} | ${
      r.expected - r.delivered
    } | ${r.errors} |`
  );
  return [
    "| system | watchers | writes | events/s delivered | from ack p50 ms | from ack p99 ms | from send p50 ms | from send p99 ms | missing | errors |",
    "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    ...rows,
  ].join("\n");
}

async function _put(t: WatchTarget, key: string, value: string): Promise<boolean> {
  const init: RequestInit & { client?: Deno.HttpClient } = {
    method: t.system === "raftkv" ? "PUT" : "POST",
    headers: { ...t.headers, "content-type": "application/json" },
    signal: AbortSignal.timeout(10_000),
    body: t.system === "raftkv"
      ? JSON.stringify({ v: value })
      : JSON.stringify({ key: btoa(key), value: btoa(value) }),
  };
  if (t.client !== undefined) init.client = t.client;
  const url = t.system === "raftkv"
    ? `${t.leaderUrl}/v1/data/${encodeURIComponent(key)}`
    : `${t.leaderUrl}${t.gateway}/kv/put`;
  const res = await fetch(url, init);
  await res.body?.cancel();
  return res.ok;
}

/** A watcher process (`bench_watcher.ts`) and the line exchange with it. */
class _WatcherProcess {
  #child: Deno.ChildProcess;
  #lines: AsyncGenerator<string>;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #stderr: string[] = [];
  #status: Promise<Deno.CommandStatus>;

  constructor(config: WatcherConfig) {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "--allow-read",
        "--allow-write",
        fileURLToPath(new URL("./bench_watcher.ts", import.meta.url)),
        JSON.stringify(config),
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#status = child.status;
    this.#lines = readLines(child.stdout);
    this.#stdin = child.stdin.getWriter();
    (async () => {
      for await (const line of readLines(child.stderr)) {
        this.#stderr.push(line);
        if (this.#stderr.length > 20) this.#stderr.shift();
      }
    })().catch(() => {});
  }

  /** The next line it prints, whose first word must be `word`, within the reply bound. */
  async reply(word: string): Promise<string> {
    const next = await _within(this.#lines.next(), _CONNECT_LIMIT_MS, `waiting for "${word}"`);
    if (next.done) {
      throw new Error(
        `watcher process ended before "${word}": ${this.#stderr.join("\n").slice(-2000)}`,
      );
    }
    if (next.value.split(" ")[0] !== word) {
      throw new Error(`watcher process said ${JSON.stringify(next.value)}, not "${word}"`);
    }
    return next.value;
  }

  /** Sends a command and waits for its answer (bounded). */
  async ask(command: string): Promise<string> {
    await this.#stdin.write(new TextEncoder().encode(command + "\n"));
    const word = command.split(" ")[0] === "finish" ? "finished" : command.split(" ")[0]!;
    return await _within(this.reply(word), _REPLY_LIMIT_MS, `waiting for "${word}"`);
  }

  /**
   * Its clock minus this process's, from the clock reading with the shortest round trip; the
   * error is at most half that round trip.
   */
  async clockOffset(): Promise<{ offset: number; errorMs: number }> {
    let best = { offset: 0, errorMs: Infinity };
    for (let i = 0; i < _CLOCK_ROUNDS; i++) {
      const t0 = performance.now();
      const theirs = Number((await this.ask("clock")).split(" ")[1]);
      const t1 = performance.now();
      if ((t1 - t0) / 2 < best.errorMs) {
        best = { offset: theirs - (t0 + t1) / 2, errorMs: (t1 - t0) / 2 };
      }
    }
    return best;
  }

  /** Waits for it to exit (bounded). */
  async exited(): Promise<void> {
    await _within(this.#status, _REPLY_LIMIT_MS, "waiting for the watcher process to exit");
  }

  /** Kills it if it still runs, and waits for it. */
  async kill(): Promise<void> {
    try {
      this.#child.kill("SIGKILL");
    } catch { /* already exited */ }
    await this.#stdin.close().catch(() => {});
    await this.#status.catch(() => {});
  }
}

/** `promise`, or a rejection after `ms` milliseconds. */
async function _within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`watch fan-out: ${what} took over ${ms / 1000} s`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
