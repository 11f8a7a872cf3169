import assert from "node:assert/strict";
import type { KvBackend, NodeStatus } from "../node/backend.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import type { ClusterView } from "./cluster.ts";
import { createApiHandler, type Forwarder } from "./handler.ts";

function status(id: string, role: NodeStatus["role"], leader: string): NodeStatus {
  return {
    id,
    role,
    term: 7,
    leader: { id: leader, api_url: `http://${leader}.test:7777` },
    commit_index: 42,
    applied_index: 41,
    last_index: 43,
    alarms: [],
    members: ["a", "b", "c"].map((m) => ({ id: m, api_url: `http://${m}.test:7777` })),
  };
}

/** A backend that only knows its status: /v1/cluster needs nothing else. */
function backend(s: NodeStatus): KvBackend {
  const unused = () => {
    throw new Error("not used by /v1/cluster");
  };
  return {
    write: unused,
    read: unused,
    range: unused,
    snapshot: unused,
    status: () => s,
    isReady: () => true,
    overloaded: () => null,
  };
}

const MEMBERS = [
  { id: "n1", apiUrl: "http://n1.test:7777", rpcUrl: "http://n1.test:6666" },
  { id: "n2", apiUrl: "http://n2.test:7777", rpcUrl: "http://n2.test:6666" },
  { id: "n3", apiUrl: "http://n3.test:7777", rpcUrl: "http://n3.test:6666" },
];

const N2_METRICS = [
  "# TYPE raftkv_leader_changes_total counter",
  "raftkv_leader_changes_total 3",
  'raftkv_peer_replication_lag_entries{peer="n1"} 5',
  'raftkv_http_requests_total{route="/v1/data",method="POST",code="200"} 9',
].join("\n");

interface Call {
  url: string;
  authorization: string | null;
}

/** n2 answers; n3 is down, hangs, or refuses, as `n3` says. */
function forwarder(calls: Call[], n3: "down" | "hangs" | "401"): Forwarder {
  return (url, init) => {
    calls.push({ url, authorization: new Headers(init.headers).get("authorization") });
    if (url === "http://n2.test:7777/v1/status") {
      return Promise.resolve(Response.json(status("n2", "leader", "n2")));
    }
    if (url === "http://n2.test:7777/metrics") return Promise.resolve(new Response(N2_METRICS));
    if (n3 === "401") {
      return Promise.resolve(
        Response.json({ error: "a bearer token is required" }, { status: 401 }),
      );
    }
    if (n3 === "hangs") {
      return new Promise((_, reject) => {
        init.signal.addEventListener("abort", () => reject(init.signal.reason), { once: true });
      });
    }
    return Promise.reject(
      new TypeError(
        `error sending request for url (${url}): client error (Connect): tcp connect error: Connection refused (os error 111)`,
      ),
    );
  };
}

async function cluster(n3: "down" | "hangs" | "401", headers: HeadersInit = {}) {
  const calls: Call[] = [];
  const metrics = new MetricsRegistry();
  metrics.counter("raftkv_leader_changes_total", "Leader changes.").inc(2);
  const api = createApiHandler(backend(status("n1", "follower", "n2")), {
    selfId: "n1",
    members: MEMBERS,
    forward: forwarder(calls, n3),
    metrics,
  });
  const res = await api(new Request("http://n1.test:7777/v1/cluster", { headers }));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/json");
  assert.equal(res.headers.get("cache-control"), "no-store");
  return { view: (await res.json()) as ClusterView, calls };
}

Deno.test("/v1/cluster: this node from memory, the others asked at their configured URLs", async () => {
  const started = Date.now();
  const { view, calls } = await cluster("down", { authorization: "Bearer t0ken" });
  assert.equal(view.self, "n1");
  assert.ok(view.time_ms >= started);
  assert.deepEqual(view.members.map((m) => [m.id, m.api_url, m.self]), [
    ["n1", "http://n1.test:7777", true],
    ["n2", "http://n2.test:7777", false],
    ["n3", "http://n3.test:7777", false],
  ]);
  const [n1, n2, n3] = view.members;
  assert.deepEqual(n1!.status, status("n1", "follower", "n2"));
  assert.equal(n1!.metrics!.leader_changes_total, 2);
  assert.equal(n1!.error, null);
  assert.deepEqual(n2!.status, status("n2", "leader", "n2"));
  assert.equal(n2!.metrics!.leader_changes_total, 3);
  assert.deepEqual(n2!.metrics!.replication_lag_entries, { n1: 5 });
  assert.deepEqual(n2!.metrics!.requests_total.write, { "2xx": 9 });
  assert.equal(n2!.error, null);
  assert.equal(n3!.status, null);
  assert.equal(n3!.metrics, null);
  assert.equal(
    n3!.error,
    "client error (Connect): tcp connect error: Connection refused (os error 111)",
  );
  // Only the other members were asked, for their status and metrics, with the caller's token.
  assert.deepEqual(calls.map((c) => c.url).sort(), [
    "http://n2.test:7777/metrics",
    "http://n2.test:7777/v1/status",
    "http://n3.test:7777/metrics",
    "http://n3.test:7777/v1/status",
  ]);
  assert.ok(calls.every((c) => c.authorization === "Bearer t0ken"));
});

Deno.test("/v1/cluster: a member that does not answer is reported after the deadline", async () => {
  const started = performance.now();
  const { view, calls } = await cluster("hangs");
  const elapsed = performance.now() - started;
  assert.ok(elapsed >= 900 && elapsed < 3000, `answered after ${elapsed} ms`);
  assert.equal(view.members[1]!.error, null);
  assert.equal(view.members[2]!.status, null);
  assert.equal(view.members[2]!.error, "no answer within 1000 ms");
  assert.ok(calls.every((c) => c.authorization === null), "no token to pass on");
});

Deno.test("/v1/cluster: a member's refusal is reported with its status and message", async () => {
  const { view } = await cluster("401");
  const n3 = view.members[2]!;
  assert.equal(n3.http_status, 401);
  assert.match(n3.error!, /answered 401: a bearer token is required/);
});

Deno.test("/v1/cluster without members configured lists this node alone", async () => {
  const api = createApiHandler(backend(status("n1", "leader", "n1")), { selfId: "n1" });
  const res = await api(new Request("http://n1.test:7777/v1/cluster"));
  const view = (await res.json()) as ClusterView;
  assert.deepEqual(view.members.map((m) => [m.id, m.self, m.status?.role]), [
    ["n1", true, "leader"],
  ]);
  const post = await api(new Request("http://n1.test:7777/v1/cluster", { method: "POST" }));
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET");
  await post.body?.cancel();
});
