//! The Raft log and vote in sled, durable before openraft is told they are.
//!
//! # Layout
//!
//! Entries live in the tree `raft_log`, keyed by their index as 8 big-endian bytes, so
//! sled's key order is log order. The vote, the last purged log id and the committed log
//! id live in the tree `raft_meta`. Values are bincode.
//!
//! # Durability
//!
//! openraft's correctness rests on two promises of the log store: a saved vote is on disk
//! when `save_vote` returns, and appended entries are on disk when the `IOFlushed`
//! callback fires (a node that acknowledges an entry and then loses it can lose a
//! committed write). sled's own `flush` is not an fsync (see [`keyraft_state::Durable`]),
//! so every write here is followed by [`Durable::sync`] — a sled flush plus a real
//! `fdatasync` — before it is reported done:
//!
//! - `save_vote`, `truncate_after` and `purge` wait for the sync before they return.
//!   Truncation and purging are rare (a conflict, a snapshot), so their sync costs nothing
//!   and spares us reasoning about a truncation that a crash undoes.
//! - `append` writes the entries (readable at once, as openraft requires) and hands the
//!   callback to the store's sync thread, which calls it after the sync. The thread
//!   drains every request queued while it was busy and covers them with one sync (group
//!   commit), so a burst of appends costs one `fdatasync`, not one each.
//! - `save_committed` is only written: it is an optimisation that lets a restarted node
//!   re-apply up to the old commit point, and the next sync makes it durable.
//!
//! Fail points (`failpoints` feature): `raft::log::before_append` in `append`, and
//! `raft::log::before_fsync` / `raft::log::after_fsync` around each group-commit sync on
//! the sync thread; an injected error there is handled exactly like a failed sync.
//!
//! Once a sync fails, every later one fails too without trying: after a failed
//! `fdatasync` the kernel may have dropped the dirty pages, and a later "successful" sync
//! would prove nothing. openraft stops the node on the error.
//!
//! # Ordering
//!
//! openraft requires write IO to take effect in submission order. openraft issues the
//! writes one at a time (`&mut self`), and each is applied to sled before its method
//! returns, so sled sees them in order. sled recovers a prefix of its write order and
//! each batch (or multi-tree transaction) atomically, and a sync covers everything
//! written before it started; so what survives a crash is always a prefix of the writes,
//! containing at least everything acknowledged. Purge records the new `last_purged` and
//! deletes the entries in one transaction across both trees, so the log state is never
//! inconsistent, even after a crash.
//!
//! Readers are clones of the store (replication tasks read while the core writes). A
//! read-write lock makes each multi-entry read see the log before or after a write,
//! never half-way through a truncation.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional};

use keyraft_state::Durable;

use crate::failpoints;
use crate::typ::{Entry, LogId, Vote};
use crate::{from_bytes, to_bytes, TypeConfig};

/// The tree holding the entries.
const LOG_TREE: &str = "raft_log";
/// The tree holding the vote, the last purged and the committed log id.
const META_TREE: &str = "raft_meta";

const VOTE_KEY: &[u8] = b"vote";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
const COMMITTED_KEY: &[u8] = b"committed";

/// At most this many entries are returned by one `limited_get_log_entries`.
const READ_LIMIT_ENTRIES: usize = 1024;
/// `limited_get_log_entries` stops after this many encoded bytes. openraft replicates
/// what one call returns in one AppendEntries, and times that RPC out after the
/// heartbeat interval (100 ms by default); a follower catching up under load must
/// decode, write and sync a whole request within it. Audit entries can hold hundreds of
/// records, so the bound is in bytes, and small.
const READ_LIMIT_BYTES: usize = 1 << 20;

/// openraft's log storage for Keyraft: the Raft log and vote in sled, made durable with
/// [`Durable::sync`] before openraft is told they are.
///
/// Clones share the trees, the lock and the sync thread; the log reader openraft asks
/// for is such a clone. The sync thread stops (and is joined) when the last clone drops.
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    shared: Arc<Shared>,
}

/// What every clone of a [`LogStore`] shares.
struct Shared {
    /// Held exclusively while the log tree is changed and shared while several entries
    /// are read, so a read never sees half of a write. It guards no data.
    lock: RwLock<()>,
    /// The sync thread.
    syncer: Syncer,
    /// Encoded bytes of every entry appended since the store was opened (see
    /// [`LogStore::appended_bytes`]).
    appended: Arc<AtomicU64>,
}

/// The handle of the thread that syncs the database and completes the requests waiting
/// for it.
struct Syncer {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<SyncRequest>>,
    /// `None` only while dropping.
    thread: Option<JoinHandle<()>>,
}

/// A write waiting to become durable.
enum SyncRequest {
    /// An append: openraft's callback.
    Append(IOFlushed<TypeConfig>),
    /// A write whose method waits for the sync.
    Wait(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl SyncRequest {
    fn complete(self, result: io::Result<()>) {
        match self {
            SyncRequest::Append(callback) => callback.io_completed(result),
            SyncRequest::Wait(tx) => {
                // The waiter may have been cancelled; the write is durable regardless.
                let _ = tx.send(result);
            }
        }
    }
}

impl Syncer {
    fn start(durable: Durable) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keyraft-log-sync".to_string())
            .spawn(move || run_syncer(&durable, &rx))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `request`; gives it back if the thread is gone.
    fn send(&self, request: SyncRequest) -> Result<(), SyncRequest> {
        match &self.tx {
            Some(tx) => tx.send(request).map_err(|e| e.0),
            None => Err(request),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what is queued and exit; joining it
        // releases its handle on the database, so the directory can be reopened at once.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                tracing::error!("the log sync thread panicked");
            }
        }
    }
}

/// The sync thread: waits for a request, takes every other queued one, syncs once and
/// completes them all in submission order. Each request was queued after its write was
/// applied to sled, so the sync covers it.
fn run_syncer(durable: &Durable, rx: &mpsc::Receiver<SyncRequest>) {
    // After a failed sync nothing is trusted to be durable any more (see the module doc).
    let mut failed: Option<(io::ErrorKind, String)> = None;
    while let Ok(first) = rx.recv() {
        let mut requests = vec![first];
        requests.extend(rx.try_iter());
        if failed.is_none() {
            // A `return` at either fail point is a failed sync, with the same sticky
            // consequence; both run on this thread, so blocking actions are allowed.
            let synced = failpoints::io_check(failpoints::LOG_BEFORE_FSYNC)
                .and_then(|()| durable.sync())
                .and_then(|()| failpoints::io_check(failpoints::LOG_AFTER_FSYNC));
            if let Err(e) = synced {
                tracing::error!(error = %e, "syncing the Raft log failed; the log store is now failed");
                failed = Some((e.kind(), format!("syncing the Raft log: {e}")));
            }
        }
        for request in requests {
            let result = match &failed {
                None => Ok(()),
                Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            };
            request.complete(result);
        }
    }
}

fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("sled: {e}"))
}

fn corrupt(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("Raft log: {detail}"))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| corrupt(format!("a key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes the entry stored under `key`, checking that it is the entry of that index.
fn decode_entry(key: &[u8], value: &[u8]) -> io::Result<Entry> {
    let index = key_index(key)?;
    let entry: Entry = from_bytes(value)?;
    if entry.index() != index {
        return Err(corrupt(format!(
            "the entry stored at index {index} has index {}",
            entry.index()
        )));
    }
    Ok(entry)
}

impl LogStore {
    /// Opens the log of `durable` (creating its trees if needed) and starts the store's
    /// sync thread. The state machine shares `durable`, so one sync covers both.
    ///
    /// With the `failpoints` feature, this is also where a node arms the fail points
    /// named in the `FAILPOINTS` environment variable: every node opens its log store
    /// before Raft starts (see `failpoints::init_from_env`).
    pub fn open(durable: &Durable) -> io::Result<LogStore> {
        #[cfg(feature = "failpoints")]
        failpoints::init_from_env()?;
        let db = durable.db();
        let log = db.open_tree(LOG_TREE).map_err(sled_err)?;
        let meta = db.open_tree(META_TREE).map_err(sled_err)?;
        Ok(LogStore {
            log,
            meta,
            shared: Arc::new(Shared {
                lock: RwLock::new(()),
                syncer: Syncer::start(durable.clone())?,
                appended: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// A counter of the encoded bytes of every entry appended since the store was
    /// opened; [`crate::compaction`] paces snapshots by it.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.shared.appended.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(sled_err)? {
            Some(bytes) => Ok(Some(from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        // The lock guards no data, so a panic while it was held left nothing to repair.
        self.shared
            .lock
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_guard(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.shared
            .lock
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until everything written so far is durable.
    async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.shared.syncer.send(SyncRequest::Wait(tx)).is_err() {
            return Err(io::Error::other("the log sync thread has stopped"));
        }
        rx.await
            .map_err(|_| io::Error::other("the log sync thread has stopped"))?
    }

    /// The entries in `range`, in order; with `limited`, only the first ones up to the
    /// read limits (at least one if the range holds any).
    fn read_entries(&self, range: &impl RangeBounds<u64>, limited: bool) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let _guard = self.read_guard();
        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item.map_err(sled_err)?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            if let Some(prev) = entries.last() {
                if prev.index().checked_add(1) != Some(index) {
                    return Err(corrupt(format!(
                        "hole between index {} and {index}",
                        prev.index()
                    )));
                }
            }
            entries.push(decode_entry(&key, &value)?);
            bytes = bytes.saturating_add(value.len());
            if limited && (entries.len() >= READ_LIMIT_ENTRIES || bytes >= READ_LIMIT_BYTES) {
                break;
            }
        }
        Ok(entries)
    }

    fn log_state(&self) -> io::Result<LogState<TypeConfig>> {
        let _guard = self.read_guard();
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED_KEY)?;
        let last = match self.log.last().map_err(sled_err)? {
            Some((key, value)) => Some(decode_entry(&key, &value)?.log_id()),
            None => None,
        };
        if let (Some(last), Some(purged)) = (&last, &last_purged) {
            // Purging removes the entries and records the purge point atomically.
            if last.index() <= purged.index() {
                return Err(corrupt(format!(
                    "entry {last} is present but the log is purged up to {purged}"
                )));
            }
        }
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    /// Writes `entries` in one batch.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        let mut prev: Option<u64> = None;
        let mut bytes = 0u64;
        for entry in entries {
            let index = entry.index();
            if let Some(prev) = prev {
                if prev.checked_add(1) != Some(index) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("appending non-consecutive entries: {index} after {prev}"),
                    ));
                }
            }
            prev = Some(index);
            let value = to_bytes(&entry)?;
            bytes = bytes.saturating_add(value.len() as u64);
            batch.insert(&index_key(index), value);
        }
        let _guard = self.write_guard();
        self.log.apply_batch(batch).map_err(sled_err)?;
        self.shared.appended.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes every entry from index `from` on, in one batch.
    fn delete_from(&self, from: u64) -> io::Result<()> {
        let _guard = self.write_guard();
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(from)..).keys() {
            batch.remove(key.map_err(sled_err)?);
        }
        self.log.apply_batch(batch).map_err(sled_err)
    }

    /// Records `upto` as purged and deletes the entries up to it, in one transaction.
    /// Returns whether anything changed.
    fn delete_upto(&self, upto: &LogId) -> io::Result<bool> {
        let _guard = self.write_guard();
        let current: Option<LogId> = self.get_meta(LAST_PURGED_KEY)?;
        if current.as_ref() >= Some(upto) {
            // Already purged that far; never move the purge point back.
            return Ok(false);
        }
        let value = to_bytes(upto)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(upto.index())).keys() {
            batch.remove(key.map_err(sled_err)?);
        }
        (&self.log, &self.meta)
            .transaction(|(log, meta)| -> ConflictableTransactionResult<(), ()> {
                meta.insert(LAST_PURGED_KEY, value.clone())?;
                log.apply_batch(&batch)?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => io::Error::other("purge transaction aborted"),
                TransactionError::Storage(e) => sled_err(e),
            })?;
        Ok(true)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        self.read_entries(&range, false)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE_KEY)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.read_entries(&(start..end), true)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        self.log_state()
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.meta
            .insert(VOTE_KEY, to_bytes(vote)?)
            .map_err(sled_err)?;
        self.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced on its own: it is only an optimisation, and the next sync (at the
        // latest the next append's) makes it durable, in order.
        match committed {
            Some(committed) => self
                .meta
                .insert(COMMITTED_KEY, to_bytes(&committed)?)
                .map_err(sled_err)?,
            None => self.meta.remove(COMMITTED_KEY).map_err(sled_err)?,
        };
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.get_meta(COMMITTED_KEY)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = failpoints::io_check(failpoints::LOG_BEFORE_APPEND)
            .and_then(|()| self.write_entries(entries));
        if let Err(e) = written {
            callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
        // The entries are readable now; the sync thread calls back once they are durable.
        if let Err(request) = self.shared.syncer.send(SyncRequest::Append(callback)) {
            let stopped = || io::Error::other("the log sync thread has stopped");
            request.complete(Err(stopped()));
            return Err(stopped());
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = match last_log_id {
            Some(last) => match last.index().checked_add(1) {
                Some(from) => from,
                None => return Ok(()),
            },
            None => 0,
        };
        self.delete_from(from)?;
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        if self.delete_upto(&log_id)? {
            self.sync().await?;
        }
        Ok(())
    }
}
