//! [`StateMachine`]: deterministic apply over a sled tree, and the queries nodes serve.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use keyraft_types::audit::GENESIS_HASH;
use keyraft_types::{
    AccountId, AliasName, AuditEvent, AuditRecord, CryptoOperation, ErrorCode, EventType, KeyId,
    KeyManager, KeyMetadata, KeyState, KmsError, NodeId, Origin, RequestParameters, UserIdentity,
};

use crate::command::{
    AccessKeyRecord, AccountQuota, AliasRecord, ApplyEntry, AuditCheckpoint, Bootstrap,
    ClusterConfig, Command, GrantRecord, ImportParameters, JoinAuthorization, KeyRecord,
    NodeRecord, Op, PreparedRotation, PrincipalKind, PrincipalRecord, QuotaUsage, Reply, Response,
    Rotation,
};
use crate::keys;
use crate::storage::{Durable, StateError};
use crate::{
    DEFAULT_ALIAS_QUOTA, DEFAULT_GRANTS_PER_KEY, DEFAULT_KEY_QUOTA, MAX_ON_DEMAND_ROTATIONS,
    MAX_TAGS_PER_KEY, REQUEST_ID_TTL_MS,
};

/// The replicated state of one node.
pub struct StateMachine {
    durable: Durable,
    /// The sled tree the state is in. It changes only when a snapshot is installed
    /// ([`StateMachine::install`]), and only with `layers` write-locked: a read holds
    /// `layers` while it reads the tree, so it sees one state.
    tree: RwLock<sled::Tree>,
    /// Applied writes not yet in `tree`; every read sees them first (see [`view`]).
    layers: RwLock<Layers>,
    /// The tree changes only as this gate lets it: one flush or install at a time, and
    /// none while a [`StateView`] is held (see [`pin`]). Passed before `write_lock`,
    /// never after.
    gate: Arc<FlushGate>,
    /// A flush is due and someone has undertaken to run it ([`StateMachine::claim_flush`]).
    flush_claimed: AtomicBool,
    /// Why a flush failed, if one did: every later apply fails with it, because a
    /// replica that cannot write its state must stop.
    flush_failed: Mutex<Option<String>>,
    /// Runs once a flush has sealed its layers and before it writes them (tests).
    #[cfg(test)]
    pub(crate) mid_flush: Mutex<Option<MidFlush>>,
    /// Serialises apply with a snapshot install. Apply runs on the Raft task, so nothing
    /// may hold this lock for long.
    write_lock: Mutex<()>,
    /// Which snapshot transfer writes the second state tree (see [`Incoming`]).
    receiving: Arc<install::Receiving>,
}

/// What a test runs in the middle of a flush.
#[cfg(test)]
pub(crate) type MidFlush = Box<dyn FnOnce(&StateMachine) + Send>;

/// The Raft layer's metadata as the state machine stores it: opaque bytes of the last
/// applied log id and of the membership, written atomically with the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedMeta {
    /// The last applied log id.
    pub last_applied: Option<Vec<u8>>,
    /// The newest membership.
    pub membership: Option<Vec<u8>>,
}

/// Everything in the state machine except the Raft metadata, as a snapshot carries it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// Raw (key, value) records of the state tree.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct StoredResponse {
    time_ms: u64,
    response: Response,
}

mod iam;
mod install;
mod pin;
mod view;

use pin::FlushGate;
use view::{prefix_range, Layers, View, Writes};

pub use install::Incoming;
pub use pin::StateView;

pub use iam::{MAX_ACCESS_KEYS, MAX_INLINE_POLICIES};

/// Reads through pending writes, so the commands of one batch see each other.
struct Txn<'a> {
    view: View<'a>,
    pub(crate) writes: Writes,
    /// Records [`Txn::get_shared`] decoded, by key. A write or delete of a key drops its
    /// entry, so the cache never differs from what [`Txn::get`] would read.
    decoded: RefCell<HashMap<Vec<u8>, Rc<dyn Any>>>,
    /// The audit events the current command appended, written as one chunk when the
    /// command is done ([`Txn::seal_audit_chunk`]).
    audit_chunk: Vec<AuditEvent>,
}

impl<'a> Txn<'a> {
    fn new(view: View<'a>) -> Self {
        Txn {
            view,
            writes: BTreeMap::new(),
            decoded: RefCell::default(),
            audit_chunk: Vec::new(),
        }
    }

    /// The sequence number and hash of the newest audit event, this command's included.
    fn audit_head(&self) -> Result<(u64, String), StateError> {
        if let Some(e) = self.audit_chunk.last() {
            return Ok((e.sequence, e.hash.clone()));
        }
        Ok(self
            .get(keys::AUDIT_HEAD)?
            .unwrap_or_else(|| (0, GENESIS_HASH.to_string())))
    }

    /// Writes the events appended since the last call as one chunk, and the new head.
    ///
    /// Chunks end where commands (log entries) end, never where an apply batch ends, so
    /// every replica stores the same records however it batches. One record per entry
    /// instead of one per event is most of what an audited call costs sled.
    fn seal_audit_chunk(&mut self) -> Result<(), StateError> {
        let events = std::mem::take(&mut self.audit_chunk);
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let head = (last.sequence, last.hash.clone());
        self.put(keys::audit(first.sequence), &events)?;
        self.put(keys::AUDIT_HEAD.to_vec(), &head)
    }

    /// [`Txn::get`], decoded once per transaction: the audit records of a batch check the
    /// same few credentials, principals and keys again and again.
    fn get_shared<T: DeserializeOwned + 'static>(
        &self,
        key: &[u8],
    ) -> Result<Option<Rc<T>>, StateError> {
        let cached = self.decoded.borrow().get(key).cloned();
        if let Some(value) = cached.and_then(|v| v.downcast::<T>().ok()) {
            return Ok(Some(value));
        }
        let Some(value) = self.get::<T>(key)? else {
            return Ok(None);
        };
        let value = Rc::new(value);
        self.decoded
            .borrow_mut()
            .insert(key.to_vec(), value.clone());
        Ok(Some(value))
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StateError> {
        match self.writes.get(key) {
            Some(Some(v)) => decode(key, v).map(Some),
            Some(None) => Ok(None),
            None => self.view.get(key)?.map(|v| decode(key, &v)).transpose(),
        }
    }

    fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StateError> {
        let bytes = encode(&key, value)?;
        self.put_raw(key, bytes);
        Ok(())
    }

    fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.decoded.get_mut().remove(&key);
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.decoded.get_mut().remove(&key);
        self.writes.insert(key, None);
    }

    /// The records under `prefix` in key order, as this transaction sees them: the tree
    /// overlaid with the pending writes.
    ///
    /// Apply must never scan the tree alone: it would miss what earlier commands of the
    /// same batch wrote and see what they deleted, so the outcome would depend on where
    /// the batch ends, and replicas batch differently (the leader applies what committed
    /// together, a follower what arrived together, a restarted node what it replays).
    fn scan_prefix<'t>(&'t self, prefix: &[u8]) -> view::Overlaid<'t> {
        self.view.range_under(prefix_range(prefix), &self.writes)
    }

    /// The entries of a due-time index (deletions, rotations, expiries) due by
    /// `now_ms`, in due order, at most `limit` of them. Malformed entries are skipped.
    fn due_entries(
        &self,
        prefix: &[u8],
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<keys::DueEntry>, StateError> {
        let mut out = Vec::new();
        for item in self.scan_prefix(prefix) {
            let (k, _) = item?;
            let Some(entry) = keys::parse_due(prefix, &k) else {
                continue;
            };
            if entry.due_ms > now_ms || out.len() == limit {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// The earliest due time in a due-time index.
    fn first_due(&self, prefix: &[u8]) -> Result<Option<u64>, StateError> {
        for item in self.scan_prefix(prefix) {
            let (k, _) = item?;
            if let Some(entry) = keys::parse_due(prefix, &k) {
                return Ok(Some(entry.due_ms));
            }
        }
        Ok(None)
    }

    /// The transaction's writes, to be laid over the state.
    fn into_writes(self) -> Writes {
        self.writes
    }
}

fn encode<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StateError> {
    bincode::serialize(value).map_err(|e| StateError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StateError> {
    bincode::deserialize(bytes).map_err(|e| StateError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

impl StateMachine {
    /// Opens the state tree of `durable` (the one its last install made current), and
    /// drops what a crash left of an install that did not finish.
    pub fn open(durable: &Durable) -> Result<StateMachine, StateError> {
        let db = durable.db();
        let current = current_tree_name(db)?;
        db.drop_tree(other_tree_name(&current))?;
        let tree = db.open_tree(&current)?;
        upgrade(&tree)?;
        Ok(StateMachine {
            durable: durable.clone(),
            tree: RwLock::new(tree),
            layers: RwLock::default(),
            gate: Arc::default(),
            flush_claimed: AtomicBool::new(false),
            flush_failed: Mutex::new(None),
            #[cfg(test)]
            mid_flush: Mutex::new(None),
            write_lock: Mutex::new(()),
            receiving: Arc::default(),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state as applied: the tree with the unflushed writes over it.
    /// `f` must be short (a lookup, a page of a list): while it runs, a flush waiting to
    /// swap the layers waits, and so does every read that comes after that flush.
    fn read<R>(&self, f: impl FnOnce(View<'_>) -> R) -> R {
        let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
        let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
        f(layers.view(&tree))
    }

    /// The sled tree the state is in now.
    pub(crate) fn tree(&self) -> sled::Tree {
        self.tree.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Holds flushes off until the hold drops (tests).
    #[cfg(test)]
    pub(crate) fn hold_flushes(&self) -> pin::FlushHold {
        self.gate.hold()
    }

    fn layers_mut(&self) -> std::sync::RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is applied to sled: seals the current layer, then writes each sealed
    /// layer as an atomic batch of its own, oldest first, dropping it once sled has it.
    /// Apply goes on meanwhile into a fresh layer, and reads see a sealed layer until
    /// sled has it. The layers sealed after this call began are left to the next flush,
    /// and so are the rest when someone waits to hold flushes off ([`StateView`]): they
    /// wait for one batch at most. After a failure the layers stay readable, and every
    /// later apply fails. The caller is the gate's writer.
    fn flush_held(&self) -> Result<(), StateError> {
        let layers = {
            let mut layers = self.layers_mut();
            layers.seal();
            layers.sealed.len()
        };
        #[cfg(test)]
        if layers > 0 {
            if let Some(hook) = self.mid_flush.lock().ok().and_then(|mut h| h.take()) {
                hook(self);
            }
        }
        for written in 0..layers {
            if written > 0 && self.gate.hold_wanted() {
                break;
            }
            let oldest = {
                let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
                match layers.sealed.first() {
                    Some(layer) => layer.clone(),
                    None => break,
                }
            };
            // Built before sled's batch lock is taken, which every read of the tree
            // waits for: between two layers, reads go on.
            let batch = view::batch(&oldest);
            if let Err(e) = self.tree().apply_batch(batch) {
                *self.flush_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                return Err(e.into());
            }
            self.layers_mut().drop_flushed();
        }
        Ok(())
    }

    /// Whether the applied writes held in memory should be written to sled now (the
    /// oldest is 100 ms old, or a layer of 1 MiB is sealed) and no one has undertaken
    /// that yet. If it returns true, the caller has undertaken it and must call
    /// [`StateMachine::flush`], best on a thread that may block for milliseconds.
    pub fn claim_flush(&self) -> bool {
        let due = {
            let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
            layers.due()
        };
        due && self
            .flush_claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Writes what is applied so far to sled (not synced: see [`StateMachine::apply`]),
    /// all of it unless someone waits to take a [`StateView`] (the rest is left to the
    /// next flush). A node calls it when [`StateMachine::claim_flush`] says so, and when
    /// it shuts down, so that its next start has little to apply again. A failure also
    /// makes every later apply fail.
    pub fn flush(&self) -> Result<(), StateError> {
        let _write = self.gate.write();
        let flushed = self.flush_held();
        self.flush_claimed.store(false, Ordering::Release);
        flushed
    }

    /// Whether someone waits to take a view (tests).
    #[cfg(test)]
    pub(crate) fn hold_wanted(&self) -> bool {
        self.gate.hold_wanted()
    }

    /// Makes apply seal a layer after every apply (tests).
    #[cfg(test)]
    pub(crate) fn seal_every_apply(&self) {
        self.layers_mut().seal_bytes = 1;
    }

    /// The applied log id each sealed layer holds, oldest first (tests).
    #[cfg(test)]
    pub(crate) fn sealed_applied_ids(&self) -> Vec<Option<Vec<u8>>> {
        let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
        layers
            .sealed
            .iter()
            .map(|layer| layer.get(keys::LAST_APPLIED).cloned().flatten())
            .collect()
    }

    /// Drops the applied writes not yet in sled, as a crash would.
    #[cfg(test)]
    pub(crate) fn lose_unflushed(&self) {
        let _write = self.gate.write();
        let _guard = self.lock();
        *self.layers_mut() = Layers::default();
    }

    /// Applies a batch of entries atomically: the state changes, the applied log id
    /// (`last_applied`, opaque bytes of the Raft layer) and, if the batch holds a
    /// membership entry, the membership (`membership`) take effect together, and the
    /// responses, one per entry, are returned.
    ///
    /// The changes are held in memory, where every read sees them, and written to sled
    /// with those of later batches, in sled batches of about 1 MiB at most, by
    /// [`StateMachine::flush`] (the `view` module explains why); they are not synced.
    /// The Raft layer starts a flush after an apply once the oldest change held is
    /// 100 ms old or 1 MiB of them is sealed, and the node flushes when it stops, so a
    /// node that applies nothing more keeps its last changes in memory until then.
    /// What the responses acknowledge is already durable: the entries were committed,
    /// so a quorum synced them in its Raft log, and the Raft layer applies an entry only
    /// once this node's own log holds it on disk.
    /// sled recovers a prefix of its batches, so a crash can only leave the state at an
    /// earlier `last_applied`, from which Raft applies the same committed entries
    /// again. That replay reaches the same state and the same responses
    /// because apply depends on the commands alone, not on how they were batched.
    pub fn apply(
        &self,
        entries: &[ApplyEntry],
        last_applied: Vec<u8>,
        membership: Option<Vec<u8>>,
    ) -> Result<Vec<Response>, StateError> {
        let _guard = self.lock();
        if let Some(failed) = &*self.flush_failed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(StateError::Io(std::io::Error::other(format!(
                "writing the applied state to sled failed: {failed}"
            ))));
        }
        let mut responses = Vec::with_capacity(entries.len());
        let writes = self.read(|view| {
            let mut txn = Txn::new(view);
            for entry in entries {
                let response = match &entry.command {
                    Some(cmd) => apply_command(&mut txn, cmd)?,
                    None => Ok(Reply::Unit),
                };
                txn.seal_audit_chunk()?;
                responses.push(response);
            }
            txn.put_raw(keys::LAST_APPLIED.to_vec(), last_applied);
            if let Some(m) = membership {
                txn.put_raw(keys::MEMBERSHIP.to_vec(), m);
            }
            Ok::<_, StateError>(txn.into_writes())
        })?;
        let mut layers = self.layers_mut();
        layers.current.absorb(writes);
        layers.seal_if_full();
        Ok(responses)
    }

    /// The Raft layer's opaque applied log id and membership, as last applied.
    pub fn applied_meta(&self) -> Result<AppliedMeta, StateError> {
        self.read(|view| {
            Ok(AppliedMeta {
                last_applied: view.get(keys::LAST_APPLIED)?.map(|v| v.into_owned()),
                membership: view.get(keys::MEMBERSHIP)?.map(|v| v.into_owned()),
            })
        })
    }

    /// The state as applied so far, held still while apply goes on (see [`StateView`]).
    ///
    /// Taking the view costs a few map operations; it waits only for a flush under way to
    /// finish the sled batch it is writing. While it is held, no flush starts.
    pub fn pin(&self) -> Result<StateView, StateError> {
        let hold = self.gate.hold();
        let (tree, layers) = {
            let mut layers = self.layers_mut();
            layers.seal();
            (self.tree(), layers.sealed.clone())
        };
        StateView::new(hold, tree, layers)
    }

    /// Writes what is applied to sled, makes it durable (`fdatasync`) and returns the
    /// state on disk as a view: a point of the log this node can restart from without
    /// the entries before it, up to which the Raft layer may compact its log.
    ///
    /// Apply goes on meanwhile; what it applies after the flush is not in the view.
    pub fn durable_view(&self) -> Result<StateView, StateError> {
        let write = self.gate.write();
        self.flush_held()?;
        // No flush runs between the downgrade and the sync, so the sync covers everything
        // the view reads.
        let view = StateView::new(write.downgrade(), self.tree(), Vec::new())?;
        self.durable.sync()?;
        Ok(view)
    }

    /// The bytes the node's sled database takes on disk (the state, and the Raft vote
    /// beside it), sled's unreclaimed space included.
    pub fn size_on_disk(&self) -> Result<u64, StateError> {
        Ok(self.durable.db().size_on_disk()?)
    }

    /// Exports the state (without the Raft metadata) and the metadata it corresponds to,
    /// both as of one point of the log, in key order: a [`StateView`] copied out.
    pub fn export(&self) -> Result<(StateSnapshot, AppliedMeta), StateError> {
        let view = self.pin()?;
        let records = view.records().collect::<Result<Vec<_>, _>>()?;
        Ok((StateSnapshot { records }, view.meta().clone()))
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StateError> {
        self.read(|view| view.get(key)?.map(|v| decode(key, &v)).transpose())
    }

    /// The cluster configuration, once bootstrapped.
    pub fn cluster_config(&self) -> Result<Option<ClusterConfig>, StateError> {
        self.get(keys::CLUSTER)
    }

    /// A key and its wrapped backing versions.
    pub fn key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StateError> {
        self.get(&keys::key(id))
    }

    /// Keys of `account` in key-id order, starting after `after`; returns up to `limit`
    /// and whether more follow.
    pub fn list_keys(
        &self,
        account: &AccountId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<(Vec<KeyMetadata>, bool), StateError> {
        let start = match after {
            Some(id) => {
                let mut k = keys::key(id);
                k.push(0);
                k
            }
            None => keys::KEY_PREFIX.to_vec(),
        };
        self.read(|view| {
            let mut out = Vec::new();
            for item in view.range((Bound::Included(start), Bound::Unbounded)) {
                let (k, v) = item?;
                if !k.starts_with(keys::KEY_PREFIX) {
                    break;
                }
                let record: KeyRecord = decode(&k, &v)?;
                if &record.metadata.account != account {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(record.metadata);
            }
            Ok((out, false))
        })
    }

    /// An alias of `account`.
    pub fn alias(
        &self,
        account: &AccountId,
        name: &AliasName,
    ) -> Result<Option<AliasRecord>, StateError> {
        self.get(&keys::alias(account, name))
    }

    /// Aliases of `account` in name order after `after`, optionally only those pointing
    /// to `key`; up to `limit`, and whether more follow.
    pub fn list_aliases(
        &self,
        account: &AccountId,
        key: Option<&KeyId>,
        after: Option<&AliasName>,
        limit: usize,
    ) -> Result<(Vec<AliasRecord>, bool), StateError> {
        let prefix = keys::alias_prefix(account);
        let start = match after {
            Some(name) => {
                let mut k = keys::alias(account, name);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        self.read(|view| {
            let mut out = Vec::new();
            for item in view.range((Bound::Included(start), Bound::Unbounded)) {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let alias: AliasRecord = decode(&k, &v)?;
                if key.is_some_and(|key| &alias.target_key_id != key) {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(alias);
            }
            Ok((out, false))
        })
    }

    /// An account's quotas in force and its usage.
    pub fn quota(&self, account: &AccountId) -> Result<QuotaUsage, StateError> {
        self.read(|view| quota_usage(&Txn::new(view), account))
    }

    /// Keys whose automatic rotation is due by `now_ms` (up to `limit`), in due order.
    pub fn due_rotations(&self, now_ms: u64, limit: usize) -> Result<Vec<KeyId>, StateError> {
        let due =
            self.read(|view| Txn::new(view).due_entries(keys::ROTATION_PREFIX, now_ms, limit))?;
        Ok(due.into_iter().map(|e| e.key_id).collect())
    }

    /// The parameters of a pending import, by token.
    pub fn import_parameters(&self, token: &str) -> Result<Option<ImportParameters>, StateError> {
        self.get(&keys::import(token))
    }

    /// When the earliest imported material expires, if any.
    pub fn next_expiry_due(&self) -> Result<Option<u64>, StateError> {
        self.read(|view| Txn::new(view).first_due(keys::EXPIRY_PREFIX))
    }

    /// When the earliest scheduled deletion falls due, if any.
    pub fn next_deletion_due(&self) -> Result<Option<u64>, StateError> {
        self.read(|view| Txn::new(view).first_due(keys::DELETION_PREFIX))
    }

    /// When a tick first has a remembered request id to forget (the oldest id's time
    /// plus [`REQUEST_ID_TTL_MS`]), if any id is remembered.
    pub fn next_request_id_expiry(&self) -> Result<Option<u64>, StateError> {
        self.read(|view| {
            for item in view.scan_prefix(keys::REQUEST_TIME_PREFIX) {
                let (k, _) = item?;
                if let Some((time_ms, _)) = keys::parse_request_time(&k) {
                    return Ok(Some(time_ms.saturating_add(REQUEST_ID_TTL_MS)));
                }
            }
            Ok(None)
        })
    }

    /// A grant, by id.
    pub fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StateError> {
        self.get(&keys::grant(id))
    }

    /// A key's grants.
    pub fn grants_of(&self, key: &KeyRecord) -> Result<Vec<GrantRecord>, StateError> {
        let mut out = Vec::new();
        for id in &key.grants {
            out.extend(self.grant(id)?);
        }
        Ok(out)
    }

    /// Every grant of an account's keys whose retiring principal is `arn`.
    pub fn retirable_grants(&self, arn: &str) -> Result<Vec<GrantRecord>, StateError> {
        self.read(|view| {
            let mut out = Vec::new();
            for item in view.scan_prefix(keys::GRANT_PREFIX) {
                let (k, v) = item?;
                let g: GrantRecord = decode(&k, &v)?;
                if g.retiring_principal.as_deref() == Some(arn) {
                    out.push(g);
                }
            }
            Ok(out)
        })
    }

    /// A principal (user or role), by ARN.
    pub fn principal(&self, arn: &str) -> Result<Option<PrincipalRecord>, StateError> {
        self.get(&keys::principal(arn))
    }

    /// An account's principals of one kind, in ARN order.
    pub fn principals(
        &self,
        account: &AccountId,
        kind: PrincipalKind,
    ) -> Result<Vec<PrincipalRecord>, StateError> {
        let prefix = keys::principal(&format!("arn:keyraft:iam::{account}:{}/", kind.as_str()));
        self.read(|view| {
            view.scan_prefix(&prefix)
                .map(|item| item.and_then(|(k, v)| decode(&k, &v)))
                .collect()
        })
    }

    /// An access key (long-term or temporary).
    pub fn access_key(&self, id: &str) -> Result<Option<AccessKeyRecord>, StateError> {
        self.get(&keys::access_key(id))
    }

    /// A registered node.
    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, StateError> {
        self.get(&keys::node(id))
    }

    /// Every node id ever registered, retired ones included.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        self.read(|view| {
            view.scan_prefix(keys::NODE_PREFIX)
                .map(|item| item.and_then(|(k, v)| decode(&k, &v)))
                .collect()
        })
    }

    /// The authorised join of a node, if any.
    pub fn join_authorization(&self, id: NodeId) -> Result<Option<JoinAuthorization>, StateError> {
        self.get(&keys::join(id))
    }

    /// The sequence number and hash of the newest audit event (0 and the genesis hash
    /// before the first).
    pub fn audit_head(&self) -> Result<(u64, String), StateError> {
        Ok(self
            .get(keys::AUDIT_HEAD)?
            .unwrap_or_else(|| (0, GENESIS_HASH.to_string())))
    }

    /// Up to `limit` audit events starting at sequence `from`.
    pub fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<AuditEvent>, StateError> {
        self.read(|view| {
            let mut out = Vec::new();
            // From the chunk that holds `from` (the last one starting at or before it) on.
            let start = view
                .last_key((
                    Bound::Included(keys::audit(0)),
                    Bound::Included(keys::audit(from)),
                ))?
                .unwrap_or_else(|| keys::audit(from));
            let end = Bound::Excluded(keys::AUDIT_PREFIX_END.to_vec());
            for item in view.range((Bound::Included(start), end)) {
                let (k, v) = item?;
                let events: Vec<AuditEvent> = decode(&k, &v)?;
                for event in events.into_iter().filter(|e| e.sequence >= from) {
                    if out.len() == limit {
                        return Ok(out);
                    }
                    out.push(event);
                }
            }
            Ok(out)
        })
    }

    /// The checkpoint that replaced pruned events, if any were pruned.
    pub fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StateError> {
        self.get(keys::AUDIT_CHECKPOINT)
    }

    /// The newest event a full export wrote out.
    pub fn audit_exported(&self) -> Result<u64, StateError> {
        Ok(self.get(keys::AUDIT_EXPORTED)?.unwrap_or(0))
    }

    /// The hash of the event at `sequence`, if it exists.
    pub fn audit_hash_at(&self, sequence: u64) -> Result<Option<String>, StateError> {
        Ok(self
            .audit_events(sequence, 1)?
            .pop()
            .filter(|e| e.sequence == sequence)
            .map(|e| e.hash))
    }

    /// The newest `limit` audit events, oldest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEvent>, StateError> {
        let (head, _) = self.audit_head()?;
        let from = head.saturating_sub(limit as u64).saturating_add(1);
        self.audit_events(from, limit)
    }

    /// Walks the whole chain and checks every link, from the checkpoint it finds (whose
    /// seal only the HSM can check: the caller's job) to the head.
    pub fn verify_audit_chain(&self) -> Result<ChainCheck, StateError> {
        // One applied state: the walk reads a view, which no flush (of a prune, say)
        // changes half-way through. Apply goes on into memory.
        let pinned = self.pin()?;
        let view = pinned.view();
        let checkpoint: Option<AuditCheckpoint> = view
            .get(keys::AUDIT_CHECKPOINT)?
            .map(|v| decode(keys::AUDIT_CHECKPOINT, &v))
            .transpose()?;
        let verdict = walk_audit_chain(view, checkpoint.as_ref())?;
        Ok(ChainCheck {
            checkpoint,
            verdict,
        })
    }
}

/// The walk of [`StateMachine::verify_audit_chain`] over one view of the state.
fn walk_audit_chain(
    view: View<'_>,
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<Result<(u64, String), u64>, StateError> {
    // Pruned events are replaced by a checkpoint; the chain continues from its hash.
    let (mut prev, mut expected) = match checkpoint {
        Some(c) => (c.hash.clone(), c.through + 1),
        None => (GENESIS_HASH.to_string(), 1),
    };
    for item in view.scan_prefix(keys::AUDIT_PREFIX) {
        let (k, v) = item?;
        // A chunk must start where its key says, or lookups by sequence would miss.
        if keys::parse_audit(&k) != Some(expected) {
            return Ok(Err(expected));
        }
        let events: Vec<AuditEvent> = decode(&k, &v)?;
        for event in events {
            if event.sequence != expected || !event.verify(&prev) {
                return Ok(Err(expected));
            }
            prev = event.hash;
            expected += 1;
        }
    }
    let head = view
        .get(keys::AUDIT_HEAD)?
        .map(|v| decode(keys::AUDIT_HEAD, &v))
        .transpose()?
        .unwrap_or_else(|| (0, GENESIS_HASH.to_string()));
    if head.0 != expected - 1 || head.1 != prev {
        return Ok(Err(expected));
    }
    Ok(Ok(head))
}

/// What a walk of the audit chain found ([`StateMachine::verify_audit_chain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    /// The checkpoint the walk started from, which stands for the pruned events; `None`
    /// when nothing was pruned and the walk started at the first event.
    pub checkpoint: Option<AuditCheckpoint>,
    /// The head (sequence, hash) the walk reached, or the sequence number of the first
    /// event that does not verify.
    pub verdict: Result<(u64, String), u64>,
}

impl ChainCheck {
    /// Whether every link from the checkpoint to the head verified.
    pub fn is_ok(&self) -> bool {
        self.verdict.is_ok()
    }
}

impl Drop for StateMachine {
    /// Writes what is still in memory to sled, so that the next open has less to apply
    /// again. A failure is left to that replay: the Raft log holds every applied entry.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The key, in sled's default tree, of the name of the tree the state is in.
const CURRENT_TREE: &[u8] = b"keyraft/state-tree";

/// The state tree's name before any install, and the other one installs alternate with.
const TREE_NAMES: [&str; 2] = ["state", "state-b"];

/// The name of the tree the state is in.
fn current_tree_name(db: &sled::Db) -> Result<String, StateError> {
    match db.get(CURRENT_TREE)? {
        Some(name) => String::from_utf8(name.to_vec())
            .ok()
            .filter(|n| TREE_NAMES.contains(&n.as_str()))
            .ok_or_else(|| StateError::Corrupt {
                key: String::from_utf8_lossy(CURRENT_TREE).into_owned(),
                detail: "not the name of a state tree".into(),
            }),
        None => Ok(TREE_NAMES[0].to_string()),
    }
}

/// The name of the tree an install writes while the state is in `current`.
fn other_tree_name(current: &str) -> &'static str {
    if current == TREE_NAMES[0] {
        TREE_NAMES[1]
    } else {
        TREE_NAMES[0]
    }
}

/// The layout of the state tree this version writes: 2 = audit events in chunks, one
/// per log entry (1 had one record per event).
const FORMAT: u32 = 2;

/// Brings a state tree of an earlier layout to [`FORMAT`], in one atomic batch; a tree
/// of a later one is refused.
fn upgrade(tree: &sled::Tree) -> Result<(), StateError> {
    let format: u32 = match tree.get(keys::FORMAT)? {
        Some(v) => decode(keys::FORMAT, &v)?,
        None => 1,
    };
    if format == FORMAT {
        return Ok(());
    }
    if format > FORMAT {
        return Err(StateError::Corrupt {
            key: "format".into(),
            detail: format!("state layout {format} is newer than this version's {FORMAT}"),
        });
    }
    let mut batch = sled::Batch::default();
    for item in tree.scan_prefix(keys::AUDIT_PREFIX) {
        let (k, v) = item?;
        let event: AuditEvent = decode(&k, &v)?;
        batch.insert(k.to_vec(), encode(&k, &vec![event])?);
    }
    batch.insert(keys::FORMAT, encode(keys::FORMAT, &FORMAT)?);
    tree.apply_batch(batch)?;
    Ok(())
}

/// Applies one command. `Err` only for storage faults; decisions are in the `Response`.
fn apply_command(txn: &mut Txn<'_>, cmd: &Command) -> Result<Response, StateError> {
    let idempotent = !cmd.request_id.is_empty();
    if idempotent {
        if let Some(stored) = txn.get::<StoredResponse>(&keys::request(&cmd.request_id))? {
            return Ok(stored.response);
        }
    }
    // A mutation decided under a policy that has changed since is decided again here;
    // refused, it changes nothing but the audit chain.
    let refused = match cmd.op.audit_record() {
        Some(record) => authz_verdict(txn, record)?.map(|e| (record, e)),
        None => None,
    };
    let response = if let Some((record, e)) = refused {
        append_audit(txn, record.clone(), Some(e.clone()))?;
        Err(e)
    } else {
        match &cmd.op {
            Op::Bootstrap(b) => bootstrap(txn, b, cmd.time_ms)?,
            Op::CreateKey {
                key,
                material,
                public_key,
                audit,
            } => {
                let r = create_key(txn, key, material, public_key.as_deref())?;
                audited(txn, audit, r)?
            }
            Op::CreateServiceKey {
                key,
                material,
                alias,
                audit,
            } => {
                let r = create_service_key(txn, key, material, alias, cmd.time_ms)?;
                audited(txn, audit, r)?
            }
            Op::SetKeyEnabled {
                key_id,
                enabled,
                audit,
            } => {
                let r = set_key_enabled(txn, key_id, *enabled)?;
                audited(txn, audit, r)?
            }
            Op::AuditBatch { records } => {
                let mut verdicts = Vec::with_capacity(records.len());
                for record in records {
                    let verdict = check_record(txn, record)?;
                    append_audit(txn, record.clone(), verdict.clone())?;
                    verdicts.push(verdict);
                }
                Ok(Reply::Audit(verdicts))
            }
            Op::CreateAlias {
                account,
                name,
                key_id,
                audit,
            } => {
                let r = create_alias(txn, account, name, key_id, cmd.time_ms)?;
                audited(txn, audit, r)?
            }
            Op::UpdateAlias {
                account,
                name,
                key_id,
                audit,
            } => {
                let r = update_alias(txn, account, name, key_id, cmd.time_ms)?;
                audited(txn, audit, r)?
            }
            Op::DeleteAlias {
                account,
                name,
                audit,
            } => {
                let r = delete_alias(txn, account, name)?;
                audited(txn, audit, r)?
            }
            Op::UpdateKeyDescription {
                key_id,
                description,
                audit,
            } => {
                let r = change_key(txn, key_id, |k| {
                    k.metadata.description = description.clone();
                    Ok(())
                })?;
                audited(txn, audit, r)?
            }
            Op::TagResource {
                key_id,
                tags,
                audit,
            } => {
                let r = change_key(txn, key_id, |k| {
                    let mut merged = k.tags.clone();
                    merged.extend(tags.iter().map(|(a, b)| (a.clone(), b.clone())));
                    if merged.len() > MAX_TAGS_PER_KEY {
                        return Err(KmsError::new(
                            ErrorCode::Tag,
                            format!("a key has at most {MAX_TAGS_PER_KEY} tags"),
                        ));
                    }
                    k.tags = merged;
                    Ok(())
                })?;
                audited(txn, audit, r)?
            }
            Op::UntagResource {
                key_id,
                tag_keys,
                audit,
            } => {
                let r = change_key(txn, key_id, |k| {
                    for t in tag_keys {
                        k.tags.remove(t);
                    }
                    Ok(())
                })?;
                audited(txn, audit, r)?
            }
            Op::ScheduleKeyDeletion {
                key_id,
                pending_window_days,
                audit,
            } => {
                let r = schedule_deletion(txn, key_id, *pending_window_days, cmd.time_ms)?;
                audited(txn, audit, r)?
            }
            Op::CancelKeyDeletion { key_id, audit } => {
                let r = cancel_deletion(txn, key_id)?;
                audited(txn, audit, r)?
            }
            Op::Tick { node_id, rotations } => tick(txn, cmd, *node_id, rotations)?,
            Op::StoreImportParameters {
                key_id,
                token,
                public_key_der,
                wrapped_private_key,
                expires_ms,
                audit,
            } => {
                let params = ImportParameters {
                    key_id: key_id.clone(),
                    public_key_der: public_key_der.clone(),
                    wrapped_private_key: wrapped_private_key.clone(),
                    expires_ms: *expires_ms,
                };
                let r = store_import_parameters(txn, token, params)?;
                audited(txn, audit, r)?
            }
            Op::ImportKeyMaterial {
                key_id,
                token,
                material,
                fingerprint,
                valid_to_ms,
                audit,
            } => {
                let r = import_material(
                    txn,
                    key_id,
                    token,
                    material,
                    fingerprint,
                    *valid_to_ms,
                    cmd.time_ms,
                )?;
                audited(txn, audit, r)?
            }
            Op::DeleteImportedKeyMaterial { key_id, audit } => {
                let r = delete_imported_material(txn, key_id)?;
                audited(txn, audit, r)?
            }
            Op::SetKeyRotation {
                key_id,
                period_days,
                audit,
            } => {
                let r = set_rotation(txn, key_id, *period_days, cmd.time_ms)?;
                audited(txn, audit, r)?
            }
            Op::RotateKey { rotation, audit } => {
                let r = rotate(txn, rotation, cmd.time_ms, true)?;
                audited(txn, audit, r)?
            }
            Op::Iam { change, audit } => {
                let r = iam::apply(txn, change)?;
                audited(txn, audit, r)?
            }
            Op::PutKeyPolicy {
                key_id,
                policy,
                audit,
            } => {
                let r = put_key_policy(txn, key_id, policy)?;
                audited(txn, audit, r)?
            }
            Op::SetQuota {
                account,
                keys: key_limit,
                aliases,
                grants_per_key,
                audit,
            } => {
                let r = set_quota(txn, account, *key_limit, *aliases, *grants_per_key)?;
                audited(txn, audit, r)?
            }
            Op::AuditExported { through, audit } => {
                let r = audit_exported(txn, *through)?;
                audited(txn, audit, r)?
            }
            Op::PruneAudit {
                checkpoint,
                retention_ms,
                audit,
            } => {
                let r = prune_audit(txn, checkpoint, *retention_ms, cmd.time_ms)?;
                audited(txn, audit, r)?
            }
            Op::CreateGrant { grant, audit } => {
                let r = create_grant(txn, grant)?;
                audited(txn, audit, r)?
            }
            Op::RemoveGrant {
                key_id,
                grant_id,
                audit,
            } => {
                let r = remove_grant(txn, key_id, grant_id)?;
                audited(txn, audit, r)?
            }
            Op::AuthorizeJoin {
                node,
                public_key,
                audit,
            } => {
                let r = authorize_join(txn, node, public_key)?;
                audited(txn, audit, r)?
            }
            Op::RetireNode { node_id, audit } => {
                let r = retire_node(txn, *node_id)?;
                audited(txn, audit, r)?
            }
            Op::Group { commands } => {
                let mut responses = Vec::with_capacity(commands.len());
                for inner in commands {
                    responses.push(match inner.op {
                        Op::Group { .. } => Err(KmsError::new(
                            ErrorCode::Validation,
                            "a group of commands cannot hold a group",
                        )),
                        _ => apply_command(txn, inner)?,
                    });
                }
                Ok(Reply::Group(responses))
            }
        }
    };
    if idempotent {
        txn.put(
            keys::request(&cmd.request_id),
            &StoredResponse {
                time_ms: cmd.time_ms,
                response: response.clone(),
            },
        )?;
        txn.put(keys::request_time(cmd.time_ms, &cmd.request_id), &())?;
    }
    Ok(response)
}

/// Most request ids one tick forgets; the rest wait for the next tick. The leader ticks
/// about once a second, so this must stay above the highest sustained mutation rate
/// (about 1.4 k CreateKeys/s measured), or remembered ids would pile up without bound.
const REQUEST_EXPIRY_BATCH: usize = 10_000;

/// Forgets the request ids remembered longer than the TTL by `now_ms`, oldest first.
///
/// Only a tick does this, at a time a majority of the voters' clocks has reached: any
/// other command carries the time of the node that took the request, and a node whose
/// clock ran an hour ahead would make the whole cluster forget every id, so that a retry
/// of an unknown outcome acts twice.
fn expire_request_ids(txn: &mut Txn<'_>, now_ms: u64) -> Result<(), StateError> {
    let cutoff = now_ms.saturating_sub(REQUEST_ID_TTL_MS);
    let mut expired = Vec::new();
    for item in txn.scan_prefix(keys::REQUEST_TIME_PREFIX) {
        let (k, _) = item?;
        let Some((time_ms, id)) = keys::parse_request_time(&k) else {
            continue;
        };
        if time_ms >= cutoff || expired.len() == REQUEST_EXPIRY_BATCH {
            break;
        }
        expired.push((k, id));
    }
    for (k, id) in expired {
        txn.delete(keys::request(&id));
        txn.delete(k);
    }
    Ok(())
}

/// Links the mutation's audit record with its outcome, and passes the outcome on.
fn audited(
    txn: &mut Txn<'_>,
    record: &AuditRecord,
    result: Response,
) -> Result<Response, StateError> {
    let error = result.as_ref().err().cloned();
    append_audit(txn, record.clone(), error)?;
    Ok(result)
}

/// Most events in one audit chunk, so that a large group does not make a record near
/// sled's blob size.
const AUDIT_CHUNK_MAX: usize = 256;

fn append_audit(
    txn: &mut Txn<'_>,
    record: AuditRecord,
    error: Option<KmsError>,
) -> Result<(), StateError> {
    if txn.audit_chunk.len() == AUDIT_CHUNK_MAX {
        txn.seal_audit_chunk()?;
    }
    let (seq, prev) = txn.audit_head()?;
    let event = AuditEvent::link(seq + 1, &prev, record, error.map(|e| (e.code, e.message)));
    txn.audit_chunk.push(event);
    Ok(())
}

/// Apply's verdict on the authorization decisions a record carries: each still stands
/// unless a policy it read has changed and the decision, made again, refuses.
fn authz_verdict(txn: &Txn<'_>, record: &AuditRecord) -> Result<Option<KmsError>, StateError> {
    // The credential must still stand when the request commits: a node that had not yet
    // applied the deletion or deactivation of an access key (or of its principal) may
    // have accepted it, and only this verdict is released.
    let key_id = &record.user_identity.access_key_id;
    if !key_id.is_empty() && !record.authz_checks.is_empty() {
        let refused = || {
            Some(KmsError::new(
                ErrorCode::UnrecognizedClient,
                "The security token included in the request is invalid.",
            ))
        };
        let Some(key) = txn.get_shared::<AccessKeyRecord>(&keys::access_key(key_id))? else {
            return Ok(refused());
        };
        if !key.enabled {
            return Ok(refused());
        }
        // As authentication decides on an up-to-date node: the credential's holder (the
        // assumed role, or the key's own principal) must exist and be enabled.
        let holder_arn = key.role_arn.as_ref().unwrap_or(&key.principal_arn);
        let holder = txn.get_shared::<PrincipalRecord>(&keys::principal(holder_arn))?;
        if !holder.is_some_and(|p| p.enabled) {
            return Ok(refused());
        }
        if key.expires_ms.is_some_and(|t| record.event_time_ms >= t) {
            return Ok(Some(KmsError::new(
                ErrorCode::ExpiredToken,
                "The security token included in the request is expired.",
            )));
        }
    }
    for check in &record.authz_checks {
        let holder = txn.get_shared::<PrincipalRecord>(&keys::principal(&check.holder_arn))?;
        let key = match &check.key {
            Some((id, _)) => txn.get_shared::<KeyRecord>(&keys::key(id))?,
            None => None,
        };
        let mut grants = Vec::new();
        for id in key.iter().flat_map(|k| &k.grants) {
            grants.extend(txn.get::<GrantRecord>(&keys::grant(id))?);
        }
        if let Err(e) = crate::authz::recheck(
            check,
            holder.as_deref(),
            key.as_deref(),
            &grants,
            record.event_time_ms,
        ) {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The final verdict on an audit record: the node's own error, the authorization
/// decisions, or the key checks.
fn check_record(txn: &Txn<'_>, record: &AuditRecord) -> Result<Option<KmsError>, StateError> {
    if let Some((code, message)) = &record.error {
        return Ok(Some(KmsError::new(*code, message.clone())));
    }
    if let Some(e) = authz_verdict(txn, record)? {
        return Ok(Some(e));
    }
    for check in &record.key_checks {
        let Some(key) = txn.get_shared::<KeyRecord>(&keys::key(&check.key_id))? else {
            return Ok(Some(KmsError::key_not_found(check.key_id.as_str())));
        };
        if key.metadata.epoch == check.epoch {
            continue;
        }
        // The key changed after the serving node decided: decide again on the state as
        // of this point of the log. Only this decision is released to the caller.
        if let Err(e) = key.metadata.check_usable(check.operation) {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

fn bootstrap(txn: &mut Txn<'_>, b: &Bootstrap, time_ms: u64) -> Result<Response, StateError> {
    if txn.get::<ClusterConfig>(keys::CLUSTER)?.is_some() {
        return Ok(Err(KmsError::new(
            ErrorCode::AlreadyExists,
            "the region is already bootstrapped",
        )));
    }
    let config = ClusterConfig {
        region: b.region.clone(),
        account: b.account.clone(),
        domain_key_fingerprint: b.domain_key_fingerprint.clone(),
        key_quota: if b.key_quota == 0 {
            DEFAULT_KEY_QUOTA
        } else {
            b.key_quota
        },
        bootstrapped_ms: time_ms,
    };
    txn.put(keys::CLUSTER.to_vec(), &config)?;
    txn.put(keys::access_key(&b.admin.access_key_id), &b.admin)?;
    // The first credential belongs to the account's root user.
    let name = b
        .admin
        .principal_arn
        .rsplit('/')
        .next()
        .unwrap_or("admin")
        .to_string();
    let root = PrincipalRecord {
        arn: b.admin.principal_arn.clone(),
        account: b.account.clone(),
        kind: PrincipalKind::User,
        name,
        created_ms: time_ms,
        enabled: true,
        root: true,
        policies: BTreeMap::new(),
        trust_policy: None,
        access_keys: vec![b.admin.access_key_id.clone()],
        epoch: 1,
    };
    txn.put(keys::principal(&root.arn), &root)?;
    for member in &b.members {
        if txn
            .get::<NodeRecord>(&keys::node(member.node_id))?
            .is_none()
        {
            txn.put(keys::node(member.node_id), member)?;
        }
    }
    Ok(Ok(Reply::Unit))
}

fn create_key(
    txn: &mut Txn<'_>,
    key: &KeyMetadata,
    material: &[u8],
    public_key: Option<&[u8]>,
) -> Result<Response, StateError> {
    let Some(config) = txn.get::<ClusterConfig>(keys::CLUSTER)? else {
        return Ok(Err(not_bootstrapped()));
    };
    if key.key_spec.is_asymmetric() != public_key.is_some() {
        return Ok(Err(KmsError::validation(format!(
            "{} keys {}",
            key.key_spec.as_str(),
            if public_key.is_some() {
                "take no public key"
            } else {
                "need a public key"
            }
        ))));
    }
    if txn.get::<KeyRecord>(&keys::key(&key.key_id))?.is_some() {
        return Ok(Err(KmsError::new(
            ErrorCode::AlreadyExists,
            format!("key {} already exists", key.key_id),
        )));
    }
    let count_key = keys::key_count(&key.account);
    let usage = quota_usage(txn, &key.account)?;
    if usage.keys_used >= usage.keys_limit {
        return Ok(Err(KmsError::new(
            ErrorCode::LimitExceeded,
            format!(
                "Account {} already has {} keys in region {}, its quota",
                key.account, usage.keys_used, config.region
            ),
        )));
    }
    let count = usage.keys_used;
    let mut record = KeyRecord {
        metadata: key.clone(),
        versions: BTreeMap::from([(key.current_version, material.to_vec())]),
        tags: BTreeMap::new(),
        rotations: Vec::new(),
        imported_fingerprint: None,
        public_key: public_key.map(<[u8]>::to_vec),
        policy: None,
        grants: Vec::new(),
    };
    if key.origin == Origin::External {
        // Its material comes later, through ImportKeyMaterial.
        record.versions.clear();
        record.metadata.key_state = KeyState::PendingImport;
    }
    txn.put(keys::key(&key.key_id), &record)?;
    txn.put(count_key, &(count + 1))?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

fn create_service_key(
    txn: &mut Txn<'_>,
    key: &KeyMetadata,
    material: &[u8],
    alias: &AliasName,
    time_ms: u64,
) -> Result<Response, StateError> {
    if txn.get::<ClusterConfig>(keys::CLUSTER)?.is_none() {
        return Ok(Err(not_bootstrapped()));
    }
    if let Some(existing) = txn.get::<AliasRecord>(&keys::alias(&key.account, alias))? {
        return Ok(
            match txn.get::<KeyRecord>(&keys::key(&existing.target_key_id))? {
                Some(k) => Ok(Reply::Key(Box::new(k.metadata))),
                None => Err(KmsError::internal()),
            },
        );
    }
    let mut metadata = key.clone();
    metadata.key_manager = KeyManager::Service;
    metadata.next_rotation_ms = None;
    let days = metadata.rotation_period_days.unwrap_or(365);
    schedule_rotation(txn, &mut metadata, Some(days), time_ms)?;
    let record = KeyRecord {
        metadata,
        versions: BTreeMap::from([(key.current_version, material.to_vec())]),
        tags: BTreeMap::new(),
        rotations: Vec::new(),
        imported_fingerprint: None,
        public_key: None,
        policy: None,
        grants: Vec::new(),
    };
    // Service-managed keys and their aliases count against no quota.
    txn.put(keys::key(&key.key_id), &record)?;
    txn.put(
        keys::alias(&key.account, alias),
        &AliasRecord {
            name: alias.clone(),
            account: key.account.clone(),
            target_key_id: key.key_id.clone(),
            creation_ms: time_ms,
            last_updated_ms: time_ms,
        },
    )?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

/// Only the service's own symmetric key material rotates: not imported material, not
/// HMAC keys.
fn refuse_rotation(record: &KeyRecord, what: &str) -> Option<KmsError> {
    if record.metadata.key_spec != keyraft_types::KeySpec::SymmetricDefault {
        return Some(KmsError::new(
            ErrorCode::UnsupportedOperation,
            format!(
                "{} is a {} key: {what} is supported for SYMMETRIC_DEFAULT keys only",
                record.metadata.arn,
                record.metadata.key_spec.as_str()
            ),
        ));
    }
    (record.metadata.origin == Origin::External).then(|| {
        KmsError::new(
            ErrorCode::UnsupportedOperation,
            format!(
                "{} has imported key material: {what} is not supported",
                record.metadata.arn
            ),
        )
    })
}

/// An EXTERNAL key of this state, or the error.
fn external_key(txn: &Txn<'_>, key_id: &KeyId) -> Result<Result<KeyRecord, KmsError>, StateError> {
    let Some(record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if record.metadata.origin != Origin::External {
        return Ok(Err(KmsError::new(
            ErrorCode::UnsupportedOperation,
            format!(
                "{} has no imported key material (origin AWS_KMS)",
                record.metadata.arn
            ),
        )));
    }
    if let Some(e) = pending_deletion(&record) {
        return Ok(Err(e));
    }
    Ok(Ok(record))
}

fn store_import_parameters(
    txn: &mut Txn<'_>,
    token: &str,
    params: ImportParameters,
) -> Result<Response, StateError> {
    if let Err(e) = external_key(txn, &params.key_id)? {
        return Ok(Err(e));
    }
    txn.put(keys::import(token), &params)?;
    Ok(Ok(Reply::Unit))
}

fn import_material(
    txn: &mut Txn<'_>,
    key_id: &KeyId,
    token: &str,
    material: &[u8],
    fingerprint: &str,
    valid_to_ms: Option<u64>,
    time_ms: u64,
) -> Result<Response, StateError> {
    let mut record = match external_key(txn, key_id)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let Some(params) = txn.get::<ImportParameters>(&keys::import(token))? else {
        return Ok(Err(KmsError::new(
            ErrorCode::InvalidImportToken,
            "The import token is invalid or was used already.",
        )));
    };
    if &params.key_id != key_id {
        return Ok(Err(KmsError::new(
            ErrorCode::InvalidImportToken,
            "The import token was issued for another key.",
        )));
    }
    if time_ms > params.expires_ms {
        return Ok(Err(KmsError::new(
            ErrorCode::ExpiredImportToken,
            "The import token has expired.",
        )));
    }
    if record
        .imported_fingerprint
        .as_deref()
        .is_some_and(|f| f != fingerprint)
    {
        return Ok(Err(KmsError::new(
            ErrorCode::IncorrectKeyMaterial,
            "The key material is not the material previously imported into this key.",
        )));
    }
    let m = &mut record.metadata;
    if let Some(old) = m.valid_to_ms.take() {
        txn.delete(keys::expiry(old, key_id));
    }
    m.valid_to_ms = valid_to_ms;
    if let Some(due) = valid_to_ms {
        txn.put(keys::expiry(due, key_id), &())?;
    }
    if m.key_state == KeyState::PendingImport {
        m.key_state = KeyState::Enabled;
        m.epoch += 1;
    }
    record.versions = BTreeMap::from([(m.current_version, material.to_vec())]);
    record.imported_fingerprint = Some(fingerprint.to_string());
    txn.delete(keys::import(token));
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

fn delete_imported_material(txn: &mut Txn<'_>, key_id: &KeyId) -> Result<Response, StateError> {
    let mut record = match external_key(txn, key_id)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let m = &mut record.metadata;
    if let Some(old) = m.valid_to_ms.take() {
        txn.delete(keys::expiry(old, key_id));
    }
    if m.key_state != KeyState::PendingImport {
        m.key_state = KeyState::PendingImport;
        m.epoch += 1;
    }
    record.versions.clear();
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

/// What the account may not do to a service-managed key.
fn refuse_service_key(record: &KeyRecord, what: &str) -> Option<KmsError> {
    (record.metadata.key_manager == KeyManager::Service).then(|| {
        KmsError::new(
            ErrorCode::UnsupportedOperation,
            format!(
                "{} is managed by the service: {what} is not allowed",
                record.metadata.arn
            ),
        )
    })
}

fn set_key_enabled(
    txn: &mut Txn<'_>,
    key_id: &KeyId,
    enabled: bool,
) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if let Some(e) = refuse_service_key(&record, "enabling or disabling it") {
        return Ok(Err(e));
    }
    let target = if enabled {
        KeyState::Enabled
    } else {
        KeyState::Disabled
    };
    match record.metadata.key_state {
        KeyState::Enabled | KeyState::Disabled => {}
        other => {
            return Ok(Err(KmsError::new(
                ErrorCode::InvalidState,
                format!("{} is {}", record.metadata.arn, other.as_str()),
            )))
        }
    }
    if record.metadata.key_state != target {
        record.metadata.key_state = target;
        record.metadata.epoch += 1;
        txn.put(keys::key(key_id), &record)?;
    }
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

/// Applies `change` to a key that exists and is not pending deletion. Changes that do
/// not affect authorization (description, tags) leave the epoch alone, so cryptography
/// decided just before them still stands.
fn change_key(
    txn: &mut Txn<'_>,
    key_id: &KeyId,
    change: impl FnOnce(&mut KeyRecord) -> Result<(), KmsError>,
) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if let Some(e) = refuse_service_key(&record, "changing its description or tags") {
        return Ok(Err(e));
    }
    if let Some(e) = pending_deletion(&record) {
        return Ok(Err(e));
    }
    if let Err(e) = change(&mut record) {
        return Ok(Err(e));
    }
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

/// An account's limits (its own, else the region's defaults) and usage.
fn quota_usage(txn: &Txn<'_>, account: &AccountId) -> Result<QuotaUsage, StateError> {
    let own: AccountQuota = txn.get(&keys::quota(account))?.unwrap_or_default();
    let region_keys = txn
        .get::<ClusterConfig>(keys::CLUSTER)?
        .map(|c| c.key_quota)
        .unwrap_or(DEFAULT_KEY_QUOTA);
    Ok(QuotaUsage {
        keys_limit: own.keys.unwrap_or(region_keys),
        keys_used: txn.get(&keys::key_count(account))?.unwrap_or(0),
        aliases_limit: own.aliases.unwrap_or(DEFAULT_ALIAS_QUOTA),
        aliases_used: txn.get(&keys::alias_count(account))?.unwrap_or(0),
        grants_per_key_limit: own.grants_per_key.unwrap_or(DEFAULT_GRANTS_PER_KEY),
    })
}

fn audit_exported(txn: &mut Txn<'_>, through: u64) -> Result<Response, StateError> {
    let (head, _) = txn.audit_head()?;
    let before: u64 = txn.get(keys::AUDIT_EXPORTED)?.unwrap_or(0);
    if through > head {
        return Ok(Err(KmsError::validation(format!(
            "event {through} does not exist yet (the head is {head})"
        ))));
    }
    txn.put(keys::AUDIT_EXPORTED.to_vec(), &before.max(through))?;
    Ok(Ok(Reply::Unit))
}

/// Most events one PruneAudit removes, so that one apply stays small.
pub const MAX_PRUNE: u64 = 10_000;

fn prune_audit(
    txn: &mut Txn<'_>,
    cp: &AuditCheckpoint,
    retention_ms: u64,
    now_ms: u64,
) -> Result<Response, StateError> {
    let exported: u64 = txn.get(keys::AUDIT_EXPORTED)?.unwrap_or(0);
    let first = txn
        .get::<AuditCheckpoint>(keys::AUDIT_CHECKPOINT)?
        .map_or(1, |c| c.through + 1);
    let refuse = |why: String| Ok(Err(KmsError::new(ErrorCode::Conflict, why)));
    if cp.through < first || cp.through - first >= MAX_PRUNE {
        return refuse(format!(
            "events {first}..={} cannot be pruned in one step (at most {MAX_PRUNE})",
            cp.through
        ));
    }
    if cp.through > exported {
        return refuse(format!(
            "event {} has not been exported yet (exported through {exported})",
            cp.through
        ));
    }
    // The chunks that hold events up to `through` (pruned ones are gone, so they are
    // the first), and what is left of the last of them.
    let mut drop_chunks = Vec::new();
    let mut rest = Vec::new();
    let mut last = None;
    for item in txn.scan_prefix(keys::AUDIT_PREFIX) {
        let (k, v) = item?;
        if keys::parse_audit(&k).is_none_or(|start| start > cp.through) {
            break;
        }
        let events: Vec<AuditEvent> = decode(&k, &v)?;
        for event in events {
            if event.sequence < cp.through {
                continue;
            }
            if event.sequence == cp.through {
                last = Some(event);
            } else {
                rest.push(event);
            }
        }
        drop_chunks.push(k);
    }
    let Some(last) = last else {
        return refuse(format!("event {} does not exist", cp.through));
    };
    if last.hash != cp.hash {
        return refuse("the checkpoint does not name the event's hash".into());
    }
    if last.record.event_time_ms.saturating_add(retention_ms) > now_ms {
        return refuse(format!(
            "event {} is younger than the retention period",
            cp.through
        ));
    }
    for k in drop_chunks {
        txn.delete(k);
    }
    if let Some(next) = rest.first() {
        txn.put(keys::audit(next.sequence), &rest)?;
    }
    txn.put(keys::AUDIT_CHECKPOINT.to_vec(), cp)?;
    Ok(Ok(Reply::Unit))
}

fn create_grant(txn: &mut Txn<'_>, g: &GrantRecord) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(&g.key_id))? else {
        return Ok(Err(KmsError::key_not_found(g.key_id.as_str())));
    };
    if let Some(e) = pending_deletion(&record) {
        return Ok(Err(e));
    }
    if !g.name.is_empty() {
        for id in &record.grants {
            if let Some(other) = txn.get::<GrantRecord>(&keys::grant(id))? {
                if other.name == g.name
                    && other.grant == g.grant
                    && other.retiring_principal == g.retiring_principal
                {
                    return Ok(Ok(Reply::Grant {
                        grant_id: other.grant_id,
                        token: other.token,
                    }));
                }
            }
        }
    }
    let limit = quota_usage(txn, &record.metadata.account)?.grants_per_key_limit;
    if record.grants.len() as u64 >= limit {
        return Ok(Err(KmsError::new(
            ErrorCode::LimitExceeded,
            format!(
                "{} already has {} grants, its quota",
                record.metadata.arn,
                record.grants.len()
            ),
        )));
    }
    record.grants.push(g.grant_id.clone());
    txn.put(keys::key(&g.key_id), &record)?;
    txn.put(keys::grant(&g.grant_id), g)?;
    Ok(Ok(Reply::Grant {
        grant_id: g.grant_id.clone(),
        token: g.token.clone(),
    }))
}

fn remove_grant(txn: &mut Txn<'_>, key_id: &KeyId, grant_id: &str) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    let before = record.grants.len();
    record.grants.retain(|id| id != grant_id);
    if record.grants.len() == before {
        return Ok(Err(KmsError::new(
            ErrorCode::InvalidGrantId,
            format!("Grant {grant_id} is not a grant of {}", record.metadata.arn),
        )));
    }
    // Whatever the grant allowed and has not committed yet is decided again.
    record.metadata.epoch += 1;
    txn.put(keys::key(key_id), &record)?;
    txn.delete(keys::grant(grant_id));
    Ok(Ok(Reply::Unit))
}

fn put_key_policy(txn: &mut Txn<'_>, key_id: &KeyId, policy: &str) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if let Some(e) = refuse_service_key(&record, "changing its policy") {
        return Ok(Err(e));
    }
    record.policy = Some(policy.to_string());
    record.metadata.epoch += 1;
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

fn set_quota(
    txn: &mut Txn<'_>,
    account: &AccountId,
    key_limit: Option<u64>,
    alias_limit: Option<u64>,
    grant_limit: Option<u64>,
) -> Result<Response, StateError> {
    let mut own: AccountQuota = txn.get(&keys::quota(account))?.unwrap_or_default();
    if grant_limit.is_some() {
        own.grants_per_key = grant_limit;
    }
    if key_limit.is_some() {
        own.keys = key_limit;
    }
    if alias_limit.is_some() {
        own.aliases = alias_limit;
    }
    txn.put(keys::quota(account), &own)?;
    // A limit below current usage is allowed (AWS does the same): nothing is removed,
    // only new keys or aliases are refused until usage falls below it.
    Ok(Ok(Reply::Quota(quota_usage(txn, account)?)))
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn schedule_deletion(
    txn: &mut Txn<'_>,
    key_id: &KeyId,
    days: u32,
    time_ms: u64,
) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if let Some(e) = refuse_service_key(&record, "deleting it") {
        return Ok(Err(e));
    }
    if let Some(e) = pending_deletion(&record) {
        return Ok(Err(e));
    }
    let m = &mut record.metadata;
    let due = time_ms.saturating_add(u64::from(days) * DAY_MS);
    m.key_state = KeyState::PendingDeletion;
    m.deletion_date_ms = Some(due);
    m.epoch += 1;
    txn.put(keys::deletion(due, key_id), &())?;
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

fn cancel_deletion(txn: &mut Txn<'_>, key_id: &KeyId) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    let m = &mut record.metadata;
    let (KeyState::PendingDeletion, Some(due)) = (m.key_state, m.deletion_date_ms) else {
        return Ok(Err(KmsError::new(
            ErrorCode::InvalidState,
            format!("{} is not pending deletion", m.arn),
        )));
    };
    txn.delete(keys::deletion(due, key_id));
    // As AWS: a key returns Disabled, or PendingImport if it has no key material.
    m.key_state = if record.versions.is_empty() {
        KeyState::PendingImport
    } else {
        KeyState::Disabled
    };
    m.deletion_date_ms = None;
    m.epoch += 1;
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

/// Most keys one tick destroys; the rest wait for the next tick.
const TICK_BATCH: usize = 100;

/// The time-driven work, at the command's time: rotations the leader prepared, expiries
/// of imported material, request ids remembered longer than their TTL, and destruction
/// of the keys whose waiting period ended (the key record with its wrapped material, its
/// aliases and its quota slot go, each destruction a service event in the audit chain).
/// Deterministic: only the command's time is used.
fn tick(
    txn: &mut Txn<'_>,
    cmd: &Command,
    node_id: NodeId,
    rotations: &[PreparedRotation],
) -> Result<Response, StateError> {
    expire_request_ids(txn, cmd.time_ms)?;
    for prepared in rotations {
        // Only a rotation still due at the command's time, for the key's next version.
        let due = txn
            .get::<KeyRecord>(&keys::key(&prepared.key_id))?
            .and_then(|k| k.metadata.next_rotation_ms)
            .is_some_and(|due| due <= cmd.time_ms);
        if due {
            if let Ok(Reply::Key(k)) = rotate(txn, prepared, cmd.time_ms, false)? {
                let mut record = service_event(cmd, node_id, "RotateKey", &k.account);
                record.request_parameters.key_id = Some(k.key_id.to_string());
                record.resources = vec![k.arn.clone()];
                append_audit(txn, record, None)?;
            }
        }
    }
    let due = txn.due_entries(keys::DELETION_PREFIX, cmd.time_ms, TICK_BATCH)?;
    let expired: Vec<KeyId> = txn
        .due_entries(keys::EXPIRY_PREFIX, cmd.time_ms, TICK_BATCH)?
        .into_iter()
        .map(|e| e.key_id)
        .collect();
    for key_id in expired {
        if let Ok(Reply::Key(k)) = delete_imported_material(txn, &key_id)? {
            let mut record = service_event(cmd, node_id, "DeleteExpiredKeyMaterial", &k.account);
            record.event_id = format!("{}-expiry-{}", cmd.request_id, key_id);
            record.request_parameters.key_id = Some(key_id.to_string());
            record.resources = vec![k.arn.clone()];
            append_audit(txn, record, None)?;
        }
    }
    let mut deleted = Vec::new();
    for entry in due {
        txn.delete(entry.index_key);
        let key_id = entry.key_id;
        let Some(record) = txn.get::<KeyRecord>(&keys::key(&key_id))? else {
            continue;
        };
        if record.metadata.key_state != KeyState::PendingDeletion {
            continue;
        }
        let account = record.metadata.account.clone();
        let record_arn = record.metadata.arn.clone();
        if let Some(due) = record.metadata.next_rotation_ms {
            txn.delete(keys::rotation(due, &key_id));
        }
        if let Some(due) = record.metadata.valid_to_ms {
            txn.delete(keys::expiry(due, &key_id));
        }
        txn.delete(keys::key(&key_id));
        let count_key = keys::key_count(&account);
        let count: u64 = txn.get(&count_key)?.unwrap_or(0);
        txn.put(count_key, &count.saturating_sub(1))?;
        let mut aliases = Vec::new();
        for item in txn.scan_prefix(&keys::alias_prefix(&account)) {
            let (k, v) = item?;
            let alias: AliasRecord = decode(&k, &v)?;
            if alias.target_key_id == key_id {
                aliases.push(k.to_vec());
            }
        }
        let alias_count: u64 = txn.get(&keys::alias_count(&account))?.unwrap_or(0);
        txn.put(
            keys::alias_count(&account),
            &alias_count.saturating_sub(aliases.len() as u64),
        )?;
        for k in aliases {
            txn.delete(k);
        }
        let mut record = service_event(cmd, node_id, "DeleteKey", &account);
        record.event_id = format!("{}-{}", cmd.request_id, key_id);
        record.request_parameters.key_id = Some(key_id.to_string());
        record.resources = vec![record_arn.clone()];
        append_audit(txn, record, None)?;
        deleted.push(key_id);
    }
    Ok(Ok(Reply::Deleted(deleted)))
}

/// The refusal of a change to a key pending deletion.
fn pending_deletion(record: &KeyRecord) -> Option<KmsError> {
    (record.metadata.key_state == KeyState::PendingDeletion).then(|| {
        KmsError::new(
            ErrorCode::InvalidState,
            format!("{} is pending deletion", record.metadata.arn),
        )
    })
}

/// The audit record of something the service did by itself in a tick.
fn service_event(cmd: &Command, node_id: NodeId, name: &str, account: &AccountId) -> AuditRecord {
    AuditRecord {
        event_id: format!("{}-{name}", cmd.request_id),
        event_time_ms: cmd.time_ms,
        event_name: name.to_string(),
        request_id: cmd.request_id.clone(),
        event_type: EventType::AwsServiceEvent,
        read_only: false,
        user_identity: UserIdentity {
            identity_type: "Service".to_string(),
            principal_arn: format!("keyraft:node/{node_id}"),
            account_id: account.to_string(),
            access_key_id: String::new(),
        },
        source_ip: String::new(),
        user_agent: "keyraft".to_string(),
        node_id,
        request_parameters: RequestParameters::default(),
        resources: Vec::new(),
        error: None,
        key_checks: Vec::new(),
        authz_checks: Vec::new(),
    }
}

fn set_rotation(
    txn: &mut Txn<'_>,
    key_id: &KeyId,
    period_days: Option<u32>,
    time_ms: u64,
) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if let Some(e) = refuse_service_key(&record, "changing its rotation") {
        return Ok(Err(e));
    }
    if let Some(e) = refuse_rotation(&record, "automatic rotation") {
        return Ok(Err(e));
    }
    if let Some(e) = pending_deletion(&record) {
        return Ok(Err(e));
    }
    schedule_rotation(txn, &mut record.metadata, period_days, time_ms)?;
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

/// Sets a key's automatic rotation (`period_days`, or off with `None`) counting from
/// `from_ms`, keeping the rotation index in step with the key's `next_rotation_ms`.
fn schedule_rotation(
    txn: &mut Txn<'_>,
    m: &mut KeyMetadata,
    period_days: Option<u32>,
    from_ms: u64,
) -> Result<(), StateError> {
    if let Some(due) = m.next_rotation_ms.take() {
        txn.delete(keys::rotation(due, &m.key_id));
    }
    m.rotation_period_days = period_days;
    if let Some(days) = period_days {
        let due = from_ms.saturating_add(u64::from(days) * DAY_MS);
        m.next_rotation_ms = Some(due);
        txn.put(keys::rotation(due, &m.key_id), &())?;
    }
    Ok(())
}

/// Adds a prepared backing version as the key's current one. Old versions stay, so
/// every older ciphertext still decrypts; the key id never changes, and neither does
/// the epoch (rotation changes no authorization decision).
fn rotate(
    txn: &mut Txn<'_>,
    prepared: &PreparedRotation,
    time_ms: u64,
    on_demand: bool,
) -> Result<Response, StateError> {
    let key_id = &prepared.key_id;
    let Some(mut record) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if let Some(e) = refuse_rotation(&record, "rotation") {
        return Ok(Err(e));
    }
    // A key rotates only while it could encrypt (Enabled): the same states refuse.
    if let Err(e) = record.metadata.check_usable(CryptoOperation::Encrypt) {
        return Ok(Err(e));
    }
    let m = &mut record.metadata;
    if prepared.version != m.current_version + 1 {
        return Ok(Err(KmsError::new(
            ErrorCode::Conflict,
            format!("{} was rotated concurrently; retry", m.arn),
        )));
    }
    if on_demand
        && record.rotations.iter().filter(|r| r.on_demand).count() >= MAX_ON_DEMAND_ROTATIONS
    {
        return Ok(Err(KmsError::new(
            ErrorCode::LimitExceeded,
            format!(
                "{} has had {MAX_ON_DEMAND_ROTATIONS} on-demand rotations",
                m.arn
            ),
        )));
    }
    m.current_version = prepared.version;
    record
        .versions
        .insert(prepared.version, prepared.material.clone());
    record.rotations.push(Rotation {
        version: prepared.version,
        date_ms: time_ms,
        on_demand,
    });
    // An automatic rotation schedules the next one; an on-demand one leaves it be.
    if !on_demand && m.next_rotation_ms.is_some() {
        let period = m.rotation_period_days;
        schedule_rotation(txn, m, period, time_ms)?;
    }
    txn.put(keys::key(key_id), &record)?;
    Ok(Ok(Reply::Key(Box::new(record.metadata))))
}

/// A key an alias of `account` may point to.
fn alias_target(
    txn: &Txn<'_>,
    account: &AccountId,
    key_id: &KeyId,
) -> Result<Result<KeyRecord, KmsError>, StateError> {
    let Some(key) = txn.get::<KeyRecord>(&keys::key(key_id))? else {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    };
    if &key.metadata.account != account {
        return Ok(Err(KmsError::key_not_found(key_id.as_str())));
    }
    if let Some(e) = refuse_service_key(&key, "giving it an alias") {
        return Ok(Err(e));
    }
    if let Some(e) = pending_deletion(&key) {
        return Ok(Err(e));
    }
    Ok(Ok(key))
}

fn create_alias(
    txn: &mut Txn<'_>,
    account: &AccountId,
    name: &AliasName,
    key_id: &KeyId,
    time_ms: u64,
) -> Result<Response, StateError> {
    if txn
        .get::<AliasRecord>(&keys::alias(account, name))?
        .is_some()
    {
        return Ok(Err(KmsError::new(
            ErrorCode::AlreadyExists,
            format!("An alias with the name {name} already exists"),
        )));
    }
    if let Err(e) = alias_target(txn, account, key_id)? {
        return Ok(Err(e));
    }
    let usage = quota_usage(txn, account)?;
    if usage.aliases_used >= usage.aliases_limit {
        return Ok(Err(KmsError::new(
            ErrorCode::LimitExceeded,
            format!(
                "Account {account} already has {} aliases, its quota",
                usage.aliases_used
            ),
        )));
    }
    txn.put(keys::alias_count(account), &(usage.aliases_used + 1))?;
    let record = AliasRecord {
        name: name.clone(),
        account: account.clone(),
        target_key_id: key_id.clone(),
        creation_ms: time_ms,
        last_updated_ms: time_ms,
    };
    txn.put(keys::alias(account, name), &record)?;
    Ok(Ok(Reply::Alias(Box::new(record))))
}

fn update_alias(
    txn: &mut Txn<'_>,
    account: &AccountId,
    name: &AliasName,
    key_id: &KeyId,
    time_ms: u64,
) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<AliasRecord>(&keys::alias(account, name))? else {
        return Ok(Err(KmsError::new(
            ErrorCode::NotFound,
            format!("Alias {name} is not found."),
        )));
    };
    if let Err(e) = alias_target(txn, account, key_id)? {
        return Ok(Err(e));
    }
    record.target_key_id = key_id.clone();
    record.last_updated_ms = time_ms;
    txn.put(keys::alias(account, name), &record)?;
    Ok(Ok(Reply::Alias(Box::new(record))))
}

fn delete_alias(
    txn: &mut Txn<'_>,
    account: &AccountId,
    name: &AliasName,
) -> Result<Response, StateError> {
    if txn
        .get::<AliasRecord>(&keys::alias(account, name))?
        .is_none()
    {
        return Ok(Err(KmsError::new(
            ErrorCode::NotFound,
            format!("Alias {name} is not found."),
        )));
    }
    txn.delete(keys::alias(account, name));
    let count: u64 = txn.get(&keys::alias_count(account))?.unwrap_or(0);
    txn.put(keys::alias_count(account), &count.saturating_sub(1))?;
    Ok(Ok(Reply::Unit))
}

fn authorize_join(
    txn: &mut Txn<'_>,
    node: &NodeRecord,
    public_key: &[u8],
) -> Result<Response, StateError> {
    if txn.get::<ClusterConfig>(keys::CLUSTER)?.is_none() {
        return Ok(Err(not_bootstrapped()));
    }
    if public_key.len() != 32 {
        return Ok(Err(KmsError::validation("a join public key is 32 bytes")));
    }
    if let Some(existing) = txn.get::<NodeRecord>(&keys::node(node.node_id))? {
        if existing.retired {
            return Ok(Err(KmsError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "node id {} was used before and retired; node ids are never reused",
                    node.node_id
                ),
            )));
        }
    }
    let mut record = node.clone();
    record.retired = false;
    txn.put(keys::node(node.node_id), &record)?;
    txn.put(
        keys::join(node.node_id),
        &JoinAuthorization {
            node_id: node.node_id,
            public_key: public_key.to_vec(),
        },
    )?;
    Ok(Ok(Reply::Unit))
}

fn retire_node(txn: &mut Txn<'_>, node_id: NodeId) -> Result<Response, StateError> {
    let Some(mut record) = txn.get::<NodeRecord>(&keys::node(node_id))? else {
        return Ok(Err(KmsError::new(
            ErrorCode::NotFound,
            format!("node {node_id} is not registered"),
        )));
    };
    record.retired = true;
    txn.put(keys::node(node_id), &record)?;
    txn.delete(keys::join(node_id));
    Ok(Ok(Reply::Unit))
}

fn not_bootstrapped() -> KmsError {
    KmsError::new(
        ErrorCode::KeyUnavailable,
        "the region is not bootstrapped yet; retry shortly",
    )
}
