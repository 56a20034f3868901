//! The node side of deploys: accept a release (validate, then commit it
//! to the log) and serve whatever release the log says, swapping domains
//! atomically.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use toil_cluster::{now_ms, Applied, BlobRef, ClaimLog, Command, LogError, NodeId, Refused, Release, ReleaseSpec};
use toil_daemon::Daemons;
use toil_edge::domains::Domain;
use toil_edge::DomainTable;
use toil_metrics::Registry;
use toil_runtime::Runtime;
use tokio::sync::watch;

use crate::api::{DeployReply, DeployRequest, RollbackRequest};
use crate::release::{self, tier_blobs, DeployError, LoadedRelease};
use crate::store::BlobStore;

/// Runs `f` on the blocking pool (file I/O, hashing, compilation).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, DeployError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DeployError::Internal(format!("a blocking task failed: {e}")))
}

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
    /// Releases that failed to load, by domain, and when to try again.
    failures: Mutex<HashMap<String, Failure>>,
}

/// A release that could not be swapped in.
struct Failure {
    version: u64,
    next_try: Instant,
    delay: Duration,
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
            failures: Mutex::default(),
        })
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The versions this node serves, by domain; changes after every swap.
    pub fn served(&self) -> watch::Receiver<BTreeMap<String, u64>> {
        self.served.subscribe()
    }

    /// Stores an uploaded artifact (hashing and writing off the async workers).
    pub async fn upload(&self, bytes: bytes::Bytes) -> Result<BlobRef, DeployError> {
        let store = self.store.clone();
        Ok(blocking(move || store.put(&bytes)).await??)
    }

    /// Validates the release `req` names and commits it to the log
    /// (`only_if_new`: only if the domain has no release yet). Nothing
    /// changes unless every artifact loads.
    pub async fn deploy(&self, req: DeployRequest, only_if_new: bool) -> Result<DeployReply, DeployError> {
        let blob = |tier, sha: &Option<String>| -> Result<Option<BlobRef>, DeployError> {
            let Some(sha) = sha else { return Ok(None) };
            let size = self.store.size_of(sha).ok_or_else(|| DeployError::NotUploaded { tier, sha256: sha.clone() })?;
            Ok(Some(BlobRef { sha256: sha.clone(), size }))
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
        let state = self.log.state();
        // A node's state may lag the log, but it never shows a release that
        // does not exist: a seed can stop here. Anything else is decided by the log.
        if let Some(active) = state.active_release(&domain).filter(|_| only_if_new) {
            return Ok(DeployReply { domain, version: active.version, unchanged: true });
        }
        if let Some((host, other)) = state.host_conflict(&domain, &spec.hosts) {
            return Err(DeployError::HostTaken { host, domain: other });
        }
        let loaded = self.load(&domain, &spec).await?;
        let command = Command::Deploy { domain: domain.clone(), release: spec.clone(), only_if_new };
        self.commit(&domain, spec, loaded, command).await
    }

    /// Serves an earlier release again: `version`, or the one before the served one.
    pub async fn rollback(&self, req: RollbackRequest) -> Result<DeployReply, DeployError> {
        let state = self.log.state();
        let history = state.releases().get(&req.domain).ok_or_else(|| DeployError::Domain(format!("{:?} was never deployed", req.domain)))?;
        // "The previous one" is relative to what is served: the log refuses
        // the switch if another deploy or rollback got there first.
        let (version, from) = match req.version {
            Some(v) => (v, None),
            None => (history.previous().ok_or_else(|| DeployError::NoPrevious(req.domain.clone()))?.version, Some(history.active)),
        };
        let Some(release) = history.get(version) else {
            let kept = history.releases.iter().map(|r| r.version.to_string()).collect::<Vec<_>>().join(", ");
            return Err(DeployError::UnknownVersion { domain: req.domain, version, kept });
        };
        // The blobs must still be loadable here before the cluster switches.
        let loaded = self.load(&req.domain, &release.spec).await?;
        let command = Command::Activate { domain: req.domain.clone(), version, from };
        self.commit(&req.domain, release.spec.clone(), loaded, command).await
    }

    /// Proposes a deploy or rollback of `domain` whose release this node
    /// loaded; the loaded release is kept for the swap if the log takes it.
    async fn commit(&self, domain: &str, spec: ReleaseSpec, loaded: Arc<LoadedRelease>, command: Command) -> Result<DeployReply, DeployError> {
        self.validated.lock().expect("validated releases").insert(domain.to_string(), (spec, loaded));
        let applied = self.log.propose(command).await;
        let forget = || {
            self.validated.lock().expect("validated releases").remove(domain);
        };
        let domain = domain.to_string();
        match applied {
            Ok(Applied::Deployed { version, unchanged }) => {
                if unchanged {
                    forget();
                }
                Ok(DeployReply { domain, version, unchanged })
            }
            Ok(Applied::Refused(refused)) => {
                forget();
                Err(match refused {
                    Refused::HostTaken { host, domain } => DeployError::HostTaken { host, domain },
                    Refused::ActiveChanged { active } => {
                        DeployError::Conflict(format!("{domain} now serves version {active}; look at `toil status` and retry"))
                    }
                    Refused::UnknownVersion { version, .. } => DeployError::UnknownVersion { domain, version, kept: "?".into() },
                    other => DeployError::Internal(format!("the log refused: {other:?}")),
                })
            }
            Ok(other) => {
                forget();
                Err(DeployError::Internal(format!("the log applied the command as {other:?}")))
            }
            Err(e) => {
                forget();
                Err(e.into())
            }
        }
    }

    /// Loads every artifact of `spec` (fetching the blobs this node lacks).
    /// Reading, hashing and compiling run off the async workers.
    async fn load(&self, domain: &str, spec: &ReleaseSpec) -> Result<Arc<LoadedRelease>, DeployError> {
        release::check_fields(domain, spec)?;
        let (store, local_spec) = (self.store.clone(), spec.clone());
        let mut bytes: [Option<Vec<u8>>; 3] = blocking(move || tier_blobs(&local_spec).map(|(_, blob)| blob.and_then(|b| store.get(b)))).await?;
        for (slot, (tier, blob)) in bytes.iter_mut().zip(tier_blobs(spec)) {
            let (Some(blob), None) = (blob, slot.as_ref()) else { continue };
            let fetch = self.fetch.as_ref().ok_or_else(|| DeployError::NotUploaded { tier, sha256: blob.sha256.clone() })?;
            let got = fetch.fetch(blob, spec.origin).await.map_err(|why| DeployError::Fetch { tier, sha256: blob.sha256.clone(), why })?;
            let store = self.store.clone();
            let (stored, got) = blocking(move || store.put(&got).map(|s| (s, got))).await??;
            if stored != *blob {
                return Err(DeployError::Fetch {
                    tier,
                    sha256: blob.sha256.clone(),
                    why: format!("got {} bytes with sha256 {}", stored.size, stored.sha256),
                });
            }
            *slot = Some(got);
        }
        let (runtime, registry, domain, spec) = (self.runtime.clone(), self.registry.clone(), domain.to_string(), spec.clone());
        let loaded = blocking(move || release::load(&runtime, &registry, &domain, &spec, bytes)).await??;
        Ok(Arc::new(loaded))
    }

    /// Serves the release the log says for every domain, now. A release that
    /// failed to load is tried again only once its back-off has passed.
    /// Returns the domains that could not be swapped, with why.
    pub async fn sync(&self) -> Vec<(String, DeployError)> {
        let state = self.log.state();
        let mut failed = Vec::new();
        for (domain, history) in state.releases() {
            let Some(release) = history.active() else { continue };
            if self.served.borrow().get(domain) == Some(&release.version) {
                continue;
            }
            let backing_off =
                self.failures.lock().expect("failures").get(domain).is_some_and(|f| f.version == release.version && Instant::now() < f.next_try);
            if backing_off {
                continue;
            }
            match self.swap(domain, release).await {
                Ok(()) => {
                    self.failures.lock().expect("failures").remove(domain);
                }
                Err(e) => {
                    let mut failures = self.failures.lock().expect("failures");
                    let f = failures.entry(domain.clone()).or_insert(Failure {
                        version: release.version,
                        next_try: Instant::now(),
                        delay: Duration::ZERO,
                    });
                    // 1, 2, 4 … 30 s between tries of the same release: each try may fetch and compile.
                    f.delay = if f.version == release.version {
                        (f.delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
                    } else {
                        Duration::from_secs(1)
                    };
                    f.version = release.version;
                    f.next_try = Instant::now() + f.delay;
                    tracing::error!(
                        domain,
                        version = release.version,
                        "cannot serve the deployed release (next try in {:?}); the previous version keeps serving: {e}",
                        f.delay
                    );
                    failed.push((domain.clone(), e));
                }
            }
        }
        failed
    }

    /// Follows the log: every committed deploy or rollback is swapped in.
    /// A release that cannot be loaded (a blob not reachable yet) is retried
    /// with a growing delay.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.log.changes();
        loop {
            self.sync().await;
            let next_try = self.failures.lock().expect("failures").values().map(|f| f.next_try).min();
            let wait = next_try.map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(Instant::now()));
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Swaps `domain` to `release`.
    async fn swap(&self, domain: &str, release: &Release) -> Result<(), DeployError> {
        let started = Instant::now();
        let validated = self.validated.lock().expect("validated releases").remove(domain);
        let loaded = match validated {
            Some((spec, loaded)) if spec.same_content(&release.spec) => loaded,
            _ => self.load(domain, &release.spec).await?,
        };
        // Loading takes a while; a newer deploy or rollback may have been
        // committed meanwhile. The next sync swaps to that one instead.
        if self.log.state().active_release(domain).map(|r| r.version) != Some(release.version) {
            tracing::info!(domain, version = release.version, "not swapping to version {}: superseded while it loaded", release.version);
            return Ok(());
        }
        let default = self.settings.default_domain.as_deref() == Some(domain);
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
        Ok(())
    }

    /// Records in the log which version of each domain this node serves
    /// (for `toil status` and `toil deploy`'s wait). One task, always
    /// reporting the latest, so a slow report never overwrites a newer one.
    /// It retries while the log is unavailable, and ends if the log failed.
    pub async fn report_served(self: Arc<Self>) {
        let mut served = self.served.subscribe();
        let mut reported: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let now = served.borrow_and_update().clone();
            for (domain, version) in &now {
                if reported.get(domain) == Some(version) {
                    continue;
                }
                let command = Command::Served { node: self.settings.node, domain: domain.clone(), version: *version };
                match self.log.propose(command).await {
                    Ok(_) => {
                        reported.insert(domain.clone(), *version);
                    }
                    Err(e @ LogError::Unavailable(_)) => tracing::debug!(domain, version, "recording the served version: {e}; retrying"),
                    Err(e @ LogError::Failed(_)) => {
                        tracing::error!(domain, version, "recording the served version: {e}; no longer reporting");
                        return;
                    }
                }
            }
            if now.iter().any(|(d, v)| reported.get(d) != Some(v)) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else if served.changed().await.is_err() {
                return;
            }
        }
    }
}
