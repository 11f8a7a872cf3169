import assert from "node:assert/strict";
import { raceAbort, startDeadline } from "./deadline.ts";

Deno.test("a deadline aborts its signal once its time passes and says it timed out", async () => {
  const client = new AbortController();
  using deadline = startDeadline(20, client.signal);
  assert.equal(deadline.signal.aborted, false);
  await new Promise((resolve) => deadline.signal.addEventListener("abort", resolve));
  assert.equal(deadline.timedOut(), true);
  assert.equal(deadline.clientGone(), false);
  assert.equal((deadline.signal.reason as DOMException).name, "TimeoutError");
  assert.equal(deadline.ms, 20);
});

Deno.test("a deadline aborts with the client's reason when the client goes away first", () => {
  const client = new AbortController();
  using deadline = startDeadline(60_000, client.signal);
  client.abort(new Error("gone"));
  assert.equal(deadline.signal.aborted, true);
  assert.equal(deadline.clientGone(), true);
  assert.equal(deadline.timedOut(), false);
  assert.equal((deadline.signal.reason as Error).message, "gone");
});

Deno.test("a deadline started for a client already gone is over at once", () => {
  using deadline = startDeadline(60_000, AbortSignal.abort(new Error("left")));
  assert.equal(deadline.signal.aborted, true);
  assert.equal(deadline.clientGone(), true);
});

Deno.test("a disposed deadline neither times out nor follows the client any more", async () => {
  const client = new AbortController();
  const deadline = startDeadline(10, client.signal);
  deadline[Symbol.dispose]();
  client.abort();
  // Wait past the time limit on a condition: a fresh timer of twice the limit has fired.
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(deadline.signal.aborted, false);
  assert.equal(deadline.timedOut(), false);
});

Deno.test("raceAbort() resolves and rejects with the operation while its signal stands", async () => {
  const signal = new AbortController().signal;
  assert.equal(await raceAbort((s) => Promise.resolve(s === signal), signal), true);
  await assert.rejects(raceAbort(() => Promise.reject(new Error("op failed")), signal), {
    message: "op failed",
  });
});

Deno.test("raceAbort() rejects with the signal's reason even if the operation ignores it", async () => {
  const controller = new AbortController();
  let lateReject: (err: Error) => void = () => {};
  const ignoring = new Promise<never>((_, reject) => lateReject = reject);
  const raced = raceAbort(() => ignoring, controller.signal);
  controller.abort(new Error("deadline"));
  await assert.rejects(raced, { message: "deadline" });
  lateReject(new Error("late failure, dropped")); // must not surface as an unhandled rejection
});

Deno.test("raceAbort() does not start the operation on a signal already aborted", async () => {
  let started = false;
  await assert.rejects(
    raceAbort(() => {
      started = true;
      return Promise.resolve(1);
    }, AbortSignal.abort(new Error("already"))),
    { message: "already" },
  );
  assert.equal(started, false);
});
