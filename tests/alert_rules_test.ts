/**
 * The alerting rules shipped in `deploy/prometheus/`: Prometheus's own tool parses them and runs
 * their unit tests, every alert has a case where it fires, and every metric they name is one a
 * node registers (a renamed metric would leave an alert that can never fire).
 */
import assert from "node:assert/strict";
import { parse } from "yaml";
import { findPromtool } from "../testing/prometheus.ts";

const PROMTOOL = findPromtool();
const DIR = new URL("../deploy/prometheus/", import.meta.url);
const RULES = "raftkv-alerts.yml";
const TESTS = "raftkv-alerts.test.yml";

interface _Rules {
  groups: { rules: { alert: string; expr: string }[] }[];
}
interface _Tests {
  tests: {
    input_series: { series: string }[];
    alert_rule_test: { alertname: string; exp_alerts: unknown[] }[];
  }[];
}

async function _promtool(...args: string[]): Promise<{ ok: boolean; output: string }> {
  const out = await new Deno.Command("promtool", {
    args,
    cwd: DIR,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder();
  return { ok: out.success, output: text.decode(out.stdout) + text.decode(out.stderr) };
}

/** Every metric name a node registers: the `"raftkv_..."` literals of `main.ts` and `src/`. */
async function _registered(): Promise<Set<string>> {
  const names = new Set<string>();
  const walk = async (dir: URL) => {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory) await walk(new URL(`${e.name}/`, dir));
      else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) {
        const text = await Deno.readTextFile(new URL(e.name, dir));
        for (const m of text.matchAll(/"(raftkv_[a-z_]+)"/g)) names.add(m[1]!);
      }
    }
  };
  await walk(new URL("../src/", import.meta.url));
  const main = await Deno.readTextFile(new URL("../main.ts", import.meta.url));
  for (const m of main.matchAll(/"(raftkv_[a-z_]+)"/g)) names.add(m[1]!);
  return names;
}

/** The metric names in a PromQL expression or series selector (histogram suffixes dropped). */
function _metrics(text: string): string[] {
  return [...text.matchAll(/\braftkv_[a-z_]+/g)].map((m) =>
    m[0].replace(/_(bucket|sum|count)$/, "")
  );
}

Deno.test({
  name: PROMTOOL
    ? "the alerting rules pass promtool's checks and their unit tests"
    : "the alerting rules pass promtool (skipped: promtool not installed; apt-get install prometheus)",
  ignore: PROMTOOL === null,
  async fn() {
    const check = await _promtool("check", "rules", RULES);
    assert.ok(check.ok, check.output);
    const tests = await _promtool("test", "rules", TESTS);
    assert.ok(tests.ok, tests.output);
  },
});

Deno.test("every alert has a case where it fires, and names only metrics a node registers", async () => {
  const rules = parse(await Deno.readTextFile(new URL(RULES, DIR))) as _Rules;
  const tests = parse(await Deno.readTextFile(new URL(TESTS, DIR))) as _Tests;
  const alerts = rules.groups.flatMap((g) => g.rules);
  assert.ok(alerts.length >= 10, `${alerts.length} alerts`);
  const fired = new Set(
    tests.tests.flatMap((t) => t.alert_rule_test)
      .filter((c) => c.exp_alerts.length > 0)
      .map((c) => c.alertname),
  );
  const quiet = new Set(
    tests.tests.flatMap((t) => t.alert_rule_test)
      .filter((c) => c.exp_alerts.length === 0)
      .map((c) => c.alertname),
  );
  for (const { alert } of alerts) {
    assert.ok(fired.has(alert), `no test case where ${alert} fires`);
  }
  // Most alerts also have a case where they must stay quiet (before their `for`, or below their
  // threshold); those without are one-line conditions (a full disk, a certificate, failed writes).
  assert.ok(quiet.size >= 7, `only ${[...quiet].join(", ")} have a case where they stay quiet`);
  const registered = await _registered();
  assert.ok(registered.has("raftkv_failure_tolerance"), "the scan found the metrics");
  const used = [
    ...alerts.flatMap((a) => _metrics(a.expr)),
    ...tests.tests.flatMap((t) => t.input_series.flatMap((s) => _metrics(s.series))),
  ];
  for (const name of new Set(used)) {
    assert.ok(registered.has(name), `${name} is not a metric a node registers`);
  }
});
