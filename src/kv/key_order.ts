/**
 * The order of keys: by Unicode code point, which is the order of their UTF-8 bytes (JavaScript's
 * `<` compares UTF-16 code units, which differs for characters beyond U+FFFF). The state machine's
 * map, ranges and snapshots all sort keys this way.
 *
 * @module
 */

/**
 * Compares two keys by Unicode code point (the order of their UTF-8 bytes): negative when `a`
 * sorts first, zero when equal, positive when `b` sorts first.
 *
 * @example Usage
 * ```ts
 * import { compareKeys } from "./key_order.ts";
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
