import assert from "node:assert/strict";
import { runClient } from "./client.ts";
import type { ClientIo } from "./output.ts";

/** Runs the client in this process with captured output and the given environment. */
async function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const io: ClientIo = {
    out: (text) => out += text + "\n",
    err: (text) => err += text + "\n",
    env: (name) => env[name],
    stdin: () => Promise.resolve(""),
  };
  const code = await runClient(args, io);
  return { code, out, err };
}

Deno.test("bad usage exits 2 with one line saying what is wrong, before any request", async () => {
  const cases: [string[], RegExp][] = [
    [
      ["get"],
      /^raftkv get: missing arguments; usage: raftkv get \[options\] KEY \(see --help\)\n$/,
    ],
    [["get", "a", "b"], /unexpected argument "b"/],
    [["put"], /missing arguments; usage: raftkv put \[options\] KEY \[VALUE\]/],
    [["status", "x"], /unexpected argument "x"/],
    [
      ["del", "a", "--endpionts", "h:1"],
      /unknown option "--endpionts" \(did you mean "--endpoints"\?\)/,
    ],
    [["get", "a", "-o", "yaml"], /-o: "yaml" is not "table" or "json"/],
    [["get", "a", "--endpoints", "ftp://x:1"], /invalid endpoint "ftp:\/\/x:1"/],
    [["get", "a", "--timeout", "soon"], /--timeout: /],
    [["get", "a", "--timeout", "0"], /--timeout: "0" is not positive/],
    [["get", ""], /the key must not be empty/],
    [["get", ".."], /the key "\.\." cannot be named in a URL path/],
    [["put", ".", "v"], /the key "\." cannot be named in a URL path/],
    [["del", ".."], /the key "\.\." cannot be named in a URL path/],
    [["get", "a", "--consistency", "eventual"], /--consistency: "eventual" is not one of/],
    [["verify", "--clients", "0"], /--clients: "0" is not a whole number from 1 to 1000/],
    [["verify", "--duration", "1x"], /--duration: /],
    [["snapshot"], /^raftkv snapshot: snapshot needs a subcommand:\n {2}raftkv snapshot save FILE/],
    [["snapshot", "load", "f"], /snapshot needs a subcommand, not "load"/],
    [["snapshot", "save"], /missing arguments; usage: raftkv snapshot save \[options\] FILE/],
    [
      ["get", "a", "--cacert", "/nonexistent/ca.pem"],
      /cannot read the CA file "\/nonexistent\/ca\.pem" \(--cacert or RAFTKV_CACERT\)/,
    ],
    [["del", "a", "--prefix", "--cas", "3"], /give --cas or --prefix, not both/],
    [["txn"], /the transaction is not JSON/],
    [["txn", "/nonexistent/txn.json"], /cannot read "\/nonexistent\/txn.json"/],
    [["txn", "a", "b"], /unexpected argument "b"/],
    [["leader"], /^raftkv leader: leader needs a subcommand:\n {2}raftkv leader transfer/],
    [["leader", "transfer", ""], /the node id must not be empty/],
    [["lock"], /missing arguments; usage: raftkv lock \[options\] NAME \[COMMAND...\]/],
    [["lock", ""], /the lock name must not be empty/],
    [["lock", "a", "--ttl", "soon"], /invalid value for --ttl: /],
    [["elect", "svc"], /give a PROPOSAL to campaign with, or --leader/],
    [["elect", "svc", "x", "--leader"], /--leader takes no PROPOSAL/],
    [["elect", ""], /the election name must not be empty/],
    [["watch", "a", "--count", "0"], /--count: "0" is not a positive integer/],
    [["watch", "a", "--from", "0"], /--from: "0" is not a positive integer/],
  ];
  for (const [args, message] of cases) {
    const result = await run(args);
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.err}`);
    assert.equal(result.out, "", args.join(" "));
    assert.match(result.err, message, args.join(" "));
  }
});

Deno.test("with -o json (or RAFTKV_OUTPUT=json) a usage error is one JSON object on stdout", async () => {
  for (
    const [args, env] of [
      [["get", "-o", "json"], {}],
      [["get", "--output=json"], {}],
      [["get"], { RAFTKV_OUTPUT: "json" }],
    ] as const
  ) {
    const result = await run([...args], env);
    assert.equal(result.code, 2);
    assert.equal(result.err, "");
    assert.deepEqual(JSON.parse(result.out), {
      error: "missing arguments; usage: raftkv get [options] KEY (see --help)",
      exit_code: 2,
    });
  }
});

Deno.test("--help, -h and raftkv help print usage and exit 0 without touching the network", async () => {
  for (
    const args of [["get", "--help"], ["help", "get"], ["get", "a", "-h", "--endpoints", "x:1"]]
  ) {
    const result = await run(args);
    assert.equal(result.code, 0, args.join(" "));
    assert.ok(result.out.startsWith("Usage: raftkv get [options] KEY\n"), result.out);
    assert.match(result.out, /--consistency <mode>/);
    assert.match(result.out, /Global options:\n {2}--endpoints <urls>/);
  }
  const group = await run(["snapshot", "--help"]);
  assert.equal(group.code, 0);
  assert.match(group.out, /raftkv snapshot save FILE[^\n]*\n {2}raftkv snapshot restore FILE/);
  const overview = await run(["help"]);
  assert.equal(overview.code, 0);
  for (
    const name of [
      "get",
      "put",
      "del",
      "list",
      "txn",
      "watch",
      "lock",
      "elect",
      "status",
      "members list",
      "leader transfer",
      "snapshot save",
      "snapshot restore",
      "verify",
    ]
  ) {
    assert.match(overview.out, new RegExp(`^ {2}${name} `, "m"), name);
  }
  // Every command the API serves is in the client: the overview names none as missing.
  assert.doesNotMatch(overview.out, /Not in this client/);
});

Deno.test("watch: a stream broken inside one entry's changes goes on after the last event's id (Last-Event-ID), at the next endpoint", async () => {
  // Entry 7 changes two keys under the prefix. The first node sends its first change and stops;
  // the second must be asked to go on after `7:1`, with no `from` (the id wins), and sends the
  // second change.
  const asked: { url: string; lastEventId: string | null }[] = [];
  const event = (id: string, index: number, k: string) =>
    `id: ${id}\ndata: ${JSON.stringify({ index, type: "put", k, v: k })}\n\n`;
  // Each node's stream ends after its event (as when the node goes away).
  const serve = (body: string) =>
    Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      asked.push({ url: req.url, lastEventId: req.headers.get("last-event-id") });
      // A client that never gets on is stopped (it would reconnect for ever).
      if (asked.length > 4) return Response.json({ error: "asked too often" }, { status: 400 });
      return new Response(body, {
        headers: { "content-type": "text/event-stream", "x-raftkv-index": "6" },
      });
    });
  const first = serve(event("7:1", 7, "p/a"));
  const second = serve(event("7", 7, "p/b"));
  try {
    const endpoints = [first, second].map((s) => `http://127.0.0.1:${s.addr.port}`).join(",");
    const result = await run([
      "watch",
      "--prefix",
      "p/",
      "--from",
      "7",
      "--count",
      "2",
      "--endpoints",
      endpoints,
    ]);
    assert.equal(result.code, 0, result.err);
    assert.equal(result.out, "7\tput\tp/a\tp/a\n7\tput\tp/b\tp/b\n");
    assert.equal(asked.length, 2, JSON.stringify(asked));
    assert.equal(new URL(asked[0]!.url).searchParams.get("from"), "7");
    assert.equal(asked[0]!.lastEventId, null);
    assert.equal(new URL(asked[1]!.url).searchParams.get("from"), null);
    assert.equal(new URL(asked[1]!.url).searchParams.get("prefix"), "p/");
    assert.equal(asked[1]!.lastEventId, "7:1");
  } finally {
    await Promise.all([first.shutdown(), second.shutdown()]);
  }
});

Deno.test("watch: a key or value with a tab or line break stays on its line, as a JSON string", async () => {
  const events = [
    { index: 3, type: "put", k: "p/a", v: "line 1\nline 2\tend" },
    { index: 4, type: "put", k: "p/\tb", v: "plain" },
    { index: 5, type: "delete", k: "p/a", v: null },
  ];
  const body = events.map((e) => `id: ${e.index}\ndata: ${JSON.stringify(e)}\n\n`).join("");
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () =>
      new Response(body, {
        headers: { "content-type": "text/event-stream", "x-raftkv-index": "2" },
      }),
  );
  try {
    const result = await run([
      "watch",
      "--prefix",
      "p/",
      "--from",
      "3",
      "--count",
      "3",
      "--endpoints",
      `http://127.0.0.1:${server.addr.port}`,
    ]);
    assert.equal(result.code, 0, result.err);
    assert.equal(
      result.out,
      '3\tput\tp/a\t"line 1\\nline 2\\tend"\n4\tput\t"p/\\tb"\tplain\n5\tdelete\tp/a\t\n',
    );
  } finally {
    await server.shutdown();
  }
});

Deno.test("lock: a waiter whose key ahead is older than the nodes' history waits from the index it last saw, not from that key's creation", async () => {
  // The key ahead, jobs/lock/5, was created at index 5, before the history a node keeps: a
  // blocking read from index 5 is answered at once (index 1000). Asking from 5 again would spin;
  // the next read must ask from 1000. After it the key is gone and the lock is this client's.
  const waits: string[] = [];
  let released = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    const json = (body: unknown, status = 200) =>
      Response.json(body, { status, headers: { "x-raftkv-index": "1000" } });
    await req.body?.cancel();
    if (url.pathname === "/v1/leases" && req.method === "POST") {
      return json({ id: 50, ttl: "10s", ttl_ms: 10_000, index: 50 }, 201);
    }
    if (url.pathname === "/v1/leases/50/keepalive") return json({ id: 50, ttl_ms: 10_000 });
    if (url.pathname === "/v1/leases/50" && req.method === "DELETE") {
      released = true;
      return json({ id: 50, revoked: true, deleted: ["jobs/lock/50"], index: 1002 });
    }
    if (url.pathname === "/v1/data/jobs%2Flock%2F50" && req.method === "PUT") {
      assert.equal(url.search, "?cas=0&lease=50");
      return json({ k: "jobs/lock/50", v: "me", index: 51, create_index: 51, mod_index: 51 });
    }
    const mine = { k: "jobs/lock/50", v: "me", create_index: 51 };
    if (url.pathname === "/v1/data" && url.searchParams.get("prefix") === "jobs/lock/") {
      const ahead = { k: "jobs/lock/5", v: "other", create_index: 5 };
      return json({ items: waits.length < 2 ? [ahead, mine] : [mine], next: null });
    }
    if (url.pathname === "/v1/data/jobs%2Flock%2F5" && waits.length < 4) {
      waits.push(url.searchParams.get("index")!);
      return waits.length < 2 ? json({ k: "jobs/lock/5", v: "other" }) : json({}, 404);
    }
    return json({ error: `unexpected ${req.method} ${url.pathname}${url.search}` }, 400);
  });
  try {
    const result = await run([
      "lock",
      "jobs/lock",
      "--endpoints",
      `http://127.0.0.1:${server.addr.port}`,
      "--",
      "true",
    ]);
    assert.equal(result.code, 0, result.err);
    assert.deepEqual(waits, ["5", "1000"]);
    assert.match(result.err, /waiting for jobs\/lock\/5 \(held or waited for by other\), 1 ahead/);
    assert.match(result.err, /holding jobs\/lock\/50 \(create_index 51, lease 50\); running true/);
    assert.ok(released, "the lease was revoked after the command");
  } finally {
    await server.shutdown();
  }
});
