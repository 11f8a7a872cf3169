/**
 * `raftkv leader transfer [ID]`: hands the leadership to a voter through
 * `POST /v1/leader/transfer` (an admin operation; a follower forwards it to the leader), as
 * `etcdctl move-leader` does.
 *
 * @module
 */

import type { Command } from "./command.ts";
import { answerError } from "./http.ts";
import { ClientError, EXIT, usageError } from "./options.ts";

/** `raftkv leader transfer [ID]`. */
export const LEADER_TRANSFER: Command = {
  name: "leader transfer",
  args: "[ID]",
  summary: "hand the leadership to a voter (without ID: the most caught-up one)",
  description: "Asks the leader to hand its leadership to the voter ID (without ID: the voter " +
    "whose log matches the most of the leader's) and prints the new leader once it is known " +
    '(-o json: the API\'s {"leader","previous"}). An ID that is not a voter (unknown, a learner) ' +
    "exits 1 and changes nothing; a transfer while another is in progress exits 6; a target that " +
    "did not take over in time (the leader leads on) is tried again until --timeout. Needs a " +
    "token with the admin role when the cluster uses tokens.",
  options: [],
  arity: [0, 1],
  async run(ctx) {
    const to = ctx.args[0];
    if (to === "") throw usageError("the node id must not be empty");
    const client = await ctx.client();
    const answer = await client.send(
      "POST",
      "/v1/leader/transfer",
      to === undefined ? {} : { body: { to } },
    );
    const what = to === undefined ? "leader transfer" : `leader transfer ${JSON.stringify(to)}`;
    if (answer.status !== 200) throw answerError(answer, what);
    const body = answer.json as { leader?: unknown; previous?: unknown } | null;
    if (typeof body?.leader !== "string") {
      throw new ClientError(`${what}: unexpected answer ${answer.text.slice(0, 200)}`, EXIT.error);
    }
    const was = typeof body.previous === "string" ? ` (was ${body.previous})` : "";
    ctx.print(answer.json, `the leader is now ${body.leader}${was}`);
    return EXIT.ok;
  },
};
