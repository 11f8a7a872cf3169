/**
 * What a forged or refused peer request could change on a node, gathered so that tests can
 * assert that it changed nothing: the node's status (term, role, leader, commit and last index)
 * and the bytes of everything it keeps on disk (hard state, WAL files, snapshot directory).
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { decodeRecord } from "../src/storage/wal_record.ts";
import { type NodeStatus, type ProcessCluster, waitFor } from "./harness.ts";

/** A node's state as seen from outside; equal before and after means nothing changed. */
export interface ObservedState {
  /** Its current term. */
  term: number;
  /** Its role. */
  role: string;
  /** The leader it knows of, or null. */
  leader: string | null;
  /** Its commit index. */
  commit: number;
  /** The index of the last entry in its log. */
  last: number;
  /** {@linkcode diskState} of its data directory. */
  disk: string;
}

/**
 * Everything on a node's disk that a peer message could change: the hard-state file, and the
 * name and bytes of every WAL and snapshot-directory file, as one comparable text.
 *
 * @param dataDir The node's data directory.
 * @returns One line per file: its name, size and SHA-256.
 */
export async function diskState(dataDir: string): Promise<string> {
  const lines = [`raft-state.json ${await _digest(join(dataDir, "raft-state.json"))}`];
  for (const dir of ["wal", "snapshots"]) {
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(join(dataDir, dir))) names.push(e.name);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    for (const name of names.sort()) {
      lines.push(`${dir}/${name} ${await _digest(join(dataDir, dir, name))}`);
    }
  }
  return lines.join("\n");
}

/**
 * The highest commit index recorded in a node's WAL (see "Commit records" in
 * `src/storage/README.md`), read without repairing anything: a record still being written ends
 * the scan of its segment.
 *
 * @param dataDir The node's data directory.
 * @returns The commit index, 0 if none is recorded.
 */
export async function walCommit(dataDir: string): Promise<number> {
  let commit = 0;
  for await (const item of Deno.readDir(join(dataDir, "wal"))) {
    if (!item.name.endsWith(".wal")) continue;
    const bytes = await Deno.readFile(join(dataDir, "wal", item.name));
    for (let offset = 0; offset < bytes.length;) {
      const record = decodeRecord(bytes, offset, false);
      if (record.kind !== "entry" && record.kind !== "reset" && record.kind !== "commit") break;
      if (record.kind === "commit") commit = Math.max(commit, record.index);
      offset = record.end;
    }
  }
  return commit;
}

/**
 * Reads a node's status and disk state, once the node has recorded its commit index in its WAL
 * (it does so within two heartbeat intervals of going idle), so that a later observation of an
 * untouched node finds the same bytes.
 *
 * @param cluster The cluster.
 * @param id The node's id.
 * @returns Its {@linkcode ObservedState}.
 * @throws {assert.AssertionError} If the node does not answer `/v1/status`.
 */
export async function observeNode(cluster: ProcessCluster, id: string): Promise<ObservedState> {
  const dataDir = cluster.node(id).dataDir;
  let status = null as NodeStatus | null;
  await waitFor(async () => {
    status = await cluster.status(id, 3000);
    return status !== null && await walCommit(dataDir) >= status.commit_index;
  }, {
    deadlineMs: 5_000,
    intervalMs: 20,
    message: () => `${id} to record its commit index ${status?.commit_index} in its WAL`,
  });
  assert.ok(status !== null, `${id} does not answer /v1/status`);
  return {
    term: status.term,
    role: status.role,
    leader: status.leader?.id ?? null,
    commit: status.commit_index,
    last: status.last_index,
    disk: await diskState(dataDir),
  };
}

async function _digest(path: string): Promise<string> {
  const bytes = await Deno.readFile(path);
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return `${bytes.byteLength} bytes sha256 ${hash.toHex()}`;
}
