import assert from "node:assert/strict";
import { join } from "node:path";
import { CorruptFileError } from "./errors.ts";
import { INITIAL_LOG_METADATA, loadLogMetadata, saveLogMetadata } from "./log_metadata.ts";
import { encodeCheckedJson } from "./checked_json.ts";

async function _withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-log-metadata-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("saveLogMetadata() writes the documented JSON and loadLogMetadata() reads it back", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "log-metadata.json");
    const metadata = { firstIndex: 101, snapshotIndex: 100, snapshotTerm: 4 };
    await saveLogMetadata(path, metadata);
    assert.deepEqual(await loadLogMetadata(path), metadata);
    const json = JSON.parse(await Deno.readTextFile(path));
    assert.deepEqual(Object.keys(json), [
      "first_index",
      "snapshot_index",
      "snapshot_term",
      "crc32c",
    ]);
    assert.equal(json.first_index, 101);
    const names = [];
    for await (const item of Deno.readDir(dir)) names.push(item.name);
    assert.deepEqual(names, ["log-metadata.json"]);
  });
});

Deno.test("loadLogMetadata() returns the metadata of an uncompacted log when the file is missing", async () => {
  await _withDir(async (dir) => {
    const loaded = await loadLogMetadata(join(dir, "log-metadata.json"));
    assert.deepEqual(loaded, { firstIndex: 1, snapshotIndex: 0, snapshotTerm: 0 });
    loaded.firstIndex = 5;
    assert.equal(INITIAL_LOG_METADATA.firstIndex, 1);
  });
});

Deno.test("saveLogMetadata() rejects a first index beyond the snapshot", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "log-metadata.json");
    await assert.rejects(
      saveLogMetadata(path, { firstIndex: 12, snapshotIndex: 10, snapshotTerm: 2 }),
      {
        name: "RangeError",
        message: "Log metadata firstIndex must be between 1 and snapshotIndex + 1 (11), found 12",
      },
    );
    await assert.rejects(
      saveLogMetadata(path, { firstIndex: 0, snapshotIndex: 0, snapshotTerm: 0 }),
      RangeError,
    );
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
  });
});

Deno.test("loadLogMetadata() throws CorruptFileError naming a damaged or inconsistent file", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "log-metadata.json");
    await Deno.writeTextFile(path, '{"first_index":1}');
    await assert.rejects(loadLogMetadata(path), CorruptFileError);
    const schema = {
      first_index: "integer",
      snapshot_index: "integer",
      snapshot_term: "integer",
    } as const;
    await Deno.writeFile(
      path,
      encodeCheckedJson(schema, { first_index: 9, snapshot_index: 3, snapshot_term: 1 }),
    );
    await assert.rejects(loadLogMetadata(path), {
      name: "CorruptFileError",
      message:
        `"${path}" is corrupt: "first_index" must be between 1 and "snapshot_index" + 1 (4), found 9`,
    });
  });
});
