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

/** An error shaped as Deno's reads throw it when the process is out of file descriptors. */
function outOfDescriptors(path: string): Error {
  const error = new Error(`Too many open files (os error 24): readfile '${path}'`);
  return Object.assign(error, { code: "EMFILE" });
}

Deno.test("FileChanges: a read that failed for the process's sake (out of descriptors) is not a change", async () => {
  const { map, read } = disk({ "t.json": "t1", "a.crt": "c1", "a.key": "k1" });
  let exhausted = false;
  const changes = new FileChanges(
    { tokens: ["t.json"], api: ["a.crt", "a.key"] },
    (path) => exhausted && path !== "a.crt" ? Promise.reject(outOfDescriptors(path)) : read(path),
  );
  await changes.settle();
  exhausted = true;
  assert.deepEqual(await changes.poll(), []);
  assert.deepEqual(await changes.poll(), [], "two failed looks are not a change held still");
  assert.throws(() => changes.text("t.json"), /Too many open files/, "the last read is kept");
  exhausted = false;
  assert.deepEqual(await changes.poll(), []);
  assert.deepEqual(await changes.poll(), [], "the same files as settled: nothing to reload");

  // A change made while the reads failed is reported once they work.
  exhausted = true;
  map.set("a.crt", "c2");
  map.set("a.key", "k2");
  assert.deepEqual(await changes.poll(), []);
  assert.deepEqual(await changes.poll(), []);
  exhausted = false;
  assert.deepEqual(await changes.poll(), []);
  assert.deepEqual(await changes.poll(), ["api"]);

  // A signal's settle that cannot read keeps what was settled: the change is still reported.
  map.set("t.json", "t2");
  exhausted = true;
  await changes.settle();
  exhausted = false;
  await changes.poll();
  assert.deepEqual(await changes.poll(), ["tokens"]);

  // A file that cannot be read for its own sake is still a change.
  map.delete("t.json");
  await changes.poll();
  assert.deepEqual(await changes.poll(), ["tokens"]);
});

Deno.test("FileChanges with real files in a process out of file descriptors reports nothing, then a real change", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-file-changes-" });
  try {
    const file = `${dir}/tokens.json`;
    await Deno.writeTextFile(file, "t1");
    const script = `
      import { FileChanges } from ${
      JSON.stringify(new URL("./file_changes.ts", import.meta.url).href)
    };
      const file = ${JSON.stringify(file)};
      const changes = new FileChanges({ tokens: [file] }, (p) => Deno.readTextFile(p));
      await changes.settle();
      const held = [];
      try { for (;;) held.push(Deno.openSync(file)); } catch (e) { console.log("open:", e.code); }
      const out = [await changes.poll(), await changes.poll()];
      for (const f of held) f.close();
      out.push(await changes.poll(), await changes.poll());
      Deno.writeTextFileSync(file, "t2");
      out.push(await changes.poll(), await changes.poll());
      console.log(JSON.stringify(out));
    `;
    const { code, stdout, stderr } = await new Deno.Command("bash", {
      args: ["-c", `ulimit -n 64 && exec "$0" eval "$1"`, Deno.execPath(), script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(stdout);
    assert.equal(code, 0, new TextDecoder().decode(stderr));
    assert.match(out, /^open: EMFILE$/m, "the process ran out of descriptors");
    assert.equal(out.trim().split("\n").at(-1), JSON.stringify([[], [], [], [], [], ["tokens"]]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
