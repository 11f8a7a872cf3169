import assert from "node:assert/strict";
import { join } from "node:path";
import {
  checkDataDrivenFile,
  type Command,
  DataDrivenSyntaxError,
  diffLines,
  runDataDriven,
} from "./datadriven.ts";

/** Echoes the command's words in upper case, or nothing for `noop`. */
function _echo(c: Command): string {
  return c.name === "noop" ? "" : [c.name, ...c.args].join(" ").toUpperCase();
}

const FILE = `# A comment stays.
echo a b
----
ECHO A B

# Outputs may span lines; empty output reads "ok".
noop x
----
ok
`;

Deno.test("runDataDriven() reproduces a file whose outputs are right, comments and all", () => {
  assert.equal(runDataDriven("f.txt", FILE, _echo).actual, FILE);
});

Deno.test("runDataDriven() replaces wrong outputs and passes the command's words", () => {
  const seen: Command[] = [];
  const text = "propose 1 set  x=1\n----\nold\nlines\n\nnoop\n----\n";
  const { actual } = runDataDriven("f.txt", text, (c) => {
    seen.push(c);
    return _echo(c);
  });
  assert.equal(actual, "propose 1 set  x=1\n----\nPROPOSE 1 SET X=1\n\nnoop\n----\nok\n");
  assert.deepEqual(seen[0], {
    path: "f.txt",
    line: 1,
    name: "propose",
    args: ["1", "set", "x=1"],
    rest: "1 set  x=1",
  });
  assert.equal(seen[1]!.line, 6);
});

Deno.test("a command without its separator is a syntax error naming the line", () => {
  assert.throws(
    () => runDataDriven("f.txt", "# c\necho a\nECHO A\n", _echo),
    (e: unknown) => e instanceof DataDrivenSyntaxError && e.message.startsWith("f.txt:3: "),
  );
});

Deno.test("diffLines() shows changed lines with context and line numbers", () => {
  assert.equal(diffLines("a\nb\nc", "a\nb\nc"), "");
  const expected = ["1", "2", "3", "4", "5", "6", "7", "8", "9"].join("\n");
  const actual = ["1", "2", "3", "4", "five", "6", "7", "8", "9"].join("\n");
  assert.equal(
    diffLines(expected, actual, 1),
    ["@@ expected line 4, actual line 4 @@", "  4", "- 5", "+ five", "  6"].join("\n"),
  );
});

Deno.test("checkDataDrivenFile() fails with a diff, and rewrites the file when asked", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-datadriven-" });
  try {
    const path = join(dir, "story.txt");
    await Deno.writeTextFile(path, FILE.replace("ECHO A B", "ECHO A C"));
    await assert.rejects(checkDataDrivenFile(path, _echo, { rewrite: false }), (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.match(e.message, /REWRITE=1/);
      assert.match(e.message, /^- ECHO A C$/m);
      assert.match(e.message, /^\+ ECHO A B$/m);
      return true;
    });
    await checkDataDrivenFile(path, _echo, { rewrite: true });
    assert.equal(await Deno.readTextFile(path), FILE);
    await checkDataDrivenFile(path, _echo, { rewrite: false });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
