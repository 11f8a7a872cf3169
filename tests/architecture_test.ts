/**
 * Keeps the layout honest.
 *
 * - The import graph of src/ points one way: main -> api/node/transport/storage/kv/cli -> raft.
 *   Each folder of src/ may import only the folders listed for it here. src/util holds small pure
 *   helpers shared across folders: it imports nothing, and every folder but the Raft core (which
 *   imports nothing at all) may use it.
 * - Test support lives in testing/ and imports only src/ and testing/.
 * - scripts/ and tests/ both import testing/ (and src/), never each other.
 * - src/ holds only what ships in the binary: every file under it (its `_test.ts` files aside) is
 *   reached from main.ts, and only the `_test.ts` files import testing/.
 */
import assert from "node:assert/strict";
import { dirname, join, relative } from "node:path";

const ALLOWED: Record<string, string[]> = {
  util: [],
  raft: [],
  check: [],
  kv: ["util"],
  // The command-line client checks histories (verify) and backups (snapshot) with the real code.
  cli: ["util", "check", "storage"],
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

/** The relative imports and re-exports of `file`, as written (not those in doc examples). */
async function relativeImports(file: string): Promise<string[]> {
  const text = await Deno.readTextFile(file);
  return [...text.matchAll(/^(?:import|export)\b[^;]*?from\s+"(\.[^"]+)"/gm)].map((m) => m[1]!);
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

/** The files under `dir` (a folder of the project root) that import a file under `forbidden`. */
async function importsOf(
  dir: string,
  forbidden: string,
): Promise<{ files: number; wrong: string[] }> {
  const root = Deno.cwd();
  const wrong: string[] = [];
  let files = 0;
  for await (const file of walk(join(root, dir), true)) {
    files++;
    for (const spec of await relativeImports(file)) {
      if (relative(root, join(file, "..", spec)).split("/")[0] === forbidden) {
        wrong.push(`${relative(root, file)} imports ${spec}`);
      }
    }
  }
  return { files, wrong };
}

Deno.test("no file in scripts/ imports tests/", async () => {
  const { files, wrong } = await importsOf("scripts", "tests");
  assert.ok(files > 5, `only ${files} files found under scripts/`);
  assert.deepEqual(wrong, [], "scripts/ importing tests/ (shared code belongs in testing/)");
});

Deno.test("no file in tests/ imports scripts/", async () => {
  const { files, wrong } = await importsOf("tests", "scripts");
  assert.ok(files > 5, `only ${files} files found under tests/`);
  assert.deepEqual(wrong, [], "tests/ importing scripts/ (shared code belongs in testing/)");
});

Deno.test("src/ holds only what main.ts reaches through its imports", async () => {
  const root = Deno.cwd();
  const reached = new Set<string>();
  const pending = [join(root, "main.ts")];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (reached.has(file)) continue;
    reached.add(file);
    for (const spec of await relativeImports(file)) {
      if (spec.endsWith(".ts")) pending.push(join(dirname(file), spec));
    }
  }
  const unreached: string[] = [];
  let files = 0;
  for await (const file of walk(join(root, "src"))) {
    files++;
    if (!reached.has(file)) unreached.push(relative(root, file));
  }
  assert.ok(files > 10, `only ${files} files found under src/`);
  assert.ok(reached.size > 10, `main.ts reaches only ${reached.size} files`);
  assert.deepEqual(
    unreached.sort(),
    [],
    "files under src/ that main.ts never imports (test support belongs in testing/)",
  );
});
