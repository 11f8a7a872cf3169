// The raftkv dashboard: polls GET /v1/cluster of the node that served the page once a second,
// keeps the last five minutes in memory, and draws them. No dependency, no build step: the node
// serves this file as it is (see src/api/ui.ts). The functions exported here hold the arithmetic
// (rates, quantiles, who leads) and are unit-tested in Deno (app_test.ts); the page itself only
// runs in a browser.

/** How often the page asks for the cluster's state, in milliseconds. */
export const POLL_MS = 1000;
/** How much history the charts show by default, in milliseconds (`?minutes=N` changes it). */
export const HISTORY_MS = 5 * 60 * 1000;
/** The window rates and latency quantiles are computed over, in milliseconds. */
export const WINDOW_MS = 5000;
// The token's storage, header and form are shared with the watch page.
import { refusalMessage, sessionStorageOrNull, tokenForm, tokenStore, withToken } from "./token.js";
export { TOKEN_KEY } from "./token.js";

// ---- arithmetic ---------------------------------------------------------------------------------

/**
 * How much a counter rose between two readings; a counter that went down was reset (its node
 * restarted), so the whole new value counts.
 *
 * @param {number} before
 * @param {number} after
 * @returns {number}
 */
export function counterDelta(before, after) {
  return after >= before ? after - before : after;
}

/**
 * The sum of the counts of some status classes (`"2xx"`, `"5xx"`, ...), all of them by default.
 *
 * @param {Record<string, number> | undefined} counts
 * @param {(cls: string) => boolean} [which]
 * @returns {number}
 */
export function sumCounts(counts, which = () => true) {
  let total = 0;
  for (const [cls, n] of Object.entries(counts ?? {})) if (which(cls)) total += n;
  return total;
}

/**
 * @typedef {{ le: number[], cumulative: number[], sum: number }} Histogram
 * A cumulative histogram: finite bounds `le`, then `cumulative` counts, the last one the total.
 */

/**
 * What a histogram gained between two readings; `after` whole when it was reset, or null when
 * the two do not have the same buckets.
 *
 * @param {Histogram | null | undefined} before
 * @param {Histogram | null | undefined} after
 * @returns {Histogram | null}
 */
export function histogramDelta(before, after) {
  if (!after) return null;
  if (!before) return after;
  if (!_sameBounds(before, after)) return null;
  const cumulative = after.cumulative.map((c, i) => c - (before.cumulative[i] ?? 0));
  if (cumulative.some((c) => c < 0)) return after;
  return { le: after.le, cumulative, sum: after.sum - before.sum };
}

/**
 * The sum of histograms with the same buckets (those with other buckets are left out).
 *
 * @param {(Histogram | null)[]} histograms
 * @returns {Histogram | null}
 */
export function sumHistograms(histograms) {
  /** @type {Histogram | null} */
  let total = null;
  for (const h of histograms) {
    if (!h) continue;
    if (total === null) {
      total = { le: h.le, cumulative: [...h.cumulative], sum: h.sum };
    } else if (_sameBounds(total, h)) {
      const t = total;
      h.cumulative.forEach((c, i) => t.cumulative[i] = (t.cumulative[i] ?? 0) + c);
      t.sum += h.sum;
    }
  }
  return total;
}

/**
 * The q-quantile of a histogram, interpolated linearly inside its bucket as Prometheus'
 * `histogram_quantile` does; null without observations. Observations above the highest finite
 * bound are reported as that bound.
 *
 * @param {number} q Between 0 and 1.
 * @param {Histogram | null} h
 * @returns {number | null}
 */
export function quantile(q, h) {
  if (!h) return null;
  const total = h.cumulative[h.cumulative.length - 1] ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  const i = h.cumulative.findIndex((c) => c >= rank);
  if (i < 0 || i >= h.le.length) return h.le[h.le.length - 1] ?? null;
  const lower = i === 0 ? 0 : h.le[i - 1];
  const below = i === 0 ? 0 : h.cumulative[i - 1];
  const inBucket = h.cumulative[i] - below;
  if (inBucket <= 0) return h.le[i];
  return lower + (h.le[i] - lower) * ((rank - below) / inBucket);
}

/**
 * @param {Histogram} a
 * @param {Histogram} b
 */
function _sameBounds(a, b) {
  return a.le.length === b.le.length && a.cumulative.length === b.cumulative.length &&
    a.le.every((x, i) => x === b.le[i]);
}

/**
 * Who leads, from the members' statuses: among the members at the highest term seen, the one
 * that says it leads, else the leader most of them name (which the node that gathered the
 * statuses could not reach). Null while there is none.
 *
 * @param {{ members: { status: any }[] }} view The answer of `GET /v1/cluster`.
 * @returns {{ id: string, term: number, reachable: boolean } | null}
 */
export function leaderOf(view) {
  const statuses = view.members.map((m) => m.status).filter((s) => s);
  if (statuses.length === 0) return null;
  const term = Math.max(...statuses.map((s) => s.term));
  const current = statuses.filter((s) => s.term === term);
  const claim = current.find((s) => s.role === "leader");
  if (claim) return { id: claim.id, term, reachable: true };
  /** @type {Map<string, number>} */
  const votes = new Map();
  for (const s of current) if (s.leader) votes.set(s.leader.id, (votes.get(s.leader.id) ?? 0) + 1);
  let best = null;
  for (const [id, n] of votes) if (best === null || n > best[1]) best = [id, n];
  return best === null ? null : { id: best[0], term, reachable: false };
}

/**
 * The status with which a member refused the token the page sent on (401: a token it does not
 * know, such as after a rotation that has not reached it; 403: one too weak to read its status),
 * or null when it did not. Such a member is up: it answered, only not with its figures.
 *
 * @param {{ status: any, http_status?: number }} member A member of `GET /v1/cluster`.
 * @returns {401 | 403 | null}
 */
export function refusedToken(member) {
  if (member.status) return null;
  return member.http_status === 401 || member.http_status === 403 ? member.http_status : null;
}

/**
 * How many members are up: those whose status came back, and those that answered but refused
 * the token (see {@linkcode refusedToken}), which are also counted as `refused`.
 *
 * @param {{ members: { status: any, http_status?: number }[] }} view The answer of
 * `GET /v1/cluster`.
 * @returns {{ up: number, refused: number }}
 */
export function membersUp(view) {
  const refused = view.members.filter((m) => refusedToken(m) !== null).length;
  return { up: view.members.filter((m) => m.status).length + refused, refused };
}

/**
 * Seconds since the leader last heard from a member past which the page flags it when the leader
 * reports no election timeout of its own (a version without `raftkv_election_timeout_seconds`):
 * the default `--election-timeout`, 1 s.
 */
export const LAST_HEARD_WARN_S = 1;

/**
 * Seconds since the leader last heard from a member past which the page flags it: the leader's
 * election timeout (`election_timeout_seconds` in its metrics), past which it no longer counts the
 * member among those it hears from (see {@linkcode failureTolerance}); {@linkcode LAST_HEARD_WARN_S}
 * when no leader is known, the page's node could not reach it, or it reports none.
 *
 * @param {{ members: { id: string, metrics?: any }[] }} view The answer of `GET /v1/cluster`.
 * @param {{ id: string } | null} leader The leader, as {@linkcode leaderOf} finds it.
 * @returns {number}
 */
export function lastHeardWarnSeconds(view, leader) {
  if (leader === null) return LAST_HEARD_WARN_S;
  const timeout = view.members.find((m) => m.id === leader.id)?.metrics?.election_timeout_seconds;
  return typeof timeout === "number" && Number.isFinite(timeout) && timeout > 0
    ? timeout
    : LAST_HEARD_WARN_S;
}

/**
 * The cluster's failure tolerance as its leader reports it (`failure_tolerance` in the leader's
 * metrics): how many more voters could fail before the cluster lost its quorum. Null when no
 * leader reports one: none is known, the page's node could not reach it, or it runs a version
 * without the figure.
 *
 * @param {{ members: { id: string, metrics?: any }[] }} view The answer of `GET /v1/cluster`.
 * @param {{ id: string } | null} leader The leader, as {@linkcode leaderOf} finds it.
 * @returns {number | null}
 */
export function failureTolerance(view, leader) {
  if (leader === null) return null;
  const tolerance = view.members.find((m) => m.id === leader.id)?.metrics?.failure_tolerance;
  return typeof tolerance === "number" && Number.isFinite(tolerance) ? tolerance : null;
}

/**
 * How the page shows a failure tolerance: the figure, a note, and its class: amber at 0 (no
 * voter to spare: one more failure stops writes), red below (the leader hears from fewer voters
 * than a quorum).
 *
 * @param {number | null} tolerance As {@linkcode failureTolerance} finds it.
 * @returns {{ text: string, note: string, cls: string }}
 */
export function describeTolerance(tolerance) {
  if (tolerance === null) return { text: "—", note: "no leader reports it", cls: "big" };
  if (tolerance > 0) {
    return {
      text: String(tolerance),
      note: `${tolerance} voter${tolerance === 1 ? "" : "s"} can fail`,
      cls: "big",
    };
  }
  if (tolerance === 0) return { text: "0", note: "no voter to spare", cls: "big state-warn" };
  return {
    text: String(tolerance),
    note: `${-tolerance} voter${tolerance === -1 ? "" : "s"} short of a quorum`,
    cls: "big state-bad",
  };
}

/**
 * A member's "last heard" cell: how long ago the leader last heard from it (`last_contact_seconds`
 * in the leader's metrics, in whole heartbeats: `just now` for 0), flagged past `warnAfter`
 * (the leader's election timeout, see {@linkcode lastHeardWarnSeconds}); `leader` on the leader's
 * own row, and `—` when the leader reports nothing for the member.
 *
 * @param {number | undefined} seconds The member's entry in the leader's `last_contact_seconds`.
 * @param {boolean} isLeader Whether the member is the leader.
 * @param {number} [warnAfter] Seconds past which the cell is flagged; default
 * {@linkcode LAST_HEARD_WARN_S}.
 * @returns {{ text: string, cls: string | undefined }}
 */
export function lastHeard(seconds, isLeader, warnAfter = LAST_HEARD_WARN_S) {
  if (isLeader) return { text: "leader", cls: undefined };
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) {
    return { text: "—", cls: undefined };
  }
  return {
    // The leader counts in heartbeats: 0 is within the current one.
    text: seconds < 0.001 ? "just now" : formatSeconds(seconds),
    cls: seconds > warnAfter ? "lag-high" : undefined,
  };
}

/**
 * @typedef {{
 *   api: number | null, peer: number | null,
 *   limits: Record<string, number>, reasons: Record<string, number>
 * }} Refusals
 * A member's refusals per second: REST API requests it answered 429 (`api`, from
 * `http_refusals_total`, by the limit that refused them in `limits`) and peer-port requests it
 * refused (`peer`, from `peer_refusals_total`, by reason in `reasons`). The breakdowns hold only
 * the nonzero rates; `api` or `peer` is null when the member does not report that counter (a
 * version from before it: an empty object, or no field at all from a page's node that old).
 */

/**
 * A member's refusals per second between two readings of its metrics, each counter taken label by
 * label (one that went down was reset: see {@linkcode counterDelta}; one the earlier reading
 * lacks counts from 0, as after an upgrade).
 *
 * @param {any} before The member's `metrics` in the earlier poll.
 * @param {any} after The member's `metrics` in the later one.
 * @param {number} seconds The time between the two, in seconds (more than 0).
 * @returns {Refusals}
 */
export function refusalRates(before, after, seconds) {
  /**
   * @param {Record<string, number> | undefined} a
   * @param {Record<string, number> | undefined} b
   * @returns {[number | null, Record<string, number>]}
   */
  const rates = (a, b) => {
    /** @type {Record<string, number>} */
    const by = {};
    if (!b || Object.keys(b).length === 0) return [null, by];
    let total = 0;
    for (const [label, value] of Object.entries(b)) {
      const rate = counterDelta(a?.[label] ?? 0, value) / seconds;
      if (rate > 0) {
        by[label] = rate;
        total += rate;
      }
    }
    return [total, by];
  };
  const [api, limits] = rates(before?.http_refusals_total, after?.http_refusals_total);
  const [peer, reasons] = rates(before?.peer_refusals_total, after?.peer_refusals_total);
  return { api, peer, limits, reasons };
}

/**
 * A member's "Refused/s" cell: `0` while it refuses nothing; else its API 429s and peer refusals
 * per second (`API 0.4 · peer 2`), flagged amber, and what refused them, each nonzero limit and
 * reason with its rate, the highest first (`API: requests 0.4`, `peer: unknown_path 2`); `—` before
 * the page has two polls of the member, or when it reports neither counter (a version from before
 * them; `—` also stands for the one it lacks).
 *
 * @param {Refusals | undefined} refusals As {@linkcode refusalRates} finds them.
 * @returns {{ text: string, cls: string | undefined, items: string[] }}
 */
export function describeRefusals(refusals) {
  if (!refusals || (refusals.api === null && refusals.peer === null)) {
    return { text: "—", cls: undefined, items: [] };
  }
  const { api, peer } = refusals;
  if ((api ?? 0) === 0 && (peer ?? 0) === 0) return { text: "0", cls: undefined, items: [] };
  /**
   * @param {string} kind
   * @param {Record<string, number>} by
   */
  const item = (kind, by) => {
    const entries = Object.entries(by).sort(([a, x], [b, y]) => y - x || (a < b ? -1 : 1));
    return entries.length === 0
      ? []
      : [`${kind}: ${entries.map(([label, rate]) => `${label} ${_refusalRate(rate)}`).join(", ")}`];
  };
  return {
    text: `API ${_refusalRate(api)} · peer ${_refusalRate(peer)}`,
    cls: "refusing state-warn",
    items: [...item("API", refusals.limits), ...item("peer", refusals.reasons)],
  };
}

/**
 * A refusal rate: as {@linkcode formatRate}, but never `0` for one above 0.
 *
 * @param {number | null} perSecond
 */
function _refusalRate(perSecond) {
  return perSecond !== null && perSecond > 0 && perSecond < 0.005 ? "<0.01" : formatRate(perSecond);
}

/**
 * @typedef {{
 *   t: number, read: number | null, write: number | null, errors: number | null,
 *   readP50: number | null, readP99: number | null, writeP50: number | null,
 *   writeP99: number | null, members: Record<string, number>, refused: Record<string, Refusals>
 * }} Point
 * One moment of the charts: requests per second (reads, writes, 5xx answers) summed over the
 * members, latency quantiles in seconds, and each member's requests per second and refusals per
 * second (see {@linkcode refusalRates}).
 */

/** The polls of the last minutes, and the chart points computed from them. */
export class History {
  /**
   * @param {{ keepMs?: number, windowMs?: number }} [options]
   */
  constructor(options = {}) {
    this.keepMs = options.keepMs ?? HISTORY_MS;
    this.windowMs = options.windowMs ?? WINDOW_MS;
    /** @type {{ t: number, metrics: Map<string, any> }[]} */
    this.samples = [];
    /** @type {Point[]} */
    this.points = [];
  }

  /**
   * Records a poll and returns its chart point: rates and quantiles over the window (or since
   * the previous poll, if it is older).
   *
   * @param {number} t When the poll was answered, in milliseconds.
   * @param {{ members: { id: string, metrics: any }[] }} view The answer of `GET /v1/cluster`.
   * @returns {Point}
   */
  add(t, view) {
    const metrics = new Map();
    for (const m of view.members) if (m.metrics) metrics.set(m.id, m.metrics);
    const sample = { t, metrics };
    const older = this.samples.filter((s) => s.t < t);
    const base = older.find((s) => s.t >= t - this.windowMs) ?? older[older.length - 1];
    const point = base ? _point(base, sample) : _emptyPoint(t);
    this.samples.push(sample);
    this.points.push(point);
    const horizon = t - this.keepMs - this.windowMs;
    while (this.samples.length > 0 && this.samples[0].t < horizon) this.samples.shift();
    while (this.points.length > 0 && this.points[0].t < t - this.keepMs) this.points.shift();
    return point;
  }
}

/**
 * @param {number} t
 * @returns {Point}
 */
function _emptyPoint(t) {
  return {
    t,
    read: null,
    write: null,
    errors: null,
    readP50: null,
    readP99: null,
    writeP50: null,
    writeP99: null,
    members: {},
    refused: {},
  };
}

/**
 * @param {{ t: number, metrics: Map<string, any> }} a
 * @param {{ t: number, metrics: Map<string, any> }} b
 * @returns {Point}
 */
function _point(a, b) {
  const seconds = (b.t - a.t) / 1000;
  const point = _emptyPoint(b.t);
  let read = 0, write = 0, errors = 0, any = false;
  /** @type {(Histogram | null)[]} */
  const readH = [];
  /** @type {(Histogram | null)[]} */
  const writeH = [];
  for (const [id, after] of b.metrics) {
    const before = a.metrics.get(id);
    if (!before) continue;
    any = true;
    const r = counterDelta(
      sumCounts(before.requests_total.read),
      sumCounts(after.requests_total.read),
    );
    const w = counterDelta(
      sumCounts(before.requests_total.write),
      sumCounts(after.requests_total.write),
    );
    const is5xx = (/** @type {string} */ cls) => cls.startsWith("5");
    errors += counterDelta(
      sumCounts(before.requests_total.read, is5xx) + sumCounts(before.requests_total.write, is5xx),
      sumCounts(after.requests_total.read, is5xx) + sumCounts(after.requests_total.write, is5xx),
    );
    read += r;
    write += w;
    point.members[id] = (r + w) / seconds;
    if (seconds > 0) point.refused[id] = refusalRates(before, after, seconds);
    readH.push(
      histogramDelta(before.request_duration_seconds.read, after.request_duration_seconds.read),
    );
    writeH.push(
      histogramDelta(before.request_duration_seconds.write, after.request_duration_seconds.write),
    );
  }
  if (!any || seconds <= 0) return point;
  point.read = read / seconds;
  point.write = write / seconds;
  point.errors = errors / seconds;
  const rh = sumHistograms(readH);
  const wh = sumHistograms(writeH);
  point.readP50 = quantile(0.5, rh);
  point.readP99 = quantile(0.99, rh);
  point.writeP50 = quantile(0.5, wh);
  point.writeP99 = quantile(0.99, wh);
  return point;
}

/**
 * The history to keep, from the page's query (`?minutes=N`, 1 to 60), else the default.
 *
 * @param {string} search The page's `location.search`.
 * @returns {number} Milliseconds.
 */
export function historyMs(search) {
  const minutes = Number(new URLSearchParams(search).get("minutes"));
  return Number.isInteger(minutes) && minutes >= 1 && minutes <= 60 ? minutes * 60_000 : HISTORY_MS;
}

// ---- formatting ---------------------------------------------------------------------------------

/**
 * A duration in seconds for people: `850 µs`, `3.2 ms`, `1.25 s`; `—` for null.
 *
 * @param {number | null} seconds
 * @returns {string}
 */
export function formatSeconds(seconds) {
  if (seconds === null || !Number.isFinite(seconds)) return "—";
  if (seconds < 0.001) return `${Math.round(seconds * 1e6)} µs`;
  if (seconds < 1) return `${_digits(seconds * 1000)} ms`;
  return `${_digits(seconds)} s`;
}

/**
 * A rate for people: `0`, `0.4`, `12.5`, `340`, `12.3k`; `—` for null.
 *
 * @param {number | null} perSecond
 * @returns {string}
 */
export function formatRate(perSecond) {
  if (perSecond === null || !Number.isFinite(perSecond)) return "—";
  if (perSecond === 0) return "0";
  if (perSecond >= 10_000) return `${_digits(perSecond / 1000)}k`;
  return _digits(perSecond);
}

/**
 * A size in bytes for people: `0 B`, `512 B`, `1.5 KiB`, `64 MiB`, `1 GiB`.
 *
 * @param {number} bytes
 * @returns {string}
 */
export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? String(value) : _digits(value)} ${units[unit]}`;
}

/** @param {number} x */
function _digits(x) {
  if (x >= 100) return String(Math.round(x));
  if (x >= 10) return x.toFixed(1).replace(/\.0$/, "");
  return x.toFixed(2).replace(/\.?0+$/, "");
}

/**
 * The top of a chart's scale: the least of 1, 2, 2.5, 5 times a power of ten that is at least
 * `value` (and `floor`).
 *
 * @param {number} value
 * @param {number} floor
 * @returns {number}
 */
export function niceMax(value, floor) {
  const v = Math.max(value, floor);
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= v * (1 - 1e-9)) return step * power;
  return 10 * power;
}

// ---- the page -----------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const CHART_W = 600;
const CHART_H = 150;

/** The members table's column of refusals per second (see {@linkcode describeRefusals}). */
const REFUSED_LABEL = "Refused/s";

/**
 * The content of a member's "Refused/s" cell: the figure alone, or with the list of what refused.
 *
 * @param {{ text: string, items: string[] }} refusals As {@linkcode describeRefusals} gives them.
 * @returns {string | Node}
 */
function refusalsContent(refusals) {
  if (refusals.items.length === 0) return refusals.text;
  const box = document.createElement("div");
  box.className = "refusals";
  const figure = document.createElement("span");
  figure.textContent = refusals.text;
  const list = document.createElement("ul");
  list.className = "breakdown";
  list.setAttribute("aria-label", "refused by");
  for (const text of refusals.items) {
    const li = document.createElement("li");
    li.textContent = text;
    list.append(li);
  }
  box.append(figure, list);
  return box;
}

/** Runs the page: polls, renders, and asks for a token when the node wants one. */
function start() {
  const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
  const keepMs = historyMs(location.search);
  const history = new History({ keepMs });
  for (const el of document.querySelectorAll(".span")) {
    el.textContent = `· last ${keepMs / 60_000} min`;
  }
  /**
   * Leaderships seen, oldest first; `initial` for the one found when the page opened.
   * @type {{ t: number, from: string | null, to: string | null, term: number, initial: boolean }[]}
   */
  const changes = [];
  /** @type {string | null | undefined} */
  let lastLeader = undefined;
  let timer = 0;
  let polling = false;
  /**
   * When the figures shown were polled, in milliseconds; null before the first poll.
   * @type {number | null}
   */
  let shownAt = null;
  const storage = tokenStore(sessionStorageOrNull());
  const auth = tokenForm(storage, () => poll());

  /**
   * Says why the page cannot poll (null: it can), and that the figures shown, if any, are from
   * the last poll that worked.
   *
   * @param {string | null} text
   */
  function banner(text) {
    const el = $("banner");
    el.hidden = text === null;
    el.textContent = text === null || shownAt === null
      ? text ?? ""
      : `${text} · stale since ${_time(shownAt)}`;
    document.body.classList.toggle("stale", text !== null);
  }

  function schedule(delay = POLL_MS) {
    clearTimeout(timer);
    if (auth.waiting || document.hidden) return;
    timer = setTimeout(poll, delay);
  }

  async function poll() {
    if (polling) return;
    polling = true;
    const started = performance.now();
    try {
      const res = await fetch("../v1/cluster", {
        headers: withToken({ accept: "application/json" }, storage.get()),
        cache: "no-store",
        signal: AbortSignal.timeout(5000),
      });
      if (res.status === 401) {
        auth.ask(/** @type {string} */ (refusalMessage(401, storage, "")));
        // The form says what to do; figures already shown are marked as old.
        banner(shownAt === null ? null : "GET /v1/cluster answered 401");
        return;
      }
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        const why = typeof body.error === "string" ? `: ${body.error}` : "";
        const refused = refusalMessage(res.status, storage, "read the cluster's state", why);
        if (refused !== null) auth.ask(refused);
        banner(`GET /v1/cluster answered ${res.status}${why}`);
        return;
      }
      const view = await res.json();
      banner(null);
      render(view);
    } catch (err) {
      banner(`Cannot reach this node (${err instanceof Error ? err.message : err}); retrying…`);
    } finally {
      polling = false;
      schedule(Math.max(0, POLL_MS - (performance.now() - started)));
    }
  }

  /** @param {any} view */
  function render(view) {
    const now = Date.now();
    shownAt = now;
    const point = history.add(now, view);
    const leader = leaderOf(view);
    const statuses = view.members.flatMap((/** @type {any} */ m) => m.status ? [m.status] : []);
    const { up, refused } = membersUp(view);

    const leaderId = leader ? leader.id : null;
    if (leaderId !== lastLeader) {
      if (lastLeader !== undefined || leaderId !== null) {
        changes.push({
          t: now,
          from: lastLeader ?? null,
          to: leaderId,
          term: leader?.term ?? 0,
          initial: lastLeader === undefined,
        });
        if (changes.length > 20) changes.shift();
      }
      lastLeader = leaderId;
      renderChanges();
    }

    $("source").textContent = `${view.members.length} members · served by ${view.self} · updated ${
      new Date(now).toLocaleTimeString([], { hour12: false })
    }`;
    $("leader").textContent = leaderId ?? "none";
    $("leader").dataset.term = String(leader?.term ?? "");
    $("leader-note").textContent = leader === null
      ? "no leader known: an election may be under way"
      : !leader.reachable
      ? `not reachable from ${view.self}`
      : changes[changes.length - 1]?.initial
      ? "leading when this page opened"
      : `since ${_time(changes[changes.length - 1]?.t ?? now)}`;
    $("term").textContent = statuses.length
      ? String(Math.max(...statuses.map((/** @type {any} */ s) => s.term)))
      : "—";
    $("commit").textContent = statuses.length
      ? String(Math.max(...statuses.map((/** @type {any} */ s) => s.commit_index)))
      : "—";
    $("up").textContent = `${up} / ${view.members.length}`;
    $("up").className = up === view.members.length
      ? "big"
      : `big ${up * 2 > view.members.length ? "state-warn" : "state-bad"}`;
    $("up-note").textContent = refused === 0 ? "" : `${refused} refused the token`;
    const tolerance = describeTolerance(failureTolerance(view, leader));
    $("tolerance").textContent = tolerance.text;
    $("tolerance").className = tolerance.cls;
    $("tolerance-note").textContent = tolerance.note;
    const total = point.read === null || point.write === null ? null : point.read + point.write;
    $("rate").textContent = formatRate(total);
    $("rate-note").textContent = total === null
      ? ""
      : `${formatRate(point.read)} reads · ${formatRate(point.write)} writes · ${
        formatRate(point.errors)
      } 5xx`;
    $("write-p99").textContent = formatSeconds(point.writeP99);
    $("write-p50").textContent = point.writeP50 === null
      ? ""
      : `p50 ${formatSeconds(point.writeP50)}`;
    $("read-p99").textContent = formatSeconds(point.readP99);
    $("read-p50").textContent = point.readP50 === null ? "" : `p50 ${formatSeconds(point.readP50)}`;

    renderMembers(view, leader, point);
    renderCharts(now);
  }

  /**
   * @param {any} view
   * @param {{ id: string } | null} leader
   * @param {Point} point
   */
  function renderMembers(view, leader, point) {
    const leaderView = leader
      ? view.members.find((/** @type {any} */ m) => m.id === leader.id)
      : undefined;
    const lags = leaderView?.metrics?.replication_lag_entries ?? {};
    // Absent from the summary of a node from before it: no figure, as for a follower.
    const contacts = leaderView?.metrics?.last_contact_seconds ?? {};
    // Flagged past the leader's election timeout (1 s, the default, if it reports none).
    const heardWarnS = lastHeardWarnSeconds(view, leader);
    const rows = view.members.map((/** @type {any} */ m) => {
      const s = m.status;
      const refused = refusedToken(m);
      const tr = document.createElement("tr");
      tr.dataset.id = m.id;
      tr.dataset.role = s ? s.role : refused !== null ? "refused" : "unreachable";
      if (!s && refused === null) tr.className = "down";
      /**
       * @param {string} label
       * @param {string | Node} content
       * @param {string} [cls]
       */
      const cell = (label, content, cls) => {
        const td = document.createElement("td");
        td.dataset.label = label;
        if (cls) td.className = cls;
        td.append(content);
        tr.append(td);
        return td;
      };
      const name = document.createElement("span");
      name.textContent = m.id;
      const node = cell("Node", name);
      if (m.self) {
        const tag = document.createElement("span");
        tag.className = "self";
        tag.textContent = "this node";
        node.append(tag);
      }
      const role = document.createElement("span");
      role.className = `role ${s ? s.role : ""}`;
      role.textContent = s ? s.role : "—";
      cell("Role", role);
      cell("Term", s ? String(s.term) : "—");
      cell("Commit", s ? String(s.commit_index) : "—");
      cell("Applied", s ? String(s.applied_index) : "—");
      cell("Last index", s ? String(s.last_index) : "—");
      const lag = lags[m.id];
      const isLeader = leader !== null && m.id === leader.id;
      cell(
        "Lag",
        isLeader ? "leader" : lag === undefined ? "—" : String(lag),
        !isLeader && lag !== undefined && lag > 100 ? "lag-high" : undefined,
      );
      const heard = lastHeard(contacts[m.id], isLeader, heardWarnS);
      cell("Last heard", heard.text, heard.cls);
      cell("Leader changes", m.metrics ? String(m.metrics.leader_changes_total) : "—");
      // The data and its quota (--quota-bytes): warned at 80 %, bad once writes are refused.
      const data = m.metrics?.data_bytes, quota = m.metrics?.quota_bytes;
      cell(
        "Data",
        data === undefined
          ? "—"
          : quota > 0
          ? `${formatBytes(data)} / ${formatBytes(quota)}`
          : formatBytes(data),
        quota > 0 && data >= quota
          ? "state-bad"
          : quota > 0 && data >= 0.8 * quota
          ? "state-warn"
          : undefined,
      );
      const rate = point.members[m.id];
      cell("Requests/s", rate === undefined ? "—" : formatRate(rate));
      // Requests it refused, flagged with what refused them (a node from before the counters: —).
      const refusals = describeRefusals(point.refused[m.id]);
      cell(REFUSED_LABEL, refusalsContent(refusals), refusals.cls);
      let state = "ok", cls = "state-ok";
      if (refused !== null) {
        // Up, but not for this token (tokens rotated on it and not yet here, say).
        state = `refused the token (${refused})`;
        cls = "state-warn";
      } else if (!s || m.error) {
        state = s ? m.error : `unreachable: ${m.error ?? "no answer"}`;
        cls = s ? "state-warn" : "state-bad";
      } else if (s.alarms.length > 0) {
        state = `alarm: ${s.alarms.join(", ")}`;
        cls = "state-bad";
      } else if (s.applied_index < s.commit_index) {
        state = `applying (${s.commit_index - s.applied_index} behind)`;
        cls = "state-warn";
      }
      cell("State", state, cls);
      return tr;
    });
    $("members").querySelector("tbody")?.replaceChildren(...rows);
  }

  function renderChanges() {
    const items = changes.slice().reverse().map((c) => {
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.dateTime = new Date(c.t).toISOString();
      time.textContent = _time(c.t);
      li.append(time);
      li.append(
        c.to === null
          ? `no leader (was ${c.from})`
          : c.initial
          ? `${c.to} leads (term ${c.term}) when the page opens`
          : c.from === null
          ? `${c.to} leads (term ${c.term})`
          : `${c.from} → ${c.to} (term ${c.term})`,
      );
      return li;
    });
    $("changes").replaceChildren(...items);
  }

  /** @param {number} now */
  function renderCharts(now) {
    const points = history.points;
    const rateMax = niceMax(
      Math.max(0, ...points.flatMap((p) => [p.read ?? 0, p.write ?? 0, p.errors ?? 0])),
      1,
    );
    $("rate-max").textContent = `${formatRate(rateMax)}/s`;
    drawChart($("rate-chart"), now, rateMax, [
      { cls: "read", values: points.map((p) => [p.t, p.read]) },
      { cls: "write", values: points.map((p) => [p.t, p.write]) },
      { cls: "error", values: points.map((p) => [p.t, p.errors]) },
    ]);
    const latencyMax = niceMax(
      Math.max(0, ...points.flatMap((p) => [p.readP99 ?? 0, p.writeP99 ?? 0])),
      0.001,
    );
    $("latency-max").textContent = formatSeconds(latencyMax);
    drawChart($("latency-chart"), now, latencyMax, [
      { cls: "write", values: points.map((p) => [p.t, p.writeP99]) },
      { cls: "write dashed", values: points.map((p) => [p.t, p.writeP50]) },
      { cls: "read", values: points.map((p) => [p.t, p.readP99]) },
      { cls: "read dashed", values: points.map((p) => [p.t, p.readP50]) },
    ]);
  }

  /**
   * @param {Element} svg
   * @param {number} now
   * @param {number} yMax
   * @param {{ cls: string, values: [number, number | null][] }[]} series
   */
  function drawChart(svg, now, yMax, series) {
    const x = (/** @type {number} */ t) => ((t - (now - keepMs)) / keepMs) * CHART_W;
    const y = (/** @type {number} */ v) =>
      CHART_H - 2 - (Math.min(v, yMax) / yMax) * (CHART_H - 14);
    /** @type {Element[]} */
    const nodes = [];
    for (const f of [0, 0.5, 1]) {
      const line = document.createElementNS(SVG, "line");
      const yy = String(y(f * yMax));
      line.setAttribute("x1", "0");
      line.setAttribute("x2", String(CHART_W));
      line.setAttribute("y1", yy);
      line.setAttribute("y2", yy);
      nodes.push(line);
    }
    for (const s of series) {
      /** @type {string[][]} */
      const runs = [[]];
      for (const [t, v] of s.values) {
        if (v === null) {
          if (runs[runs.length - 1].length > 0) runs.push([]);
        } else {
          runs[runs.length - 1].push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
        }
      }
      for (const run of runs) {
        if (run.length === 0) continue;
        if (run.length === 1) run.push(run[0].replace(/^[\d.]+/, (n) => String(Number(n) + 2)));
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("class", s.cls);
        line.setAttribute("points", run.join(" "));
        nodes.push(line);
      }
    }
    svg.replaceChildren(...nodes);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  poll();
}

/** @param {number} t */
function _time(t) {
  return new Date(t).toLocaleTimeString([], { hour12: false });
}

if (typeof document !== "undefined") start();
