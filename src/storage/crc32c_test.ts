import assert from "node:assert/strict";
import { crc32c, crc32cRange } from "./crc32c.ts";

const _ascii = (text: string): Uint8Array => new TextEncoder().encode(text);

Deno.test("crc32c() gives the standard check value for 123456789", () => {
  assert.equal(crc32c(_ascii("123456789")), 0xe3069283);
});

Deno.test("crc32c() matches the RFC 3720 test vectors", () => {
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa);
  assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e);
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c);
});

Deno.test("crc32c() of no bytes is zero", () => {
  assert.equal(crc32c(new Uint8Array(0)), 0);
});

Deno.test("crc32c() agrees with a bit-at-a-time computation at every length", () => {
  const data = Uint8Array.from({ length: 300 }, (_, i) => (i * 151 + 7) & 0xff);
  for (let length = 0; length <= data.length; length++) {
    assert.equal(
      crc32c(data.subarray(0, length)),
      _slowCrc32c(data.subarray(0, length)),
      `${length}`,
    );
  }
});

Deno.test("crc32cRange() covers only the range and can continue an earlier CRC", () => {
  const data = _ascii("--123456789--");
  assert.equal(crc32cRange(data, 2, 11), 0xe3069283);
  const first = crc32cRange(data, 2, 6);
  assert.equal(crc32cRange(data, 6, 11, first), 0xe3069283);
});

function _slowCrc32c(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}
