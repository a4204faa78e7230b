// Handlers by key (a channel, an event type): added and removed at any time, even from a handler
// being called; one that throws is reported and the others still run.

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

/** Reports a handler's error the way the page reports uncaught ones, without stopping the client. */
export function reportError(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else if (typeof console !== 'undefined') console.error(err);
}
