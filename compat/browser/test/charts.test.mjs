// Charts: the broker keeps an hour of rates and lag (GET /api/overview/history,
// GET /api/groups/{group}/lag-history), so a chart opened for the first time
// already shows the time before it was opened; every axis label lies inside
// its drawing and an axis speaks one unit, named once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TEST_MS, brokerAndBrowser, sleep, waitFor, withPage } from '../lib/ui.mjs';

const env = brokerAndBrowser();

test('the overview and group charts are full on first load from the broker\'s history', { timeout: TEST_MS }, async () => {
  await env.broker.api('POST', '/api/topics', { name: 'history' });
  await env.broker.api('POST', '/api/topics/history/messages', { records: Array.from({ length: 5 }, (_, i) => ({ value: `r${i}` })) });
  await env.broker.api('POST', '/api/groups/history-group/reset-offsets', { topic: 'history', to: 'earliest' });
  const kept = await waitFor('three overview points and two lag points in the broker', 30_000, async () => {
    await env.broker.api('POST', '/api/topics/history/messages', { records: [{ value: 'more' }] });
    const overview = await env.broker.api('GET', '/api/overview/history');
    const lag = await env.broker.api('GET', '/api/groups/history-group/lag-history');
    return overview.points.length >= 3 && lag.points.length >= 2 && { overview, lag };
  });
  assert.equal(kept.overview.interval_ms, 5000);
  assert.equal(kept.overview.capacity, 720);
  assert.ok(kept.overview.points.some((p) => p.rates.kafka_records_in > 0), 'the records produced show in the history');
  assert.ok(kept.lag.points.every((p) => p.lag >= 5));

  const opened = Date.now();
  await withPage(env.browser, env.broker, '', async ({ page }) => {
    await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
    const chart = page.getByTestId('chart-kafka-records');
    await waitFor('the chart to hold the broker\'s points', 5000,
      async () => Number(await chart.getAttribute('data-points')) >= 3);
    assert.ok(Number(await chart.getAttribute('data-first')) < opened - 4000, 'the chart reaches back before the page opened');
  });
  await withPage(env.browser, env.broker, '#/groups/history-group', async ({ page }) => {
    await page.locator('[data-testid="page-groups"][data-loaded="true"]').waitFor();
    const chart = page.getByTestId('chart-group-lag');
    await waitFor('the lag chart to hold the broker\'s points', 5000,
      async () => Number(await chart.getAttribute('data-points')) >= 3);
    assert.ok(Number(await chart.getAttribute('data-first')) < opened - 4000);
  });
});

test('chart axis labels stay inside the drawing and each axis has one unit', { timeout: TEST_MS }, async () => {
  await env.broker.api('POST', '/api/topics', { name: 'bulky' });
  const value = 'x'.repeat(8000);
  const records = Array.from({ length: 100 }, () => ({ value }));
  await withPage(env.browser, env.broker, '', async ({ page }) => {
    await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
    // Some hundreds of KiB per second: the byte axis leaves plain bytes.
    await waitFor('a byte axis in KiB/s or MiB/s', 30_000, async () => {
      await env.broker.api('POST', '/api/topics/bulky/messages', { records });
      return /^(KiB|MiB)\/s$/.test(await page.getByTestId('chart-kafka-bytes-unit').textContent());
    });
    for (const id of ['chart-kafka-records', 'chart-kafka-bytes', 'chart-amqp']) {
      const found = await page.getByTestId(id).evaluate((drawing) => {
        const box = drawing.getBoundingClientRect();
        const texts = [...drawing.querySelectorAll('text')].map((text) => {
          const r = text.getBoundingClientRect();
          return { text: text.textContent, axis: text.dataset.axis, cls: text.getAttribute('class'), left: r.left - box.left, right: r.right - box.left, top: r.top - box.top, bottom: r.bottom - box.top };
        });
        return { width: box.width, height: box.height, texts };
      });
      const { width, height, texts } = found;
      assert.ok(texts.length > 5, `${id} draws its labels as text`);
      for (const t of texts) {
        assert.ok(t.left >= 0 && t.right <= width + 0.5 && t.top >= 0 && t.bottom <= height + 0.5,
          `${id}: label ${JSON.stringify(t.text)} lies inside the ${width}x${height} drawing: ${JSON.stringify(t)}`);
      }
      const yLabels = texts.filter((t) => t.axis === 'y').map((t) => t.text);
      assert.equal(yLabels.length, 5, `${id} has five grid labels`);
      for (const label of yLabels) assert.match(label, /^[\d,]+(\.\d+)?$/, `${id}: a grid label is a bare number`);
      const units = texts.filter((t) => t.cls === 'axis-unit');
      assert.equal(units.length, 1, `${id} names its unit once`);
    }
    const unit = await page.getByTestId('chart-kafka-bytes-unit').textContent();
    const top = await page.getByTestId('chart-kafka-bytes').locator('text[data-axis="y"]').last().textContent();
    assert.notEqual(top, '0', `the byte axis in ${unit} has a top above zero`);
  }, { viewport: { width: 1024, height: 800 } });
  await sleep(0);
});
