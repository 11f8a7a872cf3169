/**
 * The peer-protocol fuzz run: a live three-node cluster (real processes on free ports, through
 * `testing/harness.ts`) takes a client write load (the chaos run's workload, with its history)
 * while every node's peer port receives generated hostile requests
 * (`testing/peer_fuzz_lib.ts`). Then every node is stopped with SIGTERM and started again on its
 * data, and the checks run: no node stopped during the fuzz, each stopped cleanly and came back
 * ready, every acknowledged write is still readable, no key but the clients' is in the store, and
 * the history is linearizable. Message streams (`POST /raft/stream`) are sent like any request:
 * their bodies are written in pieces when the generator splits them, and the answer (the node
 * ends it when it gives the stream up, or once the body ended) is read to its end.
 *
 * Used by `tests/peer_fuzz_test.ts` (a short run) and `scripts/peer_fuzz.ts`
 * (`deno task fuzz:peer`, any length). Everything it starts is stopped before it returns or
 * throws. Requests only ever go to 127.0.0.1.
 *
 * @module
 */

import { H2Client } from "../src/transport/h2_client.ts";
import {
  checkConvergence,
  checkWorkload,
  createFreshConnectionClient,
  createWorkload,
  delay,
  finalReads,
  Rng,
  runClient,
  type Workload,
  type WorkloadCheck,
} from "./chaos_lib.ts";
import { type ProcessCluster, startCluster, waitFor } from "./harness.ts";
import {
  ABSURD_TERM,
  describeNumber,
  describePeerRequest,
  FUZZ_CATEGORIES,
  type FuzzCategory,
  type FuzzTarget,
  generatePeerRequest,
  type PeerRequest,
} from "./peer_fuzz_lib.ts";

/** Options of {@linkcode runPeerFuzz}. */
export interface PeerFuzzOptions {
  /** Seed of every generated request and client choice. */
  seed: number;
  /** How many peer messages to send at least (a batch of k messages counts k). */
  messages: number;
  /** The categories of requests to send. Default: all. */
  categories?: readonly FuzzCategory[];
  /** Fuzz requests in flight per node, each on its own HTTP/2 connection. Default 4. */
  concurrency?: number;
  /** Concurrent clients of the write load. Default 4. */
  clients?: number;
  /** Keys the clients use. Default 8. */
  keys?: number;
  /** Deadline of one fuzz request, in milliseconds. Default 5000. */
  requestTimeoutMs?: number;
  /** Deadline of one client request, in milliseconds. Default 7000. */
  clientTimeoutMs?: number;
  /**
   * The longest the fuzz may take, in milliseconds; a run that has not sent `messages` by then
   * fails. Default 1200000 (20 minutes).
   */
  maxFuzzMs?: number;
  /**
   * The fewest writes that must be acknowledged during the fuzz. Default 20. A fuzz that has sent
   * its messages before then goes on sending more, for up to 30 s, so that a fast machine's short
   * fuzz still overlaps that much load.
   */
  minAckedWrites?: number;
  /**
   * The smallest share of the clients' requests that must succeed during the fuzz: hostile
   * input must not keep the cluster from serving. Default 0.5: the rare disturbing messages a
   * member could send cost an election each, about a fifth of a short run's requests.
   */
  minOkFraction?: number;
  /**
   * Triage mode: when a node stops during the fuzz, record it, start the node again and go on
   * (up to 50 times) instead of ending the fuzz. Default false.
   */
  keepGoing?: boolean;
  /** Flags for every node, after the harness's defaults. */
  nodeFlags?: readonly string[];
  /** Time budget of the linearizability check, in milliseconds. Default 60000. */
  checkTimeoutMs?: number;
  /** Receives progress lines. Default: nothing. */
  log?: (line: string) => void;
  /** Copy the nodes' output to stderr. Default: the harness's default. */
  echo?: boolean;
}

/** A node that stopped when it should not have. */
export interface NodeDeath {
  /** The node. */
  node: string;
  /** When, in seconds since the start of the run. */
  atS: number;
  /** How it ended, such as `exited with code 1`. */
  exit: string;
  /** The last requests sent to it before it was found stopped, oldest first. */
  lastRequests: string[];
  /** Its last output lines (the fatal error among them). */
  logLines: string[];
}

/** Counts of what was sent. */
export interface SentCounts {
  /** Requests sent. */
  requests: number;
  /** Peer messages in them. */
  messages: number;
}

/** What {@linkcode runPeerFuzz} found. */
export interface PeerFuzzReport {
  /** The seed of the run. */
  seed: number;
  /** Whether every check held. */
  ok: boolean;
  /** The figures and results, one line each. */
  summary: string[];
  /** On failure: node deaths with their last requests and output, timelines, anomalies. */
  details: string;
  /** What was sent, overall. */
  sent: SentCounts;
  /** What was sent, by category. */
  byCategory: Record<FuzzCategory, SentCounts>;
  /** Requests by category and kind (`extreme/Heartbeat`, ...). */
  byKind: Record<string, number>;
  /**
   * Answers by HTTP status, plus `reset` (the stream failed), `timeout` (no answer in time),
   * `hung` (not even the deadline ended it) and `refused` (not delivered: not counted as sent).
   */
  answers: Record<string, number>;
  /** Nodes that stopped during the fuzz. */
  deaths: NodeDeath[];
  /** Problems other than deaths and the history checks. */
  anomalies: string[];
  /** The history checks, when they ran. */
  check: WorkloadCheck | null;
  /** How long the fuzz took, in milliseconds. */
  fuzzMs: number;
  /** How long the whole run took, in milliseconds. */
  elapsedMs: number;
}

/** Flags the fuzz run gives every node (before `nodeFlags`). */
export const PEER_FUZZ_NODE_FLAGS: readonly string[] = Object.freeze([
  "--api-timeout",
  "3000",
  "--api-fwd-timeout",
  "3000",
]);

const _RING = 40;
const _MAX_DEATHS = 50;

interface _Sent {
  at: number;
  text: string;
  outcome: string;
}

interface _State {
  readonly cluster: ProcessCluster;
  readonly workload: Workload;
  readonly options: PeerFuzzOptions;
  readonly start: number;
  readonly log: (line: string) => void;
  /** The node's term as last observed (they only grow). */
  readonly terms: Map<string, number>;
  /** The last requests sent to each node. */
  readonly rings: Map<string, _Sent[]>;
  readonly sent: SentCounts;
  readonly byCategory: Record<FuzzCategory, SentCounts>;
  readonly byKind: Map<string, number>;
  readonly answers: Map<string, number>;
  /** The bodies of 5xx answers, by text, with counts. */
  readonly serverErrors: Map<string, number>;
  /** Answers that quoted a path under the cluster's data directory: how many, and the first. */
  readonly pathLeaks: { count: number; first: string | null };
  readonly deaths: NodeDeath[];
  readonly anomalies: string[];
  /** Nodes being restarted after a death (triage mode) or down for good. */
  readonly down: Set<string>;
  /** The nodes whose absurd term was reported. */
  readonly absurd: Set<string>;
  leaderChanges: number;
  lastLeader: string | null;
  highestTerm: number;
  next: number;
  /** When the last of `options.messages` was sent (null before). */
  sentAllAt: number | null;
}

/**
 * Runs the fuzz against a fresh cluster and checks the outcome (see the module doc).
 *
 * @param options The run's parameters.
 * @returns The report; `report.ok` says whether everything held.
 */
export async function runPeerFuzz(options: PeerFuzzOptions): Promise<PeerFuzzReport> {
  const start = performance.now();
  const log = options.log ?? (() => {});
  const keyCount = options.keys ?? 8;
  const keys = Array.from({ length: keyCount }, (_, i) => `key-${i}`);
  const rng = new Rng(options.seed);
  await using cluster = await startCluster({
    size: 3,
    nodeFlags: [...PEER_FUZZ_NODE_FLAGS, ...(options.nodeFlags ?? [])],
    ...(options.echo === undefined ? {} : { echo: options.echo }),
  });
  for (const node of cluster.nodes) {
    if (new URL(node.rpcUrl).hostname !== "127.0.0.1") {
      throw new Error(`refusing to fuzz ${node.rpcUrl}: not 127.0.0.1`);
    }
  }
  using http = createFreshConnectionClient();
  const state: _State = {
    cluster,
    workload: createWorkload(cluster, http, { log, start }),
    options,
    start,
    log,
    terms: new Map(),
    rings: new Map(cluster.ids.map((id) => [id, []])),
    sent: { requests: 0, messages: 0 },
    byCategory: Object.fromEntries(
      FUZZ_CATEGORIES.map((c) => [c, { requests: 0, messages: 0 }]),
    ) as Record<FuzzCategory, SentCounts>,
    byKind: new Map(),
    answers: new Map(),
    serverErrors: new Map(),
    pathLeaks: { count: 0, first: null },
    deaths: [],
    anomalies: [],
    down: new Set(),
    absurd: new Set(),
    leaderChanges: 0,
    lastLeader: null,
    highestTerm: 0,
    next: 0,
    sentAllAt: null,
  };
  await cluster.waitForLeader(30_000);
  log(`cluster up; sending ${options.messages} messages (seed ${options.seed})`);

  const stopFuzz = new AbortController();
  const deadline = AbortSignal.timeout(options.maxFuzzMs ?? 20 * 60_000);
  const stopAll = AbortSignal.any([stopFuzz.signal, deadline]);
  const stopClients = new AbortController();
  const clients = Array.from(
    { length: options.clients ?? 4 },
    (_, i) =>
      runClient(
        state.workload,
        i + 1,
        rng.fork(),
        keys,
        stopClients.signal,
        options.clientTimeoutMs ?? 7000,
      ),
  );
  const stopPolling = new AbortController();
  const polling = _poll(state, stopPolling.signal, stopFuzz);
  const fuzzStart = performance.now();
  let fuzzMs = 0;
  try {
    const concurrency = options.concurrency ?? 4;
    const workers = cluster.ids.flatMap((id) =>
      Array.from({ length: concurrency }, () => _worker(state, id, stopAll))
    );
    let progress = 0;
    const reporter = (async () => {
      while (!stopAll.aborted && state.sent.messages < options.messages) {
        await delay(5000, stopAll);
        if (state.sent.messages >= progress + options.messages / 10 || stopAll.aborted) {
          progress = state.sent.messages;
          log(
            `${state.sent.messages} messages in ${state.sent.requests} requests; ${
              _opsLine(state)
            }`,
          );
        }
      }
    })();
    await Promise.all(workers);
    fuzzMs = performance.now() - fuzzStart;
    stopFuzz.abort();
    await reporter;
    log(
      `fuzz done: ${state.sent.messages} messages in ${state.sent.requests} requests, ${
        (fuzzMs / 1000).toFixed(1)
      } s`,
    );
  } finally {
    stopFuzz.abort();
    stopClients.abort();
    await Promise.all(clients);
    stopPolling.abort();
    await polling;
  }
  if (state.pathLeaks.count > 0) {
    state.anomalies.push(
      `${state.pathLeaks.count} answers quoted a local path, such as: ${state.pathLeaks.first}`,
    );
  }
  if (state.sent.messages < options.messages && state.deaths.length === 0) {
    state.anomalies.push(
      `only ${state.sent.messages} of ${options.messages} messages were sent within ${
        ((options.maxFuzzMs ?? 20 * 60_000) / 1000).toFixed(0)
      } s`,
    );
  }
  const acked = state.workload.acked.length;
  if (acked < (options.minAckedWrites ?? 20)) {
    state.anomalies.push(
      `only ${acked} writes were acknowledged during the fuzz (at least ${
        options.minAckedWrites ?? 20
      } expected)`,
    );
  }
  const c = state.workload.counts;
  const ok = c.put.ok + c.get.ok + c.delete.ok;
  const total = c.put.total + c.get.total + c.delete.total;
  const minOk = options.minOkFraction ?? 0.5;
  if (total > 0 && ok / total < minOk) {
    state.anomalies.push(
      `only ${ok} of ${total} client requests succeeded during the fuzz (at least ${
        Math.round(minOk * 100)
      }% expected): the nodes did not keep serving`,
    );
  }
  const end = await _finish(state, keys);
  return _report(state, end, fuzzMs);
}

// ---------------------------------------------------------------------------------------------
// Sending.

/**
 * Whether the fuzz goes on: until `options.messages` are sent, then while the clients have had
 * fewer than `minAckedWrites` writes acknowledged, for at most 30 s more.
 */
function _more(state: _State): boolean {
  const { options } = state;
  if (state.sent.messages < options.messages) return true;
  state.sentAllAt ??= performance.now();
  return state.workload.acked.length < (options.minAckedWrites ?? 20) &&
    performance.now() - state.sentAllAt < 30_000;
}

/** One fuzz worker: its own HTTP/2 connection to one node, one request at a time. */
async function _worker(state: _State, id: string, stop: AbortSignal): Promise<void> {
  const { cluster, options } = state;
  const url = `http://127.0.0.1:${cluster.node(id).rpcPort}`;
  const client = new H2Client();
  const timeoutMs = options.requestTimeoutMs ?? 5000;
  try {
    while (!stop.aborted && _more(state)) {
      if (state.down.has(id)) {
        await delay(100, stop);
        continue;
      }
      const index = state.next++;
      const target: FuzzTarget = {
        self: id,
        members: cluster.ids,
        term: state.terms.get(id) ?? null,
      };
      const req = generatePeerRequest(options.seed, index, target, options.categories);
      // Belt and braces: a request that outlives its own deadline is given up on (its HTTP/2
      // connection is closed with the client at the end).
      let timer: ReturnType<typeof setTimeout> | undefined;
      const outcome = await Promise.race([
        _send(client, url, req, timeoutMs, state),
        new Promise<string>((resolve) =>
          timer = setTimeout(() => resolve("hung"), timeoutMs + 5000)
        ),
      ]).finally(() => clearTimeout(timer));
      if (outcome === "refused") {
        // The node is not listening (stopped or restarting): nothing was delivered.
        _count(state.answers, outcome);
        await delay(50, stop);
        continue;
      }
      state.sent.requests++;
      state.sent.messages += req.messages;
      state.byCategory[req.category].requests++;
      state.byCategory[req.category].messages += req.messages;
      _count(state.byKind, `${req.category}/${req.kind}`);
      _count(state.answers, outcome);
      const ring = state.rings.get(id)!;
      ring.push({
        at: performance.now(),
        text: `#${index} ${describePeerRequest(req)}`,
        outcome,
      });
      if (ring.length > _RING) ring.shift();
    }
  } finally {
    client.close();
  }
}

/** Sends one request; returns the status, or `reset`, `timeout`, `refused` (not delivered). */
async function _send(
  client: H2Client,
  base: string,
  req: PeerRequest,
  timeoutMs: number,
  state: _State,
): Promise<string> {
  const signal = AbortSignal.timeout(timeoutMs);
  let body: Uint8Array | ReadableStream<Uint8Array> | null = req.body;
  if (req.body !== null && (req.cutAfter !== undefined || req.pieces !== undefined)) {
    body = _pieces(req.body, req.pieces ?? [], req.cutAfter);
  }
  try {
    const res = await client.fetch(`${base}${req.path}`, {
      method: req.method,
      headers: req.headers,
      body,
      signal,
    });
    const text = await _readWithin(res, signal);
    // An answer to a peer never names the node's files.
    if (text.includes(state.cluster.dataRoot)) {
      state.pathLeaks.count++;
      state.pathLeaks.first ??= `${res.status} ${_escapeControls(text.slice(0, 300))}`;
    }
    if (res.status >= 500) {
      const key = `${res.status} ${_errorText(text)}`;
      // Bounded: past 100 distinct texts, the rest are counted together.
      _count(
        state.serverErrors,
        state.serverErrors.size < 100 || state.serverErrors.has(key)
          ? key
          : `${res.status} (other)`,
      );
    }
    return String(res.status);
  } catch (error) {
    if (signal.aborted) return "timeout";
    const message = error instanceof Error
      ? `${error.message} ${(error as { code?: string }).code}`
      : "";
    return /ECONNREFUSED/.test(message) ? "refused" : "reset";
  }
}

/**
 * The body as a stream written in pieces ending at `ends` (each after a pause of a millisecond,
 * so that each goes out as its own HTTP/2 DATA frame), then closed, or failed after `cutAfter`
 * bytes (the client then resets the request).
 */
function _pieces(
  bytes: Uint8Array,
  ends: readonly number[],
  cutAfter: number | undefined,
): ReadableStream<Uint8Array> {
  const stop = cutAfter ?? bytes.byteLength;
  const bounds = [...ends.filter((at) => at < stop), stop];
  let from = 0;
  let next = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      // Each call enqueues a piece or ends the body: a call that did neither would never be
      // followed by another.
      while (next < bounds.length) {
        if (next > 0) await new Promise((resolve) => setTimeout(resolve, 1));
        const to = bounds[next++]!;
        if (to <= from) continue;
        controller.enqueue(bytes.slice(from, to));
        from = to;
        return;
      }
      if (cutAfter === undefined) controller.close();
      else controller.error(new Error("the fuzz cut the body off"));
    },
  });
}

/**
 * Reads the body as text (at most 64 KiB) until `signal` aborts, then cancels it: a node that
 * sends headers and then never ends the body cannot stall a worker. A body that fails reads as
 * what arrived: nothing.
 */
async function _readWithin(res: Response, signal: AbortSignal): Promise<string> {
  if (res.body === null) return "";
  const reader = res.body.getReader();
  const onAbort = () => void reader.cancel(signal.reason).catch(() => {});
  if (signal.aborted) onAbort();
  else signal.addEventListener("abort", onAbort, { once: true });
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < 64 * 1024) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
    }
  } catch {
    // Reset after the headers, or cancelled at the deadline: the status still counts.
  } finally {
    signal.removeEventListener("abort", onAbort);
    await reader.cancel().catch(() => {});
  }
  const bytes = new Uint8Array(size);
  let off = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, off);
    off += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

function _errorText(text: string): string {
  try {
    const error = JSON.parse(text)?.error;
    if (typeof error === "string") return _escapeControls(error.replace(/\d+/g, "N").slice(0, 160));
  } catch {
    // Not JSON.
  }
  return _escapeControls(text.slice(0, 160));
}

function _count(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

// ---------------------------------------------------------------------------------------------
// Watching the nodes.

/** Polls every node: terms for the generator, leader changes, and nodes that stopped. */
async function _poll(state: _State, signal: AbortSignal, stopFuzz: AbortController): Promise<void> {
  const { cluster } = state;
  while (!signal.aborted) {
    for (const id of cluster.ids) {
      if (state.down.has(id) || cluster.isRunning(id)) continue;
      _recordDeath(state, id);
      if (state.options.keepGoing && state.deaths.length < _MAX_DEATHS) {
        state.down.add(id);
        cluster.start(id, { deadlineMs: 30_000 }).then(
          () => {
            state.down.delete(id);
            state.log(`${id} started again`);
          },
          (error) => {
            state.anomalies.push(`${id} did not start again: ${_firstLine(error)}`);
            state.log(`${id} did not start again; it stays down`);
          },
        );
      } else {
        state.down.add(id);
        stopFuzz.abort();
      }
    }
    const statuses = await Promise.all(cluster.ids.map((id) => cluster.status(id, 500)));
    for (const status of statuses) {
      if (status === null) continue;
      const known = state.terms.get(status.id) ?? 0;
      if (status.term > known) state.terms.set(status.id, status.term);
      state.highestTerm = Math.max(state.highestTerm, status.term);
      if (status.term >= ABSURD_TERM && !state.absurd.has(status.id)) {
        // Above MAX_TERM: only a message the validator must refuse could have brought it.
        state.absurd.add(status.id);
        state.anomalies.push(
          `${status.id} took the term ${describeNumber(status.term)}, above the node's limit`,
        );
        state.log(`${status.id} took the absurd term ${describeNumber(status.term)}`);
      }
      if (status.role === "leader" && status.id !== state.lastLeader) {
        if (state.lastLeader !== null) state.leaderChanges++;
        state.lastLeader = status.id;
      }
    }
    await delay(100, signal);
  }
}

function _recordDeath(state: _State, id: string): void {
  const { cluster } = state;
  const exit = cluster.exitStatus(id);
  const now = performance.now();
  const ring = state.rings.get(id) ?? [];
  const death: NodeDeath = {
    node: id,
    atS: (now - state.start) / 1000,
    exit: _describeExit(exit),
    lastRequests: ring.slice(-20).map((sent) =>
      `${((sent.at - now) / 1000).toFixed(2)} s: ${sent.text} -> ${sent.outcome}`
    ),
    // Control characters a hostile sender id put in the output are shown escaped.
    logLines: cluster.logs(id).slice(-40).map(_escapeControls),
  };
  state.deaths.push(death);
  const fatal =
    [/ fatal: /, /uncaught|panicked|Assertion/i, /ERROR/].map((re) =>
      death.logLines.find((line) => re.test(line))
    ).find((line) => line !== undefined) ?? death.logLines.at(-1) ?? "";
  state.log(`${id} ${death.exit} at ${death.atS.toFixed(1)} s: ${fatal.slice(0, 300)}`);
}

// ---------------------------------------------------------------------------------------------
// The end: reads, restart, reads again, checks.

interface _End {
  leaderAfterFuzz: boolean;
  converged: boolean;
  finalsBefore: Map<string, string | null>;
  finalsAfter: Map<string, string | null>;
  restartOk: boolean;
  check: WorkloadCheck | null;
}

async function _finish(state: _State, keys: readonly string[]): Promise<_End> {
  const { cluster, workload, log } = state;
  const end: _End = {
    leaderAfterFuzz: false,
    converged: false,
    finalsBefore: new Map(),
    finalsAfter: new Map(),
    restartOk: false,
    check: null,
  };
  // Nodes that stopped (and were not restarted) start again, so that the checks can run.
  for (const id of cluster.ids) {
    if (cluster.isRunning(id)) continue;
    if (!state.down.has(id)) _recordDeath(state, id); // It stopped after the last poll.
    try {
      await cluster.start(id, { deadlineMs: 30_000 });
    } catch (error) {
      state.anomalies.push(`${id} did not start again after it stopped: ${_firstLine(error)}`);
    }
  }
  try {
    await cluster.waitForLeader(30_000);
    end.leaderAfterFuzz = true;
  } catch (error) {
    state.anomalies.push(`no leader within 30 s after the fuzz: ${_firstLine(error)}`);
    return end;
  }
  end.finalsBefore = await finalReads(workload, keys);
  end.converged = await checkConvergence(workload, keys);
  log("stopping every node with SIGTERM and starting it again");
  end.restartOk = true;
  for (const id of cluster.ids) {
    if (!cluster.isRunning(id)) {
      // A peer's shutdown took it down: report how it ended and what it printed last.
      end.restartOk = false;
      state.anomalies.push(
        `${id} ${_describeExit(cluster.exitStatus(id))} before its turn to be stopped, while ` +
          `the nodes before it stopped\n${cluster.formatLogs([id], 15)}`,
      );
      continue;
    }
    try {
      const code = await cluster.stop(id, 10_000);
      if (code !== 0) {
        end.restartOk = false;
        state.anomalies.push(
          `${id} exited with code ${code} after SIGTERM (expected 0)\n${
            cluster.formatLogs([id], 30)
          }`,
        );
      }
    } catch (error) {
      end.restartOk = false;
      state.anomalies.push(`stopping ${id}: ${_firstLine(error)}`);
    }
  }
  for (const id of cluster.ids) {
    try {
      await cluster.start(id, { deadlineMs: 30_000 });
    } catch (error) {
      end.restartOk = false;
      state.anomalies.push(`${id} did not start again on its data: ${(error as Error).message}`);
    }
  }
  try {
    await waitFor(async () => {
      const answers = await Promise.all(
        cluster.ids.map((id) =>
          cluster.request(id, "GET", "/ready", undefined, { timeoutMs: 1000 }).catch(() => null)
        ),
      );
      return answers.every((answer) => answer?.status === 200);
    }, { deadlineMs: 30_000, intervalMs: 100, message: "every restarted node to be ready" });
  } catch (error) {
    end.restartOk = false;
    state.anomalies.push(`${_firstLine(error)}\n${cluster.formatLogs(undefined, 20)}`);
    return end;
  }
  end.finalsAfter = await finalReads(workload, keys);
  for (const key of keys) {
    const before = end.finalsBefore.get(key);
    const after = end.finalsAfter.get(key);
    if (before !== after) {
      state.anomalies.push(
        `${JSON.stringify(key)} read ${JSON.stringify(before)} before the restart and ${
          JSON.stringify(after)
        } after it`,
      );
    }
  }
  await _checkNoStrayKeys(state, keys);
  end.check = checkWorkload(workload, end.finalsAfter, state.options.checkTimeoutMs ?? 60_000);
  return end;
}

/**
 * Lists every key the cluster holds (a linearizable read): only the clients' keys may be there.
 * A forged command (a put to a `fuzz-` key, say) that reached the log would show up here even
 * when it touched no key of the workload's history.
 */
async function _checkNoStrayKeys(state: _State, keys: readonly string[]): Promise<void> {
  const { cluster } = state;
  let listing: unknown = null;
  for (const id of cluster.ids) {
    const result = await cluster.request(id, "GET", "/v1/data?keys_only&limit=10000", undefined, {
      timeoutMs: 5000,
    }).catch(() => null);
    if (result?.status === 200) {
      listing = result.json;
      break;
    }
  }
  const items = (listing as { items?: { k?: unknown }[] } | null)?.items;
  if (!Array.isArray(items)) {
    state.anomalies.push("no node answered the listing of every key after the restart");
    return;
  }
  const allowed = new Set(keys);
  const stray = items.map((item) => String(item.k)).filter((k) => !allowed.has(k));
  if (stray.length > 0) {
    state.anomalies.push(
      `${stray.length} keys no client wrote are in the store, such as ${
        stray.slice(0, 5).map((k) => JSON.stringify(k)).join(", ")
      }`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// The report.

function _opsLine(state: _State): string {
  const c = state.workload.counts;
  const ok = c.put.ok + c.get.ok + c.delete.ok;
  const total = c.put.total + c.get.total + c.delete.total;
  return `${ok} ok of ${total}, ${state.workload.acked.length} writes acknowledged`;
}

function _report(state: _State, end: _End, fuzzMs: number): PeerFuzzReport {
  const { options } = state;
  const elapsedMs = performance.now() - state.start;
  const check = end.check;
  const anomalies = [...state.workload.anomalies, ...state.anomalies, ...(check?.problems ?? [])];
  const rate = fuzzMs > 0 ? state.sent.messages / (fuzzMs / 1000) : 0;
  const categories = FUZZ_CATEGORIES.map((c) => {
    const counts = state.byCategory[c];
    return `${c} ${counts.messages} (${counts.requests} requests)`;
  }).join(", ");
  const answers = [...state.answers].sort(([a], [b]) => a.localeCompare(b))
    .map(([k, n]) => `${k} ${n}`).join(", ");
  const serverErrors = [...state.serverErrors].sort(([, a], [, b]) => b - a).slice(0, 5)
    .map(([text, n]) => `${n}x ${text}`).join("; ");
  const deaths = state.deaths.length === 0
    ? "none"
    : state.deaths.slice(0, 10).map((d) => `${d.node} ${d.exit} at ${d.atS.toFixed(1)} s`)
      .join("; ") + (state.deaths.length > 10 ? `; and ${state.deaths.length - 10} more` : "");
  const summary = [
    `seed ${options.seed}, 3 nodes, ${state.sent.messages} messages in ${state.sent.requests} requests (${
      rate.toFixed(0)
    }/s) over ${(fuzzMs / 1000).toFixed(1)} s; ${(elapsedMs / 1000).toFixed(1)} s in all`,
    `messages by category: ${categories}`,
    `answers: ${answers}`,
    `5xx answers: ${serverErrors === "" ? "none" : serverErrors}`,
    `leader changes: ${state.leaderChanges}; highest term ${describeNumber(state.highestTerm)}${
      state.absurd.size > 0 ? ` (absurd term taken by ${[...state.absurd].join(", ")})` : ""
    }`,
    `nodes stopped during the fuzz: ${deaths}`,
    `after the fuzz: ${end.leaderAfterFuzz ? "a leader" : "NO LEADER"}; replicas converged: ${
      end.converged ? "yes" : "NO"
    }`,
    `SIGTERM and restart of every node: ${
      end.restartOk ? "clean, all ready again" : "FAILED"
    }; acknowledged writes readable after it: ${
      check !== null && check.lostWrites.length === 0 &&
        end.finalsAfter.size === end.finalsBefore.size
        ? "yes"
        : "NO"
    }`,
    ...(check?.summary ?? [
      `client ops: ${_opsLine(state)}; history not checked (the cluster did not come back)`,
    ]),
    `anomalies: ${anomalies.length === 0 ? "none" : anomalies.length}`,
  ];
  const ok = state.deaths.length === 0 && anomalies.length === 0 && end.leaderAfterFuzz &&
    end.converged && end.restartOk && check !== null && check.linearizability.ok === true &&
    check.lostWrites.length === 0 && end.finalsAfter.size === (options.keys ?? 8);
  const details: string[] = [];
  if (!ok) {
    for (const death of state.deaths) {
      details.push(
        `=== ${death.node} ${death.exit} at ${death.atS.toFixed(1)} s (seed ${options.seed})`,
        `last requests sent to it (seconds before it was found stopped):`,
        ...death.lastRequests.map((line) => `  ${line}`),
        `its last output:`,
        ...death.logLines.map((line) => `  ${line}`),
      );
    }
    if (check !== null) details.push(...check.details);
    for (const anomaly of anomalies) details.push(`anomaly: ${anomaly}`);
  }
  return {
    seed: options.seed,
    ok,
    summary,
    details: details.join("\n"),
    sent: { ...state.sent },
    byCategory: structuredClone(state.byCategory),
    byKind: Object.fromEntries(state.byKind),
    answers: Object.fromEntries(state.answers),
    deaths: state.deaths,
    anomalies,
    check,
    fuzzMs,
    elapsedMs,
  };
}

function _escapeControls(line: string): string {
  let out = "";
  for (const c of line) {
    const code = c.charCodeAt(0);
    out += (code < 0x20 && c !== "\t") || code === 0x7f
      ? `\\u${code.toString(16).padStart(4, "0")}`
      : c;
  }
  return out;
}

function _describeExit(exit: Deno.CommandStatus | null): string {
  if (exit === null) return "stopped";
  return exit.signal !== null
    ? `was killed by ${exit.signal} (code ${exit.code})`
    : `exited with code ${exit.code}`;
}

function _firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0] ?? "";
}
