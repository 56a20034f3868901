//! HTTP/3 over QUIC with h3 + quinn.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use h3::server::RequestResolver;

use crate::serve::{Body, Edge, Protocol};
use crate::tls::DevCert;

/// A quinn server config for HTTP/3 (ALPN `h3`, TLS 1.3) with `cert`.
pub fn server_config(cert: &DevCert) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts QUIC connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, edge: Arc<Edge>) {
    while let Some(incoming) = endpoint.accept().await {
        let edge = edge.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return tracing::debug!("QUIC handshake failed: {e}"),
            };
            let mut h3 = match h3::server::builder().build(h3_quinn::Connection::new(conn)).await {
                Ok(h) => h,
                Err(e) => return tracing::debug!("HTTP/3 setup failed: {e}"),
            };
            loop {
                match h3.accept().await {
                    Ok(Some(resolver)) => {
                        let edge = edge.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle(&edge, resolver).await {
                                tracing::debug!("HTTP/3 request failed: {e}");
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("HTTP/3 connection ended: {e}");
                        break;
                    }
                }
            }
        });
    }
}

async fn handle(
    edge: &Edge,
    resolver: RequestResolver<h3_quinn::Connection, bytes::Bytes>,
) -> anyhow::Result<()> {
    let (req, mut stream) = resolver.resolve_request().await?;
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
