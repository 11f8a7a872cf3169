import assert from "node:assert/strict";
import { join } from "node:path";
import { NotLeaderError } from "../raft/errors.ts";
import { EntryType, type Message, message, MessageType } from "../raft/types.ts";
import { encodeCommand } from "../kv/state_machine.ts";
import type { TransportHandlers } from "../transport/transport.ts";
import { OverloadedError } from "./backend.ts";
import { MemoryNetwork } from "../transport/memory_transport.ts";
import { openDiskStorage } from "./disk_storage.ts";
import { RaftNode, type RaftNodeOptions } from "./raft_node.ts";
import { listSnapshots } from "../snapshot/snapshot_file.ts";

const IDS = ["a", "b", "c"];
const SILENT = { debug() {}, info() {}, warn() {}, error() {} };

async function waitFor(cond: () => boolean, what: string, deadlineMs = 10_000): Promise<void> {
  const end = performance.now() + deadlineMs;
  while (!cond()) {
    if (performance.now() > end) {
      throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function startNode(
  root: string,
  net: MemoryNetwork,
  id: string,
  seed: number,
  extra: Partial<RaftNodeOptions> = {},
): Promise<RaftNode> {
  const members = IDS.map((id) => ({ id, rpcUrl: `mem://${id}`, apiUrl: `http://${id}` }));
  const dir = join(root, id);
  const storage = await openDiskStorage({
    walDir: join(dir, "wal"),
    raftStatePath: join(dir, "raft-state.json"),
    logMetadataPath: join(dir, "log-metadata.json"),
    snapshotDir: join(dir, "snapshots"),
  });
  return new RaftNode({
    id,
    members,
    storage,
    heartbeatMs: 10,
    electionTimeoutMs: 100,
    seed,
    logger: SILENT,
    transport: (h) => net.connect(id, h),
    ...extra,
  });
}

async function startNodes(root: string, net: MemoryNetwork, seed: number): Promise<RaftNode[]> {
  const members = IDS.map((id) => ({ id, rpcUrl: `mem://${id}`, apiUrl: `http://${id}` }));
  const nodes: RaftNode[] = [];
  for (const [i, id] of IDS.entries()) {
    const dir = join(root, id);
    const storage = await openDiskStorage({
      walDir: join(dir, "wal"),
      raftStatePath: join(dir, "raft-state.json"),
      logMetadataPath: join(dir, "log-metadata.json"),
      snapshotDir: join(dir, "snapshots"),
    });
    const node = new RaftNode({
      id,
      members,
      storage,
      heartbeatMs: 10,
      electionTimeoutMs: 100,
      seed: seed + i,
      logger: SILENT,
      transport: (h) => net.connect(id, h),
    });
    nodes.push(node);
  }
  for (const n of nodes) n.start();
  return nodes;
}

function leaderOf(nodes: RaftNode[]): RaftNode | undefined {
  const leaders = nodes.filter((n) => n.status().role === "leader");
  return leaders.length === 1 ? leaders[0] : undefined;
}

const signal = () => AbortSignal.timeout(5_000);

Deno.test("three nodes on real files elect a leader, replicate writes and survive a full restart", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
  let nodes: RaftNode[] = [];
  try {
    const net = new MemoryNetwork();
    nodes = await startNodes(root, net, 1);
    await waitFor(() => leaderOf(nodes) !== undefined && leaderOf(nodes)!.isReady(), "a leader");
    const leader = leaderOf(nodes)!;
    const writes = [];
    for (let i = 0; i < 50; i++) writes.push(leader.put(`k${i}`, `v${i}`, signal()));
    const results = await Promise.all(writes);
    assert.ok(results.every((r) => r.index > 0));
    assert.equal(await leader.get("k7", "linearizable", signal()), "v7");
    const del = await leader.delete("k7", signal());
    assert.equal(del.deleted, true);
    assert.equal(await leader.get("k7", "linearizable", signal()), null);
    const follower = nodes.find((n) => n !== leader)!;
    await assert.rejects(follower.get("k1", "linearizable", signal()), NotLeaderError);
    await assert.rejects(follower.put("x", "y", signal()), NotLeaderError);
    await waitFor(() => follower.status().applied_index >= del.index, "the follower to catch up");
    assert.equal(await follower.get("k1", "stale", signal()), "v1");

    for (const n of nodes) await n.stop();
    nodes = await startNodes(root, new MemoryNetwork(), 100);
    await waitFor(
      () => leaderOf(nodes) !== undefined && leaderOf(nodes)!.isReady(),
      "a leader again",
    );
    const again = leaderOf(nodes)!;
    for (let i = 0; i < 50; i++) {
      assert.equal(await again.get(`k${i}`, "linearizable", signal()), i === 7 ? null : `v${i}`);
    }
  } finally {
    for (const n of nodes) await n.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a leader cut off from its peers stops confirming reads and steps down", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
  let nodes: RaftNode[] = [];
  try {
    const net = new MemoryNetwork();
    nodes = await startNodes(root, net, 7);
    await waitFor(() => leaderOf(nodes)?.isReady() === true, "a leader");
    const leader = leaderOf(nodes)!;
    await leader.put("a", "1", signal());
    for (const other of IDS) if (other !== leader.id) net.partition(leader.id, other);
    const read = leader.get("a", "linearizable", AbortSignal.timeout(2_000));
    await assert.rejects(
      read,
      (e: unknown) => e instanceof NotLeaderError || e instanceof DOMException,
    );
    await waitFor(() => leader.status().role !== "leader", "the isolated leader to step down");
    const others = nodes.filter((n) => n !== leader);
    await waitFor(() => leaderOf(others)?.isReady() === true, "a new leader on the majority side");
    await leaderOf(others)!.put("a", "2", signal());
    net.heal();
    await waitFor(
      () => leader.status().applied_index >= leaderOf(others)!.status().commit_index,
      "rejoin",
    );
    assert.equal(await leader.get("a", "stale", signal()), "2");
  } finally {
    for (const n of nodes) await n.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("snapshots bound the log; a lagging node and a wiped node catch up by snapshot", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
  const nodes = new Map<string, RaftNode>();
  const net = new MemoryNetwork();
  const opts = { snapshotThreshold: 100, snapshotCatchUpEntries: 20 };
  try {
    for (const [i, id] of IDS.entries()) {
      nodes.set(id, await startNode(root, net, id, 40 + i, opts));
    }
    for (const n of nodes.values()) n.start();
    const all = () => [...nodes.values()];
    await waitFor(() => leaderOf(all())?.isReady() === true, "a leader");
    const leader = leaderOf(all())!;
    const lagging = IDS.find((id) => id !== leader.id)!;
    for (const other of IDS) if (other !== lagging) net.partition(lagging, other);
    for (let i = 0; i < 500; i++) await leader.put(`k${i % 50}`, `v${i}`, signal());
    await waitFor(() => leader.status().applied_index >= 500, "the leader to apply");
    const snaps = await listSnapshots(join(root, leader.id, "snapshots"));
    assert.ok(snaps.length >= 1 && snaps[0]!.index >= 400, `snapshots: ${JSON.stringify(snaps)}`);
    net.heal();
    const target = leader.status().commit_index;
    await waitFor(() => nodes.get(lagging)!.status().applied_index >= target, "snapshot catch-up");
    for (let i = 450; i < 500; i++) {
      assert.equal(await nodes.get(lagging)!.get(`k${i % 50}`, "stale", signal()), `v${i}`);
    }

    // Wipe a follower completely and start it again: it comes back by snapshot.
    const wiped = IDS.find((id) => id !== leader.id && id !== lagging)!;
    await nodes.get(wiped)!.stop();
    await Deno.remove(join(root, wiped), { recursive: true });
    const fresh = await startNode(root, net, wiped, 77, opts);
    nodes.set(wiped, fresh);
    fresh.start();
    await leader.put("after-wipe", "yes", signal());
    const commit = leader.status().commit_index;
    await waitFor(() => fresh.status().applied_index >= commit, "the wiped node to catch up");
    assert.equal(await fresh.get("after-wipe", "stale", signal()), "yes");
    assert.equal(await fresh.get("k49", "stale", signal()), "v499");

    // Restart everything: snapshot + log tail give back the same state.
    for (const n of nodes.values()) await n.stop();
    for (const [i, id] of IDS.entries()) {
      nodes.set(id, await startNode(root, net, id, 90 + i, opts));
    }
    for (const n of nodes.values()) n.start();
    await waitFor(() => leaderOf(all())?.isReady() === true, "a leader after restart");
    const again = leaderOf(all())!;
    assert.equal(await again.get("k0", "linearizable", signal()), "v450");
    assert.equal(await again.get("after-wipe", "linearizable", signal()), "yes");
  } finally {
    for (const n of nodes.values()) await n.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a backup streamed from a node starts a new cluster with the same data", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
  const open = (dir: string, restoreFrom: string | null = null) =>
    openDiskStorage({
      walDir: join(dir, "wal"),
      raftStatePath: join(dir, "raft-state.json"),
      logMetadataPath: join(dir, "log-metadata.json"),
      snapshotDir: join(dir, "snapshots"),
    }, { restoreFrom });
  const single = (storage: Awaited<ReturnType<typeof open>>) =>
    new RaftNode({
      id: "solo",
      members: [{ id: "solo", rpcUrl: "mem://solo", apiUrl: "http://solo" }],
      storage,
      heartbeatMs: 10,
      electionTimeoutMs: 100,
      logger: SILENT,
      transport: (h) => new MemoryNetwork().connect("solo", h),
    });
  let a: RaftNode | undefined;
  let b: RaftNode | undefined;
  try {
    a = single(await open(join(root, "a")));
    a.start();
    await waitFor(() => a!.isReady(), "the single node to lead");
    for (let i = 0; i < 100; i++) await a.put(`k${i}`, `v${i}`, signal());
    await a.delete("k5", signal());
    const backup = join(root, "backup.snap");
    const { stream, index } = a.snapshot();
    await Deno.writeFile(backup, stream);
    assert.ok(index >= 101);
    await a.stop();

    b = single(await open(join(root, "b"), backup));
    b.start();
    await waitFor(() => b!.isReady(), "the restored node to lead");
    assert.equal(await b.get("k99", "linearizable", signal()), "v99");
    assert.equal(await b.get("k5", "linearizable", signal()), null);
    const w = await b.put("new", "1", signal());
    assert.ok(w.index > index, "the new cluster's log continues after the backup");
  } finally {
    await a?.stop();
    await b?.stop();
    await Deno.remove(root, { recursive: true });
  }
});

/** Starts a one-member cluster (it elects itself) on real files, with `extra` options. */
async function startSolo(root: string, extra: Partial<RaftNodeOptions>): Promise<RaftNode> {
  const storage = await openDiskStorage({
    walDir: join(root, "wal"),
    raftStatePath: join(root, "raft-state.json"),
    logMetadataPath: join(root, "log-metadata.json"),
    snapshotDir: join(root, "snapshots"),
  });
  const node = new RaftNode({
    id: "solo",
    members: [{ id: "solo", rpcUrl: "mem://solo", apiUrl: "http://solo" }],
    storage,
    heartbeatMs: 10,
    electionTimeoutMs: 100,
    seed: 7,
    logger: SILENT,
    transport: (h) => new MemoryNetwork().connect("solo", h),
    ...extra,
  });
  node.start();
  await waitFor(() => node.isReady(), "the single node to lead");
  return node;
}

Deno.test("a leader refuses writes past its pending-proposal limits, and applies none of them", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
  let node: RaftNode | undefined;
  try {
    node = await startSolo(root, { maxPendingProposals: 4, maxPendingBytes: 1_000_000 });
    const solo = node;
    // Proposed in one turn of the event loop: nothing is applied in between.
    assert.equal(solo.overloaded(), null);
    const writes = Array.from({ length: 10 }, (_, i) => solo.put(`k${i}`, "v", signal()));
    assert.ok(solo.overloaded() instanceof OverloadedError, "full after 4 proposals");
    const outcomes = await Promise.allSettled(writes);
    const refused = outcomes.flatMap((o, i) => o.status === "rejected" ? [i] : []);
    assert.deepEqual(refused, [4, 5, 6, 7, 8, 9]);
    for (const i of refused) {
      const reason = (outcomes[i] as PromiseRejectedResult).reason;
      assert.ok(reason instanceof OverloadedError, String(reason));
      assert.equal(reason.pendingProposals, 4);
    }
    for (let i = 0; i < 10; i++) {
      assert.equal(await solo.get(`k${i}`, "linearizable", signal()), i < 4 ? "v" : null);
    }
    // Once applied they no longer count: the next batch goes through.
    assert.equal(solo.overloaded(), null);
    const more = await Promise.all([0, 1, 2, 3].map((i) => solo.put(`m${i}`, "v", signal())));
    assert.equal(more.length, 4);
  } finally {
    await node?.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a leader refuses a write that would pass its pending-bytes limit unless none is pending", async () => {
  const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
  let node: RaftNode | undefined;
  try {
    node = await startSolo(root, { maxPendingProposals: 100, maxPendingBytes: 2500 });
    const solo = node;
    const big = "x".repeat(1000);
    const outcomes = await Promise.allSettled([
      solo.put("a", big, signal()),
      solo.put("b", big, signal()),
      solo.put("c", big, signal()),
    ]);
    assert.deepEqual(outcomes.map((o) => o.status), ["fulfilled", "fulfilled", "rejected"]);
    assert.ok((outcomes[2] as PromiseRejectedResult).reason instanceof OverloadedError);
    assert.equal(await solo.get("c", "linearizable", signal()), null);
    // A single write larger than the limit still goes through when nothing is pending.
    await solo.put("huge", "y".repeat(5000), signal());
    assert.equal((await solo.get("huge", "linearizable", signal()))?.length, 5000);
  } finally {
    await node?.stop();
    await Deno.remove(root, { recursive: true });
  }
});

/** Every file and directory under `dir` with its permission bits, as `path: mode` lines. */
async function _modes(dir: string): Promise<string[]> {
  const lines: string[] = [];
  for await (const item of Deno.readDir(dir)) {
    const path = join(dir, item.name);
    const mode = (await Deno.stat(path)).mode! & 0o777;
    lines.push(`${path}: ${mode.toString(8)}`);
    if (item.isDirectory) lines.push(...await _modes(path));
  }
  return lines;
}

Deno.test({
  name: "every file and directory a node creates is private to its owner",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
    let node: RaftNode | undefined;
    try {
      node = await startSolo(join(root, "data", "solo"), { snapshotThreshold: 5 });
      for (let i = 0; i < 12; i++) await node.put(`k${i}`, "v", signal());
      const solo = node;
      await waitFor(() => solo.status().applied_index >= 12, "the writes to apply");
      await node.stop();
      node = undefined;
      const lines = await _modes(root);
      const names = lines.map((line) => line.slice(0, line.lastIndexOf(":")));
      for (const expected of ["wal", "raft-state.json", "log-metadata.json", "snapshots"]) {
        assert.ok(names.includes(join(root, "data", "solo", expected)), `${expected} missing`);
      }
      assert.ok(names.some((name) => name.endsWith(".snap")), "no snapshot was taken");
      assert.ok(names.some((name) => name.endsWith(".wal")), "no WAL segment");
      const wrong = [];
      for await (const line of lines) {
        const path = line.slice(0, line.lastIndexOf(":"));
        const isDir = (await Deno.stat(path)).isDirectory;
        if (!line.endsWith(isDir ? ": 700" : ": 600")) wrong.push(line);
      }
      assert.deepEqual(wrong, []);
    } finally {
      await node?.stop();
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("a follower applies in order a commit that spans several apply batches", async () => {
  // A follower answers every message after its write; a write with nothing to write must not
  // run the next Ready (with the next batch of committed entries) before this one is applied.
  const root = await Deno.makeTempDir({ prefix: "raftkv-node-" });
  let node: RaftNode | undefined;
  try {
    const storage = await openDiskStorage({
      walDir: join(root, "wal"),
      raftStatePath: join(root, "raft-state.json"),
      logMetadataPath: join(root, "log-metadata.json"),
      snapshotDir: join(root, "snapshots"),
    });
    const sent: Message[] = [];
    const fatal: unknown[] = [];
    let handlers: TransportHandlers | undefined;
    node = new RaftNode({
      id: "b",
      members: IDS.map((id) => ({ id, rpcUrl: `mem://${id}`, apiUrl: `http://${id}` })),
      storage,
      logger: SILENT,
      onFatal: (e) => fatal.push(e),
      transport: (h) => {
        handlers = h;
        return {
          send: (messages) => sent.push(...messages),
          sendSnapshot: () => Promise.reject(new Error("no snapshots here")),
          close: () => Promise.resolve(),
        };
      },
    });
    // Not started: no ticks, so no elections; this test plays the leader "a".
    const big = "x".repeat(1 << 20);
    const entries = Array.from({ length: 8 }, (_, i) => ({
      term: 1,
      index: i + 1,
      type: EntryType.Normal,
      data: encodeCommand({ op: "put", key: `k${i}`, value: `${i}${big}` }),
    }));
    handlers!.onMessages([
      message({ type: MessageType.App, from: "a", to: "b", term: 1, entries, commit: 0 }),
    ]);
    await waitFor(
      () => sent.some((m) => m.type === MessageType.AppResp && m.index === 8),
      "the entries to be written",
    );
    // More than one apply batch (4 MiB) of entries becomes committed at once.
    handlers!.onMessages([
      message({ type: MessageType.Heartbeat, from: "a", to: "b", term: 1, commit: 8 }),
    ]);
    const follower = node;
    await waitFor(
      () => follower.status().applied_index === 8 || fatal.length > 0,
      "the entries to be applied",
    );
    assert.deepEqual(fatal, []);
    for (let i = 0; i < 8; i++) {
      assert.equal((await follower.get(`k${i}`, "stale", signal()))?.slice(0, 1), String(i));
    }
  } finally {
    await node?.stop();
    await Deno.remove(root, { recursive: true });
  }
});
