import assert from "node:assert/strict";
import { testFileSystemConformance } from "../../testing/fs_conformance.ts";
import { type FsFile, isNoSpace, writeAll } from "./fs.ts";
import { DESCRIPTOR_RESERVE, realFs } from "./real_fs.ts";

testFileSystemConformance("realFs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-fs-" });
  return { fs: realFs, dir, cleanup: () => Deno.remove(dir, { recursive: true }) };
});

Deno.test("writeAll keeps writing what partial writes left, and refuses a write of nothing", async () => {
  const taken: number[][] = [];
  let limit = 3;
  const file = {
    write: (bytes: Uint8Array) => {
      const n = Math.min(limit, bytes.length);
      taken.push([...bytes.subarray(0, n)]);
      return Promise.resolve(n);
    },
  } as FsFile;
  await writeAll(file, new Uint8Array([1, 2, 3, 4, 5, 6, 7]));
  assert.deepEqual(taken, [[1, 2, 3], [4, 5, 6], [7]]);
  limit = 0;
  await assert.rejects(writeAll(file, new Uint8Array([8])), Deno.errors.WriteZero);
});

Deno.test({
  name: "a write to a full device throws an error isNoSpace recognises",
  ignore: Deno.build.os !== "linux",
  async fn() {
    using full = await realFs.open("/dev/full", "append");
    const error = await full.write(new Uint8Array(16)).then(() => null, (e: unknown) => e);
    assert.ok(isNoSpace(error), `expected the no-space error, got ${error}`);
    assert.equal(isNoSpace(new Deno.errors.NotFound("x")), false);
    assert.equal(isNoSpace("No space left on device"), false);
  },
});

Deno.test("realFs: a lock just released is not refused while another thread starts processes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-fs-" });
  // A child process holds a copy of every descriptor from its fork to its exec: the lock file
  // of a lock just released included.
  const spawner = new Worker(
    URL.createObjectURL(
      new Blob([
        `self.onmessage = async () => {
          for (let i = 0; i < 300; i++) await new Deno.Command("true").output();
          self.postMessage("done");
        };`,
      ], { type: "application/javascript" }),
    ),
    { type: "module" },
  );
  try {
    const spawning = new Promise<void>((resolve, reject) => {
      spawner.onmessage = () => resolve();
      spawner.onerror = (e) => reject(new Error(e.message));
    });
    let done = false;
    spawning.then(() => done = true, () => done = true);
    spawner.postMessage("go");
    const path = `${dir}/LOCK`;
    let attempts = 0;
    while (!done) {
      const lock = await realFs.tryLock(path);
      assert.ok(lock !== null, `attempt ${attempts + 1} found the lock held`);
      lock.release();
      attempts++;
    }
    await spawning;
    assert.ok(attempts > 10, `only ${attempts} attempts while processes started`);
    // A lock that is held stays refused.
    using held = await realFs.tryLock(path);
    assert.ok(held !== null);
    assert.equal(await realFs.tryLock(path), null);
  } finally {
    spawner.terminate();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * What a process whose descriptors connections used up does with `realFs` (run in a child
 * process with `ulimit -n 64`): a file is opened, every descriptor left is taken, one spare is
 * used and the first file closed, then the storage's own operations run, more of them than the
 * reserve holds spares, then one handle more than it holds is opened at once.
 */
const _EXHAUSTED_CHILD = `
import { DESCRIPTOR_RESERVE, realFs } from ${
  JSON.stringify(new URL("./real_fs.ts", import.meta.url).href)
};
import { writeFileDurably } from ${
  JSON.stringify(new URL("./durable_file.ts", import.meta.url).href)
};
import { writeAll } from ${JSON.stringify(new URL("./fs.ts", import.meta.url).href)};
const dir = Deno.env.get("RAFTKV_TEST_DIR");
const early = await realFs.open(dir + "/early", "truncate");
const taken = [];
const stillOut = () => {
  try {
    taken.push(Deno.openSync("/dev/null"));
    return false;
  } catch (e) {
    if (e.code !== "EMFILE") throw e;
    return true;
  }
};
while (!stillOut());
// With a spare in use, a file opened before gives its descriptor back to the reserve, not to
// the next taker.
const viaSpare = await realFs.open(dir + "/via-spare", "truncate");
early.close();
const earlyBackToReserve = stillOut();
viaSpare.close();
while (!stillOut());
const bytes = new TextEncoder().encode("durable");
const report = { taken: taken.length, earlyBackToReserve, rounds: 0, outAfterEachRound: true, overflow: null };
for (let i = 0; i < 3 * DESCRIPTOR_RESERVE; i++) {
  await writeFileDurably(dir + "/state-" + i, bytes, realFs);
  {
    using file = await realFs.open(dir + "/segment-" + i, "create-new");
    await writeAll(file, bytes);
    await file.syncData();
  }
  const back = new TextDecoder().decode(await realFs.readFile(dir + "/state-" + i));
  if (back !== "durable") throw new Error("read back " + back);
  if ((await realFs.readDir(dir)).length !== 2 * (i + 1) + 2) throw new Error("listing");
  await realFs.syncDir(dir);
  report.outAfterEachRound &&= stillOut();
  report.rounds++;
}
const open = [];
try {
  for (let i = 0; i <= DESCRIPTOR_RESERVE; i++) open.push(await realFs.open(dir + "/held-" + i, "truncate"));
} catch (e) {
  report.overflow = { held: open.length, code: e.code };
}
for (const file of open) file.close();
console.log(JSON.stringify(report));
`;

Deno.test({
  name:
    "realFs: a process out of descriptors still writes, syncs, reads and lists its files from the reserve",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "raftkv-fs-" });
    try {
      const out = await new Deno.Command("sh", {
        args: ["-c", 'ulimit -n 64 && exec "$@"', "sh", Deno.execPath(), "eval", _EXHAUSTED_CHILD],
        env: { RAFTKV_TEST_DIR: dir, NO_COLOR: "1" },
        stdin: "null",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `the child failed: ${stderr}`);
      const report = JSON.parse(text.trim());
      assert.ok(report.taken > 0, text);
      assert.equal(report.earlyBackToReserve, true, "a closed file's descriptor was left free");
      // 24 rounds of five operations each, with no descriptor left before or after any of them.
      assert.deepEqual(
        { rounds: report.rounds, outAfterEachRound: report.outAfterEachRound },
        { rounds: 3 * DESCRIPTOR_RESERVE, outAfterEachRound: true },
      );
      // The reserve is finite: one handle more than it holds at once is refused, as before.
      assert.deepEqual(report.overflow, { held: DESCRIPTOR_RESERVE, code: "EMFILE" });
      // The two early files, two files a round, and the handles held at once (the refused one
      // created nothing).
      const names = (await realFs.readDir(dir)).map((e) => e.name);
      assert.equal(names.length, 2 + 2 * 3 * DESCRIPTOR_RESERVE + DESCRIPTOR_RESERVE, names.join());
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
