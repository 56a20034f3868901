//! A stream box's outbox: the frames it sends during one event, bounded in
//! bytes, and whether it asked to close. The network layer drains it after
//! each event.

use toil_abi::stream::{FrameKind, SendError};

use crate::limits::Limits;

/// A frame the guest sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutFrame {
    pub kind: FrameKind,
    pub bytes: Vec<u8>,
}

/// The frames a box sent during one event, and whether it asked to close.
/// Bounded: `stream_send` fails with [`SendError::QueueFull`] past
/// [`Limits::max_outbound_bytes_per_event`], with [`SendError::TooLarge`]
/// past the frame limit, and with [`SendError::Closed`] after `stream_close`.
#[derive(Debug)]
pub struct Outbox {
    frames: Vec<OutFrame>,
    queued_bytes: usize,
    max_queued_bytes: usize,
    max_frame: usize,
    pub(crate) max_datagram: usize,
    close: Option<(u32, String)>,
}

impl Outbox {
    pub fn new(limits: &Limits) -> Self {
        Outbox {
            frames: Vec::new(),
            queued_bytes: 0,
            max_queued_bytes: limits.max_outbound_bytes_per_event,
            max_frame: limits.max_frame_bytes,
            max_datagram: limits.max_frame_bytes,
            close: None,
        }
    }

    /// Queues a frame (the `stream_send` host call).
    pub fn send(&mut self, kind: FrameKind, bytes: &[u8]) -> Result<(), SendError> {
        if self.close.is_some() {
            return Err(SendError::Closed);
        }
        let max = match kind {
            FrameKind::Stream => self.max_frame,
            FrameKind::Datagram => self.max_datagram.min(self.max_frame),
        };
        if bytes.len() > max {
            return Err(SendError::TooLarge);
        }
        if self.queued_bytes + bytes.len() > self.max_queued_bytes {
            return Err(SendError::QueueFull);
        }
        self.queued_bytes += bytes.len();
        self.frames.push(OutFrame { kind, bytes: bytes.to_vec() });
        Ok(())
    }

    /// Records the guest's request to close (the `stream_close` host call);
    /// the first request wins.
    pub fn close(&mut self, code: u32, reason: String) {
        self.close.get_or_insert((code, reason));
    }

    /// Takes the queued frames, emptying the queue for the next event.
    pub fn take_frames(&mut self) -> Vec<OutFrame> {
        self.queued_bytes = 0;
        std::mem::take(&mut self.frames)
    }

    /// The code and reason the guest closed with, if it did.
    pub fn close_requested(&self) -> Option<&(u32, String)> {
        self.close.as_ref()
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
        };
        let mut out = Outbox::new(&limits);
        assert_eq!(out.send(FrameKind::Stream, &[0; 9]), Err(SendError::TooLarge));
        assert_eq!(out.send(FrameKind::Stream, &[1; 8]), Ok(()));
        assert_eq!(out.send(FrameKind::Datagram, &[2; 5]), Err(SendError::QueueFull));
        out.max_datagram = 3;
        assert_eq!(out.send(FrameKind::Datagram, &[2; 4]), Err(SendError::TooLarge));
        assert_eq!(out.send(FrameKind::Datagram, &[2; 3]), Ok(()));
        let frames = out.take_frames();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1], OutFrame { kind: FrameKind::Datagram, bytes: vec![2; 3] });
        // A new event starts with an empty budget.
        assert_eq!(out.send(FrameKind::Stream, &[1; 8]), Ok(()));
        out.close(4000, "bye".into());
        out.close(1, "second".into());
        assert_eq!(out.send(FrameKind::Stream, b"x"), Err(SendError::Closed));
        assert_eq!(out.close_requested(), Some(&(4000, "bye".to_string())));
    }
}
