//! The settings each subsystem runs with, built from a config's limits:
//! the one place a node's numbers come from. Values no key sets yet are
//! the named constants below.

use std::time::Duration;

use toil_conns::{ConnLimits, ConnTimeouts};
use toil_edge::quic::ConnectionLimits;
use toil_edge::serve::EdgeSettings;
use toil_edge::sessions::SessionLimits;
use toil_runtime::admission::AdmissionLimits;
use toil_runtime::{Limits, RuntimeConfig};

use toil_channels::ChannelSettings;

use crate::{Config, LimitsConfig};

/// Guest stdout+stderr logged per call; the rest is dropped and counted.
pub const MAX_LOG_BYTES_PER_CALL: usize = 64 << 10;
/// Largest artifact a node accepts.
pub const MAX_ARTIFACT_BYTES: usize = 32 << 20;
/// The epoch ticker's period: the granularity of call deadlines, and how
/// long a busy guest runs before it yields its worker thread to the other
/// connections on it. Shorter than most hosts' (Spin ticks every 10 ms,
/// `wasmtime serve` every 50 ms) because a stream box's neighbours are
/// realtime sessions; the price is a wake-up of the ticker thread per tick
/// while a guest call runs, one every few ticks while calls start and end
/// between wake-ups (a call then runs up to that long before its first
/// yield), and none while none run (`toil_runtime`'s `epoch` module).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Inbound frames a session reads ahead of its box.
pub const INBOUND_QUEUE_FRAMES: usize = 32;
/// Per QUIC stream: unread bytes the node buffers (capped by the
/// connection's receive window).
pub const STREAM_RECEIVE_WINDOW: u32 = 256 << 10;
/// Per QUIC connection: bytes sent the client has not acknowledged.
pub const SEND_WINDOW: u64 = 1 << 20;
/// Per QUIC connection: datagrams buffered each way, in bytes.
pub const DATAGRAM_BUFFER: usize = 256 << 10;

impl LimitsConfig {
    /// What every guest call runs under.
    pub fn guest_limits(&self) -> Limits {
        Limits {
            deadline: self.deadline,
            memory_bytes: self.memory_bytes,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            max_response_headers: self.max_response_headers,
            max_response_header_bytes: self.max_response_header_bytes,
            max_log_bytes_per_call: MAX_LOG_BYTES_PER_CALL,
            max_frame_bytes: self.max_frame_bytes,
            max_outbound_bytes_per_event: self.max_outbound_bytes_per_event,
            max_box_streams: self.max_box_streams,
            hibernate_after: self.hibernate_after,
        }
    }

    /// The wasm runtime: the limits, the instance pools (within the
    /// process's `max_map_count`, if known), request admission.
    pub fn runtime(&self, max_map_count: Option<u64>) -> RuntimeConfig {
        RuntimeConfig {
            limits: self.guest_limits(),
            max_instances: self.max_instances,
            request_slots: self.request_pool_slots(max_map_count),
            session_instances: self.max_sessions as u32,
            max_artifact_bytes: MAX_ARTIFACT_BYTES,
            epoch_tick: EPOCH_TICK,
            admission: AdmissionLimits {
                max_running: self.max_requests_per_domain,
                max_waiting: self.request_queue_per_domain,
                max_wait: self.request_queue_timeout,
            },
        }
    }

    /// Stream-session caps.
    pub fn sessions(&self) -> SessionLimits {
        SessionLimits {
            max_sessions: self.max_sessions,
            max_sessions_per_domain: self.max_sessions_per_domain,
            max_sessions_per_connection: self.max_sessions_per_connection,
            inbound_queue_frames: INBOUND_QUEUE_FRAMES,
            send_stall_timeout: self.send_stall_timeout,
        }
    }

    /// What one QUIC connection may make the node hold.
    pub fn quic_connection(&self) -> ConnectionLimits {
        ConnectionLimits {
            idle_timeout: self.idle_timeout,
            receive_window: self.connection_receive_window,
            stream_receive_window: STREAM_RECEIVE_WINDOW,
            send_window: SEND_WINDOW,
            max_bidi_streams: self.max_streams_per_connection,
            datagram_buffer: DATAGRAM_BUFFER,
        }
    }

    /// The edge's listeners. The TCP connection cap is what the config
    /// asks; a node lowers it to what its open-file limit allows.
    pub fn edge(&self) -> EdgeSettings {
        let conns = ConnLimits { max_total: self.max_connections, max_per_ip: self.max_connections_per_address };
        EdgeSettings {
            max_request_body: self.max_request_body,
            sessions: self.sessions(),
            conns,
            quic_conns: conns,
            timeouts: ConnTimeouts { header: self.header_timeout, idle: self.request_idle_timeout },
            max_streams_per_connection: self.max_streams_per_connection,
            body_timeout: self.body_timeout,
        }
    }
}

/// Longest a channel publish waits for NATS, at most; a publish also
/// leaves a quarter of the call's deadline to the guest.
pub const CHANNEL_PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Config {
    /// The node's channels: history, limits, and how long a publish may wait.
    pub fn channel_settings(&self) -> ChannelSettings {
        let c = &self.channels;
        ChannelSettings {
            history_size: c.history_size,
            history_ttl: c.history_ttl,
            subscriber_queue: c.subscriber_queue,
            max_message_bytes: c.max_message_bytes,
            max_subscriptions_per_box: c.max_subscriptions_per_box,
            max_topics_per_domain: c.max_topics_per_domain,
            publish_timeout: CHANNEL_PUBLISH_TIMEOUT.min(self.limits.deadline * 3 / 4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_runtime_pool_fits_the_default_sessions_and_request_shares() {
        let l = LimitsConfig::default();
        let runtime = l.runtime(Some(65_530));
        assert_eq!(runtime.max_instances, l.max_instances);
        assert_eq!(runtime.request_slots, l.max_instances, "requests may use every instance");
        assert_eq!(runtime.session_instances as usize, l.sessions().max_sessions);
        assert!(runtime.admission.max_running <= l.instances_for_requests());
        assert_eq!(l.edge().sessions, l.sessions());
        assert_eq!(runtime.limits.deadline, l.deadline);
    }
}
