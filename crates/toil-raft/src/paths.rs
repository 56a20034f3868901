//! The paths of the cluster port's RPCs, one constant each: the callers
//! (the raft network, forwarding to the leader, `toil cluster remove`) and
//! the node's router name them from here, so the two cannot drift apart.
//! Every RPC is a signed POST with a JSON body ([`crate::rpc`]); paths not
//! listed here go to the node's extension (such as artifact fetches).

/// Raft's own RPCs between members ([`crate::network`] sends them).
pub const APPEND: &str = "/raft/append";
pub const VOTE: &str = "/raft/vote";
pub const PRE_VOTE: &str = "/raft/pre-vote";
pub const SNAPSHOT: &str = "/raft/snapshot";

/// A command for the log, forwarded to the leader by a node that does not lead.
pub const PROPOSE: &str = "/cluster/propose";

/// Membership admin: add a node, remove one, and a node's view of the cluster.
pub const JOIN: &str = "/cluster/join";
pub const REMOVE: &str = "/cluster/remove";
pub const STATUS: &str = "/cluster/status";
