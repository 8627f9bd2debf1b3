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
//! it applies synced ([`StateMachineStore::after_log`]). Installing a snapshot does
//! sync, since the log it replaces is purged after it.
//!
//! Snapshots are the state machine's records (everything but the Raft metadata) encoded
//! with bincode. A built or installed snapshot is also written to
//! `<dir>/snapshots/current.snap` (temp file, fsync, rename, directory fsync), which is
//! what `get_current_snapshot` serves to lagging followers after the log was purged.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use keyraft_state::{ApplyEntry, StateMachine, StateSnapshot};

use crate::failpoints;
use crate::log_store::Flushed;
use crate::typ::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::{from_bytes, to_bytes, TypeConfig};

/// The bytes of a snapshot as openraft moves them around.
pub type SnapshotData = Cursor<Vec<u8>>;

/// openraft's view of a node's state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    sm: Arc<StateMachine>,
    snapshot_dir: PathBuf,
    /// Serialises writes of the snapshot file.
    snapshot_lock: Arc<Mutex<()>>,
    /// The size of the state in the last snapshot built or installed (see
    /// [`StateMachineStore::snapshot_bytes`]).
    snapshot_bytes: Arc<AtomicU64>,
    /// The highest log index on disk, if apply waits for it (see
    /// [`StateMachineStore::after_log`]).
    log_flushed: Option<Flushed>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

const CURRENT_SNAPSHOT: &str = "current.snap";

impl StateMachineStore {
    /// Wraps `sm`; snapshots are kept under `dir/snapshots`.
    pub fn new(sm: Arc<StateMachine>, dir: &Path) -> io::Result<StateMachineStore> {
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        // Until the next snapshot, the stored one's file size stands for its state's.
        let stored = match std::fs::metadata(snapshot_dir.join(CURRENT_SNAPSHOT)) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(StateMachineStore {
            sm,
            snapshot_dir,
            snapshot_lock: Arc::new(Mutex::new(())),
            snapshot_bytes: Arc::new(AtomicU64::new(stored)),
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

    /// The size in bytes of the state in the node's last snapshot (built, installed or,
    /// after a restart, found on disk); 0 before the first. [`crate::compaction`] paces
    /// snapshots by it.
    pub fn snapshot_bytes(&self) -> Arc<AtomicU64> {
        self.snapshot_bytes.clone()
    }

    /// The state machine, for queries.
    pub fn state(&self) -> &Arc<StateMachine> {
        &self.sm
    }

    fn read_meta(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let meta = self.sm.applied_meta()?;
        let applied = match meta.last_applied {
            Some(b) => from_bytes(&b)?,
            None => None,
        };
        let membership = match meta.membership {
            Some(b) => from_bytes(&b)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn write_snapshot_file(&self, file: &SnapshotFile) -> io::Result<()> {
        let _guard = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = self.snapshot_dir.join(format!("{CURRENT_SNAPSHOT}.tmp"));
        let written = (|| {
            use std::io::Write;
            // Encoded straight into the file: the data can be gigabytes, and an encoded
            // copy in memory would be one more copy of the whole state.
            let mut out = io::BufWriter::new(PacedFile::new(std::fs::File::create(&tmp)?));
            bincode::serialize_into(&mut out, file).map_err(|e| match *e {
                // A full disk stays a full disk, not "invalid data".
                bincode::ErrorKind::Io(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other),
            })?;
            out.flush()?;
            out.into_inner()
                .map_err(|e| e.into_error())?
                .file
                .sync_all()?;
            std::fs::rename(&tmp, self.snapshot_dir.join(CURRENT_SNAPSHOT))
        })();
        if let Err(e) = written {
            // A half-written snapshot is of no use, and on a full disk it holds the
            // space the next attempt (or the log) needs.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::File::open(&self.snapshot_dir)?.sync_all()?;
        Ok(())
    }

    fn read_snapshot_file(&self) -> io::Result<Option<SnapshotFile>> {
        let path = self.snapshot_dir.join(CURRENT_SNAPSHOT);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(from_bytes(&bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A file being written that is synced every [`PacedFile::SYNC_EVERY`] bytes, so that a
/// snapshot of hundreds of megabytes reaches the disk as a stream of small writes rather
/// than in one burst at its final sync. The Raft log shares the disk: its syncs queued
/// behind the write-back of a 375 MB snapshot, and every write of the node waited with
/// them (the reason RocksDB has `bytes_per_sync`).
struct PacedFile {
    file: std::fs::File,
    unsynced: usize,
}

impl PacedFile {
    const SYNC_EVERY: usize = 8 << 20;

    fn new(file: std::fs::File) -> PacedFile {
        PacedFile { file, unsynced: 0 }
    }
}

impl io::Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= Self::SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
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
            let (state, applied) = this.sm.export()?;
            let last_log_id: Option<LogId> = match applied.last_applied {
                Some(b) => from_bytes(&b)?,
                None => None,
            };
            let last_membership: StoredMembership = match applied.membership {
                Some(b) => from_bytes(&b)?,
                None => StoredMembership::default(),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
            };
            let data = to_bytes(&state)?;
            let file = SnapshotFile {
                meta: meta.clone(),
                data,
            };
            this.write_snapshot_file(&file)?;
            this.snapshot_bytes
                .store(file.data.len() as u64, Ordering::Relaxed);
            Ok(Snapshot {
                meta,
                snapshot: Cursor::new(file.data),
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        self.read_meta()
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
        // with a snapshot install alone, which this task runs; an export, a flush and
        // an audit verify work on the tree under a lock of their own.
        let responses = self
            .sm
            .apply(&batch, applied_bytes, membership_bytes)
            .map_err(io::Error::from)?;
        // Writing the applied state to sled (every 100 ms) takes milliseconds, tens
        // under a burst of new keys, so it runs beside apply. A failure makes the next
        // apply fail, which stops Raft on this node.
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
        let data = snapshot.into_inner();
        let state: StateSnapshot = from_bytes(&data)?;
        let applied = to_bytes(&meta.last_log_id)?;
        let membership = to_bytes(&meta.last_membership)?;
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || {
            // The snapshot file first, then the state. The state must never be ahead of
            // the newest snapshot file: the log before the snapshot is gone, and a node
            // that restarts with a state newer than both its log and its snapshot file
            // cannot start. The other way round is safe: a node that stops in between
            // (or fails to install) restores the state from the file when it starts.
            let size = data.len() as u64;
            this.write_snapshot_file(&SnapshotFile { meta, data })?;
            this.snapshot_bytes.store(size, Ordering::Relaxed);
            this.sm
                .install(&state, applied, membership)
                .map_err(io::Error::from)
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let this = self.clone();
        blocking(move || {
            Ok(this.read_snapshot_file()?.map(|f| Snapshot {
                meta: f.meta,
                snapshot: Cursor::new(f.data),
            }))
        })
        .await
    }
}
