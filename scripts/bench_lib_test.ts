import assert from "node:assert/strict";
import {
  base64,
  casRequest,
  cellKey,
  type CellResult,
  type CpuProfile,
  DEFAULT_CONNECTIONS,
  etcdGateway,
  formatBytes,
  formatMiB,
  formatMs,
  formatRate,
  formatRatio,
  latencyStats,
  liveDataBytes,
  type LoadResult,
  loadResultFromLatencies,
  markdownTable,
  median,
  parseBenchArgs,
  parseEtcdVersion,
  parseLoadAvg,
  parseProcStatCpuTicks,
  parseProcStatusKb,
  parseSnapshotBenchArgs,
  parseSnapshotLine,
  parseWrkResult,
  percentile,
  prefixEnd,
  preloadKey,
  profileTable,
  RANGE_KEYS,
  RANGE_PREFIX,
  rangeKey,
  rangeRequest,
  readRequest,
  resourceTable,
  resultsTable,
  summarizeCells,
  summarizeCpuProfile,
  systemLabel,
  tlsTable,
  UsageError,
  VALUE,
  writeRequest,
  writesDuring,
} from "./bench_lib.ts";

Deno.test("VALUE is 100 bytes and the same as in scripts/wrk/bench.lua", async () => {
  assert.equal(new TextEncoder().encode(VALUE).length, 100);
  const lua = await Deno.readTextFile(new URL("./wrk/bench.lua", import.meta.url));
  const match = /local VALUE = string\.rep\("([^"]*)", (\d+)\)/.exec(lua);
  assert.ok(match, "bench.lua defines VALUE with string.rep");
  assert.equal(match[1]!.repeat(Number(match[2])), VALUE);
});

Deno.test("preloadKey() pads to five digits", () => {
  assert.equal(preloadKey(0), "pre-00000");
  assert.equal(preloadKey(42), "pre-00042");
  assert.equal(preloadKey(9999), "pre-09999");
});

Deno.test("base64() encodes UTF-8 like etcd expects", () => {
  assert.equal(base64(""), "");
  assert.equal(base64("a"), "YQ==");
  assert.equal(base64("pre-00001"), "cHJlLTAwMDAx");
  assert.equal(base64("é"), "w6k=");
});

Deno.test("writeRequest() and readRequest() build both systems' requests", () => {
  assert.deepEqual(writeRequest("raftkv", "k1"), {
    method: "POST",
    path: "/v1/data",
    body: JSON.stringify({ k: "k1", v: VALUE }),
  });
  assert.deepEqual(readRequest("raftkv", "a/b"), { method: "GET", path: "/v1/data/a%2Fb" });
  const put = writeRequest("etcd", "k1", "/v3beta");
  assert.equal(put.path, "/v3beta/kv/put");
  assert.deepEqual(JSON.parse(put.body!), { key: btoa("k1"), value: btoa(VALUE) });
  const range = readRequest("etcd", "pre-00001");
  assert.equal(range.method, "POST");
  assert.equal(range.path, "/v3/kv/range");
  assert.deepEqual(JSON.parse(range.body!), { key: "cHJlLTAwMDAx" });
});

Deno.test("rangeRequest() and casRequest() build both systems' requests", () => {
  assert.equal(RANGE_KEYS, 100);
  assert.equal(rangeKey(0), "rng/000");
  assert.equal(rangeKey(99), "rng/099");
  assert.ok(rangeKey(99).startsWith(RANGE_PREFIX));
  assert.equal(prefixEnd("rng/"), "rng0");
  assert.throws(() => prefixEnd("a\u007f"), RangeError);
  assert.deepEqual(rangeRequest("raftkv"), { method: "GET", path: "/v1/data?prefix=rng%2F" });
  const range = rangeRequest("etcd");
  assert.equal(range.path, "/v3/kv/range");
  assert.deepEqual(JSON.parse(range.body!), { key: btoa("rng/"), range_end: btoa("rng0") });
  assert.deepEqual(casRequest("raftkv", "c/1"), {
    method: "PUT",
    path: "/v1/data/c%2F1?cas=0",
    body: JSON.stringify({ v: VALUE }),
  });
  const txn = casRequest("etcd", "c/1", "/v3beta");
  assert.equal(txn.path, "/v3beta/kv/txn");
  assert.deepEqual(JSON.parse(txn.body!), {
    compare: [{ key: btoa("c/1"), target: "CREATE", result: "EQUAL", create_revision: "0" }],
    success: [{ request_put: { key: btoa("c/1"), value: btoa(VALUE) } }],
  });
});

Deno.test("etcdGateway() and parseEtcdVersion() pick the JSON gateway of a version", () => {
  assert.equal(parseEtcdVersion("etcd Version: 3.4.23\nGit SHA: Not provided\n"), "3.4.23");
  assert.equal(parseEtcdVersion("etcd Version: v3.5.9"), "3.5.9");
  assert.equal(parseEtcdVersion("command not found"), null);
  assert.equal(etcdGateway("3.4.23"), "/v3");
  assert.equal(etcdGateway("3.5.0"), "/v3");
  assert.equal(etcdGateway("4.0.0"), "/v3");
  assert.equal(etcdGateway("3.3.25"), "/v3beta");
  assert.equal(etcdGateway("3.2.0"), "/v3alpha");
});

Deno.test("parseBenchArgs() fills in the defaults", () => {
  assert.deepEqual(parseBenchArgs([]), {
    help: false,
    durationSec: 10,
    connections: [...DEFAULT_CONNECTIONS],
    ops: ["writes", "reads", "ranges", "cas"],
    watchers: 1000,
    targets: ["leader", "follower"],
    etcd: true,
    runs: 1,
    json: undefined,
    loadgen: "auto",
    cpuProf: undefined,
    top: 15,
    tls: false,
  });
});

Deno.test("parseBenchArgs() reads every option", () => {
  assert.deepEqual(
    parseBenchArgs([
      "--duration",
      "3",
      "--connections=2, 8",
      "--only",
      "reads",
      "--target",
      "follower",
      "--no-etcd",
      "--runs",
      "5",
      "--json",
      "out.json",
      "--loadgen",
      "deno",
      "--cpu-prof",
      "prof",
      "--top",
      "20",
      "--tls",
    ]),
    {
      help: false,
      durationSec: 3,
      connections: [2, 8],
      ops: ["reads"],
      watchers: 0,
      targets: ["follower"],
      etcd: false,
      runs: 5,
      json: "out.json",
      loadgen: "deno",
      cpuProf: "prof",
      top: 20,
      tls: true,
    },
  );
  assert.equal(parseBenchArgs(["-h"]).help, true);
  assert.deepEqual(parseBenchArgs(["--target", "leader"]).targets, ["leader"]);
  assert.deepEqual(parseBenchArgs(["--only", "writes"]).ops, ["writes"]);
  assert.deepEqual(parseBenchArgs(["--only", "ranges"]).ops, ["ranges"]);
  assert.deepEqual(parseBenchArgs(["--only", "cas"]).ops, ["cas"]);
});

Deno.test("parseBenchArgs() rejects bad values and unknown options", () => {
  for (
    const args of [
      ["--duration", "0"],
      ["--duration", "1.5"],
      ["--duration", "x"],
      ["--connections", "1,,2"],
      ["--connections", "0"],
      ["--only", "deletes"],
      ["--target", "all"],
      ["--runs", "-1"],
      ["--loadgen", "ab"],
      ["--frobnicate"],
      ["positional"],
    ]
  ) {
    assert.throws(() => parseBenchArgs(args), UsageError, args.join(" "));
  }
});

const _WRK_LINE =
  "WRK_RESULT requests=20000 duration_us=10000000 p50_us=1500 p99_us=12000 p999_us=25000 " +
  "max_us=40000 mean_us=2100.5 non2xx=3 connect=0 read=1 write=0 timeout=2 status=3 sent=20005";

Deno.test("parseWrkResult() reads the line printed by bench.lua's done()", () => {
  const result = parseWrkResult(`Running 10s test @ http://127.0.0.1:1\n${_WRK_LINE}\n`);
  assert.deepEqual(result, {
    requests: 20000,
    durationSec: 10,
    rps: 2000,
    p50Ms: 1.5,
    p99Ms: 12,
    p999Ms: 25,
    maxMs: 40,
    meanMs: 2.1005,
    non2xx: 3,
    socketErrors: 3,
    errors: 6,
  });
});

Deno.test("parseWrkResult() fails without the line or with a field missing", () => {
  assert.throws(() => parseWrkResult("Requests/sec: 100\n"), /no WRK_RESULT line/);
  assert.throws(
    () => parseWrkResult(_WRK_LINE.replace(/ p99_us=\d+/, "")),
    /lacks a numeric p99_us/,
  );
});

Deno.test("percentile() uses the nearest rank", () => {
  const sorted = Array.from({ length: 1000 }, (_, i) => i + 1);
  assert.equal(percentile(sorted, 50), 500);
  assert.equal(percentile(sorted, 99), 990);
  assert.equal(percentile(sorted, 99.9), 999);
  assert.equal(percentile(sorted, 100), 1000);
  assert.equal(percentile(sorted, 0), 1);
  assert.equal(percentile([7], 99.9), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
});

Deno.test("median() takes the middle, or the mean of the two middles, ignoring NaN", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([5, NaN]), 5);
  assert.ok(Number.isNaN(median([])));
});

Deno.test("latencyStats() and loadResultFromLatencies() summarize latencies", () => {
  const latencies = [5, 1, 4, 2, 3];
  const stats = latencyStats(latencies);
  assert.deepEqual(stats, { count: 5, p50Ms: 3, p99Ms: 5, p999Ms: 5, maxMs: 5, meanMs: 3 });
  assert.deepEqual(latencies, [5, 1, 4, 2, 3], "the input is not sorted in place");
  const result: LoadResult = loadResultFromLatencies(latencies, 2, 1, 2);
  assert.equal(result.rps, 2.5);
  assert.equal(result.errors, 3);
  assert.equal(latencyStats([]).count, 0);
  assert.ok(Number.isNaN(latencyStats([]).maxMs));
});

Deno.test("parseProcStatCpuTicks() counts fields after the command name", () => {
  // Fields: pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
  // utime stime ...
  const stat = "1234 (deno (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
  assert.equal(parseProcStatCpuTicks(stat), 325);
  assert.throws(() => parseProcStatCpuTicks("garbage"), /not a \/proc/);
  assert.throws(() => parseProcStatCpuTicks("1 (a) S 1"), /no utime/);
});

Deno.test("parseProcStatusKb() and parseLoadAvg() read /proc text", () => {
  const status = "Name:\tdeno\nVmPeak:\t  999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
  assert.equal(parseProcStatusKb(status, "VmHWM"), 204800);
  assert.equal(parseProcStatusKb(status, "VmRSS"), 102400);
  assert.equal(parseProcStatusKb(status, "VmSwap"), null);
  assert.deepEqual(parseLoadAvg("1.73 1.31 0.98 2/171 28887\n"), [1.73, 1.31, 0.98]);
});

function _cell(
  system: "raftkv" | "etcd",
  run: number,
  rps: number,
  p99Ms: number,
  errors = 0,
  notes: string[] = [],
): CellResult {
  return {
    system,
    op: "writes",
    target: "leader",
    connections: 16,
    run,
    load: {
      requests: rps * 10,
      durationSec: 10,
      rps,
      p50Ms: p99Ms / 10,
      p99Ms,
      p999Ms: p99Ms * 2,
      maxMs: p99Ms * 3,
      meanMs: p99Ms / 5,
      non2xx: errors,
      socketErrors: 0,
      errors,
    },
    nodes: [
      { id: "a", role: "leader", cpuSec: rps / 100, cpuPct: rps / 10, peakRssKb: rps },
      { id: "b", role: "follower", cpuSec: 1, cpuPct: 10, peakRssKb: null },
    ],
    notes,
  };
}

Deno.test("summarizeCells() takes medians per system and cell over the runs", () => {
  const summaries = summarizeCells([
    _cell("raftkv", 1, 100, 10, 1),
    _cell("etcd", 1, 400, 4),
    _cell("raftkv", 2, 300, 30, 0, ["leader changed"]),
    _cell("etcd", 2, 200, 2),
    _cell("raftkv", 3, 200, 20, 2),
    _cell("etcd", 3, 300, 3),
  ]);
  assert.equal(summaries.length, 2);
  const [raftkv, etcd] = summaries;
  assert.equal(raftkv!.system, "raftkv");
  assert.equal(raftkv!.runs, 3);
  assert.equal(raftkv!.rps, 200);
  assert.equal(raftkv!.p99Ms, 20);
  assert.equal(raftkv!.p999Ms, 40);
  assert.equal(raftkv!.maxMs, 90);
  assert.equal(raftkv!.errors, 3);
  assert.deepEqual(raftkv!.cpuPct, [20, 10]);
  assert.deepEqual(raftkv!.peakRssKb, [300, null]);
  assert.deepEqual(raftkv!.notes, ["run 2: leader changed"]);
  assert.equal(etcd!.rps, 300);
  assert.equal(cellKey(etcd!), "writes/leader/16");
});

Deno.test("formatting helpers", () => {
  assert.equal(formatMs(0.4242), "0.42");
  assert.equal(formatMs(12.34), "12.3");
  assert.equal(formatMs(1042.4), "1042");
  assert.equal(formatMs(NaN), "-");
  assert.equal(formatRate(12345.6), "12,346");
  assert.equal(formatRate(Infinity), "-");
  assert.equal(formatRatio(1, 4), "0.25x");
  assert.equal(formatRatio(1, 0), "-");
  assert.equal(formatMiB(2048), "2");
  assert.equal(formatMiB(null), "-");
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(5 * 1024 ** 2), "5.0 MiB");
  assert.equal(formatBytes(3 * 1024 ** 3), "3.00 GiB");
});

Deno.test("markdownTable() pads columns and right-aligns numbers", () => {
  assert.equal(
    markdownTable(["name", "n"], [["a", "1"], ["bbbbbb", "100"]], [false, true]),
    [
      "| name   |   n |",
      "| ------ | --: |",
      "| a      |   1 |",
      "| bbbbbb | 100 |",
    ].join("\n"),
  );
});

Deno.test("resultsTable() adds etcd's columns and the ratios when etcd was measured", () => {
  const alone = resultsTable(summarizeCells([_cell("raftkv", 1, 100, 10)]));
  assert.ok(!alone.includes("etcd"));
  assert.equal(alone.split("\n").length, 3);
  const both = resultsTable(
    summarizeCells([_cell("raftkv", 1, 100, 10), _cell("etcd", 1, 400, 4)]),
  );
  const [header, , row] = both.split("\n");
  assert.ok(header!.includes("etcd req/s"));
  assert.ok(header!.includes("req/s ratio"));
  assert.ok(row!.includes("0.25x"), row);
  assert.ok(row!.includes("2.50x"), row);
  const resources = resourceTable(summarizeCells([_cell("raftkv", 1, 100, 10)]));
  assert.ok(resources.includes("10 / 10"), resources);
  assert.ok(resources.includes("0 / -"), resources);
});

Deno.test("tlsTable() sets each system's TLS cells beside its plaintext ones, which resultsTable() keeps to itself", () => {
  const tls = (cell: CellResult): CellResult => ({ ...cell, tls: true });
  const cells = [
    _cell("raftkv", 1, 400, 10),
    tls(_cell("raftkv", 1, 300, 15, 2)),
    _cell("etcd", 1, 500, 4),
    tls(_cell("etcd", 1, 250, 8)),
  ];
  const summaries = summarizeCells(cells);
  assert.deepEqual(summaries.map(systemLabel), ["raftkv", "raftkv+TLS", "etcd", "etcd+TLS"]);
  assert.equal(tlsTable(summarizeCells([_cell("raftkv", 1, 400, 10)])), null);
  const lines = tlsTable(summaries)!.split("\n");
  assert.equal(lines.length, 4);
  assert.match(lines[0]!, /plain req\/s .* TLS req\/s .* req\/s TLS\/plain \| p99 TLS\/plain/);
  assert.match(
    lines[2]!,
    /^\| raftkv +\| writes +\| leader +\| +16 \| +400 \|.*\| +300 \|.*\| +0 \/ 2 \| +0\.75x \| +1\.50x \|$/,
  );
  assert.match(lines[3]!, /^\| etcd .*\| +0\.50x \| +2\.00x \|$/);
  // The raftkv/etcd table compares plaintext with plaintext only.
  const results = resultsTable(summaries).split("\n");
  assert.equal(results.length, 3);
  assert.ok(results[2]!.includes("0.80x"), results[2]);
  assert.ok(resourceTable(summaries).includes("raftkv+TLS"));
});

Deno.test("summarizeCpuProfile() sums self time per function and per file", () => {
  const frame = (functionName: string, url = "", lineNumber = -1) => ({
    functionName,
    url,
    lineNumber,
    columnNumber: 0,
  });
  const profile: CpuProfile = {
    nodes: [
      { id: 1, callFrame: frame("(root)"), children: [2, 3, 4, 5] },
      { id: 2, callFrame: frame("(idle)") },
      { id: 3, callFrame: frame("apply", "file:///repo/src/kv/state_machine.ts", 9) },
      { id: 4, callFrame: frame("encode", "file:///repo/src/raft/codec.ts", 19) },
      { id: 5, callFrame: frame("(garbage collector)") },
    ],
    startTime: 0,
    endTime: 10_000,
    samples: [2, 3, 3, 4, 5],
    timeDeltas: [0, 4000, 1000, 2000, 1000],
  };
  // Each sample lasts until the next one; the last gets the mean (10000 / 5).
  const summary = summarizeCpuProfile(profile, 2);
  assert.equal(summary.totalMs, 10);
  assert.equal(summary.idleMs, 4);
  assert.deepEqual(summary.top.map((e) => [e.name, e.selfMs]), [
    ["apply (src/kv/state_machine.ts:10)", 3],
    ["(garbage collector)", 2],
  ]);
  assert.equal(summary.top[0]!.pct, 50);
  assert.deepEqual(summary.byFile.map((e) => e.name), [
    "src/kv/state_machine.ts",
    "(garbage collector)",
  ]);
  const table = profileTable(summary.top);
  assert.ok(
    table.includes("|   1 | apply (src/kv/state_machine.ts:10) |       3 |      50.0 |"),
    table,
  );
});

Deno.test("summarizeCpuProfile() falls back to hit counts without samples", () => {
  const summary = summarizeCpuProfile({
    nodes: [
      { id: 1, callFrame: { functionName: "f", url: "", lineNumber: 0 }, hitCount: 3 },
      { id: 2, callFrame: { functionName: "g", url: "", lineNumber: 0 }, hitCount: 1 },
    ],
    startTime: 0,
    endTime: 4000,
  });
  assert.deepEqual(summary.top.map((e) => [e.name, e.selfMs]), [["f", 3], ["g", 1]]);
});

Deno.test("parseSnapshotLine() reads the node's snapshot log line only", () => {
  assert.deepEqual(
    parseSnapshotLine(
      "2026-11-26T07:14:56.117Z INFO  node-1: snapshot at index 5000 (4999 keys) in 26 ms",
    ),
    { index: 5000, keys: 4999, ms: 26 },
  );
  assert.equal(parseSnapshotLine("INFO node-1: sending snapshot at index 5000 to node-2"), null);
  assert.equal(parseSnapshotLine("INFO node-1: leader in term 2"), null);
});

Deno.test("writesDuring() picks the writes in flight during a window", () => {
  const writes = [
    { dueMs: 0, doneMs: 5, status: 200 }, // ended before
    { dueMs: 8, doneMs: 12, status: 200 }, // overlaps the start
    { dueMs: 12, doneMs: 14, status: 200 }, // inside
    { dueMs: 15, doneMs: 40, status: 200 }, // overlaps the end
    { dueMs: 16, doneMs: 17, status: 503 }, // failed inside
    { dueMs: 21, doneMs: 22, status: 200 }, // after
  ];
  assert.deepEqual(writesDuring(writes, 10, 20), { latenciesMs: [4, 2, 25], failed: 1 });
});

Deno.test("parseSnapshotBenchArgs() fills in the defaults and checks values", () => {
  assert.deepEqual(parseSnapshotBenchArgs([]), {
    help: false,
    keys: 1_000_000,
    threshold: 100_000,
    connections: 256,
    rate: 200,
    quietSec: 5,
    maxMinutes: 45,
    loadgen: "auto",
    json: undefined,
  });
  const options = parseSnapshotBenchArgs([
    "--keys",
    "5000",
    "--threshold=1000",
    "--loadgen",
    "deno",
  ]);
  assert.equal(options.keys, 5000);
  assert.equal(options.threshold, 1000);
  assert.equal(options.loadgen, "deno");
  assert.throws(() => parseSnapshotBenchArgs(["--keys", "0"]), UsageError);
  assert.throws(() => parseSnapshotBenchArgs(["--rate", "fast"]), UsageError);
  assert.throws(() => parseSnapshotBenchArgs(["--loadgen", "ab"]), UsageError);
  assert.throws(() => parseSnapshotBenchArgs(["--nope"]), UsageError);
});

Deno.test("liveDataBytes() counts the digits of every key", () => {
  assert.equal(liveDataBytes("k-", 0, 100), 0);
  assert.equal(liveDataBytes("k-", 1, 100), 103);
  assert.equal(liveDataBytes("", 10, 0), 10);
  assert.equal(liveDataBytes("", 11, 0), 12);
  assert.equal(liveDataBytes("", 1_000_000, 0), 5_888_890);
  assert.equal(liveDataBytes("k-", 1_000_000, 100), 107_888_890);
});

Deno.test("parseBenchArgs() runs the watch fan-out cell alone with --only watch", () => {
  const o = parseBenchArgs(["--only", "watch", "--watchers", "50"]);
  assert.deepEqual([o.ops, o.watchers], [[], 50]);
  assert.equal(parseBenchArgs(["--watchers", "0"]).watchers, 0);
  assert.equal(parseBenchArgs(["--only", "watch"]).watchers, 1000);
});
