/**
 * The socket under a `node:http2` client session, opened by hand so that the session can be
 * closed without GOAWAY (destroy the socket first: Deno's `node:http2` server can abort the whole
 * process on a GOAWAY that arrives while requests are in flight, denoland/deno#36788).
 *
 * @module
 */

import net from "node:net";
import tls from "node:tls";

/**
 * Opens the TCP (or, with `tlsOptions`, TLS with ALPN `h2`) connection to `url`'s host and port,
 * as `http2.connect` would; pass it as `createConnection` to `http2.connect`.
 *
 * @example Usage
 * ```ts ignore
 * import http2 from "node:http2";
 * import { connectH2Socket } from "./h2_socket.ts";
 *
 * const url = new URL("http://127.0.0.1:6666");
 * const socket = connectH2Socket(url, null);
 * const session = http2.connect(url, { createConnection: () => socket });
 * ```
 *
 * @param url The peer's URL (`http:` or `https:`); its port defaults to 80 or 443.
 * @param tlsOptions TLS settings (CA, client certificate, ...), or `null` for cleartext.
 * @returns The socket, connecting.
 */
export function connectH2Socket(url: URL, tlsOptions: tls.ConnectionOptions | null): net.Socket {
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = Number(url.port || (tlsOptions === null ? 80 : 443));
  if (tlsOptions === null) return net.connect({ host, port });
  return tls.connect({
    ...tlsOptions,
    host,
    port,
    ALPNProtocols: ["h2"],
    ...(net.isIP(host) === 0 ? { servername: host } : {}),
  });
}
