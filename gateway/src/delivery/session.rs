//! One actor per SSE connection. It owns the connection's lifecycle; events themselves flow
//! from the hub straight into its outbox and never pass through the actor's mailbox.
//!
//! Lifecycle: created by the `/events` handler after the hub membership is live (so the
//! `connected` frame, already queued, is only sent once events can arrive) → heartbeats every
//! interval (a failed write of one reveals a dead client) → stops when the response body is
//! dropped, the token expires, or the gateway drains → on stop, the membership and the
//! connection permit are dropped, which leaves the hub topics and frees the slot.
//!
//! Each close logs exactly one `connection closed` line: reason, duration, events, frames and
//! bytes. While traces are on, the session also holds its `connection` span, which ends then.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message};
use bytes::Bytes;

use crate::access::admission::Permit;
use crate::delivery::close_reason::CloseReason;
use crate::delivery::hub::Membership;
use crate::delivery::outbox::Outbox;
use crate::delivery::sse;
use crate::names::Name;
use crate::ops::metrics::Metrics;
use crate::ops::trace;
use crate::presence::PresenceGuard;

/// Sent by the response body when actix drops it: the client is gone or the stream ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BodyGone;

/// Everything a session needs, assembled by the `/events` handler.
pub struct Session {
    pub id: String,
    pub user: Name,
    pub outbox: Arc<Outbox>,
    /// Its topics in the hub; dropped (leaving them, the last member unsubscribing) with it.
    #[expect(dead_code, reason = "held for its drop: leaving the hub's topics")]
    pub membership: Membership,
    /// Its presence on presence-enabled channels; dropped (leaving them) with the session.
    pub presence: Option<PresenceGuard>,
    /// Its connection slot (`access/admission.rs`); dropped, freeing the slot, with it.
    #[expect(dead_code, reason = "held for its drop: freeing the connection slot")]
    pub permit: Permit,
    pub heartbeat: Duration,
    /// Unix seconds at which the token expires.
    pub expires_at: Option<u64>,
    pub opened: Instant,
    /// The `connection` span, while traces are on.
    pub span: Option<tracing::Span>,
    pub metrics: Arc<Metrics>,
}

/// A token expiring further ahead than this (about 100 years) is treated as never expiring.
const NEVER_SECS: u64 = 100 * 365 * 24 * 3600;

/// How long until a stream whose token expires at `exp` (Unix seconds) must end, `now` being
/// the time: with the same clock-skew allowance as the check at connect, so that a token
/// accepted within it does not end its stream at once. `None`: not within the gateway's
/// lifetime. Saturating throughout: `exp` is the token's to choose, up to `u64::MAX`.
fn expiry_delay(exp: u64, now: u64) -> Option<Duration> {
    let left = exp.saturating_add(crate::access::tokens::LEEWAY_SECS).saturating_sub(now);
    (left <= NEVER_SECS).then(|| Duration::from_secs(left))
}

/// How often a stream with presence checks whether its client has gone.
const PRESENCE_PROBE: Duration = Duration::from_secs(1);

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.heartbeat, |session, ctx| {
            if session.outbox.close_reason().is_some() {
                return ctx.stop();
            }
            if session.outbox.peer_closed() {
                session.outbox.close(CloseReason::Client, None);
                return ctx.stop();
            }
            if session.outbox.push(Bytes::from_static(sse::HEARTBEAT)).is_err() {
                ctx.stop();
            }
        });
        if self.presence.is_some() {
            // Others see this user leave when the stream ends: look for a closed tab more often
            // than once per heartbeat (one non-blocking peek per second).
            ctx.run_interval(PRESENCE_PROBE, |session, ctx| {
                if session.outbox.peer_closed() {
                    session.outbox.close(CloseReason::Client, None);
                    ctx.stop();
                }
            });
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if let Some(left) = self.expires_at.and_then(|exp| expiry_delay(exp, now)) {
            ctx.run_later(left, |session, _ctx| {
                let frame = sse::control_frame("token_expired", &serde_json::json!({"reason": "token_expired"}));
                // The body ends after this frame; its drop stops the actor.
                session.outbox.close(CloseReason::TokenExpired, Some(frame));
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let reason = self.outbox.close_reason().unwrap_or(CloseReason::Client);
        self.metrics.closed(reason);
        let duration_ms = self.opened.elapsed().as_millis() as u64;
        let totals = self.outbox.totals();
        // Written inside the span, so that a JSON line names the connection's trace.
        let _entered = self.span.as_ref().map(|span| span.enter());
        tracing::info!(
            connection = %self.id,
            user = %self.user,
            reason = reason.as_str(),
            duration_ms,
            events = totals.events,
            frames = totals.frames,
            bytes = totals.bytes,
            "connection closed"
        );
        if let Some(span) = &self.span {
            trace::record_close(span, reason.as_str(), duration_ms, totals);
        }
        self.outbox.close(reason, None);
    }
}

impl Handler<BodyGone> for Session {
    type Result = ();

    fn handle(&mut self, _: BodyGone, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_delays() {
        let leeway = crate::access::tokens::LEEWAY_SECS;
        assert_eq!(expiry_delay(1_000, 1_000), Some(Duration::from_secs(leeway)));
        assert_eq!(expiry_delay(1_060, 1_000), Some(Duration::from_secs(60 + leeway)));
        assert_eq!(expiry_delay(900, 1_000), Some(Duration::ZERO), "already past, leeway and all");
        assert_eq!(expiry_delay(u64::MAX, 1_000), None, "the end of time never ends a stream");
        assert_eq!(expiry_delay(u64::MAX - 1, 0), None);
    }
}
