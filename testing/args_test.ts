import assert from "node:assert/strict";
import { intOption, UsageError } from "./args.ts";

Deno.test("intOption: a whole number in range, the fallback when absent, a usage error otherwise", () => {
  assert.equal(intOption("runs", "3", 1, 1, 100), 3);
  assert.equal(intOption("runs", "100", 1, 1, 100), 100);
  assert.equal(intOption("seed", undefined, 42), 42);
  assert.equal(intOption("seed", "0", 42), 0);
  assert.equal(intOption("seed", "9007199254740991", 42), Number.MAX_SAFE_INTEGER);
  for (const bad of ["", "0", "101", "2.5", "1e2", "-1", " 3", "three", "0x10"]) {
    assert.throws(
      () => intOption("runs", bad, 1, 1, 100),
      (e: unknown) =>
        e instanceof UsageError && e instanceof RangeError &&
        e.message === `--runs must be a whole number from 1 to 100, got ${JSON.stringify(bad)}`,
      bad,
    );
  }
  assert.throws(
    () => intOption("seed", "9007199254740992", 0),
    /--seed must be a whole number 0 or more/,
  );
});
