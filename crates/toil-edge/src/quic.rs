//! HTTP/3 over QUIC with h3 + quinn.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};

use crate::keys::NodeKeys;
use crate::serve::{Body, Edge, Protocol};
use crate::tls::DevCert;
use crate::webtransport;
use crate::wt::RequestStream;

/// A quinn server config for HTTP/3 and WebTransport (ALPN `h3`, TLS 1.3)
/// with `cert` and the node's token key; a connection silent for
/// `idle_timeout` is lost. One config is shared by all QUIC workers.
pub fn server_config(cert: &DevCert, keys: &NodeKeys, idle_timeout: Duration) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::new(Arc::new(crypto), keys.token_key());
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle_timeout.try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts QUIC connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, edge: Arc<Edge>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(connection(incoming, edge.clone()));
    }
}

/// Serves one QUIC connection: HTTP/3 requests, each on its own task, until
/// the client opens a WebTransport session; the session then owns the
/// connection (see [`crate::webtransport`]).
async fn connection(incoming: quinn::Incoming, edge: Arc<Edge>) {
    let quic = match incoming.await {
        Ok(c) => c,
        Err(e) => return tracing::debug!("QUIC handshake failed: {e}"),
    };
    let mut h3 = match h3_builder().build(h3_quinn::Connection::new(quic.clone())).await {
        Ok(h) => h,
        Err(e) => return tracing::debug!("HTTP/3 setup failed: {e}"),
    };
    loop {
        let resolver = match h3.accept().await {
            Ok(Some(resolver)) => resolver,
            Ok(None) => return,
            Err(e) => return tracing::debug!("HTTP/3 connection ended: {e}"),
        };
        // Headers first: a WebTransport CONNECT takes over the connection.
        let (req, mut stream) = match resolver.resolve_request().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("HTTP/3 request head failed: {e}");
                continue;
            }
        };
        if webtransport::is_connect(&req) {
            if let Some(admitted) = webtransport::admit(&edge, &req, &mut stream).await {
                return webtransport::run(edge, admitted, req, stream, h3, quic).await;
            }
            continue;
        }
        let edge = edge.clone();
        tokio::spawn(async move { serve_request(&edge, req, stream).await });
    }
}

/// The HTTP/3 settings of a node: requests, and WebTransport (extended
/// CONNECT, datagrams) with one session per connection.
pub fn h3_builder() -> h3::server::Builder {
    let mut b = h3::server::builder();
    b.enable_extended_connect(true).enable_webtransport(true).enable_datagram(true).max_webtransport_sessions(1).send_grease(true);
    b
}

/// Serves one HTTP/3 request.
pub(crate) async fn serve_request(edge: &Edge, req: http::Request<()>, stream: RequestStream) {
    if let Err(e) = respond(edge, req, stream).await {
        tracing::debug!("HTTP/3 request failed: {e}");
    }
}

async fn respond(edge: &Edge, req: http::Request<()>, mut stream: RequestStream) -> anyhow::Result<()> {
    let (head, ()) = req.into_parts();
    let mut buf = BytesMut::new();
    let body = loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                if buf.len() + chunk.remaining() > edge.max_request_body {
                    break Body::TooLarge;
                }
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    buf.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
            }
            Ok(None) => break Body::Complete(buf.freeze()),
            Err(e) => break Body::Broken(e.to_string()),
        }
    };
    let resp = edge.serve(Protocol::Http3, &head, body).await;
    let (parts, bytes) = resp.into_parts();
    stream.send_response(http::Response::from_parts(parts, ())).await?;
    if !bytes.is_empty() {
        stream.send_data(bytes).await?;
    }
    stream.finish().await?;
    Ok(())
}
