/**
 * A worker for `scripts/soak.ts --jobs N`: runs the seeds it is sent, one at a time, and posts
 * back one summary per seed.
 *
 * @module
 */

import { runSimulation, SimulationFailure, type SimulationOptions } from "./simulator.ts";

/** A request: run these options. */
export interface SoakRequest {
  /** The options of the run. */
  options: SimulationOptions;
}

/** The answer for one seed. */
export type SoakReply =
  | { seed: number; ok: true; ms: number; profile: string; stats: Record<string, number | string> }
  | { seed: number; ok: false; ms: number; check: string; message: string; replay: string };

/** Runs one seed and summarizes it as a {@linkcode SoakReply}. */
export async function runSoakSeed(options: SimulationOptions): Promise<SoakReply> {
  const start = performance.now();
  try {
    const r = await runSimulation(options);
    return {
      seed: options.seed,
      ok: true,
      ms: performance.now() - start,
      profile: r.profile,
      stats: { ...r.stats },
    };
  } catch (e) {
    const ms = performance.now() - start;
    if (e instanceof SimulationFailure) {
      return {
        seed: options.seed,
        ok: false,
        ms,
        check: e.check,
        message: e.message,
        replay: e.replay,
      };
    }
    const message = `seed ${options.seed}: the simulator itself threw: ${(e as Error)?.stack ?? e}`;
    return { seed: options.seed, ok: false, ms, check: "simulator", message, replay: "" };
  }
}

/** The worker side: present only when this module runs as a Worker. */
interface _WorkerScope {
  onmessage: ((e: MessageEvent<SoakRequest>) => void) | null;
  postMessage(reply: SoakReply): void;
}

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  const scope = globalThis as unknown as _WorkerScope;
  scope.onmessage = (e) => {
    runSoakSeed(e.data.options).then((reply) => scope.postMessage(reply));
  };
}
