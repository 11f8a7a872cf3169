import assert from "node:assert/strict";
import { SimClock } from "../../testing/sim_clock.ts";
import { KvStateMachine } from "../kv/state_machine.ts";
import { grantedTtlMs, LeaseTracker, minLeaseTtlMs } from "./lease_tracker.ts";

/** A state machine and a tracker following it, on a simulated clock (election timeout 1000). */
function setup() {
  const clock = new SimClock();
  const kv = new KvStateMachine();
  const tracker = new LeaseTracker(clock, 1000, (id) => kv.lease(id));
  let index = 0;
  const apply = (cmd: Parameters<KvStateMachine["apply"]>[1]) => {
    const r = kv.apply(++index, cmd);
    tracker.applied(r);
    return r;
  };
  return { clock, kv, tracker, apply };
}

Deno.test("a lease is due one TTL after its grant, and a renewal moves that to arrival + TTL", () => {
  const { clock, tracker, apply } = setup();
  apply({ op: "lease_grant", ttlMs: 3000 }); // lease 1
  apply({ op: "put", key: "k", value: "v", lease: { ttlMs: 500 } }); // lease 2, granted by a put
  assert.equal(tracker.remaining(1), 3000);
  assert.equal(tracker.remaining(2), 500);
  clock.advance(500);
  assert.deepEqual(tracker.due(), [2]);
  assert.deepEqual(tracker.due(), [], "a lease being expired is not due twice");
  assert.ok(tracker.isExpiring(2));
  tracker.failed([2]);
  assert.deepEqual(tracker.due(), [2], "a failed expiry is due again");
  // A renewal counted from when it arrived (before the quorum confirmed), never shortening.
  clock.advance(2000);
  tracker.renew(1, 3000, clock.now() - 100);
  assert.equal(tracker.remaining(1), 2900);
  tracker.renew(1, 3000, 0);
  assert.equal(tracker.remaining(1), 2900);
  // The expiry applied: no longer tracked.
  apply({ op: "lease_revoke", ids: [2], reason: "expire" });
  assert.equal(tracker.isExpiring(2), false);
  assert.equal(tracker.size, 1);
});

Deno.test("a new leader gives every lease max(TTL, election timeout) from its promotion", () => {
  const { clock, kv, tracker, apply } = setup();
  apply({ op: "lease_grant", ttlMs: 200 }); // shorter than the election timeout
  apply({ op: "lease_grant", ttlMs: 5000 });
  clock.advance(4000);
  assert.deepEqual(tracker.due(), [1]);
  // Deadlines kept while following are not a leader's to enforce until it takes them over.
  assert.equal(tracker.leadsIn(7), false);
  tracker.promote(kv.leases(), 7);
  assert.equal(tracker.leadsIn(7), true);
  assert.equal(tracker.leadsIn(8), false);
  assert.equal(tracker.isExpiring(1), false);
  assert.equal(tracker.remaining(1), 1000);
  assert.equal(tracker.remaining(2), 5000);
  clock.advance(999);
  assert.deepEqual(tracker.due(), []);
  clock.advance(1);
  assert.deepEqual(tracker.due(), [1]);
  tracker.demote();
  assert.equal(tracker.leadsIn(7), false);
  // After a snapshot: every lease of the state, a full TTL from now.
  tracker.reset(kv.leases());
  assert.equal(tracker.remaining(1), 200);
  assert.equal(tracker.remaining(2), 5000);
});

Deno.test("the minimum TTL is one and a half election timeouts in whole ticks, as etcd's minLeaseTTL", () => {
  assert.equal(minLeaseTtlMs(10, 100), 1500, "the defaults: 1 s election timeout, 100 ms ticks");
  assert.equal(minLeaseTtlMs(6, 50), 450, "the test harness: 300 ms and 50 ms");
  assert.equal(minLeaseTtlMs(3, 100), 400, "floor(4.5) ticks: 4");
  assert.equal(minLeaseTtlMs(2, 10), 30);
  assert.equal(grantedTtlMs(1, 1500), 1500, "raised");
  assert.equal(grantedTtlMs(1499, 1500), 1500);
  assert.equal(grantedTtlMs(1500, 1500), 1500);
  assert.equal(grantedTtlMs(10_000, 1500), 10_000, "longer ones are kept");
});
