//! The QUIC connection h3 runs on: h3-quinn's, except that the header of
//! every unidirectional stream the client opens reaches h3 one varint per
//! chunk.
//!
//! Why: h3 0.0.8 reads a unidirectional stream's type and then, for a
//! WebTransport stream (type `0x54`), its session ID, and before decoding
//! each varint it waits for *more* stream data, even when the varint is
//! already buffered. A client that sends the header and its first frame in
//! one packet, then waits for an answer, would wait forever: the stream
//! reaches the session only when more data or the stream's end arrives.
//! Cutting the chunks at the header's varint boundaries ([`HeaderCuts`])
//! means each wait is satisfied by exactly the varint h3 wants; the body
//! then passes through untouched. Control and QPACK streams (one varint)
//! pass the same way.
//!
//! Everything else (bidirectional streams, opening streams, datagrams)
//! is h3-quinn's, unchanged.

use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId};
use h3_datagram::quic_traits::DatagramConnectionExt;

/// h3-quinn's connection with [`UniRecv`] for incoming unidirectional streams.
pub struct QuicConn(h3_quinn::Connection);

impl QuicConn {
    pub fn new(conn: quinn::Connection) -> Self {
        QuicConn(h3_quinn::Connection::new(conn))
    }
}

impl<B: Buf> quic::OpenStreams<B> for QuicConn {
    type BidiStream = h3_quinn::BidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.0, cx)
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.0, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.0, code, reason)
    }
}

impl<B: Buf> quic::Connection<B> for QuicConn {
    type RecvStream = UniRecv;
    type OpenStreams = h3_quinn::OpenStreams;

    fn poll_accept_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<UniRecv, ConnectionErrorIncoming>> {
        let stream = ready!(quic::Connection::<B>::poll_accept_recv(&mut self.0, cx))?;
        Poll::Ready(Ok(UniRecv { stream, rest: Bytes::new(), cuts: HeaderCuts::default() }))
    }

    fn poll_accept_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        quic::Connection::<B>::poll_accept_bidi(&mut self.0, cx)
    }

    fn opener(&self) -> h3_quinn::OpenStreams {
        quic::Connection::<B>::opener(&self.0)
    }
}

impl<B: Buf> DatagramConnectionExt<B> for QuicConn {
    type SendDatagramHandler = h3_quinn::datagram::SendDatagramHandler;
    type RecvDatagramHandler = h3_quinn::datagram::RecvDatagramHandler;

    fn send_datagram_handler(&self) -> Self::SendDatagramHandler {
        DatagramConnectionExt::<B>::send_datagram_handler(&self.0)
    }

    fn recv_datagram_handler(&self) -> Self::RecvDatagramHandler {
        DatagramConnectionExt::<B>::recv_datagram_handler(&self.0)
    }
}

/// An incoming unidirectional stream whose header varints each end a chunk.
pub struct UniRecv {
    stream: h3_quinn::RecvStream,
    /// What quinn gave and h3 has not been handed yet.
    rest: Bytes,
    cuts: HeaderCuts,
}

impl quic::RecvStream for UniRecv {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        if self.rest.is_empty() {
            match ready!(self.stream.poll_data(cx))? {
                Some(chunk) => self.rest = chunk,
                None => return Poll::Ready(Ok(None)),
            }
        }
        let n = self.cuts.take(&self.rest);
        Poll::Ready(Ok(Some(self.rest.split_to(n))))
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.stream.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.stream.recv_id()
    }
}

/// Where the header of a unidirectional stream ends its chunks: after the
/// stream type, and, for types followed by an ID (WebTransport `0x54`,
/// push `0x01`), after that ID. No I/O.
#[derive(Debug, Default)]
pub struct HeaderCuts {
    /// The header bytes handed over so far (at most two varints: 16 bytes).
    seen: Vec<u8>,
    /// The header is behind us: everything passes.
    done: bool,
}

/// Stream types whose type varint is followed by a second varint.
const TYPES_WITH_ID: [u64; 2] = [0x54, 0x01];

impl HeaderCuts {
    /// How many bytes of `chunk`, which follows what was handed over so
    /// far, to hand over now.
    pub fn take(&mut self, chunk: &[u8]) -> usize {
        if self.done {
            return chunk.len();
        }
        let mut header = self.seen.clone();
        header.extend_from_slice(&chunk[..chunk.len().min(16)]);
        let cut = match varint(&header, 0) {
            // The type is incomplete: hand over what there is.
            None => None,
            Some((ty, type_end)) if !TYPES_WITH_ID.contains(&ty) => Some(type_end),
            Some((_, type_end)) if self.seen.len() < type_end => Some(type_end),
            Some((_, type_end)) => varint(&header, type_end).map(|(_, id_end)| id_end),
        };
        let take = match cut {
            Some(end) => end - self.seen.len(),
            None => chunk.len(),
        };
        self.seen.extend_from_slice(&chunk[..take]);
        // Done once the last varint of the header is handed over.
        self.done = match varint(&self.seen, 0) {
            Some((ty, end)) if !TYPES_WITH_ID.contains(&ty) => self.seen.len() >= end,
            Some((_, end)) => varint(&self.seen, end).is_some(),
            None => false,
        };
        if self.done {
            self.seen = Vec::new();
        }
        take
    }
}

/// The QUIC varint at `at` in `buf`, and where it ends; `None` if incomplete.
fn varint(buf: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *buf.get(at)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(at..at + len)?;
    let value = bytes[1..].iter().fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
    Some((value, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in chunks of `size` and returns the pieces handed over.
    fn pieces(stream: &[u8], size: usize) -> Vec<Vec<u8>> {
        let mut cuts = HeaderCuts::default();
        let mut out = Vec::new();
        for chunk in stream.chunks(size) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = cuts.take(rest);
                assert!(n > 0);
                out.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
        }
        out
    }

    #[test]
    fn a_webtransport_stream_header_arrives_one_varint_per_piece_however_it_was_chunked() {
        // Type 0x54 (two bytes), session ID 4 (one byte), then a frame.
        let stream = [0x40, 0x54, 0x04, 0, 0, 0, 2, b'h', b'i'];
        assert_eq!(pieces(&stream, 64), [vec![0x40, 0x54], vec![0x04], stream[3..].to_vec()]);
        // Split inside the type varint: the partial varint is handed over as
        // it comes (h3 buffers it), and nothing crosses a boundary.
        let one = pieces(&stream, 1);
        assert_eq!(one.concat(), stream);
        assert!(one.iter().all(|p| p.len() == 1));
        let three = pieces(&stream, 3);
        assert_eq!(three, [vec![0x40, 0x54], vec![0x04], vec![0, 0, 0], vec![2, b'h', b'i']]);
    }

    #[test]
    fn a_long_session_id_and_other_stream_types() {
        // Session ID as an 8-byte varint.
        let mut stream = vec![0x40, 0x54, 0xc0, 0, 0, 0, 0, 0, 0, 8];
        stream.extend_from_slice(b"body");
        assert_eq!(pieces(&stream, 64), [vec![0x40, 0x54], stream[2..10].to_vec(), b"body".to_vec()]);
        // A control stream (type 0): one varint, then frames as they come.
        assert_eq!(pieces(&[0x00, 0x04, 0x00], 64), [vec![0x00], vec![0x04, 0x00]]);
        // A push stream (type 1) carries an ID too.
        assert_eq!(pieces(&[0x01, 0x07, 0xaa], 64), [vec![0x01], vec![0x07], vec![0xaa]]);
    }
}
