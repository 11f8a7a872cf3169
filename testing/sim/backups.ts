/**
 * The backup readers (`GET /v1/snapshot`: a node's {@linkcode RaftNode.snapshot} stream) and the
 * `backup` check. Like the watchers and the blocking readers, they draw from their own random
 * source, set no timer on the run's clock and send nothing to the nodes, so the run's steps stay
 * as they would be without them. A reader takes a backup of a live node, now and then, and reads
 * it up to a second later, while the node goes on applying, compacting and snapshotting; a node
 * that crashes or stops meanwhile breaks the download (the stream is cancelled, as a closed
 * connection cancels it). A simulated node's state fits in the stream's first chunk, which the
 * stream encodes when the backup is taken: that the copy-on-write view holds still while a large
 * backup streams is the state machine's unit tests' to show, not this.
 *
 * The check, once the run is over: each backup read to its end, decoded and restored into a fresh
 * state machine (as `--restore-from` starts a cluster from one), holds exactly the committed state
 * at the index it names: every key's value and revision, the remembered idempotent outcomes, the
 * leases with their TTLs and keys.
 *
 * @module
 */

import { seededRandom } from "../../src/raft/rand.ts";
import { KvStateMachine } from "../../src/kv/state_machine.ts";
import { decodeSnapshot } from "../../src/storage/snapshot_file.ts";
import { settle } from "../sim_clock.ts";
import type { Checker } from "./checks.ts";
import type { SimContext, SimNode } from "./context.ts";

/** One backup, from when it was taken to when it was read or broken. */
type _Backup = {
  reader: number;
  node: SimNode;
  inc: number;
  /** The index the backup names (`X-Raftkv-Snapshot-Index`). */
  index: number;
  stream: ReadableStream<Uint8Array>;
  /** When the reader starts reading it (virtual ms). */
  readAt: number;
  reading?: boolean;
  /** Its bytes, once read to the end. */
  bytes?: Uint8Array;
};

/** The backup readers of a run. */
export class BackupReaders {
  readonly #ctx: SimContext;
  readonly #checker: Checker;
  readonly #rng: () => number;
  /** When each reader next takes a backup (virtual ms); Infinity while one is under way. */
  readonly #due: number[] = [];
  readonly #backups: _Backup[] = [];
  /** The backups taken and not yet read or broken. */
  readonly #active = new Set<_Backup>();

  /** The backup readers of the run `ctx` (none until {@linkcode BackupReaders.start}). */
  constructor(ctx: SimContext, checker: Checker) {
    [this.#ctx, this.#checker] = [ctx, checker];
    this.#rng = seededRandom((ctx.opts.seed ^ 0x1f83d9ab) >>> 0);
  }

  /** Adds `count` readers; each takes its first backup within a second. */
  start(count: number): void {
    for (let i = 0; i < count; i++) this.#due.push(this.#rng() * 1000);
  }

  /**
   * After each step: breaks the backups whose node crashed or stopped, starts reading those whose
   * time has come, and takes a backup for every reader whose time has come.
   */
  tend(): void {
    const now = this.#ctx.clock.now();
    for (const b of this.#active) {
      if (b.reading) continue;
      if (b.node.inc !== b.inc || b.node.node === null) this.#break(b);
      else if (b.readAt <= now) this.#read(b);
    }
    for (let reader = 0; reader < this.#due.length; reader++) {
      if (this.#due[reader]! > now || this.#ctx.phase !== "run") continue;
      this.#due[reader] = Infinity;
      this.#take(reader);
    }
  }

  /** Breaks the downloads still under way (the run is over) and waits until each has ended. */
  async stopAll(): Promise<void> {
    for (const b of this.#active) if (!b.reading) this.#break(b);
    for (let turn = 0; turn < 50 && this.#active.size > 0; turn++) await settle();
    for (const b of this.#active) {
      this.#ctx.violation("backup", `${this.#what(b)} did not end when the run did`);
    }
  }

  #take(reader: number): void {
    const ctx = this.#ctx;
    const r = this.#rng;
    const again = () => this.#due[reader] = ctx.clock.now() + 200 + r() * 1800;
    const live = ctx.nodes.filter((n) => n.node !== null && n.clock?.paused !== true);
    if (live.length === 0) return void again();
    const n = live[Math.floor(r() * live.length)]!;
    let taken: { index: number; stream: ReadableStream<Uint8Array> };
    try {
      taken = n.node!.snapshot();
    } catch {
      return void again(); // stopping: answered 503, the reader tries again later
    }
    const readAt = ctx.clock.now() + (r() < 0.3 ? 0 : r() * 1000);
    const b: _Backup = { reader, node: n, inc: n.inc, ...taken, readAt };
    this.#backups.push(b);
    this.#active.add(b);
    this.#ctx.stats.backupsTaken++;
  }

  /** Reads `b` to its end (through the stream's pulls, over the steps that follow). */
  #read(b: _Backup): void {
    b.reading = true;
    _readAll(b.stream).then((bytes) => {
      b.bytes = bytes;
      this.#ctx.stats.backupsRead++;
    }).catch((e) => this.#ctx.caught(e, ` (backup reader ${b.reader})`)).finally(() => {
      this.#end(b);
    });
  }

  /** Its node crashed or stopped (or the run ended): the download breaks. */
  #break(b: _Backup): void {
    b.reading = true;
    this.#ctx.stats.backupsBroken++;
    b.stream.cancel().catch((e) => this.#ctx.caught(e, ` (backup reader ${b.reader})`))
      .finally(() => this.#end(b));
  }

  #end(b: _Backup): void {
    this.#active.delete(b);
    this.#due[b.reader] = this.#ctx.clock.now() + 200 + this.#rng() * 1800;
  }

  /** Every backup read to its end, restored, holds the committed state at its index. */
  check(): void {
    for (const b of this.#backups) {
      if (b.bytes === undefined || b.index > this.#checker.refIndex) continue;
      const loaded = decodeSnapshot(b.bytes, `backup of ${b.node.id} at ${b.index}`);
      if (loaded.header.index !== b.index) {
        this.#ctx.violation(
          "backup",
          `${this.#what(b)} holds a snapshot of index ${loaded.header.index}`,
        );
      }
      const kv = new KvStateMachine();
      kv.reset(loaded, loaded.header.index);
      const extra = [...kv.entries()].filter((e) => !this.#ctx.keys.includes(e.key));
      const state = this.#checker.state((k) => kv.entry(k), kv.sessionCount);
      const leases = JSON.stringify(kv.leases().map((l) => [l.id, l.ttlMs, l.keys]));
      const [wantState, wantLeases] = this.#checker.refAt(b.index);
      if (state !== wantState || leases !== wantLeases || extra.length > 0) {
        this.#ctx.violation(
          "backup",
          `${this.#what(b)}, restored, holds ${state} and leases ${leases}` +
            (extra.length > 0 ? ` and keys ${extra.map((e) => e.key)}` : "") +
            `, but the committed log gives ${wantState} and leases ${wantLeases}`,
        );
      }
    }
  }

  #what(b: _Backup): string {
    return `backup reader ${b.reader}'s backup of ${b.node.id} at index ${b.index}`;
  }
}

/** Every chunk of `stream`, joined. */
async function _readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
