// Requests besides the stream (publish() and presence()), the gateway's URLs under the client's
// base URL, and what a refused request says.
//
// Only relative imports: a browser can load this file directly as a module.

import { isValidEventType, isValidName } from './names.js';

/**
 * A refused or failed request of `publish()` or `presence()`: `status` is the HTTP status (0 when
 * no response came), `error` the gateway's error code, `retryAfter` the seconds a 429 asks to wait.
 */
export class HeraldRequestError extends Error {
  constructor({ status, error, message, body = null, retryAfter, cause }) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = /** @type {const} */ ('HeraldRequestError');
    this.status = status;
    this.error = error;
    this.body = body;
    if (retryAfter !== undefined) this.retryAfter = retryAfter;
  }
}

function baseUrl(url) {
  const loc = globalThis.location?.href;
  return loc ? new URL(url, loc) : new URL(url);
}

export function channelsInUrl(url) {
  let u;
  try {
    u = baseUrl(url);
  } catch {
    return [];
  }
  const out = [];
  for (const key of ['channels', 'channel']) {
    for (const value of u.searchParams.getAll(key)) {
      for (const ch of value.split(',')) if (ch !== '') out.push(ch);
    }
  }
  return out;
}

/** `<base>/<path>`: keeps the base's path prefix and query parameters, except the channels. */
export function apiUrl(base, path) {
  const u = baseUrl(base);
  u.hash = '';
  u.pathname = `${u.pathname.replace(/\/+$/, '')}/${path}`;
  u.searchParams.delete('channels');
  u.searchParams.delete('channel');
  return u;
}

/** `<base>/events?…&channels=a,b`: keeps the base's path prefix and other query parameters. */
export function eventsUrl(base, channels) {
  const u = apiUrl(base, 'events');
  if (channels.length > 0) u.searchParams.set('channels', channels.join(','));
  return u.toString();
}

/** The most of a refusal's body read: a gateway's fits many times over. */
export const MAX_REFUSAL_BYTES = 64 * 1024;

/** The most of a presence list read (about 100,000 members). */
export const MAX_PRESENCE_BYTES = 16 * 1024 * 1024;

/**
 * A response's body as text, or null past `max` bytes: what was read is dropped and the rest
 * not read, so a server or proxy cannot make it grow without bound.
 */
export async function boundedText(response, max) {
  const reader = response.body?.getReader?.();
  if (!reader) return response.text();
  const decoder = new TextDecoder();
  let text = '';
  let bytes = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return text + decoder.decode();
    bytes += value.byteLength;
    if (bytes > max) {
      reader.cancel().catch(() => {});
      return null;
    }
    text += decoder.decode(value, { stream: true });
  }
}

/** A response's body as JSON, or null when it is empty, unreadable, too long or not JSON. */
export async function jsonBody(response) {
  try {
    const text = await boundedText(response, MAX_REFUSAL_BYTES);
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/**
 * What a refused response says: its status, the gateway's error code and message (or ones made
 * from the status when the body has none), and its JSON body.
 */
export async function refusal(response) {
  const status = response.status;
  const body = await jsonBody(response);
  return {
    status,
    error: typeof body?.error === 'string' ? body.error : `http_${status}`,
    message: typeof body?.message === 'string' ? body.message : response.statusText || `HTTP ${status}`,
    body,
  };
}

/** The error for a refused API request, from its status, JSON body and Retry-After. */
export async function requestError(response) {
  const info = await refusal(response);
  const retryAfter = retryAfterSeconds(response.headers?.get?.('retry-after'));
  if (retryAfter !== null || info.status === 429) info.retryAfter = retryAfter;
  return new HeraldRequestError(info);
}

/** A Retry-After value in seconds (delay-seconds or an HTTP date), or null. */
function retryAfterSeconds(value) {
  if (typeof value !== 'string' || value.trim() === '') return null;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return null;
  return Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

export function cancelBody(response) {
  try {
    response?.body?.cancel?.().catch?.(() => {});
  } catch {
    // already locked or gone
  }
}

export function messageOf(err) {
  return err && typeof err.message === 'string' ? err.message : String(err);
}

/**
 * How a client makes API requests: its base URL, `getToken` (or null: cookies), `fetch`, the
 * credentials mode, and `onToken`, which sees every token asked for.
 *
 * @typedef {{ base: string, getToken: ((ctx: { refresh: boolean }) => unknown) | null,
 *             fetch: (url: URL, init: RequestInit) => Promise<Response>,
 *             credentials: RequestCredentials, onToken: (token: unknown) => void }} Api
 */

/**
 * Sends a client event to everyone on `channel` (POST `<base>/v1/client-events`); see
 * `HeraldClient.publish()`.
 *
 * @param {Api} api
 * @param {{ signal?: AbortSignal }} [options]
 * @returns {Promise<void>}
 */
export async function sendClientEvent(api, channel, type, data = null, { signal } = {}) {
  if (!isValidName(channel)) {
    throw new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`);
  }
  if (!isValidEventType(type)) {
    throw new TypeError(`herald: invalid client event type ${JSON.stringify(type)}`);
  }
  let body;
  try {
    body = JSON.stringify({ channel, type, data });
  } catch (err) {
    throw new TypeError(`herald: event data is not JSON: ${messageOf(err)}`);
  }
  const response = await request(api, 'POST', 'v1/client-events', { body, signal });
  if (!response.ok) throw await requestError(response);
  await response.text().catch(() => {});
}

/**
 * Who is on `channel` now (GET `<base>/v1/presence/<channel>`); see `HeraldClient.presence()`.
 *
 * @param {Api} api
 * @param {{ signal?: AbortSignal }} [options]
 */
export async function fetchPresence(api, channel, { signal } = {}) {
  if (!isValidName(channel)) {
    throw new TypeError(`herald: invalid channel name ${JSON.stringify(channel)}`);
  }
  const response = await request(api, 'GET', `v1/presence/${encodeURIComponent(channel)}`, { signal });
  if (!response.ok) throw await requestError(response);
  try {
    const text = await boundedText(response, MAX_PRESENCE_BYTES);
    if (text === null) throw new RangeError(`longer than ${MAX_PRESENCE_BYTES} bytes`);
    return JSON.parse(text);
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
    throw new HeraldRequestError({
      status: response.status,
      error: 'bad_response',
      message: `presence: the answer is not JSON: ${messageOf(err)}`,
      cause: err,
    });
  }
}

/**
 * One API request with the stream's credentials: the token from getToken (asked again with
 * `refresh: true` after a 401, once), else cookies; the query of the base URL (a `token`, dev
 * mode's `user`) is kept.
 *
 * @param {Api} api
 */
async function request(api, method, path, { body, signal } = {}) {
  let url;
  try {
    url = apiUrl(api.base, path);
  } catch (err) {
    throw new HeraldRequestError({ status: 0, error: 'invalid_url', message: messageOf(err), cause: err });
  }
  for (let refresh = false; ; refresh = true) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (api.getToken) {
      let token;
      try {
        token = await api.getToken({ refresh });
      } catch (err) {
        throw new HeraldRequestError({ status: 0, error: 'token_unavailable', message: messageOf(err), cause: err });
      }
      if (token) headers.Authorization = `Bearer ${token}`;
      api.onToken(token);
    }
    let response;
    try {
      response = await api.fetch(url, { method, headers, body, credentials: api.credentials, signal });
    } catch (err) {
      if (err?.name === 'AbortError') throw err;
      throw new HeraldRequestError({ status: 0, error: 'network_error', message: messageOf(err), cause: err });
    }
    if (response.status === 401 && api.getToken && !refresh) {
      cancelBody(response);
      continue;
    }
    return response;
  }
}
