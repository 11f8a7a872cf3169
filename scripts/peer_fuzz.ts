/**
 * Peer-protocol fuzz run against a live three-node cluster (see `testing/peer_fuzz_runner.ts`):
 * generated hostile peer requests (well-framed messages with extreme fields, mutated and random
 * bytes, wrong endpoints, methods and headers) to every node's peer port while clients write
 * and read through the API; then every node is stopped with SIGTERM and started again, and the
 * run checks that no node stopped, every acknowledged write is still readable and the history
 * is linearizable.
 *
 * ```sh
 * deno task fuzz:peer --messages 100000 [--seed N] [--concurrency 4] [--clients 4] [--keys 8]
 *   [--max-minutes 20] [--categories extreme,plausible,mutated,random,protocol,stream]
 *   [--keep-going]
 *   [--echo] [-- node flags...]
 * ```
 *
 * Prints progress and a summary (lines starting with `fuzz:peer:`); on a failure also the
 * stopped nodes' last requests and output, and exits with status 1.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { intOption, UsageError } from "../testing/args.ts";
import { randomSeed } from "../testing/chaos_lib.ts";
import { FUZZ_CATEGORIES, type FuzzCategory } from "../testing/peer_fuzz_lib.ts";
import { runPeerFuzz } from "../testing/peer_fuzz_runner.ts";

const _USAGE = `usage: deno task fuzz:peer [--messages N] [--seed N] [--concurrency N] [--clients N]
  [--keys N] [--max-minutes N] [--categories ${FUZZ_CATEGORIES.join(",")}] [--keep-going]
  [--echo] [-- node flags...]

  --messages     peer messages to send at least (default 100000; a batch of k counts k)
  --seed         seed of every generated request (default: random, printed)
  --concurrency  fuzz requests in flight per node (default 4)
  --clients      concurrent clients of the write load (default 4)
  --keys         keys the clients use (default 8)
  --max-minutes  the longest the fuzz may take (default 20)
  --categories   the kinds of requests to send (default: all)
  --keep-going   triage: when a node stops, record it, start it again and go on
  --echo         copy the nodes' output to stderr`;

async function _main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      messages: { type: "string" },
      seed: { type: "string" },
      concurrency: { type: "string" },
      clients: { type: "string" },
      keys: { type: "string" },
      "max-minutes": { type: "string" },
      categories: { type: "string" },
      "keep-going": { type: "boolean", default: false },
      echo: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(_USAGE);
    return 0;
  }
  const categories = values.categories === undefined
    ? FUZZ_CATEGORIES
    : values.categories.split(",").map((name) => name.trim()).filter((name) => name !== "");
  for (const name of categories) {
    if (!(FUZZ_CATEGORIES as readonly string[]).includes(name)) {
      throw new UsageError(`unknown category ${JSON.stringify(name)}; known: ${FUZZ_CATEGORIES}`);
    }
  }
  const seed = intOption("seed", values.seed, randomSeed(), 0);
  const messages = intOption("messages", values.messages, 100_000, 1);
  const started = performance.now();
  console.log(`fuzz:peer: starting seed ${seed}, ${messages} messages`);
  const report = await runPeerFuzz({
    seed,
    messages,
    categories: categories as FuzzCategory[],
    concurrency: intOption("concurrency", values.concurrency, 4, 1),
    clients: intOption("clients", values.clients, 4, 1),
    keys: intOption("keys", values.keys, 8, 1),
    maxFuzzMs: intOption("max-minutes", values["max-minutes"], 20, 1) * 60_000,
    keepGoing: values["keep-going"],
    nodeFlags: positionals,
    checkTimeoutMs: 120_000,
    echo: values.echo,
    log: (line) => {
      const at = ((performance.now() - started) / 1000).toFixed(1).padStart(6);
      console.log(`[${at} s] ${line}`);
    },
  });
  if (!report.ok) console.log(report.details);
  for (const line of report.summary) console.log(`fuzz:peer: ${line}`);
  console.log(`fuzz:peer: ${report.ok ? "PASS" : "FAIL"} (replay with --seed ${seed})`);
  return report.ok ? 0 : 1;
}

if (import.meta.main) {
  try {
    Deno.exit(await _main(Deno.args));
  } catch (error) {
    if (
      error instanceof UsageError || (error as { code?: string }).code?.startsWith("ERR_PARSE")
    ) {
      console.error(`fuzz:peer: ${(error as Error).message}\n${_USAGE}`);
      Deno.exit(2);
    }
    throw error;
  }
}
