/**
 * Kubernetes join mode: derives the cluster's members from a StatefulSet's stable network
 * identities (`<set>-<ordinal>.<service>.<namespace>.svc.<domain>`), never from pod IPs.
 *
 * @module
 */

import type { PeerConfig } from "./cluster_file.ts";
import { ConfigError } from "./errors.ts";

/** Where a pod sits in its StatefulSet, as read from its hostname. */
export interface StatefulSetPod {
  /** The StatefulSet's name: the hostname without its `-<ordinal>` suffix. */
  setName: string;
  /** The pod's ordinal: the hostname's numeric suffix. */
  ordinal: number;
}

/** Options for {@linkcode derivePeersForK8s}. */
export interface K8sPeerOptions {
  /**
   * This pod's hostname, `<set>-<ordinal>` (a fully qualified name is cut at its first dot).
   * Required.
   */
  hostname: string;
  /**
   * The bootstrap replica count: pods 0 to replicas-1 form the cluster. A pod with a higher
   * ordinal (the StatefulSet was scaled up) is listed after them: it joins the running cluster.
   * Required.
   */
  replicas: number;
  /** The headless Service that governs the StatefulSet. Defaults to the StatefulSet's name. */
  service?: string | undefined;
  /** The namespace the pods run in. Defaults to `"default"`. */
  namespace?: string | undefined;
  /** The cluster's DNS domain. Defaults to `"cluster.local"`. */
  clusterDomain?: string | undefined;
  /** The Raft RPC port every pod listens on. Required. */
  rpcPort: number;
  /** The client API port every pod listens on. Required. */
  apiPort: number;
  /** `"https"` when peers use mutual TLS. Defaults to `"http"`. */
  rpcScheme?: "http" | "https" | undefined;
}

const _DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const _HOSTNAME = /^(.+)-(0|[1-9][0-9]*)$/;

/**
 * Splits a StatefulSet pod's hostname into the set's name and the pod's ordinal.
 *
 * @example Usage
 * ```ts
 * import { parseStatefulSetHostname } from "./k8s.ts";
 *
 * const pod = parseStatefulSetHostname("raftkv-2");
 * console.assert(pod.setName === "raftkv" && pod.ordinal === 2);
 * ```
 *
 * @param hostname The pod's hostname, `<set>-<ordinal>`; anything from the first dot on is
 * ignored.
 * @returns The set's name and the pod's ordinal.
 * @throws {ConfigError} If the hostname does not end in `-<number>` or the set's name is not a
 * valid DNS label.
 */
export function parseStatefulSetHostname(hostname: string): StatefulSetPod {
  const podName = hostname.split(".", 1)[0] ?? "";
  const match = _HOSTNAME.exec(podName);
  const setName = match?.[1];
  const ordinal = match?.[2];
  if (setName === undefined || ordinal === undefined || !_DNS_LABEL.test(podName)) {
    throw new ConfigError(
      `Hostname ${
        JSON.stringify(hostname)
      } is not a StatefulSet pod name: k8s join mode expects "<statefulset>-<ordinal>", such as "raftkv-0"`,
    );
  }
  return { setName, ordinal: Number(ordinal) };
}

/**
 * Derives every member of a StatefulSet-hosted cluster, including this pod: node ids are the pod
 * names `<set>-0` … `<set>-<replicas-1>` and URLs use the pods' stable DNS names under the
 * headless Service, `http://<set>-<i>.<service>.<namespace>.svc.<domain>:<port>` (`https://` for
 * the `rpcUrl`s when `rpcScheme` says so).
 *
 * @example Usage
 * ```ts
 * import { derivePeersForK8s } from "./k8s.ts";
 *
 * const peers = derivePeersForK8s({
 *   hostname: "raftkv-1",
 *   replicas: 3,
 *   rpcPort: 6666,
 *   apiPort: 7777,
 * });
 * console.assert(peers.length === 3);
 * console.assert(peers[0]?.rpcUrl === "http://raftkv-0.raftkv.default.svc.cluster.local:6666");
 * ```
 *
 * @param options Where this pod is and how the cluster is named.
 * @returns All members in ordinal order.
 * @throws {ConfigError} If the hostname is not `<set>-<ordinal>`, the ordinal is not below
 * `replicas`, or a name is not valid in DNS.
 */
export function derivePeersForK8s(options: K8sPeerOptions): PeerConfig[] {
  const { hostname, replicas, rpcPort, apiPort } = options;
  const { setName, ordinal } = parseStatefulSetHostname(hostname);
  const service = options.service ?? setName;
  const namespace = options.namespace ?? "default";
  const clusterDomain = options.clusterDomain ?? "cluster.local";
  if (!Number.isSafeInteger(replicas) || replicas < 1) {
    throw new ConfigError(`Replica count ${replicas} is not a positive integer`);
  }
  for (const [what, name] of [["Service", service], ["namespace", namespace]] as const) {
    if (!_DNS_LABEL.test(name)) {
      throw new ConfigError(
        `k8s ${what} name ${
          JSON.stringify(name)
        } is not a valid DNS label (lowercase letters, digits and "-", at most 63 characters)`,
      );
    }
  }
  const domain = clusterDomain.endsWith(".") ? clusterDomain.slice(0, -1) : clusterDomain;
  if (domain === "" || domain.split(".").some((label) => !_DNS_LABEL.test(label))) {
    throw new ConfigError(
      `k8s cluster domain ${JSON.stringify(clusterDomain)} is not a valid DNS name`,
    );
  }
  for (const [what, port] of [["RPC", rpcPort], ["API", apiPort]] as const) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new ConfigError(`${what} port ${port} is not a port number (1-65535)`);
    }
  }
  const peers: PeerConfig[] = [];
  // Pods beyond the bootstrap replica count (a scale-up) join: they list themselves after it.
  for (let i = 0; i < Math.max(replicas, ordinal + 1); i++) {
    if (i >= replicas && i !== ordinal) continue;
    const id = `${setName}-${i}`;
    const host = `${id}.${service}.${namespace}.svc.${domain}`;
    peers.push({
      id,
      rpcUrl: `${options.rpcScheme ?? "http"}://${host}:${rpcPort}`,
      apiUrl: `http://${host}:${apiPort}`,
    });
  }
  return peers;
}
