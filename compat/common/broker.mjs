// Starts a real Sluice broker for the Node suites (compat/kafkajs,
// compat/browser and its screenshot script): a fresh data directory, free ports on 127.0.0.1 for Kafka, AMQP
// and HTTP, readiness by connecting to each, stop by PID (SIGTERM, then
// SIGKILL after a bound). The binary is $BROKER_BIN or target/debug/sluice.
// Variables named SLUICE_* other than SLUICE_LOG are not passed on: the
// broker reads them as configuration and rejects unknown ones.

import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const READY_MS = 20_000;
const STOP_MS = 15_000;

// Ports handed out by this process: never given twice, so one node's HTTP
// port cannot be another's cluster port while neither has bound it yet.
const handed = new Set();

// Lowest port of the kernel's ephemeral range: ports are chosen below it,
// where no outgoing connection takes them between the probe and the bind
// (as compat/common/broker.py does).
function ephemeralLow() {
  try {
    return Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
}

function bindable(port) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(0));
    probe.listen(port, '127.0.0.1', () => {
      const bound = probe.address().port;
      probe.close(() => resolve(bound));
    });
  });
}

/** A port free on 127.0.0.1 a moment ago that this process never handed out before. */
export async function freePort() {
  const low = ephemeralLow();
  for (let attempt = 0; attempt < 200; attempt += 1) {
    const wanted = low > 11000 ? 10000 + Math.floor(Math.random() * (low - 10000)) : 0;
    if (handed.has(wanted)) continue;
    const port = await bindable(wanted);
    if (port !== 0 && !handed.has(port)) {
      handed.add(port);
      return port;
    }
  }
  throw new Error('no free port on 127.0.0.1 after 200 tries');
}

function accepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
    socket.setTimeout(500, () => { socket.destroy(); resolve(false); });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts a broker with extra command-line `args` (such as `--set
 * amqp.users=...`). Resolves with its addresses, `api(method, path, body)`
 * for setting up state as `user` (guest by default), `log()` and `stop()`.
 */
export async function startBroker({ args = [], user = 'guest:guest' } = {}) {
  const binary = process.env.BROKER_BIN
    ? path.resolve(root, process.env.BROKER_BIN)
    : path.join(root, 'target', 'debug', 'sluice');
  const dir = mkdtempSync(path.join(tmpdir(), 'sluice-node-'));
  const ports = { kafka: await freePort(), amqp: await freePort(), http: await freePort() };
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('SLUICE_') || name === 'SLUICE_LOG'),
  );
  const logPath = path.join(dir, 'broker.log');
  const log = openSync(logPath, 'a');
  const child = spawn(binary, [
    '--data-dir', path.join(dir, 'data'),
    '--kafka-listen', `127.0.0.1:${ports.kafka}`,
    '--amqp-listen', `127.0.0.1:${ports.amqp}`,
    '--http-listen', `127.0.0.1:${ports.http}`,
    '--mqtt-listen', '127.0.0.1:0',
    '--stomp-listen', '127.0.0.1:0',
    // Groups form at once rather than after Kafka's 3 s wait for more members.
    '--set', 'kafka.group_initial_rebalance_delay=0s',
    ...args,
  ], { env, stdio: ['ignore', log, log] });
  const deadline = Date.now() + READY_MS;
  for (const port of Object.values(ports)) {
    while (!(await accepts(port))) {
      if (child.exitCode !== null || Date.now() > deadline) {
        const output = readFileSync(logPath, 'utf8');
        child.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
        throw new Error(`broker did not start (ports ${JSON.stringify(ports)}):\n${output}`);
      }
      await sleep(50);
    }
  }
  const url = `http://127.0.0.1:${ports.http}`;
  return {
    pid: child.pid,
    url,
    bootstrap: `127.0.0.1:${ports.kafka}`,
    amqpPort: ports.amqp,
    log: () => readFileSync(logPath, 'utf8'),

    /** Calls the admin API as `user`; resolves with the JSON answer or null. */
    async api(method, apiPath, body) {
      const response = await fetch(url + apiPath, {
        method,
        headers: {
          Authorization: `Basic ${Buffer.from(user).toString('base64')}`,
          ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
      const text = await response.text();
      if (!response.ok) throw new Error(`${method} ${apiPath}: ${response.status} ${text}`);
      return text ? JSON.parse(text) : null;
    },

    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_MS);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
