//! `GET /events`: authenticate, authorize channels, admit, join the hub, then stream.
//!
//! Every refusal happens before the first byte of the stream, as a JSON error (401 / 403 / 400)
//! that EventSource will not retry. Capacity refusals are the exception: they answer 200 with a
//! jittered `retry:` and close, so the browser comes back later, possibly to another pod.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use rand::Rng;
use serde::Serialize;

use super::client_auth::{authenticate, authorize_channels, parse_query};
use super::{ApiError, AppState};
use bytes::Bytes;

use crate::access::admission::Refusal;
use crate::broker::resume::ResetReason;
use crate::broker::{BrokerError, Page, Pages, Resumption};
use crate::delivery::close_reason::CloseReason;
use crate::delivery::outbox::{Outbox, OutboxBody};
use crate::delivery::peer::PeerSocket;
use crate::delivery::session::{BodyGone, Session};
use crate::delivery::sse;
use crate::event::{EventId, Target};
use crate::names::Name;
use crate::ops::metrics::{Metrics, ResumeResult};
use crate::ops::trace;
use crate::ops::trace_context::TraceContext;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Connected<'a> {
    connection_id: &'a str,
    user: &'a str,
    channels: Vec<&'a str>,
    resumed: bool,
}

pub async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !trace::on() {
        return open(&req, &state, None).await;
    }
    let parent = TraceContext::from_headers(|name| req.headers().get(name).and_then(|v| v.to_str().ok()));
    let span = trace::connection_span(parent.as_ref());
    let result = open(&req, &state, Some(span.clone())).instrument(span.clone()).await;
    match &result {
        Ok(res) => trace::record_status(&span, res.status().as_u16(), None),
        Err(e) => trace::record_status(&span, e.status.as_u16(), Some(e.code)),
    }
    result
}

/// Opens a stream; `span` (while traces are on) follows the connection until it closes.
async fn open(req: &HttpRequest, state: &AppState, span: Option<Span>) -> Result<HttpResponse, ApiError> {
    let query = parse_query(req.query_string());
    let grant = authenticate(req, &query, state).await?;
    let channels = authorize_channels(&query.channels, &grant, state.settings.max_channels)?;
    // The header (a browser's own reconnect) first, the query (a page's reload) else; a blank
    // one is no id.
    let given = |id: &&str| !id.trim().is_empty();
    let resume_from = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(given)
        .or(query.last_event_id.as_deref().filter(given));

    let mut permit = match state.admission.admit(&grant.user) {
        Ok(permit) => permit,
        Err(Refusal::Capacity) => {
            let reason = if state.admission.draining() { CloseReason::Drain } else { CloseReason::Overload };
            if let Some(span) = &span {
                span.set_attribute("herald.close_reason", reason.as_str());
            }
            return Ok(refused_for_now(state, reason));
        }
        Err(Refusal::PerUser(max)) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!("user already has {max} open streams; close one (one stream per tab carries every channel)"),
            ));
        }
    };

    // Each resume reads the history (up to `--max-replay` events): a client reconnecting in a
    // loop would have it read on every turn. Beyond the user's budget it comes back later, with
    // the same id, and misses nothing. Counted only once admitted: a stream turned away at
    // capacity, or while draining, spends nothing of it.
    if let (Some(_), Some(budget)) = (resume_from, &state.resumes)
        && budget.take(grant.user.as_str(), Instant::now()).is_err()
    {
        tracing::debug!(user = %grant.user, "a resume beyond the user's budget; told to come back later");
        if let Some(span) = &span {
            span.set_attribute("herald.close_reason", CloseReason::Throttled.as_str());
        }
        return Ok(refused_for_now(state, CloseReason::Throttled));
    }

    let mut targets = Vec::with_capacity(channels.len() + 2);
    targets.push(Target::User(grant.user.clone()));
    targets.extend(channels.iter().cloned().map(Target::Channel));
    targets.push(Target::Broadcast);

    let n = state.next_connection.fetch_add(1, Ordering::Relaxed);
    let connection_id = format!("{}-{n}", state.instance);
    // Events are held in the outbox until the membership is live and `connected` is queued
    // ahead of them.
    let outbox = Outbox::new(state.settings.client_queue_bytes, state.metrics.clone());
    outbox.set_peer(req.conn_data::<PeerSocket>().copied());
    let membership = state.hub.join(&targets, &outbox).await.map_err(|e| {
        tracing::warn!(error = %e, "could not subscribe a new stream");
        ApiError::unavailable(format!("cannot subscribe right now: {e}"))
    })?;
    // While traces are on, a resume is a `resume` span inside the connection's, which ends when
    // its replay has been queued.
    let resume_span = (resume_from.is_some() && trace::on()).then(trace::resume_span);
    let resume = match resume_from {
        None => Resume::Fresh,
        Some(raw) => {
            let decided = match &resume_span {
                Some(span) => start_resume(state, &targets, raw).instrument(span.clone()).await,
                None => start_resume(state, &targets, raw).await,
            };
            match decided {
                Ok(resume) => resume,
                Err(e) => {
                    // Can't read the history now: come back later rather than skip events.
                    tracing::warn!(error = %e, "replay failed");
                    if let Some(span) = &resume_span {
                        span.set_attribute("herald.resume.result", "error");
                        span.set_status(opentelemetry::trace::Status::error(e.to_string()));
                    }
                    state.metrics.resumed(ResumeResult::Failed, 0);
                    return Ok(refused_for_now(state, CloseReason::Error));
                }
            }
        }
    };
    let connected = Connected {
        connection_id: &connection_id,
        user: grant.user.as_str(),
        channels: channels.iter().map(Name::as_str).collect(),
        resumed: matches!(resume, Resume::UpToDate { .. } | Resume::Replay { .. }),
    };
    let first_cursor = match resume {
        Resume::Fresh => fresh_cursor(state).await,
        _ => None, // the client's own id, or the reset's, or the replayed events' ids
    };
    // The history's head as this stream found it, its subscriptions in place (not a client's
    // own id, which may be as old as the history): where its topics' chains start. A resume
    // reads it as a fresh stream does: every event after it comes live, every one up to it is
    // the client's or replayed.
    if let Some(head) = first_cursor.as_ref().or(resume.head()) {
        membership.started_at(head);
    }
    let connected = sse::connected_frame(state.settings.retry_ms, first_cursor.as_ref(), &connected);
    // Where the client's cursor stands after the opening frames: no durable event at or below
    // it is sent on this stream, whichever way it comes.
    match resume {
        Resume::Fresh => outbox.release([connected], first_cursor.map(|id| id.seq)),
        Resume::UpToDate { after, .. } => {
            state.metrics.resumed(ResumeResult::Replayed, 0);
            if let Some(span) = &resume_span {
                trace::record_resume(span, "replayed", 0, std::iter::empty());
            }
            outbox.release([connected], Some(after));
        }
        Resume::Reset(reason, head) => {
            state.metrics.resumed(ResumeResult::Reset(reason), 0);
            if let Some(span) = &resume_span {
                trace::record_resume(span, reason.as_str(), 0, std::iter::empty());
            }
            outbox.release([connected, sse::reset_frame(reason.as_str(), head.as_ref())], head.map(|id| id.seq));
        }
        Resume::Replay { pages, after, .. } => {
            // `connected` goes out now; the missed events follow as the client reads them, and
            // the live events held meanwhile after them.
            outbox.open([connected]);
            let replay = Replaying {
                outbox: outbox.clone(),
                pages,
                cursor: after,
                metrics: state.metrics.clone(),
                retry_ms: state.settings.retry_ms,
                span: resume_span,
            };
            actix_web::rt::spawn(replay.run());
        }
    }
    permit.attach(outbox.clone());
    // After the release: the connection's own join reaches it too.
    let presence = state.presence.join(&grant.user, &channels, grant.presence.as_deref());

    tracing::debug!(connection = %connection_id, user = %grant.user, channels = channels.len(), "connection opened");
    state.metrics.opened();
    let session = Session {
        id: connection_id,
        user: grant.user,
        outbox: outbox.clone(),
        membership,
        presence,
        permit,
        heartbeat: state.settings.heartbeat,
        expires_at: grant.expires_at,
        opened: Instant::now(),
        span,
        metrics: state.metrics.clone(),
    }
    .start();
    let body = OutboxBody::new(outbox, move || session.do_send(BodyGone));
    Ok(stream_response().body(body))
}

/// How a stream starts.
enum Resume {
    /// No `Last-Event-ID`: live events only.
    Fresh,
    /// The client missed nothing after its id (sequence `after`); `head` is the history's
    /// newest event as the resume read it.
    UpToDate { after: u64, head: Option<EventId> },
    /// The history can't cover the gap: a `reset` (moving the cursor to `head`), then live events.
    Reset(ResetReason, Option<EventId>),
    /// The client missed events after sequence `after`: replay them, then live events.
    Replay { pages: Box<dyn Pages>, after: u64, head: Option<EventId> },
}

impl Resume {
    /// The history's newest event as the resume read it, its subscriptions in place (a fresh
    /// stream reads its own first cursor).
    fn head(&self) -> Option<&EventId> {
        match self {
            Resume::Reset(_, head) | Resume::UpToDate { head, .. } | Resume::Replay { head, .. } => head.as_ref(),
            Resume::Fresh => None,
        }
    }
}

/// Decides what a client resuming from `raw` (its `Last-Event-ID`) on `targets` is owed.
async fn start_resume(state: &AppState, targets: &[Target], raw: &str) -> Result<Resume, BrokerError> {
    let Some(after) = EventId::parse(raw) else {
        // Not an id this service issued: the client's state comes from somewhere else. The
        // reset names the history's newest event, so that the client's next reconnect resumes
        // from there instead of sending the foreign id, and resetting, again.
        return Ok(Resume::Reset(ResetReason::EpochChanged, fresh_cursor(state).await));
    };
    let seq = after.seq;
    Ok(match state.broker.resume(targets.to_vec(), after, state.settings.max_replay).await? {
        Resumption::UpToDate { head } => Resume::UpToDate { after: seq, head },
        Resumption::Reset(reason, head) => Resume::Reset(reason, head),
        Resumption::Replay { pages, head } => Resume::Replay { pages, after: seq, head },
    })
}

/// Most trace contexts of replayed events that a `resume` span links to.
const RESUME_LINKS: usize = 32;

/// A stream's replay in progress: it reads the missed events a page at a time, as much as the
/// stream's queue has room for, so a client that reads slowly (or not at all) holds no more of
/// it than its queue limit and one event; live events arriving meanwhile wait behind it, and a
/// queue that overflows with them closes the stream as `slow`, as for any stream. It ends by
/// releasing the held live events after the last replayed one, or with a `reset` when the
/// history lost part of the gap meanwhile, or by closing the stream (with a `retry:`) when the
/// history can't be read: the client then resumes from the last event it got.
struct Replaying {
    outbox: Arc<Outbox>,
    pages: Box<dyn Pages>,
    /// The last sequence replayed (at first, the client's own).
    cursor: u64,
    metrics: Arc<Metrics>,
    retry_ms: u64,
    span: Option<Span>,
}

impl Replaying {
    async fn run(mut self) {
        let mut sent = 0;
        let mut links: Vec<TraceContext> = Vec::new();
        // A page's frames not yet queued: a page is sized by estimate, the queue by the frames.
        let mut frames: std::collections::VecDeque<Bytes> = Default::default();
        let result = 'pages: loop {
            let Some(mut room) = std::future::poll_fn(|cx| self.outbox.poll_room(cx)).await else {
                break None; // the stream closed: its client resumes on its own
            };
            if frames.is_empty() {
                match self.pages.next(room).await {
                    Ok(Page::Events(events)) => {
                        for (target, delivery) in events {
                            let Some(id) = &delivery.id else { continue };
                            self.cursor = self.cursor.max(id.seq);
                            if delivery.problem().is_some() {
                                continue; // never sent live either
                            }
                            if links.len() < RESUME_LINKS
                                && let Some(trace) = &delivery.trace
                            {
                                links.push((**trace).clone());
                            }
                            frames.push_back(sse::event_frame(
                                Some(id),
                                &delivery.event_type,
                                &target,
                                delivery.from.as_deref(),
                                &delivery.payload,
                            ));
                        }
                        // Live events held while the page was read count against the queue too:
                        // the room is measured again before the page is queued.
                        continue 'pages;
                    }
                    Ok(Page::End) => {
                        self.outbox.release([], Some(self.cursor));
                        break Some(ResumeResult::Replayed);
                    }
                    Ok(Page::Reset(reason, head)) => {
                        let reset = sse::reset_frame(reason.as_str(), head.as_ref());
                        self.outbox.release([reset], head.map(|id| id.seq));
                        break Some(ResumeResult::Reset(reason));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replay failed part-way; the client resumes later");
                        self.outbox.close(CloseReason::Error, Some(sse::retry_frame(jittered(self.retry_ms))));
                        break Some(ResumeResult::Failed);
                    }
                }
            }
            // As many frames as the room takes, and at least one. The cursor has moved past
            // them all already: it is used once every frame is queued.
            let mut first = true;
            while let Some(frame) = frames.front() {
                if !first && frame.len() > room {
                    break;
                }
                first = false;
                room = room.saturating_sub(frame.len());
                let Some(frame) = frames.pop_front() else { break };
                if self.outbox.push_replayed(frame).is_err() {
                    break 'pages None;
                }
                sent += 1;
            }
        };
        let Some(result) = result else { return };
        self.metrics.resumed(result, sent);
        if let Some(span) = &self.span {
            match result {
                ResumeResult::Failed => span.set_attribute("herald.resume.result", "error"),
                _ => trace::record_resume(span, result.as_str(), sent, links.iter()),
            }
        }
    }
}

/// Where a new stream's resume cursor starts: the history's newest event, read after the
/// stream's subscriptions are in place, so every later event reaches the stream live. A client
/// that loses the stream before its first event resumes from there, instead of reconnecting
/// without an id and missing what was published meanwhile. The hub hears of it too
/// ([`crate::delivery::hub::Membership::started_at`]). Without history, or when it cannot be
/// read within `CURSOR_WAIT`, the stream opens without a cursor rather than wait longer.
async fn fresh_cursor(state: &AppState) -> Option<EventId> {
    match tokio::time::timeout(CURSOR_WAIT, state.broker.last_id()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no resume cursor for a new stream");
            None
        }
        Err(_) => {
            tracing::debug!("no resume cursor for a new stream: the history did not answer in time");
            None
        }
    }
}

/// Longest a new stream waits for its first resume cursor.
const CURSOR_WAIT: Duration = Duration::from_secs(2);

/// The headers every stream carries.
pub fn stream_response() -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform")))
        .insert_header(("X-Accel-Buffering", HeaderValue::from_static("no")));
    res
}

/// [`come_back_later`], counted as a stream that opened and closed at once for `reason`.
fn refused_for_now(state: &AppState, reason: CloseReason) -> HttpResponse {
    state.metrics.opened();
    state.metrics.closed(reason);
    come_back_later(state.settings.retry_ms)
}

/// 200 with a jittered `retry:` and an immediate end: EventSource reconnects after the delay,
/// spread out so that a full or draining pod is not hit by a synchronized stampede.
pub fn come_back_later(retry_ms: u64) -> HttpResponse {
    stream_response().body(sse::retry_frame(jittered(retry_ms)))
}

/// A reconnection delay between one and three times `retry_ms`.
pub fn jittered(retry_ms: u64) -> u64 {
    rand::rng().random_range(retry_ms..=retry_ms.saturating_mul(3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Listed;
    use crate::event::Delivery;

    /// Events `1..=count` of one-byte payloads: frames that are mostly envelope.
    fn small_events(count: u64) -> std::collections::VecDeque<(Target, Delivery)> {
        (1..=count)
            .map(|seq| {
                let delivery = Delivery {
                    event_type: "t".into(),
                    payload: Bytes::from_static(b"1"),
                    id: Some(EventId { epoch: Arc::from("e"), seq }),
                    from: None,
                    trace: None,
                    published_at: None,
                    previous: None,
                };
                (Target::Broadcast, delivery)
            })
            .collect()
    }

    fn replaying(outbox: &Arc<Outbox>, pages: impl Pages + 'static) -> Replaying {
        Replaying {
            outbox: outbox.clone(),
            pages: Box::new(pages),
            cursor: 0,
            metrics: Arc::new(Metrics::new()),
            retry_ms: 1000,
            span: None,
        }
    }

    /// Every resume names where its chains start, not only a reset: a topic a resume opens is
    /// checked for events lost in transit from its first live event on.
    #[test]
    fn every_resume_names_the_head_it_read() {
        let id = |seq| EventId { epoch: Arc::from("e"), seq };
        let head = Some(id(9));
        assert_eq!(Resume::UpToDate { after: 9, head: head.clone() }.head(), head.as_ref());
        let replay = Resume::Replay { pages: Box::new(Listed(small_events(2))), after: 7, head: head.clone() };
        assert_eq!(replay.head(), head.as_ref());
        assert_eq!(Resume::Reset(ResetReason::TooMany, head.clone()).head(), head.as_ref());
        assert_eq!(Resume::Fresh.head(), None);
    }

    /// A page is sized by estimate; the queue holds the frames. Small events, whose frames are
    /// mostly envelope, still keep a replaying stream's queue within its share of the limit.
    #[tokio::test]
    async fn a_replay_of_small_events_keeps_to_its_share_of_the_queue() {
        const LIMIT: usize = 4096;
        let outbox = Outbox::new(LIMIT, Arc::new(Metrics::new()));
        outbox.open([Bytes::from_static(b": connected\n\n")]);
        let replay = replaying(&outbox, Listed(small_events(200)));
        let task = tokio::spawn(replay.run());
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let (mut seqs, mut peak) = (Vec::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !task.is_finished() || outbox.queued_bytes() > 0 {
            assert!(Instant::now() < deadline, "the replay ends; got {} events", seqs.len());
            // Let the replay fill what room it has, then read what it queued.
            while !task.is_finished() && outbox.queued_bytes() < LIMIT / 2 {
                tokio::task::yield_now().await;
            }
            peak = peak.max(outbox.queued_bytes());
            while let std::task::Poll::Ready(Some(chunk)) = outbox.poll_chunk(&mut cx) {
                let text = String::from_utf8(chunk.to_vec()).unwrap();
                seqs.extend(text.lines().filter_map(|l| l.strip_prefix("id: e-")).map(|s| s.parse::<u64>().unwrap()));
            }
        }
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "every event once, in order");
        let frame =
            sse::event_frame(Some(&EventId { epoch: Arc::from("e"), seq: 200 }), "t", &Target::Broadcast, None, b"1");
        assert!(peak <= LIMIT / 2 + frame.len(), "the queue held {peak} bytes, its share is {}", LIMIT / 2);
    }

    /// Pages that answer the first request only when told to, as a history read of one round
    /// trip per event answers late.
    struct Late {
        asked: Arc<std::sync::atomic::AtomicBool>,
        answer: Option<tokio::sync::oneshot::Receiver<()>>,
        pages: Listed,
    }

    impl Pages for Late {
        fn next(&mut self, room: usize) -> futures_util::future::BoxFuture<'_, Result<Page, BrokerError>> {
            self.asked.store(true, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if let Some(answer) = self.answer.take() {
                    let _ = answer.await;
                }
                self.pages.next(room).await
            })
        }
    }

    /// Live events that arrive while a page is read are held in the queue; the page that comes
    /// back is queued within the room that is left then, not the room there was when it was
    /// asked for: the queue never holds more than its limit and one event. Every event arrives
    /// once, the replayed ones first.
    #[tokio::test]
    async fn live_events_held_while_a_page_is_read_leave_it_less_room() {
        const LIMIT: usize = 4096;
        let outbox = Outbox::new(LIMIT, Arc::new(Metrics::new()));
        outbox.open([Bytes::from_static(b": connected\n\n")]);
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (answer, answered) = tokio::sync::oneshot::channel();
        let pages = Late { asked: asked.clone(), answer: Some(answered), pages: Listed(small_events(50)) };
        let task = tokio::spawn(replaying(&outbox, pages).run());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !asked.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the replay asks for a page");
            tokio::task::yield_now().await;
        }
        // Live events fill the queue up to its limit while the page is read.
        let live = |seq| {
            let id = EventId { epoch: Arc::from("e"), seq };
            sse::event_frame(Some(&id), "t", &Target::Broadcast, None, &[b'7'; 300])
        };
        let mut seq = 1000;
        while outbox.queued_bytes() + live(seq).len() <= LIMIT {
            assert!(outbox.push_event(live(seq), Some(seq), None).is_ok(), "held within the limit");
            seq += 1;
        }
        answer.send(()).unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let (mut seqs, mut peak) = (Vec::new(), 0);
        while !task.is_finished() || outbox.queued_bytes() > 0 {
            assert!(Instant::now() < deadline, "the replay ends; got {} events", seqs.len());
            tokio::task::yield_now().await;
            peak = peak.max(outbox.queued_bytes());
            while let std::task::Poll::Ready(Some(chunk)) = outbox.poll_chunk(&mut cx) {
                let text = String::from_utf8(chunk.to_vec()).unwrap();
                seqs.extend(text.lines().filter_map(|l| l.strip_prefix("id: e-")).map(|s| s.parse::<u64>().unwrap()));
            }
        }
        let expected: Vec<u64> = (1..=50).chain(1000..seq).collect();
        assert_eq!(seqs, expected, "every event once: the replayed ones, then the live ones");
        let one =
            sse::event_frame(Some(&EventId { epoch: Arc::from("e"), seq: 50 }), "t", &Target::Broadcast, None, b"1");
        assert!(peak <= LIMIT + one.len(), "the queue held {peak} bytes, its limit is {LIMIT}");
    }
}
