//! Who may connect and publish.

/// Connection admission: the pod-wide and per-user limits, counted with RAII permits.
pub(crate) mod admission;
/// Client-token keys fetched from an identity provider's JWKS URLs, refreshed in the background.
pub mod jwks;
/// The keys client tokens are verified with, HMAC secrets keyed once.
pub(crate) mod keys;
/// Keys files of `name:secret` lines: the publisher keys and the dashboard keys.
pub mod publish_keys;
/// A token bucket per user, for client events.
pub(crate) mod rate;
/// Client tokens: JWT verification, channel grants and where a token is read from.
pub mod tokens;
