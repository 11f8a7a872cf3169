import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { assertGoldenBytes } from "../../testing/golden_bytes.ts";
import { encodeConfState, EntryType, type Message, message, MessageType } from "../raft/types.ts";
import {
  CODEC_MAGIC,
  decodeMessages,
  encodedMessageSize,
  encodeMessageFrame,
  encodeMessages,
} from "./codec.ts";
import { sampleMessage } from "../../testing/transport_conformance.ts";

const _TYPES = Object.values(MessageType).filter((v): v is MessageType => typeof v === "number");

/** Offsets inside an encoded one-message batch whose ids are "a" and "b". */
const _TYPE_OFFSET = 5;
const _TERM_OFFSET = 5 + 1 + 3 + 3;
const _REJECT_OFFSET = _TERM_OFFSET + 48;
const _ENTRY_COUNT_OFFSET = _REJECT_OFFSET + 1;

function _decodeError(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(() => decodeMessages(bytes), (err: unknown) => {
    assert.ok(err instanceof RangeError, `expected a RangeError, got ${err}`);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("encodeMessages and decodeMessages round-trip every message type", () => {
  const msgs = _TYPES.map((type, i) => sampleMessage(type, "node-a", "node-b", i + 1, [3, 0]));
  assert.strictEqual(msgs.length, 12);
  const decoded = decodeMessages(encodeMessages(msgs));
  assert.deepStrictEqual(decoded, msgs);
  assert.ok(decoded.some((m) => m.snapshot !== null), "no snapshot meta in the sample");
});

Deno.test("encodeMessages and decodeMessages round-trip edge values", () => {
  const msgs: Message[] = [
    // Everything zero or empty.
    message({ type: MessageType.Heartbeat, to: "" }),
    // The largest numbers, non-ASCII ids, a snapshot without voters.
    {
      type: MessageType.Snap,
      from: "n\u00f6de-\u{1f680}",
      to: "\u8282\u70b9",
      term: Number.MAX_SAFE_INTEGER,
      logTerm: 2 ** 32,
      index: 2 ** 32 + 1,
      entries: [],
      commit: Number.MAX_SAFE_INTEGER - 1,
      reject: true,
      rejectHint: 2 ** 40,
      context: 1,
      snapshot: { index: Number.MAX_SAFE_INTEGER, term: 7, voters: [] },
    },
    // Empty and large entries, and the longest allowed id.
    {
      ...sampleMessage(MessageType.App, "x".repeat(0xffff), "b", 3),
      entries: [
        { term: 1, index: 1, type: EntryType.Noop, data: new Uint8Array(0) },
        { term: 1, index: 2, type: EntryType.Normal, data: _random(4 << 20) },
        { term: 2, index: 3, type: EntryType.Normal, data: new Uint8Array([0, 255]) },
      ],
    },
  ];
  assert.deepStrictEqual(decodeMessages(encodeMessages(msgs)), msgs);
});

Deno.test("encodeMessages of no messages is a 5-byte header", () => {
  const bytes = encodeMessages([]);
  assert.deepStrictEqual(bytes, new Uint8Array([CODEC_MAGIC, 0, 0, 0, 0]));
  assert.deepStrictEqual(decodeMessages(bytes), []);
});

Deno.test("encodeMessageFrame is the 4-byte big-endian length, then the encodeMessages bytes", () => {
  const cases: Message[][] = [
    [],
    _TYPES.map((type, i) => sampleMessage(type, "node-a", "node-b", i + 1, [3, 0])),
    [{ ...sampleMessage(MessageType.App, "a", "b", 1), entries: [] }],
  ];
  for (const msgs of cases) {
    const body = encodeMessages(msgs);
    const frame = encodeMessageFrame(msgs);
    assert.strictEqual(frame.byteLength, 4 + body.byteLength);
    assert.strictEqual(new DataView(frame.buffer).getUint32(0), body.byteLength);
    assert.deepStrictEqual(frame.subarray(4), body);
    assert.deepStrictEqual(decodeMessages(frame.subarray(4)), msgs);
  }
  // The length is big-endian even past 16 bits: a frame carrying one 70 000-byte entry.
  const big = [{
    ...sampleMessage(MessageType.App, "a", "b", 1),
    entries: [{ term: 1, index: 2, type: EntryType.Normal, data: _random(70_000) }],
  }];
  const frame = encodeMessageFrame(big);
  const length = encodeMessages(big).byteLength;
  assert.ok(length > 0xffff);
  assert.deepStrictEqual(
    [...frame.subarray(0, 4)],
    [length >>> 24, (length >>> 16) & 0xff, (length >>> 8) & 0xff, length & 0xff],
  );
  assert.throws(
    () => encodeMessageFrame([{ ...big[0]!, term: -1 }]),
    /term must be a non-negative safe integer/,
  );
});

Deno.test("encodedMessageSize matches the encoded size", () => {
  const msgs = _TYPES.map((type, i) => sampleMessage(type, "\u00e9", "b", i, [i * 3]));
  const total = msgs.reduce((n, m) => n + encodedMessageSize(m), 5);
  assert.strictEqual(encodeMessages(msgs).length, total);
});

Deno.test("decodeMessages returns entry data as views into its input", () => {
  const msg = sampleMessage(MessageType.App, "a", "b", 1, [16]);
  const bytes = encodeMessages([msg]);
  const data = decodeMessages(bytes)[0]!.entries[0]!.data;
  assert.strictEqual(data.buffer, bytes.buffer);
  assert.deepStrictEqual(data, msg.entries[0]!.data);
});

Deno.test("decodeMessages reads a batch that sits inside a larger buffer", () => {
  const msgs = [
    sampleMessage(MessageType.App, "a", "b", 1, [5]),
    sampleMessage(MessageType.Snap, "a", "b", 2),
  ];
  const encoded = encodeMessages(msgs);
  const big = new Uint8Array(encoded.length + 20).fill(0xee);
  big.set(encoded, 7);
  assert.deepStrictEqual(decodeMessages(big.subarray(7, 7 + encoded.length)), msgs);
});

Deno.test("decodeMessages rejects a batch truncated at any offset", () => {
  const bytes = encodeMessages([
    sampleMessage(MessageType.App, "a", "b\u00e9", 1, [0, 5]),
    sampleMessage(MessageType.Snap, "a", "b", 2),
    sampleMessage(MessageType.Heartbeat, "a", "b", 3),
  ]);
  for (let end = 0; end < bytes.length; end++) {
    _decodeError(bytes.subarray(0, end), /^Cannot decode messages: .* at offset \d+$/);
  }
});

Deno.test("decodeMessages rejects trailing bytes", () => {
  const bytes = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  const longer = new Uint8Array(bytes.length + 2);
  longer.set(bytes);
  _decodeError(longer, new RegExp(`2 trailing bytes after 1 messages at offset ${bytes.length}`));
});

Deno.test("decodeMessages rejects a bad magic byte", () => {
  const bytes = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  bytes[0] = 0x7b; // "{": somebody sent JSON
  _decodeError(bytes, /bad magic byte 0x7b \(expected 0xa1\) at offset 0/);
});

Deno.test("decodeMessages rejects an unknown message type", () => {
  for (const type of [0, 13, 255]) {
    const bytes = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
    bytes[_TYPE_OFFSET] = type;
    _decodeError(bytes, new RegExp(`unknown message type ${type} at offset ${_TYPE_OFFSET}`));
  }
});

Deno.test("decodeMessages rejects an unknown entry type", () => {
  const bytes = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1, [2])]);
  const typeOffset = _ENTRY_COUNT_OFFSET + 4 + 16;
  bytes[typeOffset] = 9;
  _decodeError(bytes, new RegExp(`unknown entry type 9 at offset ${typeOffset}`));
});

Deno.test("decodeMessages rejects numbers that are not non-negative safe integers", () => {
  for (const bad of [-1, 0.5, NaN, Infinity, 2 ** 53]) {
    const bytes = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
    new DataView(bytes.buffer).setFloat64(_TERM_OFFSET, bad);
    _decodeError(
      bytes,
      new RegExp(`term is not a non-negative safe integer: "${bad}" at offset ${_TERM_OFFSET}`),
    );
  }
});

Deno.test("decodeMessages rejects flags other than 0 and 1", () => {
  const bytes = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  bytes[_REJECT_OFFSET] = 2;
  _decodeError(bytes, new RegExp(`reject must be 0 or 1, got 2 at offset ${_REJECT_OFFSET}`));
  const snapFlag = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  snapFlag[snapFlag.length - 1] = 3;
  _decodeError(snapFlag, /snapshot flag must be 0, 1 or 2, got 3/);
});

Deno.test("decodeMessages rejects counts and lengths that run past the end", () => {
  const huge = encodeMessages([]);
  new DataView(huge.buffer).setUint32(1, 0xffffffff);
  _decodeError(huge, /message count 4294967295 runs past the end: .* at offset 1$/);

  const entries = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  new DataView(entries.buffer).setUint32(_ENTRY_COUNT_OFFSET, 1000);
  _decodeError(
    entries,
    new RegExp(`entry count 1000 runs past the end: .* at offset ${_ENTRY_COUNT_OFFSET}$`),
  );

  const data = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1, [4])]);
  const lengthOffset = _ENTRY_COUNT_OFFSET + 4 + 17;
  new DataView(data.buffer).setUint32(lengthOffset, 5000);
  _decodeError(
    data,
    new RegExp(
      `truncated entry data: needs 5000 bytes, only \\d+ left at offset ${lengthOffset + 4}`,
    ),
  );

  const id = encodeMessages([sampleMessage(MessageType.App, "a", "b", 1)]);
  new DataView(id.buffer).setUint16(_TYPE_OFFSET + 1, 60_000);
  _decodeError(id, /truncated from: needs 60000 bytes/);
});

Deno.test("decodeMessages rejects invalid UTF-8 in node ids", () => {
  const bytes = encodeMessages([sampleMessage(MessageType.App, "\u00e9", "b", 1)]);
  // "é" is C3 A9: break the continuation byte.
  bytes[_TYPE_OFFSET + 3 + 1] = 0x41;
  _decodeError(bytes, new RegExp(`from is not valid UTF-8 at offset ${_TYPE_OFFSET + 1}`));
});

Deno.test("decodeMessages never returns a wrong result for a corrupted byte", () => {
  // Flipping any single byte either still decodes (to something) or throws a RangeError.
  const bytes = encodeMessages([
    sampleMessage(MessageType.Snap, "a", "b", 1),
    sampleMessage(MessageType.App, "a", "b", 2, [3]),
  ]);
  for (let i = 0; i < bytes.length; i++) {
    const copy = bytes.slice();
    copy[i] = copy[i]! ^ 0xff;
    try {
      const msgs = decodeMessages(copy);
      // It decoded: it must re-encode to exactly the corrupted bytes (a faithful reading).
      assert.deepStrictEqual(encodeMessages(msgs), copy);
    } catch (err) {
      assert.ok(err instanceof RangeError, `byte ${i}: ${err}`);
    }
  }
});

Deno.test("encodeMessages rejects what the format cannot carry, quoting the value", () => {
  const ok = sampleMessage(MessageType.App, "a", "b", 1, [1]);
  const cases: [Message, RegExp][] = [
    [{ ...ok, type: 42 as MessageType }, /unknown message type "42"/],
    [{ ...ok, term: -1 }, /term must be a non-negative safe integer, got "-1"/],
    [{ ...ok, commit: 1.5 }, /commit must be a non-negative safe integer, got "1.5"/],
    [
      { ...ok, index: 2 ** 53 },
      /index must be a non-negative safe integer, got "9007199254740992"/,
    ],
    [{ ...ok, from: "x".repeat(0x10000) }, /from is 65536 bytes of UTF-8, more than 65535/],
    [
      { ...ok, entries: [{ ...ok.entries[0]!, type: 7 as EntryType }] },
      /unknown entry type "7"/,
    ],
    [
      { ...ok, snapshot: { index: 1, term: NaN, voters: [] } },
      /snapshot.term must be a non-negative safe integer, got "NaN"/,
    ],
  ];
  for (const [msg, pattern] of cases) {
    assert.throws(() => encodeMessages([msg]), (err: unknown) => {
      assert.ok(err instanceof RangeError, `expected a RangeError, got ${err}`);
      assert.match(err.message, pattern);
      return true;
    });
  }
});

function _random(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let off = 0; off < size; off += 65536) {
    crypto.getRandomValues(out.subarray(off, Math.min(size, off + 65536)));
  }
  return out;
}

/**
 * The golden batch for membership changes: an append carrying a configuration entry and a
 * snapshot message with learners and member data (flag 2). Rewrite after a deliberate format
 * change with `REWRITE=1 scripts/deno test --allow-all src/transport/codec_test.ts`.
 */
const _MEMBERSHIP_FIXTURE = fileURLToPath(new URL("./testdata/membership.bin", import.meta.url));
const _MEMBERSHIP_BATCH: Message[] = [
  message({
    type: MessageType.App,
    from: "n1",
    to: "n4",
    term: 3,
    logTerm: 3,
    index: 7,
    commit: 7,
    entries: [{
      term: 3,
      index: 8,
      type: EntryType.ConfChange,
      data: encodeConfState({
        voters: ["n1", "n2", "n3"],
        learners: ["n4"],
        info: { n4: '{"rpc_url":"http://h4:7001","api_url":"http://h4:8001"}' },
      }),
    }],
  }),
  message({
    type: MessageType.Snap,
    from: "n1",
    to: "n4",
    term: 3,
    snapshot: {
      index: 7,
      term: 3,
      voters: ["n1", "n2", "n3"],
      learners: ["n4"],
      info: { n1: "one", n4: "four" },
    },
  }),
];

Deno.test("the committed membership batch decodes to its messages, and encodes to its bytes", async () => {
  await assertGoldenBytes(_MEMBERSHIP_FIXTURE, encodeMessages(_MEMBERSHIP_BATCH));
  const decoded = decodeMessages(await Deno.readFile(_MEMBERSHIP_FIXTURE));
  assert.deepEqual(
    decoded.map((m) => ({ ...m, entries: m.entries.map((e) => ({ ...e, data: [...e.data] })) })),
    _MEMBERSHIP_BATCH.map((m) => ({
      ...m,
      entries: m.entries.map((e) => ({ ...e, data: [...e.data] })),
    })),
  );
  // A snapshot without learners keeps the first form (flag 1), readable by older nodes.
  const plain = encodeMessages([message({
    type: MessageType.Snap,
    from: "n1",
    to: "n2",
    term: 1,
    snapshot: { index: 1, term: 1, voters: ["n1"], learners: [], info: {} },
  })]);
  // The flag sits before index, term, the voter count and one 2-byte id with its length.
  assert.equal(plain[plain.length - (1 + 8 + 8 + 2 + 2 + 2)], 1);
});
