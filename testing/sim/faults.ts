/**
 * The faults injected until the final heal: partitions, crashes, pauses, leader transfers,
 * membership changes, full disks, failing disks and another cluster's appends.
 *
 * @module
 */

import { EntryType, message, MessageType, type NodeId } from "../../src/raft/types.ts";
import { encodeCommand } from "../../src/kv/state_machine.ts";
import { LeaderTransferError, NotLeaderError } from "../../src/raft/errors.ts";
import {
  MembershipError,
  NotAppliedError,
  NotVoterError,
  OutcomeUnknownError,
  StoppingError,
  TransferAbortedError,
  UnknownMemberError,
} from "../../src/node/backend.ts";
import type { SimContext, SimNode } from "./context.ts";
import type { SimNetwork } from "./network.ts";

/** The fault injection of a run. */
export class Faults {
  readonly #ctx: SimContext;
  #network: SimNetwork | null = null;
  #partitionId = 0;
  /** A membership change the simulation asked for is in progress. */
  #memberBusy = false;
  /**
   * When each node could not act on time, [start, end] on the shared clock: its pauses, and the
   * episodes its disk was full (a leader then proposes nothing, lease expiries included).
   */
  readonly stallsOf = new Map<NodeId, [number, number][]>();

  /** The faults of the run `ctx`. */
  constructor(ctx: SimContext) {
    this.#ctx = ctx;
  }

  /** Schedules every kind of fault the mix enables, on `network`. */
  start(network: SimNetwork): void {
    this.#network = network;
    const f = this.#ctx.faults;
    this.#every(f.partitionEveryMs, () => this.#partition());
    this.#every(f.crashEveryMs, () => this.#crashSome());
    this.#every(f.pauseEveryMs, () => this.#pause());
    this.#every(f.transferEveryMs, () => this.#transfer());
    this.#every(f.memberEveryMs, () => this.#memberChange());
    this.#every(f.diskFullEveryMs, () => this.#fillDisks());
    this.#every(f.otherClusterEveryMs, () => this.#otherCluster());
  }

  /**
   * A node of another cluster, with the id of one of this cluster's members (two clusters made
   * from copies of one cluster file, one of them pointed at the other's node), sends a node that
   * holds data an append that matches its log and commits a write of its own in a higher term.
   * Refused for its cluster, it changes nothing; taken, it would make the node follow a stranger
   * and apply a write no client sent, which the state-machine and linearizability checks catch.
   * (A node that holds nothing yet and joins takes the first cluster that writes to it, so it is
   * not a target: see the README's "Cluster ids".)
   */
  #otherCluster(): void {
    const ctx = this.#ctx;
    const targets = ctx.nodes.filter((n) => {
      const s = n.node?.inspect();
      return s !== undefined && (s.term > 0 || s.lastIndex > 0);
    });
    if (targets.length === 0) return;
    const n = ctx.pick(targets);
    const s = n.node!.inspect();
    const last = s.entry(s.lastIndex);
    const senders = ctx.nodes.filter((m) => m !== n && !m.spare).map((m) => m.id);
    if (last === undefined || senders.length === 0) return;
    const term = s.term + 1;
    const index = s.lastIndex + 1;
    const put = { op: "put" as const, key: ctx.pick(ctx.keys), value: "another cluster's" };
    const msg = message({
      type: MessageType.App,
      from: ctx.pick(senders),
      to: n.id,
      term,
      logTerm: last.term,
      index: s.lastIndex,
      entries: [{ term, index, type: EntryType.Normal, data: encodeCommand(put) }],
      commit: index,
    });
    ctx.stats.otherClusterBatches++;
    ctx.note(`OTHER CLUSTER: its ${msg.from} sends ${n.id} an append of ${index} in term ${term}`);
    this.#network!.sendFromOtherCluster(n.id, [msg], _OTHER_CLUSTER).then((refused) => {
      if (refused) ctx.stats.otherClusterRefusals++;
    });
  }

  /**
   * Ends the partition in force, if any, frees every disk, and takes down the nodes whose disk
   * failed (mounted again, it restarts with the others).
   */
  heal(): void {
    this.#partitionId++;
    this.#network!.cut = null;
    for (const n of this.#ctx.nodes) {
      this.#free(n);
      if (n.diskFailed && (n.node || n.starting)) this.#ctx.crash(n, "disk failure, at the heal");
    }
  }

  #free(n: SimNode): void {
    n.fs.setCapacity(Infinity);
    n.diskFull = false;
  }

  /** Runs `fn` at random intervals averaging `meanMs` (0: never) until the final heal. */
  #every(meanMs: number, fn: () => void): void {
    if (meanMs <= 0) return;
    this.#ctx.later(this.#ctx.random(0.2, 1.8) * meanMs, () => {
      if (this.#ctx.phase !== "run") return;
      fn();
      this.#every(meanMs, fn);
    });
  }

  #partition(): void {
    const net = this.#network!;
    if (net.cut) return; // one partition at a time
    const all = this.#ctx.nodes.map((n) => n.id);
    const target = this.#ctx.leader()?.id ?? this.#ctx.pick(all);
    const kinds = "split split one-way isolate-leader leader-cannot-send leader-cannot-hear bridge";
    const kind = this.#ctx.pick(kinds.split(" "));
    const links = new Set<string>();
    const cut = (a: NodeId, b: NodeId, both = true) => {
      links.add(`${a}>${b}`);
      if (both) links.add(`${b}>${a}`);
    };
    let text = `${kind} ${target}`;
    if (kind === "split") {
      const side = _shuffle(all, this.#ctx.rng)
        .slice(0, 1 + Math.floor(this.#ctx.rng() * Math.floor(all.length / 2)));
      for (const a of side) for (const b of all.filter((x) => !side.includes(x))) cut(a, b);
      text = `split {${side}} | rest`;
    } else if (kind === "bridge") {
      const [bridge, ...rest] = _shuffle(all, this.#ctx.rng);
      const [left, right] = [rest.slice(0, rest.length / 2), rest.slice(rest.length / 2)];
      for (const a of left) for (const b of right) cut(a, b);
      text = `bridge ${bridge} between {${left}} and {${right}}`;
    } else if (kind === "one-way") {
      for (let i = 0, pairs = 1 + Math.floor(this.#ctx.rng() * all.length); i < pairs; i++) {
        const a = this.#ctx.pick(all);
        cut(a, this.#ctx.pick(all.filter((x) => x !== a)), false);
      }
      text = `one-way ${[...links].join(" ")}`;
    } else {
      for (const b of all.filter((x) => x !== target)) {
        if (kind !== "leader-cannot-hear") cut(target, b, false);
        if (kind !== "leader-cannot-send") cut(b, target, false);
      }
    }
    net.cut = (a, b) => links.has(`${a}>${b}`);
    this.#ctx.stats.partitions++;
    const id = ++this.#partitionId;
    const duration = this.#ctx.random(100, Math.max(200, this.#ctx.faults.maxPartitionMs));
    this.#ctx.note(`PARTITION ${text} for ${duration.toFixed(0)} ms`);
    this.#ctx.later(duration, () => {
      if (this.#partitionId === id) net.cut = null;
    });
  }

  #crashSome(): void {
    const up = this.#ctx.nodes.filter((n) => n.node || n.starting);
    if (up.length === 0) return;
    const power = this.#ctx.rng() < this.#ctx.faults.powerFailureRate;
    const leader = power ? null : this.#ctx.leader();
    const victims = power ? up : [leader && this.#ctx.rng() < 0.4 ? leader : this.#ctx.pick(up)];
    if (power) this.#ctx.stats.powerFailures++;
    const stopRate = this.#ctx.faults.stopRate;
    if (!power && victims[0]!.node && stopRate > 0 && this.#ctx.rng() < stopRate) {
      const n = victims[0]!;
      this.#ctx.stop(n).then((down) => down && this.restartLater(n))
        .catch((e) => this.#ctx.caught(e, ` stopping ${n.id}`));
      return;
    }
    const failRate = this.#ctx.faults.diskFailRate;
    if (!power && victims[0]!.node && failRate > 0 && this.#ctx.rng() < failRate) {
      this.#failDisk(victims[0]!);
      return;
    }
    for (const n of victims) {
      this.#ctx.crash(n, power ? "power failure" : "crash");
      this.restartLater(n);
    }
  }

  /**
   * Makes the disk of `n` fail: every operation on it throws EIO from now on. The node stops
   * itself at its next disk operation (the simulator's `onFatal`, which also restarts it later);
   * one that does none within the longest downtime is crashed and restarted.
   */
  #failDisk(n: SimNode): void {
    n.fs.faults.failed = true;
    n.diskFailed = true;
    this.#ctx.stats.diskFailures++;
    this.#ctx.note(`DISK FAILS on ${n.id}`);
    const inc = n.inc;
    this.#ctx.later(Math.max(50, this.#ctx.faults.maxDowntimeMs), () => {
      if (n.inc !== inc || !n.diskFailed || this.#ctx.phase !== "run") return;
      this.#ctx.crash(n, "disk failure, unnoticed");
      this.restartLater(n);
    });
  }

  /** Starts `n` again after a random downtime, unless it was started meanwhile. */
  restartLater(n: SimNode): void {
    const inc = n.inc;
    this.#ctx.later(this.#ctx.random(20, Math.max(50, this.#ctx.faults.maxDowntimeMs)), () => {
      if (n.inc !== inc) return;
      // Sometimes with a cluster file edited to list only itself (a node with data: a new one
      // would start a cluster of its own, as it was told to).
      const rate = this.#ctx.faults.editedFileRate;
      if (
        rate > 0 && !n.spare && n.durableHs.term > 0 && this.#ctx.phase === "run" &&
        this.#ctx.rng() < rate
      ) {
        n.editedFile = true;
        this.#ctx.stats.editedFileStarts++;
        this.#ctx.note(`${n.id} restarts with a cluster file that lists only itself`);
      }
      this.#ctx.restart(n);
    });
  }

  /**
   * Fills one node's disk, the leader's, every other node's (the followers', spares included) or
   * every node's until space is freed, one episode at a time: each keeps what it holds and takes
   * nothing more, or up to 4 KiB more, so that the next write may fit only in part. A crash keeps
   * the disk full (the crashed image keeps its capacity).
   */
  #fillDisks(): void {
    if (this.#ctx.nodes.some((n) => n.diskFull)) return;
    const kind = this.#ctx.pick(["one", "leader", "followers", "every"]);
    const leader = this.#ctx.leader();
    const victims = kind === "every"
      ? [...this.#ctx.nodes]
      : kind === "followers" && leader
      ? this.#ctx.nodes.filter((n) => n !== leader)
      : [kind === "leader" && leader ? leader : this.#ctx.pick(this.#ctx.nodes)];
    const ms = this.#ctx.random(100, Math.max(200, this.#ctx.faults.maxDiskFullMs));
    for (const n of victims) {
      const room = this.#ctx.rng() < 0.5 ? 0 : Math.floor(this.#ctx.random(0, 4096));
      n.fs.setCapacity(n.fs.used + room);
      n.diskFull = true;
      this.#stalled(n.id, ms);
    }
    this.#ctx.stats.diskFulls++;
    this.#ctx.note(`DISK FULL on ${victims.map((n) => n.id).join(", ")} for ${ms.toFixed(0)} ms`);
    this.#ctx.later(ms, () => {
      if (this.#ctx.phase !== "run") return; // the final heal freed them
      for (const n of victims) this.#free(n);
      this.#ctx.note(`DISK SPACE freed on ${victims.map((n) => n.id).join(", ")}`);
    });
  }

  #pause(): void {
    const up = this.#ctx.nodes.filter((n) => n.node && !n.clock!.paused);
    if (up.length === 0) return;
    const leader = this.#ctx.leader();
    const n = leader && !leader.clock!.paused && this.#ctx.rng() < 0.5
      ? leader
      : this.#ctx.pick(up);
    const clock = n.clock!;
    const ms = this.#ctx.random(50, Math.max(100, this.#ctx.faults.maxPauseMs));
    clock.paused = true;
    this.#ctx.stats.pauses++;
    this.#stalled(n.id, ms);
    this.#ctx.note(`PAUSE ${n.id} until ${(this.#ctx.clock.now() + ms).toFixed(0)}`);
    this.#ctx.later(ms, () => clock.resume());
  }

  /** Records that node `id` cannot act on time for the next `ms` (see `stallsOf`). */
  #stalled(id: NodeId, ms: number): void {
    const now = this.#ctx.clock.now();
    const stalls = this.stallsOf.get(id) ?? [];
    stalls.push([now, now + ms]);
    this.stallsOf.set(id, stalls);
  }

  /**
   * Asks the leader to hand leadership over: to a random other node (possibly down, paused or cut
   * off, so that the transfer is abandoned) or, half the time, to the most caught-up voter.
   */
  #transfer(): void {
    const n = this.#ctx.leader();
    if (!n || !n.node || !n.clock) return;
    const others = this.#ctx.nodes.filter((x) => x !== n);
    const to = this.#ctx.rng() < 0.5 ? null : this.#ctx.pick(others).id;
    const abort = new AbortController();
    const inc = n.inc;
    this.#ctx.note(`TRANSFER leadership from ${n.id} to ${to ?? "the most caught-up voter"}`);
    n.clock.run(() => {
      const node = n.node;
      if (!node || n.inc !== inc) return;
      const term = node.inspect().term;
      node.transferLeadership(to, abort.signal).then(
        ({ leader }) => {
          this.#ctx.stats.transfersDone++;
          this.#ctx.note(`${n.id} handed leadership to ${leader}`);
        },
        (e) => {
          if (n.inc !== inc) return; // crashed meanwhile
          if (e instanceof TransferAbortedError && e.reelectedIn !== null) {
            // An election followed and this node won it again: in a later term.
            if (e.reelectedIn <= term) {
              this.#ctx.violation(
                "node-error",
                `${n.id} re-elected in ${e.reelectedIn} <= ${term}`,
              );
            }
            this.#ctx.stats.transfersReelected++;
          }
          if (e instanceof TransferAbortedError || e === abort.signal.reason) {
            this.#ctx.stats.transfersAborted++;
            this.#ctx.note(`${n.id}: transfer ended without a new leader: ${(e as Error).message}`);
          } else if (
            !(e instanceof NotLeaderError || e instanceof StoppingError ||
              e instanceof LeaderTransferError || // one transfer at a time
              e instanceof NotVoterError || e instanceof UnknownMemberError) // not a voter now
          ) {
            this.#ctx.caught(e, ` in a leader transfer on ${n.id}`);
          }
        },
      );
      if (node.inspect().role === "leader") this.#ctx.stats.transfers++;
    });
    // A caller gives up after a few election timeouts (the node abandons it after one).
    this.#ctx.later(this.#ctx.electionMs * 3, () => abort.abort());
  }

  /**
   * A membership change on the leader, one at a time: add a spare node (started with --join,
   * added as a learner, promoted by the leader once caught up), or remove a member (the leader
   * itself a third of the time), keeping at least three voters. A replacement is a removal
   * followed, at the next change, by an addition. Crashes, partitions and pauses go on meanwhile.
   */
  #memberChange(): void {
    if (this.#memberBusy) return;
    const n = this.#ctx.leader();
    if (!n || !n.node || !n.clock) return;
    const node = n.node;
    const members = node.membership.list();
    const voters = members.filter((m) => m.role === "voter").map((m) => m.node_id);
    const spare = this.#ctx.nodes.find((x) => x.spare && !x.added);
    const canRemove = voters.length > 3 || members.length > voters.length;
    let op: "add" | "remove";
    if (spare && (!canRemove || this.#ctx.rng() < 0.5)) op = "add";
    else if (canRemove) op = "remove";
    else return;
    let target: string;
    if (op === "add") {
      target = spare!.id;
      spare!.added = true;
      this.#ctx.restart(spare!);
    } else {
      const removable = voters.length > 3 ? members : members.filter((m) => m.role === "learner");
      const self = removable.find((m) => m.node_id === n.id);
      target = self && this.#ctx.rng() < 0.33 ? n.id : this.#ctx.pick(removable).node_id;
    }
    this.#memberBusy = true;
    const inc = n.inc;
    this.#ctx.note(`MEMBERSHIP ${op} ${target} (asked of ${n.id})`);
    const abort = new AbortController();
    n.clock.run(() => {
      if (!n.node || n.inc !== inc) {
        this.#memberBusy = false;
        return;
      }
      const change = op === "add"
        ? n.node.membership.add(
          { id: target, rpcUrl: `sim://${target}`, apiUrl: target },
          abort.signal,
        )
        : n.node.membership.remove(target, abort.signal);
      change.then(
        ({ index }) => {
          this.#ctx.stats[op === "add" ? "memberAdds" : "memberRemoves"]++;
          this.#ctx.note(`${n.id}: ${op} ${target} applied at ${index}`);
          // The answer to the node's join request names the cluster (main.ts confirms it) and
          // lists the members with their addresses (main.ts passes them on).
          const cluster = node.status().cluster_id;
          if (op === "add") {
            const members = node.membership.list()
              .map((m) => ({ id: m.node_id, rpcUrl: m.rpc_url, apiUrl: m.api_url }));
            // main.ts asks once its node runs: a spare still opening its storage hears it then.
            const inc = spare!.inc;
            const answer = () => {
              if (spare!.inc !== inc) return;
              if (spare!.node === null) {
                if (spare!.starting) this.#ctx.later(10, answer);
                return; // down again: it asks again when it restarts (askToJoin)
              }
              spare!.clock?.run(() => {
                if (!spare!.node) return;
                spare!.joinAnswered = inc;
                spare!.node.learnAddresses(members);
                if (cluster !== undefined) spare!.node.confirmCluster(cluster, n.id);
              });
            };
            this.#ctx.later(1, answer);
          }
        },
        (e) => {
          if (n.inc !== inc) return;
          if (
            e instanceof MembershipError || e instanceof NotLeaderError ||
            e instanceof StoppingError || e instanceof NotAppliedError ||
            e instanceof OutcomeUnknownError || e instanceof LeaderTransferError
          ) {
            this.#ctx.stats.memberChangesRefused++;
            this.#ctx.note(`${n.id}: ${op} ${target} not done: ${(e as Error).message}`);
            // A spare whose addition surely failed may be tried again later.
            if (op === "add" && e instanceof MembershipError && e.code !== "exists") {
              spare!.added = false;
            }
          } else {
            this.#ctx.caught(e, ` in a membership change on ${n.id}`);
          }
        },
      ).finally(() => this.#memberBusy = false);
    });
    this.#ctx.later(this.#ctx.electionMs * 5, () => {
      abort.abort();
      // Also when the leader crashed before it could take the change: the next one may start.
      this.#memberBusy = false;
    });
  }
}

function _shuffle<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** The id of the other cluster whose node writes to this one's. */
const _OTHER_CLUSTER = "0123456789abcdef";
