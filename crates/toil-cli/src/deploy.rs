//! `toil deploy` and `toil rollback`: ship a domain's artifacts to a node's
//! admin API; the cluster replicates them and every node swaps to the new
//! version (see `toil-deploy`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use toil_abi::Tier;
use toil_build::{build_app, target_path, GuestToolchain};
use toil_deploy::api::{DeployReply, DeployRequest, RollbackRequest, BLOB_PATH, RELEASE_PATH, ROLLBACK_PATH};
use toil_raft::ClusterStatus;

use crate::admin_client::{AdminArgs, AdminClient};

#[derive(clap::Args)]
pub struct DeployArgs {
    /// A guest crate (built first), or a directory holding release.wasm /
    /// release-stream.wasm / release-cold.wasm. Default: the current directory.
    path: Option<PathBuf>,
    /// The domain to deploy (default: the config's app for PATH, else PATH's directory name).
    #[arg(long)]
    domain: Option<String>,
    /// A host name the domain answers (repeatable; default: the config's, else DOMAIN.localhost).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// IANA time zone of the daemon's cron schedules (default: the config's, else UTC).
    #[arg(long)]
    timezone: Option<String>,
    /// Use this file as the request-tier artifact (instead of PATH's).
    #[arg(long)]
    request: Option<PathBuf>,
    /// Use this file as the stream-tier artifact.
    #[arg(long)]
    stream: Option<PathBuf>,
    /// Use this file as the daemon-tier artifact.
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Return once the cluster committed the release, without waiting for every node to serve it.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The domain to roll back.
    domain: String,
    /// The version to serve (default: the one before the served one).
    version: Option<u64>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// What to upload: each tier's artifact file, and the release's fields.
struct Plan {
    domain: String,
    hosts: Vec<String>,
    timezone: Option<String>,
    files: Vec<(Tier, PathBuf)>,
    source: String,
}

fn plan(args: &DeployArgs) -> anyhow::Result<Plan> {
    let config = toil_config::Config::load(args.admin.config_path()).ok();
    let explicit: Vec<(Tier, PathBuf)> = [(Tier::Request, &args.request), (Tier::Stream, &args.stream), (Tier::Daemon, &args.daemon)]
        .into_iter()
        .filter_map(|(t, p)| Some((t, p.clone()?)))
        .collect();
    let path = std::path::absolute(args.path.clone().unwrap_or_else(|| PathBuf::from(".")))?;
    let app = config
        .as_ref()
        .and_then(|c| c.apps.iter().find(|a| a.dir == path || std::fs::canonicalize(&a.dir).ok() == std::fs::canonicalize(&path).ok()));
    let mut files = explicit.clone();
    let source;
    if !explicit.is_empty() && args.path.is_none() {
        source = "toil deploy (files)".to_string();
    } else if path.join("Cargo.toml").is_file() {
        let targets = match app {
            Some(a) => a.targets.clone(),
            None => toil_config::load_targets(&path)?,
        };
        let target_dir = config.as_ref().map_or_else(|| path.join("target/toil"), |c| c.guest_target_dir.clone());
        eprintln!("building {}", path.display());
        let built = build_app(&GuestToolchain::detect()?, &path, &targets, &target_dir)?;
        for tier in Tier::ALL {
            if let (Some(p), false) = (built.get(tier), explicit.iter().any(|(t, _)| *t == tier)) {
                files.push((tier, p.to_path_buf()));
            }
        }
        source = format!("toil deploy {}", path.display());
    } else if path.is_dir() {
        let targets = toil_config::Targets::default();
        for tier in Tier::ALL {
            let file = path.join(target_path(&targets, tier).file_name().expect("a file name"));
            if file.is_file() && !explicit.iter().any(|(t, _)| *t == tier) {
                files.push((tier, file));
            }
        }
        source = format!("toil deploy {}", path.display());
    } else {
        anyhow::bail!("{}: not a guest crate (no Cargo.toml) nor a directory of artifacts", path.display());
    }
    anyhow::ensure!(!files.is_empty(), "{}: no artifact to deploy (release.wasm, release-stream.wasm, release-cold.wasm)", path.display());
    let dir_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("app").to_ascii_lowercase();
    let domain = args.domain.clone().or_else(|| app.map(|a| a.domain.clone())).unwrap_or(dir_name);
    let hosts = if args.hosts.is_empty() { app.map(|a| a.hosts.clone()).unwrap_or_default() } else { args.hosts.clone() };
    let timezone = args.timezone.clone().or_else(|| app.map(|a| a.timezone.name().to_string()));
    files.sort_by_key(|(t, _)| Tier::ALL.iter().position(|x| x == t));
    Ok(Plan { domain, hosts, timezone, files, source })
}

pub fn run(args: DeployArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let client = AdminClient::new(&args.admin)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut req = DeployRequest {
            domain: plan.domain.clone(),
            hosts: plan.hosts.clone(),
            timezone: plan.timezone.clone(),
            source: plan.source.clone(),
            ..DeployRequest::default()
        };
        for (tier, file) in &plan.files {
            let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            eprint!("uploading {:<7} {} ({:.1} KiB) … ", tier.name(), file.display(), bytes.len() as f64 / 1024.0);
            let (status, text) = client.request(http::Method::POST, BLOB_PATH, bytes).await?;
            anyhow::ensure!(status.is_success(), "uploading {}: {status}: {}", file.display(), text.trim_end());
            let blob: toil_cluster::BlobRef = serde_json::from_str(&text).context("the node's reply to an upload")?;
            eprintln!("sha256 {:.12}…", blob.sha256);
            req.set_artifact(*tier, blob.sha256);
        }
        eprint!("validating and committing {} … ", plan.domain);
        let started = Instant::now();
        let (status, text) = client.request(http::Method::POST, RELEASE_PATH, serde_json::to_vec(&req)?).await?;
        if !status.is_success() {
            eprintln!("refused");
            anyhow::bail!("deploy of {} refused ({status}): {}", plan.domain, text.trim_end());
        }
        let reply: DeployReply = serde_json::from_str(&text)?;
        eprintln!("{:?}", started.elapsed());
        if reply.unchanged {
            println!("{} version {} already serves these artifacts; nothing changed", reply.domain, reply.version);
            return Ok(());
        }
        println!("deployed {} version {}", reply.domain, reply.version);
        if !args.no_wait {
            wait_until_served(&client, &reply).await?;
        }
        Ok(())
    })
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.admin)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let req = RollbackRequest { domain: args.domain.clone(), version: args.version };
        let (status, text) = client.request(http::Method::POST, ROLLBACK_PATH, serde_json::to_vec(&req)?).await?;
        anyhow::ensure!(status.is_success(), "rollback of {} refused ({status}): {}", args.domain, text.trim_end());
        let reply: DeployReply = serde_json::from_str(&text)?;
        if reply.unchanged {
            println!("{} already serves version {}", reply.domain, reply.version);
            return Ok(());
        }
        println!("{} rolled to version {}", reply.domain, reply.version);
        wait_until_served(&client, &reply).await
    })
}

/// A member not heard from for this long is taken to be down, and not waited for.
const DOWN_AFTER_MS: u64 = 2000;

/// Polls the node's status until every live member reports serving the
/// version. Members the leader has not heard from are named, not waited
/// for: they swap when they come back (asked through a follower, which
/// cannot tell, every member is waited for).
async fn wait_until_served(client: &AdminClient, reply: &DeployReply) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        let (status, text) = client.request(http::Method::GET, "/cluster/status", Vec::new()).await?;
        anyhow::ensure!(status.is_success(), "reading the cluster status: {}", text.trim_end());
        let s: ClusterStatus = serde_json::from_str(&text)?;
        // Only the leader hears from every member; a follower's silence from
        // another follower means nothing, so through a follower all are waited for.
        let leads = s.leader == Some(s.node);
        let (live, down): (Vec<_>, Vec<_>) = s.members.iter().partition(|m| !leads || m.heard_ms_ago.is_some_and(|ms| ms < DOWN_AFTER_MS));
        let serving = live.iter().filter(|m| s.served.get(&m.id).and_then(|d| d.get(&reply.domain)) == Some(&reply.version)).count();
        let mut line = format!("{serving}/{} nodes serve {} version {}", live.len(), reply.domain, reply.version);
        if !down.is_empty() {
            let ids: Vec<String> = down.iter().map(|m| m.id.to_string()).collect();
            line.push_str(&format!(" (not heard from, will swap when back: node {})", ids.join(", ")));
        }
        if line != last {
            eprintln!("  {line} ({:?})", started.elapsed());
            last = line;
        }
        if serving == live.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{last} after 60 s; see the nodes' logs (a node that cannot load the release keeps serving the previous one)")
}
