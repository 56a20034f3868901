//! Settings for the runtime's tests. The node's defaults live in
//! `toil-config`; a test states the few values it depends on.

use std::time::Duration;

use toil_runtime::admission::AdmissionLimits;
use toil_runtime::{Limits, RuntimeConfig};

/// A `(@custom "toil.manifest" ...)` annotation carrying `bytes`.
pub fn manifest_section(bytes: &[u8]) -> String {
    let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
    format!("(@custom \"toil.manifest\" \"{escaped}\")")
}

/// Generous limits with a call deadline of `deadline_ms`.
pub fn limits(deadline_ms: u64) -> Limits {
    Limits {
        deadline: Duration::from_millis(deadline_ms),
        memory_bytes: 64 << 20,
        max_request_body: 1 << 20,
        max_response_body: 8 << 20,
        max_response_headers: 100,
        max_response_header_bytes: 64 << 10,
        max_log_bytes_per_call: 64 << 10,
        max_frame_bytes: 64 << 10,
        max_outbound_bytes_per_event: 1 << 20,
        max_box_streams: 8,
        hibernate_after: None,
    }
}

/// A runtime of `max_instances` instances for requests and daemons (and
/// a few for stream boxes); a domain may use them all.
pub fn config(limits: Limits, max_instances: u32) -> RuntimeConfig {
    let admission = AdmissionLimits { max_running: max_instances as usize, max_waiting: 64, max_wait: limits.deadline };
    RuntimeConfig {
        limits,
        max_instances,
        request_slots: max_instances,
        session_instances: 4,
        max_artifact_bytes: 32 << 20,
        epoch_tick: Duration::from_millis(1),
        admission,
    }
}
