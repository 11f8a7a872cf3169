/**
 * Crash-safe replacement of small files, and the directory sync it relies on.
 *
 * @module
 */

import { dirname } from "node:path";

/**
 * The mode of every data file the node creates: readable and writable by its owner only (the
 * data is the users' data). A umask can only narrow it. Existing files keep their mode.
 */
export const FILE_MODE = 0o600;

/** The mode of every directory the node creates: its owner only. */
export const DIR_MODE = 0o700;

/**
 * Creates directory `dir` and any missing parents with {@linkcode DIR_MODE}, and makes each new
 * directory's entry durable by syncing its parent. Does nothing for parts that exist already.
 *
 * @param dir The directory.
 * @throws {Deno.errors.AlreadyExists} If `dir` or a parent exists as something other than a
 * directory.
 *
 * @example Usage
 * ```ts ignore
 * import { createDirectory } from "./durable_file.ts";
 *
 * await createDirectory("data/node-1/wal");
 * ```
 */
export async function createDirectory(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let at = dir;; at = dirname(at)) {
    try {
      await Deno.stat(at);
      break;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    missing.push(at);
    if (dirname(at) === at) break;
  }
  // When `dir` exists, this only checks that it is a directory.
  await Deno.mkdir(dir, { recursive: true, mode: DIR_MODE });
  for (const created of missing.reverse()) await syncDirectory(dirname(created));
}

/**
 * Makes the entries of directory `dir` durable: after it resolves, files created, renamed or
 * removed in `dir` stay so after a crash.
 *
 * Windows cannot open a directory for syncing (and NTFS journals its metadata), so there this does
 * nothing; elsewhere only the `EINVAL` a file system gives when it cannot sync directories is
 * ignored. Every other error is thrown.
 *
 * @param dir The directory.
 *
 * @example Usage
 * ```ts ignore
 * import { syncDirectory } from "./durable_file.ts";
 *
 * await Deno.writeTextFile("data/new-file", "x");
 * await syncDirectory("data");
 * ```
 */
export async function syncDirectory(dir: string): Promise<void> {
  if (Deno.build.os === "windows") return;
  using handle = await Deno.open(dir, { read: true });
  try {
    await handle.sync();
  } catch (error) {
    if (!_isEinval(error)) throw error;
  }
}

function _isEinval(error: unknown): boolean {
  return error instanceof Error && (error as { code?: unknown }).code === "EINVAL";
}

/**
 * Replaces the file at `path` with `bytes` so that after a crash it holds either the complete old
 * content or the complete new content: writes `path + ".tmp"`, syncs it, renames it over `path`,
 * then syncs the parent directory. On failure the temp file is removed (if it can be) and the
 * error is thrown; `path` is then unchanged.
 *
 * @param path The file to replace (created if missing). Its directory must exist.
 * @param bytes The new content.
 *
 * @example Usage
 * ```ts ignore
 * import { writeFileDurably } from "./durable_file.ts";
 *
 * await writeFileDurably("data/raft-state.json", new TextEncoder().encode("{}\n"));
 * ```
 */
export async function writeFileDurably(path: string, bytes: Uint8Array): Promise<void> {
  const temp = `${path}.tmp`;
  try {
    {
      using file = await Deno.open(temp, {
        write: true,
        create: true,
        truncate: true,
        mode: FILE_MODE,
      });
      await writeAll(file, bytes);
      await file.sync();
    }
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
  await syncDirectory(dirname(path));
}

/**
 * Writes all of `bytes` to `file` at its current position (at its end if opened for appending),
 * calling `write` again for whatever a partial write left. Does not sync.
 *
 * @param file The open file.
 * @param bytes The bytes to write.
 * @throws {Deno.errors.WriteZero} If a write accepts no bytes.
 */
export async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const n = await file.write(bytes.subarray(written));
    if (n === 0) {
      throw new Deno.errors.WriteZero(`write accepted 0 of ${bytes.length - written} bytes`);
    }
    written += n;
  }
}
