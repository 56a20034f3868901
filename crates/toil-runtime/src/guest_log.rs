//! The guest log: a guest's stdout and stderr (WASI) become `tracing`
//! events, line by line, tagged with domain and tier, within a per-call
//! byte budget.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::fault::GuestId;

/// Line-buffers a guest's stdout/stderr and emits each line as a `tracing`
/// event (target `guest`) tagged with domain and tier. A per-call byte budget
/// stops a chatty or hostile guest from flooding the node's log.
#[derive(Debug)]
pub(crate) struct LogState {
    id: GuestId,
    budget: usize,
    left: usize,
    dropped: usize,
    partial: [Vec<u8>; 2],
}

const MAX_LINE: usize = 4096;

impl LogState {
    pub(crate) fn new(id: GuestId, budget: usize) -> Self {
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

    /// Flushes partial lines and reports what was over the budget; the next call starts a new budget.
    pub(crate) fn end_call(&mut self) {
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

/// A guest's stdout or stderr, as WASI sees it.
#[derive(Clone)]
pub(crate) struct GuestLog {
    pub(crate) state: Arc<Mutex<LogState>>,
    pub(crate) stream: &'static str,
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
