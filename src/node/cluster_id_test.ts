import assert from "node:assert/strict";
import { bootstrapClusterId, CLUSTER_ID_PATTERN } from "./cluster_id.ts";

const IDS = ["node-1", "node-2", "node-3"];

Deno.test("a new cluster's id is the same on every node given its member ids and token, in any order", () => {
  const id = bootstrapClusterId(IDS, "raftkv");
  assert.match(id, CLUSTER_ID_PATTERN);
  assert.equal(bootstrapClusterId(IDS.toReversed(), "raftkv"), id);
  // Pinned, so that nodes of one version and the next agree on a cluster file's id: the first 16
  // hex digits of the SHA-256 of {"token":"raftkv","members":["node-1","node-2","node-3"]}.
  assert.equal(id, "7ea60ad164fac9c9");
});

Deno.test("another member id or token makes another cluster id", () => {
  const id = bootstrapClusterId(IDS, "raftkv");
  const others = [
    bootstrapClusterId(IDS, "staging"),
    bootstrapClusterId(IDS, ""),
    bootstrapClusterId(IDS.slice(0, 2), "raftkv"),
    bootstrapClusterId([...IDS, "node-4"], "raftkv"),
    bootstrapClusterId(IDS.map((m) => `${m}x`), "raftkv"),
  ];
  for (const other of others) assert.notEqual(other, id);
  assert.equal(new Set(others).size, others.length);
});
