//! The WebTransport-over-HTTP/3 session layer (server side), on h3's
//! extension API.
//!
//! A session is an extended CONNECT (`:protocol = webtransport`). Its
//! CONNECT stream stays open for the session's life and carries capsules
//! (RFC 9297): a client's `close({closeCode, reason})` arrives there as
//! `CLOSE_WEBTRANSPORT_SESSION`, and the server closes a session the same
//! way, so a browser's `closed` promise resolves with the code and reason.
//! Every WebTransport stream starts with a header naming its session (the
//! type `0x41` on a bidirectional stream, `0x54` on a unidirectional one,
//! then the session ID), whoever opened it; datagrams carry the session's
//! quarter stream ID. Stream resets and stops carry WebTransport error
//! codes mapped into HTTP/3's code space ([`wt_code`], [`h3_code`]).
//!
//! h3-webtransport 0.1 implements the streams and datagrams but keeps the
//! CONNECT stream to itself, so a session could neither see a graceful
//! close nor send one. This module owns the session instead, through the
//! same h3 extension points.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{BidiStream as _, OpenStreams as _, RecvStream as _, SendStream as _, SendStreamUnframed as _, StreamErrorIncoming};
use h3::stream::BufRecvStream;
use h3::webtransport::SessionId;
use h3_datagram::datagram_handler::{DatagramReader, HandleDatagramsExt};
use http::{Request, Response, StatusCode};

use crate::h3_conn::{QuicConn, UniRecv};
use crate::http3::{H3Connection, RequestStream};

/// Whether a request is a WebTransport extended CONNECT.
pub fn is_connect(req: &Request<()>) -> bool {
    req.method() == http::Method::CONNECT && req.extensions().get::<h3::ext::Protocol>() == Some(&h3::ext::Protocol::WEB_TRANSPORT)
}

/// A QUIC connection carrying WebTransport sessions: accept what the
/// client opens there, for any of its sessions.
pub struct Connection {
    h3: Mutex<Box<H3Connection>>,
    quic: quinn::Connection,
}

/// One accepted session of a [`Connection`]: open streams and send
/// datagrams for it.
///
/// A session's ID is its CONNECT stream's ID, as stream headers and
/// datagrams carry it. (h3 0.0.8's `SessionId` is not one value: decoded
/// from a stream header it holds that ID, converted from the CONNECT
/// stream's `StreamId` it holds a quarter of it. So this module speaks
/// plain `u64` IDs.)
pub struct Session {
    id: u64,
    conn: Arc<Connection>,
}

/// The session's CONNECT stream, split: capsules in, capsules out.
pub struct ConnectStream {
    pub recv: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
    pub send: h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
}

/// What a client opened on a WebTransport connection.
pub enum Accepted {
    /// A WebTransport bidirectional stream of the session named.
    Stream(u64, SendHalf, RecvHalf),
    /// A WebTransport unidirectional stream of the session named.
    UniStream(u64, RecvHalf),
    /// An HTTP/3 request (a WebTransport CONNECT among them).
    Request(Request<()>, RequestStream),
}

/// Accepts a CONNECT on `conn`: answers 200 and keeps its stream.
pub async fn accept(mut stream: RequestStream, conn: &Arc<Connection>) -> Result<(Session, ConnectStream), h3::error::StreamError> {
    let resp = Response::builder()
        .status(StatusCode::OK)
        // Chromium checks this header to pick the draft.
        .header("sec-webtransport-http3-draft", "draft02")
        .body(())
        .expect("static response");
    stream.send_response(resp).await?;
    let id = stream.send_id().into_inner();
    let (send, recv) = stream.split();
    Ok((Session { id, conn: conn.clone() }, ConnectStream { recv, send }))
}

impl Connection {
    pub fn new(h3: Box<H3Connection>, quic: quinn::Connection) -> Self {
        Connection { h3: Mutex::new(h3), quic }
    }

    /// The next stream or request the client opens; `None` when the
    /// connection ends. Streams whose first frame does not arrive within
    /// `FIRST_FRAME_TIMEOUT` are refused (reset and stopped, so their
    /// credit returns) and skipped.
    pub async fn accept(&self) -> Result<Option<Accepted>, h3::error::StreamError> {
        // A loop, not recursion: a client may send any number of foreign
        // streams, and each nested await would deepen the worker's stack.
        loop {
            let stream = match std::future::poll_fn(|cx| self.poll_accept(cx)).await {
                Ok(Incoming::Bidi(s)) => s,
                Ok(Incoming::Uni(session, recv)) => {
                    return Ok(Some(Accepted::UniStream(wire_id(session), RecvHalf { stream: Recv::Uni(recv), chunk: Bytes::new() })))
                }
                Ok(Incoming::End) => return Ok(None),
                Err(e) => return Err(h3::error::StreamError::ConnectionError(e)),
            };
            // Boxed: the connection's loop waits here for its whole life,
            // and this step is most of its size.
            if let Some(accepted) = Box::pin(self.resolve(stream)).await? {
                return Ok(Some(accepted));
            }
        }
    }

    /// What a new bidirectional stream is, from its first frame: a
    /// WebTransport stream or a request; `None` if it did not say in time.
    async fn resolve(&self, stream: h3_quinn::BidiStream<Bytes>) -> Result<Option<Accepted>, h3::error::StreamError> {
        let stream = h3::frame::FrameStream::new(BufRecvStream::new(stream));
        let mut resolver = self.h3.lock().expect("h3 connection").create_resolver(stream);
        let first = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx));
        let Ok(first) = tokio::time::timeout(FIRST_FRAME_TIMEOUT, first).await else {
            let (mut send, mut recv) = resolver.frame_stream.into_inner().split();
            send.reset(h3::error::Code::H3_REQUEST_REJECTED.value());
            recv.stop_sending(h3::error::Code::H3_REQUEST_REJECTED.value());
            return Ok(None);
        };
        match first {
            Ok(Some(h3::proto::frame::Frame::WebTransportStream(session))) => {
                let (send, recv) = resolver.frame_stream.into_inner().split();
                Ok(Some(Accepted::Stream(wire_id(session), SendHalf(send), RecvHalf { stream: Recv::Bidi(recv), chunk: Bytes::new() })))
            }
            frame => {
                let (req, stream) = resolver.accept_with_frame(frame)?.resolve().await?;
                Ok(Some(Accepted::Request(req, stream)))
            }
        }
    }

    /// A new bidirectional stream, or a unidirectional one h3 has typed
    /// (h3 reads unidirectional stream headers itself, while it polls for
    /// requests, and keeps WebTransport ones aside).
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<Incoming, h3::error::ConnectionError>> {
        let mut conn = self.h3.lock().expect("h3 connection");
        if let Poll::Ready(bidi) = conn.poll_accept_request_stream(cx) {
            return Poll::Ready(bidi.map(|s| s.map_or(Incoming::End, Incoming::Bidi)));
        }
        match conn.inner.accepted_streams_mut().wt_uni_streams.pop() {
            Some((session, recv)) => Poll::Ready(Ok(Incoming::Uni(session, recv))),
            None => Poll::Pending,
        }
    }

    pub fn datagram_reader(&self) -> DatagramReader<h3_quinn::datagram::RecvDatagramHandler> {
        self.h3.lock().expect("h3 connection").get_datagram_reader()
    }
}

/// The ID a stream header carried (h3 keeps it whole in this direction).
fn wire_id(session: SessionId) -> u64 {
    h3::quic::StreamId::from(session).into_inner()
}

impl Session {
    /// The session's ID: its CONNECT stream's ID.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Opens a stream to the client, bidirectional or not, and writes its
    /// header. Waits while the client grants no stream credit.
    pub async fn open(&self, bidi: bool) -> Result<(SendHalf, Option<RecvHalf>), StreamErrorIncoming> {
        let mut opener = <QuicConn as h3::quic::Connection<Bytes>>::opener(&self.conn.h3.lock().expect("h3 connection").inner.conn);
        let (send, recv, kind) = if bidi {
            let stream = std::future::poll_fn(|cx| opener.poll_open_bidi(cx)).await?;
            let (send, recv) = BufRecvStream::new(stream).split();
            (send, Some(RecvHalf { stream: Recv::Bidi(recv), chunk: Bytes::new() }), WT_BIDI_STREAM)
        } else {
            (BufRecvStream::new(std::future::poll_fn(|cx| opener.poll_open_send(cx)).await?), None, WT_UNI_STREAM)
        };
        let mut header = Vec::with_capacity(16);
        put_varint(&mut header, kind);
        put_varint(&mut header, self.id);
        let mut send = SendHalf(send);
        let mut rest = &header[..];
        while !rest.is_empty() {
            std::future::poll_fn(|cx| send.0.poll_send(cx, &mut rest)).await?;
        }
        Ok((send, recv))
    }

    /// Sends one datagram of this session: the quarter of its ID, then the
    /// payload. (Written here: h3-datagram 0.0.2 encodes every outgoing
    /// datagram with quarter stream ID 0, which is only right for a
    /// connection's first session.)
    pub fn send_datagram(&self, payload: &[u8]) -> Result<(), quinn::SendDatagramError> {
        let mut datagram = Vec::with_capacity(8 + payload.len());
        put_varint(&mut datagram, self.id / 4);
        datagram.extend_from_slice(payload);
        self.conn.quic.send_datagram(datagram.into())
    }
}

/// How long a new stream on a session's connection may take to say what it
/// is (its first frame); streams are taken one at a time.
const FIRST_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `WT_BUFFERED_STREAM_REJECTED` (draft-ietf-webtrans-http3).
const WT_BUFFERED_STREAM_REJECTED: u64 = 0x3994bd84;
/// `WT_SESSION_GONE`: the stream's session closed (draft-ietf-webtrans-http3).
pub const WT_SESSION_GONE: u64 = 0x170d7b68;
/// Stream types that start a WebTransport stream (draft-ietf-webtrans-http3).
const WT_BIDI_STREAM: u64 = 0x41;
const WT_UNI_STREAM: u64 = 0x54;

/// What [`Session::poll_accept`] found.
enum Incoming {
    Bidi(h3_quinn::BidiStream<Bytes>),
    Uni(SessionId, BufRecvStream<UniRecv, Bytes>),
    End,
}

/// How a stream side failed: the client stopped or reset it (with its
/// WebTransport code), or the connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFailure {
    ByPeer(u32),
    Connection,
}

impl StreamFailure {
    fn of(e: &StreamErrorIncoming) -> StreamFailure {
        match e {
            StreamErrorIncoming::StreamTerminated { error_code } => StreamFailure::ByPeer(wt_code(*error_code)),
            _ => StreamFailure::Connection,
        }
    }

    /// The failure behind an I/O error from [`SendHalf`] or [`RecvHalf`].
    pub fn of_io(e: &io::Error) -> StreamFailure {
        e.get_ref().and_then(|inner| inner.downcast_ref::<StreamErrorIncoming>()).map_or(StreamFailure::Connection, StreamFailure::of)
    }
}

/// The first HTTP/3 code of the WebTransport range (draft-ietf-webtrans-http3):
/// application code `n` travels as `FIRST + n + n / 0x1e`, skipping the
/// reserved codes of the form `0x1f * k + 0x21`.
const WT_CODE_FIRST: u64 = 0x52e4_a40f_a8db;
const WT_CODE_LAST: u64 = 0x52e5_ac98_3162;

/// The WebTransport application code a stream error code carries. Codes
/// outside the WebTransport range (clients that send raw codes) pass
/// through, capped to 32 bits.
pub fn wt_code(h3: u64) -> u32 {
    if !(WT_CODE_FIRST..=WT_CODE_LAST).contains(&h3) || (h3 - 0x21).is_multiple_of(0x1f) {
        return u32::try_from(h3).unwrap_or(u32::MAX);
    }
    let shifted = h3 - WT_CODE_FIRST;
    (shifted - shifted / 0x1f) as u32
}

/// The HTTP/3 code a WebTransport application code travels as.
pub fn h3_code(wt: u32) -> u64 {
    WT_CODE_FIRST + u64::from(wt) + u64::from(wt) / 0x1e
}

/// The sending half of a session stream, as a tokio `AsyncWrite`.
pub struct SendHalf(BufRecvStream<h3_quinn::SendStream<Bytes>, Bytes>);

impl SendHalf {
    /// Resets the stream: it belongs to no session.
    pub fn reject(mut self) {
        self.0.reset(WT_BUFFERED_STREAM_REJECTED);
    }

    /// Resets the stream: its session is gone.
    pub fn gone(mut self) {
        self.0.reset(WT_SESSION_GONE);
    }
}

impl tokio::io::AsyncWrite for SendHalf {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut data = buf;
        self.0.poll_send(cx, &mut data).map_err(io::Error::other)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_finish(cx).map_err(io::Error::other)
    }
}

/// The receiving half of a session stream, as a tokio `AsyncRead`.
pub struct RecvHalf {
    stream: Recv,
    chunk: Bytes,
}

/// The receiving side of a bidirectional or a unidirectional stream.
enum Recv {
    Bidi(BufRecvStream<h3_quinn::RecvStream, Bytes>),
    Uni(BufRecvStream<UniRecv, Bytes>),
}

impl Recv {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        match self {
            Recv::Bidi(s) => s.poll_data(cx),
            Recv::Uni(s) => s.poll_data(cx),
        }
    }
}

impl RecvHalf {
    /// Stops the stream: it belongs to no session (any more).
    pub fn reject(self) {
        match self.stream {
            Recv::Bidi(mut s) => s.stop_sending(WT_BUFFERED_STREAM_REJECTED),
            Recv::Uni(mut s) => s.stop_sending(WT_BUFFERED_STREAM_REJECTED),
        }
    }

    /// The next chunk of the stream as quinn received it (no copy, no
    /// buffer of ours), or `None` at its end.
    pub async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        if !self.chunk.is_empty() {
            return Ok(Some(std::mem::take(&mut self.chunk)));
        }
        std::future::poll_fn(|cx| self.stream.poll_data(cx)).await.map_err(io::Error::other)
    }
}

impl tokio::io::AsyncRead for RecvHalf {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.chunk.is_empty() {
            match ready!(self.stream.poll_data(cx)) {
                Ok(Some(chunk)) => self.chunk = chunk,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = self.chunk.len().min(buf.remaining());
        buf.put_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Poll::Ready(Ok(()))
    }
}

// ------------------------------------------------------------------ capsules

/// `CLOSE_WEBTRANSPORT_SESSION`.
const CLOSE_SESSION: u64 = 0x2843;
/// Longest close reason the draft allows, in bytes.
pub const MAX_CLOSE_REASON: usize = 1024;

/// A capsule that matters to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capsule {
    Close {
        code: u32,
        reason: String,
    },
    /// Any other capsule type (e.g. `DRAIN_WEBTRANSPORT_SESSION`): skipped.
    Other(u64),
}

/// Why the CONNECT stream's bytes are not a capsule sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapsuleError(pub &'static str);

/// Incremental capsule parser (type varint, length varint, payload).
#[derive(Default)]
pub struct CapsuleDecoder {
    buf: Vec<u8>,
}

/// Largest close capsule payload: the code and a full reason.
const MAX_CLOSE_PAYLOAD: usize = 4 + MAX_CLOSE_REASON;
/// Largest other capsule buffered (to be skipped).
const MAX_OTHER_PAYLOAD: usize = 64 << 10;

impl CapsuleDecoder {
    /// Adds bytes and returns the capsules they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Capsule>, CapsuleError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let mut at = 0;
            let Some(ty) = varint(&self.buf, &mut at) else {
                break;
            };
            let Some(len) = varint(&self.buf, &mut at) else {
                break;
            };
            let limit = if ty == CLOSE_SESSION { MAX_CLOSE_PAYLOAD } else { MAX_OTHER_PAYLOAD };
            let len = usize::try_from(len).ok().filter(|l| *l <= limit).ok_or(CapsuleError("capsule too long"))?;
            if self.buf.len() < at + len {
                break;
            }
            let payload = &self.buf[at..at + len];
            out.push(if ty == CLOSE_SESSION {
                if payload.len() < 4 {
                    return Err(CapsuleError("close capsule shorter than its code"));
                }
                let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                Capsule::Close { code, reason: String::from_utf8_lossy(&payload[4..]).into_owned() }
            } else {
                Capsule::Other(ty)
            });
            self.buf.drain(..at + len);
        }
        Ok(out)
    }
}

/// Encodes `CLOSE_WEBTRANSPORT_SESSION` (the reason cut to the limit at a character boundary).
pub fn close_capsule(code: u32, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(8 + 4 + reason.len());
    put_varint(&mut out, CLOSE_SESSION);
    put_varint(&mut out, (4 + reason.len()) as u64);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    out.into()
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let first = *buf.get(*at)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(*at..*at + len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    *at += len;
    Some(v)
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x3f => out.push(v as u8),
        0x40..=0x3fff => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_capsules_round_trip_in_any_split() {
        let mut wire = Vec::new();
        // An unknown capsule first (DRAIN, empty), then a close.
        put_varint(&mut wire, 0x78ae);
        put_varint(&mut wire, 3);
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&close_capsule(4001, "bye now"));
        for split in 1..wire.len() {
            let mut d = CapsuleDecoder::default();
            let mut got = d.push(&wire[..split]).unwrap();
            got.extend(d.push(&wire[split..]).unwrap());
            let closes: Vec<_> = got.into_iter().filter(|c| matches!(c, Capsule::Close { .. })).collect();
            assert_eq!(closes, [Capsule::Close { code: 4001, reason: "bye now".into() }], "split at {split}");
        }
    }

    #[test]
    fn webtransport_stream_codes_map_both_ways_around_the_reserved_ones() {
        assert_eq!(h3_code(0), WT_CODE_FIRST);
        assert_eq!(h3_code(u32::MAX), WT_CODE_LAST);
        for wt in [0, 1, 0x1d, 0x1e, 0x1f, 0x3c, 255, 4000, 1 << 20, u32::MAX - 1, u32::MAX] {
            let h3 = h3_code(wt);
            assert_ne!((h3 - 0x21) % 0x1f, 0, "{wt} maps onto a reserved code");
            assert_eq!(wt_code(h3), wt);
        }
        // Reserved codes inside the range, and raw codes outside it, are not mapped.
        let reserved = (WT_CODE_FIRST..).find(|h| (h - 0x21) % 0x1f == 0).unwrap();
        assert_eq!(wt_code(reserved), u32::MAX);
        assert_eq!(wt_code(7), 7);
        assert_eq!(wt_code(WT_CODE_FIRST - 1), u32::MAX);
    }

    #[test]
    fn reasons_are_cut_at_the_limit_and_bad_capsules_rejected() {
        let long = "é".repeat(MAX_CLOSE_REASON);
        let mut d = CapsuleDecoder::default();
        let got = d.push(&close_capsule(7, &long)).unwrap();
        let Capsule::Close { code: 7, reason } = &got[0] else { panic!("{got:?}") };
        assert!(reason.len() <= MAX_CLOSE_REASON && reason.chars().all(|c| c == 'é'));
        let mut short = Vec::new();
        put_varint(&mut short, CLOSE_SESSION);
        put_varint(&mut short, 2);
        short.extend_from_slice(&[0, 1]);
        assert!(CapsuleDecoder::default().push(&short).is_err());
        for v in [0, 0x3f, 0x40, 0x3fff, 0x4000, 0x3fff_ffff, 0x4000_0000, 1 << 61] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(varint(&b, &mut 0), Some(v));
        }
    }
}
