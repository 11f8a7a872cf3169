/**
 * An interaction environment for the pure Raft core: a handful of {@linkcode RaftCore}s, an
 * in-memory "disk" per node and a message queue between them, driven one command at a time by a
 * data-driven test file (see `datadriven.ts`) and printing everything that happens, in a stable
 * order, one line per message. The golden files in `src/raft/testdata/` are written in this
 * language; each reads as a story of what the core does.
 *
 * Node ids are `1`, `2`, ... in the order nodes are added. The environment persists a Ready
 * instantly (so `persisted()` is called at once); messages wait in the queue until delivered.
 *
 * Commands (`ID` is a node id; `[...]` is optional):
 *
 * - `add-nodes N [key=value...]` adds N nodes. Keys: `voters=1,2,3` (default: the nodes added by
 *   this command; `voters=` alone: none, a node waiting to join), `learners=4,5` (default none),
 *   `promotelag=N` (the core's learner promotion bound), `prevote=true|false` (default true), `checkquorum=true|false` (default true),
 *   `election=T` (default 10), `heartbeat=T` (default 1), `leasemargin=T` (default the core's),
 *   `maxinflight=N`, `maxmsgbytes=N`, `timeouts=10,12,15` (each node's randomized election
 *   timeout; default: no jitter, the timeout is exactly `election` ticks), `seed=S` (jitter from a
 *   seeded source instead), and a recovered disk: `log=1,1,2`
 *   (the terms of entries 1, 2, 3...), `term=T` (default the last log term), `vote=ID`,
 *   `commit=I`.
 * - `tick ID [n]` ticks one node n times (default 1); `tick-all [n]` ticks every live node.
 * - `campaign ID` starts an election; `propose ID text...` proposes the rest of the line;
 *   `read-index ID id` asks for a ReadIndex read; `lease-read ID` prints the index a lease read
 *   may serve, or that the lease does not hold; `transfer-leadership ID [TO]` asks leader ID to
 *   hand its leadership to TO (default: the most caught-up voter) and prints the target;
 *   `conf-change ID add-learner|promote|remove NODE` asks leader ID for a membership change and
 *   prints the new configuration's index; `conf ID...` prints each node's configuration;
 *   `committed-conf ID...` the configuration in force at each node's commit index (what it
 *   answers a members query with) and the index of the entry that set it (0: bootstrap).
 * - `process-ready [ID...]` takes one Ready from each node given (default: every live node that
 *   has one), prints it, persists it (snapshot, entries, hard state), calls `persisted()` and
 *   queues its messages (persisted messages after the others).
 * - `deliver [ID...] [from=ID]` delivers the queued messages to the nodes given (default: all),
 *   optionally only those from one sender, and prints them. A message to a crashed node or over a
 *   cut link is dropped and printed as such. Delivering (or dropping) a Snap reports the outcome
 *   to its sender with `reportSnapshot`, as the transport does once the stream ends.
 * - `drop FROM TO` cuts the link from FROM to TO; `partition 1 2 / 3` cuts every link between the
 *   groups; `isolate ID` cuts a node off from all others; `heal` restores every link.
 * - `stabilize` repeats process-ready and deliver until no node has a Ready and nothing is queued.
 * - `crash ID` stops a node: what it did not persist is lost; messages to it are dropped.
 *   `restart ID` starts it again from its disk (hard state, snapshot, entries).
 * - `snapshot ID` records a snapshot at the node's applied index (as the driver does after writing
 *   the snapshot file); `compact ID index` drops the log up to `index`, which the latest snapshot
 *   must cover, from memory and from disk.
 * - `report-unreachable ID PEER` tells a leader a peer could not be reached.
 * - `removed-at ID FROM` prints how node ID answers a peer message from FROM: taken, or "removed"
 *   as of its commit index (`RaftCore.removedAt`); `learn-removed ID INDEX`
 *   tells node ID a peer answered so (`RaftCore.learnRemoved`) and prints what it now counts
 *   itself: removed or member.
 * - `status ID...` prints term, vote, role, leader, the log's marks and, on a leader, each
 *   follower's progress; `log ID...` prints the terms of each node's log.
 *
 * Entries print as `term/index Type "data"`; messages as `from->to Type term=... ` followed by the
 * fields that type uses (and any other field that is set).
 *
 * @module
 */

import { RaftCore } from "../src/raft/raft.ts";
import { seededRandom } from "../src/raft/rand.ts";
import {
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType,
  type NodeId,
  NONE,
  type Ready,
  type SnapshotMeta,
} from "../src/raft/types.ts";
import type { Command } from "./datadriven.ts";

/** Thrown for a command the environment cannot run as written (a mistake in the test file). */
export class UsageError extends Error {
  /** Creates the error; the message names the file, line and command. */
  constructor(command: Command, message: string) {
    super(`${command.path}:${command.line}: ${command.name}: ${message}`);
    this.name = "UsageError";
  }
}

/** The options a node is created (and restarted) with. */
interface _NodeOptions {
  voters: NodeId[];
  learners: NodeId[];
  promoteLag: number | null;
  preVote: boolean;
  checkQuorum: boolean;
  electionTicks: number;
  heartbeatTicks: number;
  leaseMarginTicks: number | null;
  maxInflight: number | null;
  maxMsgBytes: number | null;
  seed: number | null;
  /** The randomized election timeout to use (between election and twice it), or null. */
  timeout: number | null;
}

/** What a node has made durable. */
interface _Disk {
  hardState: HardState;
  snapshot: SnapshotMeta | null;
  entries: Entry[];
}

interface _Node {
  id: NodeId;
  options: _NodeOptions;
  /** Null while crashed. */
  core: RaftCore | null;
  disk: _Disk;
}

const _decoder = new TextDecoder();
const _encoder = new TextEncoder();

/** Prints a node id, or `none` for {@linkcode NONE}. */
function _id(id: NodeId): string {
  return id === NONE ? "none" : id;
}

/** Orders node ids numerically when they are numbers ("2" before "10"). */
function _byId(a: NodeId, b: NodeId): number {
  const x = Number(a);
  const y = Number(b);
  return Number.isNaN(x) || Number.isNaN(y) ? a.localeCompare(b) : x - y;
}

/** Formats an entry as `term/index Type "data"` (a no-op has no data). */
export function formatEntry(e: Entry): string {
  const type = EntryType[e.type] ?? `type(${e.type})`;
  if (e.type === EntryType.Noop && e.data.length === 0) return `${e.term}/${e.index} ${type}`;
  return `${e.term}/${e.index} ${type} ${JSON.stringify(_decoder.decode(e.data))}`;
}

/** Formats entries as a bracketed, comma-separated list. */
export function formatEntries(entries: readonly Entry[]): string {
  return `[${entries.map(formatEntry).join(", ")}]`;
}

/** Formats snapshot metadata as `index=I term=T voters=[...]`. */
export function formatSnapshot(s: SnapshotMeta): string {
  const learners = s.learners?.length ? ` learners=[${s.learners.join(",")}]` : "";
  return `index=${s.index} term=${s.term} voters=[${s.voters.join(",")}]${learners}`;
}

/** The fields each message type uses, printed in this order after `term`. */
const _FIELDS: Record<MessageType, (keyof Message)[]> = {
  [MessageType.Vote]: ["logTerm", "index"],
  [MessageType.VoteResp]: ["reject"],
  [MessageType.PreVote]: ["logTerm", "index"],
  [MessageType.PreVoteResp]: ["reject"],
  [MessageType.App]: ["logTerm", "index", "commit", "entries"],
  [MessageType.AppResp]: ["index", "reject", "rejectHint", "logTerm"],
  [MessageType.Heartbeat]: ["commit", "context"],
  [MessageType.HeartbeatResp]: ["index", "context"],
  [MessageType.Snap]: ["snapshot"],
  [MessageType.TimeoutNow]: [],
  [MessageType.ReadIndex]: ["context"],
  [MessageType.ReadIndexResp]: ["index", "context"],
};

/** Every optional field, in the order extras are printed. */
const _ALL_FIELDS: (keyof Message)[] = [
  "logTerm",
  "index",
  "commit",
  "entries",
  "reject",
  "rejectHint",
  "context",
  "snapshot",
];

/**
 * Formats a message on one line: `from->to Type term=T`, then the fields its type uses, then any
 * other field that is set (so nothing unexpected goes unseen). `reject` prints only when true,
 * and a rejection's hint fields only on a rejection.
 */
export function formatMessage(m: Message): string {
  const parts = [`${_id(m.from)}->${_id(m.to)} ${MessageType[m.type] ?? m.type} term=${m.term}`];
  const used = _FIELDS[m.type] ?? [];
  const field = (name: keyof Message, always: boolean): void => {
    const value = m[name];
    switch (name) {
      case "entries":
        if (always || m.entries.length > 0) parts.push(`entries=${formatEntries(m.entries)}`);
        return;
      case "snapshot":
        if (m.snapshot) parts.push(`snapshot=(${formatSnapshot(m.snapshot)})`);
        return;
      case "reject":
        if (m.reject) parts.push("reject");
        return;
      default:
        if (always || value !== 0) parts.push(`${name}=${String(value)}`);
    }
  };
  const isRejectHint = (name: keyof Message) =>
    m.type === MessageType.AppResp && (name === "rejectHint" || name === "logTerm");
  for (const name of used) field(name, !isRejectHint(name) || m.reject);
  for (const name of _ALL_FIELDS) if (!used.includes(name)) field(name, false);
  return parts.join(" ");
}

/** Formats a hard state. */
function _hardState(hs: HardState): string {
  return `term=${hs.term} vote=${_id(hs.vote)} commit=${hs.commit}`;
}

/** Formats a Ready, one line per item, leaving out what is empty. */
export function formatReady(id: NodeId, rd: Ready): string[] {
  const lines = [`> ${id} ready`];
  if (rd.softState) {
    lines.push(`  soft state: role=${rd.softState.role} leader=${_id(rd.softState.leader)}`);
  }
  if (rd.hardState) lines.push(`  hard state: ${_hardState(rd.hardState)}`);
  if (rd.snapshot) lines.push(`  snapshot: ${formatSnapshot(rd.snapshot)}`);
  if (rd.entries.length > 0) lines.push(`  entries: ${formatEntries(rd.entries)}`);
  if (rd.messages.length > 0) {
    lines.push("  messages:");
    for (const m of rd.messages) lines.push(`    ${formatMessage(m)}`);
  }
  if (rd.persistedMessages.length > 0) {
    lines.push("  messages after persisting:");
    for (const m of rd.persistedMessages) lines.push(`    ${formatMessage(m)}`);
  }
  if (rd.committedEntries.length > 0) {
    lines.push(`  committed: ${formatEntries(rd.committedEntries)}`);
  }
  if (rd.readStates.length > 0) {
    const reads = rd.readStates.map((r) => `id=${r.id} index=${r.index}`).join(", ");
    lines.push(`  read states: [${reads}]`);
  }
  return lines;
}

/** Formats an error thrown by the core. */
function _error(e: unknown): string {
  return e instanceof Error ? `error: ${e.name}: ${e.message}` : `error: ${String(e)}`;
}

/** Splits arguments into positional words and `key=value` options, checking the keys. */
function _options(
  command: Command,
  args: string[],
  allowed: string[],
): { positional: string[]; options: Map<string, string> } {
  const positional: string[] = [];
  const options = new Map<string, string>();
  for (const arg of args) {
    const eq = arg.indexOf("=");
    if (eq < 0) {
      positional.push(arg);
      continue;
    }
    const key = arg.slice(0, eq);
    if (!allowed.includes(key)) {
      throw new UsageError(command, `unknown option "${key}" (known: ${allowed.join(", ")})`);
    }
    options.set(key, arg.slice(eq + 1));
  }
  return { positional, options };
}

function _int(command: Command, what: string, text: string | undefined): number {
  const n = Number(text);
  if (text === undefined || text === "" || !Number.isSafeInteger(n) || n < 0) {
    throw new UsageError(command, `${what} must be a non-negative integer, got ${text}`);
  }
  return n;
}

function _bool(command: Command, what: string, text: string): boolean {
  if (text === "true") return true;
  if (text === "false") return false;
  throw new UsageError(command, `${what} must be true or false, got ${text}`);
}

const _ADD_NODES_OPTIONS = [
  "voters",
  "learners",
  "promotelag",
  "prevote",
  "checkquorum",
  "election",
  "heartbeat",
  "leasemargin",
  "maxinflight",
  "maxmsgbytes",
  "seed",
  "timeouts",
  "log",
  "term",
  "vote",
  "commit",
];

/**
 * The environment: create one per test file and pass {@linkcode RaftInteraction.handle} to the
 * data-driven runner.
 *
 * @example Usage
 * ```ts
 * import { RaftInteraction } from "./raft_interaction.ts";
 *
 * const env = new RaftInteraction();
 * const cmd = (line: string) => {
 *   const [name, ...args] = line.split(" ");
 *   return env.handle({ path: "example", line: 1, name: name!, args, rest: args.join(" ") });
 * };
 * cmd("add-nodes 1");
 * cmd("campaign 1");
 * console.assert(cmd("process-ready").includes("role=leader"));
 * ```
 */
export class RaftInteraction {
  #nodes = new Map<NodeId, _Node>();
  #queue: Message[] = [];
  /** Cut links, as `from->to`. */
  #cut = new Set<string>();

  /** Runs one command and returns what it printed. */
  handle = (command: Command): string => {
    const lines = this.#run(command);
    return lines.join("\n");
  };

  #run(c: Command): string[] {
    switch (c.name) {
      case "add-nodes":
        return this.#addNodes(c);
      case "tick":
        return this.#tick(c);
      case "tick-all":
        return this.#tickAll(c);
      case "campaign":
        return this.#try(() => this.#live(c, c.args[0]).campaign());
      case "propose":
        return this.#propose(c);
      case "read-index":
        return this.#readIndex(c);
      case "lease-read":
        return this.#leaseRead(c);
      case "transfer-leadership":
        return this.#transferLeadership(c);
      case "conf-change":
        return this.#confChange(c);
      case "conf":
        return this.#ids(c, c.args).map((id) => this.#conf(id));
      case "committed-conf":
        return this.#ids(c, c.args).map((id) => this.#committedConf(id));
      case "process-ready":
        return this.#processReadies(c);
      case "deliver":
        return this.#deliverCommand(c);
      case "drop":
        return this.#drop(c);
      case "partition":
        return this.#partition(c);
      case "isolate":
        return this.#isolate(c);
      case "heal":
        this.#cut.clear();
        return [];
      case "stabilize":
        return this.#stabilize(c);
      case "crash":
        return this.#crash(c);
      case "restart":
        return this.#restart(c);
      case "snapshot":
        return this.#snapshot(c);
      case "compact":
        return this.#compact(c);
      case "report-unreachable":
        return this.#try(() =>
          this.#live(c, c.args[0]).reportUnreachable(this.#node(c, c.args[1]).id)
        );
      case "removed-at":
        return this.#removedAt(c);
      case "learn-removed":
        return this.#learnRemoved(c);
      case "status":
        return this.#ids(c, c.args).flatMap((id) => this.#status(id));
      case "log":
        return this.#ids(c, c.args).map((id) => this.#log(id));
      default:
        throw new UsageError(c, "unknown command");
    }
  }

  // ---- helpers ------------------------------------------------------------------------------

  #node(c: Command, id: string | undefined): _Node {
    if (id === undefined) throw new UsageError(c, "a node id is missing");
    const node = this.#nodes.get(id);
    if (!node) throw new UsageError(c, `no node "${id}"`);
    return node;
  }

  #live(c: Command, id: string | undefined): RaftCore {
    const node = this.#node(c, id);
    if (!node.core) throw new UsageError(c, `node ${id} is crashed`);
    return node.core;
  }

  #ids(c: Command, args: string[]): NodeId[] {
    if (args.length === 0) return this.#sortedIds();
    return args.map((id) => this.#node(c, id).id);
  }

  #sortedIds(): NodeId[] {
    return [...this.#nodes.keys()].sort(_byId);
  }

  #liveIds(): NodeId[] {
    return this.#sortedIds().filter((id) => this.#nodes.get(id)!.core !== null);
  }

  /** Runs a call into the core, printing what it throws. */
  #try(fn: () => void | string): string[] {
    try {
      const out = fn();
      return typeof out === "string" ? [out] : [];
    } catch (e) {
      return [_error(e)];
    }
  }

  #newCore(node: _Node): RaftCore {
    const o = node.options;
    const position = this.#sortedIds().indexOf(node.id);
    return new RaftCore({
      id: node.id,
      voters: o.voters,
      learners: o.learners,
      ...(o.promoteLag !== null ? { promoteLag: o.promoteLag } : {}),
      preVote: o.preVote,
      checkQuorum: o.checkQuorum,
      electionTicks: o.electionTicks,
      heartbeatTicks: o.heartbeatTicks,
      ...(o.leaseMarginTicks !== null ? { leaseMarginTicks: o.leaseMarginTicks } : {}),
      ...(o.maxInflight !== null ? { maxInflight: o.maxInflight } : {}),
      ...(o.maxMsgBytes !== null ? { maxMsgBytes: o.maxMsgBytes } : {}),
      random: o.seed !== null
        ? seededRandom(o.seed * 1000 + position)
        // The core draws its timeout as election + floor(random() * election): aim mid-step.
        : () => ((o.timeout ?? o.electionTicks) - o.electionTicks + 0.5) / o.electionTicks,
      hardState: { ...node.disk.hardState },
      snapshot: node.disk.snapshot ? { ...node.disk.snapshot } : null,
      entries: [...node.disk.entries],
    });
  }

  // ---- commands -----------------------------------------------------------------------------

  #addNodes(c: Command): string[] {
    const { positional, options: o } = _options(c, c.args, _ADD_NODES_OPTIONS);
    const count = _int(c, "the node count", positional[0]);
    if (count < 1 || positional.length !== 1) {
      throw new UsageError(c, "usage: add-nodes N [k=v...]");
    }
    const first = this.#nodes.size + 1;
    const ids = Array.from({ length: count }, (_, i) => String(first + i));
    const list = (v: string) => v === "" ? [] : v.split(",");
    const voters = o.has("voters") ? list(o.get("voters")!) : ids;
    const learners = o.has("learners") ? list(o.get("learners")!) : [];
    const terms = o.has("log") && o.get("log") !== ""
      ? o.get("log")!.split(",").map((t) => _int(c, "a log term", t))
      : [];
    const entries: Entry[] = terms.map((term, i) => ({
      term,
      index: i + 1,
      type: EntryType.Normal,
      data: new Uint8Array(0),
    }));
    const get = (key: string) => o.get(key);
    const timeouts = o.has("timeouts")
      ? o.get("timeouts")!.split(",").map((t) => _int(c, "a timeout", t))
      : null;
    if (timeouts && timeouts.length !== count) {
      throw new UsageError(c, `timeouts= needs ${count} values, got ${timeouts.length}`);
    }
    const options: _NodeOptions = {
      voters,
      learners,
      promoteLag: get("promotelag") === undefined ? null : _int(c, "promotelag", get("promotelag")),
      preVote: get("prevote") === undefined ? true : _bool(c, "prevote", get("prevote")!),
      checkQuorum: get("checkquorum") === undefined
        ? true
        : _bool(c, "checkquorum", get("checkquorum")!),
      electionTicks: get("election") === undefined ? 10 : _int(c, "election", get("election")),
      heartbeatTicks: get("heartbeat") === undefined ? 1 : _int(c, "heartbeat", get("heartbeat")),
      leaseMarginTicks: get("leasemargin") === undefined
        ? null
        : _int(c, "leasemargin", get("leasemargin")),
      maxInflight: get("maxinflight") === undefined
        ? null
        : _int(c, "maxinflight", get("maxinflight")),
      maxMsgBytes: get("maxmsgbytes") === undefined
        ? null
        : _int(c, "maxmsgbytes", get("maxmsgbytes")),
      seed: get("seed") === undefined ? null : _int(c, "seed", get("seed")),
      timeout: null,
    };
    if (timeouts && options.seed !== null) {
      throw new UsageError(c, "timeouts= and seed= exclude each other");
    }
    for (const t of timeouts ?? []) {
      if (t < options.electionTicks || t >= 2 * options.electionTicks) {
        throw new UsageError(
          c,
          `a timeout must be from election (${options.electionTicks}) to below twice it, got ${t}`,
        );
      }
    }
    const hardState: HardState = {
      term: get("term") === undefined ? (terms.at(-1) ?? 0) : _int(c, "term", get("term")),
      vote: get("vote") ?? NONE,
      commit: get("commit") === undefined ? 0 : _int(c, "commit", get("commit")),
    };
    const lines: string[] = [];
    for (const [i, id] of ids.entries()) {
      const node: _Node = {
        id,
        options: { ...options, timeout: timeouts?.[i] ?? null },
        core: null,
        disk: { hardState: { ...hardState }, snapshot: null, entries: [...entries] },
      };
      this.#nodes.set(id, node);
      try {
        node.core = this.#newCore(node);
      } catch (e) {
        this.#nodes.delete(id);
        return [_error(e)];
      }
      lines.push(this.#statusLine(node.core));
    }
    return lines;
  }

  #tick(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    const n = c.args[1] === undefined ? 1 : _int(c, "the tick count", c.args[1]);
    return this.#try(() => {
      for (let i = 0; i < n; i++) core.tick();
    });
  }

  #tickAll(c: Command): string[] {
    const n = c.args[0] === undefined ? 1 : _int(c, "the tick count", c.args[0]);
    return this.#try(() => {
      for (let i = 0; i < n; i++) {
        for (const id of this.#liveIds()) this.#nodes.get(id)!.core!.tick();
      }
    });
  }

  #propose(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    const text = c.rest.slice(c.args[0]!.length).trim();
    return this.#try(() => {
      const { index, term } = core.propose(_encoder.encode(text));
      return `proposed at index=${index} term=${term}`;
    });
  }

  #readIndex(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    const id = _int(c, "the read id", c.args[1]);
    return this.#try(() => core.readIndex(id));
  }

  #leaseRead(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    return this.#try(() => {
      const index = core.leaseRead();
      return index === null ? "no lease: read refused" : `lease holds: read at index=${index}`;
    });
  }

  #transferLeadership(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    const to = c.args[1];
    if (to !== undefined) this.#node(c, to);
    return this.#try(() => `transferring leadership to ${core.transferLeadership(to)}`);
  }

  #confChange(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    const op = c.args[1];
    const node = c.args[2];
    if ((op !== "add-learner" && op !== "promote" && op !== "remove") || node === undefined) {
      throw new UsageError(c, "usage: conf-change ID add-learner|promote|remove NODE");
    }
    return this.#try(() => {
      const { index } = core.proposeConfChange({ op, node });
      return `configuration proposed at index ${index}`;
    });
  }

  /** `removed-at ID FROM`: how node ID would answer a peer message from FROM. */
  #removedAt(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    const from = this.#node(c, c.args[1]).id;
    const at = core.removedAt(from);
    return [
      at > 0
        ? `${core.id}: ${from} was removed (committed configuration ${at})`
        : `${core.id}: takes ${from}`,
    ];
  }

  /** `learn-removed ID INDEX`: node ID hears from a peer that it was removed as of INDEX. */
  #learnRemoved(c: Command): string[] {
    const core = this.#live(c, c.args[0]);
    const index = Number(c.args[1]);
    if (!Number.isSafeInteger(index) || index < 1) {
      throw new UsageError(c, "usage: learn-removed ID INDEX");
    }
    return [`${core.id}: ${core.learnRemoved(index) ? "removed" : "member"}`];
  }

  #conf(id: NodeId): string {
    const core = this.#nodes.get(id)!.core;
    if (!core) return `${id}: crashed`;
    const c = core.confState();
    return `${id}: voters=[${c.voters.join(",")}] learners=[${
      c.learners.join(",")
    }] index=${core.confIndex}${core.removed ? " (removed)" : ""}`;
  }

  /** The configuration in force at the node's commit index, and the entry that set it. */
  #committedConf(id: NodeId): string {
    const core = this.#nodes.get(id)!.core;
    if (!core) return `${id}: crashed`;
    const commit = Math.max(core.log.committed, core.log.snapIndex);
    const c = core.confAt(commit);
    return `${id}: at commit ${commit}: voters=[${c.voters.join(",")}] learners=[${
      c.learners.join(",")
    }] index=${core.confIndexAt(commit)}`;
  }

  #processReadies(c: Command): string[] {
    const ids = c.args.length > 0
      ? c.args.map((id) => this.#node(c, id).id)
      : this.#liveIds().filter((id) => this.#nodes.get(id)!.core!.hasReady());
    const lines: string[] = [];
    for (const id of ids) {
      const core = this.#live(c, id);
      if (!core.hasReady()) {
        lines.push(`> ${id} has no Ready`);
        continue;
      }
      lines.push(...this.#processReady(this.#nodes.get(id)!));
    }
    return lines;
  }

  /** Takes, prints and persists one Ready, and queues its messages. */
  #processReady(node: _Node): string[] {
    const core = node.core!;
    let rd: Ready;
    try {
      rd = core.ready();
    } catch (e) {
      return [`> ${node.id} ready`, `  ${_error(e)}`];
    }
    const lines = formatReady(node.id, rd);
    const disk = node.disk;
    if (rd.snapshot) {
      // Installing a snapshot replaces the log: it continues after the snapshot.
      disk.snapshot = { ...rd.snapshot, voters: [...rd.snapshot.voters] };
      disk.entries = [];
    }
    const first = rd.entries[0];
    if (first) {
      disk.entries = disk.entries.filter((e) => e.index < first.index);
      disk.entries.push(...rd.entries);
    }
    if (rd.hardState) disk.hardState = { ...rd.hardState };
    this.#queue.push(...rd.messages);
    const last = rd.entries.at(-1);
    try {
      if (last) core.persisted(last.index, last.term);
    } catch (e) {
      lines.push(`  ${_error(e)}`);
    }
    this.#queue.push(...rd.persistedMessages);
    return lines;
  }

  #deliverCommand(c: Command): string[] {
    const { positional, options } = _options(c, c.args, ["from"]);
    const to = positional.length > 0 ? new Set(positional.map((id) => this.#node(c, id).id)) : null;
    const from = options.get("from");
    if (from !== undefined) this.#node(c, from);
    return this.#deliver(to, from ?? null);
  }

  /** Delivers the queued messages to `to` (all if null) from `from` (any if null). */
  #deliver(to: Set<NodeId> | null, from: NodeId | null): string[] {
    const picked: Message[] = [];
    const kept: Message[] = [];
    for (const m of this.#queue) {
      ((to === null || to.has(m.to)) && (from === null || m.from === from) ? picked : kept)
        .push(m);
    }
    this.#queue = kept;
    const lines: string[] = [];
    const recipients = [...new Set(picked.map((m) => m.to))].sort(_byId);
    for (const id of recipients) {
      lines.push(`> ${_id(id)} receives`);
      for (const m of picked) {
        if (m.to !== id) continue;
        const target = this.#nodes.get(m.to);
        let dropped: string | null = null;
        if (!target) dropped = `no node ${_id(m.to)}`;
        else if (!target.core) dropped = `${m.to} is down`;
        else if (this.#cut.has(`${m.from}->${m.to}`)) dropped = "link cut";
        if (dropped !== null) {
          lines.push(`  ${formatMessage(m)} (dropped: ${dropped})`);
        } else {
          lines.push(`  ${formatMessage(m)}`);
          try {
            target!.core!.step(m);
          } catch (e) {
            lines.push(`  ${_error(e)}`);
          }
        }
        if (m.type === MessageType.Snap) lines.push(...this.#reportSnapshot(m, dropped === null));
      }
    }
    return lines;
  }

  /** Tells a Snap's sender how the stream ended, as the transport does. */
  #reportSnapshot(m: Message, ok: boolean): string[] {
    const sender = this.#nodes.get(m.from)?.core;
    if (!sender) return [];
    try {
      sender.reportSnapshot(m.to, ok);
    } catch (e) {
      return [`  ${_error(e)}`];
    }
    return [`  (${m.from} learns the snapshot ${ok ? "reached" : "did not reach"} ${m.to})`];
  }

  #drop(c: Command): string[] {
    const from = this.#node(c, c.args[0]).id;
    const to = this.#node(c, c.args[1]).id;
    this.#cut.add(`${from}->${to}`);
    return [];
  }

  #partition(c: Command): string[] {
    const groups: NodeId[][] = [[]];
    for (const arg of c.args) {
      if (arg === "/") groups.push([]);
      else groups.at(-1)!.push(this.#node(c, arg).id);
    }
    if (groups.length < 2 || groups.some((g) => g.length === 0)) {
      throw new UsageError(c, "usage: partition 1 2 / 3 [/ ...]");
    }
    for (const [i, a] of groups.entries()) {
      for (const [j, b] of groups.entries()) {
        if (i === j) continue;
        for (const x of a) for (const y of b) this.#cut.add(`${x}->${y}`);
      }
    }
    return [];
  }

  #isolate(c: Command): string[] {
    const id = this.#node(c, c.args[0]).id;
    for (const other of this.#nodes.keys()) {
      if (other === id) continue;
      this.#cut.add(`${id}->${other}`);
      this.#cut.add(`${other}->${id}`);
    }
    return [];
  }

  #stabilize(c: Command): string[] {
    if (c.args.length > 0) throw new UsageError(c, "stabilize takes no arguments");
    const lines: string[] = [];
    for (let round = 0; round < 1000; round++) {
      const ready = this.#liveIds().filter((id) => this.#nodes.get(id)!.core!.hasReady());
      if (ready.length === 0 && this.#queue.length === 0) return lines;
      for (const id of ready) lines.push(...this.#processReady(this.#nodes.get(id)!));
      lines.push(...this.#deliver(null, null));
    }
    lines.push("error: did not stabilize within 1000 rounds");
    return lines;
  }

  #crash(c: Command): string[] {
    const node = this.#node(c, c.args[0]);
    if (!node.core) throw new UsageError(c, `node ${node.id} is already crashed`);
    node.core = null;
    return [];
  }

  #restart(c: Command): string[] {
    const node = this.#node(c, c.args[0]);
    if (node.core) throw new UsageError(c, `node ${node.id} is running; crash it first`);
    const d = node.disk;
    const lines = [
      `${node.id} recovers from its disk:`,
      `  hard state: ${_hardState(d.hardState)}`,
      `  snapshot: ${d.snapshot ? formatSnapshot(d.snapshot) : "none"}`,
      `  entries: ${formatEntries(d.entries)}`,
    ];
    try {
      node.core = this.#newCore(node);
    } catch (e) {
      lines.push(_error(e));
      return lines;
    }
    lines.push(this.#statusLine(node.core));
    return lines;
  }

  #snapshot(c: Command): string[] {
    const node = this.#node(c, c.args[0]);
    const core = this.#live(c, node.id);
    const index = core.log.applied;
    const term = core.log.term(index);
    if (index === 0 || term === undefined) return ["error: nothing applied to snapshot"];
    const conf = core.confAt(index);
    const meta: SnapshotMeta = { index, term, voters: conf.voters, learners: conf.learners };
    return this.#try(() => {
      core.snapshotSaved(meta, core.log.snapIndex);
      if (!node.disk.snapshot || node.disk.snapshot.index < index) {
        node.disk.snapshot = { ...meta, voters: [...meta.voters] };
      }
      return `snapshot saved: ${formatSnapshot(meta)}`;
    });
  }

  #compact(c: Command): string[] {
    const node = this.#node(c, c.args[0]);
    const core = this.#live(c, node.id);
    const index = _int(c, "the compaction index", c.args[1]);
    const snap = core.latestSnapshot();
    if (!snap) return ["error: no snapshot to compact behind"];
    return this.#try(() => {
      core.snapshotSaved(snap, index);
      node.disk.entries = node.disk.entries.filter((e) => e.index > index);
      return this.#log(node.id);
    });
  }

  #statusLine(core: RaftCore): string {
    return `${core.id}: term=${core.term} vote=${_id(core.vote)} role=${core.role} leader=${
      _id(core.leader)
    }`;
  }

  #status(id: NodeId): string[] {
    const core = this.#nodes.get(id)!.core;
    if (!core) return [`${id}: crashed`];
    const log = core.log;
    const snapshot = core.latestSnapshot();
    const lines = [
      this.#statusLine(core),
      `  log: first=${log.firstIndex()} last=${log.lastIndex()} stable=${log.stable} commit=${log.committed} applied=${log.applied}`,
      `  snapshot: ${snapshot ? formatSnapshot(snapshot) : "none"}`,
    ];
    if (core.role === "leader") {
      if (core.leadTransferee !== NONE) lines.push(`  transferring to ${core.leadTransferee}`);
      for (const v of [...core.progress.keys()].sort(_byId)) {
        const pr = core.progress.get(v)!;
        const learner = core.learners.includes(v) ? " (learner)" : "";
        if (v === core.id) {
          lines.push(`  progress ${v}: match=${pr.match} (self)`);
          continue;
        }
        let state: string = pr.state;
        if (pr.state === "probe" && pr.probeSent) state += " (probe sent)";
        if (pr.state === "replicate") state += ` inflight=${pr.inflights.count}`;
        if (pr.state === "snapshot") state += ` pending=${pr.pendingSnapshot}`;
        lines.push(`  progress ${v}: match=${pr.match} next=${pr.next} ${state}${learner}`);
      }
    }
    return lines;
  }

  #log(id: NodeId): string {
    const core = this.#nodes.get(id)!.core;
    if (!core) return `${id}: crashed`;
    const log = core.log;
    const terms: number[] = [];
    for (let i = log.firstIndex(); i <= log.lastIndex(); i++) terms.push(log.term(i)!);
    const snap = log.snapIndex > 0
      ? ` compacted through index=${log.snapIndex} term=${log.snapTerm}`
      : "";
    const range = terms.length > 0
      ? `${log.firstIndex()}..${log.lastIndex()} terms=[${terms.join(" ")}]`
      : "empty";
    return `${id}: log ${range}${snap} commit=${log.committed} applied=${log.applied}`;
  }
}
