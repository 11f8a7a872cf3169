/**
 * The behaviour every {@linkcode FileSystem} must show, as `Deno.test` cases that an
 * implementation registers with {@linkcode testFileSystemConformance} and a factory. The real
 * file system (in a temporary directory) and the simulated one both run it, so that code tested
 * on the simulation meets the same results and the same error kinds on a real disk.
 *
 * Durability (what survives a crash) cannot be observed on a real disk without pulling the plug;
 * the simulated file system tests its crash model on its own (`sim_fs_test.ts`).
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type FileSystem, type FsFile, writeAll } from "../src/storage/fs.ts";

/** A file system to test, with an empty directory to test in. */
export interface FsUnderTest {
  /** The file system. */
  fs: FileSystem;
  /** An existing, empty directory the tests may use. */
  dir: string;
  /** Releases everything (e.g. removes the directory). */
  cleanup(): Promise<void>;
}

/** Builds a fresh {@linkcode FsUnderTest} for each test. */
export type FsFactory = () => Promise<FsUnderTest>;

const _bytes = (...values: number[]) => new Uint8Array(values);

/** Error predicates for `assert.rejects`, by the `code` Deno gives the error. */
const _code = (code: string) => (error: unknown) => {
  assert.equal((error as { code?: unknown }).code, code, String(error));
  return true;
};

/** Creates `path` holding `bytes`, synced. */
async function _create(fs: FileSystem, path: string, bytes: Uint8Array): Promise<void> {
  using file = await fs.open(path, "create-new");
  await writeAll(file, bytes);
  await file.sync();
}

/** Reads a stream to its end. */
async function _drain(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/**
 * Registers the conformance tests for the file system `factory` builds, each named
 * `"<name>: <what it checks>"`.
 *
 * @param name The implementation's name, for the test names.
 * @param factory Builds the file system and a directory for each test.
 */
export function testFileSystemConformance(name: string, factory: FsFactory): void {
  const test = (what: string, fn: (fs: FileSystem, dir: string) => Promise<void>) => {
    Deno.test(`${name}: ${what}`, async () => {
      const { fs, dir, cleanup } = await factory();
      try {
        await fn(fs, dir);
      } finally {
        await cleanup();
      }
    });
  };

  test("a new file is written, synced and read back whole", async (fs, dir) => {
    const path = join(dir, "new");
    {
      using file = await fs.open(path, "create-new");
      assert.equal(await file.write(_bytes(1, 2, 3)), 3);
      assert.equal(await file.write(_bytes()), 0);
      await writeAll(file, _bytes(4, 5));
      await file.syncData();
      await file.sync();
    }
    assert.deepEqual(await fs.readFile(path), _bytes(1, 2, 3, 4, 5));
    const info = await fs.stat(path);
    assert.deepEqual([info.isFile, info.isDirectory, info.size], [true, false, 5]);
  });

  test("creating a file that exists fails with AlreadyExists and leaves it", async (fs, dir) => {
    const path = join(dir, "taken");
    await _create(fs, path, _bytes(7));
    await assert.rejects(fs.open(path, "create-new"), Deno.errors.AlreadyExists);
    await fs.mkdir(join(dir, "sub"));
    await assert.rejects(fs.open(join(dir, "sub"), "create-new"), Deno.errors.AlreadyExists);
    assert.deepEqual(await fs.readFile(path), _bytes(7));
  });

  test("everything done to a missing file fails with NotFound", async (fs, dir) => {
    const path = join(dir, "missing");
    await assert.rejects(fs.readFile(path), Deno.errors.NotFound);
    await assert.rejects(fs.open(path, "read"), Deno.errors.NotFound);
    await assert.rejects(fs.open(path, "append"), Deno.errors.NotFound);
    await assert.rejects(fs.stat(path), Deno.errors.NotFound);
    await assert.rejects(fs.remove(path), Deno.errors.NotFound);
    await assert.rejects(fs.rename(path, join(dir, "other")), Deno.errors.NotFound);
    await assert.rejects(fs.readDir(path), Deno.errors.NotFound);
    await assert.rejects(fs.syncDir(path), Deno.errors.NotFound);
    const inMissingDir = join(dir, "no-dir", "file");
    await assert.rejects(fs.open(inMissingDir, "create-new"), Deno.errors.NotFound);
    await assert.rejects(fs.open(inMissingDir, "truncate"), Deno.errors.NotFound);
    await _create(fs, join(dir, "file"), _bytes(1));
    await assert.rejects(fs.rename(join(dir, "file"), inMissingDir), Deno.errors.NotFound);
    assert.deepEqual((await fs.readDir(dir)).map((e) => e.name), ["file"]);
  });

  test("a path through a file fails with NotADirectory", async (fs, dir) => {
    const file = join(dir, "file");
    await _create(fs, file, _bytes(1));
    const below = join(file, "x");
    await assert.rejects(fs.readFile(below), Deno.errors.NotADirectory);
    await assert.rejects(fs.stat(below), Deno.errors.NotADirectory);
    await assert.rejects(fs.open(below, "truncate"), Deno.errors.NotADirectory);
    await assert.rejects(fs.remove(below), Deno.errors.NotADirectory);
    await assert.rejects(fs.readDir(file), Deno.errors.NotADirectory);
    await assert.rejects(fs.mkdir(join(below, "y")), Deno.errors.NotADirectory);
  });

  test("a directory cannot be read or written as a file", async (fs, dir) => {
    await assert.rejects(fs.readFile(dir), Deno.errors.IsADirectory);
    await assert.rejects(fs.open(dir, "append"), Deno.errors.IsADirectory);
    await assert.rejects(fs.open(dir, "truncate"), Deno.errors.IsADirectory);
    const info = await fs.stat(dir);
    assert.deepEqual([info.isFile, info.isDirectory], [false, true]);
  });

  test("appends go to the end of the file, also after a truncation", async (fs, dir) => {
    const path = join(dir, "log");
    await _create(fs, path, _bytes(1, 2, 3));
    using file = await fs.open(path, "append");
    await writeAll(file, _bytes(4));
    await file.truncate(2);
    await writeAll(file, _bytes(9));
    await file.syncData();
    assert.deepEqual(await fs.readFile(path), _bytes(1, 2, 9));
    assert.equal((await fs.stat(path)).size, 3);
  });

  test(
    "truncate mode empties a file and writes at its position, which truncation keeps",
    async (fs, dir) => {
      const path = join(dir, "state");
      await _create(fs, path, _bytes(5, 5, 5, 5, 5, 5));
      using file = await fs.open(path, "truncate");
      assert.equal((await fs.stat(path)).size, 0);
      await writeAll(file, _bytes(2, 3, 4));
      await file.truncate(1);
      await writeAll(file, _bytes(9));
      assert.deepEqual(await fs.readFile(path), _bytes(2, 0, 0, 9));
      await file.truncate(6);
      assert.deepEqual(await fs.readFile(path), _bytes(2, 0, 0, 9, 0, 0));
      using made = await fs.open(join(dir, "fresh"), "truncate");
      await writeAll(made, _bytes(1));
      assert.deepEqual(await fs.readFile(join(dir, "fresh")), _bytes(1));
    },
  );

  test("read returns the bytes in order, then null; an empty read returns 0", async (fs, dir) => {
    const path = join(dir, "data");
    await _create(fs, path, _bytes(1, 2, 3));
    using file = await fs.open(path, "read");
    const into = new Uint8Array(2);
    assert.equal(await file.read(into), 2);
    assert.deepEqual(into, _bytes(1, 2));
    assert.equal(await file.read(into), 1);
    assert.equal(into[0], 3);
    assert.equal(await file.read(into), null);
    assert.equal(await file.read(new Uint8Array(0)), 0);
  });

  test(
    "a large file streams whole through readable, which then closes the handle",
    async (fs, dir) => {
      const path = join(dir, "big");
      const big = new Uint8Array(300_000).map((_, i) => (i * 31) % 251);
      await _create(fs, path, big);
      const file = await fs.open(path, "read");
      assert.deepEqual(await _drain(file.readable), big);
      assert.throws(() => file.close(), Deno.errors.BadResource);
      file[Symbol.dispose]();
    },
  );

  test("a handle refuses what it was not opened for", async (fs, dir) => {
    const path = join(dir, "data");
    await _create(fs, path, _bytes(1));
    {
      using reader = await fs.open(path, "read");
      await assert.rejects(reader.write(_bytes(2)), _code("EBADF"));
      await assert.rejects(reader.truncate(0), TypeError);
      await reader.sync();
    }
    using writer = await fs.open(path, "append");
    await assert.rejects(writer.read(new Uint8Array(1)), _code("EBADF"));
    assert.deepEqual(await fs.readFile(path), _bytes(1));
  });

  test("a closed handle fails with BadResource; disposing it does nothing", async (fs, dir) => {
    const file: FsFile = await fs.open(join(dir, "f"), "create-new");
    file.close();
    await assert.rejects(file.write(_bytes(1)), Deno.errors.BadResource);
    await assert.rejects(file.read(new Uint8Array(1)), Deno.errors.BadResource);
    await assert.rejects(file.sync(), Deno.errors.BadResource);
    await assert.rejects(file.truncate(0), Deno.errors.BadResource);
    assert.throws(() => file.close(), Deno.errors.BadResource);
    file[Symbol.dispose]();
  });

  test("a removed file stays readable through a handle opened before", async (fs, dir) => {
    const path = join(dir, "doomed");
    await _create(fs, path, _bytes(1, 2));
    using file = await fs.open(path, "read");
    await fs.remove(path);
    await assert.rejects(fs.stat(path), Deno.errors.NotFound);
    assert.deepEqual(await _drain(file.readable), _bytes(1, 2));
  });

  test("rename replaces an existing file and the old name is gone", async (fs, dir) => {
    const [from, to] = [join(dir, "state.tmp"), join(dir, "state")];
    await _create(fs, to, _bytes(1, 1, 1));
    await _create(fs, from, _bytes(2));
    await fs.rename(from, to);
    assert.deepEqual(await fs.readFile(to), _bytes(2));
    await assert.rejects(fs.stat(from), Deno.errors.NotFound);
    assert.deepEqual((await fs.readDir(dir)).map((e) => e.name), ["state"]);
    await fs.rename(to, to);
    assert.deepEqual(await fs.readFile(to), _bytes(2));
  });

  test("rename moves files and directories between directories", async (fs, dir) => {
    await fs.mkdir(join(dir, "a", "inner"));
    await fs.mkdir(join(dir, "b"));
    await _create(fs, join(dir, "a", "inner", "f"), _bytes(3));
    await fs.rename(join(dir, "a", "inner", "f"), join(dir, "b", "g"));
    await fs.rename(join(dir, "a", "inner"), join(dir, "b", "inner"));
    assert.deepEqual(await fs.readFile(join(dir, "b", "g")), _bytes(3));
    assert.deepEqual((await fs.readDir(join(dir, "a"))).map((e) => e.name), []);
    assert.deepEqual((await fs.readDir(join(dir, "b"))).map((e) => e.name), ["g", "inner"]);
  });

  test(
    "rename refuses to mix files and directories or to fill a non-empty one",
    async (fs, dir) => {
      const [file, empty, full] = [join(dir, "f"), join(dir, "empty"), join(dir, "full")];
      await _create(fs, file, _bytes(1));
      await fs.mkdir(empty);
      await fs.mkdir(full);
      await _create(fs, join(full, "x"), _bytes(1));
      await assert.rejects(fs.rename(file, empty), Deno.errors.IsADirectory);
      await assert.rejects(fs.rename(empty, file), Deno.errors.NotADirectory);
      await assert.rejects(fs.rename(empty, full), _code("ENOTEMPTY"));
      await assert.rejects(fs.rename(full, join(full, "below")), _code("EINVAL"));
      await fs.rename(full, empty);
      assert.deepEqual((await fs.readDir(dir)).map((e) => e.name), ["empty", "f"]);
    },
  );

  test("readDir lists names sorted with their kinds, without removed ones", async (fs, dir) => {
    for (const name of ["b", "a", "c.tmp"]) await _create(fs, join(dir, name), _bytes(1));
    await fs.mkdir(join(dir, "d"));
    await fs.remove(join(dir, "c.tmp"));
    assert.deepEqual(await fs.readDir(dir), [
      { name: "a", isFile: true, isDirectory: false },
      { name: "b", isFile: true, isDirectory: false },
      { name: "d", isFile: false, isDirectory: true },
    ]);
  });

  test(
    "mkdir makes missing parents and accepts an existing directory, not a file",
    async (fs, dir) => {
      const deep = join(dir, "x", "y", "z");
      await fs.mkdir(deep);
      await fs.mkdir(deep);
      assert.equal((await fs.stat(join(dir, "x", "y"))).isDirectory, true);
      assert.deepEqual(await fs.readDir(deep), []);
      await _create(fs, join(dir, "file"), _bytes(1));
      await assert.rejects(fs.mkdir(join(dir, "file")), Deno.errors.AlreadyExists);
    },
  );

  test("remove deletes files and empty directories, not full ones", async (fs, dir) => {
    await fs.mkdir(join(dir, "d"));
    await _create(fs, join(dir, "d", "f"), _bytes(1));
    await assert.rejects(fs.remove(join(dir, "d")), _code("ENOTEMPTY"));
    await fs.remove(join(dir, "d", "f"));
    await fs.remove(join(dir, "d"));
    assert.deepEqual(await fs.readDir(dir), []);
  });

  test("syncDir accepts a directory after changes in it", async (fs, dir) => {
    await _create(fs, join(dir, "a.tmp"), _bytes(1));
    await fs.rename(join(dir, "a.tmp"), join(dir, "a"));
    await fs.syncDir(dir);
    await fs.syncDir(dir);
    assert.deepEqual((await fs.readDir(dir)).map((e) => e.name), ["a"]);
  });

  test(
    "new files get mode 0600 and new directories 0700, or the mode asked for",
    async (fs, dir) => {
      const file = join(dir, "f");
      await _create(fs, file, _bytes(1));
      if ((await fs.stat(file)).mode === null) return; // Windows has no permission bits
      assert.equal((await fs.stat(file)).mode, 0o600);
      await fs.mkdir(join(dir, "p", "q"));
      assert.equal((await fs.stat(join(dir, "p"))).mode, 0o700);
      assert.equal((await fs.stat(join(dir, "p", "q"))).mode, 0o700);
      (await fs.open(join(dir, "ro"), "truncate", 0o400)).close();
      assert.equal((await fs.stat(join(dir, "ro"))).mode, 0o400);
      (await fs.open(file, "truncate", 0o400)).close();
      assert.equal((await fs.stat(file)).mode, 0o600, "an existing file keeps its mode");
    },
  );

  test(
    "a file's lock has one holder until released, and leaves the file as it was",
    async (fs, dir) => {
      const path = join(dir, "LOCK");
      const first = await fs.tryLock(path);
      assert.ok(first !== null, "a new lock file is locked");
      assert.equal(await fs.tryLock(path), null, "a second holder is refused");
      assert.deepEqual((await fs.readDir(dir)).map((e) => [e.name, e.isFile]), [["LOCK", true]]);
      assert.equal((await fs.stat(path)).size, 0);
      first.release();
      first.release(); // Again: nothing happens.
      {
        using again = await fs.tryLock(path);
        assert.ok(again !== null, "released, it can be taken again");
        assert.equal(await fs.tryLock(path), null);
      }
      // `using` released it; an existing file with contents keeps them.
      const other = join(dir, "held");
      await _create(fs, other, _bytes(1, 2, 3));
      const lock = await fs.tryLock(other);
      assert.ok(lock !== null);
      assert.ok(await fs.tryLock(path) !== null, "locks of two files are independent");
      assert.deepEqual(await fs.readFile(other), _bytes(1, 2, 3));
      lock.release();
    },
  );

  test(
    "a lock in a missing directory or on a directory is refused with Deno's error",
    async (fs, dir) => {
      await assert.rejects(fs.tryLock(join(dir, "missing", "LOCK")), Deno.errors.NotFound);
      await fs.mkdir(join(dir, "d"));
      await assert.rejects(fs.tryLock(join(dir, "d")), _code("EISDIR"));
    },
  );
}
