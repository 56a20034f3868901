//! `toil dev`: build the configured apps and serve them on this machine;
//! [`serve`] is also how `toil node` serves (with a raft log instead of an
//! in-memory one).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use toil_abi::Tier;
use toil_build::{build_app, target_path, GuestToolchain};
use toil_cluster::{place, Applied, ClusterState, Command, NodeId};
use toil_config::{AppConfig, Config, QuicConfig};
use toil_daemon::{ClaimLog, DaemonSettings, Daemons, LocalLog, LogError, TickError};
use toil_edge::domains::Domain;
use toil_edge::keys::NodeKeys;
use toil_edge::sessions::SessionLimits;
use toil_edge::workers::{QuicWorkers, Steering, UdpGroup};
use toil_edge::{admin, quic, tcp, tls::DevCert, DomainTable, Edge};
use toil_metrics::Registry;
use toil_raft::{ClusterNode, ClusterStatus};
use toil_runtime::daemon::DaemonApp;
use toil_runtime::request::RequestApp;
use toil_runtime::stream::StreamApp;
use toil_runtime::{Limits, Runtime, RuntimeConfig};
use tokio::net::TcpListener;

pub fn run(config_path: &Path, build: bool, stop_on_stdin_eof: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    if build {
        let tc = GuestToolchain::detect()?;
        for app in &config.apps {
            eprintln!("building {} ({})", app.domain, app.dir.display());
            build_app(&tc, &app.dir, &app.targets, &config.guest_target_dir)?;
        }
    }
    let host = Host {
        name: "dev".into(),
        node_id: 1,
        listen: config.dev.listen,
        admin: config.dev.admin,
        cert_dir: config.dev.cert_dir.clone(),
        cluster: None,
        stop_on_stdin_eof,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(config, host))
}

/// Who serves: `toil dev` (one node, an in-memory log) or a cluster node.
pub struct Host {
    /// The node's name (given to `daemon_start`).
    pub name: String,
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub cert_dir: PathBuf,
    /// The raft node of `toil node`; `None` for `toil dev`.
    pub cluster: Option<Arc<ClusterNode>>,
    pub stop_on_stdin_eof: bool,
}

/// The raft log as the daemon tier's claim log.
struct RaftLog(Arc<ClusterNode>);

impl ClaimLog for RaftLog {
    fn propose(&self, command: Command) -> Pin<Box<dyn Future<Output = Result<Applied, LogError>> + Send + '_>> {
        Box::pin(async move { self.0.propose(command).await.map_err(|e| LogError(e.to_string())) })
    }

    fn state(&self) -> ClusterState {
        self.0.state()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.0.changes()
    }
}

/// The runtime settings a config asks for.
pub fn runtime_config(config: &Config) -> RuntimeConfig {
    let l = &config.limits;
    RuntimeConfig {
        limits: Limits {
            deadline: l.deadline,
            memory_bytes: l.memory_bytes,
            max_request_body: l.max_request_body,
            max_response_body: l.max_response_body,
            max_frame_bytes: l.max_frame_bytes,
            max_outbound_bytes_per_event: l.max_outbound_bytes_per_event,
            ..Limits::default()
        },
        max_instances: l.max_instances,
        ..RuntimeConfig::default()
    }
}

/// The session caps a config asks for.
pub fn session_limits(config: &Config) -> SessionLimits {
    let l = &config.limits;
    SessionLimits {
        max_sessions: l.max_sessions,
        max_sessions_per_domain: l.max_sessions_per_domain,
        send_stall_timeout: l.send_stall_timeout,
        ..SessionLimits::default()
    }
}

/// Loads every artifact an app has: the request and stream tiers for the
/// edge, the daemon tier for this node's single-node cluster.
fn load_app(runtime: &Runtime, registry: &Registry, app: &AppConfig) -> anyhow::Result<(Domain, Option<DaemonApp>)> {
    let mut domain = Domain { name: app.domain.clone(), request: None, stream: None };
    let mut daemon = None;
    for tier in Tier::ALL {
        let path = app.artifact(target_path(&app.targets, tier));
        if !path.exists() {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let err = |e: toil_runtime::LoadError| anyhow::anyhow!("{}: {} artifact {}: {e}", app.domain, tier, path.display());
        match tier {
            Tier::Request => domain.request = Some(Arc::new(RequestApp::load(runtime, registry, &app.domain, &bytes).map_err(err)?)),
            Tier::Stream => domain.stream = Some(Arc::new(StreamApp::load(runtime, registry, &app.domain, &bytes).map_err(err)?)),
            Tier::Daemon => daemon = Some(DaemonApp::load(runtime, registry, &app.domain, &bytes, app.timezone).map_err(err)?),
        }
    }
    Ok((domain, daemon))
}

/// The node's admin endpoints beyond metrics: `POST
/// /daemon/tick?domain=D&task=T` (`toil tick`) and `GET /cluster/status`
/// (`toil status`, JSON).
struct NodeAdmin {
    daemons: Arc<Daemons>,
    log: Arc<dyn ClaimLog>,
    cluster: Option<Arc<ClusterNode>>,
    /// Task names by domain, in index order.
    task_names: BTreeMap<String, Vec<String>>,
}

impl NodeAdmin {
    fn status(&self) -> ClusterStatus {
        let mut status = match &self.cluster {
            Some(node) => node.status(),
            None => ClusterStatus::single_node(&self.log.state()),
        };
        for t in &mut status.tasks {
            t.name = self.task_names.get(&t.domain).and_then(|names| names.get(t.task as usize)).cloned();
        }
        status
    }
}

impl admin::AdminRoutes for NodeAdmin {
    fn route(&self, method: &http::Method, path: &str, query: &str) -> Option<admin::AdminReply> {
        if path == "/cluster/status" {
            let status = serde_json::to_string_pretty(&self.status()).unwrap_or_default();
            return Some(Box::pin(async move { (http::StatusCode::OK, status) }));
        }
        if path != "/daemon/tick" {
            return None;
        }
        let daemons = self.daemons.clone();
        let (method, query) = (method.clone(), query.to_string());
        Some(Box::pin(async move {
            use http::StatusCode;
            if method != http::Method::POST {
                return (StatusCode::METHOD_NOT_ALLOWED, "use POST\n".to_string());
            }
            let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
            let (Some(domain), Some(task)) = (param("domain"), param("task")) else {
                return (StatusCode::BAD_REQUEST, "expected ?domain=D&task=T\n".to_string());
            };
            match daemons.tick_now(&domain, &task).await {
                Ok(fire_time) => (StatusCode::OK, format!("fired {domain} {task} (fire_time_ms {fire_time})\n")),
                Err(e @ (TickError::NoDomain(_) | TickError::NoTask { .. })) => (StatusCode::NOT_FOUND, format!("{e}\n")),
                Err(e) => (StatusCode::CONFLICT, format!("{e}\n")),
            }
        }))
    }
}

/// TCP listeners and QUIC worker sockets, all on one port.
struct Listeners {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<UdpGroup>,
    steering: Steering,
}

/// Binds TCP and the QUIC workers' UDP sockets on the same port (when the
/// port is 0, on the same free port). A 127.0.0.1 address also binds [::1]
/// when it can, as `localhost` means both: browsers try `*.localhost` over
/// IPv6 first, and WebTransport does not fall back to IPv4.
fn bind(addr: SocketAddr, quic: &QuicConfig) -> anyhow::Result<Listeners> {
    let steering = match quic.steering.as_deref() {
        Some("userspace") => Steering::Userspace,
        Some(_) => Steering::Bpf,
        None => Steering::default_for_platform(),
    };
    let bind_one = |addr: SocketAddr| -> anyhow::Result<(std::net::TcpListener, UdpGroup)> {
        let tcp = std::net::TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
        let group = UdpGroup::bind(tcp.local_addr()?, quic.workers, steering)
            .with_context(|| format!("binding UDP {} ({steering:?} steering)", tcp.local_addr().unwrap_or(addr)))?;
        tcp.set_nonblocking(true)?;
        Ok((tcp, group))
    };
    for attempt in 0.. {
        let (tcp, udp) = match bind_one(addr) {
            Ok(pair) => pair,
            Err(_) if addr.port() == 0 && attempt < 20 => continue,
            Err(e) => return Err(e),
        };
        let mut listeners = Listeners { tcp: vec![tcp], udp: vec![udp], steering };
        if addr.ip() == std::net::Ipv4Addr::LOCALHOST {
            let port = listeners.tcp[0].local_addr()?.port();
            match bind_one(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))) {
                Ok((tcp, udp)) => {
                    listeners.tcp.push(tcp);
                    listeners.udp.push(udp);
                }
                Err(e) if addr.port() == 0 && attempt < 20 => {
                    tracing::debug!("port {port} is taken on [::1] ({e:#}); trying another");
                    continue;
                }
                Err(e) => tracing::warn!("serving IPv4 loopback only: {e:#}"),
            }
        }
        return Ok(listeners);
    }
    unreachable!()
}

pub async fn serve(config: Config, host: Host) -> anyhow::Result<()> {
    let registry = Registry::new();
    let runtime = Runtime::new(runtime_config(&config))?;
    let domains = Arc::new(DomainTable::new());
    let mut served = Vec::new();
    let mut daemon_apps = Vec::new();
    for app in &config.apps {
        let (domain, daemon) = load_app(&runtime, &registry, app)?;
        daemon_apps.extend(daemon.map(Arc::new));
        let default = config.default_domain.as_deref() == Some(app.domain.as_str()) || config.apps.len() == 1;
        let routes: Vec<String> = domain.request.iter().flat_map(|r| r.routes().map(|(m, p)| format!("{m} {p}"))).collect();
        let streams: Vec<String> = domain.stream.iter().flat_map(|s| s.names().map(|n| format!("/{n}"))).collect();
        served.push((app, routes, streams));
        domains.insert(domain, &app.hosts, default);
    }

    let cert = DevCert::load_or_create(&host.cert_dir)?;
    let keys = NodeKeys::load_or_create(&host.cert_dir)?;
    let server_config = quic::server_config(&cert, &keys, config.limits.idle_timeout)?;
    let listeners = bind(host.listen, &config.quic)?;
    let (workers, steering) = (config.quic.workers, listeners.steering);
    let listen = listeners.tcp[0].local_addr()?;
    let also = listeners.tcp.iter().skip(1).map(|l| l.local_addr().map(|a| format!(" and {a}"))).collect::<Result<String, _>>()?;
    let admin_listener = TcpListener::bind(host.admin).await.with_context(|| format!("binding admin {}", host.admin))?;
    let admin_addr = admin_listener.local_addr()?;

    let mut edge = Edge::new(domains, config.limits.max_request_body, session_limits(&config), registry.clone());
    edge.alt_svc = http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", listen.port())).ok();
    let dev_info = serde_json::json!({
        "certificateSha256": cert.sha256_hex(),
        "h3Port": listen.port(),
        "certificateNotAfter": cert.not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    edge.dev_info = Some(serde_json::to_vec(&dev_info)?.into());
    let edge = Arc::new(edge);

    let port = listen.port();
    println!("toil {}: serving {} app(s) from {}", host.name, served.len(), config.file.display());
    for (app, routes, streams) in &served {
        let host = app.hosts.first().map(String::as_str).unwrap_or("localhost");
        println!("  {:<8} http://{host}:{port}/  (HTTP/1.1, HTTP/2 cleartext)  https://{host}:{port}/  (HTTP/3)", app.domain);
        if !routes.is_empty() {
            println!("  {:<8} routes: {}", "", routes.join(", "));
        }
        if !streams.is_empty() {
            println!(
                "  {:<8} WebTransport streams: {}",
                "",
                streams.iter().map(|s| format!("https://{host}:{port}{s}")).collect::<Vec<_>>().join(", ")
            );
        }
    }
    for d in &daemon_apps {
        let tasks: Vec<String> = d.tasks().iter().map(|t| format!("{} ({})", t.name, t.schedule.expr())).collect();
        println!("  {:<8} daemon tasks: {}   (fire one now: toil tick {} TASK)", d.domain(), tasks.join(", "), d.domain());
    }
    println!("  quic     {workers} worker(s), {steering:?} steering; listening on {listen}{also}");
    println!("  metrics  http://{admin_addr}/metrics");
    let valid_days = cert.not_after.duration_since(std::time::SystemTime::now()).map(|d| d.as_secs() / 86400).unwrap_or(0);
    println!("  dev certificate SHA-256 (serverCertificateHashes): {}  (valid {valid_days} more days)", cert.sha256_hex());
    println!(
        "listening http={listen} h3={listen} admin={admin_addr} cert={} cert-sha256={}",
        host.cert_dir.join("cert.pem").display(),
        cert.sha256_hex()
    );

    // The daemon tier as a single-node cluster: every domain's daemon is owned here.
    // The daemon tier: every domain's daemon is loaded here (a warm standby);
    // the ones this node owns run. `toil dev` owns them all.
    let daemon_settings = DaemonSettings {
        grace: config.cluster.tick_grace,
        claim_lead: config.cluster.claim_lead,
        ..DaemonSettings::new(host.node_id, host.name.clone())
    };
    let domains: Vec<String> = daemon_apps.iter().map(|a| a.domain().to_string()).collect();
    let task_names = daemon_apps.iter().map(|a| (a.domain().to_string(), a.tasks().iter().map(|t| t.name.clone()).collect())).collect();
    let log: Arc<dyn ClaimLog> = match &host.cluster {
        Some(node) => {
            tokio::spawn(node.clone().place_daemons(domains));
            Arc::new(RaftLog(node.clone()))
        }
        None => {
            let log = Arc::new(LocalLog::default());
            for command in place(&domains, &[host.node_id], log.state().owners(), None) {
                log.propose(command).await?;
            }
            log
        }
    };
    let daemons = Daemons::start(daemon_apps, log.clone(), daemon_settings, &registry);
    let node_admin = NodeAdmin { daemons, log, cluster: host.cluster.clone(), task_names };
    let quic_workers = QuicWorkers::start(listeners.udp, server_config, &keys, edge.clone())?;
    for l in listeners.tcp {
        tokio::spawn(tcp::serve(TcpListener::from_std(l)?, edge.clone()));
    }
    tokio::select! {
        () = admin::serve(admin_listener, registry, Some(Arc::new(node_admin))) => {}
        r = tokio::signal::ctrl_c() => { r?; eprintln!("toil {}: shutting down", host.name); }
        () = stdin_closed(), if host.stop_on_stdin_eof => { eprintln!("toil {}: stdin closed, shutting down", host.name); }
    }
    if let Some(node) = &host.cluster {
        node.shutdown().await;
    }
    // Open sessions are closed with SHUTDOWN; their boxes run `close`.
    edge.shutdown.send_replace(true);
    tokio::task::spawn_blocking(move || quic_workers.shutdown(Duration::from_secs(3))).await?;
    Ok(())
}

async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}
