/**
 * Saving and loading the write-ahead log's metadata (`--log-metadata-path`): where the log starts
 * after compaction and which snapshot covers the entries before it.
 *
 * On disk: `{"first_index":n,"snapshot_index":n,"snapshot_term":n,"crc32c":"…"}`, replaced whole
 * with {@linkcode writeFileDurably}; see the README.
 *
 * @module
 */

import { decodeCheckedJson, encodeCheckedJson } from "./checked_json.ts";
import { writeFileDurably } from "./durable_file.ts";
import { CorruptFileError } from "./errors.ts";
import type { FileSystem } from "./fs.ts";
import { realFs } from "./real_fs.ts";

/** Where the log starts after compaction. */
export interface LogMetadata {
  /**
   * The index of the first entry the log must hold: normally `snapshotIndex + 1` (1 before any
   * compaction). Never above `snapshotIndex + 1`, which would leave entries nobody has.
   */
  firstIndex: number;
  /** The index of the last entry the snapshot covers (0 = no snapshot). */
  snapshotIndex: number;
  /** The term of that entry (0 = no snapshot). */
  snapshotTerm: number;
}

/** The metadata of a log that was never compacted, returned when the file does not exist. */
export const INITIAL_LOG_METADATA: Readonly<LogMetadata> = Object.freeze({
  firstIndex: 1,
  snapshotIndex: 0,
  snapshotTerm: 0,
});

const _SCHEMA = {
  first_index: "integer",
  snapshot_index: "integer",
  snapshot_term: "integer",
} as const;

/**
 * Durably replaces the log metadata file at `path`. Call it on compaction, after the snapshot is
 * durable and before deleting any WAL segment.
 *
 * @param path The log metadata file. Its directory must exist.
 * @param metadata The metadata to save.
 * @param fs The file system. Default {@linkcode realFs}.
 * @throws {RangeError} If a field is not a non-negative safe integer, or `firstIndex` is not
 * between 1 and `snapshotIndex + 1`.
 *
 * @example Usage
 * ```ts ignore
 * import { loadLogMetadata, saveLogMetadata } from "./log_metadata.ts";
 *
 * await saveLogMetadata("data/log-metadata.json", {
 *   firstIndex: 101,
 *   snapshotIndex: 100,
 *   snapshotTerm: 4,
 * });
 * const metadata = await loadLogMetadata("data/log-metadata.json");
 * ```
 */
export async function saveLogMetadata(
  path: string,
  metadata: LogMetadata,
  fs: FileSystem = realFs,
): Promise<void> {
  const { firstIndex, snapshotIndex, snapshotTerm } = metadata;
  if (!(firstIndex >= 1 && firstIndex <= snapshotIndex + 1)) {
    throw new RangeError(
      `Log metadata firstIndex must be between 1 and snapshotIndex + 1 (${
        snapshotIndex + 1
      }), found ${firstIndex}`,
    );
  }
  const bytes = encodeCheckedJson(_SCHEMA, {
    first_index: firstIndex,
    snapshot_index: snapshotIndex,
    snapshot_term: snapshotTerm,
  });
  await writeFileDurably(path, bytes, fs);
}

/**
 * Loads the log metadata saved at `path`.
 *
 * @param path The log metadata file.
 * @param fs The file system. Default {@linkcode realFs}.
 * @returns The saved metadata, or a copy of {@linkcode INITIAL_LOG_METADATA} if the file does not
 * exist.
 * @throws {CorruptFileError} If the file is not a valid log metadata file (the message names it).
 */
export async function loadLogMetadata(
  path: string,
  fs: FileSystem = realFs,
): Promise<LogMetadata> {
  let bytes: Uint8Array;
  try {
    bytes = await fs.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { ...INITIAL_LOG_METADATA };
    throw error;
  }
  const fields = decodeCheckedJson(path, bytes, _SCHEMA);
  if (!(fields.first_index >= 1 && fields.first_index <= fields.snapshot_index + 1)) {
    throw new CorruptFileError(
      path,
      `"first_index" must be between 1 and "snapshot_index" + 1 (${
        fields.snapshot_index + 1
      }), found ${fields.first_index}`,
    );
  }
  return {
    firstIndex: fields.first_index,
    snapshotIndex: fields.snapshot_index,
    snapshotTerm: fields.snapshot_term,
  };
}
