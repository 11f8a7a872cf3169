import assert from "node:assert/strict";
import { CorruptFileError, isNoSpace, WalCorruptionError } from "./errors.ts";

Deno.test("CorruptFileError names the file and keeps the cause", () => {
  const cause = new SyntaxError("bad");
  const error = new CorruptFileError("data/raft-state.json", "not valid JSON", { cause });
  assert.equal(error.name, "CorruptFileError");
  assert.equal(error.message, '"data/raft-state.json" is corrupt: not valid JSON');
  assert.equal(error.path, "data/raft-state.json");
  assert.equal(error.reason, "not valid JSON");
  assert.equal(error.cause, cause);
});

Deno.test("WalCorruptionError names the segment and the offset and is a CorruptFileError", () => {
  const error = new WalCorruptionError("wal/a.wal", 161, "record header checksum mismatch");
  assert.ok(error instanceof CorruptFileError);
  assert.equal(error.name, "WalCorruptionError");
  assert.equal(
    error.message,
    'WAL segment "wal/a.wal" is corrupt at byte offset 161: record header checksum mismatch',
  );
  assert.equal(error.path, "wal/a.wal");
  assert.equal(error.offset, 161);
});

Deno.test("isNoSpace recognises a full disk and a used-up quota, and nothing else", async () => {
  const coded = (message: string, code: string) => Object.assign(new Error(message), { code });
  assert.ok(isNoSpace(coded("No space left on device (os error 28)", "ENOSPC")));
  assert.ok(isNoSpace(coded("Disk quota exceeded (os error 122)", "EDQUOT")));
  assert.ok(!isNoSpace(new Error("wrapped", { cause: coded("full", "ENOSPC") })));
  assert.ok(!isNoSpace(coded("Input/output error (os error 5)", "EIO")));
  assert.ok(!isNoSpace(new Deno.errors.WriteZero("write accepted 0 of 4 bytes")));
  assert.ok(!isNoSpace("ENOSPC"));
  assert.ok(!isNoSpace(null));
  // What Deno really throws: a write to a file that cannot grow (only where /dev/full exists).
  let full: Deno.FsFile | undefined;
  try {
    full = await Deno.open("/dev/full", { write: true });
  } catch {
    return;
  }
  try {
    await assert.rejects(full.write(new Uint8Array(1)), (e: unknown) => isNoSpace(e));
  } finally {
    full.close();
  }
});
