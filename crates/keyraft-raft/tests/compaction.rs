//! What the snapshot pacer (`keyraft_raft::compaction`) reads: the bytes appended to the
//! log and the size of the state on disk as of the last snapshot, including after a
//! restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::RaftSnapshotBuilder;

use keyraft_raft::log_store::LogStore;
use keyraft_raft::state_machine::StateMachineStore;
use keyraft_raft::typ::Entry;
use keyraft_raft::TypeConfig;
use keyraft_state::{Durable, StateMachine};

#[tokio::test]
async fn the_log_counts_appended_bytes_and_the_store_its_size_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(&dir.path().join("store")).unwrap();
    let mut log = LogStore::open(&durable).unwrap();
    let appended = log.appended_bytes();
    assert_eq!(appended.load(Ordering::Relaxed), 0);

    let entries: Vec<Entry> = (1..=20)
        .map(|i| Entry::new_blank(log_id::<TypeConfig>(1, 1, i)))
        .collect();
    let encoded: u64 = entries
        .iter()
        .map(|e| bincode::serialize(e).unwrap().len() as u64)
        .sum();
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
    assert_eq!(appended.load(Ordering::Relaxed), encoded);

    let sm = Arc::new(StateMachine::open(&durable).unwrap());
    let mut store = StateMachineStore::new(sm.clone(), dir.path()).unwrap();
    let size = store.snapshot_bytes();
    let at_start = size.load(Ordering::Relaxed);
    assert_eq!(at_start, sm.size_on_disk().unwrap());
    assert!(
        at_start > 0,
        "the state's sled database takes room from the start"
    );
    store.build_snapshot().await.unwrap();
    assert_eq!(size.load(Ordering::Relaxed), sm.size_on_disk().unwrap());

    // After a restart the state on disk stands for it.
    let reopened = StateMachineStore::new(sm.clone(), dir.path()).unwrap();
    let restored = reopened.snapshot_bytes().load(Ordering::Relaxed);
    assert_eq!(restored, sm.size_on_disk().unwrap());
}
