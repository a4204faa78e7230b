//! From a broker message to the socket: the hub fans each message out to the sessions' outboxes
//! as one rendered SSE frame; each session's outbox feeds its HTTP response body.

/// Why a stream ended, as logged and counted.
pub(crate) mod close_reason;
/// One broker subscription per subject per pod, merged into one ordered flow and fanned out.
pub mod hub;
/// A stream's bounded queue and the HTTP response body that drains it.
pub mod outbox;
/// The client's socket as a session sees it: kernel timeouts and a liveness probe.
pub mod peer;
/// One actor per SSE connection: membership, heartbeats, token expiry.
pub(crate) mod session;
/// SSE frame rendering, once per event and pod.
pub mod sse;
