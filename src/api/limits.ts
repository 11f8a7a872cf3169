/**
 * The budgets that bound what one API handler holds at once: requests in progress and the bytes
 * of their bodies, forwards to the leader in progress, and backups streaming (each with a
 * deadline). {@linkcode ApiLimits} keeps the counts; the handler answers 429 with `Retry-After`
 * when a budget is spent.
 *
 * @module
 */

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
  /** Most watch streams open at once. */
  maxWatchers: number;
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

  /**
   * Counts one more watch stream open, unless `maxWatchers` are. Pair a `true` with
   * {@linkcode ApiLimits.prototype.releaseWatcher} when the stream ends.
   *
   * @returns Whether the watch may open.
   */
  acquireWatcher(): boolean {
    if (this.#watchers >= this.options.maxWatchers) return false;
    this.#watchers++;
    return true;
  }

  /** Ends a watch stream counted by {@linkcode ApiLimits.prototype.acquireWatcher}. */
  releaseWatcher(): void {
    this.#watchers--;
  }

  /** Requests in progress now (`/health`, `/ready` and `/metrics` are not counted). */
  get inflight(): number {
    return this.#inflight;
  }

  /** Bytes of request bodies counted in progress now. */
  get inflightBytes(): number {
    return this.#inflightBytes;
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
    if (
      this.#inflight >= maxInflightRequests ||
      (this.#inflight > 0 && this.#inflightBytes + bytes > maxInflightBytes)
    ) {
      return false;
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
   * Counts one more forward in progress, unless `maxForwardedRequests` are. Pair a `true` with
   * {@linkcode ApiLimits.prototype.releaseForward}.
   *
   * @returns Whether the forward may go.
   */
  acquireForward(): boolean {
    if (this.#forwarding >= this.options.maxForwardedRequests) return false;
    this.#forwarding++;
    return true;
  }

  /** Ends a forward started by {@linkcode ApiLimits.prototype.acquireForward}. */
  releaseForward(): void {
    this.#forwarding--;
  }

  /**
   * Wraps a backup stream so that it counts as one of the `maxConcurrentBackups` until it ends
   * (read to the end, cancelled by the client, failed or timed out), and fails once
   * `backupTimeoutMs` has passed: the source is then cancelled, which releases its view. The
   * caller checks {@linkcode ApiLimits.prototype.backups} against the budget first.
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
