// Types of herald-server (src/index.js).

/** An event: its `type` (default `message`) and its `data` (any JSON). */
export interface HeraldEvent {
  type?: string;
  data?: unknown;
}

export interface PublishOptions {
  /** Idempotency key (1–128 of `A-Za-z0-9_.:-`); a fresh one when omitted. */
  id?: string;
  /** HTTP only: `false` sends an ephemeral event (not stored, not resumable). */
  durable?: boolean;
}

export interface Publish extends HeraldEvent, PublishOptions {
  users?: string[];
  channels?: string[];
  broadcast?: boolean;
}

/** Each call resolves to the ids the event was stored under: users, then channels, then broadcast. */
export interface Publisher {
  publish(publish: Publish): Promise<string[]>;
  publishToUser(user: string, event: HeraldEvent, options?: PublishOptions): Promise<string[]>;
  publishToChannel(channel: string, event: HeraldEvent, options?: PublishOptions): Promise<string[]>;
  broadcast(event: HeraldEvent, options?: PublishOptions): Promise<string[]>;
}

export interface HttpPublisherOptions {
  /** The gateway Service's base URL, e.g. `http://herald.realtime.svc`. */
  url: string;
  /** A publisher key of the gateways' `--publish-keys-file`. */
  key: string;
  /** Attempts after the first for a 408, 502, 503 or 504, a failed connection or an answer cut off (default 4); an ephemeral publish only after a 503, a 408 or a refused connection. */
  retries?: number;
  backoffMs?: number;
  timeoutMs?: number;
  /** No attempt starts or lasts past this many ms from the first (90000): keep it below the gateways' `--history-dedup-window`. */
  retryForMs?: number;
  fetch?: typeof fetch;
}

/** The part of a connected nats.js client the publisher uses. */
export interface NatsConnectionLike {
  jetstream(options?: { timeout?: number }): {
    publish(subject: string, payload: Uint8Array, options?: { headers?: unknown; msgID?: string }): Promise<{ seq: number }>;
  };
  request(subject: string, payload: Uint8Array, options?: { timeout?: number }): Promise<{ data: Uint8Array }>;
}

export interface NatsPublisherOptions {
  nats: NatsConnectionLike;
  /** The gateways' `--subject-prefix` (default `herald`). */
  prefix?: string;
  retries?: number;
  timeoutMs?: number;
}

export function createPublisher(options: HttpPublisherOptions | NatsPublisherOptions): Publisher;

export interface TokenClaims {
  user: string;
  /** Channel patterns the user may read: exact names, or prefixes ending in `*`. */
  channels?: string[];
  /** Seconds the token is valid (default 3600). */
  ttl?: number;
  /** Channel patterns the user may send client events to. */
  publish?: string[];
  /** A small JSON object shown to the others in presence lists. */
  presence?: Record<string, unknown>;
  issuer?: string;
  audience?: string;
  /** Unix seconds to count from (default: now). */
  now?: number;
}

export type TokenKey =
  | { secret: string | Uint8Array; privateKey?: undefined; kid?: string }
  | { privateKey: string | Uint8Array; secret?: undefined; kid?: string };

export function mintToken(options: TokenClaims & TokenKey): Promise<string>;

export interface TokenHandlerOptions {
  /** Who is asking, and what they may read; null answers 401. */
  authenticate(request: Request): Promise<Omit<TokenClaims, 'ttl' | 'now'> | null> | Omit<TokenClaims, 'ttl' | 'now'> | null;
  ttl?: number;
}

export function tokenHandler(options: TokenHandlerOptions & TokenKey): (request: Request) => Promise<Response>;

export class HeraldError extends Error {
  readonly status: number;
  /** Herald's `error` code, e.g. `invalid_channel`. */
  readonly code: string;
  readonly detail: string;
  /** The publish's idempotency key (yours, or the one made up for it): publish again with it. */
  readonly id?: string;
}
export class BadRequestError extends HeraldError {}
export class UnauthorizedError extends HeraldError {}
export class PayloadTooLargeError extends HeraldError {}
export class UnavailableError extends HeraldError {}
