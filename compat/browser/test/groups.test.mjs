// Consumer groups in the UI: the broker's internal groups (the forwarders
// of topics to exchanges, `__sluice_forward:*`) are hidden until asked for,
// and a topic's page lists the groups that consume it, whether by
// committed offsets or by members assigned its partitions (kafkajs).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';

import { TEST_MS, brokerAndBrowser, row, waitFor, waitForText, withPage } from '../lib/ui.mjs';

const env = brokerAndBrowser();

const FORWARDER = '__sluice_forward:/:amq.fanout';

test('internal groups are hidden by default and shown with the toggle', { timeout: TEST_MS }, async () => {
  await env.broker.api('POST', '/api/topics', { name: 'forwarded', configs: { 'sluice.forward.exchange': 'amq.fanout' } });
  await env.broker.api('POST', '/api/topics/forwarded/messages', { records: [{ value: 'to amqp' }] });
  await env.broker.api('POST', '/api/groups/visible-group/reset-offsets', { topic: 'forwarded', to: 'earliest' });
  await waitFor('the forwarder group', 15_000,
    async () => (await env.broker.api('GET', '/api/groups')).items.some((g) => g.group_id === FORWARDER));

  await withPage(env.browser, env.broker, '#/groups', async ({ page }) => {
    await row(page, 'groups', 'visible-group').waitFor();
    assert.equal(await row(page, 'groups', FORWARDER).count(), 0, 'the forwarder is hidden');
    await waitForText(page.getByTestId('groups-total'), '1 item');
    await page.getByTestId('groups-internal').check();
    await row(page, 'groups', FORWARDER).waitFor();
    assert.equal(await row(page, 'groups', FORWARDER).getByTestId('group-internal').textContent(), 'internal');
    await waitForText(page.getByTestId('groups-total'), '2 items');
    assert.match(page.url(), /internal=true/);
    // The choice survives a reload.
    await page.reload();
    await row(page, 'groups', FORWARDER).waitFor();
    await page.getByTestId('groups-internal').uncheck();
    await waitFor('the forwarder to leave the list', 5000, async () => (await row(page, 'groups', FORWARDER).count()) === 0);
  });

  // The topic's page lists the forwarder only on demand too.
  await withPage(env.browser, env.broker, '#/topics/forwarded', async ({ page }) => {
    await row(page, 'topic-groups', 'visible-group').waitFor();
    assert.equal(await row(page, 'topic-groups', FORWARDER).count(), 0);
    await page.getByTestId('topic-groups-internal').check();
    await row(page, 'topic-groups', FORWARDER).waitFor();
  });
});

test('a topic page lists the groups that consume it', { timeout: TEST_MS }, async () => {
  await env.broker.api('POST', '/api/topics', { name: 'read-by-many', partitions: 2 });
  await env.broker.api('POST', '/api/topics', { name: 'other-topic' });
  await env.broker.api('POST', '/api/topics/read-by-many/messages', { records: Array.from({ length: 6 }, (_, i) => ({ partition: i % 2, value: `v${i}` })) });
  await env.broker.api('POST', '/api/groups/committed-reader/reset-offsets', { topic: 'read-by-many', to: 'earliest' });
  await env.broker.api('POST', '/api/groups/elsewhere/reset-offsets', { topic: 'other-topic', to: 'earliest' });
  const kafka = new Kafka({ clientId: 'topic-groups', brokers: [env.broker.bootstrap], logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: 'live-reader', sessionTimeout: 10_000 });
  await consumer.connect();
  try {
    await consumer.subscribe({ topic: 'read-by-many', fromBeginning: false });
    await consumer.run({ autoCommit: false, eachMessage: async () => {} });
    await waitFor('the live group to be stable', 30_000,
      async () => (await env.broker.api('GET', '/api/groups/live-reader')).state === 'Stable');

    await withPage(env.browser, env.broker, '#/topics/read-by-many', async ({ page }) => {
      await page.locator('[data-testid="page-topics"][data-loaded="true"]').waitFor();
      await row(page, 'topic-groups', 'committed-reader').waitFor();
      assert.equal(await row(page, 'topic-groups', 'committed-reader').getByTestId('topic-group-lag').textContent(), '6');
      await waitForText(row(page, 'topic-groups', 'live-reader').getByTestId('topic-group-members'), '1', 10_000);
      assert.equal(await row(page, 'topic-groups', 'elsewhere').count(), 0, 'a group of another topic is not listed');
      await row(page, 'topic-groups', 'committed-reader').getByTestId('topic-group-link').click();
      await page.waitForURL(/#\/groups\/committed-reader$/);
    });
  } finally {
    await consumer.disconnect();
  }
});
