import assert from "node:assert/strict";
import { testFileSystemConformance } from "../../testing/fs_conformance.ts";
import { type FsFile, isNoSpace, writeAll } from "./fs.ts";
import { realFs } from "./real_fs.ts";

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
