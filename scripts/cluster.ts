/**
 * Runs a local raftkv cluster in one terminal: `deno task cluster`.
 *
 * Reads the cluster file (or generates one with `--size`), creates a directory per node under
 * `local-cluster/`, starts every node as a child process, prefixes each line a node prints with
 * its coloured `[node-id]`, waits until the cluster has elected a leader and prints a quick-start
 * banner. Ctrl-C (SIGINT) or SIGTERM stops every node (SIGTERM, then SIGKILL after a grace
 * period) and exits 0. A node that dies on its own is reported and the others keep running,
 * unless `--exit-on-failure` is given.
 *
 * ```sh
 * deno task cluster                          # the nodes of cluster.config.json
 * deno task cluster --size 5 --fresh         # five new nodes on ports 7777+ / 6666+
 * deno task cluster -- --election-timeout 500  # flags after `--` go to every node
 * deno task cluster --tls                    # mutual TLS between peers, HTTPS API, tokens
 * ```
 *
 * With `--tls` the launcher makes (once, into `<dir>/tls/`) a local CA, a certificate per node
 * (CN = node id, valid for `localhost`, `127.0.0.1`, `::1` and `--host`) with `openssl`, and a
 * tokens file with one random token per role (read, write, admin; mode 0600); it generates a
 * cluster file with `https://` URLs, starts every node with the certificate and token flags, and
 * prints the curl calls with `--cacert` and the tokens.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { join, resolve } from "node:path";
import { readLines } from "../testing/read_lines.ts";
import { makeCertificates, TOKEN_ROLES, writeTokensFile } from "../testing/certs.ts";
import { parseClusterFile } from "../src/cli/cluster_file.ts";
import { ConfigError } from "../src/cli/errors.ts";

/** One member of a cluster file, its URLs as the node reads them. */
export interface ClusterEntry {
  /** The node's id. */
  node_id: string;
  /** Base URL of the node's Raft RPC server, such as `"http://localhost:6666"`. */
  rpc_url: string;
  /** Base URL of the node's client API server, such as `"http://localhost:7777"`. */
  api_url: string;
}

/** The launcher's settings, as read from its command line by {@linkcode parseClusterArgs}. */
export interface ClusterOptions {
  /** `--help` / `-h`: print the usage and exit. */
  help: boolean;
  /** `--size`: number of nodes to generate a cluster file for, if given. */
  size: number | undefined;
  /** `--dir`: directory holding the node directories (and a generated cluster file). */
  dir: string;
  /** `--fresh`: delete the node directories before starting. */
  fresh: boolean;
  /**
   * `--config`: the cluster file to read when none is generated; `undefined` when not given (the
   * default, {@linkcode DEFAULT_CONFIG}, which only a generated cluster may do without).
   */
  config: string | undefined;
  /** `--host`: host name in the URLs of a generated cluster file, if given. */
  host: string | undefined;
  /** `--api-base-port`: API port of the first node of a generated cluster file, if given. */
  apiBasePort: number | undefined;
  /** `--rpc-base-port`: RPC port of the first node of a generated cluster file, if given. */
  rpcBasePort: number | undefined;
  /** `--exit-on-failure`: stop the whole cluster when one node dies on its own. */
  exitOnFailure: boolean;
  /** `--main`: the node program to run, if not the repository's `main.ts`. */
  main: string | undefined;
  /** `--grace`: milliseconds a node gets to stop after SIGTERM before it is killed. */
  graceMs: number;
  /** `--tls`: mutual TLS between peers, HTTPS API and bearer tokens (certificates made once). */
  tls: boolean;
  /** Everything after `--`: flags passed on to every node. */
  nodeArgs: string[];
}

/** Settings of a generated cluster file; see {@linkcode generateClusterConfig}. */
export interface GenerateOptions {
  /** Number of nodes, named `node-1` to `node-<size>`. */
  size: number;
  /** Host name used in every URL. */
  host: string;
  /** API port of `node-1`; node `i` gets `apiBasePort + i - 1`. */
  apiBasePort: number;
  /** RPC port of `node-1`; node `i` gets `rpcBasePort + i - 1`. */
  rpcBasePort: number;
  /** `https://` URLs instead of `http://`. Default `false`. */
  tls?: boolean;
}

/** A mistake on the launcher's command line; the message says what is wrong. */
export class UsageError extends Error {
  /** Creates the error with its message. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** A problem that keeps the cluster from starting, such as a port already in use. */
export class ClusterError extends Error {
  /** Creates the error with its message. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ClusterError";
  }
}

/** Default of `--host`. */
export const DEFAULT_HOST = "localhost";
/** Default of `--api-base-port`. */
export const DEFAULT_API_BASE_PORT = 7777;
/** Default of `--rpc-base-port`. */
export const DEFAULT_RPC_BASE_PORT = 6666;
/** Default of `--dir`. */
export const DEFAULT_DIR = "local-cluster";
/** Size of a generated cluster file when neither `--size` nor a `--config` file gives one. */
export const DEFAULT_SIZE = 3;
/** Default of `--config`. */
export const DEFAULT_CONFIG = "cluster.config.json";
/** Default of `--grace`, in milliseconds. */
export const DEFAULT_GRACE_MS = 10_000;
/** How long to wait for every node to be healthy and a leader to be known, in milliseconds. */
export const STARTUP_DEADLINE_MS = 30_000;
/** Name of the generated cluster file inside `--dir`. */
export const GENERATED_CONFIG_NAME = "cluster.config.json";
/** Label of the launcher's own output lines. */
export const LAUNCHER_LABEL = "cluster";
/** Directory inside `--dir` holding the certificates and tokens of a `--tls` cluster. */
export const TLS_DIR_NAME = "tls";

const _PARSE_OPTIONS = {
  help: { type: "boolean", short: "h" },
  size: { type: "string" },
  dir: { type: "string" },
  fresh: { type: "boolean" },
  config: { type: "string" },
  host: { type: "string" },
  "api-base-port": { type: "string" },
  "rpc-base-port": { type: "string" },
  "exit-on-failure": { type: "boolean" },
  main: { type: "string" },
  grace: { type: "string" },
  tls: { type: "boolean" },
} as const;

/**
 * Returns the launcher's `--help` text.
 *
 * @returns The usage, options and examples, ending in a newline.
 */
export function helpText(): string {
  return `Runs a local raftkv cluster: every node as a child process, output prefixed per node.

Usage: deno task cluster [options] [-- <node flags>]

Options:
  --size <n>             Generate a cluster file with node-1..node-<n> and use it (default: as
                         many nodes as the --config file lists, or ${DEFAULT_SIZE} without that file)
  --host <host>          Host name in the generated URLs (default: ${DEFAULT_HOST})
  --api-base-port <p>    API port of node-1 in the generated file; node-i gets p+i-1
                         (default: ${DEFAULT_API_BASE_PORT})
  --rpc-base-port <p>    RPC port of node-1 in the generated file (default: ${DEFAULT_RPC_BASE_PORT})
  --config <file>        Cluster file to use when none is generated (default: ${DEFAULT_CONFIG})
  --dir <dir>            Directory of the node directories <dir>/<node_id> and of a generated
                         cluster file <dir>/${GENERATED_CONFIG_NAME} (default: ${DEFAULT_DIR})
  --fresh                Delete the node directories first (start from empty state)
  --exit-on-failure      Stop every node when one exits on its own (default: report it and
                         keep the others running, e.g. to try out failover)
  --grace <ms>           Time a node gets to stop after SIGTERM before SIGKILL
                         (default: ${DEFAULT_GRACE_MS})
  --main <file>          Node program to run (default: main.ts of this repository)
  --tls                  Mutual TLS between peers, HTTPS API and bearer tokens: makes a local
                         CA, node certificates and a tokens file (read, write, admin) once, in
                         <dir>/${TLS_DIR_NAME}/, and generates a cluster file with https URLs
  -h, --help             Print this help

Giving --size, --host, a base port or --tls generates the cluster file; otherwise --config is used.
Flags after "--" are passed to every node, e.g. "-- --election-timeout 500 --log-level debug".
Ctrl-C or SIGTERM stops all nodes; press Ctrl-C again to kill them at once.

Examples:
  deno task cluster
  deno task cluster --size 5 --fresh
  deno task cluster --tls
  deno task cluster --api-base-port 8000 --rpc-base-port 9000 -- --heartbeat 50
`;
}

/**
 * Reads the launcher's command line.
 *
 * Everything after the first `--` is kept, untouched, for the nodes. A `--` in first position
 * that is directly followed by a launcher option is ignored, so that the npm habit
 * `deno task cluster -- --size 5` works too.
 *
 * @example Usage
 * ```ts
 * import { parseClusterArgs } from "./cluster.ts";
 *
 * const options = parseClusterArgs(["--size", "5", "--", "--heartbeat", "50"]);
 * console.assert(options.size === 5);
 * console.assert(options.nodeArgs.join(" ") === "--heartbeat 50");
 * ```
 *
 * @param args The arguments after the script's name.
 * @returns The settings, with defaults filled in.
 * @throws {UsageError} On an unknown option, a missing or malformed value, or a positional
 * argument before `--`.
 */
export function parseClusterArgs(args: readonly string[]): ClusterOptions {
  let list = [...args];
  if (list[0] === "--" && _isLauncherOption(list[1])) list = list.slice(1);
  const separator = list.indexOf("--");
  const own = separator === -1 ? list : list.slice(0, separator);
  const nodeArgs = separator === -1 ? [] : list.slice(separator + 1);

  let values;
  let positionals;
  try {
    ({ values, positionals } = parseArgs({
      args: own,
      options: _PARSE_OPTIONS,
      strict: true,
      allowPositionals: true,
    }));
  } catch (error) {
    throw new UsageError(_parseArgsMessage(error));
  }
  if (positionals.length > 0) {
    throw new UsageError(
      `Unexpected argument ${
        JSON.stringify(positionals[0])
      }: put flags for the nodes after "--", e.g. "deno task cluster -- --heartbeat 50"`,
    );
  }

  const size = _integerOption("--size", values.size, 1, 1000);
  const apiBasePort = _integerOption("--api-base-port", values["api-base-port"], 1, 65535);
  const rpcBasePort = _integerOption("--rpc-base-port", values["rpc-base-port"], 1, 65535);
  const graceMs = _integerOption("--grace", values.grace, 0, 3_600_000) ?? DEFAULT_GRACE_MS;
  for (const [name, value] of [["--dir", values.dir], ["--config", values.config]] as const) {
    if (value === "") throw new UsageError(`Option ${name} needs a non-empty value`);
  }
  if (values.host === "") throw new UsageError("Option --host needs a non-empty value");

  return {
    help: values.help ?? false,
    size,
    dir: values.dir ?? DEFAULT_DIR,
    fresh: values.fresh ?? false,
    config: values.config,
    host: values.host,
    apiBasePort,
    rpcBasePort,
    exitOnFailure: values["exit-on-failure"] ?? false,
    main: values.main,
    graceMs,
    tls: values.tls ?? false,
    nodeArgs,
  };
}

/**
 * Tells whether the options ask for a generated cluster file: `--size`, `--host`, a base port
 * or `--tls` was given.
 *
 * @param options The launcher's settings.
 * @returns `true` to generate `<dir>/cluster.config.json`, `false` to use `--config`.
 */
export function shouldGenerate(options: ClusterOptions): boolean {
  return options.size !== undefined || options.host !== undefined ||
    options.apiBasePort !== undefined || options.rpcBasePort !== undefined || options.tls;
}

/**
 * Builds the entries of a cluster file for `node-1` to `node-<size>` on consecutive ports.
 *
 * @example Usage
 * ```ts
 * import { generateClusterConfig } from "./cluster.ts";
 *
 * const [first] = generateClusterConfig({
 *   size: 3,
 *   host: "localhost",
 *   apiBasePort: 7777,
 *   rpcBasePort: 6666,
 * });
 * console.assert(first?.api_url === "http://localhost:7777");
 * ```
 *
 * @param options Size, host and base ports.
 * @returns The entries, in node order.
 * @throws {UsageError} If a port would exceed 65535 or the API and RPC port ranges overlap.
 */
export function generateClusterConfig(options: GenerateOptions): ClusterEntry[] {
  const { size, apiBasePort, rpcBasePort } = options;
  if (!Number.isInteger(size) || size < 1) {
    throw new UsageError(`The cluster size must be a positive integer, got ${size}`);
  }
  const bases = [["--api-base-port", apiBasePort], ["--rpc-base-port", rpcBasePort]] as const;
  for (const [name, base] of bases) {
    if (!Number.isInteger(base) || base < 1 || base + size - 1 > 65535) {
      throw new UsageError(
        `${name} ${base} leaves no room for ${size} node(s): ports must be 1 to 65535`,
      );
    }
  }
  if (apiBasePort < rpcBasePort + size && rpcBasePort < apiBasePort + size) {
    throw new UsageError(
      `The API ports ${_range(apiBasePort, size)} and RPC ports ${
        _range(rpcBasePort, size)
      } overlap; choose other --api-base-port / --rpc-base-port values`,
    );
  }
  const host = options.host.includes(":") && !options.host.startsWith("[")
    ? `[${options.host}]`
    : options.host;
  const scheme = options.tls ? "https" : "http";
  return Array.from({ length: size }, (_, i) => ({
    node_id: `node-${i + 1}`,
    rpc_url: `${scheme}://${host}:${rpcBasePort + i}`,
    api_url: `${scheme}://${host}:${apiBasePort + i}`,
  }));
}

/**
 * Parses a cluster file with the node's own parser (`parseClusterFile` in
 * src/cli/cluster_file.ts), so that the launcher takes every file a node takes, such as the
 * original Go project's bare `localhost:6666` addresses, and refuses the others with the node's
 * message.
 *
 * @param text The file's contents.
 * @param path The file's path, for error messages.
 * @returns The entries, in file order, with each URL as the node reads it (its origin, such as
 * `"http://localhost:6666"` for `"localhost:6666"`).
 * @throws {ClusterError} If a node would refuse the file.
 */
export function parseClusterConfig(text: string, path: string): ClusterEntry[] {
  let peers;
  try {
    peers = parseClusterFile(text, path);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    throw new ClusterError(error.message, { cause: error });
  }
  return peers.map((peer) => ({ node_id: peer.id, rpc_url: peer.rpcUrl, api_url: peer.apiUrl }));
}

/**
 * Returns the TCP port a base URL points at: its explicit port, or 80 / 443 for http / https.
 *
 * @param url An `http:` or `https:` URL.
 * @returns The port number.
 */
export function urlPort(url: string): number {
  const parsed = new URL(url);
  if (parsed.port !== "") return Number(parsed.port);
  return parsed.protocol === "https:" ? 443 : 80;
}

/** A port a node will listen on; see {@linkcode neededPorts}. */
export interface NeededPort {
  /** The node's id. */
  nodeId: string;
  /** Which of the node's servers uses the port. */
  kind: "api" | "rpc";
  /** The port number. */
  port: number;
}

/**
 * Lists the ports the nodes of a cluster file will listen on.
 *
 * @param entries The cluster file's entries.
 * @returns One API and one RPC port per node, in node order.
 */
export function neededPorts(entries: readonly ClusterEntry[]): NeededPort[] {
  return entries.flatMap((entry) => [
    { nodeId: entry.node_id, kind: "api" as const, port: urlPort(entry.api_url) },
    { nodeId: entry.node_id, kind: "rpc" as const, port: urlPort(entry.rpc_url) },
  ]);
}

/**
 * Finds the value of a `--name value` or `--name=value` flag in a list of arguments; the last
 * one wins, as in the node's own parser.
 *
 * @param args The arguments to search.
 * @param name The flag, such as `"--listen-host"`.
 * @returns The value, or `undefined` when the flag is absent or has no value.
 */
export function findFlag(args: readonly string[], name: string): string | undefined {
  let found: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? "";
    if (arg === name) {
      const next = args[i + 1];
      if (next !== undefined) found = next;
      i++;
    } else if (arg.startsWith(`${name}=`)) {
      found = arg.slice(name.length + 1);
    }
  }
  return found;
}

/**
 * Decides whether to colour output: never when `NO_COLOR` is set to a non-empty value
 * (https://no-color.org), otherwise only when the output is a terminal.
 *
 * @param noColor The value of the `NO_COLOR` environment variable, if set.
 * @param isTerminal Whether the output stream is a terminal.
 * @returns `true` to use ANSI colours.
 */
export function shouldUseColor(noColor: string | undefined, isTerminal: boolean): boolean {
  return isTerminal && (noColor === undefined || noColor === "");
}

const _PALETTE = [36, 35, 33, 32, 34, 96, 95, 93, 92, 94, 91, 31] as const;

/**
 * Picks the ANSI foreground colour code for the node at an index: distinct for the first 12
 * nodes, then repeating. Red comes last, so that it does not look like an error.
 *
 * @param index The node's position in the cluster file, from 0.
 * @returns An SGR colour code such as `36` (cyan).
 */
export function colorFor(index: number): number {
  const size = _PALETTE.length;
  return _PALETTE[((index % size) + size) % size] ?? 36;
}

/**
 * Builds the prefix of a node's output lines: `[label]`, padded to `width` characters plus a
 * space, wrapped in the colour when one is given.
 *
 * @example Usage
 * ```ts
 * import { formatPrefix } from "./cluster.ts";
 *
 * console.assert(formatPrefix("node-1", 9, null) === "[node-1]  ");
 * console.assert(formatPrefix("node-1", 8, 36) === "\x1b[36m[node-1]\x1b[0m ");
 * ```
 *
 * @param label The node id (or the launcher's own label).
 * @param width Width of the widest bracketed label, see {@linkcode prefixWidth}.
 * @param color An SGR colour code, or `null` for plain text.
 * @returns The prefix, to be followed directly by the line.
 */
export function formatPrefix(label: string, width: number, color: number | null): string {
  const tag = `[${label}]`;
  const padding = " ".repeat(Math.max(0, width - tag.length) + 1);
  return color === null ? `${tag}${padding}` : `\x1b[${color}m${tag}\x1b[0m${padding}`;
}

/**
 * Returns the width of the widest bracketed label, so that prefixed lines line up.
 *
 * @param labels The node ids, plus the launcher's own label.
 * @returns The length of the longest `[label]`.
 */
export function prefixWidth(labels: readonly string[]): number {
  return Math.max(0, ...labels.map((label) => label.length + 2));
}

/**
 * Describes how a child process ended, for messages such as `node-2 exited with code 1`.
 *
 * @param status The status from `Deno.ChildProcess.status`.
 * @returns `"exited with code <n>"` or `"was killed by signal <name>"`.
 */
export function describeExit(status: Deno.CommandStatus): string {
  return status.signal !== null
    ? `was killed by signal ${status.signal}`
    : `exited with code ${status.code}`;
}

/** The tokens of a `--tls` cluster, one per role. */
export interface LocalTokens {
  /** May read (`GET /v1/data/:k`, `/v1/status`, ...). */
  read: string;
  /** May read and write. */
  write: string;
  /** May do anything, `GET /v1/snapshot` included. */
  admin: string;
}

/** The certificates and tokens of a `--tls` cluster; see {@linkcode prepareLocalTls}. */
export interface LocalTls {
  /** The directory holding them (`<dir>/tls`). */
  dir: string;
  /** The CA certificate every node and client trusts (curl's `--cacert`). */
  ca: string;
  /** The tokens file every node gets (`--tokens-file`). */
  tokensFile: string;
  /** The tokens, one per role. */
  tokens: LocalTokens;
  /** Whether the CA and certificates were made now (else kept from an earlier start). */
  madeCertificates: boolean;
  /** Whether the tokens file was made now (else kept from an earlier start). */
  madeTokens: boolean;
  /** A node's certificate (CN = its id) and private key, for both its peer and API ports. */
  node(id: string): { cert: string; key: string };
}

/**
 * Makes, or finds from an earlier start, what a local TLS cluster needs in `dir`: a CA
 * (`ca.crt`), a certificate and key per node (`<id>.crt`, `<id>.key`; CN = the id, valid for
 * `localhost`, `127.0.0.1`, `::1` and `hosts`), made with `openssl` through `testing/certs.ts`,
 * and `tokens.json` with one random token (32 bytes from `crypto.getRandomValues`, hex) per role,
 * written with mode 0600. The certificates are made again, CA included, when one is missing,
 * does not chain to the CA, does not cover a host or expires within a day; the tokens file is
 * kept as long as it exists, so tokens stay valid across restarts and `--fresh`.
 *
 * @param dir The directory (created with mode 0700 if missing).
 * @param ids The node ids.
 * @param hosts The host names or addresses clients and peers use (brackets around IPv6 allowed).
 * @returns Where everything is, and the tokens.
 * @throws {ClusterError} If `openssl` is missing or fails, or the tokens file is unusable.
 */
export async function prepareLocalTls(
  dir: string,
  ids: readonly string[],
  hosts: readonly string[],
): Promise<LocalTls> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const wanted = [...new Set(hosts.map((h) => h.replace(/^\[(.*)\]$/, "$1")))];
  const extra = wanted.filter((h) => !["localhost", "127.0.0.1", "::1"].includes(h));
  const madeCertificates = !(await _certificatesFit(dir, ids, wanted));
  if (madeCertificates) {
    try {
      await makeCertificates(dir, { nodes: ids, hosts: extra });
    } catch (error) {
      throw new ClusterError(
        `Cannot make the certificates in ${dir}: ${(error as Error).message}`,
        { cause: error },
      );
    }
  }
  const tokensFile = join(dir, "tokens.json");
  const { tokens, made: madeTokens } = await _tokens(tokensFile);
  return {
    dir,
    ca: join(dir, "ca.crt"),
    tokensFile,
    tokens,
    madeCertificates,
    madeTokens,
    node: (id: string) => ({ cert: join(dir, `${id}.crt`), key: join(dir, `${id}.key`) }),
  };
}

/** Whether the CA and every node's certificate exist, chain to it, cover `hosts` and last a day. */
async function _certificatesFit(
  dir: string,
  ids: readonly string[],
  hosts: readonly string[],
): Promise<boolean> {
  const certs = ids.map((id) => join(dir, `${id}.crt`));
  const files = [join(dir, "ca.crt"), ...certs, ...ids.map((id) => join(dir, `${id}.key`))];
  for (const file of files) if (!(await _isFile(file))) return false;
  const verify = await _opensslOk(["verify", "-CAfile", join(dir, "ca.crt"), ...certs]);
  if (!verify.ok) return false;
  for (const cert of certs) {
    if (!(await _opensslOk(["x509", "-noout", "-in", cert, "-checkend", "86400"])).ok) return false;
    // `openssl x509` checks only the last -checkhost (or -checkip) it is given: one call each.
    for (const host of hosts) {
      const check = _isIpAddress(host) ? "-checkip" : "-checkhost";
      const x509 = await _opensslOk(["x509", "-noout", "-in", cert, check, host]);
      if (!x509.ok || !x509.out.includes(" does match")) return false;
    }
  }
  return true;
}

async function _opensslOk(args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const out = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" })
      .output();
    return { ok: out.success, out: new TextDecoder().decode(out.stdout) };
  } catch {
    return { ok: false, out: "" };
  }
}

function _isIpAddress(host: string): boolean {
  return /^\d+\.\d+\.\d+\.\d+$/.test(host) || host.includes(":");
}

/** Reads the tokens file, or writes a new one (mode 0600) when there is none. */
async function _tokens(file: string): Promise<{ tokens: LocalTokens; made: boolean }> {
  let text: string | null = null;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new ClusterError(`Cannot read ${file}: ${(error as Error).message}`);
    }
  }
  if (text === null) return { tokens: await writeTokensFile(file, "local-"), made: true };
  const found: Partial<LocalTokens> = {};
  try {
    for (const entry of JSON.parse(text) as { token?: unknown; role?: unknown }[]) {
      const role = TOKEN_ROLES.find((r) => r === entry.role);
      if (role !== undefined && typeof entry.token === "string") found[role] ??= entry.token;
    }
  } catch {
    // Reported below.
  }
  const missing = TOKEN_ROLES.filter((role) => found[role] === undefined);
  if (missing.length > 0) {
    throw new ClusterError(
      `${file} has no token for the role(s) ${missing.join(", ")}; ` +
        "delete it to have a new one made",
    );
  }
  return { tokens: found as LocalTokens, made: false };
}

/**
 * Quotes a word for a POSIX shell when it needs quoting.
 *
 * @param word The word.
 * @returns The word as is when it holds only safe characters, else in single quotes.
 */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_\/.:=@%+,-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * Builds the banner printed once the cluster is up: the API URLs, the leader and a curl quick
 * start that writes through one node and reads through another. With `security` (a `--tls`
 * cluster), every curl call trusts the CA and sends a token: write through the first node, read
 * through a follower (forwarded to the leader), delete through a third, read the 404, back up.
 *
 * @param entries The cluster file's entries.
 * @param leaderId The id of the current leader, if known.
 * @param configPath The cluster file in use.
 * @param security The CA and tokens of a `--tls` cluster.
 * @returns The banner's lines.
 */
export function bannerLines(
  entries: readonly ClusterEntry[],
  leaderId: string | null,
  configPath: string,
  security?: Pick<LocalTls, "ca" | "tokens" | "tokensFile" | "dir">,
): string[] {
  const width = Math.max(...entries.map((entry) => entry.node_id.length));
  const writeUrl = _origin(entries[0]?.api_url ?? "");
  const readUrl = _origin(entries[1]?.api_url ?? entries[0]?.api_url ?? "");
  const head = [
    `raftkv cluster of ${entries.length} node(s) is up (cluster file: ${configPath})`,
    ...entries.map((entry) =>
      `  ${entry.node_id.padEnd(width)}  API ${_origin(entry.api_url)}  RPC ${
        _origin(entry.rpc_url)
      }${entry.node_id === leaderId ? "  (leader)" : ""}`
    ),
  ];
  if (security !== undefined) return [...head, ..._tlsQuickStart(entries, leaderId, security)];
  return [
    ...head,
    "Quick start (any node accepts requests):",
    `  curl -X POST -H 'Content-Type: application/json' -d '{"k":"a","v":"1"}' ${writeUrl}/v1/data`,
    `  curl ${readUrl}/v1/data/a`,
    `  curl ${writeUrl}/v1/status`,
    "Press Ctrl-C to stop all nodes.",
  ];
}

function _tlsQuickStart(
  entries: readonly ClusterEntry[],
  leaderId: string | null,
  security: Pick<LocalTls, "ca" | "tokens" | "tokensFile" | "dir">,
): string[] {
  const first = entries[0];
  const reader = entries.find((e) => e !== first && e.node_id !== leaderId) ?? entries[1] ?? first;
  const deleter = entries.find((e) => e !== first && e !== reader) ?? first;
  const url = (entry: ClusterEntry | undefined) => _origin(entry?.api_url ?? "");
  const curl = (role: keyof LocalTokens, rest: string) =>
    `  curl --cacert ${shellQuote(security.ca)} -H "Authorization: Bearer ${
      security.tokens[role]
    }" ${rest}`;
  const readNote = reader?.node_id === leaderId ? "" : ", a follower";
  return [
    `TLS: mutual TLS between peers, HTTPS API; CA and node certificates in ${security.dir}`,
    `Tokens (read, write, admin) in ${security.tokensFile}: every request but /health and ` +
    "/ready needs one",
    "Quick start (any node accepts requests):",
    `  # write through ${first?.node_id}, read through ${reader?.node_id}${readNote}, delete, ` +
    "read the 404, back up (admin), status",
    curl(
      "write",
      `-X POST -H 'Content-Type: application/json' -d '{"k":"a","v":"1"}' ${url(first)}/v1/data`,
    ),
    curl("read", `${url(reader)}/v1/data/a`),
    curl("write", `-X DELETE ${url(deleter)}/v1/data/a`),
    curl("read", `-i ${url(first)}/v1/data/a`),
    curl("admin", `-o backup.snap ${url(first)}/v1/snapshot`),
    curl("read", `${url(first)}/v1/status`),
    "Press Ctrl-C to stop all nodes.",
  ];
}

/**
 * Runs the launcher with a command line and returns its exit code: 0 after a stop on request,
 * 1 when the cluster could not start or failed, 2 on a usage error.
 *
 * @param args The arguments after the script's name.
 * @returns The process exit code.
 */
export async function main(args: readonly string[]): Promise<number> {
  let options: ClusterOptions;
  try {
    options = parseClusterArgs(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    _writeLine(Deno.stderr, `cluster: ${error.message}\nRun with --help for the options.`);
    return 2;
  }
  if (options.help) {
    _writeLine(Deno.stdout, helpText().trimEnd());
    return 0;
  }
  try {
    return await _run(options);
  } catch (error) {
    if (!(error instanceof ClusterError || error instanceof UsageError)) throw error;
    _writeLine(Deno.stderr, `cluster: ${error.message}`);
    return 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Running the cluster
// ---------------------------------------------------------------------------------------------

interface _Node {
  entry: ClusterEntry;
  dataDir: string;
  outPrefix: string;
  errPrefix: string;
  child: Deno.ChildProcess | null;
  exited: Deno.CommandStatus | null;
  done: Promise<void>;
}

interface _Output {
  outPrefix: string;
  errPrefix: string;
}

async function _run(options: ClusterOptions): Promise<number> {
  const { entries, configPath } = await _loadConfig(options);
  const mainScript = options.main !== undefined
    ? resolve(options.main)
    : fileURLToPath(new URL("../main.ts", import.meta.url));
  if (!(await _isFile(mainScript))) {
    throw new ClusterError(`The node program ${mainScript} does not exist`);
  }
  const listenHost = findFlag(options.nodeArgs, "--listen-host") ??
    Deno.env.get("RAFTKV_LISTEN_HOST") ?? "0.0.0.0";
  _checkPorts(entries, listenHost);

  const outColor = shouldUseColor(Deno.env.get("NO_COLOR"), Deno.stdout.isTerminal());
  const errColor = shouldUseColor(Deno.env.get("NO_COLOR"), Deno.stderr.isTerminal());
  const width = prefixWidth([LAUNCHER_LABEL, ...entries.map((entry) => entry.node_id)]);
  const self: _Output = {
    outPrefix: formatPrefix(LAUNCHER_LABEL, width, outColor ? 1 : null),
    errPrefix: formatPrefix(LAUNCHER_LABEL, width, errColor ? 1 : null),
  };
  const say = (line: string) => _writeLine(Deno.stdout, self.outPrefix + line);
  const warn = (line: string) => _writeLine(Deno.stderr, self.errPrefix + line);

  const baseDir = resolve(options.dir);
  const nodes: _Node[] = entries.map((entry, index) => ({
    entry,
    dataDir: join(baseDir, entry.node_id),
    outPrefix: formatPrefix(entry.node_id, width, outColor ? colorFor(index) : null),
    errPrefix: formatPrefix(entry.node_id, width, errColor ? colorFor(index) : null),
    child: null,
    exited: null,
    done: Promise.resolve(),
  }));
  for (const node of nodes) {
    if (options.fresh) await Deno.remove(node.dataDir, { recursive: true }).catch(_ignoreNotFound);
    await Deno.mkdir(node.dataDir, { recursive: true });
  }
  const security = options.tls
    ? await prepareLocalTls(
      join(baseDir, TLS_DIR_NAME),
      entries.map((entry) => entry.node_id),
      entries.flatMap((entry) =>
        [entry.api_url, entry.rpc_url].map((url) => new URL(url).hostname)
      ),
    )
    : null;
  if (security !== null) {
    say(
      `TLS: ${
        security.madeCertificates ? "made" : "using"
      } the CA and node certificates in ${security.dir}, ${
        security.madeTokens ? "made" : "using"
      } the tokens in ${security.tokensFile}`,
    );
  }
  const access = _startupAccess(security);

  let stopping = false;
  let exitCode = 0;
  const stopRequested = Promise.withResolvers<void>();
  const startupAbort = new AbortController();
  const requestStop = (code: number) => {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    startupAbort.abort();
    stopRequested.resolve();
  };
  const killAll = () => {
    for (const node of nodes) _signal(node, "SIGKILL");
  };
  // SIGHUP: the terminal was closed; stop the nodes rather than leave them running.
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const handlers = signals.map((signal) => {
    const handler = () => {
      if (stopping) {
        warn(`received ${signal} again, killing all nodes`);
        killAll();
        return;
      }
      say(`received ${signal}, stopping all nodes (press Ctrl-C again to kill them)`);
      requestStop(0);
    };
    try {
      Deno.addSignalListener(signal, handler);
    } catch {
      // SIGTERM and SIGHUP cannot be listened for on Windows.
    }
    return { signal, handler };
  });

  try {
    say(`starting ${nodes.length} node(s) from ${configPath}, data in ${baseDir}`);
    for (const node of nodes) {
      if (stopping) break;
      const args = [
        "run",
        "--allow-net",
        "--allow-read",
        "--allow-write",
        "--allow-env",
        mainScript,
        "--id",
        node.entry.node_id,
        "--cluster-config-path",
        configPath,
        "--data-dir",
        node.dataDir,
        ...(security === null ? [] : _securityFlags(security, node.entry.node_id)),
        ...options.nodeArgs,
      ];
      try {
        node.child = new Deno.Command(Deno.execPath(), {
          args,
          // Deno colours its own messages even into a pipe; keep a plain log plain.
          ...(outColor && errColor ? {} : { env: { NO_COLOR: "1" } }),
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      } catch (error) {
        warn(`could not start ${node.entry.node_id}: ${(error as Error).message}`);
        requestStop(1);
        break;
      }
      const child = node.child;
      say(`started ${node.entry.node_id} (pid ${child.pid})`);
      const pumps = Promise.all([
        _pump(child.stdout, Deno.stdout, node.outPrefix),
        _pump(child.stderr, Deno.stderr, node.errPrefix),
      ]);
      node.done = (async () => {
        const status = await child.status;
        await pumps;
        node.exited = status;
        if (stopping) return;
        warn(`${node.entry.node_id} ${describeExit(status)} unexpectedly`);
        if (options.exitOnFailure) {
          warn("stopping the cluster (--exit-on-failure)");
          requestStop(1);
        } else if (nodes.every((other) => other.child === null || other.exited !== null)) {
          warn("every node has exited; stopping");
          requestStop(1);
        } else {
          const alive = nodes.filter((other) => other.child !== null && other.exited === null);
          warn(`keeping the other nodes running: ${alive.map((n) => n.entry.node_id).join(", ")}`);
        }
      })();
    }

    const startup = _awaitStartup(nodes, startupAbort.signal, access).then((result) => {
      if (result.ok) {
        const lines = security === null
          ? bannerLines(entries, result.leaderId, configPath)
          : bannerLines(entries, result.leaderId, configPath, security);
        for (const line of lines) say(line);
      } else if (!stopping) {
        warn(`the cluster is not up after ${STARTUP_DEADLINE_MS / 1000}s: ${result.problem}`);
        warn("the nodes keep running; watch their output above");
      }
    });

    await stopRequested.promise;
    await startup;
    await _stopAll(nodes, options.graceMs, say, warn);
    say(exitCode === 0 ? "all nodes stopped" : "cluster stopped after a failure");
    return exitCode;
  } finally {
    access.client?.close();
    for (const { signal, handler } of handlers) {
      try {
        Deno.removeSignalListener(signal, handler);
      } catch {
        // Never added.
      }
    }
  }
}

/** A node's flags for peer mutual TLS, HTTPS on the API and the tokens file. */
function _securityFlags(security: LocalTls, id: string): string[] {
  const { cert, key } = security.node(id);
  return [
    "--peer-cert",
    cert,
    "--peer-key",
    key,
    "--peer-ca",
    security.ca,
    "--api-cert",
    cert,
    "--api-key",
    key,
    "--tokens-file",
    security.tokensFile,
  ];
}

/** How the launcher's own requests reach the nodes: trusting the CA, with the read token. */
interface _Access {
  client?: Deno.HttpClient;
  headers: Record<string, string>;
}

function _startupAccess(security: LocalTls | null): _Access {
  if (security === null) return { headers: {} };
  return {
    client: Deno.createHttpClient({ caCerts: [Deno.readTextFileSync(security.ca)] }),
    headers: { authorization: `Bearer ${security.tokens.read}` },
  };
}

async function _loadConfig(
  options: ClusterOptions,
): Promise<{ entries: ClusterEntry[]; configPath: string }> {
  if (!shouldGenerate(options)) {
    const configPath = resolve(options.config ?? DEFAULT_CONFIG);
    return { entries: await _readConfig(configPath), configPath };
  }
  const size = options.size ?? await _configSize(options.config);
  const entries = generateClusterConfig({
    size,
    host: options.host ?? DEFAULT_HOST,
    apiBasePort: options.apiBasePort ?? DEFAULT_API_BASE_PORT,
    rpcBasePort: options.rpcBasePort ?? DEFAULT_RPC_BASE_PORT,
    tls: options.tls,
  });
  const dir = resolve(options.dir);
  await Deno.mkdir(dir, { recursive: true });
  const configPath = join(dir, GENERATED_CONFIG_NAME);
  await Deno.writeTextFile(configPath, _configText(entries));
  return { entries, configPath };
}

async function _readConfig(path: string): Promise<ClusterEntry[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new ClusterError(
      `Cannot read the cluster file ${path}: ${(error as Error).message}` +
        " (use --config <file>, or --size <n> to generate one)",
      { cause: error },
    );
  }
  return parseClusterConfig(text, path);
}

/**
 * The node count of the `--config` file, for a generated file without `--size`; the default size
 * when no `--config` was given and the default file does not exist (the launcher runs outside the
 * repository, say). A `--config` file named on the command line must exist, even if it has the
 * default file's name.
 */
async function _configSize(config: string | undefined): Promise<number> {
  const path = resolve(config ?? DEFAULT_CONFIG);
  if (config === undefined && !(await _isFile(path))) return DEFAULT_SIZE;
  return (await _readConfig(path)).length;
}

function _configText(entries: readonly ClusterEntry[]): string {
  return `[\n${entries.map((entry) => `  ${JSON.stringify(entry)}`).join(",\n")}\n]\n`;
}

function _checkPorts(entries: readonly ClusterEntry[], listenHost: string): void {
  const hosts = listenHost === "0.0.0.0" ? ["0.0.0.0", "127.0.0.1"] : [listenHost];
  const problems: string[] = [];
  const seen = new Map<number, string>();
  for (const { nodeId, kind, port } of neededPorts(entries)) {
    const what = `port ${port} (${kind} port of ${nodeId})`;
    const other = seen.get(port);
    if (other !== undefined) {
      problems.push(`${what} is also the ${other}`);
      continue;
    }
    seen.set(port, `${kind} port of ${nodeId}`);
    for (const hostname of hosts) {
      const problem = _portProblem(port, hostname);
      if (problem !== null) {
        problems.push(`${what} ${problem}`);
        break;
      }
    }
  }
  if (problems.length > 0) {
    throw new ClusterError(
      `Cannot start the cluster:\n  ${problems.join("\n  ")}\n` +
        "Stop whatever uses these ports (another `deno task cluster`?), or pick other ports " +
        "with --api-base-port / --rpc-base-port.",
    );
  }
}

function _portProblem(port: number, hostname: string): string | null {
  try {
    Deno.listen({ port, hostname }).close();
    return null;
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse) return "is already in use";
    return `cannot be listened on at ${hostname}: ${(error as Error).message}`;
  }
}

type _StartupResult = { ok: true; leaderId: string | null } | { ok: false; problem: string };

async function _awaitStartup(
  nodes: readonly _Node[],
  abort: AbortSignal,
  access: _Access,
): Promise<_StartupResult> {
  const deadline = Date.now() + STARTUP_DEADLINE_MS;
  let problem = "no node answered yet";
  while (!abort.aborted) {
    const live = nodes.filter((node) => node.child !== null && node.exited === null);
    if (live.length === 0) return { ok: false, problem: "no node is running" };
    const health = await Promise.all(
      live.map((node) => _getJson(`${_origin(node.entry.api_url)}/health`, abort, access)),
    );
    const unhealthy = live.filter((_, i) => health[i]?.status !== 200);
    if (unhealthy.length > 0) {
      problem = `no answer to /health from ${unhealthy.map((n) => n.entry.node_id).join(", ")}`;
    } else {
      const statuses = await Promise.all(
        live.map((node) => _getJson(`${_origin(node.entry.api_url)}/v1/status`, abort, access)),
      );
      const leaderId = statuses.map((s) => _leaderOf(s?.json)).find((id) => id !== null);
      if (leaderId !== undefined) return { ok: true, leaderId };
      problem = "no node reports a leader in /v1/status";
    }
    if (Date.now() >= deadline) return { ok: false, problem };
    await _delay(250, abort);
  }
  return { ok: false, problem: "stopped" };
}

function _leaderOf(status: unknown): string | null {
  if (typeof status !== "object" || status === null) return null;
  const leader = (status as { leader?: unknown }).leader;
  if (typeof leader !== "object" || leader === null) return null;
  const id = (leader as { id?: unknown }).id;
  return typeof id === "string" ? id : null;
}

async function _getJson(
  url: string,
  abort: AbortSignal,
  access: _Access,
): Promise<{ status: number; json: unknown } | null> {
  try {
    const response = await fetch(url, {
      signal: AbortSignal.any([abort, AbortSignal.timeout(1000)]),
      headers: access.headers,
      ...(access.client === undefined ? {} : { client: access.client }),
    });
    const text = await response.text();
    let json: unknown = null;
    try {
      json = JSON.parse(text);
    } catch {
      // Not JSON: leave null.
    }
    return { status: response.status, json };
  } catch {
    return null;
  }
}

async function _stopAll(
  nodes: readonly _Node[],
  graceMs: number,
  say: (line: string) => void,
  warn: (line: string) => void,
): Promise<void> {
  const running = nodes.filter((node) => node.child !== null && node.exited === null);
  for (const node of running) _signal(node, "SIGTERM");
  const timers: ReturnType<typeof setTimeout>[] = [];
  await Promise.all(running.map(async (node) => {
    const timedOut = await Promise.race([
      node.done.then(() => false),
      new Promise<boolean>((resolve) => timers.push(setTimeout(() => resolve(true), graceMs))),
    ]);
    if (timedOut) {
      warn(`${node.entry.node_id} did not stop within ${graceMs}ms; sending SIGKILL`);
      _signal(node, "SIGKILL");
      await node.done;
    }
    const status = node.exited;
    if (status !== null) {
      const line = `${node.entry.node_id} ${describeExit(status)}`;
      if (status.success) say(line);
      else warn(line);
    }
  }));
  for (const timer of timers) clearTimeout(timer);
  // Nodes that had already died: their output is flushed once `done` settles.
  await Promise.all(nodes.map((node) => node.done));
}

function _signal(node: _Node, signal: Deno.Signal): void {
  if (node.child === null || node.exited !== null) return;
  try {
    node.child.kill(signal);
  } catch {
    // It exited in the meantime.
  }
}

async function _pump(
  stream: ReadableStream<Uint8Array>,
  target: { writeSync(p: Uint8Array): number },
  prefix: string,
): Promise<void> {
  try {
    for await (const line of readLines(stream)) _writeLine(target, prefix + line);
  } catch {
    // The pipe broke; the exit status tells the story.
  }
}

const _encoder = new TextEncoder();

function _writeLine(target: { writeSync(p: Uint8Array): number }, line: string): void {
  let bytes = _encoder.encode(`${line}\n`);
  try {
    while (bytes.length > 0) bytes = bytes.subarray(target.writeSync(bytes));
  } catch {
    // Our own output is gone (e.g. piped into `head`); keep running the cluster.
  }
}

function _delay(ms: number, abort: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    abort.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      abort.removeEventListener("abort", done);
      resolve();
    }
  });
}

async function _isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

function _ignoreNotFound(error: unknown): void {
  if (!(error instanceof Deno.errors.NotFound)) throw error;
}

function _origin(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return url;
  }
}

function _range(base: number, size: number): string {
  return size === 1 ? `${base}` : `${base}-${base + size - 1}`;
}

function _isLauncherOption(arg: string | undefined): boolean {
  if (arg === undefined) return false;
  if (arg === "-h") return true;
  const name = arg.startsWith("--") ? arg.slice(2).split("=")[0] ?? "" : "";
  return Object.hasOwn(_PARSE_OPTIONS, name);
}

function _integerOption(
  name: string,
  value: string | undefined,
  min: number,
  max: number,
): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(
      `Option ${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`,
    );
  }
  return Number(value);
}

function _parseArgsMessage(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  // node:util's messages end with advice for `node`; keep the first sentence.
  return message.split(/\. (?=To specify|Did you forget)/)[0] ?? message;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
