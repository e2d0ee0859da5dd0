// The message browser over all partitions: reading every partition at
// once, and a search on key, headers or value that pages through a
// bounded scan with the API's cursor.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TEST_MS, brokerAndBrowser, row, waitFor, waitForText, withPage } from '../lib/ui.mjs';

const env = brokerAndBrowser();

test('the browser reads all partitions and searches keys, headers and values', { timeout: TEST_MS }, async () => {
  await env.broker.api('POST', '/api/topics', { name: 'searched', partitions: 3 });
  const records = Array.from({ length: 60 }, (_, i) => ({ partition: i % 3, key: `key-${i}`, value: `value ${i}` }));
  records[4].value = 'order with a Refund inside';
  records[32].key = 'refund-32';
  records[50].headers = [{ key: 'reason', value: 'refund requested' }];
  await env.broker.api('POST', '/api/topics/searched/messages', { records });

  await withPage(env.browser, env.broker, '#/messages?topic=searched', async ({ page }) => {
    // All partitions, twenty at a time.
    await page.getByTestId('browse-scope').selectOption('all');
    assert.equal(await page.getByTestId('browse-partition').isVisible(), false);
    await page.getByTestId('browse-limit').selectOption('20');
    await page.getByTestId('browse-read').click();
    await waitForText(page.getByTestId('browse-summary'), /^searched, all partitions: scanned 20 records, 20 shown; more to scan/);
    assert.equal(await page.getByTestId('message-row').count(), 20);
    // Each page is waited for by its rows: the second page's summary reads
    // as the first's, and a click made before it arrived was lost.
    const firstRow = () => page.getByTestId('message-row').first().getAttribute('data-key', { timeout: 1000 }).catch(() => null);
    const nextPage = async () => {
      const before = await firstRow();
      await page.getByTestId('browse-next').click();
      await waitFor('the next page of messages', 10_000, async () => {
        const now = await firstRow();
        return now !== null && now !== before;
      });
    };
    await nextPage();
    await waitForText(page.getByTestId('browse-summary'), /scanned 20 records/);
    await nextPage();
    await waitForText(page.getByTestId('browse-summary'), /reached the high watermark/);
    assert.equal(await page.getByTestId('browse-next').isVisible(), false);

    // A search across partitions finds all three places.
    await page.getByTestId('browse-limit').selectOption('50');
    await page.getByTestId('browse-search').fill('REFUND');
    await page.getByTestId('browse-read').click();
    await waitForText(page.getByTestId('browse-summary'), 'searched, all partitions: scanned 60 records, 3 matching "REFUND"; reached the high watermark.');
    for (const [partition, offset] of [[1, 1], [2, 10], [2, 16]]) {
      await row(page, 'message', `${partition}/${offset}`).waitFor();
    }
    assert.equal(await row(page, 'message', '1/1').getByTestId('message-value').textContent(), 'order with a Refund inside');
    assert.equal(await row(page, 'message', '2/10').getByTestId('message-key').textContent(), 'refund-32');
    assert.match(await row(page, 'message', '2/16').getByTestId('message-headers').textContent(), /reason: refund requested/);

    // Only in keys; then one partition.
    await page.getByTestId('browse-search-in').selectOption('key');
    await page.getByTestId('browse-read').click();
    await waitForText(page.getByTestId('browse-summary'), /1 matching "REFUND"/);
    await row(page, 'message', '2/10').waitFor();
    await page.getByTestId('browse-search-in').selectOption('');
    await page.getByTestId('browse-scope').selectOption('one');
    await page.getByTestId('browse-partition').fill('2');
    await page.getByTestId('browse-read').click();
    await waitForText(page.getByTestId('browse-summary'), /^searched partition 2: scanned 20 records, 2 matching/);
    assert.match(page.url(), /search=REFUND/);
  });
});
