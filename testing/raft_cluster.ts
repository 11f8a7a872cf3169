/**
 * A tiny synchronous in-memory cluster for the core's unit tests: ticks by hand, delivers
 * messages in order, persists instantly. (The simulation of whole nodes, with faults, is in testing/sim/.)
 *
 * @module
 */

import { type RaftConfig, RaftCore } from "../src/raft/raft.ts";
import { seededRandom } from "../src/raft/rand.ts";
import {
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType,
  type NodeId,
} from "../src/raft/types.ts";

/** Decides whether a message is delivered (true/false), or delivers a replacement. */
export type Filter = (m: Message) => boolean | Message;

/** Recovered state for one node of a test cluster. */
export interface NodeSetup {
  /** Log terms, one per index starting at 1. */
  terms?: number[];
  /** Recovered hard state. */
  hardState?: HardState;
}

/** Builds entries with the given terms at indices 1..n. */
export function entriesWithTerms(terms: number[]): Entry[] {
  return terms.map((term, i) => ({
    term,
    index: i + 1,
    type: EntryType.Normal,
    data: new TextEncoder().encode(`${i + 1}@${term}`),
  }));
}

/** A set of cores wired through a message queue. */
export class TestCluster {
  /** The cores, by node id, in the order of the ids given to the constructor. */
  readonly nodes = new Map<NodeId, RaftCore>();
  /** Entries each node applied, in order. */
  readonly applied = new Map<NodeId, Entry[]>();
  /** Nodes currently crashed/isolated: they neither send nor receive. */
  readonly down = new Set<NodeId>();
  /** Extra delivery filter (return false to drop). */
  filter: Filter = () => true;
  /** Every message ever sent (for assertions). */
  readonly sent: Message[] = [];
  /** Snapshots taken, by index: the applied entries they stand for. */
  readonly snapshots = new Map<number, Entry[]>();
  #queue: Message[] = [];

  /** Creates `ids.length` nodes with seeds derived from `seed`. */
  constructor(
    ids: NodeId[],
    seed = 1,
    setups: Record<NodeId, NodeSetup> = {},
    extra: Partial<RaftConfig> = {},
  ) {
    ids.forEach((id, i) => {
      const setup = setups[id] ?? {};
      const entries = entriesWithTerms(setup.terms ?? []);
      const lastTerm = entries.at(-1)?.term ?? 0;
      const core = new RaftCore({
        id,
        voters: ids,
        random: seededRandom(seed * 1000 + i),
        hardState: setup.hardState ?? { term: lastTerm, vote: "", commit: 0 },
        entries,
        ...extra,
      });
      this.nodes.set(id, core);
      this.applied.set(id, []);
    });
  }

  /** The node named `id`. */
  node(id: NodeId): RaftCore {
    const n = this.nodes.get(id);
    if (!n) throw new RangeError(`no node "${id}"`);
    return n;
  }

  /** Collects every node's Ready: persists instantly, applies, queues messages. */
  flushReadies(): void {
    for (const [id, core] of this.nodes) {
      if (this.down.has(id)) continue;
      while (core.hasReady()) {
        const rd = core.ready();
        if (rd.snapshot) {
          const data = this.snapshots.get(rd.snapshot.index);
          if (!data) throw new Error(`no snapshot at ${rd.snapshot.index}`);
          this.applied.set(id, [...data]);
        }
        this.#queueAll(rd.messages.filter((m) => m.type !== MessageType.Snap));
        for (const m of rd.messages.filter((m) => m.type === MessageType.Snap)) {
          // The snapshot's bytes travel beside the message; here they arrive at once.
          this.#queueAll([m]);
          queueMicrotask(() => core.reportSnapshot(m.to, !this.down.has(m.to)));
        }
        const last = rd.entries.at(-1);
        if (last) core.persisted(last.index, last.term);
        this.#queueAll(rd.persistedMessages);
        this.applied.get(id)!.push(...rd.committedEntries);
      }
    }
  }

  #queueAll(msgs: Message[]): void {
    for (const m of msgs) {
      this.sent.push(m);
      this.#queue.push(m);
    }
  }

  /** Delivers messages (and the Readies they cause) until nothing is left in flight. */
  stabilize(maxRounds = 10_000): void {
    for (let round = 0; round < maxRounds; round++) {
      this.flushReadies();
      if (this.#queue.length === 0) return;
      const batch = this.#queue;
      this.#queue = [];
      for (const m of batch) {
        if (this.down.has(m.from) || this.down.has(m.to)) continue;
        const verdict = this.filter(m);
        if (verdict === false) continue;
        const refused = this.nodes.get(m.to)?.step(verdict === true ? m : verdict) ?? null;
        if (refused !== null && verdict === true) {
          // Messages between correct nodes are never refused, whatever the delivery order.
          throw new Error(`a correct message was refused: ${refused}`);
        }
      }
    }
    throw new Error(`cluster did not stabilize in ${maxRounds} rounds`);
  }

  /** Ticks every live node `n` times, stabilizing after each tick. */
  tick(n = 1): void {
    for (let i = 0; i < n; i++) {
      for (const [id, core] of this.nodes) if (!this.down.has(id)) core.tick();
      this.stabilize();
    }
  }

  /** Takes a snapshot of `id`'s applied state and compacts its log up to `compactTo`. */
  takeSnapshot(id: NodeId, compactTo?: number): number {
    const core = this.node(id);
    const applied = this.applied.get(id)!;
    const index = core.log.applied;
    this.snapshots.set(index, applied.filter((e) => e.index <= index));
    core.snapshotSaved({ index, term: core.log.term(index)!, voters: [...core.voters] }, compactTo);
    return index;
  }

  /** The live leaders. */
  leaders(): RaftCore[] {
    return [...this.nodes.entries()]
      .filter(([id, c]) => !this.down.has(id) && c.role === "leader")
      .map(([, c]) => c);
  }

  /** Ticks until exactly one live leader exists; returns it. */
  electLeader(maxTicks = 200): RaftCore {
    for (let i = 0; i < maxTicks; i++) {
      const ls = this.leaders();
      const top = Math.max(0, ...ls.map((l) => l.term));
      const current = ls.filter((l) => l.term === top);
      if (current.length === 1 && ls.length === 1) return current[0]!;
      this.tick();
    }
    throw new Error(`no single leader after ${maxTicks} ticks`);
  }

  /** Proposes `text` on the leader and stabilizes. */
  propose(leader: RaftCore, text: string): { index: number; term: number } {
    const r = leader.propose(new TextEncoder().encode(text));
    this.stabilize();
    return r;
  }

  /** The log terms of a node, index 1 onwards. */
  terms(id: NodeId): number[] {
    const log = this.node(id).log;
    const out: number[] = [];
    for (let i = log.firstIndex(); i <= log.lastIndex(); i++) out.push(log.term(i)!);
    return out;
  }

  /** The application payloads a node applied, as text. */
  appliedText(id: NodeId): string[] {
    return this.applied.get(id)!.filter((e) => e.type === EntryType.Normal).map((e) =>
      new TextDecoder().decode(e.data)
    );
  }
}
