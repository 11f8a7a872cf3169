/**
 * The compact binary encoding of a batch of Raft {@linkcode Message}s, as peers exchange them.
 *
 * Encoding computes the exact size first and writes everything into one preallocated buffer
 * through a `DataView`; decoding reads the same way and hands out entry `data` as subarray views of
 * the input (no copy). Decoding runs on bytes from the network, so it checks every length and value
 * and throws a `RangeError` naming what is wrong and at which byte offset.
 *
 * ## Wire format (version 1)
 *
 * All integers are big-endian. `num` is an IEEE-754 float64 holding a non-negative safe integer
 * (`0 <= n <= 2^53 - 1`): terms and indices fit, one `DataView` call reads or writes it without a
 * `BigInt`, and the decoder rejects NaN, infinities, fractions, negatives and anything above
 * `Number.MAX_SAFE_INTEGER`. `str` is a u16 byte length followed by that many bytes of UTF-8.
 *
 * ```text
 * batch    = magic:u8 (0xA1: 0xA0 | version 1)
 *            count:u32
 *            message * count
 * message  = type:u8 (a MessageType, 1..12)
 *            from:str  to:str
 *            term:num  logTerm:num  index:num  commit:num  rejectHint:num  context:num
 *            reject:u8 (0 or 1)
 *            entryCount:u32  entry * entryCount
 *            hasSnapshot:u8 (0, 1, or 2: a snapshot with its learners and member data)
 *            [snapshot if hasSnapshot > 0]
 * entry    = term:num  index:num  type:u8 (an EntryType, 0..2)  dataLength:u32  data:u8 * dataLength
 * snapshot = index:num  term:num  voterCount:u16  voter:str * voterCount
 *            [if hasSnapshot = 2: learnerCount:u16  learner:str * learnerCount
 *                                 infoCount:u16  (id:str  info:str) * infoCount]
 * ```
 *
 * The batch must end exactly after its last message: trailing bytes are an error.
 *
 * @module
 */

import { utf8Length } from "../util/utf8.ts";
import {
  type Entry,
  EntryType,
  type Message,
  MessageType,
  type SnapshotMeta,
} from "../raft/types.ts";

/** The first byte of every encoded batch: `0xA0` marks raftkv, the low nibble is the version. */
export const CODEC_MAGIC = 0xa1;

const _HEADER_BYTES = 1 + 4;
/** type, two empty strings, six numbers, reject, entry count, snapshot flag. */
const _MIN_MESSAGE_BYTES = 1 + 2 + 2 + 6 * 8 + 1 + 4 + 1;
/** term, index, type, data length. */
const _ENTRY_FIXED_BYTES = 8 + 8 + 1 + 4;
/** index, term, voter count. */
const _SNAPSHOT_FIXED_BYTES = 8 + 8 + 2;
const _MAX_STRING_BYTES = 0xffff;
const _MAX_DATA_BYTES = 0xffffffff;
const _MAX_VOTERS = 0xffff;

const _encoder = new TextEncoder();
const _decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Returns how many bytes `msg` takes inside an encoded batch (the batch adds 5 bytes of header).
 * Lets a sender cap its batches by size without encoding them twice.
 *
 * @throws {RangeError} if a node id is longer than 65535 bytes of UTF-8, or the snapshot has
 * more than 65535 voters.
 */
export function encodedMessageSize(msg: Message): number {
  // The minimum already counts the two u16 length prefixes of `from` and `to`.
  let size = _MIN_MESSAGE_BYTES + _stringSize(msg.from, "from") + _stringSize(msg.to, "to") - 4;
  const entries = msg.entries;
  for (let i = 0; i < entries.length; i++) {
    size += _ENTRY_FIXED_BYTES + entries[i]!.data.byteLength;
  }
  const snap = msg.snapshot;
  if (snap !== null) {
    if (snap.voters.length > _MAX_VOTERS) {
      throw new RangeError(
        `Cannot encode message: snapshot has ${snap.voters.length} voters, more than ${_MAX_VOTERS}`,
      );
    }
    size += _SNAPSHOT_FIXED_BYTES;
    for (const voter of snap.voters) size += _stringSize(voter, "snapshot voter");
    if (_hasConfExtras(snap)) {
      const learners = snap.learners ?? [];
      const info = Object.entries(snap.info ?? {});
      if (learners.length > _MAX_VOTERS || info.length > _MAX_VOTERS) {
        throw new RangeError(`Cannot encode message: snapshot has too many learners or members`);
      }
      size += 4;
      for (const l of learners) size += _stringSize(l, "snapshot learner");
      for (const [id, text] of info) {
        size += _stringSize(id, "snapshot member") + _stringSize(text, "snapshot member info");
      }
    }
  }
  return size;
}

/**
 * Encodes a batch of messages into one freshly allocated buffer (see the module doc for the
 * layout).
 *
 * @throws {RangeError} if a message has an unknown type or entry type, a number field that is not
 * a non-negative safe integer, an over-long node id or entry, or too many voters.
 */
export function encodeMessages(msgs: readonly Message[]): Uint8Array<ArrayBuffer> {
  return _encode(msgs, 0);
}

/**
 * Encodes a batch of messages as one message-stream frame: a 4-byte big-endian length, then the
 * {@linkcode encodeMessages} bytes, in one buffer (no second copy to prepend the length).
 *
 * @throws {RangeError} as {@linkcode encodeMessages}.
 */
export function encodeMessageFrame(msgs: readonly Message[]): Uint8Array<ArrayBuffer> {
  return _encode(msgs, 4);
}

/** Encodes `msgs` after `prefix` bytes; a prefix of 4 holds the encoding's length. */
function _encode(msgs: readonly Message[], prefix: number): Uint8Array<ArrayBuffer> {
  let size = _HEADER_BYTES;
  for (let i = 0; i < msgs.length; i++) size += encodedMessageSize(msgs[i]!);
  const bytes = new Uint8Array(prefix + size);
  const view = new DataView(bytes.buffer);
  if (prefix === 4) view.setUint32(0, size);
  view.setUint8(prefix, CODEC_MAGIC);
  view.setUint32(prefix + 1, msgs.length);
  let off = prefix + _HEADER_BYTES;
  for (let i = 0; i < msgs.length; i++) off = _writeMessage(view, bytes, off, msgs[i]!);
  if (off !== prefix + size) {
    // Unreachable unless the size computation and the writer disagree: never send such bytes.
    throw new RangeError(`Cannot encode messages: wrote ${off - prefix} bytes, expected ${size}`);
  }
  return bytes;
}

/**
 * Decodes a batch produced by {@linkcode encodeMessages}. Entry `data` arrays are views into
 * `bytes` (no copy): do not modify `bytes` while the messages are in use.
 *
 * @throws {RangeError} if `bytes` is not exactly one well-formed batch: bad magic byte, truncated
 * input, a length running past the end, an unknown message or entry type, an invalid number,
 * flag or UTF-8 string, or trailing bytes. The message names the problem and its byte offset.
 */
export function decodeMessages(bytes: Uint8Array): Message[] {
  const r = new _Reader(bytes);
  const magic = r.u8("magic byte");
  if (magic !== CODEC_MAGIC) {
    throw _decodeError(
      `bad magic byte 0x${_hex(magic)} (expected 0x${_hex(CODEC_MAGIC)})`,
      0,
    );
  }
  const count = r.u32("message count");
  r.expectRoom(count, _MIN_MESSAGE_BYTES, "message", 4);
  const msgs: Message[] = [];
  for (let i = 0; i < count; i++) msgs.push(_readMessage(r));
  if (r.off !== bytes.byteLength) {
    throw _decodeError(`${bytes.byteLength - r.off} trailing bytes after ${count} messages`, r.off);
  }
  return msgs;
}

function _writeMessage(view: DataView, bytes: Uint8Array, off: number, msg: Message): number {
  const type = msg.type;
  if (!_isMessageType(type)) {
    throw new RangeError(`Cannot encode message: unknown message type "${type}"`);
  }
  view.setUint8(off, type);
  off += 1;
  off = _writeString(view, bytes, off, msg.from);
  off = _writeString(view, bytes, off, msg.to);
  view.setFloat64(off, _checkNum(msg.term, "term"));
  view.setFloat64(off + 8, _checkNum(msg.logTerm, "logTerm"));
  view.setFloat64(off + 16, _checkNum(msg.index, "index"));
  view.setFloat64(off + 24, _checkNum(msg.commit, "commit"));
  view.setFloat64(off + 32, _checkNum(msg.rejectHint, "rejectHint"));
  view.setFloat64(off + 40, _checkNum(msg.context, "context"));
  view.setUint8(off + 48, msg.reject ? 1 : 0);
  off += 49;
  const entries = msg.entries;
  view.setUint32(off, entries.length);
  off += 4;
  for (let i = 0; i < entries.length; i++) off = _writeEntry(view, bytes, off, entries[i]!);
  const snap = msg.snapshot;
  if (snap === null) {
    view.setUint8(off, 0);
    return off + 1;
  }
  const extras = _hasConfExtras(snap);
  view.setUint8(off, extras ? 2 : 1);
  view.setFloat64(off + 1, _checkNum(snap.index, "snapshot.index"));
  view.setFloat64(off + 9, _checkNum(snap.term, "snapshot.term"));
  view.setUint16(off + 17, snap.voters.length);
  off += 19;
  for (const voter of snap.voters) off = _writeString(view, bytes, off, voter);
  if (!extras) return off;
  const learners = snap.learners ?? [];
  view.setUint16(off, learners.length);
  off += 2;
  for (const l of learners) off = _writeString(view, bytes, off, l);
  const info = Object.entries(snap.info ?? {});
  view.setUint16(off, info.length);
  off += 2;
  for (const [id, text] of info) {
    off = _writeString(view, bytes, off, id);
    off = _writeString(view, bytes, off, text);
  }
  return off;
}

/** Whether a snapshot needs the longer form (flag 2): it has learners or member data. */
function _hasConfExtras(snap: SnapshotMeta): boolean {
  return (snap.learners?.length ?? 0) > 0 || Object.keys(snap.info ?? {}).length > 0;
}

function _writeEntry(view: DataView, bytes: Uint8Array, off: number, entry: Entry): number {
  const type = entry.type;
  if (type !== EntryType.Normal && type !== EntryType.Noop && type !== EntryType.ConfChange) {
    throw new RangeError(`Cannot encode entry ${entry.index}: unknown entry type "${type}"`);
  }
  const data = entry.data;
  if (data.byteLength > _MAX_DATA_BYTES) {
    throw new RangeError(
      `Cannot encode entry ${entry.index}: data is ${data.byteLength} bytes, more than ${_MAX_DATA_BYTES}`,
    );
  }
  view.setFloat64(off, _checkNum(entry.term, "entry.term"));
  view.setFloat64(off + 8, _checkNum(entry.index, "entry.index"));
  view.setUint8(off + 16, type);
  view.setUint32(off + 17, data.byteLength);
  off += 21;
  bytes.set(data, off);
  return off + data.byteLength;
}

/** Writes a u16 length and the UTF-8 bytes; the length was validated by {@linkcode _stringSize}. */
function _writeString(view: DataView, bytes: Uint8Array, off: number, s: string): number {
  const len = utf8Length(s);
  view.setUint16(off, len);
  off += 2;
  if (len === s.length) {
    // ASCII (the usual node id): no subarray, no encoder call.
    for (let i = 0; i < len; i++) bytes[off + i] = s.charCodeAt(i);
  } else {
    _encoder.encodeInto(s, bytes.subarray(off, off + len));
  }
  return off + len;
}

function _stringSize(s: string, field: string): number {
  const len = utf8Length(s);
  if (len > _MAX_STRING_BYTES) {
    throw new RangeError(
      `Cannot encode message: ${field} is ${len} bytes of UTF-8, more than ${_MAX_STRING_BYTES}`,
    );
  }
  return 2 + len;
}

function _checkNum(value: number, field: string): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(
      `Cannot encode message: ${field} must be a non-negative safe integer, got "${value}"`,
    );
  }
  return value;
}

function _isMessageType(type: number): type is MessageType {
  return Number.isInteger(type) && type >= MessageType.Vote && type <= MessageType.ReadIndexResp;
}

function _readMessage(r: _Reader): Message {
  const typeOffset = r.off;
  const type = r.u8("message type");
  if (!_isMessageType(type)) throw _decodeError(`unknown message type ${type}`, typeOffset);
  const from = r.str("from");
  const to = r.str("to");
  const term = r.num("term");
  const logTerm = r.num("logTerm");
  const index = r.num("index");
  const commit = r.num("commit");
  const rejectHint = r.num("rejectHint");
  const context = r.num("context");
  const reject = r.flag("reject");
  const entryCount = r.u32("entry count");
  r.expectRoom(entryCount, _ENTRY_FIXED_BYTES, "entry", 4);
  const entries: Entry[] = [];
  for (let i = 0; i < entryCount; i++) entries.push(_readEntry(r));
  let snapshot: SnapshotMeta | null = null;
  const flagOffset = r.off;
  const snapFlag = r.u8("snapshot flag");
  if (snapFlag > 2) {
    throw _decodeError(`snapshot flag must be 0, 1 or 2, got ${snapFlag}`, flagOffset);
  }
  if (snapFlag > 0) {
    const snapIndex = r.num("snapshot index");
    const snapTerm = r.num("snapshot term");
    const voterCount = r.u16("voter count");
    r.expectRoom(voterCount, 2, "voter", 2);
    const voters: string[] = [];
    for (let i = 0; i < voterCount; i++) voters.push(r.str("voter"));
    snapshot = { index: snapIndex, term: snapTerm, voters };
    if (snapFlag === 2) {
      const learnerCount = r.u16("learner count");
      r.expectRoom(learnerCount, 2, "learner", 2);
      const learners: string[] = [];
      for (let i = 0; i < learnerCount; i++) learners.push(r.str("learner"));
      const infoCount = r.u16("member count");
      r.expectRoom(infoCount, 4, "member", 2);
      const info: Record<string, string> = {};
      for (let i = 0; i < infoCount; i++) {
        const id = r.str("member");
        info[id] = r.str("member info");
      }
      snapshot.learners = learners;
      snapshot.info = info;
    }
  }
  return {
    type,
    from,
    to,
    term,
    logTerm,
    index,
    entries,
    commit,
    reject,
    rejectHint,
    context,
    snapshot,
  };
}

function _readEntry(r: _Reader): Entry {
  const term = r.num("entry term");
  const index = r.num("entry index");
  const typeOffset = r.off;
  const type = r.u8("entry type");
  if (type !== EntryType.Normal && type !== EntryType.Noop && type !== EntryType.ConfChange) {
    throw _decodeError(`unknown entry type ${type}`, typeOffset);
  }
  const len = r.u32("entry data length");
  const data = r.bytes(len, "entry data");
  return { term, index, type, data };
}

/** A bounds-checked cursor over the input. */
class _Reader {
  readonly buf: Uint8Array;
  readonly view: DataView;
  off = 0;

  constructor(bytes: Uint8Array) {
    this.buf = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Throws unless `n` more bytes remain. */
  need(n: number, what: string): void {
    const left = this.buf.byteLength - this.off;
    if (n > left) {
      throw _decodeError(`truncated ${what}: needs ${n} bytes, only ${left} left`, this.off);
    }
  }

  /**
   * Throws unless `count` items of at least `minBytes` each can still fit: rejects an absurd count
   * before looping on it. `countBytes` is the size of the count just read (for the offset).
   */
  expectRoom(count: number, minBytes: number, what: string, countBytes: number): void {
    const left = this.buf.byteLength - this.off;
    if (count * minBytes > left) {
      throw _decodeError(
        `${what} count ${count} runs past the end: needs at least ${count * minBytes} bytes, ` +
          `only ${left} left`,
        this.off - countBytes,
      );
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.view.getUint8(this.off++);
  }

  u16(what: string): number {
    this.need(2, what);
    const v = this.view.getUint16(this.off);
    this.off += 2;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.off);
    this.off += 4;
    return v;
  }

  num(what: string): number {
    this.need(8, what);
    const v = this.view.getFloat64(this.off);
    if (!Number.isSafeInteger(v) || v < 0) {
      throw _decodeError(`${what} is not a non-negative safe integer: "${v}"`, this.off);
    }
    this.off += 8;
    return v;
  }

  flag(what: string): boolean {
    this.need(1, what);
    const v = this.view.getUint8(this.off);
    if (v > 1) throw _decodeError(`${what} must be 0 or 1, got ${v}`, this.off);
    this.off++;
    return v === 1;
  }

  bytes(n: number, what: string): Uint8Array {
    this.need(n, what);
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return out;
  }

  str(what: string): string {
    const start = this.off;
    const len = this.u16(`${what} length`);
    this.need(len, what);
    const bytes = this.buf;
    const off = this.off;
    this.off += len;
    let s = "";
    for (let i = 0; i < len; i++) {
      const b = bytes[off + i]!;
      if (b >= 0x80) {
        // Not ASCII: let the (fatal) decoder validate the UTF-8.
        try {
          return _decoder.decode(bytes.subarray(off, off + len));
        } catch {
          throw _decodeError(`${what} is not valid UTF-8`, start);
        }
      }
      s += String.fromCharCode(b);
    }
    return s;
  }
}

function _decodeError(problem: string, offset: number): RangeError {
  return new RangeError(`Cannot decode messages: ${problem} at offset ${offset}`);
}

function _hex(n: number): string {
  return n.toString(16).padStart(2, "0");
}
