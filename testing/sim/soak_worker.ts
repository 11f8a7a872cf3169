/**
 * A worker for `scripts/soak.ts --jobs N`: runs the seeds it is sent, one at a time, and posts
 * back one summary per seed (the script runs {@linkcode runSoakSeed} itself with one job).
 *
 * @module
 */

import { runSimulation, SimulationFailure, type SimulationOptions } from "./simulator.ts";

/** The summary of one seed. */
export type SoakReply =
  | { seed: number; ok: true; ms: number; profile: string; stats: Record<string, number | string> }
  | { seed: number; ok: false; ms: number; check: string; message: string; replay: string };

/** Runs one seed and summarizes it as a {@linkcode SoakReply}. */
export async function runSoakSeed(options: SimulationOptions): Promise<SoakReply> {
  const [seed, start] = [options.seed, performance.now()];
  try {
    const { profile, stats } = await runSimulation(options);
    return { seed, ok: true, ms: performance.now() - start, profile, stats: { ...stats } };
  } catch (e) {
    const f = e instanceof SimulationFailure ? e : null;
    const message = f?.message ?? `seed ${seed}: the simulator threw: ${(e as Error)?.stack ?? e}`;
    const [check, replay] = [f?.check ?? "simulator", f?.replay ?? ""];
    return { seed, ok: false, ms: performance.now() - start, check, message, replay };
  }
}

if ("WorkerGlobalScope" in globalThis) {
  const scope = self as unknown as Worker; // the worker's side: a message in, a message out
  scope.onmessage = async (e) => scope.postMessage(await runSoakSeed(e.data.options));
}
