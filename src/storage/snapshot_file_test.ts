import assert from "node:assert/strict";
import { join } from "node:path";
import { contentOf } from "../../testing/snapshot_pairs.ts";
import { SimFileSystem } from "../../testing/sim_fs.ts";
import { CorruptFileError } from "./errors.ts";
import type { FileSystem } from "./fs.ts";
import { realFs } from "./real_fs.ts";
import {
  decodeSnapshot,
  encodeSnapshot,
  listSnapshots,
  pruneSnapshots,
  readSnapshotFile,
  removeStaleReceived,
  type SnapshotEntrySink,
  type SnapshotHeader,
  snapshotName,
  writeSnapshotFile,
} from "./snapshot_file.ts";

function pairs(n: number, valueSize = 20): [string, string][] {
  return Array.from({ length: n }, (_, i) => [`key-${i}-ключ`, `${i}`.padEnd(valueSize, "v")]);
}

async function write(
  dir: string,
  index: number,
  data: [string, string][],
  sessions: Uint8Array[] = [],
): Promise<string> {
  const header: SnapshotHeader = { index, term: 2, voters: ["a", "b", "c"], count: data.length };
  return await writeSnapshotFile(
    dir,
    encodeSnapshot(header, { ...contentOf(data, index), sessions }),
    snapshotName(index, 2),
  );
}

Deno.test("a snapshot file round-trips every entry, its revision, the sessions and the header", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = pairs(20_000);
    // U+FEFF leading a key or value is data (a decoder that takes it for a byte order mark drops it).
    data.push(["", ""], ["big", "x".repeat(600_000)], ["\ufeff", "\ufeff"], ["\ufeffk", "\ufeffé"]);
    const content = contentOf(data);
    // Revisions up to 2^53-1, and sessions of every size (a large one spans chunks).
    const entries = content.entries.map((e, i) => ({
      ...e,
      createIndex: i,
      modIndex: i === 7 ? 2 ** 53 - 1 : i + 1,
      version: i % 5 + 1,
    }));
    const sessions = [
      new Uint8Array(0),
      new Uint8Array([1, 2, 3]),
      new Uint8Array(400_000).fill(7),
    ];
    const header: SnapshotHeader = { index: 42, term: 2, voters: ["a", "b", "c"], count: 20_004 };
    const path = await writeSnapshotFile(
      dir,
      encodeSnapshot(header, { entries, sessions }),
      snapshotName(42, 2),
    );
    const loaded = await readSnapshotFile(path);
    assert.deepEqual(loaded.header, header);
    assert.deepEqual(loaded.entries, entries);
    assert.deepEqual(loaded.sessions, sessions);
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, [snapshotName(42, 2)], "no temp file left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a damaged or truncated snapshot is reported, never loaded", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = await write(dir, 7, pairs(500));
    const good = await Deno.readFile(path);
    for (const offset of [0, 9, 20, 100, Math.floor(good.length / 2), good.length - 5]) {
      const bad = good.slice();
      bad[offset]! ^= 0x40;
      await Deno.writeFile(path, bad);
      await assert.rejects(readSnapshotFile(path), CorruptFileError, `flip at ${offset}`);
    }
    for (const cut of [3, 100, good.length - 1]) {
      await Deno.writeFile(path, good.subarray(0, cut));
      await assert.rejects(
        readSnapshotFile(path),
        (e: unknown) => e instanceof CorruptFileError && e.message.includes(path),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A snapshot of a few MiB (more than the reader's buffer), with one entry larger than it. */
async function writeLarge(dir: string, fs: FileSystem): Promise<string> {
  const data = pairs(12_000, 100);
  data.splice(6_000, 0, ["key-15000-big", "b".repeat(1_500_000) + "é"]);
  data.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const header: SnapshotHeader = { index: 9, term: 2, voters: ["a"], count: data.length };
  const sessions = [new Uint8Array(3_000_000).fill(5), new Uint8Array([1])];
  return await writeSnapshotFile(
    dir,
    encodeSnapshot(header, { ...contentOf(data, 9), sessions, leases: [new Uint8Array([2])] }),
    snapshotName(9, 2),
    fs,
  );
}

/** A sink that keeps what it is given as strings, and can be told to throw at one entry. */
function collector(throwAt = -1): SnapshotEntrySink & { got: string[] } {
  const got: string[] = [];
  const text = new TextDecoder();
  return {
    got,
    addBytes(bytes, keyStart, keyEnd, valueStart, valueEnd, createIndex, modIndex, version) {
      if (got.length === throwAt) throw new RangeError("the sink refuses this entry");
      const key = text.decode(bytes.subarray(keyStart, keyEnd));
      const value = text.decode(bytes.subarray(valueStart, valueEnd));
      got.push(`${key}=${value.length}:${value.slice(-3)}@${createIndex},${modIndex},${version}`);
    },
  };
}

for (
  const [name, make] of [["real", () => realFs], ["simulated", () => new SimFileSystem()]] as const
) {
  Deno.test(`a snapshot larger than the read buffer is read as it decodes in memory (${name} files)`, async () => {
    const fs: FileSystem = make();
    const dir = name === "real" ? await Deno.makeTempDir() : "/snap";
    try {
      const path = await writeLarge(dir, fs);
      const bytes = await fs.readFile(path);
      assert.ok(bytes.length > 6_000_000);
      const whole = decodeSnapshot(bytes, path);
      const streamed = await readSnapshotFile(path, fs);
      assert.deepEqual(streamed, whole);
      assert.equal(streamed.entries.length, 12_001);
      const fromBytes = collector();
      const fromFile = collector();
      decodeSnapshot(bytes, path, fromBytes);
      const sunk = await readSnapshotFile(path, fs, fromFile);
      assert.deepEqual(fromFile.got, fromBytes.got);
      assert.equal(fromFile.got.length, 12_001);
      assert.ok(fromFile.got.includes("key-15000-big=1500001:bbé@9,9,1"));
      assert.deepEqual(sunk, { ...whole, entries: [] });
    } finally {
      if (name === "real") await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("a snapshot read as it is parsed still reports damage by its checksum, whatever the parse met first", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = await writeLarge(dir, realFs);
    const good = await Deno.readFile(path);
    // The sink's own error on a sound file is passed on.
    await assert.rejects(readSnapshotFile(path, realFs, collector(8_000)), RangeError);
    // Deep in the file: a key length made huge, a value byte, a byte the sink refuses.
    const view = new DataView(good.buffer);
    let at = 12 + view.getUint32(8);
    for (let i = 0; i < 8_000; i++) {
      at += 4 + view.getUint32(at) + 4 + view.getUint32(at + 4 + view.getUint32(at)) + 24;
    }
    for (
      const [offset, sink] of [[at, undefined], [at + 10, collector()], [
        at + 10,
        collector(8_000),
      ]] as const
    ) {
      const bad = good.slice();
      bad[offset]! ^= 0x40;
      await Deno.writeFile(path, bad);
      await assert.rejects(
        readSnapshotFile(path, realFs, sink),
        (e: unknown) => e instanceof CorruptFileError && e.message.includes("checksum mismatch"),
        `flip at ${offset}`,
      );
    }
    // Cut short at either side of the large entry and the large session.
    for (const cut of [2_000_000, good.length - 3_000_100, good.length - 12]) {
      await Deno.writeFile(path, good.subarray(0, cut));
      await assert.rejects(
        readSnapshotFile(path, realFs, collector()),
        CorruptFileError,
        `cut at ${cut}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("snapshots are listed newest first and pruned to the newest few", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const i of [5, 50, 20]) await write(dir, i, pairs(3));
    await Deno.writeTextFile(join(dir, "leftover.snap.tmp"), "x");
    assert.deepEqual((await listSnapshots(dir)).map((s) => s.index), [50, 20, 5]);
    await pruneSnapshots(dir, 2, { leftovers: true });
    assert.deepEqual((await listSnapshots(dir)).map((s) => s.index), [50, 20]);
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.ok(!names.some((n) => n.endsWith(".tmp")));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a process killed while writing a snapshot leaves the previous one usable", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await write(dir, 10, pairs(100));
    // A child writes a huge snapshot slowly; kill -9 it once the temp file exists.
    const code = `
      import { encodeSnapshot, snapshotName, writeSnapshotFile } from ${
      JSON.stringify(new URL("./snapshot_file.ts", import.meta.url).href)
    };
      function* slow() {
        for (let i = 0; ; i++) {
          yield { key: "k" + i, value: "v".repeat(100), createIndex: 1, modIndex: 1, version: 1 };
        }
      }
      await writeSnapshotFile(${
      JSON.stringify(dir)
    }, encodeSnapshot({ index: 99, term: 3, voters: [], count: 1e12 }, { entries: slow(), sessions: [] }), snapshotName(99, 3));
    `;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      stdout: "null",
      stderr: "null",
    }).spawn();
    const tmp = join(dir, `${snapshotName(99, 3)}.tmp`);
    const deadline = performance.now() + 20_000;
    while (true) {
      const size = await Deno.stat(tmp).then((s) => s.size, () => 0);
      if (size > 1_000_000) break;
      if (performance.now() > deadline) {
        child.kill("SIGKILL");
        await child.status;
        throw new Error("the child never started writing");
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    child.kill("SIGKILL");
    const status = await child.status;
    assert.equal(status.signal, "SIGKILL");
    const found = await listSnapshots(dir);
    assert.deepEqual(found.map((s) => s.index), [10], "the half-written snapshot is not listed");
    const loaded = await readSnapshotFile(found[0]!.path);
    assert.equal(loaded.entries.length, 100);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pruning after an install keeps received snapshots newer than the one installed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const i of [5, 9]) {
      await Deno.writeTextFile(join(dir, `${snapshotName(i, 2)}.recv`), "x");
    }
    await Deno.writeTextFile(join(dir, `${snapshotName(12, 2)}.recv.tmp`), "x");
    await pruneSnapshots(dir, 2, { receivedUpTo: 7 });
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names.sort(), [
      `${snapshotName(9, 2)}.recv`,
      `${snapshotName(12, 2)}.recv.tmp`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stale received files are removed once unneeded for long enough, unless kept; others are left alone", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const names = [
      `${snapshotName(5, 1)}.recv`, // stale
      `${snapshotName(6, 1)}.recv.tmp`, // stale upload leftover
      `${snapshotName(7, 1)}.recv`, // kept: waiting to be installed
      `${snapshotName(8, 1)}.recv.tmp`, // kept: its upload is in progress
      snapshotName(4, 1), // a snapshot, never touched
      `${snapshotName(9, 1)}.tmp`, // a local snapshot being written, never touched
    ];
    for (const name of names) await Deno.writeFile(join(dir, name), new Uint8Array(3));
    const keep = new Set([names[2]!, `${snapshotName(8, 1)}.recv`]);
    const seen = new Map<string, number>();
    const sweep = (now: number, keeping = keep) =>
      removeStaleReceived(dir, { keep: keeping, olderThanMs: 60_000, now, seen });
    // The first sweep only notes the unneeded files; the next one before a minute passed neither.
    assert.deepEqual(await sweep(1_000), []);
    assert.deepEqual(await sweep(60_999), []);
    // A file needed again is forgotten: its minute starts over when it is unneeded again.
    assert.deepEqual(await sweep(61_000, new Set([...keep, names[0]!])), [names[1]!]);
    assert.deepEqual(await sweep(62_000), []);
    assert.deepEqual(await sweep(122_000), [names[0]!]);
    const left = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    assert.deepEqual(left, names.slice(2).sort());
    assert.deepEqual(seen.size, 0, "removed files are forgotten");
    const missing = join(dir, "missing");
    assert.deepEqual(
      await removeStaleReceived(missing, { keep, olderThanMs: 0, now: 0, seen }),
      [],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a snapshot that finds the disk full leaves the previous one and no temp file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-snap-" });
  try {
    await write(dir, 10, pairs(5));
    const proto = Deno.FsFile.prototype;
    const { write: original } = proto;
    let writes = 0;
    proto.write = function (this: Deno.FsFile, p: Uint8Array) {
      if (++writes < 2) return original.call(this, p);
      return Promise.reject(
        Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" }),
      );
    };
    try {
      await assert.rejects(write(dir, 20, pairs(50_000)), { code: "ENOSPC" });
    } finally {
      proto.write = original;
    }
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, [snapshotName(10, 2)]);
    assert.equal((await readSnapshotFile(join(dir, snapshotName(10, 2)))).header.index, 10);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "snapshot files, their temp files and received ones are created with mode 0600 in a 0700 directory",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const root = await Deno.makeTempDir();
    try {
      const dir = join(root, "snapshots");
      const header: SnapshotHeader = { index: 5, term: 2, voters: ["a"], count: 1 };
      const name = snapshotName(5, 2);
      const tempModes: number[] = [];
      const chunks = async function* () {
        for await (const chunk of encodeSnapshot(header, contentOf([["k", "v"]]))) {
          // While the snapshot is being written, its temp file exists.
          tempModes.push((await Deno.stat(join(dir, `${name}.tmp`))).mode! & 0o777);
          yield chunk;
        }
      };
      const path = await writeSnapshotFile(dir, chunks(), name);
      const received = await writeSnapshotFile(
        dir,
        encodeSnapshot(header, contentOf([["k", "v"]])),
        `${name}.recv`,
      );
      assert.ok(tempModes.length > 0);
      assert.deepEqual(new Set(tempModes), new Set([0o600]));
      assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
      assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
      assert.equal((await Deno.stat(received)).mode! & 0o777, 0o600);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
