//! What the tiers on a node use: proposals from any node (forwarded to the
//! leader), the state applied here and its changes, and calls to other
//! members (artifact fetches).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use toil_cluster::{Applied, ClusterState, Command, LogError, NodeId};
use tokio::sync::watch;

use super::{failed, json, parse, ClusterNode, NodeRaft, ProposeError};
use crate::paths;
use crate::rpc::{CallError, Reply};

impl ClusterNode {
    /// Commits `command` through the leader (forwarding it when this node
    /// is not the leader) and returns what applying it did. Callers bound
    /// the wait: a node cut off from a quorum never commits anything.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        loop {
            match self.leader_addr() {
                Ok(None) => match self.raft.client_write(command.clone()).await {
                    Ok(r) => return r.data.ok_or_else(|| ProposeError::Raft("the command had no result".into())),
                    Err(e) if e.forward_to_leader().is_some() => {}
                    Err(e) => return Err(ProposeError::Raft(e.to_string())),
                },
                Ok(Some(addr)) => match self.rpc.call(&addr, paths::PROPOSE, &command, Duration::from_secs(5)).await {
                    Ok(applied) => return Ok(applied),
                    // The leader moved on; ask again.
                    Err(CallError::Failed { status: StatusCode::MISDIRECTED_REQUEST, .. }) => {}
                    Err(e) => return Err(e.into()),
                },
                Err(ProposeError::NoLeader) => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(self.timing.heartbeat).await;
        }
    }

    /// The state this node has applied.
    pub fn state(&self) -> ClusterState {
        self.sm.applied().state
    }

    /// Changes whenever this node applies commands.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.sm.changes()
    }

    /// The members of the cluster (voters and learners), by id.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect()
    }

    /// Calls `path` on member `node` with a raw body and returns the raw
    /// reply (artifact fetches). The address is the node's advertised one
    /// unless overridden.
    pub async fn call_member(&self, node: NodeId, path: &str, body: Vec<u8>, timeout: Duration) -> Result<Bytes, CallError> {
        let addr = match self.overrides.get(&node) {
            Some(a) => a.clone(),
            None => {
                let m = self.metrics();
                let found = m.membership_config.membership().nodes().find(|(id, _)| **id == node).map(|(_, n)| n.addr.clone());
                found.ok_or_else(|| CallError::Unreachable { addr: format!("node {node}"), reason: "not a member".into() })?
            }
        };
        self.rpc.call_raw(&addr, path, body, timeout).await
    }
}

/// What a failed proposal means to the tiers: the leader could not be
/// found or reached (worth proposing again), or raft itself failed here.
impl From<ProposeError> for LogError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NoLeader | ProposeError::Forward(_) => LogError::Unavailable(e.to_string()),
            ProposeError::Raft(_) => LogError::Failed(e.to_string()),
        }
    }
}

/// [`paths::PROPOSE`]: commits a command forwarded by another node, or
/// tells it this node no longer leads (421) so it asks again.
pub(super) fn serve_propose(raft: NodeRaft, body: Bytes) -> Reply {
    Box::pin(async move {
        let command: Command = parse(&body)?;
        match raft.client_write(command).await {
            Ok(r) => json(&r.data.ok_or_else(|| failed("the command had no result"))?),
            Err(e) if e.forward_to_leader().is_some() => Err((StatusCode::MISDIRECTED_REQUEST, format!("not the leader: {e}"))),
            Err(e) => Err(failed(e)),
        }
    })
}
