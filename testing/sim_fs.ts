/**
 * A simulated, deterministic, in-memory {@linkcode FileSystem} for running the real storage code
 * in a simulation: it loses what was not synced when the machine crashes, can tear the last write,
 * fills up, lies about syncing on request, and lets the simulation decide when each operation
 * completes. It passes the same conformance suite as the real file system
 * (`fs_conformance.ts`), so code that works on it behaves the same on disk.
 *
 * ## The durability model
 *
 * Each file has two images: what was written (what reads see) and what is durable. A file's
 * writes and truncations since its last sync are kept, in order, as its *pending changes*;
 * `sync()` or `syncData()` (the two are the same here) applies them to the durable image.
 *
 * Directory entries work the same way, through one ordered *journal* of entry changes (a
 * creation, a `mkdir`, a rename, a removal; a rename is one atomic change even across two
 * directories). `syncDir(dir)` commits the journal up to and including the last change that
 * touches `dir`, in order, as ext4's journal does. Unlike ext4, syncing a file never commits its
 * name: that is the POSIX minimum, and code must sync the directory.
 *
 * {@linkcode SimFileSystem.crash} stops this instance (every later call throws
 * {@linkcode CrashedError}) and returns a new one holding the durable image: the committed
 * entries, and for every file still reachable through them its durable bytes. With a seeded
 * `random` function, part of the unsynced state may survive too, as on a real disk that wrote
 * some of its cache before the power went:
 *
 * - per file, a random prefix of its pending changes, in order; the first change not kept, if a
 *   write, may survive torn: as a prefix cut at any byte, or as whole 512-byte sectors (counted
 *   from the start of the file) followed by zeros where the file grew but the data never arrived;
 * - with `keepUnsyncedEntries`, a random prefix of the uncommitted journal.
 *
 * Writes reach the disk in order: nothing after a torn write survives. Random numbers are drawn in
 * a fixed order (the journal first, then files in path order), so a seed reproduces a crash
 * exactly.
 *
 * ## Faults and a full disk
 *
 * - {@linkcode SimFileSystem.setCapacity}: file data (the written sizes of every file still named
 *   or open) may not exceed the capacity. A write that does not fit writes what fits and returns
 *   the count; a write when nothing fits throws the no-space error (`isNoSpace` is true for it).
 *   Truncation never fails for lack of space.
 * - `faults.ackBeforeSync`: a lying disk. `sync`, `syncData` and `syncDir` resolve without
 *   making anything durable.
 * - `faults.forgetLastSynced`: the crash drops the last write that a file sync made durable (an
 *   acknowledged record forgotten), restoring the file's bytes and size from before it (a
 *   truncation synced with it stays).
 * - `faults.failed`: a dying disk. Every operation from then on (an operation waiting on `delay`
 *   included) throws Deno's EIO error, `Input/output error (os error 5)` with `code` `"EIO"`,
 *   and changes nothing. A crash does not carry it over: the image it returns is the disk as it
 *   is mounted again (repaired, or its data on a new disk).
 *
 * ## Latency
 *
 * With `delay` set, every asynchronous operation first awaits `delay(op, path)` and only then takes
 * effect, at once; so the simulation decides when (and in what order) operations complete, and a
 * crash before that point loses the operation entirely. Without it, operations take effect when
 * called. `close()` is synchronous and never delayed.
 *
 * Paths are POSIX paths; relative ones are taken from `/`, which always exists.
 *
 * @module
 */

import { posix } from "node:path";
import {
  DIRECTORY_MODE,
  type DirEntry,
  FILE_MODE,
  type FileInfo,
  type FileLock,
  type FileSystem,
  type FsFile,
  type OpenHow,
} from "../src/storage/fs.ts";

/** The operations that {@linkcode SimFsOptions.delay} is asked about. */
export type SimFsOp =
  | "open"
  | "read"
  | "readFile"
  | "write"
  | "truncate"
  | "sync"
  | "stat"
  | "readDir"
  | "mkdir"
  | "rename"
  | "remove"
  | "syncDir"
  | "lock";

/** Options for a {@linkcode SimFileSystem}. */
export interface SimFsOptions {
  /** The bytes of file data the disk holds (see the module doc). Default: unlimited. */
  capacity?: number;
  /**
   * Awaited before each asynchronous operation takes effect; the operation completes when it
   * resolves. Default: none (operations take effect when called).
   */
  delay?: (op: SimFsOp, path: string) => Promise<void> | void;
}

/** Fault injection for the checks that must catch a misbehaving disk; all off by default. */
export interface SimFsFaults {
  /** Syncs (of files and directories) resolve without making anything durable. */
  ackBeforeSync: boolean;
  /**
   * A crash drops the last write that a file sync made durable; with a function, only among the
   * files whose path (in the crashed image) it accepts, e.g. `(path) => path.endsWith(".wal")`.
   */
  forgetLastSynced: boolean | ((path: string) => boolean);
  /** Every operation fails with EIO (a dying disk); not carried over by a crash. */
  failed: boolean;
}

/** Options for {@linkcode SimFileSystem.crash}. */
export interface CrashOptions {
  /**
   * With a `random` function: a random prefix of each file's unsynced changes survives, the next
   * write possibly torn. Default true.
   */
  keepUnsyncedWrites?: boolean;
  /**
   * With a `random` function: a random prefix of the uncommitted directory changes survives.
   * Default false: only what `syncDir` committed.
   */
  keepUnsyncedEntries?: boolean;
}

/** Thrown by every operation on a {@linkcode SimFileSystem} (or its handles) after it crashed. */
export class CrashedError extends Error {
  /**
   * Constructs a new instance.
   *
   * @param op What was attempted, and on which path.
   */
  constructor(op: string) {
    super(`The simulated machine crashed; ${op} cannot run`);
    this.name = "CrashedError";
  }
}

/** The sector size of the torn-write model. */
const _SECTOR = 512;
/** How many bytes a `readable` stream reads at a time. */
const _CHUNK = 64 * 1024;

/**
 * A simulated in-memory file system: see the module doc for its durability model.
 *
 * @example Usage
 * ```ts
 * import { writeAll } from "../src/storage/fs.ts";
 * import { SimFileSystem } from "./sim_fs.ts";
 *
 * const fs = new SimFileSystem();
 * await fs.mkdir("/data");
 * await fs.syncDir("/");
 * using file = await fs.open("/data/log", "create-new");
 * await fs.syncDir("/data");
 * await writeAll(file, new Uint8Array([1, 2, 3]));
 * await file.syncData();
 * await writeAll(file, new Uint8Array([4, 5]));
 * const after = fs.crash();
 * console.assert((await after.readFile("/data/log")).length === 3);
 * ```
 */
export class SimFileSystem implements FileSystem {
  /** The fault injections in force; set their fields to turn them on. Carried over by a crash. */
  readonly faults: SimFsFaults = { ackBeforeSync: false, forgetLastSynced: false, failed: false };
  #disk: _Disk;
  #crashNotes: readonly string[] = [];

  /**
   * Creates an empty file system (only `/` exists, durably).
   *
   * @param options Capacity and latency.
   */
  constructor(options: SimFsOptions = {}) {
    const capacity = options.capacity ?? Infinity;
    this.#disk = new _Disk(new _Dir(DIRECTORY_MODE), capacity, options.delay, this.faults);
  }

  /**
   * What the crash that produced this instance kept of the unsynced state or forgot of the
   * synced state, one line per file (empty for a new instance).
   */
  get crashNotes(): readonly string[] {
    return this.#crashNotes;
  }

  /** The bytes of file data in use (see {@linkcode SimFileSystem.setCapacity}). */
  get used(): number {
    return this.#disk.used;
  }

  /**
   * Limits file data to `bytes` (Infinity for no limit). Lowering it below what is in use makes
   * every write that grows a file fail.
   *
   * @param bytes The capacity.
   * @throws {RangeError} If `bytes` is negative or not a number.
   */
  setCapacity(bytes: number): void {
    if (!(bytes >= 0)) throw new RangeError(`Capacity must be at least 0, found ${bytes}`);
    this.#disk.capacity = bytes;
  }

  /**
   * Crashes the machine: this instance and its handles stop working (throwing
   * {@linkcode CrashedError}), and the returned instance holds what survived, as the module doc
   * describes. It keeps the capacity, the `delay` function and the faults (but `failed`).
   *
   * @param random A seeded source of numbers in [0, 1) that chooses what unsynced state
   * survives. Default: none, so nothing unsynced survives.
   * @param options What unsynced state may survive.
   * @returns The file system as the machine finds it when it restarts.
   */
  crash(random?: () => number, options: CrashOptions = {}): SimFileSystem {
    const fs = new SimFileSystem();
    Object.assign(fs.faults, this.faults, { failed: false });
    const { disk, notes } = this.#disk.crash(random, options, fs.faults);
    fs.#disk = disk;
    fs.#crashNotes = notes;
    return fs;
  }

  /** See {@linkcode FileSystem.open}. */
  open(path: string, how: OpenHow, mode = FILE_MODE): Promise<FsFile> {
    return this.#disk.open(path, how, mode);
  }

  /** See {@linkcode FileSystem.readFile}. */
  readFile(path: string): Promise<Uint8Array> {
    return this.#disk.readFile(path);
  }

  /** See {@linkcode FileSystem.stat}. */
  stat(path: string): Promise<FileInfo> {
    return this.#disk.stat(path);
  }

  /** See {@linkcode FileSystem.readDir}. */
  readDir(path: string): Promise<DirEntry[]> {
    return this.#disk.readDir(path);
  }

  /** See {@linkcode FileSystem.mkdir}. */
  mkdir(path: string, mode = DIRECTORY_MODE): Promise<void> {
    return this.#disk.mkdir(path, mode);
  }

  /** See {@linkcode FileSystem.rename}. */
  rename(from: string, to: string): Promise<void> {
    return this.#disk.rename(from, to);
  }

  /** See {@linkcode FileSystem.remove}. */
  remove(path: string): Promise<void> {
    return this.#disk.remove(path);
  }

  /** See {@linkcode FileSystem.syncDir}. */
  syncDir(path: string): Promise<void> {
    return this.#disk.syncDir(path);
  }

  /**
   * See {@linkcode FileSystem.tryLock}. This instance is the machine's one process: a lock held
   * is refused to a second `tryLock` until released, and a crash releases every lock (the
   * returned instance holds none).
   */
  tryLock(path: string): Promise<FileLock | null> {
    return this.#disk.tryLock(path);
  }
}

// ---- the model ------------------------------------------------------------------------------

/** The empty buffer every empty {@linkcode _Bytes} shares (nothing is ever written into it). */
const _NO_BYTES = new Uint8Array(0);

/** A growable byte buffer; bytes past `size` are always zero. */
class _Bytes {
  #buf: Uint8Array;
  size: number;

  constructor(initial: Uint8Array = _NO_BYTES) {
    // An empty buffer is shared (a file gets its own at its first write, which grows it): many
    // files are written once and replaced (a hard state, a metadata file).
    this.#buf = initial.length === 0 ? _NO_BYTES : initial.slice();
    this.size = initial.length;
  }

  view(): Uint8Array {
    return this.#buf.subarray(0, this.size);
  }

  write(offset: number, bytes: Uint8Array): void {
    const end = offset + bytes.length;
    if (end > this.size) this.resize(end);
    this.#buf.set(bytes, offset);
  }

  resize(size: number): void {
    if (size > this.#buf.length) {
      const grown = new Uint8Array(Math.max(size, 2 * this.#buf.length, 256));
      grown.set(this.view());
      this.#buf = grown;
    } else if (size < this.size) {
      this.#buf.fill(0, size, this.size);
    }
    this.size = size;
  }

  apply(change: _Change): void {
    if (change.kind === "write") this.write(change.offset, change.bytes);
    else this.resize(change.size);
  }
}

/** A write or truncation not yet synced. */
type _Change =
  | { kind: "write"; offset: number; bytes: Uint8Array }
  | { kind: "truncate"; size: number };

class _File {
  readonly kind = "file";
  /** What reads see. */
  data = new _Bytes();
  /** What survives a crash. */
  synced = new _Bytes();
  /** Changes to `data` since the last sync, oldest first. */
  pending: _Change[] = [];
  /** The last write a sync of this file made durable, and when (see `_Disk.syncs`). */
  lastSynced: _SyncedWrite | null = null;
  /** Whether a directory entry names it (else it lives only while open). */
  linked = true;
  handles = 0;
  constructor(readonly mode: number) {}
}

class _Dir {
  readonly kind = "dir";
  /** The entries as they are now. */
  entries = new Map<string, _Node>();
  /** The entries as a crash would leave them (before applying uncommitted journal changes). */
  durable = new Map<string, _Node>();
  constructor(readonly mode: number) {}
}

type _Node = _File | _Dir;

/** One journal record: entry changes that become durable together. */
type _EntryChange = { dir: _Dir; name: string; node: _Node | null }[];

/** The last write a file sync made durable, and how to take it back. */
interface _SyncedWrite {
  /** The number of the sync, counting every sync of the disk that made something durable. */
  sync: number;
  offset: number;
  /** The durable bytes it overwrote (within the old size). */
  old: Uint8Array;
  sizeBefore: number;
}

/** Deno's error for `code`, with a message like Deno's (`<text> (os error N): <op> '<path>'`). */
function _error(code: string, op: string, path: string): Error {
  const where = `${op} '${path}'`;
  const make = (error: Error) => Object.assign(error, { code });
  switch (code) {
    case "ENOENT":
      return make(new Deno.errors.NotFound(`No such file or directory (os error 2): ${where}`));
    case "EEXIST":
      return make(new Deno.errors.AlreadyExists(`File exists (os error 17): ${where}`));
    case "ENOTDIR":
      return make(new Deno.errors.NotADirectory(`Not a directory (os error 20): ${where}`));
    case "EISDIR":
      return make(new Deno.errors.IsADirectory(`Is a directory (os error 21): ${where}`));
    case "ENOTEMPTY":
      return make(new Error(`Directory not empty (os error 39): ${where}`));
    case "ENOSPC":
      return make(new Error(`No space left on device (os error 28): ${where}`));
    case "EBADF":
      return make(new Error(`Bad file descriptor (os error 9): ${where}`));
    case "EINVAL":
      return make(new TypeError(`Invalid argument (os error 22): ${where}`));
    case "EIO":
      return make(new Error(`Input/output error (os error 5): ${where}`));
    default:
      throw new RangeError(`Unknown error code "${code}"`);
  }
}

/** The state and logic behind a {@linkcode SimFileSystem} and its handles. */
class _Disk {
  used = 0;
  crashed = false;
  /** The files whose lock is held (a crash makes a new disk, which holds none). */
  locks = new Set<_File>();
  /** Entry changes not yet committed by a `syncDir`, oldest first. */
  journal: _EntryChange[] = [];
  /** How many file syncs made something durable. */
  syncs = 0;

  constructor(
    readonly root: _Dir,
    public capacity: number,
    readonly delay: SimFsOptions["delay"],
    readonly faults: SimFsFaults,
  ) {}

  /** Waits for the simulation to let `op` complete; throws if the machine crashed meanwhile. */
  async before(op: SimFsOp, path: string): Promise<void> {
    this.#mayRun(op, path);
    if (this.delay) {
      await this.delay(op, path);
      this.#mayRun(op, path);
    }
  }

  /** Throws if the machine crashed, or the disk failed (EIO). */
  #mayRun(op: SimFsOp, path: string): void {
    if (this.crashed) throw new CrashedError(`${op} '${path}'`);
    if (this.faults.failed) throw _error("EIO", op, path);
  }

  /** Finds the directory that holds `path`'s last component, and what that names now. */
  lookup(path: string, op: string): { dir: _Dir; name: string; node: _Node | undefined } {
    const parts = _partsOf(path);
    let dir = this.root;
    for (let k = 0; k < parts.length - 1; k++) {
      const child = dir.entries.get(parts[k]!);
      if (child === undefined) throw _error("ENOENT", op, path);
      if (child.kind === "file") throw _error("ENOTDIR", op, path);
      dir = child;
    }
    const name = parts.at(-1);
    if (name === undefined) return { dir, name: "", node: this.root };
    return { dir, name, node: dir.entries.get(name) };
  }

  /** Applies an entry change now and queues it in the journal. */
  change(change: _EntryChange): void {
    const linked = new Set(change.map((c) => c.node));
    for (const { dir, name, node } of change) {
      const old = dir.entries.get(name);
      if (old !== undefined && !linked.has(old)) this.unlinked(old);
      if (node === null) dir.entries.delete(name);
      else dir.entries.set(name, node);
    }
    this.journal.push(change);
  }

  /** Frees a file's space once nothing names it and nothing has it open. */
  unlinked(node: _Node): void {
    if (node.kind !== "file") return;
    node.linked = false;
    if (node.handles === 0) this.used -= node.data.size;
  }

  /** Resizes a file's data, keeping `used` in step. */
  setData(file: _File, apply: () => void): void {
    const before = file.data.size;
    apply();
    if (file.linked || file.handles > 0) this.used += file.data.size - before;
  }

  async open(path: string, how: OpenHow, mode: number): Promise<FsFile> {
    await this.before("open", path);
    const { dir, name, node } = this.lookup(path, "open");
    let file: _File;
    if (how === "create-new") {
      if (node !== undefined) throw _error("EEXIST", "open", path);
      file = new _File(mode);
      this.change([{ dir, name, node: file }]);
    } else if (node === undefined) {
      if (how !== "truncate") throw _error("ENOENT", "open", path);
      file = new _File(mode);
      this.change([{ dir, name, node: file }]);
    } else if (node.kind === "dir") {
      if (how !== "read") throw _error("EISDIR", "open", path);
      return new _Handle(this, node, path, how);
    } else {
      file = node;
      if (how === "truncate" && file.data.size > 0) this.truncate(file, 0);
    }
    return new _Handle(this, file, path, how);
  }

  async tryLock(path: string): Promise<FileLock | null> {
    await this.before("lock", path);
    const { dir, name, node } = this.lookup(path, "open");
    if (node?.kind === "dir") throw _error("EISDIR", "open", path);
    let file = node;
    if (file === undefined) {
      file = new _File(FILE_MODE);
      this.change([{ dir, name, node: file }]);
    }
    if (this.locks.has(file)) return null;
    const locked = file;
    this.locks.add(locked);
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      this.locks.delete(locked);
    };
    return { release, [Symbol.dispose]: release };
  }

  truncate(file: _File, size: number): void {
    this.setData(file, () => file.data.resize(size));
    file.pending.push({ kind: "truncate", size });
  }

  /** Writes at `offset` as much of `bytes` as fits; returns how much. */
  write(file: _File, offset: number, bytes: Uint8Array, path: string): number {
    if (bytes.length === 0) return 0;
    const free = this.capacity - this.used;
    let n = bytes.length;
    if (offset + n - file.data.size > free) {
      n = Math.max(0, Math.min(n, file.data.size + free - offset));
      if (n === 0) throw _error("ENOSPC", "write", path);
    }
    const part = bytes.slice(0, n);
    this.setData(file, () => file.data.write(offset, part));
    file.pending.push({ kind: "write", offset, bytes: part });
    return n;
  }

  /** Makes a file's pending changes durable, remembering how to undo the last write. */
  syncFile(file: _File): void {
    if (this.faults.ackBeforeSync || file.pending.length === 0) return;
    const sync = ++this.syncs;
    const last = file.pending.length - 1;
    for (let k = 0; k <= last; k++) {
      const change = file.pending[k]!;
      if (k === last) {
        file.lastSynced = null;
        if (change.kind === "write") {
          const end = Math.min(change.offset + change.bytes.length, file.synced.size);
          // (An append, the usual write, overwrote nothing durable.)
          const old = change.offset >= end
            ? _NO_BYTES
            : file.synced.view().slice(change.offset, end);
          file.lastSynced = { sync, offset: change.offset, old, sizeBefore: file.synced.size };
        }
      }
      file.synced.apply(change);
    }
    file.pending = [];
  }

  async readFile(path: string): Promise<Uint8Array> {
    await this.before("readFile", path);
    const { node } = this.lookup(path, "readfile");
    if (node === undefined) throw _error("ENOENT", "readfile", path);
    if (node.kind === "dir") throw _error("EISDIR", "readfile", path);
    return node.data.view().slice();
  }

  async stat(path: string): Promise<FileInfo> {
    await this.before("stat", path);
    const { node } = this.lookup(path, "stat");
    if (node === undefined) throw _error("ENOENT", "stat", path);
    const isFile = node.kind === "file";
    return { isFile, isDirectory: !isFile, size: isFile ? node.data.size : 0, mode: node.mode };
  }

  async readDir(path: string): Promise<DirEntry[]> {
    await this.before("readDir", path);
    const { node } = this.lookup(path, "readdir");
    if (node === undefined) throw _error("ENOENT", "readdir", path);
    if (node.kind === "file") throw _error("ENOTDIR", "readdir", path);
    return [...node.entries.keys()].sort().map((name) => {
      const isFile = node.entries.get(name)!.kind === "file";
      return { name, isFile, isDirectory: !isFile };
    });
  }

  async mkdir(path: string, mode: number): Promise<void> {
    await this.before("mkdir", path);
    const parts = posix.resolve("/", path).split("/").filter((p) => p !== "");
    let dir = this.root;
    for (let k = 0; k < parts.length; k++) {
      const name = parts[k]!;
      let child = dir.entries.get(name);
      if (child === undefined) {
        child = new _Dir(mode);
        this.change([{ dir, name, node: child }]);
      } else if (child.kind === "file") {
        throw _error(k === parts.length - 1 ? "EEXIST" : "ENOTDIR", "mkdir", path);
      }
      dir = child;
    }
  }

  async rename(from: string, to: string): Promise<void> {
    await this.before("rename", from);
    const shown = `${from}' -> '${to}`;
    const source = this.lookup(from, "rename");
    if (source.node === undefined) throw _error("ENOENT", "rename", shown);
    const target = this.lookup(to, "rename");
    const moving = source.node;
    const replaced = target.node;
    if (replaced === moving) return;
    if (moving.kind === "dir" && this.#contains(moving, target.dir)) {
      throw _error("EINVAL", "rename", shown);
    }
    if (replaced !== undefined) {
      if (moving.kind === "file" && replaced.kind === "dir") {
        throw _error("EISDIR", "rename", shown);
      }
      if (moving.kind === "dir" && replaced.kind === "file") {
        throw _error("ENOTDIR", "rename", shown);
      }
      if (replaced.kind === "dir" && replaced.entries.size > 0) {
        throw _error("ENOTEMPTY", "rename", shown);
      }
    }
    this.change([
      { dir: source.dir, name: source.name, node: null },
      { dir: target.dir, name: target.name, node: moving },
    ]);
  }

  /** Whether `inner` is `outer` or lies below it. */
  #contains(outer: _Dir, inner: _Dir): boolean {
    if (inner === outer) return true;
    for (const child of outer.entries.values()) {
      if (child.kind === "dir" && this.#contains(child, inner)) return true;
    }
    return false;
  }

  async remove(path: string): Promise<void> {
    await this.before("remove", path);
    const { dir, name, node } = this.lookup(path, "remove");
    if (node === undefined) throw _error("ENOENT", "remove", path);
    if (node.kind === "dir" && node.entries.size > 0) throw _error("ENOTEMPTY", "remove", path);
    this.change([{ dir, name, node: null }]);
  }

  async syncDir(path: string): Promise<void> {
    await this.before("syncDir", path);
    const { node } = this.lookup(path, "open");
    if (node === undefined) throw _error("ENOENT", "open", path);
    if (node.kind === "file") return this.syncFile(node);
    if (this.faults.ackBeforeSync) return;
    let last = -1;
    this.journal.forEach((change, k) => {
      if (change.some((c) => c.dir === node)) last = k;
    });
    for (const change of this.journal.splice(0, last + 1)) _commit(change);
  }

  /** The durable file whose last synced write `faults.forgetLastSynced` drops, if any. */
  #toForget(): _File | null {
    const accept = this.faults.forgetLastSynced;
    if (accept === false) return null;
    let found: _File | null = null;
    const visit = (dir: _Dir, path: string) => {
      for (const [name, node] of dir.durable) {
        const childPath = posix.join(path, name);
        if (node.kind === "dir") visit(node, childPath);
        else if (
          node.lastSynced && node.lastSynced.sync > (found?.lastSynced?.sync ?? 0) &&
          (accept === true || accept(childPath))
        ) found = node;
      }
    };
    visit(this.root, "/");
    return found;
  }

  /** Stops this disk and builds the one a restart finds. */
  crash(
    random: (() => number) | undefined,
    options: CrashOptions,
    faults: SimFsFaults,
  ): { disk: _Disk; notes: string[] } {
    if (this.crashed) throw new CrashedError("crash");
    this.crashed = true;
    const notes: string[] = [];
    if (random && options.keepUnsyncedEntries) {
      const kept = Math.floor(random() * (this.journal.length + 1));
      for (const change of this.journal.slice(0, kept)) _commit(change);
      if (this.journal.length > 0) {
        notes.push(`${kept} of ${this.journal.length} uncommitted directory changes kept`);
      }
    }
    const forget = this.#toForget();
    const tear = random && (options.keepUnsyncedWrites ?? true) ? random : undefined;
    const copy = (dir: _Dir, path: string): _Dir => {
      const out = new _Dir(dir.mode);
      for (const name of [...dir.durable.keys()].sort()) {
        const node = dir.durable.get(name)!;
        const childPath = posix.join(path, name);
        const child = node.kind === "dir"
          ? copy(node, childPath)
          : _survivor(node, childPath, node === forget, tear, notes);
        out.entries.set(name, child);
        out.durable.set(name, child);
      }
      return out;
    };
    const disk = new _Disk(copy(this.root, "/"), this.capacity, this.delay, faults);
    disk.used = _sizeOf(disk.root);
    return { disk, notes };
  }
}

/**
 * The components of `path` resolved from `/`, remembered by path: a simulated node looks up the
 * same few paths over and over. (Read-only: shared by every lookup of the path.)
 */
function _partsOf(path: string): readonly string[] {
  let parts = _PARTS.get(path);
  if (parts === undefined) {
    if (_PARTS.size >= 10_000) _PARTS.clear(); // bounded: paths a long run makes once
    parts = posix.resolve("/", path).split("/").filter((p) => p !== "");
    _PARTS.set(path, parts);
  }
  return parts;
}

const _PARTS = new Map<string, readonly string[]>();

/** Makes a journal record durable. */
function _commit(change: _EntryChange): void {
  for (const { dir, name, node } of change) {
    if (node === null) dir.durable.delete(name);
    else dir.durable.set(name, node);
  }
}

/** The bytes of file data under `dir`. */
function _sizeOf(dir: _Dir): number {
  let total = 0;
  for (const node of dir.entries.values()) {
    total += node.kind === "dir" ? _sizeOf(node) : node.data.size;
  }
  return total;
}

/** What a crash leaves of `file`: its durable image, plus what `tear` lets survive. */
function _survivor(
  file: _File,
  path: string,
  forgetLastSynced: boolean,
  tear: (() => number) | undefined,
  notes: string[],
): _File {
  const image = new _Bytes(file.synced.view());
  const forget = forgetLastSynced ? file.lastSynced : null;
  if (forget) {
    image.write(forget.offset, forget.old);
    image.resize(forget.sizeBefore);
    notes.push(`${path}: the last synced write (at byte ${forget.offset}) forgotten`);
  }
  const pending = file.pending;
  if (tear && pending.length > 0) {
    const kept = Math.floor(tear() * (pending.length + 1));
    for (const change of pending.slice(0, kept)) image.apply(change);
    let note = `${path}: ${kept} of ${pending.length} unsynced changes kept`;
    const next = pending[kept];
    if (next?.kind === "write") note += _tearWrite(image, next, tear);
    notes.push(note);
  }
  const out = new _File(file.mode);
  out.data = image;
  out.synced = new _Bytes(image.view());
  return out;
}

/** Applies part of a write that was in flight; describes what survived. */
function _tearWrite(
  image: _Bytes,
  write: { offset: number; bytes: Uint8Array },
  random: () => number,
): string {
  const { offset, bytes } = write;
  const choice = random();
  if (choice < 1 / 3) return "";
  if (choice < 2 / 3) {
    const cut = Math.floor(random() * bytes.length);
    image.write(offset, bytes.subarray(0, cut));
    return `, then ${cut} of ${bytes.length} bytes of the next write`;
  }
  // Sector boundaries strictly inside the write: the sectors up to one of them arrived.
  const first = Math.floor(offset / _SECTOR) + 1;
  const inside = Math.max(0, Math.ceil((offset + bytes.length) / _SECTOR) - first);
  const j = Math.floor(random() * (inside + 1)); // 0: no sector arrived
  const kept = j === 0 ? 0 : (first + j - 1) * _SECTOR - offset;
  const zeros = Math.floor(random() * (bytes.length - kept + 1));
  image.write(offset, bytes.subarray(0, kept));
  if (offset + kept + zeros > image.size) image.resize(offset + kept + zeros);
  return `, then ${kept} of ${bytes.length} bytes of the next write in whole sectors and ${zeros} zeros`;
}

/** An open file (or directory, opened for reading) of a {@linkcode _Disk}. */
class _Handle implements FsFile {
  readonly #disk: _Disk;
  readonly #node: _Node;
  readonly #path: string;
  readonly #how: OpenHow;
  #position = 0;
  #closed = false;
  #readable: ReadableStream<Uint8Array> | null = null;

  constructor(disk: _Disk, node: _Node, path: string, how: OpenHow) {
    this.#disk = disk;
    this.#node = node;
    this.#path = path;
    this.#how = how;
    if (node.kind === "file") node.handles++;
  }

  /** The open file, checking that the handle may still be used. */
  async #file(op: SimFsOp): Promise<_File> {
    if (this.#closed) throw new Deno.errors.BadResource("Bad resource ID");
    await this.#disk.before(op, this.#path);
    if (this.#closed) throw new Deno.errors.BadResource("Bad resource ID");
    if (this.#node.kind === "dir") throw _error("EISDIR", op, this.#path);
    return this.#node;
  }

  async write(bytes: Uint8Array): Promise<number> {
    const file = await this.#file("write");
    if (this.#how === "read") throw _error("EBADF", "write", this.#path);
    if (this.#how !== "truncate") return this.#disk.write(file, file.data.size, bytes, this.#path);
    const n = this.#disk.write(file, this.#position, bytes, this.#path);
    this.#position += n;
    return n;
  }

  async read(into: Uint8Array): Promise<number | null> {
    const file = await this.#file("read");
    if (this.#how !== "read") throw _error("EBADF", "read", this.#path);
    if (into.length === 0) return 0;
    if (this.#position >= file.data.size) return null;
    const bytes = file.data.view().subarray(this.#position, this.#position + into.length);
    into.set(bytes);
    this.#position += bytes.length;
    return bytes.length;
  }

  get readable(): ReadableStream<Uint8Array> {
    this.#readable ??= new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const chunk = new Uint8Array(_CHUNK);
        const n = await this.read(chunk);
        if (n === null) {
          this.close();
          controller.close();
        } else {
          controller.enqueue(chunk.subarray(0, n));
        }
      },
      cancel: () => {
        if (!this.#closed) this.close();
      },
    }, { highWaterMark: 0 });
    return this.#readable;
  }

  async truncate(length: number): Promise<void> {
    const file = await this.#file("truncate");
    if (this.#how === "read" || !(length >= 0)) throw _error("EINVAL", "truncate", this.#path);
    this.#disk.truncate(file, length);
  }

  async sync(): Promise<void> {
    this.#disk.syncFile(await this.#file("sync"));
  }

  syncData(): Promise<void> {
    return this.sync();
  }

  close(): void {
    if (this.#closed) throw new Deno.errors.BadResource("Bad resource ID");
    this.#closed = true;
    const node = this.#node;
    if (node.kind === "file" && --node.handles === 0 && !node.linked) {
      this.#disk.used -= node.data.size;
    }
  }

  [Symbol.dispose](): void {
    if (!this.#closed) this.close();
  }
}
