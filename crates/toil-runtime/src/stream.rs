//! The L2/L3 stream tier: one resident box per connection.
//!
//! A [`StreamApp`] is a domain's compiled stream artifact. [`StreamApp::open`]
//! instantiates it once for a connection and delivers `connect`; the
//! returned [`StreamBox`] then receives every later event of that connection
//! in order (`message`, `channel`) and ends with exactly one of `close` or
//! `disconnect`, after which it is dropped. The guest's memory, and so its
//! state, lives as long as the box.
//!
//! A box with no event for `limits.hibernateAfterMs` may hibernate
//! ([`StreamBox::hibernate`]): it keeps a snapshot of what differs from a
//! fresh instance and gives its instance back; the next event wakes it
//! first. See [`hibernate`](crate::hibernate) for what that takes.
//!
//! What the guest sends during an event is queued in the box's [`Outbox`],
//! bounded in bytes per event; the network layer drains it after each event
//! and writes the frames out before it delivers the next one. A guest cannot
//! make the host buffer more than one event's worth of output, and a client
//! that stops reading stalls its own session, not the node.

use std::sync::Arc;
use std::time::Instant;

use toil_abi::channel::ChannelEvent;
use toil_abi::stream::{Direction, FrameKind, StreamEnd, StreamEvent, StreamId};
use toil_abi::{exports, status, Tier};
use toil_channels::{Deliveries, Delivery};
use toil_metrics::{Counter, Gauge, Registry};
use wasmtime::{Store, TypedFunc, Val};

use crate::artifact::LoadError;
use crate::call::{Call, Site};
use crate::engine::{bounded, Loaded, Runtime};
use crate::fault::GuestFault;
use crate::hibernate::{Plan, Refusal, Snapshot, MAX_MEMORY_BYTES};
use crate::host::HostState;
use crate::limits::Limits;
use crate::metrics::{GuestMetrics, LiveGuard};
use crate::outbox::{Out, Outbox};

/// A domain's loaded stream artifact.
pub struct StreamApp {
    runtime: Runtime,
    loaded: Loaded,
    dispatch: wasmtime::ModuleExport,
    metrics: GuestMetrics,
    /// How its boxes hibernate, or why they cannot.
    hibernation: Result<Hibernation, Refusal>,
    /// Boxes hibernating now, and wakes so far.
    hibernating: Arc<Gauge>,
    wakes: Arc<Counter>,
}

/// A hibernatable module's plan, with its exports looked up once.
struct Hibernation {
    plan: Plan,
    memory: wasmtime::ModuleExport,
    globals: Vec<wasmtime::ModuleExport>,
}

impl Hibernation {
    /// What a snapshot holds of `store`'s instance: its memory and its
    /// mutable globals, in the plan's order.
    fn state_of(&self, store: &mut Store<HostState>) -> Option<(wasmtime::Memory, Vec<wasmtime::Global>)> {
        let instance = store.data().instance()?;
        let memory = instance.get_module_export(&mut *store, &self.memory)?.into_memory()?;
        let globals = self.globals.iter().map(|export| instance.get_module_export(&mut *store, export)?.into_global()).collect::<Option<_>>()?;
        Some((memory, globals))
    }
}

impl StreamApp {
    /// Validates, compiles and links `bytes` as `domain`'s stream artifact.
    pub fn load(runtime: &Runtime, registry: &Registry, domain: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        // Without hibernation the module is compiled as it came: trap
        // messages then name the offsets of the developer's own file.
        let mut plan = Err(Refusal::from("hibernation is off (limits.hibernateAfterMs is 0)"));
        let hibernates = runtime.limits().hibernate_after.is_some();
        let loaded = runtime.load_with(domain, Tier::Stream, bytes, |bytes| {
            if !hibernates {
                return None;
            }
            let prepared = Plan::of(bytes).and_then(|p| Ok((p.prepare(bytes)?, p)));
            let (prepared, p) = match prepared {
                Ok((prepared, p)) => (Some(prepared), Ok(p)),
                Err(why) => (None, Err(why)),
            };
            plan = p;
            prepared
        })?;
        let hibernation = plan.and_then(|plan| {
            let export = |name: &str| loaded.export_index(name).ok_or_else(|| format!("the prepared module lacks the export {name:?}"));
            let memory = export(plan.memory_export())?;
            let globals = plan.globals.iter().map(|&(index, _)| export(&Plan::global_export(index))).collect::<Result<_, _>>()?;
            Ok(Hibernation { plan, memory, globals })
        });
        if let (Err(why), true) = (&hibernation, hibernates) {
            tracing::info!(domain, "this domain's idle stream boxes stay resident: they cannot hibernate, as {why}");
        }
        let dispatch = loaded.export_index(exports::STREAM_DISPATCH).expect("inspect checked the export");
        let l = [("domain", domain)];
        Ok(StreamApp {
            runtime: runtime.clone(),
            dispatch,
            metrics: GuestMetrics::new(registry, domain, Tier::Stream),
            loaded,
            hibernation,
            hibernating: registry.gauge(
                "toil_stream_hibernating_boxes",
                "Stream boxes hibernating now (no instance, a snapshot of their state).",
                &l,
            ),
            wakes: registry.counter("toil_stream_box_wakes_total", "Hibernating stream boxes woken by an event.", &l),
        })
    }

    /// Why this app's boxes cannot hibernate, if they cannot.
    pub fn hibernation_refused(&self) -> Option<&str> {
        self.hibernation.as_ref().err().map(String::as_str)
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
    /// The session's share of the node's instances is held by whoever
    /// admitted it ([`Runtime::instance_budget`]), not by the box.
    pub async fn open(self: &Arc<Self>, name: &str, session: u64, path: &str, query: &str) -> Result<StreamBox, GuestFault> {
        let mut store = self.runtime.store(&self.loaded.id);
        store.data_mut().stream = Some(Outbox::new(self.runtime.limits()));
        let deliveries = self.runtime.channels().map(|channels| {
            let (inbox, deliveries) = channels.inbox(self.domain());
            store.data_mut().inbox = Some(inbox);
            deliveries
        });
        let live = self.metrics.live_instance();
        let call = Call::begin(&mut store, Vec::new());
        let started = bounded(call.until, self.instantiate(&call, &mut store)).await;
        let site = Site::StreamStart { stream: name, session };
        let dispatch = call.end(&mut store, started.map(|()| (status::OK, ())), &site, &self.metrics, |store, ()| self.dispatch_func(store))?;
        let residence = Residence::Awake { store, dispatch: Some(dispatch), _live: live };
        let mut boxed = StreamBox { residence, app: self.clone(), name: name.into(), session, deliveries };
        boxed.deliver(StreamEvent::Connect { stream: name, session, path, query }).await?;
        Ok(boxed)
    }

    async fn instantiate(&self, call: &Call, store: &mut Store<HostState>) -> wasmtime::Result<()> {
        self.loaded.instantiate(call, &mut *store).await.map(drop)
    }

    /// A fresh instance in `store` given the state of `snapshot`: no
    /// `_initialize` (what it did is in the memory), the memory grown to
    /// its size, the blocks written back, the globals set. It runs in the
    /// waking event's call (see `Loaded::instantiate`).
    async fn revive(&self, call: &Call, store: &mut Store<HostState>, snapshot: &Snapshot<Val>) -> wasmtime::Result<()> {
        let h = self.hibernation.as_ref().map_err(|why| wasmtime::format_err!("cannot hibernate: {why}"))?;
        self.loaded.instantiate_bare(call, &mut *store).await?;
        let (memory, globals) = h.state_of(store).ok_or_else(|| wasmtime::format_err!("the prepared module lacks a hibernation export"))?;
        let grow = snapshot.memory_bytes.saturating_sub(memory.data_size(&*store)) / WASM_PAGE;
        if grow > 0 {
            memory.grow(&mut *store, grow as u64)?;
        }
        snapshot.restore(memory.data_mut(&mut *store));
        for (global, value) in globals.iter().zip(snapshot.globals.iter()) {
            global.set(&mut *store, *value)?;
        }
        Ok(())
    }

    fn dispatch_func(&self, store: &mut Store<HostState>) -> Result<TypedFunc<(i32, i32), i32>, GuestFault> {
        let instance = store.data().instance().ok_or_else(|| GuestFault::Abi("no instance".into()))?;
        let f = instance
            .get_module_export(&mut *store, &self.dispatch)
            .and_then(|e| e.into_func())
            .ok_or_else(|| GuestFault::Abi("stream_dispatch export vanished".into()))?;
        f.typed(&*store).map_err(|e| GuestFault::Abi(format!("stream_dispatch: {e}")))
    }
}

const WASM_PAGE: usize = 64 << 10;

/// One connection's resident instance. Events are delivered one at a time,
/// in order; after a fault the box must not be used again (the edge closes
/// the session).
pub struct StreamBox {
    residence: Residence,
    app: Arc<StreamApp>,
    name: String,
    session: u64,
    /// The box's channel deliveries, until the session driver takes them.
    deliveries: Option<Deliveries>,
}

/// Where a box's state is: in an instance, or in a snapshot.
enum Residence {
    Awake {
        store: Store<HostState>,
        /// `None` after a failed wake: the box is lost.
        dispatch: Option<TypedFunc<(i32, i32), i32>>,
        _live: LiveGuard,
    },
    Hibernating {
        state: Box<HostState>,
        snapshot: Snapshot<Val>,
        _counted: LiveGuard,
    },
    /// Only while it changes from one to the other.
    Moving,
}

impl StreamBox {
    /// Sets the largest datagram the connection can carry now (the path MTU
    /// changes); larger datagram sends fail with `TooLarge`.
    pub fn set_max_datagram(&mut self, bytes: usize) {
        if let Some(outbox) = self.state().stream.as_mut() {
            outbox.max_datagram = bytes;
        }
    }

    fn state(&mut self) -> &mut HostState {
        match &mut self.residence {
            Residence::Awake { store, .. } => store.data_mut(),
            Residence::Hibernating { state, .. } => state,
            Residence::Moving => unreachable!("a box is never seen while it moves"),
        }
    }

    /// Whether the box is hibernating (holds no instance).
    pub fn is_hibernating(&self) -> bool {
        matches!(self.residence, Residence::Hibernating { .. })
    }

    /// Gives the box's instance back, keeping a snapshot of its state, if
    /// its app can hibernate, it is awake and its memory is at most
    /// [`MAX_MEMORY_BYTES`]. Returns the snapshot's size in bytes, if it
    /// hibernated; `None` means it never will (memory does not shrink).
    /// The next event wakes it.
    pub fn hibernate(&mut self) -> Option<usize> {
        let h = self.app.hibernation.as_ref().ok()?;
        let Residence::Awake { store, dispatch: Some(_), .. } = &mut self.residence else { return None };
        let (memory, globals) = h.state_of(store)?;
        if memory.data_size(&*store) > MAX_MEMORY_BYTES {
            return None;
        }
        let globals = globals.iter().map(|g| g.get(&mut *store)).collect();
        let snapshot = Snapshot::take(memory.data(&*store), &h.plan.image, globals);
        let size = snapshot.heap_bytes();
        let Residence::Awake { store, .. } = std::mem::replace(&mut self.residence, Residence::Moving) else { unreachable!() };
        let mut state = store.into_data();
        state.forget_instance();
        self.residence = Residence::Hibernating { state: Box::new(state), snapshot, _counted: LiveGuard::new(&self.app.hibernating) };
        Some(size)
    }

    /// Instantiates a hibernating box again, under the deadline of the
    /// event that woke it, which runs from `started`.
    async fn wake(&mut self, started: Instant) -> Result<(), GuestFault> {
        let Residence::Hibernating { state, snapshot, .. } = std::mem::replace(&mut self.residence, Residence::Moving) else {
            unreachable!("only a hibernating box wakes")
        };
        let app = self.app.clone();
        let mut store = app.runtime.store_with(*state);
        let live = app.metrics.live_instance();
        let call = Call::begin_at(&mut store, Vec::new(), started);
        let woke = bounded(call.until, app.revive(&call, &mut store, &snapshot)).await;
        let site = Site::StreamWake { stream: &self.name, session: self.session };
        let dispatch = call.end(&mut store, woke.map(|()| (status::OK, ())), &site, &app.metrics, |store, ()| app.dispatch_func(store));
        self.residence = Residence::Awake { store, dispatch: dispatch.as_ref().ok().cloned(), _live: live };
        dispatch.map(|_| app.wakes.inc())
    }

    /// Delivers an inbound frame that came on `stream` (`None`: a datagram).
    pub async fn message(&mut self, stream: Option<StreamId>, bytes: &[u8]) -> Result<(), GuestFault> {
        let kind = if stream.is_some() { FrameKind::Stream } else { FrameKind::Datagram };
        self.deliver(StreamEvent::Message { kind, stream, bytes }).await
    }

    /// The client opened a stream: the id its frames are delivered with
    /// (`None`: the session has used every id; refuse the stream).
    pub fn client_opened(&mut self, direction: Direction) -> Option<StreamId> {
        self.outbox().client_opened(direction)
    }

    /// The client finished or reset its side of `stream`, or stopped
    /// reading the box's: the box hears it in `stream_end`, once per side.
    pub async fn stream_end(&mut self, stream: StreamId, end: StreamEnd) -> Result<(), GuestFault> {
        if !self.outbox().client_ended(stream, end) {
            return Ok(());
        }
        self.deliver(StreamEvent::StreamEnd { stream, end }).await
    }

    /// The box's channel deliveries, for its session driver to wait on and
    /// pass to [`StreamBox::channel`]; `None` on a runtime without channels
    /// or once taken.
    pub fn take_deliveries(&mut self) -> Option<Deliveries> {
        self.deliveries.take()
    }

    /// Delivers a channel message or resync to the `channel` hook.
    pub async fn channel(&mut self, delivery: &Delivery) -> Result<(), GuestFault> {
        let event = match delivery {
            Delivery::Message { topic, position, bytes, .. } => {
                ChannelEvent::Message { topic, offset: position.offset, epoch: &position.epoch, bytes }
            }
            Delivery::Resync { topic, position, reason } => {
                ChannelEvent::Resync { topic, offset: position.offset, epoch: &position.epoch, reason: reason.as_str() }
            }
        };
        self.deliver(StreamEvent::Channel(event)).await
    }

    /// Delivers `close` (graceful end) and drops the box.
    pub async fn close(mut self, code: u32, reason: &str) -> Result<(), GuestFault> {
        self.deliver(StreamEvent::Close { code, reason }).await
    }

    /// Delivers `disconnect` (the transport was lost) and drops the box.
    pub async fn disconnect(mut self, reason: &str) -> Result<(), GuestFault> {
        self.deliver(StreamEvent::Disconnect { reason }).await
    }

    /// What the guest queued since the last call (frames, opens,
    /// finishes), in order.
    pub fn take_out(&mut self) -> Vec<Out> {
        self.outbox().take()
    }

    /// The code and reason the guest asked to close with, if it did.
    pub fn close_requested(&mut self) -> Option<(u32, String)> {
        self.outbox().close_requested().cloned()
    }

    fn outbox(&mut self) -> &mut Outbox {
        self.state().stream.as_mut().expect("a stream box always has an outbox")
    }

    async fn deliver(&mut self, event: StreamEvent<'_>) -> Result<(), GuestFault> {
        let started = Instant::now();
        if self.is_hibernating() {
            Box::pin(self.wake(started)).await?;
        }
        let Residence::Awake { store, dispatch, .. } = &mut self.residence else { unreachable!("awake after a wake") };
        let dispatch = dispatch.as_ref().ok_or_else(|| GuestFault::Abi("the box was lost when it failed to wake".into()))?;
        let (code, input) = event.encode();
        let input_len = input.len() as i32;
        let call = Call::begin_at(store, input, started);
        let result = bounded(call.until, dispatch.call_async(&mut *store, (code, input_len))).await;
        let site = Site::StreamEvent { stream: &self.name, session: self.session, event: event_name(code) };
        call.end(store, result.map(|rc| (rc, ())), &site, &self.app.metrics, |_, ()| Ok(()))
    }
}

fn event_name(code: i32) -> &'static str {
    match code {
        toil_abi::stream::CONNECT => "connect",
        toil_abi::stream::MESSAGE => "message",
        toil_abi::stream::CLOSE => "close",
        toil_abi::stream::DISCONNECT => "disconnect",
        toil_abi::stream::STREAM_END => "stream_end",
        _ => "channel",
    }
}
