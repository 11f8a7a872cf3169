/**
 * raftkv: a replicated key-value store built on Raft.
 *
 * Wiring only: flags -> config -> storage -> node -> servers. Run `raftkv --help` for the flags.
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };
import { ConfigError, type NodeConfig, parseArgs, type PeerConfig } from "./src/cli/config.ts";
import { DEFAULTS, ENV_PREFIX, FLAGS } from "./src/cli/flags.ts";
import { createLogger, type Logger } from "./src/cli/logger.ts";
import { closeForwarder, createApiHandler } from "./src/api/handler.ts";
import { openDiskStorage } from "./src/node/disk_storage.ts";
import { RaftNode } from "./src/node/raft_node.ts";
import type { TransportHandlers } from "./src/transport/transport.ts";
import { createPeerHandler, HttpTransport } from "./src/transport/http_transport.ts";

/** The program's version, from deno.json (embedded at compile time). */
export const VERSION: string = denoJson.version;

/**
 * Test and operations seam: `name=address,name=address` maps peer host names to addresses before
 * the node connects to them (see {@linkcode applyHostsOverride}), for running k8s join mode where
 * the pods' DNS names do not resolve, such as several nodes on loopback addresses in one test.
 */
export const HOSTS_OVERRIDE_ENV = "RAFTKV_HOSTS_OVERRIDE";

/**
 * Every environment variable the program reads: one per flag, `HOSTNAME` and `POD_NAMESPACE`
 * (k8s join mode) and {@linkcode HOSTS_OVERRIDE_ENV}. The compiled binary may read only these.
 */
export const ENV_VARS: readonly string[] = [
  ...FLAGS.flatMap((flag) => flag.env === null ? [] : [flag.env]),
  "HOSTNAME",
  "POD_NAMESPACE",
  HOSTS_OVERRIDE_ENV,
];

/** Runs a node until SIGINT/SIGTERM; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  if (args[0] === "healthcheck") return await healthcheck(args.slice(1));
  let config: NodeConfig;
  let log: Logger;
  try {
    const parsed = parseArgs(args, _readEnv(), (p) => Deno.readTextFileSync(p));
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
    log = createLogger(config.id, config.logLevel);
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

  let storage;
  try {
    storage = await openDiskStorage(config, {
      restoreFrom: config.restoreFrom,
      onNotice: (m) => log.info(m),
    });
  } catch (e) {
    log.error(`cannot open the node's data: ${e instanceof Error ? e.message : e}`);
    return 1;
  }

  let handlers: TransportHandlers | undefined;
  let fatal: unknown = null;
  const stopped = Promise.withResolvers<void>();
  const node = new RaftNode({
    id: config.id,
    members: config.peers,
    storage,
    heartbeatMs: config.heartbeatMs,
    electionTimeoutMs: config.electionTimeoutMs,
    snapshotThreshold: config.snapshotThreshold,
    logger: log,
    onFatal: (e) => {
      fatal = e;
      stopped.resolve();
    },
    transport: (h) => {
      handlers = h;
      return new HttpTransport(h, {
        self: config.id,
        peers: config.peers,
        rpcTimeoutMs: config.rpcTimeoutMs,
        maxConnRetryAttempts: config.maxConnRetryAttempts,
        logger: rateLimited(log, 5_000),
      });
    },
  });

  const rpcServer = Deno.serve(
    {
      port: config.rpcPort,
      hostname: config.listenHost,
      onListen: (a) => log.info(`peer RPC listening on ${a.hostname}:${a.port}`),
    },
    createPeerHandler(handlers!, { self: config.id, logger: log }),
  );
  const api = createApiHandler(node, {
    selfId: config.id,
    apiTimeoutMs: config.apiTimeoutMs,
    apiFwdTimeoutMs: config.apiFwdTimeoutMs,
    maxKeyBytes: config.maxKeyBytes,
    maxValueBytes: config.maxValueBytes,
  });
  const apiServer = Deno.serve(
    {
      port: config.apiPort,
      hostname: config.listenHost,
      onListen: (a) => log.info(`REST API listening on ${a.hostname}:${a.port}`),
    },
    api,
  );
  node.start();
  log.info(`started ${config.id} with ${config.peers.length} members`);

  const onSignal = () => stopped.resolve();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  await stopped.promise;
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);

  log.info(fatal ? "stopping after a fatal error" : "stopping");
  // Stop taking requests, finish the write in flight, then close the peer side.
  await apiServer.shutdown();
  await node.stop();
  closeForwarder();
  await rpcServer.shutdown();
  log.info("stopped");
  return fatal ? 1 : 0;
}

/**
 * `raftkv healthcheck [--url <url>]`, for a container HEALTHCHECK without curl: exits 0 when the
 * URL answers 200 within 2 seconds, else 1 (also on bad usage: Docker reserves exit code 2). The
 * default URL is `/health` on `RAFTKV_API_PORT` (else 7777) of `RAFTKV_LISTEN_HOST`, or of
 * 127.0.0.1 when that is unset or a wildcard address.
 *
 * @param args The arguments after `healthcheck`.
 * @returns The exit code.
 */
export async function healthcheck(args: string[]): Promise<number> {
  const usage = "Usage: raftkv healthcheck [--url http://127.0.0.1:7777/health]";
  let url: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? "";
    if (arg === "--help" || arg === "-h") {
      console.log(`${usage}\nExits 0 if the URL answers 200 within 2 s, else 1.`);
      return 0;
    }
    if (arg === "--url" && i + 1 < args.length) url = args[++i];
    else if (arg.startsWith("--url=")) url = arg.slice("--url=".length);
    else {
      console.error(`raftkv healthcheck: unexpected argument ${JSON.stringify(arg)}\n${usage}`);
      return 1;
    }
  }
  if (url === undefined) {
    const port = Deno.env.get("RAFTKV_API_PORT") || String(DEFAULTS.k8sApiPort);
    const listen = Deno.env.get("RAFTKV_LISTEN_HOST") ?? "";
    const host = ["", "0.0.0.0", "::"].includes(listen)
      ? "127.0.0.1"
      : listen.includes(":")
      ? `[${listen}]`
      : listen;
    url = `http://${host}:${port}/health`;
  }
  const timeoutMs = 2000;
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const response = await fetch(url, { signal });
    await response.body?.cancel();
    if (response.status === 200) return 0;
    console.error(`unhealthy: ${url} answered ${response.status}`);
  } catch (e) {
    const reason = signal.aborted
      ? `no answer within ${timeoutMs}ms`
      : e instanceof Error
      ? e.message
      : String(e);
    console.error(`unhealthy: ${url}: ${reason}`);
  }
  return 1;
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
function _readEnv(): Record<string, string> {
  const names = new Set(ENV_VARS);
  if (Deno.permissions.querySync({ name: "env" }).state === "granted") {
    for (const name of Object.keys(Deno.env.toObject())) {
      if (name.startsWith(ENV_PREFIX)) names.add(name);
    }
  }
  names.delete(HOSTS_OVERRIDE_ENV);
  const env: Record<string, string> = {};
  for (const name of names) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/**
 * A transport logger that reports each kind of warning at most once per `intervalMs`, without
 * stack traces: a dead peer otherwise fills the log with one line per dropped batch.
 */
function rateLimited(log: Logger, intervalMs: number) {
  const last = new Map<string, number>();
  return {
    debug: (message: string) => log.debug(message),
    warn: (message: string) => {
      const key = message.slice(0, 48);
      const now = performance.now();
      if (now - (last.get(key) ?? -Infinity) < intervalMs) return;
      last.set(key, now);
      log.warn(message);
    },
  };
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
