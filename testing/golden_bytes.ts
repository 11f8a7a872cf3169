/**
 * Golden byte fixtures: a committed file holding exactly what an encoder produced once, compared
 * byte for byte with what it produces now, so that a change to an on-disk format cannot slip in
 * unnoticed (etcd keeps `wal/testdata` for the same reason). A deliberate format change rewrites
 * the fixtures with `REWRITE=1` (see {@linkcode rewriteRequested}), and the change shows in review.
 *
 * @module
 */

import { dirname, relative } from "node:path";
import { rewriteRequested } from "./datadriven.ts";

export { rewriteRequested };

/** Formats `bytes[from, to)` as hex pairs, for messages. */
export function hexBytes(bytes: Uint8Array, from = 0, to = bytes.length): string {
  return [...bytes.subarray(from, to)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** Parses hex pairs (whitespace ignored) into bytes. */
export function fromHex(text: string): Uint8Array {
  const digits = text.replace(/\s+/g, "");
  if (!/^([0-9a-f]{2})*$/i.test(digits)) throw new RangeError(`not hex pairs: "${text}"`);
  const out = new Uint8Array(digits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(digits.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Compares `actual` with the fixture at `path`; with `REWRITE=1` set, writes `actual` there
 * instead (creating the directory).
 *
 * @param path The committed fixture.
 * @param actual What the encoder produces now.
 * @throws {Error} If the fixture is missing or differs; the message gives both lengths, the first
 * differing offset and the bytes around it.
 */
export async function assertGoldenBytes(path: string, actual: Uint8Array): Promise<void> {
  const name = relative(Deno.cwd(), path);
  if (rewriteRequested()) {
    await Deno.mkdir(dirname(path), { recursive: true });
    await Deno.writeFile(path, actual);
    return;
  }
  let expected: Uint8Array;
  try {
    expected = await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Error(`golden file ${name} is missing; create it with REWRITE=1`);
    }
    throw error;
  }
  let at = 0;
  const common = Math.min(expected.length, actual.length);
  while (at < common && expected[at] === actual[at]) at++;
  if (at === expected.length && at === actual.length) return;
  const from = Math.max(0, at - 8);
  throw new Error(
    `${name} differs from what the encoder writes now (${expected.length} bytes committed, ${actual.length} bytes now), first at byte ${at}:\n` +
      `  committed [${from}..]: ${hexBytes(expected, from, Math.min(expected.length, at + 16))}\n` +
      `  now       [${from}..]: ${hexBytes(actual, from, Math.min(actual.length, at + 16))}\n` +
      `If the format change is deliberate, rewrite the fixture with REWRITE=1 and say so in the commit.`,
  );
}
