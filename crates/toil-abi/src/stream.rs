//! L2/L3 stream tier messages: the events `stream_dispatch(event, input_len)`
//! delivers to a resident box, and the frame kinds it sends back.
//!
//! | event | code | input |
//! |---|---|---|
//! | connect | 1 | `stream: str, session: u64, path: str, query: str` |
//! | message | 2 | `kind: u8, bytes: bytes` |
//! | close | 3 | `code: u32, reason: str` |
//! | disconnect | 4 | `reason: str` |
//! | channel | 5 | `channel: str, bytes: bytes` |

use crate::codec::{DecodeError, Reader};
#[cfg(feature = "alloc")]
use crate::codec::Writer;
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

pub const CONNECT: i32 = 1;
pub const MESSAGE: i32 = 2;
pub const CLOSE: i32 = 3;
pub const DISCONNECT: i32 = 4;
pub const CHANNEL: i32 = 5;

/// How a frame travels: on a bidirectional stream as a length-delimited
/// frame (reliable, ordered), or as one QUIC datagram (unreliable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Stream = 0,
    Datagram = 1,
}

impl FrameKind {
    pub const fn from_u8(v: u8) -> Option<FrameKind> {
        match v {
            0 => Some(FrameKind::Stream),
            1 => Some(FrameKind::Datagram),
            _ => None,
        }
    }
}

/// Negative results of `stream_send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum SendError {
    /// The session's outbound queue is full (the client is slow); the frame was dropped.
    QueueFull = -1,
    /// The frame exceeds the session's maximum frame size.
    TooLarge = -2,
    /// The session is closing or closed.
    Closed = -3,
    /// Unknown frame kind.
    BadKind = -4,
}

impl SendError {
    pub const fn from_code(code: i32) -> Option<SendError> {
        match code {
            -1 => Some(SendError::QueueFull),
            -2 => Some(SendError::TooLarge),
            -3 => Some(SendError::Closed),
            -4 => Some(SendError::BadKind),
            _ => None,
        }
    }
}

/// A decoded stream event, borrowing the input buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    Connect { stream: &'a str, session: u64, path: &'a str, query: &'a str },
    Message { kind: FrameKind, bytes: &'a [u8] },
    Close { code: u32, reason: &'a str },
    Disconnect { reason: &'a str },
    Channel { channel: &'a str, bytes: &'a [u8] },
}

impl<'a> StreamEvent<'a> {
    pub fn decode(event: i32, buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let ev = match event {
            CONNECT => StreamEvent::Connect { stream: r.str()?, session: r.u64()?, path: r.str()?, query: r.str()? },
            MESSAGE => {
                let kind = FrameKind::from_u8(r.u8()?).ok_or(DecodeError::Invalid("frame kind"))?;
                StreamEvent::Message { kind, bytes: r.bytes()? }
            }
            CLOSE => StreamEvent::Close { code: r.u32()?, reason: r.str()? },
            DISCONNECT => StreamEvent::Disconnect { reason: r.str()? },
            CHANNEL => StreamEvent::Channel { channel: r.str()?, bytes: r.bytes()? },
            _ => return Err(DecodeError::Invalid("stream event code")),
        };
        r.finish()?;
        Ok(ev)
    }

    /// Encodes the event (host side); returns the event code and the input bytes.
    #[cfg(feature = "alloc")]
    pub fn encode(&self) -> (i32, Vec<u8>) {
        let mut w = Writer::default();
        let code = match self {
            StreamEvent::Connect { stream, session, path, query } => {
                w.str(stream).u64(*session).str(path).str(query);
                CONNECT
            }
            StreamEvent::Message { kind, bytes } => {
                w.u8(*kind as u8).bytes(bytes);
                MESSAGE
            }
            StreamEvent::Close { code, reason } => {
                w.u32(*code).str(reason);
                CLOSE
            }
            StreamEvent::Disconnect { reason } => {
                w.str(reason);
                DISCONNECT
            }
            StreamEvent::Channel { channel, bytes } => {
                w.str(channel).bytes(bytes);
                CHANNEL
            }
        };
        (code, w.into_vec())
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let events = [
            StreamEvent::Connect { stream: "echo", session: 9, path: "/echo", query: "a=1" },
            StreamEvent::Message { kind: FrameKind::Datagram, bytes: b"hi" },
            StreamEvent::Close { code: 4000, reason: "bye" },
            StreamEvent::Disconnect { reason: "idle timeout" },
            StreamEvent::Channel { channel: "room", bytes: b"x" },
        ];
        for ev in events {
            let (code, buf) = ev.encode();
            assert_eq!(StreamEvent::decode(code, &buf), Ok(ev));
        }
        assert!(StreamEvent::decode(99, &[]).is_err());
        assert_eq!(StreamEvent::decode(MESSAGE, &[7, 0, 0, 0, 0]), Err(DecodeError::Invalid("frame kind")));
    }
}
