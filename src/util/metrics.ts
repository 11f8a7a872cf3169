/**
 * A small metrics registry: counters, gauges and histograms, with or without labels, rendered in
 * the Prometheus text exposition format 0.0.4 (what `GET /metrics` serves).
 *
 * Made for instrumenting hot paths: a metric without labels is a plain object whose `inc`,
 * `set` and `observe` allocate nothing, and a histogram is a fixed array of bucket counts. A
 * labelled metric ({@linkcode CounterVec}, {@linkcode GaugeVec}, {@linkcode HistogramVec}) hands
 * out one child per combination of label values; look the child up once and keep it where the
 * labels are known in advance (a peer, a route). Values that already live elsewhere (a term, a
 * queue's length) are best copied into gauges just before a scrape, with
 * {@linkcode MetricsRegistry.onCollect}, so that the hot path does not touch them at all.
 *
 * Names follow the Prometheus conventions: counters end in `_total`, durations are in
 * `_seconds`, sizes in `_bytes`.
 *
 * @example Usage
 * ```ts
 * import { MetricsRegistry } from "./metrics.ts";
 *
 * const registry = new MetricsRegistry();
 * const writes = registry.counter("app_writes_total", "Writes done.");
 * const latency = registry.histogramVec(
 *   "app_request_duration_seconds",
 *   "Request latency.",
 *   [0.01, 0.1, 1],
 *   ["route"],
 * );
 * writes.inc();
 * latency.labels("/a").observe(0.05);
 * registry.render().includes('app_request_duration_seconds_bucket{route="/a",le="0.1"} 1'); // true
 * ```
 *
 * @module
 */

/** The content type of {@linkcode MetricsRegistry.render}'s output. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Something that takes observations: a {@linkcode Histogram}, or a stand-in in a test. */
export interface Observer {
  /** Records one observation. */
  observe(value: number): void;
}

/** A value that only goes up (resets to 0 when the process restarts). */
export class Counter {
  #value = 0;
  /** The label pairs rendered with the value, `a="x",b="y"` ("" for none). */
  readonly #labels: string;

  /** Use {@linkcode MetricsRegistry.counter} or {@linkcode CounterVec.labels}. */
  constructor(labels = "") {
    this.#labels = labels;
  }

  /** The current value. */
  get value(): number {
    return this.#value;
  }

  /**
   * Adds `n` (default 1).
   *
   * @throws {RangeError} If `n` is negative or not a number: a counter never goes down.
   */
  inc(n = 1): void {
    if (!(n >= 0)) throw new RangeError(`a counter cannot be increased by ${n}`);
    this.#value += n;
  }

  /** Appends this counter's sample line to `out`. */
  _render(name: string, out: string[]): void {
    out.push(`${name}${_braces(this.#labels)} ${formatValue(this.#value)}`);
  }
}

/** A value that goes up and down. */
export class Gauge {
  #value = 0;
  readonly #labels: string;

  /** Use {@linkcode MetricsRegistry.gauge} or {@linkcode GaugeVec.labels}. */
  constructor(labels = "") {
    this.#labels = labels;
  }

  /** The current value. */
  get value(): number {
    return this.#value;
  }

  /** Sets the value. */
  set(value: number): void {
    this.#value = value;
  }

  /** Adds `n` (default 1; negative to subtract). */
  inc(n = 1): void {
    this.#value += n;
  }

  /** Subtracts `n` (default 1). */
  dec(n = 1): void {
    this.#value -= n;
  }

  /** Appends this gauge's sample line to `out`. */
  _render(name: string, out: string[]): void {
    out.push(`${name}${_braces(this.#labels)} ${formatValue(this.#value)}`);
  }
}

/**
 * Counts observations in buckets with fixed upper bounds (plus `+Inf`), and keeps their sum:
 * enough to estimate quantiles and averages on the server side.
 */
export class Histogram implements Observer {
  /** The upper bounds, ascending, without `+Inf`. */
  readonly bounds: Float64Array;
  /** Observations per bucket (not cumulative); the last one is above every bound. */
  readonly #counts: Float64Array;
  #sum = 0;
  #count = 0;
  readonly #labels: string;

  /** Use {@linkcode MetricsRegistry.histogram} or {@linkcode HistogramVec.labels}. */
  constructor(bounds: Float64Array, labels = "") {
    this.bounds = bounds;
    this.#counts = new Float64Array(bounds.length + 1);
    this.#labels = labels;
  }

  /** How many observations were made. */
  get count(): number {
    return this.#count;
  }

  /** The sum of every observation. */
  get sum(): number {
    return this.#sum;
  }

  /** Records one observation (seconds, bytes, ...: the unit the metric's name says). */
  observe(value: number): void {
    const bounds = this.bounds;
    const n = bounds.length;
    let i = 0;
    while (i < n && value > bounds[i]!) i++;
    this.#counts[i]!++;
    this.#sum += value;
    this.#count++;
  }

  /** The cumulative count of observations at or below each bound, then the total. */
  cumulative(): number[] {
    const out: number[] = [];
    let total = 0;
    for (const c of this.#counts) out.push(total += c);
    return out;
  }

  /** Appends the bucket, sum and count lines to `out`. */
  _render(name: string, out: string[]): void {
    const labels = this.#labels;
    const sep = labels === "" ? "" : ",";
    let total = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      total += this.#counts[i]!;
      out.push(
        `${name}_bucket{${labels}${sep}le="${formatValue(this.bounds[i]!)}"} ${formatValue(total)}`,
      );
    }
    out.push(`${name}_bucket{${labels}${sep}le="+Inf"} ${formatValue(this.#count)}`);
    out.push(`${name}_sum${_braces(labels)} ${formatValue(this.#sum)}`);
    out.push(`${name}_count${_braces(labels)} ${formatValue(this.#count)}`);
  }
}

/** What a labelled metric's children have in common: they render their own sample lines. */
export interface MetricChild {
  /** Appends the child's sample lines, for the metric `name`, to `out`. */
  _render(name: string, out: string[]): void;
}

/**
 * A labelled metric: one child metric per combination of label values, made on first use and
 * kept (in the order made) until removed.
 */
export class MetricVec<C extends MetricChild> {
  /** The label names, in the order `labels()` takes their values. */
  readonly labelNames: readonly string[];
  readonly #make: (labels: string) => C;
  /** Children by the first label's value, then the next... (no joined keys: no collisions). */
  readonly #tree = new Map<string, unknown>();
  /** The children with their values, in the order made (the order they are rendered in). */
  readonly #children = new Map<C, readonly string[]>();

  /** Use the registry's `...Vec` methods. */
  constructor(labelNames: readonly string[], make: (labels: string) => C) {
    this.labelNames = labelNames;
    this.#make = make;
  }

  /**
   * The child for these label values (one per label name, in order), made on first use. A vector
   * without label names has one child, made by `labels()`: a metric that has a sample only while
   * it is made (see {@linkcode MetricVec.prototype.clear}).
   *
   * @throws {RangeError} If the number of values is not the number of label names.
   */
  labels(...values: string[]): C {
    const n = this.labelNames.length;
    if (values.length !== n) {
      throw new RangeError(
        `expected ${n} label values (${this.labelNames.join(", ")}), got ${values.length}`,
      );
    }
    let node = this.#tree;
    for (let i = 0; i < n - 1; i++) {
      let next = node.get(values[i]!) as Map<string, unknown> | undefined;
      if (next === undefined) node.set(values[i]!, next = new Map());
      node = next;
    }
    // Without label names, the one child sits under "" (a metric that may have no sample).
    const last = n === 0 ? "" : values[n - 1]!;
    let child = node.get(last) as C | undefined;
    if (child === undefined) {
      const pairs = this.labelNames.map((name, i) => `${name}="${escapeLabelValue(values[i]!)}"`);
      child = this.#make(pairs.join(","));
      node.set(last, child);
      this.#children.set(child, [...values]);
    }
    return child;
  }

  /** Removes the child for these label values, if there is one: it is no longer rendered. */
  remove(...values: string[]): void {
    const path: Map<string, unknown>[] = [this.#tree];
    for (let i = 0; i < values.length - 1; i++) {
      const next = path[i]!.get(values[i]!) as Map<string, unknown> | undefined;
      if (next === undefined) return;
      path.push(next);
    }
    const last = path.at(-1)!;
    const key = values.length === 0 ? "" : values.at(-1)!;
    const child = last.get(key) as C | undefined;
    if (child === undefined || values.length !== this.labelNames.length) return;
    last.delete(key);
    this.#children.delete(child);
  }

  /** Removes every child. */
  clear(): void {
    this.#tree.clear();
    this.#children.clear();
  }

  /** The label values of every child, in the order made. */
  keys(): (readonly string[])[] {
    return [...this.#children.values()];
  }

  /** Whether there is any child to render. */
  get _empty(): boolean {
    return this.#children.size === 0;
  }

  /** Appends every child's lines to `out`. */
  _render(name: string, out: string[]): void {
    for (const child of this.#children.keys()) child._render(name, out);
  }
}

/** A labelled {@linkcode Counter}. */
export type CounterVec = MetricVec<Counter>;
/** A labelled {@linkcode Gauge}. */
export type GaugeVec = MetricVec<Gauge>;
/** A labelled {@linkcode Histogram}. */
export type HistogramVec = MetricVec<Histogram>;

/** The Prometheus metric types this registry makes. */
export type MetricType = "counter" | "gauge" | "histogram";

interface _Family {
  name: string;
  help: string;
  type: MetricType;
  metric: MetricChild & { _empty?: boolean };
}

/**
 * Holds a process's metrics and renders them for a scrape. Every metric name may be registered
 * once; see the module doc for an example.
 */
export class MetricsRegistry {
  readonly #families = new Map<string, _Family>();
  readonly #collectors: (() => void)[] = [];

  /**
   * Registers a counter without labels.
   *
   * @throws {RangeError} If the name is not a valid metric name or is taken.
   */
  counter(name: string, help: string): Counter {
    return this.#add(name, help, "counter", new Counter());
  }

  /** Registers a counter with labels (see {@linkcode MetricsRegistry.counter}). */
  counterVec(name: string, help: string, labelNames: readonly string[]): CounterVec {
    _checkLabelNames(name, labelNames, false);
    return this.#add(name, help, "counter", new MetricVec(labelNames, (l) => new Counter(l)));
  }

  /**
   * Registers a gauge without labels.
   *
   * @throws {RangeError} If the name is not a valid metric name or is taken.
   */
  gauge(name: string, help: string): Gauge {
    return this.#add(name, help, "gauge", new Gauge());
  }

  /** Registers a gauge with labels (see {@linkcode MetricsRegistry.gauge}). */
  gaugeVec(name: string, help: string, labelNames: readonly string[]): GaugeVec {
    _checkLabelNames(name, labelNames, false);
    return this.#add(name, help, "gauge", new MetricVec(labelNames, (l) => new Gauge(l)));
  }

  /**
   * Registers a histogram without labels, with buckets at the given upper bounds (ascending,
   * finite; `+Inf` is always added).
   *
   * @throws {RangeError} If the name is not a valid metric name or is taken, or the bounds are
   * not ascending finite numbers.
   */
  histogram(name: string, help: string, bounds: readonly number[]): Histogram {
    return this.#add(name, help, "histogram", new Histogram(_checkBounds(name, bounds)));
  }

  /** Registers a histogram with labels (see {@linkcode MetricsRegistry.histogram}). */
  histogramVec(
    name: string,
    help: string,
    bounds: readonly number[],
    labelNames: readonly string[],
  ): HistogramVec {
    const checked = _checkBounds(name, bounds);
    _checkLabelNames(name, labelNames, true);
    return this.#add(
      name,
      help,
      "histogram",
      new MetricVec(labelNames, (l) => new Histogram(checked, l)),
    );
  }

  /**
   * Adds a function called at the start of every {@linkcode MetricsRegistry.render}, to copy
   * values kept elsewhere into gauges. One that throws is skipped for that scrape.
   */
  onCollect(collect: () => void): void {
    this.#collectors.push(collect);
  }

  /** The names registered, in order. */
  names(): string[] {
    return [...this.#families.keys()];
  }

  /**
   * Every metric in the text exposition format 0.0.4, in the order registered: `# HELP` and
   * `# TYPE` lines, then the samples. A labelled metric with no child yet is left out.
   */
  render(): string {
    for (const collect of this.#collectors) {
      try {
        collect();
      } catch {
        // A collector must not stop the scrape: its gauges keep their last values.
      }
    }
    const out: string[] = [];
    for (const f of this.#families.values()) {
      if (f.metric._empty === true) continue;
      out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
      f.metric._render(f.name, out);
    }
    return out.length === 0 ? "" : out.join("\n") + "\n";
  }

  #add<M extends MetricChild>(name: string, help: string, type: MetricType, metric: M): M {
    if (!_METRIC_NAME.test(name)) {
      throw new RangeError(`"${name}" is not a valid metric name (${_METRIC_NAME.source})`);
    }
    if (this.#families.has(name)) {
      throw new RangeError(`a metric named "${name}" is already registered`);
    }
    this.#families.set(name, { name, help, type, metric });
    return metric;
  }
}

/**
 * `count` bucket bounds from `start`, each `factor` times the one before.
 *
 * @example Usage
 * ```ts
 * import { exponentialBuckets } from "./metrics.ts";
 *
 * exponentialBuckets(0.001, 2, 4); // [0.001, 0.002, 0.004, 0.008]
 * ```
 *
 * @throws {RangeError} If `start` is not positive, `factor` not above 1 or `count` not positive.
 */
export function exponentialBuckets(start: number, factor: number, count: number): number[] {
  if (!(start > 0) || !(factor > 1) || !Number.isInteger(count) || count < 1) {
    throw new RangeError(
      `exponentialBuckets needs start > 0, factor > 1, count >= 1; got ${start}, ${factor}, ${count}`,
    );
  }
  const out: number[] = [];
  for (let i = 0, b = start; i < count; i++, b *= factor) out.push(b);
  return out;
}

/**
 * A sample value as the exposition format writes it: `+Inf`, `-Inf`, `NaN`, or the shortest
 * decimal that reads back as the same number.
 */
export function formatValue(value: number): string {
  if (Number.isFinite(value)) return String(value);
  if (Number.isNaN(value)) return "NaN";
  return value > 0 ? "+Inf" : "-Inf";
}

/** A label value escaped for the exposition format: `\` , `"` and line feed. */
export function escapeLabelValue(value: string): string {
  return /[\\"\n]/.test(value)
    ? value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")
    : value;
}

/** A `# HELP` text escaped for the exposition format: `\` and line feed. */
export function escapeHelp(help: string): string {
  return /[\\\n]/.test(help) ? help.replaceAll("\\", "\\\\").replaceAll("\n", "\\n") : help;
}

const _METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const _LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function _braces(labels: string): string {
  return labels === "" ? "" : `{${labels}}`;
}

function _checkLabelNames(metric: string, names: readonly string[], histogram: boolean): void {
  const seen = new Set<string>();
  for (const name of names) {
    if (!_LABEL_NAME.test(name) || name.startsWith("__")) {
      throw new RangeError(`metric "${metric}": "${name}" is not a valid label name`);
    }
    if (histogram && name === "le") {
      throw new RangeError(`metric "${metric}": a histogram cannot have a label named "le"`);
    }
    if (seen.has(name)) throw new RangeError(`metric "${metric}": label "${name}" repeats`);
    seen.add(name);
  }
}

function _checkBounds(metric: string, bounds: readonly number[]): Float64Array {
  if (bounds.length === 0) {
    throw new RangeError(`histogram "${metric}" needs at least one bucket bound`);
  }
  for (let i = 0; i < bounds.length; i++) {
    const b = bounds[i]!;
    if (!Number.isFinite(b) || (i > 0 && b <= bounds[i - 1]!)) {
      throw new RangeError(
        `histogram "${metric}": bucket bounds must be finite and ascending, got [${bounds}]`,
      );
    }
  }
  return Float64Array.from(bounds);
}
