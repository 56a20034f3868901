//! L4 daemon tier messages.
//!
//! `daemon_start(input_len)` runs once when a box becomes its domain's owner;
//! its input is `domain: str, node: str, fencing: u64`.
//! `scheduled_tick(task, fire_time_ms)` runs once per accepted tick: `task`
//! is the [`crate::manifest::TaskDecl::index`] and `fire_time_ms` the
//! scheduled time (Unix milliseconds, UTC) the tick stands for. Neither has
//! an output.

#[cfg(feature = "alloc")]
use crate::codec::Writer;
use crate::codec::{DecodeError, Reader};
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

/// Input of `daemon_start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartInfo<'a> {
    pub domain: &'a str,
    pub node: &'a str,
    /// Increases every time ownership of the domain moves.
    pub fencing: u64,
}

impl<'a> StartInfo<'a> {
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let s = StartInfo { domain: r.str()?, node: r.str()?, fencing: r.u64()? };
        r.finish()?;
        Ok(s)
    }

    #[cfg(feature = "alloc")]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.str(self.domain).str(self.node).u64(self.fencing);
        w.into_vec()
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn start_info_round_trips() {
        let s = StartInfo { domain: "jobs", node: "n1", fencing: 3 };
        assert_eq!(StartInfo::decode(&s.encode()), Ok(s));
    }
}
