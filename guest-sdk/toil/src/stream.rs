//! L2/L3 stream tier: one resident box per WebTransport connection.
//!
//! `#[toil::stream("name")]` implements [`Stream`] for a `Default` type. The
//! host creates one instance of the stream artifact per connection; on
//! `connect` the SDK constructs the type with `Default` and keeps it for
//! every later event of that connection, so its fields are the
//! connection's state. It is dropped after `close` or `disconnect`.
//!
//! A session carries datagrams and any number of streams, each named by a
//! [`StreamId`]. A [`Frame`] remembers the stream it came on, so
//! [`Session::reply`] answers on that stream (a datagram with a datagram):
//! a client may use one long stream, or a fresh stream per request.
//! [`Session::send`] writes to the session's *primary* stream (the first
//! bidirectional stream the client opened); [`Session::open_stream`] opens
//! a stream of the box's own. A box finishes its side of a stream with
//! [`Session::finish`] (or [`Session::reply_and_finish`]) and hears in the
//! `stream_end` hook when the client finishes, resets or stops one.
//! A stream stays open, and counts against the client's stream limit,
//! until both sides are done: reply to a request stream with
//! `reply_and_finish`, or finish it when the client finishes its side.

use std::cell::RefCell;
use toil_abi::status;
use toil_abi::stream::StreamEvent;
pub use toil_abi::stream::{Direction, FrameKind, SendError, StreamEnd, StreamId};

use crate::channel::{ChannelError, ChannelEvent, Position, Since};

/// An inbound frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    kind: FrameKind,
    stream: Option<StreamId>,
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The frame as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes).ok()
    }

    /// Whether it came on a stream or as a datagram.
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The stream it came on; `None` for a datagram.
    pub fn stream(&self) -> Option<StreamId> {
        self.stream
    }
}

/// The connection, as seen from a hook: send frames, close it.
#[derive(Debug)]
pub struct Session {
    id: u64,
    path: String,
    query: String,
}

impl Session {
    /// The host's id of this session (unique per node).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request path the session was opened with (`/echo`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string the session was opened with.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// Sends a reliable, ordered frame on the session's primary stream (the
    /// first bidirectional stream the client opened; frames sent before it
    /// exists are held for it, up to one event's output).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        send(FrameKind::Stream, bytes)
    }

    /// Sends one unreliable datagram.
    pub fn send_datagram(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        send(FrameKind::Datagram, bytes)
    }

    /// Replies the way `to` arrived: on the stream it came on, or as a datagram.
    pub fn reply(&mut self, to: &Frame<'_>, bytes: &[u8]) -> Result<(), SendError> {
        match to.stream {
            Some(stream) => self.write(stream, bytes),
            None => self.send_datagram(bytes),
        }
    }

    /// Replies on the stream `to` came on, then finishes the box's side of
    /// that stream: the answer to a request sent on a stream of its own.
    /// A datagram has no stream: this fails with [`SendError::BadKind`].
    pub fn reply_and_finish(&mut self, to: &Frame<'_>, bytes: &[u8]) -> Result<(), SendError> {
        let stream = to.stream.ok_or(SendError::BadKind)?;
        result(crate::host::stream_write(stream.0, bytes, true))
    }

    /// Writes a frame on `stream`: a client's bidirectional stream, or one
    /// the box opened.
    pub fn write(&mut self, stream: StreamId, bytes: &[u8]) -> Result<(), SendError> {
        result(crate::host::stream_write(stream.0, bytes, false))
    }

    /// Finishes the box's side of `stream` once what was written to it is
    /// out: the client reads to the end, then sees the stream end. Nothing
    /// more can be written to it.
    pub fn finish(&mut self, stream: StreamId) -> Result<(), SendError> {
        result(crate::host::stream_finish(stream.0))
    }

    /// Opens a stream to the client: [`Direction::Uni`] for frames out
    /// only (a push, a file), [`Direction::Bidi`] if the client may write
    /// back (its frames arrive with this stream's id). The client sees it
    /// as an incoming stream once the box writes to it. A session may have
    /// `limits.maxBoxStreams` of the box's streams open at once.
    pub fn open_stream(&mut self, direction: Direction) -> Result<StreamId, SendError> {
        match crate::host::stream_open(direction as u8) {
            id if id > 0 => Ok(StreamId(id as u32)),
            code => Err(SendError::from_code(code).unwrap_or(SendError::Closed)),
        }
    }

    /// Subscribes the box to `topic` of this app's domain, starting at
    /// `since`: [`Since::Now`] (or `None`), [`Since::Oldest`] (the kept
    /// history first), or after a [`Position`] (or `Some(position)`) to
    /// resume. Publications arrive in the `#[channel]` hook. Subscribing
    /// again to a topic restarts it from the new `since`.
    pub fn subscribe(&mut self, topic: &str, since: impl Into<Since>) -> Result<(), ChannelError> {
        crate::channel::subscribe(topic, since.into())
    }

    /// Ends a subscription; returns whether there was one. Nothing more of
    /// `topic` is delivered, even what was already queued.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        crate::channel::unsubscribe(topic)
    }

    /// Publishes to `topic` of this app's domain (see [`crate::channel::publish`]).
    pub fn publish(&mut self, topic: &str, bytes: &[u8]) -> Result<Position, ChannelError> {
        crate::channel::publish(topic, bytes)
    }

    /// Closes the session with an application `code` and a UTF-8 `reason`.
    /// The box receives no further events except `close`.
    pub fn close(&mut self, code: u32, reason: &str) {
        crate::host::close(code, reason);
    }
}

fn send(kind: FrameKind, bytes: &[u8]) -> Result<(), SendError> {
    result(crate::host::send(kind as u8, bytes))
}

fn result(code: i32) -> Result<(), SendError> {
    match code {
        0 => Ok(()),
        code => Err(SendError::from_code(code).unwrap_or(SendError::Closed)),
    }
}

/// A stream handler; implemented by `#[toil::stream]`. Every hook is
/// optional: the default does nothing. `Err` is what a hook's
/// [`HookResult`](crate::HookResult) said went wrong; the SDK reports it and
/// the session goes on.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a #[toil::stream] type",
    label = "listed under `stream` in toil::export!",
    note = "`stream: [..]` lists types whose `impl` carries #[toil::stream(\"name\")]"
)]
pub trait Stream: Default + 'static {
    /// The name the stream is mounted at (`/<NAME>`), which the manifest declares.
    const NAME: &'static str;
    fn on_connect(&mut self, cx: &mut Session) -> Result<(), String> {
        let _ = cx;
        Ok(())
    }
    fn on_message(&mut self, cx: &mut Session, frame: Frame<'_>) -> Result<(), String> {
        let _ = (cx, frame);
        Ok(())
    }
    fn on_close(&mut self, cx: &mut Session, code: u32, reason: &str) -> Result<(), String> {
        let _ = (cx, code, reason);
        Ok(())
    }
    fn on_disconnect(&mut self, cx: &mut Session, reason: &str) -> Result<(), String> {
        let _ = (cx, reason);
        Ok(())
    }
    fn on_channel(&mut self, cx: &mut Session, event: ChannelEvent<'_>) -> Result<(), String> {
        let _ = (cx, event);
        Ok(())
    }
    fn on_stream_end(&mut self, cx: &mut Session, stream: StreamId, end: StreamEnd) -> Result<(), String> {
        let _ = (cx, stream, end);
        Ok(())
    }
}

/// Object-safe view of a resident stream box.
trait ResidentBox {
    fn event(&mut self, cx: &mut Session, ev: &StreamEvent<'_>);
}

impl<T: Stream> ResidentBox for T {
    fn event(&mut self, cx: &mut Session, ev: &StreamEvent<'_>) {
        let (hook, outcome) = match *ev {
            StreamEvent::Connect { .. } => ("connect", self.on_connect(cx)),
            StreamEvent::Message { kind, stream, bytes } => ("message", self.on_message(cx, Frame { kind, stream, bytes })),
            StreamEvent::StreamEnd { stream, end } => ("stream_end", self.on_stream_end(cx, stream, end)),
            StreamEvent::Close { code, reason } => ("close", self.on_close(cx, code, reason)),
            StreamEvent::Disconnect { reason } => ("disconnect", self.on_disconnect(cx, reason)),
            StreamEvent::Channel(ref event) => ("channel", self.on_channel(cx, event.clone())),
        };
        if let Err(e) = outcome {
            crate::host::report_error(&format!("toil: stream {:?}, session {}: the {hook} hook failed: {e}", T::NAME, cx.id));
        }
    }
}

thread_local! {
    // Wasm guests are single-threaded: this is the one box of the instance.
    static RESIDENT: RefCell<Option<(Session, Box<dyn ResidentBox>)>> = const { RefCell::new(None) };
    static OPENING: RefCell<Option<Box<dyn ResidentBox>>> = const { RefCell::new(None) };
}

/// Constructs the resident value of `T`; called by generated code on `connect`.
pub fn open_stream<T: Stream>() -> bool {
    OPENING.with(|o| *o.borrow_mut() = Some(Box::new(T::default())));
    true
}

/// The body of the generated `stream_dispatch` export. `open(name)` must call
/// [`open_stream`] for the stream mounted at `name` and return whether one is.
pub fn stream_dispatch(event: i32, input_len: i32, open: impl FnOnce(&str) -> bool) -> i32 {
    let input = crate::host::read_input(input_len);
    let Ok(ev) = StreamEvent::decode(event, &input) else {
        return status::BAD_INPUT;
    };
    if let StreamEvent::Connect { stream, session, path, query } = ev {
        if !open(stream) {
            return status::NO_HANDLER;
        }
        let boxed = OPENING.with(|o| o.borrow_mut().take()).expect("open_stream was called");
        let cx = Session { id: session, path: path.into(), query: query.into() };
        RESIDENT.with(|r| *r.borrow_mut() = Some((cx, boxed)));
    }
    let Some((mut cx, mut boxed)) = RESIDENT.with(|r| r.borrow_mut().take()) else {
        return status::NO_HANDLER; // an event before connect
    };
    boxed.event(&mut cx, &ev);
    if !matches!(ev, StreamEvent::Close { .. } | StreamEvent::Disconnect { .. }) {
        RESIDENT.with(|r| *r.borrow_mut() = Some((cx, boxed)));
    }
    status::OK
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// Counts frames; `fail` frames make the hook return an error, after
    /// which the session goes on.
    #[derive(Default)]
    struct Counter {
        n: u32,
    }

    #[crate::stream("count")]
    impl Counter {
        #[message]
        fn message(&mut self, cx: &mut Session, frame: Frame<'_>) -> Result<(), String> {
            self.n += 1;
            if frame.text() == Some("fail") {
                return Err(format!("frame {} failed", self.n));
            }
            cx.reply(&frame, format!("{}:{}", self.n, frame.text().unwrap()).as_bytes()).map_err(|e| e.to_string())
        }

        /// A hook may leave out `cx`, and return `()`.
        #[close]
        fn close(&mut self, code: u32, _reason: &str) {
            assert_eq!((code, self.n), (7, 4));
        }

        /// Mirrors the client: a stream it finished is finished back.
        #[stream_end]
        fn stream_end(&mut self, cx: &mut Session, stream: StreamId, end: StreamEnd) -> Result<(), SendError> {
            if end == StreamEnd::Finished {
                cx.finish(stream)?;
            }
            Ok(())
        }
    }

    crate::export! { stream: Counter }

    fn dispatch(ev: StreamEvent<'_>) -> i32 {
        let (code, input) = ev.encode();
        let n = crate::host::set_input(input);
        stream_dispatch(code, n, |name| name == Counter::NAME && open_stream::<Counter>())
    }

    #[test]
    fn state_persists_until_close() {
        assert_eq!(dispatch(StreamEvent::Connect { stream: "nope", session: 1, path: "/nope", query: "" }), status::NO_HANDLER);
        assert_eq!(dispatch(StreamEvent::Connect { stream: "count", session: 1, path: "/count", query: "" }), status::OK);
        for _ in 0..3 {
            assert_eq!(dispatch(StreamEvent::Message { kind: FrameKind::Stream, stream: Some(StreamId(1)), bytes: b"x" }), status::OK);
        }
        assert!(crate::host::take_errors().is_empty());
        assert_eq!(dispatch(StreamEvent::Message { kind: FrameKind::Stream, stream: Some(StreamId(1)), bytes: b"fail" }), status::OK);
        assert_eq!(crate::host::take_errors(), ["toil: stream \"count\", session 1: the message hook failed: frame 4 failed"]);
        use crate::host::Sent;
        let replies = [Sent::Write(1, b"1:x".to_vec()), Sent::Write(1, b"2:x".to_vec()), Sent::Write(1, b"3:x".to_vec())];
        assert_eq!(crate::host::take_sent(), replies, "each reply on the frame's own stream");
        assert_eq!(dispatch(StreamEvent::StreamEnd { stream: StreamId(1), end: StreamEnd::Finished }), status::OK);
        assert_eq!(dispatch(StreamEvent::StreamEnd { stream: StreamId(2), end: StreamEnd::Reset(3) }), status::OK);
        assert_eq!(crate::host::take_sent(), [Sent::Finish(1)]);
        assert_eq!(dispatch(StreamEvent::Close { code: 7, reason: "" }), status::OK);
        assert_eq!(dispatch(StreamEvent::Message { kind: FrameKind::Stream, stream: Some(StreamId(1)), bytes: b"x" }), status::NO_HANDLER);
    }
}
