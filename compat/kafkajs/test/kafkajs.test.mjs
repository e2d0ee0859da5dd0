// kafkajs 2.2.4 against a real broker: admin, keyed produce with every
// acks setting, a consumer group of two sharing a topic, committed offsets.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';

import { startBroker } from '../../common/broker.mjs';

let broker;
let kafka;

before(async () => {
  broker = await startBroker();
  kafka = new Kafka({ clientId: 'compat', brokers: [broker.bootstrap], logLevel: logLevel.NOTHING });
});

after(async () => {
  await broker?.stop();
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what, deadlineMs, check) {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    if (await check()) return;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('admin creates, lists, describes and deletes topics', async () => {
  const admin = kafka.admin();
  await admin.connect();
  try {
    assert.equal(await admin.createTopics({ topics: [{ topic: 'js-admin', numPartitions: 3 }] }), true);
    assert.equal(await admin.createTopics({ topics: [{ topic: 'js-admin', numPartitions: 3 }] }), false,
      'an existing topic is not created again');
    assert.ok((await admin.listTopics()).includes('js-admin'));
    const metadata = await admin.fetchTopicMetadata({ topics: ['js-admin'] });
    assert.equal(metadata.topics[0].partitions.length, 3);
    await admin.createPartitions({ topicPartitions: [{ topic: 'js-admin', count: 5 }] });
    const grown = await admin.fetchTopicMetadata({ topics: ['js-admin'] });
    assert.equal(grown.topics[0].partitions.length, 5);
    await admin.deleteTopics({ topics: ['js-admin'] });
    assert.ok(!(await admin.listTopics()).includes('js-admin'));
  } finally {
    await admin.disconnect();
  }
});

test('keyed messages keep their order per partition for every acks setting', async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: 'js-order', numPartitions: 3 }] });
  await admin.disconnect();

  const producer = kafka.producer();
  await producer.connect();
  const sent = [];
  for (const acks of [-1, 1, 0]) {
    const messages = [];
    for (let i = 0; i < 30; i += 1) {
      const message = { key: `k${i % 5}`, value: `${acks}:${i}` };
      messages.push(message);
      sent.push(message);
    }
    await producer.send({ topic: 'js-order', acks, messages });
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: 'js-order-reader' });
  await consumer.connect();
  await consumer.subscribe({ topic: 'js-order', fromBeginning: true });
  const received = [];
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      received.push({ partition, key: message.key.toString(), value: message.value.toString() });
    },
  });
  await waitFor('all 90 messages', 30_000, () => received.length >= sent.length);
  await consumer.disconnect();

  assert.equal(received.length, sent.length, 'each message once');
  for (let k = 0; k < 5; k += 1) {
    const key = `k${k}`;
    const expected = sent.filter((m) => m.key === key).map((m) => m.value);
    const got = received.filter((m) => m.key === key);
    assert.deepEqual(got.map((m) => m.value), expected, `order of ${key}`);
    assert.equal(new Set(got.map((m) => m.partition)).size, 1, `${key} stays on one partition`);
  }
});

test('a group of two shares the partitions and commits what it read', async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: 'js-group', numPartitions: 4 }] });

  const producer = kafka.producer();
  await producer.connect();
  await producer.send({
    topic: 'js-group',
    messages: Array.from({ length: 200 }, (_, i) => ({ key: `${i}`, value: `${i}` })),
  });
  await producer.disconnect();

  const seen = new Map();
  const members = [0, 1].map(() => kafka.consumer({ groupId: 'js-pair', sessionTimeout: 10_000, heartbeatInterval: 500 }));
  const partitionsOf = [new Set(), new Set()];
  for (const [index, consumer] of members.entries()) {
    await consumer.connect();
    await consumer.subscribe({ topic: 'js-group', fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        partitionsOf[index].add(partition);
        const value = message.value.toString();
        seen.set(value, (seen.get(value) ?? 0) + 1);
      },
    });
  }
  await waitFor('200 messages', 40_000, () => seen.size >= 200);
  await sleep(1_000);
  const described = await admin.describeGroups(['js-pair']);
  for (const consumer of members) await consumer.disconnect();

  assert.equal(seen.size, 200, 'every message read');
  const group = described.groups[0];
  assert.equal(group.members.length, 2, 'two members while running');
  const offsets = await admin.fetchOffsets({ groupId: 'js-pair', topics: ['js-group'] });
  const committed = offsets[0].partitions.reduce((sum, p) => sum + Number(p.offset), 0);
  assert.equal(committed, 200, 'committed offsets cover everything read');
  await admin.disconnect();
});

test('a transaction commits together, an aborted one stays unseen, offsets commit with it', async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: 'js-txn-in' }, { topic: 'js-txn-out' }] });
  await admin.disconnect();

  const producer = kafka.producer({ transactionalId: 'js-txn', maxInFlightRequests: 1, idempotent: true });
  await producer.connect();
  const aborted = await producer.transaction();
  await aborted.send({ topic: 'js-txn-out', messages: [{ value: 'aborted-0' }, { value: 'aborted-1' }] });
  await aborted.abort();
  const committed = await producer.transaction();
  await committed.send({ topic: 'js-txn-out', messages: [{ value: 'committed-0' }, { value: 'committed-1' }] });
  await committed.sendOffsets({
    consumerGroupId: 'js-txn-group',
    topics: [{ topic: 'js-txn-in', partitions: [{ partition: 0, offset: '7' }] }],
  });
  await committed.commit();
  await producer.disconnect();

  // kafkajs reads read_committed by default: it drops the aborted records
  // by the aborted-transactions list and skips the markers.
  const read = async (isolationLevel, count) => {
    const values = [];
    const consumer = kafka.consumer({ groupId: `js-txn-read-${isolationLevel}`, readUncommitted: isolationLevel === 0 });
    await consumer.connect();
    await consumer.subscribe({ topic: 'js-txn-out', fromBeginning: true });
    await consumer.run({ eachMessage: async ({ message }) => { values.push(message.value.toString()); } });
    await waitFor(`${count} records`, 30_000, () => values.length >= count);
    await sleep(1_000);
    await consumer.disconnect();
    return values;
  };
  assert.deepEqual(await read(1, 2), ['committed-0', 'committed-1']);
  assert.deepEqual(await read(0, 4), ['aborted-0', 'aborted-1', 'committed-0', 'committed-1']);

  const offsetsAdmin = kafka.admin();
  await offsetsAdmin.connect();
  const offsets = await offsetsAdmin.fetchOffsets({ groupId: 'js-txn-group', topics: ['js-txn-in'] });
  await offsetsAdmin.disconnect();
  assert.equal(offsets[0].partitions[0].offset, '7', 'the offsets sent in the transaction are committed');
});
