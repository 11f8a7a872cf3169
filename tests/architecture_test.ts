/**
 * Keeps the import graph pointing one way: main -> api/node/transport/storage/kv/cli -> raft.
 * Each folder of src/ may import only the folders listed for it here. src/util holds small pure
 * helpers shared across folders: it imports nothing, and every folder but the Raft core (which
 * imports nothing at all) may use it. Test support in testing/
 * may import src/ (and itself), never tests/ or scripts/; src/ ships without testing/ (only its
 * `_test.ts` files may import it).
 */
import assert from "node:assert/strict";
import { join, relative } from "node:path";

const ALLOWED: Record<string, string[]> = {
  util: [],
  raft: [],
  kv: ["util"],
  cli: ["util"],
  storage: ["raft", "util"],
  transport: ["raft", "util"],
  node: ["raft", "kv", "storage", "transport", "util"],
  api: ["node", "raft", "util"],
};

async function* walk(dir: string, tests = false): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* walk(p, tests);
    else if (e.name.endsWith(".ts") && (tests || !e.name.endsWith("_test.ts"))) yield p;
  }
}

/** The relative imports of `file`, as written. */
async function relativeImports(file: string): Promise<string[]> {
  const text = await Deno.readTextFile(file);
  return [...text.matchAll(/(?:import|export)[^;]*?from\s+"(\.[^"]+)"/g)].map((m) => m[1]!);
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
    for (const spec of await relativeImports(file)) {
      const target = relative(root, join(file, "..", spec)).split("/");
      if (target[0] === ".." || target.length < 2) {
        wrong.push(`${relative(Deno.cwd(), file)} imports ${spec} (outside src/)`);
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

Deno.test("testing/ imports only src/ and itself, never tests/ or scripts/", async () => {
  const root = Deno.cwd();
  const wrong: string[] = [];
  let files = 0;
  for await (const file of walk(join(root, "testing"), true)) {
    files++;
    for (const spec of await relativeImports(file)) {
      const top = relative(root, join(file, "..", spec)).split("/")[0];
      if (top !== "src" && top !== "testing") {
        wrong.push(`${relative(root, file)} imports ${spec} (outside src/ and testing/)`);
      }
    }
  }
  assert.ok(files > 5, `only ${files} files found under testing/`);
  assert.deepEqual(wrong, [], "test support importing tests/ or scripts/");
});
