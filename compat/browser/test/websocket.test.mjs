// MQTT and STOMP over WebSocket from a real browser page: MQTT.js and
// @stomp/stompjs (their browser bundles, loaded into a page of the
// broker's own origin) connect to /ws/mqtt and /ws/stomp on the HTTP
// listener, subscribe, and get what the other publishes; the broker routes
// between them through amq.topic. The connections page lists both with
// their protocol version and subscriptions.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { TEST_MS, brokerAndBrowser, row, waitFor, waitForText, withPage } from '../lib/ui.mjs';

const bundle = (path) => fileURLToPath(new URL(`../node_modules/${path}`, import.meta.url));
const MQTT_JS = bundle('mqtt/dist/mqtt.min.js');
const STOMP_JS = bundle('@stomp/stompjs/bundles/stomp.umd.min.js');

const env = brokerAndBrowser();

test('a page talks MQTT and STOMP over WebSocket, each reaching the other', { timeout: TEST_MS }, async () => {
  await withPage(env.browser, env.broker, '#/', async ({ page }) => {
    await page.addScriptTag({ path: MQTT_JS });
    await page.addScriptTag({ path: STOMP_JS });
    const got = await page.evaluate(async () => {
      const base = `ws://${location.host}`;
      const deadline = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));
      const mqttClient = mqtt.connect(`${base}/ws/mqtt`, { username: 'guest', password: 'guest', protocolVersion: 5, clientId: 'browser-mqtt' });
      await Promise.race([new Promise((resolve, reject) => { mqttClient.on('connect', resolve); mqttClient.on('error', reject); }), deadline(10000, 'MQTT connect')]);
      const fromStomp = new Promise((resolve) => mqttClient.on('message', (topic, payload) => resolve({ topic, payload: payload.toString() })));
      await new Promise((resolve, reject) => mqttClient.subscribe('browser/from-stomp', { qos: 1 }, (error) => (error ? reject(error) : resolve())));

      const stomp = new StompJs.Client({ brokerURL: `${base}/ws/stomp`, connectHeaders: { login: 'guest', passcode: 'guest' }, reconnectDelay: 0 });
      const connected = new Promise((resolve, reject) => { stomp.onConnect = resolve; stomp.onStompError = (frame) => reject(new Error(frame.headers.message)); });
      stomp.activate();
      await Promise.race([connected, deadline(10000, 'STOMP connect')]);
      const fromMqtt = new Promise((resolve) => stomp.subscribe('/topic/browser.from-mqtt', (message) => {
        message.ack?.();
        resolve({ destination: message.headers.destination, body: message.body });
      }));
      // Let the subscription's binding exist before MQTT publishes.
      await new Promise((resolve) => stomp.subscribe('/topic/browser.ready', resolve, { receipt: 'ready' }) && stomp.watchForReceipt('ready', resolve));

      stomp.publish({ destination: '/topic/browser.from-stomp', body: 'hello from STOMP' });
      mqttClient.publish('browser/from-mqtt', 'hello from MQTT', { qos: 1 });
      const result = await Promise.race([Promise.all([fromStomp, fromMqtt]), deadline(15000, 'both messages')]);
      mqttClient.end();
      await stomp.deactivate();
      return result;
    });
    assert.deepEqual(got, [
      { topic: 'browser/from-stomp', payload: 'hello from STOMP' },
      { destination: '/topic/browser.from-mqtt', body: 'hello from MQTT' },
    ]);
  });
});

test('the connections page shows MQTT and STOMP connections with their versions and subscriptions', { timeout: TEST_MS }, async () => {
  const filters = ['ui/a/+', 'ui/b/#', 'ui/c', 'ui/d'];
  await withPage(env.browser, env.broker, '#/', async ({ page }) => {
    await page.addScriptTag({ path: MQTT_JS });
    await page.addScriptTag({ path: STOMP_JS });
    // The clients stay connected in the page while it moves to #/connections.
    await page.evaluate(async (topicFilters) => {
      const base = `ws://${location.host}`;
      const deadline = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));
      const mqttClient = mqtt.connect(`${base}/ws/mqtt`, { username: 'guest', password: 'guest', protocolVersion: 5, clientId: 'ui-mqtt-subs' });
      await Promise.race([new Promise((resolve, reject) => { mqttClient.on('connect', resolve); mqttClient.on('error', reject); }), deadline(10000, 'MQTT connect')]);
      await new Promise((resolve, reject) => mqttClient.subscribe(topicFilters, { qos: 1 }, (error) => (error ? reject(error) : resolve())));
      const stomp = new StompJs.Client({
        brokerURL: `${base}/ws/stomp`, connectHeaders: { login: 'guest', passcode: 'guest', 'client-id': 'ui-stomp-subs' }, reconnectDelay: 0,
      });
      const connected = new Promise((resolve, reject) => { stomp.onConnect = resolve; stomp.onStompError = (frame) => reject(new Error(frame.headers.message)); });
      stomp.activate();
      await Promise.race([connected, deadline(10000, 'STOMP connect')]);
      await Promise.race([new Promise((resolve) => {
        stomp.watchForReceipt('subscribed', resolve);
        stomp.subscribe('/queue/ui-stomp-queue', () => {}, { id: 'ui-sub', receipt: 'subscribed' });
      }), deadline(10000, 'STOMP receipt')]);
      window.keep = { mqttClient, stomp };
    }, filters);
    const listed = await waitFor('both connections in the API', 10_000, async () => {
      const { items } = await env.broker.api('GET', '/api/connections');
      const mqttRow = items.find((c) => c.client_name === 'ui-mqtt-subs' && c.subscriptions.length === filters.length);
      const stompRow = items.find((c) => c.client_name === 'ui-stomp-subs' && c.subscriptions.length === 1);
      return mqttRow && stompRow && { mqttRow, stompRow };
    });
    await page.evaluate(() => { location.hash = '#/connections'; });
    const mqttRow = row(page, 'connections', String(listed.mqttRow.id));
    await waitForText(mqttRow.getByTestId('connection-client'), 'ui-mqtt-subs');
    await waitForText(mqttRow.getByTestId('connection-version'), '5.0');
    // Three filters are shown, the fourth is counted; the tooltip has them all.
    const shown = await mqttRow.getByTestId('connection-subscription').allTextContents();
    assert.deepEqual(shown, [...filters].sort().slice(0, 3));
    await waitForText(mqttRow.getByTestId('connection-subscriptions'), /\+1 more$/);
    const tooltip = await mqttRow.getByTestId('connection-subscriptions').getAttribute('title');
    for (const filter of filters) assert.ok(tooltip.split('\n').includes(filter), `${filter} in ${tooltip}`);

    const stompRow = row(page, 'connections', String(listed.stompRow.id));
    await waitForText(stompRow.getByTestId('connection-version'), '1.2');
    assert.deepEqual(await stompRow.getByTestId('connection-subscription').allTextContents(), ['ui-sub']);
    await page.evaluate(async () => {
      window.keep.mqttClient.end();
      await window.keep.stomp.deactivate();
    });
  });
});
