/**
 * Resolves a node's configuration from its command line, its environment and (in static join
 * mode) the cluster file, or (in k8s join mode) its StatefulSet identity.
 *
 * Precedence for every setting: flag, then `RAFTKV_*` environment variable, then default.
 *
 * @module
 */

import {
  type ApiTls,
  checkApiKeyPair,
  openApiWarning,
  readApiTls,
  readTokens,
  type TokenConfig,
} from "./api_security.ts";
import { parseClusterFile, type PeerConfig, urlPort } from "./cluster_file.ts";
import { parseDuration } from "./duration.ts";
import { ConfigError } from "./errors.ts";
import {
  closestName,
  DEFAULTS,
  ENV_PREFIX,
  FLAGS,
  HEALTHCHECK_CACERT_ENV,
  helpText,
  type RawValue,
  tokenizeArgv,
  TOKENS_ENV,
} from "./flags.ts";
import { derivePeersForK8s, parseStatefulSetHostname } from "./k8s.ts";
import { type PeerTlsConfig, type PeerTlsSettings, resolvePeerTls } from "./peer_tls.ts";

export { ConfigError } from "./errors.ts";
export type { PeerConfig } from "./cluster_file.ts";
export type { AccessRole, ApiTls, TokenConfig } from "./api_security.ts";
export { DEFAULTS, type FlagInfo, FLAGS, helpText } from "./flags.ts";
export { derivePeersForK8s, type K8sPeerOptions } from "./k8s.ts";
export { peerSecurityWarning, type PeerTlsConfig } from "./peer_tls.ts";

/** How a node finds its peers. */
export type JoinMode = "static" | "k8s";

/** The least severe level of log message printed. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** How log lines are written: plain text, or one JSON object a line. */
export type LogFormat = "text" | "json";

/** A node's fully resolved configuration. */
export interface NodeConfig {
  /** This node's id; always one of `peers`. */
  id: string;
  /** Port of the client HTTP API. */
  apiPort: number;
  /** Port of the Raft RPC server. */
  rpcPort: number;
  /** Address the peer server listens on: `--listen-host`, else the host of this node's rpcUrl. */
  rpcListenHost: string;
  /** Address the API server listens on: `--listen-host`, else the host of this node's apiUrl. */
  apiListenHost: string;
  /** Mutual TLS between peers (`--peer-cert`, `--peer-key`, `--peer-ca`), or null for h2c. */
  peerTls: PeerTlsConfig | null;
  /**
   * The data directory the storage paths were derived from: `--data-dir`, else `data/<id>`;
   * `null` when all four storage paths were given explicitly and no `--data-dir` was.
   */
  dataDir: string | null;
  /** Directory of the write-ahead log. Default `<dataDir>/wal`. */
  walDir: string;
  /** The write-ahead log's metadata file. Default `<dataDir>/log-metadata.json`. */
  logMetadataPath: string;
  /** File holding Raft's hard state. Default `<dataDir>/raft-state.json`. */
  raftStatePath: string;
  /** Directory of snapshots. Default `<dataDir>/snapshots`. */
  snapshotDir: string;
  /** How peers were found. Default `"static"`. */
  joinMode: JoinMode;
  /** The cluster file read (default `"cluster.config.json"`), or `null` in k8s join mode. */
  clusterConfigPath: string | null;
  /** Every member, this node included, in file (or ordinal) order. */
  peers: PeerConfig[];
  /** Base election timeout in milliseconds. Default 1000. */
  electionTimeoutMs: number;
  /** Leader heartbeat interval in milliseconds. Default 100. */
  heartbeatMs: number;
  /** Whether a leader hands leadership over before it stops on a signal. Default true. */
  transferOnShutdown: boolean;
  /**
   * Whether the node runs a compacting garbage collection once a burst of writes is over, to give
   * back the heap grown for it (it pauses the node while it runs). Default false.
   */
  compactHeap: boolean;
  /** Time limit of one Raft RPC in milliseconds. Default 2000. */
  rpcTimeoutMs: number;
  /** Time limit of one client API request in milliseconds. Default 5000. */
  apiTimeoutMs: number;
  /** Time limit of forwarding a request to the leader in milliseconds. Default 5000. */
  apiFwdTimeoutMs: number;
  /** Retries of a failed peer connection. Default 3. */
  maxConnRetryAttempts: number;
  /** Applied entries since the last snapshot that trigger a new one. Default 10000. */
  snapshotThreshold: number;
  /** Log bytes written since the last snapshot that trigger a new one. Default 67108864 (64 MiB). */
  snapshotThresholdBytes: number;
  /**
   * The API URL of a member of the running cluster this node joins (`--join`), or null. The
   * node then starts with no configuration and is added by the leader (see `RaftNode`).
   */
  join: string | null;
  /** A backup to start from when the node has no data yet (`--restore-from`), or null. */
  restoreFrom: string | null;
  /**
   * With the bootstrap members (`peers` when not joining), what a new cluster's id is made from
   * (`--cluster-token`). Default `"raftkv"`.
   */
  clusterToken: string;
  /** Largest key accepted, in bytes. Default 1024. */
  maxKeyBytes: number;
  /** Largest value accepted, in bytes. Default 1048576. */
  maxValueBytes: number;
  /** Client API requests in progress at once before 429. Default 1024. */
  maxInflightRequests: number;
  /** Bytes of request bodies in progress at once before 429. Default 64 MiB. */
  maxInflightBytes: number;
  /**
   * Bytes of answers one client (IP address) may have not yet read before its requests get 429;
   * at most `maxInflightBytes`; 0 for no per-client bound. Default a quarter of
   * `maxInflightBytes` (16 MiB).
   */
  maxClientUnreadBytes: number;
  /** Requests being forwarded to the leader at once before 429. Default 256. */
  maxForwardedRequests: number;
  /** Writes proposed by the leader but not yet applied before 503. Default 4096. */
  maxPendingProposals: number;
  /** Bytes of writes proposed by the leader but not yet applied before 503. Default 64 MiB. */
  maxPendingBytes: number;
  /**
   * The most bytes of data (UTF-8 keys and values) a leader takes: a write that would pass it
   * gets 507. 0 for none. Default 1 GiB.
   */
  quotaBytes: number;
  /** Backups (`GET /v1/snapshot`) streaming at once before 429. Default 2. */
  maxConcurrentBackups: number;
  /** Time limit of one backup download in milliseconds. Default 600000 (10 minutes). */
  backupTimeoutMs: number;
  /** Change events kept for watches. Default 10000. */
  watchHistoryEvents: number;
  /** Bytes of change events kept for watches (key, value and 64 per event). Default 64 MiB. */
  watchHistoryBytes: number;
  /** Events waiting for one slow watcher before it is cut off. Default 1024. */
  watchBufferEvents: number;
  /** Bytes of events waiting for one slow watcher before it is cut off. Default 16 MiB. */
  watchBufferBytes: number;
  /** Bytes of events waiting for all the node's watchers (each once). Default 256 MiB. */
  maxWatchBytes: number;
  /** Interval of a watch stream's heartbeats in milliseconds. Default 15000. */
  watchHeartbeatMs: number;
  /** Watch streams open at once on the node before 429. Default 10000. */
  maxWatchers: number;
  /** Least severe log level printed. Default `"info"`. */
  logLevel: LogLevel;
  /** How log lines are written. Default `"text"`. */
  logFormat: LogFormat;
  /** The client API's certificate and key (PEM) when it serves HTTPS, else `null`. */
  apiTls: ApiTls | null;
  /** The client API's bearer tokens, or `null` when it needs none (open). */
  tokens: TokenConfig[] | null;
  /**
   * Where the tokens came from when that was a file (`--tokens-file`): the node reads it again on
   * SIGHUP and when it changes. `null` for tokens from `RAFTKV_TOKENS`, or none.
   */
  tokensFile: RawValue | null;
  /**
   * Where the TLS files came from, for reloads ({@linkcode reloadTlsFiles}): the peer settings when
   * peers use mutual TLS, the API's certificate and key when it serves HTTPS; `null` otherwise.
   */
  tlsSources: TlsSources;
  /**
   * How often the node looks at its tokens file and TLS files for changes in milliseconds, or 0
   * for never (only SIGHUP loads them again). Default 5000.
   */
  reloadIntervalMs: number;
}

/** Where a node's TLS files came from (see {@linkcode NodeConfig.tlsSources}). */
export interface TlsSources {
  /** `--peer-cert`, `--peer-key` and `--peer-ca`, when peers use mutual TLS. */
  peer: PeerTlsSettings | null;
  /** `--api-cert` and `--api-key`, when the API serves HTTPS. */
  api: { cert: RawValue; key: RawValue } | null;
}

/**
 * Reads a node's TLS files again (on SIGHUP, or once they changed), with the checks they get at
 * start-up, and for the API's also that the key belongs to the certificate (the server is
 * swapped only once they load).
 *
 * @param config The node's id and where its files came from.
 * @param readFile Reads a file's text.
 * @param now The time the certificates must be valid at, in milliseconds since the epoch.
 * @returns The new PEM texts: the peers' when peers use TLS, the API's when it serves HTTPS.
 * @throws {ConfigError} As at start-up, naming the setting and file.
 */
export function reloadTlsFiles(
  config: Pick<NodeConfig, "id" | "tlsSources">,
  readFile: (path: string) => string,
  now: number = Date.now(),
): { peer: PeerTlsConfig | null; api: ApiTls | null } {
  const { peer, api } = config.tlsSources;
  const peerFiles = peer === null
    ? null
    : resolvePeerTls(peer, "https:", "cluster file", config.id, readFile, now);
  let apiFiles: ApiTls | null = null;
  if (api !== null) {
    apiFiles = readApiTls(api.cert, api.key, null, readFile, now)!;
    checkApiKeyPair(apiFiles, api.cert, api.key);
  }
  return { peer: peerFiles, api: apiFiles };
}

/** What {@linkcode parseArgs} decided the program should do. */
export type ParseResult =
  | {
    /** Run a node. */
    kind: "run";
    /** The node's configuration. */
    config: NodeConfig;
    /**
     * Problems worth logging that do not stop the node: `RAFTKV_*` environment variables that
     * match no flag (with a suggestion when one is close), and a client API open to the network
     * without tokens.
     */
    warnings: string[];
  }
  | {
    /** Print `text` to stdout and exit 0. */
    kind: "help";
    /** The help text, ending with a newline. */
    text: string;
  }
  | {
    /** Print the version and exit 0. */
    kind: "version";
  };

/** Options for {@linkcode parseArgs}. */
export interface ParseArgsOptions {
  /**
   * Returns this machine's hostname, used in k8s join mode only. Default: the `HOSTNAME`
   * environment variable from `env`.
   */
  hostname?: () => string | undefined;
  /**
   * The time the TLS certificates must be valid at, in milliseconds since the epoch. Default:
   * `Date.now()`.
   */
  now?: number;
}

// "cluster-file" is the original Go project's name for the static mode; both spellings work.
const _JOIN_MODES = ["static", "cluster-file", "k8s"] as const;
const _LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];
const _LOG_FORMATS: readonly LogFormat[] = ["text", "json"];
const _BOOLS = ["true", "false"] as const;
const _K8S_FLAGS = ["--k8s-replicas", "--k8s-service", "--k8s-namespace", "--k8s-cluster-domain"];

/**
 * Resolves the configuration from a command line, an environment and the cluster file.
 *
 * `--help` (or `-h`) and `--version` win over everything else once the command line itself
 * parses. Every other setting comes from its flag, else its `RAFTKV_*` variable (empty counts as
 * unset), else its default. In static join mode `--id` is required and must be in the cluster
 * file; the ports default to those of this node's URLs there. In k8s join mode the peers come
 * from {@linkcode derivePeersForK8s} and the cluster file is not read.
 *
 * @example Usage
 * ```ts
 * import { parseArgs } from "./config.ts";
 *
 * const file = JSON.stringify([
 *   { node_id: "node-1", rpc_url: "http://localhost:6666", api_url: "http://localhost:7777" },
 * ]);
 * const result = parseArgs(["--id", "node-1"], {}, () => file);
 * console.assert(result.kind === "run" && result.config.apiPort === 7777);
 * ```
 *
 * @param argv The arguments after the program's name.
 * @param env The environment, such as `Deno.env.toObject()`.
 * @param readFile Reads a file's text (the cluster file), such as `Deno.readTextFileSync`.
 * @param options Other injected inputs.
 * @returns What to do: run with a configuration, print help, or print the version.
 * @throws {ConfigError} On any invalid flag, variable or cluster file, with one message naming
 * the flag, variable or file and quoting the bad value.
 */
export function parseArgs(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  readFile: (path: string) => string,
  options: ParseArgsOptions = {},
): ParseResult {
  const parsed = tokenizeArgv(argv);
  if (parsed.switches.has("--help")) return { kind: "help", text: helpText() };
  if (parsed.switches.has("--version")) return { kind: "version" };
  const settings = new _Settings(parsed.values, env);
  const now = options.now ?? Date.now();

  const joinChoice = settings.choice("--join-mode", _JOIN_MODES) ?? DEFAULTS.joinMode;
  const joinMode: JoinMode = joinChoice === "cluster-file" ? "static" : joinChoice;
  let id: string;
  let peers: PeerConfig[];
  let apiPort: number;
  let rpcPort: number;
  let clusterConfigPath: string | null;
  let apiTls: ApiTls | null;
  const [certFile, keyFile] = [settings.raw("--api-cert"), settings.raw("--api-key")];
  if (joinMode === "static") {
    const misplaced = _K8S_FLAGS.find((name) => parsed.values.has(name));
    if (misplaced !== undefined) {
      throw new ConfigError(
        `Flag ${misplaced} applies only to --join-mode k8s, but the join mode is "static"`,
      );
    }
    const given = settings.raw("--id");
    if (given === undefined) {
      throw new ConfigError(
        "Missing the node id: pass --id <id> (or set RAFTKV_ID) in static join mode",
      );
    }
    id = given.value;
    clusterConfigPath = settings.string("--cluster-config-path") ?? DEFAULTS.clusterConfigPath;
    peers = _readClusterFile(clusterConfigPath, readFile);
    const self = peers.find((peer) => peer.id === id);
    if (self === undefined) {
      throw new ConfigError(
        `Invalid cluster file ${JSON.stringify(clusterConfigPath)}: it does not list this ` +
          `node's id ${JSON.stringify(id)} (from ${given.origin}); it lists ${
            peers.map((peer) => JSON.stringify(peer.id)).join(", ")
          }`,
      );
    }
    apiPort = settings.port("--api-port") ?? urlPort(self.apiUrl);
    apiTls = readApiTls(certFile, keyFile, self.apiUrl, readFile, now);
    rpcPort = settings.port("--rpc-port") ?? urlPort(self.rpcUrl);
  } else {
    if (parsed.values.has("--cluster-config-path")) {
      throw new ConfigError(
        'Flag --cluster-config-path applies only to --join-mode static, but the join mode is "k8s"',
      );
    }
    clusterConfigPath = null;
    const replicas = settings.positiveInt("--k8s-replicas");
    if (replicas === undefined) {
      throw new ConfigError(
        "Missing the replica count: pass --k8s-replicas <n> (or set RAFTKV_K8S_REPLICAS) in k8s " +
          "join mode",
      );
    }
    const hostname = options.hostname?.() ?? env.HOSTNAME;
    if (hostname === undefined || hostname === "") {
      throw new ConfigError(
        "Missing the pod's hostname: k8s join mode reads it from HOSTNAME, which is not set",
      );
    }
    apiPort = settings.port("--api-port") ?? DEFAULTS.k8sApiPort;
    rpcPort = settings.port("--rpc-port") ?? DEFAULTS.k8sRpcPort;
    peers = derivePeersForK8s({
      rpcScheme: settings.raw("--peer-cert") ? "https" : "http",
      hostname,
      replicas,
      service: settings.string("--k8s-service"),
      namespace: settings.string("--k8s-namespace") ?? _nonEmpty(env.POD_NAMESPACE),
      clusterDomain: settings.string("--k8s-cluster-domain"),
      rpcPort,
      apiPort,
    });
    // Every pod of a StatefulSet runs with the same settings: all serve HTTPS or none does.
    apiTls = readApiTls(certFile, keyFile, null, readFile, now);
    if (apiTls !== null) {
      peers = peers.map((p) => ({ ...p, apiUrl: p.apiUrl.replace(/^http:/, "https:") }));
    }
    const given = settings.raw("--id");
    const { setName, ordinal } = parseStatefulSetHostname(hostname);
    id = given?.value ?? `${setName}-${ordinal}`;
    if (!peers.some((peer) => peer.id === id)) {
      throw new ConfigError(
        `Invalid value for ${given?.origin ?? "--id"}: ${JSON.stringify(id)} is not one of ` +
          `the StatefulSet's pods ${setName}-0 to ${setName}-${replicas - 1}`,
      );
    }
  }
  if (apiPort === rpcPort) {
    throw new ConfigError(
      `The API port and the RPC port are both ${apiPort}: the two servers need different ports`,
    );
  }

  const listenHost = settings.string("--listen-host");
  if (listenHost !== undefined && /[\s/[\]]/.test(listenHost)) {
    throw new ConfigError(
      `Invalid value for ${settings.raw("--listen-host")?.origin}: ${
        JSON.stringify(listenHost)
      } is not a host name or IP address (write IPv6 addresses without brackets, such as "::")`,
    );
  }

  let join = _joinUrl(settings);
  if (joinMode === "k8s") {
    // The bootstrap pods form the cluster (--join does not apply to them); a pod beyond the
    // bootstrap replica count joins, through --join or else through pod 0.
    const { ordinal } = parseStatefulSetHostname(id);
    const bootstrap = settings.positiveInt("--k8s-replicas")!;
    join = ordinal < bootstrap ? null : join ?? peers[0]!.apiUrl;
  }
  // A joining node takes only its own URLs from the cluster file; the rest it learns.
  if (join !== null) peers = peers.filter((peer) => peer.id === id);
  const self = peers.find((peer) => peer.id === id)!;
  const peerTlsSettings: PeerTlsSettings = {
    cert: settings.raw("--peer-cert"),
    key: settings.raw("--peer-key"),
    ca: settings.raw("--peer-ca"),
  };
  const peerTls = resolvePeerTls(
    peerTlsSettings,
    joinMode === "k8s" ? null : new URL(self.rpcUrl).protocol as "http:" | "https:",
    `cluster file ${JSON.stringify(clusterConfigPath)}`,
    id,
    readFile,
    now,
  );

  const walDir = settings.string("--log-entry-path");
  const logMetadataPath = settings.string("--log-metadata-path");
  const raftStatePath = settings.string("--raft-state-path");
  const snapshotDir = settings.string("--snapshot-path");
  const explicitDataDir = settings.string("--data-dir");
  const allExplicit = walDir !== undefined && logMetadataPath !== undefined &&
    raftStatePath !== undefined && snapshotDir !== undefined;
  const dataDir = explicitDataDir ??
    (allExplicit ? null : `${DEFAULTS.dataDirParent}/${id}`);
  const base = (dataDir ?? "").replace(/(?<=.)\/+$/, "");

  const electionTimeoutMs = settings.duration("--election-timeout") ??
    DEFAULTS.electionTimeoutMs;
  const heartbeatMs = settings.duration("--heartbeat") ?? DEFAULTS.heartbeatMs;
  if (heartbeatMs >= electionTimeoutMs) {
    throw new ConfigError(
      `The heartbeat (${heartbeatMs}ms) must be shorter than the election timeout ` +
        `(${electionTimeoutMs}ms), or followers start elections while the leader is healthy`,
    );
  }
  if (electionTimeoutMs < 2 * heartbeatMs) {
    throw new ConfigError(
      `The election timeout (${electionTimeoutMs}ms) must be at least twice the heartbeat ` +
        `(${heartbeatMs}ms), or one late heartbeat starts an election`,
    );
  }

  const maxInflightBytes = settings.positiveInt("--max-inflight-bytes") ??
    DEFAULTS.maxInflightBytes;

  const config: NodeConfig = {
    id,
    apiPort,
    rpcPort,
    // Like etcd's listen URLs: a node listens where its own URLs say, unless told otherwise.
    rpcListenHost: listenHost ?? _urlHost(self.rpcUrl),
    apiListenHost: listenHost ?? _urlHost(self.apiUrl),
    peerTls,
    dataDir,
    walDir: walDir ?? _join(base, "wal"),
    logMetadataPath: logMetadataPath ?? _join(base, "log-metadata.json"),
    raftStatePath: raftStatePath ?? _join(base, "raft-state.json"),
    snapshotDir: snapshotDir ?? _join(base, "snapshots"),
    joinMode,
    clusterConfigPath,
    peers,
    electionTimeoutMs,
    heartbeatMs,
    transferOnShutdown: (settings.choice("--transfer-on-shutdown", _BOOLS) ??
      DEFAULTS.transferOnShutdown) === "true",
    compactHeap: (settings.choice("--compact-heap", _BOOLS) ?? DEFAULTS.compactHeap) === "true",
    rpcTimeoutMs: settings.duration("--rpc-timeout") ?? DEFAULTS.rpcTimeoutMs,
    apiTimeoutMs: settings.duration("--api-timeout") ?? DEFAULTS.apiTimeoutMs,
    apiFwdTimeoutMs: settings.duration("--api-fwd-timeout") ?? DEFAULTS.apiFwdTimeoutMs,
    maxConnRetryAttempts: settings.positiveInt("--max-conn-retry-attempts") ??
      DEFAULTS.maxConnRetryAttempts,
    snapshotThreshold: settings.positiveInt("--snapshot-threshold") ??
      DEFAULTS.snapshotThreshold,
    snapshotThresholdBytes: settings.positiveInt("--snapshot-threshold-bytes") ??
      DEFAULTS.snapshotThresholdBytes,
    restoreFrom: settings.string("--restore-from") ?? null,
    clusterToken: settings.string("--cluster-token") ?? DEFAULTS.clusterToken,
    join,
    maxKeyBytes: settings.positiveInt("--max-key-bytes") ?? DEFAULTS.maxKeyBytes,
    maxValueBytes: settings.positiveInt("--max-value-bytes") ?? DEFAULTS.maxValueBytes,
    maxInflightRequests: settings.positiveInt("--max-inflight-requests") ??
      DEFAULTS.maxInflightRequests,
    maxInflightBytes,
    maxClientUnreadBytes: _maxClientUnreadBytes(settings, maxInflightBytes),
    maxForwardedRequests: settings.positiveInt("--max-forwarded-requests") ??
      DEFAULTS.maxForwardedRequests,
    maxPendingProposals: settings.positiveInt("--max-pending-proposals") ??
      DEFAULTS.maxPendingProposals,
    maxPendingBytes: settings.positiveInt("--max-pending-bytes") ?? DEFAULTS.maxPendingBytes,
    quotaBytes: settings.positiveInt("--quota-bytes", true) ?? DEFAULTS.quotaBytes,
    maxConcurrentBackups: settings.positiveInt("--max-concurrent-backups") ??
      DEFAULTS.maxConcurrentBackups,
    backupTimeoutMs: settings.duration("--backup-timeout") ?? DEFAULTS.backupTimeoutMs,
    watchHistoryEvents: settings.positiveInt("--watch-history") ?? DEFAULTS.watchHistoryEvents,
    watchHistoryBytes: settings.positiveInt("--watch-history-bytes") ??
      DEFAULTS.watchHistoryBytes,
    watchBufferEvents: settings.positiveInt("--watch-buffer") ?? DEFAULTS.watchBufferEvents,
    watchBufferBytes: settings.positiveInt("--watch-buffer-bytes") ?? DEFAULTS.watchBufferBytes,
    maxWatchBytes: settings.positiveInt("--max-watch-bytes") ?? DEFAULTS.maxWatchBytes,
    watchHeartbeatMs: settings.duration("--watch-heartbeat") ?? DEFAULTS.watchHeartbeatMs,
    maxWatchers: settings.positiveInt("--max-watchers") ?? DEFAULTS.maxWatchers,
    logLevel: settings.choice("--log-level", _LOG_LEVELS) ?? DEFAULTS.logLevel,
    logFormat: settings.choice("--log-format", _LOG_FORMATS) ?? DEFAULTS.logFormat,
    apiTls,
    tokens: readTokens(settings.raw("--tokens-file"), _nonEmpty(env[TOKENS_ENV]), readFile),
    tokensFile: settings.raw("--tokens-file") ?? null,
    tlsSources: {
      peer: peerTls === null ? null : peerTlsSettings,
      api: apiTls === null ? null : { cert: certFile!, key: keyFile! },
    },
    reloadIntervalMs: _reloadInterval(settings),
  };
  const open = openApiWarning(config.apiListenHost, apiPort, config.tokens);
  const warnings = [..._unknownEnvWarnings(env), ...(open === null ? [] : [open])];
  return { kind: "run", config, warnings };
}

/**
 * `--max-client-unread-bytes`: 0 (off), or at most `--max-inflight-bytes` (a larger share would
 * never be reached: the node's budget is spent first); by default a quarter of it.
 */
function _maxClientUnreadBytes(settings: _Settings, maxInflightBytes: number): number {
  const bytes = settings.positiveInt("--max-client-unread-bytes", true);
  if (bytes === undefined) {
    return Math.max(1, Math.floor(maxInflightBytes / DEFAULTS.maxClientUnreadBytesDivisor));
  }
  if (bytes > maxInflightBytes) {
    throw _invalid(
      settings.raw("--max-client-unread-bytes")!,
      `is more than --max-inflight-bytes (${maxInflightBytes}): one client's share must fit in ` +
        "the node's (0 turns the per-client bound off)",
    );
  }
  return bytes;
}

/** `--reload-interval`: 0 (off), or 100 ms or more (each look reads every file). */
function _reloadInterval(settings: _Settings): number {
  const ms = settings.duration("--reload-interval", true);
  if (ms === undefined) return DEFAULTS.reloadIntervalMs;
  if (ms > 0 && ms < 100) {
    throw _invalid(settings.raw("--reload-interval")!, "is under 100ms (0 turns the looks off)");
  }
  return ms;
}

/** Looks settings up by flag, then environment variable, and validates them. */
class _Settings {
  #flags: ReadonlyMap<string, RawValue>;
  #env: Readonly<Record<string, string | undefined>>;

  constructor(
    flags: ReadonlyMap<string, RawValue>,
    env: Readonly<Record<string, string | undefined>>,
  ) {
    this.#flags = flags;
    this.#env = env;
  }

  raw(name: string): RawValue | undefined {
    const flagged = this.#flags.get(name);
    if (flagged !== undefined) return flagged;
    const variable = FLAGS.find((flag) => flag.name === name)?.env;
    if (variable === null || variable === undefined) return undefined;
    const value = _nonEmpty(this.#env[variable]);
    return value === undefined ? undefined : { value, origin: variable };
  }

  string(name: string): string | undefined {
    return this.raw(name)?.value;
  }

  /** A positive integer; with `zero`, 0 too (an "off"). */
  positiveInt(name: string, zero = false): number | undefined {
    const raw = this.raw(name);
    if (raw === undefined) return undefined;
    const value = /^\d+$/.test(raw.value) ? Number(raw.value) : NaN;
    if (!Number.isSafeInteger(value) || value < (zero ? 0 : 1)) {
      throw _invalid(raw, zero ? "is not a whole number" : "is not a positive integer");
    }
    return value;
  }

  port(name: string): number | undefined {
    const raw = this.raw(name);
    if (raw === undefined) return undefined;
    const value = /^\d+$/.test(raw.value) ? Number(raw.value) : NaN;
    if (!(value >= 1 && value <= 65535)) {
      throw _invalid(raw, "is not a port number (1-65535)");
    }
    return value;
  }

  duration(name: string, zero = false): number | undefined {
    const raw = this.raw(name);
    if (raw === undefined) return undefined;
    let ms: number;
    try {
      ms = parseDuration(raw.value);
    } catch (error) {
      throw new ConfigError(`Invalid value for ${raw.origin}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    if (ms === 0 && !zero) throw _invalid(raw, "is not a positive duration");
    return ms;
  }

  choice<T extends string>(name: string, choices: readonly T[]): T | undefined {
    const raw = this.raw(name);
    if (raw === undefined) return undefined;
    const found = choices.find((choice) => choice === raw.value);
    if (found === undefined) {
      throw _invalid(
        raw,
        `is not one of ${choices.map((choice) => JSON.stringify(choice)).join(", ")}`,
      );
    }
    return found;
  }
}

function _invalid(raw: RawValue, problem: string): ConfigError {
  return new ConfigError(
    `Invalid value for ${raw.origin}: ${JSON.stringify(raw.value)} ${problem}`,
  );
}

function _nonEmpty(value: string | undefined): string | undefined {
  return value === "" ? undefined : value;
}

/** The host of a URL as an address to listen on (IPv6 without brackets). */
function _urlHost(url: string): string {
  return new URL(url).hostname.replace(/^\[(.*)\]$/, "$1");
}

function _join(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

/** The `--join` URL, checked: an http(s) URL, or `host:port` for `http://host:port`. */
function _joinUrl(settings: _Settings): string | null {
  const raw = settings.raw("--join");
  if (raw === undefined || raw.value === "") return null;
  // As the client's --endpoints and a cluster file take it.
  const text = /^(?:[^/:[\]]+|\[[0-9A-Fa-f:.]+\]):\d+$/.test(raw.value)
    ? `http://${raw.value}`
    : raw.value;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(
      `Invalid value for ${raw.origin}: ${JSON.stringify(raw.value)} is not a URL ` +
        `(give the api_url of a member, such as http://10.0.0.1:8001)`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ConfigError(
      `Invalid value for ${raw.origin}: ${JSON.stringify(raw.value)} is not an http(s) URL`,
    );
  }
  return text.replace(/\/+$/, "");
}

function _readClusterFile(path: string, readFile: (path: string) => string): PeerConfig[] {
  let text: string;
  try {
    text = readFile(path);
  } catch (error) {
    throw new ConfigError(
      `Cannot read cluster file ${JSON.stringify(path)}: ${(error as Error).message}` +
        " (set --cluster-config-path, or use --join-mode k8s)",
      { cause: error },
    );
  }
  return parseClusterFile(text, path);
}

function _unknownEnvWarnings(env: Readonly<Record<string, string | undefined>>): string[] {
  const known = [
    ...FLAGS.flatMap((flag) => flag.env === null ? [] : [flag.env]),
    TOKENS_ENV,
    HEALTHCHECK_CACERT_ENV,
  ];
  return Object.keys(env)
    .filter((name) => name.startsWith(ENV_PREFIX) && !known.includes(name))
    .sort()
    .map((name) => {
      const suggestion = _closestEnv(name, known);
      return `Ignoring unknown environment variable ${name}` +
        (suggestion === undefined ? "" : ` (did you mean ${suggestion}?)`);
    });
}

function _closestEnv(name: string, known: readonly string[]): string | undefined {
  // Reuse the flag matcher on the flag-shaped spelling of the variable names.
  const asFlag = (variable: string) =>
    "--" + variable.slice(ENV_PREFIX.length).toLowerCase().replaceAll("_", "-");
  const flags = known.map(asFlag);
  const match = closestName(asFlag(name), flags);
  return match === undefined ? undefined : known[flags.indexOf(match)];
}
