// The changes of a key or a prefix as they are committed, live: GET /v1/watch of the node that
// served the page, read as a stream with fetch so that it can carry the tab's bearer token in an
// Authorization header (EventSource cannot send headers; the token never goes in the URL).
// `?key=K` or `?prefix=P` (default: every key), and `?from=N`, as the API takes them. A node that
// asks for a token (401/403) gets the same token form as the dashboard (token.js). After a broken
// stream the page reconnects after the last change it listed (its event id as `Last-Event-ID`,
// which also covers a stream broken between two changes of one entry), so the list goes on
// without a gap or a repeat. The SSE parser is exported for the tests (watch_test.ts).

import { refusalMessage, sessionStorageOrNull, tokenForm, tokenStore, withToken } from "./token.js";

/** The longest wait between two reconnects, in milliseconds. */
export const MAX_RETRY_MS = 5000;

/**
 * Server-Sent Events from text chunks as they arrive: `push` returns the messages a chunk
 * completes. Comments (`: heartbeat`) are skipped; a message without data is not dispatched, as
 * in EventSource.
 */
export class SseParser {
  #buffer = "";
  #event = "";
  /** @type {string[]} */
  #data = [];
  /** @type {string | null} */
  #id = null;

  /**
   * @param {string} chunk The next piece of the stream's text.
   * @returns {{ event: string, data: string, id: string | null }[]}
   */
  push(chunk) {
    this.#buffer += chunk;
    /** @type {{ event: string, data: string, id: string | null }[]} */
    const out = [];
    for (;;) {
      const end = this.#buffer.search(/\r\n|\r|\n/);
      // A lone "\r" at the end may be the first half of "\r\n": wait for the next chunk.
      if (end === -1 || (end === this.#buffer.length - 1 && this.#buffer.endsWith("\r"))) break;
      const line = this.#buffer.slice(0, end);
      const size = this.#buffer.startsWith("\r\n", end) ? 2 : 1;
      this.#buffer = this.#buffer.slice(end + size);
      if (line === "") {
        if (this.#data.length > 0) {
          out.push({ event: this.#event || "message", data: this.#data.join("\n"), id: this.#id });
        }
        this.#event = "";
        this.#data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.#data.push(value);
      else if (field === "event") this.#event = value;
      else if (field === "id") this.#id = value;
    }
    return out;
  }
}

/**
 * The wait before reconnect number `attempt` (0 for the first): 500 ms, doubling, at most
 * {@linkcode MAX_RETRY_MS}.
 *
 * @param {number} attempt
 * @returns {number}
 */
export function retryDelay(attempt) {
  return Math.min(MAX_RETRY_MS, 500 * 2 ** attempt);
}

/** Runs the page: streams the watch, lists its changes, and asks for a token when needed. */
function start() {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  for (const name of ["key", "prefix"]) {
    const value = params.get(name);
    if (value !== null) query.set(name, value);
  }
  if (!query.has("key") && !query.has("prefix")) query.set("prefix", "");
  const fromParam = params.get("from");
  /** The index to watch from at the next connect; null: whatever comes next. */
  let next = fromParam === null || fromParam === "" ? null : Number(fromParam);
  /**
   * The id of the last event taken (or the `last_id` a final event named): once set, each connect
   * goes on after it (`Last-Event-ID`) instead of `from`.
   * @type {string | null}
   */
  let lastId = null;
  let attempt = 0;
  let timer = 0;

  const state = /** @type {HTMLElement} */ (document.getElementById("state"));
  const list = /** @type {HTMLElement} */ (document.getElementById("events"));
  /** @type {HTMLElement} */ (document.getElementById("what")).textContent = query.has("key")
    ? `key ${query.get("key")}`
    : `keys under "${query.get("prefix")}"`;
  const storage = tokenStore(sessionStorageOrNull());
  const auth = tokenForm(storage, () => connect());

  /**
   * @param {string} text
   * @param {string} name
   */
  function show(text, name) {
    state.textContent = text;
    state.dataset.state = name;
  }

  /** @param {string} why */
  function retry(why) {
    const delay = retryDelay(attempt++);
    show(`${why}; reconnecting in ${Math.round(delay / 100) / 10} s…`, "error");
    clearTimeout(timer);
    timer = setTimeout(connect, delay);
  }

  /** @param {{ index: number, type: string, k: string, v: string | null }} e */
  function add(e) {
    const item = document.createElement("li");
    item.dataset.index = String(e.index);
    item.dataset.type = e.type;
    item.textContent = `${e.index} ${e.type} ${e.k}${e.v === null ? "" : ` = ${e.v}`}`;
    list.append(item);
  }

  async function connect() {
    clearTimeout(timer);
    if (auth.waiting) return;
    const q = new URLSearchParams(query);
    if (lastId === null && next !== null) q.set("from", String(next));
    /** @type {Record<string, string>} */
    const headers = { accept: "text/event-stream" };
    if (lastId !== null) headers["last-event-id"] = lastId;
    show("connecting…", "connecting");
    /** @type {Response} */
    let res;
    try {
      res = await fetch(`../v1/watch?${q}`, {
        headers: withToken(headers, storage.get()),
        cache: "no-store",
      });
    } catch (err) {
      retry(`cannot reach this node (${err instanceof Error ? err.message : err})`);
      return;
    }
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      const why = typeof body.error === "string" ? `: ${body.error}` : "";
      const refused = refusalMessage(res.status, storage, "watch these keys", why);
      if (refused !== null) {
        show(refused, "auth");
        auth.ask(refused);
      } else if (res.status === 410 || res.status === 400) {
        // Reconnecting would be answered the same: say so and stop.
        show(`GET /v1/watch answered ${res.status}${why}`, "failed");
      } else {
        retry(`GET /v1/watch answered ${res.status}${why}`);
      }
      return;
    }
    // Without a `from` the stream starts after the node's applied index (the answer's
    // X-Raftkv-Index): go on from there after a reconnect even if no change came before it.
    const started = Number(res.headers.get("x-raftkv-index") ?? "");
    if (next === null && Number.isSafeInteger(started) && started >= 0) next = started + 1;
    show("watching", "open");
    attempt = 0;
    /** @type {string | null} */
    let reason = null;
    const parser = new SseParser();
    const reader = /** @type {ReadableStream<Uint8Array>} */ (res.body)
      .pipeThrough(new TextDecoderStream())
      .getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const m of parser.push(value)) {
          const data = JSON.parse(m.data);
          if (m.event === "message") {
            add(data);
            lastId = m.id ?? String(data.index);
          } else if (m.event === "error") {
            // The server's final event: why the stream ends, and where to go on from.
            reason = typeof data.error === "string" ? data.error : "the stream ended";
            if (typeof data.last_id === "string") lastId = data.last_id;
          }
        }
      }
    } catch {
      // A broken connection: reconnect below.
    }
    retry(reason ?? "the stream ended");
  }

  connect();
}

if (typeof document !== "undefined") start();
