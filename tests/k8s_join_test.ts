/**
 * End-to-end test of `--join-mode k8s`: three real node processes configured only the way the
 * StatefulSet in deploy/k8s/base/ configures its pods (its container environment, HOSTNAME set to
 * the pod's name, POD_NAMESPACE from the downward API), run with the permissions baked into the
 * compiled binary.
 *
 * The image's ENV (Dockerfile) applies below the pod's, as in a container.
 *
 * What differs from a cluster, and why: each "pod" listens on its own loopback address
 * (127.0.0.2-4; Linux routes all of 127/8 to lo) instead of its pod IP, all three on the same
 * free ports instead of 7777/6666, with a temporary data directory as its volume; and the pods'
 * DNS names (`raftkv-<i>.<service>.<namespace>.svc.cluster.local`) are mapped to those addresses
 * through the node's RAFTKV_HOSTS_OVERRIDE seam instead of cluster DNS.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import {
  applyHostsOverride,
  HOSTS_OVERRIDE_ENV,
  parseHostsOverride,
  PERMISSION_FLAGS,
} from "../main.ts";
import { derivePeersForK8s } from "../src/cli/k8s.ts";
import { freePorts, httpRequest, type HttpResult, waitFor } from "../testing/harness.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const NAMESPACE = "raftkv-test";
const ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

// deno-lint-ignore no-explicit-any
type Doc = any;

/** The StatefulSet's container, from the manifests kustomization.yaml lists. */
function loadStatefulSet(): { set: Doc; container: Doc } {
  const dir = `${ROOT}deploy/k8s/base/`;
  const kustomization = parseAllDocuments(Deno.readTextFileSync(`${dir}kustomization.yaml`))[0]
    ?.toJS();
  const docs: Doc[] = kustomization.resources.flatMap((file: string) =>
    parseAllDocuments(Deno.readTextFileSync(`${dir}${file}`)).map((doc) => doc.toJS())
  );
  const set = docs.find((doc) => doc?.kind === "StatefulSet");
  const container = set?.spec.template.spec.containers.find((c: Doc) => c.name === "raftkv");
  assert.ok(container, "no StatefulSet with a raftkv container in deploy/k8s/base/");
  return { set, container };
}

/** The container's environment as Kubernetes would set it in namespace {@linkcode NAMESPACE}. */
function podEnvironment(container: Doc): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of container.env ?? []) {
    if (typeof entry.value === "string") env[entry.name] = entry.value;
    else if (entry.valueFrom?.fieldRef?.fieldPath === "metadata.namespace") {
      env[entry.name] = NAMESPACE;
    } else assert.fail(`the test does not know how to set ${JSON.stringify(entry)}`);
  }
  return env;
}

/** The ENV of the Dockerfile's final stage: the pods' environment starts from it. */
function imageEnvironment(): Record<string, string> {
  const dockerfile = Deno.readTextFileSync(`${ROOT}Dockerfile`).replace(/\\\n/g, " ");
  const final = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  const env: Record<string, string> = {};
  for (const line of final.split("\n").filter((line) => line.startsWith("ENV "))) {
    for (const [, name, value] of line.matchAll(/([A-Z_][A-Z0-9_]*)=(\S+)/g)) {
      env[name!] = value!;
    }
  }
  assert.ok(Object.keys(env).length > 0, "no ENV in the Dockerfile's final stage");
  return env;
}

/** Two ports free on every address, so all pods can use the same ones like real pods do. */
function sharedFreePorts(addresses: readonly string[]): [number, number] {
  for (let attempt = 0; attempt < 50; attempt++) {
    const [api, rpc] = freePorts(2, addresses[0]);
    if (api === undefined || rpc === undefined) continue;
    const listeners: Deno.Listener[] = [];
    try {
      for (const hostname of addresses) {
        for (const port of [api, rpc]) listeners.push(Deno.listen({ hostname, port }));
      }
      return [api, rpc];
    } catch {
      // Taken on one of the other addresses: try other ports.
    } finally {
      for (const listener of listeners) listener.close();
    }
  }
  throw new Error(`found no two ports free on all of ${addresses.join(", ")}`);
}

/** Environment of the test minus whatever could configure a node or route its requests. */
function baseEnvironment(): Record<string, string> {
  const dropped = /^(RAFTKV_.*|HOSTNAME|POD_NAMESPACE|(https?|all|no)_proxy)$/i;
  return {
    ...Object.fromEntries(Object.entries(Deno.env.toObject()).filter(([k]) => !dropped.test(k))),
    NO_COLOR: "1",
  };
}

/** One node process standing in for a pod; restartable with the same environment. */
class Pod {
  readonly lines: string[] = [];
  #child: Deno.ChildProcess | null = null;
  #exited: Promise<Deno.CommandStatus> | null = null;

  constructor(
    readonly name: string,
    readonly apiUrl: string,
    readonly env: Record<string, string>,
  ) {}

  get running(): boolean {
    return this.#child !== null;
  }

  start(): void {
    assert.equal(this.#child, null, `${this.name} is already running`);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", ...PERMISSION_FLAGS, MAIN],
      env: this.env,
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.lines.push(`## started pid ${child.pid}`);
    const pumps = Promise.all([this.#pump(child.stdout), this.#pump(child.stderr)]);
    this.#child = child;
    this.#exited = child.status.then(async (status) => {
      await pumps;
      this.lines.push(`## exited: code ${status.code}, signal ${status.signal}`);
      return status;
    });
  }

  /** Sends a signal and waits for the exit; SIGKILL after `deadlineMs`. */
  async stop(signal: Deno.Signal, deadlineMs = 10_000): Promise<Deno.CommandStatus> {
    const child = this.#child;
    const exited = this.#exited;
    assert.ok(child !== null && exited !== null, `${this.name} is not running`);
    try {
      child.kill(signal);
    } catch {
      // Already gone.
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<null>((resolve) =>
      timer = setTimeout(() => resolve(null), deadlineMs)
    );
    let status = await Promise.race([exited, late]);
    clearTimeout(timer);
    if (status === null) {
      child.kill("SIGKILL");
      status = await exited;
      this.lines.push(`## did not exit within ${deadlineMs}ms of ${signal}`);
    }
    this.#child = null;
    this.#exited = null;
    return status;
  }

  request(method: string, path: string, body?: unknown): Promise<HttpResult> {
    return httpRequest(`${this.apiUrl}${path}`, method, body, { timeoutMs: 3000 });
  }

  async ok(path: string): Promise<boolean> {
    try {
      return (await this.request("GET", path)).status === 200;
    } catch {
      return false;
    }
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    let pending = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (pending + chunk).split("\n");
      pending = parts.pop() ?? "";
      this.lines.push(...parts);
      if (this.lines.length > 300) this.lines.splice(0, this.lines.length - 300);
    }
    if (pending !== "") this.lines.push(pending);
  }
}

function logs(pods: readonly Pod[]): string {
  return pods.map((pod) => `--- ${pod.name} ---\n${pod.lines.slice(-40).join("\n")}`).join("\n");
}

/** The leader every given pod reports, once they agree and it says it leads. */
async function waitForLeader(pods: readonly Pod[], all: readonly Pod[]): Promise<Pod> {
  let leader: Pod | undefined;
  await waitFor(async () => {
    const statuses = await Promise.all(
      pods.map(async (pod) => (await pod.request("GET", "/v1/status")).json as Doc),
    );
    const ids = new Set(statuses.map((status) => status?.leader?.id ?? null));
    const [id] = ids;
    leader = pods.find((pod) => pod.name === id);
    const own = statuses[pods.findIndex((pod) => pod.name === id)];
    return ids.size === 1 && leader !== undefined && own?.role === "leader";
  }, { deadlineMs: 20_000, intervalMs: 100, message: () => `a leader\n${logs(all)}` });
  assert.ok(leader);
  return leader;
}

Deno.test("RAFTKV_HOSTS_OVERRIDE maps peer host names in rpc_url and api_url", () => {
  const hosts = parseHostsOverride(" raftkv-0.svc=127.0.0.2 , RAFTKV-1.svc=::1,");
  assert.deepEqual([...hosts], [["raftkv-0.svc", "127.0.0.2"], ["raftkv-1.svc", "::1"]]);
  const peers = [0, 1, 2].map((i) => ({
    id: `raftkv-${i}`,
    rpcUrl: `http://raftkv-${i}.svc:6666`,
    apiUrl: `http://raftkv-${i}.svc:7777/`,
  }));
  assert.deepEqual(applyHostsOverride(peers, hosts), [
    { id: "raftkv-0", rpcUrl: "http://127.0.0.2:6666", apiUrl: "http://127.0.0.2:7777/" },
    { id: "raftkv-1", rpcUrl: "http://[::1]:6666", apiUrl: "http://[::1]:7777/" },
    peers[2],
  ]);
  assert.equal(parseHostsOverride("").size, 0);
  for (const bad of ["raftkv-0", "raftkv-0=", "=127.0.0.2", "a=1=2", "a=127.0.0.2,A=127.0.0.3"]) {
    assert.throws(() => parseHostsOverride(bad), /RAFTKV_HOSTS_OVERRIDE/, bad);
  }
});

Deno.test({
  name: "k8s join mode: pods configured like the StatefulSet elect a leader, replicate, rejoin",
  ignore: Deno.build.os !== "linux", // other systems route only 127.0.0.1 to loopback
  async fn() {
    const { set, container } = loadStatefulSet();
    const podEnv = podEnvironment(container);
    const replicas = Number(podEnv.RAFTKV_K8S_REPLICAS);
    assert.equal(replicas, ADDRESSES.length);
    const readiness: string = container.readinessProbe.httpGet.path;
    const liveness: string = container.livenessProbe.httpGet.path;
    const [apiPort, rpcPort] = sharedFreePorts(ADDRESSES);

    // The pods' DNS names, exactly as each node derives them, mapped to the loopback addresses.
    const peers = derivePeersForK8s({
      hostname: `${set.metadata.name}-0`,
      replicas,
      service: podEnv.RAFTKV_K8S_SERVICE,
      namespace: NAMESPACE,
      clusterDomain: podEnv.RAFTKV_K8S_CLUSTER_DOMAIN,
      rpcPort,
      apiPort,
    });
    const hostsOverride = peers.map((peer, i) => `${new URL(peer.rpcUrl).hostname}=${ADDRESSES[i]}`)
      .join(",");

    const dataRoot = await Deno.makeTempDir({ prefix: "raftkv-k8s-test-" });
    const pods = ADDRESSES.map((address, i) =>
      new Pod(`${set.metadata.name}-${i}`, `http://${address}:${apiPort}`, {
        ...baseEnvironment(),
        ...imageEnvironment(),
        ...podEnv,
        HOSTNAME: `${set.metadata.name}-${i}`, // set by Kubernetes to the pod's name
        RAFTKV_LISTEN_HOST: address,
        RAFTKV_API_PORT: String(apiPort),
        RAFTKV_RPC_PORT: String(rpcPort),
        RAFTKV_DATA_DIR: `${dataRoot}/${set.metadata.name}-${i}`,
        [HOSTS_OVERRIDE_ENV]: hostsOverride,
      })
    );
    const byName = (name: string) => pods.find((pod) => pod.name === name)!;
    try {
      for (const pod of pods) pod.start();
      await waitFor(
        async () => (await Promise.all(pods.map((pod) => pod.ok(liveness)))).every(Boolean),
        {
          deadlineMs: 30_000,
          message: () => `every pod to pass its liveness probe ${liveness}\n${logs(pods)}`,
        },
      );
      await waitFor(
        async () => (await Promise.all(pods.map((pod) => pod.ok(readiness)))).every(Boolean),
        {
          deadlineMs: 30_000,
          message: () => `every pod to pass its readiness probe ${readiness}\n${logs(pods)}`,
        },
      );
      const leader = await waitForLeader(pods, pods);
      assert.deepEqual(
        pods.map((pod) => pod.lines.some((line) => line.includes("with 3 members"))),
        [true, true, true],
      );

      // A write through a follower (forwarded to the leader at its overridden rpc_url) is
      // readable through the other follower.
      const [writer, reader] = pods.filter((pod) => pod !== leader);
      assert.ok(writer && reader);
      const put = await writer.request("POST", "/v1/data", { k: "a", v: "1" });
      assert.equal(put.status, 200, put.text);
      const got = await reader.request("GET", "/v1/data/a");
      assert.equal(got.status, 200, got.text);
      const { k, v } = got.json as { k: string; v: string };
      assert.deepEqual({ k, v }, { k: "a", v: "1" });

      // Kill the leader outright; the other two elect a new one and keep taking writes.
      const killed = await leader.stop("SIGKILL");
      assert.equal(killed.signal, "SIGKILL");
      const survivors = pods.filter((pod) => pod !== leader);
      const next = await waitForLeader(survivors, pods);
      assert.notEqual(next, leader);
      await waitFor(
        async () => (await next.request("POST", "/v1/data", { k: "b", v: "2" })).status === 200,
        {
          deadlineMs: 15_000,
          message: () => `a write while ${leader.name} is down\n${logs(pods)}`,
        },
      );

      // The same pod, restarted with the same environment and volume, rejoins and catches up.
      leader.start();
      await waitFor(() => leader.ok(readiness), {
        deadlineMs: 30_000,
        message: () => `${leader.name} to be ready again\n${logs(pods)}`,
      });
      for (const [k, v] of [["a", "1"], ["b", "2"]]) {
        // A stale read answers from the restarted pod's own state machine.
        await waitFor(async () => {
          const local = await leader.request("GET", `/v1/data/${k}?consistency=stale`);
          return local.status === 200 && (local.json as Doc)?.v === v;
        }, {
          deadlineMs: 15_000,
          message: () => `${leader.name} to hold ${k}=${v}\n${logs(pods)}`,
        });
        const read = await leader.request("GET", `/v1/data/${k}`);
        const got = read.json as Doc;
        assert.deepEqual({ k: got?.k, v: got?.v }, { k, v }, read.text);
      }
      assert.equal((await waitForLeader(pods, pods)).running, true);

      // SIGTERM (the pod's stop signal) ends every node cleanly within the grace period.
      const grace = (set.spec.template.spec.terminationGracePeriodSeconds ?? 30) * 1000;
      for (const pod of pods) {
        const status = await pod.stop("SIGTERM", grace);
        assert.equal(status.code, 0, `${pod.name} after SIGTERM\n${logs([pod])}`);
      }
      assert.ok(byName(`${set.metadata.name}-0`).lines.some((line) => line.includes("stopped")));
    } finally {
      await Promise.all(pods.filter((pod) => pod.running).map((pod) => pod.stop("SIGKILL")));
      await Deno.remove(dataRoot, { recursive: true }).catch(() => {});
    }
  },
});
