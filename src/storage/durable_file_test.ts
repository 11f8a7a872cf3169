import assert from "node:assert/strict";
import { join } from "node:path";
import { createDirectory, writeFileDurably } from "./durable_file.ts";
import { DIRECTORY_MODE, FILE_MODE } from "./fs.ts";

async function _withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-durable-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function _names(dir: string): Promise<string[]> {
  const names = [];
  for await (const item of Deno.readDir(dir)) names.push(item.name);
  return names.sort();
}

const _bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

Deno.test("writeFileDurably() creates the file and leaves no temp file behind", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "state.json");
    await writeFileDurably(path, _bytes("first"));
    assert.equal(await Deno.readTextFile(path), "first");
    assert.deepEqual(await _names(dir), ["state.json"]);
  });
});

Deno.test("writeFileDurably() replaces the whole content of an existing file", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "state.json");
    await writeFileDurably(path, _bytes("a much longer first version"));
    await writeFileDurably(path, _bytes("short"));
    assert.equal(await Deno.readTextFile(path), "short");
    assert.deepEqual(await _names(dir), ["state.json"]);
  });
});

Deno.test("writeFileDurably() overwrites a temp file left by an earlier crash", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "state.json");
    await Deno.writeTextFile(`${path}.tmp`, "half-written garbage that is longer");
    await writeFileDurably(path, _bytes("new"));
    assert.equal(await Deno.readTextFile(path), "new");
    assert.deepEqual(await _names(dir), ["state.json"]);
  });
});

Deno.test("writeFileDurably() removes its temp file when the rename fails", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "occupied");
    await Deno.mkdir(join(path, "child"), { recursive: true });
    await assert.rejects(writeFileDurably(path, _bytes("x")));
    assert.deepEqual(await _names(dir), ["occupied"]);
  });
});

Deno.test("writeFileDurably() throws NotFound when the directory is missing", async () => {
  await _withDir(async (dir) => {
    await assert.rejects(
      writeFileDurably(join(dir, "missing", "state.json"), _bytes("x")),
      Deno.errors.NotFound,
    );
    assert.deepEqual(await _names(dir), []);
  });
});

Deno.test("writeFileDurably() on a full disk keeps the old content and removes its temp file", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "state.json");
    await writeFileDurably(path, _bytes("old\n"));
    const proto = Deno.FsFile.prototype;
    const { write } = proto;
    proto.write = async function (this: Deno.FsFile, p: Uint8Array) {
      await write.call(this, p.subarray(0, 1)); // part of it lands, then the disk is full
      throw Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" });
    };
    try {
      await assert.rejects(writeFileDurably(path, _bytes("new content\n")), { code: "ENOSPC" });
    } finally {
      proto.write = write;
    }
    assert.equal(await Deno.readTextFile(path), "old\n");
    assert.deepEqual(await _names(dir), ["state.json"]);
  });
});

/** The permission bits of `path` (a umask can only clear bits of the modes the code asks for). */
async function _mode(path: string): Promise<number> {
  return (await Deno.stat(path)).mode! & 0o777;
}

const _posix = Deno.build.os !== "windows";

Deno.test({
  name: "writeFileDurably() creates the file readable and writable by its owner only",
  ignore: !_posix,
  fn: () =>
    _withDir(async (dir) => {
      const path = join(dir, "state.json");
      await writeFileDurably(path, _bytes("private"));
      assert.equal(FILE_MODE, 0o600);
      assert.equal(await _mode(path), 0o600);
      await writeFileDurably(path, _bytes("replaced"));
      assert.equal(await _mode(path), 0o600, "the replacement (the renamed temp file) too");
    }),
});

Deno.test({
  name: "createDirectory() creates every missing level with mode 0700 and leaves existing ones be",
  ignore: !_posix,
  fn: () =>
    _withDir(async (dir) => {
      await Deno.chmod(dir, 0o755);
      const deep = join(dir, "a", "b", "c");
      await createDirectory(deep);
      assert.equal(DIRECTORY_MODE, 0o700);
      for (const level of [join(dir, "a"), join(dir, "a", "b"), deep]) {
        assert.equal(await _mode(level), 0o700, level);
      }
      assert.equal(await _mode(dir), 0o755);
      await createDirectory(deep); // exists: nothing to do
      await Deno.writeTextFile(join(dir, "file"), "x");
      await assert.rejects(createDirectory(join(dir, "file")), Deno.errors.AlreadyExists);
    }),
});
