/**
 * The compile task (`deno task compile`, scripts/compile.ts): its explanation of a `deno compile`
 * that could not get the `denort` runtime, run for real where it needs no network. The compiled
 * binary itself is tested in tests/compiled_test.ts.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import denoJson from "../deno.json" with { type: "json" };
import { classifyCompileFailure, DENORT_UNREACHABLE_MESSAGE } from "./compile.ts";
import { cleanEnv, type CommandOutput, freePort, runCommand } from "../testing/harness.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const HOST = Deno.build.target;

/** Runs the compile script through Deno in the project root with exactly `env`. */
function run(args: string[], env: Record<string, string>): Promise<CommandOutput> {
  return runCommand(Deno.execPath(), args, env, ROOT);
}

// ---- the compile task ---------------------------------------------------------------------------

/** Real `deno compile` 2.9.6 output, captured without network access. */
const SAMPLES = {
  noDns: `Check main.ts
Compile main.ts to dist/raftkv
Download https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip
error: Writing deno compile executable to temporary file 'dist/raftkv.tmp-d49e41e646eb805a'

Caused by:
    0: Setting up base binary.
    1: error sending request for url (https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip): client error (Connect): dns error: failed to lookup address information: Name or service not known
    2: client error (Connect)
    3: dns error
    4: failed to lookup address information: Name or service not known
`,
  refused: `Download https://dl.deno.land/release/v2.9.6/denort-aarch64-apple-darwin.zip
error: Writing deno compile executable to temporary file 'dist/raftkv-aarch64-apple-darwin.tmp-1'

Caused by:
    0: Setting up base binary.
    1: error sending request for url (https://dl.deno.land/release/v2.9.6/denort-aarch64-apple-darwin.zip): client error (Connect): tcp connect error: Connection refused (os error 111)
`,
  missingDenort: `\x1b[0m\x1b[32mCompile\x1b[0m main.ts to dist/raftkv
\x1b[0m\x1b[1m\x1b[31merror\x1b[0m: Writing deno compile executable to temporary file 'dist/raftkv.tmp-5a11'

Caused by:
    0: Could not find denort at '/opt/denort'
    1: No such file or directory (os error 2)
`,
  typeError: `Check main.ts
TS2322 [ERROR]: Type 'string' is not assignable to type 'number'.
error: Type checking failed.
`,
};

Deno.test("compile: classifies a failed denort download and a wrong DENORT_BIN", () => {
  const host = { target: "x86_64-unknown-linux-gnu", hostTarget: "x86_64-unknown-linux-gnu" };
  const context = { ...host, denoVersion: "2.9.6" };
  assert.equal(classifyCompileFailure(SAMPLES.noDns, context), DENORT_UNREACHABLE_MESSAGE);
  assert.equal(classifyCompileFailure(SAMPLES.refused, context), DENORT_UNREACHABLE_MESSAGE);
  assert.match(DENORT_UNREACHABLE_MESSAGE, /dl\.deno\.land.*unreachable.*DENORT_BIN=/);

  const cross = classifyCompileFailure(SAMPLES.refused, {
    ...context,
    target: "aarch64-apple-darwin",
  });
  assert.ok(cross?.startsWith(DENORT_UNREACHABLE_MESSAGE), cross ?? "null");
  assert.match(cross ?? "", /only the host target/);
  assert.match(cross ?? "", /denort-aarch64-apple-darwin\.zip/);

  const missing = classifyCompileFailure(SAMPLES.missingDenort, context);
  assert.match(missing ?? "", /^DENORT_BIN=\/opt\/denort is not a readable file/);
  assert.match(missing ?? "", /Deno 2\.9\.6/);

  assert.equal(classifyCompileFailure(SAMPLES.typeError, context), null);
  assert.equal(classifyCompileFailure("", context), null);
});

Deno.test("compile task: a missing DENORT_BIN file is named in the error", async () => {
  const out = await Deno.makeTempDir({ prefix: "raftkv-compile-" });
  try {
    const denort = `${out}/no-such-denort`;
    const result = await run(
      ["task", "compile", "--out-dir", out],
      cleanEnv({ DENORT_BIN: denort }),
    );
    assert.equal(result.code, 1, result.stderr);
    assert.ok(
      result.stderr.includes(
        `compile: ${HOST} failed: DENORT_BIN=${denort} is not a readable file`,
      ),
      result.stderr,
    );
    assert.deepEqual([...Deno.readDirSync(out)], [], "nothing is left behind");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("compile task: an unreachable dl.deno.land gets the clear message", async () => {
  // A fresh DENO_DIR has no cached denort, and a proxy on a closed port fails the download the
  // same way an unreachable network does, without sending anything off this machine. The task's
  // command runs without `deno task`, which would first try to cache the lockfile's npm packages
  // (the tests' YAML parser) into the fresh DENO_DIR through that proxy.
  const [deno, ...task] = denoJson.tasks.compile.split(" ");
  assert.equal(deno, "deno");
  const dir = await Deno.makeTempDir({ prefix: "raftkv-compile-" });
  try {
    const result = await run(
      [...task, "--out-dir", `${dir}/out`],
      cleanEnv({ DENO_DIR: `${dir}/deno-dir`, HTTPS_PROXY: `http://127.0.0.1:${freePort()}` }),
    );
    assert.equal(result.code, 1, result.stderr);
    assert.ok(
      result.stderr.includes(`compile: ${HOST} failed: ${DENORT_UNREACHABLE_MESSAGE}`),
      result.stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
