//! The leader's placement of daemon owners on live nodes, and why each
//! move is made (it is logged).

use std::sync::Arc;
use std::time::Instant;

use openraft::ServerState;
use toil_cluster::lease::is_silent;
use toil_cluster::{place, Command, NodeId};

use super::ClusterNode;

impl ClusterNode {
    /// While this node leads: gives every domain whose release has a daemon
    /// a live owner and spreads owners over live nodes
    /// ([`toil_cluster::place`]). A node is dead once not heard from for the
    /// owner timeout ([`toil_cluster::lease::is_silent`]); a domain leaves
    /// its owner with a handoff of the owner lease.
    pub async fn place_daemons(self: Arc<Self>) {
        let mut leading: Option<(u64, Instant)> = None;
        let mut known_leader = None;
        let mut last_pass = Instant::now();
        loop {
            tokio::time::sleep(self.timing.heartbeat).await;
            let m = self.metrics();
            if m.current_leader != known_leader {
                known_leader = m.current_leader;
                tracing::info!(term = m.current_term, "raft leader: {}", known_leader.map_or("none".to_string(), |l| format!("node {l}")));
            }
            // A pass far later than asked means this process stalled: its
            // stamps of the others are stale, so they get time to answer again.
            let stalled = last_pass.elapsed() > 3 * self.timing.heartbeat;
            last_pass = Instant::now();
            if m.state != ServerState::Leader || stalled {
                leading = None;
                continue;
            }
            let now = Instant::now();
            let since = match leading {
                Some((term, since)) if term == m.current_term => since,
                _ => leading.insert((m.current_term, now)).1,
            };
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let (grace, timeout) = (self.timing.heartbeat, self.timing.owner_timeout);
            let heard = |n: NodeId| self.liveness.last_heard(n).max(Some(self.started));
            let live: Vec<NodeId> = voters.iter().copied().filter(|n| *n == self.id || !is_silent(now, heard(*n), since, grace, timeout)).collect();
            let state = self.state();
            let (owners, domains) = (state.owners().clone(), state.daemon_domains());
            for command in place(&domains, &live, &owners, Some(self.id), self.timing.owner_lease()) {
                let Command::Assign { domain, node, .. } = &command else {
                    continue;
                };
                let why = match owners.get(domain) {
                    None => "it had no owner".to_string(),
                    Some(o) if live.contains(&o.node) => format!("spreading owners: node {} owned two or more domains more than node {node}", o.node),
                    Some(o) if !voters.contains(&o.node) => format!("node {} left the cluster", o.node),
                    Some(o) => match self.liveness.last_heard(o.node) {
                        Some(t) => format!("node {} was not heard from for {} ms", o.node, t.elapsed().as_millis()),
                        None => format!("node {} was never heard from by this node", o.node),
                    },
                };
                match self.raft.client_write(command.clone()).await {
                    Ok(r) => tracing::info!(domain, node, "daemon owner: {domain} to node {node} ({why}); {:?}", r.data),
                    Err(e) => {
                        tracing::warn!("placing daemons: {e}");
                        break;
                    }
                }
            }
        }
    }
}
