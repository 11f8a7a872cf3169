/**
 * Parses the durations accepted by timing flags: a plain integer of milliseconds (`"150"`) or
 * one or more numbers with a unit (`"150ms"`, `"1.5s"`, `"2m"`, `"1h"`, `"1m30s"`).
 *
 * @module
 */

/** The largest duration accepted, in milliseconds: the largest delay `setTimeout` honours. */
export const MAX_DURATION_MS = 2_147_483_647;

const _UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const _PLAIN_RE = /^\d+$/;
const _WHOLE_RE = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$/;
const _PART_RE = /(\d+)(?:\.(\d+))?(ms|s|m|h)/g;

/**
 * Parses a duration into whole milliseconds.
 *
 * @example Usage
 * ```ts
 * import { parseDuration } from "./duration.ts";
 *
 * console.assert(parseDuration("150") === 150);
 * console.assert(parseDuration("1.5s") === 1500);
 * console.assert(parseDuration("1m30s") === 90_000);
 * ```
 *
 * @param text A plain integer of milliseconds, or numbers each followed by `ms`, `s`, `m` or `h`.
 * @returns The duration in milliseconds (possibly 0).
 * @throws {SyntaxError} If `text` is not in one of those forms.
 * @throws {RangeError} If it is not a whole number of milliseconds or exceeds
 * {@linkcode MAX_DURATION_MS}.
 */
export function parseDuration(text: string): number {
  let ms: number;
  if (_PLAIN_RE.test(text)) {
    ms = Number(text);
  } else if (_WHOLE_RE.test(text)) {
    ms = 0;
    for (const [, whole = "", fraction = "", unit = ""] of text.matchAll(_PART_RE)) {
      const unitMs = _UNIT_MS[unit] ?? 1;
      // Scale in integers so that "1.1s" is exactly 1100, not 1100.0000000000002.
      const scale = 10 ** fraction.length;
      const scaled = Number(whole + fraction) * unitMs;
      if (scaled % scale !== 0) {
        throw new RangeError(`${JSON.stringify(text)} is not a whole number of milliseconds`);
      }
      ms += scaled / scale;
    }
  } else {
    throw new SyntaxError(
      `${
        JSON.stringify(text)
      } is not a duration: expected milliseconds ("150") or a number with a unit ("150ms", "1.5s", "2m", "1h")`,
    );
  }
  if (!Number.isSafeInteger(ms) || ms > MAX_DURATION_MS) {
    throw new RangeError(
      `${JSON.stringify(text)} is too long: the limit is ${MAX_DURATION_MS}ms (about 24.8 days)`,
    );
  }
  return ms;
}
