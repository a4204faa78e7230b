// React bindings, written against an injected React so they need no build step and no bare import
// (src/react.js passes the real one). The shapes follow the original hooks: RealtimeProvider,
// useRealtimeChannel, useEventStream; plus useConnectionState and useRealtimeClient.

import { createClient } from './client.js';

/**
 * Builds the bindings for a given React (>= 18: uses useSyncExternalStore).
 * @param {typeof import('react')} React
 */
export function createReactBindings(React) {
  const {
    createContext,
    createElement,
    useCallback,
    useContext,
    useEffect,
    useLayoutEffect,
    useMemo,
    useRef,
    useState,
    useSyncExternalStore,
  } = React;

  // Layout effects warn during server rendering; there is nothing to keep fresh there anyway.
  const useIsomorphicLayoutEffect = typeof document !== 'undefined' ? useLayoutEffect : useEffect;

  /** Holds the latest value in a ref, so effects can call it without depending on it. */
  function useLatest(value) {
    const ref = useRef(value);
    useIsomorphicLayoutEffect(() => {
      ref.current = value;
    });
    return ref;
  }

  const RealtimeContext = createContext(null);
  RealtimeContext.displayName = 'HeraldRealtime';

  /**
   * One connection for the whole app. Pass an existing `client` (you own it and close it), or
   * `options` for `createClient` (the provider creates the client on mount, closes it on unmount,
   * and recreates it only when `options.url` changes; `getToken` and `onStateChange` are always
   * read from the latest props).
   */
  function RealtimeProvider({ client, options, children }) {
    if (!client && !options) {
      throw new TypeError('RealtimeProvider needs a `client` or `options` prop');
    }
    const optionsRef = useLatest(options);
    const [owned, setOwned] = useState(null);
    const url = options?.url;

    useEffect(() => {
      if (client) return undefined;
      const o = optionsRef.current;
      const created = createClient({
        ...o,
        getToken: o.getToken ? (ctx) => optionsRef.current.getToken(ctx) : undefined,
        onStateChange: (state, prev) => optionsRef.current?.onStateChange?.(state, prev),
      });
      setOwned(created);
      return () => {
        created.close();
        setOwned((current) => (current === created ? null : current));
      };
    }, [client, url]);

    const active = client ?? owned;
    const subscribe = useCallback(
      (notify) => (active ? active.onStateChange(notify) : () => {}),
      [active],
    );
    const getSnapshot = useCallback(() => (active ? active.state : 'connecting'), [active]);
    const state = useSyncExternalStore(subscribe, getSnapshot, () => 'connecting');
    const value = useMemo(() => ({ client: active, state }), [active, state]);
    return createElement(RealtimeContext.Provider, { value }, children);
  }

  /** The provider's client, or null outside a provider (or before it has created one). */
  function useRealtimeClient() {
    return useContext(RealtimeContext)?.client ?? null;
  }

  /** "connecting" | "open" | "reconnecting" | "closed" ("closed" outside a provider). */
  function useConnectionState() {
    const ctx = useContext(RealtimeContext);
    return ctx ? ctx.state : 'closed';
  }

  /**
   * Calls `callback` with every event of `channel`. The callback may change on every render
   * without resubscribing; changing `channel` resubscribes.
   */
  function useRealtimeChannel(channel, callback) {
    const ctx = useContext(RealtimeContext);
    const client = ctx?.client ?? null;
    const callbackRef = useLatest(callback);
    useEffect(() => {
      if (!client || !channel) return undefined;
      return client.subscribe(channel, (event) => callbackRef.current?.(event));
    }, [client, channel]);
    const state = ctx ? ctx.state : 'closed';
    return { isConnected: state === 'open', state };
  }

  /**
   * Receives the events of `channels` plus the user's own and broadcast events (the ones with no
   * channel). `lastEvent` is the latest of them.
   */
  function useEventStream({ channels = [], onEvent } = {}) {
    const ctx = useContext(RealtimeContext);
    const client = ctx?.client ?? null;
    const onEventRef = useLatest(onEvent);
    const [lastEvent, setLastEvent] = useState(null);
    const key = [...new Set(channels)].sort().join(',');

    useEffect(() => {
      if (!client) return undefined;
      const deliver = (event) => {
        setLastEvent(event);
        onEventRef.current?.(event);
      };
      const offs = (key === '' ? [] : key.split(',')).map((ch) => client.subscribe(ch, deliver));
      offs.push(
        client.on('*', (event) => {
          if (event.channel == null) deliver(event);
        }),
      );
      return () => {
        for (const off of offs) off();
      };
    }, [client, key]);

    const state = ctx ? ctx.state : 'closed';
    return { isConnected: state === 'open', state, lastEvent };
  }

  return {
    RealtimeContext,
    RealtimeProvider,
    useRealtimeClient,
    useConnectionState,
    useRealtimeChannel,
    useEventStream,
  };
}
