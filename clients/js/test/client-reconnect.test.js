// Reconnecting, resuming and changing channels.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { connectedFrame, eventFrame, nextState, recordStates } from './helpers.js';
import { connect, nextReconnect, pushAndFlush, setup } from './client-helpers.js';

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

  test('a retry: longer than a timer can wait stays away, not comes back at once', async () => {
    const env = setup({ random: () => 0.9 });
    const { clock, fetch, client } = env;
    clock.advance(50);
    const call = await fetch.nextCall();
    const body = call.open();
    body.push('retry: 4294967296\n\n');
    body.end();
    const timer = await clock.waitForTimer();
    client.close();
    assert.equal(timer.delay, 2 ** 31 - 1, 'about 24 days, the longest a timer holds');
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

  test('a line longer than maxEventLength ends the stream, and the client resumes', async () => {
    const env = setup({ maxEventLength: 1000 });
    const { clock, fetch, client } = env;
    const got = [];
    client.on('a', (e) => got.push(e.id));
    const { body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ id: 'ep-1', type: 'a', data: 1 }));
    body.push('data: ' + 'x'.repeat(2000)); // never ended
    const { call } = await nextReconnect(clock, fetch);
    assert.equal(call.headers.get('last-event-id'), 'ep-1');
    assert.deepEqual(got, ['ep-1']);
    client.close();
  });

  test('an event longer than maxEventLength is stepped over, with an error naming it, not replayed forever', async () => {
    // Its id comes before its data: the client resumes after it. Before, it resumed from the
    // event before, the gateway sent the same event again, and so on without end, with no
    // error, and nothing after it ever arrived.
    const env = setup({ maxEventLength: 1000 });
    const { clock, fetch, client } = env;
    const got = [];
    const errors = [];
    client.on('a', (e) => got.push(e.id));
    client.on('error', (e) => errors.push(e));
    const { body } = await connect(env);
    await pushAndFlush(client, body, eventFrame({ id: 'ep-1', type: 'a', data: 1 }));
    body.push(eventFrame({ id: 'ep-2', type: 'a', data: 'x'.repeat(2000) }) + eventFrame({ id: 'ep-3', type: 'a', data: 3 }));
    const { call } = await nextReconnect(clock, fetch);
    assert.equal(call.headers.get('last-event-id'), 'ep-2');
    assert.deepEqual(
      errors.map((e) => [e.error, e.id, e.fatal]),
      [['event_too_large', 'ep-2', false]],
    );
    const next = call.open();
    next.push(connectedFrame({ resumed: true }));
    await pushAndFlush(client, next, eventFrame({ id: 'ep-3', type: 'a', data: 3 }));
    assert.deepEqual(got, ['ep-1', 'ep-3']);
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

test('reconnect() from a channel handler: the event still reaches the other handlers', async () => {
  const env = setup();
  const { clock, fetch, client } = env;
  const { body } = await connect(env);
  const star = [];
  client.subscribe('room:1', (e) => {
    if (e.data === 'rotate') client.reconnect();
  });
  client.on('*', (e) => star.push(e.id));
  clock.advance(50); // the debounced channel change reconnects once
  const call2 = await fetch.nextCall();
  const b2 = call2.open();
  b2.push(connectedFrame({ resumed: true }));
  await nextState(client, 'open');
  b2.push(eventFrame({ id: 'ep-7', channel: 'room:1', data: 'rotate' }));
  const call3 = await fetch.nextCall();
  client.close();
  assert.ok(
    star.includes('ep-7') || call3.headers.get('last-event-id') !== 'ep-7',
    `on('*') never got ep-7 (got ${JSON.stringify(star)}) and the resume starts after it (${call3.headers.get('last-event-id')})`,
  );
});

test('a request that never answers is given up after idleTimeoutMs', async () => {
  const env = setup({ idleTimeoutMs: 45000 });
  const { clock, fetch, client } = env;
  clock.advance(50);
  await fetch.nextCall(); // never answered: a proxy or half-open socket swallowing the request
  clock.advance(45000 * 10);
  await new Promise((r) => setImmediate(r));
  const n = fetch.calls.length;
  const state = client.state;
  client.close();
  assert.ok(n > 1, `still waiting on the first request after 450 s (${n} request(s), state ${state})`);
});
