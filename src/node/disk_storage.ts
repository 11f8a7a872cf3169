/**
 * The node's durable state on a file system: the WAL directory, the hard-state file, the log
 * metadata file and the snapshot directory (see src/storage/README.md and
 * src/storage/snapshot_file.ts for their formats), opened and recovered together, and kept up to
 * date through the {@linkcode NodeStorage} operations. Every file operation goes through the
 * {@linkcode FileSystem} given in the options (the real disk by default), so a simulation can run
 * this very code on a simulated disk.
 *
 * Start-up loads the newest snapshot and replays the WAL after it. A corrupt newest snapshot
 * stops the node with the file named: it never silently starts from less. The files have one
 * owner: the storage holds the lock of `LOCK` in the WAL directory ({@linkcode LOCK_FILE}) from
 * before it reads anything until it is closed, and a second process refuses to start on them.
 *
 * @module
 */

import { dirname, join, resolve } from "node:path";
import { type Entry, EntryType, type HardState, type SnapshotMeta } from "../raft/types.ts";
import { createDirectory } from "../storage/durable_file.ts";
import {
  CorruptFileError,
  DataLockedError,
  ForeignDataError,
  isNoSpace,
} from "../storage/errors.ts";
import type { FileLock, FileSystem } from "../storage/fs.ts";
import { loadHardState, saveHardState } from "../storage/hard_state.ts";
import { loadLogMetadata, type LogMetadata, saveLogMetadata } from "../storage/log_metadata.ts";
import { loadRemovedMark, removedMarkPath, saveRemovedMark } from "../storage/removed_mark.ts";
import { realFs } from "../storage/real_fs.ts";
import {
  encodeSnapshot,
  listSnapshots,
  type LoadedSnapshot,
  openSnapshotStream,
  pruneSnapshots,
  readSnapshotFile,
  removeStaleReceived,
  type SnapshotContent,
  type SnapshotEntry,
  snapshotName,
  writeSnapshotFile,
} from "../storage/snapshot_file.ts";
import { Wal } from "../storage/wal.ts";
import { exponentialBuckets, type Gauge, MetricsRegistry } from "../util/metrics.ts";
import { EntryMapBuilder } from "../kv/state_machine.ts";
import type { NodeStorage, SnapshotData, SnapshotId } from "./raft_node.ts";

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

/**
 * The lock file in the WAL directory that the open storage holds (as etcd locks its WAL files):
 * empty, never read; the lock dies with the process.
 */
export const LOCK_FILE = "LOCK";

/**
 * The suffix of the lock files beside the hard state and the log metadata (`raft-state.json.lock`),
 * held like {@linkcode LOCK_FILE} (also in the snapshot directory): with each path set on its own,
 * two processes may share one of them and not the WAL.
 */
export const LOCK_SUFFIX = ".lock";

/**
 * A node's files predate the record of the voters its cluster started with, hold no snapshot and
 * no configuration entry, and the cluster file's members (or the cluster token) are not those the
 * cluster started with: the node would take its members from a file that may list fewer of them.
 */
export class UnknownMembersError extends Error {
  /** Creates the error for the hard state file `path` and the two cluster ids. */
  constructor(path: string, recorded: string, fromFile: string) {
    super(
      `the cluster file's members (or --cluster-token) are not those this node's cluster started ` +
        `with: "${path}" records cluster ${recorded}, the file and token make ${fromFile}. These ` +
        `files predate the record of a cluster's starting members, and with no snapshot yet the ` +
        `cluster file would decide who votes (a file edited to list fewer members would let this ` +
        `node elect itself without the others). Start it with the cluster file and token the ` +
        `cluster started with (the record is then written), or add or remove members with ` +
        `raftkv members`,
    );
    this.name = "UnknownMembersError";
  }
}

/** Options for {@linkcode openDiskStorage}. */
export interface DiskStorageOptions {
  /**
   * The id of the node the files are for: recorded with the hard state, and checked against the
   * one recorded there at start-up (a {@linkcode ForeignDataError} when they differ). Default:
   * none recorded or checked.
   */
  nodeId?: string;
  /**
   * The id of the cluster this node bootstraps (`bootstrapClusterId`, from the ids of the cluster
   * file's members and the cluster token): recorded with the hard state when the files record
   * none and hold no data yet (a new node, or one about to be restored from a backup), and from
   * then on the cluster this node belongs to. Files that record one keep theirs. Default: none (a
   * node that joins a running cluster learns its cluster's id from the first peer that writes to
   * it or from its join's answer, {@linkcode DiskStorage.adoptClusterId}).
   */
  clusterId?: string;
  /**
   * The voters of the cluster this node bootstraps (the cluster file's members), recorded with
   * `clusterId` (and only then): at later starts {@linkcode DiskStorage.initialVoters} gives them,
   * whatever the cluster file says by then. Default: none recorded.
   */
  initialVoters?: readonly string[];
  /** The file system holding the files. Default: the real disk ({@linkcode realFs}). */
  fs?: FileSystem;
  /** WAL segment size in bytes. Default: the WAL's default (64 MiB). */
  segmentSize?: number;
  /** How many snapshot files to keep. Default 2. */
  keepSnapshots?: number;
  /**
   * A backup file (the snapshot format, on the same file system) to start from when the node has
   * no data yet; ignored (with `onNotice`) when it has. Default: none.
   */
  restoreFrom?: string | null;
  /**
   * The voters of the cluster a restored backup starts (the cluster file's members): a restore
   * bootstraps a new cluster, as `etcdutl snapshot restore` does, so the membership recorded in
   * the backup (another cluster's, perhaps with other addresses) is replaced by this one. Default:
   * the backup's own.
   */
  restoreVoters?: readonly string[];
  /** Told about decisions worth logging. Default: nothing. */
  onNotice?: (message: string) => void;
  /**
   * Where the storage's metrics are registered (WAL fsync durations, snapshot size: a `stat` of
   * each new snapshot file). Default: none kept, no `stat`.
   */
  metrics?: MetricsRegistry;
}

/**
 * Opens (creating if needed) and recovers a node's files, in this order:
 *
 * 0. the directories (made if missing), then the lock of {@linkcode LOCK_FILE} in the WAL
 *    directory: another process holding it (another node on these files) is a
 *    {@linkcode DataLockedError}, and no file is read or written;
 * 1. the hard state (term, vote, commit; the commit index raised to the WAL's newest commit record
 *    in step 3): recorded for another node than `nodeId`, it is a {@linkcode ForeignDataError},
 *    and nothing more is read or written; with `clusterId` given, a node with no data and no
 *    cluster recorded records it after step 3 (a full disk leaves that to its first write);
 * 2. the log metadata (which snapshot the log was compacted to);
 * 3. the WAL, replayed (a torn final record is cut off);
 * 4. a backup to start from, if `restoreFrom` names one and the node has no data;
 * 5. an install of a received snapshot that a crash interrupted after its reset record: the
 *    received file is renamed into place;
 * 6. the newest snapshot (leftover temp and received files are removed first);
 * 7. the log entries after it.
 *
 * @param paths Where the files are.
 * @param options The file system and how to keep the files.
 * @returns The recovered storage, open for writing.
 * @throws {DataLockedError} If another process holds the files' lock.
 * @throws {ForeignDataError} If the hard state belongs to another node than `options.nodeId`.
 * @throws {CorruptFileError} If any file is corrupt, or the files disagree (the log metadata
 * names a snapshot that is missing, or entries between the snapshot and the log are missing): the
 * node must not start on data it cannot trust.
 *
 * @example Usage
 * ```ts ignore
 * import { openDiskStorage } from "./disk_storage.ts";
 *
 * const storage = await openDiskStorage({
 *   walDir: "data/wal",
 *   raftStatePath: "data/raft-state.json",
 *   logMetadataPath: "data/log-metadata.json",
 *   snapshotDir: "data/snapshots",
 * });
 * console.log(storage.hardState, storage.entries.length);
 * await storage.close();
 * ```
 */
export async function openDiskStorage(
  paths: DiskPaths,
  options: DiskStorageOptions = {},
): Promise<DiskStorage> {
  const fs = options.fs ?? realFs;
  const metrics = options.metrics ?? new MetricsRegistry();
  // Directories first (creating one that exists changes nothing), then the lock.
  await createDirectory(dirname(paths.raftStatePath), fs);
  await createDirectory(dirname(paths.logMetadataPath), fs);
  await createDirectory(paths.snapshotDir, fs);
  await createDirectory(paths.walDir, fs);
  const lock = await _lockAll(fs, [
    join(paths.walDir, LOCK_FILE),
    // Each path can be set on its own (--raft-state-path, ...): two processes that share any of
    // these files, not only the WAL, would undo each other's writes (a term going back).
    `${paths.raftStatePath}${LOCK_SUFFIX}`,
    `${paths.logMetadataPath}${LOCK_SUFFIX}`,
    join(paths.snapshotDir, LOCK_FILE),
  ]);
  try {
    return await _recover(paths, options, fs, metrics, lock);
  } catch (e) {
    lock.release();
    throw e;
  }
}

/**
 * Takes every lock in `paths`, in order, as one; none is held if one is taken already. A path
 * given twice (the snapshot directory set to the WAL directory) is locked once.
 */
async function _lockAll(fs: FileSystem, paths: string[]): Promise<FileLock> {
  const held: FileLock[] = [];
  const release = () => {
    for (const l of held.splice(0).reverse()) {
      try {
        l.release();
      } catch {
        // The lock dies with the process anyway; the others are still let go.
      }
    }
  };
  try {
    for (const path of new Set(paths.map((p) => resolve(p)))) {
      const lock = await fs.tryLock(path);
      if (lock === null) throw new DataLockedError(path);
      held.push(lock);
    }
  } catch (e) {
    release();
    throw e;
  }
  return { release, [Symbol.dispose]: release };
}

/** {@linkcode openDiskStorage} once the lock is held: steps 1 to 7. */
async function _recover(
  paths: DiskPaths,
  options: DiskStorageOptions,
  fs: FileSystem,
  metrics: MetricsRegistry,
  lock: FileLock,
): Promise<DiskStorage> {
  const snapshotSize = options.metrics?.gauge(
    "raftkv_snapshot_size_bytes",
    "Size of this node's newest snapshot file (saved, installed or loaded at start-up).",
  );

  const {
    nodeId: owner,
    clusterId: recordedCluster,
    initialVoters: recordedVoters,
    ...storedHardState
  } = await loadHardState(paths.raftStatePath, fs);
  if (owner !== undefined && options.nodeId !== undefined && owner !== options.nodeId) {
    throw new ForeignDataError(paths.raftStatePath, owner, options.nodeId);
  }
  const removedAt = await loadRemovedMark(removedMarkPath(paths.raftStatePath), fs);
  const metadata = await loadLogMetadata(paths.logMetadataPath, fs);
  const wal = await Wal.open(paths.walDir, {
    fs,
    // The newest snapshot covers at least what the log metadata records (else start-up fails
    // below): the entries up to there are checked but not kept.
    skipThrough: metadata.snapshotIndex,
    ...(options.segmentSize === undefined ? {} : { segmentSize: options.segmentSize }),
    syncDuration: metrics.histogram(
      "raftkv_wal_fsync_duration_seconds",
      "Time the WAL's syncData took for one appended batch (group commit).",
      exponentialBuckets(0.0001, 2, 16),
    ),
  });
  // The hard state is written only when the term or vote changes; the WAL's commit records
  // carry the commit index further (see the README, "Commit records").
  const hardState = {
    ...storedHardState,
    commit: Math.max(storedHardState.commit, wal.committed),
  };
  const nodeId = options.nodeId ?? owner;
  // A new node of a new cluster (or one restored from a backup, which starts a new cluster)
  // records the id of its cluster before anything else is written.
  let clusterId = recordedCluster;
  let initialVoters = recordedVoters;
  let clusterIdSaved = true;
  if (clusterId === undefined && options.clusterId !== undefined) {
    const empty = wal.lastIndex === 0 && hardState.term === 0 &&
      (await listSnapshots(paths.snapshotDir, fs)).length === 0;
    if (empty) {
      clusterId = options.clusterId;
      initialVoters = options.initialVoters;
      try {
        const stored = { ...hardState, nodeId, clusterId, initialVoters };
        await saveHardState(paths.raftStatePath, stored, fs);
      } catch (e) {
        // Recorded with the node's first write instead (see DiskStorage.adoptClusterId).
        if (!isNoSpace(e)) throw e;
        clusterIdSaved = false;
      }
    }
  }
  if (options.restoreFrom) {
    await _restoreIfEmpty(fs, paths, options.restoreFrom, hardState, wal, options);
  }
  await _completeInterruptedInstall(fs, paths.snapshotDir, wal);
  const loaded = await _loadNewestSnapshot(fs, paths, options.keepSnapshots ?? 2, metadata);
  const entries = _entriesAfter(paths.walDir, wal, loaded?.header.index ?? 0);

  const snapshot: SnapshotMeta | null = loaded
    ? {
      index: loaded.header.index,
      term: loaded.header.term,
      voters: loaded.header.voters,
      ...(loaded.header.learners ? { learners: loaded.header.learners } : {}),
      ...(loaded.header.info ? { info: loaded.header.info } : {}),
    }
    : null;
  if (snapshot && wal.lastIndex < snapshot.index) {
    // A restored backup (or a crash right after one): the log continues after the snapshot.
    await wal.reset(snapshot.index, snapshot.term);
  }
  if (
    recordedCluster !== undefined && recordedVoters === undefined &&
    options.clusterId !== undefined && options.initialVoters !== undefined
  ) {
    // Files of a version that did not record the voters a cluster started with: the cluster
    // file gives them, which is right only if it is the one the cluster started with. Its
    // members (and token) make the cluster id this node recorded then: if they still do, they
    // are recorded now; if not, and no snapshot or configuration entry says who the members
    // are, the node must not start (with a file edited to list fewer members, it would elect
    // itself without the others).
    if (recordedCluster === options.clusterId) {
      initialVoters = options.initialVoters;
      // Recorded now, as a new node records them at its first start (with the next save, a stop
      // that changed nothing would leave the files as they were).
      try {
        const stored = { ...storedHardState, nodeId, clusterId: recordedCluster, initialVoters };
        await saveHardState(paths.raftStatePath, stored, fs);
      } catch (e) {
        // Recorded with the node's next save instead.
        if (!isNoSpace(e)) throw e;
      }
    } else if (snapshot === null && !entries.some((e) => e.type === EntryType.ConfChange)) {
      throw new UnknownMembersError(paths.raftStatePath, recordedCluster, options.clusterId);
    }
  }
  // Entries are durable before any record of their commit (the hard state, a commit record) is
  // written, so a commit index past the end of the log means committed entries were lost: a WAL
  // segment deleted or cut short. Starting on less would go back on what this node acknowledged.
  const lastIndex = Math.max(wal.lastIndex, snapshot?.index ?? 0);
  if (hardState.commit > lastIndex) {
    throw new CorruptFileError(
      paths.walDir,
      `the log ends at index ${lastIndex}, but the node recorded index ${hardState.commit} as ` +
        `committed: committed entries are missing (a WAL segment deleted or cut short). Put the ` +
        `missing segments back, or empty the data directory and start the node with --join ` +
        `(see "Data on disk" in the README)`,
    );
  }
  if (wal.tornTail) {
    const { path, offset, bytes } = wal.tornTail;
    options.onNotice?.(
      `cut ${bytes} bytes off the end of ${path} (offset ${offset}): a write the node had not ` +
        `finished when it stopped`,
    );
  }
  if (storedHardState.term === 0 && lastIndex > 0 && await _missing(fs, paths.raftStatePath)) {
    // Entries are written before the hard state of their term: a crash between the two leaves
    // this (and then no vote was sent). Otherwise the file was lost, and with it a vote.
    options.onNotice?.(
      `${paths.raftStatePath} is missing but the log holds entries: starting in the log's term ` +
        `with no vote (expected only after a crash before the node's first state save; if the ` +
        `file was deleted, this node may vote twice in a term)`,
    );
  }
  const storage = new DiskStorage(fs, paths, options.keepSnapshots ?? 2, wal, lock, {
    nodeId,
    clusterId,
    initialVoters,
    clusterIdSaved,
    hardState,
    removedAt,
    snapshot,
    snapshotData: {
      entries: loaded?.entries ?? [],
      sessions: loaded?.sessions ?? [],
      leases: loaded?.leases ?? [],
    },
    entries,
  }, snapshotSize);
  if (snapshot) await storage._measureSnapshot(snapshot);
  return storage;
}

/** Whether `path` does not exist (any other error is thrown). */
async function _missing(fs: FileSystem, path: string): Promise<boolean> {
  try {
    await fs.stat(path);
    return false;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return true;
    throw e;
  }
}

/** What {@linkcode openDiskStorage} recovered. */
interface _Recovered {
  /** The node the files are for (`DiskStorageOptions.nodeId`), recorded with the hard state. */
  nodeId: string | undefined;
  /** The cluster that node belongs to, if known. */
  clusterId: string | undefined;
  /** The voters its cluster started with, if recorded. */
  initialVoters: readonly string[] | undefined;
  /** Whether the hard state file records `clusterId` already. */
  clusterIdSaved: boolean;
  hardState: HardState;
  removedAt: number;
  snapshot: SnapshotMeta | null;
  snapshotData: SnapshotData;
  entries: Entry[];
}

/**
 * A node's recovered files, open for writing: the {@linkcode NodeStorage} a
 * {@linkcode RaftNode} runs on. Made by {@linkcode openDiskStorage}.
 */
export class DiskStorage implements NodeStorage {
  /** The write-ahead log (for tests and tools: the node goes through the methods). */
  readonly wal: Wal;
  readonly hardState: HardState;
  readonly removedAt: number;
  readonly snapshot: SnapshotMeta | null;
  snapshotData: SnapshotData;
  entries: Entry[];
  readonly #fs: FileSystem;
  readonly #paths: DiskPaths;
  readonly #keep: number;
  /** When each unneeded received file was first seen by a sweep (see removeStaleReceived). */
  readonly #unneededSince = new Map<string, number>();
  readonly #snapshotSize: Gauge | undefined;
  readonly #lock: FileLock;
  readonly #nodeId: string | undefined;
  #clusterId: string | undefined;
  /** Recorded with the cluster id: see {@linkcode DiskStorage.initialVoters}. */
  readonly #initialVoters: readonly string[] | undefined;
  /** Whether the hard state file records `#clusterId` (false: write it before anything else). */
  #clusterIdSaved: boolean;
  /** The hard state as last saved (or recovered). */
  #savedHardState: HardState;

  /** Use {@linkcode openDiskStorage}. */
  constructor(
    fs: FileSystem,
    paths: DiskPaths,
    keep: number,
    wal: Wal,
    lock: FileLock,
    recovered: _Recovered,
    snapshotSize?: Gauge,
  ) {
    this.#fs = fs;
    this.#lock = lock;
    this.#nodeId = recovered.nodeId;
    this.#clusterId = recovered.clusterId;
    this.#initialVoters = recovered.initialVoters;
    this.#clusterIdSaved = recovered.clusterIdSaved;
    this.#savedHardState = recovered.hardState;
    this.#snapshotSize = snapshotSize;
    this.#paths = paths;
    this.#keep = keep;
    this.wal = wal;
    this.hardState = recovered.hardState;
    this.removedAt = recovered.removedAt;
    this.snapshot = recovered.snapshot;
    this.snapshotData = recovered.snapshotData;
    this.entries = recovered.entries;
  }

  /**
   * The id of the cluster this node belongs to: recorded in its files, given at a bootstrap
   * (`DiskStorageOptions.clusterId`) or adopted; undefined while it knows none (a node that
   * joins, before a peer wrote to it, or files from a version that recorded none).
   */
  get clusterId(): string | undefined {
    return this.#clusterId;
  }

  /**
   * The voters the cluster was started with, as this node recorded them when it started the
   * cluster (`DiskStorageOptions.initialVoters`); undefined when none are recorded (a node that
   * joined, or files of an earlier version).
   */
  get initialVoters(): readonly string[] | undefined {
    return this.#initialVoters;
  }

  /**
   * Takes `id` as this node's cluster, if it has none: recorded with the next write, before
   * anything that write stores (a node that joins takes its cluster's id from the first peer
   * that writes to it, before it stores what that peer sent). An id already known is kept.
   *
   * @param id The cluster's id.
   */
  adoptClusterId(id: string): void {
    if (this.#clusterId !== undefined) return;
    this.#clusterId = id;
    this.#clusterIdSaved = false;
  }

  /** Records an adopted cluster id not yet written, with the hard state as last saved. */
  async #recordClusterId(): Promise<void> {
    if (!this.#clusterIdSaved) await this.saveHardState(this.#savedHardState);
  }

  async append(entries: Entry[], commit = 0): Promise<void> {
    await this.#recordClusterId();
    return await this.wal.append(entries, commit);
  }

  recordCommit(commit: number): Promise<void> {
    return this.wal.writeCommit(commit);
  }

  releaseRecovered(): void {
    this.snapshotData = { entries: [], sessions: [], leases: [] };
    this.entries = [];
    this.wal.releaseRecovered();
  }

  async saveHardState(hardState: HardState): Promise<void> {
    const clusterId = this.#clusterId;
    const initialVoters = this.#initialVoters;
    const stored = { ...hardState, nodeId: this.#nodeId, clusterId, initialVoters };
    await saveHardState(this.#paths.raftStatePath, stored, this.#fs);
    this.#savedHardState = { term: hardState.term, vote: hardState.vote, commit: hardState.commit };
    if (clusterId !== undefined) this.#clusterIdSaved = true;
  }

  saveRemovedAt(index: number): Promise<void> {
    return saveRemovedMark(removedMarkPath(this.#paths.raftStatePath), index, this.#fs);
  }

  rollLog(): void {
    this.wal.rollNext();
  }

  async saveSnapshot(
    meta: SnapshotMeta,
    count: number,
    content: SnapshotContent,
  ): Promise<void> {
    const header = {
      index: meta.index,
      term: meta.term,
      voters: meta.voters,
      // Written only when there are any, so a file without learners keeps its old bytes.
      ...(meta.learners?.length ? { learners: meta.learners } : {}),
      ...(meta.info && Object.keys(meta.info).length > 0 ? { info: meta.info } : {}),
      count,
    };
    await writeSnapshotFile(
      this.#paths.snapshotDir,
      encodeSnapshot(header, content),
      snapshotName(meta.index, meta.term),
      this.#fs,
    );
  }

  async snapshotTaken(meta: SnapshotMeta, compactTo: number): Promise<void> {
    await saveLogMetadata(this.#paths.logMetadataPath, {
      firstIndex: compactTo + 1,
      snapshotIndex: meta.index,
      snapshotTerm: meta.term,
    }, this.#fs);
    await this.wal.compact(compactTo);
    await pruneSnapshots(this.#paths.snapshotDir, this.#keep, {}, this.#fs);
    await this._measureSnapshot(meta);
  }

  openSnapshot(id: SnapshotId): Promise<ReadableStream<Uint8Array>> {
    return openSnapshotStream(this.#snapshotPath(id), this.#fs);
  }

  async receiveSnapshot(
    meta: SnapshotMeta,
    body: ReadableStream<Uint8Array>,
  ): Promise<SnapshotData> {
    const path = await writeSnapshotFile(
      this.#paths.snapshotDir,
      body,
      _receivedName(meta),
      this.#fs,
    );
    const { header, entries, sessions, leases } = await _readSnapshotPacked(path, this.#fs);
    if (header.index !== meta.index || header.term !== meta.term) {
      throw new CorruptFileError(
        path,
        `it holds (${header.index}, ${header.term}), expected (${meta.index}, ${meta.term})`,
      );
    }
    return { entries, sessions, leases };
  }

  async discardReceived(id: SnapshotId): Promise<void> {
    await this.#fs.remove(join(this.#paths.snapshotDir, _receivedName(id))).catch(() => {});
  }

  sweepReceived(
    keep: Iterable<SnapshotId>,
    olderThanMs: number,
    now: number,
  ): Promise<string[]> {
    return removeStaleReceived(this.#paths.snapshotDir, {
      keep: new Set([...keep].map(_receivedName)),
      olderThanMs,
      now,
      seen: this.#unneededSince,
    }, this.#fs);
  }

  async installReceived(meta: SnapshotMeta): Promise<void> {
    await this.#recordClusterId();
    const fs = this.#fs;
    const dir = this.#paths.snapshotDir;
    const received = join(dir, _receivedName(meta));
    const path = this.#snapshotPath(meta);
    if (await _exists(fs, received)) {
      // The file must be there before the reset record (the commit point) promises it is.
      // After the reset record, start-up completes the install from the received file.
      await this.wal.reset(meta.index, meta.term);
      await fs.rename(received, path);
      await fs.syncDir(dir);
    } else {
      // A retry after the disk was full: an earlier attempt got as far as the rename (which
      // came after the reset record), or the received file is gone and this throws.
      await fs.stat(path);
    }
    await saveLogMetadata(this.#paths.logMetadataPath, {
      firstIndex: meta.index + 1,
      snapshotIndex: meta.index,
      snapshotTerm: meta.term,
    }, fs);
    // A newer snapshot may already have been received: keep it.
    await pruneSnapshots(dir, this.#keep, { receivedUpTo: meta.index }, fs);
    await this._measureSnapshot(meta);
  }

  /** Closes the WAL, then releases the lock of the files (also when closing failed). */
  async close(): Promise<void> {
    try {
      await this.wal.close();
    } finally {
      this.#lock.release();
    }
  }

  /** Sets the snapshot size gauge to the size of the snapshot file `id` (if it can be read). */
  async _measureSnapshot(id: SnapshotId): Promise<void> {
    if (!this.#snapshotSize) return;
    try {
      this.#snapshotSize.set((await this.#fs.stat(this.#snapshotPath(id))).size);
    } catch {
      // Only a metric: the file's own operations report real failures.
    }
  }

  #snapshotPath(id: SnapshotId): string {
    return join(this.#paths.snapshotDir, snapshotName(id.index, id.term));
  }
}

/** The file name of the received snapshot `id` until it is installed. */
function _receivedName(id: SnapshotId): string {
  return `${snapshotName(id.index, id.term)}.recv`;
}

/** Whether `path` exists. */
async function _exists(fs: FileSystem, path: string): Promise<boolean> {
  try {
    await fs.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Installs the backup `file` as the node's first snapshot if the node has no data at all (no
 * snapshot, no log, no term); otherwise only says that it was ignored.
 */
async function _restoreIfEmpty(
  fs: FileSystem,
  paths: DiskPaths,
  file: string,
  hardState: HardState,
  wal: Wal,
  options: Pick<DiskStorageOptions, "onNotice" | "restoreVoters">,
): Promise<void> {
  const onNotice = options.onNotice;
  const snapshots = await listSnapshots(paths.snapshotDir, fs);
  if (snapshots.length > 0 || wal.lastIndex !== 0 || hardState.term !== 0) {
    onNotice?.(`--restore-from ignored: this node already has data`);
    return;
  }
  const loaded = await readSnapshotFile(file, fs);
  const voters = options.restoreVoters;
  // The new cluster's membership replaces the backup's; member addresses come from the
  // cluster file, so the backup's are dropped with its learners.
  const header = voters === undefined ? loaded.header : {
    index: loaded.header.index,
    term: loaded.header.term,
    voters: [...voters],
    count: loaded.header.count,
  };
  await writeSnapshotFile(
    paths.snapshotDir,
    encodeSnapshot(header, {
      entries: loaded.entries,
      sessions: loaded.sessions,
      leases: loaded.leases,
    }),
    snapshotName(header.index, header.term),
    fs,
  );
  await saveLogMetadata(paths.logMetadataPath, {
    firstIndex: header.index + 1,
    snapshotIndex: header.index,
    snapshotTerm: header.term,
  }, fs);
  onNotice?.(`restored from ${file} (index ${header.index})`);
}

/**
 * Finishes installing a received snapshot if a crash interrupted it: the log then starts right
 * after a reset record beyond the newest snapshot file, and the received file for that index is
 * renamed into place.
 *
 * @throws {CorruptFileError} If no received file for the reset's index exists.
 */
async function _completeInterruptedInstall(fs: FileSystem, dir: string, wal: Wal): Promise<void> {
  const logStart = (wal.entries[0]?.index ?? wal.lastIndex + 1) - 1;
  const newest = (await listSnapshots(dir, fs))[0]?.index ?? 0;
  if (logStart <= newest) return;
  const prefix = `snap-${String(logStart).padStart(16, "0")}-`;
  for (const e of await fs.readDir(dir)) {
    if (e.name.startsWith(prefix) && e.name.endsWith(".snap.recv")) {
      await fs.rename(join(dir, e.name), join(dir, e.name.slice(0, -".recv".length)));
      await fs.syncDir(dir);
      return;
    }
  }
  throw new CorruptFileError(
    dir,
    `the log was reset to a snapshot at index ${logStart}, but no snapshot file for it exists`,
  );
}

/** A snapshot read with its entries as an iterable (see {@linkcode _readSnapshotPacked}). */
type _PackedSnapshot = Omit<LoadedSnapshot, "entries"> & { entries: Iterable<SnapshotEntry> };

/**
 * Reads and verifies the snapshot at `path`, its entries going straight into the state machine's
 * packed map (see `entry_map.ts`) without an object per entry, which takes a million keys in a
 * fraction of the time and memory. The file is parsed as it is read, never held whole; the map
 * built from it is dropped unless the whole file passes its checksum. A file whose keys are not
 * in order (this version writes them in order) is read again into an array, which the state
 * machine sorts.
 */
async function _readSnapshotPacked(path: string, fs: FileSystem): Promise<_PackedSnapshot> {
  const builder = new EntryMapBuilder();
  try {
    const loaded = await readSnapshotFile(path, fs, builder);
    return { ...loaded, entries: builder.finish() };
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
  }
  return await readSnapshotFile(path, fs);
}

/**
 * Removes leftover temp and received files and snapshots beyond the newest `keep`, then reads
 * the newest snapshot, which must be at least the one the log metadata records.
 *
 * @returns The newest snapshot, or null if there is none.
 * @throws {CorruptFileError} If the newest snapshot is damaged (never a reason to fall back
 * silently to an older one), or older than the log metadata says.
 */
async function _loadNewestSnapshot(
  fs: FileSystem,
  paths: DiskPaths,
  keep: number,
  metadata: LogMetadata,
): Promise<_PackedSnapshot | null> {
  const newest = (await listSnapshots(paths.snapshotDir, fs))[0];
  await pruneSnapshots(paths.snapshotDir, keep, { leftovers: true }, fs);
  const loaded = newest ? await _readSnapshotPacked(newest.path, fs) : null;
  const index = loaded?.header.index ?? 0;
  if (metadata.snapshotIndex > index) {
    throw new CorruptFileError(
      paths.logMetadataPath,
      `it records a snapshot at index ${metadata.snapshotIndex} but the newest snapshot in ${paths.snapshotDir} is at ${index}`,
    );
  }
  return loaded;
}

/**
 * The replayed entries after a snapshot at `index`.
 *
 * @throws {CorruptFileError} If the log starts beyond `index + 1`: entries are missing.
 */
function _entriesAfter(walDir: string, wal: Wal, index: number): Entry[] {
  const entries = wal.entries.filter((e) => e.index > index);
  const first = entries[0]?.index ?? index + 1;
  if (first > index + 1) {
    throw new CorruptFileError(
      walDir,
      `the log starts at ${first} but the newest snapshot ends at ${index}: entries are missing`,
    );
  }
  return entries;
}
