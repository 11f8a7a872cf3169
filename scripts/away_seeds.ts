/**
 * Finds seeds for the members queries' guard test in `tests/sim/simulation_test.ts`: seeds of
 * {@linkcode AWAY_FAULTS} whose run, with the members queries left unanswered, fails the
 * `removed-unaware` or `stale-member` check, and passes with them answered. Any change to what
 * the simulated clients send or to how a step runs moves every seed's run, and the pinned seeds
 * may stop failing; this prints new ones to pin.
 *
 * ```sh
 * deno task seeds:away [--start 1] [--seeds 300] [--want 2]
 * ```
 *
 * Prints each seed found as `<seed> <check>`; stops once `--want` seeds of each check are found
 * or the seeds run out. Exits 1 if a check has none.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { intOption, UsageError } from "../testing/args.ts";
import {
  AWAY_FAULTS,
  type CheckName,
  runSimulation,
  SimulationFailure,
} from "../testing/sim/simulator.ts";

const _USAGE = "usage: deno task seeds:away [--start S] [--seeds N] [--want K]";

/** The checks a seed fails without the members queries (and passes with them) to be kept. */
export const AWAY_CHECKS: readonly CheckName[] = ["removed-unaware", "stale-member"];

/** The guard test's run of `seed` (three nodes, 20 s), the members queries answered or not. */
async function _run(seed: number, answered: boolean): Promise<CheckName | null> {
  try {
    await runSimulation({
      seed,
      nodes: 3,
      durationMs: 20_000,
      faults: answered ? AWAY_FAULTS : { ...AWAY_FAULTS, membersAnswerRate: 0 },
    });
    return null;
  } catch (e) {
    if (!(e instanceof SimulationFailure)) throw e;
    return e.check;
  }
}

/**
 * Searches seeds `start` to `start + count - 1` in order and calls `found` for each that fails one
 * of {@linkcode AWAY_CHECKS} without the members queries and passes with them; stops once `want`
 * seeds of each check are found.
 *
 * @returns The seeds found, with their check.
 */
export async function searchAwaySeeds(
  start: number,
  count: number,
  want: number,
  found: (seed: number, check: CheckName) => void = () => {},
): Promise<[number, CheckName][]> {
  const seeds: [number, CheckName][] = [];
  const kept = new Map(AWAY_CHECKS.map((c) => [c, 0]));
  const enough = () => [...kept.values()].every((n) => n >= want);
  for (let seed = start; seed < start + count && !enough(); seed++) {
    const check = await _run(seed, false);
    if (check === null || (kept.get(check) ?? want) >= want) continue;
    if (await _run(seed, true) !== null) continue;
    kept.set(check, kept.get(check)! + 1);
    seeds.push([seed, check]);
    found(seed, check);
  }
  return seeds;
}

async function _main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      start: { type: "string" },
      seeds: { type: "string" },
      want: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(_USAGE);
    return 0;
  }
  const start = intOption("start", values.start, 1);
  const count = intOption("seeds", values.seeds, 300, 1);
  const want = intOption("want", values.want, 2, 1);
  const seeds = await searchAwaySeeds(start, count, want, (seed, check) => {
    console.log(`${seed} ${check}`);
  });
  const missing = AWAY_CHECKS.filter((c) => !seeds.some(([, k]) => k === c));
  if (missing.length > 0) {
    console.error(`no seed found for ${missing.join(", ")} in ${start}..${start + count - 1}`);
    return 1;
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await _main());
  } catch (e) {
    if (!(e instanceof UsageError) && !(e instanceof TypeError)) throw e;
    console.error(`seeds:away: ${e.message}\n${_USAGE}`);
    Deno.exit(2);
  }
}
