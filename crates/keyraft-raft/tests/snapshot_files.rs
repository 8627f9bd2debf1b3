//! The snapshot file: a snapshot that cannot be written leaves no partial file behind,
//! and a received snapshot that cannot be written is not installed.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::RaftSnapshotBuilder;

use keyraft_raft::TypeConfig;

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

/// A follower that cannot write a snapshot it received (a full disk) must not install it
/// either: its log before the snapshot is gone, so a state newer than its newest
/// snapshot file would leave it unable to start again.
#[tokio::test]
async fn a_received_snapshot_that_cannot_be_written_is_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let durable = Durable::open(&dir.path().join(name).join("store")).unwrap();
        let sm = Arc::new(StateMachine::open(&durable).unwrap());
        StateMachineStore::new(sm, &dir.path().join(name)).unwrap()
    };
    let mut leader = open("leader");
    let mut follower = open("follower");
    let snapshot = leader.build_snapshot().await.unwrap();
    let mut meta = snapshot.meta.clone();
    meta.last_log_id = Some(log_id::<TypeConfig>(3, 1, 100));
    let current = dir.path().join("follower/snapshots/current.snap");

    std::fs::create_dir_all(current.join("in-the-way")).unwrap();
    let data = snapshot.snapshot.clone();
    assert!(follower.install_snapshot(&meta, data).await.is_err());
    assert_eq!(follower.applied_state().await.unwrap().0, None);

    std::fs::remove_dir_all(&current).unwrap();
    follower
        .install_snapshot(&meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(follower.applied_state().await.unwrap().0, meta.last_log_id);
    let stored = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(stored.meta.last_log_id, meta.last_log_id);
}
