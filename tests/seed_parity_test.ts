/**
 * A user of the original Go project brings their files along: its README's cluster file (bare
 * `host:port` addresses) and its example launch command, verbatim (`--flag=value` forms,
 * `--join-mode=cluster-file`, `--heartbeat`, the four per-path flags, no `--data-dir`), start a
 * working cluster, and its README's quick start (curl POST, GET, DELETE, GET -> 404) works.
 *
 * The seed's files name the fixed ports 6666-6668 and 7777-7779, so the three nodes run in a
 * network namespace of their own (`unshare --net`, root only): those ports are free there, and
 * nothing outside can collide with them. Without root or `unshare` the test is skipped, saying
 * why.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

// The original README's cluster file, verbatim.
const SEED_CLUSTER_FILE = `[
    {"node_id":"node-1","rpc_url":"localhost:6666","api_url":"localhost:7777"},
    {"node_id":"node-2","rpc_url":"localhost:6667","api_url":"localhost:7778"},
    {"node_id":"node-3","rpc_url":"localhost:6668","api_url":"localhost:7779"}
]
`;

// The original README's example launch command for node-1, verbatim but for the program
// (`./raft` there); node-2 and node-3 get the same command with their own id and ports, as the
// original's cluster manager generated them.
function seedCommand(n: 1 | 2 | 3): string {
  return `"$RAFT" --id=node-${n} \\
           --api-port=${7776 + n} \\
           --rpc-port=${6665 + n} \\
           --log-entry-path=./local-cluster/node-${n}/data/entry \\
           --log-metadata-path=./local-cluster/node-${n}/data/metadata/metadata.json \\
           --raft-state-path=./local-cluster/node-${n}/state/state.json \\
           --join-mode=cluster-file \\
           --cluster-config-path=./local-cluster/node-${n}/cluster/config.json \\
           --election-timeout=3000 \\
           --heartbeat=500 \\
           --rpc-timeout=1000 \\
           --api-timeout=2000 \\
           --api-fwd-timeout=1500 \\
           --max-conn-retry-attempts=3 \\
           --snapshot-path=./local-cluster/node-${n}/snapshot`;
}

// Runs inside the namespace: brings up loopback, starts the three nodes, then the original
// README's quick start, retrying each call until it succeeds or the deadline passes (the
// original README says a call may fail while a leader is being elected). Every node is killed
// on the way out.
const SCRIPT = `
set -u
ip link set lo up
pids=()
trap 'kill -9 "\${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
${seedCommand(1)} >node-1.log 2>&1 & pids+=($!)
${seedCommand(2)} >node-2.log 2>&1 & pids+=($!)
${seedCommand(3)} >node-3.log 2>&1 & pids+=($!)
deadline=$((SECONDS + 60))
until_ok() { # until_ok <expected status> <curl args...>
  local want=$1; shift
  while ((SECONDS < deadline)); do
    alive=0; for p in "\${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    if ((alive == 0)); then echo "every node has exited"; return 1; fi
    code=$(curl -s -o body.out -w '%{http_code}' --max-time 5 "$@") || code=000
    if [[ $code == "$want" ]]; then echo "$want $(cat body.out)"; return 0; fi
    sleep 0.2
  done
  echo "TIMEOUT waiting for $want from: $* (last: $code $(cat body.out 2>/dev/null))"; return 1
}
# 1. Create a new key-value pair (a -> 1), exactly as the original README does.
until_ok 200 --header "Content-Type: application/json" \\
  --request POST --data '{"k":"a", "v":"1"}' http://localhost:7777/v1/data || exit 1
# 2. Query it (through every node: followers forward to the leader).
for port in 7777 7778 7779; do until_ok 200 http://localhost:$port/v1/data/a || exit 1; done
# 3. Delete it.
until_ok 200 -X DELETE http://localhost:7777/v1/data/a || exit 1
# 4. Query again: 404.
until_ok 404 http://localhost:7777/v1/data/a || exit 1
# The four per-path flags put the node's files where the original put them.
ls -d local-cluster/node-1/data/entry local-cluster/node-1/data/metadata/metadata.json \\
  local-cluster/node-1/state/state.json local-cluster/node-1/snapshot
echo SEED-PARITY-OK
`;

async function canUseNetworkNamespace(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "network namespaces need Linux";
  if (Deno.uid() !== 0) return "unshare --net needs root";
  try {
    const probe = await new Deno.Command("unshare", {
      args: ["--net", "ip", "link", "set", "lo", "up"],
      stdout: "null",
      stderr: "null",
    }).output();
    return probe.success ? null : "unshare --net or ip failed";
  } catch {
    return "unshare or ip is not installed";
  }
}

const skip = await canUseNetworkNamespace();

Deno.test({
  name: "seed parity: the original README's cluster file and launch command run a cluster",
  ignore: skip !== null,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "raftkv-seed-" });
    try {
      for (const n of [1, 2, 3]) {
        await Deno.mkdir(`${dir}/local-cluster/node-${n}/cluster`, { recursive: true });
        await Deno.writeTextFile(
          `${dir}/local-cluster/node-${n}/cluster/config.json`,
          SEED_CLUSTER_FILE,
        );
      }
      // `$RAFT` is the program: the Deno that runs these tests, with main.ts.
      const raft = `${dir}/raft`;
      await Deno.writeTextFile(
        raft,
        `#!/bin/sh\nexec "${Deno.execPath()}" run --allow-all "${MAIN}" "$@"\n`,
      );
      await Deno.chmod(raft, 0o755);
      const out = await new Deno.Command("timeout", {
        args: ["-k", "5", "90", "unshare", "--net", "bash", "-c", SCRIPT],
        cwd: dir,
        env: { RAFT: raft, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stdout = new TextDecoder().decode(out.stdout);
      const logs = await Promise.all(
        [1, 2, 3].map((n) => Deno.readTextFile(`${dir}/node-${n}.log`).catch(() => "")),
      );
      const detail = `${stdout}\n${new TextDecoder().decode(out.stderr)}\n` +
        logs.map((l, i) => `--- node-${i + 1} ---\n${l.split("\n").slice(-30).join("\n")}`)
          .join("\n");
      assert.ok(stdout.includes("SEED-PARITY-OK"), detail);
      // The original's answer, then the key's revision (extra fields a JSON client ignores).
      assert.match(stdout, /^200 \{"k":"a","v":"1"[,}]/m, detail);
      assert.match(stdout, /^404 /m, detail);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
