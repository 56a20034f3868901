//! The wasm runtime of a Toil node.
//!
//! It owns everything between artifact bytes and a guest call. From the
//! bottom up (each module imports only modules listed before it):
//! - [`wait`]: a timeout made only once its future has to wait (every
//!   guest call and, in `toil-edge`, every write has one);
//! - [`limits`]: the [`Limits`] enforced on every call, and the memory limiter;
//! - [`fault`]: who a guest is (domain, tier) and how its calls fail ([`GuestFault`]);
//! - `guest_log`: WASI stdout/stderr → `tracing`, tagged with domain and
//!   tier, within a per-call budget;
//! - [`outbox`]: a stream box's outbound frames, bounded per event;
//! - `epoch`: the ticker that moves the engines' epoch while a guest
//!   call runs (what makes a busy guest yield and a late one stop), and
//!   parks while none does;
//! - [`host`]: the per-instance host state and the `toil` import module;
//! - [`artifact`]: reads and validates an artifact *before* any guest code
//!   runs — wasm validity, the manifest, ABI version, the tier's exports and
//!   none of another tier's, allowed imports;
//! - [`admission`]: each domain's fair share of the instances for requests
//!   (a cap, a bounded queue, then 503);
//! - [`Runtime`] (`engine`): one wasmtime `Engine` per node with the pooling
//!   allocator, copy-on-write memory images and an epoch ticker for deadlines;
//! - `metrics`: each tier's guest metrics;
//! - `call`: the envelope every guest call of every tier goes through
//!   (begin → call under the deadline → end → status → metrics → log);
//! - [`request`]: the L1 tier — a fresh instance per request from a
//!   pre-linked `InstancePre`, dropped when the request ends;
//! - `hibernate`: what an idle stream box keeps when it gives its
//!   instance back (a plan per module, a snapshot per box), free of I/O;
//! - [`stream`]: the L2/L3 tier — a resident box per connection that
//!   receives the connection's events in order and queues outbound frames
//!   in its [`outbox::Outbox`];
//! - [`daemon`]: the L4 tier — a box per ownership term, started with the
//!   owner's fencing token and ticked for each accepted claim.
//!
//! It knows nothing about sockets or HTTP framing; `toil-edge` turns network
//! requests into [`request::GuestRequest`]s and WebTransport sessions into
//! stream events.

pub mod admission;
pub mod artifact;
mod call;
pub mod daemon;
mod engine;
mod epoch;
pub mod fault;
mod guest_log;
mod hibernate;
pub mod host;
pub mod limits;
mod metrics;
pub mod outbox;
pub mod request;
pub mod stream;
pub mod streams;
pub mod wait;

pub use artifact::{ArtifactInfo, LoadError};
pub use engine::{Runtime, RuntimeConfig};
pub use fault::GuestFault;
pub use limits::Limits;
pub use toil_abi::Tier;
