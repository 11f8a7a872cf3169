/**
 * Snapshot files: the whole key-value state at one log index, in one self-checking file.
 *
 * Layout (all integers big-endian; a u64 is two u32, high then low, up to 2^53 - 1):
 *
 * ```
 * magic      8 bytes  "RKVSNAP3"
 * hdrLen     u32      length of the header JSON
 * header     hdrLen   UTF-8 JSON {"index","term","voters","count"}, and since membership
 *                     changes "learners" and "info" when there are any (older files lack them)
 * count x:   u32 keyLen, key (UTF-8), u32 valueLen, value (UTF-8),
 *            u64 createIndex, u64 modIndex, u64 version
 * sessions   u32      the number of session records, then each as u32 length and its bytes
 * leases     u32      the number of lease records, then each as u32 length and its bytes
 * trailer    8 bytes  "RKVSEND1"
 * crc        u32      CRC-32C of every byte before it (the trailer included)
 * ```
 *
 * Session records are the state machine's remembered idempotent outcomes, lease records its
 * leases with their keys, both opaque here. Files of earlier versions still load: the second
 * (magic "RKVSNAP2") has no lease section, so no leases; the first ("RKVSNAP1": pairs of key and
 * value only, no sessions) gives each key `createIndex` = `modIndex` = the snapshot's index and
 * `version` 1.
 *
 * Files are named `snap-<index>-<term>.snap` (16-digit zero-padded decimals, so names sort by
 * index). They are written to `<name>.tmp`, synced, renamed and the directory synced. A snapshot
 * received from a leader is kept as `<name>.recv` until the node installs it. The storage README
 * says how they fit with the WAL and the log metadata.
 *
 * Every function that touches files takes the {@linkcode FileSystem} last (default
 * {@linkcode realFs}).
 *
 * @module
 */

import { join } from "node:path";
import { crc32cRange } from "./crc32c.ts";
import { createDirectory } from "./durable_file.ts";
import { CorruptFileError } from "./errors.ts";
import { type FileSystem, writeAll } from "./fs.ts";
import { realFs } from "./real_fs.ts";
import { decodeUtf8 } from "../util/utf8.ts";

/** What a snapshot covers. */
export interface SnapshotHeader {
  /** The last log index the state includes. */
  index: number;
  /** The term of that entry. */
  term: number;
  /** The voting members at that point. */
  voters: string[];
  /** The learners at that point (absent: none). */
  learners?: string[];
  /** The members' data (their URLs), by node id (absent: none). */
  info?: Record<string, string>;
  /** The number of entries (keys). */
  count: number;
}

/** A snapshot file found on disk. */
export interface SnapshotFileInfo {
  /** The file. */
  path: string;
  /** The last log index it covers. */
  index: number;
  /** The term of that entry. */
  term: number;
}

/** One key of a snapshot: its value and revision. */
export interface SnapshotEntry {
  /** The key. */
  readonly key: string;
  /** Its value. */
  readonly value: string;
  /** The log index that created it. */
  readonly createIndex: number;
  /** The log index that last wrote it. */
  readonly modIndex: number;
  /** Writes since it was created. */
  readonly version: number;
}

/** What a snapshot holds besides its header. */
export interface SnapshotContent {
  /** The entries, read lazily (their number is the header's `count`). */
  entries: Iterable<SnapshotEntry>;
  /** The session records (opaque bytes of the state machine). */
  sessions: readonly Uint8Array[];
  /** The lease records (opaque bytes of the state machine); none if absent. */
  leases?: readonly Uint8Array[];
}

/**
 * Receives a snapshot's entries straight from the file's bytes as they are read, instead of an
 * object and two strings per entry (loading a million keys; see {@linkcode decodeSnapshot}).
 */
export interface SnapshotEntrySink {
  /**
   * The next entry: its key is `bytes[keyStart, keyEnd)` and its value `bytes[valueStart,
   * valueEnd)`, both checked to be valid UTF-8. The bytes are only valid during the call.
   */
  addBytes(
    bytes: Uint8Array,
    keyStart: number,
    keyEnd: number,
    valueStart: number,
    valueEnd: number,
    createIndex: number,
    modIndex: number,
    version: number,
  ): void;
}

/** A fully read and verified snapshot. */
export interface LoadedSnapshot {
  /** What it covers. */
  header: SnapshotHeader;
  /** Its entries, in the order stored (none when they went to a {@linkcode SnapshotEntrySink}). */
  entries: SnapshotEntry[];
  /** Its session records. */
  sessions: Uint8Array[];
  /** Its lease records (none in files of earlier versions). */
  leases: Uint8Array[];
}

const MAGIC = new TextEncoder().encode("RKVSNAP3");
/** The second format: no lease section. */
const MAGIC_V2 = new TextEncoder().encode("RKVSNAP2");
/** The first format: pairs only. */
const MAGIC_V1 = new TextEncoder().encode("RKVSNAP1");
const TRAILER = new TextEncoder().encode("RKVSEND1");
const NAME = /^snap-(\d{16})-(\d{16})\.snap$/;
const RECEIVED = /^snap-(\d{16})-(\d{16})\.snap\.recv$/;
const CHUNK = 256 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** The file name of the snapshot at (`index`, `term`). */
export function snapshotName(index: number, term: number): string {
  return `snap-${String(index).padStart(16, "0")}-${String(term).padStart(16, "0")}.snap`;
}

/**
 * Encodes a snapshot as a stream of chunks of about 256 KiB, so a large state is never one
 * string or one buffer. The entries are read lazily, chunk by chunk.
 */
export async function* encodeSnapshot(
  header: SnapshotHeader,
  content: SnapshotContent,
): AsyncGenerator<Uint8Array> {
  let crc = 0;
  const headerBytes = encoder.encode(JSON.stringify(header));
  const first = new Uint8Array(MAGIC.length + 4 + headerBytes.length);
  first.set(MAGIC, 0);
  new DataView(first.buffer).setUint32(MAGIC.length, headerBytes.length);
  first.set(headerBytes, MAGIC.length + 4);
  crc = crc32cRange(first, 0, first.length, crc);
  yield first;

  let buf = new Uint8Array(CHUNK);
  let view = new DataView(buf.buffer);
  let at = 0;
  /** Makes room for `need` more bytes, yielding the full chunk first. */
  function* room(need: number): Generator<Uint8Array> {
    if (at + need <= buf.length) return;
    if (at > 0) {
      const out = buf.subarray(0, at);
      crc = crc32cRange(out, 0, out.length, crc);
      yield out;
    }
    buf = new Uint8Array(Math.max(CHUNK, need));
    view = new DataView(buf.buffer);
    at = 0;
  }
  let written = 0;
  for (const e of content.entries) {
    // Worst case UTF-8 is 3 bytes per UTF-16 unit.
    yield* room(8 + 3 * (e.key.length + e.value.length) + 24);
    const kLen = encoder.encodeInto(e.key, buf.subarray(at + 4)).written;
    view.setUint32(at, kLen);
    at += 4 + kLen;
    const vLen = encoder.encodeInto(e.value, buf.subarray(at + 4)).written;
    view.setUint32(at, vLen);
    at += 4 + vLen;
    for (const n of [e.createIndex, e.modIndex, e.version]) {
      _setU64(view, at, n);
      at += 8;
    }
    written++;
  }
  if (written !== header.count) {
    throw new RangeError(`snapshot header says ${header.count} entries but ${written} were given`);
  }
  for (const records of [content.sessions, content.leases ?? []]) {
    yield* room(4);
    view.setUint32(at, records.length);
    at += 4;
    for (const s of records) {
      yield* room(4 + s.length);
      view.setUint32(at, s.length);
      buf.set(s, at + 4);
      at += 4 + s.length;
    }
  }
  const tail = new Uint8Array(at + TRAILER.length + 4);
  tail.set(buf.subarray(0, at), 0);
  tail.set(TRAILER, at);
  crc = crc32cRange(tail, 0, at + TRAILER.length, crc);
  new DataView(tail.buffer).setUint32(at + TRAILER.length, crc);
  yield tail;
}

function _setU64(view: DataView, at: number, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${n} is not a u64 up to 2^53-1`);
  view.setUint32(at, Math.floor(n / 2 ** 32));
  view.setUint32(at + 4, n >>> 0);
}

/**
 * Writes a snapshot durably into `dir` as `snapshotName(index, term)` (or with `suffix` appended
 * to the name): temp file, sync, rename, sync the directory. Returns the path.
 */
export async function writeSnapshotFile(
  dir: string,
  chunks: AsyncIterable<Uint8Array>,
  name: string,
  fs: FileSystem = realFs,
): Promise<string> {
  await createDirectory(dir, fs);
  const path = join(dir, name);
  const tmp = `${path}.tmp`;
  const file = await fs.open(tmp, "truncate");
  try {
    for await (const chunk of chunks) await writeAll(file, chunk);
    await file.sync();
  } catch (e) {
    file.close();
    await fs.remove(tmp).catch(() => {});
    throw e;
  }
  file.close();
  await fs.rename(tmp, path);
  await fs.syncDir(dir);
  return path;
}

/**
 * Parses and verifies a snapshot held in memory; throws CorruptFileError naming `path`. With a
 * `sink`, the entries go to it as they are read (the result's `entries` is then empty); an error
 * the sink throws is passed on. The checksum is verified before any entry is parsed.
 */
export function decodeSnapshot(
  bytes: Uint8Array,
  path: string,
  sink?: SnapshotEntrySink,
): LoadedSnapshot {
  const fail: _Fail = _failer(path);
  if (bytes.length >= _MIN_LENGTH) {
    const end = bytes.length - _TAIL;
    _checkEnd(fail, bytes.subarray(end), crc32cRange(bytes, 0, end + TRAILER.length), end);
  }
  const window: _Window = {
    buf: bytes,
    view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
    start: 0,
    end: bytes.length,
    base: 0,
  };
  const step = _parse(window, bytes.length, fail, sink).next();
  // The parser checks every length against the size before it asks for more bytes, and all of
  // them are here.
  if (!step.done) throw new Error("the snapshot parser asked for bytes past the end");
  return step.value;
}

/** The trailer and the checksum: the bytes after the data. */
const _TAIL = 8 + 4;
/** The shortest possible file: magic, header length, trailer, checksum. */
const _MIN_LENGTH = 8 + 4 + _TAIL;
/** The buffer {@linkcode readSnapshotFile} reads through (larger only for a larger entry). */
const _READ_BUFFER = 1 << 20;

/** A function that throws a CorruptFileError naming `path`. */
type _Fail = (what: string, offset: number) => never;

function _failer(path: string): _Fail {
  return (what, offset) => {
    throw new CorruptFileError(path, `snapshot ${what} at byte offset ${offset}`);
  };
}

/**
 * Checks the trailer and the stored checksum (`tail`: the file's last 12 bytes; `end`: where the
 * trailer starts) against the computed `crc`.
 */
function _checkEnd(fail: _Fail, tail: Uint8Array, crc: number, end: number): void {
  for (let i = 0; i < TRAILER.length; i++) {
    if (tail[i] !== TRAILER[i]) fail("missing trailer (truncated file?)", end);
  }
  const stored = new DataView(tail.buffer, tail.byteOffset, _TAIL).getUint32(TRAILER.length);
  if (stored !== crc) fail(`checksum mismatch (stored ${stored}, computed ${crc})`, end);
}

/**
 * The part of a file being parsed: `buf[start, end)` holds the file's bytes from offset
 * `base + start` on; the parser advances `start` past what it consumed.
 */
interface _Window {
  buf: Uint8Array;
  view: DataView;
  start: number;
  end: number;
  base: number;
}

/**
 * Parses a snapshot of `total` bytes from `w`, up to its trailer (which, with the checksum, the
 * caller checks). Yields how many bytes it needs from `w.start` on when the window holds fewer;
 * it checks first that the file has them, so a caller can always provide them. Does not verify
 * the checksum.
 */
function* _parse(
  w: _Window,
  total: number,
  fail: _Fail,
  sink: SnapshotEntrySink | undefined,
): Generator<number, LoadedSnapshot, void> {
  if (total < _MIN_LENGTH) fail(`file too short (${total} bytes)`, 0);
  const end = total - _TAIL;
  if (w.end - w.start < MAGIC.length + 4) yield MAGIC.length + 4;
  const first = w.buf.subarray(w.start, w.start + MAGIC.length);
  const v1 = MAGIC_V1.every((b, i) => first[i] === b);
  const v2 = MAGIC_V2.every((b, i) => first[i] === b);
  if (!v1 && !v2 && !MAGIC.every((b, i) => first[i] === b)) fail("bad magic", 0);
  const hdrLen = w.view.getUint32(w.start + MAGIC.length);
  w.start += MAGIC.length + 4;
  const headerAt = MAGIC.length + 4;
  if (headerAt + hdrLen > end) fail(`header length ${hdrLen} runs past the data`, MAGIC.length);
  if (w.end - w.start < hdrLen) yield hdrLen;
  let header: SnapshotHeader;
  try {
    header = JSON.parse(decoder.decode(w.buf.subarray(w.start, w.start + hdrLen)));
  } catch {
    return fail("unreadable header", headerAt);
  }
  if (
    !Number.isSafeInteger(header.index) || !Number.isSafeInteger(header.term) ||
    !Number.isSafeInteger(header.count) || !Array.isArray(header.voters) ||
    (header.learners !== undefined && !Array.isArray(header.learners)) ||
    (header.info !== undefined && (typeof header.info !== "object" || header.info === null))
  ) {
    fail(`malformed header ${JSON.stringify(header)}`, headerAt);
  }
  w.start += hdrLen;
  const entries: SnapshotEntry[] = [];
  const state = { i: 0 };
  for (;;) {
    const need = _parseEntries(w, end, header, v1, fail, sink, entries, state);
    if (need === 0) break;
    yield need;
  }
  /** The records of a section (`what`: "session" or "lease"). */
  function* records(what: string): Generator<number, Uint8Array[], void> {
    const out: Uint8Array[] = [];
    if (w.base + w.start + 4 > end) fail(`${what} count missing`, w.base + w.start);
    if (w.end - w.start < 4) yield 4;
    const n = w.view.getUint32(w.start);
    w.start += 4;
    for (let i = 0; i < n; i++) {
      const at = w.base + w.start;
      if (at + 4 > end) fail(`${what} ${i} of ${n} missing`, at);
      if (w.end - w.start < 4) yield 4;
      const len = w.view.getUint32(w.start);
      if (at + 4 + len > end) fail(`${what} ${i} runs past the data`, at);
      if (w.end - w.start < 4 + len) yield 4 + len;
      out.push(w.buf.slice(w.start + 4, w.start + 4 + len));
      w.start += 4 + len;
    }
    return out;
  }
  const sessions = v1 ? [] : yield* records("session");
  const leases = v1 || v2 ? [] : yield* records("lease");
  const at = w.base + w.start;
  if (at !== end) fail(`${end - at} unexpected bytes after the last entry`, at);
  return { header, entries, sessions, leases };
}

/**
 * Parses the entries from `state.i` on while the window holds them whole, to `sink` or
 * `entries`. Returns 0 when all `header.count` are done, else how many bytes from `w.start` on
 * the next entry needs (the file has them: checked against `end`).
 */
function _parseEntries(
  w: _Window,
  end: number,
  header: SnapshotHeader,
  v1: boolean,
  fail: _Fail,
  sink: SnapshotEntrySink | undefined,
  entries: SnapshotEntry[],
  state: { i: number },
): number {
  const { buf, view, base } = w;
  const count = header.count;
  const have = w.end;
  const extra = v1 ? 0 : 24;
  let at = w.start;
  let i = state.i;
  let need = 0;
  for (; i < count; i++) {
    if (base + at + 4 > end) fail(`entry ${i} of ${count} missing`, base + at);
    if (at + 4 > have) {
      need = 4;
      break;
    }
    const kLen = view.getUint32(at);
    if (base + at + 4 + kLen + 4 > end) fail(`key ${i} runs past the data`, base + at);
    if (at + 8 + kLen > have) {
      need = 8 + kLen;
      break;
    }
    const keyStart = at + 4;
    const keyEnd = keyStart + kLen;
    const vLen = view.getUint32(keyEnd);
    const valueStart = keyEnd + 4;
    const valueEnd = valueStart + vLen;
    if (base + valueEnd > end) fail(`value ${i} runs past the data`, base + keyEnd);
    if (base + valueEnd + extra > end) {
      const f = Math.floor((end - base - valueEnd) / 8);
      const what = ["create index", "mod index", "version"][f];
      fail(`${what} of entry ${i} runs past the data`, base + valueEnd + 8 * f);
    }
    if (valueEnd + extra > have) {
      need = valueEnd + extra - at;
      break;
    }
    let createIndex = header.index;
    let modIndex = header.index;
    let version = 1;
    if (!v1) {
      createIndex = _u64(view, valueEnd, base, i, 0, fail);
      modIndex = _u64(view, valueEnd + 8, base, i, 1, fail);
      version = _u64(view, valueEnd + 16, base, i, 2, fail);
    }
    if (sink !== undefined) {
      if (!_validUtf8(buf, keyStart, keyEnd)) fail(`key ${i} is not UTF-8`, base + keyStart);
      if (!_validUtf8(buf, valueStart, valueEnd)) {
        fail(`value ${i} is not UTF-8`, base + valueStart);
      }
      sink.addBytes(buf, keyStart, keyEnd, valueStart, valueEnd, createIndex, modIndex, version);
    } else {
      const key = decodeUtf8(buf, keyStart, keyEnd);
      const value = decodeUtf8(buf, valueStart, valueEnd);
      entries.push({ key, value, createIndex, modIndex, version });
    }
    at = valueEnd + extra;
  }
  w.start = at;
  state.i = i;
  return need;
}

/** The u64 at `view[at]` (entry `i`'s revision field `f`), or a failure naming it. */
function _u64(view: DataView, at: number, base: number, i: number, f: number, fail: _Fail): number {
  const high = view.getUint32(at);
  if (high > 0x1fffff) {
    fail(`${["create index", "mod index", "version"][f]} of entry ${i} is above 2^53-1`, base + at);
  }
  return high * 4294967296 + view.getUint32(at + 4);
}

/** Whether `bytes[start, end)` is valid UTF-8 (ASCII is checked without decoding). */
function _validUtf8(bytes: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    if (bytes[i]! >= 0x80) {
      try {
        decoder.decode(bytes.subarray(i, end));
        return true;
      } catch {
        return false;
      }
    }
  }
  return true;
}

/**
 * Reads and verifies the snapshot file at `path`; its entries go to `sink` if one is given (see
 * {@linkcode decodeSnapshot}). The file is read through a buffer of about 1 MiB (more only for a
 * larger entry) and parsed as it is read, so a large snapshot is never held whole in memory.
 *
 * The checksum covers the whole file, so it is known only at the end: entries reach `sink`
 * before the file is verified, and a caller must discard whatever the sink built when this
 * throws. Any failure is reported as the checksum's (or the trailer's) if the file fails it:
 * the rest of the file is read to tell, as when the whole file was verified before it was
 * parsed; an error the sink throws on a file that passes is passed on.
 *
 * @throws {CorruptFileError} If the file is damaged, or changes size while it is read.
 */
export async function readSnapshotFile(
  path: string,
  fs: FileSystem = realFs,
  sink?: SnapshotEntrySink,
): Promise<LoadedSnapshot> {
  const fail: _Fail = _failer(path);
  const total = (await fs.stat(path)).size;
  using file = await fs.open(path, "read");
  const crcEnd = total - 4;
  const tail = new Uint8Array(_TAIL);
  let crc = 0;
  /** How much of the file has been read. */
  let read = 0;
  const w: _Window = {
    buf: new Uint8Array(Math.min(_READ_BUFFER, Math.max(total, 1))),
    view: null!,
    start: 0,
    end: 0,
    base: 0,
  };
  w.view = new DataView(w.buf.buffer);
  /** Reads what fits after `w.end` (at least one byte), keeping the checksum and the tail. */
  const more = async (): Promise<void> => {
    // Unreachable: the parser checks every length against the size before it asks for bytes.
    if (read === total) fail("parse needs bytes past the end of the file", total);
    const n = await file.read(
      w.buf.subarray(w.end, w.end + Math.min(total - read, w.buf.length - w.end)),
    );
    if (n === null) {
      fail(`file shorter than its size of ${total} bytes (changed while read?)`, read);
    }
    const from = w.end;
    if (read < crcEnd) crc = crc32cRange(w.buf, from, from + Math.min(n, crcEnd - read), crc);
    for (let k = Math.max(read, total - _TAIL); k < read + n; k++) {
      tail[k - (total - _TAIL)] = w.buf[from + k - read]!;
    }
    read += n;
    w.end += n;
  };
  /** Makes `need` bytes from `w.start` on available, moving or growing the buffer. */
  const provide = async (need: number): Promise<void> => {
    if (w.start > 0) {
      w.buf.copyWithin(0, w.start, w.end);
      w.base += w.start;
      w.end -= w.start;
      w.start = 0;
    }
    if (need > w.buf.length) {
      const bigger = new Uint8Array(Math.max(need, 2 * w.buf.length));
      bigger.set(w.buf.subarray(0, w.end));
      w.buf = bigger;
      w.view = new DataView(bigger.buffer);
    }
    while (w.end < need) await more();
  };
  /** Reads the rest of the file (for the checksum) and checks that nothing follows. */
  const finish = async (): Promise<void> => {
    while (read < total) {
      w.start = w.end = 0;
      await more();
    }
    if (await file.read(new Uint8Array(1)) !== null) {
      fail(`file longer than its size of ${total} bytes (changed while read?)`, total);
    }
  };
  let loaded: LoadedSnapshot;
  try {
    if (total < _MIN_LENGTH) fail(`file too short (${total} bytes)`, 0);
    const parser = _parse(w, total, fail, sink);
    for (;;) {
      const step = parser.next();
      if (step.done) {
        loaded = step.value;
        break;
      }
      await provide(step.value);
    }
    await finish();
  } catch (e) {
    // A damaged file is reported by its checksum, as if it had been checked first.
    if (total >= _MIN_LENGTH) {
      try {
        await finish();
      } catch {
        throw e;
      }
      _checkEnd(fail, tail, crc, total - _TAIL);
    }
    throw e;
  }
  _checkEnd(fail, tail, crc, total - _TAIL);
  return loaded;
}

/** The complete snapshot files in `dir` (not temp or received ones), newest first. */
export async function listSnapshots(
  dir: string,
  fs: FileSystem = realFs,
): Promise<SnapshotFileInfo[]> {
  const out: SnapshotFileInfo[] = [];
  try {
    for (const e of await fs.readDir(dir)) {
      const m = NAME.exec(e.name);
      if (e.isFile && m) out.push({ path: join(dir, e.name), index: +m[1]!, term: +m[2]! });
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return out.sort((a, b) => b.index - a.index);
}

/** What {@linkcode pruneSnapshots} removes besides snapshots beyond the newest few. */
export interface PruneOptions {
  /** Also every temp and received file (only safe at start-up, when nothing is in flight). */
  leftovers?: boolean;
  /** Also received files of snapshots at or below this index (superseded by an install). */
  receivedUpTo?: number;
}

/** Removes snapshot files beyond the newest `keep`, and what `options` names. */
export async function pruneSnapshots(
  dir: string,
  keep: number,
  options: PruneOptions = {},
  fs: FileSystem = realFs,
): Promise<void> {
  const all = await listSnapshots(dir, fs);
  for (const s of all.slice(keep)) await fs.remove(s.path).catch(() => {});
  if (!options.leftovers && options.receivedUpTo === undefined) return;
  for (const e of await fs.readDir(dir)) {
    let remove = false;
    if (options.leftovers) {
      remove = e.name.endsWith(".tmp") || e.name.endsWith(".recv");
    } else if (e.name.endsWith(".snap.recv")) {
      const m = RECEIVED.exec(e.name);
      remove = m !== null && +m[1]! <= options.receivedUpTo!;
    }
    if (remove) await fs.remove(join(dir, e.name)).catch(() => {});
  }
}

/** Options of {@linkcode removeStaleReceived}. */
export interface StaleReceivedOptions {
  /** Names of received files still needed (being written, waiting to be installed): kept. */
  keep: ReadonlySet<string>;
  /** Only files unneeded for at least this many milliseconds are removed. */
  olderThanMs: number;
  /** The current time in milliseconds, on the clock `seen` was filled from. */
  now: number;
  /**
   * When each received file was first found unneeded, by name: state the caller keeps between
   * calls (start with an empty map). This call adds the files it finds unneeded for the first
   * time, and forgets those it removes, those needed again and those gone.
   */
  seen: Map<string, number>;
}

/**
 * Removes received snapshot files (`.snap.recv`, and the `.snap.recv.tmp` of an upload) in `dir`
 * that are not in `options.keep` (a temp file is kept with its `.snap.recv` name) and were found
 * unneeded by an earlier call at least `options.olderThanMs` ago: those of uploads that failed
 * without cleaning up, or that were superseded or not installed. A file is never removed by the
 * call that first finds it, so one whose upload began after `keep` was computed survives. Returns
 * the removed names. A running node calls it now and then; start-up removes every such file with
 * {@linkcode pruneSnapshots}.
 */
export async function removeStaleReceived(
  dir: string,
  options: StaleReceivedOptions,
  fs: FileSystem = realFs,
): Promise<string[]> {
  const { keep, seen, now } = options;
  const removed: string[] = [];
  let entries;
  try {
    entries = await fs.readDir(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      seen.clear();
      return removed;
    }
    throw e;
  }
  const present = new Set<string>();
  for (const e of entries) {
    const { name } = e;
    if (!e.isFile || !(name.endsWith(".snap.recv") || name.endsWith(".snap.recv.tmp"))) continue;
    const base = name.endsWith(".tmp") ? name.slice(0, -".tmp".length) : name;
    if (keep.has(name) || keep.has(base)) continue;
    present.add(name);
    const since = seen.get(name);
    if (since === undefined) {
      seen.set(name, now);
      continue;
    }
    if (now - since < options.olderThanMs) continue;
    try {
      await fs.remove(join(dir, name));
      removed.push(name);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    present.delete(name);
  }
  for (const name of seen.keys()) if (!present.has(name)) seen.delete(name);
  return removed;
}

/** Streams the file at `path` (for sending a snapshot to a peer or a client). */
export async function openSnapshotStream(
  path: string,
  fs: FileSystem = realFs,
): Promise<ReadableStream<Uint8Array>> {
  const file = await fs.open(path, "read");
  return file.readable;
}
