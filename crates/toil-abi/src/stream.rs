//! L2/L3 stream tier messages: the events `stream_dispatch(event, input_len)`
//! delivers to a resident box, and the frame kinds it sends back.
//!
//! | event | code | input |
//! |---|---|---|
//! | connect | 1 | `stream: str, session: u64, path: str, query: str` |
//! | message | 2 | `kind: u8, stream: u32, bytes: bytes` (`stream` is 0 for a datagram) |
//! | close | 3 | `code: u32, reason: str` |
//! | disconnect | 4 | `reason: str` |
//! | channel | 5 | a [`ChannelEvent`](crate::channel::ChannelEvent): a message or a resync of a subscribed topic |
//! | stream_end | 6 | `stream: u32, end: u8, code: u32`: the client finished (0), reset (1) or stopped reading (2) one stream; see [`StreamEnd`] |
//!
//! ## Streams of a session
//!
//! A session carries any number of WebTransport streams besides datagrams.
//! The host names each with a [`StreamId`] (1, 2, 3… in the order the
//! streams appear, never reused in a session), whoever opened it:
//! - the client's bidirectional streams: frames in, and the box may write
//!   back on the same stream; the first one is the session's *primary*
//!   stream, where `stream_send` writes;
//! - the client's unidirectional streams: frames in only;
//! - streams the box opens (`stream_open`): unidirectional (frames out
//!   only) or bidirectional (the client may write back).
//!
//! A box writes a frame to a stream (`stream_write`) and finishes its side
//! of it (`stream_finish`); it hears, through `stream_end`, when the client
//! finished or reset its side, or stopped reading the box's side. A stream
//! is forgotten once both sides are done.

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
pub const STREAM_END: i32 = 6;

/// The host's name for one WebTransport stream of a session: 1, 2, 3… in
/// the order streams appear, whoever opened them; never reused within a
/// session. Frames that arrive as datagrams have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// Which way a stream the box opens carries frames (`stream_open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    /// Frames from the box to the client only.
    Uni = 0,
    /// Both ways: the client may write back on it.
    Bidi = 1,
}

impl Direction {
    pub const fn from_u8(v: u8) -> Option<Direction> {
        match v {
            0 => Some(Direction::Uni),
            1 => Some(Direction::Bidi),
            _ => None,
        }
    }
}

/// What the client did to one side of a stream (the `stream_end` event).
/// Codes are WebTransport application error codes as the client gave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client finished its side cleanly: every frame it sent was delivered.
    Finished,
    /// The client aborted its side; frames it had not completed are lost.
    Reset(u32),
    /// The client stopped reading the box's side: what the box writes to it
    /// now fails with [`SendError::Finished`]; frames in flight may be lost.
    Stopped(u32),
}

impl StreamEnd {
    /// The wire form: `(end, code)`.
    pub const fn to_wire(self) -> (u8, u32) {
        match self {
            StreamEnd::Finished => (0, 0),
            StreamEnd::Reset(code) => (1, code),
            StreamEnd::Stopped(code) => (2, code),
        }
    }

    pub const fn from_wire(end: u8, code: u32) -> Option<StreamEnd> {
        match end {
            0 => Some(StreamEnd::Finished),
            1 => Some(StreamEnd::Reset(code)),
            2 => Some(StreamEnd::Stopped(code)),
            _ => None,
        }
    }
}

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

/// Negative results of `stream_send`, `stream_write`, `stream_finish` and `stream_open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum SendError {
    /// The session's outbound queue is full (the client is slow); the frame was dropped.
    QueueFull = -1,
    /// The frame exceeds the session's maximum frame size.
    TooLarge = -2,
    /// The session is closing or closed.
    Closed = -3,
    /// Unknown frame kind or stream direction.
    BadKind = -4,
    /// The box already finished this stream, or the client stopped reading it.
    Finished = -5,
    /// No open stream of the session has this id (never opened, or both sides are done).
    UnknownStream = -6,
    /// The box has as many streams of its own open as the session allows.
    TooManyStreams = -7,
    /// The stream is the client's unidirectional stream: the box can only read it.
    ReceiveOnly = -8,
}

impl SendError {
    pub const fn from_code(code: i32) -> Option<SendError> {
        match code {
            -1 => Some(SendError::QueueFull),
            -2 => Some(SendError::TooLarge),
            -3 => Some(SendError::Closed),
            -4 => Some(SendError::BadKind),
            -5 => Some(SendError::Finished),
            -6 => Some(SendError::UnknownStream),
            -7 => Some(SendError::TooManyStreams),
            -8 => Some(SendError::ReceiveOnly),
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
            SendError::BadKind => "unknown frame kind or stream direction",
            SendError::Finished => "the stream is finished, or the client stopped reading it",
            SendError::UnknownStream => "no open stream of the session has this id",
            SendError::TooManyStreams => "the box has as many streams of its own open as the session allows",
            SendError::ReceiveOnly => "the stream is the client's unidirectional stream and cannot be written",
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
    Connect {
        stream: &'a str,
        session: u64,
        path: &'a str,
        query: &'a str,
    },
    /// A frame; `stream` is `None` for a datagram.
    Message {
        kind: FrameKind,
        stream: Option<StreamId>,
        bytes: &'a [u8],
    },
    Close {
        code: u32,
        reason: &'a str,
    },
    Disconnect {
        reason: &'a str,
    },
    Channel(ChannelEvent<'a>),
    StreamEnd {
        stream: StreamId,
        end: StreamEnd,
    },
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
                let stream = match (kind, r.u32()?) {
                    (FrameKind::Datagram, 0) => None,
                    (FrameKind::Stream, id) if id > 0 => Some(StreamId(id)),
                    _ => return Err(DecodeError::Invalid("frame stream")),
                };
                StreamEvent::Message { kind, stream, bytes: r.bytes()? }
            }
            STREAM_END => {
                let stream = StreamId(r.u32()?);
                let (end, code) = (r.u8()?, r.u32()?);
                StreamEvent::StreamEnd { stream, end: StreamEnd::from_wire(end, code).ok_or(DecodeError::Invalid("stream end"))? }
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
        // A frame's event is sized up front: grown from empty, a 64 KiB
        // frame would be copied once per doubling of the buffer.
        let mut w = match self {
            StreamEvent::Message { bytes, .. } => Writer::with_capacity(1 + 4 + 4 + bytes.len()),
            _ => Writer::default(),
        };
        let code = match self {
            StreamEvent::Connect { stream, session, path, query } => {
                w.str(stream).u64(*session).str(path).str(query);
                CONNECT
            }
            StreamEvent::Message { kind, stream, bytes } => {
                w.u8(*kind as u8).u32(stream.map_or(0, |s| s.0)).bytes(bytes);
                MESSAGE
            }
            StreamEvent::StreamEnd { stream, end } => {
                let (end, code) = end.to_wire();
                w.u32(stream.0).u8(end).u32(code);
                STREAM_END
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
            StreamEvent::Message { kind: FrameKind::Datagram, stream: None, bytes: b"hi" },
            StreamEvent::Message { kind: FrameKind::Stream, stream: Some(StreamId(3)), bytes: b"hi" },
            StreamEvent::StreamEnd { stream: StreamId(2), end: StreamEnd::Finished },
            StreamEvent::StreamEnd { stream: StreamId(2), end: StreamEnd::Reset(7) },
            StreamEvent::StreamEnd { stream: StreamId(9), end: StreamEnd::Stopped(u32::MAX) },
            StreamEvent::Close { code: 4000, reason: "bye" },
            StreamEvent::Disconnect { reason: "idle timeout" },
            StreamEvent::Channel(ChannelEvent::Message { topic: "room", offset: 3, epoch: "e", bytes: b"x" }),
            StreamEvent::Channel(ChannelEvent::Resync { topic: "room", offset: 3, epoch: "e", reason: "evicted" }),
        ];
        for ev in events {
            let (code, buf) = ev.encode();
            if matches!(ev, StreamEvent::Message { .. } | StreamEvent::Channel(ChannelEvent::Message { .. })) {
                assert_eq!(buf.capacity(), buf.len(), "a frame's event is sized up front: {ev:?}");
            }
            assert_eq!(StreamEvent::decode(code, &buf), Ok(ev));
        }
        assert!(StreamEvent::decode(99, &[]).is_err());
        assert_eq!(StreamEvent::decode(MESSAGE, &[7, 0, 0, 0, 0]), Err(DecodeError::Invalid("frame kind")));
        // A stream frame names its stream; a datagram names none.
        for (kind, stream) in [(0u8, 0u32), (1, 4)] {
            let mut buf = alloc::vec![kind];
            buf.extend_from_slice(&stream.to_le_bytes());
            buf.extend_from_slice(&[0, 0, 0, 0]);
            assert_eq!(StreamEvent::decode(MESSAGE, &buf), Err(DecodeError::Invalid("frame stream")), "{kind} {stream}");
        }
        assert_eq!(StreamEvent::decode(STREAM_END, &[1, 0, 0, 0, 3, 0, 0, 0, 0]), Err(DecodeError::Invalid("stream end")));
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
