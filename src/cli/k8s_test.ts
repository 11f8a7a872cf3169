import assert from "node:assert/strict";
import { ConfigError } from "./errors.ts";
import { derivePeersForK8s, type K8sPeerOptions, parseStatefulSetHostname } from "./k8s.ts";

const _BASE: K8sPeerOptions = { hostname: "raftkv-1", replicas: 3, rpcPort: 6666, apiPort: 7777 };

Deno.test("derivePeersForK8s() lists every pod of the StatefulSet by stable DNS name", () => {
  assert.deepEqual(derivePeersForK8s(_BASE), [
    {
      id: "raftkv-0",
      rpcUrl: "http://raftkv-0.raftkv.default.svc.cluster.local:6666",
      apiUrl: "http://raftkv-0.raftkv.default.svc.cluster.local:7777",
    },
    {
      id: "raftkv-1",
      rpcUrl: "http://raftkv-1.raftkv.default.svc.cluster.local:6666",
      apiUrl: "http://raftkv-1.raftkv.default.svc.cluster.local:7777",
    },
    {
      id: "raftkv-2",
      rpcUrl: "http://raftkv-2.raftkv.default.svc.cluster.local:6666",
      apiUrl: "http://raftkv-2.raftkv.default.svc.cluster.local:7777",
    },
  ]);
});

Deno.test("derivePeersForK8s() gives the same list on every pod", () => {
  const lists = ["raftkv-0", "raftkv-1", "raftkv-2"].map((hostname) =>
    derivePeersForK8s({ ..._BASE, hostname })
  );
  assert.deepEqual(lists[0], lists[1]);
  assert.deepEqual(lists[1], lists[2]);
});

Deno.test("derivePeersForK8s() uses the given service, namespace, domain and ports", () => {
  const peers = derivePeersForK8s({
    hostname: "kv-0",
    replicas: 1,
    service: "kv-headless",
    namespace: "prod",
    clusterDomain: "corp.example.",
    rpcPort: 9000,
    apiPort: 8080,
  });
  assert.deepEqual(peers, [{
    id: "kv-0",
    rpcUrl: "http://kv-0.kv-headless.prod.svc.corp.example:9000",
    apiUrl: "http://kv-0.kv-headless.prod.svc.corp.example:8080",
  }]);
});

Deno.test("derivePeersForK8s() accepts a fully qualified hostname", () => {
  const peers = derivePeersForK8s({ ..._BASE, hostname: "raftkv-2.raftkv.default.svc" });
  assert.equal(peers.length, 3);
});

Deno.test("derivePeersForK8s() keeps dashes that belong to the StatefulSet's name", () => {
  const peers = derivePeersForK8s({ ..._BASE, hostname: "my-kv-store-10", replicas: 11 });
  assert.equal(peers[10]?.id, "my-kv-store-10");
  assert.equal(peers[0]?.rpcUrl, "http://my-kv-store-0.my-kv-store.default.svc.cluster.local:6666");
});

Deno.test("derivePeersForK8s() lists a pod beyond the bootstrap replica count after them", () => {
  const peers = derivePeersForK8s({ ..._BASE, hostname: "raftkv-4" });
  assert.deepEqual(peers.map((p) => p.id), ["raftkv-0", "raftkv-1", "raftkv-2", "raftkv-4"]);
});

Deno.test("derivePeersForK8s() rejects a hostname without an ordinal", () => {
  for (const hostname of ["raftkv", "raftkv-", "raftkv-a", "raftkv-01", "-1", "Raftkv-1", ""]) {
    assert.throws(() => derivePeersForK8s({ ..._BASE, hostname }), {
      name: "ConfigError",
      message: new RegExp(
        `^Hostname ${
          JSON.stringify(hostname)
        } is not a StatefulSet pod name: .*"<statefulset>-<ordinal>"`,
      ),
    });
  }
});

Deno.test("derivePeersForK8s() rejects names that are not valid in DNS", () => {
  assert.throws(() => derivePeersForK8s({ ..._BASE, service: "Raft_KV" }), {
    name: "ConfigError",
    message: /Service name "Raft_KV" is not a valid DNS label/,
  });
  assert.throws(() => derivePeersForK8s({ ..._BASE, namespace: "a.b" }), {
    name: "ConfigError",
    message: /namespace name "a.b" is not a valid DNS label/,
  });
  assert.throws(() => derivePeersForK8s({ ..._BASE, clusterDomain: "bad..domain" }), {
    name: "ConfigError",
    message: /cluster domain "bad..domain" is not a valid DNS name/,
  });
});

Deno.test("derivePeersForK8s() rejects a replica count or port out of range", () => {
  assert.throws(() => derivePeersForK8s({ ..._BASE, replicas: 0 }), ConfigError);
  assert.throws(() => derivePeersForK8s({ ..._BASE, rpcPort: 0 }), /RPC port 0/);
  assert.throws(() => derivePeersForK8s({ ..._BASE, apiPort: 65536 }), /API port 65536/);
});

Deno.test("parseStatefulSetHostname() splits off the last numeric suffix", () => {
  assert.deepEqual(parseStatefulSetHostname("web-0"), { setName: "web", ordinal: 0 });
  assert.deepEqual(parseStatefulSetHostname("web-2-12"), { setName: "web-2", ordinal: 12 });
});
