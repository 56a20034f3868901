//! HTTP/1.1 and HTTP/2 over TCP (cleartext; HTTP/2 by prior knowledge), with hyper.
//!
//! A connection is admitted by the node's [`ConnTable`](crate::conns) and
//! closed when it stalls: HTTP/1.1 must deliver a request head within
//! [`ConnTimeouts::header`](crate::conns::ConnTimeouts) (which also bounds an idle keep-alive connection,
//! since the timer runs while hyper waits for the next head); any connection
//! with no request in flight (from its head to the last byte of its
//! response) for [`ConnTimeouts::idle`](crate::conns::ConnTimeouts) is dropped: an HTTP/2 connection kept
//! up by PINGs alone, or a client that never sends a byte. A
//! body must arrive whole within [`Edge::body_timeout`] (`408`), and a
//! declared `Content-Length` over the cap is refused before it is read (`413`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::conns::{accept_loop, Activity, ConnTable, InFlight};
use crate::metrics::Protocol;
use crate::serve::{Body, Edge};

/// Accepts connections until the process ends; each runs on its own task.
pub async fn serve(listener: TcpListener, edge: Arc<Edge>) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(edge.timeouts.header);
    // Each stream may buffer a request body: as many as a QUIC connection may.
    http.http2().timer(TokioTimer::new()).max_concurrent_streams(edge.max_streams_per_connection);
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
                    // The request stays in flight until hyper has written
                    // the whole response and drops its body.
                    async move { Ok::<_, Infallible>(handle(&edge, req).await.map(|body| InFlightBody { body, _in_flight: in_flight })) }
                })
            };
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!("connection ended: {e}") },
                () = activity.idle_timeout(edge.timeouts.idle) => tracing::debug!("closing a connection idle for {:?}", edge.timeouts.idle),
            }
            drop(admitted);
        }
    })
    .await
}

/// A response body that keeps its request counted as in flight.
struct InFlightBody {
    body: Full<Bytes>,
    _in_flight: InFlight,
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
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
