//! A session's bounded outbound queue and the HTTP response body that drains it.
//!
//! The hub pushes shared frames ([`Bytes`] clones, no copies) without ever waiting: a push either
//! fits under the byte limit or closes the outbox as `slow`. The body hands everything queued to
//! the socket as one chunk, so a burst of events costs one write, not one per event.
//!
//! The body is also where frames reach the socket, so it counts what was sent and, for live
//! events stamped at publish, their delivery latency: per chunk, with atomics only (`ops/metrics.rs`).
//!
//! About 600 lines: the queue and its body are one piece, as the body drains what the queue
//! holds; some 170 of them are the tests of its limits and order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_web::body::{BodySize, MessageBody};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::delivery::close_reason::CloseReason;
use crate::delivery::peer::PeerSocket;
use crate::ops::metrics::{Metrics, unix_nanos};

/// Largest chunk the body hands to the socket at once.
const MAX_CHUNK: usize = 64 * 1024;

/// What a queued frame is, for the metrics counted when it reaches the socket: a control frame,
/// an event without a publish stamp, or an event stamped at publish (its Unix nanoseconds, for
/// the delivery latency). One word per frame, as a queue holds many: the two kinds without a
/// stamp take the two values no stamp can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameKind(u64);

impl FrameKind {
    const CONTROL: FrameKind = FrameKind(0);
    const UNSTAMPED_EVENT: FrameKind = FrameKind(1);

    fn event(published_at: Option<u64>) -> FrameKind {
        match published_at {
            Some(at) if at > Self::UNSTAMPED_EVENT.0 => FrameKind(at),
            _ => Self::UNSTAMPED_EVENT,
        }
    }

    fn is_event(self) -> bool {
        self != Self::CONTROL
    }

    fn published_at(self) -> Option<u64> {
        (self.0 > Self::UNSTAMPED_EVENT.0).then_some(self.0)
    }
}

/// Result of a push that did not queue the frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The queue was full: the outbox is now closed with [`CloseReason::Slow`].
    Full,
    /// The outbox was already closed.
    Closed,
    /// A durable event this stream never had, arriving after a newer one (its cursor): it can
    /// no longer go out in order. The caller queues a `reset` naming the cursor
    /// ([`Outbox::reset_missed`]).
    Missed { cursor: u64 },
}

struct State {
    frames: VecDeque<(Bytes, FrameKind)>,
    bytes: usize,
    /// While `Some`, events from the hub wait here with their sequence, until the stream's
    /// opening frames (and a resume's replay) are queued: see [`Outbox::release`].
    before_release: Option<Vec<(Option<u64>, Bytes, FrameKind)>>,
    /// Set once; frames already queued are still written unless the reason is `Slow`.
    closed: Option<CloseReason>,
    /// The stream's durable cursor: the sequence of the last durable event queued, or where its
    /// client starts (set by [`Outbox::release`]). A durable event at or below it is never
    /// queued again, whatever path it comes by: a replay, a held event, a refill of the hub.
    cursor: Option<u64>,
    /// Where what the client has stops depending on live delivery: the cursor it started at
    /// ([`Outbox::release`]: its first cursor, a resume's end, a reset's id), or the last
    /// [`Outbox::reset_missed`]. A durable event above it and at or below `cursor` came live
    /// after a newer one, which only a hub refilling events lost in transit sends.
    covered: Option<u64>,
    /// The opening frames are queued ([`Outbox::open`]): control frames (heartbeats) go out
    /// even while live events are still held behind a replay.
    opened: bool,
    waker: Option<Waker>,
    /// The replay waiting for room in the queue ([`Outbox::poll_room`]).
    room_waker: Option<Waker>,
    /// The client's socket, while the response body is alive (see [`PeerSocket`]).
    peer: Option<PeerSocket>,
    totals: Totals,
}

/// What a stream carried, for the line logged when it closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events queued for the client (live and replayed; a `slow` close drops the unsent ones).
    pub events: u64,
    /// Frames handed to the socket: events, heartbeats and control frames.
    pub frames: u64,
    /// Bytes handed to the socket.
    pub bytes: u64,
}

/// The per-session queue. Shared by the hub (producer) and the response body (consumer).
pub struct Outbox {
    state: Mutex<State>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// A queue holding at most `limit` bytes of unsent frames. It starts out holding events
    /// back until [`Outbox::release`] queues the stream's opening frames ahead of them.
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                before_release: Some(Vec::new()),
                closed: None,
                cursor: None,
                covered: None,
                opened: false,
                waker: None,
                room_waker: None,
                peer: None,
                totals: Totals::default(),
            }),
            limit,
            metrics,
        })
    }

    /// Queues a control frame (a heartbeat) without blocking, as [`Outbox::push_event`] does.
    pub fn push(&self, frame: Bytes) -> Result<(), Rejected> {
        self.enqueue(frame, None, FrameKind::CONTROL)
    }

    /// Queues a live event's frame without blocking; `seq` is the event's sequence for durable
    /// events, `published_at` its publish stamp (Unix nanoseconds) when it has one. A frame that
    /// would overflow the queue closes the outbox as `slow` and drops what was queued: the
    /// client resumes from its last id. A durable event at or below the stream's cursor is
    /// skipped when the client has it already, and answered [`Rejected::Missed`] when it
    /// never had it.
    pub fn push_event(&self, frame: Bytes, seq: Option<u64>, published_at: Option<u64>) -> Result<(), Rejected> {
        self.enqueue(frame, seq, FrameKind::event(published_at))
    }

    fn enqueue(&self, frame: Bytes, seq: Option<u64>, kind: FrameKind) -> Result<(), Rejected> {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return Err(Rejected::Closed);
            }
            if s.before_release.is_none()
                && let (Some(seq), Some(cursor)) = (seq, s.cursor)
                && seq <= cursor
            {
                if seq > s.covered.unwrap_or(0) {
                    return Err(Rejected::Missed { cursor });
                }
                return Ok(());
            }
            if s.bytes + frame.len() > self.limit
                && (!s.frames.is_empty() || s.before_release.as_ref().is_some_and(|h| !h.is_empty()))
            {
                s.closed = Some(CloseReason::Slow);
                s.frames.clear();
                s.before_release = None;
                s.bytes = 0;
                // A client that stopped reading also stalls actix's own writes, which would keep
                // the connection open forever: cut it at the socket.
                if let Some(peer) = s.peer.take() {
                    peer.shutdown();
                }
                let wakers = [s.waker.take(), s.room_waker.take()];
                drop(s);
                wakers.into_iter().flatten().for_each(Waker::wake);
                return Err(Rejected::Full);
            }
            s.bytes += frame.len();
            s.totals.events += u64::from(kind.is_event());
            let control_goes_out = s.opened && kind == FrameKind::CONTROL;
            if let Some(held) = &mut s.before_release
                && !control_goes_out
            {
                // Nothing held has gone out yet: an event older than one held (lost in transit,
                // and refilled by the hub after a newer one on another subject) goes before it,
                // so that the release queues every held event in order.
                // Most come in order: the newest held event is found from the end.
                let newest = || held.iter().rev().find_map(|(h, ..)| *h);
                let at = seq
                    .filter(|&seq| newest().is_some_and(|newest| newest > seq))
                    .and_then(|seq| held.iter().position(|(h, ..)| h.is_some_and(|h| h > seq)));
                held.insert(at.unwrap_or(held.len()), (seq, frame, kind));
                return Ok(());
            }
            s.frames.push_back((frame, kind));
            if seq.is_some() {
                s.cursor = seq;
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `reset` (a `reset` frame naming the stream's cursor) after a push answered
    /// [`Rejected::Missed`]: the client refetches its state, which covers everything up to the
    /// cursor, so events at or below it are skipped from now on.
    pub fn reset_missed(&self, reset: Bytes) {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return;
            }
            s.bytes += reset.len();
            s.frames.push_back((reset, FrameKind::CONTROL));
            s.covered = s.cursor;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues the stream's opening frames (`connected`) while live events stay held behind a
    /// replay that [`Outbox::push_replayed`] queues page by page; [`Outbox::release`] ends it.
    pub fn open(&self, opening: impl IntoIterator<Item = Bytes>) {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() || s.opened {
                return;
            }
            for frame in opening {
                s.bytes += frame.len();
                s.frames.push_back((frame, FrameKind::CONTROL));
            }
            s.opened = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues one replayed event's frame ahead of the held live events. The replay asks for no
    /// more than [`Outbox::poll_room`] gave it (and one event more when the queue was empty),
    /// so this never closes the stream: live events overflowing the queue do.
    pub fn push_replayed(&self, frame: Bytes) -> Result<(), Rejected> {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return Err(Rejected::Closed);
            }
            s.bytes += frame.len();
            s.totals.events += 1;
            s.frames.push_back((frame, FrameKind::CONTROL));
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// How many bytes of replay the queue has room for now: ready once it holds less than half
    /// its limit (the other half is for the live events arriving meanwhile), or nothing at all.
    /// `None` once the stream is closed.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return Poll::Ready(None);
        }
        let share = self.limit / 2;
        if s.bytes < share || s.frames.is_empty() {
            return Poll::Ready(Some(share.saturating_sub(s.bytes)));
        }
        match &s.room_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.room_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Ends holding: queues `opening` (the `connected` frame, a `reset`), then the held events. `cursor` is the sequence the client holds once it has the opening
    /// frames (its first cursor, a reset's, the last replayed event's, or its own id when it
    /// missed nothing): held durable events at or below it are skipped, as is every later one.
    /// From here on, events are queued as they come.
    pub fn release(&self, opening: impl IntoIterator<Item = Bytes>, cursor: Option<u64>) {
        let waker = {
            let mut s = self.state.lock();
            let Some(held) = s.before_release.take() else { return };
            if s.closed.is_some() {
                return;
            }
            for frame in opening {
                s.bytes += frame.len();
                s.frames.push_back((frame, FrameKind::CONTROL));
            }
            s.cursor = cursor;
            s.covered = cursor;
            for (seq, frame, kind) in held {
                match (seq, s.cursor) {
                    (Some(seq), Some(cursor)) if seq <= cursor => {
                        s.bytes -= frame.len();
                        s.totals.events -= 1;
                    }
                    _ => {
                        if seq.is_some() {
                            s.cursor = seq;
                        }
                        s.frames.push_back((frame, kind));
                    }
                }
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
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
                s.frames.push_back((frame, FrameKind::CONTROL));
            }
            // Held events will never be sent: they no longer wait in the queue.
            let held: usize = s.before_release.take().iter().flatten().map(|(_, frame, _)| frame.len()).sum();
            s.bytes -= held;
            s.closed = Some(reason);
            [s.waker.take(), s.room_waker.take()]
        };
        waker.into_iter().flatten().for_each(Waker::wake);
        true
    }

    /// Records the client's socket, for liveness probes and for cutting off a slow client.
    pub fn set_peer(&self, peer: Option<PeerSocket>) {
        self.state.lock().peer = peer;
    }

    /// True when the client has closed its side of the connection.
    pub fn peer_closed(&self) -> bool {
        self.state.lock().peer.is_some_and(|p| p.closed_by_peer())
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// What the stream carried so far.
    pub fn totals(&self) -> Totals {
        self.state.lock().totals
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    pub(crate) fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut s = self.state.lock();
        // Metrics of the chunk: live events in it, and a clock read only when one is stamped.
        let mut events = 0u64;
        let mut now = 0u64;
        let mut count = |kind: FrameKind| {
            if kind.is_event() {
                events += 1;
                if let Some(at) = kind.published_at() {
                    if now == 0 {
                        now = unix_nanos();
                    }
                    self.metrics.delivered(at, now);
                }
            }
        };
        let chunk = match s.frames.len() {
            0 => {
                if s.closed.is_some() {
                    return Poll::Ready(None);
                }
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            1 => {
                let (f, kind) = s.frames.pop_front().unwrap_or((Bytes::new(), FrameKind::CONTROL));
                s.bytes -= f.len();
                s.totals.frames += 1;
                count(kind);
                f
            }
            _ => {
                let mut chunk = BytesMut::with_capacity(s.bytes.min(MAX_CHUNK));
                while let Some((f, kind)) = s.frames.front() {
                    if !chunk.is_empty() && chunk.len() + f.len() > MAX_CHUNK {
                        break;
                    }
                    chunk.extend_from_slice(f);
                    let (len, kind) = (f.len(), *kind);
                    s.frames.pop_front();
                    s.bytes -= len;
                    s.totals.frames += 1;
                    count(kind);
                }
                chunk.freeze()
            }
        };
        s.totals.bytes += chunk.len() as u64;
        let room = s.room_waker.take();
        drop(s);
        if let Some(w) = room {
            w.wake();
        }
        self.metrics.sent(events, chunk.len() as u64);
        Poll::Ready(Some(chunk))
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
        // Forget the socket before actix closes it: its descriptor may be reused from now on.
        self.outbox.state.lock().peer = None;
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

    fn open(limit: usize) -> Arc<Outbox> {
        let ob = Outbox::new(limit, Arc::new(Metrics::new()));
        ob.release([], None);
        ob
    }

    fn poll(ob: &Outbox) -> Poll<Option<Bytes>> {
        let waker = noop_waker();
        ob.poll_chunk(&mut Context::from_waker(&waker))
    }

    #[test]
    fn coalesces_queued_frames() {
        let ob = open(1024);
        assert_eq!(poll(&ob), Poll::Pending);
        ob.push_event(Bytes::from_static(b"a\n\n"), None, None).unwrap();
        ob.push_event(Bytes::from_static(b"b\n\n"), None, None).unwrap();
        assert_eq!(ob.queued_bytes(), 6);
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"a\n\nb\n\n"))));
        assert_eq!(ob.queued_bytes(), 0);
        assert_eq!(poll(&ob), Poll::Pending);
    }

    #[test]
    fn overflow_closes_as_slow_and_drops_the_queue() {
        let ob = open(10);
        ob.push_event(Bytes::from_static(b"12345678"), None, None).unwrap();
        assert_eq!(ob.push_event(Bytes::from_static(b"abc"), None, None), Err(Rejected::Full));
        assert_eq!(ob.close_reason(), Some(CloseReason::Slow));
        assert_eq!(ob.push_event(Bytes::from_static(b"x"), None, None), Err(Rejected::Closed));
        assert_eq!(poll(&ob), Poll::Ready(None));
    }

    #[test]
    fn a_single_frame_larger_than_the_limit_still_fits_an_empty_queue() {
        let ob = open(4);
        ob.push_event(Bytes::from_static(b"0123456789"), None, None).unwrap();
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"0123456789"))));
    }

    #[test]
    fn close_flushes_the_last_frame_then_ends() {
        let ob = open(1024);
        ob.push_event(Bytes::from_static(b"e1"), None, None).unwrap();
        assert!(ob.close(CloseReason::TokenExpired, Some(Bytes::from_static(b"bye"))));
        assert!(!ob.close(CloseReason::Drain, None));
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"e1bye"))));
        assert_eq!(poll(&ob), Poll::Ready(None));
    }

    #[test]
    fn closing_while_holding_drops_the_held_bytes() {
        let ob = Outbox::new(1024, Arc::new(Metrics::new()));
        ob.push_event(Bytes::from_static(b"[5]"), Some(5), None).unwrap();
        assert_eq!(ob.queued_bytes(), 3);
        ob.close(CloseReason::Client, Some(Bytes::from_static(b"bye")));
        assert_eq!(ob.queued_bytes(), 3, "only the last frame is still to be sent");
    }

    #[test]
    fn holds_events_until_released_and_drops_what_the_replay_covered() {
        let ob = Outbox::new(1024, Arc::new(Metrics::new()));
        ob.push_event(Bytes::from_static(b"[5]"), Some(5), None).unwrap();
        ob.push_event(Bytes::from_static(b"[e]"), None, None).unwrap();
        ob.push_event(Bytes::from_static(b"[7]"), Some(7), None).unwrap();
        assert_eq!(poll(&ob), Poll::Pending, "nothing is sent while holding");
        ob.release([Bytes::from_static(b"[c]"), Bytes::from_static(b"[r5]"), Bytes::from_static(b"[r6]")], Some(6));
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[c][r5][r6][e][7]"))));
        assert_eq!(ob.queued_bytes(), 0);
        ob.push_event(Bytes::from_static(b"[8]"), Some(8), None).unwrap();
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[8]"))));
    }

    #[test]
    fn the_cursor_never_goes_backwards() {
        let ob = Outbox::new(1024, Arc::new(Metrics::new()));
        ob.push_event(Bytes::from_static(b"[9]"), Some(9), None).unwrap();
        ob.push_event(Bytes::from_static(b"[11]"), Some(11), None).unwrap();
        // The client starts at 10: 9 is behind it, 11 after it.
        ob.release([Bytes::from_static(b"[c]")], Some(10));
        // By any path, an event at or below the last one sent is not sent again; ephemeral
        // events (no sequence) always are. One at or below where the client started is
        // skipped; one above it came after a newer one (the hub sends every event once per
        // topic), and is answered `Missed`, until a `reset` moves where the client stands.
        let push = |frame: &'static [u8], seq| ob.push_event(Bytes::from_static(frame), seq, None);
        assert_eq!(push(b"[10]", Some(10)), Ok(()));
        assert_eq!(push(b"[11]", Some(11)), Err(Rejected::Missed { cursor: 11 }));
        assert_eq!(push(b"[e]", None), Ok(()));
        assert_eq!(push(b"[12]", Some(12)), Ok(()));
        assert_eq!(push(b"[12]", Some(12)), Err(Rejected::Missed { cursor: 12 }));
        ob.reset_missed(Bytes::from_static(b"[reset 12]"));
        assert_eq!(push(b"[11]", Some(11)), Ok(()), "the client refetched up to 12");
        assert_eq!(push(b"[3]", Some(3)), Ok(()));
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[c][11][e][12][reset 12]"))));
        assert_eq!(ob.totals().events, 3);
        // A duplicate never counts against the queue limit either.
        assert_eq!(ob.queued_bytes(), 0);
    }

    /// A stream still replaying holds live events; one refilled after a newer one (lost in
    /// transit on its way to the gateway) is released in its place, not dropped as older.
    #[test]
    fn an_older_event_held_after_a_newer_one_is_released_in_order() {
        let ob = Outbox::new(1024, Arc::new(Metrics::new()));
        for (frame, seq) in [(&b"[5]"[..], Some(5)), (b"[9]", Some(9)), (b"[e]", None), (b"[7]", Some(7))] {
            ob.push_event(Bytes::from_static(frame), seq, None).unwrap();
        }
        ob.release([Bytes::from_static(b"[c]")], Some(4));
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[c][5][7][9][e]"))));
        assert_eq!(ob.push_event(Bytes::from_static(b"[8]"), Some(8), None), Err(Rejected::Missed { cursor: 9 }));
    }

    #[test]
    fn a_replay_goes_out_page_by_page_ahead_of_held_live_events() {
        let ob = Outbox::new(16, Arc::new(Metrics::new()));
        ob.push_event(Bytes::from_static(b"[5]"), Some(5), None).unwrap();
        ob.open([Bytes::from_static(b"[c]")]);
        // A heartbeat goes out at once; the live event waits behind the replay.
        ob.push(Bytes::from_static(b":h")).unwrap();
        let room = |ob: &Outbox| ob.poll_room(&mut Context::from_waker(&noop_waker()));
        // Half the limit (8) is the replay's, and 3 + 3 + 2 bytes are queued or held.
        assert_eq!(room(&ob), Poll::Pending, "wait for the client to read");
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[c]:h"))));
        assert_eq!(room(&ob), Poll::Ready(Some(5)), "the held event's 3 bytes still count");
        ob.push_replayed(Bytes::from_static(b"[r3]")).unwrap();
        assert_eq!(room(&ob), Poll::Ready(Some(1)));
        ob.push_replayed(Bytes::from_static(b"[r4]")).unwrap();
        assert_eq!(room(&ob), Poll::Pending);
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[r3][r4]"))));
        ob.release([], Some(4));
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[5]"))));
        assert_eq!(ob.totals().events, 3);
        ob.close(CloseReason::Client, None);
        assert_eq!(room(&ob), Poll::Ready(None));
        assert_eq!(ob.push_replayed(Bytes::from_static(b"[r6]")), Err(Rejected::Closed));
    }

    #[test]
    fn totals_count_events_queued_and_what_reached_the_socket() {
        let ob = Outbox::new(1024, Arc::new(Metrics::new()));
        ob.push_event(Bytes::from_static(b"[5]"), Some(5), None).unwrap();
        ob.push_event(Bytes::from_static(b"[6]"), Some(6), None).unwrap();
        ob.open([Bytes::from_static(b"[c]")]);
        for frame in [&b"[r4]"[..], b"[r5]"] {
            ob.push_replayed(Bytes::from_static(frame)).unwrap();
        }
        ob.release([], Some(5));
        ob.push(Bytes::from_static(b": hb")).unwrap();
        // [5] was already replayed: three events (two replayed, [6]), five frames written.
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[c][r4][r5][6]: hb"))));
        assert_eq!(ob.totals(), Totals { events: 3, frames: 5, bytes: 18 });
        ob.push_event(Bytes::from_static(b"[7]"), Some(7), None).unwrap();
        assert_eq!(poll(&ob), Poll::Ready(Some(Bytes::from_static(b"[7]"))));
        assert_eq!(ob.totals(), Totals { events: 4, frames: 6, bytes: 21 });
    }

    #[test]
    fn sending_counts_events_bytes_and_latency() {
        let metrics = Arc::new(Metrics::new());
        let ob = Outbox::new(1024, metrics.clone());
        ob.push_event(Bytes::from_static(b"[e]"), Some(1), Some(unix_nanos() - 1_500_000)).unwrap();
        ob.release([Bytes::from_static(b"[c]")], None);
        ob.push(Bytes::from_static(b": h\n\n")).unwrap();
        ob.push_event(Bytes::from_static(b"[u]"), None, None).unwrap();
        assert!(matches!(poll(&ob), Poll::Ready(Some(_))));
        let text = metrics.render(&Default::default());
        assert!(text.contains("herald_frames_sent_total 2\n"), "{text}");
        assert!(text.contains("herald_bytes_sent_total 14\n"), "{text}");
        assert!(text.contains("herald_delivery_latency_seconds_count 1\n"), "{text}");
        assert!(text.contains("herald_delivery_latency_seconds_bucket{le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("herald_delivery_latency_seconds_bucket{le=\"0.0025\"} 1\n"), "{text}");
    }

    #[test]
    fn chunks_are_bounded() {
        let ob = open(1 << 20);
        for _ in 0..3 {
            ob.push_event(Bytes::from(vec![b'x'; MAX_CHUNK / 2]), None, None).unwrap();
        }
        let Poll::Ready(Some(first)) = poll(&ob) else { panic!() };
        assert_eq!(first.len(), MAX_CHUNK);
        let Poll::Ready(Some(second)) = poll(&ob) else { panic!() };
        assert_eq!(second.len(), MAX_CHUNK / 2);
    }
}
