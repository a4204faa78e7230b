// The dev-mode demo page (gateway/assets/dev.html, served at `/` by `herald-gateway dev`): live
// scenes driven by real publishes, at the gateway's root and behind a path prefix.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Scope, ensureArtifactsDir, launchBrowser, newPage, publish, startGateway, startSite, waitFor } from './harness.js';

const scope = new Scope();
let gw;
let browser;

before(async () => {
  gw = await startGateway(scope, 'dev', ['--retry-ms', '300']);
  browser = await launchBrowser(scope);
});

after(() => scope.close());

const text = (page, selector) => page.textContent(selector);
const waitText = (page, selector, expected) =>
  page.waitForFunction(
    ([s, e]) => document.querySelector(s)?.textContent === e,
    [selector, expected],
    { timeout: 15000 },
  );

test('the demo page shows a published booking update, and its own buttons drive every scene', { timeout: 60000 }, async () => {
  const page = await newPage(browser);
  const origins = new Set();
  page.on('request', (req) => origins.add(new URL(req.url()).origin));
  await page.goto(`${gw.url}/?user=alice`);
  await waitText(page, '#connection-state', 'open');
  assert.equal(await text(page, '#booking-id'), '#42');
  assert.equal(await text(page, '#booking-status'), 'pending');

  // A backend publishes a booking update on the card's channel.
  await publish(gw.url, {
    type: 'booking_update',
    data: { bookingId: '42', status: 'confirmed' },
    channels: ['booking:42'],
  });
  await waitText(page, '#booking-status', 'confirmed');
  assert.equal(await page.getAttribute('#booking-status', 'data-status'), 'confirmed');

  // An update for another booking on the same channel does not touch the card.
  await publish(gw.url, { type: 'booking_update', data: { bookingId: '43', status: 'cancelled' }, channels: ['booking:42'] });
  await publish(gw.url, { type: 'agent_status', data: { status: 'error' }, channels: ['agent:7'] });
  await waitText(page, '#agent-status', 'error');
  assert.equal(await text(page, '#booking-status'), 'confirmed');

  // The page's own controls publish through /v1/publish.
  await page.click('[data-agent="running"]');
  await waitText(page, '#agent-status', 'running');
  await page.fill('#notify-text', 'Your table is ready');
  await page.click('#notify-form button');
  await page.waitForFunction(() => document.querySelector('#notifications li')?.textContent.startsWith('Your table is ready'), null, {
    timeout: 15000,
  });
  await page.click('[data-booking="checked_in"]');
  await waitText(page, '#booking-status', 'checked in');

  // The free-form publisher: a broadcast notification.
  await page.selectOption('#pub-target', 'broadcast');
  await page.fill('#pub-type', 'notification');
  await page.fill('#pub-data', '{"text":"Maintenance at 22:00"}');
  await page.click('#publish-form button');
  await page.waitForFunction(() => document.querySelector('#notifications li')?.textContent.includes('Maintenance at 22:00'), null, {
    timeout: 15000,
  });
  // The event can arrive before the publish's own answer: wait for that too.
  await page.waitForFunction(
    () => /^published notification → 200 \{"ids":\["[0-9a-z]+-\d+"\]\}$/.test(document.querySelector('#publish-result').textContent),
    null,
    { timeout: 15000 },
  );
  assert.match(await text(page, '#curl'), /curl -s http:\/\/127\.0\.0\.1:\d+\/v1\/publish/);

  // A notification for someone else never shows.
  await publish(gw.url, { type: 'notification', data: { text: 'for bob' }, users: ['bob'] });
  await publish(gw.url, { type: 'notification', data: { text: 'last one' }, users: ['alice'] });
  await page.waitForFunction(() => document.querySelector('#notifications li')?.textContent.startsWith('last one'), null, {
    timeout: 15000,
  });
  assert.doesNotMatch(await text(page, '#notifications'), /for bob/);

  // Publish the screenshot's final state, then take it.
  await publish(gw.url, { type: 'booking_update', data: { bookingId: '42', status: 'confirmed' }, channels: ['booking:42'] });
  await waitText(page, '#booking-status', 'confirmed');
  const artifacts = await ensureArtifactsDir();
  await page.screenshot({ path: join(artifacts, 'demo.png'), fullPage: true, animations: 'disabled' });

  assert.deepEqual([...origins], [gw.url], 'no external resources');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('two tabs of the demo page share one connection; the second takes over when the first closes', { timeout: 60000 }, async () => {
  const first = await newPage(browser);
  await first.goto(`${gw.url}/?user=dora`);
  await waitText(first, '#connection-state', 'open');
  await waitText(first, '#connection-role', '· this tab holds the connection');
  const second = await newPage(browser);
  await second.goto(`${gw.url}/?user=dora`);
  await waitText(second, '#connection-state', 'open');
  await waitText(second, '#connection-role', '· shared with another tab');
  const connections = async () => (await (await fetch(`${gw.url}/stats`)).json()).connections;
  await waitFor('one connection for both tabs', async () => (await connections()) === 1);

  await publish(gw.url, { type: 'booking_update', data: { bookingId: '42', status: 'confirmed' }, channels: ['booking:42'] });
  for (const page of [first, second]) await waitText(page, '#booking-status', 'confirmed');

  await first.close();
  await waitText(second, '#connection-role', '· this tab holds the connection');
  await waitText(second, '#connection-state', 'open');
  await publish(gw.url, { type: 'booking_update', data: { bookingId: '42', status: 'cancelled' }, channels: ['booking:42'] });
  await waitText(second, '#booking-status', 'cancelled');
  assert.equal(await connections(), 1);
  assert.deepEqual(second.errors, []);
  await second.close();
});

test('the demo page works behind a path prefix', { timeout: 60000 }, async () => {
  // A reverse proxy serving the gateway under /gw/ (the site server strips the prefix).
  const site = await startSite(scope, { upstreams: [gw.url] });
  const page = await newPage(browser);
  await page.goto(`${site.url}/gw/?user=bob&booking=7`);
  await waitText(page, '#connection-state', 'open');
  await publish(gw.url, { type: 'booking_update', data: { bookingId: '7', status: 'cancelled' }, channels: ['booking:7'] });
  await waitText(page, '#booking-status', 'cancelled');
  await page.click('[data-agent="running"]');
  await waitText(page, '#agent-status', 'running');
  const paths = site.requests.map((r) => r.path);
  assert.ok(paths.includes('/client/herald.js') && paths.includes('/events') && paths.includes('/v1/publish'), paths.join(' '));
  assert.deepEqual(page.errors, []);
  await page.close();
});
