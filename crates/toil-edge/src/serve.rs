//! Protocol-independent request serving: host → domain → guest → response.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{Method, Response, StatusCode};
use toil_metrics::Registry;
use toil_runtime::admission::InstanceBudget;
use toil_runtime::request::{GuestRequest, GuestResponse, Outcome};
use toil_runtime::GuestFault;

use crate::domains::{Domain, DomainTable};
use crate::metrics::{DomainMetrics, Protocol};
use crate::sessions::{SessionLimits, SessionTable};
use toil_conns::{ConnLimits, ConnTable, ConnTimeouts};

/// Where dev mode publishes [`Edge::dev_info`].
pub const DEV_INFO_PATH: &str = "/.well-known/toil/dev.json";

/// A request body as the listener read it.
pub enum Body {
    Complete(Bytes),
    /// Over the cap: answered 413 without running the guest.
    TooLarge,
    /// The client broke off mid-body.
    Broken(String),
    /// The body did not arrive whole within this (answered 408).
    TimedOut(std::time::Duration),
}

/// Shared by every listener of a node.
pub struct Edge {
    pub domains: Arc<DomainTable>,
    /// Request bodies above this are refused with 413.
    pub max_request_body: usize,
    /// `Alt-Svc` advertised on every response, pointing at HTTP/3.
    pub alt_svc: Option<HeaderValue>,
    /// Open WebTransport sessions and their caps.
    pub sessions: Arc<SessionTable>,
    /// Open TCP connections and their caps.
    pub conns: Arc<ConnTable>,
    /// Open QUIC connections (handshake done) and their caps.
    pub quic_conns: Arc<ConnTable>,
    /// How long a TCP connection may stall.
    pub timeouts: ConnTimeouts,
    /// Requests (HTTP/2, HTTP/3 streams) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// How long a request body may take to arrive whole (any protocol).
    pub body_timeout: std::time::Duration,
    /// Set to `true` when the node shuts down: open stream sessions close
    /// with `SHUTDOWN` and their boxes get `close`.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Dev mode only: JSON served at [`DEV_INFO_PATH`] on every host, so a
    /// dev page can open WebTransport (certificate hash, HTTP/3 port).
    pub dev_info: Option<Bytes>,
    registry: Registry,
    /// Requests for hosts no domain serves (the `-` domain label).
    unrouted: OnceLock<DomainMetrics>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// What an [`Edge`] is built with (from `toil-config`, which owns the defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Request bodies above this are refused with 413.
    pub max_request_body: usize,
    pub sessions: SessionLimits,
    /// TCP connections, and QUIC connections (handshake done).
    pub conns: ConnLimits,
    pub quic_conns: ConnLimits,
    pub timeouts: ConnTimeouts,
    /// Requests (HTTP/2, HTTP/3 streams) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// How long a request body may take to arrive whole (any protocol).
    pub body_timeout: std::time::Duration,
}

impl Edge {
    /// An edge serving `domains`, whose sessions hold shares of `instances`
    /// (the runtime's: `Runtime::instances`).
    pub fn new(domains: Arc<DomainTable>, settings: EdgeSettings, instances: Arc<InstanceBudget>, registry: Registry) -> Self {
        Edge {
            domains,
            max_request_body: settings.max_request_body,
            alt_svc: None,
            sessions: SessionTable::new(settings.sessions, instances, registry.clone()),
            conns: ConnTable::new(settings.conns),
            quic_conns: ConnTable::new(settings.quic_conns),
            timeouts: settings.timeouts,
            max_streams_per_connection: settings.max_streams_per_connection,
            body_timeout: settings.body_timeout,
            shutdown: tokio::sync::watch::channel(false).0,
            dev_info: None,
            registry,
            unrouted: OnceLock::new(),
        }
    }

    /// `domain`'s metrics; `None` for requests no domain serves.
    fn metrics<'a>(&'a self, domain: Option<&'a Domain>) -> &'a DomainMetrics {
        match domain {
            // Every version of a domain gets the same series: the registry
            // hands out one handle per name and labels.
            Some(d) => d.metrics.get_or_init(|| DomainMetrics::new(&self.registry, &d.name)),
            None => self.unrouted.get_or_init(|| DomainMetrics::new(&self.registry, "-")),
        }
    }

    /// Whether the request declares a `Content-Length` over the body cap
    /// (refused with 413 before reading).
    pub fn declared_too_large(&self, head: &http::request::Parts) -> bool {
        let declared = head.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        declared.is_some_and(|n| n > self.max_request_body as u64)
    }

    /// Serves one request of any HTTP version. The domain is chosen by the
    /// URI's authority (HTTP/2, HTTP/3) or the `Host` header (HTTP/1.1).
    pub async fn serve(&self, proto: Protocol, head: &http::request::Parts, body: Body) -> Response<Bytes> {
        let started = Instant::now();
        if let (Some(info), DEV_INFO_PATH) = (&self.dev_info, head.uri.path()) {
            let mut r = Response::new(info.clone());
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return r;
        }
        let host = head.uri.authority().map(|a| a.as_str()).or_else(|| head.headers.get(HOST).and_then(|h| h.to_str().ok()));
        let domain = self.domains.resolve(host);
        let Some(app) = domain.as_ref().and_then(|d| d.request.as_ref()) else {
            let resp = match &domain {
                Some(d) => text(StatusCode::NOT_FOUND, format!("the {} app has no request tier\n", d.name)),
                None => text(StatusCode::NOT_FOUND, format!("no app on this node serves host {:?}\n", host.unwrap_or(""))),
            };
            self.record(domain.as_deref(), proto, &resp, started);
            return resp;
        };
        let mut resp = match body {
            Body::TooLarge => text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the {}-byte limit\n", self.max_request_body)),
            Body::Broken(why) => text(StatusCode::BAD_REQUEST, format!("request body broken off: {why}\n")),
            Body::TimedOut(limit) => {
                let mut r = text(StatusCode::REQUEST_TIMEOUT, format!("request body not received within {limit:?}\n"));
                if proto == Protocol::Http1 {
                    // HTTP/2 and HTTP/3 forbid connection headers.
                    r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
            Body::Complete(body) => {
                let headers: Vec<(&str, &[u8])> = head.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
                let req =
                    GuestRequest { method: head.method.as_str(), path: head.uri.path(), query: head.uri.query().unwrap_or(""), headers, body: &body };
                // A panic on this path is a host bug a guest may have
                // triggered: it costs this request a 500, never the worker
                // thread or its other connections.
                match AssertUnwindSafe(async { to_response(app.domain(), app.handle(&req).await) }).catch_unwind().await {
                    Ok(resp) => resp,
                    Err(panic) => {
                        let what = panic_message(&*panic);
                        tracing::error!(domain = %app.domain(), method = %head.method, path = head.uri.path(), "request handling panicked: {what}");
                        let mut r = text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("500 Internal Server Error: the node failed serving the {} app\n", app.domain()),
                        );
                        r.headers_mut().insert("x-toil-fault", HeaderValue::from_static("host"));
                        r
                    }
                }
            }
        };
        if head.method == Method::HEAD {
            *resp.body_mut() = Bytes::new();
        }
        // On every protocol: HTTP/3 responses renew the client's record.
        if let Some(alt) = &self.alt_svc {
            resp.headers_mut().insert(http::header::ALT_SVC, alt.clone());
        }
        self.record(domain.as_deref(), proto, &resp, started);
        resp
    }

    fn record(&self, domain: Option<&Domain>, proto: Protocol, resp: &Response<Bytes>, started: Instant) {
        self.metrics(domain).record(proto, resp.status(), started);
    }
}

/// The text of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("(no message)")
}

/// Headers a guest may not set: the host owns framing.
fn host_owned(name: &HeaderName) -> bool {
    matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "upgrade" | "te" | "trailer")
}

/// The guest's reply as an HTTP response: built straight from the reply
/// bytes (the body is a slice of them), refusing what `http` would refuse.
fn guest_response(domain: &str, g: &GuestResponse) -> Response<Bytes> {
    let view = g.view();
    let Ok(status) = StatusCode::from_u16(view.status) else {
        return fault_response(domain, &GuestFault::Abi(format!("invalid status {}", view.status)));
    };
    let mut resp = Response::new(g.body());
    *resp.status_mut() = status;
    for (name, value) in view.headers.iter() {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) if !host_owned(&n) => {
                // The runtime caps the count; `try_append` keeps a
                // guest away from `append`'s panic regardless.
                if resp.headers_mut().try_append(n, v).is_err() {
                    return fault_response(domain, &GuestFault::Abi("too many response headers".into()));
                }
            }
            (Ok(n), Ok(_)) => {
                tracing::debug!(domain, header = %n, "dropped host-owned header set by guest")
            }
            _ => {
                let fault = GuestFault::Abi(format!("invalid response header {name:?}"));
                tracing::warn!(domain, "{fault}");
                return fault_response(domain, &fault);
            }
        }
    }
    resp
}

fn to_response(domain: &str, outcome: Outcome) -> Response<Bytes> {
    match outcome {
        Outcome::Response(g) => guest_response(domain, &g),
        Outcome::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        Outcome::MethodNotAllowed { allow } => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                r.headers_mut().insert(ALLOW, v);
            }
            r
        }
        Outcome::Fault(f) => fault_response(domain, &f),
        Outcome::Busy(busy) => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, format!("503 Service Unavailable: the {domain} app is busy: {busy}\n"));
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            r.headers_mut().insert("x-toil-overload", HeaderValue::from_static(busy.kind()));
            r
        }
    }
}

/// 503 for resource limits (the request may succeed if retried with less),
/// 500 for guest bugs. The client learns the kind; the node log has details.
fn fault_response(domain: &str, fault: &GuestFault) -> Response<Bytes> {
    let status = match fault {
        GuestFault::Deadline(_) | GuestFault::Memory { .. } | GuestFault::NodeFull => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = text(status, format!("{}: the {domain} app failed ({})\n", status, fault.kind()));
    r.headers_mut().insert("x-toil-fault", HeaderValue::from_static(fault.kind()));
    r
}
