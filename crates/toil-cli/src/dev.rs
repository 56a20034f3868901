//! `toil dev`: build the configured apps and serve them on this machine,
//! rebuilding and swapping an app when its sources change; [`serve`] is
//! also how `toil node` serves (with a raft log instead of an in-memory one).
//!
//! Both serve what the log's releases say: the configured apps are offered
//! as releases at start (a domain already deployed keeps its release), and
//! `toil deploy`, `toil rollback` and dev reloads go through the same
//! [`Deployer`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use toil_abi::stream::close_code;
use toil_abi::Tier;
use toil_build::{build_app, target_path, GuestToolchain};
use toil_cluster::{place, Applied, ClusterState, Command, NodeId};
use toil_config::{AppConfig, Config, QuicConfig};
use toil_daemon::{ClaimLog, DaemonSettings, Daemons, LocalLog, LogError, TickError};
use toil_deploy::api::{DeployRequest, RollbackRequest, BLOB_PATH, RELEASE_PATH, ROLLBACK_PATH};
use toil_deploy::{BlobFetch, BlobStore, DeployError, DeploySettings, Deployer};
use toil_edge::admin::{AdminReply, AdminRequest, AdminSecurity};
use toil_edge::conns::{self, ConnLimits, ConnTable, ConnTimeouts};
use toil_edge::keys::NodeKeys;
use toil_edge::sessions::SessionLimits;
use toil_edge::workers::{QuicWorkers, Steering, UdpGroup};
use toil_edge::{admin, quic, tcp, tls::DevCert, DomainTable, Edge};
use toil_metrics::Registry;
use toil_raft::{ClusterNode, ClusterStatus};
use toil_runtime::admission::AdmissionLimits;
use toil_runtime::{Limits, Runtime, RuntimeConfig};
use tokio::net::TcpListener;

use crate::admin_client::DEV_TOKEN_FILE;

pub fn run(config_path: &Path, build: bool, watch: bool, stop_on_stdin_eof: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let toolchain = if build { Some(GuestToolchain::detect()?) } else { None };
    if let Some(tc) = &toolchain {
        for app in &config.apps {
            eprintln!("building {} ({})", app.domain, app.dir.display());
            build_app(tc, &app.dir, &app.targets, &config.guest_target_dir)?;
        }
    }
    let dev_dir = config.dev.cert_dir.clone();
    let host = Host {
        name: "dev".into(),
        node_id: 1,
        listen: config.dev.listen,
        admin: config.dev.admin,
        cert_dir: dev_dir.clone(),
        store: {
            let dir = dev_dir.with_file_name("toil-dev-artifacts");
            BlobStore::open(&dir).with_context(|| format!("opening the dev artifact store {} (next to dev.certDir)", dir.display()))?
        },
        admin_token: admin::load_or_create_token(&dev_dir.join(DEV_TOKEN_FILE))?,
        cluster: None,
        fetch: None,
        watch: if watch { toolchain } else { None },
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
    /// Where uploaded and fetched artifacts are kept.
    pub store: BlobStore,
    /// What admin requests must carry (`Authorization: Bearer`).
    pub admin_token: String,
    /// The raft node of `toil node`; `None` for `toil dev`.
    pub cluster: Option<Arc<ClusterNode>>,
    /// Fetches artifacts from other nodes (`toil node`).
    pub fetch: Option<Arc<dyn BlobFetch>>,
    /// `toil dev`: rebuild and swap an app when its sources change, with this toolchain.
    pub watch: Option<GuestToolchain>,
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
            max_response_headers: l.max_response_headers,
            max_response_header_bytes: l.max_response_header_bytes,
            ..Limits::default()
        },
        max_instances: l.max_instances,
        admission: AdmissionLimits {
            max_running: l.max_requests_per_domain,
            max_waiting: l.request_queue_per_domain,
            max_wait: l.request_queue_timeout,
        },
        ..RuntimeConfig::default()
    }
}

/// What one QUIC connection may make the node hold.
pub fn connection_limits(config: &Config) -> quic::ConnectionLimits {
    let l = &config.limits;
    quic::ConnectionLimits {
        idle_timeout: l.idle_timeout,
        receive_window: l.connection_receive_window,
        max_bidi_streams: l.max_streams_per_connection,
        ..quic::ConnectionLimits::default()
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

/// Offers a configured app's built artifacts as a release of its domain
/// (`only_if_new`: unless the domain already has one).
async fn offer_app(deployer: &Deployer, app: &AppConfig, source: &str, only_if_new: bool) -> Result<toil_deploy::api::DeployReply, DeployError> {
    let mut req = DeployRequest {
        domain: app.domain.clone(),
        hosts: app.hosts.clone(),
        timezone: Some(app.timezone.name().to_string()),
        source: source.to_string(),
        ..DeployRequest::default()
    };
    for tier in Tier::ALL {
        let path = app.artifact(target_path(&app.targets, tier));
        let Ok(bytes) = std::fs::read(&path) else { continue };
        req.set_artifact(tier, deployer.upload(bytes.into()).await?.sha256);
    }
    deployer.deploy(req, only_if_new).await
}

/// The node's admin endpoints beyond metrics:
/// - `GET /cluster/status` (`toil status`, JSON);
/// - `POST /daemon/tick?domain=D&task=T` (`toil tick`);
/// - `POST /deploy/blob`, `/deploy/release`, `/deploy/rollback` (`toil deploy`, `toil rollback`).
struct NodeAdmin {
    daemons: Arc<Daemons>,
    log: Arc<dyn ClaimLog>,
    cluster: Option<Arc<ClusterNode>>,
    deployer: Arc<Deployer>,
}

impl NodeAdmin {
    fn status(&self) -> ClusterStatus {
        match &self.cluster {
            Some(node) => node.status(),
            None => ClusterStatus::single_node(&self.log.state()),
        }
    }
}

fn reply_json<T: serde::Serialize>(result: Result<T, DeployError>) -> (http::StatusCode, String) {
    match result {
        Ok(v) => (http::StatusCode::OK, serde_json::to_string(&v).unwrap_or_default()),
        Err(e) if e.is_client_error() => (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
        Err(e) => (http::StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

impl admin::AdminRoutes for NodeAdmin {
    fn route(&self, req: AdminRequest) -> Result<AdminReply, AdminRequest> {
        use http::{Method, StatusCode};
        let post_only = |req: &AdminRequest| req.method != Method::POST;
        let path = req.path.clone();
        match path.as_str() {
            "/cluster/status" => {
                let status = serde_json::to_string_pretty(&self.status()).unwrap_or_default();
                Ok(Box::pin(async move { (StatusCode::OK, status) }))
            }
            "/daemon/tick" | BLOB_PATH | RELEASE_PATH | ROLLBACK_PATH if post_only(&req) => {
                Ok(Box::pin(async move { (StatusCode::METHOD_NOT_ALLOWED, "use POST\n".to_string()) }))
            }
            "/daemon/tick" => {
                let daemons = self.daemons.clone();
                Ok(Box::pin(async move {
                    let (Some(domain), Some(task)) = (req.param("domain"), req.param("task")) else {
                        return (StatusCode::BAD_REQUEST, "expected ?domain=D&task=T\n".to_string());
                    };
                    match daemons.tick_now(domain, task).await {
                        Ok(fire_time) => (StatusCode::OK, format!("fired {domain} {task} (fire_time_ms {fire_time})\n")),
                        Err(e @ (TickError::NoDomain(_) | TickError::NoTask { .. })) => (StatusCode::NOT_FOUND, format!("{e}\n")),
                        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")),
                    }
                }))
            }
            BLOB_PATH => {
                let deployer = self.deployer.clone();
                Ok(Box::pin(async move { reply_json(deployer.upload(req.body).await) }))
            }
            RELEASE_PATH => {
                let deployer = self.deployer.clone();
                Ok(Box::pin(async move {
                    match serde_json::from_slice::<DeployRequest>(&req.body) {
                        Ok(r) => reply_json(deployer.deploy(r, false).await),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("malformed deploy request: {e}\n")),
                    }
                }))
            }
            ROLLBACK_PATH => {
                let deployer = self.deployer.clone();
                Ok(Box::pin(async move {
                    match serde_json::from_slice::<RollbackRequest>(&req.body) {
                        Ok(r) => reply_json(deployer.rollback(r).await),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("malformed rollback request: {e}\n")),
                    }
                }))
            }
            _ => Err(req),
        }
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
    trim_heap_periodically();
    let registry = Registry::new();
    let runtime = Runtime::new(runtime_config(&config)).with_context(|| {
        format!(
            "reserving the instance pool ({} instances of {} MiB memory each: lower limits.maxInstances or limits.memoryMb)",
            config.limits.max_instances,
            config.limits.memory_bytes >> 20
        )
    })?;
    let domains = Arc::new(DomainTable::new());

    // The log: raft on a cluster node; in dev, an in-memory log on which this node owns every daemon.
    let log: Arc<dyn ClaimLog> = match &host.cluster {
        Some(node) => {
            tokio::spawn(node.clone().place_daemons());
            Arc::new(RaftLog(node.clone()))
        }
        None => {
            let log: Arc<dyn ClaimLog> = Arc::new(LocalLog::default());
            tokio::spawn(own_every_daemon(log.clone(), host.node_id));
            log
        }
    };
    let daemon_settings = DaemonSettings {
        grace: config.cluster.tick_grace,
        claim_lead: config.cluster.claim_lead,
        owner_lease: config.cluster.lease_timing().owner_lease(),
        ..DaemonSettings::new(host.node_id, host.name.clone())
    };
    let daemons = Daemons::start(Vec::new(), log.clone(), daemon_settings, &registry);
    let (drain, close_code) = match &host.cluster {
        Some(_) => (config.deploy.drain_timeout, close_code::REDEPLOYED),
        None => (Duration::ZERO, close_code::RELOADED),
    };
    let default_domain = config.default_domain.clone().or_else(|| (config.apps.len() == 1).then(|| config.apps[0].domain.clone()));
    let deployer = Deployer::new(
        DeploySettings { node: host.node_id, default_domain, drain, close_code },
        runtime,
        registry.clone(),
        host.store.clone(),
        domains.clone(),
        daemons.clone(),
        log.clone(),
        host.fetch.clone(),
    );

    // The configured apps are offered as releases; a domain the cluster
    // already serves keeps its release (`toil deploy` changes it).
    if host.cluster.is_none() {
        for app in &config.apps {
            offer_app(&deployer, app, "config", true).await.with_context(|| format!("app {}", app.domain))?;
        }
        if let Some((domain, e)) = deployer.sync().await.into_iter().next() {
            return Err(anyhow::anyhow!(e).context(format!("app {domain}")));
        }
    } else {
        tokio::spawn(offer_until_committed(deployer.clone(), config.apps.clone()));
    }
    tokio::spawn(deployer.clone().run());
    tokio::spawn(deployer.clone().report_served());

    let cert = DevCert::load_or_create(&host.cert_dir)?;
    let keys = NodeKeys::load_or_create(&host.cert_dir)?;
    let server_config = quic::server_config(&cert, &keys, &connection_limits(&config))?;
    let listeners = bind(host.listen, &config.quic)?;
    let (workers, steering) = (config.quic.workers, listeners.steering);
    let listen = listeners.tcp[0].local_addr()?;
    let also = listeners.tcp.iter().skip(1).map(|l| l.local_addr().map(|a| format!(" and {a}"))).collect::<Result<String, _>>()?;
    let admin_listener = TcpListener::bind(host.admin).await.with_context(|| format!("binding admin {}", host.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    // The admin token must not cross a network in the clear.
    let admin_tls = if admin_addr.ip().is_loopback() { None } else { Some(admin::tls_config(&cert)?) };

    let mut edge = Edge::new(domains.clone(), config.limits.max_request_body, session_limits(&config), registry.clone());
    let l = &config.limits;
    let wanted = ConnLimits { max_total: l.max_connections, max_per_ip: l.max_connections_per_address };
    let conn_limits = match conns::raise_fd_limit() {
        Ok(fds) => {
            let limits = ConnLimits::within_fd_limit(wanted, fds);
            tracing::info!(fds, max_connections = limits.max_total, "open-file limit");
            if limits.max_total < wanted.max_total {
                tracing::warn!(
                    "the open-file limit of {fds} allows {} TCP connections, not limits.maxConnections = {} (raise the hard RLIMIT_NOFILE)",
                    limits.max_total,
                    wanted.max_total
                );
            }
            limits
        }
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            wanted
        }
    };
    edge.conns = ConnTable::new(conn_limits);
    // QUIC connections cost no descriptor, only memory (their buffers).
    edge.quic_conns = ConnTable::new(wanted);
    edge.timeouts = ConnTimeouts { header: l.header_timeout, idle: l.request_idle_timeout };
    edge.body_timeout = l.body_timeout;
    edge.max_streams_per_connection = l.max_streams_per_connection;
    edge.alt_svc = http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", listen.port())).ok();
    let dev_info = serde_json::json!({
        "certificateSha256": cert.sha256_hex(),
        "h3Port": listen.port(),
        "certificateNotAfter": cert.not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    edge.dev_info = Some(serde_json::to_vec(&dev_info)?.into());
    let edge = Arc::new(edge);

    let port = listen.port();
    println!("toil {}: serving {} app(s) from {}", host.name, config.apps.len(), config.file.display());
    for app in &config.apps {
        let first_host = app.hosts.first().map(String::as_str).unwrap_or("localhost");
        println!("  {:<8} http://{first_host}:{port}/  (HTTP/1.1, HTTP/2 cleartext)  https://{first_host}:{port}/  (HTTP/3)", app.domain);
        let Some(domain) = domains.get(&app.domain) else {
            println!("  {:<8} (the cluster's release is loading)", "");
            continue;
        };
        let routes: Vec<String> = domain.request.iter().flat_map(|r| r.routes().map(|(m, p)| format!("{m} {p}"))).collect();
        if !routes.is_empty() {
            println!("  {:<8} routes: {}", "", routes.join(", "));
        }
        let streams: Vec<String> = domain.stream.iter().flat_map(|s| s.names().map(|n| format!("https://{first_host}:{port}/{n}"))).collect();
        if !streams.is_empty() {
            println!("  {:<8} WebTransport streams: {}", "", streams.join(", "));
        }
        if let Some(d) = daemons.app(&app.domain) {
            let tasks: Vec<String> = d.tasks().iter().map(|t| format!("{} ({})", t.name, t.schedule.expr())).collect();
            println!("  {:<8} daemon tasks: {}   (fire one now: toil tick {} TASK)", "", tasks.join(", "), app.domain);
        }
    }
    println!("  quic     {workers} worker(s), {steering:?} steering; listening on {listen}{also}");
    let scheme = if admin_tls.is_some() { "https" } else { "http" };
    println!("  admin    {scheme}://{admin_addr}/  (metrics: /metrics; token: Authorization: Bearer <token>)");
    if host.watch.is_some() {
        println!("  reload   watching the apps' sources; an edit rebuilds and swaps the app (open sessions close with RELOADED)");
    }
    let valid_days = cert.not_after.duration_since(std::time::SystemTime::now()).map(|d| d.as_secs() / 86400).unwrap_or(0);
    println!("  dev certificate SHA-256 (serverCertificateHashes): {}  (valid {valid_days} more days)", cert.sha256_hex());
    println!(
        "listening http={listen} h3={listen} admin={admin_addr} cert={} cert-sha256={}",
        host.cert_dir.join("cert.pem").display(),
        cert.sha256_hex()
    );

    if let Some(tc) = host.watch.clone() {
        tokio::spawn(reload_on_change(tc, config.clone(), deployer.clone()));
    }
    let node_admin = NodeAdmin { daemons, log, cluster: host.cluster.clone(), deployer };
    let quic_workers = QuicWorkers::start(listeners.udp, server_config, &keys, edge.clone())?;
    for l in listeners.tcp {
        tokio::spawn(tcp::serve(TcpListener::from_std(l)?, edge.clone()));
    }
    let security = AdminSecurity { token: host.admin_token.clone(), tls: admin_tls };
    tokio::select! {
        () = admin::serve(admin_listener, registry, Some(Arc::new(node_admin)), security) => {}
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

/// Returns freed heap memory to the kernel every few seconds. glibc keeps
/// what finished connections and sessions freed in its per-thread arenas,
/// so after a burst (a flood of sessions that then ended) the node's RSS
/// would stay at the peak; `malloc_trim` releases the free pages of every
/// arena.
fn trim_heap_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let trim = || loop {
                std::thread::sleep(Duration::from_secs(5));
                // SAFETY: malloc_trim only hands free pages back to the kernel.
                unsafe { libc::malloc_trim(0) };
            };
            if let Err(e) = std::thread::Builder::new().name("toil-trim".into()).spawn(trim) {
                tracing::warn!("cannot start the heap-trim thread: {e}");
            }
        });
    }
}

/// `toil dev`: this node owns the daemon of every domain that has one.
async fn own_every_daemon(log: Arc<dyn ClaimLog>, node: NodeId) {
    let mut changes = log.changes();
    loop {
        let state = log.state();
        for command in place(&state.daemon_domains(), &[node], state.owners(), None, Duration::ZERO) {
            let _ = log.propose(command).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// `toil node`: offers the configured apps to the cluster, retrying while
/// it has no leader. A domain the cluster already serves is left alone.
async fn offer_until_committed(deployer: Arc<Deployer>, apps: Vec<AppConfig>) {
    for app in apps {
        loop {
            match offer_app(&deployer, &app, "config", true).await {
                Ok(r) if r.unchanged => tracing::info!(
                    domain = app.domain,
                    "the cluster serves {} version {}; the configured build is not deployed (use toil deploy)",
                    app.domain,
                    r.version
                ),
                Ok(r) => tracing::info!(domain = app.domain, "deployed the configured {} as version {}", app.domain, r.version),
                Err(DeployError::Log(e)) => {
                    tracing::debug!(domain = app.domain, "offering the configured app: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                Err(e) => tracing::error!(domain = app.domain, "the configured app is not deployed: {e}"),
            }
            break;
        }
    }
}

/// `toil dev`: rebuilds an app when a file of its crate changes and
/// deploys the result as a new release. A failed build leaves the running
/// version in place (the compiler's output is on the terminal).
async fn reload_on_change(tc: GuestToolchain, config: Config, deployer: Arc<Deployer>) {
    let mut seen: Vec<Fingerprint> = config.apps.iter().map(|a| fingerprint(&a.dir)).collect();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, app) in config.apps.iter().enumerate() {
            let now = fingerprint(&app.dir);
            if now == seen[i] {
                continue;
            }
            // Let an editor finish writing (save = truncate + write, or several files).
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen[i] = fingerprint(&app.dir);
            let started = Instant::now();
            eprintln!("reload: {} changed; rebuilding", app.domain);
            let (tc, dir, targets, target_dir) = (tc.clone(), app.dir.clone(), app.targets.clone(), config.guest_target_dir.clone());
            let built = tokio::task::spawn_blocking(move || build_app(&tc, &dir, &targets, &target_dir)).await;
            let build_time = started.elapsed();
            match built {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("reload: {} did not build; the previous version keeps serving: {e}", app.domain);
                    continue;
                }
                Err(e) => {
                    eprintln!("reload: the build of {} panicked: {e}", app.domain);
                    continue;
                }
            }
            let swap_started = Instant::now();
            let mut served = deployer.served();
            match offer_app(&deployer, app, "dev reload", false).await {
                Ok(r) if r.unchanged => eprintln!("reload: {} built in {build_time:?}; nothing changed (version {})", app.domain, r.version),
                Ok(r) => {
                    let _ = tokio::time::timeout(Duration::from_secs(10), served.wait_for(|s| s.get(&app.domain) == Some(&r.version))).await;
                    eprintln!(
                        "reload: {} version {} serving {} ms after the build finished (build {} ms)",
                        app.domain,
                        r.version,
                        swap_started.elapsed().as_millis(),
                        build_time.as_millis()
                    );
                }
                Err(e) => eprintln!("reload: {} was not swapped; the previous version keeps serving: {e}", app.domain),
            }
        }
    }
}

/// What a source change is detected by: every file's path, length and modification time.
#[derive(PartialEq, Eq, Default)]
struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// The crate's `Cargo.toml`, `build.rs` and everything under `src/`.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files = Vec::new();
    let mut stack = vec![dir.join("src")];
    for f in ["Cargo.toml", "build.rs"] {
        files.push(dir.join(f));
    }
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Fingerprint(
        files
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.len(), m.modified().ok()))
            })
            .collect(),
    )
}

async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}
