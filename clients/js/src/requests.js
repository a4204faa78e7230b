// Requests besides the stream: the gateway's URLs under the client's base URL, and the errors
// of refused requests.

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

/** A response's body as JSON, or null when it is empty, unreadable or not JSON. */
export async function jsonBody(response) {
  try {
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** The error for a refused API request, from its status, JSON body and Retry-After. */
export async function requestError(response) {
  const status = response.status;
  const body = await jsonBody(response);
  const info = {
    status,
    error: typeof body?.error === 'string' ? body.error : `http_${status}`,
    message: typeof body?.message === 'string' ? body.message : response.statusText || `HTTP ${status}`,
    body,
  };
  const retryAfter = retryAfterSeconds(response.headers?.get?.('retry-after'));
  if (retryAfter !== null || status === 429) info.retryAfter = retryAfter;
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
