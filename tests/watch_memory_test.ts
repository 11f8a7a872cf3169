/**
 * A node's memory for watch streams whose clients do not read: a large event is held once for
 * all of them, not copied into the server's buffers of each stream; and the backlog a stream asked
 * for with `from` is read from the history as the client takes it, so that streams opened one
 * after the other, each left unread, do not each keep a window of the history alive once the
 * history has dropped it.
 *
 * @module
 */

import assert from "node:assert/strict";
import http2 from "node:http2";
import { httpRequest, startCluster, waitFor } from "../testing/harness.ts";
import { readSse } from "../src/util/sse.ts";

/** The resident memory of process `pid`, in MiB. */
function rssMiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

Deno.test({
  name: "HTTP/2 watch streams that never read do not hold a copy of each large event apiece",
  ignore: Deno.build.os !== "linux",
  async fn() {
    await using cluster = await startCluster({ size: 1 });
    await cluster.waitForLeader();
    const url = cluster.api("node-1");
    const pid = cluster.node("node-1").pid!;
    // 200 streams on one HTTP/2 connection whose window stays shut: the server can send them
    // nothing, but takes what it is handed into its own buffers.
    const streams = 200;
    const session = http2.connect(url, { settings: { initialWindowSize: 0 } });
    session.on("error", () => {});
    let answered = 0;
    for (let i = 0; i < streams; i++) {
      const s = session.request({ ":path": "/v1/watch?prefix=w/", ":method": "GET" }, {
        endStream: true,
      });
      s.on("response", () => answered++);
      s.on("error", () => {});
      s.pause();
    }
    // A watcher that reads: once it has every event, the node has handed them to all streams.
    const control = await fetch(`${url}/v1/watch?prefix=w/`);
    const events = readSse(control.body!);
    try {
      await waitFor(() => answered === streams, {
        deadlineMs: 5000,
        message: () => `${answered} of ${streams} streams answered`,
      });
      const before = rssMiB(pid);
      const big = "x".repeat(1 << 20);
      for (let i = 0; i < 3; i++) {
        const r = await httpRequest(`${url}/v1/data/w%2F${i}`, "PUT", { v: big });
        assert.equal(r.status, 200);
      }
      for (let i = 0; i < 3; i++) {
        const m = await events.next();
        assert.equal(JSON.parse(m.value!.data).k, `w/${i}`);
      }
      assert.equal((await httpRequest(`${url}/v1/status`, "GET")).status, 200);
      const grown = rssMiB(pid) - before;
      // A copy per stream would be 200 x 1 MiB per event the server takes (two of them before
      // its buffers are full): about 400 MiB. Shared, the events and their text are a few MiB.
      assert.ok(grown < 150, `RSS grew ${grown.toFixed(1)} MiB for 3 x 1 MiB events`);
    } finally {
      await events.return(undefined);
      session.destroy();
    }
  },
});

Deno.test({
  name:
    "HTTP/2 watch streams that never read the backlog they asked for hold none of it once the history drops it",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const MiB = 1 << 20;
    const windowEvents = 15; // 1 MiB each: what the history holds of them (16 MiB)
    const generations = 10;
    const watchersEach = 5;
    await using cluster = await startCluster({
      size: 1,
      nodeFlags: [
        "--watch-history-bytes",
        String(16 * MiB),
        "--max-watch-bytes",
        String(32 * MiB),
        "--max-inflight-bytes",
        String(32 * MiB),
        "--max-client-unread-bytes",
        String(8 * MiB),
        // The log's entries go with each snapshot: less memory that is not the watchers'.
        "--snapshot-threshold-bytes",
        String(16 * MiB),
      ],
    });
    await cluster.waitForLeader();
    const url = cluster.api("node-1");
    const pid = cluster.node("node-1").pid!;
    const session = http2.connect(url, { settings: { initialWindowSize: 0 } });
    session.on("error", () => {});
    const statuses: number[] = [];
    const write = async (method: string, path: string, body?: unknown) => {
      const r = await httpRequest(`${url}${path}`, method, body);
      assert.equal(r.status, 200, r.text);
      return Number(r.headers.get("x-raftkv-index"));
    };
    const watchers = async () => {
      const r = await httpRequest(`${url}/metrics`, "GET");
      return Number(/^raftkv_watchers (\S+)$/m.exec(r.text)![1]);
    };
    try {
      let before = 0;
      for (let g = 0; g < generations; g++) {
        // A window of the history, under a prefix of its own: each generation's streams have
        // their backlog, and none of the later changes (which would count against their buffer).
        let first = 0;
        for (let i = 0; i < windowEvents; i++) {
          const index = await write("PUT", `/v1/data/g${g}%2F${i}`, {
            v: String.fromCharCode(97 + g).repeat(MiB),
          });
          if (i === 0) first = index;
        }
        for (let i = 0; i < watchersEach; i++) {
          const s = session.request({
            ":path": `/v1/watch?prefix=g${g}/&from=${first}`,
            ":method": "GET",
          }, { endStream: true });
          s.on("response", (h) => statuses.push(Number(h[":status"])));
          s.on("error", () => {});
          s.pause();
        }
        await waitFor(() => statuses.length === (g + 1) * watchersEach, {
          deadlineMs: 10_000,
          message: () => `${statuses.length} of ${(g + 1) * watchersEach} watches answered`,
        });
        // The values go from the state; only the history, and the streams, still have them.
        await write("DELETE", `/v1/data?prefix=g${g}/`);
        if (g === 0) before = rssMiB(pid);
      }
      assert.deepEqual([...new Set(statuses)], [200]);
      // The newest window leaves the history too.
      for (let i = 0; i < windowEvents + 1; i++) {
        await write("PUT", "/v1/data/roll", { v: "z".repeat(MiB) });
      }
      // Every stream's backlog left the history before it was read: each was cut off.
      let open = -1;
      await waitFor(async () => (open = await watchers()) === 0, {
        deadlineMs: 10_000,
        message: () => `${open} streams still open`,
      });
      assert.equal((await httpRequest(`${url}/v1/status`, "GET")).status, 200);
      const grown = rssMiB(pid) - before;
      // Held by the streams, the ten windows would stay: 150 MiB of values, and the text the
      // server took of them (before, measured here: 320 to 370 MiB). Now the server holds what it
      // took of each stream (its first event or two), and nothing else of them stays (measured:
      // 60 to 110 MiB, most of it the writes' garbage, as much as without any stream).
      assert.ok(grown < 200, `RSS grew ${grown.toFixed(1)} MiB over ${generations} generations`);
    } finally {
      session.destroy();
    }
  },
});
