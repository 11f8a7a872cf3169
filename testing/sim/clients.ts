/**
 * The clients, the client history they record, the request path (shared with the lease holders)
 * and the final reads.
 *
 * @module
 */

import type { RaftNode } from "../../src/node/raft_node.ts";
import type { NodeId } from "../../src/raft/types.ts";
import { NotLeaderError } from "../../src/raft/errors.ts";
import {
  type Compare,
  compareKeys,
  type KeyRange,
  type KvEntry,
  type KvResult,
  type LeaseRef,
  type PlainCommand,
  REMEMBERED_VALUE_CHARS,
  type TxnOpResult,
} from "../../src/kv/state_machine.ts";
import { seededRandom } from "../../src/raft/rand.ts";
import {
  NoSpaceError,
  NotAppliedError,
  QuotaExceededError,
  RemovedError,
  StoppingError,
  UnsettledRetryError,
} from "../../src/node/backend.ts";
import type { Operation } from "../../src/check/linearizability.ts";
import { type Checker, txnAnswer } from "./checks.ts";
import {
  currentMembers,
  knowsRemoved,
  type SimClient,
  type SimContext,
  type SimNode,
} from "./context.ts";

/** One client operation while it runs. */
export interface ClientOp extends Omit<Operation, "client" | "return"> {
  /** The client sending it. */
  client: SimClient;
  /** A read sent with the "lease" consistency. */
  lease: boolean;
  /** Aborted when the operation ends: every call still waiting on a node gives up. */
  abort: AbortController;
  /** A compare-and-set's form: on the `mod_index` (a put with `cas`), or a transaction. */
  casForm?: { modIndex: number } | { txn: true };
  /** The idempotency key a write is sent with (again, while its outcome is unknown). */
  idem?: string;
  /** A read of every key at once. */
  range?: boolean;
  /**
   * A range read's page: at most `limit` keys, from `from` on (a continuation of the page before);
   * its answer's `next` (null: the range is done), once recorded.
   */
  page?: { limit: number; from?: string; next?: string | null };
  /** A delete of a range of keys (`delete_range`) instead of `key` alone. */
  deleteRange?: KeyRange;
  /** The lease a put attaches its key to. */
  leaseRef?: LeaseRef;
  /**
   * Sent as a transaction whose put names the lease (`leaseRef`, an id): `exists` on the key
   * decides the branch, and both branches put the value with the lease.
   */
  txnLease?: { exists: boolean };
  /**
   * A transaction on three keys: it compares `key`'s value with `expect` (as a compare-and-set
   * does) and `other`'s mod_index with `modIndex`; if both hold it puts `value` on `key`, puts it
   * on `other` too (or deletes `other`) and reads `read`; if not, it reads `key` and `other`.
   */
  multi?: { other: string; modIndex: number; deleteOther: boolean; read: string };
}

/** What a request got from a node. */
export type Outcome =
  | { kind: "ok"; index: number; modIndex: number; replayed: boolean }
  /** A compare-and-set whose condition failed, and what it found. */
  | { kind: "casFailed"; index: number; current: KvEntry | null; replayed: boolean }
  /** A transaction on several keys: the branch that ran, and its results. */
  | { kind: "txn"; index: number; succeeded: boolean; results: TxnOpResult[]; replayed: boolean }
  | { kind: "value"; value: string | null; entry: KvEntry | null }
  | { kind: "range"; entries: KvEntry[]; index: number; next: string | null }
  /** Did not and will not take effect (`quota`: refused as past the quota). */
  | { kind: "notApplied"; quota?: true }
  | { kind: "unknown" }
  | { kind: "refused" }
  /** A removed node's refusal: the client goes to another node. */
  | { kind: "removed" }
  | { kind: "notLeader"; leader: NodeId };

/**
 * The reason an operation's requests still in flight are aborted with once it ended: one shared
 * `AbortError` (aborting without a reason makes a new one, with its stack, every time).
 */
const _ENDED = new DOMException("the operation ended", "AbortError");

/** The clients, the request path, and the final reads. */
export class Clients {
  readonly #ctx: SimContext;
  readonly #checker: Checker;
  /** The clients still running, plus one until the final heal. */
  #active = 1;
  /**
   * Draws which deletes take a range (and which range), and which compare-and-sets delete: apart
   * from the run's source, so that adding them left the run's other draws as they were. The size
   * of a range read's next pages is drawn from it too.
   */
  readonly #formRng: () => number;
  /** Draws which writes put a long value (`longValues`), apart from the others for the same reason. */
  readonly #valueRng: () => number;

  /** Clients of the run `ctx` that record what they do for `checker`. */
  constructor(ctx: SimContext, checker: Checker) {
    [this.#ctx, this.#checker] = [ctx, checker];
    this.#formRng = seededRandom((ctx.opts.seed ^ 0x510e527f) >>> 0);
    this.#valueRng = seededRandom((ctx.opts.seed ^ 0x9b05688c) >>> 0);
  }

  /** Starts client `id` running `loop` (which calls {@linkcode Clients.done} when it stops). */
  start(id: number, loop: (c: SimClient) => Promise<void>): void {
    this.#active++;
    loop({ id, hint: -1, final: false }).catch((e) => this.#ctx.caught(e, ` in c${id}`));
  }

  /** One client stopped (or the final heal came): after the last, the final reads. */
  done(): void {
    if (--this.#active === 0) this.#finalReads();
  }

  /**
   * A client: one operation at a time on a random key until the heal: puts (half of them with an
   * idempotency key), deletes (one in four of a range of keys, a prefix or from a key on, half of
   * those with an idempotency key), reads of one key or of every key (a range, a third of them in
   * pages of one or two keys, each page a read of its own, at its own index), and
   * compare-and-sets (on the mod_index last seen, or as a transaction comparing the value, always
   * with an idempotency key; one in five deletes the key instead of putting a value); one in four
   * compare-and-sets is a transaction on three keys instead ({@linkcode ClientOp.multi}).
   */
  async client(c: SimClient): Promise<void> {
    c.seen = new Map();
    for (let seq = 1; this.#ctx.phase === "run"; seq++) {
      await this.#ctx.sleep(this.#ctx.random(0, 30));
      if (this.#ctx.phase !== "run") break;
      const r = this.#ctx.rng();
      const key = this.#ctx.pick(this.#ctx.keys);
      // The write's name: its idempotency key, and its value unless that is a long one.
      const name = `c${c.id}-${seq}`;
      const value = this.#valueRng() < (this.#ctx.opts.longValues ?? 0) ? longValue(name) : name;
      let op: ClientOp;
      if (r < 0.3) {
        op = this.newOp(c, { kind: "put", key, value, lease: false });
        if (this.#ctx.rng() < 0.5) op.idem = name;
      } else if (r < 0.42) {
        op = this.newOp(c, { kind: "delete", key, value: null, lease: false });
        if (this.#formRng() < 0.25) {
          op.deleteRange = this.#drawRange(key);
          if (this.#formRng() < 0.5) op.idem = name;
        }
      } else if (r < 0.6 && this.#ctx.keys.length >= 3 && this.#formRng() < 0.25) {
        op = this.#multiOp(c, key, value, name);
      } else if (r < 0.6) {
        const known = c.seen.get(key) ?? { modIndex: 0, value: null };
        // One in five deletes the key if it holds what was last seen (a lock's release).
        const del = this.#formRng() < 0.2;
        op = this.newOp(c, { kind: "cas", key, value: del ? null : value, lease: false });
        op.expect = known.value;
        op.casForm = this.#ctx.rng() < 0.7 ? { modIndex: known.modIndex } : { txn: true };
        op.idem = name;
      } else {
        const lease = this.#ctx.rng() < (this.#ctx.opts.leaseReads ?? 0);
        op = this.newOp(c, { kind: "get", key, value: null, lease });
        op.range = this.#ctx.rng() < 0.2;
        if (op.range) op.page = { limit: this.#ctx.pick([1, 2, 1000, 1000, 1000, 1000]) };
      }
      await this.perform(op, this.#ctx.opts.opTimeoutMs ?? 3000);
      // The next page of a paged range read, from where the last one ended, while the run goes on.
      for (let from = op.page?.next; from && this.#ctx.phase === "run"; from = op.page?.next) {
        this.#ctx.stats.rangeNextPages++;
        op = this.newOp(c, { kind: "get", key, value: null, lease: op.lease });
        op.range = true;
        op.page = { limit: this.#formRng() < 0.5 ? 1 : 2, from };
        await this.perform(op, this.#ctx.opts.opTimeoutMs ?? 3000);
      }
    }
    this.done();
  }

  /** A transaction of `c` on `key` and two other keys (see {@linkcode ClientOp.multi}). */
  #multiOp(c: SimClient, key: string, value: string, name: string): ClientOp {
    const rest = this.#ctx.keys.filter((k) => k !== key);
    const other = rest.splice(Math.floor(this.#formRng() * rest.length), 1)[0]!;
    const read = rest[Math.floor(this.#formRng() * rest.length)]!;
    const op = this.newOp(c, { kind: "cas", key, value, lease: false });
    op.expect = c.seen?.get(key)?.value ?? null;
    const modIndex = c.seen?.get(other)?.modIndex ?? 0;
    op.multi = { other, modIndex, deleteOther: this.#formRng() < 0.2, read };
    op.idem = name;
    return op;
  }

  /** A range of keys around `key`: every key, the keys under it as a prefix, or from it on. */
  #drawRange(key: string): KeyRange {
    const r = this.#formRng();
    if (r < 0.3) return { prefix: "" };
    if (r < 0.6) return { prefix: key };
    const keys = this.#ctx.keys;
    return { start: key, end: r < 0.8 ? null : keys[Math.floor(this.#formRng() * keys.length)]! };
  }

  /** The keys of the run that `op` writes: its range's, or its key. */
  #written(op: ClientOp): string[] {
    const range = op.deleteRange;
    if (range === undefined) return [op.key];
    return this.#ctx.keys.filter((k) =>
      "prefix" in range
        ? k.startsWith(range.prefix)
        : compareKeys(k, range.start) >= 0 && (range.end === null || compareKeys(k, range.end) < 0)
    );
  }

  /** A new operation of `client`, called now. */
  newOp(client: SimClient, op: Pick<ClientOp, "kind" | "key" | "value" | "lease">): ClientOp {
    return { ...op, client, call: this.#ctx.clock.now(), abort: new AbortController() };
  }

  /**
   * Sends `op` to nodes (following leader hints, retrying where it was refused, and, for a write
   * with an idempotency key, where its outcome is unknown) until it ends or times out, and records
   * its outcome, which it returns (null: timed out).
   */
  async perform(op: ClientOp, timeoutMs: number): Promise<Outcome | null> {
    const c = op.client;
    const deadline = this.#ctx.clock.now() + timeoutMs;
    let [outcome, n]: [Outcome | null, SimNode | null] = [null, null];
    let unknownBefore = false;
    while (!outcome && this.#ctx.clock.now() < deadline) {
      const useHint = c.hint >= 0 && this.#ctx.rng() < 0.7;
      // A final read goes mostly to a member of the cluster as it now is, as a client that
      // follows the membership would, and sometimes to a node that knows it was removed, which
      // must refuse it at once (checked below).
      const removed = c.final ? this.#ctx.nodes.filter((x) => knowsRemoved(x)) : [];
      const pool = c.final
        ? (removed.length > 0 && this.#ctx.rng() < 0.3
          ? removed
          : this.#ctx.nodes.filter((x) => currentMembers(this.#ctx.nodes).has(x.id)))
        : [];
      n = useHint
        ? this.#ctx.nodes[c.hint]!
        : pool.length > 0
        ? pool[Math.floor(this.#ctx.rng() * pool.length)]!
        : this.#ctx.nodes[Math.floor(this.#ctx.rng() * this.#ctx.nodes.length)]!;
      const knewRemoved = c.final && knowsRemoved(n);
      if (knewRemoved) this.#ctx.stats.removedFinalReads++;
      // A final read retries on silence: a read has no effect, so retrying is always safe. So
      // does a write with an idempotency key: a repeat is answered, not applied again.
      const left = deadline - this.#ctx.clock.now();
      const wait = c.final ? 1000 : op.idem ? Math.min(600, left) : left;
      outcome = await Promise.race([this.#request(n, op), this.#ctx.sleep(wait)]);
      if (knewRemoved && outcome === null && knowsRemoved(n)) {
        this.#ctx.fail(
          "removed-refusal",
          `${n.id} knows it was removed, but left a final read of ${op.key} unanswered for ${wait} ms`,
        );
      }
      if (
        outcome?.kind === "notLeader" || outcome?.kind === "refused" || outcome?.kind === "removed"
      ) {
        await this.redirect(c, outcome, deadline);
        outcome = null;
      } else if (op.idem && (outcome === null || outcome.kind === "unknown")) {
        if (this.#ctx.clock.now() >= deadline) break;
        unknownBefore = true;
        this.#ctx.stats.idempotentRetries++;
        this.#ctx.note(
          `c${c.id} ${op.kind}(${op.key}=${shown(op.value)}) unknown at ${n.id}: sent again`,
        );
        outcome = null;
        c.hint = -1;
        await this.#backOff(deadline);
      }
    }
    op.abort.abort(_ENDED);
    // Refused for sure after an attempt of unknown outcome: that one may still apply.
    if (unknownBefore && outcome?.kind === "notApplied") outcome = { kind: "unknown" };
    this.#record(op, outcome, n);
    if (!outcome) c.hint = -1;
    return outcome;
  }

  /** Records the outcome of `op` (null: timed out) that node `n` gave: counters, history, trace. */
  #record(op: ClientOp, outcome: Outcome | null, n: SimNode | null): void {
    const [c, stats, checker] = [op.client, this.#ctx.stats, this.#checker];
    const target = op.deleteRange ? JSON.stringify(op.deleteRange) : op.key;
    const what = `c${c.id} ${op.lease ? "lease-" : ""}${
      op.range ? "range-" : ""
    }${op.kind}(${target}${op.value ? `=${shown(op.value)}` : ""}) <- ${n?.id}: ${
      outcome?.kind ?? "timeout"
    }`;
    const ret = this.#ctx.clock.now();
    const seen = c.seen ?? new Map();
    if (
      op.idem &&
      (outcome?.kind === "ok" || outcome?.kind === "casFailed" || outcome?.kind === "txn")
    ) {
      const answers = checker.idemAnswers.get(op.idem) ?? new Set();
      answers.add(outcome.index);
      checker.idemAnswers.set(op.idem, answers);
      if (outcome.replayed) stats.idempotentReplays++;
    } else if (op.idem) {
      checker.idemAnswers.set(op.idem, checker.idemAnswers.get(op.idem) ?? new Set());
    }
    if (op.multi) return this.#recordMulti(op, outcome, n, what, ret);
    if (op.txnLease !== undefined && outcome?.kind === "ok") stats.leaseTxnPuts++;
    if (op.txnLease !== undefined && outcome?.kind === "notApplied" && !outcome.quota) {
      stats.leaseTxnRefused++;
    }
    if (outcome?.kind === "ok") {
      stats.writesOk++;
      if (op.kind === "cas") stats.casOk++;
      if (op.kind === "cas" && op.value === null) stats.casDeletesOk++;
      if (op.deleteRange) stats.rangeDeletesOk++;
      this.#ctx.note(`${what} @${outcome.index}${outcome.replayed ? " (replayed)" : ""}`);
      // A range delete is in the history as a delete of each key in its range, all at once.
      for (const key of this.#written(op)) {
        checker.acked.set(
          `${key}=${op.value ?? `delete by c${c.id}`}`,
          `${n?.id} at ${outcome.index}`,
        );
        checker.history.push({ ..._operation(op, ret), key });
        seen.set(key, {
          modIndex: op.kind === "delete" ? 0 : outcome.modIndex,
          value: op.kind === "delete" ? null : op.value,
        });
      }
    } else if (outcome?.kind === "casFailed") {
      // The condition did not hold: nothing changed; it read the key's current value, unless a
      // replay left out a long one (then it is not in the history: a read can be left out).
      stats.casFailed++;
      const found = outcome.current;
      if (found?.valueOmitted) {
        stats.valuesOmitted++;
        this.#ctx.note(`${what} @${outcome.index} found a value left out`);
        checker.omittedReads.push({
          index: outcome.index,
          key: op.key,
          entry: found,
          replayed: outcome.replayed,
          what,
        });
        seen.delete(op.key);
        return;
      }
      this.#ctx.note(`${what} @${outcome.index} found ${shown(found?.value ?? null, true)}`);
      checker.history.push({
        ..._operation(op, ret),
        kind: "get",
        value: found?.value ?? null,
      });
      seen.set(op.key, { modIndex: found?.modIndex ?? 0, value: found?.value ?? null });
    } else if (outcome?.kind === "value") {
      stats.readsOk++;
      if (op.lease) stats.leaseReadsOk++;
      this.#ctx.note(`${what} ${shown(outcome.value, true)}`);
      checker.history.push({ ..._operation(op, ret), value: outcome.value });
      seen.set(op.key, { modIndex: outcome.entry?.modIndex ?? 0, value: outcome.value });
    } else if (outcome?.kind === "range") {
      stats.readsOk++;
      stats.rangeReadsOk++;
      if (op.lease) stats.leaseReadsOk++;
      const found = new Map(outcome.entries.map((e) => [e.key, e]));
      const [from, next] = [op.page?.from ?? "", outcome.next];
      if (op.page) op.page.next = next;
      // The keys the page covers: from where it started up to (not including) where it ended.
      const keys = this.#ctx.keys.filter((k) =>
        compareKeys(k, from) >= 0 && (next === null || compareKeys(k, next) < 0)
      );
      this.#ctx.note(
        `${what} @${outcome.index} ${outcome.entries.map((e) => shown(e.value)).join(",")}` +
          (op.page?.from !== undefined || next !== null ? ` [${from}..${next ?? ""})` : ""),
      );
      for (const key of keys) {
        const e = found.get(key) ?? null;
        checker.history.push({ ..._operation(op, ret), key, value: e?.value ?? null });
        seen.set(key, { modIndex: e?.modIndex ?? 0, value: e?.value ?? null });
      }
      if (next !== null) stats.rangePagesCut++;
      checker.rangeReads.push({
        index: outcome.index,
        keys,
        state: checker.state((k) => found.get(k) ?? null, null, keys),
        what: `${what} at index ${outcome.index}`,
      });
    } else if (outcome?.kind === "notApplied") {
      stats.writesFailed++;
    } else if (op.kind === "get") { // unknown outcome or timed out: a read is dropped
      stats.readsDropped++;
    } else { // a write may have been proposed by a node that then crashed or lost its leadership
      stats.writesUnknown++;
      for (const key of this.#written(op)) {
        checker.history.push({ ..._operation(op, null), key });
        seen.delete(key);
      }
    }
  }

  /**
   * Records a transaction on several keys (`op.multi`): in the history, per key, as what it was
   * for that key: the compare-and-set of `key`, the put or delete of `other` and the read of `read`
   * if it succeeded; the reads of `key` and `other` if not; the writes, of unknown outcome, if
   * that is unknown. That the keys changed together, as the compares allowed, is the
   * `transaction` check's (each answer against the committed log's at its index).
   */
  #recordMulti(
    op: ClientOp,
    outcome: Outcome | null,
    n: SimNode | null,
    what: string,
    ret: number,
  ): void {
    const [c, stats, history] = [op.client, this.#ctx.stats, this.#checker.history];
    const { other, deleteOther, read } = op.multi!;
    const seen = c.seen ?? new Map();
    const get = (key: string, e: KvEntry | null) => {
      if (e?.valueOmitted) { // a replay left out a long value: not in the history
        this.#ctx.stats.valuesOmitted++;
        seen.delete(key);
        return;
      }
      history.push({
        client: c.id,
        kind: "get",
        key,
        value: e?.value ?? null,
        call: op.call,
        return: ret,
      });
      seen.set(key, { modIndex: e?.modIndex ?? 0, value: e?.value ?? null });
    };
    const entryOf = (r: TxnOpResult | undefined) => (r?.op === "get" ? r.entry : null);
    const second = (r: number | null): Operation => ({
      client: c.id,
      kind: deleteOther ? "delete" : "put",
      key: other,
      value: deleteOther ? null : op.value,
      call: op.call,
      return: r,
    });
    if (outcome?.kind === "txn" && outcome.succeeded) {
      stats.writesOk++;
      stats.multiTxnsOk++;
      this.#ctx.note(`${what} @${outcome.index} with ${other}${deleteOther ? " deleted" : ""}`);
      const [first, then] = [outcome.results[0], outcome.results[1]];
      history.push(_operation(op, ret), second(ret));
      seen.set(op.key, { modIndex: first?.op === "put" ? first.modIndex : 0, value: op.value });
      seen.set(other, {
        modIndex: then?.op === "put" ? then.modIndex : 0,
        value: deleteOther ? null : op.value,
      });
      get(read, entryOf(outcome.results[2]));
      const by = `${n?.id} at ${outcome.index} (a transaction)`;
      this.#checker.acked.set(`${op.key}=${op.value}`, by);
      this.#checker.acked.set(`${other}=${deleteOther ? `delete by c${c.id}` : op.value}`, by);
    } else if (outcome?.kind === "txn") {
      stats.multiTxnsFailed++;
      this.#ctx.note(`${what} @${outcome.index} compares failed`);
      get(op.key, entryOf(outcome.results[0]));
      get(other, entryOf(outcome.results[1]));
    } else if (outcome?.kind === "notApplied") {
      stats.writesFailed++;
    } else {
      stats.writesUnknown++;
      history.push(_operation(op, null), second(null));
      seen.delete(op.key);
      seen.delete(other);
    }
  }

  /** After a refusal: counts a removed node's, follows the leader hint, waits to try again. */
  redirect(c: SimClient, got: Outcome, deadline: number): Promise<null> {
    if (got.kind === "removed") this.#ctx.stats.removedRefusals++;
    const leader = got.kind === "notLeader" ? got.leader : "";
    c.hint = this.#ctx.nodes.findIndex((x) => x.id === leader);
    return this.#backOff(deadline);
  }

  /** Waits 5 to 50 ms (not past `deadline`) before trying again. */
  #backOff(deadline: number): Promise<null> {
    return this.#ctx.sleep(Math.min(this.#ctx.random(5, 50), deadline - this.#ctx.clock.now()));
  }

  /** Sends `op` to node `n` and resolves with the answer (or never, if it is lost on the way). */
  #request(n: SimNode, op: ClientOp): Promise<Outcome> {
    return this.callOn(
      n,
      op.abort.signal,
      (node, signal) => {
        const consistency = op.lease ? "lease" : "linearizable";
        let call: Promise<Outcome>;
        if (op.kind === "get" && op.range) {
          const { limit, from } = op.page ?? { limit: 1000 };
          call = node.range(
            { range: { prefix: "" }, limit, maxChars: 1 << 20, ...(from ? { from } : {}) },
            consistency,
            signal,
          )
            .then((r) => ({ kind: "range", entries: r.entries, index: r.index, next: r.next }));
        } else if (op.kind === "get") {
          call = node.read(op.key, consistency, signal)
            .then((r) => ({ kind: "value", value: r.entry?.value ?? null, entry: r.entry }));
        } else {
          call = node.write(_command(op), signal, op.idem ?? null).then((r) => {
            if (r.op === "txn") {
              this.#checker.txnAnswers.push({
                index: r.index,
                answer: txnAnswer(r),
                replayed: r.replayed === true,
                what: `${n.id}'s answer to c${op.client.id}'s transaction on ${op.key}`,
              });
            }
            return _writeOutcome(op, r);
          });
        }
        if (op.kind !== "get") return call;
        // A read a follower answered went through its leader's read index (follower ReadIndex).
        return call.then((o) => {
          if (o.kind === "value" || o.kind === "range") {
            const role = node.status().role;
            if (role !== "leader") this.#ctx.stats.followerReadsOk++;
          }
          return o;
        });
      },
      (o) => o,
      (e) => {
        if (e instanceof UnsettledRetryError) this.#ctx.stats.unsettledRetries++;
        if (e instanceof NoSpaceError) {
          this.#ctx.stats.noSpaceRefusals++;
          if (!e.members.includes(n.id)) this.#ctx.stats.peerNoSpaceRefusals++;
        }
        if (e instanceof QuotaExceededError) {
          this.#ctx.stats.quotaRefusals++;
          if (op.kind === "delete" || e.growth <= 0) {
            try {
              this.#ctx.violation("quota", `${n.id} refused ${op.kind}(${op.key}): ${e.message}`);
            } catch {
              // Recorded; the event loop throws it (this answer may race a timeout nobody awaits).
            }
          }
        }
        return outcomeOf(e);
      },
    );
  }

  /**
   * Runs `fn` on node `n` as a request would: it reaches the node's process after a network delay
   * and runs when the process runs; the answer (`answered(value)`, or `failed(error)`) comes back
   * after another delay, or never, if the request is lost on the way. A node down refuses it.
   */
  async callOn<T, R>(
    n: SimNode,
    signal: AbortSignal,
    fn: (node: RaftNode, signal: AbortSignal) => Promise<T>,
    answered: (value: T) => R,
    failed: (e: unknown) => R,
  ): Promise<R | { kind: "refused" }> {
    await this.#ctx.sleep(this.#ctx.random(0.1, 2));
    const out = await new Promise<R | { kind: "refused" }>((resolve) => {
      const refused = () => resolve({ kind: "refused" });
      if (!n.node || !n.clock) return refused();
      n.clock.run(() => {
        const node = n.node;
        if (signal.aborted) return;
        if (!node) return refused();
        fn(node, signal).then((value) => resolve(answered(value)), (e) => resolve(failed(e)));
      });
    });
    await this.#ctx.sleep(this.#ctx.random(0.1, 2));
    return out;
  }

  /** Once every client stopped: a read of every key, which must complete in time (liveness). */
  #finalReads(): void {
    this.#ctx.phase = "final";
    this.#ctx.note("FINAL READS of every key");
    const reads = this.#ctx.keys.map((key, i) =>
      this.newOp({ id: 1000 + i, hint: -1, final: true }, {
        kind: "get",
        key,
        value: null,
        lease: false,
      })
    );
    Promise.all(reads.map((op) => this.perform(op, Infinity))).then(() => this.#checker.converge())
      .catch((e) => this.#ctx.caught(e, " in the final reads"));
    const livenessMs = this.#ctx.opts.livenessMs ?? 20_000;
    this.#ctx.later(livenessMs, () => {
      if (this.#ctx.phase !== "final") return;
      const missing = reads.filter((op) => !op.abort.signal.aborted).map((op) => op.key);
      this.#ctx.fail(
        "liveness",
        `the final reads of ${missing.join(", ")} did not complete within ${livenessMs} ms ` +
          `after every fault healed (leader: ${this.#ctx.leader()?.id ?? "none"})`,
      );
    });
  }
}

/** The command a client write sends. */
function _command(op: ClientOp): PlainCommand {
  if (op.deleteRange) return { op: "delete_range", range: op.deleteRange };
  if (op.multi) {
    const { other, modIndex, deleteOther, read } = op.multi;
    return {
      op: "txn",
      compare: [
        _valueCompare(op.key, op.expect ?? null),
        { key: other, target: "mod_index", op: "=", value: modIndex },
      ],
      success: [
        { op: "put", key: op.key, value: op.value! },
        deleteOther ? { op: "delete", key: other } : { op: "put", key: other, value: op.value! },
        { op: "get", key: read },
      ],
      failure: [{ op: "get", key: op.key }, { op: "get", key: other }],
    };
  }
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
  const del = op.value === null;
  if ("modIndex" in form) {
    return del
      ? { op: "delete", key: op.key, cas: form.modIndex }
      : { op: "put", key: op.key, value: op.value!, cas: form.modIndex };
  }
  return {
    op: "txn",
    compare: [_valueCompare(op.key, op.expect ?? null)],
    success: [del ? { op: "delete", key: op.key } : { op: "put", key: op.key, value: op.value! }],
    failure: [{ op: "get", key: op.key }],
  };
}

/** A compare that holds when `key` holds `expect` (null: when it does not exist). */
function _valueCompare(key: string, expect: string | null): Compare {
  return expect === null
    ? { key, target: "exists", op: "=", value: false }
    : { key, target: "value", op: "=", value: expect };
}

/** What a client learns from a write's result. */
function _writeOutcome(op: ClientOp, r: KvResult): Outcome {
  const replayed = r.replayed === true;
  switch (r.op) {
    case "put":
      return { kind: "ok", index: r.index, modIndex: r.modIndex, replayed };
    case "delete":
    case "delete_range":
      return { kind: "ok", index: r.index, modIndex: 0, replayed };
    case "cas_failed":
      return { kind: "casFailed", index: r.index, current: r.current, replayed };
    case "lease_not_found": // nothing was written
      return { kind: "notApplied" };
    case "txn": {
      // A transaction with a lease puts first in either branch; a compare-and-set puts when it
      // succeeds and reads when it fails.
      const [first, index] = [r.results[0], r.index];
      if (op.multi) {
        return { kind: "txn", index, succeeded: r.succeeded, results: r.results, replayed };
      }
      if (op.txnLease !== undefined) {
        if (first?.op !== "put" || first.lease !== (op.leaseRef as { id: number }).id) {
          throw new Error(`a transaction put with a lease answered ${JSON.stringify(first)}`);
        }
        return { kind: "ok", index, modIndex: first.modIndex, replayed };
      }
      if (r.succeeded) {
        return { kind: "ok", index, modIndex: first?.op === "put" ? first.modIndex : 0, replayed };
      }
      const current = first?.op === "get" ? first.entry : null;
      return { kind: "casFailed", index, current, replayed };
    }
    default:
      throw new Error(`unexpected result ${r.op} for ${op.kind}(${op.key})`);
  }
}

/** What a client learns from a node's error. */
export function outcomeOf(e: unknown): Outcome {
  if (e instanceof NotLeaderError) return { kind: "notLeader", leader: e.leader };
  if (e instanceof NotAppliedError) return { kind: "notApplied" };
  // Refused before it was proposed: it did not and will not take effect.
  if (e instanceof QuotaExceededError) return { kind: "notApplied", quota: true };
  if (e instanceof NoSpaceError || e instanceof StoppingError) return { kind: "refused" };
  if (e instanceof RemovedError) return { kind: "removed" };
  return { kind: "unknown" }; // OutcomeUnknownError, an aborted read, anything else
}

function _operation(op: ClientOp, ret: number | null): Operation {
  const { client, kind, key, value, call } = op;
  const base = { client: client.id, kind, key, value, call, return: ret };
  return kind === "cas" ? { ...base, expect: op.expect ?? null } : base;
}

/**
 * The long value a write named `name` puts: longer than a remembered outcome keeps
 * (`REMEMBERED_VALUE_CHARS`), so that a replayed answer that read it leaves it out.
 */
function longValue(name: string): string {
  return `${name}+${"x".repeat(REMEMBERED_VALUE_CHARS)}`;
}

/** A value for the trace (`json`: quoted): a long one as its name and length. */
function shown(value: string | null, json = false): string {
  if (value === null || value.length <= REMEMBERED_VALUE_CHARS) {
    return json ? JSON.stringify(value) : String(value);
  }
  return `${value.slice(0, value.indexOf("+"))}+(${value.length} chars)`;
}
