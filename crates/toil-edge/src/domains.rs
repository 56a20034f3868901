//! Host-name routing: which domain serves a request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use toil_runtime::request::RequestApp;
use toil_runtime::stream::StreamApp;

use crate::metrics::DomainMetrics;

/// What a node serves of one version of a domain: its request tier and its
/// stream tier, each present only if the release has that artifact.
pub struct Domain {
    pub name: String,
    /// The release version (0 when not deployed through the cluster log).
    pub version: u64,
    pub request: Option<Arc<RequestApp>>,
    pub stream: Option<Arc<StreamApp>>,
    /// Set when this version is replaced and its open stream sessions must
    /// close (after the drain timeout): the close code and reason.
    retired: tokio::sync::watch::Sender<Option<Retirement>>,
    /// The domain's request metrics, looked up once instead of per request.
    pub(crate) metrics: OnceLock<DomainMetrics>,
}

/// Why a replaced version's sessions close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retirement {
    pub code: u32,
    pub reason: String,
}

impl Domain {
    pub fn new(name: impl Into<String>, version: u64, request: Option<Arc<RequestApp>>, stream: Option<Arc<StreamApp>>) -> Self {
        Domain { name: name.into(), version, request, stream, retired: tokio::sync::watch::Sender::new(None), metrics: OnceLock::new() }
    }

    /// Closes the stream sessions still open on this version.
    pub fn retire(&self, code: u32, reason: impl Into<String>) {
        self.retired.send_replace(Some(Retirement { code, reason: reason.into() }));
    }

    /// Resolves with the retirement once this version is retired.
    pub async fn retired(&self) -> Retirement {
        let mut rx = self.retired.subscribe();
        let r = rx.wait_for(Option::is_some).await.expect("the sender lives in self");
        r.clone().expect("waited for Some")
    }
}

/// The domains a node serves, by host name. Swapped whole when a domain is
/// (re)loaded, so a request sees one consistent version from start to end.
#[derive(Default)]
pub struct DomainTable {
    inner: RwLock<Arc<Snapshot>>,
}

#[derive(Default, Clone)]
struct Snapshot {
    by_host: HashMap<String, Arc<Domain>>,
    default: Option<Arc<Domain>>,
}

impl DomainTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `domain` for `hosts` (lower-case, without port), replacing
    /// any earlier version of it, which is returned; `default` also makes it
    /// answer hosts no domain names. Requests already running keep the
    /// version they resolved.
    pub fn insert(&self, domain: Domain, hosts: &[String], default: bool) -> Option<Arc<Domain>> {
        let domain = Arc::new(domain);
        let mut guard = self.inner.write().expect("domain table");
        let mut next = (**guard).clone();
        let previous = next.by_host.values().chain(next.default.iter()).find(|d| d.name == domain.name).cloned();
        next.by_host.retain(|_, d| d.name != domain.name);
        for h in hosts {
            next.by_host.insert(h.to_ascii_lowercase(), domain.clone());
        }
        if default || next.default.as_ref().is_some_and(|d| d.name == domain.name) {
            next.default = Some(domain);
        }
        *guard = Arc::new(next);
        previous
    }

    /// The version of `name` being served, if any.
    pub fn get(&self, name: &str) -> Option<Arc<Domain>> {
        let snap = self.inner.read().expect("domain table").clone();
        snap.by_host.values().chain(snap.default.iter()).find(|d| d.name == name).cloned()
    }

    /// The domain for a `Host` header value or URI authority (port ignored).
    pub fn resolve(&self, host: Option<&str>) -> Option<Arc<Domain>> {
        let snap = self.inner.read().expect("domain table").clone();
        let name =
            host.map(strip_port)
                .map(|h| if h.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(h.to_ascii_lowercase()) } else { Cow::Borrowed(h) });
        name.and_then(|n| snap.by_host.get(n.as_ref()).cloned()).or_else(|| snap.default.clone())
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("hello.localhost:8080"), "hello.localhost");
        assert_eq!(strip_port("hello.localhost"), "hello.localhost");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("127.0.0.1:1"), "127.0.0.1");
    }
}
