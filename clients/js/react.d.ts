// Type declarations for herald-client/react.
import type { Context, ReactElement, ReactNode } from 'react';
import type { ClientOptions, ConnectionState, HeraldClient, HeraldEvent, PresenceMember } from './index.js';

export interface RealtimeContextValue {
  /** null until the provider has created its client (options mode, before the first effect). */
  client: HeraldClient | null;
  state: ConnectionState;
}

export declare const RealtimeContext: Context<RealtimeContextValue | null>;

export type RealtimeProviderProps =
  | {
      /** An existing client; its owner closes it. */
      client: HeraldClient;
      options?: undefined;
      children?: ReactNode;
    }
  | {
      client?: undefined;
      /** Options for createClient: the provider creates the client on mount, closes it on
       * unmount, and recreates it only when `options.url` changes. `getToken` and
       * `onStateChange` are always read from the latest props. */
      options: ClientOptions;
      children?: ReactNode;
    };

/** One connection for the whole app. */
export declare function RealtimeProvider(props: RealtimeProviderProps): ReactElement;

export interface ChannelHookResult {
  /** state === "open" */
  isConnected: boolean;
  state: ConnectionState;
}

/** Calls `callback` with every event of `channel` (any type). The callback may change on every
 * render without resubscribing. Outside a provider it does nothing (isConnected false). */
export declare function useRealtimeChannel<T = unknown>(
  channel: string | null | undefined,
  callback: (event: HeraldEvent<T>) => void,
): ChannelHookResult;

export interface EventStreamOptions<T = unknown> {
  /** Channels to receive (added to the app's connection while mounted). */
  channels?: readonly string[];
  /** Each event of those channels, and each event with no channel (the user's own, broadcasts). */
  onEvent?: (event: HeraldEvent<T>) => void;
}

export interface EventStreamResult<T = unknown> extends ChannelHookResult {
  lastEvent: HeraldEvent<T> | null;
}

export declare function useEventStream<T = unknown>(options?: EventStreamOptions<T>): EventStreamResult<T>;

export interface PresenceOptions {
  /** A failed fetch of the list (HeraldRequestError: 404 presence_off, 403, …). */
  onError?: (error: Error) => void;
}

/** Who is on `channel`, sorted by user: empty until the first answer (and outside a provider or
 * with no channel). Subscribes to the channel (this user is on it too). Fetches the list, applies
 * `join` (as `{ user, connections: 1, presence: null }`) and `leave` events at once, and refetches
 * 250 ms after them and after every reconnection for exact counts and presence objects. The
 * array is a new one only when the list changes. */
export declare function usePresence<P = unknown>(
  channel: string | null | undefined,
  options?: PresenceOptions,
): readonly PresenceMember<P>[];

/** The provider's connection state ("closed" outside a provider). */
export declare function useConnectionState(): ConnectionState;

/** The provider's client (null outside a provider or before it exists). */
export declare function useRealtimeClient(): HeraldClient | null;

/** Builds the bindings against a given React (what this module does with `react`). */
export declare function createReactBindings(react: typeof import('react')): {
  RealtimeContext: typeof RealtimeContext;
  RealtimeProvider: typeof RealtimeProvider;
  useRealtimeClient: typeof useRealtimeClient;
  useConnectionState: typeof useConnectionState;
  useRealtimeChannel: typeof useRealtimeChannel;
  useEventStream: typeof useEventStream;
  usePresence: typeof usePresence;
};
