//! ABI v2 between the Toil host and its wasm guests.
//!
//! This crate is the single definition of everything that crosses the
//! host/guest boundary, and it is compiled into both sides: the host runtime
//! (`toil-runtime`, `toil-edge`) and the Rust guest SDK (`guest-sdk/`). It owns:
//!
//! - the per-tier export contract ([`Tier`], [`exports`]) and the host import
//!   module ([`imports`]);
//! - the byte codecs for events and replies ([`codec`], [`request`],
//!   [`stream`], [`daemon`], [`channel`]);
//! - the manifest carried in the `toil.manifest` custom section
//!   ([`manifest`]), which the host reads before running any guest code;
//! - route patterns and their matching ([`route`]).
//!
//! It is `no_std` (with `alloc` for encoders and owned decoders) and does no
//! I/O, so every codec is tested as plain data. `docs/abi.md` is the prose
//! version of this crate.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod channel;
pub mod codec;
pub mod daemon;
pub mod manifest;
pub mod request;
pub mod route;
pub mod stream;

/// The ABI version this crate defines. A guest declares the version it was
/// built against in its manifest header; the host refuses any other.
/// v2: stream frames name their stream, the `stream_end` event, and
/// `stream_write` / `stream_finish` / `stream_open`.
pub const ABI_VERSION: u32 = 2;

/// Name of the wasm custom section that carries the manifest.
pub const MANIFEST_SECTION: &str = "toil.manifest";

/// Deployment tier of an artifact. One crate compiles into one artifact per tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Tier {
    /// L1: a fresh instance per HTTP request.
    Request = 1,
    /// L2/L3: one resident instance per WebTransport connection.
    Stream = 2,
    /// L4: one leader-elected instance per domain running scheduled tasks.
    Daemon = 3,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Request, Tier::Stream, Tier::Daemon];

    pub const fn from_u8(v: u8) -> Option<Tier> {
        match v {
            1 => Some(Tier::Request),
            2 => Some(Tier::Stream),
            3 => Some(Tier::Daemon),
            _ => None,
        }
    }

    /// Short name used in logs, metrics labels and the `toil_tier` cfg.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Request => "request",
            Tier::Stream => "stream",
            Tier::Daemon => "daemon",
        }
    }

    /// The function exports this tier's artifact must have (besides `memory`).
    pub const fn required_exports(self) -> &'static [&'static str] {
        match self {
            Tier::Request => &[exports::HANDLE],
            Tier::Stream => &[exports::STREAM_DISPATCH],
            Tier::Daemon => &[exports::DAEMON_START, exports::SCHEDULED_TICK],
        }
    }

    /// Imports from the [`imports::MODULE`] module this tier may use.
    pub const fn allowed_host_imports(self) -> &'static [&'static str] {
        match self {
            Tier::Request | Tier::Daemon => &[imports::INPUT_READ, imports::OUTPUT_WRITE, imports::CHANNEL_PUBLISH],
            Tier::Stream => &[
                imports::INPUT_READ,
                imports::OUTPUT_WRITE,
                imports::STREAM_SEND,
                imports::STREAM_CLOSE,
                imports::STREAM_WRITE,
                imports::STREAM_FINISH,
                imports::STREAM_OPEN,
                imports::CHANNEL_PUBLISH,
                imports::CHANNEL_SUBSCRIBE,
                imports::CHANNEL_UNSUBSCRIBE,
            ],
        }
    }
}

impl core::fmt::Display for Tier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Names of the functions a guest exports, per tier.
pub mod exports {
    /// `memory`: the guest's linear memory; every tier exports it.
    pub const MEMORY: &str = "memory";
    /// L1: `handle(input_len: i32) -> i32`.
    pub const HANDLE: &str = "handle";
    /// L2/L3: `stream_dispatch(event: i32, input_len: i32) -> i32`.
    pub const STREAM_DISPATCH: &str = "stream_dispatch";
    /// L4: `daemon_start(input_len: i32) -> i32`.
    pub const DAEMON_START: &str = "daemon_start";
    /// L4: `scheduled_tick(task: i32, fire_time_ms: i64) -> i32`.
    pub const SCHEDULED_TICK: &str = "scheduled_tick";
    /// Optional WASI reactor initialiser; the host calls it once after instantiation.
    pub const INITIALIZE: &str = "_initialize";

    /// Every tier-specific entry point; an artifact may export only its own tier's.
    pub const TIER_ENTRY_POINTS: [&str; 4] = [HANDLE, STREAM_DISPATCH, DAEMON_START, SCHEDULED_TICK];
}

/// The host's own import module.
///
/// Bytes cross the boundary through host calls that copy into and out of
/// guest memory the guest itself allocated: the guest never has to export an
/// allocator, the host never writes guest memory outside a call the guest
/// made, and a resident box cannot leak buffers the host forgot to free.
pub mod imports {
    /// Module name of the host imports.
    pub const MODULE: &str = "toil";
    /// `input_read(dst: i32, len: i32) -> i32`: copy up to `len` bytes of the
    /// current event's input into guest memory at `dst`; returns bytes copied.
    pub const INPUT_READ: &str = "input_read";
    /// `output_write(src: i32, len: i32) -> i32`: append `len` bytes at `src`
    /// to the current event's output (the encoded reply). Returns 0; traps if
    /// the output would exceed the host's cap.
    pub const OUTPUT_WRITE: &str = "output_write";
    /// `stream_send(kind: i32, src: i32, len: i32) -> i32` (stream tier):
    /// queue a frame to the client, on the session's primary stream or as a
    /// datagram. Returns 0, or a negative [`crate::stream::SendError`] code.
    pub const STREAM_SEND: &str = "stream_send";
    /// `stream_write(stream: i32, src: i32, len: i32, finish: i32) -> i32`
    /// (stream tier): queue a frame on one stream ([`crate::stream::StreamId`]),
    /// and finish the box's side of it after the frame if `finish` is 1.
    /// Returns 0, or a negative [`crate::stream::SendError`] code.
    pub const STREAM_WRITE: &str = "stream_write";
    /// `stream_finish(stream: i32) -> i32` (stream tier): finish the box's
    /// side of a stream once what was queued on it is written. Returns 0,
    /// or a negative [`crate::stream::SendError`] code.
    pub const STREAM_FINISH: &str = "stream_finish";
    /// `stream_open(direction: i32) -> i32` (stream tier): open a stream to
    /// the client ([`crate::stream::Direction`]); returns its id (> 0), or a
    /// negative [`crate::stream::SendError`] code.
    pub const STREAM_OPEN: &str = "stream_open";
    /// `stream_close(code: i32, src: i32, len: i32) -> i32` (stream tier):
    /// close the session with an application code and a UTF-8 reason.
    pub const STREAM_CLOSE: &str = "stream_close";
    /// `channel_publish(topic: i32, topic_len: i32, src: i32, len: i32, out: i32, out_cap: i32) -> i32`
    /// (every tier): publish `len` bytes to a topic of the guest's domain;
    /// writes the [`crate::channel::Position`] it got to `out` and returns its
    /// length, or a negative [`crate::channel::ChannelError`] code.
    pub const CHANNEL_PUBLISH: &str = "channel_publish";
    /// `channel_subscribe(topic: i32, topic_len: i32, since: i32, since_len: i32) -> i32`
    /// (stream tier): subscribe the box to a topic from a [`crate::channel::Since`];
    /// returns 0 or a negative [`crate::channel::ChannelError`] code.
    pub const CHANNEL_SUBSCRIBE: &str = "channel_subscribe";
    /// `channel_unsubscribe(topic: i32, topic_len: i32) -> i32` (stream tier):
    /// returns 1 if the box was subscribed, 0 if not.
    pub const CHANNEL_UNSUBSCRIBE: &str = "channel_unsubscribe";

    /// The WASI preview1 module name; its functions are allowed in every tier.
    pub const WASI_P1: &str = "wasi_snapshot_preview1";
}

/// Return codes of the tier entry points.
pub mod status {
    /// The event was handled.
    pub const OK: i32 = 0;
    /// The guest could not decode the host's input (host/guest ABI mismatch).
    pub const BAD_INPUT: i32 = 1;
    /// The guest has no handler for the event (e.g. unknown route or stream).
    pub const NO_HANDLER: i32 = 2;
}
