//! `toil dev`: build the configured apps and serve them on this machine.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use toil_abi::Tier;
use toil_build::{build_app, target_path, GuestToolchain};
use toil_config::{AppConfig, Config, QuicConfig};
use toil_edge::domains::Domain;
use toil_edge::sessions::SessionLimits;
use toil_edge::keys::NodeKeys;
use toil_edge::workers::{QuicWorkers, Steering, UdpGroup};
use toil_edge::{admin, quic, tcp, tls::DevCert, DomainTable, Edge};
use toil_metrics::Registry;
use toil_runtime::request::RequestApp;
use toil_runtime::daemon::DaemonApp;
use toil_runtime::stream::StreamApp;
use toil_daemon::{DaemonSettings, Daemons, LocalLog, TickError};
use toil_runtime::{Limits, Runtime, RuntimeConfig};

pub fn run(config_path: &Path, build: bool, stop_on_stdin_eof: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    if build {
        let tc = GuestToolchain::detect()?;
        for app in &config.apps {
            eprintln!("building {} ({})", app.domain, app.dir.display());
            build_app(&tc, &app.dir, &app.targets, &config.guest_target_dir)?;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(config, stop_on_stdin_eof))
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
            Tier::Daemon => daemon = Some(DaemonApp::load(runtime, registry, &app.domain, &bytes).map_err(err)?),
        }
    }
    Ok((domain, daemon))
}

/// `POST /daemon/tick?domain=D&task=T` on the admin listener: `toil tick`.
struct DaemonAdmin(Arc<Daemons>);

impl admin::AdminRoutes for DaemonAdmin {
    fn route(&self, method: &http::Method, path: &str, query: &str) -> Option<admin::AdminReply> {
        if path != "/daemon/tick" {
            return None;
        }
        let daemons = self.0.clone();
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

async fn serve(config: Config, stop_on_stdin_eof: bool) -> anyhow::Result<()> {
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

    let cert = DevCert::load_or_create(&config.dev.cert_dir)?;
    let keys = NodeKeys::load_or_create(&config.dev.cert_dir)?;
    let server_config = quic::server_config(&cert, &keys, config.limits.idle_timeout)?;
    let listeners = bind(config.dev.listen, &config.quic)?;
    let (workers, steering) = (config.quic.workers, listeners.steering);
    let listen = listeners.tcp[0].local_addr()?;
    let also = listeners.tcp.iter().skip(1).map(|l| l.local_addr().map(|a| format!(" and {a}"))).collect::<Result<String, _>>()?;
    let admin_listener = TcpListener::bind(config.dev.admin).await.with_context(|| format!("binding admin {}", config.dev.admin))?;
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
    println!("toil dev: serving {} app(s) from {}", served.len(), config.file.display());
    for (app, routes, streams) in &served {
        let host = app.hosts.first().map(String::as_str).unwrap_or("localhost");
        println!("  {:<8} http://{host}:{port}/  (HTTP/1.1, HTTP/2 cleartext)  https://{host}:{port}/  (HTTP/3)", app.domain);
        if !routes.is_empty() {
            println!("  {:<8} routes: {}", "", routes.join(", "));
        }
        if !streams.is_empty() {
            println!("  {:<8} WebTransport streams: {}", "", streams.iter().map(|s| format!("https://{host}:{port}{s}")).collect::<Vec<_>>().join(", "));
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
        config.dev.cert_dir.join("cert.pem").display(),
        cert.sha256_hex()
    );

    // The daemon tier as a single-node cluster: every domain's daemon is owned here.
    let daemon_settings = DaemonSettings { node: 1, node_name: "dev".into(), grace: Duration::from_secs(1) };
    let daemons = Daemons::start(daemon_apps, Arc::new(LocalLog::default()), daemon_settings, &registry).await;
    let quic_workers = QuicWorkers::start(listeners.udp, server_config, &keys, edge.clone())?;
    for l in listeners.tcp {
        tokio::spawn(tcp::serve(TcpListener::from_std(l)?, edge.clone()));
    }
    tokio::select! {
        () = admin::serve(admin_listener, registry, Some(Arc::new(DaemonAdmin(daemons)))) => {}
        r = tokio::signal::ctrl_c() => { r?; eprintln!("toil dev: shutting down"); }
        () = stdin_closed(), if stop_on_stdin_eof => { eprintln!("toil dev: stdin closed, shutting down"); }
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
