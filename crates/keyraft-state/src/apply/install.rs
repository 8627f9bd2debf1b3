//! Installing a snapshot: the records go into a second state tree as they come, and the
//! state switches to that tree whole once the last of them is in.
//!
//! A follower receives a snapshot as a stream of records. It writes them into the tree
//! the state is *not* in ([`StateMachine::receive`] hands out an [`Incoming`] for it),
//! so the snapshot takes no memory and no other disk than the new state itself, and
//! reads and apply go on over the old tree meanwhile. Only when the sender's end chunk
//! has verified does the node hand the [`Incoming`] to
//! [`StateMachine::install_received`], which syncs the new tree and switches to it in
//! one synced write. A transfer that fails, or that the Raft layer does not install,
//! drops its [`Incoming`], and with it the partial tree.
//!
//! There is one second tree, so one transfer at a time writes it: a newer one takes the
//! tree over, and the older one fails at its next write ([`StateError::Superseded`]).
//! (A leader that went away mid-transfer, say behind a partition, leaves a stream that
//! may not end for a long time; its successor's transfer must not wait for it.) A
//! transfer that has all its records ([`Incoming::seal`]) is not taken over: it is on its
//! way to the Raft layer, which treats a failed install as fatal. A newer transfer is
//! refused until that one is installed or dropped ([`StateError::InstallPending`]).

use std::sync::{Arc, Mutex, MutexGuard};

use super::{current_tree_name, other_tree_name, upgrade, Layers, StateMachine, CURRENT_TREE};
use crate::keys;
use crate::storage::StateError;

/// About how many bytes of records an install writes to sled in one batch.
const INSTALL_BATCH: usize = 8 << 20;

/// Which transfer owns the second tree.
#[derive(Default)]
pub(super) struct Receiving(Mutex<Owner>);

#[derive(Default)]
struct Owner {
    /// The transfer writing the second tree now, if any.
    current: Option<u64>,
    /// That transfer has all its records ([`Incoming::seal`]).
    sealed: bool,
    /// The last transfer number handed out.
    issued: u64,
}

impl Receiving {
    fn lock(&self) -> MutexGuard<'_, Owner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Owner {
    /// Fails unless transfer `number` still owns the tree.
    fn check(&self, number: u64) -> Result<(), StateError> {
        if self.current == Some(number) {
            Ok(())
        } else {
            Err(StateError::Superseded)
        }
    }

    /// No transfer owns the tree any more.
    fn release(&mut self) {
        self.current = None;
        self.sealed = false;
    }
}

/// A snapshot being received: its records so far, in the tree the state is not in.
///
/// [`StateMachine::receive`] hands it out; [`Incoming::write`] adds records as they
/// arrive, while the node reads and applies over its old tree; once all of them are in
/// and checked, [`Incoming::seal`] marks it whole and
/// [`StateMachine::install_received`] switches the state to it. Dropped before that, it
/// drops its partial tree. One transfer at a time owns the tree: a newer one takes it
/// over from one not yet sealed.
pub struct Incoming {
    receiving: Arc<Receiving>,
    number: u64,
    db: sled::Db,
    tree: sled::Tree,
    name: &'static str,
    /// Records not yet written, and their size.
    batch: sled::Batch,
    bytes: usize,
    /// Installed or given up: nothing is left for `drop` to do.
    settled: bool,
}

impl Incoming {
    /// Adds records. They are written to sled in batches of about 8 MiB: reads of the
    /// state go on meanwhile (a sled batch stops every read while it is written, and one
    /// batch of a whole large state once stopped a node for tens of seconds), and no
    /// more than one batch is held in memory. Blocking.
    pub fn write(
        &mut self,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StateError> {
        for (k, v) in records {
            self.bytes += k.len() + v.len();
            self.batch.insert(k, v);
            if self.bytes >= INSTALL_BATCH {
                self.write_batch()?;
            }
        }
        Ok(())
    }

    /// Writes the records held so far, if this transfer still owns the tree.
    fn write_batch(&mut self) -> Result<(), StateError> {
        self.receiving.lock().check(self.number)?;
        self.tree.apply_batch(std::mem::take(&mut self.batch))?;
        self.bytes = 0;
        Ok(())
    }

    /// Marks the transfer whole: from now on no newer transfer takes the tree over
    /// before this one is installed or dropped. Fails if one already has.
    pub fn seal(&mut self) -> Result<(), StateError> {
        let mut owner = self.receiving.lock();
        owner.check(self.number)?;
        owner.sealed = true;
        Ok(())
    }

    /// Gives the transfer up and drops its partial tree now (dropping an `Incoming` does
    /// it on a thread of its own). Blocking.
    pub fn abandon(mut self) -> Result<(), StateError> {
        self.settled = true;
        abandon(&self.receiving, self.number, &self.db, self.name)
    }
}

/// Drops the partial tree of transfer `number` unless a newer transfer owns it.
fn abandon(
    receiving: &Receiving,
    number: u64,
    db: &sled::Db,
    name: &str,
) -> Result<(), StateError> {
    let mut owner = receiving.lock();
    if owner.current == Some(number) {
        owner.release();
        db.drop_tree(name)?;
    }
    Ok(())
}

impl Drop for Incoming {
    /// Drops the partial tree of a transfer that was not installed, unless a newer one
    /// has taken the tree over. That walks the tree's pages, which for a large state
    /// takes a while, so it runs on a thread of its own rather than on whatever task
    /// let go of the transfer.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (receiving, number, db, name) = (
            self.receiving.clone(),
            self.number,
            self.db.clone(),
            self.name,
        );
        let drop_tree = move || {
            if let Err(e) = abandon(&receiving, number, &db, name) {
                // The next transfer, or the next start, drops it.
                tracing::warn!(error = %e, "dropping a partly received snapshot failed");
            }
        };
        if std::thread::Builder::new()
            .name("drop-partial-snapshot".into())
            .spawn(drop_tree)
            .is_err()
        {
            // No thread to be had: the next transfer, or the next start, drops the tree.
            let mut owner = self.receiving.lock();
            if owner.current == Some(self.number) {
                owner.release();
            }
        }
    }
}

impl StateMachine {
    /// Starts receiving a snapshot: empties the tree the state is not in and hands it
    /// out. A transfer still writing that tree is superseded; one that has all its
    /// records and waits to be installed is not, and this fails instead
    /// ([`StateError::InstallPending`]). Blocking.
    pub fn receive(&self) -> Result<Incoming, StateError> {
        let mut owner = self.receiving.lock();
        if owner.current.is_some() && owner.sealed {
            return Err(StateError::InstallPending);
        }
        owner.issued += 1;
        let number = owner.issued;
        // From here the older transfer, if any, can write nothing more.
        owner.release();
        let db = self.durable.db();
        let name = other_tree_name(&current_tree_name(db)?);
        db.drop_tree(name)?;
        let tree = db.open_tree(name)?;
        owner.current = Some(number);
        Ok(Incoming {
            receiving: self.receiving.clone(),
            number,
            db: db.clone(),
            tree,
            name,
            batch: sled::Batch::default(),
            bytes: 0,
            settled: false,
        })
    }

    /// Makes the received records the whole state, as of `last_applied`, durably and as
    /// one change: reads see the old state until the new one is whole.
    ///
    /// Once the new tree is synced, the name of the current tree is switched in one
    /// synced write, and the old tree is dropped. A crash before the switch leaves the
    /// old state, and the next open drops the partial tree; a crash after it leaves the
    /// new one. Fails, changing nothing, if a newer transfer has taken the tree over.
    /// Blocking.
    pub fn install_received(
        &self,
        mut incoming: Incoming,
        last_applied: Vec<u8>,
        membership: Vec<u8>,
    ) -> Result<(), StateError> {
        if !Arc::ptr_eq(&incoming.receiving, &self.receiving) {
            return Err(StateError::Io(std::io::Error::other(
                "a snapshot received by another state machine",
            )));
        }
        incoming.batch.insert(keys::LAST_APPLIED, last_applied);
        incoming.batch.insert(keys::MEMBERSHIP, membership);
        // Held to the end: no transfer may start on the old tree before it is dropped.
        let mut owner = self.receiving.lock();
        owner.check(incoming.number)?;
        incoming
            .tree
            .apply_batch(std::mem::take(&mut incoming.batch))?;
        // A snapshot from a node of an earlier version has the earlier layout.
        upgrade(&incoming.tree)?;
        self.durable.sync()?;
        let db = self.durable.db();
        let old = current_tree_name(db)?;
        {
            let _write = self.gate.write();
            let _guard = self.lock();
            db.insert(CURRENT_TREE, incoming.name.as_bytes())?;
            self.durable.sync()?;
            // The snapshot replaces what was applied, flushed or not.
            let mut layers = self.layers_mut();
            *self.tree.write().unwrap_or_else(|p| p.into_inner()) = incoming.tree.clone();
            *layers = Layers::default();
        }
        incoming.settled = true;
        owner.release();
        db.drop_tree(old.as_bytes())?;
        Ok(())
    }

    /// Replaces the whole state with `records` (a snapshot's) as of `last_applied`:
    /// [`StateMachine::receive`], [`Incoming::write`] and
    /// [`StateMachine::install_received`] in one. A record that fails to read fails the
    /// install and leaves the state as it was. Blocking.
    pub fn install(
        &self,
        records: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), StateError>>,
        last_applied: Vec<u8>,
        membership: Vec<u8>,
    ) -> Result<(), StateError> {
        let mut incoming = self.receive()?;
        for record in records {
            let written = record.and_then(|record| incoming.write([record]));
            if let Err(e) = written {
                incoming.abandon()?;
                return Err(e);
            }
        }
        self.install_received(incoming, last_applied, membership)
    }
}
