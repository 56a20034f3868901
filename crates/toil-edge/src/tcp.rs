//! HTTP/1.1 and HTTP/2 over TCP (cleartext; HTTP/2 by prior knowledge), with hyper.
//!
//! A connection is admitted by the node's [`ConnTable`](crate::conns) and
//! closed when it stalls: HTTP/1.1 must deliver a request head within
//! [`TcpTimeouts::header`] (which also bounds an idle keep-alive connection,
//! since the timer runs while hyper waits for the next head); any connection
//! with no request in flight that moves no byte for [`TcpTimeouts::idle`] is
//! dropped (an HTTP/2 connection, or a client that never sends a byte). A
//! body must arrive whole within [`Edge::body_timeout`] (`408`), and a
//! declared `Content-Length` over the cap is refused before it is read (`413`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::conns::{accept_loop, Activity, ConnTable, Tracked};
use crate::serve::{Body, Edge, Protocol};

/// How long a TCP connection may stall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTimeouts {
    /// Until an HTTP/1.1 request head is complete, counted from the
    /// connection's start or the previous response.
    pub header: Duration,
    /// A connection with no request in flight and no byte moved.
    pub idle: Duration,
}

impl Default for TcpTimeouts {
    fn default() -> Self {
        TcpTimeouts { header: Duration::from_secs(10), idle: Duration::from_secs(60) }
    }
}

/// Accepts connections until the process ends; each runs on its own task.
pub async fn serve(listener: TcpListener, edge: Arc<Edge>) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(edge.tcp.header);
    http.http2().timer(TokioTimer::new());
    let http = Arc::new(http);
    let table: Arc<ConnTable> = edge.conns.clone();
    accept_loop(listener, table, "http", move |stream, _peer, admitted| {
        let (edge, http) = (edge.clone(), http.clone());
        async move {
            let _ = stream.set_nodelay(true);
            let activity = Activity::new();
            let svc = {
                let (edge, activity) = (edge.clone(), activity.clone());
                service_fn(move |req| {
                    let (edge, in_flight) = (edge.clone(), activity.request());
                    async move {
                        let resp = handle(&edge, req).await;
                        drop(in_flight);
                        Ok::<_, Infallible>(resp)
                    }
                })
            };
            let conn = http.serve_connection(TokioIo::new(Tracked::new(stream, activity.clone())), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!("connection ended: {e}") },
                () = activity.idle_timeout(edge.tcp.idle) => tracing::debug!("closing a connection idle for {:?}", edge.tcp.idle),
            }
            drop(admitted);
        }
    })
    .await
}

async fn handle(edge: &Edge, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let proto = if req.version() == Version::HTTP_2 { Protocol::Http2 } else { Protocol::Http1 };
    let (head, body) = req.into_parts();
    let body = match edge.declared_too_large(&head) {
        // Refused before a byte of it is read; hyper closes the connection
        // rather than drain a body nobody wants.
        true => Body::TooLarge,
        false => match tokio::time::timeout(edge.body_timeout, Limited::new(body, edge.max_request_body).collect()).await {
            Ok(Ok(collected)) => Body::Complete(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Body::TooLarge,
            Ok(Err(e)) => Body::Broken(e.to_string()),
            Err(_) => Body::TimedOut(edge.body_timeout),
        },
    };
    edge.serve(proto, &head, body).await.map(Full::new)
}
