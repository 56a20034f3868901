//! A WebTransport client that pools: several sessions on one HTTP/3
//! connection. h3's client sends the extended CONNECTs; each session's
//! streams are raw QUIC streams that start with the WebTransport stream
//! header naming the session. (wtransport opens one session per
//! connection, and browsers pool only when asked to.)

use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use toil_abi::stream::framing;

pub struct PoolingClient {
    pub quic: quinn::Connection,
    requests: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    _driver: tokio::task::JoinHandle<()>,
}

impl PoolingClient {
    /// Connects to `to` over `endpoint` (one trusting the dev certificate).
    pub async fn connect(endpoint: &quinn::Endpoint, to: SocketAddr) -> PoolingClient {
        let quic = endpoint.connect(to, "localhost").unwrap().await.unwrap();
        let mut builder = h3::client::builder();
        builder.enable_extended_connect(true).enable_datagram(true);
        let (mut driver, requests) = builder.build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone())).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        PoolingClient { quic, requests, _driver: driver }
    }

    /// The next datagram: the ID of the session it names, and its payload.
    pub async fn recv_datagram(&self) -> (u64, Vec<u8>) {
        let datagram = self.quic.read_datagram().await.unwrap();
        let mut at = 0;
        let quarter = varint(&datagram, &mut at).unwrap();
        (quarter * 4, datagram[at..].to_vec())
    }

    /// Opens a session to `https://{host}{path}` on this connection; the
    /// response status if it is refused.
    pub async fn session(&mut self, host: &str, path: &str) -> Result<PooledSession, u16> {
        let mut req = http::Request::builder().method(http::Method::CONNECT).uri(format!("https://{host}{path}")).body(()).unwrap();
        req.extensions_mut().insert(h3::ext::Protocol::WEB_TRANSPORT);
        let mut connect = self.requests.send_request(req).await.unwrap();
        let status = connect.recv_response().await.unwrap().status();
        if status != http::StatusCode::OK {
            return Err(status.as_u16());
        }
        Ok(PooledSession { id: connect.id().into_inner(), connect, quic: self.quic.clone(), capsules: Vec::new() })
    }
}

/// One session of a [`PoolingClient`].
pub struct PooledSession {
    /// The session ID: its CONNECT stream's ID.
    pub id: u64,
    connect: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    quic: quinn::Connection,
    capsules: Vec<u8>,
}

impl PooledSession {
    /// Opens a bidirectional stream of this session.
    pub async fn open_bi(&self) -> QuicFrames {
        let (mut send, recv) = self.quic.open_bi().await.unwrap();
        let mut header = Vec::new();
        put_varint(&mut header, 0x41);
        put_varint(&mut header, self.id);
        send.write_all(&header).await.unwrap();
        QuicFrames { send, recv, decoder: framing::FrameDecoder::new(1 << 20) }
    }

    /// Sends a datagram of this session (a quarter of its ID leads it).
    pub fn send_datagram(&self, payload: &[u8]) {
        let mut datagram = Vec::new();
        put_varint(&mut datagram, self.id / 4);
        datagram.extend_from_slice(payload);
        self.quic.send_datagram(datagram.into()).unwrap();
    }

    /// Closes the session with a `CLOSE_WEBTRANSPORT_SESSION` capsule.
    pub async fn close(&mut self, code: u32, reason: &str) {
        let mut capsule = Vec::new();
        put_varint(&mut capsule, CLOSE_SESSION);
        put_varint(&mut capsule, 4 + reason.len() as u64);
        capsule.extend_from_slice(&code.to_be_bytes());
        capsule.extend_from_slice(reason.as_bytes());
        self.connect.send_data(Bytes::from(capsule)).await.unwrap();
        self.connect.finish().await.unwrap();
    }

    /// How the server closed the session: its close capsule's code and
    /// reason; `None` if the CONNECT stream ended without one.
    pub async fn closed(&mut self) -> Option<(u32, String)> {
        loop {
            if let Some(close) = close_capsule(&self.capsules) {
                return Some(close);
            }
            let mut data = self.connect.recv_data().await.ok()??;
            while data.has_remaining() {
                let chunk = data.chunk().to_vec();
                data.advance(chunk.len());
                self.capsules.extend_from_slice(&chunk);
            }
        }
    }
}

/// Length-delimited frames on one raw QUIC bidirectional stream.
pub struct QuicFrames {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    decoder: framing::FrameDecoder,
}

impl QuicFrames {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.send.write_all(&framing::header(bytes.len() as u32)).await.unwrap();
        self.send.write_all(bytes).await.unwrap();
    }

    /// The next frame as text; `None` when the stream ended or was reset.
    pub async fn recv_text(&mut self) -> Option<String> {
        loop {
            let chunk = self.recv.read_chunk(64 << 10, true).await.ok()??;
            let mut input = &chunk.bytes[..];
            if let Some(frame) = self.decoder.decode(&mut input).unwrap() {
                assert!(input.is_empty(), "one frame per reply in these tests");
                return Some(String::from_utf8(frame).unwrap());
            }
        }
    }
}

const CLOSE_SESSION: u64 = 0x2843;

/// The first close capsule in `buf`, once it is whole.
fn close_capsule(buf: &[u8]) -> Option<(u32, String)> {
    let mut at = 0;
    loop {
        let ty = varint(buf, &mut at)?;
        let len = varint(buf, &mut at)? as usize;
        let payload = buf.get(at..at + len)?;
        if ty == CLOSE_SESSION {
            let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
            return Some((code, String::from_utf8_lossy(&payload[4..]).into_owned()));
        }
        at += len;
    }
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let first = *buf.get(*at)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(*at..*at + len)?;
    *at += len;
    Some(bytes[1..].iter().fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b)))
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x3f => out.push(v as u8),
        0x40..=0x3fff => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}
