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
