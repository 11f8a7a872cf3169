/**
 * A deterministic discrete-event simulator of whole raftkv clusters.
 *
 * One run is fully determined by its options (above all its seed): one seeded PRNG drives every
 * random choice, time is virtual (milliseconds in an event queue ordered by time, then by a
 * sequence number), and nothing touches a real clock, timer, socket or file.
 *
 * Each simulated node is the REAL {@linkcode RaftCore} and the REAL {@linkcode KvStateMachine},
 * driven by a simulated driver that follows the {@linkcode Ready} contract the way
 * `src/node/raft_node.ts` does: it sends `messages` at once, writes entries and hard state to a
 * simulated disk (one write in flight; later Readies are merged into the next write: group
 * commit), and only when that write completes sends `persistedMessages` and calls
 * `core.persisted`; it applies `committedEntries` and serves ReadIndex reads.
 *
 * The simulated disk of a node is a sequence of WAL segments of real record bytes (encoded with
 * `src/storage/wal_record.ts`), an atomically replaced hard state (like the hard-state file), the
 * log metadata, snapshot files and received (`.recv`) snapshot files. On restart the segments are
 * replayed with `decodeRecord` and the WAL's rules: an entry at or below the last index truncates
 * the log there, a reset record empties it, a gap is corruption, and a torn tail of the last
 * segment (a partial header or payload, or a zero-filled tail from a 512-byte sector boundary, as
 * the storage README defines it) is cut off. Anything else that fails to decode fails the run.
 * Start-up then follows `src/node/disk_storage.ts`: an install interrupted after its reset record
 * is completed from the received file, the newest snapshot is loaded and the WAL entries after it.
 *
 * Snapshots (when the run's `snapshotThreshold` is not 0) follow `raft_node.ts` too: a node whose
 * applied index passed the threshold since its last snapshot writes a copy-on-write view of its
 * state (taking a disk delay; a crash before it completes leaves no snapshot), calls
 * `core.snapshotSaved`, and then, as a write job after the earlier ones, records the log metadata,
 * deletes the WAL segments wholly covered (a new segment starts at every snapshot) and keeps two
 * snapshot files. A leader streams its snapshot file to a follower that needs it (a transfer that
 * takes time in proportion to its size and can fail) and reports the outcome with
 * `reportSnapshot`; the follower stores it as a received file, steps the `Snap` message and, if
 * the core installs it, resets its state machine and queues a write job that first writes the WAL
 * reset record (the commit point), then makes the snapshot current.
 *
 * Faults: message loss, duplication, delay and reordering; symmetric, asymmetric and
 * leader-isolating partitions; crashes that lose every write not yet completed (sometimes leaving
 * a prefix of it and a torn record); whole-cluster power failures; process pauses; clock skew.
 *
 * Checked after every event: election safety, log matching, leader completeness, state machine
 * safety (including that every node's state after applying an index has the same digest),
 * commit monotonicity, and that every committed entry is durable on a majority. Every snapshot
 * (taken, sent, installed or loaded at restart) must match the committed entry at its index and
 * hold exactly the state the nodes that applied that index had; no node installs a snapshot at or
 * below its commit index. Every message and snapshot delivered passes the peer validator a real
 * node runs (`src/raft/validate.ts`) and is never refused by the core: traffic between correct
 * nodes must never look hostile, whatever the faults (`peer-refusal`). At the end (after healing everything): liveness (a leader serves a read
 * of every key within a bound), convergence of every node's state, and linearizability of the
 * client history.
 *
 * @module
 */

import { RaftCore } from "../../src/raft/raft.ts";
import { seededRandom } from "../../src/raft/rand.ts";
import {
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType,
  type NodeId,
  NONE,
  type Ready,
  type SnapshotMeta,
} from "../../src/raft/types.ts";
import {
  decodeCommand,
  encodeCommand,
  KvStateMachine,
  type StateView,
} from "../../src/kv/state_machine.ts";
import {
  checkLinearizability,
  describeHistory,
  type Operation,
} from "../../src/check/linearizability.ts";
import { decodeMessages, encodeMessages } from "../../src/transport/codec.ts";
import { type PeerEndpoint, PeerValidator } from "../../src/raft/validate.ts";
import {
  decodeRecord,
  type DecodeResult,
  HEADER_SIZE,
  RecordEncoder,
} from "../../src/storage/wal_record.ts";

// ---- public API -------------------------------------------------------------------------------

/** The fault mix of a run. Rates are probabilities in [0, 1]; times are virtual milliseconds. */
export interface FaultOptions {
  /** Local time between ticks; the leader heartbeats every tick (the timing, not a fault). */
  tickMs: number;
  /** Probability that a message is lost. */
  dropRate: number;
  /** Probability that a message is delivered twice. */
  duplicateRate: number;
  /** Shortest network delay. */
  minDelayMs: number;
  /** Longest ordinary network delay. */
  maxDelayMs: number;
  /** Probability that a message is held back by up to `slowDelayMs` more (heavy reordering). */
  slowRate: number;
  /** The longest extra delay of a slow message. */
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
   * Probability that a crash leaves part of the write in flight on disk: a prefix cut at any byte,
   * or whole 512-byte sectors followed by a zero-filled tail.
   */
  tornWriteRate: number;
  /** Mean time between process pauses; 0 disables them. */
  pauseEveryMs: number;
  /** The longest pause. */
  maxPauseMs: number;
  /** Largest deviation of a node's clock rate from real time (0.05 = 5 %). */
  clockSkew: number;
  /** Shortest disk write (write + sync). */
  minDiskMs: number;
  /** Longest disk write. */
  maxDiskMs: number;
}

/** A deliberately broken driver, for tests proving that the checks catch real mistakes. */
export type DriverBug =
  /** Sends `persistedMessages` at once, before the write they depend on is durable. */
  | "persist-early"
  /** Loses the last synced disk record on every recovery (an acknowledged write forgotten). */
  | "forget-synced"
  /**
   * Compacts the WAL past the snapshot: deletes every segment but the active one, including
   * entries after the snapshot's index that were written into the segment before the roll.
   */
  | "compact-past-snapshot"
  /** Installs a received snapshot without writing the WAL reset record first. */
  | "install-without-reset"
  /** Writes the live state instead of the copy-on-write view into a snapshot. */
  | "snapshot-live-state";

/**
 * A fix, now in src/, of a bug the simulator found (`modelFixes: []` replays the bug).
 *
 * `recv-prune`: disk_storage.ts installReceived used to prune with `leftovers`, deleting every `.recv`
 * file, including a newer snapshot received while the install was being written, which the core
 * then installs: its reset record is written, the rename fails, and the node can never start
 * again. The fix deletes only received files at or below the installed index.
 */
export type ModelFix =
  | "recv-prune"
  /**
   * raft_node.ts installs a received snapshot while its own snapshot at a lower index is being
   * written: `kv.reset` rewrites the map under the copy-on-write view, so the file written holds
   * the installed state under the older index (or `encodeSnapshot` throws on the changed count),
   * and `snapshotSaved` then throws (compactTo, raised to the installed index, is past the
   * snapshot): the node stops. The fix keeps open views intact across `reset` (here: the view's
   * pairs are read before it) and drops a snapshot that an install overtook.
   */
  | "install-during-snapshot";

/** Every {@linkcode ModelFix}, for command-line parsing. */
export const MODEL_FIXES: readonly ModelFix[] = ["recv-prune", "install-during-snapshot"];

/** Every {@linkcode DriverBug}, for command-line parsing. */
export const DRIVER_BUGS: readonly DriverBug[] = [
  "persist-early",
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
  | "snapshot"
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
  /**
   * Fraction of client reads sent with the "lease" consistency (answered from the leader's lease
   * when it holds, else by ReadIndex). Default 0: only the default, ReadIndex, reads.
   */
  leaseReads?: number;
  /**
   * Applied entries between snapshots (raft_node.ts `snapshotThreshold`); 0 switches snapshots
   * off. Default: drawn from the seed, see {@linkcode snapshotDefaults}.
   */
  snapshotThreshold?: number;
  /**
   * Entries kept in the log before a snapshot's index, for followers just behind (raft_node.ts
   * `snapshotCatchUpEntries`). Default: drawn from the seed, see {@linkcode snapshotDefaults}.
   */
  catchUpEntries?: number;
  /**
   * Fixes of bugs the simulator found in src/ to keep (see {@linkcode ModelFix}). Default: all
   * of them, as src/ now has them; `[]` replays src/ as it was before, and the old bugs with it.
   */
  modelFixes?: ModelFix[];
  /** Run a deliberately broken driver (guard tests). */
  bug?: DriverBug;
  /** Checks to switch off (guard tests show the remaining ones still catch a bug). */
  disabledChecks?: CheckName[];
  /** Receives every event of the run as one line of text (slow: for replaying one seed). */
  onTrace?: (line: string) => void;
  /** Time budget of the final linearizability check in (real) milliseconds. Default 20000. */
  linearizabilityTimeoutMs?: number;
}

/** Counters describing a run. */
export interface SimulationStats {
  /** Events executed. */
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
  /** Of those, reads answered from the leader's lease without a round trip. */
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
  /** Crashes that left part of the write in flight on disk. */
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
  /** Disk writes completed. */
  diskWrites: number;
  /** Snapshots written by a node of its own state. */
  snapshotsTaken: number;
  /** Snapshot transfers a leader started. */
  snapshotsSent: number;
  /** Of those, transfers the leader saw fail (`reportSnapshot(to, false)`). */
  snapshotSendsFailed: number;
  /** Snapshots a follower received and stored. */
  snapshotsReceived: number;
  /** Received snapshots installed (the state machine reset to them). */
  snapshotsInstalled: number;
  /** Restarts that loaded a snapshot. */
  snapshotRestarts: number;
  /** Restarts that completed an install a crash interrupted after its reset record. */
  installsCompletedAtStartup: number;
  /** WAL segments deleted by compaction. */
  segmentsCompacted: number;
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
  /** A hash of the whole event sequence: equal digests mean identical runs. */
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
  /** The last events before the failure, one per line. */
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
 * fault timings are scaled to the election timeout (10 ticks), so that short ticks pit elections
 * against comparatively slow networks and disks.
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
 * drawn from 0, 5 and the threshold itself (raft_node.ts's default for small thresholds).
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

/** The default virtual duration of a run, as used by the tests and the soak script. */
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
  if (options.modelFixes && options.modelFixes.length > 0) {
    parts.push(`--model-fix ${options.modelFixes.join(",")}`);
  }
  if (options.bug !== undefined) parts.push(`--bug ${options.bug}`);
  if (options.disabledChecks && options.disabledChecks.length > 0) {
    parts.push(`--disable ${options.disabledChecks.join(",")}`);
  }
  return parts.join(" ");
}

/**
 * Runs one simulation and checks it. Returns the stats, or throws a {@linkcode SimulationFailure}
 * naming the seed, the broken check and the replay command.
 *
 * @example
 * ```ts ignore
 * const result = runSimulation({ seed: 7, nodes: 3, durationMs: 10_000 });
 * console.log(result.stats.writesOk);
 * ```
 */
export function runSimulation(options: SimulationOptions): SimulationResult {
  return new _Simulation(options).run();
}

// ---- internals --------------------------------------------------------------------------------

const _TRACE_TAIL = 50;

/** Event kinds (small integers, so the digest is cheap); names for the trace. */
const _K = {
  tick: 0,
  deliver: 1,
  disk: 2,
  unreachable: 3,
  snapReport: 4,
  request: 5,
  response: 6,
  clientTimer: 7,
  fault: 8,
  restart: 9,
  heal: 10,
  phase: 11,
  snapshotWritten: 12,
  transfer: 13,
} as const;
const _KIND_NAMES = [
  "tick",
  "deliver",
  "disk-done",
  "unreachable",
  "snap-report",
  "request",
  "response",
  "client-timer",
  "fault",
  "restart",
  "heal",
  "phase",
  "snapshot-written",
  "snapshot-transfer",
];

interface _Event {
  time: number;
  seq: number;
  /** The node the event runs on, or -1. Node events wait while it is paused. */
  node: number;
  /** The incarnation the event belongs to (-1: any); stale ones are skipped. */
  inc: number;
  kind: number;
  detail: unknown;
  fn: () => void;
}

/** A binary min-heap of events ordered by time, then sequence number. */
class _EventQueue {
  #heap: _Event[] = [];

  push(e: _Event): void {
    const h = this.#heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!_before(e, h[p]!)) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = e;
  }

  pop(): _Event | undefined {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop();
    if (top === undefined || last === undefined || h.length === 0) return top;
    let i = 0;
    const n = h.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && _before(h[r]!, h[l]!) ? r : l;
      if (!_before(h[c]!, last)) break;
      h[i] = h[c]!;
      i = c;
    }
    h[i] = last;
    return top;
  }
}

function _before(a: _Event, b: _Event): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}

/** A snapshot file (or received `.recv` file) on a simulated disk. Never mutated. */
interface _Snap {
  meta: SnapshotMeta;
  pairs: [string, string][];
  /** {@linkcode _stateDigest} of the pairs. */
  digest: number;
  /** The file's approximate size in bytes. */
  bytes: number;
}

/** raft_node.ts WriteJob, plus what the simulated disk needs. */
interface _WriteJob {
  /** A received snapshot to install before the entries. */
  install: _Snap | null;
  entries: Entry[];
  hardState: HardState | null;
  messages: Message[];
  /** A snapshot just saved: record it and compact the log, after the entries. */
  compact: { meta: SnapshotMeta; compactTo: number } | null;
  /** The entries as WAL records, encoded when the write starts. */
  bytes: Uint8Array | null;
  /** The reset record of `install`, encoded when the write starts. */
  resetBytes: Uint8Array | null;
  /** The job's first WAL write starts a new segment (the log was rolled for a snapshot). */
  roll: boolean;
}

/** A growable byte array: the content of one simulated WAL segment file. */
class _Bytes {
  #buf = new Uint8Array(1 << 12);
  length = 0;

  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }

  append(bytes: Uint8Array): void {
    const need = this.length + bytes.length;
    if (need > this.#buf.length) {
      const grown = new Uint8Array(Math.max(need, this.#buf.length * 2));
      grown.set(this.#buf.subarray(0, this.length));
      this.#buf = grown;
    }
    this.#buf.set(bytes, this.length);
    this.length = need;
  }

  truncate(length: number): void {
    this.length = Math.min(this.length, length);
  }
}

/** One WAL segment file: the first index in its name, its bytes, the highest index written. */
interface _WalSegment {
  first: number;
  data: _Bytes;
  maxIndex: number;
}

/** What a replay of the WAL segments found (src/storage/wal.ts `_recover`). */
interface _Replay {
  entries: Entry[];
  /** The last index (a reset's index if no entry followed it); 0 for no log. */
  lastIndex: number;
  /** Offset just past the last whole record of the last segment. */
  end: number;
  /** Offset where the last whole record of the last segment starts (-1: none). */
  lastStart: number;
  /** Why the tail was cut off, or null. */
  torn: string | null;
  /** Corruption: a record that is neither whole nor a torn tail, a gap, a misnamed segment. */
  problem: string | null;
  /** Each segment's highest index. */
  maxIndex: number[];
}

interface _Recovered {
  hardState: HardState;
  snapshot: _Snap | null;
  entries: Entry[];
}

type _Outcome =
  | { kind: "ok"; index: number; term: number }
  | { kind: "value"; value: string | null }
  | { kind: "notLeader"; leader: NodeId }
  | { kind: "refused" }
  | { kind: "notApplied" }
  | { kind: "unknown" };

interface _Client {
  id: number;
  op: _ClientOp | null;
  /** The node believed to lead, or -1. */
  hint: number;
  seq: number;
  final: boolean;
}

interface _ClientOp {
  client: _Client;
  kind: "put" | "get" | "delete";
  /** A read with the "lease" consistency. */
  lease: boolean;
  key: string;
  value: string | null;
  call: number;
  deadline: number;
  attempt: number;
  proposed: boolean;
  done: boolean;
}

interface _Waiter {
  term: number;
  op: _ClientOp;
  attempt: number;
}

interface _ReadReq {
  op: _ClientOp;
  attempt: number;
}

interface _ReadRound {
  reads: _ReadReq[];
  index: number;
}

class _Node {
  readonly id: NodeId;
  readonly index: number;
  up = true;
  /** Bumped on every crash: events of an earlier incarnation are void. */
  inc = 0;
  pausedUntil = 0;
  /** Events that arrived while paused, in arrival order: they run when the pause ends. */
  deferred: _Event[] = [];
  /** When this incarnation's clock started, and the ticks given since (as raft_node.ts keeps). */
  tickOrigin = 0;
  ticked = 0;
  core!: RaftCore;
  /** Set while #process runs for this node: it is never nested (as in raft_node.ts). */
  processing = false;
  kv = new KvStateMachine();
  /** {@linkcode _stateDigest} of `kv.data`, kept up to date as entries apply. */
  kvDigest = 0;
  /** The index of the snapshot the state machine was last reset to (0: none). */
  appliedBySnapshot = 0;
  // -- the disk: survives crashes
  /** The WAL segment files, oldest first. */
  segments: _WalSegment[] = [];
  /** The durable hard state (the hard-state file, replaced atomically). */
  hardState: HardState = { term: 0, vote: NONE, commit: 0 };
  /** The log metadata file's snapshot index. */
  metaSnapshotIndex = 0;
  /** Snapshot files. */
  snapshots: _Snap[] = [];
  /** Received snapshot files (`.recv`). */
  received: _Snap[] = [];
  // -- memory
  /** The next WAL write starts a new segment (wal.rollNext()). */
  rollNext = false;
  /** What recovery produced at the last crash (used at restart). */
  recovered: _Recovered = {
    hardState: { term: 0, vote: NONE, commit: 0 },
    snapshot: null,
    entries: [],
  };
  /** Chain hash of the durable log at each index (index 0 = empty log). */
  durableChain: number[] = [0];
  /** Chain hash of the in-memory log at each index, kept from the Readies' entries. */
  memChain: number[] = [0];
  lastCommit = 0;
  rate = 1;
  /** Writes not started yet; new work merges into the last one (raft_node.ts #pendingWrites). */
  pendingWrites: _WriteJob[] = [];
  inflightWrite: _WriteJob | null = null;
  /** raft_node.ts #snapshotFile: the newest snapshot saved or installed. */
  snapshotFile: _Snap | null = null;
  /** raft_node.ts #snapshotting. */
  snapshotting = false;
  /** The view being written (raft_node.ts #takeSnapshot's `view`). */
  snapshotView: StateView | null = null;
  /** The pairs of the view being written, read early (modelled fix "install-during-snapshot"). */
  snapshotPairs: [string, string][] | null = null;
  /** raft_node.ts #received: the newest received snapshot, not installed yet. */
  recvMem: _Snap | null = null;
  /** The commit index just before the last received snapshot was stepped. */
  commitAtReceive = 0;
  waiters = new Map<number, _Waiter>();
  readQueue: _ReadReq[] = [];
  readRounds = new Map<number, { reads: _ReadReq[] }>();
  readSeq = 0;
  readsAwaitingApply: _ReadRound[] = [];

  constructor(id: NodeId, index: number) {
    this.id = id;
    this.index = index;
  }
}

class _Simulation {
  readonly #opts: SimulationOptions;
  readonly #faults: FaultOptions;
  readonly #profile: string;
  readonly #rng: () => number;
  readonly #tickMs: number;
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

  #now = 0;
  #seq = 0;
  #queue = new _EventQueue();
  #nodes: _Node[] = [];
  /** Each node's peer validator, as a real node builds it. */
  #validators = new Map<NodeId, PeerValidator>();
  #clients: _Client[] = [];
  #history: Operation[] = [];
  #encoder = new RecordEncoder();
  #ackedWrites = new Map<string, { node: NodeId; index: number; term: number }>();
  #blocked = new Set<number>();
  #partitionId = 0;
  #phase: "run" | "drain" | "final" | "converge" | "done" = "run";
  #finalPending = 0;

  /** term -> index of its leader. */
  #leaders = new Map<number, number>();
  /** (index, term) -> chain hash * 8 + node that first held it. */
  #indexTerm = new Map<number, number>();
  /** Chain hash of the committed log at each index. */
  #committed: number[] = [0];
  /** The term in which each index was first known committed. */
  #commitTerm: number[] = [0];
  /** The term of the committed entry at each index. */
  #committedEntryTerm: number[] = [0];
  /** {@linkcode _stateDigest} of the state after applying each index, as first seen. */
  #appliedDigest: number[] = [0];

  #ringEvents: (_Event | string)[] = [];
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
    installsCompletedAtStartup: 0,
    segmentsCompacted: 0,
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
    this.#tickMs = this.#faults.tickMs;
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
  }

  // ---- the event loop -------------------------------------------------------------------------

  run(): SimulationResult {
    const ids = Array.from({ length: this.#opts.nodes }, (_, i) => `n${i + 1}`);
    this.#nodes = ids.map((id, i) => new _Node(id, i));
    for (const id of ids) {
      this.#validators.set(
        id,
        new PeerValidator({ self: id, members: ids, checkEntryData: decodeCommand }),
      );
    }
    for (const n of this.#nodes) this.#boot(n);
    const clients = this.#opts.clients ?? this.#opts.nodes + 1;
    for (let i = 0; i < clients; i++) {
      const c: _Client = { id: i + 1, op: null, hint: -1, seq: 0, final: false };
      this.#clients.push(c);
      this.#clientStart(c);
    }
    this.#scheduleFaults();
    this.#at(this.#opts.durationMs, -1, -1, _K.phase, "final heal", () => this.#finalHeal());

    const maxEvents = 200_000 + this.#opts.durationMs * 400;
    while (this.#phase !== "done") {
      const ev = this.#queue.pop();
      if (ev === undefined) this.#fail("runaway", "the event queue ran dry");
      this.#now = ev.time;
      let n: _Node | undefined;
      if (ev.node >= 0) {
        n = this.#nodes[ev.node]!;
        if (n.up && n.pausedUntil > ev.time) {
          n.deferred.push(ev);
          continue;
        }
        if (ev.inc >= 0 && (!n.up || n.inc !== ev.inc)) continue;
      }
      this.#record(ev);
      try {
        ev.fn();
        if (n !== undefined && n.up) {
          this.#process(n);
          this.#check(n);
        }
      } catch (e) {
        if (e instanceof SimulationFailure) throw e;
        const who = n ? ` on ${n.id}` : "";
        this.#fail("node-error", `unexpected error${who}: ${(e as Error)?.stack ?? e}`);
      }
      if (++this.#stats.events > maxEvents) {
        this.#fail("runaway", `more than ${maxEvents} events`);
      }
    }
    this.#stats.virtualMs = Math.round(this.#now);
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
  }

  #at(
    time: number,
    node: number,
    inc: number,
    kind: number,
    detail: unknown,
    fn: () => void,
  ): void {
    this.#queue.push({ time, seq: ++this.#seq, node, inc, kind, detail, fn });
  }

  #random(lo: number, hi: number): number {
    return lo + this.#rng() * (hi - lo);
  }

  #pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.#rng() * items.length)]!;
  }

  // ---- tracing and failing --------------------------------------------------------------------

  #record(ev: _Event): void {
    let h = this.#digest;
    h = Math.imul(h ^ Math.floor(ev.time * 1000), 0x01000193);
    h = Math.imul(h ^ (ev.kind * 16 + ev.node + 1), 0x01000193);
    this.#digest = h;
    this.#ringEvents[this.#ringPos] = ev;
    this.#ringPos = (this.#ringPos + 1) % _TRACE_TAIL;
    if (this.#onTrace) this.#onTrace(this.#formatEvent(ev));
  }

  #note(text: string): void {
    const line = `${this.#now.toFixed(3).padStart(10)}  --  ${text}`;
    this.#ringEvents[this.#ringPos] = line;
    this.#ringPos = (this.#ringPos + 1) % _TRACE_TAIL;
    if (this.#onTrace) this.#onTrace(line);
  }

  #formatEvent(ev: _Event): string {
    const who = ev.node >= 0 ? this.#nodes[ev.node]!.id : "--";
    const d = ev.detail;
    let text = "";
    if (typeof d === "string") {
      text = d;
    } else if (d && typeof d === "object" && "type" in d && "from" in d) {
      text = _formatMessage(d as Message);
    } else if (d && typeof d === "object" && "entries" in d) {
      const job = d as _WriteJob;
      const e = job.entries;
      text = `${
        job.install ? `install snapshot ${job.install.meta.index}, ` : ""
      }write ${e.length} entries${e.length ? ` [${e[0]!.index}..${e.at(-1)!.index}]` : ""}${
        job.hardState ? ` hs(t${job.hardState.term} v${job.hardState.vote || "-"})` : ""
      }${
        job.compact
          ? `, compact to ${job.compact.compactTo} (snapshot ${job.compact.meta.index})`
          : ""
      }, then send ${job.messages.length}`;
    }
    return `${ev.time.toFixed(3).padStart(10)}  ${who.padEnd(2)}  ${_KIND_NAMES[ev.kind]} ${text}`;
  }

  #traceTail(): string[] {
    const out: string[] = [];
    for (let i = 0; i < _TRACE_TAIL; i++) {
      const item = this.#ringEvents[(this.#ringPos + i) % _TRACE_TAIL];
      if (item === undefined) continue;
      out.push(typeof item === "string" ? item : this.#formatEvent(item));
    }
    return out;
  }

  #fail(check: CheckName, detail: string): never {
    const state = this.#nodes.map((n) => {
      if (!n.up) return `  ${n.id}: down (durable log ${n.durableChain.length - 1})`;
      const c = n.core;
      return `  ${n.id}: ${c.role} term ${c.term} leader ${
        c.leader || "-"
      } log ${c.log.firstIndex()}..${c.log.lastIndex()} ` +
        `commit ${c.log.committed} applied ${n.kv.appliedIndex} durable ${
          n.durableChain.length - 1
        } snapshot ${n.snapshotFile?.meta.index ?? 0}${
          n.appliedBySnapshot ? ` (state from snapshot ${n.appliedBySnapshot})` : ""
        }${n.pausedUntil > this.#now ? ` paused until ${n.pausedUntil.toFixed(0)}` : ""}`;
    });
    throw new SimulationFailure(
      this.#opts.seed,
      check,
      `${detail}\nat virtual time ${this.#now.toFixed(3)} ms (profile ${this.#profile}); nodes:\n${
        state.join("\n")
      }`,
      this.#replay,
      this.#traceTail(),
    );
  }

  #violation(check: CheckName, detail: string): void {
    if (!this.#disabled.has(check)) this.#fail(check, detail);
  }

  // ---- nodes: boot, crash, restart ------------------------------------------------------------

  #boot(n: _Node): void {
    n.up = true;
    n.pausedUntil = 0;
    const rec = n.recovered;
    const snap = rec.snapshot;
    n.core = new RaftCore({
      id: n.id,
      voters: this.#nodes.map((m) => m.id),
      electionTicks: this.#electionTicks,
      heartbeatTicks: 1,
      random: seededRandom(Math.floor(this.#rng() * 2 ** 32)),
      hardState: rec.hardState,
      snapshot: snap ? snap.meta : null,
      entries: rec.entries,
    });
    n.kv = new KvStateMachine();
    n.kvDigest = 0;
    n.appliedBySnapshot = 0;
    n.memChain = [0];
    if (snap) {
      // raft_node.ts: the state machine starts from the snapshot, the log after it.
      n.kv.reset(snap.pairs, snap.meta.index);
      n.kvDigest = snap.digest;
      n.appliedBySnapshot = snap.meta.index;
      n.memChain = this.#committed.slice(0, snap.meta.index + 1);
      this.#stats.snapshotRestarts++;
    }
    n.snapshotFile = snap;
    n.snapshotting = false;
    n.snapshotView = null;
    n.snapshotPairs = null;
    n.recvMem = null;
    this.#trackEntries(n, rec.entries);
    n.lastCommit = 0;
    n.pendingWrites = [];
    n.inflightWrite = null;
    n.waiters = new Map();
    n.readQueue = [];
    n.readRounds = new Map();
    n.readSeq = 0;
    n.readsAwaitingApply = [];
    const skew = this.#faults.clockSkew;
    n.rate = 1 + this.#random(-skew, skew);
    n.tickOrigin = this.#now - this.#random(0, this.#tickMs / n.rate);
    n.ticked = 0;
    this.#scheduleTick(n, this.#tickMs / n.rate - (this.#now - n.tickOrigin));
  }

  /**
   * Whether the driver behaves as src/ does now, with the fix of `fix` (the default), rather than
   * as it did before (`modelFixes` lists the fixes to keep; `[]` replays the old bugs).
   */
  #fixed(fix: ModelFix): boolean {
    return this.#opts.modelFixes?.includes(fix) ?? true;
  }

  #scheduleTick(n: _Node, delay: number): void {
    this.#at(this.#now + delay, n.index, n.inc, _K.tick, undefined, () => {
      this.#catchUpTicks(n);
      this.#scheduleTick(n, this.#tickMs / n.rate);
    });
  }

  /**
   * raft_node.ts #catchUpTicks: one tick per tick interval of the node's (skewed) clock since it
   * started, including the ticks a pause made it miss, capped at four election timeouts.
   */
  #catchUpTicks(n: _Node): void {
    const due = Math.floor((this.#now - n.tickOrigin) * n.rate / this.#tickMs);
    if (due <= n.ticked) return;
    const count = Math.min(due - n.ticked, 4 * this.#electionTicks);
    n.ticked = due;
    for (let i = 0; i < count; i++) n.core.tick();
  }

  #crash(n: _Node, why: string): void {
    if (!n.up) return;
    this.#stats.crashes++;
    n.up = false;
    n.inc++;
    n.pausedUntil = 0;
    n.deferred = [];
    let torn = "";
    const job = n.inflightWrite;
    if (job) {
      // Torn bytes follow the fault mix; a job of several steps (install, compaction) is cut
      // between two of them half the time whatever the mix.
      const tear = this.#rng() < this.#faults.tornWriteRate;
      if (tear || ((job.install || job.compact) && this.#rng() < 0.5)) {
        torn = this.#tear(n, job, tear);
        if (tear) this.#stats.tornWrites++;
      }
    }
    n.inflightWrite = null;
    n.pendingWrites = [];
    n.rollNext = false;
    n.snapshotting = false;
    n.recvMem = null;
    this.#note(`${n.id} CRASHED (${why})${torn}`);
    n.recovered = this.#recover(n);
    this.#checkDurableMajority(`after ${n.id} crashed`);
  }

  /**
   * Power loss in the middle of the write in flight: part of it reached the disk. The job's steps
   * run in raft_node.ts's order (install: reset record, rename of the received file, metadata,
   * pruning; the entries; the hard state; compaction: metadata, segment deletions, pruning) and
   * stop at a random point. With `tearBytes`, the entries are either a prefix cut at any byte, or
   * (sector model) whole 512-byte sectors of them and then zeros where the file grew but the data
   * never arrived; without, all or nothing of them. The hard state is written after the entries
   * are synced, so it can only have been replaced if every entry byte made it.
   */
  #tear(n: _Node, job: _WriteJob, tearBytes: boolean): string {
    const notes: string[] = [];
    let roll = job.roll;
    if (job.install) {
      // 0: the reset record is torn; 1..4: reset, rename, metadata, pruning done in turn.
      const steps = Math.floor(this.#rng() * 5);
      const reset = job.resetBytes!;
      if (steps === 0) {
        const kept = tearBytes ? Math.floor(this.#rng() * reset.length) : 0;
        this.#walWrite(n, reset.subarray(0, kept), job.install.meta.index + 1, 0, roll);
        notes.push(
          `install of snapshot ${job.install.meta.index}: ${kept} of ${reset.length} bytes of its reset record`,
        );
        return ` (${notes.join("; ")})`;
      }
      this.#installSteps(n, job, steps);
      roll = false;
      notes.push(
        `install of snapshot ${job.install.meta.index}: ${
          ["reset record", "rename", "metadata", "pruning"].slice(0, steps).join(", ")
        } done`,
      );
      if (steps < 4) return ` (${notes.join("; ")})`;
    }
    const bytes = job.bytes ?? new Uint8Array(0);
    const target = roll || n.segments.length === 0 ? null : n.segments.at(-1)!;
    const start = target?.data.length ?? 0;
    let kept: number;
    let zeros = 0;
    if (!tearBytes) {
      kept = this.#rng() < 0.5 ? 0 : bytes.length;
    } else if (this.#rng() < 0.5) {
      kept = Math.floor(this.#rng() * (bytes.length + 1));
    } else {
      // Sector boundaries strictly inside the write: whole sectors up to one of them survive.
      const first = Math.floor(start / 512) + 1;
      const inside = Math.max(0, Math.ceil((start + bytes.length) / 512) - first);
      const j = Math.floor(this.#rng() * (inside + 2)); // 0: nothing, inside + 1: everything
      kept = j === 0 ? 0 : j > inside ? bytes.length : (first + j - 1) * 512 - start;
      zeros = Math.floor(this.#rng() * (bytes.length - kept + 1));
    }
    if (bytes.length > 0) {
      const tail = new Uint8Array(kept + zeros);
      tail.set(bytes.subarray(0, kept));
      const whole = kept === bytes.length;
      this.#walWrite(n, tail, job.entries[0]!.index, whole ? job.entries.at(-1)!.index : 0, roll);
    }
    const hsKept = job.hardState !== null && kept === bytes.length && this.#rng() < 0.5;
    if (hsKept) n.hardState = { ...job.hardState! };
    notes.push(
      `${kept} of ${bytes.length} bytes of the write in flight survived${
        zeros ? `, then ${zeros} zero bytes` : ""
      }${job.hardState ? `, hard state ${hsKept ? "replaced" : "not replaced"}` : ""}`,
    );
    const written = kept === bytes.length && (job.hardState === null || hsKept);
    if (job.compact && written) {
      const steps = Math.floor(this.#rng() * 4); // metadata, segment deletions, pruning
      this.#compactSteps(n, job.compact, steps);
      notes.push(
        `compaction: ${
          ["metadata", "segment deletions", "pruning"].slice(0, steps).join(", ") || "nothing"
        } done`,
      );
    }
    return ` (${notes.join("; ")})`;
  }

  /** Recovers the node's durable state the way disk_storage.ts does at start-up. */
  #recover(n: _Node): _Recovered {
    let replay = _replayWal(n.segments);
    if (replay.problem !== null) {
      this.#fail("recovery", `${n.id}: the WAL does not replay: ${replay.problem}`);
    }
    if (replay.torn !== null) this.#note(`${n.id} recovery cuts a torn tail: ${replay.torn}`);
    n.segments.at(-1)?.data.truncate(replay.end);
    if (this.#opts.bug === "forget-synced" && replay.lastStart >= 0) {
      n.segments.at(-1)!.data.truncate(replay.lastStart); // BUG: the last synced record is forgotten.
      replay = _replayWal(n.segments);
    }
    replay.maxIndex.forEach((m, i) => n.segments[i]!.maxIndex = m);
    if (n.segments.length > 0 && n.segments.at(-1)!.data.length === 0) n.segments.pop();

    // An install interrupted after its reset record: the log starts after the newest snapshot.
    const logStart = (replay.entries[0]?.index ?? replay.lastIndex + 1) - 1;
    if (logStart > (_newest(n.snapshots)?.meta.index ?? 0)) {
      const recv = n.received.find((r) => r.meta.index === logStart);
      if (!recv) {
        this.#fail(
          "recovery",
          `${n.id}: the log was reset to a snapshot at index ${logStart}, but no snapshot file for it exists (disk_storage.ts would refuse to start)`,
        );
      }
      n.received = n.received.filter((r) => r !== recv);
      n.snapshots.push(recv);
      this.#stats.installsCompletedAtStartup++;
      this.#note(`${n.id} recovery completes the install of snapshot ${logStart}`);
    }
    this.#prune(n, true);
    const snapshot = _newest(n.snapshots);
    const snapIndex = snapshot?.meta.index ?? 0;
    if (n.metaSnapshotIndex > snapIndex) {
      this.#fail(
        "recovery",
        `${n.id}: the log metadata records a snapshot at ${n.metaSnapshotIndex} but the newest snapshot is at ${snapIndex}`,
      );
    }
    const entries = replay.entries.filter((e) => e.index > snapIndex);
    if ((entries[0]?.index ?? snapIndex + 1) > snapIndex + 1) {
      this.#fail(
        "recovery",
        `${n.id}: the log starts at ${
          entries[0]!.index
        } but the newest snapshot ends at ${snapIndex}: entries are missing`,
      );
    }
    if (snapshot) {
      this.#checkSnapshot(snapshot, `the snapshot ${n.id} recovered at start-up`);
      if (replay.lastIndex < snapIndex) {
        // disk_storage.ts: the log continues after the snapshot.
        const enc = this.#encoder;
        enc.clear();
        enc.addReset(snapIndex, snapshot.meta.term);
        this.#walWrite(n, enc.bytes().slice(), snapIndex + 1, snapIndex, n.segments.length === 0);
      }
    }
    const hardState = { ...n.hardState };
    const last = entries.at(-1)?.index ?? snapIndex;
    if (hardState.commit > last) {
      this.#violation(
        "recovery",
        `${n.id}: durable hard state commit ${hardState.commit} is ahead of the durable log (${last})`,
      );
    }
    n.durableChain = snapshot ? this.#committed.slice(0, snapIndex + 1) : [0];
    this.#trackDurable(n, entries);
    return { hardState, snapshot, entries };
  }

  /** Appends bytes to the WAL's active segment, or to a new one (src/storage/wal.ts #write). */
  #walWrite(n: _Node, bytes: Uint8Array, firstIndex: number, maxIndex: number, roll: boolean) {
    let seg = n.segments.at(-1);
    if (seg === undefined || roll) {
      seg = { first: firstIndex, data: new _Bytes(), maxIndex: 0 };
      n.segments.push(seg);
    }
    seg.data.append(bytes);
    if (maxIndex > seg.maxIndex) seg.maxIndex = maxIndex;
  }

  /** Records entries made durable in the node's durable chain. */
  #trackDurable(n: _Node, entries: Entry[]): void {
    for (const e of entries) {
      n.durableChain.length = e.index;
      n.durableChain.push(_chain(n.durableChain[e.index - 1]!, e));
    }
  }

  /** Removes snapshot files beyond the newest two; with `leftovers`, received files too. */
  #prune(n: _Node, leftovers: boolean): void {
    if (n.snapshots.length > 2) {
      n.snapshots.sort((a, b) => b.meta.index - a.meta.index);
      n.snapshots.length = 2;
    }
    if (leftovers) n.received = [];
  }

  /**
   * The first `steps` steps of installing `job.install` (disk_storage.ts installReceived): the WAL
   * reset record (the commit point), the rename of the received file, the log metadata, pruning.
   */
  #installSteps(n: _Node, job: _WriteJob, steps: number): void {
    const snap = job.install!;
    const index = snap.meta.index;
    if (steps >= 1) {
      if (this.#opts.bug !== "install-without-reset") {
        this.#walWrite(n, job.resetBytes!, index + 1, index, job.roll);
      }
      n.durableChain = this.#committed.slice(0, index + 1);
    }
    if (steps >= 2) {
      const at = n.received.indexOf(snap);
      if (at < 0) {
        this.#fail(
          "node-error",
          `${n.id}: installing snapshot ${index}: its received file is gone (the rename fails, the node stops; its WAL already starts after ${index})`,
        );
      }
      n.received.splice(at, 1);
      n.snapshots.push(snap);
    }
    if (steps >= 3) n.metaSnapshotIndex = index;
    if (steps >= 4) {
      if (this.#fixed("recv-prune")) {
        this.#prune(n, false);
        n.received = n.received.filter((r) => r.meta.index > index);
      } else {
        this.#prune(n, true);
      }
    }
  }

  /**
   * The first `steps` steps of recording a saved snapshot (disk_storage.ts snapshotTaken): the
   * log metadata, deleting the WAL segments wholly at or below `compactTo`, pruning snapshots.
   */
  #compactSteps(
    n: _Node,
    compact: { meta: SnapshotMeta; compactTo: number },
    steps: number,
  ): void {
    if (steps >= 1) n.metaSnapshotIndex = compact.meta.index;
    if (steps >= 2) {
      const upTo = this.#opts.bug === "compact-past-snapshot" ? Infinity : compact.compactTo;
      while (n.segments.length > 1 && n.segments[0]!.maxIndex <= upTo) {
        n.segments.shift();
        this.#stats.segmentsCompacted++;
      }
    }
    if (steps >= 3) this.#prune(n, false);
  }

  #restart(n: _Node): void {
    if (n.up) return;
    const rec = n.recovered;
    this.#note(
      `${n.id} restarts: term ${rec.hardState.term} vote ${
        rec.hardState.vote || "-"
      } commit ${rec.hardState.commit} snapshot ${
        rec.snapshot?.meta.index ?? "-"
      } entries ${rec.entries.length}`,
    );
    this.#boot(n);
    this.#process(n);
    this.#check(n);
  }

  // ---- the driver -----------------------------------------------------------------------------

  /**
   * Works through the node's Readies (raft_node.ts: #process), never nested: a nested call
   * returns and the running loop takes the work. (Here every write completes as a later disk
   * event, so nothing nests; the driver completes a write with nothing to write at once.)
   */
  #process(n: _Node): void {
    if (n.processing) return;
    n.processing = true;
    try {
      let guard = 0;
      do {
        this.#startReadRound(n);
        while (n.core.hasReady()) {
          if (++guard > 10_000) this.#fail("node-error", `${n.id}: hasReady() never became false`);
          this.#handleReady(n, n.core.ready());
        }
      } while (n.readQueue.length > 0 && n.readRounds.size === 0 && n.core.role === "leader");
    } finally {
      n.processing = false;
    }
  }

  #handleReady(n: _Node, rd: Ready): void {
    if (rd.softState) {
      this.#note(
        `${n.id} is ${rd.softState.role} in term ${n.core.term} (leader ${
          rd.softState.leader || "-"
        })`,
      );
      if (rd.softState.role !== "leader") this.#failUnconfirmedReads(n);
    }
    if (rd.entries.length > 0) this.#trackEntries(n, rd.entries);
    this.#sendAll(n, rd.messages);
    if (rd.snapshot) this.#installSnapshot(n, rd.snapshot);
    if (this.#opts.bug === "persist-early") {
      this.#sendAll(n, rd.persistedMessages); // BUG: before the write is durable.
      rd = { ...rd, persistedMessages: [] };
    }
    if (rd.entries.length > 0 || rd.hardState || rd.persistedMessages.length > 0) {
      this.#enqueueWrite(n, rd);
    }
    if (rd.committedEntries.length > 0) this.#apply(n, rd.committedEntries);
    for (const rs of rd.readStates) {
      const round = n.readRounds.get(rs.id);
      if (!round) continue;
      n.readRounds.delete(rs.id);
      n.readsAwaitingApply.push({ reads: round.reads, index: rs.index });
    }
    this.#serveReads(n);
  }

  /** Queues a Ready's durable work; at most one write is in flight (group commit). */
  #enqueueWrite(n: _Node, rd: Ready): void {
    const job = this.#openJob(n);
    if (rd.entries.length > 0) {
      const first = rd.entries[0]!.index;
      const keep = job.entries.findIndex((e) => e.index >= first);
      if (keep >= 0) job.entries.length = keep;
      for (const e of rd.entries) job.entries.push(e);
    }
    if (rd.hardState) job.hardState = rd.hardState;
    for (const m of rd.persistedMessages) job.messages.push(m);
    this.#startWrite(n);
  }

  /** The job new work may join: the last pending one, unless it already compacts the log. */
  #openJob(n: _Node): _WriteJob {
    const last = n.pendingWrites.at(-1);
    if (last && !last.compact) return last;
    const job = _newJob();
    n.pendingWrites.push(job);
    return job;
  }

  #startWrite(n: _Node): void {
    if (n.inflightWrite) return;
    const job = n.pendingWrites.shift();
    if (!job) return;
    n.inflightWrite = job;
    const enc = this.#encoder;
    if (job.install) {
      enc.clear();
      enc.addReset(job.install.meta.index, job.install.meta.term);
      job.resetBytes = enc.bytes().slice();
    }
    enc.clear();
    for (const e of job.entries) enc.addEntry(e);
    job.bytes = enc.bytes().slice();
    if (job.install || job.entries.length > 0) {
      // The log was rolled for a snapshot: this job's first WAL write starts a new segment.
      job.roll = n.rollNext;
      n.rollNext = false;
    }
    let latency = this.#random(this.#faults.minDiskMs, this.#faults.maxDiskMs);
    if (job.install || job.compact) {
      latency += this.#random(this.#faults.minDiskMs, this.#faults.maxDiskMs);
    }
    this.#at(this.#now + latency, n.index, n.inc, _K.disk, job, () => this.#completeWrite(n, job));
    if (
      job.install && this.#faults.crashEveryMs > 0 && this.#phase === "run" && this.#rng() < 0.2
    ) {
      // Crash faults aim at installs now and then: a crash in the middle of one is the case that
      // start-up must complete (or roll back) correctly.
      const inc = n.inc;
      this.#at(this.#now + this.#random(0, latency), -1, -1, _K.fault, "crash", () => {
        if (n.inc !== inc || n.inflightWrite !== job || this.#phase !== "run") return;
        this.#crash(n, "crash while installing a snapshot");
        this.#restartLater(n);
      });
    }
  }

  /** The write loop's work for one job (raft_node.ts #writeLoop), done when its disk time ends. */
  #completeWrite(n: _Node, job: _WriteJob): void {
    this.#stats.diskWrites++;
    if (job.install) {
      this.#installSteps(n, job, 4);
      n.snapshotFile = job.install;
    }
    if (job.bytes && job.bytes.length > 0) {
      this.#walWrite(
        n,
        job.bytes,
        job.entries[0]!.index,
        job.entries.at(-1)!.index,
        job.roll && !job.install,
      );
    }
    if (job.hardState) n.hardState = { ...job.hardState };
    this.#trackDurable(n, job.entries);
    if (job.compact) this.#compactSteps(n, job.compact, 3);
    this.#sendAll(n, job.messages);
    const last = job.entries.at(-1);
    if (last) n.core.persisted(last.index, last.term);
    this.#process(n);
    n.inflightWrite = null;
    this.#startWrite(n);
  }

  #apply(n: _Node, entries: Entry[]): void {
    for (const e of entries) {
      const i = e.index;
      this.#learnCommitted(n, i);
      if (_chain(n.memChain[i - 1] ?? -1, e) !== n.memChain[i]) {
        this.#violation(
          "state-machine-safety",
          `${n.id} applies entry ${i} (term ${e.term}) that is not the entry its log holds there`,
        );
      }
      if (n.memChain[i] !== this.#committed[i]) {
        this.#violation(
          "state-machine-safety",
          `${n.id} applies entry ${i} (term ${e.term}) that differs from the committed entry there`,
        );
      }
      if (n.durableChain[i] !== n.memChain[i]) {
        this.#violation(
          "state-machine-safety",
          `${n.id} applies entry ${i} (term ${e.term}) that is not durable on its disk`,
        );
      }
      if (e.type === EntryType.Normal) {
        const cmd = decodeCommand(e.data);
        const before = n.kv.data.get(cmd.key);
        n.kv.apply(i, cmd);
        n.kvDigest = _updateDigest(n.kvDigest, cmd.key, before, n.kv.data.get(cmd.key));
      } else {
        n.kv.advance(i);
      }
      this.#recordApplied(n, i);
      const w = n.waiters.get(i);
      if (!w) continue;
      n.waiters.delete(i);
      if (w.term === e.term && e.type === EntryType.Normal) {
        this.#respond(w.op, w.attempt, { kind: "ok", index: i, term: e.term }, n);
      } else {
        this.#respond(w.op, w.attempt, { kind: "notApplied" }, n);
      }
    }
    this.#maybeSnapshot(n);
  }

  /** Every node's state after applying index `i` must have the same digest. */
  #recordApplied(n: _Node, i: number): void {
    const want = this.#appliedDigest[i];
    if (want === undefined) {
      this.#appliedDigest[i] = n.kvDigest;
    } else if (want !== n.kvDigest) {
      this.#violation(
        "state-machine-safety",
        `${n.id}'s state after applying index ${i} differs from the state other nodes had there`,
      );
    }
  }

  // ---- snapshots (raft_node.ts "snapshots") ---------------------------------------------------

  /** Starts a snapshot when enough entries were applied since the last one. */
  #maybeSnapshot(n: _Node): void {
    const threshold = this.#snapshotThreshold;
    if (threshold <= 0) return;
    const last = n.snapshotFile?.meta.index ?? 0;
    if (n.snapshotting || n.kv.appliedIndex - last < threshold) return;
    n.snapshotting = true;
    const view = n.kv.view();
    n.snapshotView = view;
    const meta: SnapshotMeta = {
      index: view.index,
      term: n.core.log.term(view.index)!,
      voters: [...n.core.voters],
    };
    // storage.rollLog(): the next WAL write starts a new segment.
    if ((n.segments.at(-1)?.data.length ?? 0) > 0) n.rollNext = true;
    const bytes = _snapshotBytes(view.pairs());
    const delay = this.#random(this.#faults.minDiskMs, this.#faults.maxDiskMs) *
      (1 + bytes / 4096);
    this.#at(
      this.#now + delay,
      n.index,
      n.inc,
      _K.snapshotWritten,
      `snapshot at ${meta.index} (term ${meta.term}, ${view.count} keys) written`,
      () => this.#snapshotWritten(n, view, meta),
    );
  }

  /**
   * The snapshot file is durable (raft_node.ts #takeSnapshot after writeSnapshotFile): the view's
   * pairs are read now, at the end of the write (the most a concurrent change could disturb).
   */
  #snapshotWritten(n: _Node, view: StateView, meta: SnapshotMeta): void {
    n.snapshotting = false;
    n.snapshotView = null;
    const fixed = this.#fixed("install-during-snapshot");
    let pairs: [string, string][];
    if (this.#opts.bug === "snapshot-live-state") {
      pairs = [...n.kv.data]; // BUG: the live state, not the view.
    } else if (n.snapshotPairs !== null) {
      pairs = n.snapshotPairs;
      n.snapshotPairs = null;
    } else {
      pairs = [...view.pairs()];
      if (pairs.length !== view.count) {
        // encodeSnapshot throws: the snapshot task fails and the node stops.
        this.#fail(
          "node-error",
          `${n.id}: the view of the snapshot at ${meta.index} began with ${view.count} pairs but yields ${pairs.length} (encodeSnapshot throws; the node stops)`,
        );
      }
    }
    view.close();
    const snap = _makeSnap(meta, pairs);
    n.snapshots.push(snap);
    this.#stats.snapshotsTaken++;
    this.#checkSnapshot(snap, `the snapshot ${n.id} wrote`);
    if (fixed && meta.index <= n.core.log.snapIndex) {
      this.#note(`${n.id} drops its snapshot at ${meta.index}: an install overtook it`);
      return;
    }
    n.snapshotFile = snap;
    const compactTo = Math.max(n.core.log.snapIndex, meta.index - this.#catchUpEntries);
    n.core.snapshotSaved(meta, compactTo);
    const job = this.#openJob(n);
    job.compact = { meta, compactTo };
    this.#startWrite(n);
  }

  /** Streams the newest snapshot file to a follower that needs it (raft_node.ts #sendSnapshot). */
  #sendSnapshot(n: _Node, m: Message): void {
    const file = n.snapshotFile;
    const inc = n.inc;
    if (!file || file.meta.index !== m.snapshot?.index) {
      this.#note(`${n.id} has no snapshot file at ${m.snapshot?.index} for ${m.to}`);
      this.#at(this.#now, n.index, inc, _K.snapReport, `${m.to} failed`, () => {
        n.core.reportSnapshot(m.to, false);
      });
      return;
    }
    this.#checkSnapshot(file, `the snapshot ${n.id} sends`);
    const to = this.#nodes.findIndex((x) => x.id === m.to);
    if (to < 0) this.#fail("node-error", `${n.id} sent a snapshot to unknown node "${m.to}"`);
    const dst = this.#nodes[to]!;
    this.#stats.snapshotsSent++;
    const f = this.#faults;
    const bytes = encodeMessages([m]);
    const dstInc = dst.up ? dst.inc : -1;
    const blockedAtStart = this.#blocked.has(n.index * 8 + to);
    // A network delay, then the file at a bandwidth drawn per transfer (20 to 500 ms per KiB).
    let duration = this.#random(f.minDelayMs, f.maxDelayMs) +
      (file.bytes / 1024) * this.#random(20, 500);
    if (this.#rng() < f.slowRate) duration += this.#random(0, f.slowDelayMs);
    const lost = this.#rng() < f.dropRate;
    const report = (ok: boolean, why: string) => {
      if (!ok) this.#stats.snapshotSendsFailed++;
      const after = ok ? this.#random(f.minDelayMs, f.maxDelayMs) : this.#random(20, 200);
      this.#at(this.#now + after, n.index, inc, _K.snapReport, `${m.to} ${ok ? "ok" : why}`, () => {
        if (!ok) n.core.reportUnreachable(m.to);
        n.core.reportSnapshot(m.to, ok);
      });
    };
    this.#at(
      this.#now + duration,
      to,
      -1,
      _K.transfer,
      `snapshot ${file.meta.index} ${n.id}->${m.to}`,
      () => {
        if (!n.up || n.inc !== inc) {
          this.#note(`  transfer aborted: ${n.id} crashed`);
          return;
        }
        if (!dst.up || dst.inc !== dstInc) {
          report(false, `failed: ${dst.id} ${dst.up ? "restarted" : "is down"}`);
          return;
        }
        if (blockedAtStart || this.#blocked.has(n.index * 8 + to) || lost) {
          report(false, `failed: ${lost ? "connection lost" : "partitioned"}`);
          return;
        }
        const snapMsgs = decodeMessages(bytes);
        this.#checkValid(dst, n.id, snapMsgs, "snapshot");
        this.#receiveSnapshot(dst, snapMsgs[0]!, file);
        // The response: lost to a partition or a drop, the sender sees a failure.
        const back = this.#blocked.has(to * 8 + n.index) || this.#rng() < f.dropRate;
        report(!back, "failed: the response was lost");
      },
    );
  }

  /**
   * Stores a snapshot streamed by the leader as a received file and steps its message
   * (raft_node.ts #receiveSnapshot).
   */
  #receiveSnapshot(n: _Node, m: Message, snap: _Snap): void {
    this.#stats.snapshotsReceived++;
    n.received = n.received.filter((r) => r.meta.index !== snap.meta.index);
    n.received.push(snap);
    n.recvMem = snap;
    n.commitAtReceive = n.core.log.committed;
    this.#checkTaken(n, m, n.core.step(m));
  }

  /** Replaces the state with a received snapshot the core decided to install. */
  #installSnapshot(n: _Node, meta: SnapshotMeta): void {
    const received = n.recvMem;
    if (!received || received.meta.index !== meta.index) {
      this.#fail("node-error", `${n.id}: no received snapshot at index ${meta.index} to install`);
    }
    n.recvMem = null;
    const commit = Math.max(n.lastCommit, n.commitAtReceive);
    if (meta.index <= commit || meta.index <= n.kv.appliedIndex) {
      this.#violation(
        "snapshot",
        `${n.id} installs a snapshot at ${meta.index}, at or below its commit index ${commit} ` +
          `(applied ${n.kv.appliedIndex})`,
      );
    }
    if (received.meta.term !== meta.term) {
      this.#violation(
        "snapshot",
        `${n.id} installs snapshot ${meta.index} with term ${meta.term} from a file of term ${received.meta.term}`,
      );
    }
    this.#checkSnapshot(received, `the snapshot ${n.id} installs`);
    this.#stats.snapshotsInstalled++;
    this.#note(`${n.id} installs snapshot ${meta.index} (term ${meta.term})`);
    if (n.snapshotting && this.#fixed("install-during-snapshot")) {
      n.snapshotPairs = [...n.snapshotView!.pairs()];
    }
    n.kv.reset(received.pairs, meta.index);
    n.kvDigest = received.digest;
    n.appliedBySnapshot = meta.index;
    n.memChain = this.#committed.slice(0, meta.index + 1);
    for (const [index, w] of n.waiters) {
      if (index <= meta.index) {
        n.waiters.delete(index);
        this.#respond(w.op, w.attempt, { kind: "unknown" }, n);
      }
    }
    // Install before writing anything that follows it.
    const job = _newJob();
    job.install = received;
    n.pendingWrites.push(job);
    this.#startWrite(n);
  }

  /**
   * A snapshot must match the committed entry at its index, and hold the state every node had
   * after applying that index.
   */
  #checkSnapshot(snap: _Snap, what: string): void {
    const { index, term } = snap.meta;
    if (index > this.#committed.length - 1) {
      this.#violation(
        "snapshot",
        `${what} is at index ${index}, beyond the highest index known committed (${
          this.#committed.length - 1
        })`,
      );
      return;
    }
    if (this.#committedEntryTerm[index] !== term) {
      this.#violation(
        "snapshot",
        `${what} is at (${index}, term ${term}) but the entry committed at ${index} has term ${
          this.#committedEntryTerm[index]
        }`,
      );
    }
    const want = this.#appliedDigest[index];
    if (want === undefined) {
      this.#appliedDigest[index] = snap.digest;
    } else if (want !== snap.digest) {
      this.#violation(
        "snapshot",
        `${what} (index ${index}) holds ${snap.pairs.length} pairs that differ from the state the nodes had after applying ${index}`,
      );
    }
  }

  #startReadRound(n: _Node): void {
    if (n.readQueue.length === 0 || n.readRounds.size > 0) return;
    const reads = n.readQueue;
    n.readQueue = [];
    if (n.core.role !== "leader") {
      for (const r of reads) this.#respond(r.op, r.attempt, this.#notLeader(n), n);
      return;
    }
    const id = ++n.readSeq;
    n.readRounds.set(id, { reads });
    n.core.readIndex(id);
  }

  #serveReads(n: _Node): void {
    if (n.readsAwaitingApply.length === 0) return;
    const applied = n.kv.appliedIndex;
    const still: _ReadRound[] = [];
    for (const round of n.readsAwaitingApply) {
      if (round.index <= applied) {
        for (const r of round.reads) {
          this.#respond(r.op, r.attempt, { kind: "value", value: n.kv.get(r.op.key) }, n);
        }
      } else {
        still.push(round);
      }
    }
    n.readsAwaitingApply = still;
  }

  #failUnconfirmedReads(n: _Node): void {
    const out = this.#notLeader(n);
    for (const r of n.readQueue) this.#respond(r.op, r.attempt, out, n);
    n.readQueue = [];
    for (const round of n.readRounds.values()) {
      for (const r of round.reads) this.#respond(r.op, r.attempt, out, n);
    }
    n.readRounds.clear();
  }

  #notLeader(n: _Node): _Outcome {
    return { kind: "notLeader", leader: n.core.role === "leader" ? NONE : n.core.leader };
  }

  // ---- the network ----------------------------------------------------------------------------

  #sendAll(n: _Node, msgs: Message[]): void {
    for (const m of msgs) this.#send(n, m);
  }

  #send(n: _Node, m: Message): void {
    if (m.type === MessageType.Snap) {
      this.#sendSnapshot(n, m);
      return;
    }
    this.#stats.messagesSent++;
    const to = this.#nodes.findIndex((x) => x.id === m.to);
    if (to < 0) this.#fail("node-error", `${n.id} sent a message to unknown node "${m.to}"`);
    const from = n.index;
    if (this.#blocked.has(from * 8 + to)) {
      this.#stats.messagesDropped++;
      this.#maybeUnreachable(n, m.to);
      return;
    }
    const f = this.#faults;
    if (this.#rng() < f.dropRate) {
      this.#stats.messagesDropped++;
      return;
    }
    const bytes = encodeMessages([m]);
    const copies = this.#rng() < f.duplicateRate ? 2 : 1;
    if (copies === 2) this.#stats.messagesDuplicated++;
    for (let i = 0; i < copies; i++) {
      let delay = this.#random(f.minDelayMs, f.maxDelayMs);
      if (this.#rng() < f.slowRate) delay += this.#random(0, f.slowDelayMs);
      this.#at(this.#now + delay, to, -1, _K.deliver, m, () => this.#deliver(n, to, bytes));
    }
  }

  #deliver(sender: _Node, to: number, bytes: Uint8Array): void {
    const dst = this.#nodes[to]!;
    if (!dst.up || this.#blocked.has(sender.index * 8 + to)) {
      this.#stats.messagesDropped++;
      this.#note(`  dropped: ${dst.up ? "partitioned" : `${dst.id} is down`}`);
      if (!dst.up) this.#maybeUnreachable(sender, dst.id);
      return;
    }
    const msgs = decodeMessages(bytes);
    this.#checkValid(dst, sender.id, msgs, "messages");
    for (const m of msgs) this.#checkTaken(dst, m, dst.core.step(m));
  }

  /** Fails the run if the validator a real node runs would refuse a correct node's batch. */
  #checkValid(dst: _Node, from: NodeId, msgs: Message[], endpoint: PeerEndpoint): void {
    const refusal = this.#validators.get(dst.id)!.checkBatch(from, msgs, endpoint);
    if (refusal !== null) {
      this.#violation(
        "peer-refusal",
        `${dst.id} would refuse a batch from ${from} (${refusal.kind}): ${refusal.reason}`,
      );
    }
  }

  /** Fails the run if the core refused a correct node's message. */
  #checkTaken(dst: _Node, m: Message, refused: string | null): void {
    if (refused !== null) {
      this.#violation(
        "peer-refusal",
        `${dst.id} refused ${MessageType[m.type]} from ${m.from}: ${refused}`,
      );
    }
  }

  /** Now and then, the sender's transport gives up and reports the peer unreachable. */
  #maybeUnreachable(n: _Node, peer: NodeId): void {
    if (this.#rng() >= 0.3) return;
    this.#at(this.#now + this.#random(20, 200), n.index, n.inc, _K.unreachable, peer, () => {
      n.core.reportUnreachable(peer);
    });
  }

  // ---- invariants -----------------------------------------------------------------------------

  /** Records entries the node's log now holds (from a Ready or recovery) and checks log matching. */
  #trackEntries(n: _Node, entries: Entry[]): void {
    const first = entries[0]?.index;
    if (first === undefined) return;
    if (first > n.memChain.length) {
      this.#fail("log-matching", `${n.id} appends at ${first} past its last index`);
    }
    n.memChain.length = first;
    for (const e of entries) {
      if (e.index !== n.memChain.length) {
        this.#fail("log-matching", `${n.id} appended non-contiguous entries at ${e.index}`);
      }
      const h = _chain(n.memChain.at(-1)!, e);
      n.memChain.push(h);
      if (e.term >= 1_000_000) this.#fail("runaway", `term ${e.term} too large`);
      const key = e.index * 1_000_000 + e.term;
      const seen = this.#indexTerm.get(key);
      if (seen === undefined) {
        this.#indexTerm.set(key, h * 8 + n.index);
      } else if (Math.floor(seen / 8) !== h) {
        this.#violation(
          "log-matching",
          `${n.id} and ${this.#nodes[seen % 8]!.id} both hold an entry at index ${e.index} with ` +
            `term ${e.term}, but the entries or their prefixes differ`,
        );
      }
    }
  }

  /** Checks the node's state after an event. */
  #check(n: _Node): void {
    const core = n.core;
    const log = core.log;
    if (n.memChain.length !== log.lastIndex() + 1) {
      this.#fail(
        "log-matching",
        `${n.id}: its log ends at ${log.lastIndex()} but the Readies handed out entries up to ${
          n.memChain.length - 1
        }`,
      );
    }
    if (log.committed < n.lastCommit) {
      this.#violation(
        "commit-monotonic",
        `${n.id}: commit index went back from ${n.lastCommit} to ${log.committed}`,
      );
    }
    if (log.committed > n.lastCommit) {
      this.#learnCommitted(n, log.committed);
      n.lastCommit = log.committed;
    }
    if (core.term > this.#stats.maxTerm) this.#stats.maxTerm = core.term;
    if (core.role === "leader") {
      const prev = this.#leaders.get(core.term);
      if (prev === undefined) {
        this.#leaders.set(core.term, n.index);
        this.#stats.elections++;
        this.#checkLeaderCompleteness(n);
      } else if (prev !== n.index) {
        this.#violation(
          "election-safety",
          `two leaders in term ${core.term}: ${this.#nodes[prev]!.id} and ${n.id}`,
        );
      }
    }
  }

  /** The node knows entries up to `upTo` are committed: compare with (or extend) the record. */
  #learnCommitted(n: _Node, upTo: number): void {
    const known = this.#committed.length - 1;
    if (upTo > n.memChain.length - 1) {
      this.#fail("log-matching", `${n.id}: commit ${upTo} is past its last index`);
    }
    const at = Math.min(upTo, known);
    if (at > 0 && n.memChain[at] !== this.#committed[at]) {
      let first = 1;
      while (first < at && n.memChain[first] === this.#committed[first]) first++;
      this.#violation(
        "state-machine-safety",
        `${n.id} holds as committed an entry at index ${first} (term ${
          n.core.log.term(first)
        }) that differs from the entry committed there before`,
      );
    }
    if (upTo <= known) return;
    for (let i = known + 1; i <= upTo; i++) {
      this.#committed.push(n.memChain[i]!);
      this.#commitTerm.push(n.core.term);
      this.#committedEntryTerm.push(n.core.log.term(i) ?? -1);
    }
    this.#stats.maxCommit = upTo;
    this.#checkDurableMajority(`when ${n.id} learned commit ${upTo}`);
  }

  #checkLeaderCompleteness(n: _Node): void {
    const term = n.core.term;
    let i = this.#committed.length - 1;
    while (i > 0 && this.#commitTerm[i]! >= term) i--;
    if (i === 0) return;
    if (n.memChain.length <= i || n.memChain[i] !== this.#committed[i]) {
      this.#violation(
        "leader-completeness",
        `${n.id} became leader of term ${term} without the entry committed at index ${i} ` +
          `(its log ends at ${n.memChain.length - 1})`,
      );
    }
  }

  #checkDurableMajority(when: string): void {
    const c = this.#committed.length - 1;
    if (c === 0) return;
    const want = this.#committed[c];
    const holders = this.#nodes.filter((n) => n.durableChain[c] === want);
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
    this.#at(this.#now + this.#random(0, 30), -1, -1, _K.clientTimer, `c${c.id} next`, () => {
      this.#clientIssue(c);
    });
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
      call: this.#now,
      deadline: this.#now + this.#opTimeoutMs,
      attempt: 0,
      proposed: false,
      done: false,
    };
    c.op = op;
    this.#at(op.deadline, -1, -1, _K.clientTimer, `c${c.id} timeout`, () => this.#onTimeout(op));
    this.#attempt(op);
  }

  #attempt(op: _ClientOp): void {
    const c = op.client;
    const attempt = ++op.attempt;
    const useHint = c.hint >= 0 && this.#rng() < 0.7;
    const target = useHint ? c.hint : Math.floor(this.#rng() * this.#nodes.length);
    const what = `c${c.id} ${op.lease ? "lease-" : ""}${op.kind}(${op.key}${
      op.value ? `=${op.value}` : ""
    }) #${attempt}`;
    this.#at(this.#now + this.#random(0.1, 2), target, -1, _K.request, what, () => {
      this.#arrive(this.#nodes[target]!, op, attempt);
    });
    if (c.final) {
      // Final reads retry on silence: a read has no effect, so retrying is always safe.
      this.#at(this.#now + 1000, -1, -1, _K.clientTimer, `c${c.id} retry`, () => {
        if (!op.done && op.attempt === attempt) this.#attempt(op);
      });
    }
  }

  #arrive(n: _Node, op: _ClientOp, attempt: number): void {
    if (op.done || op.attempt !== attempt) return;
    if (!n.up) {
      this.#respond(op, attempt, { kind: "refused" }, n);
      return;
    }
    if (n.core.role !== "leader") {
      this.#respond(op, attempt, this.#notLeader(n), n);
      return;
    }
    if (op.kind === "get") {
      if (op.lease) {
        // raft_node.ts get(key, "lease"): owed ticks first, then within the lease and applied
        // far enough, answer now.
        this.#catchUpTicks(n);
        const index = n.core.role === "leader" ? n.core.leaseRead() : null;
        if (index !== null && n.kv.appliedIndex >= index) {
          this.#stats.leaseReadsOk++;
          this.#respond(op, attempt, { kind: "value", value: n.kv.get(op.key) }, n);
          return;
        }
      }
      n.readQueue.push({ op, attempt });
      return;
    }
    const cmd = op.kind === "put"
      ? encodeCommand({ op: "put", key: op.key, value: op.value! })
      : encodeCommand({ op: "delete", key: op.key });
    const placed = n.core.propose(cmd);
    op.proposed = true;
    n.waiters.set(placed.index, { term: placed.term, op, attempt });
  }

  #respond(op: _ClientOp, attempt: number, outcome: _Outcome, n: _Node): void {
    const c = op.client;
    const text = `c${c.id} <- ${n.id}: ${outcome.kind}${
      outcome.kind === "value" ? ` ${JSON.stringify(outcome.value)}` : ""
    }${outcome.kind === "ok" ? ` @${outcome.index}` : ""}`;
    this.#at(this.#now + this.#random(0.1, 2), -1, -1, _K.response, text, () => {
      this.#onResponse(op, attempt, outcome, n);
    });
  }

  #onResponse(op: _ClientOp, attempt: number, outcome: _Outcome, n: _Node): void {
    if (op.done || op.attempt !== attempt) return;
    const c = op.client;
    switch (outcome.kind) {
      case "ok":
        this.#stats.writesOk++;
        this.#ackedWrites.set(`${op.key}=${op.value ?? `delete by c${c.id}`}`, {
          node: n.id,
          index: outcome.index,
          term: outcome.term,
        });
        this.#history.push(this.#operation(op, this.#now));
        this.#finish(op);
        return;
      case "value":
        this.#stats.readsOk++;
        this.#history.push({ ...this.#operation(op, this.#now), value: outcome.value });
        this.#finish(op);
        return;
      case "notApplied":
        this.#stats.writesFailed++;
        this.#finish(op);
        return;
      case "unknown":
        this.#stats.writesUnknown++;
        this.#history.push(this.#operation(op, null));
        this.#finish(op);
        return;
      case "notLeader": {
        const hint = this.#nodes.findIndex((x) => x.id === outcome.leader);
        c.hint = hint;
        this.#retry(op);
        return;
      }
      case "refused":
        c.hint = -1;
        this.#retry(op);
        return;
    }
  }

  #retry(op: _ClientOp): void {
    const backoff = this.#random(5, 50);
    if (!op.client.final && this.#now + backoff >= op.deadline) return; // the timeout decides
    const attempt = op.attempt;
    this.#at(this.#now + backoff, -1, -1, _K.clientTimer, `c${op.client.id} retry`, () => {
      if (!op.done && op.attempt === attempt) this.#attempt(op);
    });
  }

  #onTimeout(op: _ClientOp): void {
    if (op.done) return;
    if (op.kind === "get") {
      this.#stats.readsDropped++;
    } else if (op.proposed) {
      this.#stats.writesUnknown++;
      this.#history.push(this.#operation(op, null));
    } else {
      this.#stats.writesFailed++;
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
    if (f.partitionEveryMs > 0) {
      this.#every(f.partitionEveryMs, "partition", () => this.#partition());
    }
    if (f.crashEveryMs > 0) this.#every(f.crashEveryMs, "crash", () => this.#crashSome());
    if (f.pauseEveryMs > 0) this.#every(f.pauseEveryMs, "pause", () => this.#pause());
  }

  /** Runs `fn` at random intervals averaging `meanMs` until the final heal. */
  #every(meanMs: number, what: string, fn: () => void): void {
    const next = () => {
      this.#at(this.#now + this.#random(0.2, 1.8) * meanMs, -1, -1, _K.fault, what, () => {
        if (this.#phase !== "run") return;
        fn();
        next();
      });
    };
    next();
  }

  #leaderIndex(): number {
    let best = -1;
    for (const n of this.#nodes) {
      if (!n.up || n.core.role !== "leader") continue;
      if (best < 0 || n.core.term > this.#nodes[best]!.core.term) best = n.index;
    }
    return best;
  }

  #partition(): void {
    if (this.#blocked.size > 0) return; // one partition at a time
    const count = this.#nodes.length;
    const all = this.#nodes.map((n) => n.index);
    const block = (a: number, b: number) => this.#blocked.add(a * 8 + b);
    const leader = this.#leaderIndex();
    const target = leader >= 0 ? leader : this.#pick(all);
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
        const size = 1 + Math.floor(this.#rng() * Math.floor(count / 2));
        const side = shuffled.slice(0, size);
        for (const a of side) {
          for (const b of all) {
            if (!side.includes(b)) {
              block(a, b);
              block(b, a);
            }
          }
        }
        text = `split {${side.map((i) => this.#nodes[i]!.id)}} | rest`;
        break;
      }
      case "one-way": {
        const pairs = 1 + Math.floor(this.#rng() * count);
        const links: string[] = [];
        for (let i = 0; i < pairs; i++) {
          const a = this.#pick(all);
          const b = this.#pick(all.filter((x) => x !== a));
          block(a, b);
          links.push(`${this.#nodes[a]!.id}-/->${this.#nodes[b]!.id}`);
        }
        text = `one-way ${links.join(" ")}`;
        break;
      }
      case "isolate-leader":
      case "leader-cannot-send":
      case "leader-cannot-hear":
        for (const b of all) {
          if (b === target) continue;
          if (kind !== "leader-cannot-hear") block(target, b);
          if (kind !== "leader-cannot-send") block(b, target);
        }
        text = `${kind} ${this.#nodes[target]!.id}`;
        break;
      case "bridge": {
        // Two sides that cannot talk, and one node that talks to both.
        const shuffled = _shuffle(all, this.#rng);
        const bridge = shuffled[0]!;
        const rest = shuffled.slice(1);
        const left = rest.slice(0, rest.length / 2);
        const right = rest.slice(rest.length / 2);
        for (const a of left) {
          for (const b of right) {
            block(a, b);
            block(b, a);
          }
        }
        text = `bridge ${this.#nodes[bridge]!.id} between {${
          left.map((i) => this.#nodes[i]!.id)
        }} and {${right.map((i) => this.#nodes[i]!.id)}}`;
        break;
      }
    }
    this.#stats.partitions++;
    const id = ++this.#partitionId;
    const duration = this.#random(100, Math.max(200, this.#faults.maxPartitionMs));
    this.#note(`PARTITION ${text} for ${duration.toFixed(0)} ms`);
    this.#at(this.#now + duration, -1, -1, _K.heal, `heal partition ${id}`, () => {
      if (this.#partitionId === id) this.#blocked.clear();
    });
  }

  #crashSome(): void {
    const up = this.#nodes.filter((n) => n.up);
    if (up.length === 0) return;
    const f = this.#faults;
    const restartLater = (n: _Node) => this.#restartLater(n);
    if (this.#rng() < f.powerFailureRate) {
      this.#stats.powerFailures++;
      this.#note("POWER FAILURE of every node");
      for (const n of up) {
        this.#crash(n, "power failure");
        restartLater(n);
      }
      return;
    }
    const leader = this.#leaderIndex();
    const n = leader >= 0 && this.#rng() < 0.4 ? this.#nodes[leader]! : this.#pick(up);
    this.#crash(n, "crash");
    restartLater(n);
  }

  #restartLater(n: _Node): void {
    const downFor = this.#random(20, Math.max(50, this.#faults.maxDowntimeMs));
    this.#at(this.#now + downFor, -1, -1, _K.restart, n.id, () => this.#restart(n));
  }

  #pause(): void {
    const up = this.#nodes.filter((n) => n.up);
    if (up.length === 0) return;
    const leader = this.#leaderIndex();
    const n = leader >= 0 && this.#rng() < 0.5 ? this.#nodes[leader]! : this.#pick(up);
    const until = this.#now + this.#random(50, Math.max(100, this.#faults.maxPauseMs));
    if (until <= n.pausedUntil) return;
    n.pausedUntil = until;
    this.#stats.pauses++;
    this.#note(`PAUSE ${n.id} until ${until.toFixed(0)}`);
    const inc = n.inc;
    this.#at(until, -1, -1, _K.phase, `${n.id} resumes`, () => {
      if (n.inc !== inc || n.pausedUntil !== until) return; // crashed, or paused for longer
      // Everything that arrived meanwhile runs now, in the order it arrived.
      const deferred = n.deferred;
      n.deferred = [];
      for (const ev of deferred) {
        ev.time = this.#now;
        ev.seq = ++this.#seq;
        this.#queue.push(ev);
      }
    });
  }

  // ---- the end: heal, liveness, convergence, linearizability ----------------------------------

  #finalHeal(): void {
    this.#phase = "drain";
    this.#partitionId++;
    this.#blocked.clear();
    this.#note("FINAL HEAL: partitions healed, crashed nodes restart, no new faults or ops");
    for (const n of this.#nodes) this.#restart(n);
    this.#maybeStartFinalReads();
  }

  #maybeStartFinalReads(): void {
    if (this.#phase !== "drain") return;
    if (this.#clients.some((c) => c.op !== null)) return;
    this.#phase = "final";
    const start = this.#now;
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
        call: this.#now,
        deadline: Infinity,
        attempt: 0,
        proposed: false,
        done: false,
      };
      c.op = op;
      this.#attempt(op);
    });
    this.#at(start + this.#livenessMs, -1, -1, _K.phase, "liveness deadline", () => {
      if (this.#phase !== "final") return;
      const missing = this.#clients.filter((c) => c.final && c.op).map((c) => c.op!.key);
      this.#fail(
        "liveness",
        `the final reads of ${missing.join(", ")} did not complete within ${this.#livenessMs} ms ` +
          `after every fault healed (leader: ${
            this.#leaderIndex() >= 0 ? this.#nodes[this.#leaderIndex()]!.id : "none"
          })`,
      );
    });
  }

  #startConvergence(): void {
    this.#phase = "converge";
    const deadline = this.#now + 10_000;
    const poll = () => {
      const c = this.#committed.length - 1;
      const lagging = this.#nodes.filter((n) => !n.up || n.kv.appliedIndex !== c);
      if (lagging.length === 0) {
        const ref = this.#nodes[0]!.kv.data;
        for (const n of this.#nodes) {
          if (!_sameMap(ref, n.kv.data)) {
            this.#fail(
              "convergence",
              `${n.id} and ${this.#nodes[0]!.id} applied up to ${c} but hold different data`,
            );
          }
        }
        this.#note(`CONVERGED at commit ${c}`);
        this.#phase = "done";
        return;
      }
      if (this.#now >= deadline) {
        this.#fail(
          "convergence",
          `${lagging.map((n) => n.id).join(", ")} did not apply up to commit ${c} within 10 s`,
        );
      }
      this.#at(this.#now + 50, -1, -1, _K.phase, "convergence poll", poll);
    };
    poll();
  }

  #checkHistory(): void {
    this.#stats.historyOps = this.#history.length;
    const result = checkLinearizability(this.#history, {
      timeoutMs: this.#opts.linearizabilityTimeoutMs ?? 20_000,
    });
    if (result.ok === "unknown") {
      this.#stats.linearizability = "unknown";
      return;
    }
    if (result.ok) return;
    const acked = [...this.#ackedWrites.entries()]
      .filter(([k]) => k.startsWith(`${result.key}=`))
      .slice(-10)
      .map(([k, v]) => `  ${k} acknowledged by ${v.node} at index ${v.index} term ${v.term}`);
    this.#violation(
      "linearizability",
      `the client history of key ${
        JSON.stringify(result.key)
      } is not linearizable:\n${result.reason}\n` +
        `last acknowledged writes of that key:\n${acked.join("\n")}\nfinal values: ${
          this.#nodes.map((n) => `${n.id}=${JSON.stringify(n.kv.get(result.key))}`).join(" ")
        }\nfull history of the key:\n${describeHistory(result.operations, { maxLines: 60 })}`,
    );
  }
}

// ---- helpers ----------------------------------------------------------------------------------

/**
 * Replays WAL segments the way src/storage/wal.ts does (see the storage README: "Replay and
 * truncation", "Torn tails"): an entry at or below the last index truncates the log there, a reset
 * record empties it, a gap is corruption, a segment's first record must match its name, and only
 * the last segment may end in a torn record.
 */
function _replayWal(segments: _WalSegment[]): _Replay {
  const entries: Entry[] = [];
  let lastIndex = 0;
  let started = false;
  const maxIndex: number[] = [];
  const out = (end: number, lastStart: number, torn: string | null, problem: string | null) => ({
    entries,
    lastIndex,
    end,
    lastStart,
    torn,
    problem,
    maxIndex,
  });
  for (let k = 0; k < segments.length; k++) {
    const seg = segments[k]!;
    const bytes = seg.data.bytes();
    const isLast = k === segments.length - 1;
    let offset = 0;
    let lastStart = -1;
    let max = 0;
    const where = `segment ${k + 1} (first index ${seg.first}) at byte`;
    while (offset < bytes.length) {
      const r = decodeRecord(bytes, offset);
      let index: number;
      if (r.kind === "entry") {
        const e = r.entry;
        index = e.index;
        if (started && index > lastIndex + 1) {
          return out(offset, lastStart, null, `${where} ${offset}: gap at index ${index}`);
        }
        const head = entries[0];
        if (head !== undefined && index <= lastIndex) {
          entries.length = index > head.index ? index - head.index : 0;
        }
        entries.push(e);
        lastIndex = index;
        started = true;
      } else if (r.kind === "reset") {
        index = r.index;
        entries.length = 0;
        lastIndex = index;
        started = true;
      } else {
        if (isLast && _isTornTail(bytes, offset, r)) {
          maxIndex.push(max);
          return out(offset, lastStart, `${where} ${offset}: ${r.reason}`, null);
        }
        return out(offset, lastStart, null, `${where} ${offset}: ${r.reason}`);
      }
      if (offset === 0) {
        const named = r.kind === "reset" ? index + 1 : index;
        if (named !== seg.first) {
          return out(offset, lastStart, null, `${where} 0: its first record starts at ${named}`);
        }
      }
      if (index > max) max = index;
      lastStart = offset;
      offset = r.end;
    }
    maxIndex.push(max);
    if (isLast) return out(offset, lastStart, null, null);
  }
  return out(0, -1, null, null);
}

/** A write job with nothing in it. */
function _newJob(): _WriteJob {
  return {
    install: null,
    entries: [],
    hardState: null,
    messages: [],
    compact: null,
    bytes: null,
    resetBytes: null,
    roll: false,
  };
}

/** The snapshot with the highest index, or null. */
function _newest(snaps: _Snap[]): _Snap | null {
  let best: _Snap | null = null;
  for (const s of snaps) if (best === null || s.meta.index > best.meta.index) best = s;
  return best;
}

function _makeSnap(meta: SnapshotMeta, pairs: [string, string][]): _Snap {
  return {
    meta: { ...meta, voters: [...meta.voters] },
    pairs,
    digest: _stateDigest(pairs),
    bytes: _snapshotBytes(pairs),
  };
}

/** About the size of a snapshot file holding `pairs` (src/storage/snapshot_file.ts layout). */
function _snapshotBytes(pairs: Iterable<[string, string]>): number {
  let bytes = 100;
  for (const [k, v] of pairs) bytes += 8 + k.length + v.length;
  return bytes;
}

/** An order-independent 32-bit digest of a key-value state: the sum of its pairs' hashes. */
function _stateDigest(pairs: Iterable<[string, string]>): number {
  let d = 0;
  for (const [k, v] of pairs) d = (d + _pairHash(k, v)) >>> 0;
  return d;
}

/** The digest after `key` changed from `before` to `after` (undefined: absent). */
function _updateDigest(
  digest: number,
  key: string,
  before: string | undefined,
  after: string | undefined,
): number {
  let d = digest;
  if (before !== undefined) d = (d - _pairHash(key, before)) >>> 0;
  if (after !== undefined) d = (d + _pairHash(key, after)) >>> 0;
  return d;
}

function _pairHash(key: string, value: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ 0xff, 0x01000193);
  for (let i = 0; i < value.length; i++) h = Math.imul(h ^ value.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ (h >>> 15), 0x85ebca6b);
  return (h ^ (h >>> 13)) >>> 0;
}

/**
 * Whether a record that failed to decode at `offset` is a torn write, by the README's rules: a
 * partial header or payload; or zeros from the record's start, or from a 512-byte boundary inside
 * its unverified bytes, to the end of the file.
 */
function _isTornTail(bytes: Uint8Array, offset: number, r: DecodeResult): boolean {
  if (r.kind === "short-header" || r.kind === "short-payload") return true;
  if (r.kind !== "bad-header" && r.kind !== "bad-payload") return false;
  let zeros = bytes.length;
  while (zeros > offset && bytes[zeros - 1] === 0) zeros--;
  if (zeros === offset) return true;
  const unverifiedEnd = r.kind === "bad-header" ? offset + HEADER_SIZE : r.end;
  return Math.ceil(zeros / 512) * 512 < unverifiedEnd;
}

/** A 32-bit hash of a log prefix: the previous prefix's hash and this entry. */
function _chain(prev: number, e: Entry): number {
  let h = Math.imul(prev ^ 0x9e3779b9, 0x85ebca6b) ^ e.term;
  h = Math.imul(h ^ (h >>> 15), 0xc2b2ae35) ^ (e.index + e.type * 0x40000000);
  for (let i = 0; i < e.data.length; i++) h = Math.imul(h ^ e.data[i]!, 0x01000193);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  return (h ^ (h >>> 13)) >>> 0;
}

function _shuffle<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function _sameMap(a: Map<string, string>, b: Map<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

function _formatMessage(m: Message): string {
  let s = `${MessageType[m.type]} ${m.from}->${m.to} t${m.term}`;
  switch (m.type) {
    case MessageType.App:
      s += ` prev(${m.index},t${m.logTerm}) commit ${m.commit}`;
      if (m.entries.length > 0) {
        s += ` +${m.entries.length} [${m.entries[0]!.index}..${m.entries.at(-1)!.index}]`;
      }
      break;
    case MessageType.AppResp:
      s += m.reject ? ` REJECT ${m.index} hint ${m.rejectHint}/t${m.logTerm}` : ` ok ${m.index}`;
      break;
    case MessageType.Vote:
    case MessageType.PreVote:
      s += ` last(${m.index},t${m.logTerm})`;
      break;
    case MessageType.VoteResp:
    case MessageType.PreVoteResp:
      s += m.reject ? " REJECT" : " granted";
      break;
    case MessageType.Heartbeat:
      s += ` commit ${m.commit}${m.context ? ` read ${m.context}` : ""}`;
      break;
    case MessageType.HeartbeatResp:
      s += m.context ? ` read ${m.context}` : "";
      break;
    default:
      break;
  }
  return s;
}
