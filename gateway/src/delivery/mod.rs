//! From a broker message to the socket: the hub fans each message out to the sessions' outboxes
//! as one rendered SSE frame; each session's outbox feeds its HTTP response body.

pub(crate) mod close_reason;
pub mod hub;
pub mod outbox;
pub(crate) mod peer;
pub(crate) mod session;
pub mod sse;
