'use client';
// The seed's BookingStatus, on herald-client (inside its RealtimeProvider, whose getToken calls
// /api/herald-token): one stream per tab for every channel, resumed after reconnects, so a
// confirmation sent while the laptop slept still arrives.
import { useState } from 'react';
import { useEventStream } from 'herald-client/react';

export function BookingStatus({ bookingId }) {
  const [status, setStatus] = useState('pending');
  const { isConnected } = useEventStream({
    channels: [`booking:${bookingId}`],
    onEvent: (event) => {
      if (event.type === 'booking_update' && event.data.bookingId === bookingId) setStatus(event.data.status);
    },
  });
  return (
    <div>
      <span className={isConnected ? 'live' : 'connecting'}>{isConnected ? 'Live' : 'Connecting…'}</span>
      <p>Status: {status}</p>
    </div>
  );
}
