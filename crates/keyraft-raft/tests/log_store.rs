//! The log store: what openraft was told is durable is still there after a reopen or a
//! crash, truncation and purging keep the log state right.
//!
//! A "crash" is simulated by copying the store's directory while the store is still
//! open: the copy holds what had reached the files, nothing of what sled still buffered
//! in memory (sled itself only writes out every 500 ms). Torn writes and damaged
//! records are tested in the module's unit tests.

use std::collections::BTreeSet;
use std::path::Path;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::{Membership, Vote};

use keyraft_raft::log_store::LogStore;
use keyraft_raft::typ::{Entry, LogId};
use keyraft_raft::TypeConfig;
use keyraft_state::{Command, Durable, Op};

const LEADER: u64 = 1;

fn lid(term: u64, index: u64) -> LogId {
    log_id::<TypeConfig>(term, LEADER, index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry::new_blank(lid(term, index))
}

fn normal(term: u64, index: u64) -> Entry {
    Entry::new_normal(
        lid(term, index),
        std::sync::Arc::new(Command {
            request_id: format!("req-{index}"),
            time_ms: 1_700_000_000_000 + index,
            op: Op::Tick {
                node_id: LEADER,
                rotations: Vec::new(),
            },
        }),
    )
}

fn membership(term: u64, index: u64) -> Entry {
    let voters: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
    Entry::new_membership(
        lid(term, index),
        Membership::new_with_defaults(vec![voters], []),
    )
}

fn open(dir: &Path) -> (Durable, LogStore) {
    let durable = Durable::open(dir).unwrap();
    let store = LogStore::open(&durable).unwrap();
    (durable, store)
}

/// Appends and waits for the durability callback.
async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

async fn indexes(store: &mut LogStore) -> Vec<u64> {
    let entries = store.try_get_log_entries(..).await.unwrap();
    entries.iter().map(|e| e.index()).collect()
}

/// Copies a directory tree: a crash image of an open store.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn entries_vote_committed_and_purge_point_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = vec![membership(1, 0)];
    written.extend((1..=10).map(|i| {
        if i % 2 == 0 {
            normal(1, i)
        } else {
            blank(1, i)
        }
    }));
    written.push(membership(2, 11));
    written.push(normal(2, 12));
    {
        let (_durable, mut store) = open(dir.path());
        store
            .save_vote(&Vote::new_committed(2, LEADER))
            .await
            .unwrap();
        append(&mut store, written[..6].to_vec()).await;
        append(&mut store, written[6..].to_vec()).await;
        store.save_committed(Some(lid(2, 11))).await.unwrap();
        store.purge(lid(1, 4)).await.unwrap();
    }

    let (_durable, mut store) = open(dir.path());
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, LEADER))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(lid(2, 11)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(1, 4)));
    assert_eq!(state.last_log_id, Some(lid(2, 12)));
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries, written[5..].to_vec());

    // The reopened store carries on from where it was.
    append(&mut store, vec![blank(3, 13)]).await;
    assert_eq!(indexes(&mut store).await, (5..=13).collect::<Vec<_>>());
    store.save_committed(None).await.unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn truncate_and_purge_keep_the_log_state() {
    let dir = tempfile::tempdir().unwrap();
    let (_durable, mut store) = open(dir.path());

    let state = store.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
    assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
    assert_eq!(store.read_vote().await.unwrap(), None);
    assert_eq!(store.read_committed().await.unwrap(), None);

    append(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
    assert!(store.try_get_log_entries(3..3).await.unwrap().is_empty());
    let range: Vec<u64> = store
        .try_get_log_entries(3..=5)
        .await
        .unwrap()
        .iter()
        .map(|e| e.index())
        .collect();
    assert_eq!(range, vec![3, 4, 5]);
    let limited = store.limited_get_log_entries(5, 7).await.unwrap();
    assert!(!limited.is_empty() && limited.len() <= 2);
    assert_eq!(limited[0].log_id(), lid(1, 5));

    // Truncation after the last entry changes nothing; in the middle it cuts the tail.
    store.truncate_after(Some(lid(1, 11))).await.unwrap();
    assert_eq!(indexes(&mut store).await, (1..=10).collect::<Vec<_>>());
    store.truncate_after(Some(lid(1, 7))).await.unwrap();
    assert_eq!(indexes(&mut store).await, (1..=7).collect::<Vec<_>>());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(state.last_log_id, Some(lid(1, 7)));

    // A new leader's entries replace the truncated ones.
    append(&mut store, vec![blank(2, 8), blank(2, 9)]).await;
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(lid(2, 9))
    );

    // Truncating everything empties the log without a purge point.
    store.truncate_after(None).await.unwrap();
    assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
    let state = store.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));

    append(&mut store, (1..=5).map(|i| blank(3, i)).collect()).await;
    store.purge(lid(3, 2)).await.unwrap();
    assert_eq!(indexes(&mut store).await, vec![3, 4, 5]);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(3, 2)));
    assert_eq!(state.last_log_id, Some(lid(3, 5)));

    // Purging every entry leaves the purge point as the last log id.
    store.purge(lid(3, 5)).await.unwrap();
    assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(3, 5)));
    assert_eq!(state.last_log_id, Some(lid(3, 5)));

    // A purge point never moves back.
    store.purge(lid(3, 3)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_purged_log_id,
        Some(lid(3, 5))
    );

    // Purging beyond the log (a snapshot was installed) moves both ids.
    store.purge(lid(4, 20)).await.unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(4, 20)));
    assert_eq!(state.last_log_id, Some(lid(4, 20)));
    append(&mut store, vec![blank(4, 21), blank(4, 22)]).await;
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(4, 20)));
    assert_eq!(state.last_log_id, Some(lid(4, 22)));
    assert_eq!(indexes(&mut store).await, vec![21, 22]);

    // Truncation and purging were durable when they returned.
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    let (_copy, mut crashed) = open(image.path());
    assert_eq!(
        crashed.get_log_state().await.unwrap(),
        store.get_log_state().await.unwrap()
    );
    assert_eq!(indexes(&mut crashed).await, vec![21, 22]);
}

#[tokio::test]
async fn append_calls_back_once_the_entries_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (_durable, mut store) = open(dir.path());
    let mut reader = store.get_log_reader().await;

    // Several appends in flight at once: each is readable when `append` returns, and
    // each callback reports success.
    let mut pending = Vec::new();
    for i in 0..5u64 {
        let entries: Vec<Entry> = (i * 10 + 1..=i * 10 + 10).map(|j| normal(1, j)).collect();
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        let visible = reader.try_get_log_entries(..).await.unwrap();
        assert_eq!(visible.len() as u64, i * 10 + 10);
        pending.push(rx);
    }
    for rx in pending {
        rx.await.unwrap().unwrap();
    }

    // Crash right after the callbacks: every entry is on disk already.
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    {
        let (_copy, mut crashed) = open(image.path());
        assert_eq!(indexes(&mut crashed).await, (1..=50).collect::<Vec<_>>());
        assert_eq!(
            crashed.get_log_state().await.unwrap().last_log_id,
            Some(lid(1, 50))
        );
    }

    // Likewise a vote is on disk when `save_vote` returns.
    store.save_vote(&Vote::new(2, 3)).await.unwrap();
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    let (_copy, mut crashed) = open(image.path());
    assert_eq!(crashed.read_vote().await.unwrap(), Some(Vote::new(2, 3)));

    // After all that, a clean reopen sees the same log.
    drop(store);
    drop(reader);
    drop(_durable);
    let (_durable, mut store) = open(dir.path());
    assert_eq!(indexes(&mut store).await, (1..=50).collect::<Vec<_>>());
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
}
