import assert from "node:assert/strict";
import { searchAwaySeeds } from "./away_seeds.ts";

Deno.test("the AWAY seed search keeps a seed that fails without the members queries and passes with them, and skips the rest", async () => {
  // 43 is not one; 44 is the guard test's removed-unaware seed.
  const found: number[] = [];
  const seeds = await searchAwaySeeds(43, 2, 1, (seed) => found.push(seed));
  assert.deepEqual(seeds, [[44, "removed-unaware"]]);
  assert.deepEqual(found, [44]);
});
