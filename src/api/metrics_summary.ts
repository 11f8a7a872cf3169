/**
 * The few numbers of a node's `GET /metrics` text that the dashboard shows, read back from the
 * Prometheus text exposition format 0.0.4: leader changes, committed proposals, key-value
 * requests by kind and status class, their latency histogram, the data's bytes and their quota,
 * the node's election timeout, the requests it refused (REST API 429s by limit, peer-port refusals
 * by reason), and (on the leader) the replication lag of each follower, the seconds since it last
 * heard from each member and the cluster's failure tolerance.
 * `GET /v1/cluster` sends them for every member, so that the page needs no parser of its own.
 *
 * @module
 */

/** One sample of an exposition text: metric name, labels and value. */
export interface Sample {
  /** The series' metric name, such as `raftkv_http_requests_total` or `..._bucket`. */
  name: string;
  /** Its labels, unescaped. */
  labels: Record<string, string>;
  /** Its value (`+Inf`, `-Inf` and `NaN` included). */
  value: number;
}

/**
 * A cumulative histogram as JSON can carry it: `le` are the finite upper bounds, `cumulative`
 * the count of observations at or below each of them, then the total (the `+Inf` bucket), so
 * `cumulative` is one longer than `le`.
 */
export interface HistogramSummary {
  /** Finite upper bounds, in seconds, ascending. */
  le: number[];
  /** Cumulative counts: one per bound, then the total. */
  cumulative: number[];
  /** Sum of the observed values, in seconds. */
  sum: number;
}

/** Counts by status class (`"2xx"`, `"4xx"`, `"5xx"`, ...). */
export type StatusClassCounts = Record<string, number>;

/**
 * What the dashboard reads from one node's metrics. Counters count since the node's process
 * started; the page turns them into rates from successive polls.
 */
export interface MetricsSummary {
  /** `raftkv_leader_changes_total`: leaderships this node has seen. */
  leader_changes_total: number;
  /** `raftkv_proposals_committed_total`: writes this node committed as leader. */
  proposals_committed_total: number;
  /**
   * Key-value requests this node answered (`/v1/data` and `/v1/data/{key}`), `read` (`GET`)
   * and `write` (`POST`, `PUT`, `DELETE`), by status class. A forwarded request counts on
   * the follower and on the leader.
   */
  requests_total: { read: StatusClassCounts; write: StatusClassCounts };
  /** Latency of those requests, `read` and `write`, or null before the first one. */
  request_duration_seconds: { read: HistogramSummary | null; write: HistogramSummary | null };
  /** `raftkv_peer_replication_lag_entries` by follower id: reported by the leader only. */
  replication_lag_entries: Record<string, number>;
  /**
   * `raftkv_peer_last_contact_seconds` by member id: the seconds since the leader last heard from
   * each other member (since its election, for one not heard from since), to the heartbeat.
   * Reported by the leader only: empty elsewhere.
   */
  last_contact_seconds: Record<string, number>;
  /**
   * `raftkv_failure_tolerance`: the voters that could fail before the cluster lost its quorum,
   * as the leader sees it (voters heard from within an election timeout, itself included, minus
   * the quorum: 1 for three healthy voters, 0 with one down, negative below quorum). Null when
   * the node reports none: every node but the leader (and a node from before this metric).
   */
  failure_tolerance: number | null;
  /**
   * `raftkv_election_timeout_seconds`: the node's `--election-timeout`, in seconds, against which
   * the page judges the leader's `last_contact_seconds`. Null when the node reports none (a node
   * from before this metric).
   */
  election_timeout_seconds: number | null;
  /** `raftkv_data_bytes`: the bytes of the keys and values this node has applied. */
  data_bytes: number;
  /** `raftkv_quota_bytes`: the quota of those bytes (`--quota-bytes`), 0 for none. */
  quota_bytes: number;
  /**
   * `raftkv_http_refusals_total` by its `limit` label: REST API requests this node refused with
   * 429, by the limit that refused them (`requests`, `bytes`, `client_unread`, `forwards`,
   * `watchers`, `blocking_reads`, `backups`). A node reports every limit from the start, at 0, so
   * an empty object means a node from before this metric.
   */
  http_refusals_total: Record<string, number>;
  /**
   * `raftkv_peer_refusals_total` by its `reason` label: requests (and batches of a message
   * stream) this node refused on its peer port, by reason (`unknown_path`, `not_member`,
   * `malformed`, ...). A node reports every reason from the start, at 0, so an empty object means
   * a node from before this metric.
   */
  peer_refusals_total: Record<string, number>;
}

const _KV_ROUTES = new Set(["/v1/data", "/v1/data/{key}"]);
const _WRITE_METHODS = new Set(["POST", "PUT", "DELETE"]);

/**
 * Reads the dashboard's numbers from an exposition text; metrics it does not find count as 0
 * (or empty: the refusal counters of a node from before them), but for the failure tolerance and
 * the election timeout, which are then null.
 *
 * @example Usage
 * ```ts
 * import { summarizeMetrics } from "./metrics_summary.ts";
 *
 * const text = 'raftkv_leader_changes_total 2\n' +
 *   'raftkv_http_requests_total{route="/v1/data/{key}",method="GET",code="200"} 5\n' +
 *   'raftkv_peer_refusals_total{reason="unknown_path"} 3\n';
 * const summary = summarizeMetrics(text);
 * console.assert(summary.leader_changes_total === 2);
 * console.assert(summary.requests_total.read["2xx"] === 5);
 * console.assert(summary.peer_refusals_total.unknown_path === 3);
 * console.assert(Object.keys(summary.http_refusals_total).length === 0); // not in this text
 * console.assert(summary.failure_tolerance === null); // not a leader's text
 * console.assert(summary.election_timeout_seconds === null); // not in this text
 * ```
 *
 * @param text The text of `GET /metrics`.
 * @returns The summary.
 * @throws {SyntaxError} If a sample line does not parse.
 */
export function summarizeMetrics(text: string): MetricsSummary {
  const summary: MetricsSummary = {
    leader_changes_total: 0,
    proposals_committed_total: 0,
    requests_total: { read: {}, write: {} },
    request_duration_seconds: { read: null, write: null },
    replication_lag_entries: {},
    last_contact_seconds: {},
    failure_tolerance: null,
    election_timeout_seconds: null,
    data_bytes: 0,
    quota_bytes: 0,
    http_refusals_total: {},
    peer_refusals_total: {},
  };
  // Buckets by kind, summed over routes and methods: bound -> count.
  const buckets = { read: new Map<number, number>(), write: new Map<number, number>() };
  const sums = { read: 0, write: 0 };
  for (const s of parseExposition(text)) {
    switch (s.name) {
      case "raftkv_leader_changes_total":
        summary.leader_changes_total = s.value;
        continue;
      case "raftkv_proposals_committed_total":
        summary.proposals_committed_total = s.value;
        continue;
      case "raftkv_data_bytes":
        summary.data_bytes = s.value;
        continue;
      case "raftkv_quota_bytes":
        summary.quota_bytes = s.value;
        continue;
      case "raftkv_peer_replication_lag_entries":
        if (s.labels.peer !== undefined) summary.replication_lag_entries[s.labels.peer] = s.value;
        continue;
      case "raftkv_peer_last_contact_seconds":
        if (s.labels.peer !== undefined) summary.last_contact_seconds[s.labels.peer] = s.value;
        continue;
      case "raftkv_failure_tolerance":
        summary.failure_tolerance = s.value;
        continue;
      case "raftkv_election_timeout_seconds":
        summary.election_timeout_seconds = s.value;
        continue;
      case "raftkv_http_refusals_total":
        if (s.labels.limit !== undefined) summary.http_refusals_total[s.labels.limit] = s.value;
        continue;
      case "raftkv_peer_refusals_total":
        if (s.labels.reason !== undefined) summary.peer_refusals_total[s.labels.reason] = s.value;
        continue;
    }
    const kind = _kind(s.labels);
    if (kind === null) continue;
    if (s.name === "raftkv_http_requests_total") {
      const cls = `${(s.labels.code ?? "0")[0]}xx`;
      const counts = summary.requests_total[kind];
      counts[cls] = (counts[cls] ?? 0) + s.value;
    } else if (s.name === "raftkv_http_request_duration_seconds_bucket") {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      if (Number.isNaN(le)) continue;
      buckets[kind].set(le, (buckets[kind].get(le) ?? 0) + s.value);
    } else if (s.name === "raftkv_http_request_duration_seconds_sum") {
      sums[kind] += s.value;
    }
  }
  for (const kind of ["read", "write"] as const) {
    const bounds = [...buckets[kind].keys()].sort((a, b) => a - b);
    if (bounds.length === 0 || bounds.at(-1) !== Infinity) continue;
    summary.request_duration_seconds[kind] = {
      le: bounds.slice(0, -1),
      cumulative: bounds.map((b) => buckets[kind].get(b)!),
      sum: sums[kind],
    };
  }
  return summary;
}

/** `"read"` or `"write"` for a key-value request's labels, else null. */
function _kind(labels: Record<string, string>): "read" | "write" | null {
  if (labels.route === undefined || !_KV_ROUTES.has(labels.route)) return null;
  if (labels.method === "GET") return "read";
  return labels.method !== undefined && _WRITE_METHODS.has(labels.method) ? "write" : null;
}

/**
 * The samples of a Prometheus text exposition (format 0.0.4): comment and blank lines skipped,
 * label values unescaped (`\\`, `\"`, `\n`), timestamps ignored.
 *
 * @example Usage
 * ```ts
 * import { parseExposition } from "./metrics_summary.ts";
 *
 * const [s] = parseExposition('m{route="/v1/data/{key}",le="+Inf"} 3\n');
 * console.assert(s!.labels.route === "/v1/data/{key}" && s!.value === 3);
 * ```
 *
 * @param text The exposition text.
 * @returns Its samples, in order.
 * @throws {SyntaxError} On a line that is not a sample, quoting it.
 */
export function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    samples.push(_parseLine(trimmed));
  }
  return samples;
}

const _NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const _LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

function _parseLine(line: string): Sample {
  const bad = (why: string) =>
    new SyntaxError(`not a sample line (${why}): ${JSON.stringify(line.slice(0, 200))}`);
  const name = _NAME.exec(line)?.[0];
  if (name === undefined) throw bad("no metric name");
  let i = name.length;
  const labels: Record<string, string> = {};
  if (line[i] === "{") {
    i++;
    while (line[i] !== "}") {
      const label = _LABEL_NAME.exec(line.slice(i))?.[0];
      if (
        label === undefined || line[i + label.length] !== "=" || line[i + label.length + 1] !== '"'
      ) {
        throw bad("bad label");
      }
      i += label.length + 2;
      let value = "";
      for (;;) {
        const c = line[i++];
        if (c === undefined) throw bad("unterminated label value");
        if (c === '"') break;
        if (c === "\\") {
          const e = line[i++];
          value += e === "n" ? "\n" : e ?? "";
        } else {
          value += c;
        }
      }
      labels[label] = value;
      if (line[i] === ",") i++;
      else if (line[i] !== "}") throw bad("expected , or }");
    }
    i++;
  }
  const [raw] = line.slice(i).trim().split(/\s+/);
  const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
  if (raw === undefined || raw === "" || (Number.isNaN(value) && raw !== "NaN")) {
    throw bad("bad value");
  }
  return { name, labels, value };
}
