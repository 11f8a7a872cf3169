/**
 * Golden byte fixtures for the storage formats (see the README, "Golden fixtures"): each test
 * (a) decodes the committed file and compares it with the values written out here, and (b)
 * writes the same values with today's code and compares the bytes with the committed file. After
 * a deliberate format change, rewrite the fixtures with
 * `REWRITE=1 scripts/deno test --allow-all src/storage/golden_test.ts`.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assertGoldenBytes, fromHex, hexBytes } from "../../testing/golden_bytes.ts";
import { encodeConfState, type Entry, EntryType } from "../raft/types.ts";
import { loadHardState, saveHardState } from "./hard_state.ts";
import { loadRemovedMark, removedMarkPath, saveRemovedMark } from "./removed_mark.ts";
import { loadLogMetadata, type LogMetadata, saveLogMetadata } from "./log_metadata.ts";
import { segmentName, Wal } from "./wal.ts";
import { decodeRecord } from "./wal_record.ts";

const TESTDATA = fileURLToPath(new URL("./testdata/", import.meta.url));
const SEGMENT = join(TESTDATA, "wal", segmentName(1, 1));

function _normal(term: number, index: number, data: string): Entry {
  return { term, index, type: EntryType.Normal, data: new TextEncoder().encode(data) };
}

function _noop(term: number, index: number): Entry {
  return { term, index, type: EntryType.Noop, data: new Uint8Array(0) };
}

/** The WAL calls the fixture segment was written with, in order. */
const WAL_STEPS: ({ append: Entry[] } | { reset: { index: number; term: number } })[] = [
  { append: [_normal(1, 1, "alpha"), _normal(1, 2, "beta"), _normal(1, 3, "")] },
  { append: [_noop(2, 4)] },
  // A follower overwriting a conflicting suffix: on replay, appending at 3 cuts 3 and 4 first.
  { append: [_normal(3, 3, "gamma"), _normal(3, 4, "délta ✓")] },
  // A snapshot installed from the leader: on replay the log is emptied and continues after 10.
  { reset: { index: 10, term: 4 } },
  { append: [_normal(5, 11, "after the reset"), _noop(5, 12)] },
];

/** The records the segment holds, in file order. */
const WAL_RECORDS = [
  { kind: "entry", entry: _normal(1, 1, "alpha") },
  { kind: "entry", entry: _normal(1, 2, "beta") },
  { kind: "entry", entry: _normal(1, 3, "") },
  { kind: "entry", entry: _noop(2, 4) },
  { kind: "entry", entry: _normal(3, 3, "gamma") },
  { kind: "entry", entry: _normal(3, 4, "délta ✓") },
  { kind: "reset", index: 10, term: 4 },
  { kind: "entry", entry: _normal(5, 11, "after the reset") },
  { kind: "entry", entry: _noop(5, 12) },
];

/**
 * The first record, byte by byte: payload length 22 (u32 LE), type 1 (entry), 3 reserved zero
 * bytes, the payload's CRC-32C (LE), the header's CRC-32C (LE), then the payload: term 1 (u64 LE), index 1
 * (u64 LE), entry type 0 (normal) and the data "alpha".
 */
const FIRST_RECORD = `
  16 00 00 00  01  00 00 00  63 94 c9 07  96 87 03 f9
  01 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  00  61 6c 70 68 61`;

Deno.test("the committed WAL segment decodes to the records it was written from", async () => {
  const bytes = await Deno.readFile(SEGMENT);
  const records: unknown[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const result = decodeRecord(bytes, offset);
    assert.ok(result.kind === "entry" || result.kind === "reset", JSON.stringify(result));
    const { end, ...record } = result;
    records.push(record);
    offset = end;
  }
  assert.deepEqual(records, WAL_RECORDS);
  const first = fromHex(FIRST_RECORD);
  assert.equal(hexBytes(bytes, 0, first.length), hexBytes(first));

  // Replay on open applies the truncation and the reset. Open a copy: recovery may write.
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-wal-" });
  try {
    await Deno.copyFile(SEGMENT, join(dir, segmentName(1, 1)));
    const wal = await Wal.open(dir);
    try {
      assert.deepEqual(wal.entries, [_normal(5, 11, "after the reset"), _noop(5, 12)]);
      assert.equal(wal.lastIndex, 12);
      assert.equal(wal.tornTail, null);
    } finally {
      await wal.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the WAL writer produces the committed segment byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-wal-" });
  try {
    const wal = await Wal.open(join(dir, "wal"));
    try {
      for (const step of WAL_STEPS) {
        if ("append" in step) await wal.append(step.append);
        else await wal.reset(step.reset.index, step.reset.term);
      }
    } finally {
      await wal.close();
    }
    const names = [...Deno.readDirSync(join(dir, "wal"))].map((e) => e.name);
    assert.deepEqual(names, [segmentName(1, 1)]);
    await assertGoldenBytes(SEGMENT, await Deno.readFile(join(dir, "wal", segmentName(1, 1))));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The hard state as this version writes it: with the id of its node and of its cluster. */
const HARD_STATE = {
  nodeId: "node-1",
  clusterId: "3f5d0c2a9b71e864",
  term: 7,
  vote: "node-2",
  commit: 42,
};
const HARD_STATE_TEXT =
  '{"node_id":"node-1","cluster_id":"3f5d0c2a9b71e864","term":7,"vote":"node-2","commit":42,"crc32c":"2d41c945"}\n';
/** As a node that started its cluster writes it: with the voters it started with. */
const HARD_STATE_VOTERS = { ...HARD_STATE, initialVoters: ["node-1", "node-2", "node-3"] };
const HARD_STATE_VOTERS_TEXT =
  '{"node_id":"node-1","cluster_id":"3f5d0c2a9b71e864","initial_voters":"node-1,node-2,node-3","term":7,"vote":"node-2","commit":42,"crc32c":"4268e1f1"}\n';
/** As written before the cluster's id was recorded (and still without one): it still loads. */
const HARD_STATE_NODE = { nodeId: "node-1", term: 7, vote: "node-2", commit: 42 };
const HARD_STATE_NODE_TEXT =
  '{"node_id":"node-1","term":7,"vote":"node-2","commit":42,"crc32c":"8f908e0a"}\n';
/** As written before the node's id was recorded, and still written without one: it still loads. */
const HARD_STATE_V1 = { term: 7, vote: "node-2", commit: 42 };
const HARD_STATE_V1_TEXT = '{"term":7,"vote":"node-2","commit":42,"crc32c":"f98f3031"}\n';

for (
  const [name, values, text] of [
    ["raft-state-voters.json", HARD_STATE_VOTERS, HARD_STATE_VOTERS_TEXT],
    ["raft-state-cluster.json", HARD_STATE, HARD_STATE_TEXT],
    ["raft-state-node.json", HARD_STATE_NODE, HARD_STATE_NODE_TEXT],
    ["raft-state.json", HARD_STATE_V1, HARD_STATE_V1_TEXT],
  ] as const
) {
  Deno.test(`the committed hard state file ${name} decodes to the values it was written from`, async () => {
    const path = join(TESTDATA, name);
    assert.equal(await Deno.readTextFile(path), text);
    assert.deepEqual(await loadHardState(path), values);
  });

  Deno.test(`saveHardState() produces the committed hard state file ${name} byte for byte`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-hs-" });
    try {
      await saveHardState(join(dir, "raft-state.json"), values);
      const bytes = await Deno.readFile(join(dir, "raft-state.json"));
      await assertGoldenBytes(join(TESTDATA, name), bytes);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

const LOG_METADATA: LogMetadata = { firstIndex: 96, snapshotIndex: 100, snapshotTerm: 4 };
const LOG_METADATA_TEXT =
  '{"first_index":96,"snapshot_index":100,"snapshot_term":4,"crc32c":"d9c52bbc"}\n';

Deno.test("the committed log metadata file decodes to the values it was written from", async () => {
  const path = join(TESTDATA, "log-metadata.json");
  assert.equal(await Deno.readTextFile(path), LOG_METADATA_TEXT);
  assert.deepEqual(await loadLogMetadata(path), LOG_METADATA);
});

Deno.test("saveLogMetadata() produces the committed log metadata file byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-meta-" });
  try {
    await saveLogMetadata(join(dir, "log-metadata.json"), LOG_METADATA);
    const bytes = await Deno.readFile(join(dir, "log-metadata.json"));
    await assertGoldenBytes(join(TESTDATA, "log-metadata.json"), bytes);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A segment with a configuration entry (membership changes): its own fixture, so the segment
 * above keeps the bytes written before that entry type existed.
 */
const CONF_SEGMENT = join(TESTDATA, "wal-conf", segmentName(1, 1));
const CONF_ENTRIES: Entry[] = [
  _noop(1, 1),
  {
    term: 1,
    index: 2,
    type: EntryType.ConfChange,
    data: encodeConfState({
      voters: ["n1", "n2", "n3"],
      learners: ["n4"],
      info: { n4: '{"rpc_url":"http://h4:7001","api_url":"http://h4:8001"}' },
    }),
  },
  _normal(1, 3, "after the change"),
];

Deno.test("the committed segment with a configuration entry replays to its entries, byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-wal-" });
  try {
    const wal = await Wal.open(join(dir, "wal"));
    try {
      await wal.append(CONF_ENTRIES);
    } finally {
      await wal.close();
    }
    await assertGoldenBytes(CONF_SEGMENT, await Deno.readFile(join(dir, "wal", segmentName(1, 1))));
    const copy = join(dir, "copy");
    await Deno.mkdir(copy);
    await Deno.copyFile(CONF_SEGMENT, join(copy, segmentName(1, 1)));
    const replayed = await Wal.open(copy);
    try {
      assert.deepEqual(replayed.entries, CONF_ENTRIES);
    } finally {
      await replayed.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A segment with commit records (the commit index recorded after a batch, and alone): its own
 * fixture, so the segments above keep the bytes written before that record type existed.
 */
const COMMIT_SEGMENT = join(TESTDATA, "wal-commit", segmentName(1, 1));
/**
 * The commit record, byte by byte: payload length 8, type 3 (commit), 3 reserved zero bytes, the
 * payload's CRC-32C, the header's CRC-32C, then the commit index 2 (u64 LE).
 */
const COMMIT_RECORD_AT_2 = `
  08 00 00 00  03  00 00 00  c4 48 50 1e  bf b3 a2 7f
  02 00 00 00 00 00 00 00`;

Deno.test("the committed segment with commit records replays to its entries and commit index, byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-wal-" });
  try {
    const wal = await Wal.open(join(dir, "wal"));
    try {
      await wal.append([_noop(1, 1), _normal(1, 2, "alpha")], 2);
      await wal.append([_normal(1, 3, "beta")]);
      await wal.writeCommit(3);
    } finally {
      await wal.close();
    }
    const bytes = await Deno.readFile(join(dir, "wal", segmentName(1, 1)));
    await assertGoldenBytes(COMMIT_SEGMENT, bytes);
    const golden = await Deno.readFile(COMMIT_SEGMENT);
    const kinds: string[] = [];
    for (let offset = 0; offset < golden.length;) {
      const result = decodeRecord(golden, offset);
      assert.ok(result.kind === "entry" || result.kind === "commit", JSON.stringify(result));
      kinds.push(
        result.kind === "commit" ? `commit ${result.index}` : `entry ${result.entry.index}`,
      );
      if (result.kind === "commit" && result.index === 2) {
        const header = fromHex(COMMIT_RECORD_AT_2);
        assert.equal(hexBytes(golden, offset, offset + header.length), hexBytes(header));
      }
      offset = result.end;
    }
    assert.deepEqual(kinds, ["entry 1", "entry 2", "commit 2", "entry 3", "commit 3"]);
    const copy = join(dir, "copy");
    await Deno.mkdir(copy);
    await Deno.copyFile(COMMIT_SEGMENT, join(copy, segmentName(1, 1)));
    const replayed = await Wal.open(copy);
    try {
      assert.equal(replayed.committed, 3);
      assert.equal(replayed.lastIndex, 3);
    } finally {
      await replayed.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const REMOVED_AT = 57;
const REMOVED_MARK_TEXT = '{"removed_at":57,"crc32c":"d1a6ad66"}\n';

Deno.test("the committed removed-mark file decodes to the index it was written from", async () => {
  const path = join(TESTDATA, "raft-state.json.removed");
  assert.equal(await Deno.readTextFile(path), REMOVED_MARK_TEXT);
  assert.equal(await loadRemovedMark(path), REMOVED_AT);
});

Deno.test("saveRemovedMark() produces the committed removed-mark file byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-removed-" });
  try {
    const path = removedMarkPath(join(dir, "raft-state.json"));
    await saveRemovedMark(path, REMOVED_AT);
    await assertGoldenBytes(join(TESTDATA, "raft-state.json.removed"), await Deno.readFile(path));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
