//! A running cluster node: the raft instance and its lifecycle (start,
//! initialize, shut down), finding the leader to forward to, and the router
//! of the cluster port. What the node offers is split by who uses it:
//!
//! - `raft_rpc`: raft's own RPCs from the other members;
//! - [`admin`]: membership (joining, adding and removing members) and this
//!   node's view of the cluster for `toil status`;
//! - `app`: what the tiers use: proposals from any node, the applied
//!   state, calls to other members;
//! - `placement`: while this node leads, daemon owners on live nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Raft, RaftMetrics};
use serde::Serialize;
use toil_cluster::{LeaseTiming, NodeId};
use tokio::net::TcpListener;

use crate::auth::{ClusterSecret, ReplayGuard};
use crate::network::{Liveness, Network};
use crate::paths;
use crate::rpc::{self, CallError, Reply, RpcClient, RpcHandler};
use crate::store::{self, StateMachine};
use crate::tls::ClusterTls;
use crate::TypeConfig;

pub mod admin;
mod app;
mod placement;
mod raft_rpc;

/// The raft instance of a node.
type NodeRaft = Raft<TypeConfig, StateMachine>;

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

/// Why a proposal or a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader is known yet")]
    NoLeader,
    #[error("forwarding to the leader: {0}")]
    Forward(#[from] CallError),
    #[error("{0}")]
    Raft(String),
}

/// A running cluster node.
pub struct ClusterNode {
    id: NodeId,
    advertise: String,
    raft: NodeRaft,
    sm: StateMachine,
    rpc: RpcClient,
    liveness: Arc<Liveness>,
    overrides: Arc<BTreeMap<NodeId, String>>,
    timing: LeaseTiming,
    extension: Option<Arc<dyn RpcHandler>>,
    secret: Arc<ClusterSecret>,
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
        let tls = ClusterTls::new(&options.secret, options.id)?;
        let rpc = RpcClient::new(options.secret.clone(), &tls, options.id);
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
            secret: options.secret.clone(),
            started,
        });
        let guard = Arc::new(ReplayGuard::open(options.id, &options.data_dir.join("rpc-epochs.json"))?);
        tokio::spawn(rpc::serve(listener, tls, options.secret, guard, node.clone()));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The cluster secret, for sealing what the replicated state must
    /// carry but not show ([`ClusterSecret::seal`]).
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// Whether this node leads now (it may learn otherwise at any moment:
    /// what only one node may do is decided by the log, not by this).
    pub fn is_leader(&self) -> bool {
        self.metrics().state == openraft::ServerState::Leader
    }

    /// Makes this node a one-member cluster, unless it already belongs to one.
    pub async fn initialize(&self) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(&self.advertise))]);
        self.raft.initialize(members).await.map_err(|e| anyhow::anyhow!("initializing the cluster: {e}"))
    }

    /// Stops raft (the cluster port closes with the process).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
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
}

/// The router of the cluster port: every path of [`paths`], then the extension.
impl RpcHandler for ClusterNode {
    fn handle(self: Arc<Self>, from: NodeId, path: &str, body: Bytes) -> Reply {
        if from != 0 {
            self.liveness.heard(from);
        }
        let raft = self.raft.clone();
        match path {
            paths::APPEND => raft_rpc::append(raft, body),
            paths::VOTE => raft_rpc::vote(raft, body),
            paths::PRE_VOTE => raft_rpc::pre_vote(raft, body),
            paths::SNAPSHOT => raft_rpc::snapshot(raft, body),
            paths::PROPOSE => app::serve_propose(raft, body),
            paths::JOIN => admin::serve_join(self, body),
            paths::REMOVE => admin::serve_remove(self, body),
            paths::STATUS => Box::pin(async move { json(&self.status()) }),
            _ => match self.extension.clone() {
                Some(extension) => extension.handle(from, path, body),
                None => {
                    let path = path.to_string();
                    Box::pin(async move { Err((StatusCode::NOT_FOUND, format!("no cluster RPC {path}"))) })
                }
            },
        }
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
