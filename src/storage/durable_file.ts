/**
 * Crash-safe replacement of small files, and the directory sync it relies on.
 *
 * @module
 */

import { dirname } from "node:path";

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
      using file = await Deno.open(temp, { write: true, create: true, truncate: true });
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
