// The queue page's tools: arguments shown as badges (DLX, TTL, max-length,
// priority, type), "get messages" that requeues, acknowledges or rejects
// (to the dead-letter queue), and moving messages from a dead-letter queue
// back to its work queue.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TEST_MS, brokerAndBrowser, confirm, row, waitFor, waitForText, withPage } from '../lib/ui.mjs';

const env = brokerAndBrowser();

const ready = async (queue) => (await env.broker.api('GET', `/api/queues/%2F/${queue}`)).messages_ready;

test('queue arguments show as badges on the queue page and as flags in the list', { timeout: TEST_MS }, async () => {
  await env.broker.api('PUT', '/api/queues/%2F/badged', {
    durable: true,
    arguments: {
      'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'badged-dlq', 'x-message-ttl': 60000,
      'x-max-length': 1000, 'x-max-priority': 5, 'x-queue-type': 'classic',
    },
  });
  await withPage(env.browser, env.broker, '#/queues/%2F/badged', async ({ page }) => {
    await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
    const args = page.getByTestId('queue-arguments');
    assert.equal(await args.getByTestId('queue-arg-dlx').textContent(), 'DLX: (AMQP default) → badged-dlq');
    assert.equal(await args.getByTestId('queue-arg-ttl').textContent(), 'TTL: 1m 0s');
    assert.equal(await args.getByTestId('queue-arg-max-length').textContent(), 'max-length: 1,000');
    assert.equal(await args.getByTestId('queue-arg-priority').textContent(), 'priority: 0–5');
    assert.equal(await args.getByTestId('queue-arg-type').textContent(), 'type: classic');
    await page.getByTestId('nav-queues').click();
    // The list renders after its request answers: wait for the row first.
    const badged = row(page, 'queues', '//badged');
    await badged.waitFor();
    const flags = await badged.locator('abbr.flag').allTextContents();
    assert.deepEqual(flags, ['D', 'DLX', 'DLK', 'TTL', 'Lim', 'Pri']);
  });
});

test('get messages requeues, acknowledges or rejects to the dead-letter queue', { timeout: TEST_MS }, async () => {
  await env.broker.api('PUT', '/api/queues/%2F/got-dlq', { durable: true });
  await env.broker.api('PUT', '/api/queues/%2F/got', {
    durable: true, arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'got-dlq' },
  });
  for (const payload of ['first', 'second', 'third']) {
    await env.broker.api('POST', '/api/exchanges/%2F/amq.default/publish', { routing_key: 'got', payload });
  }
  await withPage(env.browser, env.broker, '#/queues/%2F/got', async ({ page }) => {
    await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
    await waitForText(page.getByTestId('queue-ready'), '3', 15_000);

    // Requeue (the default): seen, still there.
    await page.getByTestId('get-count').fill('2');
    await page.getByTestId('get-submit').click();
    await waitForText(page.getByTestId('get-result'), '2 messages taken and requeued.');
    assert.deepEqual(await page.getByTestId('get-payload').allTextContents(), ['first', 'second']);
    assert.equal(await ready('got'), 3);

    // Ack: removed, after confirmation.
    await page.getByTestId('get-count').fill('1');
    await page.getByTestId('get-ackmode').selectOption('ack_requeue_false');
    await page.getByTestId('get-submit').click();
    await waitForText(page.getByTestId('confirm-message'), /remove them/);
    await confirm(page);
    await waitForText(page.getByTestId('get-result'), '1 message taken and acknowledged (removed).');
    assert.equal(await page.getByTestId('get-payload').textContent(), 'first');
    assert.equal(await ready('got'), 2);
    await waitForText(page.getByTestId('queue-ready'), '2');

    // Reject without requeue: dead-lettered.
    await page.getByTestId('get-ackmode').selectOption('reject_requeue_false');
    await page.getByTestId('get-submit').click();
    await confirm(page);
    await waitForText(page.getByTestId('get-result'), '1 message taken and rejected.');
    assert.equal(await ready('got'), 1);
    assert.equal(await ready('got-dlq'), 1);
  });
});

test('messages move from a dead-letter queue back to their queue', { timeout: TEST_MS }, async () => {
  await env.broker.api('PUT', '/api/queues/%2F/orders', { durable: true });
  await env.broker.api('PUT', '/api/queues/%2F/orders-dlq', { durable: true });
  for (let i = 0; i < 4; i += 1) {
    await env.broker.api('POST', '/api/exchanges/%2F/amq.default/publish', {
      routing_key: 'orders-dlq', payload: `order ${i}`, properties: { delivery_mode: 2, headers: { attempt: i } },
    });
  }
  await withPage(env.browser, env.broker, '#/queues/%2F/orders-dlq', async ({ page }) => {
    await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
    await page.getByTestId('move-destination').fill('orders');
    await page.getByTestId('move-count').fill('3');
    await page.getByTestId('move-submit').click();
    await waitForText(page.getByTestId('confirm-message'), /Move up to 3 messages from queue orders-dlq to queue orders/);
    await confirm(page);
    await waitForText(page.getByTestId('move-result'), 'Moved 3 messages to orders.');
    await waitForText(page.getByTestId('queue-ready'), '1');
    assert.equal(await ready('orders'), 3);

    await page.getByTestId('move-count').fill('');
    await page.getByTestId('move-submit').click();
    await waitForText(page.getByTestId('confirm-message'), /Move every ready message/);
    await confirm(page);
    await waitForText(page.getByTestId('move-result'), 'Moved 1 message to orders.');
    await waitFor('the dead-letter queue to be empty', 10_000, async () => (await ready('orders-dlq')) === 0);
    const moved = await env.broker.api('GET', '/api/queues/%2F/orders/messages?count=10');
    assert.deepEqual(moved.messages.map((m) => [m.payload, m.properties.headers.attempt, m.properties.delivery_mode]),
      [['order 0', 0, 2], ['order 1', 1, 2], ['order 2', 2, 2], ['order 3', 3, 2]]);
  });
});
