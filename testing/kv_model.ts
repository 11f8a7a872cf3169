/**
 * A reference model of the key-value state machine, written as plainly as possible and apart
 * from `src/kv/`: a `Map` of entries, ranges by sorting every key, remembered idempotent outcomes
 * in an array, oldest first (with a map of them by id), leases as a map of ids and a map of key
 * to lease id. It gives the same results as `KvStateMachine` should, so tests and the simulation
 * can check the real state machine (and whole clusters) against it.
 *
 * It shares only the command types and the key order with the real code: the order is checked on
 * its own against UTF-8 bytes in `src/kv/key_order_test.ts`.
 *
 * @module
 */

import {
  compareKeys,
  encodeCommand,
  type KeyRange,
  type KvCommand,
  type KvEntry,
  type KvResult,
  type PlainCommand,
  type TxnOpResult,
} from "../src/kv/state_machine.ts";

interface _Remembered {
  id: string;
  /** The command's encoding: a retry must send the same bytes. */
  bytes: Uint8Array;
  expiresAt: number;
  result: KvResult;
  size: number;
}

/** The reference model: see the module doc. */
export class KvModel {
  /** The entries by key. */
  readonly data = new Map<string, KvEntry>();
  #remembered: _Remembered[] = [];
  /**
   * The same outcomes by id (an id is remembered once at most), and the sum of their sizes: kept
   * in step with the array, so that an apply neither scans nor sums it (a simulation applies
   * every committed entry of a run here, with up to a thousand outcomes remembered).
   */
  #rememberedById = new Map<string, _Remembered>();
  #rememberedSize = 0;
  /** How many times a command ran (not replayed), by idempotency key. */
  readonly appliedById = new Map<string, number>();
  /** The leases' time to live by id. */
  readonly leases = new Map<number, number>();
  /** The lease each attached key belongs to. */
  readonly keyLease = new Map<string, number>();

  /** Applies `cmd` as the entry at `index` and returns its result. */
  apply(index: number, cmd: KvCommand): KvResult {
    if (cmd.op !== "idempotent") return this.#plain(index, cmd);
    // Expired outcomes go from the front only (as far as the first one still alive), or when hit.
    while (this.#remembered[0] !== undefined && this.#remembered[0].expiresAt <= cmd.at) {
      this.#forget(0);
    }
    const bytes = encodeCommand(cmd.command);
    const r = this.#rememberedById.get(cmd.id);
    if (r !== undefined) {
      if (r.expiresAt > cmd.at) {
        if (!_sameBytes(r.bytes, bytes)) return { op: "idempotency_mismatch", index, id: cmd.id };
        return { ..._copy(r.result), replayed: true };
      }
      this.#forget(this.#remembered.indexOf(r));
    }
    const result = this.#plain(index, cmd.command);
    this.appliedById.set(cmd.id, (this.appliedById.get(cmd.id) ?? 0) + 1);
    const remembered: _Remembered = {
      id: cmd.id,
      bytes,
      expiresAt: cmd.at + cmd.ttlMs,
      result: _copy(result),
      size: _sessionSize(cmd.id, result),
    };
    this.#remembered.push(remembered);
    this.#rememberedById.set(cmd.id, remembered);
    this.#rememberedSize += remembered.size;
    while (
      this.#remembered.length > cmd.maxKeys ||
      (this.#remembered.length > 0 && this.#rememberedSize > cmd.maxBytes)
    ) {
      this.#forget(0);
    }
    return result;
  }

  /** Forgets the remembered outcome at `at` (oldest first). */
  #forget(at: number): void {
    const [r] = this.#remembered.splice(at, 1);
    this.#rememberedById.delete(r!.id);
    this.#rememberedSize -= r!.size;
  }

  /** The ids whose outcomes are remembered, oldest first. */
  rememberedIds(): string[] {
    return this.#remembered.map((r) => r.id);
  }

  /** How many outcomes are remembered (`rememberedIds().length`, without the copy). */
  get rememberedCount(): number {
    return this.#remembered.length;
  }

  /** The entries of `range` in key order. */
  range(range: KeyRange): KvEntry[] {
    return [...this.data.keys()].sort(compareKeys).filter((k) => inRange(k, range)).map((k) =>
      this.data.get(k)!
    );
  }

  #plain(index: number, cmd: PlainCommand): KvResult {
    const cur = (k: string) => this.data.get(k) ?? null;
    switch (cmd.op) {
      case "put": {
        if (cmd.cas !== undefined && (cur(cmd.key)?.modIndex ?? 0) !== cmd.cas) {
          return { op: "cas_failed", index, key: cmd.key, current: cur(cmd.key) };
        }
        let lease: number | null = null;
        if (cmd.lease !== undefined) {
          if ("ttlMs" in cmd.lease) {
            this.leases.set(index, cmd.lease.ttlMs);
            lease = index;
          } else if (this.leases.has(cmd.lease.id)) {
            lease = cmd.lease.id;
          } else {
            return { op: "lease_not_found", index, lease: cmd.lease.id };
          }
        }
        const e = this.#write(index, cmd.key, cmd.value);
        if (lease !== null) this.keyLease.set(cmd.key, lease);
        const result: KvResult = {
          op: "put",
          index,
          createIndex: e.createIndex,
          modIndex: e.modIndex,
          version: e.version,
        };
        if (lease !== null) result.lease = lease;
        return result;
      }
      case "delete":
        if (cmd.cas !== undefined && (cur(cmd.key)?.modIndex ?? 0) !== cmd.cas) {
          return { op: "cas_failed", index, key: cmd.key, current: cur(cmd.key) };
        }
        return { op: "delete", index, deleted: this.#delete(cmd.key) };
      case "lease_grant":
        this.leases.set(index, cmd.ttlMs);
        return { op: "lease_grant", index, id: index, ttlMs: cmd.ttlMs };
      case "lease_revoke": {
        const revoked = cmd.ids.filter((id) => this.leases.has(id));
        const deleted: string[] = [];
        for (const id of revoked) {
          this.leases.delete(id);
          const keys = [...this.keyLease].filter(([, l]) => l === id).map(([k]) => k);
          for (const k of keys.sort(compareKeys)) {
            if (this.#delete(k)) deleted.push(k);
          }
        }
        return { op: "lease_revoke", index, revoked, deleted };
      }
      case "delete_range": {
        const keys = this.range(cmd.range).map((e) => e.key);
        for (const k of keys) this.#delete(k);
        return { op: "delete_range", index, deleted: keys.length };
      }
      case "txn": {
        let succeeded = true;
        for (const c of cmd.compare) {
          const e = cur(c.key);
          let ok: boolean;
          if (c.target === "exists") {
            ok = c.op === "=" ? (e !== null) === c.value : (e !== null) !== c.value;
          } else if (c.target === "value") {
            ok = e !== null && _test(compareKeys(e.value, c.value), c.op);
          } else {
            const n = e === null
              ? 0
              : { version: e.version, mod_index: e.modIndex, create_index: e.createIndex }[
                c.target
              ];
            ok = _test(n - c.value, c.op);
          }
          if (!ok) succeeded = false;
        }
        const branch = succeeded ? cmd.success : cmd.failure;
        const missing = branch.find((op) =>
          op.op === "put" && op.lease !== undefined && !this.leases.has(op.lease)
        );
        if (missing !== undefined && missing.op === "put") {
          return { op: "lease_not_found", index, lease: missing.lease! };
        }
        const results: TxnOpResult[] = [];
        for (const op of branch) {
          if (op.op === "put") {
            const e = this.#write(index, op.key, op.value);
            const result: TxnOpResult = {
              op: "put",
              key: op.key,
              createIndex: e.createIndex,
              modIndex: e.modIndex,
              version: e.version,
            };
            if (op.lease !== undefined) {
              this.keyLease.set(op.key, op.lease);
              result.lease = op.lease;
            }
            results.push(result);
          } else if (op.op === "delete") {
            results.push({ op: "delete", key: op.key, deleted: this.#delete(op.key) });
          } else {
            results.push({ op: "get", key: op.key, entry: cur(op.key) });
          }
        }
        return { op: "txn", index, succeeded, results };
      }
    }
  }

  /** Deletes `key` and detaches it from its lease; whether it existed. */
  #delete(key: string): boolean {
    this.keyLease.delete(key);
    return this.data.delete(key);
  }

  #write(index: number, key: string, value: string): KvEntry {
    this.keyLease.delete(key);
    const old = this.data.get(key);
    const e: KvEntry = {
      key,
      value,
      createIndex: old?.createIndex ?? index,
      modIndex: index,
      version: (old?.version ?? 0) + 1,
    };
    this.data.set(key, e);
    return e;
  }
}

/** Whether `key` lies in `range`. */
export function inRange(key: string, range: KeyRange): boolean {
  if ("prefix" in range) return key.startsWith(range.prefix);
  return compareKeys(key, range.start) >= 0 &&
    (range.end === null || compareKeys(key, range.end) < 0);
}

function _test(d: number, op: "=" | "!=" | "<" | ">"): boolean {
  return op === "=" ? d === 0 : op === "!=" ? d !== 0 : op === "<" ? d < 0 : d > 0;
}

/** The bytes the state machine counts for a remembered outcome (its snapshot record). */
function _sessionSize(id: string, result: KvResult): number {
  return 4 + _ENCODER.encode(id).length + 16 + _ENCODER.encode(JSON.stringify(result)).length;
}

const _ENCODER = new TextEncoder();

/** Whether `a` and `b` hold the same bytes. */
function _sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * A deep copy of a result (plain objects, arrays and primitives), so that what the model
 * remembers and what it hands out never share an object: `structuredClone` gives the same, at
 * many times the cost.
 */
function _copy<T>(value: T): T {
  if (Array.isArray(value)) return value.map(_copy) as T;
  if (value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = _copy(v);
  return out as T;
}
