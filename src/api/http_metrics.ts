/**
 * The REST API's metrics: requests by route template, method and status code, their latency, the
 * requests refused (429) by the limit that refused them, and the requests, forwards, backups and
 * watch streams in progress. Routes are the API's fixed templates (`/v1/data/{key}`, never a key)
 * and methods a fixed list, so the number of series is bounded whatever clients send.
 *
 * @module
 */

import type {
  Counter,
  CounterVec,
  Histogram,
  HistogramVec,
  MetricsRegistry,
} from "../util/metrics.ts";
import { type ApiLimits, REFUSAL_LIMITS, type RefusalLimit } from "./limits.ts";

/** The route label of a path that is none of the API's routes (or not a valid URL). */
export const OTHER_ROUTE = "other";

/** The route label of a request's path: its route template, or {@linkcode OTHER_ROUTE}. */
export function routeOf(pathname: string | null): string {
  switch (pathname) {
    case "/v1/data":
    case "/v1/txn":
    case "/v1/status":
    case "/v1/watch":
    case "/v1/cluster":
    case "/v1/snapshot":
    case "/v1/leases":
    case "/v1/members":
    case "/v1/leader/transfer":
    case "/health":
    case "/ready":
    case "/metrics":
      return pathname;
  }
  if (pathname === null) return OTHER_ROUTE;
  if (pathname.startsWith("/v1/data/")) return "/v1/data/{key}";
  if (pathname.startsWith("/v1/members/")) return "/v1/members/{id}";
  if (/^\/v1\/leases\/[^/]+$/.test(pathname)) return "/v1/leases/{id}";
  if (/^\/v1\/leases\/[^/]+\/keepalive$/.test(pathname)) return "/v1/leases/{id}/keepalive";
  return pathname === "/ui" || pathname.startsWith("/ui/") ? "/ui" : OTHER_ROUTE;
}

const _METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);

/** Request latency buckets, in seconds: 0.5 ms to 10 s (the request deadline is 5 s). */
const _LATENCY_BUCKETS = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
];

/** Counts and times the API's requests; see the module doc. */
export class HttpMetrics {
  readonly #requests: CounterVec;
  readonly #duration: HistogramVec;
  readonly #refusals: Readonly<Record<RefusalLimit, Counter>>;

  /**
   * Registers the API's metrics in `registry`; the in-progress gauges read `limits` at each
   * scrape. The refusals are counted by {@linkcode HttpMetrics.prototype.refused}, which `limits`
   * calls (its `onRefusal`).
   *
   * @throws {RangeError} If they are already registered there.
   */
  constructor(registry: MetricsRegistry, limits: ApiLimits) {
    this.#requests = registry.counterVec(
      "raftkv_http_requests_total",
      "REST API requests answered, by route template, method and status code (forwarded requests count on each node they pass).",
      ["route", "method", "code"],
    );
    this.#duration = registry.histogramVec(
      "raftkv_http_request_duration_seconds",
      "Time from a REST API request's arrival until its answer's headers were ready (a backup's streaming is not included).",
      _LATENCY_BUCKETS,
      ["route", "method"],
    );
    const refusals = registry.counterVec(
      "raftkv_http_refusals_total",
      "REST API requests this node refused with 429, by the limit that refused them: requests (--max-inflight-requests), bytes (--max-inflight-bytes), client_unread (--max-client-unread-bytes: the client's own unread answers), forwards (--max-forwarded-requests), watchers (--max-watchers: a watch stream), blocking_reads (--max-watchers: a blocking read ?index=N) or backups (--max-concurrent-backups). A 429 relayed from the leader counts on the leader only.",
      ["limit"],
    );
    // Every limit shows from the start, at 0.
    this.#refusals = Object.fromEntries(
      REFUSAL_LIMITS.map((limit) => [limit, refusals.labels(limit)]),
    ) as Record<RefusalLimit, Counter>;
    const inflight = registry.gauge(
      "raftkv_http_requests_in_flight",
      "REST API requests in progress (bounded by --max-inflight-requests; /health, /ready and /metrics are not counted).",
    );
    const inflightBytes = registry.gauge(
      "raftkv_http_request_bytes_in_flight",
      "Bytes of request bodies, and of answers not yet taken by the server, counted in progress (bounded by --max-inflight-bytes).",
    );
    const forwarding = registry.gauge(
      "raftkv_http_forwards_in_flight",
      "Requests being forwarded to the leader (bounded by --max-forwarded-requests).",
    );
    const backups = registry.gauge(
      "raftkv_backups_in_flight",
      "GET /v1/snapshot downloads streaming (bounded by --max-concurrent-backups).",
    );
    const watchers = registry.gauge(
      "raftkv_watchers",
      "GET /v1/watch streams open (bounded by --max-watchers, with the blocking reads waiting).",
    );
    const blockingReads = registry.gauge(
      "raftkv_blocking_reads",
      "Blocking reads (GET /v1/data/{key}?index=N) waiting (bounded by --max-watchers, with the watch streams).",
    );
    registry.onCollect(() => {
      inflight.set(limits.inflight);
      inflightBytes.set(limits.inflightBytes);
      forwarding.set(limits.forwarding);
      backups.set(limits.backups);
      watchers.set(limits.watchers);
      blockingReads.set(limits.blockingReads);
    });
  }

  /**
   * Counts a request refused (answered 429) by `limit`.
   *
   * @param limit The limit that refused it.
   */
  refused(limit: RefusalLimit): void {
    this.#refusals[limit].inc();
  }

  /**
   * Counts an answered request and its latency; returns the response.
   *
   * @param pathname The request's path, or null when its URL did not parse.
   * @param method The request's method.
   * @param res The answer.
   * @param startedMs When the request arrived, by `performance.now()`.
   * @returns `res`.
   */
  record(pathname: string | null, method: string, res: Response, startedMs: number): Response {
    const route = routeOf(pathname);
    const m = _METHODS.has(method) ? method : "other";
    this.#requests.labels(route, m, _code(res.status)).inc();
    const h: Histogram = this.#duration.labels(route, m);
    h.observe((performance.now() - startedMs) / 1000);
    return res;
  }
}

/** Status codes as label values, made once. */
const _CODES: string[] = Array.from({ length: 600 }, (_, i) => String(i));

function _code(status: number): string {
  return _CODES[status] ?? String(status);
}
