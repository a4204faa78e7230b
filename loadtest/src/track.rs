//! Per-client delivery accounting: which sequence numbers arrived, how often and in which order.
//!
//! A bitset of seen sequences (they start at 1 and are dense) gives duplicates and out-of-order
//! arrivals exactly; `missing` follows at the end from how many were published to the client's
//! target. `contiguous` (every sequence up to it has arrived) tells when a client has caught up.

#[derive(Debug, Default, Clone)]
pub struct Tracker {
    seen: Vec<u64>,
    /// Distinct sequences received.
    pub unique: u64,
    /// Every event received, duplicates included.
    pub received: u64,
    pub duplicates: u64,
    /// Events that arrived after one with a higher sequence.
    pub out_of_order: u64,
    /// Every sequence in `1..=contiguous` has arrived.
    pub contiguous: u64,
    pub max: u64,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Arrival {
    New,
    OutOfOrder,
    Duplicate,
    /// Sequence 0 or absurdly far ahead: not a sequence this run published.
    Invalid,
}

/// Largest sequence accepted (a bitset of this many bits is 128 MiB).
const MAX_SEQ: u64 = 1 << 30;

impl Tracker {
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq == 0 || seq > MAX_SEQ {
            return Arrival::Invalid;
        }
        self.received += 1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        while self.has(self.contiguous + 1) {
            self.contiguous += 1;
        }
        if seq < self.max {
            self.out_of_order += 1;
            Arrival::OutOfOrder
        } else {
            self.max = seq;
            Arrival::New
        }
    }

    fn has(&self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        word < self.seen.len() && self.seen[word] & (1 << (seq % 64)) != 0
    }

    /// Sequences in `1..=expected` that never arrived.
    pub fn missing(&self, expected: u64) -> u64 {
        self.missing_seqs(expected).count() as u64
    }

    /// The sequences in `1..=expected` that never arrived, in order.
    pub fn missing_seqs(&self, expected: u64) -> impl Iterator<Item = u64> + '_ {
        (self.contiguous + 1..=expected).filter(|&s| !self.has(s))
    }
}

/// How many of the first `published` round-robin publishes went to client `i` of `n` (publish
/// `k` goes to target `k % n` with sequence `k / n + 1`).
pub fn expected_targeted(i: u64, n: u64, published: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    published / n + u64::from(i < published % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_out_of_order_and_missing() {
        let mut t = Tracker::default();
        for s in [1, 2, 4, 3, 3, 6, 2, 8] {
            t.record(s);
        }
        assert_eq!(t.received, 8);
        assert_eq!(t.unique, 6);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.out_of_order, 1, "3 arrived after 4");
        assert_eq!(t.contiguous, 4);
        assert_eq!(t.missing(8), 2, "5 and 7");
        assert_eq!(t.missing(10), 4);
        assert_eq!(t.missing(3), 0);
        assert_eq!(t.missing_seqs(10).collect::<Vec<_>>(), [5, 7, 9, 10]);
        assert_eq!(t.record(0), Arrival::Invalid);
    }

    #[test]
    fn round_robin_expectations_add_up() {
        for (n, p) in [(3, 10), (10, 3), (7, 0), (5, 5)] {
            let total: u64 = (0..n).map(|i| expected_targeted(i, n, p)).sum();
            assert_eq!(total, p);
        }
        assert_eq!(expected_targeted(0, 3, 10), 4);
        assert_eq!(expected_targeted(2, 3, 10), 3);
    }
}
