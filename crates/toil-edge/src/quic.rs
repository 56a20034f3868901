//! HTTP/3 over QUIC with h3 + quinn.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::ResolvesServerCert;

use crate::http3;
use crate::keys::NodeKeys;
use crate::serve::Edge;
use crate::webtransport;
use toil_conns::Activity;

/// What one QUIC connection may make the node hold. Every connection is
/// bounded by these whatever the client does: quinn buffers at most
/// `receive_window` bytes the node has not read yet (all streams together),
/// `send_window` bytes the client has not acknowledged, and the datagram
/// buffers; a client may have at most `max_bidi_streams` request or session
/// streams open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection silent this long is lost.
    pub idle_timeout: Duration,
    pub receive_window: u32,
    pub stream_receive_window: u32,
    pub send_window: u64,
    pub max_bidi_streams: u32,
    pub datagram_buffer: usize,
}

/// A quinn server config for HTTP/3 and WebTransport (ALPN `h3`, TLS 1.3)
/// with the certificates `certs` picks by SNI (the same as HTTPS over
/// TCP), the node's token key and `limits`. One config is shared by all
/// QUIC workers.
pub fn server_config(certs: Arc<dyn ResolvesServerCert>, keys: &NodeKeys, limits: &ConnectionLimits) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::new(Arc::new(crypto), keys.token_key());
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(limits.idle_timeout.try_into()?))
        .receive_window(limits.receive_window.into())
        .stream_receive_window(limits.stream_receive_window.min(limits.receive_window).into())
        .send_window(limits.send_window)
        .max_concurrent_bidi_streams(limits.max_bidi_streams.into())
        // HTTP/3 needs three unidirectional streams a side (control, QPACK
        // encoder and decoder); WebTransport sessions get as many more as
        // bidirectional ones.
        .max_concurrent_uni_streams((limits.max_bidi_streams.saturating_add(3)).into())
        .datagram_receive_buffer_size(Some(limits.datagram_buffer))
        .datagram_send_buffer_size(limits.datagram_buffer);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A connection refused at the cap, and an idle one closed (QUIC close
/// codes are varints; these fit in 32 bits).
const H3_EXCESSIVE_LOAD: u32 = h3::error::Code::H3_EXCESSIVE_LOAD.value() as u32;
const H3_NO_ERROR: u32 = h3::error::Code::H3_NO_ERROR.value() as u32;

/// Accepts QUIC connections until the endpoint closes. `worker` is the
/// QUIC worker the endpoint belongs to (`None` outside the worker pool).
pub async fn serve(endpoint: quinn::Endpoint, edge: Arc<Edge>, worker: Option<usize>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(connection(incoming, edge.clone(), worker));
    }
}

/// Serves one QUIC connection: HTTP/3 requests, each on its own task, until
/// the client opens a WebTransport session; the connection's WebTransport
/// task then takes it over (see [`crate::webtransport`]) and this one ends.
async fn connection(incoming: quinn::Incoming, edge: Arc<Edge>, worker: Option<usize>) {
    let quic = match incoming.await {
        Ok(c) => c,
        Err(e) => return tracing::debug!("QUIC handshake failed: {e}"),
    };
    // Counted once the handshake has validated the address, so a spoofed
    // Initial cannot use up another client's share.
    let mut admitted = match edge.quic_conns.admit(quic.remote_address().ip()) {
        Ok(guard) => guard,
        Err(why) => {
            tracing::debug!(peer = %quic.remote_address(), reason = why.kind(), "QUIC connection refused: over the connection cap");
            return quic.close(H3_EXCESSIVE_LOAD.into(), b"too many connections");
        }
    };
    let mut h3 = match h3_builder(edge.sessions.limits().max_sessions_per_connection).build(crate::h3_conn::QuicConn::new(quic.clone())).await {
        Ok(h) => Box::new(h),
        Err(e) => return tracing::debug!("HTTP/3 setup failed: {e}"),
    };
    // A connection that serves no request for the idle timeout is closed,
    // however many PINGs keep its transport alive.
    let activity = Activity::new();
    loop {
        let accepted = tokio::select! {
            accepted = h3.accept() => accepted,
            () = activity.idle_timeout(edge.timeouts.idle) => {
                tracing::debug!(peer = %quic.remote_address(), "closing a QUIC connection idle for {:?}", edge.timeouts.idle);
                return quic.close(H3_NO_ERROR.into(), b"idle");
            }
        };
        let resolver = match accepted {
            Ok(Some(resolver)) => resolver,
            Ok(None) => return,
            Err(e) => return tracing::debug!("HTTP/3 connection ended: {e}"),
        };
        let in_flight = activity.request();
        // Headers first: a WebTransport CONNECT takes over the connection.
        let (req, stream) = match tokio::time::timeout(edge.timeouts.header, resolver.resolve_request()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!("HTTP/3 request head failed: {e}");
                continue;
            }
            Err(_) => {
                tracing::debug!("HTTP/3 request head not received within {:?}", edge.timeouts.header);
                continue;
            }
        };
        if webtransport::is_connect(&req) {
            // An admitted session turns the connection over to its own
            // (smaller) task, which keeps the connection's slot.
            match webtransport::serve_sessions(edge.clone(), worker, req, stream, h3, quic.clone(), admitted).await {
                Ok(()) => return,
                Err((refused, slot)) => (h3, admitted) = (refused, slot), // answered 404 or 503; the connection goes on
            }
            continue;
        }
        let edge = edge.clone();
        tokio::spawn(async move {
            http3::serve_request(&edge, req, stream).await;
            drop(in_flight);
        });
    }
}

/// The HTTP/3 settings of a node: requests, and WebTransport (extended
/// CONNECT, datagrams) with up to `max_sessions` sessions per connection.
pub fn h3_builder(max_sessions: usize) -> h3::server::Builder {
    let mut b = h3::server::builder();
    b.enable_extended_connect(true).enable_webtransport(true).enable_datagram(true).max_webtransport_sessions(max_sessions as u64).send_grease(true);
    b
}
