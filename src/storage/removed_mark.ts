/**
 * Saving and loading the "removed while away" mark: the index of a peer's committed configuration
 * that left this node out, which this node learned from that peer and not from its own log (see
 * `RaftCore.learnRemoved`). Kept so that a restarted node refuses clients at once, instead of
 * learning it again from a peer (which a learner, that sends nothing on its own, might never do).
 *
 * The file is one line of JSON with a checksum (`{"removed_at":N,"crc32c":"..."}`), replaced
 * whole with {@linkcode writeFileDurably}, beside the hard state file (its path plus
 * `.removed`). A missing file is index 0: no mark.
 *
 * @module
 */

import { decodeCheckedJson, encodeCheckedJson } from "./checked_json.ts";
import { writeFileDurably } from "./durable_file.ts";
import type { FileSystem } from "./fs.ts";
import { realFs } from "./real_fs.ts";

const _SCHEMA = { removed_at: "integer" } as const;

/** Where the mark of a node whose hard state file is `raftStatePath` is kept. */
export function removedMarkPath(raftStatePath: string): string {
  return `${raftStatePath}.removed`;
}

/**
 * Durably replaces the mark file at `path` with `index`. When it resolves the mark survives a
 * crash; if it throws, the file still holds the previous mark.
 *
 * @throws {RangeError} If `index` is not a non-negative safe integer.
 */
export async function saveRemovedMark(
  path: string,
  index: number,
  fs: FileSystem = realFs,
): Promise<void> {
  await writeFileDurably(path, encodeCheckedJson(_SCHEMA, { removed_at: index }), fs);
}

/**
 * Loads the mark saved at `path`: 0 when the file does not exist.
 *
 * @throws {CorruptFileError} If the file is not a valid mark file (the message names it).
 */
export async function loadRemovedMark(path: string, fs: FileSystem = realFs): Promise<number> {
  let bytes: Uint8Array;
  try {
    bytes = await fs.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return 0;
    throw error;
  }
  return decodeCheckedJson(path, bytes, _SCHEMA).removed_at;
}
