/**
 * The write-ahead log holding a node's Raft log: a directory of append-only segment files,
 * replayed on open, appended to in synced batches (group commit), truncated etcd-style by
 * appending at a lower index, and compacted by deleting whole old segments.
 *
 * The format, the torn-tail rule and the crash-safety argument are in the README.
 *
 * @module
 */

import { dirname, join } from "node:path";
import type { Entry } from "../raft/types.ts";
import { isNoSpace, WalCorruptionError } from "./errors.ts";
import { type FileSystem, type FsFile, writeAll } from "./fs.ts";
import type { Observer } from "../util/metrics.ts";
import { realFs } from "./real_fs.ts";
import { decodeRecord, type DecodeResult, HEADER_SIZE, RecordEncoder } from "./wal_record.ts";

/** The default {@linkcode WalOptions.segmentSize}: 64 MiB. */
export const DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024;

/** Options for {@linkcode Wal.open}. */
export interface WalOptions {
  /**
   * Roll over to a new segment before an append that would take the active segment past this many
   * bytes. A batch larger than this is still written whole into one segment.
   *
   * @default {67108864} (64 MiB)
   */
  segmentSize?: number;
  /**
   * The file system the segments live on.
   *
   * @default {realFs} the real disk
   */
  fs?: FileSystem;
  /**
   * Told how long each append's `syncData` took, in seconds (the
   * `raftkv_wal_fsync_duration_seconds` histogram).
   *
   * @default {undefined} not measured
   */
  syncDuration?: Observer;
  /**
   * Entries at or below this index are checked as usual on recovery but not kept in
   * {@linkcode Wal.entries} (nor is their data copied): a snapshot the caller loads covers them.
   * Truncations and resets apply as always.
   *
   * @default {0} every entry kept
   */
  skipThrough?: number;
}

/** Describes the incomplete final record that recovery cut off. */
export interface TornTail {
  /** The segment that was truncated. */
  path: string;
  /** The offset it was truncated to: the end of its last whole record. */
  offset: number;
  /** How many bytes were cut off. */
  bytes: number;
}

/** What the WAL knows about one segment file. */
interface _Segment {
  sequence: number;
  path: string;
  /** Bytes of whole records in the file. */
  size: number;
  /** The highest index of any entry (or reset) ever written to it; 0 if none. */
  maxIndex: number;
}

/** The segment-name pattern: `<sequence>-<firstIndex>.wal`, both 16 decimal digits. */
const _SEGMENT_NAME = /^(\d{16})-(\d{16})\.wal$/;
/** The sector size assumed by the zero-filled-tail rule. */
const _SECTOR = 512;

/**
 * A write-ahead log directory, open for appending.
 *
 * One operation at a time: every method returns a promise that must settle before the next call
 * (a call made earlier throws `Deno.errors.Busy`). A write that fails because the disk is full
 * (see {@linkcode isNoSpace}) is rolled back: the active segment is cut back to its last whole
 * record (or a segment created for the write is removed), the error is thrown, and the same call
 * can be retried once there is space. After any other failed write or sync, or a rollback that
 * failed, the WAL refuses further use (`Deno.errors.BadResource`): close it and open it again to
 * recover.
 *
 * @example Usage
 * ```ts ignore
 * import { EntryType } from "../raft/types.ts";
 * import { Wal } from "./wal.ts";
 *
 * const wal = await Wal.open("data/node-1/wal");
 * const data = new TextEncoder().encode("set x 1");
 * await wal.append([{ term: 1, index: wal.lastIndex + 1, type: EntryType.Normal, data }]);
 * await wal.close();
 * ```
 */
export class Wal {
  /** The WAL directory. */
  readonly dir: string;
  /**
   * The log as recovered by {@linkcode Wal.open}, after applying truncations and resets: entries
   * with contiguous indices. Not updated by later calls; the caller owns the live log, and
   * empties this with {@linkcode Wal.releaseRecovered} once it has taken it over.
   */
  entries: Entry[];
  /** The torn final record recovery cut off, or null if the log ended cleanly. */
  readonly tornTail: TornTail | null;

  #fs: FileSystem;
  #segments: _Segment[];
  #file: FsFile | null;
  #segmentSize: number;
  #lastIndex: number;
  /** The highest commit index written (or recovered) in a commit record; 0 for none. */
  #committed: number;
  #encoder = new RecordEncoder();
  #busy = false;
  #rollNext = false;
  /** The active segment ends in a commit record written without a sync. */
  #unsynced = false;
  #closed = false;
  #failure: { error: unknown } | null = null;
  readonly #syncDuration: Observer | undefined;

  private constructor(
    dir: string,
    fs: FileSystem,
    segmentSize: number,
    recovered: _Recovered,
    file: FsFile | null,
    syncDuration: Observer | undefined,
  ) {
    this.dir = dir;
    this.#syncDuration = syncDuration;
    this.#fs = fs;
    this.#segmentSize = segmentSize;
    this.entries = recovered.log.entries;
    this.tornTail = recovered.tornTail;
    this.#lastIndex = recovered.log.lastIndex;
    this.#committed = recovered.log.committed;
    this.#segments = recovered.segments;
    this.#file = file;
  }

  /**
   * Opens the WAL in `dir`, creating the directory if it is missing, and recovers the log from its
   * segments. A torn final record in the last segment is cut off (and reported in
   * {@linkcode Wal.tornTail}); an empty last segment is removed.
   *
   * @param dir The WAL directory (`--log-entry-path`).
   * @param options How to write the log.
   * @returns The open WAL.
   * @throws {WalCorruptionError} If a segment holds a damaged or malformed record that is not a
   * torn final write, a segment is missing from the sequence, or a segment's name disagrees with
   * its first record. The node must not start.
   * @throws {RangeError} If `segmentSize` is not a positive safe integer.
   */
  static async open(dir: string, options: WalOptions = {}): Promise<Wal> {
    const segmentSize = options.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    if (!Number.isSafeInteger(segmentSize) || segmentSize < 1) {
      throw new RangeError(`WAL segmentSize must be a positive integer, found ${segmentSize}`);
    }
    const fs = options.fs ?? realFs;
    await _ensureDirectory(fs, dir);
    const recovered = await _recover(fs, dir, options.skipThrough ?? 0);
    const last = recovered.segments.at(-1);
    const file = last ? await fs.open(last.path, "append") : null;
    return new Wal(dir, fs, segmentSize, recovered, file, options.syncDuration);
  }

  /** The index of the last entry written (a reset's index if none since it); 0 for no log. */
  get lastIndex(): number {
    return this.#lastIndex;
  }

  /**
   * The highest commit index recorded in the WAL (recovered at open, then as written by
   * {@linkcode Wal.append} and {@linkcode Wal.writeCommit}); 0 for none. Every entry up to it, as
   * the log stood when the record was written, is committed. It may lag the node's commit index:
   * it is a hint for the restart, not a promise made to anyone.
   */
  get committed(): number {
    return this.#committed;
  }

  /** The paths of the segment files, oldest first; the last one is the active segment. */
  get segmentPaths(): string[] {
    return this.#segments.map((segment) => segment.path);
  }

  /** Empties {@linkcode Wal.entries}, so that the recovered log is not kept twice. */
  releaseRecovered(): void {
    this.entries = [];
  }

  /**
   * Durably appends a batch of entries: encodes them all into one buffer, writes it with one
   * `write` (more only if the OS takes part of it) and syncs it with one `syncData`. When it
   * resolves, every entry is on disk.
   *
   * The batch must hold contiguous indices starting at most one past {@linkcode Wal.lastIndex}.
   * Starting at or below it replaces the entries from that index on (a follower overwriting a
   * conflicting suffix): on replay the log is cut back to `index - 1` first.
   *
   * @param entries The entries, in index order. An empty batch writes nothing.
   * @param commit The node's commit index as the log stands once the batch is written: recorded
   * after the entries (in the same write and sync) when it is above {@linkcode Wal.committed}.
   * Default 0: none.
   * @throws {RangeError} If the indices are not contiguous, leave a gap after the last index, or
   * an index or term is not a safe integer of at least 1, or `commit` is past the batch's last
   * index.
   * @throws {TypeError} If an entry's type or data is invalid.
   * @throws {Deno.errors.Busy} If another operation is in flight.
   * @throws {Deno.errors.BadResource} If the WAL is closed or failed earlier.
   * @throws {Error} With code `ENOSPC` or `EDQUOT` if the disk is full: nothing was appended and
   * the WAL is still usable.
   */
  async append(entries: readonly Entry[], commit = 0): Promise<void> {
    this.#begin();
    try {
      const first = entries[0];
      if (first === undefined) return;
      if (!(first.index >= 1 && first.index <= this.#lastIndex + 1)) {
        throw new RangeError(
          `Cannot append entry ${first.index}: the WAL's last index is ${this.#lastIndex}, so the next entry needs an index from 1 to ${
            this.#lastIndex + 1
          }`,
        );
      }
      const encoder = this.#encoder;
      encoder.clear();
      for (let k = 0; k < entries.length; k++) {
        const entry = entries[k]!;
        if (entry.index !== first.index + k) {
          throw new RangeError(
            `Cannot append a batch with a gap: entry ${k} has index ${entry.index}, expected ${
              first.index + k
            }`,
          );
        }
        encoder.addEntry(entry);
      }
      const last = first.index + entries.length - 1;
      const recordCommit = commit > this.#committed;
      if (recordCommit) {
        _checkCommit(commit, last);
        encoder.addCommit(commit);
      }
      await this.#write(encoder.bytes(), first.index, last);
      this.#lastIndex = last;
      if (recordCommit) this.#committed = commit;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Records the commit index in the active segment without syncing it: it becomes durable with
   * the next synced write, and survives a crash of the process (not of the machine) at once. Does
   * nothing when `commit` is not above {@linkcode Wal.committed} or the WAL has no record yet.
   * Never starts a new segment.
   *
   * @param commit The node's commit index; at most {@linkcode Wal.lastIndex}.
   * @throws {RangeError} If `commit` is not a safe integer of at least 1 or is past the last index.
   * @throws {Deno.errors.Busy} If another operation is in flight.
   * @throws {Deno.errors.BadResource} If the WAL is closed or failed earlier.
   * @throws {Error} With code `ENOSPC` or `EDQUOT` if the disk is full: nothing was written and
   * the WAL is still usable.
   */
  async writeCommit(commit: number): Promise<void> {
    this.#begin();
    try {
      const segment = this.#segments.at(-1);
      if (commit <= this.#committed || !segment || segment.size === 0 || !this.#file) return;
      _checkCommit(commit, this.#lastIndex);
      this.#encoder.clear();
      this.#encoder.addCommit(commit);
      await this.#write(this.#encoder.bytes(), 0, 0, false);
      this.#committed = commit;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Durably records that the log was replaced by a snapshot covering up to `index`: on replay
   * every earlier entry is dropped and the log continues at `index + 1`. Use it after installing
   * a snapshot whose index is beyond (or conflicts with) the local log; afterwards
   * {@linkcode Wal.lastIndex} is `index`.
   *
   * @param index The snapshot's last index.
   * @param term The term of that entry.
   * @throws {RangeError} If `index` or `term` is not a safe integer of at least 1.
   * @throws {Deno.errors.Busy} If another operation is in flight.
   * @throws {Deno.errors.BadResource} If the WAL is closed or failed earlier.
   */
  async reset(index: number, term: number): Promise<void> {
    this.#begin();
    try {
      this.#encoder.clear();
      this.#encoder.addReset(index, term);
      await this.#write(this.#encoder.bytes(), index + 1, index);
      this.#lastIndex = index;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Makes the next write start a new segment, so that everything written so far can later be
   * deleted whole by {@linkcode Wal.compact} (called when a snapshot is taken).
   */
  rollNext(): void {
    if ((this.#segments.at(-1)?.size ?? 0) > 0) this.#rollNext = true;
  }

  /**
   * Deletes the oldest segments whose every entry has an index at or below `index`, stopping at
   * the first segment that holds a later entry and never deleting the active segment. The
   * directory is synced after each deletion, so a crash leaves no gap in the sequence. Call it
   * only once a snapshot covering `index` and the log metadata are durable.
   *
   * @param index The last index the snapshot covers.
   * @returns How many segments were deleted.
   * @throws {Deno.errors.Busy} If another operation is in flight.
   * @throws {Deno.errors.BadResource} If the WAL is closed or failed earlier.
   */
  async compact(index: number): Promise<number> {
    this.#begin();
    try {
      let deleted = 0;
      while (this.#segments.length > 1 && this.#segments[0]!.maxIndex <= index) {
        await this.#fs.remove(this.#segments[0]!.path);
        this.#segments.shift();
        deleted++;
        await this.#fs.syncDir(this.dir);
      }
      return deleted;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Closes the active segment. Everything appended is already durable. Closing twice does
   * nothing.
   *
   * @throws {Deno.errors.Busy} If another operation is in flight.
   */
  close(): Promise<void> {
    if (this.#busy) return Promise.reject(this.#busyError());
    if (!this.#closed) {
      this.#closed = true;
      this.#file?.close();
      this.#file = null;
    }
    return Promise.resolve();
  }

  /** Checks that an operation may start, and marks one as running. */
  #begin(): void {
    if (this.#closed) throw new Deno.errors.BadResource(`WAL "${this.dir}" is closed`);
    if (this.#failure) {
      throw new Deno.errors.BadResource(
        `WAL "${this.dir}" failed to write earlier; close it and open it again to recover`,
        { cause: this.#failure.error },
      );
    }
    if (this.#busy) throw this.#busyError();
    this.#busy = true;
  }

  #busyError(): Error {
    return new Deno.errors.Busy(
      `WAL "${this.dir}" is already running an operation; await it before starting another`,
    );
  }

  /**
   * Writes and (unless `sync` is false) syncs encoded records, rolling over first if they would
   * overflow the active segment (never when `sync` is false: a commit record, which may not start
   * a segment). A full disk is rolled back (see {@linkcode Wal.#rollBack}); any other failure
   * leaves the WAL failed: the file may end in a partial record.
   */
  async #write(
    bytes: Uint8Array,
    firstIndex: number,
    maxIndex: number,
    sync = true,
  ): Promise<void> {
    const rollNext = this.#rollNext;
    let rolled: _Segment | null = null;
    let segment = this.#segments.at(-1);
    try {
      if (
        segment === undefined || this.#file === null ||
        (sync && (this.#rollNext ||
          (segment.size > 0 && segment.size + bytes.length > this.#segmentSize)))
      ) {
        segment = rolled = await this.#roll(firstIndex);
        this.#rollNext = false;
      }
      await writeAll(this.#file!, bytes);
      if (sync) {
        const syncStart = performance.now();
        await this.#file!.syncData();
        this.#syncDuration?.observe((performance.now() - syncStart) / 1000);
      }
      this.#unsynced = !sync;
      segment.size += bytes.length;
      if (maxIndex > segment.maxIndex) segment.maxIndex = maxIndex;
    } catch (error) {
      if (!isNoSpace(error)) {
        this.#failure = { error };
        throw error;
      }
      try {
        await this.#rollBack(rolled);
      } catch (rollBackError) {
        this.#failure = { error: rollBackError };
        throw new Deno.errors.BadResource(
          `WAL "${this.dir}": rolling back a write that found the disk full failed`,
          { cause: rollBackError },
        );
      }
      this.#rollNext = rollNext;
      this.#unsynced = false; // the rollback synced what is left
      throw error;
    }
  }

  /**
   * Undoes a write that failed for lack of space, so that nothing of it is left: removes the
   * segment the write created (`rolled`) and makes the previous one active again, or cuts the
   * active segment back to its last whole record. Freeing the partial record needs no space.
   */
  async #rollBack(rolled: _Segment | null): Promise<void> {
    if (rolled !== null) {
      this.#file?.close();
      this.#file = null;
      this.#segments.pop();
      await this.#fs.remove(rolled.path);
      await this.#fs.syncDir(this.dir);
      const previous = this.#segments.at(-1);
      if (previous) this.#file = await this.#fs.open(previous.path, "append");
      return;
    }
    const segment = this.#segments.at(-1);
    if (segment === undefined || this.#file === null) return;
    await this.#file.truncate(segment.size);
    await this.#file.syncData();
  }

  /**
   * Creates the next segment, makes its name durable, and makes it the active one. A commit
   * record the active segment ends in is synced first: only the last segment may have a torn tail.
   */
  async #roll(firstIndex: number): Promise<_Segment> {
    if (this.#unsynced && this.#file) {
      await this.#file.syncData();
      this.#unsynced = false;
    }
    const sequence = (this.#segments.at(-1)?.sequence ?? 0) + 1;
    const path = join(this.dir, segmentName(sequence, firstIndex));
    const file = await this.#fs.open(path, "create-new");
    try {
      await this.#fs.syncDir(this.dir);
    } catch (error) {
      file.close();
      await this.#fs.remove(path).catch(() => {});
      throw error;
    }
    this.#file?.close();
    this.#file = file;
    const segment: _Segment = { sequence, path, size: 0, maxIndex: 0 };
    this.#segments.push(segment);
    return segment;
  }
}

/**
 * The file name of a segment: both numbers as 16 zero-padded decimal digits, so names sort in
 * sequence order.
 *
 * @param sequence The segment's sequence number, from 1.
 * @param firstIndex The index of its first entry.
 * @returns The name, e.g. `0000000000000001-0000000000000001.wal`.
 *
 * @example Usage
 * ```ts
 * import { segmentName } from "./wal.ts";
 *
 * console.assert(segmentName(2, 4097) === "0000000000000002-0000000000004097.wal");
 * ```
 */
export function segmentName(sequence: number, firstIndex: number): string {
  return `${String(sequence).padStart(16, "0")}-${String(firstIndex).padStart(16, "0")}.wal`;
}

/** Creates `dir` if it is missing, and makes its creation durable. */
async function _ensureDirectory(fs: FileSystem, dir: string): Promise<void> {
  try {
    const info = await fs.stat(dir);
    if (!info.isDirectory) {
      throw new Deno.errors.NotADirectory(`WAL path "${dir}" is not a directory`);
    }
    return;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  await fs.mkdir(dir);
  await fs.syncDir(dirname(dir));
}

/** Everything {@linkcode _recover} learns from the directory. */
interface _Recovered {
  log: _ReplayedLog;
  segments: _Segment[];
  tornTail: TornTail | null;
}

/** Lists, checks and replays the segments, repairing a torn tail. */
async function _recover(fs: FileSystem, dir: string, skipThrough: number): Promise<_Recovered> {
  const found: { sequence: number; firstIndex: number; path: string }[] = [];
  for (const item of await fs.readDir(dir)) {
    const match = item.isFile ? _SEGMENT_NAME.exec(item.name) : null;
    if (match) {
      found.push({
        sequence: Number(match[1]),
        firstIndex: Number(match[2]),
        path: join(dir, item.name),
      });
    }
  }
  found.sort((a, b) => a.sequence - b.sequence);

  const log = new _ReplayedLog(skipThrough);
  const segments: _Segment[] = [];
  let tornTail: TornTail | null = null;
  for (let k = 0; k < found.length; k++) {
    const { sequence, firstIndex, path } = found[k]!;
    const previous = found[k - 1];
    if (previous && sequence !== previous.sequence + 1) {
      throw new WalCorruptionError(
        path,
        0,
        `segment sequence ${
          previous.sequence + 1
        } is missing (found ${previous.sequence}, then ${sequence})`,
      );
    }
    const isLast = k === found.length - 1;
    const bytes = await fs.readFile(path);
    const { end, maxIndex } = _replaySegment(path, bytes, firstIndex, isLast, log);
    if (end < bytes.length) {
      tornTail = { path, offset: end, bytes: bytes.length - end };
      using file = await fs.open(path, "append");
      await file.truncate(end);
      await file.sync();
    }
    segments.push({ sequence, path, size: end, maxIndex });
  }

  const last = segments.at(-1);
  if (last && last.size === 0) {
    await fs.remove(last.path);
    await fs.syncDir(dir);
    segments.pop();
  }
  return { log, segments, tornTail };
}

/**
 * Checks that a commit index to record is no further than the log's `last` (the encoder checks
 * that it is a safe integer of at least 1).
 */
function _checkCommit(commit: number, last: number): void {
  if (commit > last) {
    throw new RangeError(`Cannot record commit index ${commit}: the log ends at ${last}`);
  }
}

/**
 * Replays one segment into `log`.
 *
 * @returns `end`, the offset just past the last whole record (below the file size only when the
 * last segment has a torn tail), and the segment's highest index.
 */
function _replaySegment(
  path: string,
  bytes: Uint8Array,
  firstIndex: number,
  isLast: boolean,
  log: _ReplayedLog,
): { end: number; maxIndex: number } {
  let offset = 0;
  let maxIndex = 0;
  while (offset < bytes.length) {
    // The data is copied only for entries the log keeps (below, in `append`).
    const result = decodeRecord(bytes, offset, false);
    let index: number;
    let problem: string | null;
    if (result.kind === "entry") {
      index = result.entry.index;
      problem = log.append(result.entry);
    } else if (result.kind === "reset") {
      index = result.index;
      problem = null;
      log.reset(result.index);
    } else if (result.kind === "commit") {
      if (offset === 0) {
        throw new WalCorruptionError(path, 0, "the segment starts with a commit record");
      }
      index = 0;
      problem = log.commit(result.index);
    } else {
      if (isLast && _isTorn(bytes, offset, result)) break;
      throw new WalCorruptionError(path, offset, result.reason);
    }
    if (offset === 0) {
      const named = result.kind === "reset" ? index + 1 : index;
      if (named !== firstIndex) {
        throw new WalCorruptionError(
          path,
          0,
          `the segment's name says its first index is ${firstIndex}, but its first record starts at index ${named}`,
        );
      }
    }
    if (problem !== null) throw new WalCorruptionError(path, offset, problem);
    if (index > maxIndex) maxIndex = index;
    offset = result.end;
  }
  return { end: offset, maxIndex };
}

/**
 * Decides whether a record that failed to decode at `offset` in the last segment is a torn write
 * (see the README, "Torn tails"): a partial header or payload at the end of the file, or a
 * zero-filled tail beginning at the record's start or at a sector boundary inside the record's
 * unverified bytes.
 */
function _isTorn(bytes: Uint8Array, offset: number, result: DecodeResult): boolean {
  switch (result.kind) {
    case "short-header":
    case "short-payload":
      return true;
    case "bad-header":
    case "bad-payload": {
      let zeros = bytes.length; // where the trailing run of zero bytes starts
      while (zeros > offset && bytes[zeros - 1] === 0) zeros--;
      if (zeros === offset) return true;
      const unverifiedEnd = result.kind === "bad-header" ? offset + HEADER_SIZE : result.end;
      return Math.ceil(zeros / _SECTOR) * _SECTOR < unverifiedEnd;
    }
    default:
      return false;
  }
}

/**
 * The log rebuilt by replay, with etcd-style truncation on a repeated index. Entries at or below
 * `skipThrough` are followed (indices, truncations) but not kept.
 */
class _ReplayedLog {
  entries: Entry[] = [];
  /** The last index (a reset's index if no entry followed it); 0 before any record. */
  lastIndex = 0;
  /** The highest commit index of any commit record; 0 for none. */
  committed = 0;
  #started = false;
  readonly #skipThrough: number;

  constructor(skipThrough: number) {
    this.#skipThrough = skipThrough;
  }

  /**
   * Appends `entry` (its data a view of the segment: copied here if kept), first cutting the log
   * back to `entry.index - 1`; returns a problem, if any.
   */
  append(entry: Entry): string | null {
    const { index } = entry;
    if (this.#started && index > this.lastIndex + 1) {
      return `entry index ${index} leaves a gap after index ${this.lastIndex}`;
    }
    if (this.#started && index <= this.committed) {
      return `entry ${index} would replace an entry at or below the commit index ${this.committed} recorded before it`;
    }
    const head = this.entries[0];
    if (head !== undefined && index <= this.lastIndex) {
      this.entries.length = index > head.index ? index - head.index : 0;
    }
    if (index > this.#skipThrough) {
      entry.data = entry.data.slice();
      this.entries.push(entry);
    }
    this.lastIndex = index;
    this.#started = true;
    return null;
  }

  /** Records a commit index; returns a problem, if any. */
  commit(index: number): string | null {
    if (index > this.lastIndex) {
      return `commit record ${index} is past the log's last index ${this.lastIndex}`;
    }
    if (index > this.committed) this.committed = index;
    return null;
  }

  /** Empties the log; it continues at `index + 1`. */
  reset(index: number): void {
    this.entries.length = 0;
    this.lastIndex = index;
    this.#started = true;
  }
}
