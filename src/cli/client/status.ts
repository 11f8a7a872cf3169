/**
 * `raftkv status`: every member's role, term, indexes and lag.
 *
 * @module
 */

import type { Command } from "./command.ts";
import { answerError, type ApiClient } from "./http.ts";
import { EXIT } from "./options.ts";
import { formatTable } from "./output.ts";

/** The fields of `GET /v1/status` the client uses. */
export interface MemberStatus {
  /** The node's id. */
  id: string;
  /** Its role. */
  role: string;
  /** Its term. */
  term: number;
  /** The leader it knows. */
  leader: { id: string; api_url: string } | null;
  /** Its commit index. */
  commit_index: number;
  /** Its applied index. */
  applied_index: number;
  /** Its last log index. */
  last_index: number;
  /** Every member, when the node lists them. */
  members?: { id: string; api_url: string }[];
  /** Its alarms. */
  alarms?: string[];
  /** Its place in the configuration: voter, learner, removed or joining (newer nodes). */
  membership?: string;
  /** The bytes of its keys and values (newer nodes). */
  data_bytes?: number;
  /** Its quota of those bytes, 0 for none (newer nodes). */
  quota_bytes?: number;
  /** The id of its cluster, when it knows it (newer nodes). */
  cluster_id?: string;
}

/** One row of `raftkv status -o json`. */
export interface MemberRow {
  /** The member's id. */
  id: string;
  /** Its API address. */
  endpoint: string;
  /** Whether it answered. */
  reachable: boolean;
  /** Its status, when it answered. */
  status: MemberStatus | null;
  /**
   * Entries it has yet to apply of those the leader knows committed (the leader's commit index
   * minus its applied index), when both answered.
   */
  lag: number | null;
  /** Why it did not answer. */
  error: string | null;
}

/**
 * Reads the status of every member: the members come from the first endpoint that answers; each
 * member is then asked at its own API address, all at once.
 *
 * @param client The client.
 * @returns The rows, in the cluster's order, and the leader's id if one answered as leader.
 * @throws {ClientError} When no endpoint answers at all.
 */
export async function clusterStatus(
  client: ApiClient,
): Promise<{ leader: string | null; members: MemberRow[] }> {
  const first = await client.send("GET", "/v1/status");
  if (first.status !== 200) throw answerError(first, "status");
  const own = first.json as MemberStatus;
  const members = own.members ?? [{ id: own.id, api_url: first.endpoint }];
  const rows = await Promise.all(members.map(async (member): Promise<MemberRow> => {
    const row: MemberRow = {
      id: member.id,
      endpoint: member.api_url,
      reachable: false,
      status: null,
      lag: null,
      error: null,
    };
    try {
      const answer = await client.send("GET", "/v1/status", {
        endpoints: [member.api_url],
        retryRefused: false,
      });
      if (answer.status !== 200) throw answerError(answer, "status");
      row.status = answer.json as MemberStatus;
      row.reachable = true;
    } catch (error) {
      row.error = error instanceof Error ? error.message : String(error);
    }
    return row;
  }));
  const leader = rows.find((r) => r.status?.role === "leader")?.status ?? null;
  for (const row of rows) {
    if (leader !== null && row.status !== null) {
      row.lag = Math.max(0, leader.commit_index - row.status.applied_index);
    }
  }
  return { leader: leader?.id ?? null, members: rows };
}

/** `raftkv status`. */
export const STATUS: Command = {
  name: "status",
  args: "",
  summary: "every member's role, term, indexes and lag",
  description: "Lists every member of the cluster (as the first endpoint that answers knows " +
    "them) with what its own GET /v1/status says: role, term, commit, applied and last index, " +
    "its lag: how many entries the leader knows committed that it has not applied yet, and " +
    "its data (the bytes of its keys and values) against its quota. " +
    "Exits 0 when every member answered and one is the leader, else 1 (members that did not " +
    "answer are listed with the reason).",
  options: [],
  arity: [0, 0],
  async run(ctx) {
    const client = await ctx.client();
    const { leader, members } = await clusterStatus(client);
    if (ctx.json) {
      ctx.print({ leader, members }, null);
    } else {
      const rows = members.map((m) => {
        const s = m.status;
        const note = m.error ?? (s?.alarms ?? []).join(",");
        return [
          m.id,
          m.endpoint,
          s?.role ?? "-",
          s === null ? "-" : String(s.term),
          s === null ? "-" : String(s.commit_index),
          s === null ? "-" : String(s.applied_index),
          s === null ? "-" : String(s.last_index),
          m.lag === null ? "-" : String(m.lag),
          _data(s),
          note,
        ];
      });
      ctx.io.out(formatTable(
        ["ID", "ENDPOINT", "ROLE", "TERM", "COMMIT", "APPLIED", "LAST", "LAG", "DATA", "NOTE"],
        rows,
      ));
    }
    const missing = members.filter((m) => !m.reachable).length;
    if (missing > 0) {
      if (!ctx.json) {
        ctx.io.err(`raftkv status: ${missing} of ${members.length} members did not answer`);
      }
      return EXIT.error;
    }
    if (leader === null && !ctx.json) ctx.io.err("raftkv status: no member is leader");
    return leader === null ? EXIT.error : EXIT.ok;
  },
};

/** A member's data for the table: `12.3 MiB`, or `12.3 MiB of 1 GiB` with a quota. */
function _data(s: MemberStatus | null): string {
  if (s?.data_bytes === undefined) return "-";
  const size = (bytes: number) => {
    for (const [unit, scale] of [["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]] as const) {
      if (bytes >= scale) return `${Number((bytes / scale).toFixed(1))} ${unit}`;
    }
    return `${bytes} B`;
  };
  return s.quota_bytes ? `${size(s.data_bytes)} of ${size(s.quota_bytes)}` : size(s.data_bytes);
}
