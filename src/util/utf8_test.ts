import assert from "node:assert/strict";
import { decodeUtf8, utf8Length } from "./utf8.ts";

const encoder = new TextEncoder();

function encodedLength(text: string): number {
  return encoder.encode(text).byteLength;
}

Deno.test("utf8Length() counts 1, 2, 3 and 4 bytes at the edges of each UTF-8 length", () => {
  const cases: [string, number][] = [
    ["", 0],
    ["\u0000", 1],
    ["\u007f", 1],
    ["\u0080", 2],
    ["\u07ff", 2],
    ["\u0800", 3],
    ["\ud7ff", 3],
    ["\ue000", 3],
    ["\uffff", 3],
    ["\ud800\udc00", 4], // U+10000
    ["\udbff\udfff", 4], // U+10FFFF
    ["a😀é€", 1 + 4 + 2 + 3],
  ];
  for (const [text, bytes] of cases) {
    assert.equal(utf8Length(text), bytes, JSON.stringify(text));
    assert.equal(encodedLength(text), bytes, JSON.stringify(text));
  }
});

Deno.test("utf8Length() counts a lone surrogate as the 3 bytes of U+FFFD, as TextEncoder does", () => {
  const cases: [string, number][] = [
    ["\ud800", 3], // a high surrogate at the end
    ["\udc00", 3], // a low surrogate alone
    ["\ud800a", 3 + 1], // a high surrogate before a non-surrogate: the next unit still counts
    ["\ud800\ud800\udc00", 3 + 4], // a lone high surrogate, then a pair
    ["\udc00\ud800", 3 + 3], // a pair in the wrong order is two lone surrogates
    ["a\udfff", 1 + 3],
  ];
  for (const [text, bytes] of cases) {
    assert.equal(encodedLength(text), bytes, `TextEncoder on ${JSON.stringify(text)}`);
    assert.equal(utf8Length(text), bytes, JSON.stringify(text));
  }
});

Deno.test("utf8Length() agrees with TextEncoder on every pair of boundary code units", () => {
  const units = [
    0x00,
    0x41,
    0x7f,
    0x80,
    0x7ff,
    0x800,
    0xd7ff,
    0xd800,
    0xdbff,
    0xdc00,
    0xdfff,
    0xe000,
    0xfffd,
    0xffff,
  ];
  let checked = 0;
  for (const a of units) {
    for (const b of units) {
      for (const c of [null, ...units]) {
        const text = String.fromCharCode(a, b) + (c === null ? "" : String.fromCharCode(c));
        assert.equal(utf8Length(text), encodedLength(text), JSON.stringify(text));
        checked++;
      }
    }
  }
  assert.equal(checked, units.length * units.length * (units.length + 1));
});

Deno.test("utf8Length() agrees with TextEncoder on random strings of random code units", () => {
  let state = 0x9e3779b9; // a fixed seed: a failure reproduces
  const next = (n: number) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
  // Most units from the surrogate range and the edges, so that lone and paired ones are common.
  const ranges: [number, number][] = [
    [0, 0x80],
    [0x80, 0x800],
    [0x800, 0xd800],
    [
      0xd800,
      0xe000,
    ],
    [0xd800, 0xe000],
    [0xe000, 0x10000],
  ];
  for (let i = 0; i < 2000; i++) {
    const units: number[] = [];
    const length = next(12);
    for (let j = 0; j < length; j++) {
      const [lo, hi] = ranges[next(ranges.length)]!;
      units.push(lo + next(hi - lo));
    }
    const text = String.fromCharCode(...units);
    assert.equal(utf8Length(text), encodedLength(text), JSON.stringify(text));
  }
});

Deno.test("decodeUtf8 decodes ASCII runs, longer runs and non-ASCII as TextDecoder does, and rejects invalid UTF-8", () => {
  const decoder = new TextDecoder();
  const texts = [
    "",
    "k",
    "a/b=c",
    "x".repeat(1024),
    "y".repeat(1025),
    "é",
    "a😀b",
    "z".repeat(2000) + "é",
  ];
  for (const text of texts) {
    const bytes = new TextEncoder().encode(`<${text}>`);
    assert.equal(decodeUtf8(bytes, 1, bytes.length - 1), decoder.decode(bytes.subarray(1, -1)));
  }
  assert.throws(() => decodeUtf8(new Uint8Array([0x61, 0xff]), 0, 2), TypeError);
  assert.throws(() => decodeUtf8(new Uint8Array([0xc3]), 0, 1), TypeError);
});

Deno.test("decodeUtf8 keeps a leading U+FEFF: in a key or a value it is data, not a byte order mark", () => {
  const texts = [
    "\ufeff",
    "\ufeffk",
    "\ufeff\ufeff",
    "\ufeffé",
    "\ufeff" + "x".repeat(2000),
    "a\ufeff",
  ];
  for (const text of texts) {
    const bytes = new TextEncoder().encode(`<${text}>`);
    assert.equal(decodeUtf8(bytes, 1, bytes.length - 1), text, JSON.stringify(text));
  }
});
