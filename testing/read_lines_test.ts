import assert from "node:assert/strict";
import { readLines } from "./read_lines.ts";

Deno.test("readLines() splits a byte stream into lines across chunks", async () => {
  const encoder = new TextEncoder();
  const chunks = ["first li", "ne\r\nsecond\n\nthi", "rd \u00e9", "\u00e8 no newline"];
  const stream = ReadableStream.from(chunks.map((chunk) => encoder.encode(chunk)));
  const lines = await Array.fromAsync(readLines(stream));
  assert.deepEqual(lines, ["first line", "second", "", "third \u00e9\u00e8 no newline"]);
  assert.deepEqual(await Array.fromAsync(readLines(ReadableStream.from<Uint8Array>([]))), []);
});
