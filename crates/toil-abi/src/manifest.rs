//! The manifest: what an artifact declares, readable before instantiation.
//!
//! It lives in the wasm custom section [`crate::MANIFEST_SECTION`] as a
//! sequence of records, each `kind: u8, len: u32, payload: [u8; len]`. The
//! guest SDK's `export!` writes the whole section as one static
//! ([`ConstManifest`]) from the types it exports; a linker concatenates
//! same-named custom sections, so records are self-delimiting and their
//! order carries no meaning. Exactly one [`HEADER`] record names the ABI
//! version and the tier.
//!
//! | kind | record | payload |
//! |---|---|---|
//! | 1 | header | `abi_version: u32, tier: u8` |
//! | 2 | route (L1) | `method: str, pattern: str` |
//! | 3 | stream (L2/L3) | `name: str` |
//! | 4 | task (L4) | `index: u32, name: str, schedule: str` |

#[cfg(feature = "alloc")]
use crate::codec::Writer;
use crate::codec::{DecodeError, Reader};
use crate::Tier;
#[cfg(feature = "alloc")]
use alloc::{string::String, vec::Vec};

pub const HEADER: u8 = 1;
pub const ROUTE: u8 = 2;
pub const STREAM: u8 = 3;
pub const TASK: u8 = 4;

/// Length of the header record in bytes.
pub const HEADER_LEN: usize = 10;

/// The header record for `tier` at this crate's ABI version, as a constant so
/// a `macro_rules!` macro can place it in a `#[link_section]` static.
pub const fn header_record(tier: Tier) -> [u8; HEADER_LEN] {
    let v = crate::ABI_VERSION.to_le_bytes();
    [HEADER, 5, 0, 0, 0, v[0], v[1], v[2], v[3], tier as u8]
}

/// Appends a route record to `out` ([`ConstManifest`] writes the same records at compile time).
#[cfg(feature = "alloc")]
pub fn encode_route(out: &mut Vec<u8>, method: &str, pattern: &str) {
    let mut w = Writer::default();
    w.str(method).str(pattern);
    push_record(out, ROUTE, &w.buf);
}

#[cfg(feature = "alloc")]
pub fn encode_stream(out: &mut Vec<u8>, name: &str) {
    let mut w = Writer::default();
    w.str(name);
    push_record(out, STREAM, &w.buf);
}

#[cfg(feature = "alloc")]
pub fn encode_task(out: &mut Vec<u8>, index: u32, name: &str, schedule: &str) {
    let mut w = Writer::default();
    w.u32(index).str(name).str(schedule);
    push_record(out, TASK, &w.buf);
}

/// Length of a route record, header included.
pub const fn route_record_len(method: &str, pattern: &str) -> usize {
    RECORD_HEADER_LEN + str_len(method) + str_len(pattern)
}

/// Length of a stream record, header included.
pub const fn stream_record_len(name: &str) -> usize {
    RECORD_HEADER_LEN + str_len(name)
}

/// Length of a task record, header included.
pub const fn task_record_len(name: &str, schedule: &str) -> usize {
    RECORD_HEADER_LEN + 4 + str_len(name) + str_len(schedule)
}

/// `kind: u8, len: u32`.
const RECORD_HEADER_LEN: usize = 5;

const fn str_len(s: &str) -> usize {
    4 + s.len()
}

/// A whole manifest section of exactly `N` bytes, written at compile time:
/// `toil::export!` assembles an artifact's manifest with it from the
/// declarations of the types it exports. Records are encoded as
/// [`encode_route`] and friends encode them; `N` is the header's
/// [`HEADER_LEN`] plus the `*_record_len` of every record.
pub struct ConstManifest<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> ConstManifest<N> {
    /// A manifest that starts with the header record of `tier`.
    pub const fn new(tier: Tier) -> Self {
        let mut m = ConstManifest { buf: [0; N], len: 0 };
        m.bytes(&header_record(tier));
        m
    }

    pub const fn route(&mut self, method: &str, pattern: &str) {
        self.record(ROUTE, route_record_len(method, pattern));
        self.str(method);
        self.str(pattern);
    }

    pub const fn stream(&mut self, name: &str) {
        self.record(STREAM, stream_record_len(name));
        self.str(name);
    }

    pub const fn task(&mut self, index: u32, name: &str, schedule: &str) {
        self.record(TASK, task_record_len(name, schedule));
        self.bytes(&index.to_le_bytes());
        self.str(name);
        self.str(schedule);
    }

    /// The section's bytes; panics (at compile time) unless exactly `N` were written.
    pub const fn finish(self) -> [u8; N] {
        assert!(self.len == N, "manifest length differs from the sum of its records' lengths");
        self.buf
    }

    const fn record(&mut self, kind: u8, total_len: usize) {
        self.bytes(&[kind]);
        self.bytes(&((total_len - RECORD_HEADER_LEN) as u32).to_le_bytes());
    }

    const fn str(&mut self, s: &str) {
        self.bytes(&(s.len() as u32).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    const fn bytes(&mut self, b: &[u8]) {
        let mut i = 0;
        while i < b.len() {
            self.buf[self.len] = b[i];
            self.len += 1;
            i += 1;
        }
    }
}

#[cfg(feature = "alloc")]
fn push_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A declared HTTP route.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDecl {
    pub method: String,
    pub pattern: String,
}

/// A declared scheduled task of the daemon tier.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDecl {
    /// The index passed to `scheduled_tick`.
    pub index: u32,
    pub name: String,
    /// An interval (`"5s"`, `"1h"`) or a cron expression (contains spaces).
    pub schedule: String,
}

/// A decoded manifest. Decoding checks structure only; the host's loader
/// checks the ABI version, the tier and every declaration's syntax.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub abi_version: u32,
    pub tier_code: u8,
    pub routes: Vec<RouteDecl>,
    pub streams: Vec<String>,
    pub tasks: Vec<TaskDecl>,
}

/// Why a manifest section could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestError {
    Decode(DecodeError),
    MissingHeader,
    DuplicateHeader,
    UnknownRecord(u8),
}

impl From<DecodeError> for ManifestError {
    fn from(e: DecodeError) -> Self {
        ManifestError::Decode(e)
    }
}

impl core::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ManifestError::Decode(e) => write!(f, "malformed manifest record: {e}"),
            ManifestError::MissingHeader => f.write_str("manifest has no header record (was the crate built with toil::export!?)"),
            ManifestError::DuplicateHeader => f.write_str("manifest has more than one header record (toil::export! used twice?)"),
            ManifestError::UnknownRecord(k) => write!(f, "manifest has unknown record kind {k}"),
        }
    }
}

#[cfg(feature = "alloc")]
impl Manifest {
    /// Decodes the concatenated payload of every `toil.manifest` section.
    pub fn decode(section: &[u8]) -> Result<Manifest, ManifestError> {
        let mut header = None;
        let (mut routes, mut streams, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        let mut r = Reader::new(section);
        while !r.is_empty() {
            let kind = r.u8()?;
            let mut p = Reader::new(r.bytes()?);
            match kind {
                HEADER => {
                    if header.is_some() {
                        return Err(ManifestError::DuplicateHeader);
                    }
                    header = Some((p.u32()?, p.u8()?));
                }
                ROUTE => routes.push(RouteDecl { method: p.str()?.into(), pattern: p.str()?.into() }),
                STREAM => streams.push(p.str()?.into()),
                TASK => tasks.push(TaskDecl { index: p.u32()?, name: p.str()?.into(), schedule: p.str()?.into() }),
                other => return Err(ManifestError::UnknownRecord(other)),
            }
            p.finish()?;
        }
        let (abi_version, tier_code) = header.ok_or(ManifestError::MissingHeader)?;
        tasks.sort_by_key(|t: &TaskDecl| t.index);
        Ok(Manifest { abi_version, tier_code, routes, streams, tasks })
    }

    /// The tier named by the header, if it is a known one.
    pub fn tier(&self) -> Option<Tier> {
        Tier::from_u8(self.tier_code)
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn concatenated_fragments_decode_in_any_order() {
        let mut frag_a = Vec::new();
        encode_route(&mut frag_a, "GET", "/users/:id");
        encode_route(&mut frag_a, "POST", "/echo");
        let mut frag_b = Vec::new();
        encode_task(&mut frag_b, 1, "hourly", "0 0 * * * *");
        encode_task(&mut frag_b, 0, "tick", "5s");
        let header = header_record(Tier::Request);
        for order in [vec![&frag_a[..], &header[..], &frag_b[..]], vec![&frag_b[..], &frag_a[..], &header[..]]] {
            let m = Manifest::decode(&order.concat()).unwrap();
            assert_eq!(m.abi_version, crate::ABI_VERSION);
            assert_eq!(m.tier(), Some(Tier::Request));
            assert_eq!(m.routes.len(), 2);
            assert_eq!(m.routes[0].pattern, "/users/:id");
            assert_eq!(m.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["tick", "hourly"]);
        }
    }

    #[test]
    fn const_manifest_encodes_as_the_encoders_do() {
        const LEN: usize = HEADER_LEN + route_record_len("GET", "/users/:id") + stream_record_len("echo") + task_record_len("tick", "5s");
        const BYTES: [u8; LEN] = {
            let mut m = ConstManifest::<LEN>::new(Tier::Daemon);
            m.route("GET", "/users/:id");
            m.stream("echo");
            m.task(3, "tick", "5s");
            m.finish()
        };
        let mut expected = header_record(Tier::Daemon).to_vec();
        encode_route(&mut expected, "GET", "/users/:id");
        encode_stream(&mut expected, "echo");
        encode_task(&mut expected, 3, "tick", "5s");
        assert_eq!(BYTES[..], expected[..]);
        let m = Manifest::decode(&BYTES).unwrap();
        assert_eq!((m.routes.len(), m.streams.len(), m.tasks[0].index), (1, 1, 3));
    }

    #[test]
    #[should_panic(expected = "manifest length differs")]
    fn const_manifest_checks_its_length() {
        let _ = ConstManifest::<{ HEADER_LEN + 1 }>::new(Tier::Request).finish();
    }

    #[test]
    fn structural_errors() {
        assert_eq!(Manifest::decode(&[]), Err(ManifestError::MissingHeader));
        let h = header_record(Tier::Stream);
        assert_eq!(Manifest::decode(&[h, h].concat()), Err(ManifestError::DuplicateHeader));
        assert_eq!(Manifest::decode(&[9, 0, 0, 0, 0]), Err(ManifestError::UnknownRecord(9)));
        assert!(matches!(Manifest::decode(&h[..7]), Err(ManifestError::Decode(_))));
        let mut s = Vec::new();
        encode_stream(&mut s, "echo");
        let m = Manifest::decode(&[&s[..], &h[..]].concat()).unwrap();
        assert_eq!(m.streams, ["echo"]);
    }
}

impl core::error::Error for ManifestError {}
