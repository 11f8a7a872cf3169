// The dashboard's arithmetic, run in Deno on the very file the browser loads.
import assert from "node:assert/strict";
import {
  counterDelta,
  describeRefusals,
  describeTolerance,
  failureTolerance,
  formatBytes,
  formatRate,
  formatSeconds,
  histogramDelta,
  History,
  HISTORY_MS,
  historyMs,
  LAST_HEARD_WARN_S,
  lastHeard,
  lastHeardWarnSeconds,
  leaderOf,
  membersUp,
  niceMax,
  quantile,
  refusalRates,
  refusedToken,
  sumCounts,
  sumHistograms,
} from "./app.js";

const LE = [0.001, 0.01, 0.1, 1];

/** Equal up to floating-point rounding. */
function near(actual: number | null, expected: number, message?: string): void {
  assert.ok(
    actual !== null && Math.abs(actual - expected) < 1e-9,
    message ?? `${actual} is not ${expected}`,
  );
}

function hist(cumulative: number[], sum = 0) {
  return { le: LE, cumulative, sum };
}

function status(id: string, role: string, term: number, leader: string | null) {
  return {
    id,
    role,
    term,
    leader: leader === null ? null : { id: leader, api_url: `http://${leader}` },
    commit_index: 1,
    applied_index: 1,
    last_index: 1,
    alarms: [],
  };
}

Deno.test("a counter that went down was reset, so its whole new value counts", () => {
  assert.equal(counterDelta(10, 15), 5);
  assert.equal(counterDelta(10, 10), 0);
  assert.equal(counterDelta(10, 3), 3);
});

Deno.test("status class counts add up, all of them or the chosen ones", () => {
  const counts = { "2xx": 5, "4xx": 2, "5xx": 1 };
  assert.equal(sumCounts(counts), 8);
  assert.equal(sumCounts(counts, (c: string) => c.startsWith("5")), 1);
  assert.equal(sumCounts(undefined), 0);
});

Deno.test("quantiles interpolate inside the bucket as histogram_quantile does", () => {
  // 10 observations: 4 at or below 1 ms, 10 at or below 10 ms.
  const h = hist([4, 10, 10, 10, 10]);
  assert.equal(quantile(0.4, h), 0.001);
  // The 50th percentile is the 5th observation: 1/6 of the way through (1 ms, 10 ms].
  near(quantile(0.5, h), 0.001 + 0.009 / 6);
  near(quantile(1, h), 0.01);
  // Everything above the last finite bound: reported as that bound.
  assert.equal(quantile(0.99, hist([0, 0, 0, 0, 3])), 1);
  // Everything in the first bucket: interpolated from 0.
  assert.equal(quantile(0.5, hist([2, 2, 2, 2, 2])), 0.0005);
  assert.equal(quantile(0.5, hist([0, 0, 0, 0, 0])), null);
  assert.equal(quantile(0.5, null), null);
});

Deno.test("histogram deltas subtract, treat a reset as a fresh start, and refuse other buckets", () => {
  assert.deepEqual(
    histogramDelta(hist([1, 2, 3, 3, 3], 0.5), hist([2, 4, 6, 6, 7], 3)),
    hist([1, 2, 3, 3, 4], 2.5),
  );
  const after = hist([1, 1, 1, 1, 1], 0.1);
  assert.equal(histogramDelta(hist([5, 5, 5, 5, 5], 2), after), after);
  assert.equal(histogramDelta(null, after), after);
  assert.equal(histogramDelta(after, null), null);
  const other = { le: [0.5], cumulative: [1, 1], sum: 0.2 };
  assert.equal(histogramDelta(other, after), null);
});

Deno.test("histograms with the same buckets sum; others are left out", () => {
  const other = { le: [0.5], cumulative: [1, 1], sum: 0.2 };
  assert.deepEqual(
    sumHistograms([hist([1, 1, 1, 1, 1], 1), null, other, hist([0, 1, 2, 2, 2], 2)]),
    hist([1, 2, 3, 3, 3], 3),
  );
  assert.equal(sumHistograms([null]), null);
});

Deno.test("the leader is who claims it at the highest term, else whom that term's members name", () => {
  const view = (...statuses: (ReturnType<typeof status> | null)[]) => ({
    members: statuses.map((s) => ({ status: s })),
  });
  assert.deepEqual(
    leaderOf(view(status("a", "leader", 2, "a"), status("b", "follower", 2, "a"), null)),
    { id: "a", term: 2, reachable: true },
  );
  // A deposed leader still claiming term 2 loses to term 3's leader.
  assert.deepEqual(
    leaderOf(view(status("a", "leader", 2, "a"), status("b", "leader", 3, "b"))),
    { id: "b", term: 3, reachable: true },
  );
  // The leader is unreachable from the node that asked: named by the followers.
  assert.deepEqual(
    leaderOf(view(null, status("b", "follower", 4, "a"), status("c", "follower", 4, "a"))),
    { id: "a", term: 4, reachable: false },
  );
  // An election at term 5: nobody at that term knows a leader.
  assert.equal(
    leaderOf(view(status("b", "candidate", 5, null), status("c", "follower", 4, "a"))),
    null,
  );
  assert.equal(leaderOf(view(null, null)), null);
});

function member(id: string, reads: number, writes: number, errors: number, h: number[] | null) {
  return {
    id,
    metrics: {
      leader_changes_total: 1,
      proposals_committed_total: 0,
      requests_total: { read: { "2xx": reads }, write: { "2xx": writes, "5xx": errors } },
      request_duration_seconds: { read: null, write: h === null ? null : hist(h) },
      replication_lag_entries: {},
      last_contact_seconds: {},
      failure_tolerance: null as number | null,
      election_timeout_seconds: null as number | null,
      data_bytes: 0,
      quota_bytes: 0,
      http_refusals_total: { requests: 0, bytes: 0, watchers: 0 } as Record<string, number>,
      peer_refusals_total: { unknown_path: 0, malformed: 0 } as Record<string, number>,
    },
  };
}

Deno.test("the failure tolerance is the leader's, and flagged at 0 and below", () => {
  const withTolerance = (id: string, tolerance: number | null) => {
    const m = member(id, 0, 0, 0, null);
    m.metrics.failure_tolerance = tolerance;
    return m;
  };
  // A deposed leader (n1) may still report one for a moment: only the leader's counts.
  const view = {
    members: [withTolerance("n1", 1), withTolerance("n2", 0), withTolerance("n3", null)],
  };
  assert.equal(failureTolerance(view, { id: "n2" }), 0);
  assert.equal(failureTolerance(view, { id: "n3" }), null, "a follower reports none");
  assert.equal(failureTolerance(view, null), null, "no leader known");
  assert.equal(failureTolerance(view, { id: "n9" }), null, "a leader the view lacks");
  // The leader could not be reached: a member without metrics.
  assert.equal(failureTolerance({ members: [{ id: "n1", metrics: null }] }, { id: "n1" }), null);
  // A leader from before the figure: its summary lacks the field.
  const old = member("n1", 0, 0, 0, null) as { id: string; metrics: Record<string, unknown> };
  delete old.metrics.failure_tolerance;
  assert.equal(failureTolerance({ members: [old] }, { id: "n1" }), null);

  assert.deepEqual(describeTolerance(null), {
    text: "—",
    note: "no leader reports it",
    cls: "big",
  });
  assert.deepEqual(describeTolerance(2), { text: "2", note: "2 voters can fail", cls: "big" });
  assert.deepEqual(describeTolerance(1), { text: "1", note: "1 voter can fail", cls: "big" });
  assert.deepEqual(describeTolerance(0), {
    text: "0",
    note: "no voter to spare",
    cls: "big state-warn",
  });
  assert.deepEqual(describeTolerance(-1), {
    text: "-1",
    note: "1 voter short of a quorum",
    cls: "big state-bad",
  });
});

Deno.test("last heard: the leader's own row says leader; a member silent too long is flagged", () => {
  assert.deepEqual(lastHeard(undefined, true), { text: "leader", cls: undefined });
  assert.deepEqual(lastHeard(12, true), { text: "leader", cls: undefined });
  assert.deepEqual(lastHeard(0, false), { text: "just now", cls: undefined });
  assert.deepEqual(lastHeard(0.05, false), { text: "50 ms", cls: undefined });
  assert.deepEqual(lastHeard(LAST_HEARD_WARN_S, false), { text: "1 s", cls: undefined });
  assert.deepEqual(lastHeard(12.5, false), { text: "12.5 s", cls: "lag-high" });
  // Nothing from the leader (a follower's view, or a leader from before the figure).
  assert.deepEqual(lastHeard(undefined, false), { text: "—", cls: undefined });
  // Past the leader's own election timeout, when the page is given it.
  assert.deepEqual(lastHeard(0.3, false, 0.3), { text: "300 ms", cls: undefined });
  assert.deepEqual(lastHeard(0.35, false, 0.3), { text: "350 ms", cls: "lag-high" });
  assert.deepEqual(lastHeard(2, false, 3), { text: "2 s", cls: undefined });
  assert.deepEqual(lastHeard(12, true, 0.3), { text: "leader", cls: undefined });
});

Deno.test("last heard is flagged past the leader's election timeout, else past 1 s", () => {
  const withTimeout = (id: string, seconds: number | null) => {
    const m = member(id, 0, 0, 0, null);
    m.metrics.election_timeout_seconds = seconds;
    return m;
  };
  // Each node reports its own; only the leader's counts (it is the one that counts contacts).
  const view = {
    members: [withTimeout("n1", 0.3), withTimeout("n2", 3), withTimeout("n3", null)],
  };
  assert.equal(lastHeardWarnSeconds(view, { id: "n1" }), 0.3);
  assert.equal(lastHeardWarnSeconds(view, { id: "n2" }), 3);
  // A leader that reports none (a version from before the figure), no leader known, a leader the
  // view lacks, or one the page's node could not reach: the default election timeout, 1 s.
  assert.equal(lastHeardWarnSeconds(view, { id: "n3" }), LAST_HEARD_WARN_S);
  assert.equal(LAST_HEARD_WARN_S, 1);
  assert.equal(lastHeardWarnSeconds(view, null), LAST_HEARD_WARN_S);
  assert.equal(lastHeardWarnSeconds(view, { id: "n9" }), LAST_HEARD_WARN_S);
  assert.equal(
    lastHeardWarnSeconds({ members: [{ id: "n1", metrics: null }] }, { id: "n1" }),
    LAST_HEARD_WARN_S,
  );
  const old = member("n1", 0, 0, 0, null) as { id: string; metrics: Record<string, unknown> };
  delete old.metrics.election_timeout_seconds;
  assert.equal(lastHeardWarnSeconds({ members: [old] }, { id: "n1" }), LAST_HEARD_WARN_S);
  // Nonsense is not a threshold.
  for (const bad of [0, -1, Infinity, NaN]) {
    const bogus = { members: [withTimeout("n1", bad)] };
    assert.equal(lastHeardWarnSeconds(bogus, { id: "n1" }), LAST_HEARD_WARN_S, String(bad));
  }
});

Deno.test("a member that refuses the page's token is up, not down", () => {
  const view = {
    members: [
      { status: status("n1", "leader", 2, "n1"), error: null },
      // Tokens rotated on n2 but not on n1: n2 answered, only not to this token.
      {
        status: null,
        error: "/v1/status answered 401: a valid bearer token is required",
        http_status: 401,
      },
      { status: null, error: "/v1/status answered 403: read needed", http_status: 403 },
      { status: null, error: "connection refused" },
      { status: null, error: "/v1/status answered 503: starting", http_status: 503 },
      // Its status came back; only its metrics were refused.
      {
        status: status("n6", "follower", 2, "n1"),
        error: "/metrics answered 401",
        http_status: 401,
      },
    ],
  };
  assert.deepEqual(view.members.map(refusedToken), [null, 401, 403, null, null, null]);
  assert.deepEqual(membersUp(view), { up: 4, refused: 2 });
  assert.deepEqual(membersUp({ members: view.members.slice(3, 5) }), { up: 0, refused: 0 });
});

Deno.test("the history turns counters into rates and quantiles over its window", () => {
  const history = new History({ keepMs: 60_000, windowMs: 5_000 });
  const first = history.add(1_000, { members: [member("a", 0, 0, 0, [0, 0, 0, 0, 0])] });
  assert.equal(first.read, null, "no rate from a single poll");
  const second = history.add(2_000, {
    members: [member("a", 10, 4, 1, [0, 4, 4, 4, 4]), member("b", 7, 0, 0, null)],
  });
  // b has no earlier poll yet: only a counts. Writes count every answer, the 5xx one too.
  assert.equal(second.read, 10);
  assert.equal(second.write, 5);
  assert.equal(second.errors, 1);
  assert.equal(second.members.a, 15);
  assert.equal(second.members.b, undefined);
  assert.deepEqual(second.refused.a, { api: 0, peer: 0, limits: {}, reasons: {} });
  assert.equal(second.refused.b, undefined, "no refusal rate from a single poll either");
  near(second.writeP99, 0.001 + 0.009 * 0.99);
  assert.equal(second.readP99, null);
  // Later polls measure from the oldest poll within the window.
  history.add(3_000, {
    members: [member("a", 20, 4, 1, [0, 4, 4, 4, 4]), member("b", 9, 0, 0, null)],
  });
  const refusing = member("b", 12, 0, 0, null);
  refusing.metrics.http_refusals_total.requests = 5;
  refusing.metrics.peer_refusals_total.unknown_path = 1;
  const fourth = history.add(7_000, {
    members: [member("a", 20, 8, 1, [0, 4, 8, 8, 8]), refusing],
  });
  // From t=2000 (5 s earlier): a read 10 more, b 5 more; 4 writes.
  assert.equal(fourth.read, 15 / 5);
  assert.equal(fourth.write, 4 / 5);
  assert.equal(fourth.errors, 0);
  near(fourth.writeP50, 0.01 + 0.09 * 0.5);
  // Refusals over the same window as the requests.
  assert.deepEqual(fourth.refused.b, {
    api: 1,
    peer: 0.2,
    limits: { requests: 1 },
    reasons: { unknown_path: 0.2 },
  });
  assert.equal(fourth.refused.a?.api, 0);
  // A restarted member (counters back near 0) counts from 0, not negative.
  const fifth = history.add(8_000, {
    members: [member("a", 2, 0, 0, [0, 0, 0, 0, 0]), member("b", 12, 0, 0, null)],
  });
  assert.ok(fifth.read! >= 0 && fifth.write! >= 0);
  // Points older than keepMs are dropped.
  history.add(80_000, { members: [] });
  assert.deepEqual(history.points.map((p: { t: number }) => p.t), [80_000]);
});

Deno.test("?minutes=N sets the history between 1 and 60 minutes", () => {
  assert.equal(historyMs(""), HISTORY_MS);
  assert.equal(historyMs("?minutes=1"), 60_000);
  assert.equal(historyMs("?minutes=60"), 3_600_000);
  for (const bad of ["?minutes=0", "?minutes=61", "?minutes=1.5", "?minutes=x"]) {
    assert.equal(historyMs(bad), HISTORY_MS, bad);
  }
});

Deno.test("durations, rates and chart scales read well", () => {
  assert.equal(formatSeconds(null), "—");
  assert.equal(formatSeconds(0.00085), "850 µs");
  assert.equal(formatSeconds(0.0032), "3.2 ms");
  assert.equal(formatSeconds(0.0456), "45.6 ms");
  assert.equal(formatSeconds(0.25), "250 ms");
  assert.equal(formatSeconds(1.25), "1.25 s");
  assert.equal(formatRate(null), "—");
  assert.equal(formatRate(0), "0");
  assert.equal(formatRate(0.4), "0.4");
  assert.equal(formatRate(12.54), "12.5");
  assert.equal(formatRate(340.2), "340");
  assert.equal(formatRate(12_345), "12.3k");
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(64 * 1024 * 1024), "64 MiB");
  assert.equal(formatBytes(1024 ** 3), "1 GiB");
  assert.equal(formatBytes(10.25 * 1024 ** 4), "10.3 TiB");
  assert.equal(niceMax(0, 1), 1);
  assert.equal(niceMax(3, 1), 5);
  assert.equal(niceMax(116, 1), 200);
  assert.equal(niceMax(0.236, 0.001), 0.25);
  assert.equal(niceMax(0.5, 0.001), 0.5);
});

Deno.test("refusals become rates per second by limit and by reason; a node without them has none", () => {
  const reading = (api: Record<string, number>, peer: Record<string, number>) => ({
    ...member("a", 0, 0, 0, null).metrics,
    http_refusals_total: { requests: 0, bytes: 0, watchers: 0, ...api },
    peer_refusals_total: { unknown_path: 0, malformed: 0, ...peer },
  });
  const quiet = reading({}, {});
  assert.deepEqual(refusalRates(quiet, quiet, 1), { api: 0, peer: 0, limits: {}, reasons: {} });
  // Over 2 s: 4 more 429s of the requests limit, 1 of bytes; 6 unknown paths on the peer port.
  assert.deepEqual(
    refusalRates(
      reading({ requests: 10 }, { malformed: 3 }),
      reading({ requests: 14, bytes: 1 }, {
        malformed: 3,
        unknown_path: 6,
      }),
      2,
    ),
    { api: 2.5, peer: 3, limits: { requests: 2, bytes: 0.5 }, reasons: { unknown_path: 3 } },
  );
  // A restarted node's counters start again from 0: its whole new values count.
  assert.deepEqual(
    refusalRates(reading({ watchers: 50 }, {}), reading({ watchers: 2 }, {}), 1),
    { api: 2, peer: 0, limits: { watchers: 2 }, reasons: {} },
  );
  // A node from before the counters: the page's node sends empty objects, or, itself that old,
  // no field at all. Upgraded between two polls, it counts from 0.
  const old = { ...quiet, http_refusals_total: {}, peer_refusals_total: {} };
  const older = member("a", 0, 0, 0, null).metrics as Record<string, unknown>;
  delete older.http_refusals_total;
  delete older.peer_refusals_total;
  const none = { api: null, peer: null, limits: {}, reasons: {} };
  assert.deepEqual(refusalRates(old, old, 1), none);
  assert.deepEqual(refusalRates(older, older, 1), none);
  assert.deepEqual(refusalRates(older, reading({}, { not_member: 1 }), 1), {
    api: 0,
    peer: 1,
    limits: {},
    reasons: { not_member: 1 },
  });
  assert.deepEqual(
    refusalRates(quiet, { ...quiet, http_refusals_total: {} }, 1),
    { api: null, peer: 0, limits: {}, reasons: {} },
  );
});

Deno.test("a member's refused figure: 0 when quiet, flagged with what refused when not", () => {
  assert.deepEqual(describeRefusals(undefined), { text: "—", cls: undefined, items: [] });
  assert.deepEqual(
    describeRefusals({ api: null, peer: null, limits: {}, reasons: {} }),
    { text: "—", cls: undefined, items: [] },
  );
  assert.deepEqual(
    describeRefusals({ api: 0, peer: 0, limits: {}, reasons: {} }),
    { text: "0", cls: undefined, items: [] },
  );
  assert.deepEqual(
    describeRefusals({ api: 0, peer: null, limits: {}, reasons: {} }),
    { text: "0", cls: undefined, items: [] },
  );
  assert.deepEqual(
    describeRefusals({
      api: 12.54,
      peer: 0.2,
      limits: { requests: 0.04, bytes: 12.5 },
      reasons: { unknown_path: 0.2 },
    }),
    {
      text: "API 12.5 · peer 0.2",
      cls: "refusing state-warn",
      // The highest first.
      items: ["API: bytes 12.5, requests 0.04", "peer: unknown_path 0.2"],
    },
  );
  // Peer refusals alone, two reasons at the same rate: by name.
  assert.deepEqual(
    describeRefusals({
      api: 0,
      peer: 2,
      limits: {},
      reasons: { not_member: 1, malformed: 1 },
    }),
    {
      text: "API 0 · peer 2",
      cls: "refusing state-warn",
      items: ["peer: malformed 1, not_member 1"],
    },
  );
  // A rate too small for two decimals still does not read as 0; a counter not reported reads —.
  assert.deepEqual(
    describeRefusals({ api: 0.001, peer: null, limits: { backups: 0.001 }, reasons: {} }),
    { text: "API <0.01 · peer —", cls: "refusing state-warn", items: ["API: backups <0.01"] },
  );
});
