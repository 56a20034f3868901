//! The edge's metric handles: requests by domain, protocol and status
//! class, and stream sessions and frames by domain. Each set is registered
//! once per domain and then only incremented, so serving a request or a
//! frame takes no lookup.

use std::sync::Arc;
use std::time::Instant;

use toil_metrics::{Counter, Gauge, Histogram, Registry};

/// The HTTP version a request arrived on (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Http3];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Http3 => "http3",
        }
    }
}

/// Request counters of one domain, by protocol and status class.
pub struct DomainMetrics {
    requests: [[Arc<Counter>; 5]; 3],
    duration: Arc<Histogram>,
}

impl DomainMetrics {
    pub fn new(registry: &Registry, domain: &str) -> Self {
        DomainMetrics {
            requests: Protocol::ALL.map(|p| {
                ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                    registry.counter(
                        "toil_http_requests_total",
                        "HTTP requests answered, by domain, protocol and status class.",
                        &[("domain", domain), ("protocol", p.label()), ("status", class)],
                    )
                })
            }),
            duration: registry.histogram(
                "toil_http_request_duration_seconds",
                "Time from request head to response, per domain.",
                &[("domain", domain)],
            ),
        }
    }

    /// Counts a request answered with `status` that arrived at `started`.
    pub fn record(&self, proto: Protocol, status: http::StatusCode, started: Instant) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[proto as usize][class].inc();
        self.duration.observe(started.elapsed());
    }
}

/// How a session ended (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Closed gracefully, by the client or by the guest.
    Closed,
    /// The transport was lost (idle timeout, reset, client vanished).
    Disconnected,
    /// The host closed it: guest fault, bad frame, stalled client, shutdown.
    Aborted,
}

impl Ending {
    const ALL: [Ending; 3] = [Ending::Closed, Ending::Disconnected, Ending::Aborted];

    fn label(self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Disconnected => "disconnected",
            Ending::Aborted => "aborted",
        }
    }
}

/// Session and frame counters of one domain.
pub struct DomainSessionMetrics {
    pub opened: Arc<Counter>,
    /// Sessions opened on a connection that already carried another (pooling).
    pub pooled: Arc<Counter>,
    pub refused: Arc<Counter>,
    ended: [Arc<Counter>; 3],
    pub open: Arc<Gauge>,
    /// Frames by direction (in, out) and kind (stream, datagram).
    pub frames: [[Arc<Counter>; 2]; 2],
    /// Outbound frames dropped (datagrams the connection could not take).
    pub dropped: Arc<Counter>,
}

impl DomainSessionMetrics {
    pub fn new(r: &Registry, domain: &str) -> Self {
        let d = [("domain", domain)];
        let frames = |dir: &str| {
            ["stream", "datagram"].map(|kind| {
                r.counter(
                    "toil_stream_frames_total",
                    "Stream frames by domain, direction (in, out) and kind (stream, datagram).",
                    &[("domain", domain), ("direction", dir), ("kind", kind)],
                )
            })
        };
        DomainSessionMetrics {
            opened: r.counter("toil_stream_sessions_opened_total", "Stream sessions opened (box created).", &d),
            pooled: r.counter("toil_stream_sessions_pooled_total", "Stream sessions opened on a connection that carried another session.", &d),
            refused: r.counter("toil_stream_sessions_refused_total", "Stream sessions refused at a session limit.", &d),
            ended: Ending::ALL.map(|e| {
                r.counter(
                    "toil_stream_sessions_ended_total",
                    "Stream sessions ended, by how (closed, disconnected, aborted).",
                    &[("domain", domain), ("how", e.label())],
                )
            }),
            open: r.gauge("toil_stream_sessions_open", "Stream sessions open now.", &d),
            frames: [frames("in"), frames("out")],
            dropped: r.counter("toil_stream_frames_dropped_total", "Outbound frames dropped.", &d),
        }
    }

    pub fn ended(&self, how: Ending) {
        self.ended[how as usize].inc();
    }
}
