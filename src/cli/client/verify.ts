/**
 * `raftkv verify`: a black-box self-test of a live cluster. Concurrent clients write, delete and
 * read a few keys under a prefix of their own for a while, through the public API only; the
 * history they record is checked with the linearizability checker; the keys are deleted at the
 * end.
 *
 * @module
 */

import {
  checkLinearizability,
  type CheckResult,
  type Operation,
  type OperationKind,
} from "../../check/linearizability.ts";
import type { Command } from "./command.ts";
import { answerError, type ApiAnswer, type ApiClient, NoAnswerError } from "./http.ts";
import { keyPath } from "./kv.ts";
import {
  type ClientError,
  EXIT,
  type GivenValue,
  parseCountOption,
  parseDurationOption,
} from "./options.ts";

/** Options of {@linkcode runVerify}. */
export interface VerifyOptions {
  /** How long the clients run, in milliseconds. */
  durationMs: number;
  /** How many clients run at once (each with one request in flight). */
  clients: number;
  /** How many keys they share. */
  keys: number;
  /** Deadline of one operation in milliseconds; past it, its outcome is unknown. */
  timeoutMs: number;
  /** Time budget of the linearizability check, in milliseconds. */
  checkTimeoutMs: number;
  /** Stops the clients early (such as on Ctrl-C); the check and the clean-up still run. */
  signal?: AbortSignal;
  /** The key prefix. Default: `verify-<8 random hex digits>/`. */
  prefix?: string;
}

/** How an operation ended. */
export type Outcome =
  /** Answered: it took effect (a read returned a value or "not found"). */
  | "ok"
  /**
   * Refused (4xx, or a 503 or 507 that raftkv documents as "not applied") or never sent: it had
   * no effect, so the check leaves it out.
   */
  | "failed"
  /** A timeout, a broken connection or another 5xx: it may or may not have taken effect. */
  | "unknown";

/** One operation of the recorded history. */
export interface RecordedOperation extends Operation {
  /** How it ended. */
  outcome: Outcome;
  /** The HTTP status, or null when none arrived. */
  status: number | null;
}

/** What {@linkcode runVerify} found. */
export interface VerifyReport {
  /** `linearizable`, `not-linearizable`, or `unknown` (the check ran out of time, or nothing succeeded). */
  verdict: "linearizable" | "not-linearizable" | "unknown";
  /** The prefix of every key used. */
  prefix: string;
  /** The keys used. */
  keys: string[];
  /** How long the clients ran, in milliseconds. */
  elapsedMs: number;
  /** Counts of the clients' operations (the final reads aside). */
  counts: {
    ops: number;
    ok: number;
    failed: number;
    unknown: number;
    reads: number;
    writes: number;
    deletes: number;
  };
  /** The final reads of every key (after every client stopped) that succeeded. */
  finalReads: number;
  /** The checker's result. */
  check: CheckResult;
  /** How long the check took, in milliseconds. */
  checkMs: number;
  /** The first anomaly: the key and the checker's explanation. */
  anomaly: { key: string; reason: string } | null;
  /** Keys deleted at the end, and those whose delete failed (with why). */
  cleanup: { deleted: number; failed: string[] };
  /** The whole history, in the order the operations were called. */
  history: RecordedOperation[];
}

/**
 * Runs the self-test against the cluster behind `client`: `clients` loops, each with one
 * operation in flight on a random key of `keys` (half reads, four in ten writes of values unique
 * to the run, one in ten deletes), client `i` starting at endpoint `i`, for `durationMs`; then
 * one linearizable read of every key, the check, and a delete of every key.
 *
 * Reads are linearizable (the API's default). A 2xx or a 404 read is an answer; a 4xx, or a 503
 * or 507 with raftkv's JSON error (the API's "definitely not applied": no leader, overloaded,
 * stopping, removed, no space, past the quota), is a refusal that changed nothing (left out of the
 * check, so a refused write that shows up later is an anomaly); no answer in time, a broken
 * connection after the request was sent, or another 5xx (a 504, or a 503 from something in
 * between) is an unknown outcome (kept, as possibly applied at any later time). Only keys under
 * the prefix are ever touched.
 *
 * @param client The client (its endpoints and token).
 * @param options Duration, clients, keys, deadlines.
 * @returns The report.
 * @throws {ClientError} Exit code 5 when the cluster refuses the credentials, 4 when no
 * endpoint can be reached at the start.
 */
export async function runVerify(client: ApiClient, options: VerifyOptions): Promise<VerifyReport> {
  const prefix = options.prefix ?? `verify-${_randomHex(4)}/`;
  const keys = Array.from({ length: options.keys }, (_, i) => `${prefix}${i}`);
  const preflight = await client.send("GET", "/v1/status");
  if (preflight.status !== 200) throw answerError(preflight, "verify");

  const history: RecordedOperation[] = [];
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener("abort", onAbort);
  const timer = setTimeout(() => stop.abort(), options.durationMs);
  let refusal: ClientError | null = null;

  const perform = async (
    id: number,
    kind: OperationKind,
    key: string,
    value: string | null,
  ): Promise<RecordedOperation> => {
    const call = now();
    const method = kind === "get" ? "GET" : kind === "put" ? "PUT" : "DELETE";
    let status: number | null = null;
    let outcome: Outcome;
    let observed: string | null = null;
    try {
      const answer = await client.send(method, keyPath(key), {
        ...(kind === "put" ? { body: { v: value } } : {}),
        retryRefused: false,
        first: id,
        timeoutMs: options.timeoutMs,
      });
      status = answer.status;
      if (status === 401 || status === 403) {
        refusal ??= answerError(answer, `verify: ${method} ${JSON.stringify(key)}`);
        stop.abort();
      }
      if (kind === "get" && status === 200) {
        const v = (answer.json as { v?: unknown } | null)?.v;
        outcome = typeof v === "string" ? "ok" : "unknown";
        observed = typeof v === "string" ? v : null;
      } else if (kind === "get" && status === 404) {
        outcome = "ok";
      } else if (status >= 200 && status < 300) {
        outcome = "ok";
      } else if (_refusedUndone(answer)) {
        outcome = "failed";
      } else if (status >= 500) {
        outcome = "unknown";
      } else {
        outcome = "failed";
      }
    } catch (error) {
      if (!(error instanceof NoAnswerError)) throw error;
      outcome = error.kind === "unreachable" ? "failed" : "unknown";
    }
    const op: RecordedOperation = {
      client: id,
      kind,
      key,
      value: kind === "get" ? observed : kind === "put" ? value : null,
      call,
      return: outcome === "ok" ? now() : null,
      outcome,
      status,
    };
    history.push(op);
    return op;
  };

  const loop = async (id: number) => {
    for (let seq = 0; !stop.signal.aborted; seq++) {
      const key = keys[Math.floor(Math.random() * keys.length)]!;
      const r = Math.random();
      if (r < 0.5) await perform(id, "get", key, null);
      else if (r < 0.9) await perform(id, "put", key, `c${id}-${seq}`);
      else await perform(id, "delete", key, null);
    }
  };
  try {
    await Promise.all(Array.from({ length: options.clients }, (_, id) => loop(id)));
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
  const elapsedMs = now();
  const workload = history.slice();

  // A final linearizable read of every key, once every client has stopped: an acknowledged
  // write that was lost shows up as a read that cannot be linearized.
  let finalReads = 0;
  if (refusal === null) {
    for (const key of keys) {
      const op = await perform(options.clients, "get", key, null);
      if (op.outcome === "ok") finalReads++;
    }
  }

  const checked = history.filter((op) => op.outcome !== "failed").map(
    ({ client: c, kind, key, value, call, return: ret }): Operation => ({
      client: c,
      kind,
      key,
      value,
      call,
      return: ret,
    }),
  );
  const checkStart = performance.now();
  const check = checkLinearizability(checked, { timeoutMs: options.checkTimeoutMs });
  const checkMs = performance.now() - checkStart;

  // Clean up: delete every key of the run (refused deletes are tried again until the deadline).
  const cleanup = { deleted: 0, failed: [] as string[] };
  for (const key of keys) {
    try {
      const answer = await client.send("DELETE", keyPath(key));
      if (answer.status === 200) cleanup.deleted++;
      else cleanup.failed.push(`${key}: ${answer.status} ${answer.text.slice(0, 200)}`);
    } catch (error) {
      cleanup.failed.push(`${key}: ${(error as Error).message}`);
    }
  }
  if (refusal !== null) throw refusal;

  const counts = { ops: 0, ok: 0, failed: 0, unknown: 0, reads: 0, writes: 0, deletes: 0 };
  for (const op of workload) {
    counts.ops++;
    counts[op.outcome]++;
    if (op.kind === "get") counts.reads++;
    else if (op.kind === "put") counts.writes++;
    else counts.deletes++;
  }
  const verdict = check.ok === false
    ? "not-linearizable"
    : check.ok === true && counts.ok > 0
    ? "linearizable"
    : "unknown";
  return {
    verdict,
    prefix,
    keys,
    elapsedMs,
    counts,
    finalReads,
    check,
    checkMs,
    anomaly: check.ok === false ? { key: check.key, reason: check.reason } : null,
    cleanup,
    history,
  };
}

/** `raftkv verify`. */
export const VERIFY: Command = {
  name: "verify",
  args: "",
  summary: "self-test: concurrent clients, history checked for linearizability",
  description: "A black-box self-test of a live cluster, through the public API only. For " +
    "--duration, --clients concurrent clients read, write and delete --keys keys under a prefix " +
    'of their own ("verify-<random>/"), client i starting at endpoint i (give every node\'s ' +
    "endpoint to test them all). Each operation is recorded with its call and return times and " +
    'its outcome: an answer, a refusal (4xx, or raftkv\'s 503 or 507 "not applied": no ' +
    "effect), or unknown (no answer in time, another 5xx: it may or may not have taken effect). " +
    "After a final read of every key, the history is " +
    "checked for linearizability, the verdict printed with the counts and the first anomaly if " +
    "any, and every key of the run deleted. No other key is touched (a write whose outcome was " +
    "unknown could still land after the clean-up).\n\nExits 0 when the history is linearizable, " +
    `${EXIT.notLinearizable} when it is not, 1 when it could not be decided (the check ran out ` +
    "of time, no operation succeeded) or the clean-up failed. Ctrl-C stops the clients early; " +
    "the check and the clean-up still run.",
  options: [
    {
      name: "--duration",
      value: "<duration>",
      default: "10s",
      description: "How long the clients run",
    },
    { name: "--clients", value: "<n>", default: "8", description: "Concurrent clients" },
    { name: "--keys", value: "<n>", default: "4", description: "Keys they share" },
    {
      name: "--check-timeout",
      value: "<duration>",
      default: "60s",
      description: "Time budget of the linearizability check (then the verdict is unknown)",
    },
    {
      name: "--history",
      value: "<file>",
      default: "none",
      description: "Also write the recorded history there, one JSON operation a line",
    },
  ],
  arity: [0, 0],
  async run(ctx) {
    const option = (name: string): GivenValue | undefined => ctx.line.values.get(name);
    const given = (name: string, fallback: string): GivenValue =>
      option(name) ?? { value: fallback, origin: name };
    const options: VerifyOptions = {
      durationMs: parseDurationOption(given("--duration", "10s")),
      clients: parseCountOption(given("--clients", "8"), 1000),
      keys: parseCountOption(given("--keys", "4"), 10_000),
      timeoutMs: ctx.globals.timeoutMs,
      checkTimeoutMs: parseDurationOption(given("--check-timeout", "60s")),
    };
    const client = await ctx.client();
    const interrupt = new AbortController();
    const onSigint = () => interrupt.abort();
    Deno.addSignalListener("SIGINT", onSigint);
    let report: VerifyReport;
    try {
      report = await runVerify(client, { ...options, signal: interrupt.signal });
    } finally {
      Deno.removeSignalListener("SIGINT", onSigint);
    }
    const historyFile = option("--history")?.value;
    if (historyFile !== undefined) {
      await Deno.writeTextFile(
        historyFile,
        report.history.map((op) => JSON.stringify(op)).join("\n") + "\n",
      );
    }
    const { counts, check } = report;
    const exit = report.verdict === "not-linearizable"
      ? EXIT.notLinearizable
      : report.verdict === "linearizable" && report.cleanup.failed.length === 0
      ? EXIT.ok
      : EXIT.error;
    if (ctx.json) {
      ctx.print({
        verdict: report.verdict,
        prefix: report.prefix,
        keys: report.keys,
        endpoints: client.endpoints,
        clients: options.clients,
        duration_ms: Math.round(report.elapsedMs),
        counts,
        final_reads: report.finalReads,
        check: check.ok === true
          ? { operations: check.operations, keys: check.keys, dropped: check.dropped }
          : check.ok === "unknown"
          ? { reason: check.reason }
          : { key: check.key },
        check_ms: Math.round(report.checkMs),
        anomaly: report.anomaly,
        cleanup: report.cleanup,
        exit_code: exit,
      }, null);
      return exit;
    }
    const lines = [
      `raftkv verify: ${options.clients} clients on ${client.endpoints.length} endpoints for ` +
      `${(report.elapsedMs / 1000).toFixed(1)} s, ${report.keys.length} keys under ` +
      JSON.stringify(report.prefix),
      `operations: ${counts.ops} (ok ${counts.ok}, failed ${counts.failed}, unknown ` +
      `${counts.unknown}): ${counts.reads} reads, ${counts.writes} writes, ${counts.deletes} ` +
      `deletes; then ${report.finalReads} final reads`,
    ];
    if (report.verdict === "linearizable" && check.ok === true) {
      lines.push(
        `verdict: LINEARIZABLE (${check.operations} operations on ${check.keys} keys checked ` +
          `in ${Math.round(report.checkMs)} ms)`,
      );
    } else if (report.anomaly !== null) {
      lines.push(
        `verdict: NOT LINEARIZABLE: the first anomaly is on key ${
          JSON.stringify(report.anomaly.key)
        }`,
        report.anomaly.reason,
      );
    } else {
      lines.push(
        `verdict: UNKNOWN: ${
          check.ok === "unknown" ? check.reason : "no operation succeeded, so nothing was checked"
        }`,
      );
    }
    lines.push(
      report.cleanup.failed.length === 0
        ? `cleanup: deleted the ${report.cleanup.deleted} keys under ${
          JSON.stringify(report.prefix)
        }`
        : `cleanup FAILED for ${report.cleanup.failed.length} keys: ${
          report.cleanup.failed.join("; ")
        }`,
    );
    ctx.io.out(lines.join("\n"));
    return exit;
  },
};

function _randomHex(bytes: number): string {
  return [...crypto.getRandomValues(new Uint8Array(bytes))]
    .map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

/**
 * Whether an answer is raftkv's refusal of what it did not do: a 503 or 507 with its JSON error
 * body (`{"error": ...}`). A 503 from a proxy in front of the cluster is not one.
 */
function _refusedUndone(answer: ApiAnswer): boolean {
  if (answer.status !== 503 && answer.status !== 507) return false;
  const body = answer.json;
  return typeof body === "object" && body !== null &&
    typeof (body as { error?: unknown }).error === "string";
}
