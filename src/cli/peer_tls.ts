/**
 * Peer security settings: the files of mutual TLS between peers (`--peer-cert`, `--peer-key`,
 * `--peer-ca`), checked against the scheme of the members' `rpc_url`s, and the warning for a peer
 * port open beyond loopback without them.
 *
 * @module
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import { checkCertificateDates } from "./cert_dates.ts";
import { ConfigError } from "./errors.ts";
import type { RawValue } from "./flags.ts";

/** The PEM texts (and where they came from) of a node's mutual TLS with its peers. */
export interface PeerTlsConfig {
  /** The cluster CA certificate(s) every peer's certificate must chain to. */
  ca: string;
  /** This node's certificate, whose subject CN is its node id. */
  cert: string;
  /** The private key of `cert`. */
  key: string;
  /** The file `ca` was read from. */
  caPath: string;
  /** The file `cert` was read from. */
  certPath: string;
  /** The file `key` was read from. */
  keyPath: string;
}

/** The three peer TLS settings as given (flag or variable), each possibly missing. */
export interface PeerTlsSettings {
  /** `--peer-cert` or `RAFTKV_PEER_CERT`. */
  cert: RawValue | undefined;
  /** `--peer-key` or `RAFTKV_PEER_KEY`. */
  key: RawValue | undefined;
  /** `--peer-ca` or `RAFTKV_PEER_CA`. */
  ca: RawValue | undefined;
}

/**
 * Decides whether peers use mutual TLS and loads its files: all three settings with `https:`
 * `rpc_url`s, or none of them with `http:` ones. Anything else is a configuration error, as is a
 * file that cannot be read or parsed, a key that does not belong to the certificate, a
 * certificate whose subject CN is not this node's id (peers would refuse every request), one
 * the CA did not sign (checked when each file holds a single certificate), or a certificate (or a
 * lone CA certificate) that has expired or is not valid yet (see {@linkcode checkCertificateDates}).
 *
 * @param settings The three settings.
 * @param scheme The scheme of every member's `rpc_url` (the cluster file checks that they agree),
 * or `null` when the scheme follows the settings (k8s join mode derives the URLs).
 * @param where Where the `rpc_url`s come from, for messages, such as `cluster file "c.json"`.
 * @param id This node's id.
 * @param readFile Reads a file's text.
 * @param now The time the certificates must be valid at, in milliseconds since the epoch.
 * @returns The files, or null for cleartext peers.
 * @throws {ConfigError} Naming the flag or variable and quoting the bad value.
 */
export function resolvePeerTls(
  settings: PeerTlsSettings,
  scheme: "http:" | "https:" | null,
  where: string,
  id: string,
  readFile: (path: string) => string,
  now: number = Date.now(),
): PeerTlsConfig | null {
  const names = { cert: "--peer-cert", key: "--peer-key", ca: "--peer-ca" } as const;
  const given = (["cert", "key", "ca"] as const).filter((k) => settings[k] !== undefined);
  if (given.length === 0) {
    if (scheme === "https:") {
      throw new ConfigError(
        `The ${where} lists https:// rpc_urls, which need mutual TLS between peers: pass ` +
          "--peer-cert, --peer-key and --peer-ca (or set RAFTKV_PEER_CERT, RAFTKV_PEER_KEY and " +
          "RAFTKV_PEER_CA)",
      );
    }
    return null;
  }
  const missing = (["cert", "key", "ca"] as const).filter((k) => settings[k] === undefined);
  if (missing.length > 0) {
    throw new ConfigError(
      `Peer TLS needs --peer-cert, --peer-key and --peer-ca together: ${
        given.map((k) => settings[k]!.origin).join(" and ")
      } ${given.length === 1 ? "is" : "are"} set, but not ${
        missing.map((k) => names[k]).join(" or ")
      }`,
    );
  }
  if (scheme === "http:") {
    throw new ConfigError(
      `${settings.cert!.origin}, ${settings.key!.origin} and ${settings.ca!.origin} turn on ` +
        `TLS between peers, but the ${where} lists http:// rpc_urls: write them as https://`,
    );
  }
  const read = (raw: RawValue): string => {
    try {
      return readFile(raw.value);
    } catch (error) {
      throw new ConfigError(
        `Cannot read the file of ${raw.origin} ${JSON.stringify(raw.value)}: ${
          (error as Error).message
        }`,
        { cause: error },
      );
    }
  };
  const cert = settings.cert!;
  const key = settings.key!;
  const ca = settings.ca!;
  const files: PeerTlsConfig = {
    cert: read(cert),
    key: read(key),
    ca: read(ca),
    certPath: cert.value,
    keyPath: key.value,
    caPath: ca.value,
  };
  const own = _certificate(cert, files.cert);
  const authority = _certificate(ca, files.ca);
  let privateKey;
  try {
    privateKey = createPrivateKey(files.key);
  } catch (error) {
    throw new ConfigError(
      `Invalid value for ${key.origin}: ${JSON.stringify(key.value)} holds no PEM private key ` +
        `(${(error as Error).message})`,
      { cause: error },
    );
  }
  if (!own.checkPrivateKey(privateKey)) {
    throw new ConfigError(
      `The key in ${key.origin} ${JSON.stringify(key.value)} does not belong to the certificate ` +
        `in ${cert.origin} ${JSON.stringify(cert.value)}`,
    );
  }
  const commonNames = own.subject.split("\n").filter((line) => line.startsWith("CN="));
  if (commonNames.length !== 1 || commonNames[0] !== `CN=${id}`) {
    throw new ConfigError(
      `The certificate in ${cert.origin} ${JSON.stringify(cert.value)} has subject ${
        JSON.stringify(own.subject.replaceAll("\n", ", "))
      }, but peers know a node by its certificate's CN: it must be CN=${id}, this node's id`,
    );
  }
  if (_count(files.cert) === 1 && _count(files.ca) === 1 && !own.verify(authority.publicKey)) {
    throw new ConfigError(
      `The certificate in ${cert.origin} ${JSON.stringify(cert.value)} is not signed by the CA ` +
        `in ${ca.origin} ${JSON.stringify(ca.value)}, so peers would refuse it`,
    );
  }
  checkCertificateDates(own, `${cert.origin} ${JSON.stringify(cert.value)}`, now);
  // A bundle of CAs (while the CA is replaced) may hold an old one past its end; a lone CA must
  // be valid, or no peer's certificate verifies.
  if (_count(files.ca) === 1) {
    checkCertificateDates(authority, `${ca.origin} ${JSON.stringify(ca.value)}`, now);
  }
  return files;
}

/**
 * The warning a node logs when its peer port listens beyond loopback without peer
 * authentication, or null when there is nothing to warn about.
 *
 * @param listenHost The address the peer server binds.
 * @param tls Whether peers use mutual TLS.
 */
export function peerSecurityWarning(listenHost: string, tls: boolean): string | null {
  if (tls || isLoopbackHost(listenHost)) return null;
  return `The peer port listens on ${listenHost} without peer authentication: anyone who can ` +
    "reach it can speak for any member. Use https:// rpc_urls with --peer-cert, --peer-key and " +
    "--peer-ca, or keep the port on a private network";
}

/**
 * Whether a listen address accepts local connections only: `localhost`, `127.0.0.0/8` or `::1`.
 *
 * @example Usage
 * ```ts
 * import { isLoopbackHost } from "./peer_tls.ts";
 *
 * console.assert(isLoopbackHost("127.0.0.1") && !isLoopbackHost("0.0.0.0"));
 * ```
 *
 * @param host A host name or IP address (IPv6 without brackets).
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  return h === "localhost" || h.endsWith(".localhost") || h === "::1" ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function _certificate(raw: RawValue, pem: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (error) {
    throw new ConfigError(
      `Invalid value for ${raw.origin}: ${JSON.stringify(raw.value)} holds no PEM certificate ` +
        `(${(error as Error).message})`,
      { cause: error },
    );
  }
}

function _count(pem: string): number {
  return pem.split("-----BEGIN CERTIFICATE-----").length - 1;
}
