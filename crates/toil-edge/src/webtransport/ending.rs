//! How a session ends, decided without I/O: what the end of the connection
//! means to the box ([`classify`]), and in which order the host closes the
//! session and delivers the box's last hook ([`closing`]).
//!
//! The order matters to both sides. When the client closed, the box hears
//! `close` first and the capsule answering the client follows. When the
//! guest or the host closes, the client is told first (a box's last hook
//! cannot delay the client's `closed`), then the box hears `close`. A box
//! that faulted is dropped before the session closes and hears nothing.

use toil_abi::stream::close_code;

use crate::metrics::Ending;

/// HTTP/3's "no error" code, which clients close a finished connection with.
const H3_NO_ERROR: u64 = h3::error::Code::H3_NO_ERROR.value();

/// Why a session's event loop stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed with this code and reason.
    PeerClosed(u32, String),
    /// The transport was lost.
    Lost(String),
    /// We close: the guest asked to (`by_host: false`), or the host must.
    Close { code: u32, reason: String, by_host: bool },
    /// The box faulted; it gets no further events.
    Fault(String),
}

/// One step of ending a session; [`closing`] says which, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Deliver `close(code, reason)` to the box (its last event).
    CloseHook { code: u32, reason: String },
    /// Deliver `disconnect(reason)` to the box (its last event).
    DisconnectHook(String),
    /// Drop the box without a last event.
    DropBox,
    /// Send the close capsule, then close the connection, with this code and reason.
    CloseSession { code: u32, reason: String },
}

/// How a session ends: the steps in order, and the `how` it is counted as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closing {
    pub steps: Vec<Step>,
    pub how: Ending,
}

/// The steps that end a session that stopped for `end`.
pub fn closing(end: End) -> Closing {
    match end {
        End::PeerClosed(code, reason) => Closing {
            steps: vec![Step::CloseHook { code, reason }, Step::CloseSession { code: close_code::NORMAL, reason: String::new() }],
            how: Ending::Closed,
        },
        End::Lost(reason) => Closing { steps: vec![Step::DisconnectHook(reason)], how: Ending::Disconnected },
        End::Close { code, reason, by_host } => Closing {
            steps: vec![Step::CloseSession { code, reason: reason.clone() }, Step::CloseHook { code, reason }],
            how: if by_host { Ending::Aborted } else { Ending::Closed },
        },
        End::Fault(why) => Closing {
            steps: vec![Step::DropBox, Step::CloseSession { code: close_code::GUEST_FAULT, reason: format!("stream box failed: {why}") }],
            how: Ending::Aborted,
        },
    }
}

/// How the connection's end looks to the box: a deliberate close by the
/// client (with its code) is `close`; anything else is `disconnect`.
pub fn classify(err: quinn::ConnectionError) -> End {
    let reason = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = match c.error_code.into_inner() {
                H3_NO_ERROR => close_code::NORMAL,
                other => u32::try_from(other).unwrap_or(u32::MAX),
            };
            End::PeerClosed(code, reason(&c.reason))
        }
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::NO_ERROR => {
            End::PeerClosed(close_code::NORMAL, reason(&c.reason))
        }
        other => End::Lost(other.to_string()),
    }
}

/// A client that does not read for `stall`: the host closes the session.
pub fn too_slow(stall: std::time::Duration) -> End {
    End::Close { code: close_code::CLIENT_TOO_SLOW, reason: format!("client did not read for {stall:?}"), by_host: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quinn::{ApplicationClose, ConnectionClose, ConnectionError, TransportErrorCode, VarInt};

    fn app_close(code: u64, reason: &str) -> ConnectionError {
        ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u64(code).unwrap(),
            reason: Bytes::copy_from_slice(reason.as_bytes()),
        })
    }

    #[test]
    fn a_client_close_keeps_its_code_and_h3_no_error_is_normal() {
        assert_eq!(classify(app_close(4000, "bye")), End::PeerClosed(4000, "bye".into()));
        assert_eq!(classify(app_close(H3_NO_ERROR, "")), End::PeerClosed(close_code::NORMAL, String::new()));
        // A code beyond 32 bits cannot be a WebTransport code: the box sees the largest.
        assert_eq!(classify(app_close(1 << 40, "")), End::PeerClosed(u32::MAX, String::new()));
        let transport_ok =
            ConnectionError::ConnectionClosed(ConnectionClose { error_code: TransportErrorCode::NO_ERROR, frame_type: None, reason: Bytes::new() });
        assert_eq!(classify(transport_ok), End::PeerClosed(close_code::NORMAL, String::new()));
    }

    #[test]
    fn anything_else_is_a_lost_transport() {
        assert!(matches!(classify(ConnectionError::TimedOut), End::Lost(_)));
        assert!(matches!(classify(ConnectionError::Reset), End::Lost(_)));
        let protocol = ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: TransportErrorCode::PROTOCOL_VIOLATION,
            frame_type: None,
            reason: Bytes::from_static(b"bad"),
        });
        assert!(matches!(classify(protocol), End::Lost(_)));
    }

    #[test]
    fn the_box_hears_a_client_close_before_the_answer_goes_out() {
        let c = closing(End::PeerClosed(4000, "bye".into()));
        assert_eq!(
            c.steps,
            [Step::CloseHook { code: 4000, reason: "bye".into() }, Step::CloseSession { code: close_code::NORMAL, reason: String::new() }]
        );
        assert_eq!(c.how, Ending::Closed);
    }

    #[test]
    fn the_client_hears_a_host_or_guest_close_before_the_box_does() {
        let by_guest = closing(End::Close { code: 4001, reason: "done".into(), by_host: false });
        assert_eq!(by_guest.steps, [Step::CloseSession { code: 4001, reason: "done".into() }, Step::CloseHook { code: 4001, reason: "done".into() }]);
        assert_eq!(by_guest.how, Ending::Closed);
        let slow = closing(too_slow(std::time::Duration::from_secs(10)));
        assert!(matches!(&slow.steps[0], Step::CloseSession { code: close_code::CLIENT_TOO_SLOW, .. }));
        assert_eq!(slow.how, Ending::Aborted);
    }

    #[test]
    fn a_faulted_box_is_dropped_unheard_and_a_lost_one_hears_disconnect() {
        let fault = closing(End::Fault("trap".into()));
        assert_eq!(fault.steps, [Step::DropBox, Step::CloseSession { code: close_code::GUEST_FAULT, reason: "stream box failed: trap".into() }]);
        assert_eq!(fault.how, Ending::Aborted);
        let lost = closing(End::Lost("timed out".into()));
        assert_eq!(lost.steps, [Step::DisconnectHook("timed out".into())]);
        assert_eq!(lost.how, Ending::Disconnected);
    }
}
