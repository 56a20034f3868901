//! Validation of a release: everything is checked, and every artifact
//! compiled and linked, before the release is proposed to the cluster.

use std::sync::Arc;

use toil_abi::Tier;
use toil_cluster::{BlobRef, LogError, ReleaseSpec};
use toil_metrics::Registry;
use toil_runtime::daemon::DaemonApp;
use toil_runtime::request::RequestApp;
use toil_runtime::stream::StreamApp;
use toil_runtime::{LoadError, Runtime};

/// Why a deploy was refused or could not be applied. Each names the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("domain: {0}")]
    Domain(String),
    #[error("hosts[{index}]: {why}")]
    Host { index: usize, why: String },
    #[error("timezone: {0}")]
    Timezone(String),
    #[error("the release has no artifact; a domain needs at least one tier")]
    Empty,
    #[error("the {tier} artifact {sha256:.12}… was not uploaded to this node (POST /deploy/blob first)")]
    NotUploaded { tier: Tier, sha256: String },
    #[error("{domain}: the {tier} artifact ({size} bytes, sha256 {sha256:.12}…) is refused: {source}")]
    Invalid { domain: String, tier: Tier, size: u64, sha256: String, source: Box<LoadError> },
    #[error("the {tier} artifact {sha256:.12}… could not be fetched from any node: {why}")]
    Fetch { tier: Tier, sha256: String, why: String },
    #[error("{domain} has no release {version} (versions kept: {kept})")]
    UnknownVersion { domain: String, version: u64, kept: String },
    #[error("{0} has no earlier release to roll back to")]
    NoPrevious(String),
    #[error("hosts: {host:?} is served by the {domain} domain")]
    HostTaken { host: String, domain: String },
    #[error("{0}")]
    Conflict(String),
    /// The cluster log cannot take the command now (no leader, forwarding
    /// failed, a timeout): the same deploy may go through if tried again.
    #[error("{0}")]
    LogUnavailable(String),
    /// Something failed on this node (a panicked blocking task, the log's
    /// storage, an answer the log should never give): trying again does not help.
    #[error("{0}")]
    Internal(String),
    #[error("storing the artifact: {0}")]
    Store(#[from] std::io::Error),
}

impl DeployError {
    /// Whether the caller sent something wrong (a 4xx), rather than the node failing.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, DeployError::Fetch { .. } | DeployError::LogUnavailable(_) | DeployError::Internal(_) | DeployError::Store(_))
    }
}

impl From<LogError> for DeployError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Unavailable(_) => DeployError::LogUnavailable(e.to_string()),
            LogError::Failed(_) => DeployError::Internal(e.to_string()),
        }
    }
}

/// A release compiled and linked, ready to swap in.
pub struct LoadedRelease {
    pub request: Option<Arc<RequestApp>>,
    pub stream: Option<Arc<StreamApp>>,
    pub daemon: Option<Arc<DaemonApp>>,
}

/// The blob of each tier of `spec`, in [`Tier::ALL`] order.
pub fn tier_blobs(spec: &ReleaseSpec) -> [(Tier, Option<&BlobRef>); 3] {
    [(Tier::Request, spec.request.as_ref()), (Tier::Stream, spec.stream.as_ref()), (Tier::Daemon, spec.daemon.as_ref())]
}

/// Checks what a release says besides its artifacts: the domain name, the host names, the time zone.
pub fn check_fields(domain: &str, spec: &ReleaseSpec) -> Result<toil_schedule::Tz, DeployError> {
    toil_config::validate_domain(domain).map_err(DeployError::Domain)?;
    for (index, host) in spec.hosts.iter().enumerate() {
        toil_config::validate_host(host).map_err(|why| DeployError::Host { index, why })?;
    }
    if spec.blobs().next().is_none() {
        return Err(DeployError::Empty);
    }
    toil_schedule::parse_timezone(&spec.timezone).map_err(DeployError::Timezone)
}

/// Validates, compiles and links every artifact of `spec` (`bytes` in
/// [`Tier::ALL`] order). Compilation is CPU-bound: call it off the async
/// workers.
pub fn load(
    runtime: &Runtime,
    registry: &Registry,
    domain: &str,
    spec: &ReleaseSpec,
    bytes: [Option<Vec<u8>>; 3],
) -> Result<LoadedRelease, DeployError> {
    let timezone = check_fields(domain, spec)?;
    let mut loaded = LoadedRelease { request: None, stream: None, daemon: None };
    for ((tier, blob), bytes) in tier_blobs(spec).into_iter().zip(bytes) {
        let (Some(blob), Some(bytes)) = (blob, bytes) else { continue };
        let invalid = |source| DeployError::Invalid {
            domain: domain.to_string(),
            tier,
            size: blob.size,
            sha256: blob.sha256.clone(),
            source: Box::new(source),
        };
        match tier {
            Tier::Request => loaded.request = Some(Arc::new(RequestApp::load(runtime, registry, domain, &bytes).map_err(invalid)?)),
            Tier::Stream => loaded.stream = Some(Arc::new(StreamApp::load(runtime, registry, domain, &bytes).map_err(invalid)?)),
            Tier::Daemon => loaded.daemon = Some(Arc::new(DaemonApp::load(runtime, registry, domain, &bytes, timezone).map_err(invalid)?)),
        }
    }
    Ok(loaded)
}
