import assert from "node:assert/strict";
import type {
  Consistency,
  KvBackend,
  NodeStatus,
  RangeAnswer,
  RangeQuery,
  ReadResult,
} from "./backend.ts";
import { applyDebugFaults } from "./debug_faults.ts";

class _Backend {
  role: NodeStatus["role"] = "follower";
  reads: Consistency[] = [];
  #secret = "private fields still work";

  read(key: string, consistency: Consistency): Promise<ReadResult> {
    this.reads.push(consistency);
    const entry = { key, value: this.#secret, createIndex: 1, modIndex: 1, version: 1 };
    return Promise.resolve({ entry, index: 1 });
  }
  range(_query: RangeQuery, consistency: Consistency): Promise<RangeAnswer> {
    this.reads.push(consistency);
    return Promise.resolve({ entries: [], next: null, count: 0, index: 1 });
  }
  status(): NodeStatus {
    return {
      id: "n1",
      role: this.role,
      term: 1,
      leader: null,
      commit_index: 0,
      applied_index: 0,
      last_index: 0,
      members: [],
      alarms: [],
    };
  }
}

function _setup(staleReads: string | undefined) {
  const backend = new _Backend();
  const warnings: string[] = [];
  const faulty = applyDebugFaults(backend as unknown as KvBackend, { staleReads, reminderMs: 0 }, {
    warn: (line: string) => warnings.push(line),
  });
  return { backend, faulty, warnings };
}

Deno.test("without RAFTKV_DEBUG_STALE_READS=1 the backend is served as it is, silently", () => {
  for (const value of [undefined, "", "0", "true"]) {
    const { backend, faulty, warnings } = _setup(value);
    assert.equal(faulty, backend as unknown as KvBackend);
    assert.deepEqual(warnings, []);
  }
});

Deno.test("the stale-read fault turns a follower's reads into local reads, loudly", async () => {
  const { backend, faulty, warnings } = _setup("1");
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /DEBUG FAULT RAFTKV_DEBUG_STALE_READS=1.*NOT linearizable/);
  const signal = new AbortController().signal;
  const read = await faulty.read("k", "linearizable", signal);
  assert.equal(read.entry?.value, "private fields still work");
  await faulty.read("k", "lease", signal);
  await faulty.read("k", "stale", signal);
  const query = { range: { prefix: "" }, limit: 10, maxChars: 100 };
  await faulty.range(query, "linearizable", signal);
  assert.deepEqual(backend.reads, ["stale", "stale", "stale", "stale"]);
  assert.equal(warnings.length, 4, "a reminder each time the fault acts (reminderMs 0)");
  backend.role = "leader";
  await faulty.read("k", "linearizable", signal);
  await faulty.range(query, "lease", signal);
  assert.deepEqual(backend.reads.slice(-2), ["linearizable", "lease"], "the leader is left alone");
  assert.equal(faulty.status().role, "leader", "other methods are the backend's own");
});
