//! The raft log and the state machine, persisted in one redb file
//! (`<data dir>/raft.redb`).
//!
//! - `log`: index → entry (JSON). Appends, truncations and purges are
//!   transactions committed durably before openraft is told they are done.
//! - `meta`: the vote, the last purged log id, the applied state (the
//!   [`ClusterState`] with the last applied log id and membership, rewritten
//!   in the same transaction as each applied batch) and the last snapshot.
//!
//! So a node killed at any point restarts with its vote, its log and a
//! state machine that matches a prefix of the log; openraft re-applies the
//! committed rest. `tests/storage_suite.rs` runs openraft's storage
//! conformance suite against this store.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use toil_cluster::ClusterState;
use tokio::sync::watch;

use crate::TypeConfig;

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// Runs a write transaction, whose commit waits for fsync, without stalling
/// the runtime: the worker thread hands its other tasks (such as a daemon
/// tick due now) to another thread first.
fn durably<T>(write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    tokio::task::block_in_place(write)
}

/// The database both halves share.
#[derive(Clone)]
struct Db(Arc<Database>);

impl Db {
    fn get<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let tx = self.0.begin_read().map_err(io_err)?;
        let table = tx.open_table(META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    fn put(&self, key: &str, value: &impl Serialize) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        durably(|| {
            let tx = self.0.begin_write().map_err(io_err)?;
            tx.open_table(META).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
    }
}

/// Opens (or creates) the store of a node.
pub fn open(dir: &Path) -> anyhow::Result<(LogStore, StateMachine)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("raft.redb");
    let db = Database::create(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.commit()?;
    let db = Db(Arc::new(db));
    let applied: AppliedState = db.get(APPLIED)?.unwrap_or_default();
    let (changed, _) = watch::channel(());
    let sm = StateMachine { db: db.clone(), applied: Arc::new(Mutex::new(applied)), changed: Arc::new(changed) };
    Ok((LogStore { db }, sm))
}

/// The raft log.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

fn to_bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> io::Result<Vec<Entry>> {
        let tx = self.db.0.begin_read().map_err(io_err)?;
        let table = tx.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(to_bounds(&range)).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(io_err)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.db.get(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.db.get(PURGED)?;
        let tx = self.db.0.begin_read().map_err(io_err)?;
        let table = tx.open_table(LOG).map_err(io_err)?;
        let last = match table.last().map_err(io_err)? {
            Some((_, v)) => Some(serde_json::from_slice::<Entry>(v.value()).map_err(io_err)?.log_id),
            None => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        self.db.put(VOTE, vote)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = durably(|| {
            let tx = self.db.0.begin_write().map_err(io_err)?;
            {
                let mut table = tx.open_table(LOG).map_err(io_err)?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry).map_err(io_err)?;
                    table.insert(entry.log_id.index, bytes.as_slice()).map_err(io_err)?;
                }
            }
            // Durable (fsync) when commit returns: only then is the append acknowledged.
            tx.commit().map_err(io_err)
        });
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        durably(|| {
            let tx = self.db.0.begin_write().map_err(io_err)?;
            tx.open_table(LOG).map_err(io_err)?.retain_in(from.., |_, _| false).map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        let bytes = serde_json::to_vec(&log_id).map_err(io_err)?;
        durably(|| {
            let tx = self.db.0.begin_write().map_err(io_err)?;
            tx.open_table(META).map_err(io_err)?.insert(PURGED, bytes.as_slice()).map_err(io_err)?;
            tx.open_table(LOG).map_err(io_err)?.retain_in(..=log_id.index, |_, _| false).map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
    }
}

/// What the state machine has applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogIdOf<TypeConfig>>,
    pub membership: StoredMembershipOf<TypeConfig>,
    pub state: ClusterState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

/// The replicated state machine: [`ClusterState`] plus raft bookkeeping.
#[derive(Clone)]
pub struct StateMachine {
    db: Db,
    applied: Arc<Mutex<AppliedState>>,
    changed: Arc<watch::Sender<()>>,
}

impl StateMachine {
    /// A copy of what is applied.
    pub fn applied(&self) -> AppliedState {
        self.applied.lock().expect("applied state").clone()
    }

    /// Changes after every applied batch.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, Vec<u8>>> {
        let applied = self.applied();
        let data = serde_json::to_vec(&applied.state).map_err(io_err)?;
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: applied.last_applied, last_membership: applied.membership };
        self.db.put(SNAPSHOT, &StoredSnapshot { meta: meta.clone(), data: data.clone() })?;
        Ok(openraft::Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        let a = self.applied.lock().expect("applied state");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut next = self.applied();
        let mut replies = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            next.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(command) => Some(next.state.apply(&command)),
                EntryPayload::Membership(m) => {
                    next.membership = openraft::StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            };
            replies.extend(responder.map(|r| (r, reply)));
        }
        // The state and the log id it reflects are written together, then published.
        self.db.put(APPLIED, &next)?;
        *self.applied.lock().expect("applied state") = next;
        self.changed.send_replace(());
        for (responder, reply) in replies {
            responder.send(reply);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, snapshot: Vec<u8>) -> io::Result<()> {
        let state: ClusterState = serde_json::from_slice(&snapshot).map_err(io_err)?;
        let next = AppliedState { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), state };
        self.db.put(SNAPSHOT, &StoredSnapshot { meta: meta.clone(), data: snapshot })?;
        self.db.put(APPLIED, &next)?;
        *self.applied.lock().expect("applied state") = next;
        self.changed.send_replace(());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>> {
        Ok(self.db.get::<StoredSnapshot>(SNAPSHOT)?.map(|s| openraft::Snapshot { meta: s.meta, snapshot: s.data }))
    }
}
