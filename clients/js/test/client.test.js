import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { createClient, eventsUrl, isValidName } from '../src/client.js';
import {
  FakeClock,
  FakeDocument,
  createFakeFetch,
  connectedFrame,
  eventFrame,
  nextEvent,
  nextState,
  recordStates,
} from './helpers.js';

const BASE = 'https://example.com/realtime';

function setup(options = {}) {
  const clock = new FakeClock();
  const fetch = createFakeFetch();
  const client = createClient({
    url: BASE,
    fetch,
    clock,
    random: () => 0.5,
    idleTimeoutMs: 0,
    ...options,
  });
  return { clock, fetch, client };
}

/** Lets the initial debounce run and answers the first request with a `connected` stream. */
async function connect({ clock, fetch, client }, frame = connectedFrame()) {
  clock.advance(50);
  const call = await fetch.nextCall();
  const body = call.open();
  const opened = nextState(client, 'open');
  body.push(frame);
  await opened;
  return { call, body };
}

/** Pushes frames followed by a marker event and waits until the client has dispatched them all. */
async function pushAndFlush(client, body, frames) {
  const marker = nextEvent(client, 'test_marker');
  body.push(frames + 'event: test_marker\ndata: {"channel":null,"target":"user","data":null}\n\n');
  await marker;
}

/** Waits for the reconnect timer, checks nothing else connects before it fires, fires it. */
async function nextReconnect(clock, fetch) {
  const timer = await clock.waitForTimer();
  const before = fetch.calls.length;
  clock.advance(timer.delay);
  const call = await fetch.nextCall();
  assert.equal(fetch.calls.length, before + 1);
  return { timer, call };
}

describe('the request', () => {
  test('one GET to <base>/events with every channel, the token and the SSE accept header', async () => {
    const tokens = [];
    const { clock, fetch, client } = setup({
      channels: ['booking:42'],
      getToken: async (ctx) => {
        tokens.push(ctx);
        return 'tok-1';
      },
    });
    client.subscribe('agent:7', () => {});
    client.subscribe('org.42.dashboard', () => {});
    assert.equal(client.state, 'connecting');
    assert.equal(fetch.calls.length, 0, 'the first request waits for the debounce window');
    clock.advance(50);
    const call = await fetch.nextCall();
    assert.equal(`${call.url.origin}${call.url.pathname}`, 'https://example.com/realtime/events');
    assert.deepEqual(call.channels, ['agent:7', 'booking:42', 'org.42.dashboard']);
    assert.equal(call.headers.get('authorization'), 'Bearer tok-1');
    assert.equal(call.headers.get('accept'), 'text/event-stream');
    assert.equal(call.headers.get('last-event-id'), null);
    assert.equal(call.init.credentials, 'same-origin');
    assert.deepEqual(tokens, [{ refresh: false }]);
    assert.equal(fetch.calls.length, 1);
    client.close();
  });

  test('without getToken: cookie credentials, no Authorization, a URL token and channels kept', async () => {
    const { clock, fetch, client } = setup({ url: 'https://example.com/rt/?token=abc&channels=x,y#frag' });
    client.subscribe('a', () => {});
    clock.advance(50);
    const call = await fetch.nextCall();
    assert.equal(call.url.pathname, '/rt/events');
    assert.equal(call.url.searchParams.get('token'), 'abc');
    assert.deepEqual(call.channels, ['a', 'x', 'y']);
    assert.equal(call.url.hash, '');
    assert.equal(call.headers.get('authorization'), null);
    assert.equal(call.init.credentials, 'include');
    client.close();
  });

  test('withCredentials overrides the default', async () => {
    const { clock, fetch, client } = setup({ getToken: () => 't', withCredentials: true });
    clock.advance(50);
    assert.equal((await fetch.nextCall()).init.credentials, 'include');
    client.close();
  });

  test('a falsy token sends no Authorization header', async () => {
    const { clock, fetch, client } = setup({ getToken: async () => null });
    clock.advance(50);
    assert.equal((await fetch.nextCall()).headers.get('authorization'), null);
    client.close();
  });

  test('a lastEventId option resumes the first connection', async () => {
    const { clock, fetch, client } = setup({ lastEventId: 'ep-9' });
    clock.advance(50);
    assert.equal((await fetch.nextCall()).headers.get('last-event-id'), 'ep-9');
    client.close();
  });

  test('eventsUrl keeps the path prefix and encodes names', () => {
    assert.equal(eventsUrl('https://h.example', []), 'https://h.example/events');
    assert.equal(eventsUrl('https://h.example/', ['a']), 'https://h.example/events?channels=a');
    assert.equal(
      eventsUrl('https://h.example/p/q//?user=bob', ['a+b', 'c:1']),
      'https://h.example/p/q/events?user=bob&channels=a%2Bb%2Cc%3A1',
    );
  });

  test('invalid channel names are refused before they can fail the connection', () => {
    const { client } = setup();
    for (const bad of ['', 'a b', 'a..b', '.a', 'a.', 'a,b', 'a*', '>', 'x'.repeat(129), 'é', 42]) {
      assert.throws(() => client.subscribe(bad, () => {}), TypeError, String(bad));
    }
    assert.throws(() => setup({ channels: ['a b'] }), TypeError);
    assert.ok(isValidName('org.42.dashboard'));
    assert.ok(isValidName('u_1-a:b@c=d+e~f'));
    assert.ok(isValidName('x'.repeat(128)));
    client.close();
  });
});

describe('events', () => {
  test('channel handlers, type handlers and "*" receive the envelope with type and id', async () => {
    const env = setup();
    const { client } = env;
    const onChannel = [];
    const onOther = [];
    const onType = [];
    const onAll = [];
    client.subscribe('booking:42', (e) => onChannel.push(e));
    client.subscribe('agent:7', (e) => onOther.push(e));
    client.on('notification', (e) => onType.push(e));
    client.on('*', (e) => onAll.push(e));
    const connected = nextEvent(client, 'connected');
    const { body } = await connect(env, connectedFrame({ channels: ['agent:7', 'booking:42'] }));
    assert.deepEqual((await connected).data, {
      connectionId: 'c-1',
      user: 'u1',
      channels: ['agent:7', 'booking:42'],
      resumed: false,
    });
    assert.equal(client.connection.connectionId, 'c-1');

    await pushAndFlush(
      client,
      body,
      eventFrame({ id: 'ep-1', type: 'booking_update', channel: 'booking:42', data: { status: 'confirmed' } }) +
        eventFrame({ type: 'notification', data: { text: 'hi' }, from: 'u2' }) +
        // A pretty-printed payload arrives as several data: lines.
        'id: ep-2\nevent: booking_update\ndata: {"channel":"booking:42","target":"channel","data":{\ndata:   "n": 2\ndata: }}\n\n',
    );

    assert.deepEqual(onChannel, [
      { type: 'booking_update', id: 'ep-1', lastEventId: 'ep-1', channel: 'booking:42', target: 'channel', data: { status: 'confirmed' } },
      { type: 'booking_update', id: 'ep-2', lastEventId: 'ep-2', channel: 'booking:42', target: 'channel', data: { n: 2 } },
    ]);
    assert.deepEqual(onOther, []);
    assert.deepEqual(onType, [
      { type: 'notification', id: null, lastEventId: 'ep-1', channel: null, target: 'user', data: { text: 'hi' }, from: 'u2' },
    ]);
    assert.deepEqual(
      onAll.map((e) => e.type),
      ['booking_update', 'notification', 'booking_update', 'test_marker'],
    );
    assert.equal(client.lastEventId, 'ep-2');
    client.close();
  });

  test('unsubscribe stops delivery; "*" never sees control frames', async () => {
    const env = setup();
    const { client } = env;
    const got = [];
    const all = [];
    const off = client.on('ping', (e) => got.push(e.data));
    client.on('*', (e) => all.push(e.type));
    const { body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ type: 'ping', data: 1 }));
    off();
    off();
    const reset = nextEvent(client, 'reset');
    await pushAndFlush(
      client,
      body,
      eventFrame({ type: 'ping', data: 2 }) + 'event: reset\ndata: {"reason":"history_expired"}\n\n',
    );
    assert.deepEqual((await reset).data, { reason: 'history_expired' });
    assert.deepEqual(got, [1]);
    assert.deepEqual(all, ['ping', 'test_marker', 'ping', 'test_marker']);
    client.close();
  });

  test('a throwing handler is reported and does not stop the others or the stream', async (t) => {
    const errors = t.mock.method(console, 'error', () => {});
    const env = setup();
    const { client } = env;
    const got = [];
    client.on('x', () => {
      throw new Error('boom');
    });
    client.on('x', (e) => got.push(e.data));
    const { body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ type: 'x', data: 1 }) + eventFrame({ type: 'x', data: 2 }));
    assert.deepEqual(got, [1, 2]);
    assert.equal(errors.mock.callCount(), 2);
    assert.equal(client.state, 'open');
    client.close();
  });

  test('comments (heartbeats) reach onComment', async () => {
    const comments = [];
    const env = setup({ onComment: (c) => comments.push(c) });
    const { body } = await connect(env);
    await pushAndFlush(env.client, body, ': heartbeat\n\n');
    assert.deepEqual(comments, ['heartbeat']);
    env.client.close();
  });
});

describe('reconnecting and resuming', () => {
  test('after the stream ends: jittered delay on the server retry, then Last-Event-ID', async () => {
    const env = setup({ random: () => 0.5 });
    const { clock, fetch, client } = env;
    const states = recordStates(client);
    const { body } = await connect(env, connectedFrame({ retry: 3000 }));
    await pushAndFlush(
      client,
      body,
      eventFrame({ id: 'ep-41', type: 'a', data: 1 }) +
        eventFrame({ id: 'ep-42', type: 'a', data: 2 }) +
        eventFrame({ type: 'typing', data: 'ephemeral, no id' }),
    );
    body.end();

    const { timer, call } = await nextReconnect(clock, fetch);
    assert.equal(timer.delay, 1500, 'random 0.5 of the first window [0, retry=3000]');
    assert.equal(call.headers.get('last-event-id'), 'ep-42');
    assert.deepEqual(states, ['connecting', 'open', 'reconnecting']);

    // The second stream's connected frame has no id: it must not move the cursor, and a new
    // retry: value becomes the base.
    const body2 = call.open();
    body2.push(connectedFrame({ retry: 8000, resumed: true }));
    await nextState(client, 'open');
    body2.error(new TypeError('network reset'));
    const again = await nextReconnect(clock, fetch);
    assert.equal(again.timer.delay, 4000, 'random 0.5 of [0, 8000]');
    assert.equal(again.call.headers.get('last-event-id'), 'ep-42');
    assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'open', 'reconnecting']);
    client.close();
    assert.deepEqual(states.at(-1), 'closed');
  });

  test('failed attempts back off exponentially up to the cap; success resets', async () => {
    const { clock, fetch, client } = setup({ random: () => 1, retryBaseMs: 1000, retryCapMs: 5000 });
    clock.advance(50);
    let call = await fetch.nextCall();
    const delays = [];
    for (let i = 0; i < 4; i++) {
      call.fail();
      const next = await nextReconnect(clock, fetch);
      delays.push(next.timer.delay);
      call = next.call;
    }
    assert.deepEqual(delays, [1000, 2000, 4000, 5000]);
    assert.equal(client.state, 'connecting', 'never connected yet');

    const body = call.open();
    body.push(connectedFrame({ retry: 2000 }));
    await nextState(client, 'open');
    body.end();
    const after = await nextReconnect(clock, fetch);
    assert.equal(after.timer.delay, 2000, 'attempt counter reset by connected; base = retry');
    client.close();
  });

  test('a 200 that ends without `connected` (capacity) waits at least its retry, growing', async () => {
    const env = setup({ random: () => 0.9 });
    const { clock, fetch, client } = env;
    const states = recordStates(client);
    clock.advance(50);
    const call = await fetch.nextCall();
    const body = call.open();
    body.push('retry: 7000\n\n');
    body.end();
    const first = await nextReconnect(clock, fetch);
    // full jitter would give 0.9 * 7000 = 6300; the server's answer is a floor.
    assert.equal(first.timer.delay, 7000);

    const body2 = first.call.open();
    body2.push('retry: 5000\n\n');
    body2.end();
    const second = await nextReconnect(clock, fetch);
    assert.equal(second.timer.delay, 9000, 'attempt 1: 0.9 of [0, 2 * 5000]');
    assert.deepEqual(states, ['connecting'], 'never open, never reconnecting: not connected yet');
    client.close();
  });

  test('a retry: after `connected` (drain) is honoured as the minimum delay', async () => {
    const env = setup({ random: () => 0 });
    const { clock, fetch, client } = env;
    const { body } = await connect(env, connectedFrame({ retry: 3000 }));
    body.push('retry: 9000\n\n');
    body.end();
    const { timer } = await nextReconnect(clock, fetch);
    assert.equal(timer.delay, 9000);
    client.close();
  });

  test('a network error while reading reconnects; an unfinished frame is dropped', async () => {
    const env = setup();
    const { clock, fetch, client } = env;
    const got = [];
    client.on('a', (e) => got.push(e.id));
    const { body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ id: 'ep-1', type: 'a', data: 1 }));
    body.push('id: ep-2\nevent: a\ndata: {"channel":null,"target":"user","data":2}\n'); // no blank line
    body.error();
    const { call } = await nextReconnect(clock, fetch);
    assert.equal(call.headers.get('last-event-id'), 'ep-1');
    assert.deepEqual(got, ['ep-1']);
    client.close();
  });

  test('no data at all for idleTimeoutMs (not even a heartbeat) reconnects', async () => {
    let onComment;
    const env = setup({ idleTimeoutMs: 45000, onComment: (c) => onComment?.(c) });
    const { clock, fetch, client } = env;
    const { call, body } = await connect(env);
    clock.advance(30000);
    const heard = new Promise((resolve) => {
      onComment = resolve;
    });
    body.push(': heartbeat\n\n');
    await heard;
    clock.advance(30000); // 60 s since connect, 30 s since the heartbeat: still alive
    assert.equal(call.cancelled || call.signal.aborted, false);
    clock.advance(15000); // 45 s of silence
    await call.aborted;
    const { call: next } = await nextReconnect(clock, fetch);
    assert.equal(next.url.pathname, '/realtime/events');
    client.close();
  });

  test('ids from the stream survive a connection whose control frames carry none', async () => {
    const env = setup();
    const { clock, fetch, client } = env;
    const { body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ id: 'ep-7', type: 'a', data: 1 }));
    body.end();
    const second = await nextReconnect(clock, fetch);
    const body2 = second.call.open();
    body2.push(connectedFrame());
    body2.push('event: reset\ndata: {"reason":"too_many"}\n\n');
    body2.end();
    const third = await nextReconnect(clock, fetch);
    assert.equal(third.call.headers.get('last-event-id'), 'ep-7');
    client.close();
  });
});

describe('channel changes', () => {
  test('several changes in the debounce window reconnect once, resuming', async () => {
    const env = setup();
    const { clock, fetch, client } = env;
    const offA = client.subscribe('a', () => {});
    const { call, body } = await connect(env);
    assert.deepEqual(call.channels, ['a']);
    await pushAndFlush(client, body, eventFrame({ id: 'ep-5', type: 'x', channel: 'a', data: 1 }));

    client.subscribe('b', () => {});
    clock.advance(20);
    client.subscribe('c', () => {});
    offA();
    clock.advance(49); // the window restarted with the last change
    assert.equal(fetch.calls.length, 1);
    assert.equal(client.state, 'open');
    clock.advance(1);
    const call2 = await fetch.nextCall();
    await call.aborted;
    assert.deepEqual(call2.channels, ['b', 'c']);
    assert.equal(call2.headers.get('last-event-id'), 'ep-5');
    assert.equal(client.state, 'reconnecting');
    clock.advance(10_000);
    assert.equal(fetch.calls.length, 2, 'exactly one reconnect');
    client.close();
  });

  test('changes that cancel out, or add a handler to a subscribed channel, do not reconnect', async () => {
    const env = setup({ channels: ['s'] });
    const { clock, fetch, client } = env;
    client.subscribe('a', () => {});
    await connect(env);
    const off = client.subscribe('b', () => {});
    off();
    const offA2 = client.subscribe('a', () => {});
    offA2();
    const offS = client.subscribe('s', () => {}); // a static channel
    offS();
    clock.advance(1000);
    assert.equal(fetch.calls.length, 1);
    assert.equal(client.state, 'open');
    client.close();
  });

  test('the debounce window is bounded when changes keep coming', async () => {
    const env = setup({ maxDebounceMs: 200 });
    const { clock, fetch, client } = env;
    await connect(env);
    for (let i = 0; i < 10; i++) {
      client.subscribe(`ch${i}`, () => {});
      clock.advance(40);
      if (fetch.calls.length > 1) break;
    }
    const call2 = await fetch.nextCall();
    assert.ok(call2.channels.length >= 5 && call2.channels.length < 10, `${call2.channels}`);
    client.close();
  });

  test('a change while a request is in flight restarts it with the new set', async () => {
    const { clock, fetch, client } = setup({ getToken: async () => 't' });
    clock.advance(50);
    const call = await fetch.nextCall();
    client.subscribe('late', () => {});
    clock.advance(50);
    const call2 = await fetch.nextCall();
    await call.aborted;
    assert.deepEqual(call2.channels, ['late']);
    client.close();
  });

  test('a change while waiting out a backoff does not connect early', async () => {
    const env = setup({ random: () => 1 });
    const { clock, fetch, client } = env;
    clock.advance(50);
    (await fetch.nextCall()).fail();
    const timer = await clock.waitForTimer();
    assert.equal(timer.delay, 1000);
    client.subscribe('x', () => {});
    clock.advance(999);
    assert.equal(fetch.calls.length, 1);
    clock.advance(1);
    const call2 = await fetch.nextCall();
    assert.deepEqual(call2.channels, ['x']);
    client.close();
  });
});

describe('tokens and refusals', () => {
  test('token_expired: getToken is asked for a fresh token before resuming', async () => {
    const asked = [];
    let n = 0;
    const env = setup({
      getToken: async (ctx) => {
        asked.push(ctx);
        n += 1;
        return `tok-${n}`;
      },
    });
    const { clock, fetch, client } = env;
    const { call, body } = await connect(env);
    assert.equal(call.headers.get('authorization'), 'Bearer tok-1');
    await pushAndFlush(client, body, eventFrame({ id: 'ep-3', type: 'a', data: 1 }));
    const expired = nextEvent(client, 'token_expired');
    body.push('event: token_expired\ndata: {"reason":"token_expired"}\n\n');
    assert.deepEqual((await expired).data, { reason: 'token_expired' });
    body.end();
    const { call: call2 } = await nextReconnect(clock, fetch);
    assert.equal(call2.headers.get('authorization'), 'Bearer tok-2');
    assert.equal(call2.headers.get('last-event-id'), 'ep-3');
    assert.deepEqual(asked, [{ refresh: false }, { refresh: true }]);
    client.close();
  });

  test('401 with getToken: a non-fatal error, a fresh token, a retry', async () => {
    const asked = [];
    const { clock, fetch, client } = setup({
      getToken: async (ctx) => {
        asked.push(ctx);
        return `tok-${asked.length}`;
      },
    });
    const errors = [];
    client.on('error', (e) => errors.push(e));
    clock.advance(50);
    const call = await fetch.nextCall();
    call.respond(401, { error: 'unauthorized', message: 'token is expired' });
    const { call: call2 } = await nextReconnect(clock, fetch);
    assert.equal(call2.headers.get('authorization'), 'Bearer tok-2');
    assert.deepEqual(asked, [{ refresh: false }, { refresh: true }]);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].status, 401);
    assert.equal(errors[0].error, 'unauthorized');
    assert.equal(errors[0].fatal, false);
    assert.notEqual(client.state, 'closed');
    call2.open().push(connectedFrame());
    await nextState(client, 'open');
    client.close();
  });

  for (const [status, body, why] of [
    [401, { error: 'unauthorized', message: 'no token' }, 'a 401 without getToken'],
    [403, { error: 'channel_not_allowed', message: 'channel "secret" is not allowed' }, 'a 403'],
    [400, { error: 'too_many_channels', message: 'at most 32 channels' }, 'a 400'],
  ]) {
    test(`${why} is fatal: closed, an error event with the JSON body, no retry`, async () => {
      const { clock, fetch, client } = setup();
      const errors = [];
      client.on('error', (e) => errors.push({ ...e, stateThen: client.state }));
      client.subscribe('secret', () => {});
      clock.advance(50);
      const call = await fetch.nextCall();
      const closed = nextState(client, 'closed');
      call.respond(status, body);
      await closed;
      assert.deepEqual(errors, [
        { type: 'error', status, error: body.error, message: body.message, body, fatal: true, stateThen: 'closed' },
      ]);
      assert.deepEqual(clock.pending(), []);
      client.subscribe('other', () => {});
      clock.advance(60_000);
      assert.equal(fetch.calls.length, 1);

      // reconnect() reopens a client that a refusal closed.
      client.reconnect();
      const again = await fetch.nextCall();
      assert.deepEqual(again.channels, ['other', 'secret']);
      assert.equal(client.state, 'connecting');
      client.close();
    });
  }

  test('429 and 503 are retried with backoff (non-fatal errors)', async () => {
    const { clock, fetch, client } = setup({ random: () => 1 });
    const errors = [];
    client.on('error', (e) => errors.push([e.status, e.error, e.fatal]));
    clock.advance(50);
    (await fetch.nextCall()).respond(503, { error: 'unavailable', message: 'NATS' });
    const first = await nextReconnect(clock, fetch);
    first.call.respond(429, { error: 'too_many_connections', message: 'close one' });
    const second = await nextReconnect(clock, fetch);
    assert.deepEqual([first.timer.delay, second.timer.delay], [1000, 2000]);
    assert.deepEqual(errors, [
      [503, 'unavailable', false],
      [429, 'too_many_connections', false],
    ]);
    client.close();
  });

  test('a non-JSON refusal body still yields an error event', async () => {
    const { clock, fetch, client } = setup();
    const error = nextEvent(client, 'error');
    clock.advance(50);
    (await fetch.nextCall()).respond(404, 'not here', { 'content-type': 'text/plain' });
    const e = await error;
    assert.equal(e.status, 404);
    assert.equal(e.error, 'http_404');
    assert.equal(e.fatal, true);
    assert.equal(client.state, 'closed');
  });

  test('a 200 that is not an event stream is fatal', async () => {
    const { clock, fetch, client } = setup();
    const error = nextEvent(client, 'error');
    clock.advance(50);
    (await fetch.nextCall()).open({ contentType: 'text/html' });
    assert.equal((await error).error, 'bad_content_type');
    assert.equal(client.state, 'closed');
  });

  test('getToken failing is retried with backoff', async () => {
    let fail = true;
    const { clock, fetch, client } = setup({
      random: () => 1,
      getToken: async () => {
        if (fail) throw new Error('auth server down');
        return 'ok';
      },
    });
    const error = nextEvent(client, 'error');
    clock.advance(50);
    const e = await error;
    assert.equal(e.error, 'token_unavailable');
    assert.equal(e.fatal, false);
    assert.equal(fetch.calls.length, 0);
    fail = false;
    const { timer, call } = await nextReconnect(clock, fetch);
    assert.equal(timer.delay, 1000);
    assert.equal(call.headers.get('authorization'), 'Bearer ok');
    client.close();
  });
});

describe('visibility and closing', () => {
  test('pauseWhenHidden closes while hidden and resumes when visible', async () => {
    const doc = new FakeDocument();
    const env = setup({ pauseWhenHidden: true, document: doc });
    const { clock, fetch, client } = env;
    const { call, body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ id: 'ep-8', type: 'a', data: 1 }));

    doc.setVisibility('hidden');
    await call.aborted;
    assert.equal(client.paused, true);
    assert.equal(client.state, 'reconnecting');
    assert.deepEqual(clock.pending(), []);
    client.subscribe('while-hidden', () => {});
    clock.advance(600_000);
    assert.equal(fetch.calls.length, 1);

    doc.setVisibility('visible');
    const call2 = await fetch.nextCall();
    assert.equal(call2.headers.get('last-event-id'), 'ep-8');
    assert.deepEqual(call2.channels, ['while-hidden']);
    assert.equal(client.paused, false);
    call2.open().push(connectedFrame());
    await nextState(client, 'open');
    client.close();
    doc.setVisibility('hidden');
    doc.setVisibility('visible');
    assert.equal(fetch.calls.length, 2, 'no listener left after close()');
  });

  test('a page hidden from the start connects only once visible', async () => {
    const doc = new FakeDocument();
    doc.visibilityState = 'hidden';
    const { clock, fetch, client } = setup({ pauseWhenHidden: true, document: doc });
    clock.advance(1000);
    assert.equal(fetch.calls.length, 0);
    doc.setVisibility('visible');
    await fetch.nextCall();
    client.close();
  });

  test('without pauseWhenHidden visibility is ignored', async () => {
    const doc = new FakeDocument();
    const env = setup({ document: doc });
    const { call } = await connect(env);
    doc.setVisibility('hidden');
    assert.equal(call.signal.aborted, false);
    assert.equal(env.client.state, 'open');
    env.client.close();
  });

  test('close() aborts the stream, reports closed, and never reconnects', async () => {
    const changes = [];
    const env = setup({ onStateChange: (s, prev) => changes.push([prev, s]) });
    const { clock, fetch, client } = env;
    const { call, body } = await connect(env);
    client.close();
    await call.aborted;
    assert.equal(client.state, 'closed');
    assert.deepEqual(changes, [
      ['connecting', 'open'],
      ['open', 'closed'],
    ]);
    try {
      body.end();
    } catch {
      // the stream is already errored by the abort
    }
    clock.advance(600_000);
    client.reconnect();
    client.subscribe('x', () => {});
    clock.advance(600_000);
    assert.equal(fetch.calls.length, 1);
    client.close();
  });

  test('close() from inside a handler stops dispatch of the rest of the chunk', async () => {
    const env = setup();
    const { client } = env;
    const got = [];
    client.on('a', (e) => {
      got.push(e.data);
      if (e.data === 1) client.close();
    });
    const { body } = await connect(env);
    const closed = nextState(client, 'closed');
    body.push(eventFrame({ type: 'a', data: 1 }) + eventFrame({ type: 'a', data: 2 }));
    await closed;
    assert.deepEqual(got, [1]);
  });

  test('reconnect() drops the connection and resumes at once', async () => {
    const env = setup();
    const { fetch, client } = env;
    const { call, body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ id: 'ep-1', type: 'a', data: 1 }));
    client.reconnect();
    await call.aborted;
    const call2 = await fetch.nextCall();
    assert.equal(call2.headers.get('last-event-id'), 'ep-1');
    client.close();
  });
});
