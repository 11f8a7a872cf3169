/**
 * The coordination API (revisions, compare-and-set, ranges, transactions, idempotent writes)
 * through the real handler on a real single-node cluster: a RaftNode on real files, writing
 * through Raft.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { MemoryNetwork } from "../../testing/memory_transport.ts";
import { openDiskStorage } from "../node/disk_storage.ts";
import { RaftNode } from "../node/raft_node.ts";
import { createApiHandler, INDEX_HEADER, REPLAYED_HEADER } from "./handler.ts";
import { MAX_RANGE_LIMIT } from "./ranges.ts";
import { MAX_TXN_OPS } from "./txn.ts";
import { compareKeys } from "../kv/key_order.ts";
import { seededRandom } from "../raft/rand.ts";

const SILENT = { debug() {}, info() {}, warn() {}, error() {} };

type Call = (
  method: string,
  path: string,
  body?: unknown,
  headers?: Record<string, string>,
) => Promise<Response>;

/** Runs `fn` with a single-node cluster on a temp directory and the API in front of it. */
async function withNode(
  fn: (call: Call, node: RaftNode) => Promise<void>,
  apiOptions: { maxKeyBytes?: number; maxValueBytes?: number } = {},
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "raftkv-coord-" });
  const storage = await openDiskStorage({
    walDir: join(root, "wal"),
    raftStatePath: join(root, "raft-state.json"),
    logMetadataPath: join(root, "log-metadata.json"),
    snapshotDir: join(root, "snapshots"),
  });
  const node = new RaftNode({
    id: "solo",
    members: [{ id: "solo", rpcUrl: "mem://solo", apiUrl: "http://solo" }],
    storage,
    heartbeatMs: 10,
    electionTimeoutMs: 100,
    logger: SILENT,
    transport: (h) => new MemoryNetwork().connect("solo", h),
  });
  try {
    node.start();
    const end = performance.now() + 10_000;
    while (!node.isReady()) {
      if (performance.now() > end) throw new Error("the single node never became ready");
      await new Promise((r) => setTimeout(r, 5));
    }
    const handler = createApiHandler(node, { selfId: "solo", logError: () => {}, ...apiOptions });
    const call: Call = (method, path, body, headers = {}) =>
      handler(
        new Request(`http://127.0.0.1${path}`, {
          method,
          headers: body === undefined
            ? headers
            : { "content-type": "application/json", ...headers },
          body: body === undefined ? null : typeof body === "string" ? body : JSON.stringify(body),
        }),
      );
    await fn(call, node);
  } finally {
    await node.stop();
    await Deno.remove(root, { recursive: true });
  }
}

/** The JSON body of an answer with the expected status; every answer is JSON. */
async function json(res: Response, status: number): Promise<Record<string, unknown>> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.equal(res.headers.get("content-type"), "application/json");
  assert.match(res.headers.get(INDEX_HEADER) ?? "", /^\d+$/, "every answer carries the index");
  return JSON.parse(text);
}

/** Every item of a range, read page by page with the `next` tokens. */
async function allPages(call: Call, query: string): Promise<{ k: string; v: string }[]> {
  const items: { k: string; v: string }[] = [];
  let next: string | null = null;
  do {
    const page = await json(
      await call("GET", `/v1/data?${query}${next === null ? "" : `&next=${next}`}`),
      200,
    );
    items.push(...(page.items as { k: string; v: string }[]));
    next = page.next as string | null;
  } while (next !== null);
  return items;
}

async function error(res: Response, status: number, message: RegExp): Promise<void> {
  const body = await json(res, status);
  assert.match(String(body.error), message);
}

Deno.test("writes and reads carry revisions, and answers the applied index", async () => {
  await withNode(async (call) => {
    const first = await json(await call("PUT", "/v1/data/a", { v: "1" }), 200);
    const i = first.index as number;
    assert.deepEqual(first, {
      k: "a",
      v: "1",
      index: i,
      create_index: i,
      mod_index: i,
      version: 1,
    });
    const second = await json(await call("POST", "/v1/data", { k: "a", v: "2" }), 200);
    const j = second.index as number;
    assert.deepEqual(second, {
      k: "a",
      v: "2",
      index: j,
      create_index: i,
      mod_index: j,
      version: 2,
    });
    const read = await call("GET", "/v1/data/a");
    assert.equal(read.headers.get(INDEX_HEADER), String(j));
    assert.deepEqual(await json(read, 200), {
      k: "a",
      v: "2",
      create_index: i,
      mod_index: j,
      version: 2,
    });
    // Errors carry the header too; the probes, which need no token, do not.
    await json(await call("GET", "/v1/data/missing"), 404);
    await json(await call("GET", "/v1/nothing"), 404);
    const health = await call("GET", "/health");
    assert.equal(health.status, 200);
    assert.equal(health.headers.get(INDEX_HEADER), null);
    await health.body?.cancel();
  });
});

Deno.test("compare-and-set succeeds only on the key's mod_index, else 412 with the current revision", async () => {
  await withNode(async (call, node) => {
    // cas=0: only if absent.
    const created = await json(await call("PUT", "/v1/data/lock?cas=0", { v: "me" }), 200);
    const m = created.mod_index as number;
    const failed = await json(await call("PUT", "/v1/data/lock?cas=0", { v: "you" }), 412);
    assert.match(String(failed.error), /the key "lock" has mod_index \d+, but must not exist/);
    assert.deepEqual(
      { k: failed.k, cas: failed.cas, current: failed.current },
      { k: "lock", cas: 0, current: { v: "me", create_index: m, mod_index: m, version: 1 } },
    );
    assert.equal(typeof failed.index, "number");
    // The body's spelling, and both agreeing.
    await json(await call("POST", "/v1/data", { k: "lock", v: "x", cas: m + 100 }), 412);
    const swapped = await json(
      await call("POST", `/v1/data?cas=${m}`, { k: "lock", v: "x", cas: m }),
      200,
    );
    assert.equal(swapped.version, 2);
    assert.equal(await node.get("lock", "stale", AbortSignal.timeout(1000)), "x");
    // Delete only at the right mod_index.
    const stale = await json(await call("DELETE", `/v1/data/lock?cas=${m}`), 412);
    assert.equal((stale.current as { v: string }).v, "x");
    assert.deepEqual(
      await json(await call("DELETE", `/v1/data/lock?cas=${swapped.mod_index}`), 200),
      {
        k: "lock",
        deleted: true,
        // The refused delete took an entry of the log too.
        index: (swapped.mod_index as number) + 2,
      },
    );
    const gone = await json(await call("PUT", "/v1/data/lock?cas=3", { v: "late" }), 412);
    assert.equal(gone.current, null);
    assert.match(String(gone.error), /does not exist, but must have mod_index 3/);
    // Malformed conditions change nothing.
    for (const q of ["-1", "1.5", "x", "", "99999999999999999"]) {
      await error(
        await call("PUT", `/v1/data/k?cas=${q}`, { v: "1" }),
        400,
        /cas=.* must be a non-negative integer/,
      );
    }
    for (const c of [-1, 1.5, "1", null, true]) {
      await error(
        await call("POST", "/v1/data", { k: "k", v: "1", cas: c }),
        400,
        /"cas" must be a non-negative integer/,
      );
    }
    await error(await call("POST", "/v1/data?cas=1", { k: "k", v: "1", cas: 2 }), 400, /differs/);
    await error(await call("DELETE", "/v1/data/k?cas=no"), 400, /cas=/);
    assert.equal(await node.get("k", "stale", AbortSignal.timeout(1000)), null);
  });
});

Deno.test("an Idempotency-Key makes a retried write answer its first outcome and apply once", async () => {
  await withNode(async (call) => {
    const key = { "idempotency-key": "3f1c2a6e-retry-1" };
    const first = await call("PUT", "/v1/data/counter?cas=0", { v: "1" }, key);
    assert.equal(first.headers.get(REPLAYED_HEADER), null);
    const firstBody = await json(first, 200);
    // Applied again, the condition would fail; as a retry it answers the first outcome.
    const retry = await call("PUT", "/v1/data/counter?cas=0", { v: "1" }, key);
    assert.equal(retry.headers.get(REPLAYED_HEADER), "true");
    assert.deepEqual(await json(retry, 200), firstBody);
    const read = await json(await call("GET", "/v1/data/counter"), 200);
    assert.equal(read.version, 1);
    // The same key for another request: 422, nothing done.
    await error(
      await call("PUT", "/v1/data/counter", { v: "2" }, key),
      422,
      /was first used for a different request/,
    );
    assert.equal((await json(await call("GET", "/v1/data/counter"), 200)).v, "1");
    // A failed condition is an outcome too, replayed as such.
    const other = { "idempotency-key": "fail-once" };
    const failed = await json(await call("PUT", "/v1/data/counter?cas=0", { v: "9" }, other), 412);
    const failedAgain = await call("PUT", "/v1/data/counter?cas=0", { v: "9" }, other);
    assert.equal(failedAgain.headers.get(REPLAYED_HEADER), "true");
    assert.deepEqual(await json(failedAgain, 412), failed);
    // Deletes, range deletes and transactions take it as well.
    const del = { "idempotency-key": "del-1" };
    assert.equal(
      (await json(await call("DELETE", "/v1/data/counter", undefined, del), 200)).deleted,
      true,
    );
    const delAgain = await json(await call("DELETE", "/v1/data/counter", undefined, del), 200);
    assert.equal(delAgain.deleted, true, "the first outcome, not a second delete");
    await json(await call("PUT", "/v1/data/p/1", { v: "1" }), 200);
    const range = { "idempotency-key": "range-1" };
    assert.equal(
      (await json(await call("DELETE", "/v1/data?prefix=p/", undefined, range), 200)).deleted,
      1,
    );
    await json(await call("PUT", "/v1/data/p/2", { v: "2" }), 200);
    assert.equal(
      (await json(await call("DELETE", "/v1/data?prefix=p/", undefined, range), 200)).deleted,
      1,
    );
    assert.equal((await json(await call("GET", "/v1/data?prefix=p/&count_only"), 200)).count, 1);
    // Bad keys are refused before anything is done.
    for (const bad of ["", "a b", "é", "x".repeat(256)]) {
      await error(
        await call("PUT", "/v1/data/z", { v: "1" }, { "idempotency-key": bad }),
        400,
        /Idempotency-Key/,
      );
    }
    assert.equal((await call("GET", "/v1/data/z")).status, 404);
  });
});

Deno.test("a write retried with its Idempotency-Key after a timeout is applied once", async () => {
  await withNode(async (_call, node) => {
    const cmd = { op: "put", key: "once", value: "v", cas: 0 } as const;
    // The first attempt gives up at once: its outcome is unknown (it may well commit).
    const first = await node.write(cmd, AbortSignal.abort(), "attempt").catch((e) => e);
    assert.ok(first instanceof Error);
    const settled = await node.write(cmd, AbortSignal.timeout(5000), "attempt");
    const again = await node.write(cmd, AbortSignal.timeout(5000), "attempt");
    assert.equal(settled.op, "put", "the condition held once, whichever attempt applied it");
    assert.deepEqual({ ...again, replayed: undefined }, { ...settled, replayed: undefined });
    assert.equal(again.replayed, true);
    const entry = (await node.read("once", "linearizable", AbortSignal.timeout(5000))).entry;
    assert.equal(entry?.version, 1);
  });
});

Deno.test("keys and values that begin with U+FEFF are kept as given, and a page continues at such a key", async () => {
  await withNode(async (call) => {
    // In code point order "\ufeffx" comes after "y": a token that lost its U+FEFF would name "x"
    // and start the next page before "y" again.
    for (const k of ["a", "b", "y", "\ufeffx", "\ufeffy"]) {
      const put = await json(await call("POST", "/v1/data", { k, v: `\ufeff${k}` }), 200);
      assert.equal(put.k, k);
      assert.equal(put.v, `\ufeff${k}`);
    }
    const got = await json(await call("GET", `/v1/data/${encodeURIComponent("\ufeffx")}`), 200);
    assert.deepEqual([got.k, got.v], ["\ufeffx", "\ufeff\ufeffx"]);
    const seen = (await allPages(call, "limit=3")).map((i) => i.k);
    assert.deepEqual(seen, ["a", "b", "y", "\ufeffx", "\ufeffy"]);
  });
});

Deno.test("random Unicode keys and values read back exactly, by key, in a range and in a transaction", async () => {
  // Code points a decoder or an escape might mangle: a byte order mark, noncharacters, controls,
  // separators, escapes, astral characters.
  const alphabet = [
    "a",
    "é",
    "\u{1f600}",
    "\ufeff",
    "\ufffe",
    "\uffff",
    "\u0000",
    "\u007f",
    "\u0080",
    "\u2028",
    "%",
    "/",
    " ",
    "\\",
    '"',
    "\u{10ffff}",
  ];
  const random = seededRandom(20261203);
  const text = (min: number) =>
    Array.from(
      { length: min + Math.floor(random() * 6) },
      () => alphabet[Math.floor(random() * alphabet.length)]!,
    ).join("");
  const pairs = new Map<string, string>();
  while (pairs.size < 60) pairs.set(`r/${text(0)}`, text(0));
  await withNode(async (call) => {
    for (const [k, v] of pairs) await json(await call("POST", "/v1/data", { k, v }), 200);
    for (const [k, v] of pairs) {
      const got = await json(await call("GET", `/v1/data/${encodeURIComponent(k)}`), 200);
      assert.deepEqual([got.k, got.v], [k, v], JSON.stringify(k));
    }
    const items = await allPages(call, "prefix=r/&limit=7");
    assert.deepEqual(
      items.map((i) => [i.k, i.v]),
      [...pairs].sort(([a], [b]) => compareKeys(a, b)),
    );
    const some = [...pairs].slice(0, 5);
    const txn = await json(
      await call("POST", "/v1/txn", {
        compare: some.map(([k, v]) => ({ k, value: v })),
        success: some.map(([k]) => ({ op: "get", k })),
        failure: [],
      }),
      200,
    );
    assert.equal(txn.succeeded, true);
    assert.deepEqual(
      (txn.results as { k: string; v: string }[]).map((r) => [r.k, r.v]),
      some,
    );
  });
});

Deno.test("the keys . and .. cannot be written, since no URL path can name them; keys with dots otherwise work by path", async () => {
  await withNode(async (call) => {
    for (const k of [".", ".."]) {
      await error(await call("POST", "/v1/data", { k, v: "x" }), 400, /cannot be written/);
      await error(
        await call("POST", "/v1/txn", { success: [{ op: "put", k, v: "x" }] }),
        400,
        /^success\[0\]: the key .* cannot be written/,
      );
      // What a client sends for them reaches another path: URL parsers drop the segment.
      assert.equal(
        new URL(`http://h/v1/data/${encodeURIComponent(k)}`).pathname,
        k === "." ? "/v1/data/" : "/v1/",
      );
    }
    // Reads and compares of them are fine (they find nothing).
    const txn = await json(
      await call("POST", "/v1/txn", {
        compare: [{ k: "..", exists: false }],
        success: [{ op: "get", k: "." }],
      }),
      200,
    );
    assert.equal(txn.succeeded, true);
    for (const k of ["...", ".a", "a/..", "./a", "%2e%2e"]) {
      await json(await call("POST", "/v1/data", { k, v: k }), 200);
      const got = await json(await call("GET", `/v1/data/${encodeURIComponent(k)}`), 200);
      assert.deepEqual([got.k, got.v], [k, k]);
      await json(await call("DELETE", `/v1/data/${encodeURIComponent(k)}`), 200);
    }
  });
});

Deno.test("a misspelt parameter or body field is refused and changes nothing: a typo of cas never writes or deletes unconditionally", async () => {
  await withNode(async (call) => {
    const put = await json(await call("POST", "/v1/data", { k: "a", v: "1" }), 200);
    await error(
      await call("PUT", "/v1/data/a?cass=99", { v: "2" }),
      400,
      /unknown query parameter "cass" for writing a key; allowed: cas, lease, ttl/,
    );
    await error(
      await call("POST", "/v1/data", { k: "a", v: "2", cass: 99 }),
      400,
      /unknown field "cass" in the request body; it takes k, v, cas/,
    );
    await error(
      await call("PUT", "/v1/data/a", { v: "2", lease: 1 }),
      400,
      /unknown field "lease" in the request body/,
    );
    await error(
      await call("DELETE", "/v1/data/a?cass=99"),
      400,
      /unknown query parameter "cass" for deleting a key; allowed: cas/,
    );
    await error(
      await call("GET", "/v1/data/a?consistancy=stale"),
      400,
      /unknown query parameter "consistancy" for reading a key; allowed: consistency, index, wait/,
    );
    const got = await json(await call("GET", "/v1/data/a"), 200);
    assert.deepEqual([got.v, got.mod_index], ["1", put.index]);
    // The parameters each route takes still work.
    await json(await call("PUT", `/v1/data/a?cas=${put.index}`, { v: "2", cas: put.index }), 200);
    await json(await call("GET", "/v1/data/a?consistency=stale&index=0&wait=1ms"), 200);
    await error(await call("DELETE", "/v1/data/a?cas=1"), 412, /did not hold|mod_index/);
  });
});

Deno.test("a parameter given twice, or a body on a delete, is refused and changes nothing: neither widens a delete nor drops its condition", async () => {
  await withNode(async (call) => {
    const a = await json(await call("POST", "/v1/data", { k: "a", v: "1" }), 200);
    await json(await call("POST", "/v1/data", { k: "zz/1", v: "1" }), 200);
    await error(
      await call("DELETE", "/v1/data?prefix=&prefix=zz/"),
      400,
      /the query parameter "prefix" is given 2 times; give it once/,
    );
    await error(await call("DELETE", "/v1/data?start=a&end=&end=b"), 400, /"end" is given 2/);
    await error(await call("PUT", "/v1/data/a?cas=0&cas=5", { v: "2" }), 400, /"cas" is given 2/);
    await error(
      await call("GET", "/v1/data/a?consistency=stale&consistency=bogus"),
      400,
      /"consistency" is given 2/,
    );
    await error(await call("GET", "/v1/data?prefix=&prefix=zz/&count_only"), 400, /"prefix"/);
    // A delete's body would be ignored: its cas, or another range.
    await error(
      await call("DELETE", "/v1/data/a", { cas: 999 }),
      400,
      /deleting a key takes no request body: .*\?cas=N/,
    );
    await error(
      await call("DELETE", "/v1/data?prefix=zz/", { prefix: "a" }),
      400,
      /deleting a range takes no request body/,
    );
    await error(await call("DELETE", "/v1/data/a", "x"), 400, /takes no request body/);
    const all = await json(await call("GET", "/v1/data?prefix="), 200);
    assert.deepEqual((all.items as { k: string }[]).map((i) => i.k), ["a", "zz/1"]);
    const got = await json(await call("GET", "/v1/data/a"), 200);
    assert.equal(got.mod_index, a.index);
    // An empty body is no body; each parameter once still works.
    await json(await call("DELETE", `/v1/data/a?cas=${a.index}`, ""), 200);
    await json(await call("DELETE", "/v1/data?prefix=zz/", ""), 200);
    const none = await json(await call("GET", "/v1/data?prefix=&count_only"), 200);
    assert.equal(none.count, 0);
  });
});

Deno.test("the lease routes refuse what they do not take: a parameter, a field, a body", async () => {
  await withNode(async (call) => {
    await error(
      await call("POST", "/v1/leases?ttl=50s", { ttl: "5s" }),
      400,
      /unknown query parameter "ttl" for POST \/v1\/leases; it takes none/,
    );
    await error(
      await call("POST", "/v1/leases", { ttl: "5s", id: 5 }),
      400,
      /unknown field "id" in the request body; it takes ttl/,
    );
    // Seconds as text, as etcdctl's lease grant takes them.
    const lease = await json(await call("POST", "/v1/leases", { ttl: "10" }), 201);
    assert.equal(lease.ttl_ms, 10_000);
    const id = lease.id as number;
    await error(
      await call("POST", `/v1/leases/${id}/keepalive`, { ttl: "100s" }),
      400,
      /a keep-alive renews the lease's own TTL; it takes no body/,
    );
    await error(await call("DELETE", `/v1/leases/${id}`, { id }), 400, /takes no request body/);
    await error(await call("GET", `/v1/leases/${id}?x=1`), 400, /unknown query parameter "x"/);
    const kept = await json(await call("POST", `/v1/leases/${id}/keepalive`), 200);
    assert.equal(kept.id, id);
    await json(await call("DELETE", `/v1/leases/${id}`), 200);
  });
});

Deno.test("ranges list keys in key order, page by page, with keys_only and count_only", async () => {
  await withNode(async (call) => {
    const keys = ["app/b", "app/a", "app/c/1", "apple", "b", "app", "app/\u{1f511}", "app/\uffff"];
    for (const k of keys) await json(await call("POST", "/v1/data", { k, v: `v-${k}` }), 200);
    const list = async (query: string) => await json(await call("GET", `/v1/data?${query}`), 200);
    const all = await list("prefix=app/");
    assert.deepEqual(
      (all.items as { k: string }[]).map((i) => i.k),
      ["app/a", "app/b", "app/c/1", "app/\uffff", "app/\u{1f511}"],
    );
    assert.equal(all.next, null);
    const item = (all.items as Record<string, unknown>[])[0]!;
    assert.deepEqual(Object.keys(item), ["k", "v", "create_index", "mod_index", "version"]);
    assert.equal(item.v, "v-app/a");
    // Pages of two, continued with the token.
    const seen: string[] = [];
    let next: string | null = null;
    do {
      const page: Record<string, unknown> = await list(
        `prefix=app/&limit=2${next === null ? "" : `&next=${next}`}`,
      );
      seen.push(...(page.items as { k: string }[]).map((i) => i.k));
      next = page.next as string | null;
      assert.ok(next === null || /^[A-Za-z0-9_-]+$/.test(next), String(next));
    } while (next !== null);
    assert.deepEqual(seen, (all.items as { k: string }[]).map((i) => i.k));
    assert.deepEqual(
      (await list("prefix=app/&keys_only=true")).items,
      (all.items as Record<string, unknown>[]).map(({ v: _, ...rest }) => rest),
    );
    assert.deepEqual(await list("prefix=app&count_only"), { count: 7 });
    assert.deepEqual(await list("count_only=1"), { count: 8 });
    assert.deepEqual(
      ((await list("start=app/b&end=apple")).items as { k: string }[]).map((i) => i.k),
      ["app/b", "app/c/1", "app/\uffff", "app/\u{1f511}"],
    );
    assert.deepEqual(
      ((await list("start=apple")).items as { k: string }[]).map((i) => i.k),
      ["apple", "b"],
    );
    for (const c of ["stale", "lease", "linearizable"]) {
      assert.deepEqual(await list(`prefix=app/&count_only&consistency=${c}`), { count: 5 });
    }
    // The header says which state the read saw.
    const res = await call("GET", "/v1/data?prefix=b");
    assert.equal(res.headers.get(INDEX_HEADER), String(keys.length + 1));
    await res.body?.cancel();
  });
});

Deno.test("malformed range requests are refused with 400 or 413, changing nothing", async () => {
  await withNode(async (call) => {
    await json(await call("POST", "/v1/data", { k: "a", v: "1" }), 200);
    const cases: [string, string, number, RegExp][] = [
      ["GET", "prefix=a&start=b", 400, /either prefix, or start and end/],
      ["GET", "limit=0", 400, /limit="0" must be an integer from 1/],
      ["GET", `limit=${MAX_RANGE_LIMIT + 1}`, 400, /limit=/],
      ["GET", "limit=x", 400, /limit=/],
      ["GET", "next=!!", 400, /next="!!" is not a continuation/],
      ["GET", "prefix=b&next=YQ", 400, /not a continuation of this range/], // "a"
      ["GET", "keys_only=maybe", 400, /keys_only="maybe" must be true or false/],
      ["GET", "consistency=eventual", 400, /unknown consistency/],
      ["GET", "prefx=a", 400, /unknown query parameter "prefx"/],
      ["GET", `prefix=${"k".repeat(1025)}`, 413, /the limit is 1024 bytes/],
      ["DELETE", "", 400, /say which keys to delete/],
      ["DELETE", "prefix=a&limit=1", 400, /unknown query parameter "limit" for deleting a range/],
      ["DELETE", "prefix=a&start=a", 400, /either prefix/],
    ];
    for (const [method, query, status, message] of cases) {
      await error(await call(method, `/v1/data?${query}`), status, message);
    }
    assert.equal((await json(await call("GET", "/v1/data/a"), 200)).v, "1");
    const res = await call("PUT", "/v1/data", { v: "1" });
    assert.equal(res.headers.get("allow"), "GET, POST, DELETE");
    await error(res, 405, /not allowed/);
  });
});

Deno.test("a range delete removes exactly the range and says how many keys it removed", async () => {
  await withNode(async (call) => {
    for (const k of ["a", "p/1", "p/2", "p/3", "q", "r"]) {
      await json(await call("POST", "/v1/data", { k, v: "x" }), 200);
    }
    const del = await json(await call("DELETE", "/v1/data?prefix=p/"), 200);
    assert.equal(del.deleted, 3);
    assert.equal(typeof del.index, "number");
    assert.deepEqual(await json(await call("DELETE", "/v1/data?prefix=p/"), 200), {
      deleted: 0,
      index: (del.index as number) + 1,
    });
    assert.equal((await json(await call("DELETE", "/v1/data?start=q&end=r"), 200)).deleted, 1);
    assert.equal((await json(await call("DELETE", "/v1/data?start=b"), 200)).deleted, 1);
    const left = await json(await call("GET", "/v1/data"), 200);
    assert.deepEqual((left.items as { k: string }[]).map((i) => i.k), ["a"]);
    assert.equal((await json(await call("DELETE", "/v1/data?prefix="), 200)).deleted, 1);
    assert.deepEqual(await json(await call("GET", "/v1/data?count_only"), 200), { count: 0 });
  });
});

Deno.test("a transaction runs its success or failure branch atomically", async () => {
  await withNode(async (call) => {
    const acquire = (owner: string) => ({
      compare: [{ k: "lock", exists: false }],
      success: [{ op: "put", k: "lock", v: owner }, { op: "get", k: "lock" }],
      failure: [{ op: "get", k: "lock" }, { op: "get", k: "nothing" }],
    });
    const won = await json(await call("POST", "/v1/txn", acquire("alice")), 200);
    const i = won.index as number;
    assert.deepEqual(won, {
      succeeded: true,
      index: i,
      results: [
        { op: "put", k: "lock", create_index: i, mod_index: i, version: 1 },
        {
          op: "get",
          found: true,
          k: "lock",
          v: "alice",
          create_index: i,
          mod_index: i,
          version: 1,
        },
      ],
    });
    const lost = await json(await call("POST", "/v1/txn", acquire("bob")), 200);
    assert.deepEqual(lost, {
      succeeded: false,
      index: i + 1,
      results: [
        {
          op: "get",
          found: true,
          k: "lock",
          v: "alice",
          create_index: i,
          mod_index: i,
          version: 1,
        },
        { op: "get", k: "nothing", found: false },
      ],
    });
    // Every kind of compare and op; all compares must hold.
    const release = await json(
      await call("POST", "/v1/txn", {
        compare: [
          { k: "lock", value: "alice" },
          { k: "lock", version: 1 },
          { k: "lock", mod_index: i, op: "=" },
          { k: "lock", create_index: i + 1, op: "<" },
          { k: "lock", exists: true },
          { k: "other", exists: false, op: "=" },
          { k: "lock", value: "bob", op: "!=" },
          { k: "lock", version: 0, op: ">" },
        ],
        success: [{ op: "delete", k: "lock" }, { op: "put", k: "released", v: "yes" }],
      }),
      200,
    );
    assert.equal(release.succeeded, true);
    assert.deepEqual((release.results as unknown[])[0], { op: "delete", k: "lock", deleted: true });
    // An empty transaction is a no-op that succeeds.
    assert.equal((await json(await call("POST", "/v1/txn", {}), 200)).succeeded, true);
  });
});

Deno.test("malformed or oversized transactions are refused before anything is done", async () => {
  await withNode(async (call) => {
    const many = Array.from({ length: MAX_TXN_OPS + 1 }, (_, i) => ({ op: "get", k: `k${i}` }));
    const cases: [unknown, number, RegExp][] = [
      [[], 400, /must be a JSON object/],
      [{ compare: {} }, 400, /"compare" must be an array/],
      [{ compare: null }, 400, /"compare" must be an array, not null/],
      [{ success: null }, 400, /"success" must be an array, not null/],
      [{ compare: [{ k: "a" }] }, 400, /compare\[0\] must have exactly one of value, version/],
      [{ compare: [{ k: "a", version: 1, value: "x" }] }, 400, /it has value, version/],
      [{ compare: [{ k: "a", versoin: 1 }] }, 400, /unknown field "versoin" in compare\[0\]/],
      [{ compare: [{ version: 1 }] }, 400, /compare\[0\]: missing "k"/],
      [{ compare: [{ k: "", version: 1 }] }, 400, /key must not be empty/],
      [{ compare: [{ k: "a", version: -1 }] }, 400, /"version" must be a non-negative integer/],
      [
        { compare: [{ k: "a", mod_index: "1" }] },
        400,
        /"mod_index" must be a non-negative integer/,
      ],
      [{ compare: [{ k: "a", exists: "yes" }] }, 400, /"exists" must be true or false/],
      [{ compare: [{ k: "a", exists: true, op: "<" }] }, 400, /compares only with = or !=/],
      [{ compare: [{ k: "a", value: "x", op: "~" }] }, 400, /"op" must be one of = != < >/],
      [
        { success: [{ op: "incr", k: "a" }] },
        400,
        /success\[0\]: "op" must be "put", "delete" or "get"/,
      ],
      [{ success: [{ op: "put", k: "a" }] }, 400, /success\[0\]: missing "v"/],
      [{ success: [{ op: "put", k: "a", v: 1 }] }, 400, /"v" must be a string/],
      [{ failure: [{ op: "get", k: "a", v: "x" }] }, 400, /unknown field "v" in failure\[0\]/],
      [
        { success: [{ op: "put", k: "a", v: "1" }, { op: "delete", k: "a" }] },
        400,
        /success\[1\] writes "a" again/,
      ],
      [{ compare: [], succes: [] }, 400, /unknown field "succes" in the transaction/],
      [{ success: many }, 413, new RegExp(`"success" has ${MAX_TXN_OPS + 1} items`)],
      [{ compare: [{ k: "k".repeat(40), exists: true }] }, 413, /the key is 40 bytes/],
      [{ success: [{ op: "put", k: "a", v: "v".repeat(200) }] }, 413, /the value is 200 bytes/],
    ];
    for (const [body, status, message] of cases) {
      await error(await call("POST", "/v1/txn", body), status, message);
    }
    const plain = await call("POST", "/v1/txn", undefined, { "content-type": "text/plain" });
    await error(plain, 415, /Content-Type/);
    assert.deepEqual(await json(await call("GET", "/v1/data?count_only"), 200), { count: 0 });
  }, { maxKeyBytes: 32, maxValueBytes: 100 });
});
