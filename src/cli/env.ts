/**
 * What the program reads from its environment: the variables behind the flags, and the
 * `RAFTKV_HOSTS_OVERRIDE` seam that maps peer host names to addresses.
 *
 * @module
 */

import { ConfigError } from "./errors.ts";
import type { PeerConfig } from "./cluster_file.ts";
import { ENV_PREFIX, FLAGS, HEALTHCHECK_CACERT_ENV, TOKENS_ENV } from "./flags.ts";
import { CLIENT_ENV_VARS } from "./client/options.ts";

/**
 * Test and operations seam: `name=address,name=address` maps peer host names to addresses before
 * the node connects to them (see {@linkcode applyHostsOverride}), for running k8s join mode where
 * the pods' DNS names do not resolve, such as several nodes on loopback addresses in one test.
 */
export const HOSTS_OVERRIDE_ENV = "RAFTKV_HOSTS_OVERRIDE";

/**
 * A fault for tests only, never on by default: `1` makes a follower answer reads from its own
 * state without ReadIndex, so they are not linearizable (see `src/node/debug_faults.ts`). It
 * proves that `raftkv verify` finds stale reads; a node with it on says so loudly in its log.
 */
export const DEBUG_STALE_READS_ENV = "RAFTKV_DEBUG_STALE_READS";

/**
 * Every environment variable the program reads: one per flag, the tokens and the healthcheck's
 * CA, `HOSTNAME` and `POD_NAMESPACE` (k8s join mode), {@linkcode HOSTS_OVERRIDE_ENV},
 * {@linkcode DEBUG_STALE_READS_ENV} and the command-line client's (`RAFTKV_ENDPOINTS`, ...). The
 * compiled binary may read only these.
 */
export const ENV_VARS: readonly string[] = [
  ...FLAGS.flatMap((flag) => flag.env === null ? [] : [flag.env]),
  TOKENS_ENV,
  HEALTHCHECK_CACERT_ENV,
  "HOSTNAME",
  "POD_NAMESPACE",
  HOSTS_OVERRIDE_ENV,
  DEBUG_STALE_READS_ENV,
  ...CLIENT_ENV_VARS,
];

/**
 * The Deno permissions the program needs, which the compiled binary has baked in and no others:
 * network (it listens and talks to peers whose addresses are only known at run time), read and
 * write (the data directory and the cluster file are only known at run time too, so they cannot
 * be narrowed to paths), the environment variables in {@linkcode ENV_VARS}, and running programs
 * (the client's `raftkv lock NAME COMMAND` runs COMMAND while it holds the lock; a node starts
 * none, and gives the permission up at start: {@linkcode dropNodePermissions}), and the host's
 * name (the lock's value names its holder's host and process; a shell's HOSTNAME is not exported).
 */
export const PERMISSION_FLAGS: readonly string[] = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  `--allow-env=${ENV_VARS.join(",")}`,
  "--allow-run",
  "--allow-sys=hostname",
];

/**
 * Gives up, for the rest of the process, the permissions of {@linkcode PERMISSION_FLAGS} a node
 * never uses: running programs and the host's name (only the client's `raftkv lock` needs them).
 * Called once a node's flags are parsed, so that a flaw anywhere in the node (in what it parses
 * from a peer or a client, say) cannot start a process.
 */
export function dropNodePermissions(): void {
  Deno.permissions.revokeSync({ name: "run" });
  Deno.permissions.revokeSync({ name: "sys", kind: "hostname" });
}

/**
 * Parses a {@linkcode HOSTS_OVERRIDE_ENV} value: comma-separated `name=address` pairs.
 *
 * @param text The value; empty means no overrides.
 * @returns Address by host name (lower case).
 * @throws {ConfigError} On a pair without `=`, an empty side, or a name given twice.
 */
export function parseHostsOverride(text: string): Map<string, string> {
  const hosts = new Map<string, string>();
  for (const pair of text.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const [name = "", address = "", ...rest] = pair.split("=").map((p) => p.trim());
    if (name === "" || address === "" || rest.length > 0 || hosts.has(name.toLowerCase())) {
      throw new ConfigError(
        `Invalid value for ${HOSTS_OVERRIDE_ENV}: ${JSON.stringify(pair)} is not a new ` +
          '"name=address" pair (expected e.g. "raftkv-0.raftkv=127.0.0.2,raftkv-1.raftkv=127.0.0.3")',
      );
    }
    hosts.set(name.toLowerCase(), address);
  }
  return hosts;
}

/**
 * Replaces the host of each peer's `rpcUrl` and `apiUrl` by its override, if it has one.
 *
 * @param peers The members.
 * @param hosts Address by host name, from {@linkcode parseHostsOverride}.
 * @returns The members with their URLs rewritten.
 */
export function applyHostsOverride(
  peers: readonly PeerConfig[],
  hosts: ReadonlyMap<string, string>,
): PeerConfig[] {
  const rewrite = (text: string) => {
    const url = new URL(text);
    const address = hosts.get(url.hostname);
    if (address === undefined) return text;
    url.hostname = address.includes(":") && !address.startsWith("[") ? `[${address}]` : address;
    return text.endsWith("/") ? url.href : url.href.replace(/\/$/, "");
  };
  return peers.map((peer) => ({
    ...peer,
    rpcUrl: rewrite(peer.rpcUrl),
    apiUrl: rewrite(peer.apiUrl),
  }));
}

/**
 * The environment for {@linkcode parseArgs}, read variable by variable so that the compiled
 * binary needs `--allow-env` only for {@linkcode ENV_VARS}. With unrestricted env access (such
 * as `deno run --allow-env`), unknown `RAFTKV_*` names are passed too, so typos are warned about.
 */
export function readEnv(): Record<string, string> {
  const names = new Set(ENV_VARS);
  if (Deno.permissions.querySync({ name: "env" }).state === "granted") {
    for (const name of Object.keys(Deno.env.toObject())) {
      if (name.startsWith(ENV_PREFIX)) names.add(name);
    }
  }
  names.delete(HOSTS_OVERRIDE_ENV);
  names.delete(DEBUG_STALE_READS_ENV);
  for (const name of CLIENT_ENV_VARS) names.delete(name); // the client's, not the node's
  const env: Record<string, string> = {};
  for (const name of names) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}
