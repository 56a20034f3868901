//! Metric handles every tier's executor records into, labelled by domain and tier.

use std::sync::Arc;

use toil_abi::Tier;
use toil_metrics::{Counter, Gauge, Histogram, Registry};

use crate::admission::Busy;
use crate::fault::GuestFault;

const BUSY_KINDS: [&str; 3] = ["queue_full", "queue_timeout", "node_full"];
const FAULT_KINDS: [&str; 6] = ["trap", "deadline", "memory", "output_too_large", "abi", "node_full"];

/// The guest metrics of one domain's tier.
pub(crate) struct GuestMetrics {
    pub instances: Arc<Counter>,
    pub duration: Arc<Histogram>,
    pub live: Arc<Gauge>,
    faults: [Arc<Counter>; 6],
    busy: [Arc<Counter>; 3],
}

impl GuestMetrics {
    pub fn new(registry: &Registry, domain: &str, tier: Tier) -> Self {
        let tier = tier.name();
        let l = [("domain", domain), ("tier", tier)];
        GuestMetrics {
            instances: registry.counter("toil_instances_created_total", "Guest instances created.", &l),
            duration: registry.histogram(
                "toil_guest_call_duration_seconds",
                "Time of one guest call (a request from instantiation to reply, a stream event, a tick).",
                &l,
            ),
            live: registry.gauge("toil_live_instances", "Guest instances alive now.", &l),
            faults: FAULT_KINDS.map(|kind| {
                registry.counter(
                    "toil_guest_faults_total",
                    "Guest calls that failed, by cause (trap, deadline, memory, output_too_large, abi; node_full: no instance could be created).",
                    &[("domain", domain), ("tier", tier), ("kind", kind)],
                )
            }),
            busy: BUSY_KINDS.map(|kind| {
                registry.counter(
                    "toil_requests_refused_total",
                    "Requests refused with 503 before any guest code ran: the domain's share of instances was in use (queue_full, queue_timeout) or the node had none free (node_full).",
                    &[("domain", domain), ("tier", tier), ("reason", kind)],
                )
            }),
        }
    }

    pub fn busy(&self, b: &Busy) {
        let i = BUSY_KINDS.iter().position(|k| *k == b.kind()).expect("every refusal has a counter");
        self.busy[i].inc();
    }

    pub fn fault(&self, f: &GuestFault) {
        let i = FAULT_KINDS.iter().position(|k| *k == f.kind()).expect("every fault kind has a counter");
        self.faults[i].inc();
    }

    /// Counts an instance as alive until the guard drops.
    pub fn live_instance(&self) -> LiveGuard {
        self.instances.inc();
        LiveGuard::new(&self.live)
    }
}

/// Counts one in a gauge (live instances, hibernating boxes) until it drops.
pub(crate) struct LiveGuard(Arc<Gauge>);

impl LiveGuard {
    pub fn new(gauge: &Arc<Gauge>) -> Self {
        gauge.inc();
        LiveGuard(gauge.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
