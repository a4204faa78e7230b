// Presence and client events on the dev-mode demo page (gateway/assets/dev.html): two users on
// one document see each other, a shared cursor and a typing indicator, and a closed page leaves.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Scope, ensureArtifactsDir, launchBrowser, newPage, startGateway } from './harness.js';

const scope = new Scope();
let gw;
let browser;

before(async () => {
  // Short heartbeats: a closed page is noticed at the next write.
  gw = await startGateway(scope, 'dev', ['--retry-ms', '300', '--heartbeat-secs', '1']);
  browser = await launchBrowser(scope);
});

after(() => scope.close());

const WAIT = { timeout: 15000 };
const listed = (page, user) =>
  page.waitForFunction((u) => document.querySelector(`#presence-list li[data-user="${u}"]`) !== null, user, WAIT);
const users = (page) => page.$$eval('#presence-list li[data-user]', (lis) => lis.map((li) => li.dataset.user));
const CURSOR = (user) => `#cursor-pad [class*="cursor"][data-user="${user}"]`;
const cursorAt = (page, user) =>
  page.$eval(CURSOR(user), (el) => ({ left: parseFloat(el.style.left), top: parseFloat(el.style.top) }));

/** Opens the demo as `user`, recording the requests it makes to the gateway. */
async function open(user) {
  const page = await newPage(browser);
  page.requests = [];
  page.on('request', (req) => {
    const url = new URL(req.url());
    page.requests.push({ at: Date.now(), method: req.method(), path: url.pathname, origin: url.origin, user: url.searchParams.get('user') });
  });
  await page.goto(`${gw.url}/?user=${user}`);
  await page.waitForFunction(() => document.querySelector('#connection-state')?.textContent === 'open', null, WAIT);
  return page;
}

test('two users on doc:1: presence, a shared cursor, typing, and a closed page leaving', { timeout: 120000 }, async () => {
  const ana = await open('ana');
  const ben = await open('ben');
  assert.equal(await ana.textContent('#doc-id'), 'doc:1');

  // One connection per page, carrying the document with the other channels.
  const channels = await ana.evaluate(() => window.herald.connection.channels);
  assert.ok(['agent:7', 'booking:42', 'doc:1'].every((c) => channels.includes(c)), channels.join(','));
  assert.equal(ana.requests.filter((r) => r.path === '/events').length, 1);

  // Each sees both.
  await Promise.all([listed(ana, 'ana'), listed(ana, 'ben'), listed(ben, 'ana'), listed(ben, 'ben')]);
  assert.deepEqual(await users(ana), ['ana', 'ben']);
  assert.deepEqual(await users(ben), ['ana', 'ben']);
  assert.match(await ana.textContent('#presence-list li[data-user="ana"]'), /you/);

  // Ben moves the mouse over the pad: a labelled cursor shows on Ana's page.
  const pad = await ben.locator('#cursor-pad').boundingBox();
  const point = (fx, fy) => [pad.x + pad.width * fx, pad.y + pad.height * fy];
  await ben.mouse.move(...point(0.25, 0.3));
  await ana.waitForFunction((sel) => document.querySelector(sel) !== null, CURSOR('ben'), WAIT);
  await ana.waitForFunction(
    (sel) => Math.abs(parseFloat(document.querySelector(sel).style.left) - 25) < 1,
    CURSOR('ben'),
    WAIT,
  );
  const first = await cursorAt(ana, 'ben');
  assert.ok(Math.abs(first.top - 30) < 1, JSON.stringify(first));
  assert.match(await ana.textContent(CURSOR('ben')), /ben/);

  // A second move, in many small steps: the cursor follows to where the mouse stops, and the
  // page sends at most about 15 cursor events a second.
  const sentBefore = ben.requests.filter((r) => r.path === '/v1/client-events').length;
  const started = Date.now();
  await ben.mouse.move(...point(0.75, 0.6), { steps: 40 });
  await ana.waitForFunction(
    (sel) => {
      const el = document.querySelector(sel);
      return Math.abs(parseFloat(el.style.left) - 75) < 1 && Math.abs(parseFloat(el.style.top) - 60) < 1;
    },
    CURSOR('ben'),
    WAIT,
  );
  const second = await cursorAt(ana, 'ben');
  assert.notDeepEqual(second, first);
  const posts = ben.requests.filter((r) => r.path === '/v1/client-events' && r.method === 'POST');
  const sent = posts.length - sentBefore;
  const elapsed = Date.now() - started;
  assert.ok(sent >= 1 && sent <= Math.ceil(elapsed / 66) + 1, `${sent} cursor events in ${elapsed} ms`);
  assert.ok(posts.every((r) => r.user === 'ben'), 'dev mode: every client event names its user');

  // Nobody sees their own cursor.
  assert.equal(await ben.$(CURSOR('ben')), null);
  assert.equal(await ana.$(CURSOR('ana')), null);

  // Ana types: Ben's page says so; Ana's does not talk about herself.
  await ana.locator('#typing-input').pressSequentially('hello ben', { delay: 40 });
  await ben.waitForFunction(() => /ana is typing/.test(document.querySelector('#typing-indicator').textContent), null, WAIT);
  assert.equal(await ana.textContent('#typing-indicator'), '');

  const artifacts = await ensureArtifactsDir();
  await ben.screenshot({ path: join(artifacts, 'presence-ben.png'), fullPage: true, animations: 'disabled' });
  await ana.screenshot({ path: join(artifacts, 'presence-ana.png'), fullPage: true, animations: 'disabled' });

  // The indicator goes away once Ana stops typing.
  await ben.waitForFunction(() => document.querySelector('#typing-indicator').textContent === '', null, WAIT);

  for (const page of [ana, ben]) {
    assert.deepEqual(
      [...new Set(page.requests.map((r) => r.origin))],
      [gw.url],
      'no external resources',
    );
  }
  assert.deepEqual(ben.errors, []);

  // Ben closes his page: he leaves Ana's list, and his cursor goes with him.
  await ben.close();
  await ana.waitForFunction(() => document.querySelector('#presence-list li[data-user="ben"]') === null, null, { timeout: 30000 });
  assert.deepEqual(await users(ana), ['ana']);
  assert.equal(await ana.$(CURSOR('ben')), null);
  assert.deepEqual(ana.errors, []);
  await ana.close();
});

test('client events over the rate limit: the client reports 429 rate_limited with retryAfter', { timeout: 60000 }, async () => {
  const page = await open('cy');
  const outcome = await page.evaluate(async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 80 }, (_, i) => window.herald.publish('doc:1', 'burst', { i })),
    );
    const refused = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
    return {
      accepted: results.filter((r) => r.status === 'fulfilled').length,
      refused: refused.map((e) => ({ name: e.name, status: e.status, error: e.error, retryAfter: e.retryAfter })),
    };
  });
  assert.ok(outcome.accepted >= 40, `the burst allowance: ${outcome.accepted} accepted`);
  assert.ok(outcome.refused.length > 0, 'some were refused');
  for (const e of outcome.refused) {
    assert.equal(e.name, 'HeraldRequestError');
    assert.equal(e.status, 429);
    assert.equal(e.error, 'rate_limited');
    assert.ok(Number.isInteger(e.retryAfter) && e.retryAfter >= 1, JSON.stringify(e));
  }
  // Chromium reports each refused request on the console; nothing else may be there.
  assert.deepEqual(page.errors.filter((m) => !/status of 429/.test(m)), []);
  await page.close();
});
