//! The envelope of every guest call, whatever the tier:
//!
//! 1. [`Call::begin`]: the input goes into the instance's state and the
//!    call's deadline starts;
//! 2. the caller runs the entry point under [`bounded`](crate::engine::bounded)
//!    until [`Call::until`];
//! 3. [`Call::end`]: the guest log is flushed, a wasmtime error becomes a
//!    [`GuestFault`], the entry point's status is checked, the reply read,
//!    the duration observed, and a fault counted and logged with what the
//!    [`Site`] knows of the call.
//!
//! So the status codes, the fault metrics and the log lines of the three
//! tiers are written once, here.

use std::time::Instant;

use toil_abi::status;
use wasmtime::Store;

use crate::epoch::Running;
use crate::fault::GuestFault;
use crate::host::HostState;
use crate::metrics::GuestMetrics;

/// Where a call enters the guest, with what the log says about it.
pub(crate) enum Site<'a> {
    /// `handle` for one request (L1).
    Request { method: &'a str, path: &'a str, route: &'a str },
    /// Instantiating a stream box (L2/L3), before its `connect`.
    StreamStart { stream: &'a str, session: u64 },
    /// Instantiating a hibernating stream box again, before its next event.
    StreamWake { stream: &'a str, session: u64 },
    /// `stream_dispatch` with one event.
    StreamEvent { stream: &'a str, session: u64, event: &'static str },
    /// `daemon_start` (L4).
    DaemonStart,
    /// `scheduled_tick` of one task.
    DaemonTick { task: Option<&'a str> },
}

impl Site<'_> {
    /// The entry point's status as a result.
    fn check(&self, rc: i32) -> Result<(), GuestFault> {
        if rc == status::OK {
            return Ok(());
        }
        let what = match self {
            Site::Request { .. } => match rc {
                status::NO_HANDLER => "guest has no handler for a route its manifest declares".to_string(),
                status::BAD_INPUT => "guest could not decode the request (SDK/host ABI mismatch)".to_string(),
                other => format!("handle returned unknown status {other}"),
            },
            Site::StreamStart { stream, .. } | Site::StreamWake { stream, .. } | Site::StreamEvent { stream, .. } => match rc {
                status::NO_HANDLER => format!("the artifact has no stream named {stream:?}"),
                status::BAD_INPUT => "guest could not decode the event (SDK/host ABI mismatch)".to_string(),
                other => format!("stream_dispatch returned unknown status {other}"),
            },
            Site::DaemonStart | Site::DaemonTick { .. } => {
                let call = if matches!(self, Site::DaemonStart) { "daemon_start" } else { "scheduled_tick" };
                match rc {
                    status::NO_HANDLER => format!("{call}: the guest has no such task"),
                    status::BAD_INPUT => format!("{call}: the guest could not decode its input (SDK/host ABI mismatch)"),
                    other => format!("{call} returned unknown status {other}"),
                }
            }
        };
        Err(GuestFault::Abi(what))
    }

    /// Counts and logs a failed call, under the tier's module as the log
    /// target (what `TOIL_LOG` filters by). A request that found no free
    /// instance is not the guest's failure: the request tier refuses it as
    /// busy (counted there).
    pub(crate) fn failed(&self, metrics: &GuestMetrics, domain: &str, fault: &GuestFault) {
        let kind = fault.kind();
        match *self {
            Site::Request { .. } if *fault == GuestFault::NodeFull => return,
            Site::Request { method, path, route } => {
                tracing::warn!(target: "toil_runtime::request", domain, tier = "request", method, path, route, fault = kind, "request failed: {fault}")
            }
            Site::StreamStart { stream, session } => {
                tracing::warn!(target: "toil_runtime::stream", domain, tier = "stream", stream, session, fault = kind, "stream box failed to start: {fault}")
            }
            Site::StreamWake { stream, session } => {
                tracing::warn!(target: "toil_runtime::stream", domain, tier = "stream", stream, session, fault = kind, "stream box failed to wake from hibernation: {fault}")
            }
            Site::StreamEvent { stream, session, event } => {
                tracing::warn!(target: "toil_runtime::stream", domain, tier = "stream", stream, session, event, fault = kind, "stream box failed: {fault}")
            }
            Site::DaemonStart => {
                tracing::warn!(target: "toil_runtime::daemon", domain, tier = "daemon", call = "daemon_start", fault = kind, "daemon call failed: {fault}")
            }
            Site::DaemonTick { task } => {
                tracing::warn!(target: "toil_runtime::daemon", domain, tier = "daemon", call = "scheduled_tick", task, fault = kind, "daemon call failed: {fault}")
            }
        }
        metrics.fault(fault);
    }
}

/// A guest call under way (see the module doc).
pub(crate) struct Call {
    started: Instant,
    /// When the call must have ended, time blocked in host calls included.
    pub until: Instant,
    /// Keeps the epoch moving while the call runs.
    _running: Running,
}

impl Call {
    /// Starts a call that reads `input`.
    pub fn begin(store: &mut Store<HostState>, input: Vec<u8>) -> Call {
        Call::begin_at(store, input, Instant::now())
    }

    /// [`Call::begin`] for a call whose deadline runs from `started` (an
    /// event whose box had to wake first: both share one deadline).
    pub fn begin_at(store: &mut Store<HostState>, input: Vec<u8>, started: Instant) -> Call {
        store.data_mut().begin_call(input, started);
        // One epoch from now, not from when the store was made: a resident
        // box's first check would otherwise find its deadline long passed
        // and yield for nothing.
        store.set_epoch_deadline(1);
        Call { started, until: store.data().call_deadline(), _running: store.data().epochs.running() }
    }

    /// Ends the call: `result` is the entry point's status and what else
    /// the call produced; `reply` reads the guest's reply from the state.
    pub fn end<T, R>(
        self,
        store: &mut Store<HostState>,
        result: wasmtime::Result<(i32, T)>,
        site: &Site<'_>,
        metrics: &GuestMetrics,
        reply: impl FnOnce(&mut Store<HostState>, T) -> Result<R, GuestFault>,
    ) -> Result<R, GuestFault> {
        let ended = store.data_mut().end_call(result);
        let outcome = ended.and_then(|(rc, made)| site.check(rc).map(|()| made)).and_then(|made| reply(store, made));
        // Starting or waking a stream box is not a call of the
        // histogram's: the event that follows is.
        if !matches!(site, Site::StreamStart { .. } | Site::StreamWake { .. }) {
            metrics.duration.observe(self.started.elapsed());
        }
        if let Err(fault) = &outcome {
            site.failed(metrics, &store.data().id().domain, fault);
        }
        outcome
    }
}
