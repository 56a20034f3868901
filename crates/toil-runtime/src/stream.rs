//! The L2/L3 stream tier: one resident box per connection.
//!
//! A [`StreamApp`] is a domain's compiled stream artifact. [`StreamApp::open`]
//! instantiates it once for a connection and delivers `connect`; the
//! returned [`StreamBox`] then receives every later event of that connection
//! in order (`message`, `channel`) and ends with exactly one of `close` or
//! `disconnect`, after which it is dropped. The guest's memory, and so its
//! state, lives as long as the box.
//!
//! What the guest sends during an event is queued in the box's [`Outbox`],
//! bounded in bytes per event; the network layer drains it after each event
//! and writes the frames out before it delivers the next one. A guest cannot
//! make the host buffer more than one event's worth of output, and a client
//! that stops reading stalls its own session, not the node.

use std::sync::Arc;
use std::time::Instant;

use toil_abi::stream::{FrameKind, SendError, StreamEvent};
use toil_abi::{exports, status, Tier};
use toil_metrics::Registry;
use wasmtime::{Store, TypedFunc};

use crate::artifact::LoadError;
use crate::engine::{bounded, Loaded, Runtime};
use crate::host::{GuestFault, HostState, Limits};
use crate::metrics::{GuestMetrics, LiveGuard};

/// A frame the guest sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutFrame {
    pub kind: FrameKind,
    pub bytes: Vec<u8>,
}

/// The frames a box sent during one event, and whether it asked to close.
/// Bounded: `stream_send` fails with [`SendError::QueueFull`] past
/// [`Limits::max_outbound_bytes_per_event`], with [`SendError::TooLarge`]
/// past the frame limit, and with [`SendError::Closed`] after `stream_close`.
#[derive(Debug)]
pub struct Outbox {
    frames: Vec<OutFrame>,
    queued_bytes: usize,
    max_queued_bytes: usize,
    max_frame: usize,
    max_datagram: usize,
    close: Option<(u32, String)>,
}

impl Outbox {
    pub fn new(limits: &Limits) -> Self {
        Outbox {
            frames: Vec::new(),
            queued_bytes: 0,
            max_queued_bytes: limits.max_outbound_bytes_per_event,
            max_frame: limits.max_frame_bytes,
            max_datagram: limits.max_frame_bytes,
            close: None,
        }
    }

    /// Queues a frame (the `stream_send` host call).
    pub fn send(&mut self, kind: FrameKind, bytes: &[u8]) -> Result<(), SendError> {
        if self.close.is_some() {
            return Err(SendError::Closed);
        }
        let max = match kind {
            FrameKind::Stream => self.max_frame,
            FrameKind::Datagram => self.max_datagram.min(self.max_frame),
        };
        if bytes.len() > max {
            return Err(SendError::TooLarge);
        }
        if self.queued_bytes + bytes.len() > self.max_queued_bytes {
            return Err(SendError::QueueFull);
        }
        self.queued_bytes += bytes.len();
        self.frames.push(OutFrame { kind, bytes: bytes.to_vec() });
        Ok(())
    }

    /// Records the guest's request to close (the `stream_close` host call);
    /// the first request wins.
    pub fn close(&mut self, code: u32, reason: String) {
        self.close.get_or_insert((code, reason));
    }

    /// Takes the queued frames, emptying the queue for the next event.
    pub fn take_frames(&mut self) -> Vec<OutFrame> {
        self.queued_bytes = 0;
        std::mem::take(&mut self.frames)
    }

    /// The code and reason the guest closed with, if it did.
    pub fn close_requested(&self) -> Option<&(u32, String)> {
        self.close.as_ref()
    }
}

/// A domain's loaded stream artifact.
pub struct StreamApp {
    runtime: Runtime,
    loaded: Loaded,
    dispatch: wasmtime::ModuleExport,
    metrics: GuestMetrics,
}

impl StreamApp {
    /// Validates, compiles and links `bytes` as `domain`'s stream artifact.
    pub fn load(runtime: &Runtime, registry: &Registry, domain: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        let loaded = runtime.load(domain, Tier::Stream, bytes)?;
        let dispatch = loaded.export_index(exports::STREAM_DISPATCH).expect("inspect checked the export");
        Ok(StreamApp { runtime: runtime.clone(), dispatch, metrics: GuestMetrics::new(registry, domain, Tier::Stream), loaded })
    }

    pub fn domain(&self) -> &str {
        &self.loaded.id.domain
    }

    /// The limits every event of this app's boxes runs under.
    pub fn limits(&self) -> &Limits {
        self.runtime.limits()
    }

    /// The stream names the manifest declares.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.loaded.info.manifest.streams.iter().map(String::as_str)
    }

    /// Whether the manifest declares a stream called `name`.
    pub fn has_stream(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// Creates the resident box for one connection and delivers `connect`.
    /// Frames the guest sent from its connect hook are in the box's outbox.
    pub async fn open(self: &Arc<Self>, name: &str, session: u64, path: &str, query: &str) -> Result<StreamBox, GuestFault> {
        let mut store = self.runtime.store(&self.loaded.id);
        store.data_mut().stream = Some(Outbox::new(self.runtime.limits()));
        let live = self.metrics.live_instance();
        store.data_mut().begin_call(Vec::new());
        let until = store.data().call_deadline();
        let started = bounded(until, self.instantiate(&mut store)).await;
        let dispatch = match store.data_mut().end_call(started.map(|()| status::OK)) {
            Ok(_) => self.dispatch_func(&mut store),
            Err(fault) => Err(fault),
        };
        let dispatch = match dispatch {
            Ok(f) => f,
            Err(fault) => {
                self.metrics.fault(&fault);
                tracing::warn!(domain = %self.domain(), tier = "stream", stream = name, session,
                    fault = fault.kind(), "stream box failed to start: {fault}");
                return Err(fault);
            }
        };
        let mut boxed = StreamBox { store, dispatch, app: self.clone(), name: name.into(), session, _live: live };
        boxed.deliver(StreamEvent::Connect { stream: name, session, path, query }).await?;
        Ok(boxed)
    }

    async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<()> {
        let instance = self.loaded.instantiate(&mut *store).await?;
        store.data_mut().instance = Some(instance);
        Ok(())
    }

    fn dispatch_func(&self, store: &mut Store<HostState>) -> Result<TypedFunc<(i32, i32), i32>, GuestFault> {
        let instance = store.data().instance.ok_or_else(|| GuestFault::Abi("no instance".into()))?;
        let f = instance
            .get_module_export(&mut *store, &self.dispatch)
            .and_then(|e| e.into_func())
            .ok_or_else(|| GuestFault::Abi("stream_dispatch export vanished".into()))?;
        f.typed(&*store).map_err(|e| GuestFault::Abi(format!("stream_dispatch: {e}")))
    }
}

/// One connection's resident instance. Events are delivered one at a time,
/// in order; after a fault the box must not be used again (the edge closes
/// the session).
pub struct StreamBox {
    store: Store<HostState>,
    dispatch: TypedFunc<(i32, i32), i32>,
    app: Arc<StreamApp>,
    name: String,
    session: u64,
    _live: LiveGuard,
}

impl StreamBox {
    /// Sets the largest datagram the connection can carry now (the path MTU
    /// changes); larger datagram sends fail with `TooLarge`.
    pub fn set_max_datagram(&mut self, bytes: usize) {
        if let Some(outbox) = self.store.data_mut().stream.as_mut() {
            outbox.max_datagram = bytes;
        }
    }

    /// Delivers an inbound frame.
    pub async fn message(&mut self, kind: FrameKind, bytes: &[u8]) -> Result<(), GuestFault> {
        self.deliver(StreamEvent::Message { kind, bytes }).await
    }

    /// Delivers a channel message.
    pub async fn channel(&mut self, channel: &str, bytes: &[u8]) -> Result<(), GuestFault> {
        self.deliver(StreamEvent::Channel { channel, bytes }).await
    }

    /// Delivers `close` (graceful end) and drops the box.
    pub async fn close(mut self, code: u32, reason: &str) -> Result<(), GuestFault> {
        self.deliver(StreamEvent::Close { code, reason }).await
    }

    /// Delivers `disconnect` (the transport was lost) and drops the box.
    pub async fn disconnect(mut self, reason: &str) -> Result<(), GuestFault> {
        self.deliver(StreamEvent::Disconnect { reason }).await
    }

    /// The frames the guest queued since the last call, in order.
    pub fn take_frames(&mut self) -> Vec<OutFrame> {
        self.outbox().take_frames()
    }

    /// The code and reason the guest asked to close with, if it did.
    pub fn close_requested(&mut self) -> Option<(u32, String)> {
        self.outbox().close_requested().cloned()
    }

    fn outbox(&mut self) -> &mut Outbox {
        self.store.data_mut().stream.as_mut().expect("a stream box always has an outbox")
    }

    async fn deliver(&mut self, event: StreamEvent<'_>) -> Result<(), GuestFault> {
        let (code, input) = event.encode();
        let input_len = input.len() as i32;
        let started = Instant::now();
        self.store.data_mut().begin_call(input);
        let until = self.store.data().call_deadline();
        let result = bounded(until, self.dispatch.call_async(&mut self.store, (code, input_len))).await;
        let result = self.store.data_mut().end_call(result).and_then(|rc| match rc {
            status::OK => Ok(()),
            status::NO_HANDLER => Err(GuestFault::Abi(format!("the artifact has no stream named {:?}", self.name))),
            status::BAD_INPUT => Err(GuestFault::Abi("guest could not decode the event (SDK/host ABI mismatch)".into())),
            other => Err(GuestFault::Abi(format!("stream_dispatch returned unknown status {other}"))),
        });
        self.app.metrics.duration.observe(started.elapsed());
        if let Err(fault) = &result {
            self.app.metrics.fault(fault);
            tracing::warn!(domain = %self.app.domain(), tier = "stream", stream = %self.name, session = self.session,
                event = event_name(code), fault = fault.kind(), "stream box failed: {fault}");
        }
        result
    }
}

fn event_name(code: i32) -> &'static str {
    match code {
        toil_abi::stream::CONNECT => "connect",
        toil_abi::stream::MESSAGE => "message",
        toil_abi::stream::CLOSE => "close",
        toil_abi::stream::DISCONNECT => "disconnect",
        _ => "channel",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_is_bounded_per_event() {
        let limits = Limits { max_frame_bytes: 8, max_outbound_bytes_per_event: 12, ..Limits::default() };
        let mut out = Outbox::new(&limits);
        assert_eq!(out.send(FrameKind::Stream, &[0; 9]), Err(SendError::TooLarge));
        assert_eq!(out.send(FrameKind::Stream, &[1; 8]), Ok(()));
        assert_eq!(out.send(FrameKind::Datagram, &[2; 5]), Err(SendError::QueueFull));
        out.max_datagram = 3;
        assert_eq!(out.send(FrameKind::Datagram, &[2; 4]), Err(SendError::TooLarge));
        assert_eq!(out.send(FrameKind::Datagram, &[2; 3]), Ok(()));
        let frames = out.take_frames();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1], OutFrame { kind: FrameKind::Datagram, bytes: vec![2; 3] });
        // A new event starts with an empty budget.
        assert_eq!(out.send(FrameKind::Stream, &[1; 8]), Ok(()));
        out.close(4000, "bye".into());
        out.close(1, "second".into());
        assert_eq!(out.send(FrameKind::Stream, b"x"), Err(SendError::Closed));
        assert_eq!(out.close_requested(), Some(&(4000, "bye".to_string())));
    }
}
