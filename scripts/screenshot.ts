/**
 * Screenshots of the dashboard for the README: `deno task screenshot`.
 *
 * Starts a real 3-node cluster on loopback (test harness, free ports, a temporary directory),
 * opens `/ui/?minutes=1` on a follower in headless Chromium (Debian package `chromium`, or
 * `RAFTKV_CHROMIUM`), and runs a light load for `--seconds` (default 60): `--clients` (default
 * 4) loops of a write then three linearizable reads, each through the next live node. Halfway through it kills
 * the leader (SIGKILL), waits for a new one and starts the old node again, so the page has a
 * leader change and a member catching up to show. Then it takes three screenshots: light at
 * 1280 px wide, dark (`prefers-color-scheme: dark`) at the same size, and dark at a phone's 390
 * px, into `--out-dir` (default `docs/`) as `dashboard.png`, `dashboard-dark.png` and
 * `dashboard-phone.png`.
 *
 * ```sh
 * deno task screenshot
 * deno task screenshot --seconds 20 --out-dir /tmp/shots
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { findChromium, launchBrowser, type Page, textOf, waitForText } from "../testing/browser.ts";
import { startCluster, waitFor } from "../testing/harness.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "out-dir": { type: "string", default: "docs" },
    seconds: { type: "string", default: "60" },
    clients: { type: "string", default: "4" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log("deno task screenshot [--out-dir docs] [--seconds 60] [--clients 4]");
  Deno.exit(0);
}
const seconds = Number(values.seconds);
const clients = Number(values.clients);
if (!(seconds >= 10) || !Number.isInteger(clients) || clients < 1) {
  console.error("--seconds must be at least 10 and --clients a positive integer");
  Deno.exit(2);
}
const chromium = findChromium();
if (chromium === null) {
  console.error("no Chromium found: apt-get install chromium, or set RAFTKV_CHROMIUM");
  Deno.exit(1);
}

await using cluster = await startCluster({ size: 3 });
const leader = await cluster.waitForLeader();
const follower = cluster.ids.find((id) => id !== leader)!;
const browser = await launchBrowser(chromium);
try {
  const page = await browser.newPage();
  await page.goto(`${cluster.api(follower)}/ui/?minutes=1`);
  await waitForText(page, "#leader", (t) => t === leader, 10_000, `the page to show ${leader}`);
  console.log(`dashboard open on ${follower}; load for ${seconds} s`);

  const end = Date.now() + seconds * 1000;
  let ok = 0, failed = 0;
  const load = Array.from({ length: clients }, async (_, c) => {
    for (let i = 0; Date.now() < end; i++) {
      const ids = cluster.liveIds();
      const id = ids[(c + i) % ids.length]!;
      const key = `screenshot-${c}-${i % 20}`;
      try {
        const put = await cluster.request(id, "PUT", `/v1/data/${key}`, { v: `value ${i}` });
        if (put.status === 200) ok++;
        else failed++;
        for (let r = 0; r < 3; r++) {
          const get = await cluster.request(id, "GET", `/v1/data/${key}`);
          if (get.status === 200) ok++;
          else failed++;
        }
      } catch {
        failed++;
      }
    }
  });

  // Halfway: kill the leader, wait for the next one, bring the old node back.
  await new Promise((resolve) => setTimeout(resolve, (seconds * 1000) / 2));
  await cluster.kill(leader);
  const next = await cluster.waitForLeader();
  console.log(`killed ${leader}; ${next} leads`);
  await cluster.start(leader);
  await waitFor(
    async () => (await cluster.status(leader))?.leader?.id === next,
    { deadlineMs: 10_000, message: `${leader} to follow ${next}` },
  );
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, end - Date.now() - 1500)));

  await Deno.mkdir(values["out-dir"], { recursive: true });
  await shoot(page, "light", { width: 1280, height: 900 }, "dashboard.png");
  await shoot(page, "dark", { width: 1280, height: 900 }, "dashboard-dark.png");
  await shoot(page, "dark", { width: 390, height: 844 }, "dashboard-phone.png");
  await Promise.all(load);
  console.log(`load: ${ok} requests answered 200, ${failed} not`);
} finally {
  await browser.close();
}

async function shoot(
  page: Page,
  scheme: "light" | "dark",
  viewport: { width: number; height: number; deviceScaleFactor?: number },
  file: string,
): Promise<void> {
  await page.emulateMediaFeatures([{ name: "prefers-color-scheme", value: scheme }]);
  await page.setViewport(viewport);
  // Let a poll render at the new size.
  const before = await textOf(page, "#source");
  await waitForText(page, "#source", (t) => t !== before, 5000, "the next poll");
  const path = join(values["out-dir"], file);
  await page.screenshot({ path: path as `${string}.png`, fullPage: true });
  console.log(`wrote ${path} (${scheme}, ${viewport.width} px)`);
}
