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
 * the sink throws is passed on.
 */
export function decodeSnapshot(
  bytes: Uint8Array,
  path: string,
  sink?: SnapshotEntrySink,
): LoadedSnapshot {
  const fail = (what: string, offset: number): never => {
    throw new CorruptFileError(path, `snapshot ${what} at byte offset ${offset}`);
  };
  const min = MAGIC.length + 4 + TRAILER.length + 4;
  if (bytes.length < min) fail(`file too short (${bytes.length} bytes)`, 0);
  const v1 = MAGIC_V1.every((b, i) => bytes[i] === b);
  const v2 = MAGIC_V2.every((b, i) => bytes[i] === b);
  if (!v1 && !v2 && !MAGIC.every((b, i) => bytes[i] === b)) fail("bad magic", 0);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.length - TRAILER.length - 4;
  for (let i = 0; i < TRAILER.length; i++) {
    if (bytes[end + i] !== TRAILER[i]) fail("missing trailer (truncated file?)", end);
  }
  const stored = view.getUint32(end + TRAILER.length);
  const actual = crc32cRange(bytes, 0, end + TRAILER.length);
  if (stored !== actual) fail(`checksum mismatch (stored ${stored}, computed ${actual})`, end);
  const hdrLen = view.getUint32(MAGIC.length);
  let at = MAGIC.length + 4;
  if (at + hdrLen > end) fail(`header length ${hdrLen} runs past the data`, MAGIC.length);
  let header: SnapshotHeader;
  try {
    header = JSON.parse(decoder.decode(bytes.subarray(at, at + hdrLen)));
  } catch {
    return fail("unreadable header", at);
  }
  if (
    !Number.isSafeInteger(header.index) || !Number.isSafeInteger(header.term) ||
    !Number.isSafeInteger(header.count) || !Array.isArray(header.voters) ||
    (header.learners !== undefined && !Array.isArray(header.learners)) ||
    (header.info !== undefined && (typeof header.info !== "object" || header.info === null))
  ) {
    fail(`malformed header ${JSON.stringify(header)}`, at);
  }
  at += hdrLen;
  /** The u64 at `at` (entry `i`'s revision field `f`), or a failure naming it. */
  const u64 = (i: number, f: number): number => {
    const what = () => `${["create index", "mod index", "version"][f]} of entry ${i}`;
    if (at + 8 > end) fail(`${what()} runs past the data`, at);
    const high = view.getUint32(at);
    if (high > 0x1fffff) fail(`${what()} is above 2^53-1`, at);
    const n = high * 4294967296 + view.getUint32(at + 4);
    at += 8;
    return n;
  };
  const entries: SnapshotEntry[] = sink === undefined ? new Array(header.count) : [];
  for (let i = 0; i < header.count; i++) {
    if (at + 4 > end) fail(`entry ${i} of ${header.count} missing`, at);
    const kLen = view.getUint32(at);
    if (at + 4 + kLen + 4 > end) fail(`key ${i} runs past the data`, at);
    const keyStart = at + 4;
    at += 4 + kLen;
    const vLen = view.getUint32(at);
    if (at + 4 + vLen > end) fail(`value ${i} runs past the data`, at);
    const valueStart = at + 4;
    at += 4 + vLen;
    if (sink !== undefined) {
      if (!_validUtf8(bytes, keyStart, keyStart + kLen)) fail(`key ${i} is not UTF-8`, keyStart);
      if (!_validUtf8(bytes, valueStart, at)) fail(`value ${i} is not UTF-8`, valueStart);
      const keyEnd = keyStart + kLen;
      if (v1) sink.addBytes(bytes, keyStart, keyEnd, valueStart, at, header.index, header.index, 1);
      else sink.addBytes(bytes, keyStart, keyEnd, valueStart, at, u64(i, 0), u64(i, 1), u64(i, 2));
      continue;
    }
    const key = decodeUtf8(bytes, keyStart, keyStart + kLen);
    const value = decodeUtf8(bytes, valueStart, at);
    entries[i] = v1
      ? { key, value, createIndex: header.index, modIndex: header.index, version: 1 }
      : { key, value, createIndex: u64(i, 0), modIndex: u64(i, 1), version: u64(i, 2) };
  }
  /** The records of a section (`what`: "session" or "lease"). */
  const records = (what: string): Uint8Array[] => {
    const out: Uint8Array[] = [];
    if (at + 4 > end) fail(`${what} count missing`, at);
    const n = view.getUint32(at);
    at += 4;
    for (let i = 0; i < n; i++) {
      if (at + 4 > end) fail(`${what} ${i} of ${n} missing`, at);
      const len = view.getUint32(at);
      if (at + 4 + len > end) fail(`${what} ${i} runs past the data`, at);
      out.push(bytes.slice(at + 4, at + 4 + len));
      at += 4 + len;
    }
    return out;
  };
  const sessions = v1 ? [] : records("session");
  const leases = v1 || v2 ? [] : records("lease");
  if (at !== end) fail(`${end - at} unexpected bytes after the last entry`, at);
  return { header, entries, sessions, leases };
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
 * {@linkcode decodeSnapshot}).
 */
export async function readSnapshotFile(
  path: string,
  fs: FileSystem = realFs,
  sink?: SnapshotEntrySink,
): Promise<LoadedSnapshot> {
  return decodeSnapshot(await fs.readFile(path), path, sink);
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
