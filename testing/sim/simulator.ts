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
 * the most caught-up one); full disks (one node's, the leader's, the followers' or every node's,
 * until space is freed: a member must then clear its NOSPACE alarm by itself); and, for the guard
 * tests, a {@linkcode DiskFault} at the file-system or storage seam.
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
 * Watchers follow the changes of a key or a prefix through the API's watch route (`GET /v1/watch`,
 * its stream, buffer, cut-off and final event), each on a random node, moving to another one when
 * theirs crashes or ends the stream, and now and then at random (a client whose connection broke),
 * going on after the last event they took (its id as `Last-Event-ID`, inside one entry's changes
 * too), or after the `last_id` of the final event; some have a buffer small enough to be cut
 * off; a `from` older than the node's history starts a new stretch at the oldest index (the client
 * re-reads). Checked at the end: within each stretch a watcher saw every committed change of its
 * keys exactly once, in index order, as the committed log gives them (the `watch` check).
 * Blocking readers (`waiters.ts`) wait on a random node for a key to change after an index,
 * through the API's own `blockingWait` on a clock of their own: a wait woken by a change must have
 * been woken by a committed change of its key after that index, and a wait that timed out must
 * have had none applied on its node (the `blocking-read` check). Backup readers (`backups.ts`)
 * take a live node's backup (`GET /v1/snapshot`: its `snapshot()` stream) and read it up to a
 * second later (cancelled if the node crashes first); each backup read, restored into a fresh
 * state machine, must hold the committed state at the index it names: data, revisions, remembered
 * outcomes and leases (the `backup` check).
 *
 * Clients put, delete (one key, or a range of keys: in the history as a delete of each key in it),
 * read (one key, or every key as a range), and compare-and-set (on the `mod_index` they last saw,
 * or as a transaction comparing the value; one in five deletes instead of putting); one
 * compare-and-set in four is a transaction on three keys instead (compares on two, writes both and
 * reads the third if they hold, reads the two if not: in the history as what it was for each key);
 * half the puts and range deletes and every compare-and-set carry an idempotency key and are sent
 * again, to other nodes, while their outcome is unknown (across crashes and leader changes),
 * recorded as one operation. Every answer to a transaction (of any form, replays included) must be
 * the committed log's at the index it named: the branch and every result (the `transaction` check).
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
 * Lease holders also read their lease's status, or every lease's (the leader's `leaseStatus`, as
 * `GET /v1/leases/:id` and `GET /v1/leases` do), now and then, and after a revocation: each answer
 * must be the committed leases (ids, TTLs, keys), or the lease's absence, at some index from the
 * commit known when it was sent to the one known when it was answered, with a time left from 0 to
 * the TTL (the `lease-read` check).
 *
 * The code: this file holds the options, results and fault profiles and the engine (nodes, their
 * storage, clocks and network, the event loop); the parts reach the engine through the
 * `SimContext` of `context.ts`: `clients.ts` (clients, their history, the final reads),
 * `leases.ts` (lease holders, lease checks), `watchers.ts`, `waiters.ts`, `backups.ts`, `faults.ts` and `checks.ts` (the
 * record of what was committed, the reference model and the other checks).
 *
 * @module
 */

import { RaftNode } from "../../src/node/raft_node.ts";
import type { NodeStorage } from "../../src/node/raft_node.ts";
import { type DiskStorage, openDiskStorage } from "../../src/node/disk_storage.ts";
import { bootstrapClusterId } from "../../src/node/cluster_id.ts";
import { seededRandom } from "../../src/raft/rand.ts";
import { isNoSpace } from "../../src/storage/errors.ts";
import { type Counter, MetricsRegistry } from "../../src/util/metrics.ts";
import type { NodeId } from "../../src/raft/types.ts";
import { LEASE_BYTES } from "../../src/kv/state_machine.ts";
import { drain, settle, SimClock } from "../sim_clock.ts";
import { SimFileSystem } from "../sim_fs.ts";
import { Checker } from "./checks.ts";
import { Clients } from "./clients.ts";
import { type SimContext, SimNode } from "./context.ts";
import { Faults } from "./faults.ts";
import { LeaseHolders } from "./leases.ts";
import { NodeClock } from "./node_clock.ts";
import { SimNetwork } from "./network.ts";
import { Waiters } from "./waiters.ts";
import { BackupReaders } from "./backups.ts";
import { Watchers } from "./watchers.ts";

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
   * Probability that a crash of one node is a graceful stop instead (`RaftNode.stop()`: it
   * finishes its writes, stores its commit index and closes); then only synced bytes remain.
   */
  stopRate: 0,
  /**
   * Probability that a crash of one running node (not a stop) is a disk failure instead: its disk
   * fails every operation with EIO from then on. The node stops itself at its next disk operation
   * (a fatal error; then `RaftNode.stop()`, as main.ts does) and goes down as in a crash (what its
   * disk synced survives, part of the rest as `tornWriteRate` says); one that does no disk
   * operation within `maxDowntimeMs` is crashed. It restarts later on the disk mounted again.
   */
  diskFailRate: 0,
  /**
   * Probability that a crash keeps part of the unsynced writes (in order, the next one possibly
   * torn) and directory changes; otherwise only what was synced survives.
   */
  tornWriteRate: 0,
  /** Probability that a snapshot transfer breaks part-way (the sender sees it fail). */
  snapshotBreakRate: 0.1,
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
  /**
   * Mean time between disk-full episodes (one node's disk, the leader's, the followers' or every
   * node's fills up, with no room left or up to 4 KiB, until space is freed); 0 disables them.
   */
  diskFullEveryMs: 0,
  /** The longest a disk stays full. */ maxDiskFullMs: 0,
  /**
   * Mean time between appends from another cluster (its node has the id of one of this cluster's
   * members, as two clusters made from copies of one cluster file do, and a cluster file points
   * at it): an append that would match a node's log and commit a write of its own; 0 disables
   * them.
   */
  otherClusterEveryMs: 0,
  /**
   * Probability that a bootstrap member that has data is restarted (after a crash or a stop)
   * with a cluster file edited to list only itself; it is stopped and started with the right file
   * within `maxDowntimeMs`. The membership must come from its data directory: with the file's, it
   * would elect itself alone and commit without the others.
   */
  editedFileRate: 0,
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
  "nospace-fatal",
  "forget-cluster-id",
  "snapshot-without-addresses",
  "forget-initial-voters",
] as const;

/**
 * A misbehaving disk or storage layer, for the guard tests that prove the checks catch a node that
 * loses acknowledged data; each acts at a seam, the node's code is the real one. `ack-before-sync`:
 * the disk acknowledges syncs without making anything durable. `forget-synced`: a crash loses the
 * last synced write of a WAL segment. `compact-past-snapshot`: the storage compacts the WAL to its
 * last index after each snapshot. `install-without-reset`: it installs a received snapshot without
 * the WAL reset record (the install's commit point). `snapshot-live-state`: it writes the node's
 * live data a few ticks after a snapshot began instead of the copy-on-write view at its index.
 * `nospace-fatal`: a log or hard-state write that finds the disk full fails as any other IO error
 * would (as in the first version, where a full disk stopped the node for good).
 * `forget-cluster-id`: the storage knows no cluster id (as files from before ids, or a storage
 * that lost it), so the node takes peers of any cluster. `snapshot-without-addresses`: snapshots
 * record the members without their addresses (as snapshots did whose configuration came from a
 * snapshot written as booted, or from a restored backup): a node that restarts from one knows
 * only the addresses its cluster file gives. `forget-initial-voters`: the storage knows no
 * recorded initial voters (as files of an earlier version), so a node restarted with an edited
 * cluster file takes the file's members.
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
  | "transaction" // a transaction's answer is the committed log's at the index it named
  | "lease-early" // a lease expired before its last acknowledged keep-alive's send time + TTL
  | "lease-bound" // a lease expired later than the documented bound after it was due
  | "lease-ttl" // a grant's TTL is not the one asked for raised to the minimum (1.5 elections)
  | "lease-read" // a lease status read gave the committed leases at an index while it ran
  | "watch" // every watcher saw each committed change of its keys once, in index order
  | "blocking-read" // a blocking read woke on a committed change after its index, and timed out on none
  | "backup" // a backup, restored, holds the committed state at the index it names
  | "disjoint-majorities" // consecutive committed configurations differ by one voter at most
  | "removed-refusal" // a node that knows it was removed refuses a final read at once
  | "removed-member" // no member of the final configuration counts itself removed
  | "removed-unaware" // a voter or learner removed while down knows it after the final heal
  | "stale-member" // a member that does not know the final leader (added while it was away) catches up
  | "quota" // only writes that add bytes are refused for the quota (never a delete), and a leader
  // admits a new key only while the data it counts (all its term started from) is below it
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
   * asks from its last index (`repeat`: sees a change twice), skips one index (`skip`), or goes on
   * from the index after its last event even when that event's id said more changes of its entry
   * follow (`index`: the protocol before event ids). Default: none.
   */
  watchFault?: "repeat" | "skip" | "index";
  /** Blocking readers (`?index=N&wait=D`). Default: the cluster size minus one. */
  waiters?: number;
  /**
   * A misbehaving blocking reader (guard tests that prove the `blocking-read` check catches it):
   * it asks after the index before the one it saw (`early`: a change it has seen wakes it) or the
   * one after it (`late`: it sleeps through the next change). Default: none.
   */
  waitFault?: "early" | "late";
  /** Readers of backups (`GET /v1/snapshot`). Default 1. */ backupReaders?: number;
  /** Size of the key space. Default 3 (so that clients contend). */ keys?: number;
  /** Ticks without a leader before an election (randomized up to twice that). Default 10. */
  electionTicks?: number;
  /** A client gives up on an operation after this long. Default 3000. */ opTimeoutMs?: number;
  /** After the final heal, the final reads must succeed within this long. Default 20000. */
  livenessMs?: number;
  /** Fraction of client reads sent with the "lease" consistency. Default 0. */
  leaseReads?: number;
  /**
   * Fraction of client writes whose value is longer than a remembered outcome keeps (see
   * `REMEMBERED_VALUE_CHARS`), so that replayed answers leave values out. Default 0; the soak
   * draws it per seed ({@linkcode longValuesForSeed}).
   */
  longValues?: number;
  /** Clients that grant leases, attach keys and keep them alive or abandon them. Default 1. */
  leaseHolders?: number;
  /**
   * Fraction of the lease holders' leases granted with a put of a key (as `?ttl=` does) rather
   * than alone. Default 0.25; 0 draws nothing for it, so a run replays as it did before grants
   * with a put were drawn (the pinned seeds of regression tests keep their runs).
   */
  leasePutGrants?: number;
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
  /**
   * The nodes' `quotaBytes` (0: none). Default: drawn from the seed ({@linkcode quotaForSeed}):
   * small enough to refuse writes for one seed in five, none for the others.
   */
  quotaBytes?: number;
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
  "rangeReadsOk", // range reads (each page), each key the page covered recorded as a read
  "rangePagesCut", // range reads whose page ended before the range did (a limit of one or two keys)
  "rangeNextPages", // pages read from where the page before ended
  "rangeDeletesOk", // deletes of a range of keys acknowledged, each key recorded as a delete
  "casOk", // compare-and-sets that applied (transactions comparing the value included)
  "casFailed", // compare-and-sets whose condition failed (recorded as the read they were)
  "casDeletesOk", // compare-and-sets that deleted their key (on the mod_index, or a transaction)
  "multiTxnsOk", // transactions on three keys whose compares held (two writes and a read)
  "multiTxnsFailed", // ... whose compares did not (two reads)
  "txnAnswersChecked", // answers to transactions checked against the committed log's
  "idempotentRetries", // requests sent again with the idempotency key of an unknown outcome
  "idempotentReplays", // answers that replayed a remembered outcome
  "valuesOmitted", // values read that a replayed answer left out (too long to remember): not recorded
  "historyOps", // operations in the checked history
  "elections", // terms that had a leader
  "maxTerm",
  "maxCommit",
  "crashes", // node crashes (power failures count once per node)
  "powerFailures",
  "tornWrites", // crashes that left part of an unsynced write on disk, cut inside it
  "stops", // graceful stops (RaftNode.stop(), then down like a crash that keeps what was synced)
  "diskFailures", // disks that failed (EIO on every operation) under a running node
  "diskFailureStops", // ... whose node stopped itself on it (a fatal error, then RaftNode.stop())
  "partitions",
  "pauses",
  "messagesSent",
  "messagesDropped", // randomly, to a partition or to a down node
  "messagesUnaddressed", // to a peer the sender had no address for (as the HTTP transport drops them)
  "messagesDuplicated",
  "diskWrites", // log appends and hard-state saves completed
  "snapshotsTaken", // snapshots a node wrote of its own state
  "snapshotsSent", // transfers a leader started
  "snapshotSendsFailed",
  "snapshotsReceived", // snapshots a follower received and stored
  "snapshotsInstalled",
  "snapshotRestarts", // restarts that loaded a snapshot
  "commitFromLog", // restarts whose commit index came from the log's commit records
  "transfers", // leader transfers a leader started
  "transfersDone", // ... that ended with another node leading
  "transfersAborted", // ... abandoned (the target did not take over in time) or given up on
  "transfersReelected", // ... of those, ended by an election the old leader won again
  "leasesGranted", // grants acknowledged to lease holders
  "leasesRaised", // ... asked below the minimum TTL and granted the minimum
  "leasesGrantedWithPut", // leases granted with a put of a key (?ttl=), acknowledged
  "leaseQuotaRefusals", // lease calls (grants) a leader refused as past the quota (a lease counts)
  "leaseTxnPuts", // transactions whose put attached its key to a lease, acknowledged
  "leaseTxnRefused", // ... that named a lease gone (revoked or expired) and did nothing
  "leaseKeepAlives", // keep-alives acknowledged
  "leaseStatusReads", // reads of a lease's status (GET /v1/leases/:id) or of all (GET /v1/leases)
  "leaseStatusGone", // ... of one lease, answered that it does not exist (404)
  "leasesRevoked", // leases ended by a committed revoke entry
  "leasesExpired", // leases ended by a committed expire entry
  "leaseBoundChecks", // expiries checked against the upper bound (a paused or full leader's are not)
  "backupsTaken", // backups (GET /v1/snapshot) taken of a live node
  "backupsRead", // ... read to their end (each restored and checked against the committed state)
  "backupsBroken", // ... whose download broke (their node crashed or stopped, or the run ended)
  "watchEvents", // change events watchers received
  "watchReconnects", // watchers that moved to another node (after a crash, or at random)
  "watchResyncs", // reconnects refused because the history no longer held the index (410)
  "watchCutOffs", // streams a node cut off for falling behind (a small watchBufferEvents)
  "watchBreaks", // watch connections that broke after a few events (the watcher moved on)
  "watchMidEntryResumes", // reconnects asking to go on inside one entry's changes (`N:j` id)
  "blockingReads", // blocking reads (`?index=N&wait=D`) begun
  "blockingChanges", // ... that a change of their key after N woke
  "blockingTimeouts", // ... whose wait ran out
  "blockingAtOnce", // ... answered at once (N older than the history, or no wait)
  "blockingClosed", // ... ended early by their node stopping or installing a snapshot
  "blockingAborted", // ... the reader gave up on, or whose node crashed under them
  "blockingRefused", // ... refused by a node stopping or removed
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
  "diskFulls", // disk-full episodes (one node, the leader, the followers, or every node)
  "noSpaceAlarms", // NOSPACE alarms a node raised (a write refused for lack of space)
  "snapshotsNoRoom", // snapshot transfers a follower refused for want of space (507; its alarm is raised)
  "noSpaceRefusals", // writes a leader refused for a full disk (definitely not applied)
  "peerNoSpaceRefusals", // ... for its followers' full disks, its own having room
  "unsettledRetries", // idempotent retries refused (full disk, quota) with an earlier attempt in the log: unknown
  "refusedRetriesReplayed", // ... whose first outcome the leader remembered: answered with it, nothing proposed
  "quotaRefusals", // writes a leader refused as past the quota (definitely not applied)
  "fullRestarts", // restarts on a full disk (start-up writes no file data: it must succeed)
  "editedFileStarts", // restarts with a cluster file edited to list only the node itself
  "otherClusterBatches", // forged appends from another cluster's node (same member ids) sent to a node
  "otherClusterRefusals", // ... that the node refused (its cluster id differs)
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
    stopRate: 0.3, // not drawn: the draws of the seeds' profiles stay as they were
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
  const made = make();
  // And full disks in a third of the runs, drawn after all of that.
  const full = r() < 0.33;
  const diskFullEveryMs = full ? between(2, 8) * election : 0;
  const maxDiskFullMs = full ? between(1, 6) * election : 0;
  // And failing disks in half the runs (those with crashes), drawn last again.
  const diskFailRate = r() < 0.5 ? 0.25 : 0;
  // And another cluster's appends in a third of the runs, drawn after everything else.
  const otherClusterEveryMs = r() < 0.33 ? between(2, 8) * election : 0;
  // And edited cluster files at restarts in half the runs (those with crashes), drawn last.
  const editedFileRate = r() < 0.5 ? 0.1 : 0;
  return {
    name,
    faults: {
      ...calm,
      ...made,
      transferEveryMs,
      memberEveryMs,
      diskFullEveryMs,
      maxDiskFullMs,
      diskFailRate,
      otherClusterEveryMs,
      editedFileRate,
    },
  };
}

/**
 * Frequent membership changes, leader transfers and long partitions (for three nodes), over the
 * seed's own profile: members are often away while a node joins and then leads, and learners are
 * removed while they are down. Full disks, graceful stops, failing disks and another cluster's
 * appends are off, as when its seeds were first pinned. The members queries' guard test pins seeds
 * of this mix; `deno task seeds:away` finds them anew.
 */
export const AWAY_FAULTS: Readonly<Partial<FaultOptions>> = Object.freeze({
  memberEveryMs: 300,
  partitionEveryMs: 400,
  maxPartitionMs: 6000,
  transferEveryMs: 300,
  diskFullEveryMs: 0,
  stopRate: 0,
  diskFailRate: 0,
  otherClusterEveryMs: 0,
  editedFileRate: 0,
});

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

/**
 * The quota used by default for `seed`: for one seed in five, 16 to 47 bytes and room for one
 * lease (the keys and values of a run are a few bytes each, so writes are refused while deletes
 * make room, and a lease granted while another lives may be refused); else none.
 */
export function quotaForSeed(seed: number): number {
  return seed % 5 === 2 ? 16 + ((seed >>> 3) % 32) + LEASE_BYTES : 0;
}

/** The `longValues` the soak uses for `seed`: one write in five for a quarter of the seeds. */
export function longValuesForSeed(seed: number): number {
  return seededRandom((seed ^ 0x1f83d9ab) >>> 0)() < 0.25 ? 0.2 : 0;
}

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
    ["long-values", o.longValues || undefined],
    ["lease-holders", o.leaseHolders],
    ["lease-put-grants", o.leasePutGrants],
    ["snapshot-threshold", o.snapshotThreshold],
    ["catch-up-entries", o.catchUpEntries],
    ["disk-fault", o.diskFault],
    ["quota-bytes", o.quotaBytes],
    ["watchers", o.watchers],
    ["watch-fault", o.watchFault],
    ["waiters", o.waiters],
    ["wait-fault", o.waitFault],
    ["backup-readers", o.backupReaders],
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

/** A node's metrics registry that hands its count of refused retries answered by replay on. */
class _CountReplays extends MetricsRegistry {
  readonly #into: Counter[];

  constructor(into: Counter[]) {
    super();
    this.#into = into;
  }

  override counter(name: string, help: string): Counter {
    const counter = super.counter(name, help);
    if (name === "raftkv_refused_retries_replayed_total") this.#into.push(counter);
    return counter;
  }
}

/**
 * The engine: the nodes (their storage, clocks and network), the event loop, tracing and failing;
 * the parts of the run reach it as their {@linkcode SimContext}.
 */
class _Simulation implements SimContext {
  readonly opts: SimulationOptions;
  readonly faults: FaultOptions;
  readonly #profile: string;
  readonly rng: () => number;
  readonly keys: string[];
  /** The id the bootstrap members make for the cluster (see `src/node/cluster_id.ts`). */
  readonly clusterId: string;
  readonly quotaBytes: number;
  readonly electionMs: number;
  readonly #disabled: Set<CheckName>;
  readonly #snapshotThreshold: number;
  readonly #catchUpEntries: number;
  readonly #segmentSize: number;
  readonly clock = new SimClock();
  readonly stats = {
    ...Object.fromEntries(COUNTERS.map((k) => [k, 0])),
    linearizability: "ok",
  } as SimulationStats;
  #network!: SimNetwork;
  nodes: SimNode[] = [];
  phase: SimContext["phase"] = "run";
  #failure: SimulationFailure | null = null;
  /** The last lines of the trace (their time and text: made into lines only for a failure). */
  #trace: [number, string][] = [];
  #digest = 0x811c9dc5;
  readonly #checker: Checker;
  readonly #clients: Clients;
  readonly #leases: LeaseHolders;
  readonly #watchers: Watchers;
  readonly #waiters: Waiters;
  readonly #backups: BackupReaders;
  readonly #injector: Faults;
  /** Each node start's count of refused retries answered from remembered outcomes. */
  readonly #replayCounters: Counter[] = [];

  constructor(opts: SimulationOptions) {
    if (opts.nodes !== 3 && opts.nodes !== 5) {
      throw new RangeError(`nodes must be 3 or 5, got ${opts.nodes}`);
    }
    if (!Number.isSafeInteger(opts.seed)) throw new RangeError(`bad seed ${opts.seed}`);
    this.opts = opts;
    const profile = faultProfile(opts.seed);
    const overridden = Object.keys(opts.faults ?? {}).length > 0;
    this.#profile = overridden ? `${profile.name}+overrides` : profile.name;
    this.faults = { ...profile.faults, ...opts.faults };
    this.electionMs = this.faults.tickMs * (opts.electionTicks ?? 10);
    this.rng = seededRandom(opts.seed);
    this.keys = Array.from({ length: opts.keys ?? 3 }, (_, i) => `k${i}`);
    this.quotaBytes = opts.quotaBytes ?? quotaForSeed(opts.seed);
    const ids = Array.from({ length: opts.nodes }, (_, i) => `n${i + 1}`);
    this.clusterId = bootstrapClusterId(ids, "sim");
    this.#injector = new Faults(this);
    this.#checker = new Checker(this, ids, { ended: (...a) => this.#leases.ended(...a) });
    this.#clients = new Clients(this, this.#checker);
    this.#leases = new LeaseHolders(this, this.#checker, this.#clients, this.#injector.stallsOf);
    this.#watchers = new Watchers(this, this.#checker);
    this.#waiters = new Waiters(this, this.#checker);
    this.#backups = new BackupReaders(this, this.#checker);
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
    this.#segmentSize = this.pick([2048, 8192, 65536]);
  }

  async run(): Promise<SimulationResult> {
    try {
      const ids = this.#checker.confs[0]!.voters;
      // With membership changes, two spare nodes that can be added (they start with --join).
      const spares = this.faults.memberEveryMs > 0
        ? [`n${this.opts.nodes + 1}`, `n${this.opts.nodes + 2}`]
        : [];
      this.#network = new SimNetwork({
        faults: this.faults,
        stats: this.stats,
        random: this.rng,
        later: (ms, fn) => this.later(ms, fn),
        note: (text) => this.note(text),
        refused: (detail) => {
          // A node outside the receiver's configuration (removed, or added after it) is refused
          // as a non-member: with membership changes that is expected, like a lost message.
          if (spares.length > 0 && /the sender is not a member/.test(detail)) return;
          this.violation("peer-refusal", detail);
        },
      }, [...ids, ...spares]);
      this.nodes = [...ids, ...spares].map((id) => this.#newNode(id));
      for (const n of this.nodes) n.spare = spares.includes(n.id);
      for (const n of this.nodes) if (!n.spare) this.restart(n);
      const clients = this.opts.clients ?? this.opts.nodes + 1;
      for (let id = 1; id <= clients; id++) this.#clients.start(id, (c) => this.#clients.client(c));
      for (let i = 1; i <= (this.opts.leaseHolders ?? 1); i++) {
        this.#clients.start(clients + i, (c) => this.#leases.holder(c));
      }
      this.#watchers.start(this.opts.watchers ?? this.opts.nodes - 1);
      this.#waiters.start(this.opts.waiters ?? this.opts.nodes - 1);
      this.#backups.start(this.opts.backupReaders ?? 1);
      this.#injector.start(this.#network);
      this.later(this.opts.durationMs, () => this.#finalHeal());

      const maxEvents = 200_000 + this.opts.durationMs * 400;
      await settle();
      while (this.phase !== "done") {
        this.#step();
        // Every promise callback the step set off runs before the checks. Waiting for the
        // runtime's next turn for that (settle) costs more than many a step: one step in 256
        // does, so that the runtime's own work gets its turns; the others wait for the microtask
        // queue to empty only (drain). Nothing simulated waits on the runtime: the run is the same.
        await (this.stats.events % 256 === 0 ? settle() : drain());
        this.#afterStep(maxEvents);
      }
      this.stats.virtualMs = Math.round(this.clock.now());
      // A stream hands on what its node applied a few turns later (a long backlog, many): let the
      // live ones deliver while they make progress (50 turns without an event received end the
      // wait, and a stream that never delivers fails the watch check).
      let idle = 0;
      while (idle < 50 && this.#watchers.pending()) {
        const received = this.stats.watchEvents;
        await settle();
        idle = this.stats.watchEvents > received ? 0 : idle + 1;
      }
      this.#watchers.check();
      await this.#waiters.stopAll();
      this.#waiters.check();
      await this.#backups.stopAll();
      this.#backups.check();
      this.#checker.checkHistory();
      this.stats.refusedRetriesReplayed = this.#replayCounters.reduce((n, c) => n + c.value, 0);
      return {
        profile: this.#profile,
        faults: this.faults,
        snapshotThreshold: this.#snapshotThreshold,
        catchUpEntries: this.#catchUpEntries,
        stats: this.stats,
        digest: (this.#digest >>> 0).toString(16).padStart(8, "0"),
      };
    } finally {
      for (const n of this.nodes) n.clock?.kill();
      this.#watchers.stopAll();
    }
  }

  // (The event loop's two halves are methods of their own, apart from the long async `run`.)

  /** A step of the event loop: the shared clock moves to the next due timer and fires it. */
  #step(): void {
    const due = this.clock.nextDue();
    if (due === null) this.fail("runaway", "no timer is set: the simulation stalled");
    this.mix(Math.floor(due * 1000));
    try {
      this.clock.runUntil(due);
    } catch (e) {
      this.caught(e, "");
    }
  }

  /** After a step, once what it set off settled: the checks, and the parts' own work. */
  #afterStep(maxEvents: number): void {
    if (this.#failure) throw this.#failure;
    for (const n of this.nodes) this.#checker.check(n);
    this.#watchers.tend();
    this.#waiters.tend();
    this.#backups.tend();
    if (++this.stats.events > maxEvents) this.fail("runaway", `over ${maxEvents} steps`);
  }

  /** Runs `fn` after `ms` of shared time, on no node. */
  later(ms: number, fn: () => void): void {
    this.clock.after(ms, fn);
  }

  random(lo: number, hi: number): number {
    return lo + this.rng() * (hi - lo);
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.rng() * items.length)]!;
  }

  // ---- tracing and failing --------------------------------------------------------------------

  mix(value: number): void {
    this.#digest = Math.imul(this.#digest ^ value, 0x01000193);
  }

  note(text: string): void {
    const at = this.clock.now();
    for (let i = 0; i < text.length; i += 7) this.mix(text.charCodeAt(i));
    if (this.#trace.push([at, text]) > 60) this.#trace.shift();
    if (this.opts.onTrace) this.opts.onTrace(_traceLine(at, text));
  }

  fail(check: CheckName, detail: string): never {
    if (this.#failure) throw this.#failure;
    const state = this.nodes.map((n) => {
      const durable = `durable log ${n.durable.length - 1}, snapshot ${n.durableSnap}`;
      if (!n.node) return `  ${n.id}: ${n.starting ? "starting" : "down"} (${durable})`;
      const s = n.node.inspect();
      const paused = n.clock?.paused ? " paused" : "";
      return `  ${n.id}: ${s.role} term ${s.term} leader ${s.leader || "-"} log ` +
        `${s.firstIndex}..${s.lastIndex} commit ${s.commit} applied ${s.applied} (${durable})${paused}`;
    });
    const at = `at virtual time ${this.clock.now().toFixed(3)} ms (profile ${this.#profile})`;
    this.#failure = new SimulationFailure(
      this.opts.seed,
      check,
      `${detail}\n${at}; nodes:\n${state.join("\n")}`,
      replayCommand(this.opts),
      this.#trace.map(([time, text]) => _traceLine(time, text)),
    );
    throw this.#failure;
  }

  violation(check: CheckName, detail: string): void {
    if (!this.#disabled.has(check)) this.fail(check, detail);
  }

  /** Records an error raised where nobody awaits it (a node's callback or promise). */
  caught(e: unknown, where: string): void {
    if (e instanceof SimulationFailure) return;
    try {
      this.fail("node-error", `unexpected error${where}: ${(e as Error)?.stack ?? e}`);
    } catch {
      // Recorded; the event loop throws it.
    }
  }

  // ---- nodes: start, crash, restart -----------------------------------------------------------

  #newNode(id: NodeId): SimNode {
    const n: SimNode = new SimNode(
      id,
      new SimFileSystem({ delay: (op) => this.#diskDelay(n, op) }),
    );
    n.fs.faults.ackBeforeSync = this.opts.diskFault === "ack-before-sync";
    if (this.opts.diskFault === "forget-synced") {
      n.fs.faults.forgetLastSynced = (path) => path.endsWith(".wal");
    }
    return n;
  }

  /** Syncs take a disk delay on the node's clock (so a paused node's disk waits too). */
  #diskDelay(n: SimNode, op: string): Promise<void> | void {
    const clock = n.clock;
    if ((op !== "sync" && op !== "syncDir") || !clock) return;
    const ms = this.random(this.faults.minDiskMs, this.faults.maxDiskMs);
    return new Promise((resolve) => clock.schedule(ms, resolve));
  }

  restart(n: SimNode): void {
    if (n.node || n.starting) return;
    n.starting = true;
    const inc = ++n.inc;
    const skew = this.faults.clockSkew;
    const clock = new NodeClock(this.clock, 1 + this.random(-skew, skew), (e) => {
      this.caught(e, ` on ${n.id}`);
    });
    n.clock = clock;
    n.wallBase = this.clock.now();
    if (n.diskFull) this.stats.fullRestarts++;
    const seed = Math.floor(this.rng() * 2 ** 32);
    this.note(`${n.id} starts (incarnation ${inc})`);
    this.#open(n, inc, clock, seed).catch((e) => this.caught(e, ` starting ${n.id}`));
  }

  async #open(n: SimNode, inc: number, clock: NodeClock, seed: number): Promise<void> {
    const paths = {
      walDir: "/data/wal",
      raftStatePath: "/data/raft_state.json",
      logMetadataPath: "/data/log_metadata.json",
      snapshotDir: "/data/snapshots",
    };
    const bootstrap = this.nodes.filter((m) => !m.spare).map((m) => m.id);
    const edited = n.editedFile;
    n.editedFile = false;
    let inner;
    try {
      inner = await openDiskStorage(paths, {
        fs: n.fs,
        nodeId: n.id,
        // A bootstrap member makes the cluster's id from the members, as main.ts does; a spare
        // joins, and learns it from the first member that writes to it.
        // With the voters it records at its first start (main.ts: the cluster file's members).
        ...(n.spare ? {} : { clusterId: this.clusterId, initialVoters: bootstrap }),
        segmentSize: this.#segmentSize,
      });
    } catch (e) {
      if (n.inc !== inc) return; // crashed again while recovering
      // Seen from outside, a node that refuses to start is a node that never comes back (start-up
      // writes no file data, so a full disk is no excuse): with the internal recovery check
      // disabled, it is reported as the liveness failure a user would see.
      const check = this.#disabled.has("recovery") ? "liveness" : "recovery";
      this.fail(check, `${n.id} cannot start: ${(e as Error)?.message ?? e}`);
    }
    if (n.inc !== inc) return;
    this.#checker.checkRecovered(n, inner);
    const log = (level: string) => (...args: unknown[]) => {
      if (n.inc !== inc) return;
      this.note(`${n.id} ${level}: ${args.map((a) => (a as Error)?.message ?? a).join(" ")}`);
    };
    const { tickMs } = this.faults;
    // main.ts asks to join only with no data (see #askToJoin).
    const empty = inner.snapshot === null && inner.entries.length === 0;
    // The bootstrap configuration (the cluster file); a spare's lists only itself: it joins (and
    // never bootstraps), and knows the others' addresses only as the join's answer and the
    // configuration give them.
    const members = this.nodes.filter((m) => n.spare || edited ? m === n : !m.spare)
      .map((m) => ({ id: m.id, rpcUrl: `sim://${m.id}`, apiUrl: m.id }));
    const node = new RaftNode({
      id: n.id,
      members,
      join: n.spare,
      storage: this.#watchStorage(n, inc, clock, inner),
      transport: (handlers) =>
        this.#network.connect(
          n.id,
          clock,
          handlers,
          members.filter((m) => m.id !== n.id).map((m) => m.id),
        ),
      clock,
      heartbeatMs: tickMs,
      electionTimeoutMs: this.electionMs,
      seed,
      snapshotThreshold: this.#snapshotThreshold || Number.MAX_SAFE_INTEGER,
      snapshotThresholdBytes: Number.MAX_SAFE_INTEGER,
      snapshotCatchUpEntries: this.#catchUpEntries,
      // The leader's wall clock, stamped into idempotent writes: the node's own (skewed) clock.
      wallClock: () => _WALL_CLOCK_ORIGIN + n.wallBase + clock.now(),
      // Short enough that outcomes expire within a run, long enough for every retry.
      idempotencyTtlMs: 10_000,
      maxIdempotencyKeys: 1000,
      watchHistoryEvents: this.#watchers.historyEvents,
      watchHistoryBytes: this.#watchers.historyBytes,
      quotaBytes: this.quotaBytes,
      onFatal: (e) => {
        if (n.inc !== inc) return;
        if (n.diskFailed && _isIoError(e)) this.#stopOnFailedDisk(n, inc);
        else this.caught(e, ` (fatal) on ${n.id}`);
      },
      logger: { info: log("info"), warn: log("warn"), error: log("error"), debug: () => {} },
      metrics: new _CountReplays(this.#replayCounters),
    });
    [n.node, n.starting, n.lastCommit, n.lastApplied, n.seen] = [node, false, 0, -1, [0]];
    n.alarm = false;
    node.start();
    if (n.spare && empty) this.#askToJoin(n, inc);
    if (edited) this.#putFileRight(n, inc);
  }

  /**
   * A node started with an edited cluster file (see `editedFileRate`): the operator puts the file
   * right, stops the node and starts it again, within `maxDowntimeMs` of its time.
   */
  #putFileRight(n: SimNode, inc: number): void {
    n.clock!.schedule(this.random(50, Math.max(100, this.faults.maxDowntimeMs)), () => {
      if (n.inc !== inc || !n.node) return;
      this.note(`${n.id}: its cluster file is put right; restarting it`);
      this.stop(n).then((down) => down && this.restart(n))
        .catch((e) => this.caught(e, ` stopping ${n.id}`));
    });
  }

  /**
   * A spare started with no data: main.ts, started with --join, asks to be added until it hears
   * an answer, which lists the members (their addresses) and names the cluster. The membership
   * change that adds it stands for the first request, and its outcome for the answer; when that
   * outcome is lost (the change timed out, the node restarted before it heard it), the request
   * asked again is answered that it is a member already, with the same list. Asked every second
   * of the node's time until a live member lists it.
   */
  #askToJoin(n: SimNode, inc: number): void {
    n.clock!.schedule(1_000, () => {
      if (n.inc !== inc || !n.node || n.joinAnswered === inc) return;
      for (const m of this.nodes) {
        if (m === n || !m.node) continue;
        const members = m.node.membership.list();
        if (!members.some((x) => x.node_id === n.id)) continue;
        n.node.learnAddresses(
          members.map((x) => ({ id: x.node_id, rpcUrl: x.rpc_url, apiUrl: x.api_url })),
        );
        const cluster = m.node.status().cluster_id;
        if (cluster !== undefined) n.node.confirmCluster(cluster, m.id);
        n.joinAnswered = inc;
        return;
      }
      this.#askToJoin(n, inc);
    });
  }

  /**
   * The storage as the node sees it: the real one, with the calls that make something durable
   * reporting it when they complete (and the storage-seam {@linkcode DiskFault}s injected).
   */
  #watchStorage(n: SimNode, inc: number, clock: NodeClock, inner: DiskStorage): NodeStorage {
    const live = () => n.inc === inc;
    const fault = this.opts.diskFault;
    if (fault === "install-without-reset") {
      // Only an install writes a reset record once the storage is open (start-up's repair of a
      // log behind its snapshot already ran), so this drops exactly the install's commit point.
      inner.wal.reset = () => Promise.resolve();
    }
    const fatal = (write: Promise<void>) =>
      fault !== "nospace-fatal" ? write : write.catch((e) => {
        // Not the no-space message: isNoSpace also recognises errors by it.
        throw isNoSpace(e) ? new Error("disk write failed: input/output error") : e;
      });
    const overrides: Partial<NodeStorage> = {
      ...(fault === "forget-cluster-id" ? { clusterId: undefined, adoptClusterId: () => {} } : {}),
      ...(fault === "forget-initial-voters" ? { initialVoters: undefined } : {}),
      saveSnapshot: async (meta, count, pairs) => {
        if (fault === "snapshot-without-addresses") {
          const { info: _, ...bare } = meta;
          return inner.saveSnapshot(bare, count, pairs);
        }
        if (fault !== "snapshot-live-state") return inner.saveSnapshot(meta, count, pairs);
        // Let the node apply more entries (up to 10 ticks), then write its live data instead.
        for (let i = 0; i < 10 && (n.node?.inspect().applied ?? 0) <= meta.index; i++) {
          await new Promise<void>((resolve) => clock.schedule(this.faults.tickMs, resolve));
        }
        if (!live() || !n.node) return;
        const leaky = [...n.node.inspect().entries()];
        const leases = pairs.leases ?? [];
        await inner.saveSnapshot(meta, leaky.length, { entries: leaky, sessions: [], leases });
      },
      append: async (entries, commit) => {
        for (const e of entries) this.#checker.noteSeen(e.index, e.term);
        const from = entries[0]?.index ?? Infinity;
        n.writingFrom = Math.min(n.writingFrom, from);
        await fatal(inner.append(entries, commit));
        if (!live()) return;
        n.writingFrom = Infinity;
        if (entries.length > 0) n.durable.length = Math.min(n.durable.length, from);
        for (const e of entries) n.durable[e.index] = e.term;
        this.stats.diskWrites++;
      },
      saveHardState: async (hs) => {
        await fatal(inner.saveHardState(hs));
        if (!live()) return;
        n.durableHs = { ...hs };
        this.stats.diskWrites++;
      },
      snapshotTaken: async (meta, compactTo) => {
        await inner.snapshotTaken(meta, compactTo);
        if (fault === "compact-past-snapshot") await inner.wal.compact(inner.wal.lastIndex);
        if (!live()) return;
        n.durableSnap = Math.max(n.durableSnap, meta.index);
        this.stats.snapshotsTaken++;
      },
      installReceived: async (meta) => {
        n.writingFrom = 0;
        await inner.installReceived(meta);
        if (!live()) return;
        n.writingFrom = Infinity;
        n.durable = Array.from({ length: meta.index + 1 }, (_, i) => i === 0 ? 0 : -1);
        n.durableSnap = meta.index;
        this.stats.snapshotsInstalled++;
      },
    };
    // Each method bound once (the node reaches its storage many times a step).
    const bound = new Map<unknown, unknown>();
    return new Proxy(inner, {
      get: (target, prop) => {
        const value = Object.hasOwn(overrides, prop)
          ? (overrides as Record<PropertyKey, unknown>)[prop]
          : Reflect.get(target, prop);
        if (typeof value !== "function") return value;
        if (!bound.has(value)) bound.set(value, value.bind(target));
        return bound.get(value);
      },
    });
  }

  crash(n: SimNode, why: string): void {
    if (!n.node && !n.starting) return;
    this.stats.crashes++;
    const keep = this.rng() < this.faults.tornWriteRate;
    const keepUnsyncedEntries = keep && this.rng() < 0.5;
    this.#down(n, keep ? this.rng : undefined, keepUnsyncedEntries);
    const notes = n.fs.crashNotes;
    if (notes.some((t) => t.includes("of the next write"))) this.stats.tornWrites++;
    this.note(`CRASH ${n.id} (${why})${notes.length ? `: ${notes.join("; ")}` : ""}`);
  }

  async stop(n: SimNode): Promise<boolean> {
    const node = n.node;
    if (!node) return false;
    const inc = n.inc;
    this.stats.stops++;
    this.note(`STOP ${n.id}`);
    await node.stop();
    if (n.inc !== inc) return false; // it crashed while stopping
    this.#down(n, undefined, false);
    this.note(`${n.id} stopped`);
    return true;
  }

  /**
   * After `n` stopped itself on its failed disk (a fatal error): `RaftNode.stop()`, as main.ts
   * does (it answers what waits on the node and closes its storage), then down as in a crash; it
   * restarts later on the disk mounted again.
   */
  #stopOnFailedDisk(n: SimNode, inc: number): void {
    const node = n.node;
    if (!node) return;
    this.stats.diskFailureStops++;
    this.note(`${n.id} stops after a fatal error on its failed disk`);
    node.stop().then(() => {
      if (n.inc !== inc) return; // crashed meanwhile (the final heal)
      this.crash(n, "disk failure");
      this.#injector.restartLater(n);
    }, (e) => this.caught(e, ` stopping ${n.id} after its disk failed`));
  }

  /** Takes `n` down: its disk keeps what was synced (and, with `rng`, part of the rest). */
  #down(n: SimNode, rng: (() => number) | undefined, keepUnsyncedEntries: boolean): void {
    n.clock?.kill();
    [n.clock, n.node, n.starting] = [null, null, false];
    n.inc++;
    // A crash while starting (before the recovery check ran) must not forget a write that was
    // in flight at an earlier crash: its bytes may still be in the disk image.
    n.crashWritingFrom = Math.min(n.crashWritingFrom, n.writingFrom);
    n.writingFrom = Infinity;
    n.fs = n.fs.crash(rng, { keepUnsyncedEntries });
    n.diskFailed = false; // the crash image is the disk mounted again
  }

  /** The node that leads the highest term, if any. */
  leader(): SimNode | null {
    const leaders = this.nodes.filter((n) => n.node?.inspect().role === "leader");
    return leaders.sort((a, b) => b.node!.inspect().term - a.node!.inspect().term)[0] ?? null;
  }

  sleep(ms: number): Promise<null> {
    return new Promise((resolve) => this.later(ms, () => resolve(null)));
  }

  #finalHeal(): void {
    this.phase = "drain";
    this.#injector.heal();
    this.note("FINAL HEAL: partitions healed, paused nodes resume, crashed nodes restart");
    for (const n of this.nodes) {
      n.clock?.resume();
      if (!n.spare || n.added) this.restart(n);
    }
    this.#clients.done();
  }
}

/** A line of the trace: the shared time, then the text. */
function _traceLine(at: number, text: string): string {
  return `${at.toFixed(3).padStart(10)}  ${text}`;
}

/** Whether `error`, or an error it was caused by, is an I/O error (EIO) from the disk. */
function _isIoError(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if ((e as { code?: unknown }).code === "EIO") return true;
  }
  return false;
}

/** The shared clock's origin as wall time (a leader stamps idempotent writes with it). */
const _WALL_CLOCK_ORIGIN = 1_700_000_000_000;
