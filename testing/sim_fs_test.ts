import assert from "node:assert/strict";
import { seededRandom } from "../src/raft/rand.ts";
import { type FileSystem, isNoSpace, writeAll } from "../src/storage/fs.ts";
import { testFileSystemConformance } from "./fs_conformance.ts";
import { CrashedError, SimFileSystem } from "./sim_fs.ts";

testFileSystemConformance("SimFileSystem", async () => {
  const fs = new SimFileSystem();
  await fs.mkdir("/tmp/conformance");
  return { fs, dir: "/tmp/conformance", cleanup: () => Promise.resolve() };
});

testFileSystemConformance("SimFileSystem with every operation delayed", async () => {
  const fs = new SimFileSystem({ delay: () => new Promise((resolve) => setTimeout(resolve, 0)) });
  await fs.mkdir("/tmp/conformance");
  return { fs, dir: "/tmp/conformance", cleanup: () => Promise.resolve() };
});

const _bytes = (...values: number[]) => new Uint8Array(values);

/** A file system whose directory `/d` exists durably. */
async function _fresh(fs = new SimFileSystem()): Promise<SimFileSystem> {
  await fs.mkdir("/d");
  await fs.syncDir("/");
  return fs;
}

/** Creates `path` with `bytes`, its data synced (its name only if `syncDir`). */
async function _create(fs: FileSystem, path: string, bytes: Uint8Array, syncDir = false) {
  using file = await fs.open(path, "create-new");
  await writeAll(file, bytes);
  await file.sync();
  if (syncDir) await fs.syncDir(path.slice(0, path.lastIndexOf("/")) || "/");
}

async function _names(fs: FileSystem, dir: string): Promise<string[]> {
  return (await fs.readDir(dir)).map((e) => e.name);
}

Deno.test("a crash keeps only the synced bytes of each file", async () => {
  const fs = await _fresh();
  await _create(fs, "/d/log", _bytes(1, 2, 3), true);
  await _create(fs, "/d/state", _bytes(7, 7), true);
  {
    using log = await fs.open("/d/log", "append");
    await writeAll(log, _bytes(4, 5));
    await log.truncate(1);
    using state = await fs.open("/d/state", "truncate");
    await writeAll(state, _bytes(8));
  }
  const after = fs.crash();
  assert.deepEqual(await after.readFile("/d/log"), _bytes(1, 2, 3));
  assert.deepEqual(await after.readFile("/d/state"), _bytes(7, 7));
  assert.deepEqual(after.crashNotes, []);
});

Deno.test("a file created since its directory was last synced is gone after a crash, even with its data synced", async () => {
  const fs = await _fresh();
  await _create(fs, "/d/kept", _bytes(1), true);
  await _create(fs, "/d/lost", _bytes(2));
  await fs.mkdir("/d/sub/deeper");
  const after = fs.crash();
  assert.deepEqual(await _names(after, "/d"), ["kept"]);
  await assert.rejects(after.readFile("/d/lost"), Deno.errors.NotFound);
});

Deno.test("an unsynced rename or removal is undone by a crash; after syncDir it stays", async () => {
  const fs = await _fresh();
  await _create(fs, "/d/state", _bytes(1), true);
  await _create(fs, "/d/gone", _bytes(9), true);
  await _create(fs, "/d/state.tmp", _bytes(2));
  await fs.rename("/d/state.tmp", "/d/state");
  await fs.remove("/d/gone");
  const undone = fs.crash();
  assert.deepEqual(await _names(undone, "/d"), ["gone", "state"]);
  assert.deepEqual(await undone.readFile("/d/state"), _bytes(1));

  await _create(undone, "/d/state.tmp", _bytes(3));
  await undone.rename("/d/state.tmp", "/d/state");
  await undone.remove("/d/gone");
  await undone.syncDir("/d");
  const kept = undone.crash();
  assert.deepEqual(await _names(kept, "/d"), ["state"]);
  assert.deepEqual(await kept.readFile("/d/state"), _bytes(3));
});

Deno.test("syncDir commits the directory changes in order, up to the directory's last one", async () => {
  const fs = await _fresh();
  await fs.mkdir("/e");
  await fs.syncDir("/");
  await _create(fs, "/d/first", _bytes(1));
  await _create(fs, "/e/second", _bytes(2));
  await _create(fs, "/d/third", _bytes(3));
  await fs.syncDir("/e");
  const after = fs.crash();
  assert.deepEqual(await _names(after, "/d"), ["first"]);
  assert.deepEqual(await _names(after, "/e"), ["second"]);
});

Deno.test("a crashed file system and its handles refuse every operation, even one already waiting", async () => {
  const gates: (() => void)[] = [];
  const fs = await _fresh(new SimFileSystem());
  await _create(fs, "/d/f", _bytes(1), true);
  const slow = new SimFileSystem({ delay: () => new Promise<void>((r) => gates.push(r)) });
  const waiting = slow.stat("/");
  const handle = await fs.open("/d/f", "append");
  fs.crash();
  slow.crash();
  assert.throws(() => fs.crash(), CrashedError);
  gates.forEach((release) => release());
  await assert.rejects(waiting, CrashedError);
  await assert.rejects(fs.readFile("/d/f"), CrashedError);
  await assert.rejects(handle.write(_bytes(2)), CrashedError);
  await assert.rejects(handle.sync(), CrashedError);
  handle.close();
});

Deno.test("with a seed, a crash keeps a prefix of the unsynced writes and may tear the next one, reproducibly", async () => {
  const synced = new Uint8Array(100).fill(1);
  const writes = [new Uint8Array(700).fill(2), new Uint8Array(600).fill(3)];
  const full = new Uint8Array([...synced, ...writes[0]!, ...writes[1]!]);
  const starts = [100, 800];
  const seen = new Set<string>();
  for (let seed = 1; seed <= 300; seed++) {
    const fs = await _fresh();
    await _create(fs, "/d/log", synced, true);
    using log = await fs.open("/d/log", "append");
    for (const w of writes) await writeAll(log, w);
    const after = fs.crash(seededRandom(seed));
    const image = await after.readFile("/d/log");
    // The image is the written bytes up to some point p, then only zeros.
    let p = 0;
    while (p < image.length && image[p] === full[p]) p++;
    assert.ok(p >= synced.length, `seed ${seed}: synced bytes lost (${p} of them kept)`);
    assert.ok(image.subarray(p).every((b) => b === 0), `seed ${seed}: not a prefix then zeros`);
    assert.ok(image.length <= full.length, `seed ${seed}: image longer than the writes`);
    if (image.length > p) {
      assert.ok(p % 512 === 0 || starts.includes(p), `seed ${seed}: zeros from byte ${p}`);
      seen.add("whole sectors, then zeros");
    } else if (p === synced.length) seen.add("nothing unsynced");
    else if (p === full.length) seen.add("every write");
    else if (starts.includes(p)) seen.add("whole writes");
    else seen.add("a write cut at a byte");

    const again = await _fresh();
    await _create(again, "/d/log", synced, true);
    using log2 = await again.open("/d/log", "append");
    for (const w of writes) await writeAll(log2, w);
    const replay = again.crash(seededRandom(seed));
    assert.deepEqual(await replay.readFile("/d/log"), image, `seed ${seed} is not reproducible`);
    assert.deepEqual(replay.crashNotes, after.crashNotes);
  }
  assert.deepEqual([...seen].sort(), [
    "a write cut at a byte",
    "every write",
    "nothing unsynced",
    "whole sectors, then zeros",
    "whole writes",
  ]);
});

Deno.test("with keepUnsyncedEntries, a crash keeps a prefix of the unsynced directory changes", async () => {
  const names = ["a", "b", "c", "d"];
  const counts = new Set<number>();
  for (let seed = 1; seed <= 60; seed++) {
    const fs = await _fresh();
    for (const name of names) await _create(fs, `/d/${name}`, _bytes(1));
    const after = fs.crash(seededRandom(seed), { keepUnsyncedEntries: true });
    const kept = await _names(after, "/d");
    assert.deepEqual(kept, names.slice(0, kept.length), `seed ${seed}: kept ${kept}`);
    counts.add(kept.length);
    const strict = (await _fresh()).crash(seededRandom(seed));
    assert.deepEqual(await _names(strict, "/"), ["d"]);
  }
  assert.deepEqual([...counts].sort(), [0, 1, 2, 3, 4]);
});

Deno.test("a full disk takes what fits, then throws the no-space error until space is freed", async () => {
  const fs = await _fresh();
  fs.setCapacity(10);
  using file = await fs.open("/d/f", "create-new");
  assert.equal(await file.write(new Uint8Array(6)), 6);
  assert.equal(await file.write(new Uint8Array(6)), 4);
  const error = await file.write(_bytes(1)).then(() => null, (e: unknown) => e);
  assert.ok(isNoSpace(error), `expected the no-space error, got ${error}`);
  assert.match(String(error), /No space left on device \(os error 28\): write '\/d\/f'/);
  using other = await fs.open("/d/g", "create-new");
  await assert.rejects(writeAll(other, _bytes(1)), (e) => isNoSpace(e));
  assert.equal(fs.used, 10);

  using rewrite = await fs.open("/d/f", "append");
  await rewrite.truncate(8);
  assert.equal(fs.used, 8);
  await writeAll(other, _bytes(1, 2));
  await fs.remove("/d/g");
  assert.equal(fs.used, 10, "an open file keeps its space");
  other.close();
  assert.equal(fs.used, 8);
  fs.setCapacity(Infinity);
  await writeAll(rewrite, new Uint8Array(100));
  assert.equal(fs.used, 108);
  assert.throws(() => fs.setCapacity(-1), RangeError);
});

Deno.test("ackBeforeSync: a lying disk loses synced writes and synced entries at the crash", async () => {
  const fs = await _fresh();
  await _create(fs, "/d/old", _bytes(1), true);
  fs.faults.ackBeforeSync = true;
  {
    using old = await fs.open("/d/old", "append");
    await writeAll(old, _bytes(2));
    await old.syncData();
  }
  await _create(fs, "/d/new", _bytes(3), true);
  const after = fs.crash();
  assert.equal(after.faults.ackBeforeSync, true);
  assert.deepEqual(await _names(after, "/d"), ["old"]);
  assert.deepEqual(await after.readFile("/d/old"), _bytes(1));
});

Deno.test("failed: a dying disk fails every operation with EIO, a sync in flight too; the crash image is the disk mounted again", async () => {
  let hold: Promise<void> | undefined = undefined;
  let release = () => {};
  const fs = new SimFileSystem({ delay: (op) => op === "sync" ? hold : undefined });
  await fs.mkdir("/d");
  await fs.syncDir("/");
  await _create(fs, "/d/a", _bytes(1), false);
  await fs.syncDir("/d");
  using a = await fs.open("/d/a", "append");
  await writeAll(a, _bytes(2));
  hold = new Promise<void>((resolve) => release = resolve);
  const syncing = a.syncData();
  fs.faults.failed = true;
  release();
  const eio = (e: unknown) =>
    (e as { code?: string }).code === "EIO" && /^Input\/output error \(os error 5\)/.test(
      (e as Error).message,
    );
  await assert.rejects(syncing, eio);
  await assert.rejects(a.write(_bytes(3)), eio);
  await assert.rejects(fs.open("/d/b", "create-new"), eio);
  await assert.rejects(fs.readFile("/d/a"), eio);
  await assert.rejects(fs.readDir("/d"), eio);
  await assert.rejects(fs.stat("/d/a"), eio);
  await assert.rejects(fs.rename("/d/a", "/d/c"), eio);
  await assert.rejects(fs.remove("/d/a"), eio);
  await assert.rejects(fs.mkdir("/e"), eio);
  await assert.rejects(fs.syncDir("/d"), eio);
  await assert.rejects(fs.tryLock("/d/lock"), eio);
  assert.equal(isNoSpace(await fs.open("/d/x", "truncate").catch((e) => e)), false);
  const after = fs.crash();
  assert.equal(after.faults.failed, false);
  assert.deepEqual(await _names(after, "/d"), ["a"]);
  assert.deepEqual(await after.readFile("/d/a"), _bytes(1));
});

Deno.test("forgetLastSynced: the crash drops the last synced write and keeps the earlier ones", async () => {
  const fs = await _fresh();
  fs.faults.forgetLastSynced = true;
  await _create(fs, "/d/a", _bytes(1, 2), true);
  await _create(fs, "/d/b", _bytes(5), true);
  {
    using b = await fs.open("/d/b", "truncate");
    await writeAll(b, _bytes(6, 6));
    await b.sync();
    using a = await fs.open("/d/a", "append");
    await writeAll(a, _bytes(3));
    await writeAll(a, _bytes(4));
    await a.sync();
    await a.sync();
  }
  const after = fs.crash();
  assert.deepEqual(await after.readFile("/d/a"), _bytes(1, 2, 3));
  assert.deepEqual(await after.readFile("/d/b"), _bytes(6, 6));
  assert.equal(after.crashNotes.length, 1);

  after.faults.forgetLastSynced = false;
  {
    using b = await after.open("/d/b", "truncate");
    await writeAll(b, _bytes(7, 7, 7));
    await b.sync();
  }
  {
    using a = await after.open("/d/a", "append");
    await writeAll(a, _bytes(8));
    await a.sync();
  }
  after.faults.forgetLastSynced = (path) => path === "/d/b";
  const chosen = after.crash();
  assert.deepEqual(await chosen.readFile("/d/a"), _bytes(1, 2, 3, 8), "only /d/b may forget");
  assert.deepEqual(await chosen.readFile("/d/b"), _bytes(), "its synced truncation stays");
});

Deno.test("operations take effect when the delay hook lets them, and not at all if the crash comes first", async () => {
  const gates = new Map<string, () => void>();
  const ops: string[] = [];
  const fs = new SimFileSystem({
    delay: (op, path) => {
      ops.push(`${op} ${path}`);
      if (op !== "write") return;
      return new Promise<void>((resolve) => gates.set(path, resolve));
    },
  });
  await _fresh(fs);
  await _create(fs, "/d/a", _bytes(), true);
  await _create(fs, "/d/b", _bytes(), true);
  using a = await fs.open("/d/a", "append");
  using b = await fs.open("/d/b", "append");
  const writingA = a.write(_bytes(1));
  const writingB = b.write(_bytes(2));
  await Promise.resolve();
  gates.get("/d/b")!();
  assert.equal(await writingB, 1);
  assert.deepEqual(await fs.readFile("/d/a"), _bytes());
  assert.deepEqual(await fs.readFile("/d/b"), _bytes(2));
  const after = fs.crash(seededRandom(1));
  gates.get("/d/a")!();
  await assert.rejects(writingA, CrashedError);
  assert.deepEqual(await after.readFile("/d/a"), _bytes());
  assert.ok(ops.includes("syncDir /d") && ops.includes("readFile /d/a"), ops.join(", "));
});

Deno.test("a crash keeps the capacity, the delay hook and the faults", async () => {
  let delayed = 0;
  const fs = await _fresh(new SimFileSystem({ capacity: 4, delay: () => void delayed++ }));
  await _create(fs, "/d/f", _bytes(1, 2), true);
  fs.faults.forgetLastSynced = (path) => path.endsWith(".wal");
  const after = fs.crash();
  assert.equal(after.used, 2);
  assert.equal(typeof after.faults.forgetLastSynced, "function");
  const before = delayed;
  using file = await after.open("/d/f", "append");
  assert.equal(await file.write(_bytes(3, 4, 5)), 2);
  assert.ok(delayed > before);
});
