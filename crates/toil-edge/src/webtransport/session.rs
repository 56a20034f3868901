//! A stream session's driver: its resident box, frames both ways,
//! backpressure, and how it ends (the tasks and queue are described in
//! [the module doc](super)).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::StreamExt;
use toil_abi::stream::{close_code, framing, Direction, FrameKind, StreamEnd, StreamId};
use toil_channels::Delivery;
use toil_runtime::outbox::{Out, To};
use toil_runtime::stream::{StreamApp, StreamBox};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::ending::{classify, closing, too_slow, End, Step};
use super::primary::Held;
use super::protocol::{self, Capsule, ConnectStream, RecvHalf, SendHalf, Session, StreamFailure};
use super::read_set::ReadSet;
use crate::domains::Domain;
use crate::metrics::{DomainSessionMetrics, Ending};
use crate::serve::Edge;
use crate::sessions::SessionPermit;

/// How long a close capsule may wait for flow-control credit.
const CAPSULE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the connection's loop hands a session (see `pool`).
pub(super) enum Inbound {
    /// A datagram of the session.
    Datagram(Vec<u8>),
    /// A stream the client opened. Boxed: every slot of the inbound queue
    /// is as large as the largest variant.
    Stream(Box<ClientStream>),
    /// The client broke the rules; close the session with this code.
    Violation(u32, String),
}

/// What reading one stream of the session gave.
enum Read {
    Frame(Vec<u8>),
    /// The client finished or reset its side (or, found while writing,
    /// stopped reading ours).
    End(StreamEnd),
    /// The client broke the framing; close the session with this code.
    Violation(u32, String),
}

/// The session's streams, read by the driver itself when it is ready for
/// the next event: no task per stream, and no frame read ahead of the box.
type Reads = ReadSet<Pin<Box<dyn futures_util::Stream<Item = (StreamId, Read)> + Send>>>;

/// A stream the client opened: bidirectional (with its sending half, ours
/// to write) or unidirectional.
pub(super) struct ClientStream {
    pub send: Option<SendHalf>,
    pub recv: RecvHalf,
}

/// A CONNECT that may open a session: its box's app and a session slot.
pub(super) struct Admitted {
    /// The version admitted; the session closes if it is retired.
    pub domain: Arc<Domain>,
    pub app: Arc<StreamApp>,
    pub permit: SessionPermit,
}

/// Takes the session out of its connection's pool; returns whether it was
/// the connection's last session (which then closes the connection).
pub(super) type Leave = Box<dyn FnOnce() -> bool + Send>;

/// Runs one admitted session of connection `quic` until it ends: creates
/// its box, delivers its events (what the connection routes to it arrives
/// on `rx`), and ends it.
///
/// Not an `async fn`: the task is the driver's own future, which lives as
/// long as the session. An `async fn` here would keep its arguments and
/// the driver in its state next to that future, for nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn drive(
    edge: Arc<Edge>,
    admitted: Admitted,
    session: Arc<Session>,
    connect: ConnectStream,
    rx: mpsc::Receiver<Inbound>,
    quic: quinn::Connection,
    leave: Leave,
    path: String,
    query: String,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let Admitted { domain, app, permit } = admitted;
    let held = Held::new(app.limits().max_outbound_bytes_per_event);
    let driver = Driver {
        metrics: permit.metrics.clone(),
        quic,
        edge,
        domain,
        app,
        permit,
        held,
        writers: Vec::new(),
        reads: Reads::new(),
        stopped: VecDeque::new(),
        session,
        leave: Some(leave),
    };
    driver.run(connect, rx, path, query)
}

struct Driver {
    edge: Arc<Edge>,
    /// Leaves the connection's pool (once).
    leave: Option<Leave>,
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
    /// The session's streams the box may read.
    reads: Reads,
    /// Streams the client stopped reading, found while writing: the box
    /// hears of them before the next inbound event.
    stopped: VecDeque<(StreamId, StreamEnd)>,
}

/// What the driver takes next.
enum Next {
    Inbound(Option<Inbound>),
    Read(StreamId, Read),
    Channel(Delivery),
    /// The box may have had no event for `limits.hibernateAfterMs`.
    Idle,
}

/// When the box's idle time may be up; never, for a box that does not hibernate.
async fn nap(alarm: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match alarm {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, connect: ConnectStream, rx: mpsc::Receiver<Inbound>, path: String, query: String) {
        let name = path.trim_start_matches('/');
        let (path, query) = (path.as_str(), query.as_str());
        let ConnectStream { recv: connect_recv, send: mut connect_send } = connect;
        let id = self.permit.id;
        // The box's start and the session's end are boxed: the driver's
        // future lives as long as the session, and would otherwise be as
        // large as its largest step.
        let mut boxed = match Box::pin(self.app.open(name, id, path, query)).await {
            Ok(b) => b,
            Err(fault) => {
                let reason = format!("stream box failed: {}", fault.kind());
                let last = self.leave.take().is_none_or(|leave| leave());
                Box::pin(self.close_session(&mut connect_send, close_code::GUEST_FAULT, &reason, last)).await;
                return self.metrics.ended(Ending::Aborted);
            }
        };
        tracing::debug!(domain = %self.app.domain(), stream = name, session = id, peer = %self.quic.remote_address(), "session opened");
        let end = self.serve_events(&mut boxed, rx, connect_recv).await;
        self.reads = Reads::new(); // stops the client's streams
        let last = self.leave.take().is_none_or(|leave| leave());
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
                        let _ = Box::pin(b.close(code, &reason)).await;
                    }
                }
                Step::DisconnectHook(reason) => {
                    if let Some(b) = boxed.take() {
                        let _ = Box::pin(b.disconnect(&reason)).await;
                    }
                }
                Step::DropBox => drop(boxed.take()),
                Step::CloseSession { code, reason } => Box::pin(self.close_session(&mut connect_send, code, &reason, last)).await,
            }
        }
        self.metrics.ended(closing.how);
        tracing::debug!(domain = %self.app.domain(), stream = name, session = id, how = ?closing.how, "session ended");
    }

    /// Delivers events to the box, in order, and writes what it sends,
    /// until the session must end.
    async fn serve_events(&mut self, boxed: &mut StreamBox, mut rx: mpsc::Receiver<Inbound>, connect: ConnectRecv) -> End {
        let deliveries = boxed.take_deliveries();
        // Polled only when a delivery woke it, as the streams are.
        let mut arrivals = ReadSet::new();
        if let Some(d) = &deliveries {
            arrivals.push(Box::pin(d.arrivals()));
        }
        // What ends the session from outside its events is watched apart
        // from them, in a set that polls it only once one of its wakers
        // fired: polled with the events, its four watchers (two watch
        // receivers, quinn's close notification and a read of the CONNECT
        // stream, each taking a lock) would be polled for every frame.
        let mut outside = ReadSet::new();
        outside.push(futures_util::stream::once(outside_end(&self.edge, &self.domain, &self.quic, connect)));
        if let Some(end) = self.flush(boxed).await {
            return end;
        }
        // The alarm is set once per idle period, not per event: when it
        // rings early (events came), it is set again from the last one.
        let hibernate_after = self.app.limits().hibernate_after.filter(|_| self.app.hibernation_refused().is_none());
        let mut last_event = tokio::time::Instant::now();
        let mut alarm = hibernate_after.map(|after| Box::pin(tokio::time::sleep(after)));
        loop {
            boxed.set_max_datagram(self.quic.max_datagram_size().unwrap_or(0));
            // What ends the session comes first: a client that keeps the
            // queue full must not keep an old version alive. Frames, new
            // streams and channel deliveries take turns.
            let stopped = self.stopped.pop_front().map(|(id, end)| Next::Read(id, Read::End(end)));
            let awake = !boxed.is_hibernating();
            let next = if let Some(next) = stopped {
                next
            } else {
                tokio::select! {
                    biased;
                    Some(end) = outside.next() => return end,
                    next = async {
                        tokio::select! {
                            Some((id, read)) = self.reads.next(), if !self.reads.is_empty() => Next::Read(id, read),
                            inbound = rx.recv() => Next::Inbound(inbound),
                            Some(delivery) = arrivals.next(), if !arrivals.is_empty() => Next::Channel(delivery),
                            () = nap(&mut alarm), if awake => Next::Idle,
                        }
                    } => next,
                }
            };
            if let (Next::Idle, Some(after)) = (&next, hibernate_after) {
                self.alarm_rang(boxed, &mut alarm, last_event + after);
                continue;
            }
            let delivered = match next {
                Next::Read(id, Read::Frame(bytes)) => {
                    self.metrics.frames[0][FrameKind::Stream as usize].inc();
                    boxed.message(Some(id), &bytes).await
                }
                Next::Read(id, Read::End(end)) => {
                    if matches!(end, StreamEnd::Stopped(_)) {
                        self.writers.retain(|(s, _)| *s != id);
                    }
                    boxed.stream_end(id, end).await
                }
                Next::Read(_, Read::Violation(code, reason)) | Next::Inbound(Some(Inbound::Violation(code, reason))) => {
                    return End::Close { code, reason, by_host: true }
                }
                Next::Inbound(Some(Inbound::Datagram(bytes))) => {
                    self.metrics.frames[0][FrameKind::Datagram as usize].inc();
                    boxed.message(None, &bytes).await
                }
                Next::Inbound(Some(Inbound::Stream(stream))) => match Box::pin(self.adopt_stream(boxed, *stream)).await {
                    Some(end) => return end,
                    None => Ok(()),
                },
                Next::Idle => Ok(()),
                Next::Inbound(None) => return classify(self.quic.closed().await),
                Next::Channel(delivery) => {
                    let result = boxed.channel(&delivery).await;
                    if let (Ok(()), Some(d)) = (&result, &deliveries) {
                        d.delivered(&delivery);
                    }
                    result
                }
            };
            let end = match delivered {
                Ok(()) => self.flush(boxed).await,
                Err(fault) => Some(End::Fault(fault.to_string())),
            };
            // Idle time starts once the event's output is written: a
            // client slow to take it does not make the box look idle.
            last_event = tokio::time::Instant::now();
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// The idle alarm rang: the box hibernates if it has had no event
    /// since `idle_at` passed, or the alarm is set again for then.
    fn alarm_rang(&self, boxed: &mut StreamBox, alarm: &mut Option<Pin<Box<tokio::time::Sleep>>>, idle_at: tokio::time::Instant) {
        if tokio::time::Instant::now() < idle_at {
            alarm.as_mut().expect("an alarm rang").as_mut().reset(idle_at);
        } else if let Some(bytes) = boxed.hibernate() {
            tracing::trace!(domain = %self.app.domain(), session = self.permit.id, bytes, "box hibernated");
        } else {
            *alarm = None; // this box stays resident (see `StreamBox::hibernate`)
        }
    }

    /// Carries out what the box queued (frames, opens, finishes), in
    /// order; returns why the session must end, if it must.
    async fn flush(&mut self, boxed: &mut StreamBox) -> Option<End> {
        let stall = self.edge.sessions.limits().send_stall_timeout;
        for out in boxed.take_out() {
            let done = match out {
                Out::Frame { to: To::Datagram, bytes } => {
                    match self.session.send_datagram(&bytes) {
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
                Out::Open { stream, direction } => match unless_stalled(stall, self.session.open(direction == Direction::Bidi)).await {
                    Ok(Ok((send, recv))) => {
                        self.writers.push((stream, send));
                        if let Some(recv) = recv {
                            self.reads.push(frames(recv, stream, self.app.limits().max_frame_bytes));
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
        match unless_stalled(stall, write_frame(&mut self.writers[at].1, bytes)).await {
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
        match unless_stalled(stall, send.shutdown()).await {
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
    async fn adopt_stream(&mut self, boxed: &mut StreamBox, stream: ClientStream) -> Option<End> {
        let direction = if stream.send.is_some() { Direction::Bidi } else { Direction::Uni };
        let Some(id) = boxed.client_opened(direction) else {
            let reason = "the session has used every stream id".to_string();
            return Some(End::Close { code: close_code::MALFORMED_FRAME, reason, by_host: true });
        };
        self.reads.push(frames(stream.recv, id, self.app.limits().max_frame_bytes));
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
    /// `last`: no other session is open on the connection, which closes too.
    /// Otherwise only this session's streams end (`WT_SESSION_GONE`).
    async fn close_session(&mut self, connect: &mut ConnectSend, code: u32, reason: &str, last: bool) {
        let capsule = protocol::close_capsule(code, reason);
        // A client that grants no flow-control credit (it stopped reading) would
        // hold the capsule, and with it the session, forever: past a short wait
        // the connection is closed without it (CONNECTION_CLOSE needs no credit).
        let send = async { connect.send_data(capsule).await.is_ok() && connect.finish().await.is_ok() };
        let sent = tokio::time::timeout(CAPSULE_TIMEOUT, send).await.unwrap_or(false);
        if !last {
            for (_, send) in self.writers.drain(..) {
                send.gone();
            }
            if !sent {
                connect.stop_stream(h3::error::Code::from(protocol::WT_SESSION_GONE));
            }
            return;
        }
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

/// `op` if it completes within `stall` (`Err` if not). Writes almost
/// always complete at once, into quinn's send buffer: the timer (and the
/// clock read that sets it) is made only for one that has to wait.
async fn unless_stalled<F: Future>(stall: Duration, op: F) -> Result<F::Output, Stalled> {
    toil_runtime::wait::within(|| tokio::time::Instant::now() + stall, op).await.ok_or(Stalled)
}

/// A write, open or finish that did not complete within the stall timeout.
struct Stalled;

/// The sending side of a session's CONNECT stream (capsules out).
type ConnectSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Writes a frame as one buffer: every write locks the connection and wakes
/// its driver, so a header written apart from its body costs twice that
/// (and, should the driver run in between, a packet of its own).
async fn write_frame(send: &mut SendHalf, bytes: &[u8]) -> std::io::Result<()> {
    let mut framed = Vec::with_capacity(framing::HEADER_LEN + bytes.len());
    framed.extend_from_slice(&framing::header(bytes.len() as u32));
    framed.extend_from_slice(bytes);
    send.write_all(&framed).await
}

/// One client stream as frames, then how the client ended it. It reads
/// quinn's chunks as they are, so an idle stream holds no read buffer of
/// ours, and at most one partial frame.
fn frames(recv: RecvHalf, id: StreamId, max_frame: usize) -> Pin<Box<dyn futures_util::Stream<Item = (StreamId, Read)> + Send>> {
    let start = Some((recv, framing::FrameDecoder::new(max_frame), Bytes::new()));
    Box::pin(futures_util::stream::unfold(start, move |state| async move {
        let (mut recv, mut decoder, mut chunk) = state?;
        loop {
            if !chunk.is_empty() {
                let mut input = &chunk[..];
                let decoded = decoder.decode(&mut input);
                let rest = input.len();
                match decoded {
                    Ok(Some(frame)) => {
                        chunk.advance(chunk.len() - rest);
                        return Some(((id, Read::Frame(frame)), Some((recv, decoder, chunk))));
                    }
                    Ok(None) => {} // all of it is in the decoder; read on
                    Err(e) => {
                        let code = match e {
                            framing::FramingError::TooLarge { .. } => close_code::FRAME_TOO_LARGE,
                            framing::FramingError::Truncated { .. } => close_code::MALFORMED_FRAME,
                        };
                        return Some(((id, Read::Violation(code, e.to_string())), None));
                    }
                }
            }
            match recv.chunk().await {
                Ok(Some(next)) => chunk = next,
                Ok(None) => {
                    let end = match decoder.finish() {
                        Ok(()) => Read::End(StreamEnd::Finished),
                        Err(e) => Read::Violation(close_code::MALFORMED_FRAME, e.to_string()),
                    };
                    return Some(((id, end), None));
                }
                // A reset drops the partial frame; a lost connection the driver sees itself.
                Err(e) => match StreamFailure::of_io(&e) {
                    StreamFailure::ByPeer(code) => return Some(((id, Read::End(StreamEnd::Reset(code))), None)),
                    StreamFailure::Connection => return None,
                },
            }
        }
    }))
}

/// The receiving side of a session's CONNECT stream (capsules in).
type ConnectRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Why the session ends from outside its events, once it must: the node
/// shuts down, its version is retired, the client closes the session
/// (a close capsule, or the CONNECT stream's end) or the connection is lost.
fn outside_end(edge: &Edge, domain: &Arc<Domain>, quic: &quinn::Connection, connect: ConnectRecv) -> Pin<Box<dyn Future<Output = End> + Send>> {
    let mut shutdown = edge.shutdown.subscribe();
    let (domain, quic) = (domain.clone(), quic.clone());
    Box::pin(async move {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => End::Close { code: close_code::SHUTDOWN, reason: "node shutting down".into(), by_host: true },
            r = domain.retired() => End::Close { code: r.code, reason: r.reason, by_host: true },
            close = client_close(connect) => match close {
                Ok((code, reason)) => End::PeerClosed(code, reason),
                Err(reason) => End::Close { code: close_code::MALFORMED_FRAME, reason, by_host: true },
            },
            err = quic.closed() => classify(err),
        }
    })
}

/// Watches the CONNECT stream for the client's close: its code and reason,
/// or (`Err`) why the capsules are malformed. A lost connection never
/// resolves ([`outside_end`] sees it).
async fn client_close(mut connect: ConnectRecv) -> Result<(u32, String), String> {
    let mut decoder = protocol::CapsuleDecoder::default();
    loop {
        match connect.recv_data().await {
            Ok(Some(mut data)) => {
                let bytes = data.copy_to_bytes(data.remaining());
                match decoder.push(&bytes) {
                    Ok(capsules) => {
                        let close = capsules.into_iter().find_map(|c| match c {
                            Capsule::Close { code, reason } => Some((code, reason)),
                            Capsule::Other(_) => None,
                        });
                        if let Some(close) = close {
                            return Ok(close);
                        }
                    }
                    Err(e) => return Err(format!("CONNECT stream: {}", e.0)),
                }
            }
            // Ending the CONNECT stream without a capsule is a close with code 0.
            Ok(None) => return Ok((close_code::NORMAL, String::new())),
            Err(_) => return std::future::pending().await,
        }
    }
}
