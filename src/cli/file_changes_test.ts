import assert from "node:assert/strict";
import { FileChanges } from "./file_changes.ts";

/** Files in memory; a missing one throws as a real read would. */
function disk(files: Record<string, string>) {
  const map = new Map(Object.entries(files));
  const read = (path: string) => {
    const text = map.get(path);
    if (text === undefined) {
      return Promise.reject(new Deno.errors.NotFound(`no such file: ${path}`));
    }
    return Promise.resolve(text);
  };
  return { map, read };
}

Deno.test("FileChanges reports a group once its files changed and held still for one more look", async () => {
  const { map, read } = disk({ "t.json": "t1", "p.crt": "c1", "p.key": "k1", "ca.pem": "ca" });
  const changes = new FileChanges({
    tokens: ["t.json"],
    peer: ["p.crt", "p.key", "ca.pem"],
    api: [],
  }, read);
  assert.deepEqual(await changes.poll(), [], "nothing is reported before the contents are settled");
  await changes.settle();
  assert.deepEqual(changes.groups, ["tokens", "peer"], "a group without files is left out");
  assert.deepEqual(await changes.poll(), [], "nothing changed");

  // A renewal caught half done (the certificate written, its key not yet) is not reported.
  map.set("p.crt", "c2");
  assert.deepEqual(await changes.poll(), []);
  map.set("p.key", "k2");
  assert.deepEqual(await changes.poll(), [], "changed again since the last look");
  assert.deepEqual(await changes.poll(), ["peer"], "held still for one more look");
  assert.deepEqual(await changes.poll(), [], "reported once");

  // Changed back to what was settled before the last report: a change again.
  map.set("t.json", "t2");
  map.set("p.crt", "c1");
  map.set("p.key", "k1");
  assert.deepEqual(await changes.poll(), []);
  assert.deepEqual(await changes.poll(), ["tokens", "peer"], "in the order given");

  // A file that goes away is a change (the reload then says why it cannot read it); so is its
  // return.
  map.delete("t.json");
  await changes.poll();
  assert.deepEqual(await changes.poll(), ["tokens"]);
  map.set("t.json", "t2");
  await changes.poll();
  assert.deepEqual(await changes.poll(), ["tokens"]);
});

Deno.test("FileChanges.settle takes the contents now as loaded (a signal reloaded them)", async () => {
  const { map, read } = disk({ "t.json": "t1", "a.crt": "c1" });
  const changes = new FileChanges({ tokens: ["t.json"], api: ["a.crt"] }, read);
  await changes.settle();
  map.set("t.json", "t2");
  map.set("a.crt", "c2");
  await changes.poll();
  await changes.settle(["tokens"]);
  assert.deepEqual(await changes.poll(), ["api"], "the settled group is not reported");
  map.set("t.json", "t3");
  map.set("a.crt", "c3");
  await changes.poll();
  await changes.settle();
  assert.deepEqual(await changes.poll(), []);
  assert.deepEqual(await changes.poll(), []);
});

Deno.test("FileChanges.text gives the contents the last look read: what held still is what loads", async () => {
  const { map, read } = disk({ "t.json": "t1" });
  const changes = new FileChanges({ tokens: ["t.json"] }, read);
  assert.throws(() => changes.text("t.json"), RangeError, "never read");
  await changes.settle();
  assert.equal(changes.text("t.json"), "t1");
  map.set("t.json", "t2");
  await changes.poll();
  assert.deepEqual(await changes.poll(), ["tokens"]);
  map.set("t.json", "t3 (a write begun since)");
  assert.equal(changes.text("t.json"), "t2");
  map.delete("t.json");
  await changes.poll();
  assert.throws(() => changes.text("t.json"), Deno.errors.NotFound);
  assert.throws(() => changes.text("other.json"), RangeError, "not one of the files");
});

Deno.test("FileChanges.settle with what start-up read: a change made since then is still reported", async () => {
  const { map, read } = disk({ "t.json": "t2 (written after start-up read it)", "a.crt": "c1" });
  const changes = new FileChanges({ tokens: ["t.json"], api: ["a.crt"] }, read);
  await changes.settle(changes.groups, new Map([["t.json", "t1"]]));
  assert.equal(changes.text("t.json"), "t1", "the text start-up loaded");
  assert.equal(changes.text("a.crt"), "c1", "a file start-up did not read is read now");
  assert.deepEqual(await changes.poll(), [], "changed, not yet seen the same twice");
  assert.deepEqual(await changes.poll(), ["tokens"]);
  assert.equal(changes.text("t.json"), "t2 (written after start-up read it)");
  map.set("a.crt", "c1");
  assert.deepEqual(await changes.poll(), []);

  // Without the texts start-up read, the change is taken as the contents in force: missed.
  const missed = new FileChanges({ tokens: ["t.json"] }, read);
  await missed.settle();
  await missed.poll();
  assert.deepEqual(await missed.poll(), []);
});
