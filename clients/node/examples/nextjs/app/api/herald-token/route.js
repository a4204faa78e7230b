// GET /api/herald-token: the browser client's getToken. A client token for the signed-in user,
// allowed on their bookings' channels, for ten minutes (when it expires, the gateway says
// `token_expired` and the client asks for a fresh one and resumes). The client takes this JSON as
// it is: `getToken: async () => (await fetch('/api/herald-token')).json()`.
import { tokenHandler } from 'herald-server';

export const GET = tokenHandler({
  secret: process.env.HERALD_JWT_SECRET ?? '',
  ttl: 600,
  /** @param {Request} request */
  authenticate: (request) => {
    // A stand-in session: the `user` cookie. Use your own session lookup here.
    const user = /(?:^|;\s*)user=([A-Za-z0-9_-]+)/.exec(request.headers.get('cookie') ?? '')?.[1];
    return user ? { user, channels: ['booking:*'] } : null;
  },
});
