import assert from "node:assert/strict";
import { MetricsRegistry } from "./metrics.ts";
import { registerProcessMetrics } from "./process_metrics.ts";
import { parseSamples, sample } from "../../testing/prometheus.ts";

const LINUX = Deno.build.os === "linux";
const PROCESS_SERIES = [
  "process_cpu_seconds_total",
  "process_resident_memory_bytes",
  "process_start_time_seconds",
];

/** A registry with the process metrics, and a scrape of it. */
function _registry(): () => Map<string, number> {
  const registry = new MetricsRegistry();
  registerProcessMetrics(registry);
  return () => parseSamples(registry.render());
}

/** The `kB` value of a line of `/proc/self/status`, in bytes. */
function _status(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(
    Deno.readTextFileSync("/proc/self/status"),
  );
  assert.ok(m, `no ${field} in /proc/self/status`);
  return Number(m[1]) * 1024;
}

/** utime + stime of `/proc/self/stat`, in seconds. */
function _procCpuSeconds(): number {
  const text = Deno.readTextFileSync("/proc/self/stat");
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * Runs `code` in a new Deno process (with `flags`, and the module's URLs as `MODULE` and
 * `METRICS`) after the shell command `setup`, and returns what it printed and when it ran.
 */
async function _run(
  setup: string,
  flags: string[],
  code: string,
): Promise<{ text: string; started: number; ended: number }> {
  const prelude = `
    const MODULE = ${JSON.stringify(new URL("./process_metrics.ts", import.meta.url).href)};
    const METRICS = ${JSON.stringify(new URL("./metrics.ts", import.meta.url).href)};
  `;
  const file = Deno.makeTempFileSync({ prefix: "process_metrics_", suffix: ".ts" });
  try {
    Deno.writeTextFileSync(file, prelude + code);
    const started = Date.now() / 1000;
    const out = await new Deno.Command("bash", {
      args: ["-c", `${setup} && exec "$@"`, "bash", Deno.execPath(), "run", ...flags, file],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const ended = Date.now() / 1000;
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    return { text: new TextDecoder().decode(out.stdout), started, ended };
  } finally {
    Deno.removeSync(file);
  }
}

/** A program that prints `n` scrapes of the process metrics, a blank line after each. */
const printScrapes = (n: number) => `
  const { registerProcessMetrics } = await import(MODULE);
  const { MetricsRegistry } = await import(METRICS);
  const r = new MetricsRegistry();
  registerProcessMetrics(r);
  for (let i = 0; i < ${n}; i++) console.log(r.render());
`;

/** When this process started, in seconds since the epoch, from `/proc`. */
function _procStartSeconds(): number {
  const btime = /^btime (\d+)$/m.exec(Deno.readTextFileSync("/proc/stat"))![1]!;
  const text = Deno.readTextFileSync("/proc/self/stat");
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return Number(btime) + Number(fields[19]) / 100;
}

Deno.test({
  name: "every process series is there, with the types, and the values /proc has",
  ignore: !LINUX,
  fn() {
    const registry = new MetricsRegistry();
    registerProcessMetrics(registry);
    const text = registry.render();
    for (const name of PROCESS_SERIES) {
      const type = name === "process_cpu_seconds_total" ? "counter" : "gauge";
      assert.ok(text.includes(`# TYPE ${name} ${type}\n`), `no ${name} ${type} in:\n${text}`);
    }
    const s = parseSamples(text);
    // Memory: within a tenth of what /proc/self/status says (it moves between the two reads).
    const rss = sample(s, "process_resident_memory_bytes");
    assert.ok(Math.abs(rss - _status("VmRSS")) < 0.1 * rss, `RSS ${rss} vs ${_status("VmRSS")}`);
    assert.ok(sample(s, "raftkv_heap_used_bytes") > 0);
    assert.ok(sample(s, "raftkv_heap_used_bytes") <= sample(s, "raftkv_heap_total_bytes"));
    // The start: the runtime's time origin, not before the process's in /proc (btime is whole
    // seconds: up to 1 s early), nor after now. (A test module may run in a worker of the test
    // runner, whose time origin is its own; a node's is its process's: see the subprocess test
    // below and the metrics e2e test.)
    const start = sample(s, "process_start_time_seconds");
    const procStart = _procStartSeconds();
    assert.ok(
      start >= procStart && start <= Date.now() / 1000,
      `start ${start}, /proc ${procStart}`,
    );
  },
});

Deno.test({
  name: "process_cpu_seconds_total never goes down, rises as CPU is burnt, and agrees with /proc",
  ignore: !LINUX,
  fn() {
    const scrape = _registry();
    const first = sample(scrape(), "process_cpu_seconds_total");
    let last = first;
    const deadline = performance.now() + 10_000;
    let x = 0;
    // Burn CPU in slices until the counter shows 0.1 s more (the machine may be busy).
    while (last < first + 0.1) {
      assert.ok(performance.now() < deadline, `CPU counter stuck at ${last} (from ${first})`);
      const slice = performance.now() + 20;
      while (performance.now() < slice) x += Math.sqrt(x + 1);
      const now = sample(scrape(), "process_cpu_seconds_total");
      assert.ok(now >= last, `the counter went down: ${last} then ${now}`);
      last = now;
    }
    assert.ok(x > 0);
    // /proc counts in ticks of 1/100 s: within a few of them, read just after.
    const proc = _procCpuSeconds();
    const counter = sample(scrape(), "process_cpu_seconds_total");
    assert.ok(Math.abs(counter - proc) < 0.1, `the counter says ${counter} s, /proc ${proc} s`);
  },
});

Deno.test({
  name: "a process that may not read /proc (no --allow-all, as a node) reports every series",
  ignore: !LINUX,
  async fn() {
    // None of them needs /proc, which that process may not read.
    const { text, started, ended } = await _run("true", ["--allow-read"], printScrapes(2));
    const scrapes = text.split("\n\n").filter((t) => t.trim() !== "").map(parseSamples);
    assert.equal(scrapes.length, 2, text);
    for (const s of scrapes) {
      assert.deepEqual(PROCESS_SERIES.filter((n) => s.has(n)), PROCESS_SERIES, text);
      assert.ok(sample(s, "process_cpu_seconds_total") > 0);
      assert.ok(sample(s, "process_resident_memory_bytes") > 10e6);
      assert.ok(sample(s, "raftkv_heap_used_bytes") > 0);
      // The runtime's time origin: just after the process started.
      const start = sample(s, "process_start_time_seconds");
      assert.ok(start >= started && start <= ended, `${start} not in [${started}, ${ended}]`);
    }
  },
});
