/**
 * The process metrics a node can report, with the names and meanings a Go program such as etcd
 * gives them (see https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics),
 * so that the same dashboards work: `process_cpu_seconds_total`, `process_resident_memory_bytes`
 * and `process_start_time_seconds`; and the JavaScript heap, `raftkv_heap_used_bytes` and
 * `raftkv_heap_total_bytes`.
 *
 * Every value is read when the registry renders (at each scrape): the CPU time is `getrusage`'s
 * (user and system, as `process.cpuUsage()` reports it), the resident size and the heap
 * {@linkcode Deno.memoryUsage}'s, and the start the runtime's time origin
 * (`performance.timeOrigin`, a few milliseconds after the process started). None needs a
 * permission. A read that fails leaves its series out of that scrape and never fails the scrape.
 *
 * Not reported: `process_open_fds`, `process_max_fds` and `process_virtual_memory_bytes`. They
 * come from `/proc`, and Deno lets a program read `/proc` only if it was started with
 * `--allow-all` and has given up no permission since: a node gives up `--allow-run` at start, and
 * its compiled binary has no `--allow-all`. Count a node's descriptors from outside (node
 * exporter, cAdvisor's `container_file_descriptors`, `ls /proc/PID/fd`).
 *
 * @example Usage
 * ```ts
 * import { registerProcessMetrics } from "./process_metrics.ts";
 * import { MetricsRegistry } from "./metrics.ts";
 *
 * const registry = new MetricsRegistry();
 * registerProcessMetrics(registry);
 * const text = registry.render();
 * console.assert(text.includes("# TYPE process_cpu_seconds_total counter"));
 * console.assert(text.includes("# TYPE raftkv_heap_used_bytes gauge"));
 * ```
 *
 * @module
 */

import process from "node:process";
import type { GaugeVec, MetricsRegistry } from "./metrics.ts";

/**
 * Registers the process metrics (see the module doc) in `registry`, read at each render.
 *
 * @example Usage
 * ```ts
 * import { registerProcessMetrics } from "./process_metrics.ts";
 * import { MetricsRegistry } from "./metrics.ts";
 *
 * const registry = new MetricsRegistry();
 * registerProcessMetrics(registry);
 * console.assert(/^raftkv_heap_total_bytes \d+$/m.test(registry.render()));
 * ```
 *
 * @param registry Where to register them.
 * @throws {RangeError} If any of them is already registered there.
 */
export function registerProcessMetrics(registry: MetricsRegistry): void {
  const cpu = registry.counterVec(
    "process_cpu_seconds_total",
    "User and system CPU time this process has used, in seconds.",
    [],
  );
  const resident = registry.gaugeVec(
    "process_resident_memory_bytes",
    "Resident memory size of this process, in bytes (its resident set).",
    [],
  );
  const start = registry.gaugeVec(
    "process_start_time_seconds",
    "When this process started, in seconds since the Unix epoch (the runtime's time origin).",
    [],
  );
  const heapUsed = registry.gaugeVec(
    "raftkv_heap_used_bytes",
    "Bytes of the JavaScript heap in use (V8's used heap size).",
    [],
  );
  const heapTotal = registry.gaugeVec(
    "raftkv_heap_total_bytes",
    "Bytes of the JavaScript heap V8 has reserved, used or not (its total heap size).",
    [],
  );
  start.labels().set(performance.timeOrigin / 1000);

  registry.onCollect(() => {
    // Each series on its own: one that cannot be read is left out of this scrape, not stale.
    const usage = _try(() => process.cpuUsage());
    if (usage === null) cpu.clear();
    else {
      // A counter only goes up: it counts up to the value read (from 0 if it was left out).
      const child = cpu.labels();
      child.inc(Math.max(0, (usage.user + usage.system) / 1e6 - child.value));
    }
    const memory = _try(() => Deno.memoryUsage());
    // A resident size of 0 is one the runtime could not read.
    _show(resident, memory !== null && memory.rss > 0 ? memory.rss : null);
    _show(heapUsed, memory?.heapUsed ?? null);
    _show(heapTotal, memory?.heapTotal ?? null);
  });
}

/** Sets the one child of `gauge` to `value`, or leaves the series out of the scrape for null. */
function _show(gauge: GaugeVec, value: number | null): void {
  if (value === null) gauge.clear();
  else gauge.labels().set(value);
}

/** `read()`, or null if it throws. */
function _try<T>(read: () => T): T | null {
  try {
    return read();
  } catch {
    return null;
  }
}
