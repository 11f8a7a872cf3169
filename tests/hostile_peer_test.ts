/**
 * Forged and malformed peer messages against a live three-node cluster, sent to the peer port the
 * way an attacker (or a buggy peer) would: built with the project's own codec and posted over
 * HTTP/2. Each must be refused with a 4xx, change nothing on the target (term, data, hard-state
 * file, WAL files, snapshot directory) and leave every node running, and be counted once in the
 * attacked node's `raftkv_peer_refusals_total` under its reason (its scrape checked by
 * `promtool check metrics` when promtool is installed); afterwards every node stops with SIGTERM
 * and starts again on its data.
 */

import assert from "node:assert/strict";
import { contentOf } from "../testing/snapshot_pairs.ts";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { sample, scrapeChecked } from "../testing/prometheus.ts";
import { observeNode as observed } from "../testing/node_state.ts";
import { encodeCommand } from "../src/kv/state_machine.ts";
import {
  type Entry,
  EntryType,
  MAX_TERM,
  type Message,
  message,
  MessageType,
} from "../src/raft/types.ts";
import { encodeSnapshot } from "../src/storage/snapshot_file.ts";
import { encodeMessages } from "../src/transport/codec.ts";
import { H2Client } from "../src/transport/h2_client.ts";
import {
  FROM_HEADER,
  MEMBER_SINCE_HEADER,
  MEMBERS_PATH,
  MESSAGE_HEADER,
  MESSAGES_PATH,
  PEER_REFUSAL_REASONS,
  type PeerRefusalReason,
  SNAPSHOT_PATH,
} from "../src/transport/http_transport.ts";

/** Slower elections than the harness default: an unrelated election would change the terms. */
const NODE_FLAGS = ["--election-timeout", "2000", "--heartbeat", "100"];

/**
 * A node's `raftkv_peer_refusals_total` by reason, from its `GET /metrics`, which passes
 * `promtool check metrics` (when promtool is installed: Debian package `prometheus`).
 */
async function refusals(
  cluster: ProcessCluster,
  id: string,
): Promise<Record<PeerRefusalReason, number>> {
  const samples = await scrapeChecked(cluster, id);
  return Object.fromEntries(
    PEER_REFUSAL_REASONS.map((
      r,
    ) => [r, sample(samples, `raftkv_peer_refusals_total{reason="${r}"}`)]),
  ) as Record<PeerRefusalReason, number>;
}

/** `after` minus `before`, by reason, leaving out the reasons that did not move. */
function increase(
  before: Record<PeerRefusalReason, number>,
  after: Record<PeerRefusalReason, number>,
): Partial<Record<PeerRefusalReason, number>> {
  return Object.fromEntries(
    PEER_REFUSAL_REASONS.filter((r) => after[r] !== before[r]).map((
      r,
    ) => [r, after[r] - before[r]]),
  );
}

interface Forged {
  status: number;
  error: string;
}

/** Posts a forged batch to a node's peer port, claiming to be `from`. */
async function forge(
  client: H2Client,
  cluster: ProcessCluster,
  target: string,
  from: string,
  messages: Message[],
): Promise<Forged> {
  const res = await client.fetch(`${cluster.rpc(target)}${MESSAGES_PATH}`, {
    method: "POST",
    headers: { "content-type": "application/octet-stream", [FROM_HEADER]: from },
    body: encodeMessages(messages),
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, error: await _errorOf(res) };
}

/** Uploads a forged snapshot to a node's peer port, claiming to be `from`. */
async function forgeSnapshot(
  client: H2Client,
  cluster: ProcessCluster,
  target: string,
  from: string,
  msg: Message,
  body: Uint8Array,
): Promise<Forged> {
  const res = await client.fetch(`${cluster.rpc(target)}${SNAPSHOT_PATH}`, {
    method: "POST",
    headers: {
      "content-type": "application/octet-stream",
      [FROM_HEADER]: from,
      [MESSAGE_HEADER]: encodeMessages([msg]).toBase64({
        alphabet: "base64url",
        omitPadding: true,
      }),
    },
    body,
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, error: await _errorOf(res) };
}

async function _errorOf(res: Response): Promise<string> {
  const text = await res.text();
  try {
    return String(JSON.parse(text).error);
  } catch {
    return text;
  }
}

/** A stale (local) read on one node: null when the key is absent there. */
async function staleRead(cluster: ProcessCluster, id: string, key: string): Promise<string | null> {
  const res = await cluster.request(id, "GET", `/v1/data/${key}?consistency=stale`);
  if (res.status === 404) return null;
  assert.equal(res.status, 200, res.text);
  return (res.json as { v: string }).v;
}

function put(index: number, term: number, key: string): Entry {
  return {
    index,
    term,
    type: EntryType.Normal,
    data: encodeCommand({ op: "put", key, value: "forged" }),
  };
}

async function _snapshotBytes(index: number, term: number, voters: string[]): Promise<Uint8Array> {
  const chunks = await Array.fromAsync(
    encodeSnapshot({ index, term, voters, count: 1 }, contentOf([["forged-snap", "forged"]])),
  );
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

Deno.test("forged and malformed peer messages are refused, change nothing and stop no node", async (t) => {
  await using cluster = await startCluster({ size: 3, nodeFlags: NODE_FLAGS });
  const client = new H2Client();
  try {
    const leader = await cluster.waitForLeader(20_000);
    for (let i = 0; i < 5; i++) {
      const res = await cluster.request(leader, "PUT", `/v1/data/real-${i}`, { v: `v${i}` });
      assert.equal(res.status, 200, res.text);
    }
    const ids = cluster.ids;
    const target = ids.find((id) => id !== leader)!;
    // Every node has applied everything: from here on the cluster writes nothing to disk.
    const settled = await observed(cluster, leader);
    await waitFor(async () => {
      const all = await Promise.all(ids.map((id) => cluster.status(id)));
      return all.every((s) => s?.applied_index === settled.commit && s.term === settled.term);
    }, { deadlineMs: 10_000, message: "every node to apply every write" });
    const T = settled.term;
    const before = new Map<string, Awaited<ReturnType<typeof observed>>>();
    for (const id of ids) before.set(id, await observed(cluster, id));
    const last = before.get(target)!.last;
    const commit = before.get(target)!.commit;
    // What the peer handlers refused so far (nothing, in a healthy cluster): each attack below
    // must count once, under its reason, on the node it was sent to.
    const refusedBefore = await refusals(cluster, target);
    const leaderRefusedBefore = await refusals(cluster, leader);
    /** The stranger's requests of the second step (it keeps on for a while). */
    let strangerRequests = 0;

    /** Asserts that nothing observable changed on any node and every node still runs. */
    const unchanged = async (what: string) => {
      for (const id of ids) {
        assert.ok(
          cluster.isRunning(id),
          `${id} stopped after ${what}\n${cluster.formatLogs([id], 40)}`,
        );
        assert.deepEqual(
          await observed(cluster, id),
          before.get(id),
          `${id} changed after ${what}`,
        );
      }
      for (const key of ["forged-key", "forged-snap", "forged-member", "forged-below"]) {
        assert.equal(await staleRead(cluster, target, key), null, `${key} was written (${what})`);
      }
    };

    await t.step("a non-member's append, votes, heartbeat and snapshot get 403", async () => {
      const evil = (type: MessageType, fields: Partial<Message> = {}) =>
        message({ type, from: "evil", to: target, term: T + 5, ...fields });
      const forged: [string, Message][] = [
        [
          "App",
          evil(MessageType.App, {
            index: last,
            logTerm: T,
            entries: [put(last + 1, T + 5, "forged-key")],
            commit: last + 1,
          }),
        ],
        ["Vote", evil(MessageType.Vote, { index: last + 10, logTerm: T + 5 })],
        ["PreVote", evil(MessageType.PreVote, { index: last + 10, logTerm: T + 5 })],
        ["Heartbeat", evil(MessageType.Heartbeat, { commit: last })],
      ];
      for (const [name, msg] of forged) {
        for (const to of [target, leader]) {
          const res = await forge(client, cluster, to, "evil", [{ ...msg, to }]);
          assert.equal(res.status, 403, `${name} to ${to}: ${res.error}`);
          assert.match(res.error, /sender "evil" is not a member/);
        }
      }
      // A member's name in the header does not make a stranger's message acceptable.
      const claimed = await forge(client, cluster, target, leader, [forged[0]![1]]);
      assert.equal(claimed.status, 403, claimed.error);
      assert.match(claimed.error, /claims sender "evil"/);
      const snap = evil(MessageType.Snap, {
        snapshot: { index: last + 100, term: T, voters: ids },
      });
      const upload = await forgeSnapshot(
        client,
        cluster,
        target,
        "evil",
        snap,
        await _snapshotBytes(last + 100, T, ids),
      );
      assert.equal(upload.status, 403, upload.error);
      await unchanged("the non-member's messages");
      await waitFor(
        () =>
          cluster.logs(target).some((l) =>
            l.includes('Refused a peer request with 403 (sender "evil")')
          ),
        { deadlineMs: 5000, message: "the refusal to be logged" },
      );
    });

    await t.step(
      "a stranger claiming a configuration newer than the node's is refused, and makes it ask its peers at most once per election timeout",
      async () => {
        const queries = async () => {
          const r = await cluster.request(target, "GET", "/metrics");
          return Number(/^raftkv_members_queries_total (\d+)/m.exec(r.text)?.[1] ?? "NaN");
        };
        const first = await queries();
        const started = performance.now();
        const hb = message({
          type: MessageType.Heartbeat,
          from: "evil",
          to: target,
          term: T + 5,
          commit: last + 50,
        });
        // Earlier steps' strangers may have had it ask moments ago, so keep on for longer than
        // one election timeout (NODE_FLAGS: 2000 ms): a round must fall inside.
        for (let i = 0; i < 100 || performance.now() - started < 2500; i++) {
          const headers = { [FROM_HEADER]: "evil", [MEMBER_SINCE_HEADER]: String(last + 1000) };
          const sent = await client.fetch(`${cluster.rpc(target)}${MESSAGES_PATH}`, {
            method: "POST",
            headers: { "content-type": "application/octet-stream", ...headers },
            body: encodeMessages([hb]),
            signal: AbortSignal.timeout(5000),
          });
          assert.equal(sent.status, 403, await _errorOf(sent));
          // Nor does it get the node's configuration.
          const asked = await client.fetch(`${cluster.rpc(target)}${MEMBERS_PATH}`, {
            method: "POST",
            headers,
            signal: AbortSignal.timeout(5000),
          });
          assert.equal(asked.status, 403, await _errorOf(asked));
          strangerRequests += 2;
        }
        const elapsed = performance.now() - started;
        const rounds = (await queries()) - first;
        // It does ask (the stranger might be a member added while it was away), but only that.
        assert.ok(
          rounds >= 1 && rounds <= Math.ceil(elapsed / 2000) + 1,
          `${rounds} query rounds in ${elapsed.toFixed(0)} ms`,
        );
        // A member asking gets the committed configuration.
        const res = await client.fetch(`${cluster.rpc(target)}${MEMBERS_PATH}`, {
          method: "POST",
          headers: { [FROM_HEADER]: leader },
          signal: AbortSignal.timeout(5000),
        });
        assert.equal(res.status, 200);
        const conf = await res.json() as { commit: number; members: { node_id: string }[] };
        assert.deepEqual(conf.members.map((m) => m.node_id).sort(), [...ids].sort());
        assert.ok(conf.commit >= commit, JSON.stringify(conf));
        await unchanged("the stranger claiming a newer configuration");
      },
    );

    await t.step(
      "a heartbeat claiming a member with term 2^53-1 gets 400 and the node keeps running",
      async () => {
        for (const term of [Number.MAX_SAFE_INTEGER, MAX_TERM + 1]) {
          const hb = message({
            type: MessageType.Heartbeat,
            from: leader,
            to: target,
            term,
            commit: commit,
          });
          const res = await forge(client, cluster, target, leader, [hb]);
          assert.equal(res.status, 400, res.error);
          assert.match(res.error, new RegExp(`term ${term} is above the limit ${MAX_TERM}`));
        }
        await unchanged("the huge-term heartbeat");
      },
    );

    await t.step(
      "a Snap on the message path, an entry that does not decode and an append below the commit index are refused",
      async () => {
        const snap = message({
          type: MessageType.Snap,
          from: leader,
          to: target,
          term: T,
          snapshot: { index: last + 100, term: T, voters: ids },
        });
        const onMessages = await forge(client, cluster, target, leader, [snap]);
        assert.equal(onMessages.status, 400, onMessages.error);
        assert.match(onMessages.error, /Snap messages are only accepted with a snapshot upload/);

        const garbage = message({
          type: MessageType.App,
          from: leader,
          to: target,
          term: T,
          index: last,
          logTerm: T,
          entries: [{
            index: last + 1,
            term: T,
            type: EntryType.Normal,
            data: new Uint8Array([9, 9, 9, 9, 9]),
          }],
          commit: last + 1,
        });
        const bad = await forge(client, cluster, target, leader, [garbage]);
        assert.equal(bad.status, 400, bad.error);
        assert.match(bad.error, /entry \d+ does not hold a valid command: /);

        // Entry 1 is committed with a term of at most T: claiming term T + 1 for it conflicts.
        const below = message({
          type: MessageType.App,
          from: leader,
          to: target,
          term: T + 1,
          index: 0,
          logTerm: 0,
          entries: [put(1, T + 1, "forged-below")],
          commit: 1,
        });
        const conflict = await forge(client, cluster, target, leader, [below]);
        assert.equal(conflict.status, 409, conflict.error);
        assert.match(conflict.error, /disagrees with the entry at 1, at or below the commit index/);

        // A member's snapshot upload with impossible metadata never reaches the disk either.
        const upload = await forgeSnapshot(client, cluster, target, leader, {
          ...snap,
          snapshot: { index: last + 100, term: T + 1, voters: ids },
        }, await _snapshotBytes(last + 100, T + 1, ids));
        assert.equal(upload.status, 400, upload.error);
        assert.match(
          upload.error,
          new RegExp(`snapshot term ${T + 1} is above the message term ${T}`),
        );

        // A member that does not lead the term cannot take the node's one upload slot (the
        // leader's transfer would wait behind it): refused before its body is read.
        const other = ids.find((id) => id !== leader && id !== target)!;
        const notLeader = await forgeSnapshot(
          client,
          cluster,
          target,
          other,
          { ...snap, from: other },
          await _snapshotBytes(last + 100, T, ids),
        );
        assert.equal(notLeader.status, 409, notLeader.error);
        assert.match(notLeader.error, new RegExp(`the leader of that term is "${leader}"`));
        await unchanged("the malformed messages");
      },
    );

    await t.step(
      "garbage, a batch for another node and an unknown path are refused too, and the attacked node counts every refusal by reason",
      async () => {
        const garbage = await client.fetch(`${cluster.rpc(target)}${MESSAGES_PATH}`, {
          method: "POST",
          headers: { "content-type": "application/octet-stream", [FROM_HEADER]: leader },
          body: new Uint8Array([0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
          signal: AbortSignal.timeout(5000),
        });
        assert.equal(garbage.status, 400, await _errorOf(garbage));
        const other = ids.find((id) => id !== leader && id !== target)!;
        const elsewhere = await forge(client, cluster, target, leader, [
          message({ type: MessageType.Heartbeat, from: leader, to: other, term: T, commit }),
        ]);
        assert.equal(elsewhere.status, 421, elsewhere.error);
        const nowhere = await client.fetch(`${cluster.rpc(target)}/raft/nowhere`, {
          method: "POST",
          headers: { [FROM_HEADER]: leader },
          signal: AbortSignal.timeout(5000),
        });
        assert.equal(nowhere.status, 404, await _errorOf(nowhere));
        await unchanged("the garbage, misaddressed and unknown-path requests");
        // The target: step 1's six requests and the stranger's in step 2 from non-members, the
        // five messages of steps 3 and 4 with fields the validator refuses, step 4's append
        // below the commit index and snapshot from a member that does not lead, and this
        // step's three; the leader: step 1's four messages sent to it.
        assert.deepEqual(increase(refusedBefore, await refusals(cluster, target)), {
          not_member: 6 + strangerRequests,
          invalid: 5,
          conflict: 2,
          malformed: 1,
          misaddressed: 1,
          unknown_path: 1,
        });
        assert.deepEqual(increase(leaderRefusedBefore, await refusals(cluster, leader)), {
          not_member: 4,
        });
      },
    );

    await t.step("every node stops with SIGTERM and starts again on its data", async () => {
      for (const id of ids) {
        assert.equal(await cluster.stop(id), 0, `${id} did not exit cleanly`);
      }
      for (const id of ids) await cluster.start(id);
      await waitFor(async () => {
        const ready = await Promise.all(ids.map((id) => cluster.request(id, "GET", "/ready")));
        return ready.every((r) => r.status === 200);
      }, { deadlineMs: 20_000, message: "every node to be ready after the restart" });
      await waitFor(async () => {
        const values = await Promise.all(ids.map((id) => staleRead(cluster, id, "real-4")));
        return values.every((v) => v === "v4");
      }, { deadlineMs: 10_000, message: "every node to hold the real writes after the restart" });
      for (const id of ids) assert.equal(await staleRead(cluster, id, "forged-key"), null, id);
    });
  } finally {
    client.close();
  }
});
