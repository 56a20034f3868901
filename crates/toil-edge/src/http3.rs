//! HTTP/3 requests: an h3 request stream in, [`Edge::serve`] in the middle,
//! the response out. The HTTP/3 counterpart of [`crate::tcp`]; QUIC
//! connections ([`crate::quic`]) and WebTransport sessions (requests sent on
//! a session's connection) both hand their requests here.

use bytes::{Buf, Bytes, BytesMut};

use crate::metrics::Protocol;
use crate::serve::{Body, Edge};

/// A QUIC connection speaking HTTP/3, server side.
pub type H3Connection = h3::server::Connection<crate::h3_conn::QuicConn, Bytes>;
/// One HTTP/3 request's bidirectional stream.
pub type RequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Serves one HTTP/3 request.
pub async fn serve_request(edge: &Edge, req: http::Request<()>, stream: RequestStream) {
    if let Err(e) = respond(edge, req, stream).await {
        tracing::debug!("HTTP/3 request failed: {e}");
    }
}

async fn respond(edge: &Edge, req: http::Request<()>, mut stream: RequestStream) -> anyhow::Result<()> {
    let (head, ()) = req.into_parts();
    let body = if edge.declared_too_large(&head) {
        Body::TooLarge
    } else {
        tokio::time::timeout(edge.body_timeout, read_body(&mut stream, edge.max_request_body)).await.unwrap_or(Body::TimedOut(edge.body_timeout))
    };
    let resp = edge.serve(Protocol::Http3, &head, body).await;
    let (parts, bytes) = resp.into_parts();
    // A client that stops reading must not hold the response (and this
    // task) for the connection's life: it gets as long as a body gets.
    let send = async {
        stream.send_response(http::Response::from_parts(parts, ())).await?;
        if !bytes.is_empty() {
            stream.send_data(bytes).await?;
        }
        stream.finish().await
    };
    match tokio::time::timeout(edge.body_timeout, send).await {
        Ok(sent) => Ok(sent?),
        Err(_) => {
            stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            anyhow::bail!("the client did not take the response within {:?}", edge.body_timeout)
        }
    }
}

async fn read_body(stream: &mut RequestStream, max: usize) -> Body {
    let mut buf = BytesMut::new();
    loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                if buf.len() + chunk.remaining() > max {
                    return Body::TooLarge;
                }
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    buf.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
            }
            Ok(None) => return Body::Complete(buf.freeze()),
            Err(e) => return Body::Broken(e.to_string()),
        }
    }
}
