// Sharing one stream between tabs, with two clients in one process: an in-memory Web Locks API
// and BroadcastChannel stand for the browser's (the real ones are exercised in Chromium by
// e2e/share.test.js). Each client has its own fake fetch and clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { createClient } from '../src/client.js';
import { ShareGroup, digest, tokenIdentity } from '../src/share.js';
import { FakeClock, createFakeFetch, connectedFrame, eventFrame, nextEvent, nextState } from './helpers.js';

/** The Web Locks API, exclusive mode: one holder per name, the rest queued in order. */
class FakeLocks {
  #held = new Set();
  #queues = new Map();

  request(name, options, callback) {
    return new Promise((resolve, reject) => {
      const entry = {
        run: async () => {
          this.#held.add(name);
          try {
            resolve(await callback({ name }));
          } catch (err) {
            reject(err);
          } finally {
            this.#held.delete(name);
            this.#queues.get(name)?.shift()?.run();
          }
        },
      };
      const queue = this.#queues.get(name) ?? [];
      this.#queues.set(name, queue);
      if (!this.#held.has(name) && queue.length === 0) {
        entry.run();
        return;
      }
      queue.push(entry);
      options?.signal?.addEventListener('abort', () => {
        const i = queue.indexOf(entry);
        if (i < 0) return;
        queue.splice(i, 1);
        reject(new DOMException('aborted', 'AbortError'));
      });
    });
  }

  query() {
    return Promise.resolve({ held: [...this.#held].map((name) => ({ name })) });
  }
}

/**
 * BroadcastChannel in one process: messages reach the other open channels of the name, in order.
 * `frozen` channels (a tab that stopped running) neither send nor hear anything.
 */
function fakeBroadcastChannel() {
  const open = new Map();
  return class {
    static created = [];

    constructor(name) {
      this.name = name;
      this.onmessage = null;
      this.frozen = false;
      if (!open.has(name)) open.set(name, new Set());
      open.get(name).add(this);
      this.constructor.created.push(this);
    }

    postMessage(data) {
      if (this.frozen) return;
      for (const other of open.get(this.name) ?? []) {
        if (other === this) continue;
        const copy = structuredClone(data);
        queueMicrotask(() => other.frozen || other.onmessage?.({ data: copy }));
      }
    }

    close() {
      open.get(this.name)?.delete(this);
    }
  };
}

/** Runs every queued message and lock grant (microtasks), then returns. */
const flush = () => new Promise((resolve) => setImmediate(resolve));

function tab(env, channels, options = {}) {
  const clock = new FakeClock();
  const fetch = createFakeFetch();
  const client = createClient({ url: 'https://example.com/rt', fetch, clock, idleTimeoutMs: 0, random: () => 0.5, shareKey: 'u1', shareEnv: env, ...options });
  // What on('*') sees: the tab's own channels and user, never another tab's channels.
  const events = [];
  for (const ch of channels) client.subscribe(ch, () => {});
  client.on('*', (ev) => events.push(ev.id));
  return { clock, fetch, client, events };
}

function browserEnv() {
  return { navigator: { locks: new FakeLocks() }, BroadcastChannel: fakeBroadcastChannel() };
}

test('two tabs: the leader streams the union, each tab gets its own channels; a new leader resumes and drops what it delivered', async () => {
  const env = browserEnv();
  const a = tab(env, ['room:a']);
  await flush();
  assert.equal(a.client.role, 'leader');
  const b = tab(env, ['room:b']);
  await flush();
  assert.equal(b.client.role, 'follower');

  // The leader's first request carries both tabs' channels.
  b.clock.advance(500); // the follower's debounce: it tells the group its channels
  await flush();
  a.clock.advance(500);
  const call = await a.fetch.nextCall();
  assert.deepEqual(call.channels, ['room:a', 'room:b']);
  assert.equal(b.fetch.calls.length, 0, 'the follower opens no stream');
  const body = call.open();
  const bOpen = nextState(b.client, 'open');
  body.push(connectedFrame({ channels: ['room:a', 'room:b'] }));
  await bOpen;

  const bGot = nextEvent(b.client, 'last');
  body.push(
    eventFrame({ id: 'e-1', channel: 'room:a', data: 1 }) +
      eventFrame({ id: 'e-2', channel: 'room:b', data: 2 }) +
      eventFrame({ id: 'e-3', data: 3 }) +
      eventFrame({ id: 'e-4', type: 'last', data: 4 }),
  );
  await bGot;
  await flush();
  assert.deepEqual(a.events, ['e-1', 'e-3', 'e-4']);
  assert.deepEqual(b.events, ['e-2', 'e-3', 'e-4']);

  // The leader tab goes: the follower takes the lock and opens the stream for its own channels,
  // from the last id it saw.
  a.client.close();
  await flush();
  assert.equal(b.client.role, 'leader');
  b.clock.advance(500);
  const next = await b.fetch.nextCall();
  assert.deepEqual(next.channels, ['room:b']);
  assert.equal(next.headers.get('last-event-id'), 'e-4');
  const body2 = next.open();
  body2.push(connectedFrame({ channels: ['room:b'], resumed: true }));
  // A resume from an older cursor repeats what this tab delivered already: dropped.
  const marker = nextEvent(b.client, 'last');
  body2.push(eventFrame({ id: 'e-3', data: 3 }) + eventFrame({ id: 'e-5', channel: 'room:b', data: 5 }) + eventFrame({ id: 'e-6', type: 'last', data: 6 }));
  await marker;
  assert.deepEqual(b.events, ['e-2', 'e-3', 'e-4', 'e-5', 'e-6']);
  b.client.close();
});

test('a follower subscribing to a new channel makes the leader reopen with the union, from its cursor', async () => {
  const env = browserEnv();
  const a = tab(env, ['room:a']);
  await flush();
  const b = tab(env, ['room:b']);
  await flush();
  a.clock.advance(500);
  const call = await a.fetch.nextCall();
  const body = call.open();
  const opened = nextState(a.client, 'open');
  body.push(connectedFrame({ channels: ['room:a', 'room:b'] }) + eventFrame({ id: 'e-1', channel: 'room:a', data: 1 }));
  await opened;
  await flush();

  b.client.subscribe('room:c', () => {});
  b.clock.advance(500); // the follower's debounce: it tells the group
  await flush();
  a.clock.advance(500); // the leader's debounce: it reopens
  const reopened = await a.fetch.nextCall();
  assert.deepEqual(reopened.channels, ['room:a', 'room:b', 'room:c']);
  assert.equal(reopened.headers.get('last-event-id'), 'e-1');
  a.client.close();
  b.client.close();
});

test('tabs of different users, or with sharing off, do not share', async () => {
  const env = browserEnv();
  const u1 = tab(env, ['room:a']);
  const u2 = tab(env, ['room:a'], { shareKey: 'u2' });
  const solo = tab(env, ['room:a'], { share: false });
  await flush();
  assert.deepEqual([u1.client.role, u2.client.role, solo.client.role], ['leader', 'leader', 'solo']);
  for (const t of [u1, u2, solo]) t.client.close();

  // Without a shareKey, the token's issuer and subject name the user.
  const jwt = (claims) => `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;
  assert.equal(tokenIdentity(jwt({ sub: 'ana', iss: 'https://id' })), 'https://id\nana');
  assert.notEqual(tokenIdentity(jwt({ sub: 'ana' })), tokenIdentity(jwt({ sub: 'ben' })));
  assert.equal(tokenIdentity('opaque-token'), null);
  assert.equal(tokenIdentity(jwt({ name: 'no sub' })), null);
  const ana = tab(env, [], { shareKey: undefined, getToken: async () => jwt({ sub: 'ana' }) });
  const ben = tab(env, [], { shareKey: undefined, getToken: async () => jwt({ sub: 'ben' }) });
  const opaque = tab(env, [], { shareKey: undefined, getToken: async () => 'opaque' });
  await flush();
  assert.deepEqual([ana.client.role, ben.client.role, opaque.client.role], ['leader', 'leader', 'solo']);
  for (const t of [ana, ben, opaque]) t.client.close();
  assert.match(digest('x'), /^[0-9a-f]{16}$/);
  assert.notEqual(digest('https://gw\nsub\nana'), digest('https://gw\nsub\nben'));
});

test('a newcomer gets the leader\'s cursor and its own `connected`; the tabs already there get none', async () => {
  const env = browserEnv();
  const a = tab(env, ['room:a']);
  await flush();
  a.clock.advance(500);
  const call = await a.fetch.nextCall();
  const body = call.open();
  const opened = nextState(a.client, 'open');
  body.push(connectedFrame({ channels: ['room:a'] }) + eventFrame({ id: 'e-1', channel: 'room:a', data: 1 }));
  await opened;
  await flush();

  const connected = { a: 0, b: 0, c: 0 };
  a.client.on('connected', () => (connected.a += 1));
  const b = tab(env, []);
  b.client.on('connected', () => (connected.b += 1));
  await flush();
  assert.equal(b.client.state, 'open');
  assert.equal(b.client.lastEventId, 'e-1', 'the newcomer resumes from the leader\'s place if it leads');
  const c = tab(env, []);
  c.client.on('connected', () => (connected.c += 1));
  await flush();
  assert.deepEqual(connected, { a: 0, b: 1, c: 1 });
  for (const t of [a, b, c]) t.client.close();
});

test('a browser that refuses the locks (a sandboxed frame): the tab streams on its own', async () => {
  const refusing = {
    request: () => Promise.reject(new DOMException('storage is blocked', 'SecurityError')),
  };
  const t = tab({ navigator: { locks: refusing }, BroadcastChannel: fakeBroadcastChannel() }, ['room:a']);
  await flush();
  assert.equal(t.client.role, 'solo');
  const call = await t.fetch.nextCall();
  assert.deepEqual(call.channels, ['room:a']);
  t.client.close();
});

test('another user signs in on the leader tab: it leaves the group and the next tab leads', async () => {
  const env = browserEnv();
  const jwt = (sub) => `e30.${Buffer.from(JSON.stringify({ sub })).toString('base64url')}.sig`;
  let user = 'ana';
  const a = tab(env, ['room:a'], { shareKey: undefined, getToken: async () => jwt(user) });
  await flush();
  const b = tab(env, ['room:b'], { shareKey: undefined, getToken: async () => jwt('ana') });
  await flush();
  assert.deepEqual([a.client.role, b.client.role], ['leader', 'follower']);
  a.clock.advance(500);
  const first = await a.fetch.nextCall();
  first.open().push(connectedFrame());

  user = 'ben';
  a.client.reconnect();
  const own = await a.fetch.nextCall();
  assert.equal(a.client.role, 'solo');
  assert.deepEqual(own.channels, ['room:a'], 'ben\'s stream carries only his tab\'s channels');
  await flush();
  assert.equal(b.client.role, 'leader');
  b.clock.advance(500);
  const next = await b.fetch.nextCall();
  assert.deepEqual(next.channels, ['room:b']);
  a.client.close();
  b.client.close();
});

test('a member says bye when it closes or its page closes, and joins again when its page comes back from the back/forward cache', async () => {
  const page = new EventTarget();
  const pageEvent = (type, persisted) => page.dispatchEvent(Object.assign(new Event(type), { persisted }));
  const hadWindow = 'window' in globalThis;
  const previous = globalThis.window;
  globalThis.window = page;
  try {
    const env = browserEnv();
    const heard = [];
    const other = new env.BroadcastChannel(`herald:${digest('group')}`);
    other.onmessage = (e) => heard.push(e.data.kind);
    let joined = 0;
    const group = new ShareGroup({
      key: 'group',
      locks: env.navigator.locks,
      BroadcastChannel: env.BroadcastChannel,
      onMessage: () => {},
      onJoined: () => {
        joined += 1;
      },
      onLeader: () => {},
      onFailure: () => {},
    });
    group.start();
    await flush();
    assert.equal(joined, 1);

    // Kept in the back/forward cache: not leaving.
    pageEvent('pagehide', true);
    await flush();
    assert.deepEqual(heard, []);
    pageEvent('pageshow', true);
    assert.equal(joined, 2);

    pageEvent('pagehide', false);
    await flush();
    assert.deepEqual(heard, ['bye']);
    group.close();
    await flush();
    assert.deepEqual(heard, ['bye', 'bye']);

    // Closed: the page is not followed any more.
    pageEvent('pagehide', false);
    pageEvent('pageshow', true);
    await flush();
    assert.deepEqual(heard, ['bye', 'bye']);
    assert.equal(joined, 2);
    other.close();
  } finally {
    if (hadWindow) globalThis.window = previous;
    else delete globalThis.window;
  }
});

test('a `missed` reset naming an id both tabs saw reaches the app of the leader and of the follower', async () => {
  const env = browserEnv();
  const a = tab(env, ['room:a']);
  await flush();
  const b = tab(env, ['room:a']);
  await flush();
  assert.equal(b.client.role, 'follower');
  b.clock.advance(500);
  await flush();
  a.clock.advance(500);
  const call = await a.fetch.nextCall();
  const body = call.open();
  const bOpen = nextState(b.client, 'open');
  body.push(connectedFrame());
  await bOpen;
  const resets = { a: [], b: [] };
  a.client.on('reset', (e) => resets.a.push(e.data.reason));
  b.client.on('reset', (e) => resets.b.push(e.data.reason));
  const bLast = nextEvent(b.client, 'last');
  body.push(eventFrame({ id: 'e-12', channel: 'room:a', data: 12 }) + 'id: e-12\nevent: reset\ndata: {"reason":"missed"}\n\n' + 'event: last\ndata: {"channel":null,"target":"user","data":0}\n\n');
  await bLast;
  await flush();
  a.client.close();
  b.client.close();
  assert.deepEqual(resets, { a: ['missed'], b: ['missed'] });
});

/**
 * Two tabs watching for a silent leader (idleTimeoutMs 45 s): `a` leads, with its stream open
 * (`body`), `b` follows it; `leaderChannels` are the leader's BroadcastChannels.
 */
async function followingAnOpenStream() {
  const env = browserEnv();
  const a = tab(env, ['room:a'], { idleTimeoutMs: 45000 });
  await flush();
  const leaderChannels = env.BroadcastChannel.created.slice();
  const b = tab(env, ['room:b'], { idleTimeoutMs: 45000 });
  await flush();
  assert.deepEqual([a.client.role, b.client.role], ['leader', 'follower']);
  b.clock.advance(500);
  await flush();
  a.clock.advance(500);
  const body = (await a.fetch.nextCall()).open();
  const open = nextState(b.client, 'open');
  body.push(connectedFrame({ channels: ['room:a', 'room:b'] }));
  await open;
  return { a, b, body, leaderChannels };
}

test('a follower whose leader falls silent while its stream is open streams on its own; heartbeats passed on keep it following', async () => {
  // A leader tab that stops running (suspended in the background, a hung page) keeps its lock:
  // the follower said `open` for ever and got nothing, with no error and no end.
  const { a, b, body, leaderChannels } = await followingAnOpenStream();
  // The gateway's heartbeats, every 15 s, passed on: a minute and a half of following.
  for (let i = 0; i < 6; i++) {
    b.clock.advance(15000);
    body.push(': heartbeat\n\n');
    await flush();
  }
  assert.equal(b.client.role, 'follower');
  assert.equal(b.fetch.calls.length, 0);
  // Then the leader's tab stops: 45 s of nothing, the follower asks it whether it is there, and
  // with no answer within 5 s opens its own stream, from its cursor.
  for (const channel of leaderChannels) channel.frozen = true;
  b.clock.advance(45000);
  await flush();
  assert.equal(b.client.role, 'follower', 'asked, not yet answered');
  b.clock.advance(5000);
  await flush();
  assert.equal(b.client.role, 'solo');
  b.clock.advance(5000);
  const own = await b.fetch.nextCall();
  assert.equal(own.url.searchParams.get('channels'), 'room:b');
  a.client.close();
  b.client.close();
});

test('a follower that hears nothing for a while asks its leader, and one that answers keeps it', async () => {
  // A leader whose stream sends nothing for idleTimeoutMs (its heartbeats slower than that, or a
  // long event arriving slowly) is alive: it answers, and the follower stays.
  const { a, b } = await followingAnOpenStream();
  // Three minutes, a second at a time: three times 45 s of silence, each asked and answered.
  for (let i = 0; i < 180; i++) {
    b.clock.advance(1000);
    await flush();
  }
  assert.equal(b.client.role, 'follower');
  assert.equal(b.fetch.calls.length, 0);
  a.client.close();
  b.client.close();
});
