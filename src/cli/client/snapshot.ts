/**
 * `raftkv snapshot save FILE` (a backup through `GET /v1/snapshot`, written atomically and
 * verified) and `raftkv snapshot restore FILE` (verifies a backup and says how to start a node
 * from it with `--restore-from`).
 *
 * @module
 */

import { dirname, resolve } from "node:path";
import { writeAll } from "../../storage/fs.ts";
import { realFs } from "../../storage/real_fs.ts";
import { nodeDataIn } from "../node_data.ts";
import { readSnapshotFile, type SnapshotHeader } from "../../storage/snapshot_file.ts";
import type { Command } from "./command.ts";
import { answerError, readAnswer } from "./http.ts";
import { ClientError, EXIT } from "./options.ts";
import type { MemberStatus } from "./status.ts";

/** `raftkv snapshot save FILE`. */
export const SNAPSHOT_SAVE: Command = {
  name: "snapshot save",
  args: "FILE",
  summary: "download a backup of the cluster's state to FILE",
  description: "Downloads a consistent snapshot of the state (GET /v1/snapshot), from the leader " +
    "when the first endpoint that answers names one it can reach (it has the newest state), else " +
    "from that endpoint. It is written to FILE.part (mode 0600), synced, checked (format and " +
    "checksum, read back whole), then renamed to FILE and the directory synced: FILE is either " +
    "the old file or a complete, verified backup, never a partial one. --timeout covers the start " +
    "of the download; the node cuts off a download that takes longer than its --backup-timeout.",
  options: [],
  arity: [1, 1],
  async run(ctx) {
    const file = ctx.args[0]!;
    const client = await ctx.client();
    // The leader has the newest state: ask it first, when it is known.
    let endpoints = [...client.endpoints];
    try {
      const status = await client.send("GET", "/v1/status");
      const leader = status.status === 200 ? (status.json as MemberStatus).leader : null;
      if (leader) endpoints = [leader.api_url, ...endpoints.filter((e) => e !== leader.api_url)];
    } catch {
      // The download below reports it.
    }
    const { response, endpoint } = await client.stream("/v1/snapshot", { endpoints });
    if (response.status !== 200) {
      throw answerError(await readAnswer(response, endpoint), "snapshot save");
    }
    const part = `${file}.part`;
    let bytes = 0;
    let header: SnapshotHeader;
    try {
      const out = await realFs.open(part, "truncate");
      try {
        for await (const chunk of response.body!) {
          await writeAll(out, chunk);
          bytes += chunk.length;
        }
        await out.sync();
      } finally {
        out.close();
      }
      try {
        header = (await readSnapshotFile(part)).header;
      } catch (error) {
        throw new ClientError(
          `the download from ${endpoint} is not a valid snapshot (${(error as Error).message})`,
          EXIT.error,
        );
      }
      await Deno.rename(part, file);
      await realFs.syncDir(dirname(resolve(file)));
    } catch (error) {
      await Deno.remove(part).catch(() => {});
      if (error instanceof ClientError) throw error;
      throw new ClientError(
        `downloading or writing ${JSON.stringify(file)} failed: ${(error as Error).message}`,
        EXIT.error,
      );
    }
    const result = {
      file,
      bytes,
      index: header.index,
      term: header.term,
      keys: header.count,
      members: header.voters,
      endpoint,
    };
    ctx.print(
      result,
      `saved the snapshot at index ${header.index} (term ${header.term}, ${_keys(header.count)}) ` +
        `to ${file} (${bytes} bytes) from ${endpoint}`,
    );
    return EXIT.ok;
  },
};

/** `raftkv snapshot restore FILE`. */
export const SNAPSHOT_RESTORE: Command = {
  name: "snapshot restore",
  args: "FILE",
  summary: "check a backup and print how to start a cluster from it",
  description: "Reads FILE whole and checks it (format, checksum, every key and value), prints " +
    "what it holds, and prints the command that starts a node from it: a node started with " +
    "--restore-from FILE and an empty data directory installs the backup as its first snapshot " +
    "(a node that already has data ignores the flag, so restarting with the same command is " +
    "safe). Start every node of the new cluster that way. With --data-dir, the directory is " +
    "checked too: one that already holds a node's data exits 6, since the node would ignore the " +
    "backup. Nothing is written: the node does the restore itself.",
  options: [
    {
      name: "--data-dir",
      value: "<dir>",
      default: "data/<id> for each member in the backup",
      description: "The new node's data directory, checked to hold no node data",
    },
    {
      name: "--id",
      value: "<id>",
      default: "one command per member in the backup",
      description: "The new node's id, for the command printed",
    },
  ],
  arity: [1, 1],
  async run(ctx) {
    const file = ctx.args[0]!;
    let header: SnapshotHeader;
    try {
      header = (await readSnapshotFile(file)).header;
    } catch (error) {
      throw new ClientError(
        `${file} is not a usable backup: ${(error as Error).message}`,
        EXIT.error,
      );
    }
    const dataDir = ctx.line.values.get("--data-dir")?.value ?? null;
    const id = ctx.line.values.get("--id")?.value ?? null;
    if (dataDir !== null) {
      const found = await nodeDataIn(dataDir);
      if (found.length > 0) {
        throw new ClientError(
          `${dataDir} already holds a node's data (${found.join(", ")}): a node started there ` +
            "would ignore --restore-from; use an empty or new directory",
          EXIT.conflict,
          { data_dir: dataDir, found },
        );
      }
    }
    const source = resolve(file);
    const ids = id !== null ? [id] : dataDir !== null ? ["<id>"] : header.voters;
    const commands = ids.map((
      each,
    ) => [
      "raftkv",
      "--id",
      each,
      "--data-dir",
      dataDir ?? `data/${each}`,
      "--restore-from",
      source,
    ]);
    ctx.print(
      {
        file,
        index: header.index,
        term: header.term,
        keys: header.count,
        members: header.voters,
        data_dir: dataDir,
        commands,
      },
      [
        `${file}: a valid snapshot at index ${header.index} (term ${header.term}) with ` +
        `${_keys(header.count)}, taken in a cluster of ${header.voters.join(", ")}`,
        "Start each node of the new cluster from it with an empty data directory and its usual " +
        "flags (such as --cluster-config-path), for example:",
        ...commands.map((c) => `  ${c.join(" ")}`),
      ].join("\n"),
    );
    return EXIT.ok;
  },
};

function _keys(count: number): string {
  return `${count} ${count === 1 ? "key" : "keys"}`;
}
