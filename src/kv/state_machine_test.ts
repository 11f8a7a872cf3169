import assert from "node:assert/strict";
import { KvModel } from "../../testing/kv_model.ts";
import {
  compareKeys,
  decodeCommand,
  encodeCommand,
  growthBound,
  type KvCommand,
  type KvEntry,
  KvStateMachine,
  LEASE_BYTES,
  type PlainCommand,
  REMEMBERED_VALUE_CHARS,
} from "./state_machine.ts";
import { seededRandom } from "../raft/rand.ts";

const ALL_KINDS: KvCommand[] = [
  { op: "put", key: "a", value: "1" },
  { op: "put", key: "ключ/🔑", value: "" },
  { op: "put", key: "", value: "x".repeat(10_000) },
  { op: "delete", key: "a b" },
  { op: "put", key: "a", value: "2", cas: 0 },
  { op: "put", key: "a", value: "3", cas: 2 ** 53 - 1 },
  { op: "delete", key: "a", cas: 7 },
  { op: "delete_range", range: { prefix: "p/" } },
  { op: "delete_range", range: { prefix: "" } },
  { op: "delete_range", range: { start: "b", end: null } },
  { op: "delete_range", range: { start: "b", end: "c" } },
  {
    op: "txn",
    compare: [
      { key: "a", target: "value", op: "=", value: "1" },
      { key: "a", target: "version", op: "!=", value: 2 },
      { key: "b", target: "mod_index", op: "<", value: 9 },
      { key: "c", target: "create_index", op: ">", value: 0 },
      { key: "d", target: "exists", op: "=", value: false },
      { key: "e", target: "exists", op: "!=", value: true },
    ],
    success: [{ op: "put", key: "a", value: "x" }, { op: "delete", key: "b" }],
    failure: [{ op: "get", key: "a" }],
  },
  { op: "txn", compare: [], success: [], failure: [] },
  {
    op: "txn",
    compare: [{ key: "a", target: "exists", op: "=", value: true }],
    success: [{ op: "put", key: "a", value: "l", lease: 2 ** 40 }, {
      op: "put",
      key: "b",
      value: "",
    }],
    failure: [{ op: "put", key: "c", value: "m", lease: 1 }],
  },
  {
    op: "idempotent",
    id: "req-1",
    at: 1_700_000_000_123,
    ttlMs: 600_000,
    maxKeys: 100_000,
    maxBytes: 64 << 20,
    command: { op: "put", key: "k", value: "v", cas: 3 },
  },
  { op: "lease_grant", ttlMs: 10_000 },
  { op: "lease_grant", ttlMs: 0 },
  { op: "put", key: "svc/1", value: "up", lease: { id: 2 ** 53 - 1 } },
  { op: "put", key: "lock", value: "", cas: 0, lease: { ttlMs: 2 ** 32 - 1 } },
  { op: "lease_revoke", ids: [1, 2, 2 ** 40], reason: "revoke" },
  { op: "lease_revoke", ids: [], reason: "expire" },
  {
    op: "idempotent",
    id: "g",
    at: 5,
    ttlMs: 1,
    maxKeys: 1,
    maxBytes: 1,
    command: { op: "put", key: "k", value: "v", lease: { id: 3 } },
  },
  {
    op: "idempotent",
    id: "",
    at: 0,
    ttlMs: 0,
    maxKeys: 0,
    maxBytes: 0,
    command: { op: "delete_range", range: { prefix: "x" } },
  },
];

Deno.test("commands of every kind round-trip through their binary form", () => {
  for (const c of ALL_KINDS) assert.deepEqual(decodeCommand(encodeCommand(c)), c);
});

/** `value` with a U+FEFF before every string but the enumerations' (`op`, `target`, `reason`). */
function _bomEverywhere<T>(value: T): T {
  if (typeof value === "string") return `\ufeff${value}` as T;
  if (Array.isArray(value)) return value.map(_bomEverywhere) as T;
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value).map((
      [k, v],
    ) => [k, k === "op" || k === "target" || k === "reason" ? v : _bomEverywhere(v)]),
  ) as T;
}

Deno.test("every string of every command keeps a leading U+FEFF through the binary form", () => {
  for (const c of ALL_KINDS.map(_bomEverywhere)) {
    assert.deepEqual(decodeCommand(encodeCommand(c)), c, JSON.stringify(c));
  }
});

Deno.test("keys, values, lease keys and idempotency ids that begin with U+FEFF are kept as given, through a snapshot too", () => {
  const [key, value, id] = ["\ufeffk", "\ufeffv", "\ufeffreq"];
  const sm = new KvStateMachine();
  sm.apply(1, { op: "lease_grant", ttlMs: 5000 });
  sm.apply(2, idem(id, 0, { op: "put", key, value, lease: { id: 1 } }));
  sm.apply(3, { op: "put", key: "\ufeff", value: "\ufeff" });
  const want = [
    { key: "\ufeff", value: "\ufeff", createIndex: 3, modIndex: 3, version: 1 },
    { key, value, createIndex: 2, modIndex: 2, version: 1 },
  ];
  assert.deepEqual([...sm.entries()], want);
  assert.equal(sm.get(key), value);
  assert.deepEqual(sm.lease(1)?.keys, [key]);
  const view = sm.view();
  const copy = new KvStateMachine();
  copy.reset({ entries: view.entries(), sessions: view.sessions, leases: view.leases }, 3);
  assert.deepEqual([...copy.entries()], want);
  assert.deepEqual(copy.lease(1)?.keys, [key]);
  assert.equal(copy.remembered(id, { op: "put", key, value, lease: { id: 1 } }, 1)?.op, "put");
});

Deno.test("puts and deletes keep the binary form they always had", () => {
  // op 1, key length (u32 BE), key, value; op 2, key length, key.
  assert.deepEqual(
    [...encodeCommand({ op: "put", key: "ab", value: "v" })],
    [1, 0, 0, 0, 2, 97, 98, 118],
  );
  assert.deepEqual([...encodeCommand({ op: "delete", key: "ab" })], [2, 0, 0, 0, 2, 97, 98]);
});

Deno.test("malformed commands are rejected, not misread", () => {
  for (const c of ALL_KINDS) {
    const good = encodeCommand(c);
    // Every cut of a command whose last field has a length is malformed.
    const openEnded = c.op === "put" ||
      (c.op === "idempotent" && c.command.op === "put");
    for (let cut = 0; cut < good.length; cut++) {
      if (openEnded && cut >= good.length - (c.op === "put" ? c.value : "v").length) continue;
      assert.throws(() => decodeCommand(good.subarray(0, cut)), RangeError, `cut at ${cut}`);
    }
    if (!openEnded) {
      assert.throws(() => decodeCommand(new Uint8Array([...good, 0])), RangeError, "trailing");
    }
  }
  const badOp = encodeCommand({ op: "put", key: "abc", value: "v" });
  badOp[0] = 11;
  assert.throws(() => decodeCommand(badOp), /unknown command op 11/);
  const del = encodeCommand({ op: "delete", key: "k" });
  assert.throws(() => decodeCommand(new Uint8Array([...del, 1])), /trailing/);
  // An idempotent command wrapping another, a u64 above 2^53-1, an unknown range kind.
  const inner = encodeCommand(ALL_KINDS.at(-1)!);
  const nested = new Uint8Array([...inner.subarray(0, inner.length - 7), 7]);
  assert.throws(() => decodeCommand(nested), /wraps another/);
  const cas = encodeCommand({ op: "delete", key: "k", cas: 1 });
  cas[1] = 0xff;
  assert.throws(() => decodeCommand(cas), /above 2\^53-1/);
  const range = encodeCommand({ op: "delete_range", range: { prefix: "p" } });
  range[1] = 3;
  assert.throws(() => decodeCommand(range), /unknown range kind 3/);
  const exists = encodeCommand({
    op: "txn",
    compare: [{ key: "k", target: "exists", op: "=", value: true }],
    success: [],
    failure: [],
  });
  exists[4] = 2; // op "<" on exists
  assert.throws(() => decodeCommand(exists), /exists compare with op </);
});

Deno.test("keys carry create_index, mod_index and version; a delete starts them afresh", () => {
  const sm = new KvStateMachine();
  assert.deepEqual(sm.apply(1, { op: "put", key: "a", value: "1" }), {
    op: "put",
    index: 1,
    createIndex: 1,
    modIndex: 1,
    version: 1,
  });
  sm.advance(2);
  assert.deepEqual(sm.apply(3, { op: "put", key: "a", value: "2" }), {
    op: "put",
    index: 3,
    createIndex: 1,
    modIndex: 3,
    version: 2,
  });
  assert.deepEqual(sm.entry("a"), {
    key: "a",
    value: "2",
    createIndex: 1,
    modIndex: 3,
    version: 2,
  });
  assert.deepEqual(sm.apply(4, { op: "delete", key: "a" }), {
    op: "delete",
    index: 4,
    deleted: true,
  });
  assert.deepEqual(sm.apply(5, { op: "delete", key: "a" }), {
    op: "delete",
    index: 5,
    deleted: false,
  });
  sm.apply(6, { op: "put", key: "a", value: "3" });
  assert.deepEqual(sm.entry("a"), {
    key: "a",
    value: "3",
    createIndex: 6,
    modIndex: 6,
    version: 1,
  });
  assert.equal(sm.get("b"), null);
  assert.equal(sm.appliedIndex, 6);
  assert.throws(() => sm.apply(6, { op: "put", key: "c", value: "3" }), /out of order/);
});

Deno.test("compare-and-set writes only when mod_index matches, 0 meaning absent", () => {
  const sm = new KvStateMachine();
  assert.equal(sm.apply(1, { op: "put", key: "a", value: "1", cas: 0 }).op, "put");
  const failed = sm.apply(2, { op: "put", key: "a", value: "2", cas: 0 });
  assert.deepEqual(failed, {
    op: "cas_failed",
    index: 2,
    key: "a",
    current: { key: "a", value: "1", createIndex: 1, modIndex: 1, version: 1 },
  });
  assert.equal(sm.get("a"), "1");
  assert.equal(sm.apply(3, { op: "put", key: "a", value: "2", cas: 1 }).op, "put");
  assert.equal(sm.apply(4, { op: "delete", key: "a", cas: 1 }).op, "cas_failed");
  assert.deepEqual(sm.apply(5, { op: "delete", key: "a", cas: 3 }), {
    op: "delete",
    index: 5,
    deleted: true,
  });
  assert.deepEqual(sm.apply(6, { op: "delete", key: "a", cas: 0 }), {
    op: "delete",
    index: 6,
    deleted: false,
  });
  assert.deepEqual(sm.apply(7, { op: "put", key: "b", value: "x", cas: 5 }), {
    op: "cas_failed",
    index: 7,
    key: "b",
    current: null,
  });
  assert.equal(sm.size, 0);
});

Deno.test("range deletes remove exactly the keys in the range and count them", () => {
  const sm = new KvStateMachine();
  let i = 0;
  for (const k of ["a", "p", "p/1", "p/2", "p0", "q", "\u{1f511}", "\uffff"]) {
    sm.apply(++i, { op: "put", key: k, value: k });
  }
  assert.deepEqual(sm.apply(++i, { op: "delete_range", range: { prefix: "p/" } }), {
    op: "delete_range",
    index: i,
    deleted: 2,
  });
  const keys = () => [...sm.entries()].map((e) => e.key);
  assert.deepEqual(keys(), ["a", "p", "p0", "q", "\uffff", "\u{1f511}"]);
  const r = sm.apply(++i, { op: "delete_range", range: { start: "p", end: "q" } });
  assert.equal(r.op === "delete_range" && r.deleted, 2);
  assert.deepEqual(keys(), ["a", "q", "\uffff", "\u{1f511}"]);
  // Code point order: U+FFFF sorts before U+1F511.
  const s = sm.apply(++i, { op: "delete_range", range: { start: "\uffff", end: "\u{1f511}" } });
  assert.equal(s.op === "delete_range" && s.deleted, 1);
  const t = sm.apply(++i, { op: "delete_range", range: { start: "b", end: null } });
  assert.equal(t.op === "delete_range" && t.deleted, 2);
  assert.deepEqual(keys(), ["a"]);
});

Deno.test("a transaction runs one branch as one step, by every kind of compare", () => {
  const sm = new KvStateMachine();
  sm.apply(1, { op: "put", key: "a", value: "m" });
  sm.apply(2, { op: "put", key: "a", value: "n" }); // a: create 1, mod 2, version 2
  const txn = (compare: Extract<PlainCommand, { op: "txn" }>["compare"], index: number) =>
    sm.apply(index, {
      op: "txn",
      compare,
      success: [{ op: "get", key: "a" }],
      failure: [],
    });
  const holds: [Extract<PlainCommand, { op: "txn" }>["compare"][number], boolean][] = [
    [{ key: "a", target: "value", op: "=", value: "n" }, true],
    [{ key: "a", target: "value", op: "!=", value: "n" }, false],
    [{ key: "a", target: "value", op: "<", value: "o" }, true],
    [{ key: "a", target: "value", op: ">", value: "o" }, false],
    [{ key: "zz", target: "value", op: "!=", value: "n" }, false], // absent: no value
    [{ key: "a", target: "version", op: "=", value: 2 }, true],
    [{ key: "a", target: "version", op: ">", value: 2 }, false],
    [{ key: "a", target: "mod_index", op: "=", value: 2 }, true],
    [{ key: "a", target: "create_index", op: "=", value: 1 }, true],
    [{ key: "a", target: "create_index", op: "<", value: 1 }, false],
    [{ key: "zz", target: "version", op: "=", value: 0 }, true],
    [{ key: "zz", target: "mod_index", op: "<", value: 1 }, true],
    [{ key: "a", target: "exists", op: "=", value: true }, true],
    [{ key: "zz", target: "exists", op: "=", value: false }, true],
    [{ key: "zz", target: "exists", op: "!=", value: false }, false],
  ];
  let index = 2;
  for (const [c, expected] of holds) {
    const r = txn([c], ++index);
    assert.equal(r.op === "txn" && r.succeeded, expected, JSON.stringify(c));
  }
  // Both branches, with results that see the branch's own earlier writes.
  const r = sm.apply(++index, {
    op: "txn",
    compare: [
      { key: "a", target: "value", op: "=", value: "n" },
      { key: "lock", target: "exists", op: "=", value: false },
    ],
    success: [
      { op: "put", key: "lock", value: "me" },
      { op: "put", key: "a", value: "o" },
      { op: "get", key: "lock" },
      { op: "delete", key: "nothing" },
    ],
    failure: [{ op: "get", key: "lock" }],
  });
  assert.deepEqual(r, {
    op: "txn",
    index,
    succeeded: true,
    results: [
      { op: "put", key: "lock", createIndex: index, modIndex: index, version: 1 },
      { op: "put", key: "a", createIndex: 1, modIndex: index, version: 3 },
      {
        op: "get",
        key: "lock",
        entry: { key: "lock", value: "me", createIndex: index, modIndex: index, version: 1 },
      },
      { op: "delete", key: "nothing", deleted: false },
    ],
  });
  const again = sm.apply(++index, {
    op: "txn",
    compare: [{ key: "lock", target: "exists", op: "=", value: false }],
    success: [{ op: "put", key: "lock", value: "other" }],
    failure: [{ op: "get", key: "lock" }],
  });
  assert.equal(again.op === "txn" && again.succeeded, false);
  assert.equal(
    again.op === "txn" && again.results[0]?.op === "get" && again.results[0].entry?.value,
    "me",
  );
  assert.equal(sm.get("lock"), "me");
});

function idem(id: string, at: number, command: PlainCommand, limits: Partial<{
  ttlMs: number;
  maxKeys: number;
  maxBytes: number;
}> = {}): KvCommand {
  return {
    op: "idempotent",
    id,
    at,
    ttlMs: limits.ttlMs ?? 60_000,
    maxKeys: limits.maxKeys ?? 1000,
    maxBytes: limits.maxBytes ?? 1 << 20,
    command,
  };
}

Deno.test("an idempotent command is applied once; a retry gets the first outcome", () => {
  const sm = new KvStateMachine();
  const put = { op: "put", key: "a", value: "1", cas: 0 } as const;
  const first = sm.apply(1, idem("r1", 1000, put));
  assert.deepEqual(first, { op: "put", index: 1, createIndex: 1, modIndex: 1, version: 1 });
  // Applied again it would fail its condition; as a retry it answers the first outcome.
  assert.deepEqual(sm.apply(2, idem("r1", 2000, put)), { ...first, replayed: true });
  assert.equal(sm.entry("a")?.version, 1);
  // Bytes or objects: the same.
  assert.deepEqual(sm.apply(3, encodeCommand(idem("r1", 2500, put))), { ...first, replayed: true });
  // The same key for a different command changes nothing.
  assert.deepEqual(sm.apply(4, idem("r1", 3000, { op: "put", key: "a", value: "2" })), {
    op: "idempotency_mismatch",
    index: 4,
    id: "r1",
  });
  assert.equal(sm.get("a"), "1");
  // A failed outcome is remembered too.
  const failed = sm.apply(5, idem("r2", 3000, put));
  assert.equal(failed.op, "cas_failed");
  sm.apply(6, { op: "delete", key: "a" });
  assert.deepEqual(sm.apply(7, idem("r2", 3000, put)), { ...failed, replayed: true });
  assert.equal(sm.get("a"), null);
});

Deno.test("remembered() answers a retry as applying it would, without applying anything", () => {
  const sm = new KvStateMachine();
  const put = { op: "put", key: "a", value: "1", cas: 0 } as const;
  const first = sm.apply(1, idem("r1", 1000, put, { ttlMs: 1000 }));
  sm.apply(2, { op: "put", key: "b", value: "2" });
  // The same command: the first outcome, as apply answers at the same time.
  assert.deepEqual(sm.remembered("r1", put, 1999), { ...first, replayed: true });
  assert.deepEqual(sm.remembered("r1", put, 1999), sm.apply(3, idem("r1", 1999, put)));
  // Another command under the key: a mismatch at the applied index.
  assert.deepEqual(sm.remembered("r1", { op: "put", key: "a", value: "2" }, 1999), {
    op: "idempotency_mismatch",
    index: 3,
    id: "r1",
  });
  // Expired (applying would run the command again) or never seen: nothing remembered.
  assert.equal(sm.remembered("r1", put, 2000), null);
  assert.equal(sm.remembered("r9", put, 1000), null);
  assert.equal(sm.appliedIndex, 3);
  assert.equal(sm.entry("a")?.version, 1);
});

Deno.test("remembered outcomes expire by the leader's stamp and are bounded in count and bytes", () => {
  const sm = new KvStateMachine();
  let i = 0;
  const put = (k: string) => ({ op: "put", key: k, value: "v" }) as const;
  sm.apply(++i, idem("old", 0, put("x"), { ttlMs: 1000 }));
  // Still remembered just before it expires, forgotten at its expiry: applied again.
  assert.equal(sm.apply(++i, idem("old", 999, put("x"), { ttlMs: 1000 })).replayed, true);
  const again = sm.apply(++i, idem("old", 1000, put("x"), { ttlMs: 1000 }));
  assert.equal(again.replayed, undefined);
  assert.equal(sm.entry("x")?.version, 2);
  // An expired outcome behind one still alive is forgotten when it is hit.
  sm.apply(++i, idem("long", 1500, put("l"), { ttlMs: 100_000 }));
  sm.apply(++i, idem("short", 1500, put("s"), { ttlMs: 10 }));
  assert.equal(sm.apply(++i, idem("short", 1505, put("s"))).replayed, true);
  assert.equal(sm.apply(++i, idem("short", 1510, put("s"))).replayed, undefined);
  assert.equal(sm.entry("s")?.version, 2);
  // Count: the oldest go first.
  for (let n = 0; n < 5; n++) sm.apply(++i, idem(`c${n}`, 2000, put(`c${n}`), { maxKeys: 3 }));
  assert.equal(sm.sessionCount, 3);
  assert.equal(sm.apply(++i, idem("c0", 2000, put("c0"))).replayed, undefined);
  assert.equal(sm.apply(++i, idem("c4", 2000, put("c4"))).replayed, true);
  // Bytes: a 1000-byte budget keeps only a few small outcomes.
  for (let n = 0; n < 50; n++) sm.apply(++i, idem(`b${n}`, 2000, put(`b${n}`), { maxBytes: 1000 }));
  const kept = sm.view().sessions;
  assert.ok(kept.length > 0 && kept.length < 50, `${kept.length} kept`);
  assert.ok(kept.reduce((n, b) => n + b.length, 0) <= 1000);
});

Deno.test("remembered outcomes leave long values out, so failed compare-and-sets on a large key cannot push other outcomes out", () => {
  const sm = new KvStateMachine();
  let i = 0;
  const big = "x".repeat(REMEMBERED_VALUE_CHARS + 1);
  const small = "y".repeat(REMEMBERED_VALUE_CHARS);
  sm.apply(++i, { op: "put", key: "big", value: big });
  sm.apply(++i, { op: "put", key: "small", value: small });
  const victim = { op: "put", key: "job", value: "1", cas: 0 } as const;
  const first = sm.apply(++i, idem("victim", 1000, victim, { maxBytes: 64 * 1024 }));
  // Many failed compare-and-sets on the large key, each remembered under its own key.
  const cas = { op: "put", key: "big", value: "z", cas: 999 } as const;
  for (let n = 0; n < 200; n++) sm.apply(++i, idem(`cas-${n}`, 1000, cas, { maxBytes: 64 * 1024 }));
  // The victim's outcome is still remembered: its retry is answered, not applied again.
  assert.deepEqual(sm.apply(++i, idem("victim", 1000, victim)), { ...first, replayed: true });
  // Applied, the 412 names the whole current value; replayed, the value is left out.
  const applied = sm.apply(++i, idem("cas-new", 1000, cas));
  assert.equal(applied.op === "cas_failed" && applied.current?.value, big);
  const replayed = sm.apply(++i, idem("cas-new", 1000, cas));
  assert.ok(replayed.op === "cas_failed" && replayed.replayed);
  assert.deepEqual(replayed.current, { ...sm.entry("big")!, value: "", valueOmitted: true });
  // A transaction's gets: the long value left out, a value of the limit kept.
  const txn: PlainCommand = {
    op: "txn",
    compare: [],
    success: [{ op: "get", key: "big" }, { op: "get", key: "small" }],
    failure: [],
  };
  sm.apply(++i, idem("t", 1000, txn));
  const again = sm.apply(++i, idem("t", 1000, txn));
  assert.ok(again.op === "txn" && again.replayed);
  const [g1, g2] = again.results;
  assert.ok(g1?.op === "get" && g1.entry?.valueOmitted === true && g1.entry.value === "");
  assert.ok(g2?.op === "get" && g2.entry?.value === small && g2.entry.valueOmitted === undefined);
});

Deno.test("a reset restores entries in any order, and the remembered outcomes", () => {
  const sm = new KvStateMachine();
  sm.apply(1, idem("r", 0, { op: "put", key: "b", value: "2" }));
  sm.apply(2, { op: "put", key: "a", value: "1" });
  const view = sm.view();
  const copy = new KvStateMachine();
  copy.reset({ entries: [...view.entries()].reverse(), sessions: view.sessions }, view.index);
  assert.deepEqual([...copy.entries()], [...sm.entries()]);
  assert.deepEqual(copy.apply(3, idem("r", 1, { op: "put", key: "b", value: "2" })), {
    op: "put",
    index: 1,
    createIndex: 1,
    modIndex: 1,
    version: 1,
    replayed: true,
  });
  const dup: KvEntry = { key: "a", value: "", createIndex: 1, modIndex: 1, version: 1 };
  assert.throws(() => copy.reset({ entries: [dup, dup], sessions: [] }, 5), RangeError);
  assert.throws(
    () => copy.reset({ entries: [], sessions: [new Uint8Array([0, 0, 0, 9, 1])] }, 5),
    /malformed idempotency record/,
  );
});

Deno.test("ranges return keys in order within limits, with where to continue", () => {
  const sm = new KvStateMachine();
  let i = 0;
  for (let n = 0; n < 300; n++) {
    sm.apply(++i, { op: "put", key: `p/${String(n).padStart(3, "0")}`, value: "x".repeat(n % 7) });
  }
  sm.apply(++i, { op: "put", key: "p", value: "not under p/" });
  sm.apply(++i, { op: "put", key: "q", value: "after" });
  const prefix = { prefix: "p/" };
  const page = sm.range({ range: prefix, limit: 100, maxChars: 1 << 20 });
  assert.equal(page.entries.length, 100);
  assert.equal(page.entries[0]!.key, "p/000");
  assert.equal(page.next, "p/100");
  const all: string[] = [];
  let from: string | undefined;
  for (;;) {
    const r = sm.range({ range: prefix, limit: 64, maxChars: 1 << 20, ...(from ? { from } : {}) });
    all.push(...r.entries.map((e) => e.key));
    if (r.next === null) break;
    from = r.next;
  }
  assert.equal(all.length, 300);
  assert.deepEqual(all, [...all].sort());
  assert.deepEqual(sm.range({ range: prefix, limit: 1, maxChars: 1, countOnly: true }), {
    entries: [],
    next: null,
    count: 300,
  });
  // A byte budget ends a page early, but never before its first entry.
  const small = sm.range({ range: prefix, limit: 1000, maxChars: 1 });
  assert.equal(small.entries.length, 1);
  assert.equal(small.next, "p/001");
  const ranged = sm.range({ range: { start: "p/298", end: "q" }, limit: 10, maxChars: 1 << 20 });
  assert.deepEqual(ranged.entries.map((e) => e.key), ["p/298", "p/299"]);
  const open = sm.range({ range: { start: "p/299", end: null }, limit: 10, maxChars: 1 << 20 });
  assert.deepEqual(open.entries.map((e) => e.key), ["p/299", "q"]);
  // A continuation before the start of the range starts at the range's start.
  const before = sm.range({ range: prefix, limit: 1, maxChars: 100, from: "a" });
  assert.equal(before.entries[0]!.key, "p/000");
});

Deno.test("random commands give the same results and state as the reference model", () => {
  for (const seed of [11, 12, 13, 14]) {
    const random = seededRandom(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
    const keys = ["a", "b", "p/1", "p/2", "p/3", "q", "\u{1f511}", "\uffff"];
    const sm = new KvStateMachine();
    const replica = new KvStateMachine();
    const model = new KvModel();
    let at = 0;
    const recent: KvCommand[] = [];
    for (let index = 1; index <= 3000; index++) {
      const cur = (k: string) => model.data.get(k)?.modIndex ?? 0;
      const value = `v${index}`;
      const makePlain = (): PlainCommand => {
        const leaseIds = [...model.leases.keys()];
        switch (pick(["put", "put", "cas", "del", "delcas", "range", "txn", "lease"])) {
          case "put":
            return { op: "put", key: pick(keys), value };
          case "lease":
            switch (pick(["grant", "attach", "attach", "ttl", "revoke", "expire"])) {
              case "grant":
                return { op: "lease_grant", ttlMs: Math.floor(random() * 10_000) };
              case "attach":
                return {
                  op: "put",
                  key: pick(keys),
                  value,
                  lease: { id: leaseIds.length > 0 && random() < 0.9 ? pick(leaseIds) : index },
                };
              case "ttl":
                return { op: "put", key: pick(keys), value, lease: { ttlMs: 1000 } };
              default:
                return {
                  op: "lease_revoke",
                  ids: leaseIds.filter(() => random() < 0.3).concat(random() < 0.2 ? [index] : []),
                  reason: random() < 0.5 ? "revoke" : "expire",
                };
            }
          case "cas": {
            const k = pick(keys);
            return { op: "put", key: k, value, cas: random() < 0.7 ? cur(k) : index };
          }
          case "del":
            return { op: "delete", key: pick(keys) };
          case "delcas": {
            const k = pick(keys);
            return { op: "delete", key: k, cas: random() < 0.7 ? cur(k) : 0 };
          }
          case "range":
            return random() < 0.5
              ? { op: "delete_range", range: { prefix: pick(["p/", "p", "\u{1f511}"]) } }
              : {
                op: "delete_range",
                range: { start: pick(keys), end: random() < 0.3 ? null : pick(keys) },
              };
          default: {
            const k = pick(keys);
            return {
              op: "txn",
              compare: [
                random() < 0.5
                  ? {
                    key: k,
                    target: "mod_index",
                    op: random() < 0.7 ? "=" : pick(["!=", "<", ">"] as const),
                    value: cur(k),
                  }
                  : {
                    key: k,
                    target: "exists",
                    op: "=",
                    value: model.data.has(k) !== random() < 0.2,
                  },
                random() < 0.7 ? { key: k, target: "version", op: "<", value: 1 + index } : {
                  key: pick(keys),
                  target: "value",
                  op: pick(["=", "<"] as const),
                  value: `v${Math.floor(random() * index)}`,
                },
              ],
              success: [
                random() < 0.3
                  ? {
                    op: "put",
                    key: k,
                    value,
                    lease: leaseIds.length > 0 && random() < 0.8 ? pick(leaseIds) : index,
                  }
                  : { op: "put", key: k, value },
                { op: "get", key: pick(keys) },
              ],
              failure: [{ op: "delete", key: pick(keys) }, { op: "get", key: k }],
            };
          }
        }
      };
      let cmd: KvCommand | null = makePlain();
      if (random() < 0.3) {
        at += Math.floor(random() * 300);
        const retry = random() < 0.5
          ? recent.at(-1 - Math.floor(random() * recent.length))
          : undefined;
        // A retry of a recent command (the same id and command), or a new one whose id is
        // sometimes one used before for something else.
        cmd = retry !== undefined && retry.op === "idempotent"
          ? { ...retry, at }
          : idem(`id${Math.floor(random() * 400)}`, at, cmd, {
            ttlMs: 2000,
            maxKeys: 25,
            maxBytes: 1500,
          });
        recent.push(cmd);
        if (recent.length > 10) recent.shift();
      } else if (random() < 0.05) {
        cmd = null; // a no-op entry
      }
      if (cmd === null) {
        sm.advance(index);
        replica.advance(index);
        continue;
      }
      const expected = model.apply(index, cmd);
      assert.deepEqual(sm.apply(index, cmd), expected, `seed ${seed} index ${index}`);
      assert.deepEqual(replica.apply(index, encodeCommand(cmd)), expected);
      if (index % 500 === 0) {
        assert.deepEqual([...sm.entries()], model.range({ prefix: "" }), `state at ${index}`);
        assert.deepEqual(sm.leases(), modelLeases(model), `leases at ${index}`);
        // A replica restarted from a snapshot of this state keeps giving the same results.
        const view = replica.view();
        replica.reset(
          { entries: view.entries(), sessions: view.sessions, leases: view.leases },
          view.index,
        );
        assert.deepEqual(replica.leases(), sm.leases());
      }
    }
    assert.deepEqual([...sm.entries()], model.range({ prefix: "" }));
    assert.deepEqual([...replica.entries()], [...sm.entries()]);
  }
});

/** The model's leases as the state machine lists them. */
function modelLeases(model: KvModel) {
  return [...model.leases].sort((a, b) => a[0] - b[0]).map(([id, ttlMs]) => ({
    id,
    ttlMs,
    keys: [...model.keyLease].filter(([, l]) => l === id).map(([k]) => k).sort(compareKeys),
  }));
}

Deno.test("a lease's keys go in the one entry that revokes or expires it", () => {
  const sm = new KvStateMachine();
  assert.deepEqual(sm.apply(1, { op: "lease_grant", ttlMs: 5000 }), {
    op: "lease_grant",
    index: 1,
    id: 1,
    ttlMs: 5000,
  });
  assert.equal(sm.apply(2, { op: "put", key: "a", value: "1", lease: { id: 1 } }).op, "put");
  assert.equal(sm.apply(3, { op: "put", key: "b", value: "2", lease: { id: 1 } }).op, "put");
  assert.equal(sm.apply(4, { op: "put", key: "c", value: "3", lease: { id: 1 } }).op, "put");
  // An unknown lease: nothing written.
  assert.deepEqual(sm.apply(5, { op: "put", key: "d", value: "4", lease: { id: 99 } }), {
    op: "lease_not_found",
    index: 5,
    lease: 99,
  });
  assert.equal(sm.get("d"), null);
  // A put without the lease detaches "b"; a delete detaches "c" (and a new "c" is not attached).
  sm.apply(6, { op: "put", key: "b", value: "plain" });
  sm.apply(7, { op: "delete", key: "c" });
  sm.apply(8, { op: "put", key: "c", value: "again" });
  assert.deepEqual(sm.lease(1), { id: 1, ttlMs: 5000, keys: ["a"] });
  assert.equal(sm.leaseOf("b"), null);
  // The ttl shorthand: a new lease whose id is the put's index.
  const r = sm.apply(9, { op: "put", key: "e", value: "5", lease: { ttlMs: 1000 } });
  assert.equal(r.op === "put" && r.lease, 9);
  assert.deepEqual(sm.lease(9), { id: 9, ttlMs: 1000, keys: ["e"] });
  // A snapshot keeps leases and attachments.
  const view = sm.view();
  const copy = new KvStateMachine();
  copy.reset({ entries: view.entries(), sessions: view.sessions, leases: view.leases }, 9);
  assert.deepEqual(copy.leases(), sm.leases());
  // One entry expires both leases and deletes their keys; the others stay.
  assert.deepEqual(sm.apply(10, { op: "lease_revoke", ids: [9, 1, 42], reason: "expire" }), {
    op: "lease_revoke",
    index: 10,
    revoked: [9, 1],
    deleted: ["e", "a"],
  });
  assert.deepEqual([...sm.entries()].map((e) => e.key), ["b", "c"]);
  assert.equal(sm.leaseCount, 0);
  // Watchers see those keys go as `expire` changes at that index; a plain delete stays `delete`.
  assert.deepEqual(
    [...sm.events.since(7)].map((e) => `${e.index} ${e.type} ${e.k}`),
    ["7 delete c", "8 put c", "9 put e", "10 expire e", "10 expire a"],
  );
  // A snapshot written before leases loads with none.
  const old = new KvStateMachine();
  old.reset({ entries: view.entries(), sessions: [] }, 9);
  assert.equal(old.leaseCount, 0);
  assert.throws(
    () => old.reset({ entries: [], sessions: [], leases: [new Uint8Array([1, 2])] }, 1),
    RangeError,
  );
});

Deno.test("a view keeps showing the state it began with while writes go on", () => {
  const sm = new KvStateMachine();
  for (let i = 0; i < 1000; i++) sm.apply(i + 1, { op: "put", key: `k${i}`, value: `v${i}` });
  const expected = [...sm.entries()];
  const view = sm.view();
  assert.equal(view.index, 1000);
  assert.equal(view.count, 1000);
  const seen: KvEntry[] = [];
  let index = 1000;
  let n = 0;
  for (const e of view.entries()) {
    seen.push(e);
    // Interleave changes with the reading: overwrite, delete, re-add, add, delete ranges.
    const i = n++ % 1000;
    sm.apply(++index, { op: "put", key: `k${(i * 7) % 1000}`, value: "changed" });
    sm.apply(++index, { op: "delete", key: `k${(i * 13) % 1000}` });
    sm.apply(++index, { op: "put", key: `new${i}`, value: "x" });
    if (i % 100 === 0) sm.apply(++index, { op: "delete_range", range: { prefix: `k${i % 10}` } });
  }
  view.close();
  assert.deepEqual(seen, expected);
});

Deno.test("a transaction's put attaches its key to a lease that exists; a missing lease fails the whole transaction", () => {
  const sm = new KvStateMachine();
  sm.apply(1, { op: "lease_grant", ttlMs: 5000 });
  sm.apply(2, { op: "put", key: "other", value: "o", lease: { id: 1 } });
  const ok = sm.apply(3, {
    op: "txn",
    compare: [{ key: "svc", target: "exists", op: "=", value: false }],
    success: [
      { op: "put", key: "svc", value: "up", lease: 1 },
      { op: "put", key: "plain", value: "p" },
    ],
    failure: [],
  });
  assert.ok(ok.op === "txn" && ok.succeeded);
  assert.deepEqual(ok.results.map((r) => r.op === "put" ? r.lease : "?"), [1, undefined]);
  assert.deepEqual(sm.lease(1)?.keys, ["other", "svc"]);
  // A lease that does not exist: nothing of the branch is written, as a put with that lease.
  const missing = sm.apply(4, {
    op: "txn",
    compare: [],
    success: [{ op: "put", key: "plain", value: "changed" }, {
      op: "put",
      key: "svc",
      value: "x",
      lease: 99,
    }],
    failure: [],
  });
  assert.deepEqual(missing, { op: "lease_not_found", index: 4, lease: 99 });
  assert.equal(sm.entry("plain")?.value, "p");
  assert.equal(sm.entry("svc")?.value, "up");
  // Only the branch that runs is checked: a failed compare runs the other one.
  const other = sm.apply(5, {
    op: "txn",
    compare: [{ key: "svc", target: "exists", op: "=", value: false }],
    success: [{ op: "put", key: "svc", value: "x", lease: 99 }],
    failure: [{ op: "get", key: "svc" }],
  });
  assert.ok(other.op === "txn" && !other.succeeded);
  // A transaction's put without a lease detaches the key, as a plain put does.
  sm.apply(6, {
    op: "txn",
    compare: [],
    success: [{ op: "put", key: "other", value: "o2" }],
    failure: [],
  });
  assert.deepEqual(sm.lease(1)?.keys, ["svc"]);
  // Revoking the lease deletes the key the transaction attached.
  const revoked = sm.apply(7, { op: "lease_revoke", ids: [1], reason: "expire" });
  assert.ok(revoked.op === "lease_revoke");
  assert.deepEqual(revoked.deleted, ["svc"]);
  assert.equal(sm.entry("svc"), null);
  // The same through a snapshot: the attachment is state.
  const a = new KvStateMachine();
  a.apply(1, { op: "lease_grant", ttlMs: 5000 });
  a.apply(2, {
    op: "txn",
    compare: [],
    success: [{ op: "put", key: "k", value: "v", lease: 1 }],
    failure: [],
  });
  const view = a.view();
  const b = new KvStateMachine();
  b.reset({ entries: view.entries(), sessions: view.sessions, leases: view.leases }, view.index);
  assert.deepEqual(b.lease(1)?.keys, ["k"]);
});

Deno.test("dataBytes counts the UTF-8 bytes of the keys and values; growth is what a write would add", () => {
  const sm = new KvStateMachine();
  assert.equal(sm.dataBytes, 0);
  assert.equal(sm.growth({ op: "put", key: "ключ", value: "🔑" }), 8 + 4);
  sm.apply(1, { op: "put", key: "ключ", value: "🔑" });
  assert.equal(sm.dataBytes, 12);
  assert.equal(
    sm.growth({ op: "put", key: "ключ", value: "ab" }),
    0,
    "a smaller value adds nothing",
  );
  assert.equal(sm.growth({ op: "put", key: "ключ", value: "abcdef" }), 2);
  assert.equal(sm.growth({ op: "delete", key: "ключ" }), 0);
  assert.equal(sm.growth({ op: "delete_range", range: { prefix: "" } }), 0);
  assert.equal(sm.growth({ op: "lease_grant", ttlMs: 5000 }), LEASE_BYTES, "a lease counts");
  const txn: PlainCommand = {
    op: "txn",
    compare: [],
    success: [{ op: "put", key: "a", value: "1" }, { op: "put", key: "ключ", value: "" }],
    failure: [{ op: "put", key: "bbb", value: "22" }, { op: "delete", key: "ключ" }],
  };
  assert.equal(sm.growth(txn), 5, "the branch that adds more; a shrinking put counts 0");
  sm.apply(2, { op: "put", key: "ключ", value: "" });
  assert.equal(sm.dataBytes, 8);
  sm.apply(3, { op: "put", key: "b", value: "\ud800" });
  assert.equal(sm.dataBytes, 8 + 1 + 3, "a lone surrogate is stored as U+FFFD");
  sm.apply(4, { op: "delete", key: "ключ" });
  assert.equal(sm.dataBytes, 4);
  const copy = new KvStateMachine();
  const view = sm.view();
  copy.reset({ entries: view.entries(), sessions: view.sessions, leases: view.leases }, 4);
  assert.equal(copy.dataBytes, 4, "counted when restored from a snapshot");
  // The constant-time bound is never below the growth.
  for (const cmd of [...ALL_KINDS, txn]) {
    if (cmd.op === "idempotent") continue;
    assert.ok(growthBound(cmd) >= sm.growth(cmd), JSON.stringify(cmd));
  }
  assert.equal(growthBound({ op: "put", key: "ключ", value: "🔑" }), 3 * (4 + 2));
  assert.equal(growthBound({ op: "delete", key: "a" }), 0);
});

Deno.test("dataBytes counts LEASE_BYTES for each lease, granted alone or with a put, until it ends", () => {
  const sm = new KvStateMachine();
  const grant: PlainCommand = { op: "lease_grant", ttlMs: 5000 };
  assert.equal(sm.growth(grant), LEASE_BYTES);
  assert.equal(growthBound(grant), LEASE_BYTES);
  sm.apply(1, grant);
  assert.equal(sm.dataBytes, LEASE_BYTES);
  // A put that grants its lease adds the lease too, even when its value adds nothing.
  sm.apply(2, { op: "put", key: "k", value: "vv" });
  const leased: PlainCommand = { op: "put", key: "k", value: "v", lease: { ttlMs: 5000 } };
  assert.equal(sm.growth(leased), LEASE_BYTES);
  assert.ok(growthBound(leased) >= sm.growth(leased));
  // Attaching to an existing lease adds no lease.
  assert.equal(sm.growth({ op: "put", key: "k", value: "v", lease: { id: 1 } }), 0);
  sm.apply(3, leased);
  assert.equal(sm.dataBytes, 2 * LEASE_BYTES + 2);
  // The views a snapshot is written from count the same once restored.
  const copy = new KvStateMachine();
  const view = sm.view();
  copy.reset({ entries: view.entries(), sessions: view.sessions, leases: view.leases }, 3);
  assert.equal(copy.dataBytes, sm.dataBytes, "counted when restored from a snapshot");
  // Revoking a lease (or its expiry) gives its bytes back, with its keys'.
  assert.equal(sm.growth({ op: "lease_revoke", ids: [3], reason: "revoke" }), 0);
  sm.apply(4, { op: "lease_revoke", ids: [3], reason: "revoke" });
  assert.equal(sm.dataBytes, LEASE_BYTES, "lease 3 and its key k are gone");
  sm.apply(5, { op: "lease_revoke", ids: [1], reason: "expire" });
  assert.equal(sm.dataBytes, 0);
});
