// The app's Herald publisher, and the seed's notifyBookingUpdate on top of it.
import { createPublisher } from 'herald-server';

let publisher;

/** The publisher, made on first use from the environment. */
export function herald() {
  publisher ??= createPublisher({ url: process.env.HERALD_URL ?? '', key: process.env.HERALD_PUBLISHER_KEY ?? '' });
  return publisher;
}

/**
 * Tells the guest, the host and everyone watching the booking that its status changed. One
 * publish, three targets: one id each, stored once even if retried.
 * @param {string} bookingId
 * @param {string} guestId
 * @param {string} hostId
 * @param {string} status
 */
export async function notifyBookingUpdate(bookingId, guestId, hostId, status) {
  return herald().publish({
    type: 'booking_update',
    data: { bookingId, status, timestamp: new Date().toISOString() },
    users: [guestId, hostId],
    channels: [`booking:${bookingId}`],
    // Retries of the same change of the same booking are one event.
    id: `booking-${bookingId}-${status}`,
  });
}
