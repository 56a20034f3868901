//! Membership admin: a node joining through a seed, the leader adding and
//! removing members, and this node's view of the cluster (`toil status`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use toil_cluster::{ClusterState, DomainReleases, NodeId, Owner, TaskRecord};

use super::{failed, json, parse, ClusterNode, ProposeError};
use crate::paths;
use crate::rpc::{CallError, Reply};

/// The body of [`paths::JOIN`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    pub addr: String,
}

/// The body of [`paths::REMOVE`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: NodeId,
}

/// A member as a node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
    /// Milliseconds since this node last heard from it (None: never; this node itself: 0).
    pub heard_ms_ago: Option<u64>,
}

/// A task's claims as the replicated state records them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskStatus {
    pub domain: String,
    /// The task's name (its method in the guest).
    pub name: String,
    #[serde(flatten)]
    pub record: TaskRecord,
}

impl TaskStatus {
    /// Every task with a claim in `state`.
    fn all(state: &ClusterState) -> Vec<TaskStatus> {
        state.tasks().map(|(domain, name, record)| TaskStatus { domain: domain.to_string(), name: name.to_string(), record: *record }).collect()
    }
}

/// What `toil status` shows: one node's view of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub owners: BTreeMap<String, Owner>,
    pub tasks: Vec<TaskStatus>,
    /// Deployed releases by domain (history and the served version).
    #[serde(default)]
    pub releases: BTreeMap<String, DomainReleases>,
    /// The version of each domain each node reported serving.
    #[serde(default)]
    pub served: BTreeMap<NodeId, BTreeMap<String, u64>>,
}

impl ClusterStatus {
    /// The status of `toil dev`: one node owning everything, no raft.
    pub fn single_node(state: &ClusterState) -> Self {
        ClusterStatus {
            node: 1,
            role: "Leader".into(),
            term: 0,
            leader: Some(1),
            last_applied: None,
            members: vec![MemberStatus { id: 1, addr: "local (toil dev)".into(), voter: true, heard_ms_ago: Some(0) }],
            owners: state.owners().clone(),
            tasks: TaskStatus::all(state),
            releases: state.releases().clone(),
            served: state.served().clone(),
        }
    }
}

impl ClusterNode {
    /// Whether this node is a voter of the membership it knows.
    pub fn is_voter(&self) -> bool {
        self.metrics().membership_config.membership().voter_ids().any(|n| n == self.id)
    }

    /// Asks the cluster at `seed` to add this node, until it is a voter
    /// (a restarted member already is, and asks nothing).
    pub async fn join(&self, seed: &str, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        let request = JoinRequest { id: self.id, addr: self.advertise.clone() };
        loop {
            if self.is_voter() {
                return Ok(());
            }
            match self.rpc.call::<_, ()>(seed, paths::JOIN, &request, Duration::from_secs(10)).await {
                Ok(()) => tracing::info!(seed, "joined the cluster"),
                Err(e @ CallError::Refused { .. }) => anyhow::bail!("joining through {seed}: {e}"),
                Err(e) if Instant::now() > deadline => anyhow::bail!("joining through {seed}: {e}"),
                Err(e) => tracing::warn!("joining through {seed}: {e}; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Adds a node as a voter (on the leader: learner first, then voter).
    pub async fn add_member(&self, req: JoinRequest) -> Result<(), ProposeError> {
        if self.on_leader(paths::JOIN, &req).await?.is_some() {
            return Ok(());
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let known = membership.get_node(&req.id).map(|n| n.addr.clone());
        if known.as_deref() == Some(req.addr.as_str()) && membership.voter_ids().any(|n| n == req.id) {
            return Ok(());
        }
        let raft_err = |e: &dyn std::fmt::Display| ProposeError::Raft(e.to_string());
        self.raft.add_learner(req.id, BasicNode::new(&req.addr), true).await.map_err(|e| raft_err(&e))?;
        let voters: BTreeSet<NodeId> = self.metrics().membership_config.membership().voter_ids().chain([req.id]).collect();
        self.raft.change_membership(voters, false).await.map_err(|e| raft_err(&e))?;
        tracing::info!(node = req.id, addr = req.addr, "added a node to the cluster");
        Ok(())
    }

    /// Removes a node from the cluster; its daemons move to live nodes.
    pub async fn remove_member(&self, req: RemoveRequest) -> Result<(), ProposeError> {
        if self.on_leader(paths::REMOVE, &req).await?.is_some() {
            return Ok(());
        }
        let m = self.metrics();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().filter(|n| *n != req.id).collect();
        if voters.is_empty() {
            return Err(ProposeError::Raft(format!("node {} is the last member; a cluster cannot remove its last node", req.id)));
        }
        self.raft.change_membership(voters, false).await.map_err(|e| ProposeError::Raft(e.to_string()))?;
        tracing::info!(node = req.id, "removed a node from the cluster");
        Ok(())
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                heard_ms_ago: if *id == self.id { Some(0) } else { self.liveness.last_heard(*id).map(|t| t.elapsed().as_millis() as u64) },
            })
            .collect();
        let applied = self.sm.applied();
        let tasks = TaskStatus::all(&applied.state);
        ClusterStatus {
            node: self.id,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_applied: m.last_applied.map(|l| l.index),
            members,
            owners: applied.state.owners().clone(),
            tasks,
            releases: applied.state.releases().clone(),
            served: applied.state.served().clone(),
        }
    }
}

/// [`paths::JOIN`]: adds the node (forwarded to the leader if need be).
pub(super) fn serve_join(node: Arc<ClusterNode>, body: Bytes) -> Reply {
    Box::pin(async move {
        let req: JoinRequest = parse(&body)?;
        node.add_member(req).await.map_err(failed)?;
        json(&())
    })
}

/// [`paths::REMOVE`]: removes the node (forwarded to the leader if need be).
pub(super) fn serve_remove(node: Arc<ClusterNode>, body: Bytes) -> Reply {
    Box::pin(async move {
        let req: RemoveRequest = parse(&body)?;
        node.remove_member(req).await.map_err(failed)?;
        json(&())
    })
}
