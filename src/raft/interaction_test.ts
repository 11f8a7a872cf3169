/**
 * Runs every golden interaction file in `testdata/` (see `testing/raft_interaction.ts` for the
 * command language) and compares what the core does with what the file says. After a deliberate
 * behaviour change, rewrite the files with
 * `REWRITE=1 scripts/deno test --allow-all src/raft/interaction_test.ts` and review the diff.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkDataDrivenFile } from "../../testing/datadriven.ts";
import { RaftInteraction } from "../../testing/raft_interaction.ts";

const dir = join(fileURLToPath(new URL(".", import.meta.url)), "testdata");
const files = [...Deno.readDirSync(dir)]
  .filter((e) => e.isFile && e.name.endsWith(".txt"))
  .map((e) => e.name)
  .sort();

Deno.test("the golden interaction files exist", () => {
  if (files.length === 0) throw new Error(`no *.txt files in ${dir}`);
});

for (const name of files) {
  Deno.test(`the core behaves as testdata/${name} tells`, async () => {
    const env = new RaftInteraction();
    await checkDataDrivenFile(join(dir, name), env.handle);
  });
}
