//! The admin listener: `GET /metrics` (Prometheus text format) and `GET /healthz`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use toil_metrics::Registry;

pub async fn serve(listener: TcpListener, registry: Registry) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    let (status, ctype, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", registry.render()),
                        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
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
