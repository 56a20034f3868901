//! L2/L3 stream tier: one resident box per WebTransport connection.
//!
//! `#[toil::stream("name")]` implements [`Stream`] for a `Default` type. The
//! host creates one instance of the stream artifact per connection; on
//! `connect` the SDK constructs the type with `Default` and keeps it for
//! every later event of that connection, so its fields are the
//! connection's state. It is dropped after `close` or `disconnect`.

use std::cell::RefCell;
use toil_abi::status;
use toil_abi::stream::StreamEvent;
pub use toil_abi::stream::{FrameKind, SendError};

use crate::channel::{ChannelError, ChannelEvent, Position, Since};

/// An inbound frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    kind: FrameKind,
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

    /// Whether it came on a bidirectional stream or as a datagram.
    pub fn kind(&self) -> FrameKind {
        self.kind
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

    /// Sends a reliable, ordered frame on the session's bidirectional stream.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        send(FrameKind::Stream, bytes)
    }

    /// Sends one unreliable datagram.
    pub fn send_datagram(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        send(FrameKind::Datagram, bytes)
    }

    /// Replies the way `to` arrived (stream frame or datagram).
    pub fn reply(&mut self, to: &Frame<'_>, bytes: &[u8]) -> Result<(), SendError> {
        send(to.kind, bytes)
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
    match crate::host::send(kind as u8, bytes) {
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
}

/// Object-safe view of a resident stream box.
trait ResidentBox {
    fn event(&mut self, cx: &mut Session, ev: &StreamEvent<'_>);
}

impl<T: Stream> ResidentBox for T {
    fn event(&mut self, cx: &mut Session, ev: &StreamEvent<'_>) {
        let (hook, outcome) = match *ev {
            StreamEvent::Connect { .. } => ("connect", self.on_connect(cx)),
            StreamEvent::Message { kind, bytes } => ("message", self.on_message(cx, Frame { kind, bytes })),
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
            assert_eq!(dispatch(StreamEvent::Message { kind: FrameKind::Stream, bytes: b"x" }), status::OK);
        }
        assert!(crate::host::take_errors().is_empty());
        assert_eq!(dispatch(StreamEvent::Message { kind: FrameKind::Stream, bytes: b"fail" }), status::OK);
        assert_eq!(crate::host::take_errors(), ["toil: stream \"count\", session 1: the message hook failed: frame 4 failed"]);
        assert_eq!(dispatch(StreamEvent::Close { code: 7, reason: "" }), status::OK);
        assert_eq!(dispatch(StreamEvent::Message { kind: FrameKind::Stream, bytes: b"x" }), status::NO_HANDLER);
    }
}
