/**
 * Errors the storage layer throws when what it reads from disk cannot be trusted.
 *
 * @module
 */

/**
 * A storage file holds bytes that fail their checksum or do not have the documented format. The
 * node must not start on such state: it could serve or acknowledge data it does not really have.
 *
 * @example Usage
 * ```ts
 * import { CorruptFileError } from "./errors.ts";
 *
 * const error = new CorruptFileError("data/raft-state.json", "checksum mismatch");
 * console.assert(error.message === '"data/raft-state.json" is corrupt: checksum mismatch');
 * ```
 */
export class CorruptFileError extends Error {
  /** The damaged file. */
  readonly path: string;
  /** What is wrong with it, without the path: safe to tell a peer that sent the file. */
  readonly reason: string;

  /**
   * Constructs a new instance.
   *
   * @param path The damaged file.
   * @param reason What is wrong with it, quoting the offending values.
   * @param options The underlying error, if any, as `cause`.
   */
  constructor(path: string, reason: string, options?: ErrorOptions) {
    super(`"${path}" is corrupt: ${reason}`, options);
    this.name = "CorruptFileError";
    this.path = path;
    this.reason = reason;
  }
}

/**
 * A WAL segment holds a damaged or malformed record that is not a torn final write (see the
 * README): the message names the segment file and the byte offset where the record starts.
 *
 * @example Usage
 * ```ts
 * import { WalCorruptionError } from "./errors.ts";
 *
 * const error = new WalCorruptionError("wal/0000000000000001-0000000000000001.wal", 161, "bad");
 * console.assert(error.offset === 161);
 * console.assert(error.message.includes("is corrupt at byte offset 161: bad"));
 * ```
 */
export class WalCorruptionError extends CorruptFileError {
  /** The byte offset in the segment of the start of the damaged record. */
  readonly offset: number;

  /**
   * Constructs a new instance.
   *
   * @param path The segment file.
   * @param offset The byte offset of the start of the damaged record.
   * @param reason What is wrong with the record, quoting the offending values.
   */
  constructor(path: string, offset: number, reason: string) {
    super(path, reason);
    this.message = `WAL segment "${path}" is corrupt at byte offset ${offset}: ${reason}`;
    this.name = "WalCorruptionError";
    this.offset = offset;
  }
}

/**
 * Another process holds the lock of a node's files (see `openDiskStorage`): two nodes writing one
 * WAL would corrupt it, and two with one hard state could vote twice in a term.
 *
 * @example Usage
 * ```ts
 * import { DataLockedError } from "./errors.ts";
 *
 * const error = new DataLockedError("data/node-1/wal/LOCK");
 * console.assert(error.message.startsWith('"data/node-1/wal/LOCK" is locked by another process'));
 * ```
 */
export class DataLockedError extends Error {
  /** The lock file. */
  readonly path: string;

  /**
   * Constructs a new instance.
   *
   * @param path The lock file another process holds.
   */
  constructor(path: string) {
    super(
      `"${path}" is locked by another process: another node runs on these files (two would ` +
        `corrupt them); stop it, or give this node a data directory of its own`,
    );
    this.name = "DataLockedError";
    this.path = path;
  }
}

/**
 * A node's files belong to another node: the hard state records another node's id (see
 * `openDiskStorage`). A node started on another's term and vote could vote twice in a term, and
 * one started on another's log has lost what it acknowledged itself.
 *
 * @example Usage
 * ```ts
 * import { ForeignDataError } from "./errors.ts";
 *
 * const error = new ForeignDataError("data/node-2/raft-state.json", "node-2", "node-1");
 * console.assert(error.message.startsWith('"data/node-2/raft-state.json" belongs to node "node-2"'));
 * ```
 */
export class ForeignDataError extends Error {
  /** The hard state file. */
  readonly path: string;
  /** The node the files belong to. */
  readonly owner: string;

  /**
   * Constructs a new instance.
   *
   * @param path The hard state file.
   * @param owner The node id it records.
   * @param id The id of the node being started.
   */
  constructor(path: string, owner: string, id: string) {
    super(
      `"${path}" belongs to node "${owner}", not "${id}": these are another node's files (is ` +
        `the data directory another node's?). Starting on them could vote twice in a term and ` +
        `lose acknowledged writes; give this node its own data directory`,
    );
    this.name = "ForeignDataError";
    this.path = path;
    this.owner = owner;
  }
}

/**
 * Tells whether `error` says the file system is out of space (`ENOSPC`) or the user's quota is
 * used up (`EDQUOT`). Deno reports both as a plain `Error` with that `code` and the OS message
 * ("No space left on device (os error 28)", "Disk quota exceeded (os error 122)"). Such a write
 * failed but harmed nothing that a rollback cannot undo: the node turns read-only and retries,
 * where any other IO error is fatal.
 *
 * Only the error itself counts, not its `cause`: an error that wraps a no-space failure (the
 * WAL refusing use after a rollback failed) is not something a retry can fix.
 *
 * @param error What was thrown.
 * @returns Whether it is a no-space error.
 *
 * @example Usage
 * ```ts
 * import { isNoSpace } from "./errors.ts";
 *
 * const full = Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" });
 * console.assert(isNoSpace(full));
 * console.assert(!isNoSpace(new Error("Input/output error (os error 5)")));
 * ```
 */
export function isNoSpace(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (code === "ENOSPC" || code === "EDQUOT") return true;
  return /No space left on device|Disk quota exceeded|There is not enough space on the disk/.test(
    error.message,
  );
}
