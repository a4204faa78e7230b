// The booking flow end to end, without Next.js: the token route answers the signed-in user's
// token (401 for nobody), a stream opens with it on the booking's channel, and the server action
// that confirms the booking reaches that stream, and the guest's and the host's.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mintToken } from 'herald-server';
import { PUBLISH_KEY, SECRET, openStream, startHerald } from '../../../test/support.js';

let herald;
before(async () => {
  herald = await startHerald();
  process.env.HERALD_URL = herald.url;
  process.env.HERALD_PUBLISHER_KEY = PUBLISH_KEY;
  process.env.HERALD_JWT_SECRET = SECRET;
});
after(() => herald?.stop());

test('a confirmed booking reaches the booking page, the guest and the host', async () => {
  const { GET } = await import('../app/api/herald-token/route.js');
  const { confirmBooking } = await import('../app/bookings/actions.js');

  assert.equal((await GET(new Request('http://app.example/api/herald-token'))).status, 401, 'nobody signed in');
  const answer = await GET(new Request('http://app.example/api/herald-token', { headers: { cookie: 'user=guest_7' } }));
  assert.equal(answer.status, 200);
  const { token } = await answer.json();
  const page = await openStream(herald.url, token, ['booking:42']);
  assert.equal(page.status, 200);
  assert.equal((await page.next()).event, 'connected');
  const host = await openStream(herald.url, await mintToken({ secret: SECRET, user: 'host_3' }));
  assert.equal((await host.next()).event, 'connected');

  const ids = await confirmBooking({ bookingId: '42', guestId: 'guest_7', hostId: 'host_3' });
  assert.equal(ids.length, 3, 'guest, host, channel');
  // The page's stream carries the guest's own events and the booking's channel: two copies.
  const first = await page.next();
  const second = await page.next();
  assert.deepEqual([first.event, first.data.bookingId, first.data.status], ['booking_update', '42', 'confirmed']);
  assert.deepEqual([first.id, second.id], [ids[0], ids[2]]);
  const hosted = await host.next();
  assert.deepEqual([hosted.event, hosted.id], ['booking_update', ids[1]]);
  // The same confirmation again (a retried action) stores nothing new: the same ids.
  assert.deepEqual(await confirmBooking({ bookingId: '42', guestId: 'guest_7', hostId: 'host_3' }), ids);
  page.close();
  host.close();
});
