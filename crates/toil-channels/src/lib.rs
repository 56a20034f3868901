//! Channels: how boxes, requests and daemon ticks of one domain talk to
//! each other, on one node or across a cluster.
//!
//! A *topic* is a domain's named log (one domain can never reach another's:
//! every key here is `(domain, topic)`). A publication gets a
//! [`Position`]: the next offset of the topic's epoch. Each topic keeps a
//! bounded history (by count and age), so a box that subscribes with the
//! position it last saw gets exactly what it missed, or one resync when
//! that is no longer kept. See `docs/channels.md` for the model and its
//! guarantees.
//!
//! The parts, bottom-up:
//! - [`log`]: one topic's epoch, offsets and kept history, and the replay
//!   decision; no I/O, time passed in;
//! - [`mailbox`]: a box's bounded queue; a full queue turns drops into one
//!   resync per topic, so a slow box never holds up a topic;
//! - `hub`: the node's topics and who is subscribed, fan-out;
//! - `nats`: the cluster transport, NATS JetStream: the stream numbers
//!   publications and keeps history; each node keeps a copy of the topics
//!   its boxes subscribe to, fed by one consumer per topic;
//! - [`Channels`], the node's handle, and [`Inbox`], a box's subscriptions.
//!
//! In process (`toil dev`, a single node) publishing is a function call.
//! Through NATS a publish returns once JetStream has stored it; a publish
//! NATS does not take fails with [`ChannelError::Unavailable`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use toil_abi::channel::{check_topic, ChannelError, Position, Since};
use toil_metrics::Registry;

mod hub;
pub mod log;
pub mod mailbox;
mod metrics;
mod nats;

use hub::{Hub, Numbering, Start, Subscribed, TopicKey};
pub use log::ResyncReason;
pub use mailbox::Delivery;
use mailbox::Mailbox;
pub use metrics::DomainChannelMetrics;

/// Channel limits and history. The values come from `toil-config`
/// (`channels` in `toilconfig.json`), which owns every default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSettings {
    /// Publications kept per topic.
    pub history_size: usize,
    /// How long a publication is kept.
    pub history_ttl: Duration,
    /// Deliveries a box's mailbox holds before it overflows into a resync.
    pub subscriber_queue: usize,
    pub max_message_bytes: usize,
    pub max_subscriptions_per_box: usize,
    pub max_topics_per_domain: usize,
    /// How long a publish may wait for the transport before it fails.
    pub publish_timeout: Duration,
}

/// The node's channels; cheap to clone.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Mutex<Hub>,
    settings: ChannelSettings,
    transport: Transport,
    /// The hub's clock: milliseconds since this instant.
    started: Instant,
}

enum Transport {
    InProcess,
    Nats(nats::Nats),
}

impl Channels {
    /// Channels delivered in process: `toil dev` and a single node.
    pub fn in_process(settings: ChannelSettings, registry: &Registry) -> Channels {
        Channels::new(settings, registry, Transport::InProcess)
    }

    /// Channels across a cluster through NATS JetStream at `url`. Fails if
    /// the server cannot be reached or refuses the stream.
    pub async fn nats(url: &str, settings: ChannelSettings, registry: &Registry) -> anyhow::Result<Channels> {
        let transport = nats::Nats::connect(url, &settings).await?;
        Ok(Channels::new(settings, registry, Transport::Nats(transport)))
    }

    fn new(settings: ChannelSettings, registry: &Registry, transport: Transport) -> Channels {
        let numbering = match transport {
            Transport::InProcess => Numbering::Local,
            Transport::Nats(_) => Numbering::Transport,
        };
        let history = log::HistoryLimits { size: settings.history_size, ttl_ms: settings.history_ttl.as_millis() as u64 };
        let hub = Hub::new(numbering, history, settings.max_topics_per_domain, metrics::ChannelMetrics::new(registry));
        let channels = Channels { inner: Arc::new(Inner { hub: Mutex::new(hub), settings, transport, started: Instant::now() }) };
        channels.start_sweeper();
        channels
    }

    /// Expires history in the background, for as long as the channels live.
    fn start_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = inner.now_ms();
                inner.hub.lock().expect("channel hub").sweep(now);
            }
        });
    }

    /// `in-process` or `nats`.
    pub fn transport(&self) -> &'static str {
        match self.inner.transport {
            Transport::InProcess => "in-process",
            Transport::Nats(_) => "nats",
        }
    }

    /// Whether a publication of `len` bytes to `topic` would be refused
    /// before reaching the transport (so a caller need not copy it first).
    pub fn check(&self, topic: &str, len: usize) -> Result<(), ChannelError> {
        check_topic(topic).map_err(|_| ChannelError::BadTopic)?;
        if len > self.inner.settings.max_message_bytes {
            return Err(ChannelError::TooLarge);
        }
        Ok(())
    }

    /// Publishes `bytes` to `domain`'s `topic`; returns its position once
    /// the transport has stored it.
    pub async fn publish(&self, domain: &str, topic: &str, bytes: Bytes) -> Result<Position, ChannelError> {
        self.check(topic, bytes.len())?;
        let key: TopicKey = (domain.into(), topic.into());
        let position = match &self.inner.transport {
            Transport::InProcess => {
                let now = self.inner.now_ms();
                self.inner.hub.lock().expect("channel hub").publish(&key, bytes, now)?
            }
            Transport::Nats(nats) => {
                let published = tokio::time::timeout(self.inner.settings.publish_timeout, nats.publish(&key, bytes)).await;
                match published.unwrap_or(Err(ChannelError::Unavailable)) {
                    Ok(p) => p,
                    Err(e) => {
                        let hub = self.inner.hub.lock().expect("channel hub");
                        hub.metrics.transport_errors[0].inc();
                        tracing::warn!(domain, topic, "channel publish failed: {e}");
                        return Err(e);
                    }
                }
            }
        };
        self.inner.hub.lock().expect("channel hub").metrics.domain(&key.0).published.inc();
        Ok(position)
    }

    /// A pin for `Since::Now` on a copy the hub cannot resolve it against
    /// (still loading, or not held yet): resolving `now` when the load ends
    /// would skip whatever other nodes publish meanwhile (a slow load of a
    /// long history, a publish right after this subscribe). So `now` is
    /// pinned to the stream's sequence, read at most a moment before the
    /// call (see `Nats::recent_sequence`), and the hub starts the
    /// subscriber after the last publication at or below it. If NATS does
    /// not answer in time, `now` starts where the copy's load ends.
    async fn pin_now(&self) -> Start {
        let Transport::Nats(nats) = &self.inner.transport else { return Start::NowUnpinned };
        match nats.recent_sequence(self.inner.settings.publish_timeout).await {
            Some(sequence) => Start::NowAt(sequence),
            None => Start::NowUnpinned,
        }
    }

    /// A box's subscriptions, and the receiver its session driver reads.
    pub fn inbox(&self, domain: &str) -> (Inbox, Deliveries) {
        let mailbox = Arc::new(Mailbox::new(self.inner.settings.subscriber_queue));
        let domain: Arc<str> = domain.into();
        let metrics = self.inner.hub.lock().expect("channel hub").metrics.domain(&domain);
        let inbox = Inbox { channels: self.clone(), domain, mailbox: mailbox.clone(), subscribed: HashMap::new() };
        (inbox, Deliveries { mailbox, metrics })
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// A box's subscriptions; dropping it unsubscribes from everything.
pub struct Inbox {
    channels: Channels,
    domain: Arc<str>,
    mailbox: Arc<Mailbox>,
    subscribed: HashMap<Arc<str>, u64>,
}

impl Inbox {
    /// Subscribes from `since`; subscribing again to a topic restarts it
    /// from the new `since`. Through NATS, `now` for a topic the node has
    /// not loaded yet may wait for NATS to say where the stream is (see
    /// `Channels::pin_now`), at most as long as a publish may.
    pub async fn subscribe(&mut self, topic: &str, since: Since) -> Result<(), ChannelError> {
        check_topic(topic).map_err(|_| ChannelError::BadTopic)?;
        let replacing = self.subscribed.get(topic).copied();
        if replacing.is_none() && self.subscribed.len() >= self.channels.inner.settings.max_subscriptions_per_box {
            return Err(ChannelError::TooManySubscriptions);
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key: TopicKey = (self.domain.clone(), topic.into());
        let inner = self.channels.inner.clone();
        let mut start = Start::Since(since);
        loop {
            // Refused only for a new topic (too many): nothing was replaced.
            let subscribed = inner.hub.lock().expect("channel hub").subscribe(&key, id, self.mailbox.clone(), start, replacing, inner.now_ms())?;
            match subscribed {
                Subscribed::NeedsPin => start = self.channels.pin_now().await,
                Subscribed::StartWatch(generation) => {
                    if let Transport::Nats(nats) = &inner.transport {
                        nats.watch(key.clone(), generation, Arc::downgrade(&inner));
                    }
                    break;
                }
                Subscribed::Done => break,
            }
        }
        self.subscribed.insert(key.1, id);
        Ok(())
    }

    /// Returns whether the box was subscribed to `topic`.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let Some((name, id)) = self.subscribed.remove_entry(topic) else { return false };
        self.channels.inner.hub.lock().expect("channel hub").unsubscribe(&(self.domain.clone(), name), id);
        self.mailbox.purge(topic);
        true
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.subscribed.keys().map(|t| &**t)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut hub = self.channels.inner.hub.lock().expect("channel hub");
        for (topic, id) in self.subscribed.drain() {
            hub.unsubscribe(&(self.domain.clone(), topic), id);
        }
    }
}

/// What a box's session driver reads: the box's deliveries, in order.
pub struct Deliveries {
    mailbox: Arc<Mailbox>,
    metrics: Arc<DomainChannelMetrics>,
}

impl Deliveries {
    /// The deliveries as they arrive, in order: a stream that waits on the
    /// mailbox between them, so a driver that polls it only when woken
    /// (as the session driver does) takes no mailbox lock between them.
    pub fn arrivals(&self) -> impl futures_util::Stream<Item = Delivery> + Send + 'static {
        futures_util::stream::unfold(self.mailbox.clone(), |mailbox| async move { Some((mailbox.next().await, mailbox)) })
    }

    /// Counts a delivery the box's hook has taken.
    pub fn delivered(&self, delivery: &Delivery) {
        self.metrics.delivered.inc();
        if let Delivery::Message { published, .. } = delivery {
            self.metrics.fan_out.observe(published.elapsed());
        }
    }
}
