//! HTTP/1.1 between nodes: a pooled client and the cluster port's server.
//! Bodies are JSON; every request is signed ([`crate::auth`]) and the
//! server refuses (401) what is not.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{de::DeserializeOwned, Serialize};
use toil_cluster::NodeId;
use tokio::net::TcpListener;

use crate::auth::{ClusterSecret, HEADER};
use crate::now_ms;

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

/// Signs and sends requests to other nodes; connections are pooled.
#[derive(Clone)]
pub struct RpcClient {
    http: Client<HttpConnector, Full<Bytes>>,
    secret: Arc<ClusterSecret>,
    me: NodeId,
}

impl RpcClient {
    /// A client signing as node `me` (0 for an operator's command line).
    pub fn new(secret: Arc<ClusterSecret>, me: NodeId) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        RpcClient { http, secret, me }
    }

    /// POSTs `request` as JSON to `http://addr/path` and decodes the JSON reply.
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

    /// POSTs `body` to `http://addr/path` and returns the reply's bytes
    /// (artifacts travel this way, not as JSON).
    pub async fn call_raw(&self, addr: &str, path: &str, body: Vec<u8>, timeout: Duration) -> Result<Bytes, CallError> {
        let auth = self.secret.sign(self.me, now_ms(), "POST", path, &body);
        let req = http::Request::post(format!("http://{addr}{path}"))
            .header(HEADER, auth)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Unreachable { addr: addr.into(), reason: e.to_string() })?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| CallError::Unreachable { addr: addr.into(), reason: error_chain(&e) })?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| CallError::Unreachable { addr: addr.into(), reason: e.to_string() })?.to_bytes();
            Ok::<_, CallError>((status, bytes))
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
}

/// `e` and its sources, joined (hyper's top-level messages say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
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

/// Serves the cluster port.
pub async fn serve(listener: TcpListener, secret: Arc<ClusterSecret>, handler: Arc<dyn RpcHandler>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (secret, handler) = (secret.clone(), handler.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (secret, handler) = (secret.clone(), handler.clone());
                async move {
                    let (status, body) = answer(req, &secret, handler, peer).await;
                    let mut r = http::Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    secret: &ClusterSecret,
    handler: Arc<dyn RpcHandler>,
    peer: std::net::SocketAddr,
) -> (StatusCode, Vec<u8>) {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let auth = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e} (limit {MAX_BODY} bytes)\n").into_bytes()),
    };
    let from = match secret.verify(auth.as_deref(), now_ms(), &method, &path, &body) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%peer, path, "refused a cluster RPC: {e}");
            return (StatusCode::UNAUTHORIZED, format!("{e}\n").into_bytes());
        }
    };
    if method != "POST" {
        return (StatusCode::METHOD_NOT_ALLOWED, b"cluster RPCs are POSTs\n".to_vec());
    }
    match handler.handle(from, &path, body).await {
        Ok(json) => (StatusCode::OK, json),
        Err((status, text)) => (status, format!("{text}\n").into_bytes()),
    }
}
