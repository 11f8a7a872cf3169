/**
 * `raftkv watch`: prints the changes of a key or a prefix as they are committed, from
 * `GET /v1/watch`, and carries on across the endpoints when a node goes away.
 *
 * @module
 */

import { readSse } from "../../util/sse.ts";
import type { Command, CommandContext } from "./command.ts";
import { answerError, NoAnswerError, readAnswer } from "./http.ts";
import { ClientError, EXIT, usageError } from "./options.ts";

/** A change, as the API sends it. */
interface _Event {
  index: number;
  type: string;
  k: string;
  v: string | null;
  mod_index: number;
}

/** `raftkv watch KEY | --prefix P`. */
export const WATCH: Command = {
  name: "watch",
  args: "[KEY]",
  summary: "print the changes of a key or a prefix as they happen",
  description: "Prints each change of KEY (or, with --prefix, of every key under P) as it is " +
    "committed: one line per change, INDEX TYPE KEY VALUE, tab-separated (TYPE is put, delete " +
    "or expire; a KEY or VALUE holding a tab or a line break is printed as a JSON string; " +
    '-o json: the API\'s {"index","type","k","v","mod_index"}, one per line). When ' +
    "the node it reads from goes away (or cuts it off), it goes on from the next endpoint " +
    "where it left off, seeing every change once. Runs until interrupted, or until --count " +
    "changes were printed. A --from older than the history nodes keep exits 1 with the oldest " +
    "index still available.",
  options: [
    {
      name: "--prefix",
      value: "<prefix>",
      default: "",
      description: "watch every key that starts with this instead of one KEY",
    },
    {
      name: "--from",
      value: "<index>",
      default: "the next change",
      description: "start with the changes at this log index (which may be in the past)",
    },
    {
      name: "--count",
      value: "<n>",
      default: "no limit",
      description: "exit 0 after printing this many changes",
    },
  ],
  arity: [0, 1],
  async run(ctx) {
    const prefix = ctx.line.values.get("--prefix")?.value;
    const key = ctx.args[0];
    if ((prefix === undefined) === (key === undefined)) {
      throw usageError("give either KEY or --prefix P (not both)");
    }
    if (key === "") throw usageError("the key must not be empty");
    const from = _intOption(ctx, "--from");
    const count = _intOption(ctx, "--count");
    const stop = new AbortController();
    const onSigint = () => stop.abort();
    Deno.addSignalListener("SIGINT", onSigint);
    try {
      return await watch(ctx, {
        filter: key !== undefined ? { key } : { prefix: prefix! },
        from,
        count,
        signal: stop.signal,
      });
    } finally {
      Deno.removeSignalListener("SIGINT", onSigint);
    }
  },
};

/** A key or value as one cell of a line: JSON-quoted when it holds a tab or a line break. */
function _cell(text: string): string {
  return /[\t\n\r]/.test(text) ? JSON.stringify(text) : text;
}

/** A positive integer option (log indexes start at 1; a count of 0 would print nothing). */
function _intOption(ctx: CommandContext, name: string): number | null {
  const option = ctx.line.values.get(name);
  if (option === undefined) return null;
  if (!/^[1-9]\d{0,14}$/.test(option.value)) {
    throw usageError(
      `invalid value for ${name}: ${JSON.stringify(option.value)} is not a positive integer`,
    );
  }
  return Number(option.value);
}

/**
 * Follows the watch, reconnecting on the next endpoint when a stream ends. Each reconnect sends
 * the id of the last change printed as `Last-Event-ID`, as `EventSource` does: the node goes on
 * after it, inside one entry's changes when the stream broke between them (`N:j`).
 *
 * @returns The exit code.
 */
async function watch(
  ctx: CommandContext,
  options: {
    filter: { key: string } | { prefix: string };
    from: number | null;
    count: number | null;
    signal: AbortSignal;
  },
): Promise<number> {
  const client = await ctx.client();
  const filter = "key" in options.filter
    ? `key=${encodeURIComponent(options.filter.key)}`
    : `prefix=${encodeURIComponent(options.filter.prefix)}`;
  let from = options.from;
  /** The id of the last change printed: where a reconnect goes on (it wins over `from`). */
  let lastId: string | null = null;
  let printed = 0;
  let endpoint = 0;
  let quietFailures = 0;
  while (!options.signal.aborted) {
    const path = `/v1/watch?${filter}${lastId !== null || from === null ? "" : `&from=${from}`}`;
    const headers = lastId === null ? {} : { "last-event-id": lastId };
    let response: Response;
    let answeredBy: string;
    try {
      // The signal also ends the stream once it is open (cancelling the body would not: the
      // reader below holds it locked, and an interrupted watch went on waiting for changes).
      ({ response, endpoint: answeredBy } = await client.stream(path, {
        first: endpoint,
        headers,
        signal: options.signal,
      }));
    } catch (error) {
      if (options.signal.aborted) break;
      if (error instanceof NoAnswerError && error.kind === "unreachable") throw error;
      if (++quietFailures > client.endpoints.length * 3) throw error;
      endpoint++;
      continue;
    }
    if (response.status !== 200) {
      throw answerError(await readAnswer(response, answeredBy), `watch ${filter}`);
    }
    if (from === null) {
      // Started with what comes next: a reconnect goes on after the index this stream started at.
      from = Number(response.headers.get("x-raftkv-index") ?? "0") + 1;
    }
    try {
      for await (const message of readSse(response.body!)) {
        if (message.event === "error") {
          ctx.io.err(`raftkv watch: ${answeredBy}: ${_reason(message.data)}; reconnecting`);
          break;
        }
        const e = JSON.parse(message.data) as _Event;
        quietFailures = 0;
        lastId = message.id ?? String(e.index);
        ctx.print(e, `${e.index}\t${e.type}\t${_cell(e.k)}\t${_cell(e.v ?? "")}`);
        if (options.count !== null && ++printed >= options.count) return EXIT.ok;
      }
    } catch {
      // The connection broke (or the watch was interrupted): go on elsewhere.
    }
    endpoint++;
  }
  if (options.count !== null && printed < options.count) {
    throw new ClientError(`interrupted after ${printed} of ${options.count} changes`, EXIT.error);
  }
  return EXIT.ok;
}

function _reason(data: string): string {
  try {
    const body = JSON.parse(data) as { error?: unknown };
    if (typeof body.error === "string") return body.error;
  } catch {
    // Not JSON.
  }
  return data;
}
