import assert from "node:assert/strict";
import { entryJson, writeOutcome } from "./outcome.ts";

const ENTRY = { key: "k", value: "", createIndex: 2, modIndex: 5, version: 3 };

Deno.test("a replayed outcome that did not remember a long value says so in place of the value", async () => {
  const omitted = { ...ENTRY, valueOmitted: true } as const;
  assert.deepEqual(entryJson(omitted), {
    k: "k",
    v_omitted: true,
    create_index: 2,
    mod_index: 5,
    version: 3,
  });
  assert.deepEqual(entryJson({ ...ENTRY, value: "v" }), {
    k: "k",
    v: "v",
    create_index: 2,
    mod_index: 5,
    version: 3,
  });
  const res = writeOutcome(
    { op: "cas_failed", index: 9, key: "k", current: omitted, replayed: true },
    4,
    () => ({}),
  );
  assert.equal(res.status, 412);
  assert.equal(res.headers.get("idempotent-replayed"), "true");
  const body = await res.json();
  assert.deepEqual(body.current, { v_omitted: true, create_index: 2, mod_index: 5, version: 3 });
});
