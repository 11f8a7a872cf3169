/**
 * Mutual TLS between peers, with real processes: a three-node cluster whose rpc_urls are
 * `https://` and whose nodes present certificates from one CA (subject CN = node id). It elects a
 * leader and replicates; a client holding node-2's valid certificate that claims to be node-3 is
 * refused with 403; a client with no certificate, or one from another CA (even one naming a
 * member), fails the TLS handshake; a certificate from the cluster CA whose CN is not a member
 * gets 403. None of these change anything on any node. Nodes restarted gracefully or killed
 * come back without taking their peers down.
 */

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { type Certificates, makeCertificates, servedCertificate } from "../testing/certs.ts";
import { parseSamples, promtoolCheck, sample, scrapeChecked } from "../testing/prometheus.ts";
import { type ProcessCluster, startCluster, waitFor } from "../testing/harness.ts";
import { type ObservedState, observeNode } from "../testing/node_state.ts";
import { encodeCommand } from "../src/kv/state_machine.ts";
import { EntryType, type Message, message, MessageType } from "../src/raft/types.ts";
import { encodeMessages } from "../src/transport/codec.ts";
import { H2Client } from "../src/transport/h2_client.ts";
import {
  FROM_HEADER,
  MEMBERS_PATH,
  MESSAGE_HEADER,
  MESSAGES_PATH,
  SNAPSHOT_PATH,
} from "../src/transport/http_transport.ts";

/** Slower elections than the harness default: an unrelated election would change the terms. */
const NODE_FLAGS = ["--election-timeout", "2000", "--heartbeat", "100"];

/** An HTTP/2 client presenting `pair` (or no certificate) and trusting the cluster CA. */
function peerClient(ca: string, pair: { cert: string; key: string } | null): H2Client {
  const read = (path: string) => Deno.readTextFileSync(path);
  return new H2Client({
    tls: {
      ca: read(ca),
      ...(pair === null ? {} : { cert: read(pair.cert), key: read(pair.key) }),
    },
  });
}

interface Answer {
  status: number;
  error: string;
}

/** Posts a batch to `target`'s peer port with `from` in the header. */
async function post(
  client: H2Client,
  cluster: ProcessCluster,
  target: string,
  from: string,
  messages: Message[],
): Promise<Answer> {
  const res = await client.fetch(`${cluster.rpc(target)}${MESSAGES_PATH}`, {
    method: "POST",
    headers: { "content-type": "application/octet-stream", [FROM_HEADER]: from },
    body: encodeMessages(messages),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, error: text === "" ? "" : String(JSON.parse(text).error) };
}

/** Uploads a (tiny, bogus) snapshot to `target`'s peer port with `from` in the header. */
async function upload(
  client: H2Client,
  cluster: ProcessCluster,
  target: string,
  from: string,
  msg: Message,
): Promise<Answer> {
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
    body: new Uint8Array(4096),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, error: text === "" ? "" : String(JSON.parse(text).error) };
}

/** Asks `target` for its committed configuration (`POST /raft/members`) with `from` in the header. */
async function askMembers(
  client: H2Client,
  cluster: ProcessCluster,
  target: string,
  from: string,
): Promise<Answer> {
  const res = await client.fetch(`${cluster.rpc(target)}${MEMBERS_PATH}`, {
    method: "POST",
    headers: { [FROM_HEADER]: from },
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  if (res.status === 200) {
    const ids = (JSON.parse(text) as { members: { node_id: string }[] }).members;
    assert.deepEqual(ids.map((m) => m.node_id).sort(), ["node-1", "node-2", "node-3"]);
    return { status: 200, error: "" };
  }
  return { status: res.status, error: text === "" ? "" : String(JSON.parse(text).error) };
}

async function staleRead(cluster: ProcessCluster, id: string, key: string): Promise<string | null> {
  const res = await cluster.request(id, "GET", `/v1/data/${key}?consistency=stale`);
  if (res.status === 404) return null;
  assert.equal(res.status, 200, res.text);
  return (res.json as { v: string }).v;
}

Deno.test("peers with mutual TLS replicate, refuse impostors at the handshake or with 403, and survive restarts", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-peer-tls-" });
  try {
    const certs = await makeCertificates(dir, {
      nodes: ["node-1", "node-2", "node-3", "stranger"],
      untrustedNodes: ["node-9"],
    });
    // Someone else's CA, with a certificate that names a member.
    await Deno.mkdir(`${dir}/impostor`);
    const impostor: Certificates = await makeCertificates(`${dir}/impostor`, {
      nodes: ["node-3"],
    });
    await using cluster = await startCluster({ size: 3, tls: certs, nodeFlags: NODE_FLAGS });
    const ids = cluster.ids;
    assert.ok(ids.every((id) => cluster.rpc(id).startsWith("https://127.0.0.1:")));
    let leader = await cluster.waitForLeader(20_000);

    await t.step("a leader is elected over TLS and writes replicate to every node", async () => {
      const follower = ids.find((id) => id !== leader)!;
      for (let i = 0; i < 5; i++) {
        const via = i % 2 === 0 ? leader : follower;
        const res = await cluster.request(via, "PUT", `/v1/data/real-${i}`, { v: `v${i}` });
        assert.equal(res.status, 200, res.text);
      }
      await waitFor(async () => {
        const values = await Promise.all(ids.map((id) => staleRead(cluster, id, "real-4")));
        return values.every((v) => v === "v4");
      }, { deadlineMs: 10_000, message: "every node to apply the writes" });
      for (const id of ids) {
        const lines = cluster.logs(id);
        assert.ok(
          lines.some((l) => l.includes("(TLS, client certificates required)")),
          `${id} did not log its TLS peer server\n${cluster.formatLogs([id], 20)}`,
        );
        assert.ok(!lines.some((l) => l.includes("without peer authentication")), id);
      }
    });

    // From here on, nothing may change: every node has applied every write.
    const settled = await observeNode(cluster, leader);
    await waitFor(async () => {
      const all = await Promise.all(ids.map((id) => cluster.status(id)));
      return all.every((s) => s?.applied_index === settled.commit && s.term === settled.term);
    }, { deadlineMs: 10_000, message: "every node to apply every write" });
    const T = settled.term;
    const before = new Map<string, ObservedState>();
    for (const id of ids) before.set(id, await observeNode(cluster, id));
    const target = "node-1";
    const last = before.get(target)!.last;
    const unchanged = async (what: string) => {
      for (const id of ids) {
        assert.ok(cluster.isRunning(id), `${id} stopped after ${what}`);
        assert.deepEqual(await observeNode(cluster, id), before.get(id), `${id} changed: ${what}`);
      }
      assert.equal(await staleRead(cluster, target, "forged"), null, `forged was written: ${what}`);
    };
    const append = (from: string) =>
      message({
        type: MessageType.App,
        from,
        to: target,
        term: T + 5,
        index: last,
        logTerm: T,
        entries: [{
          index: last + 1,
          term: T + 5,
          type: EntryType.Normal,
          data: encodeCommand({ op: "put", key: "forged", value: "x" }),
        }],
        commit: last + 1,
      });
    const vote = (from: string) =>
      message({
        type: MessageType.Vote,
        from,
        to: target,
        term: T + 5,
        index: last + 10,
        logTerm: T + 5,
      });
    const snap = (from: string) =>
      message({
        type: MessageType.Snap,
        from,
        to: target,
        term: T + 5,
        snapshot: { index: last + 100, term: T + 5, voters: ids },
      });

    await t.step(
      "node-2's certificate claiming to be node-3 gets 403 and changes nothing",
      async () => {
        const asNode2 = peerClient(certs.ca, certs.node("node-2"));
        try {
          const claimed = /claimed on a connection that proved "node-2"/;
          const inside = /claims sender "node-3" on a connection that proved "node-2"/;
          const answers: [string, Answer, RegExp][] = [
            [
              "header and message",
              await post(asNode2, cluster, target, "node-3", [append("node-3")]),
              claimed,
            ],
            [
              "vote, header",
              await post(asNode2, cluster, target, "node-3", [vote("node-3")]),
              claimed,
            ],
            [
              "message only",
              await post(asNode2, cluster, target, "node-2", [vote("node-3")]),
              inside,
            ],
            [
              "a message among its own",
              await post(asNode2, cluster, target, "node-2", [vote("node-2"), append("node-3")]),
              inside,
            ],
            [
              "snapshot, header",
              await upload(asNode2, cluster, target, "node-3", snap("node-3")),
              claimed,
            ],
            [
              "snapshot, message",
              await upload(asNode2, cluster, target, "node-2", snap("node-3")),
              inside,
            ],
          ];
          for (const [what, answer, pattern] of answers) {
            assert.equal(answer.status, 403, `${what}: ${answer.error}`);
            assert.match(answer.error, pattern, what);
          }
          // Its members query is answered as node-2's, and refused under node-3's name.
          assert.equal((await askMembers(asNode2, cluster, target, "node-2")).status, 200);
          const impostor = await askMembers(asNode2, cluster, target, "node-3");
          assert.equal(impostor.status, 403, impostor.error);
          assert.match(impostor.error, claimed);
        } finally {
          asNode2.close();
        }
        await unchanged("node-2 claiming to be node-3");
        await waitFor(
          () =>
            cluster.logs(target).some((l) =>
              l.includes('Refused a peer request with 403 (sender "node-3")')
            ),
          { deadlineMs: 5000, message: "the refusal to be logged" },
        );
      },
    );

    await t.step("no certificate, or one from another CA, fails the handshake", async () => {
      const url = `${cluster.rpc(target)}${MESSAGES_PATH}`;
      const attempts: [string, H2Client][] = [
        ["no certificate", peerClient(certs.ca, null)],
        ["the untrusted CA's node-9", peerClient(certs.ca, certs.node("node-9"))],
        ["another CA's node-3", peerClient(certs.ca, impostor.node("node-3"))],
      ];
      for (const [what, client] of attempts) {
        try {
          await assert.rejects(
            client.fetch(url, {
              method: "POST",
              headers: { [FROM_HEADER]: "node-3" },
              body: encodeMessages([append("node-3")]),
              signal: AbortSignal.timeout(5000),
            }),
            `${what} was let through`,
          );
        } finally {
          client.close();
        }
      }
      // Deno's own fetch without a client certificate fares no better.
      const http = Deno.createHttpClient({
        caCerts: [Deno.readTextFileSync(certs.ca)],
        http1: false,
        http2: true,
      });
      try {
        await assert.rejects(
          fetch(url, { client: http, method: "POST", signal: AbortSignal.timeout(5000) }),
        );
      } finally {
        http.close();
      }
      await unchanged("handshakes without a trusted certificate");
      await waitFor(
        () =>
          cluster.logs(target).some((l) => l.includes("Refused a TLS connection to the peer port")),
        { deadlineMs: 5000, message: "the refused handshake to be logged" },
      );
      // And counted, each of the four: raftkv_peer_refusals_total{reason="handshake"}.
      const handshakes = 'raftkv_peer_refusals_total{reason="handshake"}';
      let counted = 0;
      await waitFor(async () => {
        counted = sample(await scrapeChecked(cluster, target), handshakes);
        return counted >= 4;
      }, { deadlineMs: 5000, message: () => `4 refused handshakes counted (${counted})` });
    });

    await t.step(
      "a certificate from the cluster CA whose CN is not a member gets 403",
      async () => {
        const asStranger = peerClient(certs.ca, certs.node("stranger"));
        try {
          for (const from of ["stranger", "node-3"]) {
            const answer = await post(asStranger, cluster, target, from, [append(from)]);
            assert.equal(answer.status, 403, answer.error);
            assert.match(answer.error, /proved "stranger": sender "stranger" is not a member/);
          }
          const snapshot = await upload(asStranger, cluster, target, "stranger", snap("stranger"));
          assert.equal(snapshot.status, 403, snapshot.error);
          const asked = await askMembers(asStranger, cluster, target, "stranger");
          assert.equal(asked.status, 403, asked.error);
        } finally {
          asStranger.close();
        }
        await unchanged("a non-member's certificate");
      },
    );

    await t.step(
      "restarted and killed nodes come back without taking their peers down",
      async () => {
        let written = 0;
        const acked: number[] = [];
        let writing = true;
        const writer = (async () => {
          while (writing) {
            const i = written++;
            const via = cluster.liveIds()[i % Math.max(1, cluster.liveIds().length)];
            if (via === undefined) continue;
            try {
              const res = await cluster.request(via, "PUT", `/v1/data/w-${i}`, { v: `${i}` }, {
                timeoutMs: 3000,
              });
              if (res.status === 200) acked.push(i);
            } catch { /* a node going down: the write may or may not have happened */ }
          }
        })();
        try {
          for (
            const [id, how] of [[leader, "SIGTERM"], [ids.find((id) => id !== leader)!, "SIGKILL"]]
          ) {
            const exit = await cluster.kill(id!, how as Deno.Signal);
            if (how === "SIGTERM") assert.equal(exit.code, 0, `${id} did not stop cleanly`);
            await cluster.start(id!);
            leader = await cluster.waitForLeader(20_000);
            for (const other of ids) {
              assert.ok(
                cluster.isRunning(other),
                `${other} died when ${id} restarted\n${cluster.formatLogs([other], 40)}`,
              );
            }
            const before = acked.length;
            await waitFor(() => acked.length > before + 5, {
              deadlineMs: 15_000,
              message: `writes to go on after ${id} restarted`,
            });
          }
        } finally {
          writing = false;
          await writer;
        }
        assert.ok(acked.length > 10, `only ${acked.length} writes acknowledged`);
        leader = await cluster.waitForLeader(20_000);
        for (const i of acked) {
          const res = await cluster.request(leader, "GET", `/v1/data/w-${i}`);
          assert.equal(res.status, 200, `acknowledged write w-${i} is missing: ${res.text}`);
        }
        for (const id of ids) assert.ok(cluster.isRunning(id), id);
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a node warns at start when its peer port listens beyond loopback without mutual TLS", async () => {
  await using cluster = await startCluster({ size: 1, nodeFlags: ["--listen-host", "0.0.0.0"] });
  await waitFor(
    () =>
      cluster.logs("node-1").some((l) =>
        l.includes("The peer port listens on 0.0.0.0 without peer authentication")
      ),
    { deadlineMs: 5000, message: "the warning" },
  );
});

/** What a TLS server on `port` presents to a new connection (see `servedCertificate`). */
function presented(
  port: number,
  ca: string,
  pair: { cert: string; key: string } | null,
): Promise<{ fingerprint: string } | { error: string }> {
  return servedCertificate(port, ca, pair).then(
    (fingerprint) => ({ fingerprint }),
    (e: Error) => ({ error: e.message }),
  );
}

Deno.test("SIGHUP rotates the certificates: the peer CA and the API certificate change without a restart; bad files change nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-rotate-" });
  try {
    const nodes = ["node-1", "node-2", "node-3"];
    await Deno.mkdir(`${dir}/peer`);
    await Deno.mkdir(`${dir}/api`);
    const peerCerts = await makeCertificates(`${dir}/peer`, { nodes });
    const apiCerts = await makeCertificates(`${dir}/api`, { nodes });
    await using cluster = await startCluster({
      size: 3,
      tls: peerCerts,
      apiCerts,
      // SIGHUP alone: the nodes do not look at their files by themselves.
      nodeFlags: [...NODE_FLAGS, "--reload-interval", "0"],
    });
    const read = (path: string) => Deno.readTextFileSync(path);
    const fingerprint = (path: string) => new X509Certificate(read(path)).fingerprint256;
    const pair = (certs: Certificates, id: string) => ({
      cert: read(certs.node(id).cert),
      key: read(certs.node(id).key),
    });
    const port = (url: string) => Number(new URL(url).port);
    const leader = await cluster.waitForLeader(20_000);
    const follower = nodes.find((id) => id !== leader)!;
    const put = (id: string, k: string) => cluster.request(id, "PUT", `/v1/data/${k}`, { v: k });
    // The expiry of each certificate in force, from GET /metrics (checked by promtool).
    const expiries = async (id: string) => {
      const text = (await cluster.request(id, "GET", "/metrics")).text;
      const verdict = await promtoolCheck(text);
      assert.ok(verdict.ok, verdict.output);
      const samples = parseSamples(text);
      const series = (use: string) =>
        sample(samples, `raftkv_tls_certificate_expiry_timestamp_seconds{use="${use}"}`);
      return { peer: series("peer"), api: series("api") };
    };
    const notAfter = (path: string) => Date.parse(new X509Certificate(read(path)).validTo) / 1000;
    assert.deepEqual(await expiries("node-1"), {
      peer: notAfter(peerCerts.node("node-1").cert),
      api: notAfter(apiCerts.node("node-1").cert),
    });
    assert.equal((await put(follower, "before")).status, 200);

    // Renewed API certificates from the same CA; a new peer CA with new peer certificates. Both
    // written over the files the nodes were started with.
    const oldPeer = { ca: read(peerCerts.ca), node1: pair(peerCerts, "node-1") };
    await makeCertificates(`${dir}/api`, { nodes, renew: true });
    await makeCertificates(`${dir}/peer`, { nodes });
    const newPeer = { ca: read(peerCerts.ca), node1: pair(peerCerts, "node-1") };
    assert.notEqual(newPeer.ca, oldPeer.ca);
    for (const id of nodes) cluster.signal(id, "SIGHUP");
    for (const id of nodes) {
      await waitFor(() => {
        const lines = cluster.logs(id);
        return lines.some((l) => l.includes("SIGHUP: reloaded the peer TLS files: CN=" + id)) &&
          lines.some((l) => l.includes("SIGHUP: reloaded the API's certificate: CN=" + id));
      }, { deadlineMs: 10_000, message: `${id} to reload its certificates` });
    }

    for (const id of nodes) {
      assert.deepEqual(await expiries(id), {
        peer: notAfter(peerCerts.node(id).cert),
        api: notAfter(apiCerts.node(id).cert),
      });
      // The API presents its renewed certificate to new connections.
      const api = await presented(port(cluster.api(id)), read(apiCerts.ca), null);
      assert.deepEqual(api, { fingerprint: fingerprint(apiCerts.node(id).cert) }, `${id} API`);
      // The peer port presents the new certificate and takes only the new CA's.
      const rpc = port(cluster.rpc(id));
      const fresh = await presented(rpc, newPeer.ca, newPeer.node1);
      assert.deepEqual(fresh, { fingerprint: fingerprint(peerCerts.node(id).cert) }, `${id} peer`);
      const stale = await presented(rpc, oldPeer.ca, oldPeer.node1);
      assert.ok("error" in stale, `${id} took the old CA's certificate: ${JSON.stringify(stale)}`);
    }

    // A follower restarted on the new files trusts only the new CA: the leader reaches it, and
    // its forwards reach the leader, only with their new client certificates.
    assert.equal(await cluster.stop(follower), 0);
    await cluster.start(follower);
    assert.equal((await put(leader, "after")).status, 200);
    await waitFor(async () => {
      const res = await cluster.request(follower, "GET", "/v1/data/after?consistency=stale");
      return res.status === 200;
    }, { deadlineMs: 15_000, message: `${follower} to get the leader's write over the new certs` });
    // A node that has forwarded nothing yet opens its first connection to the leader now.
    const leaderNow = await cluster.waitForLeader(20_000);
    const via = nodes.find((id) => id !== follower && id !== leaderNow)!;
    const forwarded = await put(via, "forwarded");
    assert.equal(forwarded.status, 200, forwarded.text);

    // SIGHUPs in a burst swap the API's server one after the other; it keeps serving.
    const swaps = () =>
      cluster.logs(via).filter((l) => l.includes("SIGHUP: reloaded the API's certificate")).length;
    const swapped = swaps();
    for (let i = 0; i < 3; i++) cluster.signal(via, "SIGHUP");
    await waitFor(() => swaps() > swapped, { deadlineMs: 10_000, message: "another swap" });
    // A swap still under way refuses or resets new connections for a few milliseconds (see
    // src/util/serve.ts): a connection that fails so is tried again; an answer must be a 200.
    let burst: { status: number; text: string } | null = null;
    await waitFor(async () => {
      burst = await put(via, "burst").catch((e) => {
        const chain: string[] = [];
        for (let c = e; c instanceof Error; c = c.cause) chain.push(c.message);
        if (!/client error \(Connect\)/.test(chain.join("\n"))) throw e;
        return null;
      });
      return burst !== null;
    }, { deadlineMs: 10_000, message: "an answer during the swaps" });
    assert.equal(burst!.status, 200, burst!.text);
    assert.ok(
      !cluster.logs(via).some((l) => l.includes("cannot listen")),
      cluster.formatLogs([via]),
    );

    // Files that do not pass the checks change nothing.
    const inForce = fingerprint(peerCerts.node(leaderNow).cert);
    const inForceText = read(peerCerts.node(leaderNow).cert);
    await Deno.writeTextFile(peerCerts.node(leaderNow).cert, "not a certificate\n");
    cluster.signal(leaderNow, "SIGHUP");
    await waitFor(
      () =>
        cluster.logs(leaderNow).some((l) =>
          l.includes("SIGHUP: could not reload the TLS files") && l.includes("--peer-cert")
        ),
      { deadlineMs: 10_000, message: "the refused reload to be logged" },
    );
    const still = await presented(port(cluster.rpc(leaderNow)), newPeer.ca, newPeer.node1);
    assert.deepEqual(still, { fingerprint: inForce });
    assert.equal((await put(leaderNow, "still")).status, 200);

    // Nor does a renewal that has already expired: peers and clients would refuse it.
    await Deno.writeTextFile(peerCerts.node(leaderNow).cert, inForceText);
    const apiInForce = fingerprint(apiCerts.node(leaderNow).cert);
    await makeCertificates(`${dir}/api`, {
      nodes: [leaderNow],
      renew: true,
      validity: { from: "20200101000000Z", to: "20210101000000Z" },
    });
    const refused = () =>
      cluster.logs(leaderNow).filter((l) =>
        l.includes("SIGHUP: could not reload the TLS files") && l.includes("--api-cert") &&
        l.includes("expired on 2021-01-01T00:00:00.000Z")
      ).length;
    cluster.signal(leaderNow, "SIGHUP");
    await waitFor(() => refused() === 1, {
      deadlineMs: 10_000,
      message: "the expired certificate to be refused",
    });
    const apiNow = await presented(port(cluster.api(leaderNow)), read(apiCerts.ca), null);
    assert.deepEqual(apiNow, { fingerprint: apiInForce }, "the API kept its certificate");
    const metrics = parseSamples((await cluster.request(leaderNow, "GET", "/metrics")).text);
    assert.ok(sample(metrics, 'raftkv_reloads_total{what="api",result="failed"}') >= 1);
    assert.equal((await put(leaderNow, "still-after")).status, 200);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
