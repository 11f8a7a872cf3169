/**
 * The command-line flags: their table (exported as data, so documentation can be generated from
 * or checked against it), the tokenizer that reads `argv`, and the `--help` text.
 *
 * @module
 */

import { ConfigError } from "./errors.ts";

/** Prefix of every environment variable that can stand in for a flag. */
export const ENV_PREFIX = "RAFTKV_";

/**
 * The API's bearer tokens as JSON, in an environment variable that stands for no flag: a
 * secret belongs in neither a command line nor `ps` output (`--tokens-file` names a file).
 */
export const TOKENS_ENV = "RAFTKV_TOKENS";

/** The CA file `raftkv healthcheck` trusts when its `--cacert` is not given. */
export const HEALTHCHECK_CACERT_ENV = "RAFTKV_HEALTHCHECK_CACERT";

/** Default values of the settings that have a fixed default. */
export const DEFAULTS = {
  /** Default of `--join-mode`. */
  joinMode: "static",
  /** Default of `--cluster-config-path`, relative to the working directory. */
  clusterConfigPath: "cluster.config.json",
  /** Default of `--cluster-token`. */
  clusterToken: "raftkv",
  /** Default of `--data-dir`, before `<id>` is appended. */
  dataDirParent: "data",
  /** Default of `--election-timeout`, in milliseconds. */
  electionTimeoutMs: 1000,
  /** Default of `--heartbeat`, in milliseconds. */
  heartbeatMs: 100,
  /** Default of `--transfer-on-shutdown`. */
  transferOnShutdown: "true",
  /** Default of `--compact-heap`: off, as each compaction pauses the node. */
  compactHeap: "false",
  /** Default of `--rpc-timeout`, in milliseconds. */
  rpcTimeoutMs: 2000,
  /** Default of `--api-timeout`, in milliseconds. */
  apiTimeoutMs: 5000,
  /** Default of `--api-fwd-timeout`, in milliseconds. */
  apiFwdTimeoutMs: 5000,
  /** Default of `--max-conn-retry-attempts`. */
  maxConnRetryAttempts: 3,
  /** Default of `--snapshot-threshold`, in log entries. */
  snapshotThreshold: 10_000,
  /** Default of `--snapshot-threshold-bytes` (64 MiB of log written). */
  snapshotThresholdBytes: 67_108_864,
  /** Default of `--max-key-bytes`. */
  maxKeyBytes: 1024,
  /** Default of `--max-value-bytes` (1 MiB). */
  maxValueBytes: 1_048_576,
  /** Default of `--max-inflight-requests`. */
  maxInflightRequests: 1024,
  /** Default of `--max-inflight-bytes` (64 MiB). */
  maxInflightBytes: 64 * 1024 * 1024,
  /**
   * Divisor of the default of `--max-client-unread-bytes`: a quarter of `--max-inflight-bytes`
   * (16 MiB by default), at least 1.
   */
  maxClientUnreadBytesDivisor: 4,
  /** Default of `--max-forwarded-requests`. */
  maxForwardedRequests: 256,
  /** Default of `--max-pending-proposals`. */
  maxPendingProposals: 4096,
  /** Default of `--max-pending-bytes` (64 MiB). */
  maxPendingBytes: 64 * 1024 * 1024,
  /** Default of `--quota-bytes` (1 GiB). */
  quotaBytes: 1024 * 1024 * 1024,
  /** Default of `--max-concurrent-backups`. */
  maxConcurrentBackups: 2,
  /** Default of `--backup-timeout`, in milliseconds (10 minutes). */
  backupTimeoutMs: 600_000,
  /** Default of `--reload-interval`, in milliseconds. */
  reloadIntervalMs: 5_000,
  /** Default of `--watch-history`: change events kept for watches. */
  watchHistoryEvents: 10_000,
  /** Default of `--watch-history-bytes` (64 MiB): bytes of change events kept for watches. */
  watchHistoryBytes: 64 * 1024 * 1024,
  /** Default of `--watch-buffer`: events waiting for one slow watcher. */
  watchBufferEvents: 1024,
  /** Default of `--watch-buffer-bytes` (16 MiB): bytes of events waiting for one slow watcher. */
  watchBufferBytes: 16 * 1024 * 1024,
  /** Default of `--max-watch-bytes` (256 MiB): bytes of events waiting for all watchers. */
  maxWatchBytes: 256 * 1024 * 1024,
  /** Default of `--watch-heartbeat`, in milliseconds. */
  watchHeartbeatMs: 15_000,
  /** Default of `--max-watchers`: watch streams open and blocking reads waiting on one node. */
  maxWatchers: 10_000,
  /** Default of `--log-level`. */
  logLevel: "info",
  /** Default of `--log-format`. */
  logFormat: "text",
  /** Default of `--rpc-port` in k8s join mode. */
  k8sRpcPort: 6666,
  /** Default of `--api-port` in k8s join mode. */
  k8sApiPort: 7777,
  /** Default of `--k8s-namespace` when `POD_NAMESPACE` is not set either. */
  k8sNamespace: "default",
  /** Default of `--k8s-cluster-domain`. */
  k8sClusterDomain: "cluster.local",
} as const;

/** One command-line flag, as documented in `--help` and the README. */
export interface FlagInfo {
  /** The flag as typed, such as `"--api-port"`. */
  readonly name: string;
  /** Other spellings accepted for the same flag, such as `"--heartbeat-interval"`. */
  readonly aliases: readonly string[];
  /** Placeholder for the flag's value, such as `"<port>"`, or `null` for a switch. */
  readonly value: string | null;
  /** The environment variable that can stand in for the flag, or `null` if none can. */
  readonly env: string | null;
  /** The default, in words (empty for switches). */
  readonly default: string;
  /** What the flag means. */
  readonly description: string;
  /** The `--help` section the flag is listed under. */
  readonly group: string;
}

function _flag(
  group: string,
  name: string,
  value: string | null,
  defaultText: string,
  description: string,
  aliases: readonly string[] = [],
): FlagInfo {
  const env = value === null ? null : ENV_PREFIX + name.slice(2).replaceAll("-", "_").toUpperCase();
  return { name, aliases, value, env, default: defaultText, description, group };
}

const _D = DEFAULTS;

/** Every flag the program accepts, in `--help` order. */
export const FLAGS: readonly FlagInfo[] = [
  _flag(
    "Node",
    "--id",
    "<id>",
    "required in static mode; the pod hostname in k8s mode",
    "This node's id: a node_id in the cluster file, or a pod name in k8s mode",
  ),
  _flag(
    "Node",
    "--join-mode",
    "<mode>",
    _D.joinMode,
    '"static" (or "cluster-file") reads peers from the cluster file; "k8s" derives them from a StatefulSet',
  ),
  _flag(
    "Node",
    "--cluster-config-path",
    "<file>",
    _D.clusterConfigPath,
    "Cluster file (static mode): a JSON array of {node_id, rpc_url, api_url}",
  ),
  _flag(
    "Node",
    "--cluster-token",
    "<token>",
    _D.clusterToken,
    "Makes a new cluster's id, with the cluster file's members: give every node of one cluster the same token, and each cluster its own (peers of another cluster are refused). Used only when a node starts with no data; not a secret",
  ),
  _flag(
    "Node",
    "--join",
    "<api_url>",
    "none",
    "Join the running cluster that this member's API serves (host:port means http://host:port): with an empty data directory the node asks to be added (as a learner) and waits for the leader; it never starts a cluster of its own. An https:// member's certificate must chain to --peer-ca or to a CA the system trusts; with tokens, set RAFTKV_TOKEN to an admin token. A node with data ignores it. Only this node's own entry of the cluster file is used. In k8s mode it applies only to pods beyond --k8s-replicas",
  ),
  _flag(
    "Node",
    "--api-port",
    "<port>",
    `the port of this node's api_url in the cluster file; ${_D.k8sApiPort} in k8s mode`,
    "Port of the client HTTP API",
  ),
  _flag(
    "Node",
    "--rpc-port",
    "<port>",
    `the port of this node's rpc_url in the cluster file; ${_D.k8sRpcPort} in k8s mode`,
    "Port of the Raft RPC server",
  ),
  _flag(
    "Node",
    "--listen-host",
    "<host>",
    "the host of this node's rpc_url (peer server) and of its api_url (API server)",
    "Address both servers listen on instead; 0.0.0.0 is every interface (as in containers)",
  ),
  _flag(
    "Peer security",
    "--peer-cert",
    "<file>",
    "none: peers talk cleartext HTTP/2",
    "This node's certificate (PEM, subject CN = its node id), served on the peer port and " +
      "presented to peers. With --peer-key and --peer-ca it turns on mutual TLS between peers; " +
      "the rpc_urls must then be https://",
  ),
  _flag("Peer security", "--peer-key", "<file>", "none", "The private key of --peer-cert (PEM)"),
  _flag(
    "Peer security",
    "--peer-ca",
    "<file>",
    "none",
    "The cluster CA (PEM): a peer's certificate must chain to it and name a member as its CN",
  ),
  _flag(
    "Storage",
    "--data-dir",
    "<dir>",
    `${_D.dataDirParent}/<id>`,
    "Directory holding all of this node's state; the four paths below default to files in it",
  ),
  _flag(
    "Storage",
    "--log-entry-path",
    "<dir>",
    "<data-dir>/wal",
    "Directory of the write-ahead log (the Raft log entries)",
  ),
  _flag(
    "Storage",
    "--log-metadata-path",
    "<file>",
    "<data-dir>/log-metadata.json",
    "File recording the write-ahead log's metadata",
  ),
  _flag(
    "Storage",
    "--raft-state-path",
    "<file>",
    "<data-dir>/raft-state.json",
    "File holding Raft's hard state (term, vote, commit index)",
  ),
  _flag(
    "Storage",
    "--snapshot-path",
    "<dir>",
    "<data-dir>/snapshots",
    "Directory of state-machine snapshots",
  ),
  _flag(
    "Storage",
    "--snapshot-threshold",
    "<entries>",
    String(_D.snapshotThreshold),
    "Take a snapshot once this many log entries have been applied since the last one",
  ),
  _flag(
    "Storage",
    "--snapshot-threshold-bytes",
    "<bytes>",
    `${_D.snapshotThresholdBytes} (64 MiB)`,
    "Also take a snapshot once this many bytes were written to the log since the last one, so that large values cannot fill the disk first",
  ),
  _flag(
    "Storage",
    "--restore-from",
    "<file>",
    "none",
    "Start from this backup (a GET /v1/snapshot download) when the data directory is empty; give every node of the new cluster the same file",
  ),
  _flag(
    "Timing",
    "--election-timeout",
    "<duration>",
    `${_D.electionTimeoutMs}ms`,
    "Base election timeout (randomised above it); at least twice the heartbeat",
  ),
  _flag(
    "Timing",
    "--heartbeat",
    "<duration>",
    `${_D.heartbeatMs}ms`,
    "Interval between the leader's heartbeats",
    ["--heartbeat-interval"],
  ),
  _flag(
    "Timing",
    "--transfer-on-shutdown",
    "<bool>",
    _D.transferOnShutdown,
    '"true": a leader stopped by SIGTERM/SIGINT first hands leadership over (up to an election timeout); "false": it just stops',
  ),
  _flag(
    "Timing",
    "--rpc-timeout",
    "<duration>",
    `${_D.rpcTimeoutMs}ms`,
    "Time limit of one Raft RPC to a peer",
  ),
  _flag(
    "Timing",
    "--api-timeout",
    "<duration>",
    `${_D.apiTimeoutMs}ms`,
    "Time limit of one client API request; an answer the client takes nothing of for the " +
      "larger of this and 30s is cut off",
  ),
  _flag(
    "Timing",
    "--api-fwd-timeout",
    "<duration>",
    `${_D.apiFwdTimeoutMs}ms`,
    "Time limit of forwarding a client request to the leader",
  ),
  _flag(
    "Timing",
    "--backup-timeout",
    "<duration>",
    "10m",
    "Time limit of one GET /v1/snapshot download; a reader still behind then is cut off",
  ),
  _flag(
    "Timing",
    "--max-conn-retry-attempts",
    "<n>",
    String(_D.maxConnRetryAttempts),
    "How many times a failed connection to a peer is retried",
  ),
  _flag(
    "Limits and logging",
    "--max-key-bytes",
    "<bytes>",
    String(_D.maxKeyBytes),
    "Largest key accepted, in bytes",
  ),
  _flag(
    "Limits and logging",
    "--max-value-bytes",
    "<bytes>",
    `${_D.maxValueBytes} (1 MiB)`,
    "Largest value accepted, in bytes",
  ),
  _flag(
    "Limits and logging",
    "--max-inflight-requests",
    "<n>",
    String(_D.maxInflightRequests),
    "Client API requests in progress at once (/health, /ready, /metrics aside), each until its " +
      "answer is sent (a blocking read that waits, a watch or a backup aside); past it: 429 at once",
  ),
  _flag(
    "Limits and logging",
    "--max-inflight-bytes",
    "<bytes>",
    `${_D.maxInflightBytes} (64 MiB)`,
    "Bytes of request bodies in progress at once (Content-Length, or the body limit when not " +
      "declared), and of answers not yet sent; past it: 429 at once",
  ),
  _flag(
    "Limits and logging",
    "--max-client-unread-bytes",
    "<bytes>",
    `a quarter of --max-inflight-bytes (${
      _D.maxInflightBytes / _D.maxClientUnreadBytesDivisor
    }, 16 MiB)`,
    "Bytes of answers over 64 KiB one client (IP address) has not read yet; a client at it: " +
      "429 at once; a GET whose answer would pass it: 429 (a write is answered anyway); at " +
      "most --max-inflight-bytes (0: no per-client bound)",
  ),
  _flag(
    "Limits and logging",
    "--max-forwarded-requests",
    "<n>",
    String(_D.maxForwardedRequests),
    "Requests being forwarded to the leader at once; past it: 429",
  ),
  _flag(
    "Limits and logging",
    "--max-pending-proposals",
    "<n>",
    String(_D.maxPendingProposals),
    "Writes the leader has proposed but not yet applied; past it a write is refused with 503",
  ),
  _flag(
    "Limits and logging",
    "--max-pending-bytes",
    "<bytes>",
    `${_D.maxPendingBytes} (64 MiB)`,
    "Bytes of writes the leader has proposed but not yet applied; past it: 503",
  ),
  _flag(
    "Limits and logging",
    "--quota-bytes",
    "<bytes>",
    `${_D.quotaBytes} (1 GiB)`,
    "Bytes of data (keys and values) the cluster holds; a write that would pass it: 507 (0: none)",
  ),
  _flag(
    "Limits and logging",
    "--max-concurrent-backups",
    "<n>",
    String(_D.maxConcurrentBackups),
    "GET /v1/snapshot downloads streaming at once; past it: 429",
  ),
  _flag(
    "Limits and logging",
    "--watch-history",
    "<n>",
    String(_D.watchHistoryEvents),
    "Change events kept for watches; GET /v1/watch from an older index: 410",
  ),
  _flag(
    "Limits and logging",
    "--watch-history-bytes",
    "<bytes>",
    `${_D.watchHistoryBytes} (64 MiB)`,
    "Bytes of change events kept for watches (key and value bytes + 64 each); the oldest go " +
      "first; older from: 410",
  ),
  _flag(
    "Limits and logging",
    "--watch-buffer",
    "<n>",
    String(_D.watchBufferEvents),
    "Events waiting for one watcher that reads too slowly before it is cut off",
  ),
  _flag(
    "Limits and logging",
    "--watch-buffer-bytes",
    "<bytes>",
    `${_D.watchBufferBytes} (16 MiB)`,
    "Bytes of events (key and value bytes + 64 each) waiting for one watcher that reads too " +
      "slowly before it is cut off",
  ),
  _flag(
    "Limits and logging",
    "--max-watch-bytes",
    "<bytes>",
    `${_D.maxWatchBytes} (256 MiB)`,
    "Bytes of events waiting for all the node's watchers (each event once); past it the one " +
      "with the most waiting is cut off",
  ),
  _flag(
    "Limits and logging",
    "--watch-heartbeat",
    "<duration>",
    `${_D.watchHeartbeatMs / 1000}s`,
    "Interval of the comment heartbeats of a GET /v1/watch stream",
  ),
  _flag(
    "Limits and logging",
    "--compact-heap",
    "<bool>",
    _D.compactHeap,
    '"true": once a burst of writes is over, a compacting garbage collection gives back the heap it grew (pauses the node, about a second with a million keys)',
  ),
  _flag(
    "Limits and logging",
    "--max-watchers",
    "<n>",
    String(_D.maxWatchers),
    "GET /v1/watch streams open and blocking reads waiting, together, at once on this node; " +
      "past it: 429",
  ),
  _flag(
    "Limits and logging",
    "--log-level",
    "<level>",
    _D.logLevel,
    'Least severe log level printed: "debug", "info", "warn" or "error"',
  ),
  _flag(
    "Limits and logging",
    "--log-format",
    "<format>",
    _D.logFormat,
    '"text" (one line: time, level, node id, message) or "json" (one JSON object a line with ' +
      "the same fields: time, level, node, message), for log shippers",
  ),
  _flag(
    "Security",
    "--api-cert",
    "<file>",
    "none (plain HTTP)",
    "PEM certificate (chain) of the client API: serve HTTPS; needs --api-key, and this node's " +
      "api_url must be https",
  ),
  _flag("Security", "--api-key", "<file>", "none", "PEM private key of --api-cert"),
  _flag(
    "Security",
    "--tokens-file",
    "<file>",
    `none (${TOKENS_ENV}, else no authentication)`,
    'Bearer tokens of the client API: a JSON array of {"token", "role", "name"}, roles "read", ' +
      `"write", "admin"; ${TOKENS_ENV} may hold the same JSON instead; read again when it changes and on SIGHUP`,
  ),
  _flag(
    "Security",
    "--reload-interval",
    "<duration>",
    `${_D.reloadIntervalMs / 1000}s`,
    "How often the node looks at its --tokens-file and TLS files; once they changed and hold " +
      "still for one more look, it loads them again as SIGHUP does (0: only on SIGHUP)",
  ),
  _flag(
    "Kubernetes (--join-mode k8s)",
    "--k8s-replicas",
    "<n>",
    "required in k8s mode",
    "The bootstrap size: pods 0 to n-1 form the cluster; a pod with a higher ordinal (after kubectl scale) joins it (--join, default pod 0's API). Keep it when scaling",
  ),
  _flag(
    "Kubernetes (--join-mode k8s)",
    "--k8s-service",
    "<name>",
    "the StatefulSet's name (the hostname without -<ordinal>)",
    "Headless Service that governs the StatefulSet (its spec.serviceName)",
  ),
  _flag(
    "Kubernetes (--join-mode k8s)",
    "--k8s-namespace",
    "<name>",
    `$POD_NAMESPACE, else "${_D.k8sNamespace}"`,
    "Namespace the pods run in",
  ),
  _flag(
    "Kubernetes (--join-mode k8s)",
    "--k8s-cluster-domain",
    "<domain>",
    _D.k8sClusterDomain,
    "The Kubernetes cluster's DNS domain",
  ),
  _flag("Other", "--help", null, "", "Print this help and exit", ["-h"]),
  _flag("Other", "--version", null, "", "Print the version and exit"),
];

/** Where a value came from: the flag as typed, or the environment variable's name. */
export interface RawValue {
  /** The text given. */
  value: string;
  /** `"--api-port"` (as typed, so possibly an alias) or `"RAFTKV_API_PORT"`. */
  origin: string;
}

/** The flags found on a command line. */
export interface ParsedArgv {
  /** Values of value-taking flags, keyed by the flag's canonical name; the last one wins. */
  values: Map<string, RawValue>;
  /** Canonical names of the switches given (`"--help"`, `"--version"`). */
  switches: Set<string>;
}

const _BY_NAME: ReadonlyMap<string, FlagInfo> = new Map(
  FLAGS.flatMap((flag) => [flag.name, ...flag.aliases].map((name) => [name, flag] as const)),
);

/**
 * Reads a command line: `--flag value`, `--flag=value` and switches (`--help`, `-h`,
 * `--version`). A flag given twice keeps its last value.
 *
 * @example Usage
 * ```ts
 * import { tokenizeArgv } from "./flags.ts";
 *
 * const parsed = tokenizeArgv(["--id", "node-1", "--heartbeat-interval=50ms"]);
 * console.assert(parsed.values.get("--heartbeat")?.value === "50ms");
 * ```
 *
 * @param argv The arguments after the program's name.
 * @returns The values and switches found.
 * @throws {ConfigError} On an unknown flag (suggesting the closest known one), a missing or
 * empty value, a value given to a switch, or a positional argument.
 */
export function tokenizeArgv(argv: readonly string[]): ParsedArgv {
  const values = new Map<string, RawValue>();
  const switches = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i] ?? "";
    if (i === 0 && /^[a-z][a-z-]*$/.test(token)) {
      // A word where a command would be: a mistyped client command, most likely.
      throw new ConfigError(
        `Unknown command ${JSON.stringify(token)}: 'raftkv help' lists the client's commands ` +
          '(a node takes only flags, such as "--id node-1")',
      );
    }
    if (!token.startsWith("-") || token === "-" || token === "--") {
      throw new ConfigError(
        `Unexpected argument ${
          JSON.stringify(token)
        }: every setting is a flag such as "--id node-1"`,
      );
    }
    const equals = token.indexOf("=");
    const typed = equals === -1 ? token : token.slice(0, equals);
    const inline = equals === -1 ? undefined : token.slice(equals + 1);
    const flag = _BY_NAME.get(typed);
    if (flag === undefined) {
      const suggestion = closestName(typed, [..._BY_NAME.keys()]);
      throw new ConfigError(
        `Unknown flag ${JSON.stringify(typed)}` +
          (suggestion === undefined ? "" : ` (did you mean ${JSON.stringify(suggestion)}?)`) +
          "; run with --help to list the flags",
      );
    }
    if (flag.value === null) {
      if (inline !== undefined) {
        throw new ConfigError(`Flag ${typed} takes no value, got ${JSON.stringify(inline)}`);
      }
      switches.add(flag.name);
      continue;
    }
    let value = inline;
    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--") || next === "-h") {
        throw new ConfigError(`Flag ${typed} needs a value: ${typed} ${flag.value}`);
      }
      value = next;
      i++;
    }
    if (value === "") {
      throw new ConfigError(`Flag ${typed} needs a non-empty value: ${typed}=${flag.value}`);
    }
    values.set(flag.name, { value, origin: typed });
  }
  return { values, switches };
}

/**
 * Finds the name an unknown name was most likely meant to be: the closest by edit distance
 * (counting a swap of neighbours as one edit, ignoring case, `_` versus `-`), if it is close
 * enough, or else the only candidate the name is a prefix of.
 *
 * @example Usage
 * ```ts
 * import { closestName } from "./flags.ts";
 *
 * console.assert(closestName("--api-prot", ["--api-port", "--rpc-port"]) === "--api-port");
 * console.assert(closestName("--colour", ["--api-port"]) === undefined);
 * ```
 *
 * @param name The unknown name.
 * @param candidates The known names.
 * @returns The suggestion, or `undefined` when nothing is an obvious match.
 */
export function closestName(name: string, candidates: readonly string[]): string | undefined {
  const wanted = name.toLowerCase().replaceAll("_", "-");
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = _editDistance(wanted, candidate.toLowerCase().replaceAll("_", "-"));
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  const stem = wanted.replace(/^-+/, "");
  if (best !== undefined && bestDistance <= Math.max(2, Math.floor(stem.length / 4))) return best;
  if (stem.length >= 3) {
    const extending = candidates.filter((candidate) =>
      candidate.toLowerCase().replaceAll("_", "-").replace(/^-+/, "").startsWith(stem)
    );
    if (extending.length === 1) return extending[0];
  }
  return undefined;
}

/** Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps. */
function _editDistance(a: string, b: string): number {
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    const row: number[] = [i];
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) {
        row.push(j);
        continue;
      }
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(
        (rows[i - 1]?.[j] ?? 0) + 1,
        (row[j - 1] ?? 0) + 1,
        (rows[i - 1]?.[j - 1] ?? 0) + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, (rows[i - 2]?.[j - 2] ?? 0) + 1);
      }
      row.push(d);
    }
    rows.push(row);
  }
  return rows[a.length]?.[b.length] ?? 0;
}

const _WIDTH = 100;

/**
 * Builds the `--help` text: usage, how environment variables and durations work, then every
 * flag in {@linkcode FLAGS} with its meaning, default and environment variable.
 *
 * @example Usage
 * ```ts
 * import { helpText } from "./flags.ts";
 *
 * console.assert(helpText().includes("--api-port <port>"));
 * ```
 *
 * @returns The text, ending with a newline.
 */
export function helpText(): string {
  const lines = [
    "raftkv: a Raft-replicated key-value store",
    "",
    "Usage:",
    "  raftkv --id <id> [flags]                            peers from the cluster file",
    "  raftkv --join-mode k8s --k8s-replicas <n> [flags]   peers from a Kubernetes StatefulSet",
    "  raftkv healthcheck [--url <url>] [--cacert <file>]  exit 0 if /health answers 200 (for containers)",
    "  raftkv <command> [options]                          the client; raftkv help lists its commands",
    "",
    ..._wrap(
      "Every flag can also be set by the environment variable shown (an empty variable counts " +
        "as unset); a flag wins over its variable, and a variable over the default. Durations " +
        'are whole milliseconds ("150") or numbers with a unit ms, s, m or h ("150ms", "1.5s", ' +
        '"2m", "1m30s"). In k8s mode the pod\'s hostname (from HOSTNAME) must be ' +
        '"<statefulset>-<ordinal>"; peers are reached at ' +
        "<statefulset>-<i>.<service>.<namespace>.svc.<domain>. RAFTKV_HOSTS_OVERRIDE=" +
        '"name=ip,..." replaces peer host names before connecting (a seam for tests).',
      _WIDTH,
      "",
    ),
  ];
  const heads = FLAGS.map((flag) => flag.name + (flag.value === null ? "" : ` ${flag.value}`));
  const column = Math.max(...heads.map((head) => head.length)) + 4;
  const width = _WIDTH - column;
  let group = "";
  FLAGS.forEach((flag, index) => {
    if (flag.group !== group) {
      group = flag.group;
      lines.push("", `${group}:`);
    }
    const aliases = flag.aliases.length === 0 ? "" : ` (also ${flag.aliases.join(", ")})`;
    const body = [
      ..._wrap(flag.description + aliases, width, "  "),
      ...(flag.default === "" ? [] : _wrap(`default: ${flag.default}`, width, "  ")),
      ...(flag.env === null ? [] : [`env: ${flag.env}`]),
    ];
    body.forEach((text, line) => {
      lines.push((line === 0 ? `  ${heads[index]}` : "").padEnd(column) + text);
    });
  });
  return lines.join("\n") + "\n";
}

function _wrap(text: string, width: number, indent: string): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = indent + word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  if (line !== "") lines.push(line);
  return lines;
}
