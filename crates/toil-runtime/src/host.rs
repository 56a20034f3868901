//! Per-instance host state, the `toil` import module, the guest log, and
//! the limits every guest call runs under.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use toil_abi::stream::{close_code, FrameKind, SendError};

use toil_abi::{imports, Tier};
use wasmtime::{Caller, Linker, ResourceLimiter, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Limits applied to every guest call. All are configurable (`limits` in
/// `toilconfig.json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call (a request with its instantiation, a
    /// stream event, `daemon_start`, a tick), time blocked in host calls
    /// included: enforced by epoch interruption and a timer.
    pub deadline: Duration,
    /// Cap on an instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Cap on a request body the host accepts, in bytes.
    pub max_request_body: usize,
    /// Cap on the encoded reply a guest may write, in bytes.
    pub max_response_body: usize,
    /// Cap on the number of headers in a guest's response.
    pub max_response_headers: usize,
    /// Cap on the bytes of a guest's response headers (names and values).
    pub max_response_header_bytes: usize,
    /// Cap on guest stdout+stderr logged per call; the rest is dropped and counted.
    pub max_log_bytes_per_call: usize,
    /// Largest stream frame, either way, in bytes.
    pub max_frame_bytes: usize,
    /// Cap on the frames a stream box queues in one event, in bytes; past
    /// it `stream_send` returns `QueueFull`.
    pub max_outbound_bytes_per_event: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_request_body: 1 << 20,
            max_response_body: 8 << 20,
            max_response_headers: 100,
            max_response_header_bytes: 64 << 10,
            max_log_bytes_per_call: 64 << 10,
            max_frame_bytes: 64 << 10,
            max_outbound_bytes_per_event: 1 << 20,
        }
    }
}

/// Why a guest call failed. The host answers the request (500/503) or ends
/// the session; it never stops serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    #[error("deadline of {0:?} exceeded (guest interrupted)")]
    Deadline(Duration),
    #[error("memory limit of {limit} bytes exceeded")]
    Memory { limit: usize },
    #[error("reply exceeds the {limit}-byte limit")]
    OutputTooLarge { limit: usize },
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("guest broke the ABI: {0}")]
    Abi(String),
    /// Not the guest's doing: the instance pool was exhausted when its
    /// instance was to be created.
    #[error("the node has no free instance (limits.maxInstances)")]
    NodeFull,
}

impl GuestFault {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestFault::Deadline(_) => "deadline",
            GuestFault::Memory { .. } => "memory",
            GuestFault::OutputTooLarge { .. } => "output_too_large",
            GuestFault::Trap(_) => "trap",
            GuestFault::Abi(_) => "abi",
            GuestFault::NodeFull => "node_full",
        }
    }
}

/// Enforces [`Limits::memory_bytes`] and records that it did, so a failed
/// grow is reported as a memory fault rather than a generic trap.
#[derive(Debug)]
struct GuestLimiter {
    memory_bytes: usize,
    denied: bool,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied = true;
            wasmtime::bail!("memory limit of {} bytes exceeded (guest asked for {desired})", self.memory_bytes);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Identity of a guest in logs and metrics.
#[derive(Clone, Debug)]
pub struct GuestId {
    pub domain: Arc<str>,
    pub tier: Tier,
}

/// The data of one wasmtime `Store`: one guest instance.
pub struct HostState {
    id: GuestId,
    limits: Limits,
    limiter: GuestLimiter,
    /// The current call's input (`input_read`) and reply (`output_write`).
    pub(crate) input: Vec<u8>,
    pub(crate) output: Vec<u8>,
    output_overflow: bool,
    /// Set by a host call the guest misused on purpose or by mistake, so the
    /// trap it raises is reported as an ABI fault naming the misuse.
    abi_violation: Option<String>,
    /// When the current call started; the epoch callback measures the deadline from it.
    pub(crate) call_started: std::time::Instant,
    /// Built on the first WASI call, with the log behind its stdout and
    /// stderr: most requests never make one.
    wasi: Option<(WasiP1Ctx, Arc<Mutex<LogState>>)>,
    /// A stream box's outbound frames (`stream_send` / `stream_close`).
    pub(crate) stream: Option<crate::stream::Outbox>,
    /// A resident instance (stream, daemon) keeps its handle here.
    pub(crate) instance: Option<wasmtime::Instance>,
}

impl HostState {
    pub fn new(id: GuestId, limits: &Limits) -> Self {
        HostState {
            limiter: GuestLimiter { memory_bytes: limits.memory_bytes, denied: false },
            limits: limits.clone(),
            id,
            input: Vec::new(),
            output: Vec::new(),
            output_overflow: false,
            abi_violation: None,
            call_started: std::time::Instant::now(),
            wasi: None,
            stream: None,
            instance: None,
        }
    }

    pub fn id(&self) -> &GuestId {
        &self.id
    }

    pub(crate) fn deadline(&self) -> Duration {
        self.limits.deadline
    }

    /// When the current call must have ended, time blocked in host calls included.
    pub(crate) fn call_deadline(&self) -> std::time::Instant {
        self.call_started + self.limits.deadline
    }

    pub(crate) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    fn wasi(&mut self) -> &mut WasiP1Ctx {
        let (id, budget) = (&self.id, self.limits.max_log_bytes_per_call);
        &mut self
            .wasi
            .get_or_insert_with(|| {
                let log = Arc::new(Mutex::new(LogState::new(id.clone(), budget)));
                let ctx = wasmtime_wasi::WasiCtxBuilder::new()
                    .stdout(GuestLog { state: log.clone(), stream: "stdout" })
                    .stderr(GuestLog { state: log.clone(), stream: "stderr" })
                    .build_p1();
                (ctx, log)
            })
            .0
    }

    /// Prepares for a call with `input`.
    pub(crate) fn begin_call(&mut self, input: Vec<u8>) {
        self.input = input;
        self.output.clear();
        self.output_overflow = false;
        self.abi_violation = None;
        self.call_started = std::time::Instant::now();
    }

    /// Ends a call: flushes partial log lines and classifies an error.
    pub(crate) fn end_call<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, GuestFault> {
        if let Some((_, log)) = &self.wasi {
            log.lock().expect("guest log").end_call();
        }
        self.input = Vec::new();
        result.map_err(|e| self.classify(e))
    }

    fn classify(&self, err: wasmtime::Error) -> GuestFault {
        if self.limiter.denied {
            return GuestFault::Memory { limit: self.limits.memory_bytes };
        }
        if let Some(misuse) = &self.abi_violation {
            return GuestFault::Abi(misuse.clone());
        }
        if self.output_overflow {
            return GuestFault::OutputTooLarge { limit: self.limits.max_response_body };
        }
        if err.is::<wasmtime::PoolConcurrencyLimitError>() {
            return GuestFault::NodeFull;
        }
        if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return GuestFault::Deadline(self.limits.deadline);
        }
        // First line of the trap and the innermost wasm frames are what a developer needs.
        let text = format!("{err:?}");
        let summary: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(6).collect();
        GuestFault::Trap(summary.join(" | "))
    }
}

/// Adds WASI preview1 and the `toil` host functions to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, HostState::wasi)?;

    linker.func_wrap(imports::MODULE, imports::INPUT_READ, |mut caller: Caller<'_, HostState>, dst: i32, len: i32| {
        let mem = guest_memory(&mut caller)?;
        let (bytes, state) = mem.data_and_store_mut(&mut caller);
        let n = state.input.len().min(len.max(0) as usize);
        let dst = dst as u32 as usize;
        let target = bytes.get_mut(dst..dst + n).ok_or_else(|| wasmtime::format_err!("input_read: destination out of bounds"))?;
        target.copy_from_slice(&state.input[..n]);
        Ok(n as i32)
    })?;

    linker.func_wrap(imports::MODULE, imports::OUTPUT_WRITE, |mut caller: Caller<'_, HostState>, src: i32, len: i32| {
        let mem = guest_memory(&mut caller)?;
        let (bytes, state) = mem.data_and_store_mut(&mut caller);
        let chunk = guest_slice(bytes, src, len, "output_write")?;
        if state.output.len() + chunk.len() > state.limits.max_response_body {
            state.output_overflow = true;
            wasmtime::bail!("reply exceeds the {}-byte limit", state.limits.max_response_body);
        }
        state.output.extend_from_slice(chunk);
        Ok(0i32)
    })?;

    linker.func_wrap(imports::MODULE, imports::STREAM_SEND, |mut caller: Caller<'_, HostState>, kind: i32, src: i32, len: i32| {
        let mem = guest_memory(&mut caller)?;
        let (bytes, state) = mem.data_and_store_mut(&mut caller);
        let frame = guest_slice(bytes, src, len, "stream_send")?;
        let Some(kind) = u8::try_from(kind).ok().and_then(FrameKind::from_u8) else {
            return Ok(SendError::BadKind as i32);
        };
        Ok(match state.stream.as_mut() {
            Some(outbox) => outbox.send(kind, frame).map_or_else(|e| e as i32, |()| 0),
            None => SendError::Closed as i32,
        })
    })?;

    linker.func_wrap(imports::MODULE, imports::STREAM_CLOSE, |mut caller: Caller<'_, HostState>, code: i32, src: i32, len: i32| {
        let mem = guest_memory(&mut caller)?;
        let (bytes, state) = mem.data_and_store_mut(&mut caller);
        let reason = String::from_utf8_lossy(guest_slice(bytes, src, len.min(1024), "stream_close")?).into_owned();
        let code = code as u32;
        if close_code::HOST_RESERVED.contains(&code) {
            // A client must be able to trust that these codes come from the host.
            let misuse = format!("stream_close with code {code:#x}, which is in the host-reserved range 0x1000..=0x10ff");
            state.abi_violation = Some(misuse.clone());
            wasmtime::bail!(misuse);
        }
        match state.stream.as_mut() {
            Some(outbox) => {
                outbox.close(code, reason);
                Ok(0i32)
            }
            None => Ok(SendError::Closed as i32),
        }
    })?;
    Ok(())
}

fn guest_memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<wasmtime::Memory> {
    caller.get_export(toil_abi::exports::MEMORY).and_then(|e| e.into_memory()).ok_or_else(|| wasmtime::format_err!("guest exports no memory"))
}

fn guest_slice<'a>(bytes: &'a [u8], ptr: i32, len: i32, what: &str) -> wasmtime::Result<&'a [u8]> {
    let (ptr, len) = (ptr as u32 as usize, len.max(0) as usize);
    bytes.get(ptr..ptr.saturating_add(len)).ok_or_else(|| wasmtime::format_err!("{what}: source out of bounds"))
}

// ------------------------------------------------------------------ guest log

/// Line-buffers a guest's stdout/stderr and emits each line as a `tracing`
/// event (target `guest`) tagged with domain and tier. A per-call byte budget
/// stops a chatty or hostile guest from flooding the node's log.
#[derive(Debug)]
struct LogState {
    id: GuestId,
    budget: usize,
    left: usize,
    dropped: usize,
    partial: [Vec<u8>; 2],
}

const MAX_LINE: usize = 4096;

impl LogState {
    fn new(id: GuestId, budget: usize) -> Self {
        LogState { id, budget, left: budget, dropped: 0, partial: [Vec::new(), Vec::new()] }
    }

    fn write(&mut self, stream: &'static str, mut bytes: &[u8]) {
        if bytes.len() > self.left {
            self.dropped += bytes.len() - self.left;
            bytes = &bytes[..self.left];
        }
        self.left -= bytes.len();
        let idx = usize::from(stream == "stderr");
        for &b in bytes {
            if b == b'\n' || self.partial[idx].len() >= MAX_LINE {
                let line = std::mem::take(&mut self.partial[idx]);
                self.emit(stream, &line);
                if b == b'\n' {
                    continue;
                }
            }
            self.partial[idx].push(b);
        }
    }

    fn emit(&self, stream: &'static str, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        tracing::info!(target: "guest", domain = %self.id.domain, tier = %self.id.tier, stream, "{line}");
    }

    fn end_call(&mut self) {
        for (idx, stream) in [(0, "stdout"), (1, "stderr")] {
            if !self.partial[idx].is_empty() {
                let line = std::mem::take(&mut self.partial[idx]);
                self.emit(stream, &line);
            }
        }
        if self.dropped > 0 {
            tracing::warn!(target: "guest", domain = %self.id.domain, tier = %self.id.tier,
                dropped_bytes = self.dropped, "guest output over the per-call log budget was dropped");
        }
        self.left = self.budget;
        self.dropped = 0;
    }
}

#[derive(Clone)]
struct GuestLog {
    state: Arc<Mutex<LogState>>,
    stream: &'static str,
}

impl GuestLog {
    fn write(&self, bytes: &[u8]) {
        self.state.lock().expect("guest log").write(self.stream, bytes);
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        GuestLog::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
