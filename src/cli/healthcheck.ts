/**
 * The `raftkv healthcheck` subcommand, for container health checks without curl.
 *
 * @module
 */

import http from "node:http";
import https from "node:https";
import { DEFAULTS, HEALTHCHECK_CACERT_ENV } from "./flags.ts";

/**
 * `raftkv healthcheck [--url <url>] [--cacert <file>]`, for a container HEALTHCHECK without
 * curl: exits 0 when the URL answers 200 within 2 seconds, else 1 (also on bad usage: Docker
 * reserves exit code 2). The default URL is `/health` on `RAFTKV_API_PORT` (else 7777) of
 * `RAFTKV_LISTEN_HOST`, or of 127.0.0.1 when that is unset or a wildcard address; it is `https`
 * when `RAFTKV_API_CERT` is set (the node serves TLS).
 *
 * Over `https` the server's certificate chain is verified against the CA in `--cacert` (else
 * `RAFTKV_HEALTHCHECK_CACERT`, else the system's CAs), but not its name: the probe usually dials
 * a loopback address that the node's certificate need not name. `/health` needs no token.
 *
 * @param args The arguments after `healthcheck`.
 * @returns The exit code.
 */
export async function healthcheck(args: string[]): Promise<number> {
  const usage = "Usage: raftkv healthcheck [--url http://127.0.0.1:7777/health] [--cacert ca.crt]";
  let url: string | undefined;
  let cacert = Deno.env.get(HEALTHCHECK_CACERT_ENV) || undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? "";
    if (arg === "--help" || arg === "-h") {
      console.log(
        `${usage}\nExits 0 if the URL answers 200 within 2 s, else 1. --cacert (or ` +
          `${HEALTHCHECK_CACERT_ENV}): the CA that signed the API's certificate.`,
      );
      return 0;
    }
    if (arg === "--url" && i + 1 < args.length) url = args[++i];
    else if (arg.startsWith("--url=")) url = arg.slice("--url=".length);
    else if (arg === "--cacert" && i + 1 < args.length) cacert = args[++i];
    else if (arg.startsWith("--cacert=")) cacert = arg.slice("--cacert=".length);
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
    const scheme = Deno.env.get("RAFTKV_API_CERT") ? "https" : "http";
    url = `${scheme}://${host}:${port}/health`;
  }
  const timeoutMs = 2000;
  try {
    const ca = cacert === undefined ? undefined : await Deno.readTextFile(cacert);
    const status = await _get(url, ca, timeoutMs);
    if (status === 200) return 0;
    console.error(`unhealthy: ${url} answered ${status}`);
  } catch (e) {
    console.error(`unhealthy: ${url}: ${e instanceof Error ? e.message : String(e)}`);
  }
  return 1;
}

/** GETs `url` and resolves with the status; rejects after `timeoutMs` or on any failure. */
function _get(url: string, ca: string | undefined, timeoutMs: number): Promise<number> {
  const target = new URL(url);
  if (target.protocol !== "http:" && target.protocol !== "https:") {
    return Promise.reject(new Error("the URL must be http or https"));
  }
  return new Promise((resolve, reject) => {
    const options: https.RequestOptions = {
      method: "GET",
      signal: AbortSignal.timeout(timeoutMs),
      // The chain is checked against the CA; the name is not (see healthcheck()).
      checkServerIdentity: () => undefined,
    };
    if (ca !== undefined) options.ca = ca;
    const onAnswer = (res: http.IncomingMessage) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    };
    const req = target.protocol === "https:"
      ? https.request(target, options, onAnswer)
      : http.request(target, { method: "GET", signal: options.signal! }, onAnswer);
    req.on("error", (e) => {
      reject(e.name === "AbortError" ? new Error(`no answer within ${timeoutMs}ms`) : e);
    });
    req.end();
  });
}
