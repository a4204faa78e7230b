//! A client's resume, walked one read per event and sent a page at a time.

use std::sync::Arc;

use async_nats::jetstream;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::RwLock;

use super::headers::event_from;
use super::reads::{Bounds, Reads, ResumeReads, StreamAccess, held_on};
use super::replay::count_after;
use super::stream::STREAM;
use crate::broker::resume::{self, ResetReason, Start};
use crate::broker::{BrokerError, Page, Pages, Resumption, frame_estimate};
use crate::event::{Delivery, EventId, SubjectKind, Target};

/// What a resume owes a client that had `after`, for `targets`, at most `max` events: nothing,
/// a reset, or a [`Walk`] of the gap.
pub(super) async fn resume(
    access: StreamAccess,
    targets: Vec<Target>,
    after: EventId,
    max: usize,
) -> Result<Resumption, BrokerError> {
    let StreamAccess { js, prefix, epoch, shared } = access;
    // Usually a few events on a few subjects, often for thousands of clients at once (a
    // gateway died): the stream-wide reads are shared by the resumes of one moment, and
    // the walk costs no consumer.
    let bounds = shared.bounds.read(|| Bounds::read(&js, &epoch)).await?;
    let head = Some(EventId { epoch: bounds.epoch.clone(), seq: bounds.last });
    match resume::start(&after, &bounds.view()) {
        Start::Replay => {}
        Start::UpToDate => return Ok(Resumption::UpToDate { head }),
        Start::Reset(reason) => return Ok(Resumption::Reset(reason, head)),
    }
    let stream = js.get_stream_no_info(STREAM).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
    // Each subject's newest event first: the server finds it from its per-subject index,
    // while "the next event after n" scans the messages after n until one matches. Most
    // resuming clients missed nothing on most subjects, and then this is all it costs.
    let reads = bounds.reads;
    let newest = targets.into_iter().map(|target| {
        let (stream, shared) = (&stream, &shared);
        let subject = target.subject(&prefix, SubjectKind::Events);
        async move {
            let read = || reads.newest(stream, subject.as_str());
            let newest = if target == Target::Broadcast {
                // Every stream carries broadcast: one read for all the resumes of this moment.
                shared.broadcast_last.read(read).await?
            } else {
                read().await?
            };
            Ok::<_, BrokerError>((target, subject, newest))
        }
    });
    let mut subjects = Vec::new();
    for found in futures_util::future::join_all(newest).await {
        let (target, subject, newest) = found?;
        if let Some(end) = resume::walk_end(after.seq, newest, bounds.last) {
            let next = after.seq + 1;
            subjects.push(Walking { target, subject, next, end, ahead: None, done: false });
        }
    }
    if subjects.is_empty() {
        return Ok(Resumption::UpToDate { head });
    }
    // More than `max` missed? When it may be, one consumer counts them.
    if resume::may_exceed(after.seq, bounds.last, bounds.per_subject, subjects.len(), max) {
        let filters = subjects.iter().map(|w| w.subject.clone()).collect();
        if count_after(&stream, filters, after.seq).await? > max as u64 {
            return Ok(Resumption::Reset(ResetReason::TooMany, head));
        }
    }
    let walk = Walk { stream, js, shared, epoch, after, head: head.clone(), subjects, reads, started: false };
    Ok(Resumption::Replay { pages: Box::new(walk), head })
}

/// A client's replay, walked one read per event ([`Reads`]) and sent a page at a time.
///
/// [`NatsBroker::resume`] reads the stream's bounds after the client's live subscriptions were in
/// place: every event up to that read's last sequence `L` is stored, and every later one reaches
/// the client live. For each subject, its newest event `N` is read first (the server's
/// per-subject index answers it): at or before the client's id, nothing was missed there. The
/// others are walked from the client's id to `min(N, L)`, one read per event: the walk
/// keeps each subject's next event, and each page takes the oldest of them until the page is
/// full. So a stream holds at most a page and one event per subject of its replay, never the
/// whole gap. The held live events continue from `L`.
///
/// After the last page, the bounds are read again: if the history no longer reaches back to the
/// client's id, an event of the gap may have aged out unread; and a subject that the
/// per-subject limit made drop an event after the client's id may have dropped it before it
/// was read (events published while the replay is read count towards the limit too). Either
/// way the client gets a `reset` after what it was sent.
struct Walk {
    stream: jetstream::stream::Stream<()>,
    js: jetstream::Context,
    shared: Arc<ResumeReads>,
    epoch: Arc<RwLock<Arc<str>>>,
    after: EventId,
    /// The history's head when the replay was decided: where a reset moves the cursor.
    head: Option<EventId>,
    subjects: Vec<Walking>,
    reads: Reads,
    started: bool,
}

/// One subject of a walk.
struct Walking {
    target: Target,
    subject: String,
    /// The next sequence to ask for.
    next: u64,
    /// The last sequence the walk covers on this subject.
    end: u64,
    /// The subject's next event and its sequence, read and not yet handed out.
    ahead: Option<(u64, Delivery)>,
    done: bool,
}

impl Walking {
    /// Reads the subject's next event of the gap into `ahead`, unless it has one or is done.
    async fn fill(
        &mut self,
        stream: &jetstream::stream::Stream<()>,
        reads: Reads,
        epoch: &Arc<str>,
    ) -> Result<(), BrokerError> {
        if self.done || self.ahead.is_some() {
            return Ok(());
        }
        if self.next > self.end {
            self.done = true;
            return Ok(());
        }
        match reads.first_from(stream, self.subject.as_str(), self.next).await? {
            Some(msg) if msg.sequence <= self.end => {
                self.next = msg.sequence + 1;
                let id = EventId { epoch: epoch.clone(), seq: msg.sequence };
                self.ahead = Some((msg.sequence, event_from(Some(msg.headers), Some(id), msg.payload)));
            }
            _ => self.done = true,
        }
        Ok(())
    }
}

impl Pages for Walk {
    fn next(&mut self, room: usize) -> BoxFuture<'_, Result<Page, BrokerError>> {
        async move {
            let epoch = self.after.epoch.clone();
            if !self.started {
                // Every subject's first event at once: one round trip, not one per subject.
                self.started = true;
                let stream = &self.stream;
                let reads = self.reads;
                let fills = self.subjects.iter_mut().map(|w| w.fill(stream, reads, &epoch));
                for filled in futures_util::future::join_all(fills).await {
                    filled?;
                }
            }
            let mut page = Vec::new();
            let mut bytes = 0;
            // Each time, the oldest event any subject has ahead, while it fits.
            while let Some(w) = self
                .subjects
                .iter_mut()
                .filter(|w| w.ahead.is_some())
                .min_by_key(|w| w.ahead.as_ref().map_or(u64::MAX, |(seq, _)| *seq))
            {
                let size = w.ahead.as_ref().map_or(0, |(_, d)| frame_estimate(&w.target, d));
                if !page.is_empty() && bytes + size > room {
                    break;
                }
                let Some((_, delivery)) = w.ahead.take() else { break };
                bytes += size;
                page.push((w.target.clone(), delivery));
                w.fill(&self.stream, self.reads, &epoch).await?;
            }
            if !page.is_empty() {
                return Ok(Page::Events(page));
            }
            // The gap is walked: did the history keep all of it meanwhile?
            let now = self.shared.bounds.read(|| Bounds::read(&self.js, &self.epoch)).await?;
            if let Some(reason) = resume::after_walk(&self.after, &now.view()) {
                return Ok(Page::Reset(reason, self.head.clone()));
            }
            if resume::may_have_dropped(self.after.seq, now.last, now.per_subject) {
                let (stream, reads, after) = (&self.stream, self.reads, self.after.seq);
                let checks = self.subjects.iter().map(|w| async move {
                    let oldest = reads.first_from(stream, &w.subject, 1).await?.map(|m| m.sequence);
                    // Counted only when its oldest event leaves the question open.
                    let held = match oldest {
                        Some(oldest) if oldest > after + 1 => held_on(stream, &w.subject).await?,
                        _ => 0,
                    };
                    Ok::<_, BrokerError>(resume::dropped_by_limit(after, oldest, held, now.per_subject))
                });
                for dropped in futures_util::future::join_all(checks).await {
                    if dropped? {
                        return Ok(Page::Reset(ResetReason::HistoryExpired, self.head.clone()));
                    }
                }
            }
            Ok(Page::End)
        }
        .boxed()
    }
}
