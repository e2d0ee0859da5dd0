// Debian's Chromium, headless, driven by playwright-core: never a browser
// download, never the outside network. Every page opened here records what
// would show a broken UI: console errors, uncaught exceptions, requests
// that failed and answers of 400 or more.

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

// As root, headless Chromium needs --no-sandbox; the rest keep it from
// reaching for the network (updates, sync, first-run pings).
const ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-default-apps',
  '--disable-dev-shm-usage',
];

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true, timeout: 30_000 });
}

/**
 * A new page in a fresh context (own sessionStorage) at `url`, with
 * `problems` collecting every console error, page error, failed request
 * and error status. `allow(pattern)` accepts problems matching a pattern
 * (for a test that provokes an API error on purpose); `problemsLeft()`
 * lists the rest.
 */
export async function openPage(browser, url, { viewport = { width: 1400, height: 900 } } = {}) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.setDefaultNavigationTimeout(15_000);
  const problems = [];
  const allowed = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('requestfailed', (request) => {
    problems.push(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400) {
      problems.push(`status ${response.status()}: ${response.request().method()} ${response.url()}`);
    }
  });
  await page.goto(url);
  return {
    page,
    problems,
    allow(pattern) {
      allowed.push(pattern);
    },
    problemsLeft() {
      return problems.filter((problem) => !allowed.some((pattern) => pattern.test(problem)));
    },
    close: () => context.close(),
  };
}
