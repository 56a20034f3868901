//! A cluster node: the raft instance, its cluster port, joining and
//! leaving, proposals from any node, and the leader's placement of daemon
//! owners on live nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Raft, RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use toil_cluster::lease::is_silent;
use toil_cluster::{place, Applied, ClusterState, Command, DomainReleases, LeaseTiming, NodeId, Owner, TaskRecord};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{ClusterSecret, ReplayGuard};
use crate::network::{Liveness, Network, SnapshotRequest};
use crate::rpc::{self, CallError, Reply, RpcClient, RpcHandler};
use crate::store::{self, StateMachine};
use crate::TypeConfig;

/// How to run a node.
pub struct NodeOptions {
    pub id: NodeId,
    /// The address other nodes reach this node's cluster port at.
    pub advertise: String,
    /// Where the raft log and state machine are kept.
    pub data_dir: PathBuf,
    pub secret: Arc<ClusterSecret>,
    pub timing: LeaseTiming,
    /// Addresses to reach nodes at instead of the ones they advertise.
    pub overrides: BTreeMap<NodeId, String>,
    /// Serves the cluster RPCs that are not raft's (such as artifact
    /// fetches); requests reach it authenticated.
    pub extension: Option<Arc<dyn RpcHandler>>,
}

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader is known yet")]
    NoLeader,
    #[error("forwarding to the leader: {0}")]
    Forward(#[from] CallError),
    #[error("{0}")]
    Raft(String),
}

/// The body of `/cluster/join`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    pub addr: String,
}

/// The body of `/cluster/remove`.
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

/// A running cluster node.
pub struct ClusterNode {
    id: NodeId,
    advertise: String,
    raft: Raft<TypeConfig, StateMachine>,
    sm: StateMachine,
    rpc: RpcClient,
    liveness: Arc<Liveness>,
    overrides: Arc<BTreeMap<NodeId, String>>,
    timing: LeaseTiming,
    extension: Option<Arc<dyn RpcHandler>>,
    /// When this node started: it cannot have heard anyone before, so no
    /// member is taken for dead until the owner timeout after it.
    started: Instant,
}

impl ClusterNode {
    /// Opens the node's store (resuming its vote, log and state), starts
    /// raft and serves the cluster port on `listener`.
    pub async fn start(options: NodeOptions, listener: TcpListener) -> anyhow::Result<Arc<ClusterNode>> {
        let (log, sm) = store::open(&options.data_dir)?;
        let t = &options.timing;
        let config = openraft::Config {
            cluster_name: "toil".into(),
            heartbeat_interval: t.heartbeat.as_millis() as u64,
            election_timeout_min: t.election_timeout.as_millis() as u64,
            election_timeout_max: t.raft_lease().as_millis() as u64,
            // A node back from a pause or a partition asks first whether it
            // would win; a leader its peers still hear keeps leading.
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()?;
        let rpc = RpcClient::new(options.secret.clone(), options.id);
        let liveness = Arc::new(Liveness::default());
        let overrides = Arc::new(options.overrides);
        let network = Network { rpc: rpc.clone(), liveness: liveness.clone(), overrides: overrides.clone() };
        let raft = Raft::new(options.id, Arc::new(config), network, log, sm.clone()).await?;
        let started = Instant::now();
        let node = Arc::new(ClusterNode {
            id: options.id,
            advertise: options.advertise,
            raft,
            sm,
            rpc,
            liveness,
            overrides,
            timing: options.timing,
            extension: options.extension,
            started,
        });
        let guard = Arc::new(ReplayGuard::open(options.id, &options.data_dir.join("rpc-epochs.json"))?);
        tokio::spawn(rpc::serve(listener, options.secret, guard, node.clone()));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Makes this node a one-member cluster, unless it already belongs to one.
    pub async fn initialize(&self) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(&self.advertise))]);
        self.raft.initialize(members).await.map_err(|e| anyhow::anyhow!("initializing the cluster: {e}"))
    }

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
            match self.rpc.call::<_, ()>(seed, "/cluster/join", &request, Duration::from_secs(10)).await {
                Ok(()) => tracing::info!(seed, "joined the cluster"),
                Err(e @ CallError::Refused { .. }) => anyhow::bail!("joining through {seed}: {e}"),
                Err(e) if Instant::now() > deadline => anyhow::bail!("joining through {seed}: {e}"),
                Err(e) => tracing::warn!("joining through {seed}: {e}; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The address to reach `node` at, from the membership (or an override).
    fn addr_of(&self, node: NodeId) -> Option<String> {
        let m = self.metrics();
        let advertised = m.membership_config.membership().get_node(&node)?.addr.clone();
        Some(Network::addr_of(&self.overrides, node, &advertised))
    }

    /// The leader's address, if a leader other than this node is known.
    fn leader_addr(&self) -> Result<Option<String>, ProposeError> {
        match self.metrics().current_leader {
            Some(l) if l == self.id => Ok(None),
            Some(l) => self.addr_of(l).map(Some).ok_or(ProposeError::NoLeader),
            None => Err(ProposeError::NoLeader),
        }
    }

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
                Ok(Some(addr)) => match self.rpc.call(&addr, "/cluster/propose", &command, Duration::from_secs(5)).await {
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

    /// Forwards `req` to the leader's `path` and returns `Some` when another
    /// node leads; `None` when this node leads and must do the work itself.
    async fn on_leader<Req: Serialize>(&self, path: &str, req: &Req) -> Result<Option<()>, ProposeError> {
        match self.leader_addr()? {
            None => Ok(None),
            Some(addr) => {
                self.rpc.call::<_, ()>(&addr, path, req, Duration::from_secs(10)).await?;
                Ok(Some(()))
            }
        }
    }

    /// Adds a node as a voter (on the leader: learner first, then voter).
    pub async fn add_member(&self, req: JoinRequest) -> Result<(), ProposeError> {
        if self.on_leader("/cluster/join", &req).await?.is_some() {
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
        let voters: std::collections::BTreeSet<NodeId> = self.metrics().membership_config.membership().voter_ids().chain([req.id]).collect();
        self.raft.change_membership(voters, false).await.map_err(|e| raft_err(&e))?;
        tracing::info!(node = req.id, addr = req.addr, "added a node to the cluster");
        Ok(())
    }

    /// Removes a node from the cluster; its daemons move to live nodes.
    pub async fn remove_member(&self, req: RemoveRequest) -> Result<(), ProposeError> {
        if self.on_leader("/cluster/remove", &req).await?.is_some() {
            return Ok(());
        }
        let m = self.metrics();
        let voters: std::collections::BTreeSet<NodeId> = m.membership_config.membership().voter_ids().filter(|n| *n != req.id).collect();
        if voters.is_empty() {
            return Err(ProposeError::Raft(format!("node {} is the last member; a cluster cannot remove its last node", req.id)));
        }
        self.raft.change_membership(voters, false).await.map_err(|e| ProposeError::Raft(e.to_string()))?;
        tracing::info!(node = req.id, "removed a node from the cluster");
        Ok(())
    }

    /// The state this node has applied.
    pub fn state(&self) -> ClusterState {
        self.sm.applied().state
    }

    /// Changes whenever this node applies commands.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.sm.changes()
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

    /// The members of the cluster (voters and learners), by id.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect()
    }

    /// While this node leads: gives every domain whose release has a daemon
    /// a live owner and spreads owners over live nodes
    /// ([`toil_cluster::place`]). A node is dead once not heard from for the
    /// owner timeout ([`toil_cluster::lease::is_silent`]); a domain leaves
    /// its owner with a handoff of the owner lease.
    pub async fn place_daemons(self: Arc<Self>) {
        let mut leading: Option<(u64, Instant)> = None;
        let mut known_leader = None;
        let mut last_pass = Instant::now();
        loop {
            tokio::time::sleep(self.timing.heartbeat).await;
            let m = self.metrics();
            if m.current_leader != known_leader {
                known_leader = m.current_leader;
                tracing::info!(term = m.current_term, "raft leader: {}", known_leader.map_or("none".to_string(), |l| format!("node {l}")));
            }
            // A pass far later than asked means this process stalled: its
            // stamps of the others are stale, so they get time to answer again.
            let stalled = last_pass.elapsed() > 3 * self.timing.heartbeat;
            last_pass = Instant::now();
            if m.state != ServerState::Leader || stalled {
                leading = None;
                continue;
            }
            let now = Instant::now();
            let since = match leading {
                Some((term, since)) if term == m.current_term => since,
                _ => leading.insert((m.current_term, now)).1,
            };
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let (grace, timeout) = (self.timing.heartbeat, self.timing.owner_timeout);
            let heard = |n: NodeId| self.liveness.last_heard(n).max(Some(self.started));
            let live: Vec<NodeId> = voters.iter().copied().filter(|n| *n == self.id || !is_silent(now, heard(*n), since, grace, timeout)).collect();
            let state = self.state();
            let (owners, domains) = (state.owners().clone(), state.daemon_domains());
            for command in place(&domains, &live, &owners, Some(self.id), self.timing.owner_lease()) {
                let Command::Assign { domain, node, .. } = &command else {
                    continue;
                };
                let why = match owners.get(domain) {
                    None => "it had no owner".to_string(),
                    Some(o) if live.contains(&o.node) => format!("spreading owners: node {} owned two or more domains more than node {node}", o.node),
                    Some(o) if !voters.contains(&o.node) => format!("node {} left the cluster", o.node),
                    Some(o) => match self.liveness.last_heard(o.node) {
                        Some(t) => format!("node {} was not heard from for {} ms", o.node, t.elapsed().as_millis()),
                        None => format!("node {} was never heard from by this node", o.node),
                    },
                };
                match self.raft.client_write(command.clone()).await {
                    Ok(r) => tracing::info!(domain, node, "daemon owner: {domain} to node {node} ({why}); {:?}", r.data),
                    Err(e) => {
                        tracing::warn!("placing daemons: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Stops raft (the cluster port closes with the process).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, (StatusCode, String)> {
    serde_json::to_vec(value).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed request: {e}")))
}

fn failed(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl RpcHandler for ClusterNode {
    fn handle(self: Arc<Self>, from: NodeId, path: &str, body: Bytes) -> Reply {
        if from != 0 {
            self.liveness.heard(from);
        }
        let raft = self.raft.clone();
        let path = path.to_string();
        match path.as_str() {
            "/raft/append" => Box::pin(async move { json(&raft.append_entries(parse(&body)?).await.map_err(failed)?) }),
            "/raft/vote" => Box::pin(async move { json(&raft.vote(parse(&body)?).await.map_err(failed)?) }),
            "/raft/pre-vote" => Box::pin(async move { json(&raft.pre_vote(parse(&body)?).await.map_err(failed)?) }),
            "/raft/snapshot" => Box::pin(async move {
                let req: SnapshotRequest = parse(&body)?;
                let snapshot = openraft::Snapshot { meta: req.meta, snapshot: req.data };
                json(&raft.install_full_snapshot(req.vote, snapshot).await.map_err(failed)?)
            }),
            "/cluster/propose" => Box::pin(async move {
                let command: Command = parse(&body)?;
                match raft.client_write(command).await {
                    Ok(r) => json(&r.data.ok_or_else(|| failed("the command had no result"))?),
                    Err(e) if e.forward_to_leader().is_some() => Err((StatusCode::MISDIRECTED_REQUEST, format!("not the leader: {e}"))),
                    Err(e) => Err(failed(e)),
                }
            }),
            "/cluster/join" => Box::pin(async move {
                let req: JoinRequest = parse(&body)?;
                self.add_member(req).await.map_err(failed)?;
                json(&())
            }),
            "/cluster/remove" => Box::pin(async move {
                let req: RemoveRequest = parse(&body)?;
                self.remove_member(req).await.map_err(failed)?;
                json(&())
            }),
            "/cluster/status" => Box::pin(async move { json(&self.status()) }),
            _ if self.extension.is_some() => self.extension.clone().expect("checked").handle(from, &path, body),
            _ => Box::pin(async move { Err((StatusCode::NOT_FOUND, format!("no cluster RPC {path}"))) }),
        }
    }
}
