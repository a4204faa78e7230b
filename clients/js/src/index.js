// herald-client: the browser client for Herald gateways.
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
export { createParser } from './parser.js';
export { Backoff, backoffCeiling, fullJitter, systemClock, DEFAULT_BASE_MS, DEFAULT_CAP_MS } from './backoff.js';
