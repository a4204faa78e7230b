//! What a resume owes a client, decided once for every broker and path.
//!
//! A client comes back with the id of the last durable event it saw. Whether it missed nothing,
//! must be replayed a range of the history, or must refetch its state (`reset`) depends only on
//! that id and on what the history holds: its epoch and the first and last sequence it still
//! has. The brokers only fetch; this module decides.

use crate::broker::ResetReason;
use crate::event::EventId;

/// What a history holds at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds<'a> {
    /// The incarnation of the history; ids of another one mean nothing here.
    pub epoch: &'a str,
    /// The oldest sequence still kept (for a whole stream; per subject, one past the newest
    /// sequence dropped). Past `last` when nothing is kept.
    pub first: u64,
    /// The newest sequence ever issued (0 before the first event).
    pub last: u64,
}

/// Where a client resuming after an id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// It saw the newest event: nothing to replay.
    UpToDate,
    /// Every event after its id is still kept: replay them.
    Replay,
    /// The history cannot say what it missed.
    Reset(ResetReason),
}

/// Decides where a client that saw everything up to `after` stands against `bounds`.
///
/// - another epoch: `epoch_changed` (ids of another history);
/// - past the head: `epoch_changed` too, as no id this history issued is past its head (a
///   forged or corrupted id, or one of a recreated stream that had grown further);
/// - at the head: up to date;
/// - the next event it needs already dropped: `history_expired`;
/// - else: replay.
pub fn start(after: &EventId, bounds: &Bounds<'_>) -> Start {
    if *after.epoch != *bounds.epoch || after.seq > bounds.last {
        return Start::Reset(ResetReason::EpochChanged);
    }
    if after.seq == bounds.last {
        return Start::UpToDate;
    }
    if after.seq.saturating_add(1) < bounds.first {
        return Start::Reset(ResetReason::HistoryExpired);
    }
    Start::Replay
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn id(epoch: &str, seq: u64) -> EventId {
        EventId { epoch: Arc::from(epoch), seq }
    }

    #[test]
    fn starts() {
        use ResetReason::*;
        use Start::*;
        let b = |first, last| Bounds { epoch: "e1", first, last };
        let cases = [
            // (client's id, history first..=last, expected)
            (id("e1", 10), b(1, 10), UpToDate),
            (id("e1", 9), b(1, 10), Replay),
            (id("e1", 0), b(1, 10), Replay),
            (id("e1", 0), b(2, 10), Reset(HistoryExpired)),
            (id("e1", 4), b(5, 10), Replay),
            (id("e1", 3), b(5, 10), Reset(HistoryExpired)),
            (id("e1", 11), b(1, 10), Reset(EpochChanged)),
            (id("e1", u64::MAX), b(1, 10), Reset(EpochChanged)),
            (id("e2", 5), b(1, 10), Reset(EpochChanged)),
            // An empty history: only its head is a valid id.
            (id("e1", 0), b(1, 0), UpToDate),
            (id("e1", 1), b(1, 0), Reset(EpochChanged)),
            // Everything ever stored has aged out.
            (id("e1", 10), b(11, 10), UpToDate),
            (id("e1", 9), b(11, 10), Reset(HistoryExpired)),
        ];
        for (after, bounds, want) in cases {
            assert_eq!(start(&after, &bounds), want, "{after} against {bounds:?}");
        }
    }
}
