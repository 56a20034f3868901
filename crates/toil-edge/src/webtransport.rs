//! WebTransport sessions: one resident stream box per connection.
//!
//! A WebTransport session is an HTTP/3 extended CONNECT to `/<name>` on the
//! same UDP port as HTTP/3 requests. [`open`] answers it: 404 when the
//! domain's stream artifact declares no stream `name` (before any box
//! exists), 503 at a session limit, otherwise it accepts the session,
//! creates the box and drives it until the connection ends.
//!
//! One task drives a session and delivers events to the box strictly in
//! order. Around it:
//! - an acceptor task takes the client's bidirectional streams; each gets a
//!   reader task that cuts it into length-delimited frames
//!   ([`toil_abi::stream::framing`]);
//! - a datagram task reads datagrams, one frame each;
//! - all of them feed one bounded queue. When the box is slower than the
//!   client, the queue fills, the readers stop reading, and QUIC flow
//!   control pushes back on the client. Datagrams beyond quinn's receive
//!   buffer are dropped by quinn, as datagrams may be.
//!
//! After every event the driver writes the box's outbox before it takes
//! the next inbound frame: stream frames go to the session's *primary*
//! stream (the first bidirectional stream the client opened), datagrams
//! as datagrams. A client that does not read stalls that write; past
//! [`SessionLimits::send_stall_timeout`](crate::sessions::SessionLimits)
//! the session is closed with `CLIENT_TOO_SLOW`. So a session holds at most
//! one event's outbox plus the inbound queue, whatever the client does.
//!
//! A session ends in one of three ways. The client closes the connection
//! with an application code: the box gets `close(code, reason)`. The
//! transport is lost (idle timeout, reset): the box gets `disconnect`. The
//! guest calls `close`, or the host closes it (guest fault, bad frame,
//! stalled client): the connection is closed with that code and reason and
//! the box gets `close` (unless it faulted). Codes travel as the QUIC
//! application error code: one session per connection, so closing the
//! session closes its connection.

use std::sync::Arc;

use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use toil_abi::stream::{close_code, framing, FrameKind};
use toil_runtime::stream::{OutFrame, StreamApp, StreamBox};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::domains::Domain;
use crate::serve::Edge;
use crate::sessions::{Ending, SessionPermit};
use crate::wt::{self, Accepted, Capsule, H3Connection, RecvHalf, RequestStream, SendHalf, Session};

pub use crate::wt::is_connect;

/// How long a close capsule may wait for flow-control credit.
const CAPSULE_TIMEOUT: Duration = Duration::from_millis(500);

/// HTTP/3's "no error" code, which clients close a finished connection with.
const H3_NO_ERROR: u64 = h3::error::Code::H3_NO_ERROR.value();

/// What the session driver learns from the tasks around it.
enum Inbound {
    Frame(FrameKind, Vec<u8>),
    /// A client bidirectional stream's sending half (ours to write). Boxed:
    /// every slot of the inbound queue is as large as the largest variant.
    Stream(Box<SendHalf>),
    /// The client broke the framing; close the session with this code.
    Violation(u32, String),
    /// The client closed the session (a close capsule, or the CONNECT stream ended).
    PeerClose(u32, String),
}

/// A CONNECT that may open a session: its box's app and a session slot.
pub struct Admitted {
    /// The version admitted; the session closes if it is retired.
    domain: Arc<Domain>,
    app: Arc<StreamApp>,
    permit: SessionPermit,
}

/// Decides a WebTransport CONNECT before anything is created: 404 when the
/// host's domain declares no stream named by the path, 503 at a session cap.
/// A refused CONNECT is answered and the connection keeps serving.
pub async fn admit(edge: &Edge, req: &Request<()>, stream: &mut RequestStream) -> Option<Admitted> {
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
    match edge.sessions.admit(app.domain()) {
        Ok(permit) => Some(Admitted { domain: domain.expect("resolved above"), app, permit }),
        Err(why) => {
            tracing::warn!(domain = %app.domain(), stream = name, "WebTransport session refused: {why}");
            refuse(stream, StatusCode::SERVICE_UNAVAILABLE).await;
            None
        }
    }
}

/// Accepts an admitted session on `conn` and drives it until it ends. The
/// session owns the HTTP/3 connection (requests sent on it are still served).
pub async fn run(edge: Arc<Edge>, admitted: Admitted, req: Request<()>, stream: RequestStream, conn: H3Connection, quic: quinn::Connection) {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (session, connect) = match wt::accept(stream, conn).await {
        Ok((s, c)) => (Arc::new(s), c),
        Err(e) => return tracing::debug!("WebTransport accept failed: {e}"),
    };
    let Admitted { domain, app, permit } = admitted;
    let name = path.trim_start_matches('/').to_string();
    let driver = Driver { edge, domain, app, quic, permit, primary: None, pending: Vec::new(), pending_bytes: 0 };
    driver.run(session, connect, &name, &path, &query).await;
}

async fn refuse(stream: &mut RequestStream, status: StatusCode) {
    let resp = Response::builder().status(status).body(()).expect("static response");
    if stream.send_response(resp).await.is_ok() {
        let _ = stream.finish().await;
    }
}

struct Driver {
    edge: Arc<Edge>,
    domain: Arc<Domain>,
    app: Arc<StreamApp>,
    quic: quinn::Connection,
    permit: SessionPermit,
    /// Where stream-kind frames go: the client's first bidirectional stream.
    primary: Option<Box<SendHalf>>,
    /// Stream frames sent before the client opened a stream, and their bytes
    /// (capped at one event's output: the rest is dropped and counted).
    pending: Vec<Vec<u8>>,
    pending_bytes: usize,
}

/// How the driver's loop ended.
enum End {
    /// The client closed with this code and reason.
    PeerClosed(u32, String),
    /// The transport was lost.
    Lost(String),
    /// We close: the guest asked to, or the host must.
    Close { code: u32, reason: String, by_host: bool },
    /// The box faulted; it gets no further events.
    Fault(String),
}

impl Driver {
    async fn run(mut self, session: Arc<Session>, connect: wt::ConnectStream, name: &str, path: &str, query: &str) {
        let limits = self.edge.sessions.limits().clone();
        let max_frame = self.app.limits().max_frame_bytes;
        let (tx, mut rx) = mpsc::channel(limits.inbound_queue_frames.max(1));
        let wt::ConnectStream { recv: connect_recv, send: mut connect_send } = connect;
        let acceptor = tokio::spawn(accept_streams(session.clone(), tx.clone(), max_frame, self.edge.clone()));
        let datagrams = tokio::spawn(read_datagrams(session.clone(), tx.clone(), max_frame));
        let capsules = tokio::spawn(read_capsules(connect_recv, tx));
        let id = self.permit.id;
        let metrics = self.permit.metrics.clone();

        let mut boxed = match self.app.open(name, id, path, query).await {
            Ok(b) => b,
            Err(fault) => {
                let reason = format!("stream box failed: {}", fault.kind());
                close_session(&session, &self.quic, &mut connect_send, close_code::GUEST_FAULT, &reason).await;
                metrics.ended(Ending::Aborted);
                acceptor.abort();
                datagrams.abort();
                capsules.abort();
                return;
            }
        };
        tracing::debug!(domain = %self.app.domain(), stream = name, session = id, peer = %self.quic.remote_address(), "session opened");

        let mut shutdown = self.edge.shutdown.subscribe();
        let mut end = self.flush(&session, &mut boxed).await;
        while end.is_none() {
            boxed.set_max_datagram(self.quic.max_datagram_size().unwrap_or(0));
            // Shutdown and retirement come first: a client that keeps the
            // queue full must not keep an old version alive.
            let inbound = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => {
                    end = Some(End::Close { code: close_code::SHUTDOWN, reason: "node shutting down".into(), by_host: true });
                    break;
                }
                r = self.domain.retired() => {
                    end = Some(End::Close { code: r.code, reason: r.reason, by_host: true });
                    break;
                }
                inbound = rx.recv() => inbound,
                err = self.quic.closed() => { end = Some(classify(err)); break; }
            };
            let result = match inbound {
                Some(Inbound::Frame(kind, bytes)) => {
                    metrics.frames[0][kind as usize].inc();
                    boxed.message(kind, &bytes).await
                }
                Some(Inbound::Stream(send)) => {
                    if let Some(e) = self.adopt_stream(send).await {
                        end = Some(e);
                        break;
                    }
                    Ok(())
                }
                Some(Inbound::Violation(code, reason)) => {
                    end = Some(End::Close { code, reason, by_host: true });
                    break;
                }
                Some(Inbound::PeerClose(code, reason)) => {
                    end = Some(End::PeerClosed(code, reason));
                    break;
                }
                None => {
                    end = Some(classify(self.quic.closed().await));
                    break;
                }
            };
            end = match result {
                Ok(()) => self.flush(&session, &mut boxed).await,
                Err(fault) => Some(End::Fault(fault.to_string())),
            };
        }
        acceptor.abort();
        datagrams.abort();
        capsules.abort();

        let domain = self.app.domain().to_string();
        let (how, outcome) = match end.expect("loop ends with a reason") {
            End::PeerClosed(code, reason) => {
                let outcome = boxed.close(code, &reason).await;
                close_session(&session, &self.quic, &mut connect_send, close_code::NORMAL, "").await;
                (Ending::Closed, outcome)
            }
            End::Lost(reason) => (Ending::Disconnected, boxed.disconnect(&reason).await),
            End::Close { code, reason, by_host } => {
                if by_host {
                    tracing::info!(domain, stream = name, session = id, code, "closing session: {reason}");
                }
                close_session(&session, &self.quic, &mut connect_send, code, &reason).await;
                let how = if by_host { Ending::Aborted } else { Ending::Closed };
                (how, boxed.close(code, &reason).await)
            }
            End::Fault(why) => {
                drop(boxed);
                close_session(&session, &self.quic, &mut connect_send, close_code::GUEST_FAULT, &format!("stream box failed: {why}")).await;
                (Ending::Aborted, Ok(()))
            }
        };
        let _ = outcome; // a fault in the last hook is logged and counted by the runtime
        metrics.ended(how);
        tracing::debug!(domain, stream = name, session = id, how = ?how, "session ended");
    }

    /// Writes what the box queued; returns why the session must end, if it must.
    async fn flush(&mut self, session: &Session, boxed: &mut StreamBox) -> Option<End> {
        let metrics = self.permit.metrics.clone();
        let stall = self.edge.sessions.limits().send_stall_timeout;
        for OutFrame { kind, bytes } in boxed.take_frames() {
            match kind {
                FrameKind::Datagram => {
                    let mut sender = session.datagram_sender();
                    match sender.send_datagram(Bytes::from(bytes)) {
                        Ok(()) => metrics.frames[1][1].inc(),
                        Err(_) => metrics.dropped.inc(),
                    }
                }
                FrameKind::Stream => {
                    let Some(send) = self.primary.as_mut() else {
                        if self.pending_bytes + bytes.len() <= self.app.limits().max_outbound_bytes_per_event {
                            self.pending_bytes += bytes.len();
                            self.pending.push(bytes);
                        } else {
                            metrics.dropped.inc();
                        }
                        continue;
                    };
                    match tokio::time::timeout(stall, write_frame(send, &bytes)).await {
                        Ok(Ok(())) => metrics.frames[1][0].inc(),
                        Ok(Err(e)) => return Some(End::Lost(format!("stream write failed: {e}"))),
                        Err(_) => return Some(too_slow(stall)),
                    }
                }
            }
        }
        boxed.close_requested().map(|(code, reason)| End::Close { code, reason, by_host: false })
    }

    /// The first client stream becomes the primary one and receives any
    /// frames sent before it existed; later streams are input only.
    async fn adopt_stream(&mut self, mut send: Box<SendHalf>) -> Option<End> {
        let stall = self.edge.sessions.limits().send_stall_timeout;
        if self.primary.is_some() {
            let _ = tokio::time::timeout(stall, send.shutdown()).await;
            return None;
        }
        self.pending_bytes = 0;
        for bytes in std::mem::take(&mut self.pending) {
            match tokio::time::timeout(stall, write_frame(&mut send, &bytes)).await {
                Ok(Ok(())) => self.permit.metrics.frames[1][0].inc(),
                Ok(Err(_)) => return None,
                Err(_) => return Some(too_slow(stall)),
            }
        }
        self.primary = Some(send);
        None
    }
}

fn too_slow(stall: Duration) -> End {
    End::Close { code: close_code::CLIENT_TOO_SLOW, reason: format!("client did not read for {stall:?}"), by_host: true }
}

async fn write_frame(send: &mut SendHalf, bytes: &[u8]) -> std::io::Result<()> {
    send.write_all(&framing::header(bytes.len() as u32)).await?;
    send.write_all(bytes).await
}

/// How the connection's end looks to the box: a deliberate close by the
/// client (with its code) is `close`; anything else is `disconnect`.
fn classify(err: quinn::ConnectionError) -> End {
    let reason = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = match c.error_code.into_inner() {
                H3_NO_ERROR => close_code::NORMAL,
                other => u32::try_from(other).unwrap_or(u32::MAX),
            };
            End::PeerClosed(code, reason(&c.reason))
        }
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::NO_ERROR => {
            End::PeerClosed(close_code::NORMAL, reason(&c.reason))
        }
        other => End::Lost(other.to_string()),
    }
}

/// Closes the session: a `CLOSE_WEBTRANSPORT_SESSION` capsule on the
/// CONNECT stream (what browsers report from `closed`), then, once the
/// capsule has had time to arrive, the connection with the same code and
/// reason (what clients that only watch the connection see). The session
/// owns its connection, so closing one closes both.
async fn close_session(
    session: &Arc<Session>,
    quic: &quinn::Connection,
    connect: &mut h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    code: u32,
    reason: &str,
) {
    let capsule = wt::close_capsule(code, reason);
    // A client that grants no flow-control credit (it stopped reading) would
    // hold the capsule, and with it the session, forever: past a short wait
    // the connection is closed without it (CONNECTION_CLOSE needs no credit).
    let send = async { connect.send_data(capsule).await.is_ok() && connect.finish().await.is_ok() };
    let sent = tokio::time::timeout(CAPSULE_TIMEOUT, send).await.unwrap_or(false);
    let (quic, reason) = (quic.clone(), reason.as_bytes()[..reason.len().min(wt::MAX_CLOSE_REASON)].to_vec());
    if !sent {
        // At once, before the caller drops the CONNECT stream: its end
        // would reach the client first and read as a close with code 0.
        quic.close(code.into(), &reason);
        return;
    }
    let grace = quic.rtt() * 3 + Duration::from_millis(25);
    // The h3 connection closes the QUIC connection when dropped, so the
    // session lives until then.
    let session = session.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = quic.closed() => {}
            () = tokio::time::sleep(grace) => quic.close(code.into(), &reason),
        }
        drop(session);
    });
}

/// Takes the client's bidirectional streams (and HTTP/3 requests sent on
/// the session's connection) until the connection ends.
async fn accept_streams(session: Arc<Session>, tx: mpsc::Sender<Inbound>, max_frame: usize, edge: Arc<Edge>) {
    loop {
        match session.accept().await {
            Ok(Some(Accepted::Stream(send, recv))) => {
                if tx.send(Inbound::Stream(Box::new(send))).await.is_err() {
                    return;
                }
                tokio::spawn(read_frames(recv, tx.clone(), max_frame));
            }
            Ok(Some(Accepted::Request(req, stream))) => {
                let edge = edge.clone();
                tokio::spawn(async move { crate::quic::serve_request(&edge, req, stream).await });
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Cuts one client stream into frames. It reads quinn's chunks as they
/// are, so an idle stream holds no read buffer of ours.
async fn read_frames(mut recv: RecvHalf, tx: mpsc::Sender<Inbound>, max_frame: usize) {
    let mut decoder = framing::FrameDecoder::new(max_frame);
    loop {
        let chunk = match recv.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                if let Err(e) = decoder.finish() {
                    let _ = tx.send(Inbound::Violation(close_code::MALFORMED_FRAME, e.to_string())).await;
                }
                return;
            }
            Err(_) => return, // the connection went; the driver sees why
        };
        let mut input = &chunk[..];
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => {
                    if tx.send(Inbound::Frame(FrameKind::Stream, frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        framing::FramingError::TooLarge { .. } => close_code::FRAME_TOO_LARGE,
                        framing::FramingError::Truncated { .. } => close_code::MALFORMED_FRAME,
                    };
                    let _ = tx.send(Inbound::Violation(code, e.to_string())).await;
                    return;
                }
            }
        }
    }
}

async fn read_datagrams(session: Arc<Session>, tx: mpsc::Sender<Inbound>, max_frame: usize) {
    let mut reader = session.datagram_reader();
    while let Ok(datagram) = reader.read_datagram().await {
        let bytes = datagram.into_payload();
        let inbound = if bytes.len() > max_frame {
            Inbound::Violation(close_code::FRAME_TOO_LARGE, format!("datagram of {} bytes exceeds the {max_frame}-byte limit", bytes.len()))
        } else {
            Inbound::Frame(FrameKind::Datagram, bytes.to_vec())
        };
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Watches the CONNECT stream for the client's close.
async fn read_capsules(mut connect: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>, tx: mpsc::Sender<Inbound>) {
    let mut decoder = wt::CapsuleDecoder::default();
    loop {
        let close = match connect.recv_data().await {
            Ok(Some(mut data)) => {
                let bytes = data.copy_to_bytes(data.remaining());
                match decoder.push(&bytes) {
                    Ok(capsules) => capsules.into_iter().find_map(|c| match c {
                        Capsule::Close { code, reason } => Some(Inbound::PeerClose(code, reason)),
                        Capsule::Other(_) => None,
                    }),
                    Err(e) => Some(Inbound::Violation(close_code::MALFORMED_FRAME, format!("CONNECT stream: {}", e.0))),
                }
            }
            // Ending the CONNECT stream without a capsule is a close with code 0.
            Ok(None) => Some(Inbound::PeerClose(close_code::NORMAL, String::new())),
            Err(_) => return, // the connection went; the driver sees why
        };
        if let Some(close) = close {
            let _ = tx.send(close).await;
            return;
        }
    }
}
