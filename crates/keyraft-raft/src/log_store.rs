//! The Raft log in append-only segment files, the vote in sled; durable before openraft
//! is told they are.
//!
//! # Layout
//!
//! Entries live in segment files under `<store>/raft-log/`, each named after the index
//! of its first entry (20 decimal digits, `.seg`), in log order. A segment is a sequence
//! of records, one per entry: the payload's length (`u32`, little-endian), its CRC-32
//! (`u32`), and the entry in bincode. Appends go to the end of the newest segment; a
//! new one starts when that one holds [`SEGMENT_BYTES`] or when an entry does not follow
//! the last one (after a snapshot was installed past the log). The store keeps every
//! record's offset in memory; reads are positioned reads of whole runs of records.
//!
//! The newest entries (up to 16 MiB of records) are also kept as appended,
//! and reads of them are answered from memory: replication to each follower and apply
//! read what was just appended, and reading it back meant decoding every entry once
//! per follower and again to apply.
//!
//! The vote, the last purged log id and the committed log id live in the sled tree
//! `raft_meta`. Values are bincode.
//!
//! Earlier versions kept the entries in sled as well (tree `raft_log`): sled's flush
//! hands each write to its IO thread pool, and a sync cost up to three times an
//! `fdatasync`.
//! [`LogStore::open`] moves such entries into segments once (see `migrate`).
//!
//! # Durability
//!
//! openraft's correctness rests on two promises of the log store: a saved vote is on disk
//! when `save_vote` returns, and appended entries are on disk when the `IOFlushed`
//! callback fires (a node that acknowledges an entry and then loses it can lose a
//! committed write).
//!
//! - `append` writes the records (readable at once, as openraft requires) and hands the
//!   callback to the store's sync thread, which `fdatasync`s the segment and then calls
//!   it. The thread drains every request queued while it was busy and covers them with
//!   one sync per file (group commit), so a burst of appends costs one `fdatasync`.
//!   A segment that fills up is synced before the next one is created, and the
//!   directory is synced after a segment is created and after truncation removes
//!   segments. Purging does not sync it: a purged segment that reappears after a crash
//!   holds only entries the purge point already skips.
//! - `save_vote` and `purge` write sled and wait for [`Durable::sync`] (a sled flush
//!   plus a real `fdatasync`; sled's own flush is not one); `truncate_after` waits for
//!   the segment's sync. All three are rare.
//! - `save_committed` is only written: it lets a restarted node re-apply up to the old
//!   commit point. After a crash it may name an entry the segments lost;
//!   `read_committed` then answers the last entry that survived.
//!
//! Once a sync fails, every later one fails too without trying: after a failed
//! `fdatasync` the kernel may have dropped the dirty pages, and a later "successful" sync
//! would prove nothing. openraft stops the node on the error.
//!
//! The state machine (sled) must never get ahead of the log on disk: after a crash it
//! would hold entries the log lost. [`LogStore::flushed`] tells which index is durable,
//! and the state machine adapter waits for it before applying (in practice it already
//! is: an entry commits once a quorum, usually including this node, has synced it).
//!
//! # Crash recovery
//!
//! Opening reads every segment and checks every record's CRC. In the newest segment, a
//! record cut short, empty or failing its CRC is taken for a write the crash
//! interrupted, never acknowledged: the segment is cut there, with a warning that says
//! how many bytes were dropped; if nothing but zeros follows, they are the zeros written
//! ahead (below) and the log simply ends there. In any older segment (synced whole, and
//! cut to its last record, before the next one was started) such a record is
//! corruption, and the store refuses to open. Only the
//! last entry of each segment is decoded at open (its id is the log's end); every entry
//! is decoded, and its index checked, when it is read. Purging records the new purge point (durably) before removing the segments it
//! covers, so a crash in between leaves segments whose entries are skipped and removed
//! at the next open. Truncation removes later segments before cutting the one that
//! holds the new end, so a crash leaves a prefix of the log.
//!
//! # Preallocation
//!
//! An `fdatasync` of a file that grew must also write the file's metadata (its new
//! length, its newly allocated blocks: on ext4, a journal commit or, without a journal,
//! the inode); one that only overwrote blocks the file already had need not. So an
//! append that passes the zeros already written writes zeros up to the next 1 MiB
//! boundary of the segment as well, and the sync that makes the append durable makes
//! them durable too; the appends of the next megabyte overwrite them. On ext4 that made
//! a 1 KiB append's `fdatasync` about a third faster (three writers at once: 245 µs to
//! 160 µs at the median). etcd preallocates its WAL files for the same reason.
//!
//! Fail points (`failpoints` feature): `raft::log::before_append` in `append`, and
//! `raft::log::before_fsync` / `raft::log::after_fsync` around each group-commit sync on
//! the sync thread; an injected error there is handled exactly like a failed sync.
//!
//! # Ordering
//!
//! openraft requires write IO to take effect in submission order. openraft issues the
//! writes one at a time (`&mut self`); each is applied to the files (or sled) before its
//! method returns, and only appends return before they are durable. Appends go to one
//! sequence of files and are synced in order, so what survives a crash is a prefix of
//! them containing at least everything acknowledged.
//!
//! Readers are clones of the store (replication tasks read while the core writes). A
//! read-write lock over the segment table makes each read see the log before or after
//! a write, never half-way through one.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use tokio::sync::watch;

use keyraft_state::Durable;

use crate::failpoints;
use crate::typ::{Entry, LogId, Vote};
use crate::{from_bytes, to_bytes, TypeConfig};

/// The directory of the segments, inside the store's directory.
const LOG_DIR: &str = "raft-log";
/// The sled tree that held the entries before they moved to segments.
const OLD_LOG_TREE: &str = "raft_log";
/// The tree holding the vote, the last purged and the committed log id.
const META_TREE: &str = "raft_meta";

const VOTE_KEY: &[u8] = b"vote";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
const COMMITTED_KEY: &[u8] = b"committed";

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// A record's header: payload length and CRC-32, both `u32` little-endian.
const HEADER: usize = 8;

/// Zeros are written this far ahead of the appends (see "Preallocation").
const PREALLOCATE_BYTES: u64 = 1 << 20;

/// At most this many entries are returned by one `limited_get_log_entries`.
const READ_LIMIT_ENTRIES: usize = 1024;
/// `limited_get_log_entries` stops after this many encoded bytes. openraft replicates
/// what one call returns in one AppendEntries, and times that RPC out after the
/// heartbeat interval (100 ms by default); a follower catching up under load must
/// decode, write and sync a whole request within it. Audit entries can hold hundreds of
/// records, so the bound is in bytes, and small.
const READ_LIMIT_BYTES: usize = 1 << 20;

/// openraft's log storage for Keyraft: the entries in segment files, the vote in sled,
/// each made durable before openraft is told it is.
///
/// Clones share the segments, the lock and the sync thread; the log reader openraft asks
/// for is such a clone. The sync thread stops (and is joined) when the last clone drops.
#[derive(Clone)]
pub struct LogStore {
    meta: sled::Tree,
    durable: Durable,
    shared: Arc<Shared>,
}

/// What every clone of a [`LogStore`] shares.
struct Shared {
    /// The segment table; held exclusively while the log changes.
    log: RwLock<Segments>,
    /// The sync thread.
    syncer: Syncer,
    /// Encoded bytes of every entry appended since the store was opened (see
    /// [`LogStore::appended_bytes`]).
    appended: Arc<AtomicU64>,
    /// The highest index known to be on disk (see [`LogStore::flushed`]).
    flushed: Arc<watch::Sender<OnDisk>>,
}

/// What of the log is on disk: the highest index synced, and how many truncations the
/// log has seen. An append's sync raises the index only if no truncation came between
/// the write and the sync (the entries it synced may be gone, and their indexes
/// rewritten and not yet synced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OnDisk {
    index: Option<u64>,
    truncations: u64,
}

/// The highest log index on disk, as it changes: see [`LogStore::flushed`].
#[derive(Clone)]
pub struct Flushed(watch::Receiver<OnDisk>);

impl Flushed {
    /// The highest index on disk now.
    pub fn index(&self) -> Option<u64> {
        self.0.borrow().index
    }

    /// Waits until `index` is on disk; an error if the log store has stopped.
    pub async fn reached(&mut self, index: u64) -> io::Result<()> {
        self.0
            .wait_for(|on_disk| on_disk.index >= Some(index))
            .await
            .map(|_| ())
            .map_err(|_| io::Error::other("the log store has stopped"))
    }
}

/// One segment file and where its records are.
struct Segment {
    /// The index of its first entry (its file name).
    first: u64,
    file: Arc<File>,
    /// The offset of each entry's record: entry `first + i` at `offsets[i]`.
    offsets: Vec<u64>,
    /// The bytes of whole records; the next record goes here.
    len: u64,
    /// The file's length: past `len` it holds zeros written ahead of the appends.
    allocated: u64,
}

impl Segment {
    /// The index after its last entry.
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// Where the record of `index` (which it holds) ends.
    fn record_end(&self, index: u64) -> u64 {
        let i = (index - self.first) as usize;
        self.offsets.get(i + 1).copied().unwrap_or(self.len)
    }
}

/// The log on disk: segments in index order, the purge point, the last entry's id.
struct Segments {
    dir: PathBuf,
    /// A segment this large is closed ([`SEGMENT_BYTES`]; smaller in tests).
    segment_bytes: u64,
    /// Keyed by first index.
    segments: BTreeMap<u64, Segment>,
    /// Entries up to here are purged, even if a segment still holds them.
    purged: Option<LogId>,
    /// The id of the last entry held, if any.
    last: Option<LogId>,
    /// The newest entries, as appended.
    recent: Recent,
}

/// The newest entries of the log as they were appended, up to [`RECENT_BYTES`] of their
/// records: replication and apply read what was just appended, and would otherwise read
/// it back from the file and decode it again, once per follower and once more to apply
/// (on a leader under audited Encrypts, 7.6% of its CPU). A command is shared
/// (`Arc`), so handing out an entry copies no data.
struct Recent {
    /// Consecutive entries ending at the log's last one, with their records' sizes.
    entries: std::collections::VecDeque<(Entry, usize)>,
    /// The sum of the sizes.
    bytes: usize,
    /// The most it keeps ([`RECENT_BYTES`]; smaller in tests).
    limit: usize,
}

/// How many bytes of records [`Recent`] keeps.
const RECENT_BYTES: usize = 16 << 20;

impl Recent {
    fn new(limit: usize) -> Recent {
        Recent {
            entries: std::collections::VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// The index of the first entry held.
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    /// Adds `entries`, which follow the log's last entry; forgets everything held if
    /// they do not follow what it holds (the log jumped: a snapshot was installed).
    fn push(&mut self, entries: Vec<(Entry, usize)>) {
        let follows = match (self.entries.back(), entries.first()) {
            (Some((last, _)), Some((next, _))) => last.index().checked_add(1) == Some(next.index()),
            _ => true,
        };
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        for (entry, size) in entries {
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.bytes > self.limit {
            match self.entries.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Forgets the entries after `from - 1` (truncation).
    fn cut_from(&mut self, from: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.index() >= from) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets the entries up to `upto` (purge).
    fn forget_upto(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.index() <= upto) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// The entries from `start` (which it must hold) up to `end` (exclusive); with
    /// `limited`, only as many as the read limits allow (at least one).
    fn read(&self, start: u64, end: u64, limited: bool) -> Vec<Entry> {
        let Some(first) = self.first() else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        for (entry, size) in self.entries.iter().skip(skip) {
            if entry.index() >= end {
                break;
            }
            entries.push(entry.clone());
            bytes = bytes.saturating_add(*size);
            if limited && (entries.len() >= READ_LIMIT_ENTRIES || bytes >= READ_LIMIT_BYTES) {
                break;
            }
        }
        entries
    }
}

/// A write waiting to become durable.
enum SyncRequest {
    /// An append: the segment it wrote, its last index, the truncation count when it
    /// was written, openraft's callback.
    Append {
        file: Arc<File>,
        last: u64,
        truncations: u64,
        callback: IOFlushed<TypeConfig>,
    },
    /// A write whose method waits for the sync of `file`.
    Wait {
        file: Arc<File>,
        tx: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
}

impl SyncRequest {
    fn file(&self) -> &Arc<File> {
        match self {
            SyncRequest::Append { file, .. } | SyncRequest::Wait { file, .. } => file,
        }
    }

    fn complete(self, result: io::Result<()>) {
        match self {
            SyncRequest::Append { callback, .. } => callback.io_completed(result),
            SyncRequest::Wait { tx, .. } => {
                // The waiter may have been cancelled; the write is durable regardless.
                let _ = tx.send(result);
            }
        }
    }
}

/// The handle of the thread that syncs segments and completes the requests waiting for
/// it.
struct Syncer {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<SyncRequest>>,
    /// `None` only while dropping.
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(flushed: Arc<watch::Sender<OnDisk>>) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keyraft-log-sync".to_string())
            .spawn(move || run_syncer(&rx, &flushed))?;
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
        // releases its files, so the directory can be reopened at once.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                tracing::error!("the log sync thread panicked");
            }
        }
    }
}

/// A log sync that takes this long is logged as a warning.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(500);

/// The sync thread: waits for a request, takes every other queued one, syncs each file
/// they name once and completes them all in submission order. Each request was queued
/// after its write reached the file, so the sync covers it.
fn run_syncer(rx: &mpsc::Receiver<SyncRequest>, flushed: &watch::Sender<OnDisk>) {
    // After a failed sync nothing is trusted to be durable any more (see the module doc).
    let mut failed: Option<(io::ErrorKind, String)> = None;
    while let Ok(first) = rx.recv() {
        let mut requests = vec![first];
        requests.extend(rx.try_iter());
        if failed.is_none() {
            let mut files: Vec<&Arc<File>> = Vec::new();
            for request in &requests {
                if !files.iter().any(|f| Arc::ptr_eq(f, request.file())) {
                    files.push(request.file());
                }
            }
            // A `return` at either fail point is a failed sync, with the same sticky
            // consequence; both run on this thread, so blocking actions are allowed.
            let started = std::time::Instant::now();
            let synced = failpoints::io_check(failpoints::LOG_BEFORE_FSYNC)
                .and_then(|()| files.iter().try_for_each(|f| f.sync_data()))
                .and_then(|()| failpoints::io_check(failpoints::LOG_AFTER_FSYNC));
            let took = started.elapsed();
            if took >= SLOW_SYNC {
                // Every write this node acknowledges waited that long: the disk is shared
                // with something busier, or failing.
                tracing::warn!(
                    ?took,
                    appends = requests.len(),
                    "slow fdatasync of the Raft log"
                );
            }
            if let Err(e) = synced {
                tracing::error!(error = %e, "syncing the Raft log failed; the log store is now failed");
                failed = Some((e.kind(), format!("syncing the Raft log: {e}")));
            }
        }
        if failed.is_none() {
            for request in &requests {
                if let SyncRequest::Append {
                    last, truncations, ..
                } = request
                {
                    flushed.send_if_modified(|on_disk| {
                        let newer =
                            on_disk.truncations == *truncations && on_disk.index < Some(*last);
                        if newer {
                            on_disk.index = Some(*last);
                        }
                        newer
                    });
                }
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

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends the record of `payload` to `out`.
fn encode_record(payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a log entry over 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits the record at the start of `bytes`: `Some((payload, record length))`, or
/// `None` if it is cut short, fails its checksum or is empty. No entry encodes to
/// nothing, and zeros are what a file extended by a crash may end in (their CRC-32
/// checks out).
fn decode_record(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 {
        return None;
    }
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, HEADER + len))
}

/// Decodes the entry of a record, checking that it is the entry of `index`.
fn decode_entry(index: u64, payload: &[u8]) -> io::Result<Entry> {
    let entry: Entry = from_bytes(payload)?;
    if entry.index() != index {
        return Err(corrupt(format!(
            "the record for index {index} holds entry {}",
            entry.index()
        )));
    }
    Ok(entry)
}

impl Segments {
    /// An empty table over `dir`.
    fn new(dir: PathBuf, purged: Option<LogId>, segment_bytes: u64) -> Segments {
        Segments {
            dir,
            segment_bytes,
            segments: BTreeMap::new(),
            purged,
            last: None,
            recent: Recent::new(RECENT_BYTES),
        }
    }

    /// Reads the segments in `dir`: every record, cutting a torn tail off the newest
    /// segment and removing segments wholly purged.
    fn load(dir: PathBuf, purged: Option<LogId>, segment_bytes: u64) -> io::Result<Segments> {
        let mut firsts = Vec::new();
        for item in std::fs::read_dir(&dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".seg") {
                let first = first
                    .parse::<u64>()
                    .map_err(|_| corrupt(format!("unexpected file {name}")))?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut log = Segments::new(dir, purged, segment_bytes);
        let newest = firsts.last().copied();
        for first in firsts {
            let path = log.dir.join(segment_name(first));
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            let mut offsets = Vec::new();
            let mut at = 0usize;
            // Where the last whole record's payload is.
            let mut last_payload = None;
            let mut allocated = bytes.len() as u64;
            while at < bytes.len() {
                let Some((_, size)) = decode_record(&bytes[at..]) else {
                    let newest = Some(first) == newest;
                    if newest && bytes[at..].iter().all(|b| *b == 0) {
                        // The zeros written ahead of the appends: the log ends here.
                        break;
                    }
                    if !newest {
                        return Err(corrupt(format!(
                            "a damaged record at byte {at} of {}",
                            path.display()
                        )));
                    }
                    tracing::warn!(
                        segment = %path.display(),
                        at,
                        dropped = bytes.len() - at,
                        "cutting an unfinished write off the end of the Raft log"
                    );
                    // Made durable by the sync below.
                    file.set_len(at as u64)?;
                    allocated = at as u64;
                    break;
                };
                offsets.push(at as u64);
                last_payload = Some(at + HEADER..at + size);
                at += size;
            }
            let last = match last_payload {
                Some(payload) => {
                    let index = first + offsets.len() as u64 - 1;
                    Some(decode_entry(index, &bytes[payload])?.log_id())
                }
                None => None,
            };
            // What a process that crashed wrote may still be only in the page cache;
            // it counts as on disk from here on, so it must be.
            file.sync_data()?;
            let segment = Segment {
                first,
                file: Arc::new(file),
                offsets,
                len: at as u64,
                allocated,
            };
            let fully_purged = matches!(&log.purged, Some(p) if segment.end() <= p.index() + 1);
            if fully_purged {
                drop(segment);
                std::fs::remove_file(&path)?;
                continue;
            }
            if let Some(prev) = log.segments.values().next_back() {
                if first < prev.end() {
                    return Err(corrupt(format!(
                        "segment {first} overlaps the one before, which ends at {}",
                        prev.end()
                    )));
                }
            }
            if last.is_some() {
                log.last = last;
            }
            log.segments.insert(first, segment);
        }
        Ok(log)
    }

    /// The index the next entry goes to if it follows the log.
    fn next_index(&self) -> Option<u64> {
        self.last.as_ref().map(|l| l.index() + 1)
    }

    /// The first index still readable.
    fn first_readable(&self) -> u64 {
        self.purged.as_ref().map_or(0, |p| p.index() + 1)
    }

    /// Writes encoded records for entries `first..first + offsets.len()`, the last of
    /// which is `last`; returns the file they are in.
    fn write(
        &mut self,
        first: u64,
        last: LogId,
        buf: &[u8],
        offsets: &[u64],
    ) -> io::Result<Arc<File>> {
        let follows = self.next_index() == Some(first);
        if let Some(last) = self.next_index() {
            if first < last {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "appending entry {first} over a log that ends at {}",
                        last - 1
                    ),
                ));
            }
        }
        let reuse = match self.segments.values().next_back() {
            Some(s) => follows && s.end() == first && s.len < self.segment_bytes,
            None => false,
        };
        if !reuse {
            if let Some(full) = self.segments.values_mut().next_back() {
                // Only the newest segment may end in zeros (see `load`).
                if full.allocated > full.len {
                    full.file.set_len(full.len)?;
                    full.allocated = full.len;
                }
                full.file.sync_data()?;
            }
            let path = self.dir.join(segment_name(first));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            sync_dir(&self.dir)?;
            let segment = Segment {
                first,
                file: Arc::new(file),
                offsets: Vec::new(),
                len: 0,
                allocated: 0,
            };
            self.segments.insert(first, segment);
        }
        let segment = self
            .segments
            .values_mut()
            .next_back()
            .ok_or_else(|| io::Error::other("no segment to write to"))?;
        segment.file.write_all_at(buf, segment.len)?;
        let end = segment.len + buf.len() as u64;
        if end > segment.allocated && end < self.segment_bytes {
            // Zeros ahead, synced with this write: later appends until there overwrite
            // blocks the file already has (see "Preallocation").
            let ahead = (end / PREALLOCATE_BYTES + 1) * PREALLOCATE_BYTES;
            let ahead = ahead.min(self.segment_bytes);
            let zeros = vec![0; usize::try_from(ahead - end).map_err(io::Error::other)?];
            segment.file.write_all_at(&zeros, end)?;
            segment.allocated = ahead;
        }
        segment
            .offsets
            .extend(offsets.iter().map(|o| segment.len + o));
        segment.len = end;
        segment.allocated = segment.allocated.max(end);
        let file = segment.file.clone();
        self.last = Some(last);
        Ok(file)
    }

    /// Writes `batch` at the end of the log and keeps its entries among the recent ones;
    /// returns the file they are in and the last index.
    fn append(&mut self, batch: Batch) -> io::Result<(Arc<File>, u64)> {
        let file = self.write(batch.first, batch.last, &batch.buf, &batch.offsets)?;
        self.recent.push(batch.entries);
        Ok((file, batch.last.index()))
    }

    /// Removes every entry after `last` (all with `None`); returns the segment that now
    /// ends the log, to be synced, if one was cut.
    fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<Option<Arc<File>>> {
        let from = match &last {
            Some(l) => l.index() + 1,
            None => 0,
        };
        self.recent.cut_from(from);
        let mut removed = false;
        // Later segments first, so a crash leaves a prefix.
        while let Some((&first, _)) = self.segments.range(from..).next_back() {
            if let Some(segment) = self.segments.remove(&first) {
                drop(segment);
                std::fs::remove_file(self.dir.join(segment_name(first)))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        let mut cut = None;
        if let Some(segment) = self.segments.values_mut().next_back() {
            if segment.end() > from {
                let keep = (from - segment.first) as usize;
                let at = segment.offsets[keep];
                segment.file.set_len(at)?;
                segment.offsets.truncate(keep);
                segment.len = at;
                segment.allocated = at;
                cut = Some(segment.file.clone());
            }
        }
        self.last = match (&self.last, &last) {
            (Some(current), Some(l)) if current.index() > l.index() => Some(*l),
            (Some(_), None) => None,
            (current, _) => *current,
        };
        Ok(cut)
    }

    /// Forgets entries up to `upto` and removes the segments that hold nothing else.
    fn purge(&mut self, upto: LogId) -> io::Result<()> {
        self.purged = Some(upto);
        self.recent.forget_upto(upto.index());
        let covered: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.end() <= upto.index() + 1)
            .map(|s| s.first)
            .collect();
        for first in covered {
            self.segments.remove(&first);
            std::fs::remove_file(self.dir.join(segment_name(first)))?;
        }
        if self
            .last
            .as_ref()
            .is_some_and(|l| l.index() <= upto.index())
        {
            self.last = None;
        }
        Ok(())
    }

    /// The entries in `range` from the first readable one, in order; with `limited`,
    /// only the first ones up to the read limits (at least one if the range holds any).
    /// Entries still in [`Recent`] are not read from the files.
    fn read(&self, range: &impl RangeBounds<u64>, limited: bool) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end_bound = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let next = start.max(self.first_readable());
        if self.recent.first().is_some_and(|first| first <= next) {
            return Ok(self.recent.read(next, end_bound, limited));
        }
        self.read_files(next, end_bound, limited)
    }

    /// [`Segments::read`] from the files: the entries from `next` up to `end_bound`
    /// (exclusive).
    fn read_files(&self, mut next: u64, end_bound: u64, limited: bool) -> io::Result<Vec<Entry>> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        // From the segment holding `next` (the last one starting at or before it) on.
        let from = self
            .segments
            .range(..=next)
            .next_back()
            .map_or(next, |(first, _)| *first);
        for segment in self.segments.range(from..).map(|(_, s)| s) {
            if segment.end() <= next {
                continue;
            }
            let here = next.max(segment.first);
            if here >= end_bound {
                break;
            }
            if here != next && !entries.is_empty() {
                return Err(corrupt(format!("no entry {next} in the log")));
            }
            next = here;
            let mut end = segment.end().min(end_bound);
            if limited {
                end = end.min(next + (READ_LIMIT_ENTRIES - entries.len()) as u64);
            }
            let begin_at = segment.offsets[(next - segment.first) as usize];
            let end_at = segment.record_end(end - 1);
            let mut buf = vec![0u8; (end_at - begin_at) as usize];
            segment.file.read_exact_at(&mut buf, begin_at)?;
            let mut at = 0usize;
            while next < end {
                let (payload, size) = decode_record(&buf[at..])
                    .ok_or_else(|| corrupt(format!("the record of entry {next} is damaged")))?;
                entries.push(decode_entry(next, payload)?);
                bytes = bytes.saturating_add(size);
                at += size;
                next += 1;
                if limited && (entries.len() >= READ_LIMIT_ENTRIES || bytes >= READ_LIMIT_BYTES) {
                    return Ok(entries);
                }
            }
            if next < segment.end() {
                break;
            }
        }
        Ok(entries)
    }
}

impl LogStore {
    /// Opens the log of `durable`'s directory (creating it if needed, and moving entries
    /// an earlier version kept in sled into segments) and starts the store's sync thread.
    ///
    /// With the `failpoints` feature, this is also where a node arms the fail points
    /// named in the `FAILPOINTS` environment variable: every node opens its log store
    /// before Raft starts (see `failpoints::init_from_env`).
    pub fn open(durable: &Durable) -> io::Result<LogStore> {
        #[cfg(feature = "failpoints")]
        failpoints::init_from_env()?;
        let db = durable.db();
        let meta = db.open_tree(META_TREE).map_err(sled_err)?;
        let dir = durable.dir().join(LOG_DIR);
        std::fs::create_dir_all(&dir)?;
        let purged: Option<LogId> = get_meta(&meta, LAST_PURGED_KEY)?;
        migrate(durable, &dir, purged)?;
        let log = Segments::load(dir, purged, SEGMENT_BYTES)?;
        let durable_last = log.last.map(|l| l.index());
        let flushed = Arc::new(watch::Sender::new(OnDisk {
            index: durable_last,
            truncations: 0,
        }));
        let syncer = Syncer::start(flushed.clone())?;
        Ok(LogStore {
            meta,
            durable: durable.clone(),
            shared: Arc::new(Shared {
                log: RwLock::new(log),
                syncer,
                appended: Arc::new(AtomicU64::new(0)),
                flushed,
            }),
        })
    }

    /// A counter of the encoded bytes of every entry appended since the store was
    /// opened; [`crate::compaction`] paces snapshots by it.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.shared.appended.clone()
    }

    /// The highest log index on disk, as it changes. The state machine adapter waits on
    /// it so that the state never holds an entry the log could lose in a crash (see
    /// [`crate::state_machine::StateMachineStore::after_log`]).
    pub fn flushed(&self) -> Flushed {
        Flushed(self.shared.flushed.subscribe())
    }

    fn read_log(&self) -> std::sync::RwLockReadGuard<'_, Segments> {
        // A panic while the lock was held happened before or after a whole change of
        // the table (each change is applied to the files first, then recorded).
        self.shared
            .log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_log(&self) -> std::sync::RwLockWriteGuard<'_, Segments> {
        self.shared
            .log
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `file` is synced by the sync thread.
    async fn sync_file(&self, file: Arc<File>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .shared
            .syncer
            .send(SyncRequest::Wait { file, tx })
            .is_err()
        {
            return Err(io::Error::other("the log sync thread has stopped"));
        }
        rx.await
            .map_err(|_| io::Error::other("the log sync thread has stopped"))?
    }

    /// Makes the sled metadata durable, off the async executor.
    async fn sync_meta(&self) -> io::Result<()> {
        let durable = self.durable.clone();
        tokio::task::spawn_blocking(move || durable.sync())
            .await
            .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let log = self.read_log();
        LogState {
            last_log_id: log.last.or(log.purged),
            last_purged_log_id: log.purged,
        }
    }

    /// Writes `entries` at the end of the log; returns the file to sync, the last index
    /// written and the truncation count it was written under.
    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> io::Result<Option<(Arc<File>, u64, u64)>> {
        // Encoded before the lock is taken: readers wait only for the write.
        let Some(batch) = Batch::encode(entries)? else {
            return Ok(None);
        };
        let encoded = batch.encoded;
        let mut log = self.write_log();
        let (file, last) = log.append(batch)?;
        self.shared.appended.fetch_add(encoded, Ordering::Relaxed);
        let truncations = self.shared.flushed.borrow().truncations;
        Ok(Some((file, last, truncations)))
    }
}

/// Consecutive entries encoded as segment records, ready to append.
struct Batch {
    first: u64,
    last: LogId,
    /// The records, one after another.
    buf: Vec<u8>,
    /// Where each entry's record starts in `buf`.
    offsets: Vec<u64>,
    /// The entries with their records' sizes, for [`Recent`].
    entries: Vec<(Entry, usize)>,
    /// The bytes of the entries' encodings (records without headers).
    encoded: u64,
}

impl Batch {
    /// Encodes `entries`, which must be consecutive; `None` if there are none.
    fn encode(entries: impl IntoIterator<Item = Entry>) -> io::Result<Option<Batch>> {
        let mut buf = Vec::new();
        let mut offsets = Vec::new();
        let mut encoded = 0u64;
        let mut kept: Vec<(Entry, usize)> = Vec::new();
        for entry in entries {
            let index = entry.index();
            if let Some((prev, _)) = kept.last() {
                let prev = prev.index();
                if prev.checked_add(1) != Some(index) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("appending non-consecutive entries: {index} after {prev}"),
                    ));
                }
            }
            offsets.push(buf.len() as u64);
            let payload = to_bytes(&entry)?;
            encoded += payload.len() as u64;
            encode_record(&payload, &mut buf)?;
            kept.push((entry, HEADER + payload.len()));
        }
        let (Some((first, _)), Some((last, _))) = (kept.first(), kept.last()) else {
            return Ok(None);
        };
        Ok(Some(Batch {
            first: first.index(),
            last: last.log_id(),
            buf,
            offsets,
            entries: kept,
            encoded,
        }))
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
) -> io::Result<Option<T>> {
    match meta.get(key).map_err(sled_err)? {
        Some(bytes) => Ok(Some(from_bytes(&bytes)?)),
        None => Ok(None),
    }
}

/// Moves the entries an earlier version kept in the sled tree `raft_log` into segments:
/// writes them all (replacing whatever segments exist, which a crash during an earlier
/// attempt may have left), syncs, and only then empties the tree. Does nothing when the
/// tree is empty.
fn migrate(durable: &Durable, dir: &Path, purged: Option<LogId>) -> io::Result<()> {
    let old = durable.db().open_tree(OLD_LOG_TREE).map_err(sled_err)?;
    if old.is_empty() {
        return Ok(());
    }
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        if path.extension().is_some_and(|e| e == "seg") {
            std::fs::remove_file(path)?;
        }
    }
    let mut log = Segments::new(dir.to_path_buf(), purged, SEGMENT_BYTES);
    let mut moved = 0u64;
    for item in old.iter() {
        let (_, value) = item.map_err(sled_err)?;
        let entry: Entry = from_bytes(&value)?;
        if purged.is_some_and(|p| entry.index() <= p.index()) {
            continue;
        }
        let mut buf = Vec::new();
        encode_record(&value, &mut buf)?;
        log.write(entry.index(), entry.log_id(), &buf, &[0])?;
        moved += 1;
    }
    for segment in log.segments.values() {
        segment.file.sync_data()?;
    }
    sync_dir(dir)?;
    old.clear().map_err(sled_err)?;
    durable.sync()?;
    tracing::info!(
        entries = moved,
        "moved the Raft log out of sled into segment files"
    );
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        self.read_log().read(&range, false)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        get_meta(&self.meta, VOTE_KEY)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.read_log().read(&(start..end), true)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        Ok(self.log_state())
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.meta
            .insert(VOTE_KEY, to_bytes(vote)?)
            .map_err(sled_err)?;
        self.sync_meta().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced on its own: it is only an optimisation (see the module doc).
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
        let stored: Option<LogId> = get_meta(&self.meta, COMMITTED_KEY)?;
        // sled may have written a commit point whose entries the segments lost in a
        // crash; nothing after the last entry on disk can be re-applied from here.
        let last = self.log_state().last_log_id;
        Ok(match (stored, last) {
            (Some(c), Some(l)) if c.index() > l.index() => Some(l),
            (Some(_), None) => None,
            (stored, _) => stored,
        })
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = failpoints::io_check(failpoints::LOG_BEFORE_APPEND)
            .and_then(|()| self.write_entries(entries));
        let (file, last, truncations) = match written {
            Ok(Some(written)) => written,
            Ok(None) => {
                callback.io_completed(Ok(()));
                return Ok(());
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        // The entries are readable now; the sync thread calls back once they are durable.
        let request = SyncRequest::Append {
            file,
            last,
            truncations,
            callback,
        };
        if let Err(request) = self.shared.syncer.send(request) {
            let stopped = || io::Error::other("the log sync thread has stopped");
            request.complete(Err(stopped()));
            return Err(stopped());
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let cut = {
            let mut log = self.write_log();
            let cut = log.truncate_after(last_log_id)?;
            // Under the lock, so every later append carries the new count.
            let kept = last_log_id.map(|l| l.index());
            self.shared.flushed.send_modify(|on_disk| {
                on_disk.truncations += 1;
                on_disk.index = on_disk.index.min(kept);
            });
            cut
        };
        match cut {
            Some(file) => self.sync_file(file).await,
            None => Ok(()),
        }
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        if self.read_log().purged.as_ref() >= Some(&log_id) {
            // Already purged that far; never move the purge point back.
            return Ok(());
        }
        // The purge point is durable before any segment goes (see the module doc).
        self.meta
            .insert(LAST_PURGED_KEY, to_bytes(&log_id)?)
            .map_err(sled_err)?;
        self.sync_meta().await?;
        self.write_log().purge(log_id)
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::type_config::TypeConfigExt;

    use super::*;

    fn lid(term: u64, index: u64) -> LogId {
        log_id::<TypeConfig>(term, 1, index)
    }

    /// Writes blank entries `range` of `term` one append at a time.
    fn write(log: &mut Segments, term: u64, range: std::ops::RangeInclusive<u64>) {
        for i in range {
            let mut buf = Vec::new();
            encode_record(
                &to_bytes(&Entry::new_blank(lid(term, i))).unwrap(),
                &mut buf,
            )
            .unwrap();
            log.write(i, lid(term, i), &buf, &[0]).unwrap();
        }
    }

    fn indexes(log: &Segments) -> Vec<u64> {
        log.read(&(..), false)
            .unwrap()
            .iter()
            .map(|e| e.index())
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Small segments: a blank entry's record is well under 100 bytes.
    const SMALL: u64 = 200;

    #[test]
    fn entries_span_segments_and_truncation_and_purging_remove_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Segments::load(dir.path().to_path_buf(), None, SMALL).unwrap();
        write(&mut log, 1, 1..=20);
        let files = segment_files(dir.path());
        assert!(files.len() >= 4, "{files:?}");
        assert_eq!(files[0], segment_name(1));
        assert_eq!(indexes(&log), (1..=20).collect::<Vec<_>>());
        let middle: Vec<u64> = log
            .read(&(7..=13), false)
            .unwrap()
            .iter()
            .map(|e| e.index())
            .collect();
        assert_eq!(middle, (7..=13).collect::<Vec<_>>());

        // Truncation cuts inside a segment and removes the later ones.
        log.truncate_after(Some(lid(1, 9))).unwrap();
        assert_eq!(indexes(&log), (1..=9).collect::<Vec<_>>());
        assert!(segment_files(dir.path()).len() < files.len());
        write(&mut log, 2, 10..=12);

        // Purging removes the segments holding only purged entries; a reload skips what
        // a partly purged segment still holds.
        let first_end = log.segments[&1].end();
        let upto = lid(1, first_end + 1);
        log.purge(upto).unwrap();
        assert_eq!(indexes(&log), (first_end + 2..=12).collect::<Vec<_>>());
        assert!(!segment_files(dir.path()).contains(&segment_name(1)));
        let reloaded = Segments::load(dir.path().to_path_buf(), Some(upto), SMALL).unwrap();
        assert_eq!(indexes(&reloaded), (first_end + 2..=12).collect::<Vec<_>>());
        assert_eq!(reloaded.last, Some(lid(2, 12)));

        // An entry past a gap (a snapshot installed beyond the log) starts a segment.
        log.purge(lid(3, 40)).unwrap();
        assert!(indexes(&log).is_empty());
        write(&mut log, 3, 41..=42);
        assert_eq!(indexes(&log), vec![41, 42]);
        assert_eq!(segment_files(dir.path()), vec![segment_name(41)]);
    }

    #[test]
    fn zeros_written_ahead_end_the_log_without_being_cut() {
        let dir = tempfile::tempdir().unwrap();
        let big = 1 << 30;
        let mut log = Segments::load(dir.path().to_path_buf(), None, big).unwrap();
        write(&mut log, 1, 1..=5);
        let path = dir.path().join(segment_name(1));
        let size = || std::fs::metadata(&path).unwrap().len();
        assert_eq!(size(), PREALLOCATE_BYTES);
        drop(log);

        // Reopened, the log ends at its last record; the zeros stay for the next appends.
        let mut log = Segments::load(dir.path().to_path_buf(), None, big).unwrap();
        assert_eq!(indexes(&log), (1..=5).collect::<Vec<_>>());
        assert_eq!(size(), PREALLOCATE_BYTES);
        write(&mut log, 1, 6..=8);
        assert_eq!(size(), PREALLOCATE_BYTES);
        let end = log.segments[&1].len;
        drop(log);
        let log = Segments::load(dir.path().to_path_buf(), None, big).unwrap();
        assert_eq!(indexes(&log), (1..=8).collect::<Vec<_>>());
        drop(log);

        // A record torn inside the zeros is still cut off, and the zeros after it with it.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut extra = Vec::new();
        encode_record(&to_bytes(&Entry::new_blank(lid(1, 9))).unwrap(), &mut extra).unwrap();
        let at = end as usize;
        let half = extra.len() / 2;
        bytes[at..at + half].copy_from_slice(&extra[..half]);
        std::fs::write(&path, &bytes).unwrap();
        let mut log = Segments::load(dir.path().to_path_buf(), None, big).unwrap();
        assert_eq!(indexes(&log), (1..=8).collect::<Vec<_>>());
        assert_eq!(size(), end);
        write(&mut log, 1, 9..=9);
        assert_eq!(indexes(&log), (1..=9).collect::<Vec<_>>());

        // A segment is cut to its last record when the next one starts, so zeros at the
        // end of any but the newest are damage.
        let dir = tempfile::tempdir().unwrap();
        let mut log = Segments::load(dir.path().to_path_buf(), None, SMALL).unwrap();
        write(&mut log, 1, 1..=20);
        let (_, newest) = log.segments.iter().next_back().unwrap();
        assert!(
            newest.allocated > newest.len,
            "the newest segment has zeros ahead"
        );
        for (first, segment) in log.segments.range(..newest.first) {
            let file = dir.path().join(segment_name(*first));
            assert_eq!(std::fs::metadata(file).unwrap().len(), segment.len);
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_elsewhere_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Segments::load(dir.path().to_path_buf(), None, SMALL).unwrap();
        write(&mut log, 1, 1..=10);
        let files = segment_files(dir.path());
        let newest = dir.path().join(files.last().unwrap());
        let oldest = dir.path().join(&files[0]);

        // Half a record at the end of the newest segment: a write the crash cut short.
        let whole = log.segments.values().next_back().unwrap().len;
        drop(log);
        let mut bytes = std::fs::read(&newest).unwrap();
        let mut extra = Vec::new();
        encode_record(
            &to_bytes(&Entry::new_blank(lid(1, 11))).unwrap(),
            &mut extra,
        )
        .unwrap();
        bytes.truncate(whole as usize);
        bytes.extend_from_slice(&extra[..extra.len() / 2]);
        std::fs::write(&newest, &bytes).unwrap();
        let log = Segments::load(dir.path().to_path_buf(), None, SMALL).unwrap();
        assert_eq!(indexes(&log), (1..=10).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&newest).unwrap().len(), whole);
        drop(log);

        // A flipped byte in an older segment is corruption, not a torn write.
        let mut bytes = std::fs::read(&oldest).unwrap();
        bytes[HEADER + 1] ^= 0xff;
        std::fs::write(&oldest, &bytes).unwrap();
        let err = Segments::load(dir.path().to_path_buf(), None, SMALL)
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn entries_kept_in_sled_by_an_earlier_version_move_to_segments() {
        let dir = tempfile::tempdir().unwrap();
        // One handle throughout: sled releases its file lock only when its background
        // threads notice the last handle is gone, so opening the directory again at once
        // can fail. The move happens when the log store opens, which is what is tested.
        let durable = Durable::open(dir.path()).unwrap();
        {
            let old = durable.db().open_tree(OLD_LOG_TREE).unwrap();
            for i in 1..=8u64 {
                let entry = Entry::new_blank(lid(1, i));
                old.insert(i.to_be_bytes(), to_bytes(&entry).unwrap())
                    .unwrap();
            }
            let meta = durable.db().open_tree(META_TREE).unwrap();
            meta.insert(LAST_PURGED_KEY, to_bytes(&lid(1, 3)).unwrap())
                .unwrap();
            meta.insert(VOTE_KEY, to_bytes(&Vote::new_committed(1, 1)).unwrap())
                .unwrap();
            durable.sync().unwrap();
        }
        let mut store = LogStore::open(&durable).unwrap();
        assert!(durable.db().open_tree(OLD_LOG_TREE).unwrap().is_empty());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(
            (state.last_purged_log_id, state.last_log_id),
            (Some(lid(1, 3)), Some(lid(1, 8)))
        );
        let entries = store.try_get_log_entries(..).await.unwrap();
        assert_eq!(
            entries.iter().map(|e| e.index()).collect::<Vec<_>>(),
            (4..=8).collect::<Vec<_>>()
        );
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(1, 1))
        );
        assert_eq!(store.flushed().index(), Some(8));
    }

    #[tokio::test]
    async fn the_commit_point_and_the_flushed_index_never_pass_the_entries_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Durable::open(dir.path()).unwrap();
        let mut store = LogStore::open(&durable).unwrap();
        let (tx, rx) = TypeConfig::oneshot();
        let entries: Vec<Entry> = (1..=3).map(|i| Entry::new_blank(lid(1, i))).collect();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        assert_eq!(store.flushed().index(), Some(3));
        // As if sled had written a commit point whose entries a crash took.
        store.save_committed(Some(lid(1, 5))).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(lid(1, 3)));
        store.save_committed(Some(lid(1, 2))).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(lid(1, 2)));

        // Truncation takes the truncated indexes out of what is on disk until their
        // replacements are synced.
        store.truncate_after(Some(lid(1, 1))).await.unwrap();
        assert_eq!(store.flushed().index(), Some(1));
        let (tx, rx) = TypeConfig::oneshot();
        store
            .append(vec![Entry::new_blank(lid(2, 2))], IOFlushed::signal(tx))
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
        assert_eq!(store.flushed().index(), Some(2));
    }

    /// Appends blank entries `range` of `term` as the store does: written, and kept among
    /// the recent entries.
    fn append(log: &mut Segments, term: u64, range: std::ops::RangeInclusive<u64>) {
        let entries = range
            .map(|i| Entry::new_blank(lid(term, i)))
            .collect::<Vec<_>>();
        let batch = Batch::encode(entries).unwrap().unwrap();
        log.append(batch).unwrap();
    }

    /// Every read gives what the files give: those the recent entries answer too.
    fn assert_reads_match_the_files(log: &Segments) {
        let last = log.last.map_or(0, |l| l.index());
        for start in 0..=last + 1 {
            for end in start..=last + 2 {
                for limited in [false, true] {
                    let next = start.max(log.first_readable());
                    assert_eq!(
                        log.read(&(start..end), limited).unwrap(),
                        log.read_files(next, end, limited).unwrap(),
                        "{start}..{end}, limited {limited}"
                    );
                }
            }
        }
    }

    #[test]
    fn recent_entries_read_as_the_files_do_through_truncation_and_purging() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Segments::load(dir.path().to_path_buf(), None, SMALL).unwrap();
        // Room for a few blank entries only, so that the oldest are forgotten.
        log.recent = Recent::new(150);
        append(&mut log, 1, 1..=3);
        append(&mut log, 1, 4..=8);
        assert!(log.recent.first() > Some(1));
        assert!(log.recent.bytes <= 150);
        assert_reads_match_the_files(&log);

        log.truncate_after(Some(lid(1, 6))).unwrap();
        assert_reads_match_the_files(&log);
        append(&mut log, 2, 7..=9);
        assert_eq!(log.read(&(9..10), false).unwrap()[0].log_id(), lid(2, 9));
        assert_reads_match_the_files(&log);

        log.purge(lid(2, 8)).unwrap();
        assert_eq!(log.recent.first(), Some(9));
        assert_reads_match_the_files(&log);

        // A snapshot installed past the log: the next entries do not follow.
        log.purge(lid(3, 20)).unwrap();
        assert_eq!(log.recent.first(), None);
        append(&mut log, 3, 21..=22);
        assert_eq!(log.recent.first(), Some(21));
        assert_reads_match_the_files(&log);

        log.truncate_after(None).unwrap();
        assert_eq!(log.recent.first(), None);
        assert_reads_match_the_files(&log);
    }

    #[test]
    fn a_record_round_trips_and_a_damaged_or_short_one_is_refused() {
        let mut buf = Vec::new();
        encode_record(b"entry", &mut buf).unwrap();
        assert_eq!(decode_record(&buf), Some((&b"entry"[..], buf.len())));
        assert_eq!(decode_record(&buf[..buf.len() - 1]), None);
        assert_eq!(decode_record(&buf[..3]), None);
        let mut flipped = buf.clone();
        flipped[HEADER] ^= 1;
        assert_eq!(decode_record(&flipped), None);
        assert_eq!(decode_record(&[0u8; 64]), None, "a zero-filled tail");
    }
}
