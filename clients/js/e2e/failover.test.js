// A gateway dies under a connected browser: two production gateways share one NATS behind a load
// balancer (the site's proxy); gateway A is SIGKILLed while events keep being published, and the
// client, now on B, ends with every event exactly once.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Scope,
  launchBrowser,
  newPage,
  publish,
  seqOf,
  serveAuth,
  signToken,
  startGateway,
  startNats,
  startSite,
  waitFor,
} from './harness.js';

const scope = new Scope();
let a;
let b;
let site;
let auth;
let browser;

before(async () => {
  auth = await serveAuth(scope);
  const nats = await startNats(scope);
  const args = ['--nats-url', nats.url, ...auth.args, '--retry-ms', '300', '--heartbeat-secs', '2'];
  a = await startGateway(scope, 'serve', args);
  b = await startGateway(scope, 'serve', args);
  site = await startSite(scope, {
    upstreams: [a.url, b.url],
    token: () => signToken(auth.secret, { sub: 'u1', channels: ['booking:*'], exp: Math.floor(Date.now() / 1000) + 600 }),
  });
  browser = await launchBrowser(scope);
});

after(() => scope.close());

test('a killed gateway: the client resumes on another with every event exactly once', { timeout: 90000 }, async () => {
  const page = await newPage(browser);
  await page.goto(`${site.url}/`);
  await page.waitForFunction(() => window.heraldE2E !== undefined, null, { timeout: 10000 });
  // The client only knows the load balancer's address (a path prefix on the app's origin).
  await page.evaluate(() => window.heraldE2E.start({ url: '/gw', channels: ['booking:42'], token: true }));
  await page.waitForFunction(() => window.client.state === 'open', null, { timeout: 15000 });
  assert.equal(site.requests.filter((r) => r.path === '/events').at(-1).upstream, a.url, 'first connected through A');

  // Every publish goes to B, which stays up; each names one target, so one id each.
  const published = []; // { id, n }
  let n = 0;
  const targets = [{ users: ['u1'] }, { channels: ['booking:42'] }, { broadcast: true }];
  const publishOne = async (phase) => {
    const i = n++;
    const [id] = await publish(b.url, { type: 'tick', data: { n: i, phase }, ...targets[i % 3] }, auth.key);
    published.push({ id, n: i });
  };
  const received = () => page.evaluate(() => window.rec.events.length);

  // Before: delivered live through A.
  for (let i = 0; i < 12; i++) await publishOne('before');
  await waitFor('the page to receive the first events', async () => (await received()) >= 12);

  // The switch: new connections are held at the load balancer, A is killed while a burst of
  // publishes is in flight, and more are published while the client cannot reach anyone.
  site.hold();
  const burst = Array.from({ length: 12 }, () => publishOne('during-kill'));
  await a.kill('SIGKILL');
  await Promise.all(burst);
  await waitFor('the client to try to reconnect', () => site.held.length > 0);
  assert.notEqual(await page.evaluate(() => window.client.state), 'open');
  for (let i = 0; i < 12; i++) await publishOne('while-away');

  // The client is let through; A refuses, the load balancer picks B; the client resumes there.
  site.release();
  await page.waitForFunction(
    () => window.client.state === 'open' && window.rec.controls.filter((c) => c.type === 'connected').length >= 2,
    null,
    { timeout: 20000 },
  );
  const streamsTo = site.requests.filter((r) => r.path === '/events' && r.status === 200).map((r) => r.upstream);
  assert.equal(streamsTo.at(-1), b.url, 'reconnected through B');

  // After: live again, through B.
  for (let i = 0; i < 12; i++) await publishOne('after');
  await waitFor('every event on the page', async () => (await received()) >= published.length, { timeout: 20000 });
  // Anything duplicated would be behind the last one: wait for a final marker first.
  await publishOne('marker');
  await waitFor('the marker', async () => (await received()) >= published.length, { timeout: 20000 });

  const rec = await page.evaluate(() => window.rec);
  const got = rec.events.map((e) => e.id);
  const expected = [...published].sort((x, y) => seqOf(x.id) - seqOf(y.id));
  assert.equal(new Set(got).size, got.length, 'no event twice');
  assert.deepEqual(got, expected.map((p) => p.id), 'every published event exactly once, in id order');
  assert.deepEqual(
    rec.events.map((e) => e.data.n),
    expected.map((p) => p.n),
    'each id carried its own payload',
  );
  const reconnect = rec.controls.filter((c) => c.type === 'connected')[1].data;
  assert.equal(reconnect.resumed, true, 'the second connection resumed from the last id');
  assert.deepEqual(rec.controls.filter((c) => c.type === 'reset'), [], 'no reset: the history covered the gap');
  assert.ok(a.exitSignal === 'SIGKILL');
  await page.close();
});
