//! Frames for the primary stream before it exists, decided without I/O.
//!
//! `stream_send` writes to the session's *primary* stream: the first
//! bidirectional stream the client opens. A box may send before that stream
//! exists (from `connect`, say); those frames are held, up to one event's
//! output ([`Limits::max_outbound_bytes_per_event`]), and written to the
//! primary stream before anything else once it arrives. Frames past the
//! cap are dropped and counted.
//!
//! [`Limits::max_outbound_bytes_per_event`]: toil_runtime::Limits::max_outbound_bytes_per_event

/// The frames held for a primary stream the client has not opened yet.
#[derive(Debug)]
pub struct Held {
    frames: Vec<Vec<u8>>,
    bytes: usize,
    cap: usize,
    /// The primary stream arrived: nothing is held any more.
    claimed: bool,
}

impl Held {
    /// No primary stream yet; hold at most `cap` bytes of frames for it.
    pub fn new(cap: usize) -> Self {
        Held { frames: Vec::new(), bytes: 0, cap, claimed: false }
    }

    /// Holds a frame for the primary stream to come; `false` if it was
    /// dropped (over the cap).
    pub fn hold(&mut self, frame: Vec<u8>) -> bool {
        if self.claimed || self.bytes + frame.len() > self.cap {
            return false;
        }
        self.bytes += frame.len();
        self.frames.push(frame);
        true
    }

    /// The primary stream arrived: the held frames, in order, to write to it
    /// first. `None` after the first call: later streams are not primary.
    pub fn claim(&mut self) -> Option<Vec<Vec<u8>>> {
        if std::mem::replace(&mut self.claimed, true) {
            return None;
        }
        self.bytes = 0;
        Some(std::mem::take(&mut self.frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_before_the_stream_are_held_up_to_the_cap_and_delivered_first_in_order() {
        let mut held = Held::new(10);
        assert!(held.hold(vec![1; 4]));
        assert!(held.hold(vec![2; 6]));
        assert!(!held.hold(vec![3; 1]), "over the cap: dropped");
        assert_eq!(held.claim(), Some(vec![vec![1; 4], vec![2; 6]]));
        assert_eq!(held.claim(), None, "later streams are not primary");
        assert!(!held.hold(vec![4]), "once the primary stream exists nothing is held");
    }
}
