import assert from "node:assert/strict";
import { join } from "node:path";
import { EntryType } from "../raft/types.ts";
import { saveHardState } from "../storage/hard_state.ts";
import { Wal } from "../storage/wal.ts";
import { nodeDataIn } from "./node_data.ts";

/** A data directory as a restore that failed part-way leaves it: term 0, empty folders. */
async function leftByFailedRestore(): Promise<string> {
  const dir = await Deno.makeTempDir();
  await saveHardState(join(dir, "raft-state.json"), { nodeId: "n1", term: 0, vote: "", commit: 0 });
  await Deno.mkdir(join(dir, "wal"));
  await Deno.mkdir(join(dir, "snapshots"));
  return dir;
}

Deno.test("a directory missing, empty, or left by a failed restore holds no node data", async () => {
  const dir = await leftByFailedRestore();
  try {
    assert.deepEqual(await nodeDataIn(join(dir, "missing")), []);
    assert.deepEqual(await nodeDataIn(dir), []);
    // A WAL segment cut short before its first whole record holds nothing, as for the node.
    await Deno.writeFile(
      join(dir, "wal", "0000000000000001-0000000000000001.wal"),
      new Uint8Array(5),
    );
    assert.deepEqual(await nodeDataIn(dir), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a term, a WAL entry or a snapshot file is node data, as the node decides", async () => {
  const dir = await leftByFailedRestore();
  try {
    await saveHardState(join(dir, "raft-state.json"), { term: 2, vote: "n1", commit: 0 });
    assert.deepEqual(await nodeDataIn(dir), ["raft-state.json"]);
    await saveHardState(join(dir, "raft-state.json"), { term: 0, vote: "", commit: 0 });
    const wal = await Wal.open(join(dir, "wal"));
    await wal.append([{ term: 1, index: 1, type: EntryType.Normal, data: new Uint8Array([1]) }]);
    await wal.close();
    assert.deepEqual(await nodeDataIn(dir), ["wal/"]);
    await Deno.remove(join(dir, "wal"), { recursive: true });
    await Deno.writeFile(
      join(dir, "snapshots", "snap-0000000000000005-0000000000000001.snap"),
      new Uint8Array(),
    );
    assert.deepEqual(await nodeDataIn(dir), ["snapshots/"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
