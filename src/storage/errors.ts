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
