//! The WebTransport sessions of one QUIC connection (session pooling).
//!
//! A client may open several sessions on one HTTP/3 connection, up to the
//! `SETTINGS_WEBTRANSPORT_MAX_SESSIONS` the node announces
//! ([`SessionLimits::max_sessions_per_connection`]). Each session gets its
//! own box and its own driver task (see `session`); they all run on the
//! connection's QUIC worker, so pooling keeps the worker pinning that
//! connection-ID steering gives a connection.
//!
//! What the client opens arrives per connection, so one loop per connection
//! ([`serve_sessions`]) takes it and routes it by session ID:
//! - a bidirectional or unidirectional WebTransport stream goes to its
//!   session's inbound queue; a stream naming no open session is refused
//!   with `WT_BUFFERED_STREAM_REJECTED`, except unidirectional streams
//!   that may arrive before their session's CONNECT (a different stream
//!   space): a few of those wait for it;
//! - a CONNECT opens another session (admitted like the first, and within
//!   the per-connection cap); other requests are served as HTTP/3;
//! - datagrams (one reader per connection) go to their session by quarter
//!   stream ID, and are dropped when that session's queue is full, as the
//!   network may drop them.
//!
//! A session that ends leaves the pool and tells the client with its close
//! capsule; its siblings go on. The last session to end closes the
//! connection with its code, as a session that owned its connection did.
//!
//! [`SessionLimits::max_sessions_per_connection`]: crate::sessions::SessionLimits::max_sessions_per_connection

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::protocol::{self, Accepted, RecvHalf};
use super::session::{self, Admitted, ClientStream, Inbound};
use crate::http3::{self, H3Connection, RequestStream};
use crate::serve::Edge;
use toil_abi::stream::close_code;

/// Unidirectional streams held for sessions whose CONNECT has not been
/// taken yet, per connection.
const MAX_EARLY_STREAMS: usize = 8;

/// Serves the WebTransport CONNECT `req` received on QUIC worker `worker`,
/// and every session the client opens on the same connection after it. A
/// refused first CONNECT (404 when the host's domain declares no stream
/// named by the path, 503 at a session cap) is answered before anything is
/// created, and the HTTP/3 connection and its `slot` (whatever holds the
/// connection's place at the node's caps) are handed back to go on
/// serving. An admitted one turns the connection into a WebTransport
/// connection: a task of its own takes over, holding `slot`, until the
/// connection ends (requests sent on it are still served).
pub async fn serve_sessions<Slot: Send + 'static>(
    edge: Arc<Edge>,
    worker: Option<usize>,
    req: Request<()>,
    mut stream: RequestStream,
    h3: Box<H3Connection>,
    quic: quinn::Connection,
    slot: Slot,
) -> Result<(), (Box<H3Connection>, Slot)> {
    let Some(admitted) = admit(&edge, worker, &req, &mut stream).await else {
        return Err((h3, slot));
    };
    let max_frame = admitted.app.limits().max_frame_bytes;
    let conn = Arc::new(protocol::Connection::new(h3, quic.clone()));
    let pool = Arc::new(Pool { quic, conn, state: Mutex::default() });
    Box::pin(pool.start(&edge, admitted, &req, stream)).await;
    tokio::spawn(accept_loop(edge, worker, pool, max_frame, slot));
    Ok(())
}

/// The connection's loop: routes what the client opens to its session.
/// It lives as long as the connection, so it is kept small: its rarer,
/// larger steps are boxed.
async fn accept_loop<Slot>(edge: Arc<Edge>, worker: Option<usize>, pool: Arc<Pool>, max_frame: usize, _slot: Slot) {
    let _datagrams = AbortOnDrop(tokio::spawn(route_datagrams(pool.clone(), max_frame)));
    let max_sessions = edge.sessions.limits().max_sessions_per_connection;
    loop {
        let accepted = match pool.conn.accept().await {
            Ok(Some(accepted)) => accepted,
            Ok(None) | Err(_) => return, // each driver sees the connection end
        };
        match accepted {
            Accepted::Stream(id, send, recv) => pool.route(id, ClientStream { send: Some(send), recv }).await,
            Accepted::UniStream(id, recv) => pool.route(id, ClientStream { send: None, recv }).await,
            Accepted::Request(req, mut stream) if protocol::is_connect(&req) => {
                if let Err(why) = pool.room(max_sessions) {
                    tracing::debug!(peer = %pool.quic.remote_address(), "WebTransport session refused: {why}");
                    Box::pin(refuse(&mut stream, StatusCode::TOO_MANY_REQUESTS)).await;
                    continue;
                }
                if let Some(admitted) = Box::pin(admit(&edge, worker, &req, &mut stream)).await {
                    Box::pin(pool.start(&edge, admitted, &req, stream)).await;
                }
            }
            Accepted::Request(req, stream) => {
                let edge = edge.clone();
                tokio::spawn(async move { http3::serve_request(&edge, req, stream).await });
            }
        }
    }
}

async fn admit(edge: &Edge, worker: Option<usize>, req: &Request<()>, stream: &mut RequestStream) -> Option<Admitted> {
    let host = req.uri().authority().map(|a| a.as_str().to_string());
    let name = req.uri().path().trim_start_matches('/');
    let domain = edge.domains.resolve(host.as_deref());
    let Some(app) = domain.as_ref().and_then(|d| d.stream.clone()).filter(|app| app.has_stream(name)) else {
        let why = match &domain {
            None => format!("no app on this node serves host {:?}", host.unwrap_or_default()),
            Some(d) if d.stream.is_none() => format!("the {} app has no stream tier", d.name),
            Some(d) => format!("the {} app declares no stream {name:?}", d.name),
        };
        tracing::debug!(path = req.uri().path(), "WebTransport session refused: {why}");
        refuse(stream, StatusCode::NOT_FOUND).await;
        return None;
    };
    match edge.sessions.admit(app.domain(), worker) {
        Ok(permit) => Some(Admitted { domain: domain.expect("resolved above"), app, permit }),
        Err(why) => {
            tracing::warn!(domain = %app.domain(), stream = name, "WebTransport session refused: {why}");
            refuse(stream, StatusCode::SERVICE_UNAVAILABLE).await;
            None
        }
    }
}

async fn refuse(stream: &mut RequestStream, status: StatusCode) {
    let resp = Response::builder().status(status).body(()).expect("static response");
    if stream.send_response(resp).await.is_ok() {
        let _ = stream.finish().await;
    }
}

/// The open sessions of one connection, by session ID.
struct Pool {
    quic: quinn::Connection,
    conn: Arc<protocol::Connection>,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    open: HashMap<u64, mpsc::Sender<Inbound>>,
    /// The last session ended and the connection is closing: no new ones.
    closing: bool,
    /// Unidirectional streams that arrived before their session.
    early: Vec<(u64, RecvHalf)>,
}

impl Pool {
    /// Whether the connection takes another session.
    fn room(&self, max: usize) -> Result<(), String> {
        let state = self.state.lock().expect("session pool");
        if state.closing {
            return Err("the connection is closing".into());
        }
        if state.open.len() >= max {
            return Err(format!("the connection's limit of {max} sessions is reached"));
        }
        Ok(())
    }

    /// Accepts an admitted CONNECT and starts its session's driver.
    async fn start(self: &Arc<Self>, edge: &Arc<Edge>, admitted: Admitted, req: &Request<()>, stream: RequestStream) {
        let (session, connect) = match protocol::accept(stream, &self.conn).await {
            Ok(accepted) => accepted,
            Err(e) => return tracing::debug!("WebTransport accept failed: {e}"),
        };
        let (tx, rx) = mpsc::channel(edge.sessions.limits().inbound_queue_frames.max(1));
        let early: Vec<RecvHalf> = {
            let mut state = self.state.lock().expect("session pool");
            if !state.open.is_empty() {
                admitted.permit.metrics.pooled.inc();
            }
            state.open.insert(session.id(), tx.clone());
            let (mine, others) = std::mem::take(&mut state.early).into_iter().partition(|(id, _)| *id == session.id());
            state.early = others;
            mine.into_iter().map(|(_, recv)| recv).collect()
        };
        for recv in early {
            // A fresh queue has room for the few early streams.
            let _ = tx.send(Inbound::Stream(Box::new(ClientStream { send: None, recv }))).await;
        }
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let (pool, id) = (self.clone(), session.id());
        let leave: session::Leave = Box::new(move || pool.leave(id));
        tokio::spawn(session::drive(edge.clone(), admitted, Arc::new(session), connect, rx, self.quic.clone(), leave, path, query));
    }

    /// Hands a client stream to its session.
    async fn route(&self, id: u64, stream: ClientStream) {
        let tx = {
            let mut state = self.state.lock().expect("session pool");
            match state.open.get(&id) {
                Some(tx) => tx.clone(),
                None if stream.send.is_none() && state.early.len() < MAX_EARLY_STREAMS => {
                    state.early.push((id, stream.recv));
                    return;
                }
                None => return reject(stream),
            }
        };
        // A full queue holds the loop: this client's streams wait, as its
        // frames do (QUIC flow control pushes back).
        if let Err(mpsc::error::SendError(Inbound::Stream(stream))) = tx.send(Inbound::Stream(Box::new(stream))).await {
            reject(*stream);
        }
    }

    /// The session's datagram queue, if it is open.
    fn datagrams_of(&self, id: u64) -> Option<mpsc::Sender<Inbound>> {
        self.state.lock().expect("session pool").open.get(&id).cloned()
    }

    /// A session ended; returns whether it was the connection's last (the
    /// connection then closes, and takes no new session).
    fn leave(&self, id: u64) -> bool {
        let mut state = self.state.lock().expect("session pool");
        state.open.remove(&id);
        state.closing |= state.open.is_empty();
        state.closing
    }
}

fn reject(stream: ClientStream) {
    if let Some(send) = stream.send {
        send.reject();
    }
    stream.recv.reject();
}

/// Reads the connection's datagrams and hands each to its session.
async fn route_datagrams(pool: Arc<Pool>, max_frame: usize) {
    let mut reader = pool.conn.datagram_reader();
    while let Ok(datagram) = reader.read_datagram().await {
        let Some(tx) = pool.datagrams_of(datagram.stream_id().into_inner()) else { continue };
        let bytes = datagram.into_payload();
        let inbound = if bytes.len() > max_frame {
            let why = format!("datagram of {} bytes exceeds the {max_frame}-byte limit", bytes.len());
            Inbound::Violation(close_code::FRAME_TOO_LARGE, why)
        } else {
            Inbound::Datagram(bytes.to_vec())
        };
        let _ = tx.try_send(inbound);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
