/**
 * A disk a test can break: a small ext4 file system in an image file, on a loop device, mounted on
 * a directory (root on Linux only). {@linkcode LoopDisk.fail} shuts the file system down as a dying
 * disk would (ext4's `EXT4_IOC_SHUTDOWN`, without flushing its journal): from then on every read,
 * write, sync and open under it fails with EIO, while what was synced before stays in the journal.
 * {@linkcode LoopDisk.replace} unmounts it and mounts it again, which replays the journal: the
 * disk as it was at its last sync, as after swapping in a healthy disk with the same data.
 *
 * @module
 */

/** The ioctl that shuts an ext4 file system down: `_IOR('X', 125, __u32)`. */
const _EXT4_IOC_SHUTDOWN = 0x8004587dn;
/** Its flag for "the device is gone": neither the data nor the journal is flushed. */
const _EXT4_GOING_FLAGS_NOLOGFLUSH = 2;
/** `O_RDONLY | O_DIRECTORY | O_CLOEXEC` on Linux. */
const _O_DIRECTORY_READ = 0o200000 | 0o2000000;

/** A mounted loop disk: see the module doc. */
export interface LoopDisk {
  /** The directory it is mounted on. */
  readonly dir: string;
  /** The loop device, e.g. `/dev/loop3`. */
  readonly device: string;
  /** Makes every operation on the file system fail with EIO from now on. */
  fail(): void;
  /** Unmounts the failed file system and mounts it again (replaying its journal). */
  replace(): Promise<void>;
  /** Unmounts it (lazily, even if a process still holds a file there) and frees the device. */
  remove(): Promise<void>;
}

/** Runs a command: what it printed, or why it failed (its error output, or why it did not run). */
async function _exec(
  command: string,
  args: string[],
): Promise<{ out: string } | { error: string }> {
  try {
    const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" })
      .output();
    if (out.success) return { out: new TextDecoder().decode(out.stdout).trim() };
    const text = new TextDecoder().decode(out.stderr).trim();
    return { error: `${command} ${args.join(" ")}: ${text || `exit ${out.code}`}` };
  } catch (error) {
    return { error: `${command}: ${error instanceof Error ? error.message : error}` };
  }
}

/** Runs a command and returns what it printed, or throws why it failed. */
async function _output(command: string, args: string[]): Promise<string> {
  const result = await _exec(command, args);
  if ("error" in result) throw new Error(result.error);
  return result.out;
}

/**
 * Makes an ext4 file system of `sizeMiB` in the file `image` (created), on a free loop device,
 * and mounts it on the existing directory `dir`.
 *
 * @returns The disk, or why it could not be made (not root, no loop devices, no `mkfs.ext4`,
 * ...): the caller skips its test, saying so.
 */
export async function mountLoopDisk(
  dir: string,
  image: string,
  sizeMiB = 64,
): Promise<LoopDisk | string> {
  if (Deno.build.os !== "linux") return `loop devices need Linux, not ${Deno.build.os}`;
  {
    using file = await Deno.open(image, { write: true, create: true, truncate: true });
    await file.truncate(sizeMiB << 20);
  }
  const attached = await _exec("losetup", ["--find", "--show", image]);
  if ("error" in attached) return attached.error;
  const device = attached.out;
  const steps = [["mkfs.ext4", "-q", "-F", device], ["mount", "-t", "ext4", device, dir]];
  for (const [command, ...args] of steps) {
    const result = await _exec(command!, args);
    if ("error" in result) {
      await _exec("losetup", ["--detach", device]);
      return result.error;
    }
  }
  let mounted = true;
  return {
    dir,
    device,
    fail() {
      _shutdown(dir);
    },
    async replace() {
      await _output("umount", [dir]);
      mounted = false;
      await _output("mount", ["-t", "ext4", device, dir]);
      mounted = true;
    },
    async remove() {
      if (mounted) await _output("umount", ["-l", dir]);
      mounted = false;
      await _output("losetup", ["--detach", device]);
    },
  };
}

/** Shuts down the ext4 file system mounted on `dir`, through libc (FFI). */
function _shutdown(dir: string): void {
  const libc = Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
  });
  try {
    const fd = libc.symbols.open(new TextEncoder().encode(`${dir}\0`), _O_DIRECTORY_READ);
    if (fd < 0) throw new Error(`open ${dir} failed`);
    try {
      const flags = new Uint32Array([_EXT4_GOING_FLAGS_NOLOGFLUSH]);
      if (libc.symbols.ioctl(fd, _EXT4_IOC_SHUTDOWN, flags) !== 0) {
        throw new Error(`the shutdown ioctl on ${dir} failed`);
      }
    } finally {
      libc.symbols.close(fd);
    }
  } finally {
    libc.close();
  }
}
