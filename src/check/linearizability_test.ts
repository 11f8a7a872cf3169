import assert from "node:assert/strict";
import { seededRandom } from "../raft/rand.ts";
import {
  checkLinearizability,
  type CheckResult,
  describeHistory,
  type Operation,
} from "./linearizability.ts";

// ---------------------------------------------------------------------------------------------
// Helpers.

function put(
  client: number,
  key: string,
  value: string,
  call: number,
  ret: number | null,
): Operation {
  return { client, kind: "put", key, value, call, return: ret };
}

function get(
  client: number,
  key: string,
  value: string | null,
  call: number,
  ret: number | null,
): Operation {
  return { client, kind: "get", key, value, call, return: ret };
}

function del(client: number, key: string, call: number, ret: number | null): Operation {
  return { client, kind: "delete", key, value: null, call, return: ret };
}

function cas(
  client: number,
  key: string,
  expect: string | null,
  value: string | null,
  call: number,
  ret: number | null,
): Operation {
  return { client, kind: "cas", key, expect, value, call, return: ret };
}

function assertOk(result: CheckResult, message = ""): void {
  assert.equal(
    result.ok,
    true,
    `${message}expected ok, got ${JSON.stringify(result.ok)}: ${
      "reason" in result ? result.reason : ""
    }`,
  );
}

function assertViolation(result: CheckResult, key: string, message = ""): string {
  assert.equal(result.ok, false, `${message}expected a violation, got ${JSON.stringify(result)}`);
  if (result.ok !== false) throw new Error("unreachable");
  assert.equal(result.key, key, message);
  assert.ok(result.operations.every((op) => op.key === key), message);
  return result.reason;
}

interface GenerateOptions {
  clients: number;
  operations: number;
  keys: number;
  /** Probability that an operation's outcome is unknown (return null). */
  unknownRate: number;
  /** Probability that a write is a compare-and-set (default 0). */
  casRate?: number;
}

/**
 * Generates a history that is linearizable by construction: every operation gets a random
 * interval and a linearization point inside it, and the operations are applied to a real map in
 * the order of those points to decide what each get observes. An operation of unknown outcome
 * takes effect at a random point after its call (possibly after the client moved on), or never.
 */
function generateHistory(random: () => number, options: GenerateOptions): Operation[] {
  const cursor = new Array<number>(options.clients).fill(0);
  const planned: { op: Operation; at: number | null }[] = [];
  for (let n = 0; n < options.operations; n++) {
    let client = 0;
    cursor.forEach((t, c) => {
      if (t < (cursor[client] ?? 0)) client = c;
    });
    const key = `k${Math.floor(random() * options.keys)}`;
    const r = random();
    let kind: Operation["kind"] = r < 0.45 ? "get" : r < 0.9 ? "put" : "delete";
    if (kind !== "get" && random() < (options.casRate ?? 0)) kind = "cas";
    const call = (cursor[client] ?? 0) + random() * 2;
    const at = call + random() * 5;
    const ret = at + random() * 5;
    const unknown = random() < options.unknownRate;
    const op: Operation = {
      client,
      kind,
      key,
      value: kind === "put" || kind === "cas"
        ? `c${client}-${n}`
        : kind === "get"
        ? "not-decided-yet"
        : null,
      call,
      return: unknown ? null : ret,
    };
    if (kind === "cas") {
      // Expect a value of this key planned so far (or absent): it holds or not when applied.
      const earlier = planned.filter((p) => p.op.key === key && p.op.kind !== "get");
      op.expect = random() < 0.2 || earlier.length === 0
        ? null
        : earlier[earlier.length - 1 - Math.floor(random() * Math.min(3, earlier.length))]!.op
          .value;
    }
    cursor[client] = ret;
    const lateAt = call + random() * 30;
    planned.push({ op, at: !unknown ? at : random() < 0.5 ? null : lateAt });
  }
  const state = new Map<string, string | null>();
  const applied = planned.filter((p) => p.at !== null).sort((a, b) => (a.at ?? 0) - (b.at ?? 0));
  /** Failed compare-and-sets, with the value they found. */
  const failed = new Map<Operation, string | null>();
  for (const { op } of applied) {
    if (op.kind === "put") state.set(op.key, op.value);
    else if (op.kind === "delete") state.set(op.key, null);
    else if (op.kind === "cas") {
      const found = state.get(op.key) ?? null;
      if (found === op.expect) state.set(op.key, op.value);
      else failed.set(op, found);
    } else op.value = state.get(op.key) ?? null;
  }
  // A failed compare-and-set is recorded as the read it was (see the module doc); one of unknown
  // outcome stays a cas: as far as its client knows, it may have applied.
  return planned.map(({ op }) => {
    if (!failed.has(op) || op.return === null) return op;
    const { expect: _, ...rest } = op;
    return { ...rest, kind: "get", value: failed.get(op) ?? null };
  });
}

function completedGets(history: Operation[]): number[] {
  return history.flatMap((op, i) => (op.kind === "get" && op.return !== null ? [i] : []));
}

// ---------------------------------------------------------------------------------------------
// Histories that must be accepted.

Deno.test("checkLinearizability() accepts an empty history", () => {
  const result = checkLinearizability([]);
  assert.deepEqual(result, { ok: true, keys: 0, operations: 0, dropped: 0 });
});

Deno.test("checkLinearizability() accepts a sequential history", () => {
  const result = checkLinearizability([
    get(1, "x", null, 0, 1),
    put(1, "x", "a", 2, 3),
    get(2, "x", "a", 4, 5),
    put(2, "x", "b", 6, 7),
    get(1, "x", "b", 8, 9),
  ]);
  assertOk(result);
  assert.deepEqual(result, { ok: true, keys: 1, operations: 5, dropped: 0 });
});

Deno.test("checkLinearizability() sees a lease expiry recorded as a delete of its own", () => {
  const before = [put(1, "lock", "a", 0, 1), get(2, "lock", "a", 2, 3)];
  const after = get(2, "lock", null, 20, 21);
  // Without the expiry the read of the expired key is a lost write...
  assert.equal(checkLinearizability([...before, after]).ok, false);
  // ...with it (proposed at 10, known committed at 12, a client of its own) it is linearizable,
  assertOk(checkLinearizability([...before, del(1_000_000, "lock", 10, 12), after]));
  // and a read that saw the key after the expiry was done is not.
  const late = get(2, "lock", "a", 30, 31);
  assert.equal(
    checkLinearizability([...before, del(1_000_000, "lock", 10, 12), after, late]).ok,
    false,
  );
});

Deno.test("checkLinearizability() accepts a read concurrent with a write that sees either value", () => {
  for (const seen of ["a", "b"]) {
    assertOk(
      checkLinearizability([
        put(1, "x", "a", 0, 1),
        put(1, "x", "b", 2, 10),
        get(2, "x", seen, 3, 6),
      ]),
      `read of ${seen}: `,
    );
  }
});

Deno.test("checkLinearizability() accepts a read concurrent with a write that sees the old value", () => {
  assertOk(checkLinearizability([put(1, "x", "a", 0, 10), get(2, "x", null, 5, 15)]));
});

Deno.test("checkLinearizability() accepts overlapping writes read in either order", () => {
  // Both puts overlap; the reads after them agree on which one won.
  for (const winner of ["a", "b"]) {
    assertOk(
      checkLinearizability([
        put(1, "x", "a", 0, 10),
        put(2, "x", "b", 1, 9),
        get(3, "x", winner, 11, 12),
        get(1, "x", winner, 13, 14),
      ]),
      `winner ${winner}: `,
    );
  }
});

Deno.test("checkLinearizability() treats an operation called when another returns as concurrent", () => {
  assertOk(checkLinearizability([put(1, "x", "a", 0, 5), get(2, "x", null, 5, 6)]));
});

Deno.test("checkLinearizability() accepts a write of unknown outcome that is observed later", () => {
  assertOk(checkLinearizability([
    put(1, "x", "a", 0, 1),
    put(2, "x", "b", 2, null),
    get(3, "x", "a", 3, 4),
    get(3, "x", "b", 100, 101),
  ]));
});

Deno.test("checkLinearizability() accepts a write of unknown outcome that is never observed", () => {
  const result = checkLinearizability([
    put(1, "x", "a", 0, 1),
    put(2, "x", "b", 2, null),
    get(3, "x", "a", 3, 4),
    get(3, "x", "a", 100, 101),
  ]);
  assertOk(result);
  if (result.ok === true) assert.equal(result.dropped, 1);
});

Deno.test("checkLinearizability() drops a read of unknown outcome whatever it claims", () => {
  const result = checkLinearizability([
    put(1, "x", "a", 0, 1),
    get(2, "x", "never written", 2, null),
    get(3, "x", "a", 2, null),
    get(4, "x", null, 2, null),
    get(2, "x", "a", 3, 4),
  ]);
  assert.deepEqual(result, { ok: true, keys: 1, operations: 2, dropped: 3 });
});

Deno.test("checkLinearizability() lets a write of unknown outcome take effect after another write of its value was read", () => {
  // "a" is first read thanks to the acknowledged put; the put of unknown outcome must be free to
  // take effect much later, after "b", to explain the last read.
  assertOk(checkLinearizability([
    put(1, "x", "a", 0, 1),
    put(2, "x", "a", 2, null),
    get(3, "x", "a", 3, 4),
    put(1, "x", "b", 5, 6),
    get(3, "x", "b", 7, 8),
    get(3, "x", "a", 20, 21),
  ]));
});

Deno.test("checkLinearizability() requires the only write of an observed value to precede its first read", () => {
  assertViolation(
    checkLinearizability([
      put(2, "x", "a", 2, null),
      get(3, "x", "a", 3, 4),
      put(1, "x", "b", 5, 6),
      get(3, "x", "b", 7, 8),
      get(3, "x", "a", 20, 21), // "a" would need to be written twice
    ]),
    "x",
  );
});

Deno.test("checkLinearizability() accepts a delete of unknown outcome that may explain a null", () => {
  assertOk(checkLinearizability([
    put(1, "x", "a", 0, 1),
    del(2, "x", 2, null),
    get(3, "x", "a", 3, 4),
    get(3, "x", null, 10, 11),
  ]));
});

Deno.test("checkLinearizability() accepts deletes followed by reads of null", () => {
  assertOk(checkLinearizability([
    put(1, "x", "a", 0, 1),
    del(1, "x", 2, 3),
    get(2, "x", null, 4, 5),
    del(2, "x", 6, 7), // deleting an absent key is fine too
    get(1, "x", null, 8, 9),
    put(1, "x", "b", 10, 11),
    get(2, "x", "b", 12, 13),
  ]));
});

Deno.test("checkLinearizability() checks keys independently", () => {
  // As a single register this would be a stale read; as two keys it is fine.
  const result = checkLinearizability([
    put(1, "x", "a", 0, 1),
    put(2, "y", "b", 2, 3),
    get(3, "x", "a", 4, 5),
    get(3, "y", "b", 6, 7),
    get(1, "z", null, 8, 9),
  ]);
  assert.deepEqual(result, { ok: true, keys: 3, operations: 5, dropped: 0 });
});

// ---------------------------------------------------------------------------------------------
// Histories that must be rejected.

Deno.test("checkLinearizability() rejects a stale read", () => {
  const reason = assertViolation(
    checkLinearizability([
      put(1, "x", "a", 0, 1),
      put(1, "x", "b", 2, 3),
      get(2, "x", "a", 4, 5),
    ]),
    "x",
  );
  assert.match(reason, /#2 get\("x"\) -> "a" by client 2 \[4 → 5\]/);
  assert.match(reason, /leaving the register at "b"/);
});

Deno.test("checkLinearizability() rejects a lost write read as absent", () => {
  assertViolation(
    checkLinearizability([put(1, "x", "a", 0, 1), get(2, "x", null, 2, 3)]),
    "x",
  );
});

Deno.test("checkLinearizability() rejects a lost write read as the older value", () => {
  assertViolation(
    checkLinearizability([
      put(1, "x", "a", 0, 1),
      put(2, "x", "b", 2, 3),
      get(1, "x", "b", 4, 5),
      put(2, "x", "c", 6, 7),
      // The final read of every key, after all writes returned.
      get(3, "x", "b", 20, 21),
    ]),
    "x",
  );
});

Deno.test("checkLinearizability() rejects a read of a value never written", () => {
  const reason = assertViolation(
    checkLinearizability([put(1, "x", "a", 0, 1), get(2, "x", "zzz", 2, 3)]),
    "x",
  );
  assert.match(reason, /no put of this key wrote/);
});

Deno.test("checkLinearizability() rejects a read of a value written to another key", () => {
  assertViolation(
    checkLinearizability([put(1, "y", "a", 0, 1), get(2, "x", "a", 2, 3)]),
    "x",
  );
});

Deno.test("checkLinearizability() rejects reads that travel back in time", () => {
  assertViolation(
    checkLinearizability([
      put(1, "x", "a", 0, 1),
      put(1, "x", "b", 2, 20), // still running during both reads
      get(2, "x", "b", 3, 4),
      get(3, "x", "a", 5, 6),
    ]),
    "x",
  );
});

Deno.test("checkLinearizability() rejects a read that sees a value after its delete was acknowledged", () => {
  assertViolation(
    checkLinearizability([
      put(1, "x", "a", 0, 1),
      del(1, "x", 2, 3),
      get(2, "x", "a", 4, 5),
    ]),
    "x",
  );
});

Deno.test("checkLinearizability() rejects a write of unknown outcome observed before it was called", () => {
  assertViolation(
    checkLinearizability([
      get(2, "x", "a", 0, 5),
      put(1, "x", "a", 10, null),
      get(2, "x", "a", 20, 21),
    ]),
    "x",
  );
  // The same, with the only read of it before the call.
  assertViolation(
    checkLinearizability([get(2, "x", "a", 0, 5), put(1, "x", "a", 10, null)]),
    "x",
  );
});

Deno.test("checkLinearizability() reports the violating key among many valid ones", () => {
  const history: Operation[] = [];
  for (let k = 0; k < 20; k++) {
    history.push(
      put(1, `k${k}`, "a", 3 * k, 3 * k + 1),
      get(2, `k${k}`, "a", 3 * k + 2, 3 * k + 3),
    );
  }
  history.push(get(3, "k7", null, 1000, 1001));
  const reason = assertViolation(checkLinearizability(history), "k7");
  assert.match(reason, /key "k7" is not linearizable/);
});

Deno.test("checkLinearizability() throws on malformed operations", () => {
  assert.throws(() => checkLinearizability([put(1, "x", "a", 5, 4)]), RangeError);
  assert.throws(() => checkLinearizability([put(1, "x", "a", NaN, 4)]), RangeError);
  assert.throws(
    () => checkLinearizability([{ ...put(1, "x", "a", 0, 1), value: null }]),
    TypeError,
  );
  assert.throws(() => checkLinearizability([], { timeoutMs: -1 }), RangeError);
  assert.throws(
    () =>
      checkLinearizability([{ client: 1, kind: "cas", key: "k", value: "v", call: 0, return: 1 }]),
    /a cas must carry an expected string value or null/,
  );
  assert.throws(
    () => checkLinearizability([{ ...cas(1, "k", null, "v", 0, 1), value: 5 as never }]),
    /a cas must carry a string value or null/,
  );
});

// ---------------------------------------------------------------------------------------------
// Randomized histories.

Deno.test("checkLinearizability() accepts random linearizable histories and rejects corrupted ones", () => {
  let staleChecked = 0;
  let futureChecked = 0;
  for (let seed = 1; seed <= 300; seed++) {
    const random = seededRandom(seed);
    const history = generateHistory(random, {
      clients: 2 + Math.floor(random() * 6),
      operations: 10 + Math.floor(random() * 80),
      keys: 1 + Math.floor(random() * 3),
      unknownRate: random() * 0.2,
      casRate: seed % 2 === 0 ? 0.5 : 0,
    });
    const at = `seed ${seed}: `;
    assertOk(checkLinearizability(history), at);

    const gets = completedGets(history);
    if (gets.length === 0) continue;
    const target = gets[Math.floor(random() * gets.length)] ?? 0;
    const victim = history[target];
    if (victim === undefined) throw new Error("unreachable");
    const copy = (value: string | null) =>
      history.map((op, i) => (i === target ? { ...op, value } : op));

    // A value nobody wrote.
    assertViolation(checkLinearizability(copy("never-written")), victim.key, at);

    // A value written only by a put called after the read returned.
    const future = history.find((op) =>
      (op.kind === "put" || op.kind === "cas") && op.key === victim.key &&
      op.call > (victim.return ?? Infinity) && op.value !== null
    );
    if (future !== undefined) {
      futureChecked++;
      assertViolation(checkLinearizability(copy(future.value)), victim.key, `${at}future: `);
    }

    // A value overwritten by an acknowledged write before the read was called.
    const older = history.find((p1) =>
      p1.kind === "put" && p1.key === victim.key && p1.return !== null &&
      history.some((p2) =>
        (p2.kind === "put" || p2.kind === "delete") && p2.key === victim.key &&
        p2.return !== null && p1.return !== null && p1.return < p2.call &&
        p2.return < victim.call
      )
    );
    if (older !== undefined) {
      staleChecked++;
      assertViolation(checkLinearizability(copy(older.value)), victim.key, `${at}stale: `);
    }
  }
  // The generator must actually produce the interesting corruptions.
  assert.ok(futureChecked > 50, `only ${futureChecked} future-value corruptions`);
  assert.ok(staleChecked > 50, `only ${staleChecked} stale-value corruptions`);
});

/**
 * Decides linearizability by brute force: tries every order of the operations that respects
 * real time, letting each operation of unknown outcome take effect at any point after its call or
 * never. Only for tiny histories.
 */
function bruteForce(history: Operation[]): boolean {
  const ops = history.filter((op) => !(op.kind === "get" && op.return === null));
  const byKey = new Map<string, Operation[]>();
  for (const op of ops) byKey.set(op.key, [...(byKey.get(op.key) ?? []), op]);
  const search = (list: Operation[], done: Set<Operation>, state: string | null): boolean => {
    if (list.every((op) => op.return === null || done.has(op))) return true;
    for (const op of list) {
      if (done.has(op)) continue;
      // Real time: nothing still undone may have returned before `op` was called.
      if (list.some((o) => !done.has(o) && o.return !== null && o.return < op.call)) continue;
      if (op.kind === "get" && op.value !== state) continue;
      if (op.kind === "cas" && (op.expect ?? null) !== state) continue;
      const next = op.kind === "put" || op.kind === "cas"
        ? op.value
        : op.kind === "delete"
        ? null
        : state;
      done.add(op);
      const found = search(list, done, next);
      done.delete(op);
      if (found) return true;
    }
    return false;
  };
  return [...byKey.values()].every((list) => search(list, new Set(), null));
}

Deno.test("checkLinearizability() agrees with a brute-force search on tiny random histories", () => {
  let rejected = 0;
  for (let seed = 1; seed <= 3000; seed++) {
    const random = seededRandom(seed);
    const values = ["a", "b", "c"];
    const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)] as T;
    const history: Operation[] = [];
    const count = 1 + Math.floor(random() * 7);
    for (let i = 0; i < count; i++) {
      const kind = pick(["put", "put", "get", "get", "get", "delete"] as const);
      const call = Math.floor(random() * 10);
      const ret = random() < 0.2 ? null : call + Math.floor(random() * 5);
      const value = kind === "put" ? pick(values) : kind === "get" ? pick([...values, null]) : null;
      history.push({ client: i, kind, key: pick(["x", "x", "y"]), value, call, return: ret });
    }
    const expected = bruteForce(history);
    const result = checkLinearizability(history);
    assert.equal(
      result.ok,
      expected,
      `seed ${seed}: brute force says ${expected}\n${describeHistory(history)}`,
    );
    if (!expected) rejected++;
  }
  // Both answers must be well represented.
  assert.ok(rejected > 500 && rejected < 2500, `${rejected} of 3000 rejected`);
});

Deno.test("checkLinearizability() agrees with a brute-force search on tiny random histories with compare-and-set", () => {
  let rejected = 0;
  let casApplied = 0;
  for (let seed = 1; seed <= 3000; seed++) {
    const random = seededRandom(1_000_000 + seed);
    const values = ["a", "b", "c"];
    const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)] as T;
    const history: Operation[] = [];
    const count = 1 + Math.floor(random() * 7);
    for (let i = 0; i < count; i++) {
      const kind = pick(["put", "cas", "cas", "get", "get", "delete"] as const);
      const call = Math.floor(random() * 10);
      const ret = random() < 0.2 ? null : call + Math.floor(random() * 5);
      const key = pick(["x", "x", "y"]);
      if (kind === "cas") {
        history.push(cas(i, key, pick([...values, null]), pick([...values, null]), call, ret));
        continue;
      }
      const value = kind === "put" ? pick(values) : kind === "get" ? pick([...values, null]) : null;
      history.push({ client: i, kind, key, value, call, return: ret });
    }
    const expected = bruteForce(history);
    const result = checkLinearizability(history);
    assert.equal(
      result.ok,
      expected,
      `seed ${seed}: brute force says ${expected}\n${describeHistory(history)}`,
    );
    if (!expected) rejected++;
    if (expected && history.some((op) => op.kind === "cas" && op.return !== null)) casApplied++;
  }
  assert.ok(rejected > 500 && rejected < 2500, `${rejected} of 3000 rejected`);
  assert.ok(casApplied > 150, `only ${casApplied} accepted histories with a completed cas`);
});

Deno.test("checkLinearizability() rejects two compare-and-sets that both applied from one value", () => {
  // The lost update a lock must prevent: both "acquire" from absent.
  assertViolation(
    checkLinearizability([
      cas(1, "lock", null, "alice", 0, 10),
      cas(2, "lock", null, "bob", 20, 30),
    ]),
    "lock",
  );
  assertViolation(
    checkLinearizability([
      put(0, "x", "a", 0, 1),
      cas(1, "x", "a", "b", 2, 10),
      cas(2, "x", "a", "c", 3, 11),
      get(3, "x", "c", 12, 13),
    ]),
    "x",
  );
  // Released in between: fine.
  assertOk(checkLinearizability([
    cas(1, "lock", null, "alice", 0, 10),
    cas(1, "lock", "alice", null, 11, 15),
    cas(2, "lock", null, "bob", 5, 30),
  ]));
  // A cas that needed a value nobody wrote.
  const reason = assertViolation(
    checkLinearizability([put(0, "x", "a", 0, 1), cas(1, "x", "z", "b", 2, 3)]),
    "x",
  );
  assert.match(reason, /observed a value that no put of this key wrote/);
});

Deno.test("checkLinearizability() lets a compare-and-set of unknown outcome take effect when its value is read", () => {
  assertOk(checkLinearizability([
    put(0, "x", "a", 0, 1),
    cas(1, "x", "a", "b", 2, null),
    get(2, "x", "a", 3, 4),
    get(2, "x", "b", 50, 51),
  ]));
  // Its value was read before its expected value was there: it cannot have applied.
  assertViolation(
    checkLinearizability([
      cas(1, "x", "a", "b", 0, null),
      get(2, "x", "b", 1, 2),
      put(0, "x", "a", 10, 11),
    ]),
    "x",
  );
  // Never observed: it may never have applied.
  assertOk(checkLinearizability([
    put(0, "x", "a", 0, 1),
    cas(1, "x", "a", "b", 2, null),
    get(2, "x", "a", 30, 31),
  ]));
});

// ---------------------------------------------------------------------------------------------
// Size and time budget.

Deno.test("checkLinearizability() checks 2000 operations of 8 to 10 concurrent clients on one key, with or without compare-and-set", () => {
  const runs = [[7, 8, 0, 0], [8, 8, 0.02, 0], [9, 10, 0.05, 0], [10, 8, 0.02, 0.5]] as const;
  for (const [seed, clients, unknownRate, casRate] of runs) {
    const history = generateHistory(seededRandom(seed), {
      clients,
      operations: 2000,
      keys: 1,
      unknownRate,
      casRate,
    });
    const result = checkLinearizability(history, { timeoutMs: 30_000 });
    assertOk(result, `seed ${seed}: `);
  }
});

/**
 * A non-linearizable history whose violation is only found after trying every order of `n`
 * concurrent puts (and `n` concurrent gets): two reads after all of them disagree. The search
 * takes about 2^n · n steps (n = 14: a few hundred milliseconds; n = 20: tens of seconds).
 */
function hardHistory(n: number): Operation[] {
  const history: Operation[] = [];
  for (let i = 0; i < n; i++) {
    history.push(put(i, "x", `v${i}`, 0, 100), get(n + i, "x", `v${i}`, 0, 100));
  }
  history.push(get(0, "x", "v0", 150, 160), get(0, "x", "v1", 200, 210));
  return history;
}

Deno.test("checkLinearizability() answers unknown when the time budget runs out", () => {
  const result = checkLinearizability(hardHistory(20), { timeoutMs: 20 });
  assert.equal(result.ok, "unknown");
  if (result.ok !== "unknown") throw new Error("unreachable");
  assert.equal(result.key, "x");
  assert.match(result.reason, /time budget of 20 ms ran out/);
});

Deno.test("checkLinearizability() finds the violation of a small hard history", () => {
  assertViolation(checkLinearizability(hardHistory(4)), "x");
});

// ---------------------------------------------------------------------------------------------
// describeHistory().

Deno.test("describeHistory() renders operations in call order with unknown outcomes", () => {
  const text = describeHistory([
    put(2, "x", "b", 5, null),
    put(1, "x", "a", 0, 1.23456),
    get(3, "x", null, 2, 3),
    del(1, "x", 4, 6),
  ]);
  assert.equal(
    text,
    [
      `#1  client 1  put("x", "a")     [0 → 1.235]`,
      `#2  client 3  get("x") -> null  [2 → 3]`,
      `#3  client 1  delete("x")       [4 → 6]`,
      `#0  client 2  put("x", "b")     [5 → ?]`,
    ].join("\n"),
  );
});

Deno.test("describeHistory() shows only the requested window and line count", () => {
  const ops = [
    put(1, "x", "a", 0, 1),
    put(1, "x", "b", 2, 3),
    put(1, "x", "c", 4, 5),
    put(1, "x", "d", 6, 7),
    put(1, "x", "e", 8, 9),
  ];
  const text = describeHistory(ops, { from: 2.5, to: 8, maxLines: 2 });
  assert.equal(
    text,
    [
      `#1  client 1  put("x", "b")  [2 → 3]`,
      `#2  client 1  put("x", "c")  [4 → 5]`,
      `... and 2 more`,
    ].join("\n"),
  );
});
