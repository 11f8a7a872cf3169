/**
 * A node's memory for watch streams whose clients do not read: a large event is held once for
 * all of them, not copied into the server's buffers of each stream.
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
