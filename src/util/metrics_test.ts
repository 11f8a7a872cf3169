import assert from "node:assert/strict";
import {
  escapeHelp,
  escapeLabelValue,
  exponentialBuckets,
  formatValue,
  METRICS_CONTENT_TYPE,
  MetricsRegistry,
} from "./metrics.ts";
import { findPromtool, parseSamples, promtoolCheck } from "../../testing/prometheus.ts";

const PROMTOOL = findPromtool();

Deno.test("a registry renders counters, gauges and histograms in the text format 0.0.4", () => {
  const r = new MetricsRegistry();
  const c = r.counter("x_requests_total", "Requests served.");
  const g = r.gauge("x_queue_depth", "Items waiting.");
  const h = r.histogram("x_latency_seconds", "Latency.", [0.1, 1]);
  c.inc();
  c.inc(2);
  g.set(7);
  g.dec(2);
  for (const v of [0.05, 0.1, 0.5, 3]) h.observe(v);
  assert.equal(
    r.render(),
    [
      "# HELP x_requests_total Requests served.",
      "# TYPE x_requests_total counter",
      "x_requests_total 3",
      "# HELP x_queue_depth Items waiting.",
      "# TYPE x_queue_depth gauge",
      "x_queue_depth 5",
      "# HELP x_latency_seconds Latency.",
      "# TYPE x_latency_seconds histogram",
      'x_latency_seconds_bucket{le="0.1"} 2',
      'x_latency_seconds_bucket{le="1"} 3',
      'x_latency_seconds_bucket{le="+Inf"} 4',
      "x_latency_seconds_sum 3.65",
      "x_latency_seconds_count 4",
      "",
    ].join("\n"),
  );
  assert.equal(METRICS_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
});

Deno.test("a histogram counts a value equal to a bound in that bound's bucket", () => {
  const r = new MetricsRegistry();
  const h = r.histogram("x_seconds", "x", [1, 2, 4]);
  for (const v of [0, 1, 1.5, 2, 4, 4.0001, -1]) h.observe(v);
  assert.deepEqual(h.cumulative(), [3, 5, 6, 7]);
  assert.equal(h.count, 7);
  assert.equal(h.sum, 0 + 1 + 1.5 + 2 + 4 + 4.0001 - 1);
});

Deno.test("labelled metrics render one series per label set, in the order made", () => {
  const r = new MetricsRegistry();
  const v = r.counterVec("x_http_requests_total", "Requests.", ["route", "code"]);
  v.labels("/b", "200").inc();
  v.labels("/a", "404").inc(2);
  v.labels("/b", "200").inc();
  assert.equal(v.labels("/b", "200").value, 2);
  const h = r.histogramVec("x_rtt_seconds", "RTT.", [0.5], ["peer"]);
  h.labels("n2").observe(0.25);
  const text = r.render();
  assert.ok(
    text.includes(
      'x_http_requests_total{route="/b",code="200"} 2\nx_http_requests_total{route="/a",code="404"} 2\n',
    ),
    text,
  );
  assert.ok(text.includes('x_rtt_seconds_bucket{peer="n2",le="0.5"} 1\n'), text);
  assert.ok(text.includes('x_rtt_seconds_bucket{peer="n2",le="+Inf"} 1\n'), text);
  assert.ok(text.includes('x_rtt_seconds_sum{peer="n2"} 0.25\n'), text);
  assert.ok(text.includes('x_rtt_seconds_count{peer="n2"} 1\n'), text);
  assert.deepEqual(v.keys(), [["/b", "200"], ["/a", "404"]]);
});

Deno.test("label values that join to the same string stay separate series", () => {
  const r = new MetricsRegistry();
  const v = r.gaugeVec("x_g", "g", ["a", "b"]);
  v.labels("p,q", "r").set(1);
  v.labels("p", "q,r").set(2);
  v.labels("p\u0000q", "r").set(3);
  v.labels("p", "q\u0000r").set(4);
  assert.deepEqual(v.keys().length, 4);
  assert.equal(v.labels("p,q", "r").value, 1);
  assert.equal(v.labels("p", "q\u0000r").value, 4);
});

Deno.test("a labelled metric with no series yet is left out; removed series go away", () => {
  const r = new MetricsRegistry();
  const v = r.gaugeVec("x_lag", "Lag.", ["peer"]);
  assert.equal(r.render(), "");
  v.labels("a").set(1);
  v.labels("b").set(2);
  v.remove("a");
  v.remove("zzz");
  assert.equal(r.render(), '# HELP x_lag Lag.\n# TYPE x_lag gauge\nx_lag{peer="b"} 2\n');
  v.clear();
  assert.equal(r.render(), "");
});

Deno.test("a vector without label names is one series that is there only while made", () => {
  const r = new MetricsRegistry();
  const v = r.gaugeVec("x_tolerance", "Tolerance.", []);
  assert.equal(r.render(), "");
  v.labels().set(1);
  v.labels().inc();
  assert.equal(
    r.render(),
    "# HELP x_tolerance Tolerance.\n# TYPE x_tolerance gauge\nx_tolerance 2\n",
  );
  v.remove();
  assert.equal(r.render(), "");
  v.labels().set(0);
  v.clear();
  assert.equal(r.render(), "");
  assert.throws(() => v.labels("a"), /expected 0 label values \(\), got 1/);
});

Deno.test("label values and help texts are escaped as the format says", () => {
  assert.equal(escapeLabelValue('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  assert.equal(escapeLabelValue("plain é ✓"), "plain é ✓");
  assert.equal(escapeHelp('say "hi"\\\nbye'), 'say "hi"\\\\\\nbye');
  const r = new MetricsRegistry();
  r.gaugeVec("x_g", "line one\nline \\two", ["k"]).labels('"\\\n').set(1);
  assert.equal(
    r.render(),
    '# HELP x_g line one\\nline \\\\two\n# TYPE x_g gauge\nx_g{k="\\"\\\\\\n"} 1\n',
  );
});

Deno.test("values are written as the format reads them", () => {
  assert.equal(formatValue(0), "0");
  assert.equal(formatValue(-2.5), "-2.5");
  assert.equal(formatValue(1e-7), "1e-7");
  assert.equal(formatValue(2 ** 53), "9007199254740992");
  assert.equal(formatValue(Infinity), "+Inf");
  assert.equal(formatValue(-Infinity), "-Inf");
  assert.equal(formatValue(NaN), "NaN");
  assert.deepEqual(exponentialBuckets(0.0001, 2, 4), [0.0001, 0.0002, 0.0004, 0.0008]);
});

Deno.test("collectors run before each render; one that throws does not stop the scrape", () => {
  const r = new MetricsRegistry();
  const g = r.gauge("x_term", "Term.");
  let term = 1;
  r.onCollect(() => {
    throw new Error("broken collector");
  });
  r.onCollect(() => g.set(term));
  assert.ok(r.render().includes("x_term 1\n"));
  term = 5;
  assert.ok(r.render().includes("x_term 5\n"));
});

Deno.test("the registry refuses bad names, repeated names, bad labels and bad buckets", () => {
  const r = new MetricsRegistry();
  r.counter("x_total", "x");
  assert.throws(() => r.counter("x_total", "again"), /already registered/);
  assert.throws(() => r.gauge("1x", "x"), /not a valid metric name/);
  assert.throws(() => r.gauge("x-y", "x"), /not a valid metric name/);
  assert.throws(() => r.gaugeVec("x_a", "x", ["a-b"]), /not a valid label name/);
  assert.throws(() => r.gaugeVec("x_b", "x", ["__a"]), /not a valid label name/);
  assert.throws(() => r.gaugeVec("x_c", "x", ["a", "a"]), /repeats/);
  assert.throws(() => r.histogramVec("x_e", "x", [1], ["le"]), /label named "le"/);
  assert.throws(() => r.histogram("x_f", "x", [2, 1]), /ascending/);
  assert.throws(() => r.histogram("x_g", "x", [1, Infinity]), /finite/);
  assert.throws(() => r.histogram("x_h", "x", []), /at least one bucket/);
  assert.throws(() => r.counter("x_ok_total", "x").inc(-1), /cannot be increased by -1/);
  const v = r.counterVec("x_v_total", "x", ["a", "b"]);
  assert.throws(() => v.labels("only-one"), /expected 2 label values \(a, b\), got 1/);
  assert.deepEqual(r.names(), ["x_total", "x_ok_total", "x_v_total"]);
});

Deno.test({
  name: PROMTOOL
    ? "promtool parses and accepts what the registry renders, escapes included"
    : "promtool parses and accepts what the registry renders (skipped: promtool not installed; apt-get install prometheus)",
  ignore: PROMTOOL === null,
  async fn() {
    const r = new MetricsRegistry();
    r.counter("x_events_total", "Events, with a \\ and a\nnewline in the help.").inc(3);
    const g = r.gaugeVec("x_temperature_celsius", "A gauge with hostile label values.", ["k"]);
    const hostile = ['quote " here', "back\\slash", "new\nline", "{},= é ✓", "", "\\n literal"];
    hostile.forEach((k, i) => g.labels(k).set(i - 2.5));
    const h = r.histogramVec("x_wait_seconds", "A histogram.", exponentialBuckets(1e-6, 10, 8), [
      "peer",
    ]);
    h.labels("a").observe(0.003);
    h.labels("b").observe(12);
    const text = r.render();
    const verdict = await promtoolCheck(text);
    assert.ok(verdict.ok, `promtool: ${verdict.output}\n${text}`);
    // A line-level check that the values read back as written.
    const samples = parseSamples(text);
    assert.equal(samples.get('x_temperature_celsius{k="quote \\" here"}'), -2.5);
    assert.equal(samples.get('x_wait_seconds_bucket{peer="b",le="+Inf"}'), 1);
    // And the real parser sees a broken escape as an error: the check can fail.
    const broken = await promtoolCheck('# HELP x_g g\n# TYPE x_g gauge\nx_g{k="a\\qb"} 1\n');
    assert.equal(broken.ok, false, broken.output);
  },
});
