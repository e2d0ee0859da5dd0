// What the browser test files share: polling with a named deadline, a page
// that must stay free of errors, navigation and row lookup by test id.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import { startBroker } from '../../common/broker.mjs';
import { launchBrowser, openPage } from './browser.mjs';

export const TEST_MS = 90_000;

/**
 * A broker and a headless browser for the calling test file: started
 * before its first test, stopped (the broker by PID) after its last. Read
 * them as `env.broker` and `env.browser` inside the tests.
 */
export function brokerAndBrowser() {
  const env = { broker: undefined, browser: undefined };
  before(async () => {
    env.broker = await startBroker();
    env.browser = await launchBrowser();
  });
  after(async () => {
    await env.browser?.close();
    await env.broker?.stop();
  });
  return env;
}
const POLL_MS = 100;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value or `deadlineMs` passes. */
export async function waitFor(what, deadlineMs, check) {
  const until = Date.now() + deadlineMs;
  let last;
  while (Date.now() < until) {
    last = await check();
    if (last) return last;
    await sleep(POLL_MS);
  }
  assert.fail(`timed out after ${deadlineMs} ms waiting for ${what}`);
}

/** Waits until the locator's text (trimmed) equals `expected` or passes it as a test. */
export async function waitForText(locator, expected, deadlineMs = 10_000) {
  const matches = (text) => (expected instanceof RegExp ? expected.test(text) : text === expected);
  let text = null;
  try {
    await waitFor(`text ${expected}`, deadlineMs, async () => {
      text = (await locator.first().textContent({ timeout: 1000 }).catch(() => null))?.trim() ?? null;
      return text !== null && matches(text);
    });
  } catch {
    assert.fail(`waiting for ${locator} to read ${expected}; it reads ${JSON.stringify(text)}`);
  }
  return text;
}

/**
 * Opens the UI of `broker` at `hash` in a fresh browser context, runs
 * `body`, then checks it stayed clean. `viewport` as for openPage.
 */
export async function withPage(browser, broker, hash, body, options = {}) {
  const session = await openPage(browser, `${broker.url}/${hash}`, options);
  try {
    await body(session);
    // Let polls in flight land before judging.
    await sleep(300);
    assert.deepEqual(session.problemsLeft(), [], 'the page logged errors or saw failed requests');
  } finally {
    await session.close();
  }
}

export const row = (page, list, key) => page.locator(`[data-testid="${list}-row"][data-key="${key}"]`);

export async function confirm(page, reason) {
  const dialog = page.getByTestId('confirm-dialog');
  await dialog.waitFor();
  if (reason !== undefined) await dialog.getByTestId('confirm-input').fill(reason);
  await dialog.getByTestId('confirm-ok').click();
  await dialog.waitFor({ state: 'detached' });
}
