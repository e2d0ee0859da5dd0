// MQTT and STOMP over WebSocket from a real browser page: MQTT.js and
// @stomp/stompjs (their browser bundles, loaded into a page of the
// broker's own origin) connect to /ws/mqtt and /ws/stomp on the HTTP
// listener, subscribe, and get what the other publishes; the broker routes
// between them through amq.topic.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { TEST_MS, brokerAndBrowser, withPage } from '../lib/ui.mjs';

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
