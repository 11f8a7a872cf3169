import assert from "node:assert/strict";
import { searchAwaySeeds } from "./away_seeds.ts";

Deno.test("the AWAY seed search keeps a seed that fails without the members queries and passes with them, and skips the rest", async () => {
  // 85 is not one; 86 is the guard test's removed-unaware seed.
  const found: number[] = [];
  const seeds = await searchAwaySeeds(85, 2, 1, (seed) => found.push(seed));
  assert.deepEqual(seeds, [[86, "removed-unaware"]]);
  assert.deepEqual(found, [86]);
});
