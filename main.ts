/**
 * raftkv: a replicated key-value store built on Raft.
 *
 * Wiring only: flags -> config -> storage -> node -> servers. Run `raftkv --help` for the flags.
 *
 * @module
 */

import { X509Certificate } from "node:crypto";
import { lookup } from "node:dns/promises";
import denoJson from "./deno.json" with { type: "json" };
import {
  ConfigError,
  type NodeConfig,
  parseArgs,
  peerSecurityWarning,
  reloadTlsFiles,
} from "./src/cli/config.ts";
import { type ApiTls, reloadTokensFile } from "./src/cli/api_security.ts";
import type { PeerTlsConfig } from "./src/cli/peer_tls.ts";
import { FileChanges } from "./src/cli/file_changes.ts";
import {
  applyHostsOverride,
  DEBUG_STALE_READS_ENV,
  dropNodePermissions,
  ENV_VARS,
  HOSTS_OVERRIDE_ENV,
  parseHostsOverride,
  PERMISSION_FLAGS,
  readEnv,
} from "./src/cli/env.ts";
import { healthcheck } from "./src/cli/healthcheck.ts";
import { clientArgs, runClient } from "./src/cli/client/client.ts";
import { createLogger, type Logger, rateLimited } from "./src/cli/logger.ts";
import { createApiHandler, createForwarder } from "./src/api/handler.ts";
import { decodeCommand } from "./src/kv/state_machine.ts";
import { applyDebugFaults } from "./src/node/debug_faults.ts";
import { bootstrapClusterId } from "./src/node/cluster_id.ts";
import { openDiskStorage } from "./src/node/disk_storage.ts";
import { registerTimingGauges } from "./src/node/node_metrics.ts";
import { RaftNode } from "./src/node/raft_node.ts";
import { PeerValidator } from "./src/raft/validate.ts";
import { requestJoin } from "./src/cli/join.ts";
import { apiPortWarning } from "./src/cli/fetch_ports.ts";
import type { TransportHandlers } from "./src/transport/transport.ts";
import {
  countPeerRefusals,
  createPeerHandler,
  HttpTransport,
} from "./src/transport/http_transport.ts";
import { MetricsRegistry } from "./src/util/metrics.ts";
import { registerProcessMetrics } from "./src/util/process_metrics.ts";
import { type ServeAgain, serveAgain, type ServeOptions } from "./src/util/serve.ts";
import { compactingCollector, HeapReducer } from "./src/util/heap_reducer.ts";
import { serveMutualTls, type TlsServer } from "./src/transport/tls_server.ts";

/** The program's version, from deno.json (embedded at compile time). */
export const VERSION: string = denoJson.version;

export {
  applyHostsOverride,
  ENV_VARS,
  healthcheck,
  HOSTS_OVERRIDE_ENV,
  parseHostsOverride,
  PERMISSION_FLAGS,
};

/** Runs a node until SIGINT/SIGTERM; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  if (args[0] === "healthcheck") return await healthcheck(args.slice(1));
  const client = clientArgs(args);
  if (client !== null) return await runClient(client);
  // SIGHUP's default action stops the process: one that comes while the node starts (a reload
  // sent to every node, one of them restarting) is held, and acted on once the node runs.
  using hangups = _heldSignal("SIGHUP");
  let config: NodeConfig;
  let log: Logger;
  // The id a new cluster gets, from the ids of the cluster file's members and the token; a
  // joining node learns its cluster's instead.
  let clusterId: string | undefined;
  // Every file start-up read, as it read it: the contents in force that later looks compare with.
  const loaded = new Map<string, string>();
  try {
    const parsed = parseArgs(args, readEnv(), (p) => {
      const text = Deno.readTextFileSync(p);
      loaded.set(p, text);
      return text;
    });
    if (parsed.kind === "help") {
      console.log(parsed.text);
      return 0;
    }
    if (parsed.kind === "version") {
      console.log(`raftkv ${VERSION} (deno ${Deno.version.deno}, v8 ${Deno.version.v8})`);
      return 0;
    }
    const hosts = parseHostsOverride(Deno.env.get(HOSTS_OVERRIDE_ENV) ?? "");
    config = { ...parsed.config, peers: applyHostsOverride(parsed.config.peers, hosts) };
    clusterId = config.join === null
      ? bootstrapClusterId(config.peers.map((p) => p.id), config.clusterToken)
      : undefined;
    log = createLogger(config.id, config.logLevel, console, config.logFormat);
    // A host that does not resolve cannot be listened on: said in one line, before the warnings
    // (which say where the servers listen).
    const unresolved = await _unresolvedListenHost(config);
    if (unresolved !== null) {
      log.error(unresolved);
      return 2;
    }
    for (const w of parsed.warnings) log.warn(w);
    for (const [name, address] of hosts) log.info(`${HOSTS_OVERRIDE_ENV}: ${name} -> ${address}`);
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`raftkv: ${e.message}`);
      console.error("Run 'raftkv --help' for the flags.");
      return 2;
    }
    throw e;
  }
  dropNodePermissions();

  // Every layer registers its metrics here; GET /metrics on the API port renders them.
  const metrics = new MetricsRegistry();
  // The timing the node runs with, for the dashboard and alerts to judge its last contacts by.
  registerTimingGauges(metrics, config);
  // CPU, memory and file descriptors, as a Go node exports them (process_*), and the JS heap.
  registerProcessMetrics(metrics);
  let storage;
  try {
    storage = await openDiskStorage(config, {
      nodeId: config.id,
      ...(clusterId === undefined ? {} : { clusterId }),
      restoreFrom: config.restoreFrom,
      restoreVoters: config.peers.map((p) => p.id),
      // Recorded with the cluster id at the first start: later starts take these, not the file's.
      ...(clusterId === undefined ? {} : { initialVoters: config.peers.map((p) => p.id) }),
      onNotice: (m) => log.info(m),
      metrics,
    });
  } catch (e) {
    log.error(`cannot open the node's data: ${_message(e)}${_dataPathsOf(config, e)}`);
    return 1;
  }

  // Every peer message is checked before it reaches the node: members only, sane fields,
  // commands that decode. The members follow the configuration (membership changes).
  const validator = new PeerValidator({
    self: config.id,
    members: config.peers.map((p) => p.id),
    checkEntryData: decodeCommand,
  });
  // Changed in place as the configuration changes: the API forwards to the leader's rpc_url.
  const liveMembers = [...config.peers];
  // With --join, only a node with no data asks to be added; one with data is a member already.
  // A term alone is no data: a node added that went down before its first snapshot arrived has
  // one, and no configuration, so no addresses: asking again tells it the members.
  const joinNow = config.join !== null && storage.snapshot === null &&
    storage.entries.length === 0;
  if (config.join !== null && !joinNow) {
    log.info(`--join ${config.join} ignored: this node has data; it uses the configuration in it`);
  }
  let handlers: TransportHandlers | undefined;
  let transport: HttpTransport | undefined;
  let fatal: unknown = null;
  const stopped = Promise.withResolvers<void>();
  const node = new RaftNode({
    id: config.id,
    members: config.peers,
    join: config.join !== null,
    onMembership: (members, open) => {
      validator.setMembers(members.map((m) => m.id), open);
      liveMembers.splice(0, liveMembers.length, ...members);
    },
    storage,
    heartbeatMs: config.heartbeatMs,
    electionTimeoutMs: config.electionTimeoutMs,
    snapshotThreshold: config.snapshotThreshold,
    snapshotThresholdBytes: config.snapshotThresholdBytes,
    maxPendingProposals: config.maxPendingProposals,
    maxPendingBytes: config.maxPendingBytes,
    quotaBytes: config.quotaBytes,
    watchHistoryEvents: config.watchHistoryEvents,
    watchHistoryBytes: config.watchHistoryBytes,
    metrics,
    logger: log,
    onFatal: (e) => {
      fatal = e;
      stopped.resolve();
    },
    transport: (h) => {
      handlers = h;
      return transport = new HttpTransport(h, {
        self: config.id,
        peers: config.peers,
        rpcTimeoutMs: config.rpcTimeoutMs,
        maxConnRetryAttempts: config.maxConnRetryAttempts,
        logger: rateLimited(log, 5_000),
        metrics,
        ...(config.peerTls === null ? {} : { tls: config.peerTls }),
      });
    },
  });

  // Forwards go to the leader's peer port, over mutual TLS when peers use it; writes pending at
  // the same time go together, as one batch.
  const forwarder = createForwarder(
    config.peerTls === null
      ? { batch: true }
      : { batch: true, ca: config.peerTls.ca, cert: config.peerTls.cert, key: config.peerTls.key },
  );
  const faults = { staleReads: Deno.env.get(DEBUG_STALE_READS_ENV) }; // tests only, off by default
  const api = createApiHandler(applyDebugFaults(node, faults, log), {
    selfId: config.id,
    members: liveMembers,
    tokens: config.tokens ?? [],
    forward: forwarder.forward,
    logRefusal: rateLimited(log, 5_000).warn,
    apiTimeoutMs: config.apiTimeoutMs,
    apiFwdTimeoutMs: config.apiFwdTimeoutMs,
    maxKeyBytes: config.maxKeyBytes,
    maxValueBytes: config.maxValueBytes,
    maxInflightRequests: config.maxInflightRequests,
    maxInflightBytes: config.maxInflightBytes,
    maxClientUnreadBytes: config.maxClientUnreadBytes,
    maxForwardedRequests: config.maxForwardedRequests,
    maxConcurrentBackups: config.maxConcurrentBackups,
    backupTimeoutMs: config.backupTimeoutMs,
    watchBufferEvents: config.watchBufferEvents,
    watchBufferBytes: config.watchBufferBytes,
    maxWatchBytes: config.maxWatchBytes,
    watchHeartbeatMs: config.watchHeartbeatMs,
    maxWatchers: config.maxWatchers,
    metrics,
    logError: (line) => log.error(line),
  });
  // raftkv_peer_refusals_total{reason}: every refusal on the peer port, the mutual-TLS server's
  // own included, so a forged or misconfigured peer shows in the metrics, not only in the log.
  const onPeerRefusal = countPeerRefusals(metrics);
  const peerHandler = createPeerHandler(handlers!, {
    self: config.id,
    validator,
    // A batch is at most the sender's maxBatchBytes (8 MiB), or one larger message: an append
    // of a single command as large as the key and value limits allow.
    maxBodyBytes: Math.max(16 << 20, config.maxKeyBytes + config.maxValueBytes + (1 << 20)),
    // With mutual TLS the sender is the identity its certificate proves, never just a header.
    requirePeerIdentity: config.peerTls !== null,
    logger: rateLimited(log, 5_000),
    // Client requests a follower forwards, already authorised there.
    forward: api.forwarded,
    onRefusal: onPeerRefusal,
  });
  const peerOnListen = (a: { hostname: string; port: number }) =>
    log.info(
      `peer RPC listening on ${a.hostname}:${a.port}` +
        (config.peerTls === null ? " (h2c)" : " (TLS, client certificates required)"),
    );
  let peerTlsServer: TlsServer | null = null;
  const apiOptions: ServeOptions = {
    port: config.apiPort,
    hostname: config.apiListenHost,
    ...config.apiTls,
    onListen: (a) =>
      log.info(
        `REST API listening on ${config.apiTls ? "https" : "http"}://${a.hostname}:${a.port}`,
      ),
  };
  let apiServer: ServeAgain;
  try {
    const peerPort = `the peer port ${config.rpcListenHost}:${config.rpcPort}`;
    if (config.peerTls === null) {
      await _listening(peerPort, () =>
        serveAgain(
          "peer RPC",
          { port: config.rpcPort, hostname: config.rpcListenHost, onListen: peerOnListen },
          (req) => peerHandler(req, { peer: null }),
          log,
        ));
    } else {
      // Never closed either (see the shutdown below).
      peerTlsServer = await _listening(peerPort, () =>
        serveMutualTls({
          ...config.peerTls!,
          port: config.rpcPort,
          hostname: config.rpcListenHost,
          onListen: peerOnListen,
          logger: rateLimited(log, 5_000),
          // A connection proving a non-member (a stranger, a removed member, one this node does
          // not know yet) is ended once answered (see serveMutualTls).
          isMember: (id) => validator.checkSender(id) === null,
          onRefusal: onPeerRefusal,
        }, peerHandler));
    }
    apiServer = await _listening(
      `the API port ${config.apiListenHost}:${config.apiPort}`,
      () => serveAgain("REST API", apiOptions, api, log),
    );
  } catch (e) {
    if (!(e instanceof _CannotListen)) throw e;
    log.error(e.message);
    return e.exitCode;
  }
  const exposed = peerSecurityWarning(config.rpcListenHost, config.peerTls !== null);
  if (exposed !== null) log.warn(exposed);
  const own = config.peers.find((p) => p.id === config.id);
  const blockedApi = own === undefined ? null : apiPortWarning(own.apiUrl);
  if (blockedApi !== null) log.warn(blockedApi);
  // When each certificate in force expires, for alerts; set again when it is reloaded.
  const expiry = metrics.gaugeVec(
    "raftkv_tls_certificate_expiry_timestamp_seconds",
    "When the certificate this node presents expires (seconds since the epoch), by use: peer " +
      "(mutual TLS) or api (HTTPS); set again when it is reloaded",
    ["use"],
  );
  const setExpiry = (use: "peer" | "api", pem: string) => {
    try {
      const at = Date.parse(new X509Certificate(pem).validTo);
      if (Number.isFinite(at)) expiry.labels(use).set(at / 1000);
    } catch {
      // The server took it, so it serves; only its expiry stays unknown.
    }
  };
  const reloads = metrics.counterVec(
    "raftkv_reloads_total",
    "Loads of changed files (on SIGHUP or found changed) by what was loaded: tokens, peer (the " +
      "peer TLS files) or api (the API's certificate), and result: ok, or failed (the files in " +
      "force stay in force; the log says why)",
    ["what", "result"],
  );
  if (config.peerTls !== null) setExpiry("peer", config.peerTls.cert);
  if (config.apiTls !== null) setExpiry("api", config.apiTls.cert);
  node.start();
  const cluster = node.status().cluster_id;
  log.info(
    `started ${config.id} with ${node.status().members.length} members` +
      (cluster === undefined ? "" : ` (cluster ${cluster})`),
  );
  const joining = new AbortController();
  if (joinNow) {
    const self = config.peers.find((p) => p.id === config.id)!;
    requestJoin({
      joinUrl: config.join!,
      self,
      token: Deno.env.get("RAFTKV_TOKEN"),
      // An https:// member's certificate may come from the cluster's own CA, as the peers' do.
      caCerts: config.peerTls === null ? undefined : [config.peerTls.ca],
      log,
      signal: joining.signal,
      onMembers: (rows) =>
        node.learnAddresses(
          rows.map((m) => ({ id: m.node_id, rpcUrl: m.rpc_url, apiUrl: m.api_url })),
        ),
      onClusterId: (id) => node.confirmCluster(id, config.join!),
    }).catch((e) => log.error(`joining failed: ${_message(e)}`));
  }

  // After a burst of writes, give the heap V8 grew for it back (see src/util/heap_reducer.ts).
  const reducer = config.compactHeap
    ? _startHeapReducer(() => node.status().applied_index, log)
    : undefined;

  const onSignal = () => stopped.resolve();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  // SIGHUP reads the tokens file and the TLS files again: tokens are added, revoked or re-roled
  // and certificates rotated without a restart. So does a change to those files, looked for every
  // --reload-interval.
  const reload = (reason: string, groups: readonly string[]) => {
    // The contents the look (or the signal's settle) just read: what held still is what loads.
    const read = (p: string) => changes.text(p);
    if (groups.includes("tokens")) {
      const said = reloadTokensFile(config.tokensFile, (t) => api.reloadTokens(t), read, reason);
      log[said.level](said.message);
      if (said.level !== "warn") {
        reloads.labels("tokens", said.level === "info" ? "ok" : "failed").inc();
      }
    }
    const { peer, api: apiFiles } = config.tlsSources;
    const tlsSources = {
      peer: groups.includes("peer") ? peer : null,
      api: groups.includes("api") ? apiFiles : null,
    };
    if (tlsSources.peer === null && tlsSources.api === null) return;
    _reloadTls(reason, { ...config, tlsSources }, read, log, {
      peer: (files) => {
        peerTlsServer?.setCredentials(files);
        transport?.setTls(files);
        forwarder.setTls(files);
        setExpiry("peer", files.cert);
      },
      api: async (files) => {
        await apiServer.relisten({ ...apiOptions, ...files });
        setExpiry("api", files.cert);
      },
      counted: (what, ok) => reloads.labels(what, ok ? "ok" : "failed").inc(),
    });
  };
  // The looks read without blocking (a file system that hangs must not stop the node), and they
  // and signals take turns: a look never compares with contents a signal is loading.
  const changes = new FileChanges(_reloadedFiles(config), (p) => Deno.readTextFile(p));
  // Every series a reload can move exists from the start, at 0: an alert on its increase then
  // fires on the first failure too (a series that appears at 1 has not increased).
  for (const what of changes.groups) {
    for (const result of ["ok", "failed"]) reloads.labels(what, result);
  }
  await changes.settle(changes.groups, loaded);
  let turns = Promise.resolve();
  let looks = 0;
  const inTurn = (work: () => Promise<void>) => {
    turns = turns.then(work).catch((e) => log.error(`reloading files failed: ${_message(e)}`));
  };
  const looking = config.reloadIntervalMs > 0 && changes.groups.length > 0
    ? setInterval(() => {
      if (looks > 0) return; // the last look has not ended (a slow file system)
      looks++;
      inTurn(async () => {
        const changed = await changes.poll().finally(() => looks--);
        if (changed.length > 0) reload("files changed", changed);
      });
    }, config.reloadIntervalMs)
    : undefined;
  hangups.handle((early) => {
    const tls = config.tlsSources.peer !== null || config.tlsSources.api !== null;
    // Without TLS, SIGHUP says so even when the node has no tokens file.
    const groups = config.tokens !== null || !tls ? ["tokens", "peer", "api"] : ["peer", "api"];
    inTurn(async () => {
      await changes.settle();
      reload(early ? "SIGHUP while starting" : "SIGHUP", groups);
    });
  });
  await stopped.promise;
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);

  joining.abort();
  clearInterval(reducer);
  clearInterval(looking);
  log.info(fatal ? "stopping after a fatal error" : "stopping");
  if (!fatal && config.transferOnShutdown) await _handOver(node, config.electionTimeoutMs, log);
  // Stop taking requests, finish the write in flight, then close the peer side. A server's
  // shutdown waits for idle HTTP/2 connections (a silent client) forever: give it a deadline.
  // Watch streams never end by themselves: end them first, each with a final event.
  node.closeWatches();
  // After a fatal error nothing is in flight to finish: stopping the node first answers the
  // requests waiting on it at once (outcome unknown), which the API's shutdown would otherwise
  // wait for until its deadline.
  if (fatal) await node.stop();
  await _within(apiServer.shutdown(), 3_000);
  await node.stop();
  forwarder.close();
  // The peer server is not shut down gracefully: its connections close when the process exits.
  // A graceful shutdown sends GOAWAY to the peers' node:http2 clients, and Deno's nghttp2 can
  // abort the whole peer process on a GOAWAY that arrives while requests are in flight
  // (denoland/deno#36788): one node's restart would kill another. A closed socket is handled.
  log.info("stopped");
  return fatal ? 1 : 0;
}

/**
 * Reads the TLS files again (on SIGHUP, or because they changed: `reason` says which, in the
 * log) and puts them in force: the peers' through `apply.peer` (the peer server and the clients),
 * the API's through `apply.api`. Files that fail the checks change nothing; each outcome is
 * logged and counted through `apply.counted`.
 */
function _reloadTls(
  reason: string,
  config: NodeConfig,
  read: (path: string) => string,
  log: Logger,
  apply: {
    peer(files: PeerTlsConfig): void;
    api(files: ApiTls): Promise<void>;
    counted(what: "peer" | "api", ok: boolean): void;
  },
): void {
  let files;
  try {
    files = reloadTlsFiles(config, read);
  } catch (e) {
    if (config.tlsSources.peer !== null) apply.counted("peer", false);
    if (config.tlsSources.api !== null) apply.counted("api", false);
    log.error(
      `${reason}: could not reload the TLS files (${
        _message(e)
      }); the certificates in force stay in force`,
    );
    return;
  }
  const { peer, api } = files;
  if (peer !== null) {
    try {
      apply.peer(peer);
      apply.counted("peer", true);
      log.info(
        `${reason}: reloaded the peer TLS files: ${
          _describeCert(peer.cert)
        }, for connections opened ` +
          "from now on",
      );
    } catch (e) {
      apply.counted("peer", false);
      log.error(
        `${reason}: could not use the new peer TLS files (${
          _message(e)
        }); the certificates in force stay in force`,
      );
    }
  }
  if (api !== null) {
    apply.api(api).then(
      () => {
        apply.counted("api", true);
        log.info(`${reason}: reloaded the API's certificate: ${_describeCert(api.cert)}`);
      },
      (e) => {
        apply.counted("api", false);
        log.error(
          `${reason}: the API could not listen with the new certificate (${
            _message(e)
          }); it listens with the one in force`,
        );
      },
    );
  }
}

/** A server's port could not be had: said in one line, not with a stack trace. */
class _CannotListen extends Error {
  /** 2 when the configuration names a host that does not resolve, else 1. */
  exitCode: 1 | 2 = 1;
}

/**
 * Runs a server's first listen, turning the errors of a port that cannot be had (in use, not an
 * address of this machine, not allowed, a host that does not resolve) into a
 * {@linkcode _CannotListen} naming it.
 */
async function _listening<T>(what: string, listen: () => T | Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (e) {
    const busy = e instanceof Deno.errors.AddrInUse;
    // Deno's error for a host name that does not resolve has no class of its own.
    const unresolved = e instanceof Error && /failed to lookup address/i.test(e.message);
    if (
      busy || unresolved || e instanceof Deno.errors.AddrNotAvailable ||
      e instanceof Deno.errors.PermissionDenied
    ) {
      const error = new _CannotListen(
        `cannot listen on ${what}: ${_message(e)}` +
          (busy ? " (another process has it: another node, or this one not yet stopped?)" : ""),
        { cause: e },
      );
      if (unresolved) error.exitCode = 2;
      throw error;
    }
    throw e;
  }
}

/**
 * The first host the servers would listen on that does not resolve, said in one line that names
 * where it was configured, or `null` when both resolve.
 */
async function _unresolvedListenHost(config: NodeConfig): Promise<string | null> {
  const self = config.peers.find((p) => p.id === config.id);
  const servers = [
    { host: config.rpcListenHost, url: self?.rpcUrl, field: "rpc_url", port: config.rpcPort },
    { host: config.apiListenHost, url: self?.apiUrl, field: "api_url", port: config.apiPort },
  ];
  for (const { host, url, field, port } of servers) {
    try {
      await lookup(host);
    } catch (e) {
      const fromUrl = url !== undefined &&
        new URL(url).hostname.replace(/^\[(.*)\]$/, "$1") === host;
      const where = !fromUrl
        ? "--listen-host (or RAFTKV_LISTEN_HOST)"
        : config.clusterConfigPath === null
        ? `${config.id}'s ${field}`
        : `${config.id}'s ${field} in the cluster file ${JSON.stringify(config.clusterConfigPath)}`;
      return `cannot listen on ${host}:${port}: the host ${JSON.stringify(host)}, from ${where}, ` +
        `does not resolve to an address (${_message(e)}); set --listen-host to an ` +
        "address of this machine (0.0.0.0 is every interface), or correct the name";
    }
  }
  return null;
}

/**
 * The configured paths of the node's data, said after an error from opening them that names none
 * (Deno's errors from opening a file often do not): the one that cannot be read when that can
 * be told, else all of them. Empty when the error names one of them already.
 */
function _dataPathsOf(config: NodeConfig, e: unknown): string {
  const paths: [string, string][] = [
    ["the WAL directory", config.walDir],
    ["the snapshot directory", config.snapshotDir],
    ["the hard state file", config.raftStatePath],
    ["the log metadata file", config.logMetadataPath],
  ];
  if (config.dataDir !== null) paths.unshift(["the data directory", config.dataDir]);
  const message = _message(e);
  const named = [...paths.map(([, path]) => path), config.restoreFrom ?? ""].filter((p) => p);
  if (named.some((path) => message.includes(path))) return "";
  // A file missing is no fault here (a new node has no log metadata yet): not one to blame.
  if (e instanceof Deno.errors.NotFound) return "";
  // Read each one as opening the data does: the first to fail as the error did is the one.
  const failing = e instanceof Error
    ? paths.find(([, path]) => {
      try {
        if (Deno.statSync(path).isDirectory) {
          for (const _ of Deno.readDirSync(path)) break;
        } else Deno.openSync(path).close();
        return false;
      } catch (again) {
        return again instanceof Error && again.constructor === e.constructor;
      }
    })
    : undefined;
  if (failing !== undefined) return `: ${failing[0]} ${JSON.stringify(failing[1])}`;
  return `; its paths: ${
    paths.map(([what, path]) => `${what} ${JSON.stringify(path)}`).join(", ")
  }`;
}

/** The files a node loads again when they change, by group (see `FileChanges`). */
function _reloadedFiles(config: NodeConfig): Record<string, string[]> {
  const { peer, api } = config.tlsSources;
  const paths = (...raws: ({ value: string } | undefined)[]) =>
    raws.flatMap((raw) => raw === undefined ? [] : [raw.value]);
  return {
    tokens: paths(config.tokensFile ?? undefined),
    peer: peer === null ? [] : paths(peer.cert, peer.key, peer.ca),
    api: api === null ? [] : paths(api.cert, api.key),
  };
}

/**
 * Listens for `signal` from now on (where the system has it): signals that come before
 * `handle` is given are held and passed to it then, as one (`early` true); later ones are passed
 * as they come. Disposing stops listening.
 */
function _heldSignal(signal: Deno.Signal): Disposable & {
  handle(handler: (early: boolean) => void): void;
} {
  if (Deno.build.os === "windows") return { handle() {}, [Symbol.dispose]() {} };
  let handler: ((early: boolean) => void) | null = null;
  let held = false;
  const listener = () => {
    if (handler === null) held = true;
    else handler(false);
  };
  Deno.addSignalListener(signal, listener);
  return {
    handle(given) {
      handler = given;
      if (held) given(true);
      held = false;
    },
    [Symbol.dispose]: () => Deno.removeSignalListener(signal, listener),
  };
}

/** A certificate's subject and expiry, for the log. */
function _describeCert(pem: string): string {
  try {
    const cert = new X509Certificate(pem);
    return `${cert.subject.replaceAll("\n", ", ")}, valid until ${cert.validTo}`;
  } catch {
    return "a certificate";
  }
}

/** Checks every 2 s whether a burst of work is over and the heap worth compacting. */
function _startHeapReducer(
  activity: () => number,
  log: Logger,
): ReturnType<typeof setInterval> | undefined {
  const collect = compactingCollector();
  if (collect === null) {
    log.info("heap compaction after bursts is not available in this runtime");
    return undefined;
  }
  const mib = (n: number) => (n / 1048576).toFixed(0);
  const reducer = new HeapReducer({
    activity,
    collect,
    onCollect: (before, after, ms) =>
      log.info(
        `heap compacted after a burst: ${mib(before.heapTotal)} MiB committed (${
          mib(before.heapUsed)
        } MiB used) -> ${mib(after.heapTotal)} MiB (${mib(after.heapUsed)} MiB) in ${
          ms.toFixed(0)
        } ms`,
      ),
  });
  const timer = setInterval(() => reducer.check(), 2_000);
  Deno.unrefTimer(timer);
  return timer;
}

/**
 * A leader about to stop hands leadership to the most caught-up voter first (within `ms`), so
 * the cluster gets a new leader at once instead of after an election timeout; writes arriving
 * meanwhile are forwarded to it. Anything that goes wrong is logged, and the node stops anyway.
 */
async function _handOver(node: RaftNode, ms: number, log: Logger): Promise<void> {
  const status = node.status();
  if (status.role !== "leader" || status.members.length < 2) return;
  try {
    const { leader } = await node.transferLeadership(null, AbortSignal.timeout(ms));
    log.info(`handed leadership to ${leader} before stopping`);
  } catch (e) {
    log.warn(`could not hand leadership over before stopping (${_message(e)}); stopping anyway`);
  }
}

function _message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Waits for `promise`, but no longer than `ms`. */
function _within(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
  return Promise.race([promise.then(() => {}, () => {}), deadline]).finally(() =>
    clearTimeout(timer)
  );
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
