//! Channels: publish to a topic of your domain from any tier, and receive a
//! topic's publications in a stream box.
//!
//! ```
//! use toil::prelude::*;
//!
//! // From a request handler or a daemon task:
//! fn announce(text: &str) -> Result<Position, ChannelError> {
//!     toil::channel::publish("lobby", text.as_bytes())
//! }
//!
//! // In a stream box: subscribe in a hook, receive in `#[channel]`.
//! #[derive(Default)]
//! struct Room;
//! #[toil::stream("room")]
//! impl Room {
//!     #[connect]
//!     fn connect(&mut self, cx: &mut Session) -> Result<(), ChannelError> {
//!         cx.subscribe("lobby", Since::Oldest)
//!     }
//!     #[channel]
//!     fn channel(&mut self, cx: &mut Session, event: ChannelEvent<'_>) -> Result<(), SendError> {
//!         match event {
//!             ChannelEvent::Message { bytes, .. } => cx.send(bytes),
//!             ChannelEvent::Resync { .. } => cx.send(b"(missed some messages)"),
//!         }
//!     }
//! }
//! # toil::export! { stream: [Room] }
//! ```
//!
//! Every publication of a topic gets the next offset of the topic's epoch;
//! a box receives a topic's messages in that order, each once, its own
//! publications included (so offsets have no holes). A [`Since::After`] a
//! position resumes with exactly what was missed, or one
//! [`ChannelEvent::Resync`] when the node no longer keeps it. See
//! `docs/channels.md`.

use toil_abi::channel::POSITION_MAX_LEN;
pub use toil_abi::channel::{check_topic, ChannelError, ChannelEvent, Position, Since, TopicError};

/// Publishes `bytes` to `topic` of this app's domain; returns its position
/// once the node's channel transport has stored it.
pub fn publish(topic: &str, bytes: &[u8]) -> Result<Position, ChannelError> {
    let mut out = [0u8; POSITION_MAX_LEN];
    let n = crate::host::channel_publish(topic, bytes, &mut out);
    if n < 0 {
        return Err(ChannelError::from_code(n).unwrap_or(ChannelError::Unavailable));
    }
    Position::decode(&out[..n as usize]).map_err(|_| ChannelError::BadArgument)
}

pub(crate) fn subscribe(topic: &str, since: Since) -> Result<(), ChannelError> {
    match crate::host::channel_subscribe(topic, &since.encode()) {
        0 => Ok(()),
        code => Err(ChannelError::from_code(code).unwrap_or(ChannelError::Unavailable)),
    }
}

pub(crate) fn unsubscribe(topic: &str) -> bool {
    crate::host::channel_unsubscribe(topic) == 1
}
