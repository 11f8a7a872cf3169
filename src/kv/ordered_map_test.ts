import assert from "node:assert/strict";
import { compareKeys, OrderedMap, type OrderedMapVersion } from "./ordered_map.ts";

interface Item {
  key: string;
  n: number;
}

/** A small seeded generator (mulberry32). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function utf8Order(a: string, b: string): number {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}

Deno.test("keys sort by code point, which is the order of their UTF-8 bytes", () => {
  const keys = [
    "",
    "a",
    "b",
    "ab",
    "\uffff",
    "\ue000",
    "\u{10000}",
    "\u{10ffff}",
    "é",
    "z\u{1f511}",
  ];
  for (const a of keys) {
    for (const b of keys) {
      assert.equal(Math.sign(compareKeys(a, b)), Math.sign(utf8Order(a, b)), `${a} vs ${b}`);
    }
  }
  // JavaScript's own order differs here: a surrogate pair sorts before U+FFFF in UTF-16.
  assert.ok("\u{10000}" < "\uffff");
  assert.ok(compareKeys("\u{10000}", "\uffff") > 0);
});

function check(version: OrderedMapVersion<Item>, expected: Map<string, number>, where: string) {
  const sorted = [...expected.keys()].sort(compareKeys);
  assert.equal(version.size, sorted.length, `${where}: size`);
  assert.deepEqual([...version.values()].map((v) => v.key), sorted, `${where}: order`);
  for (const k of sorted) assert.equal(version.get(k)?.n, expected.get(k), `${where}: ${k}`);
}

Deno.test("random sets and deletes agree with a sorted reference, and frozen versions never change", () => {
  for (const seed of [1, 2, 3]) {
    const random = rng(seed);
    const map = new OrderedMap<Item>();
    const ref = new Map<string, number>();
    const frozen: { version: OrderedMapVersion<Item>; expected: Map<string, number> }[] = [];
    const keySpace = seed === 1 ? 50 : 3000;
    for (let step = 0; step < 20_000; step++) {
      const k = `k${Math.floor(random() * keySpace)}`;
      if (random() < 0.45) {
        const had = ref.get(k);
        assert.equal(map.delete(k)?.n, had);
        ref.delete(k);
      } else {
        const had = ref.get(k);
        assert.equal(map.set({ key: k, n: step })?.n, had);
        ref.set(k, step);
      }
      if (step % 2500 === 0) frozen.push({ version: map.freeze(), expected: new Map(ref) });
    }
    check({ size: map.size, get: (k) => map.get(k), values: (s) => map.values(s) }, ref, "live");
    frozen.forEach((f, i) => check(f.version, f.expected, `seed ${seed} version ${i}`));
    // Deleting everything leaves an empty map, and the versions still stand.
    for (const k of [...ref.keys()]) map.delete(k);
    assert.equal(map.size, 0);
    assert.deepEqual([...map.values()], []);
    frozen.forEach((f, i) => check(f.version, f.expected, `seed ${seed} version ${i} after`));
  }
});

Deno.test("values(start) begins at the first key at or after start", () => {
  const map = new OrderedMap<Item>();
  for (let i = 0; i < 1000; i += 2) map.set({ key: String(i).padStart(4, "0"), n: i });
  const from = (s: string, n: number) => [...map.values(s)].slice(0, n).map((v) => v.key);
  assert.deepEqual(from("0100", 2), ["0100", "0102"]);
  assert.deepEqual(from("0101", 2), ["0102", "0104"]);
  assert.deepEqual(from("", 1), ["0000"]);
  assert.deepEqual(from("0998", 5), ["0998"]);
  assert.deepEqual(from("0999", 5), []);
  assert.deepEqual(from("1", 5), []);
});

Deno.test("fromSorted builds the same map as inserts, and refuses unsorted input", () => {
  for (const n of [0, 1, 47, 48, 49, 2304, 2305, 10_000]) {
    const items = Array.from(
      { length: n },
      (_, i) => ({ key: `k${String(i).padStart(6, "0")}`, n: i }),
    );
    const map = OrderedMap.fromSorted(items);
    const ref = new Map(items.map((v) => [v.key, v.n]));
    check(map.freeze(), ref, `n=${n}`);
    // It stays a valid tree under changes.
    for (let i = 0; i < n; i += 3) {
      map.delete(items[i]!.key);
      ref.delete(items[i]!.key);
    }
    for (let i = 0; i < n; i += 7) {
      map.set({ key: `x${i}`, n: i });
      ref.set(`x${i}`, i);
    }
    check(map.freeze(), ref, `n=${n} after changes`);
  }
  assert.throws(
    () => OrderedMap.fromSorted([{ key: "b", n: 1 }, { key: "a", n: 2 }]),
    /not in increasing key order at 1: "a"/,
  );
  assert.throws(() => OrderedMap.fromSorted([{ key: "a", n: 1 }, { key: "a", n: 2 }]), RangeError);
});

Deno.test("a frozen version keeps the values and size it had while the live map changes", () => {
  const map = new OrderedMap<Item>();
  for (let i = 0; i < 5000; i++) map.set({ key: `k${i}`, n: i });
  const version = map.freeze();
  map.set({ key: "k1", n: -1 });
  map.delete("k2");
  assert.equal(version.get("k1")?.n, 1);
  assert.equal(version.get("k2")?.n, 2);
  assert.equal(map.get("k1")?.n, -1);
  assert.equal(map.get("k2"), undefined);
  assert.equal(version.size, 5000);
  assert.equal(map.size, 4999);
});
