/**
 * A sorted map of values that carry their own string key, as a B+ tree whose versions share
 * structure: {@linkcode OrderedMap.freeze} returns a read-only version in constant time, and the
 * live map copies a node only the first time a write touches it after a freeze (copy-on-write, a
 * path of about four nodes of 64 entries for a million keys). Without open versions, writes
 * change the nodes in place.
 *
 * Keys are ordered by Unicode code point, which is the order of their UTF-8 bytes (JavaScript's
 * `<` compares UTF-16 code units, which differs for characters beyond U+FFFF): see
 * {@linkcode compareKeys}. A lookup costs O(log n) comparisons, and reading a range costs
 * O(log n) plus the entries read, whatever the size of the map.
 *
 * @module
 */

/**
 * Compares two keys by Unicode code point (the order of their UTF-8 bytes): negative when `a`
 * sorts first, zero when equal, positive when `b` sorts first.
 *
 * @example Usage
 * ```ts
 * import { compareKeys } from "./ordered_map.ts";
 *
 * console.log(compareKeys("a", "b") < 0); // true
 * console.log(compareKeys("\u{10000}", "\uffff") > 0); // true: U+10000 sorts after U+FFFF
 * ```
 *
 * @param a One key.
 * @param b The other.
 * @returns The sign of the comparison.
 */
export function compareKeys(a: string, b: string): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      // A surrogate (U+D800-DFFF, half of a code point beyond U+FFFF) sorts after U+E000-FFFF.
      if (x >= 0xd800 && y >= 0xd800) return _rank(x) - _rank(y);
      return x - y;
    }
  }
  return a.length - b.length;
}

function _rank(unit: number): number {
  return unit < 0xe000 ? unit + 0x2000 : unit - 0x800;
}

/** A value stored in an {@linkcode OrderedMap}: it carries its key. */
export interface Keyed {
  /** The key the value is stored under. */
  readonly key: string;
}

/** A read-only version of an {@linkcode OrderedMap}, as it was when frozen. */
export interface OrderedMapVersion<V extends Keyed> {
  /** The number of values. */
  readonly size: number;
  /** The value under `key`, or undefined. */
  get(key: string): V | undefined;
  /** The values in key order, from the first key at or after `start` (default: the first). */
  values(start?: string): IterableIterator<V>;
}

/** The most entries a node holds before it splits. */
const _MAX = 64;
/** A node with fewer entries than this is merged with, or refilled from, a neighbour. */
const _MIN = 16;
/** How full bulk loading fills nodes (room left for inserts). */
const _BULK = 48;

interface _Leaf<V> {
  epoch: number;
  leaf: true;
  vals: V[];
}

interface _Branch<V> {
  epoch: number;
  leaf: false;
  /** `seps[i]` is the smallest key of `kids[i + 1]`: one fewer than the kids. */
  seps: string[];
  kids: _Node<V>[];
}

type _Node<V> = _Leaf<V> | _Branch<V>;

/**
 * A sorted map: see the module doc.
 *
 * @example Usage
 * ```ts
 * import { OrderedMap } from "./ordered_map.ts";
 *
 * const map = new OrderedMap<{ key: string; n: number }>();
 * map.set({ key: "b", n: 2 });
 * map.set({ key: "a", n: 1 });
 * const before = map.freeze();
 * map.delete("a");
 * console.log([...before.values()].map((v) => v.key)); // ["a", "b"]
 * console.log([...map.values()].map((v) => v.key)); // ["b"]
 * ```
 */
export class OrderedMap<V extends Keyed> {
  #root: _Node<V>;
  #size = 0;
  /** Nodes of an older epoch belong to a frozen version: they are copied before a change. */
  #epoch = 1;
  // Outputs of #insert, to avoid allocating a result object per level.
  #previous: V | undefined;
  #splitSep = "";
  #splitRight: _Node<V> | null = null;

  /** An empty map. */
  constructor() {
    this.#root = { epoch: this.#epoch, leaf: true, vals: [] };
  }

  /**
   * A map holding `values`, which must be in strictly increasing key order; built in O(n).
   *
   * @throws {RangeError} If the values are not in strictly increasing key order.
   */
  static fromSorted<V extends Keyed>(values: readonly V[]): OrderedMap<V> {
    for (let i = 1; i < values.length; i++) {
      if (compareKeys(values[i - 1]!.key, values[i]!.key) >= 0) {
        throw new RangeError(
          `values are not in increasing key order at ${i}: ${JSON.stringify(values[i]!.key)}`,
        );
      }
    }
    const map = new OrderedMap<V>();
    if (values.length === 0) return map;
    const epoch = map.#epoch;
    let level: _Node<V>[] = [];
    for (let i = 0; i < values.length; i += _BULK) {
      level.push({ epoch, leaf: true, vals: values.slice(i, i + _BULK) });
    }
    while (level.length > 1) {
      const up: _Node<V>[] = [];
      for (let i = 0; i < level.length; i += _BULK) {
        const kids = level.slice(i, i + _BULK);
        up.push({ epoch, leaf: false, kids, seps: kids.slice(1).map(_firstKey) });
      }
      level = up;
    }
    map.#root = level[0]!;
    map.#size = values.length;
    return map;
  }

  /** The number of values. */
  get size(): number {
    return this.#size;
  }

  /** The value under `key`, or undefined. */
  get(key: string): V | undefined {
    return _get(this.#root, key);
  }

  /**
   * Stores `value` under its key, replacing the value there.
   *
   * @returns The value replaced, or undefined.
   */
  set(value: V): V | undefined {
    this.#previous = undefined;
    this.#splitRight = null;
    const root = this.#insert(this.#root, value, _plain(value.key));
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
    if (this.#previous === undefined) this.#size++;
    return this.#previous;
  }

  /**
   * Removes the value under `key`.
   *
   * @returns The value removed, or undefined when there was none.
   */
  delete(key: string): V | undefined {
    this.#previous = undefined;
    const root = this.#remove(this.#root, key, _plain(key));
    if (root === null) return undefined;
    this.#root = !root.leaf && root.kids.length === 1 ? root.kids[0]! : root;
    this.#size--;
    return this.#previous;
  }

  /**
   * The values in key order, from the first key at or after `start` (default: the first). The
   * map must not change while the iterator is in use; iterate a {@linkcode OrderedMap.freeze}
   * version for that.
   */
  values(start?: string): IterableIterator<V> {
    return _iterate(this.#root, start);
  }

  /**
   * A read-only version of the map as it is now, in constant time. Later writes copy the nodes
   * they change instead of changing them, so the version never changes; it holds the old nodes
   * as long as it is referenced.
   */
  freeze(): OrderedMapVersion<V> {
    const root = this.#root;
    const size = this.#size;
    this.#epoch++;
    return {
      size,
      get: (key) => _get(root, key),
      values: (start) => _iterate(root, start),
    };
  }

  /** `node` itself if this epoch made it, else a copy of it this epoch owns. */
  #own<N extends _Node<V>>(node: N): N {
    if (node.epoch === this.#epoch) return node;
    return (node.leaf ? { epoch: this.#epoch, leaf: true, vals: node.vals.slice() } : {
      epoch: this.#epoch,
      leaf: false,
      seps: node.seps.slice(),
      kids: node.kids.slice(),
    }) as N;
  }

  /** Inserts into the subtree; a split is left in #splitSep / #splitRight. */
  #insert(node: _Node<V>, value: V, plain: boolean): _Node<V> {
    const key = value.key;
    if (node.leaf) {
      const i = _lowerBound(node.vals, key, plain);
      const own = this.#own(node);
      const at = own.vals[i];
      if (at !== undefined && at.key === key) {
        this.#previous = at;
        own.vals[i] = value;
        return own;
      }
      own.vals.splice(i, 0, value);
      if (own.vals.length > _MAX) {
        const right: _Leaf<V> = {
          epoch: this.#epoch,
          leaf: true,
          vals: own.vals.splice(own.vals.length >> 1),
        };
        this.#splitSep = right.vals[0]!.key;
        this.#splitRight = right;
      }
      return own;
    }
    const i = _childIndex(node.seps, key, plain);
    const kid = this.#insert(node.kids[i]!, value, plain);
    const split = this.#splitRight;
    if (kid === node.kids[i] && split === null) return node;
    const own = this.#own(node);
    own.kids[i] = kid;
    if (split === null) return own;
    this.#splitRight = null;
    own.seps.splice(i, 0, this.#splitSep);
    own.kids.splice(i + 1, 0, split);
    if (own.kids.length > _MAX) {
      const m = own.kids.length >> 1;
      const right: _Branch<V> = {
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

  /** Removes from the subtree: the new subtree, or null when the key is not in it. */
  #remove(node: _Node<V>, key: string, plain: boolean): _Node<V> | null {
    if (node.leaf) {
      const i = _lowerBound(node.vals, key, plain);
      if (node.vals[i]?.key !== key) return null;
      const own = this.#own(node);
      this.#previous = own.vals.splice(i, 1)[0];
      return own;
    }
    const i = _childIndex(node.seps, key, plain);
    const kid = this.#remove(node.kids[i]!, key, plain);
    if (kid === null) return null;
    const own = this.#own(node);
    own.kids[i] = kid;
    if (_width(kid) < _MIN && own.kids.length > 1) this.#rebalance(own, i);
    return own;
  }

  /** Merges the underfull kid `i` of `node` with a neighbour, or evens them out. */
  #rebalance(node: _Branch<V>, i: number): void {
    const a = i > 0 ? i - 1 : i;
    const left = this.#own(node.kids[a]!);
    const right = this.#own(node.kids[a + 1]!);
    node.kids[a] = left;
    node.kids[a + 1] = right;
    if (left.leaf && right.leaf) {
      const all = left.vals.concat(right.vals);
      if (all.length <= _MAX) {
        left.vals = all;
        node.kids.splice(a + 1, 1);
        node.seps.splice(a, 1);
        return;
      }
      const m = all.length >> 1;
      left.vals = all.slice(0, m);
      right.vals = all.slice(m);
      node.seps[a] = right.vals[0]!.key;
      return;
    }
    if (left.leaf || right.leaf) throw new Error("B+ tree invariant broken: siblings of two kinds");
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

function _width<V>(node: _Node<V>): number {
  return node.leaf ? node.vals.length : node.kids.length;
}

function _firstKey<V extends Keyed>(node: _Node<V>): string {
  let n = node;
  while (!n.leaf) n = n.kids[0]!;
  return n.vals[0]!.key;
}

const _HIGH_UNITS = /[\ud800-\uffff]/;

/**
 * Whether `key` has no UTF-16 unit at or above U+D800. Then comparing it with any key by code
 * unit (JavaScript's `<`, several times faster) agrees with comparing by code point: at the
 * first unit where they differ, its unit is below every surrogate, so the surrogates' place
 * (see {@linkcode compareKeys}) cannot matter.
 */
function _plain(key: string): boolean {
  return !_HIGH_UNITS.test(key);
}

/** The index of the first value whose key is at or after `key` (`plain`: see _plain). */
function _lowerBound<V extends Keyed>(vals: V[], key: string, plain: boolean): number {
  let lo = 0;
  let hi = vals.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const k = vals[mid]!.key;
    if (plain ? k < key : compareKeys(k, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
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

function _get<V extends Keyed>(root: _Node<V>, key: string): V | undefined {
  const plain = _plain(key);
  let node = root;
  while (!node.leaf) node = node.kids[_childIndex(node.seps, key, plain)]!;
  const v = node.vals[_lowerBound(node.vals, key, plain)];
  return v !== undefined && v.key === key ? v : undefined;
}

function* _iterate<V extends Keyed>(root: _Node<V>, start: string | undefined): Generator<V> {
  const plain = start === undefined || _plain(start);
  const stack: { node: _Branch<V>; i: number }[] = [];
  let node = root;
  while (!node.leaf) {
    const i = start === undefined ? 0 : _childIndex(node.seps, start, plain);
    stack.push({ node, i });
    node = node.kids[i]!;
  }
  let i = start === undefined ? 0 : _lowerBound(node.vals, start, plain);
  for (;;) {
    const vals = node.vals;
    for (; i < vals.length; i++) yield vals[i]!;
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
