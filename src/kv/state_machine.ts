/**
 * The deterministic key-value state machine: commands are applied in log order to an in-memory
 * map. Given the same entries, every node ends in the same state.
 *
 * Commands travel in log entries in a small binary form (see {@linkcode encodeCommand}).
 *
 * @module
 */

/** A state-changing command. */
export type KvCommand =
  | { op: "put"; key: string; value: string }
  | { op: "delete"; key: string };

/** What applying a command produced. */
export type KvResult =
  | { op: "put" }
  | { op: "delete"; deleted: boolean };

const OP_PUT = 1;
const OP_DELETE = 2;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Encodes a command: `op` (1 byte: 1 put, 2 delete), key length (u32, big-endian), the key's
 * UTF-8 bytes, then (put only) the value's UTF-8 bytes to the end.
 */
export function encodeCommand(cmd: KvCommand): Uint8Array {
  const key = encoder.encode(cmd.key);
  const value = cmd.op === "put" ? encoder.encode(cmd.value) : new Uint8Array(0);
  const out = new Uint8Array(5 + key.length + value.length);
  out[0] = cmd.op === "put" ? OP_PUT : OP_DELETE;
  new DataView(out.buffer).setUint32(1, key.length);
  out.set(key, 5);
  out.set(value, 5 + key.length);
  return out;
}

/** Decodes a command written by {@linkcode encodeCommand}; throws RangeError on malformed bytes. */
export function decodeCommand(bytes: Uint8Array): KvCommand {
  if (bytes.length < 5) throw new RangeError(`command too short: ${bytes.length} bytes`);
  const op = bytes[0];
  const keyLen = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(1);
  if (5 + keyLen > bytes.length) {
    throw new RangeError(`command key length ${keyLen} runs past its ${bytes.length} bytes`);
  }
  const key = decoder.decode(bytes.subarray(5, 5 + keyLen));
  if (op === OP_PUT) return { op: "put", key, value: decoder.decode(bytes.subarray(5 + keyLen)) };
  if (op === OP_DELETE) {
    if (5 + keyLen !== bytes.length) throw new RangeError("delete command has trailing bytes");
    return { op: "delete", key };
  }
  throw new RangeError(`unknown command op ${op}`);
}

/**
 * A consistent view of the state at one index, readable while later entries keep being applied
 * (copy-on-write: the first change to a key after the view began saves its old value).
 */
export interface StateView {
  /** The applied index the view shows. */
  readonly index: number;
  /** The number of pairs in the view. */
  readonly count: number;
  /** The view's pairs, in no particular order; may be read slowly, across many event-loop turns. */
  pairs(): Iterable<[string, string]>;
  /** Releases the view (stops saving old values for it). */
  close(): void;
}

/** The key-value map and the index of the last entry applied to it. */
export class KvStateMachine {
  /** The live data (replaced, not cleared, by {@linkcode KvStateMachine.reset}). */
  data: Map<string, string> = new Map();
  /** The index of the last log entry applied (including no-ops). */
  appliedIndex = 0;
  /** Open views: for each, the value each changed key had when it began (undefined = absent). */
  #views = new Set<Map<string, string | undefined>>();

  /**
   * Opens a consistent view of the current state (see {@linkcode StateView}). It copies the key
   * list (one pointer per key, no values), so that a key changed after the reading passed it is
   * neither missed nor read twice.
   */
  view(): StateView {
    const saved = new Map<string, string | undefined>();
    this.#views.add(saved);
    const data = this.data;
    const keys = Array.from(data.keys());
    return {
      index: this.appliedIndex,
      count: keys.length,
      *pairs() {
        // A key changed since the view began has its old value in `saved`.
        for (const k of keys) yield [k, saved.has(k) ? saved.get(k)! : data.get(k)!];
      },
      close: () => {
        this.#views.delete(saved);
      },
    };
  }

  #save(key: string): void {
    for (const saved of this.#views) if (!saved.has(key)) saved.set(key, this.data.get(key));
  }

  /** Applies one command at `index`, which must be `appliedIndex + 1` (see {@linkcode advance}). */
  apply(index: number, cmd: KvCommand): KvResult {
    this.advance(index);
    if (this.#views.size > 0) this.#save(cmd.key);
    if (cmd.op === "put") {
      this.data.set(cmd.key, cmd.value);
      return { op: "put" };
    }
    return { op: "delete", deleted: this.data.delete(cmd.key) };
  }

  /**
   * Records that the entry at `index` (a no-op or a command) was applied. Entries come one by
   * one in log order: anything but `appliedIndex + 1` (a repeated, older or skipped entry) throws
   * before the state changes.
   */
  advance(index: number): void {
    if (index !== this.appliedIndex + 1) {
      throw new RangeError(
        `entry ${index} applied after ${this.appliedIndex}: out of order (expected ${
          this.appliedIndex + 1
        })`,
      );
    }
    this.appliedIndex = index;
  }

  /** The value under `key`, or null. */
  get(key: string): string | null {
    return this.data.get(key) ?? null;
  }

  /**
   * Replaces the whole state (after loading a snapshot). Views opened before keep the map they
   * were reading, which nothing changes any more, so they stay consistent.
   */
  reset(entries: Iterable<[string, string]>, appliedIndex: number): void {
    this.#views.clear();
    this.data = new Map(entries);
    this.appliedIndex = appliedIndex;
  }
}
