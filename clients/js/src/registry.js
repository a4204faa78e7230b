// Handlers by key (a channel, an event type): added and removed at any time, even from a handler
// being called; one that throws is reported and the others still run. And a client's
// subscriptions: its channels, and which handlers an event is for.
//
// Only relative imports: a browser can load this file directly as a module.

import { isValidName } from './names.js';

/** Handlers under keys. */
export class Registry {
  #map = new Map(); // key -> Set<{ handler, active }>

  /**
   * Adds `handler` under `key`. `first`: the key had no handler before. `unsubscribe()` removes
   * it (once); `onEmpty` runs when that leaves the key without handlers.
   *
   * @returns {{ first: boolean, unsubscribe: () => void }}
   */
  add(key, handler, onEmpty = null) {
    let set = this.#map.get(key);
    const first = !set;
    if (!set) {
      set = new Set();
      this.#map.set(key, set);
    }
    const entry = { handler, active: true };
    set.add(entry);
    const unsubscribe = () => {
      if (!entry.active) return;
      entry.active = false;
      const current = this.#map.get(key);
      if (!current) return;
      current.delete(entry);
      if (current.size === 0) {
        this.#map.delete(key);
        onEmpty?.();
      }
    };
    return { first, unsubscribe };
  }

  has(key) {
    return this.#map.has(key);
  }

  keys() {
    return this.#map.keys();
  }

  /** Calls each handler of `key` with `event`, as the set was when the call began. */
  emit(key, event) {
    const set = this.#map.get(key);
    if (!set) return;
    for (const entry of [...set]) {
      if (!entry.active) continue;
      try {
        entry.handler(event);
      } catch (err) {
        reportError(err);
      }
    }
  }
}

/** A client's channels and handlers: `subscribe()`'s by channel, `on()`'s by event type. */
export class Subscriptions {
  #static = new Set(); // the channels of the URL and of the `channels` option, for good
  #channels = new Registry(); // channel -> its subscribe() handlers
  #handlers = new Registry(); // event type (or '*') -> its on() handlers

  /** Subscribes to `channel` for the client's life, with no handler of its own. */
  addStatic(channel) {
    if (!isValidName(channel)) {
      throw new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`);
    }
    this.#static.add(channel);
  }

  /**
   * Adds a handler of `channel`'s events. `onChange` runs when that makes the channel subscribed
   * (its first handler), and when its unsubscribe makes it not (its last); never for a channel
   * subscribed for good.
   *
   * @returns {() => void} unsubscribe
   */
  subscribe(channel, handler, onChange) {
    if (!isValidName(channel)) {
      throw new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`);
    }
    if (typeof handler !== 'function') throw new TypeError('herald: handler must be a function');
    const changed = () => {
      if (!this.#static.has(channel)) onChange();
    };
    const { first, unsubscribe } = this.#channels.add(channel, handler, changed);
    if (first) changed();
    return unsubscribe;
  }

  /** Adds a handler of events of `type`. @returns {() => void} unsubscribe */
  on(type, handler) {
    if (typeof type !== 'string' || type === '') throw new TypeError('herald: event type required');
    if (typeof handler !== 'function') throw new TypeError('herald: handler must be a function');
    return this.#handlers.add(type, handler).unsubscribe;
  }

  /** The channels subscribed to, sorted. */
  channels() {
    const all = new Set(this.#static);
    for (const ch of this.#channels.keys()) all.add(ch);
    return [...all].sort();
  }

  /** Calls the handlers of `type` with `event`. */
  emit(type, event) {
    this.#handlers.emit(type, event);
  }

  /**
   * Hands an application event to its channel's handlers (none when the channel is not subscribed
   * to: a leader's stream carries its followers' channels too), then its type's, then `*`'s.
   * When `stopped()` turns true meanwhile (a handler closed the client, …), the rest are skipped.
   */
  dispatch(event, stopped) {
    if (event.channel != null) {
      if (!this.#static.has(event.channel) && !this.#channels.has(event.channel)) return;
      this.#channels.emit(event.channel, event);
      if (stopped()) return;
    }
    this.#handlers.emit(event.type, event);
    if (stopped()) return;
    this.#handlers.emit('*', event);
  }
}

/** Reports a handler's error the way the page reports uncaught ones, without stopping the client. */
export function reportError(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else if (typeof console !== 'undefined') console.error(err);
}
