// Names and event types: what the gateway accepts as a user or channel name, and which event
// types it keeps for itself.

/** Event types the gateway reserves for control frames. */
/** @type {readonly ['connected', 'reset', 'token_expired']} */
export const CONTROL_EVENTS = Object.freeze(['connected', 'reset', 'token_expired']);

/** Event types no client event may use: the gateway's own frames, and `error`. */
const RESERVED_TYPES = new Set([...CONTROL_EVENTS, 'presence', 'error']);

const NAME = /^[A-Za-z0-9_\-:@=+~]+(?:\.[A-Za-z0-9_\-:@=+~]+)*$/;
const TYPE = /^[A-Za-z0-9_\-:.]{1,64}$/;

/**
 * Whether `name` is a valid Herald user or channel name: 1–128 ASCII letters, digits and
 * `_ - : @ = + ~`, with `.` separating non-empty segments.
 *
 * @param {unknown} name
 * @returns {name is string}
 */
export function isValidName(name) {
  return typeof name === 'string' && name.length >= 1 && name.length <= 128 && NAME.test(name);
}

/**
 * Whether `type` can name a client event: 1–64 ASCII letters, digits and `_ - : .`, and none of
 * the types the gateway reserves (`connected`, `reset`, `token_expired`, `presence`, `error`).
 *
 * @param {unknown} type
 * @returns {type is string}
 */
export function isValidEventType(type) {
  return typeof type === 'string' && TYPE.test(type) && !RESERVED_TYPES.has(type);
}
