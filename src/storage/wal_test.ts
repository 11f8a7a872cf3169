import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { SimFileSystem } from "../../testing/sim_fs.ts";
import { mountTmpfs, unmount } from "../../testing/tmpfs.ts";
import { type Entry, EntryType } from "../raft/types.ts";
import { WalCorruptionError } from "./errors.ts";
import { segmentName, Wal, type WalOptions } from "./wal.ts";
import { ENTRY_FIELDS_SIZE, HEADER_SIZE, RecordEncoder } from "./wal_record.ts";

/** An entry whose data (never containing a zero byte) depends on its index and term. */
function _entry(index: number, term = 1, size = 20): Entry {
  const data = new Uint8Array(size).fill(0x41 + ((index + term) % 26));
  return { term, index, type: EntryType.Normal, data };
}

function _range(from: number, to: number, term = 1, size = 20): Entry[] {
  return Array.from({ length: to - from + 1 }, (_, k) => _entry(from + k, term, size));
}

/** The on-disk size of an entry record. */
function _recordSize(dataSize = 20): number {
  return HEADER_SIZE + ENTRY_FIELDS_SIZE + dataSize;
}

async function _withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-wal-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Opens the WAL, passes it to `fn`, and closes it even if `fn` throws. */
async function _using<T>(
  dir: string,
  fn: (wal: Wal) => Promise<T>,
  options?: WalOptions,
): Promise<T> {
  const wal = await Wal.open(dir, options);
  try {
    return await fn(wal);
  } finally {
    await wal.close();
  }
}

/** Writes `entries` in the given batches and closes the WAL. */
async function _write(dir: string, batches: Entry[][], options?: WalOptions): Promise<void> {
  await _using(dir, async (wal) => {
    for (const batch of batches) await wal.append(batch);
  }, options);
}

async function _recovered(dir: string, options?: WalOptions): Promise<Entry[]> {
  return await _using(dir, (wal) => Promise.resolve(wal.entries), options);
}

async function _flipByte(path: string, offset: number): Promise<void> {
  const bytes = await Deno.readFile(path);
  bytes[offset]! ^= 0xff;
  await Deno.writeFile(path, bytes);
}

async function _size(path: string): Promise<number> {
  return (await Deno.stat(path)).size;
}

async function _assertCorrupt(dir: string, path: string, offset: number): Promise<void> {
  await assert.rejects(Wal.open(dir), (error: unknown) => {
    assert.ok(error instanceof WalCorruptionError, String(error));
    assert.equal(error.path, path);
    assert.equal(error.offset, offset);
    assert.ok(
      error.message.startsWith(`WAL segment "${path}" is corrupt at byte offset ${offset}: `),
      error.message,
    );
    return true;
  });
}

Deno.test("Wal.open() creates a missing directory and starts with an empty log", async () => {
  await _withDir(async (parent) => {
    const dir = join(parent, "node-1", "wal");
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, []);
      assert.equal(wal.lastIndex, 0);
      assert.equal(wal.tornTail, null);
      assert.deepEqual(wal.segmentPaths, []);
      return Promise.resolve();
    });
    assert.ok((await Deno.stat(dir)).isDirectory);
  });
});

Deno.test("Wal.open() refuses a path that is a file", async () => {
  await _withDir(async (dir) => {
    const path = join(dir, "wal");
    await Deno.writeTextFile(path, "");
    await assert.rejects(Wal.open(path), Deno.errors.NotADirectory);
  });
});

Deno.test("Wal.open() rejects a segment size that is not a positive integer", async () => {
  await _withDir(async (dir) => {
    await assert.rejects(Wal.open(dir, { segmentSize: 0 }), {
      name: "RangeError",
      message: "WAL segmentSize must be a positive integer, found 0",
    });
  });
});

Deno.test("Wal round-trips many entries across several segments", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 1000 };
    const all = _range(1, 300, 1, 0).map((e) => ({ ...e, data: new Uint8Array(e.index % 50) }));
    const batches: Entry[][] = [];
    for (let index = 1, size = 1; index <= all.length; index += size, size = (size % 7) + 1) {
      batches.push(all.slice(index - 1, index - 1 + size));
    }
    await _write(dir, batches, options);
    await _using(dir, async (wal) => {
      assert.deepEqual(wal.entries, all);
      assert.equal(wal.lastIndex, 300);
      assert.equal(wal.tornTail, null);
      assert.ok(wal.segmentPaths.length >= 10, `${wal.segmentPaths.length} segments`);
      let expectedFirst = 1;
      for (const [k, path] of wal.segmentPaths.entries()) {
        assert.equal(basename(path), segmentName(k + 1, expectedFirst));
        const size = await _size(path);
        assert.ok(size <= 1000, `${path} has ${size} bytes`);
        // The next segment starts where the batches written to this one ended.
        let filled = 0;
        while (filled < size) {
          filled += _recordSize(all[expectedFirst - 1]!.data.length);
          expectedFirst++;
        }
      }
    }, options);
  });
});

Deno.test("Wal.open() after a restart returns exactly what was appended and appends continue", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 3), [_entry(4, 2)], _range(5, 9, 2)]);
    assert.deepEqual(await _recovered(dir), [..._range(1, 3), _entry(4, 2), ..._range(5, 9, 2)]);
    await _write(dir, [_range(10, 12, 3)]);
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, [
        ..._range(1, 3),
        _entry(4, 2),
        ..._range(5, 9, 2),
        ..._range(10, 12, 3),
      ]);
      assert.equal(wal.lastIndex, 12);
      assert.equal(wal.segmentPaths.length, 1);
      return Promise.resolve();
    });
  });
});

Deno.test("Wal keeps a single batch larger than the segment size whole in one segment", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 100 };
    await _write(dir, [_range(1, 10), _range(11, 12)], options);
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, _range(1, 12));
      assert.deepEqual(wal.segmentPaths.map((path) => basename(path)), [
        segmentName(1, 1),
        segmentName(2, 11),
      ]);
      return Promise.resolve();
    }, options);
  });
});

Deno.test("Wal.append() at or below the last index replaces the suffix, also after a restart", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 10));
      await wal.append(_range(6, 8, 2)); // a follower overwriting a conflicting suffix
      assert.equal(wal.lastIndex, 8);
      await wal.append(_range(9, 9, 2));
    });
    assert.deepEqual(await _recovered(dir), [..._range(1, 5), ..._range(6, 9, 2)]);
    await _write(dir, [_range(1, 2, 3)]); // replace everything
    assert.deepEqual(await _recovered(dir), _range(1, 2, 3));
  });
});

Deno.test("Wal replays a truncation that reaches back into an earlier segment", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 2 * _recordSize() };
    await _write(
      dir,
      [_range(1, 2), _range(3, 4), _range(5, 6), _range(2, 3, 2), [_entry(4, 3)]],
      options,
    );
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, [_entry(1), ..._range(2, 3, 2), _entry(4, 3)]);
      assert.equal(wal.lastIndex, 4);
      assert.equal(wal.segmentPaths.length, 5);
      assert.equal(basename(wal.segmentPaths[3]!), segmentName(4, 2));
      return Promise.resolve();
    }, options);
  });
});

Deno.test("Wal.append() rejects a batch it could not replay, without writing it", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 3));
      await assert.rejects(wal.append([_entry(5)]), {
        name: "RangeError",
        message:
          "Cannot append entry 5: the WAL's last index is 3, so the next entry needs an index from 1 to 4",
      });
      await assert.rejects(wal.append([_entry(0)]), RangeError);
      await assert.rejects(wal.append([_entry(4), _entry(6)]), {
        name: "RangeError",
        message: "Cannot append a batch with a gap: entry 1 has index 6, expected 5",
      });
      await assert.rejects(wal.append([_entry(4), { ..._entry(5), term: 0 }]), RangeError);
      await wal.append([]);
      await wal.append([_entry(4)]); // the WAL is still usable
    });
    assert.deepEqual(await _recovered(dir), _range(1, 4));
  });
});

Deno.test("Wal.open() cuts a torn final record off at every byte and appends continue", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 5), [_entry(6)]]);
    const [path] = await _using(dir, (wal) => Promise.resolve(wal.segmentPaths));
    assert.ok(path !== undefined);
    const full = await Deno.readFile(path);
    const previousEnd = 5 * _recordSize();
    assert.equal(full.length, previousEnd + _recordSize());

    for (let cut = previousEnd + 1; cut < full.length; cut++) {
      await Deno.writeFile(path, full);
      await Deno.truncate(path, cut);
      await _using(dir, async (wal) => {
        assert.deepEqual(wal.entries, _range(1, 5), `cut at ${cut}`);
        assert.equal(wal.lastIndex, 5);
        assert.deepEqual(wal.tornTail, { path, offset: previousEnd, bytes: cut - previousEnd });
        assert.equal(await _size(path), previousEnd);
        await wal.append([_entry(6, 2, 7), _entry(7, 2)]);
      });
      await _using(dir, (wal) => {
        assert.deepEqual(wal.entries, [..._range(1, 5), _entry(6, 2, 7), _entry(7, 2)]);
        assert.equal(wal.tornTail, null);
        return Promise.resolve();
      });
    }
  });
});

Deno.test("Wal.open() removes a last segment left empty by a torn tail", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: _recordSize() };
    await _write(dir, [[_entry(1)], [_entry(2)]], options);
    const second = join(dir, segmentName(2, 2));
    await Deno.truncate(second, 5);
    await _using(dir, async (wal) => {
      assert.deepEqual(wal.entries, [_entry(1)]);
      assert.deepEqual(wal.tornTail, { path: second, offset: 0, bytes: 5 });
      assert.deepEqual(wal.segmentPaths, [join(dir, segmentName(1, 1))]);
      await assert.rejects(Deno.stat(second), Deno.errors.NotFound);
      await wal.append([_entry(2, 2)]);
    }, options);
    assert.deepEqual(await _recovered(dir, options), [_entry(1), _entry(2, 2)]);
  });
});

Deno.test("Wal.open() cuts off a zero-filled tail after the last whole record", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 3)]);
    const path = join(dir, segmentName(1, 1));
    const end = await _size(path);
    for (const zeros of [1, 15, 16, 100, 4096]) {
      await Deno.truncate(path, end + zeros);
      await _using(dir, (wal) => {
        assert.deepEqual(wal.entries, _range(1, 3));
        assert.deepEqual(wal.tornTail, { path, offset: end, bytes: zeros });
        return Promise.resolve();
      });
      assert.equal(await _size(path), end);
    }
  });
});

Deno.test("Wal.open() cuts off a final record whose later sectors are zeros", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 3), [_entry(4, 1, 2000)]]);
    const path = join(dir, segmentName(1, 1));
    const full = await Deno.readFile(path);
    const recordStart = 3 * _recordSize();
    const sector = Math.ceil((recordStart + HEADER_SIZE + 1) / 512) * 512;
    const torn = full.slice();
    torn.fill(0, sector);
    await Deno.writeFile(path, torn);
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, _range(1, 3));
      assert.deepEqual(wal.tornTail, {
        path,
        offset: recordStart,
        bytes: full.length - recordStart,
      });
      return Promise.resolve();
    });

    // Zeros that stop before the end of the file are damage, not a torn write.
    const damaged = full.slice();
    damaged.fill(0, sector, sector + 512);
    await Deno.writeFile(path, damaged);
    await _assertCorrupt(dir, path, recordStart);
  });
});

Deno.test("Wal.open() reports a flipped byte in an earlier record of the last segment", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 3)]);
    const path = join(dir, segmentName(1, 1));
    const full = await Deno.readFile(path);
    const recordStart = _recordSize(); // the second of three records
    for (const k of [0, 1, 3, 4, 5, 7, 8, 11, 12, 15, 16, 23, 24, 32, 33, 40, _recordSize() - 1]) {
      await Deno.writeFile(path, full);
      await _flipByte(path, recordStart + k);
      await _assertCorrupt(dir, path, recordStart);
    }
  });
});

Deno.test("Wal.open() with skipThrough keeps only the entries after it, and still checks the rest", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 2 * _recordSize() };
    await _write(
      dir,
      [_range(1, 2), _range(3, 4), _range(5, 6), _range(2, 3, 2), [_entry(4, 3)], _range(5, 6, 3)],
      options,
    );
    const cases: [number, number][] = [[0, 1], [1, 2], [3, 4], [5, 6], [6, 7], [9, 7]];
    for (const [skip, kept] of cases) {
      await _using(dir, (wal) => {
        const all = [_entry(1), ..._range(2, 3, 2), _entry(4, 3), ..._range(5, 6, 3)];
        assert.deepEqual(wal.entries, all.slice(kept - 1), `skipThrough ${skip}`);
        assert.equal(wal.lastIndex, 6);
        // A kept entry's data is its own, not a view of the segment.
        for (const e of wal.entries) assert.equal(e.data.buffer.byteLength, e.data.length);
        return Promise.resolve();
      }, { ...options, skipThrough: skip });
    }
    // Damage below the skipped index is still found.
    const path = join(dir, segmentName(1, 1));
    await _flipByte(path, 30);
    await assert.rejects(Wal.open(dir, { ...options, skipThrough: 5 }), WalCorruptionError);
  });
});

Deno.test("Wal.open() reports a flipped byte anywhere in an older segment", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 2 * _recordSize() };
    await _write(dir, [_range(1, 2), _range(3, 4), _range(5, 6)], options);
    const path = join(dir, segmentName(2, 3));
    const full = await Deno.readFile(path);
    for (const k of [0, 4, 9, 13, 16, 30, 50, _recordSize(), _recordSize() + 20, full.length - 1]) {
      await Deno.writeFile(path, full);
      await _flipByte(path, k);
      await _assertCorrupt(dir, path, k < _recordSize() ? 0 : _recordSize());
    }
  });
});

Deno.test("Wal.open() reports a damaged final record whose bytes are all present", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 3)]);
    const path = join(dir, segmentName(1, 1));
    const full = await Deno.readFile(path);
    const recordStart = 2 * _recordSize();
    for (const k of [0, 4, 8, 12, 16, 24, 33, _recordSize() - 1]) {
      await Deno.writeFile(path, full);
      await _flipByte(path, recordStart + k);
      await _assertCorrupt(dir, path, recordStart);
    }
  });
});

Deno.test("Wal.open() reports a partial record at the end of an older segment", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 2 * _recordSize() };
    await _write(dir, [_range(1, 2), _range(3, 4)], options);
    const path = join(dir, segmentName(1, 1));
    await Deno.truncate(path, 2 * _recordSize() - 1);
    await _assertCorrupt(dir, path, _recordSize());
  });
});

Deno.test("Wal.open() reports a gap in the indices or in the segment sequence", async () => {
  await _withDir(async (dir) => {
    const encoder = new RecordEncoder();
    for (const index of [1, 2, 4]) encoder.addEntry(_entry(index));
    const path = join(dir, segmentName(1, 1));
    await Deno.writeFile(path, encoder.bytes());
    await _assertCorrupt(dir, path, 2 * _recordSize());
  });
  await _withDir(async (dir) => {
    const options = { segmentSize: _recordSize() };
    await _write(dir, [[_entry(1)], [_entry(2)], [_entry(3)]], options);
    await Deno.remove(join(dir, segmentName(2, 2)));
    await assert.rejects(Wal.open(dir, options), {
      name: "WalCorruptionError",
      message: `WAL segment "${
        join(dir, segmentName(3, 3))
      }" is corrupt at byte offset 0: segment sequence 2 is missing (found 1, then 3)`,
    });
  });
});

Deno.test("Wal.open() reports a segment whose name disagrees with its first record", async () => {
  await _withDir(async (dir) => {
    const encoder = new RecordEncoder();
    encoder.addEntry(_entry(1));
    const path = join(dir, segmentName(1, 7));
    await Deno.writeFile(path, encoder.bytes());
    await assert.rejects(Wal.open(dir), {
      name: "WalCorruptionError",
      message: `WAL segment "${path}" is corrupt at byte offset 0: ` +
        "the segment's name says its first index is 7, but its first record starts at index 1",
    });
  });
});

Deno.test("Wal.open() ignores files that are not segments", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 2)]);
    await Deno.writeTextFile(join(dir, "notes.txt"), "hello");
    await Deno.writeTextFile(join(dir, "1-1.wal"), "junk");
    assert.deepEqual(await _recovered(dir), _range(1, 2));
  });
});

Deno.test("Wal.compact() deletes only whole old segments and recovery starts at the right index", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 10 * _recordSize() };
    await _using(dir, async (wal) => {
      for (let first = 1; first <= 41; first += 10) await wal.append(_range(first, first + 9));
      assert.equal(wal.segmentPaths.length, 5);
      assert.equal(await wal.compact(25), 2); // segments 1-10 and 11-20; 21-30 holds 26..30
      assert.equal(await wal.compact(25), 0);
      assert.deepEqual(wal.segmentPaths.map((path) => basename(path)), [
        segmentName(3, 21),
        segmentName(4, 31),
        segmentName(5, 41),
      ]);
    }, options);
    await _using(dir, async (wal) => {
      assert.deepEqual(wal.entries, _range(21, 50));
      assert.equal(wal.lastIndex, 50);
      assert.equal(await wal.compact(1000), 2); // never the active segment
      assert.deepEqual(wal.segmentPaths, [join(dir, segmentName(5, 41))]);
      await wal.append([_entry(51)]);
    }, options);
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, _range(41, 51));
      return Promise.resolve();
    }, options);
    const names = [];
    for await (const item of Deno.readDir(dir)) names.push(item.name);
    assert.deepEqual(names.sort(), [segmentName(5, 41), segmentName(6, 51)]); // 51 rolled over
  });
});

Deno.test("Wal.compact() keeps a segment until every entry ever written to it is covered", async () => {
  await _withDir(async (dir) => {
    const options = { segmentSize: 2 * _recordSize() };
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 2));
      await wal.append(_range(3, 4));
      await wal.append(_range(3, 4, 2));
      assert.equal(await wal.compact(3), 1);
      assert.equal(await wal.compact(4), 1);
    }, options);
    assert.deepEqual(await _recovered(dir, options), _range(3, 4, 2));
  });
});

Deno.test("Wal.reset() empties the log so that it continues after the snapshot, also after a restart", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 5));
      await wal.reset(100, 3);
      assert.equal(wal.lastIndex, 100);
      await assert.rejects(wal.append([_entry(102)]), RangeError);
      await wal.append(_range(101, 102, 3));
    });
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, _range(101, 102, 3));
      assert.equal(wal.lastIndex, 102);
      return Promise.resolve();
    });
  });
  await _withDir(async (dir) => {
    await _using(dir, (wal) => wal.reset(10, 2)); // a fresh follower installing a snapshot
    await _using(dir, (wal) => {
      assert.deepEqual(wal.entries, []);
      assert.equal(wal.lastIndex, 10);
      assert.deepEqual(wal.segmentPaths.map((path) => basename(path)), [segmentName(1, 11)]);
      return Promise.resolve();
    });
  });
});

Deno.test("Wal.append() writes and syncs a batch of 64 entries of 128 bytes once", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append([_entry(1)]); // creates the segment (and syncs the directory)
      const calls = { write: 0, syncData: 0, sync: 0 };
      const proto = Deno.FsFile.prototype;
      const { write, syncData, sync } = proto;
      proto.write = function (this: Deno.FsFile, p: Uint8Array) {
        calls.write++;
        return write.call(this, p);
      };
      proto.syncData = function (this: Deno.FsFile) {
        calls.syncData++;
        return syncData.call(this);
      };
      proto.sync = function (this: Deno.FsFile) {
        calls.sync++;
        return sync.call(this);
      };
      try {
        await wal.append(_range(2, 65, 1, 128));
      } finally {
        Object.assign(proto, { write, syncData, sync });
      }
      assert.deepEqual(calls, { write: 1, syncData: 1, sync: 0 });
    });
    assert.deepEqual(await _recovered(dir), [_entry(1), ..._range(2, 65, 1, 128)]);
  });
});

Deno.test("Wal rejects an operation started while another is in flight", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      const first = wal.append(_range(1, 3));
      await assert.rejects(wal.append([_entry(4)]), Deno.errors.Busy);
      await assert.rejects(wal.compact(1), Deno.errors.Busy);
      await assert.rejects(wal.close(), Deno.errors.Busy);
      await first;
      await wal.append([_entry(4)]);
    });
    assert.deepEqual(await _recovered(dir), _range(1, 4));
  });
});

Deno.test("Wal refuses use after close, and closing twice does nothing", async () => {
  await _withDir(async (dir) => {
    const wal = await Wal.open(dir);
    await wal.close();
    await wal.close();
    await assert.rejects(wal.append([_entry(1)]), {
      name: "BadResource",
      message: `WAL "${dir}" is closed`,
    });
  });
});

Deno.test("Wal refuses use after a failed sync until it is reopened", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append([_entry(1)]);
      const proto = Deno.FsFile.prototype;
      const { syncData } = proto;
      const failure = new Error("disk on fire");
      proto.syncData = () => Promise.reject(failure);
      try {
        await assert.rejects(wal.append([_entry(2)]), failure);
      } finally {
        proto.syncData = syncData;
      }
      await assert.rejects(wal.append([_entry(2)]), (error: unknown) => {
        assert.ok(error instanceof Deno.errors.BadResource);
        assert.equal(error.cause, failure);
        return true;
      });
    });
    await _write(dir, [_range(2, 3, 2)]);
    assert.deepEqual(await _recovered(dir), [_entry(1), ..._range(2, 3, 2)]);
  });
});

Deno.test("rollNext() starts a new segment so compaction can delete the old one whole", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const wal = await Wal.open(dir);
    const e = (index: number) => ({
      term: 1,
      index,
      type: EntryType.Normal,
      data: new Uint8Array(8),
    });
    await wal.append([e(1), e(2), e(3)]);
    wal.rollNext();
    await wal.append([e(4)]);
    assert.equal(wal.segmentPaths.length, 2);
    assert.equal(await wal.compact(3), 1);
    await wal.append([e(5)]);
    await wal.close();
    const again = await Wal.open(dir);
    assert.deepEqual(again.entries.map((x) => x.index), [4, 5]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** An error like the one Deno throws when a write finds the disk full. */
function _noSpace(): Error {
  return Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" });
}

/**
 * Makes every `FsFile.write` while `fn` runs store only the first `keep` bytes it is given and
 * then fail with ENOSPC, as a file system does when it fills up in the middle of a write.
 */
async function _withFullDisk(keep: number, fn: () => Promise<void>): Promise<void> {
  const proto = Deno.FsFile.prototype;
  const { write } = proto;
  proto.write = async function (this: Deno.FsFile, p: Uint8Array) {
    if (keep > 0 && p.length > 0) await write.call(this, p.subarray(0, Math.min(keep, p.length)));
    throw _noSpace();
  };
  try {
    await fn();
  } finally {
    proto.write = write;
  }
}

Deno.test("Wal rolls back an append that found the disk full, and the same append succeeds later", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 3));
      const [segment] = wal.segmentPaths;
      const size = await _size(segment!);
      for (const keep of [0, 1, HEADER_SIZE + 3, _recordSize() + 5]) {
        await _withFullDisk(keep, async () => {
          await assert.rejects(wal.append(_range(4, 6)), { code: "ENOSPC" });
        });
        assert.equal(await _size(segment!), size, `the partial write of ${keep} bytes is gone`);
        assert.equal(wal.lastIndex, 3);
      }
      await wal.append(_range(4, 6));
      await wal.append([_entry(7)]);
    });
    assert.deepEqual(await _recovered(dir), _range(1, 7));
  });
});

Deno.test("Wal removes a segment it created for an append that found the disk full", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 3));
      wal.rollNext();
      await _withFullDisk(HEADER_SIZE, async () => {
        await assert.rejects(wal.append(_range(4, 5)), { code: "ENOSPC" });
      });
      assert.deepEqual(wal.segmentPaths.map((p) => basename(p)), [segmentName(1, 1)]);
      const names = [];
      for await (const e of Deno.readDir(dir)) names.push(e.name);
      assert.deepEqual(names, [segmentName(1, 1)]);
      // The roll still happens on the retry, so compaction can still delete the old segment.
      await wal.append(_range(4, 5));
      assert.deepEqual(wal.segmentPaths.map((p) => basename(p)), [
        segmentName(1, 1),
        segmentName(2, 4),
      ]);
      await wal.reset(9, 2);
    });
    assert.deepEqual(await _recovered(dir), []);
    await _using(dir, (wal) => Promise.resolve(assert.equal(wal.lastIndex, 9)));
  });
});

Deno.test("Wal rolls back a reset record that found the disk full", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 2));
      await _withFullDisk(4, async () => {
        await assert.rejects(wal.reset(10, 3), { code: "ENOSPC" });
      });
      assert.equal(wal.lastIndex, 2);
      await wal.append([_entry(3)]);
    });
    assert.deepEqual(await _recovered(dir), _range(1, 3));
  });
});

Deno.test("Wal on a really full file system keeps its log whole and appends again once space is freed", async (t) => {
  const mount = await _mountTmpfs("256k");
  if ("skip" in mount) {
    await t.step({ name: `skipped: ${mount.skip}`, ignore: true, fn() {} });
    return;
  }
  try {
    const dir = join(mount.dir, "wal");
    const filler = join(mount.dir, "filler");
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 10, 1, 1000));
      // Take what is left, then ask for more than could fit.
      {
        using f = await Deno.open(filler, { write: true, create: true });
        await assert.rejects(async () => {
          while (true) await f.write(new Uint8Array(64 * 1024));
        }, { code: "ENOSPC" });
      }
      await assert.rejects(wal.append(_range(11, 60, 1, 1000)), { code: "ENOSPC" });
      assert.equal(wal.lastIndex, 10);
      await Deno.remove(filler);
      await wal.append(_range(11, 60, 1, 1000));
    }, { segmentSize: 16 * 1024 });
    assert.deepEqual(await _recovered(dir), _range(1, 60, 1, 1000));
  } finally {
    await _unmount(mount.dir);
  }
});

/**
 * Mounts a tmpfs of `size` on a new temporary directory, for tests of a really full disk, or
 * says why it cannot (not Linux, not root, mount refused).
 */
async function _mountTmpfs(size: string): Promise<{ dir: string } | { skip: string }> {
  if (Deno.build.os !== "linux") {
    return { skip: `mounting a tmpfs needs Linux, not ${Deno.build.os}` };
  }
  if (Deno.uid() !== 0) return { skip: `mounting a tmpfs needs root (uid is ${Deno.uid()})` };
  const dir = await Deno.makeTempDir({ prefix: "raftkv-full-" });
  const reason = await mountTmpfs(dir, size);
  if (reason === null) return { dir };
  await Deno.remove(dir);
  return { skip: `mount -t tmpfs failed: ${reason}` };
}

/** Unmounts what {@linkcode _mountTmpfs} mounted and removes the directory. */
async function _unmount(dir: string): Promise<void> {
  await unmount(dir);
  await Deno.remove(dir, { recursive: true });
}

Deno.test({
  name: "the WAL directory is created with mode 0700 and its segments with mode 0600",
  ignore: Deno.build.os === "windows",
  fn: () =>
    _withDir(async (root) => {
      const dir = join(root, "wal");
      await _using(dir, async (wal) => {
        await wal.append(_range(1, 3));
        wal.rollNext();
        await wal.append(_range(4, 6));
      });
      assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
      const segments = [];
      for await (const item of Deno.readDir(dir)) segments.push(item.name);
      assert.equal(segments.length, 2);
      for (const name of segments) {
        assert.equal((await Deno.stat(join(dir, name))).mode! & 0o777, 0o600, name);
      }
    }),
});

Deno.test("Wal reports how long each append's sync took to its syncDuration observer", async () => {
  await _withDir(async (dir) => {
    const seconds: number[] = [];
    await _using(dir, async (wal) => {
      await wal.append(_range(1, 3));
      await wal.append(_range(4, 4));
    }, { syncDuration: { observe: (s) => seconds.push(s) } });
    assert.equal(seconds.length, 2, "one sync per append");
    assert.ok(seconds.every((s) => s >= 0 && s < 60), String(seconds));
  });
});

Deno.test("Wal records the commit index after a batch, and recovers the highest one", async () => {
  await _withDir(async (dir) => {
    await _using(dir, async (wal) => {
      assert.equal(wal.committed, 0);
      await wal.append(_range(1, 3), 2);
      assert.equal(wal.committed, 2);
      await wal.append(_range(4, 5), 1); // not above: no record
      await wal.append([_entry(6)]);
      assert.equal(wal.committed, 2);
      const [segment] = wal.segmentPaths;
      assert.equal(await _size(segment!), 6 * _recordSize() + HEADER_SIZE + 8);
      await wal.append([_entry(7)], 7);
    });
    await _using(dir, (wal) => {
      assert.equal(wal.committed, 7);
      assert.deepEqual(wal.entries, _range(1, 7));
      return Promise.resolve();
    });
  });
});

Deno.test("Wal.writeCommit() does not sync: a process that dies keeps the record, a machine that crashes may not", async () => {
  const fs = new SimFileSystem();
  const dir = "/data/wal";
  let wal = await Wal.open(dir, { fs });
  await wal.writeCommit(1); // no record yet: nothing written
  await wal.append(_range(1, 3));
  await wal.writeCommit(2);
  await wal.writeCommit(2); // not above: nothing written
  assert.equal(wal.committed, 2);
  await assert.rejects(wal.writeCommit(4), RangeError);
  await wal.close();
  // A process that dies keeps what it wrote (the page cache): reopen the same disk.
  wal = await Wal.open(dir, { fs });
  assert.equal(wal.committed, 2);
  await wal.close();
  // The machine crashes: the unsynced record is lost, the rest is whole.
  const after = fs.crash();
  wal = await Wal.open(dir, { fs: after });
  assert.equal(wal.committed, 0);
  assert.deepEqual(wal.entries, _range(1, 3));
  assert.equal(wal.tornTail, null);
  // The next synced write makes an unsynced record durable.
  await wal.writeCommit(3);
  await wal.append([_entry(4)]);
  await wal.close();
  wal = await Wal.open(dir, { fs: after.crash() });
  assert.equal(wal.committed, 3);
  await wal.close();
});

Deno.test("Wal syncs a commit record before it starts a new segment, so no older segment is torn", async () => {
  const fs = new SimFileSystem();
  const dir = "/data/wal";
  const wal = await Wal.open(dir, { fs });
  await wal.append(_range(1, 3));
  await wal.writeCommit(3);
  wal.rollNext();
  await wal.append([_entry(4)]);
  assert.equal(wal.segmentPaths.length, 2);
  await wal.close();
  const recovered = await Wal.open(dir, { fs: fs.crash() });
  assert.equal(recovered.committed, 3);
  assert.deepEqual(recovered.entries, _range(1, 4));
  await recovered.close();
});

Deno.test("Wal.open() cuts a torn commit record off the last segment at every byte", async () => {
  await _withDir(async (dir) => {
    await _write(dir, [_range(1, 3)]);
    await _using(dir, (wal) => wal.writeCommit(3));
    const path = join(dir, segmentName(1, 1));
    const whole = await Deno.readFile(path);
    const before = 3 * _recordSize();
    for (let cut = before; cut < whole.length; cut++) {
      await Deno.writeFile(path, whole.subarray(0, cut));
      await _using(dir, (wal) => {
        assert.equal(wal.committed, 0, `cut at ${cut}`);
        assert.deepEqual(wal.entries, _range(1, 3));
        assert.equal(wal.tornTail?.bytes ?? 0, cut - before);
        return Promise.resolve();
      });
    }
  });
});

Deno.test("Wal.open() refuses commit records that contradict the log", async () => {
  const encode = (build: (encoder: RecordEncoder) => void) => {
    const encoder = new RecordEncoder();
    build(encoder);
    return encoder.bytes().slice();
  };
  const cases: [string, Uint8Array, RegExp][] = [
    [
      "past the last index",
      encode((e) => (e.addEntry(_entry(1)), e.addCommit(2))),
      /commit record 2 is past the log's last index 1/,
    ],
    [
      "a committed entry replaced",
      encode((
        e,
      ) => (e.addEntry(_entry(1)),
        e.addEntry(_entry(2)),
        e.addCommit(2),
        e.addEntry(_entry(2, 2)))
      ),
      /entry 2 would replace an entry at or below the commit index 2/,
    ],
    [
      "first in a segment",
      encode((e) => (e.addCommit(1), e.addEntry(_entry(1)))),
      /starts with a commit/,
    ],
  ];
  for (const [what, bytes, message] of cases) {
    await _withDir(async (dir) => {
      await Deno.writeFile(join(dir, segmentName(1, 1)), bytes);
      await assert.rejects(Wal.open(dir), (e) => {
        assert.ok(e instanceof WalCorruptionError, what);
        assert.match(e.message, message, what);
        return true;
      });
    });
  }
});
