import assert from "node:assert/strict";
import { concatBytes, readBodyWithin } from "./body.ts";

function streamed(parts: string[]): Request {
  const enc = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const p of parts) controller.enqueue(enc.encode(p));
      controller.close();
    },
  });
  return new Request("http://peer.test/x", { method: "POST", body });
}

Deno.test("readBodyWithin reads a body up to its limit, sized or streamed, and refuses a larger one", async () => {
  const dec = new TextDecoder();
  const sized = new Request("http://peer.test/x", { method: "POST", body: "hello" });
  assert.equal(dec.decode((await readBodyWithin(sized, 5))!), "hello");
  const tooBig = new Request("http://peer.test/x", { method: "POST", body: "hello!" });
  assert.equal(await readBodyWithin(tooBig, 5), null);
  assert.equal(dec.decode((await readBodyWithin(streamed(["ab", "cd"]), 4))!), "abcd");
  assert.equal(await readBodyWithin(streamed(["ab", "cd", "e"]), 4), null);
  assert.equal((await readBodyWithin(new Request("http://peer.test/x"), 4))!.byteLength, 0);
});

Deno.test("concatBytes joins chunks in order, empty ones included, into a new array", () => {
  const a = new Uint8Array([1, 2]);
  const out = concatBytes([a, new Uint8Array(0), new Uint8Array([3])]);
  assert.deepEqual([...out], [1, 2, 3]);
  assert.notEqual(out.buffer, a.buffer);
  assert.equal(concatBytes([]).byteLength, 0);
});
