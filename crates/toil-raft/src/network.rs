//! openraft's network: raft messages to other nodes over [`RpcClient`], and
//! a record of when each node was last heard from (the leader's liveness
//! view, which decides when a daemon owner is taken for dead).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use toil_cluster::NodeId;

use crate::paths;
use crate::rpc::{CallError, RpcClient};
use crate::TypeConfig;

/// When each node was last heard from: a reply to our request, or an
/// authenticated request of its own.
#[derive(Default)]
pub struct Liveness {
    heard: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    pub fn heard(&self, node: NodeId) {
        self.heard.lock().expect("liveness").insert(node, Instant::now());
    }

    pub fn last_heard(&self, node: NodeId) -> Option<Instant> {
        self.heard.lock().expect("liveness").get(&node).copied()
    }
}

/// The body of a [`paths::SNAPSHOT`] request (openraft's `Snapshot` is not serde).
#[derive(Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub vote: VoteOf<TypeConfig>,
    pub meta: SnapshotMetaOf<TypeConfig>,
    pub data: Vec<u8>,
}

/// Makes a [`Peer`] per target node.
pub struct Network {
    pub rpc: RpcClient,
    pub liveness: Arc<Liveness>,
    /// Addresses to use instead of the ones in the membership (NAT, tunnels).
    pub overrides: Arc<BTreeMap<NodeId, String>>,
}

impl Network {
    /// Where to reach `node`, advertised as `advertised`.
    pub fn addr_of(overrides: &BTreeMap<NodeId, String>, node: NodeId, advertised: &str) -> String {
        overrides.get(&node).cloned().unwrap_or_else(|| advertised.to_string())
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        let addr = Network::addr_of(&self.overrides, target, &node.addr);
        Peer { rpc: self.rpc.clone(), liveness: self.liveness.clone(), target, addr }
    }
}

/// One target node.
pub struct Peer {
    rpc: RpcClient,
    liveness: Arc<Liveness>,
    target: NodeId,
    addr: String,
}

impl Peer {
    async fn send<Req: Serialize, Resp: DeserializeOwned>(&self, path: &str, req: &Req, option: &RPCOption) -> Result<Resp, RPCError<TypeConfig>> {
        match self.rpc.call(&self.addr, path, req, option.soft_ttl()).await {
            Ok(r) => {
                self.liveness.heard(self.target);
                Ok(r)
            }
            Err(e @ (CallError::Unreachable { .. } | CallError::Timeout { .. })) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => {
                // It answered: alive, but it refused or failed the request.
                self.liveness.heard(self.target);
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send(paths::APPEND, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send(paths::VOTE, &rpc, &option).await
    }

    /// A refusal or an error counts as "would not grant": a node that has
    /// not started its lease, or an older node without this route.
    async fn pre_vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send(paths::PRE_VOTE, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = SnapshotRequest { vote, meta: snapshot.meta, data: snapshot.snapshot };
        tokio::select! {
            r = self.send(paths::SNAPSHOT, &req, &option) => Ok(r?),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
