//! A stream session's driver: its resident box, frames both ways,
//! backpressure, and how it ends (the tasks and queue are described in
//! [the module doc](super)).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use toil_abi::stream::{close_code, framing, Direction, FrameKind, StreamEnd, StreamId};
use toil_channels::{Deliveries, Delivery};
use toil_runtime::outbox::{Out, To};
use toil_runtime::stream::{StreamApp, StreamBox};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ending::{classify, closing, too_slow, End, Step};
use super::primary::Held;
use super::protocol::{self, Accepted, Capsule, ConnectStream, RecvHalf, SendHalf, Session, StreamFailure};
use crate::domains::Domain;
use crate::http3::{self, H3Connection, RequestStream};
use crate::metrics::{DomainSessionMetrics, Ending};
use crate::serve::Edge;
use crate::sessions::SessionPermit;

/// How long a close capsule may wait for flow-control credit.
const CAPSULE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the session driver learns from the tasks around it.
enum Inbound {
    /// A frame that came on a stream (`None`: a datagram).
    Frame(Option<StreamId>, Vec<u8>),
    /// A stream the client opened. Boxed: every slot of the inbound queue
    /// is as large as the largest variant.
    Stream(Box<ClientStream>),
    /// The client finished or reset its side of a stream.
    StreamEnd(StreamId, StreamEnd),
    /// The client broke the framing; close the session with this code.
    Violation(u32, String),
    /// The client closed the session (a close capsule, or the CONNECT stream ended).
    PeerClose(u32, String),
}

/// A stream the client opened: bidirectional (with its sending half, ours
/// to write) or unidirectional.
struct ClientStream {
    send: Option<SendHalf>,
    recv: RecvHalf,
}

/// Serves a WebTransport CONNECT received on QUIC worker `worker`. A
/// refused CONNECT (404 when the host's domain declares no stream named by
/// the path, 503 at a session cap) is answered before anything is created,
/// and the HTTP/3 connection is handed back to go on serving. An admitted
/// one owns the connection until the session ends (requests sent on it are
/// still served).
pub async fn serve_session(
    edge: Arc<Edge>,
    worker: Option<usize>,
    req: Request<()>,
    mut stream: RequestStream,
    conn: H3Connection,
    quic: quinn::Connection,
) -> Result<(), H3Connection> {
    let Some(admitted) = admit(&edge, worker, &req, &mut stream).await else {
        return Err(conn);
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (session, connect) = match protocol::accept(stream, conn).await {
        Ok((s, c)) => (Arc::new(s), c),
        Err(e) => {
            tracing::debug!("WebTransport accept failed: {e}");
            return Ok(());
        }
    };
    let name = path.trim_start_matches('/').to_string();
    let Admitted { domain, app, permit } = admitted;
    let held = Held::new(app.limits().max_outbound_bytes_per_event);
    let driver =
        Driver { metrics: permit.metrics.clone(), edge, domain, app, quic, permit, held, writers: Vec::new(), stopped: VecDeque::new(), session };
    driver.run(connect, &name, &path, &query).await;
    Ok(())
}

/// A CONNECT that may open a session: its box's app and a session slot.
struct Admitted {
    /// The version admitted; the session closes if it is retired.
    domain: Arc<Domain>,
    app: Arc<StreamApp>,
    permit: SessionPermit,
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

struct Driver {
    edge: Arc<Edge>,
    domain: Arc<Domain>,
    app: Arc<StreamApp>,
    quic: quinn::Connection,
    session: Arc<Session>,
    permit: SessionPermit,
    metrics: Arc<DomainSessionMetrics>,
    /// Frames for the primary stream before the client opened it.
    held: Held,
    /// The sending halves of the session's streams that are ours to write.
    writers: Vec<(StreamId, SendHalf)>,
    /// Streams the client stopped reading, found while writing: the box
    /// hears of them before the next inbound event.
    stopped: VecDeque<(StreamId, StreamEnd)>,
}

/// What the driver takes next.
enum Next {
    Inbound(Option<Inbound>),
    Channel(Delivery),
    Closed(quinn::ConnectionError),
}

/// The box's next channel delivery; never, for a box without channels.
async fn next_delivery(deliveries: &mut Option<Deliveries>) -> Delivery {
    match deliveries {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}

/// The tasks that feed a session's inbound queue; aborted when dropped.
struct Readers([JoinHandle<()>; 3]);

impl Drop for Readers {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

impl Driver {
    async fn run(mut self, connect: ConnectStream, name: &str, path: &str, query: &str) {
        let (tx, rx) = mpsc::channel(self.edge.sessions.limits().inbound_queue_frames.max(1));
        let ConnectStream { recv: connect_recv, send: mut connect_send } = connect;
        let max_frame = self.app.limits().max_frame_bytes;
        let readers = Readers([
            tokio::spawn(accept_streams(self.session.clone(), tx.clone(), self.edge.clone())),
            tokio::spawn(read_datagrams(self.session.clone(), tx.clone(), max_frame)),
            tokio::spawn(read_capsules(connect_recv, tx.clone())),
        ]);
        let id = self.permit.id;
        let mut boxed = match self.app.open(name, id, path, query).await {
            Ok(b) => b,
            Err(fault) => {
                let reason = format!("stream box failed: {}", fault.kind());
                self.close_session(&mut connect_send, close_code::GUEST_FAULT, &reason).await;
                return self.metrics.ended(Ending::Aborted);
            }
        };
        tracing::debug!(domain = %self.app.domain(), stream = name, session = id, peer = %self.quic.remote_address(), "session opened");
        let end = self.serve_events(&mut boxed, rx, &tx).await;
        drop(readers);
        if let End::Close { code, reason, by_host: true } = &end {
            tracing::info!(domain = %self.app.domain(), stream = name, session = id, code, "closing session: {reason}");
        }
        let closing = closing(end);
        let mut boxed = Some(boxed);
        for step in closing.steps {
            // A fault in the last hook is logged and counted by the runtime.
            match step {
                Step::CloseHook { code, reason } => {
                    if let Some(b) = boxed.take() {
                        let _ = b.close(code, &reason).await;
                    }
                }
                Step::DisconnectHook(reason) => {
                    if let Some(b) = boxed.take() {
                        let _ = b.disconnect(&reason).await;
                    }
                }
                Step::DropBox => drop(boxed.take()),
                Step::CloseSession { code, reason } => self.close_session(&mut connect_send, code, &reason).await,
            }
        }
        self.metrics.ended(closing.how);
        tracing::debug!(domain = %self.app.domain(), stream = name, session = id, how = ?closing.how, "session ended");
    }

    /// Delivers events to the box, in order, and writes what it sends,
    /// until the session must end.
    async fn serve_events(&mut self, boxed: &mut StreamBox, mut rx: mpsc::Receiver<Inbound>, tx: &mpsc::Sender<Inbound>) -> End {
        let mut shutdown = self.edge.shutdown.subscribe();
        let mut deliveries = boxed.take_deliveries();
        if let Some(end) = self.flush(boxed, tx).await {
            return end;
        }
        loop {
            boxed.set_max_datagram(self.quic.max_datagram_size().unwrap_or(0));
            // Shutdown and retirement come first: a client that keeps the
            // queue full must not keep an old version alive. Frames and
            // channel deliveries take turns.
            let stopped = self.stopped.pop_front().map(|(id, end)| Next::Inbound(Some(Inbound::StreamEnd(id, end))));
            let next = if let Some(next) = stopped {
                next
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s) => return End::Close { code: close_code::SHUTDOWN, reason: "node shutting down".into(), by_host: true },
                    r = self.domain.retired() => return End::Close { code: r.code, reason: r.reason, by_host: true },
                    next = async {
                        tokio::select! {
                            inbound = rx.recv() => Next::Inbound(inbound),
                            delivery = next_delivery(&mut deliveries) => Next::Channel(delivery),
                            err = self.quic.closed() => Next::Closed(err),
                        }
                    } => next,
                }
            };
            let delivered = match next {
                Next::Inbound(Some(Inbound::Frame(stream, bytes))) => {
                    let kind = if stream.is_some() { FrameKind::Stream } else { FrameKind::Datagram };
                    self.metrics.frames[0][kind as usize].inc();
                    boxed.message(stream, &bytes).await
                }
                Next::Inbound(Some(Inbound::Stream(stream))) => match self.adopt_stream(boxed, *stream, tx).await {
                    Some(end) => return end,
                    None => Ok(()),
                },
                Next::Inbound(Some(Inbound::StreamEnd(id, end))) => {
                    if matches!(end, StreamEnd::Stopped(_)) {
                        self.writers.retain(|(s, _)| *s != id);
                    }
                    boxed.stream_end(id, end).await
                }
                Next::Inbound(Some(Inbound::Violation(code, reason))) => return End::Close { code, reason, by_host: true },
                Next::Inbound(Some(Inbound::PeerClose(code, reason))) => return End::PeerClosed(code, reason),
                Next::Inbound(None) => return classify(self.quic.closed().await),
                Next::Closed(err) => return classify(err),
                Next::Channel(delivery) => {
                    let result = boxed.channel(&delivery).await;
                    if let (Ok(()), Some(d)) = (&result, &deliveries) {
                        d.delivered(&delivery);
                    }
                    result
                }
            };
            let end = match delivered {
                Ok(()) => self.flush(boxed, tx).await,
                Err(fault) => Some(End::Fault(fault.to_string())),
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Carries out what the box queued (frames, opens, finishes), in
    /// order; returns why the session must end, if it must.
    async fn flush(&mut self, boxed: &mut StreamBox, tx: &mpsc::Sender<Inbound>) -> Option<End> {
        let stall = self.edge.sessions.limits().send_stall_timeout;
        for out in boxed.take_out() {
            let done = match out {
                Out::Frame { to: To::Datagram, bytes } => {
                    match self.session.datagram_sender().send_datagram(Bytes::from(bytes)) {
                        Ok(()) => self.metrics.frames[1][1].inc(),
                        Err(_) => self.metrics.dropped.inc(),
                    }
                    Ok(())
                }
                Out::Frame { to: To::Primary, bytes } => {
                    if !self.held.hold(bytes) {
                        self.metrics.dropped.inc();
                    }
                    Ok(())
                }
                Out::Frame { to: To::Stream(id), bytes } => self.write(id, &bytes, stall).await,
                Out::Finish(id) => self.finish(id, stall).await,
                Out::Open { stream, direction } => match tokio::time::timeout(stall, self.session.open(direction == Direction::Bidi)).await {
                    Ok(Ok((send, recv))) => {
                        self.writers.push((stream, send));
                        if let Some(recv) = recv {
                            tokio::spawn(read_frames(recv, stream, tx.clone(), self.app.limits().max_frame_bytes));
                        }
                        Ok(())
                    }
                    Ok(Err(_)) => Err(End::Lost("opening a stream failed: the connection is gone".into())),
                    // A client that grants no stream credit is as stuck as one that does not read.
                    Err(_) => Err(too_slow(stall)),
                },
            };
            if let Err(end) = done {
                return Some(end);
            }
        }
        boxed.close_requested().map(|(code, reason)| End::Close { code, reason, by_host: false })
    }

    /// Writes one frame to stream `id`. A stream the client stopped
    /// reading is forgotten here and reported to the box; frames for it,
    /// before the box hears, are dropped.
    async fn write(&mut self, id: StreamId, bytes: &[u8], stall: Duration) -> Result<(), End> {
        let Some(at) = self.writers.iter().position(|(s, _)| *s == id) else {
            self.metrics.dropped.inc();
            return Ok(());
        };
        match tokio::time::timeout(stall, write_frame(&mut self.writers[at].1, bytes)).await {
            Ok(Ok(())) => {
                self.metrics.frames[1][0].inc();
                Ok(())
            }
            Ok(Err(e)) => match StreamFailure::of_io(&e) {
                StreamFailure::ByPeer(code) => {
                    self.writers.swap_remove(at);
                    self.stopped.push_back((id, StreamEnd::Stopped(code)));
                    self.metrics.dropped.inc();
                    Ok(())
                }
                StreamFailure::Connection => Err(End::Lost(format!("stream write failed: {e}"))),
            },
            Err(_) => Err(too_slow(stall)),
        }
    }

    /// Finishes the box's side of stream `id` (after what was written to it).
    async fn finish(&mut self, id: StreamId, stall: Duration) -> Result<(), End> {
        let Some(at) = self.writers.iter().position(|(s, _)| *s == id) else {
            return Ok(());
        };
        let (_, mut send) = self.writers.swap_remove(at);
        match tokio::time::timeout(stall, send.shutdown()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => match StreamFailure::of_io(&e) {
                StreamFailure::ByPeer(code) => {
                    self.stopped.push_back((id, StreamEnd::Stopped(code)));
                    Ok(())
                }
                StreamFailure::Connection => Err(End::Lost(format!("finishing a stream failed: {e}"))),
            },
            Err(_) => Err(too_slow(stall)),
        }
    }

    /// A stream the client opened: the box learns its id, a reader cuts it
    /// into frames, and a bidirectional one becomes writable. The first
    /// bidirectional one is the primary stream and first receives the
    /// frames held for it.
    async fn adopt_stream(&mut self, boxed: &mut StreamBox, stream: ClientStream, tx: &mpsc::Sender<Inbound>) -> Option<End> {
        let direction = if stream.send.is_some() { Direction::Bidi } else { Direction::Uni };
        let Some(id) = boxed.client_opened(direction) else {
            let reason = "the session has used every stream id".to_string();
            return Some(End::Close { code: close_code::MALFORMED_FRAME, reason, by_host: true });
        };
        tokio::spawn(read_frames(stream.recv, id, tx.clone(), self.app.limits().max_frame_bytes));
        let send = stream.send?;
        self.writers.push((id, send));
        let stall = self.edge.sessions.limits().send_stall_timeout;
        for bytes in self.held.claim().unwrap_or_default() {
            if let Err(end) = self.write(id, &bytes, stall).await {
                return Some(end);
            }
        }
        None
    }

    /// Closes the session: a `CLOSE_WEBTRANSPORT_SESSION` capsule on the
    /// CONNECT stream (what browsers report from `closed`), then, once the
    /// capsule has had time to arrive, the connection with the same code and
    /// reason (what clients that only watch the connection see). The session
    /// owns its connection, so closing one closes both.
    async fn close_session(&self, connect: &mut h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>, code: u32, reason: &str) {
        let capsule = protocol::close_capsule(code, reason);
        // A client that grants no flow-control credit (it stopped reading) would
        // hold the capsule, and with it the session, forever: past a short wait
        // the connection is closed without it (CONNECTION_CLOSE needs no credit).
        let send = async { connect.send_data(capsule).await.is_ok() && connect.finish().await.is_ok() };
        let sent = tokio::time::timeout(CAPSULE_TIMEOUT, send).await.unwrap_or(false);
        let (quic, reason) = (self.quic.clone(), reason.as_bytes()[..reason.len().min(protocol::MAX_CLOSE_REASON)].to_vec());
        if !sent {
            // At once, before the caller drops the CONNECT stream: its end
            // would reach the client first and read as a close with code 0.
            quic.close(code.into(), &reason);
            return;
        }
        let grace = quic.rtt() * 3 + Duration::from_millis(25);
        // The h3 connection closes the QUIC connection when dropped, so the
        // session lives until then.
        let session = self.session.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = quic.closed() => {}
                () = tokio::time::sleep(grace) => quic.close(code.into(), &reason),
            }
            drop(session);
        });
    }
}

async fn write_frame(send: &mut SendHalf, bytes: &[u8]) -> std::io::Result<()> {
    send.write_all(&framing::header(bytes.len() as u32)).await?;
    send.write_all(bytes).await
}

/// Takes the client's streams (and HTTP/3 requests sent on the session's
/// connection) until the connection ends. The driver names each stream
/// and starts its reader.
async fn accept_streams(session: Arc<Session>, tx: mpsc::Sender<Inbound>, edge: Arc<Edge>) {
    loop {
        let stream = match session.accept().await {
            Ok(Some(Accepted::Stream(send, recv))) => ClientStream { send: Some(send), recv },
            Ok(Some(Accepted::UniStream(recv))) => ClientStream { send: None, recv },
            Ok(Some(Accepted::Request(req, stream))) => {
                let edge = edge.clone();
                tokio::spawn(async move { http3::serve_request(&edge, req, stream).await });
                continue;
            }
            Ok(None) | Err(_) => return,
        };
        if tx.send(Inbound::Stream(Box::new(stream))).await.is_err() {
            return;
        }
    }
}

/// Cuts one client stream into frames, then reports how the client ended
/// it. It reads quinn's chunks as they are, so an idle stream holds no
/// read buffer of ours.
async fn read_frames(mut recv: RecvHalf, id: StreamId, tx: mpsc::Sender<Inbound>, max_frame: usize) {
    let mut decoder = framing::FrameDecoder::new(max_frame);
    loop {
        let chunk = match recv.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                let end = match decoder.finish() {
                    Ok(()) => Inbound::StreamEnd(id, StreamEnd::Finished),
                    Err(e) => Inbound::Violation(close_code::MALFORMED_FRAME, e.to_string()),
                };
                let _ = tx.send(end).await;
                return;
            }
            Err(e) => {
                // A reset drops the partial frame; a lost connection the driver sees itself.
                if let StreamFailure::ByPeer(code) = StreamFailure::of_io(&e) {
                    let _ = tx.send(Inbound::StreamEnd(id, StreamEnd::Reset(code))).await;
                }
                return;
            }
        };
        let mut input = &chunk[..];
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => {
                    if tx.send(Inbound::Frame(Some(id), frame)).await.is_err() {
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
            Inbound::Frame(None, bytes.to_vec())
        };
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Watches the CONNECT stream for the client's close.
async fn read_capsules(mut connect: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>, tx: mpsc::Sender<Inbound>) {
    let mut decoder = protocol::CapsuleDecoder::default();
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
