//! Admission of stream sessions: the per-node and per-domain caps, the
//! session's share of the node's instances, and the session counters. No
//! I/O: the WebTransport driver asks for a permit before it creates a box
//! and holds it for the session's life, hibernating or not, so a box that
//! wakes always has its instance (requests use what sessions leave).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use toil_metrics::{Counter, Gauge, Registry};
use toil_runtime::admission::{InstanceBudget, InstanceShare};

use crate::metrics::DomainSessionMetrics;

/// How many sessions a node accepts and how it treats them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Open sessions on this node, all domains together.
    pub max_sessions: usize,
    /// Open sessions of any one domain.
    pub max_sessions_per_domain: usize,
    /// Sessions one QUIC connection may carry at once (WebTransport
    /// pooling); announced to clients as `SETTINGS_WEBTRANSPORT_MAX_SESSIONS`.
    pub max_sessions_per_connection: usize,
    /// Inbound frames read ahead of the box; a full queue stops reading, and
    /// QUIC flow control then slows the client.
    pub inbound_queue_frames: usize,
    /// How long writing a box's frames to a client that does not read may
    /// stall before the session is closed as too slow.
    pub send_stall_timeout: Duration,
}

/// Why a session was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the node's limit of {0} open sessions is reached")]
    NodeFull(usize),
    #[error("the domain's limit of {0} open sessions is reached")]
    DomainFull(usize),
    #[error("all {0} of the node's instances (limits.maxInstances) are held by requests, daemons and sessions")]
    NoInstance(usize),
}

/// The open sessions of a node, by domain.
pub struct SessionTable {
    limits: SessionLimits,
    instances: Arc<InstanceBudget>,
    state: Mutex<Open>,
    next_id: AtomicU64,
    registry: Registry,
    metrics: Mutex<HashMap<String, Arc<DomainSessionMetrics>>>,
    worker_boxes: Mutex<HashMap<Option<usize>, (Arc<Gauge>, Arc<Counter>)>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_domain: HashMap<String, usize>,
}

/// Held by a session while it is open; releases its slot on drop.
pub struct SessionPermit {
    table: Arc<SessionTable>,
    domain: String,
    pub id: u64,
    pub metrics: Arc<DomainSessionMetrics>,
    worker_boxes: Arc<Gauge>,
    _instance: InstanceShare,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut open = self.table.state.lock().expect("session table");
        open.total -= 1;
        if let Some(n) = open.by_domain.get_mut(&self.domain) {
            *n -= 1;
            if *n == 0 {
                open.by_domain.remove(&self.domain);
            }
        }
        self.metrics.open.dec();
        self.worker_boxes.dec();
    }
}

impl SessionTable {
    /// Sessions under `limits`, each holding a share of `instances`.
    pub fn new(limits: SessionLimits, instances: Arc<InstanceBudget>, registry: Registry) -> Arc<Self> {
        Arc::new(SessionTable {
            limits,
            instances,
            state: Mutex::default(),
            next_id: AtomicU64::new(1),
            registry,
            metrics: Mutex::default(),
            worker_boxes: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn metrics(&self, domain: &str) -> Arc<DomainSessionMetrics> {
        let mut map = self.metrics.lock().expect("session metrics");
        map.entry(domain.to_string()).or_insert_with(|| Arc::new(DomainSessionMetrics::new(&self.registry, domain))).clone()
    }

    /// A slot for a new session of `domain` on QUIC worker `worker` (`None`:
    /// not on one), or why there is none.
    pub fn admit(self: &Arc<Self>, domain: &str, worker: Option<usize>) -> Result<SessionPermit, Refused> {
        let metrics = self.metrics(domain);
        let mut open = self.state.lock().expect("session table");
        let refused = if open.total >= self.limits.max_sessions {
            Some(Refused::NodeFull(self.limits.max_sessions))
        } else if open.by_domain.get(domain).copied().unwrap_or(0) >= self.limits.max_sessions_per_domain {
            Some(Refused::DomainFull(self.limits.max_sessions_per_domain))
        } else {
            None
        };
        let instance = match refused {
            None => self.instances.take().ok_or(Refused::NoInstance(self.instances.max())),
            Some(r) => Err(r),
        };
        let instance = instance.inspect_err(|_| metrics.refused.inc())?;
        open.total += 1;
        *open.by_domain.entry(domain.to_string()).or_default() += 1;
        drop(open);
        metrics.opened.inc();
        metrics.open.inc();
        let (worker_boxes, worker_sessions) = self.worker_metrics(worker);
        worker_boxes.inc();
        worker_sessions.inc();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(SessionPermit { table: self.clone(), domain: domain.to_string(), id, metrics, worker_boxes, _instance: instance })
    }

    /// Resident boxes now and sessions so far on a QUIC worker (`None`: not on one).
    fn worker_metrics(&self, worker: Option<usize>) -> (Arc<Gauge>, Arc<Counter>) {
        let mut map = self.worker_boxes.lock().expect("worker gauges");
        map.entry(worker)
            .or_insert_with(|| {
                let label = worker.map_or_else(|| "-".to_string(), |w| w.to_string());
                let l = [("worker", label.as_str())];
                (
                    self.registry.gauge("toil_stream_live_boxes", "Resident stream boxes, by QUIC worker.", &l),
                    self.registry.counter("toil_stream_sessions_by_worker_total", "Stream sessions opened, by QUIC worker.", &l),
                )
            })
            .clone()
    }

    /// Open sessions on the node.
    pub fn open(&self) -> usize {
        self.state.lock().expect("session table").total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `max_sessions` per node and `per_domain` per domain.
    fn table(max_sessions: usize, per_domain: usize, instances: &Arc<InstanceBudget>) -> Arc<SessionTable> {
        let limits = SessionLimits {
            max_sessions,
            max_sessions_per_domain: per_domain,
            max_sessions_per_connection: 1,
            inbound_queue_frames: 32,
            send_stall_timeout: Duration::from_secs(10),
        };
        SessionTable::new(limits, instances.clone(), Registry::new())
    }

    #[test]
    fn caps_are_enforced_and_released() {
        let table = table(3, 2, &InstanceBudget::new(4));
        let a1 = table.admit("a", Some(0)).unwrap();
        let _a2 = table.admit("a", Some(1)).unwrap();
        assert_eq!(table.admit("a", None).err(), Some(Refused::DomainFull(2)));
        let _b1 = table.admit("b", None).unwrap();
        assert_eq!(table.admit("b", None).err(), Some(Refused::NodeFull(3)));
        assert_ne!(a1.id, _b1.id);
        drop(a1);
        assert_eq!(table.open(), 2);
        assert!(table.admit("a", None).is_ok());
        assert_eq!(table.metrics("a").refused.get(), 1);
        assert_eq!(table.metrics("b").refused.get(), 1);
    }

    #[test]
    fn a_session_holds_a_share_of_the_nodes_instances() {
        let instances = InstanceBudget::new(4);
        let table = table(3, 3, &instances);
        // Requests hold three of the four instances: one session fits.
        let requests: Vec<_> = (0..3).map(|_| instances.take().unwrap()).collect();
        let first = table.admit("a", None).unwrap();
        assert_eq!(table.admit("a", None).err(), Some(Refused::NoInstance(4)));
        assert_eq!(table.metrics("a").refused.get(), 1);
        assert!(instances.take().is_none(), "the session's share is not a request's");
        drop(requests);
        let _more: Vec<_> = (0..2).map(|_| table.admit("a", None).unwrap()).collect();
        assert_eq!(instances.held(), 3);
        drop(first);
        assert_eq!((instances.held(), table.open()), (2, 2), "a closed session gives its share back");
    }
}
