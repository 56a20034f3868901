//! The composition root: one node's parts, wired and served. `toil dev`
//! and `toil node` both call [`serve`]; they differ in the [`Host`] they
//! pass (a cluster's raft node, or none and an in-memory log).
//!
//! Both serve what the log's releases say: the configured apps are offered
//! as releases at start (a domain already deployed keeps its release), and
//! `toil deploy`, `toil rollback` and dev reloads go through the same
//! [`Deployer`].
//!
//! - `log`: the log (raft, or in-memory in dev);
//! - `apps`: the configured apps, offered as releases;
//! - `channels`: in process, or through NATS in a cluster;
//! - `listeners`: the public port, TCP and the QUIC workers' UDP sockets;
//! - `admin`: the admin routes beyond metrics (status, tick, deploy, tls);
//! - `acme`: certificates from an ACME CA, one per host for the cluster;
//! - `reload`: `toil dev`'s rebuild-and-swap on a source change.

mod acme;
mod admin;
mod apps;
mod channels;
mod listeners;
mod log;
mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use toil_abi::stream::close_code;
use toil_build::GuestToolchain;
use toil_cluster::{ClaimLog, NodeId};
use toil_config::{Config, LimitsConfig};
use toil_conns::{self as conns, ConnLimits};
use toil_daemon::{DaemonSettings, Daemons};
use toil_deploy::{BlobFetch, BlobStore, DeploySettings, Deployer};
use toil_edge::admin::AdminSecurity;
use toil_edge::certs::{CertSource, Certificates};
use toil_edge::keys::NodeKeys;
use toil_edge::tcp::{Cleartext, TcpSettings};
use toil_edge::workers::QuicWorkers;
use toil_edge::{admin as edge_admin, quic, tcp, tls::DevCert, DomainTable, Edge};
use toil_metrics::Registry;
use toil_raft::ClusterNode;
use toil_runtime::admission::InstanceBudget;
use toil_runtime::Runtime;
use tokio::net::TcpListener;

use self::admin::NodeAdmin;
use self::listeners::{bind, Listeners};

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

/// Serves `config` as `host` until Ctrl-C (or stdin closes, if asked).
pub async fn serve(config: Config, host: Host) -> anyhow::Result<()> {
    let node = Node::start(&config, &host).await?;
    node.print_banner(&config, &host);
    node.run_until_shutdown(config, host).await
}

/// A node's started parts, before its listeners serve.
struct Node {
    registry: Registry,
    domains: Arc<DomainTable>,
    log: Arc<dyn ClaimLog>,
    daemons: Arc<Daemons>,
    deployer: Arc<Deployer>,
    cert: DevCert,
    certs: Arc<Certificates>,
    keys: NodeKeys,
    listeners: Listeners,
    /// The cleartext-only listener (`tls.httpListen`), if any.
    http_listener: Option<TcpListener>,
    listen: SocketAddr,
    admin_listener: TcpListener,
    admin_tls: Option<Arc<rustls::ServerConfig>>,
    edge: Arc<Edge>,
    channels: channels::NodeChannels,
}

impl Node {
    /// The runtime, the log, the daemons and the deployer (with the
    /// configured apps offered), the certificate, and the bound listeners.
    async fn start(config: &Config, host: &Host) -> anyhow::Result<Node> {
        trim_heap_periodically();
        let registry = Registry::new();
        let runtime_config = runtime_config(&config.limits);
        let pools = format!("{} slots for requests and daemons, {} for stream boxes", runtime_config.request_slots, runtime_config.session_instances);
        let mut runtime = Runtime::new(runtime_config)
            .with_context(|| format!("reserving the instance pools ({pools}): lower limits.maxInstances or limits.maxSessions"))?;
        let channels = channels::open(config, host.cluster.is_some(), &registry).await?;
        if let Some(c) = channels.get() {
            runtime = runtime.with_channels(c.clone());
        }
        let domains = Arc::new(DomainTable::new());
        let log = log::open(host.cluster.as_ref(), host.node_id);
        let daemon_settings = DaemonSettings {
            grace: config.cluster.tick_grace,
            claim_lead: config.cluster.claim_lead,
            owner_lease: config.cluster.lease_timing().owner_lease(),
            ..DaemonSettings::new(host.node_id, host.name.clone())
        };
        let daemons = Daemons::start(Vec::new(), log.clone(), daemon_settings, &registry);
        let instances = runtime.instance_budget().clone();
        let deployer = start_deployer(config, host, runtime, &registry, &domains, &daemons, &log);

        // The configured apps are offered as releases; a domain the cluster
        // already serves keeps its release (`toil deploy` changes it).
        if host.cluster.is_none() {
            for app in &config.apps {
                apps::offer_app(&deployer, app, "config", true).await.with_context(|| format!("app {}", app.domain))?;
            }
            if let Some((domain, e)) = deployer.sync().await.into_iter().next() {
                return Err(anyhow::anyhow!(e).context(format!("app {domain}")));
            }
        } else {
            tokio::spawn(apps::offer_until_committed(deployer.clone(), config.apps.clone()));
        }
        tokio::spawn(deployer.clone().run());
        tokio::spawn(deployer.clone().report_served());

        let cert = DevCert::load_or_create(&host.cert_dir)?;
        let certs = Arc::new(certificates(config, host, &cert, &registry)?);
        let keys = NodeKeys::load_or_create(&host.cert_dir)?;
        let listeners = bind(host.listen, &config.quic)?;
        let listen = listeners.tcp[0].local_addr()?;
        let http_listener = match config.tls.http_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding tls.httpListen {addr}"))?),
            None => None,
        };
        let admin_listener = TcpListener::bind(host.admin).await.with_context(|| format!("binding admin {}", host.admin))?;
        // The admin token must not cross a network in the clear.
        let admin_tls = if admin_listener.local_addr()?.ip().is_loopback() { None } else { Some(edge_admin::tls_config(&cert)?) };
        let edge = Arc::new(edge(config, domains.clone(), instances, &registry, &cert, listen.port())?);
        Ok(Node {
            registry,
            domains,
            log,
            daemons,
            deployer,
            cert,
            certs,
            keys,
            listeners,
            http_listener,
            listen,
            admin_listener,
            admin_tls,
            edge,
            channels,
        })
    }

    /// What is served where, for the terminal (and the last line for tools that parse it).
    fn print_banner(&self, config: &Config, host: &Host) {
        let (port, listen) = (self.listen.port(), self.listen);
        println!("toil {}: serving {} app(s) from {}", host.name, config.apps.len(), config.file.display());
        for app in &config.apps {
            let first_host = app.hosts.first().map(String::as_str).unwrap_or("localhost");
            println!(
                "  {:<8} https://{first_host}:{port}/  (HTTP/1.1 and HTTP/2 over TLS, HTTP/3)  http://{first_host}:{port}/  (cleartext: {})",
                app.domain,
                cleartext_word(cleartext(config, host))
            );
            let Some(domain) = self.domains.get(&app.domain) else {
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
            if let Some(d) = self.daemons.app(&app.domain) {
                let tasks: Vec<String> = d.tasks().iter().map(|t| format!("{} ({})", t.name, t.schedule.expr())).collect();
                println!("  {:<8} daemon tasks: {}   (fire one now: toil tick {} TASK)", "", tasks.join(", "), app.domain);
            }
        }
        let also: String = self.listeners.tcp.iter().skip(1).filter_map(|l| l.local_addr().ok()).map(|a| format!(" and {a}")).collect();
        println!("  channels {}", self.channels.describe(config));
        println!("  quic     {} worker(s), {:?} steering; listening on {listen}{also}", config.quic.workers, self.listeners.steering);
        let admin_addr = self.admin_listener.local_addr().map_or_else(|_| host.admin.to_string(), |a| a.to_string());
        let scheme = if self.admin_tls.is_some() { "https" } else { "http" };
        println!("  admin    {scheme}://{admin_addr}/  (metrics: /metrics; token: Authorization: Bearer <token>)");
        if host.watch.is_some() {
            println!("  reload   watching the apps' sources; an edit rebuilds and swaps the app (open sessions close with RELOADED)");
        }
        for (hosts, not_after) in self.certs.serving() {
            let state = match not_after.map(|t| t.duration_since(std::time::SystemTime::now()).map(|d| d.as_secs() / 86400)) {
                Some(Ok(days)) => format!("valid {days} more days"),
                Some(Err(_)) => "expired".to_string(),
                None => "REFUSED (see the log); these hosts have no certificate".to_string(),
            };
            println!("  tls      {}: {state}", hosts.join(", "));
        }
        if let (Some(acme), false) = (&config.tls.acme, is_dev(host)) {
            let challenge = match acme.challenge {
                toil_config::AcmeChallengeKind::Http01 => "http-01",
                toil_config::AcmeChallengeKind::TlsAlpn01 => "tls-alpn-01",
            };
            println!("  tls      ACME {} ({challenge}): one certificate per deployed host for the cluster (toil tls status)", acme.directory);
        }
        let valid_days = self.cert.not_after.duration_since(std::time::SystemTime::now()).map(|d| d.as_secs() / 86400).unwrap_or(0);
        println!("  dev certificate SHA-256 (serverCertificateHashes): {}  (valid {valid_days} more days)", self.cert.sha256_hex());
        println!(
            "listening http={listen} h3={listen} admin={admin_addr} cert={} cert-sha256={}",
            host.cert_dir.join("cert.pem").display(),
            self.cert.sha256_hex()
        );
    }

    /// Serves until Ctrl-C (or stdin closes, if asked); then open sessions
    /// close with `SHUTDOWN` and their boxes run `close`.
    async fn run_until_shutdown(self, config: Config, host: Host) -> anyhow::Result<()> {
        let server_config = quic::server_config(self.certs.clone(), &self.keys, &config.limits.quic_connection())?;
        tokio::spawn(self.certs.clone().watch(config.tls.watch_interval));
        let challenges = match (&config.tls.acme, &host.cluster) {
            (Some(settings), Some(cluster)) => {
                Some(acme::AcmeCerts::start(settings.clone(), cluster.clone(), self.log.clone(), self.certs.clone(), &self.registry))
            }
            (Some(_), None) => {
                tracing::warn!("tls.acme is for toil node: toil dev keeps its self-signed certificate");
                None
            }
            _ => None,
        };
        let mut https = tcp::Https::new(self.certs.clone())?;
        if let Some(c) = &challenges {
            https = https.answering(c.clone());
        }
        let tcp_settings =
            TcpSettings { tls: Some(https), cleartext: cleartext(&config, &host), https_port: self.listen.port(), challenges: challenges.clone() };
        if let Some(l) = self.http_listener {
            tokio::spawn(tcp::serve(l, self.edge.clone(), TcpSettings { tls: None, ..tcp_settings.clone() }));
        }
        if let Some(tc) = host.watch.clone() {
            tokio::spawn(reload::reload_on_change(tc, config.clone(), self.deployer.clone()));
        }
        let node_admin =
            NodeAdmin { daemons: self.daemons, log: self.log, cluster: host.cluster.clone(), deployer: self.deployer, acme: challenges.is_some() };
        let quic_workers = QuicWorkers::start(self.listeners.udp, server_config, &self.keys, self.edge.clone())?;
        for l in self.listeners.tcp {
            tokio::spawn(tcp::serve(TcpListener::from_std(l)?, self.edge.clone(), tcp_settings.clone()));
        }
        let security = AdminSecurity { token: host.admin_token.clone(), tls: self.admin_tls };
        tokio::select! {
            () = edge_admin::serve(self.admin_listener, self.registry, Some(Arc::new(node_admin)), security) => {}
            r = tokio::signal::ctrl_c() => { r?; eprintln!("toil {}: shutting down", host.name); }
            () = stdin_closed(), if host.stop_on_stdin_eof => { eprintln!("toil {}: stdin closed, shutting down", host.name); }
        }
        if let Some(node) = &host.cluster {
            node.shutdown().await;
        }
        self.edge.shutdown.send_replace(true);
        tokio::task::spawn_blocking(move || quic_workers.shutdown(Duration::from_secs(3))).await?;
        Ok(())
    }
}

/// What cleartext HTTP gets: as configured; else served in dev and by a
/// node without certificates, redirected to HTTPS by one with them (files
/// or ACME).
fn cleartext(config: &Config, host: &Host) -> Cleartext {
    config.tls.cleartext.map_or_else(
        || if is_dev(host) || !has_certificates(config) { Cleartext::Serve } else { Cleartext::Redirect },
        |c| match c {
            toil_config::Cleartext::Serve => Cleartext::Serve,
            toil_config::Cleartext::Redirect => Cleartext::Redirect,
            toil_config::Cleartext::Refuse => Cleartext::Refuse,
        },
    )
}

fn cleartext_word(c: Cleartext) -> &'static str {
    match c {
        Cleartext::Serve => "served",
        Cleartext::Redirect => "redirected to HTTPS",
        Cleartext::Refuse => "refused",
    }
}

/// Whether the config gives a node real certificates (files, or ACME).
fn has_certificates(config: &Config) -> bool {
    !config.tls.certificates.is_empty() || config.tls.acme.is_some()
}

/// `toil dev` is the host without a cluster.
fn is_dev(host: &Host) -> bool {
    host.cluster.is_none()
}

/// The node's certificates (`tls.certificates`), with the self-signed one
/// for names none covers where that is wanted: always in dev (its hash
/// flow is unchanged), and on a node given no certificates.
fn certificates(config: &Config, host: &Host, cert: &DevCert, registry: &Registry) -> anyhow::Result<Certificates> {
    let sources = config.tls.certificates.iter().map(|c| CertSource { hosts: c.hosts.clone(), cert: c.cert.clone(), key: c.key.clone() }).collect();
    let self_signed = config.tls.self_signed.unwrap_or(is_dev(host) || !has_certificates(config));
    let fallback = if self_signed { Some(cert.certified_key()?) } else { None };
    Ok(Certificates::load(sources, fallback, registry))
}

fn start_deployer(
    config: &Config,
    host: &Host,
    runtime: Runtime,
    registry: &Registry,
    domains: &Arc<DomainTable>,
    daemons: &Arc<Daemons>,
    log: &Arc<dyn ClaimLog>,
) -> Arc<Deployer> {
    let (drain, close_code) = match &host.cluster {
        Some(_) => (config.deploy.drain_timeout, close_code::REDEPLOYED),
        None => (Duration::ZERO, close_code::RELOADED),
    };
    let default_domain = config.default_domain.clone().or_else(|| (config.apps.len() == 1).then(|| config.apps[0].domain.clone()));
    Deployer::new(
        DeploySettings { node: host.node_id, default_domain, drain, close_code },
        runtime,
        registry.clone(),
        host.store.clone(),
        domains.clone(),
        daemons.clone(),
        log.clone(),
        host.fetch.clone(),
    )
}

/// The runtime's settings, its pools sized to the memory mappings the
/// kernel lets the process have (`vm.max_map_count`): an instance that
/// cannot be mapped would fail as an out-of-memory trap, far from its cause.
fn runtime_config(limits: &LimitsConfig) -> toil_runtime::RuntimeConfig {
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let runtime = limits.runtime(max_map_count);
    let (slots, sessions, most) = (runtime.request_slots, limits.max_sessions, limits.max_instances);
    let needed = limits.pool_maps(slots);
    match max_map_count {
        Some(maps) if needed > maps => tracing::warn!(
            "at full load the instance pools need about {needed} memory mappings and vm.max_map_count is {maps}: instances past it \
             fail to start; raise vm.max_map_count or lower limits.maxInstances and limits.maxSessions"
        ),
        Some(maps) if slots < limits.request_pool_slots(None) => tracing::info!(
            "requests and daemons have {slots} instance slots, not limits.maxInstances ({most}): vm.max_map_count ({maps}) leaves no more \
             beside {sessions} session slots; raise it to let requests use every instance no session holds"
        ),
        _ if slots < most => tracing::info!(
            "requests and daemons have {slots} instance slots, not limits.maxInstances ({most}): the address space a node may reserve \
             leaves no more beside {sessions} session slots"
        ),
        _ => {}
    }
    runtime
}

/// The edge every listener shares: the config's settings, with the TCP
/// connection cap lowered to what the open-file limit allows, its
/// sessions holding shares of the runtime's `instances`, `Alt-Svc`
/// pointing at HTTP/3 on `port`, and the dev page's connection info.
fn edge(
    config: &Config,
    domains: Arc<DomainTable>,
    instances: Arc<InstanceBudget>,
    registry: &Registry,
    cert: &DevCert,
    port: u16,
) -> anyhow::Result<Edge> {
    let mut settings = config.limits.edge();
    let wanted = settings.conns;
    settings.conns = match conns::raise_fd_limit() {
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
    // QUIC connections cost no descriptor, only memory (their buffers): they keep the asked cap.
    let mut edge = Edge::new(domains, settings, instances, registry.clone());
    edge.alt_svc = http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok();
    let dev_info = serde_json::json!({
        "certificateSha256": cert.sha256_hex(),
        "h3Port": port,
        "certificateNotAfter": cert.not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    edge.dev_info = Some(serde_json::to_vec(&dev_info)?.into());
    Ok(edge)
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

async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}
