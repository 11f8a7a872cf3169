/**
 * What the parts of the simulation share: the {@linkcode SimContext} the engine in `simulator.ts`
 * implements, and the record of one node ({@linkcode SimNode}).
 *
 * @module
 */

import type { RaftNode } from "../../src/node/raft_node.ts";
import type { HardState, NodeId } from "../../src/raft/types.ts";
import type { SimClock } from "../sim_clock.ts";
import type { SimFileSystem } from "../sim_fs.ts";
import type { NodeClock } from "./node_clock.ts";
import type { CheckName, FaultOptions, SimulationOptions, SimulationStats } from "./simulator.ts";

/** What the simulation knows about one node, across its incarnations. */
export class SimNode {
  /** The running incarnation and its clock; null while down (the node also while starting). */
  node: RaftNode | null = null;
  /** The running incarnation's clock. */
  clock: NodeClock | null = null;
  /** Counts incarnations; anything from an older one is ignored. */
  inc = 0;
  /** Whether its storage is being opened. */
  starting = false;
  /** The highest commit index this incarnation reported. */
  lastCommit = 0;
  /** The applied index this incarnation reported. */
  lastApplied = 0;
  /** Terms of the entries last seen in its log, by index (for log matching). */
  seen = [0];
  /**
   * What the storage told the node is durable: the term of each log entry, the snapshot index
   * and the hard state. A crash must keep all of it (see the `recovery` check).
   */
  durable = [0];
  /** The index of the snapshot the storage acknowledged as durable. */
  durableSnap = 0;
  /** The hard state the storage acknowledged as durable. */
  durableHs: HardState = { term: 0, vote: "", commit: 0 };
  /** The first index an append or install in flight may change (Infinity when none). */
  writingFrom: number = Infinity;
  /** The same, frozen at a crash: the lowest over the crashes since the last recovery check. */
  crashWritingFrom: number = Infinity;
  /** The shared time this incarnation's clock started at (its wall clock counts from there). */
  wallBase = 0;
  /** A spare node: not in the bootstrap configuration; it starts with --join when added. */
  spare = false;
  /** Whether a membership change ever asked to add it (a spare never added never starts). */
  added = false;
  /** The incarnation of a spare that heard the answer to its join (the members' addresses). */
  joinAnswered = 0;
  /** Whether its disk is full (a disk-full episode is in force on it). */
  diskFull = false;
  /** Whether its disk failed (EIO on every operation) under its running incarnation. */
  diskFailed = false;
  /** Whether its running incarnation had the NOSPACE alarm up when last checked. */
  alarm = false;
  /**
   * Whether its next start reads a cluster file edited to list only itself (an operator's
   * mistake: `editedFileRate`); the file is put right at the start after that.
   */
  editedFile = false;

  /** A node that has not started yet, with an empty disk (replaced by its image at a crash). */
  constructor(readonly id: NodeId, public fs: SimFileSystem) {}
}

/**
 * A client: its id, the index of the node it believes leads (-1: none), whether it reads last,
 * and what it last saw of each key (its mod_index and value; absent: 0 and null).
 */
export type SimClient = {
  id: number;
  hint: number;
  final: boolean;
  seen?: Map<string, { modIndex: number; value: string | null }>;
};

/**
 * The run as its parts see it. Every random draw goes through `rng` (or `random`, `pick`), in
 * the order the parts make them: the order is the run.
 */
export interface SimContext {
  /** The options of the run. */ readonly opts: SimulationOptions;
  /** The fault mix. */ readonly faults: FaultOptions;
  /** The counters. */ readonly stats: SimulationStats;
  /** The shared clock. */ readonly clock: SimClock;
  /** The key space. */ readonly keys: readonly string[];
  /** The nodes' quota on the data in bytes (0: none). */ readonly quotaBytes: number;
  /** Every node, spares included. */ readonly nodes: readonly SimNode[];
  /** The run's random source. */ readonly rng: () => number;
  /** The election timeout (its lower bound). */ readonly electionMs: number;
  /** Where the run is: clients and faults active, then the final heal, reads and convergence. */
  phase: "run" | "drain" | "final" | "converge" | "done";
  /** A number in [lo, hi). */ random(lo: number, hi: number): number;
  /** One of `items`. */ pick<T>(items: readonly T[]): T;
  /** Runs `fn` after `ms` of shared time, on no node. */ later(ms: number, fn: () => void): void;
  /** Resolves with null after `ms` of shared time. */ sleep(ms: number): Promise<null>;
  /** Adds a line to the trace. */ note(text: string): void;
  /** Mixes a value into the digest. */ mix(value: number): void;
  /** Fails the run. */ fail(check: CheckName, detail: string): never;
  /** Fails the run unless `check` is disabled. */ violation(
    check: CheckName,
    detail: string,
  ): void;
  /** Records an error raised where nobody awaits it. */ caught(e: unknown, where: string): void;
  /** The node that leads the highest term, if any. */ leader(): SimNode | null;
  /** Starts a node that is down. */ restart(n: SimNode): void;
  /** Crashes a node: it keeps what its disk keeps. */ crash(n: SimNode, why: string): void;
  /**
   * Stops a running node gracefully, then takes it down keeping what was synced; resolves with
   * whether it went down so (not if it crashed meanwhile, or was not running).
   */
  stop(n: SimNode): Promise<boolean>;
}

/**
 * Whether `n` runs, is not paused, and knows it was removed (its configuration leaves it out)
 * while not leading: it must then refuse client requests at once.
 */
export function knowsRemoved(n: SimNode): boolean {
  if (!n.node || n.clock?.paused === true) return false;
  return n.node.status().membership === "removed" && n.node.inspect().role !== "leader";
}

/** The nodes of the newest configuration the nodes hold (the highest conf index wins). */
export function currentMembers(nodes: readonly SimNode[]): Set<NodeId> {
  let best: { index: number; ids: string[] } | null = null;
  for (const n of nodes) {
    if (!n.node) continue;
    const list = n.node.membership.list();
    const index = n.node.inspect().lastIndex;
    if (list.length > 0 && (best === null || index > best.index)) {
      best = { index, ids: list.map((m) => m.node_id) };
    }
  }
  return new Set(best?.ids ?? nodes.filter((n) => !n.spare).map((n) => n.id));
}
