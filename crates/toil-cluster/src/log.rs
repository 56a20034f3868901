//! The cluster log as the tiers on a node use it: propose a [`Command`],
//! read the [`ClusterState`] applied here, and hear when it changes.
//!
//! The daemon tier claims ticks through it and the deployer commits
//! releases through it. Two logs implement [`ClaimLog`]: [`LocalLog`]
//! applies commands at once to an in-memory state (one node: `toil dev`),
//! and the raft log of `toil node` replicates them first (`toil-raft`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::{Applied, ClusterState, Command};

/// Why the log did not take a command. The two kinds are told apart because
/// only the first is worth proposing again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// No leader is known, forwarding to it failed, or the command was not
    /// committed in time: the same command may commit if proposed again.
    #[error("the cluster log is unavailable: {0}")]
    Unavailable(String),
    /// The log itself failed on this node (its storage, a stopped raft):
    /// proposing again does not help.
    #[error("the cluster log failed: {0}")]
    Failed(String),
}

/// A command's commit, as the log answers it.
pub type Proposal<'a> = Pin<Box<dyn Future<Output = Result<Applied, LogError>> + Send + 'a>>;

/// The cluster log as a node's tiers use it.
pub trait ClaimLog: Send + Sync + 'static {
    /// Commits `command` and returns what applying it did.
    fn propose(&self, command: Command) -> Proposal<'_>;
    /// A snapshot of the state applied on this node.
    fn state(&self) -> ClusterState;
    /// Changes whenever this node applies a command.
    fn changes(&self) -> watch::Receiver<()>;
}

/// A one-node log: commands apply at once, in order.
pub struct LocalLog {
    state: Mutex<ClusterState>,
    changed: watch::Sender<()>,
}

impl Default for LocalLog {
    fn default() -> Self {
        LocalLog { state: Mutex::default(), changed: watch::Sender::new(()) }
    }
}

impl ClaimLog for LocalLog {
    fn propose(&self, command: Command) -> Proposal<'_> {
        let applied = self.state.lock().expect("cluster state").apply(&command);
        self.changed.send_replace(());
        Box::pin(std::future::ready(Ok(applied)))
    }

    fn state(&self) -> ClusterState {
        self.state.lock().expect("cluster state").clone()
    }

    fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}
