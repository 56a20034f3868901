//! `toil node`: run an edge node that forms or joins a cluster; `toil
//! cluster`: operate on one (remove a node, make a secret).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use anyhow::Context;
use bytes::Bytes;
use toil_cluster::{BlobRef, NodeId};
use toil_config::Config;
use toil_deploy::{BlobFetch, BlobStore};
use toil_raft::rpc::{Reply, RpcHandler};
use toil_raft::{ClusterNode, ClusterSecret, NodeOptions, RemoveRequest, RpcClient};

use crate::host::{serve, Host};

#[derive(clap::Args)]
pub struct NodeArgs {
    /// This node's id in the cluster (1 or more, unique, kept across restarts).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// Where the node keeps its raft log, state and certificates.
    #[arg(long)]
    data_dir: PathBuf,
    /// The cluster port: raft and cluster RPCs between nodes.
    #[arg(long)]
    cluster: SocketAddr,
    /// The address other nodes reach the cluster port at (default: --cluster).
    #[arg(long)]
    advertise: Option<String>,
    /// The file holding the cluster secret every node shares (`toil cluster secret` makes one).
    #[arg(long)]
    secret_file: PathBuf,
    /// Form a new cluster with this node as its first member (ignored once it belongs to one).
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// Join the cluster this node (its cluster port) belongs to (ignored once a member).
    #[arg(long)]
    join: Option<String>,
    /// Reach node ID at ADDR instead of the address it advertises (NAT, tunnels). Repeatable.
    #[arg(long = "peer", value_name = "ID=ADDR", value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// HTTP/1.1, HTTP/2 and HTTP/3 (same port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener: deploy, status, metrics. Off loopback it speaks TLS only.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// The file holding the admin token (default: DATA_DIR/admin-token, made if missing).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The apps and limits to serve (artifacts must be built: `toil build`).
    #[arg(long, default_value = toil_config::FILE_NAME)]
    config: PathBuf,
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=ADDR")?;
    Ok((id.parse().map_err(|e| format!("node id {id:?}: {e}"))?, addr.to_string()))
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let secret = Arc::new(ClusterSecret::load(&args.secret_file)?);
    let store =
        BlobStore::open(&args.data_dir.join("artifacts")).with_context(|| format!("opening the artifact store in {}", args.data_dir.display()))?;
    let token_file = args.admin_token_file.clone().unwrap_or_else(|| args.data_dir.join("admin-token"));
    let admin_token = toil_edge::admin::load_or_create_token(&token_file)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.cluster).await.with_context(|| format!("binding the cluster port {}", args.cluster))?;
        let cluster_addr = listener.local_addr()?;
        let c = &config.cluster;
        let options = NodeOptions {
            id: args.id,
            advertise: args.advertise.clone().unwrap_or_else(|| cluster_addr.to_string()),
            data_dir: args.data_dir.clone(),
            secret,
            timing: c.lease_timing(),
            overrides: args.peers.iter().cloned().collect::<BTreeMap<_, _>>(),
            extension: Some(Arc::new(ArtifactRpc(store.clone()))),
        };
        let node = ClusterNode::start(options, listener).await?;
        if args.init {
            node.initialize().await?;
        }
        if let Some(seed) = &args.join {
            node.join(seed, Duration::from_secs(60)).await?;
        }
        println!("cluster node {} on {cluster_addr} (data {})", args.id, args.data_dir.display());
        let host = Host {
            name: format!("node-{}", args.id),
            node_id: args.id,
            listen: args.listen,
            admin: args.admin,
            cert_dir: args.data_dir.join("tls"),
            store,
            admin_token,
            fetch: Some(Arc::new(PeerFetch(node.clone()))),
            cluster: Some(node),
            watch: None,
            stop_on_stdin_eof: args.stop_on_stdin_eof,
        };
        serve(config, host).await
    })
}

/// The cluster RPC that hands artifacts to other nodes.
const ARTIFACT_RPC: &str = "/deploy/artifact";

/// Serves [`ARTIFACT_RPC`]: the body is a blob's hex SHA-256, the reply its bytes.
struct ArtifactRpc(BlobStore);

impl RpcHandler for ArtifactRpc {
    fn handle(self: Arc<Self>, _from: NodeId, path: &str, body: Bytes) -> Reply {
        if path != ARTIFACT_RPC {
            let path = path.to_string();
            return Box::pin(async move { Err((http::StatusCode::NOT_FOUND, format!("no cluster RPC {path}"))) });
        }
        let sha = String::from_utf8_lossy(&body).trim().to_string();
        // Reading and hashing a large blob must not hold up raft on this runtime.
        Box::pin(async move {
            let store = self.0.clone();
            let found = tokio::task::spawn_blocking(move || store.get_by_hash(&sha).ok_or(sha)).await;
            match found {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(sha)) => Err((http::StatusCode::NOT_FOUND, format!("no artifact {sha:.12}… on this node"))),
                Err(e) => Err((http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            }
        })
    }
}

/// Fetches artifacts from the node that accepted them, then from any other member.
struct PeerFetch(Arc<ClusterNode>);

impl BlobFetch for PeerFetch {
    fn fetch<'a>(&'a self, blob: &'a BlobRef, origin: NodeId) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move {
            let me = self.0.id();
            let mut candidates = vec![origin];
            candidates.extend(self.0.member_ids().into_iter().filter(|n| *n != origin));
            let mut why = Vec::new();
            for node in candidates.into_iter().filter(|n| *n != me) {
                match self.0.call_member(node, ARTIFACT_RPC, blob.sha256.clone().into_bytes(), Duration::from_secs(10)).await {
                    Ok(bytes) if toil_deploy::store::sha256_hex(&bytes) == blob.sha256 => return Ok(bytes.to_vec()),
                    Ok(_) => why.push(format!("node {node}: the bytes do not match the hash")),
                    Err(e) => why.push(format!("node {node}: {e}")),
                }
            }
            Err(if why.is_empty() { "no other node to fetch from".to_string() } else { why.join("; ") })
        })
    }
}

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Print a new random cluster secret (put it in a file every node reads).
    Secret,
    /// Remove a node from the cluster; its daemons move to live nodes.
    Remove {
        /// The node to remove.
        id: u64,
        /// Any member's cluster port.
        #[arg(long)]
        node: String,
        /// The cluster secret file.
        #[arg(long)]
        secret_file: PathBuf,
    },
}

pub fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Secret => {
            println!("{}", ClusterSecret::generate());
            Ok(())
        }
        ClusterCommand::Remove { id, node, secret_file } => {
            let secret = Arc::new(ClusterSecret::load(&secret_file)?);
            let rpc = RpcClient::new(secret.clone(), &toil_raft::tls::ClusterTls::new(&secret, 0)?, 0);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(rpc.call::<_, ()>(&node, toil_raft::paths::REMOVE, &RemoveRequest { id }, Duration::from_secs(15)))?;
            println!("removed node {id}");
            Ok(())
        }
    }
}
