import assert from "node:assert/strict";
import { entriesWithTerms, TestCluster } from "../../testing/raft_cluster.ts";
import { NotLeaderError } from "./errors.ts";
import { MAX_PEER_PENDING_READS, RaftCore } from "./raft.ts";
import { seededRandom } from "./rand.ts";
import { MAX_TERM, type Message, message, MessageType, NONE } from "./types.ts";

const THREE = ["n1", "n2", "n3"];
const FIVE = ["n1", "n2", "n3", "n4", "n5"];

Deno.test("a single node elects itself and commits its proposals once persisted", () => {
  const core = new RaftCore({ id: "a", voters: ["a"], random: seededRandom(1) });
  core.campaign();
  assert.equal(core.role, "leader");
  assert.equal(core.term, 1);
  const rd1 = core.ready();
  assert.deepEqual(rd1.hardState, { term: 1, vote: "a", commit: 0 });
  assert.equal(rd1.entries.length, 1); // the no-op
  assert.equal(rd1.committedEntries.length, 0, "nothing commits before it is durable");
  core.persisted(1, 1);
  const { index } = core.propose(new TextEncoder().encode("x"));
  assert.equal(index, 2);
  const rd2 = core.ready();
  assert.equal(rd2.committedEntries.length, 1);
  assert.equal(rd2.entries.length, 1);
  core.persisted(2, 1);
  const rd3 = core.ready();
  assert.deepEqual(rd3.committedEntries.map((e) => e.index), [2]);
});

Deno.test("three nodes elect exactly one leader and replicate to all", () => {
  for (let seed = 1; seed <= 20; seed++) {
    const c = new TestCluster(THREE, seed);
    const leader = c.electLeader();
    assert.equal(c.leaders().length, 1, `seed ${seed}`);
    for (let i = 0; i < 5; i++) c.propose(leader, `v${i}`);
    c.tick(2);
    for (const id of THREE) {
      assert.deepEqual(c.appliedText(id), ["v0", "v1", "v2", "v3", "v4"], `seed ${seed} ${id}`);
    }
  }
});

Deno.test("proposals on a follower fail with a leader hint", () => {
  const c = new TestCluster(THREE, 3);
  const leader = c.electLeader();
  c.tick(1);
  const follower = THREE.find((id) => id !== leader.id)!;
  assert.throws(
    () => c.node(follower).propose(new Uint8Array([1])),
    (e: unknown) => e instanceof NotLeaderError && e.leader === leader.id,
  );
});

Deno.test("a vote is only sent after the hard state recording it", () => {
  const c = new TestCluster(THREE, 4);
  const n1 = c.node("n1");
  n1.campaign(); // pre-vote round
  const pre = n1.ready();
  assert.equal(pre.hardState, null, "a pre-vote changes no durable state");
  const n2 = c.node("n2");
  for (const m of pre.persistedMessages.filter((m) => m.to === "n2")) n2.step(m);
  const preResp = n2.ready();
  assert.equal(preResp.hardState, null, "granting a pre-vote changes no durable state");
  for (const m of preResp.persistedMessages) n1.step(m);
  const vote = n1.ready();
  assert.equal(vote.hardState?.term, 1);
  assert.equal(vote.hardState?.vote, "n1");
  assert.equal(vote.messages.length, 0, "vote requests wait for the candidate's own vote");
  for (const m of vote.persistedMessages.filter((m) => m.to === "n2")) n2.step(m);
  const granted = n2.ready();
  assert.deepEqual(granted.hardState, { term: 1, vote: "n1", commit: 0 });
  assert.equal(granted.messages.length, 0);
  assert.equal(granted.persistedMessages[0]?.type, MessageType.VoteResp);
  assert.equal(granted.persistedMessages[0]?.reject, false);
});

Deno.test("a node does not vote twice in one term", () => {
  const core = new RaftCore({ id: "n3", voters: THREE, random: seededRandom(1) });
  const vote = (from: string): Message =>
    message({ type: MessageType.Vote, from, to: "n3", term: 5 });
  core.step(vote("n1"));
  core.step(vote("n2"));
  const rd = core.ready();
  assert.deepEqual(
    rd.persistedMessages.map((m) => [m.to, m.reject]),
    [["n1", false], ["n2", true]],
  );
});

Deno.test("a candidate whose log is behind is refused votes", () => {
  const c = new TestCluster(THREE, 5, {
    n1: { terms: [1] },
    n2: { terms: [1, 2] },
    n3: { terms: [1, 2] },
  });
  c.node("n1").campaign();
  c.stabilize();
  assert.notEqual(c.node("n1").role, "leader");
  // The refusals teach n1 the current term, but nobody's term was raised by the attempt.
  for (const id of THREE) assert.equal(c.node(id).term, 2, id);
});

Deno.test("after the leader crashes a new leader keeps every committed entry", () => {
  for (let seed = 1; seed <= 20; seed++) {
    const c = new TestCluster(FIVE, seed);
    const first = c.electLeader();
    for (let i = 0; i < 10; i++) c.propose(first, `a${i}`);
    c.down.add(first.id);
    const second = c.electLeader();
    assert.notEqual(second.id, first.id);
    assert.ok(second.term > first.term);
    for (let i = 0; i < 5; i++) c.propose(second, `b${i}`);
    c.tick(2);
    c.down.delete(first.id);
    c.tick(30);
    const expected = [...Array(10).keys()].map((i) => `a${i}`).concat(
      [...Array(5).keys()].map((i) => `b${i}`),
    );
    for (const id of FIVE) assert.deepEqual(c.appliedText(id), expected, `seed ${seed} ${id}`);
  }
});

Deno.test("a leader that cannot reach a quorum steps down within an election timeout", () => {
  const c = new TestCluster(THREE, 6);
  const leader = c.electLeader();
  const others = THREE.filter((id) => id !== leader.id);
  c.filter = (m) => m.from !== leader.id && m.to !== leader.id;
  let ticks = 0;
  while (leader.role === "leader") {
    c.tick();
    ticks++;
    assert.ok(ticks <= 20, "leader still leads after two election timeouts");
  }
  assert.ok(ticks <= 10 + 1, `stepped down after ${ticks} ticks (election timeout is 10)`);
  // The majority side elects a new leader meanwhile.
  const next = c.electLeader();
  assert.ok(others.includes(next.id));
});

Deno.test("a leader told to step down becomes a follower and another node leads a later term", () => {
  const c = new TestCluster(THREE, 11);
  const leader = c.electLeader();
  for (let i = 0; i < 5; i++) c.propose(leader, `a${i}`);
  const term = leader.term;
  const follower = THREE.find((id) => id !== leader.id)!;
  c.node(follower).stepDown(); // not a leader: nothing happens
  assert.equal(c.node(follower).role, "follower");
  assert.equal(c.node(follower).leader, leader.id);

  leader.stepDown();
  assert.equal(leader.role, "follower");
  assert.equal(leader.term, term);
  assert.equal(leader.leader, NONE);
  assert.throws(() => leader.propose(new TextEncoder().encode("x")), NotLeaderError);
  const rd = leader.ready();
  assert.deepEqual(rd.softState, { role: "follower", leader: NONE });
  assert.equal(rd.hardState, null, "term and vote are unchanged: nothing to persist");
  c.stabilize();

  // With the old leader's pre-votes and votes lost (as a node that cannot persist holds them),
  // the other two elect one of themselves in a later term and keep every committed entry.
  c.filter = (m) => m.from !== leader.id;
  const next = c.electLeader();
  assert.notEqual(next.id, leader.id);
  assert.ok(next.term > term);
  c.propose(next, "b0");
  c.filter = () => true;
  c.tick(5);
  assert.equal(leader.leader, next.id);
  for (const id of THREE) {
    assert.deepEqual(c.appliedText(id), ["a0", "a1", "a2", "a3", "a4", "b0"], id);
  }
});

Deno.test("the minority side of a partition cannot commit, and its entries are discarded on heal", () => {
  const c = new TestCluster(FIVE, 7);
  const old = c.electLeader();
  c.propose(old, "before");
  const minority = new Set([old.id, FIVE.find((id) => id !== old.id)!]);
  c.filter = (m) => minority.has(m.from) === minority.has(m.to);
  // The old leader accepts a proposal it can never commit.
  old.propose(new TextEncoder().encode("lost"));
  c.stabilize();
  assert.ok(!c.appliedText(old.id).includes("lost"));
  // The majority elects a leader and commits.
  c.tick(25);
  const majorityLeader = c.leaders().find((l) => !minority.has(l.id));
  assert.ok(majorityLeader, "the majority elected a leader");
  c.propose(majorityLeader, "after");
  c.filter = () => true;
  c.tick(30);
  for (const id of FIVE) {
    assert.deepEqual(c.appliedText(id), ["before", "after"], id);
  }
});

Deno.test("a node rejoining after a partition does not depose a healthy leader (PreVote)", () => {
  const c = new TestCluster(THREE, 8);
  const leader = c.electLeader();
  const term = leader.term;
  const lonely = THREE.find((id) => id !== leader.id)!;
  c.filter = (m) => m.from !== lonely && m.to !== lonely;
  c.tick(100); // the isolated node keeps timing out
  assert.equal(c.node(lonely).term, term, "pre-votes never raised its term");
  c.filter = () => true;
  c.tick(20);
  assert.equal(leader.role, "leader");
  assert.equal(leader.term, term);
  assert.equal(c.node(lonely).leader, leader.id);
});

Deno.test("without PreVote the same rejoin would disrupt the leader", () => {
  // A control for the test above: it shows the scenario really exercises PreVote.
  const c = new TestCluster(THREE, 8, {}, { preVote: false, checkQuorum: false });
  const leader = c.electLeader();
  const term = leader.term;
  const lonely = THREE.find((id) => id !== leader.id)!;
  c.filter = (m) => m.from !== lonely && m.to !== lonely;
  c.tick(100);
  assert.ok(c.node(lonely).term > term);
  c.filter = () => true;
  for (let i = 0; i < 30 && leader.term === term; i++) c.tick(1);
  assert.ok(leader.term > term, "the old leader was pushed into a new term");
});

Deno.test("Figure 7: a new leader brings every follower's log in line with its own", () => {
  const ids = ["L", "a", "b", "c", "d", "e", "f"];
  const c = new TestCluster(ids, 9, {
    L: { terms: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6], hardState: { term: 7, vote: "", commit: 0 } },
    a: { terms: [1, 1, 1, 4, 4, 5, 5, 6, 6] },
    b: { terms: [1, 1, 1, 4] },
    c: { terms: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6] },
    d: { terms: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], hardState: { term: 7, vote: "", commit: 0 } },
    e: { terms: [1, 1, 1, 4, 4, 4, 4] },
    f: { terms: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3] },
  });
  const leader = c.node("L");
  c.filter = (m) =>
    !(m.type === MessageType.Vote || m.type === MessageType.PreVote) || m.from === "L";
  // Restarted nodes honour a possible old lease for one election timeout, then L wins.
  for (let i = 0; i < 60 && leader.role !== "leader"; i++) c.tick();
  assert.equal(leader.role, "leader");
  assert.equal(leader.term, 8);
  c.propose(leader, "x");
  c.tick(3);
  const expected = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 8, 8];
  for (const id of ids) assert.deepEqual(c.terms(id), expected, `log of ${id}`);
});

Deno.test("Figure 8: a leader never commits an earlier term's entry by counting replicas", () => {
  const c = new TestCluster(FIVE, 10, {
    n1: { terms: [1, 2], hardState: { term: 3, vote: "", commit: 0 } },
    n2: { terms: [1], hardState: { term: 3, vote: "", commit: 0 } },
    n3: { terms: [1], hardState: { term: 3, vote: "", commit: 0 } },
    n4: { terms: [1], hardState: { term: 3, vote: "", commit: 0 } },
    n5: { terms: [1, 3], hardState: { term: 3, vote: "", commit: 0 } },
  }, { maxMsgBytes: 1 });
  const s1 = c.node("n1");
  // Only S1, S2, S3 can talk; only S1 campaigns; the new term's no-op (index 3) is stripped
  // from every append.
  const side = new Set(["n1", "n2", "n3"]);
  c.filter = (m) => {
    if (!side.has(m.from) || !side.has(m.to)) return false;
    if ((m.type === MessageType.Vote || m.type === MessageType.PreVote) && m.from !== "n1") {
      return false;
    }
    if (m.type !== MessageType.App) return true;
    return { ...m, entries: m.entries.filter((e) => e.index < 3) };
  };
  for (let i = 0; i < 60 && s1.role !== "leader"; i++) c.tick();
  assert.equal(s1.role, "leader");
  assert.equal(s1.term, 4);
  c.tick(3);
  // Index 2 (term 2) is now on S1, S2, S3: a majority, yet not committable in term 4.
  assert.deepEqual(c.terms("n2"), [1, 2]);
  assert.deepEqual(c.terms("n3"), [1, 2]);
  assert.equal(s1.log.committed, 0, "committed an entry of an earlier term by counting");
  // S1 crashes before its no-op spreads; S5 (whose last entry has term 3) may win and overwrite.
  c.down.add("n1");
  c.filter = (m) =>
    (m.type !== MessageType.Vote && m.type !== MessageType.PreVote) || m.from === "n5";
  // Once the others' lease on S1 runs out, S5 wins: its last entry (term 3) is the newest.
  for (let i = 0; i < 60 && c.node("n5").role !== "leader"; i++) c.tick();
  assert.equal(c.node("n5").role, "leader");
  c.tick(3);
  for (const id of ["n2", "n3", "n4", "n5"]) {
    assert.deepEqual(c.terms(id), [1, 3, 5], id);
    assert.ok(c.applied.get(id)!.every((e) => !(e.index === 2 && e.term === 2)));
  }
});

Deno.test("a follower rejects an append whose previous entry does not match", () => {
  const f = new RaftCore({
    id: "n2",
    voters: THREE,
    random: seededRandom(1),
    hardState: { term: 3, vote: "", commit: 0 },
    entries: entriesWithTerms([1, 1, 2]),
  });
  f.step(message({
    type: MessageType.App,
    from: "n1",
    to: "n2",
    term: 3,
    logTerm: 3,
    index: 3,
    entries: entriesWithTerms([1, 1, 3, 3]).slice(3),
    commit: 4,
  }));
  const rd = f.ready();
  const resp = rd.persistedMessages[0]!;
  assert.equal(resp.type, MessageType.AppResp);
  assert.equal(resp.reject, true);
  // The hint names the follower's last entry at or below the leader's term, with its term, so
  // the leader can skip the whole diverging term 2 in one step.
  assert.equal(resp.rejectHint, 3);
  assert.equal(resp.logTerm, 2);
  assert.equal(f.log.lastIndex(), 3, "nothing appended");
  assert.equal(f.log.committed, 0, "nothing committed");
});

Deno.test("a follower never commits past what the append proved it matches", () => {
  const f = new RaftCore({ id: "n2", voters: THREE, random: seededRandom(1) });
  f.step(message({
    type: MessageType.App,
    from: "n1",
    to: "n2",
    term: 1,
    entries: entriesWithTerms([1, 1]),
    commit: 50,
  }));
  assert.equal(f.log.committed, 2);
});

/** A follower "n2" at term 2 whose entries 1..3 (terms 1, 1, 2) are committed up to `commit`. */
function _committedFollower(commit = 2): RaftCore {
  return new RaftCore({
    id: "n2",
    voters: THREE,
    random: seededRandom(1),
    hardState: { term: 2, vote: "", commit },
    entries: entriesWithTerms([1, 1, 2]),
  });
}

/** What a core exposes that a refused message must leave unchanged. */
function _observable(core: RaftCore) {
  const log = core.log;
  return {
    term: core.term,
    vote: core.vote,
    leader: core.leader,
    role: core.role,
    electionElapsed: core.electionElapsed,
    entries: log.entries.map((e) => `${e.index}@${e.term}`),
    committed: log.committed,
    hasReady: core.hasReady(),
  };
}

Deno.test("an append that conflicts with committed entries is refused, without throwing, and changes nothing", () => {
  const f = _committedFollower();
  f.ready();
  const before = _observable(f);
  // Entry 2 is committed with term 1; this "leader" of term 3 says it has term 3.
  const bad = message({
    type: MessageType.App,
    from: "n1",
    to: "n2",
    term: 3,
    logTerm: 1,
    index: 1,
    entries: entriesWithTerms([1, 3, 3]).slice(1),
    commit: 3,
  });
  const refused = f.step(bad);
  assert.match(
    refused ?? "",
    /App from "n1" in term 3: disagrees with the entry at 2, at or below the commit index 2/,
  );
  assert.deepEqual(_observable(f), before);
  // The same through the previous entry (index 2 is committed with term 1, not 2) and below the
  // commit index (the early "already committed" answer must not hide the conflict).
  assert.match(f.step({ ...bad, index: 2, logTerm: 2, entries: [] }) ?? "", /entry at 2/);
  assert.match(
    f.step({ ...bad, index: 0, logTerm: 0, entries: entriesWithTerms([2]) }) ?? "",
    /entry at 1/,
  );
  assert.deepEqual(_observable(f), before);
  // The log itself refuses such an append by returning null, not by throwing.
  assert.equal(f.log.maybeAppend(0, entriesWithTerms([1, 2])), null);
  assert.deepEqual(_observable(f), before);
  // A stale leader (an earlier term) may disagree with committed entries: it is answered, not
  // refused, as Raft says.
  assert.equal(f.step({ ...bad, term: 1 }), null);
  assert.equal(f.ready().persistedMessages[0]?.type, MessageType.AppResp);
});

Deno.test("an append whose entries do not follow its index is refused and changes nothing", () => {
  const f = _committedFollower(0);
  f.ready();
  const before = _observable(f);
  const gap = message({
    type: MessageType.App,
    from: "n1",
    to: "n2",
    term: 2,
    logTerm: 2,
    index: 3,
    entries: entriesWithTerms([1, 1, 2, 2, 2]).slice(4),
  });
  assert.match(f.step(gap) ?? "", /entry 5 is not at index 4/);
  assert.deepEqual(_observable(f), before);
});

Deno.test("messages from this node or above MAX_TERM are refused and change nothing", () => {
  const f = _committedFollower();
  f.ready();
  const before = _observable(f);
  const hb = (from: string, term: number) =>
    message({ type: MessageType.Heartbeat, from, to: "n2", term, commit: 3 });
  // A sender outside the configuration is not refused by the core (its configuration may be
  // newer); the peer validator at the transport's edge keeps unknown nodes out.
  assert.match(f.step(hb("n2", 3)) ?? "", /the sender is this node itself/);
  assert.match(f.step(hb("n1", MAX_TERM + 1)) ?? "", new RegExp(`term ${MAX_TERM + 1} is above`));
  assert.match(f.step(hb("n1", Number.MAX_SAFE_INTEGER)) ?? "", /is above/);
  assert.deepEqual(_observable(f), before);
  assert.equal(f.step(hb("n1", MAX_TERM)), null, "MAX_TERM itself is a valid term");
  assert.equal(f.term, MAX_TERM);
});

Deno.test("a second leader in one term, or a TimeoutNow or read index answer from a non-leader, is refused", () => {
  const f = _committedFollower();
  assert.equal(
    f.step(message({ type: MessageType.Heartbeat, from: "n1", to: "n2", term: 3 })),
    null,
  );
  assert.equal(f.leader, "n1");
  f.ready();
  const before = _observable(f);
  for (const type of [MessageType.App, MessageType.Heartbeat, MessageType.Snap]) {
    const m = message({ type, from: "n3", to: "n2", term: 3, index: 3, logTerm: 2 });
    assert.match(f.step(m) ?? "", /"n1" already leads term 3/);
  }
  const timeout = message({ type: MessageType.TimeoutNow, from: "n3", to: "n2", term: 3 });
  assert.match(f.step(timeout) ?? "", /only the leader of term 3 may send it/);
  assert.deepEqual(_observable(f), before);
  // A read index answer, too, comes only from the leader: another node cannot make a follower
  // serve a read at an index of its choosing.
  f.readIndex(4);
  const sent = f.ready().messages;
  assert.deepEqual(sent.map((m) => [m.type, m.to, m.context]), [[MessageType.ReadIndex, "n1", 4]]);
  const answer = (from: string) =>
    message({ type: MessageType.ReadIndexResp, from, to: "n2", term: 3, index: 1, context: 4 });
  assert.match(f.step(answer("n3")) ?? "", /only the leader of term 3 may send it/);
  assert.equal(f.hasReady(), false);
  assert.equal(f.step(answer("n1")), null);
  assert.deepEqual(f.ready().readStates, [{ id: 4, index: 1 }]);
  // A repeated answer (a duplicate, or one to a request sent again) is ignored.
  assert.equal(f.step(answer("n1")), null);
  assert.equal(f.hasReady(), false);
});

Deno.test("a leader refuses an append answer beyond its log and a heartbeat answer for a round it never sent", () => {
  const c = new TestCluster(THREE, 5);
  const leader = c.electLeader();
  c.tick(1);
  const follower = THREE.find((id) => id !== leader.id)!;
  const before = _observable(leader);
  const last = leader.log.lastIndex();
  const resp = (type: MessageType, fields: Partial<Message>) =>
    message({ type, from: follower, to: leader.id, term: leader.term, ...fields });
  assert.match(
    leader.step(resp(MessageType.AppResp, { index: last + 1 })) ?? "",
    new RegExp(`index ${last + 1} is beyond the last index ${last}`),
  );
  assert.match(
    leader.step(resp(MessageType.HeartbeatResp, { context: 1e9 })) ?? "",
    /read round 1000000000 was never sent/,
  );
  assert.deepEqual(_observable(leader), before);
  assert.equal(leader.step(resp(MessageType.AppResp, { index: last })), null);
});

Deno.test("a node at MAX_TERM does not campaign or crash on tick: it stays a follower", () => {
  const core = new RaftCore({
    id: "n1",
    voters: THREE,
    random: seededRandom(1),
    hardState: { term: MAX_TERM, vote: "", commit: 0 },
  });
  for (let i = 0; i < 100; i++) core.tick();
  core.campaign();
  assert.equal(core.role, "follower");
  assert.equal(core.term, MAX_TERM);
  assert.ok(core.electionsRefused >= 5, `only ${core.electionsRefused} elections refused`);
  const rd = core.ready();
  assert.deepEqual([...rd.messages, ...rd.persistedMessages], []);
  // One below, it may still campaign once (reaching MAX_TERM) and then stops there.
  const below = new RaftCore({
    id: "n1",
    voters: THREE,
    random: seededRandom(1),
    hardState: { term: MAX_TERM - 1, vote: "", commit: 0 },
    preVote: false,
  });
  for (let i = 0; i < 100; i++) below.tick();
  assert.equal(below.term, MAX_TERM);
  assert.equal(below.role, "follower");
  assert.ok(below.electionsRefused >= 1);
});

Deno.test("a follower that already holds a snapshot's entries acknowledges only the snapshot's index", () => {
  // n2 holds 1..3 (terms 1, 1, 2), commit 0; the leader of term 3 snapshots at 2 (term 1).
  const f = _committedFollower(0);
  f.ready();
  const snap = message({
    type: MessageType.Snap,
    from: "n1",
    to: "n2",
    term: 3,
    snapshot: { index: 2, term: 1, voters: THREE },
  });
  assert.equal(f.step(snap), null);
  const ack = f.ready().persistedMessages.find((m) => m.type === MessageType.AppResp)!;
  // Entry 3 (term 2) may not be the leader's entry 3: claiming it would let the leader count a
  // replica it does not have.
  assert.equal(ack.index, 2);
  assert.equal(f.log.committed, 2);
});

Deno.test("a read is confirmed only after a quorum answers the leader's heartbeat", () => {
  const c = new TestCluster(THREE, 11);
  const leader = c.electLeader();
  c.propose(leader, "w");
  c.tick(1);
  const followers = THREE.filter((id) => id !== leader.id);
  c.filter = (m) => !(m.type === MessageType.HeartbeatResp);
  leader.readIndex(7);
  c.stabilize();
  const none = leader.ready();
  assert.equal(none.readStates.length, 0, "confirmed without any answer");
  c.filter = (m) => !(m.type === MessageType.HeartbeatResp && m.from === followers[1]);
  leader.readIndex(8);
  // Capture the ready produced while delivering.
  let states: number[] = [];
  const orig = leader.ready.bind(leader);
  leader.ready = () => {
    const rd = orig();
    states = states.concat(rd.readStates.map((r) => r.id));
    return rd;
  };
  // Read 8 arrived while read 7's round, sent in this tick, is unconfirmed: it shares the next
  // round (no broadcast of its own), which the next heartbeat carries.
  c.stabilize();
  assert.deepEqual(states, []);
  c.tick(1);
  assert.deepEqual(states, [7, 8]);
});

Deno.test("a deposed leader's pending reads are never confirmed", () => {
  const c = new TestCluster(THREE, 12);
  const leader = c.electLeader();
  c.tick(1);
  c.filter = (m) => m.from !== leader.id && m.to !== leader.id;
  leader.readIndex(1);
  let confirmed = 0;
  const orig = leader.ready.bind(leader);
  leader.ready = () => {
    const rd = orig();
    confirmed += rd.readStates.length;
    return rd;
  };
  c.tick(30);
  c.filter = () => true;
  c.tick(10);
  assert.equal(confirmed, 0);
  assert.notEqual(leader.role, "leader");
});

Deno.test("reads wait until the new leader has committed an entry of its term", () => {
  const core = new RaftCore({ id: "a", voters: ["a"], random: seededRandom(1) });
  core.campaign();
  core.readIndex(1);
  const rd = core.ready();
  assert.equal(rd.readStates.length, 0);
  core.persisted(1, 1);
  const rd2 = core.ready();
  assert.deepEqual(rd2.readStates, [{ id: 1, index: 1 }]);
});

Deno.test("replication pipelines many appends without waiting for each answer", () => {
  const c = new TestCluster(THREE, 13);
  const leader = c.electLeader();
  c.tick(1);
  const before = c.sent.length;
  c.filter = () => false; // hold everything: nothing is answered
  for (let i = 0; i < 5; i++) {
    leader.propose(new TextEncoder().encode(`p${i}`));
    c.flushReadies();
  }
  const apps = c.sent.slice(before).filter((m) => m.type === MessageType.App);
  assert.equal(apps.length, 10, "one append per proposal batch per follower, all in flight");
  c.filter = () => true;
  c.tick(3);
  for (const id of THREE) assert.equal(c.appliedText(id).length, 5);
});

Deno.test("lost appends are recovered by probing", () => {
  const c = new TestCluster(THREE, 14, {}, { maxInflight: 4 });
  const leader = c.electLeader();
  c.tick(1);
  let dropped = 0;
  c.filter = (m) => {
    if (m.type === MessageType.App && m.entries.length > 0 && dropped < 6) {
      dropped++;
      return false;
    }
    return true;
  };
  for (let i = 0; i < 20; i++) {
    leader.propose(new TextEncoder().encode(`q${i}`));
    c.flushReadies();
  }
  c.stabilize();
  c.tick(10);
  for (const id of THREE) assert.equal(c.appliedText(id).length, 20, id);
});

Deno.test("a restarted node refuses votes for one election timeout (it may have backed a lease)", () => {
  const voter = new RaftCore({
    id: "n2",
    voters: THREE,
    random: seededRandom(1),
    hardState: { term: 3, vote: "n1", commit: 0 },
  });
  const ask = (): Message =>
    message({
      type: MessageType.PreVote,
      from: "n3",
      to: "n2",
      term: 4,
    });
  voter.step(ask());
  assert.equal(voter.ready().persistedMessages.length, 0, "answered inside the startup lease");
  for (let i = 0; i < 10; i++) voter.tick();
  voter.step(ask());
  const answers = voter.ready().persistedMessages.filter((m) => m.type === MessageType.PreVoteResp);
  assert.equal(answers.length, 1);
  assert.equal(answers[0]!.reject, false);
});

Deno.test("a lease read holds only while a quorum answered recently", () => {
  const c = new TestCluster(THREE, 15);
  const leader = c.electLeader();
  c.tick(2);
  assert.equal(leader.leaseRead(), leader.log.committed, "a fresh quorum answer gives a lease");
  c.filter = (m) => m.type !== MessageType.HeartbeatResp && m.type !== MessageType.AppResp;
  let ticks = 0;
  while (leader.leaseRead() !== null) {
    c.tick();
    ticks++;
    assert.ok(ticks < 10, "the lease outlived the election timeout");
  }
  // The lease ends before any follower could vote for someone else (election timeout 10).
  assert.ok(ticks <= 10 - 2, `lease lasted ${ticks} ticks`);
  const follower = c.node(THREE.find((id) => id !== leader.id)!);
  assert.equal(follower.role, "follower");
  assert.equal(follower.leaseRead(), null, "followers never hold a lease");
});

Deno.test("a follower partitioned while the leader compacts catches up by snapshot", () => {
  const c = new TestCluster(THREE, 16);
  const leader = c.electLeader();
  const lagging = THREE.find((id) => id !== leader.id)!;
  c.propose(leader, "early");
  c.tick(2);
  c.down.add(lagging);
  for (let i = 0; i < 30; i++) c.propose(leader, `w${i}`);
  c.tick(2);
  const snapIndex = c.takeSnapshot(leader.id);
  assert.equal(leader.log.firstIndex(), snapIndex + 1, "the leader's log was compacted");
  for (let i = 30; i < 35; i++) c.propose(leader, `w${i}`);
  c.down.delete(lagging);
  c.tick(10);
  const snaps = c.sent.filter((m) => m.type === MessageType.Snap && m.to === lagging);
  assert.equal(snaps.length, 1, "exactly one snapshot was sent");
  assert.deepEqual(c.appliedText(lagging), c.appliedText(leader.id));
  assert.deepEqual(c.terms(lagging).slice(-5), c.terms(leader.id).slice(-5));
  assert.equal(c.node(lagging).log.committed, leader.log.committed);
});

Deno.test("followers just behind catch up from the entries kept after a snapshot", () => {
  const c = new TestCluster(THREE, 17);
  const leader = c.electLeader();
  const lagging = THREE.find((id) => id !== leader.id)!;
  for (let i = 0; i < 10; i++) c.propose(leader, `early${i}`);
  c.tick(1);
  c.down.add(lagging);
  for (let i = 0; i < 20; i++) c.propose(leader, `w${i}`);
  const match = leader.progress.get(lagging)!.match;
  const snapIndex = c.takeSnapshot(leader.id, match);
  assert.equal(leader.log.firstIndex(), match + 1, "compacted up to what the follower has");
  assert.ok(snapIndex > match + 10);
  c.down.delete(lagging);
  c.tick(10);
  assert.equal(c.sent.filter((m) => m.type === MessageType.Snap).length, 0);
  assert.deepEqual(c.appliedText(lagging), c.appliedText(leader.id));
});

Deno.test("a follower that lost its log is brought back even when no new entry is written", () => {
  const c = new TestCluster(THREE, 18);
  const leader = c.electLeader();
  for (let i = 0; i < 5; i++) c.propose(leader, `w${i}`);
  c.tick(2);
  const wiped = THREE.find((id) => id !== leader.id)!;
  // Replace the follower by a fresh node with nothing on disk.
  c.nodes.set(wiped, new RaftCore({ id: wiped, voters: THREE, random: seededRandom(99) }));
  c.applied.set(wiped, []);
  c.tick(5);
  assert.deepEqual(c.appliedText(wiped), ["w0", "w1", "w2", "w3", "w4"]);
});

Deno.test("a flood of ReadIndex requests costs one heartbeat round and keeps a bounded queue", () => {
  const c = new TestCluster(THREE, 13);
  const leader = c.electLeader();
  c.tick(1);
  const follower = THREE.find((id) => id !== leader.id)!;
  const flood = 10_000;
  for (let id = 1; id <= flood; id++) {
    leader.step(message({
      type: MessageType.ReadIndex,
      from: follower,
      to: leader.id,
      term: leader.term,
      context: id,
    }));
  }
  const rd = leader.ready();
  const heartbeats = rd.messages.filter((m) => m.type === MessageType.Heartbeat);
  assert.equal(heartbeats.length, THREE.length - 1, "one round, not one per request");
  assert.equal(leader.droppedReads, flood - MAX_PEER_PENDING_READS);
  // The round's answers confirm only the newest reads the queue kept.
  const answers: Message[] = [];
  for (const hb of heartbeats) {
    leader.step(message({
      type: MessageType.HeartbeatResp,
      from: hb.to,
      to: leader.id,
      term: leader.term,
      index: leader.log.committed,
      context: hb.context,
    }));
  }
  answers.push(...leader.ready().messages.filter((m) => m.type === MessageType.ReadIndexResp));
  assert.deepEqual(
    answers.map((m) => m.context),
    Array.from(
      { length: MAX_PEER_PENDING_READS },
      (_, i) => flood - MAX_PEER_PENDING_READS + 1 + i,
    ),
  );
  assert.ok(answers.every((m) => m.to === follower && m.index === leader.log.committed));
});
