// The client in a real browser against a production-mode gateway (NATS, JWT auth, CORS): one
// connection for user, channel and broadcast events; token expiry refreshed without loss.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Scope,
  launchBrowser,
  openRecorder,
  publish,
  seqOf,
  serveAuth,
  signToken,
  startGateway,
  startNats,
  startSite,
  stats,
  waitFor,
} from './harness.js';

const scope = new Scope();
let gw;
let site;
let auth;
let browser;
/** What the site's /token endpoint signs; each test sets it. */
let claims = () => ({});

before(async () => {
  auth = await serveAuth(scope);
  site = await startSite(scope, { token: () => signToken(auth.secret, claims()) });
  const nats = await startNats(scope);
  // The page is on the site's origin and talks to the gateway cross-origin (CORS, with an
  // Authorization header, so with a preflight), as an app on its own domain would.
  gw = await startGateway(scope, 'serve', [
    '--nats-url', nats.url,
    ...auth.args,
    '--allowed-origins', site.url,
    '--retry-ms', '300',
    '--heartbeat-secs', '2',
  ]);
  browser = await launchBrowser(scope);
});

after(() => scope.close());

const nowSecs = () => Math.floor(Date.now() / 1000);

const openClient = (config) => openRecorder(browser, site.url, config);

const recorded = (page) => page.evaluate(() => window.rec);

test('user, channel and broadcast events arrive on one connection', { timeout: 60000 }, async () => {
  claims = () => ({ sub: 'u1', channels: ['booking:*', 'agent:*'], exp: nowSecs() + 600 });
  const { page, streams } = await openClient({ url: gw.url, channels: ['booking:42', 'agent:7'], token: true });

  await page.waitForFunction(() => window.rec.controls.some((c) => c.type === 'connected'), null, { timeout: 15000 });
  const rec0 = await recorded(page);
  const connected = rec0.controls.find((c) => c.type === 'connected').data;
  assert.equal(connected.user, 'u1');
  assert.deepEqual([...connected.channels].sort(), ['agent:7', 'booking:42']);
  assert.equal(connected.resumed, false);
  assert.deepEqual(rec0.tokenRequests, [false], 'getToken called once, for the first connection');

  const s = await stats(gw.url);
  assert.equal(s.connections, 1, `one SSE connection for two channels, the user and broadcast: ${JSON.stringify(s)}`);
  assert.equal(streams.length, 1, `the browser made one /events request: ${streams.join(' ')}`);

  const sent = [
    { type: 'notification', data: { text: 'hello u1' }, users: ['u1'] },
    { type: 'booking_update', data: { bookingId: '42', status: 'confirmed' }, channels: ['booking:42'] },
    { type: 'agent_status', data: { status: 'running' }, channels: ['agent:7'] },
    { type: 'maintenance', data: 'in 5 minutes', broadcast: true },
    // Not for this page: another user, another channel.
    { type: 'notification', data: { text: 'not yours' }, users: ['u2'] },
    { type: 'booking_update', data: { bookingId: '43', status: 'confirmed' }, channels: ['booking:43'] },
  ];
  const ids = [];
  for (const body of sent) ids.push(...(await publish(gw.url, body, auth.key)));

  await page.waitForFunction(() => window.rec.events.length >= 4, null, { timeout: 15000 });
  // Anything misrouted would arrive right behind: publish a marker and wait for it.
  const [marker] = await publish(gw.url, { type: 'marker', data: 0, users: ['u1'] }, auth.key);
  await page.waitForFunction((m) => window.rec.events.some((e) => e.id === m), marker, { timeout: 15000 });

  const rec = await recorded(page);
  const got = rec.events.filter((e) => e.type !== 'marker');
  assert.deepEqual(got, [
    { id: ids[0], type: 'notification', target: 'user', channel: null, data: { text: 'hello u1' } },
    { id: ids[1], type: 'booking_update', target: 'channel', channel: 'booking:42', data: { bookingId: '42', status: 'confirmed' } },
    { id: ids[2], type: 'agent_status', target: 'channel', channel: 'agent:7', data: { status: 'running' } },
    { id: ids[3], type: 'maintenance', target: 'broadcast', channel: null, data: 'in 5 minutes' },
  ]);
  assert.equal((await stats(gw.url)).connections, 1);
  assert.equal(streams.length, 1);
  assert.deepEqual(rec.errors, []);
  assert.deepEqual(page.errors.filter((e) => !/Failed to load resource/.test(e)), []);

  await page.close();
  await waitFor('the gateway to drop the closed page', async () => (await stats(gw.url)).connections === 0);
});

test('token_expired: the client gets a fresh token and resumes, nothing lost or repeated', { timeout: 90000 }, async (t) => {
  const TTL = 3; // seconds: the token's exp is 2 to 3 s after it is issued
  claims = () => ({ sub: 'u2', channels: ['booking:*'], exp: nowSecs() + TTL });
  const tokensBefore = site.tokenCalls;
  const { page, streams } = await openClient({ url: gw.url, channels: ['booking:7'], token: true });
  await page.waitForFunction(() => window.client.state === 'open', null, { timeout: 15000 });

  // Publish to the user and the channel, paced, until the token has expired twice and the
  // client has come back each time; then a few more.
  const ids = [];
  const deadline = Date.now() + 40000;
  let n = 0;
  let extra = 10;
  while (extra > 0) {
    const body =
      n % 2 === 0
        ? { type: 'tick', data: { n }, users: ['u2'] }
        : { type: 'tick', data: { n }, channels: ['booking:7'] };
    ids.push(...(await publish(gw.url, body, auth.key)));
    n += 1;
    const rec = await recorded(page);
    const expiries = rec.controls.filter((c) => c.type === 'token_expired').length;
    const reconnects = rec.controls.filter((c) => c.type === 'connected').length;
    if (expiries >= 2 && reconnects >= 3) extra -= 1;
    if (Date.now() > deadline) throw new Error(`no two token expiries within 40 s: ${JSON.stringify(rec.controls)}`);
    // Pacing the publisher (not synchronisation): about 25 events a second.
    await new Promise((r) => setTimeout(r, 40));
  }

  await page.waitForFunction((count) => window.rec.events.length >= count, ids.length, { timeout: 20000 });
  const rec = await recorded(page);
  const got = rec.events.map((e) => e.id);
  assert.equal(new Set(got).size, got.length, 'no event twice');
  assert.deepEqual(got, ids, 'every event once, in publish order');
  assert.deepEqual(rec.events.map((e) => e.data.n), [...Array(n).keys()]);
  for (let i = 1; i < got.length; i++) assert.ok(seqOf(got[i]) > seqOf(got[i - 1]), 'ids increase');

  const expiries = rec.controls.filter((c) => c.type === 'token_expired');
  assert.ok(expiries.length >= 2, `token_expired seen ${expiries.length} times`);
  assert.equal(rec.tokenRequests[0], false);
  assert.ok(rec.tokenRequests.filter((r) => r === true).length >= expiries.length, `getToken({refresh:true}) after each expiry: ${rec.tokenRequests}`);
  assert.equal(site.tokenCalls - tokensBefore, rec.tokenRequests.length, 'each getToken call fetched a token');
  const resumed = rec.controls.filter((c) => c.type === 'connected').slice(1);
  assert.ok(resumed.length >= 2 && resumed.every((c) => c.data.resumed === true), 'each reconnect resumed');
  assert.deepEqual(rec.errors.filter((e) => e.fatal), []);
  assert.ok(streams.length >= 3);
  t.diagnostic(`${ids.length} events across ${expiries.length} expiries; getToken calls: ${JSON.stringify(rec.tokenRequests)}`);
  await page.close();
});

test('a cursor the history cannot cover: reset, then live events, and the cursor moves on', { timeout: 60000 }, async () => {
  claims = () => ({ sub: 'u3', channels: [], exp: nowSecs() + 600 });
  // An id from another incarnation of the stream, as after NATS's stream was recreated.
  const { page } = await openClient({ url: gw.url, token: true, options: { lastEventId: 'zzzzzzzz-5' } });
  await page.waitForFunction(() => window.rec.controls.some((c) => c.type === 'reset'), null, { timeout: 15000 });
  const [id] = await publish(gw.url, { type: 'notification', data: { text: 'after reset' }, users: ['u3'] }, auth.key);
  await page.waitForFunction((i) => window.rec.events.some((e) => e.id === i), id, { timeout: 15000 });
  const rec = await recorded(page);
  assert.deepEqual(rec.controls.find((c) => c.type === 'reset').data, { reason: 'epoch_changed' });
  assert.equal(rec.controls.find((c) => c.type === 'connected').data.resumed, false, 'resumed: false, a reset follows');
  assert.equal(await page.evaluate(() => window.client.lastEventId), id, 'the cursor follows the stream again');
  await page.close();
});
