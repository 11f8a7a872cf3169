import assert from "node:assert/strict";
import { createLogger, type Logger, rateLimited } from "./logger.ts";

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

Deno.test("rateLimited() logs each kind once per interval, at most a burst of lines in all, cut short, and says what it left out", () => {
  const lines: string[] = [];
  const sink = { ...console, warn: (...d: unknown[]) => lines.push(d.join(" ")) };
  let t = 0;
  const log = rateLimited(createLogger("n1", "info", sink), 1000, {
    burst: 3,
    maxLineChars: 40,
    now: () => t,
  });
  // A flood of refusals, each quoting another path, named as one kind: one line.
  for (let i = 0; i < 300; i++) log.warn(`GET /v1/data/k${i} -> 401`, "api refused 401");
  assert.equal(lines.length, 1);
  // Kinds left to the message's start: distinct ones, but no more than the burst in all.
  for (let i = 0; i < 10; i++) log.warn(`peer ${i} ${"x".repeat(100)}`);
  assert.equal(lines.length, 3);
  assert.match(lines[1]!, /peer 0 x+\.\.\. \(107 chars\) \(and 299 warning\(s\) like those/);
  assert.match(lines[2]!, /peer 1 x+\.\.\. \(107 chars\)$/);
  assert.ok(lines.every((l) => !l.includes("x".repeat(41))), "a line was not cut");
  // The next interval: the kind is logged again, with the count of lines left out.
  t = 1000;
  log.warn("GET /v1/data/again -> 401", "api refused 401");
  assert.equal(lines.length, 4);
  assert.match(
    lines[3]!,
    /GET \/v1\/data\/again -> 401 \(and 8 warning\(s\) like those before not logged\)$/,
  );
  log.warn("GET /v1/data/again2 -> 401", "api refused 401");
  assert.equal(lines.length, 4);
});
