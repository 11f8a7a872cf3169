/**
 * The error the command-line layer throws for any bad flag, environment variable or cluster file.
 *
 * @module
 */

/**
 * A configuration problem the operator must fix: a bad or unknown flag, a bad environment
 * variable, or an invalid cluster file. The message is a single sentence meant to be printed
 * as-is; the program exits with status 2.
 *
 * @example Usage
 * ```ts
 * import { ConfigError } from "./errors.ts";
 *
 * const error = new ConfigError('Unknown flag "--api-prot" (did you mean "--api-port"?)');
 * console.assert(error.name === "ConfigError");
 * ```
 */
export class ConfigError extends Error {
  /**
   * Constructs a new instance.
   *
   * @param message The problem, naming the flag, variable or file and quoting the bad value.
   * @param options The underlying error, if any, as `cause`.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConfigError";
  }
}
