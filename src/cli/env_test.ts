import assert from "node:assert/strict";

// Revoking is for the whole process: each case runs in a child process of its own.
async function spawnAfter(drop: boolean): Promise<string> {
  const env = new URL("./env.ts", import.meta.url).href;
  const script = `
    import { dropNodePermissions } from ${JSON.stringify(env)};
    if (${drop}) dropNodePermissions();
    try {
      const out = new Deno.Command(Deno.execPath(), { args: ["--version"] }).outputSync();
      console.log(out.success ? "ran" : "failed");
    } catch (e) {
      console.log(e instanceof Error ? e.name : String(e));
    }
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-prompt", "--allow-run", "--allow-read", "--allow-env", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test("a node gives up running programs: after dropNodePermissions a process it starts is refused", async () => {
  assert.equal(await spawnAfter(false), "ran");
  assert.equal(await spawnAfter(true), "NotCapable");
});
