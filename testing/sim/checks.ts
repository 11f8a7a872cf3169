/**
 * The invariant checks listed in `simulator.ts`'s module doc: per step (against a record of what
 * was committed and a reference model fed the committed log), at a restart, and at the end.
 *
 * @module
 */

import type { NodeInspection, NodeStorage } from "../../src/node/raft_node.ts";
import type { LeaseStatus } from "../../src/node/backend.ts";
import {
  compareKeys,
  decodeCommand,
  type KvCommand,
  type KvEntry,
  type KvResult,
  LEASE_BYTES,
  REMEMBERED_VALUE_CHARS,
} from "../../src/kv/state_machine.ts";
import { decodeConfState, type Entry, EntryType, type NodeId } from "../../src/raft/types.ts";
import {
  checkLinearizability,
  describeHistory,
  type Operation,
} from "../../src/check/linearizability.ts";
import { KvModel } from "../kv_model.ts";
import { utf8Length } from "../../src/util/utf8.ts";
import { currentMembers, type SimContext, type SimNode } from "./context.ts";
import type { LeaseHolders } from "./leases.ts";

type _Committed = { term: number; hash: number; data: Uint8Array | null; knownIn: number };

/** The record of what was committed, the reference state, the client history, and the checks. */
export class Checker {
  readonly #ctx: SimContext;
  readonly #leases: Pick<LeaseHolders, "ended">;
  /** term -> id of its leader. */
  readonly leaders = new Map<number, NodeId>();
  /** The committed configurations: (index, voters), the bootstrap one first. */
  readonly confs: { index: number; voters: string[] }[];
  /** Members counted as not knowing the leader when convergence began (each must catch up). */
  #staleNoted = new Set<NodeId>();
  /** (index, term) -> hash of the entry, as first seen in any log. */
  #entryHash = new Map<number, number>();
  /**
   * The committed entries by index as first seen (holes where no node showed one yet), with the
   * term in which each was first known committed.
   */
  #committed: (_Committed | undefined)[] = [{ term: 0, hash: 0, data: null, knownIn: 0 }];
  #maxCommit = 0;
  /** The reference state: the model after applying the committed entries up to `refIndex`. */
  #ref = new KvModel();
  /** The index the reference state reached. */
  refIndex = 0;
  /** The client history: every operation with a known or unknown outcome. */
  readonly history: Operation[] = [];
  /** Acknowledged writes ("key=value") -> the node and the index it gave, for failure messages. */
  readonly acked = new Map<string, string>();
  /**
   * Range reads (a page each) to check once the reference reaches their index: the index, the keys
   * the page covered and what it held for them.
   */
  readonly rangeReads: { index: number; keys: readonly string[]; state: string; what: string }[] =
    [];
  /**
   * Every answer a node gave to a transaction: the index it named, the answer (`txnAnswer`) and
   * whether it was a replay (only a replay may leave a long value out).
   */
  readonly txnAnswers: { index: number; answer: string; replayed: boolean; what: string }[] = [];
  /**
   * Every failed compare-and-set answered with its key's value left out: the index it named, the
   * entry it gave and whether it was a replay. Only a replay may, of a value too long to remember,
   * and the rest of the entry must be the committed log's at that index.
   */
  readonly omittedReads: {
    index: number;
    key: string;
    entry: KvEntry;
    replayed: boolean;
    what: string;
  }[] = [];
  /**
   * The committed log's answer to each transaction it applied (`txnAnswer`), by index, and, when
   * it read a value too long to remember, as a replay of it gives it (`txnAnswer(r, true)`).
   */
  #refTxns = new Map<number, string>();
  #refTxnsReplayed = new Map<number, string>();
  /**
   * Every answered read of one lease's status (`id`) or of all (`id` null): what it gave (null:
   * not found), and the highest commit any node knew when it was sent (`lo`) and answered (`hi`).
   */
  readonly leaseReads: {
    id: number | null;
    answer: LeaseStatus[] | null;
    lo: number;
    hi: number;
    what: string;
  }[] = [];
  /** The reference's leases after each index: [id, ttl, keys in key order] by id, as a string. */
  #refLeaseTables: string[] = ["[]"];
  /** Every idempotency key clients sent, with the indexes their definite answers named. */
  readonly idemAnswers = new Map<string, Set<number>>();
  /**
   * The reference state after each index: every key's entry (in the order of the run's keys, null
   * when absent; the model never changes an entry it made) and how many idempotent outcomes it
   * remembered. Kept as they are, not as {@linkcode Checker.state}'s string: the nodes' states
   * are compared with them field by field, and the string is made only when one is asked for.
   */
  #refEntries: (KvEntry | null)[][] = [];
  #refRemembered: number[] = [];
  /** {@linkcode Checker.state} of the reference state at an index, once asked for. */
  #refStates: string[] = [];
  /** After each index: the lease of every key (in key order, null: none), the number of leases. */
  #refLeases: { of: (number | null)[]; count: number }[] = [];
  /** The UTF-8 bytes of the reference state's keys and values after each index. */
  #refBytes: number[] = [0];
  /**
   * When each (index, term) was first seen in a log, or handed to a node's storage to append,
   * whichever came first (key: index * 2^20 + term): a leader that proposes an entry and dies of
   * its failed disk in the same step is never seen holding it, yet proposed it then.
   */
  readonly firstSeen = new Map<number, number>();

  /** Notes that an entry exists now, if it was not seen before (see {@linkcode firstSeen}). */
  noteSeen(index: number, term: number): void {
    const key = index * 1_048_576 + term;
    if (!this.firstSeen.has(key)) this.firstSeen.set(key, this.#ctx.clock.now());
  }
  /** When each term's leader was first seen leading. */
  readonly leaderSince = new Map<number, number>();
  /** When an entry of each term was first known committed (its leader then applies the log). */
  readonly termCommitted = new Map<number, number>();
  /**
   * The reference state over its current term's span (from the index before the term's first
   * entry): per key, the most bytes the key held and the fewest bytes the rest of the data
   * held; and the fewest bytes of all the data (see #checkAdmitted).
   */
  #termSpan = {
    term: 0,
    mostHeld: new Map<string, number>(),
    leastRest: new Map<string, number>(),
    leastBytes: Infinity,
  };
  /** The changes each committed index made to the reference state, in key order. */
  readonly refChanges: { type: string; k: string; v: string | null }[][] = [[]];

  /** Starts the record at the bootstrap `voters`; `leases` hears of leases that end. */
  constructor(ctx: SimContext, voters: string[], leases: Pick<LeaseHolders, "ended">) {
    [this.#ctx, this.#leases, this.confs] = [ctx, leases, [{ index: 0, voters }]];
    this.#refEntries[0] = ctx.keys.map(() => null);
    this.#refRemembered[0] = 0;
    this.#refLeases[0] = { of: ctx.keys.map(() => null), count: 0 };
  }

  /** The recovered state must hold everything the node was told was durable before it crashed. */
  checkRecovered(n: SimNode, rec: NodeStorage): void {
    const snapIndex = rec.snapshot?.index ?? 0;
    if (snapIndex > 0) this.#ctx.stats.snapshotRestarts++;
    const terms: number[] = [0];
    for (const e of rec.entries) terms[e.index] = e.term;
    // The entries an append in flight at the crash may have changed are not owed.
    const owed = Math.min(n.durable.length - 1, n.crashWritingFrom - 1);
    for (let i = Math.max(1, snapIndex + 1, n.durableSnap + 1); i <= owed; i++) {
      const want = n.durable[i];
      if (want === undefined || terms[i] === want) continue;
      const found = terms[i] === undefined ? "nothing" : `term ${terms[i]}`;
      this.#ctx.violation(
        "recovery",
        `${n.id} lost entry ${i} (term ${want}) that its storage had acknowledged: after the ` +
          `restart its log holds ${found} there (snapshot ${snapIndex}, log to ${
            rec.entries.at(-1)?.index ?? snapIndex
          })`,
      );
    }
    if (snapIndex < Math.min(n.durableSnap, n.crashWritingFrom - 1)) {
      this.#ctx.violation(
        "recovery",
        `${n.id} restarted from the snapshot at ${snapIndex} but had stored one at ${n.durableSnap}`,
      );
    }
    const [hs, was] = [rec.hardState, n.durableHs];
    if (hs.term < was.term || (hs.term === was.term && was.vote !== "" && hs.vote !== was.vote)) {
      this.#ctx.violation(
        "recovery",
        `${n.id} restarted with term ${hs.term} vote "${hs.vote}" but had stored term ${was.term} ` +
          `vote "${was.vote}"`,
      );
    }
    if (hs.commit > Math.max(was.commit, snapIndex)) this.#ctx.stats.commitFromLog++;
    n.durable = terms;
    for (let i = 1; i <= snapIndex; i++) n.durable[i] ??= -1;
    [n.durableSnap, n.durableHs] = [snapIndex, { ...hs }];
    n.writingFrom = n.crashWritingFrom = Infinity;
  }

  /** Checks one node's state after a step. */
  check(n: SimNode): void {
    if (!n.node) return;
    const s = n.node.inspect();
    this.#ctx.stats.maxTerm = Math.max(this.#ctx.stats.maxTerm, s.term);
    this.#checkLog(n, s);
    if (s.commit < n.lastCommit) {
      this.#ctx.violation(
        "commit-monotonic",
        `${n.id}: commit index went back from ${n.lastCommit} to ${s.commit}`,
      );
    } else if (s.commit > n.lastCommit) {
      this.#learnCommitted(n, s, n.lastCommit + 1, s.commit);
      n.lastCommit = s.commit;
    }
    if (s.role === "leader") this.#checkLeader(n, s);
    if (s.applied !== n.lastApplied) {
      n.lastApplied = s.applied;
      this.#checkApplied(n, s);
    }
    if (this.#ctx.faults.diskFullEveryMs > 0) {
      const alarm = s.noSpace;
      if (alarm && !n.alarm) this.#ctx.stats.noSpaceAlarms++;
      n.alarm = alarm;
    }
  }

  /** A leader: the first of its term is recorded (and checked complete); another is a second. */
  #checkLeader(n: SimNode, s: NodeInspection): void {
    const leader = this.leaders.get(s.term);
    if (leader === undefined) {
      this.leaders.set(s.term, n.id);
      this.leaderSince.set(s.term, this.#ctx.clock.now());
      this.#ctx.stats.elections++;
      this.#ctx.note(`${n.id} leads term ${s.term}`);
      this.#checkLeaderCompleteness(n, s);
    } else if (leader !== n.id) {
      this.#ctx.violation(
        "election-safety",
        `two leaders in term ${s.term}: ${leader} and ${n.id}`,
      );
    }
  }

  /** Every (index, term) holds one entry in every log (log matching, entry by entry). */
  #checkLog(n: SimNode, s: NodeInspection): void {
    for (let i = s.lastIndex; i >= s.firstIndex; i--) {
      const e = s.entry(i)!;
      if (n.seen[i] === e.term) break;
      n.seen[i] = e.term;
      const [key, h] = [i * 1_048_576 + e.term, _hash(e)];
      const known = this.#entryHash.get(key);
      if (!this.firstSeen.has(key)) this.firstSeen.set(key, this.#ctx.clock.now());
      if (known === undefined) this.#entryHash.set(key, h);
      else if (known !== h) {
        this.#ctx.violation(
          "log-matching",
          `${n.id} holds an entry at index ${i} term ${e.term} that differs from another node's`,
        );
      }
    }
    // (Set only when it changes: setting an array's length is not free, and this runs for every
    // node after every step.)
    if (n.seen.length !== s.lastIndex + 1) n.seen.length = s.lastIndex + 1;
  }

  /** The node knows entries `from..to` are committed: compare with (or extend) the record. */
  #learnCommitted(n: SimNode, s: NodeInspection, from: number, to: number): void {
    for (let i = Math.max(from, s.firstIndex); i <= to; i++) {
      const e = s.entry(i);
      if (e === undefined) {
        this.#ctx.fail(
          "log-matching",
          `${n.id}: commit ${to} is past its last index ${s.lastIndex}`,
        );
      }
      const known = this.#committed[i];
      const data = e.type === EntryType.Normal ? e.data : null;
      if (!this.termCommitted.has(e.term)) this.termCommitted.set(e.term, this.#ctx.clock.now());
      if (!known && e.type === EntryType.ConfChange) this.#learnConf(n, i, e);
      if (!known) this.#committed[i] = { term: e.term, hash: _hash(e), data, knownIn: s.term };
      else if (known.term !== e.term || known.hash !== _hash(e)) {
        this.#ctx.violation(
          "state-machine-safety",
          `${n.id} holds as committed an entry at index ${i} (term ${e.term}) that differs from ` +
            `the entry committed there before (term ${known.term})`,
        );
      }
    }
    if (to <= this.#maxCommit) return;
    this.#maxCommit = this.#ctx.stats.maxCommit = to;
    // Apply newly known committed entries to the reference state.
    const keys = this.#ctx.keys;
    for (let c; (c = this.#committed[this.refIndex + 1]); this.refIndex++) {
      const i = this.refIndex + 1;
      const before = this.#refEntries[i - 1]!;
      let ended = false;
      if (c.term !== this.#termSpan.term) {
        this.#termSpan = {
          term: c.term,
          mostHeld: new Map(),
          leastRest: new Map(),
          leastBytes: Infinity,
        };
        this.#spanReaches(this.#refBytes[i - 1]!);
      }
      if (c.data) {
        const cmd = decodeCommand(c.data);
        this.#checkAdmitted(i, c.term, cmd);
        const result = this.#ref.apply(i, cmd);
        if (result.op === "txn" && result.index === i) {
          const [answer, replayed] = [txnAnswer(result), txnAnswer(result, true)];
          this.#refTxns.set(i, answer);
          if (replayed !== answer) this.#refTxnsReplayed.set(i, replayed);
        }
        if (result.op === "lease_revoke" && cmd.op === "lease_revoke") {
          this.#leases.ended(i, c.term, result, cmd.reason);
          ended = true;
        }
      }
      const after = keys.map((k) => this.#ref.data.get(k) ?? null);
      // A key whose lease ended (revoked or expired) goes as an `expire` change.
      const gone = ended ? "expire" : "delete";
      this.refChanges[i] = keys.flatMap(
        (k, j): { type: string; k: string; v: string | null }[] => {
          const [was, now] = [before[j], after[j]!];
          if (now !== null && now.modIndex !== was?.modIndex) {
            return [{ type: "put", k, v: now.value }];
          }
          return now === null && was !== null ? [{ type: gone, k, v: null }] : [];
        },
      );
      this.#refEntries[i] = after;
      this.#refRemembered[i] = this.#ref.rememberedCount;
      this.#refLeaseTables[i] = this.#leaseTable();
      this.#refLeases[i] = {
        of: keys.map((k) => this.#ref.keyLease.get(k) ?? null),
        count: this.#ref.leases.size,
      };
      // As the quota counts them: keys and values, and each lease.
      let bytes = LEASE_BYTES * this.#ref.leases.size;
      for (const e of this.#ref.data.values()) bytes += utf8Length(e.key) + utf8Length(e.value);
      this.#refBytes[i] = bytes;
      this.#spanReaches(bytes);
    }
    this.#checkDurableMajority(`when ${n.id} learned commit ${to}`, to);
  }

  /** Takes the reference state, holding `bytes` of data, into the current term's span. */
  #spanReaches(bytes: number): void {
    const { mostHeld, leastRest } = this.#termSpan;
    this.#termSpan.leastBytes = Math.min(this.#termSpan.leastBytes, bytes);
    for (const k of this.#ctx.keys) {
      const e = this.#ref.data.get(k);
      const held = e === undefined ? 0 : utf8Length(e.key) + utf8Length(e.value);
      mostHeld.set(k, Math.max(mostHeld.get(k) ?? 0, held));
      leastRest.set(k, Math.min(leastRest.get(k) ?? Infinity, bytes - held));
    }
  }

  /**
   * A leader admits a put that adds bytes, or a lease grant, only if the data, with it, fits the
   * quota; and it counts only once it has applied an entry of its own term, so what it counted
   * is the reference state at some index of the term's span. A put or grant no state of the span
   * lets through (it adds bytes to each, and takes each past the quota) shows a leader that
   * counted short. A lease counts `LEASE_BYTES`, so a put that grants one always adds bytes.
   */
  #checkAdmitted(index: number, term: number, cmd: KvCommand): void {
    const quota = this.#ctx.quotaBytes;
    const put = cmd.op === "idempotent" ? cmd.command : cmd;
    if (quota === 0) return;
    const span = this.#termSpan;
    if (put.op === "lease_grant") {
      if (span.leastBytes + LEASE_BYTES <= quota) return;
      this.#ctx.violation(
        "quota",
        `the leader of term ${term} admitted a lease grant (entry ${index}) though since its ` +
          `term began the data held at least ${span.leastBytes} bytes: with the lease's ` +
          `${LEASE_BYTES}, past the quota of ${quota}`,
      );
      return;
    }
    if (put.op !== "put") return;
    const bytes = utf8Length(put.key) + utf8Length(put.value);
    const lease = put.lease !== undefined && "ttlMs" in put.lease ? LEASE_BYTES : 0;
    const [held, rest] = [span.mostHeld.get(put.key) ?? 0, span.leastRest.get(put.key) ?? 0];
    if ((held >= bytes && lease === 0) || rest + bytes + lease <= quota) return;
    this.#ctx.violation(
      "quota",
      `the leader of term ${term} admitted put(${put.key}) of ${bytes} bytes${
        lease === 0 ? "" : ` granting a lease of ${lease}`
      } (entry ${index}) though since its term began the key held at most ${held} bytes and ` +
        `the rest of the data at least ${rest}: past the quota of ${quota}`,
    );
  }

  /**
   * Every key's value and revision (or those of `only`), and how many idempotent outcomes are
   * remembered, as a string to compare.
   */
  state(
    entry: (key: string) => KvEntry | null,
    remembered: number | null,
    only: readonly string[] = this.#ctx.keys,
  ): string {
    const keys = only.map((k) => {
      const e = entry(k);
      return [k, e === null ? null : [e.value, e.createIndex, e.modIndex, e.version]];
    });
    return JSON.stringify({
      ...Object.fromEntries(keys),
      ...(remembered === null ? {} : { remembered }),
    });
  }

  /**
   * The reference at `index`: {@linkcode Checker.state} of every key (with the remembered
   * outcomes), and the leases as [id, ttl, keys in key order] by id, as strings.
   */
  refAt(index: number): [string | undefined, string | undefined] {
    return [this.#refState(index), this.#refLeaseTables[index]];
  }

  /** {@linkcode Checker.state} of the reference state at `index` (with the remembered outcomes). */
  #refState(index: number): string | undefined {
    const entries = this.#refEntries[index];
    if (entries === undefined) return undefined;
    if (this.#refStates[index] === undefined) {
      const at = new Map(this.#ctx.keys.map((k, j) => [k, entries[j]!]));
      this.#refStates[index] = this.state((k) => at.get(k)!, this.#refRemembered[index]!);
    }
    return this.#refStates[index];
  }

  /** The highest commit index any node was seen to know. */
  get maxCommit(): number {
    return this.#maxCommit;
  }

  /** The reference's leases: [id, ttl, keys in key order] by id, as a string. */
  #leaseTable(): string {
    const keys = new Map<number, string[]>();
    for (const [k, id] of this.#ref.keyLease) keys.set(id, [...keys.get(id) ?? [], k]);
    const ids = [...this.#ref.leases.keys()].sort((a, b) => a - b);
    return JSON.stringify(
      ids.map((id) => [id, this.#ref.leases.get(id), (keys.get(id) ?? []).sort(compareKeys)]),
    );
  }

  /** Which lease each key is attached to, and how many leases there are, as a string. */
  #leaseState(leaseOf: (key: string) => number | null, leases: number): string {
    return JSON.stringify([leases, ...this.#ctx.keys.map(leaseOf)]);
  }

  /**
   * A node's applied data equals the reference state at its applied index: as strings
   * ({@linkcode Checker.state}, the lease state), made only when the fields are not all identical
   * (identical fields make identical strings; otherwise the strings decide, as they always did).
   */
  #checkApplied(n: SimNode, s: NodeInspection): void {
    if (s.applied > this.refIndex || s.applied === 0) return;
    const keys = this.#ctx.keys;
    if (!this.#sameState(s)) {
      const [got, want] = [this.state(s.kvEntry, s.sessionCount), this.#refState(s.applied)];
      if (got !== want) {
        this.#ctx.violation(
          "state-machine-safety",
          `${n.id} applied up to ${s.applied} but holds ${got} where the committed log gives ${want}`,
        );
      }
    }
    if (s.dataBytes !== this.#refBytes[s.applied]) {
      this.#ctx.violation(
        "state-machine-safety",
        `${n.id} applied up to ${s.applied} counts ${s.dataBytes} bytes of data where the ` +
          `committed log gives ${this.#refBytes[s.applied]} (the quota counts them)`,
      );
    }
    const ref = this.#refLeases[s.applied];
    if (
      ref === undefined || s.leaseCount !== ref.count ||
      keys.some((k, j) => s.leaseOf(k) !== ref.of[j])
    ) {
      const leases = this.#leaseState((k) => s.leaseOf(k), s.leaseCount);
      const want = ref && this.#leaseState((k) => ref.of[keys.indexOf(k)]!, ref.count);
      if (leases !== want) {
        this.#ctx.violation(
          "state-machine-safety",
          `${n.id} applied up to ${s.applied} but its leases are ${leases} where the committed ` +
            `log gives ${want}`,
        );
      }
    }
  }

  /** Whether the entries and remembered outcomes of `s` are the reference's, field by field. */
  #sameState(s: NodeInspection): boolean {
    const want = this.#refEntries[s.applied];
    if (want === undefined || s.sessionCount !== this.#refRemembered[s.applied]) return false;
    const keys = this.#ctx.keys;
    for (let j = 0; j < keys.length; j++) {
      const e = s.kvEntry(keys[j]!);
      const w = want[j]!;
      if (e === w) continue;
      if (
        e === null || w === null || e.value !== w.value || e.createIndex !== w.createIndex ||
        e.modIndex !== w.modIndex || e.version !== w.version
      ) return false;
    }
    return true;
  }

  #checkLeaderCompleteness(n: SimNode, s: NodeInspection): void {
    let i = this.#maxCommit;
    while (i > 0 && (this.#committed[i]?.knownIn ?? 0) >= s.term) i--;
    const want = this.#committed[i]?.term;
    if (i === 0 || i < s.firstIndex || want === undefined || s.entry(i)?.term === want) return;
    this.#ctx.violation(
      "leader-completeness",
      `${n.id} became leader of term ${s.term} without the entry committed at index ${i} ` +
        `(its log ends at ${s.lastIndex})`,
    );
  }

  /**
   * A committed configuration: it differs from the previous committed one by one voter at most,
   * so that a majority of either intersects a majority of the other (no two disjoint majorities).
   */
  #learnConf(n: SimNode, index: number, e: Entry): void {
    const voters = decodeConfState(e.data).voters;
    const prev = this.confs.filter((c) => c.index < index).at(-1)!;
    const added = voters.filter((v) => !prev.voters.includes(v));
    const removed = prev.voters.filter((v) => !voters.includes(v));
    if (added.length + removed.length > 1) {
      this.#ctx.violation(
        "disjoint-majorities",
        `${n.id}: the configuration committed at ${index} (voters ${voters}) differs from the ` +
          `one before (voters ${prev.voters}) by more than one voter`,
      );
    }
    if (added.length > 0) this.#ctx.stats.promotions++;
    this.confs.push({ index, voters });
    this.confs.sort((a, b) => a.index - b.index);
    this.#ctx.note(`configuration at ${index}: voters ${voters.join(",")}`);
  }

  #checkDurableMajority(when: string, c: number): void {
    const want = this.#committed[c]?.term;
    if (want === undefined) return;
    const holders = this.#ctx.nodes.filter((n) => n.durableSnap >= c || n.durable[c] === want);
    // A majority of the configuration in force at c, or of one committed after it (the entry
    // may have been committed under a later configuration of the leader's log).
    // A leader counts the configuration it appended last, committed or not: the newest
    // configuration in any live node's log is a candidate too.
    const from = this.confs.filter((x) => x.index <= c).at(-1)!.index;
    const isMajority = (voters: string[]) =>
      holders.filter((h) => voters.includes(h.id)).length >= Math.floor(voters.length / 2) + 1;
    // The nodes' newest configurations are read only when no committed one has the majority
    // (reading them builds every node's member list, and the answer is the same).
    const majority = this.confs.some((x) => x.index >= from && isMajority(x.voters)) ||
      this.#ctx.nodes.some((n) => {
        const list = n.node?.membership.list();
        return list !== undefined && list.length > 0 &&
          isMajority(list.filter((m) => m.role === "voter").map((m) => m.node_id));
      });
    if (!majority) {
      this.#ctx.violation(
        "durable-majority",
        `${when}: committed entry ${c} is durable on ${holders.length} node(s) ` +
          `(${holders.map((n) => n.id).join(", ") || "none"}), not a majority of its configuration`,
      );
    }
  }

  /**
   * After the final reads: every member applies up to the last commit and holds the same data, and
   * the removed-node checks hold; the run is then done.
   */
  converge(): void {
    this.#ctx.phase = "converge";
    const deadline = this.#ctx.clock.now() + 10_000;
    const poll = () => {
      const c = this.#maxCommit;
      // Removed nodes (and spares never added) take no further part: only members converge.
      // A member whose own configuration predates the leader's addition (it was away while the
      // leader joined) must catch up too: it learns the leader from a peer's committed
      // configuration (a members query). It is counted (stats.staleMembers) and, if it does not,
      // fails "stale-member".
      const members = currentMembers(this.#ctx.nodes);
      const leader = this.#ctx.leader()?.id;
      const stale = (n: SimNode) => {
        const own = n.node?.membership.list().map((m) => m.node_id) ?? [];
        return leader !== undefined && own.length > 0 && !own.includes(leader);
      };
      const nodes = this.#ctx.nodes.filter((n) => members.has(n.id));
      for (const n of nodes) {
        if (stale(n) && !this.#staleNoted.has(n.id)) {
          this.#staleNoted.add(n.id);
          this.#ctx.stats.staleMembers++;
          this.#ctx.note(
            `${n.id} does not know the leader ${leader}: it must learn it from a peer`,
          );
        }
      }
      const lagging = nodes.filter((n) => n.node?.inspect().applied !== c);
      if (lagging.length > 0) {
        if (this.#ctx.clock.now() >= deadline) {
          const ids = lagging.map((n) => n.id).join(", ");
          const unknown = lagging.filter(stale).map((n) => n.id);
          if (unknown.length > 0) {
            this.#ctx.fail(
              "stale-member",
              `${unknown.join(", ")} did not learn the leader ${leader} (added while they were ` +
                `away) and did not apply up to commit ${c} within 10 s`,
            );
          }
          this.#ctx.fail("convergence", `${ids} did not apply up to commit ${c} within 10 s`);
        }
        return this.#ctx.later(50, poll);
      }
      // With space freed, a node whose disk was full writes what it held and clears its alarm
      // by itself (it retries at least every 5 s), without a restart.
      const alarmed = nodes.filter((n) => n.node!.status().alarms.length > 0);
      if (alarmed.length > 0) {
        if (this.#ctx.clock.now() >= deadline) {
          const ids = alarmed.map((n) => n.id).join(", ");
          this.#ctx.fail("convergence", `${ids} still raise the NOSPACE alarm with space freed`);
        }
        return this.#ctx.later(50, poll);
      }
      // A voter removed while it was down (or cut off) never gets its removal from the log: the
      // peers it campaigns to answer that their committed configuration leaves it out, and it
      // must then know it was removed. A member of the cluster must never be told so. A removed
      // learner sends nothing on its own: it asks its peers for their committed configuration
      // once it has heard no leader for an election timeout, and must know it too.
      const wrong = this.#ctx.nodes.filter((n) =>
        n.node && members.has(n.id) && n.node.status().membership === "removed"
      );
      if (wrong.length > 0) {
        const ids = wrong.map((n) => n.id).join(", ");
        this.#ctx.fail("removed-member", `${ids} count themselves removed, but are members`);
        return;
      }
      const unaware = this.#ctx.nodes.filter((n) =>
        n.node && !members.has(n.id) &&
        ["voter", "learner"].includes(n.node.status().membership ?? "")
      );
      if (unaware.length > 0) {
        if (this.#ctx.clock.now() >= deadline) {
          const ids = unaware.map((n) => n.id).join(", ");
          this.#ctx.fail(
            "removed-unaware",
            `${ids} were removed but still count themselves members`,
          );
          return;
        }
        return this.#ctx.later(50, poll);
      }
      const states = nodes.map((n) => {
        const s = n.node!.inspect();
        return this.state(s.kvEntry, s.sessionCount);
      });
      if (states.some((state) => state !== states[0])) {
        const all = nodes.map((n, i) => `${n.id} ${states[i]}`).join(", ");
        this.#ctx.fail(
          "convergence",
          `every node applied up to ${c}, holding different data: ${all}`,
        );
      }
      this.#ctx.note(`CONVERGED at commit ${c}`);
      this.#ctx.phase = "done";
    };
    poll();
  }

  /** Every range read (each page) held the committed state of its keys at the index it reported. */
  #checkRanges(): void {
    for (const r of this.rangeReads) {
      const ref = this.#refState(r.index);
      if (ref === undefined) continue; // beyond what the reference learned (never in practice)
      const all = JSON.parse(ref) as Record<string, unknown>;
      const want = Object.fromEntries(r.keys.map((k) => [k, all[k]]));
      if (JSON.stringify(want) !== r.state) {
        this.#ctx.violation(
          "range-snapshot",
          `${r.what} returned ${r.state}, but the committed log gives ${JSON.stringify(want)}`,
        );
      }
    }
  }

  /**
   * A failed compare-and-set whose answer left its key's value out was a replay, the value the
   * committed log gives at the index it named is too long to remember, and the entry's revision is
   * that value's.
   */
  #checkOmitted(): void {
    for (const o of this.omittedReads) {
      const ref = this.#refState(o.index);
      if (ref === undefined) continue; // beyond what the reference learned (never in practice)
      type Held = [string, number, number, number] | null;
      const want = (JSON.parse(ref) as Record<string, Held>)[o.key] ?? null;
      const e = o.entry;
      if (
        o.replayed && want !== null && want[0].length > REMEMBERED_VALUE_CHARS &&
        want[1] === e.createIndex && want[2] === e.modIndex && want[3] === e.version
      ) continue;
      this.#ctx.violation(
        "at-most-once",
        `${o.what} left the value of ${o.key} out at index ${o.index}${
          o.replayed ? "" : " (not a replay)"
        }, revision ${[e.createIndex, e.modIndex, e.version]}, but the committed log holds ${
          want === null
            ? "no such key"
            : `a value of ${want[0].length} characters at revision ${want.slice(1)}`
        }`,
      );
    }
  }

  /**
   * Every answer to a transaction is the committed log's at the index it named: the entry there is
   * that transaction, and the branch that ran and every result (revisions, values read) are what
   * applying the log gives, so its keys changed together, as its compares allowed.
   */
  #checkTxns(): void {
    for (const t of this.txnAnswers) {
      if (t.index > this.refIndex) continue; // beyond what the reference learned (never in practice)
      const want = this.#refTxns.get(t.index) ?? "no transaction";
      if (t.answer === want) continue;
      if (t.replayed && t.answer === this.#refTxnsReplayed.get(t.index)) continue;
      this.#ctx.violation(
        "transaction",
        `${t.what} at index ${t.index} was ${t.answer}, but the committed log gives ${want}`,
      );
    }
  }

  /**
   * Every answered lease status read gave the committed leases (their TTLs and keys), or for one
   * lease that or its absence, at some index from the commit known when it was sent to the one
   * known when it was answered (a linearizable read: after the leader confirmed it leads), and a
   * time left from 0 to the TTL.
   */
  #checkLeaseReads(): void {
    for (const r of this.leaseReads) {
      const bad = r.answer?.find((l) => !(l.remainingMs >= 0 && l.remainingMs <= l.ttlMs));
      if (bad !== undefined) {
        this.#ctx.violation(
          "lease-read",
          `${r.what} gave lease ${bad.id} ${bad.remainingMs} ms left of a TTL of ${bad.ttlMs} ms`,
        );
      }
      const got = JSON.stringify((r.answer ?? []).map((l) => [l.id, l.ttlMs, l.keys]));
      const at = (i: number) => {
        const table = this.#refLeaseTables[i]!;
        if (r.id === null) return table;
        const id = r.id;
        return JSON.stringify((JSON.parse(table) as [number][]).filter((l) => l[0] === id));
      };
      const last = Math.min(r.hi, this.refIndex);
      let found = false;
      for (let i = r.lo; i <= last && !found; i++) found = at(i) === got;
      if (found || last < r.hi) continue; // past what the reference learned (never in practice)
      this.#ctx.violation(
        "lease-read",
        `${r.what} gave ${got}, but the committed leases were ${at(r.lo)} at ${r.lo} (sent) ` +
          `and ${at(last)} at ${last} (answered), and none between gave it`,
      );
    }
  }

  /**
   * Every write sent with an idempotency key: its definite answers (from any attempt) named one
   * index, and the committed log applied it at most once (the reference model, which the nodes'
   * states were checked against at every step, counts the applications).
   */
  #checkAtMostOnce(): void {
    for (const [id, answers] of this.idemAnswers) {
      if (answers.size > 1) {
        this.#ctx.violation(
          "at-most-once",
          `the write with idempotency key ${id} was answered with different indexes: ` +
            [...answers].join(", "),
        );
      }
      const applied = this.#ref.appliedById.get(id) ?? 0;
      if (applied > 1) {
        this.#ctx.violation(
          "at-most-once",
          `the write with idempotency key ${id} applied ${applied} times`,
        );
      }
    }
  }

  /**
   * The end checks of the client history: range reads, transactions, lease status reads,
   * at-most-once, linearizability.
   */
  checkHistory(): void {
    this.#checkRanges();
    this.#checkOmitted();
    this.#ctx.stats.txnAnswersChecked = this.txnAnswers.length;
    this.#checkTxns();
    this.#checkLeaseReads();
    this.#checkAtMostOnce();
    this.#ctx.stats.historyOps = this.history.length;
    for (const op of this.history) this.#ctx.mix(Math.floor((op.return ?? -1) * 1000));
    const result = checkLinearizability(this.history, {
      timeoutMs: this.#ctx.opts.linearizabilityTimeoutMs ?? 20_000,
    });
    if (result.ok === "unknown") this.#ctx.stats.linearizability = "unknown";
    if (result.ok !== false) return;
    const acked = [...this.acked].filter(([k]) => k.startsWith(`${result.key}=`)).slice(-10)
      .map(([k, v]) => `  ${k} acknowledged by ${v}`);
    const finals = this.#ctx.nodes.map((n) =>
      `${n.id}=${JSON.stringify(n.node?.inspect().value(result.key))}`
    );
    this.#ctx.violation(
      "linearizability",
      `the client history of key ${JSON.stringify(result.key)} is not linearizable:\n` +
        `${result.reason}\nlast acknowledged writes of that key:\n${acked.join("\n")}\n` +
        `final values: ${finals.join(" ")}\nfull history of the key:\n${
          describeHistory(result.operations, { maxLines: 60 })
        }`,
    );
  }
}

/**
 * A transaction's answer as a string to compare: the branch that ran and every result (a read's
 * entry as its value and revision). A value a replayed answer left out shows as `null`; with
 * `replayed`, so does every value longer than a remembered outcome keeps: the answer a replay of
 * this one gives.
 */
export function txnAnswer(r: Extract<KvResult, { op: "txn" }>, replayed = false): string {
  const value = (e: KvEntry) =>
    e.valueOmitted || (replayed && e.value.length > REMEMBERED_VALUE_CHARS) ? null : e.value;
  return JSON.stringify([
    r.succeeded,
    r.results.map((x) =>
      x.op === "get"
        ? [
          x.key,
          x.entry && [value(x.entry), x.entry.createIndex, x.entry.modIndex, x.entry.version],
        ]
        : x.op === "put"
        ? [x.key, x.createIndex, x.modIndex, x.version, x.lease ?? null]
        : [x.key, x.deleted]
    ),
  ]);
}

/** A hash of an entry's type and data. */
function _hash(e: Entry): number {
  let h = Math.imul(0x811c9dc5 ^ e.type, 0x01000193);
  for (let i = 0; i < e.data.length; i++) h = Math.imul(h ^ e.data[i]!, 0x01000193);
  return h >>> 0;
}
