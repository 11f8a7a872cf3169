/**
 * A small levelled logger writing one line per event: time, level, node id and message, as text
 * or as one JSON object a line (`--log-format json`, for log shippers).
 *
 * @module
 */

/** Log levels, least to most severe. */
export type Level = "debug" | "info" | "warn" | "error";

const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** The logging methods the program uses (a subset of `Console`). */
export interface Logger {
  /** Detail for tracing a problem; shown only at level `debug`. */
  debug(...data: unknown[]): void;
  /** A normal event worth a line (elections, snapshots, start and stop). */
  info(...data: unknown[]): void;
  /** Something went wrong but the node carries on (a refused peer, a full disk). */
  warn(...data: unknown[]): void;
  /** The node cannot carry on, or an operation failed for a reason nobody expected. */
  error(...data: unknown[]): void;
}

/** How log lines are written; see {@linkcode createLogger}. */
export type LogFormat = "text" | "json";

/**
 * Creates a logger for node `id` that drops events below `level`. Errors and warnings go to
 * stderr, the rest to stdout.
 *
 * `format` `"text"` (the default) writes `<time> <LEVEL> <id>: <message>`. `"json"` writes the
 * same fields as one JSON object a line, `{"time","level","node","message"}` (the level in lower
 * case); values that are not strings are rendered into the message as the text form shows them
 * (an error with its stack), so no line spans several lines.
 *
 * @example Usage
 * ```ts
 * import { createLogger } from "./logger.ts";
 *
 * const lines: string[] = [];
 * const sink = { debug: () => {}, info: (line: string) => lines.push(line), warn() {}, error() {} };
 * createLogger("node-1", "info", sink, "json").info("elected", 3);
 * console.assert(JSON.parse(lines[0]!).message === "elected 3");
 * ```
 */
export function createLogger(
  id: string,
  level: Level,
  sink: Logger = console,
  format: LogFormat = "text",
): Logger {
  const min = ORDER[level];
  const make = (l: Level, write: (...d: unknown[]) => void) => (...data: unknown[]) => {
    if (ORDER[l] < min) return;
    const time = new Date().toISOString();
    if (format === "json") {
      const message = data.map((d) => typeof d === "string" ? d : Deno.inspect(d)).join(" ");
      write(JSON.stringify({ time, level: l, node: id, message }));
    } else {
      write(`${time} ${l.toUpperCase().padEnd(5)} ${id}:`, ...data);
    }
  };
  return {
    debug: make("debug", sink.debug.bind(sink)),
    info: make("info", sink.info.bind(sink)),
    warn: make("warn", sink.warn.bind(sink)),
    error: make("error", sink.error.bind(sink)),
  };
}

/**
 * A logger for warnings that others can cause at will (a dead peer, a stranger's requests): each
 * kind is logged at most once per `intervalMs`, at most `burst` lines of any kinds per
 * `intervalMs` in all, and each line is cut to `maxLineChars`; without stack traces. What is left
 * out is counted, and said with the next line logged. A kind is the message's first 48
 * characters unless the caller names it: messages that quote what a client sent (a path) must,
 * or every distinct path would be a kind of its own.
 *
 * @example Usage
 * ```ts
 * import { createLogger, rateLimited } from "./logger.ts";
 *
 * const lines: string[] = [];
 * const sink = { ...console, warn: (...d: unknown[]) => lines.push(d.join(" ")) };
 * const log = rateLimited(createLogger("n1", "info", sink), 5_000);
 * for (let i = 0; i < 100; i++) log.warn(`refused GET /v1/data/k${i}: 401`, "api 401");
 * console.assert(lines.length === 1);
 * ```
 *
 * @param log Where the lines go.
 * @param intervalMs The period of both limits.
 * @param options `burst` (default 20), `maxLineChars` (default 2000), `now` (the clock, in ms).
 * @returns The logger: `warn` takes the message and, optionally, its kind.
 */
export function rateLimited(
  log: Logger,
  intervalMs: number,
  options: { burst?: number; maxLineChars?: number; now?: () => number } = {},
): { debug(message: string): void; warn(message: string, kind?: string): void } {
  const burst = options.burst ?? 20;
  const maxChars = options.maxLineChars ?? 2000;
  const now = options.now ?? (() => performance.now());
  const last = new Map<string, number>();
  let windowStart = -Infinity;
  let logged = 0;
  let left = 0;
  return {
    debug: (message: string) => log.debug(_cut(message, maxChars)),
    warn: (message: string, kind = message.slice(0, 48)) => {
      const t = now();
      if (t - windowStart >= intervalMs) [windowStart, logged] = [t, 0];
      if (t - (last.get(kind) ?? -Infinity) < intervalMs || logged >= burst) {
        left++;
        return;
      }
      // Kinds quoting many different values (peer ids sent by a stranger) must not grow the map
      // without bound: forgetting every kind only lets one more line of each through.
      if (last.size >= 1024) last.clear();
      last.set(kind, t);
      logged++;
      const more = left === 0 ? "" : ` (and ${left} warning(s) like those before not logged)`;
      left = 0;
      log.warn(_cut(message, maxChars) + more);
    },
  };
}

function _cut(message: string, max: number): string {
  return message.length <= max ? message : `${message.slice(0, max)}... (${message.length} chars)`;
}
