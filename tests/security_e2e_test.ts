/**
 * Every security setting at once, with real processes and the real `curl`: a three-node cluster
 * whose peers speak mutual TLS (`https://` rpc_urls, CN = node id), whose API serves HTTPS and
 * which asks for bearer tokens. The quick start runs through followers, so every write and read
 * is forwarded to the leader over mutual TLS carrying the caller (the leader, which has tokens
 * too, refuses a forward without one); a follower refuses writes without a token (401) or with a
 * read token (403) without forwarding or applying anything; only the admin token gets a backup.
 * The parts that do not need the combination are in `client_security_test.ts` (tokens, HTTPS)
 * and `peer_tls_test.ts` (impostors, restarts).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { makeCertificates, randomToken } from "../testing/certs.ts";
import {
  cleanEnv,
  type ProcessCluster,
  runCommand,
  startCluster,
  waitFor,
} from "../testing/harness.ts";

/** An answer read from `curl -i`: status, lower-cased headers and body. */
interface CurlAnswer {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/** Splits `curl -i` output into status line, headers and body. */
function parseCurl(out: string): CurlAnswer {
  const split = out.indexOf("\r\n\r\n");
  assert.ok(split !== -1, `no header block in ${JSON.stringify(out)}`);
  const [statusLine = "", ...lines] = out.slice(0, split).split("\r\n");
  const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(statusLine)?.[1]);
  const headers = new Map(lines.map((line) => {
    const colon = line.indexOf(":");
    return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()] as const;
  }));
  return { status, headers, body: out.slice(split + 4) };
}

Deno.test("with peer mTLS, HTTPS and tokens together, followers forward the quick start as the caller and refuse what the caller may not do", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-security-e2e-" });
  try {
    const ids = ["node-1", "node-2", "node-3"];
    const certs = await makeCertificates(dir, { nodes: ids });
    const tokens = { read: randomToken(), write: randomToken(), admin: randomToken() };
    const tokensFile = join(dir, "tokens.json");
    await Deno.writeTextFile(
      tokensFile,
      JSON.stringify([
        { token: tokens.read, role: "read", name: "reader" },
        { token: tokens.write, role: "write", name: "app" },
        { token: tokens.admin, role: "admin", name: "ops" },
      ]),
      { mode: 0o600 },
    );
    await using cluster = await startCluster({
      size: 3,
      tls: certs,
      apiCerts: certs,
      token: tokens.read,
      nodeFlags: ["--tokens-file", tokensFile],
    });
    for (const id of ids) {
      assert.match(cluster.rpc(id), /^https:\/\//);
      assert.match(cluster.api(id), /^https:\/\//);
    }
    const leader = await cluster.waitForLeader(20_000);
    const [f1, f2] = ids.filter((id) => id !== leader) as [string, string];
    for (const id of ids) {
      assert.ok(
        cluster.logs(id).some((l) => l.includes("(TLS, client certificates required)")),
        `${id} does not serve its peers with mutual TLS\n${cluster.formatLogs([id], 20)}`,
      );
    }

    const curl = async (id: string, path: string, args: string[], token?: string) => {
      const out = await runCommand(
        "curl",
        [
          "-sS",
          "-i",
          "--max-time",
          "10",
          "--cacert",
          certs.ca,
          ...(token === undefined ? [] : ["-H", `Authorization: Bearer ${token}`]),
          ...args,
          `${cluster.api(id)}${path}`,
        ],
        cleanEnv(),
        dir,
      );
      assert.equal(out.code, 0, `curl ${path} via ${id}: ${out.stderr}`);
      return parseCurl(out.stdout);
    };
    const json = "Content-Type: application/json";

    // The quick start, every step through a follower: writes are forwarded to the leader over
    // mutual TLS.
    const put = await curl(
      f1,
      "/v1/data",
      ["-X", "POST", "-H", json, "-d", '{"k":"a","v":"1"}'],
      tokens.write,
    );
    assert.equal(put.status, 200, put.body);
    assert.equal(put.headers.get("x-raftkv-forwarded-to"), leader);
    const written = JSON.parse(put.body);
    assert.deepEqual([written.k, written.v, typeof written.index], ["a", "1", "number"]);

    // A linearizable read is served by the follower itself, through its leader's read index.
    const got = await curl(f2, "/v1/data/a", [], tokens.read);
    assert.equal(got.status, 200, got.body);
    assert.equal(got.headers.get("x-raftkv-forwarded-to"), undefined, "served by the follower");
    assert.deepEqual(_kv(JSON.parse(got.body)), { k: "a", v: "1" });

    const del = await curl(f2, "/v1/data/a", ["-X", "DELETE"], tokens.write);
    assert.equal(del.status, 200, del.body);
    assert.equal(del.headers.get("x-raftkv-forwarded-to"), leader);
    assert.deepEqual({ ...JSON.parse(del.body), index: 0 }, { k: "a", deleted: true, index: 0 });
    assert.ok(JSON.parse(del.body).index > written.index);

    const gone = await curl(f1, "/v1/data/a", [], tokens.read);
    assert.equal(gone.status, 404, gone.body);
    assert.deepEqual(JSON.parse(gone.body), { error: "key not found", k: "a" });

    // A follower refuses unauthorised writes itself: nothing is forwarded, nothing applied.
    // (Over HTTP/1.1: the node answers before reading the body, then resets the HTTP/2 stream
    // with NO_ERROR as RFC 9113 allows, which curl 7.88 sometimes reports as error 92.)
    const applied = async (id: string) => (await cluster.status(id))?.applied_index ?? -1;
    const c = await curl(
      leader,
      "/v1/data/c",
      ["-X", "PUT", "-H", json, "-d", '{"v":"kept"}'],
      tokens.admin,
    );
    assert.equal(c.status, 200, c.body);
    const before = await applied(leader);
    const termBefore = (await cluster.status(leader))?.term ?? 0;
    const refusals: [string, string[], string | undefined, number][] = [
      ["/v1/data", ["-X", "POST", "-H", json, "-d", '{"k":"b","v":"x"}'], undefined, 401],
      ["/v1/data", ["-X", "POST", "-H", json, "-d", '{"k":"b","v":"x"}'], tokens.read, 403],
      ["/v1/data/b", ["-X", "PUT", "-H", json, "-d", '{"v":"x"}'], randomToken(), 401],
      ["/v1/data/b", ["-X", "PUT", "-H", json, "-d", '{"v":"x"}'], tokens.read, 403],
      ["/v1/data/c", ["-X", "DELETE"], tokens.read, 403],
    ];
    for (const via of [f1, f2]) {
      // Every kind on one follower, the POSTs on the other too.
      for (const [path, args, token, status] of via === f1 ? refusals : refusals.slice(0, 2)) {
        const res = await curl(via, path, ["--http1.1", ...args], token);
        assert.equal(res.status, status, `${args.join(" ")} ${path} via ${via}: ${res.body}`);
        assert.equal(res.headers.get("content-type"), "application/json");
        assert.equal(typeof JSON.parse(res.body).error, "string");
        assert.equal(res.headers.get("x-raftkv-forwarded-to"), undefined, "not forwarded");
        if (status === 401) {
          assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="raftkv"');
        } else {
          assert.match(JSON.parse(res.body).error, /"reader" has the role read; .* needs write/);
        }
      }
    }
    // A marker written after the refusals commits behind anything they could have proposed.
    const marker = await curl(
      f1,
      "/v1/data/marker",
      ["-X", "PUT", "-H", json, "-d", '{"v":"m"}'],
      tokens.write,
    );
    assert.equal(marker.status, 200, marker.body);
    // Only the marker was applied, and the empty entry of each new term if an election came in
    // between (a loaded machine can miss a heartbeat): a refused write proposes nothing.
    const elections = ((await cluster.status(leader))?.term ?? 0) - termBefore;
    const added = await applied(leader) - before;
    assert.ok(
      added >= 1 && added <= 1 + elections,
      `${added} entries applied with ${elections} new terms: only the marker should have been`,
    );
    await assertEverywhere(cluster, ids, tokens.read, { marker: "m", c: "kept", b: null });

    // Only the admin token gets a backup, on a follower and on the leader.
    for (const id of [f1, leader]) {
      for (const token of id === f1 ? [tokens.read, tokens.write] : [tokens.write]) {
        const res = await curl(id, "/v1/snapshot", [], token);
        assert.equal(res.status, 403, res.body);
        assert.match(JSON.parse(res.body).error, /needs admin$/);
      }
      if (id === f1) assert.equal((await curl(id, "/v1/snapshot", [])).status, 401);
      const file = join(dir, `backup-${id}.snap`);
      const backup = await runCommand(
        "curl",
        [
          "-sS",
          "--fail",
          "--cacert",
          certs.ca,
          "-H",
          `Authorization: Bearer ${tokens.admin}`,
          "-o",
          file,
          `${cluster.api(id)}/v1/snapshot`,
        ],
        cleanEnv(),
        dir,
      );
      assert.equal(backup.code, 0, backup.stderr);
      assert.ok((await Deno.stat(file)).size > 0);
    }

    // No token reached a log.
    const logs = ids.flatMap((id) => cluster.logs(id)).join("\n");
    for (const token of Object.values(tokens)) assert.ok(!logs.includes(token), "a token leaked");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Waits until every node reads (stale, its own state) the given values; `null`: absent. */
async function assertEverywhere(
  cluster: ProcessCluster,
  ids: readonly string[],
  token: string,
  expected: Record<string, string | null>,
): Promise<void> {
  for (const id of ids) {
    let seen: Record<string, string | null> = {};
    await waitFor(async () => {
      seen = {};
      for (const key of Object.keys(expected)) {
        const res = await cluster.request(
          id,
          "GET",
          `/v1/data/${key}?consistency=stale`,
          undefined,
          { headers: { authorization: `Bearer ${token}` } },
        );
        seen[key] = res.status === 200 ? (res.json as { v: string }).v : null;
      }
      return JSON.stringify(seen) === JSON.stringify(expected);
    }, {
      deadlineMs: 10_000,
      message: () => `${id} to hold ${JSON.stringify(expected)}, not ${JSON.stringify(seen)}`,
    });
  }
}

/** The key and value of an answer (answers also carry the key's revisions). */
function _kv(answer: unknown): { k: unknown; v: unknown } {
  const { k, v } = answer as { k?: unknown; v?: unknown };
  return { k, v };
}
