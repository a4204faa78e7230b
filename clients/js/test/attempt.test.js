import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { Attempt } from '../src/attempt.js';
import { createClient } from '../src/client.js';
import { FakeClock, connectedFrame, eventFrame } from './helpers.js';

const encoder = new TextEncoder();

/** A response body whose `cancelled` promise resolves when its reader cancels it. */
function body() {
  let controller;
  let cancelled;
  const done = new Promise((resolve) => {
    cancelled = resolve;
  });
  const stream = new ReadableStream({
    start: (c) => {
      controller = c;
    },
    cancel: () => cancelled(),
  });
  return { stream, controller: () => controller, cancelled: done };
}

describe('Attempt', () => {
  test('asks for its channels, and its key is them in one string', () => {
    const attempt = new Attempt(['a', 'b'], new FakeClock());
    assert.deepEqual(attempt.channels, ['a', 'b']);
    assert.equal(attempt.key, 'a,b');
    assert.equal(attempt.ended, false);
    assert.equal(attempt.signal.aborted, false);
  });

  test('ending it aborts its request, cancels its stream and clears its silence timer', async () => {
    const clock = new FakeClock();
    const attempt = new Attempt([], clock);
    const b = body();
    const read = attempt.read(b.stream, () => assert.fail('no chunk'));
    let silent = 0;
    attempt.watchSilence(1000, () => {
      silent += 1;
    });
    assert.equal(clock.pending().length, 1);
    attempt.end();
    assert.equal(attempt.ended, true);
    assert.equal(attempt.signal.aborted, true);
    assert.equal(clock.pending().length, 0);
    await b.cancelled;
    assert.equal(await read, false, 'the read ends with the attempt');
    clock.advance(10_000);
    assert.equal(silent, 0);
    attempt.end(); // a second end does nothing
    assert.equal(attempt.ended, true);
  });

  test('read() hands over each chunk as heard, and tells whether the body ended before the attempt', async () => {
    const clock = new FakeClock();
    const attempt = new Attempt([], clock);
    let silent = 0;
    attempt.watchSilence(1000, () => {
      silent += 1;
    });
    const b = body();
    const chunks = [];
    let got;
    const gotOne = () =>
      new Promise((resolve) => {
        got = resolve;
      });
    let next = gotOne();
    const read = attempt.read(b.stream, (chunk) => {
      chunks.push(new TextDecoder().decode(chunk));
      got();
    });
    clock.advance(900);
    b.controller().enqueue(encoder.encode('one'));
    await next;
    clock.advance(900); // 1800 since the start, 900 since the chunk
    assert.equal(silent, 0);
    next = gotOne();
    b.controller().enqueue(encoder.encode('two'));
    await next;
    b.controller().close();
    assert.equal(await read, true);
    assert.deepEqual(chunks, ['one', 'two']);

    // A body that fails has ended too.
    const failing = body();
    const failed = new Attempt([], clock).read(failing.stream, () => {});
    failing.controller().error(new TypeError('network error'));
    assert.equal(await failed, true);

    // A chunk whose handling ends the attempt: the read stops there.
    const other = new Attempt([], clock);
    const b2 = body();
    b2.controller().enqueue(encoder.encode('x'));
    const stopped = other.read(b2.stream, () => other.end());
    assert.equal(await stopped, false);
    await b2.cancelled;
  });

  test('silence: runs once nothing was heard for the whole time, counting from the last sound', () => {
    const clock = new FakeClock();
    const attempt = new Attempt([], clock);
    let silent = 0;
    attempt.watchSilence(1000, () => {
      silent += 1;
    });
    clock.advance(600);
    attempt.heard();
    clock.advance(600); // 1200 since the start, 600 since the last sound
    assert.equal(silent, 0);
    clock.advance(399);
    assert.equal(silent, 0);
    clock.advance(1);
    assert.equal(silent, 1);
    clock.advance(10_000);
    assert.equal(silent, 1, 'once');
  });

  test('no silence timer when the time is not positive', () => {
    const clock = new FakeClock();
    const attempt = new Attempt([], clock);
    attempt.watchSilence(0, () => assert.fail('no timer'));
    assert.equal(clock.pending().length, 0);
  });
});

describe('a callback of an ended attempt does nothing', () => {
  test('a token that comes after reconnect() is not used', async () => {
    const clock = new FakeClock();
    const tokens = [];
    const calls = [];
    let nextCall;
    const called = new Promise((resolve) => {
      nextCall = resolve;
    });
    const client = createClient({
      url: 'https://example.com/rt',
      clock,
      idleTimeoutMs: 0,
      share: false,
      getToken: () =>
        new Promise((resolve) => {
          tokens.push(resolve);
        }),
      fetch: (url, init) => {
        calls.push(init);
        nextCall();
        return new Promise(() => {});
      },
    });
    clock.advance(50);
    assert.equal(tokens.length, 1);
    client.reconnect(); // ends the first attempt while it waits for its token
    assert.equal(tokens.length, 2);
    tokens[0]('tok-old');
    tokens[1]('tok-new');
    await called;
    assert.equal(calls.length, 1);
    assert.equal(calls[0].headers.Authorization, 'Bearer tok-new');
    client.close();
  });

  test('a response that comes after reconnect() is cancelled, and its stream is not read', async () => {
    const clock = new FakeClock();
    const answers = [];
    const signals = [];
    let asked;
    const twice = new Promise((resolve) => {
      asked = resolve;
    });
    const got = [];
    const client = createClient({
      url: 'https://example.com/rt',
      clock,
      idleTimeoutMs: 0,
      share: false,
      // A fetch that ignores its signal, so its answer comes after the attempt ended.
      fetch: (url, init) =>
        new Promise((resolve) => {
          answers.push(resolve);
          signals.push(init.signal);
          if (answers.length === 2) asked();
        }),
    });
    client.on('*', (e) => got.push(e.data));
    clock.advance(50);
    client.reconnect();
    await twice;
    assert.equal(signals[0].aborted, true);
    const late = body();
    late.controller().enqueue(encoder.encode(connectedFrame() + eventFrame({ id: 'x-1', type: 'a', data: 1 })));
    answers[0](new Response(late.stream, { status: 200, headers: { 'content-type': 'text/event-stream' } }));
    await late.cancelled;
    assert.deepEqual(got, []);
    assert.equal(client.state, 'connecting');
    assert.equal(client.lastEventId, '');
    client.close();
  });
});
