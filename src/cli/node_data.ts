/**
 * Whether a data directory holds a node's data, by the rule the node itself applies to
 * `--restore-from`: it restores a backup only where there is no snapshot file, no WAL entry and
 * no hard state with a term other than 0. Everything is only read, nothing repaired.
 *
 * @module
 */

import { join } from "node:path";
import { loadHardState } from "../storage/hard_state.ts";
import { listSnapshots } from "../storage/snapshot_file.ts";
import { decodeRecord } from "../storage/wal_record.ts";

/** A WAL segment's name: `<sequence>-<firstIndex>.wal`, both 16 decimal digits. */
const _SEGMENT_NAME = /^\d{16}-\d{16}\.wal$/;

/**
 * What in the data directory `dir` (laid out as a node lays it out by default) would make a node
 * started there keep its data and ignore `--restore-from`: `raft-state.json` (a term other than
 * 0), `wal/` (a log entry, or a snapshot's place in the log), `snapshots/` (a snapshot file).
 * Empty when a node would restore there. A hard state with term 0, empty directories and log
 * metadata are no data, as for the node: a restore that failed part-way leaves them.
 *
 * @example Usage
 * ```ts
 * import { nodeDataIn } from "./node_data.ts";
 *
 * const dir = await Deno.makeTempDir();
 * console.assert((await nodeDataIn(dir)).length === 0);
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @param dir The data directory (`--data-dir`).
 * @returns The names of what holds data, in the order above.
 * @throws What reading throws, but not for what does not exist; a hard state that does not
 * decode throws as it would stop the node.
 */
export async function nodeDataIn(dir: string): Promise<string[]> {
  const found: string[] = [];
  if ((await loadHardState(join(dir, "raft-state.json"))).term !== 0) {
    found.push("raft-state.json");
  }
  if (await _walHasEntries(join(dir, "wal"))) found.push("wal/");
  if ((await listSnapshots(join(dir, "snapshots"))).length > 0) found.push("snapshots/");
  return found;
}

/**
 * Whether a WAL segment in `walDir` starts with an entry or a reset record (the first record
 * says where the log stands: a segment's later records only continue it). A segment cut short
 * before its first whole record holds nothing, as for the node.
 */
async function _walHasEntries(walDir: string): Promise<boolean> {
  let names: string[];
  try {
    names = [];
    for await (const e of Deno.readDir(walDir)) {
      if (e.isFile && _SEGMENT_NAME.test(e.name)) names.push(e.name);
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
  for (const name of names) {
    const bytes = await Deno.readFile(join(walDir, name));
    if (bytes.length === 0) continue;
    const first = decodeRecord(bytes, 0, false);
    if (first.kind === "entry" || first.kind === "reset") return true;
  }
  return false;
}
