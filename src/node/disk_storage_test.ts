import assert from "node:assert/strict";
import { contentOf, pairsOf } from "../../testing/snapshot_pairs.ts";
import { join } from "node:path";
import { encodeSnapshot, snapshotName } from "../storage/snapshot_file.ts";
import { EntryType } from "../raft/types.ts";
import { CrashedError, SimFileSystem } from "../../testing/sim_fs.ts";
import { LOCK_FILE, openDiskStorage, UnknownMembersError } from "./disk_storage.ts";
import { CorruptFileError, DataLockedError, ForeignDataError } from "../storage/errors.ts";
import { loadHardState, saveHardState } from "../storage/hard_state.ts";
import { writeAll } from "../storage/fs.ts";

function paths(dir: string) {
  return {
    walDir: join(dir, "wal"),
    raftStatePath: join(dir, "raft-state.json"),
    logMetadataPath: join(dir, "log-metadata.json"),
    snapshotDir: join(dir, "snapshots"),
  };
}

Deno.test("installing a received snapshot that found the disk full part-way can be retried", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-disk-" });
  try {
    const storage = await openDiskStorage(paths(dir));
    const data = new TextEncoder().encode("x");
    await storage.append(
      [1, 2, 3].map((index) => ({ term: 1, index, type: EntryType.Normal, data })),
    );
    const meta = { index: 10, term: 2, voters: ["a"] };
    const body = ReadableStream.from(
      encodeSnapshot({ ...meta, count: 1 }, contentOf([["k", "v"]])),
    );
    assert.deepEqual(pairsOf(await storage.receiveSnapshot(meta, body)), [["k", "v"]]);
    const snapshotDir = paths(dir).snapshotDir;
    // The reset record and the rename go through; the log metadata's temp file finds the disk full.
    const proto = Deno.FsFile.prototype;
    const { write } = proto;
    let writes = 0;
    proto.write = function (this: Deno.FsFile, p: Uint8Array) {
      if (++writes === 2) {
        return Promise.reject(
          Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" }),
        );
      }
      return write.call(this, p);
    };
    try {
      await assert.rejects(storage.installReceived(meta), { code: "ENOSPC" });
    } finally {
      proto.write = write;
    }
    const names = [];
    for await (const e of Deno.readDir(snapshotDir)) if (e.name !== LOCK_FILE) names.push(e.name);
    assert.deepEqual(names, [snapshotName(10, 2)], "renamed, and no temp file left behind");

    await storage.installReceived(meta);
    await storage.close();

    const again = await openDiskStorage(paths(dir));
    assert.deepEqual(again.snapshot, meta);
    assert.deepEqual(pairsOf(again.snapshotData), [["k", "v"]]);
    assert.deepEqual(again.entries, []);
    assert.equal(again.wal.lastIndex, 10);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Entries `from`..`to` of term 1, each holding its index as text. */
function _entries(from: number, to: number) {
  const out = [];
  for (let index = from; index <= to; index++) {
    out.push({
      term: 1,
      index,
      type: EntryType.Normal,
      data: new TextEncoder().encode(`e${index}`),
    });
  }
  return out;
}

/**
 * A simulated disk on which the test can hold every sync: `held` resolves once a sync is waiting
 * (its write already made), and `release` lets the waiting syncs go on.
 */
function _holdableDisk() {
  let hold = false;
  let reached = Promise.withResolvers<void>();
  let gate = Promise.withResolvers<void>();
  const fs = new SimFileSystem({
    delay: async (op) => {
      if (!hold || op !== "sync") return;
      reached.resolve();
      await gate.promise;
    },
  });
  return {
    fs,
    hold() {
      hold = true;
      reached = Promise.withResolvers<void>();
      gate = Promise.withResolvers<void>();
    },
    get held() {
      return reached.promise;
    },
    release() {
      hold = false;
      gate.resolve();
    },
  };
}

/** Writes hard state and entries 1-3 (synced), then crashes with entries 4-5 written, unsynced. */
async function _crashMidAppend(random?: () => number): Promise<SimFileSystem> {
  const disk = _holdableDisk();
  const storage = await openDiskStorage(paths("/node"), { fs: disk.fs });
  await storage.saveHardState({ term: 1, vote: "a", commit: 3 });
  await storage.append(_entries(1, 3));
  disk.hold();
  const unsynced = storage.append(_entries(4, 5));
  await disk.held;
  const image = disk.fs.crash(random);
  disk.release();
  await assert.rejects(unsynced, CrashedError);
  return image;
}

Deno.test("on a simulated disk a crash keeps only what was synced, and start-up reads it back", async () => {
  const image = await _crashMidAppend();
  const storage = await openDiskStorage(paths("/node"), { fs: image });
  assert.deepEqual(storage.hardState, { term: 1, vote: "a", commit: 3 });
  assert.deepEqual(storage.entries, _entries(1, 3));
  assert.equal(storage.wal.tornTail, null);
  await storage.append(_entries(4, 4));
  await storage.close();
  const again = await openDiskStorage(paths("/node"), { fs: image.crash() });
  assert.deepEqual(again.entries, _entries(1, 4), "the write after recovery was synced");
  await again.close();
});

Deno.test("on a simulated disk a crash that tears the last write leaves a tail that start-up cuts", async () => {
  // Keep none of the segment's unsynced writes whole, then a fifth of the next one (entries 4-5):
  // part of entry 4's record.
  const draws = [0, 0.5, 0.2];
  const image = await _crashMidAppend(() => draws.shift() ?? 0);
  assert.equal(draws.length, 0, "the crash tore the write");
  const storage = await openDiskStorage(paths("/node"), { fs: image });
  assert.deepEqual(storage.entries, _entries(1, 3));
  const torn = storage.wal.tornTail;
  assert.ok(torn !== null && torn.bytes > 0, `torn tail: ${JSON.stringify(torn)}`);
  const size = (await image.stat(torn.path)).size;
  assert.equal(size, torn.offset, "the segment was cut back to its last whole record");
  await storage.append(_entries(4, 5));
  await storage.close();
  const again = await openDiskStorage(paths("/node"), { fs: image.crash() });
  assert.deepEqual(again.entries, _entries(1, 5));
  assert.equal(again.wal.tornTail, null);
  await again.close();
});

Deno.test("the files have one owner: another holder of the lock keeps start-up from reading or writing anything", async () => {
  // A torn tail that start-up would cut, and another process holding the lock.
  const draws = [0, 0.5, 0.2];
  const image = await _crashMidAppend(() => draws.shift() ?? 0);
  const lockPath = join(paths("/node").walDir, LOCK_FILE);
  const other = await image.tryLock(lockPath);
  assert.ok(other !== null);
  const sizes = async () =>
    await Promise.all(
      (await image.readDir("/node/wal")).map(async (e) =>
        `${e.name}:${(await image.stat(join("/node/wal", e.name))).size}`
      ),
    );
  const before = await sizes();
  await assert.rejects(openDiskStorage(paths("/node"), { fs: image }), (e) => {
    assert.ok(e instanceof DataLockedError, String(e));
    assert.equal(e.path, lockPath);
    return true;
  });
  assert.deepEqual(await sizes(), before, "the torn tail is still there: nothing was cut");
  other.release();
  const storage = await openDiskStorage(paths("/node"), { fs: image });
  assert.ok(storage.wal.tornTail !== null, "once the lock is free, start-up cuts the tail");
  // While it is open, a second start-up on the same files is refused; after close it is not.
  await assert.rejects(openDiskStorage(paths("/node"), { fs: image }), DataLockedError);
  await storage.close();
  const again = await openDiskStorage(paths("/node"), { fs: image });
  // A crash (the process dies with the machine) releases it too.
  const after = await openDiskStorage(paths("/node"), { fs: image.crash() });
  assert.deepEqual(after.entries, again.entries);
  await after.close();
});

Deno.test("a second start-up that shares only the hard state, the log metadata or the snapshots is refused", async () => {
  const fs = new SimFileSystem();
  const first = await openDiskStorage(paths("/a"), { fs, nodeId: "n1" });
  try {
    const shared = [
      ["raftStatePath", "/a/raft-state.json.lock"],
      ["logMetadataPath", "/a/log-metadata.json.lock"],
      ["snapshotDir", "/a/snapshots/LOCK"],
    ] as const;
    for (const [key, lockFile] of shared) {
      // Another process with its own files but this one of the first's (its own WAL directory).
      const other = { ...paths("/b"), [key]: paths("/a")[key] };
      await assert.rejects(
        openDiskStorage(other, { fs, nodeId: "n1" }),
        (e) => e instanceof DataLockedError && e.path === lockFile,
        key,
      );
      // The refused start-up let go of the locks it had taken: /b opens once /a is not shared.
      const own = await openDiskStorage(paths("/b"), { fs, nodeId: "n1" });
      await own.close();
    }
  } finally {
    await first.close();
  }
  // Closed, they open again.
  const again = await openDiskStorage(paths("/a"), { fs, nodeId: "n1" });
  await again.close();
  // Snapshots in the WAL directory: its one LOCK file is locked once.
  const together = await openDiskStorage({ ...paths("/c"), snapshotDir: "/c/wal" }, { fs });
  await together.close();
});

Deno.test("on a real disk a second start-up on open files is refused until they are closed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-lock-" });
  try {
    const storage = await openDiskStorage(paths(dir));
    await storage.append(_entries(1, 2));
    await assert.rejects(openDiskStorage(paths(dir)), DataLockedError);
    await storage.close();
    const again = await openDiskStorage(paths(dir));
    assert.deepEqual(again.entries, _entries(1, 2));
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("on a simulated disk a snapshot taken, received and installed survives a crash", async () => {
  const fs = new SimFileSystem();
  const storage = await openDiskStorage(paths("/node"), { fs });
  await storage.append(_entries(1, 6));
  const taken = { index: 4, term: 1, voters: ["a"] };
  await storage.saveSnapshot(taken, 2, contentOf([["a", "1"], ["b", "2"]]));
  await storage.snapshotTaken(taken, 4);
  const meta = { index: 9, term: 2, voters: ["a"] };
  const body = ReadableStream.from(encodeSnapshot({ ...meta, count: 1 }, contentOf([["k", "v"]])));
  assert.deepEqual(pairsOf(await storage.receiveSnapshot(meta, body)), [["k", "v"]]);
  const sent = await Array.fromAsync(await storage.openSnapshot(taken));
  assert.ok(sent.reduce((n, c) => n + c.length, 0) > 0);

  let image = fs.crash();
  let again = await openDiskStorage(paths("/node"), { fs: image });
  assert.deepEqual(again.snapshot, taken);
  assert.deepEqual(pairsOf(again.snapshotData), [["a", "1"], ["b", "2"]]);
  assert.deepEqual(again.entries, _entries(5, 6));
  // Start-up removed the received file: it can no longer be installed.
  await assert.rejects(again.installReceived(meta), Deno.errors.NotFound);
  await again.receiveSnapshot(
    meta,
    ReadableStream.from(encodeSnapshot({ ...meta, count: 1 }, contentOf([["k", "v"]]))),
  );
  await again.installReceived(meta);

  image = image.crash();
  again = await openDiskStorage(paths("/node"), { fs: image });
  assert.deepEqual(again.snapshot, meta);
  assert.deepEqual(pairsOf(again.snapshotData), [["k", "v"]]);
  assert.deepEqual(again.entries, []);
  assert.equal(again.wal.lastIndex, 9);
  await again.close();
});

Deno.test("a snapshot damaged past the part already parsed stops start-up: nothing of it is used", async () => {
  const fs = new SimFileSystem();
  const storage = await openDiskStorage(paths("/node"), { fs });
  await storage.append(_entries(1, 6));
  const taken = { index: 4, term: 1, voters: ["a"] };
  // About 2.5 MB: more than the reader's buffer, so entries reach the map before the damage.
  const data = Array.from({ length: 20_000 }, (_, i): [string, string] => [
    `key-${String(i).padStart(6, "0")}`,
    "v".repeat(100),
  ]);
  await storage.saveSnapshot(taken, data.length, contentOf(data));
  await storage.snapshotTaken(taken, 4);
  await storage.close();
  const again = await openDiskStorage(paths("/node"), { fs });
  assert.equal(pairsOf(again.snapshotData).length, 20_000);
  await again.close();

  const path = join(paths("/node").snapshotDir, snapshotName(4, 1));
  const bytes = await fs.readFile(path);
  bytes[bytes.length - 200]! ^= 0x01;
  {
    using file = await fs.open(path, "truncate");
    await writeAll(file, bytes);
    await file.sync();
  }
  await assert.rejects(
    openDiskStorage(paths("/node"), { fs }),
    (e: unknown) => e instanceof CorruptFileError && e.message.includes("checksum mismatch"),
  );
});

Deno.test("a restored backup starts the cluster given at start, not the one it was taken in", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-disk-" });
  try {
    // A backup of a cluster that had grown: other voters, a learner, their addresses.
    const backup = join(dir, "backup.snap");
    const header = {
      index: 7,
      term: 2,
      voters: ["old-1", "old-2", "old-3"],
      learners: ["old-4"],
      info: { "old-4": '{"rpc_url":"http://h4:1","api_url":"http://h4:2"}' },
      count: 1,
    };
    const file = await Deno.open(backup, { write: true, create: true });
    await ReadableStream.from(encodeSnapshot(header, contentOf([["k", "v"]]))).pipeTo(
      file.writable,
    );
    const restored = await openDiskStorage(paths(join(dir, "a")), {
      restoreFrom: backup,
      restoreVoters: ["n1", "n2", "n3"],
    });
    assert.deepEqual(restored.snapshot, { index: 7, term: 2, voters: ["n1", "n2", "n3"] });
    assert.deepEqual(pairsOf(restored.snapshotData), [["k", "v"]]);
    await restored.close();
    // Without voters given, the backup's configuration is kept as it was.
    const kept = await openDiskStorage(paths(join(dir, "b")), { restoreFrom: backup });
    assert.deepEqual(kept.snapshot, {
      index: 7,
      term: 2,
      voters: header.voters,
      learners: header.learners,
      info: header.info,
    });
    await kept.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("start-up takes the commit index from the log's commit records when they are past the hard state's", async () => {
  const fs = new SimFileSystem();
  const storage = await openDiskStorage(paths("/node"), { fs });
  await storage.saveHardState({ term: 2, vote: "a", commit: 1 });
  await storage.append(_entries(1, 4), 3);
  await storage.recordCommit(4);
  await storage.close();
  // A process that died: the unsynced record is there.
  const killed = await openDiskStorage(paths("/node"), { fs });
  assert.deepEqual(killed.hardState, { term: 2, vote: "a", commit: 4 });
  await killed.close();
  // A machine that crashed: the record synced with the entries is.
  const image = fs.crash();
  const crashed = await openDiskStorage(paths("/node"), { fs: image });
  assert.deepEqual(crashed.hardState, { term: 2, vote: "a", commit: 3 });
  // A hard state written later with a higher commit index wins.
  await crashed.saveHardState({ term: 3, vote: "", commit: 4 });
  await crashed.close();
  const again = await openDiskStorage(paths("/node"), { fs: image.crash() });
  assert.deepEqual(again.hardState, { term: 3, vote: "", commit: 4 });
  await again.close();
});

Deno.test("start-up refuses a log that ends before what the node recorded as committed (a WAL segment deleted or cut short)", async () => {
  for (const damage of ["deleted", "cut short"]) {
    const fs = new SimFileSystem();
    const storage = await openDiskStorage(paths("/node"), { fs });
    await storage.saveHardState({ term: 1, vote: "a", commit: 0 });
    await storage.append(_entries(1, 4), 4);
    storage.rollLog();
    await storage.append(_entries(5, 8), 8);
    await storage.saveHardState({ term: 2, vote: "a", commit: 8 });
    await storage.close();
    const segments = (await fs.readDir("/node/wal")).map((e) => e.name).filter((n) =>
      n.endsWith(".wal")
    ).sort();
    assert.equal(segments.length, 2);
    const newest = `/node/wal/${segments[1]}`;
    if (damage === "deleted") {
      await fs.remove(newest);
    } else {
      const file = await fs.open(newest, "append");
      await file.truncate(Math.floor((await fs.stat(newest)).size / 2));
      file.close();
    }
    await assert.rejects(
      openDiskStorage(paths("/node"), { fs }),
      (e) =>
        e instanceof CorruptFileError && e.path === "/node/wal" &&
        /the log ends at index [4-7], but the node recorded index 8 as committed/.test(e.message),
      damage,
    );
  }
});

Deno.test("start-up says when it cuts a torn tail, and when the hard state is missing beside a log", async () => {
  const notices: string[] = [];
  const draws = [0, 0.5, 0.2]; // as in the torn-tail test above
  const image = await _crashMidAppend(() => draws.shift() ?? 0);
  const storage = await openDiskStorage(paths("/node"), {
    fs: image,
    onNotice: (m) => notices.push(m),
  });
  assert.ok(storage.wal.tornTail !== null);
  assert.equal(notices.length, 1, notices.join("\n"));
  assert.match(notices[0]!, /^cut \d+ bytes off the end of \/node\/wal\/.*\.wal \(offset \d+\)/);
  await storage.close();
  notices.length = 0;
  await image.remove("/node/raft-state.json");
  const again = await openDiskStorage(paths("/node"), {
    fs: image,
    onNotice: (m) => notices.push(m),
  });
  assert.deepEqual(again.hardState, { term: 0, vote: "", commit: 0 });
  assert.equal(notices.length, 1, notices.join("\n"));
  assert.match(notices[0]!, /raft-state\.json is missing but the log holds entries/);
  await again.close();
});

/** Every file below `dir` with its bytes, by path. */
async function _files(dir: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    if (e.isDirectory) { for (const [p, bytes] of await _files(path)) files.set(p, bytes); }
    else files.set(path, (await Deno.readFile(path)).join(","));
  }
  return files;
}

Deno.test("files whose hard state records another node are refused before anything is written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-owner-" });
  try {
    const storage = await openDiskStorage(paths(dir), { nodeId: "node-2" });
    await storage.saveHardState({ term: 5, vote: "node-3", commit: 0 });
    await storage.append(_entries(1, 2));
    await storage.close();
    const hardState = await loadHardState(paths(dir).raftStatePath);
    assert.deepEqual(hardState, { nodeId: "node-2", term: 5, vote: "node-3", commit: 0 });
    const before = await _files(dir);

    await assert.rejects(openDiskStorage(paths(dir), { nodeId: "node-1" }), (e: unknown) => {
      assert.ok(e instanceof ForeignDataError, String(e));
      assert.equal(e.owner, "node-2");
      assert.ok(
        e.message.startsWith(
          `"${
            paths(dir).raftStatePath
          }" belongs to node "node-2", not "node-1": these are another node's files`,
        ),
        e.message,
      );
      return true;
    });
    assert.deepEqual(await _files(dir), before, "the refused start-up changed a file");

    // Its own node opens them (the refusal let the lock go), and so does a tool that names none.
    for (const options of [{ nodeId: "node-2" }, {}]) {
      const again = await openDiskStorage(paths(dir), options);
      assert.deepEqual(again.hardState, { term: 5, vote: "node-3", commit: 0 });
      assert.deepEqual(again.entries, _entries(1, 2));
      await again.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a hard state saved before node ids were recorded is taken by any node, which records its id on its next save", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-owner-" });
  try {
    await Deno.mkdir(dir, { recursive: true });
    await saveHardState(paths(dir).raftStatePath, { term: 5, vote: "node-3", commit: 0 });
    const storage = await openDiskStorage(paths(dir), { nodeId: "node-1" });
    assert.deepEqual(storage.hardState, { term: 5, vote: "node-3", commit: 0 });
    await storage.saveHardState({ term: 6, vote: "", commit: 0 });
    await storage.close();
    assert.deepEqual(await loadHardState(paths(dir).raftStatePath), {
      nodeId: "node-1",
      term: 6,
      vote: "",
      commit: 0,
    });
    await assert.rejects(openDiskStorage(paths(dir), { nodeId: "node-2" }), ForeignDataError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a new node records its cluster's id before anything else; files with data or an id keep theirs", async () => {
  const fs = new SimFileSystem();
  const storage = await openDiskStorage(paths("/a"), { fs, nodeId: "n1", clusterId: "c1" });
  assert.equal(storage.clusterId, "c1");
  await storage.close();
  // Recorded and synced at start-up, before the node wrote anything.
  const image = fs.crash();
  assert.deepEqual(await loadHardState(paths("/a").raftStatePath, image), {
    nodeId: "n1",
    clusterId: "c1",
    term: 0,
    vote: "",
    commit: 0,
  });
  // Once recorded, the id is the files' own: a start with another one (a changed cluster file)
  // keeps it, and every save writes it.
  const again = await openDiskStorage(paths("/a"), { fs: image, nodeId: "n1", clusterId: "c2" });
  assert.equal(again.clusterId, "c1");
  again.adoptClusterId("c3");
  assert.equal(again.clusterId, "c1", "an id known is kept");
  await again.saveHardState({ term: 4, vote: "n2", commit: 0 });
  await again.close();
  assert.equal((await loadHardState(paths("/a").raftStatePath, image)).clusterId, "c1");

  // Files with data but no id (written before ids were recorded) stay without one.
  const old = new SimFileSystem();
  const first = await openDiskStorage(paths("/b"), { fs: old });
  await first.append(_entries(1, 2));
  await first.close();
  const upgraded = await openDiskStorage(paths("/b"), { fs: old, clusterId: "c1" });
  assert.equal(upgraded.clusterId, undefined);
  await upgraded.saveHardState({ term: 1, vote: "", commit: 0 });
  await upgraded.close();
  assert.equal((await loadHardState(paths("/b").raftStatePath, old)).clusterId, undefined);
});

Deno.test("a new node records the voters its cluster starts with; later starts and saves keep them", async () => {
  const fs = new SimFileSystem();
  const opts = { fs, nodeId: "n1", clusterId: "c1", initialVoters: ["n1", "n2", "n3"] };
  const storage = await openDiskStorage(paths("/a"), opts);
  assert.deepEqual(storage.initialVoters, ["n1", "n2", "n3"]);
  await storage.close();
  const image = fs.crash();
  assert.deepEqual(
    (await loadHardState(paths("/a").raftStatePath, image)).initialVoters,
    ["n1", "n2", "n3"],
  );
  // A later start with an edited cluster file keeps the recorded voters, and saves carry them.
  const again = await openDiskStorage(paths("/a"), { ...opts, fs: image, initialVoters: ["n1"] });
  assert.deepEqual(again.initialVoters, ["n1", "n2", "n3"]);
  await again.saveHardState({ term: 4, vote: "n2", commit: 0 });
  await again.close();
  const saved = await loadHardState(paths("/a").raftStatePath, image);
  assert.deepEqual(saved.initialVoters, ["n1", "n2", "n3"]);
  assert.equal(saved.term, 4);

  // A node that joins (no cluster id given) records none.
  const other = new SimFileSystem();
  const joined = await openDiskStorage(paths("/b"), {
    fs: other,
    nodeId: "n4",
    initialVoters: ["n4"],
  });
  assert.equal(joined.initialVoters, undefined);
  await joined.saveHardState({ term: 1, vote: "", commit: 0 });
  await joined.close();
  assert.equal((await loadHardState(paths("/b").raftStatePath, other)).initialVoters, undefined);
});

Deno.test("files of a version that recorded no initial voters: a cluster file that made the recorded cluster id is recorded; another is refused while it would decide the members", async () => {
  const legacy = async (confEntry: boolean) => {
    const fs = new SimFileSystem();
    const storage = await openDiskStorage(paths("/a"), { fs, nodeId: "n1" });
    await storage.append(_entries(1, 3));
    if (confEntry) {
      await storage.append([{
        term: 1,
        index: 4,
        type: EntryType.ConfChange,
        data: new Uint8Array(),
      }]);
    }
    await storage.close();
    // As the earlier version wrote it: the cluster's id, no voters.
    const state = { nodeId: "n1", clusterId: "c1", term: 1, vote: "n2", commit: 3 };
    await saveHardState(paths("/a").raftStatePath, state, fs);
    return fs;
  };
  // Another cluster file (its members make another id) with only the bootstrap configuration.
  const edited = await legacy(false);
  await assert.rejects(
    openDiskStorage(paths("/a"), {
      fs: edited,
      nodeId: "n1",
      clusterId: "c2",
      initialVoters: ["n1"],
    }),
    (e) =>
      e instanceof UnknownMembersError &&
      /records cluster c1, the file and token make c2/.test(e.message),
  );
  // The file the cluster started with: recorded from then on.
  const voters = ["n1", "n2", "n3"];
  const same = await openDiskStorage(paths("/a"), {
    fs: edited,
    nodeId: "n1",
    clusterId: "c1",
    initialVoters: voters,
  });
  assert.deepEqual(same.initialVoters, voters);
  await same.close();
  // Recorded at once (a stop that saves nothing keeps it), beside what was there.
  assert.deepEqual(await loadHardState(paths("/a").raftStatePath, edited.crash()), {
    nodeId: "n1",
    clusterId: "c1",
    initialVoters: voters,
    term: 1,
    vote: "n2",
    commit: 3,
  });
  // With a configuration entry in the log, the log says who the members are: not refused.
  const changed = await legacy(true);
  const opened = await openDiskStorage(paths("/a"), {
    fs: changed,
    nodeId: "n1",
    clusterId: "c2",
    initialVoters: ["n1"],
  });
  assert.equal(opened.initialVoters, undefined);
  await opened.close();
});

Deno.test("an adopted cluster id is durable before the first entry or snapshot it stores", async () => {
  for (const first of ["append", "install"] as const) {
    const fs = new SimFileSystem();
    const storage = await openDiskStorage(paths("/j"), { fs, nodeId: "n4" });
    assert.equal(storage.clusterId, undefined, "a node that joins knows no cluster");
    storage.adoptClusterId("c1");
    assert.equal(storage.clusterId, "c1");
    if (first === "append") {
      await storage.append(_entries(1, 2));
    } else {
      const meta = { index: 10, term: 2, voters: ["n1"] };
      const body = ReadableStream.from(
        encodeSnapshot({ ...meta, count: 1 }, contentOf([["k", "v"]])),
      );
      await storage.receiveSnapshot(meta, body);
      await storage.installReceived(meta);
    }
    // A crash before the node saved a hard state of its own: the id is on disk all the same.
    const image = fs.crash();
    const again = await openDiskStorage(paths("/j"), { fs: image, nodeId: "n4" });
    assert.equal(again.clusterId, "c1", first);
    assert.deepEqual(again.hardState, { term: 0, vote: "", commit: 0 }, first);
    await again.close();
  }
});

Deno.test("a new node whose disk is full at its first start records its cluster's id with its first write", async () => {
  const fs = new SimFileSystem();
  fs.setCapacity(0);
  const storage = await openDiskStorage(paths("/f"), { fs, nodeId: "n1", clusterId: "c1" });
  assert.equal(storage.clusterId, "c1");
  await assert.rejects(storage.append(_entries(1, 1)), (e: Error) => /space/i.test(e.message));
  fs.setCapacity(Infinity);
  await storage.append(_entries(1, 1));
  await storage.close();
  const image = fs.crash();
  assert.equal((await loadHardState(paths("/f").raftStatePath, image)).clusterId, "c1");
});
