import assert from "node:assert/strict";
import { compareKeys } from "./key_order.ts";

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
