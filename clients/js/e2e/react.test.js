// The React example (examples/react), bundled with esbuild, against a dev-mode gateway:
// RealtimeProvider + useRealtimeChannel + useEventStream show live events over one connection.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { build } from 'esbuild';
import { PACKAGE_DIR, Scope, launchBrowser, newPage, publish, startGateway, startSite, stats, waitFor } from './harness.js';

const scope = new Scope();
let gw;
let site;
let browser;

before(async () => {
  const out = await scope.tempDir('herald-e2e-react-');
  const example = join(PACKAGE_DIR, 'examples', 'react');
  // `herald-client/react` resolves to this package's own sources (a package self-reference).
  await build({
    entryPoints: [join(example, 'app.js')],
    outfile: join(out, 'app.js'),
    bundle: true,
    format: 'esm',
    target: 'es2022',
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  });
  gw = await startGateway(scope, 'dev', ['--retry-ms', '300']);
  site = await startSite(scope, {
    upstreams: [gw.url],
    files: { '/react/': join(example, 'index.html'), '/react/app.js': join(out, 'app.js') },
  });
  browser = await launchBrowser(scope);
});

after(() => scope.close());

test('the React example shows channel and user events live', { timeout: 60000 }, async () => {
  const page = await newPage(browser);
  await page.goto(`${site.url}/react/?gateway=/gw/&user=carol`);
  await page.waitForFunction(() => document.getElementById('connection')?.textContent === 'open', null, { timeout: 15000 });
  assert.equal(await page.textContent('#agent-status'), 'idle');
  assert.equal(await page.textContent('#booking-status'), 'pending');

  await publish(gw.url, { type: 'agent_status', data: { status: 'running' }, channels: ['agent:7'] });
  await page.waitForFunction(() => document.getElementById('agent-status').textContent === 'running', null, { timeout: 15000 });

  await publish(gw.url, { type: 'booking_update', data: { bookingId: '42', status: 'confirmed' }, channels: ['booking:42'] });
  await page.waitForFunction(() => document.getElementById('booking-status').textContent === 'confirmed', null, { timeout: 15000 });

  // useEventStream also receives the user's own events.
  await publish(gw.url, { type: 'notification', data: { text: 'hi carol' }, users: ['carol'] });
  await page.waitForFunction(() => document.getElementById('last-event').textContent === 'last event: notification', null, {
    timeout: 15000,
  });

  // Two hooks with two channels, one provider: one connection carrying both channels.
  await waitFor('one connection on the gateway', async () => (await stats(gw.url)).connections === 1);
  const streams = site.requests.filter((r) => r.path === '/events' && r.status === 200);
  assert.equal(streams.length, 1, 'the hooks mounted together share the first request');
  assert.deepEqual(page.errors, []);
  await page.close();
});
