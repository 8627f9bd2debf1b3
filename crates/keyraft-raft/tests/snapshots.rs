//! Snapshots as the state machine adapter builds, serves and installs them: a view of the
//! state as of its log id that stays so while apply goes on, a build that leaves the
//! state durable, and the snapshot file of an earlier version taken over at start.

use std::sync::Arc;

use futures::stream;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::RaftSnapshotBuilder;

use keyraft_raft::state_machine::{encode_record, RecordReader, SnapshotData, StateMachineStore};
use keyraft_raft::typ::{Entry, LogId, SnapshotMeta};
use keyraft_raft::TypeConfig;
use keyraft_state::{Command, Durable, Op, StateError, StateMachine, StateSnapshot};

fn lid(index: u64) -> LogId {
    log_id::<TypeConfig>(1, 1, index)
}

/// A command every replica applies the same way and remembers by its request id.
fn entry(index: u64) -> Entry {
    Entry::new_normal(
        lid(index),
        std::sync::Arc::new(Command {
            request_id: format!("req-{index}"),
            time_ms: 1_700_000_000_000 + index,
            op: Op::Tick {
                node_id: 1,
                rotations: Vec::new(),
            },
        }),
    )
}

struct Node {
    _dir: tempfile::TempDir,
    sm: Arc<StateMachine>,
    store: StateMachineStore,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(&dir.path().join("store")).unwrap();
    let sm = Arc::new(StateMachine::open(&durable).unwrap());
    let store = StateMachineStore::new(sm.clone(), dir.path()).unwrap();
    Node {
        _dir: dir,
        sm,
        store,
    }
}

async fn apply(store: &mut StateMachineStore, indexes: std::ops::RangeInclusive<u64>) {
    let entries: Vec<_> = indexes.map(|i| Ok((entry(i), None))).collect();
    store.apply(stream::iter(entries)).await.unwrap();
}

/// `data` as a follower receives it, in pieces cut anywhere: written into `node`'s second
/// state tree. Data that ends inside a record is refused.
fn received(node: &Node, data: &[u8]) -> Result<SnapshotData, StateError> {
    let mut incoming = node.sm.receive()?;
    let mut reader = RecordReader::default();
    for piece in data.chunks(7) {
        incoming.write(reader.feed(piece))?;
    }
    reader.finish()?;
    Ok(SnapshotData::Received(incoming))
}

/// The records of a node's own snapshot.
fn records(data: &SnapshotData) -> Vec<(Vec<u8>, Vec<u8>)> {
    let SnapshotData::Local(view) = data else {
        panic!("not a node's own snapshot");
    };
    view.records().map(Result::unwrap).collect()
}

#[tokio::test]
async fn a_snapshot_is_the_state_as_of_its_log_id_while_apply_goes_on() {
    let mut leader = node();
    assert!(leader.store.get_current_snapshot().await.unwrap().is_none());
    apply(&mut leader.store, 1..=5).await;
    let (expected, _) = leader.sm.export().unwrap();
    assert!(!expected.records.is_empty());

    let snapshot = leader.store.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(lid(5)));
    // The node applies on, and flushes, while the snapshot is held (a transfer).
    apply(&mut leader.store, 6..=10).await;
    let flush = tokio::task::spawn_blocking({
        let sm = leader.sm.clone();
        move || sm.flush()
    });
    assert_eq!(records(&snapshot.snapshot), expected.records);

    let mut follower = node();
    follower
        .store
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    flush.await.unwrap().unwrap();
    assert_eq!(
        follower.store.applied_state().await.unwrap().0,
        Some(lid(5))
    );
    assert_eq!(follower.sm.export().unwrap().0.records, expected.records);
    // The follower applies on from where the snapshot ends, and so reaches the leader.
    apply(&mut follower.store, 6..=10).await;
    assert_eq!(
        follower.sm.export().unwrap().0.records,
        leader.sm.export().unwrap().0.records
    );
    let current = leader.store.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(lid(10)));
}

#[tokio::test]
async fn a_built_snapshot_is_on_disk_and_sent_as_records() {
    let mut leader = node();
    apply(&mut leader.store, 1..=3).await;
    let built = leader.store.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id, Some(lid(3)));
    drop(built);
    assert!(
        leader
            .store
            .snapshot_bytes()
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    // Received data is the records one after another; a truncated copy is refused and
    // leaves the follower's state as it was.
    let snapshot = leader.store.get_current_snapshot().await.unwrap().unwrap();
    let mut data = Vec::new();
    for (k, v) in records(&snapshot.snapshot) {
        encode_record(&k, &v, &mut data).unwrap();
    }
    let mut follower = node();
    apply(&mut follower.store, 1..=1).await;
    let before = follower.sm.export().unwrap().0.records;
    assert!(received(&follower, &data[..data.len() - 3]).is_err());
    assert_eq!(
        follower.store.applied_state().await.unwrap().0,
        Some(lid(1))
    );
    assert_eq!(follower.sm.export().unwrap().0.records, before);

    follower
        .store
        .install_snapshot(&snapshot.meta, received(&follower, &data).unwrap())
        .await
        .unwrap();
    assert_eq!(
        follower.store.applied_state().await.unwrap().0,
        Some(lid(3))
    );
    assert_eq!(
        follower.sm.export().unwrap().0.records,
        leader.sm.export().unwrap().0.records
    );
}

/// An earlier version kept the state of its last snapshot in `snapshots/current.snap`
/// and could purge the log before it while sled held an older state: a node that starts
/// on such a data directory installs the file if it is newer than its state, and then
/// removes it either way.
#[tokio::test]
async fn an_earlier_versions_snapshot_file_is_taken_over_at_start() {
    let mut source = node();
    apply(&mut source.store, 1..=4).await;
    let (state, meta) = source.sm.export().unwrap();
    let last_log_id: Option<LogId> = bincode::deserialize(&meta.last_applied.unwrap()).unwrap();
    let file_meta = SnapshotMeta {
        last_log_id,
        last_membership: Default::default(),
    };
    let file = bincode::serialize(&(
        &file_meta,
        bincode::serialize(&StateSnapshot {
            records: state.records.clone(),
        })
        .unwrap(),
    ))
    .unwrap();

    for (applied_before, expected) in [(2, lid(4)), (6, lid(6))] {
        let dir = tempfile::tempdir().unwrap();
        let durable = Durable::open(&dir.path().join("store")).unwrap();
        let sm = Arc::new(StateMachine::open(&durable).unwrap());
        let mut store = StateMachineStore::new(sm.clone(), dir.path()).unwrap();
        apply(&mut store, 1..=applied_before).await;
        drop(store);
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).unwrap();
        std::fs::write(snapshots.join("current.snap"), &file).unwrap();

        let mut store = StateMachineStore::new(sm.clone(), dir.path()).unwrap();
        assert_eq!(store.applied_state().await.unwrap().0, Some(expected));
        assert!(!snapshots.exists(), "the old snapshot file was left behind");
        if applied_before < 4 {
            assert_eq!(sm.export().unwrap().0.records, state.records);
        }
    }

    // A half-written file that a crash left, without a whole one, goes too.
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::write(snapshots.join("current.snap.tmp"), &file[..10]).unwrap();
    let durable = Durable::open(&dir.path().join("store")).unwrap();
    let sm = Arc::new(StateMachine::open(&durable).unwrap());
    let mut store = StateMachineStore::new(sm, dir.path()).unwrap();
    assert_eq!(store.applied_state().await.unwrap().0, None);
    assert!(!snapshots.exists());
}

/// Snapshot data arrives in pieces cut anywhere, inside a length or a record included:
/// every record reads back whole and in order, whatever the cut, and data that ends
/// inside a record is an error.
#[test]
fn records_read_back_whole_however_the_data_is_cut() {
    let mut data = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2000u32 {
        let key = format!("key-{i:05}").into_bytes();
        let value = vec![b'v'; (i % 300) as usize];
        encode_record(&key, &value, &mut data).unwrap();
        expected.push((key, value));
    }
    for piece in [1, 3, 7, 4096, data.len()] {
        let mut reader = RecordReader::default();
        let mut got = Vec::new();
        for part in data.chunks(piece) {
            got.extend(reader.feed(part));
        }
        reader.finish().unwrap();
        assert!(got == expected, "pieces of {piece} bytes");
    }
    for cut in [1, 4, 5, data.len() - 1] {
        let mut reader = RecordReader::default();
        let got = reader.feed(&data[..cut]);
        assert!(got.len() < expected.len());
        assert!(reader.finish().is_err(), "cut after {cut} bytes");
    }
}
