import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { createClient, HeraldRequestError, isValidEventType } from '../src/client.js';
import { FakeClock, createFakeFetch, connectedFrame, eventFrame, nextEvent, nextState } from './helpers.js';

const BASE = 'https://example.com/realtime';

function setup(options = {}) {
  const clock = new FakeClock();
  const fetch = createFakeFetch();
  const client = createClient({ url: BASE, fetch, clock, random: () => 0.5, idleTimeoutMs: 0, ...options });
  return { clock, fetch, client };
}

/** Settles `promise` into { value } or { error }, so a test can answer the request first. */
function settle(promise) {
  return promise.then(
    (value) => ({ value }),
    (error) => ({ error }),
  );
}

describe('publish (client events)', () => {
  test('POSTs the event to <base>/v1/client-events with the token; resolves on 202', async () => {
    const tokens = [];
    const { fetch, client } = setup({
      getToken: async (ctx) => {
        tokens.push(ctx);
        return 'tok-1';
      },
    });
    const sent = settle(client.publish('doc:1', 'cursor', { x: 0.25, y: 0.5 }));
    const call = await fetch.nextCall();
    assert.equal(call.url.href, 'https://example.com/realtime/v1/client-events');
    assert.equal(call.init.method, 'POST');
    assert.equal(call.headers.get('content-type'), 'application/json');
    assert.equal(call.headers.get('authorization'), 'Bearer tok-1');
    assert.equal(call.headers.get('accept'), 'application/json');
    assert.equal(call.init.credentials, 'same-origin');
    assert.deepEqual(JSON.parse(call.init.body), { channel: 'doc:1', type: 'cursor', data: { x: 0.25, y: 0.5 } });
    assert.deepEqual(tokens, [{ refresh: false }]);
    call.respond(202, { ok: true });
    assert.deepEqual(await sent, { value: undefined });
    assert.equal(client.state, 'connecting', 'publishing does not touch the stream');
    client.close();
  });

  test('dev mode and cookies: the query of url (user, token) is kept, channels are not', async () => {
    const { fetch, client } = setup({ url: 'https://example.com/rt/?user=ana&channels=x,y#top' });
    const sent = settle(client.publish('doc:1', 'typing'));
    const call = await fetch.nextCall();
    assert.equal(call.url.pathname, '/rt/v1/client-events');
    assert.equal(call.url.search, '?user=ana');
    assert.equal(call.url.hash, '');
    assert.equal(call.headers.get('authorization'), null);
    assert.equal(call.init.credentials, 'include');
    assert.deepEqual(JSON.parse(call.init.body), { channel: 'doc:1', type: 'typing', data: null });
    call.respond(202, { ok: true });
    assert.deepEqual(await sent, { value: undefined });
    client.close();
  });

  test('429: a HeraldRequestError with the code, the message and retryAfter in seconds', async () => {
    const { fetch, client } = setup();
    const sent = settle(client.publish('doc:1', 'cursor', { x: 1, y: 1 }));
    (await fetch.nextCall()).respond(429, { error: 'rate_limited', message: 'slow down' }, {
      'content-type': 'application/json',
      'retry-after': '3',
    });
    const { error } = await sent;
    assert.ok(error instanceof HeraldRequestError);
    assert.ok(error instanceof Error);
    assert.equal(error.name, 'HeraldRequestError');
    assert.equal(error.status, 429);
    assert.equal(error.error, 'rate_limited');
    assert.equal(error.message, 'slow down');
    assert.equal(error.retryAfter, 3);
    assert.deepEqual(error.body, { error: 'rate_limited', message: 'slow down' });
    client.close();
  });

  test('429 with an HTTP-date Retry-After, or none', async () => {
    const { fetch, client } = setup();
    const inFive = new Date(Date.now() + 5000).toUTCString();
    const first = settle(client.publish('doc:1', 'cursor', {}));
    (await fetch.nextCall()).respond(429, { error: 'rate_limited', message: 'm' }, { 'retry-after': inFive });
    const { retryAfter } = (await first).error;
    assert.ok(retryAfter >= 4 && retryAfter <= 5, String(retryAfter));

    const second = settle(client.publish('doc:1', 'cursor', {}));
    (await fetch.nextCall()).respond(429, '');
    const { error } = await second;
    assert.equal(error.error, 'http_429');
    assert.equal(error.retryAfter, null);
    client.close();
  });

  for (const [status, body, code] of [
    [400, { error: 'invalid_type', message: 'bad type' }, 'invalid_type'],
    [403, { error: 'publish_not_allowed', message: 'not on doc:1' }, 'publish_not_allowed'],
    [413, { error: 'too_large', message: 'over 2048 bytes' }, 'too_large'],
    [500, '<html>oops</html>', 'http_500'],
  ]) {
    test(`${status}: rejects with error ${code} and no retryAfter`, async () => {
      const { fetch, client } = setup();
      const sent = settle(client.publish('doc:1', 'cursor', {}));
      (await fetch.nextCall()).respond(status, body);
      const { error } = await sent;
      assert.ok(error instanceof HeraldRequestError);
      assert.equal(error.status, status);
      assert.equal(error.error, code);
      assert.equal('retryAfter' in error, false);
      if (typeof body === 'object') assert.equal(error.message, body.message);
      client.close();
    });
  }

  test('401 with getToken: asks for a fresh token and tries once more', async () => {
    const tokens = [];
    const { fetch, client } = setup({ getToken: async ({ refresh }) => (tokens.push(refresh), refresh ? 'fresh' : 'stale') });
    const first = settle(client.publish('doc:1', 'typing'));
    const a = await fetch.nextCall();
    assert.equal(a.headers.get('authorization'), 'Bearer stale');
    a.respond(401, { error: 'token_expired', message: 'expired' });
    const b = await fetch.nextCall();
    assert.equal(b.headers.get('authorization'), 'Bearer fresh');
    b.respond(202, { ok: true });
    assert.deepEqual(await first, { value: undefined });

    const second = settle(client.publish('doc:1', 'typing'));
    (await fetch.nextCall()).respond(401, { error: 'unauthorized', message: 'no' });
    (await fetch.nextCall()).respond(401, { error: 'unauthorized', message: 'still no' });
    const { error } = await second;
    assert.equal(error.status, 401);
    assert.equal(error.message, 'still no');
    assert.deepEqual(tokens, [false, true, false, true]);
    assert.equal(fetch.calls.length, 4);
    client.close();
  });

  test('network failures and getToken failures are errors with status 0', async () => {
    const { fetch, client } = setup();
    const sent = settle(client.publish('doc:1', 'typing'));
    (await fetch.nextCall()).fail();
    const { error } = await sent;
    assert.equal(error.status, 0);
    assert.equal(error.error, 'network_error');
    assert.ok(error.cause instanceof TypeError);
    client.close();

    const failing = setup({ getToken: async () => Promise.reject(new Error('signed out')) });
    const { error: tokenError } = await settle(failing.client.publish('doc:1', 'typing'));
    assert.equal(tokenError.error, 'token_unavailable');
    assert.equal(tokenError.message, 'signed out');
    assert.equal(failing.fetch.calls.length, 0);
    failing.client.close();
  });

  test('an aborted request rejects with the AbortError', async () => {
    const { fetch, client } = setup();
    const abort = new AbortController();
    const sent = settle(client.publish('doc:1', 'typing', null, { signal: abort.signal }));
    const call = await fetch.nextCall();
    assert.equal(call.signal, abort.signal);
    abort.abort();
    assert.equal((await sent).error.name, 'AbortError');
    client.close();
  });

  test('invalid channels, types and data are refused without a request', async () => {
    const { fetch, client } = setup();
    for (const [channel, type, data] of [
      ['a b', 'cursor', 1],
      ['doc:1', '', 1],
      ['doc:1', 'has space', 1],
      ['doc:1', 'x'.repeat(65), 1],
      ['doc:1', 'presence', 1],
      ['doc:1', 'connected', 1],
      ['doc:1', 'error', 1],
      ['doc:1', 'cursor', { n: 1n }],
    ]) {
      await assert.rejects(client.publish(channel, type, data), TypeError, `${channel} ${type}`);
    }
    assert.equal(fetch.calls.length, 0);
    assert.ok(isValidEventType('cursor.move:v2-x_y'));
    assert.ok(!isValidEventType('token_expired'));
    assert.ok(!isValidEventType(7));
    client.close();
  });
});

describe('presence', () => {
  test('GET <base>/v1/presence/<channel, encoded> resolves to the member list', async () => {
    const { fetch, client } = setup({ getToken: () => 'tok-1' });
    const answer = {
      channel: 'doc:1',
      members: [
        { user: 'ana', connections: 2, presence: { name: 'Ana', color: '#e33' } },
        { user: 'ben', connections: 1, presence: null },
      ],
    };
    const got = settle(client.presence('doc:1'));
    const call = await fetch.nextCall();
    assert.equal(call.url.href, 'https://example.com/realtime/v1/presence/doc%3A1');
    assert.equal(call.init.method, 'GET');
    assert.equal(call.init.body, undefined);
    assert.equal(call.headers.get('authorization'), 'Bearer tok-1');
    assert.equal(call.headers.get('accept'), 'application/json');
    assert.equal(call.headers.get('content-type'), null);
    call.respond(200, answer);
    assert.deepEqual(await got, { value: answer });
    client.close();
  });

  test('dev mode keeps ?user=; names with + and @ are encoded', async () => {
    const { fetch, client } = setup({ url: 'https://example.com/?user=ben' });
    const got = settle(client.presence('room+1@x'));
    const call = await fetch.nextCall();
    assert.equal(call.url.pathname, '/v1/presence/room%2B1%40x');
    assert.equal(call.url.search, '?user=ben');
    assert.equal(call.init.credentials, 'include');
    call.respond(200, { channel: 'room+1@x', members: [] });
    assert.deepEqual((await got).value.members, []);
    client.close();
  });

  test('refusals reject with a HeraldRequestError; an invalid channel with a TypeError', async () => {
    const { fetch, client } = setup();
    const got = settle(client.presence('booking:42'));
    (await fetch.nextCall()).respond(404, { error: 'presence_off', message: 'no presence on booking:42' });
    const { error } = await got;
    assert.ok(error instanceof HeraldRequestError);
    assert.equal(error.status, 404);
    assert.equal(error.error, 'presence_off');

    const broken = settle(client.presence('doc:1'));
    (await fetch.nextCall()).respond(200, 'not json', { 'content-type': 'text/plain' });
    assert.equal((await broken).error.error, 'bad_response');

    await assert.rejects(client.presence('a b'), TypeError);
    assert.equal(fetch.calls.length, 2);
    client.close();
  });

  test('presence and client events reach channel handlers, on(type) and "*"; the cursor is kept', async () => {
    const { clock, fetch, client } = setup();
    const onChannel = [];
    const onPresence = [];
    const onAll = [];
    client.subscribe('doc:1', (e) => onChannel.push(e));
    client.on('presence', (e) => onPresence.push(e));
    client.on('*', (e) => onAll.push(e.type));
    clock.advance(50);
    const call = await fetch.nextCall();
    assert.deepEqual(call.channels, ['doc:1']);
    const body = call.open();
    body.push(connectedFrame({ channels: ['doc:1'] }));
    await nextState(client, 'open');

    const done = nextEvent(client, 'cursor');
    body.push(
      eventFrame({ id: 'ep-7', type: 'note', channel: 'doc:1', data: 1 }) +
        'event: presence\ndata: {"channel":"doc:1","target":"channel","data":{"action":"join","user":"ana"}}\n\n' +
        eventFrame({ type: 'presence', channel: 'doc:1', data: { action: 'leave', user: 'ben' } }) +
        eventFrame({ type: 'cursor', channel: 'doc:1', data: { x: 0.1, y: 0.2 }, from: 'ana' }),
    );
    await done;

    const join = { type: 'presence', id: null, lastEventId: 'ep-7', channel: 'doc:1', target: 'channel', data: { action: 'join', user: 'ana' } };
    const leave = { ...join, data: { action: 'leave', user: 'ben' } };
    assert.deepEqual(onPresence, [join, leave]);
    assert.deepEqual(onChannel.map((e) => e.type), ['note', 'presence', 'presence', 'cursor']);
    assert.deepEqual(onChannel[3], {
      type: 'cursor',
      id: null,
      lastEventId: 'ep-7',
      channel: 'doc:1',
      target: 'channel',
      data: { x: 0.1, y: 0.2 },
      from: 'ana',
    });
    assert.deepEqual(onAll, ['note', 'presence', 'presence', 'cursor']);
    assert.equal(client.lastEventId, 'ep-7', 'live-only frames do not move the resume cursor');
    assert.equal(client.state, 'open');
    client.close();
  });
});
