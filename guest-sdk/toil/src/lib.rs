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
//! #[toil::rest]
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
//!     fn on_message(&mut self, cx: &mut Session, frame: Frame<'_>) {
//!         self.count += 1;
//!         let _ = cx.reply(&frame, frame.bytes());
//!     }
//! }
//!
//! toil::export! { rest: [Api], streams: [Echo] }
//! ```
//!
//! Modules: [`http`] (requests and responses), [`stream`] (resident
//! WebTransport boxes), [`daemon`] (scheduled tasks). Guest `stdout` and
//! `stderr` (`println!`, `eprintln!`, panic messages) go to the host log,
//! tagged with the domain and tier. See `docs/abi.md` for the wire contract.

pub use toil_abi as abi;
pub use toil_macros::{daemon, export, rest, stream};

pub mod daemon;
mod host;
pub mod http;
pub mod stream;

/// Everything a guest crate usually needs.
pub mod prelude {
    pub use crate::daemon::{StartInfo, Tick};
    pub use crate::http::{IntoResponse, Request, Response};
    pub use crate::stream::{Frame, FrameKind, SendError, Session};
}

/// Entry-point glue called by the code `export!` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::daemon::{daemon_start, scheduled_tick};
    pub use crate::http::handle;
    pub use crate::stream::{open_stream, stream_dispatch};
}
