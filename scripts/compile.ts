/**
 * Builds raftkv as a single executable with `deno compile`.
 *
 * ```sh
 * deno task compile                 # host target        -> dist/raftkv
 * deno task compile:all             # the four targets   -> dist/raftkv-<target>
 * deno task compile --target aarch64-unknown-linux-gnu --out-dir /tmp/out
 * ```
 *
 * The binary's permissions are baked in: network (it listens and talks to peers whose addresses
 * are only known at run time), read and write (the data directory and the cluster file are only
 * known at run time too, so they cannot be narrowed to paths at compile time), and the
 * environment variables it reads and no others (`PERMISSION_FLAGS` in main.ts).
 *
 * `deno compile` downloads the `denort` runtime of the running Deno version for each target from
 * dl.deno.land (and caches it in `$DENO_DIR/dl`). Without access to it, set `DENORT_BIN` to a
 * `denort` of the same Deno version: `deno compile` then embeds that file for every target, so
 * this script passes `DENORT_BIN` on for the host target only and reports the other targets as
 * needing a download.
 *
 * @module
 */

import { PERMISSION_FLAGS } from "../main.ts";

/** The targets `--all` builds. */
export const TARGETS: readonly string[] = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
];

/** The message printed when `deno compile` could not download the `denort` runtime. */
export const DENORT_UNREACHABLE_MESSAGE =
  "deno compile needs the denort runtime from dl.deno.land, which is unreachable; set " +
  "DENORT_BIN=/path/to/denort (a denort of the same Deno version) and retry";

/** What {@linkcode classifyCompileFailure} knows about the failed run. */
export interface CompileFailureContext {
  /** The target that was being compiled. */
  target: string;
  /** The target of the running Deno. */
  hostTarget: string;
  /** The running Deno's version. */
  denoVersion: string;
}

/**
 * Explains a failed `deno compile` from its output, when the cause is the `denort` runtime:
 * either it could not be downloaded, or `DENORT_BIN` does not point at a readable file.
 *
 * @example Usage
 * ```ts
 * import { classifyCompileFailure, DENORT_UNREACHABLE_MESSAGE } from "./compile.ts";
 *
 * const output = "error sending request for url " +
 *   "(https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip): dns error";
 * const context = {
 *   target: "x86_64-unknown-linux-gnu",
 *   hostTarget: "x86_64-unknown-linux-gnu",
 *   denoVersion: "2.9.6",
 * };
 * console.assert(classifyCompileFailure(output, context) === DENORT_UNREACHABLE_MESSAGE);
 * ```
 *
 * @param output What `deno compile` printed (stderr, or both streams).
 * @param context The target and the running Deno.
 * @returns The message to print, or `null` when the failure has another cause.
 */
export function classifyCompileFailure(
  output: string,
  context: CompileFailureContext,
): string | null {
  // deno colours its output even when piped unless NO_COLOR is set.
  // deno-lint-ignore no-control-regex
  const text = output.replace(/\x1b\[[0-9;]*m/g, "");
  const missing = /Could not find denort at '([^']*)'/.exec(text);
  if (missing !== null) {
    return `DENORT_BIN=${missing[1]} is not a readable file: deno compile uses it as the denort ` +
      `runtime; point DENORT_BIN at a denort of Deno ${context.denoVersion} ` +
      `(${context.hostTarget}), or unset it to download the runtime from dl.deno.land`;
  }
  const download = /dl\.deno\.land|denort-[\w.-]+\.zip/.test(text) &&
    /error sending request|Download|Connect|dns error|timed out|status|certificate|proxy/i.test(
      text,
    );
  if (!download) return null;
  if (context.target === context.hostTarget) return DENORT_UNREACHABLE_MESSAGE;
  return `${DENORT_UNREACHABLE_MESSAGE}. DENORT_BIN serves only the host target ` +
    `(${context.hostTarget}); to build ${context.target} offline, place ` +
    `denort-${context.target}.zip from the Deno ${context.denoVersion} release in ` +
    `$DENO_DIR/dl/release/v${context.denoVersion}/`;
}

/**
 * The `deno compile` arguments for one target.
 *
 * @param target The target triple.
 * @param output The executable to write.
 * @param entry The program. Default `main.ts`.
 * @returns The arguments after the `deno` executable.
 */
export function compileArgs(target: string, output: string, entry = "main.ts"): string[] {
  return ["compile", ...PERMISSION_FLAGS, "--target", target, "--output", output, entry];
}

interface _Options {
  targets: string[];
  outDir: string;
  /** Whether to name the host binary `raftkv` rather than `raftkv-<target>`. */
  plainHostName: boolean;
}

function _parse(args: readonly string[]): _Options | string {
  const targets: string[] = [];
  let outDir = "dist";
  let all = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? "";
    const [name, inline] = arg.includes("=") ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => inline ?? args[++i];
    if (name === "--all") all = true;
    else if (name === "--target") {
      const target = value();
      if (target === undefined || !TARGETS.includes(target)) {
        return `--target needs one of ${TARGETS.join(", ")}`;
      }
      targets.push(target);
    } else if (name === "--out-dir") {
      const dir = value();
      if (dir === undefined || dir === "") return "--out-dir needs a directory";
      outDir = dir;
    } else {
      return `unknown argument ${JSON.stringify(arg)}`;
    }
  }
  if (all) return { targets: [...TARGETS], outDir, plainHostName: false };
  if (targets.length > 0) return { targets, outDir, plainHostName: false };
  return { targets: [Deno.build.target], outDir, plainHostName: true };
}

async function _compile(target: string, output: string): Promise<boolean> {
  const hostTarget = Deno.build.target;
  const options: Deno.CommandOptions = {
    args: compileArgs(target, output),
    env: { NO_COLOR: "1" },
    stdout: "inherit",
    stderr: "piped",
  };
  if (Deno.env.get("DENORT_BIN") !== undefined && target !== hostTarget) {
    console.error(
      `compile: not using DENORT_BIN for ${target}: deno compile would embed it for every ` +
        `target, and it is a runtime for ${hostTarget}`,
    );
    const env = Deno.env.toObject();
    delete env.DENORT_BIN;
    options.env = { ...env, NO_COLOR: "1" };
    options.clearEnv = true;
  }
  console.error(`compile: ${target} -> ${output}`);
  const child = new Deno.Command(Deno.execPath(), options).spawn();
  // Show deno's progress as it comes, and keep it to explain a failure.
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stderr) {
    text += decoder.decode(chunk, { stream: true });
    await Deno.stderr.write(chunk);
  }
  const { code } = await child.status;
  if (code === 0) return true;
  const reason = classifyCompileFailure(text, {
    target,
    hostTarget,
    denoVersion: Deno.version.deno,
  });
  console.error(`compile: ${target} failed${reason === null ? "" : `: ${reason}`}`);
  return false;
}

/**
 * Compiles the requested targets.
 *
 * @param args `[--all | --target <triple>...] [--out-dir <dir>]`.
 * @returns The exit code: 0 when every target compiled, 1 when one failed, 2 on bad usage.
 */
export async function main(args: readonly string[]): Promise<number> {
  const options = _parse(args);
  if (typeof options === "string") {
    console.error(`compile: ${options}`);
    console.error("Usage: compile.ts [--all | --target <triple>...] [--out-dir <dir>]");
    return 2;
  }
  await Deno.mkdir(options.outDir, { recursive: true });
  let failed = 0;
  for (const target of options.targets) {
    const name = options.plainHostName ? "raftkv" : `raftkv-${target}`;
    if (!await _compile(target, `${options.outDir}/${name}`)) failed++;
  }
  return failed === 0 ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
