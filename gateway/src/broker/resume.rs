//! What a resume owes a client, decided once for every broker and path.
//!
//! A client comes back with the id of the last durable event it saw. Whether it missed nothing,
//! must be replayed a range of the history, or must refetch its state (`reset`) depends only on
//! that id and on what the history holds: its epoch, the first and last sequence it still has,
//! and each subject's newest event. This module decides where the client stands ([`start`]),
//! which part of each subject to read ([`walk_end`]), whether the gap must be counted against
//! `--max-replay` first ([`may_exceed`]), and whether a finished replay still covered the gap
//! ([`after_walk`]). The brokers only fetch.
//!
//! The merge of a replay with the live events held back while it runs is each stream's cursor
//! (`Outbox`): a durable event at or below the last one a stream sent is never sent again, so
//! whatever the replay carried is dropped from the held events, and nothing older follows.

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

/// The last sequence a replay reads on one subject whose newest event is `newest`, for a client
/// at `after`, when the history's head was `last` as the client's subscriptions went live:
/// `None` when it missed nothing there. Events past `last` reach the client live.
pub fn walk_end(after: u64, newest: Option<u64>, last: u64) -> Option<u64> {
    newest.filter(|&newest| newest > after).map(|newest| newest.min(last))
}

/// Whether a gap after `after` on `subjects` subjects could hold more than `max` events, when
/// the history's head is `last` and it keeps at most `per_subject_cap` events per subject (0:
/// unknown). Only then must they be counted before the replay starts.
pub fn may_exceed(after: u64, last: u64, per_subject_cap: u64, subjects: usize, max: usize) -> bool {
    let held = match per_subject_cap {
        0 => u64::MAX,
        cap => cap.saturating_mul(subjects as u64),
    };
    last.saturating_sub(after).min(held) > max as u64
}

/// Whether a replay that read every event of the gap still covers it, the history now being
/// `now`: when it no longer reaches back to the client's id, an event may have aged out unread.
/// (The per-subject limit is [`dropped_by_limit`]'s.)
pub fn after_walk(after: &EventId, now: &Bounds<'_>) -> Option<ResetReason> {
    if *after.epoch != *now.epoch {
        return Some(ResetReason::EpochChanged);
    }
    (after.seq.saturating_add(1) < now.first).then_some(ResetReason::HistoryExpired)
}

/// Whether any subject can have dropped an event after `after` to the per-subject limit
/// `per_subject` (0: none), the history's head now being `last`: only one that got more events
/// after it than the limit keeps, and the whole history has not had that many.
pub fn may_have_dropped(after: u64, last: u64, per_subject: u64) -> bool {
    per_subject > 0 && last.saturating_sub(after) > per_subject
}

/// Whether a subject dropped an event after `after` to the per-subject limit `per_subject`,
/// now that the oldest event it keeps is `oldest` and it holds `held`. The limit drops a
/// subject's oldest events first, and only when it is full: one that keeps an event at or
/// before the first after `after` dropped none of them, and one holding fewer than the limit
/// never dropped anything that the history's own first sequence would not show. Events read
/// before they were dropped count here too: a replay read while a busy subject drops events
/// cannot tell which it read in time.
pub fn dropped_by_limit(after: u64, oldest: Option<u64>, held: u64, per_subject: u64) -> bool {
    per_subject > 0 && oldest.is_some_and(|oldest| oldest > after.saturating_add(1)) && held >= per_subject
}

/// Why a resume could not be served from history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// Events after the client's id were already dropped by the retention limits.
    HistoryExpired,
    /// The id belongs to another history (a recreated stream, another dev process).
    EpochChanged,
    /// More events than `--max-replay` were missed.
    TooMany,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::HistoryExpired => "history_expired",
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::TooMany => "too_many",
        }
    }
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

    #[test]
    fn walk_ends() {
        // (client at, subject's newest, head when subscribed) -> last sequence to read
        for (after, newest, last, want) in [
            (10, None, 20, None),
            (10, Some(5), 20, None),
            (10, Some(10), 20, None),
            (10, Some(15), 20, Some(15)),
            (10, Some(25), 20, Some(20)),
        ] {
            assert_eq!(walk_end(after, newest, last), want, "{after} {newest:?} {last}");
        }
    }

    #[test]
    fn gaps_that_may_exceed_the_replay_limit() {
        // (client at, head, per-subject cap, subjects, max) -> must count first
        for (after, last, cap, subjects, max, want) in [
            (0, 100, 1000, 3, 10_000, false),
            (0, 20_000, 1000, 3, 10_000, false), // 3 subjects hold 3,000 at most
            (0, 20_000, 1000, 11, 10_000, true),
            (0, 20_000, 0, 1, 10_000, true), // the cap is unknown
            (15_000, 20_000, 0, 1, 10_000, false),
            (0, 6, 1000, 3, 5, true),
            (0, 5, 1000, 3, 5, false),
        ] {
            assert_eq!(may_exceed(after, last, cap, subjects, max), want, "{after} {last} {cap} {subjects} {max}");
        }
    }

    #[test]
    fn after_a_walk() {
        use ResetReason::*;
        let now = |first, last| Bounds { epoch: "e1", first, last };
        // (client's id, history now) -> reset?
        for (after, bounds, want) in [
            (id("e1", 10), now(1, 50), None),
            (id("e1", 10), now(11, 50), None),
            (id("e1", 10), now(12, 50), Some(HistoryExpired)),
            (id("e2", 10), now(1, 50), Some(EpochChanged)),
        ] {
            assert_eq!(after_walk(&after, &bounds), want, "{after} {bounds:?}");
        }
    }

    #[test]
    fn events_dropped_by_the_per_subject_limit() {
        // (client at, history's head now, limit) -> must a subject be checked?
        for (after, last, limit, want) in [
            (10, 13, 3, false),
            (10, 14, 3, true),
            (10, 5_000, 0, false),
            (10, 1_010, 1_000, false),
            (10, 1_011, 1_000, true),
        ] {
            assert_eq!(may_have_dropped(after, last, limit), want, "{after} {last} {limit}");
        }
        // (client at, subject's oldest kept, held, limit) -> dropped one after the client's id?
        for (after, oldest, held, limit, want) in [
            (10, Some(11), 3, 3, false), // keeps the first event after the id: dropped none of the gap
            (10, Some(5), 3, 3, false),  // keeps one from before
            (10, Some(12), 3, 3, true),  // full, and its oldest is past the first after the id
            (10, Some(12), 2, 3, false), // never full: its events after the id began at 12
            (10, None, 0, 3, false),
            (10, Some(12), 3, 0, false), // no limit
        ] {
            assert_eq!(dropped_by_limit(after, oldest, held, limit), want, "{after} {oldest:?} {held} {limit}");
        }
    }
}
