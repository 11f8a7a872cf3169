import assert from "node:assert/strict";
import { join } from "node:path";
import { mountLoopDisk } from "./loop_disk.ts";

const SKIP = Deno.build.os !== "linux"
  ? `loop devices need Linux, not ${Deno.build.os}`
  : Deno.uid() !== 0
  ? `mounting needs root (uid is ${Deno.uid()})`
  : null;

Deno.test({
  name: "a loop disk fails every operation with EIO, and comes back with what was synced" +
    (SKIP === null ? "" : ` (skipped: ${SKIP})`),
  ignore: SKIP !== null,
  async fn(t) {
    const root = await Deno.makeTempDir({ prefix: "raftkv-loop-disk-" });
    const dir = join(root, "mnt");
    await Deno.mkdir(dir);
    const disk = await mountLoopDisk(dir, join(root, "disk.img"), 16);
    if (typeof disk === "string") {
      await t.step({ name: `skipped: ${disk}`, ignore: true, fn() {} });
      await Deno.remove(root, { recursive: true });
      return;
    }
    try {
      const path = join(dir, "file");
      const file = await Deno.open(path, { write: true, create: true, append: true });
      await file.write(new TextEncoder().encode("synced"));
      await file.sync();
      await file.write(new TextEncoder().encode(" and not"));
      disk.fail();
      const eio = (e: unknown) => (e as { code?: string }).code === "EIO";
      await assert.rejects(file.write(new Uint8Array(1)), eio);
      await assert.rejects(file.sync(), eio);
      await assert.rejects(Deno.readFile(path), eio);
      await assert.rejects(Deno.writeFile(join(dir, "other"), new Uint8Array(1)), eio);
      file.close();
      await disk.replace();
      // What was synced is there; the write after it may or may not have reached the disk.
      const back = await Deno.readTextFile(path);
      assert.ok(back === "synced" || back === "synced and not", back);
    } finally {
      await disk.remove();
      await Deno.remove(root, { recursive: true });
    }
  },
});
