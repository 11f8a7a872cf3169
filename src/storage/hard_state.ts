/**
 * Saving and loading a node's hard state (term, vote, commit index).
 *
 * The file is one line of JSON with a checksum, replaced whole with
 * {@linkcode writeFileDurably}; see the README for the format.
 *
 * @module
 */

import type { HardState } from "../raft/types.ts";
import { decodeCheckedJson, encodeCheckedJson } from "./checked_json.ts";
import { writeFileDurably } from "./durable_file.ts";
import type { FileSystem } from "./fs.ts";
import { realFs } from "./real_fs.ts";

const _SCHEMA = { term: "integer", vote: "string", commit: "integer" } as const;

/**
 * Durably replaces the hard state file at `path` with `hardState`. When it resolves the new state
 * survives a crash; if it throws, the file still holds the previous state.
 *
 * @param path The hard state file (`--raft-state-path`). Its directory must exist.
 * @param hardState The state to save.
 * @param fs The file system. Default {@linkcode realFs}.
 * @throws {RangeError} If `term` or `commit` is not a non-negative safe integer.
 *
 * @example Usage
 * ```ts ignore
 * import { loadHardState, saveHardState } from "./hard_state.ts";
 *
 * await saveHardState("data/raft-state.json", { term: 3, vote: "node-2", commit: 17 });
 * const hardState = await loadHardState("data/raft-state.json");
 * ```
 */
export async function saveHardState(
  path: string,
  hardState: HardState,
  fs: FileSystem = realFs,
): Promise<void> {
  const { term, vote, commit } = hardState;
  await writeFileDurably(path, encodeCheckedJson(_SCHEMA, { term, vote, commit }), fs);
}

/**
 * Loads the hard state saved at `path`.
 *
 * @param path The hard state file.
 * @param fs The file system. Default {@linkcode realFs}.
 * @returns The saved state, or `{ term: 0, vote: "", commit: 0 }` if the file does not exist.
 * @throws {CorruptFileError} If the file is not a valid hard state file (the message names it).
 */
export async function loadHardState(
  path: string,
  fs: FileSystem = realFs,
): Promise<HardState> {
  let bytes: Uint8Array;
  try {
    bytes = await fs.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { term: 0, vote: "", commit: 0 };
    throw error;
  }
  const { term, vote, commit } = decodeCheckedJson(path, bytes, _SCHEMA);
  return { term, vote, commit };
}
