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
 * Request bodies count against the same share: a client (127.0.0.1) that starts writes declaring
 * bodies near the body limit and sends none of them has one admitted, the rest refused
 * (`client_bytes`), and a client from 127.0.0.2 still writes (without the share, those writes would
 * hold the node's byte budget until `--api-timeout`).
 *
 * The nodes listen on 127.0.0.1; Linux routes all of 127.0.0.0/8 to the loopback interface, so a
 * connection from 127.0.0.2 reaches them and is another client (another remote address).
 */

import assert from "node:assert/strict";
import http2 from "node:http2";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { findPromtool, parseSamples, promtoolCheck, sample } from "../testing/prometheus.ts";
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

const PROMTOOL = findPromtool();

/**
 * The node's `raftkv_http_refusals_total` by limit, and its 429s to `GET /v1/data/{key}`, from
 * its `/metrics`, which passes `promtool check metrics` (when promtool is installed: Debian
 * package `prometheus`).
 */
async function _refusals(
  cluster: ProcessCluster,
  id: string,
): Promise<Record<RefusalLimit | "get429", number>> {
  const res = await cluster.request(id, "GET", "/metrics");
  assert.equal(res.status, 200, res.text);
  if (PROMTOOL !== null) {
    const verdict = await promtoolCheck(res.text);
    assert.ok(verdict.ok, `promtool check metrics (exit ${verdict.code}):\n${verdict.output}`);
  }
  const samples = parseSamples(res.text);
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
      if (body !== undefined) {
        headers["content-type"] = "application/json";
        headers["content-length"] = String(new TextEncoder().encode(body).byteLength);
      }
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

    // A write of the client whose body would take it past its share is refused at once
    // (`client_bytes`). A small one is applied and answered, its answer (a transaction that reads
    // the value) counted past the share; its next request is refused at once.
    const large = await attacker.open("PUT", "/v1/data/attacker", JSON.stringify({ v: VALUE }));
    assert.equal(large, 429);
    const txn = { success: [{ op: "put", k: "attacker", v: "small" }, { op: "get", k: "big" }] };
    assert.equal(await attacker.open("POST", "/v1/txn", JSON.stringify(txn)), 200);
    assert.equal(await attacker.open("GET", "/v1/data/big?consistency=stale"), 429);
    const written = await cluster.request(id, "GET", "/v1/data/attacker");
    assert.equal(written.status, 200);
    assert.equal((written.json as { v: string }).v, "small");
    assert.ok(
      await _gauge(cluster, id, "raftkv_http_request_bytes_in_flight") > CLIENT_BYTES,
      "the write's answer counted past the share",
    );
    // The large write was refused as its share of bytes; the small one answered; the read after
    // it refused at once, as its share of unread answers: one more each.
    assert.deepEqual(await _refusals(cluster, id), {
      ...attacked,
      client_bytes: attacked.client_bytes + 1,
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

/** What the attacker's writes declare: close to the body limit (about 6.3 MB by default). */
const DECLARED_BYTES = 5_600_000;
/** How many such writes the attacker starts at once, each on its own connection. */
const HELD_WRITES = 12;

/**
 * `POST /v1/data` from 127.0.0.1 on a new connection, declaring a body of `bytes` and sending
 * none of it.
 *
 * @returns The answer's status once its head has come (a refusal comes at once; an admitted
 * request waits for its body), and a way to close the connection.
 */
async function _declaredWrite(port: number, bytes: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const head = "POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
    `Content-Length: ${bytes}\r\n\r\n`;
  await conn.write(new TextEncoder().encode(head));
  const state = { status: 0 };
  const status = (async () => {
    let text = "";
    const buffer = new Uint8Array(4096);
    const decoder = new TextDecoder();
    while (!text.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error(`closed before an answer: ${JSON.stringify(text)}`);
      text += decoder.decode(buffer.subarray(0, n), { stream: true });
    }
    return state.status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? -1);
  })();
  status.catch(() => {});
  const close = () => {
    try {
      conn.close();
    } catch {
      // Already closed.
    }
  };
  return { state, status, close };
}

Deno.test("one client's request bodies in progress count against its share: writes that declare large bodies and send none cannot block another client's writes", async () => {
  const cluster = await startCluster({
    size: 1,
    nodeFlags: [
      "--max-inflight-bytes",
      String(NODE_BYTES),
      "--max-client-unread-bytes",
      String(CLIENT_BYTES),
      // The admitted write must wait for its body while the test runs (not end in 408).
      "--api-timeout",
      "60s",
    ],
  });
  await using _ = cluster;
  const id = await cluster.waitForLeader(20_000);
  const before = await _refusals(cluster, id);
  const port = cluster.node(id).apiPort;
  // Without the per-client count, these would take 67 MB of the node's 32 MiB: 5 admitted, and
  // every other client's write refused (`bytes`) until they end.
  const held: Awaited<ReturnType<typeof _declaredWrite>>[] = [];
  const other = _unreadingClient(cluster.api(id), "127.0.0.2");
  try {
    for (let i = 0; i < HELD_WRITES; i++) held.push(await _declaredWrite(port, DECLARED_BYTES));
    // Its first write is admitted (a client holding nothing may have one of any size) and waits
    // for its body; the rest would pass its share and are refused at once.
    await waitFor(() => held.filter((h) => h.state.status === 429).length === HELD_WRITES - 1, {
      deadlineMs: 10_000,
      message: () => `11 refused at once (got ${held.map((h) => h.state.status).join(" ")})`,
    });
    assert.deepEqual(held.map((h) => h.state.status), [0, ...Array(HELD_WRITES - 1).fill(429)]);
    assert.equal(await _gauge(cluster, id, "raftkv_http_request_bytes_in_flight"), DECLARED_BYTES);
    // Another client (127.0.0.2) writes: admitted, the node's budget having room.
    const write = await other.open("POST", "/v1/data", JSON.stringify({ k: "other", v: "x" }));
    assert.equal(write, 200);
    assert.equal((await cluster.request(id, "GET", "/v1/data/other")).status, 200);
    // The attacker's 429s counted under its share of bytes, nothing else.
    assert.deepEqual(await _refusals(cluster, id), {
      ...before,
      client_bytes: before.client_bytes + HELD_WRITES - 1,
    });
  } finally {
    for (const h of held) h.close();
    await other.close();
  }
  // Gone: the admitted write's bytes are released, on the node and for its client.
  await waitFor(
    async () => await _gauge(cluster, id, "raftkv_http_request_bytes_in_flight") === 0,
    { deadlineMs: 10_000, message: "the held write released once the client went away" },
  );
  assert.equal(await _gauge(cluster, id, "raftkv_http_requests_in_flight"), 0);
  const again = await cluster.request(id, "POST", "/v1/data", { k: "after", v: "x" });
  assert.equal(again.status, 200, again.text);
});
