//! The snapshot file: a snapshot that cannot be written leaves no partial file behind.

use std::sync::Arc;

use openraft::RaftSnapshotBuilder;

use keyraft_raft::state_machine::StateMachineStore;
use keyraft_state::{Durable, StateMachine};

#[tokio::test]
async fn a_failed_snapshot_write_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(&dir.path().join("store")).unwrap();
    let sm = Arc::new(StateMachine::open(&durable).unwrap());
    let mut store = StateMachineStore::new(sm, dir.path()).unwrap();
    let snapshots = dir.path().join("snapshots");
    let current = snapshots.join("current.snap");
    let partial = snapshots.join("current.snap.tmp");

    // A directory where the snapshot goes makes the final step (the rename) fail after
    // the whole snapshot was written, as a full disk would fail a write half-way.
    std::fs::create_dir_all(current.join("in-the-way")).unwrap();
    assert!(store.build_snapshot().await.is_err());
    assert!(!partial.exists(), "the partial snapshot was left behind");

    std::fs::remove_dir_all(&current).unwrap();
    store.build_snapshot().await.unwrap();
    assert!(current.is_file());
    assert!(!partial.exists());
}
