import assert from "node:assert/strict";
import { readSse } from "./sse.ts";

function streamOf(...parts: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  return ReadableStream.from(parts.map((p) => enc.encode(p)));
}

Deno.test("events are read across chunk boundaries, comments aside", async () => {
  const comments: string[] = [];
  const got = [];
  for await (
    const m of readSse(
      streamOf(": hi\n\nid: 3\nda", 'ta: {"a":1}\n\nevent: error\r\ndata: x\r\ndata: y\r\n\r\n'),
      (c) => comments.push(c),
    )
  ) got.push(m);
  assert.deepEqual(got, [
    { event: "message", data: '{"a":1}', id: "3" },
    { event: "error", data: "x\ny", id: null },
  ]);
  assert.deepEqual(comments, ["hi"]);
});
