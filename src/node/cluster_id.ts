/**
 * Cluster ids: what keeps two clusters' peers apart when a cluster file, a DNS name or an address
 * points one cluster's node at another's. Each node records the id of its cluster with its hard
 * state and sends it with every peer request; a node refuses requests from another cluster (see
 * `RaftNode`, and the README's "Cluster ids").
 *
 * A new cluster's nodes agree on its id without talking: each derives it from the ids of the
 * cluster file's members and the cluster token (`--cluster-token`), as etcd derives its cluster
 * ID from `--initial-cluster` and `--initial-cluster-token`. The peer URLs are left out: each
 * node may reach its peers at addresses of its own (its own cluster file, a hosts override, a
 * proxy per link). A node that joins a running cluster learns the id from the cluster.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** The form of a cluster id: 16 lowercase hex digits (64 bits of a SHA-256 digest). */
export const CLUSTER_ID_PATTERN: RegExp = /^[0-9a-f]{16}$/;

/**
 * The id of a new cluster of `members`, made with `token`: the same for every node given the same
 * member ids (in any order) and token; another member id or token gives another id.
 *
 * @param members The ids of the bootstrap members (the cluster file's).
 * @param token The cluster token: clusters whose members have the same ids (the default
 * `node-1`..`node-3`, copies of one deployment) differ by it alone.
 * @returns The cluster id ({@linkcode CLUSTER_ID_PATTERN}).
 *
 * @example Usage
 * ```ts
 * import { bootstrapClusterId, CLUSTER_ID_PATTERN } from "./cluster_id.ts";
 *
 * const id = bootstrapClusterId(["node-1", "node-2", "node-3"], "prod");
 * console.assert(CLUSTER_ID_PATTERN.test(id));
 * console.assert(id === bootstrapClusterId(["node-3", "node-1", "node-2"], "prod"));
 * console.assert(id !== bootstrapClusterId(["node-1", "node-2", "node-3"], "staging"));
 * ```
 */
export function bootstrapClusterId(members: readonly string[], token: string): string {
  const sorted = members.toSorted();
  const digest = createHash("sha256").update(JSON.stringify({ token, members: sorted }));
  return digest.digest("hex").slice(0, 16);
}
