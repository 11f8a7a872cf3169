/**
 * The key-value subcommands: `get`, `put`, `del` and `list`.
 *
 * @module
 */

import type { Command, CommandContext } from "./command.ts";
import { answerError, type ApiClient } from "./http.ts";
import { ClientError, EXIT, type OptionSpec, usageError } from "./options.ts";

const _CONSISTENCIES = ["linearizable", "lease", "stale"];

/** The API path of a key (percent-encoded, so `a/b` stays one key). */
export function keyPath(key: string): string {
  return `/v1/data/${encodeURIComponent(key)}`;
}

function _key(ctx: CommandContext): string {
  const key = ctx.args[0] ?? "";
  if (key === "") throw usageError("the key must not be empty");
  if (key === "." || key === "..") {
    // The request would reach another path: URL parsers drop such segments, encoded or not.
    throw usageError(
      `the key ${JSON.stringify(key)} cannot be named in a URL path, so the cluster does not ` +
        "take it (raftkv list and txn still reach one an earlier version stored)",
    );
  }
  return key;
}

/** The `--cas` option of `put` and `del`. */
const CAS_OPTION: OptionSpec = {
  name: "--cas",
  value: "<mod_index>",
  default: "",
  description: "write only if the key's mod_index is this (0: only if the key does not " +
    "exist); otherwise exit 6 and change nothing",
};

/** The `?cas=N` query of `--cas`, or "". */
function _cas(ctx: CommandContext): string {
  const cas = ctx.line.values.get("--cas");
  if (cas === undefined) return "";
  if (!/^\d{1,15}$/.test(cas.value)) {
    throw usageError(`invalid value for --cas: ${JSON.stringify(cas.value)} is not a mod_index`);
  }
  return `?cas=${cas.value}`;
}

/** `raftkv get KEY`. */
export const GET: Command = {
  name: "get",
  args: "KEY",
  summary: "print the value of a key",
  description: "Prints the value of KEY (as is, followed by a newline; with -o json the API's " +
    '{"k","v","create_index","mod_index","version"}). A key that does not exist exits 3. ' +
    "With --prefix, KEY is a prefix and the keys under it are printed as list prints them " +
    "(raftkv list KEY).",
  options: [{
    name: "--consistency",
    value: "<mode>",
    default: "linearizable",
    description: '"linearizable" (confirmed with a quorum by the leader), "lease" (the leader ' +
      'answers while its lease holds) or "stale" (the endpoint answers from its own state, may be ' +
      "behind)",
  }, {
    name: "--prefix",
    value: null,
    default: "",
    description: "print every key starting with KEY, in key order, as KEY=VALUE lines (as " +
      "etcdctl get --prefix; the same as raftkv list KEY)",
  }],
  arity: [1, 1],
  async run(ctx) {
    if (ctx.line.switches.has("--prefix")) return await _list(ctx, ctx.args[0]!);
    const key = _key(ctx);
    const consistency = ctx.line.values.get("--consistency");
    if (consistency !== undefined && !_CONSISTENCIES.includes(consistency.value)) {
      throw usageError(
        `invalid value for --consistency: ${JSON.stringify(consistency.value)} is not one of ` +
          _CONSISTENCIES.join(", "),
      );
    }
    const query = consistency === undefined ? "" : `?consistency=${consistency.value}`;
    const client = await ctx.client();
    const answer = await client.send("GET", keyPath(key) + query);
    if (answer.status === 404) {
      throw new ClientError(`key ${JSON.stringify(key)} not found`, EXIT.notFound, {
        k: key,
        status: 404,
      });
    }
    if (answer.status !== 200) throw answerError(answer, `get ${JSON.stringify(key)}`);
    const value = (answer.json as { v?: unknown } | null)?.v;
    if (typeof value !== "string") {
      throw new ClientError(
        `get ${JSON.stringify(key)}: unexpected answer ${answer.text}`,
        EXIT.error,
      );
    }
    ctx.print(answer.json, value);
    return EXIT.ok;
  },
};

/** `raftkv put KEY [VALUE]`. */
export const PUT: Command = {
  name: "put",
  args: "KEY [VALUE]",
  summary: "write a value (from stdin when VALUE is left out)",
  description: "Writes VALUE under KEY and prints OK with the log index once it is committed " +
    '(-o json: the API\'s {"k","v","index"}). Without VALUE, the value is all of stdin. When ' +
    "no answer arrives in time (exit 1), the write may or may not have been applied.",
  options: [
    CAS_OPTION,
    {
      name: "--lease",
      value: "<id>",
      default: "",
      description: "attach the key to this lease (see raftkv lease grant): it is deleted when " +
        "the lease is revoked or expires; exit 3 if the lease does not exist",
    },
    {
      name: "--ttl",
      value: "<duration>",
      default: "",
      description: "grant a new lease of this time to live (10s, 1m) for this key alone; the " +
        "answer's lease is its id, to keep alive, with the TTL granted (at least the minimum, " +
        "one and a half election timeouts)",
    },
  ],
  arity: [1, 2],
  async run(ctx) {
    const key = _key(ctx);
    const query = new URLSearchParams(_cas(ctx).slice(1));
    const lease = ctx.line.values.get("--lease")?.value;
    const ttl = ctx.line.values.get("--ttl")?.value;
    if (lease !== undefined && ttl !== undefined) {
      throw usageError("give --lease or --ttl, not both");
    }
    if (lease !== undefined) {
      if (!/^[1-9]\d{0,15}$/.test(lease)) {
        throw usageError(`invalid value for --lease: ${JSON.stringify(lease)} is not a lease id`);
      }
      query.set("lease", lease);
    }
    if (ttl !== undefined) query.set("ttl", ttl);
    const value = ctx.args[1] ?? await ctx.io.stdin();
    const client = await ctx.client();
    const search = query.size > 0 ? `?${query}` : "";
    const answer = await client.send("PUT", keyPath(key) + search, { body: { v: value } });
    if (answer.status === 404) {
      throw new ClientError(
        `put ${JSON.stringify(key)}: lease ${lease} not found; nothing was written`,
        EXIT.notFound,
        { k: key, lease: Number(lease), status: 404 },
      );
    }
    if (answer.status === 400 && ttl !== undefined) {
      throw usageError(`put: ${(answer.json as { error?: string } | null)?.error}`);
    }
    if (answer.status !== 200) throw answerError(answer, `put ${JSON.stringify(key)}`);
    const leaseId = (answer.json as { lease?: unknown } | null)?.lease;
    if (leaseId !== undefined) {
      const index = (answer.json as { index?: unknown } | null)?.index;
      // A new lease (--ttl): its TTL as granted, raised to the cluster's minimum if shorter.
      const granted = (answer.json as { lease_ttl?: unknown } | null)?.lease_ttl;
      const ttlNote = granted === undefined ? "" : `, ttl ${granted}`;
      ctx.print(answer.json, `OK (index ${index}, lease ${leaseId}${ttlNote})`);
      return EXIT.ok;
    }
    const index = (answer.json as { index?: unknown } | null)?.index;
    ctx.print(answer.json, `OK (index ${index})`);
    return EXIT.ok;
  },
};

/** `raftkv del KEY`, and `raftkv del --prefix PREFIX`. */
export const DEL: Command = {
  name: "del",
  args: "KEY",
  summary: "delete a key (--prefix: every key under a prefix)",
  description: "Deletes KEY and prints the log index of the delete (-o json: the API's " +
    '{"k","deleted","index"}). A key that did not exist exits 3 (nothing was deleted).\n\n' +
    "With --prefix, KEY is a prefix: every key that starts with it is deleted in one log entry " +
    '(atomically), and the count is printed (-o json: the API\'s {"deleted","index"}); none ' +
    'matching is not an error. An empty prefix ("") deletes every key.',
  options: [CAS_OPTION, {
    name: "--prefix",
    value: null,
    default: "",
    description: "delete every key starting with KEY instead of KEY alone (not with --cas)",
  }],
  arity: [1, 1],
  async run(ctx) {
    if (ctx.line.switches.has("--prefix")) return await _deletePrefix(ctx);
    const key = _key(ctx);
    const cas = _cas(ctx);
    const client = await ctx.client();
    const answer = await client.send("DELETE", keyPath(key) + cas);
    if (answer.status !== 200) throw answerError(answer, `del ${JSON.stringify(key)}`);
    const body = answer.json as { deleted?: unknown; index?: unknown } | null;
    if (body?.deleted === false) {
      if (ctx.json) ctx.print(answer.json, null);
      else ctx.io.err(`raftkv del: key ${JSON.stringify(key)} not found: nothing was deleted`);
      return EXIT.notFound;
    }
    ctx.print(answer.json, `deleted (index ${body?.index})`);
    return EXIT.ok;
  },
};

/** `raftkv del --prefix PREFIX`: `DELETE /v1/data?prefix=PREFIX`. */
async function _deletePrefix(ctx: CommandContext): Promise<number> {
  if (ctx.line.values.has("--cas")) throw usageError("give --cas or --prefix, not both");
  const prefix = ctx.args[0]!;
  const client = await ctx.client();
  const answer = await client.send("DELETE", `/v1/data?${new URLSearchParams({ prefix })}`);
  const what = `del --prefix ${JSON.stringify(prefix)}`;
  if (answer.status !== 200) throw answerError(answer, what);
  const body = answer.json as { deleted?: unknown; index?: unknown } | null;
  if (typeof body?.deleted !== "number") {
    throw new ClientError(`${what}: unexpected answer ${answer.text.slice(0, 200)}`, EXIT.error);
  }
  const keys = body.deleted === 1 ? "1 key" : `${body.deleted} keys`;
  ctx.print(answer.json, `deleted ${keys} (index ${body.index})`);
  return EXIT.ok;
}

/** One item of a range answer (`v` absent with `keys_only`). */
export interface RangeItem {
  /** The key. */
  k: string;
  /** Its value (absent with `keysOnly`). */
  v?: string;
  /** The index of the entry that created it. */
  create_index?: number;
  /** The index of the entry that last wrote it. */
  mod_index?: number;
}

/** What {@linkcode readRange} reads. */
export interface RangeQuery {
  /** The keys starting with this. */
  prefix: string;
  /** At most this many keys. Default: every one. */
  limit?: number;
  /** The keys alone, without their values. */
  keysOnly?: boolean;
  /** The read's `consistency`. Default: the API's (linearizable). */
  consistency?: string;
}

/**
 * Reads the keys of a prefix in key order, page by page with the API's continuation token.
 *
 * @param client The client.
 * @param range What to read.
 * @param what What is being done, for errors (`list "a/"`).
 * @returns The items.
 * @throws {ClientError} On an error answer or an answer that is not a range.
 */
export async function readRange(
  client: ApiClient,
  range: RangeQuery,
  what: string,
): Promise<RangeItem[]> {
  const limit = range.limit ?? Infinity;
  const items: RangeItem[] = [];
  let next: string | null = null;
  do {
    const query = new URLSearchParams({ prefix: range.prefix });
    query.set("limit", String(Math.min(1000, limit - items.length)));
    if (range.keysOnly) query.set("keys_only", "");
    if (range.consistency !== undefined) query.set("consistency", range.consistency);
    if (next !== null) query.set("next", next);
    const answer = await client.send("GET", `/v1/data?${query}`);
    if (answer.status !== 200) throw answerError(answer, what);
    const body = answer.json as { items?: unknown; next?: unknown } | null;
    if (!Array.isArray(body?.items) || !(typeof body.next === "string" || body.next === null)) {
      throw new ClientError(`${what}: unexpected answer ${answer.text.slice(0, 200)}`, EXIT.error);
    }
    items.push(...(body.items as RangeItem[]));
    next = body.next as string | null;
  } while (next !== null && items.length < limit);
  return items;
}

/** `raftkv list [PREFIX]`. */
export const LIST: Command = {
  name: "list",
  args: "[PREFIX]",
  summary: "list the keys under a prefix, in key order",
  description: "Prints every key starting with PREFIX (every key without one), in key order, " +
    "one per line as KEY=VALUE (--keys-only: KEY), reading page by page with the API's " +
    'continuation token (-o json: {"items":[...]} with every key\'s revisions). Linearizable ' +
    "unless --consistency says otherwise.",
  options: [
    { name: "--keys-only", value: null, default: "", description: "print the keys only" },
    { name: "--limit", value: "<n>", default: "every key", description: "print at most n keys" },
    {
      name: "--consistency",
      value: "<mode>",
      default: "linearizable",
      description: '"linearizable", "lease" or "stale", as for get',
    },
  ],
  arity: [0, 1],
  run: (ctx) => _list(ctx, ctx.args[0] ?? ""),
};

/** `raftkv list [PREFIX]`, and `raftkv get --prefix PREFIX`. */
async function _list(ctx: CommandContext, prefix: string): Promise<number> {
  const keysOnly = ctx.line.switches.has("--keys-only");
  const limitText = ctx.line.values.get("--limit")?.value;
  const limit = limitText === undefined ? Infinity : Number(limitText);
  if (limitText !== undefined && !(Number.isInteger(limit) && limit > 0)) {
    throw usageError(`invalid value for --limit: ${JSON.stringify(limitText)}`);
  }
  const consistency = ctx.line.values.get("--consistency")?.value;
  if (consistency !== undefined && !_CONSISTENCIES.includes(consistency)) {
    throw usageError(`invalid value for --consistency: ${JSON.stringify(consistency)}`);
  }
  const items = await readRange(
    await ctx.client(),
    { prefix, limit, keysOnly, ...(consistency === undefined ? {} : { consistency }) },
    `list ${JSON.stringify(prefix)}`,
  );
  const lines = items.map((item) => keysOnly ? item.k : `${item.k}=${item.v ?? ""}`);
  ctx.print({ items }, lines.length > 0 ? lines.join("\n") : null);
  return EXIT.ok;
}
