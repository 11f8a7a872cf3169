import assert from "node:assert/strict";
import {
  CAMPAIGN_TRANSFER,
  type Entry,
  EntryType,
  MAX_INDEX,
  MAX_TERM,
  type Message,
  message,
  MessageType,
} from "./types.ts";
import { type PeerEndpoint, PeerValidator, type RefusalKind } from "./validate.ts";

const MEMBERS = ["n1", "n2", "n3"];

/** A stand-in for the state machine's command decoder: data must start with byte 1. */
function checkData(data: Uint8Array): void {
  if (data[0] !== 1) throw new RangeError(`unknown command op ${data[0]}`);
}

const validator = new PeerValidator({ self: "n2", members: MEMBERS, checkEntryData: checkData });

function cmd(): Uint8Array {
  return new Uint8Array([1, 0, 0, 0, 1, 0x6b, 0x76]);
}

function entries(first: number, terms: number[]): Entry[] {
  return terms.map((term, i) => ({ term, index: first + i, type: EntryType.Normal, data: cmd() }));
}

/** A well-formed message of each type from n1 to n2, as the core sends them. */
function good(type: MessageType): Message {
  const base = { type, from: "n1", to: "n2", term: 5 };
  switch (type) {
    case MessageType.Vote:
    case MessageType.PreVote:
      return message({ ...base, index: 7, logTerm: 4 });
    case MessageType.VoteResp:
    case MessageType.PreVoteResp:
      return message({ ...base, reject: true });
    case MessageType.App:
      return message({ ...base, index: 7, logTerm: 4, entries: entries(8, [4, 5]), commit: 6 });
    case MessageType.AppResp:
      return message({ ...base, index: 7, reject: true, rejectHint: 3, logTerm: 2 });
    case MessageType.Heartbeat:
      return message({ ...base, commit: 6, context: 12 });
    case MessageType.HeartbeatResp:
      return message({ ...base, index: 9, context: 12 });
    case MessageType.Snap:
      return message({ ...base, snapshot: { index: 100, term: 4, voters: MEMBERS } });
    case MessageType.TimeoutNow:
      return message(base);
    case MessageType.ReadIndex:
      return message({ ...base, context: 3 });
    case MessageType.ReadIndexResp:
      return message({ ...base, index: 9, context: 3 });
  }
}

const ALL_TYPES = Object.values(MessageType).filter((v): v is MessageType => typeof v === "number");

function refused(
  batch: Message[],
  kind: RefusalKind,
  pattern: RegExp,
  options: { from?: string; endpoint?: PeerEndpoint } = {},
): void {
  const r = validator.checkBatch(options.from ?? "n1", batch, options.endpoint ?? "messages");
  assert.ok(r !== null, `accepted, expected a refusal matching ${pattern}`);
  assert.equal(r.kind, kind, r.reason);
  assert.match(r.reason, pattern);
}

Deno.test("every message type the core sends passes, alone and in one batch", () => {
  for (const type of ALL_TYPES) {
    const endpoint = type === MessageType.Snap ? "snapshot" : "messages";
    assert.equal(validator.checkBatch("n1", [good(type)], endpoint), null, MessageType[type]);
  }
  const batch = ALL_TYPES.filter((t) => t !== MessageType.Snap).map(good);
  assert.equal(validator.checkBatch("n1", batch, "messages"), null);
  // What the core sends with most fields zero passes too: an accepting append answer, a
  // stale-leader answer, a pre-vote refusal from a node still at term 0, an empty append.
  const minimal = [
    message({ type: MessageType.AppResp, from: "n1", to: "n2", term: 5, index: 9 }),
    message({ type: MessageType.AppResp, from: "n1", to: "n2", term: 5 }),
    message({ type: MessageType.PreVoteResp, from: "n1", to: "n2", term: 0, reject: true }),
    message({ type: MessageType.App, from: "n1", to: "n2", term: 1 }),
    // A vote request of a campaign a leader transfer started.
    message({ type: MessageType.Vote, from: "n1", to: "n2", term: 5, context: CAMPAIGN_TRANSFER }),
    // A heartbeat answer of a follower whose disk is full.
    message({ type: MessageType.HeartbeatResp, from: "n1", to: "n2", term: 5, reject: true }),
  ];
  assert.equal(validator.checkBatch("n1", minimal, "messages"), null);
  // No data check configured: any Normal entry data passes.
  const lax = new PeerValidator({ self: "n2", members: MEMBERS });
  const app = good(MessageType.App);
  app.entries[0]!.data = new Uint8Array([9]);
  assert.equal(lax.checkBatch("n1", [app], "messages"), null);
});

Deno.test("a sender that is not another member is refused as not-member, quoting it", () => {
  assert.equal(validator.checkSender("n1"), null);
  const evil = validator.checkSender("evil");
  assert.deepEqual(evil?.kind, "not-member");
  assert.match(evil!.reason, /sender "evil" is not a member of \["n1", "n2", "n3"\]/);
  assert.match(validator.checkSender("n2")!.reason, /sender "n2" is this node/);
  assert.match(validator.checkSender("")!.reason, /sender "" is not a member/);
  const long = validator.checkSender("x".repeat(70_000))!.reason;
  assert.ok(long.length < 200, `a long id is shortened in the reason: ${long.length} chars`);
  refused([good(MessageType.Heartbeat)], "not-member", /sender "evil"/, { from: "evil" });
  // A message claiming a non-member sender inside a member's request.
  refused(
    [{ ...good(MessageType.Heartbeat), from: "evil" }],
    "not-member",
    /claims sender "evil" in a request from "n1"/,
  );
  // ...or claiming to come from this node itself.
  refused(
    [{ ...good(MessageType.Heartbeat), from: "n2" }],
    "not-member",
    /claims sender "n2" in a request from "n1"/,
  );
  // ...or claiming another member than the request's sender.
  refused(
    [good(MessageType.Heartbeat), { ...good(MessageType.Heartbeat), from: "n3" }],
    "invalid",
    /message 2 of 2 \(Heartbeat\) claims sender "n3" in a request from "n1"/,
  );
});

Deno.test("a message addressed to another node is refused as misaddressed", () => {
  refused(
    [{ ...good(MessageType.App), to: "n3" }],
    "misaddressed",
    /addressed to "n3", not to this node "n2"/,
  );
});

Deno.test("Snap travels only as a snapshot upload, and an upload carries exactly one Snap", () => {
  refused([good(MessageType.Snap)], "invalid", /Snap messages are only accepted with a snapshot/);
  refused(
    [good(MessageType.App)],
    "invalid",
    /exactly one Snap message, got 1 message\(s\) of type \["App"\]/,
    {
      endpoint: "snapshot",
    },
  );
  refused(
    [good(MessageType.Snap), good(MessageType.Snap)],
    "invalid",
    /got 2 message/,
    { endpoint: "snapshot" },
  );
  refused([], "invalid", /got 0 message/, { endpoint: "snapshot" });
});

Deno.test("terms and indexes above their bounds are refused, quoting the value", () => {
  const huge = Number.MAX_SAFE_INTEGER;
  refused(
    [{ ...good(MessageType.Heartbeat), term: huge }],
    "invalid",
    new RegExp(`term ${huge} is above the limit ${MAX_TERM}`),
  );
  refused(
    [{ ...good(MessageType.Heartbeat), term: MAX_TERM + 1 }],
    "invalid",
    /term 281474976710657 is above/,
  );
  refused(
    [{ ...good(MessageType.Heartbeat), commit: MAX_INDEX + 1 }],
    "invalid",
    /commit 281474976710657 is above/,
  );
  refused(
    [{ ...good(MessageType.Heartbeat), context: huge }],
    "invalid",
    /context 9007199254740991 is above/,
  );
  refused(
    [{ ...good(MessageType.Vote), index: MAX_INDEX + 1 }],
    "invalid",
    /index 281474976710657 is above/,
  );
  refused(
    [{ ...good(MessageType.AppResp), rejectHint: MAX_INDEX + 1 }],
    "invalid",
    /rejectHint 281474976710657 is above/,
  );
  refused(
    [{ ...good(MessageType.Vote), logTerm: MAX_TERM + 1, term: MAX_TERM }],
    "invalid",
    /logTerm 281474976710657 is above the limit/,
  );
  refused(
    [{ ...good(MessageType.Heartbeat), term: -1 }],
    "invalid",
    /term must be a non-negative integer, got "-1"/,
  );
  refused([{ ...good(MessageType.Heartbeat), term: 1.5 }], "invalid", /got "1.5"/);
  refused([{ ...good(MessageType.Heartbeat), term: NaN }], "invalid", /got "NaN"/);
  const app = good(MessageType.App);
  refused(
    [{ ...app, entries: [{ ...app.entries[0]!, term: MAX_TERM + 1 }] }],
    "invalid",
    /entry 8 term 281474976710657 is above the limit/,
  );
  refused(
    [{ ...app, entries: [{ ...app.entries[0]!, index: MAX_INDEX + 1 }] }],
    "invalid",
    /entry 1 index 281474976710657 is above the limit/,
  );
  // At the bounds exactly is fine.
  assert.equal(
    validator.checkBatch("n1", [{ ...good(MessageType.Heartbeat), term: MAX_TERM }], "messages"),
    null,
  );
});

Deno.test("requests need a term of at least 1 and a logTerm within the message's term", () => {
  for (
    const type of [
      MessageType.Vote,
      MessageType.PreVote,
      MessageType.App,
      MessageType.Heartbeat,
      MessageType.TimeoutNow,
      MessageType.ReadIndex,
    ]
  ) {
    refused(
      [{ ...good(type), term: 0, logTerm: 0, entries: [] }],
      "invalid",
      /term must be at least 1, got 0/,
    );
  }
  refused(
    [{ ...good(MessageType.Vote), logTerm: 6 }],
    "invalid",
    /logTerm 6 is above the message term 5/,
  );
  refused(
    [{ ...good(MessageType.App), logTerm: 6, entries: [] }],
    "invalid",
    /logTerm 6 is above the message term 5/,
  );
});

Deno.test("fields a message type never sets must be zero, empty or null", () => {
  refused(
    [{ ...good(MessageType.Heartbeat), index: 3 }],
    "invalid",
    /Heartbeat message: index is not used by this message type but was set to "3"/,
  );
  refused([{ ...good(MessageType.Vote), commit: 4 }], "invalid", /commit is not used .* "4"/);
  refused(
    [{ ...good(MessageType.VoteResp), entries: entries(1, [1]) }],
    "invalid",
    /entries is not used .* "1 entries"/,
  );
  refused(
    [{ ...good(MessageType.HeartbeatResp), rejectHint: 3 }],
    "invalid",
    /rejectHint is not used .* "3"/,
  );
  refused([{ ...good(MessageType.Heartbeat), reject: true }], "invalid", /reject is not used/);
  refused(
    [{ ...good(MessageType.TimeoutNow), context: 2 }],
    "invalid",
    /context is not used .* "2"/,
  );
  refused(
    [{ ...good(MessageType.ReadIndex), index: 4 }],
    "invalid",
    /ReadIndex message: index is not used .* "4"/,
  );
  refused(
    [{ ...good(MessageType.Vote), context: 2 }],
    "invalid",
    /a vote request's context is 0 or 1 \(a leader transfer\), got 2/,
  );
  refused(
    [{ ...good(MessageType.App), snapshot: { index: 1, term: 1, voters: MEMBERS } }],
    "invalid",
    /snapshot is not used/,
  );
  refused(
    [{ ...good(MessageType.App), rejectHint: 2 }],
    "invalid",
    /rejectHint is not used .* "2"/,
  );
  refused(
    [{ ...good(MessageType.PreVoteResp), logTerm: 1 }],
    "invalid",
    /logTerm is not used .* "1"/,
  );
});

Deno.test("append answers: a reject hint never passes the rejected index; an acceptance sets neither", () => {
  refused(
    [{ ...good(MessageType.AppResp), rejectHint: 8 }],
    "invalid",
    /rejectHint 8 is above the rejected index 7/,
  );
  refused(
    [{ ...good(MessageType.AppResp), reject: false }],
    "invalid",
    /an accepting answer must not set rejectHint or logTerm, got rejectHint 3 and logTerm 2/,
  );
});

Deno.test("append entries must follow the index without gaps, with sane non-decreasing terms", () => {
  const app = good(MessageType.App); // index 7, logTerm 4, term 5, entries 8@4, 9@5
  refused([{ ...app, entries: entries(9, [4, 5]) }], "invalid", /entry 1 has index 9, expected 8/);
  refused(
    [{ ...app, entries: [...entries(8, [4]), ...entries(10, [5])] }],
    "invalid",
    /entry 2 has index 10, expected 9/,
  );
  refused(
    [{ ...app, entries: entries(8, [4, 6]) }],
    "invalid",
    /entry 9 term 6 is above the message term 5/,
  );
  refused(
    [{ ...app, entries: entries(8, [5, 4]) }],
    "invalid",
    /entry 9 term 4 is below the term 5 before it/,
  );
  refused(
    [{ ...app, entries: entries(8, [3]) }],
    "invalid",
    /entry 8 term 3 is below the term 4 before it/,
  );
  refused(
    [{ ...app, logTerm: 0, entries: entries(8, [0]) }],
    "invalid",
    /entry 8 has term 0, must be at least 1/,
  );
  refused(
    [{ ...app, entries: [{ term: 5, index: 8, type: EntryType.Noop, data: new Uint8Array(2) }] }],
    "invalid",
    /entry 8 is a no-op carrying 2 bytes of data/,
  );
  refused(
    [{ ...app, entries: [{ term: 5, index: 8, type: 7 as EntryType, data: cmd() }] }],
    "invalid",
    /entry 8 has unknown type "7"/,
  );
});

Deno.test("a command entry that does not decode refuses the whole batch, quoting the decoder", () => {
  const app = good(MessageType.App);
  app.entries[1]!.data = new Uint8Array([9, 9]);
  refused(
    [good(MessageType.Heartbeat), app],
    "invalid",
    /message 2 of 2 \(App\): entry 9 does not hold a valid command: unknown command op 9/,
  );
});

Deno.test("snapshot metadata must be sane: index and term at least 1, term within the message's, voters members", () => {
  const snap = (meta: Partial<NonNullable<Message["snapshot"]>> | null): Message[] => {
    const m = good(MessageType.Snap);
    return [{ ...m, snapshot: meta === null ? null : { ...m.snapshot!, ...meta } }];
  };
  const opts = { endpoint: "snapshot" as const };
  refused(snap(null), "invalid", /carries no snapshot metadata/, opts);
  refused(snap({ index: 0 }), "invalid", /snapshot index must be at least 1, got 0/, opts);
  refused(snap({ term: 0 }), "invalid", /snapshot term must be at least 1, got 0/, opts);
  refused(snap({ term: 6 }), "invalid", /snapshot term 6 is above the message term 5/, opts);
  refused(
    snap({ index: MAX_INDEX + 1 }),
    "invalid",
    /snapshot index 281474976710657 is above/,
    opts,
  );
  refused(snap({ voters: [] }), "invalid", /snapshot has no voters/, opts);
  // Members may have joined after this node learned its configuration: a new id is taken.
  refused(snap({ voters: ["n1", "n1"] }), "invalid", /snapshot member "n1" is listed twice/, opts);
  refused(
    snap({ voters: ["n1"], learners: ["n1"] }),
    "invalid",
    /snapshot member "n1" is listed twice/,
    opts,
  );
});

Deno.test("setMembers changes whom messages may come from; open takes any sender", () => {
  const v = new PeerValidator({ self: "n2", members: MEMBERS });
  assert.equal(v.checkSender("n4")?.kind, "not-member");
  v.setMembers(["n1", "n4"]);
  assert.equal(v.checkSender("n4"), null);
  assert.equal(v.checkSender("n3")?.kind, "not-member");
  v.setMembers([], true);
  assert.equal(v.checkSender("anyone"), null);
  assert.equal(v.checkSender("n2")?.kind, "not-member", "never from itself");
});

Deno.test("a validator for a node that is not among the members cannot be made", () => {
  assert.throws(
    () => new PeerValidator({ self: "n9", members: MEMBERS }),
    (e: unknown) => e instanceof RangeError && /"n9" is not among the members/.test(e.message),
  );
});
