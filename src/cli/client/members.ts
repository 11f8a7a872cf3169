/**
 * `raftkv members list|add|remove`: the cluster's membership through `GET /v1/members`,
 * `POST /v1/members` and `DELETE /v1/members/{id}` (admin operations; a follower forwards
 * changes to the leader).
 *
 * @module
 */

import type { Command } from "./command.ts";
import { answerError } from "./http.ts";
import { EXIT, usageError } from "./options.ts";
import { formatTable } from "./output.ts";

interface _Member {
  node_id: string;
  rpc_url: string;
  api_url: string;
  role: string;
}

function _table(members: readonly _Member[]): string {
  return formatTable(
    ["ID", "ROLE", "RPC URL", "API URL"],
    members.map((m) => [m.node_id, m.role, m.rpc_url, m.api_url]),
  );
}

/** `raftkv members list`. */
export const MEMBERS_LIST: Command = {
  name: "members list",
  args: "",
  summary: "list the members: voters and learners",
  description: "Prints every member of the newest configuration the node holds, as a table of " +
    'id, role (voter or learner) and URLs (-o json: the API\'s {"members":[...]}). Needs a ' +
    "token with the admin role when the cluster uses tokens.",
  options: [],
  arity: [0, 0],
  async run(ctx) {
    const client = await ctx.client();
    const answer = await client.send("GET", "/v1/members");
    if (answer.status !== 200) throw answerError(answer, "members list");
    const members = (answer.json as { members: _Member[] }).members;
    ctx.print(answer.json, _table(members));
    return EXIT.ok;
  },
};

/** `raftkv members add ID RPC_URL API_URL`. */
export const MEMBERS_ADD: Command = {
  name: "members add",
  args: "ID RPC API",
  summary: "add a node as a learner (promoted to voter once caught up)",
  description:
    "Asks the cluster to add the node ID with its peer URL (RPC) and API URL (API) as a learner; the " +
    "leader promotes it to voter once it is caught up. Start the node itself with --join (it " +
    "then asks for this by itself) or with an empty data directory and --join after this. " +
    "Prints the members afterwards. An id or URL already in use, or a change while another is " +
    "in progress, exits 6.",
  options: [],
  arity: [3, 3],
  async run(ctx) {
    const [id, rpcUrl, apiUrl] = ctx.args as [string, string, string];
    for (const [name, url] of [["RPC_URL", rpcUrl], ["API_URL", apiUrl]]) {
      if (!/^https?:\/\//.test(url!)) {
        throw usageError(`${name} must be an http(s) URL, not ${JSON.stringify(url)}`);
      }
    }
    const client = await ctx.client();
    const answer = await client.send("POST", "/v1/members", {
      body: { node_id: id, rpc_url: rpcUrl, api_url: apiUrl },
      retryRefused: true,
    });
    if (answer.status !== 201) throw answerError(answer, `members add ${JSON.stringify(id)}`);
    const body = answer.json as { index: number; members: _Member[] };
    ctx.print(
      answer.json,
      `added ${id} as a learner (index ${body.index})\n${_table(body.members)}`,
    );
    return EXIT.ok;
  },
};

/** `raftkv members remove ID`. */
export const MEMBERS_REMOVE: Command = {
  name: "members remove",
  args: "ID",
  summary: "remove a member (voter or learner)",
  description: "Removes the member ID from the cluster. A removed node takes no further part " +
    "(stop it); a removed leader steps down once the change is committed. Removing the last " +
    "voter, or a change while another is in progress, exits 6; an unknown id exits 3.",
  options: [],
  arity: [1, 1],
  async run(ctx) {
    const id = ctx.args[0]!;
    const client = await ctx.client();
    const answer = await client.send("DELETE", `/v1/members/${encodeURIComponent(id)}`, {
      retryRefused: true,
    });
    if (answer.status !== 200) throw answerError(answer, `members remove ${JSON.stringify(id)}`);
    const body = answer.json as { index: number; members: _Member[] };
    ctx.print(answer.json, `removed ${id} (index ${body.index})\n${_table(body.members)}`);
    return EXIT.ok;
  },
};
