//! Host-name routing: which domain serves a request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use toil_runtime::request::RequestApp;

/// The apps a node serves, by host name. Swapped whole when an app is
/// (re)loaded, so a request sees one consistent version from start to end.
#[derive(Default)]
pub struct DomainTable {
    inner: RwLock<Arc<Snapshot>>,
}

#[derive(Default, Clone)]
struct Snapshot {
    by_host: HashMap<String, Arc<RequestApp>>,
    default: Option<Arc<RequestApp>>,
}

impl DomainTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `app` for `hosts` (lower-case, without port); `default` also
    /// makes it answer hosts no app names.
    pub fn insert(&self, app: Arc<RequestApp>, hosts: &[String], default: bool) {
        let mut guard = self.inner.write().expect("domain table");
        let mut next = (**guard).clone();
        next.by_host.retain(|_, a| a.domain() != app.domain());
        for h in hosts {
            next.by_host.insert(h.to_ascii_lowercase(), app.clone());
        }
        if default || next.default.as_ref().is_some_and(|d| d.domain() == app.domain()) {
            next.default = Some(app);
        }
        *guard = Arc::new(next);
    }

    /// The app for a `Host` header value or URI authority (port ignored).
    pub fn resolve(&self, host: Option<&str>) -> Option<Arc<RequestApp>> {
        let snap = self.inner.read().expect("domain table").clone();
        let name = host.map(strip_port).map(str::to_ascii_lowercase);
        name.and_then(|n| snap.by_host.get(&n).cloned()).or_else(|| snap.default.clone())
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
