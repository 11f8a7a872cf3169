/**
 * The client's HTTP side: requests to the cluster's public REST API over a list of endpoints,
 * tried in turn when one cannot be connected to, with a bearer token and a private CA if given,
 * and the mapping of answers to the client's exit codes.
 *
 * @module
 */

import { blockedPortReason, fetchBlockedPort } from "../fetch_ports.ts";
import { ClientError, EXIT } from "./options.ts";

/** Options of {@linkcode ApiClient}. */
export interface ApiClientOptions {
  /** Base URLs, in the order to try them. */
  endpoints: readonly string[];
  /** PEM text of a CA to trust (for https endpoints), or null for the system's CAs. */
  caCert: string | null;
  /** Bearer token, or null. */
  token: string | null;
  /** Deadline of one request (its retries included), in milliseconds. */
  timeoutMs: number;
}

/** An answer of the API. */
export interface ApiAnswer {
  /** The HTTP status. */
  status: number;
  /** The body parsed as JSON, or null when it is not JSON. */
  json: unknown;
  /** The body as text. */
  text: string;
  /** The endpoint that answered. */
  endpoint: string;
  /**
   * The applied index of the state the answer reflects (its `X-Raftkv-Index`), or null without
   * one.
   */
  index: number | null;
}

/** Options of one {@linkcode ApiClient.send}. */
export interface SendOptions {
  /** The JSON body. */
  body?: unknown;
  /**
   * Whether to try again on 503 and 429 (refusals that change nothing: the node knows no leader,
   * or is overloaded), on the other endpoints and then after a pause, until the deadline.
   * Default true.
   */
  retryRefused?: boolean;
  /** Which endpoint to try first (an index into the list, modulo its length). Default 0. */
  first?: number;
  /** Deadline in milliseconds. Default: the client's. */
  timeoutMs?: number;
  /** Base URLs to try instead of the client's endpoints (such as a member's own address). */
  endpoints?: readonly string[];
  /** Extra request headers (`Last-Event-ID`, say). */
  headers?: Readonly<Record<string, string>>;
  /** Gives up when it aborts, as at the deadline. */
  signal?: AbortSignal;
}

/** Why a request did not get an answer. */
export type NoAnswer =
  /** No endpoint could be connected to: the request reached no node. */
  | "unreachable"
  /** The deadline passed, or the connection broke after the request was sent. */
  | "unknown";

/**
 * The request got no answer. `kind` says whether it can have had an effect (`"unknown"`) or
 * certainly not (`"unreachable"`).
 */
export class NoAnswerError extends ClientError {
  /** Whether the request may have reached a node. */
  readonly kind: NoAnswer;

  /**
   * Creates the error.
   *
   * @param kind Whether the request may have reached a node.
   * @param message What happened, per endpoint.
   */
  constructor(kind: NoAnswer, message: string) {
    super(message, kind === "unreachable" ? EXIT.unreachable : EXIT.error);
    this.name = "NoAnswerError";
    this.kind = kind;
  }
}

const _RETRY_PAUSE_MS = 200;

/**
 * Talks to the cluster's REST API. Every request goes to the first endpoint that can be
 * connected to; one that cannot is skipped (the request never left, so trying the next is safe
 * for writes too). A broken connection after the request was sent is not retried for writes:
 * their outcome is unknown. Close the client when done.
 */
export class ApiClient {
  readonly #options: ApiClientOptions;
  readonly #http: Deno.HttpClient | undefined;

  /**
   * Creates the client.
   *
   * @param options Endpoints, CA, token and deadline.
   */
  constructor(options: ApiClientOptions) {
    this.#options = options;
    this.#http = options.caCert === null
      ? undefined
      : Deno.createHttpClient({ caCerts: [options.caCert] });
  }

  /** The endpoints, in order. */
  get endpoints(): readonly string[] {
    return this.#options.endpoints;
  }

  /**
   * Sends a request and reads the whole answer.
   *
   * @param method The HTTP method.
   * @param path The path and query, such as `/v1/data/a`.
   * @param options Body, retries, first endpoint, deadline.
   * @returns The answer (any status).
   * @throws {NoAnswerError} When no endpoint answered within the deadline.
   */
  async send(method: string, path: string, options: SendOptions = {}): Promise<ApiAnswer> {
    return await this.#exchange(method, path, options, readAnswer);
  }

  /**
   * Sends a GET whose answer is streamed (a backup): the deadline covers the answer's headers
   * only. The caller must read or cancel the body.
   *
   * @param path The path.
   * @param options Retries, first endpoint, deadline, endpoints.
   * @returns The response and the endpoint that gave it.
   * @throws {NoAnswerError} When no endpoint answered within the deadline.
   */
  async stream(
    path: string,
    options: SendOptions = {},
  ): Promise<{ response: Response; endpoint: string }> {
    return await this.#exchange(
      "GET",
      path,
      options,
      (response, endpoint) => Promise.resolve({ response, endpoint }),
      false,
    );
  }

  /** Releases the connections. */
  close(): void {
    this.#http?.close();
  }

  async #exchange<T>(
    method: string,
    path: string,
    options: SendOptions,
    read: (res: Response, endpoint: string) => Promise<T>,
    deadlineCoversBody = true,
  ): Promise<T> {
    const endpoints = options.endpoints ?? this.#options.endpoints;
    const timeoutMs = options.timeoutMs ?? this.#options.timeoutMs;
    const retryRefused = options.retryRefused ?? true;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const signal = options.signal === undefined
      ? controller.signal
      : AbortSignal.any([controller.signal, options.signal]);
    const write = method !== "GET" && method !== "HEAD";
    const problems = new Map<string, string>();
    // The last refusal (503, 429), read at once (a small JSON body), given as the answer if the
    // deadline passes before any endpoint accepts.
    let refused: { status: number; text: string; headers: Headers; endpoint: string } | null = null;
    let reached = false;
    try {
      for (let round = 0;; round++) {
        for (let i = 0; i < endpoints.length; i++) {
          const endpoint = endpoints[((options.first ?? 0) + i) % endpoints.length]!;
          // fetch would refuse it with a terse "Requests to port N are blocked": say why.
          const blocked = fetchBlockedPort(endpoint);
          if (blocked !== null) {
            problems.set(endpoint, blockedPortReason(blocked));
            continue;
          }
          let res: Response;
          try {
            res = await fetch(endpoint + path, this.#init(method, options, signal));
          } catch (error) {
            // A request in flight at the deadline may have reached the node.
            if (signal.aborted) throw this.#timedOut(method, path, timeoutMs, true, problems);
            const message = _reason(error);
            problems.set(endpoint, message);
            if (_notSent(message)) continue;
            reached = true;
            if (write) {
              throw new NoAnswerError(
                "unknown",
                `${method} ${endpoint}${path}: the connection broke (${message}); the write ` +
                  "may or may not have been applied",
              );
            }
            continue;
          }
          reached = true;
          if (retryRefused && (res.status === 503 || res.status === 429)) {
            try {
              refused = {
                status: res.status,
                text: await res.text(),
                headers: res.headers,
                endpoint,
              };
            } catch {
              if (signal.aborted) break;
            }
            continue;
          }
          if (!deadlineCoversBody) clearTimeout(timer);
          try {
            return await read(res, endpoint);
          } catch (error) {
            if (signal.aborted) throw this.#timedOut(method, path, timeoutMs, true, problems);
            throw new NoAnswerError(
              "unknown",
              `${method} ${endpoint}${path}: reading the answer failed (${_reason(error)})` +
                (write ? "; the write may or may not have been applied" : ""),
            );
          }
        }
        if (!signal.aborted && refused === null) {
          throw new NoAnswerError(
            "unreachable",
            `no endpoint could be reached: ${
              [...problems].map(([e, m]) => `${e}: ${m}`).join("; ")
            }`,
          );
        }
        // Every endpoint refused (503, 429) or could not be reached: pause, then go round again.
        if (!signal.aborted) {
          const seconds = Number(refused?.headers.get("retry-after"));
          const hinted = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
          const pause = Math.min(_RETRY_PAUSE_MS * 2 ** Math.min(round, 3), 1000);
          await _sleep(Math.max(pause, Math.min(hinted, 1000)), signal);
        }
        if (signal.aborted) {
          if (refused === null) throw this.#timedOut(method, path, timeoutMs, reached, problems);
          // The deadline passed while the cluster refused: its last refusal is the answer.
          const { status, text, headers, endpoint } = refused;
          return await read(new Response(text, { status, headers }), endpoint);
        }
      }
    } finally {
      clearTimeout(timer);
    }
  }

  #init(
    method: string,
    options: SendOptions,
    signal: AbortSignal,
  ): RequestInit & { client?: Deno.HttpClient } {
    const headers = new Headers(options.headers);
    if (this.#options.token !== null) headers.set("authorization", `Bearer ${this.#options.token}`);
    const init: RequestInit & { client?: Deno.HttpClient } = { method, headers, signal };
    if (options.body !== undefined) {
      headers.set("content-type", "application/json");
      init.body = JSON.stringify(options.body);
    }
    if (this.#http !== undefined) init.client = this.#http;
    return init;
  }

  #timedOut(
    method: string,
    path: string,
    timeoutMs: number,
    reached: boolean,
    problems: Map<string, string>,
  ): NoAnswerError {
    const write = method !== "GET" && method !== "HEAD";
    const seen = problems.size === 0
      ? ""
      : ` (${[...problems].map(([e, m]) => `${e}: ${m}`).join("; ")})`;
    if (!reached) {
      return new NoAnswerError(
        "unreachable",
        `no endpoint could be reached within ${timeoutMs}ms${seen}`,
      );
    }
    return new NoAnswerError(
      "unknown",
      `${method} ${path}: no answer within ${timeoutMs}ms` +
        (write ? "; the write may or may not have been applied" : "") + seen,
    );
  }
}

/**
 * The exit code for an HTTP status, from {@linkcode EXIT}: 0 for 2xx, 3 for 404, 5 for 401 and
 * 403, 6 for 409 and 412, else 1.
 *
 * @param status The HTTP status.
 * @returns The exit code.
 */
export function exitCodeFor(status: number): number {
  if (status >= 200 && status < 300) return EXIT.ok;
  if (status === 404) return EXIT.notFound;
  if (status === 401 || status === 403) return EXIT.unauthorized;
  if (status === 409 || status === 412) return EXIT.conflict;
  return EXIT.error;
}

/**
 * Reads a whole response as an {@linkcode ApiAnswer}: its text, and its JSON when it is JSON.
 *
 * @param res The response.
 * @param endpoint The endpoint that gave it.
 * @returns The answer.
 */
export async function readAnswer(res: Response, endpoint: string): Promise<ApiAnswer> {
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text === "" ? null : JSON.parse(text);
  } catch {
    // Not JSON.
  }
  const index = Number(res.headers.get("x-raftkv-index") ?? "");
  return {
    status: res.status,
    json,
    text,
    endpoint,
    index: Number.isSafeInteger(index) && index >= 0 ? index : null,
  };
}

/**
 * Turns an error answer into a {@linkcode ClientError}: the server's `error` message, the status
 * and the exit code from {@linkcode exitCodeFor}.
 *
 * @param answer The answer.
 * @param what What was being done, such as `get "a"`.
 * @returns The error.
 */
export function answerError(answer: ApiAnswer, what: string): ClientError {
  const body = answer.json !== null && typeof answer.json === "object"
    ? answer.json as Record<string, unknown>
    : {};
  const message = typeof body.error === "string" ? body.error : answer.text.slice(0, 200);
  let hint = "";
  if (answer.status === 401) hint = " (give a token with --token or RAFTKV_TOKEN)";
  if (answer.status === 403) hint = " (the token is not allowed to do this)";
  return new ClientError(
    `${what}: ${answer.status} ${message}${hint} (from ${answer.endpoint})`,
    exitCodeFor(answer.status),
    { ...body, error: message, status: answer.status, endpoint: answer.endpoint },
  );
}

/** Whether a fetch error means the request never left (connecting failed). */
function _notSent(message: string): boolean {
  return /\(Connect\)|tcp connect error|dns error|connection refused|certificate|invalid peer|tls handshake|are blocked/i
    .test(message);
}

function _reason(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  // fetch says "fetch failed" and puts the reason in `cause`.
  const cause = error.cause instanceof Error ? error.cause.message : "";
  return cause !== "" ? cause.split("\n")[0]! : error.message;
}

/** Sleeps `ms`, or until `signal` aborts; returns whether it aborted. */
function _sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (aborted: boolean) => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      resolve(aborted);
    };
    const onAbort = () => done(true);
    const timer = setTimeout(() => done(false), ms);
    signal.addEventListener("abort", onAbort);
  });
}
