//! HTTP/1.1 between nodes: a pooled client and the cluster port's server,
//! over mutual TLS ([`crate::tls`]). Bodies are JSON; every request is
//! signed and numbered ([`crate::auth`]) and the server refuses (401) what
//! is not, what it has seen, and what is signed as another node than the
//! one the connection's certificate names.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{de::DeserializeOwned, Serialize};
use toil_cluster::{now_ms, NodeId};
use toil_conns::{accept_loop, ConnLimits, ConnTable, Throttle, WARN_EVERY};
use tokio::net::TcpListener;

use crate::auth::{AuthError, ClusterSecret, ReplayGuard, Stamp, EXPECT_HEADER, HEADER, REPLY_HEADER};
use crate::tls::{node_of, ClusterTls, SERVER_NAME};

/// How long a connection to the cluster port has for its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest RPC body accepted (a snapshot of the cluster state is the largest).
pub const MAX_BODY: usize = 64 << 20;

/// Why a call to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} refused the request ({status}): {text}")]
    Refused { addr: String, status: StatusCode, text: String },
    #[error("{addr} failed the request ({status}): {text}")]
    Failed { addr: String, status: StatusCode, text: String },
    #[error("bad reply from {addr}: {reason}")]
    BadReply { addr: String, reason: String },
}

/// Signs, numbers and sends requests to other nodes; connections are pooled.
#[derive(Clone)]
pub struct RpcClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    secret: Arc<ClusterSecret>,
    me: NodeId,
    numbering: Arc<Numbering>,
}

/// A sender's side of [`crate::auth`]'s replay rule.
struct Numbering {
    epoch: AtomicU64,
    seq: AtomicU64,
    /// The node id behind each address called, as learnt from its refusals.
    ids: Mutex<HashMap<String, NodeId>>,
}

impl RpcClient {
    /// A client signing as node `me` (0 for an operator's command line),
    /// connecting with `tls`.
    pub fn new(secret: Arc<ClusterSecret>, tls: &ClusterTls, me: NodeId) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.enforce_http(false);
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("a DNS name");
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls.client).clone())
            .https_only()
            .with_server_name_resolver(FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        // Starting from the clock makes a restarted sender's epoch newer
        // than its last one; a receiver that remembers otherwise says so.
        let numbering = Numbering { epoch: AtomicU64::new(now_ms().max(1) as u64), seq: AtomicU64::new(1), ids: Mutex::default() };
        RpcClient { http, secret, me, numbering: Arc::new(numbering) }
    }

    /// POSTs `request` as JSON to `https://addr/path` and decodes the JSON reply.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(request).map_err(|e| CallError::BadReply { addr: addr.into(), reason: e.to_string() })?;
        let bytes = self.call_raw(addr, path, body, timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::BadReply { addr: addr.into(), reason: e.to_string() })
    }

    /// POSTs `body` to `https://addr/path` and returns the reply's bytes
    /// (artifacts travel this way, not as JSON).
    pub async fn call_raw(&self, addr: &str, path: &str, body: Vec<u8>, timeout: Duration) -> Result<Bytes, CallError> {
        let body = Bytes::from(body);
        let exchange = async {
            // A first call to an address, or to a receiver that restarted,
            // is refused once with what to mend; then it goes through.
            let mut mended = 0;
            loop {
                let (stamp, status, expect, bytes) = self.exchange(addr, path, body.clone()).await?;
                if status == StatusCode::UNAUTHORIZED && mended < 2 && expect.as_deref().is_some_and(|e| self.mend(addr, e, &stamp)) {
                    mended += 1;
                    continue;
                }
                return Ok::<_, CallError>((status, bytes));
            }
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout { addr: addr.into(), timeout })??;
        let text = || String::from_utf8_lossy(&bytes).trim_end().to_string();
        match status {
            StatusCode::OK => Ok(bytes),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                Err(CallError::Refused { addr: addr.into(), status, text: text() })
            }
            _ => Err(CallError::Failed { addr: addr.into(), status, text: text() }),
        }
    }

    /// One signed, numbered request: its stamp, the reply's status, the
    /// receiver's [`EXPECT_HEADER`] (only when signed) and the body. A
    /// success the receiver did not sign for this request is a bad reply
    /// (something between the nodes made it up).
    async fn exchange(&self, addr: &str, path: &str, body: Bytes) -> Result<(Stamp, StatusCode, Option<String>, Bytes), CallError> {
        let n = &self.numbering;
        let to = n.ids.lock().expect("rpc ids").get(addr).copied().unwrap_or(0);
        let stamp = Stamp { from: self.me, to, epoch: n.epoch.load(Ordering::SeqCst), seq: n.seq.fetch_add(1, Ordering::SeqCst) };
        let auth = self.secret.sign(stamp, now_ms(), "POST", path, &body);
        let req = http::Request::post(format!("https://{addr}{path}"))
            .header(HEADER, auth)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| CallError::Unreachable { addr: addr.into(), reason: e.to_string() })?;
        let resp = self.http.request(req).await.map_err(|e| CallError::Unreachable { addr: addr.into(), reason: unreachable_reason(&e) })?;
        let status = resp.status();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (expect, reply_mac) = (header(EXPECT_HEADER), header(REPLY_HEADER));
        let bytes = resp.into_body().collect().await.map_err(|e| CallError::Unreachable { addr: addr.into(), reason: e.to_string() })?.to_bytes();
        let signed = self.secret.check_reply(reply_mac.as_deref(), &stamp, status.as_u16(), expect.as_deref().unwrap_or_default(), &bytes);
        if !signed && status == StatusCode::OK {
            return Err(CallError::BadReply { addr: addr.into(), reason: "a reply not signed by the node for this request".into() });
        }
        Ok((stamp, status, expect.filter(|_| signed), bytes))
    }

    /// Takes in a receiver's `node=<id>,e=<epoch>`; whether a request
    /// stamped `used` is worth sending again (it was refused for what the
    /// receiver says, not for something else).
    fn mend(&self, addr: &str, expect: &str, used: &Stamp) -> bool {
        let field = |k: &str| expect.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok());
        let (Some(id), Some(min_epoch)) = (field("node"), field("e")) else { return false };
        let n = &self.numbering;
        n.ids.lock().expect("rpc ids").insert(addr.to_string(), id);
        n.epoch.fetch_max(min_epoch, Ordering::SeqCst);
        used.to != id || used.epoch < min_epoch
    }
}

/// `e` and its sources, joined (hyper's top-level messages say little),
/// with what a refused certificate means here.
fn unreachable_reason(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    if out.contains("invalid peer certificate") {
        out.push_str(" (the node's certificate is not from this cluster's CA: it has another cluster secret)");
    } else if ["BadCertificate", "UnknownCA", "DecryptError", "CertificateRequired"].iter().any(|alert| out.contains(&format!("alert: {alert}"))) {
        out.push_str(" (the node refused this client's certificate: another cluster secret?)");
    }
    out
}

/// A handler's reply: the body (JSON, or an artifact's bytes), or a status and a message.
pub type Reply = Pin<Box<dyn Future<Output = Result<Vec<u8>, (StatusCode, String)>> + Send>>;

/// What the cluster port serves, once a request is authenticated.
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles `POST path` from node `from` (0: an operator's command line).
    fn handle(self: Arc<Self>, from: NodeId, path: &str, body: Bytes) -> Reply;
}

/// Connections of the cluster port still in their TLS handshake, in all
/// and from one address. Members keep their connections pooled, so they
/// rarely hold a slot; a stranger (who can never finish the handshake)
/// holds one for [`HANDSHAKE_TIMEOUT`] at most, and over the cap is closed
/// at once (the accept loop warns about those at most every 10 s, with a
/// count). Within `toil_conns::FD_RESERVE`, which the public listeners
/// leave free.
pub const HANDSHAKE_LIMITS: ConnLimits = ConnLimits { max_total: 128, max_per_ip: 32 };

/// Serves the cluster port: a TLS handshake with a client certificate from
/// the cluster's CA first, then HTTP/1.1.
pub async fn serve(listener: TcpListener, tls: ClusterTls, secret: Arc<ClusterSecret>, guard: Arc<ReplayGuard>, handler: Arc<dyn RpcHandler>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server);
    let refusals = Arc::new(Refusals(Throttle::new(WARN_EVERY)));
    accept_loop(listener, ConnTable::new(HANDSHAKE_LIMITS), "cluster", move |stream, peer, handshaking| {
        let (acceptor, secret, guard, handler, refusals) = (acceptor.clone(), secret.clone(), guard.clone(), handler.clone(), refusals.clone());
        async move {
            let _ = stream.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return refusals.note(peer, format_args!("TLS handshake: {e}")),
                Err(_) => return refusals.note(peer, format_args!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")),
            };
            drop(handshaking);
            // Verified by the handshake: the node the client's certificate names.
            let Some(node) = stream.get_ref().1.peer_certificates().and_then(|c| node_of(c.first()?)) else {
                return refusals.note(peer, format_args!("its certificate names no node"));
            };
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (secret, guard, handler) = (secret.clone(), guard.clone(), handler.clone());
                async move { Ok::<_, Infallible>(answer(req, &secret, &guard, handler, peer, node).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        }
    })
    .await
}

/// Refused handshakes, warned about at most once per `WARN_EVERY` with
/// the count since: a stranger's flood must not flood the log too.
struct Refusals(Throttle);

impl Refusals {
    fn note(&self, peer: std::net::SocketAddr, why: std::fmt::Arguments<'_>) {
        match self.0.count() {
            Some(1) => tracing::warn!(%peer, "refused a cluster connection: {why}"),
            Some(n) => tracing::warn!(%peer, "refused a cluster connection: {why} (and {} more since the last warning)", n - 1),
            None => {}
        }
    }
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    secret: &ClusterSecret,
    guard: &ReplayGuard,
    handler: Arc<dyn RpcHandler>,
    peer: std::net::SocketAddr,
    connected_as: NodeId,
) -> http::Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // Everything the header alone can tell, before reading a body.
    let auth = req.headers().get(HEADER).and_then(|v| v.to_str().ok());
    let signed = match ClusterSecret::parse(auth, now_ms()) {
        Ok(s) => s,
        // No stamp to bind a reply to: an unsigned refusal.
        Err(e) => return refusal(&e, &peer, &path, None, secret, guard),
    };
    if signed.stamp.from != connected_as {
        let e = AuthError::NotConnectedNode { signed_as: signed.stamp.from, connected_as };
        return refusal(&e, &peer, &path, None, secret, guard);
    }
    // A sender that does not know this node's id yet (to=0) is told it
    // only once its signature checks: a wrong secret hears so, not an id.
    if let Err(e) = guard.precheck(&signed.stamp).or_else(|e| if signed.stamp.to == 0 { Ok(()) } else { Err(e) }) {
        return refusal(&e, &peer, &path, Some(&signed.stamp), secret, guard);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e} (limit {MAX_BODY} bytes)\n"), None),
    };
    if let Err(e) = secret.check(&signed, &method, &path, &body).and_then(|()| guard.accept(&signed.stamp)) {
        return refusal(&e, &peer, &path, Some(&signed.stamp), secret, guard);
    }
    let (status, bytes) = if method != "POST" {
        (StatusCode::METHOD_NOT_ALLOWED, b"cluster RPCs are POSTs\n".to_vec())
    } else {
        match handler.handle(signed.stamp.from, &path, body).await {
            Ok(bytes) => (StatusCode::OK, bytes),
            Err((status, text)) => (status, format!("{text}\n").into_bytes()),
        }
    };
    let mac = secret.sign_reply(&signed.stamp, status.as_u16(), "", &bytes);
    reply(status, bytes, Some((REPLY_HEADER, mac)))
}

fn reply(status: StatusCode, body: impl Into<Bytes>, header: Option<(&'static str, String)>) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Some((name, value)) = header {
        r.headers_mut().insert(name, value.parse().expect("hex or ascii"));
    }
    r
}

/// A 401 naming the reason; when the request's stamp is known, signed for
/// it, with what a genuine sender needs to mend its next request.
fn refusal(
    e: &AuthError,
    peer: &std::net::SocketAddr,
    path: &str,
    stamp: Option<&Stamp>,
    secret: &ClusterSecret,
    guard: &ReplayGuard,
) -> http::Response<Full<Bytes>> {
    match e {
        // A member's first call to this address: mended at once.
        AuthError::WrongReceiver { to: 0 } => tracing::debug!(%peer, path, "refused a cluster RPC: {e}"),
        // After either side restarted, once per sender; or a replay.
        AuthError::EpochOver { .. } => tracing::info!(%peer, path, "refused a cluster RPC: {e}"),
        _ => tracing::warn!(%peer, path, "refused a cluster RPC: {e}"),
    }
    let body = format!("{e}\n");
    let Some(stamp) = stamp else { return reply(StatusCode::UNAUTHORIZED, body, None) };
    let expect = match e {
        AuthError::EpochOver { min, .. } => format!("node={},e={min}", guard.me()),
        AuthError::WrongReceiver { .. } => format!("node={},e=0", guard.me()),
        _ => String::new(),
    };
    let mac = secret.sign_reply(stamp, StatusCode::UNAUTHORIZED.as_u16(), &expect, body.as_bytes());
    let mut r = reply(StatusCode::UNAUTHORIZED, body, Some((REPLY_HEADER, mac)));
    if !expect.is_empty() {
        r.headers_mut().insert(EXPECT_HEADER, expect.parse().expect("ascii"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers every request with the node it came from.
    struct WhoAsked;

    impl RpcHandler for WhoAsked {
        fn handle(self: Arc<Self>, from: NodeId, _path: &str, _body: Bytes) -> Reply {
            Box::pin(async move { Ok(from.to_string().into_bytes()) })
        }
    }

    /// Node `me`'s cluster port, serving [`WhoAsked`].
    async fn node(secret: &Arc<ClusterSecret>, me: NodeId) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tls = ClusterTls::new(secret, me).unwrap();
        tokio::spawn(serve(listener, tls, secret.clone(), Arc::new(ReplayGuard::in_memory(me)), Arc::new(WhoAsked)));
        addr
    }

    #[tokio::test]
    async fn a_request_signed_as_another_node_than_the_certificate_is_refused() {
        let secret = Arc::new(ClusterSecret::new(&[3u8; 32]).unwrap());
        let addr = node(&secret, 1).await;
        let honest = RpcClient::new(secret.clone(), &ClusterTls::new(&secret, 2).unwrap(), 2);
        let reply = honest.call_raw(&addr, "/who", b"{}".to_vec(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(&reply[..], b"2");
        // Node 3's certificate, requests signed as node 2.
        let impostor = RpcClient::new(secret.clone(), &ClusterTls::new(&secret, 3).unwrap(), 2);
        let e = impostor.call_raw(&addr, "/who", b"{}".to_vec(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, CallError::Refused { status: StatusCode::UNAUTHORIZED, .. }), "{e}");
        assert!(e.to_string().contains("signed as node 2 over a connection whose certificate is node 3's"), "{e}");
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_handshake_is_closed() {
        let secret = Arc::new(ClusterSecret::new(&[5u8; 32]).unwrap());
        let addr = node(&secret, 1).await;
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, silent.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed, not answered: {closed:?}");
        assert!(start.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(100), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn handshakes_past_the_cap_are_closed_at_once_and_members_connect_once_it_frees() {
        let secret = Arc::new(ClusterSecret::new(&[6u8; 32]).unwrap());
        let addr = node(&secret, 1).await;
        let mut stalled = Vec::new();
        for _ in 0..HANDSHAKE_LIMITS.max_per_ip {
            stalled.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        // Held open, neither answered nor closed (in its handshake, or still
        // in the listen backlog: accepted in order either way).
        let mut buf = [0u8; 64];
        let last = stalled.last_mut().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), last.read(&mut buf)).await.is_err(), "held in its handshake");
        // One more from the same address: closed at once, not after the handshake timeout.
        let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, over.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed at once: {closed:?}");
        // A member's call meanwhile is refused the same way (same address)...
        let member = RpcClient::new(secret.clone(), &ClusterTls::new(&secret, 2).unwrap(), 2);
        assert!(member.call_raw(&addr, "/who", b"{}".to_vec(), Duration::from_secs(2)).await.is_err());
        // ...and served once the stalled connections are gone.
        drop(stalled);
        let started = std::time::Instant::now();
        loop {
            match member.call_raw(&addr, "/who", b"{}".to_vec(), Duration::from_secs(2)).await {
                Ok(reply) => break assert_eq!(&reply[..], b"2"),
                Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "still refused: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_member_sending_one_request_twice_inside_tls_is_refused_the_second_time() {
        let secret = Arc::new(ClusterSecret::new(&[4u8; 32]).unwrap());
        let addr = node(&secret, 1).await;
        let tls = ClusterTls::new(&secret, 2).unwrap();
        let stamp = Stamp { from: 2, to: 1, epoch: 7, seq: 1 };
        let auth = secret.sign(stamp, now_ms(), "POST", "/who", b"{}");
        let request = format!("POST /who HTTP/1.1\r\nhost: node\r\n{HEADER}: {auth}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
        for expected in ["HTTP/1.1 200", "HTTP/1.1 401"] {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(tls.client.clone()).connect(name, tcp).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await; // the server may close without close_notify
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with(expected), "{answer}");
        }
    }
}
