//! L2/L3 stream tier messages: the events `stream_dispatch(event, input_len)`
//! delivers to a resident box, and the frame kinds it sends back.
//!
//! | event | code | input |
//! |---|---|---|
//! | connect | 1 | `stream: str, session: u64, path: str, query: str` |
//! | message | 2 | `kind: u8, bytes: bytes` |
//! | close | 3 | `code: u32, reason: str` |
//! | disconnect | 4 | `reason: str` |
//! | channel | 5 | a [`ChannelEvent`](crate::channel::ChannelEvent): a message or a resync of a subscribed topic |

use crate::channel::ChannelEvent;
#[cfg(feature = "alloc")]
use crate::codec::Writer;
use crate::codec::{DecodeError, Reader};
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

/// So a hook returning `Result<(), SendError>` can pass a failed send on with `?`.
impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SendError::QueueFull => "the session's outbound queue is full (slow client); the frame was dropped",
            SendError::TooLarge => "the frame is over the session's frame size limit",
            SendError::Closed => "the session is closing or closed",
            SendError::BadKind => "unknown frame kind",
        })
    }
}

impl core::error::Error for SendError {}

/// Session close codes the host uses. They travel as the application error
/// code of the closing connection, next to a UTF-8 reason. Guests close with
/// their own codes; `0x1000..=0x10ff` is reserved for the host.
pub mod close_code {
    /// Closed normally (by the client, the guest, or a drained node).
    pub const NORMAL: u32 = 0;
    /// The box trapped, ran past its deadline or hit its memory cap.
    pub const GUEST_FAULT: u32 = 0x1001;
    /// An inbound frame was larger than the session's frame limit.
    pub const FRAME_TOO_LARGE: u32 = 0x1002;
    /// The client sent bytes that are not a valid frame sequence.
    pub const MALFORMED_FRAME: u32 = 0x1003;
    /// The client did not read the box's frames in time (outbound stall).
    pub const CLIENT_TOO_SLOW: u32 = 0x1004;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 0x1005;
    /// The domain was redeployed and the session outlived the drain timeout.
    pub const REDEPLOYED: u32 = 0x1006;
    /// Dev mode reloaded the app after a source change.
    pub const RELOADED: u32 = 0x1007;
    /// The reserved range.
    pub const HOST_RESERVED: core::ops::RangeInclusive<u32> = 0x1000..=0x10ff;
}

/// Length-delimited framing of stream-kind frames on a WebTransport
/// bidirectional stream: each frame is a 4-byte big-endian length followed by
/// that many bytes. A datagram carries exactly one frame and needs no header.
pub mod framing {
    /// Bytes of the length prefix.
    pub const HEADER_LEN: usize = 4;

    /// The prefix for a frame of `len` bytes.
    pub const fn header(len: u32) -> [u8; HEADER_LEN] {
        len.to_be_bytes()
    }

    /// Why a byte sequence is not a valid frame sequence.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FramingError {
        /// A frame announced more bytes than the limit.
        TooLarge { len: usize, max: usize },
        /// The stream ended inside a frame.
        Truncated { missing: usize },
    }

    impl core::fmt::Display for FramingError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                FramingError::TooLarge { len, max } => {
                    write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
                }
                FramingError::Truncated { missing } => {
                    write!(f, "stream ended {missing} bytes short of a frame")
                }
            }
        }
    }

    /// Incremental decoder: feed it whatever arrived, take whole frames out.
    /// It never buffers more than one frame (header + `max` bytes).
    #[cfg(feature = "alloc")]
    #[derive(Debug)]
    pub struct FrameDecoder {
        max: usize,
        buf: alloc::vec::Vec<u8>,
        want: Option<usize>,
    }

    #[cfg(feature = "alloc")]
    impl FrameDecoder {
        pub fn new(max_frame: usize) -> Self {
            FrameDecoder { max: max_frame, buf: alloc::vec::Vec::new(), want: None }
        }

        /// Consumes bytes from `input` until a frame is complete (returned) or
        /// `input` is exhausted (`Ok(None)`). Call again with the rest of
        /// `input` (it is advanced past what was consumed).
        pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<alloc::vec::Vec<u8>>, FramingError> {
            loop {
                let need = match self.want {
                    None => HEADER_LEN,
                    Some(len) => len,
                };
                let take = (need - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..take]);
                *input = &input[take..];
                if self.buf.len() < need {
                    return Ok(None);
                }
                match self.want {
                    None => {
                        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                        if len > self.max {
                            return Err(FramingError::TooLarge { len, max: self.max });
                        }
                        self.buf.clear();
                        self.buf.reserve_exact(len);
                        self.want = Some(len);
                    }
                    Some(_) => {
                        self.want = None;
                        return Ok(Some(core::mem::take(&mut self.buf)));
                    }
                }
            }
        }

        /// Checks that the stream ended on a frame boundary.
        pub fn finish(&self) -> Result<(), FramingError> {
            let missing = match self.want {
                None if self.buf.is_empty() => return Ok(()),
                None => HEADER_LEN - self.buf.len(),
                Some(len) => len - self.buf.len(),
            };
            Err(FramingError::Truncated { missing })
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
    Channel(ChannelEvent<'a>),
}

impl<'a> StreamEvent<'a> {
    pub fn decode(event: i32, buf: &'a [u8]) -> Result<Self, DecodeError> {
        if event == CHANNEL {
            return ChannelEvent::decode(buf).map(StreamEvent::Channel);
        }
        let mut r = Reader::new(buf);
        let ev = match event {
            CONNECT => StreamEvent::Connect { stream: r.str()?, session: r.u64()?, path: r.str()?, query: r.str()? },
            MESSAGE => {
                let kind = FrameKind::from_u8(r.u8()?).ok_or(DecodeError::Invalid("frame kind"))?;
                StreamEvent::Message { kind, bytes: r.bytes()? }
            }
            CLOSE => StreamEvent::Close { code: r.u32()?, reason: r.str()? },
            DISCONNECT => StreamEvent::Disconnect { reason: r.str()? },
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
            StreamEvent::Channel(ev) => return (CHANNEL, ev.encode()),
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
            StreamEvent::Channel(ChannelEvent::Message { topic: "room", offset: 3, epoch: "e", bytes: b"x" }),
            StreamEvent::Channel(ChannelEvent::Resync { topic: "room", offset: 3, epoch: "e", reason: "evicted" }),
        ];
        for ev in events {
            let (code, buf) = ev.encode();
            assert_eq!(StreamEvent::decode(code, &buf), Ok(ev));
        }
        assert!(StreamEvent::decode(99, &[]).is_err());
        assert_eq!(StreamEvent::decode(MESSAGE, &[7, 0, 0, 0, 0]), Err(DecodeError::Invalid("frame kind")));
    }

    #[test]
    fn frames_split_anywhere_decode_whole() {
        use framing::*;
        let mut wire = alloc::vec::Vec::new();
        for f in [&b"hello"[..], b"", b"x"] {
            wire.extend_from_slice(&header(f.len() as u32));
            wire.extend_from_slice(f);
        }
        for chunk in 1..wire.len() {
            let mut d = FrameDecoder::new(16);
            let mut out = alloc::vec::Vec::new();
            for mut piece in wire.chunks(chunk) {
                while let Some(f) = d.decode(&mut piece).unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, [&b"hello"[..], b"", b"x"]);
            d.finish().unwrap();
        }
        let mut d = FrameDecoder::new(4);
        let mut big = &[0u8, 0, 0, 5, 1][..];
        assert_eq!(d.decode(&mut big), Err(FramingError::TooLarge { len: 5, max: 4 }));
        let mut d = FrameDecoder::new(4);
        let mut part = &[0u8, 0, 0, 3, 1][..];
        assert_eq!(d.decode(&mut part), Ok(None));
        assert_eq!(d.finish(), Err(FramingError::Truncated { missing: 2 }));
    }
}
