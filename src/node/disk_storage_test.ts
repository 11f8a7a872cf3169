import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeSnapshot, snapshotName, writeSnapshotFile } from "../snapshot/snapshot_file.ts";
import { EntryType } from "../raft/types.ts";
import { openDiskStorage } from "./disk_storage.ts";

function paths(dir: string) {
  return {
    walDir: join(dir, "wal"),
    raftStatePath: join(dir, "raft-state.json"),
    logMetadataPath: join(dir, "log-metadata.json"),
    snapshotDir: join(dir, "snapshots"),
  };
}

Deno.test("installing a received snapshot that found the disk full part-way can be retried", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-disk-" });
  try {
    const storage = await openDiskStorage(paths(dir));
    const data = new TextEncoder().encode("x");
    await storage.append(
      [1, 2, 3].map((index) => ({ term: 1, index, type: EntryType.Normal, data })),
    );
    const meta = { index: 10, term: 2, voters: ["a"] };
    const received = await writeSnapshotFile(
      storage.snapshotDir,
      encodeSnapshot({ ...meta, count: 1 }, [["k", "v"]]),
      `${snapshotName(10, 2)}.recv`,
    );
    // The reset record and the rename go through; the log metadata's temp file finds the disk full.
    const proto = Deno.FsFile.prototype;
    const { write } = proto;
    let writes = 0;
    proto.write = function (this: Deno.FsFile, p: Uint8Array) {
      if (++writes === 2) {
        return Promise.reject(
          Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" }),
        );
      }
      return write.call(this, p);
    };
    try {
      await assert.rejects(storage.installReceived(meta, received), { code: "ENOSPC" });
    } finally {
      proto.write = write;
    }
    const names = [];
    for await (const e of Deno.readDir(storage.snapshotDir)) names.push(e.name);
    assert.deepEqual(names, [snapshotName(10, 2)], "renamed, and no temp file left behind");

    const path = await storage.installReceived(meta, received);
    assert.equal(path, join(storage.snapshotDir, snapshotName(10, 2)));
    await storage.close();

    const again = await openDiskStorage(paths(dir));
    assert.deepEqual(again.snapshot, meta);
    assert.deepEqual([...again.snapshotData], [["k", "v"]]);
    assert.deepEqual(again.entries, []);
    assert.equal(again.wal.lastIndex, 10);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
