/**
 * The generator of the peer-protocol fuzz run (`tests/peer_fuzz_test.ts`, `deno task fuzz:peer`):
 * hostile requests to a node's peer port, built from a seed.
 *
 * {@linkcode generatePeerRequest} turns `(seed, index, target)` into one HTTP request for the
 * peer server, in one of six categories:
 *
 * - `extreme`: well-framed batches (encoded with `encodeMessages`) of every message type with
 *   extreme field values: 0, 1, 2^31, 2^32, 2^48, 2^53-1, the node's term plus or minus a little;
 *   senders that are members, the node itself, non-members, empty or very long ids; entries
 *   with bad command bytes, indexes that do not follow each other, thousands of entries. Some
 *   get a number the encoder refuses (NaN, -1, 2^53, 0.5, ...) or a bad flag written into the
 *   encoded bytes at the field's offset.
 * - `plausible`: small batches from a member with sane fields (see below).
 * - `mutated`: valid encodings with bit flips, truncations, splices, inserted or deleted bytes
 *   and corrupted length and count fields.
 * - `random`: random bytes, half of them after the codec's magic byte.
 * - `protocol`: the wrong endpoint, method or headers: `Snap` on `/raft/messages`, other types
 *   in a snapshot header, missing, forged, empty and huge `x-raftkv-from`, snapshot uploads
 *   with bogus headers or bodies (never a valid snapshot file), declared lengths larger or
 *   smaller than the body, bodies cut off mid-stream.
 * - `stream`: the long-lived message stream (`POST /raft/stream`), mostly under another
 *   member's name: frames of extreme batches, `ReadIndex`/`ReadIndexResp` batches with wild
 *   contexts and indexes, harmless batches, mutated or random bytes and empty frames; ending
 *   whole, in a length prefix over the 16 MiB limit (or 2^32-1), a frame longer than the rest of
 *   the stream, a prefix cut short, a prefix shorter than its batch, or a reset; often written in
 *   pieces that split frames and length prefixes ({@linkcode PeerRequest.pieces}).
 *
 * ## What a correct node can survive
 *
 * Peers are not authenticated: a message that names a member as its sender, carries that
 * member's plausible term and has a leader's shape (entries, a commit index, a snapshot, a vote
 * grant, an acknowledgement) is indistinguishable from the real thing, and a correct node would
 * follow it into losing data. The generator never sends such a message: whenever the body's
 * `from` or the `x-raftkv-from` header names another member and the term is neither stale (below
 * the node's last observed term, which only grows) nor one the node refuses (above `MAX_TERM`,
 * 2^48, or not a safe integer), the message is limited to shapes that at worst disturb
 * leadership, at the node's term or a little above ({@linkcode isForgeable} is the rule). A
 * member's term far above the node's is never sent, whatever the shape: the node must adopt any
 * term up to `MAX_TERM`, and a cluster pushed to `MAX_TERM` can never elect a leader again. The
 * disturbing shapes (a vote request with an empty log, `TimeoutNow`, a heartbeat without commit
 * index) are rare, so that a correct node keeps a leader most of the time. Everything else is
 * malformed, from a non-member or from the node itself, stale, or extreme, and a hardened node
 * must refuse it without stopping.
 *
 * The same `(seed, index, target)` always gives the same request.
 *
 * @module
 */

import { decodeMessages, encodeMessages } from "../src/transport/codec.ts";
import {
  type Entry,
  EntryType,
  MAX_TERM,
  type Message,
  message,
  MessageType,
} from "../src/raft/types.ts";
import { encodeCommand } from "../src/kv/state_machine.ts";
import { Rng } from "./chaos_lib.ts";
import { utf8Length as _utf8Length } from "../src/util/utf8.ts";
import { concatBytes } from "../src/util/body.ts";

/** What the generator knows about the node a request goes to. */
export interface FuzzTarget {
  /** The node's id: the `to` of most messages. */
  self: string;
  /** Every member of the cluster, `self` included. */
  members: readonly string[];
  /**
   * The node's term as last observed, or `null` if unknown. Terms only grow, so a term below it
   * is stale for the node forever.
   */
  term: number | null;
}

/** The categories of generated requests (see the module doc). */
export type FuzzCategory = "extreme" | "plausible" | "mutated" | "random" | "protocol" | "stream";

/** Every category, in a stable order. */
export const FUZZ_CATEGORIES: readonly FuzzCategory[] = [
  "extreme",
  "plausible",
  "mutated",
  "random",
  "protocol",
  "stream",
];

/** One generated request for a node's peer server. */
export interface PeerRequest {
  /** Which kind of input it is. */
  category: FuzzCategory;
  /** A short label of the sub-kind, such as `"Heartbeat"` or `"bit flips"`, for counting. */
  kind: string;
  /** The HTTP method. */
  method: string;
  /** The path (and query). */
  path: string;
  /** The request headers, lower-case names. */
  headers: Record<string, string>;
  /** The body, or `null` for none. */
  body: Uint8Array | null;
  /**
   * When set, the body is streamed and the stream fails after this many bytes, so the request
   * ends in a reset instead of a complete body.
   */
  cutAfter?: number;
  /**
   * When set, the body is written in pieces that end at these offsets (increasing, each inside
   * the body), each piece its own write after a short pause, so that frames and their length
   * prefixes arrive split over several HTTP/2 DATA frames.
   */
  pieces?: readonly number[];
  /**
   * How many peer messages it counts as: the messages of the batch it carries (or was made
   * from, before mutation), else 1.
   */
  messages: number;
  /** The interesting fields, for a failure report (`term=2^53-1 from=node-2(member)` ...). */
  detail: string;
}

/** The relative weights of the categories. */
export const CATEGORY_WEIGHTS: Readonly<Record<FuzzCategory, number>> = Object.freeze({
  extreme: 38,
  plausible: 5,
  mutated: 30,
  random: 9,
  protocol: 18,
  stream: 16,
});

/**
 * The lowest absurd term: the node refuses every message with a term above `MAX_TERM` (2^48).
 * Lower terms, however unlikely, are valid: a node adopts them from a member.
 */
export const ABSURD_TERM: number = MAX_TERM + 1;

/**
 * How far above the node's term a member's message may go (the `plausible` disturbing ones):
 * such a message costs an election, and the term grows by at most this much.
 */
export const PLAUSIBLE_RISE = 3;

/** Previous indexes from 2^32 up are absurd: no follower has them, so it refuses the append. */
const _ABSURD_INDEX = 2 ** 32;

/** The path of message batches. */
const _MESSAGES = "/raft/messages";
/** The path of snapshot uploads. */
const _SNAPSHOT = "/raft/snapshot";
/** The path of the long-lived message stream. */
const _STREAM = "/raft/stream";

/** The largest frame a node takes on its message stream: its `maxBodyBytes` (16 MiB). */
export const STREAM_FRAME_LIMIT: number = 16 << 20;
const _FROM = "x-raftkv-from";
const _MESSAGE = "x-raftkv-message";

const _MAX = Number.MAX_SAFE_INTEGER;
/** Extreme values the encoder accepts. */
const _EXTREME: readonly number[] = [
  0,
  1,
  2,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32 - 1,
  2 ** 32,
  2 ** 48,
  _MAX - 1,
  _MAX,
];
/** Values the encoder refuses, written into the bytes directly. */
const _UNENCODABLE: readonly number[] = [
  -1,
  -(2 ** 31),
  0.5,
  1.5,
  NaN,
  Infinity,
  -Infinity,
  2 ** 53,
  2 ** 53 + 2,
  2 ** 64,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  -0,
];
/** Terms the node refuses, put into a member's message that could otherwise pass. */
const _ABSURD_TERMS: readonly number[] = [ABSURD_TERM, 2 ** 52, _MAX - 1, _MAX];
/** Sender ids that are not members (built lazily: two are long). */
const _NON_MEMBERS: readonly string[] = [
  "node-4",
  "node-0",
  "evil",
  "",
  "NODE-1",
  "node-1 ",
  " node-2",
  "node-1\u0000",
  "node-2/../node-3",
  "ノード",
  "\u{1F600}",
  "\ud800",
];
/** Very long sender ids, used rarely (batches from them hold at most 2 messages). */
const _LONG_IDS: readonly string[] = ["a".repeat(1000), "x".repeat(65_535)];
/** Keys the chaos workload uses, so forged writes would show up in its history. */
const _KEYS: readonly string[] = Array.from({ length: 8 }, (_, i) => `key-${i}`);
const _ALL_TYPES: readonly MessageType[] = [
  MessageType.Vote,
  MessageType.VoteResp,
  MessageType.PreVote,
  MessageType.PreVoteResp,
  MessageType.App,
  MessageType.AppResp,
  MessageType.Heartbeat,
  MessageType.HeartbeatResp,
  MessageType.Snap,
  MessageType.TimeoutNow,
  MessageType.ReadIndex,
  MessageType.ReadIndexResp,
];

const _encoder = new TextEncoder();

/**
 * Generates request number `index` of the run with `seed` for `target`.
 *
 * @param seed The run's seed.
 * @param index The request's number in the run.
 * @param target The node the request goes to, with its last observed term.
 * @param categories The categories to draw from, in the proportions of
 * {@linkcode CATEGORY_WEIGHTS}. Default: all.
 * @returns The request; the same arguments always give the same request.
 */
export function generatePeerRequest(
  seed: number,
  index: number,
  target: FuzzTarget,
  categories: readonly FuzzCategory[] = FUZZ_CATEGORIES,
): PeerRequest {
  if (categories.length === 0) throw new RangeError("generatePeerRequest: no categories");
  const weights = Object.fromEntries(categories.map((c) => [c, CATEGORY_WEIGHTS[c]])) as Record<
    FuzzCategory,
    number
  >;
  const rng = new Rng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  // A mutation can by chance turn into a message a member could have sent: check what the
  // node would decode, and make another request in that (rare) case.
  for (let attempt = 0; attempt < 20; attempt++) {
    const req = _generate(new _Gen(rng.fork(), target), _weighted(rng, weights));
    if (forgeableMessages(req, target).length === 0) return req;
  }
  throw new Error(`request ${index} of seed ${seed}: every attempt could pass for a member's`);
}

function _generate(g: _Gen, category: FuzzCategory): PeerRequest {
  switch (category) {
    case "extreme":
      return g.extreme();
    case "plausible":
      return g.plausible();
    case "mutated":
      return g.mutated();
    case "random":
      return g.random();
    case "protocol":
      return g.protocol();
    case "stream":
      return g.stream();
  }
}

/**
 * Decodes the batch a request carries to `/raft/messages` (if it decodes) and returns the
 * messages in it that {@linkcode isForgeable} finds could pass for a member's. Snapshot uploads
 * are not checked: their bodies are never valid snapshots.
 *
 * @param req The request.
 * @param target The node it goes to.
 * @returns The forgeable messages (normally none).
 */
export function forgeableMessages(req: PeerRequest, target: FuzzTarget): Message[] {
  if (req.body === null || req.method !== "POST") return [];
  const path = new URL(req.path, "http://x").pathname;
  const header = req.headers[_FROM] ?? null;
  if (path === _STREAM) {
    // The frames before a cut are delivered: only the bytes after it are lost.
    const bytes = req.cutAfter === undefined ? req.body : req.body.slice(0, req.cutAfter);
    return streamBatches(bytes).flat().filter((msg) => isForgeable(msg, header, target));
  }
  if (req.cutAfter !== undefined || path !== _MESSAGES) return [];
  const declared = req.headers["content-length"];
  if (declared !== undefined && Number(declared) !== req.body.byteLength) return [];
  let msgs: Message[];
  try {
    msgs = decodeMessages(req.body);
  } catch {
    return [];
  }
  return msgs.filter((msg) => isForgeable(msg, header, target));
}

/**
 * Reads a message stream's body as a node does: 4-byte big-endian length prefixes, each followed
 * by that many bytes of one encoded batch, up to the first frame over `limit`, the first frame
 * the codec refuses, or the end (a frame the body ends inside of is not delivered).
 *
 * @param body The stream's bytes.
 * @param limit The largest frame the node takes. Default {@linkcode STREAM_FRAME_LIMIT}.
 * @returns The batches the node would decode and hand to its validator, in order.
 */
export function streamBatches(body: Uint8Array, limit = STREAM_FRAME_LIMIT): Message[][] {
  const batches: Message[][] = [];
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  let off = 0;
  while (off + 4 <= body.byteLength) {
    const need = view.getUint32(off);
    if (need > limit || off + 4 + need > body.byteLength) break;
    try {
      batches.push(decodeMessages(body.subarray(off + 4, off + 4 + need)));
    } catch {
      break;
    }
    off += 4 + need;
  }
  return batches;
}

/**
 * Tells whether a message could pass for a real one from a member: the rule the generator keeps
 * to (see the module doc). True when the body's `from` or the header names a member other than
 * the target, the term is a safe integer that is neither stale (below `target.term`) nor absurd
 * (at least {@linkcode ABSURD_TERM}), and either the term is more than
 * {@linkcode PLAUSIBLE_RISE} above the node's (`target.term`, or 1 when unknown: the node would
 * adopt it, and enough of those exhaust the terms) or the shape is not one of the harmless or
 * merely disturbing ones: a `PreVote` or `Vote` claiming an empty log, a `PreVoteResp`, a
 * refusing `VoteResp` or `AppResp`, a `Heartbeat` without commit index or read context, a
 * `TimeoutNow`, a `ReadIndex` (a read index request, any context), an `App` without entries or
 * commit index whose previous index is absurd (2^32 or more); all without entries or snapshot.
 * A `ReadIndexResp` is never harmless: with a pending read's context, it makes a follower serve
 * that read at the index it names.
 *
 * @param msg The message.
 * @param header The `x-raftkv-from` header sent with it, or `null`.
 * @param target The node it goes to.
 * @returns Whether a correct node could be fooled into following it.
 */
export function isForgeable(msg: Message, header: string | null, target: FuzzTarget): boolean {
  const others = target.members.filter((id) => id !== target.self);
  const claimed = others.includes(msg.from) || (header !== null && others.includes(header));
  if (!claimed) return false;
  const term = msg.term;
  if (!Number.isSafeInteger(term) || term < 0 || Object.is(term, -0)) return false;
  if (target.term !== null && term < target.term) return false;
  if (term >= ABSURD_TERM) return false;
  if (term > (target.term ?? 1) + PLAUSIBLE_RISE) return true;
  return !_harmlessShape(msg);
}

function _harmlessShape(msg: Message): boolean {
  if (msg.entries.length > 0 || msg.snapshot !== null) return false;
  switch (msg.type) {
    case MessageType.PreVote:
    case MessageType.Vote:
      return msg.logTerm === 0 && msg.index === 0;
    case MessageType.PreVoteResp:
      return true;
    case MessageType.VoteResp:
    case MessageType.AppResp:
      return msg.reject;
    case MessageType.Heartbeat:
      return msg.commit === 0 && msg.context === 0;
    case MessageType.TimeoutNow:
      return true;
    case MessageType.ReadIndex:
      // A follower's request for a read index asks the leader to confirm a quorum and answer
      // with its commit index: whatever the context, the answer is right for whoever gets it.
      return true;
    case MessageType.App:
      return msg.commit === 0 && msg.index >= _ABSURD_INDEX;
    default:
      return false;
  }
}

/**
 * Describes a request in one line for a failure report: category, kind, method, path, the
 * `x-raftkv-from` header, body size and the interesting fields.
 *
 * @param req The request.
 * @returns The description (at most a few hundred characters).
 */
export function describePeerRequest(req: PeerRequest): string {
  const from = req.headers[_FROM];
  const body = req.body === null ? "no body" : `${req.body.byteLength} B`;
  const cut = req.cutAfter === undefined ? "" : ` cut after ${req.cutAfter} B`;
  const text = `${req.category}/${req.kind}: ${req.method} ${_short(req.path, 60)} from-header=${
    from === undefined ? "(none)" : JSON.stringify(_short(from, 40))
  } ${body}${cut}, ${req.messages} msg; ${req.detail}`;
  return _short(text, 600);
}

/** Writes a number symbolically: `2^53-1`, `T+1` (relative to the term), or as is. */
export function describeNumber(n: number, term: number | null = null): string {
  if (Object.is(n, -0)) return "-0";
  if (!Number.isFinite(n) || !Number.isInteger(n)) return String(n);
  if (term !== null && term > 2 && Math.abs(n - term) <= 5 && n > 2) {
    return n === term ? "T" : n > term ? `T+${n - term}` : `T-${term - n}`;
  }
  for (const [base, name] of [[53, "2^53"], [48, "2^48"], [32, "2^32"], [31, "2^31"]] as const) {
    const p = 2 ** base;
    if (Math.abs(n - p) <= 2) {
      return n === p ? name : n > p ? `${name}+${n - p}` : `${name}-${p - n}`;
    }
  }
  if (n === 2 ** 64) return "2^64";
  return String(n);
}

// ---------------------------------------------------------------------------------------------
// The generator.

function _weighted<K extends string>(rng: Rng, weights: Readonly<Record<K, number>>): K {
  const entries = Object.entries(weights) as [K, number][];
  let roll = rng.float() * entries.reduce((n, [, w]) => n + w, 0);
  for (const [key, weight] of entries) {
    roll -= weight;
    if (roll < 0) return key;
  }
  return entries[entries.length - 1]![0];
}

/** `term + delta`, kept between 0 and 2^53-1 (the node's term may already be extreme). */
function _near(term: number, delta: number): number {
  return Math.min(_MAX, Math.max(0, term + delta));
}

function _short(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…(${text.length} chars)`;
}

/** A stream frame's 4-byte big-endian length prefix. */
function _prefix(length: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, length >>> 0);
  return out;
}

function _concat(...parts: Uint8Array[]): Uint8Array {
  return concatBytes(parts);
}

/** A header value node:http2 accepts: printable ASCII, at most `max` characters. */
function _headerSafe(text: string, max = 256): string {
  return text.replace(/[^\x20-\x7e]/g, "?").slice(0, max);
}

/** A batch being built, with its header. */
interface _Batch {
  msgs: Message[];
  header: string | null;
  notes: string[];
}

class _Gen {
  readonly rng: Rng;
  readonly target: FuzzTarget;
  readonly others: string[];

  constructor(rng: Rng, target: FuzzTarget) {
    this.rng = rng;
    this.target = target;
    this.others = target.members.filter((id) => id !== target.self);
  }

  // ---- values ----------------------------------------------------------------------------------

  /** A number field: extreme, near the term, or small. */
  num(): number {
    const { rng } = this;
    const roll = rng.float();
    if (roll < 0.45) return rng.pick(_EXTREME);
    if (roll < 0.7 && this.target.term !== null) return _near(this.target.term, rng.int(-3, 4));
    return rng.int(0, 25);
  }

  /** A term: like {@linkcode _Gen.num}, but near the node's term more often. */
  term(): number {
    const { rng, target } = this;
    if (target.term !== null && rng.chance(0.35)) return _near(target.term, rng.int(-3, 4));
    return this.num();
  }

  /** A stale term (below the node's), or null if there is none. */
  staleTerm(): number | null {
    const term = this.target.term;
    if (term === null || term < 1) return null;
    if (term === 1 || this.rng.chance(0.15)) return 0;
    return this.rng.int(Math.max(1, term - 6), term);
  }

  /** A sender: another member, the node itself, or a non-member. */
  sender(): { id: string; label: string } {
    const { rng } = this;
    const roll = rng.float();
    if (roll < 0.35 && this.others.length > 0) {
      const id = rng.pick(this.others);
      return { id, label: `${id}(member)` };
    }
    if (roll < 0.45) return { id: this.target.self, label: "self" };
    return this.nonMember();
  }

  nonMember(): { id: string; label: string } {
    const id = this.rng.chance(0.04) ? this.rng.pick(_LONG_IDS) : this.rng.pick(_NON_MEMBERS);
    return { id, label: `${JSON.stringify(_short(id, 20))}(non-member)` };
  }

  /** The `x-raftkv-from` header for a body sent by `from`: usually the same, sometimes not. */
  header(from: string): { value: string | null; label: string } {
    const { rng } = this;
    const roll = rng.float();
    if (roll < 0.8) return { value: _headerSafe(from), label: "" };
    if (roll < 0.88) return { value: null, label: " header=(none)" };
    const forged = rng.pick([...this.target.members, "evil", "", "node-9", "a".repeat(200)]);
    return { value: forged, label: ` header=${JSON.stringify(_short(forged, 20))}` };
  }

  /** The `to` of a message: the node itself, mostly. */
  to(): string {
    const { rng } = this;
    if (rng.chance(0.92)) return this.target.self;
    return rng.pick([...this.others, "", "node-9", this.target.self.toUpperCase()]);
  }

  /** A command: valid (on the workload's keys or others) or broken. */
  command(allowBig: boolean): { data: Uint8Array; label: string } {
    const { rng } = this;
    const roll = rng.float();
    if (roll < 0.35) {
      const key = rng.chance(0.6) ? rng.pick(_KEYS) : `fuzz-${rng.int(0, 50)}`;
      const data = rng.chance(0.75)
        ? encodeCommand({ op: "put", key, value: `forged-${rng.int(0, 1e6)}` })
        : encodeCommand({ op: "delete", key });
      return { data, label: "valid command" };
    }
    const bad: [string, () => Uint8Array][] = [
      ["empty command", () => new Uint8Array(0)],
      ["short command", () => Uint8Array.of(1, 0, 0)],
      ["unknown op", () => Uint8Array.of(rng.pick([0, 3, 7, 255]), 0, 0, 0, 1, 97)],
      ["key length past the end", () => Uint8Array.of(1, 0xff, 0xff, 0xff, 0xff, 97, 98)],
      ["invalid UTF-8 key", () => Uint8Array.of(1, 0, 0, 0, 2, 0xc3, 0x28, 118)],
      ["invalid UTF-8 value", () => Uint8Array.of(1, 0, 0, 0, 1, 97, 0xed, 0xa0, 0x80)],
      ["delete with trailing bytes", () => Uint8Array.of(2, 0, 0, 0, 1, 97, 98)],
      ["random command bytes", () => this.bytes(rng.int(1, 64))],
    ];
    if (allowBig) {
      bad.push([
        "64 KiB value",
        () => encodeCommand({ op: "put", key: "big", value: "v".repeat(65_536) }),
      ]);
    }
    const [label, make] = rng.pick(bad);
    return { data: make(), label };
  }

  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      const word = this.rng.int(0, 2 ** 32);
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (word >>> (8 * j)) & 0xff;
    }
    return out;
  }

  /** Entries for `msg`; thousands of them, or 64 KiB commands, only when `allowHuge`. */
  entries(msg: Message, allowHuge: boolean): { entries: Entry[]; label: string } {
    const { rng } = this;
    const roll = rng.float();
    const count = roll < 0.45
      ? 0
      : roll < 0.8
      ? rng.int(1, 4)
      : roll < 0.96 || !allowHuge
      ? rng.int(4, 24)
      : rng.int(1000, 4000);
    if (count === 0) return { entries: [], label: "" };
    const contiguous = rng.chance(0.65);
    const first = rng.chance(0.6) ? Math.min(_MAX, msg.index + 1) : this.num();
    const entryTerm = rng.chance(0.6) ? msg.term : this.term();
    const labels = new Set<string>();
    const entries: Entry[] = [];
    for (let i = 0; i < count; i++) {
      const index = contiguous ? Math.min(_MAX, first + i) : rng.chance(0.5) ? first : this.num();
      const noop = rng.chance(0.15);
      let data: Uint8Array;
      if (count >= 1000) data = new Uint8Array(0);
      else if (noop && rng.chance(0.7)) data = new Uint8Array(0);
      else {
        const command = this.command(allowHuge && i === 0);
        data = command.data;
        labels.add(command.label);
      }
      entries.push({
        term: rng.chance(0.85) ? entryTerm : this.num(),
        index,
        type: noop ? EntryType.Noop : EntryType.Normal,
        data,
      });
    }
    const first0 = entries[0]!;
    return {
      entries,
      label: ` entries=${count}${contiguous ? "" : " non-contiguous"} from index ${
        describeNumber(first0.index, this.target.term)
      } term ${describeNumber(first0.term, this.target.term)}${
        labels.size > 0 ? ` (${[...labels].slice(0, 3).join(", ")})` : ""
      }`,
    };
  }

  snapshotMeta(): Message["snapshot"] {
    const { rng } = this;
    const voterRoll = rng.float();
    const voters = voterRoll < 0.5
      ? [...this.target.members]
      : voterRoll < 0.65
      ? []
      : voterRoll < 0.8
      ? [this.target.self, "node-9", "evil"]
      : voterRoll < 0.9
      ? [this.target.self, this.target.self]
      : Array.from({ length: rng.int(100, 2000) }, (_, i) => `voter-${i}`);
    return { index: this.num(), term: this.term(), voters };
  }

  // ---- messages --------------------------------------------------------------------------------

  /** A message of `type` with extreme fields. */
  message(type: MessageType, from: string, allowHuge = true): { msg: Message; label: string } {
    const { rng } = this;
    const msg: Message = {
      type,
      from,
      to: this.to(),
      term: this.term(),
      logTerm: this.num(),
      index: this.num(),
      entries: [],
      commit: rng.chance(0.4) ? 0 : this.num(),
      reject: rng.chance(0.5),
      rejectHint: rng.chance(0.5) ? 0 : this.num(),
      context: rng.chance(0.5) ? 0 : this.num(),
      snapshot: null,
    };
    let label = "";
    if (type === MessageType.App || rng.chance(0.08)) {
      const made = this.entries(msg, allowHuge);
      msg.entries = made.entries;
      label += made.label;
    }
    if (type === MessageType.Snap ? rng.chance(0.85) : rng.chance(0.04)) {
      msg.snapshot = this.snapshotMeta();
      const snap = msg.snapshot!;
      label += ` snapshot=(index ${describeNumber(snap.index, this.target.term)}, term ${
        describeNumber(snap.term, this.target.term)
      }, ${snap.voters.length} voters)`;
    }
    return { msg, label };
  }

  /** Describes the fields of a message that matter. */
  fields(msg: Message): string {
    const t = this.target.term;
    const parts = [
      MessageType[msg.type] ?? `type ${msg.type}`,
      `term=${describeNumber(msg.term, t)}`,
    ];
    if (msg.to !== this.target.self) parts.push(`to=${JSON.stringify(_short(msg.to, 20))}`);
    for (const field of ["logTerm", "index", "commit", "rejectHint", "context"] as const) {
      if (msg[field] !== 0) parts.push(`${field}=${describeNumber(msg[field], t)}`);
    }
    if (msg.reject) parts.push("reject");
    return parts.join(" ");
  }

  /**
   * Makes `msg` impossible to take for a real member's message (see {@linkcode isForgeable}):
   * a stale or an absurd term. Returns a note, or "" if nothing changed.
   */
  defuse(msg: Message, header: string | null): string {
    if (!isForgeable(msg, header, this.target) && !this.disturbing(msg, header)) return "";
    const stale = this.staleTerm();
    msg.term = stale !== null && this.rng.chance(0.6) ? stale : this.rng.pick(_ABSURD_TERMS);
    return ` (term replaced by ${
      describeNumber(msg.term, this.target.term)
    }: the one drawn was plausible for a member)`;
  }

  /**
   * Whether a member's message would cost the cluster its leader (a higher term, a forged
   * leader, an election now): those are left to the rare `plausible` ones.
   */
  disturbing(msg: Message, header: string | null): boolean {
    const claimed = this.others.includes(msg.from) ||
      (header !== null && this.others.includes(header));
    const term = msg.term;
    const window = Number.isSafeInteger(term) && term < ABSURD_TERM &&
      (this.target.term === null || term >= this.target.term);
    if (!claimed || !window) return false;
    if (msg.type === MessageType.PreVote) return false;
    const quiet = [
      MessageType.PreVoteResp,
      MessageType.VoteResp,
      MessageType.AppResp,
      MessageType.ReadIndex,
    ];
    return !(quiet.includes(msg.type) && this.target.term !== null && term <= this.target.term);
  }

  /** A batch of 1..n messages of random types from one sender, defused. */
  extremeBatch(
    options: { from?: { id: string; label: string }; header?: string | null; max?: number } = {},
  ): _Batch & { typeLabel: string } {
    const { rng } = this;
    const from = options.from ?? this.sender();
    const header = options.header !== undefined
      ? { value: options.header, label: "" }
      : this.header(from.id);
    const roll = rng.float();
    const max = from.id.length > 100 ? 2 : options.max ?? 50;
    const count = Math.min(max, roll < 0.55 ? 1 : roll < 0.9 ? rng.int(2, 7) : rng.int(7, 51));
    const single = rng.chance(0.5) ? rng.pick(_ALL_TYPES) : null;
    const msgs: Message[] = [];
    const notes: string[] = [];
    for (let i = 0; i < count; i++) {
      const type = single ?? rng.pick(_ALL_TYPES);
      const { msg, label } = this.message(type, from.id, i === 0);
      const defused = this.defuse(msg, header.value);
      msgs.push(msg);
      if (notes.length < 3) notes.push(`${this.fields(msg)}${label}${defused}`);
    }
    const typeLabel = single !== null || count === 1
      ? MessageType[msgs[0]!.type] ?? "?"
      : "mixed types";
    notes.unshift(`from=${from.label}${header.label}`);
    if (count > 3) notes.push(`... ${count} messages`);
    return { msgs, header: header.value, notes, typeLabel };
  }

  headersFor(header: string | null, extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { "content-type": "application/octet-stream" };
    if (header !== null) headers[_FROM] = header;
    return { ...headers, ...extra };
  }

  // ---- categories ------------------------------------------------------------------------------

  extreme(): PeerRequest {
    const batch = this.extremeBatch();
    let body: Uint8Array = encodeMessages(batch.msgs);
    let kind = batch.typeLabel;
    const patch = this.rng.float();
    if (patch < 0.1) {
      const field = this.rng.pick(["term", "logTerm", "index", "commit", "rejectHint", "context"]);
      const value = this.rng.pick(_UNENCODABLE);
      body = _patchNumber(body, batch.msgs[0]!, field, value);
      batch.notes.push(`first message's ${field} written as ${describeNumber(value)}`);
      kind = "unencodable number";
    } else if (patch < 0.13) {
      const flag = this.rng.pick(["reject", "snapshot"] as const);
      body = _patchFlag(body, batch.msgs[0]!, flag, this.rng.int(2, 256));
      batch.notes.push(`first message's ${flag} flag is not 0 or 1`);
      kind = "bad flag";
    } else if (patch < 0.16 && batch.msgs[0]!.entries.length > 0) {
      const field = this.rng.pick(["entry term", "entry index", "entry type"] as const);
      body = _patchEntry(body, batch.msgs[0]!, field, this.rng);
      batch.notes.push(`first entry's ${field} corrupted`);
      kind = "bad entry field";
    }
    return {
      category: "extreme",
      kind,
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(batch.header),
      body,
      messages: batch.msgs.length,
      detail: batch.notes.join("; "),
    };
  }

  plausible(): PeerRequest {
    const { rng, target } = this;
    const from = this.others.length > 0 ? rng.pick(this.others) : target.self;
    const stale = this.staleTerm();
    const roll = rng.float();
    const msgs: Message[] = [];
    let kind: string;
    const base = (type: MessageType, term: number): Message =>
      message({ type, from, to: target.self, term });
    const known = target.term ?? 1;
    if (stale !== null && roll < 0.7) {
      // A stale message of any shape: a correct node ignores it (or answers with its term).
      kind = "stale";
      const count = rng.int(1, 4);
      for (let i = 0; i < count; i++) {
        const type = rng.pick(_ALL_TYPES);
        const msg = base(type, stale);
        msg.logTerm = rng.int(0, stale + 1);
        msg.index = rng.int(0, 40);
        msg.commit = rng.chance(0.5) ? 0 : rng.int(0, 40);
        msg.reject = rng.chance(0.3);
        msg.rejectHint = msg.reject ? rng.int(0, 40) : 0;
        msg.context = type === MessageType.Heartbeat || type === MessageType.HeartbeatResp
          ? rng.int(0, 5)
          : 0;
        if (type === MessageType.App) {
          const n = rng.int(1, 4);
          for (let j = 0; j < n; j++) {
            msg.entries.push({
              term: stale,
              index: msg.index + 1 + j,
              type: EntryType.Normal,
              data: encodeCommand({ op: "put", key: rng.pick(_KEYS), value: `stale-${j}` }),
            });
          }
        }
        if (type === MessageType.Snap) {
          msg.snapshot = { index: rng.int(1, 40), term: stale, voters: [...target.members] };
        }
        msgs.push(msg);
      }
    } else if (roll < 0.985) {
      // Harmless at the current term: pre-votes, refusals, pre-vote answers.
      kind = "harmless at the term";
      const type = rng.pick([
        MessageType.PreVote,
        MessageType.PreVoteResp,
        MessageType.VoteResp,
        MessageType.AppResp,
        MessageType.ReadIndex,
      ]);
      const msg = base(type, _near(known, type === MessageType.PreVote ? rng.int(0, 3) : 0));
      msg.reject = type === MessageType.PreVoteResp
        ? rng.chance(0.5)
        : type !== MessageType.ReadIndex;
      if (type === MessageType.ReadIndex) msg.context = this.num();
      if (type === MessageType.AppResp) {
        msg.index = rng.int(0, 30);
        msg.rejectHint = rng.int(0, 30);
      }
      msgs.push(msg);
    } else {
      // Disturbing: may cost the cluster its leader for an election.
      kind = "disturbing";
      const type = rng.pick([MessageType.Vote, MessageType.TimeoutNow, MessageType.Heartbeat]);
      const term = type === MessageType.TimeoutNow
        ? known
        : _near(known, rng.int(1, PLAUSIBLE_RISE + 1));
      msgs.push(base(type, term));
    }
    const header = rng.chance(0.9) ? from : null;
    for (const msg of msgs) {
      if (isForgeable(msg, header, target)) {
        throw new Error(`plausible message could pass for a real one: ${this.fields(msg)}`);
      }
    }
    return {
      category: "plausible",
      kind,
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(header),
      body: encodeMessages(msgs),
      messages: msgs.length,
      detail: `from=${from}(member)${header === null ? " header=(none)" : ""}; ${
        msgs.slice(0, 3).map((m) => this.fields(m)).join("; ")
      }`,
    };
  }

  /** A valid encoding from a non-member, the raw material of mutations. */
  mutationBase(): _Batch & { bytes: Uint8Array } {
    const from = this.nonMember();
    const batch = this.extremeBatch({ from, header: _headerSafe(from.id), max: 8 });
    return { ...batch, bytes: encodeMessages(batch.msgs) };
  }

  mutated(): PeerRequest {
    const { rng } = this;
    const base = this.mutationBase();
    let bytes: Uint8Array = base.bytes.slice();
    const applied: string[] = [];
    const rounds = rng.chance(0.7) ? 1 : rng.int(2, 5);
    for (let i = 0; i < rounds; i++) {
      const [name, next] = this.mutate(bytes, base.msgs[0]!);
      bytes = next;
      applied.push(name);
    }
    return {
      category: "mutated",
      kind: applied[0] ?? "none",
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(base.header),
      body: bytes,
      messages: base.msgs.length,
      detail: `${applied.join(" + ")} of ${base.bytes.byteLength} B (${base.notes.join("; ")})`,
    };
  }

  mutate(bytes: Uint8Array, first: Message): [string, Uint8Array] {
    const { rng } = this;
    const n = bytes.byteLength;
    const at = () => rng.int(0, Math.max(1, n));
    const ops: [number, string, () => Uint8Array][] = [
      [20, "bit flips", () => {
        const out = bytes.slice();
        const flips = rng.int(1, 9);
        for (let i = 0; i < flips && n > 0; i++) out[at()]! ^= 1 << rng.int(0, 8);
        return out;
      }],
      [8, "extreme bytes", () => {
        const out = bytes.slice();
        const count = rng.int(1, 5);
        for (let i = 0; i < count && n > 0; i++) out[at()] = rng.pick([0, 0xff, 0x7f, 0x80]);
        return out;
      }],
      [12, "truncation", () => bytes.slice(0, rng.int(0, n))],
      [6, "trailing bytes", () => _concat(bytes, this.bytes(rng.int(1, 32)))],
      [8, "splice", () => {
        const other = this.mutationBase().bytes;
        return _concat(bytes.slice(0, at()), other.slice(rng.int(0, other.byteLength)));
      }],
      [6, "deleted bytes", () => {
        const from = at();
        return _concat(bytes.slice(0, from), bytes.slice(from + rng.int(1, 16)));
      }],
      [6, "inserted bytes", () => {
        const from = at();
        return _concat(bytes.slice(0, from), this.bytes(rng.int(1, 16)), bytes.slice(from));
      }],
      [6, "duplicated slice", () => {
        const from = at();
        const to = Math.min(n, from + rng.int(1, 64));
        return _concat(bytes.slice(0, to), bytes.slice(from, to), bytes.slice(to));
      }],
      [10, "message count", () => {
        const out = bytes.slice();
        if (n >= 5) {
          const view = new DataView(out.buffer);
          const count = view.getUint32(1);
          view.setUint32(1, rng.pick([0, count + 1, Math.max(0, count - 1), 0xffffffff, 2 ** 31]));
        }
        return out;
      }],
      [8, "string length", () => {
        const out = bytes.slice();
        const off = 6; // The first message's `from` length, after magic, count and type.
        if (n >= off + 2) {
          const view = new DataView(out.buffer);
          const len = view.getUint16(off);
          view.setUint16(off, rng.pick([0xffff, len + 1, Math.max(0, len - 1), 0x8000]) & 0xffff);
        }
        return out;
      }],
      [8, "entry count", () => _patchEntryCount(bytes, first, rng)],
      [6, "number bytes", () =>
        _patchNumber(
          bytes,
          first,
          rng.pick(["term", "logTerm", "index", "commit", "rejectHint", "context"]),
          rng.pick(_UNENCODABLE),
        )],
      [4, "magic byte", () => {
        const out = bytes.slice();
        if (n > 0) out[0] = rng.pick([0xa0, 0xa2, 0xb1, 0x00, 0xff]);
        return out;
      }],
    ];
    const total = ops.reduce((s, [w]) => s + w, 0);
    let roll = rng.float() * total;
    for (const [weight, name, run] of ops) {
      roll -= weight;
      if (roll < 0) return [name, run()];
    }
    const [, name, run] = ops[0]!;
    return [name, run()];
  }

  random(): PeerRequest {
    const { rng } = this;
    const roll = rng.float();
    const size = roll < 0.5
      ? rng.int(0, 64)
      : roll < 0.9
      ? rng.int(64, 1024)
      : rng.int(1024, 16384);
    let body = this.bytes(size);
    let kind = "random bytes";
    const shape = rng.float();
    if (shape < 0.4 && size > 0) {
      body[0] = 0xa1;
      kind = "random after the magic byte";
    } else if (shape < 0.55 && size >= 6) {
      body[0] = 0xa1;
      new DataView(body.buffer).setUint32(1, rng.int(1, 4));
      body[5] = rng.int(1, 11);
      kind = "random after a plausible header";
    } else if (shape < 0.6) {
      body = new Uint8Array(size).fill(rng.pick([0, 0xff]));
      kind = "constant bytes";
    }
    const from = this.sender();
    const header = this.header(from.id);
    return {
      category: "random",
      kind,
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(header.value),
      body,
      messages: 1,
      detail: `${size} random bytes, header from ${from.label}${header.label}`,
    };
  }

  /**
   * A message stream (`POST /raft/stream`): frames of extreme, read-index, harmless, mutated,
   * empty or random batches, mostly under another member's name (a stranger's stream is refused
   * before it is read), ending well or in a length prefix over the limit, a frame longer than
   * the stream, a prefix cut short, a prefix shorter than its batch, or a reset; often written
   * in pieces that split frames and their prefixes.
   */
  stream(): PeerRequest {
    const { rng } = this;
    let header: string | null;
    let senderLabel: string;
    if (this.others.length > 0 && rng.chance(0.85)) {
      header = rng.pick(this.others);
      senderLabel = `${header}(member)`;
    } else {
      const from = this.sender();
      const made = this.header(from.id);
      header = made.value;
      senderLabel = `${from.label}${made.label}`;
    }
    const member = header !== null && this.others.includes(header);
    const count = rng.chance(0.5) ? rng.int(1, 4) : rng.int(4, 17);
    const payloads: Uint8Array[] = [];
    const labels: string[] = [];
    const notes: string[] = [];
    let messages = 0;
    for (let i = 0; i < count; i++) {
      const roll = rng.float();
      let payload: Uint8Array;
      let label: string;
      if (roll < 0.4) {
        const from = member && rng.chance(0.7) ? { id: header!, label: "header" } : undefined;
        const batch = this.extremeBatch({ ...(from ? { from } : {}), header, max: 20 });
        payload = encodeMessages(batch.msgs);
        messages += batch.msgs.length;
        label = batch.typeLabel;
        if (notes.length < 3) notes.push(batch.notes.slice(0, 2).join(" "));
      } else if (roll < 0.6) {
        const msgs = this.readIndexBatch(header);
        payload = encodeMessages(msgs);
        messages += msgs.length;
        label = "read index";
        if (notes.length < 3) notes.push(msgs.slice(0, 2).map((m) => this.fields(m)).join(", "));
      } else if (roll < 0.72) {
        const msgs = this.harmlessBatch(header);
        payload = encodeMessages(msgs);
        messages += msgs.length;
        label = "harmless";
      } else if (roll < 0.86) {
        const base = this.mutationBase();
        const [name, bytes] = this.mutate(base.bytes, base.msgs[0]!);
        payload = bytes;
        messages += base.msgs.length;
        label = `mutated (${name})`;
      } else if (roll < 0.92) {
        payload = new Uint8Array(0);
        messages++;
        label = "empty";
      } else {
        payload = this.bytes(rng.int(1, 256));
        if (rng.chance(0.5)) payload[0] = 0xa1;
        messages++;
        label = "random bytes";
      }
      payloads.push(payload);
      labels.push(label);
    }
    const frames = payloads.map((payload) => _concat(_prefix(payload.byteLength), payload));
    let kind = "well framed";
    let cutAfter: number | undefined;
    const last = payloads.length - 1;
    const ending = rng.float();
    if (ending < 0.5) {
      // Every frame whole.
    } else if (ending < 0.6) {
      const declared = rng.pick([
        STREAM_FRAME_LIMIT + 1,
        STREAM_FRAME_LIMIT * 2,
        2 ** 31,
        0xffffffff,
      ]);
      frames.push(_concat(_prefix(declared), this.bytes(rng.int(0, 64))));
      kind = "oversized length prefix";
      notes.push(`then a prefix of ${describeNumber(declared)} bytes`);
    } else if (ending < 0.7) {
      const more = rng.chance(0.7) ? rng.int(1, 1000) : STREAM_FRAME_LIMIT - payloads[last]!.length;
      frames[last] = _concat(_prefix(payloads[last]!.byteLength + more), payloads[last]!);
      kind = "frame longer than the stream";
      notes.push(`the last prefix declares ${more} bytes more than follow`);
    } else if (ending < 0.78) {
      frames.push(_prefix(rng.int(0, STREAM_FRAME_LIMIT)).slice(0, rng.int(1, 4)));
      kind = "stream ends inside a prefix";
    } else if (ending < 0.88 && payloads[last]!.byteLength > 0) {
      const short = rng.int(1, payloads[last]!.byteLength + 1);
      frames[last] = _concat(_prefix(payloads[last]!.byteLength - short), payloads[last]!);
      kind = "length prefix shorter than its batch";
      notes.push(`the last prefix declares ${short} bytes fewer than its batch`);
    } else {
      kind = "reset mid-stream";
    }
    const body = _concat(...frames);
    if (kind === "reset mid-stream") cutAfter = rng.int(0, body.byteLength);
    let pieces: number[] | undefined;
    if (rng.chance(0.6) && body.byteLength > 1) {
      // Split inside length prefixes above all, and anywhere else now and then.
      const cuts = new Set<number>();
      let off = 0;
      for (const frame of frames) {
        if (rng.chance(0.4)) cuts.add(off + rng.int(1, 4));
        if (rng.chance(0.2)) cuts.add(off + rng.int(0, frame.byteLength + 1));
        off += frame.byteLength;
      }
      pieces = [...cuts].filter((at) => at > 0 && at < body.byteLength).sort((a, b) => a - b)
        .slice(0, 64);
      if (pieces.length === 0) pieces = undefined;
      else notes.push(`written in ${pieces.length + 1} pieces`);
    }
    return {
      category: "stream",
      kind,
      method: "POST",
      path: _STREAM,
      headers: this.headersFor(header),
      body,
      ...(cutAfter === undefined ? {} : { cutAfter }),
      ...(pieces === undefined ? {} : { pieces }),
      messages: Math.max(1, messages),
      detail: `from-header ${senderLabel}; ${frames.length} frames: ${
        [...new Set(labels)].slice(0, 5).join(", ")
      }; ${notes.join("; ")}`,
    };
  }

  /**
   * A batch of `ReadIndex` and `ReadIndexResp` messages with wild fields, the second kind (and
   * the first far above the node's term) defused when it names a member (see
   * {@linkcode isForgeable}).
   */
  readIndexBatch(header: string | null): Message[] {
    const { rng, target } = this;
    const count = rng.chance(0.6) ? 1 : rng.int(2, 40);
    const msgs: Message[] = [];
    for (let i = 0; i < count; i++) {
      const type = rng.chance(0.6) ? MessageType.ReadIndex : MessageType.ReadIndexResp;
      const from = rng.chance(0.8) && header !== null ? header : this.sender().id;
      const known = target.term ?? 1;
      const msg = message({
        type,
        from,
        to: this.to(),
        term: rng.chance(0.6) ? known : this.term(),
      });
      msg.context = rng.chance(0.8) ? this.num() : rng.int(1, 30);
      if (type === MessageType.ReadIndexResp || rng.chance(0.1)) msg.index = this.num();
      if (rng.chance(0.08)) msg.commit = this.num();
      if (rng.chance(0.05)) msg.logTerm = this.num();
      if (rng.chance(0.05)) msg.reject = true;
      this.defuse(msg, header);
      msgs.push(msg);
    }
    return msgs;
  }

  /** A batch of messages a member could send at the node's term that change nothing. */
  harmlessBatch(header: string | null): Message[] {
    const { rng, target } = this;
    const from = header ?? target.self;
    const count = rng.int(1, 6);
    const msgs: Message[] = [];
    for (let i = 0; i < count; i++) {
      const type = rng.pick([
        MessageType.PreVoteResp,
        MessageType.VoteResp,
        MessageType.AppResp,
        MessageType.ReadIndex,
      ]);
      const msg = message({ type, from, to: target.self, term: target.term ?? 1 });
      if (type === MessageType.ReadIndex) msg.context = this.num();
      else msg.reject = true;
      if (type === MessageType.AppResp) {
        msg.index = rng.int(0, 30);
        msg.rejectHint = rng.int(0, 30);
      }
      this.defuse(msg, header);
      msgs.push(msg);
    }
    return msgs;
  }

  protocol(): PeerRequest {
    const { rng } = this;
    const kinds: [number, string, () => PeerRequest][] = [
      [10, "Snap on /raft/messages", () => this.snapOnMessages()],
      [8, "other types in a snapshot header", () => this.wrongSnapshotHeaderType()],
      [8, "bad snapshot header", () => this.badSnapshotHeader()],
      [14, "bogus snapshot body", () => this.bogusSnapshotBody()],
      [8, "cut-off body", () => this.cutBody()],
      [8, "wrong method", () => this.wrongMethod()],
      [8, "wrong path", () => this.wrongPath()],
      [12, "sender header", () => this.senderHeader()],
      [10, "declared length", () => this.declaredLength()],
      [6, "content type", () => this.contentType()],
      [6, "empty batch", () => this.emptyBatch()],
      [2, "huge header", () => this.hugeHeader()],
    ];
    const total = kinds.reduce((s, [w]) => s + w, 0);
    let roll = rng.float() * total;
    for (const [weight, , make] of kinds) {
      roll -= weight;
      if (roll < 0) return make();
    }
    return kinds[0]![2]();
  }

  protocolRequest(
    kind: string,
    fields: Omit<PeerRequest, "category" | "kind">,
  ): PeerRequest {
    return { category: "protocol", kind, ...fields };
  }

  /** A batch of `Snap` messages. */
  snapBatch(): _Batch {
    const { rng } = this;
    const from = this.sender();
    const header = this.header(from.id);
    const count = rng.chance(0.8) ? 1 : rng.int(2, 5);
    const msgs: Message[] = [];
    const notes = [`from=${from.label}${header.label}`];
    for (let i = 0; i < count; i++) {
      const { msg, label } = this.message(MessageType.Snap, from.id);
      if (msg.snapshot === null && rng.chance(0.7)) msg.snapshot = this.snapshotMeta();
      const defused = this.defuse(msg, header.value);
      msgs.push(msg);
      if (i < 2) notes.push(`${this.fields(msg)}${label}${defused}`);
    }
    return { msgs, header: header.value, notes };
  }

  snapOnMessages(): PeerRequest {
    const batch = this.snapBatch();
    return this.protocolRequest("Snap on /raft/messages", {
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(batch.header),
      body: encodeMessages(batch.msgs),
      messages: batch.msgs.length,
      detail: batch.notes.join("; "),
    });
  }

  /** A snapshot upload whose header holds no Snap, or more than one message. */
  wrongSnapshotHeaderType(): PeerRequest {
    const batch = this.extremeBatch({ max: 3 });
    const header = encodeMessages(batch.msgs).toBase64({
      alphabet: "base64url",
      omitPadding: true,
    });
    return this.protocolRequest("other types in a snapshot header", {
      method: "POST",
      path: _SNAPSHOT,
      headers: this.headersFor(batch.header, { [_MESSAGE]: header }),
      body: this.bytes(this.rng.int(0, 256)),
      messages: batch.msgs.length,
      detail: batch.notes.join("; "),
    });
  }

  badSnapshotHeader(): PeerRequest {
    const { rng } = this;
    const valid = encodeMessages(this.snapBatch().msgs.slice(0, 1));
    const variants: [string, () => string | null][] = [
      ["missing", () => null],
      ["empty", () => ""],
      ["not base64", () => "!!!not*base64!!!"],
      ["padded base64", () => valid.toBase64({ alphabet: "base64url" }) + "=="],
      ["standard alphabet", () => valid.toBase64()],
      ["random bytes", () => this.bytes(rng.int(1, 200)).toBase64({ alphabet: "base64url" })],
      ["truncated", () => {
        const text = valid.toBase64({ alphabet: "base64url", omitPadding: true });
        return text.slice(0, rng.int(0, text.length));
      }],
      ["8 KiB", () => "A".repeat(8192)],
      ["spaces", () => ` ${valid.toBase64({ alphabet: "base64url", omitPadding: true })} `],
    ];
    const [name, make] = rng.pick(variants);
    const value = make();
    const from = this.sender();
    const headers = this.headersFor(this.header(from.id).value);
    if (value !== null) headers[_MESSAGE] = value;
    return this.protocolRequest("bad snapshot header", {
      method: "POST",
      path: _SNAPSHOT,
      headers,
      body: this.bytes(rng.int(0, 512)),
      messages: 1,
      detail: `x-raftkv-message ${name}, from ${from.label}`,
    });
  }

  bogusSnapshotBody(): PeerRequest {
    const { rng } = this;
    const batch = this.snapBatch();
    const msg = batch.msgs[0]!;
    if (msg.snapshot === null) msg.snapshot = this.snapshotMeta();
    const header = encodeMessages([msg]).toBase64({ alphabet: "base64url", omitPadding: true });
    const [name, body] = this.snapshotBody(msg);
    return this.protocolRequest("bogus snapshot body", {
      method: "POST",
      path: _SNAPSHOT,
      headers: this.headersFor(batch.header, { [_MESSAGE]: header }),
      body,
      ...(rng.chance(0.1) && body.byteLength > 0 ? { cutAfter: rng.int(0, body.byteLength) } : {}),
      messages: 1,
      detail: `${name} (${body.byteLength} B); ${batch.notes.slice(0, 2).join("; ")}`,
    });
  }

  /** A snapshot file that is never valid: empty, random, or a real layout that is broken. */
  snapshotBody(msg: Message): [string, Uint8Array] {
    const { rng } = this;
    const roll = rng.float();
    if (roll < 0.15) return ["empty body", new Uint8Array(0)];
    if (roll < 0.35) {
      return ["random body", this.bytes(rng.int(1, rng.chance(0.9) ? 2048 : 65_536))];
    }
    const snap = msg.snapshot!;
    const pairs = Array.from(
      { length: rng.int(0, 20) },
      (_, i) => [`key-${i % 8}`, `snap-${i}`] as const,
    );
    const headerJson = _encoder.encode(JSON.stringify({
      index: snap.index,
      term: snap.term,
      voters: snap.voters.slice(0, 10),
      count: pairs.length + (rng.chance(0.2) ? 1 : 0),
    }));
    const parts: Uint8Array[] = [_encoder.encode("RKVSNAP1")];
    const hdrLen = new Uint8Array(4);
    new DataView(hdrLen.buffer).setUint32(
      0,
      rng.chance(0.1) ? 0xffffffff : headerJson.byteLength,
    );
    parts.push(hdrLen, headerJson);
    for (const [k, v] of pairs) {
      for (const text of [k, v]) {
        const bytes = _encoder.encode(text);
        const len = new Uint8Array(4);
        new DataView(len.buffer).setUint32(0, bytes.byteLength);
        parts.push(len, bytes);
      }
    }
    parts.push(_encoder.encode("RKVSEND1"));
    // The checksum is always wrong: this body must never be a valid snapshot.
    const crc = new Uint8Array(4);
    new DataView(crc.buffer).setUint32(0, rng.int(0, 2 ** 32));
    parts.push(crc);
    const file = _concat(...parts);
    if (rng.chance(0.3)) return ["truncated snapshot file", file.slice(0, rng.int(0, file.length))];
    return ["snapshot file with a bad checksum", file];
  }

  cutBody(): PeerRequest {
    const { rng } = this;
    const base = this.mutationBase();
    return this.protocolRequest("cut-off body", {
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(base.header),
      body: base.bytes,
      cutAfter: rng.int(0, base.bytes.byteLength),
      messages: base.msgs.length,
      detail: base.notes.join("; "),
    });
  }

  wrongMethod(): PeerRequest {
    const { rng } = this;
    const method = rng.pick(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FUZZ"]);
    const path = rng.pick([_MESSAGES, _SNAPSHOT]);
    const base = rng.chance(0.5) ? this.mutationBase() : null;
    return this.protocolRequest("wrong method", {
      method,
      path,
      headers: this.headersFor(base?.header ?? null),
      body: base?.bytes ?? null,
      messages: base?.msgs.length ?? 1,
      detail: `${method} ${path}${base === null ? "" : `; ${base.notes.join("; ")}`}`,
    });
  }

  wrongPath(): PeerRequest {
    const { rng } = this;
    const path = rng.pick([
      "/",
      "/raft",
      "/raft/",
      "/raft/message",
      "/raft/messages/",
      "/RAFT/MESSAGES",
      "/raft/messages/../snapshot",
      "/raft//messages",
      "/raft/snapshots",
      "/raft/snapshot/x",
      "/v1/data",
      "/v1/status",
      "/health",
      "/raft/%6Dessages",
      "/raft/messages%00",
      `/${"a".repeat(4000)}`,
    ]);
    const base = this.mutationBase();
    return this.protocolRequest("wrong path", {
      method: "POST",
      path,
      headers: this.headersFor(base.header),
      body: base.bytes,
      messages: base.msgs.length,
      detail: `POST ${_short(path, 40)}; ${base.notes.join("; ")}`,
    });
  }

  senderHeader(): PeerRequest {
    const { rng } = this;
    const variants: (string | null)[] = [
      null,
      "",
      " ",
      "evil",
      "node-9",
      this.target.self,
      ...this.others,
      "a".repeat(rng.int(300, 4000)),
      "node-1,node-2",
    ];
    const header = rng.pick(variants);
    const batch = this.extremeBatch({ header });
    return this.protocolRequest("sender header", {
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(header),
      body: encodeMessages(batch.msgs),
      messages: batch.msgs.length,
      detail: `x-raftkv-from ${header === null ? "missing" : JSON.stringify(_short(header, 20))}; ${
        batch.notes.join("; ")
      }`,
    });
  }

  declaredLength(): PeerRequest {
    const { rng } = this;
    const base = this.mutationBase();
    const n = base.bytes.byteLength;
    const declared = rng.pick([
      String(64 * 1024 * 1024 + 1),
      String(2 ** 40),
      String(2 ** 53),
      "18446744073709551616",
      String(n + 1),
      String(Math.max(0, n - 1)),
      "0",
    ]);
    return this.protocolRequest("declared length", {
      method: "POST",
      path: rng.chance(0.8) ? _MESSAGES : _SNAPSHOT,
      headers: this.headersFor(base.header, { "content-length": declared }),
      body: base.bytes,
      messages: base.msgs.length,
      detail: `content-length ${declared} for ${n} B; ${base.notes.join("; ")}`,
    });
  }

  contentType(): PeerRequest {
    const { rng } = this;
    const type = rng.pick(["text/plain", "application/json", "multipart/form-data", ""]);
    const base = this.mutationBase();
    return this.protocolRequest("content type", {
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(base.header, { "content-type": type }),
      body: base.bytes,
      messages: base.msgs.length,
      detail: `content-type ${JSON.stringify(type)}; ${base.notes.join("; ")}`,
    });
  }

  emptyBatch(): PeerRequest {
    const { rng } = this;
    const variants: [string, Uint8Array | null][] = [
      ["no body", null],
      ["empty body", new Uint8Array(0)],
      ["magic byte only", Uint8Array.of(0xa1)],
      ["zero messages", Uint8Array.of(0xa1, 0, 0, 0, 0)],
      ["zero messages, trailing byte", Uint8Array.of(0xa1, 0, 0, 0, 0, 0)],
    ];
    const [name, body] = rng.pick(variants);
    const from = this.sender();
    return this.protocolRequest("empty batch", {
      method: "POST",
      path: rng.chance(0.8) ? _MESSAGES : _SNAPSHOT,
      headers: this.headersFor(this.header(from.id).value),
      body,
      messages: 1,
      detail: `${name}, from ${from.label}`,
    });
  }

  hugeHeader(): PeerRequest {
    const base = this.mutationBase();
    return this.protocolRequest("huge header", {
      method: "POST",
      path: _MESSAGES,
      headers: this.headersFor(base.header, { "x-fuzz-padding": "p".repeat(20_000) }),
      body: base.bytes,
      messages: base.msgs.length,
      detail: `a 20,000-character header; ${base.notes.join("; ")}`,
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Writing into encoded bytes (the layout is in src/transport/codec.ts).

/** The offset of the first message's `term` in an encoded batch. */
function _numbersOffset(first: Message): number {
  return 5 + 1 + 2 + _utf8Length(first.from) + 2 + _utf8Length(first.to);
}

const _NUMBER_FIELDS = ["term", "logTerm", "index", "commit", "rejectHint", "context"];

/** Writes `value` as the float64 of the first message's `field` (a copy of `bytes`). */
function _patchNumber(bytes: Uint8Array, first: Message, field: string, value: number): Uint8Array {
  const out = bytes.slice();
  const off = _numbersOffset(first) + 8 * _NUMBER_FIELDS.indexOf(field);
  if (off + 8 <= out.byteLength) new DataView(out.buffer).setFloat64(off, value);
  return out;
}

/** Writes `value` into the first message's reject or snapshot flag (a copy of `bytes`). */
function _patchFlag(
  bytes: Uint8Array,
  first: Message,
  flag: "reject" | "snapshot",
  value: number,
): Uint8Array {
  const out = bytes.slice();
  let off = _numbersOffset(first) + 48;
  if (flag === "snapshot") {
    off += 1 + 4;
    for (const entry of first.entries) off += 21 + entry.data.byteLength;
  }
  if (off < out.byteLength) out[off] = value;
  return out;
}

/** Corrupts the first entry's term, index or type (a copy of `bytes`). */
function _patchEntry(
  bytes: Uint8Array,
  first: Message,
  field: "entry term" | "entry index" | "entry type",
  rng: Rng,
): Uint8Array {
  const out = bytes.slice();
  const off = _numbersOffset(first) + 49 + 4;
  const view = new DataView(out.buffer);
  if (off + 21 > out.byteLength) return out;
  if (field === "entry type") out[off + 16] = rng.int(2, 256);
  else view.setFloat64(off + (field === "entry term" ? 0 : 8), rng.pick(_UNENCODABLE));
  return out;
}

/** Sets the first message's entry count to something that does not match (a copy). */
function _patchEntryCount(bytes: Uint8Array, first: Message, rng: Rng): Uint8Array {
  const out = bytes.slice();
  const off = _numbersOffset(first) + 49;
  if (off + 4 <= out.byteLength) {
    const count = first.entries.length;
    new DataView(out.buffer).setUint32(
      off,
      rng.pick([count + 1, Math.max(0, count - 1), 0xffffffff, 2 ** 31, 1000]),
    );
  }
  return out;
}
