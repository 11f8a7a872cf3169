/**
 * The watchers of the watch fan-out cell (`bench_watch.ts`), in a process of their own so that
 * reading the streams does not share an event loop with the writers. Started by the cell as
 * `deno run --allow-net --allow-write bench_watcher.ts <config JSON>`; not meant to be run by
 * hand.
 *
 * Each watcher is its own HTTP/1.1 connection (`Deno.connect`, or `Deno.connectTls` with the
 * system's CA), written and read directly: raftkv's `GET /v1/watch?prefix=P` (Server-Sent
 * Events), or etcd's gateway `POST /v3/watch` with a `create_request` for the prefix (a body
 * sent whole with its `Content-Length`; the connection stays open, and the gateway answers with
 * a chunked stream of JSON lines). Every event's arrival is stamped with this process's
 * `performance.now()` as soon as its bytes are parsed.
 *
 * It talks with the cell in lines, on stdin and stdout:
 *
 * - it prints `ready <connected> <failed>` once every watch is in place (raftkv: the answer's
 *   head arrived with 200; etcd: the `created` message arrived) or failed;
 * - `clock` → `clock <performance.now()>`, for the cell to relate the two processes' clocks;
 * - `count` → `count <events received> <streams broken>`;
 * - `finish <JSON file>` (the file holds the acknowledged writes with their send and
 *   acknowledgement times, already in this process's clock) → it closes every connection,
 *   writes the delays to `<JSON file>.out` and prints `finished`, then exits.
 *
 * It exits by itself when stdin ends (the cell is gone) or after its configured lifetime.
 *
 * @module
 */

import { readSse } from "../src/util/sse.ts";
import { readLines } from "../testing/read_lines.ts";
import {
  httpRequestBytes,
  HttpResponseReader,
  LineSplitter,
  parseEtcdWatchLine,
} from "./bench_watch_lib.ts";

/** What the cell tells a watcher process (its first argument, as JSON). */
export interface WatcherConfig {
  /** `raftkv` or `etcd`. */
  system: "raftkv" | "etcd";
  /** The member URLs; watcher i connects to `urls[i % urls.length]`. */
  urls: string[];
  /** How many watchers this process runs. */
  watchers: number;
  /** The first watcher's number (so processes spread over the members alike). */
  first: number;
  /** The prefix watched. */
  prefix: string;
  /** etcd's gateway prefix (`/v3`). */
  gateway: string;
  /** Header fields every request carries. */
  headers: Record<string, string>;
  /** The system's CA (PEM) when it uses TLS. */
  ca: string | null;
  /** The process exits after this long whatever happens, in milliseconds. */
  lifetimeMs: number;
}

/** What the cell writes for `finish`: per acknowledged write, `[value, sentAt, ackAt]`. */
export type FinishInput = [string, number, number][];

/** What the process writes back after `finish`. */
export interface FinishOutput {
  /** Deliveries of acknowledged writes. */
  delivered: number;
  /** Delay from acknowledgement to each of them, ms (0 when it came first), unsorted. */
  fromAck: number[];
  /** Delay from the write's sending to each of them, ms, unsorted. */
  fromSent: number[];
  /** The member (index in the URLs) each of them came from. */
  member: number[];
  /** The last of them, in this process's clock. */
  lastDelivery: number;
  /** Streams that ended or failed before `finish`. */
  broken: number;
  /** The first few stream errors, for the report. */
  errorSamples: string[];
}

interface _Watcher {
  conn: Deno.Conn | null;
  closing: boolean;
  done: Promise<void>;
}

async function main(): Promise<void> {
  const config = JSON.parse(Deno.args[0]!) as WatcherConfig;
  setTimeout(() => {
    console.error(`watcher process: lifetime of ${config.lifetimeMs} ms over, exiting`);
    Deno.exit(3);
  }, config.lifetimeMs);

  /** Per write's value, the arrival times of its deliveries and the member each came from. */
  const arrivals = new Map<string, { at: number[]; member: number[] }>();
  let events = 0;
  let broken = 0;
  const errorSamples: string[] = [];
  const deliver = (member: number, value: string) => {
    const at = performance.now();
    let list = arrivals.get(value);
    if (list === undefined) arrivals.set(value, list = { at: [], member: [] });
    list.at.push(at);
    list.member.push(member);
    events++;
  };
  const fail = (w: _Watcher, error: unknown) => {
    if (w.closing) return;
    broken++;
    if (errorSamples.length < 5) errorSamples.push(String(error));
  };

  const readies: Promise<void>[] = [];
  const watchers: _Watcher[] = [];
  for (let i = 0; i < config.watchers; i++) {
    const member = (config.first + i) % config.urls.length;
    const url = config.urls[member]!;
    const ready = Promise.withResolvers<void>();
    const w: _Watcher = { conn: null, closing: false, done: Promise.resolve() };
    w.done = _watch(config, url, w, ready, (value) => deliver(member, value)).catch((error) => {
      ready.reject(error);
      fail(w, error);
    });
    readies.push(ready.promise);
    watchers.push(w);
  }
  const settled = await Promise.allSettled(readies);
  const connected = settled.filter((s) => s.status === "fulfilled").length;
  _send(`ready ${connected} ${config.watchers - connected}`);

  for await (const line of readLines(Deno.stdin.readable)) {
    if (line === "clock") _send(`clock ${performance.now()}`);
    else if (line === "count") _send(`count ${events} ${broken}`);
    else if (line.startsWith("finish ")) {
      const file = line.slice("finish ".length);
      const acked = JSON.parse(await Deno.readTextFile(file)) as FinishInput;
      for (const w of watchers) {
        w.closing = true;
        try {
          w.conn?.close();
        } catch { /* already closed */ }
      }
      await Promise.allSettled(watchers.map((w) => w.done));
      const out: FinishOutput = {
        delivered: 0,
        fromAck: [],
        fromSent: [],
        member: [],
        lastDelivery: 0,
        broken,
        errorSamples,
      };
      for (const [value, sentAt, ackAt] of acked) {
        const list = arrivals.get(value);
        for (const [k, at] of (list?.at ?? []).entries()) {
          out.delivered++;
          out.member.push(list!.member[k]!);
          out.fromAck.push(Math.round(Math.max(0, at - ackAt) * 1000) / 1000);
          out.fromSent.push(Math.round((at - sentAt) * 1000) / 1000);
          out.lastDelivery = Math.max(out.lastDelivery, at);
        }
      }
      await Deno.writeTextFile(`${file}.out`, JSON.stringify(out));
      _send("finished");
      Deno.exit(0);
    }
  }
  // stdin ended: the cell is gone.
  Deno.exit(2);
}

function _send(line: string): void {
  Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
}

/** One watcher: connects, sends its request, reads its stream until it ends or is closed. */
async function _watch(
  config: WatcherConfig,
  url: string,
  w: _Watcher,
  ready: PromiseWithResolvers<void>,
  deliver: (value: string) => void,
): Promise<void> {
  const u = new URL(url);
  const port = Number(u.port || (u.protocol === "https:" ? 443 : 80));
  const conn = u.protocol === "https:"
    ? await Deno.connectTls({
      hostname: u.hostname,
      port,
      ...(config.ca === null ? {} : { caCerts: [config.ca] }),
      alpnProtocols: ["http/1.1"],
    })
    : await Deno.connect({ hostname: u.hostname, port });
  w.conn = conn;
  if (w.closing) conn.close();
  const end = config.prefix.slice(0, -1) +
    String.fromCharCode(config.prefix.charCodeAt(config.prefix.length - 1) + 1);
  const request = config.system === "raftkv"
    ? httpRequestBytes(
      "GET",
      `${url}/v1/watch?prefix=${encodeURIComponent(config.prefix)}`,
      { ...config.headers, accept: "text/event-stream" },
      null,
    )
    : httpRequestBytes(
      "POST",
      `${url}${config.gateway}/watch`,
      { ...config.headers, "content-type": "application/json" },
      JSON.stringify({ create_request: { key: btoa(config.prefix), range_end: btoa(end) } }),
    );
  await _writeAll(conn, request);

  const reader = new HttpResponseReader();
  const lines = new LineSplitter();
  let sse: ReadableStreamDefaultController<Uint8Array> | null = null;
  let sseDone: Promise<void> | null = null;
  const onBody = (piece: Uint8Array) => {
    if (config.system === "raftkv") {
      sse!.enqueue(piece);
      return;
    }
    for (const line of lines.push(piece)) {
      if (line.trim() === "") continue;
      const m = parseEtcdWatchLine(line);
      if (m.failed !== null) throw new Error(`etcd watch: ${m.failed}`);
      if (m.created) ready.resolve();
      for (const v of m.values) deliver(v);
    }
  };
  let started = false;
  try {
    for await (const bytes of conn.readable) {
      const pieces = reader.push(bytes);
      if (reader.head !== null && !started) {
        started = true;
        if (reader.head.status !== 200) throw new Error(`watch answered ${reader.head.status}`);
        if (config.system === "raftkv") {
          const body = new ReadableStream<Uint8Array>({ start: (c) => void (sse = c) });
          ready.resolve();
          sseDone = (async () => {
            for await (const m of readSse(body)) {
              if (m.event === "error") throw new Error(`raftkv watch: ${m.data}`);
              deliver((JSON.parse(m.data) as { v: string }).v);
            }
          })();
          sseDone.catch(() => {});
        }
      }
      for (const piece of pieces) onBody(piece);
      if (reader.done) break;
    }
  } catch (error) {
    if (!w.closing) throw error;
  } finally {
    try {
      (sse as ReadableStreamDefaultController<Uint8Array> | null)?.close();
    } catch { /* the reader already stopped */ }
  }
  await sseDone;
  if (!w.closing) throw new Error("watch stream ended");
}

async function _writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

if (import.meta.main) await main();
