/**
 * The README's lock and leader-election recipe (`testing/lease_lock.ts`) against a real 3-node
 * cluster: three client processes compete for one lock, each doing fenced work under it
 * (read a counter, write it plus one, guarded only by the lock); the holder is killed with
 * SIGKILL in the middle of its work, the next one is frozen (SIGSTOP) past its lease and woken
 * after a third took over, and then the cluster's leader is killed. Checks: the lock is taken
 * over after the time to live, the frozen holder notices it lost the lock, every surviving
 * client finishes, the fencing tokens grow from one holder to the next, and no two holders'
 * work ever interleaved (every counter value was written once). It runs twice: with the lock kept
 * by rewriting the key (compare-and-set), and held by a lease of the cluster (`--lease`).
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startCluster, waitFor } from "../testing/harness.ts";
import { readLines } from "../testing/read_lines.ts";

const RECIPE = fileURLToPath(new URL("../testing/lease_lock.ts", import.meta.url));
const TTL_MS = 1500;

interface Event {
  event: string;
  owner: string;
  t: number;
  token?: number;
  value?: number;
}

interface Client {
  owner: string;
  child: Deno.ChildProcess;
  events: Event[];
  output: Promise<void>;
}

function spawnClient(owner: string, urls: string[], lease: boolean): Client {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      RECIPE,
      `--urls=${urls.join(",")}`,
      "--key=locks/job",
      `--owner=${owner}`,
      `--ttl=${TTL_MS}`,
      "--rounds=2",
      "--work=6",
      ...(lease ? ["--lease"] : []),
    ],
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).spawn();
  const events: Event[] = [];
  const output = (async () => {
    for await (const line of readLines(child.stdout)) events.push(JSON.parse(line));
  })();
  return { owner, child, events, output };
}

Deno.test("competing clients share a lock; a killed holder's lock is taken over and fenced work never interleaves", async () => {
  await competeForTheLock(false);
});

Deno.test("the same with the lock held by a lease of the cluster: a dead or frozen holder's key expires", async () => {
  await competeForTheLock(true);
});

async function competeForTheLock(lease: boolean): Promise<void> {
  await using cluster = await startCluster({ size: 3 });
  await cluster.waitForLeader(15_000);
  const urls = cluster.ids.map((id) => cluster.api(id));
  const clients = ["c1", "c2", "c3"].map((owner, i) =>
    spawnClient(owner, [...urls.slice(i), ...urls.slice(0, i)], lease)
  );
  const all = () => clients.flatMap((c) => c.events).sort((a, b) => a.t - b.t);
  try {
    // Kill whoever holds the lock first, once it has done some work.
    await waitFor(() => all().some((e) => e.event === "incremented"), {
      deadlineMs: 30_000,
      message: () => `no client got to work: ${JSON.stringify(all())}`,
    });
    const victim = clients.find((c) => c.events.at(-1)?.event === "incremented") ??
      clients.find((c) => c.events.some((e) => e.event === "incremented"))!;
    const killedAt = performance.timeOrigin + performance.now();
    victim.child.kill("SIGKILL");
    await victim.child.status;
    await victim.output;
    const others = clients.filter((c) => c !== victim);

    // Someone else takes it over once the time to live has passed.
    await waitFor(() => all().some((e) => e.event === "acquired" && e.t > killedAt), {
      deadlineMs: 20_000,
      message: () => `nobody took the lock over: ${JSON.stringify(all())}`,
    });
    const takeover = all().find((e) => e.event === "acquired" && e.t > killedAt)!;
    assert.ok(
      takeover.t - killedAt >= TTL_MS * 0.5,
      `taken over ${takeover.t - killedAt} ms after the holder died: before its lease could end`,
    );

    // The new holder freezes (SIGSTOP) past its lease, so the last client takes over; when it
    // wakes, its fenced writes are refused and it finds the lock lost.
    const frozen = others.find((c) => c.owner === takeover.owner)!;
    const third = others.find((c) => c !== frozen)!;
    await waitFor(() => frozen.events.some((e) => e.event === "incremented" && e.t > killedAt), {
      deadlineMs: 20_000,
      intervalMs: 2,
      message: () => `${frozen.owner} never worked: ${JSON.stringify(frozen.events)}`,
    });
    // Most likely in the middle of its next increment: it has read the counter, not written it.
    await new Promise((resolve) => setTimeout(resolve, 30));
    frozen.child.kill("SIGSTOP");
    const frozenAt = performance.timeOrigin + performance.now();
    try {
      await waitFor(() => third.events.some((e) => e.event === "acquired" && e.t > frozenAt), {
        deadlineMs: 20_000,
        message: () => `nobody took over from the frozen holder: ${JSON.stringify(all())}`,
      });
      await waitFor(() => third.events.some((e) => e.event === "incremented" && e.t > frozenAt), {
        deadlineMs: 20_000,
        message: () => `${third.owner} never worked: ${JSON.stringify(third.events)}`,
      });
    } finally {
      frozen.child.kill("SIGCONT");
    }
    await waitFor(() => frozen.events.some((e) => e.event === "lost" && e.t > frozenAt), {
      deadlineMs: 20_000,
      message: () => `${frozen.owner} did not notice it lost the lock: ${JSON.stringify(all())}`,
    });

    // Then the cluster's leader dies too; the clients carry on through the election.
    const leader = await cluster.waitForLeader(15_000);
    await cluster.kill(leader);
    await cluster.waitForLeader(15_000);
    await cluster.start(leader);

    for (const c of others) {
      const status = await c.child.status;
      await c.output;
      assert.equal(status.code, 0, `${c.owner} exited with ${status.code}`);
      assert.equal(c.events.at(-1)?.event, "done", `${c.owner}: ${JSON.stringify(c.events)}`);
    }

    const events = all();
    // Fencing tokens grow from one holder to the next.
    const tokens = events.filter((e) => e.event === "acquired").map((e) => e.token!);
    assert.ok(tokens.length >= 5, `${tokens.length} tenures`);
    assert.deepEqual(tokens, [...tokens].sort((a, b) => a - b), "tokens in acquisition order");
    assert.equal(new Set(tokens).size, tokens.length);
    // Fenced writes never interleaved: each counter value was written once, and the counter
    // ends at the last one written.
    const values = events.filter((e) => e.event === "incremented").map((e) => e.value!);
    assert.equal(new Set(values).size, values.length, `a counter value written twice: ${values}`);
    const final = await cluster.request(cluster.ids[0]!, "GET", "/v1/data/locks%2Fjob%2Fcounter");
    assert.equal(final.status, 200);
    assert.equal(Number((final.json as { v: string }).v), Math.max(...values));
    // Each tenure but the killed holder's ended in a release (or a detected loss).
    const lock = await cluster.request(cluster.ids[0]!, "GET", "/v1/data/locks%2Fjob");
    assert.equal(lock.status, 404, `the lock is still held: ${lock.text}`);
  } finally {
    for (const c of clients) {
      try {
        c.child.kill("SIGKILL");
      } catch {
        // Already exited.
      }
      await c.child.status;
      await c.output.catch(() => {});
    }
  }
}
