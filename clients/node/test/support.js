// A real nats-server and a real `herald-gateway serve` for the tests, and a raw SSE reader.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const REPO = resolve(import.meta.dirname, '../../..');
export const SECRET = 'node-test-secret-0123456789abcdef';
export const PUBLISH_KEY = 'node-test-publisher-key-0123456789';
export const KEYS = join(REPO, 'gateway/tests/fixtures/keys');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what, cond, ms = 20000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export function freePort() {
  return new Promise((resolvePort) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

const connects = (port) =>
  new Promise((r) => {
    const c = tcpConnect(port, '127.0.0.1');
    c.on('connect', () => (c.destroy(), r(true)));
    c.on('error', () => r(false));
  });

/** nats-server and a gateway in a temporary directory; `stop()` ends both. */
export async function startHerald() {
  const dir = mkdtempSync(join(tmpdir(), 'herald-node-'));
  const natsBin = process.env.HERALD_TEST_NATS_SERVER ?? join(REPO, '.venv/bin/nats-server');
  let nats;
  let natsPort;
  for (let i = 0; i < 5; i++) {
    natsPort = await freePort();
    nats = spawn(natsBin, ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', join(dir, 'js')], { stdio: 'ignore' });
    let exited = false;
    nats.on('exit', () => (exited = true));
    await waitFor('nats-server', async () => exited || (await connects(natsPort)));
    if (!exited) break;
  }
  writeFileSync(join(dir, 'jwt.secret'), SECRET);
  writeFileSync(join(dir, 'publish.keys'), `node:${PUBLISH_KEY}\n`);
  mkdirSync(join(dir, 'keys'));
  copyFileSync(join(KEYS, 'ec.pem'), join(dir, 'keys/ec.pem'));
  copyFileSync(join(KEYS, 'ed.pem'), join(dir, 'keys/ed.pem'));
  const gatewayBin = process.env.HERALD_GATEWAY_BIN ?? join(REPO, 'target/debug/herald-gateway');
  const gateway = spawn(
    gatewayBin,
    [
      'serve', '--listen', '127.0.0.1:0', '--nats-url', `nats://127.0.0.1:${natsPort}`,
      '--jwt-secret-file', join(dir, 'jwt.secret'),
      '--jwt-public-key-file', `${join(dir, 'keys/ec.pem')},${join(dir, 'keys/ed.pem')}`,
      '--publish-keys-file', join(dir, 'publish.keys'),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'info' } },
  );
  let url;
  let log = '';
  gateway.stderr.on('data', (d) => {
    log += d;
    url ??= /listening on (http:\/\/[0-9.]+:\d+)/.exec(log)?.[1];
  });
  await waitFor('the gateway to listen', () => Boolean(url));
  await waitFor('the gateway to be ready', async () => (await fetch(`${url}/readyz`).catch(() => null))?.status === 200);
  return {
    url,
    natsUrl: `nats://127.0.0.1:${natsPort}`,
    stop() {
      gateway.kill('SIGKILL');
      nats.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An SSE stream read with fetch: `status`, and `next()` for each event (`event`, `id`, `data`). */
export async function openStream(url, token, channels = []) {
  const query = channels.length ? `?channels=${channels.join(',')}` : '';
  const controller = new AbortController();
  const response = await fetch(`${url}/events${query}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: controller.signal,
  });
  if (response.status !== 200) return { status: response.status, close() {} };
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  const next = async () => {
    for (;;) {
      const end = buffer.indexOf('\n\n');
      if (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = { event: 'message', id: null, data: [] };
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) event.event = line.slice(7);
          else if (line.startsWith('id: ')) event.id = line.slice(4);
          else if (line.startsWith('data: ')) event.data.push(line.slice(6));
        }
        if (event.data.length) {
          const envelope = JSON.parse(event.data.join('\n'));
          return { event: event.event, id: event.id, data: envelope?.data ?? envelope };
        }
        continue;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error('the stream ended');
      buffer += value;
    }
  };
  const until = async (type) => {
    const seen = [];
    for (let e = await next(); e.event !== type; e = await next()) seen.push(e);
    return seen;
  };
  return { status: 200, next, until, close: () => controller.abort() };
}
