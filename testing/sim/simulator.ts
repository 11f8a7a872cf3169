/**
 * A deterministic simulation of whole raftkv clusters that runs the REAL node: each node is a
 * {@linkcode RaftNode} (the driver the binary runs) over the real storage and its start-up
 * recovery ({@linkcode openDiskStorage}) on a simulated disk ({@linkcode SimFileSystem}), a
 * simulated clock ({@linkcode SimClock}, seen by each node through a rate-scaled
 * {@linkcode NodeClock}) and a simulated network ({@linkcode SimNetwork}, the real wire format).
 *
 * A run is determined by its options (above all its seed): one seeded PRNG drives every choice,
 * and nothing reads the real clock or touches a real file or socket. The event loop advances the
 * shared clock to the next due timer, fires it, lets every promise settle, and checks the cluster.
 *
 * Faults: message loss, duplication, delay and reordering; symmetric, asymmetric and
 * leader-isolating partitions; crashes that keep only what was synced (or part of the unsynced
 * writes too, possibly torn); whole-cluster power failures; process pauses; clock skew; slow
 * disks; leader transfers requested at random (to a random node, possibly down or cut off, or to
 * the most caught-up one); and, for the guard tests, a {@linkcode DiskFault} at the file-system or storage seam.
 *
 * Checked after every step, from outside (through {@linkcode RaftNode.inspect}, the storage calls
 * and the disk images): the {@linkcode CheckName}s, the applied state (values, revisions and
 * remembered idempotent outcomes) against a reference model fed the committed log
 * (`testing/kv_model.ts`). At the end, after healing everything: liveness, convergence,
 * linearizability of the client history (`src/check/linearizability.ts`), that every range read saw
 * the committed state at the index it reported, and that no write sent with an idempotency key was
 * applied more than once. Clients send requests to removed nodes too (during the run, and about
 * three final reads in ten go to a node that knows it was removed): such a node must refuse them
 * at once ({@linkcode RemovedError}), and a final read it leaves unanswered fails the run
 * ("removed-refusal"); the client then goes to another node. A peer answers a batch from a node
 * its committed and newest configurations leave out "removed" (the real handler's 410, through
 * the node's own `removedAt`), and the sender is told; a node that hears from no leader asks its
 * peers for their committed configuration (the real members query, `queryMembers`). After the
 * final heal, a voter or learner removed while it was down or cut off must know it
 * ("removed-unaware"), no member of the final configuration may count itself removed
 * ("removed-member"), and a member that was away while the final leader joined must catch up
 * ("stale-member").
 *
 * Watchers follow the changes of a key or a prefix (`watchHistory().subscribe`, what
 * `GET /v1/watch` serves), each on a random node, moving to another one when theirs crashes or
 * ends the subscription, and now and then at random (a client whose connection broke), asking
 * from the index after the last change they saw; a `from` older than the node's history starts a
 * new stretch at the oldest index (the client re-reads). Checked at the end: within each stretch a
 * watcher saw every committed change of its keys exactly once, in index order, as the committed
 * log gives them (the `watch` check).
 *
 * Clients put, delete, read (one key, or every key as a range), and compare-and-set (on the
 * `mod_index` they last saw, or as a transaction comparing the value); half the puts and every
 * compare-and-set carry an idempotency key and are sent again, to other nodes, while their outcome
 * is unknown (across crashes and leader changes), recorded as one operation.
 *
 * Lease holders grant leases, attach keys to them (puts in the history like any other), keep
 * some alive for a while and then revoke or abandon them. Every committed revoke or expire entry
 * goes into the history as a delete of each key it removed (from when the entry was first seen in
 * a log to when it was known committed), so reads of expired keys are checked like any other.
 * Checked for every committed expiry: it was not proposed before the last acknowledged keep-alive
 * (or grant) was sent plus the TTL ("lease-early"), nor later than the README's bound: the last
 * renewal that may have reached the leader, or the leader's election, plus the TTL (at least the
 * election timeout), plus a tick ("lease-bound"; clock skew allowed for, leaders that were paused
 * not checked). The lease attachments of every node equal the reference model's at its index.
 * Some grants ask for less than the minimum TTL: each acknowledged grant must have the TTL asked
 * for raised to the minimum, one and a half election timeouts ("lease-ttl"), and the checks
 * above use the TTL granted. Some keys are attached by a transaction whose put names the lease
 * (either branch), and some transactions name a lease just revoked: those must do nothing (a
 * write not applied, in the history) and the lease attachments must still match the model's.
 *
 * @module
 */

import { RaftNode } from "../../src/node/raft_node.ts";
import type { NodeInspection, NodeStorage } from "../../src/node/raft_node.ts";
import { type DiskStorage, openDiskStorage } from "../../src/node/disk_storage.ts";
import { seededRandom } from "../../src/raft/rand.ts";
import {
  decodeConfState,
  type Entry,
  EntryType,
  type HardState,
  type NodeId,
} from "../../src/raft/types.ts";
import { LeaderTransferError, NotLeaderError } from "../../src/raft/errors.ts";
import {
  decodeCommand,
  type KvEntry,
  type KvResult,
  type LeaseRef,
  type PlainCommand,
} from "../../src/kv/state_machine.ts";
import {
  HistoryCompactedError,
  type KvEvent,
  LeaseNotFoundError,
  MembershipError,
  NoSpaceError,
  NotAppliedError,
  NotVoterError,
  OutcomeUnknownError,
  RemovedError,
  StoppingError,
  TransferAbortedError,
  UnknownMemberError,
} from "../../src/node/backend.ts";
import { KvModel } from "../kv_model.ts";
import {
  checkLinearizability,
  describeHistory,
  type Operation,
} from "../../src/check/linearizability.ts";
import { SimClock } from "../sim_clock.ts";
import { SimFileSystem } from "../sim_fs.ts";
import { NodeClock } from "./node_clock.ts";
import { SimNetwork } from "./network.ts";

/**
 * The base of every fault mix: no faults, the fastest network and disk. Rates are probabilities
 * in [0, 1]; times are virtual milliseconds.
 */
export const FAULTS_OFF = {
  /** Time between ticks; the leader heartbeats every tick (the timing, not a fault). */
  tickMs: 10,
  /** Probability that a batch of messages is lost. */ dropRate: 0,
  /** Probability that a batch is delivered twice. */ duplicateRate: 0,
  /** Shortest network delay. */ minDelayMs: 0.5,
  /** Longest ordinary network delay. */ maxDelayMs: 2,
  /** Probability that a batch is held back by up to `slowDelayMs` more (reordering). */
  slowRate: 0,
  /** The longest extra delay of a slow batch. */ slowDelayMs: 0,
  /** Mean time between partitions; 0 disables them. */ partitionEveryMs: 0,
  /** The longest a partition lasts before it heals. */ maxPartitionMs: 0,
  /** Mean time between crashes; 0 disables them. */ crashEveryMs: 0,
  /** The longest a crashed node stays down. */ maxDowntimeMs: 0,
  /** Probability that a crash is a power failure of every node. */ powerFailureRate: 0,
  /**
   * Probability that a crash keeps part of the unsynced writes (in order, the next one possibly
   * torn) and directory changes; otherwise only what was synced survives.
   */
  tornWriteRate: 0,
  /** Mean time between process pauses; 0 disables them. */ pauseEveryMs: 0,
  /** The longest pause. */ maxPauseMs: 0,
  /** Largest deviation of a node's clock rate from real time (0.05 = 5 %). */ clockSkew: 0,
  /** Mean time between leader transfer requests; 0 disables them. */ transferEveryMs: 0,
  /**
   * Mean time between membership changes (add a spare node, remove a member, or replace one:
   * remove, then add); 0 disables them, and the run has no spare nodes.
   */
  memberEveryMs: 0,
  /**
   * Probability that a members query (a node asking a peer for its committed configuration) is
   * answered; the others are lost, like a timeout. 0 turns what the queries fix off, for guard
   * tests: a member away while the leader joined, a learner removed while down.
   */
  membersAnswerRate: 1,
  /** Shortest sync of a file or directory. */ minDiskMs: 0.5,
  /** Longest sync. */ maxDiskMs: 2,
};

/** The fault mix of a run: see {@linkcode FAULTS_OFF} for what each field means. */
export type FaultOptions = typeof FAULTS_OFF;

/** Every {@linkcode DiskFault}, for command-line parsing. */
export const DISK_FAULTS = [
  "ack-before-sync",
  "forget-synced",
  "compact-past-snapshot",
  "install-without-reset",
  "snapshot-live-state",
] as const;

/**
 * A misbehaving disk or storage layer, for the guard tests that prove the checks catch a node that
 * loses acknowledged data; each acts at a seam, the node's code is the real one. `ack-before-sync`:
 * the disk acknowledges syncs without making anything durable. `forget-synced`: a crash loses the
 * last synced write of a WAL segment. `compact-past-snapshot`: the storage compacts the WAL to its
 * last index after each snapshot. `install-without-reset`: it installs a received snapshot without
 * the WAL reset record (the install's commit point). `snapshot-live-state`: it writes the node's
 * live data a few ticks after a snapshot began instead of the copy-on-write view at its index.
 */
export type DiskFault = (typeof DISK_FAULTS)[number];

/** The names of the checks, as {@linkcode SimulationFailure.check} reports them. */
export type CheckName =
  | "election-safety"
  | "log-matching"
  | "leader-completeness"
  | "state-machine-safety" // one entry per committed index; applied data = the reference state
  | "commit-monotonic"
  | "durable-majority" // every committed entry is on disk on a majority
  | "recovery" // a restart gives back everything the storage acknowledged as durable
  | "node-error"
  | "peer-refusal" // every delivered message passes the peer validator and the core takes it
  | "liveness"
  | "convergence"
  | "linearizability"
  | "range-snapshot" // a range read holds the committed state at the index it reported
  | "at-most-once" // a write sent with an idempotency key applied once, its answers agreeing
  | "lease-early" // a lease expired before its last acknowledged keep-alive's send time + TTL
  | "lease-bound" // a lease expired later than the documented bound after it was due
  | "lease-ttl" // a grant's TTL is not the one asked for raised to the minimum (1.5 elections)
  | "watch" // every watcher saw each committed change of its keys once, in index order
  | "disjoint-majorities" // consecutive committed configurations differ by one voter at most
  | "removed-refusal" // a node that knows it was removed refuses a final read at once
  | "removed-member" // no member of the final configuration counts itself removed
  | "removed-unaware" // a voter or learner removed while down knows it after the final heal
  | "stale-member" // a member that does not know the final leader (added while it was away) catches up
  | "runaway";

/** The options of one run. */
export interface SimulationOptions {
  /** The seed every random choice derives from. */ seed: number;
  /** The cluster size. */ nodes: 3 | 5;
  /** Virtual time with clients and faults active, before the final heal. */ durationMs: number;
  /** Overrides of the fault mix. Default: one drawn from the seed ({@linkcode faultProfile}). */
  faults?: Partial<FaultOptions>;
  /** Concurrent clients. Default: the cluster size plus one. */ clients?: number;
  /** Watchers of a key or a prefix. Default: the cluster size minus one. */ watchers?: number;
  /**
   * A misbehaving watcher (guard tests that prove the `watch` check catches it): on reconnect it
   * asks from its last index (`repeat`: sees a change twice) or skips one index (`skip`).
   * Default: none.
   */
  watchFault?: "repeat" | "skip";
  /** Size of the key space. Default 3 (so that clients contend). */ keys?: number;
  /** Ticks without a leader before an election (randomized up to twice that). Default 10. */
  electionTicks?: number;
  /** A client gives up on an operation after this long. Default 3000. */ opTimeoutMs?: number;
  /** After the final heal, the final reads must succeed within this long. Default 20000. */
  livenessMs?: number;
  /** Fraction of client reads sent with the "lease" consistency. Default 0. */
  leaseReads?: number;
  /** Clients that grant leases, attach keys and keep them alive or abandon them. Default 1. */
  leaseHolders?: number;
  /**
   * Applied entries between snapshots (the node's `snapshotThreshold`); 0: no snapshots.
   * Default: drawn from the seed ({@linkcode snapshotDefaults}).
   */
  snapshotThreshold?: number;
  /**
   * Entries kept before a snapshot's index (`snapshotCatchUpEntries`). Default: drawn from the
   * seed, or the threshold (at most 5000) when the options set one.
   */
  catchUpEntries?: number;
  /** A misbehaving disk (guard tests). Default: none. */ diskFault?: DiskFault;
  /** Checks to switch off (guard tests show the others still catch a fault). Default: none. */
  disabledChecks?: CheckName[];
  /** Receives every line of the trace (slow: for replaying one seed). Default: none. */
  onTrace?: (line: string) => void;
  /** Time budget of the final linearizability check in real ms. Default 20000. */
  linearizabilityTimeoutMs?: number;
}

/** The counters of {@linkcode SimulationStats}. */
export const COUNTERS = [
  "events", // steps of the event loop
  "virtualMs",
  "writesOk", // writes acknowledged to clients
  "writesUnknown", // writes whose outcome the client could not learn (unknown return)
  "writesFailed", // writes that definitely did not take effect
  "readsOk", // linearizable reads served, final reads included
  "leaseReadsOk",
  "followerReadsOk", // linearizable or lease reads a follower served (ReadIndex from its leader)
  "readsDropped", // reads given up after a timeout (not recorded)
  "rangeReadsOk", // reads of every key at once, each key recorded as a read
  "casOk", // compare-and-sets that applied (transactions comparing the value included)
  "casFailed", // compare-and-sets whose condition failed (recorded as the read they were)
  "idempotentRetries", // requests sent again with the idempotency key of an unknown outcome
  "idempotentReplays", // answers that replayed a remembered outcome
  "historyOps", // operations in the checked history
  "elections", // terms that had a leader
  "maxTerm",
  "maxCommit",
  "crashes", // node crashes (power failures count once per node)
  "powerFailures",
  "tornWrites", // crashes that left part of an unsynced write on disk, cut inside it
  "partitions",
  "pauses",
  "messagesSent",
  "messagesDropped", // randomly, to a partition or to a down node
  "messagesDuplicated",
  "diskWrites", // log appends and hard-state saves completed
  "snapshotsTaken", // snapshots a node wrote of its own state
  "snapshotsSent", // transfers a leader started
  "snapshotSendsFailed",
  "snapshotsReceived", // snapshots a follower received and stored
  "snapshotsInstalled",
  "snapshotRestarts", // restarts that loaded a snapshot
  "transfers", // leader transfers a leader started
  "transfersDone", // ... that ended with another node leading
  "transfersAborted", // ... abandoned (the target did not take over in time) or given up on
  "leasesGranted", // grants acknowledged to lease holders
  "leasesRaised", // ... asked below the minimum TTL and granted the minimum
  "leaseTxnPuts", // transactions whose put attached its key to a lease, acknowledged
  "leaseTxnRefused", // ... that named a lease gone (revoked or expired) and did nothing
  "leaseKeepAlives", // keep-alives acknowledged
  "leasesRevoked", // leases ended by a committed revoke entry
  "leasesExpired", // leases ended by a committed expire entry
  "leaseBoundChecks", // expiries checked against the upper bound (a paused leader's are not)
  "watchEvents", // change events watchers received
  "watchReconnects", // watchers that moved to another node (after a crash, or at random)
  "watchResyncs", // reconnects refused because the history no longer held the index (410)
  "memberAdds", // membership changes that added a node (as a learner), as applied
  "memberRemoves", // ... that removed a member (the leader included)
  "promotions", // learners the leader promoted to voter (committed configurations)
  "memberChangesRefused", // changes refused (another in progress, no leader, ...)
  "staleMembers", // members that did not know the final leader when convergence began (each must catch up)
  "membersQueries", // members queries a node sent (asking a peer for its committed configuration)
  "removedRefusals", // client requests (reads, writes, lease calls) a removed node refused
  "removedFinalReads", // final reads sent to a node that knew it was removed: each refused
  "removedWatchRefusals", // watches a removed node refused (the watcher moved on)
  "removedAnswers", // peer batches answered "removed" (the sender is outside the committed configuration)
] as const;

/** Counters describing a run; `linearizability` is "unknown" when its time budget ran out. */
export type SimulationStats =
  & Record<(typeof COUNTERS)[number], number>
  & { linearizability: "ok" | "unknown" };

/** The outcome of a run that passed every check. */
export interface SimulationResult {
  /** The name of the fault mix ("+overrides" when the options changed it). */ profile: string;
  /** The fault mix used. */ faults: FaultOptions;
  /** The snapshot threshold used (0: no snapshots). */ snapshotThreshold: number;
  /** The catch-up entries used. */ catchUpEntries: number;
  /** Counters. */ stats: SimulationStats;
  /** A hash of the run's trace and history: equal digests mean identical runs. */ digest: string;
}

/** A run broke a check. The message starts with the seed and holds the replay command. */
export class SimulationFailure extends Error {
  /** Creates the failure; the message says the seed, the check, the detail and the trace tail. */
  constructor(
    /** The seed of the failing run. */ readonly seed: number,
    /** The check that failed. */ readonly check: CheckName,
    detail: string,
    /** One shell command replaying the run with its full trace. */ readonly replay: string,
    /** The last lines of the trace before the failure. */ readonly trace: string[],
  ) {
    super(
      `seed ${seed}: ${check} violated: ${detail}\nreplay: ${replay}\n` +
        `last ${trace.length} events:\n${trace.join("\n")}`,
    );
    this.name = "SimulationFailure";
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
    ...FAULTS_OFF,
    tickMs,
    maxDelayMs: between(2, 15),
    clockSkew: between(0, 0.02),
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
  let pick = r() * table.reduce((sum, [, weight]) => sum + weight, 0);
  const [name, , make] = table.find(([, weight]) => (pick -= weight) < 0)!;
  // Drawn last, so that the draws above are what they were before transfers existed.
  const transferEveryMs = r() < 0.6 ? between(1, 6) * election : 0;
  // Drawn after that, for the same reason: membership changes in half the runs.
  const memberEveryMs = r() < 0.5 ? between(1, 4) * election : 0;
  return { name, faults: { ...calm, ...make(), transferEveryMs, memberEveryMs } };
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
  return { snapshotThreshold, catchUpEntries: [0, 5, snapshotThreshold][Math.floor(r() * 3)]! };
}

/** The default virtual duration of a run, as used by the soak script. */
export const DEFAULT_DURATION_MS = 20_000;

/** The cluster size used for `seed` when sizes are mixed: 3 for 60 % of the seeds, else 5. */
export function nodesForSeed(seed: number): 3 | 5 {
  return seed % 5 < 3 ? 3 : 5;
}

/** The one-line shell command replaying a run with these options (and printing its trace). */
export function replayCommand(o: SimulationOptions): string {
  const flags: [string, unknown][] = [
    ["seed", o.seed],
    ["nodes", o.nodes],
    ["duration-ms", o.durationMs],
    ["faults", Object.keys(o.faults ?? {}).length ? `'${JSON.stringify(o.faults)}'` : undefined],
    ["clients", o.clients],
    ["keys", o.keys],
    ["lease-reads", o.leaseReads],
    ["lease-holders", o.leaseHolders],
    ["snapshot-threshold", o.snapshotThreshold],
    ["catch-up-entries", o.catchUpEntries],
    ["disk-fault", o.diskFault],
    ["watchers", o.watchers],
    ["watch-fault", o.watchFault],
    ["disable", o.disabledChecks?.join(",") || undefined],
  ];
  const set = flags.filter(([, v]) => v !== undefined).map(([name, v]) => `--${name} ${v}`);
  return ["deno run -A scripts/soak.ts", ...set].join(" ");
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

/** What the simulation knows about one node, across its incarnations. */
class _Node {
  /** The running incarnation and its clock; null while down (the node also while starting). */
  node: RaftNode | null = null;
  clock: NodeClock | null = null;
  /** Counts incarnations; anything from an older one is ignored. */
  inc = 0;
  starting = false;
  /** The highest commit index and the applied index this incarnation reported. */
  lastCommit = 0;
  lastApplied = 0;
  /** Terms of the entries last seen in its log, by index (for log matching). */
  seen = [0];
  /**
   * What the storage told the node is durable: the term of each log entry, the snapshot index
   * and the hard state. A crash must keep all of it (see `#checkRecovered`).
   */
  durable = [0];
  durableSnap = 0;
  durableHs: HardState = { term: 0, vote: "", commit: 0 };
  /** The first index an append or install in flight may change (Infinity when none). */
  writingFrom = Infinity;
  /** The same, frozen at a crash: the lowest over the crashes since the last recovery check. */
  crashWritingFrom = Infinity;
  /** The shared time this incarnation's clock started at (its wall clock counts from there). */
  wallBase = 0;
  /** A spare node: not in the bootstrap configuration; it starts with --join when added. */
  spare = false;
  /** Whether a membership change ever asked to add it (a spare never added never starts). */
  added = false;

  /** A node that has not started yet, with an empty disk (replaced by its image at a crash). */
  constructor(readonly id: NodeId, public fs: SimFileSystem) {}
}

/**
 * A client: its id, the index of the node it believes leads (-1: none), whether it reads last,
 * and what it last saw of each key (its mod_index and value; absent: 0 and null).
 */
type _Client = {
  id: number;
  hint: number;
  final: boolean;
  seen?: Map<string, { modIndex: number; value: string | null }>;
};

interface _ClientOp extends Omit<Operation, "client" | "return"> {
  client: _Client;
  lease: boolean;
  /** Aborted when the operation ends: every call still waiting on a node gives up. */
  abort: AbortController;
  /** A compare-and-set's form: on the `mod_index` (a put with `cas`), or a transaction. */
  casForm?: { modIndex: number } | { txn: true };
  /** The idempotency key a write is sent with (again, while its outcome is unknown). */
  idem?: string;
  /** A read of every key at once. */
  range?: boolean;
  /** The lease a put attaches its key to. */
  leaseRef?: LeaseRef;
  /**
   * Sent as a transaction whose put names the lease (`leaseRef`, an id): `exists` on the key
   * decides the branch, and both branches put the value with the lease.
   */
  txnLease?: { exists: boolean };
}

/** What a lease holder knows of a lease it was granted (times on the shared clock). */
interface _LeaseInfo {
  ttlMs: number;
  /** When the last acknowledged grant or keep-alive was sent. */
  lastAckedSend: number;
  /** After this no grant or keep-alive request can reach a node (its attempt was aborted). */
  lastAttemptEnd: number;
}

/** What a lease call got. */
type _LeaseAnswer<T> = { kind: "answered"; value: T } | { kind: "notFound" };

/**
 * A watcher: what it watches, the node it follows (and that node's incarnation), the first index
 * it has not seen yet, the events it received, and where each stretch without a gap began (a new
 * one after a 410).
 */
type _Watcher = {
  id: number;
  filter: { key: string } | { prefix: string };
  node: _Node | null;
  inc: number;
  stop: () => void;
  next: number | null;
  events: KvEvent[];
  stretches: { from: number; firstEvent: number }[];
  /** When it next looks at its connection (virtual ms). */
  dueAt: number;
};

type _Committed = { term: number; hash: number; data: Uint8Array | null; knownIn: number };

type _Outcome =
  | { kind: "ok"; index: number; modIndex: number; replayed: boolean }
  /** A compare-and-set whose condition failed, and what it found. */
  | { kind: "casFailed"; index: number; current: KvEntry | null; replayed: boolean }
  | { kind: "value"; value: string | null; entry: KvEntry | null }
  | { kind: "range"; entries: KvEntry[]; index: number }
  | { kind: "notApplied" }
  | { kind: "unknown" }
  | { kind: "refused" }
  /** A removed node's refusal: the client goes to another node. */
  | { kind: "removed" }
  | { kind: "notLeader"; leader: NodeId };

class _Simulation {
  readonly #opts: SimulationOptions;
  readonly #faults: FaultOptions;
  readonly #profile: string;
  readonly #rng: () => number;
  readonly #keys: string[];
  readonly #disabled: Set<CheckName>;
  readonly #snapshotThreshold: number;
  readonly #catchUpEntries: number;
  readonly #segmentSize: number;
  readonly #clock = new SimClock();
  readonly #stats = {
    ...Object.fromEntries(COUNTERS.map((k) => [k, 0])),
    linearizability: "ok",
  } as SimulationStats;
  #network!: SimNetwork;
  #nodes: _Node[] = [];
  /** The clients still running, plus one until the final heal. */
  #active = 1;
  #history: Operation[] = [];
  /** Acknowledged writes ("key=value") -> the node and the index it gave, for failure messages. */
  #acked = new Map<string, string>();
  #partitionId = 0;
  #phase: "run" | "drain" | "final" | "converge" | "done" = "run";
  #failure: SimulationFailure | null = null;
  #trace: string[] = [];
  #digest = 0x811c9dc5;

  /** term -> id of its leader. */
  #leaders = new Map<number, NodeId>();
  /** The committed configurations: (index, voters), the bootstrap one first. */
  #confs: { index: number; voters: string[] }[] = [];
  /** A membership change the simulation asked for is in progress. */
  #memberBusy = false;
  /** Members left out of the convergence check because they do not know the leader. */
  #staleNoted = new Set<NodeId>();
  /** (index, term) -> hash of the entry, as first seen in any log. */
  #entryHash = new Map<number, number>();
  /**
   * The committed entries by index as first seen (holes where no node showed one yet), with the
   * term in which each was first known committed.
   */
  #committed: (_Committed | undefined)[] = [{ term: 0, hash: 0, data: null, knownIn: 0 }];
  #maxCommit = 0;
  /** The reference state: the model after applying the committed entries up to `#refIndex`. */
  #ref = new KvModel();
  #refIndex = 0;
  /** Range reads to check once the reference reaches their index: the index and the state seen. */
  #rangeReads: { index: number; state: string; what: string }[] = [];
  /** Every idempotency key clients sent, with the indexes their definite answers named. */
  #idemAnswers = new Map<string, Set<number>>();
  /** {@linkcode _Simulation.#state} of the reference state after each index. */
  #refStates: string[] = [];
  /** {@linkcode _Simulation.#leaseState} of the reference state after each index. */
  #refLeaseStates: string[] = [];
  /** When each (index, term) was first seen in a log (key: index * 2^20 + term). */
  #firstSeen = new Map<number, number>();
  /** When each term's leader was first seen leading. */
  #leaderSince = new Map<number, number>();
  /** When an entry of each term was first known committed (its leader then applies the log). */
  #termCommitted = new Map<number, number>();
  /** The pauses of each node: [start, end] on the shared clock. */
  #pausesOf = new Map<NodeId, [number, number][]>();
  /** The leases lease holders were granted, by id. */
  #leaseInfo = new Map<number, _LeaseInfo>();
  /** Client ids of the deletes recorded for revoke and expire entries (one each). */
  #endClient = 1_000_000;
  /** The changes each committed index made to the reference state, in key order. */
  #refChanges: { type: string; k: string; v: string | null }[][] = [[]];
  #watchers: _Watcher[] = [];
  /** The watchers' own random source, so that they change none of the other draws. */
  readonly #watchRng: () => number;
  /** The nodes' `watchHistoryEvents`. */
  readonly #watchHistory: number;

  constructor(opts: SimulationOptions) {
    if (opts.nodes !== 3 && opts.nodes !== 5) {
      throw new RangeError(`nodes must be 3 or 5, got ${opts.nodes}`);
    }
    if (!Number.isSafeInteger(opts.seed)) throw new RangeError(`bad seed ${opts.seed}`);
    this.#opts = opts;
    const profile = faultProfile(opts.seed);
    const overridden = Object.keys(opts.faults ?? {}).length > 0;
    this.#profile = overridden ? `${profile.name}+overrides` : profile.name;
    this.#faults = { ...profile.faults, ...opts.faults };
    this.#rng = seededRandom(opts.seed);
    this.#watchRng = seededRandom((opts.seed ^ 0x3c6ef372) >>> 0);
    // Half the runs keep a short change history, so that watchers fall out of it (410).
    this.#watchHistory = this.#watchRng() < 0.5 ? 10_000 : 10 + Math.floor(this.#watchRng() * 90);
    this.#keys = Array.from({ length: opts.keys ?? 3 }, (_, i) => `k${i}`);
    this.#refStates[0] = this.#state(() => null, 0);
    this.#refLeaseStates[0] = this.#leaseState(() => null, 0);
    this.#disabled = new Set(opts.disabledChecks ?? []);
    const snap = snapshotDefaults(opts.seed);
    this.#snapshotThreshold = opts.snapshotThreshold ?? snap.snapshotThreshold;
    this.#catchUpEntries = opts.catchUpEntries ??
      (opts.snapshotThreshold === undefined
        ? snap.catchUpEntries
        : Math.min(5000, this.#snapshotThreshold));
    for (const v of [this.#snapshotThreshold, this.#catchUpEntries]) {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`bad snapshot setting ${v}`);
    }
    // Small segments, so that rolling, compaction and multi-segment replay all happen.
    this.#segmentSize = this.#pick([2048, 8192, 65536]);
  }

  async run(): Promise<SimulationResult> {
    // Resolving `settle()` takes a macrotask round trip: every microtask queued so far has run.
    const channel = new MessageChannel();
    let wake = () => {};
    channel.port1.onmessage = () => wake();
    const settle = () =>
      new Promise<void>((resolve) => {
        wake = resolve;
        channel.port2.postMessage(null);
      });
    try {
      const ids = Array.from({ length: this.#opts.nodes }, (_, i) => `n${i + 1}`);
      this.#confs = [{ index: 0, voters: [...ids] }];
      // With membership changes, two spare nodes that can be added (they start with --join).
      const spares = this.#faults.memberEveryMs > 0
        ? [`n${this.#opts.nodes + 1}`, `n${this.#opts.nodes + 2}`]
        : [];
      this.#network = new SimNetwork({
        faults: this.#faults,
        stats: this.#stats,
        random: this.#rng,
        later: (ms, fn) => this.#later(ms, fn),
        note: (text) => this.#note(text),
        refused: (detail) => {
          // A node outside the receiver's configuration (removed, or added after it) is refused
          // as a non-member: with membership changes that is expected, like a lost message.
          if (spares.length > 0 && /the sender is not a member/.test(detail)) return;
          this.#violation("peer-refusal", detail);
        },
      }, [...ids, ...spares]);
      this.#nodes = [...ids, ...spares].map((id) => this.#newNode(id));
      for (const n of this.#nodes) n.spare = spares.includes(n.id);
      for (const n of this.#nodes) if (!n.spare) this.#restart(n);
      const clients = this.#opts.clients ?? this.#opts.nodes + 1;
      for (let id = 1; id <= clients; id++, this.#active++) {
        this.#client({ id, hint: -1, final: false }).catch((e) => this.#caught(e, ` in c${id}`));
      }
      for (let i = 1; i <= (this.#opts.leaseHolders ?? 1); i++, this.#active++) {
        const id = clients + i;
        this.#leaseClient({ id, hint: -1, final: false })
          .catch((e) => this.#caught(e, ` in c${id}`));
      }
      const f = this.#faults;
      for (let id = 1; id <= (this.#opts.watchers ?? this.#opts.nodes - 1); id++) {
        this.#startWatcher(id);
      }
      this.#every(f.partitionEveryMs, () => this.#partition());
      this.#every(f.crashEveryMs, () => this.#crashSome());
      this.#every(f.pauseEveryMs, () => this.#pause());
      this.#every(f.transferEveryMs, () => this.#transfer());
      this.#every(f.memberEveryMs, () => this.#memberChange());
      this.#later(this.#opts.durationMs, () => this.#finalHeal());

      const maxEvents = 200_000 + this.#opts.durationMs * 400;
      await settle();
      while (this.#phase !== "done") {
        const due = this.#clock.nextDue();
        if (due === null) this.#fail("runaway", "no timer is set: the simulation stalled");
        this.#mix(Math.floor(due * 1000));
        try {
          this.#clock.runUntil(due);
        } catch (e) {
          this.#caught(e, "");
        }
        await settle();
        if (this.#failure) throw this.#failure;
        for (const n of this.#nodes) this.#check(n);
        this.#tendWatchers();
        if (++this.#stats.events > maxEvents) this.#fail("runaway", `over ${maxEvents} steps`);
      }
      this.#stats.virtualMs = Math.round(this.#clock.now());
      this.#checkWatchers();
      this.#checkHistory();
      return {
        profile: this.#profile,
        faults: this.#faults,
        snapshotThreshold: this.#snapshotThreshold,
        catchUpEntries: this.#catchUpEntries,
        stats: this.#stats,
        digest: (this.#digest >>> 0).toString(16).padStart(8, "0"),
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
    if (this.#trace.push(line) > 60) this.#trace.shift();
    this.#opts.onTrace?.(line);
  }

  #fail(check: CheckName, detail: string): never {
    if (this.#failure) throw this.#failure;
    const state = this.#nodes.map((n) => {
      const durable = `durable log ${n.durable.length - 1}, snapshot ${n.durableSnap}`;
      if (!n.node) return `  ${n.id}: ${n.starting ? "starting" : "down"} (${durable})`;
      const s = n.node.inspect();
      const paused = n.clock?.paused ? " paused" : "";
      return `  ${n.id}: ${s.role} term ${s.term} leader ${s.leader || "-"} log ` +
        `${s.firstIndex}..${s.lastIndex} commit ${s.commit} applied ${s.applied} (${durable})${paused}`;
    });
    const at = `at virtual time ${this.#clock.now().toFixed(3)} ms (profile ${this.#profile})`;
    this.#failure = new SimulationFailure(
      this.#opts.seed,
      check,
      `${detail}\n${at}; nodes:\n${state.join("\n")}`,
      replayCommand(this.#opts),
      [...this.#trace],
    );
    throw this.#failure;
  }

  #violation(check: CheckName, detail: string): void {
    if (!this.#disabled.has(check)) this.#fail(check, detail);
  }

  /** Records an error raised where nobody awaits it (a node's callback or promise). */
  #caught(e: unknown, where: string): void {
    if (e instanceof SimulationFailure) return;
    try {
      this.#fail("node-error", `unexpected error${where}: ${(e as Error)?.stack ?? e}`);
    } catch {
      // Recorded; the event loop throws it.
    }
  }

  // ---- nodes: start, crash, restart -----------------------------------------------------------

  #newNode(id: NodeId): _Node {
    const n: _Node = new _Node(id, new SimFileSystem({ delay: (op) => this.#diskDelay(n, op) }));
    n.fs.faults.ackBeforeSync = this.#opts.diskFault === "ack-before-sync";
    if (this.#opts.diskFault === "forget-synced") {
      n.fs.faults.forgetLastSynced = (path) => path.endsWith(".wal");
    }
    return n;
  }

  /** Syncs take a disk delay on the node's clock (so a paused node's disk waits too). */
  #diskDelay(n: _Node, op: string): Promise<void> | void {
    const clock = n.clock;
    if ((op !== "sync" && op !== "syncDir") || !clock) return;
    const ms = this.#random(this.#faults.minDiskMs, this.#faults.maxDiskMs);
    return new Promise((resolve) => clock.schedule(ms, resolve));
  }

  #restart(n: _Node): void {
    if (n.node || n.starting) return;
    n.starting = true;
    const inc = ++n.inc;
    const skew = this.#faults.clockSkew;
    const clock = new NodeClock(this.#clock, 1 + this.#random(-skew, skew), (e) => {
      this.#caught(e, ` on ${n.id}`);
    });
    n.clock = clock;
    n.wallBase = this.#clock.now();
    const seed = Math.floor(this.#rng() * 2 ** 32);
    this.#note(`${n.id} starts (incarnation ${inc})`);
    this.#open(n, inc, clock, seed).catch((e) => this.#caught(e, ` starting ${n.id}`));
  }

  async #open(n: _Node, inc: number, clock: NodeClock, seed: number): Promise<void> {
    const paths = {
      walDir: "/data/wal",
      raftStatePath: "/data/raft_state.json",
      logMetadataPath: "/data/log_metadata.json",
      snapshotDir: "/data/snapshots",
    };
    let inner;
    try {
      inner = await openDiskStorage(paths, { fs: n.fs, segmentSize: this.#segmentSize });
    } catch (e) {
      if (n.inc !== inc) return; // crashed again while recovering
      // Seen from outside, a node that refuses to start is a node that never comes back: with the
      // internal recovery check disabled, it is reported as the liveness failure a user would see.
      const check = this.#disabled.has("recovery") ? "liveness" : "recovery";
      this.#fail(check, `${n.id} cannot start: ${(e as Error)?.message ?? e}`);
    }
    if (n.inc !== inc) return;
    this.#checkRecovered(n, inner);
    const log = (level: string) => (...args: unknown[]) => {
      if (n.inc !== inc) return;
      this.#note(`${n.id} ${level}: ${args.map((a) => (a as Error)?.message ?? a).join(" ")}`);
    };
    const { tickMs } = this.#faults;
    const node = new RaftNode({
      id: n.id,
      // The bootstrap configuration; a spare has none: it joins (and never bootstraps).
      members: this.#nodes.filter((m) => n.spare ? m === n : !m.spare)
        .map((m) => ({ id: m.id, rpcUrl: `sim://${m.id}`, apiUrl: m.id })),
      join: n.spare,
      storage: this.#watchStorage(n, inc, clock, inner),
      transport: (handlers) => this.#network.connect(n.id, clock, handlers),
      clock,
      heartbeatMs: tickMs,
      electionTimeoutMs: tickMs * (this.#opts.electionTicks ?? 10),
      seed,
      snapshotThreshold: this.#snapshotThreshold || Number.MAX_SAFE_INTEGER,
      snapshotThresholdBytes: Number.MAX_SAFE_INTEGER,
      snapshotCatchUpEntries: this.#catchUpEntries,
      // The leader's wall clock, stamped into idempotent writes: the node's own (skewed) clock.
      wallClock: () => _WALL_CLOCK_ORIGIN + n.wallBase + clock.now(),
      // Short enough that outcomes expire within a run, long enough for every retry.
      idempotencyTtlMs: 10_000,
      maxIdempotencyKeys: 1000,
      watchHistoryEvents: this.#watchHistory,
      onFatal: (e) => {
        if (n.inc === inc) this.#caught(e, ` (fatal) on ${n.id}`);
      },
      logger: { info: log("info"), warn: log("warn"), error: log("error"), debug: () => {} },
    });
    [n.node, n.starting, n.lastCommit, n.lastApplied, n.seen] = [node, false, 0, -1, [0]];
    node.start();
  }

  /** The recovered state must hold everything the node was told was durable before it crashed. */
  #checkRecovered(n: _Node, rec: NodeStorage): void {
    const snapIndex = rec.snapshot?.index ?? 0;
    if (snapIndex > 0) this.#stats.snapshotRestarts++;
    const terms: number[] = [0];
    for (const e of rec.entries) terms[e.index] = e.term;
    // The entries an append in flight at the crash may have changed are not owed.
    const owed = Math.min(n.durable.length - 1, n.crashWritingFrom - 1);
    for (let i = Math.max(1, snapIndex + 1, n.durableSnap + 1); i <= owed; i++) {
      const want = n.durable[i];
      if (want === undefined || terms[i] === want) continue;
      const found = terms[i] === undefined ? "nothing" : `term ${terms[i]}`;
      this.#violation(
        "recovery",
        `${n.id} lost entry ${i} (term ${want}) that its storage had acknowledged: after the ` +
          `restart its log holds ${found} there (snapshot ${snapIndex}, log to ${
            rec.entries.at(-1)?.index ?? snapIndex
          })`,
      );
    }
    if (snapIndex < Math.min(n.durableSnap, n.crashWritingFrom - 1)) {
      this.#violation(
        "recovery",
        `${n.id} restarted from the snapshot at ${snapIndex} but had stored one at ${n.durableSnap}`,
      );
    }
    const [hs, was] = [rec.hardState, n.durableHs];
    if (hs.term < was.term || (hs.term === was.term && was.vote !== "" && hs.vote !== was.vote)) {
      this.#violation(
        "recovery",
        `${n.id} restarted with term ${hs.term} vote "${hs.vote}" but had stored term ${was.term} ` +
          `vote "${was.vote}"`,
      );
    }
    n.durable = terms;
    for (let i = 1; i <= snapIndex; i++) n.durable[i] ??= -1;
    [n.durableSnap, n.durableHs] = [snapIndex, { ...hs }];
    n.writingFrom = n.crashWritingFrom = Infinity;
  }

  /**
   * The storage as the node sees it: the real one, with the calls that make something durable
   * reporting it when they complete (and the storage-seam {@linkcode DiskFault}s injected).
   */
  #watchStorage(n: _Node, inc: number, clock: NodeClock, inner: DiskStorage): NodeStorage {
    const live = () => n.inc === inc;
    const fault = this.#opts.diskFault;
    if (fault === "install-without-reset") {
      // Only an install writes a reset record once the storage is open (start-up's repair of a
      // log behind its snapshot already ran), so this drops exactly the install's commit point.
      inner.wal.reset = () => Promise.resolve();
    }
    const overrides: Partial<NodeStorage> = {
      saveSnapshot: async (meta, count, pairs) => {
        if (fault !== "snapshot-live-state") return inner.saveSnapshot(meta, count, pairs);
        // Let the node apply more entries (up to 10 ticks), then write its live data instead.
        for (let i = 0; i < 10 && (n.node?.inspect().applied ?? 0) <= meta.index; i++) {
          await new Promise<void>((resolve) => clock.schedule(this.#faults.tickMs, resolve));
        }
        if (!live() || !n.node) return;
        const leaky = [...n.node.inspect().entries()];
        const leases = pairs.leases ?? [];
        await inner.saveSnapshot(meta, leaky.length, { entries: leaky, sessions: [], leases });
      },
      append: async (entries) => {
        const from = entries[0]?.index ?? Infinity;
        n.writingFrom = Math.min(n.writingFrom, from);
        await inner.append(entries);
        if (!live()) return;
        n.writingFrom = Infinity;
        if (entries.length > 0) n.durable.length = Math.min(n.durable.length, from);
        for (const e of entries) n.durable[e.index] = e.term;
        this.#stats.diskWrites++;
      },
      saveHardState: async (hs) => {
        await inner.saveHardState(hs);
        if (!live()) return;
        n.durableHs = { ...hs };
        this.#stats.diskWrites++;
      },
      snapshotTaken: async (meta, compactTo) => {
        await inner.snapshotTaken(meta, compactTo);
        if (fault === "compact-past-snapshot") await inner.wal.compact(inner.wal.lastIndex);
        if (!live()) return;
        n.durableSnap = Math.max(n.durableSnap, meta.index);
        this.#stats.snapshotsTaken++;
      },
      installReceived: async (meta) => {
        n.writingFrom = 0;
        await inner.installReceived(meta);
        if (!live()) return;
        n.writingFrom = Infinity;
        n.durable = Array.from({ length: meta.index + 1 }, (_, i) => i === 0 ? 0 : -1);
        n.durableSnap = meta.index;
        this.#stats.snapshotsInstalled++;
      },
    };
    return new Proxy(inner, {
      get: (target, prop) => {
        const value = (overrides as Record<PropertyKey, unknown>)[prop] ??
          Reflect.get(target, prop);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  }

  #crash(n: _Node, why: string): void {
    if (!n.node && !n.starting) return;
    n.clock?.kill();
    [n.clock, n.node, n.starting] = [null, null, false];
    n.inc++;
    // A crash while starting (before the recovery check ran) must not forget a write that was
    // in flight at an earlier crash: its bytes may still be in the disk image.
    n.crashWritingFrom = Math.min(n.crashWritingFrom, n.writingFrom);
    n.writingFrom = Infinity;
    this.#stats.crashes++;
    const keep = this.#rng() < this.#faults.tornWriteRate;
    const keepUnsyncedEntries = keep && this.#rng() < 0.5;
    n.fs = n.fs.crash(keep ? this.#rng : undefined, { keepUnsyncedEntries });
    const notes = n.fs.crashNotes;
    if (notes.some((t) => t.includes("of the next write"))) this.#stats.tornWrites++;
    this.#note(`CRASH ${n.id} (${why})${notes.length ? `: ${notes.join("; ")}` : ""}`);
  }

  // ---- invariants -----------------------------------------------------------------------------

  /** Checks one node's state after a step. */
  #check(n: _Node): void {
    if (!n.node) return;
    const s = n.node.inspect();
    this.#stats.maxTerm = Math.max(this.#stats.maxTerm, s.term);
    this.#checkLog(n, s);
    if (s.commit < n.lastCommit) {
      this.#violation(
        "commit-monotonic",
        `${n.id}: commit index went back from ${n.lastCommit} to ${s.commit}`,
      );
    } else if (s.commit > n.lastCommit) {
      this.#learnCommitted(n, s, n.lastCommit + 1, s.commit);
      n.lastCommit = s.commit;
    }
    const leader = this.#leaders.get(s.term);
    if (s.role === "leader" && leader === undefined) {
      this.#leaders.set(s.term, n.id);
      this.#leaderSince.set(s.term, this.#clock.now());
      this.#stats.elections++;
      this.#note(`${n.id} leads term ${s.term}`);
      this.#checkLeaderCompleteness(n, s);
    } else if (s.role === "leader" && leader !== n.id) {
      this.#violation("election-safety", `two leaders in term ${s.term}: ${leader} and ${n.id}`);
    }
    if (s.applied !== n.lastApplied) {
      n.lastApplied = s.applied;
      this.#checkApplied(n, s);
    }
  }

  /** Every (index, term) holds one entry in every log (log matching, entry by entry). */
  #checkLog(n: _Node, s: NodeInspection): void {
    for (let i = s.lastIndex; i >= s.firstIndex; i--) {
      const e = s.entry(i)!;
      if (n.seen[i] === e.term) break;
      n.seen[i] = e.term;
      const [key, h] = [i * 1_048_576 + e.term, _hash(e)];
      const known = this.#entryHash.get(key);
      if (!this.#firstSeen.has(key)) this.#firstSeen.set(key, this.#clock.now());
      if (known === undefined) this.#entryHash.set(key, h);
      else if (known !== h) {
        this.#violation(
          "log-matching",
          `${n.id} holds an entry at index ${i} term ${e.term} that differs from another node's`,
        );
      }
    }
    n.seen.length = s.lastIndex + 1;
  }

  /** The node knows entries `from..to` are committed: compare with (or extend) the record. */
  #learnCommitted(n: _Node, s: NodeInspection, from: number, to: number): void {
    for (let i = Math.max(from, s.firstIndex); i <= to; i++) {
      const e = s.entry(i);
      if (e === undefined) {
        this.#fail("log-matching", `${n.id}: commit ${to} is past its last index ${s.lastIndex}`);
      }
      const known = this.#committed[i];
      const data = e.type === EntryType.Normal ? e.data : null;
      if (!this.#termCommitted.has(e.term)) this.#termCommitted.set(e.term, this.#clock.now());
      if (!known && e.type === EntryType.ConfChange) this.#learnConf(n, i, e);
      if (!known) this.#committed[i] = { term: e.term, hash: _hash(e), data, knownIn: s.term };
      else if (known.term !== e.term || known.hash !== _hash(e)) {
        this.#violation(
          "state-machine-safety",
          `${n.id} holds as committed an entry at index ${i} (term ${e.term}) that differs from ` +
            `the entry committed there before (term ${known.term})`,
        );
      }
    }
    if (to <= this.#maxCommit) return;
    this.#maxCommit = this.#stats.maxCommit = to;
    // Apply newly known committed entries to the reference state.
    for (let c; (c = this.#committed[this.#refIndex + 1]); this.#refIndex++) {
      const i = this.#refIndex + 1;
      const before = this.#keys.map((k) => this.#ref.data.get(k) ?? null);
      let ended = false;
      if (c.data) {
        const cmd = decodeCommand(c.data);
        const result = this.#ref.apply(i, cmd);
        if (result.op === "lease_revoke" && cmd.op === "lease_revoke") {
          this.#leaseEnded(i, c.term, result, cmd.reason);
          ended = true;
        }
      }
      // A key whose lease ended (revoked or expired) goes as an `expire` change.
      const gone = ended ? "expire" : "delete";
      this.#refChanges[i] = this.#keys.flatMap(
        (k, j): { type: string; k: string; v: string | null }[] => {
          const [was, now] = [before[j], this.#ref.data.get(k) ?? null];
          if (now !== null && now.modIndex !== was?.modIndex) {
            return [{ type: "put", k, v: now.value }];
          }
          return now === null && was !== null ? [{ type: gone, k, v: null }] : [];
        },
      );
      this.#refStates[i] = this.#state(
        (k) => this.#ref.data.get(k) ?? null,
        this.#ref.rememberedIds().length,
      );
      this.#refLeaseStates[i] = this.#leaseState(
        (k) => this.#ref.keyLease.get(k) ?? null,
        this.#ref.leases.size,
      );
    }
    this.#checkDurableMajority(`when ${n.id} learned commit ${to}`, to);
  }

  /**
   * Every key's value and revision, and how many idempotent outcomes are remembered, as a string
   * to compare.
   */
  #state(entry: (key: string) => KvEntry | null, remembered: number | null): string {
    const keys = this.#keys.map((k) => {
      const e = entry(k);
      return [k, e === null ? null : [e.value, e.createIndex, e.modIndex, e.version]];
    });
    return JSON.stringify({
      ...Object.fromEntries(keys),
      ...(remembered === null ? {} : { remembered }),
    });
  }

  /** Which lease each key is attached to, and how many leases there are, as a string. */
  #leaseState(leaseOf: (key: string) => number | null, leases: number): string {
    return JSON.stringify([leases, ...this.#keys.map(leaseOf)]);
  }

  /**
   * A committed revoke or expire entry at `index` (of `term`) removed `result.deleted`: each a
   * delete in the history, from when the entry was first seen in a log to now (when it is known
   * committed). An expiry is checked against the leases' promises (see the module doc).
   */
  #leaseEnded(
    index: number,
    term: number,
    result: Extract<KvResult, { op: "lease_revoke" }>,
    reason: "revoke" | "expire",
  ): void {
    const now = this.#clock.now();
    const proposed = this.#firstSeen.get(index * 1_048_576 + term) ?? now;
    for (const key of result.deleted) {
      this.#history.push({
        client: this.#endClient++,
        kind: "delete",
        key,
        value: null,
        call: proposed,
        return: now,
      });
    }
    this.#note(
      `${reason} of lease(s) ${result.revoked.join(",")} committed at ${index} (proposed at ` +
        `${proposed.toFixed(1)}), deleting ${result.deleted.join(",") || "nothing"}`,
    );
    if (reason === "revoke") {
      this.#stats.leasesRevoked += result.revoked.length;
      return;
    }
    this.#stats.leasesExpired += result.revoked.length;
    const skew = this.#faults.clockSkew;
    const tick = this.#faults.tickMs;
    const election = tick * (this.#opts.electionTicks ?? 10);
    const since = this.#leaderSince.get(term);
    // A new leader gives each lease its TTL once it has applied the log: after its first commit.
    const applying = Math.max(since ?? 0, this.#termCommitted.get(term) ?? 0);
    const leader = this.#leaders.get(term);
    for (const id of result.revoked) {
      const info = this.#leaseInfo.get(id);
      if (info === undefined) continue;
      const earliest = info.lastAckedSend + info.ttlMs / (1 + skew);
      if (proposed < earliest - 1) {
        this.#violation(
          "lease-early",
          `lease ${id} (ttl ${info.ttlMs}ms) was expired by the entry at index ${index}, ` +
            `proposed at ${proposed.toFixed(1)}, before ${earliest.toFixed(1)}: its last ` +
            `acknowledged grant or keep-alive was sent at ${info.lastAckedSend.toFixed(1)}`,
        );
      }
      if (since === undefined || leader === undefined) continue;
      const paused = (this.#pausesOf.get(leader) ?? []).some(([a, b]) =>
        a <= proposed && b >= since
      );
      if (paused) continue;
      const due = Math.max(
        info.lastAttemptEnd + info.ttlMs / (1 - skew),
        applying + Math.max(info.ttlMs, election) / (1 - skew),
      );
      const latest = due + 2 * tick / (1 - skew) +
        (this.#faults.transferEveryMs > 0 ? 2 * election : 0) + 1;
      this.#stats.leaseBoundChecks++;
      if (proposed > latest) {
        this.#violation(
          "lease-bound",
          `lease ${id} (ttl ${info.ttlMs}ms) was expired by the entry at index ${index}, ` +
            `proposed at ${proposed.toFixed(1)}, after ${latest.toFixed(1)}: its last renewal ` +
            `could reach a node until ${info.lastAttemptEnd.toFixed(1)} and ${leader} led ` +
            `term ${term} from ${since.toFixed(1)}, its first commit at ${applying.toFixed(1)}`,
        );
      }
    }
  }

  /** A node's applied data equals the reference state at its applied index. */
  #checkApplied(n: _Node, s: NodeInspection): void {
    if (s.applied > this.#refIndex || s.applied === 0) return;
    const [got, want] = [this.#state(s.kvEntry, s.sessions().length), this.#refStates[s.applied]];
    if (got !== want) {
      this.#violation(
        "state-machine-safety",
        `${n.id} applied up to ${s.applied} but holds ${got} where the committed log gives ${want}`,
      );
    }
    const leases = this.#leaseState((k) => s.leaseOf(k), s.leaseCount);
    if (leases !== this.#refLeaseStates[s.applied]) {
      this.#violation(
        "state-machine-safety",
        `${n.id} applied up to ${s.applied} but its leases are ${leases} where the committed ` +
          `log gives ${this.#refLeaseStates[s.applied]}`,
      );
    }
  }

  #checkLeaderCompleteness(n: _Node, s: NodeInspection): void {
    let i = this.#maxCommit;
    while (i > 0 && (this.#committed[i]?.knownIn ?? 0) >= s.term) i--;
    const want = this.#committed[i]?.term;
    if (i === 0 || i < s.firstIndex || want === undefined || s.entry(i)?.term === want) return;
    this.#violation(
      "leader-completeness",
      `${n.id} became leader of term ${s.term} without the entry committed at index ${i} ` +
        `(its log ends at ${s.lastIndex})`,
    );
  }

  /**
   * A committed configuration: it differs from the previous committed one by one voter at most,
   * so that a majority of either intersects a majority of the other (no two disjoint majorities).
   */
  #learnConf(n: _Node, index: number, e: Entry): void {
    const voters = decodeConfState(e.data).voters;
    const prev = this.#confs.filter((c) => c.index < index).at(-1)!;
    const added = voters.filter((v) => !prev.voters.includes(v));
    const removed = prev.voters.filter((v) => !voters.includes(v));
    if (added.length + removed.length > 1) {
      this.#violation(
        "disjoint-majorities",
        `${n.id}: the configuration committed at ${index} (voters ${voters}) differs from the ` +
          `one before (voters ${prev.voters}) by more than one voter`,
      );
    }
    if (added.length > 0) this.#stats.promotions++;
    this.#confs.push({ index, voters });
    this.#confs.sort((a, b) => a.index - b.index);
    this.#note(`configuration at ${index}: voters ${voters.join(",")}`);
  }

  #checkDurableMajority(when: string, c: number): void {
    const want = this.#committed[c]?.term;
    if (want === undefined) return;
    const holders = this.#nodes.filter((n) => n.durableSnap >= c || n.durable[c] === want);
    // A majority of the configuration in force at c, or of one committed after it (the entry
    // may have been committed under a later configuration of the leader's log).
    // A leader counts the configuration it appended last, committed or not: the newest
    // configuration in any live node's log is a candidate too.
    const from = this.#confs.filter((x) => x.index <= c).at(-1)!.index;
    const candidates = this.#confs.filter((x) => x.index >= from).map((x) => x.voters);
    for (const n of this.#nodes) {
      const list = n.node?.membership.list();
      if (list && list.length > 0) {
        candidates.push(list.filter((m) => m.role === "voter").map((m) => m.node_id));
      }
    }
    const majority = candidates.some((voters) =>
      holders.filter((h) => voters.includes(h.id)).length >= Math.floor(voters.length / 2) + 1
    );
    if (!majority) {
      this.#violation(
        "durable-majority",
        `${when}: committed entry ${c} is durable on ${holders.length} node(s) ` +
          `(${holders.map((n) => n.id).join(", ") || "none"}), not a majority of its configuration`,
      );
    }
  }

  // ---- clients --------------------------------------------------------------------------------

  #sleep(ms: number): Promise<null> {
    return new Promise((resolve) => this.#later(ms, () => resolve(null)));
  }

  /**
   * A client: one operation at a time on a random key until the heal: puts (half of them with an
   * idempotency key), deletes, reads of one key or of every key (a range), and compare-and-sets
   * (on the mod_index last seen, or as a transaction comparing the value, always with an
   * idempotency key).
   */
  async #client(c: _Client): Promise<void> {
    c.seen = new Map();
    for (let seq = 1; this.#phase === "run"; seq++) {
      await this.#sleep(this.#random(0, 30));
      if (this.#phase !== "run") break;
      const r = this.#rng();
      const key = this.#pick(this.#keys);
      const value = `c${c.id}-${seq}`;
      let op: _ClientOp;
      if (r < 0.3) {
        op = this.#newOp(c, { kind: "put", key, value, lease: false });
        if (this.#rng() < 0.5) op.idem = value;
      } else if (r < 0.42) {
        op = this.#newOp(c, { kind: "delete", key, value: null, lease: false });
      } else if (r < 0.6) {
        const known = c.seen.get(key) ?? { modIndex: 0, value: null };
        op = this.#newOp(c, { kind: "cas", key, value, lease: false });
        op.expect = known.value;
        op.casForm = this.#rng() < 0.7 ? { modIndex: known.modIndex } : { txn: true };
        op.idem = value;
      } else {
        const lease = this.#rng() < (this.#opts.leaseReads ?? 0);
        op = this.#newOp(c, { kind: "get", key, value: null, lease });
        op.range = this.#rng() < 0.2;
      }
      await this.#perform(op, this.#opts.opTimeoutMs ?? 3000);
    }
    if (--this.#active === 0) this.#finalReads();
  }

  /**
   * A lease holder: grants a lease (3, 5 or 8 election timeouts, or, one time in five, less than
   * the minimum TTL of one and a half election timeouts, which the node must raise to it),
   * attaches one or two keys to it, keeps it alive for zero to five rounds (every third of its
   * TTL, or a little sooner), then revokes it (a third of the time) or abandons it, and starts
   * again. The lease checks hold it to the TTL granted.
   */
  async #leaseClient(c: _Client): Promise<void> {
    c.seen = new Map();
    const ticks = this.#opts.electionTicks ?? 10;
    const election = this.#faults.tickMs * ticks;
    // etcd's rule, in whole ticks (see minLeaseTtlMs in src/node/lease_tracker.ts).
    const minimum = Math.floor((3 * ticks) / 2) * this.#faults.tickMs;
    for (let seq = 1; this.#phase === "run"; seq++) {
      await this.#sleep(this.#random(0, 50));
      if (this.#phase !== "run") break;
      const asked = this.#rng() < 0.2
        ? Math.max(1, Math.round(this.#pick([0.01, 0.3, 1, 1.4]) * election))
        : Math.round(this.#pick([3, 5, 8]) * election);
      const sent = this.#clock.now();
      const grant = await this.#leaseCall(
        c,
        (node, signal) => node.write({ op: "lease_grant", ttlMs: asked }, signal),
        this.#opts.opTimeoutMs ?? 3000,
      );
      const granted = grant.answer?.kind === "answered" ? grant.answer.value : null;
      if (granted?.op !== "lease_grant") continue; // unknown: left to expire on its own
      const id = granted.id;
      const ttlMs = granted.ttlMs;
      if (ttlMs !== Math.max(asked, minimum)) {
        this.#violation(
          "lease-ttl",
          `lease ${id} was asked with ttl ${asked}ms and granted ${ttlMs}ms; the minimum is ` +
            `${minimum}ms, so it should have been ${Math.max(asked, minimum)}ms`,
        );
      }
      if (ttlMs !== asked) this.#stats.leasesRaised++;
      const info: _LeaseInfo = { ttlMs, lastAckedSend: sent, lastAttemptEnd: grant.end };
      this.#leaseInfo.set(id, info);
      this.#stats.leasesGranted++;
      this.#note(`c${c.id} granted lease ${id} (ttl ${ttlMs}ms, asked ${asked}ms)`);
      for (let j = 0, n = 1 + Math.floor(this.#rng() * 2); j < n && this.#phase === "run"; j++) {
        const key = this.#pick(this.#keys);
        const op = this.#newOp(c, {
          kind: "put",
          key,
          value: `c${c.id}-${seq}-L${j}`,
          lease: false,
        });
        op.leaseRef = { id };
        if (this.#rng() < 0.4) op.txnLease = { exists: this.#rng() < 0.5 };
        await this.#perform(op, this.#opts.opTimeoutMs ?? 3000);
      }
      let alive = true;
      for (let r = Math.floor(this.#rng() * 6); r > 0 && alive && this.#phase === "run"; r--) {
        await this.#sleep(this.#random(0.5, 1) * ttlMs / 3);
        const sent = this.#clock.now();
        const k = await this.#leaseCall(
          c,
          (node, signal) => node.leases.keepAlive(id, signal),
          ttlMs / 3,
        );
        info.lastAttemptEnd = Math.max(info.lastAttemptEnd, k.end);
        if (k.answer?.kind === "answered") {
          info.lastAckedSend = Math.max(info.lastAckedSend, sent);
          this.#stats.leaseKeepAlives++;
          this.#note(`c${c.id} kept lease ${id} alive (sent ${sent.toFixed(1)})`);
        } else if (k.answer?.kind === "notFound") {
          alive = false;
          this.#note(`c${c.id} found lease ${id} gone`);
        }
      }
      if (alive && this.#phase === "run" && this.#rng() < 0.3) {
        const revoke = await this.#leaseCall(
          c,
          (node, signal) => node.write({ op: "lease_revoke", ids: [id], reason: "revoke" }, signal),
          this.#opts.opTimeoutMs ?? 3000,
        );
        if (revoke.answer?.kind === "answered" && this.#phase === "run" && this.#rng() < 0.5) {
          // A transaction naming the revoked lease: it must do nothing (a put with a missing
          // lease is not applied), which the history and the reference state check.
          const op = this.#newOp(c, {
            kind: "put",
            key: this.#pick(this.#keys),
            value: `c${c.id}-${seq}-R`,
            lease: false,
          });
          op.leaseRef = { id };
          op.txnLease = { exists: this.#rng() < 0.5 };
          await this.#perform(op, this.#opts.opTimeoutMs ?? 3000);
        }
      }
    }
    if (--this.#active === 0) this.#finalReads();
  }

  /**
   * Calls `fn` on nodes (following leader hints; again where it was refused or not applied) until
   * it answers, it is unknown whether it took effect, or `timeoutMs` passes. `end` is when the
   * call was given up: after it no request of the call reaches a node.
   */
  async #leaseCall<T>(
    c: _Client,
    fn: (node: RaftNode, signal: AbortSignal) => Promise<T>,
    timeoutMs: number,
  ): Promise<{ answer: _LeaseAnswer<T> | null; end: number }> {
    const abort = new AbortController();
    const deadline = this.#clock.now() + timeoutMs;
    let answer: _LeaseAnswer<T> | null = null;
    while (answer === null && this.#clock.now() < deadline) {
      const useHint = c.hint >= 0 && this.#rng() < 0.7;
      const n = this.#nodes[useHint ? c.hint : Math.floor(this.#rng() * this.#nodes.length)]!;
      const got = await Promise.race([
        this.#callOn(n, abort.signal, fn),
        this.#sleep(deadline - this.#clock.now()),
      ]);
      if (got === null || got.kind === "unknown") break;
      if (got.kind === "answered" || got.kind === "notFound") {
        answer = got;
      } else {
        if (got.kind === "removed") this.#stats.removedRefusals++;
        c.hint = got.kind === "notLeader" ? this.#nodes.findIndex((x) => x.id === got.leader) : -1;
        await this.#sleep(Math.min(this.#random(5, 50), deadline - this.#clock.now()));
      }
    }
    abort.abort();
    if (answer === null) c.hint = -1;
    return { answer, end: this.#clock.now() };
  }

  /** Runs `fn` on node `n` as a request would (or never, if it is lost on the way). */
  async #callOn<T>(
    n: _Node,
    signal: AbortSignal,
    fn: (node: RaftNode, signal: AbortSignal) => Promise<T>,
  ): Promise<_LeaseAnswer<T> | _Outcome> {
    await this.#sleep(this.#random(0.1, 2));
    const out = await new Promise<_LeaseAnswer<T> | _Outcome>((resolve) => {
      if (!n.node || !n.clock) return resolve({ kind: "refused" });
      n.clock.run(() => {
        const node = n.node;
        if (signal.aborted) return;
        if (!node) return resolve({ kind: "refused" });
        fn(node, signal).then(
          (value) => resolve({ kind: "answered", value }),
          (e) => resolve(e instanceof LeaseNotFoundError ? { kind: "notFound" } : _outcomeOf(e)),
        );
      });
    });
    await this.#sleep(this.#random(0.1, 2));
    return out;
  }

  #newOp(client: _Client, op: Pick<_ClientOp, "kind" | "key" | "value" | "lease">): _ClientOp {
    return { ...op, client, call: this.#clock.now(), abort: new AbortController() };
  }

  /**
   * Sends `op` to nodes (following leader hints, retrying where it was refused, and, for a write
   * with an idempotency key, where its outcome is unknown) until it ends or times out, and records
   * its outcome.
   */
  async #perform(op: _ClientOp, timeoutMs: number): Promise<void> {
    const c = op.client;
    const deadline = this.#clock.now() + timeoutMs;
    let [outcome, n]: [_Outcome | null, _Node | null] = [null, null];
    let unknownBefore = false;
    while (!outcome && this.#clock.now() < deadline) {
      const useHint = c.hint >= 0 && this.#rng() < 0.7;
      // A final read goes mostly to a member of the cluster as it now is, as a client that
      // follows the membership would, and sometimes to a node that knows it was removed, which
      // must refuse it at once (checked below).
      const removed = c.final ? this.#nodes.filter((x) => this.#knowsRemoved(x)) : [];
      const pool = c.final
        ? (removed.length > 0 && this.#rng() < 0.3
          ? removed
          : this.#nodes.filter((x) => this.#currentMembers().has(x.id)))
        : [];
      n = useHint
        ? this.#nodes[c.hint]!
        : pool.length > 0
        ? pool[Math.floor(this.#rng() * pool.length)]!
        : this.#nodes[Math.floor(this.#rng() * this.#nodes.length)]!;
      const knewRemoved = c.final && this.#knowsRemoved(n);
      if (knewRemoved) this.#stats.removedFinalReads++;
      // A final read retries on silence: a read has no effect, so retrying is always safe. So
      // does a write with an idempotency key: a repeat is answered, not applied again.
      const left = deadline - this.#clock.now();
      const wait = c.final ? 1000 : op.idem ? Math.min(600, left) : left;
      outcome = await Promise.race([this.#request(n, op), this.#sleep(wait)]);
      if (knewRemoved && outcome === null && this.#knowsRemoved(n)) {
        this.#fail(
          "removed-refusal",
          `${n.id} knows it was removed, but left a final read of ${op.key} unanswered for ${wait} ms`,
        );
      }
      if (outcome?.kind === "removed") this.#stats.removedRefusals++;
      if (
        outcome?.kind === "notLeader" || outcome?.kind === "refused" || outcome?.kind === "removed"
      ) {
        const leader = outcome.kind === "notLeader" ? outcome.leader : "";
        c.hint = this.#nodes.findIndex((x) => x.id === leader);
        outcome = null;
        await this.#sleep(Math.min(this.#random(5, 50), deadline - this.#clock.now()));
      } else if (op.idem && (outcome === null || outcome.kind === "unknown")) {
        if (this.#clock.now() >= deadline) break;
        unknownBefore = true;
        this.#stats.idempotentRetries++;
        this.#note(`c${c.id} ${op.kind}(${op.key}=${op.value}) unknown at ${n.id}: sent again`);
        outcome = null;
        c.hint = -1;
        await this.#sleep(Math.min(this.#random(5, 50), deadline - this.#clock.now()));
      }
    }
    op.abort.abort();
    // Refused for sure after an attempt of unknown outcome: that one may still apply.
    if (unknownBefore && outcome?.kind === "notApplied") outcome = { kind: "unknown" };
    const what = `c${c.id} ${op.lease ? "lease-" : ""}${
      op.range ? "range-" : ""
    }${op.kind}(${op.key}${op.value ? `=${op.value}` : ""}) <- ${n?.id}: ${
      outcome?.kind ?? "timeout"
    }`;
    const ret = this.#clock.now();
    const seen = c.seen ?? new Map();
    if (op.idem && (outcome?.kind === "ok" || outcome?.kind === "casFailed")) {
      const answers = this.#idemAnswers.get(op.idem) ?? new Set();
      answers.add(outcome.index);
      this.#idemAnswers.set(op.idem, answers);
      if (outcome.replayed) this.#stats.idempotentReplays++;
    } else if (op.idem) {
      this.#idemAnswers.set(op.idem, this.#idemAnswers.get(op.idem) ?? new Set());
    }
    if (op.txnLease !== undefined && outcome?.kind === "ok") this.#stats.leaseTxnPuts++;
    if (op.txnLease !== undefined && outcome?.kind === "notApplied") this.#stats.leaseTxnRefused++;
    if (outcome?.kind === "ok") {
      this.#stats.writesOk++;
      if (op.kind === "cas") this.#stats.casOk++;
      this.#acked.set(
        `${op.key}=${op.value ?? `delete by c${c.id}`}`,
        `${n?.id} at ${outcome.index}`,
      );
      this.#note(`${what} @${outcome.index}${outcome.replayed ? " (replayed)" : ""}`);
      this.#history.push(_operation(op, ret));
      seen.set(op.key, {
        modIndex: op.kind === "delete" ? 0 : outcome.modIndex,
        value: op.kind === "delete" ? null : op.value,
      });
    } else if (outcome?.kind === "casFailed") {
      // The condition did not hold: nothing changed; it read the key's current value.
      this.#stats.casFailed++;
      const found = outcome.current;
      this.#note(`${what} @${outcome.index} found ${JSON.stringify(found?.value ?? null)}`);
      this.#history.push({ ..._operation(op, ret), kind: "get", value: found?.value ?? null });
      seen.set(op.key, { modIndex: found?.modIndex ?? 0, value: found?.value ?? null });
    } else if (outcome?.kind === "value") {
      this.#stats.readsOk++;
      if (op.lease) this.#stats.leaseReadsOk++;
      this.#note(`${what} ${JSON.stringify(outcome.value)}`);
      this.#history.push({ ..._operation(op, ret), value: outcome.value });
      seen.set(op.key, { modIndex: outcome.entry?.modIndex ?? 0, value: outcome.value });
    } else if (outcome?.kind === "range") {
      this.#stats.readsOk++;
      this.#stats.rangeReadsOk++;
      if (op.lease) this.#stats.leaseReadsOk++;
      const found = new Map(outcome.entries.map((e) => [e.key, e]));
      this.#note(`${what} @${outcome.index} ${outcome.entries.map((e) => e.value).join(",")}`);
      for (const key of this.#keys) {
        const e = found.get(key) ?? null;
        this.#history.push({ ..._operation(op, ret), key, value: e?.value ?? null });
        seen.set(key, { modIndex: e?.modIndex ?? 0, value: e?.value ?? null });
      }
      this.#rangeReads.push({
        index: outcome.index,
        state: this.#state((k) => found.get(k) ?? null, null),
        what: `${what} at index ${outcome.index}`,
      });
    } else if (outcome?.kind === "notApplied") {
      this.#stats.writesFailed++;
    } else if (op.kind === "get") { // unknown outcome or timed out: a read is dropped
      this.#stats.readsDropped++;
    } else { // a write may have been proposed by a node that then crashed or lost its leadership
      this.#stats.writesUnknown++;
      this.#history.push(_operation(op, null));
      seen.delete(op.key);
    }
    if (!outcome) c.hint = -1;
  }

  /** Sends `op` to node `n` and resolves with the answer (or never, if it is lost on the way). */
  async #request(n: _Node, op: _ClientOp): Promise<_Outcome> {
    await this.#sleep(this.#random(0.1, 2));
    const outcome = await new Promise<_Outcome>((resolve) => {
      const refused = () => resolve({ kind: "refused" });
      // The request reaches the node's process: it runs when the process runs.
      if (!n.node || !n.clock) return refused();
      n.clock.run(() => {
        const node = n.node;
        if (op.abort.signal.aborted) return;
        if (!node) return refused();
        const signal = op.abort.signal;
        const consistency = op.lease ? "lease" : "linearizable";
        let call: Promise<_Outcome>;
        if (op.kind === "get" && op.range) {
          call = node.range(
            { range: { prefix: "" }, limit: 1000, maxChars: 1 << 20 },
            consistency,
            signal,
          )
            .then((r) => ({ kind: "range", entries: r.entries, index: r.index }));
        } else if (op.kind === "get") {
          call = node.read(op.key, consistency, signal)
            .then((r) => ({ kind: "value", value: r.entry?.value ?? null, entry: r.entry }));
        } else {
          call = node.write(_command(op), signal, op.idem ?? null).then((r) =>
            _writeOutcome(op, r)
          );
        }
        if (op.kind === "get") {
          // A read a follower answered went through its leader's read index (follower ReadIndex).
          call = call.then((o) => {
            if (o.kind === "value" || o.kind === "range") {
              const role = node.status().role;
              if (role !== "leader") this.#stats.followerReadsOk++;
            }
            return o;
          });
        }
        call.then(resolve, (e) => resolve(_outcomeOf(e)));
      });
    });
    await this.#sleep(this.#random(0.1, 2));
    return outcome;
  }

  // ---- faults ---------------------------------------------------------------------------------

  /** Runs `fn` at random intervals averaging `meanMs` (0: never) until the final heal. */
  #every(meanMs: number, fn: () => void): void {
    if (meanMs <= 0) return;
    this.#later(this.#random(0.2, 1.8) * meanMs, () => {
      if (this.#phase !== "run") return;
      fn();
      this.#every(meanMs, fn);
    });
  }

  /** The node that leads the highest term, if any. */
  #leader(): _Node | null {
    const leaders = this.#nodes.filter((n) => n.node?.inspect().role === "leader");
    return leaders.sort((a, b) => b.node!.inspect().term - a.node!.inspect().term)[0] ?? null;
  }

  #partition(): void {
    const net = this.#network;
    if (net.cut) return; // one partition at a time
    const all = this.#nodes.map((n) => n.id);
    const target = this.#leader()?.id ?? this.#pick(all);
    const kinds = "split split one-way isolate-leader leader-cannot-send leader-cannot-hear bridge";
    const kind = this.#pick(kinds.split(" "));
    const links = new Set<string>();
    const cut = (a: NodeId, b: NodeId, both = true) => {
      links.add(`${a}>${b}`);
      if (both) links.add(`${b}>${a}`);
    };
    let text = `${kind} ${target}`;
    if (kind === "split") {
      const side = _shuffle(all, this.#rng)
        .slice(0, 1 + Math.floor(this.#rng() * Math.floor(all.length / 2)));
      for (const a of side) for (const b of all.filter((x) => !side.includes(x))) cut(a, b);
      text = `split {${side}} | rest`;
    } else if (kind === "bridge") {
      const [bridge, ...rest] = _shuffle(all, this.#rng);
      const [left, right] = [rest.slice(0, rest.length / 2), rest.slice(rest.length / 2)];
      for (const a of left) for (const b of right) cut(a, b);
      text = `bridge ${bridge} between {${left}} and {${right}}`;
    } else if (kind === "one-way") {
      for (let i = 0, pairs = 1 + Math.floor(this.#rng() * all.length); i < pairs; i++) {
        const a = this.#pick(all);
        cut(a, this.#pick(all.filter((x) => x !== a)), false);
      }
      text = `one-way ${[...links].join(" ")}`;
    } else {
      for (const b of all.filter((x) => x !== target)) {
        if (kind !== "leader-cannot-hear") cut(target, b, false);
        if (kind !== "leader-cannot-send") cut(b, target, false);
      }
    }
    net.cut = (a, b) => links.has(`${a}>${b}`);
    this.#stats.partitions++;
    const id = ++this.#partitionId;
    const duration = this.#random(100, Math.max(200, this.#faults.maxPartitionMs));
    this.#note(`PARTITION ${text} for ${duration.toFixed(0)} ms`);
    this.#later(duration, () => {
      if (this.#partitionId === id) net.cut = null;
    });
  }

  #crashSome(): void {
    const up = this.#nodes.filter((n) => n.node || n.starting);
    if (up.length === 0) return;
    const power = this.#rng() < this.#faults.powerFailureRate;
    const leader = power ? null : this.#leader();
    const victims = power ? up : [leader && this.#rng() < 0.4 ? leader : this.#pick(up)];
    if (power) this.#stats.powerFailures++;
    for (const n of victims) {
      this.#crash(n, power ? "power failure" : "crash");
      const inc = n.inc;
      this.#later(this.#random(20, Math.max(50, this.#faults.maxDowntimeMs)), () => {
        if (n.inc === inc) this.#restart(n);
      });
    }
  }

  #pause(): void {
    const up = this.#nodes.filter((n) => n.node && !n.clock!.paused);
    if (up.length === 0) return;
    const leader = this.#leader();
    const n = leader && !leader.clock!.paused && this.#rng() < 0.5 ? leader : this.#pick(up);
    const clock = n.clock!;
    const ms = this.#random(50, Math.max(100, this.#faults.maxPauseMs));
    clock.paused = true;
    this.#stats.pauses++;
    const pauses = this.#pausesOf.get(n.id) ?? [];
    pauses.push([this.#clock.now(), this.#clock.now() + ms]);
    this.#pausesOf.set(n.id, pauses);
    this.#note(`PAUSE ${n.id} until ${(this.#clock.now() + ms).toFixed(0)}`);
    this.#later(ms, () => clock.resume());
  }

  /**
   * Asks the leader to hand leadership over: to a random other node (possibly down, paused or cut
   * off, so that the transfer is abandoned) or, half the time, to the most caught-up voter.
   */
  #transfer(): void {
    const n = this.#leader();
    if (!n || !n.node || !n.clock) return;
    const others = this.#nodes.filter((x) => x !== n);
    const to = this.#rng() < 0.5 ? null : this.#pick(others).id;
    const abort = new AbortController();
    const inc = n.inc;
    this.#note(`TRANSFER leadership from ${n.id} to ${to ?? "the most caught-up voter"}`);
    n.clock.run(() => {
      const node = n.node;
      if (!node || n.inc !== inc) return;
      node.transferLeadership(to, abort.signal).then(
        ({ leader }) => {
          this.#stats.transfersDone++;
          this.#note(`${n.id} handed leadership to ${leader}`);
        },
        (e) => {
          if (n.inc !== inc) return; // crashed meanwhile
          if (e instanceof TransferAbortedError || e === abort.signal.reason) {
            this.#stats.transfersAborted++;
            this.#note(`${n.id}: transfer ended without a new leader: ${(e as Error).message}`);
          } else if (
            !(e instanceof NotLeaderError || e instanceof StoppingError ||
              e instanceof LeaderTransferError || // one transfer at a time
              e instanceof NotVoterError || e instanceof UnknownMemberError) // not a voter now
          ) {
            this.#caught(e, ` in a leader transfer on ${n.id}`);
          }
        },
      );
      if (node.inspect().role === "leader") this.#stats.transfers++;
    });
    // A caller gives up after a few election timeouts (the node abandons it after one).
    this.#later(this.#faults.tickMs * (this.#opts.electionTicks ?? 10) * 3, () => abort.abort());
  }

  /**
   * A membership change on the leader, one at a time: add a spare node (started with --join,
   * added as a learner, promoted by the leader once caught up), or remove a member (the leader
   * itself a third of the time), keeping at least three voters. A replacement is a removal
   * followed, at the next change, by an addition. Crashes, partitions and pauses go on meanwhile.
   */
  #memberChange(): void {
    if (this.#memberBusy) return;
    const n = this.#leader();
    if (!n || !n.node || !n.clock) return;
    const node = n.node;
    const members = node.membership.list();
    const voters = members.filter((m) => m.role === "voter").map((m) => m.node_id);
    const spare = this.#nodes.find((x) => x.spare && !x.added);
    const canRemove = voters.length > 3 || members.length > voters.length;
    let op: "add" | "remove";
    if (spare && (!canRemove || this.#rng() < 0.5)) op = "add";
    else if (canRemove) op = "remove";
    else return;
    let target: string;
    if (op === "add") {
      target = spare!.id;
      spare!.added = true;
      this.#restart(spare!);
    } else {
      const removable = voters.length > 3 ? members : members.filter((m) => m.role === "learner");
      const self = removable.find((m) => m.node_id === n.id);
      target = self && this.#rng() < 0.33 ? n.id : this.#pick(removable).node_id;
    }
    this.#memberBusy = true;
    const inc = n.inc;
    this.#note(`MEMBERSHIP ${op} ${target} (asked of ${n.id})`);
    const abort = new AbortController();
    n.clock.run(() => {
      if (!n.node || n.inc !== inc) {
        this.#memberBusy = false;
        return;
      }
      const change = op === "add"
        ? n.node.membership.add(
          { id: target, rpcUrl: `sim://${target}`, apiUrl: target },
          abort.signal,
        )
        : n.node.membership.remove(target, abort.signal);
      change.then(
        ({ index }) => {
          this.#stats[op === "add" ? "memberAdds" : "memberRemoves"]++;
          this.#note(`${n.id}: ${op} ${target} applied at ${index}`);
        },
        (e) => {
          if (n.inc !== inc) return;
          if (
            e instanceof MembershipError || e instanceof NotLeaderError ||
            e instanceof StoppingError || e instanceof NotAppliedError ||
            e instanceof OutcomeUnknownError || e instanceof LeaderTransferError
          ) {
            this.#stats.memberChangesRefused++;
            this.#note(`${n.id}: ${op} ${target} not done: ${(e as Error).message}`);
            // A spare whose addition surely failed may be tried again later.
            if (op === "add" && e instanceof MembershipError && e.code !== "exists") {
              spare!.added = false;
            }
          } else {
            this.#caught(e, ` in a membership change on ${n.id}`);
          }
        },
      ).finally(() => this.#memberBusy = false);
    });
    this.#later(this.#faults.tickMs * (this.#opts.electionTicks ?? 10) * 5, () => {
      abort.abort();
      // Also when the leader crashed before it could take the change: the next one may start.
      this.#memberBusy = false;
    });
  }

  /**
   * Whether `n` runs, is not paused, and knows it was removed (its configuration leaves it out)
   * while not leading: it must then refuse client requests at once.
   */
  #knowsRemoved(n: _Node): boolean {
    if (!n.node || n.clock?.paused === true) return false;
    return n.node.status().membership === "removed" && n.node.inspect().role !== "leader";
  }

  /** The nodes of the newest configuration the nodes hold (the highest conf index wins). */
  #currentMembers(): Set<NodeId> {
    let best: { index: number; ids: string[] } | null = null;
    for (const n of this.#nodes) {
      if (!n.node) continue;
      const list = n.node.membership.list();
      const index = n.node.inspect().lastIndex;
      if (list.length > 0 && (best === null || index > best.index)) {
        best = { index, ids: list.map((m) => m.node_id) };
      }
    }
    return new Set(best?.ids ?? this.#nodes.filter((n) => !n.spare).map((n) => n.id));
  }

  // ---- the end: heal, liveness, convergence, linearizability ----------------------------------

  #finalHeal(): void {
    this.#phase = "drain";
    this.#partitionId++;
    this.#network.cut = null;
    this.#note("FINAL HEAL: partitions healed, paused nodes resume, crashed nodes restart");
    for (const n of this.#nodes) {
      n.clock?.resume();
      if (!n.spare || n.added) this.#restart(n);
    }
    if (--this.#active === 0) this.#finalReads();
  }

  /** Once every client stopped: a read of every key, which must complete in time (liveness). */
  #finalReads(): void {
    this.#phase = "final";
    this.#note("FINAL READS of every key");
    const reads = this.#keys.map((key, i) =>
      this.#newOp({ id: 1000 + i, hint: -1, final: true }, {
        kind: "get",
        key,
        value: null,
        lease: false,
      })
    );
    Promise.all(reads.map((op) => this.#perform(op, Infinity))).then(() => this.#startConvergence())
      .catch((e) => this.#caught(e, " in the final reads"));
    const livenessMs = this.#opts.livenessMs ?? 20_000;
    this.#later(livenessMs, () => {
      if (this.#phase !== "final") return;
      const missing = reads.filter((op) => !op.abort.signal.aborted).map((op) => op.key);
      this.#fail(
        "liveness",
        `the final reads of ${missing.join(", ")} did not complete within ${livenessMs} ms ` +
          `after every fault healed (leader: ${this.#leader()?.id ?? "none"})`,
      );
    });
  }

  #startConvergence(): void {
    this.#phase = "converge";
    const deadline = this.#clock.now() + 10_000;
    const poll = () => {
      const c = this.#maxCommit;
      // Removed nodes (and spares never added) take no further part: only members converge.
      // A member whose own configuration predates the leader's addition (it was away while the
      // leader joined) must catch up too: it learns the leader from a peer's committed
      // configuration (a members query). It is counted (stats.staleMembers) and, if it does not,
      // fails "stale-member".
      const members = this.#currentMembers();
      const leader = this.#leader()?.id;
      const stale = (n: _Node) => {
        const own = n.node?.membership.list().map((m) => m.node_id) ?? [];
        return leader !== undefined && own.length > 0 && !own.includes(leader);
      };
      const nodes = this.#nodes.filter((n) => members.has(n.id));
      for (const n of nodes) {
        if (stale(n) && !this.#staleNoted.has(n.id)) {
          this.#staleNoted.add(n.id);
          this.#stats.staleMembers++;
          this.#note(`${n.id} does not know the leader ${leader}: it must learn it from a peer`);
        }
      }
      const lagging = nodes.filter((n) => n.node?.inspect().applied !== c);
      if (lagging.length > 0) {
        if (this.#clock.now() >= deadline) {
          const ids = lagging.map((n) => n.id).join(", ");
          const unknown = lagging.filter(stale).map((n) => n.id);
          if (unknown.length > 0) {
            this.#fail(
              "stale-member",
              `${unknown.join(", ")} did not learn the leader ${leader} (added while they were ` +
                `away) and did not apply up to commit ${c} within 10 s`,
            );
          }
          this.#fail("convergence", `${ids} did not apply up to commit ${c} within 10 s`);
        }
        return this.#later(50, poll);
      }
      // A voter removed while it was down (or cut off) never gets its removal from the log: the
      // peers it campaigns to answer that their committed configuration leaves it out, and it
      // must then know it was removed. A member of the cluster must never be told so. A removed
      // learner sends nothing on its own: it asks its peers for their committed configuration
      // once it has heard no leader for an election timeout, and must know it too.
      const wrong = this.#nodes.filter((n) =>
        n.node && members.has(n.id) && n.node.status().membership === "removed"
      );
      if (wrong.length > 0) {
        const ids = wrong.map((n) => n.id).join(", ");
        this.#fail("removed-member", `${ids} count themselves removed, but are members`);
        return;
      }
      const unaware = this.#nodes.filter((n) =>
        n.node && !members.has(n.id) &&
        ["voter", "learner"].includes(n.node.status().membership ?? "")
      );
      if (unaware.length > 0) {
        if (this.#clock.now() >= deadline) {
          const ids = unaware.map((n) => n.id).join(", ");
          this.#fail("removed-unaware", `${ids} were removed but still count themselves members`);
          return;
        }
        return this.#later(50, poll);
      }
      const states = nodes.map((n) => {
        const s = n.node!.inspect();
        return this.#state(s.kvEntry, s.sessions().length);
      });
      if (states.some((state) => state !== states[0])) {
        const all = nodes.map((n, i) => `${n.id} ${states[i]}`).join(", ");
        this.#fail("convergence", `every node applied up to ${c}, holding different data: ${all}`);
      }
      this.#note(`CONVERGED at commit ${c}`);
      this.#phase = "done";
    };
    poll();
  }

  /** Every range read held the committed state at the index it reported. */
  #checkRanges(): void {
    for (const r of this.#rangeReads) {
      const ref = this.#refStates[r.index];
      if (ref === undefined) continue; // beyond what the reference learned (never in practice)
      const want = JSON.parse(ref) as Record<string, unknown>;
      delete want.remembered;
      if (JSON.stringify(want) !== r.state) {
        this.#violation(
          "range-snapshot",
          `${r.what} returned ${r.state}, but the committed log gives ${JSON.stringify(want)}`,
        );
      }
    }
  }

  /**
   * Every write sent with an idempotency key: its definite answers (from any attempt) named one
   * index, and the committed log applied it at most once (the reference model, which the nodes'
   * states were checked against at every step, counts the applications).
   */
  #checkAtMostOnce(): void {
    for (const [id, answers] of this.#idemAnswers) {
      if (answers.size > 1) {
        this.#violation(
          "at-most-once",
          `the write with idempotency key ${id} was answered with different indexes: ${
            [
              ...answers,
            ].join(", ")
          }`,
        );
      }
      const applied = this.#ref.appliedById.get(id) ?? 0;
      if (applied > 1) {
        this.#violation(
          "at-most-once",
          `the write with idempotency key ${id} applied ${applied} times`,
        );
      }
    }
  }

  // ---- watchers -------------------------------------------------------------------------------

  #startWatcher(id: number): void {
    const r = this.#watchRng;
    const keyed = r() < 0.5;
    const key = this.#keys[Math.floor(r() * this.#keys.length)]!;
    const prefixes = ["", "k", key];
    const w: _Watcher = {
      id,
      filter: keyed ? { key } : { prefix: prefixes[Math.floor(r() * prefixes.length)]! },
      node: null,
      inc: 0,
      stop: () => {},
      // Half start from index 1, the others from whatever comes next.
      next: r() < 0.5 ? 1 : null,
      events: [],
      stretches: [],
      dueAt: r() * 200,
    };
    this.#watchers.push(w);
  }

  /**
   * After each step: every watcher whose time has come looks at its connection, and moves when
   * its node is gone, or at random. (Watchers set no timers of their own, so that they leave the
   * run's steps, and so everything the nodes do, as they would be without them.)
   */
  #tendWatchers(): void {
    const now = this.#clock.now();
    const r = this.#watchRng;
    for (const w of this.#watchers) {
      if (w.dueAt > now) continue;
      w.dueAt = now + 10 + r() * 100;
      const gone = w.node === null || w.node.inc !== w.inc || w.node.node === null;
      if (gone || r() < 0.03) {
        w.stop();
        w.node = null;
        this.#connectWatcher(w);
      }
    }
  }

  #connectWatcher(w: _Watcher): void {
    const live = this.#nodes.filter((n) => n.node !== null && n.clock?.paused !== true);
    if (live.length === 0) return;
    const n = live[Math.floor(this.#watchRng() * live.length)]!;
    const node = n.node!;
    const inc = n.inc;
    if (w.stretches.length > 0) this.#stats.watchReconnects++;
    let from = w.next;
    if (from !== null && w.events.length > 0 && this.#opts.watchFault !== undefined) {
      from += this.#opts.watchFault === "repeat" ? -1 : 1;
    }
    const sink = {
      event: (e: KvEvent) => {
        if (n.inc !== inc || w.node !== n) return;
        const match = "key" in w.filter ? e.k === w.filter.key : e.k.startsWith(w.filter.prefix);
        if (!match) return;
        w.events.push(e);
        w.next = e.index + 1;
        this.#stats.watchEvents++;
      },
      close: (reason: string) => {
        if (w.node !== n) return;
        this.#note(`watcher w${w.id} on ${n.id} closed: ${reason}`);
        w.node = null;
      },
    };
    try {
      const history = node.watchHistory();
      if (from === null) from = node.inspect().applied + 1;
      if (w.stretches.length === 0) w.stretches.push({ from, firstEvent: 0 });
      w.next = from;
      [w.node, w.inc] = [n, inc];
      w.stop = history.subscribe(from, sink);
      this.#note(`watcher w${w.id} follows ${n.id} from ${from}`);
    } catch (e) {
      w.node = null;
      if (e instanceof RemovedError) {
        // The watcher tries another node at its next look.
        this.#stats.removedWatchRefusals++;
        this.#note(`watcher w${w.id} on ${n.id}: refused, the node was removed`);
        return;
      }
      if (!(e instanceof HistoryCompactedError)) throw e;
      // The client re-reads the state and watches on from the oldest index (a new stretch).
      this.#stats.watchResyncs++;
      this.#note(`watcher w${w.id} on ${n.id}: from ${from} is gone, resyncs at ${e.oldestIndex}`);
      w.next = e.oldestIndex;
      w.stretches.push({ from: e.oldestIndex, firstEvent: w.events.length });
    }
  }

  /**
   * Within each stretch a watcher saw, for every index from the stretch's start to the last index
   * it is known to have covered, exactly the committed changes of its keys there (in key order
   * within an index), and the indexes in order.
   */
  #checkWatchers(): void {
    for (const w of this.#watchers) {
      const matches = (k: string) =>
        "key" in w.filter ? k === w.filter.key : k.startsWith(w.filter.prefix);
      const what = `watcher w${w.id} of ${JSON.stringify(w.filter)}`;
      for (let j = 0; j < w.stretches.length; j++) {
        const { from, firstEvent } = w.stretches[j]!;
        const end = w.stretches[j + 1]?.firstEvent ?? w.events.length;
        const got = w.events.slice(firstEvent, end);
        // Covered: up to its last event; the last stretch up to what its live node applied.
        let last = got.at(-1)?.index ?? from - 1;
        const live = w.node !== null && w.node.inc === w.inc && w.node.node !== null;
        if (j === w.stretches.length - 1 && live) {
          last = Math.max(last, w.node!.node!.inspect().applied);
        }
        const want: string[] = [];
        for (let i = from; i <= Math.min(last, this.#refIndex); i++) {
          const changes = this.#refChanges[i] ?? [];
          for (const c of changes) if (matches(c.k)) want.push(`${i} ${c.type} ${c.k}=${c.v}`);
        }
        const seen = [...got].sort((a, b) => a.index - b.index || (a.k < b.k ? -1 : 1))
          .map((e) => `${e.index} ${e.type} ${e.k}=${e.v}`);
        for (let i = 1; i < got.length; i++) {
          if (got[i]!.index < got[i - 1]!.index) {
            this.#violation(
              "watch",
              `${what} got index ${got[i]!.index} after ${got[i - 1]!.index}`,
            );
          }
        }
        if (JSON.stringify(seen) !== JSON.stringify(want)) {
          const diff = (a: string[], b: string[]) => a.filter((x) => !b.includes(x)).slice(0, 5);
          this.#violation(
            "watch",
            `${what}, stretch ${j} from ${from} to ${last}: got ${seen.length} events, the ` +
              `committed log gives ${want.length}; missing ${JSON.stringify(diff(want, seen))}, ` +
              `extra or repeated ${
                JSON.stringify(
                  seen.filter((x, i) => seen.indexOf(x) !== i || !want.includes(x)).slice(0, 5),
                )
              }`,
          );
        }
      }
    }
  }

  #checkHistory(): void {
    this.#checkRanges();
    this.#checkAtMostOnce();
    this.#stats.historyOps = this.#history.length;
    for (const op of this.#history) this.#mix(Math.floor((op.return ?? -1) * 1000));
    const result = checkLinearizability(this.#history, {
      timeoutMs: this.#opts.linearizabilityTimeoutMs ?? 20_000,
    });
    if (result.ok === "unknown") this.#stats.linearizability = "unknown";
    if (result.ok !== false) return;
    const acked = [...this.#acked].filter(([k]) => k.startsWith(`${result.key}=`)).slice(-10)
      .map(([k, v]) => `  ${k} acknowledged by ${v}`);
    const finals = this.#nodes.map((n) =>
      `${n.id}=${JSON.stringify(n.node?.inspect().value(result.key))}`
    );
    this.#violation(
      "linearizability",
      `the client history of key ${JSON.stringify(result.key)} is not linearizable:\n` +
        `${result.reason}\nlast acknowledged writes of that key:\n${acked.join("\n")}\n` +
        `final values: ${finals.join(" ")}\nfull history of the key:\n${
          describeHistory(result.operations, { maxLines: 60 })
        }`,
    );
  }
}

/** The command a client write sends. */
function _command(op: _ClientOp): PlainCommand {
  if (op.kind === "delete") return { op: "delete", key: op.key };
  if (op.kind === "put" && op.txnLease !== undefined && op.leaseRef && "id" in op.leaseRef) {
    const put = { op: "put" as const, key: op.key, value: op.value!, lease: op.leaseRef.id };
    return {
      op: "txn",
      compare: [{ key: op.key, target: "exists", op: "=", value: op.txnLease.exists }],
      success: [put, { op: "get", key: op.key }],
      failure: [put],
    };
  }
  if (op.kind === "put") {
    return op.leaseRef === undefined
      ? { op: "put", key: op.key, value: op.value! }
      : { op: "put", key: op.key, value: op.value!, lease: op.leaseRef };
  }
  const form = op.casForm!;
  if ("modIndex" in form) return { op: "put", key: op.key, value: op.value!, cas: form.modIndex };
  const expect = op.expect ?? null;
  return {
    op: "txn",
    compare: [
      expect === null
        ? { key: op.key, target: "exists", op: "=", value: false }
        : { key: op.key, target: "value", op: "=", value: expect },
    ],
    success: [{ op: "put", key: op.key, value: op.value! }],
    failure: [{ op: "get", key: op.key }],
  };
}

/** What a client learns from a write's result. */
function _writeOutcome(op: _ClientOp, r: KvResult): _Outcome {
  const replayed = r.replayed === true;
  switch (r.op) {
    case "put":
      return { kind: "ok", index: r.index, modIndex: r.modIndex, replayed };
    case "delete":
      return { kind: "ok", index: r.index, modIndex: 0, replayed };
    case "cas_failed":
      return { kind: "casFailed", index: r.index, current: r.current, replayed };
    case "lease_not_found": // nothing was written
      return { kind: "notApplied" };
    case "txn": {
      if (op.txnLease !== undefined) {
        // Either branch puts first, with the lease.
        const put = r.results[0];
        if (put?.op !== "put" || put.lease !== (op.leaseRef as { id: number }).id) {
          throw new Error(`a transaction put with a lease answered ${JSON.stringify(put)}`);
        }
        return { kind: "ok", index: r.index, modIndex: put.modIndex, replayed };
      }
      if (r.succeeded) {
        const put = r.results[0];
        return {
          kind: "ok",
          index: r.index,
          modIndex: put?.op === "put" ? put.modIndex : 0,
          replayed,
        };
      }
      const get = r.results[0];
      return {
        kind: "casFailed",
        index: r.index,
        current: get?.op === "get" ? get.entry : null,
        replayed,
      };
    }
    default:
      throw new Error(`unexpected result ${r.op} for ${op.kind}(${op.key})`);
  }
}

/** What a client learns from a node's error. */
function _outcomeOf(e: unknown): _Outcome {
  if (e instanceof NotLeaderError) return { kind: "notLeader", leader: e.leader };
  if (e instanceof NotAppliedError) return { kind: "notApplied" };
  if (e instanceof NoSpaceError || e instanceof StoppingError) return { kind: "refused" };
  if (e instanceof RemovedError) return { kind: "removed" };
  return { kind: "unknown" }; // OutcomeUnknownError, an aborted read, anything else
}

function _operation(op: _ClientOp, ret: number | null): Operation {
  const { client, kind, key, value, call } = op;
  const base = { client: client.id, kind, key, value, call, return: ret };
  return kind === "cas" ? { ...base, expect: op.expect ?? null } : base;
}

/** The shared clock's origin as wall time (a leader stamps idempotent writes with it). */
const _WALL_CLOCK_ORIGIN = 1_700_000_000_000;

/** A hash of an entry's type and data. */
function _hash(e: Entry): number {
  let h = Math.imul(0x811c9dc5 ^ e.type, 0x01000193);
  for (let i = 0; i < e.data.length; i++) h = Math.imul(h ^ e.data[i]!, 0x01000193);
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
