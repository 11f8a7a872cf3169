/**
 * Test support for `GET /metrics`: validation by the real Prometheus parser and linter
 * (`promtool check metrics`, Debian package `prometheus`), and a small reader of sample values.
 *
 * @module
 */

/** What `promtool check metrics` said about a text. */
export interface PromtoolResult {
  /** Whether it found nothing wrong (exit code 0). */
  ok: boolean;
  /** Its exit code: 0 fine, 1 the text does not parse, 3 lint problems. */
  code: number;
  /** What it printed (the problems found), stdout and stderr together. */
  output: string;
}

/**
 * The `promtool` command if it is installed and runs, else null.
 *
 * @returns The command name, or null.
 */
export function findPromtool(): string | null {
  try {
    const out = new Deno.Command("promtool", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .outputSync();
    return out.success ? "promtool" : null;
  } catch {
    return null;
  }
}

/**
 * Runs `promtool check metrics` on `text` (parse and lint).
 *
 * @param text The exposition text.
 * @returns Its verdict.
 * @throws {Deno.errors.NotFound} If promtool is not installed.
 */
export async function promtoolCheck(text: string): Promise<PromtoolResult> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const decoder = new TextDecoder();
  return { ok: code === 0, code, output: decoder.decode(stdout) + decoder.decode(stderr) };
}

/**
 * The samples of an exposition text as a map from the series as written (`name` or
 * `name{a="x",b="y"}`, labels in the order written) to its value. Comments are skipped. Meant
 * for reading values in tests, not for validation (that is {@linkcode promtoolCheck}'s job).
 *
 * @param text The exposition text.
 * @returns The samples.
 * @throws {SyntaxError} On a line that is not `series value`.
 */
export function parseSamples(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^(\S+?(?:\{.*\})?) (\S+)$/.exec(line);
    if (!m) throw new SyntaxError(`not a sample line: ${JSON.stringify(line)}`);
    const raw = m[2]!;
    const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
    samples.set(m[1]!, value);
  }
  return samples;
}

/**
 * The value of one series in parsed samples.
 *
 * @param samples From {@linkcode parseSamples}.
 * @param series The series as written, such as `raftkv_term` or `raftkv_role{role="leader"}`.
 * @returns Its value.
 * @throws {Error} If the series is missing, listing the series of the same metric that exist.
 */
export function sample(samples: Map<string, number>, series: string): number {
  const value = samples.get(series);
  if (value !== undefined) return value;
  const name = series.split("{")[0]!;
  const similar = [...samples.keys()].filter((s) => s.split("{")[0] === name);
  throw new Error(`no series ${series} in the metrics; of ${name} there are: [${similar}]`);
}

/** What {@linkcode scrapeChecked} needs of a cluster: one request to a node's API. */
export interface Scrapable {
  /** Sends `method path` to node `id`'s API and answers its status and text. */
  request(id: string, method: string, path: string): Promise<{ status: number; text: string }>;
}

/**
 * Scrapes node `id`'s `GET /metrics`, checks the answer with `promtool check metrics` when promtool
 * is installed (Debian package `prometheus`), and returns its samples.
 *
 * @param cluster The cluster (a `ProcessCluster` of `testing/harness.ts`).
 * @param id The node.
 * @returns The samples, as {@linkcode parseSamples} reads them.
 * @throws {Error} If the node does not answer 200 or promtool finds a problem.
 */
export async function scrapeChecked(cluster: Scrapable, id: string): Promise<Map<string, number>> {
  const res = await cluster.request(id, "GET", "/metrics");
  if (res.status !== 200) throw new Error(`GET /metrics of ${id}: ${res.status} ${res.text}`);
  if (_promtool === undefined) _promtool = findPromtool();
  if (_promtool !== null) {
    const verdict = await promtoolCheck(res.text);
    if (!verdict.ok) {
      throw new Error(`promtool check metrics on ${id} (exit ${verdict.code}):\n${verdict.output}`);
    }
  }
  return parseSamples(res.text);
}

/** Whether promtool runs here, found at the first {@linkcode scrapeChecked}. */
let _promtool: string | null | undefined;
