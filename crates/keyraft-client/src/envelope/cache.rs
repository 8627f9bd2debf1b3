//! The opt-in data key cache. The *why* and the exact limits are on
//! [`CachingProvider`], where the public docs show them; the mechanics (one LRU map per
//! side, usage counted under a mutex that is never held across a call to the inner
//! provider) are below.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{DataKey, DataKeyProvider, EnvelopeError};
use crate::EncryptionContext;

/// A source of the current time for cache expiry.
///
/// ```
/// use std::time::Instant;
/// use keyraft_client::envelope::{Clock, SystemClock};
/// assert!(SystemClock.now() <= Instant::now());
/// ```
pub trait Clock: Send + Sync {
    /// The current instant.
    ///
    /// ```
    /// use keyraft_client::envelope::{Clock, SystemClock};
    /// let a = SystemClock.now();
    /// assert!(SystemClock.now() >= a);
    /// ```
    fn now(&self) -> Instant;
}

/// The real monotonic clock ([`Instant::now`]).
///
/// ```
/// use keyraft_client::envelope::{CacheLimits, CachingProvider, SystemClock};
/// # fn demo(client: keyraft_client::Client) {
/// let cached = CachingProvider::with_clock(client, CacheLimits::default(), SystemClock);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Limits on how long and how much one cached data key may be used, and on how many
/// keys are cached. The defaults are conservative; choose your own for your traffic.
///
/// ```
/// use std::time::Duration;
/// use keyraft_client::envelope::CacheLimits;
/// let limits = CacheLimits {
///     max_age: Duration::from_secs(30),
///     max_messages: 500,
///     ..CacheLimits::default()
/// };
/// assert_eq!(limits.max_bytes, 1 << 30);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// A key is not served once this much time has passed since it was obtained.
    /// Default: 60 seconds.
    pub max_age: Duration,
    /// A key serves at most this many messages. Default: 1000.
    pub max_messages: u64,
    /// A key serves at most this many bytes in total (plaintext when encrypting,
    /// message bytes when decrypting). Default: 1 GiB.
    pub max_bytes: u64,
    /// At most this many keys are cached on each side (encrypt, decrypt); the least
    /// recently used is evicted first. Default: 100.
    pub capacity: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_age: Duration::from_secs(60),
            max_messages: 1000,
            max_bytes: 1 << 30,
            capacity: 100,
        }
    }
}

/// A [`DataKeyProvider`] that reuses data keys from an inner provider within
/// [`CacheLimits`].
///
/// Every message normally costs one call to Keyraft on each side: `GenerateDataKey` to
/// encrypt, `Decrypt` to decrypt. For many small messages that call dominates the cost
/// and can run into request quotas. Reusing a data key across messages removes it, at a
/// price: a key that stays in memory longer and protects more data, and a revoked
/// permission that takes effect only when the cached key goes. So reuse is bounded,
/// per cached key, by
///
/// - **age** (`max_age`, counted from when Keyraft returned the key),
/// - **messages** (`max_messages` encrypted or decrypted with it), and
/// - **bytes** (`max_bytes` of plaintext encrypted, or of message decrypted, with it),
///
/// and the cache by **capacity** (number of keys on each side; the least recently used
/// goes first). A key is served only if the message fits in all its limits, counting the
/// message itself; a key that has reached one is dropped at once. Dropping wipes the
/// plaintext key ([`PlaintextKey`](super::PlaintextKey) zeroizes itself).
///
/// Reuse is safe for the format: each message derives its own content key from the data
/// key and a random 256-bit message id, so GCM nonces never repeat across messages.
///
/// Encryption entries are keyed by (key id as asked for, encryption context); decryption
/// entries by (encrypted data key, encryption context). A request whose size is unknown
/// (`None`, as for streams) or larger than `max_bytes` bypasses the cache: it can never
/// be shown to fit. The cache is off unless you wrap a provider in it.
///
/// Time comes from a [`Clock`], so tests move time instead of sleeping.
///
/// ```no_run
/// # async fn demo(client: keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
/// use keyraft_client::envelope::{encrypt, CacheLimits, CachingProvider};
/// let cached = CachingProvider::new(client, CacheLimits::default());
/// let ctx = keyraft_client::EncryptionContext::from([("tenant".into(), "42".into())]);
/// for record in [&b"one"[..], b"two", b"three"] {
///     // One GenerateDataKey call for all three.
///     let message = encrypt(&cached, "alias/events", record, &ctx).await?;
/// #   let _ = message;
/// }
/// # Ok(()) }
/// ```
pub struct CachingProvider<P, C = SystemClock> {
    inner: P,
    limits: CacheLimits,
    clock: C,
    encrypt: Mutex<Store<(String, EncryptionContext)>>,
    decrypt: Mutex<Store<(Vec<u8>, EncryptionContext)>>,
}

impl<P: DataKeyProvider> CachingProvider<P> {
    /// A cache in front of `inner`, on the system clock.
    ///
    /// ```no_run
    /// # fn demo(client: keyraft_client::Client) {
    /// use keyraft_client::envelope::{CacheLimits, CachingProvider};
    /// let cached = CachingProvider::new(client, CacheLimits::default());
    /// assert!(cached.is_empty());
    /// # }
    /// ```
    pub fn new(inner: P, limits: CacheLimits) -> Self {
        Self::with_clock(inner, limits, SystemClock)
    }
}

impl<P: DataKeyProvider, C: Clock> CachingProvider<P, C> {
    /// A cache in front of `inner` that reads time from `clock`.
    ///
    /// ```no_run
    /// # fn demo(client: keyraft_client::Client) {
    /// use keyraft_client::envelope::{CacheLimits, CachingProvider, SystemClock};
    /// let cached = CachingProvider::with_clock(client, CacheLimits::default(), SystemClock);
    /// # }
    /// ```
    pub fn with_clock(inner: P, limits: CacheLimits, clock: C) -> Self {
        CachingProvider {
            inner,
            limits,
            clock,
            encrypt: Mutex::new(Store::new()),
            decrypt: Mutex::new(Store::new()),
        }
    }

    /// The wrapped provider.
    ///
    /// ```no_run
    /// # fn demo(client: keyraft_client::Client) {
    /// use keyraft_client::envelope::{CacheLimits, CachingProvider};
    /// let cached = CachingProvider::new(client, CacheLimits::default());
    /// let endpoints = &cached.inner().config().endpoints;
    /// # }
    /// ```
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The limits this cache enforces.
    ///
    /// ```no_run
    /// # fn demo(client: keyraft_client::Client) {
    /// use keyraft_client::envelope::{CacheLimits, CachingProvider};
    /// let cached = CachingProvider::new(client, CacheLimits::default());
    /// assert_eq!(cached.limits().capacity, 100);
    /// # }
    /// ```
    pub fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    /// How many data keys are cached, both sides together. Keys past their age are
    /// counted until the next access notices.
    ///
    /// ```no_run
    /// # fn demo(client: keyraft_client::Client) {
    /// use keyraft_client::envelope::{CacheLimits, CachingProvider};
    /// let cached = CachingProvider::new(client, CacheLimits::default());
    /// assert_eq!(cached.len(), 0);
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        lock(&self.encrypt).entries.len() + lock(&self.decrypt).entries.len()
    }

    /// Whether no data key is cached.
    ///
    /// ```no_run
    /// # fn demo(client: keyraft_client::Client) {
    /// use keyraft_client::envelope::{CacheLimits, CachingProvider};
    /// assert!(CachingProvider::new(client, CacheLimits::default()).is_empty());
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops (and so wipes) every cached key, for example after a permission change.
    ///
    /// ```no_run
    /// # fn demo(client: keyraft_client::Client) {
    /// use keyraft_client::envelope::{CacheLimits, CachingProvider};
    /// let cached = CachingProvider::new(client, CacheLimits::default());
    /// cached.clear();
    /// assert!(cached.is_empty());
    /// # }
    /// ```
    pub fn clear(&self) {
        lock(&self.encrypt).entries.clear();
        lock(&self.decrypt).entries.clear();
    }

    /// Whether a request of `size` bytes may use the cache at all.
    fn cacheable(&self, size: Option<u64>) -> Option<u64> {
        let l = &self.limits;
        let usable = l.capacity > 0 && l.max_messages > 0 && !l.max_age.is_zero();
        size.filter(|&n| usable && n <= l.max_bytes)
    }
}

impl<P: DataKeyProvider, C: Clock> DataKeyProvider for CachingProvider<P, C> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        let Some(bytes) = self.cacheable(size) else {
            return self.inner.generate_data_key(key_id, context, size).await;
        };
        let slot = (key_id.to_string(), context.clone());
        let hit = lock(&self.encrypt).serve(&slot, self.clock.now(), bytes, &self.limits);
        if let Some(key) = hit {
            return Ok(key);
        }
        let key = self.inner.generate_data_key(key_id, context, size).await?;
        let now = self.clock.now();
        lock(&self.encrypt).insert(slot, key.clone(), now, bytes, &self.limits);
        Ok(key)
    }

    async fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        let Some(bytes) = self.cacheable(size) else {
            return self.inner.decrypt_data_key(encrypted, context, size).await;
        };
        let slot = (encrypted.to_vec(), context.clone());
        let hit = lock(&self.decrypt).serve(&slot, self.clock.now(), bytes, &self.limits);
        if let Some(key) = hit {
            return Ok(key);
        }
        let key = self
            .inner
            .decrypt_data_key(encrypted, context, size)
            .await?;
        let now = self.clock.now();
        lock(&self.decrypt).insert(slot, key.clone(), now, bytes, &self.limits);
        Ok(key)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One cached key and what it has been used for so far.
struct Entry {
    key: DataKey,
    created: Instant,
    last_used: u64,
    messages: u64,
    bytes: u64,
}

impl Entry {
    fn expired(&self, now: Instant, limits: &CacheLimits) -> bool {
        now.saturating_duration_since(self.created) >= limits.max_age
    }

    fn exhausted(&self, limits: &CacheLimits) -> bool {
        self.messages >= limits.max_messages || self.bytes >= limits.max_bytes
    }
}

/// One side of the cache.
struct Store<K> {
    entries: HashMap<K, Entry>,
    /// Logical time of the last use, for least-recently-used eviction.
    tick: u64,
}

impl<K: Hash + Eq + Clone> Store<K> {
    fn new() -> Self {
        Store {
            entries: HashMap::new(),
            tick: 0,
        }
    }

    /// The cached key for `slot` if one more message of `bytes` fits in all its limits;
    /// the use is counted. A key that cannot serve, or has just used up a limit, is
    /// dropped.
    fn serve(
        &mut self,
        slot: &K,
        now: Instant,
        bytes: u64,
        limits: &CacheLimits,
    ) -> Option<DataKey> {
        let entry = self.entries.get_mut(slot)?;
        let fits = !entry.expired(now, limits)
            && entry.messages < limits.max_messages
            && entry
                .bytes
                .checked_add(bytes)
                .is_some_and(|b| b <= limits.max_bytes);
        if !fits {
            self.entries.remove(slot);
            return None;
        }
        self.tick += 1;
        entry.messages += 1;
        entry.bytes += bytes;
        entry.last_used = self.tick;
        let key = entry.key.clone();
        if entry.exhausted(limits) {
            self.entries.remove(slot);
        }
        Some(key)
    }

    /// Caches a key just obtained for a message of `bytes` (already counted as used),
    /// unless that message used it up. Expired keys go first, then the least recently
    /// used until there is room.
    fn insert(&mut self, slot: K, key: DataKey, now: Instant, bytes: u64, limits: &CacheLimits) {
        self.tick += 1;
        let entry = Entry {
            key,
            created: now,
            last_used: self.tick,
            messages: 1,
            bytes,
        };
        if entry.exhausted(limits) || limits.capacity == 0 {
            return;
        }
        self.entries.remove(&slot);
        self.entries.retain(|_, e| !e.expired(now, limits));
        while self.entries.len() >= limits.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            self.entries.remove(&oldest);
        }
        self.entries.insert(slot, entry);
    }
}
