/**
 * The shipped program: `--version`, the `healthcheck` subcommand the container image uses, the
 * permissions baked into the binary, and (where a `denort` is available through DENORT_BIN) the
 * compiled binary running the README's quick start as a 3-node cluster. The compile task's own
 * errors are tested beside it (scripts/compile_test.ts).
 *
 * Processes run with the permissions baked into the binary (PERMISSION_FLAGS), so a variable
 * read outside the `--allow-env` list fails here too.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import denoJson from "../deno.json" with { type: "json" };
import { PERMISSION_FLAGS } from "../main.ts";
import { makeCertificates } from "../testing/certs.ts";
import {
  buildClusterConfig,
  cleanEnv,
  type CommandOutput,
  freePort,
  freePorts,
  httpRequest,
  runCommand,
  waitFor,
  writeClusterFile,
} from "../testing/harness.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

function run(
  command: string,
  args: string[],
  env: Record<string, string> = cleanEnv(),
): Promise<CommandOutput> {
  return runCommand(command, args, env, ROOT);
}

/** `deno run` of main.ts with the binary's permissions. */
function runMain(args: string[], env?: Record<string, string>): Promise<CommandOutput> {
  return run(Deno.execPath(), ["run", "--no-prompt", ...PERMISSION_FLAGS, MAIN, ...args], env);
}

Deno.test("--version prints raftkv's version and the Deno and V8 versions", async () => {
  const { code, stdout, stderr } = await runMain(["--version"]);
  assert.equal(code, 0, stderr);
  const match = /^raftkv (\S+) \(deno (\S+), v8 (\S+)\)\n$/.exec(stdout);
  assert.ok(match, `unexpected output ${JSON.stringify(stdout)}`);
  assert.equal(match[1], denoJson.version);
  assert.equal(match[2], Deno.version.deno);
  assert.equal(match[3], Deno.version.v8);
});

Deno.test("healthcheck exits 0 only for a 200 within 2 seconds", async () => {
  const pending = new Set<() => void>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/health") return new Response("{}");
    if (path === "/sick") return new Response("{}", { status: 503 });
    // "/slow": answer only once the client gave up (or the test ends).
    await new Promise<void>((resolve) => {
      pending.add(resolve);
      req.signal.addEventListener("abort", () => resolve());
    });
    return new Response("late");
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    const check = (args: string[], env?: Record<string, string>) =>
      runMain(["healthcheck", ...args], env);

    assert.equal((await check(["--url", `${base}/health`])).code, 0);
    assert.equal((await check([`--url=${base}/health`])).code, 0);
    // Default URL: /health on 127.0.0.1 at RAFTKV_API_PORT.
    const viaEnv = await check([], cleanEnv({ RAFTKV_API_PORT: String(server.addr.port) }));
    assert.equal(viaEnv.code, 0, viaEnv.stderr);

    const sick = await check(["--url", `${base}/sick`]);
    assert.equal(sick.code, 1);
    assert.match(sick.stderr, /answered 503/);

    const started = Date.now();
    const slow = await check(["--url", `${base}/slow`]);
    assert.equal(slow.code, 1);
    assert.match(slow.stderr, /no answer within 2000ms/);
    assert.ok(Date.now() - started < 10_000);

    const closed = await check(["--url", `http://127.0.0.1:${freePort()}/health`]);
    assert.equal(closed.code, 1);
    assert.match(closed.stderr, /^unhealthy: /);

    // Docker reserves exit code 2, so bad usage is unhealthy too.
    assert.equal((await check(["--bogus"])).code, 1);
    const help = await check(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /raftkv healthcheck \[--url/);
  } finally {
    for (const resolve of pending) resolve();
    await server.shutdown();
  }
});

Deno.test("healthcheck checks an https API against --cacert or RAFTKV_HEALTHCHECK_CACERT", async () => {
  const dir = await Deno.makeTempDir();
  const certs = await makeCertificates(dir, { nodes: ["node-1"], untrustedNodes: ["other"] });
  const { cert, key } = certs.node("node-1");
  // On 127.0.0.2, which the certificate does not name: the chain is checked, the name is not.
  const server = Deno.serve({
    hostname: "127.0.0.2",
    port: 0,
    cert: await Deno.readTextFile(cert),
    key: await Deno.readTextFile(key),
    onListen() {},
  }, () => new Response("{}"));
  const port = String(server.addr.port);
  try {
    const check = (args: string[], env: Record<string, string> = {}) =>
      runMain(["healthcheck", ...args], cleanEnv(env));
    const url = `https://127.0.0.2:${port}/health`;
    for (
      const [args, env] of [
        [["--url", url, "--cacert", certs.ca], {}],
        [[`--url=${url}`, `--cacert=${certs.ca}`], {}],
        [["--url", url], { RAFTKV_HEALTHCHECK_CACERT: certs.ca }],
        // The default URL is https when the node's API has a certificate.
        [[], {
          RAFTKV_API_PORT: port,
          RAFTKV_LISTEN_HOST: "127.0.0.2",
          RAFTKV_API_CERT: cert,
          RAFTKV_HEALTHCHECK_CACERT: certs.ca,
        }],
      ] as const
    ) {
      const ok = await check([...args], env);
      assert.equal(ok.code, 0, `${args} ${JSON.stringify(env)}: ${ok.stderr}`);
    }
    // A certificate from a CA it was not told to trust, or none told: unhealthy.
    const otherCa = join(certs.dir, "other-ca.crt");
    for (const args of [["--url", url, "--cacert", otherCa], ["--url", url]]) {
      const refused = await check(args);
      assert.equal(refused.code, 1, args.join(" "));
      assert.match(refused.stderr, /^unhealthy: https:/);
    }
    // Plain HTTP to a TLS port is unhealthy too.
    assert.equal((await check(["--url", `http://127.0.0.2:${port}/health`])).code, 1);
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- the binary's permissions ----------------------------------------------------------------

Deno.test("the binary has only the permissions the node needs", async () => {
  assert.deepEqual(PERMISSION_FLAGS.slice(0, 3), ["--allow-net", "--allow-read", "--allow-write"]);
  const env = PERMISSION_FLAGS[3] ?? "";
  assert.match(env, /^--allow-env=RAFTKV_[A-Z0-9_]+(,[A-Z0-9_]+)+$/);
  for (const name of ["RAFTKV_API_PORT", "RAFTKV_K8S_REPLICAS", "HOSTNAME", "POD_NAMESPACE"]) {
    assert.ok(env.split(/[=,]/).includes(name), `${name} is not readable`);
  }
  // Running programs: `raftkv lock NAME COMMAND` runs COMMAND (a node starts none), and names
  // its host in the lock's value.
  assert.equal(PERMISSION_FLAGS[4], "--allow-run");
  assert.equal(PERMISSION_FLAGS[5], "--allow-sys=hostname");
  assert.equal(PERMISSION_FLAGS.length, 6);
  // A node started with exactly these permissions gets as far as its own configuration error.
  const { code, stderr } = await runMain([], cleanEnv({ RAFTKV_JOIN_MODE: "k8s" }));
  assert.equal(code, 2, stderr);
  assert.match(stderr, /Missing the replica count/);
});

// ---- the compiled binary ------------------------------------------------------------------------

const DENORT_BIN = Deno.env.get("DENORT_BIN");
const HAVE_DENORT = DENORT_BIN !== undefined && (() => {
  try {
    return Deno.statSync(DENORT_BIN).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: HAVE_DENORT
    ? "compiled binary quick start on a 3-node cluster"
    : "compiled binary quick start (skipped: DENORT_BIN not set; deno compile cannot download denort here)",
  ignore: !HAVE_DENORT,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "raftkv-compiled-" });
    const children: Deno.ChildProcess[] = [];
    const pumps: Promise<void>[] = [];
    const output: string[][] = [];
    const logs = () =>
      output.map((lines, i) => `--- node-${i + 1} ---\n${lines.join("")}`).join("\n");
    try {
      const built = await run(
        Deno.execPath(),
        ["task", "compile", "--out-dir", dir],
        cleanEnv({ DENORT_BIN: DENORT_BIN! }),
      );
      assert.equal(built.code, 0, built.stderr);
      const binary = `${dir}/raftkv`;
      const version = await run(binary, ["--version"]);
      assert.match(version.stdout, new RegExp(`^raftkv ${denoJson.version} \\(deno `));

      const ports = freePorts(6);
      const entries = buildClusterConfig({ apiPorts: ports.slice(0, 3), rpcPorts: ports.slice(3) });
      await writeClusterFile(`${dir}/cluster.config.json`, entries);
      for (const [i, entry] of entries.entries()) {
        const child = new Deno.Command(binary, {
          args: ["--id", entry.node_id, "--data-dir", `${dir}/${entry.node_id}`],
          // Configured by environment variables, as in the container image.
          env: cleanEnv({
            RAFTKV_CLUSTER_CONFIG_PATH: `${dir}/cluster.config.json`,
            RAFTKV_LISTEN_HOST: "127.0.0.1",
            RAFTKV_ELECTION_TIMEOUT: "300ms",
            RAFTKV_HEARTBEAT: "50ms",
          }),
          clearEnv: true,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        children.push(child);
        output[i] = [];
        for (const stream of [child.stdout, child.stderr]) {
          pumps.push(
            stream.pipeThrough(new TextDecoderStream()).pipeTo(
              new WritableStream({ write: (chunk) => void output[i]!.push(chunk) }),
            ).catch(() => {}),
          );
        }
      }
      const api = entries.map((entry) => entry.api_url);
      await waitFor(async () => {
        const answers = await Promise.all(api.map((url) => httpRequest(`${url}/ready`, "GET")));
        return answers.every((answer) => answer.status === 200);
      }, { deadlineMs: 30_000, message: () => `every node to be ready\n${logs()}` });

      const health = await run(binary, ["healthcheck", "--url", `${api[0]}/health`]);
      assert.equal(health.code, 0, health.stderr);

      const put = await httpRequest(`${api[0]}/v1/data`, "POST", { k: "a", v: "1" });
      assert.equal(put.status, 200, put.text);
      const got = await httpRequest(`${api[1]}/v1/data/a`, "GET");
      const { k, v } = got.json as { k: string; v: string };
      assert.deepEqual({ k, v }, { k: "a", v: "1" });
      const deleted = await httpRequest(`${api[2]}/v1/data/a`, "DELETE");
      assert.equal(deleted.status, 200, deleted.text);
      const gone = await httpRequest(`${api[0]}/v1/data/a`, "GET");
      assert.equal(gone.status, 404, gone.text);
      // The dashboard's files are embedded in the binary.
      const page = await httpRequest(`${api[1]}/ui/`, "GET");
      assert.equal(page.status, 200, page.text);
      assert.match(page.text, /<script type="module" src="app\.js">/);
      const script = await httpRequest(`${api[1]}/ui/app.js`, "GET");
      assert.match(script.text, /v1\/cluster/);

      // The image's STOPSIGNAL: every node stops cleanly within 10 seconds.
      for (const child of children) child.kill("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const statuses = await Promise.race([
        Promise.all(children.map((child) => child.status)),
        new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), 10_000)),
      ]);
      clearTimeout(timer);
      assert.ok(statuses !== null, `a node did not stop within 10 s of SIGTERM\n${logs()}`);
      assert.deepEqual(statuses.map((status) => status.code), [0, 0, 0], logs());
    } finally {
      for (const child of children) {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already exited.
        }
      }
      await Promise.all(children.map((child) => child.status));
      await Promise.all(pumps);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
