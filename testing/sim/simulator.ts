/**
 * A deterministic simulation of whole raftkv clusters that runs the REAL node: each node is a
 * {@linkcode RaftNode} (`src/node/raft_node.ts`, the driver the binary runs) over the real storage
 * ({@linkcode openDiskStorage}: the WAL, hard-state, log-metadata and snapshot files, and their
 * start-up recovery) on a simulated disk ({@linkcode SimFileSystem}), a simulated clock (one
 * {@linkcode SimClock}, seen by each node through a rate-scaled {@linkcode NodeClock}) and a
 * simulated network ({@linkcode SimNetwork}, carrying the real wire format).
 *
 * One run is determined by its options (above all its seed): one seeded PRNG drives every choice
 * the simulation makes (delays, faults, client operations, what a crash keeps of unsynced data,
 * every node's election jitter), and nothing reads the real clock or touches a real file or
 * socket. The event loop advances the shared clock to the next due timer, fires it, and then lets
 * every promise settle (a macrotask round trip through a `MessageChannel`, so that all microtasks
 * ran) before checking the cluster and taking the next timer.
 *
 * Faults: message loss, duplication, delay and reordering; symmetric, asymmetric and
 * leader-isolating partitions; crashes that keep only what was synced (sometimes part of the
 * unsynced writes too, possibly torn: {@linkcode SimFileSystem.crash}); whole-cluster power
 * failures; process pauses; clock skew; slow disks. Fault injections for the guard tests
 * ({@linkcode DiskFault}: a disk that acknowledges syncs early or forgets a synced write, a
 * storage that compacts past its snapshot, installs a received snapshot without its WAL reset
 * record, or snapshots the live state) misbehave at the file-system or storage seam, never in a
 * copy of the driver.
 *
 * Checked from outside after every step, through {@linkcode RaftNode.inspect}, the storage calls
 * and the disk images: election safety, log matching, leader completeness, state-machine safety
 * (every committed index holds one entry everywhere, and every node's applied data equals the
 * reference state at its applied index), commit monotonicity, that every committed entry is on
 * disk on a majority, and after every restart that the disk gave back everything the node was
 * told was durable (`recovery`); every delivered message passes the real peer validator and is
 * taken by the node (`peer-refusal`). At the end, after healing everything: liveness (a leader
 * serves a read of every key in time), convergence of every node's data, and linearizability of
 * the client history (`src/check/linearizability.ts`).
 *
 * @module
 */

import { RaftNode } from "../../src/node/raft_node.ts";
import type { NodeInspection, NodeStorage } from "../../src/node/raft_node.ts";
import { openDiskStorage } from "../../src/node/disk_storage.ts";
import { seededRandom } from "../../src/raft/rand.ts";
import { type Entry, EntryType, type HardState, type NodeId } from "../../src/raft/types.ts";
import { NotLeaderError } from "../../src/raft/errors.ts";
import { decodeCommand } from "../../src/kv/state_machine.ts";
import {
  NoSpaceError,
  NotAppliedError,
  OutcomeUnknownError,
  StoppingError,
} from "../../src/node/backend.ts";
import {
  checkLinearizability,
  describeHistory,
  type Operation,
} from "../../src/check/linearizability.ts";
import { SimClock } from "../sim_clock.ts";
import { SimFileSystem } from "../sim_fs.ts";
import { NodeClock } from "./node_clock.ts";
import { SimNetwork } from "./network.ts";

// ---- public API -------------------------------------------------------------------------------

/** The fault mix of a run. Rates are probabilities in [0, 1]; times are virtual milliseconds. */
export interface FaultOptions {
  /** Time between ticks; the leader heartbeats every tick (the timing, not a fault). */
  tickMs: number;
  /** Probability that a batch of messages is lost. */
  dropRate: number;
  /** Probability that a batch is delivered twice. */
  duplicateRate: number;
  /** Shortest network delay. */
  minDelayMs: number;
  /** Longest ordinary network delay. */
  maxDelayMs: number;
  /** Probability that a batch is held back by up to `slowDelayMs` more (heavy reordering). */
  slowRate: number;
  /** The longest extra delay of a slow batch. */
  slowDelayMs: number;
  /** Mean time between partitions; 0 disables them. */
  partitionEveryMs: number;
  /** The longest a partition lasts before it heals. */
  maxPartitionMs: number;
  /** Mean time between crashes; 0 disables them. */
  crashEveryMs: number;
  /** The longest a crashed node stays down. */
  maxDowntimeMs: number;
  /** Probability that a crash is a power failure of every node at once. */
  powerFailureRate: number;
  /**
   * Probability that a crash keeps part of the unsynced writes (in order, the next one possibly
   * torn) and directory changes; otherwise only what was synced survives.
   */
  tornWriteRate: number;
  /** Mean time between process pauses; 0 disables them. */
  pauseEveryMs: number;
  /** The longest pause. */
  maxPauseMs: number;
  /** Largest deviation of a node's clock rate from real time (0.05 = 5 %). */
  clockSkew: number;
  /** Shortest sync of a file or directory. */
  minDiskMs: number;
  /** Longest sync. */
  maxDiskMs: number;
}

/**
 * A misbehaving disk or storage layer, for the guard tests that prove the checks catch a node
 * that loses acknowledged data. Each acts at a seam; the node's code is the real one.
 *
 * - `ack-before-sync`: the disk acknowledges syncs without making anything durable
 *   ({@linkcode SimFileSystem.faults}); votes and append acknowledgements leave before the data
 *   they promise is on disk.
 * - `forget-synced`: a crash loses the last synced write of a WAL segment (an acknowledged
 *   record forgotten).
 * - `compact-past-snapshot`: the storage compacts the WAL up to its last index after each
 *   snapshot, dropping entries after the snapshot's index.
 * - `install-without-reset`: the storage installs a received snapshot without writing the WAL
 *   reset record (the install's commit point; the WAL's `reset` is patched to do nothing), so the
 *   log on disk does not restart after the snapshot.
 * - `snapshot-live-state`: the storage writes a snapshot of the node's live data (read through
 *   {@linkcode NodeInspection.entries} a few ticks after the snapshot began, so entries applied
 *   meanwhile leak in) instead of the copy-on-write view at the snapshot's index.
 */
export type DiskFault =
  | "ack-before-sync"
  | "forget-synced"
  | "compact-past-snapshot"
  | "install-without-reset"
  | "snapshot-live-state";

/** Every {@linkcode DiskFault}, for command-line parsing. */
export const DISK_FAULTS: readonly DiskFault[] = [
  "ack-before-sync",
  "forget-synced",
  "compact-past-snapshot",
  "install-without-reset",
  "snapshot-live-state",
];

/** The names of the checks, as {@linkcode SimulationFailure.check} reports them. */
export type CheckName =
  | "election-safety"
  | "log-matching"
  | "leader-completeness"
  | "state-machine-safety"
  | "commit-monotonic"
  | "durable-majority"
  | "recovery"
  | "node-error"
  | "peer-refusal"
  | "liveness"
  | "convergence"
  | "linearizability"
  | "runaway";

/** The options of one run. */
export interface SimulationOptions {
  /** The seed every random choice derives from. */
  seed: number;
  /** The cluster size. */
  nodes: 3 | 5;
  /** Virtual time with clients and faults active, before the final heal. */
  durationMs: number;
  /** Overrides of the fault mix (default: a mix chosen from the seed, see {@linkcode faultProfile}). */
  faults?: Partial<FaultOptions>;
  /** Concurrent clients. Default: the cluster size plus one. */
  clients?: number;
  /** Size of the key space. Default 3 (so that clients contend). */
  keys?: number;
  /** Ticks without a leader before an election (randomized up to twice that). Default 10. */
  electionTicks?: number;
  /** A client gives up on an operation after this long. Default 3000. */
  opTimeoutMs?: number;
  /** After the final heal, the final reads must all succeed within this long. Default 20000. */
  livenessMs?: number;
  /** Fraction of client reads sent with the "lease" consistency. Default 0. */
  leaseReads?: number;
  /**
   * Applied entries between snapshots (`snapshotThreshold` of the node); 0 switches snapshots
   * off. Default: drawn from the seed, see {@linkcode snapshotDefaults}.
   */
  snapshotThreshold?: number;
  /**
   * Entries kept in the log before a snapshot's index (`snapshotCatchUpEntries` of the node).
   * Default: drawn from the seed, see {@linkcode snapshotDefaults}.
   */
  catchUpEntries?: number;
  /** A misbehaving disk (guard tests). Default: none. */
  diskFault?: DiskFault;
  /** Checks to switch off (guard tests show the remaining ones still catch a fault). */
  disabledChecks?: CheckName[];
  /** Receives every line of the trace (slow: for replaying one seed). */
  onTrace?: (line: string) => void;
  /** Time budget of the final linearizability check in (real) milliseconds. Default 20000. */
  linearizabilityTimeoutMs?: number;
}

/** Counters describing a run. */
export interface SimulationStats {
  /** Steps of the event loop (timer due times reached). */
  events: number;
  /** Virtual time at the end of the run. */
  virtualMs: number;
  /** Writes acknowledged to clients. */
  writesOk: number;
  /** Writes whose outcome the client could not learn (recorded with an unknown return). */
  writesUnknown: number;
  /** Writes that definitely did not take effect (recorded nothing). */
  writesFailed: number;
  /** Linearizable reads served to clients (final reads included). */
  readsOk: number;
  /** Of those, reads sent with the "lease" consistency. */
  leaseReadsOk: number;
  /** Reads given up after a timeout (not recorded). */
  readsDropped: number;
  /** Operations in the checked history. */
  historyOps: number;
  /** Terms that had a leader. */
  elections: number;
  /** The highest term any node reached. */
  maxTerm: number;
  /** The highest committed index. */
  maxCommit: number;
  /** Node crashes (power failures count once per node). */
  crashes: number;
  /** Whole-cluster power failures. */
  powerFailures: number;
  /** Crashes that left part of an unsynced write on disk, cut inside it. */
  tornWrites: number;
  /** Partitions injected. */
  partitions: number;
  /** Process pauses injected. */
  pauses: number;
  /** Messages handed to the network. */
  messagesSent: number;
  /** Messages lost (randomly, to a partition or to a down node). */
  messagesDropped: number;
  /** Messages delivered twice. */
  messagesDuplicated: number;
  /** Log appends and hard-state saves the storage completed. */
  diskWrites: number;
  /** Snapshots a node wrote of its own state (and compacted its log after). */
  snapshotsTaken: number;
  /** Snapshot transfers a leader started. */
  snapshotsSent: number;
  /** Of those, transfers that failed. */
  snapshotSendsFailed: number;
  /** Snapshots a follower received and stored. */
  snapshotsReceived: number;
  /** Received snapshots installed. */
  snapshotsInstalled: number;
  /** Restarts that loaded a snapshot. */
  snapshotRestarts: number;
  /** The linearizability verdict: "unknown" when its time budget ran out. */
  linearizability: "ok" | "unknown";
}

/** The outcome of a run that passed every check. */
export interface SimulationResult {
  /** The seed. */
  seed: number;
  /** The cluster size. */
  nodes: 3 | 5;
  /** The virtual duration with faults active. */
  durationMs: number;
  /** The name of the fault mix. */
  profile: string;
  /** The fault mix actually used. */
  faults: FaultOptions;
  /** The snapshot threshold used (0: no snapshots). */
  snapshotThreshold: number;
  /** The catch-up entries used. */
  catchUpEntries: number;
  /** Counters. */
  stats: SimulationStats;
  /** A hash of the run's trace and history: equal digests mean identical runs. */
  digest: string;
  /** The command replaying this run. */
  replay: string;
}

/** A run broke a check. The message starts with the seed and holds the replay command. */
export class SimulationFailure extends Error {
  /** The seed of the failing run. */
  readonly seed: number;
  /** The check that failed. */
  readonly check: CheckName;
  /** One shell command replaying the run with its full trace. */
  readonly replay: string;
  /** The last lines of the trace before the failure. */
  readonly trace: string[];

  /** Creates the failure; the message is built from the parts. */
  constructor(seed: number, check: CheckName, detail: string, replay: string, trace: string[]) {
    super(
      `seed ${seed}: ${check} violated: ${detail}\nreplay: ${replay}\n` +
        `last ${trace.length} events:\n${trace.join("\n")}`,
    );
    this.name = "SimulationFailure";
    this.seed = seed;
    this.check = check;
    this.replay = replay;
    this.trace = trace;
  }
}

/**
 * The fault mix used by default for a seed: a named profile ("calm", "lossy", "partitions",
 * "crashes", "pauses" or "chaos") with randomized parameters. The tick length is drawn too, and
 * fault timings are scaled to the election timeout (10 ticks).
 */
export function faultProfile(seed: number): { name: string; faults: FaultOptions } {
  const r = seededRandom((seed ^ 0x5bd1e995) >>> 0);
  const between = (lo: number, hi: number) => lo + r() * (hi - lo);
  const tickMs = [10, 20, 50, 100][Math.floor(r() * 4)]!;
  const election = tickMs * 10;
  const calm: FaultOptions = {
    tickMs,
    dropRate: 0,
    duplicateRate: 0,
    minDelayMs: 0.5,
    maxDelayMs: between(2, 15),
    slowRate: 0,
    slowDelayMs: 0,
    partitionEveryMs: 0,
    maxPartitionMs: 0,
    crashEveryMs: 0,
    maxDowntimeMs: 0,
    powerFailureRate: 0,
    tornWriteRate: 0,
    pauseEveryMs: 0,
    maxPauseMs: 0,
    clockSkew: between(0, 0.02),
    minDiskMs: 0.5,
    maxDiskMs: between(2, 20),
  };
  const lossy = (): Partial<FaultOptions> => ({
    dropRate: between(0.01, 0.1),
    duplicateRate: between(0, 0.05),
    maxDelayMs: between(5, 40),
    slowRate: between(0, 0.05),
    slowDelayMs: between(50, 500),
  });
  const partitions = (every: number): Partial<FaultOptions> => ({
    partitionEveryMs: every * election,
    maxPartitionMs: between(1, 5) * election,
  });
  const crashes = (every: number): Partial<FaultOptions> => ({
    crashEveryMs: every * election,
    maxDowntimeMs: between(0.3, 4) * election,
    powerFailureRate: between(0, 0.2),
    tornWriteRate: between(0.2, 0.8),
  });
  const pauses = (every: number): Partial<FaultOptions> => ({
    pauseEveryMs: every * election,
    maxPauseMs: between(0.3, 3) * election,
    clockSkew: between(0.01, 0.05),
  });
  const table: [string, number, () => Partial<FaultOptions>][] = [
    ["calm", 1, () => ({})],
    ["lossy", 2, lossy],
    ["partitions", 2, () => ({ ...partitions(between(1.5, 5)), dropRate: between(0, 0.02) })],
    ["crashes", 3, () => crashes(between(1.5, 5))],
    ["pauses", 1, () => pauses(between(1.5, 5))],
    ["chaos", 5, () => ({
      ...lossy(),
      ...partitions(between(2, 8)),
      ...crashes(between(2, 8)),
      ...pauses(between(3, 10)),
    })],
  ];
  const total = table.reduce((s, [, w]) => s + w, 0);
  let pick = r() * total;
  for (const [name, weight, make] of table) {
    pick -= weight;
    if (pick < 0) return { name, faults: { ...calm, ...make() } };
  }
  return { name: "calm", faults: calm };
}

/** The snapshot thresholds a seed draws from when its run does not set one (0: off). */
export const SNAPSHOT_THRESHOLDS: readonly number[] = [0, 20, 50, 200];

/**
 * The snapshot settings used by default for a seed: the threshold drawn from
 * {@linkcode SNAPSHOT_THRESHOLDS} (with `on`, from its non-zero values), and the catch-up entries
 * drawn from 0, 5 and the threshold itself.
 */
export function snapshotDefaults(
  seed: number,
  on = false,
): { snapshotThreshold: number; catchUpEntries: number } {
  const r = seededRandom((seed ^ 0x27d4eb2f) >>> 0);
  const choices = on ? SNAPSHOT_THRESHOLDS.filter((t) => t > 0) : SNAPSHOT_THRESHOLDS;
  const snapshotThreshold = choices[Math.floor(r() * choices.length)]!;
  const catchUpEntries = [0, 5, snapshotThreshold][Math.floor(r() * 3)]!;
  return { snapshotThreshold, catchUpEntries };
}

/** The default virtual duration of a run, as used by the soak script. */
export const DEFAULT_DURATION_MS = 20_000;

/** The cluster size used for `seed` when sizes are mixed: 3 for 60 % of the seeds, else 5. */
export function nodesForSeed(seed: number): 3 | 5 {
  return seed % 5 < 3 ? 3 : 5;
}

/** The one-line shell command replaying a run with these options (and printing its trace). */
export function replayCommand(options: SimulationOptions): string {
  const parts = [
    "deno run -A scripts/soak.ts",
    `--seed ${options.seed}`,
    `--nodes ${options.nodes}`,
    `--duration-ms ${options.durationMs}`,
  ];
  if (options.faults && Object.keys(options.faults).length > 0) {
    parts.push(`--faults '${JSON.stringify(options.faults)}'`);
  }
  if (options.clients !== undefined) parts.push(`--clients ${options.clients}`);
  if (options.keys !== undefined) parts.push(`--keys ${options.keys}`);
  if (options.leaseReads !== undefined) parts.push(`--lease-reads ${options.leaseReads}`);
  if (options.snapshotThreshold !== undefined) {
    parts.push(`--snapshot-threshold ${options.snapshotThreshold}`);
  }
  if (options.catchUpEntries !== undefined) {
    parts.push(`--catch-up-entries ${options.catchUpEntries}`);
  }
  if (options.diskFault !== undefined) parts.push(`--disk-fault ${options.diskFault}`);
  if (options.disabledChecks && options.disabledChecks.length > 0) {
    parts.push(`--disable ${options.disabledChecks.join(",")}`);
  }
  return parts.join(" ");
}

/**
 * Runs one simulation and checks it. Resolves with the stats, or rejects with a
 * {@linkcode SimulationFailure} naming the seed, the broken check and the replay command.
 *
 * @example
 * ```ts ignore
 * const result = await runSimulation({ seed: 7, nodes: 3, durationMs: 10_000 });
 * console.log(result.stats.writesOk);
 * ```
 */
export function runSimulation(options: SimulationOptions): Promise<SimulationResult> {
  return new _Simulation(options).run();
}

// ---- internals --------------------------------------------------------------------------------

const _TRACE_TAIL = 60;
/** Where each node keeps its files on its own simulated disk. */
const _PATHS = {
  walDir: "/data/wal",
  raftStatePath: "/data/raft_state.json",
  logMetadataPath: "/data/log_metadata.json",
  snapshotDir: "/data/snapshots",
};

/** What the simulation knows about one node, across its incarnations. */
interface _Node {
  id: NodeId;
  index: number;
  /** Its disk (replaced by the durable image at each crash). */
  fs: SimFileSystem;
  /** The running incarnation, or null while down or starting. */
  node: RaftNode | null;
  clock: NodeClock | null;
  /** Counts incarnations; anything from an older one is ignored. */
  inc: number;
  starting: boolean;
  pausedUntil: number;
  /** The highest commit index this incarnation reported. */
  lastCommit: number;
  lastApplied: number;
  /** Terms of the entries last seen in its log, by index (for log matching). */
  seen: number[];
  /**
   * What the storage told the node is durable: the term of each log entry, the snapshot index,
   * and the hard state. A crash must keep all of it (see `_checkRecovered`).
   */
  durable: number[];
  durableSnap: number;
  durableHs: HardState;
  /** The first index an append or install in flight may change (Infinity when none). */
  writingFrom: number;
  /** The same, frozen when the node crashed: the lowest over crashes since the last recovery check. */
  crashWritingFrom: number;
}

interface _Client {
  id: number;
  op: _ClientOp | null;
  hint: number;
  seq: number;
  final: boolean;
}

interface _ClientOp {
  client: _Client;
  kind: "put" | "delete" | "get";
  lease: boolean;
  key: string;
  value: string | null;
  call: number;
  attempt: number;
  done: boolean;
  /** Aborted at the deadline: every call still waiting on a node gives up. */
  abort: AbortController;
}

type _Outcome =
  | { kind: "ok"; index: number }
  | { kind: "value"; value: string | null }
  | { kind: "notApplied" }
  | { kind: "unknown" }
  | { kind: "notLeader"; leader: NodeId }
  | { kind: "refused" };

class _Simulation {
  readonly #opts: SimulationOptions;
  readonly #faults: FaultOptions;
  readonly #profile: string;
  readonly #rng: () => number;
  readonly #electionTicks: number;
  readonly #opTimeoutMs: number;
  readonly #livenessMs: number;
  readonly #quorum: number;
  readonly #keys: string[];
  readonly #disabled: Set<CheckName>;
  readonly #replay: string;
  readonly #onTrace: ((line: string) => void) | undefined;
  readonly #snapshotThreshold: number;
  readonly #catchUpEntries: number;
  readonly #segmentSize: number;

  readonly #clock = new SimClock();
  #network!: SimNetwork;
  #nodes: _Node[] = [];
  #clients: _Client[] = [];
  #history: Operation[] = [];
  #acked = new Map<string, { node: NodeId; index: number }>();
  #partitionId = 0;
  #phase: "run" | "drain" | "final" | "converge" | "done" = "run";
  #finalPending = 0;
  #failure: SimulationFailure | null = null;

  /** term -> id of its leader. */
  #leaders = new Map<number, NodeId>();
  /** (index, term) -> hash of the entry's data, as first seen in any log. */
  #entryHash = new Map<number, number>();
  /** The committed entries: term, and data hash; holes where no node showed it yet. */
  #committedTerm: number[] = [0];
  #committedHash: number[] = [0];
  #committedData: (Uint8Array | null)[] = [null];
  /** The term in which each index was first known committed. */
  #commitTerm: number[] = [0];
  #maxCommit = 0;
  /** The reference state: the data after applying the committed entries up to `#refIndex`. */
  #ref = new Map<string, string>();
  #refIndex = 0;
  /** {@linkcode _stateDigest} of the reference state after each index. */
  #refDigest: number[] = [0];

  #ring: string[] = [];
  #ringPos = 0;
  #digest = 0x811c9dc5;
  #stats: SimulationStats = {
    events: 0,
    virtualMs: 0,
    writesOk: 0,
    writesUnknown: 0,
    writesFailed: 0,
    readsOk: 0,
    leaseReadsOk: 0,
    readsDropped: 0,
    historyOps: 0,
    elections: 0,
    maxTerm: 0,
    maxCommit: 0,
    crashes: 0,
    powerFailures: 0,
    tornWrites: 0,
    partitions: 0,
    pauses: 0,
    messagesSent: 0,
    messagesDropped: 0,
    messagesDuplicated: 0,
    diskWrites: 0,
    snapshotsTaken: 0,
    snapshotsSent: 0,
    snapshotSendsFailed: 0,
    snapshotsReceived: 0,
    snapshotsInstalled: 0,
    snapshotRestarts: 0,
    linearizability: "ok",
  };

  constructor(opts: SimulationOptions) {
    if (opts.nodes !== 3 && opts.nodes !== 5) {
      throw new RangeError(`nodes must be 3 or 5, got ${opts.nodes}`);
    }
    if (!Number.isSafeInteger(opts.seed)) throw new RangeError(`bad seed ${opts.seed}`);
    this.#opts = opts;
    const profile = faultProfile(opts.seed);
    this.#profile = opts.faults && Object.keys(opts.faults).length > 0
      ? `${profile.name}+overrides`
      : profile.name;
    this.#faults = { ...profile.faults, ...opts.faults };
    this.#rng = seededRandom(opts.seed);
    this.#electionTicks = opts.electionTicks ?? 10;
    this.#opTimeoutMs = opts.opTimeoutMs ?? 3000;
    this.#livenessMs = opts.livenessMs ?? 20_000;
    this.#quorum = Math.floor(opts.nodes / 2) + 1;
    this.#keys = Array.from({ length: opts.keys ?? 3 }, (_, i) => `k${i}`);
    this.#disabled = new Set(opts.disabledChecks ?? []);
    this.#replay = replayCommand(opts);
    this.#onTrace = opts.onTrace;
    const snap = snapshotDefaults(opts.seed);
    this.#snapshotThreshold = opts.snapshotThreshold ?? snap.snapshotThreshold;
    this.#catchUpEntries = opts.catchUpEntries ??
      (opts.snapshotThreshold === undefined
        ? snap.catchUpEntries
        : Math.min(5000, this.#snapshotThreshold));
    for (
      const [name, v] of [["snapshotThreshold", this.#snapshotThreshold], [
        "catchUpEntries",
        this.#catchUpEntries,
      ]] as const
    ) {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`bad ${name} ${v}`);
    }
    // Small segments, so that rolling, compaction and multi-segment replay all happen.
    this.#segmentSize = [2048, 8192, 65536][Math.floor(this.#rng() * 3)]!;
  }

  // ---- the event loop -------------------------------------------------------------------------

  async run(): Promise<SimulationResult> {
    const channel = new MessageChannel();
    let wake: (() => void) | null = null;
    channel.port1.onmessage = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    /** Resolves once every microtask queued so far (and those they queue) has run. */
    const settle = () =>
      new Promise<void>((resolve) => {
        wake = resolve;
        channel.port2.postMessage(null);
      });
    try {
      const ids = Array.from({ length: this.#opts.nodes }, (_, i) => `n${i + 1}`);
      const f = this.#faults;
      this.#network = new SimNetwork(
        {
          random: this.#rng,
          now: () => this.#clock.now(),
          later: (ms, fn) => this.#later(ms, fn),
          note: (text) => this.#note(text),
          violation: (check, detail) => this.#violation(check, detail),
        },
        f,
        ids,
      );
      this.#nodes = ids.map((id, index) => this.#newNode(id, index));
      for (const n of this.#nodes) this.#restart(n);
      const clients = this.#opts.clients ?? this.#opts.nodes + 1;
      for (let i = 0; i < clients; i++) {
        const c: _Client = { id: i + 1, op: null, hint: -1, seq: 0, final: false };
        this.#clients.push(c);
        this.#clientStart(c);
      }
      this.#scheduleFaults();
      this.#later(this.#opts.durationMs, () => this.#finalHeal());

      const maxEvents = 200_000 + this.#opts.durationMs * 400;
      await settle();
      while (this.#phase !== "done") {
        this.#throwFailure();
        const due = this.#clock.nextDue();
        if (due === null) this.#fail("runaway", "no timer is set: the simulation stalled");
        this.#mix(Math.floor(due * 1000));
        try {
          this.#clock.runUntil(due);
        } catch (e) {
          if (!(e instanceof SimulationFailure)) {
            this.#fail("node-error", `unexpected error: ${(e as Error)?.stack ?? e}`);
          }
        }
        await settle();
        this.#throwFailure();
        for (const n of this.#nodes) this.#check(n);
        if (++this.#stats.events > maxEvents) {
          this.#fail("runaway", `more than ${maxEvents} steps`);
        }
      }
      this.#throwFailure();
      this.#stats.virtualMs = Math.round(this.#clock.now());
      Object.assign(this.#stats, this.#network.stats);
      this.#checkHistory();
      return {
        seed: this.#opts.seed,
        nodes: this.#opts.nodes,
        durationMs: this.#opts.durationMs,
        profile: this.#profile,
        faults: this.#faults,
        snapshotThreshold: this.#snapshotThreshold,
        catchUpEntries: this.#catchUpEntries,
        stats: this.#stats,
        digest: (this.#digest >>> 0).toString(16).padStart(8, "0"),
        replay: this.#replay,
      };
    } finally {
      for (const n of this.#nodes) n.clock?.kill();
      channel.port1.close();
      channel.port2.close();
    }
  }

  /** Runs `fn` after `ms` of shared time, on no node. */
  #later(ms: number, fn: () => void): void {
    this.#clock.after(ms, fn);
  }

  #random(lo: number, hi: number): number {
    return lo + this.#rng() * (hi - lo);
  }

  #pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.#rng() * items.length)]!;
  }

  // ---- tracing and failing --------------------------------------------------------------------

  #mix(value: number): void {
    this.#digest = Math.imul(this.#digest ^ value, 0x01000193);
  }

  #note(text: string): void {
    const line = `${this.#clock.now().toFixed(3).padStart(10)}  ${text}`;
    for (let i = 0; i < text.length; i += 7) this.#mix(text.charCodeAt(i));
    this.#ring[this.#ringPos] = line;
    this.#ringPos = (this.#ringPos + 1) % _TRACE_TAIL;
    this.#onTrace?.(line);
  }

  #traceTail(): string[] {
    const out: string[] = [];
    for (let i = 0; i < _TRACE_TAIL; i++) {
      const line = this.#ring[(this.#ringPos + i) % _TRACE_TAIL];
      if (line !== undefined) out.push(line);
    }
    return out;
  }

  #throwFailure(): void {
    if (this.#failure) throw this.#failure;
  }

  #fail(check: CheckName, detail: string): never {
    if (this.#failure) throw this.#failure;
    const state = this.#nodes.map((n) => {
      const durable = `durable log ${n.durable.length - 1}, snapshot ${n.durableSnap}`;
      if (!n.node) return `  ${n.id}: ${n.starting ? "starting" : "down"} (${durable})`;
      const s = n.node.inspect();
      return `  ${n.id}: ${s.role} term ${s.term} leader ${
        s.leader || "-"
      } log ${s.firstIndex}..${s.lastIndex} ` +
        `commit ${s.commit} applied ${s.applied} (${durable})${
          n.pausedUntil > this.#clock.now() ? ` paused until ${n.pausedUntil.toFixed(0)}` : ""
        }`;
    });
    this.#failure = new SimulationFailure(
      this.#opts.seed,
      check,
      `${detail}\nat virtual time ${
        this.#clock.now().toFixed(3)
      } ms (profile ${this.#profile}); nodes:\n${state.join("\n")}`,
      this.#replay,
      this.#traceTail(),
    );
    throw this.#failure;
  }

  #violation(check: CheckName, detail: string): void {
    if (!this.#disabled.has(check)) this.#fail(check, detail);
  }

  /** Records a failure raised where nobody awaits it (a node's callback or promise). */
  #caught(e: unknown, where: string): void {
    if (e instanceof SimulationFailure) return;
    try {
      this.#fail("node-error", `unexpected error ${where}: ${(e as Error)?.stack ?? e}`);
    } catch {
      // Recorded; the event loop throws it.
    }
  }

  // ---- nodes: start, crash, restart -----------------------------------------------------------

  #newNode(id: NodeId, index: number): _Node {
    const n: _Node = {
      id,
      index,
      fs: new SimFileSystem(),
      node: null,
      clock: null,
      inc: 0,
      starting: false,
      pausedUntil: 0,
      lastCommit: 0,
      lastApplied: 0,
      seen: [0],
      durable: [0],
      durableSnap: 0,
      durableHs: { term: 0, vote: "", commit: 0 },
      writingFrom: Infinity,
      crashWritingFrom: Infinity,
    };
    n.fs = new SimFileSystem({ delay: (op) => this.#diskDelay(n, op) });
    const fault = this.#opts.diskFault;
    if (fault === "ack-before-sync") n.fs.faults.ackBeforeSync = true;
    if (fault === "forget-synced") n.fs.faults.forgetLastSynced = (p) => p.endsWith(".wal");
    return n;
  }

  /** Syncs take a disk delay on the node's clock (so a paused node's disk waits too). */
  #diskDelay(n: _Node, op: string): Promise<void> | void {
    if (op !== "sync" && op !== "syncDir") return;
    const clock = n.clock;
    if (!clock) return;
    const f = this.#faults;
    const ms = this.#random(f.minDiskMs, f.maxDiskMs);
    return new Promise((resolve) => clock.schedule(ms, resolve));
  }

  #restart(n: _Node): void {
    if (n.node || n.starting) return;
    n.starting = true;
    const inc = ++n.inc;
    const skew = this.#faults.clockSkew;
    const clock = new NodeClock(this.#clock, 1 + this.#random(-skew, skew), (e) => {
      this.#caught(e, `on ${n.id}`);
    });
    n.clock = clock;
    n.pausedUntil = 0;
    const seed = Math.floor(this.#rng() * 2 ** 32);
    this.#note(`${n.id} starts (incarnation ${inc})`);
    this.#open(n, inc, clock, seed).catch((e) => this.#caught(e, `starting ${n.id}`));
  }

  async #open(n: _Node, inc: number, clock: NodeClock, seed: number): Promise<void> {
    let inner;
    try {
      inner = await openDiskStorage(_PATHS, { fs: n.fs, segmentSize: this.#segmentSize });
    } catch (e) {
      if (n.inc !== inc) return; // crashed again while recovering
      this.#fail("recovery", `${n.id} cannot start: ${(e as Error)?.message ?? e}`);
    }
    if (n.inc !== inc) return;
    this.#checkRecovered(n, inner);
    const storage = this.#watchStorage(n, inc, clock, inner);
    const threshold = this.#snapshotThreshold;
    const tickMs = this.#faults.tickMs;
    const node = new RaftNode({
      id: n.id,
      members: this.#nodes.map((m) => ({ id: m.id, rpcUrl: `sim://${m.id}`, apiUrl: m.id })),
      storage,
      transport: (handlers) => this.#network.connect(n.id, inc, clock, handlers),
      clock,
      heartbeatMs: tickMs,
      electionTimeoutMs: tickMs * this.#electionTicks,
      seed,
      snapshotThreshold: threshold === 0 ? Number.MAX_SAFE_INTEGER : threshold,
      snapshotThresholdBytes: Number.MAX_SAFE_INTEGER,
      snapshotCatchUpEntries: this.#catchUpEntries,
      onFatal: (e) => {
        if (n.inc === inc) this.#caught(e, `(fatal) on ${n.id}`);
      },
      logger: this.#logger(n, inc),
    });
    n.node = node;
    n.starting = false;
    n.lastCommit = 0;
    n.lastApplied = -1;
    n.seen = [0];
    node.start();
  }

  #logger(n: _Node, inc: number): Pick<Console, "info" | "warn" | "error" | "debug"> {
    const log = (level: string) => (...args: unknown[]) => {
      if (n.inc !== inc) return;
      this.#note(
        `${n.id} ${level}: ${args.map((a) => (a as Error)?.message ?? String(a)).join(" ")}`,
      );
    };
    return { info: log("info"), warn: log("warn"), error: log("error"), debug: () => {} };
  }

  /** The recovered state must hold everything the node was told was durable before it crashed. */
  #checkRecovered(n: _Node, rec: NodeStorage): void {
    const snapIndex = rec.snapshot?.index ?? 0;
    if (snapIndex > 0) this.#stats.snapshotRestarts++;
    const terms: number[] = [0];
    for (const e of rec.entries) terms[e.index] = e.term;
    // The entries an append in flight at the crash may have changed are not owed.
    const owed = Math.min(n.durable.length - 1, n.crashWritingFrom - 1);
    for (let i = Math.max(1, snapIndex + 1); i <= owed; i++) {
      const want = n.durable[i];
      if (want === undefined || i <= n.durableSnap) continue;
      if (terms[i] !== want) {
        this.#violation(
          "recovery",
          `${n.id} lost entry ${i} (term ${want}) that its storage had acknowledged: after the ` +
            `restart its log holds ${
              terms[i] === undefined ? "nothing" : `term ${terms[i]}`
            } there (snapshot ${snapIndex}, log to ${rec.entries.at(-1)?.index ?? snapIndex})`,
        );
      }
    }
    if (snapIndex < Math.min(n.durableSnap, n.crashWritingFrom - 1)) {
      this.#violation(
        "recovery",
        `${n.id} restarted from the snapshot at ${snapIndex} but had stored one at ${n.durableSnap}`,
      );
    }
    const hs = rec.hardState;
    const was = n.durableHs;
    if (hs.term < was.term || (hs.term === was.term && was.vote !== "" && hs.vote !== was.vote)) {
      this.#violation(
        "recovery",
        `${n.id} restarted with term ${hs.term} vote "${hs.vote}" but had stored term ${was.term} vote "${was.vote}"`,
      );
    }
    n.durable = terms;
    for (let i = 1; i <= snapIndex; i++) n.durable[i] ??= -1;
    n.durableSnap = snapIndex;
    n.durableHs = { ...hs };
    n.writingFrom = Infinity;
    n.crashWritingFrom = Infinity;
  }

  /**
   * The storage as the node sees it: the real one, with the calls that make something durable
   * reporting it when they complete (and the `compact-past-snapshot`, `install-without-reset`
   * and `snapshot-live-state` faults injected).
   */
  #watchStorage(
    n: _Node,
    inc: number,
    clock: NodeClock,
    inner: Awaited<ReturnType<typeof openDiskStorage>>,
  ): NodeStorage {
    const live = () => n.inc === inc;
    const fault = this.#opts.diskFault;
    if (fault === "install-without-reset") {
      // Only an install writes a reset record once the storage is open (start-up's repair of a
      // log behind its snapshot already ran), so this drops exactly the install's commit point.
      inner.wal.reset = () => Promise.resolve();
    }
    const tickMs = this.#faults.tickMs;
    const overrides: Partial<NodeStorage> = {
      saveSnapshot: async (meta, count, pairs) => {
        if (fault !== "snapshot-live-state") return inner.saveSnapshot(meta, count, pairs);
        // Let the node apply more entries (up to 10 ticks), then write its live data instead.
        for (let i = 0; i < 10 && (n.node?.inspect().applied ?? 0) <= meta.index; i++) {
          await new Promise<void>((resolve) => clock.schedule(tickMs, resolve));
        }
        const node = n.node;
        if (!live() || !node) return;
        const leaky = [...node.inspect().entries()];
        await inner.saveSnapshot(meta, leaky.length, leaky);
      },
      append: async (entries: Entry[]) => {
        const from = entries[0]?.index ?? Infinity;
        n.writingFrom = Math.min(n.writingFrom, from);
        await inner.append(entries);
        if (!live()) return;
        n.writingFrom = Infinity;
        if (entries.length > 0) {
          n.durable.length = Math.min(n.durable.length, from);
          for (const e of entries) n.durable[e.index] = e.term;
        }
        this.#stats.diskWrites++;
      },
      saveHardState: async (hs: HardState) => {
        await inner.saveHardState(hs);
        if (!live()) return;
        n.durableHs = { ...hs };
        this.#stats.diskWrites++;
      },
      snapshotTaken: async (meta, compactTo) => {
        await inner.snapshotTaken(meta, compactTo);
        if (fault === "compact-past-snapshot") {
          await inner.wal.compact(inner.wal.lastIndex);
        }
        if (!live()) return;
        n.durableSnap = Math.max(n.durableSnap, meta.index);
        this.#stats.snapshotsTaken++;
      },
      installReceived: (async (...args: Parameters<NodeStorage["installReceived"]>) => {
        const meta = args[0];
        n.writingFrom = 0;
        const out = await inner.installReceived(...args);
        if (!live()) return out;
        n.writingFrom = Infinity;
        n.durable.length = meta.index + 1;
        for (let i = 1; i <= meta.index; i++) n.durable[i] = -1;
        n.durableSnap = meta.index;
        this.#stats.snapshotsInstalled++;
        return out;
      }) as NodeStorage["installReceived"],
    };
    return new Proxy(inner, {
      get(target, prop) {
        const own = (overrides as Record<string | symbol, unknown>)[prop];
        if (own !== undefined) return own;
        const value = Reflect.get(target, prop, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  }

  #crash(n: _Node, why: string): void {
    if (!n.node && !n.starting) return;
    n.clock?.kill();
    n.clock = null;
    n.node = null;
    n.starting = false;
    n.inc++;
    // A crash while starting (before the recovery check ran) must not forget a write that was
    // in flight at an earlier crash: its bytes may still be in the disk image.
    n.crashWritingFrom = Math.min(n.crashWritingFrom, n.writingFrom);
    n.writingFrom = Infinity;
    this.#stats.crashes++;
    const f = this.#faults;
    const keep = this.#rng() < f.tornWriteRate;
    const entries = keep && this.#rng() < 0.5;
    n.fs = n.fs.crash(keep ? this.#rng : undefined, { keepUnsyncedEntries: entries });
    const notes = n.fs.crashNotes;
    if (notes.some((t) => t.includes("of the next write"))) this.#stats.tornWrites++;
    this.#note(`CRASH ${n.id} (${why})${notes.length ? `: ${notes.join("; ")}` : ""}`);
  }

  // ---- invariants -----------------------------------------------------------------------------

  /** Checks one node's state after a step. */
  #check(n: _Node): void {
    const node = n.node;
    if (!node) return;
    const s = node.inspect();
    if (s.term > this.#stats.maxTerm) this.#stats.maxTerm = s.term;
    this.#checkLog(n, s);
    if (s.commit < n.lastCommit) {
      this.#violation(
        "commit-monotonic",
        `${n.id}: commit index went back from ${n.lastCommit} to ${s.commit}`,
      );
    }
    if (s.commit > n.lastCommit) {
      this.#learnCommitted(n, s, n.lastCommit + 1, s.commit);
      n.lastCommit = s.commit;
    }
    if (s.role === "leader") {
      const prev = this.#leaders.get(s.term);
      if (prev === undefined) {
        this.#leaders.set(s.term, n.id);
        this.#stats.elections++;
        this.#note(`${n.id} leads term ${s.term}`);
        this.#checkLeaderCompleteness(n, s);
      } else if (prev !== n.id) {
        this.#violation("election-safety", `two leaders in term ${s.term}: ${prev} and ${n.id}`);
      }
    }
    if (s.applied !== n.lastApplied) {
      n.lastApplied = s.applied;
      this.#checkApplied(n, s);
    }
  }

  /** Every (index, term) holds one entry in every log (log matching, entry by entry). */
  #checkLog(n: _Node, s: NodeInspection): void {
    const seen = n.seen;
    for (let i = s.lastIndex; i >= s.firstIndex; i--) {
      const e = s.entry(i)!;
      if (seen[i] === e.term) break;
      seen[i] = e.term;
      const key = i * 1_048_576 + e.term;
      const h = _hash(e);
      const known = this.#entryHash.get(key);
      if (known === undefined) {
        this.#entryHash.set(key, h);
      } else if (known !== h) {
        this.#violation(
          "log-matching",
          `${n.id} holds an entry at index ${i} term ${e.term} that differs from another node's`,
        );
      }
    }
    seen.length = s.lastIndex + 1;
  }

  /** The node knows entries `from..to` are committed: compare with (or extend) the record. */
  #learnCommitted(n: _Node, s: NodeInspection, from: number, to: number): void {
    for (let i = Math.max(from, s.firstIndex); i <= to; i++) {
      const e = s.entry(i);
      if (e === undefined) {
        this.#fail("log-matching", `${n.id}: commit ${to} is past its last index ${s.lastIndex}`);
      }
      const term = this.#committedTerm[i];
      if (term === undefined) {
        this.#committedTerm[i] = e.term;
        this.#committedHash[i] = _hash(e);
        this.#committedData[i] = e.type === EntryType.Normal ? e.data : null;
        this.#commitTerm[i] = s.term;
      } else if (term !== e.term || this.#committedHash[i] !== _hash(e)) {
        this.#violation(
          "state-machine-safety",
          `${n.id} holds as committed an entry at index ${i} (term ${e.term}) that differs from ` +
            `the entry committed there before (term ${term})`,
        );
      }
    }
    if (to > this.#maxCommit) {
      this.#maxCommit = to;
      this.#stats.maxCommit = to;
      this.#advanceReference();
      this.#checkDurableMajority(`when ${n.id} learned commit ${to}`, to);
    }
  }

  /** Applies newly known committed entries to the reference state. */
  #advanceReference(): void {
    while (this.#committedTerm[this.#refIndex + 1] !== undefined) {
      const i = ++this.#refIndex;
      const data = this.#committedData[i];
      if (data) {
        const cmd = decodeCommand(data);
        if (cmd.op === "put") this.#ref.set(cmd.key, cmd.value);
        else this.#ref.delete(cmd.key);
      }
      this.#refDigest[i] = _stateDigest(this.#keys, (k) => this.#ref.get(k) ?? null);
    }
  }

  /** A node's applied data equals the reference state at its applied index. */
  #checkApplied(n: _Node, s: NodeInspection): void {
    if (s.applied > this.#refIndex || s.applied === 0) return;
    const want = this.#refDigest[s.applied];
    if (want === undefined) return;
    if (_stateDigest(this.#keys, s.value) !== want) {
      const differ = this.#keys.filter((k) => s.value(k) !== (this.#valueAt(k, s.applied)));
      this.#violation(
        "state-machine-safety",
        `${n.id} applied up to ${s.applied} but holds ${
          differ.map((k) => `${k}=${JSON.stringify(s.value(k))}`).join(" ")
        } where the committed log gives ${
          differ.map((k) => `${k}=${JSON.stringify(this.#valueAt(k, s.applied))}`).join(" ")
        }`,
      );
    }
  }

  /** The value of `key` after applying the committed log up to `index`. */
  #valueAt(key: string, index: number): string | null {
    for (let i = index; i > 0; i--) {
      const data = this.#committedData[i];
      if (!data) continue;
      const cmd = decodeCommand(data);
      if (cmd.key === key) return cmd.op === "put" ? cmd.value : null;
    }
    return null;
  }

  #checkLeaderCompleteness(n: _Node, s: NodeInspection): void {
    let i = this.#maxCommit;
    while (i > 0 && (this.#commitTerm[i] ?? 0) >= s.term) i--;
    if (i === 0 || i < s.firstIndex) return;
    const e = s.entry(i);
    const want = this.#committedTerm[i];
    if (want !== undefined && e?.term !== want) {
      this.#violation(
        "leader-completeness",
        `${n.id} became leader of term ${s.term} without the entry committed at index ${i} ` +
          `(its log ends at ${s.lastIndex})`,
      );
    }
  }

  #checkDurableMajority(when: string, c: number): void {
    const want = this.#committedTerm[c];
    if (want === undefined) return;
    const holders = this.#nodes.filter((n) => n.durableSnap >= c || n.durable[c] === want);
    if (holders.length < this.#quorum) {
      this.#violation(
        "durable-majority",
        `${when}: committed entry ${c} is durable on ${holders.length} node(s) ` +
          `(${holders.map((n) => n.id).join(", ") || "none"}), fewer than a majority`,
      );
    }
  }

  // ---- clients --------------------------------------------------------------------------------

  #clientStart(c: _Client): void {
    if (this.#phase !== "run") {
      this.#maybeStartFinalReads();
      return;
    }
    this.#later(this.#random(0, 30), () => this.#clientIssue(c));
  }

  #clientIssue(c: _Client): void {
    if (this.#phase !== "run") {
      this.#maybeStartFinalReads();
      return;
    }
    const r = this.#rng();
    const kind = r < 0.45 ? "put" : r < 0.6 ? "delete" : "get";
    const key = this.#pick(this.#keys);
    const value = kind === "put" ? `c${c.id}-${++c.seq}` : null;
    const op: _ClientOp = {
      client: c,
      kind,
      lease: kind === "get" && this.#rng() < (this.#opts.leaseReads ?? 0),
      key,
      value,
      call: this.#clock.now(),
      attempt: 0,
      done: false,
      abort: new AbortController(),
    };
    c.op = op;
    this.#later(this.#opTimeoutMs, () => this.#onTimeout(op));
    this.#attempt(op);
  }

  #attempt(op: _ClientOp): void {
    const c = op.client;
    const attempt = ++op.attempt;
    const useHint = c.hint >= 0 && this.#rng() < 0.7;
    const target = this.#nodes[useHint ? c.hint : Math.floor(this.#rng() * this.#nodes.length)]!;
    this.#later(this.#random(0.1, 2), () => {
      const clock = target.clock;
      if (!target.node || !clock) return this.#respond(op, attempt, { kind: "refused" }, target);
      // The request reaches the node's process: it runs when the process runs.
      clock.run(() => this.#arrive(target, op, attempt));
    });
    if (c.final) {
      // Final reads retry on silence: a read has no effect, so retrying is always safe.
      this.#later(1000, () => {
        if (!op.done && op.attempt === attempt) this.#attempt(op);
      });
    }
  }

  #arrive(n: _Node, op: _ClientOp, attempt: number): void {
    if (op.done || op.attempt !== attempt) return;
    const node = n.node;
    if (!node) return this.#respond(op, attempt, { kind: "refused" }, n);
    const signal = op.abort.signal;
    const call: Promise<_Outcome> = op.kind === "put"
      ? node.put(op.key, op.value!, signal).then((r) => ({ kind: "ok", index: r.index }))
      : op.kind === "delete"
      ? node.delete(op.key, signal).then((r) => ({ kind: "ok", index: r.index }))
      : node.get(op.key, op.lease ? "lease" : "linearizable", signal).then((value) => ({
        kind: "value",
        value,
      }));
    call.then(
      (outcome) => this.#respond(op, attempt, outcome, n),
      (e) => this.#respond(op, attempt, _outcomeOf(e), n),
    ).catch((e) => this.#caught(e, `answering a client on ${n.id}`));
  }

  #respond(op: _ClientOp, attempt: number, outcome: _Outcome, n: _Node): void {
    if (op.done || op.attempt !== attempt) return;
    this.#later(this.#random(0.1, 2), () => this.#onResponse(op, attempt, outcome, n));
  }

  #onResponse(op: _ClientOp, attempt: number, outcome: _Outcome, n: _Node): void {
    if (op.done || op.attempt !== attempt) return;
    const c = op.client;
    const what = `c${c.id} ${op.lease ? "lease-" : ""}${op.kind}(${op.key}${
      op.value ? `=${op.value}` : ""
    }) <- ${n.id}: ${outcome.kind}`;
    switch (outcome.kind) {
      case "ok":
        this.#stats.writesOk++;
        this.#acked.set(`${op.key}=${op.value ?? `delete by c${c.id}`}`, {
          node: n.id,
          index: outcome.index,
        });
        this.#note(`${what} @${outcome.index}`);
        this.#history.push(this.#operation(op, this.#clock.now()));
        this.#finish(op);
        return;
      case "value":
        this.#stats.readsOk++;
        if (op.lease) this.#stats.leaseReadsOk++;
        this.#note(`${what} ${JSON.stringify(outcome.value)}`);
        this.#history.push({ ...this.#operation(op, this.#clock.now()), value: outcome.value });
        this.#finish(op);
        return;
      case "notApplied":
        this.#stats.writesFailed++;
        this.#finish(op);
        return;
      case "unknown":
        if (op.kind === "get") {
          this.#stats.readsDropped++;
        } else {
          this.#stats.writesUnknown++;
          this.#history.push(this.#operation(op, null));
        }
        this.#finish(op);
        return;
      case "notLeader":
        c.hint = this.#nodes.findIndex((x) => x.id === outcome.leader);
        this.#retry(op);
        return;
      case "refused":
        c.hint = -1;
        this.#retry(op);
        return;
    }
  }

  #retry(op: _ClientOp): void {
    const attempt = op.attempt;
    this.#later(this.#random(5, 50), () => {
      if (!op.done && op.attempt === attempt) this.#attempt(op);
    });
  }

  #onTimeout(op: _ClientOp): void {
    if (op.done) return;
    if (op.kind === "get") {
      this.#stats.readsDropped++;
    } else {
      // It may have been proposed by a node that then crashed or lost its leadership.
      this.#stats.writesUnknown++;
      this.#history.push(this.#operation(op, null));
    }
    op.client.hint = -1;
    this.#finish(op);
  }

  #operation(op: _ClientOp, ret: number | null): Operation {
    return {
      client: op.client.id,
      kind: op.kind,
      key: op.key,
      value: op.value,
      call: op.call,
      return: ret,
    };
  }

  #finish(op: _ClientOp): void {
    op.done = true;
    op.abort.abort();
    const c = op.client;
    c.op = null;
    if (c.final) {
      if (--this.#finalPending === 0) this.#startConvergence();
      return;
    }
    this.#clientStart(c);
  }

  // ---- faults ---------------------------------------------------------------------------------

  #scheduleFaults(): void {
    const f = this.#faults;
    if (f.partitionEveryMs > 0) this.#every(f.partitionEveryMs, () => this.#partition());
    if (f.crashEveryMs > 0) this.#every(f.crashEveryMs, () => this.#crashSome());
    if (f.pauseEveryMs > 0) this.#every(f.pauseEveryMs, () => this.#pause());
  }

  /** Runs `fn` at random intervals averaging `meanMs` until the final heal. */
  #every(meanMs: number, fn: () => void): void {
    const next = () => {
      this.#later(this.#random(0.2, 1.8) * meanMs, () => {
        if (this.#phase !== "run") return;
        fn();
        next();
      });
    };
    next();
  }

  #leader(): _Node | null {
    let best: _Node | null = null;
    let term = -1;
    for (const n of this.#nodes) {
      const s = n.node?.inspect();
      if (s?.role === "leader" && s.term > term) [best, term] = [n, s.term];
    }
    return best;
  }

  #partition(): void {
    const net = this.#network;
    if (net.partitioned) return; // one partition at a time
    const all = this.#nodes.map((n) => n.id);
    const target = this.#leader()?.id ?? this.#pick(all);
    const kind = this.#pick([
      "split",
      "split",
      "one-way",
      "isolate-leader",
      "leader-cannot-send",
      "leader-cannot-hear",
      "bridge",
    ]);
    let text = "";
    switch (kind) {
      case "split": {
        const shuffled = _shuffle(all, this.#rng);
        const size = 1 + Math.floor(this.#rng() * Math.floor(all.length / 2));
        const side = shuffled.slice(0, size);
        for (const a of side) {
          for (const b of all) {
            if (!side.includes(b)) {
              net.block(a, b);
              net.block(b, a);
            }
          }
        }
        text = `split {${side}} | rest`;
        break;
      }
      case "one-way": {
        const pairs = 1 + Math.floor(this.#rng() * all.length);
        const links: string[] = [];
        for (let i = 0; i < pairs; i++) {
          const a = this.#pick(all);
          const b = this.#pick(all.filter((x) => x !== a));
          net.block(a, b);
          links.push(`${a}-/->${b}`);
        }
        text = `one-way ${links.join(" ")}`;
        break;
      }
      case "isolate-leader":
      case "leader-cannot-send":
      case "leader-cannot-hear":
        for (const b of all) {
          if (b === target) continue;
          if (kind !== "leader-cannot-hear") net.block(target, b);
          if (kind !== "leader-cannot-send") net.block(b, target);
        }
        text = `${kind} ${target}`;
        break;
      case "bridge": {
        const shuffled = _shuffle(all, this.#rng);
        const rest = shuffled.slice(1);
        const left = rest.slice(0, rest.length / 2);
        const right = rest.slice(rest.length / 2);
        for (const a of left) {
          for (const b of right) {
            net.block(a, b);
            net.block(b, a);
          }
        }
        text = `bridge ${shuffled[0]} between {${left}} and {${right}}`;
        break;
      }
    }
    this.#stats.partitions++;
    const id = ++this.#partitionId;
    const duration = this.#random(100, Math.max(200, this.#faults.maxPartitionMs));
    this.#note(`PARTITION ${text} for ${duration.toFixed(0)} ms`);
    this.#later(duration, () => {
      if (this.#partitionId === id) net.heal();
    });
  }

  #crashSome(): void {
    const up = this.#nodes.filter((n) => n.node || n.starting);
    if (up.length === 0) return;
    if (this.#rng() < this.#faults.powerFailureRate) {
      this.#stats.powerFailures++;
      for (const n of up) {
        this.#crash(n, "power failure");
        this.#restartLater(n);
      }
      return;
    }
    const leader = this.#leader();
    const n = leader && this.#rng() < 0.4 ? leader : this.#pick(up);
    this.#crash(n, "crash");
    this.#restartLater(n);
  }

  #restartLater(n: _Node): void {
    const inc = n.inc;
    const downFor = this.#random(20, Math.max(50, this.#faults.maxDowntimeMs));
    this.#later(downFor, () => {
      if (n.inc === inc) this.#restart(n);
    });
  }

  #pause(): void {
    const up = this.#nodes.filter((n) => n.node && n.clock && !n.clock.paused);
    if (up.length === 0) return;
    const leader = this.#leader();
    const n = leader && !leader.clock!.paused && this.#rng() < 0.5 ? leader : this.#pick(up);
    const clock = n.clock!;
    const until = this.#clock.now() + this.#random(50, Math.max(100, this.#faults.maxPauseMs));
    clock.pause();
    n.pausedUntil = until;
    this.#stats.pauses++;
    this.#note(`PAUSE ${n.id} until ${until.toFixed(0)}`);
    this.#later(until - this.#clock.now(), () => {
      n.pausedUntil = 0;
      clock.resume();
    });
  }

  // ---- the end: heal, liveness, convergence, linearizability ----------------------------------

  #finalHeal(): void {
    this.#phase = "drain";
    this.#partitionId++;
    this.#network.heal();
    this.#note("FINAL HEAL: partitions healed, paused nodes resume, crashed nodes restart");
    for (const n of this.#nodes) {
      n.pausedUntil = 0;
      n.clock?.resume();
      this.#restart(n);
    }
    this.#maybeStartFinalReads();
  }

  #maybeStartFinalReads(): void {
    if (this.#phase !== "drain") return;
    if (this.#clients.some((c) => c.op !== null)) return;
    this.#phase = "final";
    this.#note("FINAL READS of every key");
    this.#finalPending = this.#keys.length;
    this.#keys.forEach((key, i) => {
      const c: _Client = { id: 1000 + i, op: null, hint: -1, seq: 0, final: true };
      this.#clients.push(c);
      const op: _ClientOp = {
        client: c,
        kind: "get",
        lease: false,
        key,
        value: null,
        call: this.#clock.now(),
        attempt: 0,
        done: false,
        abort: new AbortController(),
      };
      c.op = op;
      this.#attempt(op);
    });
    this.#later(this.#livenessMs, () => {
      if (this.#phase !== "final") return;
      const missing = this.#clients.filter((c) => c.final && c.op).map((c) => c.op!.key);
      this.#fail(
        "liveness",
        `the final reads of ${missing.join(", ")} did not complete within ${this.#livenessMs} ms ` +
          `after every fault healed (leader: ${this.#leader()?.id ?? "none"})`,
      );
    });
  }

  #startConvergence(): void {
    this.#phase = "converge";
    const deadline = this.#clock.now() + 10_000;
    const poll = () => {
      const c = this.#maxCommit;
      const lagging = this.#nodes.filter((n) => !n.node || n.node.inspect().applied !== c);
      if (lagging.length === 0) {
        const ref = this.#nodes[0]!.node!.inspect();
        for (const n of this.#nodes) {
          const s = n.node!.inspect();
          const differ = this.#keys.filter((k) => s.value(k) !== ref.value(k));
          if (differ.length > 0) {
            this.#fail(
              "convergence",
              `${n.id} and ${
                this.#nodes[0]!.id
              } applied up to ${c} but hold different values of ${differ}`,
            );
          }
        }
        this.#note(`CONVERGED at commit ${c}`);
        this.#phase = "done";
        return;
      }
      if (this.#clock.now() >= deadline) {
        this.#fail(
          "convergence",
          `${lagging.map((n) => n.id).join(", ")} did not apply up to commit ${c} within 10 s`,
        );
      }
      this.#later(50, poll);
    };
    poll();
  }

  #checkHistory(): void {
    this.#stats.historyOps = this.#history.length;
    for (const op of this.#history) this.#mix(Math.floor((op.return ?? -1) * 1000));
    const result = checkLinearizability(this.#history, {
      timeoutMs: this.#opts.linearizabilityTimeoutMs ?? 20_000,
    });
    if (result.ok === "unknown") {
      this.#stats.linearizability = "unknown";
      return;
    }
    if (result.ok) return;
    const acked = [...this.#acked.entries()]
      .filter(([k]) => k.startsWith(`${result.key}=`))
      .slice(-10)
      .map(([k, v]) => `  ${k} acknowledged by ${v.node} at index ${v.index}`);
    this.#violation(
      "linearizability",
      `the client history of key ${
        JSON.stringify(result.key)
      } is not linearizable:\n${result.reason}\n` +
        `last acknowledged writes of that key:\n${acked.join("\n")}\nfinal values: ${
          this.#nodes.map((n) => `${n.id}=${JSON.stringify(n.node?.inspect().value(result.key))}`)
            .join(" ")
        }\nfull history of the key:\n${describeHistory(result.operations, { maxLines: 60 })}`,
    );
  }
}

// ---- helpers ----------------------------------------------------------------------------------

/** What a client learns from a node's error. */
function _outcomeOf(e: unknown): _Outcome {
  if (e instanceof NotLeaderError) return { kind: "notLeader", leader: e.leader };
  if (e instanceof NotAppliedError) return { kind: "notApplied" };
  if (e instanceof NoSpaceError || e instanceof StoppingError) return { kind: "refused" };
  if (e instanceof OutcomeUnknownError) return { kind: "unknown" };
  // An aborted read (the client gave up), or anything else: the outcome is unknown.
  return { kind: "unknown" };
}

/** A hash of an entry's type and data. */
function _hash(e: Entry): number {
  let h = Math.imul(0x811c9dc5 ^ e.type, 0x01000193);
  for (let i = 0; i < e.data.length; i++) h = Math.imul(h ^ e.data[i]!, 0x01000193);
  return h >>> 0;
}

/** A hash of the values of `keys`. */
function _stateDigest(keys: readonly string[], value: (key: string) => string | null): number {
  let h = 0x811c9dc5;
  for (const k of keys) {
    const v = value(k);
    const text = v === null ? "\u0000" : v;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
    h = Math.imul(h ^ 0xff, 0x01000193);
  }
  return h >>> 0;
}

function _shuffle<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
