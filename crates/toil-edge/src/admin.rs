//! The admin listener: `GET /metrics` (Prometheus text format), `GET
//! /healthz`, and the endpoints a node adds through [`AdminRoutes`] (deploy,
//! rollback, status, `toil tick`).
//!
//! Everything but `/metrics` and `/healthz` needs the node's admin token
//! (`Authorization: Bearer <token>`); a request without it, or with a wrong
//! one, gets 401 and reaches no route. Off loopback the listener speaks TLS
//! only ([`AdminSecurity::tls`]), so the token never crosses a network in
//! the clear.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use toil_conns::{accept_loop, ConnLimits, ConnTable};
use toil_metrics::Registry;
use tokio::net::TcpListener;

/// A reply of an admin endpoint: status and text (plain, or JSON where the endpoint says so).
pub type AdminReply = Pin<Box<dyn Future<Output = (StatusCode, String)> + Send>>;

/// An authenticated admin request.
pub struct AdminRequest {
    pub method: http::Method,
    pub path: String,
    pub query: String,
    pub body: Bytes,
}

impl AdminRequest {
    /// The value of query parameter `key`, percent-decoding not needed for the names used.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Endpoints a node adds to the admin listener.
pub trait AdminRoutes: Send + Sync + 'static {
    /// The reply for `req`, or `None` if the path is not one of these routes.
    fn route(&self, req: AdminRequest) -> Result<AdminReply, AdminRequest>;
}

/// How the admin listener authenticates callers.
pub struct AdminSecurity {
    /// The bearer token every route but `/metrics` and `/healthz` requires.
    pub token: String,
    /// TLS for the listener; required when it is not on loopback.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The admin token kept in `path`, made (random, 64 hex characters, mode
/// 0600) if the file does not exist yet.
pub fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            anyhow::ensure!(token.len() >= 16, "the admin token in {} is shorter than 16 characters", path.display());
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading the admin token {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::keys::write_private(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// The largest admin request body: an upload of one artifact.
pub const MAX_BODY: usize = 64 << 20;

/// A rustls server configuration for the admin listener from a certificate and key.
pub fn tls_config(cert: &crate::tls::DevCert) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Whether the header carries the admin token. Digests are compared, not
/// the tokens, so the time taken says nothing about how much of a guess matched.
fn token_matches(header: Option<&http::HeaderValue>, token: &str) -> bool {
    // The scheme name is case-insensitive (RFC 9110, section 11.1).
    let given = header.and_then(|v| v.to_str().ok()).and_then(|v| v.trim_start().split_once(' '));
    let Some(given) = given.filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, credentials)| credentials) else {
        return false;
    };
    use sha2::{Digest, Sha256};
    Sha256::digest(given.trim().as_bytes()) == Sha256::digest(token.as_bytes())
}

pub async fn serve(listener: TcpListener, registry: Registry, routes: Option<Arc<dyn AdminRoutes>>, security: AdminSecurity) {
    let token: Arc<str> = security.token.into();
    let acceptor = security.tls.map(tokio_rustls::TlsAcceptor::from);
    // Operators and health checkers, not the public: a small cap of its
    // own, so a flood on the HTTP port cannot take the admin port with it.
    let table = ConnTable::new(ConnLimits { max_total: 128, max_per_ip: 32 });
    accept_loop(listener, table, "admin", move |stream, peer, admitted| {
        let (registry, routes, token, acceptor) = (registry.clone(), routes.clone(), token.clone(), acceptor.clone());
        async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (registry, routes, token) = (registry.clone(), routes.clone(), token.clone());
                async move {
                    let (status, body) = answer(req, &registry, routes.as_deref(), &token, peer).await;
                    let ctype = if body.starts_with('{') { "application/json" } else { "text/plain; charset=utf-8" };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
                    Ok::<_, Infallible>(r)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(ADMIN_HEADER_TIMEOUT);
            match acceptor {
                Some(acceptor) => match tokio::time::timeout(ADMIN_HEADER_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "admin TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                },
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
            drop(admitted);
        }
    })
    .await
}

/// How long an admin client may take to send a request head (and, with
/// TLS, to finish the handshake).
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn answer(
    req: Request<hyper::body::Incoming>,
    registry: &Registry,
    routes: Option<&dyn AdminRoutes>,
    token: &str,
    peer: std::net::SocketAddr,
) -> (StatusCode, String) {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/metrics" => return (StatusCode::OK, registry.render()),
        "/healthz" => return (StatusCode::OK, "ok\n".into()),
        _ => {}
    }
    if !token_matches(req.headers().get(http::header::AUTHORIZATION), token) {
        let why = if req.headers().contains_key(http::header::AUTHORIZATION) { "wrong admin token" } else { "missing admin token" };
        tracing::warn!(%peer, path, "refused an admin request: {why}");
        return (StatusCode::UNAUTHORIZED, format!("{why}: send `Authorization: Bearer <token>` (the node's admin token file)\n"));
    }
    let (method, query) = (req.method().clone(), req.uri().query().unwrap_or("").to_string());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e} (limit {MAX_BODY} bytes)\n")),
    };
    let request = AdminRequest { method, path, query, body };
    match routes.map(|r| r.route(request)) {
        Some(Ok(reply)) => reply.await,
        _ => (StatusCode::NOT_FOUND, "admin endpoints: /metrics /healthz /cluster/status /deploy /daemon/tick\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let h = |s: &str| Some(http::HeaderValue::from_str(s).unwrap());
        assert!(token_matches(h("Bearer s3cret-token").as_ref(), "s3cret-token"));
        assert!(!token_matches(h("Bearer s3cret-tokenX").as_ref(), "s3cret-token"));
        assert!(!token_matches(h("Bearer s3cret").as_ref(), "s3cret-token"));
        assert!(!token_matches(h("s3cret-token").as_ref(), "s3cret-token"));
        assert!(!token_matches(None, "s3cret-token"));
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            assert!(token_matches(h(&format!("{scheme} s3cret-token")).as_ref(), "s3cret-token"), "{scheme}: the scheme is case-insensitive");
        }
        assert!(!token_matches(h("Basic s3cret-token").as_ref(), "s3cret-token"));
        assert!(!token_matches(h("Bearers3cret-token").as_ref(), "s3cret-token"));
    }
}
