// One attempt at the stream: the token, the request, then the stream until it ends. The client
// makes a new Attempt for each and ends the old one first, so what an attempt started belongs to
// it alone: ending it aborts its request, cancels its stream and clears its silence timer, and
// its callbacks that still run afterwards (a fetch or a read that settles late, the rest of a
// chunk already read) see `ended` and do nothing.
//
// Only relative imports: a browser can load this file directly as a module.

import { Timer } from './timer.js';

export class Attempt {
  /** Set by `end()`; never cleared. */
  ended = false;
  /** The stream said its token expired: the next attempt asks for a fresh one. */
  tokenExpired = false;
  /** A `retry:` the server sent before `connected`, or with none: how long to stay away. */
  retryHint = null;

  #abort = new AbortController();
  #reader = null;
  #clock;
  #silence; // the stream went quiet
  #lastHeard = 0;

  /**
   * @param {string[]} channels what it asks for
   * @param {{ now: () => number, setTimeout: Function, clearTimeout: Function }} clock
   */
  constructor(channels, clock) {
    this.channels = channels;
    /** The channels as one string, to compare with the channels wanted now. */
    this.key = channels.join(',');
    this.#clock = clock;
    this.#silence = new Timer(clock);
  }

  /** The signal of its request. */
  get signal() {
    return this.#abort.signal;
  }

  /**
   * Reads the response body `body` to its end, handing each chunk to `onChunk` (and counting it as
   * heard). Resolves true when the body ended, by its end or by an error; false when the attempt
   * ended first (ending it cancels the read), even in the middle of a chunk's handling.
   *
   * @param {ReadableStream<Uint8Array>} body
   * @param {(chunk: Uint8Array) => void} onChunk
   */
  async read(body, onChunk) {
    const reader = body.getReader();
    this.#reader = reader;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this.ended) return false;
        if (done) return true;
        this.heard();
        onChunk(value);
        if (this.ended) return false;
      }
    } catch {
      return !this.ended;
    }
  }

  /**
   * Runs `onSilent` once nothing has been heard (see `heard()`) for `ms`, counting from now;
   * never when `ms` is not positive.
   */
  watchSilence(ms, onSilent) {
    this.#lastHeard = this.#clock.now();
    if (!(ms > 0)) return;
    const check = (wait) => {
      this.#silence.set(wait, () => {
        if (this.ended) return;
        const quiet = this.#clock.now() - this.#lastHeard;
        if (quiet < ms) {
          check(ms - quiet);
          return;
        }
        onSilent();
      });
    };
    check(ms);
  }

  /** Something arrived on the stream (data, a heartbeat): the silence starts again. */
  heard() {
    this.#lastHeard = this.#clock.now();
  }

  /** Stops everything it started. Ending one that has ended does nothing. */
  end() {
    if (this.ended) return;
    this.ended = true;
    this.#silence.clear();
    const reader = this.#reader;
    this.#reader = null;
    if (reader) reader.cancel().catch(() => {});
    this.#abort.abort();
  }
}
