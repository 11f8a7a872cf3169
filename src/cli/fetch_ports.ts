/**
 * The Fetch Standard's "bad ports": ports that `fetch` (Deno's, and every browser's) refuses to
 * connect to, whatever listens there. raftkv's command-line client and `--join` use `fetch`, and
 * the dashboard runs in a browser, so a node whose API is on one of them cannot be reached by
 * them (curl, and the nodes' own HTTP/2 clients, can). The node warns at start-up; the client
 * says so instead of trying.
 *
 * @module
 */

// deno-fmt-ignore
/**
 * The ports `fetch` refuses (https://fetch.spec.whatwg.org/#bad-port), as Deno 2.9 enforces
 * them. `src/cli/fetch_ports_test.ts` checks the list against the running Deno's `fetch`.
 */
export const FETCH_BAD_PORTS: ReadonlySet<number> = new Set([
  1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102,
  103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465,
  512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993,
  995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668,
  6669, 6679, 6697, 10080,
]);

/**
 * The port of an `http:` or `https:` URL when `fetch` refuses it, else null (also for a URL
 * that does not parse: that is for the caller to report).
 *
 * @example Usage
 * ```ts
 * import { fetchBlockedPort } from "./fetch_ports.ts";
 *
 * console.assert(fetchBlockedPort("http://localhost:10080") === 10080);
 * console.assert(fetchBlockedPort("http://localhost:7777") === null);
 * ```
 *
 * @param url The URL.
 * @returns The refused port, or null.
 */
export function fetchBlockedPort(url: string): number | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return null;
  const port = parsed.port === "" ? (parsed.protocol === "https:" ? 443 : 80) : Number(parsed.port);
  return FETCH_BAD_PORTS.has(port) ? port : null;
}

/**
 * Why a URL on a refused port cannot be reached, in one line (for the client's errors).
 *
 * @param port The port, from {@linkcode fetchBlockedPort}.
 * @returns The reason.
 */
export function blockedPortReason(port: number): string {
  return `port ${port} is on the Fetch Standard's list of "bad ports", which fetch (this ` +
    `client's HTTP library, as every browser's) refuses to connect to; move the node's API ` +
    `(its api_url) to another port, such as 7777 (curl can still reach this one)`;
}

/**
 * The warning a node logs at start-up when its `api_url` (the address clients are given) is on
 * a port `fetch` refuses, or null. The port it listens on does not matter when it differs (a port
 * mapping): clients use the `api_url`.
 *
 * @example Usage
 * ```ts
 * import { apiPortWarning } from "./fetch_ports.ts";
 *
 * console.assert(apiPortWarning("http://localhost:7777") === null);
 * console.assert(apiPortWarning("http://localhost:10080") !== null);
 * ```
 *
 * @param apiUrl The node's `api_url`.
 * @returns The warning, or null.
 */
export function apiPortWarning(apiUrl: string): string | null {
  const port = fetchBlockedPort(apiUrl);
  if (port === null) return null;
  return `The API port ${port} (api_url ${apiUrl}) is on the Fetch Standard's list of "bad ` +
    'ports", which fetch refuses to connect to: the raftkv command-line client, --join and ' +
    "browsers (the dashboard) cannot reach this node there (curl can). Give its api_url another " +
    "port, such as 7777";
}
