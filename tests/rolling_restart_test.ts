/**
 * A rolling restart of three real node processes under a constant write load: every node in
 * turn gets SIGTERM, is started again and must be ready before the next one goes. Measured in
 * one run, twice: with leader transfer on SIGTERM (the default) and with
 * `--transfer-on-shutdown false`. The figure is the longest gap between two acknowledged writes;
 * with transfer it must stay under 500 ms.
 */

import assert from "node:assert/strict";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { attempt, createFreshConnectionClient } from "../testing/chaos_lib.ts";

const ELECTION_TIMEOUT_MS = 300; // the harness's default flags
const WRITERS = 3;

/** Writers that keep writing, each to its own key with a growing sequence number. */
class WriteLoad {
  /** When each acknowledged write was acknowledged (performance.now()). */
  readonly acks: number[] = [];
  /** The last sequence number acknowledged per writer. */
  readonly lastAcked: number[] = Array(WRITERS).fill(0);
  #stopped = false;
  #loops: Promise<void>[] = [];
  readonly #client = createFreshConnectionClient();

  constructor(readonly cluster: ProcessCluster) {
    for (let w = 0; w < WRITERS; w++) this.#loops.push(this.#writer(w));
  }

  async #writer(w: number): Promise<void> {
    const ids = this.cluster.ids;
    let node = w % ids.length;
    for (let seq = 1; !this.#stopped; seq++) {
      const url = `${this.cluster.api(ids[node]!)}/v1/data/writer-${w}`;
      const result = await attempt(url, "PUT", { v: String(seq) }, 2000, this.#client);
      if (result.kind === "answer" && result.status === 200) {
        this.acks.push(performance.now());
        this.lastAcked[w] = seq;
        await new Promise((r) => setTimeout(r, 2));
      } else {
        // Refused, stopping, no leader known or cut off: try the next node at once.
        node = (node + 1) % ids.length;
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  }

  /** The longest time between two consecutive acknowledgements within [from, to]. */
  longestGap(from: number, to: number): number {
    const times = [
      from,
      ...this.acks.filter((t) => t >= from && t <= to).sort((a, b) => a - b),
      to,
    ];
    let gap = 0;
    for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!);
    return gap;
  }

  count(from: number, to: number): number {
    return this.acks.filter((t) => t >= from && t <= to).length;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#loops);
    this.#client.close();
  }
}

/** SIGTERMs each node in turn, restarts it with `flags` and waits until it is ready. */
async function rollingRestart(cluster: ProcessCluster, flags: string[]): Promise<void> {
  for (const id of cluster.ids) {
    assert.equal(await cluster.stop(id), 0, `${id} exits cleanly on SIGTERM`);
    await cluster.start(id, { flags });
    await waitFor(async () => {
      const r = await attempt(`${cluster.api(id)}/ready`, "GET", undefined, 1000);
      return r.kind === "answer" && r.status === 200;
    }, { deadlineMs: 20_000, message: `${id} to be ready after its restart` });
  }
}

Deno.test("a rolling restart with leader transfer on SIGTERM leaves no write gap over 500 ms", async () => {
  await using cluster = await startCluster({ size: 3 });
  await cluster.waitForLeader();
  const load = new WriteLoad(cluster);
  try {
    await waitFor(() => load.acks.length >= 20, { message: "writes to flow" });
    const t0 = performance.now();
    // The nodes started with transfer on; each comes back with it off, for the second round.
    await rollingRestart(cluster, ["--transfer-on-shutdown", "false"]);
    const t1 = performance.now();
    await rollingRestart(cluster, ["--transfer-on-shutdown", "false"]);
    const t2 = performance.now();
    const withTransfer = load.longestGap(t0, t1);
    const without = load.longestGap(t1, t2);
    console.log(
      `rolling restart of 3 nodes (election timeout ${ELECTION_TIMEOUT_MS} ms): longest gap ` +
        `between acknowledged writes ${withTransfer.toFixed(0)} ms with leader transfer ` +
        `(${load.count(t0, t1)} writes in ${((t1 - t0) / 1000).toFixed(1)} s), ` +
        `${without.toFixed(0)} ms without (${load.count(t1, t2)} writes in ` +
        `${((t2 - t1) / 1000).toFixed(1)} s)`,
    );
    assert.ok(withTransfer < 500, `gap with transfer ${withTransfer.toFixed(0)} ms`);
    // Without transfer the leader's SIGTERM costs an election: the measurement must see it.
    assert.ok(
      without >= ELECTION_TIMEOUT_MS - 50,
      `gap without transfer ${without.toFixed(0)} ms`,
    );
    assert.match(
      cluster.logs(cluster.ids[0]!).concat(...cluster.ids.slice(1).map((id) => cluster.logs(id)))
        .join("\n"),
      /handed leadership to node-\d before stopping/,
    );
  } finally {
    await load.stop();
  }
  // Nothing acknowledged was lost: each writer's key holds its last acknowledged write or a later one.
  const leader = await cluster.waitForLeader();
  for (let w = 0; w < WRITERS; w++) {
    const r = await attempt(`${cluster.api(leader)}/v1/data/writer-${w}`, "GET", undefined, 5000);
    assert.ok(r.kind === "answer" && r.status === 200, `read writer-${w}`);
    const value = Number((r.json as { v: string }).v);
    assert.ok(value >= load.lastAcked[w]!, `writer-${w}: ${value} < ${load.lastAcked[w]}`);
  }
});
