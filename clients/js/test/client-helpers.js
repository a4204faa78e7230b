// What the client's unit tests share: a client on a fake clock and fetch, and the steps most
// tests take with it (connect, push frames and wait for them, wait for a reconnect).

import assert from 'node:assert/strict';

import { createClient } from '../src/client.js';
import { FakeClock, connectedFrame, createFakeFetch, nextEvent, nextState } from './helpers.js';

export const BASE = 'https://example.com/realtime';

export function setup(options = {}) {
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
export async function connect({ clock, fetch, client }, frame = connectedFrame()) {
  clock.advance(50);
  const call = await fetch.nextCall();
  const body = call.open();
  const opened = nextState(client, 'open');
  body.push(frame);
  await opened;
  return { call, body };
}

/** Pushes frames followed by a marker event and waits until the client has dispatched them all. */
export async function pushAndFlush(client, body, frames) {
  const marker = nextEvent(client, 'test_marker');
  body.push(frames + 'event: test_marker\ndata: {"channel":null,"target":"user","data":null}\n\n');
  await marker;
}

/** Waits for the reconnect timer, checks nothing else connects before it fires, fires it. */
export async function nextReconnect(clock, fetch) {
  const timer = await clock.waitForTimer();
  const before = fetch.calls.length;
  clock.advance(timer.delay);
  const call = await fetch.nextCall();
  assert.equal(fetch.calls.length, before + 1);
  return { timer, call };
}
