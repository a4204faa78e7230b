// The operations dashboard in a real browser: two production gateways share one NATS; the page
// is opened on gateway A with a dashboard key, SSE clients connect to both gateways, and the page
// shows each pod's connection count change as they do. A screenshot is saved.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  Scope,
  ensureArtifactsDir,
  launchBrowser,
  newPage,
  publish,
  serveAuth,
  signToken,
  startGateway,
  startNats,
  waitFor,
} from './harness.js';

const scope = new Scope();
let a;
let b;
let auth;
let browser;

before(async () => {
  auth = await serveAuth(scope);
  const nats = await startNats(scope);
  const args = ['--nats-url', nats.url, ...auth.args, '--heartbeat-secs', '2'];
  a = await startGateway(scope, 'serve', [...args, '--pod-name', 'gateway-a', '--max-connections', '20']);
  b = await startGateway(scope, 'serve', [...args, '--pod-name', 'gateway-b', '--max-connections', '20']);
  browser = await launchBrowser(scope);
});

after(() => scope.close());

/** An open SSE stream (read by fetch) for `user` on `gatewayUrl`; `close()` ends it. */
async function openStream(gatewayUrl, user) {
  const token = signToken(auth.secret, { sub: user, channels: ['room:*'], exp: Math.floor(Date.now() / 1000) + 600 });
  const controller = new AbortController();
  const res = await fetch(`${gatewayUrl}/events?channels=room:1`, {
    headers: { authorization: `Bearer ${token}` },
    signal: controller.signal,
  });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  let text = '';
  const pump = (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        text += Buffer.from(value).toString();
      }
    } catch {
      // aborted
    }
  })();
  await waitFor(`${user}'s connected frame`, () => text.includes('event: connected'));
  return {
    received: () => text,
    close: async () => {
      controller.abort();
      await pump;
    },
  };
}

/** The connection counts the page shows, by pod. */
function shownCounts(page) {
  return page.evaluate(() =>
    Object.fromEntries(
      [...document.querySelectorAll('#pods tr[data-pod]')].map((tr) => [
        tr.dataset.pod,
        Number(tr.querySelector('[data-field="connections"]').textContent.replace(/,/g, '')),
      ]),
    ),
  );
}

test('the dashboard shows both pods and their connection counts changing', { timeout: 90000 }, async () => {
  // Without the key, or with a publisher key, the page is refused.
  assert.equal((await fetch(`${a.url}/dashboard`)).status, 401);
  assert.equal((await fetch(`${a.url}/dashboard?key=${encodeURIComponent(auth.key)}`)).status, 401);

  const page = await newPage(browser);
  await page.goto(`${a.url}/dashboard?key=${encodeURIComponent(auth.dashboardKey)}`);
  assert.equal(new URL(page.url()).search, '', 'the key is dropped from the address bar');
  await page.waitForFunction(() => document.querySelectorAll('#pods tr[data-pod]').length === 2, null, { timeout: 15000 });
  assert.deepEqual(await shownCounts(page), { 'gateway-a': 0, 'gateway-b': 0 });
  assert.equal(await page.textContent('#this-pod'), 'gateway-a');
  assert.equal(await page.textContent('#link-text'), 'live');

  // Clients connect: two to A, three to B. The page follows, pod by pod.
  const streams = [];
  streams.push(await openStream(a.url, 'ana'), await openStream(a.url, 'ben'));
  await waitFor('A at 2, B at 0 on the page', async () => {
    const c = await shownCounts(page);
    return c['gateway-a'] === 2 && c['gateway-b'] === 0;
  });
  for (const user of ['cy', 'dee', 'eve']) streams.push(await openStream(b.url, user));
  await waitFor('B at 3 on the page', async () => (await shownCounts(page))['gateway-b'] === 3);
  assert.equal((await shownCounts(page))['gateway-a'], 2);
  assert.equal(await page.textContent('[data-kpi="connections"]'), '5');
  assert.equal(await page.textContent('[data-kpi="nats"]'), 'all up');

  // Some traffic, so the delivery chart and the latency have something to show.
  for (let i = 0; i < 20; i++) {
    await publish(i % 2 ? a.url : b.url, { type: 'tick', data: { i }, channels: ['room:1'] }, auth.key);
  }
  await waitFor('every stream got the ticks', () => streams.every((s) => s.received().split('event: tick').length - 1 === 20));
  await page.waitForFunction(() => document.querySelector('[data-kpi="p99"]').textContent !== '–', null, { timeout: 15000 });

  // A client leaves A: its count drops.
  await streams.shift().close();
  await waitFor('A back to 1 on the page', async () => (await shownCounts(page))['gateway-a'] === 1, { timeoutMs: 20000 });

  // Charts are drawn: one connection line per pod.
  assert.equal(await page.locator('#chart-connections path.series').count(), 2);
  assert.deepEqual(page.errors, []);

  const artifacts = await ensureArtifactsDir();
  await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true, animations: 'disabled' });
  for (const s of streams) await s.close();
});
