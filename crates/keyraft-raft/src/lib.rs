//! # Keyraft on openraft
//!
//! The glue between openraft and Keyraft's storage and network:
//!
//! - [`TypeConfig`]: commands are [`keyraft_state::Command`]s, shared (`Arc`) so that
//!   the log store's recent entries, replication and apply pass them on without a
//!   copy (encoded exactly as the command), responses [`keyraft_state::Response`], nodes
//!   are addressed by [`NodeAddr`].
//! - [`log_store::LogStore`]: the Raft log in segment files and the vote in sled, made
//!   durable with a real `fdatasync` before openraft is told an append is flushed.
//! - [`state_machine::StateMachineStore`]: the adapter that feeds committed entries to
//!   [`keyraft_state::StateMachine`] in batches, and snapshots: a sync of the state on
//!   disk, read as it is sent to a follower, written into a second state tree as it
//!   arrives and switched to whole.
//! - [`compaction`]: when a node snapshots (and so may purge its log): once it has
//!   written as much log as a share of its state's size, and not while a joining or
//!   live member (or one being sent a snapshot) still needs the log it would purge.
//! - [`leader_watch`]: a follower that finds its leader's port refusing connections
//!   gets an election going at once instead of waiting out the election timeout.
//! - [`network`]: the node-to-node transport over tonic, every call signed with the
//!   cluster secret; snapshots are streamed in chunks.
//! - [`failpoints`]: named places where a fault can be injected (compiled in only with
//!   the `failpoints` feature).
//!
//! We pin openraft to one exact 0.10 alpha (see the README for why); every bump is a
//! deliberate change that reruns the storage conformance suite.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod compaction;
pub mod failpoints;
pub mod leader_watch;
pub mod log_store;
pub mod network;
pub mod state_machine;

use serde::{Deserialize, Serialize};

/// How a node is reached: its client API URL and its node-to-node address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Client API URL, e.g. `http://127.0.0.1:7101`.
    pub api_endpoint: String,
    /// Node-to-node address, e.g. `127.0.0.1:7201`.
    pub raft_addr: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (raft {})", self.api_endpoint, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// Keyraft's openraft type configuration.
    pub TypeConfig:
        D = std::sync::Arc<keyraft_state::Command>,
        R = keyraft_state::Response,
        NodeId = u64,
        Node = NodeAddr,
);

/// A Keyraft Raft node.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachineStore>;

/// openraft type aliases specialised to [`TypeConfig`].
pub mod typ {
    use super::TypeConfig;

    /// A log entry.
    pub type Entry = openraft::alias::EntryOf<TypeConfig>;
    /// A log id.
    pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
    /// A vote.
    pub type Vote = openraft::alias::VoteOf<TypeConfig>;
    /// Stored membership.
    pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
    /// A snapshot with our data type.
    pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::state_machine::SnapshotData>;
    /// Raft metrics.
    pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
}

/// Serialises a value for storage or the wire (bincode).
pub(crate) fn to_bytes<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    bincode::serialize(value).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Deserialises a value written by [`to_bytes`].
pub(crate) fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    bincode::deserialize(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
