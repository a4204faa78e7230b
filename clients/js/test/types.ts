// Type-checked by `tsc --noEmit -p .` (in scripts/test-browser): the declarations against the
// sources, and a typed example of the API as an app uses it. Not run.
import {
  CLOSED,
  createClient,
  HeraldRequestError,
  isValidName,
  type ConnectedInfo,
  type ConnectionState,
  type HeraldEvent,
  type PresenceChange,
  type ShareRole,
  type TokenAnswer,
} from 'herald-client';
import * as declared from 'herald-client';
import * as declaredReact from 'herald-client/react';
import { RealtimeProvider, useEventStream, usePresence, useRealtimeChannel } from 'herald-client/react';
import * as source from '../src/index.js';
import * as sourceReact from '../src/react.js';

// The sources export every value the declarations promise, with shapes that fit them.
export const sourcesFitTheDeclarations: typeof declared = source;
export const reactSourcesFitTheDeclarations: typeof declaredReact = sourceReact;

// An app.
interface BookingUpdate {
  bookingId: string;
  status: 'pending' | 'confirmed' | 'cancelled';
}

const client = createClient({
  url: 'https://realtime.example.com',
  getToken: async ({ refresh }) => {
    const res = await fetch(`/api/herald-token${refresh ? '?fresh=1' : ''}`);
    return res.text();
  },
  channels: ['news'],
  onStateChange: (state: ConnectionState, previous: ConnectionState) => console.log(previous, '->', state),
});

// A token endpoint's JSON (herald-server's tokenHandler) is taken as it is.
const fromEndpoint: TokenAnswer = { token: 'ey…', expiresIn: 600 };
createClient({ url: 'https://realtime.example.com', getToken: () => fromEndpoint }).close();

const role: ShareRole = client.role;
const stop = client.subscribe<BookingUpdate>('booking:42', (event: HeraldEvent<BookingUpdate>) => {
  const status: BookingUpdate['status'] = event.data.status;
  console.log(event.id, event.channel, status, role);
});
client.on('connected', (event) => {
  const info: ConnectedInfo = event.data;
  console.log(info.connectionId, info.user, info.channels.join(','), info.resumed);
});
client.on('presence', (event) => {
  const change: PresenceChange = event.data;
  console.log(change.action, change.user);
});
client.on('error', (event) => {
  if (event.fatal) console.log(event.status, event.error);
});
client
  .publish('booking:42', 'typing', { at: Date.now() })
  .catch((err: unknown) => {
    if (err instanceof HeraldRequestError && err.status === 429) console.log(err.retryAfter);
  });
if (isValidName('booking:42') && client.state !== CLOSED) stop();

// React: the bindings' types as a component uses them (no JSX needed to check them).
export function Booking({ id }: { id: string }) {
  const { isConnected } = useRealtimeChannel<BookingUpdate>(`booking:${id}`, (event) => console.log(event.data.status));
  const { lastEvent } = useEventStream<BookingUpdate>({ channels: [`booking:${id}`] });
  const presence = usePresence(`booking:${id}`);
  return { isConnected, status: lastEvent?.data.status, presence };
}
export const provider = RealtimeProvider({ options: { url: '/realtime', share: true }, children: null });
