/**
 * Merges messages queued for one peer that say together what a single message would, so a busy
 * leader sends one append per batch instead of one per proposal, and its followers answer it once.
 *
 * Under load the leader's core emits one `App` per proposal and follower (each Ready appends a few
 * entries and sends them at once); the transport queues them until the end of the event-loop turn.
 * Two adjacent queued appends where the second continues the first (its `index` is the first's
 * last entry, with that entry's term as `logTerm`) are merged into one carrying both entry runs and
 * the later commit index. A follower applies the merged append exactly as it would the two in
 * order: if the first one's log check fails, so does the second's (log matching: holding the
 * second's previous entry implies holding the first's), and the commit it takes is the later one,
 * capped at what it holds either way. It answers once, for the last index, which acknowledges
 * both (the leader's progress and in-flight window free everything up to the acknowledged index).
 *
 * Likewise two adjacent accepting `AppResp` of one term: the later one, if its index is at least
 * the earlier's, says everything the earlier did, and the earlier is dropped (as if lost, which
 * Raft tolerates).
 *
 * Nothing else is merged or reordered.
 *
 * @module
 */

import { type Entry, type Message, MessageType } from "../raft/types.ts";

/**
 * Returns `queue` with adjacent continuing appends merged and superseded acknowledgements dropped
 * (see the module doc). `queue` is left as it was when nothing merges; the messages themselves are
 * never modified (a merged append is a new message).
 *
 * @param queue Messages for one peer, in sending order.
 * @param maxEntryBytes The most entry payload bytes a merged append may carry (a message already
 * larger is left alone).
 */
export function coalesceMessages(queue: Message[], maxEntryBytes: number): Message[] {
  if (queue.length < 2) return queue;
  let out: Message[] | null = null;
  let prev = queue[0]!;
  let prevBytes = -1; // entry bytes of prev when it is an App, computed lazily
  for (let i = 1; i < queue.length; i++) {
    const m = queue[i]!;
    if (_continues(prev, m)) {
      if (prevBytes < 0) prevBytes = _entryBytes(prev.entries);
      const bytes = _entryBytes(m.entries);
      if (prevBytes + bytes <= maxEntryBytes) {
        out ??= queue.slice(0, i - 1);
        prev = {
          ...prev,
          entries: prev.entries.concat(m.entries),
          commit: Math.max(prev.commit, m.commit),
        };
        prevBytes += bytes;
        continue;
      }
    } else if (_supersedes(prev, m)) {
      out ??= queue.slice(0, i - 1);
      prev = m;
      prevBytes = -1;
      continue;
    }
    out?.push(prev);
    prev = m;
    prevBytes = -1;
  }
  if (out === null) return queue;
  out.push(prev);
  return out;
}

/** Whether `b` is an append that continues append `a` (same peers and term, next in the log). */
function _continues(a: Message, b: Message): boolean {
  if (a.type !== MessageType.App || b.type !== MessageType.App) return false;
  if (a.term !== b.term || a.from !== b.from || a.to !== b.to) return false;
  if (a.snapshot !== null || b.snapshot !== null || a.context !== b.context) return false;
  const last = a.entries.at(-1);
  const lastIndex = last === undefined ? a.index : last.index;
  const lastTerm = last === undefined ? a.logTerm : last.term;
  return b.index === lastIndex && b.logTerm === lastTerm && b.commit >= a.commit;
}

/** Whether accepting `AppResp` `b` says all that accepting `AppResp` `a` does. */
function _supersedes(a: Message, b: Message): boolean {
  return a.type === MessageType.AppResp && b.type === MessageType.AppResp && !a.reject &&
    !b.reject && a.term === b.term && a.from === b.from && a.to === b.to &&
    a.context === b.context && b.index >= a.index;
}

function _entryBytes(entries: readonly Entry[]): number {
  let n = 0;
  for (let i = 0; i < entries.length; i++) n += entries[i]!.data.byteLength;
  return n;
}
