//! Durable sled: a flush followed by a real `fdatasync`.
//!
//! sled's `flush()` issues `sync_file_range`, which survives a process crash but not a
//! power loss or kernel crash: it flushes neither the disk cache nor the metadata needed
//! to read the data back. [`Durable::sync`] therefore flushes sled and then calls
//! `fdatasync` on sled's data file through a handle of our own (an fsync through any
//! handle of an inode flushes that inode).
//!
//! sled writes values larger than a quarter of a segment to separate blob files, which it
//! never syncs. We open sled with 8 MiB segments, so only values over ~2 MiB become blobs
//! (no state record comes near that), and `sync` still fsyncs any blob file and the blob
//! directory, so even that path is durable.
//!
//! The state machine and the Raft log store's vote and purge point share one `Durable`;
//! the Raft log itself is in segment files of its own (`keyraft_raft::log_store`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The errors of the state machine's storage. Any of them stops the node: a replica that
/// cannot read or write its state must not answer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation failed.
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    /// Stored bytes did not decode: the data directory is corrupt or from another version.
    #[error("corrupt state record {key}: {detail}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What failed.
        detail: String,
    },
    /// A snapshot transfer was overtaken by a newer one, which now writes the state tree
    /// it was writing.
    #[error("a newer snapshot transfer took over from this one")]
    Superseded,
    /// A snapshot was received whole and waits to be installed: no other may start.
    #[error("a received snapshot is being installed")]
    InstallPending,
}

impl From<StateError> for io::Error {
    fn from(e: StateError) -> io::Error {
        match e {
            StateError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// A sled database whose writes can be made durable.
#[derive(Clone)]
pub struct Durable {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    data_file: File,
    dir: PathBuf,
}

/// sled's segment size: values over a quarter of it are written as unsynced blob files.
const SEGMENT_SIZE: usize = 8 << 20;

/// The most memory sled's page cache holds, by its own accounting. sled's default is
/// 1 GiB; the hot data (keys, credentials, the audit head) is a few MiB. This bound
/// alone did not keep a node's memory flat under audited calls: with glibc's allocator
/// it still grew by kilobytes per call. The `keyraft` binary uses jemalloc, with which
/// it stayed at 200–260 MiB between snapshots through 750 000 unpruned audit events
/// (see BENCHMARKS.md).
const CACHE_CAPACITY: u64 = 64 << 20;

impl Durable {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Durable, StateError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(CACHE_CAPACITY)
            .open()?;
        let data_file = File::open(dir.join("db"))?;
        Ok(Durable {
            inner: Arc::new(Inner {
                db,
                data_file,
                dir: dir.to_path_buf(),
            }),
        })
    }

    /// The sled database.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// Makes every write so far durable: sled flush, then `fdatasync` of its files.
    pub fn sync(&self) -> io::Result<()> {
        self.inner
            .db
            .flush()
            .map_err(|e| io::Error::other(format!("sled flush: {e}")))?;
        self.inner.data_file.sync_data()?;
        let blobs = self.inner.dir.join("blobs");
        let mut any_blob = false;
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            for entry in entries.flatten() {
                any_blob = true;
                File::open(entry.path())?.sync_data()?;
            }
        }
        if any_blob {
            File::open(&blobs)?.sync_all()?;
        }
        Ok(())
    }

    /// The directory holding the database.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}
