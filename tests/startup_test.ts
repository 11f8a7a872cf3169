/**
 * A node's start-up, in real processes: bad configuration or unreadable data is said in one line
 * that names what is wrong.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cleanEnv, DEFAULT_NODE_FLAGS, freePorts } from "../testing/harness.ts";

const _MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const _LINUX = Deno.build.os === "linux";

/** A one-node cluster file on free ports in a new temporary directory. */
async function _oneNode(
  rpcHost = "127.0.0.1",
): Promise<{ dir: string; file: string; api: number }> {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-startup-" });
  const [rpc, api] = freePorts(2);
  const file = join(dir, "cluster.json");
  await Deno.writeTextFile(
    file,
    JSON.stringify([
      { node_id: "n1", rpc_url: `http://${rpcHost}:${rpc}`, api_url: `http://127.0.0.1:${api}` },
    ]),
  );
  return { dir, file, api: api! };
}

/** The args of `deno run main.ts` as node n1 of `file` on `dataDir`. */
function _nodeArgs(file: string, dataDir: string, flags: string[] = []): string[] {
  return [
    "run",
    "-A",
    _MAIN,
    "--id",
    "n1",
    "--cluster-config-path",
    file,
    "--data-dir",
    dataDir,
    ...DEFAULT_NODE_FLAGS,
    ...flags,
  ];
}

Deno.test("a host in the node's own rpc_url that does not resolve is one line naming it and the file, exit 2", async () => {
  const { dir, file } = await _oneNode("raft_node1");
  try {
    // The flags name no --listen-host: the node listens on its rpc_url's host.
    const args = _nodeArgs(file, join(dir, "data"), ["--log-format", "json"])
      .filter((a, i, all) => a !== "--listen-host" && all[i - 1] !== "--listen-host");
    const out = await new Deno.Command(Deno.execPath(), {
      args,
      env: cleanEnv(),
      clearEnv: true,
      stdin: "null",
    }).output();
    const printed = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 2, printed);
    const lines = printed.trim().split("\n");
    assert.equal(lines.length, 1, printed);
    const line = JSON.parse(lines[0]!);
    assert.equal(line.level, "error");
    assert.match(line.message, /the host "raft_node1", from n1's rpc_url in the cluster file /);
    assert.ok(line.message.includes(JSON.stringify(file)), line.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const _ROOT = _LINUX && Deno.uid() === 0;

Deno.test({
  name: "an unreadable WAL directory at start-up is named in the error (root only: runs as nobody)",
  ignore: !_ROOT,
  async fn() {
    const { dir, file } = await _oneNode();
    try {
      const data = join(dir, "data");
      // Deno compiles the code again for nobody, in a cache of its own.
      const cache = join(dir, "deno");
      await Deno.mkdir(join(data, "wal"), { recursive: true });
      await Deno.mkdir(cache);
      for (const path of [dir, data, join(data, "wal"), cache, file]) {
        await Deno.chown(path, 65534, 65534);
      }
      await Deno.chmod(dir, 0o755);
      await Deno.chmod(join(data, "wal"), 0o000);
      const out = await new Deno.Command("setpriv", {
        args: [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          Deno.execPath(),
          ..._nodeArgs(file, data),
        ],
        env: cleanEnv({ DENO_DIR: cache, HOME: dir }),
        clearEnv: true,
        stdin: "null",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 1, stderr);
      assert.ok(
        stderr.includes(
          `cannot open the node's data: Permission denied (os error 13): the WAL directory ${
            JSON.stringify(join(data, "wal"))
          }`,
        ),
        stderr,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
