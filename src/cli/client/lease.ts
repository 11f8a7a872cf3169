/**
 * The lease subcommands: `lease grant`, `lease keepalive`, `lease revoke` and `lease list` (a put
 * attaches a key with `put --lease ID` or `put --ttl 10s`, see `kv.ts`).
 *
 * @module
 */

import type { Command, CommandContext } from "./command.ts";
import { answerError, NoAnswerError } from "./http.ts";
import { ClientError, EXIT, usageError } from "./options.ts";

/** The API path of a lease. */
function _leasePath(ctx: CommandContext): string {
  const id = ctx.args[0] ?? "";
  if (!/^[1-9]\d{0,15}$/.test(id)) {
    throw usageError(`invalid lease id ${JSON.stringify(id)}: a positive integer`);
  }
  return `/v1/leases/${id}`;
}

/** A 404 answer about a lease: exit 3. */
function _notFound(ctx: CommandContext): ClientError {
  return new ClientError(
    `lease ${ctx.args[0]} not found (never granted, revoked, or expired)`,
    EXIT.notFound,
    { lease: Number(ctx.args[0]), status: 404 },
  );
}

/** The body of a lease answer. */
interface _Lease {
  id: number;
  ttl: string;
  ttl_ms: number;
  remaining_ms: number;
  keys: string[];
}

function _leaseLine(l: _Lease): string {
  return `lease ${l.id}: ttl ${l.ttl}, ${Math.round(l.remaining_ms)}ms left, ` +
    `${l.keys.length} key${l.keys.length === 1 ? "" : "s"}${
      l.keys.length > 0 ? ": " + l.keys.join(", ") : ""
    }`;
}

/** `raftkv lease grant TTL`. */
export const LEASE_GRANT: Command = {
  name: "lease grant",
  args: "TTL",
  summary: "grant a lease (TTL like 10s) and print its id",
  description: "Grants a lease with time to live TTL (a duration like 10s, 500ms or 1m30s) and " +
    'prints its id (-o json: the API\'s {"id","ttl","ttl_ms","index"}). A TTL below the ' +
    "minimum (one and a half election timeouts) is raised to it, and stderr says so. " +
    "Attach keys with " +
    "`raftkv put KEY VALUE --lease ID`; keep it with `raftkv lease keepalive ID`. When nobody " +
    "keeps it alive, the leader expires it after TTL and its keys are deleted.",
  options: [],
  arity: [1, 1],
  async run(ctx) {
    const client = await ctx.client();
    const answer = await client.send("POST", "/v1/leases", { body: { ttl: ctx.args[0] } });
    if (answer.status === 400) {
      throw new ClientError(`lease grant: ${(answer.json as { error?: string })?.error}`, 2);
    }
    if (answer.status !== 201) throw answerError(answer, "lease grant");
    const body = answer.json as { id: number; ttl?: string; requested_ttl_ms?: number };
    if (!ctx.json && body.requested_ttl_ms !== undefined) {
      // stdout stays the id alone (scripts read it); the raise is said on stderr.
      ctx.io.err(
        `raftkv lease grant: ${
          ctx.args[0]
        } is below the cluster's minimum TTL: granted ${body.ttl}`,
      );
    }
    ctx.print(answer.json, String(body.id));
    return EXIT.ok;
  },
};

/** `raftkv lease keepalive ID`. */
export const LEASE_KEEPALIVE: Command = {
  name: "lease keepalive",
  args: "ID",
  summary: "keep a lease alive until interrupted (--once: renew it once)",
  description: "Renews lease ID every third of its time to live until the process is stopped, " +
    "printing each renewal (-o json: one JSON line per renewal). Stopping it (or the process " +
    "dying) lets the lease expire: its keys are deleted one time to live after the last " +
    "renewal (longer when the cluster's leader changes meanwhile). A renewal that gets no answer " +
    "is retried; exits 3 once the lease no longer exists. --once renews it a single time.",
  options: [
    { name: "--once", value: null, default: "", description: "renew once, then exit" },
  ],
  arity: [1, 1],
  async run(ctx) {
    const path = _leasePath(ctx) + "/keepalive";
    const once = ctx.line.switches.has("--once");
    const client = await ctx.client();
    let pauseMs = 1000;
    for (;;) {
      let answer;
      try {
        answer = await client.send("POST", path);
      } catch (err) {
        if (once || !(err instanceof NoAnswerError)) throw err;
        await new Promise((r) => setTimeout(r, Math.min(pauseMs, 200)));
        continue;
      }
      if (answer.status === 404) throw _notFound(ctx);
      if (answer.status !== 200) {
        if (once || answer.status < 500) throw answerError(answer, "lease keepalive");
        await new Promise((r) => setTimeout(r, Math.min(pauseMs, 200)));
        continue;
      }
      const lease = answer.json as _Lease;
      ctx.print(answer.json, _leaseLine(lease));
      if (once) return EXIT.ok;
      pauseMs = Math.max(10, Math.floor(lease.ttl_ms / 3));
      await new Promise((r) => setTimeout(r, pauseMs));
    }
  },
};

/** `raftkv lease revoke ID`. */
export const LEASE_REVOKE: Command = {
  name: "lease revoke",
  args: "ID",
  summary: "revoke a lease, deleting its keys",
  description: "Revokes lease ID: it ends now and every key attached to it is deleted in the " +
    'same log entry. Prints the deleted keys (-o json: the API\'s {"id","revoked","deleted",' +
    '"index"}). A lease that does not exist exits 3.',
  options: [],
  arity: [1, 1],
  async run(ctx) {
    const path = _leasePath(ctx);
    const client = await ctx.client();
    const answer = await client.send("DELETE", path);
    if (answer.status === 404) throw _notFound(ctx);
    if (answer.status !== 200) throw answerError(answer, "lease revoke");
    const body = answer.json as { deleted: string[]; index: number };
    ctx.print(
      answer.json,
      `revoked (index ${body.index}), ${body.deleted.length} key(s) deleted` +
        (body.deleted.length > 0 ? ": " + body.deleted.join(", ") : ""),
    );
    return EXIT.ok;
  },
};

/** `raftkv lease list [ID]`. */
export const LEASE_LIST: Command = {
  name: "lease list",
  args: "[ID]",
  summary: "list the leases (or show one) with time left and keys",
  description: "Prints every lease (or lease ID alone) with its time to live, the time left " +
    'before the leader expires it, and its keys (-o json: the API\'s {"leases":[...]}, or one ' +
    "lease). A lease that does not exist exits 3.",
  options: [],
  arity: [0, 1],
  async run(ctx) {
    const path = ctx.args.length === 0 ? "/v1/leases" : _leasePath(ctx);
    const client = await ctx.client();
    const answer = await client.send("GET", path);
    if (answer.status === 404 && ctx.args.length > 0) throw _notFound(ctx);
    if (answer.status !== 200) throw answerError(answer, "lease list");
    const leases = ctx.args.length === 0
      ? (answer.json as { leases: _Lease[] }).leases
      : [answer.json as _Lease];
    ctx.print(answer.json, leases.length === 0 ? null : leases.map(_leaseLine).join("\n"));
    return EXIT.ok;
  },
};
