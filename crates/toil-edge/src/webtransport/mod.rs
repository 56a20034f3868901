//! WebTransport: stream sessions, one resident stream box per connection.
//!
//! - [`protocol`]: the WebTransport-over-HTTP/3 session layer (CONNECT,
//!   session streams, datagrams, close capsules), on h3's extension API;
//! - `session`: the driver of one session and its box; the entry point is
//!   [`serve_session`];
//! - `primary` and `ending`: the driver's decisions, free of I/O and tested
//!   without sockets: the frames held for the primary stream before the
//!   client opens it, and how a session ends. Which streams exist and
//!   which side of each is open is the box's own table
//!   ([`toil_runtime::streams`]), so a host call answers at once.
//!
//! A WebTransport session is an HTTP/3 extended CONNECT to `/<name>` on the
//! same UDP port as HTTP/3 requests. [`serve_session`] answers it: 404 when
//! the domain's stream artifact declares no stream `name` (before any box
//! exists), 503 at a session limit, otherwise it accepts the session,
//! creates the box and drives it until the connection ends.
//!
//! One task drives a session and delivers events to the box strictly in
//! order. Around it:
//! - an acceptor task takes the streams the client opens (bidirectional
//!   and unidirectional); the driver names each ([`toil_abi::stream::StreamId`])
//!   and gives it a reader task that cuts it into length-delimited frames
//!   ([`toil_abi::stream::framing`]) and reports how the client ended it;
//!   streams the box opens get the same reader when they are
//!   bidirectional;
//! - a datagram task reads datagrams, one frame each;
//! - all of them feed one bounded queue. When the box is slower than the
//!   client, the queue fills, the readers stop reading, and QUIC flow
//!   control pushes back on the client. Datagrams beyond quinn's receive
//!   buffer are dropped by quinn, as datagrams may be.
//!
//! The box's channel deliveries (`toil_channels::Deliveries`, a bounded
//! mailbox the node's channels fill) are the driver's other input: it
//! takes frames and deliveries in turn, one event at a time.
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
//! A session ends in one of three ways. The client closes the connection
//! with an application code: the box gets `close(code, reason)`. The
//! transport is lost (idle timeout, reset): the box gets `disconnect`. The
//! guest calls `close`, or the host closes it (guest fault, bad frame,
//! stalled client): the connection is closed with that code and reason and
//! the box gets `close` (unless it faulted). Codes travel as the QUIC
//! application error code: one session per connection, so closing the
//! session closes its connection.

mod ending;
mod primary;
pub mod protocol;
mod session;

pub use protocol::is_connect;
pub use session::serve_session;
