//! The Raft log and vote, in sled, durable before openraft hears they are.
//!
//! Entries live in the tree `raft_log` under 8-byte big-endian indexes (so sled's order
//! is log order); the vote, the last purged log id and the committed log id live in the
//! tree `raft_meta`. Each operation is one atomic sled batch.
//!
//! openraft requires every write to be persisted in submission order and an append to
//! be flushed before `IOFlushed` is signalled. sled's own flush is not an fsync (see
//! [`keyraft_state::Durable`]), so `save_vote` and `append` call `Durable::sync` — a sled
//! flush plus a real `fdatasync` — before they report success. Truncate and purge are
//! written in order and become durable with the next sync; a crash before that only
//! loses an operation openraft will redo, never an acknowledged entry.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use keyraft_state::Durable;

use crate::typ::{Entry, LogId, Vote};
use crate::{from_bytes, to_bytes, TypeConfig};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// The sled-backed Raft log store. Clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    durable: Durable,
    log: sled::Tree,
    meta: sled::Tree,
}

fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("sled: {e}"))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// Opens the log trees of `durable`.
    pub fn open(durable: &Durable) -> io::Result<LogStore> {
        let db = durable.db();
        Ok(LogStore {
            durable: durable.clone(),
            log: db.open_tree("raft_log").map_err(sled_err)?,
            meta: db.open_tree("raft_meta").map_err(sled_err)?,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(sled_err)? {
            Some(v) => Ok(Some(from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    async fn sync(&self) -> io::Result<()> {
        let durable = self.durable.clone();
        tokio::task::spawn_blocking(move || durable.sync())
            .await
            .map_err(|e| io::Error::other(format!("sync task failed: {e}")))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (k, v) = item.map_err(sled_err)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k);
            let index = u64::from_be_bytes(b);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = from_bytes(&v)?;
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(sled_err)? {
            Some((_, v)) => Some(from_bytes::<Entry>(&v)?.log_id()),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.meta.insert(VOTE, to_bytes(vote)?).map_err(sled_err)?;
        self.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        match committed {
            Some(c) => self
                .meta
                .insert(COMMITTED, to_bytes(&c)?)
                .map_err(sled_err)?,
            None => self.meta.remove(COMMITTED).map_err(sled_err)?,
        };
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.get_meta(COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.index()), to_bytes(&entry)?);
        }
        self.log.apply_batch(batch).map_err(sled_err)?;
        // Entries are readable now; they are acknowledged once they are on disk.
        let durable = self.durable.clone();
        tokio::task::spawn_blocking(move || callback.io_completed(durable.sync()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(from)..) {
            let (k, _) = item.map_err(sled_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(sled_err)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record how far the log was purged before removing anything, so the log state
        // is never lower than what is gone.
        self.meta
            .insert(LAST_PURGED, to_bytes(&log_id)?)
            .map_err(sled_err)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index())) {
            let (k, _) = item.map_err(sled_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(sled_err)
    }
}
