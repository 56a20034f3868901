//! Deploys: how a new version of a domain reaches every node and replaces
//! the old one without dropping a request.
//!
//! - [`store`]: artifacts on disk, named by their SHA-256. An upload lands
//!   here first; a node missing a blob fetches it from a peer and checks
//!   the hash.
//! - [`release`]: validation. Before a deploy is proposed the accepting
//!   node loads every artifact the way it will be served (inspection,
//!   compilation, linking), so a bad artifact is refused with its tier and
//!   the reason while the running version keeps serving.
//! - [`apply`]: the [`Deployer`] of a node. It follows the cluster log's
//!   releases ([`toil_cluster::Command::Deploy`] and `Activate`) and swaps
//!   each domain atomically: new requests get the new version, requests in
//!   flight finish on the old one, open stream sessions keep their box
//!   until they close or the drain timeout closes them with `REDEPLOYED`
//!   (`RELOADED` in dev), and the daemon owner moves to the new version
//!   between ticks.
//! - [`api`]: the admin API's request and reply bodies, shared by the node
//!   and the `toil deploy` / `toil rollback` client.

pub mod api;
pub mod apply;
pub mod release;
pub mod store;

pub use apply::{BlobFetch, DeploySettings, Deployer};
pub use release::{DeployError, LoadedRelease};
pub use store::BlobStore;
