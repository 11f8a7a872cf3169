/**
 * Reads and validates the static cluster file: a JSON array of
 * `{"node_id": ..., "rpc_url": ..., "api_url": ...}` objects, one per member.
 *
 * @module
 */

import { ConfigError } from "./errors.ts";

/** One cluster member, as listed in the cluster file or derived in k8s join mode. */
export interface PeerConfig {
  /** The member's node id (`node_id`). */
  id: string;
  /** Base URL of the member's Raft RPC server: an origin such as `"http://localhost:6666"`. */
  rpcUrl: string;
  /** Base URL of the member's client API server: an origin such as `"http://localhost:7777"`. */
  apiUrl: string;
}

/**
 * What a node id may look like: letters, digits, `.`, `_` and `-`, starting with a letter or
 * digit. Ids become directory names (`data/<id>`), so nothing that could escape a directory.
 */
export const NODE_ID_PATTERN: RegExp = /^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/;

const _FIELDS = ["node_id", "rpc_url", "api_url"] as const;

/**
 * Returns the TCP port a base URL points at: its explicit port, or 80 / 443 for http / https.
 *
 * @example Usage
 * ```ts
 * import { urlPort } from "./cluster_file.ts";
 *
 * console.assert(urlPort("http://localhost:6666") === 6666);
 * console.assert(urlPort("https://kv.example") === 443);
 * ```
 *
 * @param url An `http:` or `https:` URL.
 * @returns The port number.
 */
export function urlPort(url: string): number {
  const parsed = new URL(url);
  if (parsed.port !== "") return Number(parsed.port);
  return parsed.protocol === "https:" ? 443 : 80;
}

/**
 * Parses and validates the text of a cluster file.
 *
 * Rejects anything but a non-empty JSON array of objects with exactly the string fields
 * `node_id`, `rpc_url` and `api_url`; ids that do not match {@linkcode NODE_ID_PATTERN};
 * duplicate ids; URLs that do not parse (a bare `host:port`, as the original Go project wrote
 * them, is read as `http://host:port`), are not `http:`/`https:`, or carry a path, query,
 * fragment or credentials; any `host:port` used twice (across all `rpc_url`s and `api_url`s);
 * and `rpc_url`s that mix `http:` and `https:` (peers either all use TLS or none does).
 *
 * @example Usage
 * ```ts
 * import { parseClusterFile } from "./cluster_file.ts";
 *
 * const peers = parseClusterFile(
 *   '[{"node_id":"n1","rpc_url":"http://localhost:6666","api_url":"http://localhost:7777"}]',
 *   "cluster.config.json",
 * );
 * console.assert(peers[0]?.rpcUrl === "http://localhost:6666");
 * ```
 *
 * @param text The file's contents.
 * @param path The file's path, used in error messages only.
 * @returns The members in file order, with URLs normalised to their origin.
 * @throws {ConfigError} On any problem, naming the file and the offending entry.
 */
export function parseClusterFile(text: string, path: string): PeerConfig[] {
  const file = `Invalid cluster file ${JSON.stringify(path)}`;
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`${file}: not valid JSON (${(error as Error).message})`, {
      cause: error,
    });
  }
  if (!Array.isArray(data)) {
    throw new ConfigError(
      `${file}: expected a JSON array of {"node_id", "rpc_url", "api_url"} objects, got ${
        _describe(data)
      }`,
    );
  }
  if (data.length === 0) throw new ConfigError(`${file}: the array lists no nodes`);

  const peers: PeerConfig[] = [];
  const ids = new Map<string, number>();
  const endpoints = new Map<string, string>();
  data.forEach((item: unknown, index) => {
    const entry = `${file}: entry ${index + 1}`;
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      throw new ConfigError(`${entry}: expected an object, got ${_describe(item)}`);
    }
    const record = item as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (!(_FIELDS as readonly string[]).includes(key)) {
        throw new ConfigError(
          `${entry}: unknown field ${
            JSON.stringify(key)
          } (expected "node_id", "rpc_url", "api_url")`,
        );
      }
    }
    const values: string[] = [];
    for (const field of _FIELDS) {
      const value = record[field];
      if (value === undefined) {
        throw new ConfigError(`${entry}: missing field ${JSON.stringify(field)}`);
      }
      if (typeof value !== "string") {
        throw new ConfigError(
          `${entry}: ${JSON.stringify(field)} must be a string, got ${_describe(value)}`,
        );
      }
      values.push(value);
    }
    const [id = "", rpcText = "", apiText = ""] = values;
    const named = `${entry} (node_id ${JSON.stringify(id)})`;
    if (!NODE_ID_PATTERN.test(id)) {
      throw new ConfigError(
        `${entry}: node_id ${
          JSON.stringify(id)
        } is not a valid id (use letters, digits, ".", "_" and "-", starting with a letter or digit)`,
      );
    }
    const first = ids.get(id);
    if (first !== undefined) {
      throw new ConfigError(`${named}: duplicate node_id, already used by entry ${first}`);
    }
    ids.set(id, index + 1);

    const urls: string[] = [];
    for (const [field, text] of [["rpc_url", rpcText], ["api_url", apiText]] as const) {
      const url = _parseUrl(text, `${named}: ${field}`);
      const endpoint = `${url.hostname}:${urlPort(url.href)}`;
      const where = `${named} ${field}`;
      const previous = endpoints.get(endpoint);
      if (previous !== undefined) {
        throw new ConfigError(
          `${where} ${
            JSON.stringify(text)
          }: host and port ${endpoint} are already used by ${previous}`,
        );
      }
      endpoints.set(endpoint, `entry ${index + 1} ${field}`);
      urls.push(url.origin);
    }
    const [rpcUrl = "", apiUrl = ""] = urls;
    peers.push({ id, rpcUrl, apiUrl });
  });
  const scheme = (peer: PeerConfig) => new URL(peer.rpcUrl).protocol.slice(0, -1);
  const first = peers[0]!;
  const odd = peers.findIndex((peer) => scheme(peer) !== scheme(first));
  if (odd !== -1) {
    throw new ConfigError(
      `${file}: the rpc_urls mix ${scheme(first)} (entry 1, node_id ${
        JSON.stringify(first.id)
      }) and ${scheme(peers[odd]!)} (entry ${odd + 1}, node_id ${
        JSON.stringify(peers[odd]!.id)
      }): peers either all use TLS (https) or none does (http)`,
    );
  }
  return peers;
}

/**
 * `host:port` with no scheme, as the original Go project's cluster files spell addresses
 * (`"localhost:6666"`, `"10.0.0.5:6666"`, `"[::1]:6666"`): read as `http://host:port`.
 */
const _BARE_HOST_PORT =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):\d{1,5}$/;

function _parseUrl(text: string, where: string): URL {
  let url: URL;
  try {
    url = new URL(_BARE_HOST_PORT.test(text) ? `http://${text}` : text);
  } catch (error) {
    throw new ConfigError(`${where} ${JSON.stringify(text)} is not a valid URL`, {
      cause: error,
    });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ConfigError(
      `${where} ${JSON.stringify(text)} has scheme ${
        JSON.stringify(url.protocol.slice(0, -1))
      }: only "http" and "https" are supported`,
    );
  }
  if (url.hostname === "") {
    throw new ConfigError(`${where} ${JSON.stringify(text)} has no host`);
  }
  if (url.username !== "" || url.password !== "") {
    throw new ConfigError(`${where} ${JSON.stringify(text)} must not contain credentials`);
  }
  if (url.pathname !== "/" || url.search !== "" || url.hash !== "") {
    throw new ConfigError(
      `${where} ${JSON.stringify(text)} must be a base URL like "http://host:port", ` +
        "without a path, query or fragment",
    );
  }
  return url;
}

function _describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return `${typeof value} ${JSON.stringify(value)}`;
}
