/**
 * `GET /v1/cluster`: every member's status and the dashboard's numbers from its metrics,
 * gathered by the node that is asked, so that a page (or a script) needs one origin and one
 * request to see the whole cluster.
 *
 * The node answers for itself from memory, and asks each other member for `GET /v1/status` and
 * `GET /metrics` at the `api_url` of the cluster configuration (never at an address the request
 * names), both at once, with a short deadline: a member that is down or slow shows up as
 * unreachable with the reason, and never holds up the answer for long. The request's
 * `Authorization` header goes along, so that a member that wants a token gets the caller's.
 *
 * @module
 */

import type { KvBackend, NodeStatus } from "../node/backend.ts";
import { errorMessage } from "./errors.ts";
import type { Forwarder } from "./forwarder.ts";
import { type MetricsSummary, summarizeMetrics } from "./metrics_summary.ts";

export type { HistogramSummary, MetricsSummary, StatusClassCounts } from "./metrics_summary.ts";

/**
 * Deadline of the requests to each other member, in milliseconds: the page polls once a second,
 * and a member that has not answered by then is shown as unreachable.
 */
export const MEMBER_TIMEOUT_MS = 1000;

/** A member of the cluster as the configuration names it. */
export interface ClusterMember {
  /** Its node id. */
  id: string;
  /** Its client API's base URL, such as `http://10.0.0.2:7777`. */
  apiUrl: string;
}

/** One member in the answer of `GET /v1/cluster`. */
export interface MemberView {
  /** Its node id. */
  id: string;
  /** Its client API's base URL, from the cluster configuration. */
  api_url: string;
  /** Whether this is the node that answered. */
  self: boolean;
  /** Its `GET /v1/status`, or null if it could not be had. */
  status: NodeStatus | null;
  /** Numbers from its `GET /metrics`, or null if they could not be had. */
  metrics: MetricsSummary | null;
  /** Why its status or metrics are missing, or null. */
  error: string | null;
  /** HTTP status of the failed request, when a member answered with one (401, 403, 503...). */
  http_status?: number;
  /** How long asking it took, in milliseconds. */
  took_ms: number;
}

/** The answer of `GET /v1/cluster`. */
export interface ClusterView {
  /** The id of the node that answered. */
  self: string;
  /** When it answered, in milliseconds since the epoch (its clock). */
  time_ms: number;
  /** Every member, in configuration order. */
  members: MemberView[];
}

/** What {@linkcode gatherCluster} needs. */
export interface GatherOptions {
  /** The node answering. */
  selfId: string;
  /** Its backend, for its own status. */
  backend: KvBackend;
  /** Its metrics text, for its own numbers. */
  renderMetrics: () => string;
  /** Every member, the node included; in the order to answer. */
  members: readonly ClusterMember[];
  /** Carries the requests to the other members. */
  forward: Forwarder;
  /** The caller's `Authorization` header, passed on, or null. */
  authorization: string | null;
  /** Deadline of each member's requests, in milliseconds. */
  timeoutMs: number;
  /** Aborts everything (the caller went away). */
  signal: AbortSignal;
}

/**
 * Gathers the cluster's view; never throws for a member's failure (see
 * {@linkcode MemberView.error}).
 *
 * @param options The node, its members and the deadline.
 * @returns The view, members in configuration order (this node added first if the
 * configuration does not name it).
 */
export async function gatherCluster(options: GatherOptions): Promise<ClusterView> {
  const members = options.members.some((m) => m.id === options.selfId)
    ? options.members
    : [{ id: options.selfId, apiUrl: "" }, ...options.members];
  const views = await Promise.all(
    members.map((m) => m.id === options.selfId ? _self(options, m) : _remote(options, m)),
  );
  return { self: options.selfId, time_ms: Date.now(), members: views };
}

function _self(options: GatherOptions, member: ClusterMember): MemberView {
  const started = performance.now();
  const view: MemberView = {
    id: member.id,
    api_url: member.apiUrl,
    self: true,
    status: options.backend.status(),
    metrics: null,
    error: null,
    took_ms: 0,
  };
  try {
    view.metrics = summarizeMetrics(options.renderMetrics());
  } catch (err) {
    view.error = `its metrics do not parse: ${errorMessage(err)}`;
  }
  view.took_ms = Math.round(performance.now() - started);
  return view;
}

async function _remote(options: GatherOptions, member: ClusterMember): Promise<MemberView> {
  const started = performance.now();
  const view: MemberView = {
    id: member.id,
    api_url: member.apiUrl,
    self: false,
    status: null,
    metrics: null,
    error: null,
    took_ms: 0,
  };
  const signal = AbortSignal.any([options.signal, AbortSignal.timeout(options.timeoutMs)]);
  const headers: Record<string, string> = {};
  if (options.authorization !== null) headers.authorization = options.authorization;
  const get = async (path: string): Promise<string> => {
    const res = await options.forward(`${member.apiUrl}${path}`, {
      method: "GET",
      headers,
      signal,
    });
    const text = await res.text();
    if (res.status !== 200) {
      view.http_status ??= res.status;
      throw new Error(`${path} answered ${res.status}: ${_errorOf(text)}`);
    }
    return text;
  };
  const [status, metrics] = await Promise.allSettled([
    get("/v1/status").then((text) => JSON.parse(text) as NodeStatus),
    get("/metrics").then(summarizeMetrics),
  ]);
  if (status.status === "fulfilled") view.status = status.value;
  if (metrics.status === "fulfilled") view.metrics = metrics.value;
  const failed = [status, metrics].find((r) => r.status === "rejected");
  if (failed !== undefined) {
    view.error = signal.aborted && !options.signal.aborted
      ? `no answer within ${options.timeoutMs} ms`
      : _innermost(failed.reason);
  }
  view.took_ms = Math.round(performance.now() - started);
  return view;
}

/** The `error` of a JSON error answer, else the text itself, cut short. */
function _errorOf(text: string): string {
  try {
    const body = JSON.parse(text);
    if (typeof body?.error === "string") return body.error;
  } catch {
    // not JSON
  }
  return text.length > 200 ? `${text.slice(0, 200)}...` : text;
}

/**
 * The innermost message of an error chain (fetch may wrap the cause of a failed connection),
 * without fetch's `error sending request for url (...)` prefix: the member's URL is beside it.
 */
function _innermost(err: unknown): string {
  let message = errorMessage(err);
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    message = e.message;
  }
  return message.replace(/^error sending request for url \([^)]*\): /, "");
}
