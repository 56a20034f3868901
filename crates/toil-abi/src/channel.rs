//! Channels: the topic rules, positions, and the wire forms of the channel
//! host calls and of the `channel` stream event.
//!
//! A topic is a domain's named, ordered log. Every publication gets a
//! [`Position`]: an offset, one more than the previous publication's, and
//! the topic's epoch, an opaque string that changes whenever the topic's
//! history is lost, so offsets of different epochs are never compared.
//!
//! | host call | arguments | result |
//! |---|---|---|
//! | `channel_publish` | `topic, bytes, out, out_cap` | bytes of the encoded [`Position`] written to `out`, or a negative [`ChannelError`] |
//! | `channel_subscribe` (stream) | `topic, since` ([`Since`] encoded) | 0, or a negative [`ChannelError`] |
//! | `channel_unsubscribe` (stream) | `topic` | 1 if the box was subscribed, 0 if not |
//!
//! | encoding | layout |
//! |---|---|
//! | [`Position`] | `offset: u64, epoch: str` |
//! | [`Since`] | `0` (now) · `1` (oldest kept) · `2, offset: u64, epoch: str` (after a position) |
//! | `channel` event input | `0, topic: str, offset: u64, epoch: str, bytes: bytes` (message) · `1, topic: str, offset: u64, epoch: str, reason: str` (resync) |
//!
//! After a resync at `(offset, epoch)` the next message of that topic, if
//! any, is `(offset + 1, epoch)`.

#[cfg(feature = "alloc")]
use crate::codec::Writer;
use crate::codec::{DecodeError, Reader};
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;
/// Longest epoch string, in bytes; `channel_publish`'s `out` needs
/// [`POSITION_MAX_LEN`] bytes.
pub const MAX_EPOCH_LEN: usize = 64;
/// Room an encoded [`Position`] can take.
pub const POSITION_MAX_LEN: usize = 8 + 4 + MAX_EPOCH_LEN;

/// Why a topic name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong(usize),
    /// A character outside `A-Z a-z 0-9 - _ . : /`.
    BadChar(char),
    /// A `.` or `/` at either end, or two in a row.
    BadSeparator,
}

impl core::fmt::Display for TopicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TopicError::Empty => f.write_str("a topic name must not be empty"),
            TopicError::TooLong(n) => write!(f, "a topic name is at most {MAX_TOPIC_LEN} bytes, not {n}"),
            TopicError::BadChar(c) => write!(f, "a topic name may use A-Z a-z 0-9 - _ . : / only, not {c:?}"),
            TopicError::BadSeparator => f.write_str("a topic name must not start or end with `.` or `/`, or repeat them"),
        }
    }
}

/// Checks a topic name: 1 to [`MAX_TOPIC_LEN`] bytes of `A-Z a-z 0-9 - _ . : /`,
/// with `.` and `/` only between other characters (`rooms/lobby`, `game.42`).
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(topic.len()));
    }
    let mut last_separator = true;
    for c in topic.chars() {
        let separator = matches!(c, '.' | '/');
        if !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':') || separator) {
            return Err(TopicError::BadChar(c));
        }
        if separator && last_separator {
            return Err(TopicError::BadSeparator);
        }
        last_separator = separator;
    }
    if last_separator {
        return Err(TopicError::BadSeparator);
    }
    Ok(())
}

/// Negative results of the channel host calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ChannelError {
    /// The topic name breaks [`check_topic`]'s rules.
    BadTopic = -1,
    /// The message is over the node's `channels.maxMessageBytes`.
    TooLarge = -2,
    /// The box already has `channels.maxSubscriptionsPerBox` subscriptions.
    TooManySubscriptions = -3,
    /// The domain already has `channels.maxTopicsPerDomain` topics.
    TooManyTopics = -4,
    /// The channel transport (NATS) did not acknowledge the publication in
    /// time; it has no position (though NATS may still deliver it).
    Unavailable = -5,
    /// The call's arguments were malformed (ABI misuse), or `out` too small.
    BadArgument = -6,
    /// This node has no channels: a cluster node without `channels.nats`.
    Disabled = -7,
}

impl ChannelError {
    pub const fn from_code(code: i32) -> Option<ChannelError> {
        match code {
            -1 => Some(ChannelError::BadTopic),
            -2 => Some(ChannelError::TooLarge),
            -3 => Some(ChannelError::TooManySubscriptions),
            -4 => Some(ChannelError::TooManyTopics),
            -5 => Some(ChannelError::Unavailable),
            -6 => Some(ChannelError::BadArgument),
            -7 => Some(ChannelError::Disabled),
            _ => None,
        }
    }
}

impl core::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ChannelError::BadTopic => "bad topic name (1 to 128 bytes of A-Z a-z 0-9 - _ . : /)",
            ChannelError::TooLarge => "the message is over the node's channel message size limit",
            ChannelError::TooManySubscriptions => "the box is at its subscription limit",
            ChannelError::TooManyTopics => "the domain is at its topic limit",
            ChannelError::Unavailable => "the channel transport is unavailable; the publication was not acknowledged",
            ChannelError::BadArgument => "malformed channel call arguments",
            ChannelError::Disabled => "channels are off on this node (a cluster node needs channels.nats in toilconfig.json)",
        })
    }
}

impl core::error::Error for ChannelError {}

/// Where a publication sits in its topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg(feature = "alloc")]
pub struct Position {
    pub offset: u64,
    pub epoch: alloc::string::String,
}

#[cfg(feature = "alloc")]
impl Position {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.offset).str(&self.epoch);
        w.into_vec()
    }

    pub fn decode(buf: &[u8]) -> Result<Position, DecodeError> {
        let mut r = Reader::new(buf);
        let position = Position { offset: r.u64()?, epoch: r.str()?.into() };
        r.finish()?;
        Ok(position)
    }
}

/// Where a subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg(feature = "alloc")]
pub enum Since {
    /// Live: nothing stored after the subscribe call is missed (a few
    /// publications from just before it may arrive too).
    Now,
    /// With the oldest publication the topic still keeps.
    Oldest,
    /// With the publication after this position: a resume. A position the
    /// topic no longer keeps, or of another epoch, gets one resync instead.
    After(Position),
}

#[cfg(feature = "alloc")]
impl Since {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Since::Now => w.u8(0),
            Since::Oldest => w.u8(1),
            Since::After(p) => w.u8(2).u64(p.offset).str(&p.epoch),
        };
        w.into_vec()
    }

    pub fn decode(buf: &[u8]) -> Result<Since, DecodeError> {
        let mut r = Reader::new(buf);
        let since = match r.u8()? {
            0 => Since::Now,
            1 => Since::Oldest,
            2 => Since::After(Position { offset: r.u64()?, epoch: r.str()?.into() }),
            _ => return Err(DecodeError::Invalid("subscription start")),
        };
        r.finish()?;
        Ok(since)
    }
}

/// `None` starts with the next publication, `Some(position)` resumes after it.
#[cfg(feature = "alloc")]
impl From<Option<Position>> for Since {
    fn from(position: Option<Position>) -> Since {
        position.map_or(Since::Now, Since::After)
    }
}

#[cfg(feature = "alloc")]
impl From<Position> for Since {
    fn from(position: Position) -> Since {
        Since::After(position)
    }
}

/// The input of a `channel` stream event, borrowing the input buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEvent<'a> {
    /// A publication, in offset order.
    Message { topic: &'a str, offset: u64, epoch: &'a str, bytes: &'a [u8] },
    /// The box missed publications (its position was evicted or of another
    /// epoch, its queue overflowed, or the topic's history was lost); it is
    /// now at `(offset, epoch)` and should re-read its state from its source
    /// of truth. `reason` says which.
    Resync { topic: &'a str, offset: u64, epoch: &'a str, reason: &'a str },
}

impl<'a> ChannelEvent<'a> {
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let ev = match r.u8()? {
            0 => ChannelEvent::Message { topic: r.str()?, offset: r.u64()?, epoch: r.str()?, bytes: r.bytes()? },
            1 => ChannelEvent::Resync { topic: r.str()?, offset: r.u64()?, epoch: r.str()?, reason: r.str()? },
            _ => return Err(DecodeError::Invalid("channel event kind")),
        };
        r.finish()?;
        Ok(ev)
    }

    #[cfg(feature = "alloc")]
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front, as a stream frame's event is.
        let mut w = match self {
            ChannelEvent::Message { topic, epoch, bytes, .. } => Writer::with_capacity(1 + 4 + topic.len() + 8 + 4 + epoch.len() + 4 + bytes.len()),
            ChannelEvent::Resync { .. } => Writer::default(),
        };
        match self {
            ChannelEvent::Message { topic, offset, epoch, bytes } => w.u8(0).str(topic).u64(*offset).str(epoch).bytes(bytes),
            ChannelEvent::Resync { topic, offset, epoch, reason } => w.u8(1).str(topic).u64(*offset).str(epoch).str(reason),
        };
        w.into_vec()
    }

    pub fn topic(&self) -> &'a str {
        match self {
            ChannelEvent::Message { topic, .. } | ChannelEvent::Resync { topic, .. } => topic,
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        for good in ["lobby", "rooms/lobby", "game.42", "a:b-c_d", "x"] {
            assert_eq!(check_topic(good), Ok(()), "{good}");
        }
        assert_eq!(check_topic(""), Err(TopicError::Empty));
        assert_eq!(check_topic(&"a".repeat(129)), Err(TopicError::TooLong(129)));
        assert_eq!(check_topic(&"a".repeat(128)), Ok(()));
        assert_eq!(check_topic("a b"), Err(TopicError::BadChar(' ')));
        assert_eq!(check_topic("a*"), Err(TopicError::BadChar('*')));
        assert_eq!(check_topic("a>"), Err(TopicError::BadChar('>')));
        assert_eq!(check_topic("é"), Err(TopicError::BadChar('é')));
        for bad in [".a", "a.", "a..b", "/a", "a/", "a/.b"] {
            assert_eq!(check_topic(bad), Err(TopicError::BadSeparator), "{bad}");
        }
    }

    #[test]
    fn codecs_round_trip() {
        let p = Position { offset: 42, epoch: "e1".into() };
        assert_eq!(Position::decode(&p.encode()), Ok(p.clone()));
        assert!(p.encode().len() <= POSITION_MAX_LEN);
        for since in [Since::Now, Since::Oldest, Since::After(p)] {
            assert_eq!(Since::decode(&since.encode()), Ok(since));
        }
        assert_eq!(Since::decode(&[3]), Err(DecodeError::Invalid("subscription start")));
        for ev in [
            ChannelEvent::Message { topic: "t", offset: 1, epoch: "e", bytes: b"hi" },
            ChannelEvent::Resync { topic: "t", offset: 9, epoch: "e", reason: "evicted" },
        ] {
            assert_eq!(ChannelEvent::decode(&ev.encode()), Ok(ev.clone()));
            assert_eq!(ev.topic(), "t");
        }
        for code in -7..=-1 {
            assert_eq!(ChannelError::from_code(code).map(|e| e as i32), Some(code));
        }
    }
}
