import assert from "node:assert/strict";
import { createLogger, type Logger } from "./logger.ts";

function capture(): { sink: Logger; lines: string[] } {
  const lines: string[] = [];
  const push = (...d: unknown[]) => lines.push(d.map(String).join(" "));
  return { sink: { debug: push, info: push, warn: push, error: push }, lines };
}

Deno.test("the logger drops events below its level and prefixes the rest", () => {
  const { sink, lines } = capture();
  const log = createLogger("node-1", "warn", sink);
  log.debug("d");
  log.info("i");
  log.warn("w", 1);
  log.error("e");
  assert.equal(lines.length, 2);
  assert.match(lines[0]!, /^\d{4}-\d\d-\d\dT.* WARN {2}node-1: w 1$/);
  assert.match(lines[1]!, / ERROR node-1: e$/);
});

Deno.test("the JSON format writes one object a line with the text form's fields", () => {
  const { sink, lines } = capture();
  const log = createLogger("node-2", "info", sink, "json");
  log.debug("d");
  log.info("elected in term", 3);
  log.error(new Error("disk\nbroken"));
  assert.equal(lines.length, 2);
  const first = JSON.parse(lines[0]!);
  assert.deepEqual(Object.keys(first), ["time", "level", "node", "message"]);
  assert.match(first.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.deepEqual({ ...first, time: "" }, {
    time: "",
    level: "info",
    node: "node-2",
    message: "elected in term 3",
  });
  assert.ok(!lines[1]!.includes("\n"), "a JSON line never spans lines");
  const second = JSON.parse(lines[1]!);
  assert.equal(second.level, "error");
  assert.match(second.message, /^Error: disk\nbroken\n {4}at /);
});
