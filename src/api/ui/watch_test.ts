// The watch page's stream parsing and reconnect pacing, run in Deno on the very file the browser
// loads.
import assert from "node:assert/strict";
import { MAX_RETRY_MS, retryDelay, SseParser } from "./watch.js";

Deno.test("the parser dispatches messages as their blank line arrives, across chunk boundaries", () => {
  const p = new SseParser();
  assert.deepEqual(p.push(": watching\n\nid: 4\nda"), []);
  assert.deepEqual(p.push('ta: {"index":4}\n'), []);
  assert.deepEqual(p.push("\nevent: error\ndata: a\ndata:b\r"), [
    { event: "message", data: '{"index":4}', id: "4" },
  ]);
  // "\r\n" split between chunks is one line end, not two.
  assert.deepEqual(p.push("\n\r\n"), [{ event: "error", data: "a\nb", id: "4" }]);
  assert.deepEqual(p.push(": heartbeat\r\r"), []);
  assert.deepEqual(p.push("data\n\n"), [{ event: "message", data: "", id: "4" }]);
});

Deno.test("the parser skips comments and blocks without data, and resets the event name", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("event: error\n\ndata: x\n\n: c\nevent: e\nretry: 5\n\n"), [
    { event: "message", data: "x", id: null },
  ]);
});

Deno.test("reconnects wait 0.5 s, doubling, up to the cap", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 10].map(retryDelay), [500, 1000, 2000, 4000, 5000, 5000]);
  assert.equal(MAX_RETRY_MS, 5000);
});
