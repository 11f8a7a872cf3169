/**
 * UTF-8 sizes of strings, computed without encoding them, and a fast decoder for short runs.
 *
 * @module
 */

/**
 * The number of bytes `new TextEncoder().encode(text)` produces, without encoding: a code point
 * below U+0080 is 1 byte, below U+0800 2, a surrogate pair 4, anything else 3. A lone surrogate
 * (one not part of a high-then-low pair) counts 3, because the encoder replaces it by U+FFFD.
 *
 * @example Usage
 * ```ts
 * import { utf8Length } from "./utf8.ts";
 *
 * utf8Length("a"); // 1
 * utf8Length("é"); // 2
 * utf8Length("😀"); // 4
 * utf8Length("\ud800"); // 3, as U+FFFD
 * ```
 *
 * @param text Any string, well-formed or not.
 * @returns Its length in UTF-8 bytes.
 */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4; // a surrogate pair: one code point of 4 bytes
        i++;
      } else {
        bytes += 3; // a lone high surrogate: U+FFFD
      }
    } else bytes += 3; // the rest of the BMP, or a lone surrogate (U+FFFD)
  }
  return bytes;
}

// ignoreBOM: a U+FEFF that begins a key or a value is data. TextDecoder's default takes it for a
// byte order mark and drops it (and `Response.text()` does the same).
const _fatal = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Decodes `bytes[start, end)` as UTF-8. A run of up to 1024 ASCII bytes (most keys and values) is
 * turned into a string directly: TextDecoder's per-call cost dominates small strings, such as the
 * million pairs of a large snapshot. Anything else goes through a fatal TextDecoder. A leading
 * U+FEFF is kept: in a key or a value it is data, not a byte order mark.
 *
 * @example Usage
 * ```ts
 * import { decodeUtf8 } from "./utf8.ts";
 *
 * const bytes = new TextEncoder().encode("key=é");
 * decodeUtf8(bytes, 0, 3); // "key"
 * decodeUtf8(bytes, 4, bytes.length); // "é"
 * ```
 *
 * @param bytes The bytes.
 * @param start The first byte of the run.
 * @param end The byte after its last.
 * @returns The string.
 * @throws {TypeError} If the run is not valid UTF-8.
 */
export function decodeUtf8(bytes: Uint8Array, start: number, end: number): string {
  if (end - start <= 1024) {
    let ascii = true;
    for (let i = start; i < end; i++) {
      if (bytes[i]! >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return String.fromCharCode.apply(null, bytes.subarray(start, end) as never);
  }
  return _fatal.decode(bytes.subarray(start, end));
}
