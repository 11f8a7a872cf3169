/**
 * One client cannot spend the node's budget for unread answers (`--max-inflight-bytes`) alone,
 * on real processes: a client from 127.0.0.2 opens HTTP/2 streams asking for a 1 MiB value with
 * their flow-control window shut (the server can take nothing of the answers) until the node
 * answers it 429. With `--max-client-unread-bytes`, it holds at most its share, and a client from
 * 127.0.0.1 still reads that value and writes through the same node; a write of the first client
 * past its share is still answered (its effect has happened). Without the per-client bound (0),
 * the same client makes the node answer 429 to everyone: the denial of service the bound stops.
 * The node's `raftkv_http_refusals_total` (its scrape checked by `promtool check metrics`) tells
 * the two apart: the client's 429s count under `client_unread`, the node's under `bytes`.
 *
 * The nodes listen on 127.0.0.1; Linux routes all of 127.0.0.0/8 to the loopback interface, so a
 * connection from 127.0.0.2 reaches them and is another client (another remote address).
 */

import assert from "node:assert/strict";
import http2 from "node:http2";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { parseSamples, sample, scrapeChecked } from "../testing/prometheus.ts";
import { REFUSAL_LIMITS, type RefusalLimit } from "../src/api/limits.ts";

const MiB = 1024 * 1024;
/** The node's budget: eight times one client's share. */
const NODE_BYTES = 32 * MiB;
const CLIENT_BYTES = 4 * MiB;
/** The value read: its answer (with the JSON around it) is just under 1 MiB. */
const VALUE = "x".repeat(MiB - 1024);
/** Most streams the attacking client opens before it must have been refused. */
const MAX_STREAMS = 80;
/** How long one stream may take to get its answer's headers. */
const ANSWER_DEADLINE_MS = 10_000;

/**
 * The node's `raftkv_http_refusals_total` by limit, and its 429s to `GET /v1/data/{key}`, from
 * its `/metrics`, which passes `promtool check metrics` (when promtool is installed: Debian
 * package `prometheus`).
 */
async function _refusals(
  cluster: ProcessCluster,
  id: string,
): Promise<Record<RefusalLimit | "get429", number>> {
  const samples = await scrapeChecked(cluster, id);
  const counts = Object.fromEntries(
    REFUSAL_LIMITS.map((l) => [l, sample(samples, `raftkv_http_refusals_total{limit="${l}"}`)]),
  ) as Record<RefusalLimit, number>;
  const get429 = 'raftkv_http_requests_total{route="/v1/data/{key}",method="GET",code="429"}';
  // Present once the first 429 to such a GET was answered.
  return { ...counts, get429: samples.get(get429) ?? 0 };
}

/** One of the node's gauges, read from its `/metrics` (which the budgets do not count). */
async function _gauge(cluster: ProcessCluster, id: string, name: string): Promise<number> {
  const res = await cluster.request(id, "GET", "/metrics");
  assert.equal(res.status, 200, res.text);
  return sample(parseSamples(res.text), name);
}

/**
 * An HTTP/2 connection (cleartext) from `localAddress` whose streams never open their
 * flow-control window: the server can take nothing of an answer's body.
 */
function _unreadingClient(url: string, localAddress: string) {
  const session = http2.connect(url, {
    localAddress,
    settings: { initialWindowSize: 0 },
  } as http2.ClientSessionOptions);
  session.on("error", () => {});
  /** Opens a stream and resolves with its answer's status, never reading its body. */
  const open = (method: string, path: string, body?: string) =>
    new Promise<number>((resolve, reject) => {
      const headers: Record<string, string> = { ":method": method, ":path": path };
      if (body !== undefined) headers["content-type"] = "application/json";
      const stream = session.request(headers, { endStream: body === undefined });
      const timer = setTimeout(
        () => reject(new Error(`no answer to ${method} ${path} in ${ANSWER_DEADLINE_MS}ms`)),
        ANSWER_DEADLINE_MS,
      );
      stream.on("response", (h) => {
        clearTimeout(timer);
        resolve(Number(h[":status"]));
      });
      stream.on("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      stream.on("close", () => {
        clearTimeout(timer);
        reject(new Error(`${method} ${path}: the stream closed before its answer`));
      });
      stream.pause();
      if (body !== undefined) stream.end(body);
    });
  const close = () =>
    new Promise<void>((resolve) => {
      if (session.closed || session.destroyed) return resolve();
      session.once("close", () => resolve());
      session.destroy();
    });
  return { open, close };
}

/**
 * The attack: streams reading `key`, one after the other (each answer counted before the next is
 * asked for), until three are refused or {@linkcode MAX_STREAMS} were opened.
 *
 * @returns The statuses, in order.
 */
async function _attack(
  client: ReturnType<typeof _unreadingClient>,
  key: string,
): Promise<number[]> {
  const statuses: number[] = [];
  while (statuses.length < MAX_STREAMS && statuses.filter((s) => s === 429).length < 3) {
    statuses.push(await client.open("GET", `/v1/data/${key}?consistency=stale`));
  }
  return statuses;
}

/** Starts a one-node cluster with the budgets, holding {@linkcode VALUE} at `big`. */
async function _cluster(clientBytes: number): Promise<{ cluster: ProcessCluster; id: string }> {
  const cluster = await startCluster({
    size: 1,
    nodeFlags: [
      "--max-inflight-bytes",
      String(NODE_BYTES),
      "--max-client-unread-bytes",
      String(clientBytes),
    ],
  });
  try {
    const id = await cluster.waitForLeader(20_000);
    const put = await cluster.request(id, "PUT", "/v1/data/big", { v: VALUE });
    assert.equal(put.status, 200, put.text);
    return { cluster, id };
  } catch (e) {
    await cluster.close();
    throw e;
  }
}

Deno.test("one client that reads none of its answers holds at most --max-client-unread-bytes; another client still reads and writes", async () => {
  const { cluster, id } = await _cluster(CLIENT_BYTES);
  await using _ = cluster;
  const attacker = _unreadingClient(cluster.api(id), "127.0.0.2");
  const before = await _refusals(cluster, id);
  // Every limit shows from the start, at 0.
  assert.deepEqual(REFUSAL_LIMITS.map((l) => before[l]), REFUSAL_LIMITS.map(() => 0));
  try {
    const statuses = await _attack(attacker, "big");
    const held = statuses.filter((s) => s === 200).length;
    // A few answers fill its share; then it is refused, well before the node's budget is spent.
    assert.ok(held >= 1 && held * VALUE.length <= CLIENT_BYTES, statuses.join(" "));
    assert.deepEqual(statuses.slice(held), [429, 429, 429], statuses.join(" "));
    const bytes = await _gauge(cluster, id, "raftkv_http_request_bytes_in_flight");
    assert.ok(
      bytes >= held * VALUE.length && bytes <= CLIENT_BYTES,
      `${bytes} bytes in flight for ${held} unread answers`,
    );
    // Each of its 429s counted once, as the client's share, not as the node's budgets.
    const refused = statuses.length - held;
    const attacked = await _refusals(cluster, id);
    assert.deepEqual(attacked, {
      ...before,
      client_unread: before.client_unread + refused,
      get429: before.get429 + refused,
    });

    // Another client reads the same value, whole, and writes, through the same node.
    const read = await cluster.request(id, "GET", "/v1/data/big");
    assert.equal(read.status, 200, read.text.slice(0, 200));
    assert.equal((read.json as { v: string }).v, VALUE);
    const write = await cluster.request(id, "PUT", "/v1/data/other", { v: VALUE });
    assert.equal(write.status, 200, write.text.slice(0, 200));
    assert.equal((await cluster.request(id, "GET", "/v1/status")).status, 200);
    // The other client's requests were refused by nothing, and counted nowhere.
    assert.deepEqual(await _refusals(cluster, id), attacked);

    // A write of the client at its share is applied and answered, its answer (echoing the value)
    // counted past the share; its next request is refused at once.
    const attackerWrite = await attacker.open(
      "PUT",
      "/v1/data/attacker",
      JSON.stringify({ v: VALUE }),
    );
    assert.equal(attackerWrite, 200);
    assert.equal(await attacker.open("GET", "/v1/data/big?consistency=stale"), 429);
    const written = await cluster.request(id, "GET", "/v1/data/attacker");
    assert.equal(written.status, 200);
    assert.equal((written.json as { v: string }).v, VALUE);
    assert.ok(
      await _gauge(cluster, id, "raftkv_http_request_bytes_in_flight") > CLIENT_BYTES,
      "the write's answer counted past the share",
    );
    // The write was answered; the read after it was refused at once, as its share: one more.
    assert.deepEqual(await _refusals(cluster, id), {
      ...attacked,
      client_unread: attacked.client_unread + 1,
      get429: attacked.get429 + 1,
    });
  } finally {
    await attacker.close();
  }
  // Gone: its answers are cancelled, and everything they held released.
  await waitFor(
    async () => await _gauge(cluster, id, "raftkv_http_request_bytes_in_flight") === 0,
    { deadlineMs: 10_000, message: "the unread answers released once the client went away" },
  );
  assert.equal(await _gauge(cluster, id, "raftkv_http_requests_in_flight"), 0);
});

Deno.test("without the per-client bound (--max-client-unread-bytes 0) the same client makes the node answer 429 to everyone", async () => {
  const { cluster, id } = await _cluster(0);
  await using _ = cluster;
  const attacker = _unreadingClient(cluster.api(id), "127.0.0.2");
  const before = await _refusals(cluster, id);
  try {
    const statuses = await _attack(attacker, "big");
    const held = statuses.filter((s) => s === 200).length;
    // It holds the node's whole budget.
    assert.ok(held * VALUE.length >= NODE_BYTES, statuses.join(" "));
    assert.deepEqual(statuses.slice(held), [429, 429, 429], statuses.join(" "));
    const read = await cluster.request(id, "GET", "/v1/data/big");
    assert.equal(read.status, 429, read.text.slice(0, 200));
    const write = await cluster.request(id, "PUT", "/v1/data/other", { v: "small" });
    assert.equal(write.status, 429, write.text);
    // Every 429, the attacker's and the other client's two, is the node's budget, none a share.
    const refused = statuses.length - held;
    assert.deepEqual(await _refusals(cluster, id), {
      ...before,
      bytes: before.bytes + refused + 2,
      get429: before.get429 + refused + 1,
    });
  } finally {
    await attacker.close();
  }
  await waitFor(
    async () => await _gauge(cluster, id, "raftkv_http_request_bytes_in_flight") === 0,
    { deadlineMs: 10_000, message: "the unread answers released once the client went away" },
  );
  assert.equal((await cluster.request(id, "GET", "/v1/data/big")).status, 200);
});
