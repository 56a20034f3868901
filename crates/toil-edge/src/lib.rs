//! The network edge of a Toil node.
//!
//! - [`domains`]: which domain (app) a request's host name belongs to;
//! - [`serve`]: turns an HTTP request of any version into a guest call and the
//!   outcome into a response (404/405 from the manifest, 413 over the body
//!   cap, 500/503 on a guest fault), with metrics;
//! - [`conns`]: TCP connection caps (per node, per client address, a
//!   reserve of file descriptors), accept back-off, idle tracking;
//! - [`tcp`]: HTTP/1.1 and HTTP/2 (cleartext, h2c prior knowledge) with hyper;
//! - [`quic`]: HTTP/3 over QUIC with h3 + quinn, on the same port number over
//!   UDP, and the WebTransport CONNECTs that open stream sessions;
//! - [`workers`]: the QUIC worker threads, one quinn endpoint each, and how
//!   packets reach them ([`steering`]: connection IDs that name their
//!   worker; [`keys`]: the secrets all workers share);
//! - [`wt`]: the WebTransport-over-HTTP/3 session layer (CONNECT, session
//!   streams, datagrams, close capsules);
//! - [`webtransport`]: a stream session: its resident box, frames both ways,
//!   backpressure, and how it ends;
//! - [`sessions`]: session admission (per-node and per-domain caps) and
//!   session metrics;
//! - [`tls`]: the dev certificate (ECDSA P-256, < 14 days, as browsers
//!   require for WebTransport `serverCertificateHashes`);
//! - [`admin`]: the admin listener: Prometheus `/metrics` and `/healthz`.
//!
//! Guest calls run on the tokio worker that owns the connection; a guest
//! yields every epoch tick, so a slow one cannot starve its neighbours.

pub mod admin;
pub mod conns;
pub mod domains;
pub mod keys;
pub mod quic;
pub mod serve;
pub mod sessions;
pub mod steering;
pub mod tcp;
pub mod tls;
pub mod webtransport;
pub mod workers;
pub mod wt;

pub use domains::DomainTable;
pub use serve::Edge;
