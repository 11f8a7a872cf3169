/**
 * Checks of numeric options, shared by the modules that take them: each returns the value (or
 * its default) and throws a {@linkcode RangeError} that names the option and quotes the value.
 *
 * @module
 */

/**
 * `value`, or `fallback` when it is `undefined`, checked to be a whole number of at least 1.
 *
 * @example Usage
 * ```ts
 * import { positiveInt } from "./options.ts";
 *
 * positiveInt("rpcTimeoutMs", undefined, 2000); // 2000
 * positiveInt("rpcTimeoutMs", 500, 2000); // 500
 * ```
 *
 * @param name The option's name, for the error message.
 * @param value The value given, if any.
 * @param fallback The default, used as is when `value` is `undefined`.
 * @returns `value`, or `fallback`.
 * @throws {RangeError} If `value` is not a safe integer >= 1.
 */
export function positiveInt(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`Option "${name}" must be a positive integer, got "${value}"`);
  }
  return value;
}

/**
 * `value`, or `fallback` when it is `undefined`, checked to be a whole number of at least 0.
 *
 * @example Usage
 * ```ts
 * import { nonNegativeInt } from "./options.ts";
 *
 * nonNegativeInt("retryBackoffMs", 0, 50); // 0
 * ```
 *
 * @param name The option's name, for the error message.
 * @param value The value given, if any.
 * @param fallback The default, used as is when `value` is `undefined`.
 * @returns `value`, or `fallback`.
 * @throws {RangeError} If `value` is not a safe integer >= 0.
 */
export function nonNegativeInt(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Option "${name}" must be a non-negative integer, got "${value}"`);
  }
  return value;
}
