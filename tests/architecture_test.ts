/**
 * Keeps the import graph pointing one way: main -> api/node/transport/storage/kv/cli -> raft.
 * Each folder of src/ may import only the folders listed for it here.
 */
import assert from "node:assert/strict";
import { join, relative } from "node:path";

const ALLOWED: Record<string, string[]> = {
  raft: [],
  kv: [],
  check: [],
  cli: [],
  storage: ["raft"],
  transport: ["raft"],
  snapshot: ["raft", "kv", "storage"],
  node: ["raft", "kv", "storage", "transport", "snapshot"],
  api: ["node", "raft"],
};

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* walk(p);
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) yield p;
  }
}

Deno.test("src/ folders import only the layers below them", async () => {
  const root = join(Deno.cwd(), "src");
  const wrong: string[] = [];
  let files = 0;
  for await (const file of walk(root)) {
    files++;
    const folder = relative(root, file).split("/")[0]!;
    const allowed = ALLOWED[folder];
    assert.ok(allowed, `src/${folder} has no entry in the architecture table`);
    const text = await Deno.readTextFile(file);
    for (const m of text.matchAll(/(?:import|export)[^;]*?from\s+"(\.[^"]+)"/g)) {
      const target = relative(root, join(file, "..", m[1]!)).split("/");
      if (target[0] === ".." || target.length < 2) {
        wrong.push(`${relative(Deno.cwd(), file)} imports ${m[1]} (outside src/)`);
        continue;
      }
      const dep = target[0]!;
      if (dep !== folder && !allowed.includes(dep)) {
        wrong.push(`${relative(Deno.cwd(), file)} imports src/${dep} (allowed: ${allowed})`);
      }
    }
  }
  assert.ok(files > 10, `only ${files} files found under src/`);
  assert.deepEqual(wrong, [], "backwards imports");
});
