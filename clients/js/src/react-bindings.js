// React bindings, written against an injected React so they need no build step and no bare import
// (src/react.js passes the real one). The shapes follow the original hooks: RealtimeProvider,
// useRealtimeChannel, useEventStream; plus useConnectionState, useRealtimeClient and usePresence.

import { createClient } from './client.js';

/** How long after a presence change (or a reconnection) usePresence refetches the list. */
const PRESENCE_REFETCH_MS = 250;

const NO_MEMBERS = Object.freeze([]);

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

  const RealtimeContext = createContext(/** @type {import('../react.js').RealtimeContextValue | null} */ (null));
  RealtimeContext.displayName = 'HeraldRealtime';

  /**
   * One connection for the whole app. Pass an existing `client` (you own it and close it), or
   * `options` for `createClient` (the provider creates the client on mount, closes it on unmount,
   * and recreates it only when `options.url` changes; `getToken` and `onStateChange` are always
   * read from the latest props).
   */
  /** @param {import('../react.js').RealtimeProviderProps} props */
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
  /**
   * @template [T=unknown]
   * @param {import('../react.js').EventStreamOptions<T>} [options]
   * @returns {import('../react.js').EventStreamResult<T>}
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

  /**
   * Who is on `channel`: `[{ user, connections, presence }]`, sorted by user (empty until the
   * first answer, and outside a provider). Subscribes to the channel, so this user is on it too.
   * Fetches the list, applies `join` and `leave` events at once, and refetches shortly after them
   * (and after every reconnection, which may have missed some) for exact counts and presence
   * objects. `onError` receives a failed fetch (e.g. 404 `presence_off`).
   */
  function usePresence(channel, { onError } = {}) {
    const ctx = useContext(RealtimeContext);
    const client = ctx?.client ?? null;
    const onErrorRef = useLatest(onError);
    const [current, setCurrent] = useState(null);

    useEffect(() => {
      if (!client || !channel) return undefined;
      let live = true;
      let members = NO_MEMBERS;
      let changes = 0; // presence events applied so far
      let inFlight = null; // the latest fetch: { controller }
      let timer = null;

      const show = (next) => {
        // An unchanged list keeps its array (and spares a render).
        if (members !== NO_MEMBERS && JSON.stringify(next) === JSON.stringify(members)) return;
        members = next;
        setCurrent({ client, channel, members: next });
      };

      const refetch = () => {
        inFlight?.controller?.abort();
        const request = { controller: typeof AbortController === 'function' ? new AbortController() : null };
        inFlight = request;
        const seen = changes;
        client.presence(channel, { signal: request.controller?.signal }).then(
          (answer) => {
            if (!live || inFlight !== request) return;
            inFlight = null;
            // An event came in meanwhile: this answer may predate it, and a refetch follows it.
            if (changes !== seen) return;
            show(Array.isArray(answer?.members) ? answer.members : NO_MEMBERS);
          },
          (err) => {
            if (!live || inFlight !== request) return;
            inFlight = null;
            onErrorRef.current?.(err);
          },
        );
      };

      const refetchSoon = () => {
        if (timer !== null) clearTimeout(timer);
        timer = setTimeout(() => {
          timer = null;
          if (live) refetch();
        }, PRESENCE_REFETCH_MS);
      };

      const offEvents = client.subscribe(channel, (event) => {
        if (event.type !== 'presence') return;
        const user = event.data?.user;
        if (typeof user !== 'string') return;
        changes += 1;
        const present = members.some((m) => m.user === user);
        if (event.data.action === 'join' && !present) {
          show([...members, { user, connections: 1, presence: null }].sort(byUser));
        } else if (event.data.action === 'leave' && present) {
          show(members.filter((m) => m.user !== user));
        }
        refetchSoon();
      });
      const offConnected = client.on('connected', refetchSoon);
      refetch();

      return () => {
        live = false;
        offEvents();
        offConnected();
        if (timer !== null) clearTimeout(timer);
        inFlight?.controller?.abort();
        inFlight = null;
      };
    }, [client, channel]);

    return current && current.client === client && current.channel === channel ? current.members : NO_MEMBERS;
  }

  return {
    RealtimeContext,
    RealtimeProvider,
    useRealtimeClient,
    useConnectionState,
    useRealtimeChannel,
    useEventStream,
    usePresence,
  };
}

function byUser(a, b) {
  return a.user < b.user ? -1 : a.user > b.user ? 1 : 0;
}
