// One stream for every tab of an origin and user: the tabs elect a leader with the Web Locks API
// and talk over a BroadcastChannel. The leader holds the SSE stream for the union of every tab's
// channels and forwards each frame; every tab keeps the union's member list, so whichever tab is
// next to lead knows the union at once. See docs/client.md, "One connection for every tab".
//
// This module is the transport and the membership (names, election, messages, a tab's arrival
// and departure); what a message means to a client is in client.js.
//
// Only relative imports: a browser can load this file directly as a module.

/** Where sharing works: the Web Locks API and BroadcastChannel, found in `env`. */
export function shareSupport(env = globalThis) {
  const locks = env?.navigator?.locks ?? env?.locks;
  const Channel = env?.BroadcastChannel;
  if (!locks || typeof locks.request !== 'function' || typeof Channel !== 'function') return null;
  return { locks, BroadcastChannel: Channel };
}

/**
 * The identity of a token's user for sharing: `iss` and `sub` of a JWT's payload (not verified:
 * it only decides which tabs share, and every tab's own token still authenticates its own
 * requests), or null when the token is not a JWT with a `sub`.
 */
export function tokenIdentity(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const claims = JSON.parse(json);
    if (typeof claims?.sub !== 'string' || claims.sub === '') return null;
    return `${typeof claims.iss === 'string' ? claims.iss : ''}\n${claims.sub}`;
  } catch {
    return null;
  }
}

/**
 * A short, stable digest of `text` (two 32-bit FNV-1a lanes, hex). Lock and channel names carry
 * it instead of the identity itself, so a user id or a token never appears in a name.
 */
export function digest(text) {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}

let tabCounter = 0;

function newTabId() {
  const random = globalThis.crypto?.randomUUID?.();
  if (random) return random;
  tabCounter += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${tabCounter}`;
}

/**
 * One tab's membership of a share group (`key`): its channel, its tab lock (held while the tab
 * lives, so a leader can tell crashed tabs from live ones) and its place in the queue for the
 * leader lock. A tab that leaves (close(), or its page closing) posts `{ kind: 'bye' }`, so the
 * others need not wait for its lock to tell; one that crashes is found out by its tab lock.
 */
export class ShareGroup {
  #locks;
  #channel;
  #name;
  #stop = new AbortController();
  #release = null;
  #closed = false;
  #onLeader;
  #onJoined;
  #onFailure;
  #page = null; // the window whose pagehide and pageshow it follows
  // A page kept in the back/forward cache is not leaving: it says nothing, and joins again when it
  // comes back.
  #onPageHide = (e) => {
    if (!e?.persisted) this.post({ kind: 'bye' });
  };
  #onPageShow = (e) => {
    if (e?.persisted && !this.#closed) this.#onJoined();
  };

  /**
   * `onJoined` runs once this tab's own lock is held (the others can now tell it is alive), before
   * it queues for the leader lock, and again when its page comes back from the back/forward cache
   * (what it missed meanwhile is unknown); `onLeader` when it leads; `onFailure` when the browser
   * refuses a lock (a sandboxed frame, blocked storage): the tab cannot share.
   *
   * @param {{ key: string, locks: LockManager, BroadcastChannel: typeof BroadcastChannel,
   *           onMessage: (msg: object) => void, onJoined: () => void, onLeader: () => void,
   *           onFailure: (err: unknown) => void }} options
   */
  constructor({ key, locks, BroadcastChannel, onMessage, onJoined, onLeader, onFailure }) {
    this.id = newTabId();
    this.#locks = locks;
    this.#name = `herald:${digest(key)}`;
    this.#channel = new BroadcastChannel(this.#name);
    this.#channel.onmessage = (e) => {
      const msg = e.data;
      if (this.#closed || !msg || typeof msg !== 'object' || msg.from === this.id) return;
      onMessage(msg);
    };
    this.#onLeader = onLeader;
    this.#onJoined = onJoined;
    this.#onFailure = onFailure;
  }

  /**
   * Takes this tab's lock, then its place in the queue for the leader lock; from now on the page
   * closing says bye.
   */
  start() {
    const page = globalThis.window ?? globalThis;
    if (typeof page?.addEventListener === 'function') {
      this.#page = page;
      page.addEventListener('pagehide', this.#onPageHide);
      page.addEventListener('pageshow', this.#onPageShow);
    }
    this.#hold(`${this.#name}:tab:${this.id}`, () => {
      this.#onJoined();
      this.#hold(`${this.#name}:leader`, this.#onLeader);
    });
  }

  /** Posts `msg` (with this tab's id as `from`) to every other tab of the group. */
  post(msg) {
    if (this.#closed) return;
    try {
      this.#channel.postMessage({ ...msg, from: this.id });
    } catch {
      // closed under us, or data that cannot be cloned: the sender's bug, not the group's
    }
  }

  /** The ids of the tabs alive now (whose tab lock is held), or null when that cannot be told. */
  async liveTabs() {
    if (typeof this.#locks.query !== 'function') return null;
    try {
      const { held = [] } = await this.#locks.query();
      const prefix = `${this.#name}:tab:`;
      return new Set(held.map((l) => l.name).filter((n) => n?.startsWith(prefix)).map((n) => n.slice(prefix.length)));
    } catch {
      return null;
    }
  }

  /**
   * Leaves the group: says bye, gives up the leader lock (or the place in its queue) and the tab
   * lock.
   */
  close() {
    if (this.#closed) return;
    this.post({ kind: 'bye' });
    this.#closed = true;
    this.#stop.abort();
    this.#release?.();
    try {
      this.#channel.close();
    } catch {
      // already closed
    }
    this.#page?.removeEventListener?.('pagehide', this.#onPageHide);
    this.#page?.removeEventListener?.('pageshow', this.#onPageShow);
  }

  /** Holds lock `name` until close(); `granted` runs when it is granted. */
  #hold(name, granted) {
    const held = new Promise((resolve) => {
      const prev = this.#release;
      this.#release = () => {
        prev?.();
        resolve();
      };
    });
    this.#locks
      .request(name, { signal: this.#stop.signal }, async () => {
        if (this.#closed) return;
        granted();
        await held;
      })
      .catch((err) => {
        // Aborted while waiting is close(); anything else means this tab cannot share.
        if (!this.#closed && err?.name !== 'AbortError') this.#onFailure(err);
      });
  }
}
