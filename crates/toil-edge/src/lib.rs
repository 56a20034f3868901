//! The network edge of a Toil node: from sockets to guest calls and back.
//!
//! From the bottom up; each module imports only modules listed before it:
//!
//! - [`metrics`]: request and session metric handles, by domain;
//! - [`domains`]: which domain (app) a request's host name belongs to;
//! - [`sessions`]: stream-session admission (per-node and per-domain caps);
//! - [`serve`]: the [`Edge`] every listener shares, and
//!   [`Edge::serve`](serve::Edge::serve), which turns a request of any HTTP
//!   version into a guest call and the outcome into a response (404/405
//!   from the manifest, 413 over the body cap, 500/503 on a guest fault);
//! - [`certs`]: certificates by host name (SNI) from files, checked,
//!   watched and swapped; the resolver HTTPS and HTTP/3 share;
//! - [`tcp`]: HTTP/1.1 and HTTP/2 with hyper, over TLS (HTTPS) or
//!   cleartext on the same port;
//! - [`h3_conn`]: the QUIC connection h3 runs on: h3-quinn's, with the
//!   headers of incoming unidirectional streams cut so h3 reads them as
//!   soon as they arrive;
//! - [`http3`]: HTTP/3 requests, the counterpart of `tcp` on h3 streams;
//! - [`webtransport`]: stream sessions: the session protocol, and the
//!   driver that runs a session's resident box;
//! - [`tls`]: the dev certificate (ECDSA P-256, < 14 days, as browsers
//!   require for WebTransport `serverCertificateHashes`);
//! - [`keys`]: the secrets all QUIC workers share (tokens, resets, CIDs);
//! - [`steering`]: connection IDs that name their worker, and the BPF
//!   program that steers packets by them (no I/O);
//! - [`quic`]: one QUIC connection (HTTP/3 with h3 + quinn, on the same
//!   port number over UDP): its requests, or the WebTransport session that
//!   takes it over;
//! - [`workers`]: the QUIC worker threads, one quinn endpoint each, and how
//!   packets reach them;
//! - [`admin`]: the admin listener: Prometheus `/metrics` and `/healthz`.
//!
//! Guest calls run on the tokio worker that owns the connection; a guest
//! yields every epoch tick, so a slow one cannot starve its neighbours.

pub mod acme;
pub mod admin;
pub mod certs;
pub mod domains;
pub mod h3_conn;
pub mod http3;
pub mod keys;
pub mod metrics;
pub mod quic;
pub mod serve;
pub mod sessions;
pub mod steering;
pub mod tcp;
pub mod tls;
pub mod webtransport;
pub mod workers;

pub use domains::DomainTable;
pub use serve::Edge;
