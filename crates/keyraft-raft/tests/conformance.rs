//! openraft's storage conformance suite, run against Keyraft's log store and state
//! machine adapter (the same pair a node runs, on one `Durable` in a temp dir).

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use keyraft_raft::log_store::LogStore;
use keyraft_raft::state_machine::StateMachineStore;
use keyraft_raft::TypeConfig;
use keyraft_state::{Durable, StateMachine};

struct Builder;

fn storage_error(e: impl std::fmt::Display) -> StorageError<TypeConfig> {
    use openraft::type_config::TypeConfigExt;
    StorageError::read(TypeConfig::err_from_error(&std::io::Error::other(
        e.to_string(),
    )))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(storage_error)?;
        let durable = Durable::open(&dir.path().join("store")).map_err(storage_error)?;
        let log = LogStore::open(&durable).map_err(storage_error)?;
        let sm = StateMachine::open(&durable).map_err(storage_error)?;
        let store = StateMachineStore::new(Arc::new(sm), dir.path()).map_err(storage_error)?;
        Ok((dir, log, store))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("storage conformance");
}
