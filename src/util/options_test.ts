import assert from "node:assert/strict";
import { nonNegativeInt, positiveInt } from "./options.ts";

Deno.test("positiveInt() returns the value, or the default when none is given", () => {
  assert.equal(positiveInt("n", undefined, 7), 7);
  assert.equal(positiveInt("n", 1, 7), 1);
  assert.equal(positiveInt("n", Number.MAX_SAFE_INTEGER, 7), Number.MAX_SAFE_INTEGER);
});

Deno.test("positiveInt() rejects zero, negatives, fractions and non-numbers, naming the option", () => {
  for (const bad of [0, -1, 1.5, NaN, Infinity, 2 ** 53]) {
    assert.throws(
      () => positiveInt("maxThings", bad, 7),
      {
        name: "RangeError",
        message: `Option "maxThings" must be a positive integer, got "${bad}"`,
      },
    );
  }
  assert.throws(() => positiveInt("maxThings", "5" as unknown as number, 7), RangeError);
});

Deno.test("nonNegativeInt() returns the value, zero included, or the default when none is given", () => {
  assert.equal(nonNegativeInt("n", undefined, 7), 7);
  assert.equal(nonNegativeInt("n", 0, 7), 0);
  assert.equal(nonNegativeInt("n", 12, 7), 12);
});

Deno.test("nonNegativeInt() rejects negatives, fractions and non-numbers, naming the option", () => {
  for (const bad of [-1, 0.5, NaN, -Infinity]) {
    assert.throws(
      () => nonNegativeInt("retries", bad, 7),
      {
        name: "RangeError",
        message: `Option "retries" must be a non-negative integer, got "${bad}"`,
      },
    );
  }
  assert.throws(() => nonNegativeInt("retries", null as unknown as number, 7), RangeError);
});
