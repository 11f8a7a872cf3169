/**
 * `raftkv lock NAME [COMMAND...]` and `raftkv elect NAME [PROPOSAL]`: a distributed lock and a
 * leader election from the shell, as `etcdctl lock` and `etcdctl elect` are. The holder's (the
 * leader's) key lives under NAME and is attached to a lease the command keeps alive; waiters
 * queue in the order their keys were created, each waiting for the one before it to go, so a
 * release wakes one waiter, not all. A holder that dies lets its lease expire, and its key goes
 * with it.
 *
 * @module
 */

import type { Command, CommandContext } from "./command.ts";
import { answerError, type ApiClient } from "./http.ts";
import { readRange } from "./kv.ts";
import { ClientError, EXIT, type OptionSpec, usageError } from "./options.ts";
import { parseDuration } from "../duration.ts";

/** A key of the lock's queue, as a range read gives it. */
interface _Entry {
  k: string;
  v: string;
  create_index: number;
}

/** How long one blocking read waits for the key ahead to change. */
const _WAIT = "30s";
const _WAIT_MS = 30_000;

/** The `--ttl` option of `lock` and `elect`: the lease that holds `what`. */
function _ttlOption(what: string): OptionSpec {
  return {
    name: "--ttl",
    value: "<duration>",
    default: "10s",
    description: `the lease's time to live: how long ${what} outlives this process if it ` +
      "dies (raised to the cluster's minimum if below it)",
  };
}

/** `raftkv lock NAME [COMMAND...]`. */
export const LOCK: Command = {
  name: "lock",
  args: "NAME [COMMAND...]",
  summary: "hold a lock until interrupted, or while COMMAND runs",
  description: "Takes the lock NAME, waiting in line behind its holder and earlier waiters, " +
    "then holds it: without COMMAND until the process is interrupted (SIGINT or SIGTERM), with " +
    "COMMAND while COMMAND runs, exiting with its exit code (put -- before a COMMAND with " +
    "options). The lock is a key NAME/<lease id> attached to a lease of --ttl that this process " +
    "keeps alive; releasing revokes the lease. If this process dies, the lease expires after " +
    "TTL and the next waiter takes the lock. Prints the key and its create_index once it holds " +
    'the lock (-o json: {"key","lease","create_index","ttl_ms"}; with COMMAND, on stderr). ' +
    "COMMAND gets RAFTKV_LOCK_KEY and RAFTKV_LOCK_INDEX (the key's create_index, which grows " +
    "from holder to holder) in its environment: make the writes the lock protects a " +
    'transaction comparing {"k": RAFTKV_LOCK_KEY, "exists": true}, and they apply only while ' +
    "the lock is still held, whatever the clocks say.\n\n" +
    "If the lease is lost (revoked, or no renewal acknowledged for a whole TTL, such as when " +
    "the cluster cannot be reached), the lock is no longer held: COMMAND is sent SIGTERM and " +
    "the client exits 1. Interrupted before it holds the lock, it leaves the line and exits 1.",
  options: [_ttlOption("the lock")],
  arity: [1, Infinity],
  async run(ctx) {
    const name = _name(ctx, "lock");
    const value = lockHolder(Deno.hostname, ctx.io.env, Deno.pid);
    const command = ctx.args.slice(1);
    return await _untilSignalled((stop) =>
      _hold(ctx, "lock", name, value, stop, async (held, lost, keeperLost) => {
        const line = `holding ${held.key} (create_index ${held.create_index}, lease ${held.lease})`;
        if (command.length === 0) {
          ctx.print(held, line);
          await _until(lost);
          return EXIT.ok;
        }
        if (ctx.json) ctx.io.err(JSON.stringify(held));
        else ctx.io.err(`raftkv lock: ${line}; running ${command.join(" ")}`);
        return await _run(command, held.key, held.create_index, keeperLost, stop);
      })
    );
  },
};

/**
 * The value of a `raftkv lock` key, which waiters print to say who holds or waits for the lock:
 * `<host> pid <pid>`. The host is the system's host name, not the `HOSTNAME` variable, which a
 * shell sets but does not export; that variable is the fallback when the host name cannot be
 * had (without `--allow-sys`, say), and `unknown host` when it is not set either.
 *
 * @example Usage
 * ```ts
 * import { lockHolder } from "./lock.ts";
 *
 * console.assert(lockHolder(() => "build-7", () => undefined, 42) === "build-7 pid 42");
 * ```
 *
 * @param hostname Gives the host name, such as `Deno.hostname`; may throw.
 * @param env Reads an environment variable.
 * @param pid The process id.
 * @returns The value.
 */
export function lockHolder(
  hostname: () => string,
  env: (name: string) => string | undefined,
  pid: number,
): string {
  let host = "";
  try {
    host = hostname();
  } catch {
    // No permission, or no host name: the variable, if a caller exported it, else unknown.
  }
  return `${host || env("HOSTNAME") || "unknown host"} pid ${pid}`;
}

/** `raftkv elect NAME [PROPOSAL]`. */
export const ELECT: Command = {
  name: "elect",
  args: "NAME [PROPOSAL]",
  summary: "lead NAME with PROPOSAL until interrupted (--leader: print who leads)",
  description: "Campaigns in the election NAME with PROPOSAL (an address, say), as `etcdctl " +
    "elect` does: candidates queue like the waiters of raftkv lock, and the oldest leads. " +
    "Once this one leads it prints PROPOSAL and its key (-o json: " +
    '{"key","lease","create_index","ttl_ms","proposal"}) and leads until the process is ' +
    "interrupted (SIGINT or SIGTERM: it resigns, exit 0), or its lease is lost (exit 1). The " +
    "key's create_index numbers the terms: fence a leader's writes with a transaction comparing " +
    '{"k": KEY, "exists": true}.\n\n' +
    "With --leader, prints the PROPOSAL of the candidate leading now and exits (3 when none " +
    'does; -o json: {"key","proposal","create_index"}).',
  options: [_ttlOption("the leadership"), {
    name: "--leader",
    value: null,
    default: "",
    description: "print the leading candidate's PROPOSAL and exit instead of campaigning",
  }],
  arity: [1, 2],
  async run(ctx) {
    const name = _name(ctx, "election");
    const proposal = ctx.args[1];
    if (ctx.line.switches.has("--leader")) {
      if (proposal !== undefined) throw usageError("--leader takes no PROPOSAL");
      const line = await _queue(await ctx.client(), name);
      if (line.length === 0) {
        throw new ClientError(`no candidate leads ${name}`, EXIT.notFound, { name });
      }
      const first = line.reduce((a, b) => (b.create_index < a.create_index ? b : a));
      ctx.print(
        { key: first.k, proposal: first.v, create_index: first.create_index },
        first.v,
      );
      return EXIT.ok;
    }
    if (proposal === undefined) throw usageError("give a PROPOSAL to campaign with, or --leader");
    return await _untilSignalled((stop) =>
      _hold(ctx, "elect", name, proposal, stop, async (held, lost) => {
        ctx.print(
          { ...held, proposal },
          `${proposal}\n(leading ${name}: key ${held.key}, create_index ${held.create_index})`,
        );
        await _until(lost);
        return EXIT.ok;
      })
    );
  },
};

/** The NAME argument, checked, and `--ttl`, checked. */
function _name(ctx: CommandContext, what: string): string {
  const name = ctx.args[0]!;
  if (name === "") throw usageError(`the ${what} name must not be empty`);
  const ttlText = ctx.line.values.get("--ttl")?.value;
  // A duration, or seconds (as the API takes a lease's TTL).
  if (ttlText !== undefined && !/^\d{1,12}(?:\.\d{1,3})?$/.test(ttlText)) {
    try {
      parseDuration(ttlText);
    } catch (error) {
      throw usageError(`invalid value for --ttl: ${(error as Error).message}`);
    }
  }
  return name;
}

/** Runs `body` with a signal that aborts on SIGINT or SIGTERM (which then stop nothing else). */
async function _untilSignalled(body: (stop: AbortSignal) => Promise<number>): Promise<number> {
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  try {
    return await body(stop.signal);
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
  }
}

/** What {@linkcode _hold} hands to its caller once the key is first in line. */
interface _Held {
  key: string;
  lease: number;
  create_index: number;
  ttl_ms: number;
}

/**
 * Queues a key `NAME/<lease>` holding `value` on a lease kept alive, waits until it is first in
 * line, and runs `whileHeld` (given a signal that aborts when `stop` does or the lease is lost,
 * and one for the lease alone); the lease is revoked afterwards. Throws when the lease is lost.
 */
async function _hold(
  ctx: CommandContext,
  command: "lock" | "elect",
  name: string,
  value: string,
  stop: AbortSignal,
  whileHeld: (held: _Held, lost: AbortSignal, keeperLost: AbortSignal) => Promise<number>,
): Promise<number> {
  const ttl = ctx.line.values.get("--ttl")?.value ?? "10s";
  const client = await ctx.client();
  const granted = await client.send("POST", "/v1/leases", { body: { ttl } });
  if (granted.status === 400) {
    throw usageError(`${(granted.json as { error?: string } | null)?.error}`);
  }
  if (granted.status !== 201) throw answerError(granted, "granting the lease");
  const lease = granted.json as { id: number; ttl_ms: number };
  const key = `${name}/${lease.id}`;
  const what = command === "lock" ? "the lock" : "the leadership";
  const keeper = new _Keeper(client, lease.id, lease.ttl_ms, what);
  try {
    const put = await client.send(
      "PUT",
      `/v1/data/${encodeURIComponent(key)}?cas=0&lease=${lease.id}`,
      { body: { v: value } },
    );
    if (put.status !== 200) throw answerError(put, `writing ${JSON.stringify(key)}`);
    const index = (put.json as { create_index: number }).create_index;
    const lost = AbortSignal.any([stop, keeper.lost]);
    await _waitForTurn(ctx, command, client, name, key, index, lost);
    if (keeper.lost.aborted) throw keeper.lost.reason;
    if (stop.aborted) throw new ClientError(`interrupted while waiting in ${name}`, EXIT.error);
    const held = { key, lease: lease.id, create_index: index, ttl_ms: lease.ttl_ms };
    const code = await whileHeld(held, lost, keeper.lost);
    if (keeper.lost.aborted) throw keeper.lost.reason;
    return code;
  } finally {
    await keeper.release();
  }
}

/**
 * Waits until `key` is the oldest (smallest create_index) of the lock's keys: each round reads
 * the line and waits, with a blocking read, for the key just ahead to change (go).
 */
async function _waitForTurn(
  ctx: CommandContext,
  command: "lock" | "elect",
  client: ApiClient,
  name: string,
  key: string,
  index: number,
  stop: AbortSignal,
): Promise<void> {
  let said = "";
  // A blocking read waits for a change above this index: the key's creation at first, then what
  // the last answer had seen (a key created before the history nodes keep would otherwise be
  // answered at once, again and again).
  let seen = 0;
  while (!stop.aborted) {
    const line = await _queue(client, name);
    if (!line.some((e) => e.k === key)) {
      const what = command === "lock" ? "the lock" : "the election";
      throw new ClientError(`lost ${what} ${name}: its key ${key} is gone`, EXIT.error);
    }
    const ahead = line.filter((e) => e.create_index < index);
    if (ahead.length === 0) return;
    const next = ahead.reduce((a, b) => (b.create_index > a.create_index ? b : a));
    const by = command === "lock" ? "held or waited for by" : "proposing";
    const waiting = `waiting for ${next.k} (${by} ${next.v}), ` +
      `${ahead.length} ahead`;
    if (waiting !== said && !ctx.json) ctx.io.err(`raftkv ${command}: ${waiting}`);
    said = waiting;
    const since = Math.max(seen, next.create_index);
    const path = `/v1/data/${encodeURIComponent(next.k)}?index=${since}&wait=${_WAIT}`;
    let answer;
    try {
      answer = await client.send("GET", path, {
        timeoutMs: _WAIT_MS + ctx.globals.timeoutMs,
        signal: stop,
      });
    } catch (error) {
      if (stop.aborted) return;
      throw error;
    }
    if (answer.status !== 200 && answer.status !== 404) {
      throw answerError(answer, `lock: waiting for ${JSON.stringify(next.k)}`);
    }
    seen = Math.max(seen, answer.index ?? 0);
  }
}

/** Every key of the line (`NAME/`), with its value and create_index. */
async function _queue(client: ApiClient, name: string): Promise<_Entry[]> {
  return await readRange(client, { prefix: `${name}/` }, `reading ${name}/`) as _Entry[];
}

/** Runs COMMAND with the lock's key in its environment; SIGTERM when the lock is lost. */
async function _run(
  command: string[],
  key: string,
  index: number,
  lost: AbortSignal,
  stop: AbortSignal,
): Promise<number> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(command[0]!, {
      args: command.slice(1),
      env: { RAFTKV_LOCK_KEY: key, RAFTKV_LOCK_INDEX: String(index) },
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
  } catch (error) {
    throw usageError(`cannot run ${JSON.stringify(command[0])}: ${(error as Error).message}`);
  }
  // A signal to this process goes on to the command (its own process group may not get it).
  const pass = () => {
    try {
      child.kill("SIGTERM");
    } catch { /* it has exited */ }
  };
  lost.addEventListener("abort", pass, { once: true });
  stop.addEventListener("abort", pass, { once: true });
  try {
    const status = await child.status;
    if (lost.aborted) throw lost.reason;
    return status.code;
  } finally {
    lost.removeEventListener("abort", pass);
    stop.removeEventListener("abort", pass);
  }
}

/**
 * Keeps the lease alive every third of its TTL (a refused or unanswered renewal is tried again
 * after 0.2 s, at the next endpoint); `lost` aborts once it is gone (404) or no renewal was
 * acknowledged within a TTL of being sent (the lock may have expired meanwhile).
 */
class _Keeper {
  readonly #client: ApiClient;
  readonly #id: number;
  readonly #ttlMs: number;
  readonly #what: string;
  readonly #lost = new AbortController();
  readonly #done = new AbortController();
  readonly #loop: Promise<void>;
  #validUntil: number;

  constructor(client: ApiClient, id: number, ttlMs: number, what: string) {
    this.#client = client;
    this.#what = what;
    this.#id = id;
    this.#ttlMs = ttlMs;
    this.#validUntil = performance.now() + ttlMs;
    this.#loop = this.#keep();
  }

  /** Aborts (with the reason) once the lease, and so the lock, is no longer held. */
  get lost(): AbortSignal {
    return this.#lost.signal;
  }

  #lose(why: string): void {
    this.#lost.abort(new ClientError(`lost ${this.#what}: lease ${this.#id} ${why}`, EXIT.error));
  }

  async #keep(): Promise<void> {
    const pauseMs = Math.max(10, Math.floor(this.#ttlMs / 3));
    let first = 0;
    while (!this.#done.signal.aborted && !this.#lost.signal.aborted) {
      const sent = performance.now();
      let renewed = false;
      try {
        // A refusal (503 while the cluster elects a leader) comes back at once, not after the
        // client's own pause (a second, as its Retry-After says): a renewal is tried again
        // within a fifth of a second, at the next endpoint, while the lease may still be valid.
        const answer = await this.#client.send("POST", `/v1/leases/${this.#id}/keepalive`, {
          timeoutMs: Math.max(100, Math.min(pauseMs, this.#validUntil - sent)),
          retryRefused: false,
          first,
        });
        if (answer.status === 404) return this.#lose("is gone (revoked or expired)");
        if (answer.status === 200) {
          this.#validUntil = sent + this.#ttlMs;
          renewed = true;
        }
      } catch {
        // No answer (NoAnswerError): tried again until the lease may have expired.
      }
      if (performance.now() >= this.#validUntil) {
        return this.#lose(`had no renewal acknowledged within its TTL (${this.#ttlMs}ms)`);
      }
      if (!renewed) first++;
      const wait = Math.min(
        renewed ? pauseMs : Math.min(pauseMs, _RENEW_RETRY_MS),
        Math.max(0, this.#validUntil - performance.now()),
      );
      await _until(this.#done.signal, wait);
    }
  }

  /** Stops renewing and revokes the lease (its key goes with it), unless it is gone already. */
  async release(): Promise<void> {
    this.#done.abort();
    await this.#loop.catch(() => {});
    if (this.#lost.signal.aborted) return;
    try {
      await this.#client.send("DELETE", `/v1/leases/${this.#id}`);
    } catch {
      // Not revoked: it expires after its TTL without renewals.
    }
  }
}

/** The pause before a renewal that was refused or not answered is tried again. */
const _RENEW_RETRY_MS = 200;

/** Resolves when `signal` aborts, or after `ms` if given. */
function _until(signal: AbortSignal, ms?: number): Promise<undefined> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(undefined);
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve(undefined);
    };
    const timer = ms === undefined ? undefined : setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
