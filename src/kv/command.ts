/**
 * The commands of the key-value state machine and their binary form, which is what log entries
 * carry (and so what the WAL and peers hold). The form is versioned by op code: a new kind of
 * command gets a new code, and the old codes keep decoding exactly as before.
 *
 * All integers are big-endian. A "string" is a u32 length and that many UTF-8 bytes; a "u64" is
 * an integer up to 2^53 - 1, as two u32 (high, low).
 *
 * | Code | Command               | After the code                                                        |
 * | ---- | --------------------- | --------------------------------------------------------------------- |
 * | 1    | put                   | key (string), then the value's UTF-8 bytes to the end                 |
 * | 2    | delete                | key (string), nothing after                                           |
 * | 3    | put if `mod_index`    | u64 expected `mod_index` (0: the key must not exist), key, value to the end |
 * | 4    | delete if `mod_index` | u64 expected `mod_index`, key                                         |
 * | 5    | delete a range        | u8 kind: 0 prefix (string); 1 from (string) on; 2 from, to (strings)  |
 * | 6    | transaction           | u16 n, n compares; u16 n, n success ops; u16 n, n failure ops         |
 * | 7    | idempotent            | id (string), f64 leader time (ms), u32 ttl (ms), u32 max keys, u32 max bytes, then a command of codes 1-6 or 8-10 to the end |
 * | 8    | lease grant           | u32 ttl (ms); the lease's id is the entry's index                     |
 * | 9    | put with a lease      | u8 flags (1: cas, 2: new lease), u64 cas if flagged, u64 lease id or (new lease) u32 ttl (ms), key, value to the end |
 * | 10   | lease revoke          | u8 reason (0 revoke, 1 expire), u32 n, n u64 lease ids                |
 *
 * A compare is u8 target (0 value, 1 version, 2 mod_index, 3 create_index, 4 exists), u8 op (0
 * `=`, 1 `!=`, 2 `<`, 3 `>`), the key (string), then the operand: a string for value, a u64 for
 * the three numbers, a u8 (0 or 1) for exists (whose op is `=` or `!=`). A transaction op is u8
 * kind (0 put, 1 delete, 2 get, 3 put with a lease), the key (string), for a put the value
 * (string), and for a put with a lease the lease's id (u64). Kind 3 came later: transactions
 * without it are encoded, and decode, exactly as before.
 *
 * @module
 */

import { decodeUtf8 } from "../util/utf8.ts";

/** Which keys a range covers: those starting with `prefix`, or from `start` to `end` (exclusive). */
export type KeyRange =
  | { prefix: string }
  | {
    /** The first key (inclusive). */
    start: string;
    /** The end (exclusive), or null for no end. */
    end: string | null;
  };

/** What a compare of a transaction looks at. */
export type CompareTarget = "value" | "version" | "mod_index" | "create_index" | "exists";

/** How a compare compares. */
export type CompareOp = "=" | "!=" | "<" | ">";

/**
 * A condition of a transaction on one key. A missing key has version, mod_index and
 * create_index 0 and no value: a value compare with a missing key is false, whatever its op.
 */
export type Compare =
  | { key: string; target: "value"; op: CompareOp; value: string }
  | { key: string; target: "version" | "mod_index" | "create_index"; op: CompareOp; value: number }
  | { key: string; target: "exists"; op: "=" | "!="; value: boolean };

/**
 * An operation of a transaction. A put with `lease` attaches its key to that existing lease (as a
 * put's `lease: {id}`); without, the key is detached from any.
 */
export type TxnOp =
  | { op: "put"; key: string; value: string; lease?: number }
  | { op: "delete"; key: string }
  | { op: "get"; key: string };

/** A command that is not wrapped in an idempotency record. */
export type PlainCommand =
  /**
   * Writes `value` under `key`; with `cas`, only if the key's mod_index is `cas` (0: absent).
   * With `lease` the key is attached to that lease (`{id}`: an existing one; `{ttlMs}`: a new one
   * granted by this entry, whose id is the entry's index); without, it is detached from any.
   */
  | { op: "put"; key: string; value: string; cas?: number; lease?: LeaseRef }
  /** Deletes `key`; with `cas`, only if its mod_index is `cas` (0: only if absent). */
  | { op: "delete"; key: string; cas?: number }
  /** Deletes every key in `range`. */
  | { op: "delete_range"; range: KeyRange }
  /** Runs `success` if every compare holds, else `failure`, as one step. */
  | { op: "txn"; compare: Compare[]; success: TxnOp[]; failure: TxnOp[] }
  /** Grants a lease of `ttlMs`; its id is the entry's index. */
  | { op: "lease_grant"; ttlMs: number }
  /**
   * Ends the leases `ids` and deletes every key attached to them, in this one entry: revoked by
   * a client, or expired (proposed by the leader when their deadline passed). Unknown ids are
   * skipped.
   */
  | { op: "lease_revoke"; ids: number[]; reason: "revoke" | "expire" };

/** Which lease a put attaches its key to: an existing one, or a new one granted with the put. */
export type LeaseRef = { id: number } | { ttlMs: number };

/**
 * A command carrying an idempotency key: applied once, and its outcome replayed for a repeat of
 * the same id within `ttlMs` of `at`. The leader stamps `at` (its wall clock) and the limits, so
 * every replica decides expiry and eviction from the entry alone.
 */
export interface IdempotentCommand {
  /** Marks the kind. */
  op: "idempotent";
  /** The client's idempotency key. */
  id: string;
  /** The leader's wall clock when it proposed the command, in milliseconds since the epoch. */
  at: number;
  /** How long the outcome is remembered, in milliseconds. */
  ttlMs: number;
  /** Most outcomes remembered; the oldest go first. */
  maxKeys: number;
  /** Most bytes of outcomes remembered; the oldest go first. */
  maxBytes: number;
  /** The command itself. */
  command: PlainCommand;
}

/** A state-changing command. */
export type KvCommand = PlainCommand | IdempotentCommand;

const _PUT = 1;
const _DELETE = 2;
const _PUT_IF = 3;
const _DELETE_IF = 4;
const _DELETE_RANGE = 5;
const _TXN = 6;
const _IDEMPOTENT = 7;
const _LEASE_GRANT = 8;
const _PUT_LEASE = 9;
const _LEASE_REVOKE = 10;

const _TARGETS: readonly CompareTarget[] = [
  "value",
  "version",
  "mod_index",
  "create_index",
  "exists",
];
const _OPS: readonly CompareOp[] = ["=", "!=", "<", ">"];
const _TXN_OPS = ["put", "delete", "get"] as const;
/** The transaction op kind of a put with a lease (after the three of `_TXN_OPS`). */
const _TXN_PUT_LEASE = 3;

const _encoder = new TextEncoder();

/**
 * Encodes a command in its binary form (see the module doc).
 *
 * @throws {RangeError} If a number does not fit its field, or an idempotent command wraps
 * another.
 */
export function encodeCommand(cmd: KvCommand): Uint8Array {
  const w = new _Writer();
  _encode(w, cmd);
  return w.finish();
}

function _encode(w: _Writer, cmd: KvCommand): void {
  switch (cmd.op) {
    case "put":
      if (cmd.lease !== undefined) {
        w.u8(_PUT_LEASE);
        const fresh = "ttlMs" in cmd.lease;
        w.u8((cmd.cas === undefined ? 0 : 1) | (fresh ? 2 : 0));
        if (cmd.cas !== undefined) w.u64(cmd.cas);
        if ("ttlMs" in cmd.lease) w.u32(cmd.lease.ttlMs);
        else w.u64(cmd.lease.id);
        w.str(cmd.key);
        w.rest(cmd.value);
        return;
      }
      if (cmd.cas === undefined) {
        w.u8(_PUT);
      } else {
        w.u8(_PUT_IF);
        w.u64(cmd.cas);
      }
      w.str(cmd.key);
      w.rest(cmd.value);
      return;
    case "delete":
      if (cmd.cas === undefined) {
        w.u8(_DELETE);
      } else {
        w.u8(_DELETE_IF);
        w.u64(cmd.cas);
      }
      w.str(cmd.key);
      return;
    case "delete_range":
      w.u8(_DELETE_RANGE);
      _encodeRange(w, cmd.range);
      return;
    case "txn":
      w.u8(_TXN);
      w.u16(cmd.compare.length);
      for (const c of cmd.compare) _encodeCompare(w, c);
      for (const ops of [cmd.success, cmd.failure]) {
        w.u16(ops.length);
        for (const op of ops) {
          const leased = op.op === "put" && op.lease !== undefined;
          w.u8(leased ? _TXN_PUT_LEASE : _TXN_OPS.indexOf(op.op));
          w.str(op.key);
          if (op.op === "put") w.str(op.value);
          if (op.op === "put" && op.lease !== undefined) w.u64(op.lease);
        }
      }
      return;
    case "lease_grant":
      w.u8(_LEASE_GRANT);
      w.u32(cmd.ttlMs);
      return;
    case "lease_revoke":
      w.u8(_LEASE_REVOKE);
      w.u8(cmd.reason === "expire" ? 1 : 0);
      w.u32(cmd.ids.length);
      for (const id of cmd.ids) w.u64(id);
      return;
    case "idempotent":
      if ((cmd.command.op as string) === "idempotent") {
        throw new RangeError("an idempotent command cannot wrap another");
      }
      w.u8(_IDEMPOTENT);
      w.str(cmd.id);
      w.f64(cmd.at);
      w.u32(cmd.ttlMs);
      w.u32(cmd.maxKeys);
      w.u32(cmd.maxBytes);
      _encode(w, cmd.command);
      return;
  }
}

function _encodeRange(w: _Writer, range: KeyRange): void {
  if ("prefix" in range) {
    w.u8(0);
    w.str(range.prefix);
  } else if (range.end === null) {
    w.u8(1);
    w.str(range.start);
  } else {
    w.u8(2);
    w.str(range.start);
    w.str(range.end);
  }
}

function _encodeCompare(w: _Writer, c: Compare): void {
  w.u8(_TARGETS.indexOf(c.target));
  w.u8(_OPS.indexOf(c.op));
  w.str(c.key);
  switch (c.target) {
    case "value":
      w.str(c.value);
      return;
    case "exists":
      w.u8(c.value ? 1 : 0);
      return;
    default:
      w.u64(c.value);
  }
}

/**
 * Decodes a command written by {@linkcode encodeCommand}.
 *
 * @throws {RangeError} On malformed bytes: too short, an unknown code, a bad count or length,
 * invalid UTF-8, or bytes left over.
 */
export function decodeCommand(bytes: Uint8Array): KvCommand {
  const r = new _Reader(bytes);
  const op = r.u8();
  if (op === _IDEMPOTENT) {
    const id = r.str();
    const at = r.f64();
    if (!Number.isFinite(at)) throw new RangeError(`idempotent command time ${at} is not finite`);
    const ttlMs = r.u32();
    const maxKeys = r.u32();
    const maxBytes = r.u32();
    const inner = r.u8();
    if (inner === _IDEMPOTENT) throw new RangeError("an idempotent command wraps another");
    const command = _decodePlain(r, inner);
    return { op: "idempotent", id, at, ttlMs, maxKeys, maxBytes, command };
  }
  return _decodePlain(r, op);
}

function _decodePlain(r: _Reader, op: number): PlainCommand {
  switch (op) {
    case _PUT:
      return { op: "put", key: r.str(), value: r.rest() };
    case _DELETE: {
      const key = r.str();
      r.end("delete");
      return { op: "delete", key };
    }
    case _PUT_IF: {
      const cas = r.u64();
      return { op: "put", key: r.str(), value: r.rest(), cas };
    }
    case _DELETE_IF: {
      const cas = r.u64();
      const key = r.str();
      r.end("delete");
      return { op: "delete", key, cas };
    }
    case _DELETE_RANGE: {
      const range = _decodeRange(r);
      r.end("delete_range");
      return { op: "delete_range", range };
    }
    case _TXN: {
      const compare: Compare[] = [];
      for (let n = r.u16(); n > 0; n--) compare.push(_decodeCompare(r));
      const success = _decodeTxnOps(r);
      const failure = _decodeTxnOps(r);
      r.end("txn");
      return { op: "txn", compare, success, failure };
    }
    case _LEASE_GRANT: {
      const ttlMs = r.u32();
      r.end("lease_grant");
      return { op: "lease_grant", ttlMs };
    }
    case _PUT_LEASE: {
      const flags = r.u8();
      if (flags > 3) throw new RangeError(`unknown put flags ${flags}`);
      const cas = (flags & 1) !== 0 ? r.u64() : undefined;
      const lease: LeaseRef = (flags & 2) !== 0 ? { ttlMs: r.u32() } : { id: r.u64() };
      const key = r.str();
      const value = r.rest();
      return cas === undefined
        ? { op: "put", key, value, lease }
        : { op: "put", key, value, cas, lease };
    }
    case _LEASE_REVOKE: {
      const reason = r.u8();
      if (reason > 1) throw new RangeError(`unknown lease revoke reason ${reason}`);
      const ids: number[] = [];
      for (let n = r.u32(); n > 0; n--) ids.push(r.u64());
      r.end("lease_revoke");
      return { op: "lease_revoke", ids, reason: reason === 1 ? "expire" : "revoke" };
    }
  }
  throw new RangeError(`unknown command op ${op}`);
}

function _decodeRange(r: _Reader): KeyRange {
  const kind = r.u8();
  if (kind === 0) return { prefix: r.str() };
  if (kind === 1) return { start: r.str(), end: null };
  if (kind === 2) return { start: r.str(), end: r.str() };
  throw new RangeError(`unknown range kind ${kind}`);
}

function _decodeCompare(r: _Reader): Compare {
  const t = r.u8();
  const o = r.u8();
  const target = _TARGETS[t];
  const op = _OPS[o];
  if (target === undefined) throw new RangeError(`unknown compare target ${t}`);
  if (op === undefined) throw new RangeError(`unknown compare op ${o}`);
  const key = r.str();
  switch (target) {
    case "value":
      return { key, target, op, value: r.str() };
    case "exists": {
      const b = r.u8();
      if (b > 1) throw new RangeError(`exists compare operand ${b} is not 0 or 1`);
      if (op !== "=" && op !== "!=") throw new RangeError(`exists compare with op ${op}`);
      return { key, target, op, value: b === 1 };
    }
    default:
      return { key, target, op, value: r.u64() };
  }
}

function _decodeTxnOps(r: _Reader): TxnOp[] {
  const ops: TxnOp[] = [];
  for (let n = r.u16(); n > 0; n--) {
    const k = r.u8();
    if (k === _TXN_PUT_LEASE) {
      const key = r.str();
      const value = r.str();
      ops.push({ op: "put", key, value, lease: r.u64() });
      continue;
    }
    const kind = _TXN_OPS[k];
    if (kind === undefined) throw new RangeError(`unknown transaction op ${k}`);
    const key = r.str();
    ops.push(kind === "put" ? { op: kind, key, value: r.str() } : { op: kind, key });
  }
  return ops;
}

/** Builds a command's bytes. */
class _Writer {
  #buf = new Uint8Array(64);
  #view = new DataView(this.#buf.buffer);
  #at = 0;

  #room(n: number): void {
    if (this.#at + n <= this.#buf.length) return;
    const bigger = new Uint8Array(Math.max(2 * this.#buf.length, this.#at + n));
    bigger.set(this.#buf.subarray(0, this.#at));
    this.#buf = bigger;
    this.#view = new DataView(bigger.buffer);
  }

  u8(v: number): void {
    this.#room(1);
    this.#buf[this.#at++] = v;
  }

  u16(v: number): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`${v} is not a u16`);
    this.#room(2);
    this.#view.setUint16(this.#at, v);
    this.#at += 2;
  }

  u32(v: number): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
      throw new RangeError(`${v} is not a u32`);
    }
    this.#room(4);
    this.#view.setUint32(this.#at, v);
    this.#at += 4;
  }

  u64(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${v} is not a u64 up to 2^53-1`);
    this.#room(8);
    this.#view.setUint32(this.#at, Math.floor(v / 2 ** 32));
    this.#view.setUint32(this.#at + 4, v >>> 0);
    this.#at += 8;
  }

  f64(v: number): void {
    this.#room(8);
    this.#view.setFloat64(this.#at, v);
    this.#at += 8;
  }

  str(s: string): void {
    // Worst case UTF-8 is 3 bytes per UTF-16 unit.
    this.#room(4 + 3 * s.length);
    const n = _encoder.encodeInto(s, this.#buf.subarray(this.#at + 4)).written;
    this.#view.setUint32(this.#at, n);
    this.#at += 4 + n;
  }

  rest(s: string): void {
    this.#room(3 * s.length);
    this.#at += _encoder.encodeInto(s, this.#buf.subarray(this.#at)).written;
  }

  finish(): Uint8Array {
    return this.#buf.slice(0, this.#at);
  }
}

/** Reads a command's bytes, throwing RangeError on anything malformed. */
class _Reader {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  #at = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  #need(n: number, what: string): void {
    if (this.#at + n > this.#bytes.length) {
      throw new RangeError(
        `command too short: ${what} at byte ${this.#at} runs past its ${this.#bytes.length} bytes`,
      );
    }
  }

  u8(): number {
    this.#need(1, "a byte");
    return this.#bytes[this.#at++]!;
  }

  u16(): number {
    this.#need(2, "a u16");
    const v = this.#view.getUint16(this.#at);
    this.#at += 2;
    return v;
  }

  u32(): number {
    this.#need(4, "a u32");
    const v = this.#view.getUint32(this.#at);
    this.#at += 4;
    return v;
  }

  u64(): number {
    this.#need(8, "a u64");
    const v = this.#view.getUint32(this.#at) * 2 ** 32 + this.#view.getUint32(this.#at + 4);
    if (!Number.isSafeInteger(v)) throw new RangeError(`u64 ${v} is above 2^53-1`);
    this.#at += 8;
    return v;
  }

  f64(): number {
    this.#need(8, "an f64");
    const v = this.#view.getFloat64(this.#at);
    this.#at += 8;
    return v;
  }

  str(): string {
    const n = this.u32();
    this.#need(n, `a string of ${n} bytes`);
    const s = decodeUtf8(this.#bytes, this.#at, this.#at + n);
    this.#at += n;
    return s;
  }

  rest(): string {
    const s = decodeUtf8(this.#bytes, this.#at, this.#bytes.length);
    this.#at = this.#bytes.length;
    return s;
  }

  end(what: string): void {
    if (this.#at !== this.#bytes.length) throw new RangeError(`${what} command has trailing bytes`);
  }
}
