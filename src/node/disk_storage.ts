/**
 * The node's durable state on real files: the WAL directory, the hard-state file and the log
 * metadata file (see src/storage/README.md for their formats), opened and recovered together.
 *
 * @module
 */

import { dirname } from "node:path";
import type { Entry, HardState } from "../raft/types.ts";
import { loadHardState, saveHardState } from "../storage/hard_state.ts";
import { loadLogMetadata } from "../storage/log_metadata.ts";
import { Wal } from "../storage/wal.ts";
import type { NodeStorage } from "./raft_node.ts";

/** Where a node keeps its files. */
export interface DiskPaths {
  /** The WAL directory (`--log-entry-path`). */
  walDir: string;
  /** The hard-state file (`--raft-state-path`). */
  raftStatePath: string;
  /** The log metadata file (`--log-metadata-path`). */
  logMetadataPath: string;
  /** The snapshot directory (`--snapshot-path`). */
  snapshotDir: string;
}

/** Options for {@linkcode openDiskStorage}. */
export interface DiskStorageOptions {
  /** WAL segment size in bytes. Default: the WAL's default (64 MiB). */
  segmentSize?: number;
}

/**
 * Opens (creating if needed) and recovers a node's files. Throws if any of them is corrupt: the
 * node must not start on data it cannot trust.
 */
export async function openDiskStorage(
  paths: DiskPaths,
  options: DiskStorageOptions = {},
): Promise<NodeStorage & { readonly wal: Wal }> {
  await Deno.mkdir(dirname(paths.raftStatePath), { recursive: true });
  await Deno.mkdir(dirname(paths.logMetadataPath), { recursive: true });
  await Deno.mkdir(paths.snapshotDir, { recursive: true });
  const hardState = await loadHardState(paths.raftStatePath);
  const metadata = await loadLogMetadata(paths.logMetadataPath);
  const wal = await Wal.open(
    paths.walDir,
    options.segmentSize === undefined ? {} : { segmentSize: options.segmentSize },
  );
  const entries = wal.entries.filter((e) => e.index > metadata.snapshotIndex);
  return {
    wal,
    hardState,
    snapshot: null,
    snapshotData: [],
    entries,
    append: (batch: Entry[]) => wal.append(batch),
    saveHardState: (hs: HardState) => saveHardState(paths.raftStatePath, hs),
    close: () => wal.close(),
  };
}
