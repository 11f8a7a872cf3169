/**
 * `EventSource` in a real headless Chromium (Debian package `chromium`) on the watch page a node
 * serves (`/ui/watch.html`): the changes written through the API appear in the page, in order;
 * when the node stops and comes back, the browser's own reconnect with `Last-Event-ID` brings
 * the change committed meanwhile, without a gap or a repeat.
 */

import assert from "node:assert/strict";
import { findChromium, launchBrowser, type Page, watchProblems } from "../testing/browser.ts";
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
  name: "EventSource in a real Chromium receives watch events from a page the node serves" +
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

      // The node stops (its stream ends), a change is committed without it, it comes back:
      // the browser reconnects by itself with Last-Event-ID and gets that change, once.
      await cluster.stop("node-1");
      const others = cluster.ids.filter((id) => id !== "node-1");
      let i4 = 0;
      await waitFor(async () => {
        const r = await cluster.request(others[0]!, "PUT", "/v1/data/b%2F3", { v: "three" });
        if (r.status === 200) i4 = (r.json as { index: number }).index;
        return r.status === 200;
      }, { deadlineMs: 10_000, message: "a write while node-1 is down" });
      await cluster.start("node-1");
      await listed(page, [...expected, `${i4} put b/3 = three`]);
      assert.deepEqual(problems.lines, [], "the page raised no error");
      await page.close();
    } finally {
      await browser.close();
      await cluster.close();
    }
  },
});
