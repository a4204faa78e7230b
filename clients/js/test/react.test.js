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
  };
}

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
