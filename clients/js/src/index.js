// herald-client: the browser client for Herald gateways. Only the public API is exported here;
// the SSE parser and the backoff are internals of the client.
export {
  createClient,
  HeraldClient,
  isValidName,
  isValidEventType,
  eventsUrl,
  HeraldRequestError,
  CONNECTING,
  OPEN,
  RECONNECTING,
  CLOSED,
  CONTROL_EVENTS,
} from './client.js';
