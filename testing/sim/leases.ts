/**
 * The lease holders and the lease checks (`lease-early`, `lease-bound`, `lease-ttl`; the
 * `lease-read` check of their status reads is the checker's).
 *
 * @module
 */

import type { RaftNode } from "../../src/node/raft_node.ts";
import type { NodeId } from "../../src/raft/types.ts";
import type { KvResult } from "../../src/kv/state_machine.ts";
import { LeaseNotFoundError, QuotaExceededError } from "../../src/node/backend.ts";
import type { Checker } from "./checks.ts";
import { type Clients, type Outcome, outcomeOf } from "./clients.ts";
import type { SimClient, SimContext } from "./context.ts";

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

/** The lease holders' side of the run. */
export class LeaseHolders {
  readonly #ctx: SimContext;
  readonly #checker: Checker;
  readonly #clients: Clients;
  /** When each node could not act on time (pauses, full disks): [start, end] on the shared clock. */
  readonly #stallsOf: ReadonlyMap<NodeId, [number, number][]>;
  /** The leases lease holders were granted, by id. */
  #leaseInfo = new Map<number, _LeaseInfo>();
  /** Client ids of the deletes recorded for revoke and expire entries (one each). */
  #endClient = 1_000_000;

  /** Lease holders of `ctx`, sending through `clients`; `stallsOf` are the nodes' stalls. */
  constructor(
    ctx: SimContext,
    checker: Checker,
    clients: Clients,
    stallsOf: ReadonlyMap<NodeId, [number, number][]>,
  ) {
    [this.#ctx, this.#checker, this.#clients, this.#stallsOf] = [ctx, checker, clients, stallsOf];
  }

  /**
   * A lease holder: grants a lease (3, 5 or 8 election timeouts, or, one time in five, less than
   * the minimum TTL of one and a half election timeouts, which the node must raise to it),
   * attaches one or two keys to it (or, a quarter of the time by default, grants it with a put of
   * a key, as `?ttl=` does: `leasePutGrants`), keeps it alive for zero to five rounds (every third of its TTL, or a little
   * sooner), then revokes it (a third of the time) or abandons it, and starts again. The lease
   * checks hold it to the TTL granted.
   */
  async holder(c: SimClient): Promise<void> {
    c.seen = new Map();
    const ticks = this.#ctx.opts.electionTicks ?? 10;
    const election = this.#ctx.electionMs;
    // etcd's rule, in whole ticks (see minLeaseTtlMs in src/node/lease_tracker.ts).
    const minimum = Math.floor((3 * ticks) / 2) * this.#ctx.faults.tickMs;
    for (let seq = 1; this.#ctx.phase === "run"; seq++) {
      await this.#ctx.sleep(this.#ctx.random(0, 50));
      if (this.#ctx.phase !== "run") break;
      const asked = this.#ctx.rng() < 0.2
        ? Math.max(1, Math.round(this.#ctx.pick([0.01, 0.3, 1, 1.4]) * election))
        : Math.round(this.#ctx.pick([3, 5, 8]) * election);
      const sent = this.#ctx.clock.now();
      const putGrants = this.#ctx.opts.leasePutGrants ?? 0.25;
      if (putGrants > 0 && this.#ctx.rng() < putGrants) {
        // Granted with a put (`?ttl=`): the lease's id is the put's index, its key attached.
        const key = this.#ctx.pick(this.#ctx.keys);
        const op = this.#clients.newOp(c, {
          kind: "put",
          key,
          value: `c${c.id}-${seq}-G`,
          lease: false,
        });
        op.leaseRef = { ttlMs: asked };
        const outcome = await this.#clients.perform(op, this.#ctx.opts.opTimeoutMs ?? 3000);
        if (outcome?.kind !== "ok") continue; // unknown: left to expire on its own
        // Raised to the minimum as a grant is: one that was not expires early (lease-early).
        const ttlMs = Math.max(asked, minimum);
        const info: _LeaseInfo = {
          ttlMs,
          lastAckedSend: sent,
          lastAttemptEnd: this.#ctx.clock.now(),
        };
        this.#leaseInfo.set(outcome.index, info);
        this.#ctx.stats.leasesGrantedWithPut++;
        this.#ctx.note(`c${c.id} granted lease ${outcome.index} with put(${key}) (ttl ${ttlMs}ms)`);
        await this.#keepAndEnd(c, seq, outcome.index, info);
        continue;
      }
      const grant = await this.#leaseCall(
        c,
        (node, signal) => node.write({ op: "lease_grant", ttlMs: asked }, signal),
        this.#ctx.opts.opTimeoutMs ?? 3000,
      );
      const granted = grant.answer?.kind === "answered" ? grant.answer.value : null;
      if (granted?.op !== "lease_grant") continue; // unknown: left to expire on its own
      const id = granted.id;
      const ttlMs = granted.ttlMs;
      if (ttlMs !== Math.max(asked, minimum)) {
        this.#ctx.violation(
          "lease-ttl",
          `lease ${id} was asked with ttl ${asked}ms and granted ${ttlMs}ms; the minimum is ` +
            `${minimum}ms, so it should have been ${Math.max(asked, minimum)}ms`,
        );
      }
      if (ttlMs !== asked) this.#ctx.stats.leasesRaised++;
      const info: _LeaseInfo = { ttlMs, lastAckedSend: sent, lastAttemptEnd: grant.end };
      this.#leaseInfo.set(id, info);
      this.#ctx.stats.leasesGranted++;
      this.#ctx.note(`c${c.id} granted lease ${id} (ttl ${ttlMs}ms, asked ${asked}ms)`);
      for (
        let j = 0, n = 1 + Math.floor(this.#ctx.rng() * 2);
        j < n && this.#ctx.phase === "run";
        j++
      ) {
        const key = this.#ctx.pick(this.#ctx.keys);
        await this.#leasePut(c, key, `c${c.id}-${seq}-L${j}`, id, this.#ctx.rng() < 0.4);
      }
      await this.#keepAndEnd(c, seq, id, info);
    }
    this.#clients.done();
  }

  /**
   * What a holder does with lease `id` once granted (`info`): reads its status now and then,
   * keeps it alive for zero to five rounds (every third of its TTL, or a little sooner), then
   * revokes it (a third of the time) or abandons it.
   */
  async #keepAndEnd(c: SimClient, seq: number, id: number, info: _LeaseInfo): Promise<void> {
    const ttlMs = info.ttlMs;
    if (this.#ctx.phase === "run" && this.#ctx.rng() < 0.3) await this.#statusRead(c, id);
    let alive = true;
    for (
      let r = Math.floor(this.#ctx.rng() * 6);
      r > 0 && alive && this.#ctx.phase === "run";
      r--
    ) {
      await this.#ctx.sleep(this.#ctx.random(0.5, 1) * ttlMs / 3);
      const sent = this.#ctx.clock.now();
      const k = await this.#leaseCall(
        c,
        (node, signal) => node.leases.keepAlive(id, signal),
        ttlMs / 3,
      );
      info.lastAttemptEnd = Math.max(info.lastAttemptEnd, k.end);
      if (k.answer?.kind === "answered") {
        info.lastAckedSend = Math.max(info.lastAckedSend, sent);
        this.#ctx.stats.leaseKeepAlives++;
        this.#ctx.note(`c${c.id} kept lease ${id} alive (sent ${sent.toFixed(1)})`);
      } else if (k.answer?.kind === "notFound") {
        alive = false;
        this.#ctx.note(`c${c.id} found lease ${id} gone`);
      }
      if (this.#ctx.phase === "run" && this.#ctx.rng() < 0.25) await this.#statusRead(c, id);
    }
    if (alive && this.#ctx.phase === "run" && this.#ctx.rng() < 0.3) {
      const revoke = await this.#leaseCall(
        c,
        (node, signal) => node.write({ op: "lease_revoke", ids: [id], reason: "revoke" }, signal),
        this.#ctx.opts.opTimeoutMs ?? 3000,
      );
      if (
        revoke.answer?.kind === "answered" && this.#ctx.phase === "run" && this.#ctx.rng() < 0.3
      ) {
        await this.#statusRead(c, id); // gone: no longer found
      }
      if (
        revoke.answer?.kind === "answered" && this.#ctx.phase === "run" && this.#ctx.rng() < 0.5
      ) {
        // A transaction naming the revoked lease: it must do nothing (a put with a missing
        // lease is not applied), which the history and the reference state check.
        await this.#leasePut(c, this.#ctx.pick(this.#ctx.keys), `c${c.id}-${seq}-R`, id, true);
      }
    }
  }

  /**
   * Reads the status of lease `id` (`GET /v1/leases/:id`), or, half the time, of every lease
   * (`GET /v1/leases`), from the leader; an answer is checked at the end (`lease-read`) against
   * the committed leases while the read ran.
   */
  async #statusRead(c: SimClient, id: number): Promise<void> {
    const one = this.#ctx.rng() < 0.5 ? id : null;
    const lo = this.#checker.maxCommit;
    const read = await this.#leaseCall(
      c,
      (node, signal) => node.leases.leaseStatus(one, signal),
      this.#ctx.opts.opTimeoutMs ?? 3000,
    );
    if (read.answer === null) return; // unknown: a read, dropped
    const answer = read.answer.kind === "answered" ? read.answer.value : null;
    this.#ctx.stats.leaseStatusReads++;
    if (answer === null) this.#ctx.stats.leaseStatusGone++;
    const what = `c${c.id}'s read of ${one === null ? "every lease" : `lease ${one}`}`;
    this.#ctx.note(
      `${what}: ${
        answer === null ? "not found" : answer.map((l) => `${l.id}[${l.keys}]`).join(" ")
      }`,
    );
    this.#checker.leaseReads.push({ id: one, answer, lo, hi: this.#checker.maxCommit, what });
  }

  /** Puts `value` with lease `id`: as a put naming it, or (`txn`) a transaction's put. */
  #leasePut(
    c: SimClient,
    key: string,
    value: string,
    id: number,
    txn: boolean,
  ): Promise<Outcome | null> {
    const op = this.#clients.newOp(c, { kind: "put", key, value, lease: false });
    op.leaseRef = { id };
    if (txn) op.txnLease = { exists: this.#ctx.rng() < 0.5 };
    // Not async: the caller awaits perform's own promise (one more hop would reorder the run).
    return this.#clients.perform(op, this.#ctx.opts.opTimeoutMs ?? 3000);
  }

  /**
   * Calls `fn` on nodes (following leader hints; again where it was refused or not applied) until
   * it answers, it is unknown whether it took effect, or `timeoutMs` passes. `end` is when the
   * call was given up: after it no request of the call reaches a node.
   */
  async #leaseCall<T>(
    c: SimClient,
    fn: (node: RaftNode, signal: AbortSignal) => Promise<T>,
    timeoutMs: number,
  ): Promise<{ answer: _LeaseAnswer<T> | null; end: number }> {
    const abort = new AbortController();
    const deadline = this.#ctx.clock.now() + timeoutMs;
    let answer: _LeaseAnswer<T> | null = null;
    while (answer === null && this.#ctx.clock.now() < deadline) {
      const useHint = c.hint >= 0 && this.#ctx.rng() < 0.7;
      const n = this.#ctx
        .nodes[useHint ? c.hint : Math.floor(this.#ctx.rng() * this.#ctx.nodes.length)]!;
      const got = await Promise.race([
        this.#clients.callOn(
          n,
          abort.signal,
          fn,
          (value): _LeaseAnswer<T> => ({ kind: "answered", value }),
          (e): _LeaseAnswer<T> | Outcome => {
            if (e instanceof QuotaExceededError) this.#ctx.stats.leaseQuotaRefusals++;
            return e instanceof LeaseNotFoundError ? { kind: "notFound" } : outcomeOf(e);
          },
        ),
        this.#ctx.sleep(deadline - this.#ctx.clock.now()),
      ]);
      if (got === null || got.kind === "unknown") break;
      if (got.kind === "answered" || got.kind === "notFound") {
        answer = got;
      } else {
        await this.#clients.redirect(c, got, deadline);
      }
    }
    abort.abort();
    if (answer === null) c.hint = -1;
    return { answer, end: this.#ctx.clock.now() };
  }

  /**
   * A committed revoke or expire entry at `index` (of `term`) removed `result.deleted`: each a
   * delete in the history, from when the entry was first seen in a log to now (when it is known
   * committed). An expiry is checked against the leases' promises (see the module doc).
   */
  ended(
    index: number,
    term: number,
    result: Extract<KvResult, { op: "lease_revoke" }>,
    reason: "revoke" | "expire",
  ): void {
    const now = this.#ctx.clock.now();
    const proposed = this.#checker.firstSeen.get(index * 1_048_576 + term) ?? now;
    for (const key of result.deleted) {
      this.#checker.history.push({
        client: this.#endClient++,
        kind: "delete",
        key,
        value: null,
        call: proposed,
        return: now,
      });
    }
    this.#ctx.note(
      `${reason} of lease(s) ${result.revoked.join(",")} committed at ${index} (proposed at ` +
        `${proposed.toFixed(1)}), deleting ${result.deleted.join(",") || "nothing"}`,
    );
    if (reason === "revoke") {
      this.#ctx.stats.leasesRevoked += result.revoked.length;
      return;
    }
    this.#ctx.stats.leasesExpired += result.revoked.length;
    const skew = this.#ctx.faults.clockSkew;
    const tick = this.#ctx.faults.tickMs;
    const election = this.#ctx.electionMs;
    const since = this.#checker.leaderSince.get(term);
    // A new leader gives each lease its TTL once it has applied the log: after its first commit.
    const applying = Math.max(since ?? 0, this.#checker.termCommitted.get(term) ?? 0);
    const leader = this.#checker.leaders.get(term);
    for (const id of result.revoked) {
      const info = this.#leaseInfo.get(id);
      if (info === undefined) continue;
      const earliest = info.lastAckedSend + info.ttlMs / (1 + skew);
      if (proposed < earliest - 1) {
        this.#ctx.violation(
          "lease-early",
          `lease ${id} (ttl ${info.ttlMs}ms) was expired by the entry at index ${index}, ` +
            `proposed at ${proposed.toFixed(1)}, before ${earliest.toFixed(1)}: its last ` +
            `acknowledged grant or keep-alive was sent at ${info.lastAckedSend.toFixed(1)}`,
        );
      }
      if (since === undefined || leader === undefined) continue;
      // A paused leader, or one whose disk was full (it proposes nothing), is late with cause.
      const stalled = (this.#stallsOf.get(leader) ?? []).some(([a, b]) =>
        a <= proposed && b >= since
      );
      if (stalled) continue;
      const due = Math.max(
        info.lastAttemptEnd + info.ttlMs / (1 - skew),
        applying + Math.max(info.ttlMs, election) / (1 - skew),
      );
      const latest = due + 2 * tick / (1 - skew) +
        (this.#ctx.faults.transferEveryMs > 0 ? 2 * election : 0) + 1;
      this.#ctx.stats.leaseBoundChecks++;
      if (proposed > latest) {
        this.#ctx.violation(
          "lease-bound",
          `lease ${id} (ttl ${info.ttlMs}ms) was expired by the entry at index ${index}, ` +
            `proposed at ${proposed.toFixed(1)}, after ${latest.toFixed(1)}: its last renewal ` +
            `could reach a node until ${info.lastAttemptEnd.toFixed(1)} and ${leader} led ` +
            `term ${term} from ${since.toFixed(1)}, its first commit at ${applying.toFixed(1)}`,
        );
      }
    }
  }
}
