// herald-server: publish events to Herald from Node.js, over its HTTP API or straight into
// NATS, and mint the client tokens browsers open their streams with. No runtime dependency for
// HTTP and tokens (fetch and WebCrypto); the `nats` package for the NATS transport.
//
// Every publish carries an idempotency `id` (the caller's, or a fresh one): a 503, 504 or 408 (or
// a proxy's 502), a failed connection or an answer cut off is retried with it, and the history
// stores the event once whatever the attempts. An ephemeral event (`durable: false`) has no
// history to store it once: it is sent again only when nothing was published (a 503, a 408, or
// a connection refused). A redirect is an error: the key goes to the URL given, and nowhere else.

import { createPrivateKey, randomUUID, sign as nodeSign } from 'node:crypto';

/**
 * A publish Herald refused or could not take: `status` and Herald's `code`; `id` the publish's
 * idempotency key (yours, or the one made up for it): publish again with it, and the event is
 * stored once however many attempts reached the history.
 */
export class HeraldError extends Error {
  constructor(status, code, message, id) {
    super(`${status} ${code}: ${message}`);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.detail = message;
    this.id = id;
  }
}
/** 400: the event or its targets are malformed (`code` says which, e.g. `invalid_channel`). */
export class BadRequestError extends HeraldError {}
/** 401: no publisher key, or one the gateways do not know. */
export class UnauthorizedError extends HeraldError {}
/** 413: the event is larger than the gateways accept. */
export class PayloadTooLargeError extends HeraldError {}
/**
 * 503, 504 or 408 (or a proxy's 502), no answer, or one cut off, after every retry: publish
 * again later with the same `id`.
 */
export class UnavailableError extends HeraldError {}

function errorFor(status, code, message, id) {
  const Kind =
    {
      400: BadRequestError,
      401: UnauthorizedError,
      408: UnavailableError,
      413: PayloadTooLargeError,
      502: UnavailableError,
      503: UnavailableError,
      504: UnavailableError,
    }[status] ?? HeraldError;
  return new Kind(status, code, message, id);
}

// What the gateways accept, as `POST /v1/publish` checks it: an event stored in NATS with
// another name or type would be acknowledged there and then dropped by every gateway.
const NAME = /^[A-Za-z0-9_\-:@=+~]+(?:\.[A-Za-z0-9_\-:@=+~]+)*$/;
const TYPE = /^[A-Za-z0-9_\-:.]{1,64}$/;
const RESERVED_TYPES = new Set(['connected', 'reset', 'token_expired', 'presence', 'error']);
const ID = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Throws a BadRequestError (the gateway's codes) for a type or name no gateway would deliver. */
function check({ type, users = [], channels = [], id }) {
  if (id !== undefined && (typeof id !== 'string' || !ID.test(id))) {
    throw new BadRequestError(400, 'invalid_id', `${JSON.stringify(id)}: 1-128 of A-Z a-z 0-9 _ . : -`);
  }
  if (typeof type !== 'string' || !TYPE.test(type) || RESERVED_TYPES.has(type)) {
    throw new BadRequestError(400, 'invalid_type', `${JSON.stringify(type)}: 1-64 of A-Z a-z 0-9 _ - : ., not a reserved type`);
  }
  for (const [kind, names] of [['user', users], ['channel', channels]]) {
    for (const name of names) {
      if (typeof name !== 'string' || name.length > 128 || !NAME.test(name)) {
        throw new BadRequestError(400, `invalid_${kind}`, `${JSON.stringify(name)}: 1-128 of A-Z a-z 0-9 _ - : @ = + ~, dot-separated`);
      }
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The targets of a publish, in the order Herald answers their ids. */
function targetsOf({ users = [], channels = [], broadcast = false }) {
  return [...users.map((u) => `user.${u}`), ...channels.map((c) => `channel.${c}`), ...(broadcast ? ['broadcast'] : [])];
}

/**
 * A publisher: over HTTP with `{ url, key }` (a gateway, or the gateway Service), or over NATS
 * with `{ nats }` (a connected nats.js client; events go into the history stream as the gateways
 * put them there).
 */
export function createPublisher(options) {
  if (options?.nats) return natsPublisher(options);
  if (options?.url && options?.key) return httpPublisher(options);
  throw new TypeError('createPublisher needs { url, key } (HTTP) or { nats } (a connected nats.js client)');
}

function api(publish) {
  return {
    publish,
    publishToUser: (user, event, opts = {}) => publish({ ...opts, ...event, users: [user] }),
    publishToChannel: (channel, event, opts = {}) => publish({ ...opts, ...event, channels: [channel] }),
    broadcast: (event, opts = {}) => publish({ ...opts, ...event, broadcast: true }),
  };
}

// No attempt starts, or lasts, past `retryForMs` from the first (90 s): the history stores an
// event once however many attempts reach it only within its duplicate window (the gateways'
// `--history-dedup-window`, 2 minutes by default), and a later one could store it again.
function httpPublisher({
  url,
  key,
  retries = 4,
  backoffMs = 250,
  timeoutMs = 30000,
  retryForMs = 90000,
  fetch: fetchImpl = fetch,
}) {
  const endpoint = `${url.replace(/\/+$/, '')}/v1/publish`;
  return api(async (publish) => {
    const body = { type: publish.type ?? 'message', data: publish.data ?? null, id: publish.id ?? randomUUID() };
    if (publish.users?.length) body.users = publish.users;
    if (publish.channels?.length) body.channels = publish.channels;
    if (publish.broadcast) body.broadcast = true;
    if (publish.durable !== undefined) body.durable = publish.durable;
    let wait = backoffMs;
    const deadline = Date.now() + retryForMs;
    for (let attempt = 0; ; attempt++) {
      const left = Math.max(1, Math.min(timeoutMs, deadline - Date.now()));
      let error;
      // Whether the attempt surely published nothing: only then is an ephemeral event sent again.
      let unsent = false;
      try {
        const response = await fetchImpl(endpoint, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
          // Not followed: fetch would send the body, and to the same origin the key, wherever
          // the `Location` points.
          redirect: 'manual',
          signal: AbortSignal.timeout(left),
        });
        if (response.ok) {
          // Read here, where a body cut off is retried: the event may be stored, its ids lost.
          let ids;
          try {
            ids = (await response.json())?.ids;
          } catch (e) {
            ids = e;
          }
          if (Array.isArray(ids)) return ids;
          error = new UnavailableError(response.status, 'unreadable_answer', `${endpoint}: ${ids?.message ?? 'an answer without ids'}`, body.id);
        } else {
          let code = 'error';
          let message = response.statusText;
          if (response.status >= 300 && response.status < 400) {
            message = `redirected to ${response.headers.get('location')}: publish to the gateways' own URL`;
          }
          try {
            const answer = await response.json();
            code = answer.error ?? code;
            message = answer.message ?? message;
          } catch {
            // not JSON: keep the status text
          }
          error = errorFor(response.status, code, message, body.id);
          // 503: the gateway published nothing; 408: it did not get the whole body.
          unsent = response.status === 503 || response.status === 408;
        }
      } catch (e) {
        error = new UnavailableError(0, 'unreachable', `${endpoint}: ${e?.cause?.code ?? e?.message ?? e}`, body.id);
        unsent = e?.cause?.code === 'ECONNREFUSED';
      }
      const last = attempt >= retries || Date.now() + wait >= deadline;
      if (!(error instanceof UnavailableError) || last || (body.durable === false && !unsent)) throw error;
      await sleep(wait);
      wait = Math.min(wait * 2, 4000);
    }
  });
}

function natsPublisher({ nats, prefix = 'herald', retries = 4, timeoutMs = 10000 }) {
  const js = nats.jetstream({ timeout: timeoutMs });
  // The history's epoch names every id. Read again when it may have changed: an acknowledgement
  // (not of a repeat) whose sequence is below one seen before comes from a stream made anew, and
  // one made anew since the last read may not have caught up yet (so no read is older than
  // EPOCH_TTL_MS).
  let epoch;
  let readAt = 0;
  let highest = 0;
  // Once one was read, a read that fails answers it.
  const readEpoch = async (again = false) => {
    if (epoch !== undefined && !again && Date.now() - readAt <= EPOCH_TTL_MS) return epoch;
    readAt = Date.now();
    try {
      const reply = await nats.request('$JS.API.STREAM.INFO.HERALD', new Uint8Array(), { timeout: timeoutMs });
      const info = JSON.parse(new TextDecoder().decode(reply.data));
      const found = info?.config?.metadata?.['herald.epoch'];
      if (typeof found !== 'string' || !/^[0-9a-z]{1,32}$/.test(found)) {
        throw new UnavailableError(503, 'unavailable', 'the stream HERALD has no herald.epoch: start a gateway first');
      }
      epoch = found;
    } catch (e) {
      if (epoch === undefined) throw e;
    }
    return epoch;
  };
  return api(async (publish) => {
    const type = publish.type ?? 'message';
    check({ ...publish, type });
    const targets = targetsOf(publish);
    if (targets.length === 0) throw new BadRequestError(400, 'no_targets', 'name at least one user, channel or broadcast');
    const id = publish.id ?? randomUUID();
    const payload = new TextEncoder().encode(JSON.stringify(publish.data ?? null));
    await readEpoch();
    const { headers } = await import('nats');
    const seqs = [];
    let startedOver = false;
    for (const target of targets) {
      const h = headers();
      h.set('Herald-Type', type);
      let wait = 250;
      for (let attempt = 0; ; attempt++) {
        try {
          const ack = await js.publish(`${prefix}.events.${target}`, payload, { headers: h, msgID: `${id}/${target}` });
          seqs.push(ack.seq);
          if (!ack.duplicate) {
            startedOver ||= ack.seq <= highest;
            highest = Math.max(highest, ack.seq);
          }
          break;
        } catch (e) {
          if (attempt >= retries) {
            throw new UnavailableError(503, 'unavailable', `${prefix}.events.${target}: ${e?.message ?? e}`, id);
          }
          await sleep(wait);
          wait = Math.min(wait * 2, 4000);
        }
      }
    }
    if (startedOver) highest = Math.max(...seqs);
    // The events are stored: a read that fails now names them by the epoch read before.
    const current = await readEpoch(startedOver);
    return seqs.map((seq) => `${current}-${seq}`);
  });
}

/** Longest the NATS publisher names ids by an epoch it read (see natsPublisher). */
const EPOCH_TTL_MS = 10000;

const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

/**
 * A client token: the JWT a browser opens its stream with, carrying exactly the claims the
 * gateway checks. `secret` signs HS256 (the gateways' `--jwt-secret-file`); `privateKey` (a
 * PEM) signs ES256 for a P-256 key and EdDSA for Ed25519 (the gateways hold the public half,
 * whose file name or JWKS `kid` is `kid`).
 */
export async function mintToken({ secret, privateKey, kid, user, channels = [], ttl = 3600, publish, presence, issuer, audience, now }) {
  if ((secret === undefined) === (privateKey === undefined)) {
    throw new TypeError('mintToken needs exactly one of secret (HS256) or privateKey (ES256, EdDSA)');
  }
  if (!(ttl > 0)) throw new TypeError('ttl must be a positive number of seconds');
  const iat = now ?? Math.floor(Date.now() / 1000);
  const claims = { sub: user, iat, exp: iat + ttl, channels };
  if (publish !== undefined) claims.publish = publish;
  if (presence !== undefined) claims.presence = presence;
  if (issuer !== undefined) claims.iss = issuer;
  if (audience !== undefined) claims.aud = audience;
  let alg;
  let signer;
  if (secret !== undefined) {
    alg = 'HS256';
    const raw = typeof secret === 'string' ? new TextEncoder().encode(secret) : secret;
    const key = await crypto.subtle.importKey('raw', raw, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    signer = async (message) => new Uint8Array(await crypto.subtle.sign('HMAC', key, message));
  } else {
    const key = createPrivateKey(privateKey);
    if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') {
      alg = 'ES256';
      signer = async (message) => nodeSign('sha256', message, { key, dsaEncoding: 'ieee-p1363' });
    } else if (key.asymmetricKeyType === 'ed25519') {
      alg = 'EdDSA';
      signer = async (message) => nodeSign(null, message, key);
    } else {
      throw new TypeError('privateKey must be a P-256 (ES256) or Ed25519 (EdDSA) key');
    }
  }
  const header = { alg, typ: 'JWT', ...(kid !== undefined ? { kid } : {}) };
  const signing = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${signing}.${b64url(await signer(new TextEncoder().encode(signing)))}`;
}

/**
 * A `getToken` endpoint for the browser client, on Web `Request`/`Response` (Next.js route
 * handlers, Deno, Bun, Node's own fetch types): `authenticate(request)` answers who is asking
 * and what they may read, or null for 401.
 */
export function tokenHandler({ authenticate, ttl = 3600, ...keys }) {
  return async (request) => {
    const grant = await authenticate(request);
    if (!grant) return Response.json({ error: 'unauthorized' }, { status: 401 });
    const token = await mintToken({ ...keys, ttl, ...grant });
    return Response.json({ token, expiresIn: ttl }, { headers: { 'cache-control': 'no-store' } });
  };
}
