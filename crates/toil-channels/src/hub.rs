//! The node's topics: each one's log and the mailboxes of the boxes
//! subscribed to it. No I/O: the transport calls in with publications and
//! times, the hub fans them out.
//!
//! In process ([`Numbering::Local`]) the hub numbers publications itself.
//! Through a transport ([`Numbering::Transport`]) it keeps a copy of each
//! topic that has local subscribers: the copy is *loading* until the
//! transport has replayed the topic's kept history into it, and a box that
//! subscribes meanwhile gets its replay when loading ends, so the seam
//! between history and live publications has no gap and no duplicate.
//!
//! `Since::Now` promises that nothing stored after the subscribe call is
//! missed. A loaded copy's head is at or before the topic's, never past it,
//! so it serves. A copy still loading (or not held yet) cannot say, so the
//! hub answers [`Subscribed::NeedsPin`] and the caller pins `now` to the
//! transport's sequence (JetStream's stream sequence, which grows across
//! all topics), read no earlier than a moment before the call:
//! [`Start::NowAt`]. The subscriber then starts after the last publication
//! recorded at or below that sequence.
//!
//! Each copy has a generation, so a transport task still running for a
//! copy that was dropped cannot write into the next copy of that topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use toil_abi::channel::{ChannelError, Position, Since};

use crate::log::{HistoryLimits, Recorded, Replay, ResyncReason, TopicLog};
use crate::mailbox::{Mailbox, Pushed};
use crate::metrics::{ChannelMetrics, DomainChannelMetrics};

/// Who numbers publications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Numbering {
    Local,
    Transport,
}

/// A topic of a domain.
pub(crate) type TopicKey = (Arc<str>, Arc<str>);

/// Dropped with the topic: stops whatever the transport runs for it.
pub(crate) type Watch = Box<dyn Send + Sync>;

struct Topic {
    /// Which copy of the topic this is (see [`Subscribed::StartWatch`]).
    generation: u64,
    log: TopicLog,
    subscribers: Vec<(u64, Arc<Mailbox>)>,
    /// While loading: the subscribers waiting for their replay.
    loading: Option<Vec<(u64, Arc<Mailbox>, Waiting)>>,
    _watch: Option<Watch>,
}

/// Where a subscriber starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Since(Since),
    /// `now`, as the transport's sequence read while the box subscribed.
    NowAt(u64),
    /// `now` where the transport could not say: for a copy still loading,
    /// where its load ends (what other nodes publish meanwhile is skipped).
    NowUnpinned,
}

/// Where a subscriber waiting for a copy to load will start.
enum Waiting {
    Since(Since),
    /// After `after`: the last publication recorded at or below `sequence`,
    /// or right before the first one above it (`None`: none recorded yet).
    /// `unsure`: the first one above it was not an epoch's first, so some
    /// before it may have been dropped unseen (the subject's limit): the
    /// subscriber is told to resync there.
    Pinned {
        sequence: u64,
        after: Option<Position>,
        unsure: bool,
    },
}

/// What [`Hub::subscribe`] asks of its caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Subscribed {
    Done,
    /// A new copy, this generation of it: the transport must start loading
    /// the topic, and name the generation in what it delivers.
    StartWatch(u64),
    /// `now` for a copy not loaded: nothing was done; subscribe again with
    /// [`Start::NowAt`] (or [`Start::NowUnpinned`]).
    NeedsPin,
}

pub(crate) struct Hub {
    topics: HashMap<TopicKey, Topic>,
    per_domain: HashMap<Arc<str>, usize>,
    numbering: Numbering,
    history: HistoryLimits,
    max_topics_per_domain: usize,
    generations: u64,
    pub metrics: ChannelMetrics,
}

impl Hub {
    pub fn new(numbering: Numbering, history: HistoryLimits, max_topics_per_domain: usize, metrics: ChannelMetrics) -> Self {
        Hub { topics: HashMap::new(), per_domain: HashMap::new(), numbering, history, max_topics_per_domain, generations: 0, metrics }
    }

    fn topic(&mut self, key: &TopicKey) -> Result<(&mut Topic, bool), ChannelError> {
        let created = !self.topics.contains_key(key);
        if created {
            let count = self.per_domain.entry(key.0.clone()).or_default();
            if *count >= self.max_topics_per_domain {
                return Err(ChannelError::TooManyTopics);
            }
            *count += 1;
            let (epoch, loading) = match self.numbering {
                Numbering::Local => (Some(new_epoch()), None),
                Numbering::Transport => (None, Some(Vec::new())),
            };
            self.generations += 1;
            let topic =
                Topic { generation: self.generations, log: TopicLog::new(epoch, self.history), subscribers: Vec::new(), loading, _watch: None };
            self.topics.insert(key.clone(), topic);
        }
        Ok((self.topics.get_mut(key).expect("inserted above"), created))
    }

    fn forget(&mut self, key: &TopicKey) {
        if self.topics.remove(key).is_some() {
            if let Some(n) = self.per_domain.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_domain.remove(&key.0);
                }
            }
        }
    }

    /// Numbers and fans out a publication made on this node (in process).
    pub fn publish(&mut self, key: &TopicKey, bytes: Bytes, now_ms: u64) -> Result<Position, ChannelError> {
        debug_assert_eq!(self.numbering, Numbering::Local);
        let metrics = self.metrics.domain(&key.0);
        let (topic, _) = self.topic(key)?;
        let position = topic.log.append(bytes.clone(), now_ms);
        fan_out(&key.1, &topic.subscribers, &position, bytes, &metrics);
        Ok(position)
    }

    /// The copy `generation` of `key`, if it is still the one held.
    fn copy(&mut self, key: &TopicKey, generation: u64) -> Option<&mut Topic> {
        self.topics.get_mut(key).filter(|topic| topic.generation == generation)
    }

    /// Takes a publication the transport delivered for copy `generation`
    /// of a topic, the `sequence`-th the transport stored.
    pub fn record(&mut self, key: &TopicKey, generation: u64, position: Position, sequence: u64, bytes: Bytes, now_ms: u64) {
        let metrics = self.metrics.domain(&key.0);
        let Some(topic) = self.copy(key, generation) else { return };
        let recorded = topic.log.record(&position, bytes.clone(), now_ms);
        if recorded == Recorded::Duplicate {
            return;
        }
        for (_, _, waiting) in topic.loading.iter_mut().flatten() {
            match waiting {
                Waiting::Pinned { sequence: pinned, after, .. } if sequence <= *pinned => *after = Some(position.clone()),
                // The first one stored after the pin: start right before it.
                Waiting::Pinned { after: after @ None, unsure, .. } => {
                    *after = Some(Position { offset: position.offset.saturating_sub(1), epoch: position.epoch.clone() });
                    *unsure = position.offset > 1;
                }
                _ => {}
            }
        }
        match recorded {
            Recorded::Duplicate | Recorded::Next => {}
            Recorded::Resync(at, reason) => {
                for (_, mailbox) in &topic.subscribers {
                    mailbox.push_resync(&key.1, at.clone(), reason);
                    metrics.resync(reason);
                }
            }
        }
        fan_out(&key.1, &topic.subscribers, &position, bytes, &metrics);
    }

    /// Subscribes a box's mailbox from `start`, in place of its
    /// subscription `replacing` to the same topic if it has one (whose
    /// queued deliveries are dropped); its replay (or resync) is queued
    /// before any live publication.
    pub fn subscribe(
        &mut self,
        key: &TopicKey,
        id: u64,
        mailbox: Arc<Mailbox>,
        start: Start,
        replacing: Option<u64>,
        now_ms: u64,
    ) -> Result<Subscribed, ChannelError> {
        if self.numbering == Numbering::Transport && start == Start::Since(Since::Now) && !self.is_loaded(key) {
            // A domain with no room for the topic hears so before any pin.
            let full = self.per_domain.get(&key.0).is_some_and(|&n| n >= self.max_topics_per_domain);
            if full && !self.topics.contains_key(key) {
                return Err(ChannelError::TooManyTopics);
            }
            return Ok(Subscribed::NeedsPin);
        }
        let numbering = self.numbering;
        let metrics = self.metrics.domain(&key.0);
        let (topic, created) = self.topic(key)?;
        if let Some(old) = replacing {
            if topic.remove(old) {
                metrics.subscribers.dec();
            }
            mailbox.purge(&key.1);
        }
        if let Some(waiting) = &mut topic.loading {
            let start = match start {
                Start::Since(since) => Waiting::Since(since),
                // What the copy took so far was stored before the sequence
                // was read, or while the box was subscribing: either way not
                // after the subscribe call.
                Start::NowAt(sequence) => Waiting::Pinned { sequence, after: topic.log.head(), unsure: false },
                Start::NowUnpinned => Waiting::Since(Since::Now),
            };
            waiting.push((id, mailbox, start));
        } else {
            // A held copy's head is never past the transport's.
            let since = match start {
                Start::Since(since) => since,
                Start::NowAt(_) | Start::NowUnpinned => Since::Now,
            };
            let replay = topic.log.replay(&since, now_ms);
            topic.subscribers.push((id, mailbox.clone()));
            self.queue_replay(key, &mailbox, replay);
        }
        metrics.subscribers.inc();
        Ok(match created && numbering == Numbering::Transport {
            true => Subscribed::StartWatch(self.topics[key].generation),
            false => Subscribed::Done,
        })
    }

    fn queue_replay(&self, key: &TopicKey, mailbox: &Mailbox, replay: Replay) {
        match replay {
            Replay::Messages(entries) => {
                let now = Instant::now();
                let epoch = self.topics[key].log.position().epoch;
                for e in entries {
                    let position = Position { offset: e.offset, epoch: epoch.clone() };
                    if mailbox.push_message(&key.1, position, e.bytes, now) == Pushed::Overflowed {
                        self.metrics.domain(&key.0).resync(ResyncReason::Overflow);
                    }
                }
            }
            Replay::Resync(at, reason) => {
                mailbox.push_resync(&key.1, at, reason);
                self.metrics.domain(&key.0).resync(reason);
            }
        }
    }

    /// Whether the topic is held and not loading (in process: always once held).
    pub fn is_loaded(&self, key: &TopicKey) -> bool {
        self.topics.get(key).is_some_and(|topic| topic.loading.is_none())
    }

    /// Keeps what the transport runs for copy `generation`; dropped with it.
    pub fn set_watch(&mut self, key: &TopicKey, generation: u64, watch: Watch) -> bool {
        match self.copy(key, generation) {
            Some(topic) => {
                topic._watch = Some(watch);
                true
            }
            None => false,
        }
    }

    /// The transport has replayed the history of copy `generation`: serve
    /// the waiting subscribers.
    pub fn loaded(&mut self, key: &TopicKey, generation: u64, now_ms: u64) {
        let Some(topic) = self.copy(key, generation) else { return };
        let Some(waiting) = topic.loading.take() else { return };
        let mut replays = Vec::new();
        for (id, mailbox, waiting) in waiting {
            let since = match waiting {
                Waiting::Since(since) => since,
                Waiting::Pinned { after: Some(position), unsure, .. } => {
                    if unsure {
                        replays.push((mailbox.clone(), Replay::Resync(position.clone(), ResyncReason::Evicted)));
                    }
                    Since::After(position)
                }
                Waiting::Pinned { after: None, .. } => Since::Now, // the copy is empty
            };
            replays.push((mailbox.clone(), topic.log.replay(&since, now_ms)));
            topic.subscribers.push((id, mailbox));
        }
        for (mailbox, replay) in replays {
            self.queue_replay(key, &mailbox, replay);
        }
    }

    pub fn unsubscribe(&mut self, key: &TopicKey, id: u64) {
        let Some(topic) = self.topics.get_mut(key) else { return };
        if topic.remove(id) {
            self.metrics.domain(&key.0).subscribers.dec();
        }
        // A copy lives only for its subscribers; an in-process topic also
        // for its history (`sweep` forgets it once that has expired).
        let left = topic.subscribers.len() + topic.loading.as_ref().map_or(0, Vec::len);
        if left == 0 && (self.numbering == Numbering::Transport || topic.log.is_empty()) {
            self.forget(key);
        }
    }

    /// Expires history everywhere and forgets in-process topics that have
    /// neither history nor subscribers (their next publication starts a
    /// new epoch: the history is gone).
    pub fn sweep(&mut self, now_ms: u64) {
        let mut idle = Vec::new();
        for (key, topic) in &mut self.topics {
            topic.log.expire(now_ms);
            if self.numbering == Numbering::Local && topic.log.is_empty() && topic.subscribers.is_empty() {
                idle.push(key.clone());
            }
        }
        idle.iter().for_each(|k| self.forget(k));
    }

    #[cfg(test)]
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

impl Topic {
    /// Removes subscription `id`; returns whether it was there.
    fn remove(&mut self, id: u64) -> bool {
        let before = self.subscribers.len() + self.loading.as_ref().map_or(0, Vec::len);
        self.subscribers.retain(|(i, _)| *i != id);
        if let Some(waiting) = &mut self.loading {
            waiting.retain(|(i, _, _)| *i != id);
        }
        before != self.subscribers.len() + self.loading.as_ref().map_or(0, Vec::len)
    }
}

/// Queues a publication in every subscriber's mailbox; a full one folds it
/// into a resync, counted.
fn fan_out(topic: &Arc<str>, subscribers: &[(u64, Arc<Mailbox>)], position: &Position, bytes: Bytes, metrics: &DomainChannelMetrics) {
    let now = Instant::now();
    for (_, mailbox) in subscribers {
        if mailbox.push_message(topic, position.clone(), bytes.clone(), now) == Pushed::Overflowed {
            metrics.resync(ResyncReason::Overflow);
        }
    }
}

/// A fresh epoch: unique per topic incarnation, not secret.
pub(crate) fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    h.write_u64(nanos);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Delivery;

    const HISTORY: HistoryLimits = HistoryLimits { size: 3, ttl_ms: 1000 };

    fn hub(numbering: Numbering) -> Hub {
        Hub::new(numbering, HISTORY, 2, ChannelMetrics::new(&toil_metrics::Registry::new()))
    }

    fn key(domain: &str, topic: &str) -> TopicKey {
        (domain.into(), topic.into())
    }

    fn got(m: &Mailbox) -> Vec<String> {
        std::iter::from_fn(|| m.pop())
            .map(|d| match d {
                Delivery::Message { position, bytes, .. } => format!("{}={}", position.offset, String::from_utf8_lossy(&bytes)),
                Delivery::Resync { position, reason, .. } => format!("resync@{}:{}", position.offset, reason.as_str()),
            })
            .collect()
    }

    #[test]
    fn in_process_fan_out_with_history_and_resume() {
        let mut hub = hub(Numbering::Local);
        let room = key("chat.example", "room");
        let a = Arc::new(Mailbox::new(8));
        hub.subscribe(&room, 1, a.clone(), Start::Since(Since::Now), None, 0).unwrap();
        let p1 = hub.publish(&room, Bytes::from_static(b"hi"), 0).unwrap();
        assert_eq!(p1.offset, 1);
        hub.publish(&room, Bytes::from_static(b"there"), 1).unwrap();
        assert_eq!(got(&a), ["1=hi", "2=there"]);
        // A late joiner gets the kept history, a resume only what it missed.
        let b = Arc::new(Mailbox::new(8));
        hub.subscribe(&room, 2, b.clone(), Start::Since(Since::Oldest), None, 2).unwrap();
        let c = Arc::new(Mailbox::new(8));
        hub.subscribe(&room, 3, c.clone(), Start::Since(Since::After(p1.clone())), None, 2).unwrap();
        hub.publish(&room, Bytes::from_static(b"live"), 3).unwrap();
        assert_eq!(got(&b), ["1=hi", "2=there", "3=live"]);
        assert_eq!(got(&c), ["2=there", "3=live"]);
        // Another domain's topic of the same name is another topic.
        let d = Arc::new(Mailbox::new(8));
        hub.subscribe(&key("other.example", "room"), 4, d.clone(), Start::Since(Since::After(p1)), None, 3).unwrap();
        assert_eq!(got(&d), ["resync@0:epoch"]);
        assert_eq!(got(&a), ["3=live"]);
        hub.unsubscribe(&room, 1);
        hub.publish(&room, Bytes::from_static(b"after"), 4).unwrap();
        assert!(got(&a).is_empty());
    }

    #[test]
    fn topics_per_domain_are_capped_and_idle_ones_swept() {
        let mut hub = hub(Numbering::Local);
        hub.publish(&key("d", "a"), Bytes::new(), 0).unwrap();
        hub.publish(&key("d", "b"), Bytes::new(), 0).unwrap();
        assert_eq!(hub.publish(&key("d", "c"), Bytes::new(), 0), Err(ChannelError::TooManyTopics));
        assert!(hub.publish(&key("e", "c"), Bytes::new(), 0).is_ok());
        let m = Arc::new(Mailbox::new(8));
        hub.subscribe(&key("d", "a"), 1, m, Start::Since(Since::Now), None, 0).unwrap();
        hub.sweep(1000);
        // `a` has a subscriber; `b` and `e/c` expired and went.
        assert_eq!(hub.topic_count(), 1);
        assert!(hub.publish(&key("d", "c"), Bytes::new(), 1000).is_ok());
    }

    #[test]
    fn a_copy_serves_subscribers_once_loaded_with_no_gap_at_the_seam() {
        let mut hub = hub(Numbering::Transport);
        let t = key("d", "t");
        let at = |offset| Position { offset, epoch: "e".into() };
        let early = Arc::new(Mailbox::new(8));
        assert_eq!(hub.subscribe(&t, 1, early.clone(), Start::Since(Since::After(at(1))), None, 0), Ok(Subscribed::StartWatch(1)));
        // History arrives while loading; nothing is delivered yet.
        hub.record(&t, 1, at(1), 1, Bytes::from_static(b"a"), 0);
        hub.record(&t, 1, at(2), 2, Bytes::from_static(b"b"), 0);
        assert!(got(&early).is_empty());
        let second = Arc::new(Mailbox::new(8));
        // `now` for a copy loading needs a pin; without one (the transport
        // did not answer) it starts where the load ends.
        assert_eq!(hub.subscribe(&t, 2, second.clone(), Start::Since(Since::Now), None, 0), Ok(Subscribed::NeedsPin));
        assert_eq!(hub.subscribe(&t, 2, second.clone(), Start::NowUnpinned, None, 0), Ok(Subscribed::Done));
        hub.loaded(&t, 1, 0);
        hub.record(&t, 1, at(2), 2, Bytes::from_static(b"b"), 0); // redelivered by the transport
        hub.record(&t, 1, at(3), 3, Bytes::from_static(b"c"), 0);
        assert_eq!(got(&early), ["2=b", "3=c"]);
        assert_eq!(got(&second), ["3=c"]);
        // The last subscriber leaving drops the copy (and its watch).
        hub.unsubscribe(&t, 1);
        hub.unsubscribe(&t, 2);
        assert_eq!(hub.topic_count(), 0);
        assert!(!hub.set_watch(&t, 1, Box::new(())));
    }

    #[test]
    fn a_now_pinned_while_loading_gets_what_the_load_brings_after_the_pin() {
        // Offset n is the stream's sequence 10 + n (other topics took 1-10).
        // The history holds 3 (HISTORY.size).
        let mut hub = hub(Numbering::Transport);
        let t = key("d", "t");
        let at = |offset| Position { offset, epoch: "e".into() };
        let record = |hub: &mut Hub, offset: u64| hub.record(&t, 1, at(offset), 10 + offset, Bytes::from(offset.to_string()), 0);
        // Subscribed while the stream was at 12 (offset 2), before the copy took anything.
        let pinned = Arc::new(Mailbox::new(8));
        assert_eq!(hub.subscribe(&t, 1, pinned.clone(), Start::NowAt(12), None, 0), Ok(Subscribed::StartWatch(1)));
        // Subscribed while the stream was at 5, before any offset of this topic.
        let before_all = Arc::new(Mailbox::new(8));
        hub.subscribe(&t, 2, before_all.clone(), Start::NowAt(5), None, 0).unwrap();
        record(&mut hub, 1);
        record(&mut hub, 2);
        record(&mut hub, 3);
        // Pinned at 12, but the copy took offset 3 (sequence 13) before this
        // subscribe reached the hub: 3 was stored during the call, so the
        // subscriber may start after it.
        let late = Arc::new(Mailbox::new(8));
        hub.subscribe(&t, 3, late.clone(), Start::NowAt(12), None, 0).unwrap();
        record(&mut hub, 4);
        assert!(!hub.is_loaded(&t) && got(&pinned).is_empty());
        hub.loaded(&t, 1, 0);
        assert!(hub.is_loaded(&t));
        record(&mut hub, 5);
        assert_eq!(got(&pinned), ["3=3", "4=4", "5=5"]);
        assert_eq!(got(&late), ["4=4", "5=5"]);
        // Offsets 1-4 came after its pin, and the history lost 1: a resync, not a silent gap.
        assert_eq!(got(&before_all), ["resync@4:evicted", "5=5"]);
        // A copy held is a safe `now`: it never is past the stream.
        let held = Arc::new(Mailbox::new(8));
        hub.subscribe(&t, 4, held.clone(), Start::NowAt(99), None, 0).unwrap();
        record(&mut hub, 6);
        assert_eq!(got(&held), ["6=6"]);
    }

    #[test]
    fn a_pin_whose_first_publication_after_it_is_not_an_epochs_first_gets_a_resync() {
        // Pinned at 5; the copy's first record is offset 7 (sequence 17):
        // 6 may have been stored after the pin and dropped unseen.
        let mut hub = hub(Numbering::Transport);
        let t = key("d", "t");
        let at = |offset| Position { offset, epoch: "e".into() };
        let m = Arc::new(Mailbox::new(8));
        assert_eq!(hub.subscribe(&t, 1, m.clone(), Start::NowAt(5), None, 0), Ok(Subscribed::StartWatch(1)));
        hub.record(&t, 1, at(7), 17, Bytes::from_static(b"7"), 0);
        hub.record(&t, 1, at(8), 18, Bytes::from_static(b"8"), 0);
        hub.loaded(&t, 1, 0);
        assert_eq!(got(&m), ["resync@6:evicted", "7=7", "8=8"]);
        // A domain at its topic cap (2 here) is told so before it waits for a pin.
        let (u, v) = (key("d", "u"), key("d", "v"));
        assert_eq!(hub.subscribe(&u, 2, Arc::new(Mailbox::new(8)), Start::Since(Since::Now), None, 0), Ok(Subscribed::NeedsPin));
        assert_eq!(hub.subscribe(&u, 2, Arc::new(Mailbox::new(8)), Start::NowUnpinned, None, 0), Ok(Subscribed::StartWatch(2)));
        assert_eq!(hub.subscribe(&v, 3, Arc::new(Mailbox::new(8)), Start::Since(Since::Now), None, 0), Err(ChannelError::TooManyTopics));
    }

    #[test]
    fn a_dropped_copys_transport_cannot_write_into_the_next_copy() {
        let mut hub = hub(Numbering::Transport);
        let t = key("d", "t");
        let at = |offset| Position { offset, epoch: "e".into() };
        let first = Arc::new(Mailbox::new(8));
        assert_eq!(hub.subscribe(&t, 1, first, Start::Since(Since::Oldest), None, 0), Ok(Subscribed::StartWatch(1)));
        hub.unsubscribe(&t, 1);
        let second = Arc::new(Mailbox::new(8));
        assert_eq!(hub.subscribe(&t, 2, second.clone(), Start::Since(Since::Oldest), None, 0), Ok(Subscribed::StartWatch(2)));
        // The first copy's follower, not stopped yet, delivers and ends its load.
        hub.record(&t, 1, at(1), 1, Bytes::from_static(b"stale"), 0);
        hub.loaded(&t, 1, 0);
        assert!(!hub.is_loaded(&t) && !hub.set_watch(&t, 1, Box::new(())));
        hub.record(&t, 2, at(1), 1, Bytes::from_static(b"a"), 0);
        hub.loaded(&t, 2, 0);
        assert_eq!(got(&second), ["1=a"]);
    }

    #[test]
    fn subscribing_again_keeps_the_copy_and_drops_what_was_queued() {
        let mut hub = hub(Numbering::Transport);
        let t = key("d", "t");
        let at = |offset| Position { offset, epoch: "e".into() };
        let m = Arc::new(Mailbox::new(8));
        hub.subscribe(&t, 1, m.clone(), Start::Since(Since::Oldest), None, 0).unwrap();
        hub.record(&t, 1, at(1), 1, Bytes::from_static(b"a"), 0);
        hub.loaded(&t, 1, 0);
        hub.record(&t, 1, at(2), 2, Bytes::from_static(b"b"), 0);
        // Again from 1, in place of subscription 1: the copy stays loaded (no
        // new watch), and what was queued for the old subscription is gone.
        assert_eq!(hub.subscribe(&t, 2, m.clone(), Start::Since(Since::After(at(1))), Some(1), 0), Ok(Subscribed::Done));
        assert_eq!(hub.subscribe(&t, 3, m.clone(), Start::Since(Since::Now), Some(2), 0), Ok(Subscribed::Done));
        hub.record(&t, 1, at(3), 3, Bytes::from_static(b"c"), 0);
        assert_eq!(got(&m), ["3=c"]);
        assert_eq!(hub.topic_count(), 1);
        hub.unsubscribe(&t, 3);
        assert_eq!(hub.topic_count(), 0);
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
        assert!(new_epoch().len() <= toil_abi::channel::MAX_EPOCH_LEN);
    }
}
