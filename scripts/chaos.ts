/**
 * Chaos run against a real raftkv cluster: node processes on free ports, concurrent clients, and
 * a nemesis that kills (SIGKILL), stops (SIGTERM), pauses (SIGSTOP/SIGCONT) and partitions nodes
 * (symmetric, one-way, leader-isolating, minority/majority splits, single links) through TCP
 * proxies on the peer links. At the end everything is healed, every key is read once more, and
 * the history is checked for linearizability and lost acknowledged writes.
 *
 * ```sh
 * deno task chaos --duration 300 --nodes 3 [--seed N] [--clients 5] [--keys 8]
 *   [--snapshot-threshold 500] [--lease-reads 0.3]
 *   [--faults kill,stop,pause,isolate,oneway,split,links,slow,rotate,full,diskfail] [--tls]
 *   [--echo] [--keep] [-- node flags...]
 * ```
 *
 * `--tls` runs the cluster with every security setting on: mutual TLS between peers (through the
 * proxies, which pass TLS through), HTTPS on the API and bearer tokens; the clients trust the CA
 * and send a write token; the `rotate` fault (TLS runs only) renews the certificates and sends
 * SIGHUP to one node, to all, or to none (the nodes then find the changed files themselves).
 *
 * Prints progress and a summary (lines starting with `chaos:`); on a violation also the failing
 * key's timeline, the anomalies and the node logs, and exits with status 1.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { intOption, UsageError } from "../testing/args.ts";
import { FAULT_KINDS, type FaultKind, randomSeed, runChaos } from "../testing/chaos_lib.ts";

const _USAGE = `usage: deno task chaos [--duration SECONDS] [--nodes N] [--seed N] [--clients N]
  [--keys N] [--snapshot-threshold N] [--lease-reads 0.3] [--faults ${
  FAULT_KINDS.join(",")
}] [--tls] [--echo] [--keep]
  [-- node flags...]

  --duration  seconds of faults (default 60)
  --nodes     cluster size (default 3)
  --seed      seed of every random choice (default: random, printed)
  --clients   concurrent clients (default 5)
  --keys      keys the clients use (default 8)
  --snapshot-threshold  the nodes' --snapshot-threshold (default 500, so snapshots happen)
  --lease-reads  the share of reads sent with consistency=lease (default 0.3)
  --faults    fault kinds to inject (default: all)
  --tls       peer mutual TLS, HTTPS API and tokens (clients send a write token)
  --echo      copy the nodes' output to stderr
  --keep      keep the data directory`;

async function _main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      duration: { type: "string" },
      nodes: { type: "string" },
      seed: { type: "string" },
      clients: { type: "string" },
      keys: { type: "string" },
      "snapshot-threshold": { type: "string" },
      "lease-reads": { type: "string" },
      faults: { type: "string" },
      tls: { type: "boolean", default: false },
      echo: { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(_USAGE);
    return 0;
  }
  const faults = values.faults === undefined
    ? FAULT_KINDS
    : values.faults.split(",").map((name) => name.trim()).filter((name) => name !== "");
  for (const name of faults) {
    if (!(FAULT_KINDS as readonly string[]).includes(name)) {
      throw new UsageError(`unknown fault kind ${JSON.stringify(name)}; known: ${FAULT_KINDS}`);
    }
  }
  const seed = intOption("seed", values.seed, randomSeed(), 0);
  const durationS = intOption("duration", values.duration, 60, 1);
  const nodes = intOption("nodes", values.nodes, 3, 1);
  const clients = intOption("clients", values.clients, 5, 1);
  const keys = intOption("keys", values.keys, 8, 1);
  const snapshotThreshold = intOption("snapshot-threshold", values["snapshot-threshold"], 500, 1);
  const leaseReads = Number(values["lease-reads"] ?? 0.3);
  if (!(leaseReads >= 0 && leaseReads <= 1)) {
    throw new UsageError(
      `--lease-reads must be a number from 0 to 1, got ${values["lease-reads"]}`,
    );
  }
  console.log(
    `chaos: starting seed ${seed}, ${nodes} nodes, ${clients} clients, ${keys} keys, ${durationS} s${
      values.tls ? ", TLS and tokens" : ""
    }`,
  );
  const started = performance.now();
  const report = await runChaos({
    seed,
    durationMs: durationS * 1000,
    nodes,
    clients,
    keys,
    snapshotThreshold,
    leaseReads,
    faults: faults as FaultKind[],
    nodeFlags: positionals,
    checkTimeoutMs: 120_000,
    echo: values.echo,
    keepData: values.keep,
    tls: values.tls,
    log: (line) => {
      const at = ((performance.now() - started) / 1000).toFixed(1).padStart(6);
      console.log(`[${at} s] ${line}`);
    },
  });
  if (!report.ok) console.log(report.details);
  for (const line of report.summary) console.log(`chaos: ${line}`);
  console.log(`chaos: ${report.ok ? "PASS" : "FAIL"} (replay the schedule with --seed ${seed})`);
  return report.ok ? 0 : 1;
}

if (import.meta.main) {
  try {
    Deno.exit(await _main(Deno.args));
  } catch (error) {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith("ERR_PARSE")) {
      console.error(`chaos: ${(error as Error).message}\n${_USAGE}`);
      Deno.exit(2);
    }
    throw error;
  }
}
