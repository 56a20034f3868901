//! Channel metrics, labelled by domain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use toil_metrics::{Counter, Gauge, Histogram, Registry};

use crate::log::ResyncReason;

/// One domain's channel metrics.
pub struct DomainChannelMetrics {
    pub published: Arc<Counter>,
    pub delivered: Arc<Counter>,
    pub subscribers: Arc<Gauge>,
    /// Publication on any node → the box's `channel` hook has returned.
    pub fan_out: Arc<Histogram>,
    resyncs: [Arc<Counter>; 5],
}

impl DomainChannelMetrics {
    pub fn resync(&self, reason: ResyncReason) {
        let i = ResyncReason::ALL.iter().position(|r| *r == reason).expect("every reason is listed");
        self.resyncs[i].inc();
    }
}

/// The node's channel metrics: one set per domain, made on first use.
#[derive(Clone)]
pub struct ChannelMetrics {
    registry: Registry,
    domains: Arc<Mutex<HashMap<Arc<str>, Arc<DomainChannelMetrics>>>>,
    /// Transport failures, by operation (publish, subscribe).
    pub transport_errors: [Arc<Counter>; 2],
}

impl ChannelMetrics {
    pub fn new(registry: &Registry) -> Self {
        let help = "Channel transport (NATS) operations that failed: publishes refused to the guest as Unavailable, subscriptions that had to be re-established.";
        ChannelMetrics {
            registry: registry.clone(),
            domains: Arc::default(),
            transport_errors: ["publish", "subscribe"].map(|op| registry.counter("toil_channel_transport_errors_total", help, &[("op", op)])),
        }
    }

    pub fn domain(&self, domain: &Arc<str>) -> Arc<DomainChannelMetrics> {
        let mut domains = self.domains.lock().expect("channel metrics");
        if let Some(m) = domains.get(domain) {
            return m.clone();
        }
        let (r, l) = (&self.registry, [("domain", &**domain)]);
        let m = Arc::new(DomainChannelMetrics {
            published: r.counter("toil_channel_published_total", "Channel publications accepted (numbered and stored).", &l),
            delivered: r.counter("toil_channel_delivered_total", "Channel messages and resyncs delivered to a box's channel hook.", &l),
            subscribers: r.gauge("toil_channel_subscribers", "Subscriptions of boxes on this node.", &l),
            fan_out: r.histogram(
                "toil_channel_fan_out_seconds",
                "From a publication reaching this node to the subscribed box's channel hook returning.",
                &l,
            ),
            resyncs: ResyncReason::ALL.map(|reason| {
                r.counter(
                    "toil_channel_resync_total",
                    "Resyncs given to boxes instead of messages, by reason (evicted, epoch, ahead, overflow: a box's queue was full, gap).",
                    &[("domain", &**domain), ("reason", reason.as_str())],
                )
            }),
        });
        domains.insert(domain.clone(), m.clone());
        m
    }
}
