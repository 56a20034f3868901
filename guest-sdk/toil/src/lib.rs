//! The Rust guest SDK of Toil Edge.
//!
//! One crate declares every tier of a domain; `toil build` compiles it once
//! per tier into `release.wasm` (L1 request), `release-stream.wasm` (L2/L3
//! stream) and `release-cold.wasm` (L4 daemon).
//!
//! ```
//! use toil::prelude::*;
//!
//! struct Api;
//! #[toil::request]
//! impl Api {
//!     #[get("/hello/:name")]
//!     fn hello(req: &Request) -> String { format!("hello {}", req.param("name").unwrap_or("?")) }
//! }
//!
//! #[derive(Default)]
//! struct Echo { count: u32 }
//! #[toil::stream("echo")]
//! impl Echo {
//!     #[message]
//!     fn on_message(&mut self, cx: &mut Session, frame: Frame<'_>) -> Result<(), SendError> {
//!         self.count += 1;
//!         cx.reply(&frame, frame.bytes())
//!     }
//! }
//!
//! toil::export! { request: [Api], stream: [Echo] }
//! ```
//!
//! `export!` is the one source of truth: the artifact of each tier declares
//! (in its manifest) and dispatches exactly the types `export!` lists. A
//! type carrying `#[request]`, `#[stream]` or `#[daemon]` but left out of
//! `export!` declares nothing (and the compiler's dead-code lint reports the
//! type as never constructed).
//!
//! The tier vocabulary is `request`, `stream` and `daemon` everywhere: the
//! surface macros, the keys of `export!`, the `toil_tier` cfg. `#[rest]` and
//! the `export!` keys `rest` and `streams` are accepted aliases.
//!
//! Modules: [`http`] (requests and responses), [`stream`] (resident
//! WebTransport boxes), [`daemon`] (scheduled tasks), [`channel`] (topics
//! every tier publishes to and stream boxes subscribe to). Guest `stdout` and
//! `stderr` (`println!`, `eprintln!`, panic messages) go to the host log,
//! tagged with the domain and tier. See `docs/abi.md` for the wire contract.

// The macros name the SDK `::toil`, also in this crate's own tests.
extern crate self as toil;

pub use toil_abi as abi;
pub use toil_macros::{daemon, export, request, rest, stream};

pub mod channel;
pub mod daemon;
mod host;
pub mod http;
#[doc(hidden)]
pub mod manifest;
pub mod stream;

/// What a stream hook, a daemon's `#[start]` or a scheduled task may
/// return: `()`, or `Result<(), E>` where `E: Display`.
///
/// An `Err` is reported to the host as one line of the guest's `stderr`
/// (the host log, tagged with domain and tier) naming the hook or task, and
/// nothing else changes: the session or the daemon box goes on with its
/// state. To end a session as well, call [`stream::Session::close`]; to
/// count a tick as failed and restart the box, panic.
#[diagnostic::on_unimplemented(
    message = "a toil hook or task returns `()` or `Result<(), E>` where `E: Display`, not `{Self}`",
    label = "not a hook result"
)]
pub trait HookResult {
    /// `Err` carries the error's `Display` text.
    fn into_outcome(self) -> Result<(), String>;
}

impl HookResult for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: core::fmt::Display> HookResult for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// Everything a guest crate usually needs.
pub mod prelude {
    pub use crate::channel::{ChannelError, ChannelEvent, Position, Since};
    pub use crate::daemon::{StartInfo, Tick};
    pub use crate::http::{IntoResponse, Request, Response};
    pub use crate::stream::{Direction, Frame, FrameKind, SendError, Session, StreamEnd, StreamId};
}

/// Entry-point glue called by the code `export!` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::daemon::{daemon_start, scheduled_tick};
    pub use crate::http::handle;
    pub use crate::manifest;
    pub use crate::stream::{open_stream, stream_dispatch};
}
