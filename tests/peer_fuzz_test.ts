/**
 * Hostile peer traffic: the generator's own rules (pure, fast), then a short fuzz run against a
 * live three-node cluster under a write load (`testing/peer_fuzz_runner.ts`; the long run is
 * `deno task fuzz:peer --messages 100000`).
 *
 * Set `PEER_FUZZ_SEED` to replay the live run, `PEER_FUZZ_MESSAGES` to change its length.
 */

import assert from "node:assert/strict";
import { decodeMessages, encodeMessages } from "../src/transport/codec.ts";
import { MAX_TERM, type Message, message, MessageType } from "../src/raft/types.ts";
import { concatBytes } from "../src/util/body.ts";
import { randomSeed } from "../testing/chaos_lib.ts";
import {
  ABSURD_TERM,
  FUZZ_CATEGORIES,
  type FuzzCategory,
  type FuzzTarget,
  generatePeerRequest,
  isForgeable,
  type PeerRequest,
  PLAUSIBLE_RISE,
  STREAM_FRAME_LIMIT,
  streamBatches,
} from "../testing/peer_fuzz_lib.ts";
import { runPeerFuzz } from "../testing/peer_fuzz_runner.ts";

const _MEMBERS = ["node-1", "node-2", "node-3"];

function _target(term: number | null, self = "node-2"): FuzzTarget {
  return { self, members: _MEMBERS, term };
}

/**
 * The messages a request carries to /raft/messages, if its body decodes, or those of the frames a
 * node would decode from a /raft/stream body (before its cut, if any).
 */
function _decoded(req: PeerRequest): Message[] | null {
  if (req.body !== null && req.path === "/raft/stream") {
    return streamBatches(req.cutAfter === undefined ? req.body : req.body.slice(0, req.cutAfter))
      .flat();
  }
  if (req.body === null || req.path !== "/raft/messages") return null;
  try {
    return decodeMessages(req.body);
  } catch {
    return null;
  }
}

Deno.test("the same seed, index and target always give the same peer request", () => {
  for (let index = 0; index < 300; index++) {
    const a = generatePeerRequest(77, index, _target(9));
    const b = generatePeerRequest(77, index, _target(9));
    assert.deepEqual(a, b, `request ${index}`);
  }
  const other = Array.from({ length: 50 }, (_, i) => generatePeerRequest(78, i, _target(9)));
  const same = other.filter((req, i) =>
    JSON.stringify(req) === JSON.stringify(generatePeerRequest(77, i, _target(9)))
  );
  assert.ok(same.length < 5, `${same.length} of 50 requests equal under another seed`);
});

Deno.test("the generator covers every category, message type, extreme value and kind of sender", () => {
  const categories = new Set<FuzzCategory>();
  const types = new Set<MessageType>();
  const terms = new Set<number>();
  const senders = new Set<string>();
  const kinds = new Set<string>();
  let nonContiguous = 0;
  let undecodableExtreme = 0;
  for (let index = 0; index < 4000; index++) {
    const req = generatePeerRequest(5, index, _target(12));
    categories.add(req.category);
    kinds.add(`${req.category}/${req.kind}`);
    if (req.category === "extreme" && _decoded(req) === null) undecodableExtreme++;
    if (req.category !== "extreme") continue;
    for (const msg of _decoded(req) ?? []) {
      types.add(msg.type);
      terms.add(msg.term);
      senders.add(
        _MEMBERS.includes(msg.from)
          ? msg.from === "node-2" ? "self" : "member"
          : msg.from.length > 60_000
          ? "very long"
          : msg.from === ""
          ? "empty"
          : "non-member",
      );
      const indexes = msg.entries.map((entry) => entry.index);
      if (indexes.some((i, k) => k > 0 && i !== indexes[k - 1]! + 1)) nonContiguous++;
    }
  }
  assert.deepEqual([...categories].sort(), [...FUZZ_CATEGORIES].sort());
  assert.equal(types.size, 12, `message types seen: ${[...types]}`);
  for (const value of [0, 1, 2 ** 31, 2 ** 32, 2 ** 48, Number.MAX_SAFE_INTEGER, 11, 13]) {
    assert.ok(terms.has(value), `no message with term ${value}`);
  }
  assert.deepEqual([...senders].sort(), ["empty", "member", "non-member", "self", "very long"]);
  assert.ok(nonContiguous > 20, `only ${nonContiguous} messages with non-contiguous entries`);
  assert.ok(undecodableExtreme > 50, `only ${undecodableExtreme} extreme bodies fail to decode`);
  for (
    const kind of [
      "mutated/bit flips",
      "mutated/truncation",
      "mutated/splice",
      "mutated/message count",
      "protocol/Snap on /raft/messages",
      "protocol/bogus snapshot body",
      "protocol/sender header",
      "protocol/declared length",
      "protocol/wrong method",
      "random/random bytes",
      "stream/well framed",
      "stream/oversized length prefix",
      "stream/frame longer than the stream",
      "stream/stream ends inside a prefix",
      "stream/length prefix shorter than its batch",
      "stream/reset mid-stream",
    ]
  ) {
    assert.ok(kinds.has(kind), `no ${kind} request`);
  }
});

Deno.test("stream requests carry read-index messages, split prefixes and frames a node decodes", () => {
  let streams = 0;
  let split = 0;
  let splitInPrefix = 0;
  let readIndex = 0;
  let readIndexResp = 0;
  let memberStreams = 0;
  let decodedFrames = 0;
  for (let index = 0; index < 3000; index++) {
    const req = generatePeerRequest(11, index, _target(12), ["stream"]);
    assert.equal(req.category, "stream");
    assert.equal(req.path, "/raft/stream");
    streams++;
    if (["node-1", "node-3"].includes(req.headers["x-raftkv-from"] ?? "")) memberStreams++;
    const body = req.body!;
    if (req.pieces !== undefined) {
      split++;
      for (let i = 0; i < req.pieces.length; i++) {
        const at = req.pieces[i]!;
        assert.ok(at > 0 && at < body.byteLength, `piece end ${at} of ${body.byteLength}`);
        if (i > 0) assert.ok(at > req.pieces[i - 1]!, "piece ends increase");
      }
      // Is one of the cuts inside a length prefix of a whole frame?
      let off = 0;
      const prefixes: number[] = [];
      const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
      while (off + 4 <= body.byteLength) {
        prefixes.push(off);
        off += 4 + view.getUint32(off);
      }
      if (req.pieces.some((at) => prefixes.some((p) => at > p && at < p + 4))) splitInPrefix++;
    }
    const batches = streamBatches(body);
    decodedFrames += batches.length;
    for (const msg of batches.flat()) {
      if (msg.type === MessageType.ReadIndex) readIndex++;
      if (msg.type === MessageType.ReadIndexResp) readIndexResp++;
    }
  }
  assert.ok(memberStreams / streams > 0.7, `${memberStreams} of ${streams} streams from members`);
  assert.ok(split > 1000, `only ${split} streams written in pieces`);
  assert.ok(splitInPrefix > 500, `only ${splitInPrefix} streams split inside a length prefix`);
  assert.ok(
    readIndex > 1000 && readIndexResp > 500,
    `${readIndex} ReadIndex, ${readIndexResp} resp`,
  );
  assert.ok(decodedFrames > 5000, `only ${decodedFrames} frames decode`);
});

Deno.test("streamBatches reads frames as a node does and stops where the node ends the stream", () => {
  const hb = encodeMessages([
    message({ type: MessageType.Heartbeat, from: "node-1", to: "node-2", term: 3 }),
  ]);
  const frame = (payload: Uint8Array, declared = payload.byteLength) => {
    const out = new Uint8Array(4 + payload.byteLength);
    new DataView(out.buffer).setUint32(0, declared);
    out.set(payload, 4);
    return out;
  };
  const join = (...parts: Uint8Array[]) => concatBytes(parts);
  assert.equal(streamBatches(join(frame(hb), frame(hb))).length, 2);
  assert.equal(streamBatches(join(frame(hb), frame(hb)).slice(0, 4 + hb.byteLength + 3)).length, 1);
  assert.equal(streamBatches(join(frame(hb), frame(hb, hb.byteLength + 1))).length, 1);
  assert.equal(streamBatches(join(frame(hb), frame(Uint8Array.of(1, 2, 3)), frame(hb))).length, 1);
  const over = join(frame(hb), frame(new Uint8Array(0), STREAM_FRAME_LIMIT + 1), frame(hb));
  assert.equal(streamBatches(over).length, 1);
});

Deno.test("isForgeable flags a member's plausible leader message and nothing stale, absurd or harmless", () => {
  const target = _target(7);
  const app = message({
    type: MessageType.App,
    from: "node-1",
    to: "node-2",
    term: 7,
    index: 3,
    logTerm: 7,
    commit: 4,
  });
  assert.equal(isForgeable(app, "node-1", target), true);
  assert.equal(isForgeable({ ...app, term: 9 }, "node-1", target), true);
  assert.equal(isForgeable({ ...app, from: "evil" }, "evil", target), false);
  assert.equal(isForgeable({ ...app, from: "evil" }, "node-3", target), true, "header names one");
  assert.equal(isForgeable({ ...app, term: 6 }, "node-1", target), false, "stale");
  assert.equal(isForgeable({ ...app, term: ABSURD_TERM }, "node-1", target), false, "absurd");
  assert.equal(isForgeable({ ...app, term: -1 }, "node-1", target), false, "undecodable");
  assert.equal(isForgeable(app, "node-1", _target(null)), true, "term unknown");
  const heartbeat = message({ type: MessageType.Heartbeat, from: "node-3", to: "node-2", term: 8 });
  assert.equal(isForgeable(heartbeat, "node-3", target), false);
  assert.equal(isForgeable({ ...heartbeat, commit: 5 }, "node-3", target), true);
  // The node adopts any term up to MAX_TERM from a member: far above its own, even a harmless
  // shape could push the cluster to MAX_TERM, where it can never elect a leader again.
  assert.equal(isForgeable({ ...heartbeat, term: 7 + PLAUSIBLE_RISE }, "node-3", target), false);
  assert.equal(isForgeable({ ...heartbeat, term: 8 + PLAUSIBLE_RISE }, "node-3", target), true);
  assert.equal(isForgeable({ ...heartbeat, term: 2 ** 32 }, "node-3", target), true);
  assert.equal(isForgeable({ ...heartbeat, term: MAX_TERM }, "node-3", target), true);
  assert.equal(isForgeable({ ...heartbeat, term: MAX_TERM + 1 }, "node-3", target), false);
  const grant = message({ type: MessageType.VoteResp, from: "node-3", to: "node-2", term: 7 });
  assert.equal(isForgeable(grant, "node-3", target), true);
  assert.equal(isForgeable({ ...grant, reject: true }, "node-3", target), false);
  // A read index request is answered with the leader's commit index whatever its context; an
  // answer with a pending read's context would make a follower serve that read at its index.
  const read = message({ type: MessageType.ReadIndex, from: "node-1", to: "node-2", term: 7 });
  assert.equal(isForgeable({ ...read, context: Number.MAX_SAFE_INTEGER }, "node-1", target), false);
  const answer = { ...read, type: MessageType.ReadIndexResp, index: 3, context: 1 };
  assert.equal(isForgeable(answer, "node-1", target), true);
  assert.equal(isForgeable({ ...answer, term: 6 }, "node-1", target), false, "stale");
  const vote = message({ type: MessageType.Vote, from: "node-1", to: "node-2", term: 8 });
  assert.equal(isForgeable(vote, "node-1", target), false);
  assert.equal(isForgeable({ ...vote, index: 5, logTerm: 7 }, "node-1", target), true);
});

Deno.test("no generated message could pass for a member's, and plausible ones stay near the term", () => {
  let checked = 0;
  let plausible = 0;
  let disturbing = 0;
  let total = 0;
  for (const term of [null, 1, 7, 2 ** 31, Number.MAX_SAFE_INTEGER]) {
    const target = _target(term, "node-1");
    for (let index = 0; index < 2500; index++) {
      const req = generatePeerRequest(31, index, target);
      total++;
      const msgs = _decoded(req) ?? [];
      const header = req.headers["x-raftkv-from"] ?? null;
      for (const msg of msgs) {
        checked++;
        assert.equal(
          isForgeable(msg, header, target),
          false,
          `request ${index} (term ${term}): ${req.category}/${req.kind} ${req.detail}`,
        );
        if (req.category === "plausible" && term !== null) {
          assert.ok(msg.term <= term + PLAUSIBLE_RISE, req.detail);
        }
      }
      if (req.category === "plausible") plausible++;
      if (req.kind === "disturbing") disturbing++;
    }
  }
  assert.ok(checked > 10_000, `only ${checked} messages decoded`);
  assert.ok(plausible / total < 0.08, `${plausible} of ${total} requests are plausible`);
  assert.ok(disturbing / total < 0.005, `${disturbing} of ${total} requests are disturbing`);
});

Deno.test({
  name:
    "a live cluster under a write load survives thousands of hostile peer messages, restarts cleanly and stays linearizable",
  fn: async () => {
    const seedText = Deno.env.get("PEER_FUZZ_SEED");
    const seed = seedText === undefined ? randomSeed() : Number(seedText);
    const messages = Number(Deno.env.get("PEER_FUZZ_MESSAGES") ?? 6000);
    const report = await runPeerFuzz({
      seed,
      messages,
      maxFuzzMs: 60_000,
      checkTimeoutMs: 20_000,
    });
    for (const line of report.summary) console.log(`fuzz:peer: ${line}`);
    assert.ok(
      report.ok,
      `the peer fuzz run with PEER_FUZZ_SEED=${seed} found problems:\n${
        report.summary.join("\n")
      }\n${report.details}`,
    );
    assert.ok(report.sent.messages >= messages, `only ${report.sent.messages} messages sent`);
  },
});
