//! HTTP/1.1 and HTTP/2 over TCP, with hyper: HTTPS (TLS with ALPN), and
//! cleartext (HTTP/2 by prior knowledge) served, redirected to HTTPS, or
//! refused, as [`TcpSettings`] say; both on the same port, told apart by
//! the first byte.
//!
//! A connection is admitted by the node's [`ConnTable`](toil_conns::ConnTable) and
//! closed when it stalls: HTTP/1.1 must deliver a request head within
//! [`ConnTimeouts::header`](toil_conns::ConnTimeouts) (which also bounds an idle keep-alive connection,
//! since the timer runs while hyper waits for the next head); any connection
//! with no request in flight (from its head to the last byte of its
//! response) for [`ConnTimeouts::idle`](toil_conns::ConnTimeouts) is dropped: an HTTP/2 connection kept
//! up by PINGs alone, or a client that never sends a byte. A
//! body must arrive whole within [`Edge::body_timeout`] (`408`), and a
//! declared `Content-Length` over the cap is refused before it is read (`413`).

use std::convert::Infallible;
use std::net::SocketAddr;
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::acme::{Challenges, ACME_TLS_ALPN, CHALLENGE_WAIT};
use crate::certs::Certificates;
use crate::metrics::Protocol;
use crate::serve::{Body, Edge};
use toil_conns::{accept_loop, Activity, ConnTable, InFlight};

/// What the TCP port does with a connection, by its first byte: a TLS
/// handshake (`0x16`) is HTTPS when the node has certificates; anything
/// else is cleartext HTTP, served, redirected or refused.
#[derive(Clone)]
pub struct TcpSettings {
    /// HTTPS: ALPN `h2` and `http/1.1`, certificates by SNI.
    pub tls: Option<Https>,
    pub cleartext: Cleartext,
    /// Where HTTPS is, for redirects.
    pub https_port: u16,
    /// The ACME HTTP-01 answers cleartext requests get, if the node orders
    /// certificates.
    pub challenges: Option<Arc<Challenges>>,
}

impl TcpSettings {
    /// Cleartext HTTP only, served (benchmarks, tests).
    pub fn cleartext_only() -> TcpSettings {
        TcpSettings { tls: None, cleartext: Cleartext::Serve, https_port: 0, challenges: None }
    }
}

/// What cleartext HTTP gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleartext {
    /// Served like HTTPS (dev, or a node behind a TLS-terminating proxy).
    Serve,
    /// `308` to the same URL over HTTPS, except ACME HTTP-01 challenges
    /// (`/.well-known/acme-challenge/`), which are answered.
    Redirect,
    /// Closed unanswered: the port speaks TLS only.
    Refuse,
}

/// The path ACME HTTP-01 challenges are fetched from (RFC 8555, section 8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// HTTPS over TCP: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, the
/// certificate chosen from the client's SNI by the node's certificates.
#[derive(Clone)]
pub struct Https {
    config: Arc<rustls::ServerConfig>,
    certs: Arc<Certificates>,
    /// ACME TLS-ALPN-01 answers, if the node orders certificates.
    challenges: Option<Arc<Challenges>>,
}

impl Https {
    pub fn new(certs: Arc<Certificates>) -> anyhow::Result<Https> {
        let mut config = tls_config(certs.clone())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Https { config: Arc::new(config), certs, challenges: None })
    }

    /// Also answers ACME TLS-ALPN-01 validation handshakes from `challenges`.
    pub fn answering(self, challenges: Arc<Challenges>) -> Https {
        Https { challenges: Some(challenges), ..self }
    }

    /// RFC 8737: a handshake offering only `acme-tls/1` gets the host's
    /// validation certificate, and the connection ends after it.
    async fn validation_handshake(&self, accepted: rustls::server::Accepted, tcp: TcpStream, peer: SocketAddr) {
        let name = accepted.client_hello().server_name().map(str::to_owned);
        let found = match (&self.challenges, &name) {
            (Some(c), Some(name)) => c.tls_alpn01(name, CHALLENGE_WAIT).await,
            _ => None,
        };
        let Some(cert) = found else {
            tracing::info!(%peer, server_name = ?name, "ACME TLS-ALPN-01 handshake for a host with no challenge under way; refused");
            return;
        };
        let config = match tls_config(Arc::new(rustls::sign::SingleCertAndKey::from(cert))) {
            Ok(mut config) => {
                config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                Arc::new(config)
            }
            Err(e) => return tracing::error!("ACME TLS-ALPN-01 config: {e}"),
        };
        match tokio_rustls::StartHandshake::from_parts(accepted, tcp).into_stream(config).await {
            Ok(mut stream) => {
                tracing::info!(%peer, server_name = ?name, "ACME TLS-ALPN-01 validation handshake answered");
                let _ = stream.shutdown().await;
            }
            Err(e) => tracing::info!(%peer, "ACME TLS-ALPN-01 handshake failed: {e}"),
        }
    }

    /// The TLS handshake, ClientHello first: a name no certificate serves
    /// gets the `unrecognized_name` alert (RFC 6066, section 3) and the
    /// connection ends; a malformed hello gets the alert rustls chose.
    async fn handshake(&self, mut tcp: TcpStream, peer: SocketAddr) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut buf = vec![0u8; 4096];
        let accepted = loop {
            let n = tcp.read(&mut buf).await.ok().filter(|&n| n > 0)?;
            let mut read = &buf[..n];
            while !read.is_empty() {
                match acceptor.read_tls(&mut read) {
                    Ok(0) | Err(_) => break, // its buffer is full: accept() says why
                    Ok(_) => {}
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) if read.is_empty() => continue,
                Ok(None) => return None, // bytes it could not take, and no hello yet
                Err((e, mut alert)) => {
                    let mut out = Vec::new();
                    let _ = alert.write_all(&mut out);
                    let _ = tcp.write_all(&out).await;
                    tracing::debug!(%peer, "TLS handshake refused: {e}");
                    return None;
                }
            }
        };
        let is_validation = accepted.client_hello().alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if is_validation {
            self.validation_handshake(accepted, tcp, peer).await;
            return None;
        }
        let name = accepted.client_hello().server_name().map(str::to_owned);
        if !self.certs.serves(name.as_deref()) {
            let _ = tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            tracing::debug!(%peer, server_name = ?name, "TLS handshake refused: no certificate serves the name");
            return None;
        }
        match tokio_rustls::StartHandshake::from_parts(accepted, tcp).into_stream(self.config.clone()).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                None
            }
        }
    }
}

/// TLS 1.2 and 1.3 with ring, certificates from `resolver`.
fn tls_config(resolver: Arc<dyn rustls::server::ResolvesServerCert>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver))
}

/// A fatal `unrecognized_name` alert in a plaintext TLS record: type 21
/// (alert), version 3.3, length 2, level 2 (fatal), description 112.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Accepts connections until the process ends; each runs on its own task.
pub async fn serve(listener: TcpListener, edge: Arc<Edge>, settings: TcpSettings) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(edge.timeouts.header);
    // Each stream may buffer a request body: as many as a QUIC connection may.
    http.http2().timer(TokioTimer::new()).max_concurrent_streams(edge.max_streams_per_connection);
    let http = Arc::new(http);
    let table: Arc<ConnTable> = edge.conns.clone();
    accept_loop(listener, table, "http", move |stream, peer, admitted| {
        let (edge, http, settings) = (edge.clone(), http.clone(), settings.clone());
        async move {
            let _ = stream.set_nodelay(true);
            // The first byte says TLS or not; a client that sends none
            // within the header timeout is dropped, as one that sends no
            // request head would be.
            let mut first = [0u8; 1];
            let is_tls = match tokio::time::timeout(edge.timeouts.header, stream.peek(&mut first)).await {
                Ok(Ok(1)) => first[0] == TLS_HANDSHAKE_RECORD,
                _ => return drop(admitted),
            };
            match (is_tls, &settings.tls) {
                (true, Some(https)) => match tokio::time::timeout(edge.timeouts.header, https.handshake(stream, peer)).await {
                    Ok(Some(stream)) => serve_http(TokioIo::new(stream), &edge, &http, Mode::Https).await,
                    Ok(None) => {}
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
                (true, None) => tracing::debug!(%peer, "TLS handshake on a cleartext-only port; closing"),
                (false, _) => match settings.cleartext {
                    Cleartext::Serve => serve_http(TokioIo::new(stream), &edge, &http, Mode::Cleartext(settings.challenges)).await,
                    Cleartext::Redirect => {
                        serve_http(TokioIo::new(stream), &edge, &http, Mode::Redirect(settings.https_port, settings.challenges)).await
                    }
                    Cleartext::Refuse => tracing::debug!(%peer, "cleartext HTTP on a TLS-only port; closing"),
                },
            }
            drop(admitted);
        }
    })
    .await
}

/// A TLS record of type handshake: how every ClientHello starts.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How a connection's requests are answered.
#[derive(Clone)]
enum Mode {
    Https,
    /// Cleartext, served; ACME HTTP-01 challenges answered first.
    Cleartext(Option<Arc<Challenges>>),
    /// Cleartext, redirected to HTTPS on this port but for ACME HTTP-01
    /// challenges (answered, or else served by the app).
    Redirect(u16, Option<Arc<Challenges>>),
}

/// Serves HTTP/1.1 or HTTP/2 on `io` until the client is done, or the
/// connection has had no request in flight for the idle timeout.
async fn serve_http<IO>(io: IO, edge: &Arc<Edge>, http: &auto::Builder<TokioExecutor>, mode: Mode)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let svc = {
        let (edge, activity) = (edge.clone(), activity.clone());
        service_fn(move |req| {
            let (edge, in_flight, mode) = (edge.clone(), activity.request(), mode.clone());
            // The request stays in flight until hyper has written
            // the whole response and drops its body.
            async move {
                // Only what could be an ACME token (base64url, RFC 8555
                // section 8.1) is waited for; anything else goes to the app.
                let token = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX).filter(|t| could_be_acme_token(t));
                let resp = match (mode, token) {
                    (Mode::Cleartext(Some(c)) | Mode::Redirect(_, Some(c)), Some(token)) => {
                        match c.http01(host_name(&req), token, CHALLENGE_WAIT).await {
                            Some(key_authorization) => challenge_answer(key_authorization),
                            None => handle(&edge, req).await,
                        }
                    }
                    (Mode::Redirect(port, _), _) if !req.uri().path().starts_with(ACME_CHALLENGE_PREFIX) => redirect(&req, port),
                    _ => handle(&edge, req).await,
                };
                Ok::<_, Infallible>(resp.map(|body| InFlightBody { body, _in_flight: in_flight }))
            }
        })
    };
    let conn = http.serve_connection(io, svc);
    tokio::select! {
        r = conn => if let Err(e) = r { tracing::debug!("connection ended: {e}") },
        () = activity.idle_timeout(edge.timeouts.idle) => tracing::debug!("closing a connection idle for {:?}", edge.timeouts.idle),
    }
}

/// The host a request names, without its port; an IPv6 literal keeps its brackets.
fn host_name<B>(req: &Request<B>) -> &str {
    let host = req.uri().host().or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("");
    match host.rsplit_once(':') {
        Some((name, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    }
}

/// A token has at least 128 bits of entropy in base64url (22 characters).
fn could_be_acme_token(token: &str) -> bool {
    (22..=128).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The HTTP-01 answer: the key authorization, as `application/octet-stream` (RFC 8555, section 8.3).
fn challenge_answer(key_authorization: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(key_authorization)));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    resp
}

/// `308 Permanent Redirect` to the request's URL over HTTPS on `port`
/// (which keeps the method and body, unlike 301).
fn redirect(req: &Request<Incoming>, port: u16) -> Response<Full<Bytes>> {
    let name = host_name(req);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 { format!("https://{name}{path}") } else { format!("https://{name}:{port}{path}") };
    let mut resp = Response::new(Full::new(Bytes::from(format!("308 Permanent Redirect: {location}\n"))));
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    match http::HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(http::header::LOCATION, v);
        }
        Err(_) => *resp.status_mut() = http::StatusCode::BAD_REQUEST, // a host header no URL can carry
    }
    resp
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_could_be_an_acme_token_is_looked_up() {
        assert!(could_be_acme_token("6R7s01NDj5uhIWr0lmpzGDdPlBdrniVFU4NcXbHsP4E"));
        assert!(could_be_acme_token("YeNjWSzcMai11syH449uD8Umv_-K6M9NEjSF"));
        assert!(!could_be_acme_token("short"));
        assert!(!could_be_acme_token("../../etc/passwd/and/more/characters"));
        assert!(!could_be_acme_token("a-file-with.an-extension-and-length.txt"));
        assert!(!could_be_acme_token(&"a".repeat(129)));
    }
}
