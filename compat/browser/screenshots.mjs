// Saves screenshots of the web UI's main pages to docs/screenshots/ for
// the README: starts a broker (as the tests do), gives it topics, a
// consumer group, queues and 90 seconds of Kafka and AMQP traffic, and
// photographs the pages in headless Chromium.
//
//   node compat/browser/screenshots.mjs     (after `cargo build -p sluice`)
//
// The PNGs are generated artifacts kept in git on purpose; rerun this
// after a visible change to the UI.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { Kafka, logLevel } from 'kafkajs';

import { root, startBroker } from '../common/broker.mjs';
import { launchBrowser, openPage } from './lib/browser.mjs';

const OUT = path.join(root, 'docs', 'screenshots');
const TRAFFIC_MS = Number(process.env.TRAFFIC_MS || 90_000);
const VIEWPORT = { width: 1280, height: 860 };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function seed(broker) {
  const topics = [
    ['orders', 6, { 'retention.ms': '604800000' }],
    ['payments', 3, { 'cleanup.policy': 'compact' }],
    ['clickstream', 12, { 'retention.ms': '86400000', 'segment.bytes': '67108864' }],
    ['audit-log', 1, {}],
    ['inventory.updates', 4, {}],
    ['user-signups', 2, {}],
  ];
  for (const [name, partitions, configs] of topics) {
    await broker.api('POST', '/api/topics', { name, partitions, configs });
  }
  for (const name of ['jobs', 'emails', 'invoices', 'invoices.dead-letter']) {
    await broker.api('PUT', `/api/queues/%2F/${encodeURIComponent(name)}`, { durable: true, arguments: name === 'jobs' ? { 'x-max-priority': 10 } : {} });
  }
  await broker.api('PUT', '/api/exchanges/%2F/billing', { type: 'topic', durable: true });
  await broker.api('POST', '/api/bindings', { vhost: '/', source: 'billing', destination: 'invoices', destination_type: 'queue', routing_key: 'invoice.*' });
  await broker.api('POST', '/api/bindings', { vhost: '/', source: 'billing', destination: 'invoices.dead-letter', destination_type: 'queue', routing_key: 'invoice.failed' });
  await broker.api('POST', '/api/topics/audit-log/messages', {
    records: [{ key: 'admin', value: 'topic orders created', headers: [{ key: 'actor', value: 'ops' }] }],
  });
  // A group that stopped: committed offsets, no members, some lag.
  await broker.api('POST', '/api/groups/reporting/reset-offsets', { topic: 'payments', to: 'earliest' });
}

/** Kafka and AMQP traffic at a rate that rises and falls, until `stop.at`. */
async function traffic(broker, kafka, stop) {
  const producer = kafka.producer();
  await producer.connect();
  const started = Date.now();
  let n = 0;
  try {
    while (Date.now() < stop.at) {
      const phase = (Date.now() - started) / 15_000;
      const batch = Math.round(20 + 15 * Math.sin(phase * Math.PI));
      const messages = Array.from({ length: batch }, () => {
        n += 1;
        return {
          key: `customer-${n % 97}`,
          value: JSON.stringify({ order: n, amount: Number(((n * 7.31) % 500).toFixed(2)), currency: 'EUR' }),
          headers: { source: 'checkout', 'trace-id': `t-${n.toString(16)}` },
        };
      });
      await producer.send({ topic: 'orders', messages });
      await producer.send({ topic: 'payments', messages: messages.slice(0, batch / 3) });
      await producer.send({ topic: 'clickstream', messages: messages.map((m) => ({ ...m, value: `view /product/${n % 40}` })) });
      for (let i = 0; i < Math.max(1, Math.round(batch / 4)); i += 1) {
        await broker.api('POST', '/api/exchanges/%2F/amq.default/publish', {
          routing_key: i % 2 ? 'jobs' : 'emails', payload: `{"task": ${n + i}}`, properties: { delivery_mode: 1 },
        });
      }
      await broker.api('POST', '/api/exchanges/%2F/billing/publish', { routing_key: 'invoice.created', payload: `invoice ${n}` });
      await sleep(250);
    }
  } finally {
    await producer.disconnect();
  }
}

async function main() {
  mkdirSync(OUT, { recursive: true });
  const broker = await startBroker();
  const browser = await launchBrowser();
  const kafka = new Kafka({ clientId: 'screenshots', brokers: [broker.bootstrap], logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: 'analytics' });
  try {
    await seed(broker);
    await consumer.connect();
    await consumer.subscribe({ topic: 'orders', fromBeginning: true });
    // A slow consumer, so the group keeps some lag that moves.
    await consumer.run({ eachMessage: async () => { await sleep(12); } });

    // Traffic runs until every picture is taken, so the rates are live.
    const stop = { at: Date.now() + TRAFFIC_MS + 120_000 };
    let trafficError = null;
    const running = traffic(broker, kafka, stop).catch((error) => { trafficError = error; });
    // The overview and group pages keep their history while open: open them
    // now, photograph them last.
    const overview = await openPage(browser, `${broker.url}/#/`, { viewport: VIEWPORT });
    const group = await openPage(browser, `${broker.url}/#/groups/analytics`, { viewport: VIEWPORT });
    await sleep(TRAFFIC_MS);

    const shots = [];
    const save = async (page, name) => {
      const file = path.join(OUT, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      shots.push(file);
    };
    const { page } = await openPage(browser, `${broker.url}/#/topics`, { viewport: VIEWPORT });
    await page.getByTestId('topics-row').first().waitFor();
    await save(page, 'topics');
    await page.evaluate(() => { location.hash = '#/topics/orders'; });
    await page.locator('[data-testid="page-topics"][data-loaded="true"]').waitFor();
    await save(page, 'topic');
    await page.evaluate(() => { location.hash = '#/groups'; });
    await page.getByTestId('groups-row').first().waitFor();
    await save(page, 'groups');
    await page.evaluate(() => { location.hash = '#/queues'; });
    await page.getByTestId('queues-row').first().waitFor();
    await sleep(5500); // one list refresh, so the rates are current
    await save(page, 'queues');
    await page.evaluate(() => { location.hash = '#/messages?topic=orders&partition=0&limit=20'; });
    await page.getByTestId('message-row').first().waitFor();
    await save(page, 'messages');

    await overview.page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
    await save(overview.page, 'overview');
    await group.page.locator('[data-testid="page-groups"][data-loaded="true"]').waitFor();
    await save(group.page, 'group');
    stop.at = 0;
    await running;
    if (trafficError) throw trafficError;

    for (const session of [overview, group]) {
      if (session.problemsLeft().length) console.warn('problems:', session.problemsLeft());
    }
    console.log(shots.map((file) => path.relative(root, file)).join('\n'));
  } finally {
    await consumer.disconnect().catch(() => {});
    await browser.close();
    await broker.stop();
  }
}

await main();
