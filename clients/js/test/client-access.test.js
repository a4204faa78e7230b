// Tokens and refusals, page visibility and closing.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { FakeDocument, connectedFrame, eventFrame, nextEvent, nextState } from './helpers.js';
import { connect, nextReconnect, pushAndFlush, setup } from './client-helpers.js';

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

  test("getToken may answer the token endpoint's JSON, { token, expiresIn }", async () => {
    // What herald-server's tokenHandler answers. Sent as it was, the header read
    // `Bearer {"token":…}`: a 401, a fresh token of the same shape, and so on without end.
    const env = setup({ getToken: async () => ({ token: 'tok-1', expiresIn: 600 }) });
    const { call } = await connect(env);
    assert.equal(call.headers.get('authorization'), 'Bearer tok-1');
    env.client.close();
  });

  test('getToken answering JSON without a token (a signed-out user) is a token_unavailable error', async () => {
    // Sent as it was, the header read `Bearer [object Object]`: a 401, and another, for ever.
    const { clock, fetch, client } = setup({ getToken: async () => ({ error: 'unauthorized' }) });
    const error = nextEvent(client, 'error');
    clock.advance(50);
    const e = await error;
    assert.deepEqual([e.error, e.fatal], ['token_unavailable', false]);
    assert.equal(fetch.calls.length, 0, 'no request with it');
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

  test('a refusal whose body never ends is read only so far: the error comes, the body is dropped', async () => {
    // Read whole, it grew for as long as the server sent it (with idleTimeoutMs 0, for ever),
    // and the error never came.
    const { clock, fetch, client } = setup({ idleTimeoutMs: 0 });
    const error = nextEvent(client, 'error');
    clock.advance(50);
    const call = await fetch.nextCall();
    const body = call.open({ status: 503, contentType: 'text/html' });
    for (let i = 0; i < 8; i++) body.push('x'.repeat(16 * 1024));
    const e = await error;
    assert.deepEqual([e.status, e.error, e.fatal], [503, 'http_503', false]);
    assert.equal(call.cancelled, true, 'the rest of the body is not read');
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

  test('a client refused for share with pauseWhenHidden leaves no listener on the page', () => {
    const doc = new FakeDocument();
    const added = [];
    const addEventListener = doc.addEventListener.bind(doc);
    doc.addEventListener = (type, listener) => {
      added.push(type);
      addEventListener(type, listener);
    };
    assert.throws(() => setup({ pauseWhenHidden: true, share: true, document: doc }), /cannot be combined/);
    assert.deepEqual(added, [], 'the refused client added listeners it can never remove');
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
