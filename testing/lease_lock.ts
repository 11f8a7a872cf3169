/**
 * The README's recipe for a distributed lock (and leader election) on raftkv's compare-and-set,
 * as a small client: a lock is a key; holding it means having written it with a compare-and-set
 * and rewriting it before it goes stale.
 *
 * - **Acquire**: `PUT /v1/data/{lock}?cas=0` with a value naming the holder and a random nonce
 *   (only if nobody holds it).
 * - **Keep**: rewrite it every third of the time to live with `?cas=<mod_index it has now>`; a
 *   412 means someone else took it over: stop at once.
 * - **Wait and take over**: a waiter reads the key; if its `mod_index` stays the same for a whole
 *   time to live on the waiter's own clock, the holder stopped renewing (it died, or lost the
 *   cluster), and the waiter takes it with `?cas=<that mod_index>`.
 * - **Release**: `DELETE /v1/data/{lock}?cas=<mod_index>`.
 * - **Fenced work**: what the holder does under the lock is a transaction that compares the lock's
 *   value (its own nonce): it applies only while the lock is still its own, in the log's order,
 *   whatever the clocks say. A holder that was paused past its lease finds its writes refused.
 *
 * A holder counts the lock as its own only until the time it sent its last successful write plus
 * the time to live minus a margin; a waiter takes over at the earliest a full time to live after
 * it first saw that write. Both measure on their own monotonic clocks, so only clock rates (not
 * wall clocks) must agree within the margin. Every compare-and-set carries an `Idempotency-Key`,
 * so a retry after a timeout or a lost answer is answered with its first outcome instead of a
 * misleading 412.
 *
 * With `useLease` (`--lease` on the command line) the lock uses the cluster's leases instead of
 * the waiter's clock: acquire by granting a lease and writing the key with `?cas=0&lease=ID`, keep
 * it by keeping the lease alive (a 404 means it expired: stop at once), release by revoking the
 * lease. A waiter only waits for the key to be gone: a dead or frozen holder's lease expires on
 * the leader and takes the key with it. The holder still counts the lock as its own only until
 * its last acknowledged keep-alive was sent plus the TTL minus a margin, and fenced work is what
 * keeps the work safe.
 *
 * Leader election is the same lock: the leader holds it and publishes itself in the value, the
 * others wait to take it over and read the value to find the leader.
 *
 * Run as a program (`deno run -A testing/lease_lock.ts --urls URL,... --key K --owner NAME`) it
 * competes for the lock for `--rounds` tenures, doing `--work` fenced increments of the key
 * `<key>/counter` in each, and prints one JSON line per event (for `tests/lease_lock_test.ts`).
 *
 * @module
 */

import { parseArgs } from "node:util";

/** Options of a {@linkcode LeaseLock}. */
export interface LeaseLockOptions {
  /** The nodes' API base URLs; requests go to one, then the next after a failure. */
  urls: string[];
  /** The lock's key. */
  key: string;
  /** Who asks for it (part of the value). */
  owner: string;
  /** How long a holder may go without renewing before others may take over, in ms. */
  ttlMs: number;
  /** Between reads while waiting, in ms. Default ttlMs / 10. */
  pollMs?: number;
  /** One request's deadline, in ms. Default ttlMs / 3. */
  requestTimeoutMs?: number;
  /** Hold the lock with a lease of the cluster (see the module doc). Default false. */
  useLease?: boolean;
}

/** What a request got: an answer, or null for nothing that says anything (a timeout, a cut). */
export type LockAnswer = { status: number; body: Record<string, unknown> } | null;

/** A lease lock on one key: see the module doc. */
export class LeaseLock {
  readonly #o: Required<LeaseLockOptions>;
  #next = 0;
  /** The value written while holding (owner and nonce), or null. */
  #value: string | null = null;
  /** The lock key's mod_index after our last write. */
  #modIndex = 0;
  /** Until when (monotonic ms) the lock is ours for sure. */
  #validUntil = 0;
  #renewer: ReturnType<typeof setTimeout> | undefined;
  /** The renewal in flight, if any. */
  #renewal: Promise<void> = Promise.resolve();
  #releasing = false;
  #lost: (() => void) | null = null;
  #seq = 0;
  /** The lease the lock's key is attached to (with `useLease`), or null. */
  #lease: number | null = null;

  /** A lock with `options`; nothing is sent until {@linkcode LeaseLock.acquire}. */
  constructor(options: LeaseLockOptions) {
    this.#o = {
      pollMs: Math.max(5, Math.floor(options.ttlMs / 10)),
      requestTimeoutMs: Math.max(50, Math.floor(options.ttlMs / 3)),
      useLease: false,
      ...options,
    };
  }

  /** Whether the lock is held now (by this client's clock). */
  get held(): boolean {
    return this.#value !== null && performance.now() < this.#validUntil;
  }

  /** The value written while holding: what fenced work compares. */
  get value(): string | null {
    return this.#value;
  }

  /**
   * Waits until the lock is ours, then keeps renewing it in the background.
   *
   * @param onLost Called once if the lock is lost (taken over, or not renewed in time).
   * @returns The fencing token: the lock's mod_index when it was acquired (it only grows
   * from one holder to the next).
   */
  async acquire(onLost: () => void = () => {}): Promise<number> {
    const value = `${this.#o.owner}/${crypto.randomUUID()}`;
    if (this.#o.useLease) return await this.#acquireWithLease(value, onLost);
    let seen: { modIndex: number; since: number } | null = null;
    for (;;) {
      const read = await this.#request("GET", `/v1/data/${encodeURIComponent(this.#o.key)}`);
      let cas: number | null = null;
      if (read?.status === 404) {
        cas = 0;
      } else if (read?.status === 200) {
        const m = read.body.mod_index as number;
        if (seen === null || seen.modIndex !== m) seen = { modIndex: m, since: performance.now() };
        // Unchanged for a whole time to live: its holder stopped renewing.
        if (performance.now() - seen.since >= this.#o.ttlMs) cas = m;
      }
      if (cas !== null) {
        const sent = performance.now();
        const r = await this.#cas(cas, value);
        if (r?.status === 200) {
          this.#hold(value, r.body.mod_index as number, sent, onLost);
          return r.body.mod_index as number;
        }
      }
      await _sleep(this.#o.pollMs);
    }
  }

  /**
   * Acquires with a lease: waits until the key is gone, then grants a lease and writes the key
   * attached to it (only if it does not exist).
   */
  async #acquireWithLease(value: string, onLost: () => void): Promise<number> {
    const path = `/v1/data/${encodeURIComponent(this.#o.key)}`;
    for (let attempt = 1;; attempt++) {
      const read = await this.#request("GET", path);
      if (read?.status !== 404) {
        await _sleep(this.#o.pollMs);
        continue;
      }
      const sent = performance.now();
      const grant = await this.#retrying(
        "POST",
        "/v1/leases",
        { ttl: `${this.#o.ttlMs}ms` },
        `${value}/grant/${attempt}`,
      );
      if (grant?.status !== 201) continue;
      const lease = grant.body.id as number;
      const r = await this.#retrying(
        "PUT",
        `${path}?cas=0&lease=${lease}`,
        { v: value },
        `${value}/acquire/${attempt}`,
      );
      if (r?.status === 200) {
        this.#lease = lease;
        this.#holdLease(value, lease, sent, onLost);
        return r.body.mod_index as number;
      }
      // Taken meanwhile (or the lease expired already): give the lease back, wait again.
      await this.#request("DELETE", `/v1/leases/${lease}`);
    }
  }

  /** Keeps the lease alive every third of its TTL; a 404, or no answer in time, loses the lock. */
  #holdLease(value: string, lease: number, sentAt: number, onLost: () => void): void {
    this.#value = value;
    this.#validUntil = sentAt + this.#o.ttlMs * 0.8;
    this.#lost = onLost;
    this.#releasing = false;
    const renew = async () => {
      if (this.#value !== value) return;
      const sent = performance.now();
      const r = await this.#request("POST", `/v1/leases/${lease}/keepalive`);
      if (this.#value !== value) return;
      if (r?.status === 200) {
        this.#validUntil = sent + this.#o.ttlMs * 0.8;
      } else if (r?.status === 404 || performance.now() >= this.#validUntil) {
        this.#lose();
        return;
      }
      const pause = r?.status === 200 ? this.#o.ttlMs / 3 : this.#o.pollMs;
      if (!this.#releasing) this.#renewer = setTimeout(tick, pause);
    };
    const tick = () => {
      this.#renewal = renew();
    };
    this.#renewer = setTimeout(tick, this.#o.ttlMs / 3);
  }

  /** Stops renewing and deletes the lock if it is still ours. */
  async release(): Promise<void> {
    const value = this.#value;
    if (value === null) return;
    clearTimeout(this.#renewer);
    this.#releasing = true;
    if (this.#lease !== null) {
      await this.#renewal;
      const lease = this.#lease;
      const still = this.#value === value;
      this.#stop();
      // Revoking the lease deletes the key with it.
      if (still) {
        await this.#retrying("DELETE", `/v1/leases/${lease}`, undefined, `${value}/release`);
      }
      return;
    }
    // A renewal in flight moves mod_index: wait for it, or the delete's condition would fail.
    await this.#renewal;
    const modIndex = this.#modIndex;
    const still = this.#value === value;
    this.#stop();
    if (!still) return;
    await this.#retrying(
      "DELETE",
      `/v1/data/${encodeURIComponent(this.#o.key)}?cas=${modIndex}`,
      undefined,
      `${value}/release`,
    );
  }

  /**
   * Runs a transaction that applies only while the lock is still ours (its value is our nonce):
   * `compare` and `success` are added to that condition. When it does not apply, the lock is
   * known lost (the compares added must hold while the lock is ours).
   *
   * @returns The transaction's answer (`succeeded` false when the lock is no longer ours), or
   * null when the outcome is unknown.
   */
  async fenced(
    compare: unknown[],
    success: unknown[],
    idempotencyKey: string,
  ): Promise<Record<string, unknown> | null> {
    if (this.#value === null) return { succeeded: false };
    const r = await this.#request("POST", "/v1/txn", {
      compare: [{ k: this.#o.key, value: this.#value }, ...compare],
      success,
    }, { "idempotency-key": idempotencyKey });
    if (r?.status !== 200) return null;
    if (r.body.succeeded === false) this.#lose();
    return r.body;
  }

  /** Reads a key through the cluster (linearizable): its answer, or null. */
  async read(key: string): Promise<LockAnswer> {
    return await this.#request("GET", `/v1/data/${encodeURIComponent(key)}`);
  }

  #hold(value: string, modIndex: number, sentAt: number, onLost: () => void): void {
    this.#value = value;
    this.#modIndex = modIndex;
    this.#validUntil = sentAt + this.#o.ttlMs * 0.8;
    this.#lost = onLost;
    this.#releasing = false;
    const renew = async () => {
      if (this.#value !== value) return;
      const sent = performance.now();
      const r = await this.#cas(this.#modIndex, value);
      if (this.#value !== value) return;
      if (r?.status === 200) {
        this.#modIndex = r.body.mod_index as number;
        this.#validUntil = sent + this.#o.ttlMs * 0.8;
      } else if (r?.status === 412 || performance.now() >= this.#validUntil) {
        this.#lose();
        return;
      }
      if (!this.#releasing) this.#renewer = setTimeout(tick, this.#o.ttlMs / 3);
    };
    const tick = () => {
      this.#renewal = renew();
    };
    this.#renewer = setTimeout(tick, this.#o.ttlMs / 3);
  }

  #lose(): void {
    const lost = this.#lost;
    this.#stop();
    lost?.();
  }

  #stop(): void {
    clearTimeout(this.#renewer);
    this.#value = null;
    this.#lost = null;
    this.#lease = null;
  }

  /** `PUT ?cas=` with an idempotency key, retried while its outcome is unknown. */
  async #cas(cas: number, value: string): Promise<LockAnswer> {
    return await this.#retrying(
      "PUT",
      `/v1/data/${encodeURIComponent(this.#o.key)}?cas=${cas}`,
      { v: value },
      `${value}/${++this.#seq}`,
    );
  }

  /**
   * A write with an idempotency key, retried (same key) while its outcome is unknown, for as
   * long as it could still matter (a time to live): the answer, or null if none came in time.
   */
  async #retrying(
    method: string,
    path: string,
    body: unknown,
    idempotencyKey: string,
  ): Promise<LockAnswer> {
    const until = performance.now() + this.#o.ttlMs;
    for (;;) {
      const r = await this.#request(method, path, body, { "idempotency-key": idempotencyKey });
      if (r !== null && r.status !== 502 && r.status !== 503 && r.status !== 504) return r;
      if (performance.now() >= until) return null;
      await _sleep(this.#o.pollMs);
    }
  }

  /** One request to one node (the next one after a failure); null when nothing came back. */
  async #request(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<LockAnswer> {
    const url = this.#o.urls[this.#next % this.#o.urls.length]!;
    try {
      const res = await fetch(url + path, {
        method,
        headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(this.#o.requestTimeoutMs),
      });
      const text = await res.text();
      if (res.status >= 500) this.#next++;
      return { status: res.status, body: text === "" ? {} : JSON.parse(text) };
    } catch {
      this.#next++;
      return null;
    }
  }
}

function _sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Wall-clock milliseconds from the monotonic clock: comparable across processes of one machine. */
function _now(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * The program: competes for the lock `--rounds` times; in each tenure does `--work` fenced
 * increments of `<key>/counter`, then releases. Prints JSON lines: `acquired` (with the fencing
 * token), `incremented` (the counter value it wrote), `lost`, `released`, `done`.
 */
async function _main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      urls: { type: "string" },
      key: { type: "string", default: "locks/demo" },
      owner: { type: "string", default: `client-${Deno.pid}` },
      ttl: { type: "string", default: "1000" },
      lease: { type: "boolean", default: false },
      rounds: { type: "string", default: "3" },
      work: { type: "string", default: "5" },
    },
  });
  const print = (event: string, extra: Record<string, unknown> = {}) =>
    console.log(JSON.stringify({ event, owner: values.owner, t: _now(), ...extra }));
  const lock = new LeaseLock({
    urls: (values.urls ?? "").split(","),
    key: values.key,
    owner: values.owner,
    ttlMs: Number(values.ttl),
    useLease: values.lease,
  });
  const counter = `${values.key}/counter`;
  for (let round = 0; round < Number(values.rounds); round++) {
    let lost = false;
    const token = await lock.acquire(() => {
      lost = true;
      print("lost");
    });
    print("acquired", { token });
    for (let i = 0; i < Number(values.work) && !lost; i++) {
      const read = await lock.read(counter);
      if (read === null || (read.status !== 200 && read.status !== 404)) {
        i--; // no answer (a leader change, say): try again
        await _sleep(50);
        continue;
      }
      const n = read.status === 200 ? Number(read.body.v) : 0;
      await _sleep(60); // the work the lock protects takes a while
      // Only the lock guards the counter: two holders at once would write the same value.
      const r = await lock.fenced(
        [],
        [{ op: "put", k: counter, v: String(n + 1) }],
        `${lock.value}/work/${i}`,
      );
      if (r?.succeeded === true) print("incremented", { value: n + 1 });
      await _sleep(10);
    }
    if (!lost) {
      print("releasing");
      await lock.release();
    }
  }
  print("done");
}

if (import.meta.main) await _main();
