//! WebTransport: stream sessions, one resident stream box per session.
//!
//! - [`protocol`]: the WebTransport-over-HTTP/3 session layer (CONNECT,
//!   session streams, datagrams, close capsules), on h3's extension API;
//! - `pool`: the sessions of one connection; the entry point is
//!   [`serve_sessions`], which routes what the client opens to its session;
//! - `session`: the driver of one session and its box;
//! - `primary` and `ending`: the driver's decisions, free of I/O and tested
//!   without sockets: the frames held for the primary stream before the
//!   client opens it, and how a session ends. Which streams exist and
//!   which side of each is open is the box's own table
//!   ([`toil_runtime::streams`]), so a host call answers at once.
//!
//! A WebTransport session is an HTTP/3 extended CONNECT to `/<name>` on the
//! same UDP port as HTTP/3 requests. [`serve_sessions`] answers it: 404 when
//! the domain's stream artifact declares no stream `name` (before any box
//! exists), 503 at a session limit, otherwise it accepts the session,
//! creates the box and drives it until the session ends.
//!
//! One task drives a session and delivers events to the box strictly in
//! order. What it takes next, one event at a time:
//! - a frame from one of the session's streams, which the driver reads
//!   itself, only when it is ready for the next event: each stream (the
//!   client's, and the box's own bidirectional ones) is cut into
//!   length-delimited frames ([`toil_abi::stream::framing`]) holding at
//!   most one partial frame, then reports how the client ended it. A box
//!   slower than the client stops the reading, and QUIC flow control pushes
//!   back on the client;
//! - what the connection's loop routes to the session (new streams,
//!   datagrams) through a bounded queue; datagrams beyond it, or beyond
//!   quinn's receive buffer, are dropped, as datagrams may be;
//! - the box's channel deliveries (`toil_channels::Deliveries`, a bounded
//!   mailbox the node's channels fill).
//!
//! These take turns. What ends the session comes before any of them, and
//! is watched apart from them (polled only when it stirs, not per frame):
//! the node shutting down, the domain's version retired, the client's
//! close (a capsule on the session's CONNECT stream, or its end), the
//! connection lost. Frames the client sent before its close are not
//! delivered once the close is seen.
//!
//! After every event the driver carries out the box's outbox, in order,
//! before it takes the next inbound frame: frames to the stream they name
//! (`send` to the session's *primary* stream, the first bidirectional
//! stream the client opened), datagrams as datagrams, streams opened and
//! finished. A client that does not read (or grants no new stream) stalls
//! that work; past
//! [`SessionLimits::send_stall_timeout`](crate::sessions::SessionLimits)
//! the session is closed with `CLIENT_TOO_SLOW`. So a session holds at most
//! one event's outbox plus the inbound queue, whatever the client does. A
//! write that finds the client stopped reading a stream is reported to the
//! box (`stream_end`) before the next inbound event.
//!
//! A connection may carry several sessions (pooling, up to
//! `SessionLimits::max_sessions_per_connection`); `pool` routes what the
//! client opens to the right session, each session has its own driver and
//! box, and all of them run on the connection's QUIC worker.
//!
//! A session ends in one of three ways. The client closes it (a close
//! capsule, or the connection with an application code): the box gets
//! `close(code, reason)`. The transport is lost (idle timeout, reset): the
//! box gets `disconnect`. The guest calls `close`, or the host closes it
//! (guest fault, bad frame, stalled client): the client gets a close
//! capsule with that code and reason and the box gets `close` (unless it
//! faulted). A session's streams end with it (`WT_SESSION_GONE`); its
//! siblings go on. The last session of a connection also closes the
//! connection, with the same code, for clients that only watch the
//! connection.

mod ending;
mod pool;
mod primary;
pub mod protocol;
mod read_set;
mod session;

pub use pool::serve_sessions;
pub use protocol::is_connect;
