//! A stream box's outbox: what it sends during one event (frames, streams
//! it opens or finishes), bounded in bytes, and whether it asked to close.
//! The network layer drains it after each event, in order.

use toil_abi::stream::{Direction, FrameKind, SendError, StreamEnd, StreamId};

use crate::limits::Limits;
use crate::streams::StreamTable;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// The session's primary stream, which the client has not opened yet:
    /// the network layer holds the frame until it does.
    Primary,
    Stream(StreamId),
    Datagram,
}

/// One thing the box asked for, in the order it asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    Frame {
        to: To,
        bytes: Vec<u8>,
    },
    /// Open a stream; the box already has its id.
    Open {
        stream: StreamId,
        direction: Direction,
    },
    /// Finish the box's side of a stream, after the frames queued on it.
    Finish(StreamId),
}

/// What a box sent during one event, and whether it asked to close.
/// Bounded: a frame fails with [`SendError::QueueFull`] past
/// [`Limits::max_outbound_bytes_per_event`], with [`SendError::TooLarge`]
/// past the frame limit, and with [`SendError::Closed`] after `stream_close`;
/// writes, finishes and opens are checked against the session's
/// [`StreamTable`] when the guest makes them.
#[derive(Debug)]
pub struct Outbox {
    out: Vec<Out>,
    queued_bytes: usize,
    max_queued_bytes: usize,
    max_frame: usize,
    pub(crate) max_datagram: usize,
    close: Option<(u32, String)>,
    streams: StreamTable,
}

impl Outbox {
    pub fn new(limits: &Limits) -> Self {
        Outbox {
            out: Vec::new(),
            queued_bytes: 0,
            max_queued_bytes: limits.max_outbound_bytes_per_event,
            max_frame: limits.max_frame_bytes,
            max_datagram: limits.max_frame_bytes,
            close: None,
            streams: StreamTable::new(limits.max_box_streams),
        }
    }

    /// Queues a frame on the primary stream or as a datagram (the `stream_send` host call).
    pub fn send(&mut self, kind: FrameKind, bytes: &[u8]) -> Result<(), SendError> {
        self.open_for_output()?;
        let to = match kind {
            FrameKind::Datagram => To::Datagram,
            FrameKind::Stream => match self.streams.primary() {
                Some(primary) => {
                    self.streams.writable(primary)?;
                    To::Stream(primary)
                }
                None => To::Primary,
            },
        };
        self.frame(to, bytes)
    }

    /// Queues a frame on one stream, and its finish after it if `finish` (`stream_write`).
    pub fn write(&mut self, stream: StreamId, bytes: &[u8], finish: bool) -> Result<(), SendError> {
        self.open_for_output()?;
        self.streams.writable(stream)?;
        self.frame(To::Stream(stream), bytes)?;
        if finish {
            self.finish(stream)?;
        }
        Ok(())
    }

    /// Finishes the box's side of a stream (`stream_finish`).
    pub fn finish(&mut self, stream: StreamId) -> Result<(), SendError> {
        self.open_for_output()?;
        self.streams.finish(stream)?;
        self.out.push(Out::Finish(stream));
        Ok(())
    }

    /// Opens a stream to the client (`stream_open`).
    pub fn open(&mut self, direction: Direction) -> Result<StreamId, SendError> {
        self.open_for_output()?;
        let stream = self.streams.box_opens(direction)?;
        self.out.push(Out::Open { stream, direction });
        Ok(stream)
    }

    fn open_for_output(&self) -> Result<(), SendError> {
        match self.close {
            Some(_) => Err(SendError::Closed),
            None => Ok(()),
        }
    }

    fn frame(&mut self, to: To, bytes: &[u8]) -> Result<(), SendError> {
        self.open_for_output()?;
        let max = match to {
            To::Datagram => self.max_datagram.min(self.max_frame),
            To::Primary | To::Stream(_) => self.max_frame,
        };
        if bytes.len() > max {
            return Err(SendError::TooLarge);
        }
        if self.queued_bytes + bytes.len() > self.max_queued_bytes {
            return Err(SendError::QueueFull);
        }
        self.queued_bytes += bytes.len();
        self.out.push(Out::Frame { to, bytes: bytes.to_vec() });
        Ok(())
    }

    /// Records the guest's request to close (the `stream_close` host call);
    /// the first request wins.
    pub fn close(&mut self, code: u32, reason: String) {
        self.close.get_or_insert((code, reason));
    }

    /// Takes what was queued, emptying the queue for the next event.
    pub fn take(&mut self) -> Vec<Out> {
        self.queued_bytes = 0;
        std::mem::take(&mut self.out)
    }

    /// The code and reason the guest closed with, if it did.
    pub fn close_requested(&self) -> Option<&(u32, String)> {
        self.close.as_ref()
    }

    /// The client opened a stream; returns its id (`None`: the session used every id).
    pub fn client_opened(&mut self, direction: Direction) -> Option<StreamId> {
        self.streams.client_opened(direction)
    }

    /// The client ended one side of a stream; whether that side was open.
    pub fn client_ended(&mut self, stream: StreamId, end: StreamEnd) -> bool {
        self.streams.client_ended(stream, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_is_bounded_per_event() {
        let limits = Limits {
            deadline: std::time::Duration::from_millis(100),
            memory_bytes: 1 << 20,
            max_request_body: 1024,
            max_response_body: 1024,
            max_response_headers: 10,
            max_response_header_bytes: 1024,
            max_log_bytes_per_call: 1024,
            max_frame_bytes: 8,
            max_outbound_bytes_per_event: 12,
            max_box_streams: 1,
            hibernate_after: None,
        };
        let mut out = Outbox::new(&limits);
        assert_eq!(out.send(FrameKind::Stream, &[0; 9]), Err(SendError::TooLarge));
        assert_eq!(out.send(FrameKind::Stream, &[1; 8]), Ok(()));
        assert_eq!(out.send(FrameKind::Datagram, &[2; 5]), Err(SendError::QueueFull));
        out.max_datagram = 3;
        assert_eq!(out.send(FrameKind::Datagram, &[2; 4]), Err(SendError::TooLarge));
        assert_eq!(out.send(FrameKind::Datagram, &[2; 3]), Ok(()));
        let frames = out.take();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], Out::Frame { to: To::Primary, bytes: vec![1; 8] }, "no primary stream yet");
        assert_eq!(frames[1], Out::Frame { to: To::Datagram, bytes: vec![2; 3] });
        // A new event starts with an empty budget.
        assert_eq!(out.send(FrameKind::Stream, &[1; 8]), Ok(()));
        out.take();
        // Streams: writes and finishes are checked when made, in order.
        let primary = out.client_opened(Direction::Bidi).unwrap();
        let uni = out.client_opened(Direction::Uni).unwrap();
        assert_eq!(out.write(uni, b"x", false), Err(SendError::ReceiveOnly));
        let own = out.open(Direction::Uni).unwrap();
        assert_eq!(out.open(Direction::Uni), Err(SendError::TooManyStreams));
        assert_eq!(out.write(own, b"last", true), Ok(()));
        assert_eq!(out.write(own, b"late", false), Err(SendError::Finished));
        assert_eq!(out.send(FrameKind::Stream, b"p"), Ok(()));
        assert_eq!(
            out.take(),
            [
                Out::Open { stream: own, direction: Direction::Uni },
                Out::Frame { to: To::Stream(own), bytes: b"last".to_vec() },
                Out::Finish(own),
                Out::Frame { to: To::Stream(primary), bytes: b"p".to_vec() },
            ]
        );
        out.finish(primary).unwrap();
        assert_eq!(out.send(FrameKind::Stream, b"p"), Err(SendError::Finished), "the primary stream is finished");
        out.close(4000, "bye".into());
        out.close(1, "second".into());
        assert_eq!(out.send(FrameKind::Stream, b"x"), Err(SendError::Closed));
        assert_eq!(out.open(Direction::Bidi), Err(SendError::Closed));
        assert_eq!(out.close_requested(), Some(&(4000, "bye".to_string())));
    }
}
