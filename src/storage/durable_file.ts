/**
 * Crash-safe creation of directories and replacement of small files, over a
 * {@linkcode FileSystem} (the real disk unless told otherwise).
 *
 * @module
 */

import { dirname } from "node:path";
import { type FileSystem, writeAll } from "./fs.ts";
import { realFs } from "./real_fs.ts";

/**
 * Creates directory `dir` and any missing parents (mode `0700`), and makes each new directory's
 * entry durable by syncing its parent. Does nothing for parts that exist already.
 *
 * @param dir The directory.
 * @param fs The file system. Default {@linkcode realFs}.
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
export async function createDirectory(dir: string, fs: FileSystem = realFs): Promise<void> {
  const missing: string[] = [];
  for (let at = dir;; at = dirname(at)) {
    try {
      await fs.stat(at);
      break;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    missing.push(at);
    if (dirname(at) === at) break;
  }
  // When `dir` exists, this only checks that it is a directory.
  await fs.mkdir(dir);
  for (const created of missing.reverse()) await fs.syncDir(dirname(created));
}

/**
 * Replaces the file at `path` with `bytes` so that after a crash it holds either the complete old
 * content or the complete new content: writes `path + ".tmp"` (mode `0600`), syncs it, renames it
 * over `path`, then syncs the parent directory. On failure the temp file is removed (if it can
 * be) and the error is thrown; `path` is then unchanged.
 *
 * @param path The file to replace (created if missing). Its directory must exist.
 * @param bytes The new content.
 * @param fs The file system. Default {@linkcode realFs}.
 *
 * @example Usage
 * ```ts ignore
 * import { writeFileDurably } from "./durable_file.ts";
 *
 * await writeFileDurably("data/raft-state.json", new TextEncoder().encode("{}\n"));
 * ```
 */
export async function writeFileDurably(
  path: string,
  bytes: Uint8Array,
  fs: FileSystem = realFs,
): Promise<void> {
  const temp = `${path}.tmp`;
  try {
    {
      using file = await fs.open(temp, "truncate");
      await writeAll(file, bytes);
      await file.sync();
    }
    await fs.rename(temp, path);
  } catch (error) {
    await fs.remove(temp).catch(() => {});
    throw error;
  }
  await fs.syncDir(dirname(path));
}
