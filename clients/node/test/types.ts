// Type-checked by `tsc --noEmit` (never run): the public API used as the docs show it.
import { connect } from 'nats';
import { createPublisher, mintToken, tokenHandler, BadRequestError, type Publisher } from '../index.js';

export async function examples(): Promise<void> {
  const http: Publisher = createPublisher({ url: 'http://herald.realtime.svc', key: 'k' });
  const ids: string[] = await http.publishToChannel('booking:42', { type: 'booking_update', data: { status: 'confirmed' } });
  await http.publishToUser('u1', { type: 'notice', data: 1 }, { id: 'order-1', durable: false });
  await http.broadcast({ type: 'maintenance' });
  await http.publish({ users: ['u1'], channels: ['c'], type: 't', data: null, id: ids[0] });
  const viaNats = createPublisher({ nats: await connect({ servers: 'nats://127.0.0.1:4222' }) });
  await viaNats.publishToUser('u1', { type: 'notice' });
  const token: string = await mintToken({ secret: 's', user: 'u1', channels: ['booking:*'], ttl: 60 });
  await mintToken({ privateKey: '-----BEGIN PRIVATE KEY-----', kid: 'k1', user: 'u1' });
  const handler: (r: Request) => Promise<Response> = tokenHandler({
    secret: 's',
    authenticate: async (request) => (request.headers.get('cookie') ? { user: 'u1', channels: ['booking:*'] } : null),
  });
  void token;
  void handler;
  try {
    await http.broadcast({});
  } catch (e) {
    if (e instanceof BadRequestError) console.log(e.code, e.status);
  }
}
