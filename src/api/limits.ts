/**
 * The budgets that bound what one API handler holds at once: requests in progress and the bytes
 * of their bodies (a request's answer included, until the server has taken it: see
 * {@linkcode AdmittedRequest}), the bytes of answers one client has not read yet, forwards to the
 * leader in progress, backups streaming (each with a deadline), and watch streams and blocking
 * reads waiting. {@linkcode ApiLimits} keeps the counts; the handler answers 429 with
 * `Retry-After` when a budget is spent, and each check that refuses says which budget did
 * (`LimitOptions.onRefusal`, which the handler counts in `raftkv_http_refusals_total`).
 *
 * @module
 */

import { isSmallAnswer, SMALL_ANSWER_BYTES } from "./errors.ts";

/**
 * The most bytes of an answer handed to the server at once (see
 * {@linkcode AdmittedRequest.prototype.send}): a client that does not read holds at most a chunk
 * or two of it in the server's buffers; the rest stays counted here.
 */
export const RESPONSE_CHUNK_BYTES: number = SMALL_ANSWER_BYTES;

/**
 * The least time an answer's body may go without the server taking a chunk of it before it is cut
 * off (see {@linkcode AdmittedRequest.prototype.send}): the larger of this and `--api-timeout`.
 */
export const MIN_RESPONSE_STALL_MS = 30_000;

const _EMPTY: Uint8Array<ArrayBuffer> = new Uint8Array(0);

/**
 * The budget a request was refused (429) by: `requests` (`maxInflightRequests`), `bytes`
 * (`maxInflightBytes`), `client_unread` (`maxClientUnreadBytes`: its client's unread answers),
 * `forwards` (`maxForwardedRequests`), `watchers` (a watch stream past `maxWatchers`),
 * `blocking_reads` (a blocking read past `maxWatchers`, with the watch streams) or `backups`
 * (`maxConcurrentBackups`).
 */
export type RefusalLimit = (typeof REFUSAL_LIMITS)[number];

/** Every {@linkcode RefusalLimit}, in the order the metrics list them. */
export const REFUSAL_LIMITS = [
  "requests",
  "bytes",
  "client_unread",
  "forwards",
  "watchers",
  "blocking_reads",
  "backups",
] as const;

/** The budgets of {@linkcode ApiLimits}, already checked (see `ApiOptions` for defaults). */
export interface LimitOptions {
  /** Most requests in progress at once (`/health`, `/ready` and `/metrics` are not counted). */
  maxInflightRequests: number;
  /** Most bytes of request bodies in progress at once, unless only one request is. */
  maxInflightBytes: number;
  /** Largest request body: what a `POST` or `PUT` without `Content-Length` counts. */
  maxBodyBytes: number;
  /** Most requests being forwarded to the leader at once. */
  maxForwardedRequests: number;
  /** Most backups streaming at once. */
  maxConcurrentBackups: number;
  /** Deadline of one backup download in milliseconds. */
  backupTimeoutMs: number;
  /** Most watch streams open and blocking reads waiting, together, at once. */
  maxWatchers: number;
  /**
   * How long an answer's body may go without the server taking a chunk of it (the client reads
   * nothing) before it is cut off, in milliseconds.
   *
   * @default {30000}
   */
  responseStallMs?: number;
  /**
   * Most bytes of answers one client (see {@linkcode clientOf}) may have that the server has not
   * taken yet, or 0 for no such bound: the large answers {@linkcode AdmittedRequest.prototype.send}
   * counts against `maxInflightBytes` count against their client's share too.
   *
   * @default {0}
   */
  maxClientUnreadBytes?: number;
  /**
   * Called once for each request a check of {@linkcode ApiLimits} (or of an
   * {@linkcode AdmittedRequest}) refuses, with the budget that refused it: a check that answers
   * false (or null, or the refusal answer) means the request is answered 429.
   *
   * @default {nothing is called}
   */
  onRefusal?: (limit: RefusalLimit) => void;
}

/**
 * The client a request counts against for `maxClientUnreadBytes`: the remote IP address the
 * server saw (an IPv4 address mapped into IPv6, `::ffff:10.0.0.1`, as the IPv4 address), or null
 * for an address that is not an IP one (a Unix socket): such requests are not bounded per client.
 *
 * @example Usage
 * ```ts
 * import { clientOf } from "./limits.ts";
 *
 * clientOf({ transport: "tcp", hostname: "::ffff:10.0.0.1", port: 5000 }); // "10.0.0.1"
 * ```
 *
 * @param addr The remote address of the connection the request came on.
 * @returns The client's key, or null.
 */
export function clientOf(addr: Deno.Addr): string | null {
  if (addr.transport !== "tcp" && addr.transport !== "udp") return null;
  const host = addr.hostname.toLowerCase();
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(host);
  return mapped?.[1] ?? host;
}

/** The counts of one API handler against its budgets. */
export class ApiLimits {
  /** The budgets. */
  readonly options: Readonly<LimitOptions>;
  #inflight = 0;
  #inflightBytes = 0;
  #forwarding = 0;
  #backups = 0;
  #watchers = 0;
  #blockingReads = 0;
  /** Bytes of answers not yet taken, by client; a client is deleted when it reaches 0. */
  readonly #unread = new Map<string, number>();

  /**
   * Starts with nothing in progress.
   *
   * @param options The budgets.
   */
  constructor(options: LimitOptions) {
    this.options = { ...options };
  }

  /** Backups streaming now. */
  get backups(): number {
    return this.#backups;
  }

  /** Watch streams open now. */
  get watchers(): number {
    return this.#watchers;
  }

  /** Blocking reads (`?index=N`) waiting now. */
  get blockingReads(): number {
    return this.#blockingReads;
  }

  /**
   * Counts one more watch stream open, unless `maxWatchers` watch streams and blocking reads are.
   * Pair a `true` with {@linkcode ApiLimits.prototype.releaseWatcher} when the stream ends.
   *
   * @returns Whether the watch may open.
   */
  acquireWatcher(): boolean {
    if (this.#watchers + this.#blockingReads >= this.options.maxWatchers) {
      return this.#refuse("watchers");
    }
    this.#watchers++;
    return true;
  }

  /** Ends a watch stream counted by {@linkcode ApiLimits.prototype.acquireWatcher}. */
  releaseWatcher(): void {
    this.#watchers--;
  }

  /**
   * Counts one more blocking read (`GET /v1/data/{key}?index=N`) that may wait, unless
   * `maxWatchers` watch streams and blocking reads are: both wait for changes, and both are
   * bounded apart from the requests in progress (a waiting read holds no request slot). Pair a
   * `true` with {@linkcode ApiLimits.prototype.releaseBlockingRead}.
   *
   * @returns Whether the read may wait.
   */
  acquireBlockingRead(): boolean {
    if (this.#watchers + this.#blockingReads >= this.options.maxWatchers) {
      return this.#refuse("blocking_reads");
    }
    this.#blockingReads++;
    return true;
  }

  /** Ends a blocking read counted by {@linkcode ApiLimits.prototype.acquireBlockingRead}. */
  releaseBlockingRead(): void {
    this.#blockingReads--;
  }

  /** Requests in progress now (`/health`, `/ready` and `/metrics` are not counted). */
  get inflight(): number {
    return this.#inflight;
  }

  /**
   * Bytes counted in progress now: the bodies of the requests in progress, and the answers not yet
   * taken by the server.
   */
  get inflightBytes(): number {
    return this.#inflightBytes;
  }

  /**
   * Bytes of answers `client` has not read yet (not yet taken by the server), as counted against
   * `maxClientUnreadBytes`.
   *
   * @param client The client, as {@linkcode clientOf} names it.
   * @returns The bytes; 0 for a client that holds none.
   */
  clientUnreadBytes(client: string): number {
    return this.#unread.get(client) ?? 0;
  }

  /** How many clients have answers not yet read now (each counted while it holds any). */
  get clientsWithUnread(): number {
    return this.#unread.size;
  }

  /** Requests being forwarded to the leader now. */
  get forwarding(): number {
    return this.#forwarding;
  }

  /**
   * The bytes a request's body will hold: its `Content-Length` (at most `maxBodyBytes`: a larger
   * one is refused unread), or `maxBodyBytes` for a `POST` or `PUT` that declares none.
   *
   * @param req The request.
   * @returns The bytes to count for it.
   */
  declaredBodyBytes(req: Request): number {
    const max = this.options.maxBodyBytes;
    const declared = Number(req.headers.get("content-length") ?? NaN);
    if (Number.isSafeInteger(declared) && declared >= 0) return Math.min(declared, max);
    return req.method === "POST" || req.method === "PUT" ? max : 0;
  }

  /**
   * Counts a request of `bytes` as in progress, unless that passes `maxInflightRequests`, or
   * `maxInflightBytes` while another request is in progress. Pair a `true` with
   * {@linkcode ApiLimits.prototype.releaseRequest}.
   *
   * @param bytes What {@linkcode ApiLimits.prototype.declaredBodyBytes} said for it.
   * @returns Whether it was admitted.
   */
  admitRequest(bytes: number): boolean {
    const { maxInflightRequests, maxInflightBytes } = this.options;
    if (this.#inflight >= maxInflightRequests) return this.#refuse("requests");
    if (this.#inflight > 0 && this.#inflightBytes + bytes > maxInflightBytes) {
      return this.#refuse("bytes");
    }
    this.#inflight++;
    this.#inflightBytes += bytes;
    return true;
  }

  /**
   * Ends a request admitted by {@linkcode ApiLimits.prototype.admitRequest}.
   *
   * @param bytes The bytes it was admitted with.
   */
  releaseRequest(bytes: number): void {
    this.#inflight--;
    this.#inflightBytes -= bytes;
  }

  /**
   * {@linkcode ApiLimits.prototype.admitRequest}, as an {@linkcode AdmittedRequest} that holds
   * the slot until its answer is sent (or the request gives it up while it waits). A request of a
   * client that already has `maxClientUnreadBytes` or more of answers not yet read is refused
   * first (unless the bound is 0).
   *
   * @param bytes What {@linkcode ApiLimits.prototype.declaredBodyBytes} said for it.
   * @param client The client it came from (see {@linkcode clientOf}), or null for a request
   * not bounded per client (one a member forwarded: that member bounds its own clients).
   * @returns The admitted request, or null when it must be refused (429).
   */
  admit(bytes: number, client: string | null = null): AdmittedRequest | null {
    const max = this.options.maxClientUnreadBytes ?? 0;
    const counted = max > 0 ? client : null;
    if (counted !== null && this.clientUnreadBytes(counted) >= max) {
      this.#refuse("client_unread");
      return null;
    }
    if (!this.admitRequest(bytes)) return null;
    return new AdmittedRequest(this, bytes, {
      fits: (n) => {
        if (counted === null) return true;
        const held = this.clientUnreadBytes(counted);
        // Like maxInflightBytes: a client that holds nothing may hold one answer of any size.
        return held === 0 || held + n <= max;
      },
      hold: (n) => {
        this.#inflightBytes += n;
        if (counted !== null) this.#unread.set(counted, this.clientUnreadBytes(counted) + n);
      },
      drop: (n) => {
        this.#inflightBytes -= n;
        if (counted === null) return;
        const left = this.clientUnreadBytes(counted) - n;
        if (left > 0) this.#unread.set(counted, left);
        else this.#unread.delete(counted);
      },
    });
  }

  /**
   * Counts one more forward in progress, unless `maxForwardedRequests` are. Pair a `true` with
   * {@linkcode ApiLimits.prototype.releaseForward}.
   *
   * @returns Whether the forward may go.
   */
  acquireForward(): boolean {
    if (this.#forwarding >= this.options.maxForwardedRequests) return this.#refuse("forwards");
    this.#forwarding++;
    return true;
  }

  /** Ends a forward started by {@linkcode ApiLimits.prototype.acquireForward}. */
  releaseForward(): void {
    this.#forwarding--;
  }

  /**
   * Whether one more backup may stream: fewer than `maxConcurrentBackups` do now. Check it just
   * before {@linkcode ApiLimits.prototype.boundedBackup}, which counts the backup.
   *
   * @returns Whether the backup may start (false: answer 429).
   */
  admitBackup(): boolean {
    return this.#backups < this.options.maxConcurrentBackups || this.#refuse("backups");
  }

  /**
   * Tells `onRefusal` (if given) that `limit` refused a request.
   *
   * @returns false, for the check to return.
   */
  #refuse(limit: RefusalLimit): false {
    this.options.onRefusal?.(limit);
    return false;
  }

  /**
   * Wraps a backup stream so that it counts as one of the `maxConcurrentBackups` until it ends
   * (read to the end, cancelled by the client, failed or timed out), and fails once
   * `backupTimeoutMs` has passed: the source is then cancelled, which releases its view. The
   * caller checks {@linkcode ApiLimits.prototype.admitBackup} first.
   *
   * @param source The backup.
   * @returns The stream to send instead.
   */
  boundedBackup(source: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
    const timeoutMs = this.options.backupTimeoutMs;
    this.#backups++;
    const reader = source.getReader();
    let ended = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const end = () => {
      if (ended) return false;
      ended = true;
      this.#backups--;
      clearTimeout(timer);
      return true;
    };
    return new ReadableStream<Uint8Array>({
      start(controller) {
        timer = setTimeout(() => {
          if (!end()) return;
          const reason = new DOMException(
            `the backup was not read within ${timeoutMs}ms (backupTimeoutMs); cut off`,
            "TimeoutError",
          );
          controller.error(reason);
          reader.cancel(reason).catch(() => {});
        }, timeoutMs);
      },
      async pull(controller) {
        let next: ReadableStreamReadResult<Uint8Array>;
        try {
          next = await reader.read();
        } catch (err) {
          if (end()) controller.error(err);
          return;
        }
        if (ended) return; // Timed out while waiting: the stream has already failed.
        if (next.done) {
          end();
          controller.close();
        } else {
          controller.enqueue(next.value);
        }
      },
      async cancel(reason) {
        end();
        await reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }
}

/**
 * How an {@linkcode AdmittedRequest} counts the bytes of its answer while the server has not
 * taken them: against `maxInflightBytes`, and its client's share of `maxClientUnreadBytes`.
 */
export interface AnswerBytes {
  /** Whether `n` more bytes fit in the client's share (always, for a request not bounded so). */
  fits(n: number): boolean;
  /** Counts `n` bytes of answer. */
  hold(n: number): void;
  /** Uncounts `n` bytes counted by `hold`. */
  drop(n: number): void;
}

/**
 * A request admitted against `maxInflightRequests` and `maxInflightBytes`
 * ({@linkcode ApiLimits.prototype.admit}). It holds its slot while it is served
 * ({@linkcode AdmittedRequest.prototype.pause} gives it back while it only waits, as a blocking
 * read does), and then while its answer's body is sent ({@linkcode AdmittedRequest.prototype.send}):
 * an answer a client does not read keeps counting, so that such answers cannot pile up unbounded,
 * on the node or for one client.
 */
export class AdmittedRequest {
  readonly #limits: ApiLimits;
  readonly #bytes: number;
  readonly #answerBytes: AnswerBytes;
  #held = true;
  #done = false;

  /**
   * Wraps a request already counted by `limits` (see {@linkcode ApiLimits.prototype.admit}).
   *
   * @param limits The budgets it counts against.
   * @param bytes The bytes it was admitted with.
   * @param answerBytes Counts and uncounts the bytes of its answer.
   */
  constructor(limits: ApiLimits, bytes: number, answerBytes: AnswerBytes) {
    [this.#limits, this.#bytes, this.#answerBytes] = [limits, bytes, answerBytes];
  }

  /** Whether it holds its slot now. */
  get held(): boolean {
    return this.#held;
  }

  /** Gives the slot back while the request waits (it does nothing then); no-op if not held. */
  pause(): void {
    if (!this.#held) return;
    this.#held = false;
    this.#limits.releaseRequest(this.#bytes);
  }

  /**
   * Takes a slot again after {@linkcode AdmittedRequest.prototype.pause}, as a new request would.
   *
   * @returns Whether it got one (false: the node is full; answer 429).
   */
  resume(): boolean {
    if (this.#held || this.#done) return this.#held;
    this.#held = this.#limits.admitRequest(this.#bytes);
    return this.#held;
  }

  /** Gives the slot back for good (the request is over); no-op if not held. */
  release(): void {
    this.#done = true;
    this.pause();
  }

  /**
   * The answer to send instead of `res`: the same status and headers (with its
   * `Content-Length`), and its body handed to the server {@linkcode RESPONSE_CHUNK_BYTES} at a
   * time, as it asks for them (a body of one chunk at most is handed over whole, and the request
   * released, at once). Until the server has taken the last chunk, or the body was
   * cancelled (the client went away), the request keeps its slot and the body's bytes count
   * against `maxInflightBytes`. A body the server takes nothing of for `responseStallMs` (a client
   * that reads nothing, or an HTTP/2 stream whose window stays shut) fails: the answer is cut off,
   * and what it held is released. Without a body, or when the slot was already given back, the
   * request is released and `res` returned as it is.
   *
   * An answer of more than a chunk that would take its client past `maxClientUnreadBytes` (one
   * that holds none yet may hold one answer of any size) is replaced by `refuse()` when given
   * (a request without side effects: `GET`, `HEAD`), its request released and `onRefusal` told
   * (`client_unread`); without `refuse` (a request whose effect has happened: a write must not be
   * answered 429 once applied) it is sent and counted all the same.
   *
   * @param res The answer, its body not yet read.
   * @param refuse The answer to send instead when `res` would take its client past
   * `maxClientUnreadBytes` (429 with `Retry-After`), if the request may be refused so late.
   * @returns The answer to send.
   */
  async send(res: Response, refuse?: () => Response): Promise<Response> {
    // A small JSON answer first, and untouched: reading `res.body` would make it a stream, which the
    // server then sends chunked instead of with a Content-Length.
    if (!this.#held || isSmallAnswer(res) || res.body === null) {
      this.release();
      return res;
    }
    let body: Uint8Array<ArrayBuffer>;
    try {
      body = new Uint8Array(await res.arrayBuffer());
    } catch (err) {
      this.release();
      throw err;
    }
    const size = body.byteLength;
    const headers = new Headers(res.headers);
    const init = { status: res.status, statusText: res.statusText, headers };
    if (size <= RESPONSE_CHUNK_BYTES) {
      // One chunk: the server takes it whole at once. (Sent as it is: a streamed body is dropped
      // by the server when the client has already closed its side, as a client that cut its
      // request short may have, and its error would be lost.)
      this.release();
      return new Response(body, init);
    }
    if (refuse !== undefined && !this.#answerBytes.fits(size)) {
      this.release();
      this.#limits.options.onRefusal?.("client_unread");
      return refuse();
    }
    this.#answerBytes.hold(size);
    const stallMs = this.#limits.options.responseStallMs ?? MIN_RESPONSE_STALL_MS;
    let offset = 0;
    let ended = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const end = () => {
      if (ended) return false;
      ended = true;
      clearTimeout(timer);
      body = _EMPTY;
      this.#answerBytes.drop(size);
      this.release();
      return true;
    };
    const arm = (controller: ReadableStreamDefaultController<Uint8Array>) => {
      clearTimeout(timer);
      const t = setTimeout(() => {
        if (!end()) return;
        controller.error(
          new DOMException(
            `the client took nothing of the answer for ${stallMs}ms; cut off`,
            "TimeoutError",
          ),
        );
      }, stallMs);
      // The node's servers keep it running; a stalled answer alone need not.
      Deno.unrefTimer(t);
      timer = t;
    };
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => arm(controller),
      pull: (controller) => {
        if (ended) return;
        const next = Math.min(offset + RESPONSE_CHUNK_BYTES, size);
        // A copy unless it is the whole body: a view would keep all of it alive as long as the
        // server holds the chunk, after it no longer counts.
        controller.enqueue(offset === 0 && next === size ? body : body.slice(offset, next));
        offset = next;
        if (offset < size) {
          arm(controller);
          return;
        }
        // The last chunk is the server's now: at most one chunk of it stays, in its buffers.
        end();
        controller.close();
      },
      cancel: () => {
        end();
      },
    }, { highWaterMark: 0 });
    headers.set("content-length", String(size));
    return new Response(stream, init);
  }
}
