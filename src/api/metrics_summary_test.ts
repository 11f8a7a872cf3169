import assert from "node:assert/strict";
import { type NodeGauges, NodeMetrics, registerTimingGauges } from "../node/node_metrics.ts";
import { countPeerRefusals, PEER_REFUSAL_REASONS } from "../transport/http_transport.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { HttpMetrics } from "./http_metrics.ts";
import { ApiLimits, REFUSAL_LIMITS } from "./limits.ts";
import { parseExposition, summarizeMetrics } from "./metrics_summary.ts";

Deno.test("exposition lines parse with escapes, braces in values and special numbers", () => {
  const text = [
    "# HELP m A metric.",
    "# TYPE m counter",
    "",
    'm{route="/v1/data/{key}",note="a \\"b\\" \\\\ c\\nd",} 3',
    "g -1.5e3",
    'h_bucket{le="+Inf"} +Inf',
    "n NaN 1700000000000",
    "z{} -Inf",
  ].join("\n");
  const samples = parseExposition(text);
  assert.deepEqual(samples.slice(0, 3), [
    { name: "m", labels: { route: "/v1/data/{key}", note: 'a "b" \\ c\nd' }, value: 3 },
    { name: "g", labels: {}, value: -1500 },
    { name: "h_bucket", labels: { le: "+Inf" }, value: Infinity },
  ]);
  assert.ok(Number.isNaN(samples[3]!.value));
  assert.equal(samples[4]!.value, -Infinity);
});

Deno.test("a line that is not a sample is refused, quoted", () => {
  for (const bad of ["1abc 2", 'm{route="x} 1', "m{route=x} 1", "m", "m abc", 'm{a="1" b="2"} 1']) {
    assert.throws(() => parseExposition(bad), SyntaxError, bad);
  }
});

/** A leader's gauges, with some of them replaced. */
function gauges(overrides: Partial<NodeGauges> = {}): NodeGauges {
  return {
    role: "leader",
    hasLeader: true,
    membership: "voter",
    term: 4,
    commit: 10,
    applied: 10,
    lastIndex: 12,
    snapshotIndex: 0,
    pendingProposals: 0,
    pendingProposalBytes: 0,
    pendingReads: 0,
    peerReadsDropped: 0,
    pendingWrites: 0,
    noSpace: false,
    dataBytes: 1234,
    quotaBytes: 4096,
    watchHistoryEvents: 0,
    watchHistoryBytes: 0,
    lag: [["n2", 2], ["n3", 0]],
    lastContact: [["n2", 0.1], ["n3", 0.2]],
    failureTolerance: 1,
    ...overrides,
  };
}

/** The API limits of a small node. */
function apiLimits(): ApiLimits {
  return new ApiLimits({
    maxInflightRequests: 10,
    maxInflightBytes: 1000,
    maxBodyBytes: 100,
    maxForwardedRequests: 10,
    maxConcurrentBackups: 1,
    backupTimeoutMs: 1000,
    maxWatchers: 10,
  });
}

Deno.test("the summary reads a real node's metrics text", () => {
  const registry = new MetricsRegistry();
  const node = new NodeMetrics(registry, () => gauges());
  registerTimingGauges(registry, { electionTimeoutMs: 300, heartbeatMs: 50 });
  const limits = apiLimits();
  const http = new HttpMetrics(registry, limits);
  node.sawLeader(true, 2);
  node.sawLeader(true, 4);
  node.proposalsCommitted.inc(7);
  const answer = (path: string, method: string, status: number, ms: number) =>
    http.record(path, method, new Response(null, { status }), performance.now() - ms);
  answer("/v1/data", "POST", 200, 0);
  answer("/v1/data/a%2Fb", "PUT", 200, 30);
  answer("/v1/data/a", "DELETE", 504, 0);
  answer("/v1/data/a", "GET", 200, 0);
  answer("/v1/data/b", "GET", 404, 0);
  // Not key-value requests: left out.
  answer("/v1/status", "GET", 200, 0);
  answer("/metrics", "GET", 200, 0);
  answer("/v1/data/a", "PATCH", 405, 0);

  const summary = summarizeMetrics(registry.render());
  assert.equal(summary.leader_changes_total, 2);
  assert.equal(summary.proposals_committed_total, 7);
  assert.deepEqual(summary.requests_total, {
    read: { "2xx": 1, "4xx": 1 },
    write: { "2xx": 2, "5xx": 1 },
  });
  assert.deepEqual(summary.replication_lag_entries, { n2: 2, n3: 0 });
  assert.deepEqual(summary.last_contact_seconds, { n2: 0.1, n3: 0.2 });
  assert.equal(summary.failure_tolerance, 1);
  assert.equal(summary.election_timeout_seconds, 0.3);
  assert.deepEqual([summary.data_bytes, summary.quota_bytes], [1234, 4096]);
  const write = summary.request_duration_seconds.write!;
  assert.equal(write.cumulative.length, write.le.length + 1);
  assert.equal(write.cumulative.at(-1), 3);
  assert.ok(write.le.includes(0.0005) && write.le.includes(10));
  // The PUT took about 30 ms: above 25 ms, so two of three writes are at or below 25 ms.
  assert.equal(write.cumulative[write.le.indexOf(0.025)], 2);
  assert.ok(write.sum >= 0.03);
  assert.equal(summary.request_duration_seconds.read!.cumulative.at(-1), 2);
});

Deno.test("metrics that are missing count as zero or empty", () => {
  assert.deepEqual(summarizeMetrics(""), {
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
  });
});

Deno.test("the failure tolerance is read as the leader reports it, down to below quorum", () => {
  for (const tolerance of [2, 0, -1]) {
    const registry = new MetricsRegistry();
    new NodeMetrics(registry, () =>
      gauges({
        failureTolerance: tolerance,
        // A member down since the election: heard from longer ago than an election timeout.
        lastContact: [["n2", 0.05], ["n3", 12.5]],
      }));
    const summary = summarizeMetrics(registry.render());
    assert.equal(summary.failure_tolerance, tolerance);
    assert.deepEqual(summary.last_contact_seconds, { n2: 0.05, n3: 12.5 });
  }
});

Deno.test("a follower reports no last contact and no failure tolerance: empty and null", () => {
  const registry = new MetricsRegistry();
  new NodeMetrics(
    registry,
    () => gauges({ role: "follower", lag: null, lastContact: null, failureTolerance: null }),
  );
  const text = registry.render();
  assert.doesNotMatch(text, /^raftkv_(peer_last_contact_seconds|failure_tolerance)\b/m);
  const summary = summarizeMetrics(text);
  assert.deepEqual(summary.replication_lag_entries, {});
  assert.deepEqual(summary.last_contact_seconds, {});
  assert.equal(summary.failure_tolerance, null);
});

Deno.test("every node reports its election timeout, the leader or not; an older one none: null", () => {
  const follower: Partial<NodeGauges> = {
    role: "follower",
    lag: null,
    lastContact: null,
    failureTolerance: null,
  };
  for (const overrides of [{}, follower]) {
    const registry = new MetricsRegistry();
    new NodeMetrics(registry, () => gauges(overrides));
    registerTimingGauges(registry, { electionTimeoutMs: 2500, heartbeatMs: 250 });
    const summary = summarizeMetrics(registry.render());
    assert.equal(summary.election_timeout_seconds, 2.5, overrides.role ?? "leader");
  }
  // A node from before the metric: its text has the rest, not this one.
  const old = new MetricsRegistry();
  new NodeMetrics(old, () => gauges());
  const summary = summarizeMetrics(old.render());
  assert.equal(summary.election_timeout_seconds, null);
  assert.equal(summary.failure_tolerance, 1);
});

Deno.test("the refusals are read by limit and by reason, every one at 0 from the start", () => {
  const registry = new MetricsRegistry();
  new NodeMetrics(registry, () => gauges());
  const http = new HttpMetrics(registry, apiLimits());
  const peerRefused = countPeerRefusals(registry);
  const zeros = (labels: readonly string[]) => Object.fromEntries(labels.map((l) => [l, 0]));

  // A node that refused nothing yet: every limit and every reason, at 0.
  const fresh = summarizeMetrics(registry.render());
  assert.deepEqual(fresh.http_refusals_total, zeros(REFUSAL_LIMITS));
  assert.deepEqual(fresh.peer_refusals_total, zeros(PEER_REFUSAL_REASONS));

  http.refused("requests");
  http.refused("requests");
  http.refused("watchers");
  for (let i = 0; i < 3; i++) peerRefused("unknown_path");
  peerRefused("malformed");
  const text = registry.render();
  assert.match(text, /^raftkv_http_refusals_total\{limit="requests"\} 2$/m);
  assert.match(text, /^raftkv_peer_refusals_total\{reason="unknown_path"\} 3$/m);
  // The older count of other clusters' requests, a metric of its own, is not one of them.
  assert.match(text, /^raftkv_other_cluster_refusals_total 0$/m);
  const summary = summarizeMetrics(text);
  assert.deepEqual(summary.http_refusals_total, {
    ...zeros(REFUSAL_LIMITS),
    requests: 2,
    watchers: 1,
  });
  assert.deepEqual(summary.peer_refusals_total, {
    ...zeros(PEER_REFUSAL_REASONS),
    unknown_path: 3,
    malformed: 1,
  });
});

Deno.test("a node from before the refusal counters reports none: empty objects", () => {
  // Its text has the rest (a request answered, leader changes), not these two.
  const old = new MetricsRegistry();
  new NodeMetrics(old, () => gauges());
  new HttpMetrics(old, apiLimits()).record(
    "/v1/data/a",
    "GET",
    new Response(null, { status: 200 }),
    performance.now(),
  );
  const text = old.render()
    .split("\n")
    .filter((line) => !/raftkv_http_refusals_total/.test(line))
    .join("\n");
  assert.doesNotMatch(text, /refusals_total\{/);
  const summary = summarizeMetrics(text);
  assert.deepEqual(summary.http_refusals_total, {});
  assert.deepEqual(summary.peer_refusals_total, {});
  assert.deepEqual(summary.requests_total.read, { "2xx": 1 });
});
