/**
 * Static checks of the deployment files: the Kubernetes manifests (deploy/k8s/base/ and the TLS
 * overlay deploy/k8s/tls/), the Dockerfile and .dockerignore, and the container cluster script
 * (scripts/docker-cluster.sh, run against a stub `docker` that records its commands). Nothing here
 * needs a container engine or a cluster; `kubectl kustomize` (offline) renders the manifests when
 * kubectl is installed.
 */

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import denoJson from "../deno.json" with { type: "json" };
import { CLIENT_ENV_VARS } from "../src/cli/client/options.ts";
import { parseClusterFile, urlPort } from "../src/cli/cluster_file.ts";
import { parseArgs } from "../src/cli/config.ts";
import { DEFAULTS, FLAGS } from "../src/cli/flags.ts";
import { makeCertificates } from "../testing/certs.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const K8S_DIR = `${ROOT}deploy/k8s/base/`;
const KNOWN_ENV = new Set(FLAGS.flatMap((flag) => flag.env === null ? [] : [flag.env]));
/** Variables the node reads that are not flags; Kubernetes sets HOSTNAME itself. */
const K8S_ENV = new Set(["POD_NAMESPACE", "HOSTNAME"]);
const NONROOT_UID = 65532;

// deno-lint-ignore no-explicit-any
type Doc = any;

function text(path: string): string {
  return Deno.readTextFileSync(`${ROOT}${path}`);
}

function loadManifests(): Doc[] {
  const kustomization = parseAllDocuments(Deno.readTextFileSync(`${K8S_DIR}kustomization.yaml`))
    .map((doc) => doc.toJS())[0];
  const files: string[] = kustomization.resources;
  const listed = new Set(files);
  for (const entry of Deno.readDirSync(K8S_DIR)) {
    if (entry.name.endsWith(".yaml") && entry.name !== "kustomization.yaml") {
      assert.ok(
        listed.has(entry.name),
        `deploy/k8s/base/${entry.name} is not in kustomization.yaml`,
      );
    }
  }
  return files.flatMap((file) => {
    const docs = parseAllDocuments(Deno.readTextFileSync(`${K8S_DIR}${file}`));
    for (const doc of docs) assert.deepEqual(doc.errors, [], `YAML errors in ${file}`);
    return docs.map((doc) => doc.toJS()).filter((doc) => doc !== null);
  });
}

function only(docs: Doc[], kind: string, filter: (doc: Doc) => boolean = () => true): Doc {
  const found = docs.filter((doc) => doc.kind === kind && filter(doc));
  assert.equal(found.length, 1, `expected one ${kind}, found ${found.length}`);
  return found[0];
}

/** Whether every label a selector asks for is on the pods. */
function selects(matchLabels: Record<string, string>, labels: Record<string, string>): boolean {
  const wanted = Object.entries(matchLabels ?? {});
  return wanted.length > 0 && wanted.every(([key, value]) => labels[key] === value);
}

function keyPaths(value: unknown, path = ""): string[] {
  if (Array.isArray(value)) return value.flatMap((item, i) => keyPaths(item, `${path}[${i}]`));
  if (typeof value !== "object" || value === null) return [];
  return Object.entries(value).flatMap(([key, item]) => [
    `${path}.${key}`,
    ...keyPaths(item, `${path}.${key}`),
  ]);
}

function k8s() {
  const docs = loadManifests();
  const set = only(docs, "StatefulSet");
  const pod = set.spec.template;
  const container = pod.spec.containers.find((c: Doc) => c.name === "raftkv");
  assert.ok(container, "the StatefulSet has no container named raftkv");
  const env = new Map<string, Doc>(container.env.map((e: Doc) => [e.name, e]));
  const port = (name: string): number =>
    container.ports.find((p: Doc) => p.name === name)?.containerPort;
  return { docs, set, pod, container, env, port, labels: pod.metadata.labels };
}

Deno.test("k8s: probes use /ready and /health on the container port named for the API", () => {
  const { container, port } = k8s();
  assert.equal(port("api"), DEFAULTS.k8sApiPort);
  assert.equal(port("rpc"), DEFAULTS.k8sRpcPort);
  assert.deepEqual(container.readinessProbe.httpGet, { path: "/ready", port: "api" });
  assert.deepEqual(container.livenessProbe.httpGet, { path: "/health", port: "api" });
  if (container.startupProbe !== undefined) {
    assert.deepEqual(container.startupProbe.httpGet, { path: "/health", port: "api" });
  }
});

Deno.test("k8s: ports and the environment agree with the flags' defaults", () => {
  const { env, port } = k8s();
  for (const [name, wanted] of [["RAFTKV_API_PORT", "api"], ["RAFTKV_RPC_PORT", "rpc"]]) {
    const entry = env.get(name!);
    if (entry !== undefined) assert.equal(Number(entry.value), port(wanted!), name);
  }
});

Deno.test("k8s: the environment names only variables the node reads", () => {
  const { env, container } = k8s();
  for (const name of env.keys()) {
    assert.ok(
      KNOWN_ENV.has(name) || K8S_ENV.has(name),
      `${name} is neither a flag's variable (src/cli/flags.ts) nor one of ${[...K8S_ENV]}`,
    );
  }
  assert.equal(env.has("HOSTNAME"), false, "HOSTNAME is the pod's name: Kubernetes sets it");
  assert.deepEqual(env.get("POD_NAMESPACE")?.valueFrom, {
    fieldRef: { fieldPath: "metadata.namespace" },
  });
  assert.equal(container.args, undefined, "configured by environment variables only");
  assert.equal(container.command, undefined, "the image's entrypoint runs the node");
});

Deno.test("k8s: the StatefulSet is wired to its headless Service, volume and size", () => {
  const { docs, set, pod, container, env, labels } = k8s();
  const headless = only(docs, "Service", (svc) => svc.spec.clusterIP === "None");
  assert.equal(headless.spec.publishNotReadyAddresses, true);
  assert.ok(selects(headless.spec.selector, labels), "the headless Service selects the pods");
  assert.ok(headless.spec.ports.some((p: Doc) => p.targetPort === "rpc"));
  assert.equal(set.spec.serviceName, headless.metadata.name);
  assert.equal(env.get("RAFTKV_K8S_SERVICE")?.value, headless.metadata.name);
  assert.equal(env.get("RAFTKV_JOIN_MODE")?.value, "k8s");
  // The bootstrap size equals the initial replicas; pods added by a scale-up join through
  // the client Service.
  assert.equal(env.get("RAFTKV_K8S_REPLICAS")?.value, String(set.spec.replicas));
  assert.equal(set.spec.replicas, 3);
  const client0 = only(docs, "Service", (svc) => svc.spec.clusterIP !== "None");
  const apiPort = client0.spec.ports.find((p: Doc) => p.targetPort === "api").port;
  assert.equal(env.get("RAFTKV_JOIN")?.value, `http://${client0.metadata.name}:${apiPort}`);
  assert.equal(set.spec.podManagementPolicy, "Parallel");
  assert.ok(selects(set.spec.selector.matchLabels, labels));
  assert.equal(pod.spec.enableServiceLinks, false, "service links add RAFTKV_* variables");

  const client = only(docs, "Service", (svc) => svc.spec.clusterIP !== "None");
  assert.ok(selects(client.spec.selector, labels), "the client Service selects the pods");
  assert.deepEqual(client.spec.ports.map((p: Doc) => p.targetPort), ["api"]);

  const [claim, ...more] = set.spec.volumeClaimTemplates;
  assert.equal(more.length, 0);
  const mount = container.volumeMounts.find((m: Doc) => m.name === claim.metadata.name);
  assert.ok(mount, "the data volume is mounted");
  assert.equal(env.get("RAFTKV_DATA_DIR")?.value, mount.mountPath);
  assert.ok(claim.spec.resources.requests.storage);
});

Deno.test("k8s: a NetworkPolicy lets only members reach the peer port", () => {
  const { docs, labels } = k8s();
  const policy = only(docs, "NetworkPolicy");
  assert.equal(policy.apiVersion, "networking.k8s.io/v1");
  assert.ok(selects(policy.spec.podSelector.matchLabels, labels), "it applies to the pods");
  assert.deepEqual(policy.spec.policyTypes, ["Ingress"]);
  const rules: Doc[] = policy.spec.ingress;
  const forPort = (name: string) => rules.filter((r) => r.ports.some((p: Doc) => p.port === name));
  const [peer, ...morePeer] = forPort("rpc");
  assert.equal(morePeer.length, 0, "one rule names the peer port");
  assert.ok(peer.from?.length > 0, "the peer port is not open to everyone");
  for (const source of peer.from) {
    assert.deepEqual(Object.keys(source), ["podSelector"], "peers are pods, not IP blocks");
    assert.ok(selects(source.podSelector.matchLabels, labels), "only raftkv pods");
  }
  assert.equal(peer.ports.length, 1, "the peer rule opens nothing else");
  assert.equal(forPort("api").length, 1, "clients reach the API");
});

Deno.test("k8s: no storageClassName anywhere (the cluster's default class)", () => {
  const { docs } = k8s();
  const found = docs.flatMap((doc) =>
    keyPaths(doc).filter((path) => path.endsWith(".storageClassName"))
  );
  assert.deepEqual(found, []);
});

Deno.test("k8s: anti-affinity is preferred, not required", () => {
  const { pod, labels } = k8s();
  const anti = pod.spec.affinity.podAntiAffinity;
  assert.equal(anti.requiredDuringSchedulingIgnoredDuringExecution, undefined);
  const terms = anti.preferredDuringSchedulingIgnoredDuringExecution;
  const byHost = terms.find((t: Doc) => t.podAffinityTerm.topologyKey === "kubernetes.io/hostname");
  assert.ok(byHost, "spreads pods over hosts");
  assert.ok(selects(byHost.podAffinityTerm.labelSelector.matchLabels, labels));
});

Deno.test("k8s: the PodDisruptionBudget selects the pods and allows one down", () => {
  const { docs, labels } = k8s();
  const pdb = only(docs, "PodDisruptionBudget");
  assert.equal(pdb.apiVersion, "policy/v1");
  assert.equal(pdb.spec.maxUnavailable, 1);
  assert.ok(selects(pdb.spec.selector.matchLabels, labels));
});

Deno.test("k8s: runs as the image's non-root user with resources and a grace period", () => {
  const { set, pod, container } = k8s();
  assert.equal(pod.spec.securityContext.runAsNonRoot, true);
  assert.equal(pod.spec.securityContext.runAsUser, NONROOT_UID);
  assert.equal(pod.spec.securityContext.fsGroup, NONROOT_UID, "the volume is writable");
  assert.equal(container.securityContext.allowPrivilegeEscalation, false);
  assert.ok(container.resources.requests.cpu && container.resources.requests.memory);
  assert.ok(container.resources.limits.memory);
  assert.ok(pod.spec.terminationGracePeriodSeconds > 0);
  assert.ok(set.spec.template.spec.containers[0].image.endsWith(`:${denoJson.version}`));
  if (container.securityContext.readOnlyRootFilesystem) {
    const tmp = container.volumeMounts.find((m: Doc) => m.mountPath === "/tmp");
    assert.ok(tmp, "a read-only root needs a writable /tmp");
  }
});

Deno.test("k8s: the pods' environment over the image's is a valid k8s-mode configuration", () => {
  const { env, set, port } = k8s();
  const vars: Record<string, string> = {
    ...Object.fromEntries(dockerfile().env),
    HOSTNAME: `${set.metadata.name}-1`,
  };
  for (const [name, entry] of env) {
    // Kubernetes expands $(NAME) of a variable defined before it in the list.
    const value = entry.value?.replace(/\$\(([A-Z_]+)\)/g, (_: string, v: string) => vars[v]!);
    vars[name] = value ?? (name === "POD_NAMESPACE" ? "shop" : assert.fail(name));
  }
  const result = parseArgs([], vars, () => assert.fail("k8s mode reads no cluster file"));
  assert.equal(result.kind, "run");
  if (result.kind !== "run") return;
  // No unknown variables; manifests without tokens also get the warning that the API is open.
  const open = (w: string) => result.config.tokens === null && /API listens on .* without/.test(w);
  assert.deepEqual(result.warnings.filter((w) => !open(w)), []);
  assert.equal(result.config.id, "raftkv-1");
  assert.equal(result.config.clusterToken, "shop/raftkv", "a cluster token per namespace");
  assert.equal(result.config.apiPort, port("api"));
  assert.equal(result.config.rpcPort, port("rpc"));
  // A node binds the host of its own URLs unless told otherwise: a pod must say every interface.
  assert.equal(result.config.rpcListenHost, "0.0.0.0");
  assert.equal(result.config.apiListenHost, "0.0.0.0");
  assert.deepEqual(
    result.config.peers.map((peer) => peer.rpcUrl),
    [0, 1, 2].map((i) =>
      `http://raftkv-${i}.${set.spec.serviceName}.shop.svc.cluster.local:${port("rpc")}`
    ),
  );
});

// ---- Dockerfile ---------------------------------------------------------------------------------

interface Instruction {
  op: string;
  args: string;
}

function parseDockerfile(source: string): { args: Instruction[]; stages: Instruction[][] } {
  const joined = source
    .split("\n")
    .filter((line) => !/^\s*#/.test(line))
    .join("\n")
    .replace(/\\\n/g, " ");
  const instructions = joined.split("\n").map((line) => line.trim()).filter((line) => line !== "")
    .map((line) => {
      const [op = "", ...rest] = line.split(/\s+/);
      return { op: op.toUpperCase(), args: rest.join(" ") };
    });
  const args: Instruction[] = [];
  const stages: Instruction[][] = [];
  for (const instruction of instructions) {
    if (instruction.op === "FROM") stages.push([instruction]);
    else if (stages.length === 0) args.push(instruction);
    else stages.at(-1)!.push(instruction);
  }
  return { args, stages };
}

function dockerfile() {
  const { args, stages } = parseDockerfile(text("Dockerfile"));
  const last = stages.at(-1) ?? [];
  const all = (op: string) => last.filter((i) => i.op === op);
  const one = (op: string) => {
    const found = all(op);
    assert.equal(found.length, 1, `the final stage has ${found.length} ${op} instructions`);
    return found[0]!.args;
  };
  const env = new Map<string, string>();
  for (const { args } of all("ENV")) {
    for (const match of args.matchAll(/([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)/g)) {
      env.set(match[1]!, match[2]!.replace(/^"|"$/g, ""));
    }
  }
  return { args, stages, last, one, env };
}

Deno.test("Dockerfile: a build stage with the project's Deno, then a non-root runtime", () => {
  const { args, stages, one } = dockerfile();
  assert.ok(stages.length >= 2, "multi-stage");
  const [build] = stages;
  const from = build![0]!.args;
  const pinned = /^pinned=(\S+)$/m.exec(text("scripts/deno"))?.[1];
  const version = /^DENO_VERSION=(\S+)$/.exec(
    args.find((a) => a.op === "ARG" && a.args.startsWith("DENO_VERSION="))?.args ?? "",
  )?.[1];
  assert.match(from, /^denoland\/deno:\$\{DENO_VERSION\} AS build$/);
  assert.equal(version, pinned, "the image builds with the Deno version scripts/deno pins");
  assert.ok(build!.some((i) => i.op === "RUN" && i.args.includes("deno task compile")));
  assert.ok("compile" in denoJson.tasks);
  const user = one("USER").split(":")[0];
  assert.ok(user !== "root" && user !== "0", `USER ${user}`);
  assert.equal(Number(user), NONROOT_UID);
});

Deno.test("Dockerfile: healthcheck, ports, volume, stop signal and configuration", () => {
  const { one, env } = dockerfile();
  const entrypoint = JSON.parse(one("ENTRYPOINT"));
  assert.deepEqual(entrypoint, ["/raftkv"]);
  const health = one("HEALTHCHECK");
  const command = JSON.parse(health.slice(health.indexOf("CMD ") + 4));
  assert.deepEqual(command, [...entrypoint, "healthcheck"]);
  assert.deepEqual(
    one("EXPOSE").split(/\s+/).map(Number).sort(),
    [DEFAULTS.k8sApiPort, DEFAULTS.k8sRpcPort].sort(),
  );
  assert.equal(one("STOPSIGNAL"), "SIGTERM");
  const volumes: string[] = JSON.parse(one("VOLUME"));
  assert.ok(volumes.includes(env.get("RAFTKV_DATA_DIR")!), "the data directory is the volume");
  for (const name of env.keys()) assert.ok(KNOWN_ENV.has(name), `unknown variable ${name}`);
});

/** Whether `.dockerignore` lets a path into the build context (Docker's rules, simplified). */
function inContext(path: string, patterns: string[]): boolean {
  const regex = (glob: string) =>
    new RegExp(
      "^" + glob.replace(/\/+$/, "").replace(/[.+^${}()|[\]\\]/g, "\\$&")
        .replace(/\*\*\/?/g, "\u0000").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")
        .replaceAll("\u0000", "(.*/)?") +
        "$",
    );
  const parts = path.split("/");
  const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join("/"));
  let included = true;
  for (const pattern of patterns) {
    const negated = pattern.startsWith("!");
    const re = regex(negated ? pattern.slice(1) : pattern);
    if (prefixes.some((prefix) => re.test(prefix))) included = negated;
  }
  return included;
}

Deno.test("Dockerfile: the build stage copies every module the compile task needs", async () => {
  const { stages } = dockerfile();
  const copied = stages[0]!.filter((i) => i.op === "COPY").flatMap((i) =>
    i.args.split(/\s+/).slice(0, -1).map((source) => source.replace(/^\.\//, ""))
  );
  const ignore = text(".dockerignore").split("\n").map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
  const { stdout, success } = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "scripts/compile.ts"],
    cwd: ROOT,
    stderr: "inherit",
  }).output();
  assert.ok(success, "deno info failed");
  const modules: { specifier: string }[] = JSON.parse(new TextDecoder().decode(stdout)).modules;
  const files = modules.map((m) => m.specifier).filter((s) => s.startsWith("file:"))
    .map((s) => fileURLToPath(s).slice(ROOT.length));
  assert.ok(files.includes("main.ts") && files.includes("deno.json"));
  const missing = files.filter((file) =>
    !copied.some((source) => source.endsWith("/") ? file.startsWith(source) : file === source)
  );
  assert.deepEqual(missing, [], "not copied into the build stage");
  const ignored = files.filter((file) => !inContext(file, ignore));
  assert.deepEqual(ignored, [], "excluded from the build context by .dockerignore");
  assert.equal(inContext("data/node-1/wal", ignore), false);
  assert.equal(inContext("src/kv/state_machine_test.ts", ignore), false);
});

// ---- scripts/docker-cluster.sh ------------------------------------------------------------------

const SCRIPT = "scripts/docker-cluster.sh";

async function bash(args: string[], env: Record<string, string> = {}) {
  const { code, stdout, stderr } = await new Deno.Command("bash", {
    args,
    cwd: ROOT,
    env,
    stdin: "null",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, stdout: decode(stdout), stderr: decode(stderr) };
}

/**
 * Whether a `shellcheck` executable is on PATH, looked up without running it (a process started
 * while every test file loads at once could fail for want of resources, and skip the test).
 */
function hasShellcheck(): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      const info = Deno.statSync(`${dir}/shellcheck`);
      if (info.isFile && ((info.mode ?? 0) & 0o111) !== 0) return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

Deno.test("docker-cluster.sh: bash -n accepts it", async () => {
  const result = await bash(["-n", SCRIPT]);
  assert.equal(result.code, 0, result.stderr);
});

Deno.test({
  name: hasShellcheck()
    ? "docker-cluster.sh: shellcheck finds nothing"
    : "docker-cluster.sh: shellcheck finds nothing (skipped: shellcheck not installed)",
  ignore: !hasShellcheck(),
  async fn() {
    const { code, stdout, stderr } = await new Deno.Command("shellcheck", {
      args: [SCRIPT],
      cwd: ROOT,
    }).output();
    const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
    assert.equal(code, 0, decode(stdout) + decode(stderr));
  },
});

Deno.test("docker-cluster.sh: the cluster file names the containers on the default ports", () => {
  const peers = parseClusterFile(text("deploy/docker/cluster.config.json"), "cluster file");
  assert.deepEqual(peers.map((peer) => peer.id), ["raftkv-1", "raftkv-2", "raftkv-3"]);
  for (const peer of peers) {
    for (const [url, port] of [[peer.rpcUrl, DEFAULTS.k8sRpcPort], [peer.apiUrl, 7777]] as const) {
      assert.equal(new URL(url).hostname, peer.id, "peers are addressed by container name");
      assert.equal(urlPort(url), port);
    }
  }
});

Deno.test("docker-cluster.sh: the containers listen on every interface, as the image says", () => {
  // Without RAFTKV_LISTEN_HOST a node would bind the host of its own URLs: its container name.
  const env = Object.fromEntries(dockerfile().env);
  assert.equal(env.RAFTKV_LISTEN_HOST, "0.0.0.0");
  assert.ok(
    !/RAFTKV_LISTEN_HOST/.test(text("scripts/docker-cluster.sh")),
    "the script overrides it",
  );
  const file = text("deploy/docker/cluster.config.json");
  const result = parseArgs([], { ...env, RAFTKV_ID: "raftkv-2" }, () => file);
  assert.equal(result.kind, "run");
  if (result.kind !== "run") return;
  assert.equal(result.config.rpcListenHost, "0.0.0.0");
  assert.equal(result.config.apiListenHost, "0.0.0.0");
});

Deno.test("docker-cluster.sh: up and down issue the expected engine commands", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-docker-stub-" });
  try {
    const log = `${dir}/log`;
    const stub = `${dir}/docker`;
    // Records each call; `inspect` succeeds only when STUB_EXISTS=1.
    await Deno.writeTextFile(
      stub,
      `#!/usr/bin/env bash\necho "$*" >> "${log}"\n` +
        `if [[ "$2" == inspect ]]; then [[ "\${STUB_EXISTS:-0}" == 1 ]]; exit; fi\nexit 0\n`,
    );
    await Deno.chmod(stub, 0o755);
    const env = { DOCKER: stub, WAIT: "0", PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" };

    const up = await bash([SCRIPT, "up"], env);
    assert.equal(up.code, 0, up.stderr);
    const upCalls = (await Deno.readTextFile(log)).trim().split("\n");
    const root = ROOT.replace(/\/$/, "");
    assert.ok(upCalls.includes(`build -t raftkv:local ${root}`), upCalls.join("\n"));
    assert.ok(upCalls.includes("network create raftkv"));
    const { env: imageEnv } = dockerfile();
    const mountTarget = imageEnv.get("RAFTKV_CLUSTER_CONFIG_PATH");
    for (const n of [1, 2, 3]) {
      const run = upCalls.find((call) => call.includes(`--name raftkv-${n} `));
      assert.ok(run, `no run of raftkv-${n}`);
      for (
        const part of [
          "run --detach",
          "--network raftkv",
          `--publish ${7776 + n}:7777`,
          `--volume raftkv-${n}-data:${imageEnv.get("RAFTKV_DATA_DIR")}`,
          `--volume ${root}/deploy/docker/cluster.config.json:${mountTarget}:ro`,
          `--env RAFTKV_ID=raftkv-${n}`,
        ]
      ) {
        assert.ok(run.includes(part), `raftkv-${n}: no "${part}" in: ${run}`);
      }
      assert.ok(run.endsWith(" raftkv:local"));
    }

    await Deno.remove(log);
    const down = await bash([SCRIPT, "down", "--volumes"], { ...env, STUB_EXISTS: "1" });
    assert.equal(down.code, 0, down.stderr);
    const downCalls = (await Deno.readTextFile(log)).trim().split("\n");
    for (const n of [1, 2, 3]) {
      assert.ok(downCalls.includes(`rm --force raftkv-${n}`));
      assert.ok(downCalls.includes(`volume rm raftkv-${n}-data`));
    }
    assert.ok(downCalls.includes("network rm raftkv"));

    const bad = await bash([SCRIPT, "down", "--everything"], env);
    assert.equal(bad.code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("docker-cluster.sh: TLS_DIR mounts the secrets and configures a valid TLS node", async () => {
  const dir = await Deno.makeTempDir({ prefix: "raftkv-docker-tls-" });
  try {
    const tls = `${dir}/tls`;
    await Deno.mkdir(tls);
    const nodes = ["raftkv-1", "raftkv-2", "raftkv-3"];
    await makeCertificates(tls, { nodes, hosts: nodes });
    await Deno.writeTextFile(
      `${tls}/tokens.json`,
      JSON.stringify([{ token: "0123456789abcdef0123", role: "admin", name: "ops" }]),
    );
    const log = `${dir}/log`;
    const stub = `${dir}/docker`;
    await Deno.writeTextFile(
      stub,
      `#!/usr/bin/env bash\necho "$*" >> "${log}"\n` +
        `if [[ "$2" == inspect ]]; then exit 1; fi\nexit 0\n`,
    );
    await Deno.chmod(stub, 0o755);
    const env = {
      DOCKER: stub,
      WAIT: "0",
      SKIP_BUILD: "1",
      TLS_DIR: tls,
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    };
    const up = await bash([SCRIPT, "up"], env);
    assert.equal(up.code, 0, up.stderr);
    const calls = (await Deno.readTextFile(log)).trim().split("\n");
    const { env: imageEnv } = dockerfile();
    const secrets = "/etc/raftkv/secrets";
    for (const node of nodes) {
      const run = calls.find((call) => call.includes(`--name ${node} `));
      assert.ok(run, `no run of ${node}`);
      assert.ok(run.includes(`--volume ${tls}:${secrets}:ro`), run);
      assert.ok(run.includes("deploy/docker/cluster.tls.config.json:"), run);
      // The container's environment over the image's, with the mounted files, is a valid
      // configuration of a TLS node with tokens.
      const vars: Record<string, string> = Object.fromEntries(imageEnv);
      for (const m of run.matchAll(/--env (\S+?)=(\S+)/g)) vars[m[1]!] = m[2]!;
      const files = (path: string): string => {
        if (path === imageEnv.get("RAFTKV_CLUSTER_CONFIG_PATH")) {
          return text("deploy/docker/cluster.tls.config.json");
        }
        assert.ok(path.startsWith(`${secrets}/`), `reads ${path} outside the secrets`);
        return Deno.readTextFileSync(`${tls}/${path.slice(secrets.length + 1)}`);
      };
      const result = parseArgs([], vars, files);
      assert.equal(result.kind, "run");
      if (result.kind !== "run") return;
      assert.equal(result.config.id, node);
      assert.ok(result.config.peerTls, "peers use mutual TLS");
      assert.ok(result.config.apiTls, "the API serves HTTPS");
      assert.equal(result.config.tokens?.length, 1);
      assert.ok(result.config.peers.every((p) => p.rpcUrl.startsWith("https://")));
      assert.equal(vars.RAFTKV_HEALTHCHECK_CACERT, `${secrets}/ca.crt`);
      assert.deepEqual(result.warnings, []);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- deploy/k8s/tls: the TLS overlay ------------------------------------------------------------

const TLS_DIR = `${ROOT}deploy/k8s/tls/`;
/** The variables of the command-line client, which a `kubectl exec`'d client reads in a pod. */
const CLIENT_ENV = new Set(CLIENT_ENV_VARS);

function yamlFile(path: string): Doc {
  const docs = parseAllDocuments(Deno.readTextFileSync(path));
  for (const doc of docs) assert.deepEqual(doc.errors, [], `YAML errors in ${path}`);
  return docs[0]!.toJS();
}

/**
 * The `deno task certs` command the overlay's comments tell users to run, as arguments of
 * scripts/certs.ts with `--dir` replaced by `dir`.
 */
function documentedCertsArgs(dir: string): string[] {
  const lines = Deno.readTextFileSync(`${TLS_DIR}kustomization.yaml`).split("\n")
    .map((line) => line.replace(/^#\s*/, ""));
  const start = lines.findIndex((line) => line.startsWith("deno task certs "));
  assert.ok(start !== -1, "the overlay's comments show no `deno task certs` command");
  let command = "";
  for (let i = start; i < lines.length; i++) {
    const line = lines[i]!.trimEnd();
    command += ` ${line.replace(/\\$/, "")}`;
    if (!line.endsWith("\\")) break;
  }
  const words = [...command.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);
  assert.deepEqual(words.slice(0, 3), ["deno", "task", "certs"]);
  const args = words.slice(3);
  const at = args.indexOf("--dir");
  assert.ok(at !== -1 && args[at + 1] === "deploy/k8s/tls/secrets", args.join(" "));
  args[at + 1] = dir;
  return args;
}

/** Runs the documented `deno task certs` command into `dir`, then removes the CA key as told. */
async function documentedSecrets(dir: string): Promise<string[]> {
  const args = documentedCertsArgs(dir);
  const made = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}scripts/certs.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(made.code, 0, new TextDecoder().decode(made.stderr));
  await Deno.remove(`${dir}/ca.key`);
  return args;
}

/**
 * A container's environment as Kubernetes sets it: in list order, each `$(NAME)` replaced by
 * the value of a variable listed before it (others are left as written), `valueFrom` resolved
 * by `from`. Returns the variables and the references left unexpanded.
 */
function expandEnv(
  entries: Doc[],
  from: (entry: Doc) => string,
): { vars: Record<string, string>; unexpanded: string[] } {
  const vars: Record<string, string> = {};
  const unexpanded: string[] = [];
  for (const entry of entries) {
    vars[entry.name] = entry.value === undefined
      ? from(entry)
      : String(entry.value).replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (ref, name: string) => {
        if (name in vars) return vars[name]!;
        unexpanded.push(`${entry.name}: ${ref}`);
        return ref;
      });
  }
  return { vars, unexpanded };
}

/** A Secret's `data` value as text. */
function base64Text(value: string): string {
  return new TextDecoder().decode(Uint8Array.from(atob(value), (c) => c.charCodeAt(0)));
}

/** Whether one of the certificate's names covers `host` (wildcards as TLS clients read them). */
function certificateNames(pem: string, host: string): boolean {
  return new X509Certificate(pem).checkHost(host) !== undefined;
}

Deno.test("k8s: the base and the tls overlay are sibling folders, as kustomize requires", () => {
  // kustomize refuses an overlay whose base folder contains it ("cycle detected").
  const inK8s = [...Deno.readDirSync(`${ROOT}deploy/k8s/`)];
  assert.ok(
    !inK8s.some((entry) => entry.name === "kustomization.yaml"),
    "deploy/k8s/ itself holds a kustomization, which contains deploy/k8s/tls/",
  );
  for (const dir of inK8s.filter((entry) => entry.isDirectory).map((entry) => entry.name)) {
    const base = `${ROOT}deploy/k8s/${dir}/`;
    const kustomization = yamlFile(`${base}kustomization.yaml`);
    for (const resource of kustomization.resources ?? []) {
      const target = new URL(resource, `file://${base}`).pathname.replace(/\/?$/, "/");
      assert.ok(
        !base.startsWith(target),
        `deploy/k8s/${dir} lists ${resource}, which contains it: kustomize refuses that`,
      );
    }
  }
  assert.deepEqual(yamlFile(`${TLS_DIR}kustomization.yaml`).resources, ["../base"]);
});

Deno.test("k8s tls overlay: every pod reads its own certificate and the tokens from Secrets, and a pod beyond the bootstrap size joins over HTTPS", async () => {
  const kustomization = yamlFile(`${TLS_DIR}kustomization.yaml`);
  const patch = yamlFile(`${TLS_DIR}${kustomization.patches[0].path}`);
  const { set, env: baseEnv } = k8s();
  assert.equal(patch.kind, "StatefulSet");
  assert.equal(patch.metadata.name, set.metadata.name);
  const podSpec = patch.spec.template.spec;
  const container = podSpec.containers[0];
  for (const probe of ["livenessProbe", "readinessProbe", "startupProbe"]) {
    assert.equal(container[probe].httpGet.scheme, "HTTPS", probe);
  }
  // Which Secret key each mounted path is.
  const generated = new Map<string, string[]>(
    kustomization.secretGenerator.map((g: Doc) => [
      g.name,
      g.files.map((f: string) => f.split("/").at(-1)),
    ]),
  );
  const mounts = new Map<string, string[]>();
  for (const m of container.volumeMounts) {
    const volume = podSpec.volumes.find((v: Doc) => v.name === m.name);
    const keys = generated.get(volume.secret.secretName);
    assert.ok(keys, `${m.name} mounts a generated Secret`);
    assert.equal(m.readOnly, true);
    mounts.set(m.mountPath, keys);
  }
  const dir = await Deno.makeTempDir({ prefix: "raftkv-k8s-tls-" });
  try {
    await documentedSecrets(dir);
    const secretKey = (ref: Doc): string => {
      assert.ok(generated.get(ref.name)?.includes(ref.key), `no Secret ${ref.name}/${ref.key}`);
      return Deno.readTextFileSync(`${dir}/${ref.key}`);
    };
    // The bootstrap pods and the first one a scale-up adds, in the documented namespace.
    const pods = Array.from(
      { length: set.spec.replicas + 1 },
      (_, i) => `${set.metadata.name}-${i}`,
    );
    const tokens: Doc[] = JSON.parse(Deno.readTextFileSync(`${dir}/tokens.json`));
    for (const pod of pods) {
      const vars: Record<string, string> = {
        ...Object.fromEntries(dockerfile().env),
        HOSTNAME: pod,
        POD_NAMESPACE: "raftkv",
      };
      for (const [name, entry] of baseEnv) if (entry.value !== undefined) vars[name] = entry.value;
      const client: Record<string, string> = {};
      for (const e of container.env) {
        if (e.name === "POD_NAME") {
          assert.equal(e.valueFrom.fieldRef.fieldPath, "metadata.name");
          continue;
        }
        const value = e.valueFrom?.secretKeyRef
          ? secretKey(e.valueFrom.secretKeyRef)
          : String(e.value).replaceAll("$(POD_NAME)", pod);
        if (CLIENT_ENV.has(e.name)) client[e.name] = value;
        else {
          assert.ok(KNOWN_ENV.has(e.name), `${e.name} is not a variable the node reads`);
          vars[e.name] = value;
        }
      }
      const files = (path: string): string => {
        const mount = [...mounts.keys()].find((m) => path.startsWith(`${m}/`));
        assert.ok(mount, `reads ${path}, which no Secret holds`);
        const key = path.slice(mount.length + 1);
        assert.ok(mounts.get(mount)!.includes(key), `the Secret has no key ${key}`);
        return Deno.readTextFileSync(`${dir}/${key}`);
      };
      const result = parseArgs([], vars, files);
      assert.equal(result.kind, "run");
      if (result.kind !== "run") return;
      assert.equal(result.config.id, pod);
      assert.ok(result.config.peerTls && result.config.apiTls, `${pod}: TLS on both ports`);
      assert.equal(result.config.tokens?.length, tokens.length);
      assert.ok(result.config.peers.every((p) => p.rpcUrl.startsWith("https://")));
      assert.ok(result.config.peers.every((p) => p.apiUrl.startsWith("https://")));
      assert.deepEqual(result.warnings, []);

      // The join (and a client run in the pod) sends an admin token of the tokens file...
      const admin = tokens.find((t) => t.token === client.RAFTKV_TOKEN);
      assert.equal(admin?.role, "admin", "RAFTKV_TOKEN is an admin token of tokens.json");
      // ... and a client run in the pod reaches the pod's own HTTPS API, trusting the CA.
      const endpoint = new URL(client.RAFTKV_ENDPOINTS ?? "");
      assert.equal(endpoint.protocol, "https:");
      assert.equal(Number(endpoint.port), result.config.apiPort);
      assert.equal(client.RAFTKV_CACERT, result.config.peerTls.caPath);
      const ordinal = Number(pod.split("-").at(-1));
      if (ordinal < set.spec.replicas) {
        assert.equal(result.config.join, null, `${pod} bootstraps`);
        continue;
      }
      // A pod beyond the bootstrap size joins over HTTPS at a name every member's certificate
      // holds (the client Service sends it to any of them).
      const join = new URL(result.config.join ?? "");
      assert.equal(join.protocol, "https:", `${pod} joins over HTTPS`);
      assert.equal(Number(join.port), result.config.apiPort);
      for (const member of pods.slice(0, set.spec.replicas)) {
        const pem = Deno.readTextFileSync(`${dir}/${member}.crt`);
        assert.ok(certificateNames(pem, join.hostname), `${member}.crt names ${join.hostname}`);
        assert.ok(certificateNames(pem, endpoint.hostname), `${member}.crt names localhost`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Whether a `kubectl` executable is on PATH, looked up without running it (like
 * {@linkcode hasShellcheck}).
 */
function hasKubectl(): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      const info = Deno.statSync(`${dir}/kubectl`);
      if (info.isFile && ((info.mode ?? 0) & 0o111) !== 0) return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

/** `kubectl kustomize <dir>`: the manifests the folder renders to (offline). */
async function kustomize(dir: string): Promise<Doc[]> {
  const { code, stdout, stderr } = await new Deno.Command("kubectl", {
    args: ["kustomize", dir],
    stdin: "null",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  assert.equal(code, 0, `kubectl kustomize ${dir}: ${decode(stderr)}`);
  const docs = parseAllDocuments(decode(stdout));
  for (const doc of docs) assert.deepEqual(doc.errors, []);
  return docs.map((doc) => doc.toJS()).filter((doc) => doc !== null);
}

Deno.test({
  name: hasKubectl()
    ? "k8s: kubectl kustomize renders the base and the tls overlay, with its TLS settings"
    : "k8s: kubectl kustomize renders the base and the tls overlay (skipped: kubectl not installed)",
  ignore: !hasKubectl(),
  async fn() {
    // A copy of deploy/k8s with the documented secrets made in the overlay's folder.
    const root = await Deno.makeTempDir({ prefix: "raftkv-kustomize-" });
    try {
      for (const folder of ["base", "tls"]) {
        await Deno.mkdir(`${root}/${folder}`);
        for (const entry of Deno.readDirSync(`${ROOT}deploy/k8s/${folder}`)) {
          if (entry.isFile) {
            await Deno.copyFile(
              `${ROOT}deploy/k8s/${folder}/${entry.name}`,
              `${root}/${folder}/${entry.name}`,
            );
          }
        }
      }
      await documentedSecrets(`${root}/tls/secrets`);

      const base = await kustomize(`${root}/base`);
      const plain = k8s();
      assert.deepEqual(
        base.map((doc) => `${doc.kind}/${doc.metadata.name}`).sort(),
        plain.docs.map((doc: Doc) => `${doc.kind}/${doc.metadata.name}`).sort(),
      );
      const baseSet = only(base, "StatefulSet");
      const baseContainer = baseSet.spec.template.spec.containers[0];
      assert.deepEqual(baseContainer.env, plain.container.env);

      const tls = await kustomize(`${root}/tls`);
      const set = only(tls, "StatefulSet");
      const pod = set.spec.template.spec;
      const container = pod.containers.find((c: Doc) => c.name === "raftkv");
      for (const probe of ["livenessProbe", "readinessProbe", "startupProbe"]) {
        assert.deepEqual(
          container[probe].httpGet,
          { ...baseContainer[probe].httpGet, scheme: "HTTPS" },
          `${probe}: HTTPS, on the base's path and port`,
        );
      }
      // The generated Secrets (names with a content hash) are what the pods mount and read.
      const secrets = new Map<string, Doc>(
        tls.filter((doc) => doc.kind === "Secret").map((doc) => [doc.metadata.name, doc]),
      );
      const volumes = new Map<string, Doc>(pod.volumes.map((v: Doc) => [v.name, v]));
      const files = new Map<string, string>();
      for (const mount of container.volumeMounts) {
        const secretName = volumes.get(mount.name)?.secret?.secretName;
        if (secretName === undefined) continue;
        const secret = secrets.get(secretName);
        assert.ok(secret, `${mount.name} mounts ${secretName}, which the output does not hold`);
        for (const [key, value] of Object.entries(secret.data as Record<string, string>)) {
          files.set(`${mount.mountPath}/${key}`, base64Text(value));
        }
      }
      const names = new Set(container.env.map((e: Doc) => e.name));
      for (
        const name of [
          "RAFTKV_PEER_CA",
          "RAFTKV_PEER_CERT",
          "RAFTKV_PEER_KEY",
          "RAFTKV_API_CERT",
          "RAFTKV_API_KEY",
          "RAFTKV_TOKENS_FILE",
          "RAFTKV_TOKEN",
        ]
      ) {
        assert.ok(names.has(name), `the rendered StatefulSet sets no ${name}`);
      }
      const tokens: Doc[] = JSON.parse(
        files.get(container.env.find((e: Doc) => e.name === "RAFTKV_TOKENS_FILE").value)!,
      );
      for (const ordinal of [0, set.spec.replicas]) {
        const name = `${set.metadata.name}-${ordinal}`;
        const { vars, unexpanded } = expandEnv(container.env, (entry) => {
          const field = entry.valueFrom?.fieldRef?.fieldPath;
          if (field === "metadata.name") return name;
          if (field === "metadata.namespace") return "raftkv";
          const ref = entry.valueFrom?.secretKeyRef;
          const data = secrets.get(ref?.name)?.data?.[ref?.key];
          assert.ok(data !== undefined, `${entry.name}: no Secret ${ref?.name} with ${ref?.key}`);
          return base64Text(data);
        });
        assert.deepEqual(unexpanded, [], "references to variables not listed before them");
        const node = Object.fromEntries(
          Object.entries(vars).filter(([key]) => !CLIENT_ENV.has(key) && !K8S_ENV.has(key)),
        );
        const result = parseArgs(
          [],
          {
            ...Object.fromEntries(dockerfile().env),
            ...node,
            HOSTNAME: name,
            POD_NAMESPACE: vars.POD_NAMESPACE!,
          },
          (path) => files.get(path) ?? assert.fail(`${name} reads ${path}, which no Secret holds`),
        );
        assert.equal(result.kind, "run");
        if (result.kind !== "run") return;
        assert.deepEqual(result.warnings, []);
        assert.ok(result.config.peerTls && result.config.apiTls, `${name}: TLS on both ports`);
        assert.equal(tokens.find((t) => t.token === vars.RAFTKV_TOKEN)?.role, "admin");
        if (ordinal === 0) {
          assert.equal(result.config.join, null);
          continue;
        }
        // The pod a scale-up adds has a certificate and joins over HTTPS, at a name its
        // members' certificates hold.
        const join = new URL(result.config.join ?? "");
        assert.equal(join.protocol, "https:");
        const memberCert = files.get(
          `${container.volumeMounts[0].mountPath}/${set.metadata.name}-0.crt`,
        );
        assert.ok(memberCert && certificateNames(memberCert, join.hostname), join.hostname);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("docs: kubectl exec runs /raftkv (not on PATH in the image) in the manifests' namespace", () => {
  // The image's only file is /raftkv (see the Dockerfile's ENTRYPOINT): a bare `raftkv` is not
  // found. Every manifest and the README use the namespace raftkv.
  assert.deepEqual(JSON.parse(dockerfile().one("ENTRYPOINT")), ["/raftkv"]);
  const sources = [
    "README.md",
    ...["base", "tls"].flatMap((folder) =>
      [...Deno.readDirSync(`${ROOT}deploy/k8s/${folder}`)]
        .filter((entry) => entry.name.endsWith(".yaml"))
        .map((entry) => `deploy/k8s/${folder}/${entry.name}`)
    ),
  ];
  let commands = 0;
  for (const source of sources) {
    for (const [command] of text(source).matchAll(/kubectl exec\b[^`\n)]*/g)) {
      if (!command.includes(" -- ")) continue; // prose about the command, not the command
      commands++;
      assert.match(command, /\s(-n|--namespace)[ =]raftkv\s/, `${source}: ${command}`);
      assert.match(command, /\s--\s\/raftkv\s/, `${source}: ${command}`);
    }
  }
  assert.ok(commands >= 2, `found only ${commands} kubectl exec commands`);
});
