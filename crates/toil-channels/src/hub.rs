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
    log: TopicLog,
    subscribers: Vec<(u64, Arc<Mailbox>)>,
    /// While loading: the subscribers waiting for their replay.
    loading: Option<Vec<(u64, Arc<Mailbox>, Since)>>,
    _watch: Option<Watch>,
}

/// What [`Hub::subscribe`] asks of its caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Subscribed {
    Done,
    /// A new copy: the transport must start loading the topic.
    StartWatch,
}

pub(crate) struct Hub {
    topics: HashMap<TopicKey, Topic>,
    per_domain: HashMap<Arc<str>, usize>,
    numbering: Numbering,
    history: HistoryLimits,
    max_topics_per_domain: usize,
    pub metrics: ChannelMetrics,
}

impl Hub {
    pub fn new(numbering: Numbering, history: HistoryLimits, max_topics_per_domain: usize, metrics: ChannelMetrics) -> Self {
        Hub { topics: HashMap::new(), per_domain: HashMap::new(), numbering, history, max_topics_per_domain, metrics }
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
            self.topics.insert(key.clone(), Topic { log: TopicLog::new(epoch, self.history), subscribers: Vec::new(), loading, _watch: None });
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

    /// Takes a publication the transport delivered for a copied topic.
    pub fn record(&mut self, key: &TopicKey, position: Position, bytes: Bytes, now_ms: u64) {
        let Some(topic) = self.topics.get_mut(key) else { return };
        let metrics = self.metrics.domain(&key.0);
        match topic.log.record(&position, bytes.clone(), now_ms) {
            Recorded::Duplicate => return,
            Recorded::Next => {}
            Recorded::Resync(at, reason) => {
                for (_, mailbox) in &topic.subscribers {
                    mailbox.push_resync(&key.1, at.clone(), reason);
                    metrics.resync(reason);
                }
            }
        }
        fan_out(&key.1, &topic.subscribers, &position, bytes, &metrics);
    }

    /// Subscribes a box's mailbox from `since`; its replay (or resync) is
    /// queued before any live publication.
    pub fn subscribe(&mut self, key: &TopicKey, id: u64, mailbox: Arc<Mailbox>, since: Since, now_ms: u64) -> Result<Subscribed, ChannelError> {
        let numbering = self.numbering;
        let (topic, created) = self.topic(key)?;
        if let Some(waiting) = &mut topic.loading {
            waiting.push((id, mailbox, since));
        } else {
            let replay = topic.log.replay(&since, now_ms);
            topic.subscribers.push((id, mailbox.clone()));
            self.queue_replay(key, &mailbox, replay);
        }
        self.metrics.domain(&key.0).subscribers.inc();
        Ok(if created && numbering == Numbering::Transport { Subscribed::StartWatch } else { Subscribed::Done })
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

    /// Keeps what the transport runs for a new copy; dropped with the topic.
    pub fn set_watch(&mut self, key: &TopicKey, watch: Watch) -> bool {
        match self.topics.get_mut(key) {
            Some(topic) => {
                topic._watch = Some(watch);
                true
            }
            None => false,
        }
    }

    /// The transport has replayed a copy's history: serve the waiting subscribers.
    pub fn loaded(&mut self, key: &TopicKey, now_ms: u64) {
        let Some(topic) = self.topics.get_mut(key) else { return };
        let Some(waiting) = topic.loading.take() else { return };
        let mut replays = Vec::new();
        for (id, mailbox, since) in waiting {
            replays.push((mailbox.clone(), topic.log.replay(&since, now_ms)));
            topic.subscribers.push((id, mailbox));
        }
        for (mailbox, replay) in replays {
            self.queue_replay(key, &mailbox, replay);
        }
    }

    pub fn unsubscribe(&mut self, key: &TopicKey, id: u64) {
        let Some(topic) = self.topics.get_mut(key) else { return };
        let before = topic.subscribers.len() + topic.loading.as_ref().map_or(0, Vec::len);
        topic.subscribers.retain(|(i, _)| *i != id);
        if let Some(waiting) = &mut topic.loading {
            waiting.retain(|(i, _, _)| *i != id);
        }
        let after = topic.subscribers.len() + topic.loading.as_ref().map_or(0, Vec::len);
        if after < before {
            self.metrics.domain(&key.0).subscribers.dec();
        }
        // A copy lives only for its subscribers; an in-process topic also
        // for its history (`sweep` forgets it once that has expired).
        if after == 0 && (self.numbering == Numbering::Transport || topic.log.is_empty()) {
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
        hub.subscribe(&room, 1, a.clone(), Since::Now, 0).unwrap();
        let p1 = hub.publish(&room, Bytes::from_static(b"hi"), 0).unwrap();
        assert_eq!(p1.offset, 1);
        hub.publish(&room, Bytes::from_static(b"there"), 1).unwrap();
        assert_eq!(got(&a), ["1=hi", "2=there"]);
        // A late joiner gets the kept history, a resume only what it missed.
        let b = Arc::new(Mailbox::new(8));
        hub.subscribe(&room, 2, b.clone(), Since::Oldest, 2).unwrap();
        let c = Arc::new(Mailbox::new(8));
        hub.subscribe(&room, 3, c.clone(), Since::After(p1.clone()), 2).unwrap();
        hub.publish(&room, Bytes::from_static(b"live"), 3).unwrap();
        assert_eq!(got(&b), ["1=hi", "2=there", "3=live"]);
        assert_eq!(got(&c), ["2=there", "3=live"]);
        // Another domain's topic of the same name is another topic.
        let d = Arc::new(Mailbox::new(8));
        hub.subscribe(&key("other.example", "room"), 4, d.clone(), Since::After(p1), 3).unwrap();
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
        hub.subscribe(&key("d", "a"), 1, m, Since::Now, 0).unwrap();
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
        assert_eq!(hub.subscribe(&t, 1, early.clone(), Since::After(at(1)), 0), Ok(Subscribed::StartWatch));
        // History arrives while loading; nothing is delivered yet.
        hub.record(&t, at(1), Bytes::from_static(b"a"), 0);
        hub.record(&t, at(2), Bytes::from_static(b"b"), 0);
        assert!(got(&early).is_empty());
        let second = Arc::new(Mailbox::new(8));
        assert_eq!(hub.subscribe(&t, 2, second.clone(), Since::Now, 0), Ok(Subscribed::Done));
        hub.loaded(&t, 0);
        hub.record(&t, at(2), Bytes::from_static(b"b"), 0); // redelivered by the transport
        hub.record(&t, at(3), Bytes::from_static(b"c"), 0);
        assert_eq!(got(&early), ["2=b", "3=c"]);
        assert_eq!(got(&second), ["3=c"]);
        // The last subscriber leaving drops the copy (and its watch).
        hub.unsubscribe(&t, 1);
        hub.unsubscribe(&t, 2);
        assert_eq!(hub.topic_count(), 0);
        assert!(!hub.set_watch(&t, Box::new(())));
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
        assert!(new_epoch().len() <= toil_abi::channel::MAX_EPOCH_LEN);
    }
}
