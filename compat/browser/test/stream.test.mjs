// A stream queue's page: peek shows the records its topic keeps (as the
// ready count promises), and no Purge button is offered, since a stream
// refuses queue.purge.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TEST_MS, brokerAndBrowser, waitForText, withPage } from '../lib/ui.mjs';

const env = brokerAndBrowser();

test('a stream queue peeks at its records and offers no purge', { timeout: TEST_MS }, async () => {
  await env.broker.api('PUT', '/api/queues/%2F/events', { durable: true, arguments: { 'x-queue-type': 'stream' } });
  await env.broker.api('PUT', '/api/queues/%2F/plain', { durable: true });
  await env.broker.api('POST', '/api/exchanges/%2F/amq.default/messages', {
    messages: [{ routing_key: 'events', payload: 'first' }, { routing_key: 'events', payload: 'second' }],
  });
  await withPage(env.browser, env.broker, '#/queues/%2F/events', async ({ page }) => {
    await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
    await waitForText(page.getByTestId('queue-ready'), '2', 15_000);
    assert.equal(await page.getByTestId('queue-purge').isVisible(), false);
    await page.getByTestId('peek-submit').click();
    await waitForText(page.getByTestId('peek-messages'), /second/);
    assert.deepEqual(await page.getByTestId('peek-payload').allTextContents(), ['first', 'second']);
    assert.match(await page.getByTestId('peek-properties').first().textContent(), /x-stream-offset/);
  });
  await withPage(env.browser, env.broker, '#/queues/%2F/plain', async ({ page }) => {
    await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
    await page.getByTestId('queue-purge').waitFor({ state: 'visible' });
  });
});
