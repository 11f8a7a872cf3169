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
 * A transport logger that reports each kind of warning at most once per `intervalMs`, without
 * stack traces: a dead peer otherwise fills the log with one line per dropped batch.
 */
export function rateLimited(
  log: Logger,
  intervalMs: number,
): { debug(message: string): void; warn(message: string): void } {
  const last = new Map<string, number>();
  return {
    debug: (message: string) => log.debug(message),
    warn: (message: string) => {
      const key = message.slice(0, 48);
      const now = performance.now();
      if (now - (last.get(key) ?? -Infinity) < intervalMs) return;
      // Messages quoting many different values (peer ids sent by a stranger) must not grow the
      // map without bound: forgetting every key only lets one more line of each through.
      if (last.size >= 1024) last.clear();
      last.set(key, now);
      log.warn(message);
    },
  };
}
