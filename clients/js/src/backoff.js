// Reconnection delays: exponential backoff with full jitter.
//
//   delay = random(0, min(cap, base * 2^attempt))
//
// "Full jitter" spreads reconnecting clients uniformly over the whole window, so a gateway restart
// does not bring every browser back in the same millisecond. `base` is the server's `retry:` value
// when it sent one (the gateway's `--retry-ms`), else the client's default.

import { LONGEST_TIMEOUT_MS } from './timer.js';

/** The real clock: `Date.now` and the global timers. */
export const systemClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id),
});

export const DEFAULT_BASE_MS = 1000;
export const DEFAULT_CAP_MS = 30000;

/**
 * The upper bound of the jitter window for `attempt` (0-based): `min(cap, base * 2^attempt)`.
 * A base larger than the cap (a server asking for a long pause) is honoured as it is.
 */
export function backoffCeiling(attempt, base = DEFAULT_BASE_MS, cap = DEFAULT_CAP_MS) {
  const b = Math.max(0, Number(base) || 0);
  const c = Math.max(b, Number(cap) || 0);
  const n = Math.max(0, Math.min(Math.floor(attempt) || 0, 52));
  return Math.min(c, b * 2 ** n);
}

/**
 * One full-jitter delay in whole milliseconds, uniform over [0, ceiling].
 *
 * @param {number} attempt 0 for the first retry after a success
 * @param {{base?: number, cap?: number, random?: () => number}} [options]
 */
export function fullJitter(attempt, options = {}) {
  const { base = DEFAULT_BASE_MS, cap = DEFAULT_CAP_MS, random = Math.random } = options;
  const ceiling = backoffCeiling(attempt, base, cap);
  const r = Math.min(Math.max(Number(random()) || 0, 0), 1);
  return Math.min(ceiling, Math.floor(r * (ceiling + 1)));
}

/**
 * Stateful backoff: counts attempts since the last success.
 *
 *   const b = new Backoff({ base: 1000, cap: 30000 });
 *   const ms = b.next(serverRetryMs);   // then attempt 1, 2, …
 *   b.reset();                          // after a successful connection
 */
export class Backoff {
  #attempt = 0;

  /**
   * @param {{base?: number, cap?: number, random?: () => number,
   *          clock?: {setTimeout: Function, clearTimeout: Function}}} [options]
   */
  constructor(options = {}) {
    this.base = options.base ?? DEFAULT_BASE_MS;
    this.cap = options.cap ?? DEFAULT_CAP_MS;
    this.random = options.random ?? Math.random;
    this.clock = options.clock ?? systemClock;
  }

  /** Attempts made since the last `reset()`. */
  get attempt() {
    return this.#attempt;
  }

  /** The jitter window of the next delay. */
  ceiling(serverBase) {
    return backoffCeiling(this.#attempt, serverBase ?? this.base, this.cap);
  }

  /** The next delay (ms); `serverBase`, when given, replaces the default base. */
  next(serverBase) {
    const ms = fullJitter(this.#attempt, {
      base: serverBase ?? this.base,
      cap: this.cap,
      random: this.random,
    });
    this.#attempt += 1;
    return ms;
  }

  reset() {
    this.#attempt = 0;
  }

  /**
   * Resolves after `ms` on this backoff's clock; rejects with an AbortError when `signal` aborts.
   */
  wait(ms, signal) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortError(signal));
        return;
      }
      const onAbort = () => {
        this.clock.clearTimeout(id);
        reject(abortError(signal));
      };
      const id = this.clock.setTimeout(
        () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        Math.min(ms, LONGEST_TIMEOUT_MS),
      );
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

function abortError(signal) {
  if (signal?.reason !== undefined) return signal.reason;
  const err = new Error('The operation was aborted');
  err.name = 'AbortError';
  return err;
}
