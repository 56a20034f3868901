//! Certificates by host name (SNI), for HTTPS over TCP and HTTP/3 alike.
//!
//! The operator says which host names a certificate serves
//! (`tls.certificates: [{hosts, cert, key}]`); a TLS handshake picks the
//! certificate of the name the client asked for: an exact name first, then
//! a wildcard (`*.example.com` covers `app.example.com`, not
//! `a.b.example.com` nor `example.com`). A name no certificate serves gets
//! the self-signed dev certificate where the node has one (`toil dev`, or a
//! node given no certificates), and otherwise a failed handshake (over
//! TCP an `unrecognized_name` alert; over QUIC rustls's `access_denied`),
//! and other names are unaffected.
//!
//! A pair is checked before it serves ([`load_pair`], no I/O, the time
//! passed in): the chain and key parse, the key is the certificate's, the
//! certificate is valid now, and it covers every host it is configured
//! for. Files are watched ([`Certificates::watch`]): a changed pair that
//! passes is swapped in for new handshakes (connections already open keep
//! theirs); one that fails is refused with a log line naming the hosts and
//! the cause, and the previous pair goes on serving.
//!
//! Certificates the cluster ordered from an ACME CA ([`crate::acme`]) are
//! *managed*: [`Certificates::set_managed`] swaps one in per host. A file
//! that covers a host wins over a managed certificate for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use toil_metrics::{Gauge, Registry};

/// One configured certificate: the host names it serves and its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSource {
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate pair cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("no PEM certificate in the certificate file")]
    NoCertificate,
    #[error("the certificate file is not valid PEM: {0}")]
    BadCertificatePem(String),
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("no usable private key in the key file: {0}")]
    BadKey(String),
    #[error("the private key does not belong to the certificate: {0}")]
    KeyMismatch(String),
    #[error("the certificate expired at {0} (unix seconds)")]
    Expired(u64),
    #[error("the certificate is not valid before {0} (unix seconds)")]
    NotYetValid(u64),
    #[error("the certificate does not cover {host} (it names {names})")]
    NotCovered { host: String, names: String },
}

/// A checked pair, ready to serve.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub key: Arc<CertifiedKey>,
    /// The DNS names (and IP addresses) the certificate names.
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

/// Checks a PEM chain and key against the hosts they are to serve, at `now`.
pub fn load_pair(cert_pem: &[u8], key_pem: &[u8], hosts: &[String], now: SystemTime) -> Result<CertPair, CertError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| CertError::BadCertificatePem(e.to_string()))?;
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| CertError::BadKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    certified.keys_match().map_err(|e| CertError::KeyMismatch(e.to_string()))?;

    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let secs = |t: x509_parser::time::ASN1Time| t.timestamp().max(0) as u64;
    let (not_before, not_after) = (secs(parsed.validity().not_before), secs(parsed.validity().not_after));
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now_secs < not_before {
        return Err(CertError::NotYetValid(not_before));
    }
    if now_secs > not_after {
        return Err(CertError::Expired(not_after));
    }
    let names = subject_names(&parsed);
    for host in hosts {
        if !names.iter().any(|name| covers(name, host)) {
            return Err(CertError::NotCovered { host: host.clone(), names: names.join(", ") });
        }
    }
    Ok(CertPair { key: Arc::new(certified), names, not_after: UNIX_EPOCH + Duration::from_secs(not_after) })
}

/// The certificate's subject alternative names: DNS names, and IP
/// addresses in their text form.
fn subject_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether the name `pattern` (a host name, or `*.` and a suffix) covers
/// `host` (either may itself be a wildcard: `*.a.com` covers `*.a.com`).
/// A wildcard stands for exactly one label.
pub fn covers(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (normalize(pattern), normalize(host));
    if pattern == host {
        return true;
    }
    match (pattern.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && label != "*" && rest == suffix,
        _ => false,
    }
}

/// Host names compare without case and without a trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Which certificate serves which name: a snapshot, swapped whole.
#[derive(Debug, Default)]
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For names no certificate serves, and clients that send none.
    fallback: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    fn select(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(normalize) else { return self.fallback.clone() };
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        let wildcard = name.split_once('.').and_then(|(_, suffix)| self.wildcard.get(suffix));
        wildcard.or(self.fallback.as_ref()).cloned()
    }
}

/// One source's state: what it serves now, and the file versions last looked at.
#[derive(Debug)]
struct Slot {
    source: CertSource,
    serving: Option<CertPair>,
    seen: Option<(FileStamp, FileStamp)>,
    days_left: Vec<Arc<Gauge>>,
}

/// The node's certificates: the resolver every TLS listener uses.
#[derive(Debug)]
pub struct Certificates {
    slots: RwLock<Vec<Slot>>,
    /// Host → the managed (ACME) certificate serving it, and its gauge.
    managed: RwLock<HashMap<String, (CertPair, Arc<Gauge>)>>,
    table: RwLock<Arc<CertTable>>,
    fallback: Option<Arc<CertifiedKey>>,
    registry: Registry,
}

impl Certificates {
    /// Loads every source; a source that fails is logged and serves nothing
    /// until its files are fixed (the others serve). `fallback` serves the
    /// names none covers.
    pub fn load(sources: Vec<CertSource>, fallback: Option<Arc<CertifiedKey>>, registry: &Registry) -> Certificates {
        let slots = sources
            .into_iter()
            .map(|source| {
                let days_left = source
                    .hosts
                    .iter()
                    .map(|h| registry.gauge("toil_tls_certificate_days_left", "Days until the certificate serving a host expires.", &[("host", h)]))
                    .collect();
                Slot { source, serving: None, seen: None, days_left }
            })
            .collect();
        // Until a pair loads, only the fallback serves.
        let table = RwLock::new(Arc::new(CertTable { fallback: fallback.clone(), ..CertTable::default() }));
        let certs = Certificates { slots: RwLock::new(slots), managed: RwLock::default(), table, fallback, registry: registry.clone() };
        certs.refresh(SystemTime::now());
        certs
    }

    /// Whether a configured file covers `host` (then it needs no managed certificate).
    pub fn from_files(&self, host: &str) -> bool {
        self.slots.read().expect("certificate slots").iter().any(|s| s.source.hosts.iter().any(|h| covers(h, host)))
    }

    /// Serves `pair` for `host` in new handshakes, in place of the managed
    /// certificate it had.
    pub fn set_managed(&self, host: &str, pair: CertPair, now: SystemTime) {
        let host = normalize(host);
        // Slots before managed, as in `refresh`.
        let slots = self.slots.read().expect("certificate slots");
        let mut managed = self.managed.write().expect("managed certificates");
        let gauge = match managed.remove(&host) {
            Some((_, gauge)) => gauge,
            None => self.registry.gauge("toil_tls_certificate_days_left", "Days until the certificate serving a host expires.", &[("host", &host)]),
        };
        gauge.set(days_between(now, pair.not_after));
        managed.insert(host, (pair, gauge));
        let table = build_table(&slots, &managed, self.fallback.clone());
        *self.table.write().expect("certificate table") = Arc::new(table);
    }

    /// The managed certificate serving `host`, if any.
    pub fn managed(&self, host: &str) -> Option<CertPair> {
        self.managed.read().expect("managed certificates").get(&normalize(host)).map(|(p, _)| p.clone())
    }

    /// Re-reads the sources whose files changed since they were last read,
    /// swaps in the pairs that pass, and updates the days-left gauges.
    /// Returns how many sources changed what they serve.
    pub fn refresh(&self, now: SystemTime) -> usize {
        let mut slots = self.slots.write().expect("certificate slots");
        let mut changed = 0;
        for slot in slots.iter_mut() {
            let stamps = (FileStamp::of(&slot.source.cert), FileStamp::of(&slot.source.key));
            if slot.seen.as_ref() != Some(&stamps) {
                slot.seen = Some(stamps);
                let hosts = slot.source.hosts.join(", ");
                match read_pair(&slot.source, now) {
                    Ok(pair) => {
                        let until = pair.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                        let verb = if slot.serving.is_some() { "reloaded" } else { "loaded" };
                        tracing::info!(hosts = %hosts, cert = %slot.source.cert.display(), not_after = until, "TLS certificate {verb}");
                        slot.serving = Some(pair);
                        changed += 1;
                    }
                    Err(e) if slot.serving.is_some() => {
                        tracing::error!(hosts = %hosts, cert = %slot.source.cert.display(), "TLS certificate refused, the previous one serves on: {e}")
                    }
                    Err(e) => {
                        tracing::error!(hosts = %hosts, cert = %slot.source.cert.display(), "TLS certificate refused, the hosts have none: {e}")
                    }
                }
            }
            let days = slot.serving.as_ref().map_or(-1, |p| days_between(now, p.not_after));
            slot.days_left.iter().for_each(|g| g.set(days));
        }
        let managed = self.managed.read().expect("managed certificates");
        for (pair, gauge) in managed.values() {
            gauge.set(days_between(now, pair.not_after));
        }
        if changed > 0 {
            let table = build_table(&slots, &managed, self.fallback.clone());
            *self.table.write().expect("certificate table") = Arc::new(table);
        }
        changed
    }

    /// Re-reads changed files every `interval`, until the node stops.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let certs = self.clone();
            // File reads and key parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || certs.refresh(SystemTime::now())).await;
        }
    }

    /// What each source serves: its hosts, and its certificate's expiry
    /// (`None` while it has none).
    pub fn serving(&self) -> Vec<(Vec<String>, Option<SystemTime>)> {
        let slots = self.slots.read().expect("certificate slots");
        slots.iter().map(|s| (s.source.hosts.clone(), s.serving.as_ref().map(|p| p.not_after))).collect()
    }
}

impl Certificates {
    /// Whether a handshake asking for `server_name` gets a certificate.
    pub fn serves(&self, server_name: Option<&str>) -> bool {
        self.table.read().expect("certificate table").select(server_name).is_some()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.read().expect("certificate table").clone();
        let key = table.select(hello.server_name());
        if key.is_none() {
            tracing::debug!(server_name = ?hello.server_name(), "TLS handshake refused: no certificate serves the name");
        }
        key
    }
}

fn read_pair(source: &CertSource, now: SystemTime) -> Result<CertPair, CertError> {
    let read = |path: &Path| std::fs::read(path).map_err(|error| CertError::Read { path: path.to_path_buf(), error });
    load_pair(&read(&source.cert)?, &read(&source.key)?, &source.hosts, now)
}

/// Files first: a host a file covers keeps that file's certificate.
fn build_table(slots: &[Slot], managed: &HashMap<String, (CertPair, Arc<Gauge>)>, fallback: Option<Arc<CertifiedKey>>) -> CertTable {
    let mut table = CertTable { fallback, ..CertTable::default() };
    for slot in slots {
        let Some(pair) = &slot.serving else { continue };
        for host in &slot.source.hosts {
            let host = normalize(host);
            match host.strip_prefix("*.") {
                Some(suffix) => table.wildcard.entry(suffix.to_string()).or_insert_with(|| pair.key.clone()),
                None => table.exact.entry(host).or_insert_with(|| pair.key.clone()),
            };
        }
    }
    for (host, (pair, _)) in managed {
        let wildcard_file = host.split_once('.').is_some_and(|(_, suffix)| table.wildcard.contains_key(suffix));
        if !wildcard_file {
            table.exact.entry(host.clone()).or_insert_with(|| pair.key.clone());
        }
    }
    table
}

/// Whole days from `now` to `until`, negative once past.
fn days_between(now: SystemTime, until: SystemTime) -> i64 {
    match until.duration_since(now) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
    }
}

/// What tells one version of a file from the next: a replacement by
/// rename changes the inode, an edit in place the time or the length.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp(Option<(u64, u64, SystemTime)>);

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(std::fs::metadata(path).ok().map(|m| (m.ino(), m.len(), m.modified().unwrap_or(UNIX_EPOCH))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Issued {
        cert: String,
        key: String,
    }

    fn issue(names: &[&str], not_before: time::OffsetDateTime, not_after: time::OffsetDateTime) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).unwrap();
        Issued { cert: cert.pem(), key: key.serialize_pem() }
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn valid(names: &[&str]) -> Issued {
        let t = time::OffsetDateTime::now_utc();
        issue(names, t - time::Duration::days(1), t + time::Duration::days(90))
    }

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_wildcard_stands_for_one_label() {
        assert!(covers("app.example.com", "APP.example.com."));
        assert!(covers("*.example.com", "app.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", ".example.com"));
        assert!(!covers("app.example.com", "*.example.com"));
    }

    #[test]
    fn a_good_pair_loads_with_its_names_and_expiry() {
        let c = valid(&["app.example.com", "*.example.com"]);
        let pair = load_pair(c.cert.as_bytes(), c.key.as_bytes(), &hosts(&["app.example.com", "x.example.com", "*.example.com"]), now()).unwrap();
        assert_eq!(pair.names, ["app.example.com", "*.example.com"]);
        assert!(pair.not_after > now() + Duration::from_secs(89 * 86_400));
    }

    #[test]
    fn bad_pairs_are_refused_with_their_cause() {
        let c = valid(&["app.example.com"]);
        let other = valid(&["app.example.com"]);
        let h = hosts(&["app.example.com"]);
        let e = load_pair(c.cert.as_bytes(), other.key.as_bytes(), &h, now()).unwrap_err();
        assert!(matches!(e, CertError::KeyMismatch(_)), "{e}");
        let e = load_pair(b"not pem", c.key.as_bytes(), &h, now()).unwrap_err();
        assert!(matches!(e, CertError::NoCertificate), "{e}");
        let e = load_pair(c.cert.as_bytes(), b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", &h, now()).unwrap_err();
        assert!(matches!(e, CertError::BadKey(_)), "{e}");
        let e = load_pair(c.cert.as_bytes(), c.key.as_bytes(), &hosts(&["other.example.com"]), now()).unwrap_err();
        assert_eq!(e.to_string(), "the certificate does not cover other.example.com (it names app.example.com)");

        let t = time::OffsetDateTime::now_utc();
        let old = issue(&["app.example.com"], t - time::Duration::days(100), t - time::Duration::days(10));
        let e = load_pair(old.cert.as_bytes(), old.key.as_bytes(), &h, now()).unwrap_err();
        assert!(matches!(e, CertError::Expired(_)), "{e}");
        let early = issue(&["app.example.com"], t + time::Duration::days(1), t + time::Duration::days(10));
        let e = load_pair(early.cert.as_bytes(), early.key.as_bytes(), &h, now()).unwrap_err();
        assert!(matches!(e, CertError::NotYetValid(_)), "{e}");
        // The same pair is good at a time it is valid.
        assert!(load_pair(early.cert.as_bytes(), early.key.as_bytes(), &h, now() + Duration::from_secs(2 * 86_400)).is_ok());
    }

    #[test]
    fn the_exact_name_wins_then_the_wildcard_then_the_fallback() {
        let key = |names: &[&str]| {
            let c = valid(names);
            load_pair(c.cert.as_bytes(), c.key.as_bytes(), &[], now()).unwrap().key
        };
        let (exact, wild, fallback) = (key(&["app.example.com"]), key(&["*.example.com"]), key(&["localhost"]));
        let slot = |hosts: &[&str], key: &Arc<CertifiedKey>| Slot {
            source: CertSource { hosts: hosts.iter().map(|h| h.to_string()).collect(), cert: PathBuf::new(), key: PathBuf::new() },
            serving: Some(CertPair { key: key.clone(), names: Vec::new(), not_after: now() }),
            seen: None,
            days_left: Vec::new(),
        };
        let slots = [slot(&["*.example.com"], &wild), slot(&["app.example.com"], &exact)];
        let same = |a: Option<Arc<CertifiedKey>>, b: &Arc<CertifiedKey>| a.is_some_and(|a| Arc::ptr_eq(&a, b));
        let table = build_table(&slots, &HashMap::new(), None);
        assert!(same(table.select(Some("app.example.com")), &exact));
        assert!(same(table.select(Some("APP.Example.com")), &exact));
        assert!(same(table.select(Some("api.example.com")), &wild));
        assert!(table.select(Some("a.b.example.com")).is_none());
        assert!(table.select(Some("example.org")).is_none());
        assert!(table.select(None).is_none());
        let table = build_table(&slots, &HashMap::new(), Some(fallback.clone()));
        assert!(same(table.select(Some("example.org")), &fallback));
        assert!(same(table.select(None), &fallback));

        // Managed (ACME) certificates serve their hosts, unless a file covers them.
        let acme = key(&["shop.example.org"]);
        let pair = |key: &Arc<CertifiedKey>| (CertPair { key: key.clone(), names: Vec::new(), not_after: now() }, Arc::new(Gauge::default()));
        let managed: HashMap<String, _> =
            ["shop.example.org", "app.example.com", "api.example.com"].iter().map(|h| (h.to_string(), pair(&acme))).collect();
        let table = build_table(&slots, &managed, Some(fallback.clone()));
        assert!(same(table.select(Some("shop.example.org")), &acme));
        assert!(same(table.select(Some("app.example.com")), &exact), "the exact file wins");
        assert!(same(table.select(Some("api.example.com")), &wild), "a wildcard file wins");
    }

    #[test]
    fn days_left_counts_down_and_goes_negative() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(days_between(t, t + Duration::from_secs(30 * 86_400 + 5)), 30);
        assert_eq!(days_between(t, t + Duration::from_secs(3600)), 0);
        assert_eq!(days_between(t, t - Duration::from_secs(3600)), -1);
    }
}
