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
    "did not take over in time (the leader leads on) exits 1 with the leader's reason (asking " +
    "again would hold the writes up again). Needs a token with the admin role when the cluster " +
    "uses tokens.",
  options: [],
  arity: [0, 1],
  async run(ctx) {
    const to = ctx.args[0];
    if (to === "") throw usageError("the node id must not be empty");
    const client = await ctx.client();
    const body = to === undefined ? {} : { body: { to } };
    const what = to === undefined ? "leader transfer" : `leader transfer ${JSON.stringify(to)}`;
    // Refusals that change nothing (no leader known, overloaded) are asked again; a transfer the
    // leader abandoned (its 503 names the target, `to`) is not: each attempt holds writes up.
    let answer = await client.send("POST", "/v1/leader/transfer", {
      ...body,
      retryRefused: false,
    });
    const abandoned = answer.status === 503 &&
      typeof (answer.json as { to?: unknown } | null)?.to === "string";
    if (abandoned) throw answerError(answer, what);
    if (answer.status === 503 || answer.status === 429) {
      answer = await client.send("POST", "/v1/leader/transfer", body);
    }
    if (answer.status !== 200) throw answerError(answer, what);
    const moved = answer.json as { leader?: unknown; previous?: unknown } | null;
    if (typeof moved?.leader !== "string") {
      throw new ClientError(`${what}: unexpected answer ${answer.text.slice(0, 200)}`, EXIT.error);
    }
    const was = typeof moved.previous === "string" ? ` (was ${moved.previous})` : "";
    ctx.print(answer.json, `the leader is now ${moved.leader}${was}`);
    return EXIT.ok;
  },
};
