//! The wasm runtime of a Toil node.
//!
//! It owns everything between artifact bytes and a guest call:
//! - [`artifact`]: reads and validates an artifact *before* any guest code
//!   runs — wasm validity, the manifest, ABI version, the tier's exports and
//!   none of another tier's, allowed imports;
//! - [`Runtime`]: one wasmtime `Engine` per node with the pooling allocator,
//!   copy-on-write memory images and an epoch ticker for deadlines;
//! - [`host`]: the per-instance host state, the `toil` import module, the
//!   guest log (WASI stdout/stderr → `tracing`, tagged with domain and tier)
//!   and the [`Limits`] enforced on every call;
//! - [`admission`]: each domain's fair share of the instances for requests
//!   (a cap, a bounded queue, then 503);
//! - [`request`]: the L1 tier — a fresh instance per request from a
//!   pre-linked `InstancePre`, dropped when the request ends;
//! - [`stream`]: the L2/L3 tier — a resident box per connection that
//!   receives the connection's events in order and queues outbound frames
//!   in a bounded [`stream::Outbox`];
//! - [`daemon`]: the L4 tier — a box per ownership term, started with the
//!   owner's fencing token and ticked for each accepted claim.
//!
//! It knows nothing about sockets or HTTP framing; `toil-edge` turns network
//! requests into [`request::GuestRequest`]s and WebTransport sessions into
//! stream events.

pub mod admission;
pub mod artifact;
pub mod daemon;
mod engine;
pub mod host;
mod metrics;
pub mod request;
pub mod stream;

pub use artifact::{ArtifactInfo, LoadError};
pub use engine::{Runtime, RuntimeConfig};
pub use host::{GuestFault, Limits};
pub use toil_abi::Tier;
