//! HTTP/1.1 and HTTP/2 over TCP (cleartext; HTTP/2 by prior knowledge), with hyper.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::serve::{Body, Edge, Protocol};

/// Accepts connections until the listener fails; each connection runs on its own task.
pub async fn serve(listener: TcpListener, edge: Arc<Edge>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, keep serving.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let edge = edge.clone();
                async move { Ok::<_, Infallible>(handle(&edge, req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

async fn handle(edge: &Edge, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let proto = if req.version() == Version::HTTP_2 { Protocol::Http2 } else { Protocol::Http1 };
    let (head, body) = req.into_parts();
    let body = match Limited::new(body, edge.max_request_body).collect().await {
        Ok(collected) => Body::Complete(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Body::TooLarge,
        Err(e) => Body::Broken(e.to_string()),
    };
    edge.serve(proto, &head, body).await.map(Full::new)
}
