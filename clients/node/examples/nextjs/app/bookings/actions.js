'use server';
// The server action behind the "Confirm" button: stores the new status (your database), then
// pushes it to the guest, the host and the booking's page.
import { notifyBookingUpdate } from '../../lib/herald.js';

/**
 * @param {{ bookingId: string, guestId: string, hostId: string }} booking
 * @returns {Promise<string[]>} the ids Herald stored the update under
 */
export async function confirmBooking({ bookingId, guestId, hostId }) {
  // await db.booking.update({ where: { id: bookingId }, data: { status: 'confirmed' } });
  return notifyBookingUpdate(bookingId, guestId, hostId, 'confirmed');
}
