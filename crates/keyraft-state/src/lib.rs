//! # The replicated state machine
//!
//! Keyraft's replicated state is a function of the Raft log: every node applies the same
//! [`Command`]s in the same order and so holds the same keys, node registry, credentials,
//! idempotency records and audit chain. This crate is that function, and nothing else:
//! it knows nothing of networks, HSMs or clocks, so it can be tested with none of them.
//!
//! ## Determinism
//! [`StateMachine::apply`] reads only the command and the state. Everything that needs
//! randomness, a clock or an HSM — key ids, wrapped key material, timestamps, event ids —
//! is made by the proposing node *before* proposing and travels inside the command. An
//! error that every replica reaches the same way (a quota exceeded, a key not found) is a
//! *response*; an I/O error is returned as `Err` and stops the node, because a replica
//! that cannot write its state must not answer as if it had.
//!
//! ## Atomicity and durability
//! One call to `apply` takes effect atomically — data, the applied log id and the
//! membership together. Its writes stay in memory, where every read sees them, and go to
//! sled with those of later applies (from the first apply once the oldest is 100 ms
//! old), in atomic batches of about 1 MiB at most that each end where an apply ends,
//! written beside apply
//! ([`StateMachine::claim_flush`]): each sled batch writes to disk twice however small
//! it is, and a large one takes tens of milliseconds. Nothing is synced:
//! the entries are durable in the Raft log, and after a crash the Raft layer applies the
//! committed entries after the recovered applied log id again (see
//! [`StateMachine::apply`]). Installing a snapshot syncs ([`storage::Durable::sync`]).
//!
//! The tree changes only in a flush (and an install). What must read one applied state
//! as a whole, a snapshot sent to a follower or a verify of the audit chain, takes a
//! [`StateView`]: the tree under the layers not yet flushed, with the next flush held
//! off while it reads. Apply goes on into memory meanwhile and never waits for such a
//! walk, however large the state. A snapshot the Raft layer builds is
//! [`StateMachine::durable_view`]: a flush and a sync, no copy.
//!
//! ## The audit chain
//! Every request leaves one [`AuditEvent`]. Apply decides its final outcome (re-checking
//! the key's metadata epoch for cryptographic requests, see [`KeyCheck`]), numbers it and
//! links it to its predecessor by SHA-256, so every node holds the identical chain. The
//! events one log entry appends are stored together, as one chunk keyed by the first
//! event's sequence number: one sled write per entry rather than per event, and chunk
//! boundaries that depend on the log alone, not on how a replica batched its applies.
//!
//! [`AuditEvent`]: keyraft_types::AuditEvent
//! [`KeyCheck`]: keyraft_types::KeyCheck

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod apply;
pub mod authz;
pub mod command;
mod keys;
pub mod storage;

pub use apply::{
    AppliedMeta, ChainCheck, Incoming, StateMachine, StateSnapshot, StateView, MAX_ACCESS_KEYS,
    MAX_INLINE_POLICIES, MAX_PRUNE,
};
pub use command::{
    AccessKeyRecord, AccountQuota, AliasRecord, ApplyEntry, AuditCheckpoint, Bootstrap,
    ClusterConfig, Command, GrantRecord, IamChange, ImportParameters, JoinAuthorization, KeyRecord,
    NodeRecord, Op, PreparedRotation, PrincipalKind, PrincipalRecord, QuotaUsage, Reply, Response,
    Rotation,
};
pub use storage::{Durable, StateError};

#[cfg(test)]
mod tests;

/// How long a mutation's request id is remembered for idempotent retries (ms of command
/// time). A retry after this window acts again.
pub const REQUEST_ID_TTL_MS: u64 = 60 * 60 * 1000;

/// The key quota per account when the cluster configuration sets none (as AWS's seed).
pub const DEFAULT_KEY_QUOTA: u64 = 1000;

/// The alias quota per account when none is set.
pub const DEFAULT_ALIAS_QUOTA: u64 = 1000;

/// Grants per key when no quota is set. (AWS allows 50,000; Keyraft keeps a key's grant
/// ids in its record, read on every request that falls through to grants, so the default
/// is lower and an administrator may raise it.)
pub const DEFAULT_GRANTS_PER_KEY: u64 = 1000;

/// Most on-demand rotations of one key (as AWS).
pub const MAX_ON_DEMAND_ROTATIONS: usize = 25;

/// Most tags on one key (as AWS).
pub const MAX_TAGS_PER_KEY: usize = 50;
