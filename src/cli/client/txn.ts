/**
 * `raftkv txn [FILE]`: runs a transaction, given as the JSON body of `POST /v1/txn`, and prints
 * which branch ran and its results.
 *
 * @module
 */

import type { Command } from "./command.ts";
import { answerError } from "./http.ts";
import { ClientError, EXIT, usageError } from "./options.ts";

/** One result of a transaction's branch, as the API gives it. */
interface _Result {
  op?: unknown;
  k?: unknown;
  v?: unknown;
  found?: unknown;
  deleted?: unknown;
  mod_index?: unknown;
  lease?: unknown;
}

/** One line per result: what the operation did. */
function _resultLine(r: _Result): string {
  const key = JSON.stringify(r.k);
  switch (r.op) {
    case "put":
      return `put ${key} (mod_index ${r.mod_index}${
        r.lease === undefined ? "" : `, lease ${r.lease}`
      })`;
    case "delete":
      return `delete ${key} (${r.deleted === true ? "deleted" : "not found"})`;
    case "get":
      return r.found === true ? `get ${key} = ${JSON.stringify(r.v)}` : `get ${key} (not found)`;
    default:
      return JSON.stringify(r);
  }
}

/** `raftkv txn [FILE]`. */
export const TXN: Command = {
  name: "txn",
  args: "[FILE]",
  summary: "run a transaction: compares, then the success or failure operations",
  description: "Runs the transaction in FILE (without FILE, or with -, read from stdin): the " +
    'JSON body of POST /v1/txn, {"compare":[...],"success":[...],"failure":[...]} (see the ' +
    "README's Transactions). It is one log entry: the compares and the branch they pick are " +
    "applied atomically. Prints which branch ran and the log index, then one line per " +
    'operation of that branch (-o json: the API\'s {"succeeded","index","results"}). Exits 0 when ' +
    "the compares held (the success branch ran) and 6 when they did not (the failure branch " +
    "ran, and did what it says); a put naming a lease that does not exist exits 3 and the " +
    "transaction did nothing. When no answer arrives in time (exit 1), it may or may not have " +
    "been applied.",
  options: [],
  arity: [0, 1],
  async run(ctx) {
    const file = ctx.args[0];
    let text: string;
    if (file === undefined || file === "-") {
      text = await ctx.io.stdin();
    } else {
      try {
        text = await Deno.readTextFile(file);
      } catch (error) {
        throw usageError(`cannot read ${JSON.stringify(file)}: ${(error as Error).message}`);
      }
    }
    let body: unknown;
    try {
      // A JSON document may begin with a byte order mark (stdin keeps it; readTextFile drops it).
      body = JSON.parse(text.startsWith("\ufeff") ? text.slice(1) : text);
    } catch (error) {
      throw usageError(`the transaction is not JSON: ${(error as Error).message}`);
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      throw usageError('the transaction must be a JSON object: {"compare","success","failure"}');
    }
    const client = await ctx.client();
    const answer = await client.send("POST", "/v1/txn", { body });
    if (answer.status === 400 || answer.status === 413) {
      // The cluster names what is wrong with it (such as compare[2]); nothing was done.
      throw usageError(`txn: ${(answer.json as { error?: string } | null)?.error ?? answer.text}`);
    }
    if (answer.status !== 200) throw answerError(answer, "txn");
    const result = answer.json as { succeeded?: unknown; index?: unknown; results?: unknown };
    if (typeof result?.succeeded !== "boolean" || !Array.isArray(result.results)) {
      throw new ClientError(`txn: unexpected answer ${answer.text.slice(0, 200)}`, EXIT.error);
    }
    const head = result.succeeded
      ? `succeeded (index ${result.index})`
      : `compares failed: ran the failure branch (index ${result.index})`;
    ctx.print(
      answer.json,
      [head, ...(result.results as _Result[]).map(_resultLine)].join("\n"),
    );
    return result.succeeded ? EXIT.ok : EXIT.conflict;
  },
};
