/**
 * The key-value subcommands: `get`, `put` and `del`.
 *
 * @module
 */

import type { Command, CommandContext } from "./command.ts";
import { answerError } from "./http.ts";
import { ClientError, EXIT, usageError } from "./options.ts";

const _CONSISTENCIES = ["linearizable", "lease", "stale"];

/** The API path of a key (percent-encoded, so `a/b` stays one key). */
export function keyPath(key: string): string {
  return `/v1/data/${encodeURIComponent(key)}`;
}

function _key(ctx: CommandContext): string {
  const key = ctx.args[0] ?? "";
  if (key === "") throw usageError("the key must not be empty");
  return key;
}

/** `raftkv get KEY`. */
export const GET: Command = {
  name: "get",
  args: "KEY",
  summary: "print the value of a key",
  description: "Prints the value of KEY (as is, followed by a newline; with -o json the API's " +
    '{"k","v"}). A key that does not exist exits 3.',
  options: [{
    name: "--consistency",
    value: "<mode>",
    default: "linearizable",
    description: '"linearizable" (confirmed with a quorum by the leader), "lease" (the leader ' +
      'answers while its lease holds) or "stale" (the endpoint answers from its own state, may be ' +
      "behind)",
  }],
  arity: [1, 1],
  async run(ctx) {
    const key = _key(ctx);
    const consistency = ctx.line.values.get("--consistency");
    if (consistency !== undefined && !_CONSISTENCIES.includes(consistency.value)) {
      throw usageError(
        `invalid value for --consistency: ${JSON.stringify(consistency.value)} is not one of ` +
          _CONSISTENCIES.join(", "),
      );
    }
    const query = consistency === undefined ? "" : `?consistency=${consistency.value}`;
    const client = await ctx.client();
    const answer = await client.send("GET", keyPath(key) + query);
    if (answer.status === 404) {
      throw new ClientError(`key ${JSON.stringify(key)} not found`, EXIT.notFound, {
        k: key,
        status: 404,
      });
    }
    if (answer.status !== 200) throw answerError(answer, `get ${JSON.stringify(key)}`);
    const value = (answer.json as { v?: unknown } | null)?.v;
    if (typeof value !== "string") {
      throw new ClientError(
        `get ${JSON.stringify(key)}: unexpected answer ${answer.text}`,
        EXIT.error,
      );
    }
    ctx.print(answer.json, value);
    return EXIT.ok;
  },
};

/** `raftkv put KEY [VALUE]`. */
export const PUT: Command = {
  name: "put",
  args: "KEY [VALUE]",
  summary: "write a value (from stdin when VALUE is left out)",
  description: "Writes VALUE under KEY and prints OK with the log index once it is committed " +
    '(-o json: the API\'s {"k","v","index"}). Without VALUE, the value is all of stdin. When ' +
    "no answer arrives in time (exit 1), the write may or may not have been applied.",
  options: [],
  arity: [1, 2],
  async run(ctx) {
    const key = _key(ctx);
    const value = ctx.args[1] ?? await ctx.io.stdin();
    const client = await ctx.client();
    const answer = await client.send("PUT", keyPath(key), { body: { v: value } });
    if (answer.status !== 200) throw answerError(answer, `put ${JSON.stringify(key)}`);
    const index = (answer.json as { index?: unknown } | null)?.index;
    ctx.print(answer.json, `OK (index ${index})`);
    return EXIT.ok;
  },
};

/** `raftkv del KEY`. */
export const DEL: Command = {
  name: "del",
  args: "KEY",
  summary: "delete a key",
  description: "Deletes KEY and prints the log index of the delete (-o json: the API's " +
    '{"k","deleted","index"}). A key that did not exist exits 3 (nothing was deleted).',
  options: [],
  arity: [1, 1],
  async run(ctx) {
    const key = _key(ctx);
    const client = await ctx.client();
    const answer = await client.send("DELETE", keyPath(key));
    if (answer.status !== 200) throw answerError(answer, `del ${JSON.stringify(key)}`);
    const body = answer.json as { deleted?: unknown; index?: unknown } | null;
    if (body?.deleted === false) {
      if (ctx.json) ctx.print(answer.json, null);
      else ctx.io.err(`raftkv del: key ${JSON.stringify(key)} not found: nothing was deleted`);
      return EXIT.notFound;
    }
    ctx.print(answer.json, `deleted (index ${body?.index})`);
    return EXIT.ok;
  },
};
