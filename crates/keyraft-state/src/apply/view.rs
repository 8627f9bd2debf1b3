//! What a read of the state sees: the sled tree overlaid with applied writes that are not
//! yet written to it.
//!
//! Every atomic sled batch seals sled's current I/O buffer and writes a batch manifest
//! with `sync_file_range` on sled's I/O threads: two writes to disk per batch, however
//! small it is. One batch per apply made that the largest cost of a lightly loaded node.
//! Apply therefore keeps its writes in memory ([`Unflushed`]) and they are written to
//! sled as one batch every [`FLUSH_INTERVAL`] or [`FLUSH_BYTES`], whichever comes first.
//!
//! Writing that batch takes milliseconds (tens under a burst of new keys, which land all
//! over the tree), so it happens beside apply, not in it: the writes to be flushed are
//! sealed into a layer of their own ([`Layers::sealed`]) and apply goes on into a fresh
//! one. Every read goes through a [`View`], which sees the newest layer first, then the
//! sealed ones from the newest, then the tree. What a lookup finds in the tree is
//! remembered until the next flush changes the tree ([`TreeCache`]).
//!
//! A layer is sealed at [`FLUSH_BYTES`] even when no flush can run (a view of the state
//! held for a walk of it holds flushes off, for seconds with a large state: see
//! [`super::pin`]), and a flush
//! writes each sealed layer as a batch of its own. A sled batch holds a lock that every
//! read of the tree waits for, so the writes of a long hold written as one batch stopped
//! every read of the node, on every runtime worker, for seconds (a 2.4 s batch of 19 000
//! records after a 14 s copy of the state for a snapshot). A layer holds the writes of whole applies, the applied
//! log id among them, so the tree is always as of some applied entry.
//!
//! Nothing acknowledged depends on the flush. The entries are durable in the Raft log
//! before they are applied, the applied log id is flushed in the same batch as the
//! writes it covers, and after a crash the Raft layer applies the committed entries
//! after the recovered applied log id again.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::StateError;

/// Pending writes by key: the new value, or `None` for a delete.
pub(super) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// How long applied writes may stay in memory before they are written to sled.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How many bytes of applied writes (keys and values, overwrites counted again) a layer
/// holds before it is sealed, and so about the most one sled batch writes (a layer ends
/// where an apply ends). Under load a batch of 4 MiB held sled's lock, and every read of
/// the tree, for up to 160 ms; one of 1 MiB for up to 90 ms.
pub(super) const FLUSH_BYTES: usize = 1 << 20;

/// Applied writes not yet in sled.
#[derive(Default)]
pub(super) struct Unflushed {
    pub(super) writes: Writes,
    bytes: usize,
    since: Option<Instant>,
}

impl Unflushed {
    /// Takes in the writes of an apply; later writes of a key replace earlier ones.
    pub(super) fn absorb(&mut self, writes: Writes) {
        if writes.is_empty() {
            return;
        }
        self.since.get_or_insert_with(Instant::now);
        for (k, v) in writes {
            self.bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            self.writes.insert(k, v);
        }
    }

    /// Whether the writes should go to sled now.
    pub(super) fn due(&self) -> bool {
        self.bytes >= FLUSH_BYTES || self.since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL)
    }
}

/// The applied writes not yet in sled: those apply is adding to, and those sealed for a
/// flush.
pub(super) struct Layers {
    /// Apply's writes since the last layer was sealed.
    pub(super) current: Unflushed,
    /// Layers waiting for a flush or being written by one, oldest first. Each holds the
    /// writes of whole applies.
    pub(super) sealed: Vec<Arc<Writes>>,
    /// The size at which apply seals the current layer ([`FLUSH_BYTES`]; smaller in
    /// tests).
    pub(super) seal_bytes: usize,
    /// Records read from the tree since it last changed.
    cache: TreeCache,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            current: Unflushed::default(),
            sealed: Vec::new(),
            seal_bytes: FLUSH_BYTES,
            cache: TreeCache::default(),
        }
    }
}

impl Layers {
    /// The state as reads see it, over `tree`.
    pub(super) fn view<'a>(&'a self, tree: &'a sled::Tree) -> View<'a> {
        View::new(tree, &self.current.writes, &self.sealed).cached(&self.cache)
    }

    /// Drops the oldest sealed layer, which a flush has written to the tree. The tree
    /// has changed, so what was read from it before is forgotten.
    pub(super) fn drop_flushed(&mut self) {
        if !self.sealed.is_empty() {
            self.sealed.remove(0);
        }
        self.cache.clear();
    }

    /// Seals the current writes into a layer of their own, if there are any.
    pub(super) fn seal(&mut self) {
        if !self.current.writes.is_empty() {
            let writes = std::mem::take(&mut self.current).writes;
            self.sealed.push(Arc::new(writes));
        }
    }

    /// Seals the current layer once it holds `seal_bytes`. Apply calls this after each
    /// apply, so that a layer ends where an apply ends.
    pub(super) fn seal_if_full(&mut self) {
        if self.current.bytes >= self.seal_bytes {
            self.seal();
        }
    }

    /// Whether a flush is due: a layer is sealed, or the current one is due.
    pub(super) fn due(&self) -> bool {
        !self.sealed.is_empty() || self.current.due()
    }
}

/// The most bytes of records (keys and values) a [`TreeCache`] holds; once full, it
/// takes in nothing more until the next flush empties it.
const CACHE_BYTES: usize = 4 << 20;

/// Records read from the tree lately, by key (`None`: no such record), so that the
/// records nearly every request reads (the cluster's, the caller's access key and
/// principal, an account's key count and quota, the key of an Encrypt) are not looked
/// up in sled each time. A sled lookup walks the tree from its root and copies the
/// value; these lookups were about 5% of the leader's CPU under CreateKey.
///
/// It holds what the tree holds. The tree changes only when a flush writes a sealed
/// layer, and while that layer is still in [`Layers::sealed`] every read of its keys
/// stops at the layer; the flush then drops the layer and empties the cache together,
/// under the layers' write lock, with no read under way ([`Layers::drop_flushed`]). An
/// installed snapshot replaces the layers, this cache with them. Emptied by every flush,
/// it only ever holds what was read since the last one.
#[derive(Default)]
struct TreeCache {
    entries: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    records: HashMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

impl TreeCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, CacheEntries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of `key` as read from the tree, if it was read since the last flush.
    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.entries().records.get(key).cloned()
    }

    /// Remembers what the tree holds for `key`, unless the cache is full.
    fn put(&self, key: &[u8], value: Option<&[u8]>) {
        let size = key.len() + value.map_or(0, <[u8]>::len);
        let mut entries = self.entries();
        if entries.bytes + size > CACHE_BYTES {
            return;
        }
        if entries
            .records
            .insert(key.to_vec(), value.map(<[u8]>::to_vec))
            .is_none()
        {
            entries.bytes += size;
        }
    }

    fn clear(&self) {
        let mut entries = self.entries();
        entries.records.clear();
        entries.bytes = 0;
    }
}

/// The state as reads see it: `newer` over the `older` layers (the last the newest) over
/// `tree`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    tree: &'a sled::Tree,
    newer: &'a Writes,
    older: &'a [Arc<Writes>],
    /// Where lookups in `tree` are remembered; only the live state's view has one.
    cache: Option<&'a TreeCache>,
}

/// A key range, as both sled and `BTreeMap` take it.
pub(super) type Range = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The range of keys starting with `prefix`.
pub(super) fn prefix_range(prefix: &[u8]) -> Range {
    let mut end = prefix.to_vec();
    // The smallest key after every key with the prefix: drop trailing 0xff bytes and
    // increment the last byte left; all 0xff (or empty) has no end.
    while end.last() == Some(&u8::MAX) {
        end.pop();
    }
    match end.last_mut() {
        Some(last) => {
            *last += 1;
            (Bound::Included(prefix.to_vec()), Bound::Excluded(end))
        }
        None => (Bound::Included(prefix.to_vec()), Bound::Unbounded),
    }
}

/// Whether `range` holds no key at all (`BTreeMap::range` panics on such a range).
fn is_empty(range: &Range) -> bool {
    match range {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
        _ => false,
    }
}

impl<'a> View<'a> {
    /// The view of `tree` under `older` layers (the last the newest) under `newer`.
    pub(super) fn new(
        tree: &'a sled::Tree,
        newer: &'a Writes,
        older: &'a [Arc<Writes>],
    ) -> View<'a> {
        View {
            tree,
            newer,
            older,
            cache: None,
        }
    }

    /// This view, remembering its lookups in the tree in `cache`.
    fn cached(mut self, cache: &'a TreeCache) -> View<'a> {
        self.cache = Some(cache);
        self
    }

    /// The pending write of `key` in the layers, if any: `Some(None)` is a delete.
    fn pending(&self, key: &[u8]) -> Option<&'a Option<Vec<u8>>> {
        self.newer
            .get(key)
            .or_else(|| self.older.iter().rev().find_map(|layer| layer.get(key)))
    }

    /// The raw value of `key`.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Cow<'a, [u8]>>, StateError> {
        match self.pending(key) {
            Some(Some(v)) => Ok(Some(Cow::Borrowed(v.as_slice()))),
            Some(None) => Ok(None),
            None => {
                if let Some(remembered) = self.cache.and_then(|c| c.get(key)) {
                    return Ok(remembered.map(Cow::Owned));
                }
                let stored = self.tree.get(key)?;
                if let Some(cache) = self.cache {
                    cache.put(key, stored.as_deref());
                }
                Ok(stored.map(|v| Cow::Owned(v.to_vec())))
            }
        }
    }

    /// The layers' writes in `range`, a newer layer's winning, and `top`'s over all.
    fn pending_in<'w>(&self, range: &Range, top: Option<&'w Writes>) -> Vec<PendingWrite<'w>>
    where
        'a: 'w,
    {
        if is_empty(range) {
            return Vec::new();
        }
        let mut pending: BTreeMap<&'w Vec<u8>, &'w Option<Vec<u8>>> = BTreeMap::new();
        let layers = self.older.iter().map(|layer| &**layer);
        for layer in layers.chain([self.newer]).chain(top) {
            pending.extend(layer.range(range.clone()));
        }
        pending.into_iter().collect()
    }

    /// The records in `range`, in key order.
    pub(super) fn range(&self, range: Range) -> Overlaid<'a> {
        let pending = self.pending_in(&range, None);
        Overlaid::new(self.tree.range(range), pending)
    }

    /// The records whose key starts with `prefix`, in key order.
    pub(super) fn scan_prefix(&self, prefix: &[u8]) -> Overlaid<'a> {
        self.range(prefix_range(prefix))
    }

    /// The records in `range` with `writes` (a transaction's, newer still) laid over
    /// this view.
    pub(super) fn range_under<'w>(&self, range: Range, writes: &'w Writes) -> Overlaid<'w>
    where
        'a: 'w,
    {
        let pending = self.pending_in(&range, Some(writes));
        Overlaid::new(self.tree.range(range), pending)
    }

    /// The greatest key in `range` that holds a record.
    pub(super) fn last_key(&self, range: Range) -> Result<Option<Vec<u8>>, StateError> {
        if is_empty(&range) {
            return Ok(None);
        }
        let pending = self
            .pending_in(&range, None)
            .into_iter()
            .rev()
            .find(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone());
        let mut stored = None;
        for item in self.tree.range(range).rev() {
            let (k, _) = item?;
            // A key deleted since the last flush is not there any more.
            if !matches!(self.pending(k.as_ref()), Some(None)) {
                stored = Some(k.to_vec());
                break;
            }
        }
        Ok(pending.max(stored))
    }
}

/// `writes` as one sled batch.
pub(super) fn batch(writes: &Writes) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        match v {
            Some(v) => batch.insert(k.as_slice(), v.as_slice()),
            None => batch.remove(k.as_slice()),
        }
    }
    batch
}

/// A pending write as [`Writes`] holds it: the key, and the value or `None` for a delete.
type PendingWrite<'t> = (&'t Vec<u8>, &'t Option<Vec<u8>>);

/// A range of the tree merged with pending writes in the same range: a pending write
/// replaces the tree's record of its key, a pending delete hides it.
pub(super) struct Overlaid<'t> {
    tree: Peekable<sled::Iter>,
    pending: Peekable<std::vec::IntoIter<PendingWrite<'t>>>,
}

impl<'t> Overlaid<'t> {
    fn new(tree: sled::Iter, pending: Vec<PendingWrite<'t>>) -> Self {
        Overlaid {
            tree: tree.peekable(),
            pending: pending.into_iter().peekable(),
        }
    }
}

impl Iterator for Overlaid<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        loop {
            let next = match (self.tree.peek(), self.pending.peek()) {
                (None, None) => return None,
                // A read error comes out as the tree's next item.
                (Some(Err(_)), _) | (Some(Ok(_)), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(Ok((stored, _))), Some((written, _))) => {
                    stored.as_ref().cmp(written.as_slice())
                }
            };
            match next {
                Ordering::Less => {
                    return self.tree.next().map(|item| {
                        item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                            .map_err(StateError::from)
                    })
                }
                // Rewritten (or deleted) since: the pending write decides.
                Ordering::Equal => {
                    self.tree.next();
                }
                Ordering::Greater => {}
            }
            if let Some((k, Some(v))) = self.pending.next() {
                return Some(Ok((k.clone(), v.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("t").unwrap()
    }

    fn writes(items: &[(&str, Option<&str>)]) -> Writes {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn keys(it: Overlaid<'_>) -> Vec<(String, String)> {
        it.map(|item| {
            let (k, v) = item.unwrap();
            (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
        })
        .collect()
    }

    fn read(layers: &Layers, tree: &sled::Tree, key: &str) -> Option<String> {
        layers
            .view(tree)
            .get(key.as_bytes())
            .unwrap()
            .map(|v| String::from_utf8(v.into_owned()).unwrap())
    }

    #[test]
    fn reads_remember_the_tree_until_a_flush_changes_it() {
        let tree = tree();
        tree.insert("k", "old").unwrap();
        let mut layers = Layers::default();
        assert_eq!(read(&layers, &tree, "k").as_deref(), Some("old"));
        assert_eq!(read(&layers, &tree, "gone"), None);
        // Remembered: a change behind the cache's back (which only a flush makes) is
        // not seen.
        tree.insert("gone", "here").unwrap();
        assert_eq!(read(&layers, &tree, "gone"), None);
        tree.remove("gone").unwrap();

        // Applied writes are read from their layer, sealed or not, then from the tree
        // once a flush has written them and dropped the layer.
        layers
            .current
            .absorb(writes(&[("k", Some("new")), ("gone", Some("back"))]));
        assert_eq!(read(&layers, &tree, "k").as_deref(), Some("new"));
        layers.seal();
        assert_eq!(read(&layers, &tree, "gone").as_deref(), Some("back"));
        tree.apply_batch(batch(&layers.sealed[0])).unwrap();
        assert_eq!(read(&layers, &tree, "k").as_deref(), Some("new"));
        layers.drop_flushed();
        assert!(layers.sealed.is_empty());
        assert_eq!(read(&layers, &tree, "k").as_deref(), Some("new"));
        assert_eq!(read(&layers, &tree, "gone").as_deref(), Some("back"));

        // A delete, the same way.
        layers.current.absorb(writes(&[("k", None)]));
        layers.seal();
        tree.apply_batch(batch(&layers.sealed[0])).unwrap();
        layers.drop_flushed();
        assert_eq!(read(&layers, &tree, "k"), None);
    }

    #[test]
    fn a_full_cache_takes_in_nothing_more() {
        let tree = tree();
        let big = vec![b'x'; CACHE_BYTES / 2];
        for k in ["a", "b", "c"] {
            tree.insert(k, big.as_slice()).unwrap();
        }
        let layers = Layers::default();
        for k in ["a", "b", "c"] {
            assert!(read(&layers, &tree, k).is_some());
        }
        // "a" fit; "b" and "c" did not (each half the budget, plus its key), so they
        // are read from the tree each time.
        tree.remove("a").unwrap();
        tree.remove("c").unwrap();
        assert!(read(&layers, &tree, "a").is_some());
        assert_eq!(read(&layers, &tree, "c"), None);
    }

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        assert_eq!(
            prefix_range(b"ab"),
            (
                Bound::Included(b"ab".to_vec()),
                Bound::Excluded(b"ac".to_vec())
            )
        );
        assert_eq!(
            prefix_range(&[1, 0xff]),
            (Bound::Included(vec![1, 0xff]), Bound::Excluded(vec![2]))
        );
        assert_eq!(
            prefix_range(&[0xff]),
            (Bound::Included(vec![0xff]), Bound::Unbounded)
        );
    }

    #[test]
    fn reads_see_unflushed_writes_over_the_tree_and_a_transaction_over_both() {
        let tree = tree();
        for k in ["a1", "a2", "a3", "b1"] {
            tree.insert(k, k).unwrap();
        }
        let unflushed = writes(&[("a2", None), ("a3", Some("new")), ("a4", Some("a4"))]);
        let view = View {
            tree: &tree,
            newer: &unflushed,
            older: &[],
            cache: None,
        };
        assert_eq!(view.get(b"a1").unwrap().as_deref(), Some(&b"a1"[..]));
        assert_eq!(view.get(b"a2").unwrap(), None);
        assert_eq!(view.get(b"a3").unwrap().as_deref(), Some(&b"new"[..]));
        let seen = keys(view.scan_prefix(b"a"));
        assert_eq!(
            seen,
            [("a1", "a1"), ("a3", "new"), ("a4", "a4")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );

        let txn = writes(&[("a1", None), ("a2", Some("back")), ("a4", Some("txn"))]);
        let seen = keys(view.range_under(prefix_range(b"a"), &txn));
        assert_eq!(
            seen,
            [("a2", "back"), ("a3", "new"), ("a4", "txn")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn a_newer_layer_wins_over_the_sealed_ones() {
        let tree = tree();
        for k in ["a1", "a2", "a3"] {
            tree.insert(k, k).unwrap();
        }
        let oldest = writes(&[("a2", Some("oldest")), ("a6", Some("oldest"))]);
        let sealed = writes(&[("a1", None), ("a2", Some("old")), ("a4", Some("old"))]);
        let newer = writes(&[("a1", Some("back")), ("a4", None), ("a5", Some("new"))]);
        let older = [Arc::new(oldest), Arc::new(sealed)];
        let view = View {
            tree: &tree,
            newer: &newer,
            older: &older,
            cache: None,
        };
        assert_eq!(view.get(b"a1").unwrap().as_deref(), Some(&b"back"[..]));
        assert_eq!(view.get(b"a2").unwrap().as_deref(), Some(&b"old"[..]));
        assert_eq!(view.get(b"a4").unwrap(), None);
        assert_eq!(view.get(b"a6").unwrap().as_deref(), Some(&b"oldest"[..]));
        let seen = keys(view.scan_prefix(b"a"));
        assert_eq!(
            seen,
            [
                ("a1", "back"),
                ("a2", "old"),
                ("a3", "a3"),
                ("a5", "new"),
                ("a6", "oldest")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let all = (Bound::Unbounded, Bound::Unbounded);
        assert_eq!(view.last_key(all).unwrap(), Some(b"a6".to_vec()));
        let upto4 = (Bound::Unbounded, Bound::Included(b"a4".to_vec()));
        assert_eq!(view.last_key(upto4).unwrap(), Some(b"a3".to_vec()));
    }

    #[test]
    fn the_last_key_skips_keys_deleted_since_the_flush() {
        let tree = tree();
        for k in ["a1", "a2", "a3"] {
            tree.insert(k, k).unwrap();
        }
        let unflushed = writes(&[("a3", None), ("a0", Some("x"))]);
        let view = View {
            tree: &tree,
            newer: &unflushed,
            older: &[],
            cache: None,
        };
        let upto = |k: &str| (Bound::Unbounded, Bound::Included(k.as_bytes().to_vec()));
        assert_eq!(view.last_key(upto("a9")).unwrap(), Some(b"a2".to_vec()));
        assert_eq!(view.last_key(upto("a0")).unwrap(), Some(b"a0".to_vec()));
        let unflushed = writes(&[("a4", Some("x"))]);
        let view = View {
            tree: &tree,
            newer: &unflushed,
            older: &[],
            cache: None,
        };
        assert_eq!(view.last_key(upto("a9")).unwrap(), Some(b"a4".to_vec()));
    }

    #[test]
    fn absorbed_writes_replace_earlier_ones_and_come_due_by_size() {
        let mut u = Unflushed::default();
        assert!(!u.due());
        u.absorb(writes(&[("k", Some("1"))]));
        u.absorb(writes(&[("k", None)]));
        assert_eq!(u.writes, writes(&[("k", None)]));
        assert!(!u.due(), "a few bytes just now are not due");
        u.absorb([(b"big".to_vec(), Some(vec![0; FLUSH_BYTES]))].into());
        assert!(u.due());
    }

    #[test]
    fn a_full_layer_is_sealed_and_a_sealed_layer_is_due() {
        let mut layers = Layers {
            seal_bytes: 10,
            ..Layers::default()
        };
        layers.current.absorb(writes(&[("k", Some("1"))]));
        layers.seal_if_full();
        assert!(layers.sealed.is_empty());
        assert!(!layers.due());
        layers
            .current
            .absorb(writes(&[("key", Some("0123456789"))]));
        layers.seal_if_full();
        assert_eq!(layers.sealed.len(), 1);
        assert!(layers.current.writes.is_empty());
        assert!(layers.due(), "a sealed layer waits for a flush");
        layers.seal();
        assert_eq!(layers.sealed.len(), 1, "an empty layer is not sealed");
    }
}
