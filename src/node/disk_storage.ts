/**
 * The node's durable state on real files: the WAL directory, the hard-state file, the log
 * metadata file and the snapshot directory (see src/storage/README.md and
 * src/snapshot/snapshot_file.ts for their formats), opened and recovered together.
 *
 * Start-up loads the newest snapshot and replays the WAL after it. A corrupt newest snapshot
 * stops the node with the file named: it never silently starts from less.
 *
 * @module
 */

import { dirname, join } from "node:path";
import type { Entry, HardState, SnapshotMeta } from "../raft/types.ts";
import { loadHardState, saveHardState } from "../storage/hard_state.ts";
import { loadLogMetadata, saveLogMetadata } from "../storage/log_metadata.ts";
import { Wal } from "../storage/wal.ts";
import { createDirectory, syncDirectory } from "../storage/durable_file.ts";
import { CorruptFileError } from "../storage/errors.ts";
import {
  listSnapshots,
  type LoadedSnapshot,
  pruneSnapshots,
  readSnapshotFile,
  snapshotName,
  writeSnapshotFile,
} from "../snapshot/snapshot_file.ts";
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
  /** How many snapshot files to keep. Default 2. */
  keepSnapshots?: number;
  /**
   * A backup file (the snapshot format) to start from when the node has no data yet; ignored
   * (with `onNotice`) when it has. Default: none.
   */
  restoreFrom?: string | null;
  /** Told about decisions worth logging. Default: nothing. */
  onNotice?: (message: string) => void;
}

/**
 * Opens (creating if needed) and recovers a node's files. Throws if any of them is corrupt: the
 * node must not start on data it cannot trust.
 */
export async function openDiskStorage(
  paths: DiskPaths,
  options: DiskStorageOptions = {},
): Promise<NodeStorage & { readonly wal: Wal }> {
  await createDirectory(dirname(paths.raftStatePath));
  await createDirectory(dirname(paths.logMetadataPath));
  await createDirectory(paths.snapshotDir);
  const keep = options.keepSnapshots ?? 2;
  const hardState = await loadHardState(paths.raftStatePath);
  const metadata = await loadLogMetadata(paths.logMetadataPath);
  const wal = await Wal.open(
    paths.walDir,
    options.segmentSize === undefined ? {} : { segmentSize: options.segmentSize },
  );

  // The log starts right after a reset record when a received snapshot was being installed:
  // finish that installation if a crash interrupted it.
  const logStart = (wal.entries[0]?.index ?? wal.lastIndex + 1) - 1;
  let snapshots = await listSnapshots(paths.snapshotDir);
  if (options.restoreFrom) {
    const empty = snapshots.length === 0 && wal.lastIndex === 0 && hardState.term === 0;
    if (empty) {
      await _restoreBackup(options.restoreFrom, paths);
      snapshots = await listSnapshots(paths.snapshotDir);
      options.onNotice?.(`restored from ${options.restoreFrom} (index ${snapshots[0]!.index})`);
    } else {
      options.onNotice?.(`--restore-from ignored: this node already has data`);
    }
  }
  if (logStart > (snapshots[0]?.index ?? 0)) {
    await _completeReceivedSnapshot(paths.snapshotDir, logStart);
    snapshots = await listSnapshots(paths.snapshotDir);
  }

  await pruneSnapshots(paths.snapshotDir, keep, { leftovers: true });
  let loaded: LoadedSnapshot | null = null;
  const newest = snapshots[0];
  if (newest) {
    // A damaged newest snapshot is an error, not a reason to fall back silently.
    loaded = await readSnapshotFile(newest.path);
  }
  const snapIndex = loaded?.header.index ?? 0;
  if (metadata.snapshotIndex > snapIndex) {
    throw new CorruptFileError(
      paths.logMetadataPath,
      `it records a snapshot at index ${metadata.snapshotIndex} but the newest snapshot in ${paths.snapshotDir} is at ${snapIndex}`,
    );
  }
  const entries = wal.entries.filter((e) => e.index > snapIndex);
  if ((entries[0]?.index ?? snapIndex + 1) > snapIndex + 1) {
    throw new CorruptFileError(
      paths.walDir,
      `the log starts at ${
        entries[0]!.index
      } but the newest snapshot ends at ${snapIndex}: entries are missing`,
    );
  }
  const snapshot: SnapshotMeta | null = loaded
    ? { index: loaded.header.index, term: loaded.header.term, voters: loaded.header.voters }
    : null;
  if (snapshot && wal.lastIndex < snapshot.index) {
    // A restored backup (or a crash right after one): the log continues after the snapshot.
    await wal.reset(snapshot.index, snapshot.term);
  }

  return {
    wal,
    hardState,
    snapshot,
    snapshotData: loaded?.pairs ?? [],
    snapshotPath: newest?.path ?? null,
    snapshotDir: paths.snapshotDir,
    entries,
    append: (batch: Entry[]) => wal.append(batch),
    saveHardState: (hs: HardState) => saveHardState(paths.raftStatePath, hs),
    async snapshotTaken(meta: SnapshotMeta, compactTo: number): Promise<void> {
      await saveLogMetadata(paths.logMetadataPath, {
        firstIndex: compactTo + 1,
        snapshotIndex: meta.index,
        snapshotTerm: meta.term,
      });
      await wal.compact(compactTo);
      await pruneSnapshots(paths.snapshotDir, keep);
    },
    rollLog: () => wal.rollNext(),
    async installReceived(meta: SnapshotMeta, receivedPath: string): Promise<string> {
      const path = join(paths.snapshotDir, snapshotName(meta.index, meta.term));
      if (await _exists(receivedPath)) {
        // The file must be there before the reset record (the commit point) promises it is.
        // After the reset record, start-up completes the install from the received file.
        await wal.reset(meta.index, meta.term);
        await Deno.rename(receivedPath, path);
        await syncDirectory(paths.snapshotDir);
      } else {
        // A retry after the disk was full: an earlier attempt got as far as the rename (which
        // came after the reset record), or the received file is gone and this throws.
        await Deno.stat(path);
      }
      await saveLogMetadata(paths.logMetadataPath, {
        firstIndex: meta.index + 1,
        snapshotIndex: meta.index,
        snapshotTerm: meta.term,
      });
      // A newer snapshot may already have been received: keep it.
      await pruneSnapshots(paths.snapshotDir, keep, { receivedUpTo: meta.index });
      return path;
    },
    close: () => wal.close(),
  };
}

/** Whether `path` exists. */
async function _exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Verifies a backup and installs it as the node's first snapshot. */
async function _restoreBackup(file: string, paths: DiskPaths): Promise<void> {
  const { header } = await readSnapshotFile(file);
  const source = await Deno.open(file, { read: true });
  await writeSnapshotFile(
    paths.snapshotDir,
    source.readable,
    snapshotName(header.index, header.term),
  );
  await saveLogMetadata(paths.logMetadataPath, {
    firstIndex: header.index + 1,
    snapshotIndex: header.index,
    snapshotTerm: header.term,
  });
}

/** Renames the received snapshot ending at `index` into place, after a crash mid-install. */
async function _completeReceivedSnapshot(dir: string, index: number): Promise<void> {
  const prefix = `snap-${String(index).padStart(16, "0")}-`;
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(prefix) && e.name.endsWith(".snap.recv")) {
      await Deno.rename(join(dir, e.name), join(dir, e.name.slice(0, -".recv".length)));
      await syncDirectory(dir);
      return;
    }
  }
  throw new CorruptFileError(
    dir,
    `the log was reset to a snapshot at index ${index}, but no snapshot file for it exists`,
  );
}
