/**
 * Watches against real node processes: the same ordered stream on every node across a killed
 * leader, 410 for a `from` older than the history (bounded by events or by bytes), the
 * slow-watcher cutoff, and `raftkv watch`
 * carrying on across endpoints.
 *
 * @module
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { PERMISSION_FLAGS } from "../main.ts";
import {
  cleanEnv,
  type CommandOutput,
  freePorts,
  httpRequest,
  runCommand,
  startCluster,
  waitFor,
} from "../testing/harness.ts";
import { Watcher, type WatchEvent } from "../testing/watcher.ts";
import { readSse } from "../src/util/sse.ts";

const _MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

/** Runs `raftkv <args>` to its end. */
function raftkv(args: string[]): Promise<CommandOutput> {
  const argv = ["run", "--no-prompt", ...PERMISSION_FLAGS, _MAIN, ...args];
  return runCommand(Deno.execPath(), argv, cleanEnv(), Deno.cwd());
}

/** A write through any live node, retried on other nodes; its index, or null if unknown. */
async function put(urls: readonly string[], key: string, value: string): Promise<number | null> {
  for (let attempt = 0; attempt < 40; attempt++) {
    const url = urls[attempt % urls.length]!;
    try {
      const r = await httpRequest(
        `${url}/v1/data/${encodeURIComponent(key)}`,
        "PUT",
        { v: value },
        {
          timeoutMs: 3000,
        },
      );
      if (r.status === 200) return (r.json as { index: number }).index;
      if (r.status === 504 || r.status === 502) return null; // outcome unknown
    } catch {
      // Not reachable: try the next node.
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`put ${key} failed on every node`);
}

const _line = (e: WatchEvent) => `${e.index} ${e.type} ${e.k}=${e.v}`;

Deno.test("watchers on all three nodes see the same ordered stream while the leader is killed", async () => {
  await using cluster = await startCluster({ size: 3, nodeFlags: ["--watch-heartbeat", "500ms"] });
  const leader = await cluster.waitForLeader();
  const live = () => cluster.liveIds().map((id) => cluster.api(id));
  // Each watcher starts on its own node, then goes round the live ones; all start at index 1
  // (the history holds every change so far).
  const watchers = cluster.ids.map((id) =>
    new Watcher({
      filter: "prefix=w/",
      urls: () => {
        const urls = live();
        const own = urls.indexOf(cluster.api(id));
        return own < 0 ? urls : [...urls.slice(own), ...urls.slice(0, own)];
      },
      from: 1,
    })
  );
  try {
    await Promise.all(watchers.map((w) => w.connected));
    const acked = new Map<number, string>();
    for (let i = 0; i < 60; i++) {
      if (i === 25) await cluster.kill(leader, "SIGKILL");
      const index = await put(live(), `w/${i % 7}`, String(i));
      if (index !== null) acked.set(index, `w/${i % 7}=${i}`);
      await put(live(), `other/${i}`, "x"); // not watched
    }
    const last = Math.max(...acked.keys());
    await waitFor(() => watchers.every((w) => (w.next ?? 0) > last), {
      deadlineMs: 15_000,
      message: () => `every watcher past index ${last}: ${watchers.map((w) => w.next).join(", ")}`,
    });
    const streams = watchers.map((w) => w.events.map(_line));
    assert.deepEqual(streams[1], streams[0]);
    assert.deepEqual(streams[2], streams[0]);
    const indexes = watchers[0]!.events.map((e) => e.index);
    for (let i = 1; i < indexes.length; i++) {
      assert.ok(indexes[i]! > indexes[i - 1]!, `in index order, each once: ${indexes}`);
    }
    const seen = new Map(watchers[0]!.events.map((e) => [e.index, `${e.k}=${e.v}`]));
    for (const [index, kv] of acked) {
      assert.equal(seen.get(index), kv, `acknowledged write ${index}`);
    }
    assert.ok(
      watchers.some((w) => w.connections > 1),
      "the watcher on the killed leader reconnected elsewhere",
    );
  } finally {
    await Promise.all(watchers.map((w) => w.close()));
  }
});

Deno.test("a watch from before the history is 410 with the oldest index; a slow watcher is cut off", async () => {
  await using cluster = await startCluster({
    size: 1,
    nodeFlags: ["--watch-history", "5", "--watch-buffer", "4"],
  });
  await cluster.waitForLeader();
  const url = cluster.api("node-1");
  for (let i = 0; i < 10; i++) await put([url], "k", String(i));
  const old = await httpRequest(`${url}/v1/watch?key=k&from=1`, "GET");
  assert.equal(old.status, 410);
  const oldest = (old.json as { oldest_index: number }).oldest_index;
  assert.ok(oldest > 1, `oldest index ${oldest}`);
  const ok = await fetch(`${url}/v1/watch?key=k&from=${oldest}`);
  assert.equal(ok.status, 200);
  const first = await readSse(ok.body!).next();
  assert.equal(JSON.parse(first.value!.data).index, oldest);
  await ok.body!.cancel().catch(() => {});

  // A watcher that never reads: big values fill the socket, then its buffer of 4 events.
  const slow = await fetch(`${url}/v1/watch?key=big`);
  const big = "x".repeat(256 * 1024);
  for (let i = 0; i < 80; i++) await put([url], "big", big + i);
  const events = [];
  for await (const m of readSse(slow.body!)) events.push(m);
  const final = events.at(-1)!;
  assert.equal(final.event, "error", `ends with an error event after ${events.length} events`);
  assert.match(JSON.parse(final.data).error, /fell more than 4 events behind/);
  assert.ok(events.length < 80, `cut off before the end (${events.length} events)`);
  // The node is fine: it still answers.
  const status = await httpRequest(`${url}/v1/status`, "GET");
  assert.equal(status.status, 200);

  // The client: a --from older than the history exits 1 and names the oldest index.
  const tooOld = await raftkv(["watch", "k", "--from", "1", "--endpoints", url]);
  assert.equal(tooOld.code, 1, tooOld.stderr);
  assert.match(tooOld.stderr, /410 .*oldest index \d+/);
});

Deno.test("--watch-history-bytes bounds the history by bytes; a change larger than it is kept alone", async () => {
  // A change of key "k" and a 1500-byte value counts 1 + 1500 + 64 = 1565 bytes: two fit in 4000.
  await using cluster = await startCluster({
    size: 1,
    nodeFlags: ["--watch-history-bytes", "4000"],
  });
  await cluster.waitForLeader();
  const url = cluster.api("node-1");
  const value = "v".repeat(1499); // and a digit
  const indexes: number[] = [];
  for (let i = 0; i < 3; i++) indexes.push((await put([url], "k", value + i))!);
  const gone = await httpRequest(`${url}/v1/watch?key=k&from=${indexes[0]}`, "GET");
  assert.equal(gone.status, 410);
  assert.equal((gone.json as { oldest_index: number }).oldest_index, indexes[0]! + 1);
  const metrics = await httpRequest(`${url}/metrics`, "GET");
  assert.match(metrics.text, /^raftkv_watch_history_events 2$/m);
  assert.match(metrics.text, /^raftkv_watch_history_bytes 3130$/m);

  // One change of 5000 bytes: everything before it goes, it stays, and a watch from it gets it.
  const big = (await put([url], "k", "b".repeat(5000)))!;
  const early = await httpRequest(`${url}/v1/watch?key=k&from=${indexes[2]}`, "GET");
  assert.equal(early.status, 410);
  assert.equal((early.json as { oldest_index: number }).oldest_index, big);
  const res = await fetch(`${url}/v1/watch?key=k&from=${big}`);
  assert.equal(res.status, 200);
  const first = await readSse(res.body!).next();
  const event = JSON.parse(first.value!.data) as WatchEvent;
  await res.body!.cancel().catch(() => {});
  assert.equal(event.index, big);
  assert.equal(event.v, "b".repeat(5000));
  const after = await httpRequest(`${url}/metrics`, "GET");
  assert.match(after.text, /^raftkv_watch_history_events 1$/m);
  assert.match(after.text, /^raftkv_watch_history_bytes 5065$/m);
});

Deno.test("raftkv watch prints changes and carries on at the next endpoint when its node dies", async () => {
  await using cluster = await startCluster({ size: 3 });
  await cluster.waitForLeader();
  const urls = cluster.ids.map((id) => cluster.api(id));
  // The first endpoint is a follower, so that the writes go on after it is killed.
  const leader = await cluster.waitForLeader();
  const first = cluster.ids.find((id) => id !== leader)!;
  const endpoints = [cluster.api(first), ...urls.filter((u) => u !== cluster.api(first))];
  const start = await put(urls, "cli/0", "a");
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...PERMISSION_FLAGS,
      _MAIN,
      "watch",
      "--prefix",
      "cli/",
      "--from",
      String(start),
      "--count",
      "6",
      "-o",
      "json",
      "--endpoints",
      endpoints.join(","),
    ],
    env: cleanEnv(),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const stderr = new Response(child.stderr).text();
  const reading = (async () => {
    let text = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      lines.length = 0;
      lines.push(...text.split("\n").filter((l) => l !== ""));
    }
  })();
  try {
    await put(urls, "cli/1", "b");
    await put(urls, "unwatched", "z");
    await waitFor(() => lines.length >= 2, {
      deadlineMs: 15_000,
      message: "the first two changes",
    });
    await cluster.kill(first, "SIGKILL");
    const rest = urls.filter((u) => u !== cluster.api(first));
    await put(rest, "cli/2", "c");
    await put(rest, "cli/0", "d");
    const txn = await httpRequest(`${rest[0]}/v1/data?prefix=cli/`, "DELETE");
    assert.equal(txn.status, 200, txn.text);
    const status = await child.status;
    await reading;
    assert.equal(status.code, 0, await stderr);
    const events = lines.map((l) => JSON.parse(l) as WatchEvent);
    assert.deepEqual(events.map((e) => `${e.type} ${e.k}=${e.v}`), [
      "put cli/0=a",
      "put cli/1=b",
      "put cli/2=c",
      "put cli/0=d",
      "delete cli/0=null",
      "delete cli/1=null",
    ]);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await child.status;
  }
});

Deno.test("raftkv watch: bad usage exits 2, no reachable endpoint exits 4", async () => {
  const usage = await raftkv(["watch"]);
  assert.equal(usage.code, 2, usage.stderr);
  assert.match(usage.stderr, /either KEY or --prefix/);
  const both = await raftkv(["watch", "k", "--prefix", "p"]);
  assert.equal(both.code, 2, both.stderr);
  const help = await raftkv(["watch", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: raftkv watch .*\[KEY\]/);
  const dead = freePorts(1).map((p) => `http://127.0.0.1:${p}`).join(",");
  const unreachable = await raftkv(["watch", "k", "--endpoints", dead, "--timeout", "1s"]);
  assert.equal(unreachable.code, 4, unreachable.stderr);
});
