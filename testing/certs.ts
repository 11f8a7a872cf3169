/**
 * A throwaway certificate authority for local TLS clusters and tests, made with the `openssl`
 * command (no hand-written ASN.1).
 *
 * {@linkcode makeCertificates} writes into a directory:
 * - `ca.crt` / `ca.key`: a self-signed CA (EC P-256);
 * - `<node_id>.crt` / `<node_id>.key` per node: signed by the CA, subject CN = the node id (the
 *   identity a peer presents for mutual TLS), usable as server and client certificate, valid for
 *   `localhost`, `127.0.0.1`, `::1` and any extra host names given;
 * - `other-ca.crt` / `other-ca.key` when `untrustedCa` is set: a second CA nobody trusts, and a
 *   certificate from it per entry of `untrustedNodes`, to test that such a peer is refused.
 *
 * Private keys are written 0600.
 *
 * @example Usage
 * ```ts ignore
 * import { makeCertificates } from "./certs.ts";
 *
 * const dir = await Deno.makeTempDir();
 * const certs = await makeCertificates(dir, { nodes: ["node-1", "node-2", "node-3"] });
 * console.log(certs.ca, certs.node("node-1").cert, certs.node("node-1").key);
 * ```
 *
 * @module
 */

import { join } from "node:path";
import tls from "node:tls";

/** The files of one certificate and its private key. */
export interface CertificatePair {
  /** PEM certificate file. */
  cert: string;
  /** PEM private key file (mode 0600). */
  key: string;
}

/** What {@linkcode makeCertificates} wrote. */
export interface Certificates {
  /** The directory everything is in. */
  dir: string;
  /** The CA certificate file every node and client trusts. */
  ca: string;
  /** The certificate and key of a node named in `nodes` (or `untrustedNodes`). */
  node(id: string): CertificatePair;
}

/** Options for {@linkcode makeCertificates}. */
export interface MakeCertificatesOptions {
  /** Node ids: one certificate each, CN = the id. */
  nodes: readonly string[];
  /** Extra DNS names or IP addresses every node certificate is valid for. */
  hosts?: readonly string[];
  /** Certificates signed by a second, untrusted CA, one per id (CN = the id). */
  untrustedNodes?: readonly string[];
  /** Days the certificates are valid (default 365). */
  days?: number;
  /**
   * The node certificates' exact validity instead of `days` from now, as `YYYYMMDDHHMMSSZ` (for
   * example `20200101000000Z`): a period in the past makes expired certificates.
   */
  validity?: { from: string; to: string };
  /**
   * Keep the CA an earlier call wrote into `dir` and issue new certificates (new keys) from it,
   * over the old files: a renewal, as before an expiry. Each node's new key and certificate
   * replace the old files by two renames back to back, as a careful renewal tool does. Default:
   * a new CA.
   */
  renew?: boolean;
}

/**
 * Creates a CA and one certificate per node with `openssl`.
 *
 * @param dir An existing directory to write the files into.
 * @param options The node ids and host names.
 * @returns Where the files are.
 * @throws {Error} If `openssl` is missing or fails.
 */
export async function makeCertificates(
  dir: string,
  options: MakeCertificatesOptions,
): Promise<Certificates> {
  const days = String(options.days ?? 365);
  const hosts = ["localhost", "127.0.0.1", "::1", ...(options.hosts ?? [])];
  const san = hosts.map((h) => (_isIp(h) ? `IP:${h}` : `DNS:${h}`)).join(",");
  const files = new Map<string, CertificatePair>();

  const makeCa = async (name: string) => {
    await _openssl([
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      join(dir, `${name}.key`),
      "-out",
      join(dir, `${name}.crt`),
      "-days",
      days,
      "-subj",
      `/CN=raftkv ${name}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    await Deno.chmod(join(dir, `${name}.key`), 0o600);
  };

  const makeLeaf = async (id: string, ca: string) => {
    if (!/^[A-Za-z0-9._-]+$/.test(id)) throw new Error(`node id ${id} cannot name a file`);
    const key = join(dir, `${id}.key`);
    const cert = join(dir, `${id}.crt`);
    // Made under other names and renamed into place back to back: a node watching the files
    // never finds a new key beside the old certificate for longer than between two renames.
    const [newKey, newCert] = [`${key}.new`, `${cert}.new`];
    const csr = join(dir, `${id}.csr`);
    const ext = join(dir, `${id}.ext`);
    await _openssl([
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      newKey,
      "-out",
      csr,
      "-subj",
      `/CN=${id}`,
    ]);
    await Deno.writeTextFile(
      ext,
      [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth,clientAuth",
        `subjectAltName=${san}`,
        "",
      ].join("\n"),
    );
    if (options.validity === undefined) {
      await _openssl([
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        join(dir, `${ca}.crt`),
        "-CAkey",
        join(dir, `${ca}.key`),
        "-CAcreateserial",
        "-out",
        newCert,
        "-days",
        days,
        "-extfile",
        ext,
      ]);
    } else {
      await _signWithDates(dir, ca, csr, ext, newCert, options.validity);
    }
    await Deno.remove(csr);
    await Deno.remove(ext);
    await Deno.chmod(newKey, 0o600);
    await Deno.rename(newKey, key);
    await Deno.rename(newCert, cert);
    files.set(id, { cert, key });
  };

  if (!options.renew) await makeCa("ca");
  for (const id of options.nodes) await makeLeaf(id, "ca");
  if (options.untrustedNodes?.length) {
    await makeCa("other-ca");
    for (const id of options.untrustedNodes) await makeLeaf(id, "other-ca");
  }
  return {
    dir,
    ca: join(dir, "ca.crt"),
    node(id: string): CertificatePair {
      const pair = files.get(id);
      if (!pair) throw new Error(`no certificate was made for ${id}`);
      return pair;
    },
  };
}

/**
 * The SHA-256 fingerprint of the certificate an HTTP/2 TLS server on `127.0.0.1:port` presents to
 * a new connection (as `localhost`), trusting `ca` and presenting `pair` (PEM texts) if given.
 * With TLS 1.3 the server checks a client's certificate after the client deems the handshake
 * done, so this waits for the server's first HTTP/2 frame before it calls the connection taken.
 *
 * @param port The server's port.
 * @param ca The PEM CA certificate(s) to trust.
 * @param pair The client certificate and key to present, or `null`.
 * @returns The fingerprint, as `X509Certificate.fingerprint256` gives it.
 * @throws {Error} If the handshake fails (the server refused the client's certificate, or the
 * client the server's) or nothing comes back within 5 s.
 */
export function servedCertificate(
  port: number,
  ca: string,
  pair: { cert: string; key: string } | null = null,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ca,
      ALPNProtocols: ["h2"],
      ...(pair ?? {}),
    });
    const timer = setTimeout(() => fail(new Error("no answer within 5 s")), 5000);
    const fail = (e: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    };
    socket.once("secureConnect", () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      socket.once("data", () => {
        clearTimeout(timer);
        socket.destroy();
        resolve(fingerprint);
      });
    });
    socket.once("error", fail);
    socket.once("close", () => fail(new Error("the server closed the connection")));
  });
}

/** The roles of a tokens file made by {@linkcode writeTokensFile}, one token each. */
export const TOKEN_ROLES = ["read", "write", "admin"] as const;

/** One token per role. */
export type RoleTokens = Record<(typeof TOKEN_ROLES)[number], string>;

/**
 * A random bearer token: 32 bytes from `crypto.getRandomValues`, as 64 hex digits.
 *
 * @returns The token.
 */
export function randomToken(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(32)))
    .map((byte) => byte.toString(16).padStart(2, "0"))
    .join("");
}

/**
 * Writes a new tokens file for `--tokens-file` (mode 0600; never over an existing file) with one
 * random token per role, named `<namePrefix><role>`.
 *
 * @param path The file to create.
 * @param namePrefix Prefix of each token's name (default none).
 * @returns The token of each role.
 * @throws {Deno.errors.AlreadyExists} If the file exists.
 */
export async function writeTokensFile(path: string, namePrefix = ""): Promise<RoleTokens> {
  const tokens = Object.fromEntries(TOKEN_ROLES.map((role) => [role, randomToken()])) as RoleTokens;
  const entries = TOKEN_ROLES.map((role) => ({
    token: tokens[role],
    role,
    name: `${namePrefix}${role}`,
  }));
  await Deno.writeTextFile(path, `${JSON.stringify(entries, null, 2)}\n`, {
    mode: 0o600,
    createNew: true,
  });
  await Deno.chmod(path, 0o600);
  return tokens;
}

function _isIp(host: string): boolean {
  return /^\d+\.\d+\.\d+\.\d+$/.test(host) || host.includes(":");
}

/**
 * Signs `csr` with the CA `ca` for exactly `validity`: `openssl x509` (3.0) dates a certificate
 * from now, `openssl ca` takes a start and an end. Its database lives in a directory of its own,
 * removed afterwards.
 */
async function _signWithDates(
  dir: string,
  ca: string,
  csr: string,
  ext: string,
  out: string,
  validity: { from: string; to: string },
): Promise<void> {
  const db = await Deno.makeTempDir({ dir, prefix: "ca-db-" });
  try {
    await Deno.writeTextFile(join(db, "index.txt"), "");
    await Deno.writeTextFile(join(db, "serial"), `${crypto.randomUUID().replaceAll("-", "")}\n`);
    await Deno.writeTextFile(
      join(db, "ca.cnf"),
      [
        "[ca]",
        "default_ca = this",
        "[this]",
        `database = ${join(db, "index.txt")}`,
        `serial = ${join(db, "serial")}`,
        `new_certs_dir = ${db}`,
        "default_md = sha256",
        "policy = any",
        "unique_subject = no",
        "[any]",
        "commonName = supplied",
        "",
      ].join("\n"),
    );
    await _openssl([
      "ca",
      "-batch",
      "-notext",
      "-config",
      join(db, "ca.cnf"),
      "-cert",
      join(dir, `${ca}.crt`),
      "-keyfile",
      join(dir, `${ca}.key`),
      "-in",
      csr,
      "-out",
      out,
      "-startdate",
      validity.from,
      "-enddate",
      validity.to,
      "-extfile",
      ext,
    ]);
  } finally {
    await Deno.remove(db, { recursive: true });
  }
}

async function _openssl(args: string[]): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`cannot run openssl (is it installed?): ${e instanceof Error ? e.message : e}`);
  }
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`openssl ${args[0]} failed: ${err}`);
  }
}
