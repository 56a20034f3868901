//! Certificates for the deployed hosts from an ACME CA (`tls.acme`), one
//! per host name for the whole cluster.
//!
//! - Every node follows the replicated state: it serves each host's issued
//!   certificate (its key unsealed with the cluster secret and checked like
//!   a file pair) and answers the challenges of the orders under way.
//! - The leader, every `tls.acme.checkIntervalMs`, finds the hosts that
//!   need a certificate (none, expiring within `renewBeforeDays`, or a
//!   renewal asked with `toil tls renew`), claims each in the log and
//!   orders it. Only one claim per host is accepted at a time
//!   (`toil_cluster::tls`), so a leader change mid-order does not order
//!   twice. The certificate, or the failure with its back-off, goes back
//!   through the log.
//!
//! A host a `tls.certificates` file covers is never ordered; nor are
//! wildcards (HTTP-01 and TLS-ALPN-01 cannot validate them) and
//! `localhost` names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use toil_cluster::{now_ms, Applied, Backoff, ClaimLog, Command, IssuedCert};
use toil_config::{AcmeChallengeKind, AcmeConfig, ACME_RETRY_MAX};
use toil_edge::acme::{self, AccountSettings, ChallengeKind, Challenges};
use toil_edge::certs::{load_pair, Certificates};
use toil_metrics::Registry;
use toil_raft::ClusterNode;

/// The node's part in the cluster's ACME certificates.
pub struct AcmeCerts {
    settings: AcmeConfig,
    cluster: Arc<ClusterNode>,
    log: Arc<dyn ClaimLog>,
    certs: Arc<Certificates>,
    challenges: Arc<Challenges>,
    registry: Registry,
    /// The account, once restored or created.
    account: tokio::sync::Mutex<Option<acme::Account>>,
    /// Hosts this node is ordering now.
    ordering: Mutex<BTreeSet<String>>,
}

/// How often a node tries again to serve a certificate it refused, and
/// looks at which hosts are being ordered (claims time out).
const INSTALL_RETRY: Duration = Duration::from_secs(30);

/// How long restoring or creating the account may take: a CA that accepts
/// connections and never answers must not hold the orders up.
const ACCOUNT_DEADLINE: Duration = Duration::from_secs(60);

/// What the sealed key of `host`'s certificate is bound to.
fn key_context(host: &str) -> String {
    format!("tls-key:{host}")
}

/// What the sealed credentials of the account at `directory` are bound to.
fn account_context(directory: &str) -> String {
    format!("acme-account:{directory}")
}

/// Whether an ACME CA could validate `host` with HTTP-01 or TLS-ALPN-01:
/// a DNS name of two labels or more (no wildcard, no IP literal, no
/// `localhost`), of letters, digits and hyphens.
fn orderable(host: &str) -> bool {
    let dns = host.split('.').all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let ip = host.parse::<std::net::IpAddr>().is_ok() || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    dns && !ip && host.contains('.') && host != "localhost" && !host.ends_with(".localhost")
}

impl AcmeCerts {
    /// Starts following the state (every node) and ordering (while leading).
    /// Returns the challenge answers for the listeners.
    pub fn start(
        settings: AcmeConfig,
        cluster: Arc<ClusterNode>,
        log: Arc<dyn ClaimLog>,
        certs: Arc<Certificates>,
        registry: &Registry,
    ) -> Arc<Challenges> {
        let challenges = Arc::new(Challenges::default());
        let this = Arc::new(AcmeCerts {
            settings,
            cluster,
            log,
            certs,
            challenges: challenges.clone(),
            registry: registry.clone(),
            account: tokio::sync::Mutex::new(None),
            ordering: Mutex::default(),
        });
        tokio::spawn(this.clone().follow());
        tokio::spawn(this.order_due());
        challenges
    }

    /// Every node: serves what the state says, as it changes. A
    /// certificate this node cannot serve (its clock behind the CA's
    /// notBefore, say) is tried again every [`INSTALL_RETRY`].
    async fn follow(self: Arc<Self>) {
        let mut changes = self.log.changes();
        let mut installed: HashMap<String, u64> = HashMap::new();
        let mut refused: HashMap<String, u64> = HashMap::new();
        let mut answered = (BTreeMap::new(), Vec::new());
        loop {
            let state = self.log.state();
            for (host, entry) in state.tls().hosts() {
                let Some(issued) = &entry.issued else { continue };
                // A file covering the host wins; its gauge is the file's.
                if installed.get(host) == Some(&issued.order) || self.certs.from_files(host) {
                    continue;
                }
                match self.install(host, issued) {
                    Ok(days) => {
                        installed.insert(host.clone(), issued.order);
                        refused.remove(host);
                        tracing::info!(host = %host, order = issued.order, "TLS certificate from the cluster (ACME) serves, valid {days} more days")
                    }
                    // Logged once per issuance, retried quietly.
                    Err(e) if refused.insert(host.clone(), issued.order) != Some(issued.order) => {
                        tracing::error!(host = %host, order = issued.order, "the cluster's TLS certificate for {host} cannot serve here (retrying every {INSTALL_RETRY:?}): {e}")
                    }
                    Err(_) => {}
                }
            }
            let ordering: Vec<String> = state.tls().ordering(now_ms()).map(str::to_string).collect();
            if (state.tls().challenges(), &ordering) != (&answered.0, &answered.1) {
                answered = (state.tls().challenges().clone(), ordering);
                let current = answered.0.iter().map(|(t, c)| (t.clone(), c.host.clone(), c.key_authorization.clone()));
                self.challenges.replace(current, answered.1.iter().cloned());
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(INSTALL_RETRY) => {}
            }
        }
    }

    fn install(&self, host: &str, issued: &IssuedCert) -> anyhow::Result<u64> {
        let key = self.cluster.secret().open(&key_context(host), &issued.sealed_key)?;
        let now = SystemTime::now();
        let pair = load_pair(issued.chain_pem.as_bytes(), &key, &[host.to_string()], now)?;
        let days = pair.not_after.duration_since(now).map_or(0, |d| d.as_secs() / 86_400);
        self.certs.set_managed(host, pair, now);
        Ok(days)
    }

    /// The leader: claims and orders every host that needs a certificate.
    async fn order_due(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.settings.check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = BTreeSet::new();
        loop {
            ticks.tick().await;
            if !self.cluster.is_leader() {
                continue;
            }
            let state = self.log.state();
            let hosts: BTreeSet<String> = state.served_hosts().map(str::to_string).collect();
            let now = now_ms();
            let renew_before_ms = self.settings.renew_before.as_millis() as i64;
            for host in hosts {
                if self.certs.from_files(&host) {
                    continue;
                }
                if !orderable(&host) {
                    if warned.insert(host.clone()) {
                        tracing::warn!(host = %host, "tls.acme cannot order a certificate for {host} (wildcards and localhost names cannot be validated over HTTP); give it a tls.certificates file");
                    }
                    continue;
                }
                let entry = state.tls().host(&host).cloned().unwrap_or_default();
                let may_start = entry.due(now, renew_before_ms).is_some() && entry.live_claim(now).is_none() && now >= entry.retry_at_ms;
                if !may_start || self.ordering.lock().expect("ordering").contains(&host) {
                    continue;
                }
                let claim = Command::CertOrder { host: host.clone(), node: self.cluster.id(), now_ms: now, renew_before_ms };
                match self.log.propose(claim).await {
                    Ok(Applied::OrderClaimed { order }) => {
                        self.ordering.lock().expect("ordering").insert(host.clone());
                        tokio::spawn(self.clone().run_order(host, order));
                    }
                    Ok(other) => tracing::debug!(host = %host, "certificate order not claimed: {other:?}"),
                    Err(e) => tracing::warn!(host = %host, "claiming the certificate order: {e}"),
                }
            }
        }
    }

    /// One claimed order, to its end in the log.
    async fn run_order(self: Arc<Self>, host: String, order: u64) {
        let started = std::time::Instant::now();
        tracing::info!(host = %host, order, directory = %self.settings.directory, "ordering a TLS certificate (ACME)");
        let result = self.order(&host, order).await;
        let outcome = match result {
            Ok(cert) => {
                tracing::info!(host = %host, order, "TLS certificate issued (ACME) in {:.1} s", started.elapsed().as_secs_f64());
                self.propose_until_done(Command::CertIssued { host: host.clone(), cert }).await;
                "issued"
            }
            Err(error) => {
                let backoff = Backoff {
                    min_ms: self.settings.retry_min.as_millis() as i64,
                    max_ms: ACME_RETRY_MAX.as_millis().max(self.settings.retry_min.as_millis()) as i64,
                };
                let failures = self.log.state().tls().host(&host).map_or(0, |h| h.failures) + 1;
                tracing::error!(
                    host = %host, order,
                    "ACME order for {host} failed: {error}; the cluster tries again in {:.1} s",
                    backoff.after(failures) as f64 / 1000.0
                );
                let failed = Command::CertFailed { host: host.clone(), order, error: error.to_string(), now_ms: now_ms(), backoff };
                self.propose_until_done(failed).await;
                "failed"
            }
        };
        self.registry
            .counter(
                "toil_acme_orders_total",
                "ACME certificate orders this node placed, by host and outcome.",
                &[("host", &host), ("result", outcome)],
            )
            .inc();
        self.ordering.lock().expect("ordering").remove(&host);
    }

    /// Proposes an order's outcome, retrying while the log is unavailable
    /// (a leader change): losing it would leave the claim to time out.
    async fn propose_until_done(&self, command: Command) {
        for attempt in 0..20 {
            match self.log.propose(command.clone()).await {
                Ok(Applied::Refused(r)) => return tracing::warn!("{command}: refused ({r:?})"),
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!("{command}: {e} (attempt {})", attempt + 1);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn order(&self, host: &str, order: u64) -> Result<IssuedCert, String> {
        let account = match tokio::time::timeout(ACCOUNT_DEADLINE, self.account()).await {
            Ok(account) => account?,
            Err(_) => return Err(format!("the CA at {} did not answer within {ACCOUNT_DEADLINE:?}", self.settings.directory)),
        };
        let kind = match self.settings.challenge {
            AcmeChallengeKind::Http01 => ChallengeKind::Http01,
            AcmeChallengeKind::TlsAlpn01 => ChallengeKind::TlsAlpn01,
        };
        let publish = |token: String, key_authorization: String| async move {
            let challenge = toil_cluster::Challenge { host: host.to_string(), key_authorization };
            match self.log.propose(Command::AcmeChallenge { token, order, challenge }).await {
                Ok(Applied::Refused(r)) => Err(format!("the order's claim is gone ({r:?})")),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        };
        let issued = acme::order(&account, host, kind, publish).await.map_err(|e| e.to_string())?;
        // Checked as a file pair would be, before it reaches any node.
        let now = SystemTime::now();
        let pair = load_pair(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes(), &[host.to_string()], now)
            .map_err(|e| format!("the CA's certificate cannot serve {host}: {e}"))?;
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        Ok(IssuedCert {
            chain_pem: issued.chain_pem,
            sealed_key: self.cluster.secret().seal(&key_context(host), issued.key_pem.as_bytes()),
            not_after_ms: ms(pair.not_after),
            issued_ms: ms(now),
            order,
        })
    }

    /// The cluster's account: the one the state holds, or a new one stored
    /// there (if another node stored one first, that one).
    async fn account(&self) -> Result<acme::Account, String> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let settings = AccountSettings {
            directory: self.settings.directory.clone(),
            email: self.settings.email.clone(),
            ca_root: self.settings.ca_certificate.clone(),
        };
        let (secret, context) = (self.cluster.secret(), account_context(&settings.directory));
        let stored = |state: &toil_cluster::ClusterState| -> Result<Option<Vec<u8>>, String> {
            let Some(sealed) = state.tls().account(&settings.directory) else { return Ok(None) };
            secret.open(&context, sealed).map(Some).map_err(|e| e.to_string())
        };
        let (mut account, created) = acme::account(&settings, stored(&self.log.state())?.as_deref()).await.map_err(|e| e.to_string())?;
        if let Some(credentials) = created {
            let sealed = secret.seal(&context, &credentials);
            self.log.propose(Command::AcmeAccount { directory: settings.directory.clone(), sealed }).await.map_err(|e| e.to_string())?;
            // First writer wins: use whichever account the cluster kept
            // (this node may not have applied it yet: then its own).
            if let Some(kept) = stored(&self.log.state())?.filter(|kept| *kept != credentials) {
                account = acme::account(&settings, Some(&kept)).await.map_err(|e| e.to_string())?.0;
            }
        }
        *cached = Some(account.clone());
        Ok(account)
    }

    /// Asks for `host`'s certificate to be ordered again at the next check.
    pub async fn renew(log: &dyn ClaimLog, host: &str) -> Result<(), String> {
        if !log.state().served_hosts().any(|h| h == host) {
            return Err(format!("{host} is not a host of any deployed domain"));
        }
        log.propose(Command::CertRenew { host: host.to_string() }).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_a_ca_can_validate_are_ordered() {
        assert!(orderable("app.example.com"));
        assert!(orderable("app.test"));
        assert!(orderable("xn--bcher-kva.example"));
        for name in ["*.example.com", "localhost", "echo.localhost", "intranet", "127.0.0.1", "[::1]", "::1", "under_score.example.com", "a..b"] {
            assert!(!orderable(name), "{name}");
        }
    }
}
