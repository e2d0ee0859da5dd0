// At 1024 px wide every table fits its page: no table scrolls sideways
// and no action button in a row lies outside the window, with names and
// numbers long enough to push.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';

import { TEST_MS, brokerAndBrowser, withPage } from '../lib/ui.mjs';

const WIDTH = 1024;

const env = brokerAndBrowser();

/** Every table on the page: whether it overflows, and buttons or links outside the window. */
async function overflow(page) {
  return page.evaluate((width) => {
    const problems = [];
    for (const wrap of document.querySelectorAll('.table-wrap')) {
      if (wrap.scrollWidth > wrap.clientWidth + 1) {
        const id = wrap.querySelector('table')?.dataset.testid;
        problems.push(`table ${id} is ${wrap.scrollWidth}px wide in ${wrap.clientWidth}px`);
      }
      for (const action of wrap.querySelectorAll('button, a.button')) {
        const box = action.getBoundingClientRect();
        if (box.width > 0 && (box.right > width || box.left < 0)) {
          problems.push(`${action.dataset.testid || action.textContent} spans ${Math.round(box.left)}–${Math.round(box.right)}px`);
        }
      }
    }
    if (document.documentElement.scrollWidth > width) problems.push(`the page is ${document.documentElement.scrollWidth}px wide`);
    return problems;
  }, WIDTH);
}

test('every table fits a 1024 px window with its actions visible', { timeout: TEST_MS }, async () => {
  const long = 'a-rather-long-name-for-a-production-resource';
  await env.broker.api('POST', '/api/topics', { name: `${long}-topic`, partitions: 3 });
  await env.broker.api('POST', `/api/topics/${long}-topic/messages`, {
    records: Array.from({ length: 30 }, (_, i) => ({ partition: i % 3, key: `key-${i}`, value: 'x'.repeat(300), headers: [{ key: 'trace-id', value: `${long}-${i}` }] })),
  });
  await env.broker.api('PUT', `/api/queues/%2F/${long}-queue`, {
    durable: true,
    arguments: { 'x-dead-letter-exchange': 'amq.direct', 'x-dead-letter-routing-key': 'dead', 'x-message-ttl': 60000, 'x-max-length': 100000, 'x-max-priority': 10 },
  });
  await env.broker.api('PUT', `/api/exchanges/%2F/${long}-exchange`, { type: 'topic', durable: true, arguments: { 'alternate-exchange': 'amq.fanout' } });
  await env.broker.api('POST', '/api/bindings', {
    vhost: '/', source: `${long}-exchange`, destination: `${long}-queue`, destination_type: 'queue', routing_key: `${long}.#`,
  });
  await env.broker.api('POST', `/api/exchanges/%2F/${long}-exchange/publish`, {
    routing_key: `${long}.x`, payload: 'y'.repeat(400), properties: { delivery_mode: 2, headers: { 'trace-id': long }, content_type: 'application/json' },
  });
  await env.broker.api('POST', `/api/groups/${long}-group/reset-offsets`, { topic: `${long}-topic`, to: 'earliest' });
  const kafka = new Kafka({ clientId: `${long}-client`, brokers: [env.broker.bootstrap], logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const enc = encodeURIComponent;
  try {
    const pages = [
      ['#/topics', 'topics-table'],
      [`#/topics/${enc(`${long}-topic`)}`, 'partitions-table'],
      ['#/groups', 'groups-table'],
      [`#/groups/${enc(`${long}-group`)}`, 'offsets-table'],
      ['#/exchanges', 'exchanges-table'],
      [`#/exchanges/%2F/${enc(`${long}-exchange`)}`, 'bindings-table'],
      ['#/queues', 'queues-table'],
      [`#/queues/%2F/${enc(`${long}-queue`)}`, 'bindings-table'],
      ['#/bindings', 'bindings-table'],
      ['#/connections', 'connections-table'],
      [`#/messages?topic=${enc(`${long}-topic`)}&scope=all`, 'messages-table'],
    ];
    const found = [];
    await withPage(env.browser, env.broker, '', async ({ page }) => {
      for (const [hash, table] of pages) {
        await page.evaluate((h) => { location.hash = h; }, hash);
        await page.getByTestId(table).first().waitFor();
        if (hash.includes('/queues/')) {
          await page.getByTestId('peek-submit').click();
          await page.getByTestId('peek-table').waitFor();
          await page.getByTestId('get-submit').click();
          await page.getByTestId('get-table').waitFor();
        }
        for (const problem of await overflow(page)) found.push(`${hash}: ${problem}`);
      }
    }, { viewport: { width: WIDTH, height: 800 } });
    assert.deepEqual(found, []);
  } finally {
    await admin.disconnect();
  }
});
