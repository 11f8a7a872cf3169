/**
 * Soak test: runs the deterministic cluster simulation (`testing/sim/simulator.ts`: the real node,
 * storage and recovery code on a simulated disk, clock and network) over many seeds, or replays
 * one seed with its full trace.
 *
 * ```sh
 * deno run -A scripts/soak.ts --seeds 10000 [--start 1] [--nodes 3|5|mixed] [--duration-ms N] [--jobs 2]
 * deno run -A scripts/soak.ts --seed 1234 --nodes 5 [--duration-ms N]   # replay one, with its trace
 * ```
 *
 * Other options (as printed in a failure's replay command): `--faults '<json>'` overrides the fault
 * mix, `--clients N`, `--keys N`, `--lease-holders N` (clients holding leases; default 1),
 * `--lease-put-grants F` grants that fraction of their leases with a put (default 0.25; 0 replays
 * runs from before such grants),
 * `--lease-reads F` sends that fraction of reads with the "lease"
 * consistency, `--long-values F` makes that fraction of writes put values too long for a replayed
 * answer to keep (default: drawn per seed, see `longValuesForSeed`), `--snapshot-threshold N` takes a snapshot every N applied entries (0: never; `on`:
 * a threshold drawn per seed from 20, 50 and 200, with the seed's catch-up entries; default: drawn
 * per seed, off for about a quarter of the seeds), `--catch-up-entries N` keeps N entries before a
 * snapshot, `--disk-fault <name>` runs on a misbehaving disk (see `DiskFault` in the simulator),
 * `--quota-bytes N` gives the nodes that quota (0: none; default: drawn per seed, see
 * `quotaForSeed`),
 * `--disable check,...` switches checks off, `--no-trace` replays without the trace.
 *
 * Prints progress and a summary; exits with status 1 if any seed fails.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { intOption, UsageError } from "../testing/args.ts";
import {
  type CheckName,
  DEFAULT_DURATION_MS,
  DISK_FAULTS,
  type DiskFault,
  type FaultOptions,
  longValuesForSeed,
  nodesForSeed,
  runSimulation,
  SimulationFailure,
  type SimulationOptions,
  snapshotDefaults,
} from "../testing/sim/simulator.ts";
import { runSoakSeed, type SoakReply } from "../testing/sim/soak_worker.ts";

const _USAGE = `usage:
  deno run -A scripts/soak.ts --seeds N [--start S] [--nodes 3|5|mixed] [--duration-ms N] [--jobs J]
  deno run -A scripts/soak.ts --seed N [--nodes 3|5] [--duration-ms N] [--no-trace]
options shared by both: --faults '<json>' --clients N --keys N --lease-holders N --lease-put-grants FRACTION
  --lease-reads FRACTION --long-values FRACTION --watchers N --watch-fault repeat|skip|index --waiters N
  --wait-fault early|late --backup-readers N
  --snapshot-threshold N|on --catch-up-entries N --disable check,check --quota-bytes N
  --disk-fault ${DISK_FAULTS.join("|")}`;

interface _Common {
  nodes: "3" | "5" | "mixed";
  durationMs: number;
  faults?: Partial<FaultOptions>;
  clients?: number;
  keys?: number;
  diskFault?: DiskFault;
  quotaBytes?: number;
  watchers?: number;
  watchFault?: "repeat" | "skip" | "index";
  waiters?: number;
  waitFault?: "early" | "late";
  backupReaders?: number;
  leaseReads?: number;
  longValues?: number;
  leaseHolders?: number;
  leasePutGrants?: number;
  /** A threshold for every seed, or "on": drawn per seed (never 0). Default: drawn per seed. */
  snapshotThreshold?: number | "on";
  catchUpEntries?: number;
  disabledChecks?: CheckName[];
}

function _options(seed: number, common: _Common): SimulationOptions {
  const options: SimulationOptions = {
    seed,
    nodes: common.nodes === "mixed" ? nodesForSeed(seed) : common.nodes === "5" ? 5 : 3,
    durationMs: common.durationMs,
  };
  if (common.faults) options.faults = common.faults;
  if (common.clients !== undefined) options.clients = common.clients;
  if (common.keys !== undefined) options.keys = common.keys;
  if (common.leaseReads !== undefined) options.leaseReads = common.leaseReads;
  // Drawn per seed unless given, and explicit, so that a failure's replay command carries it.
  options.longValues = common.longValues ?? longValuesForSeed(seed);
  if (common.leaseHolders !== undefined) options.leaseHolders = common.leaseHolders;
  if (common.leasePutGrants !== undefined) options.leasePutGrants = common.leasePutGrants;
  if (common.snapshotThreshold === "on") {
    // Explicit per seed, so that a failure's replay command carries them.
    const drawn = snapshotDefaults(seed, true);
    options.snapshotThreshold = drawn.snapshotThreshold;
    options.catchUpEntries = common.catchUpEntries ?? drawn.catchUpEntries;
  } else {
    if (common.snapshotThreshold !== undefined) {
      options.snapshotThreshold = common.snapshotThreshold;
    }
    if (common.catchUpEntries !== undefined) options.catchUpEntries = common.catchUpEntries;
  }
  if (common.diskFault) options.diskFault = common.diskFault;
  if (common.quotaBytes !== undefined) options.quotaBytes = common.quotaBytes;
  if (common.watchers !== undefined) options.watchers = common.watchers;
  if (common.watchFault) options.watchFault = common.watchFault;
  if (common.waiters !== undefined) options.waiters = common.waiters;
  if (common.waitFault) options.waitFault = common.waitFault;
  if (common.backupReaders !== undefined) options.backupReaders = common.backupReaders;
  if (common.disabledChecks) options.disabledChecks = common.disabledChecks;
  return options;
}

async function _replay(seed: number, common: _Common, trace: boolean): Promise<number> {
  const options = _options(seed, common);
  if (trace) options.onTrace = (line) => console.log(line);
  try {
    const r = await runSimulation(options);
    console.log(
      `\nseed ${seed}: ok (profile ${r.profile}, snapshot threshold ${r.snapshotThreshold}, ` +
        `catch-up entries ${r.catchUpEntries}, digest ${r.digest})`,
    );
    console.log(`faults: ${JSON.stringify(r.faults)}`);
    console.log(`stats: ${JSON.stringify(r.stats)}`);
    return 0;
  } catch (e) {
    if (!(e instanceof SimulationFailure)) throw e;
    console.log(`\n${e.message}`);
    return 1;
  }
}

function _thresholdText(common: _Common): string {
  if (common.snapshotThreshold === "on") return "drawn per seed from 20, 50, 200";
  if (common.snapshotThreshold !== undefined) return String(common.snapshotThreshold);
  return "drawn per seed from 0 (off), 20, 50, 200";
}

async function _soak(start: number, count: number, jobs: number, common: _Common): Promise<number> {
  const began = performance.now();
  const totals: Record<string, number> = {};
  const profiles: Record<string, number> = {};
  const unknown: number[] = [];
  const failures: SoakReply[] = [];
  let done = 0;
  let maxTerm = 0;
  let lastReport = began;
  const every = Math.max(1, Math.min(500, Math.floor(count / 20)));

  const onReply = (r: SoakReply) => {
    done++;
    if (r.ok) {
      profiles[r.profile] = (profiles[r.profile] ?? 0) + 1;
      for (const [k, v] of Object.entries(r.stats)) {
        if (typeof v === "number") totals[k] = (totals[k] ?? 0) + v;
      }
      maxTerm = Math.max(maxTerm, Number(r.stats.maxTerm ?? 0));
      if (r.stats.linearizability === "unknown") unknown.push(r.seed);
    } else {
      failures.push(r);
      console.log(`\nFAILURE ${r.message.split("\n").slice(0, 60).join("\n")}\n`);
    }
    const now = performance.now();
    if (done % every === 0 || done === count || now - lastReport > 15_000) {
      lastReport = now;
      const perSeed = (now - began) / done;
      console.log(
        `[${String(done).padStart(String(count).length)}/${count}] ${
          ((now - began) / 1000).toFixed(1)
        } s, ${perSeed.toFixed(1)} ms/seed wall, ${
          totals.historyOps ?? 0
        } ops checked, ${failures.length} failure(s)`,
      );
    }
  };

  const seeds = Array.from({ length: count }, (_, i) => start + i);
  if (jobs <= 1) {
    for (const seed of seeds) onReply(await runSoakSeed(_options(seed, common)));
  } else {
    const url = new URL("../testing/sim/soak_worker.ts", import.meta.url);
    let next = 0;
    await Promise.all(Array.from({ length: jobs }, () =>
      new Promise<void>((resolve, reject) => {
        const worker = new Worker(url, { type: "module" });
        const feed = () => {
          if (next >= seeds.length) {
            worker.terminate();
            resolve();
            return;
          }
          worker.postMessage({ options: _options(seeds[next++]!, common) });
        };
        worker.onmessage = (e: MessageEvent<SoakReply>) => {
          onReply(e.data);
          feed();
        };
        worker.onerror = (e) => {
          e.preventDefault();
          worker.terminate();
          reject(new Error(`soak worker failed: ${e.message}`));
        };
        feed();
      })));
  }

  const wall = (performance.now() - began) / 1000;
  const t = (k: string) => totals[k] ?? 0;
  failures.sort((a, b) => a.seed - b.seed);
  console.log(`
== soak summary ==
seeds run:        ${done} (${start}..${
    start + count - 1
  }), nodes ${common.nodes}, ${common.durationMs} virtual ms each${
    common.diskFault ? `, DISK FAULT ${common.diskFault}` : ""
  }
wall time:        ${wall.toFixed(1)} s with ${jobs} job(s): ${
    (wall * 1000 / done).toFixed(1)
  } ms per seed
ops checked:      ${t("historyOps")} (writes ok ${t("writesOk")}, unknown outcome ${
    t("writesUnknown")
  }, definitely failed ${t("writesFailed")}; reads ok ${t("readsOk")} (${
    t("followerReadsOk")
  } served by a follower), dropped ${t("readsDropped")})
coordination:     ${t("casOk")} compare-and-sets applied (${t("casDeletesOk")} of them deletes), ${
    t("casFailed")
  } refused; ${t("multiTxnsOk")} transactions on three keys applied, ${
    t("multiTxnsFailed")
  } refused, ${t("txnAnswersChecked")} transaction answers checked against the log; ${
    t("rangeReadsOk")
  } range reads (${t("rangePagesCut")} pages cut short, ${t("rangeNextPages")} next pages), ${
    t("rangeDeletesOk")
  } range deletes; ${t("idempotentRetries")} writes sent again with their idempotency key, ${
    t("idempotentReplays")
  } answered as replays (${t("valuesOmitted")} values read left out of them: too long to remember)
leases:           ${t("leasesGranted")} granted (${
    t("leasesRaised")
  } raised to the minimum TTL) and ${t("leasesGrantedWithPut")} with a put, ${
    t("leaseTxnPuts")
  } keys attached by a transaction (${t("leaseTxnRefused")} refused: lease gone), ${
    t("leaseKeepAlives")
  } keep-alives acknowledged, ${t("leaseStatusReads")} status reads checked (${
    t("leaseStatusGone")
  } not found), ${t("leasesRevoked")} revoked, ${t("leasesExpired")} expired (${
    t("leaseBoundChecks")
  } checked against the bound)
faults injected:  ${t("crashes")} crashes (${t("powerFailures")} power failures, ${
    t("tornWrites")
  } torn writes), ${t("stops")} graceful stops, ${t("diskFailures")} failed disks (${
    t("diskFailureStops")
  } nodes stopped themselves on them), ${t("partitions")} partitions, ${t("pauses")} pauses, ${
    t("messagesDropped")
  } of ${t("messagesSent")} messages dropped, ${t("messagesDuplicated")} duplicated, ${
    t("messagesUnaddressed")
  } not sent (no address for the peer)
elections:        ${t("elections")} (max term ${maxTerm}), ${t("diskWrites")} disk writes, ${
    t("events")
  } steps
snapshots:        ${t("snapshotsTaken")} taken, ${t("snapshotsSent")} sent (${
    t("snapshotSendsFailed")
  } failed), ${t("snapshotsReceived")} received, ${t("snapshotsInstalled")} installed
transfers:        ${t("transfers")} leader transfers started, ${t("transfersDone")} done, ${
    t("transfersAborted")
  } abandoned (${t("transfersReelected")} of them by an election the old leader won again)
watches:          ${t("watchEvents")} events received, ${
    t("watchReconnects")
  } reconnects to another node, ${t("watchResyncs")} refused as older than the history (410), ${
    t("watchCutOffs")
  } streams cut off for falling behind, ${t("watchBreaks")} connections broken mid-stream, ${
    t("watchMidEntryResumes")
  } reconnects asking to resume inside one entry's changes
blocking reads:   ${t("blockingReads")} begun: ${t("blockingChanges")} woken by a change, ${
    t("blockingTimeouts")
  } timed out, ${t("blockingAtOnce")} answered at once, ${
    t("blockingClosed")
  } ended by their node stopping or installing a snapshot, ${t("blockingAborted")} given up, ${
    t("blockingRefused")
  } refused
backups:          ${t("backupsTaken")} taken, ${
    t("backupsRead")
  } read to their end (each restored and checked), ${t("backupsBroken")} broken
membership:       ${t("memberAdds")} nodes added, ${t("memberRemoves")} members removed, ${
    t("promotions")
  } learners promoted, ${t("memberChangesRefused")} changes refused or unfinished, ${
    t("staleMembers")
  } members that did not know the final leader (each caught up), ${
    t("membersQueries")
  } members queries
removed nodes:    ${t("removedRefusals")} client requests refused at once, ${
    t("removedFinalReads")
  } final reads sent to a removed node (each refused), ${t("removedWatchRefusals")} watches refused,
                  ${
    t("removedAnswers")
  } peer batches answered "removed" (sender outside the committed configuration)
full disks:       ${t("diskFulls")} episodes, ${t("noSpaceAlarms")} NOSPACE alarms raised (${
    t("snapshotsNoRoom")
  } snapshot transfers refused for want of room), ${
    t("noSpaceRefusals")
  } writes refused for a full disk (507; ${
    t("peerNoSpaceRefusals")
  } by a leader with room for its followers' full disks), ${
    t("fullRestarts")
  } restarts on a full disk; ${
    t("unsettledRetries")
  } retries refused so while an earlier attempt was in the log (outcome unknown), ${
    t("refusedRetriesReplayed")
  } answered instead with their first attempt's remembered outcome
other clusters:   ${t("otherClusterBatches")} appends sent by another cluster's node, ${
    t("otherClusterRefusals")
  } refused for their cluster (the others reached no live node)
quota:            ${t("quotaRefusals")} writes and ${
    t("leaseQuotaRefusals")
  } lease grant attempts refused as past the quota (507; a lease counts 64 bytes); quota ${
    common.quotaBytes === undefined
      ? "drawn per seed (16-47 bytes and room for one lease for one seed in five, else none)"
      : common.quotaBytes === 0
      ? "none"
      : `${common.quotaBytes} bytes`
  }
restarts:         ${t("snapshotRestarts")} from a snapshot, ${
    t("commitFromLog")
  } with a commit index from the log's commit records, ${
    t("editedFileStarts")
  } with a cluster file edited to list only the node; snapshot threshold ${_thresholdText(common)}
profiles:         ${Object.entries(profiles).sort().map(([k, v]) => `${k} ${v}`).join(", ")}
linearizability:  ${
    unknown.length === 0
      ? "every history fully checked"
      : `checker budget ran out for ${unknown.length} seed(s): ${unknown.slice(0, 20).join(", ")}`
  }
failures:         ${failures.length}`);
  for (const f of failures) {
    if (!f.ok) console.log(`  seed ${f.seed} (${f.check}): ${f.replay}`);
  }
  return failures.length > 0 ? 1 : 0;
}

async function _main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      seeds: { type: "string" },
      start: { type: "string" },
      seed: { type: "string" },
      nodes: { type: "string" },
      "duration-ms": { type: "string" },
      faults: { type: "string" },
      clients: { type: "string" },
      keys: { type: "string" },
      "disk-fault": { type: "string" },
      "quota-bytes": { type: "string" },
      watchers: { type: "string" },
      "watch-fault": { type: "string" },
      waiters: { type: "string" },
      "wait-fault": { type: "string" },
      "backup-readers": { type: "string" },
      "lease-reads": { type: "string" },
      "long-values": { type: "string" },
      "lease-holders": { type: "string" },
      "lease-put-grants": { type: "string" },
      "snapshot-threshold": { type: "string" },
      "catch-up-entries": { type: "string" },
      disable: { type: "string" },
      jobs: { type: "string" },
      "no-trace": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(_USAGE);
    return 0;
  }
  const nodes = values.nodes ?? (values.seed !== undefined ? undefined : "mixed");
  const common: _Common = {
    nodes: "mixed",
    durationMs: intOption("duration-ms", values["duration-ms"], DEFAULT_DURATION_MS, 1),
  };
  if (nodes === undefined) {
    common.nodes = "mixed";
  } else if (nodes === "3" || nodes === "5" || nodes === "mixed") {
    common.nodes = nodes;
  } else {
    throw new UsageError(`--nodes must be 3, 5 or mixed, got ${JSON.stringify(nodes)}`);
  }
  if (values.faults !== undefined) {
    const parsed: unknown = JSON.parse(values.faults);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new TypeError("--faults must be a JSON object");
    }
    common.faults = parsed as Partial<FaultOptions>;
  }
  if (values.clients !== undefined) common.clients = intOption("clients", values.clients, 0, 1);
  if (values.keys !== undefined) common.keys = intOption("keys", values.keys, 0, 1);
  if (values["lease-holders"] !== undefined) {
    common.leaseHolders = intOption("lease-holders", values["lease-holders"], 0, 0);
  }
  if (values.watchers !== undefined) common.watchers = intOption("watchers", values.watchers, 0, 0);
  if (values.waiters !== undefined) common.waiters = intOption("waiters", values.waiters, 0, 0);
  if (values["backup-readers"] !== undefined) {
    common.backupReaders = intOption("backup-readers", values["backup-readers"], 0, 0);
  }
  if (values["quota-bytes"] !== undefined) {
    common.quotaBytes = intOption("quota-bytes", values["quota-bytes"], 0, 0);
  }
  const watchFault = values["watch-fault"];
  if (watchFault !== undefined) {
    if (watchFault !== "repeat" && watchFault !== "skip" && watchFault !== "index") {
      throw new UsageError(
        `--watch-fault must be repeat, skip or index, got ${JSON.stringify(watchFault)}`,
      );
    }
    common.watchFault = watchFault;
  }
  const waitFault = values["wait-fault"];
  if (waitFault !== undefined) {
    if (waitFault !== "early" && waitFault !== "late") {
      throw new UsageError(`--wait-fault must be early or late, got ${JSON.stringify(waitFault)}`);
    }
    common.waitFault = waitFault;
  }
  const fault = values["disk-fault"];
  if (fault !== undefined) {
    if (!(DISK_FAULTS as readonly string[]).includes(fault)) {
      throw new UsageError(
        `--disk-fault must be one of ${DISK_FAULTS.join(", ")}, got ${JSON.stringify(fault)}`,
      );
    }
    common.diskFault = fault as DiskFault;
  }
  const leasePutGrants = _fraction("lease-put-grants", values["lease-put-grants"]);
  if (leasePutGrants !== undefined) common.leasePutGrants = leasePutGrants;
  const leaseReads = _fraction("lease-reads", values["lease-reads"]);
  if (leaseReads !== undefined) common.leaseReads = leaseReads;
  const longValues = _fraction("long-values", values["long-values"]);
  if (longValues !== undefined) common.longValues = longValues;
  const threshold = values["snapshot-threshold"];
  if (threshold !== undefined) {
    common.snapshotThreshold = threshold === "on"
      ? "on"
      : intOption("snapshot-threshold", threshold, 0);
  }
  if (values["catch-up-entries"] !== undefined) {
    common.catchUpEntries = intOption("catch-up-entries", values["catch-up-entries"], 0);
  }
  if (values.disable !== undefined) {
    common.disabledChecks = values.disable.split(",").filter(Boolean) as CheckName[];
  }
  if (values.seed !== undefined) {
    return await _replay(intOption("seed", values.seed, 0), common, !values["no-trace"]);
  }
  const count = intOption("seeds", values.seeds, 100, 1);
  const start = intOption("start", values.start, 1);
  const jobs = intOption("jobs", values.jobs, 1, 1);
  return await _soak(start, count, jobs, common);
}

if (import.meta.main) {
  try {
    Deno.exit(await _main());
  } catch (e) {
    console.error(`soak: ${(e as Error)?.message ?? e}\n${_USAGE}`);
    Deno.exit(2);
  }
}

/** The value of `--name`, a fraction in [0, 1], or undefined when not given. */
function _fraction(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const rate = Number(value);
  if (!(rate >= 0 && rate <= 1)) {
    throw new UsageError(`--${name} must be a fraction in [0, 1], got ${value}`);
  }
  return rate;
}
