/**
 * The dashboard (`/ui/`) in a real headless Chromium (Debian package `chromium`) driven through
 * the DevTools protocol, against real node processes: the page on a follower shows the leader
 * that `/v1/status` names, and after the leader is killed the new one within a few seconds; it
 * shows the failure tolerance the leader reports (1 with three voters up, 0 flagged once a
 * follower is killed) and flags the killed member's last-heard cell (past the leader's election
 * timeout, which every node reports in `GET /v1/cluster`); a node that answers 401 gets
 * a token field, and the token typed there is sent as a bearer token. Each member's "Refused/s"
 * cell reads 0, unflagged, on a healthy cluster, and once a member's peer port refuses requests
 * (posts to a path the peer protocol does not have), that member's refusals per second, flagged,
 * with the reason listed, also at a phone's width without widening the page.
 * With tokens rotated on some nodes and not on others, a member that refuses the page's token is
 * shown as refusing it, not as down, and once the page's own node refuses it, the figures it
 * still shows are marked as stale.
 * Every test also checks that the page raised no error: a Content-Security-Policy violation, an
 * exception or a failed load would show up here.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type Browser,
  findChromium,
  launchBrowser,
  type Page,
  textOf,
  waitForText,
  watchProblems,
} from "../testing/browser.ts";
import {
  DEFAULT_NODE_FLAGS,
  type ProcessCluster,
  startCluster,
  waitFor,
} from "../testing/harness.ts";
import { H2Client } from "../src/transport/h2_client.ts";
import { FROM_HEADER } from "../src/transport/http_transport.ts";

const CHROMIUM = findChromium();
const SKIP = " (skipped: chromium not installed; apt-get install chromium, or set RAFTKV_CHROMIUM)";

/** Each member row's id and role as the page shows them. */
function rows(page: Page): Promise<string[][]> {
  return page.$$eval(
    "#members tbody tr",
    (trs) =>
      trs.map((tr) => [tr.getAttribute("data-id") ?? "", tr.getAttribute("data-role") ?? ""]),
  );
}

/** Each live member's id and role by its own `/v1/status`; the others as unreachable. */
async function roles(cluster: ProcessCluster): Promise<string[][]> {
  return await Promise.all(cluster.ids.map(async (id) => {
    const status = cluster.isRunning(id) ? await cluster.status(id) : null;
    return [id, status?.role ?? "unreachable"];
  }));
}

/**
 * Waits until the page's member rows carry the roles the members' own `/v1/status` report, both
 * read again at each look: on a loaded machine an election may be under way (a candidate), and
 * the roles change until it ends.
 */
async function rowsMatchRoles(cluster: ProcessCluster, page: Page): Promise<void> {
  let [expected, shown]: string[][][] = [[], []];
  await waitFor(async () => {
    [expected, shown] = [await roles(cluster), await rows(page)];
    return JSON.stringify(shown) === JSON.stringify(expected);
  }, {
    deadlineMs: 10_000,
    message: () =>
      `the member rows to read ${JSON.stringify(expected)} (they read ${JSON.stringify(shown)})`,
  });
}

Deno.test({
  name: "the dashboard in a real Chromium" + (CHROMIUM ? "" : SKIP),
  ignore: CHROMIUM === null,
  async fn(t) {
    // The cluster and the browser start at the same time; both steps use them.
    const [cluster, browser] = await Promise.all([
      startCluster({ size: 3 }),
      launchBrowser(CHROMIUM!),
    ]);
    try {
      const leader = await cluster.waitForLeader();
      await t.step(
        "behind a node that answers 401 it asks for a token and sends it as a bearer token",
        () => tokenFlow(cluster, cluster.ids.find((id) => id !== leader)!, browser),
      );
      await t.step(
        "each member's refusals per second read 0 on a healthy cluster, and flagged, with the reason, once a peer port refuses requests",
        () => refusals(cluster, browser),
      );
      await t.step(
        "on a follower it shows the leader /v1/status names, and the next one soon after the leader is killed",
        () => leaderChange(cluster, browser),
      );
      await t.step(
        "it shows a failure tolerance of 1 with three voters up, then 0 and the silent member flagged once a follower is killed",
        () => failureTolerance(cluster, browser),
      );
    } finally {
      await browser.close();
      await cluster.close();
    }
  },
});

async function leaderChange(cluster: ProcessCluster, browser: Browser): Promise<void> {
  // The leader of now: on a loaded machine an election may have moved it since the cluster began.
  const leader = await cluster.waitForLeader();
  const follower = cluster.ids.find((id) => id !== leader)!;
  await waitFor(async () => (await cluster.status(follower))?.leader?.id === leader, {
    message: `${follower} to name ${leader} as its leader`,
  });
  const page = await browser.newPage();
  const problems = watchProblems(page);
  const res = await page.goto(`${cluster.api(follower)}/ui`);
  assert.equal(res?.status(), 200);
  assert.equal(res?.url(), `${cluster.api(follower)}/ui/`, "/ui redirects to /ui/");
  assert.match(res?.headers()["content-security-policy"] ?? "", /script-src 'self'/);

  await waitForText(page, "#leader", (t) => t === leader, 5000, `the page to show ${leader}`);
  assert.match((await textOf(page, "#source")) ?? "", new RegExp(`served by ${follower}\\b`));
  // Every member's row carries the role its own /v1/status reports.
  await rowsMatchRoles(cluster, page);
  assert.equal(await textOf(page, "#up"), "3 / 3");
  // Each node's data against the quota (the default, 1 GiB): 4 + 1020 bytes after this write.
  // A 503 (an election under way on a loaded machine) was not applied: send it again.
  let put = await cluster.request(follower, "POST", "/v1/data", { k: "dash", v: "d".repeat(1020) });
  await waitFor(async () => {
    if (put.status !== 503) return true;
    put = await cluster.request(follower, "POST", "/v1/data", { k: "dash", v: "d".repeat(1020) });
    return put.status !== 503;
  }, { deadlineMs: 10_000, intervalMs: 100, message: () => `the write to be taken (${put.text})` });
  assert.equal(put.status, 200, put.text);
  for (const id of cluster.ids) {
    await waitForText(
      page,
      `#members tr[data-id="${id}"] td[data-label="Data"]`,
      (t) => t === "1 KiB / 1 GiB",
      5000,
      `the page to show ${id}'s data as 1 KiB of its 1 GiB quota`,
    );
  }

  const killed = performance.now();
  await cluster.kill(leader);
  const shown = await waitForText(
    page,
    "#leader",
    (t) => t !== null && t !== leader && cluster.ids.includes(t),
    5000,
    `the page to show a leader other than the killed ${leader}`,
  );
  const seconds = (performance.now() - killed) / 1000;
  const next = await cluster.waitForLeader();
  assert.equal(shown, next, "the page shows the leader the survivors agree on");
  await waitFor(async () => (await cluster.status(follower))?.leader?.id === next, {
    message: `${follower} to name ${next} as its leader`,
  });
  console.log(`the page showed ${next} ${seconds.toFixed(1)} s after ${leader} was killed`);

  await rowsMatchRoles(cluster, page);
  assert.equal(await textOf(page, "#up"), "2 / 3");
  assert.match((await textOf(page, `#members tr[data-id="${leader}"]`)) ?? "", /unreachable/);
  // The page noted both leaderships.
  const changes = (await textOf(page, "#changes")) ?? "";
  assert.match(changes, new RegExp(`${leader} leads`));
  assert.match(changes, new RegExp(`${next}`));
  assert.deepEqual(problems.lines, [], "the page raised no error");
  await page.close();
}

/** Each member row's "Refused/s" cell, by id: its text, its class and its list's items. */
function refusedCells(page: Page): Promise<Record<string, [string, string, string[]]>> {
  return page.$$eval("#members tbody tr", (trs) =>
    Object.fromEntries(trs.map((tr) => {
      const td = tr.querySelector('td[data-label="Refused/s"]');
      return [tr.getAttribute("data-id") ?? "", [
        td?.querySelector(".refusals > span")?.textContent ?? td?.textContent ?? "",
        td?.className ?? "",
        [...(td?.querySelectorAll("li") ?? [])].map((li) => li.textContent ?? ""),
      ]];
    })));
}

async function refusals(cluster: ProcessCluster, browser: Browser): Promise<void> {
  const leader = await cluster.waitForLeader();
  const watcher = cluster.ids.find((id) => id !== leader)!;
  // Another member than the page's node: its figures come through /v1/cluster.
  const target = cluster.ids.find((id) => id !== leader && id !== watcher)!;
  const page = await browser.newPage();
  const problems = watchProblems(page);
  assert.equal((await page.goto(`${cluster.api(watcher)}/ui/`))?.status(), 200);
  await page.waitForSelector("#members tbody tr", { timeout: 5000 });
  assert.deepEqual(
    (await page.$$eval("#members thead th", (ths) => ths.map((th) => th.textContent?.trim())))
      .slice(-3),
    ["Requests/s", "Refused/s", "State"],
  );

  // Healthy: every member refuses nothing (a rate from the second poll on), nothing flagged.
  let shown: Record<string, [string, string, string[]]> = {};
  await waitFor(async () => {
    shown = await refusedCells(page);
    return cluster.ids.every((id) => {
      const [text, cls, items] = shown[id] ?? ["", "", []];
      return text === "0" && !/state-(warn|bad)/.test(cls) && items.length === 0;
    });
  }, {
    deadlineMs: 10_000,
    intervalMs: 100,
    message: () => `every member's Refused/s to read 0, unflagged (${JSON.stringify(shown)})`,
  });

  // The target's peer port refuses a path the peer protocol does not have (404: unknown_path),
  // sent again at each look until the page shows it, so a slow poll cannot miss it.
  const client = new H2Client();
  const flagged = () => {
    const [text, cls, items] = shown[target] ?? ["", "", []];
    return /^API 0 · peer (?!0$)[\d.]+$/.test(text) && /\brefusing state-warn\b/.test(cls) &&
      items.length === 1 && /^peer: unknown_path [\d.]+$/.test(items[0] ?? "");
  };
  const refuse = async () => {
    const res = await client.fetch(`${cluster.rpc(target)}/raft/nowhere`, {
      method: "POST",
      headers: { [FROM_HEADER]: leader },
      signal: AbortSignal.timeout(5000),
    });
    await res.body?.cancel();
    assert.equal(res.status, 404);
  };
  try {
    await waitFor(async () => {
      await refuse();
      shown = await refusedCells(page);
      return flagged();
    }, {
      deadlineMs: 10_000,
      intervalMs: 200,
      message: () =>
        `${target}'s Refused/s to show its peer refusals, flagged (${JSON.stringify(shown)})`,
    });
    // At a phone's width the member's card lists them too, and the page does not widen.
    await page.setViewport({ width: 360, height: 740 });
    let widths: [number, number] = [0, 0];
    await waitFor(async () => {
      await refuse();
      shown = await refusedCells(page);
      widths = await page.evaluate(
        `[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]`,
      ) as [number, number];
      return flagged() && widths[1] === 360 && widths[0] <= widths[1];
    }, {
      deadlineMs: 10_000,
      intervalMs: 200,
      message: () =>
        `${target}'s peer refusals flagged at 360 px, the page ${widths[0]} px wide in ${
          widths[1]
        } (${JSON.stringify(shown)})`,
    });
  } finally {
    client.close();
  }
  assert.deepEqual(problems.lines, [], "the page raised no error");
  await page.close();
}

/** The failure tolerance card and each member row's "Last heard" cell, read in one go. */
interface Health {
  /** The leader the page shows. */
  leader: string;
  /** The failure tolerance card's figure, note and class. */
  tolerance: [text: string, note: string, className: string];
  /** Each member's "Last heard" text and whether it is flagged, by id. */
  heard: Record<string, [text: string, flagged: boolean]>;
}

function health(page: Page): Promise<Health> {
  return page.$eval("main", (main) => {
    const text = (selector: string) => main.querySelector(selector)?.textContent ?? "";
    const heard: Record<string, [string, boolean]> = {};
    for (const tr of main.querySelectorAll("#members tbody tr")) {
      const td = tr.querySelector('td[data-label="Last heard"]');
      heard[tr.getAttribute("data-id") ?? ""] = [
        td?.textContent ?? "",
        td?.classList.contains("lag-high") ?? false,
      ];
    }
    return {
      leader: text("#leader"),
      tolerance: [
        text("#tolerance"),
        text("#tolerance-note"),
        main.querySelector("#tolerance")?.className ?? "",
      ],
      heard,
    } as Health;
  });
}

/** A last-heard duration as the page writes it: `just now` (within a heartbeat), `50 ms`, `1.25 s`. */
const DURATION = /^(just now|\d+(\.\d+)? (µs|ms|s))$/;

/**
 * Whether every member row's "Last heard" cell reads as it should: `leader` on the shown leader's
 * row, a duration on the others, flagged exactly on the `silent` ones.
 */
function heardAsExpected(h: Health, ids: string[], silent: string[]): boolean {
  return ids.every((id) => {
    const [text, flagged] = h.heard[id] ?? ["", false];
    if (id === h.leader) return text === "leader" && !flagged;
    return DURATION.test(text) && flagged === silent.includes(id);
  });
}

async function failureTolerance(cluster: ProcessCluster, browser: Browser): Promise<void> {
  // The member the previous step killed comes back: three voters again.
  for (const id of cluster.ids) if (!cluster.isRunning(id)) await cluster.start(id);
  const first = await cluster.waitForLeader();
  const watcher = cluster.ids.find((id) => id !== first)!;
  const page = await browser.newPage();
  const problems = watchProblems(page);
  assert.equal((await page.goto(`${cluster.api(watcher)}/ui/`))?.status(), 200);

  // All three heard from: one voter to spare, nothing flagged.
  let shown: Health | null = null;
  await waitFor(async () => {
    shown = await health(page);
    return shown.tolerance[0] === "1" && shown.tolerance[1] === "1 voter can fail" &&
      !/state-(warn|bad)/.test(shown.tolerance[2]) && cluster.ids.includes(shown.leader) &&
      heardAsExpected(shown, cluster.ids, []);
  }, {
    deadlineMs: 15_000,
    intervalMs: 100,
    message: () => `a failure tolerance of 1 and no member flagged (${JSON.stringify(shown)})`,
  });
  assert.equal(await textOf(page, "#up"), "3 / 3");
  // The page flags a last contact past the leader's election timeout: every node reports its own
  // (the harness's --election-timeout) in the answer the page polls. A member slow to answer
  // within that answer's deadline has no metrics: asked again.
  const electionS = Number(
    DEFAULT_NODE_FLAGS[DEFAULT_NODE_FLAGS.indexOf("--election-timeout") + 1],
  ) / 1000;
  let timeouts: Record<string, unknown> = {};
  await waitFor(async () => {
    const answer = await cluster.request(watcher, "GET", "/v1/cluster");
    const view = answer.json as {
      members?: { id: string; metrics: { election_timeout_seconds?: number } | null }[];
    } | null;
    timeouts = Object.fromEntries(
      (view?.members ?? []).map((m) => [m.id, m.metrics?.election_timeout_seconds]),
    );
    return cluster.ids.every((id) => timeouts[id] === electionS);
  }, {
    deadlineMs: 10_000,
    message: () =>
      `every member to report an election timeout of ${electionS} s (${JSON.stringify(timeouts)})`,
  });

  // A follower (not the page's node) is killed: the leader no longer hears from it.
  const leader = await cluster.waitForLeader();
  const victim = cluster.ids.find((id) => id !== leader && id !== watcher)!;
  const killed = performance.now();
  await cluster.kill(victim);
  await waitFor(async () => {
    shown = await health(page);
    return shown.tolerance[0] === "0" && shown.tolerance[1] === "no voter to spare" &&
      /\bstate-warn\b/.test(shown.tolerance[2]) && cluster.ids.includes(shown.leader) &&
      shown.leader !== victim && heardAsExpected(shown, cluster.ids, [victim]);
  }, {
    deadlineMs: 15_000,
    intervalMs: 100,
    message: () =>
      `a failure tolerance of 0, flagged, and ${victim}'s last-heard cell flagged (${
        JSON.stringify(shown)
      })`,
  });
  console.log(
    `the page flagged ${victim} ${
      ((performance.now() - killed) / 1000).toFixed(1)
    } s after it was killed`,
  );
  assert.equal(await textOf(page, "#up"), "2 / 3");
  assert.deepEqual(problems.lines, [], "the page raised no error");
  await page.close();
}

const TOKEN = "s3cret-token";

async function tokenFlow(cluster: ProcessCluster, node: string, browser: Browser): Promise<void> {
  // In front of the node: /v1/* wants the token, the dashboard's own files are open.
  const sent: (string | null)[] = [];
  await using proxy = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const url = new URL(req.url);
      const authorization = req.headers.get("authorization");
      if (url.pathname.startsWith("/v1/")) {
        sent.push(authorization);
        if (authorization !== `Bearer ${TOKEN}`) {
          return Response.json({ error: "a valid bearer token is required" }, {
            status: 401,
            headers: { "www-authenticate": "Bearer" },
          });
        }
      }
      const headers: Record<string, string> = authorization === null ? {} : { authorization };
      const res = await fetch(`${cluster.api(node)}${url.pathname}${url.search}`, {
        headers,
        redirect: "manual",
      });
      return new Response(res.body, { status: res.status, headers: res.headers });
    },
  );
  const origin = `http://127.0.0.1:${proxy.addr.port}`;
  const page = await browser.newPage();
  const problems = watchProblems(page);
  const res = await page.goto(`${origin}/ui/`);
  assert.equal(res?.status(), 200, "the page itself needs no token");
  await page.waitForSelector("#auth:not([hidden])", { timeout: 5000 });
  assert.match((await textOf(page, "#auth-message")) ?? "", /asks for a bearer token \(401\)/);
  assert.equal(await textOf(page, "#leader"), "—", "nothing shown without the token");

  await page.type("#token", "wrong");
  await page.click("#auth button");
  await waitForText(page, "#auth-message", (t) => /refused/.test(t ?? ""), 5000, "refusal");
  assert.ok(sent.includes("Bearer wrong"));

  await page.type("#token", TOKEN);
  await page.click("#auth button");
  const leader = (await cluster.status(node))?.leader?.id;
  await waitForText(page, "#leader", (t) => t === leader, 5000, `the page to show ${leader}`);
  assert.ok(await page.$eval("#auth", (el) => el.hasAttribute("hidden")));
  assert.equal(await page.evaluate(`sessionStorage.getItem("raftkv.token")`), TOKEN);

  // The token lives in the tab's session storage: a reload polls with it at once.
  const before = sent.length;
  await page.reload();
  await waitForText(page, "#leader", (t) => t === leader, 5000, `${leader} after a reload`);
  assert.ok(await page.$eval("#auth", (el) => el.hasAttribute("hidden")));
  assert.ok(sent.slice(before).every((a) => a === `Bearer ${TOKEN}`), `${sent.slice(before)}`);

  // The browser logs each 401 answer as a failed resource load; nothing else may go wrong.
  const unexpected = problems.lines.filter((line) => !/status of 401/.test(line));
  assert.deepEqual(unexpected, [], "the page raised no other error");
  await page.close();
}

Deno.test({
  name: "the dashboard shows members that refuse its token as up, and its figures as stale once " +
    "its own node refuses it" + (CHROMIUM ? "" : SKIP),
  ignore: CHROMIUM === null,
  async fn() {
    // Tokens being rotated: the new one is in force everywhere, the old one only on node-1 (the
    // page's node) until its file loses it too.
    const dir = await Deno.makeTempDir({ prefix: "raftkv-dashboard-tokens-" });
    const old = "old-token-" + crypto.randomUUID();
    const current = "new-token-" + crypto.randomUUID();
    const tokens = (...list: string[]) =>
      JSON.stringify(list.map((token, i) => ({ token, role: "read", name: `token-${i + 1}` })));
    const newOnly = join(dir, "new.json");
    const both = join(dir, "both.json");
    await Deno.writeTextFile(newOnly, tokens(current));
    await Deno.writeTextFile(both, tokens(old, current));
    const [cluster, browser] = await Promise.all([
      startCluster({ size: 3, nodeFlags: ["--tokens-file", newOnly], token: current }),
      launchBrowser(CHROMIUM!),
    ]);
    try {
      await cluster.waitForLeader();
      // A repeated flag keeps its last value: node-1 comes back with both tokens.
      await cluster.stop("node-1");
      await cluster.start("node-1", { flags: ["--tokens-file", both] });
      await cluster.waitForLeader();

      const page = await browser.newPage();
      const problems = watchProblems(page);
      const res = await page.goto(`${cluster.api("node-1")}/ui/`);
      assert.equal(res?.status(), 200);
      await page.waitForSelector("#auth:not([hidden])", { timeout: 10_000 });
      await page.type("#token", old);
      await page.click("#auth button");

      // node-2 and node-3 answer, but 401 to the old token: up, and refusing it.
      for (const id of ["node-2", "node-3"]) {
        await waitForText(
          page,
          `#members tr[data-id="${id}"] td[data-label="State"]`,
          (t) => t === "refused the token (401)",
          10_000,
          `the page to show that ${id} refused the token`,
        );
      }
      assert.equal(
        await textOf(page, '#members tr[data-id="node-1"] td[data-label="State"]'),
        "ok",
      );
      assert.deepEqual((await rows(page)).filter(([id]) => id !== "node-1"), [
        ["node-2", "refused"],
        ["node-3", "refused"],
      ]);
      assert.equal(await page.$$eval("#members tr.down", (trs) => trs.length), 0, "none is down");
      assert.equal(await textOf(page, "#up"), "3 / 3", "a member that refuses the token is up");
      assert.equal(await textOf(page, "#up-note"), "2 refused the token");
      assert.ok(await page.$eval("#banner", (el) => el.hasAttribute("hidden")));

      // The rotation reaches node-1: the page's own node refuses the old token. The form asks
      // for a new one, and the figures left on the page say they are old.
      const shown = await textOf(page, "#leader");
      await Deno.writeTextFile(both, tokens(current));
      cluster.signal("node-1", "SIGHUP");
      await page.waitForSelector("#auth:not([hidden])", { timeout: 10_000 });
      assert.match((await textOf(page, "#auth-message")) ?? "", /refused \(401\)/);
      await waitForText(
        page,
        "#banner",
        (t) => /answered 401 · stale since \d\d:\d\d:\d\d$/.test(t ?? ""),
        5000,
        "the banner to say the figures are stale",
      );
      assert.ok(await page.$eval("#banner", (el) => !el.hasAttribute("hidden")));
      assert.ok(await page.$eval("body", (el) => el.classList.contains("stale")));
      assert.equal(await textOf(page, "#leader"), shown, "the old figures stay, marked");

      // The new token: fresh figures, no longer stale, and every member answers it.
      await page.type("#token", current);
      await page.click("#auth button");
      await waitForText(page, "#up-note", (t) => t === "", 10_000, "no member to refuse the token");
      assert.equal(await textOf(page, "#up"), "3 / 3");
      assert.ok(await page.$eval("#banner", (el) => el.hasAttribute("hidden")));
      assert.ok(await page.$eval("body", (el) => !el.classList.contains("stale")));

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
