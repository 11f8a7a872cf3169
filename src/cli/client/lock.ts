/**
 * `raftkv lock NAME [COMMAND...]`: a distributed lock from the shell, as `etcdctl lock` is. The
 * holder's key lives under NAME and is attached to a lease the command keeps alive; waiters queue
 * in the order their keys were created, each waiting for the one before it to go, so a release
 * wakes one waiter, not all. A holder that dies lets its lease expire, and its key goes with it.
 *
 * @module
 */

import type { Command, CommandContext } from "./command.ts";
import { answerError, type ApiClient } from "./http.ts";
import { ClientError, EXIT, usageError } from "./options.ts";
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
  options: [{
    name: "--ttl",
    value: "<duration>",
    default: "10s",
    description: "the lease's time to live: how long the lock outlives this process if it " +
      "dies (raised to the cluster's minimum if below it)",
  }],
  arity: [1, Infinity],
  async run(ctx) {
    const name = ctx.args[0]!;
    if (name === "") throw usageError("the lock name must not be empty");
    const ttlText = ctx.line.values.get("--ttl")?.value ?? "10s";
    try {
      parseDuration(ttlText);
    } catch (error) {
      throw usageError(`invalid value for --ttl: ${(error as Error).message}`);
    }
    const command = ctx.args.slice(1);
    const client = await ctx.client();
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    for (const s of signals) Deno.addSignalListener(s, onSignal);
    try {
      return await _lock(ctx, client, name, ttlText, command, stop.signal);
    } finally {
      for (const s of signals) Deno.removeSignalListener(s, onSignal);
    }
  },
};

async function _lock(
  ctx: CommandContext,
  client: ApiClient,
  name: string,
  ttl: string,
  command: string[],
  stop: AbortSignal,
): Promise<number> {
  const granted = await client.send("POST", "/v1/leases", { body: { ttl } });
  if (granted.status === 400) {
    throw usageError(`lock: ${(granted.json as { error?: string } | null)?.error}`);
  }
  if (granted.status !== 201) throw answerError(granted, "lock: granting its lease");
  const lease = granted.json as { id: number; ttl_ms: number };
  const key = `${name}/${lease.id}`;
  const keeper = new _Keeper(client, lease.id, lease.ttl_ms);
  try {
    const value = `${Deno.env.get("HOSTNAME") ?? "?"} pid ${Deno.pid}`;
    const put = await client.send(
      "PUT",
      `/v1/data/${encodeURIComponent(key)}?cas=0&lease=${lease.id}`,
      { body: { v: value } },
    );
    if (put.status !== 200) throw answerError(put, `lock: writing ${JSON.stringify(key)}`);
    const index = (put.json as { create_index: number }).create_index;
    const lost = AbortSignal.any([stop, keeper.lost]);
    await _waitForTurn(ctx, client, name, key, index, lost);
    if (keeper.lost.aborted) throw keeper.lost.reason;
    if (stop.aborted) {
      throw new ClientError(`interrupted before taking the lock ${name}`, EXIT.error);
    }
    const held = { key, lease: lease.id, create_index: index, ttl_ms: lease.ttl_ms };
    const line = `holding ${key} (create_index ${index}, lease ${lease.id})`;
    if (command.length === 0) {
      ctx.print(held, line);
      await _until(lost);
      if (keeper.lost.aborted) throw keeper.lost.reason;
      return EXIT.ok;
    }
    if (ctx.json) ctx.io.err(JSON.stringify(held));
    else ctx.io.err(`raftkv lock: ${line}; running ${command.join(" ")}`);
    return await _run(command, key, index, keeper.lost, stop);
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
      throw new ClientError(`lost the lock ${name}: its key ${key} is gone`, EXIT.error);
    }
    const ahead = line.filter((e) => e.create_index < index);
    if (ahead.length === 0) return;
    const next = ahead.reduce((a, b) => (b.create_index > a.create_index ? b : a));
    const waiting = `waiting for ${next.k} (held or waited for by ${next.v}), ` +
      `${ahead.length} ahead`;
    if (waiting !== said && !ctx.json) ctx.io.err(`raftkv lock: ${waiting}`);
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

/** Every key of the lock's line (`NAME/`), page by page. */
async function _queue(client: ApiClient, name: string): Promise<_Entry[]> {
  const items: _Entry[] = [];
  let next: string | null = null;
  do {
    const query = new URLSearchParams({ prefix: `${name}/`, limit: "10000" });
    if (next !== null) query.set("next", next);
    const answer = await client.send("GET", `/v1/data?${query}`);
    if (answer.status !== 200) throw answerError(answer, `lock: reading ${name}/`);
    const body = answer.json as { items: _Entry[]; next: string | null };
    items.push(...body.items);
    next = body.next;
  } while (next !== null);
  return items;
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
 * Keeps the lease alive every third of its TTL; `lost` aborts once it is gone (404) or no
 * renewal was acknowledged within a TTL of being sent (the lock may have expired meanwhile).
 */
class _Keeper {
  readonly #client: ApiClient;
  readonly #id: number;
  readonly #ttlMs: number;
  readonly #lost = new AbortController();
  readonly #done = new AbortController();
  readonly #loop: Promise<void>;
  #validUntil: number;

  constructor(client: ApiClient, id: number, ttlMs: number) {
    this.#client = client;
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
    this.#lost.abort(new ClientError(`lost the lock: lease ${this.#id} ${why}`, EXIT.error));
  }

  async #keep(): Promise<void> {
    const pauseMs = Math.max(10, Math.floor(this.#ttlMs / 3));
    while (!this.#done.signal.aborted && !this.#lost.signal.aborted) {
      const sent = performance.now();
      try {
        const answer = await this.#client.send("POST", `/v1/leases/${this.#id}/keepalive`, {
          timeoutMs: Math.max(100, this.#validUntil - sent),
        });
        if (answer.status === 404) return this.#lose("is gone (revoked or expired)");
        if (answer.status === 200) this.#validUntil = sent + this.#ttlMs;
      } catch {
        // No answer (NoAnswerError): tried again until the lease may have expired.
      }
      if (performance.now() >= this.#validUntil) {
        return this.#lose(`had no renewal acknowledged within its TTL (${this.#ttlMs}ms)`);
      }
      const wait = Math.min(pauseMs, Math.max(0, this.#validUntil - performance.now()));
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
