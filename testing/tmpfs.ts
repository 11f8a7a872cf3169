/**
 * Small file systems a test can fill: a tmpfs mounted on a directory (root on Linux only), filled
 * to its last byte with a filler file and freed by deleting it. Used by the disk-full tests and the
 * chaos run's `full` fault.
 *
 * @module
 */

import { join } from "node:path";

/**
 * Mounts a tmpfs of `size` (as `mount -o size=`, e.g. `16m`) on `dir`.
 *
 * @returns Why it could not (not root, no `mount`, ...), or null once mounted.
 */
export async function mountTmpfs(dir: string, size: string): Promise<string | null> {
  try {
    const out = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir],
      stdout: "null",
      stderr: "piped",
    }).output();
    return out.success ? null : new TextDecoder().decode(out.stderr).trim();
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/**
 * Unmounts `dir`. `lazy` detaches it at once even while a process still holds a file there.
 *
 * @throws {Error} If `umount` fails.
 */
export async function unmount(dir: string, lazy = false): Promise<void> {
  const args = lazy ? ["-l", dir] : [dir];
  const out = await new Deno.Command("umount", { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`umount ${dir} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** Takes every free byte of the file system holding `dir`, in a file named `filler`. */
export async function fill(dir: string): Promise<void> {
  using file = await Deno.open(join(dir, "filler"), { write: true, create: true, append: true });
  // Smaller writes take what the larger ones could not.
  for (const size of [1 << 20, 64 * 1024, 512]) {
    const chunk = new Uint8Array(size);
    try {
      while (true) await file.write(chunk);
    } catch (error) {
      if ((error as { code?: string }).code !== "ENOSPC") throw error;
    }
  }
}

/** Deletes the filler file in `dir`, if there is one. */
export async function free(dir: string): Promise<void> {
  await Deno.remove(join(dir, "filler")).catch((error) => {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  });
}
