//! openraft's storage conformance suite against the redb store: the log and
//! the state machine must behave as openraft assumes (vote, appends,
//! truncations, purges, membership, snapshots), or a restarted or lagging
//! node could lose or re-apply entries.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;
use toil_raft::store::{self, LogStore, StateMachine};
use toil_raft::TypeConfig;

/// Each test of the suite gets a fresh store in its own directory, removed
/// when the guard drops.
struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let (log, sm) = store::open(dir.path()).map_err(|e| StorageError::read(TypeConfig::err_from_string(e)))?;
        Ok((dir, log, sm))
    }
}

// The store commits through `block_in_place`, which needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread")]
async fn the_redb_store_passes_openrafts_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(FreshStore).await
}
