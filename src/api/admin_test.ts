import assert from "node:assert/strict";
import {
  type KvBackend,
  LeaderTransferError,
  type NodeStatus,
  NotLeaderError,
  NotVoterError,
  TransferAbortedError,
  UnknownMemberError,
} from "../node/backend.ts";
import { createApiHandler, FORWARDED_BY_HEADER, type Forwarder } from "./handler.ts";

/** A node whose leader transfer does what the test says; nothing else is called. */
function node(
  transfer: (to: string | null, signal: AbortSignal) => Promise<{ leader: string }>,
  leader: NodeStatus["leader"] = { id: "n1", api_url: "http://n1.test" },
): KvBackend {
  const unused = () => Promise.reject(new Error("not called by these tests"));
  return {
    write: unused,
    read: unused,
    range: unused,
    snapshot: () => {
      throw new Error("not called by these tests");
    },
    isReady: () => true,
    overloaded: () => null,
    status: () => ({
      id: "n1",
      role: leader?.id === "n1" ? "leader" : "follower",
      term: 2,
      leader,
      commit_index: 1,
      applied_index: 1,
      last_index: 1,
      members: [],
      alarms: [],
    }),
    transferLeadership: transfer,
  };
}

function post(
  backend: KvBackend,
  body?: string,
  options: { forward?: Forwarder; apiTimeoutMs?: number } = {},
): Promise<Response> {
  const handler = createApiHandler(backend, {
    selfId: "n1",
    members: ["n1", "n2", "n3"].map((id) => ({
      id,
      apiUrl: `http://${id}.test`,
      rpcUrl: `http://${id}.test:6666`,
    })),
    forward: options.forward ?? (() => Promise.reject(new Error("no forward expected"))),
    logError: () => {},
    ...(options.apiTimeoutMs ? { apiTimeoutMs: options.apiTimeoutMs } : {}),
  });
  const headers: Record<string, string> = body === undefined
    ? {}
    : { "content-type": "application/json" };
  return handler(
    new Request("http://n1.test/v1/leader/transfer", {
      method: "POST",
      headers,
      body: body ?? null,
    }),
  );
}

async function json(res: Response, status: number): Promise<Record<string, unknown>> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.equal(res.headers.get("content-type"), "application/json");
  return JSON.parse(text);
}

Deno.test("POST /v1/leader/transfer answers the new leader, with or without a target", async () => {
  const asked: (string | null)[] = [];
  const backend = node((to) => {
    asked.push(to);
    return Promise.resolve({ leader: to ?? "n3" });
  });
  assert.deepEqual(await json(await post(backend), 200), { leader: "n3", previous: "n1" });
  assert.deepEqual(await json(await post(backend, '{"to":"n2"}'), 200), {
    leader: "n2",
    previous: "n1",
  });
  assert.deepEqual(await json(await post(backend, "{}"), 200), { leader: "n3", previous: "n1" });
  assert.deepEqual(asked, [null, "n2", null]);
});

Deno.test("POST /v1/leader/transfer answers each refusal with its own JSON error", async () => {
  const refuse = (e: Error) => node(() => Promise.reject(e));
  const unknown = await json(
    await post(refuse(new UnknownMemberError("zz", ["n1"])), '{"to":"zz"}'),
    400,
  );
  assert.match(String(unknown.error), /"zz" is not a member of the cluster/);
  assert.equal(unknown.to, "zz");
  const learner = await json(await post(refuse(new NotVoterError("n4")), '{"to":"n4"}'), 400);
  assert.match(String(learner.error), /"n4" is not a voter/);
  const busy = await post(refuse(new LeaderTransferError("n2")));
  assert.equal(busy.headers.get("retry-after"), "1");
  assert.equal((await json(busy, 409)).transferee, "n2");
  const aborted = await json(await post(refuse(new TransferAbortedError("n2"))), 503);
  assert.match(String(aborted.error), /abandoned.*this node still leads/);
  assert.deepEqual([aborted.to, aborted.leader], ["n2", "n1"]);
  const hangs = node((_, signal) =>
    new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)))
  );
  const late = await json(await post(hangs, undefined, { apiTimeoutMs: 50 }), 504);
  assert.match(String(late.error), /no new leader was known within 50ms/);
  for (const bad of ['{"to":5}', '{"to":""}', "[1]", "not json"]) {
    await json(await post(node(() => Promise.resolve({ leader: "n2" })), bad), 400);
  }
  const get = await createApiHandler(node(() => Promise.resolve({ leader: "n2" })), {
    selfId: "n1",
  })(new Request("http://n1.test/v1/leader/transfer"));
  assert.equal(
    (await json(get, 405)).error,
    'method "GET" is not allowed on /v1/leader/transfer; allowed: POST',
  );
});

Deno.test("POST /v1/leader/transfer on a follower is forwarded to the leader with its body", async () => {
  const follower = node(
    () => Promise.reject(new NotLeaderError("n2")),
    { id: "n2", api_url: "http://n2.test" },
  );
  const seen: { url: string; by: string | null; body: string }[] = [];
  const forward: Forwarder = async (url, init) => {
    seen.push({
      url,
      by: new Headers(init.headers).get(FORWARDED_BY_HEADER),
      body: await new Response(init.body).text(),
    });
    return Response.json({ leader: "n3", previous: "n2" });
  };
  const res = await post(follower, '{"to":"n3"}', { forward });
  assert.deepEqual(await json(res, 200), { leader: "n3", previous: "n2" });
  assert.deepEqual(seen, [{
    url: "http://n2.test:6666/forward/v1/leader/transfer",
    by: "n1",
    body: '{"to":"n3"}',
  }]);
  const lost = node(() => Promise.reject(new NotLeaderError("")), null);
  assert.match(String((await json(await post(lost), 503)).error), /knows no leader/);
});
