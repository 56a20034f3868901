//! The state of one guest instance (its wasmtime `Store` data) and the
//! `toil` import module: the host functions a guest calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use toil_abi::channel::{ChannelError, Since};
use toil_abi::imports;
use toil_abi::stream::{close_code, Direction, FrameKind, SendError, StreamId};
use toil_channels::{Channels, Inbox};
use wasmtime::{Caller, Linker, ResourceLimiter, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::epoch::Epochs;
use crate::fault::{GuestFault, GuestId};
use crate::guest_log::{GuestLog, LogState};
use crate::limits::{GuestLimiter, Limits};
use crate::outbox::Outbox;

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
    /// The epoch ticker, kept running by each call (`Call::begin`).
    pub(crate) epochs: Epochs,
    /// Built on the first WASI call, with the log behind its stdout and
    /// stderr: most requests never make one.
    wasi: Option<(WasiP1Ctx, Arc<Mutex<LogState>>)>,
    /// A stream box's outbound frames (`stream_send` / `stream_close`).
    pub(crate) stream: Option<Outbox>,
    /// The store's instance and its exported memory, once instantiated;
    /// `None` while a box hibernates. The memory is looked up once here, not
    /// by name on every host call.
    instance: Option<(wasmtime::Instance, Option<wasmtime::Memory>)>,
    /// The node's channels (`channel_publish`), if it has them.
    pub(crate) channels: Option<Channels>,
    /// A stream box's subscriptions (`channel_subscribe`).
    pub(crate) inbox: Option<Inbox>,
}

impl HostState {
    pub(crate) fn new(id: GuestId, limits: &Limits, epochs: Epochs) -> Self {
        HostState {
            limiter: GuestLimiter::new(limits),
            limits: limits.clone(),
            id,
            input: Vec::new(),
            output: Vec::new(),
            output_overflow: false,
            abi_violation: None,
            call_started: std::time::Instant::now(),
            epochs,
            wasi: None,
            stream: None,
            instance: None,
            channels: None,
            inbox: None,
        }
    }

    pub fn id(&self) -> &GuestId {
        &self.id
    }

    /// The store's instance, once instantiated.
    pub(crate) fn instance(&self) -> Option<wasmtime::Instance> {
        self.instance.map(|(instance, _)| instance)
    }

    /// Records the store's new instance and its memory export, if any.
    pub(crate) fn adopt(&mut self, instance: wasmtime::Instance, memory: Option<wasmtime::Memory>) {
        self.instance = Some((instance, memory));
    }

    /// Forgets the instance: its store is going away (hibernation), and the
    /// handles would name another store's objects in the next one.
    pub(crate) fn forget_instance(&mut self) {
        self.instance = None;
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

    /// Prepares for a call with `input`, its deadline running from `started`.
    pub(crate) fn begin_call(&mut self, input: Vec<u8>, started: std::time::Instant) {
        self.input = input;
        self.output.clear();
        self.output_overflow = false;
        self.abi_violation = None;
        self.call_started = started;
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

    linker.func_wrap(imports::MODULE, imports::STREAM_WRITE, |mut caller: Caller<'_, HostState>, stream: i32, src: i32, len: i32, finish: i32| {
        let mem = guest_memory(&mut caller)?;
        let (bytes, state) = mem.data_and_store_mut(&mut caller);
        let frame = guest_slice(bytes, src, len, "stream_write")?;
        Ok(match state.stream.as_mut() {
            Some(outbox) => outbox.write(StreamId(stream as u32), frame, finish != 0).map_or_else(|e| e as i32, |()| 0),
            None => SendError::Closed as i32,
        })
    })?;

    linker.func_wrap(imports::MODULE, imports::STREAM_FINISH, |mut caller: Caller<'_, HostState>, stream: i32| {
        Ok(match caller.data_mut().stream.as_mut() {
            Some(outbox) => outbox.finish(StreamId(stream as u32)).map_or_else(|e| e as i32, |()| 0),
            None => SendError::Closed as i32,
        })
    })?;

    linker.func_wrap(imports::MODULE, imports::STREAM_OPEN, |mut caller: Caller<'_, HostState>, direction: i32| {
        let Some(direction) = u8::try_from(direction).ok().and_then(Direction::from_u8) else {
            return Ok(SendError::BadKind as i32);
        };
        Ok(match caller.data_mut().stream.as_mut() {
            // Ids are at most u32::MAX, which the guest reads back as a u32.
            Some(outbox) => outbox.open(direction).map_or_else(|e| e as i32, |id| id.0 as i32),
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
    add_channels(linker)
}

/// `channel_publish`, `channel_subscribe` and `channel_unsubscribe`. Topics
/// are always the calling guest's domain's. Refusals are return codes the
/// SDK turns into [`ChannelError`]s; only out-of-bounds pointers trap.
fn add_channels(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    type PublishArgs = (i32, i32, i32, i32, i32, i32);
    linker.func_wrap_async(imports::MODULE, imports::CHANNEL_PUBLISH, |mut caller: Caller<'_, HostState>, args: PublishArgs| {
        Box::new(async move {
            let (topic, topic_len, src, len, out, out_cap) = args;
            let mem = guest_memory(&mut caller)?;
            let (bytes, state) = mem.data_and_store_mut(&mut caller);
            let Some(channels) = state.channels.clone() else { return Ok(ChannelError::Disabled as i32) };
            let Ok(topic) = std::str::from_utf8(guest_slice(bytes, topic, topic_len, "channel_publish")?).map(str::to_owned) else {
                return Ok(ChannelError::BadTopic as i32);
            };
            // Refused before the message is copied out of guest memory.
            if let Err(e) = channels.check(&topic, len.max(0) as usize) {
                return Ok(e as i32);
            }
            let message = bytes::Bytes::copy_from_slice(guest_slice(bytes, src, len, "channel_publish")?);
            let domain = state.id.domain.clone();
            // The call's deadline bounds this wait, as it bounds the whole call.
            let position = match channels.publish(&domain, &topic, message).await {
                Ok(p) => p.encode(),
                Err(e) => return Ok(e as i32),
            };
            if position.len() > out_cap.max(0) as usize {
                return Ok(ChannelError::BadArgument as i32);
            }
            let (bytes, _) = mem.data_and_store_mut(&mut caller);
            let out = out as u32 as usize;
            let dst = bytes.get_mut(out..out + position.len()).ok_or_else(|| wasmtime::format_err!("channel_publish: destination out of bounds"))?;
            dst.copy_from_slice(&position);
            Ok(position.len() as i32)
        })
    })?;

    // Async: through NATS, subscribing `now` to a topic the node has not
    // loaded asks the transport where the topic is (bounded like a publish).
    linker.func_wrap_async(imports::MODULE, imports::CHANNEL_SUBSCRIBE, |mut caller: Caller<'_, HostState>, args: (i32, i32, i32, i32)| {
        Box::new(async move {
            let (topic, topic_len, since, since_len) = args;
            let mem = guest_memory(&mut caller)?;
            let (bytes, state) = mem.data_and_store_mut(&mut caller);
            let Ok(topic) = std::str::from_utf8(guest_slice(bytes, topic, topic_len, "channel_subscribe")?).map(str::to_owned) else {
                return Ok(ChannelError::BadTopic as i32);
            };
            let Ok(since) = Since::decode(guest_slice(bytes, since, since_len, "channel_subscribe")?) else {
                return Ok(ChannelError::BadArgument as i32);
            };
            Ok(match state.inbox.as_mut() {
                Some(inbox) => inbox.subscribe(&topic, since).await.map_or_else(|e| e as i32, |()| 0),
                None => ChannelError::Disabled as i32,
            })
        })
    })?;

    linker.func_wrap(imports::MODULE, imports::CHANNEL_UNSUBSCRIBE, |mut caller: Caller<'_, HostState>, topic: i32, topic_len: i32| {
        let mem = guest_memory(&mut caller)?;
        let (bytes, state) = mem.data_and_store_mut(&mut caller);
        let topic = String::from_utf8_lossy(guest_slice(bytes, topic, topic_len, "channel_unsubscribe")?);
        Ok(state.inbox.as_mut().is_some_and(|inbox| inbox.unsubscribe(&topic)) as i32)
    })?;
    Ok(())
}

fn guest_memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<wasmtime::Memory> {
    // Known once instantiation is done; a start function's host calls look it up.
    if let Some((_, Some(memory))) = caller.data().instance {
        return Ok(memory);
    }
    caller.get_export(toil_abi::exports::MEMORY).and_then(|e| e.into_memory()).ok_or_else(|| wasmtime::format_err!("guest exports no memory"))
}

fn guest_slice<'a>(bytes: &'a [u8], ptr: i32, len: i32, what: &str) -> wasmtime::Result<&'a [u8]> {
    let (ptr, len) = (ptr as u32 as usize, len.max(0) as usize);
    bytes.get(ptr..ptr.saturating_add(len)).ok_or_else(|| wasmtime::format_err!("{what}: source out of bounds"))
}
