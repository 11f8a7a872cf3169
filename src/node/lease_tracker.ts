/**
 * The leader's lease deadlines. The state machine knows which leases exist and their time to
 * live, but keeps no time: deciding that a lease has expired is the leader's alone, on its own
 * clock (the driver's injected {@linkcode Clock}), and the decision goes through the log as a
 * `lease_revoke` entry with reason `expire`, so every replica deletes the same keys at the same
 * index.
 *
 * The rules, and why they keep a lease's promise:
 *
 * - A grant (or a put that grants a lease) gives a deadline of "applied now + TTL".
 * - A keep-alive is served by the leader, not written to the log: once the leader has confirmed
 *   with a quorum that it still leads (a ReadIndex round), the deadline becomes at least "when the
 *   request arrived + TTL". So a client whose keep-alive was acknowledged at time t keeps its keys
 *   until at least t + TTL, whoever leads: a leader elected later than the confirmation gives...
 * - ...every lease a fresh deadline when it takes over ({@linkcode LeaseTracker.promote}): "now +
 *   max(TTL, election timeout)". It cannot know when the old leader last renewed a lease, so it
 *   assumes "just now". No lease therefore expires before the new leader's election plus an
 *   election timeout, and none expires early for a client whose keep-alives were acknowledged.
 * - The price: a key whose holder is gone outlives its lease by at most max(TTL, election
 *   timeout) plus the time it took to elect the new leader, for each leader change while it was
 *   due (the README states the bound).
 *
 * @module
 */

import type { LeaseInfo } from "../kv/state_machine.ts";
import type { KvResult } from "./backend.ts";
import type { Clock } from "./clock.ts";

/**
 * The shortest time to live a lease is granted (etcd's `minLeaseTTL`): one and a half election
 * timeouts, counted in whole ticks as the core counts them (`floor(3 * electionTicks / 2)` ticks
 * of `heartbeatMs`). A lease must not be able to expire faster than a leader change can take: a
 * new leader starts every lease afresh and is elected, at best, an election timeout after the old
 * one fell silent, and its randomized timeout can run up to twice that. etcd rounds the result up
 * to whole seconds because its TTLs are whole seconds; TTLs here are milliseconds, so the value
 * stays exact.
 *
 * @example
 * ```ts
 * minLeaseTtlMs(10, 100); // 1500: the defaults, --election-timeout 1s and --heartbeat 100ms
 * minLeaseTtlMs(3, 100); // 400: 4 ticks of 100 ms
 * ```
 *
 * @param electionTicks The election timeout in ticks (at least 1).
 * @param heartbeatMs The length of a tick in milliseconds.
 * @returns The minimum time to live in milliseconds.
 */
export function minLeaseTtlMs(electionTicks: number, heartbeatMs: number): number {
  return Math.floor((3 * electionTicks) / 2) * heartbeatMs;
}

/**
 * A requested time to live raised to `minimumMs` when it is shorter (etcd's lessor does the same
 * on a grant, and answers with the TTL granted).
 *
 * @param requestedMs The time to live asked for.
 * @param minimumMs The node's minimum ({@linkcode minLeaseTtlMs}).
 * @returns The time to live granted.
 */
export function grantedTtlMs(requestedMs: number, minimumMs: number): number {
  return Math.max(requestedMs, minimumMs);
}

/** The deadlines of the leases, as this node (when it leads) enforces them. */
export class LeaseTracker {
  readonly #clock: Clock;
  readonly #electionTimeoutMs: number;
  readonly #lookup: (id: number) => LeaseInfo | null;
  /** Deadline of each lease on the clock, by id. */
  #deadlines = new Map<number, number>();
  /** Leases whose expiry was proposed and not yet applied (or failed). */
  #expiring = new Set<number>();
  /** The term in which this node took over the deadlines as leader (0: not leading). */
  #term = 0;

  /**
   * Creates an empty tracker.
   *
   * @param clock The node's clock.
   * @param electionTimeoutMs The least time a new leader gives every lease.
   * @param lookup The applied state's lease of an id (for a put that granted one).
   */
  constructor(
    clock: Clock,
    electionTimeoutMs: number,
    lookup: (id: number) => LeaseInfo | null,
  ) {
    this.#clock = clock;
    this.#electionTimeoutMs = electionTimeoutMs;
    this.#lookup = lookup;
  }

  /** The number of leases tracked. */
  get size(): number {
    return this.#deadlines.size;
  }

  /** Follows an applied entry's result: a grant starts a deadline, a revoke ends them. */
  applied(result: KvResult): void {
    if (result.replayed) return;
    if (result.op === "lease_grant") {
      this.#deadlines.set(result.id, this.#clock.now() + result.ttlMs);
    } else if (result.op === "put" && result.lease !== undefined) {
      // A put that granted its lease (its id is the put's index) starts its deadline.
      if (!this.#deadlines.has(result.lease)) {
        const ttlMs = this.#lookup(result.lease)?.ttlMs ?? 0;
        this.#deadlines.set(result.lease, this.#clock.now() + ttlMs);
      }
    } else if (result.op === "lease_revoke") {
      for (const id of result.revoked) {
        this.#deadlines.delete(id);
        this.#expiring.delete(id);
      }
    }
  }

  /** Starts over from the state's leases (after loading a snapshot): each gets now + TTL. */
  reset(leases: readonly LeaseInfo[]): void {
    const now = this.#clock.now();
    this.#deadlines = new Map(leases.map((l) => [l.id, now + l.ttlMs]));
    this.#expiring.clear();
  }

  /**
   * This node became the leader: every lease gets now + max(TTL, election timeout), since the
   * keep-alives the old leader took are unknown here.
   */
  promote(leases: readonly LeaseInfo[], term: number): void {
    this.#term = term;
    const now = this.#clock.now();
    this.#deadlines = new Map(
      leases.map((l) => [l.id, now + Math.max(l.ttlMs, this.#electionTimeoutMs)]),
    );
    this.#expiring.clear();
  }

  /** This node stopped leading: expiries it proposed will fail or be applied anyway. */
  demote(): void {
    this.#term = 0;
    this.#expiring.clear();
  }

  /**
   * Whether the deadlines are this leader's of `term`: taken over by {@linkcode promote} in that
   * term. Until then (a node that has just won an election but not yet handled the news) they are
   * whatever it kept while following, blind to the old leader's keep-alives, and must not expire
   * anything.
   */
  leadsIn(term: number): boolean {
    return term !== 0 && this.#term === term;
  }

  /** Whether the expiry of `id` was proposed (a keep-alive comes too late). */
  isExpiring(id: number): boolean {
    return this.#expiring.has(id);
  }

  /** Renews `id` (of `ttlMs`) from `from`: its deadline becomes at least `from + ttlMs`. */
  renew(id: number, ttlMs: number, from: number): void {
    const d = this.#deadlines.get(id);
    this.#deadlines.set(id, Math.max(d ?? -Infinity, from + ttlMs));
  }

  /** Milliseconds until `id` is due (0 when due or unknown). */
  remaining(id: number): number {
    const d = this.#deadlines.get(id);
    return d === undefined ? 0 : Math.max(0, Math.round(d - this.#clock.now()));
  }

  /**
   * The leases now due that are not being expired yet, in id order, marked as being expired:
   * the leader proposes one entry expiring them all.
   */
  due(): number[] {
    const now = this.#clock.now();
    const ids: number[] = [];
    for (const [id, d] of this.#deadlines) {
      if (d <= now && !this.#expiring.has(id)) ids.push(id);
    }
    ids.sort((a, b) => a - b);
    for (const id of ids) this.#expiring.add(id);
    return ids;
  }

  /** The expiry of `ids` failed (not applied): they are due again at the next check. */
  failed(ids: readonly number[]): void {
    for (const id of ids) this.#expiring.delete(id);
  }
}
