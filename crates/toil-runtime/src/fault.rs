//! Who a guest is (domain and tier, for logs and metrics) and how a guest
//! call can fail.

use std::sync::Arc;
use std::time::Duration;

use toil_abi::Tier;

/// Identity of a guest in logs and metrics.
#[derive(Clone, Debug)]
pub struct GuestId {
    pub domain: Arc<str>,
    pub tier: Tier,
}

/// Why a guest call failed. The host answers the request (500/503) or ends
/// the session; it never stops serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    #[error("deadline of {0:?} exceeded (guest interrupted)")]
    Deadline(Duration),
    #[error("memory limit of {limit} bytes exceeded")]
    Memory { limit: usize },
    #[error("reply exceeds the {limit}-byte limit")]
    OutputTooLarge { limit: usize },
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("guest broke the ABI: {0}")]
    Abi(String),
    /// Not the guest's doing: the instance pool was exhausted when its
    /// instance was to be created.
    #[error("the node has no free instance (limits.maxInstances)")]
    NodeFull,
}

impl GuestFault {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestFault::Deadline(_) => "deadline",
            GuestFault::Memory { .. } => "memory",
            GuestFault::OutputTooLarge { .. } => "output_too_large",
            GuestFault::Trap(_) => "trap",
            GuestFault::Abi(_) => "abi",
            GuestFault::NodeFull => "node_full",
        }
    }
}
