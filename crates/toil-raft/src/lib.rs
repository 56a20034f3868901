//! The replicated log of a Toil cluster (`toil node`).
//!
//! [`toil_cluster`] says what the replicated state is and how commands
//! change it; this crate replicates those commands with openraft:
//!
//! - [`store`]: the raft log and the state machine in one redb file, so a
//!   restarted node resumes its vote, log and applied state;
//! - [`rpc`] and [`network`]: HTTP/1.1 between nodes over mutual TLS
//!   ([`tls`]: certificates from a CA derived from the cluster secret),
//!   every request also signed with the cluster secret and numbered
//!   ([`auth`]); unsigned, wrongly signed and replayed requests are refused
//!   with 401, and a request signed as another node than the connection's
//!   certificate names is refused too. [`paths`] names
//!   every RPC, for the callers and the router alike;
//! - [`node`]: a running node. It joins or forms a cluster, forwards
//!   proposals to the leader from any node, adds and removes members, and,
//!   while it leads, places daemon owners on live nodes (a node not heard
//!   from within the owner timeout is dead; its domains move, after the
//!   owner lease of [`toil_cluster::lease`]). Elections use pre-vote.

pub mod auth;
pub mod network;
pub mod node;
pub mod paths;
pub mod rpc;
pub mod store;
pub mod tls;

pub use auth::ClusterSecret;
pub use node::admin::{ClusterStatus, JoinRequest, RemoveRequest};
pub use node::{ClusterNode, NodeOptions, ProposeError};
pub use rpc::{CallError, RpcClient};

openraft::declare_raft_types!(
    /// The raft types of a Toil cluster: the log carries [`toil_cluster::Command`]s.
    pub TypeConfig:
        D = toil_cluster::Command,
        R = Option<toil_cluster::Applied>,
        NodeId = u64,
        Node = openraft::BasicNode,
);
