//! The state machine adapter: openraft's `RaftStateMachine` over
//! [`keyraft_state::StateMachine`].
//!
//! openraft hands `apply` a stream of committed entries; we drain what is ready into one
//! batch, let the state machine apply it in one atomic sled batch together with the last
//! applied log id and the newest membership, and only then send the responses.
//!
//! Apply does not fsync: the entries are durable in the Raft log already, sled writes
//! the state out on its own, and after a crash openraft applies the committed entries
//! after the recovered `last_applied` again (see
//! [`keyraft_state::StateMachine::apply`]). For that the state must never be ahead of
//! the log on disk, so a node's adapter waits until the log store reports the entries
//! it applies synced ([`StateMachineStore::after_log`]).
//!
//! # Snapshots
//!
//! The state lives in sled, on disk, so a snapshot is not a copy of it:
//!
//! - **Building** one ([`RaftSnapshotBuilder::build_snapshot`]) writes what is applied
//!   to sled and syncs it ([`keyraft_state::StateMachine::durable_view`]). Its log id is
//!   a point the node can restart from without the log before it, so openraft may purge
//!   that log. It costs a flush and an `fdatasync`, not a copy of the state: a node of a
//!   375 MB state used to spend 20–25 s of CPU copying and encoding it, on every node at
//!   once, and halve the cluster's rate meanwhile.
//! - **Sending** one to a follower that needs it reads the state as of the moment the
//!   leader asked for it ([`keyraft_state::StateView`]), record by record as it streams
//!   ([`crate::network`]), while apply goes on. Only a leader with a lagging follower
//!   pays for the walk.
//! - **Receiving** one writes the records into a second state tree as they arrive
//!   ([`keyraft_state::Incoming`]), in batches, while the node goes on reading and
//!   applying over the first: no copy in memory, and no disk but the new state's.
//! - **Installing** one, once the sender's MAC over all of it verified, syncs that tree
//!   and switches to it whole ([`keyraft_state::StateMachine::install_received`]).
//!
//! [`SnapshotData`] is therefore either a view of this node's own state or a leader's
//! records ([`encode_record`] one after another) received into the second tree.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::Deserialize;

use keyraft_state::{
    AppliedMeta, ApplyEntry, Incoming, StateError, StateMachine, StateSnapshot, StateView,
};

use crate::failpoints;
use crate::log_store::Flushed;
use crate::typ::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::{from_bytes, to_bytes, TypeConfig};

/// The data of a snapshot as openraft moves it around.
pub enum SnapshotData {
    /// This node's own state as of the snapshot's log id, read when it is sent.
    Local(StateView),
    /// The records a leader sent, already in the state tree this node is not using
    /// (see [`keyraft_state::Incoming`]).
    Received(Incoming),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::Local(view) => {
                f.debug_struct("Local").field("meta", view.meta()).finish()
            }
            SnapshotData::Received(_) => f.write_str("Received"),
        }
    }
}

/// Appends one record to `out` as a snapshot carries it: the key's length (4 bytes, big
/// endian), the key, the value's length, the value.
pub fn encode_record(key: &[u8], value: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    for part in [key, value] {
        let len = u32::try_from(part.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "state record over 4 GiB"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(())
}

/// Splits snapshot data, which arrives in pieces ([`encode_record`] one record after
/// another, cut anywhere), into its records.
#[derive(Default)]
pub struct RecordReader {
    /// The bytes of a record not yet whole.
    pending: Vec<u8>,
}

impl RecordReader {
    /// The records that `data` completes, in order. The bytes of a record it leaves
    /// unfinished are kept for the next piece.
    pub fn feed(&mut self, data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut records = Vec::new();
        if self.pending.is_empty() {
            let used = split_records(data, &mut records);
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let used = split_records(&self.pending, &mut records);
            self.pending.drain(..used);
        }
        records
    }

    /// Fails if the data ended inside a record.
    pub fn finish(&self) -> Result<(), StateError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(StateError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot data ends inside a record",
            )))
        }
    }
}

/// Pushes the whole records at the start of `data` to `out`; returns how many bytes they
/// took.
fn split_records(data: &[u8], out: &mut Vec<(Vec<u8>, Vec<u8>)>) -> usize {
    let part = |at: usize| -> Option<(&[u8], usize)> {
        let len = data.get(at..at + 4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 4;
        Some((data.get(start..start.checked_add(len)?)?, start + len))
    };
    let mut at = 0;
    while let Some((key, after_key)) = part(at) {
        let Some((value, end)) = part(after_key) else {
            break;
        };
        out.push((key.to_vec(), value.to_vec()));
        at = end;
    }
    at
}

/// openraft's view of a node's state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    sm: Arc<StateMachine>,
    /// The size of the node's state on disk as of its last snapshot (see
    /// [`StateMachineStore::snapshot_bytes`]).
    snapshot_bytes: Arc<AtomicU64>,
    /// The highest log index on disk, if apply waits for it (see
    /// [`StateMachineStore::after_log`]).
    log_flushed: Option<Flushed>,
}

/// A snapshot file of a version that copied the state into one.
#[derive(Deserialize)]
struct LegacySnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl StateMachineStore {
    /// Wraps `sm`, whose node keeps its data in `dir`.
    ///
    /// Makes what sled recovered durable, so that the state the node starts from is a
    /// point it can restart from again. A snapshot file left in `dir/snapshots` by an
    /// earlier version, which copied the state into one, is installed if it is newer
    /// than the state (the log before it is gone) and then removed.
    pub fn new(sm: Arc<StateMachine>, dir: &Path) -> io::Result<StateMachineStore> {
        restore_legacy_snapshot(&sm, &dir.join("snapshots"))?;
        drop(sm.durable_view()?);
        let size = sm.size_on_disk()?;
        Ok(StateMachineStore {
            sm,
            snapshot_bytes: Arc::new(AtomicU64::new(size)),
            log_flushed: None,
        })
    }

    /// Applies an entry only once `flushed` (the log store's
    /// [`crate::log_store::LogStore::flushed`]) has reached it, so that the state never
    /// holds an entry the log could lose in a crash.
    pub fn after_log(mut self, flushed: Flushed) -> StateMachineStore {
        self.log_flushed = Some(flushed);
        self
    }

    /// The size in bytes of the node's state on disk (its sled database, unreclaimed
    /// space included) as of its last snapshot, built or installed, or its start.
    /// [`crate::compaction`] paces snapshots by it.
    pub fn snapshot_bytes(&self) -> Arc<AtomicU64> {
        self.snapshot_bytes.clone()
    }

    /// The state machine, for queries.
    pub fn state(&self) -> &Arc<StateMachine> {
        &self.sm
    }

    fn note_size(&self) -> io::Result<()> {
        self.snapshot_bytes
            .store(self.sm.size_on_disk()?, Ordering::Relaxed);
        Ok(())
    }
}

/// The log id and membership stored as `meta`.
fn decode_meta(meta: &AppliedMeta) -> io::Result<(Option<LogId>, StoredMembership)> {
    let applied = match &meta.last_applied {
        Some(b) => from_bytes(b)?,
        None => None,
    };
    let membership = match &meta.membership {
        Some(b) => from_bytes(b)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// `view` as a snapshot.
fn view_snapshot(view: StateView) -> io::Result<Snapshot> {
    let (last_log_id, last_membership) = decode_meta(view.meta())?;
    Ok(Snapshot {
        meta: SnapshotMeta {
            last_log_id,
            last_membership,
        },
        snapshot: SnapshotData::Local(view),
    })
}

/// Installs the snapshot file an earlier version left in `dir` if it is newer than the
/// state, then removes `dir`.
fn restore_legacy_snapshot(sm: &StateMachine, dir: &Path) -> io::Result<()> {
    let path = dir.join("current.snap");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let file: Option<LegacySnapshotFile> = bytes.as_deref().map(from_bytes).transpose()?;
    let (applied, _) = decode_meta(&sm.applied_meta()?)?;
    if let Some(file) = file.filter(|f| f.meta.last_log_id > applied) {
        tracing::info!(
            snapshot = ?file.meta.last_log_id,
            ?applied,
            "installing the snapshot file an earlier version left"
        );
        let state: StateSnapshot = from_bytes(&file.data)?;
        sm.install(
            state.records.into_iter().map(Ok),
            to_bytes(&file.meta.last_log_id)?,
            to_bytes(&file.meta.last_membership)?,
        )?;
    }
    // Also a directory without the file: a half-written one (`current.snap.tmp`) of a
    // crash is of no use either.
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs blocking storage work (sled + fsync) off the async executor.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let this = self.clone();
        blocking(move || {
            let view = this.sm.durable_view()?;
            this.note_size()?;
            view_snapshot(view)
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        decode_meta(&self.sm.applied_meta()?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let command = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => Some(cmd),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(log_id), m));
                    None
                }
            };
            batch.push(ApplyEntry { command });
            responders.push(responder);
            last_applied = Some(log_id);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // A fault here leaves the batch unapplied and stops this node's Raft (openraft
        // treats a state machine error as fatal); after a restart the node applies the
        // same committed entries again, so replicas never diverge.
        failpoints::io_check(failpoints::BEFORE_APPLY)?;
        if let (Some(flushed), Some(last)) = (&mut self.log_flushed, &last_applied) {
            flushed.reached(last.index()).await?;
        }
        let applied_bytes = to_bytes(&last_applied)?;
        let membership_bytes = membership.as_ref().map(to_bytes).transpose()?;
        // Apply runs on this task rather than on the blocking pool: it is CPU work of a
        // few hundred microseconds that writes to memory, and handing it to another
        // thread and back cost about as much as the work itself. Its lock is shared
        // with a snapshot install alone, which this task runs; a flush, and a walk of a
        // whole state (a snapshot sent, an export, an audit verify), never take it.
        let responses = self
            .sm
            .apply(&batch, applied_bytes, membership_bytes)
            .map_err(io::Error::from)?;
        // Writing the applied state to sled (from the first apply 100 ms after the
        // oldest write held in memory, or once 1 MiB of writes is sealed) takes
        // milliseconds, tens under a burst of new keys, so it runs beside apply. A
        // failure makes the next apply fail, which stops Raft on this node.
        if self.sm.claim_flush() {
            let sm = self.sm.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = sm.flush() {
                    tracing::error!(error = %e, "writing the applied state to sled failed");
                }
            });
        }
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        failpoints::io_check(failpoints::BEFORE_SNAPSHOT_INSTALL)?;
        let applied = to_bytes(&meta.last_log_id)?;
        let membership = to_bytes(&meta.last_membership)?;
        let this = self.clone();
        blocking(move || {
            match snapshot {
                SnapshotData::Received(incoming) => {
                    this.sm.install_received(incoming, applied, membership)
                }
                SnapshotData::Local(view) => this.sm.install(view.records(), applied, membership),
            }
            .map_err(io::Error::from)?;
            this.note_size()
        })
        .await
    }

    /// The state as applied so far: openraft asks for it to send to a follower whose
    /// log was purged, and the view is read as it is sent.
    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let sm = self.sm.clone();
        let snapshot = blocking(move || view_snapshot(sm.pin()?)).await?;
        // Nothing applied, nothing to send.
        Ok(snapshot.meta.last_log_id.is_some().then_some(snapshot))
    }
}
