/**
 * Where the client writes, and how: plain text and tables for people, one JSON object for
 * scripts (`-o json`).
 *
 * @module
 */

import { ClientError, EXIT } from "./options.ts";

/** The client's outside world, injectable for tests. */
export interface ClientIo {
  /** Writes a line (or lines) to stdout. */
  out(text: string): void;
  /** Writes a line (or lines) to stderr. */
  err(text: string): void;
  /** Reads an environment variable. */
  env(name: string): string | undefined;
  /**
   * Reads all of stdin as text, exactly: a U+FEFF that begins it is kept. Throws a usage
   * {@linkcode ClientError} when it is not UTF-8 (a value is text; changed bytes must not be
   * written).
   */
  stdin(): Promise<string>;
}

/** The real world: `console`, `Deno.env`, `Deno.stdin`. */
export const REAL_IO: ClientIo = {
  out: (text) => console.log(text),
  err: (text) => console.error(text),
  env: (name) => Deno.env.get(name),
  // Not `Response.text()`: it drops a leading U+FEFF, which in a value is data, and replaces
  // bytes that are not UTF-8 with U+FFFD, which would write another value than the one piped.
  stdin: async () => {
    const bytes = await new Response(Deno.stdin.readable).arrayBuffer();
    try {
      return new TextDecoder("utf-8", { ignoreBOM: true, fatal: true }).decode(bytes);
    } catch {
      throw new ClientError(
        "stdin is not UTF-8 text: values are text (encode binary data first, in base64 for " +
          "example); nothing was sent",
        EXIT.usage,
      );
    }
  },
};

/**
 * Formats rows as a table: a header line, then one line per row, columns padded to their widest
 * cell and two spaces apart.
 *
 * @example Usage
 * ```ts
 * import { formatTable } from "./output.ts";
 *
 * console.log(formatTable(["ID", "ROLE"], [["node-1", "leader"]]));
 * // ID      ROLE
 * // node-1  leader
 * ```
 *
 * @param header The column names.
 * @param rows The cells.
 * @returns The lines joined by newlines, without trailing spaces.
 */
export function formatTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)).join("  ").trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

/**
 * Reports a failure: the message on stderr, or with `-o json` one object
 * `{"error", "exit_code", ...details}` on stdout.
 *
 * @param io Where to write.
 * @param json Whether `-o json` is on.
 * @param command The subcommand, for the message prefix.
 * @param error What failed.
 * @returns The exit code.
 */
export function reportError(io: ClientIo, json: boolean, command: string, error: unknown): number {
  const failure = error instanceof ClientError
    ? error
    : new ClientError(error instanceof Error ? error.message : String(error), EXIT.error);
  if (json) {
    io.out(
      JSON.stringify({ ...failure.details, error: failure.message, exit_code: failure.exitCode }),
    );
  } else {
    io.err(`raftkv ${command}: ${failure.message}`);
  }
  return failure.exitCode;
}
