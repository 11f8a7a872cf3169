/**
 * A small reader and runner for data-driven test files: scripts of commands, each followed by the
 * output it must produce, in the style of etcd-io/raft's `testdata/*.txt` files.
 *
 * The format:
 *
 * ```
 * # A comment explains the next step.
 * command arg key=value
 * ----
 * the expected output, one or more lines
 * ```
 *
 * A case is a command line, a line holding exactly `----`, and the expected output: every line up
 * to the next blank line or the end of the file. Output therefore never contains a blank line (a
 * handler returning nothing is shown as `ok`). Lines starting with `#` and blank lines between
 * cases are kept verbatim, so a file can be rewritten with fresh outputs without losing its
 * comments.
 *
 * @module
 */

import { relative } from "node:path";

/** One command of a data-driven file. */
export interface Command {
  /** The file the command came from (for messages). */
  path: string;
  /** The 1-based line of the command. */
  line: number;
  /** The command name: the first word. */
  name: string;
  /** The remaining words, split on whitespace. */
  args: string[];
  /** The command line's text after the name, trimmed (for commands taking free text). */
  rest: string;
}

/** One case: a command and the output written after it. */
interface _Case {
  command: Command;
  expected: string;
}

/** A file as a sequence of verbatim text and cases, so it can be written back. */
type _Part = { kind: "text"; text: string } | { kind: "case"; case: _Case };

/** Thrown for a file that is not in the data-driven format. */
export class DataDrivenSyntaxError extends Error {
  /** Creates the error; the message names the file and line. */
  constructor(path: string, line: number, message: string) {
    super(`${path}:${line}: ${message}`);
    this.name = "DataDrivenSyntaxError";
  }
}

/** The line separating a command from its output. */
const _SEPARATOR = "----";

/** Splits a data-driven file into verbatim text and cases. */
function _parse(path: string, text: string): _Part[] {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  const parts: _Part[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.trim() === "" || line.startsWith("#")) {
      parts.push({ kind: "text", text: line });
      i++;
      continue;
    }
    const lineNo = i + 1;
    if (lines[i + 1] !== _SEPARATOR) {
      throw new DataDrivenSyntaxError(
        path,
        lineNo + 1,
        `expected "${_SEPARATOR}" after the command ${JSON.stringify(line)}`,
      );
    }
    const words = line.trim().split(/\s+/);
    const name = words[0]!;
    const command: Command = {
      path,
      line: lineNo,
      name,
      args: words.slice(1),
      rest: line.trim().slice(name.length).trim(),
    };
    i += 2;
    const output: string[] = [];
    while (i < lines.length && lines[i]!.trim() !== "") output.push(lines[i++]!);
    parts.push({ kind: "case", case: { command, expected: output.join("\n") } });
  }
  return parts;
}

/** Runs one command and returns its output (any text; empty means `ok`). */
export type Handler = (command: Command) => string;

/** The outcome of running a data-driven file. */
export interface DataDrivenResult {
  /** The file as it was read. */
  expected: string;
  /** The file with every output replaced by what the handler produced. */
  actual: string;
}

/**
 * Runs every case of `text` through `handle`, in order, and returns the file rewritten with the
 * actual outputs. Empty output becomes `ok`; trailing spaces are trimmed and blank lines inside
 * an output are dropped (they would end the case).
 *
 * @param path The file's path, for messages.
 * @param text The file's content.
 * @param handle Runs one command.
 * @throws {DataDrivenSyntaxError} If the file is not in the format.
 */
export function runDataDriven(path: string, text: string, handle: Handler): DataDrivenResult {
  const out: string[] = [];
  for (const part of _parse(path, text)) {
    if (part.kind === "text") {
      out.push(part.text);
      continue;
    }
    const { command } = part.case;
    const raw = handle(command);
    const lines = raw.split("\n").map((l) => l.trimEnd()).filter((l) => l !== "");
    out.push(
      `${command.name}${command.rest ? ` ${command.rest}` : ""}`,
      _SEPARATOR,
      ...(lines.length > 0 ? lines : ["ok"]),
    );
  }
  return { expected: text, actual: `${out.join("\n")}\n` };
}

/**
 * A line diff of `expected` against `actual` (longest common subsequence), printed with `-` for
 * lines only in `expected`, `+` for lines only in `actual`, and up to `context` unchanged lines
 * around each change, each hunk headed by its line numbers. Empty when the texts are equal.
 */
export function diffLines(expected: string, actual: string, context = 3): string {
  const a = expected.split("\n");
  const b = actual.split("\n");
  type Op = { sign: " " | "-" | "+"; text: string; aLine: number; bLine: number };
  const ops: Op[] = [];
  // Lines shared at both ends need no table; only the middle does.
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (
    tail < a.length - head && tail < b.length - head &&
    a[a.length - 1 - tail] === b[b.length - 1 - tail]
  ) tail++;
  for (let n = 0; n < head; n++) ops.push({ sign: " ", text: a[n]!, aLine: n + 1, bLine: n + 1 });
  const am = a.slice(head, a.length - tail);
  const bm = b.slice(head, b.length - tail);
  // lcs[i][j]: the length of the longest common subsequence of am[i..] and bm[j..].
  const lcs: number[][] = Array.from({ length: am.length + 1 }, () => new Array(bm.length + 1));
  for (let i = am.length; i >= 0; i--) {
    for (let j = bm.length; j >= 0; j--) {
      lcs[i]![j] = i === am.length || j === bm.length
        ? 0
        : am[i] === bm[j]
        ? lcs[i + 1]![j + 1]! + 1
        : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
    }
  }
  let i = 0;
  let j = 0;
  while (i < am.length || j < bm.length) {
    const aLine = head + i + 1;
    const bLine = head + j + 1;
    if (i < am.length && j < bm.length && am[i] === bm[j]) {
      ops.push({ sign: " ", text: am[i]!, aLine, bLine });
      i++;
      j++;
    } else if (i < am.length && (j === bm.length || lcs[i + 1]![j]! >= lcs[i]![j + 1]!)) {
      // Removed lines first, then the added ones that replace them.
      ops.push({ sign: "-", text: am[i]!, aLine, bLine });
      i++;
    } else {
      ops.push({ sign: "+", text: bm[j]!, aLine, bLine });
      j++;
    }
  }
  for (let n = tail; n > 0; n--) {
    ops.push({
      sign: " ",
      text: a[a.length - n]!,
      aLine: a.length - n + 1,
      bLine: b.length - n + 1,
    });
  }
  const changed = ops.map((op, k) => op.sign !== " " ? k : -1).filter((k) => k >= 0);
  if (changed.length === 0) return "";
  const out: string[] = [];
  let k = 0;
  while (k < changed.length) {
    const start = Math.max(0, changed[k]! - context);
    let end = changed[k]! + context;
    while (k + 1 < changed.length && changed[k + 1]! - context <= end + 1) {
      k++;
      end = changed[k]! + context;
    }
    end = Math.min(ops.length - 1, end);
    out.push(`@@ expected line ${ops[start]!.aLine}, actual line ${ops[start]!.bLine} @@`);
    for (let n = start; n <= end; n++) out.push(`${ops[n]!.sign} ${ops[n]!.text}`);
    k++;
  }
  return out.join("\n");
}

/** Options for {@linkcode checkDataDrivenFile}. */
export interface CheckOptions {
  /**
   * Write the actual outputs into the file instead of comparing.
   *
   * @default {false} unless the environment variable `REWRITE` is set to a non-empty value
   * other than `0`.
   */
  rewrite?: boolean;
}

/** Whether the environment asks for golden files to be rewritten (`REWRITE=1`). */
export function rewriteRequested(): boolean {
  const value = Deno.env.get("REWRITE");
  return value !== undefined && value !== "" && value !== "0";
}

/**
 * Runs the data-driven file at `path` and compares its outputs with the ones written in it. With
 * rewriting on, the file is replaced with the actual outputs instead.
 *
 * @param path The file.
 * @param handle Runs one command; a fresh handler (fresh state) per file.
 * @param options Whether to rewrite.
 * @throws {Error} If an output differs; the message holds a readable diff.
 */
export async function checkDataDrivenFile(
  path: string,
  handle: Handler,
  options: CheckOptions = {},
): Promise<void> {
  const text = await Deno.readTextFile(path);
  const { actual } = runDataDriven(path, text, handle);
  if (options.rewrite ?? rewriteRequested()) {
    if (actual !== text) await Deno.writeTextFile(path, actual);
    return;
  }
  const diff = diffLines(text, actual);
  if (diff !== "") {
    throw new Error(
      `${relative(Deno.cwd(), path)} does not match what the commands produce now ` +
        `(- expected, + actual; rerun with REWRITE=1 to accept the new output):\n${diff}`,
    );
  }
}
