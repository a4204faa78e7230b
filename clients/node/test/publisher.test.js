// herald-server against a real gateway and nats-server: publishing to a user, a channel and
// everyone over HTTP and over NATS, each event received once by a raw SSE client with the id
// the call answered; a retry after a lost answer stored once; tokens (HS256, ES256, EdDSA)
// granting exactly their channels; the token handler; refusals as typed errors.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { connect } from 'nats';
import {
  BadRequestError,
  HeraldError,
  UnauthorizedError,
  UnavailableError,
  createPublisher,
  mintToken,
  tokenHandler,
} from '../src/index.js';
import { KEYS, PUBLISH_KEY, SECRET, freePort, openStream, startHerald } from './support.js';

let herald;
before(async () => {
  herald = await startHerald();
});
after(() => herald?.stop());

async function stream(user, channels = []) {
  const s = await openStream(herald.url, await mintToken({ secret: SECRET, user, channels }), channels);
  assert.equal(s.status, 200);
  assert.equal((await s.next()).event, 'connected');
  return s;
}

test('publishing over HTTP reaches each target once with its id', async () => {
  const s = await stream('ana', ['booking:42']);
  const herald_ = createPublisher({ url: herald.url, key: PUBLISH_KEY });
  const toUser = await herald_.publishToUser('ana', { type: 'notice', data: { n: 1 } });
  const toChannel = await herald_.publishToChannel('booking:42', { type: 'booking_update', data: { status: 'confirmed' } });
  const toAll = await herald_.broadcast({ type: 'maintenance', data: { at: '02:00' } });
  const both = await herald_.publish({ type: 'both', data: 4, users: ['ana'], channels: ['booking:42'] });
  await herald_.publishToUser('ana', { type: 'marker' });
  const got = (await s.until('marker')).map((e) => [e.event, e.id, e.data]);
  assert.deepEqual(got, [
    ['notice', toUser[0], { n: 1 }],
    ['booking_update', toChannel[0], { status: 'confirmed' }],
    ['maintenance', toAll[0], { at: '02:00' }],
    ['both', both[0], 4],
    ['both', both[1], 4],
  ]);
  s.close();
});

test('publishing over NATS reaches each target once with its id', async () => {
  const s = await stream('cy', ['room:1']);
  const nc = await connect({ servers: herald.natsUrl });
  try {
    const viaNats = createPublisher({ nats: nc });
    const user = await viaNats.publishToUser('cy', { type: 'notice', data: { n: 1 } });
    const channel = await viaNats.publishToChannel('room:1', { type: 'said', data: 'hello' });
    const everyone = await viaNats.broadcast({ type: 'everyone', data: true });
    await viaNats.publishToUser('cy', { type: 'marker' });
    const got = (await s.until('marker')).map((e) => [e.event, e.id, e.data]);
    assert.deepEqual(got, [
      ['notice', user[0], { n: 1 }],
      ['said', channel[0], 'hello'],
      ['everyone', everyone[0], true],
    ]);
  } finally {
    await nc.close();
    s.close();
  }
});

/**
 * A proxy to the gateway that relays each request whole but, for the first one, closes as soon
 * as the answer starts instead of passing it back: the publish is stored, the publisher never
 * hears so. Bytes are relayed as they come, however either side splits its writes.
 */
async function dropFirstAnswer(target) {
  const { hostname, port } = new URL(target);
  let requests = 0;
  const sockets = new Set();
  const server = createServer((client) => {
    requests += 1;
    const answer = requests > 1;
    const upstream = tcpConnect(Number(port), hostname);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    sockets.add(close);
    client.on('error', close);
    upstream.on('error', close);
    client.pipe(upstream);
    if (answer) upstream.pipe(client);
    else upstream.once('data', close);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const close = () => {
    server.close();
    for (const each of sockets) each();
  };
  return { url: `http://127.0.0.1:${server.address().port}`, requests: () => requests, close };
}

test('a publish whose answer is lost is stored once, with the first ids', async () => {
  const s = await stream('di');
  const proxy = await dropFirstAnswer(herald.url);
  const ids = await createPublisher({ url: proxy.url, key: PUBLISH_KEY, backoffMs: 20 }).publishToUser('di', {
    type: 'once',
    data: 1,
  });
  assert.equal(proxy.requests(), 2, 'retried after the lost answer');
  await createPublisher({ url: herald.url, key: PUBLISH_KEY }).publishToUser('di', { type: 'marker' });
  assert.deepEqual((await s.until('marker')).map((e) => [e.event, e.id]), [['once', ids[0]]]);
  proxy.close();
  s.close();
});

test('tokens grant exactly their channels, and expire', async () => {
  const tokens = [
    await mintToken({ secret: SECRET, user: 'ed', channels: ['doc:*'] }),
    await mintToken({ privateKey: readFileSync(join(KEYS, 'ec-private.pem')), kid: 'ec', user: 'ed', channels: ['doc:*'] }),
    await mintToken({ privateKey: readFileSync(join(KEYS, 'ed-private.pem')), kid: 'ed', user: 'ed', channels: ['doc:*'] }),
  ];
  for (const token of tokens) {
    const ok = await openStream(herald.url, token, ['doc:1']);
    assert.equal(ok.status, 200);
    ok.close();
    assert.equal((await openStream(herald.url, token, ['chat:1'])).status, 403);
  }
  const expired = await mintToken({ secret: SECRET, user: 'ed', channels: ['doc:*'], ttl: 1, now: Math.floor(Date.now() / 1000) - 3600 });
  assert.equal((await openStream(herald.url, expired, ['doc:1'])).status, 401);
});

test('the token handler answers a token for whom authenticate names, 401 otherwise', async () => {
  const handler = tokenHandler({
    secret: SECRET,
    ttl: 600,
    authenticate: (request) => (request.headers.get('cookie') === 'session=ok' ? { user: 'fe', channels: ['doc:*'] } : null),
  });
  assert.equal((await handler(new Request('http://app/api/herald-token'))).status, 401);
  const response = await handler(new Request('http://app/api/herald-token', { headers: { cookie: 'session=ok' } }));
  const { token, expiresIn } = await response.json();
  assert.equal(expiresIn, 600);
  const s = await openStream(herald.url, token, ['doc:9']);
  assert.equal(s.status, 200);
  s.close();
});

test('refusals are typed errors', async () => {
  await assert.rejects(
    createPublisher({ url: herald.url, key: 'not-a-publisher-key-0123456789' }).broadcast({ type: 'x' }),
    UnauthorizedError,
  );
  await assert.rejects(
    createPublisher({ url: herald.url, key: PUBLISH_KEY }).publishToChannel('bad channel', { type: 'x' }),
    (e) => e instanceof BadRequestError && e.code === 'invalid_channel',
  );
  const closed = await freePort();
  await assert.rejects(
    createPublisher({ url: `http://127.0.0.1:${closed}`, key: PUBLISH_KEY, retries: 1, backoffMs: 5 }).broadcast({ type: 'x' }),
    UnavailableError,
  );
});

test('the NATS publisher refuses what no gateway would deliver, before anything is stored', async () => {
  // Before: a reserved or malformed type, or a name the gateways refuse, was stored and
  // acknowledged with an id, then dropped by every gateway.
  const nc = await connect({ servers: herald.natsUrl });
  try {
    const jsm = await nc.jetstreamManager();
    const before = (await jsm.streams.info('HERALD')).state.messages;
    const viaNats = createPublisher({ nats: nc });
    const codes = [];
    for (const publish of [
      () => viaNats.publishToUser('cy', { type: 'connected', data: 1 }),
      () => viaNats.publishToUser('cy', { type: 'bad type', data: 1 }),
      () => viaNats.publish({ type: 'ok', data: 1, users: ['cy', 'not valid'] }),
      () => viaNats.publishToChannel('room 1', { type: 'ok', data: 1 }),
      () => viaNats.publishToUser('cy', { type: 'ok', data: 1 }, { id: 'order 1' }),
    ]) {
      await assert.rejects(publish(), (e) => {
        codes.push(e.code);
        return e instanceof BadRequestError;
      });
    }
    assert.deepEqual(codes, ['invalid_type', 'invalid_type', 'invalid_user', 'invalid_channel', 'invalid_id']);
    assert.equal((await jsm.streams.info('HERALD')).state.messages, before, 'nothing stored');
  } finally {
    await nc.close();
  }
});

test('an error carries the publish id to publish again with', async () => {
  const closed = await freePort();
  const publisher = createPublisher({ url: `http://127.0.0.1:${closed}`, key: PUBLISH_KEY, retries: 1, backoffMs: 5 });
  await assert.rejects(publisher.broadcast({ type: 'x' }, { id: 'order-9' }), (e) => e instanceof UnavailableError && e.id === 'order-9');
  await assert.rejects(publisher.broadcast({ type: 'x' }), (e) => e instanceof UnavailableError && /^[0-9a-f-]{36}$/.test(e.id));
});

test('no attempt outlasts the retry window', async () => {
  // A gateway that takes requests and never answers: each attempt waited its 30 s timeout, so
  // five attempts could reach the history 150 s after the first, past the 120 s duplicate
  // window, and store the event twice.
  const silent = createServer(() => {});
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
  try {
    const publisher = createPublisher({
      url: `http://127.0.0.1:${silent.address().port}`,
      key: PUBLISH_KEY,
      retries: 100,
      retryForMs: 1000,
    });
    const started = Date.now();
    await assert.rejects(publisher.broadcast({ type: 'x' }, { id: 'order-7' }), (e) => e instanceof UnavailableError && e.id === 'order-7');
    assert.ok(Date.now() - started < 10000, 'gave up within its window, not after 100 attempts of 30 s');
  } finally {
    silent.closeAllConnections?.();
    silent.close();
  }
});

// An HTTP server on loopback that answers each request, one per connection, with the next of
// `answers` (raw text, sent as it is, then the connection closed), and keeps each request's
// head and the publish's `id`.
async function scripted(answers) {
  const seen = { heads: [], ids: [] };
  const server = createServer((socket) => {
    let data = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      data = Buffer.concat([data, chunk]);
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = data.subarray(0, end).toString();
      const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      const body = data.subarray(end + 4);
      if (body.length < length) return;
      seen.heads.push(head);
      seen.ids.push(length ? JSON.parse(body.toString()).id : undefined);
      socket.end(answers.shift() ?? 'HTTP/1.1 500 Nothing scripted\r\ncontent-length: 0\r\n\r\n');
    });
    socket.on('error', () => {});
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, seen, close: () => server.close() };
}

const answer = (status, body, length = Buffer.byteLength(body)) =>
  `HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n\r\n${body}`;
const STORED = answer('200 OK', '{"ids":["e-1"]}');

test('a redirect is refused, and the key goes to no other host', async () => {
  const elsewhere = await scripted([answer('200 OK', '{}')]);
  const redirecting = await scripted([`HTTP/1.1 307 Temporary Redirect\r\nlocation: ${elsewhere.url}/steal\r\ncontent-length: 0\r\n\r\n`]);
  try {
    const publisher = createPublisher({ url: redirecting.url, key: PUBLISH_KEY, retries: 0 });
    await assert.rejects(
      publisher.broadcast({ type: 'x' }, { id: 'order-3' }),
      (e) => e instanceof HeraldError && e.status === 307 && e.id === 'order-3' && e.message.includes(elsewhere.url),
    );
    await fetch(`${elsewhere.url}/marker`, { method: 'POST', body: '{}' });
    assert.deepEqual(elsewhere.seen.heads.map((h) => h.split('\r\n')[0]), ['POST /marker HTTP/1.1']);
  } finally {
    elsewhere.close();
    redirecting.close();
  }
});

test('an answer cut off is retried with the same id', async () => {
  // A 200 whose body breaks off: the event was stored and its ids lost. The error that escaped
  // carried no id and was not retried, so the caller's own retry stored the event twice.
  const server = await scripted([answer('200 OK', '{"ids":["e-', 40), answer('200 OK', 'not json'), STORED]);
  try {
    const ids = await createPublisher({ url: server.url, key: PUBLISH_KEY, backoffMs: 5 }).broadcast({ type: 'x' });
    assert.deepEqual(ids, ['e-1']);
    assert.equal(server.seen.ids.length, 3);
    assert.equal(new Set(server.seen.ids).size, 1, 'every attempt with the same id');
  } finally {
    server.close();
  }
});

test("a proxy's 502 and 504, and a 408, are retried with the same id", async () => {
  const server = await scripted([answer('502 Bad Gateway', '<html>'), answer('504 Gateway Timeout', ''), answer('408 Request Timeout', '{"error":"request_timeout"}'), STORED]);
  try {
    assert.deepEqual(await createPublisher({ url: server.url, key: PUBLISH_KEY, backoffMs: 5 }).broadcast({ type: 'x' }), ['e-1']);
    assert.equal(server.seen.ids.length, 4);
    assert.equal(new Set(server.seen.ids).size, 1);
  } finally {
    server.close();
  }
});

test('an ephemeral publish is not sent twice', async () => {
  // No history stores it once: an attempt whose answer is lost may have been delivered. A 503,
  // where the gateway published nothing, and a 408, where it did not get the whole body, are
  // retried; the gateway's 504 `unconfirmed` (NATS did not take it in time) is not.
  const server = await scripted([
    answer('503 Service Unavailable', '{"error":"unavailable"}'),
    answer('408 Request Timeout', '{"error":"request_timeout"}'),
    answer('504 Gateway Timeout', '{"error":"unconfirmed"}'),
  ]);
  try {
    const publisher = createPublisher({ url: server.url, key: PUBLISH_KEY, backoffMs: 5 });
    await assert.rejects(
      publisher.broadcast({ type: 'x' }, { durable: false }),
      (e) => e instanceof UnavailableError && e.status === 504 && e.code === 'unconfirmed' && e.id === server.seen.ids[0],
    );
    assert.equal(server.seen.ids.length, 3, 'the 503 and the 408 retried, the 504 not');
  } finally {
    server.close();
  }
});

test('the NATS publisher names its ids by the history it stored them in, after the stream is made anew', async () => {
  // It read the epoch once, for good: after the stream was deleted and made again, every id it
  // answered named the old history, where no such event is.
  const own = await startHerald();
  const nc = await connect({ servers: own.natsUrl });
  try {
    const viaNats = createPublisher({ nats: nc });
    const [before] = await viaNats.publishToUser('dee', { type: 'notice', data: 1 });
    const jsm = await nc.jetstreamManager();
    const epochOf = (id) => id.slice(0, id.lastIndexOf('-'));
    await jsm.streams.delete('HERALD');
    let remade;
    for (const deadline = Date.now() + 10000; !remade; ) {
      assert.ok(Date.now() < deadline, 'the gateway makes the stream again');
      remade = await jsm.streams.info('HERALD').then((info) => info.config.metadata?.['herald.epoch']).catch(() => undefined);
      if (!remade) await new Promise((r) => setTimeout(r, 50));
    }
    assert.notEqual(remade, epochOf(before));
    const [after] = await viaNats.publishToUser('dee', { type: 'notice', data: 2 });
    assert.equal(epochOf(after), remade);
  } finally {
    await nc.close();
    own.stop();
  }
});

test('a NATS publisher whose epoch cannot be read again names its ids by the one it has', async (t) => {
  // A read of the epoch that fails, before a publish or after it, fails no publish: the one read
  // before names its ids.
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const acks = [5, 6, 1];
  let reads = 0;
  const nats = {
    jetstream: () => ({ publish: async () => ({ seq: acks.shift(), duplicate: false }) }),
    request: async () => {
      reads += 1;
      if (reads > 1) throw new Error('timeout');
      return { data: new TextEncoder().encode(JSON.stringify({ config: { metadata: { 'herald.epoch': 'e1' } } })) };
    },
  };
  const viaNats = createPublisher({ nats });
  assert.deepEqual(await viaNats.publishToUser('u', { type: 'n' }), ['e1-5']);
  // Read again once 10 s old: the read fails.
  t.mock.timers.tick(11_000);
  assert.deepEqual(await viaNats.publishToUser('u', { type: 'n' }), ['e1-6']);
  // A sequence going back: read again at once, and that read fails too.
  assert.deepEqual(await viaNats.publishToUser('u', { type: 'n' }), ['e1-1']);
  assert.equal(reads, 3);
});
