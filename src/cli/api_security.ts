/**
 * The client API's security settings: its TLS files (`--api-cert`, `--api-key`), its bearer
 * tokens (`--tokens-file`, or the JSON itself in `RAFTKV_TOKENS`: an array of `{"token", "role",
 * "name"?}` objects) and the warning for an API open beyond loopback. Everything is checked
 * strictly here, so that a mistake stops the node at start-up instead of locking clients out (or
 * letting them in) at run time.
 *
 * @module
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import { checkCertificateDates } from "./cert_dates.ts";
import { ConfigError } from "./errors.ts";
import { type RawValue, TOKENS_ENV } from "./flags.ts";

/** The client API's certificate and key, as PEM text. */
export interface ApiTls {
  /** The certificate (chain), PEM. */
  cert: string;
  /** Its private key, PEM. */
  key: string;
}

/**
 * Reads `--api-cert` and `--api-key` and checks them against this node's `api_url`: both or
 * neither, and an `https` `api_url` exactly when they are given (clients, and the leader's
 * address in `/v1/status`, must name the scheme the node serves).
 *
 * @param cert The `--api-cert` setting, if any.
 * @param key The `--api-key` setting, if any.
 * @param apiUrl This node's `api_url` (in k8s mode the derived one, whose scheme follows the
 * files: pass `null`).
 * @param readFile Reads a file's text.
 * @param now The time the certificate must be valid at, in milliseconds since the epoch.
 * @returns The PEM texts, or `null` for plain HTTP.
 * @throws {ConfigError} On one file without the other, a scheme that does not match, a file
 * that cannot be read or holds no PEM certificate or key, or a certificate that has expired or is
 * not valid yet (see {@linkcode checkCertificateDates}).
 */
export function readApiTls(
  cert: RawValue | undefined,
  key: RawValue | undefined,
  apiUrl: string | null,
  readFile: (path: string) => string,
  now: number = Date.now(),
): ApiTls | null {
  const https = apiUrl !== null && apiUrl.startsWith("https:");
  if (cert === undefined && key === undefined) {
    if (!https) return null;
    throw new ConfigError(
      `This node's api_url ${JSON.stringify(apiUrl)} is https, so it needs --api-cert and ` +
        "--api-key (or RAFTKV_API_CERT and RAFTKV_API_KEY)",
    );
  }
  if (cert === undefined || key === undefined) {
    const [given, missing] = cert === undefined ? [key!, "--api-cert"] : [cert, "--api-key"];
    throw new ConfigError(`${given.origin} is set but ${missing} is not: TLS needs both files`);
  }
  if (apiUrl !== null && !https) {
    throw new ConfigError(
      `${cert.origin} is set, so this node serves HTTPS, but its api_url ${
        JSON.stringify(apiUrl)
      } in the cluster file is http: write it as https://`,
    );
  }
  const tls = {
    cert: _readPem(cert, readFile, /-----BEGIN CERTIFICATE-----/, "a PEM certificate"),
    key: _readPem(key, readFile, /-----BEGIN [A-Z ]*PRIVATE KEY-----/, "a PEM private key"),
  };
  let parsed: X509Certificate | null = null;
  try {
    parsed = new X509Certificate(tls.cert);
  } catch {
    // Said by the server at start, and by checkApiKeyPair on a reload.
  }
  if (parsed !== null) {
    checkCertificateDates(parsed, `${cert.origin} ${JSON.stringify(cert.value)}`, now);
  }
  return tls;
}

/**
 * Checks that the API's key belongs to its certificate (the first of the file's chain). Start-up
 * leaves this to the server, which refuses to listen; a reload must know before it swaps the
 * running server's certificate.
 *
 * @param tls The PEM texts {@linkcode readApiTls} read.
 * @param cert The `--api-cert` setting, for messages.
 * @param key The `--api-key` setting, for messages.
 * @throws {ConfigError} If either does not parse, or the key is another certificate's.
 */
export function checkApiKeyPair(tls: ApiTls, cert: RawValue, key: RawValue): void {
  const where = (s: RawValue) => `${s.origin} ${JSON.stringify(s.value)}`;
  let matches: boolean;
  try {
    matches = new X509Certificate(tls.cert).checkPrivateKey(createPrivateKey(tls.key));
  } catch (error) {
    throw new ConfigError(
      `${where(cert)} and ${where(key)} do not load as a certificate and its key (${
        (error as Error).message
      })`,
      { cause: error },
    );
  }
  if (!matches) {
    throw new ConfigError(
      `The key in ${where(key)} does not belong to the certificate in ${where(cert)}`,
    );
  }
}

/**
 * Reads the API's tokens: from the file named by `--tokens-file`, or the JSON in
 * `RAFTKV_TOKENS`; not both.
 *
 * @param file The `--tokens-file` setting, if any.
 * @param json The value of `RAFTKV_TOKENS`, if set and not empty.
 * @param readFile Reads a file's text.
 * @returns The tokens, or `null` when none are configured (the API is open).
 * @throws {ConfigError} If both are set, the file cannot be read, or {@linkcode parseTokens}
 * refuses the tokens.
 */
export function readTokens(
  file: RawValue | undefined,
  json: string | undefined,
  readFile: (path: string) => string,
): TokenConfig[] | null {
  if (file !== undefined && json !== undefined) {
    throw new ConfigError(
      `Both ${file.origin} and ${TOKENS_ENV} are set: give the API's tokens in one place only`,
    );
  }
  if (json !== undefined) return parseTokens(json, TOKENS_ENV);
  if (file === undefined) return null;
  const origin = `${file.origin} ${JSON.stringify(file.value)}`;
  let text: string;
  try {
    text = readFile(file.value);
  } catch (error) {
    throw new ConfigError(`Cannot read ${origin}: ${(error as Error).message}`, { cause: error });
  }
  return parseTokens(text, origin);
}

/**
 * Reads the tokens file again (on SIGHUP, or because it changed) and hands its tokens to
 * `replace`, which puts them in force. A file that cannot be read or holds bad tokens changes
 * nothing: the tokens in force stay in force, and the answer says why.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { reloadTokensFile } from "./api_security.ts";
 *
 * const file = { value: "tokens.json", origin: "--tokens-file" };
 * const text = JSON.stringify([{ token: "0123456789abcdef0123", role: "write", name: "ci" }]);
 * const said = reloadTokensFile(file, (tokens) => tokens.length - 1, () => text);
 * assert.equal(said.level, "info");
 * assert.match(said.message, /reloaded 1 token from --tokens-file "tokens.json"/);
 * ```
 *
 * @param file The `--tokens-file` setting, or `null` when the tokens came from elsewhere.
 * @param replace Puts the tokens in force; returns how many requests held on a revoked token
 * (watch streams, blocking reads) it ended.
 * @param readFile Reads a file's text.
 * @param reason Why the file is read again, at the start of each message. Default `"SIGHUP"`.
 * @returns What to log, and at which level.
 */
export function reloadTokensFile(
  file: RawValue | null,
  replace: (tokens: readonly TokenConfig[]) => number,
  readFile: (path: string) => string,
  reason = "SIGHUP",
): { level: "info" | "warn" | "error"; message: string } {
  if (file === null) {
    return {
      level: "warn",
      message:
        `${reason}: this node has no --tokens-file to read again (tokens from ${TOKENS_ENV}, ` +
        "or none, change with a restart); nothing changed",
    };
  }
  try {
    const tokens = readTokens(file, undefined, readFile)!;
    const ended = replace(tokens);
    const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? "" : "s"}`;
    return {
      level: "info",
      message:
        `${reason}: reloaded ${plural(tokens.length, "token")} from ${file.origin} ${
          JSON.stringify(file.value)
        }` +
        (ended > 0
          ? `; ended ${
            plural(ended, "request")
          } held on a revoked token (watch streams, blocking reads)`
          : ""),
    };
  } catch (e) {
    return {
      level: "error",
      message: `${reason}: could not reload the tokens (${
        e instanceof Error ? e.message : String(e)
      }); the tokens in force stay in force`,
    };
  }
}

/**
 * Whether `host` (a listen address) accepts only connections from this machine: `localhost`,
 * `127.0.0.0/8` or `::1`.
 *
 * @param host The host name or address, IPv6 without brackets.
 * @returns `true` for a loopback address.
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * The warning for an API that anyone on the network may use: it listens beyond loopback and no
 * tokens are configured.
 *
 * @param listenHost The address the API listens on.
 * @param port The API's port.
 * @param tokens The tokens, or `null`.
 * @returns The warning, or `null` when there is nothing to warn about.
 */
export function openApiWarning(
  listenHost: string,
  port: number,
  tokens: readonly TokenConfig[] | null,
): string | null {
  if (tokens !== null || isLoopbackHost(listenHost)) return null;
  return `The client API listens on ${listenHost}:${port} without authentication: anyone who ` +
    "can reach it can read, write and download every key. Set --tokens-file (or " +
    `${TOKENS_ENV}), or --listen-host 127.0.0.1`;
}

function _readPem(
  setting: RawValue,
  readFile: (path: string) => string,
  marker: RegExp,
  what: string,
): string {
  const origin = `${setting.origin} ${JSON.stringify(setting.value)}`;
  let text: string;
  try {
    text = readFile(setting.value);
  } catch (error) {
    throw new ConfigError(`Cannot read ${origin}: ${(error as Error).message}`, { cause: error });
  }
  if (!marker.test(text)) throw new ConfigError(`${origin} does not hold ${what}`);
  return text;
}

/** What a token may do: `read` < `write` < `admin` (each includes the ones before it). */
export type AccessRole = "read" | "write" | "admin";

/** The roles, weakest first. */
export const ACCESS_ROLES: readonly AccessRole[] = ["read", "write", "admin"];

/** One configured token. */
export interface TokenConfig {
  /** The secret a client sends as `Authorization: Bearer <token>`. */
  token: string;
  /** What it may do. */
  role: AccessRole;
  /** How logs name its holder (never the token itself): the `name` given, else `token-<n>`. */
  name: string;
}

/** The shortest token accepted, in characters (16 hex digits are 64 bits). */
export const MIN_TOKEN_LENGTH = 16;

/** A token: RFC 6750's `b64token` syntax, so that it travels in a header unchanged. */
const _TOKEN_SYNTAX = /^[A-Za-z0-9\-._~+/]+=*$/;

/** A name: safe to print in a log line and to carry in a header. */
export const TOKEN_NAME_PATTERN: RegExp = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

const _FIELDS = ["token", "role", "name"];

/**
 * Parses and checks the tokens: a non-empty JSON array of objects with a `token` (at least
 * {@linkcode MIN_TOKEN_LENGTH} characters of `b64token` syntax, such as the output of `openssl
 * rand -hex 32`), a `role` (`read`, `write` or `admin`) and an optional `name` (letters, digits,
 * `.`, `_`, `@`, `-`; at most 64), and no other field. No token may appear twice. Messages never
 * quote a token.
 *
 * @example Usage
 * ```ts
 * import { parseTokens } from "./api_security.ts";
 *
 * const tokens = parseTokens(
 *   '[{"token":"0123456789abcdef0123","role":"write","name":"ci"}]',
 *   "--tokens-file tokens.json",
 * );
 * console.assert(tokens[0]?.role === "write");
 * ```
 *
 * @param text The JSON text.
 * @param origin Where it came from, for messages (`--tokens-file "t.json"`, `RAFTKV_TOKENS`).
 * @returns The tokens, in order, each with a name.
 * @throws {ConfigError} On anything else, naming the entry and the problem.
 */
export function parseTokens(text: string, origin: string): TokenConfig[] {
  const where = `Invalid tokens in ${origin}`;
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    // Not the parser's message: it quotes the text around the fault, which may be a token.
    const at = /at position \d+(?: \(line \d+ column \d+\))?/.exec((error as Error).message);
    throw new ConfigError(
      `${where}: not valid JSON${at === null ? "" : ` (${at[0]})`}; the text is not quoted here, ` +
        "as it holds tokens",
    );
  }
  if (!Array.isArray(data)) {
    throw new ConfigError(`${where}: expected a JSON array of {"token", "role", "name"} objects`);
  }
  if (data.length === 0) {
    throw new ConfigError(
      `${where}: the array lists no tokens (to run without authentication, set no tokens at all)`,
    );
  }
  const seen = new Map<string, number>();
  return data.map((item: unknown, index): TokenConfig => {
    const entry = `${where}: entry ${index + 1}`;
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      throw new ConfigError(`${entry} is not an object`);
    }
    const record = item as Record<string, unknown>;
    const unknown = Object.keys(record).find((key) => !_FIELDS.includes(key));
    if (unknown !== undefined) {
      throw new ConfigError(
        `${entry}: unknown field ${JSON.stringify(unknown)} (expected "token", "role", "name")`,
      );
    }
    const { token, role, name } = record;
    if (typeof token !== "string" || token === "") {
      throw new ConfigError(`${entry}: "token" must be a non-empty string`);
    }
    if (token.length < MIN_TOKEN_LENGTH) {
      throw new ConfigError(
        `${entry}: the token has ${token.length} characters; use at least ${MIN_TOKEN_LENGTH} ` +
          "(for example the output of: openssl rand -hex 32)",
      );
    }
    if (!_TOKEN_SYNTAX.test(token)) {
      throw new ConfigError(
        `${entry}: the token may hold only letters, digits and - . _ ~ + / (then = padding)`,
      );
    }
    const first = seen.get(token);
    if (first !== undefined) {
      throw new ConfigError(`${entry}: the same token as entry ${first}`);
    }
    seen.set(token, index + 1);
    if (!ACCESS_ROLES.includes(role as AccessRole)) {
      throw new ConfigError(
        `${entry}: "role" is ${JSON.stringify(role) ?? "missing"}; expected "read", "write" or ` +
          '"admin"',
      );
    }
    if (name !== undefined && (typeof name !== "string" || !TOKEN_NAME_PATTERN.test(name))) {
      throw new ConfigError(
        `${entry}: "name" ${JSON.stringify(name)} must be 1-64 letters, digits, ".", "_", "@" ` +
          'or "-", starting with a letter or digit',
      );
    }
    return { token, role: role as AccessRole, name: name ?? `token-${index + 1}` };
  });
}
