import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { createReactBindings } from '../src/react-bindings.js';
import { createFakeReact } from './fake-react.js';
import { FakeClock, createFakeFetch, connectedFrame, eventFrame, nextState } from './helpers.js';

/** A client double that records subscriptions and lets the test emit events and states. */
function fakeClient(state = 'open') {
  const channels = new Map();
  const handlers = new Map();
  const listeners = new Set();
  const log = [];
  return {
    state,
    log,
    subscribe(channel, handler) {
      log.push(['subscribe', channel]);
      if (!channels.has(channel)) channels.set(channel, new Set());
      channels.get(channel).add(handler);
      return () => {
        log.push(['unsubscribe', channel]);
        channels.get(channel).delete(handler);
      };
    },
    on(type, handler) {
      log.push(['on', type]);
      if (!handlers.has(type)) handlers.set(type, new Set());
      handlers.get(type).add(handler);
      return () => {
        log.push(['off', type]);
        handlers.get(type).delete(handler);
      };
    },
    onStateChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    emit(event) {
      if (event.channel != null) for (const h of channels.get(event.channel) ?? []) h(event);
      for (const h of handlers.get(event.type) ?? []) h(event);
      for (const h of handlers.get('*') ?? []) h(event);
    },
    setState(next) {
      const prev = this.state;
      this.state = next;
      for (const l of listeners) l(next, prev);
    },
    close() {
      log.push(['close']);
    },
    /** presence() calls, each answered by the test: { channel, signal, resolve, reject }. */
    fetches: [],
    presence(channel, { signal } = {}) {
      log.push(['presence', channel]);
      return new Promise((resolve, reject) => {
        this.fetches.push({ channel, signal, resolve, reject });
        signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
      });
    },
  };
}

/** Lets promise callbacks (the hook's fetch answers) run. */
const flush = () => new Promise((resolve) => setImmediate(resolve));

const presenceEvent = (channel, action, user) => ({
  type: 'presence',
  id: null,
  channel,
  target: 'channel',
  data: { action, user },
});

function setup() {
  const { React, render } = createFakeReact();
  const bindings = createReactBindings(React);
  const withClient = (client, state = client.state) =>
    new Map([[bindings.RealtimeContext, { client, state }]]);
  return { React, render, bindings, withClient };
}

describe('useRealtimeChannel', () => {
  test('subscribes once; a new callback on re-render does not resubscribe but is the one called', () => {
    const { render, bindings, withClient } = setup();
    const client = fakeClient();
    const got = [];
    const Comp = ({ channel, tag }) => bindings.useRealtimeChannel(channel, (e) => got.push([tag, e.data]));
    const root = render(Comp, { channel: 'agent:7', tag: 'first' }, { contexts: withClient(client) });
    assert.deepEqual(root.output, { isConnected: true, state: 'open' });
    root.rerender({ channel: 'agent:7', tag: 'second' });
    root.rerender({ channel: 'agent:7', tag: 'third' });
    assert.deepEqual(client.log, [['subscribe', 'agent:7']]);

    client.emit({ type: 'agent_status', channel: 'agent:7', data: 'running' });
    assert.deepEqual(got, [['third', 'running']]);

    root.rerender({ channel: 'agent:8', tag: 'third' });
    assert.deepEqual(client.log, [['subscribe', 'agent:7'], ['unsubscribe', 'agent:7'], ['subscribe', 'agent:8']]);
    root.unmount();
    assert.deepEqual(client.log.at(-1), ['unsubscribe', 'agent:8']);
  });

  test('isConnected follows the provider state; outside a provider it is false', () => {
    const { render, bindings, withClient } = setup();
    const client = fakeClient('reconnecting');
    const Comp = () => bindings.useRealtimeChannel('a', () => {});
    assert.deepEqual(render(Comp, {}, { contexts: withClient(client) }).output, {
      isConnected: false,
      state: 'reconnecting',
    });
    assert.deepEqual(render(Comp).output, { isConnected: false, state: 'closed' });
  });
});

describe('useEventStream', () => {
  test('delivers its channels plus channel-less (user, broadcast) events; lastEvent follows', () => {
    const { render, bindings, withClient } = setup();
    const client = fakeClient();
    const got = [];
    const Comp = ({ channels }) => bindings.useEventStream({ channels, onEvent: (e) => got.push(e.data) });
    const root = render(Comp, { channels: ['b', 'a', 'a'] }, { contexts: withClient(client) });
    assert.deepEqual(client.log, [['subscribe', 'a'], ['subscribe', 'b'], ['on', '*']]);
    assert.equal(root.output.lastEvent, null);

    client.emit({ type: 'booking_update', channel: 'a', target: 'channel', data: 1 });
    client.emit({ type: 'notification', channel: null, target: 'user', data: 2 });
    client.emit({ type: 'x', channel: 'elsewhere', target: 'channel', data: 3 });
    assert.deepEqual(got, [1, 2]);
    assert.equal(root.output.lastEvent.data, 2);
    assert.equal(root.output.isConnected, true);

    // A new array with the same channels does not resubscribe.
    root.rerender({ channels: ['a', 'b'] });
    assert.equal(client.log.length, 3);
    root.unmount();
    assert.deepEqual(client.log.slice(3), [['unsubscribe', 'a'], ['unsubscribe', 'b'], ['off', '*']]);
  });
});

describe('usePresence', () => {
  const ana = { user: 'ana', connections: 2, presence: { color: '#e33' } };
  const ben = { user: 'ben', connections: 1, presence: null };
  const cy = { user: 'cy', connections: 1, presence: null };

  test('fetches the list, applies join and leave at once, refetches 250 ms after the last change', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { render, bindings, withClient } = setup();
    const client = fakeClient();
    const root = render(({ channel }) => bindings.usePresence(channel), { channel: 'doc:1' }, { contexts: withClient(client) });
    assert.deepEqual(client.log, [['subscribe', 'doc:1'], ['on', 'connected'], ['presence', 'doc:1']]);
    assert.deepEqual(root.output, []);

    client.fetches[0].resolve({ channel: 'doc:1', members: [ana, cy] });
    await flush();
    assert.deepEqual(root.output, [ana, cy]);

    // Events change the list at once; a join adds a placeholder in user order.
    client.emit(presenceEvent('doc:1', 'join', 'ben'));
    assert.deepEqual(root.output, [ana, { user: 'ben', connections: 1, presence: null }, cy]);
    t.mock.timers.tick(200);
    client.emit(presenceEvent('doc:1', 'leave', 'cy'));
    assert.deepEqual(root.output.map((m) => m.user), ['ana', 'ben']);
    // A join of someone already listed, a leave of someone absent, other channels and other
    // types change nothing.
    const before = root.output;
    client.emit(presenceEvent('doc:1', 'join', 'ana'));
    client.emit(presenceEvent('doc:1', 'leave', 'zed'));
    client.emit(presenceEvent('doc:2', 'join', 'dan'));
    client.emit({ type: 'cursor', channel: 'doc:1', target: 'channel', data: { x: 1, y: 1 }, from: 'ana' });
    assert.equal(root.output, before);

    // One refetch, 250 ms after the last presence event.
    t.mock.timers.tick(249);
    assert.equal(client.fetches.length, 1);
    t.mock.timers.tick(1);
    assert.equal(client.fetches.length, 2);
    client.fetches[1].resolve({ channel: 'doc:1', members: [ana, ben] });
    await flush();
    assert.deepEqual(root.output, [ana, ben]);

    // An answer equal to the list keeps the same array.
    const shown = root.output;
    client.emit(presenceEvent('doc:1', 'join', 'ben'));
    t.mock.timers.tick(250);
    client.fetches[2].resolve({ channel: 'doc:1', members: [{ ...ana }, { ...ben }] });
    await flush();
    assert.equal(root.output, shown);

    root.unmount();
    assert.deepEqual(client.log.slice(-2), [['unsubscribe', 'doc:1'], ['off', 'connected']]);
  });

  test('an answer that may predate an event is dropped; the refetch after the event counts', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { render, bindings, withClient } = setup();
    const client = fakeClient();
    const root = render(() => bindings.usePresence('doc:1'), {}, { contexts: withClient(client) });
    client.emit(presenceEvent('doc:1', 'join', 'ben'));
    assert.deepEqual(root.output, [{ user: 'ben', connections: 1, presence: null }]);
    // The first fetch started before ben joined: its list lacks him.
    client.fetches[0].resolve({ channel: 'doc:1', members: [ana] });
    await flush();
    assert.deepEqual(root.output.map((m) => m.user), ['ben']);
    t.mock.timers.tick(250);
    client.fetches[1].resolve({ channel: 'doc:1', members: [ana, ben] });
    await flush();
    assert.deepEqual(root.output, [ana, ben]);
    root.unmount();
  });

  test('a newer fetch aborts the one in flight; a reconnection refetches', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { render, bindings, withClient } = setup();
    const client = fakeClient();
    const root = render(() => bindings.usePresence('doc:1'), {}, { contexts: withClient(client) });
    client.emit({ type: 'connected', data: { connectionId: 'c-2' } });
    t.mock.timers.tick(250);
    assert.equal(client.fetches.length, 2);
    assert.equal(client.fetches[0].signal.aborted, true);
    assert.equal(client.fetches[1].signal.aborted, false);
    client.fetches[1].resolve({ channel: 'doc:1', members: [ben] });
    await flush();
    assert.deepEqual(root.output, [ben]);
    root.unmount();
  });

  test('a channel change or unmount unsubscribes, aborts the fetch and cancels the refetch', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { render, bindings, withClient } = setup();
    const client = fakeClient();
    const root = render(({ channel }) => bindings.usePresence(channel), { channel: 'doc:1' }, { contexts: withClient(client) });
    client.fetches[0].resolve({ channel: 'doc:1', members: [ana] });
    await flush();
    client.emit(presenceEvent('doc:1', 'join', 'ben'));

    root.rerender({ channel: 'doc:2' });
    assert.deepEqual(root.output, [], 'the old channel\'s list is not shown for the new one');
    assert.deepEqual(client.log.slice(-5), [
      ['unsubscribe', 'doc:1'],
      ['off', 'connected'],
      ['subscribe', 'doc:2'],
      ['on', 'connected'],
      ['presence', 'doc:2'],
    ]);
    t.mock.timers.tick(1000);
    assert.deepEqual(client.fetches.map((f) => f.channel), ['doc:1', 'doc:2'], 'no refetch of doc:1');
    client.fetches[1].resolve({ channel: 'doc:2', members: [cy] });
    await flush();
    assert.deepEqual(root.output, [cy]);

    client.emit(presenceEvent('doc:2', 'leave', 'cy'));
    root.unmount();
    t.mock.timers.tick(1000);
    assert.equal(client.fetches.length, 2, 'no refetch after unmount');

    // A fetch in flight at unmount is aborted and its answer ignored.
    const again = render(() => bindings.usePresence('doc:3'), {}, { contexts: withClient(client) });
    const renders = again.renders;
    again.unmount();
    assert.equal(client.fetches[2].signal.aborted, true);
    await flush();
    assert.equal(again.renders, renders);
  });

  test('errors go to onError (the latest one); no client or no channel: an empty list, nothing fetched', async () => {
    const { render, bindings, withClient } = setup();
    const client = fakeClient();
    const got = [];
    const root = render(
      ({ tag }) => bindings.usePresence('booking:42', { onError: (e) => got.push([tag, e.error]) }),
      { tag: 'first' },
      { contexts: withClient(client) },
    );
    root.rerender({ tag: 'second' });
    const refusal = Object.assign(new Error('no presence on booking:42'), { status: 404, error: 'presence_off' });
    client.fetches[0].reject(refusal);
    await flush();
    assert.deepEqual(got, [['second', 'presence_off']]);
    assert.deepEqual(root.output, []);
    root.unmount();

    assert.deepEqual(render(() => bindings.usePresence('doc:1')).output, []);
    const idle = fakeClient();
    assert.deepEqual(render(() => bindings.usePresence(null), {}, { contexts: withClient(idle) }).output, []);
    assert.deepEqual(idle.log, []);
  });

  test('with a real client: one GET with the stream\'s query, join events from the stream', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { render, bindings } = setup();
    const clock = new FakeClock();
    const fetch = createFakeFetch();
    const provider = render(bindings.RealtimeProvider, {
      options: { url: 'https://example.com/rt/?user=ana', fetch, clock, idleTimeoutMs: 0 },
    });
    const ctx = provider.output.props.value;
    const hook = render(() => bindings.usePresence('doc:1'), {}, { contexts: new Map([[bindings.RealtimeContext, ctx]]) });

    const list = await fetch.nextCall();
    assert.equal(list.url.href, 'https://example.com/rt/v1/presence/doc%3A1?user=ana');
    list.respond(200, { channel: 'doc:1', members: [ben] });
    await waitUntil(() => hook.output.length === 1);
    assert.deepEqual(hook.output, [ben]);
    clock.advance(50);
    const stream = await fetch.nextCall();
    assert.equal(stream.url.pathname, '/rt/events');
    assert.deepEqual(stream.channels, ['doc:1']);
    const body = stream.open();
    const joined = new Promise((resolve) => ctx.client.on('presence', resolve));
    body.push(connectedFrame({ user: 'ana', channels: ['doc:1'] }) + eventFrame({ type: 'presence', channel: 'doc:1', data: { action: 'join', user: 'ana' } }));
    await joined;
    assert.deepEqual(hook.output, [{ user: 'ana', connections: 1, presence: null }, ben]);

    t.mock.timers.tick(250);
    const refetch = await fetch.nextCall();
    assert.equal(refetch.url.pathname, '/rt/v1/presence/doc%3A1');
    refetch.respond(200, { channel: 'doc:1', members: [ana, ben] });
    await waitUntil(() => hook.output[0]?.connections === 2);
    assert.deepEqual(hook.output, [ana, ben]);
    hook.unmount();
    provider.unmount();
  });
});

/** Waits (on real promise turns, not time) until `cond()` holds. */
async function waitUntil(cond) {
  for (let i = 0; i < 100 && !cond(); i++) await flush();
  assert.ok(cond());
}

describe('RealtimeProvider', () => {
  test('with options: creates one client on mount, exposes its state, closes it on unmount', async () => {
    const { render, bindings } = setup();
    const clock = new FakeClock();
    const fetch = createFakeFetch();
    const states = [];
    let tokenCalls = 0;
    const options = {
      url: 'https://example.com',
      fetch,
      clock,
      idleTimeoutMs: 0,
      getToken: async () => `t${++tokenCalls}`,
      onStateChange: (s) => states.push(s),
    };
    const root = render(bindings.RealtimeProvider, { options, children: 'app' });
    const value = () => root.output.props.value;
    assert.equal(root.output.type, bindings.RealtimeContext.Provider);
    assert.equal(root.output.props.children, 'app');
    const client = value().client;
    assert.ok(client, 'client created after mount');
    assert.equal(value().state, 'connecting');

    // Re-rendering with a new (equal) options object keeps the same client.
    root.rerender({ options: { ...options }, children: 'app' });
    assert.equal(value().client, client);

    clock.advance(50);
    const call = await fetch.nextCall();
    assert.equal(call.headers.get('authorization'), 'Bearer t1');
    call.open().push(connectedFrame());
    await nextState(client, 'open');
    assert.equal(value().state, 'open');
    assert.deepEqual(states, ['open']);

    root.unmount();
    await call.aborted;
    assert.equal(client.state, 'closed');
    assert.equal(fetch.calls.length, 1);
  });

  test('with a client: uses it and leaves closing to its owner', () => {
    const { render, bindings } = setup();
    const client = fakeClient('connecting');
    const root = render(bindings.RealtimeProvider, { client, children: null });
    assert.equal(root.output.props.value.client, client);
    assert.equal(root.output.props.value.state, 'connecting');
    client.setState('open');
    assert.equal(root.output.props.value.state, 'open');
    root.unmount();
    assert.deepEqual(client.log, []);
  });

  test('needs a client or options', () => {
    const { render, bindings } = setup();
    assert.throws(() => render(bindings.RealtimeProvider, { children: null }), TypeError);
  });

  test('end to end: provider, hook and a real client over a fake fetch', async () => {
    const { render, bindings } = setup();
    const clock = new FakeClock();
    const fetch = createFakeFetch();
    const provider = render(bindings.RealtimeProvider, {
      options: { url: 'https://example.com/rt', fetch, clock, idleTimeoutMs: 0 },
    });
    const ctx = provider.output.props.value;
    const got = [];
    const hook = render(
      () => bindings.useRealtimeChannel('booking:42', (e) => got.push(e)),
      {},
      { contexts: new Map([[bindings.RealtimeContext, ctx]]) },
    );
    clock.advance(50);
    const call = await fetch.nextCall();
    assert.deepEqual(call.channels, ['booking:42']);
    const body = call.open();
    const arrived = new Promise((resolve) => ctx.client.on('booking_update', resolve));
    body.push(connectedFrame() + eventFrame({ id: 'e-1', type: 'booking_update', channel: 'booking:42', data: { s: 1 } }));
    await arrived;
    assert.deepEqual(got.map((e) => [e.type, e.id, e.data]), [['booking_update', 'e-1', { s: 1 }]]);
    hook.unmount();
    provider.unmount();
    assert.equal(ctx.client.state, 'closed');
  });
});

describe('useConnectionState and useRealtimeClient', () => {
  test('read the provider context', () => {
    const { render, bindings, withClient } = setup();
    const client = fakeClient('reconnecting');
    const Comp = () => [bindings.useConnectionState(), bindings.useRealtimeClient()];
    assert.deepEqual(render(Comp, {}, { contexts: withClient(client) }).output, ['reconnecting', client]);
    assert.deepEqual(render(Comp).output, ['closed', null]);
  });
});
