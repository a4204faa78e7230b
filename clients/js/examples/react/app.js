// A React app on Herald, in the shape of the original hooks: RealtimeProvider at the top,
// useRealtimeChannel for one channel, useEventStream for a channel plus the user's own events.
// Plain React.createElement, so no JSX transform is needed; bundle it with any bundler
// (the e2e test uses esbuild: `esbuild app.js --bundle --format=esm`).
import { createElement as h, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { RealtimeProvider, useConnectionState, useEventStream, useRealtimeChannel } from 'herald-client/react';

// Where the gateway is, and (dev mode only) who we are. A real app passes `getToken` instead,
// fetching a short-lived JWT from its own backend.
const params = new URLSearchParams(location.search);
const gateway = new URL(params.get('gateway') ?? 'http://127.0.0.1:8080/', location.href);
gateway.searchParams.set('user', params.get('user') ?? 'alice');

function ConnectionBadge() {
  const state = useConnectionState();
  return h('div', { className: 'row' }, h('span', { className: `dot ${state}` }), h('span', { id: 'connection' }, state));
}

function AgentStatusIndicator({ agentId }) {
  const [status, setStatus] = useState('idle');
  const { isConnected } = useRealtimeChannel(`agent:${agentId}`, (event) => {
    if (event.type === 'agent_status') setStatus(event.data.status);
  });
  return h(
    'div',
    { className: 'card row' },
    h('span', { className: `dot ${status}` }),
    h('span', null, `Agent ${agentId}: `),
    h('b', { id: 'agent-status' }, isConnected ? status : `${status} (connecting…)`),
  );
}

function BookingStatus({ bookingId }) {
  const [status, setStatus] = useState('pending');
  const { lastEvent } = useEventStream({
    channels: [`booking:${bookingId}`],
    onEvent: (event) => {
      if (event.type === 'booking_update' && event.data.bookingId === bookingId) setStatus(event.data.status);
    },
  });
  return h(
    'div',
    { className: 'card' },
    h('div', null, `Booking #${bookingId}: `, h('b', { id: 'booking-status' }, status)),
    h('small', { id: 'last-event' }, lastEvent ? `last event: ${lastEvent.type}` : 'no event yet'),
  );
}

function App() {
  return h(
    RealtimeProvider,
    { options: { url: gateway.href } },
    h('h1', null, 'Herald + React'),
    h(ConnectionBadge),
    h(AgentStatusIndicator, { agentId: '7' }),
    h(BookingStatus, { bookingId: '42' }),
  );
}

createRoot(document.getElementById('root')).render(h(App));
