/**
 * The file-system seam: the few file operations the storage code performs, as one small
 * interface, so that the same WAL, hard-state and snapshot code can run on real files
 * ({@linkcode realFs} in `real_fs.ts`) or on a simulated disk that crashes, tears writes and fills
 * up deterministically (`testing/sim_fs.ts`). Both pass the one conformance suite in
 * `testing/fs_conformance.ts`.
 *
 * What every implementation must guarantee:
 *
 * - **Errors are Deno's.** A missing file or directory is `Deno.errors.NotFound`; creating what
 *   exists is `Deno.errors.AlreadyExists`; a file where a directory is needed (or the reverse)
 *   is `Deno.errors.NotADirectory` / `Deno.errors.IsADirectory`; using a closed handle is
 *   `Deno.errors.BadResource`. A full disk is an `Error` for which {@linkcode isNoSpace} is true
 *   (Deno has no class for it: an `Error` with `code` `"ENOSPC"`). Callers that catch these today
 *   keep working unchanged.
 * - **Writes may be partial.** {@linkcode FsFile.write} returns how many bytes it took, possibly
 *   fewer than given (a disk that fills up mid-write takes what fits, and the next write throws
 *   the no-space error); {@linkcode writeAll} loops.
 * - **Durability is explicit.** Bytes written to a file are durable (survive a crash or power
 *   loss) once `sync()` or `syncData()` of that file resolves, not before. A created, renamed or
 *   removed directory entry is durable once {@linkcode FileSystem.syncDir} of the directory
 *   holding it resolves, not before (syncing the file does not make its name durable). Until
 *   then, a crash may lose the change or keep it; code must be correct either way.
 * - **Files are private.** New files get mode `0o600` and new directories `0o700` unless told
 *   otherwise (subject to the umask on real disks; ignored on Windows).
 * - **Listings are sorted** by name, so that callers (and simulations) see one order.
 * - **Locks are exclusive and die with their holder.** {@linkcode FileSystem.tryLock} gives at
 *   most one holder the lock of a file at a time (another open of the same file in the same
 *   process included); it is released by {@linkcode FileLock.release}, or when the process ends
 *   or the machine crashes. A lock is advisory: it keeps out only code that asks for it.
 *
 * Paths are plain strings as `node:path` builds them.
 *
 * @module
 */

/**
 * How {@linkcode FileSystem.open} opens a file:
 *
 * - `"read"`: an existing file, for reading from its start.
 * - `"append"`: an existing file, for writing; every write goes to its current end.
 * - `"create-new"`: a file that must not exist yet (else `Deno.errors.AlreadyExists`), for
 *   writing; every write goes to its end.
 * - `"truncate"`: a file created if missing and emptied if present, for writing from its start.
 *   Writes go to the handle's position, which each write advances; `truncate` does not move it.
 */
export type OpenHow = "read" | "append" | "create-new" | "truncate";

/** The mode {@linkcode FileSystem.open} gives a file it creates: read and write by the owner. */
export const FILE_MODE = 0o600;

/** The mode {@linkcode FileSystem.mkdir} gives a directory it creates: the owner only. */
export const DIRECTORY_MODE = 0o700;

/**
 * An open file. `Deno.FsFile` is one, so the real implementation returns it unchanged.
 *
 * Using a handle after `close()` (or after its `readable` stream finished) throws
 * `Deno.errors.BadResource`. Disposing a closed handle does nothing.
 */
export interface FsFile extends Disposable {
  /**
   * Writes some or all of `bytes` (see {@linkcode OpenHow} for where) and returns how many it
   * wrote; fewer than `bytes.length` only when the disk fills up. Not durable until synced.
   *
   * @throws {Error} With {@linkcode isNoSpace} true if the disk is full and nothing was written.
   */
  write(bytes: Uint8Array): Promise<number>;
  /**
   * Reads up to `into.length` bytes at the handle's position (advancing it) into `into`.
   *
   * @returns How many were read, or null at the end of the file.
   */
  read(into: Uint8Array): Promise<number | null>;
  /**
   * The rest of the file as a stream of chunks, for files too large to hold at once (snapshots).
   * The handle is closed when the stream ends or is cancelled.
   */
  readonly readable: ReadableStream<Uint8Array>;
  /** Cuts the file to `length` bytes (or extends it with zeros). Not durable until synced. */
  truncate(length: number): Promise<void>;
  /** Makes every write and truncation of this file durable. */
  sync(): Promise<void>;
  /** Makes the data of this file durable (and its size); the same guarantee as `sync` here. */
  syncData(): Promise<void>;
  /** Releases the handle. Closing twice throws `Deno.errors.BadResource`. */
  close(): void;
}

/** What {@linkcode FileSystem.stat} reports. */
export interface FileInfo {
  /** True for a regular file. */
  isFile: boolean;
  /** True for a directory. */
  isDirectory: boolean;
  /** The size in bytes (of a file; unspecified for a directory). */
  size: number;
  /** The permission bits (e.g. `0o600`), or null where the platform has none (Windows). */
  mode: number | null;
}

/** One entry of a directory listing. */
export interface DirEntry {
  /** The entry's name within the directory. */
  name: string;
  /** True for a regular file. */
  isFile: boolean;
  /** True for a directory. */
  isDirectory: boolean;
}

/** The exclusive lock of a file, held until released (see {@linkcode FileSystem.tryLock}). */
export interface FileLock extends Disposable {
  /** Releases the lock; the file stays. Releasing again does nothing. */
  release(): void;
}

/** The file operations the storage code performs; see the module doc for the guarantees. */
export interface FileSystem {
  /**
   * Opens the file at `path` as `how` says.
   *
   * @param path The file.
   * @param how What to open it for.
   * @param mode The permission bits of a file this creates. Default {@linkcode FILE_MODE}.
   * @throws {Deno.errors.NotFound} If the file (for "read" and "append") or its directory is
   * missing.
   * @throws {Deno.errors.AlreadyExists} For "create-new" if the path exists.
   */
  open(path: string, how: OpenHow, mode?: number): Promise<FsFile>;
  /**
   * Reads the whole file at `path`, into a buffer of its own that the caller owns.
   *
   * @throws {Deno.errors.NotFound} If it is missing.
   * @throws {Deno.errors.IsADirectory} If it is a directory.
   */
  readFile(path: string): Promise<Uint8Array>;
  /**
   * Describes what is at `path`.
   *
   * @throws {Deno.errors.NotFound} If nothing is.
   */
  stat(path: string): Promise<FileInfo>;
  /**
   * Lists the directory at `path`, sorted by name.
   *
   * @throws {Deno.errors.NotFound} If it is missing.
   * @throws {Deno.errors.NotADirectory} If it is a file.
   */
  readDir(path: string): Promise<DirEntry[]>;
  /**
   * Creates the directory at `path` and any missing parents; does nothing if it exists. The new
   * entries are durable only once their parent directories are synced.
   *
   * @param path The directory.
   * @param mode The permission bits of directories this creates. Default
   * {@linkcode DIRECTORY_MODE}.
   * @throws {Deno.errors.AlreadyExists} If `path` is a file.
   * @throws {Deno.errors.NotADirectory} If a parent is a file.
   */
  mkdir(path: string, mode?: number): Promise<void>;
  /**
   * Renames `from` to `to`, atomically replacing a file at `to`.
   *
   * @throws {Deno.errors.NotFound} If `from` or the directory of `to` is missing.
   * @throws {Deno.errors.IsADirectory} If `from` is a file and `to` a directory.
   */
  rename(from: string, to: string): Promise<void>;
  /**
   * Removes the file or empty directory at `path`.
   *
   * @throws {Deno.errors.NotFound} If it is missing.
   */
  remove(path: string): Promise<void>;
  /**
   * Makes the entries of directory `path` durable: files created in, renamed into, renamed out
   * of or removed from it stay so after a crash.
   *
   * @throws {Deno.errors.NotFound} If it is missing.
   */
  syncDir(path: string): Promise<void>;
  /**
   * Takes the exclusive lock of the file at `path`, creating an empty file (mode
   * {@linkcode FILE_MODE}) if there is none; the file's contents are never read or changed. A
   * created file's name is durable only once its directory is synced.
   *
   * @returns The lock, or `null` if another holder has it: another process, or another
   * `tryLock` of this one not released yet.
   * @throws {Deno.errors.NotFound} If the directory of `path` is missing.
   * @throws {Deno.errors.IsADirectory} If `path` is a directory.
   */
  tryLock(path: string): Promise<FileLock | null>;
}

/**
 * Writes all of `bytes` to `file`, calling `write` again for whatever a partial write left. Does
 * not sync.
 *
 * @param file The open file.
 * @param bytes The bytes to write.
 * @throws {Deno.errors.WriteZero} If a write accepts no bytes.
 * @throws {Error} With {@linkcode isNoSpace} true if the disk fills up; the file may then hold a
 * prefix of `bytes`.
 *
 * @example Usage
 * ```ts ignore
 * import { writeAll } from "./fs.ts";
 * import { realFs } from "./real_fs.ts";
 *
 * using file = await realFs.open("data/log", "append");
 * await writeAll(file, new TextEncoder().encode("record\n"));
 * await file.syncData();
 * ```
 */
export async function writeAll(file: FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const n = await file.write(bytes.subarray(written));
    if (n === 0) {
      throw new Deno.errors.WriteZero(`write accepted 0 of ${bytes.length - written} bytes`);
    }
    written += n;
  }
}

export { isNoSpace } from "./errors.ts";
