/**
 * What the API's request budget (`--max-inflight-requests`, `--max-inflight-bytes`) counts, on
 * real processes with small limits:
 *
 * - A blocking read (`GET /v1/data/{key}?index=N&wait=D`) holds no request slot while it waits:
 *   more waiting reads than slots leave the node serving writes (its own and those followers
 *   forward to it) and reads. Waiting reads count with watch streams against `--max-watchers`
 *   instead (429 past it), and a read woken by a change takes a slot again to answer.
 * - An answer keeps its request's slot, and its bytes count, until the server has taken its body:
 *   answers a client does not read (HTTP/2 streams whose flow-control window stays shut) cannot
 *   pile up in the node's memory; once the client goes away, their slots are free again. That
 *   holds for answers a follower relays from the leader too.
 */

import assert from "node:assert/strict";
import http2 from "node:http2";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { parseSamples, sample } from "../testing/prometheus.ts";

/** One of the node's gauges, read from its `/metrics` (which the budget does not count). */
async function _gauge(cluster: ProcessCluster, id: string, name: string): Promise<number> {
  const res = await cluster.request(id, "GET", "/metrics");
  assert.equal(res.status, 200, res.text);
  return sample(parseSamples(res.text), name);
}

/** Asserts a 429 that says to retry, with a message matching `error`. */
function _assertTooMany(res: { status: number; headers: Headers; text: string }, error: RegExp) {
  assert.equal(res.status, 429, res.text);
  assert.equal(res.headers.get("retry-after"), "1");
  assert.match(String(JSON.parse(res.text).error), error);
}

Deno.test("blocking reads hold no request slot while they wait, count against --max-watchers, and take a slot again to answer", async () => {
  const MAX_INFLIGHT = 4;
  const MAX_WATCHERS = 8;
  await using cluster = await startCluster({
    size: 3,
    nodeFlags: [
      "--max-inflight-requests",
      String(MAX_INFLIGHT),
      "--max-watchers",
      String(MAX_WATCHERS),
    ],
  });
  const leader = await cluster.waitForLeader(20_000);
  const follower = cluster.ids.find((id) => id !== leader)!;
  const status = await cluster.request(leader, "GET", "/v1/status");
  // Each read waits for a change of its own key after this index.
  const index = (status.json as { applied_index: number }).applied_index;
  const client = Deno.createHttpClient({});
  const stop = new AbortController();
  const waiting: Promise<Response | null>[] = [];
  const blockingRead = (key: string) =>
    fetch(`${cluster.api(leader)}/v1/data/${key}?index=${index}&wait=30s&consistency=stale`, {
      client,
      signal: stop.signal,
    }).catch(() => null);
  try {
    // Twice as many waiting reads as request slots, on the leader.
    const WAITING = 2 * MAX_INFLIGHT;
    for (let i = 0; i < WAITING - 1; i++) waiting.push(blockingRead(`wait-${i}`));
    await waitFor(
      async () => await _gauge(cluster, leader, "raftkv_blocking_reads") === WAITING - 1,
      { deadlineMs: 5_000, message: "the blocking reads waiting on the leader" },
    );
    assert.equal(await _gauge(cluster, leader, "raftkv_http_requests_in_flight"), 0);

    // The leader still serves: its own writes, writes a follower forwards, reads, a status.
    const local = await cluster.request(leader, "POST", "/v1/data", { k: "a", v: "1" });
    assert.equal(local.status, 200, local.text);
    const forwarded = await cluster.request(follower, "PUT", "/v1/data/b", { v: "2" });
    assert.equal(forwarded.status, 200, forwarded.text);
    assert.equal((await cluster.request(leader, "GET", "/v1/data/a")).status, 200);
    assert.equal((await cluster.request(leader, "GET", "/v1/status")).status, 200);

    // Waiting reads and watch streams share --max-watchers: one more of either is refused.
    const watch = await fetch(`${cluster.api(leader)}/v1/watch?prefix=w/`, {
      client,
      signal: stop.signal,
    });
    assert.equal(watch.status, 200);
    await waitFor(async () => await _gauge(cluster, leader, "raftkv_watchers") === 1, {
      deadlineMs: 5_000,
      message: "the watch stream open",
    });
    const refused = await cluster.request(
      leader,
      "GET",
      `/v1/data/wait-x?index=${index}&wait=30s&consistency=stale`,
    );
    _assertTooMany(refused, /too many watch streams and blocking reads .*--max-watchers/);
    _assertTooMany(
      await cluster.request(leader, "GET", "/v1/watch?prefix=x/"),
      /too many watch streams .*--max-watchers/,
    );
    // A read that does not wait is not counted as one.
    assert.equal(
      (await cluster.request(leader, "GET", "/v1/data/a?consistency=stale")).status,
      200,
    );
    await watch.body?.cancel();
    await waitFor(async () => await _gauge(cluster, leader, "raftkv_watchers") === 0, {
      deadlineMs: 5_000,
      message: "the watch stream closed",
    });

    // A change wakes its reader, which reads with a slot of its own again.
    const put = await cluster.request(leader, "PUT", "/v1/data/wait-0", { v: "woken" });
    assert.equal(put.status, 200, put.text);
    const woken = await waiting[0]!;
    assert.ok(woken !== null);
    assert.equal(woken.status, 200);
    assert.equal((await woken.json()).v, "woken");
    await waitFor(
      async () => await _gauge(cluster, leader, "raftkv_blocking_reads") === WAITING - 2,
      { deadlineMs: 5_000, message: "the woken read no longer waiting" },
    );
  } finally {
    stop.abort();
    await Promise.all(waiting);
    client.close();
  }
  // The readers went away: none is counted any more.
  await waitFor(async () => await _gauge(cluster, leader, "raftkv_blocking_reads") === 0, {
    deadlineMs: 5_000,
    message: "no blocking read waiting once the clients went away",
  });
  assert.equal(await _gauge(cluster, leader, "raftkv_http_requests_in_flight"), 0);
});

/** An HTTP/2 connection (cleartext) whose streams never open their flow-control window. */
function _unreadingSession(url: string) {
  const session = http2.connect(url, { settings: { initialWindowSize: 0 } });
  session.on("error", () => {});
  const statuses: number[] = [];
  const open = (method: string, path: string, body?: string) => {
    const headers: Record<string, string> = { ":method": method, ":path": path };
    if (body !== undefined) headers["content-type"] = "application/json";
    const stream = session.request(headers, { endStream: body === undefined });
    stream.on("response", (h) => statuses.push(Number(h[":status"])));
    stream.on("error", () => {});
    stream.pause();
    if (body !== undefined) stream.end(body);
  };
  const close = () =>
    new Promise<void>((resolve) => {
      session.destroy();
      if (session.closed) resolve();
      else session.once("close", () => resolve());
    });
  return { open, statuses, close };
}

Deno.test("an answer the client does not read keeps its request slot and bytes until taken, relayed answers too", async () => {
  const MAX_INFLIGHT = 4;
  await using cluster = await startCluster({
    size: 3,
    nodeFlags: ["--max-inflight-requests", String(MAX_INFLIGHT)],
  });
  const leader = await cluster.waitForLeader(20_000);
  const follower = cluster.ids.find((id) => id !== leader)!;
  const value = "x".repeat(512 * 1024);
  const put = await cluster.request(leader, "PUT", "/v1/data/big", { v: value });
  assert.equal(put.status, 200, put.text);
  // The follower has applied it (its stale read sees it).
  await waitFor(async () => {
    const read = await cluster.request(follower, "GET", "/v1/data/big?consistency=stale");
    return read.status === 200;
  }, { deadlineMs: 5_000, message: "the value applied on the follower" });

  const unread = _unreadingSession(cluster.api(follower));
  let closed = false;
  try {
    // Three reads of the large value, and a write whose answer (echoing the value) the follower
    // relays from the leader: none of them read.
    for (let i = 0; i < MAX_INFLIGHT - 1; i++) {
      unread.open("GET", "/v1/data/big?consistency=stale");
    }
    unread.open("PUT", "/v1/data/big2", JSON.stringify({ v: value }));
    await waitFor(() => unread.statuses.length === MAX_INFLIGHT, {
      deadlineMs: 5_000,
      message: "the answers' headers",
    });
    assert.deepEqual(unread.statuses, unread.statuses.map(() => 200));
    // Their bodies were not taken: they still hold every slot, and their bytes count.
    assert.equal(
      await _gauge(cluster, follower, "raftkv_http_requests_in_flight"),
      MAX_INFLIGHT,
    );
    const bytes = await _gauge(cluster, follower, "raftkv_http_request_bytes_in_flight");
    assert.ok(bytes >= MAX_INFLIGHT * value.length, `${bytes} bytes in flight`);
    _assertTooMany(await cluster.request(follower, "GET", "/v1/status"), /^too many requests$/);

    // The client goes away: its answers are cancelled, and their slots and bytes released.
    await unread.close();
    closed = true;
    await waitFor(
      async () => await _gauge(cluster, follower, "raftkv_http_requests_in_flight") === 0,
      { deadlineMs: 5_000, message: "the unread answers released" },
    );
    assert.equal(await _gauge(cluster, follower, "raftkv_http_request_bytes_in_flight"), 0);
  } finally {
    if (!closed) await unread.close();
  }
  // Answers that are read release as they go.
  const read = await cluster.request(follower, "GET", "/v1/data/big?consistency=stale");
  assert.equal(read.status, 200);
  assert.equal((read.json as { v: string }).v, value);
  assert.equal((await cluster.request(follower, "GET", "/v1/data/big2")).status, 200);
  assert.equal(await _gauge(cluster, follower, "raftkv_http_requests_in_flight"), 0);
});
