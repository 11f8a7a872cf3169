import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeCheckedJson } from "./checked_json.ts";
import { CorruptFileError } from "./errors.ts";
import { loadHardState, saveHardState } from "./hard_state.ts";

async function _withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-hard-state-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("saveHardState() and loadHardState() round-trip the hard state", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "raft-state.json");
    await saveHardState(path, { term: 3, vote: "node-2", commit: 17 });
    assert.deepEqual(await loadHardState(path), { term: 3, vote: "node-2", commit: 17 });
    await saveHardState(path, { term: 4, vote: "", commit: 18 });
    assert.deepEqual(await loadHardState(path), { term: 4, vote: "", commit: 18 });
    const names = [];
    for await (const item of Deno.readDir(dir)) names.push(item.name);
    assert.deepEqual(names, ["raft-state.json"]);
  });
});

Deno.test("the id of the node is saved first and loaded back; a file without one loads without it", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "raft-state.json");
    await saveHardState(path, { nodeId: "node-1", term: 3, vote: "node-2", commit: 17 });
    assert.match(await Deno.readTextFile(path), /^\{"node_id":"node-1","term":3,/);
    assert.deepEqual(await loadHardState(path), {
      nodeId: "node-1",
      term: 3,
      vote: "node-2",
      commit: 17,
    });
    await saveHardState(path, { term: 4, vote: "", commit: 18 });
    assert.deepEqual(await loadHardState(path), { term: 4, vote: "", commit: 18 });
  });
});

Deno.test("loadHardState() returns the initial state when the file is missing", async () => {
  await _withDir(async (dir) => {
    assert.deepEqual(await loadHardState(join(dir, "raft-state.json")), {
      term: 0,
      vote: "",
      commit: 0,
    });
  });
});

Deno.test("loadHardState() throws CorruptFileError naming a damaged file", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "raft-state.json");
    await saveHardState(path, { term: 3, vote: "node-2", commit: 17 });
    const text = await Deno.readTextFile(path);
    for (const damaged of [text.replace('"term":3', '"term":8'), text.slice(0, 10), ""]) {
      await Deno.writeTextFile(path, damaged);
      await assert.rejects(loadHardState(path), (error: unknown) => {
        assert.ok(error instanceof CorruptFileError);
        assert.ok(error.message.startsWith(`"${path}" is corrupt: `), error.message);
        return true;
      });
    }
  });
});

Deno.test("saveHardState() rejects a term that is not a non-negative integer", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "raft-state.json");
    await assert.rejects(saveHardState(path, { term: -1, vote: "", commit: 0 }), RangeError);
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
  });
});

Deno.test("the voters a cluster started with are saved and loaded back; an empty id in them is damage", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-hs-" });
  try {
    const path = join(dir, "raft-state.json");
    const saved = {
      nodeId: "a",
      clusterId: "c1",
      initialVoters: ["a", "b", "c"],
      term: 1,
      vote: "",
      commit: 0,
    };
    await saveHardState(path, saved);
    assert.deepEqual(await loadHardState(path), saved);
    // None given: none written (a joined node's file, or an earlier version's).
    await saveHardState(path, { ...saved, initialVoters: [] });
    assert.ok(!(await Deno.readTextFile(path)).includes("initial_voters"));
    await assert.rejects(saveHardState(path, { ...saved, initialVoters: ["a,b"] }), TypeError);
    // A file whose checksum is right but whose list holds an empty id.
    const schema = {
      node_id: "string?",
      cluster_id: "string?",
      initial_voters: "string?",
      term: "integer",
      vote: "string",
      commit: "integer",
    } as const;
    const fields = { node_id: "a", initial_voters: "a,,b", term: 1, vote: "", commit: 0 };
    await Deno.writeFile(path, encodeCheckedJson(schema, fields));
    await assert.rejects(
      loadHardState(path),
      (e) => e instanceof CorruptFileError && /"initial_voters" holds an empty id/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
