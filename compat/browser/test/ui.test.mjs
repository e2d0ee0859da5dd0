// The web UI in headless Chromium against a real broker: every page loads
// and shows what the API holds; topics, queues and messages made through
// the UI exist afterwards; traffic from a real Kafka client (kafkajs) moves
// the overview's rates and shows in the message browser; connections close
// from the UI. Every page must finish without a console error, an uncaught
// exception, a failed request or an error status the test did not provoke.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';

import { startBroker } from '../../common/broker.mjs';
import { launchBrowser, openPage } from '../lib/browser.mjs';
import { TEST_MS, confirm, row, sleep, waitFor, waitForText, withPage as withCleanPage } from '../lib/ui.mjs';

let broker;
let browser;
let kafka;

before(async () => {
  broker = await startBroker();
  browser = await launchBrowser();
  kafka = new Kafka({ clientId: 'browser-tests', brokers: [broker.bootstrap], logLevel: logLevel.NOTHING });
});

after(async () => {
  await browser?.close();
  await broker?.stop();
});

/** Opens the UI at `hash` in a fresh browser context (see lib/ui.mjs). */
const withPage = (hash, body) => withCleanPage(browser, broker, hash, body);

/** Follows a navigation link and waits for the page it leads to. */
async function navigate(page, name) {
  await page.getByTestId(`nav-${name}`).click();
  await page.locator(`[data-testid="page-${name}"]`).waitFor();
  assert.match(await page.getByTestId(`nav-${name}`).getAttribute('class'), /active/);
}

test('every page loads and shows what the broker holds', { timeout: TEST_MS }, async () => {
  await broker.api('POST', '/api/topics', { name: 'seeded', partitions: 2 });
  await broker.api('POST', '/api/topics/seeded/messages', { records: [{ partition: 0, key: 'k', value: 'v' }] });
  await broker.api('PUT', '/api/queues/%2F/seeded-queue', { durable: true });
  await broker.api('POST', '/api/bindings', {
    vhost: '/', source: 'amq.topic', destination: 'seeded-queue', destination_type: 'queue', routing_key: 'seeded.#',
  });
  await broker.api('POST', '/api/groups/seeded-group/reset-offsets', { topic: 'seeded', to: 'earliest' });
  const admin = kafka.admin();
  await admin.connect();

  try {
    await withPage('', async ({ page }) => {
      // Overview
      await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
      assert.equal(await page.title(), 'Overview · Sluice');
      await waitForText(page.getByTestId('total-topics'), '1');
      await waitForText(page.getByTestId('total-queues'), '1');
      await waitForText(page.getByTestId('total-groups'), '1');
      assert.equal(await page.getByTestId('overview-version').textContent(), '0.1.0');
      for (const protocol of ['kafka', 'amqp', 'http', 'mqtt', 'stomp']) {
        await row(page, 'listener', protocol).waitFor();
      }
      assert.match(await row(page, 'listener', 'kafka').textContent(), new RegExp(broker.bootstrap.replace(/\./g, '\\.')));
      assert.equal(await page.getByTestId('alarm-memory').getAttribute('data-active'), 'false');
      assert.equal(await page.getByTestId('alarm-disk').getAttribute('data-active'), 'false');
      for (const chart of ['chart-kafka-records', 'chart-kafka-bytes', 'chart-amqp']) {
        const box = await page.getByTestId(chart).boundingBox();
        assert.ok(box && box.width > 200 && box.height > 100, `${chart} is drawn at a visible size`);
      }

      // Topics, then one topic
      await navigate(page, 'topics');
      await row(page, 'topics', 'seeded').waitFor();
      assert.equal(await row(page, 'topics', 'seeded').getByTestId('topic-records').textContent(), '1');
      await row(page, 'topics', 'seeded').getByTestId('topic-link').click();
      await page.locator('[data-testid="page-topics"][data-loaded="true"]').waitFor();
      assert.equal(await page.locator('#view h1').textContent(), 'Topic seeded');
      assert.equal(await page.getByTestId('partitions-row').count(), 2);
      assert.equal(await row(page, 'partitions', '0').getByTestId('partition-high-watermark').textContent(), '1');
      await row(page, 'config', 'retention.ms').waitFor();

      // Groups, then one group
      await navigate(page, 'groups');
      await row(page, 'groups', 'seeded-group').waitFor();
      assert.equal(await row(page, 'groups', 'seeded-group').getByTestId('group-lag').textContent(), '1');
      await row(page, 'groups', 'seeded-group').getByTestId('group-link').click();
      await page.locator('[data-testid="page-groups"][data-loaded="true"]').waitFor();
      await waitForText(page.getByTestId('group-total-lag'), '1');
      assert.equal(await page.getByTestId('offsets-row').count(), 2);
      await page.getByTestId('chart-group-lag').waitFor();

      // Message browser
      await navigate(page, 'messages');
      await page.getByTestId('browse-form').waitFor();
      assert.equal(await page.locator('#view h1').textContent(), 'Message browser');

      // Exchanges, then amq.topic
      await navigate(page, 'exchanges');
      for (const name of ['amq.direct', 'amq.fanout', 'amq.headers', 'amq.topic']) {
        await row(page, 'exchanges', `//${name}`).waitFor();
      }
      assert.match(await row(page, 'exchanges', '//').textContent(), /\(AMQP default\)/);
      await row(page, 'exchanges', '//amq.topic').getByTestId('exchange-link').click();
      await page.locator('[data-testid="page-exchanges"][data-loaded="true"]').waitFor();
      assert.equal(await page.getByTestId('exchange-type').textContent(), 'topic');
      await waitForText(page.getByTestId('binding-row'), /seeded-queue/);

      // Queues, then one queue
      await navigate(page, 'queues');
      await row(page, 'queues', '//seeded-queue').waitFor();
      await row(page, 'queues', '//seeded-queue').getByTestId('queue-link').click();
      await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
      assert.equal(await page.getByTestId('queue-type').textContent(), 'classic');
      await waitForText(page.getByTestId('binding-row'), /seeded\.#/);

      // Bindings
      await navigate(page, 'bindings');
      await waitForText(page.getByTestId('bindings-row'), /amq\.topic.*seeded-queue/);

      // Connections: the admin client above is one
      await navigate(page, 'connections');
      await waitForText(page.getByTestId('connections-row').getByTestId('connection-client'), 'browser-tests');

      // An unknown route
      await page.evaluate(() => { location.hash = '#/no/such/page'; });
      await page.getByTestId('page-not-found').waitFor();
    });
  } finally {
    await admin.disconnect();
  }
});

test('a topic created in the UI is listed, grows, and is deleted after confirmation', { timeout: TEST_MS }, async () => {
  await withPage('#/topics', async ({ page, allow }) => {
    await page.getByTestId('topic-create-name').fill('ui-created');
    await page.getByTestId('topic-create-partitions').fill('3');
    await page.getByTestId('topic-create-configs').fill('retention.ms=3600000');
    await page.getByTestId('topic-create-submit').click();
    await waitForText(page.getByTestId('topic-create-result'), 'Created ui-created.');
    await page.getByTestId('topics-filter').fill('ui-cre');
    await row(page, 'topics', 'ui-created').waitFor();
    await waitForText(page.getByTestId('topics-total'), '1 item matching');
    assert.match(page.url(), /#\/topics\?filter=ui-cre$/);

    // The API's refusal reaches the user with its message.
    allow(/status 409: POST .*\/api\/topics$/);
    allow(/Failed to load resource: the server responded with a status of 409/);
    await page.getByTestId('topic-create-name').fill('ui-created');
    await page.getByTestId('topic-create-submit').click();
    await waitForText(page.getByTestId('topic-create-error'), /already exists/);

    await row(page, 'topics', 'ui-created').getByTestId('topic-link').click();
    await page.locator('[data-testid="page-topics"][data-loaded="true"]').waitFor();
    assert.equal(await page.getByTestId('partitions-row').count(), 3);
    assert.equal(await row(page, 'config', 'retention.ms').getByTestId('config-value').textContent(), '3600000');
    assert.match(await row(page, 'config', 'retention.ms').textContent(), /topic/);

    await page.getByTestId('add-partitions-count').fill('5');
    await page.getByTestId('add-partitions-submit').click();
    await waitForText(page.getByTestId('add-partitions-result'), 'The topic now has 5 partitions.');
    assert.equal(await page.getByTestId('partitions-row').count(), 5);
    assert.equal((await broker.api('GET', '/api/topics/ui-created')).partitions.length, 5);

    // Cancelling keeps the topic; confirming deletes it.
    await page.getByTestId('topic-delete').click();
    await page.getByTestId('confirm-cancel').click();
    await page.getByTestId('confirm-dialog').waitFor({ state: 'detached' });
    assert.equal((await broker.api('GET', '/api/topics?filter=ui-created')).total, 1);
    await page.getByTestId('topic-delete').click();
    await waitForText(page.getByTestId('confirm-message'), /Delete topic ui-created/);
    await confirm(page);
    await page.waitForURL(/#\/topics$/);
    await waitFor('the topic to be gone', 10_000,
      async () => (await broker.api('GET', '/api/topics?filter=ui-created')).total === 0);
  });
});

test('lists page on the server and never render more than a page', { timeout: TEST_MS }, async () => {
  const count = 130;
  for (let i = 0; i < count; i += 1) {
    await broker.api('POST', '/api/topics', { name: `bulk-${String(i).padStart(3, '0')}` });
  }
  await withPage('#/topics?filter=bulk-', async ({ page }) => {
    await waitForText(page.getByTestId('topics-page-info'), `1–50 of ${count} · page 1 of 3`);
    assert.equal(await page.getByTestId('topics-row').count(), 50);
    await page.getByTestId('topics-next').click();
    await waitForText(page.getByTestId('topics-page-info'), `51–100 of ${count} · page 2 of 3`);
    await row(page, 'topics', 'bulk-050').waitFor();
    await page.getByTestId('topics-page-size').selectOption('100');
    await waitForText(page.getByTestId('topics-page-info'), `1–100 of ${count} · page 1 of 2`);
    assert.equal(await page.getByTestId('topics-row').count(), 100);
    await page.getByTestId('topics-filter').fill('bulk-12');
    await waitForText(page.getByTestId('topics-total'), '10 items matching');
    assert.equal(await page.getByTestId('topics-row').count(), 10);
    assert.equal(await page.getByTestId('topics-pager').count(), 0, 'one page needs no pager');
  });
});

test('a page for something that does not exist says so', { timeout: TEST_MS }, async () => {
  await withPage('#/topics/no-such-topic', async ({ page, allow }) => {
    allow(/status 404: GET .*\/api\/(topics\/no-such-topic|groups\/no-such-group|queues\/%2F\/no-such-queue)$/);
    allow(/Failed to load resource: the server responded with a status of 404/);
    await waitForText(page.getByTestId('page-error'), 'topic "no-such-topic" does not exist');
    await page.evaluate(() => { location.hash = '#/groups/no-such-group'; });
    await waitForText(page.getByTestId('page-error'), 'group "no-such-group" does not exist');
    await page.evaluate(() => { location.hash = '#/queues/%2F/no-such-queue'; });
    await waitForText(page.getByTestId('page-error'), /no queue 'no-such-queue'/);
    // The missing page stops asking.
    const asked = [];
    page.on('request', (request) => asked.push(request.url()));
    await sleep(5500);
    assert.deepEqual(asked, []);
  });
});

test('kafkajs traffic moves the overview rate and its record shows in the message browser', { timeout: TEST_MS }, async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: 'ui-traffic', numPartitions: 2 }] });
  await admin.disconnect();
  const producer = kafka.producer();
  await producer.connect();
  try {
    await withPage('', async ({ page }) => {
      await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
      const rateIn = page.getByTestId('chart-kafka-records-kafka_records_in');
      await waitFor('a non-zero Kafka records-in rate on the overview', 30_000, async () => {
        await producer.send({
          topic: 'ui-traffic',
          messages: [{ partition: 1, key: 'order-1', value: 'hello from kafkajs', headers: { source: 'kafkajs' } }],
        });
        const text = (await rateIn.textContent()).trim();
        return text !== '0/s' && text !== '–';
      });
      assert.notEqual((await page.getByTestId('chart-kafka-bytes-kafka_bytes_in').textContent()).trim(), '0 B/s');
      assert.notEqual(await page.getByTestId('total-connections').textContent(), '0');

      await navigate(page, 'messages');
      await page.getByTestId('browse-topic').fill('ui-traffic');
      await page.getByTestId('browse-partition').fill('1');
      await page.getByTestId('browse-read').click();
      const first = row(page, 'message', '0');
      await first.waitFor();
      assert.equal(await first.getByTestId('message-key').textContent(), 'order-1');
      assert.equal(await first.getByTestId('message-value').textContent(), 'hello from kafkajs');
      assert.equal((await first.getByTestId('message-headers').textContent()).trim(), 'source: kafkajs');
      await waitForText(page.getByTestId('browse-summary'), /^ui-traffic partition 1: records from offset 0/);

      await page.getByTestId('browse-encoding').selectOption('hex');
      await page.getByTestId('browse-read').click();
      await waitForText(row(page, 'message', '0').getByTestId('message-key'), '6f 72 64 65 72 2d 31');

      // A record produced from the UI lands where it says, and reads back.
      await page.getByTestId('browse-encoding').selectOption('text');
      await page.getByTestId('produce-partition').selectOption('1');
      await page.getByTestId('produce-key').fill('ui-key');
      await page.getByTestId('produce-value').fill('from the ui');
      await page.getByTestId('produce-headers').fill('origin=ui');
      await page.getByTestId('produce-submit').click();
      const result = await waitForText(page.getByTestId('produce-result'), /^Produced to ui-traffic partition 1 at offset \d+\.$/);
      const offset = result.match(/offset (\d+)/)[1];
      await page.getByTestId('browse-from').selectOption('offset');
      await page.getByTestId('browse-offset').fill(offset);
      await page.getByTestId('browse-read').click();
      const produced = row(page, 'message', offset);
      await produced.waitFor();
      assert.equal(await produced.getByTestId('message-value').textContent(), 'from the ui');
      assert.equal(await produced.getByTestId('message-key').textContent(), 'ui-key');
      assert.equal((await produced.getByTestId('message-headers').textContent()).trim(), 'origin: ui');
    });
  } finally {
    await producer.disconnect();
  }
});

test('a queue declared in the UI takes a published message, shows it by peeking, and purges', { timeout: TEST_MS }, async () => {
  await withPage('#/queues', async ({ page }) => {
    await page.getByTestId('queue-declare-name').fill('ui-queue');
    await page.getByTestId('queue-declare-submit').click();
    await row(page, 'queues', '//ui-queue').waitFor();
    assert.equal((await broker.api('GET', '/api/queues/%2F/ui-queue')).durable, true);
    await page.getByTestId('queue-declared-link').click();
    await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
    assert.equal(await page.locator('#view h1').textContent(), 'Queue ui-queue');

    await page.getByTestId('publish-payload').fill('hello queue');
    await page.getByTestId('publish-headers').fill('source=ui');
    await page.getByTestId('publish-submit').click();
    await waitForText(page.getByTestId('publish-result'), 'Published: routed to 1 queue.');

    await page.getByTestId('peek-submit').click();
    await waitForText(page.getByTestId('peek-result'), '1 message at the head; nothing was consumed.');
    await waitForText(page.getByTestId('peek-messages'), /hello queue/);
    assert.equal(await page.getByTestId('peek-row').count(), 1);
    assert.equal(await page.getByTestId('peek-payload').textContent(), 'hello queue');
    assert.equal(await page.getByTestId('peek-routing-key').textContent(), 'ui-queue');
    assert.match(await page.getByTestId('peek-properties').textContent(), /headers: \{"source":"ui"\}/);
    assert.match(await page.getByTestId('peek-properties').textContent(), /delivery_mode: 2/);
    await waitForText(page.getByTestId('queue-ready'), '1', 15_000);
    // Peeking consumed nothing.
    assert.equal((await broker.api('GET', '/api/queues/%2F/ui-queue')).messages_ready, 1);

    await page.getByTestId('queue-purge').click();
    await waitForText(page.getByTestId('confirm-message'), /Remove every ready message from queue ui-queue/);
    await confirm(page);
    await waitForText(page.getByTestId('queue-ready'), '0');
    assert.equal((await broker.api('GET', '/api/queues/%2F/ui-queue')).messages_ready, 0);

    await page.getByTestId('queue-delete').click();
    await confirm(page);
    await page.waitForURL(/#\/queues$/);
    assert.equal((await broker.api('GET', '/api/queues?filter=ui-queue')).total, 0);
  });
});

test('an exchange declared and bound in the UI routes what the UI publishes to it', { timeout: TEST_MS }, async () => {
  await broker.api('PUT', '/api/queues/%2F/ui-routed', { durable: false });
  await withPage('#/exchanges', async ({ page }) => {
    await page.getByTestId('exchange-declare-name').fill('ui-exchange');
    await page.getByTestId('exchange-declare-type').selectOption('topic');
    await page.getByTestId('exchange-declare-submit').click();
    await row(page, 'exchanges', '//ui-exchange').waitFor();
    assert.equal((await broker.api('GET', '/api/exchanges/%2F/ui-exchange')).type, 'topic');

    await navigate(page, 'bindings');
    await page.getByTestId('binding-create-source').fill('ui-exchange');
    await page.getByTestId('binding-create-destination').fill('ui-routed');
    await page.getByTestId('binding-create-routing-key').fill('ui.#');
    await page.getByTestId('binding-create-submit').click();
    await waitForText(page.getByTestId('binding-create-result'), 'Bound.');
    await row(page, 'bindings', '//ui-exchange/queue/ui-routed/ui.#').waitFor();

    await page.evaluate(() => { location.hash = '#/exchanges/%2F/ui-exchange'; });
    await page.locator('[data-testid="page-exchanges"][data-loaded="true"]').waitFor();
    await waitForText(page.getByTestId('binding-row'), /ui-routed.*ui\.#/);
    await page.getByTestId('publish-routing-key').fill('ui.created');
    await page.getByTestId('publish-payload').fill('routed by topic');
    await page.getByTestId('publish-submit').click();
    await waitForText(page.getByTestId('publish-result'), 'Published: routed to 1 queue.');
    await waitFor('the message in ui-routed', 10_000,
      async () => (await broker.api('GET', '/api/queues/%2F/ui-routed')).messages_ready === 1);

    await page.getByTestId('binding-delete').click();
    await confirm(page);
    await waitForText(page.getByTestId('exchange-bindings'), /No bindings from this exchange/);
    await page.getByTestId('publish-submit').click();
    await waitForText(page.getByTestId('publish-result'), /no queue was bound/);

    await page.getByTestId('exchange-delete').click();
    await confirm(page);
    await page.waitForURL(/#\/exchanges$/);
    assert.equal((await broker.api('GET', '/api/exchanges?filter=ui-exchange')).total, 0);
  });
});

test('a consumer group page shows lag and resets offsets after confirmation', { timeout: TEST_MS }, async () => {
  await broker.api('POST', '/api/topics', { name: 'ui-lag' });
  const records = Array.from({ length: 10 }, (_, i) => ({ value: `r${i}` }));
  await broker.api('POST', '/api/topics/ui-lag/messages', { records });
  await broker.api('POST', '/api/groups/ui-lag-group/reset-offsets', { topic: 'ui-lag', to: 'earliest' });

  await withPage('#/groups/ui-lag-group', async ({ page }) => {
    await waitForText(page.getByTestId('group-total-lag'), '10');
    await waitForText(page.getByTestId('chart-group-lag-lag'), '10');
    assert.equal(await row(page, 'offsets', 'ui-lag/0').getByTestId('offset-committed').textContent(), '0');

    await page.getByTestId('reset-to').selectOption('latest');
    await page.getByTestId('reset-submit').click();
    await waitForText(page.getByTestId('confirm-message'), /ui-lag-group.*latest/);
    await confirm(page);
    await waitForText(page.getByTestId('reset-result'), 'Offsets reset.');
    await waitForText(page.getByTestId('group-total-lag'), '0');

    await page.getByTestId('reset-topic').fill('ui-lag');
    await page.getByTestId('reset-partitions').fill('0');
    await page.getByTestId('reset-to').selectOption('offset');
    await page.getByTestId('reset-offset').fill('4');
    await page.getByTestId('reset-submit').click();
    await confirm(page);
    await waitForText(row(page, 'offsets', 'ui-lag/0').getByTestId('offset-lag'), '6');

    await page.getByTestId('group-delete').click();
    await confirm(page);
    await page.waitForURL(/#\/groups$/);
    assert.equal((await broker.api('GET', '/api/groups?filter=ui-lag-group')).total, 0);
  });
});

test('a connection closes from the UI with a reason', { timeout: TEST_MS }, async () => {
  const closable = new Kafka({ clientId: 'ui-close-me', brokers: [broker.bootstrap], logLevel: logLevel.NOTHING, retry: { retries: 0 } });
  const admin = closable.admin();
  await admin.connect();
  try {
    await withPage('#/connections', async ({ page }) => {
      await page.getByTestId('connections-filter').fill('ui-close-me');
      const target = page.getByTestId('connections-row');
      await waitForText(target.getByTestId('connection-client'), 'ui-close-me');
      assert.equal(await target.count(), 1);
      const id = await target.getAttribute('data-key');
      await target.getByTestId('connection-close').click();
      await waitForText(page.getByTestId('confirm-message'), new RegExp(`Close kafka connection ${id} .*ui-close-me`));
      await confirm(page, 'maintenance from the UI');
      await waitFor('the connection to leave the list', 15_000, async () => (await target.count()) === 0);
      const left = await broker.api('GET', '/api/connections?filter=ui-close-me');
      assert.equal(left.items.filter((c) => String(c.id) === id).length, 0);
    });
  } finally {
    await admin.disconnect().catch(() => {});
  }
});

test('the login form appears after logging out, refuses a wrong password and keeps the session', { timeout: TEST_MS }, async () => {
  await withPage('', async ({ page, allow }) => {
    await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
    assert.equal(await page.getByTestId('session-user').textContent(), 'guest');
    await page.getByTestId('logout').click();
    await page.getByTestId('login-form').waitFor();

    allow(/status 401: GET .*\/api\/overview$/);
    allow(/Failed to load resource: the server responded with a status of 401/);
    await page.getByTestId('login-user').fill('guest');
    await page.getByTestId('login-password').fill('wrong');
    await page.getByTestId('login-submit').click();
    await waitForText(page.getByTestId('login-error'), /Wrong user name or password/);

    await page.getByTestId('login-password').fill('guest');
    await page.getByTestId('login-submit').click();
    await page.getByTestId('login-form').waitFor({ state: 'hidden' });
    await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
    const stored = await page.evaluate(() => sessionStorage.getItem('sluice.credentials'));
    assert.deepEqual(JSON.parse(stored), { user: 'guest', password: 'guest' });

    // A reload cancels what the page still had in flight (the overview's
    // history, say): aborted by the browser, not failed by the broker.
    allow(/request failed: GET .*\/api\/[^ ]*: net::ERR_ABORTED$/);
    await page.reload();
    await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
    assert.equal(await page.getByTestId('login-form').isVisible(), false);
    assert.equal(await page.getByTestId('session-user').textContent(), 'guest');
  });
});

test('without guest the UI asks for a login, and the login lasts as long as the tab', { timeout: TEST_MS }, async () => {
  const guarded = await startBroker({ args: ['--set', 'amqp.users=admin:s3cret'], user: 'admin:s3cret' });
  try {
    const session = await openPage(browser, `${guarded.url}/`);
    const { page } = session;
    try {
      // Guest is tried first and refused: the UI's own form, not the browser's dialog.
      session.allow(/status 401: GET .*\/api\/overview$/);
      session.allow(/Failed to load resource: the server responded with a status of 401/);
      await page.getByTestId('login-form').waitFor();
      assert.equal(await page.getByTestId('login-error').isVisible(), false, 'no error before anyone typed');
      await page.getByTestId('login-user').fill('admin');
      await page.getByTestId('login-password').fill('s3cret');
      await page.getByTestId('login-submit').click();
      await page.locator('[data-testid="page-overview"][data-loaded="true"]').waitFor();
      assert.equal(await page.getByTestId('session-user').textContent(), 'admin');
      await page.getByTestId('nav-topics').click();
      await page.getByTestId('topics-table').waitFor();
      await page.reload();
      await page.getByTestId('topics-table').waitFor();
      assert.equal(await page.getByTestId('login-form').isVisible(), false);
      await sleep(300);
      assert.deepEqual(session.problemsLeft(), []);
    } finally {
      await session.close();
    }
    // A new tab has no session: the form again.
    const fresh = await openPage(browser, `${guarded.url}/#/topics`);
    try {
      await fresh.page.getByTestId('login-form').waitFor();
    } finally {
      await fresh.close();
    }
  } finally {
    await guarded.stop();
  }
});

test('names that need escaping survive links and routes', { timeout: TEST_MS }, async () => {
  const name = 'odd/name ?#%';
  await broker.api('PUT', `/api/queues/%2F/${encodeURIComponent(name)}`, {});
  await broker.api('POST', '/api/exchanges/%2F/amq.default/publish', { routing_key: name, payload: 'escaped' });
  await withPage('#/queues?filter=odd', async ({ page }) => {
    await page.getByTestId('queue-link').filter({ hasText: name }).click();
    await page.locator('[data-testid="page-queues"][data-loaded="true"]').waitFor();
    assert.equal(await page.locator('#view h1').textContent(), `Queue ${name}`);
    await waitForText(page.getByTestId('queue-ready'), '1', 15_000);
    await page.getByTestId('peek-submit').click();
    await waitForText(page.getByTestId('peek-payload'), 'escaped');
  });
});

test('every API request from the UI carries the UI header and credentials', { timeout: TEST_MS }, async () => {
  await withPage('', async ({ page }) => {
    const seen = [];
    page.on('request', (request) => {
      if (new URL(request.url()).pathname.startsWith('/api/')) seen.push(request.headers());
    });
    await page.getByTestId('nav-topics').click();
    await page.getByTestId('topics-table').waitFor();
    await page.getByTestId('nav-queues').click();
    await page.getByTestId('queues-table').waitFor();
    assert.ok(seen.length >= 2);
    for (const headers of seen) {
      assert.equal(headers['x-sluice-client'], 'ui');
      assert.match(headers.authorization, /^Basic /);
    }
  });
});
