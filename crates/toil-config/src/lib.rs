//! `toilconfig.json`: the schema, its defaults, and validation whose errors
//! name the offending key (`limits.deadlineMs: expected a positive integer`).
//!
//! One file serves two shapes:
//! - an **app** config, next to a guest crate, naming where its artifacts go
//!   (`targets.release.requestFile` / `streamFile` / `daemonFile`; `outFile`
//!   and `coldFile` are accepted aliases);
//! - a **node** config listing several apps (`apps: [{domain, dir}]`), each
//!   served as its own domain, with dev listeners, limits and build settings.
//!
//! A file without `apps` is a node config of the single app in its own
//! directory. Every key is optional; `docs/dev.md` lists them all.
//!
//! This crate owns every default of a node: the subsystems (runtime, edge)
//! declare the settings they take, with no defaults of their own, and
//! [`settings`] builds them from a config.

pub mod settings;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use toil_cluster::LeaseTiming;

/// The file name looked for in a directory.
pub const FILE_NAME: &str = "toilconfig.json";

/// A configuration problem, naming the key (dotted path) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is part of the message, not a `source`: a `{:#}` chain
    // would print it twice.
    #[error("{file}: cannot read: {error}")]
    Read { file: PathBuf, error: std::io::Error },
    #[error("{file}: not valid JSON: {error}")]
    Json { file: PathBuf, error: serde_json::Error },
    #[error("{file}: `{key}`: {problem}")]
    Key { file: PathBuf, key: String, problem: String },
}

/// Where a crate's three artifacts are written, relative to the crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub out_file: PathBuf,
    pub stream_file: PathBuf,
    pub cold_file: PathBuf,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            out_file: "build/server/release.wasm".into(),
            stream_file: "build/server/release-stream.wasm".into(),
            cold_file: "build/server/release-cold.wasm".into(),
        }
    }
}

/// One app (domain) served by the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    pub domain: String,
    /// The guest crate's directory (absolute).
    pub dir: PathBuf,
    /// Host names routed to this domain; default `<domain>.localhost`.
    pub hosts: Vec<String>,
    pub targets: Targets,
    /// The time zone the daemon's cron schedules are read in (`timezone`,
    /// an IANA name; default UTC).
    pub timezone: toil_schedule::Tz,
}

impl AppConfig {
    /// Absolute path of an artifact.
    pub fn artifact(&self, rel: &Path) -> PathBuf {
        self.dir.join(rel)
    }
}

/// Listeners of `toil dev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevConfig {
    /// TCP (HTTP/1.1 and HTTP/2) and UDP (HTTP/3) on the same port.
    pub listen: SocketAddr,
    /// Admin/metrics listener (HTTP/1.1).
    pub admin: SocketAddr,
    /// Where the dev certificate and key are kept.
    pub cert_dir: PathBuf,
}

/// `tls`: the certificates HTTPS and HTTP/3 serve, and what cleartext
/// HTTP gets. What is not set here depends on the command: `toil dev`
/// serves cleartext and keeps its self-signed certificate for names no
/// certificate covers; a node given certificates redirects cleartext to
/// HTTPS and serves no certificate but those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateConfig>,
    /// `serve`, `redirect` (to HTTPS) or `refuse`.
    pub cleartext: Option<Cleartext>,
    /// A second, cleartext-only listener (production: port 80).
    pub http_listen: Option<SocketAddr>,
    /// Whether names no certificate covers (and clients that send no
    /// name) get the self-signed certificate.
    pub self_signed: Option<bool>,
    /// How often certificate files are checked for a change.
    pub watch_interval: Duration,
    /// Certificates from an ACME CA for the deployed hosts no file covers.
    pub acme: Option<AcmeConfig>,
}

/// `tls.acme`: certificates ordered from an ACME (RFC 8555) CA, one per
/// deployed host name, shared by the cluster's nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://…/directory`).
    pub directory: String,
    /// The account's contact, if any.
    pub email: Option<String>,
    pub challenge: AcmeChallengeKind,
    /// Order again when the certificate has less than this left.
    pub renew_before: Duration,
    /// A root to trust for the CA's own HTTPS (a private CA), PEM.
    pub ca_certificate: Option<PathBuf>,
    /// The first wait after a failed order; it doubles with each failure,
    /// up to [`ACME_RETRY_MAX`].
    pub retry_min: Duration,
    /// How often the leader looks for hosts that need a certificate.
    pub check_interval: Duration,
}

/// How the CA checks that the cluster serves a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallengeKind {
    /// A token fetched over cleartext HTTP on port 80.
    Http01,
    /// A special certificate on the TLS port (443), ALPN `acme-tls/1`.
    TlsAlpn01,
}

/// The longest back-off between failed ACME orders.
pub const ACME_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// One certificate from files (`tls.certificates[i]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateConfig {
    /// Host names, or `*.` and a suffix, this certificate serves.
    pub hosts: Vec<String>,
    /// PEM: the certificate chain, leaf first; and its private key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What cleartext HTTP on a node's ports gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleartext {
    Serve,
    Redirect,
    Refuse,
}

/// Default of `tls.watchIntervalMs`.
pub const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Per-call and per-node limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub max_request_body: usize,
    pub max_response_body: usize,
    pub max_instances: u32,
    /// Open stream sessions (resident boxes) per node and per domain.
    pub max_sessions: usize,
    pub max_sessions_per_domain: usize,
    /// WebTransport sessions one connection may carry (pooling).
    pub max_sessions_per_connection: usize,
    pub max_frame_bytes: usize,
    pub max_outbound_bytes_per_event: usize,
    /// Streams a stream box may have open that it opened itself.
    pub max_box_streams: usize,
    /// A stream box with no event for this long hibernates; `None`: never.
    pub hibernate_after: Option<Duration>,
    pub send_stall_timeout: Duration,
    /// A QUIC connection silent this long is lost (stream boxes get `disconnect`).
    pub idle_timeout: Duration,
    /// Response headers a guest may set: how many, and their bytes.
    pub max_response_headers: usize,
    pub max_response_header_bytes: usize,
    /// Requests of one domain running at once; default: half the instances
    /// sessions leave free, so no one domain can take them all.
    pub max_requests_per_domain: usize,
    /// Requests of one domain waiting for an instance, and for how long.
    pub request_queue_per_domain: usize,
    pub request_queue_timeout: Duration,
    /// TCP connections per node and per client address (the node's cap is
    /// lowered to leave file descriptors free).
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// An HTTP/1.1 request head (or an idle keep-alive connection), an idle
    /// TCP connection, and a request body: how long each may take.
    pub header_timeout: Duration,
    pub request_idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Bytes one QUIC connection may have in flight to the node unread, and
    /// bidirectional streams (requests, WebTransport streams) open at once.
    pub connection_receive_window: u32,
    pub max_streams_per_connection: u32,
}

impl LimitsConfig {
    /// Instances the node leaves for requests once every session has its box.
    pub fn instances_for_requests(&self) -> usize {
        (self.max_instances as usize).saturating_sub(self.max_sessions)
    }

    /// Slots of the pool of requests and daemons: one per instance (they
    /// may use every instance no session holds), as far as the address
    /// space the stream boxes' pool leaves allows, and the process's memory
    /// mappings (`vm.max_map_count`, if known) at full load; never fewer
    /// than the instances sessions leave. Past them a request is refused as
    /// `node_full`, as past `maxInstances`.
    pub fn request_pool_slots(&self, max_map_count: Option<u64>) -> u32 {
        let (instances, sessions) = (u64::from(self.max_instances), self.max_sessions as u64);
        let mut slots = instances.min(MAX_POOL_SLOTS.saturating_sub(sessions));
        if let Some(maps) = max_map_count {
            let fit = maps.saturating_sub(MAPS_RESERVE + MAPS_PER_INSTANCE * instances) / MAPS_PER_SLOT;
            slots = slots.min(fit.saturating_sub(sessions));
        }
        slots.max(self.instances_for_requests() as u64) as u32
    }

    /// Memory mappings the pools need at full load: every slot, and every
    /// instance the budget allows.
    pub fn pool_maps(&self, request_slots: u32) -> u64 {
        MAPS_RESERVE + MAPS_PER_SLOT * (u64::from(request_slots) + self.max_sessions as u64) + MAPS_PER_INSTANCE * u64::from(self.max_instances)
    }
}

/// Virtual address space the instance pools reserve per slot: wasmtime
/// reserves 4 GiB for each 32-bit linear memory plus a 32 MiB guard, with
/// the stack, table and instance slots on top (rounded up here).
pub const POOL_BYTES_PER_INSTANCE: u64 = (4 << 30) + (64 << 20);
/// The part of the 128 TiB user address space of x86-64 and aarch64 Linux
/// the pool may take.
pub const POOL_ADDRESS_SPACE: u64 = 64 << 40;
/// Pool slots a node may reserve, both pools together: 16131.
pub const MAX_POOL_SLOTS: u64 = POOL_ADDRESS_SPACE / POOL_BYTES_PER_INSTANCE;
/// Memory mappings (`/proc/PID/maps` lines) a pool slot costs from the
/// start (its fiber stack and that stack's guard page), measured: 1000 more
/// slots, 2004 more mappings.
pub const MAPS_PER_SLOT: u64 = 2;
/// Mappings a slot adds once an instance has used it: its linear memory and
/// its table made accessible inside their reservations, splitting each in
/// three. They stay after the instance (measured: 10 000 hibernated boxes'
/// slots, 60 754 mappings in all), so every instance the budget allows counts.
pub const MAPS_PER_INSTANCE: u64 = 4;
/// Mappings left for everything else (code, heap arenas, thread stacks).
pub const MAPS_RESERVE: u64 = 4096;
/// Longest QUIC idle timeout (QUIC carries it as a varint of milliseconds;
/// a day is far past any useful value).
pub const MAX_IDLE_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Longest per-call deadline: a minute, which no request or tick should need.
pub const MAX_DEADLINE_MS: u64 = 60_000;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_request_body: 1 << 20,
            max_response_body: 8 << 20,
            max_instances: 1000,
            max_sessions: 500,
            max_sessions_per_domain: 500,
            max_sessions_per_connection: 8,
            max_frame_bytes: 64 << 10,
            max_outbound_bytes_per_event: 1 << 20,
            max_box_streams: 32,
            hibernate_after: Some(Duration::from_secs(10)),
            send_stall_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_response_headers: 100,
            max_response_header_bytes: 64 << 10,
            max_requests_per_domain: 250,
            request_queue_per_domain: 250,
            request_queue_timeout: Duration::from_millis(100),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            header_timeout: Duration::from_secs(10),
            request_idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            connection_receive_window: 1 << 20,
            max_streams_per_connection: 32,
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from (or where it would be).
    pub file: PathBuf,
    pub apps: Vec<AppConfig>,
    /// Domain that answers requests whose host names no app.
    pub default_domain: Option<String>,
    pub dev: DevConfig,
    pub limits: LimitsConfig,
    pub quic: QuicConfig,
    pub cluster: ClusterConfig,
    pub deploy: DeployConfig,
    pub channels: ChannelsConfig,
    pub tls: TlsConfig,
    /// Shared target directory of guest builds.
    pub guest_target_dir: PathBuf,
}

/// Timing of the cluster (`toil node`) and of the daemon tier on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How often the raft leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout, 2 × election_timeout)` starts an election.
    pub election_timeout: Duration,
    /// A node the leader has not heard from for this long is treated as
    /// dead: its daemons are given to live nodes.
    pub owner_timeout: Duration,
    /// An owner claims a tick this long before it is due, so the claim's
    /// round trip through the log does not make the tick late.
    pub claim_lead: Duration,
    /// A tick that could not fire within this of its time is skipped and counted.
    pub tick_grace: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat: Duration::from_millis(30),
            election_timeout: Duration::from_millis(80),
            owner_timeout: Duration::from_millis(300),
            claim_lead: Duration::from_millis(50),
            tick_grace: Duration::from_secs(1),
        }
    }
}

impl ClusterConfig {
    /// The timings the ownership lease rule is derived from ([`toil_cluster::lease`]).
    pub fn lease_timing(&self) -> LeaseTiming {
        LeaseTiming { heartbeat: self.heartbeat, election_timeout: self.election_timeout, owner_timeout: self.owner_timeout }
    }
}

/// Channels (`channels`): history, limits, and the cluster transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelsConfig {
    /// The NATS server (with JetStream) a cluster's nodes share channels
    /// through; without it a cluster node has no channels.
    pub nats: Option<String>,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub subscriber_queue: usize,
    pub max_message_bytes: usize,
    pub max_subscriptions_per_box: usize,
    pub max_topics_per_domain: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            nats: None,
            history_size: 100,
            history_ttl: Duration::from_secs(3600),
            subscriber_queue: 256,
            max_message_bytes: 64 << 10,
            max_subscriptions_per_box: 64,
            max_topics_per_domain: 10_000,
        }
    }
}

/// How a node swaps to a new release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployConfig {
    /// Stream sessions opened on a replaced version may go on this long;
    /// then they are closed with `REDEPLOYED`. (`toil dev` reloads close them at once, with `RELOADED`.)
    pub drain_timeout: Duration,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig { drain_timeout: Duration::from_secs(30) }
    }
}

/// How QUIC traffic is spread over worker threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicConfig {
    /// Worker threads, each with its own endpoint (default: the number of cores).
    pub workers: usize,
    /// `bpf` (Linux: SO_REUSEPORT + a BPF program) or `userspace` (a dispatcher thread).
    /// `None`: the platform's best.
    pub steering: Option<String>,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig { workers: std::thread::available_parallelism().map_or(1, |n| n.get()), steering: None }
    }
}

/// Walks a JSON object, tracking the key path and rejecting unknown keys.
struct Obj<'a> {
    file: &'a Path,
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(file: &'a Path, path: String, v: &'a Value) -> Result<Self, ConfigError> {
        match v {
            Value::Object(map) => Ok(Obj { file, path, map }),
            other => Err(err(file, &path, format!("expected an object, found {}", kind(other)))),
        }
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn err(&self, k: &str, problem: impl Into<String>) -> ConfigError {
        err(self.file, &self.key(k), problem.into())
    }

    fn only(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        for k in self.map.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(self.err(k, format!("unknown key (expected one of: {})", allowed.join(", "))));
            }
        }
        Ok(())
    }

    fn obj(&self, k: &str) -> Result<Option<Obj<'a>>, ConfigError> {
        self.map.get(k).map(|v| Obj::new(self.file, self.key(k), v)).transpose()
    }

    fn str(&self, k: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.map.get(k) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(Value::String(_)) => Err(self.err(k, "must not be empty")),
            Some(other) => Err(self.err(k, format!("expected a string, found {}", kind(other)))),
        }
    }

    fn positive(&self, k: &str) -> Result<Option<u64>, ConfigError> {
        match self.map.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => Ok(n.as_u64()),
            Some(other) => Err(self.err(k, format!("expected a positive integer, found {other}"))),
        }
    }

    /// A non-negative integer no larger than `most`; past it the error says
    /// "{value} is over the {ceiling}".
    fn at_most(&self, k: &str, most: u64, ceiling: impl std::fmt::Display) -> Result<Option<u64>, ConfigError> {
        match self.map.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v <= most) => Ok(n.as_u64()),
            Some(Value::Number(n)) if n.as_u64().is_some() => Err(self.err(k, format!("{n} is over the {ceiling}"))),
            Some(other) => Err(self.err(k, format!("expected a non-negative integer, found {other}"))),
        }
    }

    /// A positive integer no larger than `most`; past it the error says
    /// "{value} is over the {ceiling}".
    fn positive_at_most(&self, k: &str, most: u64, ceiling: impl std::fmt::Display) -> Result<Option<u64>, ConfigError> {
        match self.positive(k)? {
            Some(v) if v > most => Err(self.err(k, format!("{v} is over the {ceiling}"))),
            v => Ok(v),
        }
    }

    fn addr(&self, k: &str) -> Result<Option<SocketAddr>, ConfigError> {
        self.str(k)?.map(|s| s.parse().map_err(|_| self.err(k, format!("expected an address like 127.0.0.1:8080, found {s:?}")))).transpose()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn err(file: &Path, key: &str, problem: String) -> ConfigError {
    ConfigError::Key { file: file.to_path_buf(), key: key.to_string(), problem }
}

/// Checks a domain name: 1-63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
/// A host name a domain answers: DNS labels (letters, digits, `-`, `_`,
/// dots) or a bracketed IPv6 literal, without a port.
pub fn validate_host(h: &str) -> Result<(), String> {
    let ok = match h.strip_prefix('[').and_then(|v6| v6.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                && !h.starts_with(['.', '-'])
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not a host name (letters, digits, '-', '_', '.', or [IPv6]; no port)"))
    }
}

pub fn validate_domain(d: &str) -> Result<(), String> {
    let ok = !d.is_empty()
        && d.len() <= 63
        && d.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !d.starts_with('-')
        && !d.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{d:?} is not a valid domain name (1-63 of a-z, 0-9, '-')"))
    }
}

fn read_json(file: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read { file: file.into(), error })?;
    parse_json(&text).map_err(|error| ConfigError::Json { file: file.into(), error })
}

/// Parses JSON, refusing an object that repeats a key: serde_json keeps the
/// last value silently, so a config with a key given twice would run with
/// one of them without a word.
pub fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<UniqueKeys>(text)?;
    serde_json::from_str(text)
}

/// Deserializes any JSON, failing on the first repeated key of an object.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format_args!("key {key:?} appears twice in one object")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// Reads `targets` of an app's own config (or defaults if it has none).
fn targets_of(root: &Obj<'_>) -> Result<Targets, ConfigError> {
    let mut t = Targets::default();
    if let Some(targets) = root.obj("targets")? {
        targets.only(&["release"])?;
        if let Some(rel) = targets.obj("release")? {
            // Keys named after the tiers; `outFile` and `coldFile` are their older aliases.
            rel.only(&["requestFile", "streamFile", "daemonFile", "outFile", "coldFile"])?;
            for (k, alias, slot) in [
                ("requestFile", Some("outFile"), &mut t.out_file),
                ("streamFile", None, &mut t.stream_file),
                ("daemonFile", Some("coldFile"), &mut t.cold_file),
            ] {
                let k = match alias.filter(|a| rel.map.contains_key(*a)) {
                    Some(a) if rel.map.contains_key(k) => return Err(rel.err(a, format!("is an alias of `{k}`, which is given too"))),
                    Some(a) => a,
                    None => k,
                };
                if let Some(v) = rel.str(k)? {
                    if !v.ends_with(".wasm") {
                        return Err(rel.err(k, format!("expected a path ending in .wasm, found {v:?}")));
                    }
                    *slot = v.into();
                }
            }
        }
    }
    Ok(t)
}

/// The targets of the crate in `dir`, from `dir/toilconfig.json` if present.
pub fn load_targets(dir: &Path) -> Result<Targets, ConfigError> {
    let file = dir.join(FILE_NAME);
    if !file.exists() {
        return Ok(Targets::default());
    }
    let v = read_json(&file)?;
    let root = Obj::new(&file, String::new(), &v)?;
    targets_of(&root)
}

impl Config {
    /// Loads a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let v = read_json(file)?;
        Self::from_value(file, &v)
    }

    /// Parses a config; relative paths resolve against the file's directory.
    pub fn from_value(file: &Path, v: &Value) -> Result<Config, ConfigError> {
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let base = std::path::absolute(&base).unwrap_or(base);
        let root = Obj::new(file, String::new(), v)?;
        root.only(&["$schema", "targets", "apps", "defaultDomain", "dev", "limits", "quic", "cluster", "deploy", "channels", "tls", "build"])?;
        let apps = apps_of(&root, file, &base)?;
        let default_domain = default_domain_of(&root, &apps)?;
        Ok(Config {
            file: file.to_path_buf(),
            apps,
            default_domain,
            dev: dev_of(&root, &base)?,
            limits: limits_of(&root)?,
            quic: quic_of(&root)?,
            cluster: cluster_of(&root)?,
            deploy: deploy_of(&root)?,
            channels: channels_of(&root)?,
            tls: tls_of(&root, &base)?,
            guest_target_dir: guest_target_dir_of(&root, &base)?,
        })
    }
}

/// `apps`, or one app named after the directory when the list is absent.
fn apps_of(root: &Obj, file: &Path, base: &Path) -> Result<Vec<AppConfig>, ConfigError> {
    let mut apps = Vec::new();
    match root.map.get("apps") {
        None => {
            let domain = base.file_name().and_then(|n| n.to_str()).map(|n| n.to_ascii_lowercase().replace('_', "-")).unwrap_or_else(|| "app".into());
            validate_domain(&domain).map_err(|p| root.err("apps", format!("no apps listed and the directory name is unusable: {p}")))?;
            apps.push(AppConfig {
                hosts: vec![format!("{domain}.localhost")],
                domain,
                targets: targets_of(&root)?,
                dir: base.to_path_buf(),
                timezone: toil_schedule::Tz::UTC,
            });
        }
        Some(Value::Array(list)) => {
            for (i, item) in list.iter().enumerate() {
                let app = Obj::new(file, format!("apps[{i}]"), item)?;
                app.only(&["domain", "dir", "hosts", "timezone"])?;
                let domain = app.str("domain")?.ok_or_else(|| app.err("domain", "is required"))?.to_string();
                validate_domain(&domain).map_err(|p| app.err("domain", p))?;
                if apps.iter().any(|a: &AppConfig| a.domain == domain) {
                    return Err(app.err("domain", format!("{domain:?} is listed twice")));
                }
                let dir = base.join(app.str("dir")?.ok_or_else(|| app.err("dir", "is required"))?);
                if !dir.join("Cargo.toml").is_file() {
                    return Err(app.err("dir", format!("{} has no Cargo.toml", dir.display())));
                }
                let hosts = match app.map.get("hosts") {
                    None => vec![format!("{domain}.localhost")],
                    Some(Value::Array(hs)) => hs
                        .iter()
                        .enumerate()
                        .map(|(j, h)| match h {
                            Value::String(s) => validate_host(s).map(|()| s.to_ascii_lowercase()).map_err(|p| app.err(&format!("hosts[{j}]"), p)),
                            other => Err(app.err(&format!("hosts[{j}]"), format!("expected a host name, found {other}"))),
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => return Err(app.err("hosts", format!("expected an array of host names, found {}", kind(other)))),
                };
                let timezone = match app.str("timezone")? {
                    Some(name) => toil_schedule::parse_timezone(name).map_err(|p| app.err("timezone", p))?,
                    None => toil_schedule::Tz::UTC,
                };
                let targets = load_targets(&dir)?;
                apps.push(AppConfig { domain, dir, hosts, targets, timezone });
            }
            if apps.is_empty() {
                return Err(root.err("apps", "lists no app"));
            }
        }
        Some(other) => return Err(root.err("apps", format!("expected an array, found {}", kind(other)))),
    }
    Ok(apps)
}

fn default_domain_of(root: &Obj, apps: &[AppConfig]) -> Result<Option<String>, ConfigError> {
    let default_domain = root.str("defaultDomain")?.map(String::from);
    if let Some(d) = &default_domain {
        if !apps.iter().any(|a| &a.domain == d) {
            return Err(root.err("defaultDomain", format!("{d:?} is not one of the apps' domains")));
        }
    }
    Ok(default_domain)
}

fn dev_of(root: &Obj, base: &Path) -> Result<DevConfig, ConfigError> {
    let mut dev = DevConfig {
        listen: "127.0.0.1:8080".parse().expect("literal"),
        admin: "127.0.0.1:9090".parse().expect("literal"),
        cert_dir: base.join("target/toil-dev-cert"),
    };
    if let Some(d) = root.obj("dev")? {
        d.only(&["listen", "admin", "certDir"])?;
        dev.listen = d.addr("listen")?.unwrap_or(dev.listen);
        dev.admin = d.addr("admin")?.unwrap_or(dev.admin);
        if let Some(c) = d.str("certDir")? {
            dev.cert_dir = base.join(c);
        }
    }
    Ok(dev)
}

/// `tls`: certificate files (relative to the config's directory), cleartext, watching.
fn tls_of(root: &Obj, base: &Path) -> Result<TlsConfig, ConfigError> {
    let mut tls = TlsConfig { watch_interval: TLS_WATCH_INTERVAL, ..TlsConfig::default() };
    let Some(t) = root.obj("tls")? else { return Ok(tls) };
    t.only(&["certificates", "cleartext", "httpListen", "selfSigned", "watchIntervalMs", "acme"])?;
    match t.map.get("certificates") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, item) in list.iter().enumerate() {
                let c = Obj::new(t.file, t.key(&format!("certificates[{i}]")), item)?;
                c.only(&["hosts", "cert", "key"])?;
                let hosts = match c.map.get("hosts") {
                    Some(Value::Array(hs)) if !hs.is_empty() => hs
                        .iter()
                        .enumerate()
                        .map(|(j, h)| match h {
                            Value::String(s) => {
                                let name = s.strip_prefix("*.").unwrap_or(s);
                                validate_host(name).map(|()| s.to_ascii_lowercase()).map_err(|p| c.err(&format!("hosts[{j}]"), p))
                            }
                            other => Err(c.err(&format!("hosts[{j}]"), format!("expected a host name, found {other}"))),
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => return Err(c.err("hosts", format!("expected a non-empty array of host names, found {other}"))),
                    None => return Err(c.err("hosts", "is required")),
                };
                let cert = base.join(c.str("cert")?.ok_or_else(|| c.err("cert", "is required (a PEM certificate chain)"))?);
                let key = base.join(c.str("key")?.ok_or_else(|| c.err("key", "is required (a PEM private key)"))?);
                tls.certificates.push(CertificateConfig { hosts, cert, key });
            }
        }
        Some(other) => return Err(t.err("certificates", format!("expected an array, found {}", kind(other)))),
    }
    tls.cleartext = match t.str("cleartext")? {
        None => None,
        Some("serve") => Some(Cleartext::Serve),
        Some("redirect") => Some(Cleartext::Redirect),
        Some("refuse") => Some(Cleartext::Refuse),
        Some(other) => return Err(t.err("cleartext", format!("expected \"serve\", \"redirect\" or \"refuse\", found {other:?}"))),
    };
    tls.http_listen = t.addr("httpListen")?;
    tls.self_signed = match t.map.get("selfSigned") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(t.err("selfSigned", format!("expected a boolean, found {}", kind(other)))),
    };
    if let Some(ms) = t.positive_at_most("watchIntervalMs", 3_600_000, "hour ceiling")? {
        tls.watch_interval = Duration::from_millis(ms);
    }
    tls.acme = t.obj("acme")?.map(|a| acme_of(&a, base)).transpose()?;
    if tls.acme.as_ref().is_some_and(|a| a.challenge == AcmeChallengeKind::Http01) && tls.cleartext == Some(Cleartext::Refuse) {
        let problem = "\"http-01\" needs cleartext HTTP, which tls.cleartext \"refuse\" closes: use \"redirect\" or the \"tls-alpn-01\" challenge";
        return Err(t.err("acme.challenge", problem));
    }
    Ok(tls)
}

fn acme_of(a: &Obj, base: &Path) -> Result<AcmeConfig, ConfigError> {
    a.only(&["directory", "email", "challenge", "renewBeforeDays", "caCertificate", "retryMs", "checkIntervalMs"])?;
    let directory = a.str("directory")?.ok_or_else(|| a.err("directory", "is required (the ACME CA's directory URL)"))?;
    if !directory.starts_with("https://") || directory.len() <= "https://".len() || directory.contains(char::is_whitespace) {
        return Err(a.err("directory", format!("expected an https:// URL (RFC 8555 requires HTTPS), found {directory:?}")));
    }
    let email = a.str("email")?.map(String::from);
    if let Some(e) = email.as_deref().filter(|e| !e.contains('@') || e.contains(char::is_whitespace)) {
        return Err(a.err("email", format!("expected an email address, found {e:?}")));
    }
    let challenge = match a.str("challenge")? {
        None | Some("http-01") => AcmeChallengeKind::Http01,
        Some("tls-alpn-01") => AcmeChallengeKind::TlsAlpn01,
        Some(other) => return Err(a.err("challenge", format!("expected \"http-01\" or \"tls-alpn-01\", found {other:?}"))),
    };
    let days = a.positive_at_most("renewBeforeDays", 60, "60-day ceiling (certificates from public CAs last 90 days or less)")?.unwrap_or(30);
    let retry_ms = a.positive_at_most("retryMs", ACME_RETRY_MAX.as_millis() as u64, "6-hour ceiling")?.unwrap_or(60_000);
    let check_ms = a.positive_at_most("checkIntervalMs", 3_600_000, "hour ceiling")?.unwrap_or(60_000);
    Ok(AcmeConfig {
        directory: directory.to_string(),
        email,
        challenge,
        renew_before: Duration::from_secs(days * 86_400),
        ca_certificate: a.str("caCertificate")?.map(|p| base.join(p)),
        retry_min: Duration::from_millis(retry_ms),
        check_interval: Duration::from_millis(check_ms),
    })
}

/// `limits`: what one box may use, how requests are admitted, what a connection may hold.
fn limits_of(root: &Obj) -> Result<LimitsConfig, ConfigError> {
    let mut limits = LimitsConfig::default();
    let Some(l) = root.obj("limits")? else { return Ok(limits) };
    l.only(&[
        "deadlineMs",
        "memoryMb",
        "maxRequestBodyBytes",
        "maxResponseBodyBytes",
        "maxInstances",
        "maxSessions",
        "maxSessionsPerDomain",
        "maxSessionsPerConnection",
        "maxFrameBytes",
        "maxOutboundBytesPerEvent",
        "maxBoxStreams",
        "hibernateAfterMs",
        "sendStallTimeoutMs",
        "idleTimeoutMs",
        "maxResponseHeaders",
        "maxResponseHeaderBytes",
        "maxRequestsPerDomain",
        "requestQueuePerDomain",
        "requestQueueTimeoutMs",
        "maxConnections",
        "maxConnectionsPerAddress",
        "headerTimeoutMs",
        "requestIdleTimeoutMs",
        "bodyTimeoutMs",
        "connectionReceiveWindowBytes",
        "maxStreamsPerConnection",
    ])?;
    box_limits(&l, &mut limits)?;
    admission_limits(&l, &mut limits)?;
    connection_limits(&l, &mut limits)?;
    Ok(limits)
}

/// Deadlines, memory, bodies, the instance pool and sessions, frames, headers.
fn box_limits(l: &Obj, limits: &mut LimitsConfig) -> Result<(), ConfigError> {
    if let Some(v) = l.positive_at_most("deadlineMs", MAX_DEADLINE_MS, format_args!("{MAX_DEADLINE_MS} ms ceiling"))? {
        limits.deadline = Duration::from_millis(v);
    }
    if let Some(v) = l.positive_at_most("memoryMb", 4096, "4096 MiB a 32-bit wasm memory can address")? {
        limits.memory_bytes = (v as usize) << 20;
    }
    if let Some(v) = l.positive("maxRequestBodyBytes")? {
        limits.max_request_body = v as usize;
    }
    if let Some(v) = l.positive("maxResponseBodyBytes")? {
        limits.max_response_body = v as usize;
    }
    if let Some(v) = l.positive("maxInstances")? {
        if v > MAX_POOL_SLOTS {
            return Err(l.err(
                "maxInstances",
                format!(
                    "{v} instances would reserve {} TiB of address space ({} MiB each: a 4 GiB linear memory reservation and guards, \
                     whatever memoryMb is); at most {MAX_POOL_SLOTS} fit in the {} TiB a node may reserve",
                    (v * POOL_BYTES_PER_INSTANCE) >> 40,
                    POOL_BYTES_PER_INSTANCE >> 20,
                    POOL_ADDRESS_SPACE >> 40
                ),
            ));
        }
        limits.max_instances = v as u32;
    }
    let per_domain_given = l.positive("maxSessionsPerDomain")?;
    if let Some(v) = l.positive("maxSessions")? {
        limits.max_sessions = v as usize;
        limits.max_sessions_per_domain = v as usize;
    }
    if let Some(v) = per_domain_given {
        limits.max_sessions_per_domain = v as usize;
    }
    if limits.max_sessions >= limits.max_instances as usize {
        return Err(l.err(
            "maxSessions",
            format!(
                "{} leaves no instance for requests: every session holds one of the {} instances (maxInstances)",
                limits.max_sessions, limits.max_instances
            ),
        ));
    }
    if let Some(v) = l.positive_at_most("maxSessionsPerConnection", 256, "256-session ceiling")? {
        limits.max_sessions_per_connection = v as usize;
    }
    if let Some(v) = l.positive_at_most("maxFrameBytes", 16 << 20, "16 MiB frame ceiling")? {
        limits.max_frame_bytes = v as usize;
    }
    if let Some(v) = l.positive("maxOutboundBytesPerEvent")? {
        limits.max_outbound_bytes_per_event = v as usize;
    }
    // Clients grant about 100 streams a side (Chromium, quinn's default);
    // past what a client grants, opening waits for it like a stalled write.
    if let Some(v) = l.positive_at_most("maxBoxStreams", 1000, "1000-stream ceiling")? {
        limits.max_box_streams = v as usize;
    }
    // 0: boxes never hibernate.
    if let Some(v) = l.at_most("hibernateAfterMs", MAX_IDLE_TIMEOUT_MS, format_args!("{MAX_IDLE_TIMEOUT_MS} ms (one day) ceiling"))? {
        limits.hibernate_after = (v > 0).then(|| Duration::from_millis(v));
    }
    if let Some(v) = l.positive("sendStallTimeoutMs")? {
        limits.send_stall_timeout = Duration::from_millis(v);
    }
    if let Some(v) = l.positive_at_most("idleTimeoutMs", MAX_IDLE_TIMEOUT_MS, format_args!("{MAX_IDLE_TIMEOUT_MS} ms (one day) ceiling"))? {
        limits.idle_timeout = Duration::from_millis(v);
    }
    // `http`'s header map holds at most 32,768 entries.
    if let Some(v) = l.positive_at_most("maxResponseHeaders", 10_000, "10000-header ceiling")? {
        limits.max_response_headers = v as usize;
    }
    if let Some(v) = l.positive_at_most("maxResponseHeaderBytes", 16 << 20, "16 MiB ceiling")? {
        limits.max_response_header_bytes = v as usize;
    }
    Ok(())
}

/// The per-domain share of the instance budget and its queue (after the budget is known).
fn admission_limits(l: &Obj, limits: &mut LimitsConfig) -> Result<(), ConfigError> {
    let free = limits.instances_for_requests();
    limits.max_requests_per_domain = (free / 2).max(1);
    let left = format_args!("{free} instances left for requests (maxInstances - maxSessions)");
    if let Some(v) = l.positive_at_most("maxRequestsPerDomain", free as u64, left)? {
        limits.max_requests_per_domain = v as usize;
    }
    limits.request_queue_per_domain = limits.max_requests_per_domain;
    if let Some(v) = l.positive_at_most("requestQueuePerDomain", 1_000_000, "1000000 ceiling")? {
        limits.request_queue_per_domain = v as usize;
    }
    limits.request_queue_timeout = limits.deadline;
    if let Some(v) = l.positive_at_most("requestQueueTimeoutMs", MAX_DEADLINE_MS, format_args!("{MAX_DEADLINE_MS} ms ceiling"))? {
        limits.request_queue_timeout = Duration::from_millis(v);
    }
    Ok(())
}

/// Connection caps, flow-control windows and timeouts.
fn connection_limits(l: &Obj, limits: &mut LimitsConfig) -> Result<(), ConfigError> {
    if let Some(v) = l.positive("maxConnections")? {
        limits.max_connections = usize::try_from(v).map_err(|_| l.err("maxConnections", "too large"))?;
    }
    limits.max_connections_per_address = limits.max_connections_per_address.min(limits.max_connections);
    if let Some(v) = l.positive("maxConnectionsPerAddress")? {
        if v as usize > limits.max_connections {
            return Err(l.err("maxConnectionsPerAddress", format!("{v} is over maxConnections ({})", limits.max_connections)));
        }
        limits.max_connections_per_address = v as usize;
    }
    if let Some(v) = l.positive("connectionReceiveWindowBytes")? {
        if !(16 << 10..=64 << 20).contains(&v) {
            return Err(l.err("connectionReceiveWindowBytes", format!("{v} is outside 16 KiB..=64 MiB")));
        }
        limits.connection_receive_window = v as u32;
    }
    if let Some(v) = l.positive_at_most("maxStreamsPerConnection", 1000, "1000-stream ceiling")? {
        limits.max_streams_per_connection = v as u32;
    }
    for (key, slot) in [
        ("headerTimeoutMs", &mut limits.header_timeout),
        ("requestIdleTimeoutMs", &mut limits.request_idle_timeout),
        ("bodyTimeoutMs", &mut limits.body_timeout),
    ] {
        if let Some(v) = l.positive_at_most(key, MAX_IDLE_TIMEOUT_MS, format_args!("{MAX_IDLE_TIMEOUT_MS} ms (one day) ceiling"))? {
            *slot = Duration::from_millis(v);
        }
    }
    Ok(())
}

fn quic_of(root: &Obj) -> Result<QuicConfig, ConfigError> {
    let mut quic = QuicConfig::default();
    if let Some(q) = root.obj("quic")? {
        q.only(&["workers", "steering"])?;
        if let Some(n) = q.positive_at_most("workers", 255, "255 workers a connection ID can name")? {
            quic.workers = n as usize;
        }
        if let Some(s) = q.str("steering")? {
            if s != "bpf" && s != "userspace" {
                return Err(q.err("steering", format!("{s:?} is not one of \"bpf\", \"userspace\"")));
            }
            quic.steering = Some(s.to_string());
        }
    }
    Ok(quic)
}

fn cluster_of(root: &Obj) -> Result<ClusterConfig, ConfigError> {
    let mut cluster = ClusterConfig::default();
    if let Some(c) = root.obj("cluster")? {
        c.only(&["heartbeatMs", "electionTimeoutMs", "ownerTimeoutMs", "claimLeadMs", "tickGraceMs"])?;
        let ms = |k: &str, into: &mut Duration| -> Result<(), ConfigError> {
            if let Some(v) = c.positive(k)? {
                *into = Duration::from_millis(v);
            }
            Ok(())
        };
        ms("heartbeatMs", &mut cluster.heartbeat)?;
        ms("electionTimeoutMs", &mut cluster.election_timeout)?;
        ms("ownerTimeoutMs", &mut cluster.owner_timeout)?;
        ms("claimLeadMs", &mut cluster.claim_lead)?;
        ms("tickGraceMs", &mut cluster.tick_grace)?;
        // Both timeouts count missed heartbeats; under two, a live peer looks dead.
        let over_two_heartbeats = |key: &str, timeout: Duration, otherwise: &str| {
            if timeout > cluster.heartbeat * 2 {
                return Ok(());
            }
            Err(c.err(
                key,
                format!("{} ms must be over twice heartbeatMs ({} ms), or {otherwise}", timeout.as_millis(), cluster.heartbeat.as_millis()),
            ))
        };
        over_two_heartbeats("electionTimeoutMs", cluster.election_timeout, "followers start elections while the leader is alive")?;
        over_two_heartbeats("ownerTimeoutMs", cluster.owner_timeout, "live owners are taken for dead")?;
        // A claim is sent claim_lead before its tick; the tick must start inside the claim's lease.
        let lease = cluster.lease_timing().owner_lease();
        if cluster.claim_lead + cluster.heartbeat >= lease {
            return Err(c.err(
                "claimLeadMs",
                format!(
                    "{} ms plus heartbeatMs ({} ms) must be under the owner lease ({} ms: the lesser of ownerTimeoutMs and twice electionTimeoutMs, less heartbeatMs), or claimed ticks are dropped before they fire",
                    cluster.claim_lead.as_millis(),
                    cluster.heartbeat.as_millis(),
                    lease.as_millis()
                ),
            ));
        }
    }
    Ok(cluster)
}

fn deploy_of(root: &Obj) -> Result<DeployConfig, ConfigError> {
    let mut deploy = DeployConfig::default();
    if let Some(d) = root.obj("deploy")? {
        d.only(&["drainTimeoutMs"])?;
        if let Some(v) = d.positive("drainTimeoutMs")? {
            deploy.drain_timeout = Duration::from_millis(v);
        }
    }
    Ok(deploy)
}

/// NATS refuses payloads over its `max_payload` (1 MiB by default).
const MAX_CHANNEL_MESSAGE_BYTES: u64 = 1 << 20;

fn channels_of(root: &Obj) -> Result<ChannelsConfig, ConfigError> {
    let mut channels = ChannelsConfig::default();
    let Some(c) = root.obj("channels")? else { return Ok(channels) };
    c.only(&["nats", "historySize", "historyTtlMs", "subscriberQueue", "maxMessageBytes", "maxSubscriptionsPerBox", "maxTopicsPerDomain"])?;
    if let Some(url) = c.str("nats")? {
        if !["nats://", "tls://"].iter().any(|scheme| url.starts_with(scheme)) {
            return Err(c.err("nats", format!("expected a NATS server URL like nats://127.0.0.1:4222, found {url:?}")));
        }
        channels.nats = Some(url.to_string());
    }
    let count = |k: &str, most: u64, into: &mut usize| -> Result<(), ConfigError> {
        if let Some(v) = c.positive_at_most(k, most, format_args!("{most} ceiling"))? {
            *into = v as usize;
        }
        Ok(())
    };
    count("historySize", 100_000, &mut channels.history_size)?;
    count("subscriberQueue", 1_000_000, &mut channels.subscriber_queue)?;
    count("maxMessageBytes", MAX_CHANNEL_MESSAGE_BYTES, &mut channels.max_message_bytes)?;
    count("maxSubscriptionsPerBox", 10_000, &mut channels.max_subscriptions_per_box)?;
    count("maxTopicsPerDomain", 10_000_000, &mut channels.max_topics_per_domain)?;
    const MAX_TTL_MS: u64 = 30 * 86_400_000;
    if let Some(v) = c.positive_at_most("historyTtlMs", MAX_TTL_MS, format_args!("{MAX_TTL_MS} ms (30 days) ceiling"))? {
        channels.history_ttl = Duration::from_millis(v);
    }
    Ok(channels)
}

fn guest_target_dir_of(root: &Obj, base: &Path) -> Result<PathBuf, ConfigError> {
    let mut guest_target_dir = base.join("target/guest");
    if let Some(b) = root.obj("build")? {
        b.only(&["targetDir"])?;
        if let Some(t) = b.str("targetDir")? {
            guest_target_dir = base.join(t);
        }
    }
    Ok(guest_target_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("toilcfg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("app/Cargo.toml"), "[package]").unwrap();
        Config::from_value(&dir.join(FILE_NAME), &v)
    }

    fn key_error(v: Value) -> (String, String) {
        match parse(v) {
            Err(ConfigError::Key { key, problem, .. }) => (key, problem),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_full_config() {
        let c = parse(json!({
            "apps": [{"domain": "hello", "dir": "app", "hosts": ["Hello.Example"], "timezone": "Europe/Paris"}],
            "defaultDomain": "hello",
            "dev": {"listen": "127.0.0.1:1234", "admin": "127.0.0.1:1235"},
            "limits": {"deadlineMs": 20, "memoryMb": 8, "maxRequestBodyBytes": 10},
        }))
        .unwrap();
        assert_eq!(c.apps[0].hosts, ["hello.example"]);
        assert_eq!(c.apps[0].timezone.name(), "Europe/Paris");
        assert_eq!(c.apps[0].targets, Targets::default());
        assert_eq!(c.dev.listen.port(), 1234);
        assert_eq!(c.limits.deadline, Duration::from_millis(20));
        assert_eq!(c.limits.memory_bytes, 8 << 20);
        assert_eq!(c.limits.max_request_body, 10);
        assert_eq!(c.limits.max_response_body, LimitsConfig::default().max_response_body);
    }

    #[test]
    fn per_domain_request_share_defaults_to_half_the_free_instances() {
        let app = json!({"domain": "a", "dir": "app"});
        let c = parse(json!({"apps": [app], "limits": {"maxInstances": 20, "maxSessions": 4, "deadlineMs": 300}})).unwrap();
        assert_eq!(c.limits.max_requests_per_domain, 8);
        assert_eq!(c.limits.request_queue_per_domain, 8);
        assert_eq!(c.limits.request_queue_timeout, Duration::from_millis(300));
    }

    #[test]
    fn json_errors_are_precise_and_said_once() {
        let e = parse_json(r#"{"apps": [], "limits": {"deadlineMs": 5, "deadlineMs": 6}}"#).unwrap_err().to_string();
        assert!(e.contains("key \"deadlineMs\" appears twice") && e.contains("line 1"), "{e}");
        assert!(parse_json(r#"{"a": {"x": 1}, "b": {"x": 2}, "c": [{"x": 1}, {"x": 1}]}"#).is_ok(), "the same key in different objects is fine");
        let dir = std::env::temp_dir().join(format!("toilcfg-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(FILE_NAME);
        std::fs::write(&file, r#"{"apps": [],}"#).unwrap();
        let e = Config::load(&file).unwrap_err();
        assert!(std::error::Error::source(&e).is_none(), "the cause is in the message only: {e}");
        assert_eq!(e.to_string().matches("trailing comma").count(), 1, "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let app = json!({"domain": "a", "dir": "app"});
        assert_eq!(key_error(json!({"apps": [app], "limits": {"deadlineMs": "fast"}})).0, "limits.deadlineMs");
        assert_eq!(key_error(json!({"apps": [app], "limits": {"deadlineMs": 0}})).0, "limits.deadlineMs");
        let (key, problem) = key_error(json!({"apps": [{"domain": "a", "dir": "app", "timezone": "Mars/Olympus"}]}));
        assert_eq!(key, "apps[0].timezone");
        assert!(problem.contains("\"Mars/Olympus\" is not an IANA time zone name"), "{problem}");
        let (key, problem) = key_error(json!({"apps": [app], "limits": {"maxInstances": 10, "maxSessions": 10}}));
        assert_eq!(key, "limits.maxSessions");
        assert!(problem.contains("maxInstances"), "{problem}");
        let (key, problem) = key_error(json!({"apps": [app], "cluster": {"heartbeatMs": 100, "electionTimeoutMs": 150}}));
        assert_eq!(key, "cluster.electionTimeoutMs");
        assert!(problem.contains("over twice heartbeatMs (100 ms)"), "{problem}");
        // The default lease: min(300, 2 × 80) − 30 = 130 ms; a 100 ms lead plus a 30 ms heartbeat leaves nothing.
        let (key, problem) = key_error(json!({"apps": [app], "cluster": {"claimLeadMs": 100}}));
        assert_eq!(key, "cluster.claimLeadMs");
        assert!(problem.contains("under the owner lease (130 ms"), "{problem}");
        assert!(parse(json!({"apps": [app], "cluster": {"claimLeadMs": 99}})).is_ok());
        let (key, problem) = key_error(json!({"apps": [app], "quic": {"steering": "magic"}}));
        assert_eq!(key, "quic.steering");
        assert!(problem.contains("userspace"), "{problem}");
        assert_eq!(key_error(json!({"apps": [app], "dev": {"listen": "nowhere"}})).0, "dev.listen");
        assert_eq!(key_error(json!({"apps": [app], "limitz": {}})).0, "limitz");
        assert_eq!(key_error(json!({"apps": [{"domain": "Bad_Name", "dir": "app"}]})).0, "apps[0].domain");
        assert_eq!(key_error(json!({"apps": [{"domain": "a", "dir": "missing"}]})).0, "apps[0].dir");
        assert_eq!(key_error(json!({"apps": [{"domain": "a"}]})).0, "apps[0].dir");
        assert_eq!(key_error(json!({"apps": [app, app]})).0, "apps[1].domain");
        assert_eq!(key_error(json!({"apps": [app], "defaultDomain": "zzz"})).0, "defaultDomain");
        assert_eq!(key_error(json!({"targets": {"release": {"outFile": "x.txt"}}})).0, "targets.release.outFile");
        assert_eq!(key_error(json!({"targets": {"release": {"daemonFile": "x.txt"}}})).0, "targets.release.daemonFile");
        let (key, problem) = key_error(json!({"targets": {"release": {"requestFile": "a.wasm", "outFile": "b.wasm"}}}));
        assert_eq!(key, "targets.release.outFile");
        assert!(problem.contains("alias of `requestFile`"), "{problem}");
        let targets = parse(json!({"targets": {"release": {"requestFile": "r.wasm", "coldFile": "d.wasm"}}})).unwrap().apps[0].targets.clone();
        assert_eq!((targets.out_file, targets.cold_file), ("r.wasm".into(), "d.wasm".into()));
        let (key, problem) = key_error(json!({"apps": [app], "limits": {"idleTimeoutMs": 1u64 << 62}}));
        assert_eq!(key, "limits.idleTimeoutMs");
        assert!(problem.contains("ceiling"), "{problem}");
        for (bad, says) in [(json!(-1), "non-negative integer"), (json!("10s"), "non-negative integer"), (json!(1u64 << 62), "ceiling")] {
            let (key, problem) = key_error(json!({"apps": [app], "limits": {"hibernateAfterMs": bad}}));
            assert_eq!(key, "limits.hibernateAfterMs");
            assert!(problem.contains(says), "{problem}");
        }
        let never = |v: serde_json::Value| parse(json!({"apps": [app], "limits": {"hibernateAfterMs": v}})).unwrap().limits.hibernate_after;
        assert_eq!(never(json!(0)), None, "0: boxes never hibernate");
        assert_eq!(never(json!(2500)), Some(Duration::from_millis(2500)));
        assert_eq!(LimitsConfig::default().hibernate_after, Some(Duration::from_secs(10)));
        let (key, problem) = key_error(json!({"apps": [app], "limits": {"maxInstances": 40_000}}));
        assert_eq!(key, "limits.maxInstances");
        assert!(problem.contains("address space") && problem.contains("at most 16131"), "{problem}");
        // Stream boxes have a pool of their own: requests get the slots it leaves.
        let limits = |l: serde_json::Value| parse(json!({"apps": [app], "limits": l})).unwrap().limits;
        let many = limits(json!({"maxInstances": 16_000, "maxSessions": 10_000}));
        assert_eq!(many.request_pool_slots(None), 6131);
        let default = limits(json!({"maxInstances": 1000, "maxSessions": 500}));
        assert_eq!(default.request_pool_slots(Some(65_530)), 1000);
        // Linux's default vm.max_map_count cannot map 10 000 boxes, a
        // request slot per instance and all of them alive: requests get
        // what fits, and never fewer than the sessions leave.
        let crowded = limits(json!({"maxInstances": 10_200, "maxSessions": 10_100}));
        let slots = crowded.request_pool_slots(Some(65_530));
        assert_eq!(slots, 217);
        assert!(crowded.pool_maps(slots) <= 65_530 && crowded.pool_maps(slots + 1) > 65_530);
        assert_eq!(crowded.request_pool_slots(Some(1000)), 100, "the instances sessions leave, whatever fits");
        let (key, problem) = key_error(json!({"apps": [app], "limits": {"maxInstances": 100, "maxSessions": 50, "maxRequestsPerDomain": 51}}));
        assert_eq!(key, "limits.maxRequestsPerDomain");
        assert!(problem.contains("50 instances left"), "{problem}");
        assert_eq!(key_error(json!({"apps": [app], "limits": {"maxResponseHeaders": 40_000}})).0, "limits.maxResponseHeaders");
        assert_eq!(key_error(json!({"apps": [app], "limits": {"deadlineMs": 1u64 << 40}})).0, "limits.deadlineMs");
        let (key, problem) = key_error(json!({"apps": [app], "limits": {"memoryMb": 99999}}));
        assert_eq!(key, "limits.memoryMb");
        assert!(problem.contains("4096"), "{problem}");
    }

    #[test]
    fn tls_certificates_cleartext_and_their_errors() {
        let app = json!({"domain": "a", "dir": "app"});
        let c = parse(json!({"apps": [app], "tls": {
            "certificates": [{"hosts": ["App.Example.com", "*.example.com"], "cert": "certs/a.pem", "key": "certs/a.key"}],
            "cleartext": "redirect", "httpListen": "0.0.0.0:80", "selfSigned": false, "watchIntervalMs": 500
        }}))
        .unwrap();
        let cert = &c.tls.certificates[0];
        assert_eq!(cert.hosts, ["app.example.com", "*.example.com"]);
        assert!(cert.cert.ends_with("certs/a.pem") && cert.cert.is_absolute(), "{}", cert.cert.display());
        assert_eq!(
            (c.tls.cleartext, c.tls.http_listen, c.tls.self_signed, c.tls.watch_interval),
            (Some(Cleartext::Redirect), Some("0.0.0.0:80".parse().unwrap()), Some(false), Duration::from_millis(500))
        );
        let defaults = parse(json!({"apps": [app]})).unwrap().tls;
        assert_eq!(defaults, TlsConfig { watch_interval: TLS_WATCH_INTERVAL, ..TlsConfig::default() });

        let bad = |tls: Value| key_error(json!({"apps": [app], "tls": tls}));
        assert_eq!(bad(json!({"certificates": [{"cert": "a", "key": "b"}]})).0, "tls.certificates[0].hosts");
        assert_eq!(bad(json!({"certificates": [{"hosts": [], "cert": "a", "key": "b"}]})).0, "tls.certificates[0].hosts");
        assert_eq!(bad(json!({"certificates": [{"hosts": ["a b"], "cert": "a", "key": "b"}]})).0, "tls.certificates[0].hosts[0]");
        assert_eq!(bad(json!({"certificates": [{"hosts": ["a.com"], "key": "b"}]})).0, "tls.certificates[0].cert");
        assert_eq!(bad(json!({"certificates": [{"hosts": ["a.com"], "cert": "a"}]})).0, "tls.certificates[0].key");
        assert_eq!(bad(json!({"certificates": {}})).0, "tls.certificates");
        let (key, problem) = bad(json!({"cleartext": "sometimes"}));
        assert_eq!(key, "tls.cleartext");
        assert!(problem.contains("\"redirect\""), "{problem}");
        assert_eq!(bad(json!({"httpListen": "port 80"})).0, "tls.httpListen");
        assert_eq!(bad(json!({"selfSigned": "yes"})).0, "tls.selfSigned");
        assert_eq!(bad(json!({"acme": {}})).0, "tls.acme.directory");
        assert_eq!(bad(json!({"acme": {"directory": "http://ca/dir"}})).0, "tls.acme.directory");
        assert_eq!(bad(json!({"acme": {"directory": "https://ca/dir", "email": "me"}})).0, "tls.acme.email");
        assert_eq!(bad(json!({"acme": {"directory": "https://ca/dir", "challenge": "dns-01"}})).0, "tls.acme.challenge");
        assert_eq!(bad(json!({"acme": {"directory": "https://ca/dir", "renewBeforeDays": 90}})).0, "tls.acme.renewBeforeDays");
        assert_eq!(bad(json!({"acme": {"directory": "https://ca/dir", "retryMs": 0}})).0, "tls.acme.retryMs");
        assert_eq!(bad(json!({"acme": {"directory": "https://ca/dir", "agree": true}})).0, "tls.acme.agree");
        let (key, problem) = bad(json!({"acme": {"directory": "https://ca/dir"}, "cleartext": "refuse"}));
        assert_eq!(key, "tls.acme.challenge");
        assert!(problem.contains("tls-alpn-01"), "{problem}");
        assert!(parse(json!({"apps": [app], "tls": {"acme": {"directory": "https://ca/dir", "challenge": "tls-alpn-01"}, "cleartext": "refuse"}}))
            .is_ok());
        let acme = parse(
            json!({"apps": [app], "tls": {"acme": {"directory": "https://ca.test/dir", "challenge": "tls-alpn-01", "caCertificate": "ca.pem"}}}),
        )
        .unwrap()
        .tls
        .acme
        .unwrap();
        assert_eq!(
            (acme.challenge, acme.renew_before, acme.retry_min),
            (AcmeChallengeKind::TlsAlpn01, Duration::from_secs(30 * 86_400), Duration::from_secs(60))
        );
        assert!(acme.ca_certificate.unwrap().is_absolute());
    }
}
