/**
 * The golden byte fixtures for the snapshot format (see src/storage/README.md, "Golden
 * fixtures"): the committed files must still decode to the values written out here, and writing
 * those values today must give the committed bytes of the current format exactly. After a deliberate format change,
 * rewrite it with `REWRITE=1 scripts/deno test --allow-all src/storage/snapshot_golden_test.ts`.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assertGoldenBytes, fromHex, hexBytes } from "../../testing/golden_bytes.ts";
import {
  encodeSnapshot,
  readSnapshotFile,
  type SnapshotEntry,
  type SnapshotHeader,
  snapshotName,
  writeSnapshotFile,
} from "./snapshot_file.ts";

const TESTDATA = fileURLToPath(new URL("./testdata/", import.meta.url));
/** The first format ("RKVSNAP1": pairs only), written by an earlier version: it must still load. */
const FIXTURE_V1 = join(TESTDATA, snapshotName(42, 3));
/** The second format ("RKVSNAP2": entries with revisions, then session records, no leases). */
const FIXTURE_V2 = join(TESTDATA, "v2-" + snapshotName(42, 3));
/** The current format ("RKVSNAP3": as the second, then lease records). */
const FIXTURE = join(TESTDATA, "v3-" + snapshotName(42, 3));

const HEADER: SnapshotHeader = {
  index: 42,
  term: 3,
  voters: ["node-1", "node-2", "node-3"],
  count: 4,
};

/** Pairs in the order they are written: an empty key, an empty value and non-ASCII text. */
const PAIRS: [string, string][] = [
  ["alpha", "1"],
  ["", "the empty key"],
  ["ключ", "значение ✓"],
  ["empty value", ""],
];

/** The v2 fixture's entries: the pairs with revisions (one above 2^32), and two sessions. */
const ENTRIES: SnapshotEntry[] = PAIRS.map(([key, value], i) => ({
  key,
  value,
  createIndex: 3 + i,
  modIndex: i === 2 ? 2 ** 40 + 5 : 10 + i,
  version: i + 1,
}));
const SESSIONS = [new TextEncoder().encode("session one"), new Uint8Array([0, 255])];
/** The v3 fixture's lease records (opaque here): one, then an empty one. */
const LEASES = [new TextEncoder().encode("lease 7"), new Uint8Array([])];

/**
 * The v1 file's first bytes: the magic "RKVSNAP1", then the header's length as a u32 big-endian
 * (69), then the header JSON.
 */
const START_V1 = `
  52 4b 56 53 4e 41 50 31  00 00 00 45
  ${
  hexBytes(new TextEncoder().encode('{"index":42,"term":3,"voters":["node-1","node-2","node-3"]'))
}`;

/**
 * The v1 file's last bytes: the last pair (key length 11, "empty value", value length 0), the
 * trailer "RKVSEND1" and the CRC-32C (u32 big-endian) of every byte before it, trailer included.
 */
const END_V1 = `
  00 00 00 0b  65 6d 70 74 79 20 76 61 6c 75 65  00 00 00 00
  52 4b 56 53 45 4e 44 31  a4 c4 fc d0`;

/** The v2 file's first bytes: the magic "RKVSNAP2", then the same header. */
const START_V2 = `
  52 4b 56 53 4e 41 50 32  00 00 00 45
  ${
  hexBytes(new TextEncoder().encode('{"index":42,"term":3,"voters":["node-1","node-2","node-3"]'))
}`;

/** The v3 file's first bytes: the magic "RKVSNAP3", then the same header. */
const START = `
  52 4b 56 53 4e 41 50 33  00 00 00 45
  ${
  hexBytes(new TextEncoder().encode('{"index":42,"term":3,"voters":["node-1","node-2","node-3"]'))
}`;

/**
 * The v2 file's last bytes: the last entry (key "empty value", an empty value, create index 6,
 * mod index 13, version 4, each a u64 as two u32 big-endian), 2 session records ("session one",
 * then the bytes 00 ff), the trailer and the CRC-32C.
 */
const END_PREFIX_V2 = `
  00 00 00 0b  65 6d 70 74 79 20 76 61 6c 75 65  00 00 00 00
  00 00 00 00 00 00 00 06  00 00 00 00 00 00 00 0d  00 00 00 00 00 00 00 04
  00 00 00 02  00 00 00 0b  73 65 73 73 69 6f 6e 20 6f 6e 65  00 00 00 02  00 ff
  52 4b 56 53 45 4e 44 31`;

/**
 * The v3 file's last bytes: as v2's, then 2 lease records ("lease 7", then an empty one) before
 * the trailer.
 */
const END_PREFIX = `
  00 00 00 02  00 00 00 0b  73 65 73 73 69 6f 6e 20 6f 6e 65  00 00 00 02  00 ff
  00 00 00 02  00 00 00 07  6c 65 61 73 65 20 37  00 00 00 00
  52 4b 56 53 45 4e 44 31`;

Deno.test("the committed first-format snapshot still loads, each key with the snapshot's index", async () => {
  assert.deepEqual(await readSnapshotFile(FIXTURE_V1), {
    header: HEADER,
    entries: PAIRS.map(([key, value]) => ({
      key,
      value,
      createIndex: 42,
      modIndex: 42,
      version: 1,
    })),
    sessions: [],
    leases: [],
  });
  const bytes = await Deno.readFile(FIXTURE_V1);
  const start = fromHex(START_V1);
  const end = fromHex(END_V1);
  assert.equal(hexBytes(bytes, 0, start.length), hexBytes(start));
  assert.equal(hexBytes(bytes, bytes.length - end.length), hexBytes(end));
});

Deno.test("the committed second-format snapshot still loads, with no leases", async () => {
  assert.deepEqual(await readSnapshotFile(FIXTURE_V2), {
    header: HEADER,
    entries: ENTRIES,
    sessions: SESSIONS,
    leases: [],
  });
  const bytes = await Deno.readFile(FIXTURE_V2);
  const start = fromHex(START_V2);
  assert.equal(hexBytes(bytes, 0, start.length), hexBytes(start));
  const end = fromHex(END_PREFIX_V2);
  assert.equal(hexBytes(bytes, bytes.length - 4 - end.length, bytes.length - 4), hexBytes(end));
});

Deno.test("the committed snapshot file decodes to the values it was written from", async () => {
  assert.deepEqual(await readSnapshotFile(FIXTURE), {
    header: HEADER,
    entries: ENTRIES,
    sessions: SESSIONS,
    leases: LEASES,
  });
  const bytes = await Deno.readFile(FIXTURE);
  const start = fromHex(START);
  assert.equal(hexBytes(bytes, 0, start.length), hexBytes(start));
  const end = fromHex(END_PREFIX);
  assert.equal(hexBytes(bytes, bytes.length - 4 - end.length, bytes.length - 4), hexBytes(end));
});

Deno.test("writeSnapshotFile() produces the committed snapshot file byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-snap-" });
  try {
    const path = await writeSnapshotFile(
      dir,
      encodeSnapshot(HEADER, { entries: ENTRIES, sessions: SESSIONS, leases: LEASES }),
      snapshotName(42, 3),
    );
    assert.equal(path, join(dir, "snap-0000000000000042-0000000000000003.snap"));
    await assertGoldenBytes(FIXTURE, await Deno.readFile(path));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A snapshot taken with learners and member data (membership changes) in its header. */
const FIXTURE_MEMBERS = join(TESTDATA, "v3-members-" + snapshotName(42, 3));
/** The same, written by the format before leases (version 2): it still loads. */
const FIXTURE_MEMBERS_V2 = join(TESTDATA, "v2-members-" + snapshotName(42, 3));
const HEADER_MEMBERS: SnapshotHeader = {
  index: 42,
  term: 3,
  voters: ["node-1", "node-2", "node-3"],
  learners: ["node-4"],
  info: { "node-4": '{"rpc_url":"http://h4:7001","api_url":"http://h4:8001"}' },
  count: 4,
};

Deno.test("a snapshot with learners is written byte for byte and reads back its header", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-snap-" });
  try {
    const path = await writeSnapshotFile(
      dir,
      encodeSnapshot(HEADER_MEMBERS, { entries: ENTRIES, sessions: SESSIONS, leases: LEASES }),
      snapshotName(42, 3),
    );
    await assertGoldenBytes(FIXTURE_MEMBERS, await Deno.readFile(path));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.deepEqual(await readSnapshotFile(FIXTURE_MEMBERS), {
    header: HEADER_MEMBERS,
    entries: ENTRIES,
    sessions: SESSIONS,
    leases: LEASES,
  });
  // Written before leases existed: the same header, no leases.
  const v2 = await readSnapshotFile(FIXTURE_MEMBERS_V2);
  assert.deepEqual(v2.header, HEADER_MEMBERS);
  assert.deepEqual([v2.entries, v2.sessions], [ENTRIES, SESSIONS]);
  assert.deepEqual(v2.leases ?? [], []);
  // The older fixture has neither: it loads with no learners.
  assert.equal((await readSnapshotFile(FIXTURE)).header.learners, undefined);
});

Deno.test("every committed snapshot gives the same entries to a sink as it decodes to", async () => {
  for (const name of await Array.fromAsync(Deno.readDir(TESTDATA))) {
    if (!name.name.endsWith(".snap")) continue;
    const path = join(TESTDATA, name.name);
    const plain = await readSnapshotFile(path);
    const got: SnapshotEntry[] = [];
    const decoder = new TextDecoder("utf-8", { fatal: true });
    const sunk = await readSnapshotFile(path, undefined, {
      addBytes(bytes, keyStart, keyEnd, valueStart, valueEnd, createIndex, modIndex, version) {
        got.push({
          key: decoder.decode(bytes.subarray(keyStart, keyEnd)),
          value: decoder.decode(bytes.subarray(valueStart, valueEnd)),
          createIndex,
          modIndex,
          version,
        });
      },
    });
    assert.ok(plain.entries.length > 0, name.name);
    assert.deepEqual(got, plain.entries, name.name);
    assert.deepEqual(sunk.entries, []);
    assert.deepEqual([sunk.header, sunk.sessions, sunk.leases], [
      plain.header,
      plain.sessions,
      plain.leases,
    ]);
  }
});
