// The client's timers, on the client's clock: a Timer (the retry, an attempt's silence) has at
// most one pending at a time and is named by the field that holds it; a Debounce (a change of
// channels) waits for a quiet moment, but not for ever.

/** The longest delay setTimeout holds (2^31 - 1 ms); a longer one fires at once. */
export const LONGEST_TIMEOUT_MS = 2 ** 31 - 1;

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

  /**
   * Runs `fn` once after `ms` (at most about 24 days, the longest setTimeout holds: a longer
   * delay, a server's `retry:` say, would fire at once), in place of whatever was set before.
   */
  set(ms, fn) {
    this.clear();
    this.#id = this.#clock.setTimeout(
      () => {
        this.#id = null;
        fn();
      },
      Math.min(ms, LONGEST_TIMEOUT_MS),
    );
  }

  clear() {
    if (this.#id === null) return;
    const id = this.#id;
    this.#id = null;
    this.#clock.clearTimeout(id);
  }
}

/**
 * Runs the latest function given to `call()` once `ms` have passed without another call, and at
 * most `maxMs` after the first call of a burst, so that changes made without pause still land.
 */
export class Debounce {
  #clock;
  #timer;
  #ms;
  #maxMs;
  #start = 0; // the first call of the pending burst

  /**
   * @param {{ now: () => number, setTimeout: (fn: () => void, ms: number) => unknown,
   *           clearTimeout: (id: unknown) => void }} clock
   */
  constructor(clock, ms, maxMs) {
    this.#clock = clock;
    this.#timer = new Timer(clock);
    this.#ms = ms;
    this.#maxMs = Math.max(ms, maxMs);
  }

  /** Whether a call is waiting. */
  get pending() {
    return this.#timer.pending;
  }

  call(fn) {
    const now = this.#clock.now();
    if (!this.#timer.pending) this.#start = now;
    const wait = Math.max(0, Math.min(this.#ms, this.#start + this.#maxMs - now));
    this.#timer.set(wait, fn);
  }

  clear() {
    this.#timer.clear();
  }
}
