/**
 * The golden byte fixture for the snapshot format (see src/storage/README.md, "Golden
 * fixtures"): the committed file must still decode to the values written out here, and writing
 * those values today must give the committed bytes exactly. After a deliberate format change,
 * rewrite it with `REWRITE=1 scripts/deno test --allow-all src/storage/snapshot_golden_test.ts`.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assertGoldenBytes, fromHex, hexBytes } from "../../testing/golden_bytes.ts";
import {
  encodeSnapshot,
  readSnapshotFile,
  type SnapshotHeader,
  snapshotName,
  writeSnapshotFile,
} from "./snapshot_file.ts";

const FIXTURE = join(
  fileURLToPath(new URL("./testdata/", import.meta.url)),
  snapshotName(42, 3),
);

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

/**
 * The file's first bytes: the magic "RKVSNAP1", then the header's length as a u32 big-endian
 * (69), then the header JSON.
 */
const START = `
  52 4b 56 53 4e 41 50 31  00 00 00 45
  ${
  hexBytes(new TextEncoder().encode('{"index":42,"term":3,"voters":["node-1","node-2","node-3"]'))
}`;

/**
 * The file's last bytes: the last pair (key length 11, "empty value", value length 0), the
 * trailer "RKVSEND1" and the CRC-32C (u32 big-endian) of every byte before it, trailer included.
 */
const END = `
  00 00 00 0b  65 6d 70 74 79 20 76 61 6c 75 65  00 00 00 00
  52 4b 56 53 45 4e 44 31  a4 c4 fc d0`;

Deno.test("the committed snapshot file decodes to the values it was written from", async () => {
  assert.deepEqual(await readSnapshotFile(FIXTURE), { header: HEADER, pairs: PAIRS });
  const bytes = await Deno.readFile(FIXTURE);
  const start = fromHex(START);
  const end = fromHex(END);
  assert.equal(hexBytes(bytes, 0, start.length), hexBytes(start));
  assert.equal(hexBytes(bytes, bytes.length - end.length), hexBytes(end));
});

Deno.test("writeSnapshotFile() produces the committed snapshot file byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-golden-snap-" });
  try {
    const path = await writeSnapshotFile(dir, encodeSnapshot(HEADER, PAIRS), snapshotName(42, 3));
    assert.equal(path, join(dir, "snap-0000000000000042-0000000000000003.snap"));
    await assertGoldenBytes(FIXTURE, await Deno.readFile(path));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
