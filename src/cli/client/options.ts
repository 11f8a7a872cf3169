/**
 * The command-line client's options: the global ones every subcommand takes (`--endpoints`,
 * `--cacert`, `--token`, `-o`, `--timeout`), the parser that reads a subcommand's command line,
 * the exit codes, and the errors that carry them.
 *
 * @module
 */

import { parseDuration } from "../duration.ts";
import { closestName } from "../flags.ts";

/**
 * The client's exit codes, distinct so that scripts can tell outcomes apart. A command that
 * fails for a reason not listed here exits {@linkcode EXIT.error}.
 */
export const EXIT = {
  /** Done. */
  ok: 0,
  /** The cluster answered with an error (or the outcome is unknown: a timeout, a 5xx). */
  error: 1,
  /** Bad usage: an unknown option, a missing argument, a bad value. */
  usage: 2,
  /** Not found: the key (`get`, `del`), the lease, the member. */
  notFound: 3,
  /** No endpoint could be connected to. */
  unreachable: 4,
  /** The cluster refused the credentials: 401 (missing or unknown token) or 403 (not allowed). */
  unauthorized: 5,
  /** A precondition failed: 409 or 412, or a data directory that already holds a node's data. */
  conflict: 6,
  /** `verify` found a history that is not linearizable. */
  notLinearizable: 7,
} as const;

/** A failure the client reports with a message and an exit code from {@linkcode EXIT}. */
export class ClientError extends Error {
  /** The process exit code. */
  readonly exitCode: number;
  /** Extra fields for the `-o json` form of the error (such as the HTTP status). */
  readonly details: Record<string, unknown>;

  /**
   * Creates the error.
   *
   * @param message What went wrong, printed as is.
   * @param exitCode The exit code, from {@linkcode EXIT}.
   * @param details Extra fields for the JSON form.
   */
  constructor(message: string, exitCode: number, details: Record<string, unknown> = {}) {
    super(message);
    this.name = "ClientError";
    this.exitCode = exitCode;
    this.details = details;
  }
}

/** Creates a {@linkcode ClientError} for bad usage (exit code 2). */
export function usageError(message: string): ClientError {
  return new ClientError(message, EXIT.usage);
}

/** One option of a subcommand, as documented in its `--help`. */
export interface OptionSpec {
  /** The long name, such as `"--endpoints"`. */
  readonly name: string;
  /** A one-letter alias, such as `"-o"`. */
  readonly short?: string;
  /** Placeholder of the value, such as `"<urls>"`, or `null` for a switch. */
  readonly value: string | null;
  /** The environment variable that stands in for the option, if any. */
  readonly env?: string;
  /** The default, in words (empty for switches and required options). */
  readonly default: string;
  /** What the option does. */
  readonly description: string;
}

/** `RAFTKV_ENDPOINTS`: comma-separated endpoints when `--endpoints` is not given. */
export const ENDPOINTS_ENV = "RAFTKV_ENDPOINTS";
/** `RAFTKV_TOKEN`: the bearer token when `--token` is not given. */
export const TOKEN_ENV = "RAFTKV_TOKEN";

/** The default endpoint: the first node of `deno task cluster`. */
export const DEFAULT_ENDPOINT = "http://127.0.0.1:7777";
/** The default of `--timeout`, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 5000;

/** The options every subcommand takes. */
export const GLOBAL_OPTIONS: readonly OptionSpec[] = [
  {
    name: "--endpoints",
    value: "<urls>",
    env: ENDPOINTS_ENV,
    default: DEFAULT_ENDPOINT,
    description: "Comma-separated API URLs (host:port means http://host:port), tried in turn " +
      "when one cannot be connected to",
  },
  {
    name: "--cacert",
    value: "<file>",
    env: "RAFTKV_CACERT",
    default: "the system's trusted CAs",
    description: "PEM file of the CA to trust for https endpoints",
  },
  {
    name: "--token",
    value: "<token>",
    env: TOKEN_ENV,
    default: "none",
    description: "Bearer token sent as Authorization: Bearer <token> (prefer the variable: a " +
      "command line shows in ps)",
  },
  {
    name: "--output",
    short: "-o",
    value: "<format>",
    env: "RAFTKV_OUTPUT",
    default: "table",
    description: '"table" (plain text for people) or "json" (one JSON object on stdout, also ' +
      "for errors)",
  },
  {
    name: "--timeout",
    value: "<duration>",
    env: "RAFTKV_TIMEOUT",
    default: `${DEFAULT_TIMEOUT_MS / 1000}s`,
    description: "How long to wait for an answer, retries on other endpoints included",
  },
  { name: "--help", short: "-h", value: null, default: "", description: "Print help and exit" },
];

/**
 * Every environment variable the client reads. The node does not read them, and does not warn
 * about them either.
 */
export const CLIENT_ENV_VARS: readonly string[] = GLOBAL_OPTIONS.flatMap((o) =>
  o.env === undefined ? [] : [o.env]
);

/** A value found on a command line or in the environment, and where it came from. */
export interface GivenValue {
  /** The text. */
  value: string;
  /** The option as typed (`"-o"`, `"--output"`) or the variable's name. */
  origin: string;
}

/** A subcommand's command line, read by {@linkcode parseCommandLine}. */
export interface CommandLine {
  /** The arguments that are not options, in order. */
  positionals: string[];
  /** The values of value-taking options, by long name; the last one given wins. */
  values: Map<string, GivenValue>;
  /** The switches given, by long name. */
  switches: Set<string>;
}

/**
 * Reads a subcommand's arguments: options anywhere (`--name value`, `--name=value`, `-o value`,
 * `-o=value`), positionals in order, and `--` ending the options (so that a key may start with
 * `-`).
 *
 * @example Usage
 * ```ts
 * import { GLOBAL_OPTIONS, parseCommandLine } from "./options.ts";
 *
 * const line = parseCommandLine(["a", "-o", "json", "--", "-b"], GLOBAL_OPTIONS);
 * console.assert(line.positionals.join(" ") === "a -b");
 * console.assert(line.values.get("--output")?.value === "json");
 * ```
 *
 * @param args The arguments after the subcommand's name.
 * @param specs The options it takes.
 * @returns What was given.
 * @throws {ClientError} Exit code 2 on an unknown option (with a suggestion), a missing value or
 * a value given to a switch.
 */
export function parseCommandLine(
  args: readonly string[],
  specs: readonly OptionSpec[],
): CommandLine {
  const byName = new Map<string, OptionSpec>();
  for (const spec of specs) {
    byName.set(spec.name, spec);
    if (spec.short !== undefined) byName.set(spec.short, spec);
  }
  const line: CommandLine = { positionals: [], values: new Map(), switches: new Set() };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? "";
    if (arg === "--") {
      line.positionals.push(...args.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      line.positionals.push(arg);
      continue;
    }
    const equals = arg.indexOf("=");
    const typed = equals === -1 ? arg : arg.slice(0, equals);
    const spec = byName.get(typed);
    if (spec === undefined) {
      const suggestion = closestName(typed, [...byName.keys()]);
      throw usageError(
        `unknown option ${JSON.stringify(typed)}` +
          (suggestion === undefined ? "" : ` (did you mean ${JSON.stringify(suggestion)}?)`) +
          "; a key or value starting with - goes after --",
      );
    }
    if (spec.value === null) {
      if (equals !== -1) throw usageError(`option ${typed} takes no value`);
      line.switches.add(spec.name);
      continue;
    }
    let value: string | undefined = equals === -1 ? undefined : arg.slice(equals + 1);
    if (value === undefined) {
      value = args[++i];
      if (value === undefined) {
        throw usageError(`option ${typed} needs a value: ${typed} ${spec.value}`);
      }
    }
    line.values.set(spec.name, { value, origin: typed });
  }
  return line;
}

/** The resolved global options. */
export interface GlobalSettings {
  /** Base URLs of the API, without a trailing slash, in the order to try them. */
  endpoints: string[];
  /** The CA file to trust, or null for the system's CAs. */
  cacert: string | null;
  /** The bearer token, or null. */
  token: string | null;
  /** How results are printed. */
  output: "table" | "json";
  /** The answer deadline in milliseconds. */
  timeoutMs: number;
}

/**
 * Resolves the global options: the option, else its environment variable (empty counts as
 * unset), else the default.
 *
 * @param line The command line.
 * @param env Reads an environment variable.
 * @returns The settings.
 * @throws {ClientError} Exit code 2 on a bad endpoint, output format or duration.
 */
export function resolveGlobals(
  line: CommandLine,
  env: (name: string) => string | undefined,
): GlobalSettings {
  const get = (name: string): GivenValue | undefined => {
    const given = line.values.get(name);
    if (given !== undefined) return given;
    const variable = GLOBAL_OPTIONS.find((o) => o.name === name)?.env;
    const value = variable === undefined ? undefined : env(variable);
    return value === undefined || value === "" ? undefined : { value, origin: variable! };
  };
  const endpoints = parseEndpoints(get("--endpoints") ?? { value: DEFAULT_ENDPOINT, origin: "" });
  const output = get("--output");
  if (output !== undefined && output.value !== "table" && output.value !== "json") {
    throw usageError(
      `invalid value for ${output.origin}: ${
        JSON.stringify(output.value)
      } is not "table" or "json"`,
    );
  }
  const timeout = get("--timeout");
  let timeoutMs = DEFAULT_TIMEOUT_MS;
  if (timeout !== undefined) timeoutMs = parseDurationOption(timeout);
  return {
    endpoints,
    cacert: get("--cacert")?.value ?? null,
    token: get("--token")?.value ?? null,
    output: output?.value === "json" ? "json" : "table",
    timeoutMs,
  };
}

/**
 * Parses a positive duration option (`"5s"`, `"1500"`).
 *
 * @param given The value and where it came from.
 * @returns Milliseconds, at least 1.
 * @throws {ClientError} Exit code 2 when it is not a positive duration.
 */
export function parseDurationOption(given: GivenValue): number {
  let ms: number;
  try {
    ms = parseDuration(given.value);
  } catch (error) {
    throw usageError(`invalid value for ${given.origin}: ${(error as Error).message}`);
  }
  if (ms === 0) {
    throw usageError(
      `invalid value for ${given.origin}: ${JSON.stringify(given.value)} is not positive`,
    );
  }
  return ms;
}

/**
 * Parses a positive integer option.
 *
 * @param given The value and where it came from.
 * @param max The largest value accepted.
 * @returns The number.
 * @throws {ClientError} Exit code 2 when it is not an integer from 1 to `max`.
 */
export function parseCountOption(given: GivenValue, max: number): number {
  const n = /^\d+$/.test(given.value) ? Number(given.value) : NaN;
  if (!(n >= 1 && n <= max)) {
    throw usageError(
      `invalid value for ${given.origin}: ${JSON.stringify(given.value)} is not a whole number ` +
        `from 1 to ${max}`,
    );
  }
  return n;
}

/**
 * Parses a comma-separated endpoint list: `http(s)://host:port` URLs, or `host:port` (read as
 * `http://host:port`), without paths.
 *
 * @param given The list and where it came from.
 * @returns The base URLs, without a trailing slash, duplicates dropped.
 * @throws {ClientError} Exit code 2 on an empty list or an entry that is not such a URL.
 */
export function parseEndpoints(given: GivenValue): string[] {
  const out: string[] = [];
  for (const part of given.value.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const text = /^[a-z][a-z0-9+.-]*:\/\//i.test(part) ? part : `http://${part}`;
    let url: URL | null = null;
    try {
      url = new URL(text);
    } catch {
      // Reported below.
    }
    if (
      url === null || (url.protocol !== "http:" && url.protocol !== "https:") ||
      url.pathname !== "/" || url.search !== "" || url.hash !== "" || url.username !== ""
    ) {
      throw usageError(
        `invalid endpoint ${JSON.stringify(part)} in ${given.origin || "--endpoints"}: expected ` +
          "http://host:port, https://host:port or host:port",
      );
    }
    const base = url.origin;
    if (!out.includes(base)) out.push(base);
  }
  if (out.length === 0) {
    throw usageError(`${given.origin || "--endpoints"} lists no endpoint`);
  }
  return out;
}

/**
 * Formats options for a `--help` text: one line each (wrapped), with the default and variable.
 *
 * @param specs The options.
 * @returns The lines.
 */
export function formatOptions(specs: readonly OptionSpec[]): string[] {
  const heads = specs.map((s) =>
    `  ${s.short === undefined ? "" : `${s.short}, `}${s.name}${
      s.value === null ? "" : ` ${s.value}`
    }`
  );
  const column = Math.max(...heads.map((h) => h.length)) + 3;
  const lines: string[] = [];
  specs.forEach((spec, i) => {
    const extra = [
      spec.default === "" ? "" : `default: ${spec.default}`,
      spec.env === undefined ? "" : `env: ${spec.env}`,
    ].filter((t) => t !== "").join("; ");
    const text = spec.description + (extra === "" ? "" : ` (${extra})`);
    wrap(text, 100 - column).forEach((part, j) => {
      lines.push((j === 0 ? heads[i]! : "").padEnd(column) + part);
    });
  });
  return lines;
}

/**
 * Wraps `text` at word boundaries to lines of at most `width` characters.
 *
 * @param text The text.
 * @param width The width.
 * @returns The lines.
 */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  if (line !== "") lines.push(line);
  return lines;
}
