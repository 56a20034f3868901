//! A box's mailbox: the publications of its topics waiting for its
//! `channel` hook, bounded so that a slow box never holds up a topic.
//!
//! Publishers never wait. When a box's queue is full, a publication for it
//! is dropped and replaced by one resync marker for that topic at the
//! dropped publication's position; further drops for the topic move the
//! marker forward instead of adding to the queue. The box so gets, in
//! order: what was queued before the overflow, then one resync saying
//! where the topic is, then live publications again. Markers sit beyond the
//! capacity, at most one open per topic (and topics per box are capped).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use toil_abi::channel::Position;
use tokio::sync::Notify;

use crate::log::ResyncReason;

/// Something for a box's `channel` hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Message { topic: Arc<str>, position: Position, bytes: Bytes, published: Instant },
    Resync { topic: Arc<str>, position: Position, reason: ResyncReason },
}

impl Delivery {
    pub fn topic(&self) -> &Arc<str> {
        match self {
            Delivery::Message { topic, .. } | Delivery::Resync { topic, .. } => topic,
        }
    }
}

/// What became of a publication pushed to a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The queue was full: a resync marker now stands for it.
    Overflowed,
    /// The queue was full and the topic's marker moved past it.
    Dropped,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<(u64, Delivery)>,
    messages: usize,
    /// The marker of each topic that publications may still fold into.
    open_resync: HashMap<Arc<str>, u64>,
    next_id: u64,
}

/// A box's bounded queue of deliveries; shared by the publishers (the hub)
/// and the box's session driver.
pub(crate) struct Mailbox {
    queue: Mutex<Queue>,
    ready: Notify,
    capacity: usize,
}

impl Mailbox {
    pub fn new(capacity: usize) -> Self {
        Mailbox { queue: Mutex::default(), ready: Notify::new(), capacity: capacity.max(1) }
    }

    /// Queues a publication, or folds it into the topic's resync marker.
    pub fn push_message(&self, topic: &Arc<str>, position: Position, bytes: Bytes, published: Instant) -> Pushed {
        let mut q = self.queue.lock().expect("mailbox");
        let pushed = if q.messages < self.capacity {
            q.open_resync.remove(topic);
            q.messages += 1;
            Self::enqueue(&mut q, Delivery::Message { topic: topic.clone(), position, bytes, published });
            Pushed::Queued
        } else if Self::move_marker(&mut q, topic, &position, ResyncReason::Overflow) {
            Pushed::Dropped
        } else {
            let id = Self::enqueue(&mut q, Delivery::Resync { topic: topic.clone(), position, reason: ResyncReason::Overflow });
            q.open_resync.insert(topic.clone(), id);
            Pushed::Overflowed
        };
        drop(q);
        if pushed != Pushed::Dropped {
            self.ready.notify_one();
        }
        pushed
    }

    /// Queues a resync (a replay that could not be served, a gap, a new
    /// epoch); an open marker of the topic takes its place.
    pub fn push_resync(&self, topic: &Arc<str>, position: Position, reason: ResyncReason) {
        let mut q = self.queue.lock().expect("mailbox");
        if !Self::move_marker(&mut q, topic, &position, reason) {
            let id = Self::enqueue(&mut q, Delivery::Resync { topic: topic.clone(), position, reason });
            q.open_resync.insert(topic.clone(), id);
        }
        drop(q);
        self.ready.notify_one();
    }

    fn enqueue(q: &mut Queue, delivery: Delivery) -> u64 {
        q.next_id += 1;
        let id = q.next_id;
        q.items.push_back((id, delivery));
        id
    }

    fn move_marker(q: &mut Queue, topic: &Arc<str>, to: &Position, why: ResyncReason) -> bool {
        let Some(&id) = q.open_resync.get(topic) else { return false };
        let marker = q.items.iter_mut().rev().find(|(i, _)| *i == id);
        if let Some((_, Delivery::Resync { position, reason, .. })) = marker {
            *position = to.clone();
            *reason = why;
            return true;
        }
        false
    }

    /// Forgets everything queued for `topic` (the box unsubscribed).
    pub fn purge(&self, topic: &str) {
        let mut q = self.queue.lock().expect("mailbox");
        q.items.retain(|(_, d)| &**d.topic() != topic);
        q.messages = q.items.iter().filter(|(_, d)| matches!(d, Delivery::Message { .. })).count();
        q.open_resync.remove(topic);
    }

    pub fn pop(&self) -> Option<Delivery> {
        let mut q = self.queue.lock().expect("mailbox");
        let (id, delivery) = q.items.pop_front()?;
        match &delivery {
            Delivery::Message { .. } => q.messages -= 1,
            Delivery::Resync { topic, .. } => {
                if q.open_resync.get(topic) == Some(&id) {
                    q.open_resync.remove(topic);
                }
            }
        }
        Some(delivery)
    }

    /// The next delivery, waiting for one.
    pub async fn next(&self) -> Delivery {
        loop {
            if let Some(d) = self.pop() {
                return d;
            }
            self.ready.notified().await;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Position {
        Position { offset, epoch: "e".into() }
    }

    fn drain(m: &Mailbox) -> Vec<String> {
        std::iter::from_fn(|| m.pop())
            .map(|d| match d {
                Delivery::Message { topic, position, .. } => format!("{topic}:{}", position.offset),
                Delivery::Resync { topic, position, reason } => format!("{topic}:resync@{}:{}", position.offset, reason.as_str()),
            })
            .collect()
    }

    #[test]
    fn a_full_queue_turns_drops_into_one_resync_per_topic() {
        let m = Mailbox::new(2);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let now = Instant::now();
        assert_eq!(m.push_message(&a, at(1), Bytes::new(), now), Pushed::Queued);
        assert_eq!(m.push_message(&b, at(1), Bytes::new(), now), Pushed::Queued);
        assert_eq!(m.push_message(&a, at(2), Bytes::new(), now), Pushed::Overflowed);
        assert_eq!(m.push_message(&a, at(3), Bytes::new(), now), Pushed::Dropped);
        assert_eq!(m.push_message(&b, at(2), Bytes::new(), now), Pushed::Overflowed);
        // Bounded: two messages plus one marker per topic.
        assert_eq!(m.len(), 4);
        assert_eq!(m.pop().map(|d| d.topic().clone()), Some(a.clone()));
        // Room again: a new publication queues after the marker, which stops moving.
        assert_eq!(m.push_message(&a, at(4), Bytes::new(), now), Pushed::Queued);
        assert_eq!(drain(&m), ["b:1", "a:resync@3:overflow", "b:resync@2:overflow", "a:4"]);
    }

    #[test]
    fn resyncs_fold_into_an_open_marker_and_purge_forgets_a_topic() {
        let m = Mailbox::new(8);
        let a: Arc<str> = "a".into();
        m.push_resync(&a, at(5), ResyncReason::Evicted);
        m.push_resync(&a, at(9), ResyncReason::Gap);
        assert_eq!(drain(&m), ["a:resync@9:gap"]);
        m.push_message(&a, at(10), Bytes::new(), Instant::now());
        m.push_resync(&a, at(11), ResyncReason::Epoch);
        m.purge("a");
        assert_eq!(m.len(), 0);
        m.push_message(&a, at(12), Bytes::new(), Instant::now());
        assert_eq!(drain(&m), ["a:12"]);
    }

    #[tokio::test]
    async fn next_waits_for_a_push() {
        let m = Arc::new(Mailbox::new(4));
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { m.next().await }
        });
        tokio::task::yield_now().await;
        m.push_message(&"t".into(), at(1), Bytes::from_static(b"x"), Instant::now());
        let got = waiter.await.unwrap();
        assert!(matches!(got, Delivery::Message { ref bytes, .. } if &bytes[..] == b"x"));
    }
}
