/**
 * The watch fan-out cell of `scripts/bench.ts`: many concurrent watchers of one prefix, spread
 * over the members, while a few writers change keys under it through the leader.
 *
 * - raftkv: `GET /v1/watch?prefix=P` (Server-Sent Events); etcd: its gRPC gateway's
 *   `POST /v3/watch` with a `create_request` for the prefix, answered with a stream of JSON
 *   objects.
 * - Writers: 4 closed-loop writers put keys `P<n>` (100 keys, round robin) with the write's
 *   number as the value, for the cell's duration, against the leader. A write counts once its
 *   answer arrived; that moment stands for its commit (the leader answers once committed and
 *   applied, so it is a little after the commit).
 * - Measured: events delivered per second to all watchers together (from the first write to the
 *   last delivery of an acknowledged write), and the delay from a write's acknowledgement to
 *   each delivery of it, p50 and p99 (a delivery that arrives before the acknowledgement, as on
 *   the leader it can, counts as 0); the same from the moment each write was sent (commit
 *   latency included), for a bound from the other side; and how many deliveries are missing when
 *   the writers stop and the stragglers are waited for (up to 10 s).
 *
 * @module
 */

import { readSse } from "../src/util/sse.ts";
import { formatMs, formatRate, percentile, type SystemName } from "./bench_lib.ts";

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
  /** How long connecting every watcher took, in milliseconds. */
  connectMs: number;
  /** Failed writes and broken watch streams. */
  errors: number;
}

const _WRITERS = 4;
const _KEYS = 100;
const _STRAGGLER_WAIT_MS = 10_000;

/**
 * Runs one watch fan-out cell.
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
  const abort = new AbortController();
  /** Arrival times of each write's deliveries, by the write's number. */
  const arrivals = new Map<string, number[]>();
  let errors = 0;
  let lastDelivery = 0;
  const deliver = (value: string) => {
    const at = performance.now();
    let list = arrivals.get(value);
    if (list === undefined) arrivals.set(value, list = []);
    list.push(at);
    lastDelivery = at;
  };
  const connectStarted = performance.now();
  const streams = Array.from({ length: watchers }, (_, i) => {
    const url = target.urls[i % target.urls.length]!;
    return _openWatch(target, url, prefix, deliver, abort.signal);
  });
  const opened = await Promise.allSettled(streams.map((s) => s.ready));
  const connected = opened.filter((r) => r.status === "fulfilled").length;
  errors += watchers - connected;
  const connectMs = performance.now() - connectStarted;

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
  const expected = acked.size * connected;
  const deadline = performance.now() + _STRAGGLER_WAIT_MS;
  const deliveredOf = () => {
    let count = 0;
    for (const n of acked.keys()) count += arrivals.get(n)?.length ?? 0;
    return count;
  };
  while (performance.now() < deadline && deliveredOf() < expected) {
    await new Promise((r) => setTimeout(r, 100));
  }
  abort.abort();
  await Promise.allSettled(streams.map((s) => s.done));
  errors += streams.filter((s) => s.broken()).length;

  const delays = new Float64Array(deliveredOf());
  const fromSent = new Float64Array(delays.length);
  let i = 0;
  for (const [n, ackAt] of acked) {
    for (const at of arrivals.get(n) ?? []) {
      fromSent[i] = at - sentAt.get(n)!;
      delays[i++] = Math.max(0, at - ackAt);
    }
  }
  delays.sort();
  fromSent.sort();
  const seconds = Math.max(1e-3, (lastDelivery - started) / 1000);
  return {
    label: target.label,
    watchers: connected,
    writes: acked.size,
    delivered: delays.length,
    expected,
    eventsPerSec: delays.length / seconds,
    p50Ms: percentile(delays, 50),
    p99Ms: percentile(delays, 99),
    sentP50Ms: percentile(fromSent, 50),
    sentP99Ms: percentile(fromSent, 99),
    connectMs,
    errors,
  };
}

/** The line printed for one cell. */
export function watchFanoutLine(r: WatchFanoutResult): string {
  const missing = r.expected - r.delivered;
  return `watch fan-out ${r.label}: ${r.watchers} watchers, ${r.writes} writes, ${
    formatRate(r.eventsPerSec)
  } events/s delivered, delay from ack p50 ${formatMs(r.p50Ms)} ms p99 ${
    formatMs(r.p99Ms)
  } ms, from send p50 ${formatMs(r.sentP50Ms)} ms p99 ${formatMs(r.sentP99Ms)} ms` +
    `${missing > 0 ? `, ${missing} deliveries missing` : ""}${
      r.errors > 0 ? `, ${r.errors} errors` : ""
    } (connecting took ${formatMs(r.connectMs)} ms)`;
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

interface _Stream {
  /** Resolves once the watch is in place on the member. */
  ready: Promise<void>;
  /** Resolves when the stream ends. */
  done: Promise<void>;
  /** Whether it ended before it was aborted. */
  broken(): boolean;
}

function _openWatch(
  t: WatchTarget,
  url: string,
  prefix: string,
  deliver: (value: string) => void,
  signal: AbortSignal,
): _Stream {
  const ready = Promise.withResolvers<void>();
  let broken = false;
  const done = (async () => {
    try {
      const init: RequestInit & { client?: Deno.HttpClient } = { signal, headers: t.headers };
      if (t.client !== undefined) init.client = t.client;
      if (t.system === "raftkv") {
        const res = await fetch(`${url}/v1/watch?prefix=${encodeURIComponent(prefix)}`, init);
        if (res.status !== 200) throw new Error(`watch answered ${res.status}`);
        ready.resolve();
        for await (const m of readSse(res.body!)) {
          if (m.event === "error") throw new Error(m.data);
          deliver((JSON.parse(m.data) as { v: string }).v);
        }
      } else {
        const end = prefix.slice(0, -1) +
          String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
        init.method = "POST";
        init.body = JSON.stringify({ create_request: { key: btoa(prefix), range_end: btoa(end) } });
        const res = await fetch(`${url}${t.gateway}/watch`, init);
        if (res.status !== 200) throw new Error(`watch answered ${res.status}`);
        for await (const line of _jsonLines(res.body!)) {
          const result = (JSON.parse(line) as {
            result?: { created?: boolean; events?: { kv?: { value?: string } }[] };
          }).result;
          if (result?.created) ready.resolve();
          for (const e of result?.events ?? []) deliver(atob(e.kv?.value ?? ""));
        }
      }
      if (!signal.aborted) broken = true;
    } catch (error) {
      if (!signal.aborted) broken = true;
      ready.reject(error);
    }
  })();
  ready.promise.catch(() => {});
  return { ready: ready.promise, done, broken: () => broken };
}

/** The JSON objects of a stream, one per line (as etcd's gateway streams them). */
async function* _jsonLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffer = "";
  for await (const text of body.pipeThrough(new TextDecoderStream())) {
    buffer += text;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line !== "") yield line;
    }
  }
  if (buffer.trim() !== "") yield buffer.trim();
}
