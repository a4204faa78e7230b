// Test doubles: a fake clock (timers run only when the test advances time) and a fake fetch whose
// responses and response bodies the test controls. Synchronisation is by explicit promises:
// `clock.waitForTimer()`, `fetch.nextCall()`, `nextEvent(client, type)`, `nextState(client, s)`.

const encoder = new TextEncoder();

export class FakeClock {
  #now = 0;
  #seq = 0;
  #timers = new Map();
  #waiters = [];

  now = () => this.#now;

  setTimeout = (fn, ms = 0) => {
    const id = ++this.#seq;
    // As browsers and Node do: a delay setTimeout cannot hold (above 2^31 - 1 ms) fires at once.
    const delay = Number(ms) > 2 ** 31 - 1 ? 1 : Math.max(0, Number(ms) || 0);
    const timer = { id, fn, delay, at: this.#now + delay };
    this.#timers.set(id, timer);
    this.#waiters = this.#waiters.filter((w) => {
      if (w.pred(timer)) {
        w.resolve(timer);
        return false;
      }
      return true;
    });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** Pending timers, soonest first. */
  pending() {
    return [...this.#timers.values()].sort((a, b) => a.at - b.at || a.id - b.id);
  }

  /** Resolves with the first pending (or next created) timer matching `pred`. */
  waitForTimer(pred = () => true) {
    const found = this.pending().find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => this.#waiters.push({ pred, resolve }));
  }

  /** Moves time forward by `ms`, running every timer due on the way, in order. */
  advance(ms) {
    const target = this.#now + ms;
    for (;;) {
      const next = this.pending()[0];
      if (!next || next.at > target) break;
      this.#timers.delete(next.id);
      this.#now = next.at;
      next.fn();
    }
    this.#now = target;
  }

  /** Runs the given timer now (moving time to its due time). */
  fire(timer) {
    if (!this.#timers.has(timer.id)) throw new Error(`timer ${timer.id} is not pending`);
    this.advance(Math.max(0, timer.at - this.#now));
  }
}

/** A fetch whose calls the test answers. */
export function createFakeFetch() {
  const calls = [];
  const waiters = [];
  let delivered = 0;

  const fetch = (url, init = {}) => {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const call = new FakeCall(String(url), init, resolve, reject);
    calls.push(call);
    const w = waiters.shift();
    if (w) {
      delivered += 1;
      w(call);
    }
    return promise;
  };

  /** Resolves with the next call not yet handed out (in call order). */
  fetch.nextCall = () => {
    if (delivered < calls.length) return Promise.resolve(calls[delivered++]);
    return new Promise((resolve) => waiters.push(resolve));
  };
  fetch.calls = calls;
  return fetch;
}

class FakeCall {
  constructor(url, init, resolve, reject) {
    this.url = new URL(url);
    this.init = init;
    this.headers = new Headers(init.headers ?? {});
    this.signal = init.signal ?? null;
    this.cancelled = false;
    this.#resolve = resolve;
    this.#reject = reject;
    this.aborted = new Promise((res) => {
      if (!this.signal) return;
      if (this.signal.aborted) res();
      else this.signal.addEventListener('abort', () => res(), { once: true });
    });
    this.signal?.addEventListener('abort', () => {
      const err = new DOMException('The operation was aborted.', 'AbortError');
      if (!this.#settled) {
        this.#settled = true;
        reject(err);
      }
      try {
        this.#controller?.error(err);
      } catch {
        // already closed
      }
    });
  }

  #resolve;
  #reject;
  #settled = false;
  #controller = null;

  get channels() {
    const v = this.url.searchParams.get('channels');
    return v === null ? [] : v.split(',');
  }

  /** Answers 200 (or `status`) text/event-stream with a body the returned handle writes to. */
  open({ contentType = 'text/event-stream', status = 200 } = {}) {
    const stream = new ReadableStream({
      start: (c) => {
        this.#controller = c;
      },
      cancel: () => {
        this.cancelled = true;
      },
    });
    this.#settle(new Response(stream, { status, headers: { 'content-type': contentType } }));
    const controller = () => this.#controller;
    return {
      /** Enqueues text (encoded as UTF-8) or bytes. */
      push(chunk) {
        controller().enqueue(typeof chunk === 'string' ? encoder.encode(chunk) : chunk);
      },
      end() {
        controller().close();
      },
      error(err = new TypeError('network error')) {
        controller().error(err);
      },
    };
  }

  /** Answers with a status and a JSON (or text) body. */
  respond(status, body = null, headers = { 'content-type': 'application/json' }) {
    const text = body === null ? null : typeof body === 'string' ? body : JSON.stringify(body);
    this.#settle(new Response(text, { status, headers }));
  }

  /** Rejects like a network failure. */
  fail(err = new TypeError('Failed to fetch')) {
    if (this.#settled) throw new Error('already answered');
    this.#settled = true;
    this.#reject(err);
  }

  #settle(response) {
    if (this.#settled) throw new Error('already answered');
    this.#settled = true;
    this.#resolve(response);
  }
}

/** Resolves with the next event of `type` the client emits. */
export function nextEvent(client, type) {
  return new Promise((resolve) => {
    const off = client.on(type, (event) => {
      off();
      resolve(event);
    });
  });
}

/** Resolves when the client's state is (or becomes) `state`. */
export function nextState(client, state) {
  if (client.state === state) return Promise.resolve(state);
  return new Promise((resolve) => {
    const off = client.onStateChange((s) => {
      if (s === state) {
        off();
        resolve(s);
      }
    });
  });
}

/** Records every state change. */
export function recordStates(client) {
  const states = [client.state];
  client.onStateChange((s) => states.push(s));
  return states;
}

/** The first frame of a stream, as the gateway writes it. */
export function connectedFrame({ retry = 3000, user = 'u1', channels = [], resumed = false } = {}) {
  const data = JSON.stringify({ connectionId: 'c-1', user, channels, resumed });
  return `retry: ${retry}\nevent: connected\ndata: ${data}\n\n`;
}

/** An event frame, as the gateway writes it. */
export function eventFrame({ id, type = 'message', channel = null, target, data, from }) {
  const t = target ?? (channel ? 'channel' : 'user');
  const envelope = { channel, target: t };
  if (from !== undefined) envelope.from = from;
  envelope.data = data;
  return `${id ? `id: ${id}\n` : ''}event: ${type}\ndata: ${JSON.stringify(envelope)}\n\n`;
}

/** A fake `document` for visibility tests. */
export class FakeDocument extends EventTarget {
  visibilityState = 'visible';

  setVisibility(state) {
    this.visibilityState = state;
    this.dispatchEvent(new Event('visibilitychange'));
  }
}

/** A deterministic PRNG (mulberry32) for randomised-but-reproducible tests. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
