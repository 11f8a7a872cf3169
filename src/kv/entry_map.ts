/**
 * The state machine's keys, values and revisions in key order, packed: a B+ tree whose leaves
 * each hold up to 64 entries in one buffer (keys and values as UTF-8 bytes, the three revision
 * numbers as float64s), instead of an object and two strings per key. A million keys of 100-byte
 * values take about 140 MB here, against about 250 MB as objects; the JavaScript heap holds only
 * the tree's nodes, so the garbage collector has little to walk.
 *
 * Copy-on-write: {@linkcode EntryMap.freeze} returns a read-only version in constant time by
 * starting a new epoch. A leaf or branch of the current epoch is changed in place; one that
 * belongs to a frozen version is copied (with the path above it) the first time a write touches
 * it. So reading a frozen version while writes continue costs nothing extra.
 *
 * Keys are ordered by their UTF-8 bytes, which is the order of Unicode code points (see
 * {@linkcode compareKeys}); entries are returned as {@linkcode KvEntry} objects made on demand.
 *
 * @module
 */

import { decodeUtf8 } from "../util/utf8.ts";
import { compareKeys } from "./key_order.ts";

/** A key, its value and its revision (the state machine's `KvEntry`). */
export interface KvEntry {
  /** The key. */
  readonly key: string;
  /** The value. */
  readonly value: string;
  /** The log index of the write that created the key. */
  readonly createIndex: number;
  /** The log index of the last write to the key. */
  readonly modIndex: number;
  /** Writes to the key since it was created (1 after the first). */
  readonly version: number;
  /**
   * Set (with `value` empty) in a remembered outcome whose value was too long to remember (see
   * `REMEMBERED_VALUE_CHARS` in `state_machine.ts`); never on an entry read from the state.
   */
  readonly valueOmitted?: true;
}

/** The revision part of a {@linkcode KvEntry}. */
export type Revision = Pick<KvEntry, "createIndex" | "modIndex" | "version">;

/** A read-only version of an {@linkcode EntryMap}, as it was when frozen. */
export interface EntryMapVersion {
  /** The number of entries. */
  readonly size: number;
  /** The entry under `key`, or undefined. */
  get(key: string): KvEntry | undefined;
  /** The entries in key order, from the first key at or after `start` (default: the first). */
  values(start?: string): IterableIterator<KvEntry>;
}

/** The most entries a node holds before it splits. */
const _MAX = 64;
/** A node with fewer entries than this is merged with, or refilled from, a neighbour. */
const _MIN = 16;
/** How full bulk loading fills nodes (room left for inserts). */
const _BULK = 48;

/**
 * A leaf: `n` entries in one buffer, with room for more. `nums[3i..3i+2]` are entry i's
 * createIndex, modIndex and version; its key is `bytes[offs[2i], offs[2i+1])` and its value
 * `bytes[offs[2i+1], offs[2i+2])`. A leaf of the current epoch is changed in place (allocating
 * a buffer per write costs far more than moving a few kilobytes within one); an older one
 * belongs to a frozen version and is copied first.
 */
interface _Leaf {
  epoch: number;
  readonly leaf: true;
  n: number;
  /** The most entries the buffer holds. */
  readonly cap: number;
  readonly nums: Float64Array;
  readonly offs: Uint32Array;
  readonly bytes: Uint8Array;
}

interface _Branch {
  epoch: number;
  leaf: false;
  /** `seps[i]` is the smallest key of `kids[i + 1]`: one fewer than the kids. */
  seps: string[];
  kids: _Node[];
}

type _Node = _Leaf | _Branch;

const _encoder = new TextEncoder();
/** The bytes a leaf of `cap` entries and `byteCount` bytes takes (a multiple of 8). */
function _leafSize(cap: number, byteCount: number): number {
  return (24 * cap + 4 * (2 * cap + 2) + byteCount + 7) & ~7;
}

/**
 * A new empty leaf of `epoch` with room for `cap` entries and `byteCount` bytes: in a buffer of
 * its own, or at `offset` (a multiple of 8) in `buffer`, shared with other leaves.
 */
function _allocLeaf(
  epoch: number,
  cap: number,
  byteCount: number,
  buffer: ArrayBuffer = new ArrayBuffer(_leafSize(cap, byteCount)),
  offset = 0,
): _Leaf {
  const numBytes = 24 * cap;
  const offBytes = 4 * (2 * cap + 2);
  return {
    epoch,
    leaf: true,
    n: 0,
    cap,
    nums: new Float64Array(buffer, offset, 3 * cap),
    offs: new Uint32Array(buffer, offset + numBytes, 2 * cap + 1),
    bytes: new Uint8Array(buffer, offset + numBytes + offBytes, byteCount),
  };
}

/**
 * Bytes of the buffers a builder cuts its leaves from: one allocation per about 140 leaves
 * instead of one each (allocating an ArrayBuffer costs tens of microseconds). A buffer is freed
 * once none of its leaves is in use, so memory can at worst double while writes replace them.
 */
const _SLAB = 1 << 20;

/** Entries of room a leaf gets when it is copied to grow. */
const _SPARE = 8;

/**
 * Replaces `remove` (0 or 1) entries at `i` of an owned `leaf` by `put` (if any), in place: the
 * caller made sure the leaf has room.
 */
function _splice(leaf: _Leaf, i: number, remove: number, put: _Packed | null): void {
  const { offs, nums, bytes } = leaf;
  const add = put === null ? 0 : 1;
  const n = leaf.n;
  const start = offs[2 * i]!;
  const oldEnd = offs[2 * (i + remove)]!;
  const newLen = put === null ? 0 : put.key.length + put.value.length;
  const delta = newLen - (oldEnd - start);
  const used = offs[2 * n]!;
  if (delta !== 0) bytes.copyWithin(start + newLen, oldEnd, used);
  if (add !== remove) {
    nums.copyWithin(3 * (i + add), 3 * (i + remove), 3 * n);
    offs.copyWithin(2 * (i + add), 2 * (i + remove), 2 * n + 1);
  }
  if (delta !== 0) {
    for (let j = 2 * (i + add), end = 2 * (n - remove + add); j <= end; j++) offs[j]! += delta;
  }
  leaf.n = n - remove + add;
  if (put === null) return;
  offs[2 * i] = start;
  bytes.set(put.key, start);
  offs[2 * i + 1] = start + put.key.length;
  bytes.set(put.value, start + put.key.length);
  nums[3 * i] = put.createIndex;
  nums[3 * i + 1] = put.modIndex;
  nums[3 * i + 2] = put.version;
}

/** The bytes of keys and values `leaf` holds. */
function _used(leaf: _Leaf): number {
  return leaf.offs[2 * leaf.n]!;
}

/** An entry to put in a leaf, encoded. */
interface _Packed {
  key: Uint8Array;
  value: Uint8Array;
  createIndex: number;
  modIndex: number;
  version: number;
}

/** A part of a leaf being built: entries `[from, to)` of a leaf, or one new entry. */
type _Part = { leaf: _Leaf; from: number; to: number } | _Packed;

/**
 * A leaf of `epoch` made of `parts`, in order, with room for `spare` more entries and
 * `spareBytes` more bytes.
 */
function _buildLeaf(
  epoch: number,
  parts: readonly _Part[],
  spare = 0,
  spareBytes = 0,
): _Leaf {
  let n = 0;
  let size = 0;
  for (const p of parts) {
    if ("leaf" in p) {
      n += p.to - p.from;
      size += p.leaf.offs[2 * p.to]! - p.leaf.offs[2 * p.from]!;
    } else {
      n++;
      size += p.key.length + p.value.length;
    }
  }
  const out = _allocLeaf(epoch, n + spare, size + spareBytes);
  out.n = n;
  let i = 0;
  let at = 0;
  for (const p of parts) {
    if ("leaf" in p) {
      const src = p.leaf;
      const start = src.offs[2 * p.from]!;
      const end = src.offs[2 * p.to]!;
      out.bytes.set(src.bytes.subarray(start, end), at);
      out.nums.set(src.nums.subarray(3 * p.from, 3 * p.to), 3 * i);
      const shift = at - start;
      for (let j = 2 * p.from; j < 2 * p.to; j++) {
        out.offs[2 * i + j - 2 * p.from] = src.offs[j]! + shift;
      }
      i += p.to - p.from;
      at += end - start;
    } else {
      out.offs[2 * i] = at;
      out.bytes.set(p.key, at);
      at += p.key.length;
      out.offs[2 * i + 1] = at;
      out.bytes.set(p.value, at);
      at += p.value.length;
      out.nums[3 * i] = p.createIndex;
      out.nums[3 * i + 1] = p.modIndex;
      out.nums[3 * i + 2] = p.version;
      i++;
    }
  }
  out.offs[2 * n] = at;
  return out;
}

/** Compares `bytes[start, end)` with `key` byte by byte. */
function _compareBytes(bytes: Uint8Array, start: number, end: number, key: Uint8Array): number {
  const len = end - start;
  const n = len < key.length ? len : key.length;
  for (let i = 0; i < n; i++) {
    const d = bytes[start + i]! - key[i]!;
    if (d !== 0) return d;
  }
  return len - key.length;
}

/** Compares `a[start, end)` with `b[0, bLength)` byte by byte. */
function _compareRanges(
  a: Uint8Array,
  start: number,
  end: number,
  b: Uint8Array,
  bLength: number,
): number {
  const len = end - start;
  const n = len < bLength ? len : bLength;
  for (let i = 0; i < n; i++) {
    const d = a[start + i]! - b[i]!;
    if (d !== 0) return d;
  }
  return len - bLength;
}

/** Copies `from[start, end)` to `to` at `at` (a loop for short runs: no subarray to make). */
function _copy(from: Uint8Array, start: number, end: number, to: Uint8Array, at: number): void {
  if (end - start > 256) {
    to.set(from.subarray(start, end), at);
    return;
  }
  for (let i = start; i < end; i++) to[at++] = from[i]!;
}

/** The index of the first entry of `leaf` whose key is at or after `key`. */
function _lowerBound(leaf: _Leaf, key: Uint8Array): number {
  let lo = 0;
  let hi = leaf.n;
  const offs = leaf.offs;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (_compareBytes(leaf.bytes, offs[2 * mid]!, offs[2 * mid + 1]!, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Whether entry `i` of `leaf` has the key `key`. */
function _keyIs(leaf: _Leaf, i: number, key: Uint8Array): boolean {
  return i < leaf.n &&
    _compareBytes(leaf.bytes, leaf.offs[2 * i]!, leaf.offs[2 * i + 1]!, key) === 0;
}

function _keyAt(leaf: _Leaf, i: number): string {
  return decodeUtf8(leaf.bytes, leaf.offs[2 * i]!, leaf.offs[2 * i + 1]!);
}

function _entryAt(leaf: _Leaf, i: number, key?: string): KvEntry {
  const offs = leaf.offs;
  return {
    key: key ?? decodeUtf8(leaf.bytes, offs[2 * i]!, offs[2 * i + 1]!),
    value: decodeUtf8(leaf.bytes, offs[2 * i + 1]!, offs[2 * i + 2]!),
    createIndex: leaf.nums[3 * i]!,
    modIndex: leaf.nums[3 * i + 1]!,
    version: leaf.nums[3 * i + 2]!,
  };
}

/** Scratch buffers for encoding keys and values without allocating. */
let _keyScratch: Uint8Array = new Uint8Array(1024);
let _valueScratch: Uint8Array = new Uint8Array(4096);

/** `s` as UTF-8 in `buf` (grown when too small): the bytes and the buffer. */
function _encodeInto(s: string, buf: Uint8Array): [Uint8Array, Uint8Array] {
  if (buf.length < 3 * s.length) buf = new Uint8Array(3 * s.length + 1024);
  const n = _encoder.encodeInto(s, buf).written;
  return [buf.subarray(0, n), buf];
}

/** `key` as UTF-8, valid until the next call. */
function _keyBytes(key: string): Uint8Array {
  const [bytes, buf] = _encodeInto(key, _keyScratch);
  _keyScratch = buf;
  return bytes;
}

/** `e` encoded, its bytes valid until the next call. */
function _pack(e: KvEntry): _Packed {
  const key = _keyBytes(e.key);
  const [value, buf] = _encodeInto(e.value, _valueScratch);
  _valueScratch = buf;
  return { key, value, createIndex: e.createIndex, modIndex: e.modIndex, version: e.version };
}

/**
 * A packed sorted map of {@linkcode KvEntry}: see the module doc.
 *
 * @example Usage
 * ```ts
 * import { EntryMap } from "./entry_map.ts";
 *
 * const map = new EntryMap();
 * map.set({ key: "b", value: "2", createIndex: 1, modIndex: 1, version: 1 });
 * map.set({ key: "a", value: "1", createIndex: 2, modIndex: 2, version: 1 });
 * const before = map.freeze();
 * map.delete("a");
 * console.log([...before.values()].map((e) => e.key)); // ["a", "b"]
 * console.log([...map.values()].map((e) => e.key)); // ["b"]
 * ```
 */
export class EntryMap {
  #root: _Node = _allocLeaf(1, 8, 512);
  #size = 0;
  /** The UTF-8 bytes of every key and value. */
  #bytes = 0;
  /** Branches of an older epoch belong to a frozen version: they are copied before a change. */
  #epoch = 1;
  // Outputs of #insert / #remove, to avoid allocating a result object per level.
  #replaced = false;
  #removed = false;
  /** The bytes of the entry #insert replaced or #remove removed. */
  #oldBytes = 0;
  #splitSep = "";
  #splitRight: _Node | null = null;

  /**
   * A map holding `entries`, which must be in strictly increasing key order; built in O(n)
   * without an object per entry surviving.
   *
   * @throws {RangeError} If the entries are not in strictly increasing key order.
   */
  static fromSorted(entries: Iterable<KvEntry>): EntryMap {
    const builder = new EntryMapBuilder();
    for (const e of entries) builder.add(e.key, e.value, e.createIndex, e.modIndex, e.version);
    return builder.finish();
  }

  /** @internal Used by {@linkcode EntryMapBuilder}. */
  static _of(root: _Node, size: number, bytes: number): EntryMap {
    const map = new EntryMap();
    map.#root = root;
    map.#size = size;
    map.#bytes = bytes;
    return map;
  }

  /** The number of entries. */
  get size(): number {
    return this.#size;
  }

  /** The UTF-8 bytes of every key and value: the size of the data, as a quota counts it. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The entry under `key`, or undefined. */
  get(key: string): KvEntry | undefined {
    return _get(this.#root, key);
  }

  /** The revision of the entry under `key` (without reading its value), or undefined. */
  revision(key: string): Revision | undefined {
    const [leaf, i] = _locate(this.#root, key);
    if (i < 0) return undefined;
    const nums = leaf.nums;
    return { createIndex: nums[3 * i]!, modIndex: nums[3 * i + 1]!, version: nums[3 * i + 2]! };
  }

  /** The UTF-8 bytes of the key and value under `key` (without reading the value), or 0. */
  bytesOf(key: string): number {
    const [leaf, i] = _locate(this.#root, key);
    return i < 0 ? 0 : leaf.offs[2 * i + 2]! - leaf.offs[2 * i]!;
  }

  /** Stores `entry` under its key, replacing the entry there. Returns whether one was there. */
  set(entry: KvEntry): boolean {
    this.#replaced = false;
    this.#oldBytes = 0;
    this.#splitRight = null;
    const packed = _pack(entry);
    const root = this.#insert(this.#root, entry.key, packed, _plain(entry.key));
    if (this.#splitRight !== null) {
      this.#root = {
        epoch: this.#epoch,
        leaf: false,
        seps: [this.#splitSep],
        kids: [root, this.#splitRight],
      };
      this.#splitRight = null;
    } else {
      this.#root = root;
    }
    if (!this.#replaced) this.#size++;
    this.#bytes += packed.key.length + packed.value.length - this.#oldBytes;
    return this.#replaced;
  }

  /** Removes the entry under `key`. Returns whether there was one. */
  delete(key: string): boolean {
    this.#removed = false;
    const root = this.#remove(this.#root, _keyBytes(key), key, _plain(key));
    if (!this.#removed) return false;
    this.#root = !root.leaf && root.kids.length === 1 ? root.kids[0]! : root;
    this.#size--;
    this.#bytes -= this.#oldBytes;
    return true;
  }

  /** The entries in key order (as {@linkcode EntryMap.values}). */
  [Symbol.iterator](): IterableIterator<KvEntry> {
    return _iterate(this.#root, undefined);
  }

  /**
   * The entries in key order, from the first key at or after `start` (default: the first). The
   * map must not change while the iterator is in use; iterate a {@linkcode EntryMap.freeze}
   * version for that.
   */
  values(start?: string): IterableIterator<KvEntry> {
    return _iterate(this.#root, start);
  }

  /**
   * A read-only version of the map as it is now, in constant time. Later writes copy the
   * branches they change instead of changing them (leaves are never changed), so the version
   * never changes; it holds the old nodes as long as it is referenced.
   */
  freeze(): EntryMapVersion {
    const root = this.#root;
    const size = this.#size;
    this.#epoch++;
    return {
      size,
      get: (key) => _get(root, key),
      values: (start) => _iterate(root, start),
    };
  }

  #own(node: _Branch): _Branch {
    if (node.epoch === this.#epoch) return node;
    return { epoch: this.#epoch, leaf: false, seps: node.seps.slice(), kids: node.kids.slice() };
  }

  /** Inserts into the subtree; a split is left in #splitSep / #splitRight. */
  #insert(node: _Node, key: string, packed: _Packed, plain: boolean): _Node {
    if (node.leaf) {
      const i = _lowerBound(node, packed.key);
      const same = _keyIs(node, i, packed.key);
      this.#replaced = same;
      const n = node.n + (same ? 0 : 1);
      const epoch = this.#epoch;
      if (n > _MAX) {
        const all = _buildLeaf(epoch, [
          { leaf: node, from: 0, to: i },
          packed,
          { leaf: node, from: i, to: node.n },
        ]);
        const m = n >> 1;
        const half = _used(all) >> 1;
        const right = _buildLeaf(epoch, [{ leaf: all, from: m, to: n }], _SPARE, half >> 1);
        this.#splitSep = _keyAt(right, 0);
        this.#splitRight = right;
        return _buildLeaf(epoch, [{ leaf: all, from: 0, to: m }], _SPARE, half >> 1);
      }
      const offs = node.offs;
      const old = same ? offs[2 * i + 2]! - offs[2 * i]! : 0;
      this.#oldBytes = old;
      const need = _used(node) + packed.key.length + packed.value.length - old;
      let own = node;
      if (node.epoch !== epoch || n > node.cap || need > node.bytes.length) {
        own = _buildLeaf(
          epoch,
          [{ leaf: node, from: 0, to: node.n }],
          n - node.n + _SPARE,
          // The copy holds the old entries first: room for them, then for what grows.
          Math.max(0, need - _used(node)) + (need >> 3),
        );
      }
      _splice(own, i, same ? 1 : 0, packed);
      return own;
    }
    const i = _childIndex(node.seps, key, plain);
    const kid = this.#insert(node.kids[i]!, key, packed, plain);
    const split = this.#splitRight;
    const own = this.#own(node);
    own.kids[i] = kid;
    if (split === null) return own;
    this.#splitRight = null;
    own.seps.splice(i, 0, this.#splitSep);
    own.kids.splice(i + 1, 0, split);
    if (own.kids.length > _MAX) {
      const m = own.kids.length >> 1;
      const right: _Branch = {
        epoch: this.#epoch,
        leaf: false,
        kids: own.kids.splice(m),
        seps: own.seps.splice(m),
      };
      this.#splitSep = own.seps.pop()!;
      this.#splitRight = right;
    }
    return own;
  }

  /** Removes from the subtree: the new subtree (the same one when the key is not in it). */
  #remove(node: _Node, bytes: Uint8Array, key: string, plain: boolean): _Node {
    if (node.leaf) {
      const i = _lowerBound(node, bytes);
      if (!_keyIs(node, i, bytes)) return node;
      this.#removed = true;
      this.#oldBytes = node.offs[2 * i + 2]! - node.offs[2 * i]!;
      const own = node.epoch === this.#epoch
        ? node
        : _buildLeaf(this.#epoch, [{ leaf: node, from: 0, to: node.n }]);
      _splice(own, i, 1, null);
      return own;
    }
    const i = _childIndex(node.seps, key, plain);
    const kid = this.#remove(node.kids[i]!, bytes, key, plain);
    if (!this.#removed) return node;
    const own = this.#own(node);
    own.kids[i] = kid;
    if (_width(kid) < _MIN && own.kids.length > 1) this.#rebalance(own, i);
    return own;
  }

  /** Merges the underfull kid `i` of `node` with a neighbour, or evens them out. */
  #rebalance(node: _Branch, i: number): void {
    const a = i > 0 ? i - 1 : i;
    const l = node.kids[a]!;
    const r = node.kids[a + 1]!;
    if (l.leaf && r.leaf) {
      const total = l.n + r.n;
      const all = [{ leaf: l, from: 0, to: l.n }, { leaf: r, from: 0, to: r.n }];
      if (total <= _MAX) {
        node.kids[a] = _buildLeaf(this.#epoch, all, _SPARE, 0);
        node.kids.splice(a + 1, 1);
        node.seps.splice(a, 1);
        return;
      }
      const joined = _buildLeaf(this.#epoch, all);
      const m = total >> 1;
      node.kids[a] = _buildLeaf(this.#epoch, [{ leaf: joined, from: 0, to: m }], _SPARE, 0);
      const right = _buildLeaf(this.#epoch, [{ leaf: joined, from: m, to: total }], _SPARE, 0);
      node.kids[a + 1] = right;
      node.seps[a] = _keyAt(right, 0);
      return;
    }
    if (l.leaf || r.leaf) throw new Error("B+ tree invariant broken: siblings of two kinds");
    const left = this.#own(l);
    const right = this.#own(r);
    node.kids[a] = left;
    node.kids[a + 1] = right;
    const kids = left.kids.concat(right.kids);
    const seps = left.seps.concat([node.seps[a]!], right.seps);
    if (kids.length <= _MAX) {
      left.kids = kids;
      left.seps = seps;
      node.kids.splice(a + 1, 1);
      node.seps.splice(a, 1);
      return;
    }
    const m = kids.length >> 1;
    left.kids = kids.slice(0, m);
    left.seps = seps.slice(0, m - 1);
    node.seps[a] = seps[m - 1]!;
    right.kids = kids.slice(m);
    right.seps = seps.slice(m);
  }
}

/**
 * Builds an {@linkcode EntryMap} from entries given in strictly increasing key order, leaf by
 * leaf, without an object per entry (loading a snapshot: see `state_machine.ts`).
 */
export class EntryMapBuilder {
  #leaves: _Leaf[] = [];
  #firsts: string[] = [];
  /** The next leaf's keys and values, one after the other. */
  #bytes = new Uint8Array(16384);
  #at = 0;
  /** Where each of the next leaf's keys and values start. */
  #offs = new Uint32Array(2 * _BULK + 1);
  #nums = new Float64Array(3 * _BULK);
  #n = 0;
  /** The buffer leaves are cut from, and how much of it is used. */
  #slab: ArrayBuffer | null = null;
  #slabAt = 0;
  /** The previous key's bytes (its length in #prevLength), to check the order. */
  #prev = new Uint8Array(256);
  #prevLength = -1;
  #size = 0;
  #total = 0;

  /**
   * Adds the next entry.
   *
   * @throws {RangeError} If its key does not come after the previous one.
   */
  add(key: string, value: string, createIndex: number, modIndex: number, version: number): void {
    this.#room(3 * (key.length + value.length));
    const i = this.#n;
    const start = this.#at;
    this.#at += _encoder.encodeInto(key, this.#bytes.subarray(this.#at)).written;
    this.#offs[2 * i + 1] = this.#at;
    this.#at += _encoder.encodeInto(value, this.#bytes.subarray(this.#at)).written;
    this.#added(start, key, createIndex, modIndex, version);
  }

  /**
   * Adds the next entry from UTF-8 bytes (as a snapshot file holds them, which saves making
   * strings): its key is `bytes[keyStart, keyEnd)` and its value `bytes[valueStart, valueEnd)`.
   * The caller has checked that they are valid UTF-8.
   *
   * @throws {RangeError} If its key does not come after the previous one.
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
  ): void {
    const keyLength = keyEnd - keyStart;
    this.#room(keyLength + valueEnd - valueStart);
    const start = this.#at;
    _copy(bytes, keyStart, keyEnd, this.#bytes, start);
    _copy(bytes, valueStart, valueEnd, this.#bytes, start + keyLength);
    this.#at += keyLength + valueEnd - valueStart;
    this.#offs[2 * this.#n + 1] = start + keyLength;
    this.#added(start, null, createIndex, modIndex, version);
  }

  /** Makes room for `need` more bytes in the next leaf's buffer. */
  #room(need: number): void {
    if (this.#at + need <= this.#bytes.length) return;
    const bigger = new Uint8Array(2 * (this.#at + need));
    bigger.set(this.#bytes.subarray(0, this.#at));
    this.#bytes = bigger;
  }

  /** Completes the entry whose bytes were just written at `start` (`key`: its key, if known). */
  #added(
    start: number,
    key: string | null,
    createIndex: number,
    modIndex: number,
    version: number,
  ): void {
    const i = this.#n;
    const keyEnd = this.#offs[2 * i + 1]!;
    const keyLength = keyEnd - start;
    if (
      this.#prevLength >= 0 &&
      _compareRanges(this.#bytes, start, keyEnd, this.#prev, this.#prevLength) <= 0
    ) {
      const shown = key ?? decodeUtf8(this.#bytes, start, keyEnd);
      this.#at = start;
      throw new RangeError(
        `entries are not in increasing key order at ${this.#size}: ${JSON.stringify(shown)}`,
      );
    }
    if (keyLength > this.#prev.length) this.#prev = new Uint8Array(2 * keyLength);
    _copy(this.#bytes, start, keyEnd, this.#prev, 0);
    this.#prevLength = keyLength;
    if (i === 0) this.#firsts.push(key ?? decodeUtf8(this.#bytes, start, keyEnd));
    this.#offs[2 * i] = start;
    this.#nums[3 * i] = createIndex;
    this.#nums[3 * i + 1] = modIndex;
    this.#nums[3 * i + 2] = version;
    this.#n++;
    this.#size++;
    this.#total += this.#at - start;
    if (this.#n === _BULK) this.#flush();
  }

  #flush(): void {
    const n = this.#n;
    if (n === 0) return;
    const size = _leafSize(n, this.#at);
    if (this.#slab === null || this.#slabAt + size > this.#slab.byteLength) {
      this.#slab = new ArrayBuffer(Math.max(_SLAB, size));
      this.#slabAt = 0;
    }
    const leaf = _allocLeaf(1, n, this.#at, this.#slab, this.#slabAt);
    this.#slabAt += size;
    leaf.n = n;
    this.#offs[2 * n] = this.#at;
    leaf.offs.set(this.#offs.subarray(0, 2 * n + 1));
    leaf.nums.set(this.#nums.subarray(0, 3 * n));
    leaf.bytes.set(this.#bytes.subarray(0, this.#at));
    this.#leaves.push(leaf);
    this.#n = 0;
    this.#at = 0;
  }

  /** The map of the entries added. */
  finish(): EntryMap {
    this.#flush();
    if (this.#leaves.length === 0) return new EntryMap();
    let level: _Node[] = this.#leaves;
    let firsts = this.#firsts;
    while (level.length > 1) {
      const up: _Node[] = [];
      const upFirsts: string[] = [];
      for (let i = 0; i < level.length; i += _BULK) {
        up.push({
          epoch: 1,
          leaf: false,
          kids: level.slice(i, i + _BULK),
          seps: firsts.slice(i + 1, i + _BULK),
        });
        upFirsts.push(firsts[i]!);
      }
      level = up;
      firsts = upFirsts;
    }
    return EntryMap._of(level[0]!, this.#size, this.#total);
  }
}

function _width(node: _Node): number {
  return node.leaf ? node.n : node.kids.length;
}

const _HIGH_UNITS = /[\ud800-\uffff]/;

/**
 * Whether `key` has no UTF-16 unit at or above U+D800: then comparing it with any key by code
 * unit (JavaScript's `<`) agrees with comparing by code point (see `key_order.ts`).
 */
function _plain(key: string): boolean {
  return !_HIGH_UNITS.test(key);
}

/** The kid whose subtree holds `key`: the number of separators at or before it. */
function _childIndex(seps: string[], key: string, plain: boolean): number {
  let lo = 0;
  let hi = seps.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const k = seps[mid]!;
    if (plain ? k <= key : compareKeys(k, key) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The leaf that holds `key` if any, and the position of `key` in it (-1: not there). */
function _locate(root: _Node, key: string): [_Leaf, number] {
  const plain = _plain(key);
  let node = root;
  while (!node.leaf) node = node.kids[_childIndex(node.seps, key, plain)]!;
  const bytes = _keyBytes(key);
  const i = _lowerBound(node, bytes);
  return [node, _keyIs(node, i, bytes) ? i : -1];
}

function _get(root: _Node, key: string): KvEntry | undefined {
  const [leaf, i] = _locate(root, key);
  return i < 0 ? undefined : _entryAt(leaf, i, key);
}

function* _iterate(root: _Node, start: string | undefined): Generator<KvEntry> {
  const plain = start === undefined || _plain(start);
  const stack: { node: _Branch; i: number }[] = [];
  let node = root;
  while (!node.leaf) {
    const i = start === undefined ? 0 : _childIndex(node.seps, start, plain);
    stack.push({ node, i });
    node = node.kids[i]!;
  }
  let i = start === undefined ? 0 : _lowerBound(node, _keyBytes(start));
  for (;;) {
    for (; i < node.n; i++) yield _entryAt(node, i);
    let top = stack.at(-1);
    while (top !== undefined && top.i + 1 >= top.node.kids.length) {
      stack.pop();
      top = stack.at(-1);
    }
    if (top === undefined) return;
    top.i++;
    node = top.node.kids[top.i]!;
    while (!node.leaf) {
      stack.push({ node, i: 0 });
      node = node.kids[0]!;
    }
    i = 0;
  }
}
