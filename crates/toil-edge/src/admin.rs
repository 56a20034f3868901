//! The admin listener: `GET /metrics` (Prometheus text format), `GET
//! /healthz`, and the endpoints a node adds through [`AdminRoutes`] (such as
//! `POST /daemon/tick`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use toil_metrics::Registry;
use tokio::net::TcpListener;

/// A reply of an admin endpoint: status and plain text.
pub type AdminReply = Pin<Box<dyn Future<Output = (StatusCode, String)> + Send>>;

/// Endpoints a node adds to the admin listener.
pub trait AdminRoutes: Send + Sync + 'static {
    /// The reply for `method path?query`, or `None` if the path is not one of these routes.
    fn route(&self, method: &http::Method, path: &str, query: &str) -> Option<AdminReply>;
}

pub async fn serve(listener: TcpListener, registry: Registry, routes: Option<Arc<dyn AdminRoutes>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (registry, routes) = (registry.clone(), routes.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                let extra = routes.as_ref().and_then(|r| r.route(req.method(), req.uri().path(), req.uri().query().unwrap_or("")));
                async move {
                    let (status, ctype, body) = match (req.uri().path(), extra) {
                        (_, Some(reply)) => {
                            let (status, text) = reply.await;
                            (status, "text/plain", text)
                        }
                        ("/metrics", None) => (StatusCode::OK, "text/plain; version=0.0.4", registry.render()),
                        ("/healthz", None) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                        _ => (StatusCode::NOT_FOUND, "text/plain", "admin endpoints: /metrics /healthz\n".to_string()),
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
