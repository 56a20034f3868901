//! One topic's log as a node sees it: its epoch, its last offset, and the
//! publications it still keeps. No I/O and no clock: time comes in as
//! milliseconds, so every rule here is tested with made-up times.
//!
//! The same log serves both transports. In process, [`TopicLog::append`]
//! numbers each publication. Through NATS the stream numbers them and the
//! node's copy follows with [`TopicLog::record`], which also notices what a
//! copy can see go wrong: a duplicate, a gap, a new epoch.

use std::collections::VecDeque;

use bytes::Bytes;
use toil_abi::channel::{Position, Since};

/// How much history a topic keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Publications kept per topic.
    pub size: usize,
    /// How long a publication is kept, in milliseconds.
    pub ttl_ms: u64,
}

/// A kept publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub bytes: Bytes,
    /// When the node took it, in the caller's milliseconds.
    pub at_ms: u64,
}

/// Why a subscriber is told to resync instead of given messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResyncReason {
    /// Its position is older than the kept history.
    Evicted,
    /// Its position is of another epoch (the history it came from is gone).
    Epoch,
    /// Its position is past the topic's last offset.
    Ahead,
    /// Its queue overflowed and publications were dropped for it.
    Overflow,
    /// The node's copy of the topic missed publications (transport gap).
    Gap,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 5] = [ResyncReason::Evicted, ResyncReason::Epoch, ResyncReason::Ahead, ResyncReason::Overflow, ResyncReason::Gap];

    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Evicted => "evicted",
            ResyncReason::Epoch => "epoch",
            ResyncReason::Ahead => "ahead",
            ResyncReason::Overflow => "overflow",
            ResyncReason::Gap => "gap",
        }
    }
}

/// What a new subscriber gets before live publications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// These kept publications, in order (possibly none).
    Messages(Vec<Entry>),
    /// One resync at this position.
    Resync(Position, ResyncReason),
}

/// What [`TopicLog::record`] made of a publication from the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The next one: deliver it.
    Next,
    /// Already seen (offset not past the last one): drop it.
    Duplicate,
    /// Publications were missed, or the epoch changed: tell every subscriber
    /// to resync at this position, then deliver it.
    Resync(Position, ResyncReason),
}

/// A topic's epoch, last offset and kept history.
#[derive(Debug)]
pub struct TopicLog {
    /// `None` until the first publication of a copy that has seen none.
    epoch: Option<String>,
    last: u64,
    /// Contiguous offsets ending at `last`.
    kept: VecDeque<Entry>,
    limits: HistoryLimits,
}

impl TopicLog {
    /// A topic with no history yet: offsets start at 1 in `epoch`.
    pub fn new(epoch: Option<String>, limits: HistoryLimits) -> Self {
        TopicLog { epoch, last: 0, kept: VecDeque::new(), limits }
    }

    /// Where the topic is: its last offset and epoch (`""` before any epoch).
    pub fn position(&self) -> Position {
        Position { offset: self.last, epoch: self.epoch.clone().unwrap_or_default() }
    }

    /// The last publication's position, once there was one.
    pub fn head(&self) -> Option<Position> {
        self.epoch.is_some().then(|| self.position())
    }

    /// Whether any publication is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Numbers a publication in process: the next offset of this epoch.
    pub fn append(&mut self, bytes: Bytes, now_ms: u64) -> Position {
        self.last += 1;
        self.keep(Entry { offset: self.last, bytes, at_ms: now_ms }, now_ms);
        self.position()
    }

    /// Takes a publication the transport numbered.
    pub fn record(&mut self, at: &Position, bytes: Bytes, now_ms: u64) -> Recorded {
        let outcome = match &self.epoch {
            None => Recorded::Next,
            Some(epoch) if *epoch != at.epoch => Recorded::Resync(Position { offset: at.offset - 1, epoch: at.epoch.clone() }, ResyncReason::Epoch),
            Some(_) if at.offset <= self.last => return Recorded::Duplicate,
            Some(_) if at.offset == self.last + 1 => Recorded::Next,
            Some(_) => Recorded::Resync(Position { offset: at.offset - 1, epoch: at.epoch.clone() }, ResyncReason::Gap),
        };
        if !matches!(outcome, Recorded::Next) || self.epoch.is_none() {
            self.kept.clear();
            self.epoch = Some(at.epoch.clone());
        }
        self.last = at.offset;
        self.keep(Entry { offset: at.offset, bytes, at_ms: now_ms }, now_ms);
        outcome
    }

    fn keep(&mut self, entry: Entry, now_ms: u64) {
        self.kept.push_back(entry);
        while self.kept.len() > self.limits.size {
            self.kept.pop_front();
        }
        self.expire(now_ms);
    }

    /// Forgets publications older than the history's time limit.
    pub fn expire(&mut self, now_ms: u64) {
        while self.kept.front().is_some_and(|e| e.at_ms.saturating_add(self.limits.ttl_ms) <= now_ms) {
            self.kept.pop_front();
        }
    }

    /// What a subscriber starting at `since` gets before live publications.
    pub fn replay(&mut self, since: &Since, now_ms: u64) -> Replay {
        self.expire(now_ms);
        let after = match since {
            Since::Now => return Replay::Messages(Vec::new()),
            Since::Oldest => return Replay::Messages(self.kept.iter().cloned().collect()),
            Since::After(p) => p,
        };
        let resync = |reason| Replay::Resync(self.position(), reason);
        if self.epoch.as_deref() != Some(after.epoch.as_str()) {
            return resync(ResyncReason::Epoch);
        }
        if after.offset > self.last {
            return resync(ResyncReason::Ahead);
        }
        if after.offset == self.last {
            return Replay::Messages(Vec::new());
        }
        match self.kept.front() {
            Some(first) if first.offset <= after.offset + 1 => {
                Replay::Messages(self.kept.iter().filter(|e| e.offset > after.offset).cloned().collect())
            }
            _ => resync(ResyncReason::Evicted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HistoryLimits = HistoryLimits { size: 3, ttl_ms: 1000 };

    fn at(offset: u64, epoch: &str) -> Position {
        Position { offset, epoch: epoch.into() }
    }

    fn offsets(replay: Replay) -> Vec<u64> {
        match replay {
            Replay::Messages(m) => m.iter().map(|e| e.offset).collect(),
            Replay::Resync(p, why) => panic!("resync at {p:?}: {why:?}"),
        }
    }

    #[test]
    fn offsets_count_up_by_one_and_history_is_bounded_by_size() {
        let mut log = TopicLog::new(Some("e".into()), LIMITS);
        for (i, now) in (1..=5).zip(0..) {
            assert_eq!(log.append(Bytes::from(vec![i as u8]), now), at(i, "e"));
        }
        assert_eq!(offsets(log.replay(&Since::Oldest, 10)), [3, 4, 5]);
        assert_eq!(offsets(log.replay(&Since::Now, 10)), [] as [u64; 0]);
        // Resume from anywhere the history still covers, with no gap at the seam.
        assert_eq!(offsets(log.replay(&Since::After(at(2, "e")), 10)), [3, 4, 5]);
        assert_eq!(offsets(log.replay(&Since::After(at(4, "e")), 10)), [5]);
        assert_eq!(offsets(log.replay(&Since::After(at(5, "e")), 10)), [] as [u64; 0]);
        assert_eq!(log.replay(&Since::After(at(1, "e")), 10), Replay::Resync(at(5, "e"), ResyncReason::Evicted));
        assert_eq!(log.replay(&Since::After(at(3, "other")), 10), Replay::Resync(at(5, "e"), ResyncReason::Epoch));
        assert_eq!(log.replay(&Since::After(at(6, "e")), 10), Replay::Resync(at(5, "e"), ResyncReason::Ahead));
    }

    #[test]
    fn history_expires_by_age_but_offsets_go_on() {
        let mut log = TopicLog::new(Some("e".into()), LIMITS);
        log.append(Bytes::from_static(b"a"), 0);
        log.append(Bytes::from_static(b"b"), 500);
        assert_eq!(offsets(log.replay(&Since::After(at(0, "e")), 999)), [1, 2]);
        assert_eq!(log.replay(&Since::After(at(0, "e")), 1000), Replay::Resync(at(2, "e"), ResyncReason::Evicted));
        assert_eq!(offsets(log.replay(&Since::After(at(1, "e")), 1000)), [2]);
        log.expire(1500);
        assert!(log.is_empty());
        // Up to date: nothing missed even though nothing is kept.
        assert_eq!(offsets(log.replay(&Since::After(at(2, "e")), 1500)), [] as [u64; 0]);
        assert_eq!(log.append(Bytes::from_static(b"c"), 1600), at(3, "e"));
    }

    #[test]
    fn a_copy_drops_duplicates_and_reports_gaps_and_new_epochs() {
        let mut log = TopicLog::new(None, LIMITS);
        assert_eq!(log.position(), at(0, ""));
        // A copy may start anywhere in the topic.
        assert_eq!(log.record(&at(7, "e"), Bytes::new(), 0), Recorded::Next);
        assert_eq!(log.record(&at(8, "e"), Bytes::new(), 0), Recorded::Next);
        assert_eq!(log.record(&at(8, "e"), Bytes::new(), 0), Recorded::Duplicate);
        assert_eq!(log.record(&at(3, "e"), Bytes::new(), 0), Recorded::Duplicate);
        assert_eq!(offsets(log.replay(&Since::After(at(7, "e")), 0)), [8]);
        assert_eq!(log.record(&at(10, "e"), Bytes::new(), 0), Recorded::Resync(at(9, "e"), ResyncReason::Gap));
        // After a gap the history restarts at the new publication.
        assert_eq!(log.replay(&Since::After(at(8, "e")), 0), Replay::Resync(at(10, "e"), ResyncReason::Evicted));
        assert_eq!(log.record(&at(1, "f"), Bytes::new(), 0), Recorded::Resync(at(0, "f"), ResyncReason::Epoch));
        assert_eq!(log.position(), at(1, "f"));
        assert_eq!(offsets(log.replay(&Since::After(at(0, "f")), 0)), [1]);
    }
}
