//! The cluster transport: NATS JetStream.
//!
//! One JetStream stream, `TOIL_CHANNELS`, captures `toil.ch.>`. A topic is
//! the subject `toil.ch.<domain>.<topic>` (each part escaped to one subject
//! token), and the stream keeps `historySize` messages per subject for at
//! most `historyTtlMs` (`MaxMsgsPerSubject`, `MaxAge`).
//!
//! JetStream numbers messages stream-wide, not per subject, so a publisher
//! numbers them itself: it reads the subject's last message (cached after
//! its own publishes), and publishes the next offset of that message's
//! epoch with `Nats-Expected-Last-Subject-Sequence` set to that message's
//! stream sequence. The server refuses the publish if another node
//! published in between, and the publisher reads again and retries. Each
//! message carries its `Toil-Offset` and `Toil-Epoch` headers; a subject
//! with no message left (never used, or all expired or wiped) starts a new
//! epoch at offset 1, so offsets of a lost history are never reused.
//!
//! A node keeps a copy of each topic its boxes subscribe to (see the hub),
//! fed by one ordered consumer on that subject: it first replays the kept
//! messages, then follows live ones. A consumer that fails (a delivery
//! missed, NATS restarts, the connection drops) is recreated from the
//! stream sequence after the last one the copy took, so the copy loses
//! nothing the stream still keeps and the hub drops anything seen twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use toil_abi::channel::{ChannelError, Position};
use tokio::sync::watch;

use crate::hub::{new_epoch, TopicKey};
use crate::{ChannelSettings, Inner};

const STREAM: &str = "TOIL_CHANNELS";
const SUBJECTS: &str = "toil.ch.>";
const OFFSET: &str = "Toil-Offset";
const EPOCH: &str = "Toil-Epoch";
/// Publish attempts when other nodes keep winning the race for the next offset.
const PUBLISH_ATTEMPTS: usize = 8;
/// Cached last positions kept for publishing, before the cache is reset.
const MAX_CACHED_TOPICS: usize = 10_000;

pub(crate) struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Counts the connections to NATS made so far; followers start over
    /// when it moves (a restarted server has lost their consumers).
    connections: watch::Receiver<u64>,
    /// Per subject: the last message's stream sequence and position, as this
    /// node last saw it.
    last: Mutex<HashMap<String, (u64, Position)>>,
    /// Makes every publication's `Nats-Msg-Id` unique across nodes and restarts.
    publisher: String,
    /// The last reading of the stream's sequence (`None`: it failed), and when.
    sequence: tokio::sync::Mutex<Option<(std::time::Instant, Option<u64>)>>,
    published: AtomicU64,
}

/// The last message of a subject: its stream sequence and, if it is a
/// channel publication (it carries our headers), its position.
type Last = Option<(u64, Option<Position>)>;

/// How long a reading of the stream's sequence serves as `now` for new
/// subscribers. An older reading is still a safe `now` (it can only add
/// publications from just before the call, never lose one after it), and
/// reusing it keeps a burst of subscribes to one request.
const SEQUENCE_REUSE: Duration = Duration::from_millis(250);

/// How long one JetStream request (or publish acknowledgement) may take;
/// a publish retries within its own deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

impl Nats {
    pub async fn connect(url: &str, settings: &ChannelSettings) -> anyhow::Result<Nats> {
        let (connected, connections) = watch::channel(0u64);
        let options = async_nats::ConnectOptions::new()
            .name("toil")
            .connection_timeout(Duration::from_secs(2))
            // A restarted server is found again within half a second.
            .reconnect_delay_callback(|attempt| Duration::from_millis((attempt as u64 * 50).min(500)))
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("channels: connected to NATS");
                            connected.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => tracing::warn!("channels: lost NATS; publishes fail as Unavailable until it is back"),
                        other => tracing::debug!("channels: NATS {other}"),
                    }
                }
            });
        let client = options.connect(url).await.map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
        let js = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECTS.into()],
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: settings.history_size as i64,
            max_age: settings.history_ttl,
            ..Default::default()
        };
        js.create_or_update_stream(config)
            .await
            .map_err(|e| anyhow::anyhow!("NATS at {url} refused the {STREAM} JetStream stream: {e} (is nats-server started with -js?)"))?;
        let sequence = tokio::sync::Mutex::new(None);
        Ok(Nats { client, js, connections, last: Mutex::new(HashMap::new()), publisher: new_epoch(), sequence, published: AtomicU64::new(0) })
    }

    /// Publishes the next offset of the topic; returns once JetStream stored
    /// it. The caller bounds the wait; dropped early, the publication may
    /// still be stored (its position then belongs to no acknowledged publish).
    pub async fn publish(&self, key: &TopicKey, bytes: Bytes) -> Result<Position, ChannelError> {
        let subject = subject(key);
        let mut known: Option<Last> = self.last.lock().expect("nats cache").get(&subject).cloned().map(|(seq, p)| Some((seq, Some(p))));
        for _ in 0..PUBLISH_ATTEMPTS {
            let last = match known.take() {
                Some(last) => last,
                None => read_last(&self.js, &subject).await?,
            };
            let (expected, next) = match last {
                Some((seq, Some(p))) => (seq, Position { offset: p.offset + 1, epoch: p.epoch }),
                // A message that is not a channel publication: a new epoch after it.
                Some((seq, None)) => (seq, Position { offset: 1, epoch: new_epoch() }),
                None => (0, Position { offset: 1, epoch: new_epoch() }),
            };
            let id = format!("{}-{}", self.publisher, self.published.fetch_add(1, Ordering::Relaxed));
            match self.send(&subject, &id, expected, &next, &bytes).await {
                Ok(sequence) => {
                    let mut cache = self.last.lock().expect("nats cache");
                    if cache.len() >= MAX_CACHED_TOPICS {
                        cache.clear();
                    }
                    cache.insert(subject, (sequence, next.clone()));
                    return Ok(next);
                }
                Err(Sent::Raced) => {} // another node published first: read again
                Err(Sent::Failed) => {
                    self.last.lock().expect("nats cache").remove(&subject);
                    return Err(ChannelError::Unavailable);
                }
            }
        }
        Err(ChannelError::Unavailable)
    }

    /// Sends one publication; an acknowledgement that times out is asked
    /// for again with the same message id, which JetStream answers from its
    /// duplicate window if the first attempt was stored.
    async fn send(&self, subject: &str, id: &str, expected: u64, at: &Position, bytes: &Bytes) -> Result<u64, Sent> {
        loop {
            let message = PublishMessage::build()
                .payload(bytes.clone())
                .header(OFFSET, at.offset.to_string().as_str())
                .header(EPOCH, at.epoch.as_str())
                .message_id(id)
                .expected_last_subject_sequence(expected);
            let ack = match self.js.send_publish(subject.to_string(), message).await {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Err(Sent::Raced),
                Err(e) if e.kind() == PublishErrorKind::TimedOut => {
                    tracing::debug!(subject, "channel publish not acknowledged yet; asking again");
                }
                Err(e) => {
                    tracing::debug!(subject, "channel publish failed: {e}");
                    return Err(Sent::Failed);
                }
            }
        }
    }

    /// The stream's last sequence, read no earlier than [`SEQUENCE_REUSE`]
    /// ago: every publication stored after the reading, to any topic, has a
    /// higher one. One small request (stream info), whatever the size of
    /// the topics' messages, shared by the subscribes that need it at once.
    /// `None` when NATS did not answer within `wait` (or did not a moment
    /// ago: subscribes during an outage do not each wait).
    pub async fn recent_sequence(&self, wait: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut reading = tokio::time::timeout_at(deadline, self.sequence.lock()).await.ok()?;
        if let Some((at, sequence)) = *reading {
            if at.elapsed() < SEQUENCE_REUSE {
                return sequence;
            }
        }
        let sequence = match tokio::time::timeout_at(deadline, self.js.get_stream(STREAM)).await {
            Ok(Ok(stream)) => Some(stream.cached_info().state.last_sequence),
            Ok(Err(e)) => {
                tracing::warn!("channels: cannot read the {STREAM} stream's sequence ({e}); `now` subscribers start where their node's copy loads");
                None
            }
            Err(_) => {
                tracing::warn!("channels: NATS did not give the {STREAM} stream's sequence within {wait:?}; `now` subscribers start where their node's copy loads");
                None
            }
        };
        *reading = Some((std::time::Instant::now(), sequence));
        sequence
    }

    /// Starts the consumer that feeds the node's copy of `key`; it stops
    /// when the hub drops the copy (or the channels go).
    pub fn watch(&self, key: TopicKey, generation: u64, inner: Weak<Inner>) {
        let follower = Follower { key: key.clone(), generation, inner: inner.clone(), next_sequence: None, loaded: false };
        let task = tokio::spawn(follow(self.client.clone(), self.js.clone(), self.connections.clone(), follower));
        let Some(strong) = inner.upgrade() else { return task.abort() };
        let kept = strong.hub.lock().expect("channel hub").set_watch(&key, generation, Box::new(AbortOnDrop(task.abort_handle())));
        if !kept {
            task.abort();
        }
    }
}

/// The subject's last message, read from the stream.
async fn read_last(js: &jetstream::Context, subject: &str) -> Result<Last, ChannelError> {
    let stream = js.get_stream_no_info(STREAM).await.map_err(|_| ChannelError::Unavailable)?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some((message.sequence, position(&message.headers)))),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => {
            tracing::debug!(subject, "cannot read a channel's last message: {e}");
            Err(ChannelError::Unavailable)
        }
    }
}

enum Sent {
    /// `Nats-Expected-Last-Subject-Sequence` did not match.
    Raced,
    Failed,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often NATS says it is there on an idle consumer; after two silent
/// periods the follower starts over.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A heartbeat's header naming the flow-control reply a stalled consumer waits for.
const CONSUMER_STALLED: &str = "Nats-Consumer-Stalled";

/// Feeds the hub's copy of one topic: its kept history, then live
/// messages, for as long as the copy exists. Whenever the feed breaks (a
/// delivery missed, NATS silent, a reconnection: a restarted server has
/// lost the consumer) it starts a new consumer from the message after the
/// last one taken.
async fn follow(client: async_nats::Client, js: jetstream::Context, mut connections: watch::Receiver<u64>, mut follower: Follower) {
    let subject = subject(&follower.key);
    let mut backoff = Duration::from_millis(50);
    loop {
        let before = follower.next_sequence;
        match follower.follow_once(&client, &js, &mut connections, &subject).await {
            Ok(()) => return, // the channels are gone
            Err(e) => {
                let Some(strong) = follower.inner.upgrade() else { return };
                strong.hub.lock().expect("channel hub").metrics.transport_errors[1].inc();
                drop(strong);
                tracing::warn!(subject, "channel subscription interrupted, resuming: {e}");
                if follower.next_sequence != before {
                    backoff = Duration::from_millis(50); // it had got going again
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

struct Follower {
    key: TopicKey,
    /// The hub's copy this follower feeds.
    generation: u64,
    inner: Weak<Inner>,
    /// The stream sequence after the last message taken.
    next_sequence: Option<u64>,
    loaded: bool,
}

impl Follower {
    /// One ordered push consumer, run by hand: async-nats' own ordered
    /// consumers either ignore the server's "stalled" heartbeats (push: its
    /// flow control then stalls for good on large messages) or take 30 s to
    /// notice a lost server (pull). Returns `Ok` when the channels are gone.
    async fn follow_once(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        connections: &mut watch::Receiver<u64>,
        subject: &str,
    ) -> anyhow::Result<()> {
        connections.mark_unchanged();
        let stream = js.get_stream_no_info(STREAM).await?;
        // The load ends when JetStream counts nothing pending, or at the
        // subject's last message as it stands now: nats-server 2.9 keeps
        // counting messages the subject's limit dropped during the load as
        // pending, so the count alone may never reach zero.
        let last = match self.loaded {
            true => None,
            false => {
                read_last(js, subject).await.map_err(|e| anyhow::anyhow!("reading the topic's last message: {e}"))?.map(|(sequence, _)| sequence)
            }
        };
        let deliver_policy = match self.next_sequence {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => consumer::DeliverPolicy::All,
        };
        // Subscribed before the consumer exists, so no delivery goes unheard.
        let inbox = client.new_inbox();
        let mut deliveries = client.subscribe(inbox.clone()).await?;
        let config = consumer::push::Config {
            deliver_subject: inbox,
            filter_subject: subject.to_string(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            max_deliver: 1,
            flow_control: true,
            idle_heartbeat: HEARTBEAT,
            // Gone soon after this subscription is (the server sees no interest).
            inactive_threshold: 6 * HEARTBEAT,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await?;
        let pending = consumer.cached_info().num_pending;
        tracing::debug!(subject, from_sequence = ?self.next_sequence, pending, ?last, loaded = self.loaded, "channels: following a topic");
        if pending == 0 || last.is_none_or(|last| self.next_sequence.is_some_and(|next| next > last)) {
            self.loaded_now();
        }
        let taken = self.take(client, js, &mut deliveries, connections, last).await;
        if taken.is_err() {
            // Best effort: the server would drop it once idle anyway.
            let _ = stream.delete_consumer(&consumer.cached_info().name).await;
        }
        taken
    }

    /// Takes the consumer's deliveries into the hub's copy, in order, until
    /// one is missed or NATS goes quiet or comes back.
    async fn take(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        deliveries: &mut async_nats::Subscriber,
        connections: &mut watch::Receiver<u64>,
        last: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut delivered = 0; // the consumer's own sequence
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout(2 * HEARTBEAT, deliveries.next()) => match message {
                    Ok(Some(message)) => message,
                    Ok(None) => anyhow::bail!("the consumer's subscription ended"),
                    Err(_) => anyhow::bail!("no heartbeat from NATS for {:?}", 2 * HEARTBEAT),
                },
                changed = connections.changed() => match changed {
                    Ok(()) => anyhow::bail!("reconnected to NATS"),
                    Err(_) => return Ok(()), // the client is gone, and the channels with it
                },
            };
            match message.status {
                None => {}
                Some(async_nats::StatusCode::IDLE_HEARTBEAT) => {
                    // Flow control asks for an answer on its reply subject; a
                    // stalled consumer's heartbeat names the one it still waits for.
                    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
                    if let Some(answer) = message.reply.as_ref().map(|r| r.to_string()).or_else(|| header(CONSUMER_STALLED)) {
                        client.publish(answer, Bytes::new()).await?;
                    }
                    if let Some(last) = header(async_nats::header::NATS_LAST_CONSUMER.as_ref()).and_then(|v| v.parse::<u64>().ok()) {
                        if last != delivered {
                            anyhow::bail!("the consumer delivered {last} messages, {delivered} arrived");
                        }
                    }
                    continue;
                }
                Some(status) => anyhow::bail!("the consumer sent status {status} ({})", message.description.as_deref().unwrap_or("no description")),
            }
            let message = jetstream::Message { message, context: js.clone() };
            let info = message.info().map_err(|e| anyhow::anyhow!("message info: {e}"))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if info.consumer_sequence != delivered + 1 {
                anyhow::bail!("a delivery was missed (got {} after {delivered})", info.consumer_sequence);
            }
            delivered = info.consumer_sequence;
            self.next_sequence = Some(sequence + 1);
            let Some(inner) = self.inner.upgrade() else { return Ok(()) };
            match message.headers.as_ref().and_then(position) {
                Some(at) => {
                    let now = inner.now_ms();
                    inner.hub.lock().expect("channel hub").record(&self.key, self.generation, at, sequence, message.payload.clone(), now);
                }
                None => {
                    tracing::warn!(subject = message.subject.as_str(), sequence, "channel message without Toil-Offset/Toil-Epoch headers skipped")
                }
            }
            if pending == 0 || last.is_some_and(|last| sequence >= last) {
                self.loaded_now();
            }
        }
    }

    fn loaded_now(&mut self) {
        if self.loaded {
            return;
        }
        if let Some(inner) = self.inner.upgrade() {
            let now = inner.now_ms();
            inner.hub.lock().expect("channel hub").loaded(&self.key, self.generation, now);
            tracing::debug!(
                domain = &*self.key.0,
                topic = &*self.key.1,
                next_sequence = self.next_sequence,
                "channels: the node's copy of a topic has loaded"
            );
        }
        self.loaded = true;
    }
}

/// A channel publication's position; offsets start at 1.
fn position(headers: &HeaderMap) -> Option<Position> {
    let offset = headers.get(OFFSET)?.as_str().parse().ok().filter(|&offset| offset > 0)?;
    let epoch = headers.get(EPOCH)?.as_str().to_string();
    Some(Position { offset, epoch })
}

/// The subject of a topic: both parts escaped into single subject tokens.
fn subject(key: &TopicKey) -> String {
    format!("toil.ch.{}.{}", token(&key.0), token(&key.1))
}

/// `A-Z a-z 0-9 - _` stay; every other byte becomes `~XX`, so a token never
/// holds `.`, `*`, `>` or whitespace and different names never collide.
fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_escape_each_part_into_one_token() {
        assert_eq!(subject(&("chat.example.com".into(), "rooms/lobby".into())), "toil.ch.chat~2Eexample~2Ecom.rooms~2Flobby");
        assert_eq!(token("a~b"), "a~7Eb");
        assert_ne!(token("a.b"), token("a~2Eb"));
    }
}
