/**
 * The framing of WAL records: encoding batches of records into one reusable buffer, and decoding
 * one record at a time with a precise account of what is wrong when it does not verify.
 *
 * Layout (all integers little-endian; see the README):
 *
 * ```
 * header  0  u32  payload length
 *         4  u8   record type (1 = entry, 2 = reset, 3 = commit)
 *         5  3    reserved, zero
 *         8  u32  CRC-32C of the payload
 *        12  u32  CRC-32C of header bytes 0..11
 * entry  16  u64 term, u64 index, u8 entry type, data...
 * reset  16  u64 index, u64 term
 * commit 16  u64 commit index
 * ```
 *
 * @module
 */

import { type Entry, EntryType } from "../raft/types.ts";
import { crc32cRange } from "./crc32c.ts";

/** The size in bytes of a record header. */
export const HEADER_SIZE = 16;

/** The size in bytes of an entry record's payload before the entry's data. */
export const ENTRY_FIELDS_SIZE = 17;

/** The size in bytes of a reset record's payload. */
export const RESET_PAYLOAD_SIZE = 16;

/** The size in bytes of a commit record's payload. */
export const COMMIT_PAYLOAD_SIZE = 8;

/** The largest payload a record can have (the length field is a u32). */
export const MAX_PAYLOAD_SIZE = 0xffff_ffff;

/** The record types. Values are part of the on-disk format: never renumber. */
export enum RecordType {
  /** One Raft log entry. */
  Entry = 1,
  /** The log was replaced by a snapshot; carries the snapshot's last index and term. */
  Reset = 2,
  /**
   * The commit index the node knew when it wrote the record: every entry up to it, as the log
   * stands at this point of the WAL, is committed. Never the first record of a segment.
   */
  Commit = 3,
}

const _INITIAL_CAPACITY = 64 * 1024;
/** Above this capacity, {@linkcode RecordEncoder.clear} drops the buffer instead of keeping it. */
const _RETAINED_CAPACITY = 8 * 1024 * 1024;
const _TWO_32 = 0x1_0000_0000;
/** The largest high word of a u64 that still gives a safe integer. */
const _MAX_SAFE_HIGH = 0x1f_ffff;

/**
 * Encodes records back to back into one growing buffer that is reused from batch to batch, so a
 * batch costs no allocation once the buffer is large enough.
 *
 * @example Usage
 * ```ts
 * import { EntryType } from "../raft/types.ts";
 * import { decodeRecord, RecordEncoder } from "./wal_record.ts";
 *
 * const encoder = new RecordEncoder();
 * encoder.addEntry({ term: 1, index: 1, type: EntryType.Normal, data: new Uint8Array([7]) });
 * const result = decodeRecord(encoder.bytes(), 0);
 * console.assert(result.kind === "entry" && result.entry.data[0] === 7);
 * ```
 */
export class RecordEncoder {
  #buffer = new Uint8Array(_INITIAL_CAPACITY);
  #view = new DataView(this.#buffer.buffer);
  #length = 0;

  /** The number of bytes encoded since the last {@linkcode RecordEncoder.clear}. */
  get length(): number {
    return this.#length;
  }

  /**
   * The encoded bytes: a view of the internal buffer, valid until the next call that changes the
   * encoder.
   */
  bytes(): Uint8Array {
    return this.#buffer.subarray(0, this.#length);
  }

  /** Forgets the encoded records, keeping the buffer for reuse unless it grew very large. */
  clear(): void {
    this.#length = 0;
    if (this.#buffer.length > _RETAINED_CAPACITY) this.#allocate(_INITIAL_CAPACITY);
  }

  /**
   * Appends an entry record.
   *
   * @param entry The entry.
   * @throws {RangeError} If `term` or `index` is not a safe integer of at least 1, or the data is
   * too large for one record.
   * @throws {TypeError} If `type` is not an {@linkcode EntryType} or `data` is not a Uint8Array.
   */
  addEntry(entry: Entry): void {
    const { term, index, type, data } = entry;
    _checkPositive("Entry term", term);
    _checkPositive("Entry index", index);
    if (type !== EntryType.Normal && type !== EntryType.Noop && type !== EntryType.ConfChange) {
      throw new TypeError(`Entry ${index} has unknown type ${String(type)}`);
    }
    if (!(data instanceof Uint8Array)) {
      throw new TypeError(`Entry ${index} data must be a Uint8Array, found ${typeof data}`);
    }
    const payloadSize = ENTRY_FIELDS_SIZE + data.length;
    if (payloadSize > MAX_PAYLOAD_SIZE) {
      throw new RangeError(`Entry ${index} data of ${data.length} bytes is too large for a record`);
    }
    const start = this.#reserve(HEADER_SIZE + payloadSize);
    const p = start + HEADER_SIZE;
    this.#setU64(p, term);
    this.#setU64(p + 8, index);
    this.#buffer[p + 16] = type;
    this.#buffer.set(data, p + ENTRY_FIELDS_SIZE);
    this.#seal(start, RecordType.Entry, payloadSize);
  }

  /**
   * Appends a reset record: on replay the log is emptied and continues at `index + 1`.
   *
   * @param index The last index the installed snapshot covers.
   * @param term The term of that entry.
   * @throws {RangeError} If `index` or `term` is not a safe integer of at least 1.
   */
  addReset(index: number, term: number): void {
    _checkPositive("Reset index", index);
    _checkPositive("Reset term", term);
    const start = this.#reserve(HEADER_SIZE + RESET_PAYLOAD_SIZE);
    this.#setU64(start + HEADER_SIZE, index);
    this.#setU64(start + HEADER_SIZE + 8, term);
    this.#seal(start, RecordType.Reset, RESET_PAYLOAD_SIZE);
  }

  /**
   * Appends a commit record: on replay, the entries up to `index` as the log stands at that point
   * are known committed.
   *
   * @param index The commit index.
   * @throws {RangeError} If `index` is not a safe integer of at least 1.
   */
  addCommit(index: number): void {
    _checkPositive("Commit index", index);
    const start = this.#reserve(HEADER_SIZE + COMMIT_PAYLOAD_SIZE);
    this.#setU64(start + HEADER_SIZE, index);
    this.#seal(start, RecordType.Commit, COMMIT_PAYLOAD_SIZE);
  }

  /** Makes room for `size` more bytes and returns where they start. */
  #reserve(size: number): number {
    const start = this.#length;
    const needed = start + size;
    if (needed > this.#buffer.length) {
      const old = this.#buffer;
      this.#allocate(Math.max(needed, old.length * 2));
      this.#buffer.set(old.subarray(0, start));
    }
    this.#length = needed;
    return start;
  }

  #allocate(capacity: number): void {
    this.#buffer = new Uint8Array(capacity);
    this.#view = new DataView(this.#buffer.buffer);
  }

  #setU64(offset: number, value: number): void {
    this.#view.setUint32(offset, value >>> 0, true);
    this.#view.setUint32(offset + 4, Math.floor(value / _TWO_32), true);
  }

  /** Writes the header of the record at `start` whose payload is already in place. */
  #seal(start: number, type: RecordType, payloadSize: number): void {
    const buffer = this.#buffer;
    const view = this.#view;
    const payload = start + HEADER_SIZE;
    view.setUint32(start, payloadSize, true);
    buffer[start + 4] = type;
    buffer[start + 5] = 0;
    buffer[start + 6] = 0;
    buffer[start + 7] = 0;
    view.setUint32(start + 8, crc32cRange(buffer, payload, payload + payloadSize), true);
    view.setUint32(start + 12, crc32cRange(buffer, start, start + 12), true);
  }
}

/**
 * What {@linkcode decodeRecord} found at an offset. `end` is the offset just past the record (for
 * the failures where the header could be trusted, the offset it claims).
 */
export type DecodeResult =
  /** A verified entry record. */
  | { kind: "entry"; entry: Entry; end: number }
  /** A verified reset record. */
  | { kind: "reset"; index: number; term: number; end: number }
  /** A verified commit record. */
  | { kind: "commit"; index: number; end: number }
  /** Fewer than {@linkcode HEADER_SIZE} bytes remain. */
  | { kind: "short-header"; reason: string }
  /** The header verifies but the payload runs past the end of the bytes. */
  | { kind: "short-payload"; end: number; reason: string }
  /** The header fails its checksum: its length cannot be trusted. */
  | { kind: "bad-header"; reason: string }
  /** The header verifies but the payload fails its checksum. */
  | { kind: "bad-payload"; end: number; reason: string }
  /** Both checksums verify but the content is not a valid record. */
  | { kind: "malformed"; end: number; reason: string };

/**
 * Decodes the record starting at `offset`. The entry data is copied, so the result does not keep
 * `bytes` alive, unless `copy` is false: then it is a view of `bytes` (for a caller that only
 * checks the record, or copies the data itself). Never throws for bad input: every problem is
 * described in the result.
 *
 * @param bytes A segment's content.
 * @param offset Where the record starts; must be below `bytes.length`.
 * @param copy Whether to copy the entry data out of `bytes`. Default true.
 * @returns The record, or what is wrong with it.
 */
export function decodeRecord(bytes: Uint8Array, offset: number, copy = true): DecodeResult {
  const available = bytes.length - offset;
  if (available < HEADER_SIZE) {
    return {
      kind: "short-header",
      reason: `the file ends inside a record header (${available} of ${HEADER_SIZE} bytes)`,
    };
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const storedHeaderCrc = view.getUint32(offset + 12, true);
  const headerCrc = crc32cRange(bytes, offset, offset + 12);
  if (storedHeaderCrc !== headerCrc) {
    return {
      kind: "bad-header",
      reason: `record header checksum mismatch (stored ${_hex(storedHeaderCrc)}, computed ${
        _hex(headerCrc)
      })`,
    };
  }
  const size = view.getUint32(offset, true);
  const payload = offset + HEADER_SIZE;
  const end = payload + size;
  if (end > bytes.length) {
    return {
      kind: "short-payload",
      end,
      reason: `the record's payload of ${size} bytes runs past the end of the file (${
        bytes.length - payload
      } bytes present)`,
    };
  }
  const storedCrc = view.getUint32(offset + 8, true);
  const crc = crc32cRange(bytes, payload, end);
  if (storedCrc !== crc) {
    return {
      kind: "bad-payload",
      end,
      reason: `record payload checksum mismatch (stored ${_hex(storedCrc)}, computed ${_hex(crc)})`,
    };
  }
  const malformed = (reason: string): DecodeResult => ({ kind: "malformed", end, reason });
  const type = bytes[offset + 4]!;
  if (bytes[offset + 5] !== 0 || bytes[offset + 6] !== 0 || bytes[offset + 7] !== 0) {
    return malformed("reserved header bytes are not zero");
  }
  if (type === RecordType.Entry) {
    if (size < ENTRY_FIELDS_SIZE) {
      return malformed(
        `entry record payload of ${size} bytes is shorter than ${ENTRY_FIELDS_SIZE}`,
      );
    }
    const term = _getU64(view, payload);
    const index = _getU64(view, payload + 8);
    const entryType = bytes[payload + 16]!;
    if (!(term >= 1)) return malformed(_invalid("entry term", term));
    if (!(index >= 1)) return malformed(_invalid("entry index", index));
    if (
      entryType !== EntryType.Normal && entryType !== EntryType.Noop &&
      entryType !== EntryType.ConfChange
    ) {
      return malformed(`entry ${index} has unknown entry type ${entryType}`);
    }
    const data = copy
      ? bytes.slice(payload + ENTRY_FIELDS_SIZE, end)
      : bytes.subarray(payload + ENTRY_FIELDS_SIZE, end);
    return { kind: "entry", entry: { term, index, type: entryType, data }, end };
  }
  if (type === RecordType.Reset) {
    if (size !== RESET_PAYLOAD_SIZE) {
      return malformed(`reset record payload is ${size} bytes, expected ${RESET_PAYLOAD_SIZE}`);
    }
    const index = _getU64(view, payload);
    const term = _getU64(view, payload + 8);
    if (!(index >= 1)) return malformed(_invalid("reset index", index));
    if (!(term >= 1)) return malformed(_invalid("reset term", term));
    return { kind: "reset", index, term, end };
  }
  if (type === RecordType.Commit) {
    if (size !== COMMIT_PAYLOAD_SIZE) {
      return malformed(`commit record payload is ${size} bytes, expected ${COMMIT_PAYLOAD_SIZE}`);
    }
    const index = _getU64(view, payload);
    if (!(index >= 1)) return malformed(_invalid("commit index", index));
    return { kind: "commit", index, end };
  }
  return malformed(`unknown record type ${type}`);
}

/** Reads a u64; values above 2^53 - 1 come back as NaN so range checks reject them. */
function _getU64(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true);
  if (high > _MAX_SAFE_HIGH) return NaN;
  return high * _TWO_32 + view.getUint32(offset, true);
}

function _checkPositive(label: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`${label} must be a safe integer of at least 1, found ${value}`);
  }
}

/** Describes a decoded number that failed its range check. */
function _invalid(label: string, value: number): string {
  return `${label} ${
    Number.isNaN(value) ? "is above 2^53 - 1" : `is ${value}, expected at least 1`
  }`;
}

function _hex(value: number): string {
  return `0x${value.toString(16).padStart(8, "0")}`;
}
