/**
 * What a client subcommand is: its name, help and options, and the context it runs in. A new
 * subcommand is one more {@linkcode Command} in the table of `client.ts`.
 *
 * @module
 */

import { ApiClient } from "./http.ts";
import {
  ClientError,
  type CommandLine,
  EXIT,
  formatOptions,
  GLOBAL_OPTIONS,
  type GlobalSettings,
  type OptionSpec,
  usageError,
  wrap,
} from "./options.ts";
import type { ClientIo } from "./output.ts";

/** A subcommand of the client. */
export interface Command {
  /** Its name as typed: `"get"`, `"snapshot save"`. */
  readonly name: string;
  /** Its arguments, for the usage line: `"KEY [VALUE]"`. */
  readonly args: string;
  /** One line for the list of commands. */
  readonly summary: string;
  /** What it does, in full, for its `--help`. */
  readonly description: string;
  /** Its own options (the global ones come on top). */
  readonly options: readonly OptionSpec[];
  /** How many positional arguments it takes: `[min, max]`. */
  readonly arity: readonly [number, number];
  /** Runs it; returns the exit code. */
  run(ctx: CommandContext): Promise<number>;
}

/** What a running subcommand gets. */
export class CommandContext {
  /** Where to write, and the environment. */
  readonly io: ClientIo;
  /** The global options. */
  readonly globals: GlobalSettings;
  /** Its command line. */
  readonly line: CommandLine;
  #client: ApiClient | undefined;

  /**
   * Creates the context.
   *
   * @param io Where to write.
   * @param globals The global options.
   * @param line The command line.
   */
  constructor(io: ClientIo, globals: GlobalSettings, line: CommandLine) {
    this.io = io;
    this.globals = globals;
    this.line = line;
  }

  /** Whether `-o json` is on. */
  get json(): boolean {
    return this.globals.output === "json";
  }

  /** The positional arguments. */
  get args(): string[] {
    return this.line.positionals;
  }

  /**
   * The client for the endpoints, made on first use (reading `--cacert`).
   *
   * @returns The client; closed by {@linkcode CommandContext.close}.
   * @throws {ClientError} Exit code 2 when the CA file cannot be read or holds no certificate.
   */
  async client(): Promise<ApiClient> {
    if (this.#client !== undefined) return this.#client;
    let caCert: string | null = null;
    const path = this.globals.cacert;
    if (path !== null) {
      try {
        caCert = await Deno.readTextFile(path);
      } catch (error) {
        throw usageError(
          `cannot read the CA file ${JSON.stringify(path)} (--cacert or RAFTKV_CACERT): ${
            (error as Error).message
          }`,
        );
      }
      if (!caCert.includes("-----BEGIN CERTIFICATE-----")) {
        throw usageError(
          `the CA file ${
            JSON.stringify(path)
          } (--cacert or RAFTKV_CACERT) holds no PEM certificate`,
        );
      }
    }
    this.#client = new ApiClient({
      endpoints: this.globals.endpoints,
      caCert,
      token: this.globals.token,
      timeoutMs: this.globals.timeoutMs,
    });
    return this.#client;
  }

  /** Prints a result: `json` as one JSON line with `-o json`, else `text` (if not null). */
  print(json: unknown, text: string | null): void {
    if (this.json) this.io.out(JSON.stringify(json));
    else if (text !== null) this.io.out(text);
  }

  /** Closes the client, if one was made. */
  close(): void {
    this.#client?.close();
  }
}

/** The exit codes, for every `--help`. */
export const EXIT_CODES_HELP: string = `Exit codes: ${EXIT.ok} ok; ${EXIT.error} error from ` +
  `the cluster, or unknown outcome (timeout, 5xx); ${EXIT.usage} bad usage; ${EXIT.notFound} not ` +
  `found (a key, a lease, a member); ${EXIT.unreachable} no endpoint reachable; ${EXIT.unauthorized} unauthorised ` +
  `(401/403); ${EXIT.conflict} conflict or precondition failed (409/412, a data directory in use); ` +
  `${EXIT.notLinearizable} not linearizable (verify).`;

/**
 * The `--help` text of a subcommand: usage, description, its options, the global options and
 * the exit codes.
 *
 * @param command The subcommand.
 * @returns The text.
 */
export function commandHelp(command: Command): string {
  const lines = [
    `Usage: raftkv ${command.name} [options]${command.args === "" ? "" : ` ${command.args}`}`,
    "",
    ...command.description.split("\n").flatMap((p) => p === "" ? [""] : wrap(p, 100)),
  ];
  if (command.options.length > 0) lines.push("", "Options:", ...formatOptions(command.options));
  lines.push(
    "",
    "Global options:",
    ...formatOptions(GLOBAL_OPTIONS),
    "",
    ...wrap(EXIT_CODES_HELP, 100),
  );
  return lines.join("\n");
}

/**
 * Checks the number of positional arguments.
 *
 * @param command The subcommand.
 * @param args Its positional arguments.
 * @throws {ClientError} Exit code 2 with the usage line when there are too few or too many.
 */
export function checkArity(command: Command, args: readonly string[]): void {
  const [min, max] = command.arity;
  if (args.length >= min && args.length <= max) return;
  const problem = args.length < min
    ? "missing arguments"
    : `unexpected argument ${JSON.stringify(args[max])}`;
  throw new ClientError(
    `${problem}; usage: raftkv ${command.name} [options] ${command.args} (see --help)`,
    EXIT.usage,
  );
}
