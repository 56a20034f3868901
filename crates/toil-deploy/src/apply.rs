//! The node side of deploys: accept a release (validate, then commit it
//! to the log) and serve whatever release the log says, swapping domains
//! atomically.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use toil_cluster::{Applied, BlobRef, Command, NodeId, Refused, Release, ReleaseSpec};
use toil_daemon::{now_ms, ClaimLog, Daemons};
use toil_edge::domains::Domain;
use toil_edge::DomainTable;
use toil_metrics::Registry;
use toil_runtime::Runtime;
use tokio::sync::watch;

use crate::api::{DeployReply, DeployRequest, RollbackRequest};
use crate::release::{self, tier_blobs, DeployError, LoadedRelease};
use crate::store::BlobStore;

/// Fetches a blob this node lacks from other nodes (`origin` first: it accepted the upload).
pub trait BlobFetch: Send + Sync + 'static {
    fn fetch<'a>(&'a self, blob: &'a BlobRef, origin: NodeId) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;
}

/// How a node deploys.
#[derive(Clone, Debug)]
pub struct DeploySettings {
    pub node: NodeId,
    /// The domain that answers hosts no domain names.
    pub default_domain: Option<String>,
    /// How long open stream sessions of a replaced version may go on before
    /// they are closed with `close_code`.
    pub drain: Duration,
    /// `REDEPLOYED` on a node, `RELOADED` in dev.
    pub close_code: u32,
}

/// Accepts deploys on this node and serves the releases the log commits.
pub struct Deployer {
    settings: DeploySettings,
    runtime: Runtime,
    registry: Registry,
    store: BlobStore,
    domains: Arc<DomainTable>,
    daemons: Arc<Daemons>,
    log: Arc<dyn ClaimLog>,
    fetch: Option<Arc<dyn BlobFetch>>,
    /// Releases this node validated (compiled) before proposing them, kept
    /// for the swap so they are not compiled twice.
    validated: Mutex<HashMap<String, (ReleaseSpec, Arc<LoadedRelease>)>>,
    /// The version of each domain this node serves.
    served: watch::Sender<BTreeMap<String, u64>>,
}

impl Deployer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: DeploySettings,
        runtime: Runtime,
        registry: Registry,
        store: BlobStore,
        domains: Arc<DomainTable>,
        daemons: Arc<Daemons>,
        log: Arc<dyn ClaimLog>,
        fetch: Option<Arc<dyn BlobFetch>>,
    ) -> Arc<Deployer> {
        Arc::new(Deployer {
            settings,
            runtime,
            registry,
            store,
            domains,
            daemons,
            log,
            fetch,
            validated: Mutex::default(),
            served: watch::Sender::new(BTreeMap::new()),
        })
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The versions this node serves, by domain; changes after every swap.
    pub fn served(&self) -> watch::Receiver<BTreeMap<String, u64>> {
        self.served.subscribe()
    }

    /// Stores an uploaded artifact.
    pub fn upload(&self, bytes: &[u8]) -> Result<BlobRef, DeployError> {
        Ok(self.store.put(bytes)?)
    }

    /// Validates the release `req` names and commits it to the log
    /// (`only_if_new`: only if the domain has no release yet). Nothing
    /// changes unless every artifact loads.
    pub async fn deploy(&self, req: DeployRequest, only_if_new: bool) -> Result<DeployReply, DeployError> {
        let blob = |tier, sha: &Option<String>| -> Result<Option<BlobRef>, DeployError> {
            let Some(sha) = sha else { return Ok(None) };
            let bytes = self.store.get_by_hash(sha).ok_or_else(|| DeployError::NotUploaded { tier, sha256: sha.clone() })?;
            Ok(Some(BlobRef { sha256: sha.clone(), size: bytes.len() as u64 }))
        };
        let hosts =
            if req.hosts.is_empty() { vec![format!("{}.localhost", req.domain)] } else { req.hosts.iter().map(|h| h.to_ascii_lowercase()).collect() };
        let spec = ReleaseSpec {
            hosts,
            timezone: req.timezone.clone().unwrap_or_else(|| "UTC".into()),
            request: blob(toil_abi::Tier::Request, &req.request)?,
            stream: blob(toil_abi::Tier::Stream, &req.stream)?,
            daemon: blob(toil_abi::Tier::Daemon, &req.daemon)?,
            origin: self.settings.node,
            deployed_at_ms: now_ms(),
            source: req.source.clone(),
        };
        let domain = req.domain;
        let active = self.log.state().active_release(&domain).cloned();
        if let Some(active) = active.filter(|a| only_if_new || a.spec.same_content(&spec)) {
            return Ok(DeployReply { domain, version: active.version, unchanged: true });
        }
        let loaded = self.load(&domain, &spec).await?;
        self.validated.lock().expect("validated releases").insert(domain.clone(), (spec.clone(), loaded));
        let applied = self
            .log
            .propose(Command::Deploy { domain: domain.clone(), release: spec, only_if_new })
            .await
            .map_err(|e| DeployError::Log(e.to_string()))?;
        match applied {
            Applied::Deployed { version, unchanged } => Ok(DeployReply { domain, version, unchanged }),
            other => Err(DeployError::Log(format!("the log applied the deploy as {other:?}"))),
        }
    }

    /// Serves an earlier release again: `version`, or the one before the served one.
    pub async fn rollback(&self, req: RollbackRequest) -> Result<DeployReply, DeployError> {
        let state = self.log.state();
        let history = state.releases().get(&req.domain).ok_or_else(|| DeployError::Domain(format!("{:?} was never deployed", req.domain)))?;
        let version = match req.version {
            Some(v) => v,
            None => history.previous().ok_or_else(|| DeployError::NoPrevious(req.domain.clone()))?.version,
        };
        let Some(release) = history.get(version) else {
            let kept = history.releases.iter().map(|r| r.version.to_string()).collect::<Vec<_>>().join(", ");
            return Err(DeployError::UnknownVersion { domain: req.domain, version, kept });
        };
        // The blobs must still be loadable here before the cluster switches.
        let loaded = self.load(&req.domain, &release.spec).await?;
        self.validated.lock().expect("validated releases").insert(req.domain.clone(), (release.spec.clone(), loaded));
        let applied =
            self.log.propose(Command::Activate { domain: req.domain.clone(), version }).await.map_err(|e| DeployError::Log(e.to_string()))?;
        match applied {
            Applied::Deployed { version, unchanged } => Ok(DeployReply { domain: req.domain, version, unchanged }),
            Applied::Refused(Refused::UnknownVersion { .. }) => Err(DeployError::UnknownVersion { domain: req.domain, version, kept: "?".into() }),
            other => Err(DeployError::Log(format!("the log applied the rollback as {other:?}"))),
        }
    }

    /// Loads every artifact of `spec` (fetching the blobs this node lacks),
    /// compiling off the async workers.
    async fn load(&self, domain: &str, spec: &ReleaseSpec) -> Result<Arc<LoadedRelease>, DeployError> {
        release::check_fields(domain, spec)?;
        let mut bytes: [Option<Vec<u8>>; 3] = Default::default();
        for (slot, (tier, blob)) in bytes.iter_mut().zip(tier_blobs(spec)) {
            let Some(blob) = blob else { continue };
            *slot = Some(match self.store.get(blob) {
                Some(b) => b,
                None => {
                    let fetch = self.fetch.as_ref().ok_or_else(|| DeployError::NotUploaded { tier, sha256: blob.sha256.clone() })?;
                    let got = fetch.fetch(blob, spec.origin).await.map_err(|why| DeployError::Fetch { tier, sha256: blob.sha256.clone(), why })?;
                    let stored = self.store.put(&got)?;
                    if stored != *blob {
                        return Err(DeployError::Fetch {
                            tier,
                            sha256: blob.sha256.clone(),
                            why: format!("got {} bytes with sha256 {}", stored.size, stored.sha256),
                        });
                    }
                    got
                }
            });
        }
        let (runtime, registry, domain, spec) = (self.runtime.clone(), self.registry.clone(), domain.to_string(), spec.clone());
        let loaded = tokio::task::spawn_blocking(move || release::load(&runtime, &registry, &domain, &spec, bytes))
            .await
            .map_err(|e| DeployError::Log(format!("loading panicked: {e}")))??;
        Ok(Arc::new(loaded))
    }

    /// Serves the release the log says for every domain, now. Returns the
    /// domains that could not be swapped, with why.
    pub async fn sync(&self) -> Vec<(String, DeployError)> {
        let state = self.log.state();
        let mut failed = Vec::new();
        for (domain, history) in state.releases() {
            let Some(release) = history.active() else { continue };
            if self.served.borrow().get(domain) == Some(&release.version) {
                continue;
            }
            if let Err(e) = self.swap(domain, release).await {
                tracing::error!(domain, version = release.version, "cannot serve the deployed release; the previous version keeps serving: {e}");
                failed.push((domain.clone(), e));
            }
        }
        failed
    }

    /// Follows the log: every committed deploy or rollback is swapped in.
    /// A release that cannot be loaded (a blob not reachable yet) is retried.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.log.changes();
        loop {
            let failed = self.sync().await;
            let retry = if failed.is_empty() { Duration::from_secs(3600) } else { Duration::from_secs(1) };
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Swaps `domain` to `release`.
    async fn swap(&self, domain: &str, release: &Release) -> Result<(), DeployError> {
        let started = std::time::Instant::now();
        let validated = self.validated.lock().expect("validated releases").remove(domain);
        let loaded = match validated {
            Some((spec, loaded)) if spec.same_content(&release.spec) => loaded,
            _ => self.load(domain, &release.spec).await?,
        };
        let default = match &self.settings.default_domain {
            Some(d) => d == domain,
            None => self.log.state().releases().len() == 1,
        };
        let next = Domain::new(domain, release.version, loaded.request.clone(), loaded.stream.clone());
        let previous = self.domains.insert(next, &release.spec.hosts, default);
        self.daemons.set_app(domain, loaded.daemon.clone());
        self.served.send_modify(|s| {
            s.insert(domain.to_string(), release.version);
        });
        let from = previous.as_ref().map_or("nothing".to_string(), |p| format!("version {}", p.version));
        tracing::info!(
            domain,
            version = release.version,
            "serving {domain} version {} (was {from}; swapped in {:?})",
            release.version,
            started.elapsed()
        );
        if let Some(old) = previous.filter(|p| p.stream.is_some()) {
            let (drain, code, version) = (self.settings.drain, self.settings.close_code, release.version);
            let reason = if code == toil_abi::stream::close_code::RELOADED {
                format!("{domain} was reloaded (version {version})")
            } else {
                format!("{domain} was redeployed (version {version})")
            };
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                old.retire(code, reason);
            });
        }
        self.report(domain, release.version);
        Ok(())
    }

    /// Records in the log which version this node now serves (for `toil status`).
    fn report(&self, domain: &str, version: u64) {
        let (log, node, domain) = (self.log.clone(), self.settings.node, domain.to_string());
        tokio::spawn(async move {
            for attempt in 0..5u32 {
                let command = Command::Served { node, domain: domain.clone(), version };
                match log.propose(command).await {
                    Ok(_) => return,
                    Err(e) if attempt == 4 => tracing::warn!(domain, version, "could not record the served version: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
                }
            }
        });
    }
}
