/**
 * Snapshot contents from and to plain key-value pairs, for tests that care about keys and values
 * but not revisions: every key gets `createIndex` = `modIndex` = the given index and version 1.
 *
 * @module
 */

import type { SnapshotContent, SnapshotEntry } from "../src/storage/snapshot_file.ts";

/**
 * The snapshot content holding `pairs` (each with the revision of a key written once at
 * `index`) and no session records.
 *
 * @param pairs The keys and values.
 * @param index The index every key was written at (default 1).
 * @returns The content, for `encodeSnapshot` or `saveSnapshot`.
 */
export function contentOf(
  pairs: Iterable<readonly [string, string]>,
  index = 1,
): SnapshotContent & { entries: SnapshotEntry[] } {
  const entries = [...pairs].map(([key, value]) => ({
    key,
    value,
    createIndex: index,
    modIndex: index,
    version: 1,
  }));
  return { entries, sessions: [] };
}

/**
 * The keys and values of snapshot entries, in their order.
 *
 * @param data Loaded entries (or anything holding them).
 * @returns `[key, value]` pairs.
 */
export function pairsOf(data: { entries: Iterable<SnapshotEntry> }): [string, string][] {
  return [...data.entries].map((e) => [e.key, e.value]);
}
