import assert from "node:assert/strict";
import {
  AWAY_FAULTS,
  type CheckName,
  type DiskFault,
  type FaultOptions,
  nodesForSeed,
  replayCommand,
  runSimulation,
  SimulationFailure,
  type SimulationOptions,
  type SimulationStats,
} from "../../testing/sim/simulator.ts";
import { LEASE_BYTES } from "../../src/kv/state_machine.ts";

/**
 * Crash-heavy faults with slow disks: a wide window between an acknowledgement and its sync. No
 * leader transfers: the guard tests below aim at the disk, and their seeds were picked without.
 */
const CRASHY: Partial<FaultOptions> = {
  transferEveryMs: 0,
  memberEveryMs: 0, // the disk guards pin the seeds that catch them; membership changes shift them
  diskFullEveryMs: 0, // and so do full disks
  stopRate: 0, // and graceful stops
  diskFailRate: 0, // and failing disks
  otherClusterEveryMs: 0, // and another cluster's appends
  editedFileRate: 0, // and edited cluster files
  crashEveryMs: 700,
  powerFailureRate: 0.4,
  tornWriteRate: 0.5,
  minDiskMs: 5,
  maxDiskMs: 40,
  maxDowntimeMs: 700,
};

/** Every check but the end-to-end ones (linearizability, convergence, liveness). */
const INTERNAL_CHECKS: CheckName[] = [
  "election-safety",
  "log-matching",
  "leader-completeness",
  "state-machine-safety",
  "commit-monotonic",
  "durable-majority",
  "recovery",
];

interface _Batch {
  failures: SimulationFailure[];
  totals: Record<string, number>;
}

/** Runs every seed; collects failures instead of stopping at the first. */
async function _runSeeds(
  seeds: readonly number[],
  make: (seed: number) => SimulationOptions,
  stopAfterFailures = Infinity,
): Promise<_Batch> {
  const failures: SimulationFailure[] = [];
  const totals: Record<string, number> = {};
  for (const seed of seeds) {
    try {
      const { stats } = await runSimulation(make(seed));
      for (const [k, v] of Object.entries(stats as unknown as Record<string, unknown>)) {
        if (typeof v === "number") totals[k] = (totals[k] ?? 0) + v;
      }
    } catch (e) {
      if (!(e instanceof SimulationFailure)) throw e;
      failures.push(e);
      if (failures.length >= stopAfterFailures) break;
    }
  }
  return { failures, totals };
}

/** The assertion message for failed seeds: each seed with its replay command, then the details. */
function _describe(failures: SimulationFailure[]): string {
  const list = failures.map((f) => `  seed ${f.seed} (${f.check}): ${f.replay}`).join("\n");
  const details = failures.slice(0, 3).map((f) => f.message.split("\n").slice(0, 80).join("\n"));
  return `${failures.length} seed(s) failed:\n${list}\n\n${details.join("\n\n")}`;
}

function _range(from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}

/** A seed the soak found (3 nodes, 20 s, the default mix): it passes, exercising `keys`. */
async function _soakSeed(
  seed: number,
  keys: (keyof SimulationStats)[],
  nodes: 3 | 5 = 3,
): Promise<void> {
  const { failures, totals } = await _runSeeds([seed], (seed) => ({
    seed,
    nodes,
    durationMs: 20_000,
    // No lease grants with a put, which came later: the seed replays the run that found the bug.
    leasePutGrants: 0,
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, keys);
}

function _assertExercised(totals: Record<string, number>, keys: (keyof SimulationStats)[]): void {
  for (const k of keys) assert.ok((totals[k] ?? 0) > 0, `no ${k} in the whole batch`);
}

Deno.test("three-node clusters of real nodes lose no acknowledged write and stay linearizable under every fault mix", async () => {
  // A third of the seeds put long values half the time: replayed answers leave some out.
  const { failures, totals } = await _runSeeds(
    _range(1, 150),
    (seed) => ({ seed, nodes: 3, durationMs: 10_000, longValues: seed % 3 === 0 ? 0.5 : 0 }),
  );
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, [
    "valuesOmitted",
    "writesOk",
    "writesUnknown",
    "readsOk",
    "followerReadsOk",
    "crashes",
    "powerFailures",
    "tornWrites",
    "stops",
    "diskFailures",
    "diskFailureStops",
    "partitions",
    "pauses",
    "messagesDropped",
    "messagesDuplicated",
    "snapshotsTaken",
    "transfersDone",
    "transfersAborted",
    "watchEvents",
    "watchReconnects",
    "watchResyncs",
    "watchCutOffs",
    "watchBreaks",
    "rangePagesCut",
    "rangeNextPages",
    "rangeDeletesOk",
    "casDeletesOk",
    "multiTxnsOk",
    "multiTxnsFailed",
    "txnAnswersChecked",
    "leaseStatusReads",
    "leaseStatusGone",
    "leasesGrantedWithPut",
    "leaseQuotaRefusals",
    "backupsRead",
    "backupsBroken",
    "blockingChanges",
    "blockingTimeouts",
    "blockingAtOnce",
    "blockingClosed",
    "blockingAborted",
    "diskFulls",
    "noSpaceAlarms",
    "noSpaceRefusals",
    "peerNoSpaceRefusals",
    "unsettledRetries",
    "fullRestarts",
    "quotaRefusals",
    "otherClusterRefusals",
  ]);
  assert.ok(totals.elections! > 150, `only ${totals.elections} elections in 150 runs`);
});

Deno.test("five-node clusters of real nodes lose no acknowledged write and stay linearizable under every fault mix", async () => {
  const { failures, totals } = await _runSeeds(
    _range(10_001, 80),
    (seed) => ({ seed, nodes: 5, durationMs: 10_000 }),
  );
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, [
    "writesOk",
    "readsOk",
    "followerReadsOk",
    "crashes",
    "partitions",
    "pauses",
  ]);
});

Deno.test("a quota the data reach at once refuses the writes and lease grants that add bytes, and every history stays linearizable", async () => {
  // 12 bytes hold one key and a short value, and a lease counts 64: most puts are refused, and a
  // grant while a lease lives; deletes, revokes and puts of a value no longer than the one there
  // go through.
  const { failures, totals } = await _runSeeds(
    _range(40_001, 12),
    (seed) => ({ seed, nodes: 3, durationMs: 6_000, quotaBytes: 12 + LEASE_BYTES }),
  );
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, [
    "quotaRefusals",
    "leaseQuotaRefusals",
    "leasesGranted",
    "writesOk",
    "readsOk",
    "crashes",
    "snapshotsTaken",
  ]);
  assert.ok(
    totals.quotaRefusals! > totals.writesOk! / 4,
    `only ${totals.quotaRefusals} refusals for ${totals.writesOk} writes`,
  );
});

Deno.test("snapshots, log compaction and snapshot transfers keep every check under every fault mix", async () => {
  // Small thresholds and few catch-up entries: followers just behind need a snapshot. One seed in
  // three runs crash-heavy with slow disks, so that crashes land inside installs.
  const { failures, totals } = await _runSeeds(_range(30_001, 100), (seed) => ({
    seed,
    nodes: seed % 2 === 0 ? 5 : 3,
    durationMs: 8_000,
    snapshotThreshold: [10, 20, 50][Math.floor(seed / 2) % 3]!,
    catchUpEntries: [0, 5][Math.floor(seed / 6) % 2]!,
    ...(seed % 3 === 0 ? { faults: CRASHY } : {}),
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, [
    "snapshotsTaken",
    "snapshotsSent",
    "snapshotsReceived",
    "snapshotsInstalled",
    "snapshotRestarts",
    "crashes",
    "tornWrites",
  ]);
});

Deno.test("lease reads stay linearizable under every fault mix", async () => {
  const { failures, totals } = await _runSeeds(_range(20_001, 40), (seed) => ({
    seed,
    nodes: seed % 2 === 0 ? 3 : 5,
    durationMs: 8_000,
    leaseReads: 0.5,
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, ["leaseReadsOk", "followerReadsOk", "partitions", "crashes"]);
});

Deno.test("lease reads stay linearizable when a paused leader resumes after being replaced", async () => {
  const { failures, totals } = await _runSeeds(_range(60, 40), (seed) => ({
    seed,
    nodes: 3,
    durationMs: 8_000,
    leaseReads: 0.5,
    faults: {
      pauseEveryMs: 1_500,
      maxPauseMs: 5_000,
      partitionEveryMs: 1_500,
      maxPartitionMs: 3_000,
      crashEveryMs: 0,
    },
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, ["leaseReadsOk", "partitions", "pauses"]);
});

/**
 * Graceful stops under frequent snapshots and slow disks. A node stopped while the apply of the
 * write its stop waited for started a snapshot closed its storage under the snapshot's log
 * compaction, and the close failed as busy (found by the soak, seed 2283, on an earlier version of
 * the simulation). On the code before the fix, seed 61 of this mix reaches that moment (the only
 * one of seeds 1..1200 run on it); a change to the run's sequence of events may stop it from
 * reaching it.
 */
const STOPS: Partial<FaultOptions> = {
  crashEveryMs: 250,
  stopRate: 1,
  powerFailureRate: 0,
  diskFailRate: 0,
  maxDowntimeMs: 200,
  minDiskMs: 5,
  maxDiskMs: 40,
};

Deno.test("a graceful stop waits for the snapshot its last write started before closing the storage", async () => {
  const { failures, totals } = await _runSeeds([61], (seed) => ({
    seed,
    nodes: 3,
    durationMs: 10_000,
    faults: STOPS,
    snapshotThreshold: 20,
    catchUpEntries: 5,
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, ["stops", "snapshotsTaken"]);
});

/**
 * Seeds of {@linkcode AWAY_FAULTS} that, without the members queries, end with a stale member or
 * unaware learner (and pass with them): `deno task seeds:away` finds them anew when the runs move.
 */
const AWAY_SEEDS: [number, CheckName][] = [
  [23, "stale-member"],
  [42, "stale-member"],
  [44, "removed-unaware"],
];

/**
 * A member whose disk failed before it stored anything, away while both other original members
 * were replaced: on its return it knows only those two, both removed and restarted with a newer
 * configuration not committed. They answered its members queries with nothing (they did not know
 * the index of their committed configuration), so it never learned the new members and refused
 * the new leader for good (`stale-member`; found by the soak, seed 5535 of this version's default
 * mix). Now a node answers with the configuration in force at its commit index, removed or not.
 */
Deno.test("a member that knows only removed peers learns the new members from their committed configuration", async () => {
  await _soakSeed(5535, ["memberAdds", "memberRemoves", "membersQueries"]);
});

/**
 * A follower that installed a snapshot whose metadata listed the voters without their addresses
 * (as a leader sent it when its file recorded the voters alone) later led and removed a member:
 * the change copied its configuration, addresses missing, and a node that had joined (whose
 * cluster file lists only itself) knew no one after taking it (`convergence`; found by the soak,
 * seed 21005, once the simulation modelled address books). Now the metadata a leader sends carries
 * every member's address, and a follower fills what an older leader's lacks.
 */
Deno.test("a node that joined keeps its members' addresses through changes made by a leader that installed a snapshot", async () => {
  await _soakSeed(21005, ["memberAdds", "memberRemoves", "snapshotsInstalled"]);
});

/**
 * A leader proposed a lease's expiry and died of its failed disk in the same step; a follower
 * paused meanwhile took the entry when it resumed. The lease-bound check dated the proposal from
 * that follower (late, a false failure; found by the soak, seed 29456): an entry now dates from
 * when it was first handed to a node's storage, if that was before it was seen in a log.
 */
Deno.test("an expiry proposed by a leader that died in the same step is dated from its proposal", async () => {
  await _soakSeed(29456, ["leasesExpired", "leaseBoundChecks", "diskFailureStops"]);
});

/**
 * A node was stopped the moment it resumed from a pause (its cluster file put right), with a
 * backlog of messages still coming in while its transport closed: they made Readies whose writes
 * started after the stop had waited for the writer, and closing the storage failed as busy
 * (found by the soak, seed 30278). A stopping node starts no new write or snapshot.
 */
Deno.test("a node stopped as it resumes from a pause, messages still arriving, closes its storage cleanly", async () => {
  await _soakSeed(30278, ["editedFileStarts", "stops", "pauses"], 5);
});

/**
 * Snapshot transfers to a follower broke mid-upload again and again on a lossy network; the
 * leader, which then waited up to 5 s after any failed transfer, sent too few to get one through
 * before the convergence bound (found by the soak, seed 34201). It waits only after a follower
 * answered it has no room. Then most transfers break: a leader that waited after every failure
 * fails seed 34201 and 2 of these 4 seeds (convergence).
 */
Deno.test("a follower whose snapshot transfers break mid-upload is sent the snapshot again at once", async () => {
  await _soakSeed(34201, ["snapshotSendsFailed", "snapshotsInstalled"]);
  const { failures, totals } = await _runSeeds(_range(1, 4), (seed) => ({
    seed,
    nodes: 3,
    durationMs: 20_000,
    snapshotThreshold: 20,
    catchUpEntries: 0,
    faults: { snapshotBreakRate: 0.8 },
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, ["snapshotSendsFailed", "snapshotsInstalled"]);
});

/**
 * A watcher's very first look asked from index 1 of a node whose history starts later: the
 * simulation's watcher ended a stretch it had not begun and threw (found by the soak, seed 41433).
 */
Deno.test("a watcher whose first look is answered 410 starts its first stretch at the oldest index", async () => {
  await _soakSeed(41433, ["watchResyncs"], 5);
});

Deno.test("members away while a new node joined and took the lead catch up, and learners removed while down learn it", async () => {
  const seeds = [...AWAY_SEEDS.map(([seed]) => seed), ..._range(101, 10)];
  const { failures, totals } = await _runSeeds(seeds, (seed) => ({
    seed,
    nodes: 3,
    durationMs: 20_000,
    faults: AWAY_FAULTS,
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, ["memberAdds", "memberRemoves", "partitions", "membersQueries"]);
});

Deno.test("without answers to the members queries, a stale member and an unaware removed learner are caught", async () => {
  for (const [seed, check] of AWAY_SEEDS) {
    const { failures } = await _runSeeds([seed], (seed) => ({
      seed,
      nodes: 3,
      durationMs: 20_000,
      faults: { ...AWAY_FAULTS, membersAnswerRate: 0 },
    }));
    assert.equal(failures.length, 1, `seed ${seed} did not fail`);
    assert.equal(failures[0]!.check, check, failures[0]!.message.split("\n")[0]);
    assert.match(failures[0]!.replay, /"membersAnswerRate":0/);
  }
});

Deno.test("the same options replay the very same run", async () => {
  const options: SimulationOptions = { seed: 42, nodes: 5, durationMs: 5_000 };
  const a = await runSimulation(options);
  const b = await runSimulation(options);
  assert.equal(a.digest, b.digest);
  assert.deepEqual(a.stats, b.stats);
  const c = await runSimulation({ ...options, seed: 43 });
  assert.notEqual(a.digest, c.digest, "different seeds should give different runs");
});

Deno.test("a replay command names every option that shapes the run", () => {
  const command = replayCommand({
    seed: 7,
    nodes: 5,
    durationMs: 1234,
    faults: { dropRate: 0.5 },
    clients: 2,
    keys: 4,
    leaseReads: 0.25,
    longValues: 0.2,
    snapshotThreshold: 20,
    catchUpEntries: 5,
    diskFault: "forget-synced",
    watchers: 3,
    watchFault: "skip",
    waiters: 4,
    waitFault: "late",
    backupReaders: 2,
    disabledChecks: ["durable-majority"],
  });
  assert.equal(
    command,
    `deno run -A scripts/soak.ts --seed 7 --nodes 5 --duration-ms 1234 --faults '{"dropRate":0.5}' ` +
      "--clients 2 --keys 4 --lease-reads 0.25 --long-values 0.2 --snapshot-threshold 20 --catch-up-entries 5 " +
      "--disk-fault forget-synced --watchers 3 --watch-fault skip --waiters 4 --wait-fault late " +
      "--backup-readers 2 --disable durable-majority",
  );
});

/** Runs crash-heavy seeds on a misbehaving disk until `enough` of them failed. */
function _faulty(
  fault: DiskFault,
  count: number,
  extra: Partial<SimulationOptions> = {},
  enough = 1,
): Promise<_Batch> {
  return _runSeeds(_range(1, count), (seed) => ({
    seed,
    nodes: 3,
    durationMs: 6_000,
    diskFault: fault,
    faults: CRASHY,
    ...extra,
  }), enough);
}

Deno.test("a disk that acknowledges syncs before the data is durable is caught, with seed and replay command", async () => {
  const { failures } = await _faulty("ack-before-sync", 10);
  assert.ok(failures.length > 0, "no seed caught the lying disk");
  const f = failures[0]!;
  assert.match(f.message, new RegExp(`^seed ${f.seed}: `));
  assert.ok(f.message.includes(`replay: ${f.replay}`), f.message);
  assert.match(f.replay, new RegExp(`--seed ${f.seed} .*--disk-fault ack-before-sync`));
  assert.ok(f.trace.length > 0 && f.message.includes("last "), "the trace tail is missing");
});

Deno.test("a disk that acknowledges syncs before the data is durable is caught by the end-to-end checks alone", async () => {
  const { failures } = await _faulty(
    "ack-before-sync",
    20,
    { disabledChecks: INTERNAL_CHECKS },
    8,
  );
  const endToEnd = failures.filter((f) =>
    ["linearizability", "convergence", "liveness"].includes(f.check)
  );
  assert.ok(endToEnd.length > 0, `not caught end to end: ${_describe(failures)}`);
});

Deno.test("a disk that forgets an acknowledged WAL write in a crash is caught by the recovery check", async () => {
  const { failures } = await _faulty("forget-synced", 10);
  assert.ok(failures.length > 0, "no seed caught the forgotten writes");
  assert.ok(failures.some((f) => f.check === "recovery"), _describe(failures));
  assert.match(failures[0]!.replay, /--disk-fault forget-synced/);
});

Deno.test("a storage that compacts the log past its snapshot is caught", async () => {
  const { failures } = await _faulty("compact-past-snapshot", 10, {
    snapshotThreshold: 20,
    catchUpEntries: 0,
  });
  assert.ok(failures.length > 0, "no seed caught the compaction past the snapshot");
  assert.match(failures[0]!.replay, /--snapshot-threshold 20 .*--disk-fault compact-past-snapshot/);
});

Deno.test("snapshots that record the members without their addresses are caught: a joined node restarted from one knows no one", async () => {
  // Membership changes and restarts with snapshots: a node added to the cluster (whose cluster
  // file lists only itself) restarts from a snapshot of its own or the leader's.
  const { failures } = await _runSeeds(_range(1, 10), (seed) => ({
    seed,
    nodes: 3,
    durationMs: 20_000,
    diskFault: "snapshot-without-addresses",
    // Edited cluster files (which also leave nodes without addresses) would shift what is caught.
    faults: { editedFileRate: 0 },
  }), 1);
  assert.ok(failures.length > 0, "no seed caught the snapshots without addresses");
  const f = failures[0]!;
  assert.equal(f.check, "convergence", _describe(failures));
  assert.match(f.message, /no address for member\(s\)/);
  assert.match(f.replay, /--disk-fault snapshot-without-addresses/);
});

Deno.test("a storage that installs a received snapshot without its WAL reset record is caught", async () => {
  // The WAL still ends where it did before the install; the node's next write after the
  // snapshot, a commit record at the snapshot's index or an append that leaves a gap, is past the
  // log's end, which the real WAL refuses: the node stops (node-error).
  const { failures } = await _faulty("install-without-reset", 40, {
    snapshotThreshold: 20,
    catchUpEntries: 0,
  });
  assert.ok(failures.length > 0, "no seed caught the install without a reset record");
  const f = failures[0]!;
  assert.equal(f.check, "node-error", _describe(failures));
  assert.match(
    f.message,
    /Cannot (record commit index \d+: the log ends at|append entry \d+: the WAL's last index is) \d+/,
  );
  assert.match(f.replay, /--disk-fault install-without-reset/);
});

Deno.test("appends from another cluster's node are refused; a storage that forgets its cluster id takes them and is caught", async () => {
  const faults = { ...CRASHY, otherClusterEveryMs: 300 };
  const { failures, totals } = await _runSeeds(
    _range(1, 3),
    (seed) => ({ seed, nodes: 3, durationMs: 6_000, faults }),
  );
  assert.equal(failures.length, 0, _describe(failures));
  assert.ok(totals.otherClusterRefusals! >= 10, `only ${totals.otherClusterRefusals} refused`);
  const caught = await _faulty("forget-cluster-id", 3, { faults });
  assert.ok(
    caught.failures.length > 0,
    "no seed caught the node that took another cluster's append",
  );
  assert.match(caught.failures[0]!.replay, /--disk-fault forget-cluster-id/);
  assert.match(caught.failures[0]!.replay, /"otherClusterEveryMs":300/);
});

Deno.test("a node restarted with a cluster file that lists only itself keeps its cluster's members; one that takes the file's is caught", async () => {
  const faults = { ...CRASHY, editedFileRate: 0.5, stopRate: 0.3 };
  const { failures, totals } = await _runSeeds(
    _range(1, 3),
    (seed) => ({ seed, nodes: 3, durationMs: 6_000, faults }),
  );
  assert.equal(failures.length, 0, _describe(failures));
  assert.ok(totals.editedFileStarts! >= 5, `only ${totals.editedFileStarts} edited restarts`);
  const caught = await _faulty("forget-initial-voters", 5, { faults });
  assert.ok(caught.failures.length > 0, "no seed caught the node that took the edited file");
  assert.match(caught.failures[0]!.replay, /--disk-fault forget-initial-voters/);
});

Deno.test("a node that stops when its disk is full is caught", async () => {
  // Disks fill up often; a write that finds no space fails like any other IO error, which stops
  // the node (node-error), as the first version's full disks did.
  const { failures } = await _faulty("nospace-fatal", 10, {
    faults: { ...CRASHY, diskFullEveryMs: 300, maxDiskFullMs: 600 },
  });
  assert.ok(failures.length > 0, "no seed caught the node stopping on a full disk");
  const f = failures[0]!;
  assert.equal(f.check, "node-error", _describe(failures));
  assert.match(f.message, /disk write failed: input\/output error/);
  assert.match(f.replay, /--disk-fault nospace-fatal/);
  assert.match(f.replay, /"diskFullEveryMs":300/);
});

Deno.test("a storage that writes the live state instead of the state at the snapshot's index is caught by the applied-state check", async () => {
  const { failures } = await _faulty("snapshot-live-state", 20, {
    snapshotThreshold: 20,
    catchUpEntries: 0,
  });
  assert.ok(failures.length > 0, "no seed caught the snapshots of the live state");
  assert.equal(failures[0]!.check, "state-machine-safety", _describe(failures));
  assert.match(failures[0]!.message, /applied up to \d+ but holds/);
  assert.match(failures[0]!.replay, /--disk-fault snapshot-live-state/);
});

Deno.test("a failing seed fails the same way when replayed", async () => {
  const { failures } = await _faulty("forget-synced", 10);
  assert.ok(failures.length > 0, "expected a failing seed");
  const f = failures[0]!;
  const again = await _runSeeds([f.seed], (seed) => ({
    seed,
    nodes: 3,
    durationMs: 6_000,
    diskFault: "forget-synced",
    faults: CRASHY,
  }));
  assert.equal(again.failures[0]?.message, f.message);
});

/** Misbehaving watchers the watch check must catch, and the runs that show it. */
const _WATCH_FAULTS = [
  { fault: "repeat", what: "resumes at its last index", seeds: _range(1, 20), long: false },
  { fault: "skip", what: "resumes one index late", seeds: _range(1, 20), long: false },
  // The protocol before event ids: a stream broken inside one entry's changes lost the rest of
  // them. Such breaks need entries with several changes of a watcher's keys: longer runs, and
  // few of them caught it. Seed 23 does; it runs first, and the rest of the range stays behind it
  // for when a change moves the interleavings. Since the clients' transactions on three keys
  // (entries that change two keys at once), most seeds do: 35 of 1..60 on this code.
  {
    fault: "index",
    what: "goes on after the index of an event inside an entry's changes, not after its id,",
    seeds: [23, ..._range(1, 60).filter((seed) => seed !== 23)],
    long: true,
  },
] as const;

for (const { fault, what, seeds, long } of _WATCH_FAULTS) {
  Deno.test(`a watcher that ${what} is caught by the watch check`, async () => {
    const { failures } = await _runSeeds(seeds, (seed) => ({
      seed,
      ...(long
        ? { nodes: nodesForSeed(seed), durationMs: 20_000 }
        : { nodes: 3 as const, durationMs: 4_000, watchers: 4 }),
      watchFault: fault,
    }), 1);
    assert.ok(failures.length > 0, "no seed failed");
    assert.equal(
      failures[0]!.check,
      "watch",
      failures[0]!.message.split("\n").slice(0, 5).join("\n"),
    );
    assert.match(failures[0]!.message, /(missing|extra or repeated) \["\d+ (put|delete|expire) /);
  });
}

/** Misbehaving blocking readers the blocking-read check must catch. */
const _WAIT_FAULTS = [
  {
    fault: "early",
    what: "asks after the index before the one it saw",
    pattern: /not a change after/,
  },
  {
    fault: "late",
    what: "asks after the index after the one it saw",
    pattern: /timed out, though/,
  },
] as const;

for (const { fault, what, pattern } of _WAIT_FAULTS) {
  Deno.test(`a blocking reader that ${what} is caught by the blocking-read check`, async () => {
    const { failures } = await _runSeeds(_range(1, 20), (seed) => ({
      seed,
      nodes: 3,
      durationMs: 4_000,
      waitFault: fault,
    }), 1);
    assert.ok(failures.length > 0, "no seed failed");
    const message = failures[0]!.message.split("\n").slice(0, 5).join("\n");
    assert.equal(failures[0]!.check, "blocking-read", message);
    assert.match(failures[0]!.message, pattern);
  });
}
