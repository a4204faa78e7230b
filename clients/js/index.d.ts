// Type declarations for herald-client (the sources are plain JavaScript in src/).

/** "connecting" before the first `connected` frame, "open" while streaming, "reconnecting" after a
 * loss (or while paused on a hidden page), "closed" after close() or a fatal refusal. */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export declare const CONNECTING: 'connecting';
export declare const OPEN: 'open';
export declare const RECONNECTING: 'reconnecting';
export declare const CLOSED: 'closed';

/** Event types the gateway reserves for its control frames. */
export declare const CONTROL_EVENTS: readonly ['connected', 'reset', 'token_expired'];

/** Who an event was addressed to. */
export type Target = 'user' | 'channel' | 'broadcast';

/** An application event: the gateway's envelope plus the SSE type and id. */
export interface HeraldEvent<T = unknown> {
  /** The publisher's event type (the SSE `event:` field), e.g. "booking_update"; "message" by default. */
  type: string;
  /** This event's own id (`<epoch>-<seq>`) for durable events; null for ephemeral ones. */
  id: string | null;
  /** The stream's last event id when this event was dispatched (the resume cursor). */
  lastEventId: string;
  /** The channel it was published to, or null for user and broadcast events. */
  channel: string | null;
  /** null only for a frame that is not a Herald envelope. */
  target: Target | null;
  /** The publisher's JSON payload. */
  data: T;
  /** For events sent by clients: the sending user, stamped by the gateway. */
  from?: string;
}

/** The data of the `connected` frame. */
export interface ConnectedInfo {
  connectionId: string;
  user: string;
  channels: string[];
  resumed: boolean;
}

export interface ConnectedEvent {
  type: 'connected';
  data: ConnectedInfo;
}

/** The gateway could not resume: the app should refetch its state. */
export interface ResetEvent {
  type: 'reset';
  data: { reason: 'history_expired' | 'epoch_changed' | 'too_many' | 'missed' | (string & {}) };
}

/** The token reached its `exp`; the client gets a fresh one from getToken() and resumes. */
export interface TokenExpiredEvent {
  type: 'token_expired';
  data: { reason: 'token_expired' | (string & {}) };
}

/** What a token endpoint answers, e.g. herald-server's tokenHandler: `{ token, expiresIn }`. */
export interface TokenAnswer {
  token: string;
  [more: string]: unknown;
}

/** A refused connection, a failed getToken(), or an event past `maxEventLength`. */
export interface HeraldErrorEvent {
  type: 'error';
  /** The HTTP status (0 when no response was involved). */
  status: number;
  /** The gateway's error code ("unauthorized", "channel_not_allowed", …), or `http_<status>`,
   * "token_unavailable", "bad_content_type", "invalid_url", "event_too_large". */
  error: string;
  /** With "event_too_large": the id of the event stepped over (null when it had none). */
  id?: string | null;
  message: string;
  /** The parsed JSON body of the refusal, when there was one. */
  body?: unknown;
  /** true: the client is now closed (400, 403, 401 without getToken, other 4xx). false: it retries. */
  fatal: boolean;
  cause?: unknown;
}

/** The data of a `presence` event: someone's first connection to the channel opened (`join`),
 * or their last one closed (`leave`), across every gateway. */
export interface PresenceChange {
  action: 'join' | 'leave';
  user: string;
}

/** One user on a channel, as `presence()` reports it. */
export interface PresenceMember<P = unknown> {
  user: string;
  /** Their open connections carrying the channel, across every gateway. */
  connections: number;
  /** The `presence` claim of their token (dev mode: `?presence=` on /events), or null. */
  presence: P | null;
}

/** The answer of `presence()`. */
export interface PresenceSnapshot<P = unknown> {
  channel: string;
  /** Sorted by user. */
  members: PresenceMember<P>[];
}

/** Options of `publish()` and `presence()`. */
export interface RequestOptions {
  /** Aborts the request (the promise rejects with an AbortError). */
  signal?: AbortSignal;
}

/** A refused or failed `publish()` or `presence()`. */
export declare class HeraldRequestError extends Error {
  constructor(info: {
    status: number;
    error: string;
    message: string;
    body?: unknown;
    retryAfter?: number | null;
    cause?: unknown;
  });
  name: 'HeraldRequestError';
  /** The HTTP status (0 when no response came). */
  status: number;
  /** The gateway's error code ("rate_limited", "publish_not_allowed", "too_large",
   * "presence_off", …), or `http_<status>`, "network_error", "token_unavailable",
   * "invalid_url", "bad_response". */
  error: string;
  /** The parsed JSON body of the refusal, or null. */
  body: unknown;
  /** Seconds to wait before sending again: set on a 429 (null when the gateway named no
   * Retry-After, or the browser could not read it) and on any answer with a Retry-After. */
  retryAfter?: number | null;
}

export interface ControlEventMap {
  connected: ConnectedEvent;
  reset: ResetEvent;
  token_expired: TokenExpiredEvent;
  error: HeraldErrorEvent;
}

export interface GetTokenContext {
  /** true when the previous token was refused (401) or expired (token_expired). */
  refresh: boolean;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

/** The part of `document` the client uses for `pauseWhenHidden`. */
export interface VisibilitySource {
  readonly visibilityState: string;
  addEventListener(type: 'visibilitychange', listener: () => void): void;
  removeEventListener(type: 'visibilitychange', listener: () => void): void;
}

export interface ClientOptions {
  /** The gateway base URL, possibly with a path prefix and query (e.g. `?token=…`); the client
   * requests `<url>/events`. Relative URLs resolve against the page. */
  url: string;
  /** Returns the client token (a JWT) sent as `Authorization: Bearer`. Called before every
   * connection attempt; `refresh` is true after a 401 or token_expired. Without it the client
   * relies on the `herald_token` cookie or a `token` in `url`. It may answer a token endpoint's
   * JSON, `{ token, … }`, as herald-server's tokenHandler does. */
  getToken?: (
    context: GetTokenContext,
  ) => string | TokenAnswer | null | undefined | Promise<string | TokenAnswer | null | undefined>;
  /** Channels always carried, besides those with subscribe() handlers. */
  channels?: string[];
  /** Close the connection while the page is hidden; reconnect (resuming) when it is visible.
   * Cannot be combined with `share: true`; setting it turns sharing off by default. */
  pauseWhenHidden?: boolean;
  /** Share one stream with the other tabs of this origin, `url` and user (default true without
   * pauseWhenHidden, where the Web Locks API and BroadcastChannel exist). */
  share?: boolean;
  /** Who the user is, for sharing, when getToken's token is not a JWT with a `sub`. */
  shareKey?: string;
  /** Where to find `navigator.locks` and `BroadcastChannel` (default: the globals). */
  shareEnv?: ShareEnv;
  /** The fetch to use (default: the global fetch). */
  fetch?: typeof fetch;
  /** Called with every state change. */
  onStateChange?: (state: ConnectionState, previous: ConnectionState) => void;
  /** Send cookies cross-origin (`credentials: 'include'`). Default: true without getToken, else false. */
  withCredentials?: boolean;
  /** Resume from this id on the first connection (e.g. one saved before a page reload). */
  lastEventId?: string;
  /** Called with the text of each comment line (the gateway's `heartbeat`). */
  onComment?: (text: string) => void;
  /** Backoff base before the server has sent `retry:` (ms, default 1000). */
  retryBaseMs?: number;
  /** Backoff cap (ms, default 30000). A larger server `retry:` is still honoured. */
  retryCapMs?: number;
  /** Reconnect when nothing (not even a heartbeat) arrives for this long (ms, default 45000; 0 = off). */
  idleTimeoutMs?: number;
  /** The longest line, and the longest data of one event, the stream may send (characters, default 16 MiB); past it the client drops the stream and resumes. */
  maxEventLength?: number;
  /** Channel changes within this window share one reconnect (ms, default 50). */
  debounceMs?: number;
  /** Upper bound of the debounce when changes keep coming (ms, default 500). */
  maxDebounceMs?: number;
  /** Random source for jitter, in [0, 1) (default Math.random). */
  random?: () => number;
  /** Timers and time (default: the global ones). */
  clock?: Clock;
  /** Visibility source for pauseWhenHidden (default: the global document). */
  document?: VisibilitySource;
}

/** The globals sharing uses (an injection point for tests). */
export interface ShareEnv {
  navigator?: { locks?: unknown };
  locks?: unknown;
  BroadcastChannel?: unknown;
}

/** A tab's part in a shared connection: "leader" holds the stream, "follower" reads the
 * leader's, "solo" streams on its own, "joining" is finding its group. */
export type ShareRole = 'leader' | 'follower' | 'solo' | 'joining';

export type Unsubscribe = () => void;

export declare class HeraldClient {
  constructor(options: ClientOptions);
  /** The connection state (a follower's: its leader's stream). */
  readonly state: ConnectionState;
  /** This tab's part in the shared connection. */
  readonly role: ShareRole;
  /** The resume cursor: the id of the last event seen, or "". */
  readonly lastEventId: string;
  /** The channels this client subscribes to, sorted. */
  readonly channels: string[];
  /** The last `connected` frame's data, or null. */
  readonly connection: ConnectedInfo | null;
  /** Whether the connection is paused because the page is hidden. */
  readonly paused: boolean;

  /** Every event of `channel`. The first handler of a channel (or removing the last) reconnects
   * once, debounced, resuming from the last event id. Throws TypeError for an invalid name. */
  subscribe<T = unknown>(channel: string, handler: (event: HeraldEvent<T>) => void): Unsubscribe;

  /** Control events: "connected", "reset", "token_expired", "error". */
  on<K extends keyof ControlEventMap>(type: K, handler: (event: ControlEventMap[K]) => void): Unsubscribe;
  /** Presence changes of every subscribed channel with presence. */
  on(type: 'presence', handler: (event: HeraldEvent<PresenceChange>) => void): Unsubscribe;
  /** Every application event (and `presence` events). */
  on<T = unknown>(type: '*', handler: (event: HeraldEvent<T>) => void): Unsubscribe;
  /** Application events of one type, whatever their target. */
  on<T = unknown>(type: string, handler: (event: HeraldEvent<T>) => void): Unsubscribe;

  /** Sends a client event to `channel` (POST <url>/v1/client-events, the stream's credentials);
   * everyone on the channel, this connection included, receives it with `from` set to the sender.
   * Resolves when the gateway accepted it (202). Rejects with a HeraldRequestError (429 with
   * `retryAfter`, 403 publish_not_allowed, 413 too_large, …), or a TypeError for an invalid
   * channel or type (see isValidEventType) or data that is not JSON. */
  publish(channel: string, type: string, data?: unknown, options?: RequestOptions): Promise<void>;

  /** Who is on `channel` now (GET <url>/v1/presence/<channel>). Changes arrive as `presence`
   * events of the channel. Rejects with a HeraldRequestError (404 presence_off, 403, …). */
  presence<P = unknown>(channel: string, options?: RequestOptions): Promise<PresenceSnapshot<P>>;

  /** Listens to state changes. */
  onStateChange(listener: (state: ConnectionState, previous: ConnectionState) => void): Unsubscribe;

  /** Reconnects now (resuming); also reopens after a fatal refusal. No-op after close(). */
  reconnect(): void;

  /** Closes the connection for good. */
  close(): void;
}

export declare function createClient(options: ClientOptions): HeraldClient;

/** 1–128 ASCII letters, digits and `_ - : @ = + ~`, `.` between non-empty segments. */
export declare function isValidName(name: unknown): name is string;

/** 1–64 ASCII letters, digits and `_ - : .`; not `connected`, `reset`, `token_expired`,
 * `presence` or `error`. */
export declare function isValidEventType(type: unknown): type is string;

/** `<base>/events?channels=…` with the base's path prefix and other query parameters kept. */
export declare function eventsUrl(base: string, channels: readonly string[]): string;
