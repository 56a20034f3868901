//! The streams of one session, as its box sees them: which ids exist, which
//! side of each is still open, and the cap on streams the box opens. No I/O:
//! host calls check a write or a finish here at once (so the guest gets its
//! error in the call), and the session driver reports what the client did.
//!
//! A stream has two sides. *Ours* carries the box's frames to the client;
//! *theirs* carries the client's frames to the box. A client's
//! unidirectional stream has only theirs, a unidirectional stream the box
//! opened only ours. A side ends when its writer finishes it or aborts it
//! (a reset, or a stop from the reader). A stream is forgotten once both
//! sides have ended, and its id is never given out again.
//!
//! The first bidirectional stream the client opens is the session's
//! *primary* stream, where `stream_send` writes.

use std::collections::BTreeMap;

use toil_abi::stream::{Direction, SendError, StreamEnd, StreamId};

/// The last id a session may give out.
const MAX_ID: u32 = i32::MAX as u32;

/// One side of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Open,
    Ended,
    /// A unidirectional stream has no side this way.
    Absent,
}

impl Side {
    fn done(self) -> bool {
        self != Side::Open
    }
}

#[derive(Clone, Copy, Debug)]
struct Sides {
    ours: Side,
    theirs: Side,
    opened_by_box: bool,
}

/// The open streams of one session.
#[derive(Debug)]
pub struct StreamTable {
    streams: BTreeMap<u32, Sides>,
    last_id: u32,
    primary: Option<StreamId>,
    /// Streams the box opened that are not forgotten yet, and the cap on them.
    box_opened: usize,
    max_box_opened: usize,
}

impl StreamTable {
    /// A session whose box may have `max_box_opened` streams of its own open.
    pub fn new(max_box_opened: usize) -> Self {
        StreamTable { streams: BTreeMap::new(), last_id: 0, primary: None, box_opened: 0, max_box_opened }
    }

    /// The client opened a stream: its id, or `None` once the session has
    /// used every id. The first bidirectional one becomes the primary stream.
    pub fn client_opened(&mut self, direction: Direction) -> Option<StreamId> {
        let ours = match direction {
            Direction::Bidi => Side::Open,
            Direction::Uni => Side::Absent,
        };
        let id = self.add(Sides { ours, theirs: Side::Open, opened_by_box: false })?;
        if direction == Direction::Bidi && self.primary.is_none() {
            self.primary = Some(id);
        }
        Some(id)
    }

    /// The box opens a stream (`stream_open`), within its cap.
    pub fn box_opens(&mut self, direction: Direction) -> Result<StreamId, SendError> {
        if self.box_opened >= self.max_box_opened {
            return Err(SendError::TooManyStreams);
        }
        let theirs = match direction {
            Direction::Bidi => Side::Open,
            Direction::Uni => Side::Absent,
        };
        let id = self.add(Sides { ours: Side::Open, theirs, opened_by_box: true }).ok_or(SendError::TooManyStreams)?;
        self.box_opened += 1;
        Ok(id)
    }

    /// Ids are positive `i32`s (`stream_open` returns one as its result);
    /// a session that used them all gets no more streams.
    fn add(&mut self, sides: Sides) -> Option<StreamId> {
        if self.last_id >= MAX_ID {
            return None;
        }
        self.last_id += 1;
        self.streams.insert(self.last_id, sides);
        Some(StreamId(self.last_id))
    }

    /// The primary stream, once the client has opened one.
    pub fn primary(&self) -> Option<StreamId> {
        self.primary
    }

    /// Whether the box may write to `id` now.
    pub fn writable(&self, id: StreamId) -> Result<(), SendError> {
        match self.streams.get(&id.0).map(|s| s.ours) {
            None if id.0 == 0 || id.0 > self.last_id => Err(SendError::UnknownStream),
            // Forgotten: both sides ended, ours among them.
            None | Some(Side::Ended) => Err(SendError::Finished),
            Some(Side::Absent) => Err(SendError::ReceiveOnly),
            Some(Side::Open) => Ok(()),
        }
    }

    /// The box finishes its side of `id` (`stream_finish`).
    pub fn finish(&mut self, id: StreamId) -> Result<(), SendError> {
        self.writable(id)?;
        self.update(id, |s| s.ours = Side::Ended);
        Ok(())
    }

    /// The client ended one side of `id` (reported to the box as `stream_end`).
    /// Returns whether the stream was open on that side; a repeated or
    /// late report changes nothing.
    pub fn client_ended(&mut self, id: StreamId, end: StreamEnd) -> bool {
        let side_open = |s: &Sides| match end {
            StreamEnd::Finished | StreamEnd::Reset(_) => s.theirs == Side::Open,
            StreamEnd::Stopped(_) => s.ours == Side::Open,
        };
        if !self.streams.get(&id.0).is_some_and(side_open) {
            return false;
        }
        self.update(id, |s| match end {
            StreamEnd::Finished | StreamEnd::Reset(_) => s.theirs = Side::Ended,
            StreamEnd::Stopped(_) => s.ours = Side::Ended,
        });
        true
    }

    /// Streams not forgotten yet.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    fn update(&mut self, id: StreamId, change: impl FnOnce(&mut Sides)) {
        let Some(sides) = self.streams.get_mut(&id.0) else { return };
        change(sides);
        if sides.ours.done() && sides.theirs.done() {
            if sides.opened_by_box {
                self.box_opened -= 1;
            }
            self.streams.remove(&id.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_streams_get_ids_in_order_and_the_first_bidi_is_primary() {
        let mut t = StreamTable::new(4);
        assert_eq!(t.primary(), None);
        let uni = t.client_opened(Direction::Uni).unwrap();
        let a = t.client_opened(Direction::Bidi).unwrap();
        let b = t.client_opened(Direction::Bidi).unwrap();
        assert_eq!((uni, a, b), (StreamId(1), StreamId(2), StreamId(3)));
        assert_eq!(t.primary(), Some(a));
        assert_eq!(t.writable(uni), Err(SendError::ReceiveOnly));
        assert_eq!(t.writable(b), Ok(()));
        assert_eq!(t.writable(StreamId(0)), Err(SendError::UnknownStream));
        assert_eq!(t.writable(StreamId(4)), Err(SendError::UnknownStream));
    }

    #[test]
    fn a_stream_is_forgotten_once_both_sides_end_in_either_order() {
        let mut t = StreamTable::new(4);
        let a = t.client_opened(Direction::Bidi).unwrap();
        let b = t.client_opened(Direction::Bidi).unwrap();
        // Box first, then client.
        assert_eq!(t.finish(a), Ok(()));
        assert_eq!(t.writable(a), Err(SendError::Finished));
        assert_eq!(t.finish(a), Err(SendError::Finished), "finishing twice is refused");
        assert!(t.client_ended(a, StreamEnd::Finished));
        // Client first (a reset), then the client stops reading ours.
        assert!(t.client_ended(b, StreamEnd::Reset(7)));
        assert_eq!(t.writable(b), Ok(()), "a reset of their side leaves ours open");
        assert!(!t.client_ended(b, StreamEnd::Finished), "their side already ended");
        assert!(t.client_ended(b, StreamEnd::Stopped(9)));
        assert!(t.is_empty());
        // Forgotten ids stay finished, never unknown or reused.
        assert_eq!(t.writable(a), Err(SendError::Finished));
        assert_eq!(t.client_opened(Direction::Uni), Some(StreamId(3)));
        assert!(!t.client_ended(a, StreamEnd::Stopped(1)), "a late report about a forgotten stream");
    }

    #[test]
    fn the_box_opens_streams_up_to_its_cap_and_ended_ones_free_their_slot() {
        let mut t = StreamTable::new(2);
        let uni = t.box_opens(Direction::Uni).unwrap();
        let bidi = t.box_opens(Direction::Bidi).unwrap();
        assert_eq!(t.box_opens(Direction::Uni), Err(SendError::TooManyStreams));
        // A client stream does not count against the box's cap, nor become primary.
        t.client_opened(Direction::Uni).unwrap();
        assert_eq!(t.primary(), None);
        // A unidirectional stream ends with the box's finish.
        t.finish(uni).unwrap();
        let third = t.box_opens(Direction::Uni).unwrap();
        assert_eq!(third, StreamId(4));
        // A bidirectional one needs the client's side to end too.
        t.finish(bidi).unwrap();
        assert_eq!(t.box_opens(Direction::Uni), Err(SendError::TooManyStreams));
        assert!(t.client_ended(bidi, StreamEnd::Finished));
        assert!(t.box_opens(Direction::Bidi).is_ok());
        // The client stopping a box stream ends it as well.
        assert!(t.client_ended(third, StreamEnd::Stopped(0)));
        assert_eq!(t.writable(third), Err(SendError::Finished));
        assert!(t.box_opens(Direction::Uni).is_ok());
    }

    #[test]
    fn a_session_that_used_every_id_gets_no_more_streams() {
        let mut t = StreamTable::new(2);
        t.last_id = MAX_ID - 1;
        assert_eq!(t.client_opened(Direction::Bidi), Some(StreamId(MAX_ID)));
        assert_eq!(t.client_opened(Direction::Bidi), None);
        assert_eq!(t.box_opens(Direction::Uni), Err(SendError::TooManyStreams));
        assert_eq!(t.box_opened, 0);
    }
}
