//! Where a box's stream frames go, decided without I/O.
//!
//! Stream-kind frames go to the session's *primary* stream: the first
//! bidirectional stream the client opens. A box may send before that stream
//! exists (from `connect`, say); those frames are held, up to one event's
//! output ([`Limits::max_outbound_bytes_per_event`]), and written to the
//! primary stream before anything else once it arrives. Frames past the
//! cap are dropped and counted. Later client streams are input only.
//!
//! [`Limits::max_outbound_bytes_per_event`]: toil_runtime::Limits::max_outbound_bytes_per_event

/// The primary stream `S` of a session, or the frames held until it arrives.
#[derive(Debug)]
pub enum Primary<S> {
    Awaiting { held: Vec<Vec<u8>>, held_bytes: usize, cap: usize },
    Open(S),
}

impl<S> Primary<S> {
    /// No primary stream yet; hold at most `cap` bytes of frames for it.
    pub fn new(cap: usize) -> Self {
        Primary::Awaiting { held: Vec::new(), held_bytes: 0, cap }
    }

    /// The primary stream, if the client has opened it.
    pub fn stream(&mut self) -> Option<&mut S> {
        match self {
            Primary::Open(s) => Some(s),
            Primary::Awaiting { .. } => None,
        }
    }

    /// Holds a frame for the primary stream to come; `false` if it was
    /// dropped (over the cap, or the stream is already open: write it).
    pub fn hold(&mut self, frame: Vec<u8>) -> bool {
        match self {
            Primary::Awaiting { held, held_bytes, cap } if *held_bytes + frame.len() <= *cap => {
                *held_bytes += frame.len();
                held.push(frame);
                true
            }
            _ => false,
        }
    }

    /// A client stream arrived. If there is no primary stream yet, it is to
    /// become the primary: the held frames are returned, in order, to be
    /// written to it first, then [`Primary::open`] it. `None`: a primary
    /// exists and the new stream is input only.
    pub fn claim(&mut self) -> Option<Vec<Vec<u8>>> {
        match self {
            Primary::Awaiting { held, held_bytes, .. } => {
                *held_bytes = 0;
                Some(std::mem::take(held))
            }
            Primary::Open(_) => None,
        }
    }

    /// Makes `stream` the primary one, once the claimed frames are on it.
    pub fn open(&mut self, stream: S) {
        *self = Primary::Open(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_before_the_stream_are_held_up_to_the_cap_and_delivered_first_in_order() {
        let mut p: Primary<Vec<Vec<u8>>> = Primary::new(10);
        assert!(p.stream().is_none());
        assert!(p.hold(vec![1; 4]));
        assert!(p.hold(vec![2; 6]));
        assert!(!p.hold(vec![3; 1]), "over the cap: dropped");
        let held = p.claim().expect("no primary yet");
        assert_eq!(held, [vec![1; 4], vec![2; 6]]);
        p.open(held);
        assert_eq!(p.stream().map(|s| s.len()), Some(2));
        assert!(!p.hold(vec![4]), "an open stream is written to, not held for");
        assert_eq!(p.claim(), None, "later streams are input only");
    }

    #[test]
    fn a_stream_that_failed_to_take_the_held_frames_leaves_room_for_the_next() {
        let mut p: Primary<()> = Primary::new(4);
        assert!(p.hold(vec![0; 4]));
        let _lost = p.claim().expect("first stream");
        // Writing failed: the stream is not opened. The budget starts over.
        assert!(p.hold(vec![0; 4]));
        assert_eq!(p.claim(), Some(vec![vec![0; 4]]));
    }
}
