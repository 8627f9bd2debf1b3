//! The log store across a reopen: what openraft was told is durable is still there.

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::{blank_ent, log_id};
use openraft::type_config::TypeConfigExt;
use openraft::Vote;

use keyraft_raft::log_store::LogStore;
use keyraft_raft::TypeConfig;
use keyraft_state::Durable;

#[tokio::test]
async fn appended_entries_vote_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let durable = Durable::open(dir.path()).unwrap();
        let mut store = LogStore::open(&durable).unwrap();
        store.save_vote(&Vote::new(3, 2)).await.unwrap();
        let (tx, rx) = TypeConfig::oneshot();
        let entries: Vec<_> = (1..=10).map(|i| blank_ent::<TypeConfig>(3, 2, i)).collect();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        store
            .save_committed(Some(log_id::<TypeConfig>(3, 2, 8)))
            .await
            .unwrap();
        store.purge(log_id::<TypeConfig>(3, 2, 4)).await.unwrap();
        store
            .truncate_after(Some(log_id::<TypeConfig>(3, 2, 9)))
            .await
            .unwrap();
        // The next flush makes purge and truncate durable too.
        store.save_vote(&Vote::new(3, 2)).await.unwrap();
    }
    let durable = Durable::open(dir.path()).unwrap();
    let mut store = LogStore::open(&durable).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(
        store.read_committed().await.unwrap(),
        Some(log_id::<TypeConfig>(3, 2, 8))
    );
    let state = store.get_log_state().await.unwrap();
    assert_eq!(
        state.last_purged_log_id,
        Some(log_id::<TypeConfig>(3, 2, 4))
    );
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(3, 2, 9)));
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, (5..=9).collect::<Vec<_>>());

    // Purging everything leaves the purge point as the last log id.
    store.purge(log_id::<TypeConfig>(3, 2, 9)).await.unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(3, 2, 9)));
    assert!(store.try_get_log_entries(0..100).await.unwrap().is_empty());
}
