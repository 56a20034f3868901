//! The node's log of commands: raft on a cluster node, an in-memory log in
//! `toil dev` (on which this node owns every daemon).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use toil_cluster::{place, Applied, ClaimLog, ClusterState, Command, LocalLog, LogError, NodeId};
use toil_raft::ClusterNode;

/// The log of `cluster`'s raft node, or, without one, an in-memory log on
/// which node `node` owns every daemon.
pub fn open(cluster: Option<&Arc<ClusterNode>>, node: NodeId) -> Arc<dyn ClaimLog> {
    match cluster {
        Some(raft) => {
            tokio::spawn(raft.clone().place_daemons());
            Arc::new(RaftLog(raft.clone()))
        }
        None => {
            let log: Arc<dyn ClaimLog> = Arc::new(LocalLog::default());
            tokio::spawn(own_every_daemon(log.clone(), node));
            log
        }
    }
}

/// The raft log as the daemon tier's claim log.
struct RaftLog(Arc<ClusterNode>);

impl ClaimLog for RaftLog {
    fn propose(&self, command: Command) -> Pin<Box<dyn Future<Output = Result<Applied, LogError>> + Send + '_>> {
        Box::pin(async move { self.0.propose(command).await.map_err(LogError::from) })
    }

    fn state(&self) -> ClusterState {
        self.0.state()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.0.changes()
    }
}

/// `toil dev`: this node owns the daemon of every domain that has one.
async fn own_every_daemon(log: Arc<dyn ClaimLog>, node: NodeId) {
    let mut changes = log.changes();
    loop {
        let state = log.state();
        for command in place(&state.daemon_domains(), &[node], state.owners(), None, Duration::ZERO) {
            let _ = log.propose(command).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
