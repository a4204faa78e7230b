// Test page helper: creates a Herald client the way an app would (modules loaded as served, a
// token fetched from the app's own backend at /token) and records what it sees in `window.rec`.
import { createClient } from '../client/herald.js';

function summary(ev) {
  return { id: ev.id, type: ev.type, target: ev.target, channel: ev.channel, data: ev.data };
}

window.heraldE2E = {
  /**
   * @param {{url: string, channels?: string[], token?: boolean | string, options?: object}} config
   *   channels: subscribed with client.subscribe (all in the same tick: one connection);
   *   token: use getToken, which fetches /token from the page's origin (a string: with that
   *   query, e.g. "user=ana").
   */
  start({ url, channels = [], token = false, options = {} }) {
    // events: what the channel handlers and on('*') (for events without a channel) saw;
    // any: what on('*') saw, channel events included.
    const rec = { events: [], any: [], states: [], controls: [], tokenRequests: [], errors: [] };
    const tokenUrl = typeof token === 'string' ? `/token?${token}` : '/token';
    const getToken = token
      ? async ({ refresh }) => {
          rec.tokenRequests.push(refresh);
          const res = await fetch(tokenUrl, { cache: 'no-store' });
          if (!res.ok) throw new Error(`token endpoint: ${res.status}`);
          return res.text();
        }
      : undefined;
    const client = createClient({ url, getToken, ...options, onStateChange: (s) => rec.states.push(s) });
    for (const channel of channels) client.subscribe(channel, (ev) => rec.events.push(summary(ev)));
    this.subscribe = (channel) => client.subscribe(channel, (ev) => rec.events.push(summary(ev))) && true;
    // The user's own events and broadcasts have no channel.
    client.on('*', (ev) => {
      rec.any.push(summary(ev));
      if (ev.channel == null) rec.events.push(summary(ev));
    });
    for (const type of ['connected', 'reset', 'token_expired']) {
      client.on(type, (ev) => rec.controls.push({ type, data: ev.data, at: Date.now() }));
    }
    client.on('error', (e) => rec.errors.push({ status: e.status, error: e.error, message: e.message, fatal: e.fatal }));
    window.rec = rec;
    window.client = client;
    return true;
  },
};
