// The cluster page: on three nodes it lists the nodes (the controller
// among them) and every partition's leader, replicas and in-sync
// replicas; a partition's replicas change from the page ("Move…"), the
// preferred leaders are elected from it, and a stopped node shows as
// fenced with its partitions under-replicated. A queue declared on one
// node is listed on another with its home node, as remote; each node's
// quorum queue leaders and client connections are counted. On one node the
// page says nothing is replicated.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { freePort, startBroker } from '../../common/broker.mjs';
import { launchBrowser } from '../lib/browser.mjs';
import { TEST_MS, confirm, row, waitFor, waitForText, withPage } from '../lib/ui.mjs';

const env = { nodes: [], single: undefined, browser: undefined };

before(async () => {
  const links = [await freePort(), await freePort(), await freePort()];
  const voters = links.map((port, i) => `${i + 1}@127.0.0.1:${port}`).join(',');
  // Every node that started is kept for `after` to stop, even when
  // another failed: a broker left running keeps the test runner alive.
  const started = await Promise.allSettled(links.map((port, i) => startBroker({
    args: ['--set', `node.id=${i + 1}`, '--set', `cluster.listen=127.0.0.1:${port}`, '--set', `cluster.voters=${voters}`],
  })));
  env.nodes = started.filter((node) => node.status === 'fulfilled').map((node) => node.value);
  const failed = started.find((node) => node.status === 'rejected');
  if (failed) throw failed.reason;
  env.single = await startBroker();
  env.browser = await launchBrowser();
});

after(async () => {
  await env.browser?.close();
  await Promise.all([...env.nodes, env.single].filter(Boolean).map((node) => node.stop()));
});

test('the cluster page shows nodes and partitions, moves a partition and elects leaders', { timeout: TEST_MS }, async () => {
  const [first, , third] = env.nodes;
  await waitFor('three registered nodes and a controller', 30_000, async () => {
    const view = await first.api('GET', '/api/cluster');
    return view.nodes.length === 3 && view.controller >= 1;
  });
  await first.api('POST', '/api/topics', { name: 'replicated', partitions: 2 });
  const placed = await waitFor('the topic placed', 15_000, async () => {
    const view = await first.api('GET', '/api/cluster');
    return view.partitions.find((p) => p.topic === 'replicated' && p.partition === 0);
  });
  assert.equal(placed.replicas.length, 3);

  await withPage(env.browser, first, '#/cluster', async ({ page }) => {
    await page.getByTestId('nodes-table').waitFor();
    assert.match(await page.getByTestId('nav-cluster').getAttribute('class'), /active/);
    await waitFor('three node rows', 10_000, async () => (await page.getByTestId('node-row').count()) === 3);
    const roles = await page.getByTestId('node-role').allTextContents();
    assert.equal(roles.filter((r) => r === 'controller').length, 1, roles.join(','));
    await waitForText(page.getByTestId('cluster-under-replicated'), '0');
    const partition = row(page, 'cluster-partition', 'replicated/0');
    await waitForText(partition.getByTestId('partition-replicas'), placed.replicas.join(', '));

    // Reversed: the last replica becomes the preferred leader.
    const reversed = [...placed.replicas].reverse();
    await partition.getByTestId('partition-move').click();
    await confirm(page, reversed.join(','));
    await waitForText(partition.getByTestId('partition-replicas'), reversed.join(', '));
    await page.getByTestId('cluster-elect').click();
    await confirm(page);
    await waitForText(partition.getByTestId('partition-leader'), String(reversed[0]), 15_000);
    const view = await first.api('GET', '/api/cluster');
    const moved = view.partitions.find((p) => p.topic === 'replicated' && p.partition === 0);
    assert.deepEqual([moved.leader, moved.replicas], [reversed[0], reversed]);

    // Node 3 stops: it is fenced and its partitions lose an in-sync replica.
    await third.stop();
    await waitForText(row(page, 'node', '3').getByTestId('node-state'), 'fenced', 20_000);
    await waitForText(page.getByTestId('cluster-under-replicated'), '2', 20_000);
    await waitForText(partition.getByTestId('partition-state'), 'under-replicated');
  });
});

test('a queue declared on one node is listed on another with its home node', { timeout: TEST_MS }, async () => {
  const [first, second] = env.nodes;
  await first.api('PUT', '/api/queues/%2F/homed-on-1', { durable: true });
  await withPage(env.browser, second, '#/queues', async ({ page }) => {
    const listed = row(page, 'queues', '//homed-on-1');
    await waitForText(listed.getByTestId('queue-node'), '1 (remote)', 15_000);
  });
  await withPage(env.browser, first, '#/queues', async ({ page }) => {
    await waitForText(row(page, 'queues', '//homed-on-1').getByTestId('queue-node'), '1');
  });
  await withPage(env.browser, second, '#/cluster', async ({ page }) => {
    await waitForText(row(page, 'node', '1').getByTestId('node-queues'), '1', 15_000);
  });
});

test('the cluster page counts each node\'s quorum queue leaders and connections', { timeout: TEST_MS }, async () => {
  const [first, second] = env.nodes;
  await first.api('PUT', '/api/queues/%2F/quorum-led', { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  let leader = -1;
  for (let i = 0; i < 100 && leader < 0; i += 1) {
    leader = (await second.api('GET', '/api/queues/%2F/quorum-led')).node ?? -1;
    if (leader < 0) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.ok(leader >= 0, 'the quorum queue has a leader');
  await withPage(env.browser, second, '#/cluster', async ({ page }) => {
    await waitForText(row(page, 'node', String(leader)).getByTestId('node-quorum-leaders'), /^[1-9]/, 15_000);
    // Every live node answers with its connections; node 3, stopped by
    // the first test, cannot.
    for (const id of [1, 2]) {
      await waitForText(row(page, 'node', String(id)).getByTestId('node-connections'), /Kafka, .* AMQP/, 15_000);
    }
    await waitForText(row(page, 'node', '3').getByTestId('node-connections'), 'unknown');
  });
});

test('on one node the cluster page says nothing is replicated', { timeout: TEST_MS }, async () => {
  await withPage(env.browser, env.single, '#/cluster', async ({ page }) => {
    await waitForText(page.getByTestId('cluster-single'), /nothing is replicated/);
    assert.equal(await page.getByTestId('cluster-elect').isVisible(), false);
  });
});
