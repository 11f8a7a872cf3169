import assert from "node:assert/strict";
import {
  type CheckName,
  type DriverBug,
  type FaultOptions,
  type ModelFix,
  replayCommand,
  runSimulation,
  SimulationFailure,
  type SimulationOptions,
  type SimulationStats,
} from "./simulator.ts";

/** Virtual time per seed in the default run: about 0.1 s of wall time per seed on one core. */
const DURATION_MS = 40_000;

/** Crash-heavy faults with slow disks: a wide window between an acknowledgement and its sync. */
const CRASHY: Partial<FaultOptions> = {
  crashEveryMs: 700,
  powerFailureRate: 0.4,
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
function _runSeeds(seeds: number[], make: (seed: number) => SimulationOptions): _Batch {
  const failures: SimulationFailure[] = [];
  const totals: Record<string, number> = {};
  for (const seed of seeds) {
    try {
      const options = make(seed);
      const { stats } = runSimulation(options);
      for (const [k, v] of Object.entries(stats as unknown as Record<string, unknown>)) {
        if (typeof v === "number") totals[k] = (totals[k] ?? 0) + v;
      }
    } catch (e) {
      if (!(e instanceof SimulationFailure)) throw e;
      failures.push(e);
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

function _assertExercised(totals: Record<string, number>, keys: (keyof SimulationStats)[]): void {
  for (const k of keys) assert.ok((totals[k] ?? 0) > 0, `no ${k} in the whole batch`);
}

Deno.test("three-node clusters lose no acknowledged write and stay linearizable under every fault mix", () => {
  // Snapshot thresholds are drawn per seed (a quarter of the seeds take none).
  const { failures, totals } = _runSeeds(
    _range(1, 180),
    (seed) => ({ seed, nodes: 3, durationMs: DURATION_MS }),
  );
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, [
    "writesOk",
    "writesUnknown",
    "readsOk",
    "crashes",
    "powerFailures",
    "tornWrites",
    "partitions",
    "pauses",
    "messagesDropped",
    "messagesDuplicated",
    "snapshotsTaken",
    "snapshotsInstalled",
  ]);
  assert.ok(totals.elections! > 180 * 2, `only ${totals.elections} elections in 180 runs`);
});

Deno.test("five-node clusters lose no acknowledged write and stay linearizable under every fault mix", () => {
  const { failures, totals } = _runSeeds(
    _range(10_001, 120),
    (seed) => ({ seed, nodes: 5, durationMs: DURATION_MS }),
  );
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, ["writesOk", "readsOk", "crashes", "partitions", "pauses"]);
});

Deno.test("snapshots, log compaction and snapshot transfers keep every check under every fault mix", () => {
  // Small thresholds and few catch-up entries: followers just behind need a snapshot. One seed in
  // three runs crash-heavy with slow disks, so that crashes land inside installs.
  const { failures, totals } = _runSeeds(_range(30_001, 120), (seed) => ({
    seed,
    nodes: seed % 2 === 0 ? 5 : 3,
    durationMs: 20_000,
    snapshotThreshold: [10, 20, 50][Math.floor(seed / 2) % 3]!,
    catchUpEntries: [0, 5][Math.floor(seed / 6) % 2]!,
    ...(seed % 3 === 0 ? { faults: CRASHY } : {}),
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, [
    "snapshotsTaken",
    "snapshotsSent",
    "snapshotSendsFailed",
    "snapshotsReceived",
    "snapshotsInstalled",
    "snapshotRestarts",
    "installsCompletedAtStartup",
    "segmentsCompacted",
    "crashes",
    "tornWrites",
    "partitions",
    "pauses",
    "messagesDropped",
  ]);
  assert.ok(
    totals.snapshotsInstalled! >= 120,
    `only ${totals.snapshotsInstalled} snapshots installed in 120 runs`,
  );
});

Deno.test("lease reads stay linearizable under every fault mix", () => {
  const { failures, totals } = _runSeeds(_range(20_001, 40), (seed) => ({
    seed,
    nodes: seed % 2 === 0 ? 3 : 5,
    durationMs: 20_000,
    leaseReads: 0.5,
  }));
  assert.equal(failures.length, 0, _describe(failures));
  _assertExercised(totals, ["leaseReadsOk", "partitions", "crashes"]);
});

Deno.test("lease reads stay linearizable when a paused leader resumes after being replaced", () => {
  // The driver gives a resumed node the ticks its pause made it miss before it answers a lease
  // read; without that, seed 69 (and about 5% of these seeds) read stale data.
  const { failures, totals } = _runSeeds(_range(60, 60), (seed) => ({
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

Deno.test("the same options replay the very same run", () => {
  const options: SimulationOptions = { seed: 42, nodes: 5, durationMs: 10_000 };
  const a = runSimulation(options);
  const b = runSimulation(options);
  assert.equal(a.digest, b.digest);
  assert.deepEqual(a.stats, b.stats);
  const c = runSimulation({ ...options, seed: 43 });
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
    snapshotThreshold: 20,
    catchUpEntries: 5,
    modelFixes: ["recv-prune"],
    bug: "persist-early",
    disabledChecks: ["durable-majority"],
  });
  assert.equal(
    command,
    `deno run -A scripts/soak.ts --seed 7 --nodes 5 --duration-ms 1234 --faults '{"dropRate":0.5}' ` +
      "--clients 2 --keys 4 --lease-reads 0.25 --snapshot-threshold 20 --catch-up-entries 5 " +
      "--model-fix recv-prune --bug persist-early --disable durable-majority",
  );
});

Deno.test("a driver that acknowledges before its write is durable is caught, with seed and replay command", () => {
  const { failures } = _runSeeds(
    _range(1, 10),
    (seed) => ({ seed, nodes: 3, durationMs: 10_000, bug: "persist-early", faults: CRASHY }),
  );
  assert.ok(failures.length > 0, "no seed caught the early acknowledgements");
  const f = failures[0]!;
  assert.match(f.message, new RegExp(`^seed ${f.seed}: `));
  assert.ok(f.message.includes(`replay: ${f.replay}`), f.message);
  assert.match(f.replay, new RegExp(`--seed ${f.seed} .*--bug persist-early`));
  assert.ok(f.trace.length > 0 && f.message.includes("last "), "the trace tail is missing");
});

Deno.test("a driver that acknowledges before its write is durable is caught by the end-to-end checks alone", () => {
  const { failures } = _runSeeds(_range(1, 40), (seed) => ({
    seed,
    nodes: 3,
    durationMs: 20_000,
    bug: "persist-early",
    faults: CRASHY,
    disabledChecks: INTERNAL_CHECKS,
  }));
  assert.ok(failures.length > 0, "no seed caught the early acknowledgements");
});

Deno.test("a driver that forgets an acknowledged write after a crash is caught", () => {
  const { failures } = _runSeeds(
    _range(1, 10),
    (seed) => ({ seed, nodes: 3, durationMs: 10_000, bug: "forget-synced", faults: CRASHY }),
  );
  assert.ok(failures.length > 0, "no seed caught the forgotten writes");
  assert.match(failures[0]!.replay, /--bug forget-synced/);
});

Deno.test("a driver that forgets an acknowledged write is caught by linearizability and convergence alone", () => {
  const { failures } = _runSeeds(_range(1, 20), (seed) => ({
    seed,
    nodes: 3,
    durationMs: 20_000,
    bug: "forget-synced",
    faults: CRASHY,
    disabledChecks: INTERNAL_CHECKS,
  }));
  const checks = new Set(failures.map((f) => f.check));
  assert.ok(failures.length > 0, "no seed caught the forgotten writes");
  assert.ok(checks.has("linearizability"), `caught only by ${[...checks].join(", ")}`);
});

Deno.test("a failing seed fails the same way when replayed", () => {
  const options: SimulationOptions = {
    seed: 3,
    nodes: 3,
    durationMs: 10_000,
    bug: "forget-synced",
    faults: CRASHY,
  };
  const messages = [1, 2].map(() => {
    try {
      runSimulation(options);
      return "";
    } catch (e) {
      if (!(e instanceof SimulationFailure)) throw e;
      return e.message;
    }
  });
  assert.notEqual(messages[0], "", "expected this seed to fail");
  assert.equal(messages[0], messages[1]);
});

/** Runs a broken driver with snapshots on over crash-heavy seeds; returns the checks that failed. */
function _snapshotBug(bug: DriverBug, count: number): { failures: SimulationFailure[] } {
  return _runSeeds(_range(1, count), (seed) => ({
    seed,
    nodes: seed % 2 === 0 ? 5 : 3,
    durationMs: 10_000,
    snapshotThreshold: 20,
    catchUpEntries: 0,
    bug,
    faults: CRASHY,
  }));
}

Deno.test("a driver that compacts the log past its snapshot is caught", () => {
  const { failures } = _snapshotBug("compact-past-snapshot", 12);
  assert.ok(failures.length > 0, "no seed caught the compaction past the snapshot");
  assert.ok(failures.some((f) => f.check === "recovery"), _describe(failures));
  assert.match(failures[0]!.replay, /--snapshot-threshold 20 .*--bug compact-past-snapshot/);
});

Deno.test("a driver that installs a received snapshot without the reset record is caught", () => {
  const { failures } = _snapshotBug("install-without-reset", 12);
  assert.ok(failures.length > 0, "no seed caught the install without a reset record");
});

Deno.test("a snapshot that does not hold the state at its index is caught by the snapshot check", () => {
  const { failures } = _snapshotBug("snapshot-live-state", 5);
  assert.ok(failures.length > 0, "no seed caught the snapshots of the live state");
  assert.ok(failures.every((f) => f.check === "snapshot"), _describe(failures));
});

/** The failure of a run with exactly these model fixes (none: src/ as it is), or null. */
function _failure(options: SimulationOptions, fixes: ModelFix[]): SimulationFailure | null {
  try {
    runSimulation({ ...options, modelFixes: fixes });
    return null;
  } catch (e) {
    if (!(e instanceof SimulationFailure)) throw e;
    return e;
  }
}

Deno.test("regression: an install no longer prunes a newer received snapshot (the node could never restart)", () => {
  // disk_storage.ts installReceived used to delete every .recv file: a node received a newer
  // snapshot while an older install was being written; that install deleted the newer file; the
  // newer install then wrote its reset record and failed to rename the file, and the node could
  // never start again. (Seeds change when the core changes; `deno task soak --model-fix ""
  // --nodes 5 --snapshot-threshold 20 --catch-up-entries 5` finds new ones.)
  const options: SimulationOptions = {
    seed: 395,
    nodes: 5,
    durationMs: 20_000,
    snapshotThreshold: 20,
    catchUpEntries: 5,
  };
  const exact = _failure(options, []);
  assert.ok(exact !== null, "the old behaviour no longer reproduces the bug");
  assert.equal(exact.check, "node-error");
  assert.match(exact.message, /installing snapshot 100: its received file is gone/);
  assert.equal(_failure(options, ["recv-prune"]), null, "the run fails with the fix too");
  assert.equal(_failure(options, ["recv-prune", "install-during-snapshot"]), null, "src/ as it is");
});

Deno.test("regression: installing a snapshot while writing one no longer corrupts the one being written", () => {
  // A node starts a snapshot; a newer one from the leader is installed before the file is written.
  // Before the fix, kv.reset() changed the map under the view (the file labelled 21 held the
  // state at 22), and snapshotSaved then threw (compactTo 22 is past the snapshot at 21). The
  // state machine's half of the fix is in the real KvStateMachine the simulator runs, so the
  // old driver now fails on the second half: the node stops.
  const options: SimulationOptions = {
    seed: 57,
    nodes: 5,
    durationMs: 20_000,
    snapshotThreshold: 20,
    catchUpEntries: 5,
  };
  const exact = _failure(options, []);
  assert.ok(exact !== null, "the old behaviour no longer reproduces the bug");
  assert.ok(["snapshot", "node-error"].includes(exact.check), exact.message);
  assert.match(
    exact.message,
    /compactTo \d+ is past the snapshot at \d+|holds \d+ pairs that differ/,
  );
  assert.equal(_failure(options, ["install-during-snapshot"]), null);
  assert.equal(_failure(options, ["recv-prune", "install-during-snapshot"]), null, "src/ as it is");
});
