// The client's request and the events it delivers.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { eventsUrl, isValidName } from '../src/client.js';
import { connectedFrame, eventFrame, nextEvent } from './helpers.js';
import { connect, pushAndFlush, setup } from './client-helpers.js';

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
