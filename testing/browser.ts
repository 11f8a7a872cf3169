/**
 * Test support for the dashboard: a real headless Chromium (Debian package `chromium`) driven
 * through the DevTools protocol with `puppeteer-core`, which brings no browser of its own.
 *
 * @module
 */

import puppeteer, { type Browser, type Page } from "puppeteer-core";

// Re-exported for the tests. puppeteer-core's own declarations reference types it does not
// export, which `deno doc --lint` reports, so this file is the one left out of that check
// (deno.json's check task).
export type { Browser, Page } from "puppeteer-core";

/**
 * The Chromium to drive: `RAFTKV_CHROMIUM` if set, else the first of `/usr/bin/chromium`,
 * `/usr/bin/chromium-browser` and `/usr/bin/google-chrome` that exists, else null.
 *
 * @returns The executable's path, or null when there is none.
 */
export function findChromium(): string | null {
  const env = Deno.env.get("RAFTKV_CHROMIUM");
  const candidates = env ? [env] : [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
  ];
  for (const path of candidates) {
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not there
    }
  }
  return null;
}

/**
 * Starts a headless Chromium. Close it with `await browser.close()` (or `await using`).
 *
 * @param executablePath The browser, from {@linkcode findChromium}.
 * @returns The browser.
 */
export async function launchBrowser(executablePath: string): Promise<Browser> {
  const args = [
    "--headless=new",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
    "--font-render-hinting=none",
  ];
  // Chromium refuses to run as root with its sandbox on.
  if (Deno.uid() === 0) args.push("--no-sandbox");
  return await puppeteer.launch({
    executablePath,
    headless: true,
    args,
    defaultViewport: { width: 1280, height: 900 },
    protocolTimeout: 20_000,
  });
}

/** What a page complained about: console errors, uncaught exceptions, failed requests. */
export interface PageProblems {
  /** One line per problem, in order. */
  lines: string[];
}

/**
 * Collects what goes wrong on a page from now on: console errors (a Content-Security-Policy
 * violation is one), uncaught exceptions and requests that failed to load.
 *
 * @param page The page to watch.
 * @returns The list, filled as problems happen.
 */
export function watchProblems(page: Page): PageProblems {
  const problems: PageProblems = { lines: [] };
  page.on("console", (message) => {
    if (message.type() === "error") problems.lines.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => {
    problems.lines.push(`exception: ${error instanceof Error ? error.message : String(error)}`);
  });
  page.on("requestfailed", (request) => {
    problems.lines.push(`failed: ${request.url()} ${request.failure()?.errorText ?? ""}`);
  });
  return problems;
}

/**
 * The text of the first element a selector finds on a page.
 *
 * @param page The page.
 * @param selector A CSS selector.
 * @returns Its `textContent`, or null when nothing matches.
 */
export async function textOf(page: Page, selector: string): Promise<string | null> {
  return await page.$eval(selector, (el) => el.textContent).catch(() => null);
}

/**
 * Waits until the text of the first element a selector finds passes a check, reading it every
 * 50 ms until the deadline.
 *
 * @param page The page.
 * @param selector A CSS selector.
 * @param check Whether the text (null when nothing matches) is the one awaited.
 * @param deadlineMs How long to wait, in milliseconds.
 * @param what What is awaited, for the error.
 * @returns The text that passed.
 * @throws {Error} Quoting the last text read once the deadline passes.
 */
export async function waitForText(
  page: Page,
  selector: string,
  check: (text: string | null) => boolean,
  deadlineMs: number,
  what: string,
): Promise<string | null> {
  const deadline = Date.now() + deadlineMs;
  let text: string | null = null;
  while (true) {
    text = await textOf(page, selector);
    if (check(text)) return text;
    if (Date.now() >= deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(
    `Timed out after ${deadlineMs}ms waiting for ${what}: ${selector} reads ${
      JSON.stringify(text)
    }`,
  );
}
