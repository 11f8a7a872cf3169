/**
 * The watch page a node serves (`/ui/watch.html`, a `fetch` stream of `GET /v1/watch`) in a real
 * headless Chromium (Debian package `chromium`): the changes written through the API appear in
 * the page, in order; when the node stops and comes back, the page reconnects from the index
 * after the last change it listed and gets the change committed meanwhile, without a gap or a
 * repeat. Against a node with tokens it asks for one, refuses a wrong one with the node's
 * answer, and with a read token shows the changes, sending the token only as a header.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  findChromium,
  launchBrowser,
  type Page,
  textOf,
  waitForText,
  watchProblems,
} from "../testing/browser.ts";
import { startCluster, waitFor } from "../testing/harness.ts";

const CHROMIUM = findChromium();
const SKIP = " (skipped: chromium not installed; apt-get install chromium, or set RAFTKV_CHROMIUM)";

/** The events the page lists, as `index type key = value`. */
function items(page: Page): Promise<string[]> {
  return page.$$eval("#events li", (lis) => lis.map((li) => li.textContent ?? ""));
}

/** Waits until the page lists exactly `expected`. */
async function listed(page: Page, expected: string[]): Promise<void> {
  let seen: string[] = [];
  await waitFor(async () => JSON.stringify(seen = await items(page)) === JSON.stringify(expected), {
    deadlineMs: 15_000,
    message: () => `the page to list ${JSON.stringify(expected)}, not ${JSON.stringify(seen)}`,
  });
}

Deno.test({
  name: "the watch page in a real Chromium lists watch events and carries on across a restart" +
    (CHROMIUM ? "" : SKIP),
  ignore: CHROMIUM === null,
  async fn() {
    const [cluster, browser] = await Promise.all([
      startCluster({ size: 3 }),
      launchBrowser(CHROMIUM!),
    ]);
    try {
      await cluster.waitForLeader();
      const page = await browser.newPage();
      const problems = watchProblems(page);
      const res = await page.goto(`${cluster.api("node-1")}/ui/watch.html?prefix=b/`);
      assert.equal(res?.status(), 200);
      await page.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
      const put = async (k: string, v: string) => {
        const r = await cluster.request(
          await cluster.waitForLeader(),
          "PUT",
          `/v1/data/${encodeURIComponent(k)}`,
          {
            v,
          },
        );
        assert.equal(r.status, 200, r.text);
        return (r.json as { index: number }).index;
      };
      const i1 = await put("b/1", "one");
      await put("a/ignored", "x");
      const i2 = await put("b/2", "two");
      const del = await cluster.request(await cluster.waitForLeader(), "DELETE", "/v1/data/b%2F1");
      assert.equal(del.status, 200);
      const i3 = (del.json as { index: number }).index;
      const expected = [`${i1} put b/1 = one`, `${i2} put b/2 = two`, `${i3} delete b/1`];
      await listed(page, expected);

      // A second page that has seen no change yet: it goes on from the index its stream
      // started after (the answer's X-Raftkv-Index), so it misses nothing across the restart.
      // Its reconnects are held back until node-1 has applied the change made while it was
      // down, so that a page starting again from "whatever comes next" would miss it.
      const quiet = await browser.newPage();
      const quietProblems = watchProblems(quiet);
      let hold = false;
      await quiet.setRequestInterception(true);
      quiet.on("request", (r) => {
        if (hold && r.url().includes("/v1/watch")) r.abort().catch(() => {});
        else r.continue().catch(() => {});
      });
      assert.equal(
        (await quiet.goto(`${cluster.api("node-1")}/ui/watch.html?prefix=c/`))?.status(),
        200,
      );
      await quiet.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });

      // The node is killed (its streams break without a final event), a change is committed
      // without it, it comes back: the page reconnects from the index after its last change and
      // gets that change, once.
      hold = true;
      await cluster.kill("node-1");
      const others = cluster.ids.filter((id) => id !== "node-1");
      let i4 = 0;
      await waitFor(async () => {
        const r = await cluster.request(others[0]!, "PUT", "/v1/data/b%2F3", { v: "three" });
        if (r.status === 200) i4 = (r.json as { index: number }).index;
        return r.status === 200;
      }, { deadlineMs: 10_000, message: "a write while node-1 is down" });
      const c1 = await cluster.request(others[0]!, "PUT", "/v1/data/c%2F1", { v: "uno" });
      assert.equal(c1.status, 200, c1.text);
      const i5 = (c1.json as { index: number }).index;
      await cluster.start("node-1");
      await listed(page, [...expected, `${i4} put b/3 = three`]);
      await waitFor(async () => ((await cluster.status("node-1"))?.applied_index ?? 0) >= i5, {
        deadlineMs: 10_000,
        message: "node-1 to apply the change made while it was down",
      });
      hold = false;
      await listed(quiet, [`${i5} put c/1 = uno`]);
      // The browser logs the streams cut by the kill and the reconnects the stopped node refused
      // (or the test held back) as failed loads; nothing else may go wrong.
      const expectedFailure = (line: string) =>
        /^(?:failed: \S+\/v1\/watch\?\S+|console: Failed to load resource:) net::ERR_(?:ABORTED|CONNECTION_REFUSED|INCOMPLETE_CHUNKED_ENCODING|FAILED)$/
          .test(line);
      const unexpected = problems.lines.filter((line) => !expectedFailure(line));
      assert.deepEqual(unexpected, [], "the page raised no other error");
      // (ERR_FAILED: the second page's reconnects held back.)
      assert.deepEqual(
        quietProblems.lines.filter((line) => !expectedFailure(line)),
        [],
        "the second page raised no other error",
      );
      await page.close();
      await quiet.close();
    } finally {
      await browser.close();
      await cluster.close();
    }
  },
});

Deno.test({
  name: "the watch page asks a node with tokens for one and watches with a read token" +
    (CHROMIUM ? "" : SKIP),
  ignore: CHROMIUM === null,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "raftkv-watch-tokens-" });
    const read = "reader-token-" + crypto.randomUUID();
    const write = "writer-token-" + crypto.randomUUID();
    const tokensFile = join(dir, "tokens.json");
    await Deno.writeTextFile(
      tokensFile,
      JSON.stringify([
        { token: read, role: "read", name: "reader" },
        { token: write, role: "write", name: "writer" },
      ]),
    );
    const [cluster, browser] = await Promise.all([
      startCluster({ size: 1, nodeFlags: ["--tokens-file", tokensFile], token: write }),
      launchBrowser(CHROMIUM!),
    ]);
    try {
      await cluster.waitForLeader();
      const page = await browser.newPage();
      const problems = watchProblems(page);
      const watches: { url: string; authorization: string | undefined }[] = [];
      page.on("request", (r) => {
        if (r.url().includes("/v1/")) {
          watches.push({ url: r.url(), authorization: r.headers()["authorization"] });
        }
      });
      const res = await page.goto(`${cluster.api("node-1")}/ui/watch.html?prefix=t/`);
      assert.equal(res?.status(), 200, "the page itself needs no token");
      await page.waitForSelector("#auth:not([hidden])", { timeout: 10_000 });
      assert.match((await textOf(page, "#auth-message")) ?? "", /asks for a bearer token \(401\)/);
      assert.equal(await page.$eval("#state", (el) => el.getAttribute("data-state")), "auth");

      // A wrong token: refused, forgotten, and the form asks again.
      await page.type("#token", "wrong-token-0123456789");
      await page.click("#auth button");
      await waitForText(
        page,
        "#auth-message",
        (t) => /refused \(401\)/.test(t ?? ""),
        10_000,
        "refusal",
      );
      assert.ok(watches.some((w) => w.authorization === "Bearer wrong-token-0123456789"));
      assert.equal(await page.evaluate(`sessionStorage.getItem("raftkv.token")`), null);

      // The read token: the page watches, and a change written afterwards shows up.
      await page.type("#token", read);
      await page.click("#auth button");
      await page.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
      assert.ok(await page.$eval("#auth", (el) => el.hasAttribute("hidden")));
      assert.equal(await page.evaluate(`sessionStorage.getItem("raftkv.token")`), read);
      const put = await cluster.request("node-1", "PUT", "/v1/data/t%2F1", { v: "one" }, {
        headers: { authorization: `Bearer ${write}` },
      });
      assert.equal(put.status, 200, put.text);
      const index = (put.json as { index: number }).index;
      await listed(page, [`${index} put t/1 = one`]);

      assert.equal(watches.at(-1)!.authorization, `Bearer ${read}`);
      for (const w of watches) {
        assert.ok(!w.url.includes(read) && !w.url.includes("wrong-token"), `no token in ${w.url}`);
      }
      // The browser logs each 401 answer as a failed resource load; nothing else may go wrong.
      const unexpected = problems.lines.filter((line) => !/status of 401/.test(line));
      assert.deepEqual(unexpected, [], "the page raised no other error");
      await page.close();
    } finally {
      await browser.close();
      await cluster.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "the watch page fits a phone's width with a long key and value" + (CHROMIUM ? "" : SKIP),
  ignore: CHROMIUM === null,
  async fn() {
    const [cluster, browser] = await Promise.all([
      startCluster({ size: 1 }),
      launchBrowser(CHROMIUM!),
    ]);
    try {
      await cluster.waitForLeader();
      const page = await browser.newPage();
      const problems = watchProblems(page);
      await page.setViewport({ width: 360, height: 740 });
      // A 300-character key without a break, watched by itself: it shows in the heading and
      // in the event, with a value as long.
      const key = "long/" + "k".repeat(295);
      const value = "v".repeat(300);
      const res = await page.goto(
        `${cluster.api("node-1")}/ui/watch.html?key=${encodeURIComponent(key)}`,
      );
      assert.equal(res?.status(), 200);
      await page.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
      const put = await cluster.request("node-1", "PUT", `/v1/data/${encodeURIComponent(key)}`, {
        v: value,
      });
      assert.equal(put.status, 200, put.text);
      await listed(page, [`${(put.json as { index: number }).index} put ${key} = ${value}`]);
      const [scrollWidth, clientWidth] = await page.evaluate(
        `[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]`,
      ) as [number, number];
      assert.equal(clientWidth, 360);
      assert.ok(scrollWidth <= clientWidth, `the page is ${scrollWidth} px wide in ${clientWidth}`);
      assert.deepEqual(problems.lines, [], "the page raised no error");
      await page.close();
    } finally {
      await browser.close();
      await cluster.close();
    }
  },
});
