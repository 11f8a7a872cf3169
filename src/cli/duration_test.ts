import assert from "node:assert/strict";
import { MAX_DURATION_MS, parseDuration } from "./duration.ts";

Deno.test("parseDuration() reads a plain integer as milliseconds", () => {
  assert.equal(parseDuration("150"), 150);
  assert.equal(parseDuration("0"), 0);
});

Deno.test("parseDuration() reads the units ms, s, m and h", () => {
  assert.equal(parseDuration("150ms"), 150);
  assert.equal(parseDuration("1s"), 1000);
  assert.equal(parseDuration("2m"), 120_000);
  assert.equal(parseDuration("1h"), 3_600_000);
});

Deno.test("parseDuration() reads decimal fractions exactly", () => {
  assert.equal(parseDuration("1.5s"), 1500);
  assert.equal(parseDuration("1.1s"), 1100);
  assert.equal(parseDuration("0.001s"), 1);
  assert.equal(parseDuration("0.5m"), 30_000);
});

Deno.test("parseDuration() adds up compound durations", () => {
  assert.equal(parseDuration("1m30s"), 90_000);
  assert.equal(parseDuration("1s500ms"), 1500);
});

Deno.test("parseDuration() rejects text that is not a duration", () => {
  for (
    const text of ["", "abc", "1.5", "-1", "+1", "1e3", "10 ms", "1sec", "5d", "1us", "ms", "1.s"]
  ) {
    assert.throws(() => parseDuration(text), SyntaxError, text);
  }
});

Deno.test("parseDuration() names the bad text and the accepted forms", () => {
  assert.throws(() => parseDuration("abc"), {
    name: "SyntaxError",
    message: /^"abc" is not a duration: expected milliseconds \("150"\) or a number with a unit/,
  });
});

Deno.test("parseDuration() rejects fractions of a millisecond", () => {
  assert.throws(() => parseDuration("1.5ms"), {
    name: "RangeError",
    message: '"1.5ms" is not a whole number of milliseconds',
  });
  assert.throws(() => parseDuration("0.0001s"), RangeError);
});

Deno.test("parseDuration() rejects durations too long for setTimeout", () => {
  assert.equal(parseDuration(String(MAX_DURATION_MS)), MAX_DURATION_MS);
  assert.throws(() => parseDuration(String(MAX_DURATION_MS + 1)), {
    name: "RangeError",
    message: /too long/,
  });
  assert.throws(() => parseDuration("1000h"), RangeError);
  assert.throws(() => parseDuration("9".repeat(400)), RangeError);
});
