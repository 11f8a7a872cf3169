/**
 * Saving and loading a node's hard state (term, vote, commit index), with the id of the node it
 * belongs to and of the cluster that node belongs to.
 *
 * The file is one line of JSON with a checksum, replaced whole with
 * {@linkcode writeFileDurably}; see the README for the format.
 *
 * @module
 */

import type { HardState } from "../raft/types.ts";
import { decodeCheckedJson, encodeCheckedJson } from "./checked_json.ts";
import { CorruptFileError } from "./errors.ts";
import { writeFileDurably } from "./durable_file.ts";
import type { FileSystem } from "./fs.ts";
import { realFs } from "./real_fs.ts";

const _SCHEMA = {
  node_id: "string?",
  cluster_id: "string?",
  initial_voters: "string?",
  term: "integer",
  vote: "string",
  commit: "integer",
} as const;

/**
 * The hard state as stored: with the id of the node whose term and vote these are, and of its
 * cluster. Files written before an id was recorded (and by callers that give none) lack it.
 */
export interface StoredHardState extends HardState {
  /** The node the state belongs to, when recorded (undefined: none). */
  nodeId?: string | undefined;
  /** The cluster that node belongs to, when recorded (undefined: none). */
  clusterId?: string | undefined;
  /**
   * The voters the cluster was started with (its cluster file's members), recorded with the
   * cluster's id by a node that started it (undefined: none recorded: a node that joined, or files
   * of an earlier version). Until a snapshot or a configuration entry says otherwise, they are
   * the cluster's members, whatever the cluster file says at a later start.
   */
  initialVoters?: readonly string[] | undefined;
}

/**
 * Durably replaces the hard state file at `path` with `hardState`. When it resolves the new state
 * survives a crash; if it throws, the file still holds the previous state.
 *
 * @param path The hard state file (`--raft-state-path`). Its directory must exist.
 * @param hardState The state to save, with the id of the node it belongs to and of its cluster
 * when known (then written as `node_id` and `cluster_id`, first), and the voters it started with
 * when given (`initial_voters`, comma-separated).
 * @param fs The file system. Default {@linkcode realFs}.
 * @throws {RangeError} If `term` or `commit` is not a non-negative safe integer.
 *
 * @example Usage
 * ```ts ignore
 * import { loadHardState, saveHardState } from "./hard_state.ts";
 *
 * await saveHardState("data/raft-state.json", {
 *   nodeId: "node-1",
 *   clusterId: "6a09e667f3bcc908",
 *   term: 3,
 *   vote: "node-2",
 *   commit: 17,
 * });
 * const hardState = await loadHardState("data/raft-state.json");
 * ```
 */
export async function saveHardState(
  path: string,
  hardState: StoredHardState,
  fs: FileSystem = realFs,
): Promise<void> {
  const { nodeId, clusterId, initialVoters, term, vote, commit } = hardState;
  if (initialVoters?.some((id) => id === "" || id.includes(","))) {
    throw new TypeError(`initial voters must be ids without commas: ${initialVoters.join(" ")}`);
  }
  const fields = {
    ...(nodeId === undefined ? {} : { node_id: nodeId }),
    ...(clusterId === undefined ? {} : { cluster_id: clusterId }),
    ...(initialVoters?.length ? { initial_voters: initialVoters.join(",") } : {}),
    term,
    vote,
    commit,
  };
  await writeFileDurably(path, encodeCheckedJson(_SCHEMA, fields), fs);
}

/**
 * Loads the hard state saved at `path`.
 *
 * @param path The hard state file.
 * @param fs The file system. Default {@linkcode realFs}.
 * @returns The saved state (`nodeId` and `clusterId` only if the file records them), or
 * `{ term: 0, vote: "", commit: 0 }` if the file does not exist.
 * @throws {CorruptFileError} If the file is not a valid hard state file (the message names it).
 */
export async function loadHardState(
  path: string,
  fs: FileSystem = realFs,
): Promise<StoredHardState> {
  let bytes: Uint8Array;
  try {
    bytes = await fs.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { term: 0, vote: "", commit: 0 };
    throw error;
  }
  const { node_id: nodeId, cluster_id: clusterId, initial_voters: voters, term, vote, commit } =
    decodeCheckedJson(path, bytes, _SCHEMA);
  return {
    ...(nodeId === undefined ? {} : { nodeId }),
    ...(clusterId === undefined ? {} : { clusterId }),
    ...(voters === undefined ? {} : { initialVoters: _voters(path, voters) }),
    term,
    vote,
    commit,
  };
}

function _voters(path: string, text: string): string[] {
  const ids = text.split(",");
  if (ids.some((id) => id === "")) {
    throw new CorruptFileError(
      path,
      `field "initial_voters" holds an empty id: ${JSON.stringify(text)}`,
    );
  }
  return ids;
}
