/**
 * What the scripts under `scripts/` share to read their command lines: the error that says the
 * command line is wrong, and integer options.
 *
 * @module
 */

/** A mistake on a script's command line; the message says what is wrong. */
export class UsageError extends RangeError {
  /** Creates the error with its message. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * The value of the integer option `--name`, or `fallback` when it was not given.
 *
 * @example Usage
 * ```ts
 * import { intOption } from "./args.ts";
 *
 * const runs = intOption("runs", "3", 1, 1, 100); // 3
 * const seed = intOption("seed", undefined, 42); // 42
 * ```
 *
 * @param name The option's name without its dashes.
 * @param text The value as given, or `undefined`.
 * @param fallback The value when none was given.
 * @param min The smallest value allowed. Default 0.
 * @param max The largest value allowed. Default `Number.MAX_SAFE_INTEGER`.
 * @returns The value.
 * @throws {UsageError} Unless `text` is a whole number from `min` to `max`.
 */
export function intOption(
  name: string,
  text: string | undefined,
  fallback: number,
  min = 0,
  max: number = Number.MAX_SAFE_INTEGER,
): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `${min} or more` : `from ${min} to ${max}`;
    throw new UsageError(`--${name} must be a whole number ${range}, got ${JSON.stringify(text)}`);
  }
  return n;
}
