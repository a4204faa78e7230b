// One timer of the client's (retry, debounce, idle), on the client's clock: at most one pending
// at a time, named by the field that holds it.

export class Timer {
  #clock;
  #id = null;

  /** @param {{ setTimeout: (fn: () => void, ms: number) => unknown, clearTimeout: (id: unknown) => void }} clock */
  constructor(clock) {
    this.#clock = clock;
  }

  /** Whether it is set and has not fired. */
  get pending() {
    return this.#id !== null;
  }

  /** Runs `fn` once after `ms`, in place of whatever was set before. */
  set(ms, fn) {
    this.clear();
    this.#id = this.#clock.setTimeout(() => {
      this.#id = null;
      fn();
    }, ms);
  }

  clear() {
    if (this.#id === null) return;
    const id = this.#id;
    this.#id = null;
    this.#clock.clearTimeout(id);
  }
}
