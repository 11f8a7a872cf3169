/**
 * A small seeded pseudo-random generator, so the core and the simulator are reproducible.
 *
 * @module
 */

/**
 * Returns a function producing numbers in [0, 1) from `seed` (mulberry32). The same seed always
 * yields the same sequence.
 *
 * @example
 * ```ts
 * const r = seededRandom(42);
 * const a = r(); // 0 <= a < 1, and the same on every run
 * ```
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Returns an integer in [lo, hi) drawn from `random`. */
export function randomInt(random: () => number, lo: number, hi: number): number {
  return lo + Math.floor(random() * (hi - lo));
}
