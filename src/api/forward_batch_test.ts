import assert from "node:assert/strict";
import {
  AnswerReader,
  type BatchContext,
  type BatchItem,
  decodeBatch,
  encodeAnswer,
  encodeBatch,
  FORWARD_BATCH_TYPE,
  MAX_BATCH_ITEMS,
  serveBatch,
} from "./forward_batch.ts";

const enc = new TextEncoder();

Deno.test("a batch decodes to its requests: methods, paths, headers, empty and missing bodies", () => {
  const items: BatchItem[] = [
    {
      method: "PUT",
      path: "/v1/data/a%2Fb?cas=0",
      headers: { "content-type": "application/json", "idempotency-key": "k1" },
      body: enc.encode('{"v":"ü"}'),
    },
    { method: "DELETE", path: "/v1/data/c", headers: {}, body: null },
    { method: "POST", path: "/v1/txn", headers: {}, body: new Uint8Array(0) },
  ];
  assert.deepEqual(decodeBatch(encodeBatch(items)), items);
  assert.deepEqual(decodeBatch(new Uint8Array(0)), []);
});

Deno.test("a malformed batch is refused with RangeError", () => {
  const good = encodeBatch([{ method: "PUT", path: "/v1/data/a", headers: {}, body: null }]);
  const meta = (text: string) => {
    const m = enc.encode(text);
    const out = new Uint8Array(8 + m.length);
    new DataView(out.buffer).setUint32(0, 4 + m.length);
    new DataView(out.buffer).setUint32(4, m.length);
    out.set(m, 8);
    return out;
  };
  for (
    const bad of [
      good.subarray(0, good.length - 1), // cut
      good.subarray(0, 5),
      meta("not json"),
      meta('{"m":"PUT","p":"no-slash","h":{},"b":false}'),
      meta('{"m":"PUT","p":"/a","h":{"x":1},"b":false}'),
      meta('{"m":"PUT","p":"/a","h":[],"b":false}'),
      meta('{"m":"PUT","p":"/a","h":{}}'),
      meta("null"),
    ]
  ) {
    assert.throws(() => decodeBatch(bad), RangeError);
  }
  const many = encodeBatch(
    Array.from({ length: MAX_BATCH_ITEMS + 1 }, () => ({
      method: "DELETE",
      path: "/v1/data/a",
      headers: {},
      body: null,
    })),
  );
  assert.throws(() => decodeBatch(many), /at most 256/);
});

Deno.test("answers are read back from any split of their frames", () => {
  const answers = [
    {
      item: 2,
      status: 412,
      headers: { "content-type": "application/json" },
      body: enc.encode("{}"),
    },
    { item: 0, status: 204, headers: {}, body: new Uint8Array(0) },
    { item: 1, status: 200, headers: { "x-raftkv-index": "7" }, body: enc.encode("ok") },
  ];
  const bytes = new Uint8Array(
    answers.map(encodeAnswer).flatMap((frame) => [...frame]),
  );
  for (const step of [1, 3, 7, bytes.length]) {
    const reader = new AnswerReader();
    const got = [];
    for (let at = 0; at < bytes.length; at += step) {
      got.push(...reader.push(bytes.subarray(at, at + step)));
    }
    assert.deepEqual(got, answers);
    assert.equal(reader.pending, false);
  }
});

Deno.test("serveBatch() serves every request at once and streams each answer as it is ready", async () => {
  const gates = [Promise.withResolvers<void>(), Promise.withResolvers<void>()];
  const seen: string[] = [];
  const serveOne = async (item: BatchItem, batch: BatchContext) => {
    const body = item.body === null ? "" : new TextDecoder().decode(item.body);
    seen.push(`${item.method} ${batch.origin}${item.path} ${batch.sender} ${body}`);
    await Promise.resolve();
    if (item.path === "/v1/data/slow") await gates[0]!.promise;
    if (item.path === "/v1/data/boom") throw new Error("boom");
    return new Response(JSON.stringify({ path: item.path }), {
      status: 201,
      headers: { "content-type": "application/json", "x-raftkv-index": "3" },
    });
  };
  const body = encodeBatch([
    { method: "PUT", path: "/v1/data/slow", headers: {}, body: enc.encode("1") },
    { method: "DELETE", path: "/v1/data/fast?cas=2", headers: {}, body: null },
    { method: "PUT", path: "/v1/data/boom", headers: {}, body: enc.encode("3") },
  ]);
  const res = await serveBatch(
    new Request("http://leader:6666/forward/batch", { method: "POST", body }),
    "n1",
    serveOne,
    1 << 20,
  );
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), FORWARD_BATCH_TYPE);
  const reader = new AnswerReader();
  const stream = res.body!.getReader();
  const next = async () => {
    while (true) {
      const { value, done } = await stream.read();
      assert.ok(!done);
      const got = reader.push(value);
      if (got.length > 0) return got;
    }
  };
  // The two that do not wait come first; the slow one does not hold them up.
  const first = [...await next()];
  if (first.length < 2) first.push(...await next());
  assert.deepEqual(first.map((a) => [a.item, a.status]).sort(), [[1, 201], [2, 500]]);
  assert.match(new TextDecoder().decode(first.find((a) => a.item === 2)!.body), /boom/);
  gates[0]!.resolve();
  const [last] = await next();
  assert.deepEqual([last!.item, last!.status, last!.headers["x-raftkv-index"]], [0, 201, "3"]);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(last!.body)), { path: "/v1/data/slow" });
  assert.equal((await stream.read()).done, true);
  assert.deepEqual(seen.sort(), [
    "DELETE http://leader:6666/v1/data/fast?cas=2 n1 ",
    "PUT http://leader:6666/v1/data/boom n1 3",
    "PUT http://leader:6666/v1/data/slow n1 1",
  ]);
});

Deno.test("serveBatch() sends answers that are ready together as one body", async () => {
  const served: string[] = [];
  const serveOne = async (item: BatchItem) => {
    served.push(item.path);
    // Answered together, as the writes of one commit are.
    await Promise.resolve();
    return new Response(item.path, { status: 200 });
  };
  const items = ["/v1/data/a", "/v1/data/b", "/v1/data/c"].map((path) => ({
    method: "PUT",
    path,
    headers: {},
    body: enc.encode("{}"),
  }));
  for (const batch of [items.slice(0, 1), items, []]) {
    const res = await serveBatch(
      new Request("http://leader:6666/forward/batch", { method: "POST", body: encodeBatch(batch) }),
      null,
      serveOne,
    );
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), FORWARD_BATCH_TYPE);
    const reader = res.body!.getReader();
    const chunks: Uint8Array[] = [];
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      if (value.byteLength > 0) chunks.push(value);
    }
    assert.equal(chunks.length, batch.length === 0 ? 0 : 1);
    const answers = chunks.flatMap((c) => new AnswerReader().push(c));
    assert.deepEqual(
      answers.map((a) => [a.item, new TextDecoder().decode(a.body)]).sort(),
      batch.map((it, i) => [i, it.path]),
    );
  }
});

Deno.test("serveBatch() refuses a batch that is not a POST, too large or malformed, serving none of it", async () => {
  const serveOne = () => {
    throw new Error("nothing of a refused batch is served");
  };
  const batch = (method: string, body: BodyInit | null) =>
    new Request("http://leader:6666/forward/batch", { method, body });
  const one = encodeBatch([{ method: "DELETE", path: "/v1/data/a", headers: {}, body: null }]);
  assert.equal((await serveBatch(batch("GET", null), null, serveOne, 100)).status, 405);
  assert.equal((await serveBatch(batch("POST", one), null, serveOne, 10)).status, 413);
  const bad = await serveBatch(batch("POST", one.subarray(1)), null, serveOne, 100);
  assert.equal(bad.status, 400);
  assert.match(await bad.text(), /malformed batch/);
});
