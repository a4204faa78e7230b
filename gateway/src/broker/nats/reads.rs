//! Reads of the stream a resume needs: its bounds, one subject's events, and one read shared by
//! every caller of the same moment.

use std::sync::Arc;

use async_nats::jetstream;
use parking_lot::RwLock;

use super::stream::stream_info;
use crate::broker::BrokerError;
use crate::broker::resume;

/// What reading the history needs, cloned into each request's future.
#[derive(Clone)]
pub(super) struct StreamAccess {
    pub js: jetstream::Context,
    pub prefix: Arc<str>,
    pub epoch: Arc<RwLock<Arc<str>>>,
    pub shared: Arc<ResumeReads>,
}

/// The stream's first and last sequences and epoch, as one read saw them.
#[derive(Clone)]
pub(super) struct Bounds {
    pub first: u64,
    pub last: u64,
    pub epoch: Arc<str>,
    pub reads: Reads,
    /// Events the stream keeps per subject (0: no limit). The stream's own setting, not this
    /// gateway's flag: the gateway that set the stream up last decided it.
    pub per_subject: u64,
}

/// How a replay reads one event: by direct get while the stream has a single replica (served
/// outside the JetStream API queue, and there is no other copy to lag behind), from the leader
/// when it has several: a replica still catching up after a node loss would answer a direct
/// get without the newest events, and the walk would end early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reads {
    Direct,
    Leader,
}

impl Reads {
    pub(super) fn of(info: &jetstream::stream::Info) -> Reads {
        if info.config.num_replicas > 1 { Reads::Leader } else { Reads::Direct }
    }

    /// The first event on `subject` at or after `seq`.
    pub(super) async fn first_from(
        self,
        stream: &jetstream::stream::Stream<()>,
        subject: &str,
        seq: u64,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, BrokerError> {
        use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind};
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(format!("replay: {e}"));
        match self {
            Reads::Direct => match stream.direct_get_next_for_subject(subject, Some(seq)).await {
                Ok(msg) => Ok(Some(msg)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
            Reads::Leader => match stream.get_first_raw_message_by_subject(subject, seq).await {
                Ok(msg) => Ok(Some(msg)),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
        }
    }

    /// The sequence of the newest event on `subject`.
    pub(super) async fn newest(
        self,
        stream: &jetstream::stream::Stream<()>,
        subject: &str,
    ) -> Result<Option<u64>, BrokerError> {
        use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(format!("replay: {e}"));
        match self {
            Reads::Direct => match stream.direct_get_last_for_subject(subject).await {
                Ok(msg) => Ok(Some(msg.sequence)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
            Reads::Leader => match stream.get_last_raw_message_by_subject(subject).await {
                Ok(msg) => Ok(Some(msg.sequence)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
        }
    }
}

impl Bounds {
    pub(super) fn view(&self) -> resume::Bounds<'_> {
        resume::Bounds { epoch: &self.epoch, first: self.first, last: self.last }
    }

    pub(super) async fn read(js: &jetstream::Context, epoch: &RwLock<Arc<str>>) -> Result<Bounds, BrokerError> {
        let (_, info, current) = stream_info(js, epoch).await?;
        Ok(Bounds {
            first: info.state.first_sequence,
            last: info.state.last_sequence,
            epoch: current,
            reads: Reads::of(&info),
            per_subject: per_subject_limit(&info),
        })
    }
}

/// Events `info`'s stream keeps per subject (0: no limit).
pub(super) fn per_subject_limit(info: &jetstream::stream::Info) -> u64 {
    u64::try_from(info.config.max_messages_per_subject).unwrap_or(0)
}

/// How many events the stream holds on `subject`.
pub(super) async fn held_on(stream: &jetstream::stream::Stream<()>, subject: &str) -> Result<u64, BrokerError> {
    use futures_util::TryStreamExt;
    let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(format!("replay: {e}"));
    let mut subjects = stream.info_with_subjects(subject).await.map_err(|e| unavailable(&e))?;
    while let Some((name, held)) = subjects.try_next().await.map_err(|e| unavailable(&e))? {
        if name == subject {
            return Ok(held as u64);
        }
    }
    Ok(0)
}

/// One read of the server for every caller waiting at the same moment. Each new stream asks for
/// the stream's newest sequence (its first cursor), each resume for the stream's bounds and the
/// broadcast subject's newest event, and a gateway's death sends thousands of those at once. A
/// caller gets the result of a read sent after its call began, so the answer covers everything
/// stored before the call. A failed read fails everyone who waited for it, rather than each of
/// them trying again in turn.
pub(super) struct CoalescedRead<T> {
    latest: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<T, BrokerError>)>>,
}

impl<T> Default for CoalescedRead<T> {
    fn default() -> Self {
        CoalescedRead { latest: tokio::sync::Mutex::new(None) }
    }
}

impl<T: Clone> CoalescedRead<T> {
    /// The value of a read sent after this call began: `read()`'s, made here only when no other
    /// caller's read will do. It is boxed: a request to the server is a large future (1,368
    /// bytes for the stream's bounds, against 208 for this one), which would otherwise sit
    /// inside every caller's future, and be copied with it, whether or not that caller reads.
    pub(super) async fn read<F, Fut>(&self, read: F) -> Result<T, BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let called = tokio::time::Instant::now();
        // Callers queue here while a read is out; the first of them sends the next one.
        let mut latest = self.latest.lock().await;
        if let Some((sent, value)) = &*latest
            && *sent > called
        {
            return value.clone();
        }
        let sent = tokio::time::Instant::now();
        let value = Box::pin(read()).await;
        *latest = Some((sent, value.clone()));
        value
    }
}

/// What a walk shares with the other resumes of its moment.
#[derive(Default)]
pub(super) struct ResumeReads {
    pub bounds: CoalescedRead<Bounds>,
    /// The sequence of the newest broadcast event (`None`: there is none). Every stream carries
    /// broadcast, and broadcasts are rare: one read tells most resumes there is nothing to walk.
    pub broadcast_last: CoalescedRead<Option<u64>>,
}
