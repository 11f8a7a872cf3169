/**
 * Test support for membership changes on a real cluster ({@linkcode ProcessCluster}): reading
 * the members through `GET /v1/members`, sending a change until it is applied, waiting for the
 * members to reach a state, joining a node as a voter, handing the lead over, and waiting for a
 * member to have applied a write.
 *
 * @module
 */

import assert from "node:assert/strict";
import { attempt } from "./chaos_lib.ts";
import { type ProcessCluster, waitFor, type WaitForOptions } from "./harness.ts";

/** One member as `GET /v1/members` lists it. */
export interface MemberRow {
  /** Its id. */
  node_id: string;
  /** Its peer URL. */
  rpc_url: string;
  /** Its API URL. */
  api_url: string;
  /** Whether it votes. */
  role: "voter" | "learner";
}

/**
 * The members node `via` lists, or null when it does not answer 200 within 2 s.
 *
 * @param cluster The cluster.
 * @param via The node to ask.
 * @returns Its members, or null.
 */
export async function members(
  cluster: ProcessCluster,
  via: string,
): Promise<MemberRow[] | null> {
  const r = await attempt(`${cluster.api(via)}/v1/members`, "GET", undefined, 2000);
  return r.kind === "answer" && r.status === 200
    ? (r.json as { members: MemberRow[] }).members
    : null;
}

/**
 * Sends a membership change until it is applied (or, for a removal, already done).
 *
 * @param cluster The cluster.
 * @param via The node to send it to, asked again at each attempt.
 * @param method `POST` (add) or `DELETE` (remove).
 * @param path The request's path.
 * @param body The request's body, for `POST`.
 */
export async function change(
  cluster: ProcessCluster,
  via: () => string,
  method: "POST" | "DELETE",
  path: string,
  body?: unknown,
): Promise<void> {
  await waitFor(async () => {
    const r = await attempt(`${cluster.api(via())}${path}`, method, body, 5000);
    if (r.kind !== "answer") return false;
    if (r.status === 200 || r.status === 201) return true;
    if (method === "DELETE" && r.status === 404) return true; // applied by an earlier attempt
    if (r.status === 409 && (r.json as { code?: string }).code === "exists") return true;
    return false;
  }, { deadlineMs: 15_000, intervalMs: 100, message: `${method} ${path} to be applied` });
}

/**
 * Waits (20 s at most) until the members `via()` lists pass `ok`.
 *
 * @param cluster The cluster.
 * @param via The node to ask, asked again at each look.
 * @param ok What the members must be.
 * @param message What is waited for, for the failure's message.
 */
export async function waitMembers(
  cluster: ProcessCluster,
  via: () => string,
  ok: (rows: MemberRow[]) => boolean,
  message: string,
): Promise<void> {
  await waitFor(async () => {
    const rows = await members(cluster, via());
    return rows !== null && ok(rows);
  }, { deadlineMs: 20_000, intervalMs: 100, message });
}

/**
 * Hands the lead to `to` and waits (30 s at most) until it leads. A transfer the leader abandons
 * (503: `to` did not take over within an election timeout, as happens on a loaded machine) is
 * asked for again, of whichever node leads then.
 *
 * @param cluster The cluster.
 * @param from The leader.
 * @param to The voter to hand the lead to.
 */
export async function handLead(cluster: ProcessCluster, from: string, to: string): Promise<void> {
  let last = "";
  await waitFor(async () => {
    const leader = (await cluster.status(to))?.leader?.id ?? from;
    if (leader === to) return true;
    const moved = await attempt(
      `${cluster.api(leader)}/v1/leader/transfer`,
      "POST",
      { to },
      10_000,
    );
    last = JSON.stringify(moved);
    if (moved.kind !== "answer" || moved.status !== 200) return false;
    return (await cluster.status(to))?.leader?.id === to;
  }, {
    deadlineMs: 30_000,
    intervalMs: 200,
    message: () => `${to} to lead (last answer: ${last})`,
  });
}

/**
 * Starts `id` with `--join` through `via()` and waits (asking `via()`) until it is a voter, then
 * checks it took its cluster's id.
 *
 * @param cluster The cluster.
 * @param id The new node's id.
 * @param via The member to join through, asked again at each look.
 */
export async function joinAsVoter(
  cluster: ProcessCluster,
  id: string,
  via: () => string,
): Promise<void> {
  await cluster.addNode(id);
  await cluster.start(id, { flags: ["--join", cluster.api(via())] });
  await waitMembers(
    cluster,
    via,
    (rows) => rows.some((m) => m.node_id === id && m.role === "voter"),
    `${id} to be a voter`,
  );
  // It took its cluster's id (from the leader's first write, or the answer to its join).
  const [own, theirs] = await Promise.all([cluster.status(id), cluster.status(via())]);
  assert.match(theirs?.cluster_id ?? "", /^[0-9a-f]{16}$/);
  assert.equal(own?.cluster_id, theirs?.cluster_id);
}

/**
 * Waits until node `id` reads `value` at `key` from its own state (a stale read: it has applied
 * the write that put it, as a member catching up does).
 *
 * @param cluster The cluster.
 * @param id The node.
 * @param key The key.
 * @param value The value to wait for.
 * @param options The deadline and what the error says (see {@linkcode waitFor}).
 */
export async function waitApplied(
  cluster: ProcessCluster,
  id: string,
  key: string,
  value: string,
  options: WaitForOptions,
): Promise<void> {
  await waitFor(async () => {
    const url = `${cluster.api(id)}/v1/data/${key}?consistency=stale`;
    const r = await attempt(url, "GET", undefined, 2000);
    return r.kind === "answer" && r.status === 200 && (r.json as { v: string }).v === value;
  }, options);
}
