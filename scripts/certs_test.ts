import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseArgs } from "../src/cli/config.ts";

const SCRIPT = fileURLToPath(new URL("./certs.ts", import.meta.url));

Deno.test("deno task certs makes files a TLS node with tokens accepts, and refuses to redo a CA", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-certs-" });
  try {
    const run = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", SCRIPT, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const made = await run(["--dir", `${dir}/tls`, "--nodes", "n1,n2", "--host", "kv.example"]);
    assert.equal(made.code, 0, new TextDecoder().decode(made.stderr));
    const file = JSON.stringify([
      { node_id: "n1", rpc_url: "https://kv.example:6666", api_url: "https://kv.example:7777" },
      { node_id: "n2", rpc_url: "https://localhost:6667", api_url: "https://localhost:7778" },
    ]);
    const read = (path: string) => path === "cluster.json" ? file : Deno.readTextFileSync(path);
    const t = `${dir}/tls`;
    const result = parseArgs(
      [
        "--id=n1",
        "--cluster-config-path=cluster.json",
        `--peer-cert=${t}/n1.crt`,
        `--peer-key=${t}/n1.key`,
        `--peer-ca=${t}/ca.crt`,
        `--api-cert=${t}/n1.crt`,
        `--api-key=${t}/n1.key`,
        `--tokens-file=${t}/tokens.json`,
      ],
      {},
      read,
    );
    assert.equal(result.kind, "run");
    if (result.kind !== "run") return;
    assert.ok(result.config.peerTls && result.config.apiTls);
    assert.deepEqual(result.config.tokens?.map((x) => x.role), ["read", "write", "admin"]);
    for (const f of ["n1.key", "n2.key", "tokens.json"]) {
      assert.equal((await Deno.stat(`${t}/${f}`)).mode! & 0o777, 0o600, f);
    }
    const again = await run(["--dir", t, "--nodes", "n1"]);
    assert.equal(again.code, 1, "a second run must not replace the CA");
    assert.equal((await run(["--nodes", "n1"])).code, 2, "--dir is required");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
