/**
 * Back-pressure on real processes with small limits: past `--max-inflight-requests` a node
 * answers 429 at once, past `--max-pending-proposals` the leader refuses writes with 503 without
 * applying them, both with `Retry-After`, and the node keeps serving once the load is gone.
 *
 * Requests are held in flight deterministically: a raw HTTP/1.1 request whose body has not all
 * been sent keeps the handler waiting; writes stay pending on a leader whose followers are
 * frozen with SIGSTOP. A node whose open-file limit is reached by connections keeps writing and
 * taking snapshots (its storage keeps descriptors in reserve), and listens again once they close.
 * Past `--quota-bytes` the leader refuses writes that add data with 507. The load test past the
 * default limits is `deno task overload`.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import {
  buildClusterConfig,
  freePorts,
  httpRequest,
  type HttpResult,
  type ProcessCluster,
  startCluster,
  waitFor,
  writeClusterFile,
} from "../testing/harness.ts";
import { parseSamples, promtoolCheck, sample } from "../testing/prometheus.ts";

const MAX_INFLIGHT = 6;
const MAX_PENDING = 4;
const INFLIGHT_FLAGS = ["--max-inflight-requests", String(MAX_INFLIGHT)];
const PENDING_FLAGS = [
  "--max-pending-proposals",
  String(MAX_PENDING),
  // The leader must keep leading while its followers are frozen for a moment.
  "--election-timeout",
  "1000",
  "--heartbeat",
  "100",
];

const _encoder = new TextEncoder();

/** An HTTP/1.1 answer read from a raw connection. */
interface RawAnswer {
  status: number;
  headers: Headers;
  body: string;
}

/** A write sent over its own connection whose body is held back until `finish()`. */
interface HeldWrite {
  /** The answer, once it has arrived (before `finish()` only if the node refused at once). */
  answer: RawAnswer | null;
  /** Sends the rest of the body and waits for the answer. */
  finish(): Promise<RawAnswer>;
  /** Closes the connection. */
  close(): void;
}

/** Parses a complete HTTP/1.1 answer (with a Content-Length), or returns null. */
function _parseAnswer(text: string): RawAnswer | null {
  const end = text.indexOf("\r\n\r\n");
  if (end === -1) return null;
  const [statusLine = "", ...lines] = text.slice(0, end).split("\r\n");
  const headers = new Headers();
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  const body = text.slice(end + 4);
  if (_encoder.encode(body).byteLength < Number(headers.get("content-length") ?? 0)) return null;
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? 0), headers, body };
}

/**
 * Starts `POST /v1/data` on a new connection, sending the headers and part of the body: the
 * node's handler then waits for the rest, holding one request slot.
 */
async function _holdWrite(port: number, key: string): Promise<HeldWrite> {
  const body = JSON.stringify({ k: key, v: "held" });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const head = "POST /v1/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" +
    `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
  await conn.write(_encoder.encode(head + body.slice(0, 4)));
  const held: HeldWrite = {
    answer: null,
    async finish() {
      await conn.write(_encoder.encode(body.slice(4)));
      return await reading;
    },
    close() {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    },
  };
  const reading = (async () => {
    let text = "";
    const buffer = new Uint8Array(4096);
    const decoder = new TextDecoder();
    while (true) {
      const n = await conn.read(buffer);
      if (n !== null) text += decoder.decode(buffer.subarray(0, n), { stream: true });
      const answer = _parseAnswer(text);
      if (answer !== null) return held.answer = answer;
      if (n === null) throw new Error(`no complete answer: ${JSON.stringify(text.slice(0, 200))}`);
    }
  })();
  reading.catch(() => {});
  return held;
}

/** Asserts a "try again" answer: the status, `Retry-After: 1`, and a JSON error. */
function _assertRetryLater(result: HttpResult, status: number, error: RegExp): void {
  assert.equal(result.status, status, result.text);
  assert.equal(result.headers.get("retry-after"), "1");
  assert.match(String((result.json as { error?: unknown } | null)?.error), error);
}

/** Waits until a write through `id` is acknowledged, then reads it back. */
async function _assertServes(cluster: ProcessCluster, id: string, key: string): Promise<void> {
  let last = "";
  await waitFor(async () => {
    const put = await cluster.request(id, "POST", "/v1/data", { k: key, v: "after" });
    last = `${put.status} ${put.text}`;
    return put.status === 200;
  }, { deadlineMs: 15_000, message: () => `a write to ${id} after the load (last: ${last})` });
  const read = await cluster.request(id, "GET", `/v1/data/${key}`);
  const { k, v } = read.json as { k: string; v: string };
  assert.deepEqual({ k, v }, { k: key, v: "after" });
}

Deno.test("past --max-inflight-requests a node answers 429 with Retry-After and recovers", async () => {
  await using cluster = await startCluster({ size: 1, nodeFlags: INFLIGHT_FLAGS });
  const id = await cluster.waitForLeader(20_000);
  const held: HeldWrite[] = [];
  try {
    // One more write than the limit, each holding its slot until its body is complete: exactly
    // one of them (the last to arrive) is refused at once, without its body.
    for (let i = 0; i <= MAX_INFLIGHT; i++) {
      held.push(await _holdWrite(cluster.node(id).apiPort, `held-${i}`));
    }
    await waitFor(() => held.some((h) => h.answer !== null), {
      deadlineMs: 4_000,
      message: "an answer to one of the held writes",
    });
    const answered = held.filter((h) => h.answer !== null);
    assert.equal(answered.length, 1);
    const refused = answered[0]!.answer!;
    assert.equal(refused.status, 429, refused.body);
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.deepEqual(JSON.parse(refused.body), { error: "too many requests" });

    // The node is full: anything else is refused at once, but liveness and readiness answer.
    const write = await cluster.request(id, "POST", "/v1/data", { k: "refused", v: "x" });
    _assertRetryLater(write, 429, /^too many requests$/);
    _assertRetryLater(await cluster.request(id, "GET", "/v1/status"), 429, /^too many requests$/);
    assert.equal((await cluster.request(id, "GET", "/health")).status, 200);
    assert.equal((await cluster.request(id, "GET", "/ready")).status, 200);

    const rest = held.filter((h) => h.answer === null);
    const statuses = await Promise.all(rest.map(async (h) => (await h.finish()).status));
    assert.deepEqual(statuses, rest.map(() => 200));
  } finally {
    for (const h of held) h.close();
  }
  assert.equal((await cluster.request(id, "GET", "/v1/data/refused")).status, 404);
  await _assertServes(cluster, id, "after-inflight");
  assert.ok(cluster.isRunning(id));
});

Deno.test("past --max-pending-proposals the leader refuses writes with 503, applies none, and recovers", async () => {
  await using cluster = await startCluster({ size: 3, nodeFlags: PENDING_FLAGS });
  const leader = await cluster.waitForLeader(20_000);
  const followers = cluster.ids.filter((id) => id !== leader);
  const pending: Promise<HttpResult>[] = [];
  try {
    // Without its followers the leader cannot commit: its writes stay pending.
    const before = (await cluster.status(leader))?.last_index ?? NaN;
    for (const id of followers) cluster.pause(id);
    for (let i = 0; i < MAX_PENDING; i++) {
      pending.push(
        cluster.request(leader, "POST", "/v1/data", { k: `pending-${i}`, v: "x" }, {
          timeoutMs: 15_000,
        }),
      );
    }
    // Once the leader has all of them in its log, the next write is refused.
    await waitFor(async () => {
      const status = await cluster.status(leader);
      return status !== null && status.last_index >= before + MAX_PENDING;
    }, { deadlineMs: 5_000, message: `the ${MAX_PENDING} writes to reach the leader's log` });
    const refused = await cluster.request(leader, "POST", "/v1/data", { k: "overflow", v: "x" });
    _assertRetryLater(
      refused,
      503,
      new RegExp(
        `^the leader has ${MAX_PENDING} writes \\(\\d+ bytes\\) waiting to be applied; ` +
          `the limit is ${MAX_PENDING} writes .*; the write was not applied, retrying later is safe$`,
      ),
    );
    assert.equal((refused.json as { pending_proposals?: unknown }).pending_proposals, MAX_PENDING);
  } finally {
    for (const id of followers) if (cluster.isRunning(id)) cluster.resume(id);
  }
  // The pending writes commit once the followers are back.
  for (const result of await Promise.all(pending)) assert.equal(result.status, 200, result.text);
  const read = await cluster.request(leader, "GET", "/v1/data/overflow");
  assert.equal(read.status, 404, `the refused write was applied: ${read.text}`);
  await _assertServes(cluster, leader, "after-pending");
  assert.ok(cluster.ids.every((id) => cluster.isRunning(id)));
});

Deno.test({
  name:
    "a node out of file descriptors for connections keeps writing and snapshotting, and listens again once they close",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const root = await Deno.makeTempDir({ prefix: "raftkv-limits-" });
    const [apiPort = 0, rpcPort = 0] = freePorts(2);
    const configPath = join(root, "cluster.config.json");
    await writeClusterFile(
      configPath,
      buildClusterConfig({ apiPorts: [apiPort], rpcPorts: [rpcPort] }),
    );
    // The harness starts deno directly; this node needs a low open-file limit, set by sh.
    const child = new Deno.Command("sh", {
      args: [
        "-c",
        'ulimit -n 256 && exec "$@"',
        "sh",
        Deno.execPath(),
        "run",
        "--allow-all",
        fileURLToPath(new URL("../main.ts", import.meta.url)),
        "--id",
        "node-1",
        "--cluster-config-path",
        configPath,
        "--data-dir",
        join(root, "node-1"),
        "--listen-host",
        "127.0.0.1",
        // A snapshot every three entries: each one opens files while no descriptor is free.
        "--snapshot-threshold",
        "3",
      ],
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output: string[] = [];
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) output.push(text);
    };
    const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
    let exited: Deno.CommandStatus | null = null;
    const status = child.status.then((s) => exited = s);
    const api = `http://127.0.0.1:${apiPort}`;
    const conns: Deno.TcpConn[] = [];
    // One connection opened before the others and kept alive: writes go on over it.
    using kept = Deno.createHttpClient({ poolMaxIdlePerHost: 1 });
    const write = async (k: string) => {
      const put = await fetch(`${api}/v1/data`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ k, v: "1" }),
        client: kept,
        signal: AbortSignal.timeout(5000),
      });
      return `${put.status} ${await put.text()}`;
    };
    try {
      await waitFor(async () => (await httpRequest(`${api}/health`, "GET")).status === 200, {
        deadlineMs: 30_000,
        message: () => `the node to start: ${output.join("")}`,
      });
      assert.match(await write("before"), /^200 /);
      // More connections than the node has descriptors: it cannot accept them all.
      for (let i = 0; i < 400; i++) {
        try {
          conns.push(await Deno.connect({ hostname: "127.0.0.1", port: apiPort }));
        } catch {
          break; // The listen queue is full too.
        }
      }
      await waitFor(() => output.join("").includes("REST API stopped accepting connections"), {
        deadlineMs: 10_000,
        message: () => `the node to run out of descriptors: ${output.join("")}`,
      });
      // Out of descriptors, the node still writes its WAL, and its snapshots (with their
      // directory syncs, the log metadata and the listing that prunes old ones): it stopped
      // the node before the storage kept descriptors in reserve.
      const exhaustedAt = output.join("").length;
      for (let i = 0; i < 7; i++) {
        const answer = await write(`out-${i}`).catch((e) => `no answer: ${e}`);
        assert.match(
          answer,
          /^200 /,
          `write ${i} out of descriptors: ${answer}\n${output.join("")}`,
        );
      }
      await waitFor(() => /snapshot at index \d+/.test(output.join("").slice(exhaustedAt)), {
        deadlineMs: 10_000,
        message: () => `a snapshot while out of descriptors: ${output.join("")}`,
      });
      for (const conn of conns.splice(0)) conn.close();
      // Once they are closed, it listens again, and a write on a new connection works.
      await waitFor(async () => {
        using client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
        const put = await fetch(`${api}/v1/data`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ k: "a", v: "1" }),
          client,
          signal: AbortSignal.timeout(5000),
        });
        await put.body?.cancel();
        return put.status === 200;
      }, { deadlineMs: 15_000, message: () => `a write after the connections closed` });
      assert.equal(exited, null, `the node exited: ${output.join("")}`);
      assert.doesNotMatch(output.join(""), /fatal/);
      assert.match(output.join(""), /Too many open files/);
      assert.equal(output.join("").match(/REST API listening on/g)?.length, 2, output.join(""));
    } finally {
      for (const conn of conns) conn.close();
      if (exited === null) child.kill("SIGKILL");
      await status;
      await pumps;
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("past --quota-bytes the leader refuses writes that add data with 507, through a follower too; deletes make room, and a restart keeps the count", async () => {
  const QUOTA = 1000;
  await using cluster = await startCluster({
    size: 3,
    nodeFlags: ["--quota-bytes", String(QUOTA)],
  });
  const leader = await cluster.waitForLeader(20_000);
  const follower = cluster.ids.find((id) => id !== leader)!;
  // Keys "q0".."q9" with 98-byte values: 100 bytes each, 1000 in all: exactly the quota.
  for (let i = 0; i < 10; i++) {
    const put = await cluster.request(follower, "POST", "/v1/data", {
      k: `q${i}`,
      v: "v".repeat(98),
    });
    assert.equal(put.status, 200, put.text);
  }
  // One more byte is refused, through the follower as at the leader, and nothing is applied.
  for (const id of [follower, leader]) {
    const refused = await cluster.request(id, "POST", "/v1/data", { k: "over", v: "" });
    assert.equal(refused.status, 507, refused.text);
    assert.deepEqual(refused.json, {
      error: `the data would pass its quota of ${QUOTA} bytes: it holds ${QUOTA} bytes and this ` +
        "write adds 4; delete keys or revoke leases to make room",
      code: "quota_exceeded",
      data_bytes: QUOTA,
      quota_bytes: QUOTA,
      k: "over",
    });
  }
  assert.equal((await cluster.request(leader, "GET", "/v1/data/over")).status, 404);
  // A smaller value adds nothing; a delete frees its bytes for the next write.
  const smaller = await cluster.request(follower, "POST", "/v1/data", { k: "q0", v: "v" });
  assert.equal(smaller.status, 200, smaller.text);
  assert.equal((await cluster.request(follower, "DELETE", "/v1/data/q1")).status, 200);
  const fits = await cluster.request(follower, "POST", "/v1/data", {
    k: "over",
    v: "x".repeat(150),
  });
  assert.equal(fits.status, 200, fits.text);
  // A lease counts 64 bytes: with 957 held, a grant is refused, alone or with a put, and applies
  // nothing; once a delete made room, it is granted.
  const grant = () => cluster.request(follower, "POST", "/v1/leases", { ttl: "1h" });
  const leasedPut = await cluster.request(leader, "PUT", "/v1/data/t?ttl=1h", { v: "" });
  for (const refused of [await grant(), leasedPut]) {
    assert.equal(refused.status, 507, refused.text);
    const body = refused.json as { code: string; error: string; data_bytes: number };
    assert.equal(body.code, "quota_exceeded");
    assert.equal(body.data_bytes, QUOTA - 97 - 100 + 4 + 150);
    assert.match(body.error, /this write adds (64|65); delete keys or revoke leases/);
  }
  const none = await cluster.request(leader, "GET", "/v1/leases");
  assert.deepEqual((none.json as { leases: unknown[] }).leases, [], none.text);
  assert.equal((await cluster.request(follower, "DELETE", "/v1/data/q3")).status, 200);
  const granted = await grant();
  assert.equal(granted.status, 201, granted.text);
  const bytes = QUOTA - 97 - 100 + 4 + 150 - 100 + 64;

  // Every node counts the same bytes (they applied the same entries); the leader counted its
  // refusals. The metrics pass promtool.
  const metricsOf = async (id: string) => {
    const res = await cluster.request(id, "GET", "/metrics");
    assert.equal(res.status, 200);
    return res.text;
  };
  await waitFor(async () => {
    for (const id of cluster.ids) {
      if (sample(parseSamples(await metricsOf(id)), "raftkv_data_bytes") !== bytes) return false;
    }
    return true;
  }, { deadlineMs: 10_000, message: `every node to count ${bytes} bytes of data` });
  const text = await metricsOf(leader);
  const checked = await promtoolCheck(text);
  assert.ok(checked.ok, checked.output);
  const samples = parseSamples(text);
  assert.equal(sample(samples, "raftkv_quota_bytes"), QUOTA);
  assert.equal(sample(samples, 'raftkv_proposals_failed_total{reason="quota"}'), 4);

  // Restarted with a smaller quota, the node counts the data it recovered: past the new quota,
  // writes that add bytes are refused, deletes are not.
  for (const id of cluster.ids) assert.equal(await cluster.stop(id), 0);
  for (const id of cluster.ids) {
    await cluster.start(id, { flags: ["--quota-bytes", "500"], waitForHealth: false });
  }
  for (const id of cluster.ids) await cluster.waitForHealth(id);
  const again = await cluster.waitForLeader(20_000);
  await waitFor(
    async () =>
      (await cluster.request(again, "POST", "/v1/data", { k: "new", v: "" })).status === 507,
    {
      deadlineMs: 10_000,
      message: "the restarted leader to refuse a write past the smaller quota",
    },
  );
  assert.equal((await cluster.request(again, "DELETE", "/v1/data/q2")).status, 200);
  assert.equal(
    sample(parseSamples(await metricsOf(again)), "raftkv_data_bytes"),
    bytes - 100,
    "the count after a restart and a delete",
  );
});
