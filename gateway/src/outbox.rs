//! A session's bounded outbound queue and the HTTP response body that drains it.
//!
//! The hub pushes shared frames ([`Bytes`] clones, no copies) without ever waiting: a push either
//! fits under the byte limit or closes the outbox as `slow`. The body hands everything queued to
//! the socket as one chunk, so a burst of events costs one write, not one per event.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_web::body::{BodySize, MessageBody};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

/// Largest chunk the body hands to the socket at once.
const MAX_CHUNK: usize = 64 * 1024;

/// Why a stream ended. Also the `reason` label of closed connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (a failed write or a closed socket).
    Client,
    /// The client did not read fast enough and its queue filled up.
    Slow,
    /// The client's token expired.
    TokenExpired,
    /// The gateway is shutting down.
    Drain,
    /// The gateway was at capacity.
    Overload,
    /// The subscription behind the stream failed.
    Error,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Slow => "slow",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Drain => "drain",
            CloseReason::Overload => "overload",
            CloseReason::Error => "error",
        }
    }
}

/// Result of a push that did not queue the frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The queue was full: the outbox is now closed with [`CloseReason::Slow`].
    Full,
    /// The outbox was already closed.
    Closed,
}

struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Set once; frames already queued are still written unless the reason is `Slow`.
    closed: Option<CloseReason>,
    waker: Option<Waker>,
}

/// The per-session queue. Shared by the hub (producer) and the response body (consumer).
pub struct Outbox {
    state: Mutex<State>,
    limit: usize,
}

impl Outbox {
    /// A queue holding at most `limit` bytes of unsent frames.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Outbox {
            state: Mutex::new(State { frames: VecDeque::new(), bytes: 0, closed: None, waker: None }),
            limit,
        })
    }

    /// Queues a frame without blocking. A frame that would overflow the queue closes the outbox
    /// as `slow` and drops what was queued: the client resumes from its last id.
    pub fn push(&self, frame: Bytes) -> Result<(), Rejected> {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return Err(Rejected::Closed);
            }
            if s.bytes + frame.len() > self.limit && !s.frames.is_empty() {
                s.closed = Some(CloseReason::Slow);
                s.frames.clear();
                s.bytes = 0;
                let w = s.waker.take();
                drop(s);
                if let Some(w) = w {
                    w.wake();
                }
                return Err(Rejected::Full);
            }
            s.bytes += frame.len();
            s.frames.push_back(frame);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Ends the stream after `last` (if any) and whatever is queued. Returns false if it was
    /// already closed.
    pub fn close(&self, reason: CloseReason, last: Option<Bytes>) -> bool {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return false;
            }
            if let Some(frame) = last {
                s.bytes += frame.len();
                s.frames.push_back(frame);
            }
            s.closed = Some(reason);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut s = self.state.lock();
        match s.frames.len() {
            0 => {
                if s.closed.is_some() {
                    return Poll::Ready(None);
                }
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            1 => {
                let f = s.frames.pop_front().unwrap_or_default();
                s.bytes -= f.len();
                Poll::Ready(Some(f))
            }
            _ => {
                let mut chunk = BytesMut::with_capacity(s.bytes.min(MAX_CHUNK));
                while let Some(f) = s.frames.front() {
                    if !chunk.is_empty() && chunk.len() + f.len() > MAX_CHUNK {
                        break;
                    }
                    chunk.extend_from_slice(f);
                    let len = f.len();
                    s.frames.pop_front();
                    s.bytes -= len;
                }
                Poll::Ready(Some(chunk.freeze()))
            }
        }
    }
}

/// The streaming response body of one SSE connection. Dropped by actix when the response ends
/// or a write fails; dropping it closes the outbox and runs `on_drop`, which stops the session.
pub struct OutboxBody {
    outbox: Arc<Outbox>,
    on_drop: Option<Box<dyn FnOnce() + 'static>>,
}

impl OutboxBody {
    pub fn new(outbox: Arc<Outbox>, on_drop: impl FnOnce() + 'static) -> Self {
        OutboxBody { outbox, on_drop: Some(Box::new(on_drop)) }
    }
}

impl MessageBody for OutboxBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.outbox.poll_chunk(cx).map(|c| c.map(Ok))
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        self.outbox.close(CloseReason::Client, None);
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker;

    fn poll(ob: &Outbox) -> Poll<Option<Bytes>> {
        let waker = noop_waker();
        ob.poll_chunk(&mut Context::from_waker(&waker))
    }

    #[test]
    fn coalesces_queued_frames() {
        let ob = Outbox::new(1024);
        assert_eq!(poll(&ob), Poll::Pending);
        ob.push(Bytes::from_static(b"a\n\n")).unwrap();
        ob.push(Bytes::from_static(b"b\n\n")).unwrap();
        assert_eq!(ob.queued_bytes(), 6);
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"a\n\nb\n\n"))));
        assert_eq!(ob.queued_bytes(), 0);
        assert_eq!(poll(&ob), Poll::Pending);
    }

    #[test]
    fn overflow_closes_as_slow_and_drops_the_queue() {
        let ob = Outbox::new(10);
        ob.push(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(ob.push(Bytes::from_static(b"abc")), Err(Rejected::Full));
        assert_eq!(ob.close_reason(), Some(CloseReason::Slow));
        assert_eq!(ob.push(Bytes::from_static(b"x")), Err(Rejected::Closed));
        assert_eq!(poll(&ob), Poll::Ready(None));
    }

    #[test]
    fn a_single_frame_larger_than_the_limit_still_fits_an_empty_queue() {
        let ob = Outbox::new(4);
        ob.push(Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"0123456789"))));
    }

    #[test]
    fn close_flushes_the_last_frame_then_ends() {
        let ob = Outbox::new(1024);
        ob.push(Bytes::from_static(b"e1")).unwrap();
        assert!(ob.close(CloseReason::TokenExpired, Some(Bytes::from_static(b"bye"))));
        assert!(!ob.close(CloseReason::Drain, None));
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"e1bye"))));
        assert_eq!(poll(&ob), Poll::Ready(None));
    }

    #[test]
    fn chunks_are_bounded() {
        let ob = Outbox::new(1 << 20);
        for _ in 0..3 {
            ob.push(Bytes::from(vec![b'x'; MAX_CHUNK / 2])).unwrap();
        }
        let Poll::Ready(Some(first)) = poll(&ob) else { panic!() };
        assert_eq!(first.len(), MAX_CHUNK);
        let Poll::Ready(Some(second)) = poll(&ob) else { panic!() };
        assert_eq!(second.len(), MAX_CHUNK / 2);
    }
}
