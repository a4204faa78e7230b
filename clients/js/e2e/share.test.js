// One connection for every tab of an origin and user: tabs in one headless Chromium, against a
// production-mode gateway (NATS, JWT auth, CORS). The leader tab holds the stream for the union
// of the tabs' channels; each tab's handlers see exactly the events of its own channels and user,
// once, in order, across a change of channels and the leader tab closing.
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Scope,
  launchBrowser,
  openRecorder,
  publish,
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

before(async () => {
  auth = await serveAuth(scope);
  // The app's backend signs a token for the user its page asks for (`/token?user=…`).
  site = await startSite(scope, {
    token: (query) =>
      signToken(auth.secret, {
        sub: query.get('user') ?? 'nobody',
        channels: ['room:*'],
        exp: Math.floor(Date.now() / 1000) + 600,
      }),
  });
  const nats = await startNats(scope);
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

// A failed test leaves no tab behind to hold connections for the next.
const opened = new Set();
afterEach(async () => {
  for (const page of opened) await page.close().catch(() => {});
  opened.clear();
});

/** A tab of `user` on `channels`; `streams` counts the /events requests it makes itself. */
async function openTab(context, user, channels) {
  const { page, streams } = await openRecorder(context, site.url, { url: gw.url, channels, token: `user=${user}` });
  page.streams = streams;
  opened.add(page);
  return page;
}

const look = (page) =>
  page.evaluate(() => ({
    role: window.client.role,
    state: window.client.state,
    channels: window.client.connection?.channels ?? null,
    events: window.rec.events,
    any: window.rec.any,
    errors: window.rec.errors,
  }));

/** Waits until every tab reads an open stream carrying exactly `union`, and the gateway holds `count` connections. */
async function settled(pages, union, count) {
  const want = [...union].sort().join(',');
  await waitFor(`every tab open on ${want}`, async () => {
    for (const page of pages) {
      const s = await look(page);
      if (s.state !== 'open' || s.channels === null || [...s.channels].sort().join(',') !== want) return false;
    }
    return true;
  });
  await waitFor(`${count} connection(s) on the gateway`, async () => (await stats(gw.url)).connections === count);
}

async function leaderOf(pages) {
  const roles = [];
  for (const page of pages) roles.push((await look(page)).role);
  assert.equal(roles.filter((r) => r === 'leader').length, 1, `one leader: ${roles}`);
  assert.equal(roles.filter((r) => r === 'follower').length, pages.length - 1, `the rest follow: ${roles}`);
  return pages[roles.indexOf('leader')];
}

/** Publishes one event for `user` (when nothing else is named) and returns its id. */
async function publishOne(body) {
  const [id] = await publish(gw.url, body, auth.key);
  return id;
}

/** Publishes a marker to `user` and waits until each page has it: nothing else is in flight. */
async function drained(pages, user) {
  const marker = await publishOne({ type: 'marker', data: 0, users: [user] });
  for (const page of pages) {
    await page.waitForFunction((m) => window.rec.events.some((e) => e.id === m), marker, { timeout: 15000 });
  }
  return marker;
}

const ids = (events) => events.filter((e) => e.type !== 'marker').map((e) => e.id);

test('three tabs of one user hold one connection; each sees its own channels and user, once, in order', { timeout: 60000 }, async () => {
  const tabs = [
    await openTab(browser, 'ana', ['room:a']),
    await openTab(browser, 'ana', ['room:a', 'room:b']),
    await openTab(browser, 'ana', ['room:c']),
  ];
  await settled(tabs, ['room:a', 'room:b', 'room:c'], 1);
  await leaderOf(tabs);

  const user = await publishOne({ type: 'note', data: 1, users: ['ana'] });
  const a = await publishOne({ type: 'msg', data: 'a', channels: ['room:a'] });
  const b = await publishOne({ type: 'msg', data: 'b', channels: ['room:b'] });
  const c = await publishOne({ type: 'msg', data: 'c', channels: ['room:c'] });
  await publishOne({ type: 'msg', data: 'd', channels: ['room:d'] }); // nobody's
  await publishOne({ type: 'note', data: 2, users: ['ben'] }); // another user's
  const all = await publishOne({ type: 'news', data: 3, broadcast: true });
  await drained(tabs, 'ana');

  const expected = [
    [user, a, all],
    [user, a, b, all],
    [user, c, all],
  ];
  for (const [i, page] of tabs.entries()) {
    const s = await look(page);
    assert.deepEqual(ids(s.events), expected[i], `tab ${i + 1} (${s.role})`);
    assert.deepEqual(ids(s.any), expected[i], `tab ${i + 1} (${s.role}): on('*') sees only its own channels`);
    assert.deepEqual(s.errors, []);
    if (s.role === 'follower') assert.deepEqual(page.streams, [], `follower tab ${i + 1} opened no stream`);
  }
  assert.equal((await stats(gw.url)).connections, 1);
  for (const page of tabs) await page.close();
  await waitFor('the gateway to drop the closed tabs', async () => (await stats(gw.url)).connections === 0);
});

test('the leader tab closes under 20 events/s: another tab takes over within 5 s, every event once', { timeout: 90000 }, async (t) => {
  const tabs = [
    await openTab(browser, 'bo', ['room:a']),
    await openTab(browser, 'bo', ['room:a', 'room:b']),
    await openTab(browser, 'bo', ['room:b']),
  ];
  await settled(tabs, ['room:a', 'room:b'], 1);
  const leader = await leaderOf(tabs);
  const rest = tabs.filter((p) => p !== leader);

  const published = []; // { id, to: 'user' | 'room:a' | 'room:b' }
  const targets = [
    ['user', { users: ['bo'] }],
    ['room:a', { channels: ['room:a'] }],
    ['room:b', { channels: ['room:b'] }],
  ];
  let stop = false;
  let n = 0;
  const publisher = (async () => {
    while (!stop) {
      const [to, target] = targets[n % 3];
      published.push({ id: await publishOne({ type: 'tick', data: n, ...target }), to });
      n += 1;
      // Pacing the publisher (not synchronisation): 20 events a second.
      await new Promise((r) => setTimeout(r, 50));
    }
  })();

  try {
    await waitFor('a second of events', () => published.length >= 20);
    const closedAt = Date.now();
    const firstAfter = published.length;
    await leader.close();
    // Every remaining tab gets an event published after the leader went.
    await waitFor(
      'the remaining tabs to receive events again',
      async () => {
        if (published.length <= firstAfter) return false;
        for (const page of rest) {
          const got = new Set(ids((await look(page)).events));
          if (!published.slice(firstAfter).some((p) => got.has(p.id))) return false;
        }
        return true;
      },
      { timeout: 10000 },
    );
    const handover = Date.now() - closedAt;
    t.diagnostic(`events again ${handover} ms after the leader tab closed`);
    assert.ok(handover < 5000, `takeover took ${handover} ms`);
    await waitFor('two more seconds of events', () => published.length >= firstAfter + 40);
  } finally {
    stop = true;
    await publisher;
  }
  await drained(rest, 'bo');

  await leaderOf(rest);
  const wants = [
    ['user', 'room:a'],
    ['user', 'room:a', 'room:b'],
    ['user', 'room:b'],
  ];
  for (const page of rest) {
    const i = tabs.indexOf(page);
    const s = await look(page);
    const expected = published.filter((p) => wants[i].includes(p.to)).map((p) => p.id);
    const got = ids(s.events);
    assert.equal(new Set(got).size, got.length, `tab ${i + 1}: no event twice`);
    assert.deepEqual(got, expected, `tab ${i + 1}: every event of its channels and user, once, in order`);
  }
  assert.equal((await stats(gw.url)).connections, 1);
  for (const page of rest) await page.close();
  await waitFor('the gateway to drop the closed tabs', async () => (await stats(gw.url)).connections === 0);
});

test('a follower subscribes to a new channel: the leader reopens with the union, nothing lost or repeated', { timeout: 60000 }, async () => {
  const first = await openTab(browser, 'cy', ['room:a']);
  await settled([first], ['room:a'], 1);
  const second = await openTab(browser, 'cy', ['room:b']);
  await settled([first, second], ['room:a', 'room:b'], 1);
  assert.equal(await leaderOf([first, second]), first);

  const published = []; // { id, to }
  const send = async (to) => {
    const target = to === 'user' ? { users: ['cy'] } : { channels: [to] };
    published.push({ id: await publishOne({ type: 'tick', data: published.length, ...target }), to });
  };
  for (let i = 0; i < 5; i++) for (const to of ['user', 'room:a', 'room:b', 'room:c']) await send(to);
  await second.evaluate(() => window.heraldE2E.subscribe('room:c'));
  const subscribedAt = published.length;
  // Events keep coming while the leader reopens.
  let reopenedAt = null;
  await waitFor('the leader to reopen with room:c', async () => {
    for (const to of ['user', 'room:a', 'room:b', 'room:c']) await send(to);
    const s = await look(first);
    if (s.channels?.includes('room:c') && s.state === 'open') reopenedAt = published.length;
    return reopenedAt !== null;
  });
  for (let i = 0; i < 5; i++) for (const to of ['user', 'room:a', 'room:b', 'room:c']) await send(to);
  await settled([first, second], ['room:a', 'room:b', 'room:c'], 1);
  await drained([first, second], 'cy');

  const only = (tos) => published.filter((p) => tos.includes(p.to)).map((p) => p.id);
  const one = ids((await look(first)).events);
  assert.deepEqual(one, only(['user', 'room:a']), 'the leader tab: its channel and user, once each, in order');

  const two = ids((await look(second)).events);
  assert.equal(new Set(two).size, two.length, 'no event twice');
  const oldChannels = two.filter((id) => !only(['room:c']).includes(id));
  assert.deepEqual(oldChannels, only(['user', 'room:b']), 'the follower: nothing of room:b or the user lost or repeated');
  const c = two.filter((id) => only(['room:c']).includes(id));
  const cAfterReopen = published.slice(reopenedAt).filter((p) => p.to === 'room:c').map((p) => p.id);
  const cBeforeSubscribe = published.slice(0, subscribedAt).filter((p) => p.to === 'room:c').map((p) => p.id);
  for (const id of cAfterReopen) assert.ok(c.includes(id), `room:c event ${id} after the reopen arrived`);
  for (const id of cBeforeSubscribe) assert.ok(!c.includes(id), `room:c event ${id} from before the subscription did not`);
  assert.deepEqual(c, [...c].sort((x, y) => published.findIndex((p) => p.id === x) - published.findIndex((p) => p.id === y)), 'room:c in order');
  for (const page of [first, second]) await page.close();
  await waitFor('the gateway to drop the closed tabs', async () => (await stats(gw.url)).connections === 0);
});

test('a union the gateway refuses: every tab streams on its own, only the tab that asked for too much is refused', { timeout: 60000 }, async () => {
  const first = await openTab(browser, 'fay', ['room:a']);
  await settled([first], ['room:a'], 1);
  const second = await openTab(browser, 'fay', ['room:b']);
  await settled([first, second], ['room:a', 'room:b'], 1);

  const published = [];
  const send = async (to) => {
    const target = to === 'user' ? { users: ['fay'] } : { channels: [to] };
    published.push({ id: await publishOne({ type: 'tick', data: published.length, ...target }), to });
  };
  for (const to of ['user', 'room:a', 'room:b']) await send(to);
  // The token allows room:* only: the union with vault:1 is refused (403 channel_not_allowed).
  await second.evaluate(() => window.heraldE2E.subscribe('vault:1'));
  await second.waitForFunction(() => window.rec.errors.some((e) => e.fatal), null, { timeout: 15000 });
  for (const to of ['user', 'room:a', 'room:b']) await send(to);
  await waitFor('the first tab open on its own', async () => {
    const s = await look(first);
    return s.role === 'solo' && s.state === 'open' && s.channels?.join(',') === 'room:a';
  });
  for (const to of ['user', 'room:a', 'room:b']) await send(to);
  await drained([first], 'fay');

  const one = await look(first);
  assert.deepEqual(ids(one.events), published.filter((p) => p.to !== 'room:b').map((p) => p.id), 'the first tab lost nothing');
  assert.deepEqual(one.errors, [], 'the first tab was not refused');
  const two = await look(second);
  assert.equal(two.role, 'solo');
  assert.equal(two.state, 'closed');
  assert.deepEqual(two.errors.map((e) => [e.status, e.error, e.fatal]), [[403, 'channel_not_allowed', true]]);
  assert.equal((await stats(gw.url)).connections, 1);
});

test('different users never share: two browsers, and two users in one browser, each on their own connection', { timeout: 60000 }, async () => {
  const other = await launchBrowser(scope);
  const dee = await openTab(browser, 'dee', ['room:shared']);
  const eli = await openTab(other, 'eli', ['room:shared']);
  await settled([dee, eli], ['room:shared'], 2);
  // A tab of eli in dee's browser: same origin, another user, so its own connection.
  const eli2 = await openTab(browser, 'eli', ['room:shared']);
  await settled([dee, eli, eli2], ['room:shared'], 3);
  for (const page of [dee, eli, eli2]) assert.equal((await look(page)).role, 'leader');

  const toDee = await publishOne({ type: 'note', data: 'dee', users: ['dee'] });
  const toEli = await publishOne({ type: 'note', data: 'eli', users: ['eli'] });
  const shared = await publishOne({ type: 'msg', data: 'both', channels: ['room:shared'] });
  const [markDee, markEli] = [await drained([dee], 'dee'), await drained([eli, eli2], 'eli')];
  assert.deepEqual((await look(dee)).events.map((e) => e.id), [toDee, shared, markDee]);
  for (const page of [eli, eli2]) assert.deepEqual((await look(page)).events.map((e) => e.id), [toEli, shared, markEli]);
  for (const page of [dee, eli, eli2]) await page.close();
  await waitFor('the gateway to drop the closed tabs', async () => (await stats(gw.url)).connections === 0);
});
