import assert from "node:assert/strict";
import { CorruptFileError, WalCorruptionError } from "./errors.ts";

Deno.test("CorruptFileError names the file and keeps the cause", () => {
  const cause = new SyntaxError("bad");
  const error = new CorruptFileError("data/raft-state.json", "not valid JSON", { cause });
  assert.equal(error.name, "CorruptFileError");
  assert.equal(error.message, '"data/raft-state.json" is corrupt: not valid JSON');
  assert.equal(error.path, "data/raft-state.json");
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
