// The Herald browser client: one streaming connection (fetch + ReadableStream + the SSE parser)
// carrying the user's events, every subscribed channel, and broadcasts; reconnection with full
// jitter; resume with Last-Event-ID; token refresh; connection state; and the part of a tab in a
// group of tabs sharing one stream.
//
// About eight hundred lines, in one class: the options and the public API with its documentation
// (the first three hundred), the connection's state machine and the tab group's protocol. The
// last two read and move the same state (the cursor, the channels asked for, the connection
// state, whether the client stopped), since the stream a tab reads is either its own or its
// leader's, and a split between them would pass all of it back and forth. What stands alone is in
// the modules below.
//
// Only relative imports: a browser can load this file directly as a module. Its parts:
// attempt.js (one attempt at the stream: its request, its stream, its silence timer),
// requests.js (publish() and presence(), URLs, refusals), registry.js (subscriptions and
// handlers), share.js (the tabs' group: election, messages, membership), names.js (what a name
// is), envelope.js (what a frame means), timer.js (named timers, the debounce), parser.js (the
// SSE bytes), backoff.js.

import { Attempt } from './attempt.js';
import { createParser } from './parser.js';
import { Backoff, systemClock } from './backoff.js';
import { parseJson, toEvent } from './envelope.js';
import { isValidName } from './names.js';
import { Subscriptions, reportError } from './registry.js';
import {
  cancelBody,
  channelsInUrl,
  eventsUrl,
  fetchPresence,
  messageOf,
  refusal,
  sendClientEvent,
} from './requests.js';
import { ShareGroup, shareSupport, tokenIdentity } from './share.js';
import { Debounce, Timer } from './timer.js';

export { CONTROL_EVENTS, isValidEventType, isValidName } from './names.js';
export { HeraldRequestError, eventsUrl } from './requests.js';

/** Connection states. */
export const CONNECTING = 'connecting';
export const OPEN = 'open';
export const RECONNECTING = 'reconnecting';
export const CLOSED = 'closed';

/** A tab's part in a shared connection (`client.role`). */
const LEADER = 'leader';
const FOLLOWER = 'follower';
const SOLO = 'solo';

/** Creates a client and schedules its connection (see `HeraldClient`). */
export function createClient(options) {
  return new HeraldClient(options);
}

export class HeraldClient {
  // configuration
  #base;
  #getToken;
  #fetch;
  #clock;
  #backoff;
  #credentials;
  #idleMs;
  #maxEventLength;
  #onComment;
  #api; // what publish() and presence() request with
  #doc = null;
  #onVisibility = null;

  // sharing one stream between the tabs of an origin and user
  /** @type {import('../index.js').ShareRole} */
  #role = SOLO;
  #group = null; // ShareGroup, once joined
  #peers = new Map(); // tab id -> its channels (every tab keeps it; the leader streams the union)
  #leaderId = null;
  #identity = null; // the user this tab shares as, when it came from a token (see #sameUser)
  #firstToken = null; // the token asked for to join, used by a connection soon after
  #firstTokenAt = 0;
  #seen = new Set(); // ids delivered lately: a new leader's resume may repeat a few
  #seenOrder = [];

  // subscriptions
  #subscriptions = new Subscriptions();
  #stateListeners = new Set();

  // connection
  /** @type {import('../index.js').ConnectionState} */
  #state = CONNECTING;
  #attempt = null; // the Attempt under way (token, fetch or stream), null between attempts
  #everOpen = false;
  #lastEventId = '';
  #serverRetry = null;
  #refreshToken = false;
  #connection = null;
  #paused = false;
  #closed = false; // close() was called
  #stopped = false; // a fatal refusal closed the client

  // timers (on the clock, so set in the constructor)
  #retry; // the next attempt after a failure
  #leaderWatch; // a follower's: its leader's silence while it says the stream is open
  #debounce; // a change of channels

  /**
   * @param {import('../index.js').ClientOptions} options
   */
  constructor(options = {}) {
    if (!options || typeof options.url !== 'string' || options.url === '') {
      throw new TypeError('herald: `url` (the gateway base URL) is required');
    }
    this.#base = options.url;
    this.#getToken = typeof options.getToken === 'function' ? options.getToken : null;
    const f = options.fetch;
    this.#fetch = typeof f === 'function' ? f : (...args) => globalThis.fetch(...args);
    this.#clock = options.clock ?? systemClock;
    this.#retry = new Timer(this.#clock);
    this.#leaderWatch = new Timer(this.#clock);
    this.#backoff = new Backoff({
      base: options.retryBaseMs,
      cap: options.retryCapMs,
      random: options.random ?? Math.random,
      clock: this.#clock,
    });
    const withCredentials = options.withCredentials ?? !this.#getToken;
    this.#credentials = withCredentials ? 'include' : 'same-origin';
    this.#api = {
      base: this.#base,
      getToken: this.#getToken,
      fetch: this.#fetch,
      credentials: this.#credentials,
      // A token of another user than the tab group's: this tab leaves the group.
      onToken: (token) => {
        if (!this.#sameUser(token)) this.#goSolo();
      },
    };
    this.#debounce = new Debounce(this.#clock, options.debounceMs ?? 50, options.maxDebounceMs ?? 500);
    this.#idleMs = options.idleTimeoutMs ?? 45000;
    this.#maxEventLength = options.maxEventLength;
    this.#onComment = typeof options.onComment === 'function' ? options.onComment : null;
    if (options.lastEventId && isCursor(String(options.lastEventId))) this.#lastEventId = String(options.lastEventId);
    if (typeof options.onStateChange === 'function') this.#stateListeners.add(options.onStateChange);

    for (const ch of channelsInUrl(this.#base)) this.#subscriptions.addStatic(ch);
    for (const ch of options.channels ?? []) this.#subscriptions.addStatic(ch);

    // Refused before anything is attached to the page, which a refused client could never detach.
    const share = options.share ?? !options.pauseWhenHidden;
    if (share && options.pauseWhenHidden) {
      throw new TypeError('herald: `share` and `pauseWhenHidden` cannot be combined');
    }

    if (options.pauseWhenHidden) {
      const doc = options.document ?? globalThis.document;
      if (doc && typeof doc.addEventListener === 'function') {
        this.#doc = doc;
        this.#onVisibility = () => this.#visibilityChanged();
        doc.addEventListener('visibilitychange', this.#onVisibility);
        this.#paused = doc.visibilityState === 'hidden';
      }
    }

    const support = share ? shareSupport(options.shareEnv ?? globalThis) : null;
    if (support) {
      this.#role = 'joining';
      this.#join(support, options.shareKey);
    }

    // The first connection waits for the debounce window too, so the subscriptions made while an
    // app mounts share one request.
    this.#channelsChanged();
  }

  /** "connecting" | "open" | "reconnecting" | "closed": the state of the stream this tab reads,
   * its own or (a follower) its leader's.
   * @returns {import('../index.js').ConnectionState} */
  get state() {
    return this.#state;
  }

  /** This tab's part in the shared connection: "leader" (holds the stream), "follower" (reads the
   * leader's), "solo" (its own stream: sharing off or unsupported), or "joining" (finding out).
   * @returns {import('../index.js').ShareRole} */
  get role() {
    return this.#role;
  }

  /** The id of the last event seen (the resume cursor), or "" before any. */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** The channels this client subscribes to (the connection carries these, and a leader's also
   * its followers'), sorted. */
  get channels() {
    return this.#subscriptions.channels();
  }

  /** The data of the last `connected` frame: {connectionId, user, channels, resumed}, or null. */
  get connection() {
    return this.#connection;
  }

  /** Whether the connection is paused because the page is hidden (`pauseWhenHidden`). */
  get paused() {
    return this.#paused;
  }

  /**
   * Receives every event of `channel` (of any type). Adding the first handler of a channel (or
   * removing the last) changes the connection's channel set: the client reconnects once, after
   * a short debounce, resuming from the last event id so nothing is missed.
   *
   * @returns {() => void} unsubscribe
   */
  subscribe(channel, handler) {
    return this.#subscriptions.subscribe(channel, handler, () => this.#channelsChanged());
  }

  /**
   * Listens for events of `type`: an application type ("booking_update", "message", …), "*"
   * for every application event, or "connected", "reset", "token_expired", "error".
   *
   * @returns {() => void} unsubscribe
   */
  on(type, handler) {
    return this.#subscriptions.on(type, handler);
  }

  /**
   * Sends a client event to everyone on `channel` (POST `<url>/v1/client-events`, with the same
   * credentials as the stream). The gateway stamps it with the sender as `from`; it is live only
   * (no id, never replayed), and comes back on this client's own connection too.
   *
   * Resolves once the gateway has accepted it (202). Rejects with a `HeraldRequestError`
   * (`status`, `error`, and for a 429 `retryAfter` in seconds), or a `TypeError` for an invalid
   * channel, type or data.
   *
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<void>}
   */
  publish(channel, type, data, options) {
    return sendClientEvent(this.#api, channel, type, data, options);
  }

  /**
   * Who is on `channel` now (GET `<url>/v1/presence/<channel>`): resolves to
   * `{ channel, members: [{ user, connections, presence }] }`, members sorted by user. Rejects
   * with a `HeraldRequestError` (404 `presence_off` when the channel has no presence).
   *
   * Changes arrive on the stream as `presence` events of the channel (to its `subscribe()`
   * handlers, `on('presence')` and `on('*')`), with `data: { action: 'join' | 'leave', user }`.
   *
   * @param {{ signal?: AbortSignal }} [options]
   */
  presence(channel, options) {
    return fetchPresence(this.#api, channel, options);
  }

  /** Calls `listener(state, previous)` on every state change. @returns unsubscribe */
  onStateChange(listener) {
    if (typeof listener !== 'function') throw new TypeError('herald: listener must be a function');
    const wrapper = (s, p) => listener(s, p);
    this.#stateListeners.add(wrapper);
    return () => {
      this.#stateListeners.delete(wrapper);
    };
  }

  /**
   * Drops the current connection (if any) and connects again now, resuming from the last event
   * id. Also reopens a client that a fatal refusal closed; does nothing after `close()`.
   */
  reconnect() {
    if (this.#closed) return;
    this.#stopped = false;
    if (this.#role === FOLLOWER || this.#role === 'joining') {
      this.#group?.post({ kind: 'reconnect' });
      return;
    }
    this.#retry.clear();
    this.#debounce.clear();
    if (this.#paused) {
      this.#endAttempt();
      this.#setState(this.#everOpen ? RECONNECTING : CONNECTING);
      return;
    }
    this.#connect();
  }

  /** Closes the connection for good. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#retry.clear();
    this.#debounce.clear();
    this.#endAttempt();
    if (this.#doc && this.#onVisibility) {
      this.#doc.removeEventListener('visibilitychange', this.#onVisibility);
    }
    this.#leave();
    this.#role = SOLO;
    this.#setState(CLOSED);
  }

  // ---------------------------------------------------------------------------------------------
  // channel set

  /** What the stream asks for: this client's channels, and a leader's followers' too. */
  #desiredChannels() {
    if (this.#role !== LEADER) return this.#subscriptions.channels();
    const all = new Set(this.#subscriptions.channels());
    for (const channels of this.#peers.values()) for (const ch of channels) all.add(ch);
    return [...all].sort();
  }

  #channelsChanged() {
    if (this.#closed || this.#stopped) return;
    this.#debounce.call(() => this.#syncChannels());
  }

  #syncChannels() {
    if (this.#closed || this.#paused) return;
    if (this.#role === 'joining') return; // the first hello carries the channels
    if (this.#role === FOLLOWER) {
      this.#hello(false);
      return;
    }
    if (this.#role === LEADER) this.#hello(false);
    if (this.#stopped) return;
    const key = this.#desiredChannels().join(',');
    if (this.#attempt) {
      if (key !== this.#attempt.key) this.#connect();
      return;
    }
    // Waiting out a backoff: the next attempt asks for the new set anyway.
    if (this.#retry.pending) return;
    this.#connect();
  }

  // ---------------------------------------------------------------------------------------------
  // connection: one Attempt at a time (#attempt); #connect ends the one under way before it makes
  // the next, so a callback of an attempt needs to check only that attempt's `ended`.

  async #connect() {
    this.#retry.clear();
    this.#endAttempt();
    if (this.#closed || this.#stopped || this.#paused) return;
    const attempt = new Attempt(this.#desiredChannels(), this.#clock);
    this.#attempt = attempt;
    this.#setState(this.#everOpen ? RECONNECTING : CONNECTING);
    // Counted from the attempt's start: a token that never comes, or a request that nobody
    // answers (a half-open connection, a proxy that swallows it), is as dead as a stream that
    // went quiet.
    attempt.watchSilence(this.#idleMs, () => {
      this.#endAttempt();
      this.#retryAfterFailure(null);
    });

    let token;
    if (this.#getToken) {
      try {
        const refresh = this.#refreshToken;
        const first = this.#firstToken;
        const fresh = first !== null && this.#clock.now() - this.#firstTokenAt < FIRST_TOKEN_MS;
        this.#firstToken = null;
        token = fresh && !refresh ? first : tokenOf(await this.#getToken({ refresh }));
      } catch (err) {
        if (attempt.ended) return;
        this.#emitError({ status: 0, error: 'token_unavailable', message: messageOf(err), fatal: false, cause: err });
        this.#retryAfterFailure(null);
        return;
      }
      if (attempt.ended) return;
      this.#refreshToken = false;
      if (!this.#sameUser(token)) {
        // Another user signed in on this tab: its stream is not the group's any more.
        this.#goSolo();
        return;
      }
    }

    const headers = { Accept: 'text/event-stream' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (this.#lastEventId) headers['Last-Event-ID'] = this.#lastEventId;

    let url;
    try {
      url = eventsUrl(this.#base, attempt.channels);
    } catch (err) {
      this.#fatal({ status: 0, error: 'invalid_url', message: messageOf(err), cause: err });
      return;
    }

    let response;
    try {
      response = await this.#fetch(url, {
        method: 'GET',
        headers,
        credentials: this.#credentials,
        signal: attempt.signal,
      });
    } catch {
      if (attempt.ended) return;
      this.#retryAfterFailure(null);
      return;
    }
    if (attempt.ended) {
      cancelBody(response);
      return;
    }

    if (response.status !== 200) {
      await this.#refused(attempt, response);
      return;
    }
    const type = (response.headers?.get?.('content-type') ?? '').toLowerCase();
    if (!type.startsWith('text/event-stream')) {
      cancelBody(response);
      this.#fatal({
        status: 200,
        error: 'bad_content_type',
        message: `expected text/event-stream, got ${type || 'no content type'}`,
      });
      return;
    }
    await this.#stream(attempt, response);
  }

  async #stream(attempt, response) {
    // A line or an event past `maxEventLength` throws out of `feed`: the read ends there, and
    // the stream with it, as a broken connection's does, and the client resumes.
    const parser = createParser({
      maxEventLength: this.#maxEventLength,
      lastEventId: this.#lastEventId,
      onEvent: (ev) => this.#frame(attempt, ev),
      onRetry: (ms) => {
        if (attempt.ended) return;
        this.#serverRetry = ms;
        // A retry: before `connected` belongs to the first frame (cleared when `connected` comes);
        // one after it, or one with no `connected` at all, is the server asking to come back later.
        attempt.retryHint = ms;
      },
      onComment: (text) => {
        if (attempt.ended) return;
        // The followers hear the stream's heartbeats too: their leader is alive (#watchLeader).
        if (this.#role === LEADER) this.#group?.post({ kind: 'alive' });
        if (!this.#onComment) return;
        try {
          this.#onComment(text);
        } catch (err) {
          reportError(err);
        }
      },
    });

    if (!response.body) {
      this.#streamEnded(attempt);
      return;
    }
    // The response came; from here on, its silence watch (started with the attempt) counts
    // what the stream sends, heartbeats included.
    attempt.heard();
    // The cursor moves with the frames handed on (#deliver), not with the parser's last event
    // id: an `id:` in a block that is never dispatched (no `data:`) moves no cursor past
    // anything the application did not get.
    const ended = await attempt.read(response.body, (chunk) => {
      try {
        parser.feed(chunk);
      } catch (err) {
        if (err instanceof RangeError) this.#tooLong(attempt, err);
        throw err;
      }
    });
    if (!ended) return;
    parser.end();
    this.#streamEnded(attempt);
  }

  /** A frame of this client's own stream. */
  #frame(attempt, ev) {
    if (attempt.ended) return;
    const frame = { type: ev.type, data: ev.data, lastEventId: ev.lastEventId, hasId: ev.hasId };
    if (ev.type === 'connected') {
      attempt.retryHint = null;
      this.#backoff.reset();
      this.#everOpen = true;
      this.#connection = parseJson(ev.data);
      this.#setState(OPEN);
      if (attempt.ended) return;
    } else if (ev.type === 'token_expired') {
      attempt.tokenExpired = true;
    }
    if (this.#role === LEADER) this.#group?.post({ kind: 'frame', frame });
    this.#deliver(frame);
  }

  /**
   * Hands a frame (of this client's stream, or of the leader's) to the handlers it is for: control
   * frames to theirs, an event of a channel only when this client subscribes to the channel. An
   * id seen lately is dropped: a new leader resumes from the last id it saw, which can be a few
   * behind another tab's.
   *
   * Control frames are never dropped so: a `reset` names the newest event the client has (a
   * `missed` one) or the history's head, ids it may well have seen, and must reach the
   * application all the same, moving the cursor to its id even if that is back. After
   * `epoch_changed` the history started over, and its ids may repeat ones seen before.
   *
   * An id that could not be sent back in `Last-Event-ID` (empty, or not a header value) counts
   * as none: it neither moves the cursor nor drops a later frame as a repeat.
   *
   * A handler that closes the client stops the frame there. One that ends its stream
   * (reconnect(), a channel change) does not: the frame was taken, the cursor is past it, and
   * the resume starts after it, so every other handler still gets it.
   */
  #deliver(frame) {
    const id = frame.hasId && isCursor(frame.lastEventId) ? frame.lastEventId : null;
    const control = frame.type === 'connected' || frame.type === 'reset' || frame.type === 'token_expired';
    const data = control ? parseJson(frame.data) : undefined;
    if (id !== null) {
      if (!control) {
        if (this.#seen.has(id)) return;
        this.#remember(id);
      } else if (frame.type === 'reset' && data?.reason === 'epoch_changed') {
        this.#seen.clear();
        this.#seenOrder = [];
      }
      // Only a frame with an id moves the cursor: the others carry the stream's, which a new
      // leader resuming from an older cursor would move back.
      this.#lastEventId = id;
    } else if (!this.#lastEventId && isCursor(frame.lastEventId)) {
      this.#lastEventId = frame.lastEventId;
    }
    switch (frame.type) {
      case 'connected':
        this.#connection = data;
        this.#emit('connected', { type: 'connected', data });
        return;
      case 'token_expired':
      case 'reset':
        this.#emit(frame.type, { type: frame.type, data });
        return;
      default:
        break;
    }
    this.#subscriptions.dispatch(toEvent(frame), () => this.#closed);
  }

  /**
   * An event past `maxEventLength` ended the stream. When its id is known, the cursor moves past
   * it: resuming from the event before, the gateway would send it again, and again, and nothing
   * after it would ever arrive. The application hears of it (an `error`, `event_too_large`, with
   * the id) and refetches what it shows, as after a `reset`.
   */
  #tooLong(attempt, err) {
    if (attempt.ended) return;
    const id = isCursor(err.eventId) ? err.eventId : null;
    if (id !== null) {
      this.#remember(id);
      this.#lastEventId = id;
    }
    this.#emitError({ status: 0, error: 'event_too_large', message: err.message, id, fatal: false });
  }

  #remember(id) {
    this.#seen.add(id);
    this.#seenOrder.push(id);
    if (this.#seenOrder.length > SEEN_IDS) this.#seen.delete(this.#seenOrder.shift());
  }

  #streamEnded(attempt) {
    if (attempt.ended) return;
    this.#endAttempt();
    if (attempt.tokenExpired) {
      this.#refreshToken = true;
      this.#retryAfterFailure(null);
      return;
    }
    // No `connected` (the capacity answer) or a late retry: (drain): wait at least what the
    // server asked for. Otherwise the ordinary jittered backoff.
    this.#retryAfterFailure(attempt.retryHint);
  }

  async #refused(attempt, response) {
    const info = await refusal(response);
    if (attempt.ended) return;
    const status = info.status;
    if (status === 401 && this.#getToken) {
      this.#refreshToken = true;
      this.#emitError({ ...info, fatal: false });
      this.#retryAfterFailure(null);
    } else if (status === 408 || status === 429 || status >= 500) {
      this.#emitError({ ...info, fatal: false });
      this.#retryAfterFailure(null);
    } else {
      this.#fatal(info);
    }
  }

  #retryAfterFailure(floor) {
    if (this.#closed || this.#stopped) return;
    this.#endAttempt();
    let delay = this.#backoff.next(this.#serverRetry ?? undefined);
    if (floor != null) delay = Math.max(delay, floor);
    this.#setState(this.#everOpen ? RECONNECTING : CONNECTING);
    if (this.#paused) return;
    this.#retry.set(delay, () => this.#connect());
  }

  #fatal(info) {
    if (this.#role === LEADER && UNION_REFUSALS.has(info.error)) {
      // The union of the tabs' channels was refused (a channel one tab may not read, too many
      // channels together, …): every tab goes back to its own stream and meets the answer it
      // would meet alone.
      this.#group?.post({ kind: 'dissolve' });
      this.#goSolo();
      return;
    }
    this.#stopped = true;
    this.#retry.clear();
    this.#debounce.clear();
    this.#endAttempt();
    this.#setState(CLOSED);
    this.#emitError({ ...info, fatal: true });
  }

  /**
   * Ends the attempt under way, if any: its request and stream stop, its timer is cleared, and
   * its callbacks that still run do nothing.
   */
  #endAttempt() {
    const attempt = this.#attempt;
    this.#attempt = null;
    attempt?.end();
  }

  #visibilityChanged() {
    if (this.#closed || !this.#doc) return;
    const hidden = this.#doc.visibilityState === 'hidden';
    if (hidden && !this.#paused) {
      this.#paused = true;
      this.#retry.clear();
      this.#debounce.clear();
      this.#endAttempt();
      if (!this.#stopped) this.#setState(this.#everOpen ? RECONNECTING : CONNECTING);
    } else if (!hidden && this.#paused) {
      this.#paused = false;
      if (!this.#stopped) this.#connect();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // events and state

  #setState(next) {
    const prev = this.#state;
    if (prev === next) return;
    this.#state = next;
    if (this.#role === LEADER && next !== CLOSED) {
      this.#group?.post({ kind: 'state', state: next, connection: this.#connection });
    }
    for (const listener of [...this.#stateListeners]) {
      try {
        listener(next, prev);
      } catch (err) {
        reportError(err);
      }
    }
  }

  #emit(type, event) {
    this.#subscriptions.emit(type, event);
  }

  #emitError(info) {
    if (this.#role === LEADER) {
      const { cause, ...shared } = info;
      this.#group?.post({ kind: 'error', info: shared });
    }
    this.#emit('error', { type: 'error', ...info });
  }

  // ---------------------------------------------------------------------------------------------
  // sharing the stream with the other tabs of this origin and user

  /** Finds this tab's group (which needs the user: from `shareKey`, or the token's `sub`) and joins it. */
  async #join(support, shareKey) {
    let identity;
    if (shareKey != null) {
      identity = `key\n${String(shareKey)}`;
    } else if (this.#getToken) {
      let token;
      try {
        token = tokenOf(await this.#getToken({ refresh: false }));
      } catch {
        token = null;
      }
      const user = tokenIdentity(token);
      if (token) {
        this.#firstToken = token;
        this.#firstTokenAt = this.#clock.now();
      }
      // A token that names no user (not a JWT): who it belongs to is unknown, so no sharing.
      identity = user === null ? null : `sub\n${user}`;
      this.#identity = user;
    } else {
      // Cookies or a token in the URL: every tab of this origin with this URL is the same user.
      identity = 'url';
    }
    if (this.#closed || this.#role !== 'joining') return;
    if (identity === null) {
      this.#role = SOLO;
      this.#syncChannels();
      return;
    }
    let base;
    try {
      base = eventsUrl(this.#base, []);
    } catch {
      base = this.#base;
    }
    try {
      this.#group = new ShareGroup({
        key: `${base}\n${identity}`,
        locks: support.locks,
        BroadcastChannel: support.BroadcastChannel,
        onMessage: (msg) => this.#message(msg),
        onJoined: () => this.#hello(true),
        onLeader: () => this.#lead(),
        onFailure: () => this.#goSolo(),
      });
    } catch {
      // No BroadcastChannel here after all (an opaque origin): stream alone.
      this.#role = SOLO;
      this.#syncChannels();
      return;
    }
    this.#role = FOLLOWER;
    this.#group.start();
  }

  /** Whether `token` is the user this tab shares as (always, when the group is not by token). */
  #sameUser(token) {
    if (this.#identity === null || this.#group === null) return true;
    return tokenIdentity(token) === this.#identity;
  }

  #leave() {
    this.#leaderWatch.clear();
    const group = this.#group;
    if (!group) return;
    this.#group = null;
    group.close(); // says bye
  }

  /** Leaves the group for good and streams on its own from its cursor. */
  #goSolo() {
    if (this.#role === SOLO || this.#closed) return;
    this.#leave();
    this.#role = SOLO;
    this.#leaderId = null;
    this.#peers.clear();
    this.#stopped = false;
    this.#connect();
  }

  /** Tells the group this tab's channels; `join` asks every other tab for theirs. */
  #hello(join) {
    this.#group?.post({ kind: 'hello', channels: this.#subscriptions.channels(), join });
  }

  /** This tab got the leader lock: it opens the stream for the union, from its own cursor. */
  async #lead() {
    if (this.#closed || !this.#group) return;
    this.#role = LEADER;
    this.#leaderWatch.clear();
    this.#leaderId = this.#group.id;
    this.#firstToken = this.#clock.now() - this.#firstTokenAt < FIRST_TOKEN_MS ? this.#firstToken : null;
    this.#group.post({ kind: 'leader' });
    // The tabs that went away without a word (the old leader, crashed tabs) leave the union.
    // Only those known before asking: a tab that said hello meanwhile is alive.
    const known = new Set(this.#peers.keys());
    const live = await this.#group.liveTabs();
    if (this.#closed || this.#role !== LEADER) return; // closed, or the group dissolved meanwhile
    if (live) for (const id of known) if (!live.has(id)) this.#peers.delete(id);
    this.#channelsChanged();
  }

  /** A message from another tab of the group. */
  #message(msg) {
    if (this.#closed || !this.#group) return;
    const from = msg.from;
    switch (msg.kind) {
      case 'hello': {
        if (!Array.isArray(msg.channels)) return;
        const before = this.#role === LEADER ? this.#desiredChannels().join(',') : '';
        this.#peers.set(from, msg.channels.filter(isValidName).slice(0, MAX_PEER_CHANNELS));
        if (msg.join) this.#hello(false);
        if (this.#role !== LEADER) return;
        // A newcomer learns where the stream is, and where it is in the stream.
        if (msg.join) {
          this.#group.post({
            kind: 'state',
            state: this.#state,
            connection: this.#connection,
            cursor: this.#lastEventId,
            to: from,
          });
        }
        if (this.#desiredChannels().join(',') !== before) this.#channelsChanged();
        return;
      }
      case 'bye': {
        const wasLeader = from === this.#leaderId;
        const before = this.#role === LEADER ? this.#desiredChannels().join(',') : '';
        this.#peers.delete(from);
        if (this.#role === LEADER) {
          if (this.#desiredChannels().join(',') !== before) this.#channelsChanged();
        } else if (wasLeader) {
          this.#leaderId = null;
          if (!this.#stopped) this.#setState(this.#everOpen ? RECONNECTING : CONNECTING);
          this.#watchLeader();
        }
        return;
      }
      case 'leader':
        this.#leaderId = from;
        if (this.#role === FOLLOWER) this.#hello(false);
        return;
      case 'reconnect':
        if (this.#role === LEADER) this.reconnect();
        return;
      case 'ping':
        // A follower that heard nothing for a while asks (#watchLeader).
        if (this.#role === LEADER) this.#group.post({ kind: 'alive' });
        return;
      case 'dissolve':
        this.#goSolo();
        return;
      default:
        break;
    }
    if (this.#role !== FOLLOWER) return;
    // What the leader's stream does.
    this.#leaderId = from;
    this.#follow(msg);
    this.#watchLeader();
  }

  /**
   * A follower watches its leader while the leader says the stream is open: after nothing from it
   * (a frame, a heartbeat it passes on) for `idleTimeoutMs`, the follower asks whether it is
   * there. A leader that does not answer within LEADER_ANSWER_MS stopped running (a tab
   * suspended in the background, a hung page) with the lock still held, and this tab streams on
   * its own, from its cursor. One that answers is only quiet (a long event arriving slowly, or
   * heartbeats slower than `idleTimeoutMs`), or this tab was the one suspended. While the leader
   * reconnects it is not watched: its own attempts are, and every tab retrying on its own would
   * only add to an outage.
   */
  #watchLeader() {
    if (this.#role !== FOLLOWER || this.#state !== OPEN || !(this.#idleMs > 0)) {
      this.#leaderWatch.clear();
      return;
    }
    this.#leaderWatch.set(this.#idleMs, () => {
      this.#group?.post({ kind: 'ping' });
      this.#leaderWatch.set(LEADER_ANSWER_MS, () => this.#goSolo());
    });
  }

  /** A message of the leader, to a follower. */
  #follow(msg) {
    switch (msg.kind) {
      case 'frame':
        if (msg.frame && typeof msg.frame.type === 'string') this.#deliver(msg.frame);
        return;
      case 'state': {
        if (msg.to !== undefined && msg.to !== this.#group.id) return;
        if (msg.state !== CONNECTING && msg.state !== OPEN && msg.state !== RECONNECTING) return;
        const welcome = msg.to !== undefined && msg.connection != null && msg.state === OPEN;
        if (msg.connection != null) this.#connection = msg.connection;
        // A newcomer takes the leader's place in the stream, so that it can resume from there
        // if it leads one day.
        if (msg.to !== undefined && !this.#lastEventId && typeof msg.cursor === 'string') this.#lastEventId = msg.cursor;
        if (msg.state === OPEN) this.#everOpen = true;
        this.#stopped = false;
        this.#setState(msg.state);
        // A tab that joins an open stream has its `connected` too.
        if (welcome) this.#emit('connected', { type: 'connected', data: this.#connection });
        return;
      }
      case 'error': {
        const info = msg.info ?? {};
        if (info.fatal) {
          this.#stopped = true;
          this.#setState(CLOSED);
        }
        this.#emit('error', { type: 'error', ...info });
        return;
      }
      default:
        return;
    }
  }
}

/** How many recent ids a client remembers to drop repeats after a change of leader. */
const SEEN_IDS = 2048;

/**
 * Whether `id` can be a resume cursor: something `Last-Event-ID` can carry back as it is (visible
 * ASCII, spaces inside only: a header value loses its outer ones), up to 128 characters.
 */
function isCursor(id) {
  return typeof id === 'string' && id.length <= 128 && /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(id);
}

/**
 * The token of what `getToken` answered: a token, or the JSON of a token endpoint (herald-server's
 * `tokenHandler` answers `{ token, expiresIn }`).
 */
function tokenOf(answer) {
  if (answer === null || typeof answer !== 'object') return answer;
  if (typeof answer.token === 'string') return answer.token;
  // A token endpoint's refusal, `{ error: 'unauthorized' }` say: no token to send.
  throw new TypeError(`getToken answered an object without a token: ${JSON.stringify(answer).slice(0, 200)}`);
}

/** How long a follower waits for its silent leader to answer before it streams on its own. */
const LEADER_ANSWER_MS = 5000;

/** How long the token a tab asked for when it joined is used for its first connection. */
const FIRST_TOKEN_MS = 5000;

/** Most channels a tab's hello adds to the union (the gateway's limit is lower anyway). */
const MAX_PEER_CHANNELS = 256;

/** Refusals of a union of channels: the tabs stream alone again, each meeting its own answer. */
const UNION_REFUSALS = new Set(['channel_not_allowed', 'too_many_channels', 'invalid_channel']);
