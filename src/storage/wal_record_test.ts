import assert from "node:assert/strict";
import { type Entry, EntryType } from "../raft/types.ts";
import { crc32cRange } from "./crc32c.ts";
import {
  COMMIT_PAYLOAD_SIZE,
  decodeRecord,
  ENTRY_FIELDS_SIZE,
  HEADER_SIZE,
  RecordEncoder,
  RESET_PAYLOAD_SIZE,
} from "./wal_record.ts";

function _entry(index: number, term = 1, size = 10): Entry {
  const data = new Uint8Array(size).fill(0x41 + (index % 26));
  return { term, index, type: EntryType.Normal, data };
}

/** Re-seals the record at 0 after a test edits its payload, so only the intended check fails. */
function _reseal(bytes: Uint8Array): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const size = view.getUint32(0, true);
  view.setUint32(8, crc32cRange(bytes, HEADER_SIZE, HEADER_SIZE + size), true);
  view.setUint32(12, crc32cRange(bytes, 0, 12), true);
}

Deno.test("RecordEncoder encodes a batch back to back and decodeRecord() reads it back", () => {
  const encoder = new RecordEncoder();
  const entries = [
    _entry(1),
    { term: 2, index: 2, type: EntryType.Noop, data: new Uint8Array(0) },
    _entry(3, 2, 1000),
    { term: 2 ** 53 - 1, index: 2 ** 40 + 3, type: EntryType.Normal, data: new Uint8Array([0]) },
  ];
  for (const entry of entries) encoder.addEntry(entry);
  encoder.addReset(2 ** 33, 7);
  encoder.addCommit(2 ** 33);
  const bytes = encoder.bytes();
  const expectedLength = entries.reduce(
    (sum, e) => sum + HEADER_SIZE + ENTRY_FIELDS_SIZE + e.data.length,
    HEADER_SIZE + RESET_PAYLOAD_SIZE + HEADER_SIZE + COMMIT_PAYLOAD_SIZE,
  );
  assert.equal(bytes.length, expectedLength);
  assert.equal(encoder.length, expectedLength);

  let offset = 0;
  for (const entry of entries) {
    const result = decodeRecord(bytes, offset);
    assert.equal(result.kind, "entry");
    if (result.kind !== "entry") return;
    assert.deepEqual(result.entry, entry);
    offset = result.end;
  }
  const reset = decodeRecord(bytes, offset);
  assert.deepEqual(reset, {
    kind: "reset",
    index: 2 ** 33,
    term: 7,
    end: bytes.length - HEADER_SIZE - COMMIT_PAYLOAD_SIZE,
  });
  assert.deepEqual(decodeRecord(bytes, bytes.length - HEADER_SIZE - COMMIT_PAYLOAD_SIZE), {
    kind: "commit",
    index: 2 ** 33,
    end: bytes.length,
  });
});

Deno.test("decodeRecord() reports a commit record with the wrong size or index as malformed", () => {
  const encoder = new RecordEncoder();
  encoder.addCommit(5);
  const zero = encoder.bytes().slice();
  new DataView(zero.buffer).setUint32(HEADER_SIZE, 0, true);
  _reseal(zero);
  assert.deepEqual(decodeRecord(zero, 0), {
    kind: "malformed",
    end: zero.length,
    reason: "commit index is 0, expected at least 1",
  });
  const long = new Uint8Array(HEADER_SIZE + COMMIT_PAYLOAD_SIZE + 1);
  long.set(encoder.bytes());
  new DataView(long.buffer).setUint32(0, COMMIT_PAYLOAD_SIZE + 1, true);
  _reseal(long);
  assert.deepEqual(decodeRecord(long, 0), {
    kind: "malformed",
    end: long.length,
    reason: "commit record payload is 9 bytes, expected 8",
  });
  assert.throws(() => encoder.addCommit(0), RangeError);
});

Deno.test("RecordEncoder.clear() starts a new batch in the same buffer", () => {
  const encoder = new RecordEncoder();
  encoder.addEntry(_entry(1, 1, 100_000)); // grows the buffer past its initial size
  encoder.clear();
  assert.equal(encoder.length, 0);
  encoder.addEntry(_entry(2));
  const result = decodeRecord(encoder.bytes(), 0);
  assert.equal(result.kind === "entry" && result.entry.index, 2);
  assert.equal(encoder.length, HEADER_SIZE + ENTRY_FIELDS_SIZE + 10);
});

Deno.test("decodeRecord() copies the entry data out of the segment bytes", () => {
  const encoder = new RecordEncoder();
  encoder.addEntry(_entry(1));
  const bytes = encoder.bytes().slice();
  const result = decodeRecord(bytes, 0);
  bytes.fill(0);
  assert.equal(result.kind === "entry" && result.entry.data[0], 0x42);
});

Deno.test("RecordEncoder rejects entries it could not replay", () => {
  const encoder = new RecordEncoder();
  assert.throws(() => encoder.addEntry(_entry(0)), {
    name: "RangeError",
    message: "Entry index must be a safe integer of at least 1, found 0",
  });
  assert.throws(() => encoder.addEntry(_entry(1, 1.5)), /Entry term .* found 1.5$/);
  assert.throws(() => encoder.addEntry(_entry(2 ** 53)), RangeError);
  assert.throws(
    () => encoder.addEntry({ ..._entry(1), type: 9 as EntryType }),
    { name: "TypeError", message: "Entry 1 has unknown type 9" },
  );
  assert.throws(
    () => encoder.addEntry({ ..._entry(1), data: "x" as unknown as Uint8Array }),
    TypeError,
  );
  assert.throws(() => encoder.addReset(0, 1), /^RangeError: Reset index .* found 0$/);
});

Deno.test("decodeRecord() reports a partial header or payload at the end of the bytes", () => {
  const encoder = new RecordEncoder();
  encoder.addEntry(_entry(1));
  const bytes = encoder.bytes();
  for (let cut = 1; cut < HEADER_SIZE; cut++) {
    const result = decodeRecord(bytes.subarray(0, cut), 0);
    assert.equal(result.kind, "short-header");
    assert.equal(
      result.kind === "short-header" && result.reason,
      `the file ends inside a record header (${cut} of 16 bytes)`,
    );
  }
  for (let cut = HEADER_SIZE; cut < bytes.length; cut++) {
    const result = decodeRecord(bytes.subarray(0, cut), 0);
    assert.equal(result.kind, "short-payload", `cut at ${cut}`);
    assert.equal(result.kind === "short-payload" && result.end, bytes.length);
  }
});

Deno.test("decodeRecord() reports a damaged header or payload by which checksum failed", () => {
  const encoder = new RecordEncoder();
  encoder.addEntry(_entry(1));
  for (let offset = 0; offset < encoder.length; offset++) {
    const bytes = encoder.bytes().slice();
    bytes[offset]! ^= 0x10;
    const result = decodeRecord(bytes, 0);
    assert.equal(result.kind, offset < HEADER_SIZE ? "bad-header" : "bad-payload", `${offset}`);
  }
  const bytes = encoder.bytes().slice();
  bytes[HEADER_SIZE + 20]! ^= 1;
  const result = decodeRecord(bytes, 0);
  assert.match(
    result.kind === "bad-payload" ? result.reason : "",
    /^record payload checksum mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)$/,
  );
});

Deno.test("decodeRecord() reports records with valid checksums but invalid content as malformed", () => {
  const cases: [string, (bytes: Uint8Array, view: DataView) => void][] = [
    ["unknown record type 9", (bytes) => bytes[4] = 9],
    ["reserved header bytes are not zero", (bytes) => bytes[6] = 1],
    [
      "entry index is 0, expected at least 1",
      (_, view) => view.setUint32(HEADER_SIZE + 8, 0, true),
    ],
    ["entry term is above 2^53 - 1", (_, view) => view.setUint32(HEADER_SIZE + 4, 0x200000, true)],
    ["entry 1 has unknown entry type 5", (bytes) => bytes[HEADER_SIZE + 16] = 5],
  ];
  for (const [reason, edit] of cases) {
    const encoder = new RecordEncoder();
    encoder.addEntry(_entry(1));
    const bytes = encoder.bytes().slice();
    edit(bytes, new DataView(bytes.buffer));
    _reseal(bytes);
    assert.deepEqual(decodeRecord(bytes, 0), { kind: "malformed", end: bytes.length, reason });
  }
});
