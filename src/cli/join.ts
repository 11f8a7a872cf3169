/**
 * `--join`: a new node asks a running cluster to add it. It posts its own id and URLs to
 * `POST /v1/members` of the member it was given (a follower forwards to the leader) until the
 * cluster has it, retrying while no leader is known or another change is in progress. The node
 * itself never campaigns meanwhile: it waits for the leader to contact it. An `https://` member is
 * checked against the system's CAs and the cluster CA the node has (`--peer-ca`), as the members'
 * API certificates usually come from that CA.
 *
 * @module
 */

import { blockedPortReason, fetchBlockedPort } from "./fetch_ports.ts";

/** What {@linkcode requestJoin} needs. */
export interface JoinRequest {
  /** The API URL of a member of the cluster (`--join`). */
  joinUrl: string;
  /** This node: its id and URLs, as the cluster file gives them. */
  self: { id: string; rpcUrl: string; apiUrl: string };
  /** A bearer token with the admin role, when the cluster's API needs one. */
  token?: string | undefined;
  /**
   * PEM CA certificates an `https://` member's certificate may chain to, besides the system's
   * CAs: the node's `--peer-ca`. Default: the system's CAs only.
   */
  caCerts?: readonly string[] | undefined;
  /** Where progress goes. */
  log: { info(m: string): void; warn(m: string): void; error(m: string): void };
  /** Stops the attempts (the node is stopping). */
  signal: AbortSignal;
  /** Called with the members the cluster answered with (their addresses), once added. */
  onMembers?: (members: { node_id: string; rpc_url: string; api_url: string }[]) => void;
  /** Called with the id of the cluster joined, when its answer names it (once added). */
  onClusterId?: (id: string) => void;
  /** Pause between attempts, in ms. Default 1000. */
  retryMs?: number;
}

/**
 * Asks the cluster to add this node, again and again until it is a member (true) or the cluster
 * refuses for good (false: its id is taken by a member with other URLs, or an address of its is
 * used by another member) or `signal` aborts (false).
 */
export async function requestJoin(r: JoinRequest): Promise<boolean> {
  const blocked = fetchBlockedPort(r.joinUrl);
  if (blocked !== null) {
    // fetch would refuse every attempt: trying again could never succeed.
    r.log.error(`cannot join through ${r.joinUrl}: ${blockedPortReason(blocked)}`);
    return false;
  }
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (r.token) headers.authorization = `Bearer ${r.token}`;
  const body = JSON.stringify({
    node_id: r.self.id,
    rpc_url: r.self.rpcUrl,
    api_url: r.self.apiUrl,
  });
  const retryMs = r.retryMs ?? 1000;
  const client = r.caCerts === undefined || r.caCerts.length === 0
    ? undefined
    : Deno.createHttpClient({ caCerts: [...r.caCerts] });
  try {
    return await _joinLoop(r, headers, body, retryMs, client);
  } finally {
    client?.close();
  }
}

async function _joinLoop(
  r: JoinRequest,
  headers: Record<string, string>,
  body: string,
  retryMs: number,
  client: Deno.HttpClient | undefined,
): Promise<boolean> {
  while (!r.signal.aborted) {
    let wait = retryMs;
    try {
      const res = await fetch(`${r.joinUrl}/v1/members`, {
        method: "POST",
        headers,
        body,
        signal: AbortSignal.any([r.signal, AbortSignal.timeout(10_000)]),
        ...(client === undefined ? {} : { client }),
      });
      const answer = await res.json().catch(() => ({})) as Record<string, unknown>;
      if (res.status === 201) {
        if (Array.isArray(answer.members)) r.onMembers?.(answer.members);
        if (typeof answer.cluster_id === "string") r.onClusterId?.(answer.cluster_id);
        r.log.info(
          `joined the cluster through ${r.joinUrl}: added as a learner (entry ${answer.index})`,
        );
        return true;
      }
      if (res.status === 409 && answer.code === "exists") {
        if (await _alreadyMember(r, headers, client)) {
          r.log.info(`already a member of the cluster at ${r.joinUrl}`);
          return true;
        }
        r.log.error(
          `the cluster at ${r.joinUrl} refuses to add this node: ${answer.error ?? res.status}; ` +
            `give it another --id or other URLs`,
        );
        return false;
      }
      if (res.status === 401 || res.status === 403) {
        r.log.error(
          `the cluster at ${r.joinUrl} refuses to add this node (${res.status}): set RAFTKV_TOKEN ` +
            `to a token with the admin role`,
        );
        return false;
      }
      r.log.warn(
        `asking ${r.joinUrl} to add this node: ${res.status} ${answer.error ?? ""}; trying again`,
      );
      const after = Number(res.headers.get("retry-after"));
      if (Number.isFinite(after) && after > 0) wait = Math.min(after * 1000, 5 * retryMs);
    } catch (e) {
      if (r.signal.aborted) return false;
      r.log.warn(`cannot reach ${r.joinUrl} to join (${(e as Error).message}); trying again`);
    }
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, wait);
      r.signal.addEventListener("abort", () => {
        clearTimeout(t);
        resolve();
      }, { once: true });
    });
  }
  return false;
}

/** Whether the cluster lists this node with these very URLs (added before a restart). */
async function _alreadyMember(
  r: JoinRequest,
  headers: Record<string, string>,
  client: Deno.HttpClient | undefined,
): Promise<boolean> {
  try {
    const res = await fetch(`${r.joinUrl}/v1/members`, {
      headers,
      signal: AbortSignal.any([r.signal, AbortSignal.timeout(10_000)]),
      ...(client === undefined ? {} : { client }),
    });
    if (!res.ok) {
      await res.body?.cancel();
      return false;
    }
    const { members, cluster_id: clusterId } = await res.json() as {
      members: { node_id: string; rpc_url: string; api_url: string }[];
      cluster_id?: unknown;
    };
    const found = members.some((m) =>
      m.node_id === r.self.id && m.rpc_url === r.self.rpcUrl && m.api_url === r.self.apiUrl
    );
    if (found) r.onMembers?.(members);
    if (found && typeof clusterId === "string") r.onClusterId?.(clusterId);
    return found;
  } catch {
    return false;
  }
}
