//! The limits every guest call runs under, and the memory limiter that
//! enforces the memory cap inside wasmtime.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Limits applied to every guest call. The values come from `toil-config`
/// (`limits` in `toilconfig.json`), which owns every default.
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
    /// Streams a stream box may have open that it opened itself
    /// (`stream_open`); past it `stream_open` returns `TooManyStreams`.
    pub max_box_streams: usize,
    /// How long a stream box waits for an event before it hibernates
    /// (gives its instance back, see `hibernate`); `None`: never.
    pub hibernate_after: Option<Duration>,
}

/// Enforces [`Limits::memory_bytes`] and records that it did, so a failed
/// grow is reported as a memory fault rather than a generic trap.
#[derive(Debug)]
pub(crate) struct GuestLimiter {
    memory_bytes: usize,
    /// Whether a grow was refused during the current call.
    pub(crate) denied: bool,
}

impl GuestLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        GuestLimiter { memory_bytes: limits.memory_bytes, denied: false }
    }
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
