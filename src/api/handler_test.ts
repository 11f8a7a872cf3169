import assert from "node:assert/strict";
import http2 from "node:http2";
import {
  type Consistency,
  type KvBackend,
  type KvResult,
  type NodeStatus,
  NoSpaceError,
  NotAppliedError,
  NotLeaderError,
  OutcomeUnknownError,
  OverloadedError,
  type PlainCommand,
  type RangeAnswer,
  type RangeQuery,
  type ReadResult,
  StoppingError,
  UnsettledRetryError,
} from "../node/backend.ts";
import { KvStateMachine } from "../kv/state_machine.ts";
import { MetricsRegistry } from "../util/metrics.ts";
import { parseSamples, sample } from "../../testing/prometheus.ts";
import { AnswerReader, encodeBatch } from "./forward_batch.ts";
import {
  type ApiHandler,
  type ApiOptions,
  CALLER_HEADER,
  closeForwarder,
  createApiHandler,
  createForwarder,
  ForwardConnectError,
  FORWARDED_BY_HEADER,
  FORWARDED_TO_HEADER,
  type Forwarder,
  INDEX_HEADER,
  WWW_AUTHENTICATE,
} from "./handler.ts";

const LEADER_URL = "http://n2.test:7777";
/** The leader's peer URL, where forwards go. */
const LEADER_RPC = "http://n2.test:6666";
const MEMBERS = [
  { id: "n1", rpcUrl: "http://n1.test:6666", apiUrl: "http://n1.test:7777" },
  { id: "n2", rpcUrl: LEADER_RPC, apiUrl: "http://n2.test:7777" },
  { id: "n3", rpcUrl: "http://n3.test:6666", apiUrl: "http://n3.test:7777" },
];

/**
 * A backend on a real state machine, without Raft: writes apply at once. It records every call
 * and can be told to fail or hang.
 */
class FakeBackend implements KvBackend {
  readonly kv = new KvStateMachine();
  /** Reads and writes the state directly, like a Map (a write is a put at the next index). */
  readonly data = ((kv: KvStateMachine) => ({
    set: (k: string, v: string) => kv.apply(kv.appliedIndex + 1, { op: "put", key: k, value: v }),
    get: (k: string) => kv.get(k) ?? undefined,
    get size() {
      return kv.size;
    },
  }))(this.kv);
  /** One line per call, such as `"put a=1"` or `"get a linearizable"`. */
  readonly calls: string[] = [];
  /** The signal of each call, in order. */
  readonly signals: AbortSignal[] = [];
  /** The wall clock stamped into idempotent writes. */
  now = 1_000_000;
  /** Thrown by every read and write instead of doing it. */
  error: unknown = null;
  /** Makes reads and writes never settle, or settle only by rejecting when their signal aborts. */
  hang: false | "ignoring the signal" | "until aborted" = false;
  ready = true;
  leader: NodeStatus["leader"] = { id: "n1", api_url: "http://n1.test:7777" };
  /** The cluster id the status names, if any. */
  clusterId: string | undefined = undefined;
  /** What overloaded() answers. */
  overload: OverloadedError | null = null;
  /** Makes snapshot() stream this instead of the data. */
  snapshotSource: (() => ReadableStream<Uint8Array>) | null = null;
  #called = Promise.withResolvers<void>();

  /** Resolves once a read or write has been called. */
  get called(): Promise<void> {
    return this.#called.promise;
  }

  /** The index of the last write. */
  get index(): number {
    return this.kv.appliedIndex;
  }

  write(cmd: PlainCommand, signal: AbortSignal, idempotencyKey?: string | null): Promise<KvResult> {
    let line: string;
    switch (cmd.op) {
      case "put":
        line = `put ${cmd.key}=${cmd.value}`;
        break;
      case "delete":
        line = `delete ${cmd.key}`;
        break;
      case "delete_range":
        line = `delete_range ${JSON.stringify(cmd.range)}`;
        break;
      case "txn":
        line = `txn ${cmd.compare.length}/${cmd.success.length}/${cmd.failure.length}`;
        break;
      case "lease_grant":
        line = `lease_grant ${cmd.ttlMs}`;
        break;
      case "lease_revoke":
        line = `lease_revoke ${cmd.reason} ${cmd.ids.join(",")}`;
        break;
    }
    if (cmd.op === "put" && cmd.lease) line += ` lease=${JSON.stringify(cmd.lease)}`;
    if ("cas" in cmd) line += ` cas=${cmd.cas}`;
    if (idempotencyKey) line += ` idempotency-key=${idempotencyKey}`;
    return this.#op(line, signal, () =>
      this.kv.apply(
        this.kv.appliedIndex + 1,
        idempotencyKey
          ? {
            op: "idempotent",
            id: idempotencyKey,
            at: this.now,
            ttlMs: 60_000,
            maxKeys: 1000,
            maxBytes: 1 << 20,
            command: cmd,
          }
          : cmd,
      ));
  }

  read(key: string, consistency: Consistency, signal: AbortSignal): Promise<ReadResult> {
    return this.#op(`get ${key} ${consistency}`, signal, () => ({
      entry: this.kv.entry(key),
      index: this.kv.appliedIndex,
    }));
  }

  range(query: RangeQuery, consistency: Consistency, signal: AbortSignal): Promise<RangeAnswer> {
    return this.#op(`range ${JSON.stringify(query)} ${consistency}`, signal, () => ({
      ...this.kv.range(query),
      index: this.kv.appliedIndex,
    }));
  }

  status(): NodeStatus {
    return {
      id: "n1",
      role: this.leader?.id === "n1" ? "leader" : "follower",
      term: 3,
      leader: this.leader,
      commit_index: this.index,
      applied_index: this.index,
      last_index: this.index,
      members: [{ id: "n1", api_url: "http://n1.test:7777" }, { id: "n2", api_url: LEADER_URL }],
      alarms: [],
      ...(this.clusterId === undefined ? {} : { cluster_id: this.clusterId }),
    };
  }

  isReady(): boolean {
    return this.ready;
  }

  overloaded(): OverloadedError | null {
    return this.overload;
  }

  snapshot(): { index: number; stream: ReadableStream<Uint8Array> } {
    this.calls.push("snapshot");
    if (this.snapshotSource !== null) return { index: this.index, stream: this.snapshotSource() };
    const bytes = new TextEncoder().encode(JSON.stringify([...this.kv.entries()]));
    return { index: this.index, stream: ReadableStream.from([bytes]) };
  }

  /** Makes this node a follower of n2 that rejects everything with NotLeaderError. */
  followN2(): void {
    this.leader = { id: "n2", api_url: LEADER_URL };
    this.error = new NotLeaderError("n2");
  }

  #op<T>(call: string, signal: AbortSignal, run: () => T): Promise<T> {
    this.calls.push(call);
    this.signals.push(signal);
    this.#called.resolve();
    if (this.hang === "ignoring the signal") return new Promise<T>(() => {});
    if (this.hang === "until aborted") {
      return new Promise<T>((_, reject) => {
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
    }
    if (this.error !== null) return Promise.reject(this.error);
    return Promise.resolve(run());
  }
}

interface ForwardCall {
  url: string;
  method: string;
  headers: Headers;
  body: Uint8Array | null;
  signal: AbortSignal;
}

/** A forwarder that records each call and answers with `answer`. */
function fakeForwarder(
  answer: (init: RequestInit & { signal: AbortSignal }) => Promise<Response> | Response,
): { forward: Forwarder; calls: ForwardCall[] } {
  const calls: ForwardCall[] = [];
  const forward: Forwarder = async (url, init) => {
    const body = init.body === undefined || init.body === null
      ? null
      : new Uint8Array(await new Response(init.body).arrayBuffer());
    calls.push({
      url,
      method: init.method ?? "GET",
      headers: new Headers(init.headers),
      body,
      signal: init.signal,
    });
    return await answer(init);
  };
  return { forward, calls };
}

/** A forward that settles only when its signal aborts, as a leader that never answers. */
function neverAnswers(init: { signal: AbortSignal }): Promise<Response> {
  return new Promise((_, reject) => {
    init.signal.addEventListener("abort", () => reject(init.signal.reason), { once: true });
  });
}

function setup(options: Partial<ApiOptions> = {}) {
  const backend = new FakeBackend();
  const logs: string[] = [];
  const forwarder = fakeForwarder(() => {
    throw new Error("the test did not expect a forward");
  });
  const handler = createApiHandler(backend, {
    selfId: "n1",
    members: MEMBERS,
    forward: forwarder.forward,
    logError: (line) => logs.push(line),
    ...options,
  });
  const call = (
    method: string,
    path: string,
    body?: BodyInit,
    headers: Record<string, string> = body === undefined ? {} : {
      "content-type": "application/json",
    },
  ): Promise<Response> =>
    handler(new Request(`http://127.0.0.1:7777${path}`, { method, headers, body: body ?? null }));
  return { backend, logs, handler, forwarder, call };
}

/** `raftkv_http_refusals_total` of each limit: all 0. */
const NO_REFUSALS = {
  requests: 0,
  bytes: 0,
  client_unread: 0,
  forwards: 0,
  watchers: 0,
  blocking_reads: 0,
  backups: 0,
};

/** `raftkv_http_refusals_total` in `metrics`, by limit (each of {@linkcode NO_REFUSALS}). */
function refusalCounts(metrics: MetricsRegistry): Record<string, number> {
  const samples = parseSamples(metrics.render());
  return Object.fromEntries(
    Object.keys(NO_REFUSALS).map((limit) => [
      limit,
      sample(samples, `raftkv_http_refusals_total{limit="${limit}"}`),
    ]),
  );
}

/** Asserts a JSON answer with the given status and returns its body. */
async function expectJson(res: Response, status: number): Promise<Record<string, unknown>> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.equal(res.headers.get("content-type"), "application/json");
  return JSON.parse(text);
}

/** Asserts an error answer and returns its message. */
async function expectError(res: Response, status: number, error: RegExp): Promise<string> {
  const body = await expectJson(res, status);
  assert.equal(typeof body.error, "string");
  assert.match(body.error as string, error);
  return body.error as string;
}

const encoder = new TextEncoder();
const JSON_TYPE = { "content-type": "application/json" };

/** A request body stream that counts the chunks pulled from it and whether it was cancelled. */
function countingStream(chunk: Uint8Array, chunks = Infinity) {
  const state = { pulls: 0, cancelled: false };
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (state.pulls++ >= chunks) controller.close();
      else controller.enqueue(chunk.slice());
    },
    cancel() {
      state.cancelled = true;
    },
  }, { highWaterMark: 0 });
  return { stream, state };
}

Deno.test("the quick start sequence writes, reads, deletes and then misses a key", async () => {
  const { call, backend, logs } = setup();
  assert.deepEqual(
    await expectJson(await call("POST", "/v1/data", '{"k":"a","v":"1"}'), 200),
    { k: "a", v: "1", index: 1, create_index: 1, mod_index: 1, version: 1 },
  );
  assert.deepEqual(await expectJson(await call("GET", "/v1/data/a"), 200), {
    k: "a",
    v: "1",
    create_index: 1,
    mod_index: 1,
    version: 1,
  });
  assert.deepEqual(
    await expectJson(await call("DELETE", "/v1/data/a"), 200),
    { k: "a", deleted: true, index: 2 },
  );
  assert.deepEqual(
    await expectJson(await call("GET", "/v1/data/a"), 404),
    { error: "key not found", k: "a" },
  );
  assert.deepEqual(
    await expectJson(await call("DELETE", "/v1/data/a"), 200),
    { k: "a", deleted: false, index: 3 },
  );
  assert.deepEqual(backend.calls, [
    "put a=1",
    "get a linearizable",
    "delete a",
    "get a linearizable",
    "delete a",
  ]);
  assert.deepEqual(logs, []);
});

Deno.test("PUT /v1/data/{key} writes the value in the body under the key in the path", async () => {
  const { call, backend } = setup();
  assert.deepEqual(
    await expectJson(await call("PUT", "/v1/data/a%2Fb", '{"v":"2"}'), 200),
    { k: "a/b", v: "2", index: 1, create_index: 1, mod_index: 1, version: 1 },
  );
  assert.deepEqual(
    await expectJson(await call("PUT", "/v1/data/c", '{"k":"c","v":"3"}'), 200),
    { k: "c", v: "3", index: 2, create_index: 2, mod_index: 2, version: 1 },
  );
  await expectError(
    await call("PUT", "/v1/data/c", '{"k":"d","v":"3"}'),
    400,
    /^"k" in the body \("d"\) differs from the key in the path \("c"\)/,
  );
  await expectError(await call("PUT", "/v1/data/c", '{"k":"c"}'), 400, /^missing "v"/);
  assert.deepEqual(backend.calls, ["put a/b=2", "put c=3"]);
});

Deno.test("keys are percent-decoded from the path, including slashes, spaces and unicode", async () => {
  const { call, backend } = setup();
  for (const key of ["a/b", "hello world", "ключ", "🔑 x", "a?b#c%d&e=f", "+"]) {
    const written = await expectJson(
      await call("POST", "/v1/data", JSON.stringify({ k: key, v: `value of ${key}` })),
      200,
    );
    assert.equal(written.k, key);
    const path = `/v1/data/${encodeURIComponent(key)}`;
    const read = await expectJson(await call("GET", path), 200);
    assert.deepEqual(read, {
      k: key,
      v: `value of ${key}`,
      create_index: written.index,
      mod_index: written.index,
      version: 1,
    });
    assert.equal((await expectJson(await call("DELETE", path), 200)).deleted, true);
    assert.deepEqual(backend.calls.slice(-2), [`get ${key} linearizable`, `delete ${key}`]);
  }
  assert.equal(backend.data.size, 0);
});

Deno.test("an unencoded slash after /v1/data/ is part of the key", async () => {
  const { call, backend } = setup();
  backend.data.set("a/b/c", "1");
  assert.deepEqual(await expectJson(await call("GET", "/v1/data/a/b/c"), 200), {
    k: "a/b/c",
    v: "1",
    create_index: 1,
    mod_index: 1,
    version: 1,
  });
});

Deno.test("every malformed write is rejected with 400 before the backend is called", async () => {
  const cases: [body: BodyInit, error: RegExp][] = [
    ['{"k":"a",', /^the request body is not valid JSON \(.+\); expected a JSON object like/],
    ["", /^the request body is empty/],
    ['[{"k":"a","v":"1"}]', /must be a JSON object like \{"k":"a","v":"1"\}, not an array$/],
    ['"a"', /must be a JSON object .*, not a string \("a"\)$/],
    ["null", /must be a JSON object .*, not null$/],
    ['{"v":"1"}', /^missing "k" \(the key\)/],
    ['{"k":"a"}', /^missing "v" \(the value\)/],
    ['{"k":1,"v":"1"}', /^"k" \(the key\) must be a string, not a number \(1\)$/],
    ['{"k":"a","v":null}', /^"v" \(the value\) must be a string, not null$/],
    ['{"k":"a","v":{}}', /^"v" \(the value\) must be a string, not an object$/],
    ['{"k":"","v":"1"}', /^key must not be empty$/],
    ['{"k":"\\ud800","v":"1"}', /^"k" \(the key\) is not well-formed Unicode/],
    [new Uint8Array([0x7b, 0xff, 0x7d]), /^the request body is not valid UTF-8$/],
  ];
  for (const [body, error] of cases) {
    const { call, backend, logs } = setup();
    await expectError(await call("POST", "/v1/data", body), 400, error);
    assert.deepEqual(backend.calls, [], String(body));
    assert.deepEqual(logs, []);
  }
});

Deno.test("every malformed read or delete is rejected with 400 before the backend is called", async () => {
  const cases: [method: string, path: string, error: RegExp][] = [
    ["GET", "/v1/data/%E0%A4%A", /^the key in the path is not valid .*: "%E0%A4%A"$/],
    ["DELETE", "/v1/data/%E0%A4%A", /^the key in the path is not valid .*: "%E0%A4%A"$/],
    ["PUT", "/v1/data/%ZZ", /^the key in the path is not valid .*: "%ZZ"$/],
    ["GET", "/v1/data/%ED%A0%80", /^the key in the path is not valid/],
    ["GET", "/v1/data/", /^key must not be empty$/],
    ["DELETE", "/v1/data/", /^key must not be empty$/],
    ["GET", "/v1/data/a?consistency=strong", /^unknown consistency "strong"; expected/],
    ["GET", "/v1/data/a?consistency=", /^unknown consistency ""/],
  ];
  for (const [method, path, error] of cases) {
    const { call, backend } = setup();
    await expectError(await call(method, path), 400, error);
    assert.deepEqual(backend.calls, [], `${method} ${path}`);
  }
});

Deno.test("the consistency of a read is passed to the backend", async () => {
  const { call, backend } = setup();
  backend.data.set("a", "1");
  for (const consistency of ["linearizable", "stale", "lease"]) {
    await expectJson(await call("GET", `/v1/data/a?consistency=${consistency}`), 200);
  }
  assert.deepEqual(backend.calls, ["get a linearizable", "get a stale", "get a lease"]);
});

Deno.test("keys and values over their limit in UTF-8 bytes are rejected with 413", async () => {
  const { call, backend } = setup({ maxKeyBytes: 4, maxValueBytes: 5 });
  // "ééé" is 3 characters but 6 bytes.
  const tooLongKey = await expectJson(
    await call("POST", "/v1/data", JSON.stringify({ k: "ééé", v: "1" })),
    413,
  );
  assert.match(
    String(tooLongKey.error),
    /key is 6 bytes .*the limit is 4 bytes \(--max-key-bytes\)/,
  );
  assert.equal(tooLongKey.limit_bytes, 4);
  await expectError(
    await call("POST", "/v1/data", JSON.stringify({ k: "a", v: "€€" })),
    413,
    /^the value is 6 bytes \(UTF-8\); the limit is 5 bytes \(--max-value-bytes\)$/,
  );
  await expectError(
    await call("GET", `/v1/data/${encodeURIComponent("🔑🔑")}`),
    413,
    /key is 8 bytes .*the limit is 4 bytes/,
  );
  await expectError(await call("DELETE", "/v1/data/abcde"), 413, /limit is 4 bytes/);
  assert.deepEqual(backend.calls, []);
  // Exactly at the limits is fine.
  await expectJson(await call("POST", "/v1/data", JSON.stringify({ k: "éé", v: "€a" })), 200);
  assert.deepEqual(backend.calls, ["put éé=€a"]);
});

Deno.test("a body declared larger than maxBodyBytes is rejected with 413 without being read", async () => {
  const { handler, backend } = setup({ maxBodyBytes: 100 });
  const { stream, state } = countingStream(encoder.encode("x".repeat(50)));
  const res = await handler(
    new Request("http://127.0.0.1/v1/data", {
      method: "POST",
      headers: { "content-length": "101", "content-type": "application/json" },
      body: stream,
    }),
  );
  await expectError(res, 413, /^the request body is 101 bytes; the limit is 100 bytes/);
  assert.equal(state.pulls, 0);
  assert.deepEqual(backend.calls, []);
});

Deno.test("a streamed body is rejected with 413 as soon as it passes maxBodyBytes", async () => {
  const { handler, backend } = setup({ maxBodyBytes: 100 });
  const { stream, state } = countingStream(encoder.encode("x".repeat(30)));
  const res = await handler(
    new Request("http://127.0.0.1/v1/data", { method: "POST", headers: JSON_TYPE, body: stream }),
  );
  await expectError(
    res,
    413,
    /^the request body exceeds the limit of 100 bytes \(six times the sum of --max-key-bytes and --max-value-bytes, for JSON's escapes, plus 4 KiB\)$/,
  );
  assert.equal(state.pulls, 4); // 120 bytes: the fourth chunk crosses the limit
  assert.equal(state.cancelled, true);
  assert.deepEqual(backend.calls, []);
});

Deno.test("a streamed body within maxBodyBytes is read whole", async () => {
  const { handler, backend } = setup({ maxBodyBytes: 100 });
  const body = '{"k":"a","v":"' + "x".repeat(60) + '"}';
  const chunks = [body.slice(0, 10), body.slice(10, 40), body.slice(40)];
  const stream = ReadableStream.from(chunks.map((c) => encoder.encode(c)));
  const res = await handler(
    new Request("http://127.0.0.1/v1/data", { method: "POST", headers: JSON_TYPE, body: stream }),
  );
  assert.equal((await expectJson(res, 200)).v, "x".repeat(60));
  assert.deepEqual(backend.calls, [`put a=${"x".repeat(60)}`]);
});

Deno.test("the default maxBodyBytes leaves room for a key and value at their limits, however escaped", async () => {
  const { call } = setup({ maxKeyBytes: 10, maxValueBytes: 1000 });
  const body = JSON.stringify({ k: "k".repeat(10), v: "v".repeat(1000) });
  await expectJson(await call("POST", "/v1/data", body), 200);
  // Every byte of the value written as \u0022 (a quote): six times as long, still taken.
  const escaped = `{"k":"${"k".repeat(10)}","v":"${"\\u0022".repeat(1000)}"}`;
  await expectJson(await call("POST", "/v1/data", escaped), 200);
  await expectError(
    await call("POST", "/v1/data", "x".repeat(6 * (10 + 1000) + 4097)),
    413,
    /10156/,
  );
});

Deno.test("an unknown path is answered with 404 naming it", async () => {
  const { call } = setup();
  for (const path of ["/", "/v2/data/a", "/v1/status/x", "/v1", "/healthz"]) {
    await expectError(await call("GET", path), 404, new RegExp(`^no such path "${path}"`));
  }
});

Deno.test("a known path with the wrong method is answered with 405 and Allow", async () => {
  const { call, backend } = setup();
  const cases: [method: string, path: string, allow: string][] = [
    ["PATCH", "/v1/data/a", "GET, PUT, DELETE"],
    ["POST", "/v1/data/a", "GET, PUT, DELETE"],
    ["PUT", "/v1/data", "GET, POST, DELETE"],
    ["PATCH", "/v1/data", "GET, POST, DELETE"],
    ["GET", "/v1/txn", "POST"],
    ["POST", "/health", "GET, HEAD"],
    ["PUT", "/ready", "GET, HEAD"],
    ["DELETE", "/v1/status", "GET"],
  ];
  for (const [method, path, allow] of cases) {
    const res = await call(method, path);
    assert.equal(res.headers.get("allow"), allow, `${method} ${path}`);
    await expectError(res, 405, new RegExp(`^method "${method}" is not allowed on .*; allowed: `));
  }
  assert.deepEqual(backend.calls, []);
});

Deno.test("a node that knows no leader answers 503 with Retry-After", async () => {
  const { call, backend, forwarder, logs } = setup({ retryAfterSeconds: 2 });
  backend.leader = null;
  backend.error = new NotLeaderError("");
  for (
    const res of [
      await call("POST", "/v1/data", '{"k":"a","v":"1"}'),
      await call("GET", "/v1/data/a"),
    ]
  ) {
    assert.equal(res.headers.get("retry-after"), "2");
    await expectError(res, 503, /not the leader and knows no leader/);
  }
  assert.equal(forwarder.calls.length, 0);
  // Routine while a leader is elected: the node logs its role changes, not each request.
  assert.deepEqual(logs, []);
});

Deno.test("a node that thinks it is the leader after NotLeaderError does not forward to itself", async () => {
  const { call, backend, forwarder } = setup();
  backend.error = new NotLeaderError("");
  const res = await call("DELETE", "/v1/data/a");
  assert.equal(res.headers.get("retry-after"), "1");
  await expectError(res, 503, /knows no leader/);
  assert.equal(forwarder.calls.length, 0);
});

Deno.test("NotAppliedError and StoppingError are answered with 503 and Retry-After", async () => {
  for (const error of [new NotAppliedError(), new StoppingError()]) {
    const { call, backend } = setup();
    backend.error = error;
    const res = await call("POST", "/v1/data", '{"k":"a","v":"1"}');
    assert.equal(res.headers.get("retry-after"), "1");
    const message = await expectError(res, 503, /; retr/);
    assert.ok(message.startsWith(error.message), message);
  }
});

Deno.test("a write refused for a full disk is answered with 507 and the NOSPACE alarm", async () => {
  const { call, backend } = setup();
  backend.error = new NoSpaceError(undefined, ["n1"]);
  for (
    const res of [
      await call("POST", "/v1/data", '{"k":"a","v":"1"}'),
      await call("PUT", "/v1/data/a", '{"v":"1"}'),
      await call("DELETE", "/v1/data/a"),
    ]
  ) {
    assert.deepEqual(await expectJson(res, 507), {
      error: "no space left on device",
      alarm: "NOSPACE",
      members: ["n1"],
      k: "a",
    });
  }
  // Refused for the followers' disks: the answer names them.
  backend.error = new NoSpaceError("no space left on device: the disks of n2, n3 are full", [
    "n2",
    "n3",
  ]);
  assert.deepEqual(await expectJson(await call("POST", "/v1/data", '{"k":"b","v":"1"}'), 507), {
    error: "no space left on device: the disks of n2, n3 are full",
    alarm: "NOSPACE",
    members: ["n2", "n3"],
    k: "b",
  });
});

Deno.test("OutcomeUnknownError on a write is answered with 504", async () => {
  const { call, backend, logs } = setup();
  backend.error = new OutcomeUnknownError();
  for (
    const res of [
      await call("POST", "/v1/data", '{"k":"a","v":"1"}'),
      await call("DELETE", "/v1/data/a"),
    ]
  ) {
    const body = await expectJson(res, 504);
    assert.match(String(body.error), /may or may not have been applied/);
    assert.equal(body.outcome, "unknown");
    assert.equal(body.k, "a");
  }
  assert.equal(logs.length, 2);
  // A retry refused while an earlier attempt is in the log: unknown too, saying why.
  backend.error = new UnsettledRetryError(new NoSpaceError());
  const body = await expectJson(await call("POST", "/v1/data", '{"k":"a","v":"1"}'), 504);
  assert.match(String(body.error), /an earlier attempt .* \(no space left on device\)/);
  assert.equal(body.outcome, "unknown");
});

Deno.test("a write the backend does not finish within apiTimeoutMs is answered with 504", async () => {
  const { call, backend } = setup({ apiTimeoutMs: 20 });
  backend.hang = "ignoring the signal";
  const body = await expectJson(await call("POST", "/v1/data", '{"k":"a","v":"1"}'), 504);
  assert.equal(body.error, "timed out after 20ms; the write may or may not have been applied");
  assert.equal(body.outcome, "unknown");
  assert.equal(backend.signals[0]?.aborted, true);
});

Deno.test("a read the backend does not finish within apiTimeoutMs is answered with 504", async () => {
  const { call, backend } = setup({ apiTimeoutMs: 20 });
  backend.hang = "ignoring the signal";
  await expectError(
    await call("GET", "/v1/data/a?consistency=lease"),
    504,
    /^timed out after 20ms; a read changes nothing, so retrying is safe$/,
  );
});

Deno.test("a backend that rejects with its signal's reason at the deadline gets a 504", async () => {
  const { call, backend } = setup({ apiTimeoutMs: 20 });
  backend.hang = "until aborted";
  await expectError(
    await call("DELETE", "/v1/data/a"),
    504,
    /^timed out after 20ms; the write may or may not have been applied$/,
  );
});

Deno.test("the signal passed to the backend aborts when the client goes away", async () => {
  const { handler, backend, logs } = setup();
  backend.hang = "ignoring the signal";
  const client = new AbortController();
  const pending = handler(new Request("http://127.0.0.1/v1/data/a", { signal: client.signal }));
  await backend.called;
  assert.equal(backend.signals[0]?.aborted, false);
  client.abort();
  await expectError(await pending, 499, /^the client closed the request$/);
  assert.equal(backend.signals[0]?.aborted, true);
  assert.deepEqual(logs, []);
});

Deno.test("an unexpected exception is answered with 500 JSON and logged once", async () => {
  const { call, backend, logs } = setup();
  backend.error = new RangeError("boom in the backend");
  await expectError(await call("GET", "/v1/data/a"), 500, /^internal error/);
  assert.equal(logs.length, 1);
  assert.match(logs[0] ?? "", /GET \/v1\/data\/a -> 500: RangeError: boom in the backend/);
});

Deno.test("a follower forwards writes to the leader and relays its answer", async () => {
  const leader = fakeForwarder(() =>
    new Response('{"k":"a b","v":"1","index":7}', {
      status: 200,
      headers: { "content-type": "application/json", "x-other": "dropped" },
    })
  );
  const { call, backend } = setup({ forward: leader.forward });
  backend.followN2();
  backend.clusterId = "0123456789abcdef";
  const body = ' { "k" : "a b", "v":"1" } ';
  const res = await call("POST", "/v1/data?cas=0", body, { "content-type": "application/json" });
  assert.deepEqual(await expectJson(res, 200), { k: "a b", v: "1", index: 7 });
  assert.equal(res.headers.get(FORWARDED_TO_HEADER), "n2");
  assert.equal(res.headers.get("x-other"), null);
  const [sent] = leader.calls;
  assert.ok(sent !== undefined);
  assert.equal(sent.url, `${LEADER_RPC}/forward/v1/data?cas=0`);
  assert.equal(sent.method, "POST");
  assert.deepEqual(sent.body, encoder.encode(body));
  assert.equal(sent.headers.get("content-type"), "application/json");
  assert.equal(sent.headers.get(FORWARDED_BY_HEADER), "n1");
  // It names this node's cluster: the leader of another cluster refuses it.
  assert.equal(sent.headers.get("x-raftkv-cluster"), "0123456789abcdef");
  assert.equal(sent.headers.get(CALLER_HEADER), null, "an open API has no caller to pass on");
  assert.deepEqual(backend.calls, ["put a b=1 cas=0"]);
  assert.equal(backend.data.size, 0);
});

Deno.test("a follower forwards reads and deletes with the encoded path and query", async () => {
  const leader = fakeForwarder(() => new Response("{}", { status: 200 }));
  const { call, backend } = setup({ forward: leader.forward });
  backend.followN2();
  await call("GET", "/v1/data/a%2Fb%20c?consistency=lease");
  await call("DELETE", "/v1/data/%F0%9F%94%91");
  await call("PUT", "/v1/data/k", '{"v":"2"}', {
    "content-type": "Application/JSON; charset=UTF-8",
  });
  assert.deepEqual(
    leader.calls.map((c) => [c.method, c.url, c.body && new TextDecoder().decode(c.body)]),
    [
      ["GET", `${LEADER_RPC}/forward/v1/data/a%2Fb%20c?consistency=lease`, null],
      ["DELETE", `${LEADER_RPC}/forward/v1/data/%F0%9F%94%91`, null],
      ["PUT", `${LEADER_RPC}/forward/v1/data/k`, '{"v":"2"}'],
    ],
  );
  assert.equal(leader.calls[2]?.headers.get("content-type"), "Application/JSON; charset=UTF-8");
  assert.ok(leader.calls.every((c) => c.headers.get(FORWARDED_BY_HEADER) === "n1"));
});

Deno.test("a remembered 404 for a missing lease is replayed under its Idempotency-Key with the replay header", async () => {
  const { call } = setup();
  const writes: [string, string, string][] = [
    ["PUT", "/v1/data/h?lease=12345", '{"v":"8"}'],
    ["POST", "/v1/txn", '{"success":[{"op":"put","k":"g","v":"7","lease":12345}]}'],
  ];
  for (const [method, path, body] of writes) {
    const headers = { "content-type": "application/json", "idempotency-key": `req-404-${method}` };
    const first = await call(method, path, body, headers);
    assert.equal(first.headers.get("idempotent-replayed"), null, path);
    const said = await expectJson(first, 404);
    const again = await call(method, path, body, headers);
    assert.equal(again.headers.get("idempotent-replayed"), "true", path);
    assert.deepEqual(await expectJson(again, 404), said, path);
  }
});

Deno.test("a follower forwards the Idempotency-Key, ranges and transactions, and relays the index and replay headers", async () => {
  const leader = fakeForwarder(() =>
    new Response('{"k":"a","v":"1","index":7}', {
      status: 200,
      headers: {
        "content-type": "application/json",
        "x-raftkv-index": "9",
        "idempotent-replayed": "true",
      },
    })
  );
  const { call, backend } = setup({ forward: leader.forward });
  backend.followN2();
  const res = await call("PUT", "/v1/data/a?cas=0", '{"v":"1"}', {
    "content-type": "application/json",
    "idempotency-key": "req-42",
  });
  assert.equal(res.headers.get("x-raftkv-index"), "9", "the leader's index, not this node's");
  assert.equal(res.headers.get("idempotent-replayed"), "true");
  await expectJson(res, 200);
  await call("GET", "/v1/data?prefix=a&limit=5");
  await call("DELETE", "/v1/data?prefix=a", undefined, { "idempotency-key": "req-43" });
  await call("POST", "/v1/txn", "{}", { "content-type": "application/json" });
  assert.deepEqual(
    leader.calls.map((c) => [c.method, c.url, c.headers.get("idempotency-key")]),
    [
      ["PUT", `${LEADER_RPC}/forward/v1/data/a?cas=0`, "req-42"],
      ["GET", `${LEADER_RPC}/forward/v1/data?prefix=a&limit=5`, null],
      ["DELETE", `${LEADER_RPC}/forward/v1/data?prefix=a`, "req-43"],
      ["POST", `${LEADER_RPC}/forward/v1/txn`, null],
    ],
  );
});

Deno.test("a follower relays the leader's errors with status, Retry-After and body", async () => {
  const leader = fakeForwarder(() =>
    new Response('{"error":"the node is shutting down"}', {
      status: 503,
      headers: { "content-type": "application/json", "retry-after": "3" },
    })
  );
  const { call, backend, logs } = setup({ forward: leader.forward });
  backend.followN2();
  const res = await call("GET", "/v1/data/a");
  assert.equal(res.headers.get("retry-after"), "3");
  await expectError(res, 503, /^the node is shutting down$/);
  assert.equal(logs.length, 1);
  assert.match(logs[0] ?? "", /-> 503: relayed from the leader "n2"/);
});

Deno.test("a request that was already forwarded is not forwarded again", async () => {
  const leader = fakeForwarder(() => new Response("{}"));
  const { call, handler, backend } = setup({ forward: leader.forward });
  backend.followN2();
  const res = await handler.forwarded(
    forwardedRequest("/forward/v1/data", { ...JSON_TYPE, [FORWARDED_BY_HEADER]: "n3" }, {
      method: "POST",
      body: '{"k":"a","v":"1"}',
    }),
    null,
  );
  assert.equal(res.headers.get("retry-after"), "1");
  await expectError(res, 503, /forwarded here by "n3" .*the leader changed; retry$/);
  assert.equal(leader.calls.length, 0);
  // A client that sends the members' headers to the API port is refused, not taken for a member.
  for (const header of [FORWARDED_BY_HEADER, CALLER_HEADER]) {
    const sent = await call("POST", "/v1/data", '{"k":"a","v":"1"}', {
      ...JSON_TYPE,
      [header]: "n3",
    });
    await expectError(sent, 400, new RegExp(`^${header} is a header between members`));
  }
  assert.equal(leader.calls.length, 0);
});

Deno.test("a forward the leader does not answer within apiFwdTimeoutMs is answered with 504", async () => {
  const leader = fakeForwarder(neverAnswers);
  const { call, backend } = setup({ forward: leader.forward, apiFwdTimeoutMs: 20 });
  backend.followN2();
  const write = await expectJson(await call("POST", "/v1/data", '{"k":"a","v":"1"}'), 504);
  assert.match(String(write.error), /did not answer within 20ms; the write may or may not have/);
  assert.equal(write.outcome, "unknown");
  assert.equal(write.leader, "n2");
  await expectError(await call("GET", "/v1/data/a"), 504, /within 20ms; a read changes nothing/);
  assert.ok(leader.calls.every((c) => c.signal.aborted));
});

Deno.test("a forward that cannot connect to the leader is answered with 503 and Retry-After", async () => {
  const leader = fakeForwarder(() => {
    throw new ForwardConnectError("tcp connect error: Connection refused (os error 111)");
  });
  const { call, backend } = setup({ forward: leader.forward });
  backend.followN2();
  for (
    const res of [
      await call("POST", "/v1/data", '{"k":"a","v":"1"}'),
      await call("GET", "/v1/data/a"),
    ]
  ) {
    assert.equal(res.headers.get("retry-after"), "1");
    await expectError(
      res,
      503,
      /^the leader "n2" at http:\/\/n2\.test:6666 unreachable: tcp connect error: Connection refused/,
    );
  }
});

Deno.test("a leader that is not a known member, or whose peer URL is not a URL, is answered with 503, without a forward", async () => {
  const leader = fakeForwarder(() => new Response("{}"));
  const { call, backend } = setup({
    forward: leader.forward,
    members: [...MEMBERS, { id: "n4", rpcUrl: "n4:6666 oops", apiUrl: "http://n4.test:7777" }],
  });
  backend.followN2();
  backend.leader = { id: "n9", api_url: "http://n9.test:7777" };
  const res = await call("POST", "/v1/data", '{"k":"a","v":"1"}');
  assert.equal(res.headers.get("retry-after"), "1");
  await expectError(res, 503, /^cannot forward to the leader "n9": it is not a member this node/);
  backend.leader = { id: "n4", api_url: "http://n4.test:7777" };
  await expectError(
    await call("GET", "/v1/data/a"),
    503,
    /^cannot forward to the leader "n4": its peer URL "n4:6666 oops" is not an http\(s\) URL$/,
  );
  assert.equal(leader.calls.length, 0);
});

Deno.test("a forwarded write that fails after it may have been sent is answered with 502", async () => {
  const leader = fakeForwarder(() => {
    throw new TypeError("connection reset");
  });
  const { call, backend } = setup({ forward: leader.forward });
  backend.followN2();
  const body = await expectJson(await call("DELETE", "/v1/data/a"), 502);
  assert.match(
    String(body.error),
    /\(connection reset\); the write may or may not have been applied$/,
  );
  assert.equal(body.outcome, "unknown");
  // A read changes nothing, so the same failure is a plain "retry".
  await expectError(await call("GET", "/v1/data/a"), 503, /unreachable: connection reset$/);
});

Deno.test("GET /v1/status answers the backend's status", async () => {
  const { call, backend } = setup();
  backend.followN2();
  assert.deepEqual(await expectJson(await call("GET", "/v1/status"), 200), {
    id: "n1",
    role: "follower",
    term: 3,
    leader: { id: "n2", api_url: LEADER_URL },
    commit_index: 0,
    applied_index: 0,
    last_index: 0,
    members: [{ id: "n1", api_url: "http://n1.test:7777" }, { id: "n2", api_url: LEADER_URL }],
    alarms: [],
  });
});

Deno.test("GET /health answers ok even when the node is not ready", async () => {
  const { call, backend } = setup();
  backend.ready = false;
  assert.deepEqual(await expectJson(await call("GET", "/health"), 200), { status: "ok" });
  assert.equal((await call("HEAD", "/health")).status, 200);
  // The probes need no token, and tell nothing of the log (no applied index).
  for (const path of ["/health", "/ready"]) {
    assert.equal((await call("GET", path)).headers.get(INDEX_HEADER), null, path);
  }
  assert.notEqual((await call("GET", "/v1/status")).headers.get(INDEX_HEADER), null);
});

Deno.test("GET /ready answers 200 when ready and 503 otherwise, without logging", async () => {
  const { call, backend, logs } = setup();
  assert.deepEqual(await expectJson(await call("GET", "/ready"), 200), { ready: true });
  backend.ready = false;
  const body = await expectJson(await call("GET", "/ready"), 503);
  assert.equal((await call("HEAD", "/ready")).status, 503);
  assert.equal(body.ready, false);
  assert.match(String(body.error), /^not ready/);
  assert.deepEqual(logs, []);
});

Deno.test("createApiHandler() rejects options out of range", () => {
  const backend = new FakeBackend();
  assert.throws(() => createApiHandler(backend, { selfId: "" }), RangeError);
  for (
    const bad of [
      { maxKeyBytes: 0 },
      { maxValueBytes: -1 },
      { maxBodyBytes: 1.5 },
      { apiTimeoutMs: Number.NaN },
      { apiFwdTimeoutMs: 0 },
      { retryAfterSeconds: -1 },
      { maxInflightRequests: 0 },
      { maxInflightBytes: 0 },
      { maxForwardedRequests: 1.5 },
      { maxConcurrentBackups: -1 },
      { backupTimeoutMs: 0 },
    ]
  ) {
    assert.throws(() => createApiHandler(backend, { selfId: "n1", ...bad }), RangeError);
  }
});

Deno.test("a follower forwards to a real leader's peer port over cleartext HTTP/2 on one connection", async () => {
  const leaderBackend = new FakeBackend();
  leaderBackend.leader = { id: "n2", api_url: "unused" };
  const members = [{ id: "n1", rpcUrl: "http://127.0.0.1:1", apiUrl: "http://n1.test:7777" }];
  const leaderHandler = createApiHandler(leaderBackend, { selfId: "n2", members });
  const seen: {
    path: string;
    forwardedBy: string | null;
    length: string | null;
    port: number;
  }[] = [];
  // Stands in for the leader's peer server, which hands /forward/ paths to `forwarded`.
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) => {
    seen.push({
      path: new URL(req.url).pathname,
      forwardedBy: req.headers.get(FORWARDED_BY_HEADER),
      length: req.headers.get("content-length"),
      port: info.remoteAddr.port,
    });
    return leaderHandler.forwarded(req, null);
  });
  try {
    const follower = new FakeBackend();
    follower.leader = { id: "n2", api_url: "http://unused.test:1" };
    follower.error = new NotLeaderError("n2");
    const handler = createApiHandler(follower, {
      selfId: "n1",
      members: [...members, {
        id: "n2",
        rpcUrl: `http://127.0.0.1:${server.addr.port}/`,
        apiUrl: "http://n2.test:7777",
      }],
    }); // the default forwarder
    const call = (method: string, path: string, body?: string) =>
      handler(
        new Request(`http://127.0.0.1:1/v1/data${path}`, {
          method,
          headers: body === undefined ? {} : JSON_TYPE,
          body: body ?? null,
        }),
      );

    assert.deepEqual(await expectJson(await call("POST", "", '{"k":"a/b","v":"1"}'), 200), {
      k: "a/b",
      v: "1",
      index: 1,
      create_index: 1,
      mod_index: 1,
      version: 1,
    });
    assert.deepEqual(await expectJson(await call("GET", "/a%2Fb?consistency=lease"), 200), {
      k: "a/b",
      v: "1",
      create_index: 1,
      mod_index: 1,
      version: 1,
    });
    assert.deepEqual(await expectJson(await call("DELETE", "/a%2Fb"), 200), {
      k: "a/b",
      deleted: true,
      index: 2,
    });
    const missing = await call("GET", "/a%2Fb");
    assert.equal(missing.headers.get(FORWARDED_TO_HEADER), "n2");
    await expectJson(missing, 404);

    assert.deepEqual(leaderBackend.calls, [
      "put a/b=1",
      "get a/b lease",
      "delete a/b",
      "get a/b linearizable",
    ]);
    assert.deepEqual(seen.map((s) => s.path), [
      "/forward/v1/data",
      "/forward/v1/data/a%2Fb",
      "/forward/v1/data/a%2Fb",
      "/forward/v1/data/a%2Fb",
    ]);
    assert.ok(seen.every((s) => s.forwardedBy === "n1"));
    // The body's length is declared, or the leader would count it at its largest against
    // maxInflightBytes (and refuse a burst of forwards with 429).
    assert.equal(seen[0]?.length, String('{"k":"a/b","v":"1"}'.length));
    assert.equal(new Set(seen.map((s) => s.port)).size, 1, "one kept-alive connection");
  } finally {
    closeForwarder();
    await server.shutdown();
  }
});

/**
 * A leader's peer port (a real HTTP/2 server handing requests to the leader's `forwarded`, with
 * a real state machine) and a follower forwarding to it with `createForwarder({ batch })`.
 * `batchPath` answers requests to /forward/batch instead, as a leader of an older version does.
 */
function forwardingPair(batch: boolean, batchPath?: () => Response) {
  const leaderBackend = new FakeBackend();
  leaderBackend.leader = { id: "n2", api_url: "unused" };
  const members = [{ id: "n1", rpcUrl: "http://127.0.0.1:1", apiUrl: "http://n1.test:7777" }];
  const leaderHandler = createApiHandler(leaderBackend, {
    selfId: "n2",
    members,
    tokens: [{ name: "alice", role: "write", token: "t-alice" }],
  });
  const seen: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    seen.push(path);
    if (batchPath !== undefined && path === "/forward/batch") return batchPath();
    return leaderHandler.forwarded(req, null);
  });
  const follower = new FakeBackend();
  follower.leader = { id: "n2", api_url: "http://unused.test:1" };
  follower.error = new NotLeaderError("n2");
  const client = createForwarder({ batch });
  const handler = createApiHandler(follower, {
    selfId: "n1",
    forward: client.forward,
    logError: () => {},
    tokens: [{ name: "alice", role: "write", token: "t-alice" }],
    members: [...members, {
      id: "n2",
      rpcUrl: `http://127.0.0.1:${server.addr.port}`,
      apiUrl: "http://n2.test:7777",
    }],
  });
  const call = (method: string, path: string, body?: string, headers = {}) =>
    handler(
      new Request(`http://127.0.0.1:1${path}`, {
        method,
        headers: {
          authorization: "Bearer t-alice",
          ...(body === undefined ? {} : JSON_TYPE),
          ...headers,
        },
        body: body ?? null,
      }),
    );
  return {
    call,
    seen,
    leaderBackend,
    async [Symbol.asyncDispose]() {
      client.close();
      await server.shutdown();
    },
  };
}

/** A request's answer as the client sees it: status, the relayed headers and the body. */
async function answerOf(res: Response) {
  const headers = ["content-type", "retry-after", "idempotent-replayed", FORWARDED_TO_HEADER]
    .map((name) => [name, res.headers.get(name)]);
  return { status: res.status, headers, body: await res.text() };
}

/** Writes of every kind, each on its own keys, and their expected status. */
const BATCHED_WRITES: [string, string, string | undefined, Record<string, string>, number][] = [
  ["PUT", "/v1/data/a", '{"v":"1"}', {}, 200],
  ["PUT", "/v1/data/b?cas=0", '{"v":"2"}', {}, 200],
  ["PUT", "/v1/data/c?cas=5", '{"v":"3"}', {}, 412],
  ["DELETE", "/v1/data/d?cas=3", undefined, {}, 412],
  ["DELETE", "/v1/data/e", undefined, {}, 200],
  ["POST", "/v1/data", '{"k":"f","v":"6"}', { "idempotency-key": "req-f" }, 200],
  [
    "POST",
    "/v1/txn",
    '{"compare":[{"k":"g","version":0}],"success":[{"op":"put","k":"g","v":"7"}],"failure":[]}',
    {},
    200,
  ],
  ["PUT", "/v1/data/h?lease=12345", '{"v":"8"}', {}, 404],
];

Deno.test("writes a follower forwards at the same time travel as one batch and get the answers of forwards of their own", async () => {
  const answers: Record<string, unknown>[][] = [];
  for (const batch of [false, true]) {
    await using pair = forwardingPair(batch);
    // All at once: the batching forwarder sends what arrives in one turn together.
    const results = await Promise.all(
      BATCHED_WRITES.map(([method, path, body, headers]) => pair.call(method, path, body, headers)),
    );
    const got = [];
    for (const res of results) got.push(await answerOf(res));
    assert.deepEqual(
      got.map((a) => a.status),
      BATCHED_WRITES.map((w) => w[4]),
      JSON.stringify(got),
    );
    // The same idempotent write again is a replay of the first.
    const again = await answerOf(
      await pair.call("POST", "/v1/data", '{"k":"f","v":"6"}', { "idempotency-key": "req-f" }),
    );
    assert.equal(again.status, 200);
    assert.deepEqual(again.headers.find(([n]) => n === "idempotent-replayed"), [
      "idempotent-replayed",
      "true",
    ]);
    got.push(again);
    answers.push(
      // The indexes depend on the order in which the leader applied them, which a batch need not
      // keep: compare everything else.
      got.map((a) => ({ ...a, body: a.body.replace(/"(\w*index)":\d+/g, '"$1":0') })),
    );
    if (batch) {
      assert.ok(pair.seen.every((p) => p === "/forward/batch"), pair.seen.join(" "));
      assert.ok(pair.seen.length < BATCHED_WRITES.length + 1, pair.seen.join(" "));
    } else {
      assert.ok(pair.seen.every((p) => p !== "/forward/batch"), pair.seen.join(" "));
    }
    assert.equal(pair.leaderBackend.kv.get("a"), "1");
    assert.equal(pair.leaderBackend.kv.get("g"), "7");
  }
  assert.deepEqual(answers[1], answers[0]);
});

Deno.test("a follower sends writes one by one to a leader that does not know batches", async () => {
  await using pair = forwardingPair(
    true,
    () => new Response('{"error":"no such forwarding path"}', { status: 404 }),
  );
  const first = await Promise.all([
    pair.call("PUT", "/v1/data/a", '{"v":"1"}'),
    pair.call("PUT", "/v1/data/b?cas=7", '{"v":"2"}'),
  ]);
  assert.deepEqual(first.map((r) => r.status), [200, 412]);
  await Promise.all(first.map((r) => r.body?.cancel()));
  const later = await pair.call("PUT", "/v1/data/c", '{"v":"3"}');
  await expectJson(later, 200);
  assert.deepEqual(pair.seen, [
    "/forward/batch",
    "/forward/v1/data/a",
    "/forward/v1/data/b",
    "/forward/v1/data/c",
  ]);
  assert.equal(pair.leaderBackend.kv.get("a"), "1");
  assert.equal(pair.leaderBackend.kv.get("b"), null);
});

Deno.test("a leader answers every request of a batch it refuses as a whole with that refusal", async () => {
  await using pair = forwardingPair(
    true,
    () =>
      new Response('{"error":"shutting down"}', {
        status: 503,
        headers: { "content-type": "application/json", "retry-after": "1" },
      }),
  );
  const answers = await Promise.all([
    pair.call("PUT", "/v1/data/a", '{"v":"1"}'),
    pair.call("PUT", "/v1/data/b", '{"v":"2"}'),
  ]);
  for (const res of answers) {
    assert.equal(res.headers.get("retry-after"), "1");
    assert.deepEqual(await expectJson(res, 503), { error: "shutting down" });
  }
  assert.equal(pair.leaderBackend.kv.size, 0);
});

Deno.test("the default forwarder reaches a leader on a port fetch refuses (6665-6669)", async () => {
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve(
      { hostname: "127.0.0.1", port: 6669, onListen() {} },
      () => Response.json({ k: "a", v: "1" }),
    );
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) return; // someone else has the port: nothing to learn
    throw e;
  }
  try {
    const backend = new FakeBackend();
    backend.followN2();
    const handler = createApiHandler(backend, {
      selfId: "n1",
      members: [{ id: "n2", rpcUrl: "http://127.0.0.1:6669", apiUrl: "http://n2.test:7777" }],
    });
    const res = await handler(new Request("http://127.0.0.1/v1/data/a"));
    assert.deepEqual(await expectJson(res, 200), { k: "a", v: "1" });
  } finally {
    closeForwarder();
    await server.shutdown();
  }
});

Deno.test("the default forwarder reports a leader that refuses connections as 503: nothing was sent", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const backend = new FakeBackend();
  backend.followN2();
  const logs: string[] = [];
  const handler = createApiHandler(backend, {
    selfId: "n1",
    members: [{ id: "n2", rpcUrl: `http://127.0.0.1:${port}`, apiUrl: "http://n2.test:7777" }],
    logError: (l) => logs.push(l),
  });
  try {
    const read = await handler(new Request("http://127.0.0.1/v1/data/a"));
    assert.equal(read.headers.get("retry-after"), "1");
    await expectError(read, 503, /^the leader "n2" at http:\/\/127\.0\.0\.1:\d+ unreachable: /);
    // No connection came up, so the write was never sent: definitely not applied.
    const write = await handler(
      new Request("http://127.0.0.1/v1/data", {
        method: "POST",
        headers: JSON_TYPE,
        body: '{"k":"a","v":"1"}',
      }),
    );
    assert.equal(write.headers.get("retry-after"), "1");
    await expectError(write, 503, /unreachable: .*(refused|ECONNREFUSED)/i);
    assert.equal(logs.length, 2);
  } finally {
    closeForwarder();
  }
});

Deno.test("the default forwarder calls a write unknown only once the leader's HTTP/2 layer took the connection", async () => {
  // A TCP server that reads what arrives and hangs up: no HTTP/2 greeting, so nothing was sent.
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const hangUp = (async () => {
    for await (const conn of silent) {
      await conn.read(new Uint8Array(4096)).catch(() => null);
      conn.close();
    }
  })();
  // An HTTP/2 server that takes the request and then drops the connection: it may have acted.
  const dropping = http2.createServer();
  dropping.on("stream", (stream) => stream.session?.destroy());
  const droppingPort = await new Promise<number>((resolve) => {
    dropping.listen(0, "127.0.0.1", () => resolve((dropping.address() as { port: number }).port));
  });
  const backend = new FakeBackend();
  backend.followN2();
  const write = (port: number) =>
    createApiHandler(backend, {
      selfId: "n1",
      members: [{ id: "n2", rpcUrl: `http://127.0.0.1:${port}`, apiUrl: "http://n2.test:7777" }],
      logError: () => {},
    })(
      new Request("http://127.0.0.1/v1/data", {
        method: "POST",
        headers: JSON_TYPE,
        body: '{"k":"a","v":"1"}',
      }),
    );
  try {
    const refused = await write(silent.addr.port);
    assert.equal(refused.headers.get("retry-after"), "1");
    await expectError(refused, 503, /unreachable: the connection closed before the peer's HTTP\/2/);
    const body = await expectJson(await write(droppingPort), 502);
    assert.equal(body.outcome, "unknown");
  } finally {
    closeForwarder();
    silent.close();
    await hangUp.catch(() => {});
    await new Promise<void>((resolve) => dropping.close(() => resolve()));
  }
});

Deno.test("GET /v1/snapshot streams the backend's snapshot as a download", async () => {
  const backend = new FakeBackend();
  for (let i = 1; i < 9; i++) backend.kv.advance(i);
  backend.data.set("a", "1");
  const handler = createApiHandler(backend, { selfId: "n1" });
  const res = await handler(new Request("http://n1.test:7777/v1/snapshot"));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/octet-stream");
  assert.equal(res.headers.get("x-raftkv-snapshot-index"), "9");
  assert.match(res.headers.get("content-disposition")!, /raftkv-9\.snap/);
  assert.deepEqual(await res.json(), [
    { key: "a", value: "1", createIndex: 9, modIndex: 9, version: 1 },
  ]);
  const post = await handler(new Request("http://n1.test:7777/v1/snapshot", { method: "POST" }));
  assert.equal(post.status, 405);
  await post.body?.cancel();
});

Deno.test("a write without Content-Type: application/json is refused with 415 before its body is read", async () => {
  const refused: (string | null)[] = [
    null,
    "text/plain",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "text/json",
    "application/jsonx",
    "application/json, text/plain",
    "",
  ];
  for (const type of refused) {
    for (const [method, path] of [["POST", "/v1/data"], ["PUT", "/v1/data/a"]] as const) {
      const { handler, backend, logs } = setup();
      const { stream, state } = countingStream(encoder.encode('{"k":"a","v":"1"}'), 1);
      const headers: Record<string, string> = type === null ? {} : { "content-type": type };
      const res = await handler(
        new Request(`http://127.0.0.1${path}`, { method, headers, body: stream }),
      );
      const body = await expectJson(res, 415);
      assert.match(String(body.error), /Content-Type: application\/json/, String(type));
      assert.equal(body.content_type, type);
      assert.equal(state.pulls, 0, `${method} with ${type}: the body was read`);
      assert.deepEqual(backend.calls, []);
      assert.deepEqual(logs, []);
    }
  }
});

Deno.test("application/json is accepted in any case and with parameters, and DELETE needs no type", async () => {
  const { call, backend } = setup();
  const accepted = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON;charset=UTF-8",
    " Application/Json ; foo=bar",
  ];
  for (const [i, type] of accepted.entries()) {
    const res = await call("POST", "/v1/data", `{"k":"k${i}","v":"1"}`, { "content-type": type });
    await expectJson(res, 200);
  }
  await expectJson(await call("PUT", "/v1/data/p", '{"v":"2"}'), 200);
  await expectJson(await call("DELETE", "/v1/data/p", undefined, {}), 200);
  assert.deepEqual(backend.calls, [
    "put k0=1",
    "put k1=1",
    "put k2=1",
    "put k3=1",
    "put p=2",
    "delete p",
  ]);
});

Deno.test("past maxInflightRequests a request is answered 429 at once, unread, and /health still answers", async () => {
  const { handler, backend, logs } = setup({ maxInflightRequests: 2 });
  backend.hang = "until aborted";
  const clients = [new AbortController(), new AbortController()];
  const hanging = clients.map((client, i) =>
    handler(
      new Request(`http://127.0.0.1/v1/data/k${i}`, { method: "GET", signal: client.signal }),
    )
  );
  await backend.called;
  const { stream, state } = countingStream(encoder.encode('{"k":"a","v":"1"}'), 1);
  const refused = await handler(
    new Request("http://127.0.0.1/v1/data", { method: "POST", headers: JSON_TYPE, body: stream }),
  );
  assert.equal(refused.headers.get("retry-after"), "1");
  assert.deepEqual(await expectJson(refused, 429), { error: "too many requests" });
  assert.equal(state.pulls, 0);
  await expectJson(await handler(new Request("http://127.0.0.1/health")), 200);
  await expectJson(await handler(new Request("http://127.0.0.1/ready")), 200);
  await expectJson(await handler(new Request("http://127.0.0.1/v1/status")), 429);

  // Once the requests in flight end, the node serves again.
  for (const client of clients) client.abort();
  for (const res of await Promise.all(hanging)) await expectJson(res, 499);
  backend.hang = false;
  await expectJson(await handler(new Request("http://127.0.0.1/v1/status")), 200);
  assert.deepEqual(backend.calls, ["get k0 linearizable", "get k1 linearizable"]);
  assert.deepEqual(logs, []);
});

Deno.test("past maxInflightBytes of declared bodies a request is answered 429 at once, unread", async () => {
  const { handler, backend } = setup({ maxInflightBytes: 100 });
  backend.hang = "until aborted";
  const client = new AbortController();
  const body = JSON.stringify({ k: "a", v: "x".repeat(50) }); // 65 bytes
  const first = handler(
    new Request("http://127.0.0.1/v1/data", {
      method: "POST",
      headers: { ...JSON_TYPE, "content-length": String(body.length) },
      body,
      signal: client.signal,
    }),
  );
  await backend.called;
  // 65 + 40 > 100: refused without being read.
  const { stream, state } = countingStream(encoder.encode("x".repeat(40)), 1);
  const refused = await handler(
    new Request("http://127.0.0.1/v1/data", {
      method: "POST",
      headers: { ...JSON_TYPE, "content-length": "40" },
      body: stream,
    }),
  );
  assert.equal(refused.headers.get("retry-after"), "1");
  assert.deepEqual(await expectJson(refused, 429), { error: "too many requests" });
  assert.equal(state.pulls, 0);
  // A body of unknown length counts as maxBodyBytes; requests without a body count nothing.
  const chunked = countingStream(encoder.encode("{}"), 1);
  const unknown = await handler(
    new Request("http://127.0.0.1/v1/data", {
      method: "POST",
      headers: JSON_TYPE,
      body: chunked.stream,
    }),
  );
  await expectJson(unknown, 429);
  assert.equal(chunked.state.pulls, 0);
  backend.hang = false;
  await expectJson(await handler(new Request("http://127.0.0.1/v1/status")), 200);
  client.abort();
  await expectJson(await first, 499);
  // Alone, a request may be as large as the body limit allows.
  await expectJson(
    await handler(
      new Request("http://127.0.0.1/v1/data", {
        method: "POST",
        headers: { ...JSON_TYPE, "content-length": "152" },
        body: JSON.stringify({ k: "b", v: "y".repeat(136) }),
      }),
    ),
    200,
  );
});

Deno.test("past maxForwardedRequests a request that needs the leader is answered 429 without a forward", async () => {
  let hang = true;
  const leader = fakeForwarder((init) =>
    hang ? neverAnswers(init) : new Response('{"k":"c","v":"1"}', { headers: JSON_TYPE })
  );
  const metrics = new MetricsRegistry();
  const { handler, call, backend } = setup({
    forward: leader.forward,
    maxForwardedRequests: 1,
    metrics,
  });
  backend.followN2();
  const client = new AbortController();
  const first = handler(new Request("http://127.0.0.1/v1/data/a", { signal: client.signal }));
  while (leader.calls.length === 0) await new Promise((resolve) => setTimeout(resolve, 1));
  const res = await call("POST", "/v1/data", '{"k":"b","v":"1"}');
  assert.equal(res.headers.get("retry-after"), "1");
  const body = await expectJson(res, 429);
  assert.match(
    String(body.error),
    /^too many requests being forwarded to the leader "n2" .*nothing was sent$/,
  );
  assert.equal(leader.calls.length, 1);
  client.abort();
  await expectJson(await first, 499);
  // The slot is free again.
  hang = false;
  assert.deepEqual(await expectJson(await call("GET", "/v1/data/c"), 200), { k: "c", v: "1" });
  assert.equal(leader.calls.length, 2);
  assert.deepEqual(refusalCounts(metrics), { ...NO_REFUSALS, forwards: 1 });
});

Deno.test("OverloadedError is answered with 503 and Retry-After, and not logged", async () => {
  const { call, backend, logs } = setup();
  backend.error = new OverloadedError({ proposals: 8, bytes: 800 }, { proposals: 8, bytes: 4096 });
  const res = await call("PUT", "/v1/data/a", '{"v":"1"}');
  assert.equal(res.headers.get("retry-after"), "1");
  const body = await expectJson(res, 503);
  assert.match(
    String(body.error),
    /^the leader has 8 writes \(800 bytes\) waiting .*; the write was not applied, retrying later is safe$/,
  );
  assert.equal(body.pending_proposals, 8);
  assert.equal(body.pending_bytes, 800);
  assert.deepEqual(logs, []);
});

Deno.test("a leader already full of pending writes refuses one with 503 before reading its body", async () => {
  const { handler, backend, logs } = setup();
  backend.overload = new OverloadedError({ proposals: 9, bytes: 90 }, {
    proposals: 8,
    bytes: 4096,
  });
  const { stream, state } = countingStream(encoder.encode('{"k":"a","v":"1"}'), 1);
  const res = await handler(
    new Request("http://127.0.0.1/v1/data", { method: "POST", headers: JSON_TYPE, body: stream }),
  );
  assert.equal(res.headers.get("retry-after"), "1");
  const body = await expectJson(res, 503);
  assert.match(String(body.error), /^the leader has 9 writes \(90 bytes\) waiting/);
  assert.equal(state.pulls, 0);
  assert.deepEqual(backend.calls, []);
  assert.deepEqual(logs, []);
  // A delete carries no body: it goes on to the backend, whose own check decides.
  await expectJson(
    await handler(new Request("http://127.0.0.1/v1/data/a", { method: "DELETE" })),
    200,
  );
  assert.deepEqual(backend.calls, ["delete a"]);
});

/** A snapshot stream that yields chunks for ever, recording whether it was cancelled. */
function endlessSnapshot() {
  const state = { cancelled: false, pulls: 0 };
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      state.pulls++;
      controller.enqueue(encoder.encode("chunk"));
    },
    cancel() {
      state.cancelled = true;
    },
  }, { highWaterMark: 0 });
  return { stream, state };
}

Deno.test("past maxConcurrentBackups a backup is answered 429 until one ends", async () => {
  const metrics = new MetricsRegistry();
  const { handler, backend } = setup({ maxConcurrentBackups: 1, metrics });
  const first = await handler(new Request("http://127.0.0.1/v1/snapshot"));
  assert.equal(first.status, 200);
  const second = await handler(new Request("http://127.0.0.1/v1/snapshot"));
  assert.equal(second.headers.get("retry-after"), "1");
  await expectError(second, 429, /^too many backups in progress \(1; the limit is 1/);
  assert.equal(await first.text(), "[]"); // read to the end: the slot is free
  const third = await handler(new Request("http://127.0.0.1/v1/snapshot"));
  assert.equal(third.status, 200);
  await third.body?.cancel(); // a client that goes away frees it too
  const fourth = await handler(new Request("http://127.0.0.1/v1/snapshot"));
  assert.equal(fourth.status, 200);
  await fourth.body?.cancel();
  assert.deepEqual(backend.calls, ["snapshot", "snapshot", "snapshot"]);
  assert.deepEqual(refusalCounts(metrics), { ...NO_REFUSALS, backups: 1 });
});

Deno.test("a backup not read within backupTimeoutMs fails and releases its source", async () => {
  const { handler, backend } = setup({ maxConcurrentBackups: 1, backupTimeoutMs: 50 });
  const source = endlessSnapshot();
  backend.snapshotSource = () => source.stream;
  const res = await handler(new Request("http://127.0.0.1/v1/snapshot"));
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  assert.equal(new TextDecoder().decode((await reader.read()).value), "chunk");
  // The reader stalls: at the deadline the source is cancelled and the stream fails.
  const deadline = performance.now() + 5000;
  while (!source.state.cancelled) {
    assert.ok(performance.now() < deadline, "the source was not cancelled within 5 s");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  await assert.rejects(
    reader.read(),
    (err: Error) =>
      err.name === "TimeoutError" && /within 50ms \(backupTimeoutMs\)/.test(err.message),
  );
  assert.equal(source.state.cancelled, true);
  backend.snapshotSource = null;
  const next = await handler(new Request("http://127.0.0.1/v1/snapshot"));
  assert.equal(next.status, 200, "the slot was released");
  await next.body?.cancel();
});

const TOKENS = [
  { token: "read-token-0123456789", role: "read", name: "reader" },
  { token: "write-token-0123456789", role: "write", name: "writer" },
  { token: "admin-token-0123456789", role: "admin" },
] as const;

function bearer(token: string, extra: Record<string, string> = {}): Record<string, string> {
  return { authorization: `Bearer ${token}`, ...extra };
}

Deno.test("with tokens, a request without a known token is answered 401 JSON with WWW-Authenticate", async () => {
  const refusals: string[] = [];
  const { call, backend } = setup({ tokens: TOKENS, logRefusal: (l) => refusals.push(l) });
  for (
    const headers of [
      {},
      { authorization: "Basic dXNlcjpwYXNz" },
      { authorization: "Bearer" },
      bearer("not-a-token-0123456789"),
      bearer("read-token-012345678"),
      bearer("read-token-01234567890"),
    ]
  ) {
    const res = await call("GET", "/v1/data/a", undefined, headers);
    assert.equal(res.headers.get("www-authenticate"), WWW_AUTHENTICATE);
    const body = await expectJson(res, 401);
    assert.equal(typeof body.error, "string", JSON.stringify(headers));
  }
  // Refused before anything else: no backend call, no body read, nothing counted.
  const write = await call("POST", "/v1/data", '{"k":"a","v":"1"}');
  await expectError(write, 401, /needs a token: send Authorization: Bearer <token>$/);
  assert.deepEqual(backend.calls, []);
  assert.equal(refusals.length, 7);
  assert.ok(refusals.every((l) => !l.includes("token-0123")), "no token in the log");
});

Deno.test("with tokens, roles allow reads, writes and the snapshot in order: read < write < admin", async () => {
  const refusals: string[] = [];
  const { call, backend } = setup({ tokens: TOKENS, logRefusal: (l) => refusals.push(l) });
  const [read, write, admin] = TOKENS.map((t) => t.token) as [string, string, string];
  const put = (token: string) => call("PUT", "/v1/data/a", '{"v":"1"}', bearer(token, JSON_TYPE));

  const denied = await expectJson(await put(read), 403);
  assert.match(
    String(denied.error),
    /^the token "reader" has the role read; this request needs write$/,
  );
  assert.deepEqual({ role: denied.role, needed: denied.needed }, { role: "read", needed: "write" });
  await expectError(
    await call("DELETE", "/v1/data/a", undefined, bearer(read)),
    403,
    /needs write/,
  );
  assert.deepEqual(backend.calls, []);

  await expectJson(await put(write), 200);
  assert.deepEqual(
    await expectJson(await call("GET", "/v1/data/a", undefined, bearer(read)), 200),
    {
      k: "a",
      v: "1",
      create_index: 1,
      mod_index: 1,
      version: 1,
    },
  );
  await expectJson(await call("GET", "/v1/status", undefined, bearer(read)), 200);
  await expectError(await call("GET", "/v1/status"), 401, /needs a token/);

  await expectError(
    await call("GET", "/v1/snapshot", undefined, bearer(write)),
    403,
    /has the role write; this request needs admin$/,
  );
  const snap = await call("GET", "/v1/snapshot", undefined, bearer(admin));
  assert.equal(snap.status, 200);
  await snap.body?.cancel();
  await expectJson(await call("DELETE", "/v1/data/a", undefined, bearer(admin)), 200);
  // Unknown paths need admin too: whatever is added later is closed until listed.
  await expectError(await call("GET", "/v1/other", undefined, bearer(write)), 403, /needs admin/);
  await expectError(await call("GET", "/v1/other", undefined, bearer(admin)), 404, /no such path/);

  assert.equal(refusals.length, 5);
  assert.match(refusals[0]!, /^raftkv api: PUT \/v1\/data\/a -> 403: the token "reader"/);
  assert.ok(refusals.every((l) => TOKENS.every((t) => !l.includes(t.token))));
});

Deno.test("with tokens, /health and /ready stay open", async () => {
  const { call } = setup({ tokens: TOKENS });
  await expectJson(await call("GET", "/health"), 200);
  await expectJson(await call("GET", "/ready"), 200);
});

Deno.test("a follower with tokens forwards the authorised caller, never the token", async () => {
  const leader = fakeForwarder(() => Response.json({ k: "a", v: "1", index: 3 }));
  const { call, backend } = setup({ tokens: TOKENS, forward: leader.forward });
  backend.followN2();
  await expectJson(
    await call("POST", "/v1/data", '{"k":"a","v":"1"}', bearer(TOKENS[1].token, JSON_TYPE)),
    200,
  );
  await expectJson(await call("GET", "/v1/data/a", undefined, bearer(TOKENS[2].token)), 200);
  // A refused request is never forwarded.
  await expectError(
    await call("DELETE", "/v1/data/a", undefined, bearer(TOKENS[0].token)),
    403,
    /needs write/,
  );
  assert.deepEqual(leader.calls.map((c) => c.headers.get(CALLER_HEADER)), [
    "write writer",
    "admin token-3",
  ]);
  assert.ok(leader.calls.every((c) => c.headers.get("authorization") === null));
});

/** A request as it reaches the leader's peer port from member `by`. */
function forwardedRequest(
  path: string,
  headers: Record<string, string>,
  init: { method?: string; body?: string } = {},
): Request {
  return new Request(`http://127.0.0.1:6666${path}`, {
    method: init.method ?? "GET",
    headers,
    body: init.body ?? null,
  });
}

Deno.test("the leader serves a forwarded request as its follower authorised it, without a token", async () => {
  const { handler, backend } = setup({ tokens: TOKENS });
  const res = await handler.forwarded(
    forwardedRequest("/forward/v1/data?cas=0", {
      [FORWARDED_BY_HEADER]: "n3",
      [CALLER_HEADER]: "write ci",
      ...JSON_TYPE,
    }, { method: "POST", body: '{"k":"a","v":"1"}' }),
    null,
  );
  assert.deepEqual(await expectJson(res, 200), {
    k: "a",
    v: "1",
    index: 1,
    create_index: 1,
    mod_index: 1,
    version: 1,
  });
  const read = await handler.forwarded(
    forwardedRequest("/forward/v1/data/a?consistency=lease", {
      [FORWARDED_BY_HEADER]: "n3",
      [CALLER_HEADER]: "read dashboard",
    }),
    "n3",
  );
  assert.deepEqual(await expectJson(read, 200), {
    k: "a",
    v: "1",
    create_index: 1,
    mod_index: 1,
    version: 1,
  });
  assert.deepEqual(backend.calls, ["put a=1 cas=0", "get a lease"]);
});

/**
 * Sends the request of {@linkcode forwardedRequest} to `handler` as the one request of a batch,
 * and returns its answer.
 */
async function inBatch(
  handler: ApiHandler,
  path: string,
  headers: Record<string, string>,
  init: { method?: string; body?: string },
  sender: string | null,
): Promise<Response> {
  const body = encodeBatch([{
    method: init.method ?? "GET",
    path: path.slice("/forward".length),
    headers,
    body: init.body === undefined ? null : new TextEncoder().encode(init.body),
  }]);
  const res = await handler.forwarded(
    new Request("http://127.0.0.1:6666/forward/batch", { method: "POST", body }),
    sender,
  );
  assert.equal(res.status, 200);
  const [answer, ...more] = new AnswerReader().push(new Uint8Array(await res.arrayBuffer()));
  assert.ok(answer !== undefined && more.length === 0);
  return new Response(answer.body, { status: answer.status, headers: answer.headers });
}

for (const via of ["on its own", "in a batch"]) {
  Deno.test(`the leader refuses a forwarded request ${via} from a stranger, a lying sender, without a caller, or off /v1/data`, async () => {
    const refusals: string[] = [];
    const { handler, backend } = setup({ tokens: TOKENS, logRefusal: (l) => refusals.push(l) });
    const post = (path: string, headers: Record<string, string>, sender: string | null = null) => {
      const init = { method: "POST", body: '{"k":"a","v":"1"}' };
      return via === "in a batch"
        ? inBatch(handler, path, { ...JSON_TYPE, ...headers }, init, sender)
        : handler.forwarded(forwardedRequest(path, { ...JSON_TYPE, ...headers }, init), sender);
    };
    const caller = { [CALLER_HEADER]: "admin ops" };
    await expectError(await post("/forward/v1/data", caller), 400, /must name its sender/);
    for (const by of ["n9", "n1", ""]) {
      await expectError(
        await post("/forward/v1/data", { ...caller, [FORWARDED_BY_HEADER]: by }),
        403,
        /only another member forwards, in its own name$/,
      );
    }
    await expectError(
      await post("/forward/v1/data", { ...caller, [FORWARDED_BY_HEADER]: "n3" }, "n2"),
      403,
      /forwarded by "n3" on a connection of "n2" is refused/,
    );
    const anonymous = await post("/forward/v1/data", { [FORWARDED_BY_HEADER]: "n3" });
    assert.equal(anonymous.headers.get("www-authenticate"), WWW_AUTHENTICATE);
    await expectError(anonymous, 401, /without a caller, but this node requires tokens/);
    for (const value of ["root ops", "write", "write two words", "write \u00e9"]) {
      await expectError(
        await post("/forward/v1/data", { [FORWARDED_BY_HEADER]: "n3", [CALLER_HEADER]: value }),
        400,
        /is not "<role> <name>"$/,
      );
    }
    for (
      const path of [
        "/forward/v1/snapshot",
        "/forward/v1/status",
        "/forward/health",
        "/forward//n3/v1/data",
        via === "in a batch" ? "/forward/" : "/forward",
      ]
    ) {
      await expectError(
        await post(path, { ...caller, [FORWARDED_BY_HEADER]: "n3" }),
        404,
        /no such forwarding path/,
      );
    }
    assert.deepEqual(backend.calls, []);
    assert.equal(refusals.length, 15);
    assert.ok(refusals.every((l) => l.includes("POST /forward")), refusals.join("\n"));
  });
}

Deno.test("an open leader serves forwarded requests with or without a caller", async () => {
  const { handler, backend } = setup();
  for (const extra of [{}, { [CALLER_HEADER]: "read x" }]) {
    const res = await handler.forwarded(
      forwardedRequest("/forward/v1/data/a?consistency=stale", {
        [FORWARDED_BY_HEADER]: "n2",
        ...extra,
      }),
      null,
    );
    await expectJson(res, 404);
  }
  assert.deepEqual(backend.calls, ["get a stale", "get a stale"]);
});

Deno.test("a forwarded request the leader no longer leads for is not forwarded again", async () => {
  const leader = fakeForwarder(() => new Response("{}"));
  const { handler, backend } = setup({ tokens: TOKENS, forward: leader.forward });
  backend.followN2();
  const res = await handler.forwarded(
    forwardedRequest("/forward/v1/data/a", {
      [FORWARDED_BY_HEADER]: "n3",
      [CALLER_HEADER]: "read r",
    }),
    null,
  );
  await expectError(res, 503, /forwarded here by "n3" .*the leader changed; retry$/);
  assert.equal(leader.calls.length, 0);
});

Deno.test("a 5xx log line names the caller, never the token", async () => {
  const { call, backend, logs } = setup({ tokens: TOKENS });
  backend.error = new RangeError("boom");
  await expectError(
    await call("GET", "/v1/data/a", undefined, bearer(TOKENS[0].token)),
    500,
    /^internal/,
  );
  assert.equal(logs.length, 1);
  assert.match(logs[0]!, /boom[\s\S]* \(caller "reader"\)$/);
  assert.ok(!logs[0]!.includes(TOKENS[0].token));
});
