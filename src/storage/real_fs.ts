/**
 * The real {@linkcode FileSystem}: `Deno.*` on the local disk.
 *
 * @module
 */

import { DIRECTORY_MODE, FILE_MODE, type FileLock, type FileSystem, type OpenHow } from "./fs.ts";

const _OPEN_OPTIONS: Record<OpenHow, Deno.OpenOptions> = {
  "read": { read: true },
  "append": { write: true, append: true },
  "create-new": { write: true, append: true, createNew: true },
  "truncate": { write: true, create: true, truncate: true },
};

/**
 * The file system of the machine, through `Deno.*`. Handles are `Deno.FsFile`s; errors are the
 * ones Deno throws. {@linkcode FileSystem.syncDir} opens the directory and syncs it, except on
 * Windows, which cannot open a directory for syncing (NTFS journals its metadata), where it only
 * checks that the directory exists; a file system that cannot sync directories (`EINVAL`) is
 * tolerated. {@linkcode FileSystem.tryLock} is `flock` (through `Deno.FsFile.tryLock`), held by an
 * open handle: the kernel releases it when the process ends, however it ends. A lock found held
 * is tried again for half a second before `tryLock` says so (see there).
 *
 * **Out of descriptors.** The node's storage shares the process's descriptors with its
 * connections, which clients can use up (`EMFILE`; `ENFILE` when the system's table is full). A
 * WAL segment, a hard-state or snapshot file that could not be opened then would stop the node.
 * So `realFs` keeps {@linkcode DESCRIPTOR_RESERVE} descriptors in reserve, open on `/dev/null`
 * from when this module loads (before any connection): an operation here that needs a descriptor
 * and finds none closes a spare and takes its descriptor in the same synchronous step, before
 * the event loop can accept a connection into it. Closing a handle opened here fills the reserve
 * again in the same step (so a descriptor the storage gives back goes to the reserve first, not
 * to the next connection); otherwise the reserve refills at the next operation that finds room.
 * Only when the reserve is used up too does the operation fail as before. Not on Windows.
 *
 * @example Usage
 * ```ts ignore
 * import { writeAll } from "./fs.ts";
 * import { realFs } from "./real_fs.ts";
 *
 * await realFs.mkdir("data");
 * {
 *   using file = await realFs.open("data/new.tmp", "truncate");
 *   await writeAll(file, new TextEncoder().encode("hello\n"));
 *   await file.sync();
 * }
 * await realFs.rename("data/new.tmp", "data/new");
 * await realFs.syncDir("data");
 * ```
 */
export const realFs: FileSystem = {
  open(path, how, mode = FILE_MODE) {
    return _open(path, { ..._OPEN_OPTIONS[how], mode });
  },
  readFile(path) {
    return _readFile(path);
  },
  async stat(path) {
    const info = await Deno.stat(path);
    return {
      isFile: info.isFile,
      isDirectory: info.isDirectory,
      size: info.size,
      mode: info.mode === null ? null : info.mode & 0o777,
    };
  },
  async readDir(path) {
    const list = await _withDescriptor(
      () => Array.fromAsync(Deno.readDir(path)),
      () => [...Deno.readDirSync(path)],
    );
    const entries = list.map(({ name, isFile, isDirectory }) => ({ name, isFile, isDirectory }));
    return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  },
  mkdir(path, mode = DIRECTORY_MODE) {
    return Deno.mkdir(path, { recursive: true, mode });
  },
  rename(from, to) {
    return Deno.rename(from, to);
  },
  remove(path) {
    return Deno.remove(path);
  },
  async syncDir(path) {
    if (Deno.build.os === "windows") {
      await Deno.stat(path);
      return;
    }
    using handle = await _open(path, { read: true });
    try {
      await handle.sync();
    } catch (error) {
      if ((error as { code?: unknown }).code !== "EINVAL") throw error;
    }
  },
  async tryLock(path) {
    // The lock belongs to the open file, and a child process that another thread is starting
    // holds a copy of every descriptor from its fork to its exec: a lock released a moment ago
    // can still be held for that long (it refused about one attempt in four in a loop beside a
    // thread starting processes). Such a hold lasts microseconds; another node's lasts.
    const deadline = performance.now() + _LOCK_PATIENCE_MS;
    for (;;) {
      const lock = await _tryLock(path);
      if (lock !== null || performance.now() >= deadline) return lock;
      await new Promise((resolve) => setTimeout(resolve, _LOCK_RETRY_MS));
    }
  },
};

/** How many descriptors {@linkcode realFs} keeps in reserve: see its doc. */
export const DESCRIPTOR_RESERVE = 8;

/** The reserve's spare descriptors, opened as the module loads. */
const _spares: Deno.FsFile[] = [];

/** Opens spares until the reserve is full or no descriptor is left. */
function _fillReserve(): void {
  if (Deno.build.os === "windows") return;
  while (_spares.length < DESCRIPTOR_RESERVE) {
    try {
      _spares.push(Deno.openSync("/dev/null", { read: true }));
    } catch {
      return; // None left now: the next operation tries again.
    }
  }
}

/** Whether `error` says the process (EMFILE) or the system (ENFILE) has no descriptor left. */
function _outOfDescriptors(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "EMFILE" || code === "ENFILE";
}

/**
 * Runs `attempt`, which needs a descriptor. If there is none, closes spares one at a time and
 * runs `fallback` right after each, in the same synchronous step, until it gets one. A
 * {@linkcode Deno.FsFile} either returns fills the reserve again when it is closed; for anything
 * else (the fallback took its descriptor and gave it back) the reserve is filled again at once.
 */
async function _withDescriptor<T>(
  attempt: () => Promise<T>,
  fallback: () => T,
): Promise<T> {
  if (_spares.length < DESCRIPTOR_RESERVE) _fillReserve();
  let error: unknown;
  try {
    return _refillOnClose(await attempt());
  } catch (e) {
    if (!_outOfDescriptors(e)) throw e;
    error = e;
  }
  for (let spare = _spares.pop(); spare !== undefined; spare = _spares.pop()) {
    spare.close();
    let got;
    try {
      got = fallback();
    } catch (e) {
      if (_outOfDescriptors(e)) {
        error = e; // Another thread took the spare's descriptor first.
        continue;
      }
      _fillReserve();
      throw e;
    }
    if (!(got instanceof Deno.FsFile)) _fillReserve();
    return _refillOnClose(got);
  }
  throw error;
}

/** `Deno.open`, through the reserve when no descriptor is left (see {@linkcode realFs}). */
function _open(path: string, options: Deno.OpenOptions): Promise<Deno.FsFile> {
  return _withDescriptor(() => Deno.open(path, options), () => Deno.openSync(path, options));
}

/**
 * Makes closing (or disposing) `got`, if it is a file, fill the reserve again in the same step:
 * a file opened before the descriptors ran out gives its descriptor to the reserve too (a WAL
 * segment closed by a roll, say), rather than to the next connection.
 */
function _refillOnClose<T>(got: T): T {
  if (!(got instanceof Deno.FsFile)) return got;
  const file: Deno.FsFile = got;
  const close = file.close.bind(file);
  const dispose = file[Symbol.dispose].bind(file);
  file.close = () => {
    close();
    _fillReserve();
  };
  file[Symbol.dispose] = () => {
    dispose();
    _fillReserve();
  };
  return got;
}

/** How long {@linkcode realFs}'s `tryLock` tries again before it says the lock is held. */
const _LOCK_PATIENCE_MS = 500;
/** The pause between two of its attempts. */
const _LOCK_RETRY_MS = 10;

/** One attempt at the `flock` of `path`. */
async function _tryLock(path: string): Promise<FileLock | null> {
  const file = await _open(path, { read: true, write: true, create: true, mode: FILE_MODE });
  let locked = false;
  try {
    locked = await file.tryLock(true);
  } finally {
    if (!locked) file.close();
  }
  if (!locked) return null;
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    file.close(); // Closing the only handle of the lock releases it.
  };
  return { release, [Symbol.dispose]: release };
}

/** The most bytes {@linkcode _readFile} asks for in one read. */
const _READ_CHUNK = 8 << 20;

/**
 * Reads a whole file into one buffer of its size, 8 MiB per read. For a 140 MB snapshot this
 * took about 0.5 s where `Deno.readFile` took 1.3 s (measured back to back), a large part of a
 * restart. A file that grows while it is read is read to its end.
 */
async function _readFile(path: string): Promise<Uint8Array> {
  using file = await _open(path, { read: true });
  const size = (await file.stat()).size;
  let out = new Uint8Array(size);
  let at = 0;
  for (;;) {
    if (at === out.length) {
      // At the size stat gave: the file may have grown since.
      const probe = new Uint8Array(64 * 1024);
      const n = await file.read(probe);
      if (n === null) return out.subarray(0, at);
      const bigger = new Uint8Array(Math.max(2 * out.length, at + n));
      bigger.set(out.subarray(0, at));
      bigger.set(probe.subarray(0, n), at);
      out = bigger;
      at += n;
      continue;
    }
    const n = await file.read(out.subarray(at, Math.min(out.length, at + _READ_CHUNK)));
    if (n === null) return out.subarray(0, at);
    at += n;
  }
}

_fillReserve();
