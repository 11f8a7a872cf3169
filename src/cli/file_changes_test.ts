import assert from "node:assert/strict";
import { FileChanges } from "./file_changes.ts";

/** Files in memory; a missing one throws as a real read would. */
function disk(files: Record<string, string>) {
  const map = new Map(Object.entries(files));
  const read = (path: string) => {
    const text = map.get(path);
    if (text === undefined) throw new Deno.errors.NotFound(`no such file: ${path}`);
    return text;
  };
  return { map, read };
}

Deno.test("FileChanges reports a group once its files changed and held still for one more look", () => {
  const { map, read } = disk({ "t.json": "t1", "p.crt": "c1", "p.key": "k1", "ca.pem": "ca" });
  const changes = new FileChanges({
    tokens: ["t.json"],
    peer: ["p.crt", "p.key", "ca.pem"],
    api: [],
  }, read);
  assert.deepEqual(changes.groups, ["tokens", "peer"], "a group without files is left out");
  assert.deepEqual(changes.poll(), [], "nothing changed");

  // A renewal caught half done (the certificate written, its key not yet) is not reported.
  map.set("p.crt", "c2");
  assert.deepEqual(changes.poll(), []);
  map.set("p.key", "k2");
  assert.deepEqual(changes.poll(), [], "changed again since the last look");
  assert.deepEqual(changes.poll(), ["peer"], "held still for one more look");
  assert.deepEqual(changes.poll(), [], "reported once");

  // Changed back to what was settled before the last report: a change again.
  map.set("t.json", "t2");
  map.set("p.crt", "c1");
  map.set("p.key", "k1");
  assert.deepEqual(changes.poll(), []);
  assert.deepEqual(changes.poll(), ["tokens", "peer"], "in the order given");

  // A file that goes away is a change (the reload then says why it cannot read it); so is its
  // return.
  map.delete("t.json");
  changes.poll();
  assert.deepEqual(changes.poll(), ["tokens"]);
  map.set("t.json", "t2");
  changes.poll();
  assert.deepEqual(changes.poll(), ["tokens"]);
});

Deno.test("FileChanges.settle takes the contents now as loaded (a signal reloaded them)", () => {
  const { map, read } = disk({ "t.json": "t1", "a.crt": "c1" });
  const changes = new FileChanges({ tokens: ["t.json"], api: ["a.crt"] }, read);
  map.set("t.json", "t2");
  map.set("a.crt", "c2");
  changes.poll();
  changes.settle(["tokens"]);
  assert.deepEqual(changes.poll(), ["api"], "the settled group is not reported");
  map.set("t.json", "t3");
  map.set("a.crt", "c3");
  changes.poll();
  changes.settle();
  assert.deepEqual(changes.poll(), []);
  assert.deepEqual(changes.poll(), []);
});
