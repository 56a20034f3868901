//! `toil node`: run an edge node that forms or joins a cluster; `toil
//! cluster`: operate on one (remove a node, make a secret).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use toil_config::Config;
use toil_raft::{ClusterNode, ClusterSecret, NodeOptions, RemoveRequest, RpcClient, Timing};

use crate::dev::{serve, Host};

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
    /// Admin listener: metrics, status.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
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
            timing: Timing { heartbeat: c.heartbeat, election_timeout: c.election_timeout, owner_timeout: c.owner_timeout },
            overrides: args.peers.iter().cloned().collect::<BTreeMap<_, _>>(),
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
            cluster: Some(node),
            stop_on_stdin_eof: args.stop_on_stdin_eof,
        };
        serve(config, host).await
    })
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
            let rpc = RpcClient::new(Arc::new(ClusterSecret::load(&secret_file)?), 0);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(rpc.call::<_, ()>(&node, "/cluster/remove", &RemoveRequest { id }, Duration::from_secs(15)))?;
            println!("removed node {id}");
            Ok(())
        }
    }
}
