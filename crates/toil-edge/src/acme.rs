//! ACME (RFC 8555): ordering a host's certificate from a CA, and answering
//! the CA's challenges on every node.
//!
//! Who orders, when, and where the certificate goes is the cluster's
//! business (`toil_cluster::tls`: one order per host at a time, back-off
//! after failures; the host's manager in `toil-cli`). This module holds
//! the two parts that touch the network:
//!
//! - [`order`]: one order for one host with an [`Account`] (instant-acme
//!   speaks the protocol), its challenges handed to a `publish` callback
//!   before the CA is told to validate, and the chain and a fresh key back;
//! - [`Challenges`]: the answers every node gives the CA, filled from the
//!   replicated state. HTTP-01: `GET /.well-known/acme-challenge/TOKEN`
//!   over cleartext HTTP gets the key authorization ([`crate::tcp`]).
//!   TLS-ALPN-01 (RFC 8737): a handshake with ALPN `acme-tls/1` for the
//!   host's name gets a self-signed certificate carrying the SHA-256 of the
//!   key authorization in its `acmeIdentifier` extension.
//!
//! The CA may ask any node, and a follower applies the log a heartbeat
//! after the leader, so a lookup for a challenge the node has not heard of
//! yet waits for it a little ([`CHALLENGE_WAIT`]) before giving up: only
//! for a host with an order under way (the claim commits before its
//! challenges), and only [`MAX_WAITING`] lookups at a time, so nobody can
//! park requests on the path for nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use instant_acme::Account;
use instant_acme::{AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How long a lookup waits for a challenge the node has not heard of yet.
pub const CHALLENGE_WAIT: Duration = Duration::from_secs(3);

/// How many lookups may wait at once; more are answered "none" at once.
pub const MAX_WAITING: usize = 64;

/// How long one order may take, all steps together: well inside the
/// cluster's claim (`toil_cluster::tls::ORDER_TIMEOUT_MS`).
pub const ORDER_DEADLINE: Duration = Duration::from_secs(180);

/// How the CA is to check that we serve the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
}

/// Why an order failed, in words for the log and the cluster state.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME CA's root {path}: {error}")]
    Root { path: String, error: String },
    #[error("ACME account at {directory}: {error}")]
    Account { directory: String, error: String },
    #[error("the CA offers no {0:?} challenge for the host")]
    NoChallenge(ChallengeKind),
    #[error("publishing the challenge to the cluster: {0}")]
    Publish(String),
    #[error("the CA could not validate the host: {0}")]
    Invalid(String),
    #[error("the order took longer than {0:?}")]
    Deadline(Duration),
    #[error("{0}")]
    Protocol(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Protocol(causes(e))
    }
}

/// An error and its sources, `: `-separated ("client error (Connect): tcp
/// connect error: Connection refused"): the top alone rarely says why. A
/// source that repeats the text before it is left out.
fn causes(e: impl std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A certificate the CA issued, and its key (not `Debug`: the key must
/// not reach a log).
#[derive(Clone)]
pub struct Issued {
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
}

/// Where the account lives and how to reach it.
#[derive(Clone, Debug)]
pub struct AccountSettings {
    pub directory: String,
    pub email: Option<String>,
    /// A root to trust for the CA's HTTPS (a private CA); public roots otherwise.
    pub ca_root: Option<std::path::PathBuf>,
}

/// The account at the CA: restored from `stored` credentials (JSON), or
/// created (agreeing to the CA's terms) and returned with its credentials
/// to store.
pub async fn account(settings: &AccountSettings, stored: Option<&[u8]>) -> Result<(Account, Option<Vec<u8>>), AcmeError> {
    // instant-acme's HTTP client builds its TLS config on the process's provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let account_err = |error: String| AcmeError::Account { directory: settings.directory.clone(), error };
    let builder = match &settings.ca_root {
        Some(path) => Account::builder_with_root(path).map_err(|e| AcmeError::Root { path: path.display().to_string(), error: causes(e) })?,
        None => Account::builder().map_err(|e| account_err(causes(e)))?,
    };
    if let Some(stored) = stored {
        let credentials = serde_json::from_slice(stored).map_err(|e| account_err(format!("stored credentials: {e}")))?;
        return Ok((builder.from_credentials(credentials).await.map_err(|e| account_err(causes(e)))?, None));
    }
    let contact: Vec<String> = settings.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder.create(&new, settings.directory.clone(), None).await.map_err(|e| account_err(causes(e)))?;
    let json = serde_json::to_vec(&credentials).map_err(|e| account_err(e.to_string()))?;
    Ok((account, Some(json)))
}

/// Orders a certificate for `host`: each pending authorization's challenge
/// of `kind` goes to `publish(token, key_authorization)`, which must make
/// every node answer it before it returns; then the CA validates, the order
/// is finalized with a fresh P-256 key, and the chain is fetched.
pub async fn order<F, Fut>(account: &Account, host: &str, kind: ChallengeKind, publish: F) -> Result<Issued, AcmeError>
where
    F: Fn(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    match tokio::time::timeout(ORDER_DEADLINE, order_steps(account, host, kind, publish)).await {
        Ok(result) => result,
        Err(_) => Err(AcmeError::Deadline(ORDER_DEADLINE)),
    }
}

async fn order_steps<F, Fut>(account: &Account, host: &str, kind: ChallengeKind, publish: F) -> Result<Issued, AcmeError>
where
    F: Fn(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let challenge_type = match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let identifiers = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status == AuthorizationStatus::Valid {
            continue; // validated recently enough for the CA to reuse
        }
        let mut challenge = authz.challenge(challenge_type.clone()).ok_or(AcmeError::NoChallenge(kind))?;
        let key_authorization = challenge.key_authorization().as_str().to_string();
        publish(challenge.token.clone(), key_authorization).await.map_err(AcmeError::Publish)?;
        challenge.set_ready().await?;
    }
    let polling = RetryPolicy::new().initial_delay(Duration::from_millis(250)).timeout(Duration::from_secs(90));
    // A failed validation shows as an invalid order, or as the order's error.
    match order.poll_ready(&polling).await {
        Ok(OrderStatus::Invalid) => return Err(AcmeError::Invalid(why_invalid(&mut order, None).await)),
        Err(instant_acme::Error::Api(problem)) => return Err(AcmeError::Invalid(why_invalid(&mut order, Some(problem)).await)),
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&polling).await?;
    Ok(Issued { chain_pem, key_pem })
}

/// The CA's own words on why validation failed: each failed challenge's
/// problem, else the order's.
async fn why_invalid(order: &mut instant_acme::Order, order_problem: Option<instant_acme::Problem>) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        for c in &authz.challenges {
            if let Some(problem) = &c.error {
                reasons.push(problem.detail.clone().unwrap_or_else(|| problem.to_string()));
            }
        }
    }
    if reasons.is_empty() {
        reasons.extend(order_problem.map(|p| p.detail.clone().unwrap_or_else(|| p.to_string())));
    }
    match reasons.is_empty() {
        true => "the order became invalid (the CA gave no reason)".to_string(),
        false => reasons.join("; "),
    }
}

/// The challenge answers a node gives, as the cluster state says.
#[derive(Default)]
struct Answers {
    /// Hosts with an order under way: the CA may ask about these.
    ordering: std::collections::HashSet<String>,
    /// Token → key authorization (HTTP-01).
    http: HashMap<String, String>,
    /// Host → the validation certificate (TLS-ALPN-01), and the key
    /// authorization it was made for.
    alpn: HashMap<String, (String, Arc<CertifiedKey>)>,
}

/// The answers to the CA's challenges every node gives.
pub struct Challenges {
    answers: watch::Sender<Arc<Answers>>,
    waiting: tokio::sync::Semaphore,
}

impl Default for Challenges {
    fn default() -> Self {
        Challenges { answers: watch::Sender::new(Arc::default()), waiting: tokio::sync::Semaphore::new(MAX_WAITING) }
    }
}

impl Challenges {
    /// Answers exactly `current`: (token, host, key authorization) triples;
    /// `ordering`: the hosts with an order under way. A TLS-ALPN-01
    /// certificate is made once per key authorization.
    pub fn replace(&self, current: impl IntoIterator<Item = (String, String, String)>, ordering: impl IntoIterator<Item = String>) {
        let old = self.answers.borrow().clone();
        let mut new = Answers { ordering: ordering.into_iter().map(|h| normalize(&h)).collect(), ..Answers::default() };
        for (token, host, key_authorization) in current {
            let host = normalize(&host);
            let made = old.alpn.get(&host).filter(|(k, _)| *k == key_authorization).map(|(_, c)| c.clone());
            match made.map_or_else(|| alpn_certificate(&host, &key_authorization), Ok) {
                Ok(cert) => {
                    new.alpn.insert(host, (key_authorization.clone(), cert));
                }
                Err(e) => tracing::error!(host = %host, "cannot make the TLS-ALPN-01 certificate: {e}"),
            }
            new.http.insert(token, key_authorization);
        }
        self.answers.send_replace(Arc::new(new));
    }

    /// The key authorization for an HTTP-01 `token` asked of `host`,
    /// waiting up to `wait` for it to be published if `host` is being ordered.
    pub async fn http01(&self, host: &str, token: &str, wait: Duration) -> Option<String> {
        self.wait_for(&normalize(host), wait, |a| a.http.get(token).cloned()).await
    }

    /// The TLS-ALPN-01 certificate for `host`, waiting as [`Self::http01`] does.
    pub async fn tls_alpn01(&self, host: &str, wait: Duration) -> Option<Arc<CertifiedKey>> {
        let host = normalize(host);
        self.wait_for(&host, wait, |a| a.alpn.get(&host).map(|(_, c)| c.clone())).await
    }

    async fn wait_for<T>(&self, host: &str, wait: Duration, find: impl Fn(&Answers) -> Option<T>) -> Option<T> {
        let mut changes = self.answers.subscribe();
        {
            let answers = changes.borrow_and_update();
            if let Some(found) = find(&answers) {
                return Some(found);
            }
            if !answers.ordering.contains(host) {
                return None; // nothing under way for it: nothing to wait for
            }
        }
        let Ok(_permit) = self.waiting.try_acquire() else { return None };
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, changes.changed()).await {
            if let Some(found) = find(&changes.borrow_and_update()) {
                return Some(found);
            }
        }
        None
    }
}

/// Host names compare without case and without a trailing dot.
fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// RFC 8737's validation certificate: self-signed, for `host` alone, with
/// the critical `acmeIdentifier` extension holding SHA-256 of the key
/// authorization.
pub fn alpn_certificate(host: &str, key_authorization: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(token: &str, host: &str) -> (String, String, String) {
        (token.to_string(), host.to_string(), format!("{token}.thumb"))
    }

    #[tokio::test]
    async fn answers_are_what_the_state_says_and_a_late_one_is_waited_for() {
        let challenges = Arc::new(Challenges::default());
        challenges.replace([one("tok1", "app.test")], ["app.test".to_string()]);
        assert_eq!(challenges.http01("app.test", "tok1", Duration::ZERO).await.as_deref(), Some("tok1.thumb"));
        assert!(challenges.http01("app.test", "tok2", Duration::from_millis(20)).await.is_none());
        let first = challenges.tls_alpn01("App.Test.", Duration::ZERO).await.expect("the validation certificate");

        // The claim for other.test is known, its challenge not yet: a
        // lookup waits, and gets it once it is published.
        challenges.replace([one("tok1", "app.test")], ["app.test".to_string(), "other.test".to_string()]);
        let waiting = tokio::spawn({
            let c = challenges.clone();
            async move { c.http01("other.test", "tok2", Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        challenges.replace([one("tok1", "app.test"), one("tok2", "other.test")], ["app.test".to_string(), "other.test".to_string()]);
        assert_eq!(waiting.await.unwrap().as_deref(), Some("tok2.thumb"));
        let again = challenges.tls_alpn01("app.test", Duration::ZERO).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "made once per key authorization");

        challenges.replace([], []);
        assert!(challenges.http01("app.test", "tok1", Duration::ZERO).await.is_none());
        assert!(challenges.tls_alpn01("app.test", Duration::ZERO).await.is_none());
    }

    #[tokio::test]
    async fn nobody_waits_for_a_host_nobody_orders_nor_past_the_cap() {
        let challenges = Arc::new(Challenges::default());
        let start = std::time::Instant::now();
        assert!(challenges.http01("app.test", "tok", Duration::from_secs(5)).await.is_none());
        assert!(challenges.tls_alpn01("app.test", Duration::from_secs(5)).await.is_none());
        assert!(start.elapsed() < Duration::from_secs(1), "no order under way: answered at once");

        challenges.replace([], ["app.test".to_string()]);
        let parked: Vec<_> = (0..MAX_WAITING)
            .map(|i| {
                let c = challenges.clone();
                tokio::spawn(async move { c.http01("app.test", &format!("t{i}"), Duration::from_secs(5)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = std::time::Instant::now();
        assert!(challenges.http01("app.test", "one-more", Duration::from_secs(5)).await.is_none());
        assert!(start.elapsed() < Duration::from_secs(1), "past the cap: answered at once");
        challenges.replace([], []);
        for p in parked {
            p.abort();
        }
    }

    #[test]
    fn the_validation_certificate_names_the_host_and_carries_the_digest() {
        use sha2::Digest;
        use x509_parser::prelude::*;
        let cert = alpn_certificate("app.test", "token.thumbprint").unwrap();
        let (_, x509) = X509Certificate::from_der(cert.cert[0].as_ref()).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        assert!(matches!(san.value.general_names[..], [GeneralName::DNSName("app.test")]));
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31: critical, an OCTET STRING of the digest.
        let ext = x509.extensions().iter().find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31").expect("acmeIdentifier");
        assert!(ext.critical);
        let digest = sha2::Sha256::digest(b"token.thumbprint");
        assert_eq!(&ext.value[2..], &digest[..]);
        assert_eq!(&ext.value[..2], &[0x04, 32]);
    }
}
