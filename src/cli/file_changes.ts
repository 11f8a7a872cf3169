/**
 * Notices that files a node loaded at start (its tokens file, its TLS certificates and keys) were
 * changed, so that it can load them again without a signal: a renewal tool, or Kubernetes
 * updating a mounted Secret, only has to write the files.
 *
 * @module
 */

/**
 * Files in named groups (`"tokens"`, `"peer"`, `"api"`), checked by {@linkcode FileChanges.poll}:
 * a group is reported once the contents of its files differ from those last settled (at start, or
 * when they were last loaded), and have read the same in two checks in a row. A file being
 * written, or a certificate renewed before its key, is thus not reported half done while the
 * writer is still at it (a pause longer than a check still lets it through; the reload's checks
 * then refuse it and the next change is reported again). A file that cannot be read counts as
 * changed contents too, so that its loss is said in the log; but a read that failed for the
 * process's sake, not the file's (out of file descriptors or memory, interrupted), is no news
 * about the file: its group is not looked at in that check.
 *
 * @example Usage
 * ```ts
 * import { FileChanges } from "./file_changes.ts";
 *
 * const files = new Map([["tokens.json", "a"]]);
 * const changes = new FileChanges({ tokens: ["tokens.json"] }, async (p) => files.get(p)!);
 * await changes.settle(); // the contents at start
 * files.set("tokens.json", "b");
 * await changes.poll(); // [] : changed, but not yet seen the same twice
 * await changes.poll(); // ["tokens"]
 * await changes.poll(); // [] : settled
 * ```
 */
export class FileChanges {
  readonly #groups: ReadonlyMap<string, readonly string[]>;
  readonly #read: (path: string) => Promise<string>;
  /** Each group's contents when it was last settled. */
  readonly #settled = new Map<string, string>();
  /** Each group's contents at the previous check. */
  readonly #seen = new Map<string, string>();
  /** What the last read of each file gave: its text, or why it could not be read. */
  readonly #last = new Map<string, { text: string } | { error: unknown }>();

  /**
   * Watches nothing yet: {@linkcode FileChanges.settle} takes the contents in force.
   *
   * @param groups The files of each group; a group without files is left out.
   * @param read Reads a file's text (without blocking: a file system that hangs must not stop the
   * node); rejects if it cannot.
   */
  constructor(
    groups: Record<string, readonly string[]>,
    read: (path: string) => Promise<string>,
  ) {
    this.#groups = new Map(Object.entries(groups).filter(([, paths]) => paths.length > 0));
    this.#read = read;
  }

  /** The names of the groups that have files. */
  get groups(): string[] {
    return [...this.#groups.keys()];
  }

  /**
   * The text of `path` as the last look (or settle) read it: what a reload should load, so that
   * it loads the very contents that were seen to hold still, not a write begun since.
   *
   * @param path One of the files.
   * @returns Its text.
   * @throws What reading it threw; a `RangeError` for a file never read.
   */
  text(path: string): string {
    const last = this.#last.get(path);
    if (last === undefined) throw new RangeError(`${path} was not read`);
    if ("error" in last) throw last.error;
    return last.text;
  }

  /**
   * Takes the contents of `names`' files as the ones in force (at start, or because they are
   * about to be loaded on a signal): they are reported again only once they change from these.
   *
   * @param names The groups. Default: all.
   * @param known Texts already read, by path: taken instead of reading those files now. At start
   * these are what start-up loaded, so that a change made since start-up read them is still
   * reported. Default: none (every file is read now).
   */
  async settle(
    names: readonly string[] = this.groups,
    known: ReadonlyMap<string, string> = new Map(),
  ): Promise<void> {
    for (const name of names) {
      const paths = this.#groups.get(name);
      if (paths === undefined) continue;
      const now = await this.#contents(paths, known);
      // Not looked at: what is settled stays, so a change is still noticed once reads work (the
      // reload that follows a signal says why it could not read the files).
      if (now === null) continue;
      this.#settled.set(name, now);
      this.#seen.set(name, now);
    }
  }

  /**
   * Reads every file once and returns the groups to load again: those whose contents differ from
   * the settled ones and read the same at the previous check. They count as settled from then on.
   *
   * @returns The groups' names, in the order they were given.
   */
  async poll(): Promise<string[]> {
    const changed: string[] = [];
    for (const [name, paths] of this.#groups) {
      const now = await this.#contents(paths);
      if (now === null) continue; // no look this time
      if (!this.#settled.has(name)) continue; // never settled: nothing to compare with
      const before = this.#seen.get(name);
      this.#seen.set(name, now);
      if (now !== this.#settled.get(name) && now === before) {
        this.#settled.set(name, now);
        changed.push(name);
      }
    }
    return changed;
  }

  /**
   * The files' contents (or why each could not be read) as one string, each read kept for
   * {@linkcode FileChanges.text}; null when a read failed for the process's sake (see
   * `_isProcessError`): then the files count as not looked at.
   */
  async #contents(
    paths: readonly string[],
    known: ReadonlyMap<string, string> = new Map(),
  ): Promise<string | null> {
    const read = (path: string) => {
      const text = known.get(path);
      return text === undefined ? this.#read(path) : Promise.resolve(text);
    };
    const reads = await Promise.all(
      paths.map((path) => read(path).then((text) => ({ text }), (error: unknown) => ({ error }))),
    );
    reads.forEach((r, i) => this.#last.set(paths[i]!, r));
    if (reads.some((r) => "error" in r && _isProcessError(r.error))) return null;
    const contents = reads.map((r) => {
      if ("text" in r) return [true, r.text];
      const { error } = r;
      return [false, error instanceof Error ? `${error.name}: ${error.message}` : String(error)];
    });
    return JSON.stringify(contents);
  }
}

/**
 * The error codes of a read that failed for the process's sake, not the file's: out of file
 * descriptors (the process's or the system's), out of memory, interrupted, try again.
 */
const _PROCESS_ERRORS: ReadonlySet<string> = new Set([
  "EMFILE",
  "ENFILE",
  "ENOMEM",
  "EINTR",
  "EAGAIN",
]);

/** Whether `error` (as Deno's file reads throw it, with `code`) says nothing about the file. */
function _isProcessError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && _PROCESS_ERRORS.has(code);
}
