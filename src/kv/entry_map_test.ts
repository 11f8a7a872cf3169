import assert from "node:assert/strict";
import { compareKeys } from "./key_order.ts";
import { EntryMap, EntryMapBuilder, type EntryMapVersion, type KvEntry } from "./entry_map.ts";
import { seededRandom } from "../raft/rand.ts";

// U+FEFF (a byte order mark at the start of a text) is data in a key or value, like any other.
const _ALPHABET = ["a", "b", "z", "é", "\uffff", "\u{10000}", "\u{1f600}", "0", "", "\ufeff"];

function _key(rand: () => number, range: number): string {
  const n = Math.floor(rand() * range);
  return `${_ALPHABET[n % _ALPHABET.length]}${n}`;
}

/** The UTF-8 bytes of the entries' keys and values, as `EntryMap.bytes` counts them. */
function _bytes(entries: Iterable<KvEntry>): number {
  const encoder = new TextEncoder();
  let n = 0;
  for (const e of entries) n += encoder.encode(e.key).length + encoder.encode(e.value).length;
  return n;
}

function _sorted(model: Map<string, KvEntry>): KvEntry[] {
  return [...model.values()].sort((a, b) => compareKeys(a.key, b.key));
}

function _check(version: EntryMapVersion | EntryMap, expected: KvEntry[], probe: string[]): void {
  assert.equal(version.size, expected.length);
  assert.deepEqual([...version.values()], expected);
  const byKey = new Map(expected.map((e) => [e.key, e]));
  for (const k of probe) {
    assert.deepEqual(version.get(k), byKey.get(k));
    const from = expected.filter((e) => compareKeys(e.key, k) >= 0).slice(0, 5);
    assert.deepEqual([...version.values(k)].slice(0, 5), from);
  }
}

Deno.test("random puts and deletes read back as a sorted model, frozen versions unchanged", () => {
  for (const seed of [1, 2, 3]) {
    const rand = seededRandom(seed);
    const map = new EntryMap();
    const model = new Map<string, KvEntry>();
    const frozen: { version: EntryMapVersion; expected: KvEntry[] }[] = [];
    // Few distinct keys make deletes hit and leaves merge; many make the tree three deep.
    const range = seed === 3 ? 300 : 8000;
    for (let step = 1; step <= 8000; step++) {
      const key = _key(rand, range);
      if (rand() < 0.3) {
        assert.equal(map.delete(key), model.delete(key));
      } else {
        const current = model.get(key);
        const value = (key.startsWith("\ufeff") ? "\ufeff" : "") +
          "v".repeat(Math.floor(rand() * 200)) + (rand() < 0.1 ? "ü\u{1f600}" : "");
        const e: KvEntry = {
          key,
          value,
          createIndex: current?.createIndex ?? step,
          modIndex: step,
          version: (current?.version ?? 0) + 1,
        };
        assert.equal(map.set(e), current !== undefined);
        model.set(key, e);
      }
      if (step % 2000 === 0) frozen.push({ version: map.freeze(), expected: _sorted(model) });
      if (step % 500 === 0) {
        assert.equal(map.bytes, _bytes(model.values()), `bytes at ${step}`);
        const e = model.get(key);
        assert.equal(map.bytesOf(key), e === undefined ? 0 : _bytes([e]), `bytesOf at ${step}`);
      }
    }
    const probe = Array.from({ length: 50 }, () => _key(rand, range));
    _check(map, _sorted(model), probe);
    for (const f of frozen) _check(f.version, f.expected, probe);
    // Delete everything: the tree shrinks back to one leaf and stays consistent.
    for (const k of [...model.keys()]) assert.equal(map.delete(k), true);
    _check(map, [], probe);
    assert.equal(map.bytes, 0);
  }
});

Deno.test("a map built from sorted entries reads back, then takes writes", () => {
  const entries: KvEntry[] = [];
  for (let i = 0; i < 5000; i++) {
    entries.push({
      key: `k${i}`,
      value: `value ${i}`,
      createIndex: i + 1,
      modIndex: i + 2,
      version: 3,
    });
  }
  entries.sort((a, b) => compareKeys(a.key, b.key));
  const map = EntryMap.fromSorted(entries);
  _check(map, entries, ["k1", "k4999", "k25", "nope", ""]);
  assert.equal(map.bytes, _bytes(entries));
  const before = map.freeze();
  map.set({ key: "k1", value: "new", createIndex: 2, modIndex: 9000, version: 4 });
  map.delete("k2");
  assert.equal(before.get("k1")?.value, "value 1");
  assert.equal(map.get("k1")?.value, "new");
  assert.equal(map.get("k2"), undefined);
  assert.equal(before.get("k2")?.value, "value 2");
  assert.equal(map.size, 4999);
  assert.equal(map.bytes, _bytes(entries) - "value 1k2value 2".length + "new".length);
});

Deno.test("a builder refuses entries out of key order or repeated", () => {
  const builder = new EntryMapBuilder();
  builder.add("b", "1", 1, 1, 1);
  assert.throws(() => builder.add("a", "2", 1, 1, 1), RangeError);
  assert.throws(() => builder.add("b", "2", 1, 1, 1), RangeError);
  // U+10000 sorts after U+FFFF by code point although its UTF-16 units are lower.
  builder.add("\uffff", "3", 1, 1, 1);
  builder.add("\u{10000}", "4", 1, 1, 1);
  assert.deepEqual([...builder.finish().values()].map((e) => e.value), ["1", "3", "4"]);
});

Deno.test("a frozen leaf copied for a write that shrinks a value keeps room for the old entries", () => {
  const map = new EntryMap();
  const e = (value: string, modIndex: number) => ({
    key: "a",
    value,
    createIndex: 1,
    modIndex,
    version: modIndex,
  });
  map.set(e("x".repeat(500), 1));
  const before = map.freeze();
  map.set(e("", 2));
  assert.deepEqual(map.get("a"), e("", 2));
  assert.deepEqual(before.get("a"), e("x".repeat(500), 1));
  map.set(e("y".repeat(1000), 3));
  map.freeze();
  map.delete("a");
  assert.equal(map.size, 0);
});
