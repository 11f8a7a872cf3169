import assert from "node:assert/strict";
import {
  type KvBackend,
  type KvResult,
  type NodeStatus,
  NotLeaderError,
  type RangeAnswer,
  type ReadResult,
} from "../node/backend.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { parseSamples, sample } from "../../testing/prometheus.ts";
import { createApiHandler, type Forwarder } from "./handler.ts";
import { OTHER_ROUTE, routeOf } from "./http_metrics.ts";

/** A follower (its leader is "n2") whose data operations throw NotLeaderError, or hang. */
class FollowerBackend implements KvBackend {
  hang = false;
  write(_cmd: unknown, signal: AbortSignal): Promise<KvResult> {
    return this.#op(signal);
  }
  read(_k: string, _c: unknown, signal: AbortSignal): Promise<ReadResult> {
    return this.#op(signal);
  }
  range(_q: unknown, _c: unknown, signal: AbortSignal): Promise<RangeAnswer> {
    return this.#op(signal);
  }
  status(): NodeStatus {
    return {
      id: "n1",
      role: "follower",
      term: 2,
      leader: { id: "n2", api_url: "http://n2.test:7777" },
      commit_index: 0,
      applied_index: 0,
      last_index: 0,
      members: [],
      alarms: [],
    };
  }
  snapshot(): { index: number; stream: ReadableStream<Uint8Array> } {
    throw new Error("not used");
  }
  isReady(): boolean {
    return true;
  }
  overloaded(): null {
    return null;
  }
  #op<T>(signal: AbortSignal): Promise<T> {
    if (!this.hang) return Promise.reject(new NotLeaderError("n2"));
    return new Promise((_, reject) =>
      signal.addEventListener("abort", () => reject(signal.reason))
    );
  }
}

function setup(maxInflightRequests = 1024, apiTimeoutMs = 5000) {
  const registry = new MetricsRegistry();
  const backend = new FollowerBackend();
  const forwarded: string[] = [];
  const forward: Forwarder = (url) => {
    forwarded.push(url);
    return Promise.resolve(Response.json({ k: "a", v: "1", index: 7 }));
  };
  const handler = createApiHandler(backend, {
    selfId: "n1",
    forward,
    members: ["n1", "n2"].map((id) => ({
      id,
      apiUrl: `http://${id}.test:7777`,
      rpcUrl: `http://${id}.test:6666`,
    })),
    metrics: registry,
    maxInflightRequests,
    apiTimeoutMs,
    logError: () => {},
  });
  const call = (method: string, path: string, body?: string) =>
    handler(
      new Request(`http://n1.test:7777${path}`, {
        method,
        ...(body === undefined ? {} : { body, headers: { "content-type": "application/json" } }),
      }),
    );
  const scrape = async () => {
    const res = await call("GET", "/metrics");
    assert.equal(res.status, 200);
    return parseSamples(await res.text());
  };
  return { registry, backend, forwarded, call, scrape };
}

Deno.test("GET /metrics serves this node's registry in the text format, never forwarded", async () => {
  const { registry, forwarded, call } = setup();
  registry.gauge("raftkv_test_gauge", "A gauge the test registered.").set(42);
  const res = await call("GET", "/metrics");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  assert.ok(text.includes("# TYPE raftkv_test_gauge gauge\nraftkv_test_gauge 42\n"), text);
  assert.ok(text.includes("# TYPE raftkv_http_requests_in_flight gauge"), text);
  assert.deepEqual(forwarded, [], "a follower answers /metrics itself");
  const post = await call("POST", "/metrics", "{}");
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET");
  await post.body?.cancel();
});

Deno.test("requests are counted by route template, method and status, never by key", async () => {
  const { call, scrape, forwarded } = setup();
  for (
    const r of [
      await call("PUT", "/v1/data/secret-key-1", '{"v":"1"}'),
      await call("PUT", "/v1/data/secret-key-2", '{"v":"2"}'),
      await call("GET", "/v1/status"),
      await call("GET", "/no/such/path"),
      await call("BREW", "/v1/status"),
    ]
  ) await r.body?.cancel();
  assert.equal(forwarded.length, 2, "the writes were forwarded to the leader");
  const s = await scrape();
  assert.equal(
    sample(s, 'raftkv_http_requests_total{route="/v1/data/{key}",method="PUT",code="200"}'),
    2,
  );
  assert.equal(
    sample(s, 'raftkv_http_requests_total{route="/v1/status",method="GET",code="200"}'),
    1,
  );
  assert.equal(sample(s, 'raftkv_http_requests_total{route="other",method="GET",code="404"}'), 1);
  assert.equal(
    sample(s, 'raftkv_http_requests_total{route="/v1/status",method="other",code="405"}'),
    1,
  );
  assert.equal(
    sample(s, 'raftkv_http_request_duration_seconds_count{route="/v1/data/{key}",method="PUT"}'),
    2,
  );
  assert.equal(
    sample(
      s,
      'raftkv_http_request_duration_seconds_bucket{route="/v1/data/{key}",method="PUT",le="+Inf"}',
    ),
    2,
  );
  assert.ok(
    sample(s, 'raftkv_http_request_duration_seconds_sum{route="/v1/data/{key}",method="PUT"}') > 0,
  );
  assert.deepEqual([...s.keys()].filter((k) => k.includes("secret")), []);
  // The scrape itself shows up in the next one.
  const again = await scrape();
  assert.equal(
    sample(again, 'raftkv_http_requests_total{route="/metrics",method="GET",code="200"}'),
    1,
  );
});

Deno.test("/metrics is answered past the in-flight limit, and shows the request in flight", async () => {
  const { backend, call, scrape } = setup(1, 500);
  backend.hang = true;
  // Admitted at once: the handler counts a request before its first await.
  const hanging = call("GET", "/v1/data/a");
  const refused = await call("GET", "/v1/status");
  assert.equal(refused.status, 429, "the limit of one request in progress is reached");
  await refused.body?.cancel();
  const s = await scrape();
  assert.equal(sample(s, "raftkv_http_requests_in_flight"), 1);
  assert.equal(
    sample(s, 'raftkv_http_requests_total{route="/v1/status",method="GET",code="429"}'),
    1,
  );
  assert.deepEqual(REFUSAL_LIMITS.map((l) => refusals(s, l)), [1, 0, 0, 0, 0, 0, 0]);
  // The read's deadline ends it with 504; then nothing is in flight.
  const late = await hanging;
  assert.equal(late.status, 504);
  await late.body?.cancel();
  const after = await scrape();
  assert.equal(sample(after, "raftkv_http_requests_in_flight"), 0);
  assert.equal(
    sample(after, 'raftkv_http_requests_total{route="/v1/data/{key}",method="GET",code="504"}'),
    1,
  );
});

/** Every label of `raftkv_http_refusals_total`, as the help text lists them. */
const REFUSAL_LIMITS = [
  "requests",
  "bytes",
  "client_unread",
  "forwards",
  "watchers",
  "blocking_reads",
  "backups",
];

function refusals(samples: Map<string, number>, limit: string): number {
  return sample(samples, `raftkv_http_refusals_total{limit="${limit}"}`);
}

Deno.test("every limit's refusals show from the start, at 0, and nothing admitted counts", async () => {
  const { call, scrape } = setup();
  const fresh = await scrape();
  const series = [...fresh.keys()].filter((k) => k.startsWith("raftkv_http_refusals_total"));
  assert.deepEqual(series, REFUSAL_LIMITS.map((l) => `raftkv_http_refusals_total{limit="${l}"}`));
  for (const path of ["/v1/data/a", "/v1/status", "/no/such/path"]) {
    await (await call("GET", path)).body?.cancel();
  }
  const s = await scrape();
  assert.deepEqual(REFUSAL_LIMITS.map((l) => refusals(s, l)), [0, 0, 0, 0, 0, 0, 0]);
  const text = await (await call("GET", "/metrics")).text();
  assert.ok(text.includes("# TYPE raftkv_http_refusals_total counter\n"), text);
  const help = /^# HELP raftkv_http_refusals_total (.*)$/m.exec(text)?.[1] ?? "";
  for (const limit of REFUSAL_LIMITS) assert.ok(help.includes(`${limit} (--`), help);
});

Deno.test("route labels are the API's templates, whatever the path", () => {
  assert.equal(routeOf("/v1/data"), "/v1/data");
  assert.equal(routeOf("/v1/data/"), "/v1/data/{key}");
  assert.equal(routeOf("/v1/data/a%2Fb/c"), "/v1/data/{key}");
  assert.equal(routeOf("/metrics"), "/metrics");
  assert.equal(routeOf("/metrics/"), OTHER_ROUTE);
  assert.equal(routeOf("/v1/cluster"), "/v1/cluster");
  assert.equal(routeOf("/ui"), "/ui");
  assert.equal(routeOf("/ui/app.js"), "/ui");
  assert.equal(routeOf("/uix"), OTHER_ROUTE);
  assert.equal(routeOf("/v1/statusx"), OTHER_ROUTE);
  assert.equal(routeOf(null), OTHER_ROUTE);
  // Every route of the API has a template of its own, not "other" (which unknown paths get).
  for (const route of ["/v1/txn", "/v1/leases", "/v1/members", "/v1/leader/transfer"]) {
    assert.equal(routeOf(route), route);
  }
  assert.equal(routeOf("/v1/members/node-4"), "/v1/members/{id}");
  assert.equal(routeOf("/v1/leases/57"), "/v1/leases/{id}");
  assert.equal(routeOf("/v1/leases/57/keepalive"), "/v1/leases/{id}/keepalive");
  assert.equal(routeOf("/v1/leases/57/x"), OTHER_ROUTE);
  assert.equal(routeOf("/v1/txnx"), OTHER_ROUTE);
});
