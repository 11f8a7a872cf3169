/**
 * A linearizability checker for histories of key-value operations (`put`, `get`, `delete`, and
 * compare-and-set `cas`).
 *
 * The model: every key is an independent register whose initial state is "absent" (`null`).
 * `put(key, value)` sets it, `delete(key)` makes it absent again, `get(key)` returns the
 * current value or `null` when absent, and `cas(key, expect, value)` sets it to `value` (absent
 * for `null`) only if it holds `expect` (`null`: only if absent). A history is the list of {@linkcode Operation}s that
 * concurrent clients recorded, each with its invocation time and its completion time. The history
 * is linearizable when every operation can be given a single instant between its invocation and
 * its completion such that, taken in that order, the operations are a legal sequential run of the
 * model.
 *
 * How the check works:
 *
 * - P-compositionality: linearizability is local, so the history is split by key and each key is
 *   checked on its own (cheapest keys first, so a definite failure is found early).
 * - Each key is checked with the Wing & Gong search as improved by Lowe ("Testing for
 *   linearizability", 2017) and used by Porcupine: call and return events are sorted into one
 *   doubly-linked list; linearizing an operation lifts its two events out of the list, backtracking
 *   puts them back, and every (set of linearized operations, register value) configuration reached
 *   is memoised so that no configuration is explored twice. The set is a bitset hashed
 *   incrementally (Zobrist hashing).
 * - Partial-order reduction for reads: a `get` that can take effect now (it has been called and
 *   the register holds its value) is linearized at once and never swapped for an alternative on
 *   backtracking, since a read changes nothing and can always be moved earlier. This removes most
 *   of the branching, which is otherwise exponential in the number of concurrent operations.
 * - Operations of unknown outcome are simplified first without changing the answer (see
 *   below): unknown gets and unobservable unknown writes are dropped, and an unknown put that is
 *   the only write of a value someone read must take effect before that read returns.
 *
 * What the caller must know when recording a history:
 *
 * - Leave out operations that definitely failed (e.g. rejected with 400, or answered with a
 *   definite "not applied"): they had no effect and constrain nothing.
 * - A `cas` is recorded only when it applied (or may have: its outcome unknown). A failed one
 *   changed nothing and only observed the register: record it as a `get` of the value it found
 *   (or leave it out when it does not say). raftkv's compare-and-set names a `mod_index`, which
 *   a client with unique values per key translates into the value written at that index.
 * - A multi-key read (a range) is, key by key, a `get` of each key of the range over the same
 *   interval, with `null` for the keys it did not return. This checks each key; that the keys
 *   came from one state is a separate check (for example against the log).
 * - An operation whose outcome is unknown (timeout, crash, connection cut) is recorded with
 *   `return: null`. A `get` with an unknown outcome constrains nothing and is dropped. A `put` or
 *   `delete` with an unknown outcome may take effect at any instant after its call, or never.
 * - Times only need to be comparable (e.g. `performance.now()` on one machine). An operation that
 *   returns at exactly the instant another is called is treated as concurrent with it, so equal
 *   timestamps never produce a false alarm.
 * - Values should be unique per key (e.g. `"client3-17"`): a history that writes the same value
 *   twice is still checked correctly, but the checker cannot tell which write a read saw, so it
 *   finds fewer bugs.
 * - Deletes nobody asked for, such as a key removed because its lease was revoked or expired,
 *   are writes too: record each as a `delete` of its own (a client id used for nothing else),
 *   from when its cause could first take effect (when the revoke or expire entry was proposed)
 *   to when it was known done (committed). Left out, a read of the expired key would look like
 *   a lost write.
 * - Lost writes: to catch an acknowledged write that later disappears, end the test by reading
 *   every key once after all writes have returned (or timed out) and add those reads to the
 *   history. A lost write then shows up as a non-linearizable read.
 *
 * The search is exponential in the worst case (many concurrent operations, many writes of unknown
 * outcome that stay pending forever). It is bounded by a time budget and reports
 * `ok: "unknown"` rather than guessing; it never reports `ok: true` for a history it has not
 * fully verified. The check is synchronous.
 *
 * @example
 * ```ts
 * import { checkLinearizability } from "./linearizability.ts";
 *
 * const result = checkLinearizability([
 *   { client: 1, kind: "put", key: "x", value: "a", call: 0, return: 10 },
 *   { client: 2, kind: "get", key: "x", value: "a", call: 5, return: 15 },
 *   { client: 2, kind: "get", key: "x", value: null, call: 20, return: 25 }, // lost write!
 * ]);
 * if (result.ok === false) console.log(result.reason);
 * ```
 *
 * @module
 */

/** The operations the key-value store offers. */
export type OperationKind = "put" | "get" | "delete" | "cas";

/** One operation of a history, as a client recorded it. */
export interface Operation {
  /** Who issued it (a client never has two operations in flight at once). */
  client: number;
  /** What the operation does. */
  kind: OperationKind;
  /** The key it acts on. */
  key: string;
  /**
   * put: the value written. get: the value observed (null = not found). delete: unused. cas: the
   * value written (null: the key is deleted).
   */
  value: string | null;
  /** cas only: the value the register must hold for it to apply (null: absent). */
  expect?: string | null;
  /** Invocation time (any monotonic number, e.g. `performance.now()`). */
  call: number;
  /**
   * Completion time, or null when the outcome is unknown (timeout, crash, connection cut): the
   * operation may or may not have taken effect, at any point after `call`.
   */
  return: number | null;
}

/** Options of {@linkcode checkLinearizability}. */
export interface CheckOptions {
  /**
   * The time budget of the whole check in milliseconds (default 10 000). When it runs out the
   * result is `ok: "unknown"`. `Infinity` disables it.
   */
  timeoutMs?: number;
}

/** The result when every key's history is linearizable. */
export interface LinearizableResult {
  /** The history is linearizable. */
  ok: true;
  /** How many distinct keys were checked. */
  keys: number;
  /** How many operations were checked (after dropping those counted in `dropped`). */
  operations: number;
  /**
   * How many operations of unknown outcome were dropped because they cannot change the answer
   * (gets, and writes whose value no later read observed).
   */
  dropped: number;
}

/** The result when some key's history is not linearizable. */
export interface NotLinearizableResult {
  /** The history is not linearizable. */
  ok: false;
  /** The key whose history cannot be linearized. */
  key: string;
  /**
   * A human-readable explanation: which operation could not be linearized, what was linearized
   * before it, and a timeline of the operations around it. Operations are named `#i`, `i` being
   * their index in {@linkcode NotLinearizableResult.operations}.
   */
  reason: string;
  /** All operations of that key, in the order they were given. */
  operations: Operation[];
}

/** The result when the time budget ran out before the answer was known. */
export interface UnknownResult {
  /** The check did not finish. */
  ok: "unknown";
  /** The key being checked when the budget ran out. */
  key: string;
  /** A human-readable explanation. */
  reason: string;
}

/** The result of {@linkcode checkLinearizability}. */
export type CheckResult = LinearizableResult | NotLinearizableResult | UnknownResult;

/** Options of {@linkcode describeHistory}. */
export interface DescribeOptions {
  /** Show only operations still running at or after this time. */
  from?: number;
  /** Show only operations called at or before this time. */
  to?: number;
  /** Show at most this many operations (default: all), then a line saying how many were left out. */
  maxLines?: number;
}

/** The default time budget of {@linkcode checkLinearizability}, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Checks whether `history` is linearizable with respect to a map of independent registers.
 *
 * Returns `ok: true` only when a linearization was found for every key; `ok: false` with the first
 * key found to be non-linearizable; `ok: "unknown"` when the time budget ran out. Throws a
 * `TypeError` or `RangeError` when an operation is malformed (unknown kind, non-string key, `put`
 * without a value, non-finite call time, return before call).
 *
 * @example
 * ```ts
 * import { checkLinearizability } from "./linearizability.ts";
 *
 * const result = checkLinearizability([
 *   { client: 1, kind: "put", key: "x", value: "a", call: 0, return: 10 },
 *   { client: 2, kind: "get", key: "x", value: null, call: 5, return: 8 }, // concurrent: fine
 * ]);
 * console.log(result.ok); // true
 * ```
 */
export function checkLinearizability(
  history: readonly Operation[],
  options: CheckOptions = {},
): CheckResult {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (typeof timeoutMs !== "number" || Number.isNaN(timeoutMs) || timeoutMs < 0) {
    throw new RangeError(`timeoutMs must be a non-negative number, got ${timeoutMs}`);
  }
  const deadline = performance.now() + timeoutMs;

  const byKey = new Map<string, Operation[]>();
  history.forEach((op, i) => {
    _validate(op, i);
    const ops = byKey.get(op.key);
    if (ops === undefined) byKey.set(op.key, [op]);
    else ops.push(op);
  });

  const keys = [...byKey.keys()].sort((a, b) => {
    const d = (byKey.get(a)?.length ?? 0) - (byKey.get(b)?.length ?? 0);
    return d !== 0 ? d : a < b ? -1 : a > b ? 1 : 0;
  });

  // Cheap definite failures first, over every key: a read of a value nobody wrote.
  for (const key of keys) {
    const ops = byKey.get(key) ?? [];
    const reason = _findUnwrittenRead(key, ops);
    if (reason !== null) return { ok: false, key, reason, operations: ops };
  }

  let operations = 0;
  let dropped = 0;
  for (const key of keys) {
    const ops = byKey.get(key) ?? [];
    const prepared = _prepare(ops);
    operations += prepared.ops.length;
    dropped += ops.length - prepared.ops.length;
    const outcome = _searchKey(prepared, deadline);
    if (outcome.kind === "timeout") {
      return {
        ok: "unknown",
        key,
        reason:
          `the time budget of ${timeoutMs} ms ran out while checking key ${
            JSON.stringify(key)
          } (${prepared.ops.length} operations; ${outcome.steps} search steps; deepest partial ` +
          `linearization: ${outcome.depth} operations); ${keys.indexOf(key)} of ${keys.length} ` +
          `keys were fully checked before it`,
      };
    }
    if (outcome.kind === "fail") {
      return { ok: false, key, reason: _explain(key, ops, outcome.stuck), operations: ops };
    }
  }
  return { ok: true, keys: keys.length, operations, dropped };
}

/**
 * Renders operations as a readable timeline, one line per operation in order of call time, e.g.
 * `#3  client 2  put("x", "a")  [12.5 → 15]`. Each operation is named `#i` after its index in
 * `ops`; an unknown outcome is shown as `→ ?`.
 *
 * @example
 * ```ts
 * import { describeHistory } from "./linearizability.ts";
 *
 * console.log(describeHistory([
 *   { client: 1, kind: "get", key: "x", value: null, call: 0, return: 2 },
 * ]));
 * // #0  client 1  get("x") -> null  [0 → 2]
 * ```
 */
export function describeHistory(
  ops: readonly Operation[],
  options: DescribeOptions = {},
): string {
  const from = options.from ?? -Infinity;
  const to = options.to ?? Infinity;
  const shown = ops
    .map((op, index) => ({ op, index }))
    .filter(({ op }) => op.call <= to && (op.return ?? Infinity) >= from)
    .sort((a, b) => a.op.call - b.op.call || a.index - b.index);
  const limit = options.maxLines ?? Infinity;
  const rows = shown.slice(0, limit).map(({ op, index }) => [
    `#${index}`,
    `client ${op.client}`,
    _formatOp(op),
    `[${_formatTime(op.call)} → ${op.return === null ? "?" : _formatTime(op.return)}]`,
  ]);
  const widths = [0, 1, 2].map((c) => rows.reduce((w, r) => Math.max(w, r[c]?.length ?? 0), 0));
  const lines = rows.map((r) =>
    r.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join("  ").trimEnd()
  );
  if (shown.length > limit) lines.push(`... and ${shown.length - limit} more`);
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Internals.

const _PUT = 0;
const _GET = 1;
const _DELETE = 2;
const _CAS = 3;

/** An operation of one key, ready for the search. */
interface _Op {
  /** Its bit in the linearized set (its index in the prepared list). */
  bit: number;
  /** Its index in the key's original operation list (for messages). */
  index: number;
  kind: number;
  /** The interned value: 0 is "absent", for a delete always 0. */
  value: number;
  /** For a cas, the interned value it needs (0: absent); unused otherwise. */
  expect: number;
  call: number;
  /** The return time; `Infinity` for a put/delete of unknown outcome. */
  ret: number;
  /** False for a put/delete of unknown outcome: it may never take effect. */
  required: boolean;
  /** Zobrist hash words. */
  z1: number;
  z2: number;
}

/** The operations of one key, ready for the search. */
interface _Prepared {
  ops: _Op[];
  /** Interned value id -> value (id 0 is null, "absent"). */
  values: (string | null)[];
}

const _NO_OP: _Op = {
  bit: -1,
  index: -1,
  kind: _GET,
  value: 0,
  expect: 0,
  call: -Infinity,
  ret: -Infinity,
  required: false,
  z1: 0,
  z2: 0,
};

/** A call or return event in the search's linked list. */
interface _Entry {
  op: _Op;
  isCall: boolean;
  time: number;
  /** For a call, its return event. */
  match: _Entry | null;
  prev: _Entry;
  next: _Entry | null;
}

/** Where the deepest branch of a failed search got stuck. */
interface _Stuck {
  /** The operation whose return was reached before it could be linearized. */
  op: _Op;
  /** How many operations were linearized at that point. */
  depth: number;
  /** The register value at that point (interned). */
  state: number;
  /** The last operation linearized, if any. */
  last: _Op | null;
  /** The operations called but not linearized at that point (candidates that were tried). */
  pending: _Op[];
  /** Interned value id -> value, for messages. */
  values: (string | null)[];
}

type _Outcome =
  | { kind: "ok" }
  | { kind: "fail"; stuck: _Stuck | null }
  | { kind: "timeout"; steps: number; depth: number };

interface _CacheEntry {
  bits: Uint32Array;
  state: number;
}

function _validate(op: Operation, i: number): void {
  const where = `history[${i}]`;
  if (op === null || typeof op !== "object") throw new TypeError(`${where} is not an operation`);
  if (op.kind !== "put" && op.kind !== "get" && op.kind !== "delete" && op.kind !== "cas") {
    throw new TypeError(`${where}: unknown kind ${JSON.stringify(op.kind)}`);
  }
  if (op.kind === "cas") {
    if (op.value !== null && typeof op.value !== "string") {
      throw new TypeError(`${where}: a cas must carry a string value or null`);
    }
    if (op.expect === undefined || (op.expect !== null && typeof op.expect !== "string")) {
      throw new TypeError(`${where}: a cas must carry an expected string value or null`);
    }
  }
  if (typeof op.key !== "string") throw new TypeError(`${where}: key must be a string`);
  if (op.kind === "put" && typeof op.value !== "string") {
    throw new TypeError(`${where}: a put must carry a string value`);
  }
  if (op.kind === "get" && op.value !== null && typeof op.value !== "string") {
    throw new TypeError(`${where}: a get's value must be a string or null`);
  }
  if (typeof op.call !== "number" || !Number.isFinite(op.call)) {
    throw new RangeError(`${where}: call must be a finite number, got ${op.call}`);
  }
  if (op.return !== null) {
    if (typeof op.return !== "number" || Number.isNaN(op.return)) {
      throw new RangeError(`${where}: return must be a number or null, got ${op.return}`);
    }
    if (op.return < op.call) {
      throw new RangeError(`${where}: returns (${op.return}) before it is called (${op.call})`);
    }
  }
}

/**
 * Returns a reason if some completed get of `ops` saw a value no write of the key wrote (or a
 * completed cas needed one).
 */
function _findUnwrittenRead(key: string, ops: readonly Operation[]): string | null {
  const written = new Set<string>();
  for (const op of ops) {
    if ((op.kind === "put" || op.kind === "cas") && op.value !== null) written.add(op.value);
  }
  const index = ops.findIndex((op) => {
    if (op.return === null) return false;
    const seen = op.kind === "get" ? op.value : op.kind === "cas" ? op.expect ?? null : null;
    return seen !== null && !written.has(seen);
  });
  const op = ops[index];
  if (op === undefined) return null;
  return `key ${JSON.stringify(key)} is not linearizable: ${_describeOne(op, index)} observed a ` +
    `value that no put of this key wrote.\n` +
    describeHistory(ops, { from: op.call, to: op.return ?? Infinity, maxLines: 40 });
}

/**
 * Turns one key's operations into search operations: interns values, assigns bits and hash words,
 * and simplifies operations of unknown outcome without changing the answer:
 *
 * - a get of unknown outcome constrains nothing: dropped;
 * - a put/delete/cas of unknown outcome whose value no completed get returning at or after its
 *   call observed (nor any cas needed) is dropped: in any linearization, the stretch between it and the next write holds
 *   no get (such a get would read its value), so removing it leaves a valid linearization;
 * - a put or cas of unknown outcome that is the only write of a value some completed get observed
 *   (or a completed cas needed) must take effect before the earliest such operation returns: it becomes a required operation with that
 *   return time (unless that is before its call, which the search then reports as a violation).
 */
function _prepare(ops: readonly Operation[]): _Prepared {
  const ids = new Map<string, number>();
  const values: (string | null)[] = [null];
  const intern = (v: string | null): number => {
    if (v === null) return 0;
    let id = ids.get(v);
    if (id === undefined) {
      id = values.length;
      ids.set(v, id);
      values.push(v);
    }
    return id;
  };
  const valueIds = ops.map((op) => (op.kind === "delete" ? 0 : intern(op.value)));
  const expectIds = ops.map((op) => (op.kind === "cas" ? intern(op.expect ?? null) : 0));
  // Per value: how many writes write it, and the earliest and latest return of an operation
  // observing it (a get that returned it, a cas that needed it; an unknown cas at any time).
  const writers = new Array<number>(values.length).fill(0);
  const firstRead = new Array<number>(values.length).fill(Infinity);
  const lastRead = new Array<number>(values.length).fill(-Infinity);
  ops.forEach((op, i) => {
    const v = valueIds[i] ?? 0;
    if (op.kind === "put" || op.kind === "cas") writers[v] = (writers[v] ?? 0) + 1;
    if (op.kind === "get" && op.return !== null) {
      firstRead[v] = Math.min(firstRead[v] ?? Infinity, op.return);
      lastRead[v] = Math.max(lastRead[v] ?? -Infinity, op.return);
    }
    if (op.kind === "cas") {
      const e = expectIds[i] ?? 0;
      const at = op.return ?? Infinity;
      if (op.return !== null) firstRead[e] = Math.min(firstRead[e] ?? Infinity, at);
      lastRead[e] = Math.max(lastRead[e] ?? -Infinity, at);
    }
  });

  const random = _splitmix32(0x5eed ^ ops.length);
  const prepared: _Op[] = [];
  ops.forEach((op, index) => {
    const value = valueIds[index] ?? 0;
    let ret = op.return ?? Infinity;
    let required = op.return !== null;
    if (op.return === null) {
      if (op.kind === "get") return;
      if ((lastRead[value] ?? -Infinity) < op.call) return;
      const first = firstRead[value] ?? Infinity;
      if (
        (op.kind === "put" || (op.kind === "cas" && value !== 0)) && writers[value] === 1 &&
        first >= op.call && first < Infinity
      ) {
        ret = first;
        required = true;
      }
    }
    prepared.push({
      bit: prepared.length,
      index,
      kind: op.kind === "put"
        ? _PUT
        : op.kind === "get"
        ? _GET
        : op.kind === "cas"
        ? _CAS
        : _DELETE,
      value,
      expect: expectIds[index] ?? 0,
      call: op.call,
      ret,
      required,
      z1: random(),
      z2: random(),
    });
  });
  return { ops: prepared, values };
}

/** The WGL search with Lowe's memoisation, over the operations of one key. */
function _searchKey(prepared: _Prepared, deadline: number): _Outcome {
  const { ops, values } = prepared;
  let remaining = 0;
  for (const op of ops) if (op.required) remaining++;
  if (remaining === 0) return { kind: "ok" };

  // The event list: calls before returns at equal times (touching intervals are concurrent).
  const events: _Entry[] = [];
  const head = { op: _NO_OP, isCall: false, time: -Infinity, match: null, next: null } as _Entry;
  head.prev = head;
  for (const op of ops) {
    const ret: _Entry = { op, isCall: false, time: op.ret, match: null, prev: head, next: null };
    const call: _Entry = { op, isCall: true, time: op.call, match: ret, prev: head, next: null };
    events.push(call, ret);
  }
  events.sort((a, b) =>
    a.time - b.time || (a.time === b.time && a.isCall !== b.isCall ? (a.isCall ? -1 : 1) : 0) ||
    a.op.bit - b.op.bit
  );
  let tail = head;
  for (const e of events) {
    e.prev = tail;
    tail.next = e;
    tail = e;
  }

  const bits = new Uint32Array((ops.length + 31) >>> 5);
  const cache = new Map<number, _CacheEntry[]>();
  // The linearized operations in order, the register value before each, and whether each was a
  // forced read (see below).
  const stackEntries: _Entry[] = [];
  const stackStates: number[] = [];
  const stackForced: boolean[] = [];
  let h1 = 0;
  let h2 = 0;
  let state = 0;
  let steps = 0;
  let stuck: _Stuck | null = null;

  /** Linearizes the operation of call event `e` unless that configuration was seen before. */
  const linearize = (e: _Entry, next: number, forced: boolean): boolean => {
    const op = e.op;
    const w = op.bit >>> 5;
    const mask = 1 << (op.bit & 31);
    bits[w] = (bits[w] ?? 0) | mask;
    h1 ^= op.z1;
    h2 ^= op.z2;
    if (!_cacheAdd(cache, bits, h1, h2, next)) {
      bits[w] = (bits[w] ?? 0) & ~mask;
      h1 ^= op.z1;
      h2 ^= op.z2;
      return false;
    }
    stackEntries.push(e);
    stackStates.push(state);
    stackForced.push(forced);
    state = next;
    if (op.required) remaining--;
    _lift(e);
    return true;
  };

  // `entry` scans the call events of the current configuration, in order; `fresh` says the
  // configuration was just reached and its enabled reads have not been looked for yet.
  let entry: _Entry | null = head.next;
  let fresh = true;
  for (;;) {
    if ((++steps & 0x3ff) === 0 && performance.now() > deadline) {
      return { kind: "timeout", steps, depth: stuck?.depth ?? stackEntries.length };
    }
    let dead = false;
    if (fresh) {
      // Partial-order reduction: a get that may be linearized now (its call is before every
      // pending return and the register holds its value) can always be moved to this point of a
      // linearization, since it changes nothing. So this configuration has a complete
      // linearization iff the one with the get linearized has: take it, and never try
      // alternatives to it on backtracking.
      fresh = false;
      let read: _Entry | null = head.next;
      while (read !== null && read.isCall && !(read.op.kind === _GET && read.op.value === state)) {
        read = read.next;
      }
      if (read !== null && read.isCall) {
        if (linearize(read, state, true)) {
          if (remaining === 0) return { kind: "ok" };
          entry = head.next;
          fresh = true;
          continue;
        }
        dead = true; // seen before, and it failed then
      }
    }
    if (!dead && entry !== null && entry.isCall) {
      // No get is enabled here (looked for when the configuration was reached): try writes.
      const op: _Op = entry.op;
      if (
        op.kind !== _GET && (op.kind !== _CAS || op.expect === state) &&
        linearize(entry, op.value, false)
      ) {
        if (remaining === 0) return { kind: "ok" };
        entry = head.next;
        fresh = true;
      } else {
        entry = entry.next;
      }
      continue;
    }
    if (entry === null) {
      // Unreachable: a required operation's return event stops the scan before the list ends.
      throw new Error("linearizability search ran off the end of the event list");
    }
    if (!dead && (stuck === null || stackEntries.length > stuck.depth)) {
      // The return of an operation not linearized yet: record the deepest such dead end.
      stuck = _snapshot(head, entry, stackEntries, state, values);
    }
    // Backtrack: undo the last choice, and keep undoing while it was a forced read.
    for (;;) {
      const top = stackEntries.pop();
      const previous = stackStates.pop();
      const forced = stackForced.pop();
      if (top === undefined || previous === undefined) return { kind: "fail", stuck };
      const back = top.op;
      state = previous;
      const w = back.bit >>> 5;
      bits[w] = (bits[w] ?? 0) & ~(1 << (back.bit & 31));
      h1 ^= back.z1;
      h2 ^= back.z2;
      if (back.required) remaining++;
      _unlift(top);
      entry = top.next;
      if (!forced) break;
    }
  }
}

function _snapshot(
  head: _Entry,
  ret: _Entry,
  stack: readonly _Entry[],
  state: number,
  values: (string | null)[],
): _Stuck {
  const pending: _Op[] = [];
  for (let e = head.next; e !== null && e !== ret; e = e.next) if (e.isCall) pending.push(e.op);
  return {
    op: ret.op,
    depth: stack.length,
    state,
    last: stack[stack.length - 1]?.op ?? null,
    pending,
    values,
  };
}

/** Removes a call event and its return event from the list. */
function _lift(call: _Entry): void {
  call.prev.next = call.next;
  if (call.next !== null) call.next.prev = call.prev;
  const ret = call.match;
  if (ret === null) return;
  ret.prev.next = ret.next;
  if (ret.next !== null) ret.next.prev = ret.prev;
}

/** Puts back what {@linkcode _lift} removed, in reverse order. */
function _unlift(call: _Entry): void {
  const ret = call.match;
  if (ret !== null) {
    ret.prev.next = ret;
    if (ret.next !== null) ret.next.prev = ret;
  }
  call.prev.next = call;
  if (call.next !== null) call.next.prev = call;
}

/** Adds (bits, state) to the cache; returns false if it was already there. */
function _cacheAdd(
  cache: Map<number, _CacheEntry[]>,
  bits: Uint32Array,
  h1: number,
  h2: number,
  state: number,
): boolean {
  // 32 + 21 bits: an exact integer, so distinct hashes never share a bucket by accident.
  const hash = ((h1 ^ Math.imul(state + 1, 0x9e3779b1)) >>> 0) * 0x200000 + (h2 >>> 11);
  const bucket = cache.get(hash);
  if (bucket === undefined) {
    cache.set(hash, [{ bits: bits.slice(), state }]);
    return true;
  }
  for (const e of bucket) if (e.state === state && _equalBits(e.bits, bits)) return false;
  bucket.push({ bits: bits.slice(), state });
  return true;
}

function _equalBits(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A small seeded generator of 32-bit integers, for the hash words (deterministic runs). */
function _splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

function _explain(key: string, ops: readonly Operation[], stuck: _Stuck | null): string {
  if (stuck === null) {
    // Not expected: every failed search passes a dead end first. Stay helpful anyway.
    return `key ${JSON.stringify(key)} is not linearizable.\n` +
      describeHistory(ops, { maxLines: 60 });
  }
  const name = (op: _Op): string => {
    const original = ops[op.index];
    return original === undefined ? `#${op.index}` : _describeOne(original, op.index);
  };
  const held = JSON.stringify(stuck.values[stuck.state] ?? null);
  const lines = [
    `key ${JSON.stringify(key)} is not linearizable.`,
    stuck.last === null
      ? `No operation can be linearized first (the register starts absent, null).`
      : `The longest linearizable prefix found has ${stuck.depth} operations and ends with ` +
        `${name(stuck.last)}, leaving the register at ${held}.`,
    `From there ${name(stuck.op)} cannot take effect before it returns: no order of the ` +
    `operations pending then is consistent with the values observed.`,
    `Pending then: ${stuck.pending.map(name).join("; ")}`,
  ];
  const from = Math.min(stuck.last?.call ?? -Infinity, ...stuck.pending.map((op) => op.call));
  lines.push(
    `Timeline around it:`,
    describeHistory(ops, { from, to: stuck.op.ret, maxLines: 40 }),
  );
  return lines.join("\n");
}

function _describeOne(op: Operation, index: number): string {
  const ret = op.return === null ? "?" : _formatTime(op.return);
  return `#${index} ${_formatOp(op)} by client ${op.client} [${_formatTime(op.call)} → ${ret}]`;
}

function _formatOp(op: Operation): string {
  const key = JSON.stringify(op.key);
  switch (op.kind) {
    case "put":
      return `put(${key}, ${JSON.stringify(op.value)})`;
    case "get":
      return `get(${key}) -> ${JSON.stringify(op.value)}`;
    case "delete":
      return `delete(${key})`;
    case "cas":
      return `cas(${key}, ${JSON.stringify(op.expect ?? null)} -> ${JSON.stringify(op.value)})`;
  }
}

function _formatTime(t: number): string {
  return String(Number(t.toFixed(3)));
}
