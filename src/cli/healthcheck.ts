/**
 * The `raftkv healthcheck` subcommand, for container health checks without curl.
 *
 * @module
 */

import { DEFAULTS } from "./flags.ts";

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
